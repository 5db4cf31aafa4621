package push

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// DispatcherConfig is what a Dispatcher needs.
type DispatcherConfig struct {
	Broker     *broker.Broker
	Client     *Client
	Key        *BusKey // signs v1a and Postbus-Signature
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Grace is how long deliveries in flight at shutdown may finish; the
	// rest are cancelled and redelivered after the restart.
	Grace time.Duration
	Now   func() time.Time
}

// Dispatcher runs one delivery loop per active push subscription. Loops
// share nothing but the HTTP client's connection pool: a slow, hanging or
// failing endpoint fills only its own subscription's in-flight window, and
// a large backlog of one subscription cannot starve another.
type Dispatcher struct {
	cfg     DispatcherConfig
	b       *broker.Broker
	logger  *slog.Logger
	metrics *pushMetrics

	mu    sync.Mutex
	loops map[string]*loop // by subscription id; guarded by mu
	// stopping are loops being stopped in the background, by subscription
	// id: a stop may wait out the grace of an endpoint that hangs, and must
	// not hold up any other subscription. Guarded by mu.
	stopping map[string]*loop
	// waiting are subscriptions whose replacement loop starts once the
	// loop in stopping for them is gone, so that no two loops ever deliver
	// one subscription at once. Guarded by mu.
	waiting map[string]broker.Subscription
	stops   sync.WaitGroup // the background stops; stopAll joins them
}

// NewDispatcher returns a Dispatcher; Run starts it.
func NewDispatcher(cfg DispatcherConfig) *Dispatcher {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Grace == 0 {
		cfg.Grace = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d := &Dispatcher{cfg: cfg, b: cfg.Broker, logger: cfg.Logger, loops: make(map[string]*loop),
		stopping: make(map[string]*loop), waiting: make(map[string]broker.Subscription)}
	d.metrics = newPushMetrics(cfg.Registerer, d)
	return d
}

// Run reconciles the loops with the broker's subscriptions until ctx ends,
// then stops every loop.
func (d *Dispatcher) Run(ctx context.Context) error {
	defer d.stopAll()
	for {
		changed := d.b.SubscriptionsChanged()
		// A stop cuts the reconcile in progress: no anomaly.
		if err := d.reconcile(ctx); err != nil && ctx.Err() == nil {
			d.logger.Error("loading subscriptions failed", slog.Any("err", err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(30 * time.Second): // a safety net; changes signal
		}
	}
}

// reconcile starts loops for new or changed active push subscriptions and
// stops the others. Stopping happens in the background, outside mu: a loop
// whose endpoint hangs takes up to the grace to stop, and other
// subscriptions' loops start meanwhile. A changed subscription's new loop
// waits for its old loop to be gone.
func (d *Dispatcher) reconcile(ctx context.Context) error {
	subs, err := d.b.Subscriptions(ctx)
	if err != nil {
		return err
	}
	want := make(map[string]broker.Subscription)
	for _, s := range subs {
		if s.URL != "" && s.State == broker.StateActive {
			want[s.ID] = s
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, l := range d.loops {
		// Compared whole, not by UpdatedAt: two changes within its
		// millisecond would leave the loop on the first one's settings.
		if s, ok := want[id]; !ok || !reflect.DeepEqual(s, l.sub) {
			delete(d.loops, id)
			d.stopLater(ctx, id, l)
		}
	}
	for id := range d.waiting {
		if _, ok := want[id]; !ok {
			delete(d.waiting, id)
		}
	}
	for id, s := range want {
		if _, ok := d.loops[id]; ok {
			continue
		}
		if _, ok := d.stopping[id]; ok {
			d.waiting[id] = s // the newest settings, started by stopLater
			continue
		}
		d.startLoop(ctx, s)
	}
	return nil
}

// startLoop starts a loop for s. d.mu is held.
func (d *Dispatcher) startLoop(ctx context.Context, s broker.Subscription) {
	l, err := d.newLoop(s)
	if err != nil {
		d.logger.Error("subscription cannot run", slog.String("subscription", s.ID), slog.Any("err", err))
		return
	}
	d.loops[s.ID] = l
	l.start(ctx)
}

// stopLater stops l in the background; once it is gone, the subscription's
// replacement loop starts if one is waiting. d.mu is held.
func (d *Dispatcher) stopLater(ctx context.Context, id string, l *loop) {
	d.stopping[id] = l
	d.stops.Add(1)
	go func() {
		defer d.stops.Done()
		l.stop()
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.stopping, id)
		s, ok := d.waiting[id]
		delete(d.waiting, id)
		// After ctx ends stopAll owns the loops: nothing new starts.
		if ok && ctx.Err() == nil {
			d.startLoop(ctx, s)
		}
	}()
}

// stopAll stops every loop, all at once (each waits out its own grace at
// the same time as the others), and waits for the background stops.
func (d *Dispatcher) stopAll() {
	d.mu.Lock()
	loops := d.loops
	d.loops = make(map[string]*loop)
	clear(d.waiting)
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Go(l.stop)
	}
	wg.Wait()
	d.stops.Wait()
}

// loop delivers one subscription's messages.
type loop struct {
	d      *Dispatcher
	sub    broker.Subscription
	filter broker.Filter
	policy RetryPolicy
	limit  *rate.Limiter // nil: no rate limit
	log    *slog.Logger

	cancel   context.CancelFunc // stops reading
	deliverC context.CancelFunc // cancels deliveries in flight
	done     chan struct{}
	goneOnce sync.Once // a 410 disables the subscription once, however many deliveries saw it

	// deferred is how many of the subscription's deliveries answered 202
	// are held for their acknowledgement, counted against max_in_flight
	// beside the deliveries open: read from the broker's timers when the
	// loop starts (it learns of those a loop before it, or the process
	// before a restart, deferred) and while any are held, and counted up
	// as this loop defers. deferMu keeps a count read from the timers
	// from passing a deferral being stored, which it would miss.
	deferred atomic.Int64
	deferMu  sync.Mutex
}

func (d *Dispatcher) newLoop(s broker.Subscription) (*loop, error) {
	f, err := broker.ParseFilter(s.Filter)
	if err != nil {
		return nil, err
	}
	l := &loop{d: d, sub: s, filter: f, policy: PolicyOf(s), done: make(chan struct{}),
		log: d.logger.With(slog.String("subscription", s.ID), slog.String("group", s.Group), slog.String("topic", s.Topic))}
	if s.RatePerSecond > 0 {
		// A burst of one: a bucket of rate_per_second tokens, full after
		// an idle while, let twice the rate through in the first second.
		l.limit = rate.NewLimiter(rate.Limit(s.RatePerSecond), 1)
	}
	return l, nil
}

func (l *loop) start(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	dctx, dcancel := context.WithCancel(context.Background())
	l.cancel, l.deliverC = cancel, dcancel
	l.log.Info("push loop started", slog.String("url", redactURL(l.sub.URL)), slog.Bool("ordered", l.sub.Ordered))
	go func() {
		defer close(l.done)
		l.run(ctx, dctx)
	}()
}

// stop stops reading, lets deliveries in flight finish within the grace,
// and waits for the loop to end.
func (l *loop) stop() {
	l.cancel()
	t := time.AfterFunc(l.d.cfg.Grace, l.deliverC)
	<-l.done
	t.Stop()
	l.deliverC()
	l.log.Info("push loop stopped")
}

// PolicyOf is the retry policy of a push subscription: its own delays or
// backoff, or the default schedule.
func PolicyOf(s broker.Subscription) RetryPolicy {
	p := RetryPolicy{MaxRetries: s.MaxRetries, Delays: s.RetryDelays, BackoffMin: s.BackoffMin, BackoffMax: s.BackoffMax}
	if len(p.Delays) == 0 && p.BackoffMin == 0 {
		p.Delays = DefaultRetryDelays
	}
	return p
}

// leaseMargin is how much longer than a delivery's timeout a push lease
// lasts: the loop settles every lease it takes, so its visibility only
// matters when a delivery hangs past its timeout.
const leaseMargin = 10 * time.Second

// run leases up to max_in_flight messages at once from the consumer
// engine, delivers each and settles it with what the retry policy says.
// The engine decides what may go out: for an ordered subscription, one
// message per queue at a time, in order, a failing one retried in place.
func (l *loop) run(ctx, dctx context.Context) {
	if l.sub.Batch.Batched() {
		l.runBatched(ctx, dctx)
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	eng := l.d.b.Engine()
	visibility := l.sub.Timeout + leaseMargin
	slots := make(chan struct{}, l.sub.MaxInFlight)
	finished := make(chan struct{}, 1)
	if l.sub.DLQRedrive != nil {
		wg.Go(func() { l.heal(ctx, dctx) })
	}
	l.countDeferred(ctx)
	for {
		// Taken before leasing, so a dispatch during the lease is not missed.
		arrived := l.d.b.Dispatched()
		acked := l.d.b.DeferredSettled()
		if l.deferred.Load() > 0 {
			l.countDeferred(ctx) // acknowledged or timed out since
		}
		var leases []broker.Lease
		if room := cap(slots) - len(slots) - int(l.deferred.Load()); room > 0 {
			var err error
			leases, err = eng.Lease(ctx, l.sub.Group, l.sub.Topic, room, visibility)
			switch {
			case err == nil || ctx.Err() != nil:
			case errors.Is(err, broker.ErrSubscriptionInactive):
				// Paused, disabled (a 410) or deleted under the loop,
				// which reconcile is about to stop: expected, not a fault.
				l.log.Debug("the subscription is no longer active; waiting to be stopped", slog.Any("err", err))
			default:
				l.log.Error("leasing messages failed", slog.Any("err", err))
				l.d.metrics.leaseFailed(l.sub.ID)
			}
		}
		for _, ls := range leases {
			slots <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				l.deliverOne(ctx, dctx, ls)
				select {
				case finished <- struct{}{}:
				default:
				}
			}()
		}
		if len(leases) > 0 {
			continue
		}
		wait := time.Second
		if l.sub.Ordered {
			wait = 250 * time.Millisecond // a queue's retry falls due without a dispatch to wake on
		}
		select {
		case <-ctx.Done():
			return
		case <-arrived:
		case <-finished:
		case <-acked:
		case <-time.After(wait):
		}
	}
}

// countDeferred reads how many of the subscription's deliveries are held
// for their acknowledgement.
func (l *loop) countDeferred(ctx context.Context) {
	l.deferMu.Lock()
	defer l.deferMu.Unlock()
	n, err := l.d.b.DeferredInFlight(ctx, l.sub.Group, l.sub.Topic)
	if err != nil {
		if ctx.Err() == nil {
			// The last count stands: max_in_flight is kept by it.
			l.log.Error("counting deferred deliveries failed", slog.Any("err", err))
		}
		return
	}
	l.deferred.Store(int64(n))
}

// hold defers a delivery its endpoint answered 202 (broker's
// Engine.Defer). It reports false when the delivery could not be held,
// which then counts as a failed attempt.
func (l *loop) hold(dctx context.Context, ls broker.Lease, key int64) bool {
	l.deferMu.Lock()
	defer l.deferMu.Unlock()
	err := l.d.b.Engine().Defer(context.WithoutCancel(dctx), ls.Receipt, key, l.d.cfg.Now().Add(l.sub.AckTimeout))
	switch {
	case err == nil:
		l.deferred.Add(1)
		return true
	case errors.Is(err, broker.ErrStaleReceipt):
		// The engine took the lease back (an offset reset, the
		// subscription changed): the message goes out again from there,
		// and the token the endpoint holds is answered expired.
		l.log.Debug("a deferred delivery's lease was taken back before it was held", slog.String("msg_id", ls.ID))
		return true
	}
	l.log.Error("holding a delivery answered 202 for its acknowledgement failed; it counts as a failed attempt",
		slog.String("msg_id", ls.ID), slog.Any("err", err))
	l.d.metrics.deferFailed(l.sub.ID)
	return false
}

// deliverOne makes one attempt at a leased message and settles the lease:
// delivered, retried later, dead, or released when it was never sent (the
// loop stopped while it waited for the rate limit or before the request
// went out), which counts no attempt.
func (l *loop) deliverOne(ctx, dctx context.Context, ls broker.Lease) {
	// An ordered queue waits on its one delivery, which must stay a push
	// lease: its deliveries carry no ack token, and a 202 is a 2xx.
	var token string
	var key int64
	if !l.sub.Ordered {
		token, key = l.d.b.Engine().AckToken(l.sub.Group, l.sub.Topic, ls)
		defer l.d.b.Engine().TokenDone(key)
	}
	res, sent := l.attempt(ctx, dctx, ls.Message, ls.Attempt, token, "")
	if sent && res.Outcome == Deferred {
		if l.hold(dctx, ls, key) {
			return
		}
		res.Outcome, res.Err = Retry, "answered 202, but the delivery could not be held for its acknowledgement"
	}
	var v broker.Verdict
	// failed: a retry or a dead letter, which the metrics count (an ack or
	// a release is neither).
	dead, failed := false, false
	switch {
	case !sent:
		v = broker.Release()
	case res.Outcome == Delivered:
		v = broker.Ack()
	case res.Outcome == Gone:
		l.goneOnce.Do(l.gone)
		v = broker.Release()
	case dctx.Err() != nil:
		// Cut off by the stop: the endpoint may have it; at least once.
		v = broker.Release()
	default:
		failed = true
		var delay time.Duration
		delay, dead = l.policy.Next(ls.Attempt, res.RetryAfter, rand.Float64)
		if dead {
			v = broker.Dead(res.Err)
		} else {
			v = broker.RetryAt(l.d.cfg.Now().Add(delay))
		}
	}
	eng := l.d.b.Engine()
	for {
		err := eng.Settle(context.WithoutCancel(dctx), ls.Receipt, v)
		if err == nil {
			if failed {
				l.d.metrics.settled(l.sub.ID, dead)
			}
			return
		}
		if errors.Is(err, broker.ErrStaleReceipt) {
			// The engine took the lease back (an offset reset, the
			// subscription paused or changed, the lease expired): the
			// message goes out again from there.
			l.log.Debug("lease settled after it was taken back", slog.String("msg_id", ls.ID))
			return
		}
		l.log.Error("settling a delivery failed; trying again", slog.String("msg_id", ls.ID), slog.Any("err", err))
		select {
		case <-dctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// mayStart waits for the rate limit (rate_per_second counts requests) and
// reports whether a request may still start: false when the loop stopped
// meanwhile, or its deliveries were cancelled.
func (l *loop) mayStart(ctx, dctx context.Context) bool {
	if l.limit != nil {
		if err := l.limit.Wait(ctx); err != nil {
			return false
		}
	}
	return ctx.Err() == nil && dctx.Err() == nil
}

// attempt makes one delivery and logs it. It reports false, and logs
// nothing, when the delivery was never sent: the loop stopped while it
// waited for the rate limit, or before the request could start.
// note, when set, goes before the attempt's error in the trace (a probe's).
func (l *loop) attempt(ctx, dctx context.Context, m *broker.Message, attempt int, token, note string) (Result, bool) {
	if !l.mayStart(ctx, dctx) {
		return Result{}, false
	}
	now := l.d.cfg.Now()
	secrets := l.sub.SigningSecrets(now)
	if l.sub.Format == broker.FormatCloudEvents {
		l.checkEvent(m)
	}
	res := l.d.cfg.Client.Deliver(dctx, Delivery{
		URL: l.sub.URL, Body: m.Body, ContentType: m.ContentType,
		MsgID: m.ID, Topic: m.OriginTopic(), Tag: m.Tag, Keys: m.Keys,
		QueueID: m.QueueID, QueueOffset: m.QueueOffset, Attempt: attempt,
		Subscription: l.sub.ID, Properties: m.Properties, Secrets: secrets, Timeout: l.sub.Timeout, AckToken: token,
		Format: l.sub.Format, BornAt: m.BornAt,
	}, l.d.cfg.Key, now)
	outcome := map[Outcome]string{Delivered: "delivered", Retry: "retry", Gone: "gone", Deferred: "deferred"}[res.Outcome]
	why := res.Err
	if note != "" {
		why = strings.TrimSuffix(note+": "+why, ": ")
	}
	l.d.b.LogAttempt(broker.Attempt{MsgID: m.ID, Group: l.sub.Group, Subscription: l.sub.ID, Attempt: attempt,
		At: now, Outcome: outcome, Status: res.Status, Error: why, Latency: res.Latency})
	l.d.metrics.attempted(l.sub.ID, res, m.StoredAt, now)
	return res, true
}

// checkEvent logs and counts a message whose ce- properties are not a
// whole CloudEvent: it is delivered as an event made from the message
// rather than as the event it was meant to be.
func (l *loop) checkEvent(m *broker.Message) {
	if attr, detail := partialEvent(m.Properties); detail != "" {
		l.d.metrics.partial.WithLabelValues(l.sub.ID).Inc()
		l.log.Error("a message's ce-* properties are not a whole CloudEvent: delivered as an event made from the message, those properties as Postbus-Prop-*",
			slog.String("msg_id", m.ID), slog.String("attribute", attr), slog.String("why", detail))
	}
}

// gone disables the subscription: the endpoint said 410 Gone.
func (l *loop) gone() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := l.d.b.SetSubscriptionState(ctx, l.sub.ID, broker.StateDisabled, "the endpoint answered 410 Gone"); err != nil {
		l.log.Error("disabling the subscription failed", slog.Any("err", err))
	}
}

// redactURL drops a URL's query (which may carry a token) for logs.
func redactURL(raw string) string {
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		return raw[:i] + "?…"
	}
	return raw
}
