package broker

import (
	"context"
	"testing"
	"time"
)

// TestCancelledPullLeavesNoCopies: a pull whose puller has left (its
// context cancelled while the lease's visibility copies are being synced,
// as when another broker's long poll answered first) either hands the
// messages out or leaves nothing behind. It used to append the copies,
// fail on the cancelled sync, undo the lease and leave the copies, so a
// message pulled again and acked came back as attempt 2 after its
// visibility.
func TestCancelledPullLeavesNoCopies(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.SyncFlush = true // the copies' write waits for an fsync, which a cancel cuts short
	b := openBroker(t, cfg)
	const n = 20
	if _, _, err := b.PutTopic(context.Background(), "orders", TopicSettings{}); err != nil {
		t.Fatal(err)
	}
	// The group's first pull and ack set up its consumer and retry topic.
	publish(t, b, "orders", msg("first"))
	got, err := b.Pull(context.Background(), "g", "orders", 1, time.Second, time.Second)
	if err != nil || len(got) != 1 {
		t.Fatalf("first pull: %v, %d messages", err, len(got))
	}
	if err := b.Ack(context.Background(), "g", []string{got[0].Receipt}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		publish(t, b, "orders", msg("m"+string(rune('a'+i))))
	}
	if err := b.waitDispatched(context.Background(), b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	// A pull whose puller has already left: what it leases is lost to the
	// caller, and the HTTP layer hands it back with a nack, as here.
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	{
		got, err := b.Pull(cancelled, "g", "orders", n, 0, time.Second)
		if err != nil {
			t.Logf("cancelled pull: %v", err)
		}
		if len(got) > 0 {
			receipts := make([]string, len(got))
			for i, p := range got {
				receipts[i] = p.Receipt
			}
			if err := b.Nack(context.Background(), "g", receipts, 0); err != nil {
				t.Fatalf("handing back a cancelled pull's messages: %v", err)
			}
		}
	}
	// Everything is pulled and acked now, each once.
	ctx := context.Background()
	acked := map[string]bool{}
	deadline := time.Now().Add(20 * time.Second)
	for len(acked) < n && time.Now().Before(deadline) {
		got, err := b.Pull(ctx, "g", "orders", 32, 200*time.Millisecond, time.Minute)
		if err != nil {
			t.Fatalf("pull: %v", err)
		}
		for _, p := range got {
			if acked[p.ID] {
				t.Fatalf("message %s handed out again after its ack (attempt %d)", p.ID, p.Attempt)
			}
			if err := b.Ack(ctx, "g", []string{p.Receipt}); err != nil {
				t.Fatalf("ack %s: %v", p.ID, err)
			}
			acked[p.ID] = true
		}
	}
	if len(acked) != n {
		t.Fatalf("pulled and acked %d of %d messages", len(acked), n)
	}
	// A copy left behind comes back once the first visibility (1s) is out.
	got, err = b.Pull(ctx, "g", "orders", 32, 2500*time.Millisecond, time.Minute)
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	for _, p := range got {
		t.Errorf("message %s came back as attempt %d after it was acked: a cancelled pull left its visibility copy behind", p.ID, p.Attempt)
	}
}
