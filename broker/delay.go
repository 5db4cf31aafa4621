package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// Delayed messages (DESIGN §2). A message with a deliver-at time is stored
// in the log like any other but takes no queue offset; dispatch records it
// in the timer store (SQLite: log offset, due time). The timer loop puts
// each due message on its queue as a new record with the same id, flagged
// so it is never delayed again. Retries of deliveries are delayed messages
// for a group's retry topic, so they ride the same mechanism.
//
// One timer store serves delay levels, arbitrary times and retries: the
// per-level FIFO queues of RocketMQ (and DESIGN) exist to avoid sorting by
// due time, which an index on the timer table already does, with no limit
// on the kinds of delay. Firing is at-least-once: a crash between putting a
// message on its queue and marking its timer fired puts it there again.

// timerBatch is how many due timers one round fires.
const timerBatch = 512

// timerLoop fires due timers until the broker closes.
func (b *Broker) timerLoop() {
	defer b.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-b.closing
		cancel()
	}()
	for {
		n, err := b.fireDue(ctx)
		if err != nil && ctx.Err() == nil {
			b.logger.Error("firing timers failed; retrying", slog.Any("err", err))
		}
		if n == timerBatch && err == nil {
			continue // more are due
		}
		wait := time.Second
		if err == nil {
			if next, ok, err := b.meta.NextTimer(ctx); err == nil && ok {
				wait = min(wait, max(next.Sub(b.now()), 0))
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-b.timerWake:
		case <-t.C:
		}
		t.Stop()
	}
}

// fireDue claims due timers, puts their delayed messages on their queues
// and marks the timers fired. It returns how many timers it handled. The
// claim is a write under the metadata's one writer, so a pull's ack or nack
// racing its visibility deadline either cancels the timer before the claim
// or finds it claimed and is answered stale: never both.
func (b *Broker) fireDue(ctx context.Context) (int, error) {
	due, err := b.meta.ClaimDueTimers(ctx, timerBatch)
	if err != nil || len(due) == 0 {
		return 0, err
	}
	// A put-back copy already in the log must be in the key index before
	// putBack looks for it there.
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return 0, err
	}
	byTopic := make(map[string][]*Message)
	var order []string
	fired := make([]int64, 0, len(due))
	for _, t := range due {
		m, err := b.readMessage(t.LogOffset)
		if err != nil {
			// Gone with its segment (retention moves a waiting message
			// ahead of the segments it deletes, so this is a fault) or
			// damaged: nothing to put back, and the message is lost.
			b.logger.Error("delayed message unreadable; dropping its timer", slog.Int64("offset", t.LogOffset), slog.Any("err", err))
			b.metrics.timerDropped()
			fired = append(fired, t.LogOffset)
			continue
		}
		if off, ok := b.putBackCopy(ctx, m); ok {
			// Put back before, by an append that reported an error but
			// whose bytes survived (or before a crash that came ahead of
			// marking the timer fired): it is on its queue already, and a
			// second copy would deliver the message twice.
			b.logger.Error("delayed message already put back; only marking its timer fired",
				slog.String("id", m.ID), slog.Int64("offset", t.LogOffset), slog.Int64("copy", off))
			b.metrics.delayAnomaly(delayAlreadyPut)
			fired = append(fired, t.LogOffset)
			continue
		}
		m.flags |= flagRePut
		if _, ok := byTopic[m.Topic]; !ok {
			order = append(order, m.Topic)
		}
		byTopic[m.Topic] = append(byTopic[m.Topic], m)
		fired = append(fired, t.LogOffset)
	}
	for _, topic := range order {
		if err := b.putDue(ctx, topic, byTopic[topic]); err != nil {
			return 0, err
		}
	}
	if err := b.meta.FireTimers(ctx, fired); err != nil {
		return 0, err
	}
	return len(due), nil
}

// putBackCopy returns the log offset of a put-back copy of the delayed
// message m stored after m itself, if there is one: the newest record with
// m's id on m's topic, flagged as put back. Retry copies share the id, but
// each waits in its own record, after every earlier retry's put-back.
func (b *Broker) putBackCopy(ctx context.Context, m *Message) (int64, bool) {
	found := int64(-1)
	b.lookup(ctx, hashKey(keyID, m.ID), func(c *Message) bool {
		if c.LogOffset <= m.LogOffset {
			return false // newest first: nothing after m is left
		}
		if c.ID == m.ID && c.Topic == m.Topic && c.flags&flagRePut != 0 && c.flags&flagDead == 0 {
			found = c.LogOffset
			return false
		}
		return true
	})
	return found, found >= 0
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
		return nil, &Error{Code: CodeTopicNotFound, Field: "topic", Detail: fmt.Sprintf("topic %q does not exist", name)}
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

// moveTimersBefore re-appends the delayed messages whose records lie below
// off, so that retention can delete the segments holding them: a delayed
// message outlives the segment it arrived in.
func (b *Broker) moveTimersBefore(ctx context.Context, off int64) error {
	for {
		pending, err := b.meta.PendingTimersBefore(ctx, off, timerBatch)
		if err != nil || len(pending) == 0 {
			return err
		}
		moved := make([]int64, 0, len(pending))
		var recs, read [][]byte
		var offs []int64
		for _, t := range pending {
			rec, _, err := b.log.ReadAt(t.LogOffset, nil)
			if err != nil {
				b.logger.Error("delayed message unreadable; dropping its timer", slog.Int64("offset", t.LogOffset), slog.Any("err", err))
				b.metrics.timerDropped()
			} else {
				read = append(read, rec)
				offs = append(offs, t.LogOffset)
			}
			moved = append(moved, t.LogOffset)
		}
		b.appendMu.Lock()
		// Under appendMu no topic comes or goes: a copy appended now lands
		// in the incarnation it is checked against. A deleted topic's
		// delayed messages are not carried over into a new one.
		for i, rec := range read {
			if b.ownedNow(offs[i], rec) {
				recs = append(recs, rec)
			}
		}
		if len(recs) > 0 {
			now := b.now()
			for _, rec := range recs {
				patchRecord(rec, now, 0)
			}
			_, end, err := b.log.Append(recs)
			b.appendMu.Unlock()
			if err != nil {
				return fmt.Errorf("move delayed messages: %w", err)
			}
			if err := b.log.Sync(ctx, end); err != nil {
				return err
			}
			// The copies must be in the timer store before the originals'
			// timers are fired.
			if err := b.waitDispatched(ctx, end); err != nil {
				return err
			}
		} else {
			b.appendMu.Unlock()
		}
		if err := b.meta.FireTimers(ctx, moved); err != nil {
			return err
		}
		b.logger.Info("moved delayed messages ahead of retention", slog.Int("messages", len(recs)))
	}
}
