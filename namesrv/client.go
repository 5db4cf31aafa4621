package namesrv

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrUnavailable is returned (wrapped, with each name server's failure) by
// Client.Route when no name server answered and no route was cached.
var ErrUnavailable = errors.New("no name server answered")

// ClientConfig tunes a Client. Zero fields take DefaultClientConfig's.
type ClientConfig struct {
	// Addrs are the name servers' base URLs, as ParseAddrs returns them.
	Addrs []string
	// Interval is the time between heartbeats, and how long a route is
	// cached (RocketMQ: 30s for both).
	Interval time.Duration
	// Timeout bounds each request to one name server.
	Timeout    time.Duration
	Logger     *slog.Logger
	HTTPClient *http.Client
	// Now is the clock of the route cache; tests inject their own.
	Now func() time.Time
}

// DefaultClientConfig heartbeats every 30s with a 5s timeout.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		Interval:   30 * time.Second,
		Timeout:    5 * time.Second,
		Logger:     slog.New(slog.DiscardHandler),
		HTTPClient: &http.Client{},
		Now:        time.Now,
	}
}

// Client is what a broker uses to register with name servers and to look
// up where other brokers' topics live. Route is safe for concurrent use;
// Run is called once.
type Client struct {
	addrs    []string
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger
	hc       *http.Client
	now      func() time.Time

	changed chan struct{} // capacity 1: a pending nudge, however many were sent
	anew    chan struct{} // capacity 1: a name server registered the broker anew

	// Run's rounds, for Sync: started and finished count them, and done is
	// closed (and replaced) when one finishes or Run ends.
	roundMu  sync.Mutex
	running  bool          // guarded by roundMu
	started  uint64        // guarded by roundMu
	finished uint64        // guarded by roundMu
	acked    uint64        // the last round a name server acknowledged; guarded by roundMu
	done     chan struct{} // guarded by roundMu

	mu      sync.Mutex
	routes  map[string]cachedRoute // guarded by mu
	brokers cachedBrokers          // guarded by mu

	// refused[i] is name server i's last refusal of this broker's name
	// (409 broker_name_taken), nil once it accepts a heartbeat again.
	refusedMu sync.Mutex
	refused   []error // guarded by refusedMu

	// beats[i] is name server i's heartbeat state. busy[i] is set while a
	// heartbeat to name server i is in flight; only that heartbeat's
	// goroutine touches beats[i] (and Run once beating is waited for),
	// so it needs no lock.
	beats   []beatState
	busy    []atomic.Bool
	beating sync.WaitGroup
}

type cachedRoute struct {
	route   Route
	fetched time.Time
}

type cachedBrokers struct {
	list    []BrokerInfo
	gone    []string // the answers' Gone, merged
	fetched time.Time
}

type beatState struct {
	down         bool // the last heartbeat failed; its outage is logged
	warnedExpiry bool // told once that the server's expiry is too short
	// acked is the registration (topics sorted) the server last
	// acknowledged, nil after a failure: what a patch is the difference to.
	acked *BrokerInfo
	// registered: the server may hold this broker's registration, so it
	// is ours to unregister: a heartbeat was sent and not refused. A
	// broker refused its name (another live broker holds it) must not
	// unregister the holder.
	registered bool
}

// NewClient returns a client of the name servers cfg.Addrs.
func NewClient(cfg ClientConfig) *Client {
	def := DefaultClientConfig()
	if cfg.Interval <= 0 {
		cfg.Interval = def.Interval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = def.HTTPClient
	}
	if cfg.Now == nil {
		cfg.Now = def.Now
	}
	addrs := make([]string, len(cfg.Addrs))
	for i, a := range cfg.Addrs {
		addrs[i] = strings.TrimRight(a, "/")
	}
	return &Client{
		addrs:    addrs,
		interval: cfg.Interval,
		timeout:  cfg.Timeout,
		log:      cfg.Logger,
		hc:       cfg.HTTPClient,
		now:      cfg.Now,
		changed:  make(chan struct{}, 1),
		anew:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		routes:   make(map[string]cachedRoute),
		beats:    make([]beatState, len(addrs)),
		refused:  make([]error, len(addrs)),
		busy:     make([]atomic.Bool, len(addrs)),
	}
}

// Refused reports why the name servers will not route to this broker:
// non-nil (wrapping ErrNameTaken) while any of them refused its name at
// the last heartbeat, because another live broker holds it. Such a broker
// is outside the bus: nothing routes to it, so what it stores no
// subscription of the bus sees and no other broker finds.
func (c *Client) Refused() error {
	c.refusedMu.Lock()
	defer c.refusedMu.Unlock()
	return errors.Join(c.refused...)
}

// Heard reports whether a heartbeat round has finished (each name server
// answered, refused or failed): before that Refused cannot know.
func (c *Client) Heard() bool {
	c.roundMu.Lock()
	defer c.roundMu.Unlock()
	return c.finished > 0
}

func (c *Client) setRefused(i int, err error) {
	c.refusedMu.Lock()
	c.refused[i] = err
	c.refusedMu.Unlock()
}

// Changed tells Run that the broker's topics changed, so that it sends a
// heartbeat now rather than at the next interval. It never blocks.
func (c *Client) Changed() {
	select {
	case c.changed <- struct{}{}:
	default: // a heartbeat is already pending; it will carry the change
	}
}

// Registered receives when a name server has registered this broker anew
// (its heartbeat's answer said so): it had restarted, or had expired the
// broker, whose peers may have changed what they share with it meanwhile
// without reaching it. Several such answers between two receives make
// one.
func (c *Client) Registered() <-chan struct{} { return c.anew }

// Sync sends a heartbeat now and waits until one that started after the
// call has been acknowledged by a name server (or has failed everywhere),
// so that a
// topic the broker has just created is in the routes before a client is
// told it exists: otherwise a publish through another broker in that
// instant finds no route and, with auto-creation on, creates a second
// topic of the same name there. RocketMQ's brokers likewise register a
// new topic with the name servers before answering its creation. One
// acknowledgement is enough: Route merges every name server's answer and
// calls a topic unknown only when all of them say so, and waiting for a
// hung name server would hold a topic change for its whole timeout. Without
// Run going it returns at once; ctx bounds the wait.
func (c *Client) Sync(ctx context.Context) error {
	c.roundMu.Lock()
	if !c.running {
		c.roundMu.Unlock()
		return nil
	}
	want := c.started + 1
	c.roundMu.Unlock()
	c.Changed()
	for {
		c.roundMu.Lock()
		finished, acked, running, done := c.finished, c.acked, c.running, c.done
		c.roundMu.Unlock()
		if finished >= want || acked >= want || !running {
			return nil
		}
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("registering with the name servers: %w", ctx.Err())
		}
	}
}

// roundStarted and roundFinished keep Sync's count of Run's rounds.
func (c *Client) roundStarted() {
	c.roundMu.Lock()
	c.started++
	c.roundMu.Unlock()
}

// roundAcked records that a name server acknowledged the current round.
func (c *Client) roundAcked() {
	c.roundMu.Lock()
	if c.acked < c.started {
		c.acked = c.started
		close(c.done)
		c.done = make(chan struct{})
	}
	c.roundMu.Unlock()
}

func (c *Client) roundFinished(last bool) {
	c.roundMu.Lock()
	c.finished = c.started
	c.running = !last
	close(c.done)
	c.done = make(chan struct{})
	c.roundMu.Unlock()
}

// Run heartbeats info() to every name server at once, then every Interval
// and whenever Changed is called, until ctx ends; then it unregisters the
// broker from every name server, giving up after Timeout. A name server
// that fails is logged once per outage and tried again next round; the
// others get their heartbeats regardless.
func (c *Client) Run(ctx context.Context, info func() BrokerInfo) {
	if len(c.addrs) == 0 {
		c.log.Warn("no name servers given; the broker is not registered anywhere")
		<-ctx.Done()
		return
	}
	var (
		name       string // last name registered, to unregister at the end
		lastReject string // last local validation failure, logged once
	)
	c.roundMu.Lock()
	c.running = true
	c.roundMu.Unlock()
	defer c.roundFinished(true)
	// A round for a change may send each name server just the difference
	// from what it last acknowledged; the first round and the periodic ones
	// send the whole registration, which also repairs any drift.
	round := func(patch bool) {
		c.roundStarted()
		defer c.roundFinished(false)
		bi := info()
		if bi.Cluster == "" {
			bi.Cluster = DefaultCluster
		}
		if err := validateInfo(bi); err != nil {
			if msg := err.Error(); msg != lastReject {
				c.log.Error("broker registration invalid; not sent", slog.Any(logKeyErr, err))
				lastReject = msg
			}
			return
		}
		lastReject = ""
		// Sorted topics keep the list in the same order every time, which
		// is the registry's cheap path for an unchanged heartbeat.
		topics := slices.Clone(bi.Topics)
		slices.SortFunc(topics, func(a, b Topic) int { return cmp.Compare(a.Name, b.Name) })
		bi.Topics = topics
		if name != "" && name != bi.Name {
			// Renamed: drop the old registration rather than let it expire.
			c.unregister(ctx, name, func(int) bool { return true })
			c.beating.Wait()
			for i := range c.beats {
				c.beats[i].registered = false
			}
		}
		name = bi.Name
		whole := sync.OnceValues(func() ([]byte, error) { return json.Marshal(NewHeartbeatRequest(bi)) })
		// A round ends once every name server answered, or shortly after
		// one acknowledged it: a hung name server must not hold every
		// later round (and each Sync, so each topic change) for its whole
		// timeout. A name server still busy with an earlier round's
		// heartbeat is left out of this one; beats[i] stays touched by
		// one goroutine at a time.
		oks := make(chan bool, len(c.addrs))
		n := 0
		for i := range c.addrs {
			if !c.busy[i].CompareAndSwap(false, true) {
				continue
			}
			n++
			c.beating.Go(func() {
				c.beat(ctx, i, bi, patch, whole)
				ok := c.beats[i].acked != nil
				c.busy[i].Store(false)
				oks <- ok
			})
		}
		var grace <-chan time.Time
	wait:
		for range n {
			select {
			case ok := <-oks:
				if ok && grace == nil {
					grace = time.After(roundGrace)
				}
			case <-grace:
				break wait
			}
		}
	}

	round(false)
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.beating.Wait() // ctx ended: the heartbeats in flight end too
			if name != "" {
				c.unregister(context.WithoutCancel(ctx), name, func(i int) bool { return c.beats[i].registered })
			}
			return
		case <-t.C:
			round(false)
		case <-c.changed:
			round(true)
		}
	}
}

// maxPatchTopics is the most topics a patch carries; a bigger change is
// sent as a whole heartbeat.
const maxPatchTopics = 1024

// errNotRegistered is a name server's 404 to a patch.
var errNotRegistered = errors.New("the name server does not hold this broker")

// beat sends name server i the registration bi and logs what changed: as a
// patch when patch allows, the server acknowledged this broker before and
// few topics differ, else whole (whole() is the encoded heartbeat, made
// once a round).
func (c *Client) beat(ctx context.Context, i int, bi BrokerInfo, patch bool, whole func() ([]byte, error)) {
	addr, st := c.addrs[i], &c.beats[i]
	var (
		ans  HeartbeatResponse
		err  error
		sent bool
	)
	if a := st.acked; patch && a != nil && a.Name == bi.Name && a.Cluster == bi.Cluster && a.Addr == bi.Addr && a.Version == bi.Version {
		// No difference still sends an (empty) patch: the nudge is news
		// of the broker's being alive, and Sync counts on the answer.
		if d := diffTopics(a.Topics, bi.Topics); len(d.put)+len(d.removed) <= maxPatchTopics {
			ans, err = c.patch(ctx, addr, bi, d)
			sent = !errors.Is(err, errNotRegistered) // else: it restarted; send it all
		}
	}
	st.registered = true // until the server refuses the name
	if !sent {
		body, merr := whole()
		if merr != nil { // cannot happen for these types; not worth a panic
			c.log.Error("encoding heartbeat", slog.Any(logKeyErr, merr))
			return
		}
		ans, err = c.postHeartbeat(ctx, addr, body)
	}
	if err != nil {
		st.acked = nil
		if ctx.Err() != nil {
			return // shutting down; not the name server's fault
		}
		if errors.Is(err, ErrNameTaken) {
			c.setRefused(i, fmt.Errorf("name server %s: %w", addr, err))
			st.registered = false
			if !st.down {
				st.down = true
				c.log.Error("name server refuses this broker's name: another live broker holds it; this broker is not in the routes, is not ready and refuses changes until a heartbeat is accepted (stop the other broker, or give this one another --broker-name)",
					slog.String(logKeyNameSrv, addr), slog.String(logKeyBroker, bi.Name), slog.Any(logKeyErr, err))
			}
			return
		}
		if !st.down {
			st.down = true
			c.log.Warn("name server heartbeat failed; retrying every interval",
				slog.String(logKeyNameSrv, addr), slog.Any(logKeyErr, err))
		}
		return
	}
	st.acked = &bi
	c.setRefused(i, nil)
	c.roundAcked()
	if ans.Registered {
		select {
		case c.anew <- struct{}{}:
		default:
		}
	}
	if st.down {
		st.down = false
		c.log.Info("name server heartbeat succeeds again", slog.String(logKeyNameSrv, addr))
	}
	if d, err := time.ParseDuration(ans.ExpiresIn); err == nil && d <= c.interval && !st.warnedExpiry {
		st.warnedExpiry = true
		c.log.Warn("name server expires brokers sooner than they heartbeat; routes will flap",
			slog.String(logKeyNameSrv, addr), slog.Duration(logKeyExpiresIn, d), slog.Duration(logKeyInterval, c.interval))
	}
}

func (c *Client) postHeartbeat(ctx context.Context, addr string, body []byte) (HeartbeatResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, addr+"/v1/brokers/heartbeat", bytes.NewReader(body))
	if err != nil {
		return HeartbeatResponse{}, fmt.Errorf("heartbeat request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	return c.registration(req)
}

// patch sends name server addr the difference d to bi's registration.
func (c *Client) patch(ctx context.Context, addr string, bi BrokerInfo, d change) (HeartbeatResponse, error) {
	body, err := json.Marshal(NewPatchRequest(bi, d.put, d.removed))
	if err != nil {
		return HeartbeatResponse{}, fmt.Errorf("patch request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, addr+"/v1/brokers/"+url.PathEscape(bi.Name), bytes.NewReader(body))
	if err != nil {
		return HeartbeatResponse{}, fmt.Errorf("patch request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	return c.registration(req)
}

// registration sends a heartbeat or patch request and reads its answer.
func (c *Client) registration(req *http.Request) (HeartbeatResponse, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return HeartbeatResponse{}, err
	}
	defer closeBody(resp)
	switch {
	case resp.StatusCode == http.StatusNotFound && req.Method == http.MethodPatch:
		return HeartbeatResponse{}, errNotRegistered
	case resp.StatusCode == http.StatusConflict:
		return HeartbeatResponse{}, fmt.Errorf("%w: %w", ErrNameTaken, statusError(resp))
	case resp.StatusCode != http.StatusOK:
		return HeartbeatResponse{}, statusError(resp)
	}
	var ans HeartbeatResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswerBytes)).Decode(&ans); err != nil {
		return HeartbeatResponse{}, fmt.Errorf("heartbeat answer: %w", err)
	}
	return ans, nil
}

// unregister deletes the broker from every name server ours says
// registered it, at once, within Timeout. 204 and 404 both mean it is gone.
func (c *Client) unregister(ctx context.Context, name string, ours func(i int) bool) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var wg sync.WaitGroup
	for i, addr := range c.addrs {
		if !ours(i) {
			continue
		}
		wg.Go(func() {
			if err := c.delete(ctx, addr, name); err != nil {
				c.log.Warn("unregistering from name server failed; it will expire the broker",
					slog.String(logKeyNameSrv, addr), slog.String(logKeyBroker, name), slog.Any(logKeyErr, err))
			}
		})
	}
	wg.Wait()
}

func (c *Client) delete(ctx context.Context, addr, name string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, addr+"/v1/brokers/"+url.PathEscape(name), nil)
	if err != nil {
		return fmt.Errorf("unregister request: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer closeBody(resp)
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusOK, http.StatusNotFound:
		return nil
	}
	return statusError(resp)
}

// Route returns where topic lives. A route is cached for Interval. Past
// that every name server is asked at once and their answers merged: a
// broker any of them lists is in the route, since a name server that
// restarted lists only the brokers that have heartbeated to it since (and
// answers no route at all during its warm-up). ok is false, with a nil
// error, only when every name server answered and none knows the topic:
// that, and nothing less, says no broker holds it. When a name server says
// the topic's brokers are down (they expired or unregistered within its
// topic memory), the error wraps ErrTopicGone. When some name servers do
// not answer and none that did knows the topic, the cached route is
// returned however old, as RocketMQ clients do, and without one the error
// wraps ErrUnavailable. Unknown topics are not cached, so a new topic is
// found as soon as its broker has registered it.
func (c *Client) Route(ctx context.Context, topic string) (Route, bool, error) {
	if !validTopic(topic) {
		return Route{}, false, fmt.Errorf("route: %q is not a topic name", clip(topic))
	}
	c.mu.Lock()
	cached, have := c.routes[topic]
	c.mu.Unlock()
	if have && c.now().Sub(cached.fetched) < c.interval {
		return cloneRoute(cached.route), true, nil
	}
	merged, found, errs, gone := c.lookup(ctx, topic)
	if found {
		c.mu.Lock()
		c.routes[topic] = cachedRoute{route: merged, fetched: c.now()}
		c.mu.Unlock()
		return cloneRoute(merged), true, nil
	}
	if ctx.Err() != nil {
		return Route{}, false, fmt.Errorf("route %q: %w", topic, ctx.Err())
	}
	if gone != nil {
		return Route{}, false, fmt.Errorf("route %q: %w", topic, gone)
	}
	if len(errs) == 0 && len(c.addrs) > 0 {
		c.mu.Lock()
		delete(c.routes, topic)
		c.mu.Unlock()
		return Route{}, false, nil
	}
	if have {
		c.log.Debug("not every name server answered and none knows the topic; using the cached route",
			slog.String("topic", topic), slog.Any(logKeyErr, errors.Join(errs...)))
		return cloneRoute(cached.route), true, nil
	}
	if len(c.addrs) == 0 {
		errs = append(errs, errors.New("no name servers given"))
	}
	return Route{}, false, fmt.Errorf("route %q: %w: %w", topic, ErrUnavailable, errors.Join(errs...))
}

// Lookup asks every name server where topic lives now and merges their
// answers, as Route does, without reading or filling Route's cache: for
// a broker's background work, whose lookups must not leave a route
// fetched in passing (a topic being placed, some holders not registered
// yet) for the requests that follow. ok is false with a nil error when
// every name server answered and none knows the topic; the error wraps
// ErrTopicGone or ErrUnavailable as Route's.
func (c *Client) Lookup(ctx context.Context, topic string) (Route, bool, error) {
	if !validTopic(topic) {
		return Route{}, false, fmt.Errorf("route: %q is not a topic name", clip(topic))
	}
	merged, found, errs, gone := c.lookup(ctx, topic)
	switch {
	case found:
		return merged, true, nil
	case ctx.Err() != nil:
		return Route{}, false, fmt.Errorf("route %q: %w", topic, ctx.Err())
	case gone != nil:
		return Route{}, false, fmt.Errorf("route %q: %w", topic, gone)
	case len(errs) == 0 && len(c.addrs) > 0:
		return Route{}, false, nil
	}
	if len(c.addrs) == 0 {
		errs = append(errs, errors.New("no name servers given"))
	}
	return Route{}, false, fmt.Errorf("route %q: %w: %w", topic, ErrUnavailable, errors.Join(errs...))
}

// Interval is the heartbeat interval, for which Route caches a route.
func (c *Client) Interval() time.Duration { return c.interval }

// lookup asks every name server at once and merges the routes found; errs
// are the failures other than ErrTopicGone, gone the first of those.
func (c *Client) lookup(ctx context.Context, topic string) (merged Route, found bool, errs []error, gone error) {
	type result struct {
		rt    Route
		found bool
		err   error
	}
	results := make([]result, len(c.addrs))
	answered := make([]bool, len(c.addrs))
	type reply struct {
		i   int
		res result
	}
	replies := make(chan reply, len(c.addrs))
	for i, addr := range c.addrs {
		go func() {
			rt, found, err := c.getRoute(ctx, addr, topic)
			replies <- reply{i, result{rt, found, err}}
		}()
	}
	// The first name server that knows the topic gives a whole route (one
	// that restarted answers nothing until its warm-up is over), so a hung
	// or slow one is not waited for beyond a short grace in which the
	// others' answers are merged: a broker that has just joined the topic
	// may be known to one of them a moment before the rest.
	var grace <-chan time.Time
gather:
	for range c.addrs {
		select {
		case rep := <-replies:
			results[rep.i], answered[rep.i] = rep.res, true
			if rep.res.found && grace == nil {
				grace = time.After(routeGrace)
			}
		case <-grace:
			break gather
		}
	}
	for i := range results {
		if !answered[i] {
			results[i].err = fmt.Errorf("not waited for: another name server answered (%w)", errNotWaited)
		}
	}
	for i, res := range results {
		switch {
		case res.err != nil && errors.Is(res.err, ErrTopicGone):
			gone = cmp.Or(gone, res.err)
		case res.err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", c.addrs[i], res.err))
		case res.found:
			found = true
			merged.Topic = topic
			for _, b := range res.rt.Brokers {
				if !slices.ContainsFunc(merged.Brokers, func(x RouteBroker) bool { return x.Name == b.Name }) {
					merged.Brokers = append(merged.Brokers, b)
				}
			}
		}
	}
	if found {
		slices.SortFunc(merged.Brokers, func(a, b RouteBroker) int { return cmp.Compare(a.Name, b.Name) })
	}
	return merged, found, errs, gone
}

// roundGrace is how long a heartbeat round waits for the other name
// servers once one has acknowledged it.
const roundGrace = 200 * time.Millisecond

// routeGrace is how long Route waits for the other name servers once one
// has found the topic.
const routeGrace = 100 * time.Millisecond

// errNotWaited marks a name server Route did not wait for.
var errNotWaited = errors.New("no answer yet")

// lookupTimeout bounds one route or broker-list request to one name
// server: shorter than a heartbeat's, since a client's request waits on
// it, and the other name servers are asked at the same time.
func (c *Client) lookupTimeout() time.Duration {
	return min(c.timeout, maxLookupTimeout)
}

// maxLookupTimeout caps lookupTimeout.
const maxLookupTimeout = 2 * time.Second

// Forget drops topic's cached route, for a broker that has just changed
// where the topic lives: its next Route asks the name servers.
func (c *Client) Forget(topic string) {
	c.mu.Lock()
	delete(c.routes, topic)
	c.mu.Unlock()
}

// Brokers returns the live brokers of the cluster (their topics counted in
// the name server's answer, not listed: Topics is nil). Like Route, the
// list is cached for Interval, every name server is asked at once and the
// answers merged (a broker two list at different addresses is taken at the
// one heard from last), and the cached list is served however old when no
// name server answers.
func (c *Client) Brokers(ctx context.Context) ([]BrokerInfo, error) {
	return c.brokersList(ctx, true)
}

// Gone returns the brokers the name servers list as gone (expired or
// unregistered within their topic memory, not registered since), as of
// the last Brokers answer; ok is false when there was none. A broker
// neither live nor gone is one no name server has heard of lately.
func (c *Client) Gone() (gone []string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.brokers.gone), c.brokers.list != nil
}

// BrokersForBackground is Brokers for a broker's background work: a list
// it fetches is not cached for the requests that follow, so that work
// started with the broker (before every other broker has registered) does
// not leave the requests a partial list for an Interval.
func (c *Client) BrokersForBackground(ctx context.Context) ([]BrokerInfo, error) {
	return c.brokersList(ctx, false)
}

func (c *Client) brokersList(ctx context.Context, keep bool) ([]BrokerInfo, error) {
	c.mu.Lock()
	cached := c.brokers
	c.mu.Unlock()
	if cached.list != nil && c.now().Sub(cached.fetched) < c.interval {
		return slices.Clone(cached.list), nil
	}
	lists := make([][]BrokerInfo, len(c.addrs))
	gones := make([][]string, len(c.addrs))
	errs := make([]error, len(c.addrs))
	type reply struct {
		i    int
		list []BrokerInfo
		gone []string
		err  error
	}
	replies := make(chan reply, len(c.addrs))
	for i, addr := range c.addrs {
		go func() {
			list, gone, err := c.getClusterGone(ctx, addr)
			if err != nil {
				err = fmt.Errorf("%s: %w", addr, err)
			}
			replies <- reply{i, list, gone, err}
		}()
	}
	for i, addr := range c.addrs {
		errs[i] = fmt.Errorf("%s: %w", addr, errNotWaited)
	}
	// As for Route: one name server's list (past its warm-up) is whole; a
	// hung one is not waited for beyond a short grace.
	var grace <-chan time.Time
gather:
	for range c.addrs {
		select {
		case rep := <-replies:
			lists[rep.i], gones[rep.i], errs[rep.i] = rep.list, rep.gone, rep.err
			if rep.err == nil && grace == nil {
				grace = time.After(routeGrace)
			}
		case <-grace:
			break gather
		}
	}
	var merged []BrokerInfo
	var gone []string
	answered := false
	for i, list := range lists {
		if errs[i] != nil {
			continue
		}
		answered = true
		for _, g := range gones[i] {
			if !slices.Contains(gone, g) {
				gone = append(gone, g)
			}
		}
		for _, b := range list {
			j := slices.IndexFunc(merged, func(x BrokerInfo) bool { return x.Name == b.Name })
			switch {
			case j < 0:
				merged = append(merged, b)
			case b.LastHeartbeat.After(merged[j].LastHeartbeat):
				merged[j] = b
			}
		}
	}
	if answered {
		if merged == nil {
			merged = []BrokerInfo{}
		}
		slices.SortFunc(merged, func(a, b BrokerInfo) int { return cmp.Compare(a.Name, b.Name) })
		// A broker live by one name server's list is not gone.
		gone = slices.DeleteFunc(gone, func(g string) bool {
			return slices.ContainsFunc(merged, func(b BrokerInfo) bool { return b.Name == g })
		})
		if keep {
			c.mu.Lock()
			c.brokers = cachedBrokers{list: merged, gone: gone, fetched: c.now()}
			c.mu.Unlock()
		}
		return slices.Clone(merged), nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("cluster: %w", ctx.Err())
	}
	if cached.list != nil {
		return slices.Clone(cached.list), nil
	}
	if len(c.addrs) == 0 {
		errs = append(errs, errors.New("no name servers given"))
	}
	return nil, fmt.Errorf("cluster: %w: %w", ErrUnavailable, errors.Join(errs...))
}

// getClusterGone asks one name server for the live brokers, and the
// brokers it lists as gone.
func (c *Client) getClusterGone(ctx context.Context, addr string) ([]BrokerInfo, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.lookupTimeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, addr+"/v1/cluster?gone=true", nil)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster request: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer closeBody(resp)
	if resp.StatusCode != http.StatusOK {
		return nil, nil, statusError(resp)
	}
	var j ClusterJSON
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswerBytes)).Decode(&j); err != nil {
		return nil, nil, fmt.Errorf("cluster answer: %w", err)
	}
	list := make([]BrokerInfo, 0, len(j.Brokers))
	for _, b := range j.Brokers {
		list = append(list, BrokerInfo{Name: b.Name, Cluster: b.Cluster, Addr: b.Addr, Version: b.Version, LastHeartbeat: b.LastHeartbeat})
	}
	return list, j.Gone, nil
}

// getRoute asks one name server; found is false on its 404.
func (c *Client) getRoute(ctx context.Context, addr, topic string) (rt Route, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.lookupTimeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, addr+"/v1/routes/"+url.PathEscape(topic), nil)
	if err != nil {
		return Route{}, false, fmt.Errorf("route request: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return Route{}, false, err
	}
	defer closeBody(resp)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return Route{}, false, nil
	case http.StatusServiceUnavailable:
		code := problemCode(resp)
		err := statusError(resp)
		switch code {
		case "broker_unavailable":
			return Route{}, false, fmt.Errorf("%w: %w", ErrTopicGone, err)
		case "not_ready":
			return Route{}, false, fmt.Errorf("%w: %w", ErrWarmingUp, err)
		}
		return Route{}, false, err
	default:
		return Route{}, false, statusError(resp)
	}
	var j RouteJSON
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswerBytes)).Decode(&j); err != nil {
		return Route{}, false, fmt.Errorf("route answer: %w", err)
	}
	if j.Topic != topic {
		return Route{}, false, fmt.Errorf("route answer is for topic %q, not %q", clip(j.Topic), topic)
	}
	if len(j.Brokers) == 0 {
		return Route{}, false, nil
	}
	return j.Route(), true, nil
}

func cloneRoute(rt Route) Route {
	rt.Brokers = slices.Clone(rt.Brokers)
	return rt
}

// problemCode is the code of a problem answer, read without consuming
// its body (statusError reads it after).
func problemCode(resp *http.Response) string {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(raw), resp.Body), resp.Body}
	var p struct {
		Code string `json:"code"`
	}
	if json.Unmarshal(raw, &p) != nil {
		return "" // not a problem document; statusError shows the body
	}
	return p.Code
}

// statusError describes an unexpected answer, with the problem's detail
// when there is one.
func statusError(resp *http.Response) error {
	var p struct {
		Title  string `json:"title"`
		Detail string `json:"detail"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if json.Unmarshal(raw, &p) == nil && cmp.Or(p.Detail, p.Title) != "" {
		return fmt.Errorf("status %d: %s", resp.StatusCode, clip(cmp.Or(p.Detail, p.Title)))
	}
	return fmt.Errorf("status %d", resp.StatusCode)
}

// closeBody drains a little of what is left, so that the connection can be
// reused, and closes the body.
func closeBody(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}

// ParseAddrs turns a --namesrv value, name servers separated by ';', into
// base URLs: "ns1:9876;ns2:9876" gives http://ns1:9876 and http://ns2:9876;
// an explicit http:// or https:// is kept. Empty parts, duplicates and
// anything that is not a base URL are refused.
func ParseAddrs(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("name servers: none given; want host:port[;host:port...]")
	}
	parts := strings.Split(s, ";")
	out := make([]string, 0, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, fmt.Errorf("name servers %q: part %d is empty", clip(s), i+1)
		}
		base, err := parseAddr(p)
		if err != nil {
			return nil, fmt.Errorf("name server %q: %w", clip(p), err)
		}
		if slices.Contains(out, base) {
			return nil, fmt.Errorf("name server %q: listed twice", clip(p))
		}
		out = append(out, base)
	}
	return out, nil
}

func parseAddr(p string) (string, error) {
	raw := p
	if !strings.Contains(p, "://") {
		raw = "http://" + p
	}
	if err := validateAddr(raw); err != nil {
		return "", err
	}
	u, _ := url.Parse(raw) // validateAddr parsed it
	if strings.HasSuffix(u.Host, ":") {
		return "", errors.New("empty port")
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("port %s out of range", port)
		}
	}
	return u.Scheme + "://" + u.Host + strings.TrimRight(u.EscapedPath(), "/"), nil
}
