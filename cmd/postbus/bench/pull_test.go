package bench

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakePull is a broker stand-in for `bench pull`: an in-memory queue that
// publishes append to and pulls take from, long polls that wait on a
// channel closed and replaced at each publish, and receipts it checks are
// acked exactly once. Faults on demand.
type fakePull struct {
	fakeAPI
	opts      fakePullOpts
	handedOut chan struct{} // gets a value per non-empty answer, never blocks

	// f.mu guards the fields below.
	queue      []fakeMsg
	arrived    chan struct{} // closed and replaced when a message is queued
	published  int64
	receipts   map[string]int // receipt → times acked
	nextRcpt   int64
	waitingNow int // long polls being held
	maxWaiting int
}

type fakePullOpts struct {
	dup      int64         // hand the dup-th message (1-based) out twice, in one answer, under two receipts
	drop     int64         // never hand out the drop-th message
	base64   bool          // send bodies base64-encoded
	existing bool          // the group has a subscription already: answer 409
	hold     time.Duration // hold an empty poll this long instead of its wait
	group    string        // the group the tool must use; "" = bench-<run>
	batch    bool          // the tool must publish in batches
}

type fakeMsg struct {
	id, receipt string
	body        []byte
}

func newFakePull(tb testing.TB, o fakePullOpts) *fakePull {
	tb.Helper()
	f := &fakePull{
		opts: o, arrived: make(chan struct{}),
		receipts: make(map[string]int), handedOut: make(chan struct{}, 1<<16),
	}
	f.init(tb, "bench-pull")
	groupOK := regexp.MustCompile(`^bench-[0-9a-z]{8}$`).MatchString
	if o.group != "" {
		groupOK = func(g string) bool { return g == o.group }
	}
	f.mux.HandleFunc("POST /v1/subscriptions", func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		err := json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		defer f.mu.Unlock()
		group, _ := req["group"].(string)
		if err != nil || !groupOK(group) || req["topic"] != f.topic || req["start_from"] != "latest" ||
			req["url"] != nil || req["visibility"] != "30s" || len(req) != 4 {
			f.problemf("subscription %v (%v)", req, err)
		}
		if o.existing {
			writeProblem(w, http.StatusConflict, "subscription_exists", "")
			return
		}
		f.addSub(w, group, "")
	})
	f.mux.HandleFunc("POST /v1/topics/{topic}/messages", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil || r.PathValue("topic") != f.topic || o.batch {
			f.mu.Lock()
			f.problemf("publish to %q: %v (batch %v)", r.PathValue("topic"), err, o.batch)
			f.mu.Unlock()
		}
		ids := f.enqueue([][]byte{body})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"msg_id":%q,"topic":%q,"queue_id":0,"queue_offset":0}`, ids[0], f.topic)
	})
	f.mux.HandleFunc("POST /v1/topics/{topic}/messages/batch", func(w http.ResponseWriter, r *http.Request) {
		var items []struct {
			Body string `json:"body"`
		}
		err := json.NewDecoder(r.Body).Decode(&items)
		if err != nil || len(items) == 0 || r.Header.Get("Content-Type") != "application/json" || !o.batch {
			f.mu.Lock()
			f.problemf("batch publish: %v, %d items, %q", err, len(items), r.Header.Get("Content-Type"))
			f.mu.Unlock()
		}
		bodies := make([][]byte, len(items))
		for i, it := range items {
			bodies[i] = []byte(it.Body)
		}
		ids := f.enqueue(bodies)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		var res []string
		for _, id := range ids {
			res = append(res, fmt.Sprintf(`{"msg_id":%q,"topic":%q}`, id, f.topic))
		}
		io.WriteString(w, "["+strings.Join(res, ",")+"]")
	})
	f.mux.HandleFunc("POST /v1/groups/{group}/topics/{topic}/pull", f.pull)
	f.mux.HandleFunc("POST /v1/groups/{group}/ack", f.ack)
	f.serve()
	return f
}

// enqueue stores bodies as the next messages and wakes the long polls.
func (f *fakePull) enqueue(bodies [][]byte) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, b := range bodies {
		f.published++
		n := f.published
		id := fmt.Sprintf("M%06d", n)
		ids = append(ids, id)
		switch n {
		case f.opts.drop:
			continue
		case f.opts.dup:
			f.queue = append(f.queue, fakeMsg{id: id, body: b})
		}
		f.queue = append(f.queue, fakeMsg{id: id, body: b})
	}
	close(f.arrived)
	f.arrived = make(chan struct{})
	return ids
}

func (f *fakePull) pull(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := strconv.Atoi(q.Get("max"))
	wait, err2 := time.ParseDuration(q.Get("wait"))
	f.mu.Lock()
	if err != nil || err2 != nil || limit < 1 || limit > 256 || q.Get("visibility") != "30s" || r.PathValue("topic") != f.topic {
		f.problemf("pull %s: %v %v", r.URL, err, err2)
		limit = 1
	}
	if !f.hasGroup(r.PathValue("group")) {
		if f.gone[r.PathValue("group")] {
			// A poll the tool gave up on at the end of the run can reach
			// the server after its subscription was deleted (on another
			// connection); the broker answers it 404.
			f.mu.Unlock()
			writeProblem(w, http.StatusNotFound, "subscription_not_found", "")
			return
		}
		f.problemf("pull by group %q, which has no subscription", r.PathValue("group"))
	}
	f.mu.Unlock()
	hold := wait
	if f.opts.hold > 0 {
		hold = f.opts.hold
	}
	timer := time.NewTimer(hold)
	defer timer.Stop()
	waiting := false
	defer func() {
		if waiting {
			f.mu.Lock()
			f.waitingNow--
			f.mu.Unlock()
		}
	}()
	for {
		f.mu.Lock()
		n := min(limit, len(f.queue))
		got := append([]fakeMsg(nil), f.queue[:n]...)
		f.queue = f.queue[n:]
		for i := range got {
			f.nextRcpt++
			got[i].receipt = fmt.Sprintf("R%d.%s", f.nextRcpt, got[i].id)
			f.receipts[got[i].receipt] = 0
		}
		arrived := f.arrived
		if len(got) == 0 && !waiting {
			waiting = true
			f.waitingNow++
			f.maxWaiting = max(f.maxWaiting, f.waitingNow)
		}
		f.mu.Unlock()
		if len(got) > 0 {
			f.answer(w, got)
			poke(f.handedOut)
			return
		}
		select {
		case <-arrived:
		case <-timer.C:
			f.answer(w, nil)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// hasGroup reports whether group may pull; f.mu must be held.
func (f *fakePull) hasGroup(group string) bool {
	if f.opts.existing {
		return group == f.opts.group
	}
	for _, s := range f.subs {
		if s.group == group {
			return true
		}
	}
	return false
}

func (f *fakePull) answer(w http.ResponseWriter, msgs []fakeMsg) {
	type out struct {
		MsgID    string `json:"msg_id"`
		Receipt  string `json:"receipt"`
		Attempt  int    `json:"attempt"`
		Topic    string `json:"topic"`
		Body     string `json:"body"`
		Encoding string `json:"encoding"`
	}
	ans := struct {
		Messages []out `json:"messages"`
	}{Messages: []out{}}
	for _, m := range msgs {
		o := out{MsgID: m.id, Receipt: m.receipt, Attempt: 1, Topic: f.topic, Body: string(m.body), Encoding: "utf8"}
		if f.opts.base64 {
			o.Body, o.Encoding = base64.StdEncoding.EncodeToString(m.body), "base64"
		}
		ans.Messages = append(ans.Messages, o)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(ans)
}

// ack settles receipts all or none, as the broker does: one unknown or
// already acked refuses the request.
func (f *fakePull) ack(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Receipts []string `json:"receipts"`
	}
	err := json.NewDecoder(r.Body).Decode(&req)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil || len(req.Receipts) == 0 || !f.hasGroup(r.PathValue("group")) {
		f.problemf("ack by %q: %v, %d receipts", r.PathValue("group"), err, len(req.Receipts))
	}
	for _, rc := range req.Receipts {
		n, ok := f.receipts[rc]
		if !ok || n > 0 {
			f.problemf("ack of receipt %q: issued %v, acked %d times before", rc, ok, n)
			writeProblem(w, http.StatusConflict, "stale_receipt", "")
			return
		}
	}
	for _, rc := range req.Receipts {
		f.receipts[rc]++
	}
	w.Header().Set("Content-Type", "application/json")
	results := make([]map[string]string, len(req.Receipts))
	for i, rc := range req.Receipts {
		results[i] = map[string]string{"receipt": rc, "status": "acked"}
	}
	json.NewEncoder(w).Encode(map[string]any{"results": results})
}

// check fails tb if the tool broke a promise, left its subscription
// behind or, with allAcked, left a receipt unacked.
func (f *fakePull) check(tb testing.TB, allAcked bool) {
	tb.Helper()
	f.fakeAPI.check(tb)
	if !allAcked {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	unacked := 0
	for _, n := range f.receipts {
		if n != 1 {
			unacked++
		}
	}
	if unacked > 0 {
		tb.Errorf("%d of %d receipts issued were not acked", unacked, len(f.receipts))
	}
}

func (f *fakePull) counts() (published int64, receipts, created, maxWaiting int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.published, len(f.receipts), f.created, f.maxWaiting
}

func pullArgs(url string, extra ...string) []string {
	return append([]string{"--url", url, "--interval", "0", "--conns", "4", "--pullers", "4", "--wait", "2s"}, extra...)
}

func TestPullCounts(t *testing.T) {
	tests := []struct {
		name        string
		opts        fakePullOpts
		args        []string
		wantMissing int64
		wantDups    int64
		wantErr     error
		wantReport  string
	}{
		{name: "open loop", args: []string{"--rate", "400"}, wantReport: "every message arrived"},
		{name: "closed loop", args: []string{"--max", "8"}},
		{name: "batches", opts: fakePullOpts{batch: true}, args: []string{"--batch", "8", "--rate", "800"}},
		{name: "base64 bodies", opts: fakePullOpts{base64: true}, args: []string{"--rate", "400"}},
		{name: "duplicate", opts: fakePullOpts{dup: 5}, args: []string{"--rate", "400"}, wantDups: 1, wantReport: "duplicates 1"},
		{name: "dropped", opts: fakePullOpts{drop: 5}, args: []string{"--rate", "400", "--drain", "300ms"},
			wantMissing: 1, wantErr: ErrPullCheck, wantReport: "MISSING     1 of"},
		{name: "existing group", opts: fakePullOpts{existing: true, group: "workers"}, args: []string{"--rate", "400", "--group", "workers"},
			wantReport: "already has a subscription"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakePull(t, tt.opts)
			out, err := runPullTool(t, t.Context(), pullArgs(f.srv.URL, append([]string{"--duration", "250ms"}, tt.args...)...)...)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Pull = %v, want %v\n%s", err, tt.wantErr, out)
			}
			f.check(t, true)
			pub, receipts, _, _ := f.counts()
			if pub < 40 {
				t.Fatalf("the fake broker got %d publishes, want at least 40", pub)
			}
			if got := reportInt(t, out, "published", ""); got != pub {
				t.Errorf("report: %d acknowledged, broker got %d", got, pub)
			}
			wantReceipts := pub - tt.wantMissing + tt.wantDups
			if got := reportInt(t, out, "received", "total"); got != wantReceipts {
				t.Errorf("received total %d, want %d", got, wantReceipts)
			}
			if got := reportInt(t, out, "received", "unique"); got != pub-tt.wantMissing {
				t.Errorf("unique %d, want %d", got, pub-tt.wantMissing)
			}
			if got := reportInt(t, out, "received", "duplicates"); got != tt.wantDups {
				t.Errorf("duplicates %d, want %d", got, tt.wantDups)
			}
			if got := reportInt(t, out, "received", "missing"); got != tt.wantMissing {
				t.Errorf("missing %d, want %d", got, tt.wantMissing)
			}
			if got := reportInt(t, out, "acked", ""); got != int64(receipts) || got != wantReceipts {
				t.Errorf("acked %d, broker issued %d receipts, want %d", got, receipts, wantReceipts)
			}
			if p99 := reportDur(t, out, "latency", "p99"); p99 <= 0 || p99 > time.Second {
				t.Errorf("latency p99 %s, want (0, 1s]", p99)
			}
			if tt.wantReport != "" && !strings.Contains(out, tt.wantReport) {
				t.Errorf("report lacks %q:\n%s", tt.wantReport, out)
			}
		})
	}
}

func TestPullProgressLines(t *testing.T) {
	f := newFakePull(t, fakePullOpts{})
	out, err := runPullTool(t, t.Context(), "--url", f.srv.URL, "--interval", "100ms", "--rate", "200",
		"--duration", "450ms", "--conns", "2", "--pullers", "2", "--wait", "1s")
	if err != nil {
		t.Fatalf("Pull: %v\n%s", err, out)
	}
	f.check(t, true)
	lines := regexp.MustCompile(`(?m)^ +[0-9.]+m?s  publish +\d+ published/s +\d+ received/s +\d+ acked/s  p99 \S+ +owed \d+$`).FindAllString(out, -1)
	if len(lines) < 3 {
		t.Errorf("%d progress lines in a 450ms run at 100ms intervals, want >= 3:\n%s", len(lines), out)
	}
}

func TestPullIdle(t *testing.T) {
	f := newFakePull(t, fakePullOpts{})
	start := time.Now()
	out, err := runPullTool(t, t.Context(), "--url", f.srv.URL, "--idle", "50", "--wait", "2s", "--wakeups", "5",
		"--interval", "100ms", "--broker-pid", strconv.Itoa(os.Getpid()))
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Pull: %v\n%s", err, out)
	}
	f.check(t, true)
	if got := reportInt(t, out, "returned", "on time"); got != 50 {
		t.Errorf("on time %d, want 50:\n%s", got, out)
	}
	for _, label := range []string{"early", "late", "with messages", "failed"} {
		if got := reportInt(t, out, "returned", label); got != 0 {
			t.Errorf("%s %d, want 0", label, got)
		}
	}
	if held := reportDur(t, out, "held", "min"); held < 2*time.Second-idleSlack || held > 2*time.Second+idleSlack {
		t.Errorf("held min %s, want 2s ± 1s", held)
	}
	if got := reportInt(t, out, "wake-up", "received"); got != 5 {
		t.Errorf("wake-ups received %d, want 5:\n%s", got, out)
	}
	// The fake wakes its polls through a channel, so a wake-up is two
	// loopback requests.
	if p99 := reportDur(t, out, "wake-up", "p99"); p99 <= 0 || p99 > time.Second {
		t.Errorf("wake-up p99 %s, want (0, 1s]", p99)
	}
	if !regexp.MustCompile(`(?m)^  broker      RSS before \S+ \S+  while held max \S+ \S+ .*pid \d+, [1-9]\d* sample`).MatchString(out) {
		t.Errorf("no broker RSS line:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^ +[0-9.]+m?s  hold `).MatchString(out) || !regexp.MustCompile(`(?m)^ +[0-9.]+m?s  wake-up [1-5]/5 `).MatchString(out) {
		t.Errorf("no progress lines for the hold and the wake-ups:\n%s", out)
	}
	pub, receipts, _, maxWaiting := f.counts()
	if pub != 5 || receipts != 5 {
		t.Errorf("fake got %d publishes and issued %d receipts, want 5 and 5", pub, receipts)
	}
	// All 50 must have been held at once: a transport with fewer
	// connections would queue them and they would come back late.
	if maxWaiting != 50 {
		t.Errorf("the fake held at most %d polls at once, want 50", maxWaiting)
	}
	if took > 6*time.Second {
		t.Errorf("idle run took %s, want about wait + 5 wake-ups", took)
	}
}

func TestPullIdleEarlyIsFlagged(t *testing.T) {
	f := newFakePull(t, fakePullOpts{hold: 100 * time.Millisecond})
	out, err := runPullTool(t, t.Context(), "--url", f.srv.URL, "--idle", "10", "--wait", "3s", "--wakeups", "0", "--interval", "0")
	if !errors.Is(err, ErrPullCheck) {
		t.Fatalf("Pull = %v, want ErrPullCheck\n%s", err, out)
	}
	f.check(t, true)
	if got := reportInt(t, out, "returned", "early"); got != 10 {
		t.Errorf("early %d, want 10:\n%s", got, out)
	}
	if got := reportInt(t, out, "returned", "on time"); got != 0 {
		t.Errorf("on time %d, want 0", got)
	}
}

func TestPullInterrupt(t *testing.T) {
	f := newFakePull(t, fakePullOpts{})
	out := runInterrupted(t, runPullTool, f.handedOut, 5, pullArgs(f.srv.URL, "--duration", "30s", "--rate", "500")...)
	if strings.Contains(out, "MISSING") {
		t.Errorf("want no verdict after the interrupt:\n%s", out)
	}
	f.check(t, false) // the subscription is deleted even after the interrupt
	if _, _, created, _ := f.counts(); created != 1 {
		t.Errorf("created %d subscriptions, want 1", created)
	}
}

func TestPullFlags(t *testing.T) {
	f := newFakePull(t, fakePullOpts{})
	refusesFlags(t, runPullTool, []string{"--url", f.srv.URL, "--interval", "0", "--wait", "2s"}, []flagCase{
		{"no duration", []string{"--duration", "0"}},
		{"pullers 0", []string{"--pullers", "0"}},
		{"pullers too many", []string{"--pullers", "1001"}},
		{"max 0", []string{"--max", "0"}},
		{"max over the broker's", []string{"--max", "257"}},
		{"wait over 30s", []string{"--wait", "31s"}},
		{"negative wait", []string{"--wait", "-1s"}},
		{"visibility under 1s", []string{"--visibility", "500ms"}},
		{"batch over the broker's", []string{"--batch", "1001"}},
		{"batch bytes over the broker's", []string{"--batch", "1000", "--size", "8192"}},
		{"size below the stamp", []string{"--size", strconv.Itoa(stampLen - 1)}},
		{"negative rate", []string{"--rate", "-1"}},
		{"negative drain", []string{"--drain", "-1s"}},
		{"bad group", []string{"--group", "-x"}},
		{"bad topic", []string{"--topic", "a b"}},
		{"wakeups without idle", []string{"--wakeups", "3"}},
		{"idle too many", []string{"--idle", "10001"}},
		{"idle with a short wait", []string{"--idle", "10", "--wait", "1s"}},
		{"idle with rate", []string{"--idle", "10", "--rate", "5"}},
		{"idle with pullers", []string{"--idle", "10", "--pullers", "2"}},
		{"negative pid", []string{"--broker-pid", "-3"}},
		{"pid of nothing", []string{"--broker-pid", strconv.Itoa(1 << 23)}},
		{"pid of nothing, idle", []string{"--idle", "5", "--broker-pid", strconv.Itoa(1 << 23)}},
		{"stray argument", []string{"extra"}},
		{"bad scheme", []string{"--url", "ftp://127.0.0.1"}},
	})
	f.check(t, true)
	if pub, _, created, _ := f.counts(); pub != 0 || created != 0 {
		t.Errorf("bad flags still published %d messages and created %d subscriptions", pub, created)
	}
	checkHelp(t, runPullTool, "postbus bench pull --idle 1000")
}

func TestPullRefusesRemote(t *testing.T) {
	refusesRemote(t, runPullTool, "bench pull", "http://192.0.2.1:8080", "--duration", "1s")
}

func TestPullStillArriving(t *testing.T) {
	const start = int64(1e12)
	tests := []struct {
		name   string
		lastAt time.Duration // after start; 0 = nothing received
		want   bool
	}{
		{"nothing received", 0, false},
		{"in the last second of the drain", 11500 * time.Millisecond, true},
		{"early in the drain", 3 * time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &pullResult{startNS: start, pubElapsed: 2 * time.Second, drainTook: 10 * time.Second}
			if tt.lastAt > 0 {
				r.lastAt = start + int64(tt.lastAt)
			}
			if got := r.stillArriving(); got != tt.want {
				t.Errorf("stillArriving = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBodyStamp(t *testing.T) {
	body := make([]byte, 100)
	copy(body, strings.Repeat("x", 100))
	putStamp(body, 1234567890123, 0, "abcdefgh")
	tests := []struct {
		name string
		msg  pulledMsg
		ok   bool
	}{
		{"utf8", pulledMsg{Body: string(body), Encoding: "utf8"}, true},
		{"no encoding", pulledMsg{Body: string(body)}, true},
		{"base64", pulledMsg{Body: base64.StdEncoding.EncodeToString(body), Encoding: "base64"}, true},
		{"base64 of the stamp alone", pulledMsg{Body: base64.StdEncoding.EncodeToString(body[:stampLen]), Encoding: "base64"}, true},
		{"base64 short", pulledMsg{Body: base64.StdEncoding.EncodeToString(body[:stampLen-1]), Encoding: "base64"}, false},
		{"base64 broken", pulledMsg{Body: "!!!!" + base64.StdEncoding.EncodeToString(body), Encoding: "base64"}, false},
		{"unknown encoding", pulledMsg{Body: string(body), Encoding: "gzip"}, false},
		{"short", pulledMsg{Body: string(body[:stampLen-1])}, false},
		{"no stamp", pulledMsg{Body: strings.Repeat("y", 100)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var scratch [stampScratch]byte
			st, ok := bodyStamp(&tt.msg, &scratch)
			if ok != tt.ok {
				t.Fatalf("bodyStamp ok = %v, want %v", ok, tt.ok)
			}
			if ok && (st.sent != 1234567890123 || string(st.run) != "abcdefgh") {
				t.Errorf("stamp %d %q, want 1234567890123 \"abcdefgh\"", st.sent, st.run)
			}
		})
	}
}

func FuzzBodyStamp(f *testing.F) {
	body := make([]byte, stampLen+8)
	putStamp(body, 42, 7, "00000001")
	f.Add(string(body), "utf8")
	f.Add(base64.StdEncoding.EncodeToString(body), "base64")
	f.Add("", "base64")
	f.Fuzz(func(t *testing.T, b, enc string) {
		var scratch [stampScratch]byte
		m := pulledMsg{Body: b, Encoding: enc}
		st, ok := bodyStamp(&m, &scratch)
		if ok && (st.sent < 0 || len(st.run) != runLen) {
			t.Errorf("accepted a stamp with sent %d, run %q", st.sent, st.run)
		}
	})
}

// TestPullAnswerShapes checks what the decoder takes for a pull answer:
// an empty list is an answer, a missing or null one is not.
func TestPullAnswerShapes(t *testing.T) {
	tests := []struct {
		name, body string
		status     int
		want       int // messages; -1: an error
		wantKey    string
	}{
		{"empty", `{"messages":[]}`, 200, 0, ""},
		{"two", `{"messages":[{"msg_id":"a","receipt":"r1","body":"x"},{"msg_id":"b","receipt":"r2","body":"y"}]}`, 200, 2, ""},
		{"null", `{"messages":null}`, 200, -1, "pull bad_answer"},
		{"missing", `{}`, 200, -1, "pull bad_answer"},
		{"not json", `<html>`, 200, -1, "pull bad_answer"},
		{"problem", `{"code":"invalid_pull","title":"Bad Request","detail":"max"}`, 400, -1, "pull 400 invalid_pull"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			e := &pullEnv{pullClient: srv.Client(), clock: newClock(), pullURL: srv.URL}
			var buf bytes.Buffer
			msgs, at, err := e.pull(t.Context(), &buf)
			if tt.want < 0 {
				if key, _ := errKey(err); err == nil || key != tt.wantKey {
					t.Fatalf("pull = %d messages, %v (key %q), want key %q", len(msgs), err, key, tt.wantKey)
				}
				return
			}
			if err != nil || len(msgs) != tt.want || at <= 0 {
				t.Fatalf("pull = %d messages at %d, %v; want %d", len(msgs), at, err, tt.want)
			}
		})
	}
}

// BenchmarkPullRecord measures the tool's own cost per pull answer:
// decoding it and counting its messages, the ceiling it puts on any broker.
func BenchmarkPullRecord(b *testing.B) {
	for _, limit := range []int{1, 32, 256} {
		for _, size := range []int{256, 4096} {
			b.Run(fmt.Sprintf("max=%d/size=%d", limit, size), func(b *testing.B) {
				clk := newClock()
				run := padRun("bench")
				bodies := newBodySource(size)
				tally := newPullTally(run)
				var answers [][]byte
				for a := range 64 {
					var sb strings.Builder
					sb.WriteString(`{"messages":[`)
					for i := range limit {
						if i > 0 {
							sb.WriteByte(',')
						}
						body := make([]byte, size)
						copy(body, bodies.at(int64(a*limit+i)))
						putStamp(body, clk.now(), 0, run)
						// A fresh id per answer and round would be truer,
						// but the set's growth is not what is measured.
						fmt.Fprintf(&sb, `{"msg_id":"M%d-%d","receipt":"R%d-%d","attempt":1,"topic":"t","body":%q,"encoding":"utf8"}`,
							a, i, a, i, body)
					}
					sb.WriteString(`]}`)
					answers = append(answers, []byte(sb.String()))
				}
				b.SetBytes(int64(len(answers[0])))
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					var ans struct {
						Messages []pulledMsg `json:"messages"`
					}
					if err := json.Unmarshal(answers[i%len(answers)], &ans); err != nil {
						b.Fatal(err)
					}
					tally.record(ans.Messages, clk.now())
					i++
				}
				b.ReportMetric(float64(b.N*limit)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}
