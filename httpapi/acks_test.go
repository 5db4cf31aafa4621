package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/push"
)

// deferRig is a broker with its HTTP API and a running push dispatcher,
// and a webhook endpoint whose answers a test chooses.
type deferRig struct {
	b    *broker.Broker
	api  *httptest.Server
	hook *hookSink
	dir  string
	stop func()
}

// hookSink records the deliveries it gets and answers each with what
// answer says (202 by default).
type hookSink struct {
	*httptest.Server
	mu     sync.Mutex
	got    []http.Header
	answer func(h http.Header, n int) int
	// outstanding is deliveries answered 202 and not yet acknowledged by
	// the test; maxOut the most seen at one time.
	outstanding, maxOut int
}

// ackJSON is the header of a JSON request.
var ackJSON = map[string]string{"Content-Type": "application/json"}

func newHookSink(tb testing.TB, answer func(h http.Header, n int) int) *hookSink {
	s := &hookSink{answer: answer}
	if s.answer == nil {
		s.answer = func(http.Header, int) int { return http.StatusAccepted }
	}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.got = append(s.got, r.Header.Clone())
		n := len(s.got)
		s.mu.Unlock()
		st := s.answer(r.Header, n)
		if st == http.StatusAccepted {
			s.mu.Lock()
			s.outstanding++
			s.maxOut = max(s.maxOut, s.outstanding)
			s.mu.Unlock()
		}
		w.WriteHeader(st)
	}))
	tb.Cleanup(s.Close)
	return s
}

func (s *hookSink) deliveries() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.got...)
}

func (s *hookSink) acked() {
	s.mu.Lock()
	s.outstanding--
	s.mu.Unlock()
}

// newDeferRig opens a broker in dir (a new one when empty) with its API
// and dispatcher; stop closes them, as a restart would.
func newDeferRig(tb testing.TB, dir string, hook *hookSink) *deferRig {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	cfg := broker.DefaultConfig(dir)
	cfg.SegmentSize = 8 << 20
	cfg.AutoCreateTopics = true
	cfg.OffsetInterval = 50 * time.Millisecond
	b, err := broker.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	key, err := push.LoadOrCreateBusKey(filepath.Join(dir, "signing.key"))
	if err != nil {
		tb.Fatal(err)
	}
	client := push.NewClient(push.ClientConfig{AllowPrivate: true})
	d := push.NewDispatcher(push.DispatcherConfig{Broker: b, Client: client, Key: key, Grace: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = d.Run(ctx)
	}()
	api := httptest.NewServer(mustNew(tb, Config{Broker: b}))
	var once sync.Once
	r := &deferRig{b: b, api: api, hook: hook, dir: dir}
	r.stop = func() {
		once.Do(func() {
			api.Close()
			cancel()
			<-done
			client.Close()
			b.Close()
		})
	}
	tb.Cleanup(r.stop)
	return r
}

func (r *deferRig) subscribe(tb testing.TB, body string) string {
	tb.Helper()
	resp, data := do(tb, "PUT", r.api.URL+"/v1/topics/jobs", ackJSON, strings.NewReader(`{"queues":4}`))
	if resp.StatusCode >= 300 {
		tb.Fatalf("put topic: %d %s", resp.StatusCode, data)
	}
	resp, data = do(tb, "POST", r.api.URL+"/v1/subscriptions", ackJSON, strings.NewReader(body))
	if resp.StatusCode != http.StatusCreated {
		tb.Fatalf("create subscription: %d %s", resp.StatusCode, data)
	}
	var sub struct {
		ID         string `json:"id"`
		AckTimeout string `json:"ack_timeout"`
	}
	if err := json.Unmarshal(data, &sub); err != nil {
		tb.Fatalf("subscription answer %s: %v", data, err)
	}
	return sub.ID
}

func (r *deferRig) publish(tb testing.TB, body string) string {
	tb.Helper()
	resp, data := do(tb, "POST", r.api.URL+"/v1/topics/jobs/messages", map[string]string{"Content-Type": "text/plain"}, strings.NewReader(body))
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		tb.Fatalf("publish: %d %s", resp.StatusCode, data)
	}
	var res struct {
		MsgID string `json:"msg_id"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		tb.Fatalf("publish answer %s: %v", data, err)
	}
	return res.MsgID
}

// ack posts an acknowledgement and returns the status and the body.
func (r *deferRig) ack(tb testing.TB, token, body string) (int, map[string]any) {
	tb.Helper()
	resp, data := do(tb, "POST", r.api.URL+"/v1/acks/"+token, ackJSON, strings.NewReader(body))
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		tb.Fatalf("ack answer %d %s: %v", resp.StatusCode, data, err)
	}
	return resp.StatusCode, out
}

// trace returns a message's attempts as outcome/attempt strings.
func (r *deferRig) trace(tb testing.TB, msgID string) []string {
	tb.Helper()
	resp, data := do(tb, "GET", r.api.URL+"/v1/messages/"+msgID+"/trace", nil, nil)
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("trace: %d %s", resp.StatusCode, data)
	}
	var tr struct {
		Attempts []struct {
			Attempt int    `json:"attempt"`
			Outcome string `json:"outcome"`
			Status  int    `json:"status"`
		} `json:"attempts"`
	}
	if err := json.Unmarshal(data, &tr); err != nil {
		tb.Fatalf("trace %s: %v", data, err)
	}
	var out []string
	for _, a := range tr.Attempts {
		out = append(out, fmt.Sprintf("%s/%d", a.Outcome, a.Attempt))
	}
	return out
}

func (r *deferRig) deferredInFlight(tb testing.TB, group string) int {
	tb.Helper()
	n, err := r.b.DeferredInFlight(context.Background(), group, "jobs")
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// waitDeferred waits for cond, up to d, checking every few milliseconds.
func waitDeferred(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDeferredAckDone(t *testing.T) {
	hook := newHookSink(t, nil)
	r := newDeferRig(t, "", hook)
	r.subscribe(t, `{"group":"enc","topic":"jobs","url":"`+hook.URL+`","ack_timeout":"1m"}`)
	id := r.publish(t, "encode me")
	waitDeferred(t, 10*time.Second, "the delivery", func() bool { return len(hook.deliveries()) == 1 })
	token := hook.deliveries()[0].Get(push.HeaderAckToken)
	if token == "" {
		t.Fatalf("the delivery carries no %s: %v", push.HeaderAckToken, hook.deliveries()[0])
	}
	waitDeferred(t, 10*time.Second, "the delivery held", func() bool { return r.deferredInFlight(t, "enc") == 1 })

	st, out := r.ack(t, token, `{"status":"done"}`)
	if st != http.StatusOK || out["status"] != "done" || out["msg_id"] != id || out["attempt"] != float64(1) {
		t.Fatalf("ack: %d %v", st, out)
	}
	if n := r.deferredInFlight(t, "enc"); n != 0 {
		t.Fatalf("%d deliveries still held after the ack", n)
	}
	// A token settles once.
	for _, body := range []string{`{"status":"done"}`, `{"status":"retry"}`} {
		st, out = r.ack(t, token, body)
		if st != http.StatusConflict || out["code"] != "ack_token_used" {
			t.Fatalf("second ack %s: %d %v", body, st, out)
		}
	}
	waitDeferred(t, 10*time.Second, "the trace", func() bool {
		return strings.Join(r.trace(t, id), " ") == "deferred/1 acked/1"
	})
}

func TestDeferredAckRetryWithDelay(t *testing.T) {
	hook := newHookSink(t, func(h http.Header, n int) int {
		if n == 1 {
			return http.StatusAccepted
		}
		return http.StatusOK
	})
	r := newDeferRig(t, "", hook)
	r.subscribe(t, `{"group":"enc","topic":"jobs","url":"`+hook.URL+`"}`)
	id := r.publish(t, "encode me")
	waitDeferred(t, 10*time.Second, "the delivery", func() bool { return len(hook.deliveries()) == 1 })
	waitDeferred(t, 10*time.Second, "the delivery held", func() bool { return r.deferredInFlight(t, "enc") == 1 })
	token := hook.deliveries()[0].Get(push.HeaderAckToken)
	asked := time.Now()
	st, out := r.ack(t, token, `{"status":"retry","delay":"300ms"}`)
	if st != http.StatusOK || out["status"] != "retry" || out["retry_at"] == nil {
		t.Fatalf("retry: %d %v", st, out)
	}
	waitDeferred(t, 10*time.Second, "the retry", func() bool { return len(hook.deliveries()) == 2 })
	h := hook.deliveries()[1]
	if h.Get("Postbus-Attempt") != "2" || h.Get("Postbus-Message-Id") != id {
		t.Fatalf("retry delivery: %v", h)
	}
	if waited := time.Since(asked); waited < 300*time.Millisecond {
		t.Fatalf("retried after %s, before the 300ms asked", waited)
	}
	if h.Get(push.HeaderAckToken) == token {
		t.Fatalf("the retry carries the first attempt's token")
	}
	waitDeferred(t, 10*time.Second, "the trace", func() bool {
		return strings.Join(r.trace(t, id), " ") == "deferred/1 nacked/1 delivered/2"
	})
}

func TestDeferredAckTimeout(t *testing.T) {
	hook := newHookSink(t, func(h http.Header, n int) int {
		if n == 1 {
			return http.StatusAccepted
		}
		return http.StatusNoContent
	})
	r := newDeferRig(t, "", hook)
	r.subscribe(t, `{"group":"enc","topic":"jobs","url":"`+hook.URL+`","ack_timeout":"1s"}`)
	id := r.publish(t, "encode me")
	waitDeferred(t, 10*time.Second, "the delivery", func() bool { return len(hook.deliveries()) == 1 })
	first := time.Now()
	token := hook.deliveries()[0].Get(push.HeaderAckToken)
	waitDeferred(t, 10*time.Second, "the attempt after the timeout", func() bool { return len(hook.deliveries()) == 2 })
	if waited := time.Since(first); waited < 900*time.Millisecond {
		t.Fatalf("went out again after %s, before its ack_timeout of 1s", waited)
	}
	if got := hook.deliveries()[1].Get("Postbus-Attempt"); got != "2" {
		t.Fatalf("the attempt after the timeout is %s, want 2", got)
	}
	st, out := r.ack(t, token, `{"status":"done"}`)
	if st != http.StatusGone || out["code"] != "ack_token_expired" {
		t.Fatalf("ack after the timeout: %d %v", st, out)
	}
	waitDeferred(t, 10*time.Second, "the trace", func() bool {
		return strings.Join(r.trace(t, id), " ") == "deferred/1 expired/1 delivered/2"
	})
}

func TestDeferredAckTimeoutDeadLetters(t *testing.T) {
	hook := newHookSink(t, nil) // 202 for ever, never acknowledged
	r := newDeferRig(t, "", hook)
	r.subscribe(t, `{"group":"enc","topic":"jobs","url":"`+hook.URL+`","ack_timeout":"1s","max_retries":1,"retry_delays":["10ms"]}`)
	id := r.publish(t, "encode me")
	waitDeferred(t, 15*time.Second, "the dead letter", func() bool {
		g, err := r.b.Group(context.Background(), "enc")
		return err == nil && g.DeadLetters == 1
	})
	if n := len(hook.deliveries()); n != 2 {
		t.Fatalf("%d deliveries, want 2 (max_retries 1)", n)
	}
	waitDeferred(t, 10*time.Second, "the trace", func() bool {
		return strings.Join(r.trace(t, id), " ") == "deferred/1 expired/1 deferred/2 expired/2 dead/2"
	})
}

func TestAckTokenRefused(t *testing.T) {
	hook := newHookSink(t, nil)
	r := newDeferRig(t, "", hook)
	r.subscribe(t, `{"group":"enc","topic":"jobs","url":"`+hook.URL+`"}`)
	r.publish(t, "encode me")
	waitDeferred(t, 10*time.Second, "the delivery", func() bool { return len(hook.deliveries()) == 1 })
	token := hook.deliveries()[0].Get(push.HeaderAckToken)
	waitDeferred(t, 10*time.Second, "the delivery held", func() bool { return r.deferredInFlight(t, "enc") == 1 })
	flip := []byte(token)
	flip[len(flip)/2] ^= 1
	for _, tc := range []struct {
		name, token, body string
		status            int
		code              string
	}{
		{"garbage", "xyz", `{"status":"done"}`, 400, "invalid_ack_token"},
		{"a flipped bit", string(flip), `{"status":"done"}`, 400, "invalid_ack_token"},
		{"a broker name before it", "other~" + token, `{"status":"done"}`, 400, "invalid_ack_token"},
		{"no status", token, `{}`, 400, "invalid_ack"},
		{"an unknown status", token, `{"status":"ok"}`, 400, "invalid_ack"},
		{"a delay with done", token, `{"status":"done","delay":"1s"}`, 400, "invalid_ack"},
		{"a bad delay", token, `{"status":"retry","delay":"soon"}`, 400, "invalid_ack"},
		{"a negative delay", token, `{"status":"retry","delay":"-1s"}`, 400, "invalid_ack"},
		{"an unknown field", token, `{"status":"done","x":1}`, 400, "invalid_json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, out := r.ack(t, tc.token, tc.body)
			if st != tc.status || out["code"] != tc.code {
				t.Fatalf("got %d %v, want %d %s", st, out, tc.status, tc.code)
			}
		})
	}
	// None of them settled anything: the real one still does.
	if n := r.deferredInFlight(t, "enc"); n != 1 {
		t.Fatalf("%d deliveries held after refused acks, want 1", n)
	}
	if st, out := r.ack(t, token, `{"status":"done"}`); st != http.StatusOK {
		t.Fatalf("the real token after refused acks: %d %v", st, out)
	}
}

func TestAckTokenOfDeletedSubscription(t *testing.T) {
	hook := newHookSink(t, nil)
	r := newDeferRig(t, "", hook)
	id := r.subscribe(t, `{"group":"enc","topic":"jobs","url":"`+hook.URL+`"}`)
	r.publish(t, "encode me")
	waitDeferred(t, 10*time.Second, "the delivery", func() bool { return len(hook.deliveries()) == 1 })
	token := hook.deliveries()[0].Get(push.HeaderAckToken)
	waitDeferred(t, 10*time.Second, "the delivery held", func() bool { return r.deferredInFlight(t, "enc") == 1 })
	if resp, data := do(t, "DELETE", r.api.URL+"/v1/subscriptions/"+id, nil, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d %s", resp.StatusCode, data)
	}
	st, out := r.ack(t, token, `{"status":"done"}`)
	if st != http.StatusGone || out["code"] != "ack_token_expired" {
		t.Fatalf("ack of a deleted subscription's delivery: %d %v", st, out)
	}
}

// TestDeferredCountsAgainstMaxInFlight: deliveries held for their
// acknowledgement fill max_in_flight as open ones do, also after a
// restart, which must learn of them from the store.
func TestDeferredCountsAgainstMaxInFlight(t *testing.T) {
	hook := newHookSink(t, nil)
	r := newDeferRig(t, "", hook)
	r.subscribe(t, `{"group":"enc","topic":"jobs","url":"`+hook.URL+`","max_in_flight":2}`)
	for i := range 5 {
		r.publish(t, fmt.Sprintf("job %d", i))
	}
	waitDeferred(t, 10*time.Second, "two held", func() bool { return r.deferredInFlight(t, "enc") == 2 })

	// A restart: the new loop counts what the old process held.
	dir := r.dir
	r.stop()
	r = newDeferRig(t, dir, hook)

	acked := 0
	for acked < 5 {
		if n := len(hook.deliveries()); n > acked+2 {
			t.Fatalf("%d deliveries with %d acknowledged: more than max_in_flight 2 out", n, acked)
		}
		waitDeferred(t, 10*time.Second, "the next delivery", func() bool { return len(hook.deliveries()) > acked })
		token := hook.deliveries()[acked].Get(push.HeaderAckToken)
		hook.acked() // before the ack frees its place: the next may come at once
		st, out := r.ack(t, token, `{"status":"done"}`)
		if st != http.StatusOK {
			t.Fatalf("ack %d: %d %v", acked, st, out)
		}
		acked++
	}
	hook.mu.Lock()
	maxOut := hook.maxOut
	hook.mu.Unlock()
	if maxOut != 2 {
		t.Fatalf("at most %d deliveries out at once, want max_in_flight 2", maxOut)
	}
	if n := len(hook.deliveries()); n != 5 {
		t.Fatalf("%d deliveries of 5 messages", n)
	}
}

// ackTokenExchanges are the refusals of POST /v1/acks/{token} for the
// recorded contract traffic (the rest is exercised above, with a push
// dispatcher running).
func ackTokenExchanges() []exchange {
	jsonCT := map[string]string{"Content-Type": "application/json"}
	return []exchange{
		{name: "ack token/forged", method: "POST", path: "/v1/acks/AgQAASRbjzKtjKThAAADZW5jBGpvYnMWZ05VM3JKcjFWV0hiaU1ZVjlGWndaY2hkF34zapwIrhQQu6uqAqU",
			header: jsonCT, body: `{"status":"done"}`, status: 400, code: broker.CodeInvalidAckToken},
		{name: "ack token/bad status", method: "POST", path: "/v1/acks/x", header: jsonCT, body: `{"status":"ok"}`,
			status: 400, code: broker.CodeInvalidAck, invalid: true},
	}
}

// runDispatcher runs a push dispatcher on b until the test ends.
func runDispatcher(tb testing.TB, b *broker.Broker) {
	tb.Helper()
	key, err := push.LoadOrCreateBusKey(filepath.Join(tb.TempDir(), "signing.key"))
	if err != nil {
		tb.Fatal(err)
	}
	client := push.NewClient(push.ClientConfig{AllowPrivate: true})
	d := push.NewDispatcher(push.DispatcherConfig{Broker: b, Client: client, Key: key, Grace: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = d.Run(ctx)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
		client.Close()
	})
}

// TestClusterDeferredAck: a subscription's ack_timeout reaches every
// holder's copy (subsync), and a token acknowledged through any broker is
// settled by the one that issued it.
func TestClusterDeferredAck(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	holders := []string{brokerA, brokerB}
	tc.placeTopic(t, brokerC, "jobs", `{"queues":2,"brokers":["broker-a","broker-b"]}`, holders...)
	hook := newHookSink(t, nil)
	a := tc.via(t, brokerC, "POST", "/v1/subscriptions", ackJSON,
		`{"group":"enc","topic":"jobs","url":"`+hook.URL+`","ack_timeout":"90s"}`)
	created := decodeAs[subscriptionJSON](t, a)
	if a.status != http.StatusCreated || created.AckTimeout != "1m30s" {
		t.Fatalf("create: %s", a)
	}
	tc.via(t, brokerC, "PATCH", "/v1/subscriptions/"+created.ID, ackJSON, `{"ack_timeout":"2m"}`).want(t, http.StatusOK, a.header.Get(hdrBroker))
	for _, name := range holders {
		got := decodeAs[subscriptionJSON](t, tc.at(t, name, "GET", "/v1/subscriptions/"+created.ID, ""))
		if got.AckTimeout != "2m0s" {
			t.Fatalf("the copy on %s has ack_timeout %q, want 2m0s", name, got.AckTimeout)
		}
		sub, err := tc.nodes[name].b.Subscription(context.Background(), created.ID)
		if err != nil || sub.AckTimeout != 2*time.Minute {
			t.Fatalf("the broker %s holds ack_timeout %s (%v), want 2m", name, sub.AckTimeout, err)
		}
	}
	for _, name := range holders {
		runDispatcher(t, tc.nodes[name].b)
	}
	// Published until both holders delivered one.
	issuers := map[string]string{} // broker -> a token it issued
	for i := 0; len(issuers) < 2; i++ {
		if i == 40 {
			t.Fatalf("40 messages delivered by %v only", issuers)
		}
		tc.publishVia(t, brokerC, "jobs", nil, fmt.Sprintf("job %d", i))
		waitDeferred(t, 10*time.Second, "the delivery", func() bool { return len(hook.deliveries()) == i+1 })
		tok := hook.deliveries()[i].Get(push.HeaderAckToken)
		name, _, ok := strings.Cut(tok, "~")
		if !ok || !slices.Contains(holders, name) {
			t.Fatalf("token %q names no holder", tok)
		}
		if _, seen := issuers[name]; !seen {
			issuers[name] = tok
		} else {
			// Acknowledged where it was issued.
			tc.via(t, name, "POST", "/v1/acks/"+tok, ackJSON, `{"status":"done"}`).want(t, http.StatusOK, name)
		}
	}
	for issuer, tok := range issuers {
		for _, via := range []string{brokerC, brokerA, brokerB} {
			if via == issuer {
				continue
			}
			// Forwarded to its issuer, which settles it once.
			a := tc.via(t, via, "POST", "/v1/acks/"+tok, ackJSON, `{"status":"done"}`)
			if via == brokerC {
				a.want(t, http.StatusOK, issuer)
			} else {
				a.wantProblem(t, http.StatusConflict, broker.CodeAckTokenUsed, issuer)
			}
		}
	}
	// A name no broker has is no token of this bus.
	_, rest, _ := strings.Cut(issuers[brokerA], "~")
	tc.via(t, brokerC, "POST", "/v1/acks/broker-zz~"+rest, ackJSON, `{"status":"done"}`).
		wantProblem(t, http.StatusBadRequest, broker.CodeInvalidAckToken, brokerC)
	// Under another holder's name, the MAC (which covers the name) fails there.
	tc.via(t, brokerC, "POST", "/v1/acks/"+brokerB+"~"+rest, ackJSON, `{"status":"done"}`).
		wantProblem(t, http.StatusBadRequest, broker.CodeInvalidAckToken, brokerB)
}

// TestAckBeforeTheHoldIsStored: an endpoint that acknowledges at once,
// even before its 202 reached the bus, is answered for the delivery (the
// acknowledgement waits for the hold) rather than told the token names
// nothing (410 before the wait).
func TestAckBeforeTheHoldIsStored(t *testing.T) {
	var r *deferRig
	results := make(chan string, 1)
	hook := newHookSink(t, func(h http.Header, n int) int {
		token := h.Get(push.HeaderAckToken)
		go func() {
			resp, data := do(t, "POST", r.api.URL+"/v1/acks/"+token, ackJSON, strings.NewReader(`{"status":"done"}`))
			results <- fmt.Sprintf("%d %s", resp.StatusCode, data)
		}()
		return http.StatusAccepted
	})
	r = newDeferRig(t, "", hook)
	r.subscribe(t, `{"group":"enc","topic":"jobs","url":"`+hook.URL+`"}`)
	r.publish(t, "quick job")
	select {
	case got := <-results:
		if !strings.HasPrefix(got, "200 ") {
			t.Fatalf("an ack sent with the 202: %s", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no answer to the ack within 20s")
	}
	if n := r.deferredInFlight(t, "enc"); n != 0 {
		t.Fatalf("%d held after the ack", n)
	}
}

// TestOrderedDeliveriesAreNotDeferred: an ordered queue waits on its one
// delivery, which carries no ack token; a 202 there is a 2xx.
func TestOrderedDeliveriesAreNotDeferred(t *testing.T) {
	hook := newHookSink(t, nil)
	r := newDeferRig(t, "", hook)
	r.subscribe(t, `{"group":"ord","topic":"jobs","url":"`+hook.URL+`","ordered":true}`)
	id := r.publish(t, "in order")
	waitDeferred(t, 10*time.Second, "the delivery", func() bool { return len(hook.deliveries()) == 1 })
	if tok := hook.deliveries()[0].Get(push.HeaderAckToken); tok != "" {
		t.Fatalf("an ordered delivery carries an ack token %q", tok)
	}
	waitDeferred(t, 10*time.Second, "the trace", func() bool { return strings.Join(r.trace(t, id), " ") == "delivered/1" })
	g, err := r.b.Group(context.Background(), "ord")
	if err != nil || g.Lag != 0 {
		t.Fatalf("group after a 202 on an ordered subscription: %+v %v", g, err)
	}
}
