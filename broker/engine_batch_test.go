package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestOrderedRunSettles: LeaseBatch hands an ordered push queue's next
// messages out as one run, in order; settling the run in order (as a
// batched push loop does), a message settled other than by Ack takes back
// what follows it: those settles are stale, and the messages go out again
// after it, in order, as their next attempt (they were sent with it; the
// attack of s8, F4: they came back as attempt 1), or the same one when it
// was released unsent. Nothing else of the queue goes out while any of
// the run is out.
func TestOrderedRunSettles(t *testing.T) {
	cases := []struct {
		name     string
		verdicts func(now time.Time) []Verdict // for m0..m5, in order
		stale    []int                         // settles found stale
		// then: what the queue hands out next, one lease after another
		// (each acked), as body/attempt.
		then []string
		dead []string
	}{
		{"all acked", func(time.Time) []Verdict { return []Verdict{Ack(), Ack(), Ack(), Ack(), Ack(), Ack()} }, nil, nil, nil},
		{"retry in the middle", func(now time.Time) []Verdict {
			return []Verdict{Ack(), Ack(), RetryAt(now), Release(), Release(), Release()}
		}, []int{3, 4, 5}, []string{"m2/2", "m3/2 m4/2 m5/2"}, nil},
		{"dead in the middle", func(time.Time) []Verdict {
			return []Verdict{Ack(), Dead("test"), Release(), Release(), Release(), Release()}
		}, []int{2, 3, 4, 5}, []string{"m2/2 m3/2 m4/2 m5/2"}, []string{"m1"}},
		{"first released", func(time.Time) []Verdict {
			return []Verdict{Release(), Release(), Release(), Release(), Release(), Release()}
		}, []int{1, 2, 3, 4, 5}, []string{"m0/1", "m1/1 m2/1 m3/1 m4/1 m5/1"}, nil},
		{"last retried", func(now time.Time) []Verdict {
			return []Verdict{Ack(), Ack(), Ack(), Ack(), Ack(), RetryAt(now)}
		}, nil, []string{"m5/2"}, nil},
		// nil verdicts: the run's visibility runs out first (the next
		// lease expires it), then every settle is stale.
		{"visibility ran out", nil, []int{0, 1, 2, 3, 4, 5}, []string{"m0/2", "m1/2 m2/2 m3/2 m4/2 m5/2"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := openBroker(t, testConfig(t, t.TempDir()))
			if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
				t.Fatal(err)
			}
			if _, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", URL: "http://127.0.0.1:9/hook",
				Ordered: true, MaxRetries: 3, StartFrom: "earliest", Batch: PushBatch{MaxMessages: 10}}); err != nil {
				t.Fatal(err)
			}
			publish(t, b, "t", msg("m0"), msg("m1"), msg("m2"), msg("m3"), msg("m4"), msg("m5"))
			if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
				t.Fatal(err)
			}
			eng := b.Engine()
			vis := time.Minute
			if tc.verdicts == nil {
				vis = 50 * time.Millisecond
			}
			run, err := eng.LeaseBatch(ctx, "g", "t", 10, 10, vis)
			if err != nil || !slices.Equal(bodies(run), []string{"m0", "m1", "m2", "m3", "m4", "m5"}) {
				t.Fatalf("LeaseBatch: %q (%v), want m0..m5 in order", bodies(run), err)
			}
			if more, err := eng.LeaseBatch(ctx, "g", "t", 10, 10, time.Minute); err != nil || len(more) != 0 {
				t.Fatalf("while the run is out: leased %q (%v), want nothing", bodies(more), err)
			}
			rcpts := make([]string, len(run))
			for i, l := range run {
				rcpts[i] = l.Receipt
			}
			var vs []Verdict
			if tc.verdicts == nil {
				deadline := b.now().Add(vis)
				for b.now().Before(deadline) {
					time.Sleep(vis / 5)
				}
				vs = []Verdict{Ack(), Ack(), Ack(), Ack(), Ack(), Ack()}
				// The next lease takes the run back; its first message
				// goes out again now, alone.
				got, err := eng.LeaseBatch(ctx, "g", "t", 10, 10, time.Minute)
				if err != nil || len(got) != 1 || string(got[0].Body) != "m0" || got[0].Attempt != 2 {
					t.Fatalf("after the run's visibility: leased %q (%v), want m0 alone as attempt 2", bodies(got), err)
				}
				if err := eng.Settle(ctx, got[0].Receipt, Ack()); err != nil {
					t.Fatal(err)
				}
				tc.then = tc.then[1:]
			} else {
				vs = tc.verdicts(b.now())
			}
			errs := eng.SettleBatch(ctx, rcpts, vs)
			var stale []int
			for i, err := range errs {
				switch {
				case errors.Is(err, ErrStaleReceipt):
					stale = append(stale, i)
				case err != nil:
					t.Fatalf("settle of m%d: %v", i, err)
				}
			}
			if !slices.Equal(stale, tc.stale) {
				t.Fatalf("stale settles %v, want %v", stale, tc.stale)
			}
			var then []string
			for i := 0; i < 10 && len(then) < len(tc.then); i++ {
				got, err := eng.LeaseBatch(ctx, "g", "t", 10, 10, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) == 0 {
					time.Sleep(10 * time.Millisecond) // a retry due now may need the clock to move past it
					continue
				}
				var s []string
				for _, l := range got {
					s = append(s, fmt.Sprintf("%s/%d", l.Body, l.Attempt))
					if err := eng.Settle(ctx, l.Receipt, Ack()); err != nil {
						t.Fatal(err)
					}
				}
				then = append(then, fmt.Sprint(s))
			}
			var want []string
			for _, w := range tc.then {
				want = append(want, fmt.Sprint(strings.Fields(w)))
			}
			if !slices.Equal(then, want) {
				t.Fatalf("then handed out %v, want %v", then, want)
			}
			if more, err := eng.LeaseBatch(ctx, "g", "t", 10, 10, time.Minute); err != nil || len(more) != 0 {
				t.Fatalf("at the end: leased %q (%v), want nothing", bodies(more), err)
			}
			dls, err := b.DeadLetters(ctx, "g", -1, 10)
			if err != nil {
				t.Fatal(err)
			}
			var dead []string
			for _, d := range dls {
				dead = append(dead, string(d.Body))
			}
			if !slices.Equal(dead, tc.dead) {
				t.Fatalf("dead letters %q, want %q", dead, tc.dead)
			}
			if err := b.flushOffsets(ctx); err != nil {
				t.Fatal(err)
			}
			if off, ok := b.Offset("g", "t", 0); !ok || off != 6 {
				t.Fatalf("offset %d (%v), want 6: every message settled", off, ok)
			}
		})
	}
}
