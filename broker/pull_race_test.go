package broker

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// storedOffset is the group's offset on a queue as meta.db has it.
func storedOffset(tb testing.TB, b *Broker, group, topic string, queue int) int64 {
	tb.Helper()
	offs, err := b.meta.Offsets(context.Background(), group)
	if err != nil {
		tb.Fatal(err)
	}
	for _, o := range offs {
		if o.Topic == topic && o.Queue == queue {
			return o.Next
		}
	}
	tb.Fatalf("no stored offset of %s on %s/%d", group, topic, queue)
	return 0
}

// TestPullDroppedMidLeaseHandsOutOnce: a consumer dropped while a pull
// stores its visibility copies (a concurrent first pull creating the
// subscription drops it; so do a PATCH or a reset) no longer moves the
// offsets, so the consumer built next reads the same messages again. The
// pull used to hand them out all the same: the same messages, attempt 1,
// went to two pullers at once, and an ack of one hand-out left the other
// out (S4-3, seen without any crash).
func TestPullDroppedMidLeaseHandsOutOnce(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		w := newPullEachWorld(t, dir, false)
		publish(t, w.b, "t", msg("m0"), msg("m1"), msg("m2"))
		var once sync.Once
		testHookLeaseStored = func() {
			once.Do(func() { w.b.eng.drop(func(g, tp string) bool { return g == "g" && tp == "t" }) })
		}
		t.Cleanup(func() { testHookLeaseStored = nil })

		first := pullN(t, w.b, "g", "t", 3, 0, 10*time.Second)
		second := pullN(t, w.b, "g", "t", 3, 0, 10*time.Second)
		if got := append(bodies(first), bodies(second)...); !slices.Equal(got, []string{"m0", "m1", "m2"}) {
			t.Fatalf("two pulls handed out %q, want each message once: m0 m1 m2", got)
		}
		for _, p := range first {
			if p.Attempt != 1 {
				t.Errorf("%s handed out as attempt %d, want 1", p.Body, p.Attempt)
			}
		}
		if err := w.b.Ack(ctx, "g", receipts(first)); err != nil {
			t.Fatal(err)
		}
		// The copies of the dropped lease must not bring the messages back either.
		time.Sleep(11 * time.Second)
		if again := pullN(t, w.b, "g", "t", 3, 0, 10*time.Second); len(again) != 0 {
			t.Fatalf("acked messages handed out again after their visibility: %q (attempts %v)", bodies(again), attemptsOf(again))
		}
	})
}

func attemptsOf(ps []Pulled) []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = p.Attempt
	}
	return out
}

// TestOffsetFlushesCommitInOrder: two flushes of the offsets (an ack's, the
// periodic one, a pull's) used to take their snapshots and commit without
// a lock between them, so the older snapshot could commit last: meta.db
// kept an offset below what was acked, nothing was left dirty to correct
// it, and a SIGKILL then handed acked messages out again (S4-3).
func TestOffsetFlushesCommitInOrder(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	publish(t, b, "t", msg("m0"))
	b.setOffset("g", "t", 0, 10)
	second := make(chan error, 1)
	secondTook := make(chan struct{})
	calls := 0
	testHookOffsetsTaken = func(batch []meta.Offset) {
		calls++ // the flushes are serialised by the lock under test, or by this hook's order below
		if calls == 2 {
			close(secondTook)
			return
		}
		if calls != 1 {
			return
		}
		// The first flush has taken offset 10; the group moves on to 20
		// and a second flush starts before the first commits.
		b.setOffset("g", "t", 0, 20)
		go func() { second <- b.flushOffsets(ctx) }()
		select {
		case <-secondTook:
			// It took its snapshot beside the first (what the lock
			// forbids): let it commit first, as a busy writer would.
			err := <-second
			second <- err
		case <-time.After(500 * time.Millisecond):
			// Waiting for the first, as it must.
		}
	}
	t.Cleanup(func() { testHookOffsetsTaken = nil })
	if err := b.flushOffsets(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if got := storedOffset(t, b, "g", "t", 0); got != 20 {
		t.Fatalf("stored offset %d after both flushes, want 20 (the newer)", got)
	}
}

// TestPullOffsetsStoredBeforeAnswer: a pull's answer waits until the
// group's offsets past its messages are written. They used to wait for
// the next periodic write (OffsetInterval), so a SIGKILL in between handed
// the messages out again from the queue as the same attempt, beside their
// visibility copies as the next one.
func TestPullOffsetsStoredBeforeAnswer(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.OffsetInterval = time.Hour
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(context.Background(), "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("m0"), msg("m1"))
	got := pullN(t, b, "g", "t", 2, 0, 10*time.Second)
	if len(got) != 2 {
		t.Fatalf("pulled %q", bodies(got))
	}
	if off := storedOffset(t, b, "g", "t", 0); off != 2 {
		t.Fatalf("stored offset %d once the pull answered, want 2 (past both messages)", off)
	}
}

// TestFilterChangeKeepsRetries: a message the group took (out, or nacked
// and waiting for its retry) is finished even when a filter change would
// no longer match it: the retry queue is read whole, as RocketMQ reads a
// retry topic with "*". It used to be filtered, so such a message was
// skipped there: never acked nor dead-lettered (delivery model seed 167,
// through an ordered group turned unordered).
func TestFilterChangeKeepsRetries(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		w := newPullEachWorld(t, dir, false)
		publish(t, w.b, "t", &Message{Body: []byte("m0"), Tag: "c"})
		got := pullN(t, w.b, "g", "t", 1, 0, time.Minute)
		if len(got) != 1 {
			t.Fatalf("pulled %q", bodies(got))
		}
		if err := w.b.Nack(ctx, "g", receipts(got), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		subs, err := w.b.Subscriptions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sub := subs[0]
		sub.Filter = "a"
		if _, err := w.b.UpdateSubscription(ctx, sub); err != nil {
			t.Fatal(err)
		}
		time.Sleep(11 * time.Second)
		again := pullN(t, w.b, "g", "t", 1, 0, time.Minute)
		if len(again) != 1 || again[0].Attempt != 2 {
			t.Fatalf("after the nack's delay pulled %q (attempts %v), want m0 as attempt 2", bodies(again), attemptsOf(again))
		}
		if err := w.b.Ack(ctx, "g", receipts(again)); err != nil {
			t.Fatal(err)
		}
	})
}

// TestTurnedUnorderedReceiptAfterRestart: a receipt an ordered group
// handed out before it turned unordered became a retry copy's; after a
// restart this process no longer knows which, and an ack of it used to be
// answered acked (the position had moved past the message) while the copy
// brought the message back. It is stale now, and the message comes back.
func TestTurnedUnorderedReceiptAfterRestart(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		w := newPullEachWorld(t, dir, true)
		publish(t, w.b, "t", msg("m0"))
		got := pullN(t, w.b, "g", "t", 1, 0, 10*time.Second)
		if len(got) != 1 {
			t.Fatalf("pulled %q", bodies(got))
		}
		subs, err := w.b.Subscriptions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sub := subs[0]
		sub.Ordered = false
		if _, err := w.b.UpdateSubscription(ctx, sub); err != nil {
			t.Fatal(err)
		}
		w.reopen()
		res, err := w.b.AckEach(ctx, "g", receipts(got))
		if err != nil {
			t.Fatal(err)
		}
		if st := statuses(res); st[0] != ReceiptStale {
			t.Fatalf("ack of the ordered receipt after turning unordered and a restart: %v, want stale", st)
		}
		time.Sleep(11 * time.Second)
		again := pullN(t, w.b, "g", "t", 1, 0, 10*time.Second)
		if len(again) != 1 || again[0].Attempt != 2 {
			t.Fatalf("after its visibility pulled %q (attempts %v), want m0 as attempt 2", bodies(again), attemptsOf(again))
		}
	})
}
