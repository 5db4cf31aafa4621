package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postbus/postbus/broker"
)

// handLeadTo makes target lead (raft's leadership transfer from the
// current leader), as an election the other members lose would.
func (g *testGroup) handLeadTo(target *Node) {
	g.t.Helper()
	l := g.leader()
	if l == target {
		return
	}
	id := target.ID()
	if err := l.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(g.peers[id])).Error(); err != nil {
		g.t.Fatalf("hand the lead from %s to %s: %v", l.ID(), id, err)
	}
}

// checkNeverLeads checks that an untrusted member gives the lead away, that
// BecomeLeader refuses it (its broker is never opened), and that the reason
// names the operator's way out.
func checkNeverLeads(t *testing.T, g *testGroup, n *Node, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var other *Node
		for _, m := range g.nodes {
			if m != n && m.IsLeader() {
				other = m
			}
		}
		if other != nil && !n.IsLeader() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("member %s still leads (leader %v) 15 s after its files stopped matching the group's", n.ID(), n.IsLeader())
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, err := n.BecomeLeader(context.Background(), "http://"+n.ID())
	if !errors.Is(err, ErrUntrusted) {
		t.Fatalf("BecomeLeader on the untrusted member: %v, want %v", err, ErrUntrusted)
	}
	for _, s := range []string{want, "delete its data directory", n.dir} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("reason %q does not say %q", err, s)
		}
	}
	if !errors.Is(n.Untrusted(), ErrUntrusted) {
		t.Errorf("Untrusted() = %v", n.Untrusted())
	}
	if v := testutil.ToFloat64(n.metrics.untrusted); v != 1 {
		t.Errorf("postbus_raft_member_untrusted = %v, want 1", v)
	}
	if n.Epoch() != 0 {
		t.Errorf("epoch %d, want 0: the untrusted member's proposals are not fenced", n.Epoch())
	}
}

// TestUnappliedEntryDistrustsMember (A6): a member that fails to apply a
// committed entry (here its commitlog gained a record behind the broker's
// back, so the group's next batch no longer fits) no longer holds the
// group's state: it must not lead, whether it follows or leads then.
func TestUnappliedEntryDistrustsMember(t *testing.T) {
	for _, who := range []string{"follower", "leader"} {
		t.Run(who, func(t *testing.T) {
			g := newTestGroup(t, "n1", "n2", "n3")
			for _, id := range []string{"n1", "n2", "n3"} {
				g.start(id)
			}
			l := g.leader()
			b := openLeaderBroker(t, l)
			defer b.Close()
			createTopic(t, b, "orders")
			publish(t, b, "orders", 40, 5, "a")
			target := l
			if who == "follower" {
				ids := []string{}
				for id, n := range g.nodes {
					if n != l {
						ids = append(ids, id)
					}
				}
				sort.Strings(ids)
				target = g.nodes[ids[0]]
				waitApplied(t, target, l.AppliedIndex())
			}
			tl, _ := target.Files()
			if _, _, err := tl.Append([][]byte{[]byte("x")}); err != nil {
				t.Fatal(err)
			}
			_, err := b.Publish(context.Background(), "orders", []*broker.Message{
				{Body: bytes.Repeat([]byte("b"), 200), ContentType: "text/plain"},
				{Body: bytes.Repeat([]byte("c"), 200), ContentType: "text/plain"}})
			if who == "leader" && err == nil {
				t.Fatal("a publish the leader could not apply answered success")
			}
			if who == "follower" && err != nil {
				t.Fatalf("publish: %v", err)
			}
			g.handLeadTo(target)
			checkNeverLeads(t, g, target, "was not applied")
			if f := testutil.ToFloat64(target.metrics.applyFailures.WithLabelValues("records")); f < 1 {
				t.Errorf("apply failures counted: %v", f)
			}
		})
	}
}

// TestDamagedCommitlogDistrustsMember (A5): a member restarted with damaged
// spans in a sealed commitlog segment would, leading, serve the group's log
// with those records skipped; it must not lead.
func TestDamagedCommitlogDistrustsMember(t *testing.T) {
	g := newTestGroup(t, "n1", "n2", "n3")
	for _, id := range []string{"n1", "n2", "n3"} {
		g.start(id)
	}
	l := g.leader()
	b := openLeaderBroker(t, l)
	createTopic(t, b, "orders")
	// 1.6 MB: the first 1 MiB segment is sealed.
	for i := 0; i < 400; i += 20 {
		var msgs []*broker.Message
		for j := i; j < i+20; j++ {
			msgs = append(msgs, &broker.Message{Body: []byte(fmt.Sprintf("%d-%s", j, bytes.Repeat([]byte("m"), 4000))), ContentType: "text/plain"})
		}
		if _, err := b.Publish(context.Background(), "orders", msgs); err != nil {
			t.Fatalf("publish %d..: %v", i, err)
		}
	}
	var target *Node
	for _, id := range []string{"n1", "n2", "n3"} {
		if g.nodes[id] != l {
			target = g.nodes[id]
			break
		}
	}
	id := target.ID()
	waitApplied(t, target, l.AppliedIndex())
	g.stop(id)
	seg := filepath.Join(g.dirs[id], "commitlog", fmt.Sprintf("%020d", 0))
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatalf("read the sealed segment: %v", err)
	}
	if len(data) < 1<<20-8192 {
		t.Fatalf("segment 0 holds %d bytes: not sealed", len(data))
	}
	// Bit rot in the middle of the sealed segment.
	for i := 300000; i < 300016; i++ {
		data[i] ^= 0xff
	}
	if err := os.WriteFile(seg, data, 0o644); err != nil {
		t.Fatal(err)
	}
	target = g.start(id)
	g.handLeadTo(target)
	if err := b.Close(); err != nil {
		t.Logf("close the old leader's broker: %v", err)
	}
	checkNeverLeads(t, g, target, "damaged span")
}

// TestGrownLogDistrustsMember: a member whose log grew past where the
// group's next batches land (here a record appended behind the broker's
// back) must not take those batches for a replay of what it holds: its
// bytes there differ, so it no longer matches its group and stops being
// trusted, loudly, instead of skipping them without a word.
func TestGrownLogDistrustsMember(t *testing.T) {
	g := newTestGroup(t, "n1", "n2", "n3")
	for _, id := range []string{"n1", "n2", "n3"} {
		g.start(id)
	}
	l := g.leader()
	b := openLeaderBroker(t, l)
	defer b.Close()
	createTopic(t, b, "orders")
	publish(t, b, "orders", 20, 5, "a")
	var target *Node
	for _, n := range g.nodes {
		if n != l && (target == nil || n.ID() < target.ID()) {
			target = n
		}
	}
	waitApplied(t, target, l.AppliedIndex())
	tl, _ := target.Files()
	// One record larger than the batch that follows: the batch lands
	// wholly inside it.
	if _, _, err := tl.Append([][]byte{bytes.Repeat([]byte("x"), 8<<10)}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(context.Background(), "orders", []*broker.Message{
		{Body: bytes.Repeat([]byte("b"), 200), ContentType: "text/plain"},
		{Body: bytes.Repeat([]byte("c"), 200), ContentType: "text/plain"}}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	waitApplied(t, target, l.AppliedIndex())
	if s := testutil.ToFloat64(target.metrics.skipped); s != 0 {
		t.Errorf("records taken for a replay on the member whose log grew: %v, want 0", s)
	}
	if f := testutil.ToFloat64(target.metrics.applyFailures.WithLabelValues("records")); f < 1 {
		t.Errorf("apply failures counted: %v, want >= 1", f)
	}
	g.handLeadTo(target)
	checkNeverLeads(t, g, target, "was not applied")
}
