package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestStampRoundTrip(t *testing.T) {
	tests := []struct {
		name            string
		sent, deliverAt int64
		run             string
	}{
		{"zero", 0, 0, "00000000"},
		{"now", time.Now().UnixNano(), 0, "abc12345"},
		{"delayed", 1767225600123456789, 1767225900000000000, padRun("x")},
		{"max", math.MaxInt64, math.MaxInt64, "zzzzzzzz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := bytes.Repeat([]byte{'~'}, stampLen+10)
			putStamp(body, tt.sent, tt.deliverAt, tt.run)
			if body[stampLen] != '~' {
				t.Fatalf("putStamp wrote past stampLen: %q", body)
			}
			st, ok := parseStamp(body)
			if !ok || st.sent != tt.sent || st.deliverAt != tt.deliverAt || string(st.run) != tt.run {
				t.Fatalf("parseStamp(%q) = %+v, %v; want %d %d %s", body, st, ok, tt.sent, tt.deliverAt, tt.run)
			}
		})
	}
}

func TestParseStampRefuses(t *testing.T) {
	good := make([]byte, stampLen)
	putStamp(good, 1, 2, "runrunru")
	mutate := func(i int, c byte) string {
		b := bytes.Clone(good)
		b[i] = c
		return string(b)
	}
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"short", string(good[:stampLen-1])},
		{"magic", mutate(0, 'x')},
		{"letter in sent", mutate(len(stampMagic)+3, 'a')},
		{"letter in deliver-at", mutate(len(stampMagic)+stampDigits+5, '-')},
		{"no space after sent", mutate(len(stampMagic)+stampDigits, '0')},
		{"no space after deliver-at", mutate(len(stampMagic)+2*stampDigits+1, '0')},
		{"no space after run", mutate(stampLen-1, 'x')},
		{"overflow", stampMagic + "9999999999999999999 0000000000000000000 runrunru "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if st, ok := parseStamp([]byte(tt.in)); ok {
				t.Errorf("parseStamp(%q) = %+v, want refused", tt.in, st)
			}
		})
	}
	if _, ok := parseStamp(good); !ok {
		t.Fatal("the unmutated stamp is refused: the cases above prove nothing")
	}
}

func FuzzParseStamp(f *testing.F) {
	good := make([]byte, stampLen+4)
	putStamp(good, time.Now().UnixNano(), 5, "abcdefgh")
	f.Add(good)
	f.Add([]byte(stampMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, ok := parseStamp(b)
		if !ok {
			return
		}
		// What is accepted is exactly what putStamp writes.
		again := make([]byte, stampLen)
		putStamp(again, st.sent, st.deliverAt, string(st.run))
		if !bytes.Equal(again, b[:stampLen]) {
			t.Fatalf("parseStamp(%q) = %+v, which encodes as %q", b[:stampLen], st, again)
		}
	})
}

// postSink sends one delivery the way the broker does and checks the 200.
func postSink(tb testing.TB, url, id string, body []byte) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if id != "" {
		req.Header.Set("Postbus-Message-Id", id)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("POST %s: %s, want 200", url, resp.Status)
	}
}

func TestSinkCounts(t *testing.T) {
	clk := newClock()
	const run = "testrun1"
	s, err := startSink(2, run, clk)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := func(sentAgo time.Duration, deliverAt int64, run string) []byte {
		b := bytes.Repeat([]byte{'a'}, 100)
		putStamp(b, clk.now()-int64(sentAgo), deliverAt, run)
		return b
	}
	postSink(t, s.hookURL(0), "m1", body(50*time.Millisecond, 0, run))
	postSink(t, s.hookURL(0), "m1", body(0, 0, run))                          // duplicate
	postSink(t, s.hookURL(1), "m1", body(50*time.Millisecond, 0, run))        // fan-out copy: not a duplicate
	postSink(t, s.hookURL(0), "m2", body(0, clk.now()+int64(time.Hour), run)) // an hour early
	postSink(t, s.hookURL(1), "m3", body(2*time.Second, clk.now()-int64(time.Second), run))
	// Published after its deliver-at: late from when it was sent.
	postSink(t, s.hookURL(1), "m8", body(100*time.Millisecond, clk.now()-int64(time.Second), run))
	postSink(t, s.hookURL(0), "m4", body(0, 0, "otherrun"))
	postSink(t, s.hookURL(0), "m5", []byte("short"))
	postSink(t, s.hookURL(0), "", body(0, 0, run))
	postSink(t, s.url+"/hook/2", "m6", body(0, 0, run))
	postSink(t, s.url+"/hook/x", "m7", body(0, 0, run))

	tot := s.totals()
	checks := []struct {
		name      string
		got, want int64
	}{
		{"received", tot.received, 6},
		{"unique", tot.unique, 5},
		{"duplicates", tot.dups, 1},
		{"early", tot.early, 1},
		{"foreign", tot.foreign, 2},
		{"malformed", tot.malformed, 3},
		{"latency samples", int64(tot.latency.count()), 2},
		{"lateness samples", int64(tot.lateness.count()), 2},
		{"sub 0 unique", tot.perSub[0].unique, 2},
		{"sub 0 duplicates", tot.perSub[0].dups, 1},
		{"sub 1 unique", tot.perSub[1].unique, 3},
		{"atomic unique", s.unique.Load(), 5},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if lat := tot.latency.quantile(0); lat < 50*time.Millisecond || lat > 5*time.Second {
		t.Errorf("latency min %s, want >= the 50ms the stamp says", lat)
	}
	if late := tot.lateness.maxValue(); late < time.Second || late >= 2*time.Second {
		t.Errorf("max lateness %s, want [1s, 2s): from deliver-at, not from publish", late)
	}
	if late := tot.lateness.quantile(0); late < 100*time.Millisecond || late >= time.Second {
		t.Errorf("min lateness %s, want [100ms, 1s): from publish, which came after deliver-at", late)
	}
	if tot.maxEarly < 59*time.Minute {
		t.Errorf("max early %s, want about an hour", tot.maxEarly)
	}
	if !s.complete(2) || s.complete(3) {
		t.Errorf("complete(2) = %v, complete(3) = %v; want true, false", s.complete(2), s.complete(3))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// BenchmarkSink measures the sink with the tool's own client: the ceiling
// that --baseline reports, per delivery.
func BenchmarkSink(b *testing.B) {
	for _, conns := range []int{1, 8} {
		for _, size := range []int{256, 4096} {
			b.Run(fmt.Sprintf("conns=%d/size=%d", conns, size), func(b *testing.B) {
				clk := newClock()
				s, err := startSink(1, "benchrun", clk)
				if err != nil {
					b.Fatal(err)
				}
				client := newClient(conns, 10*time.Second)
				bodies := newBodySource(size)
				hook := s.hookURL(0)
				b.ReportAllocs()
				b.SetBytes(int64(size))
				b.ResetTimer()
				var next, failed atomic.Int64
				var wg sync.WaitGroup
				for range conns {
					wg.Go(func() {
						for {
							seq := next.Add(1) - 1
							if seq >= int64(b.N) {
								return
							}
							body := make([]byte, size)
							copy(body, bodies.at(seq))
							putStamp(body, clk.now(), 0, "benchrun")
							if !postOnce(context.Background(), client, hook, body, "b"+strconv.FormatInt(seq, 10)) {
								failed.Add(1)
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				if n := s.totals().unique; failed.Load() > 0 || n != int64(b.N) {
					b.Fatalf("%d failed, %d counted of %d", failed.Load(), n, b.N)
				}
				client.CloseIdleConnections()
				s.Close()
			})
		}
	}
}

// TestSinkCountsBatches: a batched delivery counts each element, its body
// as text or base64, by its msg_id.
func TestSinkCountsBatches(t *testing.T) {
	clk := newClock()
	const run = "testrun1"
	s, err := startSink(1, run, clk)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := func(run string) []byte {
		b := bytes.Repeat([]byte{'a'}, 100)
		putStamp(b, clk.now(), 0, run)
		return b
	}
	els := []pulledMsg{
		{MsgID: "b1", Body: string(body(run)), Encoding: "utf8"},
		{MsgID: "b2", Body: base64.StdEncoding.EncodeToString(body(run)), Encoding: "base64"},
		{MsgID: "b1", Body: string(body(run)), Encoding: "utf8"}, // duplicate
		{MsgID: "b3", Body: string(body("otherrun")), Encoding: "utf8"},
		{MsgID: "", Body: string(body(run)), Encoding: "utf8"},
	}
	data, err := json.Marshal(els)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest("POST", s.hookURL(0), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Postbus-Batch-Size", fmt.Sprint(len(els)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("batch: %s, want 200", resp.Status)
	}
	tot := s.totals()
	if tot.received != 3 || tot.unique != 2 || tot.dups != 1 || tot.foreign != 1 || tot.malformed != 1 {
		t.Fatalf("received %d unique %d dups %d foreign %d malformed %d; want 3 2 1 1 1",
			tot.received, tot.unique, tot.dups, tot.foreign, tot.malformed)
	}
}
