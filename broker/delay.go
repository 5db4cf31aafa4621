package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/postbus/postbus/broker/delaytimer"
	"github.com/postbus/postbus/broker/meta"
)

// Delayed messages (DESIGN §2). A message with a deliver-at time is stored
// in the log like any other but takes no queue offset; dispatch records it
// in the timer store (SQLite: log offset, due time). The delay timer
// (package delaytimer) has each due message put on its queue as a new record with the same id, flagged
// so it is never delayed again. Retries of deliveries are delayed messages
// for a group's retry topic, so they ride the same mechanism.
//
// One timer store serves delay levels, arbitrary times and retries: the
// per-level FIFO queues of RocketMQ (and DESIGN) exist to avoid sorting by
// due time, which an index on the timer table already does, with no limit
// on the kinds of delay. Firing is at-least-once: a crash between putting a
// message on its queue and marking its timer fired puts it there again.

// claimingStore is the timer store as the delay timer sees it: the due
// timers it fires are claimed (meta.Store.ClaimDueTimers), in a write under
// the metadata's one writer with its clock read there, so a pull's ack or
// nack racing its visibility deadline either cancels the timer before the
// claim or finds it claimed and is answered stale: never both. The loop's
// now is not used: read before waiting for the writer, it could be older
// than an ack's.
type claimingStore struct{ *meta.Store }

func (s claimingStore) DueTimers(ctx context.Context, _ time.Time, limit int) ([]meta.Timer, error) {
	return s.ClaimDueTimers(ctx, limit)
}

// timerHost is the broker as the delay timer sees it (delaytimer.Host):
// it puts due messages back and copies waiting ones ahead of retention.
type timerHost Broker

var _ delaytimer.Host = (*timerHost)(nil)

func (h *timerHost) PutBack(ctx context.Context, due []meta.Timer) error {
	return (*Broker)(h).putBack(ctx, due)
}

func (h *timerHost) Move(ctx context.Context, pending []meta.Timer) (int, error) {
	return (*Broker)(h).moveAhead(ctx, pending)
}

// putBack puts the messages of due timers on their queues; the delay timer
// then marks every one of the timers fired, those it could not put back
// (unreadable, or already put back) included.
func (b *Broker) putBack(ctx context.Context, due []meta.Timer) error {
	// A put-back copy already in the log must be in the key index before
	// putBackCopy looks for it there.
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return err
	}
	byTopic := make(map[string][]*Message)
	var order []string
	var subs []Subscription // read once, when a pull lease's copy is due
	for _, t := range due {
		m, err := b.readMessage(t.LogOffset)
		if err != nil {
			// Gone with its segment (retention moves a waiting message
			// ahead of the segments it deletes, so this is a fault) or
			// damaged: nothing to put back, and the message is lost.
			b.logger.Error("delayed message unreadable; dropping its timer", slog.Int64("offset", t.LogOffset), slog.Any("err", err))
			b.metrics.timerDropped()
			continue
		}
		if off, ok, err := b.deadLetterAfter(ctx, m); err != nil {
			// Not knowing whether it was dead-lettered, putting it back
			// could hand it out again: the timer stays due and fires again.
			return fmt.Errorf("look for a dead letter of %s: %w", m.ID, err)
		} else if ok {
			// A pull lease's visibility copy whose message was
			// dead-lettered after it was stored (a nack to the DLQ, or
			// the last attempt's expiry) by a step a crash cut before
			// its timer was settled: putting it back would hand the
			// message out again and dead-letter it twice.
			b.logger.Error("delayed retry copy already dead-lettered; only marking its timer fired",
				slog.String("id", m.ID), slog.Int64("offset", t.LogOffset), slog.Int64("dead_letter", off))
			b.metrics.delayAnomaly(delayAlreadyDead)
			continue
		}
		if sub, ok := b.pastLastAttempt(ctx, m, &subs); ok {
			// A pull lease's copy past its group's last attempt goes to
			// the DLQ when its timer fires, not when someone pulls next:
			// with no puller left it would wait there, counted as lag.
			reason := deadReason(m, m.Attempt-1)
			if m.Reason == expiredReason {
				b.LogAttempt(meta.Attempt{MsgID: m.ID, Group: sub.Group, Subscription: sub.ID, Attempt: m.Attempt - 1, At: b.now(), Outcome: "expired"})
			}
			if err := b.DeadLetter(ctx, sub.Group, m, m.Attempt-1, reason); err != nil {
				return err // its timer stays claimed, and fires again
			}
			b.LogAttempt(meta.Attempt{MsgID: m.ID, Group: sub.Group, Subscription: sub.ID, Attempt: m.Attempt - 1, At: b.now(), Outcome: "dead", Error: reason})
			continue
		}
		off, ok, err := b.putBackCopy(ctx, m)
		if err != nil {
			// Not knowing whether it was put back, putting it back could
			// deliver it twice: the timer stays due and fires again.
			return fmt.Errorf("look for a put-back copy of %s: %w", m.ID, err)
		}
		if ok {
			// Put back before, by an append that reported an error but
			// whose bytes survived (or before a crash that came ahead of
			// marking the timer fired): it is on its queue already, and a
			// second copy would deliver the message twice.
			b.logger.Error("delayed message already put back; only marking its timer fired",
				slog.String("id", m.ID), slog.Int64("offset", t.LogOffset), slog.Int64("copy", off))
			b.metrics.delayAnomaly(delayAlreadyPut)
			continue
		}
		m.flags |= flagRePut
		if _, ok := byTopic[m.Topic]; !ok {
			order = append(order, m.Topic)
		}
		byTopic[m.Topic] = append(byTopic[m.Topic], m)
	}
	for _, topic := range order {
		if err := b.putDue(ctx, topic, byTopic[topic]); err != nil {
			return err
		}
	}
	return nil
}

// putBackCopy returns the log offset of a put-back copy of the delayed
// message m stored after m itself, if there is one: the newest record with
// m's id on m's topic, flagged as put back. Retry copies share the id, but
// each waits in its own record, after every earlier retry's put-back.
func (b *Broker) putBackCopy(ctx context.Context, m *Message) (int64, bool, error) {
	found := int64(-1)
	_, err := b.lookup(ctx, hashKey(keyID, m.ID), func(c *Message) bool {
		if c.LogOffset <= m.LogOffset {
			return false // newest first: nothing after m is left
		}
		if c.ID == m.ID && c.Topic == m.Topic && c.flags&flagRePut != 0 && c.flags&flagDead == 0 {
			found = c.LogOffset
			return false
		}
		return true
	})
	if err != nil {
		return 0, false, err
	}
	return found, found >= 0, nil
}

// deadLetterAfter returns the log offset of a dead letter of m in the
// dead-letter queue of m's group, stored after m, if m is a copy in a
// group's retry topic and there is one: m's message was dead-lettered
// after m was written, so m must not bring it back (a dead letter is
// written once per message and group; a redrive writes a new retry copy
// after it).
func (b *Broker) deadLetterAfter(ctx context.Context, m *Message) (int64, bool, error) {
	group, ok := retryGroup(m.Topic)
	if !ok {
		return 0, false, nil
	}
	dlq := DeadLetterTopic(group)
	found := int64(-1)
	_, err := b.lookup(ctx, hashKey(keyID, m.ID), func(c *Message) bool {
		if c.LogOffset <= m.LogOffset {
			return false // newest first: nothing after m is left
		}
		if c.ID == m.ID && c.Topic == dlq && c.flags&flagDead != 0 {
			found = c.LogOffset
			return false
		}
		return true
	})
	if err != nil {
		return 0, false, err
	}
	return found, found >= 0, nil
}

// pastLastAttempt returns the pull subscription whose lease's copy m is,
// when m (a visibility copy, or a nack's retry copy) would be an attempt
// past its max_retries. subs caches the subscriptions across one firing.
func (b *Broker) pastLastAttempt(ctx context.Context, m *Message, subs *[]Subscription) (Subscription, bool) {
	if m.flags&flagLeased == 0 {
		return Subscription{}, false
	}
	group, ok := retryGroup(m.Topic)
	if !ok {
		return Subscription{}, false
	}
	if *subs == nil {
		all, err := b.Subscriptions(ctx)
		if err != nil {
			b.logger.Error("reading subscriptions for due retry copies failed; putting them back", slog.Any("err", err))
			return Subscription{}, false
		}
		*subs = append(all, Subscription{}) // not nil: read
	}
	for _, s := range *subs {
		if s.Group == group && s.Topic == m.originTopic() && s.URL == "" && !s.Ordered {
			return s, m.Attempt > s.MaxRetries+1
		}
	}
	return Subscription{}, false
}

// retryGroup is the group of a retry topic's name (RetryTopic); group
// names hold no '%'.
func retryGroup(topic string) (string, bool) {
	rest, ok := strings.CutPrefix(topic, "%RETRY%")
	if !ok {
		return "", false
	}
	group, _, ok := strings.Cut(rest, "%")
	return group, ok && group != ""
}

// putDue puts due delayed messages of one topic on its queues. A topic
// deleted (and maybe created again) meanwhile is looked up again: the
// deleted topic's messages are dropped, never put on a new topic of the
// same name.
func (b *Broker) putDue(ctx context.Context, topic string, msgs []*Message) error {
	for attempt := 0; ; attempt++ {
		ts, err := b.topicOrSystem(ctx, topic)
		if err != nil {
			b.logger.Warn("delayed messages for a deleted topic dropped", slog.String("topic", topic), slog.Int("messages", len(msgs)))
			return nil
		}
		t := ts.info.Load()
		// A topic of the same name created since the message was stored
		// is another topic: the deleted one's messages never reach it.
		n := len(msgs)
		msgs = slices.DeleteFunc(msgs, func(m *Message) bool {
			return !t.owns(m.LogOffset, m.StoredAt.UnixMilli())
		})
		if n > len(msgs) {
			b.logger.Warn("delayed messages for a deleted topic dropped", slog.String("topic", topic), slog.Int("messages", n-len(msgs)))
		}
		if len(msgs) == 0 {
			return nil
		}
		for _, m := range msgs {
			if q := t.Queues; m.QueueID >= q {
				m.QueueID %= q
			}
		}
		// Messages due together may add up to more than one publish may
		// store; each was a publish within the limits, so they go back in
		// appends that are too.
		for len(msgs) > 0 {
			part := msgs[:dueChunk(msgs)]
			_, err = b.store(ctx, ts, part, false)
			if err != nil {
				break
			}
			msgs = msgs[len(part):]
		}
		if errors.Is(err, errStaleTopic) && attempt < maxStaleRetries {
			continue
		}
		if err != nil {
			return fmt.Errorf("put delayed messages on %s: %w", topic, err)
		}
		return nil
	}
}

// dueChunk is how many of msgs, from the first, one append of putDue
// takes: at most MaxBatchMessages, with bodies of at most MaxBatchBytes
// in all, and always at least one.
func dueChunk(msgs []*Message) int {
	n, bytes := 0, 0
	for _, m := range msgs {
		if n > 0 && (n == MaxBatchMessages || bytes+len(m.Body) > MaxBatchBytes) {
			break
		}
		n++
		bytes += len(m.Body)
	}
	return n
}

// readMessage reads and decodes the record at off.
func (b *Broker) readMessage(off int64) (*Message, error) {
	rec, _, err := b.log.ReadAt(off, nil)
	if err != nil {
		return nil, err
	}
	m := new(Message)
	if err := decodeRecord(rec, m); err != nil {
		return nil, err
	}
	m.LogOffset = off
	return m, nil
}

// ownedNow reports whether the record rec, read at log offset off, belongs
// to a topic that exists now, in the same incarnation. Called with appendMu
// held.
func (b *Broker) ownedNow(off int64, rec []byte) bool {
	h, err := decodeHeader(rec)
	if err != nil {
		return false
	}
	b.topicsMu.RLock()
	ts := b.topics[string(h.Topic)]
	b.topicsMu.RUnlock()
	return ts != nil && ts.info.Load().owns(off, h.StoredAt)
}

// topicOrSystem returns a topic's state, creating a system topic (retry,
// dead letter) on first use.
func (b *Broker) topicOrSystem(ctx context.Context, name string) (*topicState, error) {
	b.topicsMu.RLock()
	ts := b.topics[name]
	b.topicsMu.RUnlock()
	if ts != nil {
		return ts, nil
	}
	if !strings.HasPrefix(name, "%") {
		return nil, &Error{Code: CodeTopicNotFound, Field: "topic", Err: ErrTopicNotFound, Detail: fmt.Sprintf("topic %q does not exist", name)}
	}
	b.appendMu.Lock()
	defer b.appendMu.Unlock()
	logStart, err := b.incarnationStart(ctx)
	if err != nil {
		return nil, err
	}
	mt, _, err := b.meta.PutTopic(ctx, meta.Topic{Name: name, Queues: 1, LogStart: logStart})
	if err != nil {
		return nil, fmt.Errorf("create system topic %q: %w", name, err)
	}
	b.topicsMu.Lock()
	defer b.topicsMu.Unlock()
	if ts := b.topics[name]; ts != nil {
		return ts, nil
	}
	ts = newTopicState(topicFromMeta(mt))
	b.topics[name] = ts
	return ts, nil
}

// moveAhead re-appends the delayed messages of pending timers, so that
// retention can delete the segments holding them: a delayed message
// outlives the segment it arrived in. It returns once the copies are
// durable and their timers stored (the delay timer then fires the
// originals' timers).
func (b *Broker) moveAhead(ctx context.Context, pending []meta.Timer) (int, error) {
	var recs, read [][]byte
	var offs []int64
	for _, t := range pending {
		rec, _, err := b.log.ReadAt(t.LogOffset, nil)
		if err != nil {
			b.logger.Error("delayed message unreadable; dropping its timer", slog.Int64("offset", t.LogOffset), slog.Any("err", err))
			b.metrics.timerDropped()
			continue
		}
		read = append(read, rec)
		offs = append(offs, t.LogOffset)
	}
	b.appendMu.Lock()
	// Under appendMu no topic comes or goes: a copy appended now lands in
	// the incarnation it is checked against. A deleted topic's delayed
	// messages are not carried over into a new one.
	// leased are the moved records that are a lease's copy (a pull
	// lease's visibility copy, a deferred push delivery's): dispatch gives
	// them no timer, so their timers are carried over below; by their
	// index in recs, the old offset.
	leased := map[int]int64{}
	for i, rec := range read {
		if b.ownedNow(offs[i], rec) {
			if h, err := decodeHeader(rec); err == nil && h.Flags&flagLeased != 0 {
				leased[len(recs)] = offs[i]
			}
			recs = append(recs, rec)
		}
	}
	if len(recs) == 0 {
		b.appendMu.Unlock()
		return 0, nil
	}
	now := b.now()
	for _, rec := range recs {
		patchRecord(rec, now, 0)
	}
	newOffs, end, wait, err := b.appendLog(recs)
	b.appendMu.Unlock()
	if err != nil {
		return 0, err
	}
	if wait != nil {
		if err := wait(); err != nil {
			return 0, err
		}
	}
	if err := b.log.Sync(ctx, end); err != nil {
		return 0, err
	}
	// The copies must be in the timer store before the originals' timers
	// are fired.
	if err := b.waitDispatched(ctx, end); err != nil {
		return 0, err
	}
	if len(leased) > 0 {
		// A lease's copy keeps its timer's due time (a change of
		// visibility may have moved it) and its ack key, so that a
		// deferred delivery's token still names it; without a timer the
		// moved copy would never come back, and the message was lost
		// (attack s8 F11). A pull receipt naming the old copy is stale
		// from now: its message comes back at the end of its visibility.
		var olds, news []int64
		for i, old := range leased {
			olds, news = append(olds, old), append(news, newOffs[i])
		}
		if err := b.meta.CarryTimers(ctx, olds, news); err != nil {
			return 0, err
		}
	}
	return len(recs), nil
}
