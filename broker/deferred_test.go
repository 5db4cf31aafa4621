package broker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// TestLeasedCopiesMovedAheadOfRetentionKeepTheirTimers (attack s8 F11):
// retention moving a deferred push delivery's copy, or a pull lease's
// visibility copy, ahead of the segment it deletes kept the record but
// not its timer (dispatch gives a lease's copy none): the message never
// came back, and the deferred delivery's token answered expired. The
// timers are carried over now, the ack key with them.
func TestLeasedCopiesMovedAheadOfRetentionKeepTheirTimers(t *testing.T) {
	ctx := context.Background()
	clock := &tortureClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg := testConfig(t, t.TempDir())
	cfg.Now = clock.Now
	cfg.SegmentSize = 1 << 20
	cfg.MaxMessageBytes = 128 << 10
	cfg.Retention = time.Hour
	cfg.RetentionInterval = time.Hour // this test runs retention itself
	b := openBroker(t, cfg)
	for _, topic := range []string{"pushed", "pulled", "filler"} {
		if _, _, err := b.PutTopic(ctx, topic, TopicSettings{Queues: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.CreateSubscription(ctx, Subscription{Group: "hooks", Topic: "pushed", URL: "https://hooks.example.com/x", MaxRetries: -1, StartFrom: "earliest"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateSubscription(ctx, Subscription{Group: "pullers", Topic: "pulled", MaxRetries: -1, StartFrom: "earliest"}); err != nil {
		t.Fatal(err)
	}
	pushed := publish(t, b, "pushed", &Message{Body: []byte("held")})[0]
	pulledMsg := publish(t, b, "pulled", &Message{Body: []byte("pulled")})[0]

	// A push lease answered 202, held for 3h; a pull lease out for 12h.
	eng := b.Engine()
	leases, err := eng.Lease(ctx, "hooks", "pushed", 1, time.Minute)
	if err != nil || len(leases) != 1 {
		t.Fatalf("push lease: %v %v", leases, err)
	}
	token, key := eng.AckToken("hooks", "pushed", leases[0])
	if err := eng.Defer(ctx, leases[0].Receipt, key, clock.Now().Add(3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	eng.TokenDone(key)
	pulled, err := b.Pull(ctx, "pullers", "pulled", 1, 0, MaxVisibility)
	if err != nil || len(pulled) != 1 || pulled[0].ID != pulledMsg.ID {
		t.Fatalf("pull: %v %v", pulled, err)
	}

	// Two more segments, then past the retention of the first.
	for n := len(b.log.Segments()); len(b.log.Segments()) < n+2; {
		publish(t, b, "filler", &Message{Body: make([]byte, 128<<10)})
	}
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	clock.advance(2 * time.Hour)
	if err := b.applyRetention(); err != nil {
		t.Fatal(err)
	}
	if lo := b.log.MinOffset(); lo == 0 {
		t.Fatalf("retention deleted no segment (log starts at %d)", lo)
	}
	for _, topic := range []string{RetryTopic("hooks", "pushed"), RetryTopic("pullers", "pulled")} {
		if n, err := b.meta.PendingTimersOf(ctx, topic); err != nil || n != 1 {
			t.Fatalf("%s has %d pending timers after the move (%v), want its lease's copy's", topic, n, err)
		}
	}

	// The token still names the held delivery.
	d, err := b.Deferred(ctx, token)
	if err != nil {
		t.Fatalf("the token after its copy moved: %v", err)
	}
	if d.MsgID != pushed.ID {
		t.Fatalf("the token names %s, want %s", d.MsgID, pushed.ID)
	}
	if err := b.SettleDeferred(ctx, d, Ack()); err != nil {
		t.Fatalf("ack after its copy moved: %v", err)
	}
	// The pull lease's message comes back at the end of its visibility.
	clock.advance(MaxVisibility)
	if _, err := b.timer.FireDue(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the pulled message back after its visibility", func() bool {
		got, err := b.Pull(ctx, "pullers", "pulled", 1, 0, time.Minute)
		return err == nil && len(got) == 1 && got[0].ID == pulledMsg.ID && got[0].Attempt == 2
	})
}

// TestDeferHoldsOnlyWithItsOffsetStored (attack s8 F16, F12): a deferred
// delivery's timer (what its token settles) used to be stored before the
// group's offset past the message, which the offset writer stored a
// little later: a SIGKILL in between left meta.db with the timer and the
// old offset, so the restart delivered the message again from its queue
// while the old token still answered 200 "done", and the message was
// later dead-lettered as not acknowledged. Each offset write is checked
// here before it commits (what a SIGKILL then leaves): a stored timer
// must come with the offset past its message.
func TestDeferHoldsOnlyWithItsOffsetStored(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	cfg.OffsetInterval = 500 * time.Millisecond      // the periodic writes are checked too
	t.Cleanup(func() { testHookOffsetsTaken = nil }) // after the broker closed
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "pushed", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateSubscription(ctx, Subscription{Group: "hooks", Topic: "pushed", URL: "https://hooks.example.com/x", MaxRetries: -1, StartFrom: "earliest"}); err != nil {
		t.Fatal(err)
	}
	const n = 3
	for i := range n {
		publish(t, b, "pushed", &Message{Body: fmt.Appendf(nil, "m%d", i)})
	}
	stored := func() int64 {
		offs, err := b.meta.Offsets(context.Background(), "hooks")
		if err != nil {
			t.Errorf("stored offsets: %v", err)
		}
		for _, o := range offs {
			if o.Topic == "pushed" && o.Queue == 0 {
				return o.Next
			}
		}
		return 0
	}
	var (
		mu      sync.Mutex
		keys    []int64 // ack keys held so far, by queue offset
		crashes []string
	)
	check := func(when string) {
		mu.Lock()
		defer mu.Unlock()
		next := stored()
		for qoff, key := range keys {
			if _, _, ok, err := b.meta.DeferredTimer(context.Background(), key); err != nil {
				t.Errorf("deferred timer: %v", err)
			} else if ok && next <= int64(qoff) {
				crashes = append(crashes, fmt.Sprintf("%s: the timer of the delivery of queue offset %d is stored, the offset is %d", when, qoff, next))
			}
		}
	}
	testHookOffsetsTaken = func([]meta.Offset) { check("before an offset write") }

	eng := b.Engine()
	for i := range n {
		var leases []Lease
		deadline := time.Now().Add(10 * time.Second)
		for len(leases) == 0 && time.Now().Before(deadline) {
			var err error
			if leases, err = eng.Lease(ctx, "hooks", "pushed", 1, time.Minute); err != nil {
				t.Fatalf("push lease %d: %v", i, err)
			}
			if len(leases) == 0 {
				select { // a new consumer reads the queue on its own time
				case <-b.Dispatched():
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
		if len(leases) != 1 {
			t.Fatalf("push lease %d: got %d leases within 10s", i, len(leases))
		}
		token, key := eng.AckToken("hooks", "pushed", leases[0])
		mu.Lock()
		keys = append(keys, key)
		mu.Unlock()
		if err := eng.Defer(ctx, leases[0].Receipt, key, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		eng.TokenDone(key)
		check("once Defer returned")
		if _, err := b.Deferred(ctx, token); err != nil {
			t.Fatalf("the token of delivery %d once held: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(crashes) > 0 {
		t.Fatalf("a SIGKILL would have had the restart deliver a held message again while its token settles it:\n%s", strings.Join(crashes, "\n"))
	}
	if got := stored(); got != n {
		t.Fatalf("stored offset %d once all were held, want %d", got, n)
	}
}
