package httpapi

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/namesrv"
)

// newDevServer is a broker with the name server's routes beside its own,
// as `postbus dev` serves them: every JSON route of openapi.yaml is there.
func newDevServer(tb testing.TB) *httptest.Server {
	tb.Helper()
	cfg := broker.DefaultConfig(tb.TempDir())
	cfg.SegmentSize = 8 << 20
	cfg.MaxMessageBytes = 1 << 20
	cfg.AutoCreateTopics = true
	b, err := broker.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(mustNew(tb, Config{Broker: b, NameServer: newContractRegistry()}))
	tb.Cleanup(func() {
		srv.Close()
		b.Close()
	})
	return srv
}

// codeOf is the code of a problem+json answer, or "" if it is none.
func codeOf(data []byte) string {
	var p problem
	if json.Unmarshal(data, &p) != nil {
		return ""
	}
	return string(p.Code)
}

// TestJSONTrailingDataRefused sends, to every route openapi.yaml says takes
// a JSON body, a valid body followed by a stray ']' or '}' (and a few other
// tails): each is invalid JSON and must be refused before anything is done.
// The routes come from the document, so a JSON route added later is
// covered without touching this test.
func TestJSONTrailingDataRefused(t *testing.T) {
	doc := loadContract(t)
	srv := newDevServer(t)
	hdr := map[string]string{"Content-Type": "application/json"}
	// A subscription for the routes that look one up before the body.
	resp, data := do(t, "POST", srv.URL+"/v1/subscriptions", hdr, strings.NewReader(`{"group":"g","topic":"t"}`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create subscription: %d %s", resp.StatusCode, data)
	}
	var sub struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(data, &sub); err != nil || sub.ID == "" {
		t.Fatalf("subscription answer %s: %v", data, err)
	}
	params := strings.NewReplacer("{topic}", "t", "{group}", "g", "{id}", sub.ID, "{name}", "b1")

	var routes []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			// A single publish takes any bytes as its body, JSON or not.
			if op.RequestBody == nil || op.RequestBody.Value.Content.Get("application/json") == nil || op.OperationID == "publish" {
				continue
			}
			routes = append(routes, method+" "+path)
		}
	}
	slices.Sort(routes)
	if len(routes) < 10 {
		t.Fatalf("openapi.yaml lists only %d routes with a JSON body: %v", len(routes), routes)
	}
	for _, route := range routes {
		method, path, _ := strings.Cut(route, " ")
		body := "{}"
		if strings.HasSuffix(path, "/batch") {
			body = `[{"body":"x"}]`
		}
		for _, tail := range []string{"]", "}", "]]]}", " \n]", "x"} {
			t.Run(route+"/"+tail, func(t *testing.T) {
				resp, data := do(t, method, srv.URL+params.Replace(path), hdr, strings.NewReader(body+tail))
				if resp.StatusCode != http.StatusBadRequest || codeOf(data) != string(codeInvalidJSON) {
					t.Fatalf("%s with body %q: %d %s, want 400 invalid_json", route, body+tail, resp.StatusCode, data)
				}
			})
		}
	}
	// Whitespace after the value is fine.
	resp, data = do(t, "PUT", srv.URL+"/v1/topics/fresh", hdr, strings.NewReader("{\"queues\":2} \r\n\t"))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT with trailing whitespace: %d %s", resp.StatusCode, data)
	}
}

// newEdgeServer serves a broker whose messages may be up to maxMessage
// bytes, through a Server with cfg (Broker set here).
func newEdgeServer(tb testing.TB, maxMessage int, cfg Config) (*httptest.Server, *Server) {
	tb.Helper()
	bc := broker.DefaultConfig(tb.TempDir())
	bc.SegmentSize = 16 << 20
	bc.MaxMessageBytes = maxMessage
	bc.AutoCreateTopics = true
	b, err := broker.Open(context.Background(), bc)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Broker = b
	s := mustNew(tb, cfg)
	srv := httptest.NewServer(s)
	tb.Cleanup(func() {
		srv.Close()
		b.Close()
	})
	return srv, s
}

// waitUntil polls cond until it holds, failing the test after a deadline
// with what last was seen.
func waitUntil(tb testing.TB, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("waited 20s for %s; last seen: %s", what, seen)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stalledRequest opens a connection and sends a request's head and the
// first part of its body, and no more: the server waits for the rest.
// The connection closes with the test.
func stalledRequest(tb testing.TB, srv *httptest.Server, path string, contentLength int, sent []byte) net.Conn {
	tb.Helper()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, contentLength)
	if _, err := c.Write(append([]byte(head), sent...)); err != nil {
		tb.Fatal(err)
	}
	return c
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestBodyMemoryFollowsArrivals is the attack of issue 19 item 11: 40
// connections announce a 4 MiB publish and 40 more a 7 MiB batch, each
// sends one byte and stalls. The server used to allocate each announced
// length up front (440 MiB); now a body's buffer grows with what arrives,
// so the 80 stalled requests hold a chunk each. Both the server's own
// count of reserved bytes and the process heap are measured.
func TestBodyMemoryFollowsArrivals(t *testing.T) {
	// Unpaced: the bodies stall for as long as the test measures.
	srv, s := newEdgeServer(t, 4<<20, Config{MinBodyRate: -1})
	before := heapInUse()
	const conns = 40
	for range conns {
		stalledRequest(t, srv, "/v1/topics/t/messages", 4<<20, []byte("x"))
		stalledRequest(t, srv, "/v1/topics/t/messages/batch", maxBatchRequestBytes, []byte("["))
	}
	// Each stalled body has reserved its first chunk once its handler
	// reads.
	want := int64(2 * conns * bodyChunk)
	waitUntil(t, "80 stalled bodies to be read", func() (bool, string) {
		got := s.bodies.used.Load()
		return got == want, fmt.Sprintf("%d bytes reserved, want %d", got, want)
	})
	// The heap holds the chunks and the connections' buffers, not the
	// 440 MiB announced; 32 MiB leaves room for the runtime's own noise.
	after := heapInUse()
	if grown := int64(after) - int64(before); grown > 32<<20 {
		t.Fatalf("the heap grew by %d MiB for %d stalled requests (%d bytes reserved for bodies)", grown>>20, 2*conns, s.bodies.used.Load())
	}
	t.Logf("heap grew by %d KiB for %d stalled requests; %d KiB reserved for their bodies",
		(int64(after)-int64(before))>>10, 2*conns, s.bodies.used.Load()>>10)
}

// TestBodyMemoryBoundAnswers503: when the bodies in flight hold all of the
// bound, a request whose body needs more answers 503 server_busy with
// Retry-After and stores nothing; once they are done, the same request
// goes through. Single and batch publishes alike.
func TestBodyMemoryBoundAnswers503(t *testing.T) {
	srv, s := newEdgeServer(t, 1<<20, Config{MaxBodyMemory: MinBodyMemory(false), MinBodyRate: -1})
	// A batch announced at the largest size, of which all but a byte
	// arrive: its buffer grows to the announced length.
	hog := stalledRequest(t, srv, "/v1/topics/t/messages/batch", maxBatchRequestBytes, bytes.Repeat([]byte(" "), maxBatchRequestBytes-1))
	waitUntil(t, "the stalled batch to reserve its announced length", func() (bool, string) {
		got := s.bodies.used.Load()
		return got == maxBatchRequestBytes, fmt.Sprintf("%d bytes reserved", got)
	})
	big := bytes.Repeat([]byte("y"), 512<<10)
	batch := `[{"body":"` + strings.Repeat("z", 512<<10) + `"}]`
	send := func() (single, multi *http.Response, singleBody, multiBody []byte) {
		single, singleBody = do(t, "POST", srv.URL+"/v1/topics/t/messages", nil, bytes.NewReader(big))
		multi, multiBody = do(t, "POST", srv.URL+"/v1/topics/t/messages/batch", map[string]string{"Content-Type": "application/json"}, strings.NewReader(batch))
		return
	}
	single, multi, sb, mb := send()
	for _, a := range []struct {
		name string
		resp *http.Response
		body []byte
	}{{"publish", single, sb}, {"batch", multi, mb}} {
		if a.resp.StatusCode != http.StatusServiceUnavailable || codeOf(a.body) != string(codeServerBusy) || a.resp.Header.Get("Retry-After") != "1" {
			t.Errorf("%s with the bound taken: %d %s (Retry-After %q), want 503 server_busy, Retry-After 1", a.name, a.resp.StatusCode, a.body, a.resp.Header.Get("Retry-After"))
		}
	}
	if _, metrics := do(t, "GET", srv.URL+"/metrics", nil, nil); !bytes.Contains(metrics, []byte("\npostbus_http_body_memory_refused_total 2\n")) {
		t.Errorf("/metrics does not count the 2 refusals:\n%s", grepLines(metrics, "postbus_http_body"))
	}
	if st, err := s.broker.Topic(context.Background(), "t"); err == nil && st.Messages != 0 {
		t.Fatalf("%d messages stored by refused publishes", st.Messages)
	}
	// The stalled batch gives its reservation back when it ends.
	hog.Close()
	waitUntil(t, "the bound to be free", func() (bool, string) {
		got := s.bodies.used.Load()
		return got == 0, fmt.Sprintf("%d bytes reserved", got)
	})
	single, multi, sb, mb = send()
	if single.StatusCode != http.StatusCreated || multi.StatusCode != http.StatusCreated {
		t.Fatalf("with the bound free: publish %d %s, batch %d %s", single.StatusCode, sb, multi.StatusCode, mb)
	}
	if got := s.bodies.used.Load(); got != 0 {
		t.Fatalf("%d bytes still reserved after the requests answered", got)
	}
}

// TestBodyMemoryTooSmall: a bound that cannot hold the largest body is a
// configuration error, not a server that refuses every large batch.
func TestBodyMemoryTooSmall(t *testing.T) {
	for _, ns := range []bool{false, true} {
		cfg := Config{MaxBodyMemory: MinBodyMemory(ns) - 1}
		if ns {
			cfg.NameServer, cfg.NameServerOnly = newContractRegistry(), true
		}
		if _, err := New(cfg); err == nil {
			t.Errorf("name server %v: New took a body memory bound smaller than the largest body", ns)
		}
		cfg.MaxBodyMemory++
		if _, err := New(cfg); err != nil {
			t.Errorf("name server %v: New refused the smallest bound: %v", ns, err)
		}
	}
}

// grepLines is the lines of data that contain sub.
func grepLines(data []byte, sub string) string {
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestPublishBurst is issue 19 item 12: `--rate-limit 5` let a token
// publish 1,003 messages before its first 429, for the burst was at least
// 1000. The burst is now --rate-burst, one second's worth by default, and
// each message of a batch counts; a batch larger than the burst could
// never pass, so it is refused at once (413), not told to retry.
func TestPublishBurst(t *testing.T) {
	batchOf := func(n int) string {
		return "[" + strings.Repeat(`{"body":"x"},`, n-1) + `{"body":"x"}]`
	}
	type step struct {
		batch  int // messages in a batch; 0: a single publish
		status int
		code   string
	}
	tests := []struct {
		name  string
		rate  float64
		burst int
		steps []step
	}{
		// The reported case: one second's worth is 5.
		{"rate 5, default burst", 5, 0, []step{{6, 413, "batch_too_large"}, {1000, 413, "batch_too_large"}, {5, 201, ""}}},
		// A rate below one a second still lets one message through.
		{"rate 0.01, default burst", 0.01, 0, []step{{0, 201, ""}, {0, 429, "rate_limited"}, {2, 413, "batch_too_large"}}},
		// One second's worth of a fractional rate rounds up.
		{"rate 2.5, default burst", 2.5, 0, []step{{4, 413, "batch_too_large"}, {3, 201, ""}}},
		{"rate 0.01, burst 3", 0.01, 3, []step{{3, 201, ""}, {0, 429, "rate_limited"}, {4, 413, "batch_too_large"}, {1, 429, "rate_limited"}}},
		{"rate 0.01, burst 1000", 0.01, 1000, []step{{1000, 201, ""}, {0, 429, "rate_limited"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newAuthServer(t, Config{PublishRate: tt.rate, PublishBurst: tt.burst}, nil)
			tok := withToken(hsToken(t, jwt.MapClaims{"scope": "publish:*", "sub": "burst", "exp": time.Now().Add(time.Hour).Unix()}))
			for i, st := range tt.steps {
				path, body := "/v1/topics/t/messages", "x"
				if st.batch > 0 {
					path, body = "/v1/topics/t/messages/batch", batchOf(st.batch)
				}
				resp, data := do(t, "POST", srv.URL+path, tok, strings.NewReader(body))
				if resp.StatusCode != st.status || (st.code != "" && codeOf(data) != st.code) {
					t.Fatalf("step %d (batch %d): %d %s, want %d %s", i, st.batch, resp.StatusCode, data, st.status, st.code)
				}
				if st.status == 429 && resp.Header.Get("Retry-After") == "" {
					t.Fatalf("step %d: 429 without Retry-After", i)
				}
			}
		})
	}
}

// gzipped is data gzip-compressed.
func gzipped(tb testing.TB, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// TestContentEncoding is issue 19 item 16: a publish with
// Content-Encoding: gzip stored the compressed bytes as the body. A gzip
// body is now decoded, within the message limit counted in decoded bytes
// (a small bomb of zeros is refused as too large without being inflated
// into memory); any other coding is refused with 415, and nothing is
// stored for a refused request.
func TestContentEncoding(t *testing.T) {
	const limit = 64 << 10
	srv, s := newEdgeServer(t, limit, Config{})
	text := []byte(strings.Repeat("postbus ", 1000))
	bomb := gzipped(t, make([]byte, 8<<20)) // 8 MiB of zeros in ~8 KiB
	tests := []struct {
		name     string
		path     string
		encoding string
		body     []byte
		status   int
		code     string
		stored   []byte // the body stored, for a 201
	}{
		{"gzip", "/v1/topics/t/messages", "gzip", gzipped(t, text), 201, "", text},
		{"GZIP, any case", "/v1/topics/t/messages", "GZIP", gzipped(t, text), 201, "", text},
		{"x-gzip", "/v1/topics/t/messages", "x-gzip", gzipped(t, text), 201, "", text},
		{"identity", "/v1/topics/t/messages", "identity", text, 201, "", text},
		{"gzip at the limit", "/v1/topics/t/messages", "gzip", gzipped(t, bytes.Repeat([]byte("a"), limit)), 201, "", bytes.Repeat([]byte("a"), limit)},
		{"gzip one byte over the limit", "/v1/topics/t/messages", "gzip", gzipped(t, bytes.Repeat([]byte("a"), limit+1)), 413, "body_too_large", nil},
		{"gzip bomb", "/v1/topics/t/messages", "gzip", bomb, 413, "body_too_large", nil},
		{"gzip that is not gzip", "/v1/topics/t/messages", "gzip", text, 400, "invalid_parameter", nil},
		{"gzip cut short", "/v1/topics/t/messages", "gzip", gzipped(t, text)[:40], 400, "invalid_parameter", nil},
		{"br", "/v1/topics/t/messages", "br", text, 415, "unsupported_media_type", nil},
		{"deflate", "/v1/topics/t/messages", "deflate", text, 415, "unsupported_media_type", nil},
		{"gzip twice", "/v1/topics/t/messages", "gzip, gzip", gzipped(t, gzipped(t, text)), 415, "unsupported_media_type", nil},
		{"gzip then br", "/v1/topics/t/messages", "gzip\nbr", text, 415, "unsupported_media_type", nil},
		{"batch, gzip", "/v1/topics/t/messages/batch", "gzip", gzipped(t, []byte(`[{"body":"`+string(text)+`"}]`)), 201, "", text},
		{"batch, br", "/v1/topics/t/messages/batch", "br", []byte(`[{"body":"x"}]`), 415, "unsupported_media_type", nil},
		{"JSON route, gzip", "/v1/topics/gz", "gzip", gzipped(t, []byte(`{"queues":2}`)), 201, "", nil},
		{"JSON route, compress", "/v1/topics/gz2", "compress", []byte(`{"queues":2}`), 415, "unsupported_media_type", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := "POST"
			if !strings.Contains(tt.path, "/messages") {
				method = "PUT"
			}
			hdr := map[string]string{"Content-Encoding": tt.encoding, "Content-Type": "application/json"}
			resp, data := do(t, method, srv.URL+tt.path, hdr, bytes.NewReader(tt.body))
			if resp.StatusCode != tt.status || (tt.code != "" && codeOf(data) != tt.code) {
				t.Fatalf("%d %s, want %d %s", resp.StatusCode, data, tt.status, tt.code)
			}
			if tt.status == 415 && !strings.Contains(string(data), `"field":"Content-Encoding"`) {
				t.Errorf("a 415 for the encoding does not name Content-Encoding: %s", data)
			}
			if tt.stored == nil {
				return
			}
			var id string
			if strings.HasSuffix(tt.path, "/batch") {
				var res []publishResult
				if err := json.Unmarshal(data, &res); err != nil {
					t.Fatalf("decode: %v", err)
				}
				if len(res) == 1 {
					id = res[0].MsgID
				}
			} else {
				var res publishResult
				if err := json.Unmarshal(data, &res); err != nil {
					t.Fatalf("decode: %v", err)
				}
				id = res.MsgID
			}
			_, got := do(t, "GET", srv.URL+"/v1/messages/"+id+"/body", nil, nil)
			if !bytes.Equal(got, tt.stored) {
				t.Fatalf("stored %d bytes %.40q, want the decoded %d bytes %.40q", len(got), got, len(tt.stored), tt.stored)
			}
		})
	}
	st, err := s.broker.Topic(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(6); st.Messages != want {
		t.Fatalf("topic t holds %d messages, want the %d accepted", st.Messages, want)
	}
	if got := s.bodies.used.Load(); got != 0 {
		t.Fatalf("%d bytes still reserved for bodies", got)
	}
}

// TestRedriveRateFits is issue 19 item 13: a redrive at 1e-300 a second
// overflowed the pacing arithmetic, so every dead letter came back at once
// and done_by was in the year 1734. A rate whose schedule does not fit
// within the broker's longest delay (2s here) is now refused with 400
// before anything moves: the gap between two messages, and the time until
// the last, each at the boundary and one past it (one more message, or a
// rate one float step lower).
func TestRedriveRateFits(t *testing.T) {
	const maxDelay = 2 * time.Second
	srv, b := newTestServer(t, func(c *broker.Config) { c.MaxDelay = maxDelay })
	ctx := context.Background()
	hdr := map[string]string{"Content-Type": "application/json"}
	tests := []struct {
		name    string
		dead    int     // dead letters in the group
		named   int     // how many of them msg_ids names; 0: all
		rate    float64 // rate_per_second
		status  int
		redrive int // how many are redriven, for a 200
	}{
		{"the report: 1e-300", 2, 0, 1e-300, 400, 0},
		{"1e-300, one dead letter", 1, 0, 1e-300, 400, 0},
		{"smallest subnormal", 1, 0, math.SmallestNonzeroFloat64, 400, 0},
		{"gap at the longest delay", 1, 0, 0.5, 200, 1},
		{"gap one step over", 1, 0, math.Nextafter(0.5, 0), 400, 0},
		{"last due at the longest delay", 3, 0, 1, 200, 3},
		{"one message more", 4, 0, 1, 400, 0},
		{"rate one step lower", 3, 0, math.Nextafter(1, 0), 400, 0},
		{"named ones only are counted", 5, 3, 1, 200, 3},
		{"named ones one too many", 5, 4, 1, 400, 0},
		{"the default, 50", 100, 0, 0, 200, 100},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			group := fmt.Sprintf("g%d", i)
			if resp, data := do(t, "POST", srv.URL+"/v1/subscriptions", hdr, strings.NewReader(`{"group":"`+group+`","topic":"t"}`)); resp.StatusCode != http.StatusCreated {
				t.Fatalf("subscribe: %d %s", resp.StatusCode, data)
			}
			var ids []string
			for range tt.dead {
				res, err := b.Publish(ctx, "t", []*broker.Message{{Body: []byte("x")}})
				if err != nil {
					t.Fatal(err)
				}
				m, err := b.Message(ctx, res[0].ID)
				if err != nil {
					t.Fatal(err)
				}
				if err := b.DeadLetter(ctx, group, m, 17, "status 500"); err != nil {
					t.Fatal(err)
				}
				ids = append(ids, m.ID)
			}
			req := map[string]any{"all": true}
			if tt.named > 0 {
				req = map[string]any{"msg_ids": ids[:tt.named]}
			}
			if tt.rate != 0 {
				req["rate_per_second"] = tt.rate
			}
			body, _ := json.Marshal(req)
			start := time.Now()
			resp, data := do(t, "POST", srv.URL+"/v1/groups/"+group+"/dlq/redrive", hdr, bytes.NewReader(body))
			end := time.Now()
			if resp.StatusCode != tt.status {
				t.Fatalf("redrive %s: %d %s, want %d", body, resp.StatusCode, data, tt.status)
			}
			if tt.status == 400 && (codeOf(data) != string(codeInvalidParameter) || !strings.Contains(string(data), `"field":"rate_per_second"`)) {
				t.Fatalf("refusal %s, want invalid_parameter on rate_per_second", data)
			}
			left := tt.dead
			if tt.status == 200 {
				var got struct {
					Redriven int       `json:"redriven"`
					DoneBy   time.Time `json:"done_by"`
				}
				if err := json.Unmarshal(data, &got); err != nil {
					t.Fatal(err)
				}
				rate := cmp.Or(tt.rate, 50)
				last := time.Duration(float64(got.Redriven-1) / rate * float64(time.Second))
				// done_by is in whole seconds.
				if got.Redriven != tt.redrive || got.DoneBy.Before(start.Add(last).Truncate(time.Second)) || got.DoneBy.After(end.Add(last)) {
					t.Fatalf("redriven %d, done_by %s; want %d, the last due %s after %s", got.Redriven, got.DoneBy, tt.redrive, last, start.Format(time.RFC3339Nano))
				}
				left -= got.Redriven
			}
			// Nothing moved for a refusal; the redriven left the queue.
			g, err := b.Group(ctx, group)
			if err != nil {
				t.Fatal(err)
			}
			if g.DeadLetters != int64(left) {
				t.Fatalf("%d dead letters left, want %d", g.DeadLetters, left)
			}
		})
	}
}

// TestTraceNarrowedToConsumableGroups is issue 19 item 17: the trace of a
// message showed every group's attempts (subscription ids, endpoint
// errors) to any token that may read the message, a producer's included.
// A token now sees the attempts of the groups it could consume the topic
// as (consume on the group, subscribe on the topic); admin sees all.
func TestTraceNarrowedToConsumableGroups(t *testing.T) {
	srv, _ := newAuthServer(t, Config{}, nil)
	token := func(scope string) map[string]string {
		return withToken(hsToken(t, jwt.MapClaims{"scope": scope, "sub": scope, "exp": time.Now().Add(time.Hour).Unix()}))
	}
	admin := token("admin")
	must := func(method, path, body string, status int) []byte {
		t.Helper()
		resp, data := do(t, method, srv.URL+path, admin, strings.NewReader(body))
		if resp.StatusCode != status {
			t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, data, status)
		}
		return data
	}
	must("PUT", "/v1/topics/orders", `{"queues":1}`, http.StatusCreated)
	for _, g := range []string{"billing", "audit", "ship"} {
		must("POST", "/v1/subscriptions", `{"group":"`+g+`","topic":"orders"}`, http.StatusCreated)
	}
	var res publishResult
	if err := json.Unmarshal(must("POST", "/v1/topics/orders/messages", "x", http.StatusCreated), &res); err != nil {
		t.Fatalf("decode: %v", err)
	}
	// Each group pulls it; an ack or a nack puts the attempt in the trace.
	for _, g := range []string{"billing", "audit", "ship"} {
		var pulled struct {
			Messages []pulledJSON `json:"messages"`
		}
		data := must("POST", "/v1/groups/"+g+"/topics/orders/pull?max=1", "", http.StatusOK)
		if err := json.Unmarshal(data, &pulled); err != nil || len(pulled.Messages) != 1 || pulled.Messages[0].MsgID != res.MsgID {
			t.Fatalf("%s pulled %s, not %s", g, data, res.MsgID)
		}
		settle := "ack"
		if g == "audit" {
			settle = "nack"
		}
		must("POST", "/v1/groups/"+g+"/"+settle, `{"receipts":["`+pulled.Messages[0].Receipt+`"]}`, http.StatusOK)
	}
	tests := []struct {
		scope  string
		groups []string // whose attempts the trace shows
	}{
		{"admin", []string{"audit", "billing", "ship"}},
		{"subscribe:orders consume:*", []string{"audit", "billing", "ship"}},
		{"subscribe:orders consume:billing", []string{"billing"}},
		{"subscribe:ord* consume:billing consume:sh*", []string{"billing", "ship"}},
		// A producer reads the message, not the deliveries.
		{"publish:orders", nil},
		{"publish:orders consume:billing", nil},
		{"subscribe:orders", nil},
		{"subscribe:orders consume:accounts", nil},
	}
	for _, tt := range tests {
		t.Run(tt.scope, func(t *testing.T) {
			resp, data := do(t, "GET", srv.URL+"/v1/messages/"+res.MsgID+"/trace", token(tt.scope), nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("trace: %d %s", resp.StatusCode, data)
			}
			var tr struct {
				Attempts []attemptJSON `json:"attempts"`
			}
			if err := json.Unmarshal(data, &tr); err != nil {
				t.Fatal(err)
			}
			var groups []string
			for _, a := range tr.Attempts {
				if !slices.Contains(groups, a.Group) {
					groups = append(groups, a.Group)
				}
			}
			slices.Sort(groups)
			if !slices.Equal(groups, tt.groups) {
				t.Fatalf("the trace shows the attempts of %v, want %v: %s", groups, tt.groups, data)
			}
		})
	}
}

// TestClusterGzipForwarded: a broker that decodes a gzip body and then
// forwards the request (a publish to a topic another broker holds, a
// batch, a subscription created on every holder) forwards the decoded
// bytes, so it must not forward Content-Encoding: gzip with them.
func TestClusterGzipForwarded(t *testing.T) {
	tc := newTestCluster(t, "a", "b")
	tc.placeTopic(t, "a", "orders", `{"brokers":["b"]}`, "b")
	gz := map[string]string{"Content-Encoding": "gzip", "Content-Type": "application/json"}
	text := strings.Repeat("postbus ", 100)

	a := tc.via(t, "a", "POST", "/v1/topics/orders/messages", gz, string(gzipped(t, []byte(text))))
	a.want(t, http.StatusCreated, "b")
	tc.wantStored(t, decodeAs[publishResult](t, a), text)

	a = tc.via(t, "a", "POST", "/v1/topics/orders/messages/batch", gz, string(gzipped(t, []byte(`[{"body":"`+text+`"}]`))))
	a.want(t, http.StatusCreated, "b")
	tc.wantStored(t, decodeAs[[]publishResult](t, a)[0], text)

	tc.via(t, "a", "POST", "/v1/subscriptions", gz, string(gzipped(t, []byte(`{"group":"g","topic":"orders"}`)))).want(t, http.StatusCreated, "b")
	tc.via(t, "a", "PUT", "/v1/topics/more", gz, string(gzipped(t, []byte(`{"queues":2,"brokers":"all"}`)))).want(t, http.StatusCreated, "a")
	tc.wantRoute(t, "more", "a", "b")
}

// TestClusterFanOutBodyInBudget: a broker in a cluster reads the body of
// a request it applies on every broker before any handler does; that read
// is paid for from the body budget too, so it answers 503 server_busy
// when the bodies in flight hold all of it.
func TestClusterFanOutBodyInBudget(t *testing.T) {
	// No name server answers: the broker applies such requests alone,
	// after reading their bodies.
	names := namesrv.NewClient(namesrv.ClientConfig{Addrs: []string{"http://127.0.0.1:1"}, Interval: time.Hour, Timeout: time.Second})
	srv, s := newEdgeServer(t, 1<<20, Config{MaxBodyMemory: MinBodyMemory(false), MinBodyRate: -1, Cluster: &Cluster{Self: "a", Names: names}})
	stalledRequest(t, srv, "/v1/topics/t/messages/batch", maxBatchRequestBytes, bytes.Repeat([]byte(" "), maxBatchRequestBytes-1))
	waitUntil(t, "the stalled batch to reserve its announced length", func() (bool, string) {
		got := s.bodies.used.Load()
		return got == maxBatchRequestBytes, fmt.Sprintf("%d bytes reserved", got)
	})
	body := `{"all":true}` + strings.Repeat(" ", 256<<10)
	resp, data := do(t, "POST", srv.URL+"/v1/groups/g/dlq/redrive", map[string]string{"Content-Type": "application/json", "Expect": "100-continue"}, strings.NewReader(body))
	if resp.StatusCode != http.StatusServiceUnavailable || codeOf(data) != string(codeServerBusy) || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("fan-out with the bound taken: %d %s (Retry-After %q), want 503 server_busy", resp.StatusCode, data, resp.Header.Get("Retry-After"))
	}
}
