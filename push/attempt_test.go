package push

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func newTestClient(tb testing.TB, cfg ClientConfig) *Client {
	tb.Helper()
	c := NewClient(cfg)
	tb.Cleanup(func() { c.Close() })
	return c
}

// testKey is a bus key from a fixed seed, so failures reproduce.
func testKey(tb testing.TB, seed byte) *BusKey {
	tb.Helper()
	k, err := NewBusKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

func testDelivery(url string) Delivery {
	return Delivery{
		URL:          url,
		Body:         []byte(`{"order":1001}`),
		ContentType:  "application/json",
		MsgID:        "msg_0001",
		Topic:        "orders",
		Tag:          "created",
		Keys:         []string{"order-1001", "customer-7"},
		QueueID:      3,
		QueueOffset:  42,
		Attempt:      2,
		Subscription: "sub_1",
		Properties:   map[string]string{"Region": "eu", "Trace-Id": "t-9"},
		Secrets:      []string{testSecret},
		Timeout:      5 * time.Second,
	}
}

func TestDeliverHeaders(t *testing.T) {
	type got struct {
		method string
		header http.Header
		body   []byte
	}
	ch := make(chan got, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		ch <- got{r.Method, r.Header.Clone(), b}
	}))
	defer srv.Close()
	c := newTestClient(t, ClientConfig{AllowPrivate: true, UserAgent: "postbus/1.2.3"})
	key := testKey(t, 1)
	d := testDelivery(srv.URL + "/hook?token=abc")
	d.Secrets = []string{NewSecret(), testSecret}
	now := time.Unix(1_800_000_000, 0)

	res := c.Deliver(context.Background(), d, key, now)
	if res.Outcome != Delivered || res.Status != 200 || res.Err != "" {
		t.Fatalf("Deliver = %+v, want Delivered 200", res)
	}
	g := <-ch
	if g.method != http.MethodPost {
		t.Errorf("method %s, want POST", g.method)
	}
	if !bytes.Equal(g.body, d.Body) {
		t.Errorf("body %q, want %q", g.body, d.Body)
	}
	want := map[string]string{
		"Content-Type":          "application/json",
		"User-Agent":            "postbus/1.2.3",
		"Postbus-Message-Id":    "msg_0001",
		"Postbus-Topic":         "orders",
		"Postbus-Tag":           "created",
		"Postbus-Keys":          "order-1001,customer-7",
		"Postbus-Queue-Id":      "3",
		"Postbus-Queue-Offset":  "42",
		"Postbus-Attempt":       "2",
		"Postbus-Subscription":  "sub_1",
		"Postbus-Prop-Region":   "eu",
		"Postbus-Prop-Trace-Id": "t-9",
		"Webhook-Id":            "msg_0001",
		"Webhook-Timestamp":     "1800000000",
	}
	for k, v := range want {
		if g.header.Get(k) != v || len(g.header.Values(k)) != 1 {
			t.Errorf("header %s = %q, want %q", k, g.header.Values(k), v)
		}
	}
	sig := g.header.Get("webhook-signature")
	entries, err := ParseSignatureHeader(sig)
	if err != nil {
		t.Fatal(err)
	}
	var versions []string
	for _, e := range entries {
		versions = append(versions, e.Version)
	}
	if strings.Join(versions, " ") != "v1 v1 v1a" {
		t.Errorf("webhook-signature versions %v, want v1 v1 v1a", versions)
	}
	for _, secret := range append(d.Secrets, key.PublicKeyStandardWebhooks()) {
		if err := VerifyStandardWebhook(secret, g.header, g.body, time.Minute, now.Add(10*time.Second)); err != nil {
			t.Errorf("verify with %.10s: %v", secret, err)
		}
	}
	claims, err := VerifyJWT(key.JWKS(), g.header.Get("Postbus-Signature"), g.body, now.Add(time.Second))
	if err != nil {
		t.Fatalf("VerifyJWT: %v", err)
	}
	if claims.Subject != "sub_1" || claims.ID != "msg_0001" || claims.Issuer != "postbus" || !claims.IssuedAt.Equal(now) {
		t.Errorf("claims %+v", claims)
	}
}

func TestDeliverWithoutKeyOrSecrets(t *testing.T) {
	ch := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { ch <- r.Header.Clone() }))
	defer srv.Close()
	c := newTestClient(t, ClientConfig{AllowPrivate: true})
	d := testDelivery(srv.URL)
	d.Secrets, d.Tag, d.Keys, d.ContentType = nil, "", nil, ""
	if res := c.Deliver(context.Background(), d, nil, time.Now()); res.Outcome != Delivered {
		t.Fatalf("%+v", res)
	}
	h := <-ch
	for _, k := range []string{"webhook-signature", "Postbus-Signature", "Postbus-Tag", "Postbus-Keys"} {
		if v, ok := h[http.CanonicalHeaderKey(k)]; ok {
			t.Errorf("header %s = %q, want none", k, v)
		}
	}
	if ct := h.Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("Content-Type %q, want application/octet-stream", ct)
	}
	if h.Get("webhook-id") == "" || h.Get("User-Agent") != DefaultUserAgent {
		t.Errorf("headers %v", h)
	}
}

func TestDeliverOutcomes(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	// redirectTarget must never be reached: redirects are not followed.
	redirectTarget := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {})

	// hang holds a request until the client hangs up or the subtest ends.
	// The body is read first: only then does the server watch the
	// connection, and so cancel the request's context on a hang-up.
	hang := func(t *testing.T, w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-t.Context().Done():
		}
	}
	hijack := func(tb testing.TB, w http.ResponseWriter, write string) {
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			tb.Error(err)
			return
		}
		buf.WriteString(write)
		buf.Flush()
		conn.Close()
	}

	tests := []struct {
		name       string
		handler    func(t *testing.T) http.HandlerFunc
		timeout    time.Duration
		outcome    Outcome
		status     int
		err        string // substring
		retryAfter [2]time.Duration
		response   string
	}{
		{name: "200", outcome: Delivered, status: 200, response: "thanks",
			handler: func(*testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "thanks") }
			}},
		{name: "204", outcome: Delivered, status: 204,
			handler: func(*testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }
			}},
		{name: "500", outcome: Retry, status: 500, err: "status 500", response: "boom\n",
			handler: func(*testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) }
			}},
		{name: "410", outcome: Gone, status: 410, err: "status 410",
			handler: func(*testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Retry-After", "60") // ignored: the subscription goes
					w.WriteHeader(410)
				}
			}},
		{name: "302 not followed", outcome: Retry, status: 302, err: "redirect 302 not followed",
			handler: func(*testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					http.Redirect(w, r, redirectTarget.URL+"/elsewhere", http.StatusFound)
				}
			}},
		{name: "307 not followed", outcome: Retry, status: 307, err: "redirect 307 not followed",
			handler: func(*testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					http.Redirect(w, r, redirectTarget.URL+"/elsewhere", http.StatusTemporaryRedirect)
				}
			}},
		{name: "429 retry-after seconds", outcome: Retry, status: 429, err: "status 429",
			retryAfter: [2]time.Duration{120 * time.Second, 120 * time.Second},
			handler: func(*testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Retry-After", "120")
					w.WriteHeader(429)
				}
			}},
		{name: "429 retry-after http-date", outcome: Retry, status: 429, err: "status 429",
			// The date is taken against now plus the attempt's latency.
			retryAfter: [2]time.Duration{85 * time.Second, 90 * time.Second},
			handler: func(*testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Retry-After", now.Add(90*time.Second).UTC().Format(http.TimeFormat))
					w.WriteHeader(429)
				}
			}},
		{name: "503 retry-after capped", outcome: Retry, status: 503, err: "status 503",
			retryAfter: [2]time.Duration{24 * time.Hour, 24 * time.Hour},
			handler: func(*testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Retry-After", "999999999999999999999999")
					w.WriteHeader(503)
				}
			}},
		{name: "hangs past the timeout", outcome: Retry, err: "timeout after 200ms", timeout: 200 * time.Millisecond,
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { hang(t, w, r) }
			}},
		{name: "body trickles past the timeout", outcome: Retry, status: 200, err: "response body: timeout after 200ms", timeout: 200 * time.Millisecond, response: "partial",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, "partial")
					w.(http.Flusher).Flush()
					hang(t, w, r)
				}
			}},
		{name: "closed mid-response", outcome: Retry, status: 200, err: "connection closed mid-response", response: "0123456789",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					hijack(t, w, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
				}
			}},
		{name: "closed before responding", outcome: Retry, err: "connection closed without a response",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { hijack(t, w, "") }
			}},
	}
	c := newTestClient(t, ClientConfig{AllowPrivate: true})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler(t))
			t.Cleanup(srv.Close) // after t.Context is done, which releases hanging handlers
			d := testDelivery(srv.URL)
			d.Timeout = tt.timeout
			start := time.Now()
			res := c.Deliver(context.Background(), d, testKey(t, 1), now)
			if res.Outcome != tt.outcome || res.Status != tt.status || !strings.Contains(res.Err, tt.err) {
				t.Fatalf("Deliver = %+v, want %v status %d err containing %q", res, tt.outcome, tt.status, tt.err)
			}
			if tt.outcome == Delivered && res.Err != "" {
				t.Errorf("Err %q on success", res.Err)
			}
			if res.RetryAfter < tt.retryAfter[0] || res.RetryAfter > tt.retryAfter[1] {
				t.Errorf("RetryAfter %v, want %v..%v", res.RetryAfter, tt.retryAfter[0], tt.retryAfter[1])
			}
			if string(res.Response) != tt.response {
				t.Errorf("Response %q, want %q", res.Response, tt.response)
			}
			if res.Latency <= 0 || res.Latency > time.Since(start) {
				t.Errorf("Latency %v outside (0, %v]", res.Latency, time.Since(start))
			}
			if tt.timeout > 0 && (res.Latency < tt.timeout || res.Latency > tt.timeout+3*time.Second) {
				t.Errorf("Latency %v, want about the %v timeout", res.Latency, tt.timeout)
			}
		})
	}
	if n := redirectTarget.requests.Load() + redirectTarget.conns.Load(); n != 0 {
		t.Fatalf("the redirect target saw %d requests and connections; a redirect was followed", n)
	}
}

func TestDeliverRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := newTestClient(t, ClientConfig{AllowPrivate: true})
	res := c.Deliver(context.Background(), testDelivery("http://"+addr+"/hook"), nil, time.Now())
	if res.Outcome != Retry || res.Status != 0 || res.Err != "connection refused" {
		t.Fatalf("Deliver = %+v, want Retry with connection refused", res)
	}
}

func TestDeliverErrorHidesQuery(t *testing.T) {
	c := newTestClient(t, ClientConfig{AllowPrivate: true})
	// .invalid never resolves (RFC 2606).
	res := c.Deliver(context.Background(), testDelivery("http://no-such-host.invalid/hook?token=s3cret"), nil, time.Now())
	if res.Outcome != Retry || res.Err == "" || strings.Contains(res.Err, "s3cret") {
		t.Fatalf("Deliver = %+v, want Retry with an error that does not show the query", res)
	}
}

func TestDeliverCanceled(t *testing.T) {
	// The request never gets to the server: the context is canceled first.
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {})
	c := newTestClient(t, ClientConfig{AllowPrivate: true})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res := c.Deliver(ctx, testDelivery(srv.URL), nil, time.Now())
	if res.Outcome != Retry || !strings.HasPrefix(res.Err, "canceled") {
		t.Fatalf("Deliver = %+v, want Retry canceled", res)
	}
}

func TestDeliverBadInput(t *testing.T) {
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {})
	c := newTestClient(t, ClientConfig{AllowPrivate: true})
	tests := []struct {
		name string
		edit func(*Delivery)
		err  string
	}{
		{"bad secret", func(d *Delivery) { d.Secrets = []string{"whsec_short"} }, "sign: secret 0"},
		{"bad url", func(d *Delivery) { d.URL = "ftp://example.com/" }, "invalid webhook url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testDelivery(srv.URL)
			tt.edit(&d)
			res := c.Deliver(context.Background(), d, nil, time.Now())
			if res.Outcome != Retry || !strings.Contains(res.Err, tt.err) {
				t.Fatalf("Deliver = %+v, want Retry with %q", res, tt.err)
			}
		})
	}
	if n := srv.requests.Load(); n != 0 {
		t.Fatalf("server saw %d requests", n)
	}
}

// TestDeliverHugeBody: a subscriber answering 100 MiB gets only the cap
// read, and its connection closed early.
func TestDeliverHugeBody(t *testing.T) {
	const total = 100 << 20
	type served struct {
		written int64
		err     error
	}
	done := make(chan served, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(total))
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		var n int64
		var err error
		for n < total && err == nil {
			var m int
			m, err = w.Write(chunk)
			n += int64(m)
		}
		done <- served{n, err}
	}))
	defer srv.Close()
	c := newTestClient(t, ClientConfig{AllowPrivate: true, MaxResponseBytes: 64 << 10})
	res := c.Deliver(context.Background(), testDelivery(srv.URL), nil, time.Now())
	if res.Outcome != Delivered || len(res.Response) != responseKeep {
		t.Fatalf("Deliver = %v status %d err %q, %d response bytes; want Delivered with %d", res.Outcome, res.Status, res.Err, len(res.Response), responseKeep)
	}
	select {
	case s := <-done:
		if s.err == nil || s.written >= total {
			t.Fatalf("server wrote %d bytes (err %v): the client read the whole body", s.written, s.err)
		}
		t.Logf("server wrote %d bytes before the connection closed", s.written)
	case <-time.After(15 * time.Second):
		t.Fatal("the server is still writing 15s after the delivery: the connection was not closed")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"120", 120 * time.Second, true},
		{" 7 ", 7 * time.Second, true},
		{"86400", 24 * time.Hour, true},
		{"86401", 24 * time.Hour, true},
		{"99999999999999999999999999", 24 * time.Hour, true},
		{"Fri, 02 Jan 2026 15:05:05 GMT", time.Minute, true},    // RFC 1123
		{"Friday, 02-Jan-26 15:05:05 GMT", time.Minute, true},   // RFC 850
		{"Fri Jan  2 15:05:05 2026", time.Minute, true},         // ANSI C
		{"Thu, 01 Jan 2026 15:04:05 GMT", 0, true},              // past
		{"Sat, 01 Jan 2028 00:00:00 GMT", 24 * time.Hour, true}, // far future
		{"", 0, false},
		{"-5", 0, false},
		{"1.5", 0, false},
		{"12s", 0, false},
		{"soon", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := parseRetryAfter(tt.in, now)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("parseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Fri, 02 Jan 2026 15:05:05 GMT", "99999999999999999999", "-1", " 3 ", "Mon Jan  2 15:04:05 2006"} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseRetryAfter(s, now)
		if d < 0 || d > MaxRetryAfter {
			t.Fatalf("parseRetryAfter(%q) = %v outside [0, %v]", s, d, MaxRetryAfter)
		}
		if !ok && d != 0 {
			t.Fatalf("parseRetryAfter(%q) = %v with ok=false", s, d)
		}
	})
}

func BenchmarkDeliver(b *testing.B) {
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		served.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	key := testKey(b, 1)
	for _, size := range []int{256, 16 << 10} {
		for _, par := range []int{1, 16} {
			b.Run(fmt.Sprintf("body=%d/parallel=%d", size, par), func(b *testing.B) {
				c := newTestClient(b, ClientConfig{AllowPrivate: true})
				d := testDelivery(srv.URL)
				d.Body = bytes.Repeat([]byte("a"), size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.SetParallelism(par)
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if res := c.Deliver(context.Background(), d, key, time.Now()); res.Outcome != Delivered {
							b.Errorf("%+v", res)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
			})
		}
	}
}

// TestDeliverDeferred: a 202 to a delivery with an ack token is Deferred,
// with the token sent, echoed or not; one echoing another token is Retry;
// without a token (ordered subscriptions) a 202 is a 2xx like any other.
func TestDeliverDeferred(t *testing.T) {
	for _, tc := range []struct {
		name, token, echo string
		status            int
		want              Outcome
	}{
		{"202", "tok-1", "", 202, Deferred},
		{"202 echoing the token", "tok-1", "tok-1", 202, Deferred},
		{"202 echoing another token", "tok-1", "tok-2", 202, Retry},
		{"202 without a token", "", "", 202, Delivered},
		{"200 with a token", "tok-1", "", 200, Delivered},
		{"500 with a token", "tok-1", "", 500, Retry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sent string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				sent = r.Header.Get(HeaderAckToken)
				if tc.echo != "" {
					w.Header().Set(HeaderAckToken, tc.echo)
				}
				w.WriteHeader(tc.status)
			}))
			defer srv.Close()
			d := testDelivery(srv.URL)
			d.AckToken = tc.token
			res := newTestClient(t, ClientConfig{AllowPrivate: true}).Deliver(context.Background(), d, nil, time.Now())
			if res.Outcome != tc.want || sent != tc.token {
				t.Fatalf("outcome %s (%s), token sent %q; want %s, %q", res.Outcome, res.Err, sent, tc.want, tc.token)
			}
		})
	}
}
