package push

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/prometheus/client_golang/prometheus"
)

// batchSink is a webhook endpoint for batched deliveries: it records each
// request and its decoded elements, and answers what answer says.
type batchSink struct {
	*httptest.Server
	mu     sync.Mutex
	reqs   []batchReq
	answer func(n int, els []BatchElement) (int, string) // status and body for the n-th request (from 1)
}

type batchReq struct {
	header http.Header
	body   []byte
	els    []BatchElement
	at     time.Time
}

func newBatchSink(tb testing.TB, answer func(n int, els []BatchElement) (int, string)) *batchSink {
	s := &batchSink{answer: answer}
	if s.answer == nil {
		s.answer = func(int, []BatchElement) (int, string) { return 200, "" }
	}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(400)
			return
		}
		var els []BatchElement
		if err := json.Unmarshal(body, &els); err != nil {
			tb.Errorf("a batch body is not a JSON array of elements: %v: %.200s", err, body)
			w.WriteHeader(400)
			return
		}
		s.mu.Lock()
		s.reqs = append(s.reqs, batchReq{header: r.Header.Clone(), body: body, els: els, at: time.Now()})
		n := len(s.reqs)
		s.mu.Unlock()
		status, ans := s.answer(n, els)
		w.WriteHeader(status)
		io.WriteString(w, ans)
	}))
	tb.Cleanup(s.Close)
	return s
}

func (s *batchSink) requests() []batchReq {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

// deliveries counts, by body, the elements received with a 2xx answer
// not naming them failed is not known here: it counts every element sent.
func (s *batchSink) sent() map[string][]int {
	out := map[string][]int{}
	for _, r := range s.requests() {
		for _, e := range r.els {
			out[e.Body] = append(out[e.Body], e.Attempt)
		}
	}
	return out
}

func publishN(tb testing.TB, r *rig, topic, prefix string, n int) []broker.Result {
	tb.Helper()
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{Body: []byte(fmt.Sprintf("%s%03d", prefix, i))}
	}
	return r.publish(tb, topic, msgs...)
}

// TestBatchSizes: a batch goes out as soon as it holds max_messages, one
// more waits in the next batch for max_wait, and a message arriving
// within max_wait of the first one joins its batch.
func TestBatchSizes(t *testing.T) {
	const n = 8
	r := newRig(t)
	s := newBatchSink(t, nil)
	sub := r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, MaxInFlight: n,
		Batch: broker.PushBatch{MaxMessages: n, MaxWait: 400 * time.Millisecond}})

	// N exactly, in one publish: one request of N.
	publishN(t, r, "t", "a", n)
	waitUntil(t, 10*time.Second, "the first batch", func() bool { return len(s.requests()) >= 1 })
	first := s.requests()[0]
	if len(first.els) != n {
		t.Fatalf("the first batch holds %d messages, want %d", len(first.els), n)
	}
	checkBatchRequest(t, r, sub, first)

	// N+1: N at once, the last one alone after max_wait.
	publishN(t, r, "t", "b", n+1)
	waitUntil(t, 10*time.Second, "N+1 delivered", func() bool { return countPrefix(s.sent(), "b") == n+1 })
	var sizes []int
	for _, q := range s.requests()[1:] {
		sizes = append(sizes, len(q.els))
	}
	slices.Sort(sizes)
	if !slices.Equal(sizes, []int{1, n}) {
		t.Fatalf("N+1 messages went out in batches of %v, want [1 %d]", sizes, n)
	}

	// Partial: one message, then another well within max_wait: one
	// request holding both.
	before := len(s.requests())
	r.publish(t, "t", &broker.Message{Body: []byte("c1")})
	waitUntil(t, 5*time.Second, "c1 leased", func() bool { return inFlight(t, r.b, "g") == 1 })
	r.publish(t, "t", &broker.Message{Body: []byte("c2")})
	waitUntil(t, 10*time.Second, "c1 and c2 delivered", func() bool { return countPrefix(s.sent(), "c") == 2 })
	got := s.requests()[before:]
	if len(got) != 1 || len(got[0].els) != 2 {
		t.Fatalf("c1 and c2, published within max_wait of each other, went out in %d requests, want one of both", len(got))
	}
	for body, attempts := range s.sent() {
		if len(attempts) != 1 || attempts[0] != 1 {
			t.Errorf("%s delivered with attempts %v, want once as attempt 1", body, attempts)
		}
	}
}

func countPrefix(m map[string][]int, prefix string) int {
	n := 0
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			n += len(v)
		}
	}
	return n
}

// checkBatchRequest checks a batch's headers, its signature over the whole
// body and its elements against the stored messages.
func checkBatchRequest(t *testing.T, r *rig, sub broker.Subscription, q batchReq) {
	t.Helper()
	h := q.header
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if v := h.Get(HeaderBatchSize); v != fmt.Sprint(len(q.els)) {
		t.Errorf("%s %q, want %d", HeaderBatchSize, v, len(q.els))
	}
	for _, name := range []string{HeaderMessageID, HeaderQueueOffset, HeaderQueueID, HeaderAttempt, HeaderTopic} {
		if v := h.Get(name); v != "" {
			t.Errorf("a batch carries %s %q, which describes one message", name, v)
		}
	}
	if h.Get(HeaderSubscription) != sub.ID {
		t.Errorf("%s %q, want %q", HeaderSubscription, h.Get(HeaderSubscription), sub.ID)
	}
	if id := h.Get(HeaderWebhookID); !strings.HasPrefix(id, "batch_") {
		t.Errorf("webhook-id %q, want a batch id", id)
	}
	if err := VerifyStandardWebhook(sub.Secret, h, q.body, 0, time.Now()); err != nil {
		t.Errorf("the batch's signature does not verify over its body: %v", err)
	}
	for _, e := range q.els {
		m, err := r.b.Message(context.Background(), e.MsgID)
		if err != nil {
			t.Fatalf("element %s: %v", e.MsgID, err)
		}
		if e.Topic != sub.Topic || e.QueueID != m.QueueID || e.QueueOffset != m.QueueOffset || e.Body != string(m.Body) ||
			e.Encoding != "utf8" || e.Attempt != 1 || e.BornAt == "" || e.ContentType == "" {
			t.Errorf("element %+v does not describe message %s (queue %d offset %d body %q)", e, m.ID, m.QueueID, m.QueueOffset, m.Body)
		}
	}
}

// TestBatchBinaryBody: a body that is not UTF-8 travels as base64, the
// pull answer's rule.
func TestBatchBinaryBody(t *testing.T) {
	r := newRig(t)
	s := newBatchSink(t, nil)
	r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, Batch: broker.PushBatch{MaxMessages: 4}})
	bin := []byte{0xff, 0x00, 0xfe}
	r.publish(t, "t", &broker.Message{Body: bin, ContentType: "application/octet-stream", Tag: "x", Keys: []string{"k"},
		Properties: map[string]string{"p": "v"}})
	waitUntil(t, 10*time.Second, "the delivery", func() bool { return len(s.requests()) == 1 })
	e := s.requests()[0].els[0]
	raw, err := base64.StdEncoding.DecodeString(e.Body)
	if e.Encoding != "base64" || err != nil || string(raw) != string(bin) {
		t.Fatalf("binary body as %q encoding %q, want base64 of %x", e.Body, e.Encoding, bin)
	}
	if e.Tag != "x" || !slices.Equal(e.Keys, []string{"k"}) || e.Properties["p"] != "v" || e.ContentType != "application/octet-stream" {
		t.Fatalf("element %+v lost the message's tag, keys, properties or content type", e)
	}
}

// TestBatchPartial: a 207 naming some messages retries only those, each
// as its own next attempt; the rest are acked once.
func TestBatchPartial(t *testing.T) {
	r := newRig(t)
	s := newBatchSink(t, func(n int, els []BatchElement) (int, string) {
		if n > 1 {
			return 200, ""
		}
		var failed []string
		for _, e := range els {
			if e.Body == "m001" || e.Body == "m003" {
				failed = append(failed, e.MsgID)
			}
		}
		b, _ := json.Marshal(map[string]any{"failed": failed})
		return 207, string(b)
	})
	r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, RetryDelays: []time.Duration{20 * time.Millisecond},
		Batch: broker.PushBatch{MaxMessages: 5, MaxWait: time.Second}})
	publishN(t, r, "t", "m", 5)
	waitUntil(t, 10*time.Second, "the two failed ones retried", func() bool { return countPrefix(s.sent(), "m") == 7 })
	for body, attempts := range s.sent() {
		want := []int{1}
		if body == "m001" || body == "m003" {
			want = []int{1, 2}
		}
		if !slices.Equal(attempts, want) {
			t.Errorf("%s went out as attempts %v, want %v", body, attempts, want)
		}
	}
	waitUntil(t, 10*time.Second, "nothing left in flight", func() bool { return inFlight(t, r.b, "g") == 0 })
}

// TestBatchInvalidPartial: a 207 that is not a list of the batch's failed
// messages fails the whole batch (every message retried), logged and
// counted.
func TestBatchInvalidPartial(t *testing.T) {
	for _, tc := range []struct{ name, answer string }{
		{"not json", "ok"},
		{"no failed list", `{}`},
		{"an array", `["x"]`},
		{"unknown id", `{"failed":["not-in-the-batch"]}`},
		{"two values", `{"failed":[]} {}`},
		{"failed twice", `{"failed":[],"failed":[]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRigRun(t, false)
			reg := prometheus.NewRegistry()
			client := NewClient(ClientConfig{AllowPrivate: true})
			defer client.Close()
			d := NewDispatcher(DispatcherConfig{Broker: r.b, Client: client, Key: r.key, Registerer: reg})
			s := newBatchSink(t, func(n int, els []BatchElement) (int, string) {
				if n == 1 {
					return 207, tc.answer
				}
				return 200, ""
			})
			sub := r.subscribe(t, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, RetryDelays: []time.Duration{20 * time.Millisecond},
				Batch: broker.PushBatch{MaxMessages: 3, MaxWait: time.Second}})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); d.Run(ctx) }()
			defer func() { cancel(); <-done }()
			publishN(t, r, "t", "m", 3)
			waitUntil(t, 10*time.Second, "every message retried", func() bool { return countPrefix(s.sent(), "m") == 6 })
			for body, attempts := range s.sent() {
				if !slices.Equal(attempts, []int{1, 2}) {
					t.Errorf("%s went out as attempts %v, want [1 2]", body, attempts)
				}
			}
			if v := gathered(t, reg, "postbus_push_batch_invalid_answers_total", map[string]string{"subscription": sub.ID}); v != 1 {
				t.Fatalf("postbus_push_batch_invalid_answers_total = %v, want 1", v)
			}
		})
	}
}

// TestBatchDeadLetters: an endpoint that always fails sends every message
// of its batches to the dead-letter queue after 1 + max_retries attempts,
// each on its own count.
func TestBatchDeadLetters(t *testing.T) {
	r := newRig(t)
	s := newBatchSink(t, func(int, []BatchElement) (int, string) { return 500, "" })
	sub, err := r.b.CreateSubscription(context.Background(), broker.Subscription{Group: "g", Topic: "t", URL: s.URL, MaxRetries: 1,
		RetryDelays: []time.Duration{20 * time.Millisecond}, Batch: broker.PushBatch{MaxMessages: 4, MaxWait: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, r, "t", "m", 6)
	waitUntil(t, 15*time.Second, "six dead letters", func() bool {
		dls, err := r.b.DeadLetters(context.Background(), sub.Group, -1, 100)
		return err == nil && len(dls) == 6
	})
	for body, attempts := range s.sent() {
		if !slices.Equal(attempts, []int{1, 2}) {
			t.Errorf("%s went out as attempts %v, want [1 2] before its dead letter", body, attempts)
		}
	}
}

func TestParsePartial(t *testing.T) {
	ids := map[string]bool{"a": true, "b": true}
	for _, tc := range []struct {
		body string
		want []string // nil: an error
	}{
		{`{"failed":[]}`, []string{}},
		{`{"failed":["a"]}`, []string{"a"}},
		{` {"failed":["b","a"]} `, []string{"a", "b"}},
		{`{"failed":["c"]}`, nil},
		{`{"failed":null}`, nil},
		{`{"failed":"a"}`, nil},
		{``, nil},
		{`[]`, nil},
		{`{"failed":[]}x`, nil},
		// A member given twice: whichever came last would decide.
		{`{"failed":["a"],"failed":[]}`, nil},
		{`{"failed":[],"failed":["a"]}`, nil},
		{`{"failed":[],"why":{"k":1,"k":2}}`, nil},
		{`{"failed":["a"],"why":{"failed":1}}`, []string{"a"}},
	} {
		got, err := ParsePartial([]byte(tc.body), ids)
		if tc.want == nil {
			if err == nil {
				t.Errorf("ParsePartial(%q) = %v, want an error", tc.body, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParsePartial(%q): %v", tc.body, err)
			continue
		}
		var names []string
		for id := range got {
			names = append(names, id)
		}
		slices.Sort(names)
		if len(names) != len(tc.want) || (len(names) > 0 && !slices.Equal(names, tc.want)) {
			t.Errorf("ParsePartial(%q) = %v, want %v", tc.body, names, tc.want)
		}
	}
}

// TestBatchOrderedFailureInTheMiddle: an ordered subscription's batch is a
// run of one queue in queue order; a 207 failing a message in the middle
// acks those before it, retries it, and sends those after it again only
// after it, in order, each as its next attempt (attack s8 F4: they came
// back as attempt 1, as if never sent).
func TestBatchOrderedFailureInTheMiddle(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	if _, _, err := r.b.PutTopic(ctx, "t", broker.TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	s := newBatchSink(t, func(n int, els []BatchElement) (int, string) {
		if n == 1 {
			for _, e := range els {
				if e.Body == "m003" {
					return 207, `{"failed":["` + e.MsgID + `"]}`
				}
			}
		}
		return 200, ""
	})
	sub, err := r.b.CreateSubscription(ctx, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, Ordered: true, MaxRetries: 3,
		RetryDelays: []time.Duration{50 * time.Millisecond}, Batch: broker.PushBatch{MaxMessages: 10, MaxWait: 300 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, r, "t", "m", 10)
	waitUntil(t, 15*time.Second, "m003 to m009 delivered again", func() bool { return countPrefix(s.sent(), "m") == 17 })
	reqs := s.requests()
	var order []string
	for i, q := range reqs {
		var bodies []string
		for _, e := range q.els {
			bodies = append(bodies, fmt.Sprintf("%s/%d", e.Body, e.Attempt))
		}
		t.Logf("request %d: %v", i+1, bodies)
		order = append(order, bodies...)
	}
	want := []string{"m000/1", "m001/1", "m002/1", "m003/1", "m004/1", "m005/1", "m006/1", "m007/1", "m008/1", "m009/1",
		"m003/2", "m004/2", "m005/2", "m006/2", "m007/2", "m008/2", "m009/2"}
	if !slices.Equal(order, want) {
		t.Fatalf("delivered as %v, want %v", order, want)
	}
	if len(reqs[0].els) != 10 {
		t.Fatalf("the first batch holds %d messages, want the whole run of 10", len(reqs[0].els))
	}
	// The trace says m004's first delivery was not taken as done.
	var m4 string
	for _, e := range reqs[0].els {
		if e.Body == "m004" {
			m4 = e.MsgID
		}
	}
	var outcomes []string
	wantTrace := []string{"1:retry", "2:delivered"}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(outcomes, wantTrace) && time.Now().Before(deadline) {
		tr, err := r.b.MessageTrace(ctx, m4)
		if err != nil {
			t.Fatal(err)
		}
		outcomes = outcomes[:0]
		for _, a := range tr.Attempts {
			outcomes = append(outcomes, fmt.Sprintf("%d:%s", a.Attempt, a.Outcome))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !slices.Equal(outcomes, wantTrace) {
		t.Fatalf("m004's trace %v, want %v: held back behind m003, then delivered", outcomes, wantTrace)
	}
	waitUntil(t, 10*time.Second, "nothing left in flight", func() bool { return inFlight(t, r.b, sub.Group) == 0 })
	waitUntil(t, 10*time.Second, "the group's offset at 10", func() bool {
		off, ok := r.b.Offset(sub.Group, "t", 0)
		return ok && off == 10
	})
}

// TestBatchSplitsLargeBodies: a batch whose body would pass MaxBatchBody
// goes out as several requests, in order; in an ordered subscription a
// failure in the first holds back the rest of its queue, sent or not.
func TestBatchSplitsLargeBodies(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	if _, _, err := r.b.PutTopic(ctx, "t", broker.TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	s := newBatchSink(t, func(n int, els []BatchElement) (int, string) {
		if n == 1 {
			return 207, `{"failed":["` + els[1].MsgID + `"]}`
		}
		return 200, ""
	})
	var msgs []*broker.Message
	for i := range 5 {
		body := append([]byte(fmt.Sprintf("m%d:", i)), bytes.Repeat([]byte("x"), 1000<<10)...)
		msgs = append(msgs, &broker.Message{Body: body})
	}
	r.publish(t, "t", msgs[:3]...) // a publish takes at most 4 MiB of bodies
	r.publish(t, "t", msgs[3:]...)
	// Subscribed after: the five are there for the first lease.
	if _, err := r.b.CreateSubscription(ctx, broker.Subscription{Group: "g", Topic: "t", URL: s.URL, Ordered: true, MaxRetries: 3,
		StartFrom: "earliest", RetryDelays: []time.Duration{20 * time.Millisecond}, Batch: broker.PushBatch{MaxMessages: 10, MaxWait: 200 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "every message delivered after m1's retry", func() bool { return len(s.requests()) >= 3 })
	var got []string
	for _, q := range s.requests() {
		if len(q.body) > MaxBatchBody {
			t.Errorf("a request of %d bytes; at most %d", len(q.body), MaxBatchBody)
		}
		var names []string
		for _, e := range q.els {
			names = append(names, fmt.Sprintf("%s/%d", e.Body[:2], e.Attempt))
		}
		got = append(got, fmt.Sprint(names))
	}
	// The run of five does not fit one request: m0-m3, then m4, which is
	// not sent, being after the failed m1.
	// m4 is counted as sent with m1 too, which it was not: a receiver
	// may take attempt 2 for "maybe seen", never attempt 1 for "first".
	want := []string{"[m0/1 m1/1 m2/1 m3/1]", "[m1/2]", "[m2/2 m3/2 m4/2]"}
	if !slices.Equal(got, want) {
		t.Fatalf("requests %v, want %v: m4, after the failed m1 in its queue, is not sent before it", got, want)
	}
}

// TestBatchBytesOutBounded: a batched loop stops leasing once the bodies
// it holds out pass maxBytesOut, whatever max_in_flight allows: here 40
// messages of 1000 KiB with max_in_flight 1024 and an endpoint that holds
// every request.
func TestBatchBytesOutBounded(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	g := make(gate)
	var mu sync.Mutex
	held := 0
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		mu.Lock()
		held++
		mu.Unlock()
		g.respond(req, 0)
	}))
	defer sink.Close()
	defer close(g)
	if _, _, err := r.b.PutTopic(ctx, "t", broker.TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	const n, size = 40, 1000 << 10
	for i := 0; i < n; i += 4 {
		var msgs []*broker.Message
		for range 4 {
			msgs = append(msgs, &broker.Message{Body: bytes.Repeat([]byte("x"), size)})
		}
		r.publish(t, "t", msgs...)
	}
	if _, err := r.b.CreateSubscription(ctx, broker.Subscription{Group: "g", Topic: "t", URL: sink.URL, MaxInFlight: 1024,
		StartFrom: "earliest", Timeout: time.Minute, Batch: broker.PushBatch{MaxMessages: 4}}); err != nil {
		t.Fatal(err)
	}
	// The 32 MiB budget (maxBytesOut) is passed by the ninth lease of
	// four: eight requests reach the endpoint, and no more than 36
	// messages are out (without the budget, 38 to 40).
	const limit = 36
	waitUntil(t, 20*time.Second, "eight requests held by the endpoint", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return held >= 8
	})
	if out := inFlight(t, r.b, "g"); out > limit {
		t.Fatalf("%d messages of %d bytes out; the budget of %d bytes allows %d", out, size, maxBytesOut, limit)
	}
}
