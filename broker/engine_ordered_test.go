package broker

import (
	"context"
	"slices"
	"testing"
	"time"
)

// TestOrderedPushHandsBackWhatWasOutFirst (push model seed 82): messages a
// push consumer must hand out again (released before its subscription
// turned ordered, or out when the broker stopped) go out in their queue's
// order, one at a time, before the messages after them. They used to go
// out as unordered leases beside the ordered ones, so an ordered
// subscription received queue offsets 9-10 before 3-4.
func TestOrderedPushHandsBackWhatWasOutFirst(t *testing.T) {
	cases := []struct {
		name    string
		ordered bool // from the start
		// leaveOut puts some of m0..m3 back to be handed out again, and
		// returns the broker to lease from after it.
		leaveOut func(t *testing.T, b *Broker, sub Subscription) *Broker
		want     []string
	}{
		{"released, then turned ordered", false, func(t *testing.T, b *Broker, sub Subscription) *Broker {
			ctx := context.Background()
			var got []Lease
			for i := 0; i < 4 && len(got) < 2; i++ {
				more, err := b.Engine().Lease(ctx, "g", "t", 2-len(got), time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, more...)
			}
			if want := []string{"m0", "m1"}; !slices.Equal(bodies(got), want) {
				t.Fatalf("leased %q, want %q", bodies(got), want)
			}
			for _, l := range got {
				if err := b.Engine().Settle(ctx, l.Receipt, Release()); err != nil {
					t.Fatal(err)
				}
			}
			sub.Ordered = true
			if _, err := b.UpdateSubscription(ctx, sub); err != nil {
				t.Fatal(err)
			}
			return b
		}, []string{"m0", "m1", "m2", "m3"}},
		{"settled above what is out, turned ordered, stopped", false, func(t *testing.T, b *Broker, sub Subscription) *Broker {
			ctx := context.Background()
			var got []Lease
			for i := 0; i < 8 && len(got) < 4; i++ {
				more, err := b.Engine().Lease(ctx, "g", "t", 4-len(got), time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, more...)
			}
			if want := []string{"m0", "m1", "m2", "m3"}; !slices.Equal(bodies(got), want) {
				t.Fatalf("leased %q, want %q", bodies(got), want)
			}
			if err := b.Engine().Settle(ctx, got[2].Receipt, Ack()); err != nil {
				t.Fatal(err)
			}
			sub.Ordered = true
			if _, err := b.UpdateSubscription(ctx, sub); err != nil {
				t.Fatal(err)
			}
			// m0, m1 and m3 were out when it turned ordered: they come
			// back one at a time once settled (stale) or released.
			for _, i := range []int{0, 1, 3} {
				if err := b.Engine().Settle(ctx, got[i].Receipt, Release()); err != nil {
					t.Fatal(err)
				}
			}
			again, err := b.Engine().Lease(ctx, "g", "t", 4, time.Minute)
			if err != nil || !slices.Equal(bodies(again), []string{"m0"}) {
				t.Fatalf("leased %q (%v) once ordered, want m0 alone", bodies(again), err)
			}
			if err := b.Engine().Settle(ctx, again[0].Receipt, Ack()); err != nil {
				t.Fatal(err)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			return openBroker(t, b.cfg)
		}, []string{"m1", "m3"}},
		{"out at a stop", true, func(t *testing.T, b *Broker, sub Subscription) *Broker {
			ctx := context.Background()
			got, err := b.Engine().Lease(ctx, "g", "t", 4, time.Minute)
			if err != nil || len(got) != 1 || string(got[0].Body) != "m0" {
				t.Fatalf("lease: %q, %v; want m0 alone", bodies(got), err)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			return openBroker(t, b.cfg)
		}, []string{"m0", "m1", "m2", "m3"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := openBroker(t, testConfig(t, t.TempDir()))
			if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
				t.Fatal(err)
			}
			sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", URL: "http://127.0.0.1:9/hook",
				Ordered: tc.ordered, MaxRetries: 3, StartFrom: "earliest"})
			if err != nil {
				t.Fatal(err)
			}
			publish(t, b, "t", msg("m0"), msg("m1"), msg("m2"), msg("m3"))
			if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
				t.Fatal(err)
			}
			b = tc.leaveOut(t, b, sub)
			var order []string
			for i := 0; i < 8 && len(order) < len(tc.want); i++ {
				got, err := b.Engine().Lease(ctx, "g", "t", 4, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != 1 {
					t.Fatalf("lease %d (after %q): %q out of one ordered queue at once, want one", i, order, bodies(got))
				}
				order = append(order, string(got[0].Body))
				if err := b.Engine().Settle(ctx, got[0].Receipt, Ack()); err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Equal(order, tc.want) {
				t.Fatalf("delivered %q, want %q", order, tc.want)
			}
			if more, err := b.Engine().Lease(ctx, "g", "t", 4, time.Minute); err != nil || len(more) != 0 {
				t.Fatalf("after %q, leased %q (%v), want nothing", order, bodies(more), err)
			}
		})
	}
}
