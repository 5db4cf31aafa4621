package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakePush is a broker stand-in for `bench push`: it creates topics and
// subscriptions, and pushes every published message to each subscription's
// URL from a few delivery goroutines, the way the real dispatcher does, with
// faults on demand.
type fakePush struct {
	fakeAPI
	opts       fakePushOpts
	queue      chan fakeDelivery
	stop       chan struct{} // closed at cleanup: delivery goroutines and timers end
	wg         sync.WaitGroup
	firstDeliv chan struct{} // gets a value per delivery answered 200, never blocks

	// f.mu guards the fields below.
	subRequests int // subscription creates asked for, refused ones included
	published   int64
	firstPub    time.Time // when the first publish arrived
	deliverAts  []time.Time
	delivered   int64 // deliveries answered 200
}

type fakePushOpts struct {
	drop      int64         // never deliver the drop-th message (1-based); 0: none
	dropAll   bool          // deliver nothing, as a broker refusing private webhooks
	dup       int64         // deliver the dup-th message twice to each subscription
	early     time.Duration // deliver delayed messages this much before they are due
	failSubAt int           // answer the failSubAt-th subscription create (1-based) 400
}

type fakeDelivery struct {
	url, id string
	body    []byte
}

func newFakePush(tb testing.TB, o fakePushOpts) *fakePush {
	tb.Helper()
	f := &fakePush{
		opts:  o,
		queue: make(chan fakeDelivery, 1024), stop: make(chan struct{}),
		firstDeliv: make(chan struct{}, 1<<16),
	}
	f.init(tb, "bench-push")
	groupRE := regexp.MustCompile(`^bench-[0-9a-z]{8}-[0-9]+$`)
	f.mux.HandleFunc("POST /v1/subscriptions", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Group       string `json:"group"`
			Topic       string `json:"topic"`
			URL         string `json:"url"`
			MaxInFlight int    `json:"max_in_flight"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		err := dec.Decode(&req)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.subRequests++
		if f.subRequests == f.opts.failSubAt {
			writeProblem(w, http.StatusBadRequest, "invalid_subscription", "webhook url refused")
			return
		}
		switch {
		case err != nil:
			f.problemf("subscription body: %v", err)
		case !groupRE.MatchString(req.Group) || req.Topic != f.topic || req.MaxInFlight != 32:
			f.problemf("subscription %+v", req)
		case !strings.HasPrefix(req.URL, "http://127.0.0.1:"):
			f.problemf("subscription url %q", req.URL)
		}
		for _, s := range f.subs {
			if s.group == req.Group || s.url == req.URL {
				f.problemf("subscription %+v shares group or url with %+v", req, s)
			}
		}
		f.addSub(w, req.Group, req.URL)
	})
	f.mux.HandleFunc("POST /v1/topics/{topic}/messages", f.publish)
	f.serve()
	for range 8 {
		f.wg.Go(f.deliverLoop)
	}
	tb.Cleanup(func() {
		close(f.stop)
		f.wg.Wait()
	})
	return f
}

func (f *fakePush) publish(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var at time.Time
	if v := r.Header.Get("Postbus-Deliver-At"); v != "" && err == nil {
		at, err = time.Parse(time.RFC3339Nano, v)
	}
	f.mu.Lock()
	if err != nil || r.PathValue("topic") != f.topic {
		f.problemf("publish to %q: %v", r.PathValue("topic"), err)
	}
	f.published++
	n := f.published
	if n == 1 {
		f.firstPub = time.Now()
	}
	if !at.IsZero() {
		f.deliverAts = append(f.deliverAts, at)
	}
	var urls []string
	for _, s := range f.subs {
		urls = append(urls, s.url)
	}
	f.mu.Unlock()
	id := fmt.Sprintf("M%06d", n)
	copies := 1
	switch {
	case f.opts.dropAll || n == f.opts.drop:
		copies = 0
	case n == f.opts.dup:
		copies = 2
	}
	for _, u := range urls {
		for range copies {
			d := fakeDelivery{url: u, id: id, body: body}
			if at.IsZero() {
				f.enqueue(d)
			} else {
				time.AfterFunc(time.Until(at)-f.opts.early, func() { f.enqueue(d) })
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"msg_id":%q,"topic":%q,"queue_id":0,"queue_offset":%d}`, id, f.topic, n)
}

func (f *fakePush) enqueue(d fakeDelivery) {
	select {
	case f.queue <- d:
	case <-f.stop:
	}
}

// deliverLoop POSTs queued deliveries with the broker's headers.
func (f *fakePush) deliverLoop() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-f.stop
		cancel()
	}()
	for {
		var d fakeDelivery
		select {
		case d = <-f.queue:
		case <-f.stop:
			return
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url, bytes.NewReader(d.body))
		if err != nil {
			f.tb.Error(err)
			return
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Postbus-Message-Id", d.id)
		req.Header.Set("Postbus-Attempt", "1")
		req.Header.Set("webhook-id", d.id)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			continue // the sink has closed: the run is over
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		f.mu.Lock()
		if resp.StatusCode != http.StatusOK {
			f.problemf("delivery answered %s", resp.Status)
		} else {
			f.delivered++
		}
		f.mu.Unlock()
		poke(f.firstDeliv)
	}
}

func (f *fakePush) publishedCount() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.published
}

func pushArgs(url string, extra ...string) []string {
	return append([]string{"--url", url, "--interval", "0", "--conns", "4"}, extra...)
}

func TestPushCountsDeliveries(t *testing.T) {
	tests := []struct {
		name         string
		opts         fakePushOpts
		subs         int
		wantMissing  int64 // per run, all subscriptions
		wantDups     int64
		wantErr      error
		wantInReport string
	}{
		{name: "clean", subs: 1, wantInReport: "every delivery arrived"},
		{name: "fan-out", subs: 3, wantInReport: "per subscription"},
		{name: "dropped", opts: fakePushOpts{drop: 5}, subs: 1, wantMissing: 1, wantErr: ErrDelivery, wantInReport: "MISSING     1 of"},
		{name: "dropped fan-out", opts: fakePushOpts{drop: 5}, subs: 2, wantMissing: 2, wantErr: ErrDelivery},
		{name: "duplicated", opts: fakePushOpts{dup: 5}, subs: 1, wantDups: 1, wantInReport: "duplicates 1"},
		{name: "nothing delivered", opts: fakePushOpts{dropAll: true}, subs: 1, wantMissing: -1, wantErr: ErrDelivery,
			wantInReport: "does the broker allow private webhooks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakePush(t, tt.opts)
			out, err := runPushTool(t, t.Context(), pushArgs(f.srv.URL, "--rate", "200", "--duration", "250ms",
				"--drain", "400ms", "--subscriptions", strconv.Itoa(tt.subs))...)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Push = %v, want %v\n%s", err, tt.wantErr, out)
			}
			f.check(t)
			pub := f.publishedCount()
			if pub < 40 {
				t.Fatalf("the fake broker got %d publishes, want ~50", pub)
			}
			subs := int64(tt.subs)
			wantMissing := tt.wantMissing
			if wantMissing < 0 {
				wantMissing = pub * subs
			}
			if got := reportInt(t, out, "published", ""); got != pub {
				t.Errorf("report: %d acknowledged, broker got %d", got, pub)
			}
			if got := reportInt(t, out, "deliveries", "expected"); got != pub*subs {
				t.Errorf("expected %d, want %d × %d", got, pub, subs)
			}
			if got := reportInt(t, out, "deliveries", "missing"); got != wantMissing {
				t.Errorf("missing %d, want %d", got, wantMissing)
			}
			if got := reportInt(t, out, "deliveries", "duplicates"); got != tt.wantDups {
				t.Errorf("duplicates %d, want %d", got, tt.wantDups)
			}
			if got, want := reportInt(t, out, "deliveries", "received"), pub*subs-wantMissing+tt.wantDups; got != want {
				t.Errorf("received %d, want %d", got, want)
			}
			if !strings.Contains(out, tt.wantInReport) {
				t.Errorf("report lacks %q:\n%s", tt.wantInReport, out)
			}
			if wantMissing == 0 {
				// Deliveries are immediate here, so the latencies are
				// those of two loopback requests.
				if p99 := reportDur(t, out, "latency", "p99"); p99 <= 0 || p99 > time.Second {
					t.Errorf("latency p99 %s, want (0, 1s]", p99)
				}
			}
		})
	}
}

func TestPushBaseline(t *testing.T) {
	f := newFakePush(t, fakePushOpts{})
	out, err := runPushTool(t, t.Context(), pushArgs(f.srv.URL, "--duration", "200ms", "--baseline", "--size", "100")...)
	if err != nil {
		t.Fatalf("Push: %v\n%s", err, out)
	}
	f.check(t)
	m := regexp.MustCompile(`push ([0-9.]+) deliveries/s overall  baseline ([0-9.]+) deliveries/s  push/baseline ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no push/baseline line:\n%s", out)
	}
	push, _ := strconv.ParseFloat(m[1], 64)
	base, _ := strconv.ParseFloat(m[2], 64)
	ratio, _ := strconv.ParseFloat(m[3], 64)
	if push <= 0 || base <= 0 || ratio <= 0 {
		t.Errorf("push %v base %v ratio %v: want all > 0", push, base, ratio)
	}
	if want := push / base; ratio < want*0.99-0.001 || ratio > want*1.01+0.001 {
		t.Errorf("ratio %v, want push/base = %v", ratio, want)
	}
	if got := reportInt(t, out, "published", ""); got != f.publishedCount() {
		t.Errorf("report %d published, broker got %d: the baseline must not reach the broker", got, f.publishedCount())
	}
	if m := regexp.MustCompile(`(?m)^  deliveries  (\d+) in \S+, 0 failed`).FindStringSubmatch(out); m == nil || m[1] == "0" {
		t.Errorf("baseline section lacks its deliveries, or some failed:\n%s", out)
	}
}

func TestPushDelayed(t *testing.T) {
	t.Run("on time", func(t *testing.T) {
		f := newFakePush(t, fakePushOpts{})
		start := time.Now()
		out, err := runPushTool(t, t.Context(), pushArgs(f.srv.URL, "--delayed", "40", "--window", "2s", "--drain", "1s")...)
		if err != nil {
			t.Fatalf("Push: %v\n%s", err, out)
		}
		end := time.Now()
		f.check(t)
		if got := reportInt(t, out, "early", ""); got != 0 {
			t.Errorf("early %d, want 0", got)
		}
		if got := reportInt(t, out, "deliveries", "missing"); got != 0 {
			t.Errorf("missing %d, want 0", got)
		}
		// The fake fires a timer at each deliver-at and POSTs at once.
		// Upper bounds are loose: a loaded CI machine (-race, 2 cores)
		// delays the fake's deliveries; what must hold exactly is that
		// nothing is early or missing.
		if late := reportDur(t, out, "lateness", "max"); late > 3*time.Second {
			t.Errorf("max lateness %s, want <= 3s", late)
		}
		if late := reportDur(t, out, "lateness", "p50"); late > time.Second {
			t.Errorf("p50 lateness %s, want <= 1s", late)
		}
		if took := end.Sub(start); took < 1*time.Second || took > 20*time.Second {
			t.Errorf("run took %s: want it to end soon after the last deliver-at of a 2s window", took)
		}
		f.mu.Lock()
		ats := append([]time.Time(nil), f.deliverAts...)
		firstPub := f.firstPub
		f.mu.Unlock()
		if len(ats) != 40 {
			t.Fatalf("%d messages with Postbus-Deliver-At, want 40", len(ats))
		}
		// The tool's window opens after this test's start and before its
		// first publish arrives, however long a loaded machine takes
		// between the two.
		var firstHalf int
		for _, at := range ats {
			if at.Before(start) || at.After(firstPub.Add(2*time.Second+time.Millisecond)) {
				t.Errorf("deliver-at %s outside the window [%s, first publish %s +2s]", at.Format(time.RFC3339Nano),
					start.Format(time.RFC3339Nano), firstPub.Format(time.RFC3339Nano))
			}
			if at.Nanosecond()%int(time.Millisecond) != 0 {
				t.Errorf("deliver-at %s is not whole milliseconds", at.Format(time.RFC3339Nano))
			}
			if at.Before(start.Add(time.Second)) {
				firstHalf++
			}
		}
		// Uniform: 40 draws all in one half has odds 2^-39.
		if firstHalf == 0 || firstHalf == len(ats) {
			t.Errorf("%d of %d deliver-at times in the first half of the window", firstHalf, len(ats))
		}
	})
	t.Run("early is flagged", func(t *testing.T) {
		f := newFakePush(t, fakePushOpts{early: 300 * time.Millisecond})
		out, err := runPushTool(t, t.Context(), pushArgs(f.srv.URL, "--delayed", "20", "--window", "1s", "--drain", "500ms")...)
		if !errors.Is(err, ErrDelivery) {
			t.Fatalf("Push = %v, want ErrDelivery\n%s", err, out)
		}
		f.check(t)
		if got := reportInt(t, out, "early", ""); got < 1 {
			t.Errorf("early %d, want >= 1", got)
		}
		if !strings.Contains(out, "EARLY ") {
			t.Errorf("early deliveries not flagged:\n%s", out)
		}
	})
}

func TestPushInterrupt(t *testing.T) {
	f := newFakePush(t, fakePushOpts{})
	out := runInterrupted(t, runPushTool, f.firstDeliv, 5, pushArgs(f.srv.URL, "--duration", "30s", "--rate", "500", "--baseline")...)
	if strings.Contains(out, "baseline ") {
		t.Errorf("want no baseline run after the interrupt:\n%s", out)
	}
	f.check(t) // the subscriptions are deleted even after the interrupt
}

func TestPushSubscriptionRefused(t *testing.T) {
	f := newFakePush(t, fakePushOpts{failSubAt: 2})
	out, err := runPushTool(t, t.Context(), pushArgs(f.srv.URL, "--duration", "100ms", "--subscriptions", "3")...)
	if err == nil || !strings.Contains(err.Error(), "webhook url refused") {
		t.Fatalf("Push = %v, want the refusal\n%s", err, out)
	}
	if n := f.publishedCount(); n != 0 {
		t.Errorf("published %d messages without the subscriptions", n)
	}
	f.check(t) // the first subscription is deleted
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.created != 1 {
		t.Errorf("created %d subscriptions before the refusal, want 1", f.created)
	}
}

func TestPushFlags(t *testing.T) {
	f := newFakePush(t, fakePushOpts{})
	refusesFlags(t, runPushTool, pushArgs(f.srv.URL, "--duration", "100ms"), []flagCase{
		{"no duration", []string{"--duration", "0"}},
		{"subscriptions 0", []string{"--subscriptions", "0"}},
		{"subscriptions too many", []string{"--subscriptions", "101"}},
		{"max in flight", []string{"--max-in-flight", "1025"}},
		{"batch too large", []string{"--batch", "1001"}},
		{"negative batch", []string{"--batch", "-1"}},
		{"batch above max in flight", []string{"--batch", "100", "--max-in-flight", "50"}},
		{"batch wait without batch", []string{"--batch-wait", "10ms"}},
		{"backlog with delayed", []string{"--backlog", "--delayed", "10"}},
		{"batch wait too long", []string{"--batch", "10", "--batch-wait", "11s"}},
		{"size below the stamp", []string{"--size", strconv.Itoa(stampLen - 1)}},
		{"negative rate", []string{"--rate", "-1"}},
		{"negative drain", []string{"--drain", "-1s"}},
		{"delayed with rate", []string{"--delayed", "10", "--rate", "5"}},
		{"delayed with duration", []string{"--delayed", "10", "--duration", "5s"}},
		{"delayed with baseline", []string{"--delayed", "10", "--baseline"}},
		{"window without delayed", []string{"--window", "1m"}},
		{"window too short", []string{"--delayed", "10", "--window", "10ms"}},
		{"delayed too many", []string{"--delayed", "10000001"}},
		{"bad topic", []string{"--topic", "a b"}},
		{"negative pid", []string{"--broker-pid", "-3"}},
		{"pid of nothing", []string{"--broker-pid", strconv.Itoa(1 << 23)}},
		{"stray argument", []string{"extra"}},
		{"bad scheme", []string{"--url", "ftp://127.0.0.1"}},
	})
	f.check(t)
	if n := f.publishedCount(); n != 0 {
		t.Errorf("bad flags still published %d messages", n)
	}
	checkHelp(t, runPushTool, "postbus bench push --delayed")
}

func TestPushRefusesRemote(t *testing.T) {
	refusesRemote(t, runPushTool, "bench push", "http://192.0.2.1:8080", "--duration", "1s")
}
