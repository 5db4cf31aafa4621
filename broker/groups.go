package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// QueueLag is a group's position on one queue.
type QueueLag struct {
	Topic     string
	Queue     int
	Offset    int64 // the next offset the group will consume
	MaxOffset int64
	// Lag counts what can still be delivered between Offset and
	// MaxOffset; Expired what retention removed there (never delivered,
	// not lag).
	Lag      int64
	Expired  int64
	InFlight int
}

// GroupInfo is a consumer group: its subscriptions and positions.
type GroupInfo struct {
	Name          string
	Subscriptions []Subscription
	Queues        []QueueLag
	Lag           int64
	DeadLetters   int64
	HeldPolls     int // long polls of the group waiting for messages now
	// OldestUnacked is how long ago the oldest message out to the group
	// and not acked was published (0: none): out on pull or push, or
	// waiting for a retry after a nack or a failed delivery.
	OldestUnacked time.Duration
}

// Groups lists the consumer groups: those with a subscription or offsets.
func (b *Broker) Groups(ctx context.Context) ([]GroupInfo, error) {
	subs, err := b.Subscriptions(ctx)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, s := range subs {
		names[s.Group] = true
	}
	b.offs.mu.Lock()
	for k := range b.offs.next {
		names[k.group] = true
	}
	b.offs.mu.Unlock()
	out := make([]GroupInfo, 0, len(names))
	for n := range names {
		g, err := b.groupInfo(n, subs)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Group returns one group with its per-queue positions.
func (b *Broker) Group(ctx context.Context, name string) (GroupInfo, error) {
	if err := ValidateGroupName(name); err != nil {
		return GroupInfo{}, err
	}
	subs, err := b.Subscriptions(ctx)
	if err != nil {
		return GroupInfo{}, err
	}
	g, err := b.groupInfo(name, subs)
	if err != nil {
		return GroupInfo{}, err
	}
	if len(g.Subscriptions) == 0 && len(g.Queues) == 0 {
		return GroupInfo{}, &Error{Code: CodeGroupNotFound, Field: "group", Detail: fmt.Sprintf("group %q has no subscriptions and no offsets", name)}
	}
	return g, nil
}

func (b *Broker) groupInfo(name string, subs []Subscription) (GroupInfo, error) {
	if err := b.waitDispatched(context.Background(), b.log.Committed()); err != nil {
		return GroupInfo{}, err
	}
	g := GroupInfo{Name: name}
	for _, s := range subs {
		if s.Group == name {
			g.Subscriptions = append(g.Subscriptions, s)
		}
	}
	dlq := DeadLetterTopic(name)
	inFlight := b.eng.inFlight(name)
	b.offs.mu.Lock()
	for k, next := range b.offs.next {
		if k.group != name || k.topic == dlq {
			continue
		}
		g.Queues = append(g.Queues, QueueLag{Topic: k.topic, Queue: k.queue, Offset: next, InFlight: inFlight[k]})
	}
	b.offs.mu.Unlock()
	// Every subscription's retry topic is listed, even before anything has
	// been read from it: it is where the messages out on pull wait.
	for _, s := range g.Subscriptions {
		rt := RetryTopic(name, s.Topic)
		if !slices.ContainsFunc(g.Queues, func(q QueueLag) bool { return q.Topic == rt }) {
			g.Queues = append(g.Queues, QueueLag{Topic: rt})
		}
	}
	for i := range g.Queues {
		q := &g.Queues[i]
		q.MaxOffset, q.Lag, q.Expired = b.queueLag(q.Topic, q.Queue, q.Offset)
		g.Lag += q.Lag
	}
	// A retry topic's in-flight count is its pending timers: messages out
	// on pull (their visibility copies) or waiting for a push retry.
	for i, q := range g.Queues {
		if strings.HasPrefix(q.Topic, "%RETRY%") {
			n, err := b.meta.PendingTimersOf(context.Background(), q.Topic)
			if err != nil {
				return GroupInfo{}, err
			}
			g.Queues[i].InFlight = int(n)
		}
	}
	sort.Slice(g.Queues, func(i, j int) bool {
		if g.Queues[i].Topic != g.Queues[j].Topic {
			return g.Queues[i].Topic < g.Queues[j].Topic
		}
		return g.Queues[i].Queue < g.Queues[j].Queue
	})
	n, err := b.countDeadLetters(name)
	if err != nil {
		return GroupInfo{}, err
	}
	g.DeadLetters = n
	g.HeldPolls, _ = b.polls.of(name)
	now := b.now()
	for _, s := range g.Subscriptions {
		at, ok, err := b.oldestUnacked(context.Background(), s)
		if err != nil {
			return GroupInfo{}, err
		}
		if ok {
			g.OldestUnacked = max(g.OldestUnacked, now.Sub(at))
		}
	}
	return g, nil
}

// oldestUnacked is when the oldest message out to group on topic and not
// acked was published, if there is one: the oldest visibility or retry
// copy waiting in the group's retry topic (copies keep their message's
// publish time), the push leases out and released, and the messages
// ordered queues have out or waiting.
func (b *Broker) oldestUnacked(ctx context.Context, s Subscription) (time.Time, bool, error) {
	group, topic := s.Group, s.Topic
	var oldest time.Time
	note := func(t time.Time) {
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	off, ok, err := b.meta.OldestPendingTimerOf(ctx, RetryTopic(group, topic))
	if err != nil {
		return time.Time{}, false, err
	}
	if ok {
		// A copy gone with retention or damaged is not counted: the
		// timer loop reports it when it comes due.
		if m, err := b.readMessage(off); err == nil {
			note(m.BornAt)
		}
	}
	type blocked struct {
		topic string
		queue int
		off   int64
	}
	var blocks []blocked
	b.eng.mu.Lock()
	c := b.eng.cons[[2]string{group, topic}]
	b.eng.mu.Unlock()
	if c != nil {
		c.mu.Lock()
		for _, l := range c.leases {
			note(l.m.BornAt)
		}
		for _, l := range c.redo {
			note(l.m.BornAt)
		}
		for slot, blk := range c.blocks {
			if cur := c.cursorAt(slot); cur != nil {
				blocks = append(blocks, blocked{cur.Topic, cur.Queue, blk.QueueOffset})
			}
		}
		c.mu.Unlock()
	} else {
		// No consumer since the start: the ordered queues' stored blocks.
		stored, err := b.meta.OrderedRetries(ctx, s.ID)
		if err != nil {
			return time.Time{}, false, err
		}
		for slot, blk := range stored {
			if slot == retrySlot {
				blocks = append(blocks, blocked{RetryTopic(group, topic), 0, blk.QueueOffset})
			} else {
				blocks = append(blocks, blocked{topic, slot, blk.QueueOffset})
			}
		}
	}
	for _, bl := range blocks {
		if m, err := b.ReadMessageAt(bl.topic, bl.queue, bl.off); err == nil {
			note(m.BornAt)
		}
	}
	return oldest, !oldest.IsZero(), nil
}

// ResetOffsets moves a group's offsets on a topic (and forgets its pending
// retries of it) to earliest, latest or the first message at or after a
// time: RocketMQ's backtracking, for replay.
func (b *Broker) ResetOffsets(ctx context.Context, group, topic, to string) error {
	if err := ValidateGroupName(group); err != nil {
		return err
	}
	ts, err := b.topicState(topic)
	if err != nil {
		return err
	}
	var at time.Time
	if to != "earliest" && to != "latest" {
		if at, err = time.Parse(time.RFC3339Nano, to); err != nil {
			return errf(CodeInvalidReset, "to", "to %q must be earliest, latest or an RFC 3339 time", to)
		}
	}
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return err
	}
	// The engine owns the group's position: the reset is one step of it,
	// so nothing the old consumer has out, and no consumer built
	// meanwhile, writes the old offsets back over the new ones.
	return b.eng.reposition(group, topic, func() error { return b.resetOffsets(ctx, group, topic, to, ts, at) })
}

// resetOffsets writes a reset's new position; see ResetOffsets.
func (b *Broker) resetOffsets(ctx context.Context, group, topic, to string, ts *topicState, at time.Time) error {
	// An ordered queue's block belongs to the old position: a reset
	// replays from the new one, the blocked message in its turn.
	subs, err := b.Subscriptions(ctx)
	if err != nil {
		return err
	}
	for _, s := range subs {
		if s.Group == group && s.Topic == topic && s.Ordered {
			if err := b.meta.ClearOrderedRetries(ctx, s.ID); err != nil {
				return err
			}
		}
	}
	t := ts.info.Load()
	r := b.retentionOf(t, b.now())
	for q := 0; q < t.Queues; q++ {
		lo, hi, err := b.retainedBounds(t, q, r)
		if err != nil {
			return err
		}
		next := hi
		switch {
		case to == "earliest":
			next = lo
		case !at.IsZero():
			if next, err = b.offsetAt(topic, q, at); err != nil {
				return err
			}
		}
		b.setOffset(group, topic, q, next)
	}
	// Retries queued before the reset belong to the old position, and so
	// do those still waiting for their time: the retry copies of nacks and
	// push failures, and the visibility copies of pulled messages, which
	// would otherwise bring a message out at the reset back beside its
	// replay. Dropped while the delay timer is held, so that none of them
	// is being put back on the retry queue meanwhile, past the offset set
	// here.
	retry := RetryTopic(group, topic)
	drop := func() error {
		if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
			return err
		}
		n, err := b.meta.DropTimersOf(ctx, retry)
		if err != nil {
			return err
		}
		if n > 0 {
			b.logger.Info("offset reset dropped the group's waiting retries", slog.String("group", group),
				slog.String("topic", topic), slog.Int64("retries", n))
		}
		if _, hi := b.cq.Bounds(retry, 0); hi > 0 {
			b.setOffset(group, retry, 0, hi)
		}
		return nil
	}
	hold := drop
	if b.timer != nil {
		hold = func() error { return b.timer.Hold(ctx, drop) }
	}
	if err := hold(); err != nil {
		return fmt.Errorf("reset %s on %s: drop its retries: %w", group, topic, err)
	}
	if err := b.flushOffsets(ctx); err != nil {
		return err
	}
	b.subsSig.fire()
	return nil
}

// DeadLetter is a message in a group's dead-letter queue.
type DeadLetter struct {
	*Message
	DLQOffset int64 // its offset in the dead-letter queue, the cursor
}

// deadLetterFloor is the DLQ offset below which everything was purged.
func (b *Broker) deadLetterFloor(group string) int64 {
	n, _ := b.Offset(group, DeadLetterTopic(group), 0)
	return n
}

func (b *Broker) countDeadLetters(group string) (int64, error) {
	dlq := DeadLetterTopic(group)
	lo, hi := b.cq.Bounds(dlq, 0)
	lo = max(lo, b.deadLetterFloor(group))
	if hi <= lo {
		return 0, nil
	}
	removed, err := b.meta.RemovedDeadLetters(context.Background(), group, lo, hi)
	if err != nil {
		return 0, err
	}
	return hi - lo - int64(len(removed)), nil
}

// DeadLetters lists a group's dead letters, oldest first, from DLQ offset
// after (exclusive; -1 from the start), at most limit.
func (b *Broker) DeadLetters(ctx context.Context, group string, after int64, limit int) ([]DeadLetter, error) {
	if err := ValidateGroupName(group); err != nil {
		return nil, err
	}
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return nil, err
	}
	dlq := DeadLetterTopic(group)
	lo, hi := b.cq.Bounds(dlq, 0)
	from := max(lo, b.deadLetterFloor(group), after+1)
	removed, err := b.meta.RemovedDeadLetters(ctx, group, from, hi)
	if err != nil {
		return nil, err
	}
	var out []DeadLetter
	for from < hi && len(out) < limit {
		msgs, next, err := b.ReadQueue(dlq, 0, from, limit-len(out), Filter{all: true})
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if !removed[m.QueueOffset] {
				out = append(out, DeadLetter{Message: m, DLQOffset: m.QueueOffset})
			}
		}
		if next <= from {
			break
		}
		from = next
	}
	return out, nil
}

// ErrRedriveRate is a redrive rate whose schedule does not fit: not a
// positive number, or so slow that the last redriven message would be due
// further away than the longest delay the broker allows (Config.MaxDelay).
var ErrRedriveRate = errors.New("redrive rate does not fit")

// RedriveOffset is when the i-th (from 0) of a redrive's messages is due at
// rate a second, after the first, and whether that is at most max away. It
// compares in floating point before converting, so a rate like 1e-300
// cannot overflow time.Duration (which used to make every message due at
// once, at a time in the year 1734).
func RedriveOffset(i int, rate float64, max time.Duration) (time.Duration, bool) {
	if !(rate > 0) || math.IsInf(rate, 0) || i < 0 {
		return 0, false
	}
	ns := float64(i) / rate * float64(time.Second)
	if !(ns <= float64(max)) { // also false for NaN and +Inf
		return 0, false
	}
	return time.Duration(ns), true
}

// checkRedriveRate refuses a rate whose schedule for n messages does not
// fit: the gap between two of them, and the time until the last, must each
// be within the longest delay.
func (b *Broker) checkRedriveRate(n int, rate float64) error {
	if _, ok := RedriveOffset(1, rate, b.cfg.MaxDelay); !ok {
		return fmt.Errorf("%w: at %g a second the gap between two redriven messages is over the longest delay, %s", ErrRedriveRate, rate, b.cfg.MaxDelay)
	}
	if _, ok := RedriveOffset(n-1, rate, b.cfg.MaxDelay); n > 0 && !ok {
		return fmt.Errorf("%w: at %g a second the last of %d redriven messages would be due more than the longest delay, %s, away; raise the rate to at least %.6g",
			ErrRedriveRate, rate, n, b.cfg.MaxDelay, float64(n-1)/b.cfg.MaxDelay.Seconds())
	}
	return nil
}

// Redrive puts dead letters (all, or those with the given ids) back to the
// group, through its retry topics, attempt 1 again. They are spread over
// time at rate a second, so a redrive of many cannot flood the endpoint;
// the spreading is durable (each is a delayed message). It returns how
// many were redriven. A rate whose schedule does not fit is ErrRedriveRate,
// before anything is redriven: the dead letters are counted first, and
// only those counted are redriven (one that arrives meanwhile waits for the
// next redrive).
func (b *Broker) Redrive(ctx context.Context, group string, ids []string, all bool, rate float64) (int, error) {
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	// The first pass counts what to redrive and where it ends.
	count, last := 0, int64(-1)
	for after := int64(-1); ; {
		page, err := b.DeadLetters(ctx, group, after, 256)
		if err != nil {
			return 0, err
		}
		if len(page) == 0 {
			break
		}
		for _, d := range page {
			after = d.DLQOffset
			if all || want[d.ID] {
				count++
				last = d.DLQOffset
			}
		}
	}
	if err := b.checkRedriveRate(count, rate); err != nil {
		return 0, err
	}
	start := b.now()
	n := 0
	var done []int64
	for after := int64(-1); after < last && n < count; {
		page, err := b.DeadLetters(ctx, group, after, 256)
		if err != nil {
			return n, err
		}
		if len(page) == 0 {
			break
		}
		for _, d := range page {
			after = d.DLQOffset
			if d.DLQOffset > last || n == count {
				break
			}
			if !all && !want[d.ID] {
				continue
			}
			off, _ := RedriveOffset(n, rate, b.cfg.MaxDelay) // fits: checked above for count
			if err := b.storeSystem(ctx, d.Message.retryCopy(group, 1, start.Add(off))); err != nil {
				return n, err
			}
			done = append(done, d.DLQOffset)
			n++
		}
	}
	if err := b.meta.RemoveDeadLetters(ctx, group, done); err != nil {
		return n, err
	}
	return n, nil
}

// PurgeDeadLetters empties a group's dead-letter queue.
func (b *Broker) PurgeDeadLetters(ctx context.Context, group string) (int64, error) {
	if err := ValidateGroupName(group); err != nil {
		return 0, err
	}
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return 0, err
	}
	n, err := b.countDeadLetters(group)
	if err != nil {
		return 0, err
	}
	_, hi := b.cq.Bounds(DeadLetterTopic(group), 0)
	b.setOffset(group, DeadLetterTopic(group), 0, hi)
	return n, b.flushOffsets(ctx)
}

// Trace is a message's life: where it is stored and each delivery attempt.
type Trace struct {
	Message  *Message
	Attempts []meta.Attempt
	// Transaction is the message's transaction (prepare, each check and
	// the decision with its reason), nil for a message published plainly.
	Transaction *TxnTrace
}

// MessageTrace returns a message and its delivery attempts.
func (b *Broker) MessageTrace(ctx context.Context, id string) (Trace, error) {
	m, err := b.Message(ctx, id)
	if err != nil {
		return Trace{}, err
	}
	if err := b.flushAttempts(ctx); err != nil {
		return Trace{}, err
	}
	as, err := b.meta.Attempts(ctx, id)
	if err != nil {
		return Trace{}, err
	}
	tt, err := b.txnTrace(ctx, m)
	if err != nil {
		return Trace{}, err
	}
	return Trace{Message: m, Attempts: as, Transaction: tt}, nil
}

// lagScanLimit bounds how many entries of a retry queue queueLag reads to
// tell what is still deliverable; past it the rest counts as lag.
const lagScanLimit = 1024

// queueLag is a group's lag on one queue from offset next: what can still
// be delivered up to the queue's end, and what retention removed (the
// group's offset below the queue's retained start, or a retry queue's
// copies of messages past their retention, which a read skips). Neither a
// read nor a lag counts those: an operator alerting on lag must not see
// messages that can never come.
func (b *Broker) queueLag(topic string, queue int, next int64) (hi, lag, expired int64) {
	lo, hi := b.cq.Bounds(topic, queue)
	b.topicsMu.RLock()
	ts := b.topics[topic]
	b.topicsMu.RUnlock()
	if ts != nil {
		t, now := ts.info.Load(), b.now()
		if rlo, _, err := b.retainedBounds(t, queue, b.retentionOf(t, now)); err == nil {
			lo = max(lo, rlo)
		}
	}
	from := min(max(next, lo), hi)
	expired = max(from-next, 0)
	lag = hi - from
	if ts == nil || !strings.HasPrefix(topic, "%RETRY%") || lag == 0 {
		return hi, lag, expired
	}
	// A retry queue holds copies that keep their message's store time:
	// past retention they are skipped by every read though their entries
	// stay. Read what lies ahead (a retry queue is short) to tell.
	t, now := ts.info.Load(), b.now()
	end := min(hi, from+lagScanLimit)
	entries, err := b.cq.Read(topic, queue, from, int(end-from), nil)
	if err != nil {
		return hi, lag, expired
	}
	for _, e := range entries {
		if e.Size == holeSize {
			lag-- // lost in a damaged span (reported where it was found): nothing to deliver
			continue
		}
		m, err := b.readMessage(e.Offset)
		if err == nil && !b.retained(t, m.StoredAt, now) {
			lag--
			expired++
		}
	}
	return hi, lag, expired
}
