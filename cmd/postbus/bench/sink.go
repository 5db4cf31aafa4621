package bench

import (
	"encoding/json"
	"hash/maphash"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The stamp is the fixed-size text every body of `bench push` starts with,
// so the sink can tell, from the body alone, when the message was sent and
// when it was due (see doc.go for the layout).
const (
	stampMagic  = "pb1 "
	stampDigits = 19 // any non-negative int64 in decimal
	runLen      = 8
	stampLen    = len(stampMagic) + stampDigits + 1 + stampDigits + 1 + runLen + 1
)

// stamp is a decoded body stamp. Times are unix nanoseconds; deliverAt is 0
// for a message published without Postbus-Deliver-At.
type stamp struct {
	sent      int64
	deliverAt int64
	run       []byte // aliases the decoded buffer
}

// putStamp writes the stamp into dst[:stampLen]. run must be runLen bytes
// and the times non-negative; the caller guarantees both.
func putStamp(dst []byte, sent, deliverAt int64, run string) {
	n := copy(dst, stampMagic)
	putDigits(dst[n:n+stampDigits], sent)
	n += stampDigits
	dst[n] = ' '
	n++
	putDigits(dst[n:n+stampDigits], deliverAt)
	n += stampDigits
	dst[n] = ' '
	n++
	n += copy(dst[n:n+runLen], run)
	dst[n] = ' '
}

func putDigits(dst []byte, v int64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = byte('0' + v%10)
		v /= 10
	}
}

// parseStamp decodes the start of b. It accepts exactly what putStamp
// writes and reports false for anything else, never panicking: the body
// comes from the network.
func parseStamp(b []byte) (stamp, bool) {
	if len(b) < stampLen || string(b[:len(stampMagic)]) != stampMagic {
		return stamp{}, false
	}
	b = b[len(stampMagic):]
	sent, ok1 := parseDigits(b[:stampDigits])
	at, ok2 := parseDigits(b[stampDigits+1 : 2*stampDigits+1])
	if !ok1 || !ok2 || b[stampDigits] != ' ' || b[2*stampDigits+1] != ' ' || b[2*stampDigits+2+runLen] != ' ' {
		return stamp{}, false
	}
	return stamp{sent: sent, deliverAt: at, run: b[2*stampDigits+2 : 2*stampDigits+2+runLen]}, true
}

func parseDigits(b []byte) (int64, bool) {
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0') // 19 digits fit in a uint64
	}
	if v > 1<<63-1 {
		return 0, false
	}
	return int64(v), true
}

// padRun makes a run id exactly runLen bytes, so it fits the stamp and the
// group names stay the same length from run to run.
func padRun(id string) string {
	for len(id) < runLen {
		id = "0" + id
	}
	return id[len(id)-runLen:]
}

// clock gives unix nanoseconds that advance with the monotonic clock: the
// publisher and the sink share one, so a wall-clock step during a run does
// not show up as latency.
type clock struct {
	base time.Time
	unix int64
}

func newClock() *clock {
	now := time.Now()
	return &clock{base: now, unix: now.UnixNano()}
}

func (c *clock) now() int64 { return c.unix + int64(time.Since(c.base)) }

// sink is the webhook receiver of `bench push`: an HTTP server in this
// process that answers every delivery 200 at once and counts it. Each
// subscription i delivers to its own path /hook/i, so fan-out copies of one
// message are told apart from duplicates.
type sink struct {
	*localServer // url is the base URL; hookURL adds the path
	run          string
	clock        *clock
	seed         maphash.Seed
	subs         []*sinkSub
	// notify gets a value (never blocking) after each first delivery, so a
	// drain can wait for the count it needs instead of polling.
	notify chan struct{}

	unique    atomic.Int64 // first deliveries, all subscriptions
	received  atomic.Int64 // all deliveries of this run, duplicates included
	foreign   atomic.Int64 // bodies without this run's stamp
	malformed atomic.Int64 // no Postbus-Message-Id, or an unknown path
}

// sinkSub is one subscription's tally.
type sinkSub struct {
	mu sync.Mutex // guards every field below
	// seen holds a 64-bit hash of each message id delivered. A hash keeps
	// the set at ~20 bytes a message whatever the id's length; two ids of
	// one run colliding (odds ~n²/2^65, 1e-8 at a million messages) would
	// count one false duplicate.
	seen     map[uint64]struct{}
	received int64
	unique   int64
	dups     int64
	latency  histogram // publish to receipt, first deliveries of undelayed messages
	lateness histogram // receipt - max(deliver-at, sent), first deliveries not early
	interval histogram // latency or lateness since the last progress line
	early    int64     // first deliveries before their deliver-at
	maxEarly time.Duration
	firstAt  int64 // clock ns of the first delivery; 0 before it
	lastAt   int64 // clock ns of the last first delivery
}

// startSink listens on 127.0.0.1:0 with subs hook paths. Bodies whose stamp
// does not carry run are counted as foreign.
func startSink(subs int, run string, clk *clock) (*sink, error) {
	s := &sink{
		run:    run,
		clock:  clk,
		seed:   maphash.MakeSeed(),
		notify: make(chan struct{}, 1),
	}
	for range subs {
		s.subs = append(s.subs, &sinkSub{seen: make(map[uint64]struct{})})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /hook/{i}", s.handle)
	srv, err := startLocal("webhook sink", mux)
	if err != nil {
		return nil, err
	}
	s.localServer = srv
	return s, nil
}

func (s *sink) hookURL(i int) string { return s.url + "/hook/" + strconv.Itoa(i) }

func (s *sink) handle(w http.ResponseWriter, r *http.Request) {
	at := s.clock.now()
	if r.Header.Get("Postbus-Batch-Size") != "" {
		s.handleBatch(w, r, at)
		return
	}
	var head [stampLen]byte
	n, _ := io.ReadFull(r.Body, head[:])
	// Read to the end so the connection is kept alive for the next one.
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		return // the sender went away; it will retry
	}
	w.WriteHeader(http.StatusOK)

	i, err := strconv.Atoi(r.PathValue("i"))
	id := r.Header.Get("Postbus-Message-Id")
	if err != nil || i < 0 || i >= len(s.subs) || id == "" {
		s.malformed.Add(1)
		return
	}
	st, ok := parseStamp(head[:n])
	if !ok || string(st.run) != s.run {
		s.foreign.Add(1)
		return
	}
	s.received.Add(1)
	if s.subs[i].record(maphash.String(s.seed, id), at, st) {
		s.unique.Add(1)
		poke(s.notify)
	}
}

// handleBatch takes a batched delivery: a JSON array of messages, each
// with its msg_id and its body (UTF-8 text or base64, as a pull answers),
// every one counted as a delivery received at at.
func (s *sink) handleBatch(w http.ResponseWriter, r *http.Request, at int64) {
	var els []pulledMsg
	if err := json.NewDecoder(r.Body).Decode(&els); err != nil {
		// Read to the end so the connection is kept alive; a 400 has the
		// batch retried, which the counts then show.
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusBadRequest)
		s.malformed.Add(1)
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	w.WriteHeader(http.StatusOK)
	i, err := strconv.Atoi(r.PathValue("i"))
	if err != nil || i < 0 || i >= len(s.subs) {
		s.malformed.Add(1)
		return
	}
	var scratch [stampScratch]byte
	for j := range els {
		if els[j].MsgID == "" {
			s.malformed.Add(1)
			continue
		}
		st, ok := bodyStamp(&els[j], &scratch)
		if !ok || string(st.run) != s.run {
			s.foreign.Add(1)
			continue
		}
		s.received.Add(1)
		if s.subs[i].record(maphash.String(s.seed, els[j].MsgID), at, st) {
			s.unique.Add(1)
			poke(s.notify)
		}
	}
}

// record counts one delivery received at clock time at and reports whether
// it was the message's first on this subscription.
func (u *sinkSub) record(h uint64, at int64, st stamp) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.received++
	if _, dup := u.seen[h]; dup {
		u.dups++
		return false
	}
	u.seen[h] = struct{}{}
	u.unique++
	if u.firstAt == 0 {
		u.firstAt = at
	}
	u.lastAt = max(u.lastAt, at)
	if st.deliverAt > 0 {
		if at < st.deliverAt {
			u.early++
			u.maxEarly = max(u.maxEarly, time.Duration(st.deliverAt-at))
			return true
		}
		// A message published after its deliver-at is due at once: its
		// lateness runs from when it was sent.
		late := time.Duration(at - max(st.deliverAt, st.sent))
		u.lateness.record(late)
		u.interval.record(late)
		return true
	}
	lat := time.Duration(at - st.sent)
	u.latency.record(lat)
	u.interval.record(lat)
	return true
}

// complete reports whether every subscription has had want first
// deliveries.
func (s *sink) complete(want int64) bool {
	for _, u := range s.subs {
		u.mu.Lock()
		n := u.unique
		u.mu.Unlock()
		if n < want {
			return false
		}
	}
	return true
}

// takeInterval merges and resets every subscription's interval histogram
// into h.
func (s *sink) takeInterval(h *histogram) {
	h.reset()
	for _, u := range s.subs {
		u.mu.Lock()
		h.merge(&u.interval)
		u.interval.reset()
		u.mu.Unlock()
	}
}

// subTotals is one subscription's counts at the end of a run.
type subTotals struct {
	received, unique, dups int64
	p99                    time.Duration
}

// sinkTotals is a snapshot of everything the sink counted.
type sinkTotals struct {
	received, unique, dups int64
	latency, lateness      histogram
	early                  int64
	maxEarly               time.Duration
	firstAt, lastAt        int64 // clock ns; 0 when nothing arrived
	perSub                 []subTotals
	foreign, malformed     int64
}

func (s *sink) totals() *sinkTotals {
	t := &sinkTotals{foreign: s.foreign.Load(), malformed: s.malformed.Load()}
	for _, u := range s.subs {
		u.mu.Lock()
		t.received += u.received
		t.unique += u.unique
		t.dups += u.dups
		t.latency.merge(&u.latency)
		t.lateness.merge(&u.lateness)
		t.early += u.early
		t.maxEarly = max(t.maxEarly, u.maxEarly)
		if u.firstAt != 0 && (t.firstAt == 0 || u.firstAt < t.firstAt) {
			t.firstAt = u.firstAt
		}
		t.lastAt = max(t.lastAt, u.lastAt)
		p99 := u.latency.quantile(0.99)
		if u.lateness.count() > 0 {
			p99 = u.lateness.quantile(0.99)
		}
		t.perSub = append(t.perSub, subTotals{received: u.received, unique: u.unique, dups: u.dups, p99: p99})
		u.mu.Unlock()
	}
	return t
}
