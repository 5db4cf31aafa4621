package httpapi

import (
	"compress/flate"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/prometheus/client_golang/prometheus"
)

// Request bodies are read into memory, and a request's announced
// Content-Length is no promise that the bytes will come: a client that
// sends the headers of a 4 MiB publish and then one byte a minute must not
// make the server hold 4 MiB for it. So a body is read into a buffer that
// grows with what has arrived (by a quarter at a time, from bodyChunk, so
// what is held is at most a quarter, or bodyGrowMax, over what arrived),
// and every buffer is paid for from one budget shared by all connections
// (--max-body-memory, Config.MaxBodyMemory), of which one client (its
// token's sub, or its address when the API is open) may hold only a share
// (--max-body-memory-per-client, Config.MaxBodyMemoryPerClient). A request
// whose body would take the budget, or its client's share, over the limit
// is answered 503 server_busy with Retry-After; what it had reserved is
// given back when its handler returns, as is every request's.
//
// And a body must keep coming: after a grace (--body-grace) it must have
// arrived at --min-body-rate bytes a second on average, or reading it
// fails and the request is answered 408 request_timeout and its connection
// closed. Without that, a client sending a byte every few seconds held its
// share of the budget for the server's whole read timeout.

// DefaultMaxBodyMemory is the default bound on the bytes held by request
// bodies in flight, across all connections: room for eighteen of the
// largest batch requests at once (or four of a name server's largest
// heartbeats), far more than the small bodies of ordinary traffic need.
const DefaultMaxBodyMemory = 128 << 20

// MinBodyMemory is the smallest bound on body memory a server allows: its
// largest request body, with its decoder, must fit on its own. That is a
// batch publish for a broker, a heartbeat for a name server (nameServer).
func MinBodyMemory(nameServer bool) int64 {
	return maxBodyRead(nameServer) + 1 + gzipReaderCost
}

// maxBodyRead is the largest body a server reads (limitBody's cap).
func maxBodyRead(nameServer bool) int64 {
	if nameServer {
		return max(maxBatchRequestBytes, maxHeartbeatBytes)
	}
	return maxBatchRequestBytes
}

// Defaults of the body pacing (Config.MinBodyRate, Config.BodyGrace): a
// body of the largest size (a 7 MiB batch) at the least rate takes under
// four minutes; a client on any working network sends far faster.
const (
	DefaultMinBodyRate = 32 << 10
	DefaultBodyGrace   = 5 * time.Second
)

// DefaultBodyMemoryShare is the part of --max-body-memory one client may
// hold by default (Config.MaxBodyMemoryPerClient 0): an eighth, but never
// less than the largest body needs (MinBodyMemory).
func DefaultBodyMemoryShare(limit int64, nameServer bool) int64 {
	return min(limit, max(limit/8, MinBodyMemory(nameServer)))
}

const (
	// bodyChunk is a body buffer's first size: most bodies fit in it, and
	// one that has not arrived holds no more than this.
	bodyChunk = 16 << 10
	// bodyGrowMax is the most a body buffer grows by at once: a buffer
	// grows by a quarter of its size, from bodyChunk to this.
	bodyGrowMax = 1 << 20
	// gzipReaderCost is what a gzip decoder holds (its window and
	// tables), reserved while a gzip body is read.
	gzipReaderCost = 64 << 10
	// busyRetryAfter is the Retry-After of a server_busy answer, in
	// seconds: bodies in flight finish in about this long.
	busyRetryAfter = 1
)

// Errors of reading a body; writeBodyError answers them.
var (
	errBodyTooLarge = errors.New("request body over the limit")
	errServerBusy   = errors.New("request bodies in flight hold all the memory allowed")
	// errClientBusy: this client's bodies in flight hold its share.
	errClientBusy = errors.New("the client's request bodies in flight hold all of its share of memory")
	// errBodyTooSlow: the body arrived slower than the least rate.
	errBodyTooSlow = errors.New("request body arriving too slowly")
)

// encodingError is a Content-Encoding the server does not decode.
type encodingError struct{ detail string }

func (e *encodingError) Error() string { return e.detail }

// corruptBodyError is a body whose Content-Encoding does not decode.
type corruptBodyError struct{ err error }

func (e *corruptBodyError) Error() string { return "the gzip body does not decode: " + e.err.Error() }
func (e *corruptBodyError) Unwrap() error { return e.err }

// bodyBudget bounds the bytes held by request bodies across all
// connections, and per client.
type bodyBudget struct {
	limit int64
	share int64 // of limit, per client

	mu      sync.Mutex
	clients map[string]int64 // guarded by mu; bytes held per client, no zero entries
	used    atomic.Int64     // written under mu; read without it by the gauge

	inUse         prometheus.GaugeFunc
	refused       prometheus.Counter
	clientRefused prometheus.Counter
	tooSlow       prometheus.Counter
}

func newBodyBudget(limit, share int64, reg prometheus.Registerer) *bodyBudget {
	b := &bodyBudget{limit: limit, share: share, clients: make(map[string]int64)}
	b.inUse = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postbus_http_body_bytes_in_flight",
		Help: "Bytes reserved for request bodies being read or handled, across all connections (at most --max-body-memory).",
	}, func() float64 { return float64(b.used.Load()) })
	b.refused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postbus_http_body_memory_refused_total",
		Help: "Requests answered 503 server_busy because bodies in flight held all of --max-body-memory.",
	})
	b.clientRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postbus_http_body_memory_client_refused_total",
		Help: "Requests answered 503 server_busy because their client's bodies in flight held all of its share (--max-body-memory-per-client).",
	})
	b.tooSlow = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postbus_http_body_too_slow_total",
		Help: "Requests answered 408 request_timeout, their connection closed, because their body arrived slower than --min-body-rate after --body-grace.",
	})
	reg.MustRegister(b.inUse, b.refused, b.clientRefused, b.tooSlow)
	return b
}

// reserve takes n bytes of the budget for client, or nothing and
// errServerBusy or errClientBusy when that would take the budget or the
// client's share over its limit.
func (b *bodyBudget) reserve(client string, n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	used := b.used.Load()
	if used+n > b.limit {
		return errServerBusy
	}
	if b.clients[client]+n > b.share {
		return errClientBusy
	}
	b.used.Store(used + n)
	b.clients[client] += n
	return nil
}

func (b *bodyBudget) release(client string, n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used.Add(-n)
	if b.clients[client] -= n; b.clients[client] <= 0 {
		delete(b.clients, client)
	}
}

// bodyLease is what one request has reserved; released when its handler
// returns. A cluster fan-out may read through it from several goroutines.
type bodyLease struct {
	budget *bodyBudget
	mu     sync.Mutex
	client string // guarded by mu; whose share it is taken from
	held   int64  // guarded by mu
	closed bool   // guarded by mu; the handler returned, its answer sent
}

// setClient names the client the request's bodies are charged to: its
// token's, once the request is authenticated (before any body is read).
func (l *bodyLease) setClient(client string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == 0 {
		l.client = client
	}
}

// reserve takes n bytes; the error is errServerBusy or errClientBusy.
func (l *bodyLease) reserve(n int64) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		// A goroutine of a fan-out still reading after the request was
		// answered: nobody waits for it, and what it took would never
		// be given back.
		return errServerBusy
	}
	if err := l.budget.reserve(l.client, n); err != nil {
		// The request is refused for it (503 server_busy): counted here,
		// once, whichever handler reads the body.
		if errors.Is(err, errClientBusy) {
			l.budget.clientRefused.Inc()
		} else {
			l.budget.refused.Inc()
		}
		return err
	}
	l.held += n
	return nil
}

func (l *bodyLease) release(n int64) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return // given back by close
	}
	l.held -= n
	l.budget.release(l.client, n)
}

// close gives back all the request holds; the lease takes no more.
func (l *bodyLease) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	l.budget.release(l.client, l.held)
	l.held = 0
}

type bodyLeaseKey struct{}

func leaseFrom(ctx context.Context) *bodyLease {
	l, _ := ctx.Value(bodyLeaseKey{}).(*bodyLease)
	return l
}

// limitBody caps every request body at the largest any route accepts, so a
// route that forgets its own limit cannot be made to read without end
// (routes read through tighter limits of their own), paces it (see
// pacedBody), and gives the request a lease on the body budget that is
// returned when the handler is done. The lease is charged to the client's
// address until authentication names its token.
func (s *Server) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		body := http.MaxBytesReader(w, r.Body, maxBodyRead(s.registry != nil)+1)
		r.Body = &pacedBody{
			body: body, rc: http.NewResponseController(w), start: time.Now(),
			grace: s.bodyGrace, rate: float64(s.minBodyRate),
			onSlow: func(read int64, took time.Duration) {
				s.bodies.tooSlow.Inc()
				s.logger.Error("request body arriving too slowly; answering 408 and closing the connection",
					slog.String("method", r.Method), slog.String("path", r.URL.Path),
					slog.String("remote", r.RemoteAddr), slog.Int64("bytes", read), slog.Duration("took", took),
					slog.Int64("min_body_rate", s.minBodyRate), slog.Duration("body_grace", s.bodyGrace))
			},
		}
		lease := &bodyLease{budget: s.bodies, client: "addr:" + clientAddr(r)}
		defer lease.close()
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), bodyLeaseKey{}, lease)))
	})
}

// refuseUnreadBody readies the answer to a request refused before its body
// was read (no token, a bad one, a scope that does not allow it): the
// connection is closed after the answer instead of waiting, as the server
// otherwise does before answering, for up to 256 KiB of a body nobody
// will read. then, called once the answer is written, lets the server
// close the connection at once rather than wait for the body to end.
func refuseUnreadBody(w http.ResponseWriter, r *http.Request) (then func()) {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return func() {}
	}
	w.Header().Set("Connection", "close")
	return func() { http.NewResponseController(w).SetReadDeadline(time.Now()) }
}

// pacedBody is a request body that must arrive at rate bytes a second on
// average once grace has passed: before each read, the connection's read
// deadline is set to when the body, at what has arrived so far, falls
// behind. A read past it fails with errBodyTooSlow. Once the body has
// ended the deadline is lifted, so that a handler that runs long after
// reading (a long poll, a publish waiting on the disk) is not cut off.
type pacedBody struct {
	body  io.ReadCloser
	rc    *http.ResponseController
	start time.Time
	grace time.Duration
	rate  float64 // bytes a second; 0: no pacing
	// onSlow counts and logs a body refused for its pace, once.
	onSlow func(read int64, took time.Duration)

	mu   sync.Mutex // a fan-out may read it from another goroutine
	read int64      // guarded by mu
	done bool       // guarded by mu; the end or an error was seen
}

func (b *pacedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rate <= 0 || b.done {
		n, err := b.body.Read(p)
		b.read += int64(n)
		if err != nil {
			b.done = true
		}
		return n, err
	}
	due := b.start.Add(b.grace + time.Duration(float64(b.read)/b.rate*float64(time.Second)))
	paced := b.rc.SetReadDeadline(due) == nil
	n, err := b.body.Read(p)
	b.read += int64(n)
	if err != nil {
		b.done = true
		if paced && errors.Is(err, os.ErrDeadlineExceeded) {
			// The deadline stays passed: the server would otherwise wait
			// for the rest of the body before closing the connection.
			took := time.Since(b.start).Round(time.Millisecond)
			b.onSlow(b.read, took)
			return n, fmt.Errorf("%w: %d bytes in %s, the least is %.0f bytes a second after %s", errBodyTooSlow, b.read, took, b.rate, b.grace)
		}
		if paced {
			b.rc.SetReadDeadline(time.Time{})
		}
	}
	return n, err
}

func (b *pacedBody) Close() error { return b.body.Close() }

// ended says whether the body was read to its end (or to an error).
func (b *pacedBody) ended() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.done
}

// readBody reads the request body, decoding a Content-Encoding of gzip,
// and refuses one of more than limit bytes (decoded) without reading
// further. The errors are errBodyTooLarge, errServerBusy, *encodingError,
// *corruptBodyError and the connection's own; writeBodyError answers them.
func readBody(r *http.Request, limit int) ([]byte, error) {
	lease := leaseFrom(r.Context())
	enc, err := contentEncoding(r.Header)
	if err != nil {
		return nil, err
	}
	if r.Body == nil {
		return nil, nil
	}
	if enc == "" {
		if r.ContentLength > int64(limit) {
			return nil, errBodyTooLarge
		}
		return readGrowing(r.Body, lease, r.ContentLength, limit)
	}
	if err := lease.reserve(gzipReaderCost); err != nil {
		return nil, err
	}
	defer lease.release(gzipReaderCost)
	zr, err := gzip.NewReader(r.Body)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, wrapDecodeError(err)
	}
	defer zr.Close()
	data, err := readGrowing(zr, lease, -1, limit)
	if err != nil {
		return nil, wrapDecodeError(err)
	}
	// The request now carries the decoded body: a handler that forwards it
	// to another broker (or runs its local share again) sends these
	// bytes, which are no longer gzip.
	r.Header.Del("Content-Encoding")
	return data, nil
}

// wrapDecodeError tells a gzip stream that does not decode from a failure
// to read the connection or the budget's refusal.
func wrapDecodeError(err error) error {
	var corrupt flate.CorruptInputError
	if errors.Is(err, gzip.ErrHeader) || errors.Is(err, gzip.ErrChecksum) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &corrupt) {
		return &corruptBodyError{err}
	}
	return bodyReadError(err)
}

// contentEncoding is "" for a body sent as is (no Content-Encoding, or
// identity) or "gzip"; any other coding, or several, is an *encodingError.
// A body in a coding the server does not decode would otherwise be taken
// for its bytes: a gzip-compressed publish stored compressed.
func contentEncoding(h http.Header) (string, error) {
	var codings []string
	for _, v := range h.Values("Content-Encoding") {
		for _, c := range strings.Split(v, ",") {
			if c = strings.ToLower(strings.TrimSpace(c)); c != "" && c != "identity" {
				codings = append(codings, c)
			}
		}
	}
	switch {
	case len(codings) == 0:
		return "", nil
	case len(codings) == 1 && (codings[0] == "gzip" || codings[0] == "x-gzip"):
		return "gzip", nil
	}
	return "", &encodingError{fmt.Sprintf("Content-Encoding %q: only gzip (once) is decoded; send the body as is, or gzip-compressed", strings.Join(codings, ", "))}
}

// readGrowing reads src to its end into a buffer that grows with what
// arrives, each growth paid for from lease first. hint is the announced
// length, or -1; it caps the buffer but is not trusted to arrive.
func readGrowing(src io.Reader, lease *bodyLease, hint int64, limit int) ([]byte, error) {
	if hint == 0 {
		return nil, nil
	}
	// The buffer never grows past one byte over the limit (which tells a
	// body over it) or past the announced length.
	ceiling := int64(limit) + 1
	if hint > 0 && hint < ceiling {
		ceiling = hint
	}
	size := min(int64(bodyChunk), ceiling)
	if err := lease.reserve(size); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, size)
	grow := func(extra []byte) error {
		// By a quarter: what is held stays close to what arrived (a
		// doubling buffer held twice what a stalled body had sent), at
		// the cost of copying the body about four times over.
		next := min(int64(cap(buf))+min(max(int64(cap(buf))/4, bodyChunk), bodyGrowMax), ceiling)
		if err := lease.reserve(next - int64(cap(buf))); err != nil {
			return err
		}
		grown := make([]byte, len(buf), next)
		copy(grown, buf)
		buf = append(grown, extra...)
		return nil
	}
	for {
		if len(buf) == cap(buf) {
			switch {
			case int64(len(buf)) > int64(limit):
				return nil, errBodyTooLarge // without reading the rest
			case int64(len(buf)) == ceiling:
				// All that was announced: the end, or more than
				// announced (a decoder's output has no announced length,
				// but a plain body's reader stops at it)?
				var one [1]byte
				if n, err := io.ReadFull(src, one[:]); n == 0 {
					if err == io.EOF {
						return buf, nil
					}
					return nil, bodyReadError(err)
				}
				ceiling = int64(limit) + 1
				if err := grow(one[:]); err != nil {
					return nil, err
				}
				continue
			default:
				if err := grow(nil); err != nil {
					return nil, err
				}
			}
		}
		n, err := src.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, bodyReadError(err)
		}
	}
	if len(buf) > limit {
		return nil, errBodyTooLarge
	}
	return buf, nil
}

// bodyReadError is err, or errBodyTooLarge when it is limitBody's cap.
func bodyReadError(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errBodyTooLarge
	}
	return err
}

// bodyProblem is the problem for an error of readBody. tooLarge is the
// problem for a body over the route's limit, as the route words it.
func bodyProblem(err error, tooLarge *broker.Error) *broker.Error {
	var ee *encodingError
	var ce *corruptBodyError
	switch {
	case errors.Is(err, errBodyTooLarge):
		return tooLarge
	case errors.Is(err, errServerBusy):
		return &broker.Error{Code: codeServerBusy, Detail: fmt.Sprintf("the request bodies in flight hold all the memory this server allows them (--max-body-memory); retry in %d s", busyRetryAfter)}
	case errors.Is(err, errClientBusy):
		return &broker.Error{Code: codeServerBusy, Detail: fmt.Sprintf("this client's request bodies in flight hold all of its share of memory (--max-body-memory-per-client); retry in %d s, or send fewer bodies at once", busyRetryAfter)}
	case errors.Is(err, errBodyTooSlow):
		return &broker.Error{Code: codeRequestTimeout, Field: "body", Detail: "the request body arrived too slowly (" + err.Error() + "); the connection is closed"}
	case errors.As(err, &ee):
		return &broker.Error{Code: codeUnsupportedMedia, Field: "Content-Encoding", Detail: ee.Error()}
	case errors.As(err, &ce):
		return &broker.Error{Code: codeInvalidParameter, Field: "body", Detail: ce.Error()}
	}
	return &broker.Error{Code: codeInvalidParameter, Field: "body", Detail: "reading the request body failed: " + err.Error()}
}

// writeBodyProblem answers a problem of bodyProblem; a server_busy one
// says when to come back.
func writeBodyProblem(w http.ResponseWriter, r *http.Request, p *broker.Error) {
	switch p.Code {
	case codeServerBusy:
		w.Header().Set("Retry-After", strconv.Itoa(busyRetryAfter))
	case codeRequestTimeout:
		// The rest of the body may still come: the connection is of no
		// further use.
		w.Header().Set("Connection", "close")
	}
	writeProblem(w, r, p.Code, p.Field, p.Detail)
}

// readRawBody reads the request body as readBody does, paid for from the
// body budget, but does not decode it: for a cluster fan-out, whose
// brokers decode it themselves.
func readRawBody(r *http.Request) ([]byte, *broker.Error) {
	limit := maxBodyRead(true)
	body, err := readGrowing(r.Body, leaseFrom(r.Context()), r.ContentLength, int(limit))
	if err != nil {
		return nil, bodyProblem(err, &broker.Error{Code: codeRequestTooLarge, Field: "body", Detail: fmt.Sprintf("the request body is larger than %d bytes", limit)})
	}
	return body, nil
}
