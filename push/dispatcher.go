package push

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
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
		if err := d.reconcile(ctx); err != nil {
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
		if s, ok := want[id]; !ok || !reflect.DeepEqual(s, l.sub) || l.reset() {
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

	// positions is where the group stood when the loop started; a reset of
	// the group's offsets changes them and restarts the loop.
	positions map[cursorKey]int64
}

type cursorKey struct {
	topic string
	queue int
}

func (d *Dispatcher) newLoop(s broker.Subscription) (*loop, error) {
	f, err := broker.ParseFilter(s.Filter)
	if err != nil {
		return nil, err
	}
	p := RetryPolicy{MaxRetries: s.MaxRetries, Delays: s.RetryDelays, BackoffMin: s.BackoffMin, BackoffMax: s.BackoffMax}
	if len(p.Delays) == 0 && p.BackoffMin == 0 {
		p.Delays = DefaultRetryDelays
	}
	l := &loop{d: d, sub: s, filter: f, policy: p, done: make(chan struct{}),
		log: d.logger.With(slog.String("subscription", s.ID), slog.String("group", s.Group), slog.String("topic", s.Topic))}
	if s.RatePerSecond > 0 {
		l.limit = rate.NewLimiter(rate.Limit(s.RatePerSecond), max(1, int(s.RatePerSecond)))
	}
	return l, nil
}

// queues are the loop's queues: the topic's, then the group's retry topic
// for it (unordered subscriptions only; ordered ones retry in place).
func (l *loop) queues() []cursorKey {
	n, err := l.d.b.Queues(l.sub.Topic)
	if err != nil {
		return nil
	}
	keys := make([]cursorKey, 0, n+1)
	for q := 0; q < n; q++ {
		keys = append(keys, cursorKey{l.sub.Topic, q})
	}
	if !l.sub.Ordered {
		keys = append(keys, cursorKey{broker.RetryTopic(l.sub.Group, l.sub.Topic), 0})
	}
	return keys
}

// reset reports whether the group's offsets moved under the loop (an
// offsets reset), which needs a fresh loop.
func (l *loop) reset() bool {
	for k, at := range l.positions {
		if off, ok := l.d.b.Offset(l.sub.Group, k.topic, k.queue); ok && off < at {
			return true
		}
	}
	return false
}

func (l *loop) start(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	dctx, dcancel := context.WithCancel(context.Background())
	l.cancel, l.deliverC = cancel, dcancel
	l.positions = make(map[cursorKey]int64)
	var cursors []*broker.Cursor
	for _, k := range l.queues() {
		off, ok := l.d.b.Offset(l.sub.Group, k.topic, k.queue)
		if !ok {
			_, off = l.d.b.QueueBounds(k.topic, k.queue)
			if k.topic != l.sub.Topic {
				off = 0 // a retry topic: everything in it is for this group
			}
			l.d.b.SetOffset(l.sub.Group, k.topic, k.queue, off)
		}
		l.positions[k] = off
		cursors = append(cursors, &broker.Cursor{Topic: k.topic, Queue: k.queue, Next: off})
	}
	l.log.Info("push loop started", slog.String("url", redactURL(l.sub.URL)), slog.Bool("ordered", l.sub.Ordered))
	go func() {
		defer close(l.done)
		if l.sub.Ordered {
			l.runOrdered(ctx, dctx, cursors)
		} else {
			l.run(ctx, dctx, cursors)
		}
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
}

// run is the unordered loop: up to max_in_flight deliveries at once, read
// round-robin across the queues.
func (l *loop) run(ctx, dctx context.Context, cursors []*broker.Cursor) {
	var mu sync.Mutex // guards the cursors' pending lists
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, l.sub.MaxInFlight)
	finished := make(chan struct{}, 1)
	for {
		// Taken before reading, so a dispatch during the read is not missed.
		arrived := l.d.b.Dispatched()
		progress := false
		for _, c := range cursors {
			room := cap(slots) - len(slots)
			if room == 0 {
				break
			}
			share := max(1, room/len(cursors))
			msgs, next, err := l.d.b.ReadQueue(c.Topic, c.Queue, c.Next, share, l.filter)
			if err != nil {
				l.log.Error("reading the queue failed", slog.String("queue_topic", c.Topic), slog.Int("queue", c.Queue), slog.Any("err", err))
				continue
			}
			mu.Lock()
			progress = progress || next > c.Next
			for _, m := range msgs {
				c.Start(m.QueueOffset)
			}
			c.Next = next
			l.d.b.SetOffset(l.sub.Group, c.Topic, c.Queue, c.Committed())
			l.d.b.SetInFlight(l.sub.Group, c.Topic, c.Queue, c.InFlight())
			mu.Unlock()
			for _, m := range msgs {
				slots <- struct{}{}
				wg.Add(1)
				go func(c *broker.Cursor, m *broker.Message) {
					defer wg.Done()
					defer func() { <-slots }()
					if l.deliverOne(ctx, dctx, m) {
						mu.Lock()
						c.Finish(m.QueueOffset)
						l.d.b.SetOffset(l.sub.Group, c.Topic, c.Queue, c.Committed())
						l.d.b.SetInFlight(l.sub.Group, c.Topic, c.Queue, c.InFlight())
						mu.Unlock()
					}
					select {
					case finished <- struct{}{}:
					default:
					}
				}(c, m)
			}
		}
		if progress {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-arrived:
		case <-finished:
		case <-time.After(time.Second):
		}
	}
}

// deliverOne makes one attempt at m and settles it: delivered, scheduled for
// a retry, or dead-lettered. It reports whether m is finished for this loop
// (false when the loop stops first: m is then delivered again after the
// restart, at least once).
func (l *loop) deliverOne(ctx, dctx context.Context, m *broker.Message) bool {
	attempt := max(m.Attempt, 1)
	res := l.attempt(ctx, dctx, m, attempt)
	switch res.Outcome {
	case Delivered:
		return true
	case Gone:
		l.gone()
		return false
	}
	if dctx.Err() != nil {
		return false
	}
	delay, dead := l.policy.Next(attempt, res.RetryAfter, rand.Float64)
	for {
		var err error
		if dead {
			err = l.d.b.DeadLetter(dctx, l.sub.Group, m, attempt, res.Err)
		} else {
			err = l.d.b.Retry(dctx, l.sub.Group, m, attempt+1, l.d.cfg.Now().Add(delay))
		}
		if err == nil {
			if dead {
				l.logDead(m, attempt, res.Err)
			}
			l.d.metrics.settled(l.sub.ID, dead)
			return true
		}
		l.log.Error("storing a retry failed; trying again", slog.String("msg_id", m.ID), slog.Any("err", err))
		select {
		case <-dctx.Done():
			return false
		case <-time.After(time.Second):
		}
	}
}

// attempt makes one delivery and logs it.
func (l *loop) attempt(ctx, dctx context.Context, m *broker.Message, attempt int) Result {
	if l.limit != nil {
		if err := l.limit.Wait(ctx); err != nil {
			return Result{Outcome: Retry, Err: "stopped"}
		}
	}
	now := l.d.cfg.Now()
	secrets := l.sub.SigningSecrets(now)
	res := l.d.cfg.Client.Deliver(dctx, Delivery{
		URL: l.sub.URL, Body: m.Body, ContentType: m.ContentType,
		MsgID: m.ID, Topic: m.OriginTopic(), Tag: m.Tag, Keys: m.Keys,
		QueueID: m.QueueID, QueueOffset: m.QueueOffset, Attempt: attempt,
		Subscription: l.sub.ID, Properties: m.Properties, Secrets: secrets, Timeout: l.sub.Timeout,
	}, l.d.cfg.Key, now)
	outcome := map[Outcome]string{Delivered: "delivered", Retry: "retry", Gone: "gone"}[res.Outcome]
	l.d.b.LogAttempt(broker.Attempt{MsgID: m.ID, Group: l.sub.Group, Subscription: l.sub.ID, Attempt: attempt,
		At: now, Outcome: outcome, Status: res.Status, Error: res.Err, Latency: res.Latency})
	l.d.metrics.attempted(l.sub.ID, res, m.StoredAt, now)
	return res
}

// logDead records in the trace that m went to the dead-letter queue.
func (l *loop) logDead(m *broker.Message, attempt int, reason string) {
	l.d.b.LogAttempt(broker.Attempt{MsgID: m.ID, Group: l.sub.Group, Subscription: l.sub.ID, Attempt: attempt,
		At: l.d.cfg.Now(), Outcome: "dead", Error: reason})
}

// gone disables the subscription: the endpoint said 410 Gone.
func (l *loop) gone() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := l.d.b.SetSubscriptionState(ctx, l.sub.ID, broker.StateDisabled, "the endpoint answered 410 Gone"); err != nil {
		l.log.Error("disabling the subscription failed", slog.Any("err", err))
	}
}

// runOrdered delivers each queue's messages one at a time, in queue order.
// A failing message blocks only its own queue while it is retried in place
// (the block is stored, so a restart resumes the wait), then goes to the
// dead-letter queue and the queue moves on.
func (l *loop) runOrdered(ctx, dctx context.Context, cursors []*broker.Cursor) {
	blocked, err := l.d.b.OrderedRetries(ctx, l.sub.ID)
	if err != nil {
		l.log.Error("loading blocked queues failed", slog.Any("err", err))
		return
	}
	var wg sync.WaitGroup
	for _, c := range cursors {
		var blk *broker.OrderedRetry
		if r, ok := blocked[c.Queue]; ok && r.QueueOffset >= c.Next {
			blk = &r
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.orderedQueue(ctx, dctx, c, blk)
		}()
	}
	wg.Wait()
}

func (l *loop) orderedQueue(ctx, dctx context.Context, c *broker.Cursor, blk *broker.OrderedRetry) {
	b := l.d.b
	for ctx.Err() == nil {
		var m *broker.Message
		attempt := 1
		if blk != nil {
			var err error
			if m, err = b.ReadMessageAt(c.Topic, c.Queue, blk.QueueOffset); err != nil {
				l.log.Error("blocked message unreadable; moving on", slog.Int("queue", c.Queue), slog.Int64("queue_offset", blk.QueueOffset), slog.Any("err", err))
				l.unblock(c, blk.QueueOffset+1)
				blk = nil
				continue
			}
			attempt = blk.Attempt
			if !sleepUntil(ctx, blk.NextAt, l.d.cfg.Now) {
				return
			}
			blk = nil
		} else {
			arrived := b.Dispatched()
			msgs, next, err := b.ReadQueue(c.Topic, c.Queue, c.Next, 1, l.filter)
			if err != nil || len(msgs) == 0 {
				if next > c.Next {
					c.Next = next
					b.SetOffset(l.sub.Group, c.Topic, c.Queue, c.Next)
				}
				select {
				case <-ctx.Done():
					return
				case <-arrived:
				case <-time.After(time.Second):
				}
				continue
			}
			m = msgs[0]
			c.Next = m.QueueOffset
			b.SetOffset(l.sub.Group, c.Topic, c.Queue, c.Next)
		}
		b.SetInFlight(l.sub.Group, c.Topic, c.Queue, 1)
		for {
			res := l.attempt(ctx, dctx, m, attempt)
			if res.Outcome == Delivered {
				l.unblock(c, m.QueueOffset+1)
				break
			}
			if res.Outcome == Gone {
				l.gone()
				return
			}
			if dctx.Err() != nil {
				return
			}
			delay, dead := l.policy.Next(attempt, res.RetryAfter, rand.Float64)
			if dead {
				if err := b.DeadLetter(dctx, l.sub.Group, m, attempt, res.Err); err != nil {
					l.log.Error("dead-lettering failed; retrying", slog.String("msg_id", m.ID), slog.Any("err", err))
					if !sleepUntil(ctx, l.d.cfg.Now().Add(time.Second), l.d.cfg.Now) {
						return
					}
					continue
				}
				l.logDead(m, attempt, res.Err)
				l.d.metrics.settled(l.sub.ID, true)
				l.unblock(c, m.QueueOffset+1)
				break
			}
			attempt++
			next := l.d.cfg.Now().Add(delay)
			if err := b.SetOrderedRetry(dctx, broker.OrderedRetry{Subscription: l.sub.ID, Queue: c.Queue,
				QueueOffset: m.QueueOffset, Attempt: attempt, NextAt: next}); err != nil {
				l.log.Error("storing the queue's block failed", slog.Any("err", err))
			}
			l.d.metrics.settled(l.sub.ID, false)
			if !sleepUntil(ctx, next, l.d.cfg.Now) {
				return
			}
		}
		b.SetInFlight(l.sub.Group, c.Topic, c.Queue, 0)
	}
}

// unblock moves an ordered queue past a settled message.
func (l *loop) unblock(c *broker.Cursor, next int64) {
	c.Next = next
	l.d.b.SetOffset(l.sub.Group, c.Topic, c.Queue, next)
	if err := l.d.b.ClearOrderedRetry(context.Background(), l.sub.ID, c.Queue); err != nil {
		l.log.Error("clearing the queue's block failed", slog.Any("err", err))
	}
}

// sleepUntil waits until t or ctx ends; it reports whether t came.
func sleepUntil(ctx context.Context, t time.Time, now func() time.Time) bool {
	d := t.Sub(now())
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// redactURL drops a URL's query (which may carry a token) for logs.
func redactURL(raw string) string {
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		return raw[:i] + "?…"
	}
	return raw
}
