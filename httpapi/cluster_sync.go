package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/prometheus/client_golang/prometheus"
)

// Anti-entropy of subscriptions. Each broker holding a topic keeps a copy
// of each of its subscriptions, every change with a version (see package
// broker, subsync.go). A change is made on every broker concerned at
// once, but one that is down, expired or unknown to a restarted name
// server at that moment misses it; so each broker pushes its records
// (tombstones included) of the topics it holds to the other live holders
// of each:
//   - at start, every SyncInterval, and when a name server registers it
//     anew (it had been expired, or the name server restarted);
//   - at once when a holder appears that it has not pushed to since that
//     holder was last in the route (a broker joining a topic, or back after
//     being expired), or a topic of its own is created;
//   - when a holder it pushed to answers that it has newer records, or
//     when a holder's push shows that this broker has newer ones than it:
//     then it pushes again to the topic's holders, so that a record
//     travels from whichever side has it within one exchange.
//
// The receiver keeps, per id, the record that wins (highest version, a
// tombstone at equal version, then the greater broker name) and starts,
// changes or stops its deliveries accordingly.
//
// Records carry signing secrets, so they only ever travel in requests to
// brokers the name servers route the topic to (or that a topic's PUT has
// just placed it on: copySubscriptions), never in an answer to whoever
// asks: a receiver that holds newer records pushes them to the sender's
// routed address instead.
// POST /v1/internal/subscriptions/sync needs an admin token when tokens
// are checked; a broker sends the one given by --namesrv-token.

// DefaultSyncInterval is how often a broker pushes its subscription
// records to the other holders of its topics.
const DefaultSyncInterval = 10 * time.Second

// maxSyncRequestBytes bounds one sync request; a broker with more
// records to send sends several.
const maxSyncRequestBytes = 4 << 20

// syncRequest is the body of POST /v1/internal/subscriptions/sync.
type syncRequest struct {
	From   string                                 `json:"from"`
	Topics map[string][]broker.SubscriptionRecord `json:"topics"`
	// TopicTombstones, when present (even empty), is the sender's topic
	// tombstones: the receiver takes them and answers with those of its
	// own the sender lacks.
	TopicTombstones []broker.TopicTombstone `json:"topic_tombstones,omitempty"`
	// Exchange says TopicTombstones was sent (an empty list is left out).
	Exchange bool `json:"topic_exchange,omitempty"`
}

// syncAnswer is its answer: what the receiver changed, and the topics
// for which it holds records the sender lacks (it pushes them itself).
type syncAnswer struct {
	Applied    int      `json:"applied"`
	Tombstones int      `json:"tombstones"`
	Newer      []string `json:"newer,omitempty"`
	// TopicTombstones is, in answer to an exchange, the receiver's topic
	// tombstones the sender lacks (at most maxTombstonesPerRequest; the
	// rest travel in the next round). They carry no secret.
	TopicTombstones []broker.TopicTombstone `json:"topic_tombstones,omitempty"`
	// TopicsDeleted is the topics the receiver deleted on the sender's
	// tombstones.
	TopicsDeleted []string `json:"topics_deleted,omitempty"`
	// Deleted is the receiver's subscription tombstones, of the topics
	// sent, that the sender lacks or that win over the sender's records:
	// deletes the sender missed, taken at once from the answer (a
	// tombstone carries no secret), so that a broker back from a hang or
	// an expiry stops delivering a deleted subscription within one
	// exchange rather than after the receiver's push back.
	Deleted []broker.SubscriptionRecord `json:"deleted,omitempty"`
}

// maxTombstonesPerRequest bounds the topic tombstones of one exchange
// request or answer (about 100 bytes each).
const maxTombstonesPerRequest = 5000

// The result label of postbus_subscription_sync_total.
const (
	syncOK      = "ok"      // the holder took the records
	syncFailed  = "failed"  // no answer, or a 5xx
	syncRefused = "refused" // a 4xx: the holder refused them
)

// syncer runs the exchanges of one broker.
type syncer struct {
	s        *Server
	interval time.Duration
	token    string
	total    *prometheus.CounterVec

	kick chan struct{} // capacity 1: a pending round for the topics in pending

	// firstDone is closed once the first exchange (topic tombstones, then
	// every topic's records pushed and the deletes answered taken) is over.
	firstDone chan struct{}

	// fence holds writes back while this broker may not know of a topic
	// deleted in the cluster: from its start, and after it was paused,
	// until it has exchanged topic tombstones with every other broker.
	fence *writeFence
	fm    *fenceMetrics
	// paused is signalled by the watchdog when this process was paused
	// (SIGSTOP, a VM freeze) or starved; capacity 1.
	paused chan struct{}
	// lastTick is when the watchdog (or a write) last looked at the clock,
	// Unix ns: a look long after it means the process was paused.
	lastTick atomic.Int64

	mu      sync.Mutex
	pending map[string]bool // topics to push again at once; guarded by mu
	// alive is the brokers heard from (they pushed here) since the last
	// round: pushed to even if marked down, since they are not.
	alive map[string]bool // guarded by mu
	// pushed is, per topic, the holders (name -> address) pushed to since
	// they were last seen in its route: a holder missing from it is new.
	pushed map[string]map[string]string // guarded by mu
	// routes is the syncer's own cache of each topic's other holders,
	// fetched with namesrv.Client.Lookup once a heartbeat interval: the
	// lookups of this background work must not fill the cache requests
	// route by, with a route fetched while a topic is being placed and
	// some holders have not registered yet.
	routes map[string]syncRoute // guarded by mu
}

type syncRoute struct {
	peers []peer
	at    time.Time
}

// holders is the other holders of topic as the name servers
// route it, from the syncer's cache while it is younger than a heartbeat
// interval; when no name server answers, the last one known.
func (y *syncer) holders(ctx context.Context, topic string) []peer {
	c := y.s.cluster
	y.mu.Lock()
	r, ok := y.routes[topic]
	y.mu.Unlock()
	if ok && time.Since(r.at) < c.names.Interval() {
		return r.peers
	}
	rt, found, err := c.names.Lookup(ctx, topic)
	if err != nil {
		c.logger.Debug("no route for the subscription sync", slog.String("topic", topic), slog.Any("err", err))
		return r.peers
	}
	var peers []peer
	if found {
		for _, b := range rt.Brokers {
			if b.Name != c.self && b.Queues > 0 {
				peers = append(peers, peer{name: b.Name, addr: b.Addr, queues: b.Queues})
			}
		}
	}
	y.mu.Lock()
	y.routes[topic] = syncRoute{peers: peers, at: time.Now()}
	y.mu.Unlock()
	return peers
}

// forget drops the syncer's cached routes of topics (all when none is
// named), so that the next round asks the name servers.
func (y *syncer) forget(topics ...string) {
	y.mu.Lock()
	defer y.mu.Unlock()
	if len(topics) == 0 {
		clear(y.routes)
	}
	for _, t := range topics {
		delete(y.routes, t)
	}
}

func newSyncer(s *Server, c *Cluster, reg prometheus.Registerer) *syncer {
	total := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postbus_subscription_sync_total",
		Help: "Pushes of this broker's subscription records to another holder of their topics, by result: ok, failed (no answer or a 5xx; logged) or refused (a 4xx; logged at ERROR).",
	}, []string{"result"})
	for _, r := range []string{syncOK, syncFailed, syncRefused} {
		total.WithLabelValues(r)
	}
	reg.MustRegister(total)
	interval := c.SyncInterval
	if interval <= 0 {
		interval = DefaultSyncInterval
	}
	return &syncer{s: s, interval: interval, token: c.Token, total: total, kick: make(chan struct{}, 1), firstDone: make(chan struct{}),
		fence: newWriteFence(), fm: newFenceMetrics(reg), paused: make(chan struct{}, 1),
		pending: map[string]bool{}, alive: map[string]bool{}, pushed: map[string]map[string]string{}, routes: map[string]syncRoute{}}
}

// RunSync runs the anti-entropy of subscriptions until ctx ends. It does
// nothing for a standalone broker.
func (s *Server) RunSync(ctx context.Context) {
	if s.sync == nil {
		return
	}
	s.sync.run(ctx)
}

// closedChan is a channel that is always ready.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// FirstSyncDone is closed once a broker in a cluster has made its first
// exchange with the other brokers (at once for a standalone one): the
// subscriptions and topics deleted while it was down or hung are then
// deleted here too, so that pushes started after it do not deliver them
// (postbus broker starts its push deliveries then, or after a bound).
func (s *Server) FirstSyncDone() <-chan struct{} {
	if s.sync == nil {
		return closedChan
	}
	return s.sync.firstDone
}

func (y *syncer) run(ctx context.Context) {
	full := time.NewTicker(y.interval)
	defer full.Stop()
	// New holders are looked for more often than everything is pushed:
	// a route is cached for a heartbeat interval, so this costs nothing
	// more in between.
	watch := time.NewTicker(min(y.interval, time.Second))
	defer watch.Stop()
	y.lastTick.Store(time.Now().UnixNano())
	defer y.lastTick.Store(0)
	go y.watchdog(ctx)
	y.fencedExchange(ctx, false)
	y.round(ctx, true, nil)
	close(y.firstDone)
	for {
		changed := y.s.broker.TopicsChanged()
		select {
		case <-ctx.Done():
			return
		case <-y.paused:
			y.fencedExchange(ctx, false)
			y.round(ctx, true, nil)
		case <-full.C:
			y.exchangeTombstones(ctx, true)
			y.round(ctx, true, nil)
		case <-y.s.cluster.names.Registered():
			// Back in a name server's routes after being away (or the
			// name server is new): what changed meanwhile may have missed
			// this broker. Its push is answered by the holders with newer
			// records pushing them here; its exchange of topic
			// tombstones, by the others' tombstones.
			y.forget()
			y.fence.shut("registered anew with the name servers: exchanging topic deletes with the other brokers")
			y.fencedExchange(ctx, true)
			y.round(ctx, true, nil)
		case <-watch.C:
			y.round(ctx, false, nil)
		case <-changed:
			y.round(ctx, false, nil)
		case <-y.kick:
			y.mu.Lock()
			topics := y.pending
			y.pending = map[string]bool{}
			y.mu.Unlock()
			y.round(ctx, false, topics)
		}
	}
}

// knows reports whether broker is among the holders of topic the syncer
// has cached.
func (y *syncer) knows(topic, broker string) bool {
	y.mu.Lock()
	defer y.mu.Unlock()
	return slices.ContainsFunc(y.routes[topic].peers, func(p peer) bool { return p.name == broker })
}

// again asks for a push of topics to their holders at once; from, which
// has just pushed here, is up whatever this broker marked it.
func (y *syncer) again(topics []string, from string) {
	y.mu.Lock()
	for _, t := range topics {
		y.pending[t] = true
	}
	y.alive[from] = true
	y.mu.Unlock()
	select {
	case y.kick <- struct{}{}:
	default:
	}
}

// round pushes this broker's records: of every topic to every live holder
// (all), of the topics in only to every live holder, or else of each
// topic to the holders not pushed to since they joined its route.
func (y *syncer) round(ctx context.Context, all bool, only map[string]bool) {
	s, c := y.s, y.s.cluster
	type target struct {
		peer   peer
		topics []string
	}
	targets := map[string]*target{}
	var names []string
	held := map[string]bool{}
	for _, t := range s.broker.Topics(ctx, "", 0) {
		names = append(names, t.Name)
		held[t.Name] = true
	}
	y.mu.Lock()
	alive := y.alive
	y.alive = map[string]bool{}
	for topic := range y.pushed {
		if !held[topic] {
			delete(y.pushed, topic) // no longer held here
			delete(y.routes, topic)
		}
	}
	y.mu.Unlock()
	for _, name := range names {
		if only != nil && !only[name] {
			continue
		}
		holders := y.holders(ctx, name)
		y.mu.Lock()
		seen := y.pushed[name]
		now := map[string]string{}
		for _, h := range holders {
			if alive[h.name] {
				c.markUp(h.addr)
			} else if c.isDown(h.addr) {
				continue
			}
			if addr, ok := seen[h.name]; ok && addr == h.addr {
				now[h.name] = addr
				if !all && only == nil {
					continue
				}
			}
			tg := targets[h.name]
			if tg == nil {
				tg = &target{peer: h}
				targets[h.name] = tg
			}
			tg.topics = append(tg.topics, name)
		}
		// A holder that left the route is new again when it is back.
		y.pushed[name] = now
		y.mu.Unlock()
	}
	if len(targets) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, tg := range targets {
		wg.Go(func() {
			if y.push(ctx, tg.peer, tg.topics, "") == nil {
				y.mu.Lock()
				for _, topic := range tg.topics {
					if y.pushed[topic] != nil {
						y.pushed[topic][tg.peer.name] = tg.peer.addr
					}
				}
				y.mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// push sends p this broker's records of topics, in requests of at most
// maxSyncRequestBytes, and returns why p did not take them all. auth is
// the Authorization header to send; "" sends the broker's own token.
func (y *syncer) push(ctx context.Context, p peer, topics []string, auth string) error {
	recs, err := y.s.broker.SubscriptionRecords(ctx, topics)
	if err != nil {
		y.s.cluster.logger.Error("reading subscription records to push failed", slog.Any("err", err))
		return err
	}
	var errs []error
	req := syncRequest{From: y.s.cluster.self, Topics: map[string][]broker.SubscriptionRecord{}}
	size := 0
	flush := func() {
		if len(req.Topics) > 0 {
			ans, err := y.send(ctx, p, req, auth)
			if err != nil {
				errs = append(errs, err)
			}
			y.takeDeleted(ctx, p, req, ans.Deleted)
		}
		req.Topics, size = map[string][]broker.SubscriptionRecord{}, 0
	}
	for _, topic := range topics {
		b, _ := json.Marshal(recs[topic])
		if size > 0 && size+len(b) > maxSyncRequestBytes/2 {
			flush()
		}
		req.Topics[topic] = recs[topic]
		size += len(b) + len(topic)
	}
	flush()
	return errors.Join(errs...)
}

// takeDeleted applies the subscription tombstones a holder answered a
// push with, those of the topics pushed only.
func (y *syncer) takeDeleted(ctx context.Context, p peer, req syncRequest, deleted []broker.SubscriptionRecord) {
	if len(deleted) == 0 {
		return
	}
	recs := slices.DeleteFunc(slices.Clone(deleted), func(r broker.SubscriptionRecord) bool {
		_, sent := req.Topics[r.Topic]
		return !sent || !r.Deleted
	})
	st, err := y.s.broker.ApplySubscriptionRecords(ctx, recs)
	if err != nil {
		y.s.cluster.logger.Error("taking the subscription tombstones another broker answered with failed", slog.String("broker", p.name), slog.Any("err", err))
		return
	}
	if st.Tombstones > 0 {
		y.s.cluster.logger.Info("subscription deletes this broker missed taken from another broker's answer",
			slog.String("broker", p.name), slog.Int("tombstones", st.Tombstones))
	}
}

// exchangeTombstones sends this broker's topic tombstones to every other
// live broker (not only the holders of its topics: a broker that holds
// a tombstone no longer holds the topic, and the one that missed the
// delete does), and takes those they answer with. It first completes its
// own tombstones' deletes (see broker.ApplyOwnTopicTombstones). With
// skipDown, brokers marked down are left out. It returns the brokers
// that did not answer (all of them, as "name servers", when the list of
// brokers could not be had).
func (y *syncer) exchangeTombstones(ctx context.Context, skipDown bool) (missed []string) {
	s, c := y.s, y.s.cluster
	if err := s.broker.ApplyOwnTopicTombstones(ctx); err != nil {
		c.logger.Error("deleting the topics this broker's own tombstones name failed", slog.Any("err", err))
	}
	mine, err := s.broker.TopicTombstones(ctx)
	if err != nil {
		c.logger.Error("reading topic tombstones to exchange failed", slog.Any("err", err))
		return []string{"this broker's tombstones"}
	}
	list, err := c.names.BrokersForBackground(ctx)
	if err != nil {
		c.logger.Warn("cannot list the cluster's brokers to exchange topic tombstones; tried again next round", slog.Any("err", err))
		return []string{"the name servers"}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, b := range list {
		p := peer{name: b.Name, addr: b.Addr}
		if b.Name == c.self || (skipDown && c.isDown(p.addr)) {
			continue
		}
		wg.Go(func() {
			for i := 0; i == 0 || i < len(mine); i += maxTombstonesPerRequest {
				req := syncRequest{From: c.self, Topics: map[string][]broker.SubscriptionRecord{}, Exchange: true,
					TopicTombstones: mine[i:min(i+maxTombstonesPerRequest, len(mine))]}
				ans, err := y.send(ctx, p, req, "")
				if err != nil {
					mu.Lock()
					missed = append(missed, p.name)
					mu.Unlock()
					return
				}
				if len(ans.TopicsDeleted) > 0 {
					c.logger.Warn("a broker deleted topics that were deleted in the cluster while it was away",
						slog.String("broker", p.name), slog.Any("topics", ans.TopicsDeleted))
				}
				if len(ans.TopicTombstones) == 0 {
					continue
				}
				if _, err := s.broker.ApplyTopicTombstones(ctx, ans.TopicTombstones); err != nil {
					c.logger.Error("taking another broker's topic tombstones failed", slog.String("broker", p.name), slog.Any("err", err))
					mu.Lock()
					missed = append(missed, p.name)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	slices.Sort(missed)
	return missed
}

// send is one sync request to p, with the hop's deadline.
func (y *syncer) send(ctx context.Context, p peer, req syncRequest, auth string) (syncAnswer, error) {
	c := y.s.cluster
	body, err := json.Marshal(req)
	if err != nil {
		c.logger.Error("encoding subscription records failed", slog.Any("err", err))
		return syncAnswer{}, err
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.hop)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, p.addr+"/v1/internal/subscriptions/sync", bytes.NewReader(body))
	if err != nil {
		c.logger.Error("subscription sync request", slog.Any("err", err))
		return syncAnswer{}, err
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set(hdrForwardedBy, c.self)
	switch {
	case auth != "":
		hr.Header.Set("Authorization", auth)
	case y.token != "":
		hr.Header.Set("Authorization", "Bearer "+y.token)
	}
	resp, err := c.hc.Do(hr)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w: %w", c.hopTimedOut(p, start, c.hop), err)
		}
		if unresponsive(err) {
			c.markDown(p, err)
		}
		y.total.WithLabelValues(syncFailed).Inc()
		c.logger.Warn("pushing subscription records failed; tried again next round", slog.String("broker", p.name), slog.Any("err", err))
		return syncAnswer{}, fmt.Errorf("push to %s: %w", p.name, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxSyncRequestBytes))
	switch {
	case err != nil || resp.StatusCode >= 500:
		y.total.WithLabelValues(syncFailed).Inc()
		c.logger.Warn("pushing subscription records failed; tried again next round", slog.String("broker", p.name),
			slog.Int("status", resp.StatusCode), slog.String("answer", string(bytes.TrimSpace(raw))), slog.Any("err", err))
		return syncAnswer{}, fmt.Errorf("push to %s: status %d %s: %v", p.name, resp.StatusCode, bytes.TrimSpace(raw), err)
	case resp.StatusCode != http.StatusOK:
		y.total.WithLabelValues(syncRefused).Inc()
		c.logger.Error("a broker refused this broker's subscription records (is --namesrv-token an admin token the brokers accept?)",
			slog.String("broker", p.name), slog.Int("status", resp.StatusCode), slog.String("answer", string(bytes.TrimSpace(raw))))
		return syncAnswer{}, fmt.Errorf("push to %s refused: status %d %s", p.name, resp.StatusCode, bytes.TrimSpace(raw))
	}
	y.total.WithLabelValues(syncOK).Inc()
	var ans syncAnswer
	if err := json.Unmarshal(raw, &ans); err != nil {
		c.logger.Error("a broker's answer to a subscription sync is not its JSON; taken as applied", slog.String("broker", p.name),
			slog.String("answer", string(bytes.TrimSpace(raw))), slog.Any("err", err))
		return syncAnswer{}, nil
	}
	if ans.Applied > 0 || ans.Tombstones > 0 || len(ans.Newer) > 0 {
		c.logger.Info("subscription records pushed", slog.String("broker", p.name), slog.Int("applied", ans.Applied),
			slog.Int("tombstones", ans.Tombstones), slog.Any("newer_there", ans.Newer))
	}
	return ans, nil
}

// handleSyncSubscriptions takes another broker's subscription records:
// those of topics this broker holds are merged into its own. The answer
// names the topics for which this broker holds records the sender lacks
// or that win over the sender's; it then pushes those to the topics'
// holders itself.
func (s *Server) handleSyncSubscriptions(w http.ResponseWriter, r *http.Request) {
	var req syncRequest
	if perr := decodeJSONBody(r, maxSyncRequestBytes, &req); perr != nil {
		s.writeError(w, r, perr)
		return
	}
	if s.sync == nil {
		writeProblem(w, r, codeNotFound, "", "this broker is in no cluster")
		return
	}
	if req.From == "" || req.From == s.cluster.self {
		writeProblem(w, r, codeInvalidParameter, "from", fmt.Sprintf("from %q: the sending broker's name, not this one's", req.From))
		return
	}
	var recs []broker.SubscriptionRecord
	for topic, rs := range req.Topics {
		for _, rec := range rs {
			if rec.Topic != topic {
				writeProblem(w, r, codeInvalidParameter, "topics", fmt.Sprintf("record %s of topic %q is listed under topic %q", rec.ID, rec.Topic, topic))
				return
			}
		}
		recs = append(recs, rs...)
	}
	if len(req.TopicTombstones) > maxTombstonesPerRequest {
		writeProblem(w, r, codeInvalidParameter, "topic_tombstones", fmt.Sprintf("%d topic tombstones: send at most %d per request", len(req.TopicTombstones), maxTombstonesPerRequest))
		return
	}
	// Topic tombstones first: the records of a topic deleted here are then
	// skipped, as of any topic this broker does not hold.
	var tst broker.TopicTombstoneStats
	if len(req.TopicTombstones) > 0 {
		var err error
		if tst, err = s.broker.ApplyTopicTombstones(r.Context(), req.TopicTombstones); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	st, err := s.broker.ApplySubscriptionRecords(r.Context(), recs)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	topics := make([]string, 0, len(req.Topics))
	for t := range req.Topics {
		topics = append(topics, t)
	}
	mine, err := s.broker.SubscriptionRecords(r.Context(), topics)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ans := syncAnswer{Applied: st.Applied, Tombstones: st.Tombstones, TopicsDeleted: tst.Deleted}
	if len(ans.Deleted) > maxTombstonesPerRequest {
		ans.Deleted = ans.Deleted[:maxTombstonesPerRequest] // the rest are pushed (ans.Newer)
	}
	if req.Exchange {
		mine, err := s.broker.TopicTombstones(r.Context())
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		ans.TopicTombstones = broker.NewerTopicTombstones(mine, req.TopicTombstones)
		if len(ans.TopicTombstones) > maxTombstonesPerRequest {
			ans.TopicTombstones = ans.TopicTombstones[:maxTombstonesPerRequest]
		}
	}
	for _, t := range topics {
		if n, _ := s.broker.Queues(t); n > 0 && broker.Newer(mine[t], req.Topics[t]) {
			ans.Newer = append(ans.Newer, t)
			ans.Deleted = append(ans.Deleted, broker.NewerTombstones(mine[t], req.Topics[t])...)
		}
	}
	// Push back where this broker has newer records, and where the sender
	// is not among the holders this broker knows (it has just joined or
	// come back): ask the name servers again first.
	var back []string
	for _, t := range topics {
		if n, _ := s.broker.Queues(t); n == 0 {
			continue
		}
		if slices.Contains(ans.Newer, t) || !s.sync.knows(t, req.From) {
			back = append(back, t)
		}
	}
	if len(back) > 0 {
		slices.Sort(ans.Newer)
		s.sync.forget(back...)
		s.sync.again(back, req.From)
	}
	writeJSON(w, http.StatusOK, ans)
}
