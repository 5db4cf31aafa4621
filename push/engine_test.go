package push

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

// gate is a sink answer that holds every request until it is opened.
type gate chan struct{}

func (g gate) respond(r *http.Request, _ int) int {
	select {
	case <-g:
	case <-r.Context().Done():
	}
	return 200
}

func bodiesOf(s *sink) map[string]int {
	out := map[string]int{}
	for _, g := range s.requests() {
		out[g.body]++
	}
	return out
}

func inFlight(tb testing.TB, b *broker.Broker, group string) int {
	tb.Helper()
	g, err := b.Group(context.Background(), group)
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for _, q := range g.Queues {
		n += q.InFlight
	}
	return n
}

// TestPushHonoursOffsetReset (fault 7): a reset to latest while a push
// subscription has messages queued behind a slow delivery skips them; the
// running loop used to deliver them anyway and write its own offsets back.
func TestPushHonoursOffsetReset(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	g := make(gate)
	s := newSink(t, g.respond)
	if _, _, err := r.b.PutTopic(ctx, "t", broker.TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, MaxInFlight: 1})
	for i := 0; i < 5; i++ {
		r.publish(t, "t", &broker.Message{Body: []byte(fmt.Sprint("m", i))})
	}
	waitUntil(t, 5*time.Second, "the first delivery", func() bool { return len(s.requests()) == 1 })
	if err := r.b.ResetOffsets(ctx, "g", "t", "latest"); err != nil {
		t.Fatal(err)
	}
	close(g)
	r.publish(t, "t", &broker.Message{Body: []byte("after")})
	waitUntil(t, 10*time.Second, "the message published after the reset", func() bool { return bodiesOf(s)["after"] > 0 })
	for i := 1; i < 5; i++ {
		if n := bodiesOf(s)[fmt.Sprint("m", i)]; n > 0 {
			t.Errorf("m%d, before the reset to latest, was delivered %d times after it", i, n)
		}
	}
}

// TestPauseCountsNoUnsentAttempt (fault 6): pausing a rate-limited
// subscription gives back the messages waiting for the rate limiter; they
// were never sent, so with max_retries 0 none goes to the dead-letter queue.
func TestPauseCountsNoUnsentAttempt(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	s := newSink(t, nil)
	if _, _, err := r.b.PutTopic(ctx, "t", broker.TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	sub, err := r.b.CreateSubscription(ctx, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, MaxRetries: 0, RatePerSecond: 1, MaxInFlight: 8})
	if err != nil {
		t.Fatal(err)
	}
	if sub.MaxRetries != 0 {
		t.Fatalf("max_retries %d, want 0", sub.MaxRetries)
	}
	for i := 0; i < 4; i++ {
		r.publish(t, "t", &broker.Message{Body: []byte(fmt.Sprint("m", i))})
	}
	waitUntil(t, 5*time.Second, "the first delivery", func() bool { return len(s.requests()) >= 1 })
	if _, err := r.b.SetSubscriptionState(ctx, sub.ID, broker.StatePaused, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := r.b.SetSubscriptionState(ctx, sub.ID, broker.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 15*time.Second, "all four delivered after the resume", func() bool { return len(bodiesOf(s)) == 4 })
	if dls, err := r.b.DeadLetters(ctx, "g", -1, 10); err != nil || len(dls) != 0 {
		t.Fatalf("dead letters after a pause: %d (%v), want none: nothing failed", len(dls), err)
	}
}

// TestInFlightClearedWhenStopped (fault 10): the groups API's in_flight
// goes back to 0 once a subscription with deliveries out is paused, and
// after it is deleted.
func TestInFlightClearedWhenStopped(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	g := make(gate)
	defer close(g)
	s := newSink(t, g.respond)
	sub := r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, MaxInFlight: 2, Timeout: 30 * time.Second})
	for i := 0; i < 3; i++ {
		r.publish(t, "t", &broker.Message{Body: []byte(fmt.Sprint("m", i))})
	}
	waitUntil(t, 5*time.Second, "two deliveries out", func() bool { return len(s.requests()) == 2 })
	if n := inFlight(t, r.b, "g"); n != 2 {
		t.Fatalf("in_flight %d with two deliveries out, want 2", n)
	}
	if _, err := r.b.SetSubscriptionState(ctx, sub.ID, broker.StatePaused, ""); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "in_flight 0 after the pause", func() bool { return inFlight(t, r.b, "g") == 0 })
	if _, err := r.b.SetSubscriptionState(ctx, sub.ID, broker.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "deliveries out again", func() bool { return inFlight(t, r.b, "g") > 0 })
	if err := r.b.DeleteSubscription(ctx, sub.ID); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "in_flight 0 after the delete", func() bool { return inFlight(t, r.b, "g") == 0 })
}

// TestPushDeliversGrownQueues (fault 2): a running push subscription
// delivers the messages of queues its topic gained.
func TestPushDeliversGrownQueues(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	s := newSink(t, nil)
	if _, _, err := r.b.PutTopic(ctx, "t", broker.TopicSettings{Queues: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.b.CreateSubscription(ctx, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, MaxRetries: -1}); err != nil {
		t.Fatal(err)
	}
	r.publish(t, "t", &broker.Message{Body: []byte("before")})
	waitUntil(t, 5*time.Second, "the loop running", func() bool { return len(s.requests()) == 1 })
	if _, _, err := r.b.PutTopic(ctx, "t", broker.TopicSettings{Queues: 4}); err != nil {
		t.Fatal(err)
	}
	inNew := 0
	for i := 0; i < 8; i++ {
		res := r.publish(t, "t", &broker.Message{Body: []byte(fmt.Sprint("m", i)), ShardingKey: fmt.Sprint("k", i)})
		if res[0].QueueID >= 2 {
			inNew++
		}
	}
	if inNew == 0 {
		t.Fatal("no message landed in the new queues; pick other sharding keys")
	}
	waitUntil(t, 10*time.Second, "all 9 delivered", func() bool { return len(bodiesOf(s)) == 9 })
}

// TestPushTurningOrderedKeepsPendingRetry (fault 4, push): a retry pending
// when a subscription turns ordered is delivered, from the retry queue an
// ordered loop used never to read.
func TestPushTurningOrderedKeepsPendingRetry(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	s := newSink(t, func(_ *http.Request, n int) int {
		if n == 1 {
			return 500
		}
		return 200
	})
	sub := r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, RetryDelays: []time.Duration{500 * time.Millisecond}})
	r.publish(t, "t", &broker.Message{Body: []byte("m0")})
	waitUntil(t, 5*time.Second, "the failed first attempt's retry pending", func() bool {
		g, err := r.b.Group(ctx, "g")
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range g.Queues {
			if q.Topic == broker.RetryTopic("g", "t") && q.InFlight == 1 {
				return true
			}
		}
		return false
	})
	sub.Ordered = true
	if _, err := r.b.UpdateSubscription(ctx, sub); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the retry after turning ordered", func() bool { return len(s.requests()) == 2 })
	if got := s.requests()[1]; got.body != "m0" || got.header.Get("Postbus-Attempt") != "2" {
		t.Fatalf("second delivery %q attempt %s, want m0 attempt 2", got.body, got.header.Get("Postbus-Attempt"))
	}
}

// TestPushOrderedRedrive (fault 3, push): a dead letter redriven to an
// ordered push subscription is delivered.
func TestPushOrderedRedrive(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	var fail = true
	var mu sync.Mutex
	s := newSink(t, func(*http.Request, int) int {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return 500
		}
		return 200
	})
	if _, _, err := r.b.PutTopic(ctx, "t", broker.TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.b.CreateSubscription(ctx, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, Ordered: true, MaxRetries: 0}); err != nil {
		t.Fatal(err)
	}
	r.publish(t, "t", &broker.Message{Body: []byte("m0")})
	waitUntil(t, 10*time.Second, "m0 dead-lettered", func() bool {
		dls, _ := r.b.DeadLetters(ctx, "g", -1, 10)
		return len(dls) == 1
	})
	mu.Lock()
	fail = false
	mu.Unlock()
	if n, err := r.b.Redrive(ctx, "g", nil, true, 1000); err != nil || n != 1 {
		t.Fatalf("redrive: %d, %v", n, err)
	}
	waitUntil(t, 10*time.Second, "the redriven message delivered", func() bool { return len(s.requests()) == 2 })
}

// TestGoneIsNoAnomaly (attack F3b): an endpoint answering 410 Gone to
// several deliveries at once disables its subscription once, and the
// loop racing that disable (its next lease finds the subscription
// inactive) logs no ERROR; it used to log "leasing messages failed".
func TestGoneIsNoAnomaly(t *testing.T) {
	ctx := context.Background()
	logs := &logLines{}
	r := newRigWith(t, true, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	g := make(gate)
	s := newSink(t, func(req *http.Request, n int) int {
		g.respond(req, n)
		return http.StatusGone
	})
	if _, _, err := r.b.PutTopic(ctx, "t", broker.TopicSettings{Queues: 4}); err != nil {
		t.Fatal(err)
	}
	sub := r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, MaxInFlight: 4})
	for i := 0; i < 8; i++ {
		r.publish(t, "t", &broker.Message{Body: []byte(fmt.Sprint("m", i)), ShardingKey: fmt.Sprint("k", i)})
	}
	waitUntil(t, 5*time.Second, "four deliveries open", func() bool { return len(s.requests()) >= 4 })
	close(g)
	waitUntil(t, 10*time.Second, "the subscription disabled and its loop stopped", func() bool {
		got, err := r.b.Subscription(ctx, sub.ID)
		return err == nil && got.State == broker.StateDisabled && strings.Contains(logs.String(), "push loop stopped")
	})
	if n := strings.Count(logs.String(), `msg="subscription disabled"`); n != 1 {
		t.Errorf("%d WARN lines disabling the subscription for one 410 burst, want 1", n)
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("a 410 logged an anomaly: %s", line)
		}
	}
}

// logLines collects log output from many goroutines.
type logLines struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPauseRepeatsNothingAnswered (attack F3): deliveries out when a push
// subscription is paused (or disabled) finish within the loop's grace; one
// answered 200 then is settled, and not delivered again after the resume.
// The pause used to drop the group's consumer at once, so those settles
// were stale and the messages went out again.
func TestPauseRepeatsNothingAnswered(t *testing.T) {
	for _, state := range []string{broker.StatePaused, broker.StateDisabled} {
		t.Run(state, func(t *testing.T) {
			ctx := context.Background()
			r := newRig(t)
			g := make(gate)
			s := newSink(t, g.respond)
			sub := r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, MaxInFlight: 2, Timeout: 30 * time.Second})
			for i := 0; i < 3; i++ {
				r.publish(t, "t", &broker.Message{Body: []byte(fmt.Sprint("m", i))})
			}
			waitUntil(t, 5*time.Second, "two deliveries out", func() bool { return len(s.requests()) == 2 })
			if _, err := r.b.SetSubscriptionState(ctx, sub.ID, state, ""); err != nil {
				t.Fatal(err)
			}
			close(g) // both answer 200, within the stopping loop's grace
			if _, err := r.b.SetSubscriptionState(ctx, sub.ID, broker.StateActive, ""); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, 10*time.Second, "all three delivered", func() bool { return len(bodiesOf(s)) == 3 })
			if err := r.b.DeleteSubscription(ctx, sub.ID); err != nil {
				t.Fatal(err)
			}
			for body, n := range bodiesOf(s) {
				if n != 1 {
					t.Errorf("%s delivered %d times, answered 200 each time", body, n)
				}
			}
		})
	}
}

// TestRateHoldsInTheFirstSecond (attack F7): rate_per_second 5 lets about
// 5 attempts into any second, the first one after an idle while too; a
// bucket of 5 tokens, full at the start, let 10 through.
func TestRateHoldsInTheFirstSecond(t *testing.T) {
	r := newRig(t)
	s := newSink(t, func(*http.Request, int) int { return 200 })
	r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, RatePerSecond: 5, MaxInFlight: 32})
	var msgs []*broker.Message
	for i := range 12 {
		msgs = append(msgs, &broker.Message{Body: []byte(fmt.Sprint("m", i))})
	}
	r.publish(t, "t", msgs...)
	waitUntil(t, 10*time.Second, "twelve deliveries", func() bool { return len(s.requests()) >= 12 })
	reqs := s.requests()
	for i := range reqs {
		n := 0
		for _, q := range reqs[i:] {
			if q.at.Sub(reqs[i].at) < time.Second {
				n++
			}
		}
		// Five a second, spaced 200ms: the sixth falls at the second's
		// end, and the sink's clock (arrival, after a first dial) can
		// put it just inside.
		if n > 6 {
			t.Fatalf("%d attempts within a second of the one at %s; rate_per_second is 5", n, reqs[i].at.Format("15:04:05.000"))
		}
	}
}
