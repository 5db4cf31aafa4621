package httpapi

import (
	"compress/flate"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/postbus/postbus/broker"
	"github.com/prometheus/client_golang/prometheus"
)

// Request bodies are read into memory, and a request's announced
// Content-Length is no promise that the bytes will come: a client that
// sends the headers of a 4 MiB publish and then one byte a minute must not
// make the server hold 4 MiB for it. So a body is read into a buffer that
// grows with what has arrived (doubling, from bodyChunk), and every buffer
// is paid for from one budget shared by all connections (--max-body-memory,
// Config.MaxBodyMemory). A request whose body would take the budget over
// its limit is answered 503 server_busy with Retry-After; what it had
// reserved is given back when its handler returns, as is every request's.

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

const (
	// bodyChunk is a body buffer's first size: most bodies fit in it, and
	// one that has not arrived holds no more than this.
	bodyChunk = 16 << 10
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
)

// encodingError is a Content-Encoding the server does not decode.
type encodingError struct{ detail string }

func (e *encodingError) Error() string { return e.detail }

// corruptBodyError is a body whose Content-Encoding does not decode.
type corruptBodyError struct{ err error }

func (e *corruptBodyError) Error() string { return "the gzip body does not decode: " + e.err.Error() }
func (e *corruptBodyError) Unwrap() error { return e.err }

// bodyBudget bounds the bytes held by request bodies across all
// connections.
type bodyBudget struct {
	limit   int64
	used    atomic.Int64
	inUse   prometheus.GaugeFunc
	refused prometheus.Counter
}

func newBodyBudget(limit int64, reg prometheus.Registerer) *bodyBudget {
	b := &bodyBudget{limit: limit}
	b.inUse = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postbus_http_body_bytes_in_flight",
		Help: "Bytes reserved for request bodies being read or handled, across all connections (at most --max-body-memory).",
	}, func() float64 { return float64(b.used.Load()) })
	b.refused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postbus_http_body_memory_refused_total",
		Help: "Requests answered 503 server_busy because bodies in flight held all of --max-body-memory.",
	})
	reg.MustRegister(b.inUse, b.refused)
	return b
}

// reserve takes n bytes of the budget, or nothing and false when that
// would take it over its limit.
func (b *bodyBudget) reserve(n int64) bool {
	for {
		used := b.used.Load()
		if used+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

func (b *bodyBudget) release(n int64) { b.used.Add(-n) }

// bodyLease is what one request has reserved; released when its handler
// returns. A cluster fan-out may read through it from several goroutines.
type bodyLease struct {
	budget *bodyBudget
	mu     sync.Mutex
	held   int64 // guarded by mu
	closed bool  // guarded by mu; the handler returned, its answer sent
}

func (l *bodyLease) reserve(n int64) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		// A goroutine of a fan-out still reading after the request was
		// answered: nobody waits for it, and what it took would never
		// be given back.
		return false
	}
	if !l.budget.reserve(n) {
		// The request is refused for it (503 server_busy): counted here,
		// once, whichever handler reads the body.
		l.budget.refused.Inc()
		return false
	}
	l.held += n
	return true
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
	l.budget.release(n)
}

// close gives back all the request holds; the lease takes no more.
func (l *bodyLease) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	l.budget.release(l.held)
	l.held = 0
}

type bodyLeaseKey struct{}

func leaseFrom(ctx context.Context) *bodyLease {
	l, _ := ctx.Value(bodyLeaseKey{}).(*bodyLease)
	return l
}

// limitBody caps every request body at the largest any route accepts, so a
// route that forgets its own limit cannot be made to read without end
// (routes read through tighter limits of their own), and gives the request
// a lease on the body budget that is returned when the handler is done.
func (s *Server) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyRead(s.registry != nil)+1)
		lease := &bodyLease{budget: s.bodies}
		defer lease.close()
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), bodyLeaseKey{}, lease)))
	})
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
	if !lease.reserve(gzipReaderCost) {
		return nil, errServerBusy
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
	if !lease.reserve(size) {
		return nil, errServerBusy
	}
	buf := make([]byte, 0, size)
	grow := func(extra []byte) error {
		next := min(2*int64(cap(buf)), ceiling)
		if !lease.reserve(next - int64(cap(buf))) {
			return errServerBusy
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
	if p.Code == codeServerBusy {
		w.Header().Set("Retry-After", strconv.Itoa(busyRetryAfter))
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
