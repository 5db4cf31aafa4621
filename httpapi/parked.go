package httpapi

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/postbus/postbus/broker"
)

// Parked long polls. A pull held the usual way keeps its connection's
// goroutine, with the stack it grew through the middleware and the
// broker (16 KiB), and net/http's buffers for the connection (10 KiB):
// 10,000 held polls took 330 MB. A pull over HTTP/1 that finds nothing
// ready is parked instead: its connection is taken from net/http
// (Hijack), its buffers and goroutine let go, and what remains is the
// connection, this struct, a timer and an armed broker wake-up
// (broker.PullNow). A wake-up runs a look on a goroutine of its own for
// as long as the look takes; the answer is written on the connection,
// which is then closed (Connection: close), as net/http cannot take a
// taken connection back. A poll that has no messages to answer with for
// its whole wait pays one reconnect; a pull that finds messages at once
// never parks.
//
// A parked poll has no goroutine reading its connection, so a client
// that goes away is found by a sweep every parkSweep that peeks at each
// parked connection, and by a peek right before a look hands anything
// out: a poll whose client is gone is dropped, not answered, and what
// it took is given back at once. Where peeking is not possible (no
// socket under the connection, or not Unix) polls are held the usual way.

// parkSweep is how often parked connections are checked for a client that
// went away.
const parkSweep = time.Second

// parkedPoll is one parked long poll.
type parkedPoll struct {
	s       *Server
	conn    net.Conn
	req     *http.Request // what an answer needs of the request: method, path
	route   string
	header  http.Header // headers set before parking (request id, broker)
	group   string
	topic   string
	max     int
	vis     time.Duration
	start   time.Time
	release func() // the held-poll bound's

	mu     sync.Mutex
	done   bool               // answered or dropped; guarded by mu
	waiter *broker.PollWaiter // armed while parked; guarded by mu
	timer  *time.Timer        // the end of the wait
	hold   func()             // the broker's held_polls count
}

// parking are the parked polls of a Server, for the sweep and shutdown.
type parking struct {
	mu      sync.Mutex
	polls   map[*parkedPoll]struct{} // guarded by mu
	sweeper bool                     // the sweep runs; guarded by mu
	closed  bool                     // no more parking; guarded by mu
}

// parkable reports whether a held pull of r may be parked.
func (s *Server) parkable(r *http.Request) bool {
	return r.ProtoMajor == 1 && canPeek && s.broker != nil
}

// park parks a long poll that found nothing ready. It returns false when
// the connection could not be taken (nothing is written then, and the poll
// is held the usual way); true when the poll is parked and owns release.
func (s *Server) park(w http.ResponseWriter, r *http.Request, group, topic string, max int, wait, vis time.Duration, release func()) bool {
	s.parked.mu.Lock()
	closed := s.parked.closed
	s.parked.mu.Unlock()
	if closed {
		return false
	}
	header := w.Header().Clone()
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	if rw.Reader.Buffered() > 0 || !peekable(conn) {
		// The client sent more (a pipelined request) or the connection
		// cannot be peeked at: hold it here, and close it after.
		p := s.newParked(conn, r, header, group, topic, max, vis, release)
		got, err := s.broker.Pull(context.Background(), group, topic, max, wait, vis)
		p.answer(got, err)
		release()
		return true
	}
	p := s.newParked(conn, r, header, group, topic, max, vis, release)
	p.hold = s.broker.HoldPoll(group)
	p.mu.Lock()
	defer p.mu.Unlock()
	s.parked.mu.Lock()
	if s.parked.polls == nil {
		s.parked.polls = make(map[*parkedPoll]struct{})
	}
	s.parked.polls[p] = struct{}{}
	if !s.parked.sweeper {
		s.parked.sweeper = true
		go s.sweepParked()
	}
	s.parked.mu.Unlock()
	p.timer = time.AfterFunc(wait, p.expire)
	p.lookLocked()
	return true
}

func (s *Server) newParked(conn net.Conn, r *http.Request, header http.Header, group, topic string, max int, vis time.Duration, release func()) *parkedPoll {
	route := "unmatched"
	if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
		route = rc.RoutePattern()
	}
	return &parkedPoll{
		s: s, conn: conn, route: route, header: header,
		req:   &http.Request{Method: r.Method, URL: &url.URL{Path: r.URL.Path}, Header: http.Header{}},
		group: group, topic: topic, max: max, vis: vis, start: time.Now(), release: release,
	}
}

// wake is the parked poll's broker wake-up: it must not block.
func (p *parkedPoll) wake() { go p.look() }

func (p *parkedPoll) look() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lookLocked()
}

// lookLocked looks for messages, answers when there are (or when the
// subscription went away), and parks again otherwise. Called with p.mu
// held.
func (p *parkedPoll) lookLocked() {
	if p.done {
		return
	}
	if alive, _ := peekAlive(p.conn); !alive {
		p.dropLocked()
		return
	}
	got, w, err := p.s.broker.PullNow(context.Background(), p.group, p.topic, p.max, p.vis, true, p.wake)
	if len(got) == 0 && err == nil && w != nil {
		p.waiter = w
		return
	}
	p.finishLocked()
	p.answer(got, err)
}

// expire answers the poll empty at the end of its wait.
func (p *parkedPoll) expire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.finishLocked()
	p.answer(nil, nil)
}

// dropLocked ends a poll whose client went away, unanswered.
func (p *parkedPoll) dropLocked() {
	p.finishLocked()
	p.conn.Close()
	p.record(0)
}

// finishLocked takes the poll out of every count, for its answer.
func (p *parkedPoll) finishLocked() {
	p.done = true
	if p.waiter != nil {
		p.waiter.Cancel()
		p.waiter = nil
	}
	if p.timer != nil {
		p.timer.Stop()
	}
	if p.hold != nil {
		p.hold()
	}
	p.release()
	p.s.parked.mu.Lock()
	delete(p.s.parked.polls, p)
	p.s.parked.mu.Unlock()
}

// answer writes the poll's answer on its connection and closes it. What
// could not be written is given back to the group at once.
func (p *parkedPoll) answer(got []broker.Pulled, err error) {
	rec := &bufferedResponse{header: p.header}
	if err != nil {
		p.s.writeError(rec, p.req, err)
	} else {
		p.s.writePull(rec, got)
	}
	resp := &http.Response{
		StatusCode: rec.status, ProtoMajor: 1, ProtoMinor: 1, Header: rec.header,
		ContentLength: int64(rec.body.Len()), Body: http.NoBody, Close: true,
	}
	if rec.body.Len() > 0 {
		resp.Body = nopCloser{&rec.body}
	}
	resp.Header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	// Counted before it is written: a client that has its answer finds
	// it counted.
	p.record(rec.status)
	var out bytes.Buffer
	werr := resp.Write(&out)
	if werr == nil {
		_ = p.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, werr = p.conn.Write(out.Bytes())
	}
	p.conn.Close()
	if werr != nil && len(got) > 0 {
		p.s.giveBack(p.group, got)
	}
}

// record counts the poll's request as instrument counts the others
// (status 0: dropped, its client gone, as net/http logs none).
func (p *parkedPoll) record(status int) {
	if status == 0 {
		return
	}
	p.s.metrics.requests.WithLabelValues(p.req.Method, p.route, strconv.Itoa(status)).Inc()
	p.s.metrics.duration.WithLabelValues(p.req.Method, p.route).Observe(time.Since(p.start).Seconds())
}

// sweepParked drops the parked polls whose clients went away.
func (s *Server) sweepParked() {
	t := time.NewTicker(parkSweep)
	defer t.Stop()
	for range t.C {
		s.parked.mu.Lock()
		if s.parked.closed || len(s.parked.polls) == 0 {
			// Started again by the next park.
			s.parked.sweeper = false
			s.parked.mu.Unlock()
			return
		}
		polls := make([]*parkedPoll, 0, len(s.parked.polls))
		for p := range s.parked.polls {
			polls = append(polls, p)
		}
		s.parked.mu.Unlock()
		for _, p := range polls {
			if alive, _ := peekAlive(p.conn); alive {
				continue
			}
			p.mu.Lock()
			if !p.done {
				p.dropLocked()
			}
			p.mu.Unlock()
		}
	}
}

// CloseParked answers every parked poll as if its wait had ended, and
// parks no more: for a server shutting down (http.Server.Shutdown does
// not see taken connections).
func (s *Server) CloseParked() {
	s.parked.mu.Lock()
	s.parked.closed = true
	polls := make([]*parkedPoll, 0, len(s.parked.polls))
	for p := range s.parked.polls {
		polls = append(polls, p)
	}
	s.parked.mu.Unlock()
	for _, p := range polls {
		p.expire()
	}
}

// giveBack hands messages nobody will receive back to the group at once,
// rather than let them wait out their visibility.
func (s *Server) giveBack(group string, got []broker.Pulled) {
	receipts := make([]string, len(got))
	for i, p := range got {
		receipts[i] = p.Receipt
	}
	if err := s.broker.Nack(context.Background(), group, receipts, 0); err != nil {
		s.logger.Warn("handing back messages of a pull nobody waits for failed; they return after their visibility", slog.Any("err", err))
	}
}

// bufferedResponse is a ResponseWriter that keeps the answer, to write it
// on a taken connection.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.body.Write(p)
}

type nopCloser struct{ *bytes.Buffer }

func (nopCloser) Close() error { return nil }
