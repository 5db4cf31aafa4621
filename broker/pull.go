package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/postbus/postbus/broker/commitlog"
)

// Pull (DESIGN §4): consumers that cannot take a webhook ask for messages
// and ack them, SQS-style, with RocketMQ's consumer-group semantics.
//
// Handing out a message stores, in the same append, a delayed copy of it
// in the group's retry topic, due when its visibility runs out, with the
// next attempt number: the same timer store as push retries. The receipt
// names that copy. Ack cancels its timer, so the message never comes back;
// nack moves it to the nack's delay; if neither comes, the timer fires and
// the copy is handed out again as the next attempt, under a new receipt.
// An attempt past max_retries goes to the group's dead-letter queue rather
// than out. The group's offset on the queue moves on as soon as the copy is
// durable, so a restart (even SIGKILL) loses no unacked message and brings
// back no acked one.

// Pull limits.
const (
	MaxPullMessages = 256
	MaxPullWait     = 30 * time.Second
)

// Pulled is one message handed to a puller.
type Pulled struct {
	*Message
	Receipt string
	Attempt int
}

// pullGroup is a group's shared position on a topic: its pullers take
// messages from it in turn, each message to one of them.
type pullGroup struct {
	mu      sync.Mutex
	sub     Subscription
	filter  Filter
	cursors []*Cursor // the topic's queues, then the retry queue; guarded by mu
	rr      int       // where the next pull starts, for fairness across queues; guarded by mu
	// blocks are an ordered group's queues with a message out, by queue:
	// the message's offset, attempt and visibility deadline. Stored in
	// SQLite too, so a restart keeps the order. Guarded by mu.
	blocks map[int]OrderedRetry
}

// pullGroupFor returns the group's pull state on a topic, creating the
// pull subscription on a first pull where groups auto-create (from the
// earliest retained message, so publish-then-pull just works).
func (b *Broker) pullGroupFor(ctx context.Context, group, topic string) (*pullGroup, error) {
	key := [2]string{group, topic}
	b.pullsMu.Lock()
	pg := b.pulls[key]
	b.pullsMu.Unlock()
	if pg != nil {
		return pg, nil
	}
	subs, err := b.Subscriptions(ctx)
	if err != nil {
		return nil, err
	}
	var sub *Subscription
	for i := range subs {
		if subs[i].Group == group && subs[i].Topic == topic {
			sub = &subs[i]
		}
	}
	switch {
	case sub != nil && sub.URL != "":
		return nil, errf(CodeInvalidSubscription, "group", "group %q receives topic %q by push (subscription %s); pull with another group", group, topic, sub.ID)
	case sub != nil && sub.State != StateActive:
		return nil, errf(CodeInvalidSubscription, "group", "the pull subscription of group %q on %q is %s; resume it first", group, topic, sub.State)
	case sub == nil:
		if !b.cfg.AutoCreateGroups {
			return nil, &Error{Code: CodeSubscriptionNotFound, Field: "group",
				Detail: fmt.Sprintf("group %q has no subscription on topic %q and groups are not created on first use here (--auto-create-groups); create one with POST /v1/subscriptions (without a url)", group, topic)}
		}
		// The id is made from group and topic, so that the brokers of a
		// cluster, each creating its own on a first pull, agree on it.
		created, err := b.CreateSubscription(ctx, Subscription{ID: autoPullID(group, topic), Group: group, Topic: topic, StartFrom: "earliest", MaxRetries: -1})
		if err != nil && CodeOf(err) != CodeSubscriptionExists {
			return nil, err
		}
		if err != nil {
			// A concurrent first pull made it, or the id is another
			// group's or topic's: only the first is worth looking again
			// (the second looked again for ever, overflowing the stack).
			if other, oerr := b.Subscription(ctx, autoPullID(group, topic)); oerr != nil || other.Group != group || other.Topic != topic {
				return nil, errf(CodeSubscriptionExists, "group", "group %q cannot be subscribed to topic %q on its first pull: the subscription id %s is taken; create its subscription with POST /v1/subscriptions",
					group, topic, autoPullID(group, topic))
			}
			return b.pullGroupFor(ctx, group, topic)
		}
		sub = &created
	}
	f, err := ParseFilter(sub.Filter)
	if err != nil {
		return nil, err
	}
	n, err := b.Queues(topic)
	if err != nil {
		return nil, err
	}
	pg = &pullGroup{sub: *sub, filter: f, blocks: map[int]OrderedRetry{}}
	if sub.Ordered {
		if pg.blocks, err = b.meta.OrderedRetries(ctx, sub.ID); err != nil {
			return nil, err
		}
	}
	// The topic's queues, then the retry queue; where the group has no
	// offset (the retry queue, at first) all of it is the group's.
	cursor := func(t string, q int) *Cursor {
		off, _ := b.Offset(group, t, q)
		return &Cursor{Topic: t, Queue: q, Next: off}
	}
	for q := 0; q < n; q++ {
		pg.cursors = append(pg.cursors, cursor(topic, q))
	}
	pg.cursors = append(pg.cursors, cursor(RetryTopic(group, topic), 0))
	b.pullsMu.Lock()
	defer b.pullsMu.Unlock()
	if other := b.pulls[key]; other != nil {
		return other, nil
	}
	b.pulls[key] = pg
	return pg, nil
}

// forgetPulls drops the cached pull state, so it is rebuilt from the
// subscriptions and offsets (after a change to either).
func (b *Broker) forgetPulls() {
	b.pullsMu.Lock()
	clear(b.pulls)
	b.pullsMu.Unlock()
}

// Pull hands out up to max messages of topic to group, waiting up to wait
// for the first to arrive. Each stays invisible to the group for
// visibility (0: the subscription's) unless acked.
func (b *Broker) Pull(ctx context.Context, group, topic string, limit int, wait, visibility time.Duration) ([]Pulled, error) {
	if err := ValidateGroupName(group); err != nil {
		return nil, err
	}
	if err := ValidateTopicName(topic); err != nil {
		return nil, err
	}
	switch {
	case limit < 1 || limit > MaxPullMessages:
		return nil, errf(CodeInvalidPull, "max", "max %d must be 1-%d", limit, MaxPullMessages)
	case wait < 0 || wait > MaxPullWait:
		return nil, errf(CodeInvalidPull, "wait", "wait %s must be 0-%s", wait, MaxPullWait)
	case visibility != 0 && (visibility < time.Second || visibility > MaxVisibility):
		return nil, errf(CodeInvalidPull, "visibility", "visibility %s must be between 1s and %s", visibility, MaxVisibility)
	}
	if _, err := b.topicState(topic); err != nil {
		if !b.cfg.AutoCreateTopics {
			return nil, err
		}
	}
	pg, err := b.pullGroupFor(ctx, group, topic)
	if err != nil {
		return nil, err
	}
	if visibility == 0 {
		visibility = pg.sub.Visibility
	}
	// What was acknowledged before this pull is pullable by it.
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return nil, err
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		arrived := b.Dispatched()
		take := b.take
		var expiry <-chan time.Time
		if pg.sub.Ordered {
			// A block's visibility runs out without a dispatch to wake on.
			take = b.takeOrdered
			expiry = time.After(250 * time.Millisecond)
		}
		got, err := take(ctx, pg, limit, visibility)
		if len(got) > 0 || err != nil || wait == 0 {
			return got, err
		}
		select {
		case <-arrived:
		case <-expiry:
		case <-deadline.C:
			return got, nil
		case <-ctx.Done():
			return nil, nil
		}
	}
}

// takeOrdered hands out, from each queue with no message out, its next
// message, and from each queue whose message's visibility ran out, that
// message again: a queue's messages go out one at a time, in order.
func (b *Broker) takeOrdered(ctx context.Context, pg *pullGroup, limit int, visibility time.Duration) ([]Pulled, error) {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	group, sub := pg.sub.Group, pg.sub
	now := b.now()
	queues := pg.cursors[:len(pg.cursors)-1] // no retry queue: ordered retries stay in place
	start := pg.rr
	pg.rr++
	var out []Pulled
	for i := 0; i < len(queues) && len(out) < limit; i++ {
		c := queues[(start+i)%len(queues)]
		var m *Message
		attempt := 1
		if blk, ok := pg.blocks[c.Queue]; ok {
			if now.Before(blk.NextAt) {
				continue // its message is out
			}
			var err error
			if m, err = b.ReadMessageAt(c.Topic, c.Queue, blk.QueueOffset); err != nil {
				b.clearBlock(ctx, pg, c, blk.QueueOffset+1) // gone with retention
				continue
			}
			attempt = blk.Attempt + 1
			if attempt > sub.MaxRetries+1 {
				reason := fmt.Sprintf("not acked within its visibility on any of %d attempts", attempt-1)
				if err := b.DeadLetter(ctx, group, m, attempt-1, reason); err != nil {
					return out, err
				}
				b.LogAttempt(Attempt{MsgID: m.ID, Group: group, Subscription: sub.ID, Attempt: attempt - 1, At: now, Outcome: "dead", Error: reason})
				b.clearBlock(ctx, pg, c, blk.QueueOffset+1)
				continue
			}
		} else {
			msgs, next, err := b.ReadQueue(c.Topic, c.Queue, c.Next, 1, pg.filter)
			if err != nil {
				return out, err
			}
			c.Next = next
			if len(msgs) == 0 {
				b.SetOffset(group, c.Topic, c.Queue, c.Next)
				continue
			}
			m = msgs[0]
		}
		blk := OrderedRetry{Subscription: sub.ID, Queue: c.Queue, QueueOffset: m.QueueOffset, Attempt: attempt, NextAt: now.Add(visibility)}
		if err := b.meta.SetOrderedRetry(ctx, blk); err != nil {
			return out, err
		}
		pg.blocks[c.Queue] = blk
		b.SetOffset(group, c.Topic, c.Queue, m.QueueOffset) // not past it until it is acked
		b.SetInFlight(group, c.Topic, c.Queue, 1)
		out = append(out, Pulled{Message: m, Attempt: attempt, Receipt: receipt{Ordered: true, Attempt: attempt,
			Timer: m.QueueOffset, Queue: c.Queue, Group: group, Topic: sub.Topic, MsgID: m.ID}.encode(b.receiptKey)})
	}
	return out, nil
}

// clearBlock frees an ordered queue and moves the group past its message.
// Called with pg.mu held.
func (b *Broker) clearBlock(ctx context.Context, pg *pullGroup, c *Cursor, next int64) {
	delete(pg.blocks, c.Queue)
	if err := b.meta.ClearOrderedRetry(ctx, pg.sub.ID, c.Queue); err != nil {
		b.logger.Error("clearing an ordered queue's block failed", "err", err)
	}
	c.Next = max(c.Next, next)
	b.SetOffset(pg.sub.Group, c.Topic, c.Queue, c.Next)
	b.SetInFlight(pg.sub.Group, c.Topic, c.Queue, 0)
}

// take hands out what is ready now.
func (b *Broker) take(ctx context.Context, pg *pullGroup, limit int, visibility time.Duration) ([]Pulled, error) {
	type taken struct {
		m *Message
		c *Cursor
	}
	var got []taken
	// The retry copies of what is handed out go to the log in one append,
	// which holds at most MaxBatchMessages records and MaxBatchStoredBytes
	// as stored: a pull hands out fewer messages than asked rather than
	// more than that append takes (large messages), and always at least
	// one, whose copy alone always fits.
	var stored int64
	nCopies, full := 0, false
	pg.mu.Lock()
	n := len(pg.cursors)
	start := pg.rr
	pg.rr++
	for round := 0; len(got) < limit && round < 2 && !full; round++ {
		for i := 0; i < n && len(got) < limit && !full; i++ {
			c := pg.cursors[(start+i)%n]
			share := limit - len(got)
			if round == 0 {
				share = (share + n - i - 1) / (n - i) // spread across queues first
			}
			msgs, next, err := b.ReadQueue(c.Topic, c.Queue, c.Next, share, pg.filter)
			if err != nil {
				pg.mu.Unlock()
				return nil, err
			}
			c.Next = next
			for _, m := range msgs {
				if max(m.Attempt, 1) <= pg.sub.MaxRetries+1 { // not dead-lettered: gets a copy
					size := commitlog.MinSegmentSize(int64(recordLen(m.retryCopy(pg.sub.Group, 0, time.Time{}))), 1)
					if nCopies > 0 && (nCopies == MaxBatchMessages || stored+size > MaxBatchStoredBytes) {
						c.Next, full = m.QueueOffset, true // read again by the next pull
						break
					}
					stored += size
					nCopies++
				}
				c.Start(m.QueueOffset)
				got = append(got, taken{m, c})
			}
		}
	}
	pg.mu.Unlock()
	if len(got) == 0 {
		return nil, nil
	}
	// The visibility copies (and dead letters) are stored before the
	// offsets move past the originals: nothing handed out can be lost.
	group, topic := pg.sub.Group, pg.sub.Topic
	now := b.now()
	var copies []*Message
	var out []Pulled
	for _, t := range got {
		attempt := max(t.m.Attempt, 1)
		if attempt > pg.sub.MaxRetries+1 {
			reason := fmt.Sprintf("not acked within its visibility on any of %d attempts", attempt-1)
			if err := b.DeadLetter(ctx, group, t.m, attempt-1, reason); err != nil {
				return nil, b.unsettle(pg, err)
			}
			b.LogAttempt(Attempt{MsgID: t.m.ID, Group: group, Subscription: pg.sub.ID, Attempt: attempt - 1, At: now, Outcome: "dead", Error: reason})
			continue
		}
		copies = append(copies, t.m.retryCopy(group, attempt+1, now.Add(visibility)))
		out = append(out, Pulled{Message: t.m, Attempt: attempt})
	}
	if len(copies) > 0 {
		ts, err := b.topicOrSystem(ctx, RetryTopic(group, topic))
		if err != nil {
			return nil, b.unsettle(pg, err)
		}
		res, err := b.store(ctx, ts, copies, false)
		if err != nil {
			return nil, b.unsettle(pg, err)
		}
		for i := range out {
			out[i].Receipt = receipt{Attempt: out[i].Attempt, Timer: res[i].logOffset, Group: group, Topic: topic, MsgID: out[i].ID}.encode(b.receiptKey)
		}
	}
	pg.mu.Lock()
	for _, t := range got {
		t.c.Finish(t.m.QueueOffset)
		b.SetOffset(group, t.c.Topic, t.c.Queue, t.c.Committed())
	}
	pg.mu.Unlock()
	return out, nil
}

// unsettle undoes a take that could not store its copies: the cached
// cursors are dropped, so the next pull starts again from the offsets,
// which never moved past the messages.
func (b *Broker) unsettle(pg *pullGroup, err error) error {
	b.pullsMu.Lock()
	for k, v := range b.pulls {
		if v == pg {
			delete(b.pulls, k)
		}
	}
	b.pullsMu.Unlock()
	return err
}

// AckResult is why a receipt in an ack or nack was refused.
type AckResult struct {
	Index  int
	Code   Code
	Detail string
}

// settleReceipts checks every receipt and takes its message out of
// flight, all or none: a request with any bad or stale receipt changes
// nothing. Timer receipts cancel their visibility timer; an ordered
// group's receipts are checked against its queues' blocks, which the
// caller (ack or nack) then settles.
func (b *Broker) settleReceipts(ctx context.Context, group string, receipts []string) (timers, ordered []receipt, err error) {
	if err := ValidateGroupName(group); err != nil {
		return nil, nil, err
	}
	if len(receipts) == 0 || len(receipts) > MaxPullMessages*4 {
		return nil, nil, errf(CodeInvalidReceipt, "receipts", "give 1-%d receipts", MaxPullMessages*4)
	}
	var offs []int64
	var last int64
	for i, s := range receipts {
		r, err := decodeReceipt(s, b.receiptKey)
		if err != nil {
			return nil, nil, errf(CodeInvalidReceipt, fmt.Sprintf("receipts[%d]", i), "not a receipt this bus issued")
		}
		if r.Group != group {
			return nil, nil, errf(CodeInvalidReceipt, fmt.Sprintf("receipts[%d]", i), "the receipt was issued to another group")
		}
		if r.Ordered {
			pg, err := b.pullGroupFor(ctx, group, r.Topic)
			if err != nil {
				return nil, nil, err
			}
			pg.mu.Lock()
			blk, ok := pg.blocks[r.Queue]
			pg.mu.Unlock()
			if !ok || blk.QueueOffset != r.Timer || blk.Attempt != r.Attempt {
				return nil, nil, errf(CodeStaleReceipt, fmt.Sprintf("receipts[%d]", i),
					"the receipt is stale: already acked or nacked, or its visibility ran out and the message was handed out again under a new receipt; nothing was changed")
			}
			ordered = append(ordered, r)
			continue
		}
		timers = append(timers, r)
		offs = append(offs, r.Timer)
		last = max(last, r.Timer)
	}
	if len(offs) > 0 {
		// A receipt's timer is stored when dispatch reaches its copy.
		if err := b.waitDispatched(ctx, last+1); err != nil {
			return nil, nil, err
		}
		// The group's offsets moved past these messages when they were
		// handed out, in memory: they are made durable before the acks, or
		// a crash would hand acked messages out again from the old offset.
		if err := b.flushOffsets(ctx); err != nil {
			return nil, nil, err
		}
		stale, err := b.meta.CancelTimers(ctx, offs, b.now())
		if err != nil {
			return nil, nil, err
		}
		if len(stale) > 0 {
			return nil, nil, errf(CodeStaleReceipt, "receipts",
				"%d of the receipts are stale: already acked or nacked, or their visibility ran out and the message was handed out again under a new receipt; nothing was changed", len(stale))
		}
	}
	return timers, ordered, nil
}

// settleOrdered acks (next > 0: the queue moves on) or nacks (the message
// comes back after delay) an ordered group's receipts.
func (b *Broker) settleOrdered(ctx context.Context, group string, rs []receipt, ack bool, delay time.Duration) error {
	for _, r := range rs {
		pg, err := b.pullGroupFor(ctx, group, r.Topic)
		if err != nil {
			return err
		}
		pg.mu.Lock()
		blk, ok := pg.blocks[r.Queue]
		if ok && blk.QueueOffset == r.Timer && blk.Attempt == r.Attempt {
			c := pg.cursors[r.Queue]
			if ack {
				b.clearBlock(ctx, pg, c, r.Timer+1)
			} else {
				blk.NextAt = b.now().Add(delay)
				pg.blocks[r.Queue] = blk
				err = b.meta.SetOrderedRetry(ctx, blk)
			}
		}
		pg.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// Ack marks pulled messages done for the group, for good.
func (b *Broker) Ack(ctx context.Context, group string, receipts []string) error {
	rs, ordered, err := b.settleReceipts(ctx, group, receipts)
	if err != nil {
		return err
	}
	if err := b.settleOrdered(ctx, group, ordered, true, 0); err != nil {
		return err
	}
	if len(ordered) > 0 {
		// An ordered queue's offset moves past an acked message only now.
		if err := b.flushOffsets(ctx); err != nil {
			return err
		}
	}
	now := b.now()
	for _, r := range append(rs, ordered...) {
		b.LogAttempt(Attempt{MsgID: r.MsgID, Group: group, Subscription: b.pullSubscriptionID(group, r.Topic), Attempt: r.Attempt, At: now, Outcome: "acked"})
	}
	return nil
}

// pullSubscriptionID names the pull subscription a receipt came from, for
// the attempt log.
// autoPullID is the id of the pull subscription a first pull creates: 24
// hex digits of a SHA-256 of group and topic.
func autoPullID(group, topic string) string {
	sum := sha256.Sum256([]byte(group + "\x00" + topic))
	return hex.EncodeToString(sum[:12])
}

func (b *Broker) pullSubscriptionID(group, topic string) string {
	b.pullsMu.Lock()
	defer b.pullsMu.Unlock()
	if pg := b.pulls[[2]string{group, topic}]; pg != nil {
		return pg.sub.ID
	}
	return "pull:" + topic
}

// Nack gives pulled messages back to the group, to be handed out again
// (as the next attempt) after delay; past max_retries, to the dead-letter
// queue.
func (b *Broker) Nack(ctx context.Context, group string, receipts []string, delay time.Duration) error {
	if delay < 0 || delay > MaxRetryDelay {
		return errf(CodeInvalidPull, "delay", "delay %s must be 0-%s", delay, MaxRetryDelay)
	}
	rs, ordered, err := b.settleReceipts(ctx, group, receipts)
	if err != nil {
		return err
	}
	if err := b.settleOrdered(ctx, group, ordered, false, delay); err != nil {
		return err
	}
	now := b.now()
	var errs []error
	for _, r := range rs {
		m, err := b.readMessage(r.Timer)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		b.LogAttempt(Attempt{MsgID: r.MsgID, Group: group, Subscription: b.pullSubscriptionID(group, r.Topic), Attempt: r.Attempt, At: now, Outcome: "nacked"})
		// m is the visibility copy: it already carries the next attempt.
		errs = append(errs, b.storeSystem(ctx, m.retryCopy(group, m.Attempt, now.Add(delay))))
	}
	return errors.Join(errs...)
}

// ReadQueueWait is ReadQueue that waits up to wait for a message to
// arrive, for consumers that keep their own position.
func (b *Broker) ReadQueueWait(ctx context.Context, topic string, queue int, from int64, limit int, wait time.Duration) ([]*Message, int64, error) {
	n, err := b.Queues(topic)
	if err != nil {
		return nil, 0, err
	}
	if queue < 0 || queue >= n {
		return nil, 0, errf(CodeInvalidPull, "queue", "topic %q has queues 0-%d", topic, n-1)
	}
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return nil, 0, err
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		arrived := b.Dispatched()
		msgs, next, err := b.ReadQueue(topic, queue, from, limit, Filter{all: true})
		if len(msgs) > 0 || err != nil || wait == 0 {
			return msgs, next, err
		}
		select {
		case <-arrived:
		case <-deadline.C:
			return msgs, next, nil
		case <-ctx.Done():
			return nil, from, nil
		}
	}
}
