package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/broker/meta"
)

// testGroup is a replica group in this process on raft's in-memory
// transport, each member with real files in its own directory.
type testGroup struct {
	t     *testing.T
	dirs  map[string]string
	peers map[string]string
	nodes map[string]*Node
	trans map[string]*raft.InmemTransport
	// trailing is raft's TrailingLogs for every member (0: raft's default).
	trailing uint64
	// tweak, if set, changes a member's broker configuration before it
	// opens.
	tweak func(id string, c *broker.Config)
}

func newTestGroup(t *testing.T, ids ...string) *testGroup {
	t.Helper()
	g := &testGroup{t: t, dirs: map[string]string{}, peers: map[string]string{}, nodes: map[string]*Node{}, trans: map[string]*raft.InmemTransport{}}
	for _, id := range ids {
		g.dirs[id] = t.TempDir()
		g.peers[id] = "mem-" + id
	}
	t.Cleanup(func() {
		for _, n := range g.nodes {
			_ = n.Close()
		}
	})
	return g
}

// start opens member id (again) and connects it with the others running.
func (g *testGroup) start(id string) *Node {
	g.t.Helper()
	_, tr := raft.NewInmemTransport(raft.ServerAddress(g.peers[id]))
	g.trans[id] = tr
	for other, ot := range g.trans {
		if other != id && g.nodes[other] != nil {
			tr.Connect(raft.ServerAddress(g.peers[other]), ot)
			ot.Connect(raft.ServerAddress(g.peers[id]), tr)
		}
	}
	bc := broker.DefaultConfig(g.dirs[id])
	bc.SegmentSize = 1 << 20
	bc.CheckpointInterval = 50 * time.Millisecond
	// What is tested is replication, not a full disk: a shared machine's
	// disk past the default 85% would have the leader cut the log.
	bc.DiskCleanRatio, bc.DiskFullRatio = 0.99, 0.995
	bc.Logger = slog.New(slog.DiscardHandler)
	if os.Getenv("REPLICA_TEST_LOG") != "" {
		bc.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", id)
	}
	if g.tweak != nil {
		g.tweak(id, &bc)
	}
	cfg := Config{Broker: bc, NodeID: id, Peers: g.peers, Transport: tr, Logger: bc.Logger,
		HeartbeatTimeout: time.Second, ElectionTimeout: time.Second,
		LeaderLeaseTimeout: 500 * time.Millisecond, CommitTimeout: 5 * time.Millisecond,
		SnapshotInterval: time.Hour, SnapshotThreshold: 1 << 30, TrailingLogs: g.trailing}
	n, err := Open(context.Background(), cfg)
	if err != nil {
		g.t.Fatalf("open member %s: %v", id, err)
	}
	g.nodes[id] = n
	return n
}

// stop shuts member id down (its files stay).
func (g *testGroup) stop(id string) {
	g.t.Helper()
	n := g.nodes[id]
	delete(g.nodes, id)
	for other, ot := range g.trans {
		if other != id {
			ot.Disconnect(raft.ServerAddress(g.peers[id]))
		}
	}
	delete(g.trans, id)
	if err := n.Close(); err != nil {
		g.t.Errorf("close member %s: %v", id, err)
	}
}

// leader waits for a leader among the running members.
func (g *testGroup) leader() *Node {
	g.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range g.nodes {
			if n.IsLeader() {
				return n
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	g.t.Fatal("no leader within 10s")
	return nil
}

// openLeaderBroker makes n's broker, as cmd/postbus does when n leads.
func openLeaderBroker(t *testing.T, n *Node) *broker.Broker {
	t.Helper()
	ctx := context.Background()
	bc, err := n.BecomeLeader(ctx, "http://"+n.ID())
	if err != nil {
		t.Fatalf("become leader: %v", err)
	}
	b, err := broker.Open(ctx, bc)
	if err != nil {
		t.Fatalf("open the leader's broker: %v", err)
	}
	return b
}

// publish stores n messages in batches of batch on topic and returns their
// ids and bodies.
func publish(t *testing.T, b *broker.Broker, topic string, n, batch int, tag string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for i := 0; i < n; i += batch {
		var msgs []*broker.Message
		for j := i; j < min(n, i+batch); j++ {
			msgs = append(msgs, &broker.Message{Body: []byte(fmt.Sprintf("%s-%d-%s", tag, j, bytes.Repeat([]byte("x"), j%97))), ContentType: "text/plain"})
		}
		res, err := b.Publish(context.Background(), topic, msgs)
		if err != nil {
			t.Fatalf("publish %d..: %v", i, err)
		}
		for k, r := range res {
			out[r.ID] = msgs[k].Body
		}
	}
	return out
}

// checkAll reads every message back through b, byte for byte, and checks
// the topic holds no more than want.
func checkAll(t *testing.T, b *broker.Broker, topic string, want map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	for id, body := range want {
		m, err := b.Message(ctx, id)
		if err != nil {
			t.Fatalf("message %s: %v", id, err)
		}
		if !bytes.Equal(m.Body, body) {
			t.Fatalf("message %s: body %q, want %q", id, m.Body, body)
		}
	}
	tp, err := b.Topic(ctx, topic)
	if err != nil {
		t.Fatalf("topic %s: %v", topic, err)
	}
	if tp.Messages != int64(len(want)) {
		t.Fatalf("topic %s holds %d messages, want %d (a replay stored some twice, or lost some)", topic, tp.Messages, len(want))
	}
}

func createTopic(t *testing.T, b *broker.Broker, name string) {
	t.Helper()
	if _, _, err := b.PutTopic(context.Background(), name, broker.TopicSettings{Queues: 4}); err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
}

// TestReplayAfterRestartStoresNothingTwice: a member restarted hands every
// entry since its last snapshot to the state machine again; the files
// already hold them, so nothing is appended or applied twice.
func TestReplayAfterRestartStoresNothingTwice(t *testing.T) {
	g := newTestGroup(t, "n1")
	n := g.start("n1")
	g.leader()
	b := openLeaderBroker(t, n)
	createTopic(t, b, "orders")
	want := publish(t, b, "orders", 300, 7, "a")
	l, _ := n.Files()
	end := l.End()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	g.stop("n1")

	n = g.start("n1")
	g.leader()
	// The barrier in BecomeLeader waits for the replay.
	b = openLeaderBroker(t, n)
	defer b.Close()
	l, _ = n.Files()
	if got := l.End(); got != end {
		t.Fatalf("log end after the replay %d, want %d: entries were appended again", got, end)
	}
	if got := testutil.ToFloat64(n.metrics.skipped); got != 300 {
		t.Errorf("records skipped by the replay: %v, want 300", got)
	}
	if got := testutil.CollectAndCount(n.metrics.applyFailures); got != 0 {
		t.Errorf("entries the replay could not apply: %d kinds counted, want none", got)
	}
	checkAll(t, b, "orders", want)
	more := publish(t, b, "orders", 20, 3, "b")
	for id, body := range more {
		want[id] = body
	}
	checkAll(t, b, "orders", want)
}

// TestReplayRewritesALostTail: the commitlog is fsynced at snapshots only,
// so a crash may cut its tail; the replay writes the missing records again,
// at the same offsets, and only those.
func TestReplayRewritesALostTail(t *testing.T) {
	g := newTestGroup(t, "n1")
	n := g.start("n1")
	g.leader()
	b := openLeaderBroker(t, n)
	createTopic(t, b, "orders")
	want := publish(t, b, "orders", 40, 4, "a")
	l, _ := n.Files()
	segs := l.Segments()
	last := segs[len(segs)-1]
	end := l.End()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	g.stop("n1")

	// Zero the last 30% of what was written, as if the page cache never
	// reached the disk: recovery cuts the log at the first bad record.
	cut := last.Base + (end-last.Base)*7/10
	path := filepath.Join(g.dirs["n1"], "commitlog", fmt.Sprintf("%020d", last.Base))
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, end-cut), cut-last.Base); err != nil {
		t.Fatal(err)
	}
	f.Close()

	n = g.start("n1")
	g.leader()
	b = openLeaderBroker(t, n)
	defer b.Close()
	l, _ = n.Files()
	if got := l.End(); got != end {
		t.Fatalf("log end after the replay %d, want %d", got, end)
	}
	if s := testutil.ToFloat64(n.metrics.skipped); s == 0 || s >= 40 {
		t.Errorf("records skipped by the replay: %v, want some but not all of 40", s)
	}
	if f := testutil.ToFloat64(n.metrics.applyFailures.WithLabelValues("records")); f != 0 {
		t.Errorf("apply failures: %v", f)
	}
	checkAll(t, b, "orders", want)
}

// TestLeaderChange: the leader stops; another member leads, opens its
// broker on its own replicated files, reads every message and takes
// publishes; the old leader comes back and catches up.
func TestLeaderChange(t *testing.T) {
	g := newTestGroup(t, "n1", "n2", "n3")
	for _, id := range []string{"n1", "n2", "n3"} {
		g.start(id)
	}
	first := g.leader()
	b := openLeaderBroker(t, first)
	createTopic(t, b, "orders")
	want := publish(t, b, "orders", 200, 10, "a")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	old := first.ID()
	g.stop(old)

	next := g.leader()
	b = openLeaderBroker(t, next)
	checkAll(t, b, "orders", want)
	more := publish(t, b, "orders", 50, 5, "b")
	for id, body := range more {
		want[id] = body
	}
	checkAll(t, b, "orders", want)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	back := g.start(old)
	waitApplied(t, back, next.AppliedIndex())
	// Every member's commitlog is the same, byte for byte.
	logs := map[string][]byte{}
	for id, n := range g.nodes {
		l, _ := n.Files()
		if err := l.SyncAll(context.Background()); err != nil {
			t.Fatal(err)
		}
		logs[id] = readLog(t, g.dirs[id], l.End())
	}
	for id, data := range logs {
		if !bytes.Equal(data, logs[next.ID()]) {
			t.Errorf("member %s's commitlog (%d bytes) differs from the leader's (%d bytes)", id, len(data), len(logs[next.ID()]))
		}
	}
}

func waitApplied(t *testing.T, n *Node, idx uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.AppliedIndex() < idx {
		if time.Now().After(deadline) {
			t.Fatalf("member %s applied %d, want %d", n.ID(), n.AppliedIndex(), idx)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readLog reads a member's commitlog segments up to end.
func readLog(t *testing.T, dir string, end int64) []byte {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "commitlog"))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, e := range entries {
		var base int64
		if _, err := fmt.Sscanf(e.Name(), "%020d", &base); err != nil || len(e.Name()) != 20 {
			continue
		}
		if base >= end {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, "commitlog", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, data[:min(int64(len(data)), end-base)]...)
	}
	return out
}

// TestWipedMemberRestoredBySnapshot: a follower loses its data directory
// while the leader's raft log no longer holds the entries it needs; it is
// restored from a snapshot that streams the leader's segments.
func TestWipedMemberRestoredBySnapshot(t *testing.T) {
	g := newTestGroup(t, "n1", "n2", "n3")
	g.trailing = 1
	for _, id := range []string{"n1", "n2", "n3"} {
		g.start(id)
	}
	lead := g.leader()
	b := openLeaderBroker(t, lead)
	createTopic(t, b, "orders")
	// Enough to roll several 1 MiB segments.
	big := map[string][]byte{}
	for i := 0; i < 40; i++ {
		res, err := b.Publish(context.Background(), "orders", []*broker.Message{{Body: bytes.Repeat([]byte{byte('a' + i%26)}, 100<<10)}})
		if err != nil {
			t.Fatal(err)
		}
		big[res[0].ID] = bytes.Repeat([]byte{byte('a' + i%26)}, 100<<10)
	}
	var victim string
	for id := range g.nodes {
		if id != lead.ID() {
			victim = id
			break
		}
	}
	g.stop(victim)
	if err := os.RemoveAll(g.dirs[victim]); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(g.dirs[victim], 0o755); err != nil {
		t.Fatal(err)
	}
	more := publish(t, b, "orders", 10, 2, "after")
	if err := lead.Snapshot(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	back := g.start(victim)
	waitApplied(t, back, lead.AppliedIndex())
	if got := testutil.ToFloat64(back.metrics.restores); got != 1 {
		t.Fatalf("snapshot restores on the wiped member: %v, want 1", got)
	}
	ll, _ := lead.Files()
	bl, _ := back.Files()
	if err := ll.SyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := bl.SyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readLog(t, g.dirs[victim], bl.End()), readLog(t, g.dirs[lead.ID()], ll.End())) {
		t.Fatalf("the restored member's commitlog differs from the leader's (ends %d and %d)", bl.End(), ll.End())
	}

	// It can lead with what it got: hand it the lead.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !back.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatalf("the lead did not go to %s (leader now: %s)", victim, g.leader().ID())
		}
		// The lead may have moved on its own meanwhile: ask whoever has it.
		if cur := g.leader(); cur != back {
			if err := cur.raft.LeadershipTransferToServer(raft.ServerID(victim), raft.ServerAddress(g.peers[victim])).Error(); err != nil {
				t.Logf("leadership transfer from %s: %v", cur.ID(), err)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	b2 := openLeaderBroker(t, back)
	defer b2.Close()
	for id, body := range more {
		big[id] = body
	}
	checkAll(t, b2, "orders", big)
}

// TestEarlierLeadIsFenced: a broker opened for an earlier lead of its
// member (the member lost the lead and took it again before the broker was
// closed) can write nothing: its proposals are refused before raft, and an
// entry of an earlier epoch that reaches the log is refused by every
// member's state machine.
func TestEarlierLeadIsFenced(t *testing.T) {
	g := newTestGroup(t, "n1")
	n := g.start("n1")
	g.leader()
	old := openLeaderBroker(t, n)
	defer old.Close()
	createTopic(t, old, "orders")
	publish(t, old, "orders", 5, 1, "a")
	oldEpoch := n.Epoch()

	// The lead is taken again (as after a loss and a new election).
	if _, err := n.BecomeLeader(context.Background(), "http://n1"); err != nil {
		t.Fatal(err)
	}
	if n.Epoch() == oldEpoch {
		t.Fatalf("epoch %d did not change", n.Epoch())
	}
	l, _ := n.Files()
	end := l.End()
	if _, err := old.Publish(context.Background(), "orders", []*broker.Message{{Body: []byte("stale")}}); err == nil {
		t.Fatal("a broker of an earlier lead published")
	}
	if got := l.End(); got != end {
		t.Fatalf("log end %d after the refused publish, want %d", got, end)
	}

	// An entry of the earlier epoch that raft commits anyway.
	f := n.raft.Apply(encodeRecords(oldEpoch, l.NextStart(100), [][]byte{make([]byte, 84)}), time.Second)
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	res, _ := f.Response().(recordsResult)
	if !errors.Is(res.err, errStaleEpoch) {
		t.Fatalf("stale entry applied: %+v", res)
	}
	if got := l.End(); got != end {
		t.Fatalf("log end %d after the stale entry, want %d", got, end)
	}
	if got := testutil.ToFloat64(n.metrics.staleEntries.WithLabelValues("records")); got != 1 {
		t.Fatalf("stale entries counted: %v, want 1", got)
	}
}

// TestAddMemberRefusesWhatCannotWork: ids and addresses that cannot work,
// or an id that is a member's already at another address, are refused
// before raft, and the member stays where it is.
func TestAddMemberRefusesWhatCannotWork(t *testing.T) {
	g := newTestGroup(t, "n1")
	n := g.start("n1")
	g.leader()
	for _, tc := range []struct {
		id, addr string
		want     error
	}{
		{"n9", "127.0.0.1:99999", meta.ErrInvalid},
		{"n9", "127.0.0.1:0", meta.ErrInvalid},
		{"a/b c", "127.0.0.1:7009", meta.ErrInvalid},
		{"n9", "no-port", meta.ErrInvalid},
		{"n1", "127.0.0.1:7009", ErrMemberConflict},
	} {
		err := n.AddMember(tc.id, tc.addr)
		if !errors.Is(err, tc.want) {
			t.Errorf("AddMember(%q, %q) = %v, want %v", tc.id, tc.addr, err, tc.want)
		}
	}
	st, err := n.Status("g")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Members {
		if m.ID == "n1" && m.Addr != "mem-n1" {
			t.Fatalf("n1 moved to %s", m.Addr)
		}
	}
}
