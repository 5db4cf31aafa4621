package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeBroker is a broker stand-in that counts what it receives and checks
// every request against what the flags promise.
type fakeBroker struct {
	fakeAPI
	size     int
	tag      string
	keys     bool
	ctype    string
	fail     func(req int64) bool // answer this request with a 500 problem
	received chan struct{}        // gets a value per publish request, never blocks

	// f.mu guards the fields below.
	requests  int64
	messages  int64
	batchLens []int
	seenKeys  map[string]bool
}

type fakeOpts struct {
	topic, tag, ctype string
	size              int
	keys              bool
	fail              func(req int64) bool
}

func newFakeBroker(tb testing.TB, o fakeOpts) *fakeBroker {
	tb.Helper()
	f := &fakeBroker{
		size: o.size, tag: o.tag, keys: o.keys, ctype: o.ctype, fail: o.fail,
		seenKeys: make(map[string]bool), received: make(chan struct{}, 1<<16),
	}
	f.init(tb, o.topic)
	if f.ctype == "" {
		f.ctype = "application/octet-stream"
	}
	f.mux.HandleFunc("POST /v1/topics/{topic}/messages", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		f.mu.Lock()
		f.requests++
		req := f.requests
		f.messages++
		if err != nil {
			f.problemf("read body: %v", err)
		}
		if r.PathValue("topic") != f.topic {
			f.problemf("topic %q, want %q", r.PathValue("topic"), f.topic)
		}
		if got := r.Header.Get("Content-Type"); got != f.ctype {
			f.problemf("Content-Type %q, want %q", got, f.ctype)
		}
		if got := r.Header.Get("Postbus-Tag"); got != f.tag {
			f.problemf("Postbus-Tag %q, want %q", got, f.tag)
		}
		f.checkBody(string(b))
		f.checkKey(r.Header.Get("Postbus-Keys"))
		f.mu.Unlock()
		f.answer(w, req, 1, false)
	})
	f.mux.HandleFunc("POST /v1/topics/{topic}/messages/batch", func(w http.ResponseWriter, r *http.Request) {
		var msgs []struct {
			Body        *string  `json:"body"`
			ContentType string   `json:"content_type"`
			Tag         string   `json:"tag"`
			Keys        []string `json:"keys"`
		}
		err := json.NewDecoder(r.Body).Decode(&msgs)
		f.mu.Lock()
		f.requests++
		req := f.requests
		if err != nil {
			f.problemf("batch body: %v", err)
		}
		if r.PathValue("topic") != f.topic {
			f.problemf("topic %q, want %q", r.PathValue("topic"), f.topic)
		}
		if got := r.Header.Get("Content-Type"); got != "application/json" {
			f.problemf("batch Content-Type %q", got)
		}
		f.messages += int64(len(msgs))
		f.batchLens = append(f.batchLens, len(msgs))
		for _, m := range msgs {
			if m.Body == nil {
				f.problemf("batch message without body")
				continue
			}
			f.checkBody(*m.Body)
			if m.Tag != f.tag || m.ContentType != f.ctype {
				f.problemf("batch message tag %q content_type %q", m.Tag, m.ContentType)
			}
			switch {
			case !f.keys && len(m.Keys) != 0:
				f.problemf("keys %q without --keys", m.Keys)
			case f.keys && len(m.Keys) != 1:
				f.problemf("keys %q, want one", m.Keys)
			case f.keys:
				f.checkKey(m.Keys[0])
			}
		}
		f.mu.Unlock()
		f.answer(w, req, len(msgs), true)
	})
	f.serve()
	return f
}

// checkBody checks size and alphabet; f.mu must be held.
func (f *fakeBroker) checkBody(b string) {
	if len(b) != f.size {
		f.problemf("body of %d bytes, want %d", len(b), f.size)
	}
	for i := 0; i < len(b); i++ {
		if c := b[i]; c < 0x20 || c > 0x7e {
			f.problemf("body byte %#x is not printable ASCII", c)
			return
		}
	}
}

// checkKey checks presence and uniqueness of a key; f.mu must be held.
func (f *fakeBroker) checkKey(k string) {
	switch {
	case !f.keys && k != "":
		f.problemf("key %q without --keys", k)
	case f.keys && k == "":
		f.problemf("no key with --keys")
	case f.keys && f.seenKeys[k]:
		f.problemf("key %q sent twice", k)
	case f.keys:
		f.seenKeys[k] = true
	}
}

func (f *fakeBroker) answer(w http.ResponseWriter, req int64, n int, batch bool) {
	poke(f.received)
	if f.fail != nil && f.fail(req) {
		writeProblem(w, http.StatusInternalServerError, "internal", "disk on fire")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	results := make([]string, n)
	for i := range results {
		results[i] = fmt.Sprintf(`{"msg_id":"M%d-%d","topic":%q,"queue_id":0,"queue_offset":%d,"status":"SEND_OK"}`, req, i, f.topic, req)
	}
	if batch {
		io.WriteString(w, "["+strings.Join(results, ",")+"]")
		return
	}
	io.WriteString(w, results[0])
}

// snapshot returns the counters and the problems seen so far.
func (f *fakeBroker) snapshot() (creates int, requests, messages int64, batchLens []int, problems []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.creates, f.requests, f.messages, append([]int(nil), f.batchLens...), append([]string(nil), f.problems...)
}

// baseArgs are the flags every test run uses: no warm-up, no progress lines.
func baseArgs(url string, extra ...string) []string {
	return append([]string{"--url", url, "--warmup", "0", "--interval", "0"}, extra...)
}

// decodeJSONReport finds the --json report at the end of out.
func decodeJSONReport(tb testing.TB, out string) jsonReport {
	tb.Helper()
	i := strings.LastIndex(out, "\n{\n")
	if i < 0 {
		tb.Fatalf("no JSON report in output:\n%s", out)
	}
	var rep jsonReport
	if err := json.Unmarshal([]byte(out[i+1:]), &rep); err != nil {
		tb.Fatalf("decode JSON report: %v\n%s", err, out[i+1:])
	}
	return rep
}

func TestPublishSendsExactlyCount(t *testing.T) {
	tests := []struct {
		name      string
		count     int64
		conns     int
		batch     int
		size      int
		tag       string
		keys      bool
		ctype     string
		wantLens  map[int]int // batch length → how many requests had it
		wantReqs  int64
		wantFirst bool // report shows first/last 10%
	}{
		{name: "single/count=1/conns=8", count: 1, conns: 8, batch: 1, size: 256, wantReqs: 1},
		{name: "single/count=137/tag/keys", count: 137, conns: 7, batch: 1, size: 100, tag: "TagA",
			keys: true, ctype: "text/plain", wantReqs: 137, wantFirst: true},
		{name: "single/size=0", count: 12, conns: 2, batch: 1, size: 0, wantReqs: 12, wantFirst: true},
		{name: "batch=10/count=101", count: 101, conns: 3, batch: 10, size: 64,
			wantLens: map[int]int{10: 10, 1: 1}, wantReqs: 11, wantFirst: true},
		{name: "batch=5/count=23/tag/keys", count: 23, conns: 4, batch: 5, size: 300, tag: "t.1", keys: true,
			ctype: "application/json", wantLens: map[int]int{5: 4, 3: 1}, wantReqs: 5, wantFirst: true},
		{name: "batch=50/count=7", count: 7, conns: 2, batch: 50, size: 10,
			wantLens: map[int]int{7: 1}, wantReqs: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeBroker(t, fakeOpts{topic: "orders-" + strconv.Itoa(tt.batch), size: tt.size, tag: tt.tag, keys: tt.keys, ctype: tt.ctype})
			args := baseArgs(f.srv.URL, "--topic", f.topic, "--count", strconv.FormatInt(tt.count, 10),
				"--conns", strconv.Itoa(tt.conns), "--batch", strconv.Itoa(tt.batch), "--size", strconv.Itoa(tt.size),
				"--json")
			if tt.tag != "" {
				args = append(args, "--tag", tt.tag)
			}
			if tt.keys {
				args = append(args, "--keys")
			}
			if tt.ctype != "" {
				args = append(args, "--content-type", tt.ctype)
			}
			out, err := runPublish(t, t.Context(), args...)
			if err != nil {
				t.Fatalf("Publish: %v\n%s", err, out)
			}
			creates, reqs, msgs, lens, problems := f.snapshot()
			for _, p := range problems {
				t.Errorf("broker saw: %s", p)
			}
			if creates != 1 {
				t.Errorf("topic created %d times, want 1", creates)
			}
			if msgs != tt.count || reqs != tt.wantReqs {
				t.Errorf("broker got %d messages in %d requests, want %d in %d", msgs, reqs, tt.count, tt.wantReqs)
			}
			if tt.wantLens != nil {
				got := map[int]int{}
				for _, n := range lens {
					got[n]++
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.wantLens) {
					t.Errorf("batch lengths %v, want %v", got, tt.wantLens)
				}
			}
			rep := decodeJSONReport(t, out)
			if rep.Target.Messages != tt.count || rep.Target.MessagesSent != tt.count || rep.Target.Requests != tt.wantReqs {
				t.Errorf("report: %d messages acknowledged, %d sent, %d requests; want %d, %d, %d",
					rep.Target.Messages, rep.Target.MessagesSent, rep.Target.Requests, tt.count, tt.count, tt.wantReqs)
			}
			if rep.Target.ErrorRequests != 0 || len(rep.Target.Errors) != 0 {
				t.Errorf("report shows errors: %+v", rep.Target.Errors)
			}
			if rep.Target.LatencyMs.Max <= 0 || rep.Target.LatencyMs.P50 > rep.Target.LatencyMs.P99 {
				t.Errorf("latency %+v: want max > 0 and p50 <= p99", rep.Target.LatencyMs)
			}
			if got := strings.Contains(out, "first 10%") && rep.Target.LastOverFirst != nil; got != tt.wantFirst {
				t.Errorf("first/last 10%% shown = %v, want %v\n%s", got, tt.wantFirst, out)
			}
		})
	}
}

func TestPublishWarmupIsExtraToCount(t *testing.T) {
	f := newFakeBroker(t, fakeOpts{topic: "bench", size: 32})
	args := []string{"--url", f.srv.URL, "--interval", "0", "--warmup", "150ms", "--count", "40", "--conns", "2", "--size", "32", "--json"}
	out, err := runPublish(t, t.Context(), args...)
	if err != nil {
		t.Fatalf("Publish: %v\n%s", err, out)
	}
	_, _, msgs, _, problems := f.snapshot()
	if len(problems) > 0 {
		t.Errorf("broker saw: %q", problems)
	}
	if msgs <= 40 {
		t.Errorf("broker got %d messages, want the 40 measured plus the warm-up's", msgs)
	}
	if rep := decodeJSONReport(t, out); rep.Target.MessagesSent != 40 {
		t.Errorf("report: %d measured messages, want 40", rep.Target.MessagesSent)
	}
	if !strings.Contains(out, "warm-up 150ms") {
		t.Errorf("no warm-up line in:\n%s", out)
	}
}

func TestPublishDurationBoundWithProgress(t *testing.T) {
	f := newFakeBroker(t, fakeOpts{topic: "bench", size: 256})
	start := time.Now()
	out, err := runPublish(t, t.Context(), "--url", f.srv.URL, "--warmup", "0", "--duration", "400ms",
		"--interval", "100ms", "--conns", "4", "--json")
	if err != nil {
		t.Fatalf("Publish: %v\n%s", err, out)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a 400ms run took %s", took)
	}
	_, _, msgs, _, problems := f.snapshot()
	if len(problems) > 0 {
		t.Errorf("broker saw: %q", problems)
	}
	rep := decodeJSONReport(t, out)
	if msgs == 0 || rep.Target.MessagesSent != msgs {
		t.Errorf("broker got %d messages, report says %d sent", msgs, rep.Target.MessagesSent)
	}
	if rep.Target.ElapsedSec < 0.4 {
		t.Errorf("elapsed %.3fs, want at least the 400ms duration", rep.Target.ElapsedSec)
	}
	if n := strings.Count(out, " msgs/s  p99 "); n < 1 {
		t.Errorf("%d progress lines, want at least 1:\n%s", n, out)
	}
}

func TestPublishRatePaces(t *testing.T) {
	tests := []struct {
		name  string
		batch string
	}{
		{"rate=200/batch=1", "1"},
		{"rate=200/batch=10", "10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeBroker(t, fakeOpts{topic: "bench", size: 16})
			out, err := runPublish(t, t.Context(), baseArgs(f.srv.URL, "--rate", "200", "--duration", "1s",
				"--conns", "8", "--size", "16", "--batch", tt.batch)...)
			if err != nil {
				t.Fatalf("Publish: %v\n%s", err, out)
			}
			_, _, msgs, _, problems := f.snapshot()
			if len(problems) > 0 {
				t.Errorf("broker saw: %q", problems)
			}
			// 200 msgs/s for 1s is 200 messages; the band is wide because
			// this measures a real clock on a shared machine.
			if msgs < 100 || msgs > 300 {
				t.Errorf("sent %d messages at --rate 200 over 1s, want 100..300", msgs)
			}
		})
	}
}

// TestPublishOpenLoopCountsStall checks that a stall shows in the latency
// of the requests that were due during it, not only the one that stalled.
func TestPublishOpenLoopCountsStall(t *testing.T) {
	const stall = 300 * time.Millisecond
	mux := http.NewServeMux()
	var mu sync.Mutex
	n := 0
	mux.HandleFunc("PUT /v1/topics/{topic}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("POST /v1/topics/{topic}/messages", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		n++
		stalled := n == 10
		mu.Unlock()
		if stalled {
			select { // the broker stalls, e.g. on a slow fsync
			case <-time.After(stall):
			case <-r.Context().Done():
			}
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"msg_id":"x","status":"SEND_OK"}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tests := []struct {
		name    string
		rate    string
		wantP90 func(ms float64) bool
		want    string
	}{
		// 100 msgs/s over 1s with one connection: ~30 requests are due
		// during the 300ms stall and wait behind it.
		{"open loop", "100", func(ms float64) bool { return ms >= 50 }, ">= 50ms"},
		// The same run, closed loop: one slow request of many, so p90
		// stays small. This is the bias the open loop removes.
		{"closed loop", "0", func(ms float64) bool { return ms < 50 }, "< 50ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			n = 0
			mu.Unlock()
			out, err := runPublish(t, t.Context(), baseArgs(srv.URL, "--rate", tt.rate, "--count", "100",
				"--conns", "1", "--size", "8", "--json")...)
			if err != nil {
				t.Fatalf("Publish: %v\n%s", err, out)
			}
			rep := decodeJSONReport(t, out)
			if !tt.wantP90(rep.Target.LatencyMs.P90) {
				t.Errorf("p90 %.2fms, want %s\n%s", rep.Target.LatencyMs.P90, tt.want, out)
			}
			if rep.Target.LatencyMs.Max < float64(stall/time.Millisecond)*0.9 {
				t.Errorf("max %.2fms, want about the %s stall", rep.Target.LatencyMs.Max, stall)
			}
		})
	}
}

func TestPublishCountsErrors(t *testing.T) {
	tests := []struct {
		name         string
		batch        string
		count        int64
		wantFailReqs int64
		wantFailMsgs int64
	}{
		{"single", "1", 30, 10, 10},
		{"batch=4", "4", 30, 2, 8}, // 8 requests (7×4 + 1×2); the 3rd and 6th fail
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeBroker(t, fakeOpts{topic: "bench", size: 20, fail: func(req int64) bool { return req%3 == 0 }})
			out, err := runPublish(t, t.Context(), baseArgs(f.srv.URL, "--count", strconv.FormatInt(tt.count, 10),
				"--conns", "2", "--size", "20", "--batch", tt.batch, "--json")...)
			if err != nil {
				t.Fatalf("Publish returned %v; errors from the broker must be counted, not fatal\n%s", err, out)
			}
			rep := decodeJSONReport(t, out)
			r := rep.Target
			if r.ErrorRequests != tt.wantFailReqs || r.ErrorMessages != tt.wantFailMsgs || r.Messages != tt.count-tt.wantFailMsgs {
				t.Errorf("report: %d failed requests, %d failed messages, %d acknowledged; want %d, %d, %d",
					r.ErrorRequests, r.ErrorMessages, r.Messages, tt.wantFailReqs, tt.wantFailMsgs, tt.count-tt.wantFailMsgs)
			}
			if len(r.Errors) != 1 || r.Errors[0].Kind != "500 internal" || r.Errors[0].Requests != tt.wantFailReqs ||
				!strings.Contains(r.Errors[0].First, "disk on fire") {
				t.Errorf("error table %+v, want one row 500 internal × %d with the detail", r.Errors, tt.wantFailReqs)
			}
			if !strings.Contains(out, "500 internal") || !strings.Contains(out, "first: 500 Internal Server Error: Internal Server Error: disk on fire") {
				t.Errorf("text report lacks the error row:\n%s", out)
			}
		})
	}
}

func TestPublishBatchShortAnswerIsError(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/topics/{topic}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })
	mux.HandleFunc("POST /v1/topics/{topic}/messages/batch", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `[{"msg_id":"only-one","status":"SEND_OK"}]`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	out, err := runPublish(t, t.Context(), baseArgs(srv.URL, "--count", "6", "--batch", "3", "--conns", "1", "--json")...)
	if err != nil {
		t.Fatalf("Publish: %v\n%s", err, out)
	}
	r := decodeJSONReport(t, out).Target
	if r.ErrorRequests != 2 || r.Messages != 0 || len(r.Errors) != 1 || r.Errors[0].Kind != "201 batch_short" {
		t.Errorf("report %+v: want both batches failed as 201 batch_short", r)
	}
}

func TestPublishRefusesRemote(t *testing.T) {
	for _, u := range []string{
		"http://10.1.2.3:8080",
		"http://192.0.2.1",
		"https://203.0.113.9/postbus",
		"http://[2001:db8::1]:8080",
		"http://[::ffff:192.0.2.1]:8080",
		"http://no-such-host.invalid:8080",
	} {
		t.Run(u, func(t *testing.T) {
			out := refusesRemote(t, runPublish, "bench publish", u, "--count", "1", "--warmup", "0")
			if strings.Contains(out, "requests") {
				t.Errorf("a report was printed for a refused target:\n%s", out)
			}
		})
	}
	for _, tt := range []struct {
		url   string
		allow bool
	}{
		{"http://127.0.0.1:8080", false},
		{"http://127.9.9.9", false},
		{"http://[::1]:8080", false},
		{"http://localhost:8080", false},
		{"http://broker.localhost", false},
		{"http://[::ffff:127.0.0.1]:1", false},
		{"http://192.0.2.1:8080", true},
	} {
		t.Run("allowed/"+tt.url, func(t *testing.T) {
			if err := checkTarget(t.Context(), tt.url, tt.allow); err != nil {
				t.Errorf("checkTarget(%s, allowRemote=%v) = %v, want nil", tt.url, tt.allow, err)
			}
		})
	}
}

func TestPublishHelp(t *testing.T) {
	out := checkHelp(t, runPublish, "Usage: postbus bench publish", "Examples:", "postbus bench publish --count")
	for _, name := range []string{"url", "topic", "conns", "duration", "count", "size", "batch", "rate", "tag",
		"keys", "content-type", "baseline", "warmup", "interval", "json", "allow-remote", "create", "queues", "timeout"} {
		if !strings.Contains(out, "  -"+name) {
			t.Errorf("usage does not explain -%s", name)
		}
	}
}

func TestPublishRejectsBadFlags(t *testing.T) {
	f := newFakeBroker(t, fakeOpts{topic: "bench", size: 256})
	refusesFlags(t, runPublish, []string{"--url", f.srv.URL, "--warmup", "0"}, []flagCase{
		{"conns=0", []string{"--conns", "0", "--count", "1"}},
		{"batch=0", []string{"--batch", "0", "--count", "1"}},
		{"size<0", []string{"--size", "-1", "--count", "1"}},
		{"size too big", []string{"--size", "100000000", "--count", "1"}},
		{"batch×size too big", []string{"--batch", "100000", "--size", "1000", "--count", "1"}},
		{"unbounded", []string{"--duration", "0"}},
		{"count<0", []string{"--count", "-5"}},
		{"rate<0", []string{"--rate", "-1", "--count", "1"}},
		{"rate NaN", []string{"--rate", "NaN", "--count", "1"}},
		{"bad topic", []string{"--topic", "a b", "--count", "1"}},
		{"tag with ||", []string{"--tag", "a||b", "--count", "1"}},
		{"timeout=0", []string{"--timeout", "0", "--count", "1"}},
		{"unknown flag", []string{"--nope"}},
		{"positional", []string{"--count", "1", "extra"}},
		{"ftp url", []string{"--url", "ftp://127.0.0.1/", "--count", "1"}},
		{"url with query", []string{"--url", "http://127.0.0.1:1/?a=b", "--count", "1"}},
	})
	if _, reqs, _, _, _ := f.snapshot(); reqs != 0 {
		t.Errorf("bad flags still sent %d requests", reqs)
	}
}

func TestPublishBaseline(t *testing.T) {
	for _, batch := range []string{"1", "7"} {
		t.Run("batch="+batch, func(t *testing.T) {
			f := newFakeBroker(t, fakeOpts{topic: "bench", size: 64})
			out, err := runPublish(t, t.Context(), baseArgs(f.srv.URL, "--count", "50", "--batch", batch,
				"--conns", "4", "--size", "64", "--baseline", "--json")...)
			if err != nil {
				t.Fatalf("Publish: %v\n%s", err, out)
			}
			rep := decodeJSONReport(t, out)
			if rep.Baseline == nil || rep.TargetOverBaseline == nil {
				t.Fatalf("no baseline in JSON report:\n%s", out)
			}
			if b := rep.Baseline; b.Messages != 50 || b.ErrorRequests != 0 || !strings.HasPrefix(b.URL, "http://127.0.0.1:") {
				t.Errorf("baseline run %+v: want 50 messages, no errors, on 127.0.0.1", b)
			}
			if got, want := *rep.TargetOverBaseline, rep.Target.MsgsPerSec/rep.Baseline.MsgsPerSec; got <= 0 || got != want {
				t.Errorf("target/baseline = %v, want %v > 0", got, want)
			}
			if !strings.Contains(out, "target/baseline") {
				t.Errorf("text report lacks the ratio:\n%s", out)
			}
			if _, _, msgs, _, _ := f.snapshot(); msgs != 50 {
				t.Errorf("target got %d messages, want 50: the baseline must not hit it", msgs)
			}
		})
	}
}

func TestPublishInterrupt(t *testing.T) {
	f := newFakeBroker(t, fakeOpts{topic: "bench", size: 256})
	out := runInterrupted(t, runPublish, f.received, 5, baseArgs(f.srv.URL, "--duration", "30s", "--conns", "2", "--baseline")...)
	if strings.Contains(out, "baseline (") {
		t.Errorf("want no baseline run after the interrupt:\n%s", out)
	}
}

func TestPublishCreateTopic(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/topics/{topic}", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusForbidden, "forbidden", "token lacks admin scope")
	})
	mux.HandleFunc("POST /v1/topics/{topic}/messages", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"msg_id":"x"}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	out, err := runPublish(t, t.Context(), baseArgs(srv.URL, "--count", "3")...)
	if err == nil || !strings.Contains(err.Error(), "token lacks admin scope") {
		t.Fatalf("Publish = %v, want the create-topic failure\n%s", err, out)
	}
	out, err = runPublish(t, t.Context(), baseArgs(srv.URL, "--count", "3", "--create=false", "--json")...)
	if err != nil {
		t.Fatalf("Publish --create=false: %v\n%s", err, out)
	}
	if got := decodeJSONReport(t, out).Target.Messages; got != 3 {
		t.Errorf("--create=false sent %d messages, want 3", got)
	}
}

// BenchmarkPublishNoop measures the client's own cost per message against
// the in-process no-op server: the ceiling --baseline reports.
func BenchmarkPublishNoop(b *testing.B) {
	srv, err := startNoop("bench")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	for _, conns := range []int{1, 8} {
		for _, batch := range []int{1, 16} {
			for _, size := range []int{256, 4096} {
				b.Run(fmt.Sprintf("conns=%d/batch=%d/size=%d", conns, batch, size), func(b *testing.B) {
					b.ReportAllocs()
					b.SetBytes(int64(size))
					err := Publish(b.Context(), baseArgs(srv.url, "--count", strconv.Itoa(b.N), "--conns", strconv.Itoa(conns),
						"--batch", strconv.Itoa(batch), "--size", strconv.Itoa(size)), io.Discard)
					if err != nil {
						b.Fatal(err)
					}
				})
			}
		}
	}
}
