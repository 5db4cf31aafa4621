package broker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestLagCountsOnlyWhatCanBeDelivered: once retention removed what a group
// had to consume, GET /v1/groups/{group} used to keep the lag for ever
// (S4-4: 280 on the topic, 20 on the retry queue holding the expired
// messages that were out on pull), although nothing could ever be
// delivered. Lag now counts from the queue's retained start, leaves out
// retry copies past retention, and says what expired instead.
func TestLagCountsOnlyWhatCanBeDelivered(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	var shift atomic.Int64
	cfg.Now = func() time.Time { return time.Now().Add(time.Duration(shift.Load())) }
	cfg.Retention = time.Minute // the topic's and its retry topic's
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "gone", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	for range 30 {
		publish(t, b, "gone", msg("soon gone"))
	}
	got, err := b.Pull(ctx, "g", "gone", 5, 0, time.Second)
	if err != nil || len(got) != 5 {
		t.Fatalf("pull: %d messages, %v", len(got), err)
	}
	lagOf := func() (GroupInfo, map[string]QueueLag) {
		t.Helper()
		g, err := b.Group(ctx, "g")
		if err != nil {
			t.Fatal(err)
		}
		by := map[string]QueueLag{}
		for _, q := range g.Queues {
			by[q.Topic] = q
		}
		return g, by
	}
	// The visibility runs out: the five come back on the retry queue.
	rt := RetryTopic("g", "gone")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, by := lagOf(); by[rt].MaxOffset == 5 {
			break
		}
		if time.Now().After(deadline) {
			_, by := lagOf()
			t.Fatalf("retry queue after the visibility ran out: %+v, want 5 copies", by[rt])
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, not asserting a time
	}
	if g, by := lagOf(); g.Lag != 30 || by["gone"].Lag != 25 || by[rt].Lag != 5 {
		t.Fatalf("lag before retention: %d (%+v), want 30: 25 on the topic, 5 on its retry queue", g.Lag, g.Queues)
	}

	shift.Store(int64(2 * time.Minute)) // every message and retry copy past retention
	g, by := lagOf()
	if g.Lag != 0 {
		t.Errorf("group lag after retention removed everything: %d (%+v), want 0", g.Lag, g.Queues)
	}
	if q := by["gone"]; q.Lag != 0 || q.Expired != 25 || q.MaxOffset != 30 {
		t.Errorf("topic queue: %+v, want lag 0, expired 25, max_offset 30", q)
	}
	if q := by[rt]; q.Lag != 0 || q.Expired != 5 {
		t.Errorf("retry queue: %+v, want lag 0, expired 5", q)
	}
	// A new message is lag again.
	publish(t, b, "gone", msg("fresh"))
	if g, _ := lagOf(); g.Lag != 1 {
		t.Errorf("lag after one new message: %d (%+v), want 1", g.Lag, g.Queues)
	}
}
