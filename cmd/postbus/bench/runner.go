package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// bodyWindow is how many distinct starting points message bodies take
	// in the shared body buffer.
	bodyWindow = 4096
	// maxErrorBody caps how much of an error answer is kept for its code
	// and text; the rest is drained so the connection can be reused.
	maxErrorBody = 64 << 10
	// maxErrorKinds caps the error table per worker and in the report; the
	// kinds past it are counted under "other".
	maxErrorKinds = 32
	// maxFirstText caps the first error text kept per kind.
	maxFirstText = 300
)

// newClient returns the one client every worker of a tool shares: HTTP/1.1
// keep-alive, exactly conns connections, no compression and no proxy from
// the environment (a proxy would be measured instead of the broker), and
// timeout on every request.
func newClient(conns int, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          conns,
		MaxIdleConnsPerHost:   conns,
		MaxConnsPerHost:       conns,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: 0,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// bodySource hands out message bodies: windows of one buffer of printable
// ASCII generated once.
type bodySource struct {
	buf  []byte
	size int
}

// bodyAlphabet is printable ASCII without '"' and '\', so bodies need no
// escaping inside JSON strings.
const bodyAlphabet = " !#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~"

func newBodySource(size int) *bodySource {
	buf := make([]byte, size+bodyWindow)
	for i := range buf {
		buf[i] = bodyAlphabet[rand.IntN(len(bodyAlphabet))]
	}
	return &bodySource{buf: buf, size: size}
}

// at returns the body of message seq. Neighbouring messages start at
// scattered offsets so consecutive bodies differ.
func (b *bodySource) at(seq int64) []byte {
	off := int(uint64(seq) * 2654435761 % bodyWindow)
	return b.buf[off : off+b.size]
}

func newRunID() string {
	return strconv.FormatUint(rand.Uint64()&0xffffffffff, 36)
}

// errKind is one row of the error table: failed requests that share a
// status and problem code (or a transport failure class).
type errKind struct {
	key      string
	requests int64
	messages int64
	first    string // text of the first one seen
}

// errKinds is an error table: failed requests by kind in first-seen order,
// at most maxErrorKinds rows, the kinds past them counted under "other".
// The zero value is empty. It is not safe for concurrent use; errTable is.
type errKinds struct {
	kinds map[string]*errKind
	order []string // keys in first-seen order
}

// add counts requests failed requests holding messages messages under key;
// text describes the first of the kind, and is kept if the row is new.
func (t *errKinds) add(key, text string, requests, messages int64) {
	if t.kinds == nil {
		t.kinds = make(map[string]*errKind)
	}
	k, ok := t.kinds[key]
	if !ok && len(t.kinds) >= maxErrorKinds {
		key = "other"
		k, ok = t.kinds[key]
	}
	if !ok {
		k = &errKind{key: key, first: truncate(text, maxFirstText)}
		t.kinds[key] = k
		t.order = append(t.order, key)
	}
	k.requests += requests
	k.messages += messages
}

// merge adds the rows of o.
func (t *errKinds) merge(o *errKinds) {
	for _, key := range o.order {
		e := o.kinds[key]
		t.add(key, e.first, e.requests, e.messages)
	}
}

// list returns the rows, most requests first.
func (t *errKinds) list() []*errKind {
	var out []*errKind
	for _, key := range t.order {
		out = append(out, t.kinds[key])
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].requests > out[j].requests })
	return out
}

// errTable is an error table many workers share, one request and message
// a row; failures are rare, so one mutex for all of them is enough.
type errTable struct {
	mu sync.Mutex // guards t
	t  errKinds
}

func (t *errTable) add(key, text string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.t.add(key, text, 1, 1)
}

func (t *errTable) list() []*errKind {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.t.list()
}

// worker is one connection's loop state.
type worker struct {
	mu sync.Mutex // guards interval, which the progress printer drains
	// interval holds latencies since the last progress line; nil when
	// progress lines are off.
	interval *histogram

	// Owned by the worker goroutine; read only after the phase ends.
	total       histogram
	requests    int64
	okRequests  int64
	sentMsgs    int64
	okMsgs      int64
	errRequests int64
	errMsgs     int64
	errs        errKinds
	// buf holds a batch request body; rbuf a response body. Both are
	// reused so a worker allocates little per request.
	buf  []byte
	rbuf bytes.Buffer
}

// phase is one timed stretch of load against one base URL: a warm-up or a
// measured run.
type phase struct {
	cfg       *config
	client    *http.Client
	bodies    *bodySource
	url       string // publish endpoint, single or batch
	base      string // the broker's base URL
	txn       bool   // prepare each message, then commit it
	keyPrefix string
	duration  time.Duration // 0 = no time bound
	count     int64         // 0 = no count bound
	start     time.Time

	next   atomic.Int64 // next request ticket
	done   atomic.Int64 // messages whose request completed, ok or not
	failed atomic.Int64 // failed requests, for progress lines

	// Milestones of a --count run: the first 10% of messages is timed from
	// the start to the first completion that reaches it, the last 10% from
	// the last completion still short of it to the end.
	tenth      int64
	markMu     sync.Mutex // guards the fields below
	markDone   int64      // messages completed, counted under markMu
	firstDone  int64
	firstAt    time.Duration
	firstOK    bool
	lastFrom   int64
	lastFromAt time.Duration
	endAt      time.Duration
	endOK      bool
}

// result is what a measured phase leaves for the report.
type result struct {
	url         string
	elapsed     time.Duration
	interrupted bool
	requests    int64
	okRequests  int64
	errRequests int64
	sentMsgs    int64
	okMsgs      int64
	errMsgs     int64
	bodyBytes   int64 // bodies of acknowledged messages
	hist        histogram
	errs        []*errKind // by requests, most first
	// first10/last10 are msgs/s of the first and last 10% of a --count run;
	// zero when the run did not get that far.
	first10, last10 float64
	// rss is the broker's memory over the run, with --broker-pid.
	rss *rssStats
}

func (r *result) msgsPerSec() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.okMsgs) / r.elapsed.Seconds()
}

// runAgainst creates the topic at base, warms up, then runs the measured
// phase with progress lines. Only a failure to create the topic is an error;
// cancellation shows as result.interrupted.
func runAgainst(ctx context.Context, cfg *config, client *http.Client, bodies *bodySource, base, keyPrefix string, out io.Writer) (*result, error) {
	if cfg.create {
		if err := createTopic(ctx, client, base, cfg.topic, cfg.queues); err != nil {
			if ctx.Err() != nil {
				return &result{url: base, interrupted: true}, nil
			}
			return nil, err
		}
	}
	if cfg.warmup > 0 {
		w := newPhase(cfg, client, bodies, base, keyPrefix+"w", cfg.warmup, 0)
		res := w.run(ctx, nil)
		fmt.Fprintf(out, "warm-up %s: %d messages, %d failed requests (not measured)\n",
			cfg.warmup, res.sentMsgs, res.errRequests)
		if res.interrupted {
			return &result{url: base, interrupted: true}, nil
		}
	}
	p := newPhase(cfg, client, bodies, base, keyPrefix, cfg.duration, cfg.count)
	var progress io.Writer
	if cfg.interval > 0 {
		progress = out
	}
	return p.run(ctx, progress), nil
}

func newPhase(cfg *config, client *http.Client, bodies *bodySource, base, keyPrefix string, d time.Duration, count int64) *phase {
	u := base + "/v1/topics/" + cfg.topic + "/messages"
	if cfg.batch > 1 {
		u += "/batch"
	}
	p := &phase{
		cfg: cfg, client: client, bodies: bodies, url: u, base: base, txn: cfg.txnRun,
		keyPrefix: "bench-" + keyPrefix + "-",
		duration:  d, count: count,
	}
	if count >= 10 {
		p.tenth = (count + 9) / 10
	}
	return p
}

// run starts the workers, waits for them and merges their results. With
// progress non-nil it prints a line every cfg.interval.
func (p *phase) run(ctx context.Context, progress io.Writer) *result {
	workers := make([]*worker, p.cfg.conns)
	for i := range workers {
		workers[i] = &worker{}
		if progress != nil {
			workers[i].interval = &histogram{}
		}
	}
	p.start = time.Now()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { p.work(ctx, w) })
	}
	stopProgress := func() {}
	if progress != nil {
		stopProgress = every(p.cfg.interval, p.progress(progress, workers))
	}
	wg.Wait()
	elapsed := time.Since(p.start)
	stopProgress()

	res := &result{url: p.url, elapsed: elapsed, interrupted: ctx.Err() != nil}
	var errs errKinds
	for _, w := range workers {
		res.hist.merge(&w.total)
		res.requests += w.requests
		res.okRequests += w.okRequests
		res.errRequests += w.errRequests
		res.sentMsgs += w.sentMsgs
		res.okMsgs += w.okMsgs
		res.errMsgs += w.errMsgs
		errs.merge(&w.errs)
	}
	res.errs = errs.list()
	res.bodyBytes = res.okMsgs * int64(p.cfg.size)
	if p.firstOK && p.firstAt > 0 {
		res.first10 = float64(p.firstDone) / p.firstAt.Seconds()
	}
	if p.endOK && p.endAt > p.lastFromAt {
		res.last10 = float64(p.count-p.lastFrom) / (p.endAt - p.lastFromAt).Seconds()
	}
	return res
}

// work is one worker's loop: take the next ticket, wait for its due time in
// open loop, send, record. It returns when the phase's time or count is
// used up or ctx is cancelled.
func (p *phase) work(ctx context.Context, w *worker) {
	batch := int64(p.cfg.batch)
	pace := pacer{start: p.start, rate: p.cfg.rate, duration: p.duration}
	defer pace.stop()
	for ctx.Err() == nil {
		first := (p.next.Add(1) - 1) * batch
		n := batch
		if p.count > 0 {
			if first >= p.count {
				return
			}
			n = min(batch, p.count-first)
		}
		due, ok := pace.wait(ctx, first)
		if !ok {
			return
		}
		ok, key, text := p.send(ctx, w, first, n)
		now := time.Now()
		if ctx.Err() != nil {
			return // cut short by cancellation: counted nowhere
		}
		w.requests++
		w.sentMsgs += n
		if ok {
			w.okRequests++
			w.okMsgs += n
		} else {
			w.errRequests++
			w.errMsgs += n
			w.errs.add(key, text, 1, n)
			p.failed.Add(1)
		}
		lat := now.Sub(due)
		w.total.record(lat)
		if w.interval != nil {
			w.mu.Lock()
			w.interval.record(lat)
			w.mu.Unlock()
		}
		p.done.Add(n)
		if p.tenth > 0 {
			p.milestones(n)
		}
	}
}

// milestones counts n more completed messages of a --count run and notes
// the times the first and last 10% windows need. The clock is read under
// the lock so that times and counts advance together.
func (p *phase) milestones(n int64) {
	p.markMu.Lock()
	defer p.markMu.Unlock()
	at := time.Since(p.start)
	p.markDone += n
	d := p.markDone
	if !p.firstOK && d >= p.tenth {
		p.firstDone, p.firstAt, p.firstOK = d, at, true
	}
	if d <= p.count-p.tenth {
		p.lastFrom, p.lastFromAt = d, at
	}
	if d >= p.count {
		p.endAt, p.endOK = at, true
	}
}

// send performs one publish request of n messages starting at seq first. It
// reports success, or an error kind key and text.
func (p *phase) send(ctx context.Context, w *worker, first, n int64) (ok bool, key, text string) {
	cfg := p.cfg
	var body []byte
	if cfg.batch > 1 {
		w.buf = p.appendBatch(w.buf[:0], first, n)
		body = w.buf
	} else {
		body = p.bodies.at(first)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return false, "request", err.Error()
	}
	if cfg.batch > 1 {
		req.Header.Set("Content-Type", "application/json")
	} else {
		req.Header.Set("Content-Type", cfg.contentType)
		if cfg.tag != "" {
			req.Header.Set("Postbus-Tag", cfg.tag)
		}
		if cfg.keys {
			req.Header.Set("Postbus-Keys", p.keyPrefix+strconv.FormatInt(first, 10))
		}
		if p.txn {
			req.Header.Set("Postbus-Transaction", "prepare")
			req.Header.Set("Postbus-Producer-Group", benchProducerGroup)
			return p.prepareAndCommit(ctx, w, req)
		}
	}
	// Latency runs to the end of the answer, so one cut short is a failure.
	return publishOnce(p.client, req, &w.rbuf, n, cfg.batch > 1, false)
}

// publishOnce sends req, a publish of n messages (a batch if batch), and
// reads its answer through buf. It reports success, or an error kind key
// and text. A batch succeeds only if every message got a result. A single
// message answered 201 or 200 was stored: with trustStatus that is success
// whatever happens to the rest of the answer; without, the answer must
// also be read to its end.
func publishOnce(client *http.Client, req *http.Request, buf *bytes.Buffer, n int64, batch, trustStatus bool) (ok bool, key, text string) {
	resp, err := client.Do(req)
	if err != nil {
		return false, "transport: " + transportClass(err), err.Error()
	}
	defer resp.Body.Close()
	success := resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK
	if success && !batch {
		if _, err := io.Copy(io.Discard, resp.Body); err != nil && !trustStatus {
			return false, "transport: " + transportClass(err), "read answer: " + err.Error()
		}
		return true, "", ""
	}
	// Batch answers are kept to check that every message got a result;
	// error answers to read their problem code.
	buf.Reset()
	limit := int64(maxErrorBody)
	if success {
		limit = n*1024 + 4096
	}
	_, err = buf.ReadFrom(io.LimitReader(resp.Body, limit))
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	if err != nil {
		return false, "transport: " + transportClass(err), "read answer: " + err.Error()
	}
	if !success {
		key, text := problemKey(resp, buf.Bytes())
		return false, key, text
	}
	if got := int64(bytes.Count(buf.Bytes(), []byte(`"msg_id"`))); got != n {
		return false, fmt.Sprintf("%d batch_short", resp.StatusCode),
			fmt.Sprintf("batch of %d answered with %d results: %s", n, got, truncate(buf.String(), 200))
	}
	return true, "", ""
}

// appendBatch writes the JSON array of messages [first, first+n) to dst.
// Bodies need no escaping (see bodyAlphabet); tag and content type are
// escaped once per phase by jsonString.
func (p *phase) appendBatch(dst []byte, first, n int64) []byte {
	cfg := p.cfg
	dst = append(dst, '[')
	for i := range n {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"body":"`...)
		dst = append(dst, p.bodies.at(first+i)...)
		dst = append(dst, `","content_type":`...)
		dst = appendJSONString(dst, cfg.contentType)
		if cfg.tag != "" {
			dst = append(dst, `,"tag":`...)
			dst = appendJSONString(dst, cfg.tag)
		}
		if cfg.keys {
			dst = append(dst, `,"keys":["`...)
			dst = append(dst, p.keyPrefix...)
			dst = strconv.AppendInt(dst, first+i, 10)
			dst = append(dst, `"]`...)
		}
		dst = append(dst, '}')
	}
	return append(dst, ']')
}

// appendJSONString appends s as a JSON string. Flags are few and short, so
// the allocation in json.Marshal does not matter next to a request.
func appendJSONString(dst []byte, s string) []byte {
	b, err := json.Marshal(s)
	if err != nil { // a string always marshals
		return append(dst, `""`...)
	}
	return append(dst, b...)
}

// problemKey names a failed answer by status and problem+json code, with the
// detail (or the start of the body) as its text.
func problemKey(resp *http.Response, body []byte) (key, text string) {
	var prob struct {
		Code   string `json:"code"`
		Title  string `json:"title"`
		Detail string `json:"detail"`
	}
	code := "-"
	text = strings.TrimSpace(string(body))
	if json.Unmarshal(body, &prob) == nil {
		if prob.Code != "" {
			code = prob.Code
		}
		if msg := strings.TrimSpace(prob.Title + ": " + prob.Detail); msg != ":" {
			text = strings.Trim(msg, ": ")
		}
	}
	return fmt.Sprintf("%d %s", resp.StatusCode, code), fmt.Sprintf("%s: %s", resp.Status, truncate(text, 200))
}

// transportClass names a failure to get an answer at all.
func transportClass(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection_reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no_local_port"
	}
	return "other"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// progress returns the printer of the phase's progress lines: elapsed
// time, messages per second and p99 over the interval just ended.
func (p *phase) progress(out io.Writer, workers []*worker) func(now time.Time) {
	var scratch histogram
	prevDone, prevFailed, prevAt := int64(0), int64(0), p.start
	return func(now time.Time) {
		scratch.reset()
		for _, w := range workers {
			w.mu.Lock()
			scratch.merge(w.interval)
			w.interval.reset()
			w.mu.Unlock()
		}
		done, failed := p.done.Load(), p.failed.Load()
		dt := now.Sub(prevAt).Seconds()
		fmt.Fprintf(out, "%8s  %10.0f msgs/s  p99 %-9s  failed %d\n",
			now.Sub(p.start).Round(10*time.Millisecond),
			float64(done-prevDone)/dt, fmtDur(scratch.quantile(0.99)), failed-prevFailed)
		prevDone, prevFailed, prevAt = done, failed, now
	}
}

// every calls f every interval on a goroutine of its own until the
// returned stop is called; stop waits for a call in progress and may be
// called again. With interval 0 it never calls f.
func every(interval time.Duration, f func(now time.Time)) (stop func()) {
	if interval <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				f(now)
			}
		}
	})
	return sync.OnceFunc(func() {
		close(done)
		wg.Wait()
	})
}

// pacer times one worker's requests. Open loop (rate > 0), the request
// whose first message is seq is due at start + seq/rate; closed loop, each
// is due when the last is done. None is due duration or more after start
// (0 = no time bound). One timer serves all of a worker's waits.
type pacer struct {
	start    time.Time
	rate     float64 // messages per second; 0 = closed loop
	duration time.Duration
	timer    *time.Timer
}

// wait waits until the request starting at message seq is due and returns
// when that was. It reports false when the run's time is up or ctx ended.
func (p *pacer) wait(ctx context.Context, seq int64) (due time.Time, ok bool) {
	if p.rate <= 0 {
		due = time.Now()
		return due, p.duration <= 0 || due.Sub(p.start) < p.duration
	}
	offset := time.Duration(float64(seq) * float64(time.Second) / p.rate)
	if p.duration > 0 && offset >= p.duration {
		return due, false
	}
	due = p.start.Add(offset)
	if wait := time.Until(due); wait > 0 {
		if p.timer == nil {
			p.timer = time.NewTimer(wait)
		} else {
			p.timer.Reset(wait)
		}
		select {
		case <-p.timer.C:
		case <-ctx.Done():
			return due, false
		}
	}
	return due, true
}

func (p *pacer) stop() {
	if p.timer != nil {
		p.timer.Stop()
	}
}

// waitFor waits until cond holds, d passes or ctx ends, checking cond again
// whenever notify gets a value, and reports whether cond held.
func waitFor(ctx context.Context, notify <-chan struct{}, cond func() bool, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for !cond() {
		select {
		case <-notify:
		case <-timer.C:
			return cond()
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// poke gives ch, a channel of capacity 1 someone waits on with waitFor, a
// value without blocking: one already there is wake-up enough.
func poke(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// prepareAndCommit sends req, a prepare, and then the commit of the
// transaction it answers; both must succeed.
func (p *phase) prepareAndCommit(ctx context.Context, w *worker, req *http.Request) (ok bool, key, text string) {
	resp, err := p.client.Do(req)
	if err != nil {
		return false, "transport: " + transportClass(err), err.Error()
	}
	w.rbuf.Reset()
	_, err = w.rbuf.ReadFrom(io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
	if err != nil {
		return false, "transport: " + transportClass(err), "read answer: " + err.Error()
	}
	if resp.StatusCode != http.StatusCreated {
		key, text := problemKey(resp, w.rbuf.Bytes())
		return false, key, text
	}
	var prep struct {
		TransactionID string `json:"transaction_id"`
	}
	if err := json.Unmarshal(w.rbuf.Bytes(), &prep); err != nil || prep.TransactionID == "" {
		return false, "201 no_transaction_id", "prepare answered without a transaction id: " + truncate(w.rbuf.String(), 200)
	}
	creq, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+"/v1/transactions/"+prep.TransactionID+"/commit", nil)
	if err != nil {
		return false, "request", err.Error()
	}
	resp, err = p.client.Do(creq)
	if err != nil {
		return false, "transport: " + transportClass(err), "commit: " + err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		w.rbuf.Reset()
		if _, err := w.rbuf.ReadFrom(io.LimitReader(resp.Body, maxErrorBody)); err != nil {
			return false, "transport: " + transportClass(err), "read commit answer: " + err.Error()
		}
		key, text := problemKey(resp, w.rbuf.Bytes())
		return false, "commit " + key, text
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return false, "transport: " + transportClass(err), "read commit answer: " + err.Error()
	}
	return true, "", ""
}
