package broker

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// pullEachWorld is a broker under synctest with a topic t of one queue and
// a pull subscription of group g (ordered or not), for the per-receipt
// tests; reopen closes and opens it again on the same directory.
type pullEachWorld struct {
	t   *testing.T
	cfg Config
	b   *Broker
}

func newPullEachWorld(t *testing.T, dir string, ordered bool, tweaks ...func(*Config)) *pullEachWorld {
	ctx := context.Background()
	w := &pullEachWorld{t: t, cfg: testConfig(t, dir)}
	for _, f := range tweaks {
		f(&w.cfg)
	}
	var err error
	if w.b, err = Open(ctx, w.cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.b.Close() })
	if _, _, err := w.b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", Ordered: ordered, MaxRetries: 5, StartFrom: "earliest"}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *pullEachWorld) reopen() {
	w.t.Helper()
	if err := w.b.Close(); err != nil {
		w.t.Fatal(err)
	}
	var err error
	if w.b, err = Open(context.Background(), w.cfg); err != nil {
		w.t.Fatal(err)
	}
}

func statuses(res []ReceiptResult) []ReceiptStatus {
	out := make([]ReceiptStatus, len(res))
	for i, r := range res {
		out[i] = r.Status
	}
	return out
}

// TestAckRetriedIsAcked: an ack retried after its answer was lost (the
// same receipts again, after a restart too) is acked, and changes nothing;
// it used to fail the batch as stale. Ordered groups too.
func TestAckRetriedIsAcked(t *testing.T) {
	for _, tc := range []struct {
		name             string
		ordered, restart bool
	}{
		{"unordered", false, false},
		{"unordered after a restart", false, true},
		{"ordered", true, false},
		{"ordered after a restart", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				w := newPullEachWorld(t, dir, tc.ordered)
				publish(t, w.b, "t", msg("m0"), msg("m1"), msg("m2"))
				got := pullN(t, w.b, "g", "t", 2, time.Second, 10*time.Second)
				if len(got) != 1 && tc.ordered || len(got) != 2 && !tc.ordered {
					t.Fatalf("pulled %q", bodies(got))
				}
				if err := w.b.Ack(ctx, "g", receipts(got)); err != nil {
					t.Fatal(err)
				}
				if tc.restart {
					w.reopen()
				}
				if err := w.b.Ack(ctx, "g", receipts(got)); err != nil {
					t.Fatalf("the same ack again: %v, want acked", err)
				}
				res, err := w.b.AckEach(ctx, "g", receipts(got))
				if err != nil || slices.ContainsFunc(res, func(r ReceiptResult) bool { return r.Status != ReceiptAcked }) {
					t.Fatalf("the same ack a third time: %v %v, want all acked", statuses(res), err)
				}
				// Nothing acked comes back, past the visibility too.
				time.Sleep(11 * time.Second)
				var rest []string
				for range 3 {
					more := pullN(t, w.b, "g", "t", 10, time.Second, 10*time.Second)
					rest = append(rest, bodies(more)...)
					if len(more) == 0 {
						continue
					}
					if err := w.b.Ack(ctx, "g", receipts(more)); err != nil {
						t.Errorf("ack: %v", err)
					}
				}
				for _, p := range got {
					if slices.Contains(rest, string(p.Body)) {
						t.Fatalf("acked %s came back (then %q)", p.Body, rest)
					}
				}
			})
		})
	}
}

// TestAckSettlesTheGoodReceiptsOfABatch: a batch with a stale receipt (its
// visibility ran out and its message went out again) acks the others; it
// used to change nothing, so a retried batch left good receipts in flight.
func TestAckSettlesTheGoodReceiptsOfABatch(t *testing.T) {
	for _, ordered := range []bool{false, true} {
		t.Run(map[bool]string{false: "unordered", true: "ordered"}[ordered], func(t *testing.T) {
			dir := t.TempDir()
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				w := newPullEachWorld(t, dir, ordered)
				if ordered {
					// A second queue, so that an ordered group has two
					// messages out at once.
					if _, _, err := w.b.PutTopic(ctx, "t", TopicSettings{Queues: 2}); err != nil {
						t.Fatal(err)
					}
				}
				publish(t, w.b, "t", &Message{Body: []byte("a"), Keys: []string{"a"}}, &Message{Body: []byte("b"), Keys: []string{"b"}})
				var short []Pulled
				for len(short) < 1 {
					short = pullN(t, w.b, "g", "t", 1, time.Second, time.Second)
				}
				long := pullN(t, w.b, "g", "t", 1, time.Second, time.Minute)
				if len(long) != 1 {
					t.Fatalf("pulled %q, want the other message", bodies(long))
				}
				time.Sleep(2 * time.Second) // short's visibility runs out
				again := pullN(t, w.b, "g", "t", 1, 5*time.Second, time.Minute)
				if len(again) != 1 || again[0].ID != short[0].ID {
					t.Fatalf("after its visibility pulled %q, want %q again", bodies(again), short[0].Body)
				}
				res, err := w.b.AckEach(ctx, "g", []string{short[0].Receipt, long[0].Receipt, again[0].Receipt})
				if err != nil {
					t.Fatal(err)
				}
				if want := []ReceiptStatus{ReceiptStale, ReceiptAcked, ReceiptAcked}; !slices.Equal(statuses(res), want) {
					t.Fatalf("results %v, want %v", statuses(res), want)
				}
				time.Sleep(time.Minute) // past every visibility
				if more := pullN(t, w.b, "g", "t", 10, time.Second, time.Minute); len(more) != 0 {
					t.Fatalf("pulled %q after acking everything", bodies(more))
				}
			})
		})
	}
}

// TestChangeVisibility: a change of visibility moves the end of a held
// lease, from now, and keeps its receipt good; 0 hands the message out at
// once as the next attempt (its old receipt then stale); the new end holds
// across a restart; a receipt whose visibility ran out is stale.
func TestChangeVisibility(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ordered  bool
		restart  bool
		change   time.Duration // the lease is pulled with 10s
		afterGot time.Duration // when the message is looked for again
		back     bool          // the message is out again by then
	}{
		{"extend", false, false, time.Minute, 30 * time.Second, false},
		{"extend, restart", false, true, time.Minute, 30 * time.Second, false},
		{"extended runs out", false, false, time.Minute, 61 * time.Second, true},
		{"shorten to 0", false, false, 0, 0, true},
		{"shorten, restart", false, true, 2 * time.Second, 3 * time.Second, true},
		{"ordered extend", true, false, time.Minute, 30 * time.Second, false},
		{"ordered extend, restart", true, true, time.Minute, 30 * time.Second, false},
		{"ordered extended runs out", true, false, time.Minute, 61 * time.Second, true},
		{"ordered shorten to 0", true, false, 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				w := newPullEachWorld(t, dir, tc.ordered)
				publish(t, w.b, "t", msg("m0"))
				got := pullN(t, w.b, "g", "t", 1, time.Second, 10*time.Second)
				if len(got) != 1 {
					t.Fatalf("pulled %q", bodies(got))
				}
				time.Sleep(5 * time.Second)
				res, err := w.b.ChangeVisibility(ctx, "g", receipts(got), tc.change)
				if err != nil || res[0].Status != ReceiptExtended {
					t.Fatalf("change visibility: %v %v, want extended", statuses(res), err)
				}
				// Retried, the change is made again from now (a lease
				// made visible at once is past changing).
				if tc.change == 0 {
				} else if res, err = w.b.ChangeVisibility(ctx, "g", receipts(got), tc.change); err != nil || res[0].Status != ReceiptExtended {
					t.Fatalf("change visibility again: %v %v, want extended", statuses(res), err)
				}
				if tc.restart {
					w.reopen()
				}
				time.Sleep(tc.afterGot)
				again := pullN(t, w.b, "g", "t", 1, 2*time.Second, time.Minute)
				if tc.back != (len(again) == 1) {
					t.Fatalf("%s after the change pulled %q; want it back: %v", tc.afterGot, bodies(again), tc.back)
				}
				if !tc.back {
					// The receipt still holds the message: acked, it stays done.
					if err := w.b.Ack(ctx, "g", receipts(got)); err != nil {
						t.Fatalf("ack after the change: %v", err)
					}
					time.Sleep(tc.change) // past the changed end
					if more := pullN(t, w.b, "g", "t", 1, time.Second, time.Minute); len(more) != 0 {
						t.Fatalf("acked message came back: %q", bodies(more))
					}
					return
				}
				if again[0].Attempt != 2 {
					t.Fatalf("came back as attempt %d, want 2", again[0].Attempt)
				}
				for _, op := range []func() ([]ReceiptResult, error){
					func() ([]ReceiptResult, error) { return w.b.ChangeVisibility(ctx, "g", receipts(got), time.Minute) },
					func() ([]ReceiptResult, error) { return w.b.AckEach(ctx, "g", receipts(got)) },
				} {
					if res, err := op(); err != nil || res[0].Status != ReceiptStale {
						t.Fatalf("the old receipt after the message went out again: %v %v, want stale", statuses(res), err)
					}
				}
				if err := w.b.Ack(ctx, "g", receipts(again)); err != nil {
					t.Fatalf("ack of the new receipt: %v", err)
				}
			})
		})
	}
}

// TestChangeVisibilityBounds: a visibility past the pull's maximum, or
// below 0, is refused whole.
func TestChangeVisibilityBounds(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	publish(t, b, "t", msg("m0"))
	got := pullN(t, b, "g", "t", 1, time.Second, 10*time.Second)
	for _, d := range []time.Duration{-time.Second, MaxVisibility + time.Second} {
		if _, err := b.ChangeVisibility(context.Background(), "g", receipts(got), d); CodeOf(err) != CodeInvalidVisibility {
			t.Errorf("visibility %s: %v, want %s", d, err, CodeInvalidVisibility)
		}
	}
	if _, err := b.ChangeVisibility(context.Background(), "g", nil, time.Second); CodeOf(err) != CodeInvalidReceipt {
		t.Errorf("no receipts: %v, want %s", err, CodeInvalidReceipt)
	}
}

// TestHeldPollsCounted: a long poll waiting for messages is counted in its
// group's view and in postbus_pull_held_polls, and no more once answered.
func TestHeldPollsCounted(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		w := newPullEachWorld(t, dir, false)
		held := func() (int, int) {
			g, err := w.b.Group(context.Background(), "g")
			if err != nil {
				t.Fatal(err)
			}
			_, all := w.b.polls.of("")
			return g.HeldPolls, all
		}
		done := make(chan []Pulled)
		for range 2 {
			go func() { done <- pullN(t, w.b, "g", "t", 1, 20*time.Second, time.Minute) }()
		}
		synctest.Wait()
		if g, all := held(); g != 2 || all != 2 {
			t.Fatalf("held polls while waiting: group %d, all %d; want 2 and 2", g, all)
		}
		publish(t, w.b, "t", msg("m0"))
		got := len(<-done)
		time.Sleep(20 * time.Second) // the other one's wait runs out
		got += len(<-done)
		if got != 1 {
			t.Fatalf("the two polls got %d messages, want 1", got)
		}
		if g, all := held(); g != 0 || all != 0 {
			t.Fatalf("held polls once answered: group %d, all %d; want 0", g, all)
		}
	})
}
