package httpapi

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/namesrv"
	"github.com/prometheus/client_golang/prometheus"
)

// A broker in a cluster answers for the whole bus: what it does not hold
// it forwards to the brokers that do, found through the name servers
// (GET /v1/routes/{topic}, GET /v1/cluster). A forwarded request carries
// Postbus-Forwarded-By, and a broker never forwards a request that
// carries it, so a request crosses at most one hop and cannot loop. The
// client's Authorization header travels with it: the brokers of a cluster
// share their token configuration.
//
// Which broker does what (the decisions are the package doc's too):
//   - publish: a broker holding the topic stores it; one that does not
//     forwards it, round-robin over the holders weighted by their queue
//     counts. A sharding key picks one queue of the whole topic, numbered
//     across the holders in name order, so a key keeps its order whichever
//     broker the client talks to; a dedup id without a sharding key picks
//     its holder the same way. An unkeyed forward that cannot connect is
//     tried on the next holder, and the broker that failed is skipped for
//     downFor; a keyed one is refused (503, nothing stored) instead.
//   - subscriptions: created on every broker holding the topic with one id
//     and one secret; changed, paused, resumed, rotated and deleted on
//     every live broker, each change with one version for every copy;
//     listed merged. The holders of a topic push each other their records
//     (cluster_sync.go), so a copy that missed a change gets it.
//   - pull: from every broker holding the topic; receipts name the broker
//     that issued them, so an ack or nack may go to any broker.
//   - queries by id find the message on whichever broker holds it; queries
//     by key merge every holder's answer.

// hdrForwardedBy marks a request one broker sent another on a client's
// behalf; its value is the sender's name.
const hdrForwardedBy = "Postbus-Forwarded-By"

// hdrBroker names the broker that answered, on every answer from a broker
// in a cluster.
const hdrBroker = "Postbus-Broker"

// downFor is how long a broker that refused a connection, or let a
// request pass its hop deadline, is skipped before it is tried again; name servers drop it from routes after their
// broker expiry (120s) if it stays down.
const downFor = 10 * time.Second

// DefaultHopTimeout bounds a request one broker sends another, beyond a
// long poll's wait: a broker that accepts connections but does not answer
// (hung, or stopped) costs a request this much at most, and is then
// skipped like one that refused the connection.
const DefaultHopTimeout = 10 * time.Second

// errHopTimeout marks a forward that ran out of its hop's time while the
// client still waited: the other broker is hung or overloaded.
var errHopTimeout = errors.New("no answer within the hop's deadline")

// errLateDeadline marks a forward whose deadline passed while this broker
// itself was not running on time (stopped, as by SIGSTOP, or starved):
// its timer fired well after the deadline, so the time ran out here, not
// on the other broker, which is not marked down for it. Without this, a
// broker waking from a hang finds every request it had in flight timed
// out and skips every healthy peer for downFor, and with them its
// subscription sync (a deleted subscription then goes on delivering).
var errLateDeadline = errors.New("the hop's deadline passed while this broker was paused or starved")

// lateSlack is how far past a hop's deadline its timer may fire before
// this broker takes itself, not the other broker, for the one that was
// not running.
const lateSlack = 500 * time.Millisecond

// hopTimedOut classifies a forward that ran out of its hop's time after
// starting at start with limit: errHopTimeout, or errLateDeadline when the
// time ran out here (logged, and counted in
// postbus_cluster_late_deadlines_total).
func (c *cluster) hopTimedOut(p peer, start time.Time, limit time.Duration) error {
	if late := time.Since(start) - limit; late > lateSlack {
		c.lateDeadlines.Inc()
		c.logger.Warn("a forward's deadline fired late: this broker was paused or starved, so the other broker is not marked down",
			slog.String("broker", p.name), slog.Duration("late", late), slog.Duration("deadline", limit))
		return fmt.Errorf("%w (%s late)", errLateDeadline, late.Round(time.Millisecond))
	}
	return fmt.Errorf("%w (%s)", errHopTimeout, limit)
}

// hopWaitKey carries a long poll's wait in a request's context, for do to
// add to the hop's deadline.
type hopWaitKey struct{}

func withHopWait(ctx context.Context, wait time.Duration) context.Context {
	return context.WithValue(ctx, hopWaitKey{}, wait)
}

// receiptSep separates the issuing broker's name from a receipt in a
// cluster: broker-a~<receipt>. Neither broker names nor receipts use it.
const receiptSep = "~"

// Cluster is what a broker needs to act as one part of a bus.
type Cluster struct {
	// Self is this broker's name as it registers with the name servers.
	Self string
	// Names finds routes and the live brokers.
	Names *namesrv.Client
	// HTTP sends forwarded requests; nil: a client with a pool sized for
	// forwarding publishes.
	HTTP *http.Client
	// HopTimeout bounds each request to another broker, beyond a long
	// poll's wait (0: DefaultHopTimeout). The client's own request bounds
	// it too: a client that leaves cancels the forwards made for it.
	HopTimeout time.Duration
	// SyncInterval is how often the broker pushes its subscription
	// records to the other holders of its topics (0: DefaultSyncInterval);
	// see cluster_sync.go.
	SyncInterval time.Duration
	// Token is the bearer token (admin scope) the broker's own calls to
	// other brokers carry, when tokens are checked: the pushes of
	// subscription records. Requests made for a client carry the client's.
	Token string
	// TLS configures https to other brokers (a private CA in its RootCAs);
	// nil: the system's roots. Used only when HTTP is nil.
	TLS *tls.Config
}

// peer is a broker a request may go to. The local broker has no address.
type peer struct {
	name   string
	addr   string
	queues int
}

func (p peer) local() bool { return p.addr == "" }

// cluster is the Server's view of the other brokers.
type cluster struct {
	self   string
	names  *namesrv.Client
	hc     *http.Client
	logger *slog.Logger
	rr     atomic.Uint64
	hop    time.Duration // see Cluster.HopTimeout

	skipped *prometheus.CounterVec // brokers marked down, by broker and reason
	// lateDeadlines counts forwards timed out while this broker was paused.
	lateDeadlines prometheus.Counter
	// expiredForwards counts forwarded pulls refused for arriving after
	// their deadline.
	expiredForwards prometheus.Counter
	// keyedRefused counts publishes (or batches) refused because the
	// holder their placement key picks is skipped or unreachable.
	keyedRefused *prometheus.CounterVec
	// refusedWrites counts changes refused because the name servers
	// refuse this broker's name.
	refusedWrites prometheus.Counter
	// partial counts reads answered without some broker's share (503
	// for a message, or a list marked incomplete), by what was read.
	partial *prometheus.CounterVec

	mu sync.Mutex
	// down maps a broker's address to when it may be tried again. By
	// address, not name: a broker restarted on a new port is new.
	down map[string]time.Time // guarded by mu
}

func newCluster(c *Cluster, logger *slog.Logger, reg prometheus.Registerer) *cluster {
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			Proxy:       nil,
			DialContext: (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			// As many idle connections to a broker as requests may be in
			// flight to it, so a busy forwarder does not redial.
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			TLSClientConfig:     c.TLS,
		}}
	}
	hop := c.HopTimeout
	if hop <= 0 {
		hop = DefaultHopTimeout
	}
	skipped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postbus_cluster_broker_skipped_total",
		Help: "Times another broker was marked down and skipped for a while, by why: refused (the connection) or timeout (no answer within --forward-timeout).",
	}, []string{"broker", "reason"})
	keyedRefused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postbus_cluster_keyed_publish_refused_total",
		Help: "Publishes (single, or a batch's keyed messages) answered as not stored because the holder their sharding key or dedup id picks was skipped or unreachable; they are never moved to another holder.",
	}, []string{"broker"})
	refusedWrites := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postbus_cluster_name_refused_requests_total",
		Help: "Changes (publishes, topic and subscription changes, acks…) answered 503 not_ready because the name servers refuse this broker's name.",
	})
	names := c.Names
	nameRefused := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postbus_cluster_name_refused",
		Help: "1 while a name server refuses this broker's name (another live broker holds it): the broker is outside the bus, not ready, and refuses changes.",
	}, func() float64 {
		if names != nil && names.Refused() != nil {
			return 1
		}
		return 0
	})
	partial := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postbus_cluster_partial_reads_total",
		Help: "Reads some broker that may hold part of the answer did not answer: a message by id answered 503 broker_unavailable, or a merged list answered with \"incomplete\" naming the brokers left out, by what was read.",
	}, []string{"read"})
	lateDeadlines := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postbus_cluster_late_deadlines_total",
		Help: "Forwards whose hop deadline fired well after it was due: this broker was paused (SIGSTOP) or starved, so the other broker was not marked down for it (each logged at WARN).",
	})
	expiredForwards := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "postbus_cluster_expired_forwards_total",
		Help: "Pulls forwarded by another broker that arrived after that broker's deadline (this broker was hung or overloaded) and were answered 503 with nothing pulled (each logged at WARN).",
	})
	reg.MustRegister(skipped, keyedRefused, refusedWrites, nameRefused, partial, lateDeadlines, expiredForwards)
	return &cluster{self: c.Self, names: c.Names, hc: hc, logger: logger, hop: hop, skipped: skipped, keyedRefused: keyedRefused, lateDeadlines: lateDeadlines, expiredForwards: expiredForwards,
		refusedWrites: refusedWrites, partial: partial, down: make(map[string]time.Time)}
}

// coordinating reports whether this broker answers r for the whole bus:
// it is in a cluster and r was not forwarded to it by another broker.
func (s *Server) coordinating(r *http.Request) bool {
	return s.cluster != nil && r.Header.Get(hdrForwardedBy) == ""
}

// isDown reports whether the broker at addr recently refused a connection
// or let a request time out.
func (c *cluster) isDown(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.down[addr]
	if ok && time.Now().After(until) {
		delete(c.down, addr)
		return false
	}
	return ok
}

// markUp forgets that the broker at addr was marked down: it has been
// heard from since (it pushed its subscription records here).
func (c *cluster) markUp(addr string) {
	c.mu.Lock()
	delete(c.down, addr)
	c.mu.Unlock()
}

func (c *cluster) markDown(p peer, err error) {
	c.mu.Lock()
	_, was := c.down[p.addr]
	c.down[p.addr] = time.Now().Add(downFor)
	c.mu.Unlock()
	reason := "refused"
	if errors.Is(err, errHopTimeout) {
		reason = "timeout"
	}
	c.skipped.WithLabelValues(p.name, reason).Inc()
	if !was {
		c.logger.Warn("broker unreachable or not answering; sending its share to the others", slog.String("broker", p.name), slog.String("reason", reason),
			slog.String("addr", p.addr), slog.Duration("skipped_for", downFor), slog.Any("err", err))
	}
}

// holders returns the brokers holding topic, in name order, this one
// included (as the local peer) when it holds localQueues > 0 of it: a
// route a moment old may not list it yet. A name server outage with
// nothing cached is not an error here: the caller falls back to what this
// broker holds. Fan-outs that change state ask every holder, so that a
// broker that is down shows up as a failure; reads and publishes skip the
// ones that recently refused a connection (live).
func (c *cluster) holders(ctx context.Context, topic string, localQueues int) []peer {
	out, err := c.route(ctx, topic, localQueues)
	if err != nil {
		c.logger.Debug("no route", slog.String("topic", topic), slog.Any("err", err))
	}
	return out
}

// route is holders, with the name servers' failure: err is nil when the
// route is whole (found, or every name server answered and none knows the
// topic), and wraps namesrv.ErrTopicGone when the topic's brokers are
// down, namesrv.ErrUnavailable when not every name server could be asked.
func (c *cluster) route(ctx context.Context, topic string, localQueues int) ([]peer, error) {
	var out []peer
	if localQueues > 0 {
		out = append(out, peer{name: c.self, queues: localQueues})
	}
	rt, ok, err := c.names.Route(ctx, topic)
	if !ok {
		return out, err
	}
	for _, b := range rt.Brokers {
		if b.Name != c.self && b.Queues > 0 {
			out = append(out, peer{name: b.Name, addr: b.Addr, queues: b.Queues})
		}
	}
	slices.SortFunc(out, func(a, b peer) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// live leaves out of peers the brokers that recently refused a
// connection, unless that would leave none.
func (c *cluster) live(peers []peer) []peer {
	out := slices.DeleteFunc(slices.Clone(peers), func(p peer) bool { return !p.local() && c.isDown(p.addr) })
	if len(out) == 0 {
		return peers
	}
	return out
}

// brokers returns every live broker of the cluster, this one as the local
// peer.
func (c *cluster) brokers(ctx context.Context) ([]peer, error) {
	list, err := c.names.Brokers(ctx)
	if err != nil {
		return nil, err
	}
	out := []peer{{name: c.self}}
	for _, b := range list {
		if b.Name != c.self {
			out = append(out, peer{name: b.Name, addr: b.Addr})
		}
	}
	return out, nil
}

// everyBroker is brokers, or this broker alone when no name server can
// list them (and nothing is cached), which is logged: the request is then
// answered for this broker only.
func (s *Server) everyBroker(r *http.Request) []peer {
	peers, err := s.cluster.brokers(r.Context())
	if err != nil {
		s.cluster.logger.Warn("cannot list the cluster's brokers; answering for this one only",
			slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Any("err", err))
		return []peer{{name: s.cluster.self}}
	}
	return peers
}

// others is brokers without this one.
func (c *cluster) others(ctx context.Context) []peer {
	all, err := c.brokers(ctx)
	if err != nil {
		c.logger.Warn("cannot list the cluster's brokers; answering from this one only", slog.Any("err", err))
		return nil
	}
	return all[1:]
}

// pick returns the holder of the topic's queue number q, counting queues
// across holders in order.
func pick(holders []peer, q uint64) peer {
	var total uint64
	for _, h := range holders {
		total += uint64(h.queues)
	}
	q %= total
	for _, h := range holders {
		if q < uint64(h.queues) {
			return h
		}
		q -= uint64(h.queues)
	}
	return holders[len(holders)-1] // unreachable: q < total
}

// hopHeaders are not passed on by a forward (RFC 9110 §7.6.1).
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// send forwards r, with body in place of its own, to p and returns p's
// answer. path is the path and query to ask for; "" keeps r's.
func (c *cluster) send(ctx context.Context, r *http.Request, p peer, path string, body []byte) (*http.Response, error) {
	return c.do(ctx, r, p, path, body, true)
}

// do is send; unmarked, the request reaches p as the client's own, for p
// to answer for the whole bus in this broker's place.
func (c *cluster) do(ctx context.Context, r *http.Request, p peer, path string, body []byte, mark bool) (*http.Response, error) {
	if path == "" {
		path = r.URL.RequestURI()
	}
	// Every hop has a deadline: the client's (its request's context), and
	// at most the hop timeout beyond a long poll's wait, so that a broker
	// that accepts connections but never answers cannot hold the request.
	wait, _ := ctx.Value(hopWaitKey{}).(time.Duration)
	parent := ctx
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, wait+c.hop)
	req, err := http.NewRequestWithContext(ctx, r.Method, p.addr+path, bytes.NewReader(body))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("forward to %s: %w", p.name, err)
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	for _, h := range hopHeaders {
		req.Header.Del(h)
	}
	if mark {
		req.Header.Set(hdrForwardedBy, c.self)
	}
	req.ContentLength = int64(len(body))
	resp, err := c.hc.Do(req)
	if err != nil {
		cancel()
		if parent.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("forward to %s: %w: %w", p.name, c.hopTimedOut(p, start, wait+c.hop), err)
		}
		return nil, fmt.Errorf("forward to %s: %w", p.name, err)
	}
	resp.Body = &hopBody{ReadCloser: resp.Body, cancel: cancel, parent: parent, ctx: ctx,
		timedOut: func() error { return c.hopTimedOut(p, start, wait+c.hop) }}
	return resp, nil
}

// hopBody is a forwarded request's answer; closing it ends the hop's
// context, and a read that runs out of the hop's time says so.
type hopBody struct {
	io.ReadCloser
	cancel      context.CancelFunc
	parent, ctx context.Context
	timedOut    func() error // errHopTimeout or errLateDeadline
}

func (b *hopBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.parent.Err() == nil && b.ctx.Err() != nil {
		err = fmt.Errorf("%w: %w", b.timedOut(), err)
	}
	return n, err
}

func (b *hopBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// unresponsive reports whether a forward failed in a way that says the
// other broker is not there to answer: it refused the connection, or it
// let the hop's deadline pass. Either marks it down.
func unresponsive(err error) bool {
	return notSent(err) || errors.Is(err, errHopTimeout)
}

// notSent reports whether a forward failed before any of the request
// could reach the other broker, so it is safe to send it elsewhere: a
// publish that may have arrived must not be sent twice.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// relay writes a forwarded request's answer as this broker's own.
func relay(w http.ResponseWriter, resp *http.Response) {
	defer resp.Body.Close()
	copyAnswerHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	// Past the status line, a failed copy (either side gone) can only cut
	// the answer short, which the client sees.
	_, _ = io.Copy(w, resp.Body)
}

// copyAnswerHeader copies another broker's answer headers onto this
// broker's answer, leaving out the hop-by-hop ones.
func copyAnswerHeader(dst, src http.Header) {
	for k, vs := range src {
		if !slices.Contains(hopHeaders, k) {
			dst[k] = vs
		}
	}
}

// answer is one broker's answer to a request, whole in memory.
type answer struct {
	peer   peer
	status int
	header http.Header
	body   []byte
	err    error // the broker could not be asked
}

func (a answer) ok() bool { return a.err == nil && a.status >= 200 && a.status < 300 }

// recorder is an in-memory ResponseWriter for the local share of a fan-out.
type recorder struct {
	header http.Header
	status int
	buf    bytes.Buffer
}

func (rec *recorder) Header() http.Header { return rec.header }
func (rec *recorder) WriteHeader(status int) {
	if rec.status == 0 {
		rec.status = status
	}
}
func (rec *recorder) Write(p []byte) (int, error) {
	rec.WriteHeader(http.StatusOK)
	return rec.buf.Write(p)
}

// ask sends r (with body, and path when not "") to every peer at once and
// returns their answers in peers' order. The local peer answers through
// local, in process, as a forwarded request would be answered; for it,
// path may change the query only, since the route's parameters are r's.
func (s *Server) ask(r *http.Request, peers []peer, path string, body []byte, local http.HandlerFunc) []answer {
	out := make([]answer, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() {
			out[i] = s.askOne(r, p, path, body, local)
		})
	}
	wg.Wait()
	return out
}

func (s *Server) askOne(r *http.Request, p peer, path string, body []byte, local http.HandlerFunc) answer {
	if p.local() {
		lr := r.Clone(r.Context())
		lr.Header.Set(hdrForwardedBy, s.cluster.self)
		if path != "" {
			u := *r.URL
			u.RawQuery = ""
			if i := strings.IndexByte(path, '?'); i >= 0 {
				u.RawQuery = path[i+1:]
			}
			lr.URL = &u
		}
		lr.Body = io.NopCloser(bytes.NewReader(body))
		lr.ContentLength = int64(len(body))
		rec := &recorder{header: make(http.Header)}
		local(rec, lr)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		return answer{peer: p, status: rec.status, header: rec.header, body: rec.buf.Bytes()}
	}
	resp, err := s.cluster.send(r.Context(), r, p, path, body)
	if err != nil {
		if unresponsive(err) {
			s.cluster.markDown(p, err)
		}
		return answer{peer: p, err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		if unresponsive(err) {
			s.cluster.markDown(p, err)
		}
		return answer{peer: p, err: fmt.Errorf("reading %s's answer: %w", p.name, err)}
	}
	return answer{peer: p, status: resp.StatusCode, header: resp.Header, body: b}
}

// writeAnswer writes a as this broker's answer; a broker that could not be
// asked answers 503 broker_unavailable.
func writeAnswer(w http.ResponseWriter, r *http.Request, a answer) {
	if a.err != nil {
		// The broker may be back soon (restarting, or stopped while still
		// registered): a client should retry, not give up.
		w.Header().Set("Retry-After", "5")
		writeProblem(w, r, codeBrokerUnavailable, "", describe(a))
		return
	}
	copyAnswerHeader(w.Header(), a.header)
	w.Header().Set("Content-Length", fmt.Sprint(len(a.body)))
	w.WriteHeader(a.status)
	w.Write(a.body)
}

// fanOutBody reads r's whole body (limitBody bounds it) for sending to
// several brokers, answering the problem itself when it cannot.
func fanOutBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.Body == nil {
		return nil, true
	}
	body, perr := readRawBody(r)
	if perr != nil {
		writeBodyProblem(w, r, perr)
		return nil, false
	}
	return body, true
}

// tally sorts a fan-out's answers by outcome.
type tally struct {
	ok       []*answer // the successes, in the peers' order
	failed   []string  // how each broker failed, 404s aside
	refused  []string  // the failures that say nothing was done: refused, or never sent
	unknown  []string  // the failures that may have been applied: sent, and no answer or a 5xx
	missing  []string  // the brokers that answered 404
	refusal  *answer   // the first failure below 500 other than a 404: a reason any broker would give
	notFound *answer   // the first 404
}

func tallyOf(answers []answer) tally {
	var t tally
	for i := range answers {
		a := &answers[i]
		switch {
		case a.ok():
			t.ok = append(t.ok, a)
		case a.err == nil && a.status == http.StatusNotFound:
			t.missing = append(t.missing, describe(*a))
			t.notFound = cmp.Or(t.notFound, a)
		default:
			t.failed = append(t.failed, describe(*a))
			if a.err != nil && !notSent(a.err) || a.err == nil && a.status >= 500 {
				t.unknown = append(t.unknown, describe(*a))
			} else {
				t.refused = append(t.refused, describe(*a))
			}
			if a.err == nil && a.status < 500 {
				t.refusal = cmp.Or(t.refusal, a)
			}
		}
	}
	return t
}

// best is this broker's success when it has one, else the first.
func (t tally) best() *answer {
	for _, a := range t.ok {
		if a.peer.local() {
			return a
		}
	}
	return t.ok[0]
}

// applied names the brokers that succeeded.
func (t tally) applied() []string {
	names := make([]string, len(t.ok))
	for i, a := range t.ok {
		names[i] = a.peer.name
	}
	return names
}

// broadcast applies r to every peer and answers once for all of them:
// with the first success (this broker's when it has one) when nobody
// failed, with a 404 when every peer said 404, and otherwise with 502
// cluster_partial naming who applied it and who did not; the operations
// broadcast are idempotent, so the client may simply retry.
func (s *Server) broadcast(w http.ResponseWriter, r *http.Request, peers []peer, body []byte, local http.HandlerFunc) {
	t := tallyOf(s.ask(r, peers, "", body, local))
	switch {
	case len(t.ok) > 0 && len(t.failed) == 0:
		writeAnswer(w, r, *t.best())
	case len(t.ok) == 0 && t.refusal != nil:
		writeAnswer(w, r, *t.refusal) // refused everywhere for the same reason
	case len(t.ok) == 0 && len(t.failed) == 0:
		writeAnswer(w, r, *t.notFound)
	default:
		detail := fmt.Sprintf("applied on %s", listOrNone(t.applied()))
		if len(t.refused) > 0 {
			detail += fmt.Sprintf("; failed on %s", strings.Join(t.refused, ", "))
		}
		if len(t.unknown) > 0 {
			// Sent, and no answer: the broker may have applied it (one
			// waiting on a hung name server does), so "failed" would be
			// a lie.
			detail += fmt.Sprintf("; may or may not have been applied on %s", strings.Join(t.unknown, ", "))
		}
		writeProblem(w, r, codeClusterPartial, "", detail+"; retrying is safe")
	}
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "no broker"
	}
	return strings.Join(names, ", ")
}

// problemCodeOf is the code of a problem answer's body, "" for another.
func problemCodeOf(body []byte) broker.Code {
	var p problem
	if json.Unmarshal(body, &p) != nil {
		return ""
	}
	return p.Code
}
