package replica

import (
	"bytes"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"

	"github.com/postbus/postbus/broker"
)

// lockedBuffer is a log sink safe for the node's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestGroupID (A9): the group's first leader makes an id that every
// member holds, through a restart (the entry replayed) and a snapshot
// (its header); a group bootstrapped apart makes another.
func TestGroupID(t *testing.T) {
	g := newTestGroup(t, "n1", "n2", "n3")
	for _, id := range []string{"n1", "n2", "n3"} {
		g.start(id)
	}
	l := g.leader()
	b := openLeaderBroker(t, l)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	id := l.GroupID()
	if len(id) != 32 {
		t.Fatalf("leader's group id %q, want 32 hex digits", id)
	}
	var follower string
	for fid, n := range g.nodes {
		waitApplied(t, n, l.AppliedIndex())
		if got := n.GroupID(); got != id {
			t.Errorf("member %s holds group id %q, the leader %q", fid, got, id)
		}
		if n != l && follower == "" {
			follower = fid
		}
	}
	// A leader taking the lead again keeps the id.
	if _, err := l.BecomeLeader(t.Context(), "http://"+l.ID()); err != nil {
		t.Fatal(err)
	}
	if got := l.GroupID(); got != id {
		t.Fatalf("group id changed on a new lead: %q, was %q", got, id)
	}

	// Restarted: the entry is applied again. Then from a snapshot.
	for _, snap := range []bool{false, true} {
		if snap {
			if err := g.nodes[follower].Snapshot(); err != nil {
				t.Fatal(err)
			}
		}
		g.stop(follower)
		n := g.start(follower)
		waitApplied(t, n, l.AppliedIndex())
		if got := n.GroupID(); got != id {
			t.Errorf("restarted member %s (snapshot %v) holds group id %q, want %q", follower, snap, got, id)
		}
	}

	other := newTestGroup(t, "n1")
	on := other.start("n1")
	other.leader()
	ob := openLeaderBroker(t, on)
	defer ob.Close()
	if got := on.GroupID(); got == "" || got == id {
		t.Fatalf("a group bootstrapped apart has group id %q; the first group's is %q", got, id)
	}
}

// TestPeersFlagDifferingIsSaid (A10): a member restarted with a
// --raft-peers that is not its stored configuration keeps the stored one
// and says so at WARN, naming both lists.
func TestPeersFlagDifferingIsSaid(t *testing.T) {
	g := newTestGroup(t, "n1", "n2", "n3")
	logs := &lockedBuffer{}
	g.tweak = func(id string, c *broker.Config) {
		if id == "n2" {
			c.Logger = slog.New(slog.NewTextHandler(logs, nil))
		}
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		g.start(id)
	}
	l := g.leader()
	g.stop("n2")
	if strings.Contains(logs.String(), "differs from this member's stored configuration") {
		t.Fatalf("a member started with its group's list warned: %s", logs)
	}
	stored := maps.Clone(g.peers)
	g.peers["n5"] = "mem-n5"
	n := g.start("n2")
	waitApplied(t, n, l.AppliedIndex())
	out := logs.String()
	var line string
	for _, ln := range strings.Split(out, "\n") {
		if strings.Contains(ln, "differs from this member's stored configuration") {
			line = ln
		}
	}
	if !strings.Contains(line, "level=WARN") || !strings.Contains(line, peerList(g.peers)) || !strings.Contains(line, peerList(stored)) {
		t.Fatalf("no WARN naming the flag's list %q and the stored %q; logs:\n%s", peerList(g.peers), peerList(stored), out)
	}
	st, err := n.Status("g")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 3 {
		t.Fatalf("members after the restart: %+v, want the stored three", st.Members)
	}
}
