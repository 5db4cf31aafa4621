package broker

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// pullUntil pulls until want messages came or d passed, acking nothing.
func pullUntil(tb testing.TB, b *Broker, group, topic string, want int, d time.Duration) []Pulled {
	tb.Helper()
	var got []Pulled
	deadline := time.Now().Add(d)
	for len(got) < want && time.Now().Before(deadline) {
		got = append(got, pullN(tb, b, group, topic, want-len(got), 200*time.Millisecond, time.Minute)...)
	}
	return got
}

func bodies(ps []Pulled) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = string(p.Body)
	}
	return out
}

// TestOrderedRedriveIsDelivered (fault 3): a dead letter redriven to an
// ordered pull group comes back through the group's retry queue, which
// ordered delivery used never to read.
func TestOrderedRedriveIsDelivered(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	if _, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", Ordered: true, StartFrom: "earliest"}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("m0"))
	got := pullN(t, b, "g", "t", 1, 5*time.Second, 0)
	if len(got) != 1 {
		t.Fatalf("pulled %d, want 1", len(got))
	}
	if err := b.DeadLetter(ctx, "g", got[0].Message, 1, "given up"); err != nil {
		t.Fatal(err)
	}
	if err := b.Ack(ctx, "g", receipts(got)); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Redrive(ctx, "g", nil, true, 1000); err != nil || n != 1 {
		t.Fatalf("redrive: %d, %v; want 1", n, err)
	}
	again := pullUntil(t, b, "g", "t", 1, 10*time.Second)
	if len(again) != 1 || string(again[0].Body) != "m0" {
		t.Fatalf("after the redrive pulled %q, want [m0]", bodies(again))
	}
	if err := b.Ack(ctx, "g", receipts(again)); err != nil {
		t.Fatalf("ack of the redriven message: %v", err)
	}
}

// TestTurningOrderedKeepsWhatIsOut (fault 4): a message pulled and not
// acked when its subscription turns ordered comes back after its
// visibility, rather than waiting in a retry queue nobody reads.
func TestTurningOrderedKeepsWhatIsOut(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", MaxRetries: 3, StartFrom: "earliest"})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("m0"))
	if got := pullN(t, b, "g", "t", 1, 5*time.Second, time.Second); len(got) != 1 {
		t.Fatalf("pulled %d, want 1", len(got))
	}
	sub.Ordered = true
	if _, err := b.UpdateSubscription(ctx, sub); err != nil {
		t.Fatal(err)
	}
	again := pullUntil(t, b, "g", "t", 1, 10*time.Second)
	if len(again) != 1 || string(again[0].Body) != "m0" || again[0].Attempt != 2 {
		t.Fatalf("after turning ordered pulled %q, want m0 as attempt 2", bodies(again))
	}
}

// TestResetReplaysABlockedOrderedQueue (fault 8): an offset reset of an
// ordered group replays its queue from the new position although a
// message of the queue was out (its block belongs to the old position).
func TestResetReplaysABlockedOrderedQueue(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", Ordered: true, StartFrom: "earliest"}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("m0"), msg("m1"), msg("m2"))
	first := pullN(t, b, "g", "t", 1, time.Second, 0)
	if err := b.Ack(ctx, "g", receipts(first)); err != nil {
		t.Fatal(err)
	}
	if second := pullN(t, b, "g", "t", 1, time.Second, 0); len(second) != 1 || string(second[0].Body) != "m1" {
		t.Fatalf("second pull %q, want m1", bodies(second))
	}
	if err := b.ResetOffsets(ctx, "g", "t", "earliest"); err != nil {
		t.Fatal(err)
	}
	var order []string
	for len(order) < 3 {
		got := pullN(t, b, "g", "t", 1, time.Second, 0)
		if len(got) == 0 {
			t.Fatalf("after the reset pulled %q, then nothing; want m0 m1 m2", order)
		}
		order = append(order, bodies(got)...)
		if err := b.Ack(ctx, "g", receipts(got)); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"m0", "m1", "m2"}; !slices.Equal(order, want) {
		t.Fatalf("after the reset pulled %q, want %q", order, want)
	}
}

// TestPullSeesGrownQueues (fault 2): a running pull group takes the
// messages of queues the topic gained.
func TestPullSeesGrownQueues(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 2}); err != nil {
		t.Fatal(err)
	}
	pullN(t, b, "g", "t", 1, 0, 0) // the group exists and holds its cursors
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 4}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < 8; i++ {
		r := publish(t, b, "t", &Message{Body: []byte(fmt.Sprint("m", i)), ShardingKey: fmt.Sprint("k", i)})
		ids = append(ids, r[0].ID)
	}
	queues := map[int]bool{}
	for i := 0; i < 8; i++ {
		m, err := b.Message(ctx, ids[i])
		if err != nil {
			t.Fatal(err)
		}
		queues[m.QueueID] = true
	}
	if !queues[2] && !queues[3] {
		t.Fatalf("no message landed in the new queues (queues %v); pick other sharding keys", queues)
	}
	got := pullUntil(t, b, "g", "t", 8, 5*time.Second)
	if len(got) != 8 {
		t.Fatalf("pulled %q after growing the topic, want all 8", bodies(got))
	}
}

// TestAckAtTheDeadlineIsNotRedelivered (fault 9): an ack whose
// transaction runs after the visibility deadline is stale, even when it
// was asked for before: its clock is read once it holds the writer, so the
// timer loop never puts back a message an ack answered 200 for.
func TestAckAtTheDeadlineIsNotRedelivered(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Now()
	cfg := testConfig(t, t.TempDir())
	cfg.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	b := openBroker(t, cfg)
	publish(t, b, "t", msg("m0"))
	got := pullN(t, b, "g", "t", 1, time.Second, 10*time.Second)
	if len(got) != 1 {
		t.Fatalf("pulled %d, want 1", len(got))
	}
	if err := b.flushOffsets(ctx); err != nil {
		t.Fatal(err)
	}
	// The receipt's timer is stored (dispatch adds it).
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	// Hold the metadata's write lock from another connection, as a busy
	// writer would.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(cfg.Dir, metaFile)+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	ackErr := make(chan error, 1)
	go func() { ackErr <- b.Ack(ctx, "g", receipts(got)) }()
	// The ack waits for the writer to cancel its timer.
	waitStack(t, "meta.(*Store).write")
	mu.Lock()
	now = now.Add(11 * time.Second) // past the visibility deadline
	mu.Unlock()
	// Meanwhile the timer loop finds the timer due; it claims timers under
	// the writer too, so it waits behind the ack.
	waitStackCount(t, "meta.(*Store).write", 2)
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	err = <-ackErr
	if err == nil {
		// Acked: the message must not come back.
		if again := pullN(t, b, "g", "t", 1, 2*time.Second, 0); len(again) != 0 {
			t.Fatalf("an ack answered OK and its message was handed out again (attempt %d)", again[0].Attempt)
		}
		return
	}
	if CodeOf(err) != CodeStaleReceipt {
		t.Fatalf("ack past the deadline: %v, want stale_receipt or OK", err)
	}
	// Stale: the timer loop won, and the message comes back.
	if again := pullUntil(t, b, "g", "t", 1, 5*time.Second); len(again) != 1 {
		t.Fatalf("an ack answered stale and its message did not come back")
	}
}

// waitStack waits until some goroutine's stack shows fn.
func waitStack(tb testing.TB, fn string) {
	tb.Helper()
	waitStackCount(tb, fn, 1)
}

// waitStackCount waits until n goroutines' stacks show fn.
func waitStackCount(tb testing.TB, fn string, n int) {
	tb.Helper()
	buf := make([]byte, 1<<20)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		k := runtime.Stack(buf, true)
		if strings.Count(string(buf[:k]), fn) >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	tb.Fatalf("fewer than %d goroutines reached %s within 10s", n, fn)
}

// TestReleasedOrderedPushLeaseComesBack (attack F5): an ordered push lease
// given back unsent (the loop stopped by a PATCH before the request went
// out) is handed out again as the same attempt; its queue used to move on
// to the next message and the released one was never delivered nor
// dead-lettered.
func TestReleasedOrderedPushLeaseComesBack(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", URL: "http://127.0.0.1:9/hook",
		Ordered: true, MaxRetries: 0, StartFrom: "earliest"}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("m0"), msg("m1"))
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	eng := b.Engine()
	var order []string
	for i := 0; i < 6 && len(order) < 2; i++ {
		got, err := eng.Lease(ctx, "g", "t", 4, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 {
			t.Fatalf("lease %d: %d messages out on one ordered queue, want 1", i, len(got))
		}
		if got[0].Attempt != 1 {
			t.Fatalf("lease %d: %s as attempt %d, want 1 (a release counts no attempt)", i, got[0].Body, got[0].Attempt)
		}
		v := Ack()
		if i%2 == 0 {
			v = Release() // every message is first given back unsent
		} else {
			order = append(order, string(got[0].Body))
		}
		if err := eng.Settle(ctx, got[0].Receipt, v); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"m0", "m1"}; !slices.Equal(order, want) {
		t.Fatalf("acked %q after releasing each once, want %q", order, want)
	}
}

// TestNackRacingVisibilityIsNoAnomaly (attack F3a): nacks sent around
// their receipts' visibility deadline either win (the message comes back
// from the nack) or are stale (it comes back from its visibility): each
// message comes back exactly once, and the race is no anomaly. The timer
// loop used to put a message back from its visibility while the nack
// stored its replacement, and the second put-back was skipped with an
// ERROR line and postbus_delayed_anomalies_total.
func TestNackRacingVisibilityIsNoAnomaly(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	b := openBroker(t, cfg)
	const n = 40
	for i := 0; i < n; i++ {
		publish(t, b, "t", msg(fmt.Sprint("m", i)))
	}
	const vis = time.Second
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	got := pullN(t, b, "g", "t", n, time.Second, vis)
	start := time.Now()
	if len(got) != n {
		t.Fatalf("pulled %d, want %d", len(got), n)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	stale := 0
	for i, p := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread across the deadline: 0.7 to 1.1 of the visibility.
			time.Sleep(time.Until(start.Add(vis * time.Duration(70+40*i/n) / 100)))
			err := b.Nack(ctx, "g", []string{p.Receipt}, 0)
			if err != nil && CodeOf(err) != CodeStaleReceipt {
				t.Errorf("nack of %s: %v", p.Body, err)
			}
			mu.Lock()
			stale += map[bool]int{true: 1}[err != nil]
			mu.Unlock()
		}()
	}
	wg.Wait()
	back := map[string]int{}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		again := pullN(t, b, "g", "t", n, 300*time.Millisecond, time.Minute)
		for _, p := range again {
			back[string(p.Body)]++
		}
		if len(again) > 0 {
			if err := b.Ack(ctx, "g", receipts(again)); err != nil {
				t.Fatal(err)
			}
		}
		// Once all came back, one more visibility's wait shows a second
		// put-back of any of them.
		if len(back) == n && time.Since(start) > 3*vis {
			break
		}
	}
	t.Logf("%d of %d nacks were stale", stale, n)
	for _, p := range got {
		if k := back[string(p.Body)]; k != 1 {
			t.Errorf("%s came back %d times, want once", p.Body, k)
		}
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("a nack racing its visibility logged an anomaly: %s", line)
		}
	}
}

// TestOrderedRedriveOneAtATimeInOrder (attack F2): dead letters redriven
// to an ordered group go out one at a time, in the order the redrive put
// them back, and a redriven one that fails again holds back those after
// it; they used to go out all at once, through the retry queue read
// without order.
func TestOrderedRedriveOneAtATimeInOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		url  string
	}{{"push", "http://127.0.0.1:9/hook"}, {"pull", ""}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := openBroker(t, testConfig(t, t.TempDir()))
			if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
				t.Fatal(err)
			}
			if _, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", URL: tc.url, Ordered: true,
				MaxRetries: 3, StartFrom: "earliest"}); err != nil {
				t.Fatal(err)
			}
			const n = 5
			for i := 0; i < n; i++ {
				publish(t, b, "t", msg(fmt.Sprint("m", i)))
			}
			if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
				t.Fatal(err)
			}
			eng := b.Engine()
			lease := func() []Lease {
				t.Helper()
				got, err := eng.Lease(ctx, "g", "t", 10, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				return got
			}
			for i := 0; i < n; i++ {
				got := lease()
				if len(got) != 1 {
					t.Fatalf("lease %d: %d out, want 1", i, len(got))
				}
				if err := eng.Settle(ctx, got[0].Receipt, Dead("given up")); err != nil {
					t.Fatal(err)
				}
			}
			if k, err := b.Redrive(ctx, "g", nil, true, 1000); err != nil || k != n {
				t.Fatalf("redrive: %d, %v; want %d", k, err, n)
			}
			retry := RetryTopic("g", "t")
			waitFor(t, 10*time.Second, "the redriven messages on the retry queue", func() bool {
				_, hi := b.QueueBounds(retry, 0)
				return hi == n
			})
			var order []string
			failed := false
			for i := 0; len(order) < n && i < 3*n; i++ {
				got := lease()
				if len(got) != 1 {
					t.Fatalf("after %q: %d redriven messages out at once on an ordered group, want 1", order, len(got))
				}
				if !failed {
					// The first fails again: it is retried before the others.
					failed = true
					if err := eng.Settle(ctx, got[0].Receipt, RetryAt(time.Now().Add(-time.Second))); err != nil {
						t.Fatal(err)
					}
					continue
				}
				order = append(order, string(got[0].Body))
				if err := eng.Settle(ctx, got[0].Receipt, Ack()); err != nil {
					t.Fatal(err)
				}
			}
			if want := []string{"m0", "m1", "m2", "m3", "m4"}; !slices.Equal(order, want) {
				t.Fatalf("redriven messages acked in order %q, want %q", order, want)
			}
		})
	}
}

// TestResetFencesAnOpenOrderedDelivery (attack F4): an offset reset of an
// ordered push group while a delivery of its queue is open replays the
// queue only once that delivery is settled (stale) or its visibility
// ends; the replay used to start at once, two deliveries open on one
// ordered queue.
func TestResetFencesAnOpenOrderedDelivery(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", URL: "http://127.0.0.1:9/hook",
		Ordered: true, StartFrom: "earliest"}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("m0"), msg("m1"), msg("m2"))
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	eng := b.Engine()
	lease := func() []Lease {
		t.Helper()
		got, err := eng.Lease(ctx, "g", "t", 10, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	first := lease()
	if len(first) != 1 || eng.Settle(ctx, first[0].Receipt, Ack()) != nil {
		t.Fatalf("first lease %q, want m0 acked", bodies(first))
	}
	open := lease() // m1, its delivery still open
	if len(open) != 1 || string(open[0].Body) != "m1" {
		t.Fatalf("second lease %q, want m1", bodies(open))
	}
	if err := b.ResetOffsets(ctx, "g", "t", "earliest"); err != nil {
		t.Fatal(err)
	}
	if got := lease(); len(got) != 0 {
		t.Fatalf("after the reset, with m1's delivery open, leased %q; want nothing until it settles", bodies(got))
	}
	if err := eng.Settle(ctx, open[0].Receipt, Ack()); !errors.Is(err, ErrStaleReceipt) {
		t.Fatalf("settling the lease out across the reset: %v, want stale", err)
	}
	if got := lease(); len(got) != 1 || string(got[0].Body) != "m0" {
		t.Fatalf("once the open delivery settled leased %q, want the replay from m0", bodies(got))
	}
}

// TestSettleNeverCreatesAGroup: acking or nacking an ordered pull receipt
// after its subscription was deleted is stale, and subscribes nobody; the
// settle used to create a (non-ordered) pull subscription for the group,
// as a first pull does.
func TestSettleNeverCreatesAGroup(t *testing.T) {
	for _, tc := range []struct {
		name   string
		settle func(b *Broker, rcpt string) error
	}{
		{"ack", func(b *Broker, rcpt string) error { return b.Ack(context.Background(), "g", []string{rcpt}) }},
		{"nack", func(b *Broker, rcpt string) error { return b.Nack(context.Background(), "g", []string{rcpt}, 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := openBroker(t, testConfig(t, t.TempDir()))
			sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", Ordered: true, StartFrom: "earliest"})
			if err != nil {
				t.Fatal(err)
			}
			publish(t, b, "t", msg("m0"))
			got := pullN(t, b, "g", "t", 1, 5*time.Second, time.Minute)
			if len(got) != 1 {
				t.Fatalf("pulled %d, want 1", len(got))
			}
			if err := b.DeleteSubscription(ctx, sub.ID); err != nil {
				t.Fatal(err)
			}
			if err := tc.settle(b, got[0].Receipt); CodeOf(err) != CodeStaleReceipt {
				t.Fatalf("%s of a deleted subscription's receipt: %v, want stale_receipt", tc.name, err)
			}
			subs, err := b.Subscriptions(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range subs {
				t.Errorf("the %s subscribed the group again: %+v", tc.name, s)
			}
		})
	}
}

// TestPushSettleAfterDeleteIsKept (push model seed 5): a push delivery
// answered 200 while its subscription is being deleted settles (the loop
// finishes what it has out within its grace), and the group, subscribing
// again, does not deliver it a second time. The deleted subscription's
// consumer used to be dropped at once, so the settle was stale, the
// group's offset stayed below the message, and the new subscription
// delivered it again after a 200.
func TestPushSettleAfterDeleteIsKept(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	push := Subscription{Group: "g", Topic: "t", URL: "http://127.0.0.1:9/hook", MaxRetries: 3, StartFrom: "earliest"}
	sub, err := b.CreateSubscription(ctx, push)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("m0"), msg("m1"))
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	eng := b.Engine()
	got, err := eng.Lease(ctx, "g", "t", 1, time.Minute)
	if err != nil || len(got) != 1 || string(got[0].Body) != "m0" {
		t.Fatalf("lease: %q, %v, want m0", bodies(got), err)
	}
	if err := b.DeleteSubscription(ctx, sub.ID); err != nil {
		t.Fatal(err)
	}
	if more, err := eng.Lease(ctx, "g", "t", 4, time.Minute); !errors.Is(err, ErrSubscriptionInactive) || len(more) != 0 {
		t.Fatalf("lease after the delete: %q, %v, want nothing and ErrSubscriptionInactive", bodies(more), err)
	}
	// The delivery out at the delete is answered 200 within the grace.
	if err := eng.Settle(ctx, got[0].Receipt, Ack()); err != nil {
		t.Fatalf("settling the delivery out at the delete: %v, want it settled", err)
	}
	if _, err := b.CreateSubscription(ctx, push); err != nil {
		t.Fatal(err)
	}
	again, err := eng.Lease(ctx, "g", "t", 4, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"m1"}; !slices.Equal(bodies(again), want) {
		t.Fatalf("subscribed again, leased %q, want %q (m0 was answered 200)", bodies(again), want)
	}
}
