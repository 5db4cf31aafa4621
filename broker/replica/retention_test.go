package replica

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postbus/postbus/broker"
)

// TestRetentionCutIsTheGroups (A4): the leader's disk watermark (here set
// so low that any disk is over it) deletes the oldest segments; the cut
// goes through raft, so every member deletes the same ones and the logs
// stay the same byte for byte. A follower over the watermark deletes
// nothing by itself: it says so (metric, not ready). A member that led
// before and kept its consume queues takes the lead again after the cut
// without taking the retired segments for lost ones.
func TestRetentionCutIsTheGroups(t *testing.T) {
	g := newTestGroup(t, "n1", "n2", "n3")
	clean := map[string]bool{}
	g.tweak = func(id string, c *broker.Config) {
		if clean[id] {
			c.DiskCleanRatio, c.DiskFullRatio = 0.001, 0.999
			c.RetentionInterval = 50 * time.Millisecond
		}
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		g.start(id)
	}
	first := g.leader()
	b := openLeaderBroker(t, first)
	createTopic(t, b, "orders")
	publish(t, b, "orders", 10, 5, "before")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// The others now clean: restart them with the watermark, and hand the
	// lead to one of them. first keeps the consume queues of its lead.
	var cleaner *Node
	for id := range g.nodes {
		if id != first.ID() {
			clean[id] = true
			g.stop(id)
			g.start(id)
			if cleaner == nil {
				cleaner = g.nodes[id]
			}
		}
	}
	g.handLeadTo(cleaner)
	for !cleaner.IsLeader() {
		time.Sleep(5 * time.Millisecond)
	}
	b = openLeaderBroker(t, cleaner)
	want := map[string][]byte{}
	for i := 0; i < 40; i++ {
		body := bytes.Repeat([]byte{byte('a' + i%26)}, 100<<10)
		res, err := b.Publish(context.Background(), "orders", []*broker.Message{{Body: body}})
		if err != nil {
			t.Fatal(err)
		}
		want[res[0].ID] = body
	}
	cl, _ := cleaner.Files()
	deadline := time.Now().Add(20 * time.Second)
	for len(cl.Segments()) > 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the leader's disk watermark deleted nothing: segments %v", cl.Segments())
		}
		time.Sleep(10 * time.Millisecond)
	}
	logMin := cl.MinOffset()
	for id, n := range g.nodes {
		waitApplied(t, n, cleaner.AppliedIndex())
		l, _ := n.Files()
		if got := l.MinOffset(); got != logMin {
			t.Errorf("member %s's log starts at %d, the leader's at %d: the members' logs differ", id, got, logMin)
		}
		if err := l.SyncAll(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ref := readLog(t, g.dirs[cleaner.ID()], cl.End())
	for id := range g.nodes {
		l, _ := g.nodes[id].Files()
		if got := readLog(t, g.dirs[id], l.End()); !bytes.Equal(got, ref) {
			t.Errorf("member %s's commitlog (%d bytes) differs from the leader's (%d bytes)", id, len(got), len(ref))
		}
	}
	// The other cleaner follows over the watermark: it reports it.
	for id, n := range g.nodes {
		if !clean[id] || n == cleaner {
			continue
		}
		deadline := time.Now().Add(10 * time.Second)
		for !errors.Is(n.NotReady(), ErrDiskOverClean) {
			if time.Now().After(deadline) {
				t.Fatalf("follower %s over the clean watermark: NotReady() = %v", id, n.NotReady())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if v := testutil.ToFloat64(n.metrics.diskOver); v != 1 {
			t.Errorf("follower %s: postbus_raft_disk_over_clean = %v, want 1", id, v)
		}
	}
	if v := testutil.ToFloat64(first.metrics.diskOver); v != 0 || first.NotReady() != nil {
		t.Errorf("member %s under the watermark: gauge %v, NotReady %v", first.ID(), v, first.NotReady())
	}
	tp, err := b.Topic(context.Background(), "orders")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// The member that led before the cut leads again: the same messages,
	// and nothing reported lost.
	g.handLeadTo(first)
	for !first.IsLeader() {
		time.Sleep(5 * time.Millisecond)
	}
	b = openLeaderBroker(t, first)
	defer b.Close()
	if d := b.Damaged(); len(d) != 0 {
		t.Errorf("the member that led before the cut reports damage after it: %+v", d)
	}
	got, err := b.Topic(context.Background(), "orders")
	if err != nil {
		t.Fatal(err)
	}
	if got.Messages != tp.Messages {
		t.Errorf("after the failover the topic holds %d messages, before it %d", got.Messages, tp.Messages)
	}
	for id, body := range want {
		m, err := b.Message(context.Background(), id)
		if errors.Is(err, broker.ErrMessageNotFound) {
			continue // retired by the cut, on every member
		}
		if err != nil || !bytes.Equal(m.Body, body) {
			t.Fatalf("message %s after the failover: %v", id, err)
		}
	}
}
