package broker

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// heldPull is a long poll run on its own goroutine.
type heldPull struct {
	done  chan struct{}
	got   []Pulled
	err   error
	start time.Time
	took  time.Duration
}

// holdPull starts a long poll of wait and returns once it is held (counted
// in held_polls), so that what the test does next happens to a held poll.
func holdPull(t *testing.T, b *Broker, group, topic string, wait time.Duration) *heldPull {
	t.Helper()
	before, _ := b.polls.of(group)
	h := &heldPull{done: make(chan struct{}), start: time.Now()}
	go func() {
		defer close(h.done)
		h.got, h.err = b.Pull(t.Context(), group, topic, 10, wait, 30*time.Second)
		h.took = time.Since(h.start)
	}()
	waitFor(t, 10*time.Second, "the long poll to be held", func() bool {
		n, _ := b.polls.of(group)
		return n > before
	})
	return h
}

// answered waits for a held poll's answer and fails unless it came well
// before the poll's wait ran out.
func (h *heldPull) answered(t *testing.T, what string, wait time.Duration) {
	t.Helper()
	<-h.done
	if h.took > wait/2 {
		t.Fatalf("%s: the held poll answered after %s (its wait is %s): it was not woken", what, h.took, wait)
	}
}

// A poll held when its subscription is paused or deleted answers at once
// (paused: the error a new pull gets; deleted: no messages, and the
// subscription is not made again) and hands out nothing published after;
// one held across an offset reset answers at once with what the reset
// made pullable. Before, the first two waited for the next publish (and a
// deleted one re-created the subscription and delivered it), the third
// waited out its whole wait.
func TestHeldPollWakesOnSubscriptionChange(t *testing.T) {
	const wait = 20 * time.Second
	for _, tc := range []string{"pause", "delete", "reset"} {
		t.Run(tc, func(t *testing.T) {
			ctx := context.Background()
			b := openBroker(t, testConfig(t, t.TempDir()))
			sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", StartFrom: "earliest", MaxRetries: -1})
			if err != nil {
				t.Fatal(err)
			}
			publish(t, b, "t", msg("before"))
			first := pullN(t, b, "g", "t", 10, 0, 0)
			if len(first) != 1 {
				t.Fatalf("pulled %d, want 1", len(first))
			}
			if err := b.Ack(ctx, "g", receipts(first)); err != nil {
				t.Fatal(err)
			}
			h := holdPull(t, b, "g", "t", wait)
			switch tc {
			case "pause":
				if _, err := b.SetSubscriptionState(ctx, sub.ID, StatePaused, ""); err != nil {
					t.Fatal(err)
				}
				h.answered(t, "paused", wait)
				if CodeOf(h.err) != CodeInvalidSubscription || len(h.got) != 0 {
					t.Fatalf("held poll across a pause: %d messages, %v; want invalid_subscription", len(h.got), h.err)
				}
				publish(t, b, "t", msg("while paused"))
				if _, err := b.SetSubscriptionState(ctx, sub.ID, StateActive, ""); err != nil {
					t.Fatal(err)
				}
				got := pullN(t, b, "g", "t", 10, 0, 0)
				if len(got) != 1 || string(got[0].Body) != "while paused" || got[0].Attempt != 1 {
					t.Fatalf("after the resume: %q, want the message published while paused as attempt 1", bodies(got))
				}
			case "delete":
				if err := b.DeleteSubscription(ctx, sub.ID); err != nil {
					t.Fatal(err)
				}
				h.answered(t, "deleted", wait)
				if h.err != nil || len(h.got) != 0 {
					t.Fatalf("held poll across a delete: %d messages, %v; want none", len(h.got), h.err)
				}
				subs, err := b.Subscriptions(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range subs {
					if s.Group == "g" && s.Topic == "t" {
						t.Fatalf("the held poll made the deleted subscription again: %+v", s)
					}
				}
			case "reset":
				if err := b.ResetOffsets(ctx, "g", "t", "earliest"); err != nil {
					t.Fatal(err)
				}
				h.answered(t, "reset", wait)
				if h.err != nil || len(h.got) != 1 || string(h.got[0].Body) != "before" {
					t.Fatalf("held poll across a reset to earliest: %q, %v; want the message again", bodies(h.got), h.err)
				}
			}
			if n, _ := b.polls.of("g"); n != 0 {
				t.Fatalf("held_polls %d after the poll answered", n)
			}
			if n := b.waiters.armed(); n != 0 {
				t.Fatalf("%d wake-ups left armed", n)
			}
		})
	}
}

// A publish wakes the polls waiting on its topic (or on its group's retry
// queue there) and no other: with polls held on other topics and by other
// groups, theirs stay armed, and the poll on the topic gets the message.
func TestPublishWakesOnlyItsTopic(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	const others = 20
	var held []*heldPull
	for i := range others {
		pullN(t, b, "g", fmt.Sprint("other", i), 1, 0, 0) // subscribes
		held = append(held, holdPull(t, b, "g", fmt.Sprint("other", i), 20*time.Second))
	}
	pullN(t, b, "g", "hot", 1, 0, 0)
	h := holdPull(t, b, "g", "hot", 20*time.Second)
	if n := b.waiters.armed(); n != others+1 {
		t.Fatalf("%d wake-ups armed, want %d", n, others+1)
	}
	publish(t, b, "hot", msg("wake"))
	h.answered(t, "publish", 20*time.Second)
	if len(h.got) != 1 {
		t.Fatalf("the poll on the topic got %d messages, want 1", len(h.got))
	}
	if n := b.waiters.armed(); n != others {
		t.Fatalf("%d wake-ups armed after the publish, want the other topics' %d untouched", n, others)
	}
	// They still answer: one is woken by its own topic.
	publish(t, b, "other3", msg("third"))
	held[3].answered(t, "publish to other3", 20*time.Second)
	if len(held[3].got) != 1 {
		t.Fatalf("the poll on other3 got %d messages, want 1", len(held[3].got))
	}
}

// BenchmarkWakeWithHeldPolls times a publish until a poll waiting on its
// topic wakes and until it has the message, with held polls parked on
// other topics (as httpapi parks them: armed wake-ups, no goroutine).
// Before wake-ups went by topic, every held poll woke on every dispatch
// round and looked again, so the time grew with the polls held anywhere;
// now it should not, and none of the others wakes. Reports p50 and p99 of
// wake (from the publish's answer to the poll's wake-up: the wake-up
// machinery alone) and of got (from the publish's call until the poll's
// look has the message: the publish's fsync and the lease's stores
// included).
func BenchmarkWakeWithHeldPolls(b *testing.B) {
	for _, held := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprint("held=", held), func(b *testing.B) {
			cfg := testConfig(b, b.TempDir())
			// The dispatcher checkpoints on its own goroutine: at the
			// tests' 50 ms, publishes often wait behind a checkpoint's
			// fsync, which is not what is measured here.
			cfg.CheckpointInterval = DefaultConfig(cfg.Dir).CheckpointInterval
			br := openBroker(b, cfg)
			ctx := context.Background()
			const topics = 100
			for i := range topics {
				pullN(b, br, "g", fmt.Sprint("idle", i), 1, 0, 0)
			}
			var woke atomic.Int64
			var waiters []*PollWaiter
			for i := range held {
				_, w, err := br.PullNow(ctx, "g", fmt.Sprint("idle", i%topics), 1, 0, true, func() { woke.Add(1) })
				if err != nil || w == nil {
					b.Fatalf("parking poll %d: %v", i, err)
				}
				waiters = append(waiters, w)
			}
			defer func() {
				for _, w := range waiters {
					w.Cancel()
				}
			}()
			pullN(b, br, "g", "hot", 1, 0, 0)
			wake := make([]time.Duration, 0, b.N)
			got := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				fired := make(chan time.Time, 1)
				_, w, err := br.PullNow(ctx, "g", "hot", 1, 0, true, func() { fired <- time.Now() })
				if err != nil || w == nil {
					b.Fatalf("poll %d: %v", i, err)
				}
				start := time.Now()
				publish(b, br, "hot", msg(fmt.Sprint("m", i)))
				published := time.Now()
				at := <-fired
				ps, _, err := br.PullNow(ctx, "g", "hot", 1, 0, true, nil)
				if err != nil || len(ps) != 1 {
					b.Fatalf("look %d after the wake-up: %d messages, %v", i, len(ps), err)
				}
				got = append(got, time.Since(start))
				wake = append(wake, max(0, at.Sub(published)))
				b.StopTimer()
				if err := br.Ack(ctx, "g", receipts(ps)); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.StopTimer()
			for _, m := range []struct {
				name string
				d    []time.Duration
			}{{"wake", wake}, {"got", got}} {
				slices.Sort(m.d)
				b.ReportMetric(float64(m.d[len(m.d)/2].Microseconds()), m.name+"-p50-µs")
				b.ReportMetric(float64(m.d[len(m.d)*99/100].Microseconds()), m.name+"-p99-µs")
			}
			b.ReportMetric(float64(woke.Load()), "other-wakes")
		})
	}
}
