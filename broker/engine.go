package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/meta"
)

// The consumer engine: the one place that hands messages out to a group and
// takes them back, for pull and push alike, on RocketMQ 5's "pop" model.
//
//	Lease(group, topic, max, visibility) → []Lease
//	Settle(receipt, Ack | RetryAt(t) | Dead(reason) | Release)
//
// It owns the group's cursors on the topic's queues and on its retry
// queue, what is out, ordered queues' blocks, retry copies, dead-lettering,
// offset resets, topic growth and redrive. A consumer dropped (a reset, a
// pause) while an ordered push lease is out leaves a fence on its queue,
// so the consumer built after it waits for that delivery to end. A lease is one of two kinds,
// chosen by the subscription:
//
//   - Pull leases are durable: handing a message out stores, in the same
//     append, a delayed copy of it in the group's retry topic, due when its
//     visibility runs out; the receipt names that copy's timer. Settling
//     cancels or swaps that timer in one SQLite transaction, so a crash at
//     any point brings a message back (maybe twice), never loses it.
//   - Push leases live in this process, as the push loop that holds them
//     does: the group's offset stays at the lowest message not settled,
//     with, beside it, what was settled above it (the offset's progress:
//     how far the consumer read and which messages are still out), and a
//     writer persists both as soon as settles move them (unsynced SQLite
//     commits, which a kill of the process keeps); a settle returns once
//     the write carrying it committed (pushWritten). A consumer built
//     again (a crash, a restart, a pause) hands out again only what was
//     out, so a crash repeats at most what the push loop had out, not
//     what settled above the oldest message out nor what OffsetInterval
//     saw.
//
// Attempt numbers have one meaning everywhere: a lease's Attempt is the
// attempt it is (1 on the first delivery), and an ordered queue's stored
// block (OrderedRetry.Attempt) is the number of attempts already made at
// its message; the next is Attempt+1, at NextAt.

// Lease is one message handed to a consumer, and the receipt that settles it.
type Lease struct {
	*Message
	Receipt string
	Attempt int
}

// Pulled is a lease handed to a puller.
type Pulled = Lease

// Verdict is how a lease is settled.
type Verdict struct {
	kind   verdictKind
	at     time.Time
	reason string
}

type verdictKind uint8

const (
	verdictAck verdictKind = iota
	verdictRetry
	verdictDead
	verdictRelease
)

// Ack settles a lease for good.
func Ack() Verdict { return Verdict{kind: verdictAck} }

// RetryAt brings the message back as the next attempt at t.
func RetryAt(t time.Time) Verdict { return Verdict{kind: verdictRetry, at: t} }

// Dead moves the message to the group's dead-letter queue with reason.
func Dead(reason string) Verdict { return Verdict{kind: verdictDead, reason: reason} }

// Release gives back a message that was never sent (a rate limiter's wait
// or a delivery cancelled before it went out): it is handed out again as
// the same attempt, which is not counted.
func Release() Verdict { return Verdict{kind: verdictRelease} }

// Counts reports whether settling with v ends an attempt (a release does
// not: nothing was sent).
func (v Verdict) Counts() bool { return v.kind != verdictRelease }

// expiredReason marks a pull lease's visibility copy, so that handing it
// out again records that the previous attempt expired.
const expiredReason = "\x00visibility"

// Engine is the consumer engine. It has its own lock and Close.
type Engine struct {
	b         *Broker
	leaseID   atomic.Uint64
	flushWake chan struct{} // push offsets moved
	stop      chan struct{} // closed by Close
	flushed   chan struct{} // closed when flushLoop ends
	started   bool
	closeOnce sync.Once

	mu   sync.Mutex
	cons map[[2]string]*consumer // by group, topic; guarded by mu
	gen  uint64                  // bumped whenever a consumer is dropped; guarded by mu

	// moving is held for writing while a group's position moves (an
	// offset reset), and for reading while a consumer is built from the
	// offsets: a consumer is built wholly before a reset or wholly after
	// it, never from the offsets the reset is replacing.
	moving sync.RWMutex

	// fences are ordered queues whose message a dropped consumer still has
	// out (an offset reset or a pause while a delivery is open): no new
	// consumer hands out that queue until the old lease settles (stale)
	// or its visibility ends, so an ordered queue never has two
	// deliveries open. fenceMu is taken last, holding nothing else.
	fenceMu sync.Mutex
	fences  map[fenceKey]fence // guarded by fenceMu

	tokens pendingTokens // ack tokens of push deliveries open (deferred.go)
}

type fenceKey struct {
	group, topic string
	slot         int
}

type fence struct {
	lease uint64
	until time.Time
}

func newEngine(b *Broker) *Engine {
	return &Engine{b: b, cons: make(map[[2]string]*consumer), flushWake: make(chan struct{}, 1),
		stop: make(chan struct{}), flushed: make(chan struct{}), fences: make(map[fenceKey]fence)}
}

// start starts the offset writer, once the metadata is open.
func (e *Engine) start() {
	e.started = true
	go e.flushLoop()
}

// Close drops every consumer: leases still out settle as stale and their
// messages come back from the offsets (push) or their timers (pull).
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		close(e.stop)
		if e.started {
			<-e.flushed
		}
	})
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, c := range e.cons {
		c.close()
		delete(e.cons, k)
	}
	e.gen++
	return nil
}

// consumer is a group's state on one topic.
type consumer struct {
	mu      sync.Mutex
	sub     Subscription // guarded by mu
	filter  Filter       // guarded by mu
	push    bool
	closed  bool           // dropped: it must not move offsets any more; guarded by mu
	cursors []*queueCursor // the topic's queues, then the retry queue; guarded by mu
	rr      int            // where the next lease starts, for fairness; guarded by mu
	leaseMu sync.Mutex     // one lease at a time: only leases move a cursor's Next
	// blocks are an ordered group's queues waiting on a message: the
	// message's queue offset, the attempts made and when the next may go
	// out. Stored in SQLite when a pull hands out or a retry is scheduled,
	// so a restart keeps the order. Guarded by mu.
	blocks map[int]OrderedRetry
	leases map[uint64]*memLease // push leases out; guarded by mu
	// pulledOut are an ordered pull group's queues whose message is out
	// and not settled: when handed out again, its visibility ran out
	// (the trace says "expired"). Guarded by mu.
	pulledOut map[int]bool
	out       map[int]uint64 // ordered push: the lease out on each queue (a run's first); guarded by mu
	// runs are an ordered push queue's leases out as one run of
	// consecutive messages (LeaseBatch), in queue order, those settled
	// taken out: the queue stays busy until the run is empty. Guarded by mu.
	runs map[int][]uint64
	// sentBefore are the attempts made at messages a run's failure took
	// back, by slot and queue offset: read again, each goes out as its
	// next attempt, not as a first delivery. Guarded by mu.
	sentBefore map[[2]int64]int
	// unordered are ordered pull receipts whose block became a visibility
	// copy when the group turned unordered: the copy's timer, by the
	// receipt's queue, offset and attempt, so the receipt still settles
	// (in this process; after a restart it is stale). Guarded by mu.
	unordered map[[3]int64]int64
	redo      []*memLease // released or expired push leases, handed out first; guarded by mu
	// ackedOrdered is the attempt whose receipt acked an ordered pull
	// queue's message, by slot and queue offset, for the last
	// maxOrderedAcks acks (oldest first in ackedOrder). Guarded by mu.
	ackedOrdered map[[2]int64]int
	ackedOrder   [][2]int64
}

// memLease is a push lease: a message out to this process's push loop.
type memLease struct {
	id       uint64
	c        *queueCursor
	m        *Message
	attempt  int
	ordered  bool
	deadline time.Time
}

func (c *consumer) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
}

// lowestRedo is the index in c.redo of the lowest offset to go out again
// from cur, or -1. Called with c.mu held.
func (c *consumer) lowestRedo(cur *queueCursor) int {
	at := -1
	for i, l := range c.redo {
		if l.c == cur && (at < 0 || l.m.QueueOffset < c.redo[at].m.QueueOffset) {
			at = i
		}
	}
	return at
}

// queues are the topic's cursors, without the retry queue.
func (c *consumer) queues() []*queueCursor { return c.cursors[:len(c.cursors)-1] }

// retrySlot is an ordered group's key for its retry queue among its
// queues' (blocks, what is out, ordered receipts): above any queue number,
// within a receipt's 16 bits.
const retrySlot = 0xFFFF

// cursorAt returns the cursor an ordered group keys by slot, or nil.
// Called with c.mu held.
func (c *consumer) cursorAt(slot int) *queueCursor {
	if slot == retrySlot {
		return c.retryCursor()
	}
	if slot >= 0 && slot < len(c.queues()) {
		return c.cursors[slot]
	}
	return nil
}

// holds reports whether an ordered pull receipt names the message its
// queue has out now: the block's message and attempt, out (not nacked or
// released meanwhile) and, for a receipt that names it, until the same
// end of visibility. Called with c.mu held.
func (c *consumer) holds(r receipt) bool {
	blk, ok := c.blocks[r.Queue]
	switch {
	case !ok || !c.pulledOut[r.Queue] || blk.QueueOffset != r.Timer || blk.Attempt != r.Attempt:
		return false
	case r.Kind == receiptOrderedUntil:
		return leaseEnd(blk).UnixMilli() == r.Until
	}
	return true
}

// filter is what a consumer with filter f reads from the cursor's queue:
// all of the retry queue, whose messages the group took already (when
// they matched), as RocketMQ subscribes retry topics with "*". Filtered
// there, a message out or waiting for its retry when the filter changed
// would be skipped: neither acked nor dead-lettered.
func (c *queueCursor) filter(f Filter) Filter {
	if c.slot == retrySlot {
		return Filter{all: true}
	}
	return f
}

// retryCursor is the cursor of the group's retry queue for the topic.
func (c *consumer) retryCursor() *queueCursor { return c.cursors[len(c.cursors)-1] }

// Lease hands out up to max of topic's messages to group, each out for
// visibility unless settled. A group with a push subscription gets push
// leases, one with a pull subscription pull leases. Lease never creates a
// subscription (a first Pull does): without an active one it fails with
// ErrSubscriptionInactive.
func (e *Engine) Lease(ctx context.Context, group, topic string, max int, visibility time.Duration) ([]Lease, error) {
	return e.leaseRun(ctx, group, topic, max, 1, visibility)
}

// leaseRun is Lease handing out up to run consecutive messages of an
// ordered push queue at once (LeaseBatch).
func (e *Engine) leaseRun(ctx context.Context, group, topic string, max, run int, visibility time.Duration) ([]Lease, error) {
	for range 3 {
		c, err := e.consumerFor(ctx, group, topic)
		if err != nil {
			return nil, err
		}
		got, err := e.lease(ctx, c, max, run, visibility)
		if !errors.Is(err, errConsumerDropped) {
			return got, err
		}
	}
	return nil, nil // dropped again and again: the caller asks again later
}

// errConsumerDropped is a lease's answer on a consumer dropped before or
// while it leased: nothing was handed out, and the caller leases again
// from the consumer built now.
var errConsumerDropped = errors.New("consumer dropped")

// consumerFor returns the group's consumer on topic, building it from the
// subscription and the offsets.
func (e *Engine) consumerFor(ctx context.Context, group, topic string) (*consumer, error) {
	e.mu.Lock()
	c := e.cons[[2]string{group, topic}]
	e.mu.Unlock()
	if c != nil {
		return c, nil
	}
	subs, err := e.b.Subscriptions(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range subs {
		if s.Group == group && s.Topic == topic && s.URL != "" {
			if s.State != StateActive {
				return nil, &Error{Code: CodeInvalidSubscription, Field: "group", Err: ErrSubscriptionInactive,
					Detail: fmt.Sprintf("the push subscription of group %q on %q is %s", group, topic, s.State)}
			}
			return e.install(ctx, s, true)
		}
	}
	c, err = e.b.pullGroup(ctx, group, topic, false)
	if errors.Is(err, errNoPullGroup) {
		return nil, &Error{Code: CodeInvalidSubscription, Field: "group", Err: ErrSubscriptionInactive,
			Detail: fmt.Sprintf("group %q has no subscription on %q", group, topic)}
	}
	return c, err
}

// ErrSubscriptionInactive is wrapped by Lease's error when the group has
// no active subscription on the topic any more (paused, disabled or
// deleted): a push loop racing its own stop, not a fault.
var ErrSubscriptionInactive = errors.New("subscription not active")

// install builds a consumer for s and caches it, unless another was
// cached meanwhile. A consumer dropped (an offset reset) while this one
// was being built makes it read the offsets again.
func (e *Engine) install(ctx context.Context, s Subscription, push bool) (*consumer, error) {
	b := e.b
	e.moving.RLock()
	defer e.moving.RUnlock()
	for {
		e.mu.Lock()
		gen := e.gen
		if c := e.cons[[2]string{s.Group, s.Topic}]; c != nil {
			e.mu.Unlock()
			return c, nil
		}
		e.mu.Unlock()
		f, err := ParseFilter(s.Filter)
		if err != nil {
			return nil, err
		}
		n, err := b.Queues(s.Topic)
		if err != nil {
			return nil, err
		}
		c := &consumer{sub: s, filter: f, push: push, blocks: map[int]OrderedRetry{}, pulledOut: map[int]bool{},
			leases: map[uint64]*memLease{}, out: map[int]uint64{}, runs: map[int][]uint64{}}
		// Blocks are read for an unordered subscription too: one turned
		// unordered while it had no consumer still has them, and they
		// are converted below.
		if c.blocks, err = b.meta.OrderedRetries(ctx, s.ID); err != nil {
			return nil, err
		}
		if !push {
			// A pull group's stored block is a message handed out
			// (or nacked): after a restart, taken as out.
			for q := range c.blocks {
				c.pulledOut[q] = true
			}
		}
		// Where the group has no offset (a queue added by growing the
		// topic, or the retry queue at first) all of it is the group's.
		for q := 0; q < n; q++ {
			off, _ := b.Offset(s.Group, s.Topic, q)
			c.cursors = append(c.cursors, &queueCursor{Topic: s.Topic, Queue: q, Next: off, slot: q})
		}
		off, _ := b.Offset(s.Group, RetryTopic(s.Group, s.Topic), 0)
		c.cursors = append(c.cursors, &queueCursor{Topic: RetryTopic(s.Group, s.Topic), Queue: 0, Next: off, slot: retrySlot})
		if push {
			// Ordered too: progress an unordered consumer recorded
			// before the subscription turned ordered (while paused).
			e.resume(c)
		}
		if !s.Ordered && len(c.blocks) > 0 {
			if err := e.unorder(ctx, c); err != nil {
				return nil, err
			}
		}
		e.mu.Lock()
		if e.gen != gen {
			e.mu.Unlock()
			// A drop or a change of the subscription meanwhile: build
			// again from the subscription as it is now.
			cur, err := b.Subscription(ctx, s.ID)
			if err != nil || cur.State != StateActive {
				return nil, &Error{Code: CodeInvalidSubscription, Field: "group", Err: ErrSubscriptionInactive,
					Detail: fmt.Sprintf("the subscription of group %q on %q changed while its consumer was built", s.Group, s.Topic)}
			}
			s = cur
			continue
		}
		if other := e.cons[[2]string{s.Group, s.Topic}]; other != nil {
			e.mu.Unlock()
			return other, nil
		}
		e.cons[[2]string{s.Group, s.Topic}] = c
		e.mu.Unlock()
		return c, nil
	}
}

// reposition moves a group's position on a topic in one step: the
// group's consumer is dropped (an ordered delivery it has open fences its
// queue), and no consumer of any group is built until move has written the
// new position, so none starts from the old one or writes it back.
func (e *Engine) reposition(group, topic string, move func() error) error {
	e.moving.Lock()
	defer e.moving.Unlock()
	e.drop(func(g, t string) bool { return g == group && t == topic })
	if testHookRepositioning != nil {
		testHookRepositioning()
	}
	return move()
}

// testHookRepositioning runs in reposition between the drop and the move.
var testHookRepositioning func()

// resume picks up, for a new push consumer, what its group's
// last one recorded as settled above each offset: the cursor reads on
// after it, and only the messages that were out go out again, first.
// Called before c is shared.
func (e *Engine) resume(c *consumer) {
	b := e.b
	for _, cur := range c.cursors {
		committed, p := b.offsetProgress(c.sub.Group, cur.Topic, cur.Queue)
		if p == nil || committed != cur.Next {
			continue
		}
		next, out, err := parseProgress(committed, p)
		if err != nil {
			// Not what this broker wrote: start at the offset, as
			// without it (at least once), and say so.
			b.logger.Error("a push consumer's recorded progress is unreadable; resuming at its offset", slog.String("group", c.sub.Group),
				slog.String("queue_topic", cur.Topic), slog.Int("queue", cur.Queue), slog.Any("err", err))
			b.metrics.progressUnreadable()
			continue
		}
		lo, _ := b.cq.Bounds(cur.Topic, cur.Queue)
		for _, off := range out {
			if off < lo {
				continue // gone with retention, as a read from the offset would skip it
			}
			m, err := b.ReadMessageAt(cur.Topic, cur.Queue, off)
			if err != nil {
				// Past retention, as a read of the queue skips it; damaged,
				// an anomaly dispatch has reported.
				level := slog.LevelWarn
				if CodeOf(err) != CodeMessageNotFound {
					level = slog.LevelError
				}
				b.logger.Log(context.Background(), level, "a push message out at the last stop is unreadable; skipping it", slog.String("group", c.sub.Group),
					slog.String("queue_topic", cur.Topic), slog.Int("queue", cur.Queue), slog.Int64("queue_offset", off), slog.Any("err", err))
				continue
			}
			if !cur.filter(c.filter).Match(m.Tag) {
				continue // the filter changed since: no longer the group's
			}
			cur.Start(off)
			if blk, ok := c.blocks[cur.slot]; ok && blk.QueueOffset == off {
				continue // its stored block brings it back, as the attempt after those made
			}
			c.redo = append(c.redo, &memLease{c: cur, m: m, attempt: max(m.Attempt, 1)})
		}
		cur.Next = next
	}
}

// drop forgets the consumers that match, so the next lease builds them
// again from the subscription and the offsets. Their leases still out
// settle as stale. The long polls held on them wake, to look again on
// what replaces them (or answer that nothing does).
func (e *Engine) drop(match func(group, topic string) bool) {
	var dropped [][2]string
	e.mu.Lock()
	for k, c := range e.cons {
		if match(k[0], k[1]) {
			e.fenceOpen(k[0], k[1], c)
			c.close()
			delete(e.cons, k)
			dropped = append(dropped, k)
		}
	}
	e.gen++
	e.mu.Unlock()
	for _, k := range dropped {
		e.b.wakePolls(k[0], k[1])
	}
}

// fenceOpen fences the ordered queues c has a push lease out on.
func (e *Engine) fenceOpen(group, topic string, c *consumer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.fenceMu.Lock()
	defer e.fenceMu.Unlock()
	for slot, id := range c.out {
		if l := c.leases[id]; l != nil {
			e.fences[fenceKey{group, topic, slot}] = fence{lease: id, until: l.deadline}
		}
	}
}

// fenced reports whether an ordered queue waits for a dropped consumer's
// lease on it.
func (e *Engine) fenced(group, topic string, slot int, now time.Time) bool {
	e.fenceMu.Lock()
	defer e.fenceMu.Unlock()
	k := fenceKey{group, topic, slot}
	f, ok := e.fences[k]
	if ok && !now.Before(f.until) {
		delete(e.fences, k) // its visibility ended: it counts as expired
		return false
	}
	return ok
}

// unfence lifts the fence a dropped consumer's lease held, once it is
// settled.
func (e *Engine) unfence(r receipt) {
	e.fenceMu.Lock()
	defer e.fenceMu.Unlock()
	k := fenceKey{r.Group, r.Topic, r.Queue}
	if f, ok := e.fences[k]; ok && f.lease == uint64(r.Timer) {
		delete(e.fences, k)
	}
}

// subscriptionChanged applies a subscription's change to its consumer: a
// deleted subscription, or a paused or disabled pull one, drops it (a
// deleted push one with deliveries out retires first: those settle, then
// it is dropped; see dropRetired); other
// changes apply in place (a paused push consumer leases nothing), so leases out (a push loop restarting after a secret rotation)
// settle. Turning ordered on keeps what is out as it is (out of order
// already); turning it off converts the queues' blocks (unorder). Blocks of
// a subscription turned unordered without a consumer are converted when
// its next consumer is built.
func (e *Engine) subscriptionChanged(ctx context.Context, s Subscription, deleted bool) {
	e.mu.Lock()
	c := e.cons[[2]string{s.Group, s.Topic}]
	if c == nil {
		e.gen++ // a consumer being built from the old settings builds again
	}
	e.mu.Unlock()
	if c == nil {
		return
	}
	c.leaseMu.Lock() // no lease half done on the old settings
	c.mu.Lock()
	// A paused or disabled push subscription keeps its consumer: the
	// deliveries its loop has out finish within the loop's grace and
	// settle, so a 200 answered meanwhile is recorded, not delivered
	// again after the resume; no lease goes out until then.
	keep := !deleted && (s.State == StateActive || c.push) && s.ID == c.sub.ID && !c.closed
	if deleted && c.push && s.ID == c.sub.ID && !c.closed && len(c.leases) > 0 {
		// So does a deleted one, retired, until what its loop has out
		// settles (dropRetired): the group keeps its offsets, and a 200
		// answered within the grace moves them as after a pause, so that
		// the group subscribing again does not deliver it twice (push
		// model seed 5). It leases nothing more.
		c.sub.State = stateDeleted
		c.mu.Unlock()
		c.leaseMu.Unlock()
		return
	}
	if keep {
		if f, err := ParseFilter(s.Filter); err == nil {
			if c.sub.Ordered && !s.Ordered {
				if err := e.unorder(ctx, c); err != nil {
					e.b.logger.Error("turning a consumer unordered failed; building it again from the offsets",
						slog.String("subscription", s.ID), slog.Any("err", err))
					keep = false
				}
			}
			c.sub, c.filter = s, f
		} else {
			keep = false
		}
	}
	c.mu.Unlock()
	c.leaseMu.Unlock()
	if keep {
		return
	}
	e.drop(func(g, t string) bool { return g == s.Group && t == s.Topic })
}

// stateDeleted is the state of a retired consumer, one whose push
// subscription was deleted while its loop had deliveries out.
const stateDeleted = "deleted"

// dropRetired drops the group's consumer on topic once it is retired and
// has nothing out any more.
func (e *Engine) dropRetired(group, topic string) {
	e.mu.Lock()
	c := e.cons[[2]string{group, topic}]
	e.mu.Unlock()
	if c == nil {
		return
	}
	c.mu.Lock()
	done := c.sub.State == stateDeleted && len(c.leases) == 0
	c.mu.Unlock()
	if done {
		e.drop(func(g, t string) bool { return g == group && t == topic && e.cons[[2]string{g, t}] == c })
	}
}

// grow adds cursors for queues the topic gained since the consumer was
// built. Called with c.mu held.
func (e *Engine) grow(c *consumer) {
	n, err := e.b.Queues(c.sub.Topic)
	if err != nil || n <= len(c.cursors)-1 {
		return
	}
	retry := c.retryCursor()
	c.cursors = c.cursors[:len(c.cursors)-1]
	for q := len(c.cursors); q < n; q++ {
		off, _ := e.b.Offset(c.sub.Group, c.sub.Topic, q)
		c.cursors = append(c.cursors, &queueCursor{Topic: c.sub.Topic, Queue: q, Next: off, slot: q})
		e.b.logger.Info("consumer picks up a queue the topic grew", slog.String("group", c.sub.Group),
			slog.String("topic", c.sub.Topic), slog.Int("queue", q))
	}
	c.cursors = append(c.cursors, retry)
}

// lease hands out what is ready now.
func (e *Engine) lease(ctx context.Context, c *consumer, limit, run int, visibility time.Duration) ([]Lease, error) {
	c.leaseMu.Lock()
	defer c.leaseMu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errConsumerDropped
	}
	if c.sub.State != StateActive {
		sub := c.sub
		c.mu.Unlock()
		return nil, &Error{Code: CodeInvalidSubscription, Field: "group", Err: ErrSubscriptionInactive,
			Detail: fmt.Sprintf("the push subscription of group %q on %q is %s", sub.Group, sub.Topic, sub.State)}
	}
	e.grow(c)
	ordered := c.sub.Ordered
	c.mu.Unlock()
	var out []Lease
	if ordered {
		got, err := e.leaseOrdered(ctx, c, limit, run, visibility)
		if err != nil {
			return got, err
		}
		out = got
	}
	if len(out) >= limit {
		return out, nil
	}
	var got []Lease
	var err error
	if c.push {
		got, err = e.leasePush(ctx, c, limit-len(out), visibility)
	} else {
		got, err = e.leasePull(ctx, c, limit-len(out), visibility)
	}
	return append(out, got...), err
}

// flushLoop writes the offsets push leases moved, as soon as they move:
// one unsynced write after another (each takes what moved while the last
// ran), so a kill of the process delivers again only what was out and what
// was settled during the last write and flushSpacing, not what an
// OffsetInterval saw.
func (e *Engine) flushLoop() {
	defer close(e.flushed)
	for {
		select {
		case <-e.stop:
			return
		case <-e.flushWake:
		}
		if err := e.b.flushOffsetsRound(context.Background()); err != nil {
			e.b.logger.Error("writing consumer offsets failed; the periodic write retries", slog.Any("err", err))
		}
		// Writes are spaced, so that under load one takes many settles
		// rather than costing a commit each.
		t := time.NewTimer(flushSpacing)
		select {
		case <-e.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// flushSpacing is the least time between two writes of flushLoop.
const flushSpacing = 2 * time.Millisecond

// setOffset moves the group's offset on a cursor's queue to what it may
// persist, unless the consumer was dropped (an offset reset wrote newer
// ones). Called with c.mu held.
func (e *Engine) setOffset(c *consumer, cur *queueCursor) {
	if c.closed {
		return
	}
	var progress []byte
	if c.push {
		// With it, a restart delivers again what was out, not what
		// was settled above the oldest message out (issue 11, fault 16).
		// An ordered consumer needs it too: one turned ordered may have
		// settled messages above one still out, which it must not
		// deliver again after a restart (push model seed 82: one
		// answered 200 came again, failed and was dead-lettered).
		progress = cur.progress()
	}
	e.b.setOffsetProgress(c.sub.Group, cur.Topic, cur.Queue, cur.Committed(), progress)
	if c.push {
		select {
		case e.flushWake <- struct{}{}:
		default:
		}
	}
}

// deadOnLease dead-letters a message read with more attempts behind it
// than the subscription allows now (its max_retries was lowered).
func (e *Engine) deadOnLease(ctx context.Context, sub Subscription, m *Message, now time.Time) error {
	// A dead letter written from m before a crash that came ahead of
	// the offset's move past m: m is read again, and must not be
	// dead-lettered again (the DLQ holds a message once per group).
	if err := e.b.waitDispatched(ctx, e.b.log.Committed()); err != nil {
		return err
	}
	off, ok, err := e.b.deadLetterAfter(ctx, m)
	if err != nil {
		return fmt.Errorf("look for a dead letter of %s: %w", m.ID, err)
	}
	if ok {
		e.b.logger.Error("retry copy already dead-lettered before a restart; moving past it",
			slog.String("group", sub.Group), slog.String("msg_id", m.ID), slog.Int64("offset", m.LogOffset), slog.Int64("dead_letter", off))
		e.b.metrics.delayAnomaly(delayAlreadyDead)
		return nil
	}
	attempts := max(m.Attempt, 1) - 1
	reason := deadReason(m, attempts)
	e.noteExpired(sub, m, now)
	if err := e.b.DeadLetter(ctx, sub.Group, m, attempts, reason); err != nil {
		return err
	}
	e.b.LogAttempt(Attempt{MsgID: m.ID, Group: sub.Group, Subscription: sub.ID, Attempt: max(attempts, 1), At: now, Outcome: "dead", Error: reason})
	return nil
}

// deadReason is the error a dead letter of m, a retry copy past its
// group's last attempt after attempts, carries: how its last attempt
// ended (its visibility ran out, or it was nacked).
func deadReason(m *Message, attempts int) string {
	if m.Reason == deferredReason {
		return fmt.Sprintf("answered 202 and not acknowledged within its ack_timeout on the last of %d attempts", attempts)
	}
	if m.Reason == expiredReason {
		return fmt.Sprintf("not acked within its visibility on any of %d attempts", attempts)
	}
	return fmt.Sprintf("nacked on its last attempt, %d of %d", attempts, attempts)
}

// noteExpired records in the trace that the attempt before m's expired,
// when m is a pull lease's visibility copy coming back.
func (e *Engine) noteExpired(sub Subscription, m *Message, now time.Time) {
	switch m.Reason {
	case expiredReason:
		e.b.LogAttempt(Attempt{MsgID: m.ID, Group: sub.Group, Subscription: sub.ID, Attempt: max(m.Attempt-1, 1), At: now, Outcome: "expired"})
	case deferredReason:
		// A deferred push delivery's copy: its endpoint answered 202 and
		// did not acknowledge it within ack_timeout (deferred.go).
		e.b.LogAttempt(Attempt{MsgID: m.ID, Group: sub.Group, Subscription: sub.ID, Attempt: max(m.Attempt-1, 1), At: now, Outcome: "expired",
			Error: fmt.Sprintf("answered 202 and not acknowledged within ack_timeout %s", sub.AckTimeout)})
		e.b.deferred.timeouts.Inc()
	default:
		return
	}
	m.Reason = ""
}

// leasePull hands out unordered pull leases from every cursor (none for
// an ordered group: leaseOrdered takes its queues and its retry queue).
func (e *Engine) leasePull(ctx context.Context, c *consumer, limit int, visibility time.Duration) ([]Lease, error) {
	b := e.b
	type taken struct {
		m   *Message
		cur *queueCursor
	}
	var got []taken
	// The retry copies of what is handed out go to the log in one append,
	// which holds at most MaxBatchMessages records and MaxBatchStoredBytes
	// as stored: a pull hands out fewer messages than asked rather than
	// more than that append takes (large messages), and always at least
	// one, whose copy alone always fits.
	var stored int64
	nCopies, full := 0, false
	c.mu.Lock()
	sub, filter := c.sub, c.filter
	cursors := c.cursors
	if sub.Ordered {
		cursors = nil // leaseOrdered takes every queue, the retry queue too
	}
	n := len(cursors)
	start := c.rr
	c.rr++
	for round := 0; len(got) < limit && round < 2 && !full; round++ {
		for i := 0; i < n && len(got) < limit && !full; i++ {
			cur := cursors[(start+i)%n]
			share := limit - len(got)
			if round == 0 {
				share = (share + n - i - 1) / (n - i) // spread across queues first
			}
			msgs, next, err := b.ReadQueue(cur.Topic, cur.Queue, cur.Next, share, cur.filter(filter))
			if err != nil {
				c.mu.Unlock()
				return nil, err
			}
			cur.Next = next
			for _, m := range msgs {
				if max(m.Attempt, 1) <= sub.MaxRetries+1 { // not dead-lettered: gets a copy
					size := commitlog.MinSegmentSize(int64(recordLen(m.retryCopy(sub.Group, 0, time.Time{}))), 1)
					if nCopies > 0 && (nCopies == MaxBatchMessages || stored+size > MaxBatchStoredBytes) {
						cur.Next, full = m.QueueOffset, true // read again by the next pull
						break
					}
					stored += size
					nCopies++
				}
				cur.Start(m.QueueOffset)
				got = append(got, taken{m, cur})
			}
		}
	}
	c.mu.Unlock()
	if len(got) == 0 {
		return nil, nil
	}
	// From here the lease is written whole or not at all, whether or not
	// the puller is still there: a cancel that cut the copies' write short
	// (an append done, its sync abandoned) undid the lease and left the
	// copies behind, so the messages, pulled again and acked, came back as
	// a second attempt. A puller that left is handed its messages back by
	// the caller (httpapi nacks them at once).
	ctx = context.WithoutCancel(ctx)
	// The visibility copies (and dead letters) are stored before the
	// offsets move past the originals: nothing handed out can be lost.
	now := b.now()
	var copies []*Message
	var out []Lease
	for _, t := range got {
		attempt := max(t.m.Attempt, 1)
		if attempt > sub.MaxRetries+1 {
			if err := e.deadOnLease(ctx, sub, t.m, now); err != nil {
				return nil, e.unsettle(c, err)
			}
			continue
		}
		e.noteExpired(sub, t.m, now)
		cp := t.m.retryCopy(sub.Group, attempt+1, now.Add(visibility))
		cp.Reason = expiredReason
		copies = append(copies, cp)
		out = append(out, Lease{Message: t.m, Attempt: attempt})
	}
	if len(copies) == 0 {
		c.mu.Lock()
		for _, t := range got {
			t.cur.Finish(t.m.QueueOffset)
			e.setOffset(c, t.cur)
		}
		c.mu.Unlock()
		// All dead-lettered: the offsets past them are stored now, not
		// at the next checkpoint, so a crash does not read them again.
		if err := b.flushOffsets(ctx); err != nil {
			return out, fmt.Errorf("store the offsets past dead letters: %w", err)
		}
		return out, nil
	}
	for _, cp := range copies {
		cp.flags |= flagLeased // its timer is stored below, with the offsets
	}
	ts, err := b.topicOrSystem(ctx, RetryTopic(sub.Group, sub.Topic))
	if err != nil {
		return nil, e.unsettle(c, err)
	}
	if testHookLeaseStoring != nil {
		testHookLeaseStoring()
	}
	res, err := b.store(ctx, ts, copies, false)
	if errors.Is(err, errStaleTopic) {
		// The topic (and its retry topics) was deleted under the lease:
		// the pull is one of a deleted topic, not a failure.
		err = &Error{Code: CodeTopicNotFound, Field: "topic", Err: errors.Join(ErrTopicNotFound, err),
			Detail: fmt.Sprintf("topic %q was deleted while this pull was taking its messages; nothing was handed out", sub.Topic)}
	}
	if err != nil {
		return nil, e.unsettle(c, err)
	}
	if testHookLeaseStored != nil {
		testHookLeaseStored()
	}
	timers := make([]meta.Timer, len(res))
	var end int64
	for i := range out {
		out[i].Receipt = receipt{Attempt: out[i].Attempt, Timer: res[i].logOffset, Group: sub.Group, Topic: sub.Topic, MsgID: out[i].ID}.encode(b.receiptKey, b.nodeName())
		timers[i] = meta.Timer{LogOffset: res[i].logOffset, DeliverAt: copies[i].DeliverAt, Owner: copies[i].Topic}
		end = max(end, res[i].logOffset+1)
	}
	// A timer fires by reading its copy, which dispatch indexes first.
	if err := b.waitDispatched(ctx, end); err != nil {
		return nil, e.unsettle(c, err)
	}
	// The lease holds once the copies' timers and the offsets past their
	// messages are stored, in one transaction: a crash before it leaves
	// the copies without timers and the offsets where they were, so the
	// messages go out again from the queue as the same attempt (nobody saw
	// them), never also from their copies. c.mu is held throughout, so a
	// drop (which would have the next consumer read the same messages from
	// the offsets) comes before the lease, which then hands out nothing,
	// or after it, once the offsets moved.
	c.mu.Lock()
	if c.closed {
		// Dropped while the copies were stored (a subscription made or
		// changed, an offset reset, the topic deleted): they stay without
		// timers, and the consumer built now hands the messages out.
		c.mu.Unlock()
		return nil, errConsumerDropped
	}
	moved := map[*queueCursor]bool{}
	for _, t := range got {
		t.cur.Finish(t.m.QueueOffset)
		moved[t.cur] = true
	}
	offs := make([]meta.Offset, 0, len(moved))
	for cur := range moved {
		offs = append(offs, meta.Offset{Group: sub.Group, Topic: cur.Topic, Queue: cur.Queue, Next: cur.Committed()})
	}
	err = b.commitLease(ctx, timers, offs)
	c.mu.Unlock()
	if err != nil {
		// Neither is stored: the copies stay without timers, and the
		// consumer built next reads the messages again from the offsets.
		return nil, e.unsettle(c, fmt.Errorf("store a pull lease: %w", err))
	}
	return out, nil
}

// testHookLeaseStored runs in a pull lease once its visibility copies are
// stored, before the offsets move past their messages; testHookLeaseStoring
// just before they are.
var testHookLeaseStored, testHookLeaseStoring func()

// unsettle undoes a lease that could not store its copies: the consumer
// is dropped, so the next lease starts again from the offsets, which never
// moved past the messages.
func (e *Engine) unsettle(c *consumer, err error) error {
	e.mu.Lock()
	for k, v := range e.cons {
		if v == c {
			c.close()
			delete(e.cons, k)
		}
	}
	e.gen++
	e.mu.Unlock()
	return err
}

// leasePush hands out unordered push leases: released and expired ones
// first, then from the cursors (none for an ordered group: leaseOrdered
// takes its queues and its retry queue).
func (e *Engine) leasePush(ctx context.Context, c *consumer, limit int, visibility time.Duration) ([]Lease, error) {
	b := e.b
	now := b.now()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, nil
	}
	sub, filter := c.sub, c.filter
	e.expire(c, now)
	var out []Lease
	hand := func(l *memLease) { // with c.mu held
		l.id = e.leaseID.Add(1)
		l.deadline = now.Add(visibility)
		c.leases[l.id] = l
		out = append(out, Lease{Message: l.m, Attempt: l.attempt, Receipt: receipt{Kind: receiptPush, Attempt: l.attempt,
			Timer: int64(l.id), Queue: l.c.Queue, Group: sub.Group, Topic: sub.Topic, MsgID: l.m.ID}.encode(b.receiptKey, "")})
	}
	cursors := c.cursors
	if sub.Ordered {
		// leaseOrdered takes every queue, the retry queue too, and what
		// is to go out again on each, in its place in the queue.
		cursors = nil
	} else {
		for len(c.redo) > 0 && len(out) < limit {
			l := c.redo[0]
			c.redo = c.redo[1:]
			hand(l)
		}
	}
	n := len(cursors)
	start := c.rr
	c.rr++
	c.mu.Unlock()
	// The queues are read without c.mu, so settles of what is out do not
	// wait for the reads; c.leaseMu keeps other leases off the cursors'
	// Next, which only leases move.
	for i := 0; i < n && len(out) < limit; i++ {
		cur := cursors[(start+i)%n]
		share := max(1, (limit-len(out)+n-i-1)/(n-i))
		msgs, next, err := b.ReadQueue(cur.Topic, cur.Queue, cur.Next, share, cur.filter(filter))
		if err != nil {
			b.logger.Error("reading a queue failed", slog.String("group", sub.Group), slog.String("queue_topic", cur.Topic),
				slog.Int("queue", cur.Queue), slog.Any("err", err))
			continue
		}
		for j, m := range msgs {
			if max(m.Attempt, 1) > sub.MaxRetries+1 {
				// Rare: max_retries was lowered while its retries waited.
				if err := e.deadOnLease(ctx, sub, m, now); err != nil {
					msgs, next = msgs[:j], m.QueueOffset
					break
				}
				msgs[j] = nil
			}
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, nil // dropped meanwhile: nothing was handed out
		}
		for _, m := range msgs {
			if m == nil {
				continue
			}
			e.noteExpired(sub, m, now) // a deferred delivery's copy back after its ack_timeout
			cur.Start(m.QueueOffset)
			hand(&memLease{c: cur, m: m, attempt: max(m.Attempt, 1)})
		}
		cur.Next = next
		e.setOffset(c, cur)
		c.mu.Unlock()
	}
	return out, nil
}

// expire takes back push leases whose visibility ran out (a loop that
// never settled them): an unordered one goes out again as the next
// attempt, an ordered queue's message waits no longer. Called with c.mu
// held.
func (e *Engine) expire(c *consumer, now time.Time) {
	for id, l := range c.leases {
		if now.Before(l.deadline) {
			continue
		}
		if l.ordered && len(c.runs[l.c.slot]) > 0 {
			// A run's messages expire together: its first still out
			// blocks the queue, the rest are read again after it.
			first := c.leases[c.runs[l.c.slot][0]]
			if first == nil {
				first = l // cannot be: a run holds only leases out
			}
			for _, rid := range c.runs[l.c.slot] {
				if rl := c.leases[rid]; rl != nil {
					e.b.LogAttempt(Attempt{MsgID: rl.m.ID, Group: c.sub.Group, Subscription: c.sub.ID, Attempt: rl.attempt, At: now, Outcome: "expired"})
					e.b.metrics.leaseExpired()
				}
			}
			e.truncateRun(c, first, true)
			delete(c.leases, first.id)
			delete(c.runs, l.c.slot)
			delete(c.out, l.c.slot)
			c.blocks[l.c.slot] = OrderedRetry{Subscription: c.sub.ID, Queue: l.c.slot, QueueOffset: first.m.QueueOffset, Attempt: first.attempt, NextAt: now}
			continue
		}
		delete(c.leases, id)
		e.b.LogAttempt(Attempt{MsgID: l.m.ID, Group: c.sub.Group, Subscription: c.sub.ID, Attempt: l.attempt, At: now, Outcome: "expired"})
		e.b.metrics.leaseExpired()
		if l.ordered {
			delete(c.out, l.c.slot)
			c.blocks[l.c.slot] = OrderedRetry{Subscription: c.sub.ID, Queue: l.c.slot, QueueOffset: l.m.QueueOffset, Attempt: l.attempt, NextAt: now}
			continue
		}
		l.attempt++
		c.redo = append(c.redo, l)
	}
}

// leaseOrdered hands out, from each queue with nothing out and not
// waiting, its next message, and from each queue whose wait is over, its
// blocked message again as the next attempt: a queue's messages go out one
// at a time, in order. The group's retry queue is one of them: redriven
// dead letters go out one at a time too, in the order they were put back.
func (e *Engine) leaseOrdered(ctx context.Context, c *consumer, limit, run int, visibility time.Duration) ([]Lease, error) {
	b := e.b
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, nil
	}
	sub, filter := c.sub, c.filter
	now := b.now()
	if c.push {
		e.expire(c, now)
	}
	queues := c.cursors // the retry queue too: one at a time, in its order
	start := c.rr
	c.rr++
	// A queue is busy while a lease from before the group turned ordered
	// is out on it: the queue's later messages wait for it.
	var unorderedOut map[*queueCursor]bool
	for _, l := range c.leases {
		if !l.ordered {
			if unorderedOut == nil {
				unorderedOut = map[*queueCursor]bool{}
			}
			unorderedOut[l.c] = true
		}
	}
	var out []Lease
	for i := 0; i < len(queues) && len(out) < limit; i++ {
		cur := queues[(start+i)%len(queues)]
		if _, busy := c.out[cur.slot]; busy || unorderedOut[cur] || (c.push && e.fenced(sub.Group, sub.Topic, cur.slot, now)) {
			continue
		}
		_, blocked := c.blocks[cur.slot]
		if r := c.lowestRedo(cur); r >= 0 && !blocked {
			// What was out of this queue before (a push consumer's
			// messages out at a restart, or released before the
			// subscription turned ordered) is behind the cursor: it goes
			// out first, lowest offset first, as the queue's one
			// delivery (push model seed 82: handed out beside the
			// ordered leases, 9-10 went out before 3-4).
			l := c.redo[r]
			c.redo = slices.Delete(c.redo, r, r+1)
			l.id, l.ordered, l.deadline = e.leaseID.Add(1), true, now.Add(visibility)
			c.leases[l.id] = l
			c.out[cur.slot] = l.id
			out = append(out, Lease{Message: l.m, Attempt: l.attempt, Receipt: receipt{Kind: receiptPush, Attempt: l.attempt,
				Timer: int64(l.id), Queue: cur.slot, Group: sub.Group, Topic: sub.Topic, MsgID: l.m.ID}.encode(b.receiptKey, "")})
			continue
		}
		var m *Message
		var tail []*Message // a push run's messages after m (LeaseBatch)
		var attempt int
		if blk, ok := c.blocks[cur.slot]; ok {
			if now.Before(blk.NextAt) {
				continue // its message is out, or waits for its retry
			}
			var err error
			if m, err = b.ReadMessageAt(cur.Topic, cur.Queue, blk.QueueOffset); err != nil {
				b.logger.Error("an ordered queue's blocked message is unreadable; moving on", slog.String("group", sub.Group),
					slog.String("topic", cur.Topic), slog.Int("queue", cur.Queue), slog.Int64("queue_offset", blk.QueueOffset), slog.Any("err", err))
				e.clearBlock(ctx, c, cur, blk.QueueOffset+1)
				continue
			}
			attempt = blk.Attempt + 1
			if !c.push && c.pulledOut[cur.slot] {
				b.LogAttempt(Attempt{MsgID: m.ID, Group: sub.Group, Subscription: sub.ID, Attempt: max(blk.Attempt, 1), At: now, Outcome: "expired"})
			}
			if attempt > sub.MaxRetries+1 {
				reason := fmt.Sprintf("not settled within its visibility on any of %d attempts", attempt-1)
				if err := b.DeadLetter(ctx, sub.Group, m, attempt-1, reason); err != nil {
					return out, err
				}
				b.LogAttempt(Attempt{MsgID: m.ID, Group: sub.Group, Subscription: sub.ID, Attempt: attempt - 1, At: now, Outcome: "dead", Error: reason})
				e.clearBlock(ctx, c, cur, blk.QueueOffset+1)
				continue
			}
		} else {
			n := 1
			if c.push && run > 1 && cur.slot != retrySlot {
				// The retry queue's messages, with attempts behind
				// them, go out one at a time.
				n = max(1, min(run, limit-len(out)))
			}
			msgs, next, err := b.ReadQueue(cur.Topic, cur.Queue, cur.Next, n, cur.filter(filter))
			if err != nil {
				return out, err
			}
			cur.Next = next
			if len(msgs) == 0 {
				e.setOffset(c, cur)
				continue
			}
			m = msgs[0]
			for _, t := range msgs[1:] {
				if max(t.Attempt, 1) > sub.MaxRetries+1 {
					break // read again after m, on its own
				}
				tail = append(tail, t)
			}
			cur.Next = m.QueueOffset + 1
			// A retry queue's message may have attempts behind it (it was
			// out or waiting when the subscription turned ordered).
			attempt = max(m.Attempt, 1)
			if c.push && cur.slot != retrySlot {
				attempt = c.attemptAt(cur.slot, m.QueueOffset, attempt)
			}
			if attempt > sub.MaxRetries+1 {
				if err := e.deadOnLease(ctx, sub, m, now); err != nil {
					cur.Next = m.QueueOffset
					return out, err
				}
				e.setOffset(c, cur)
				continue
			}
			e.noteExpired(sub, m, now)
		}
		// The group's offset stays at the message until it is settled
		// (below any message still out from before the group turned
		// ordered, too).
		if !slices.Contains(cur.pending, m.QueueOffset) {
			cur.Start(m.QueueOffset)
		}
		cur.Next = max(cur.Next, m.QueueOffset+1)
		e.setOffset(c, cur)
		if c.push {
			l := &memLease{id: e.leaseID.Add(1), c: cur, m: m, attempt: attempt, ordered: true, deadline: now.Add(visibility)}
			c.leases[l.id] = l
			c.out[cur.slot] = l.id
			out = append(out, Lease{Message: m, Attempt: attempt, Receipt: receipt{Kind: receiptPush, Attempt: attempt,
				Timer: int64(l.id), Queue: cur.slot, Group: sub.Group, Topic: sub.Topic, MsgID: m.ID}.encode(b.receiptKey, "")})
			if len(tail) > 0 {
				ids := []uint64{l.id}
				for _, t := range tail {
					e.noteExpired(sub, t, now)
					cur.Start(t.QueueOffset)
					cur.Next = max(cur.Next, t.QueueOffset+1)
					ta := c.attemptAt(cur.slot, t.QueueOffset, max(t.Attempt, 1))
					tl := &memLease{id: e.leaseID.Add(1), c: cur, m: t, attempt: ta, ordered: true, deadline: l.deadline}
					c.leases[tl.id] = tl
					ids = append(ids, tl.id)
					out = append(out, Lease{Message: t, Attempt: ta, Receipt: receipt{Kind: receiptPush, Attempt: ta,
						Timer: int64(tl.id), Queue: cur.slot, Group: sub.Group, Topic: sub.Topic, MsgID: t.ID}.encode(b.receiptKey, "")})
				}
				c.runs[cur.slot] = ids
				e.setOffset(c, cur)
			}
			continue
		}
		blk := OrderedRetry{Subscription: sub.ID, Queue: cur.slot, QueueOffset: m.QueueOffset, Attempt: attempt, NextAt: now.Add(visibility)}
		if err := b.meta.SetOrderedRetry(ctx, blk); err != nil {
			return out, err
		}
		c.blocks[cur.slot] = blk
		c.pulledOut[cur.slot] = true
		out = append(out, Lease{Message: m, Attempt: attempt, Receipt: receipt{Kind: receiptOrderedUntil, Attempt: attempt,
			Timer: m.QueueOffset, Queue: cur.slot, Group: sub.Group, Topic: sub.Topic, MsgID: m.ID, Until: blk.NextAt.UnixMilli()}.encode(b.receiptKey, b.nodeName())})
	}
	return out, nil
}

// clearBlock frees an ordered queue and moves the group past its message.
// Called with c.mu held.
func (e *Engine) clearBlock(ctx context.Context, c *consumer, cur *queueCursor, next int64) {
	if _, stored := c.blocks[cur.slot]; stored || !c.push {
		if err := e.b.meta.ClearOrderedRetry(ctx, c.sub.ID, cur.slot); err != nil {
			e.b.logger.Error("clearing an ordered queue's block failed", slog.Any("err", err))
		}
	}
	delete(c.blocks, cur.slot)
	delete(c.out, cur.slot)
	cur.Finish(next - 1)
	cur.Next = max(cur.Next, next)
	e.setOffset(c, cur)
}

// unorder turns an ordered consumer's queues unordered in place (PATCH
// ordered:false), so nothing about a message out or waiting is lost: a
// push lease out stays out and settles as an unordered one; a queue's
// block (a retry waiting, or an ordered pull lease out until its
// visibility ends) becomes a retry copy of its message, due when the
// block was, as the attempt after those made. Its attempt count goes on
// and a message still out does not go out again before its visibility
// ends. Called with c.mu held (and c.leaseMu, or before c is shared).
func (e *Engine) unorder(ctx context.Context, c *consumer) error {
	b := e.b
	now := b.now()
	for slot, id := range c.out {
		if l := c.leases[id]; l != nil {
			l.ordered = false
		}
		for _, rid := range c.runs[slot] {
			if l := c.leases[rid]; l != nil {
				l.ordered = false
			}
		}
		delete(c.out, slot)
		if len(c.runs[slot]) == 0 {
			delete(c.blocks, slot) // the lease carries it
		} // else the block is a later message of the run's, converted below
		delete(c.runs, slot)
	}
	for slot, blk := range c.blocks {
		cur := c.cursorAt(slot)
		if cur == nil {
			delete(c.blocks, slot)
			continue
		}
		m, err := b.ReadMessageAt(cur.Topic, cur.Queue, blk.QueueOffset)
		if err != nil {
			b.logger.Error("an ordered queue's blocked message is unreadable; moving on", slog.String("group", c.sub.Group),
				slog.String("topic", cur.Topic), slog.Int("queue", cur.Queue), slog.Int64("queue_offset", blk.QueueOffset), slog.Any("err", err))
		} else {
			at := blk.NextAt
			if at.Before(now) {
				at = now
			}
			cp := m.retryCopy(c.sub.Group, blk.Attempt+1, at)
			out := !c.push && c.pulledOut[slot]
			if out {
				cp.Reason = expiredReason // out until then: handed out again, it expired
			}
			ts, err := b.topicOrSystem(ctx, cp.Topic)
			if err != nil {
				return fmt.Errorf("turn %s unordered: %w", c.sub.ID, err)
			}
			res, err := b.store(ctx, ts, []*Message{cp}, false)
			if err != nil {
				return fmt.Errorf("turn %s unordered: %w", c.sub.ID, err)
			}
			if out {
				if c.unordered == nil {
					c.unordered = map[[3]int64]int64{}
				}
				c.unordered[[3]int64{int64(slot), blk.QueueOffset, int64(blk.Attempt)}] = res[0].logOffset
			}
		}
		delete(c.blocks, slot)
		delete(c.pulledOut, slot)
		cur.Finish(blk.QueueOffset)
		cur.Next = max(cur.Next, blk.QueueOffset+1)
		e.setOffset(c, cur)
	}
	if err := b.meta.ClearOrderedRetries(ctx, c.sub.ID); err != nil {
		return err
	}
	return b.flushOffsets(ctx)
}

// inFlight counts, per queue, the messages out to consumers held here (the
// groups API): push leases, ordered queues' messages out or waiting.
// Messages out on pull are counted by their visibility timers instead.
func (e *Engine) inFlight(group string) map[offsetKey]int {
	e.mu.Lock()
	var cs []*consumer
	for k, c := range e.cons {
		if k[0] == group {
			cs = append(cs, c)
		}
	}
	e.mu.Unlock()
	out := map[offsetKey]int{}
	for _, c := range cs {
		c.mu.Lock()
		if c.sub.State != StateActive {
			// Paused: its messages wait, none is out to a consumer
			// (its loop's last deliveries end within its grace).
			c.mu.Unlock()
			continue
		}
		for _, l := range c.leases {
			out[offsetKey{group, l.c.Topic, l.c.Queue}]++
		}
		for _, l := range c.redo {
			out[offsetKey{group, l.c.Topic, l.c.Queue}]++
		}
		for q := range c.blocks {
			if _, busy := c.out[q]; !busy {
				k := offsetKey{group, c.sub.Topic, q}
				if q == retrySlot {
					k = offsetKey{group, RetryTopic(group, c.sub.Topic), 0}
				}
				out[k]++
			}
		}
		c.mu.Unlock()
	}
	return out
}

// ErrStaleReceipt is wrapped by the errors of settling a receipt that no
// longer names a lease out: already settled, expired and handed out again,
// or its consumer was reset.
var ErrStaleReceipt = errors.New("stale receipt")

// Settle settles one lease: the per-receipt settle (settleEach) of one
// receipt, its stale answer an error wrapping ErrStaleReceipt.
func (e *Engine) Settle(ctx context.Context, rcpt string, v Verdict) error {
	r, err := decodeReceipt(rcpt, e.b.receiptKey, e.b.nodeName())
	if err != nil || r.Kind == receiptDeferred {
		return errf(CodeInvalidReceipt, "receipt", "not a receipt this bus issued")
	}
	res, err := e.settleEach(ctx, r.Group, []string{rcpt}, v)
	if err != nil {
		return err
	}
	if res[0].Status == ReceiptStale {
		return staleErr("receipt")
	}
	return nil
}

// staleErr is the problem a stale receipt is answered with.
func staleErr(field string) error {
	return &Error{Code: CodeStaleReceipt, Field: field, Err: ErrStaleReceipt,
		Detail: "the receipt is stale: already acked or nacked, or its visibility ran out and the message was handed out again under a new receipt; nothing was changed"}
}

// nackReserve is how long a nack keeps the timer loop off its receipts'
// timers while it stores their replacements (a timer due later keeps its
// time); a nack that fails or is cut by a crash leaves its messages to come
// back after it. It was a minute, so a crash during a nack hid messages
// for a minute after a restart, however short their visibility (attack
// F5). A nack that outlasts it is safe: its swap finds the timer gone and
// drops the replacement, and says so at ERROR.
const nackReserve = 10 * time.Second

// settlePush settles a push lease.
func (e *Engine) settlePush(ctx context.Context, r receipt, v Verdict) error {
	moved, err := e.settlePushMoved(ctx, r, v)
	e.pushWritten(moved)
	return err
}

// settlePushMoved settles a push lease and reports whether it moved its
// group's offsets, for which the caller waits (pushWritten).
func (e *Engine) settlePushMoved(ctx context.Context, r receipt, v Verdict) (bool, error) {
	b := e.b
	e.mu.Lock()
	c := e.cons[[2]string{r.Group, r.Topic}]
	e.mu.Unlock()
	if c == nil {
		e.unfence(r)
		return false, staleErr("receipt")
	}
	c.mu.Lock()
	l := c.leases[uint64(r.Timer)]
	if l == nil || c.closed {
		c.mu.Unlock()
		e.unfence(r)
		return false, staleErr("receipt")
	}
	sub := c.sub
	switch v.kind {
	case verdictAck:
		delete(c.leases, l.id)
		e.finishPush(ctx, c, l)
		moved := !c.closed
		c.mu.Unlock()
		return moved, nil
	case verdictRelease:
		delete(c.leases, l.id)
		if l.ordered {
			// The queue's cursor is already past the message: it waits
			// as a block (in memory; the stored offset sits at it), so it
			// goes out again, the same attempt, before anything after it.
			// What followed it in its run goes out again after it, not
			// sent either.
			e.truncateRun(c, l, false)
			if !e.leaveRun(c, l) {
				delete(c.out, l.c.slot)
			}
			blk, ok := c.blocks[l.c.slot]
			if !ok || blk.QueueOffset != l.m.QueueOffset {
				blk = OrderedRetry{Subscription: c.sub.ID, Queue: l.c.slot, QueueOffset: l.m.QueueOffset, Attempt: l.attempt - 1}
			}
			blk.NextAt = b.now()
			c.blocks[l.c.slot] = blk
		} else {
			c.redo = append(c.redo, l)
		}
		c.mu.Unlock()
		return false, nil
	}
	if l.ordered && v.kind == verdictRetry {
		// The block is stored holding the lock, and only while the
		// consumer is live: a block written after a reset (or a change
		// that dropped the consumer) cleared the blocks would send the
		// new consumer back to the old position, and past the new one
		// once settled.
		defer c.mu.Unlock()
		blk := OrderedRetry{Subscription: sub.ID, Queue: l.c.slot, QueueOffset: l.m.QueueOffset, Attempt: l.attempt, NextAt: v.at}
		if err := b.meta.SetOrderedRetry(ctx, blk); err != nil {
			return false, err
		}
		delete(c.leases, l.id)
		// What followed it in its run goes out again after it; what
		// came before it and is still out keeps the queue busy.
		moved := e.truncateRun(c, l, true)
		if !e.leaveRun(c, l) {
			delete(c.out, l.c.slot)
		}
		c.blocks[l.c.slot] = blk
		return moved && !c.closed, nil
	}
	c.mu.Unlock()
	// Stored without the lock (an append); the lease stays out meanwhile,
	// so a failure leaves it to be settled again.
	var err error
	switch {
	case v.kind == verdictDead:
		if err = b.DeadLetter(ctx, sub.Group, l.m, l.attempt, v.reason); err == nil {
			b.LogAttempt(Attempt{MsgID: l.m.ID, Group: sub.Group, Subscription: sub.ID, Attempt: l.attempt, At: b.now(), Outcome: "dead", Error: v.reason})
		}
	default:
		err = b.storeSystem(ctx, l.m.retryCopy(sub.Group, l.attempt+1, v.at))
	}
	if err != nil {
		return false, err
	}
	c.mu.Lock()
	if c.closed {
		e.unfence(r) // dropped meanwhile: its retry or dead letter is stored
	}
	if c.leases[l.id] != l {
		c.mu.Unlock()
		return false, nil // expired meanwhile: its retry is stored, the expiry's too
	}
	if l.ordered {
		// Dead: what followed it in its run goes out again after it.
		e.truncateRun(c, l, true)
	}
	delete(c.leases, l.id)
	e.finishPush(ctx, c, l)
	moved := !c.closed
	c.mu.Unlock()
	return moved, nil
}

// pushWritten waits, after a push settle moved its group's offsets
// (moved), until the offset write that carries the move has committed.
// The push loop holds the delivery's slot until then, so what was
// delivered and is not yet written never exceeds max_in_flight, and a
// kill of the process repeats no more than that (issue 11, fault 16); it
// used to repeat also whatever settled while the writer was busy (an
// fsynced write of the attempt log or the timers ahead of it), 41 against
// max_in_flight 8 in TestSIGKILLDuringPushRepeatsLittle. The settle
// stands whatever happens here: a closing engine (Close writes the
// offsets) ends the wait, and so do two OffsetIntervals (the periodic
// write retries what the writer could not write), so that offset writes
// that fail (reported at ERROR) do not hold the push loops for ever.
func (e *Engine) pushWritten(moved bool) {
	if !moved || !e.started {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*e.b.cfg.OffsetInterval)
	defer cancel()
	_ = e.b.waitOffsetsWritten(ctx, e.b.offsetsRoundAfter(), e.stop)
}

// finishPush records that a push lease's message is done for the group.
// Called with c.mu held.
func (e *Engine) finishPush(ctx context.Context, c *consumer, l *memLease) {
	if l.ordered {
		if e.leaveRun(c, l) {
			// Others of its run are still out, or a later one of it
			// failed and blocks the queue: only this one is done.
			l.c.Finish(l.m.QueueOffset)
			l.c.Next = max(l.c.Next, l.m.QueueOffset+1)
			e.setOffset(c, l.c)
			return
		}
		e.clearBlock(ctx, c, l.c, l.m.QueueOffset+1)
		return
	}
	l.c.Finish(l.m.QueueOffset)
	e.setOffset(c, l.c)
}
