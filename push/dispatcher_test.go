package push

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

// rig is a real broker with a running dispatcher.
type rig struct {
	b   *broker.Broker
	key *BusKey
}

func newRig(tb testing.TB) *rig { return newRigRun(tb, true) }

// newRigRun is newRig, with its own dispatcher running or not: two
// dispatchers on one broker share each subscription's messages (the
// consumer engine leases each to one of them).
func newRigRun(tb testing.TB, run bool) *rig { return newRigWith(tb, run, nil) }

// newRigWith is newRigRun whose broker and dispatcher log to logger.
func newRigWith(tb testing.TB, run bool, logger *slog.Logger) *rig {
	tb.Helper()
	dir := tb.TempDir()
	cfg := broker.DefaultConfig(dir)
	cfg.SegmentSize = 8 << 20
	cfg.MaxMessageBytes = 1 << 20
	cfg.AutoCreateTopics = true
	cfg.OffsetInterval = 50 * time.Millisecond
	cfg.Logger = logger
	b, err := broker.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	key, err := LoadOrCreateBusKey(filepath.Join(dir, "signing.key"))
	if err != nil {
		tb.Fatal(err)
	}
	client := NewClient(ClientConfig{AllowPrivate: true})
	d := NewDispatcher(DispatcherConfig{Broker: b, Client: client, Key: key, Grace: time.Second, Logger: logger})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if run {
			d.Run(ctx)
		}
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
		client.Close()
		b.Close()
	})
	return &rig{b: b, key: key}
}

// sink is a webhook endpoint that records what it gets and answers with
// what respond says.
type sink struct {
	*httptest.Server
	mu      sync.Mutex
	got     []received
	respond func(r *http.Request, n int) int // status for the n-th request (from 1)
	notify  chan struct{}
}

type received struct {
	header http.Header
	body   string
	at     time.Time
}

func newSink(tb testing.TB, respond func(r *http.Request, n int) int) *sink {
	return newSinkWith(tb, nil, respond)
}

// newSinkWith is newSink whose answers carry header.
func newSinkWith(tb testing.TB, header http.Header, respond func(r *http.Request, n int) int) *sink {
	s := &sink{respond: respond, notify: make(chan struct{}, 1)}
	if s.respond == nil {
		s.respond = func(*http.Request, int) int { return 200 }
	}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.got = append(s.got, received{header: r.Header.Clone(), body: string(body), at: time.Now()})
		n := len(s.got)
		s.mu.Unlock()
		for k, v := range header {
			w.Header()[k] = v
		}
		w.WriteHeader(s.respond(r, n))
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}))
	tb.Cleanup(s.Close)
	return s
}

func (s *sink) requests() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.got...)
}

// waitUntil waits for cond, up to d.
func waitUntil(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *rig) subscribe(tb testing.TB, s broker.Subscription) broker.Subscription {
	tb.Helper()
	if _, _, err := r.b.PutTopic(context.Background(), s.Topic, broker.TopicSettings{}); err != nil {
		tb.Fatal(err)
	}
	if s.MaxRetries == 0 {
		s.MaxRetries = -1
	}
	sub, err := r.b.CreateSubscription(context.Background(), s)
	if err != nil {
		tb.Fatal(err)
	}
	return sub
}

func (r *rig) publish(tb testing.TB, topic string, msgs ...*broker.Message) []broker.Result {
	tb.Helper()
	res, err := r.b.Publish(context.Background(), topic, msgs)
	if err != nil {
		tb.Fatal(err)
	}
	return res
}

func TestPushDeliversSigned(t *testing.T) {
	r := newRig(t)
	s := newSink(t, nil)
	sub := r.subscribe(t, broker.Subscription{Group: "billing", Topic: "orders", URL: s.URL + "/hook"})
	ids := map[string]bool{}
	for i := 0; i < 50; i++ {
		res := r.publish(t, "orders", &broker.Message{Body: []byte(fmt.Sprintf(`{"n":%d}`, i)), ContentType: "application/json",
			Tag: "created", Keys: []string{"k" + strconv.Itoa(i)}, Properties: map[string]string{"Region": "eu"}})
		ids[res[0].ID] = true
	}
	waitUntil(t, 10*time.Second, "50 deliveries", func() bool { return len(s.requests()) >= 50 })
	for _, got := range s.requests() {
		h := got.header
		id := h.Get("Postbus-Message-Id")
		if !ids[id] {
			t.Fatalf("delivered unknown or repeated id %q", id)
		}
		delete(ids, id)
		if h.Get("Postbus-Topic") != "orders" || h.Get("Postbus-Tag") != "created" || h.Get("Postbus-Attempt") != "1" ||
			h.Get("Postbus-Subscription") != sub.ID || h.Get("Postbus-Prop-Region") != "eu" || h.Get("Content-Type") != "application/json" ||
			h.Get("webhook-id") != id {
			t.Fatalf("headers: %v", h)
		}
		if err := VerifyStandardWebhook(sub.Secret, h, []byte(got.body), time.Minute, time.Now()); err != nil {
			t.Fatalf("signature does not verify: %v", err)
		}
		if _, err := VerifyJWT(r.key.JWKS(), h.Get("Postbus-Signature"), []byte(got.body), time.Now()); err != nil {
			t.Fatalf("Postbus-Signature does not verify: %v", err)
		}
	}
	// The group's offsets catch up with the queues.
	waitUntil(t, 5*time.Second, "lag 0", func() bool {
		g, err := r.b.Group(context.Background(), "billing")
		return err == nil && g.Lag == 0
	})
}

func TestPushRetriesThenDelivers(t *testing.T) {
	r := newRig(t)
	s := newSink(t, func(_ *http.Request, n int) int {
		if n <= 2 {
			return 500
		}
		return 200
	})
	r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, RetryDelays: []time.Duration{50 * time.Millisecond}})
	res := r.publish(t, "t", &broker.Message{Body: []byte("x")})
	waitUntil(t, 10*time.Second, "the third attempt", func() bool { return len(s.requests()) >= 3 })
	got := s.requests()
	for i, want := range []string{"1", "2", "3"} {
		if a := got[i].header.Get("Postbus-Attempt"); a != want || got[i].header.Get("Postbus-Message-Id") != res[0].ID {
			t.Fatalf("request %d: attempt %q id %q", i, a, got[i].header.Get("Postbus-Message-Id"))
		}
		if i > 0 && got[i].at.Sub(got[i-1].at) < 50*time.Millisecond {
			t.Fatalf("retry %d came %s after the failure, before its 50ms delay", i, got[i].at.Sub(got[i-1].at))
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(s.requests()); n != 3 {
		t.Fatalf("%d requests, want exactly 3 (delivered on the third)", n)
	}
	tr, err := r.b.MessageTrace(context.Background(), res[0].ID)
	if err != nil || len(tr.Attempts) != 3 || tr.Attempts[0].Outcome != "retry" || tr.Attempts[2].Outcome != "delivered" || tr.Attempts[0].Status != 500 {
		t.Fatalf("trace %+v, %v", tr.Attempts, err)
	}
}

func TestPushDeadLettersAndRedrives(t *testing.T) {
	r := newRig(t)
	var mu sync.Mutex
	healthy := false
	s := newSink(t, func(*http.Request, int) int {
		mu.Lock()
		defer mu.Unlock()
		if healthy {
			return 204
		}
		return 503
	})
	r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, MaxRetries: 1, RetryDelays: []time.Duration{20 * time.Millisecond}})
	res := r.publish(t, "t", &broker.Message{Body: []byte("doomed")})
	ctx := context.Background()
	var dls []broker.DeadLetter
	waitUntil(t, 10*time.Second, "a dead letter", func() bool {
		var err error
		dls, err = r.b.DeadLetters(ctx, "g", -1, 10)
		return err == nil && len(dls) == 1
	})
	if n := len(s.requests()); n != 2 {
		t.Fatalf("%d attempts before the DLQ, want 2 (1 + 1 retry)", n)
	}
	d := dls[0]
	if d.ID != res[0].ID || d.OriginTopic() != "t" || d.Attempt != 2 || d.Reason == "" || string(d.Body) != "doomed" {
		t.Fatalf("dead letter %+v (reason %q)", d.Message, d.Reason)
	}
	mu.Lock()
	healthy = true
	mu.Unlock()
	n, err := r.b.Redrive(ctx, "g", []string{res[0].ID}, false, 100)
	if err != nil || n != 1 {
		t.Fatalf("redrive: %d, %v", n, err)
	}
	waitUntil(t, 10*time.Second, "the redriven delivery", func() bool { return len(s.requests()) == 3 })
	if a := s.requests()[2].header.Get("Postbus-Attempt"); a != "1" {
		t.Fatalf("redriven delivery attempt %q, want 1", a)
	}
	if left, _ := r.b.DeadLetters(ctx, "g", -1, 10); len(left) != 0 {
		t.Fatalf("%d dead letters left after the redrive", len(left))
	}
}

func TestPushGoneDisables(t *testing.T) {
	r := newRig(t)
	s := newSink(t, func(*http.Request, int) int { return 410 })
	sub := r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL})
	r.publish(t, "t", &broker.Message{Body: []byte("a")}, &broker.Message{Body: []byte("b")})
	waitUntil(t, 10*time.Second, "the subscription disabled", func() bool {
		got, err := r.b.Subscription(context.Background(), sub.ID)
		return err == nil && got.State == broker.StateDisabled
	})
	time.Sleep(100 * time.Millisecond)
	if n := len(s.requests()); n > 2 {
		t.Fatalf("%d deliveries to an endpoint that said 410", n)
	}
}

func TestPushFilterAndFanOut(t *testing.T) {
	r := newRig(t)
	all, paid := newSink(t, nil), newSink(t, nil)
	r.subscribe(t, broker.Subscription{Group: "audit", Topic: "t", URL: all.URL})
	r.subscribe(t, broker.Subscription{Group: "billing", Topic: "t", URL: paid.URL, Filter: "paid || refunded"})
	for _, tag := range []string{"created", "paid", "shipped", "refunded", ""} {
		r.publish(t, "t", &broker.Message{Body: []byte(tag + "!"), Tag: tag})
	}
	waitUntil(t, 10*time.Second, "fan-out", func() bool { return len(all.requests()) == 5 && len(paid.requests()) == 2 })
	for _, g := range paid.requests() {
		if tag := g.header.Get("Postbus-Tag"); tag != "paid" && tag != "refunded" {
			t.Fatalf("filtered subscription got tag %q", tag)
		}
	}
}

// TestSlowEndpointDoesNotBlockOthers: a subscription whose endpoint hangs
// does not hold up another on the same topic.
func TestSlowEndpointDoesNotBlockOthers(t *testing.T) {
	r := newRig(t)
	release := make(chan struct{})
	slow := newSink(t, func(req *http.Request, _ int) int {
		select {
		case <-release:
		case <-req.Context().Done():
		}
		return 200
	})
	defer close(release)
	fast := newSink(t, nil)
	r.subscribe(t, broker.Subscription{Group: "slow", Topic: "t", URL: slow.URL, Timeout: 30 * time.Second, MaxInFlight: 2})
	r.subscribe(t, broker.Subscription{Group: "fast", Topic: "t", URL: fast.URL})
	for i := 0; i < 40; i++ {
		r.publish(t, "t", &broker.Message{Body: []byte("m")})
	}
	waitUntil(t, 10*time.Second, "the fast subscription", func() bool { return len(fast.requests()) == 40 })
	if n := len(slow.requests()); n > 2 {
		t.Fatalf("the slow subscription has %d requests open; max_in_flight is 2", n)
	}
}

// TestOrderedBlocksOnlyItsQueue: an ordered subscription retries a failing
// message in place, holding back its queue only, then dead-letters it and
// moves on in order.
func TestOrderedBlocksOnlyItsQueue(t *testing.T) {
	r := newRig(t)
	s := newSink(t, func(req *http.Request, _ int) int {
		b, _ := io.ReadAll(req.Body)
		_ = b
		if req.Header.Get("Postbus-Keys") == "poison" {
			return 500
		}
		return 200
	})
	if _, _, err := r.b.PutTopic(context.Background(), "t", broker.TopicSettings{Queues: 2}); err != nil {
		t.Fatal(err)
	}
	r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, Ordered: true, MaxRetries: 2, RetryDelays: []time.Duration{100 * time.Millisecond}})
	// Sharding keys a and b land in different queues of two (checked).
	qa := r.publish(t, "t", &broker.Message{Body: []byte("a1"), ShardingKey: "a", Keys: []string{"poison"}})[0].QueueID
	var other string
	for _, k := range []string{"b", "c", "d", "e", "f"} {
		if q := r.publish(t, "t", &broker.Message{Body: []byte(k + "0"), ShardingKey: k})[0].QueueID; q != qa {
			other = k
			break
		}
	}
	if other == "" {
		t.Skip("no sharding key landed in the other queue")
	}
	r.publish(t, "t", &broker.Message{Body: []byte("a2"), ShardingKey: "a"})
	r.publish(t, "t", &broker.Message{Body: []byte(other + "1"), ShardingKey: other})
	// The other queue flows while a1 is retried.
	waitUntil(t, 5*time.Second, "the other queue", func() bool {
		for _, g := range s.requests() {
			if g.body == other+"1" {
				return true
			}
		}
		return false
	})
	for _, g := range s.requests() {
		if g.body == "a2" {
			t.Fatal("a2 was delivered while a1 blocked its queue")
		}
	}
	waitUntil(t, 10*time.Second, "a2 after a1 is dead-lettered", func() bool {
		for _, g := range s.requests() {
			if g.body == "a2" {
				return true
			}
		}
		return false
	})
	attempts := 0
	for _, g := range s.requests() {
		if g.body == "a1" {
			attempts++
		}
	}
	if attempts != 3 {
		t.Fatalf("a1 tried %d times, want 3 (1 + 2 retries)", attempts)
	}
	if dls, _ := r.b.DeadLetters(context.Background(), "g", -1, 10); len(dls) != 1 || string(dls[0].Body) != "a1" {
		t.Fatalf("dead letters: %d", len(dls))
	}
}

func TestDelayedPushArrivesOnTime(t *testing.T) {
	r := newRig(t)
	s := newSink(t, nil)
	r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL})
	start := time.Now()
	r.publish(t, "t", &broker.Message{Body: []byte("soon"), DelayLevel: 1}) // 1s
	waitUntil(t, 10*time.Second, "the delayed delivery", func() bool { return len(s.requests()) == 1 })
	if took := s.requests()[0].at.Sub(start); took < time.Second || took > 10*time.Second {
		t.Fatalf("delay level 1 (1s) delivered after %s", took)
	}
}

// TestRetryAfterHonoured: a 429 with Retry-After waits that long, not the
// shorter scheduled delay.
func TestRetryAfterHonoured(t *testing.T) {
	r := newRig(t)
	s := newSinkWith(t, http.Header{"Retry-After": {"1"}}, func(_ *http.Request, n int) int {
		if n == 1 {
			return 429
		}
		return 200
	})
	r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, RetryDelays: []time.Duration{10 * time.Millisecond}})
	r.publish(t, "t", &broker.Message{Body: []byte("x")})
	waitUntil(t, 10*time.Second, "the retry", func() bool { return len(s.requests()) == 2 })
	got := s.requests()
	if gap := got[1].at.Sub(got[0].at); gap < time.Second {
		t.Fatalf("retried %s after a 429 with Retry-After: 1", gap)
	}
}

// TestStartFromTime: a subscription starting from a time gets what was
// stored from then on, and nothing before.
func TestStartFromTime(t *testing.T) {
	r := newRig(t)
	r.publish(t, "t", &broker.Message{Body: []byte("before")})
	time.Sleep(20 * time.Millisecond)
	from := time.Now()
	time.Sleep(5 * time.Millisecond)
	r.publish(t, "t", &broker.Message{Body: []byte("after")})
	s := newSink(t, nil)
	r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, StartFrom: from.Format(time.RFC3339Nano)})
	waitUntil(t, 10*time.Second, "a delivery", func() bool { return len(s.requests()) >= 1 })
	time.Sleep(100 * time.Millisecond)
	if got := s.requests(); len(got) != 1 || got[0].body != "after" {
		t.Fatalf("deliveries %+v; want only the message stored after start_from", got)
	}
}
