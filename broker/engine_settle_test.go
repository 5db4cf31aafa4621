package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// TestNackedOrderedReceiptIsStale (model M2, pull seed 12): a nacked
// ordered pull receipt settles nothing again (an ack is stale, a nack is
// answered as the retry of the nack it is), before its
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
				// An ack is stale; a nack again is a retry of the nack,
				// answered nacked, and changes nothing.
				if tc.ack {
					if err = b.Ack(ctx, "g", receipts(got)); !errors.Is(err, ErrStaleReceipt) {
						t.Fatalf("acking the nacked receipt: %v, want stale", err)
					}
				} else if res, err := b.NackEach(ctx, "g", receipts(got), 0); err != nil || res[0].Status != ReceiptNacked {
					t.Fatalf("nacking the nacked receipt again: %+v, %v, want nacked", res, err)
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

// toggleOrdered turns a subscription's ordered setting to on.
func toggleOrdered(t *testing.T, b *Broker, id string, on bool) {
	t.Helper()
	s, err := b.Subscription(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	s.Ordered = on
	if _, err := b.UpdateSubscription(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// TestTurningUnorderedKeepsWhatIsOut (model M3, pull seed 1): a message an
// ordered pull group has out when the subscription turns unordered stays
// out until its visibility ends, then comes back as the next attempt. The
// group's blocks used to be forgotten with its offset at the message, so
// the next pull handed it out again at once, as attempt 1.
func TestTurningUnorderedKeepsWhatIsOut(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		b := openBroker(t, testConfig(t, dir))
		if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
			t.Fatal(err)
		}
		sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", MaxRetries: 5, StartFrom: "earliest"})
		if err != nil {
			t.Fatal(err)
		}
		toggleOrdered(t, b, sub.ID, true)
		publish(t, b, "t", msg("m0"), msg("m1"))
		got := pullN(t, b, "g", "t", 1, time.Second, 10*time.Second)
		if len(got) != 1 || string(got[0].Body) != "m0" {
			t.Fatalf("ordered pull %q, want m0", bodies(got))
		}
		toggleOrdered(t, b, sub.ID, false)
		early := pullN(t, b, "g", "t", 10, time.Second, 10*time.Second)
		if len(early) != 1 || string(early[0].Body) != "m1" {
			t.Fatalf("after turning unordered, with m0 out for 10s, pulled %q; want only m1", bodies(early))
		}
		if err := b.Ack(ctx, "g", receipts(early)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		again := pullN(t, b, "g", "t", 10, time.Second, 10*time.Second)
		if len(again) != 1 || string(again[0].Body) != "m0" || again[0].Attempt != 2 {
			t.Fatalf("once m0's visibility ended pulled %q (%+v), want m0 as attempt 2", bodies(again), again)
		}
	})
}

// TestTurningUnorderedKeepsReceipts (attack F6): the receipt of a message
// an ordered pull group had out when it turned unordered still acks it,
// and the message is done; it used to be stale at once.
func TestTurningUnorderedKeepsReceipts(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		b := openBroker(t, testConfig(t, dir))
		if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
			t.Fatal(err)
		}
		sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", Ordered: true, MaxRetries: 5, StartFrom: "earliest"})
		if err != nil {
			t.Fatal(err)
		}
		publish(t, b, "t", msg("m0"))
		got := pullN(t, b, "g", "t", 1, time.Second, 10*time.Second)
		if len(got) != 1 {
			t.Fatalf("ordered pull %q, want m0", bodies(got))
		}
		toggleOrdered(t, b, sub.ID, false)
		if res, err := b.AckEach(ctx, "g", receipts(got)); err != nil || len(res) != 1 || res[0].Status != ReceiptAcked {
			t.Fatalf("acking m0 after the group turned unordered: %+v, %v; want acked", res, err)
		}
		// A retried ack of an acked receipt is acked again, not an error.
		if res, err := b.AckEach(ctx, "g", receipts(got)); err != nil || len(res) != 1 || res[0].Status != ReceiptAcked {
			t.Fatalf("acking m0 twice: %+v, %v; want acked", res, err)
		}
		time.Sleep(11 * time.Second)
		if again := pullN(t, b, "g", "t", 10, time.Second, 10*time.Second); len(again) != 0 {
			t.Fatalf("after its ack and its visibility pulled %q, want nothing", bodies(again))
		}
	})
}

// TestTurningUnorderedKeepsTheAttemptCount (attack F7): an ordered push
// subscription's message waiting for its retry when the subscription
// turns unordered goes out as the next attempt, not as attempt 1 with a
// fresh retry budget; and a delivery out at the change settles.
func TestTurningUnorderedKeepsTheAttemptCount(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		b := openBroker(t, testConfig(t, dir))
		if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 2}); err != nil {
			t.Fatal(err)
		}
		sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", URL: "http://127.0.0.1:9/hook",
			Ordered: true, MaxRetries: 5, StartFrom: "earliest"})
		if err != nil {
			t.Fatal(err)
		}
		publish(t, b, "t", &Message{Body: []byte("a0"), ShardingKey: "a"}, &Message{Body: []byte("b0"), ShardingKey: "b"})
		if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
			t.Fatal(err)
		}
		eng := b.Engine()
		lease := func() map[string]Lease {
			t.Helper()
			got, err := eng.Lease(ctx, "g", "t", 10, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			out := map[string]Lease{}
			for _, l := range got {
				out[string(l.Body)] = l
			}
			return out
		}
		first := lease()
		if len(first) != 2 {
			t.Fatalf("leased %d, want a0 and b0 (one per queue)", len(first))
		}
		if first["a0"].QueueID == first["b0"].QueueID {
			t.Fatalf("a0 and b0 on one queue; the test wants them on two")
		}
		// a0 fails twice; b0 stays out across the change.
		a := first["a0"]
		for attempt := 1; attempt <= 2; attempt++ {
			if a.Attempt != attempt {
				t.Fatalf("a0 out as attempt %d, want %d", a.Attempt, attempt)
			}
			if err := eng.Settle(ctx, a.Receipt, RetryAt(time.Now().Add(time.Second))); err != nil {
				t.Fatal(err)
			}
			if attempt == 2 {
				break
			}
			time.Sleep(time.Second)
			a = lease()["a0"]
		}
		toggleOrdered(t, b, sub.ID, false)
		var got Lease
		for i := 0; i < 10 && got.Message == nil; i++ {
			time.Sleep(time.Second)
			ls := lease()
			if _, again := ls["b0"]; again {
				t.Errorf("b0, out across the change, leased again")
			}
			got = ls["a0"]
		}
		if got.Message == nil || got.Attempt != 3 {
			t.Errorf("after turning unordered a0 came back as attempt %d, want 3", got.Attempt)
		}
		if err := eng.Settle(ctx, first["b0"].Receipt, Ack()); err != nil {
			t.Errorf("settling b0, out across the change: %v", err)
		}
	})
}

// TestTurningOrderedRepeatsNothingSettled (model M5, push seeds 3 and 8):
// turning an unordered push subscription ordered hands out nothing already
// settled, and what was out stays out and settles. The consumer used to be
// built again from the group's offset, which sat at the oldest message
// out, so every message settled above it went out again.
func TestTurningOrderedRepeatsNothingSettled(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", URL: "http://127.0.0.1:9/hook", StartFrom: "earliest"})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("m0"), msg("m1"), msg("m2"))
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	eng := b.Engine()
	got, err := eng.Lease(ctx, "g", "t", 10, time.Minute)
	if err != nil || len(got) != 3 {
		t.Fatalf("leased %q, %v; want 3", bodies(got), err)
	}
	for _, l := range got[1:] {
		if err := eng.Settle(ctx, l.Receipt, Ack()); err != nil {
			t.Fatal(err)
		}
	}
	toggleOrdered(t, b, sub.ID, true)
	publish(t, b, "t", msg("m3"))
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	after, err := eng.Lease(ctx, "g", "t", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// m0 is still out on the queue: m3 waits for it (ordered: one at a
	// time; push model seed 82).
	if bs := bodies(after); len(bs) != 0 {
		t.Fatalf("after turning ordered leased %q while m0 is out, want nothing", bs)
	}
	if err := eng.Settle(ctx, got[0].Receipt, Ack()); err != nil {
		t.Fatalf("acking m0, out across the change: %v", err)
	}
	after, err = eng.Lease(ctx, "g", "t", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if bs := bodies(after); !slices.Equal(bs, []string{"m3"}) {
		t.Fatalf("after m0 settled leased %q, want only the new m3 (m1 and m2 acked)", bs)
	}
}

// TestPushResumesAboveWhatIsOut (fault 16): a push consumer built again
// (a restart; the subscription deleted and created again, ordered too)
// delivers again only what was out, not
// everything settled above the oldest message out, which the group's
// offset cannot pass. Before the offsets' progress record all of m1..m5
// went out again.
func TestPushResumesAboveWhatIsOut(t *testing.T) {
	for _, how := range []string{"restart", "delete and create", "delete and create ordered"} {
		t.Run(how, func(t *testing.T) {
			ctx := context.Background()
			cfg := testConfig(t, t.TempDir())
			b, err := Open(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { b.Close() }()
			if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
				t.Fatal(err)
			}
			sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", URL: "http://127.0.0.1:9/hook", MaxInFlight: 16, StartFrom: "earliest"})
			if err != nil {
				t.Fatal(err)
			}
			var ms []*Message
			for i := range 6 {
				ms = append(ms, msg(fmt.Sprintf("m%d", i)))
			}
			publish(t, b, "t", ms...)
			if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
				t.Fatal(err)
			}
			got, err := b.Engine().Lease(ctx, "g", "t", 16, time.Minute)
			if err != nil || len(got) != 6 {
				t.Fatalf("leased %q, %v; want 6", bodies(got), err)
			}
			for _, l := range got[1:] { // m0 stays out
				if err := b.Engine().Settle(ctx, l.Receipt, Ack()); err != nil {
					t.Fatal(err)
				}
			}
			switch how {
			case "restart":
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
				if b, err = Open(ctx, cfg); err != nil {
					t.Fatal(err)
				}
			default:
				if err := b.DeleteSubscription(ctx, sub.ID); err != nil {
					t.Fatal(err)
				}
				if _, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", URL: "http://127.0.0.1:9/hook", MaxInFlight: 16,
					Ordered: how == "delete and create ordered", StartFrom: "earliest"}); err != nil {
					t.Fatal(err)
				}
			}
			publish(t, b, "t", msg("m6"))
			if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
				t.Fatal(err)
			}
			again, err := b.Engine().Lease(ctx, "g", "t", 16, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if how == "delete and create ordered" {
				// One at a time, in the queue's order: m0 before m6
				// (they once went out together).
				if bs := bodies(again); !slices.Equal(bs, []string{"m0"}) {
					t.Fatalf("after the consumer was built ordered leased %q, want [m0]: m0 was out, m1..m5 acked", bs)
				}
				if err := b.Engine().Settle(ctx, again[0].Receipt, Ack()); err != nil {
					t.Fatal(err)
				}
				more, err := b.Engine().Lease(ctx, "g", "t", 16, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				again = append(again, more...)
			}
			if bs := bodies(again); !slices.Equal(slices.Sorted(slices.Values(bs)), []string{"m0", "m6"}) {
				t.Fatalf("after the consumer was built again leased %q, want [m0 m6]: m0 was out, m1..m5 acked", bs)
			}
		})
	}
}
