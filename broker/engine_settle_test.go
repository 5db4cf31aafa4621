package broker

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// TestNackedOrderedReceiptIsStale (model M2, pull seed 12): a nacked
// ordered pull receipt settles nothing again, an ack or a nack, before its
// message goes out again and after a restart too; the queue's block kept
// the receipt's message and attempt, so it used to take a second settle.
// The nack that waits exactly until the lease's end is the case a restart
// cannot tell from the lease by the block alone.
func TestNackedOrderedReceiptIsStale(t *testing.T) {
	for _, tc := range []struct {
		name      string
		nackDelay time.Duration // the lease's visibility is 10s
		restart   bool
		ack       bool
	}{
		{"ack", time.Second, false, true},
		{"nack", time.Second, false, false},
		{"ack after a restart", time.Second, true, true},
		{"nack after a restart", time.Second, true, false},
		{"ack after a restart, nacked until the lease's end", 10 * time.Second, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				cfg := testConfig(t, dir)
				b, err := Open(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer func() { b.Close() }()
				if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
					t.Fatal(err)
				}
				if _, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", Ordered: true, MaxRetries: 5, StartFrom: "earliest"}); err != nil {
					t.Fatal(err)
				}
				publish(t, b, "t", msg("m0"), msg("m1"))
				got := pullN(t, b, "g", "t", 1, time.Second, 10*time.Second)
				if len(got) != 1 || string(got[0].Body) != "m0" {
					t.Fatalf("pulled %q, want m0", bodies(got))
				}
				if err := b.Nack(ctx, "g", receipts(got), tc.nackDelay); err != nil {
					t.Fatal(err)
				}
				if tc.restart {
					if err := b.Close(); err != nil {
						t.Fatal(err)
					}
					if b, err = Open(ctx, cfg); err != nil {
						t.Fatal(err)
					}
				}
				if tc.ack {
					err = b.Ack(ctx, "g", receipts(got))
				} else {
					err = b.Nack(ctx, "g", receipts(got), 0)
				}
				if !errors.Is(err, ErrStaleReceipt) {
					t.Fatalf("settling the nacked receipt again: %v, want stale", err)
				}
				// The nack stands: m0 comes back as attempt 2, not m1.
				time.Sleep(tc.nackDelay)
				again := pullN(t, b, "g", "t", 1, time.Second, 10*time.Second)
				if len(again) != 1 || string(again[0].Body) != "m0" || again[0].Attempt != 2 {
					t.Fatalf("after the nack's delay pulled %q (%+v), want m0 as attempt 2", bodies(again), again)
				}
			})
		})
	}
}
