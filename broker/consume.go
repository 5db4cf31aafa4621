package broker

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/consumequeue"
	"github.com/postbus/postbus/broker/meta"
)

// What consumers (push dispatchers, pullers) use: offsets, reads of a
// queue, retry and dead-letter copies, and the attempt log.

// RetryTopic is where a group's retries of a topic's messages wait to be
// consumed again (RocketMQ 5's per group and topic retry topic).
func RetryTopic(group, topic string) string { return "%RETRY%" + group + "%" + topic }

// DeadLetterTopic is a group's dead-letter queue.
func DeadLetterTopic(group string) string { return "%DLQ%" + group }

// offsetKey names one (group, topic, queue).
type offsetKey struct {
	group, topic string
	queue        int
}

// offsets is the in-memory table of consumer offsets: the lowest queue
// offset each group has not finished. Consumers move them; the broker
// persists them in batches every OffsetInterval and at Close.
type offsets struct {
	mu    sync.Mutex
	next  map[offsetKey]int64 // guarded by mu
	dirty map[offsetKey]bool  // guarded by mu: changed since the last flush
	// progress is what a push consumer settled above next (encoded by
	// queueCursor.progress), stored with it; absent for the rest.
	progress map[offsetKey][]byte // guarded by mu
	// flushMu makes flushes one at a time, from the snapshot of what is
	// dirty to its commit: two flushes committing in the other order than
	// they took their snapshots would store the older offsets last, with
	// nothing left dirty to write the newer ones again, and a crash would
	// then hand out again what was acked above them.
	flushMu sync.Mutex
	// taken counts the flushes that took their snapshot of what is dirty,
	// written is the last of them whose commit succeeded (they commit in
	// order, under flushMu), and writtenSig fires after each: a push
	// settle waits for the flush that carries it (waitOffsetsWritten).
	taken, written uint64 // guarded by mu
	writtenSig     signal
}

// Offset returns a group's next offset on a queue, and whether it has one.
func (b *Broker) Offset(group, topic string, queue int) (int64, bool) {
	b.offs.mu.Lock()
	defer b.offs.mu.Unlock()
	n, ok := b.offs.next[offsetKey{group, topic, queue}]
	return n, ok
}

// setOffset moves a group's offset on a queue. It is durable within
// OffsetInterval (at-least-once: after a crash the group resumes from the
// last persisted offset), or sooner where the caller flushes.
func (b *Broker) setOffset(group, topic string, queue int, next int64) {
	b.setOffsetProgress(group, topic, queue, next, nil)
}

// setOffsetProgress is setOffset with what a push consumer settled above
// next (nil: nothing recorded, as setOffset).
func (b *Broker) setOffsetProgress(group, topic string, queue int, next int64, progress []byte) {
	k := offsetKey{group, topic, queue}
	b.offs.mu.Lock()
	defer b.offs.mu.Unlock()
	old, ok := b.offs.next[k]
	oldP := b.offs.progress[k]
	if !ok || old != next || !bytes.Equal(oldP, progress) {
		b.offs.next[k] = next
		if progress == nil {
			delete(b.offs.progress, k)
		} else {
			b.offs.progress[k] = progress
		}
		b.offs.dirty[k] = true
	}
}

// offsetProgress returns a group's offset on a queue and what a push
// consumer settled above it, if recorded.
func (b *Broker) offsetProgress(group, topic string, queue int) (int64, []byte) {
	b.offs.mu.Lock()
	defer b.offs.mu.Unlock()
	k := offsetKey{group, topic, queue}
	return b.offs.next[k], b.offs.progress[k]
}

func (b *Broker) loadOffsets(ctx context.Context) error {
	all, err := b.meta.AllOffsets(ctx)
	if err != nil {
		return fmt.Errorf("load offsets: %w", err)
	}
	b.offs.next = make(map[offsetKey]int64, len(all))
	b.offs.dirty = make(map[offsetKey]bool)
	b.offs.progress = make(map[offsetKey][]byte)
	for _, o := range all {
		b.offs.next[offsetKey{o.Group, o.Topic, o.Queue}] = o.Next
		if len(o.Progress) > 0 {
			b.offs.progress[offsetKey{o.Group, o.Topic, o.Queue}] = o.Progress
		}
	}
	return nil
}

// flushOffsets persists the offsets changed since the last flush, in one
// transaction.
func (b *Broker) flushOffsets(ctx context.Context) error {
	return b.flushOffsetsWith(ctx, b.meta.CommitOffsets)
}

// flushOffsetsRound is flushOffsets for a push lease round: many a
// second, so not fsynced (it survives a kill of the process; a power cut
// falls back to the last synced write, at least once).
func (b *Broker) flushOffsetsRound(ctx context.Context) error {
	return b.flushOffsetsWith(ctx, b.meta.CommitOffsetsUnsynced)
}

func (b *Broker) flushOffsetsWith(ctx context.Context, commit func(context.Context, []meta.Offset) error) error {
	b.offs.flushMu.Lock()
	defer b.offs.flushMu.Unlock()
	b.offs.mu.Lock()
	batch := make([]meta.Offset, 0, len(b.offs.dirty))
	for k := range b.offs.dirty {
		batch = append(batch, meta.Offset{Group: k.group, Topic: k.topic, Queue: k.queue, Next: b.offs.next[k], Progress: b.offs.progress[k]})
	}
	clear(b.offs.dirty)
	b.offs.taken++
	round := b.offs.taken
	b.offs.mu.Unlock()
	if testHookOffsetsTaken != nil {
		testHookOffsetsTaken(batch)
	}
	if err := commit(ctx, batch); err != nil {
		b.offs.mu.Lock()
		for _, o := range batch {
			b.offs.dirty[offsetKey{o.Group, o.Topic, o.Queue}] = true
		}
		b.offs.mu.Unlock()
		return fmt.Errorf("persist offsets: %w", err)
	}
	b.offs.mu.Lock()
	b.offs.written = round
	b.offs.mu.Unlock()
	b.offs.writtenSig.fire()
	return nil
}

// offsetsRoundAfter is the flush that carries every offset moved before
// the call: the next to take its snapshot (or one that took it since the
// move, which is earlier).
func (b *Broker) offsetsRoundAfter() uint64 {
	b.offs.mu.Lock()
	defer b.offs.mu.Unlock()
	return b.offs.taken + 1
}

// waitOffsetsWritten waits until flush round has committed, ctx ends or
// stop is closed (the broker closing writes its offsets itself).
func (b *Broker) waitOffsetsWritten(ctx context.Context, round uint64, stop <-chan struct{}) error {
	for {
		// The channel is taken before written is read: a flush that
		// commits in between closes it.
		ch := b.offs.writtenSig.wait()
		b.offs.mu.Lock()
		done := b.offs.written >= round
		b.offs.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-stop:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// commitLease stores a pull lease's visibility timers with the offsets
// past its messages (meta.Store.CommitLease) and then moves the offsets in
// memory, all in turn with the flushes: none of them can write an older
// offset of these queues after this commit.
func (b *Broker) commitLease(ctx context.Context, timers []meta.Timer, offs []meta.Offset) error {
	b.offs.flushMu.Lock()
	defer b.offs.flushMu.Unlock()
	if err := b.meta.CommitLease(ctx, timers, offs); err != nil {
		return err
	}
	b.offs.mu.Lock()
	defer b.offs.mu.Unlock()
	for _, o := range offs {
		k := offsetKey{o.Group, o.Topic, o.Queue}
		b.offs.next[k] = o.Next
		delete(b.offs.progress, k)
		delete(b.offs.dirty, k) // stored just now
	}
	return nil
}

// testHookOffsetsTaken runs in a flush between taking the dirty offsets
// and committing them.
var testHookOffsetsTaken func([]meta.Offset)

// Dispatched returns a channel closed when new messages become readable.
func (b *Broker) Dispatched() <-chan struct{} { return b.dispatchSig.wait() }

// Queues returns how many queues a topic has (a system topic too).
func (b *Broker) Queues(topic string) (int, error) {
	b.topicsMu.RLock()
	ts := b.topics[topic]
	b.topicsMu.RUnlock()
	if ts == nil {
		return 0, &Error{Code: CodeTopicNotFound, Field: "topic", Err: ErrTopicNotFound, Detail: fmt.Sprintf("topic %q does not exist", topic)}
	}
	return ts.info.Load().Queues, nil
}

// QueueBounds returns a queue's live offsets [min, max).
func (b *Broker) QueueBounds(topic string, queue int) (min, max int64) {
	return b.cq.Bounds(topic, queue)
}

// ReadQueue reads up to limit messages of a queue from offset from that match
// filter, skipping the rest by their tag hash without reading the log. It
// returns the messages (with QueueOffset set) and the offset after the last
// entry it looked at, where the next read starts. A from below the queue's
// retained start is moved up to it.
func (b *Broker) ReadQueue(topic string, queue int, from int64, limit int, filter Filter) ([]*Message, int64, error) {
	b.topicsMu.RLock()
	ts := b.topics[topic]
	b.topicsMu.RUnlock()
	if ts == nil {
		return nil, from, nil // deleted: its queues went with it
	}
	t, now := ts.info.Load(), b.now()
	lo, hi := b.cq.Bounds(topic, queue)
	from = min(hi, max(from, lo))
	var out []*Message
	var entries []consumequeue.Entry
	for from < hi && len(out) < limit {
		var err error
		entries, err = b.cq.Read(topic, queue, from, 256, entries[:0])
		if err != nil {
			return out, from, err
		}
		if len(entries) == 0 {
			break
		}
		for i, e := range entries {
			off := from + int64(i)
			if e.Size == holeSize {
				b.logger.Error("queue entry is a record lost in a damaged log span; skipping", slog.String("topic", topic),
					slog.Int("queue", queue), slog.Int64("queue_offset", off))
				continue
			}
			if !filter.MatchHash(e.TagHash) {
				continue
			}
			m, err := b.readQueued(topic, queue, off, e.Offset)
			if err != nil {
				// Removed by retention under us, skipped as the queue has;
				// or damaged in the log, quarantined: an anomaly.
				level := slog.LevelWarn
				if !errors.Is(err, commitlog.ErrOutOfRange) {
					level = slog.LevelError
				}
				b.logger.Log(context.Background(), level, "queue entry unreadable; skipping", slog.String("topic", topic), slog.Int("queue", queue),
					slog.Int64("queue_offset", off), slog.Int64("offset", e.Offset), slog.Any("err", err))
				continue
			}
			if !filter.Match(m.Tag) || !b.retained(t, m.StoredAt, now) {
				// Past the topic's retention: gone for every reader, as for
				// a query by id, although its segment is still kept.
				continue
			}
			m.QueueOffset = off
			out = append(out, m)
			if len(out) == limit {
				return out, off + 1, nil
			}
		}
		from += int64(len(entries))
	}
	return out, from, nil
}

// retryCopy is m as the delayed copy that brings it back to group as
// attempt at time at: push retries, pull visibility and nacks, redrives.
func (m *Message) retryCopy(group string, attempt int, at time.Time) *Message {
	c := m.copyFor(RetryTopic(group, m.originTopic()))
	c.Attempt, c.DeliverAt, c.flags = attempt, at, flagRetry|flagDelayed
	return c
}

// DeadLetter moves m, which failed attempts times for group, to the
// group's dead-letter topic, with the last error.
func (b *Broker) DeadLetter(ctx context.Context, group string, m *Message, attempts int, reason string) error {
	c := m.copyFor(DeadLetterTopic(group))
	c.Attempt, c.Reason, c.flags = attempts, reason, flagDead
	if err := b.storeSystem(ctx, c); err != nil {
		return err
	}
	b.logger.Info("message dead-lettered", slog.String("group", group), slog.String("msg_id", m.ID),
		slog.Int("attempts", attempts), slog.String("reason", reason))
	return nil
}

// copyFor is a copy of m bound for a system topic, remembering where it
// came from.
func (m *Message) copyFor(topic string) *Message {
	c := *m
	c.Origin = m.originTopic()
	c.Topic, c.QueueID, c.QueueOffset, c.DeliverAt, c.Reason = topic, 0, 0, time.Time{}, ""
	return &c
}

// OriginTopic is the user topic a message belongs to, for retry and
// dead-letter copies too.
func (m *Message) OriginTopic() string { return m.originTopic() }

// originTopic is the user topic a message belongs to, for copies too.
func (m *Message) originTopic() string {
	if m.Origin != "" {
		return m.Origin
	}
	return m.Topic
}

// storeSystem stores one message in a system topic.
func (b *Broker) storeSystem(ctx context.Context, m *Message) error {
	ts, err := b.topicOrSystem(ctx, m.Topic)
	if err != nil {
		return err
	}
	_, err = b.store(ctx, ts, []*Message{m}, false)
	return err
}

// LogAttempt adds a delivery attempt (or ack, nack) to the trace log. It
// never blocks the caller: attempts are written in batches, and when the
// writer falls far behind the oldest unwritten ones are dropped (counted
// in the postbus_attempts_dropped_total metric).
func (b *Broker) LogAttempt(a meta.Attempt) {
	b.attemptsMu.Lock()
	defer b.attemptsMu.Unlock()
	if len(b.attempts) >= maxPendingAttempts {
		b.metrics.attemptsDropped.Inc()
		return
	}
	b.attempts = append(b.attempts, a)
}

const maxPendingAttempts = 100_000

// flushAttempts writes the buffered attempts in one transaction.
func (b *Broker) flushAttempts(ctx context.Context) error {
	b.attemptsMu.Lock()
	batch := b.attempts
	b.attempts = nil
	b.attemptsMu.Unlock()
	return b.meta.AddAttempts(ctx, batch)
}

// consumeLoop persists offsets and attempts until the broker closes.
func (b *Broker) consumeLoop() {
	defer b.wg.Done()
	t := time.NewTicker(b.cfg.OffsetInterval)
	defer t.Stop()
	for {
		select {
		case <-b.closing:
			return
		case <-t.C:
			ctx := context.Background()
			if err := b.flushOffsets(ctx); err != nil {
				b.logger.Error("persisting offsets failed", slog.Any("err", err))
			}
			if err := b.flushAttempts(ctx); err != nil {
				b.logger.Error("writing the attempt log failed", slog.Any("err", err))
			}
		}
	}
}

// Attempt is one entry of the attempt log.
type Attempt = meta.Attempt

// OrderedRetry is an ordered subscription's queue blocked on a failing
// message, kept durable so a restart resumes the wait.
type OrderedRetry = meta.OrderedRetry

// ReadMessageAt reads one queue entry's message (for an ordered
// subscription resuming a blocked queue).
func (b *Broker) ReadMessageAt(topic string, queue int, offset int64) (*Message, error) {
	entries, err := b.cq.Read(topic, queue, offset, 1, nil)
	if err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, &Error{Code: CodeMessageNotFound, Err: ErrMessageNotFound, Detail: fmt.Sprintf("no entry %d in %s/%d", offset, topic, queue)}
	}
	if entries[0].Size == holeSize {
		return nil, &Error{Code: CodeMessageDamaged, Detail: fmt.Sprintf("entry %d of %s/%d was lost in a damaged span of the log", offset, topic, queue)}
	}
	m, err := b.readQueued(topic, queue, offset, entries[0].Offset)
	if errors.Is(err, commitlog.ErrCorrupt) || errors.Is(err, errMisplaced) {
		return nil, &Error{Code: CodeMessageDamaged, Detail: fmt.Sprintf("entry %d of %s/%d is damaged in the log", offset, topic, queue), Err: err}
	}
	if err != nil {
		return nil, err
	}
	b.topicsMu.RLock()
	ts := b.topics[topic]
	b.topicsMu.RUnlock()
	if ts == nil || !b.retained(ts.info.Load(), m.StoredAt, b.now()) {
		return nil, &Error{Code: CodeMessageNotFound, Err: ErrMessageNotFound, Detail: fmt.Sprintf("entry %d of %s/%d is past its topic's retention", offset, topic, queue)}
	}
	m.QueueOffset = offset
	return m, nil
}

// errMisplaced: a queue entry's record is not the entry's own.
var errMisplaced = errors.New("the record at the entry's log offset belongs elsewhere")

// readQueued reads the record of entry qoff of a queue, at log offset off,
// and checks that it is that entry's: every record names its topic, queue
// and queue offset. A segment whose content was replaced (a bad restore, a
// misdirected write) keeps valid CRCs but holds other records; reading one
// of them as the message at this offset would hand a consumer the wrong
// message. Such an entry is an ERROR, counted, and errMisplaced.
func (b *Broker) readQueued(topic string, queue int, qoff, off int64) (*Message, error) {
	m, err := b.readMessage(off)
	if err != nil {
		return nil, err
	}
	if m.Topic != topic || m.QueueID != queue || m.QueueOffset != qoff {
		b.logger.Error("queue entry points at a record that is not its own (a segment replaced by other content?); not served",
			slog.String("topic", topic), slog.Int("queue", queue), slog.Int64("queue_offset", qoff), slog.Int64("offset", off),
			slog.String("record_topic", m.Topic), slog.Int("record_queue", m.QueueID), slog.Int64("record_queue_offset", m.QueueOffset),
			slog.String("record_msg_id", m.ID))
		b.metrics.misplacedEntry()
		return nil, fmt.Errorf("entry %d of %s/%d at log offset %d: %w", qoff, topic, queue, off, errMisplaced)
	}
	return m, nil
}

// queueCursor is a consumer's place in one queue: the next offset to
// read, and the offsets read but not yet finished (out on a push lease, or
// waiting for a pull lease's copy to be stored). The group's offset is the
// lowest unfinished one, so a restart never skips a message that was read
// but not settled. The engine keeps one per queue of each consumer; the
// consumer's lock serialises access.
type queueCursor struct {
	Topic   string
	Queue   int
	Next    int64
	slot    int     // an ordered group's key for it: the queue, or retrySlot for the retry queue
	pending []int64 // ascending
}

// Start records that the message at off was read and is not finished.
func (c *queueCursor) Start(off int64) { c.pending = append(c.pending, off) }

// Finish records that the message at off is done.
func (c *queueCursor) Finish(off int64) {
	for i, p := range c.pending {
		if p == off {
			c.pending = append(c.pending[:i], c.pending[i+1:]...)
			return
		}
	}
}

// Committed is the offset the group may persist: the lowest unfinished.
func (c *queueCursor) Committed() int64 {
	if len(c.pending) > 0 {
		return c.pending[0]
	}
	return c.Next
}

// progress encodes what was settled above Committed: nil when nothing is
// out (Committed is Next), else how far past Committed the cursor read and
// the other offsets still out, each a step from the one before, as
// varints (migrations/0006_offset_progress.sql). Everything else below
// Next was settled: a restart hands out only the offsets listed.
func (c *queueCursor) progress() []byte {
	if len(c.pending) == 0 {
		return nil
	}
	base := c.pending[0]
	p := binary.AppendUvarint(make([]byte, 0, 2+len(c.pending)), uint64(c.Next-base))
	for i := 1; i < len(c.pending); i++ {
		p = binary.AppendUvarint(p, uint64(c.pending[i]-c.pending[i-1]))
	}
	return p
}

// errBadProgress is parseProgress's answer for bytes it did not write.
var errBadProgress = errors.New("malformed offset progress")

// parseProgress reads what progress wrote for a cursor at committed: the
// offset to read on from and the offsets still out (committed first).
func parseProgress(committed int64, p []byte) (next int64, out []int64, err error) {
	d, n := binary.Uvarint(p)
	if n <= 0 || d == 0 || d > 1<<40 {
		return 0, nil, errBadProgress
	}
	next, p = committed+int64(d), p[n:]
	out = []int64{committed}
	for len(p) > 0 {
		step, n := binary.Uvarint(p)
		if n <= 0 || step == 0 || step >= uint64(next-out[len(out)-1]) {
			return 0, nil, errBadProgress
		}
		out = append(out, out[len(out)-1]+int64(step))
		p = p[n:]
	}
	return next, out, nil
}

// InFlight counts the unfinished messages.
func (c *queueCursor) InFlight() int { return len(c.pending) }

// LostRange is a run of queue offsets whose messages are lost: kept as
// holes (their records were in a damaged span, or missing from the log)
// or whose records are damaged or misplaced in the log.
type LostRange struct {
	From, To int64 // queue offsets [From, To)
}

// LostIn lists the lost runs of a queue's offsets in [from, to): a read
// of the queue (ReadQueue) skips them, and a consumer keeping its own
// position must be told that those offsets held messages it will never
// get, rather than see the next readable one as if nothing were there.
// have lists the offsets the read returned (ascending), which need no
// second look; offsets below the queue's start or past retention are not
// lost (they expired). At most lostScanLimit entries are looked at.
func (b *Broker) LostIn(topic string, queue int, from, to int64, have []int64) []LostRange {
	lo, hi := b.cq.Bounds(topic, queue)
	from, to = max(from, lo), min(to, hi, max(from, lo)+lostScanLimit)
	if from >= to {
		return nil
	}
	entries, err := b.cq.Read(topic, queue, from, int(to-from), nil)
	if err != nil {
		return nil
	}
	var out []LostRange
	for i, e := range entries {
		off := from + int64(i)
		if _, ok := slices.BinarySearch(have, off); ok {
			continue
		}
		lost := e.Size == holeSize
		if !lost {
			_, err := b.readQueued(topic, queue, off, e.Offset)
			lost = errors.Is(err, commitlog.ErrCorrupt) || errors.Is(err, errMisplaced)
		}
		if !lost {
			continue
		}
		if n := len(out); n > 0 && out[n-1].To == off {
			out[n-1].To = off + 1
		} else {
			out = append(out, LostRange{From: off, To: off + 1})
		}
	}
	return out
}

// lostScanLimit bounds the entries LostIn looks at.
const lostScanLimit = 4096
