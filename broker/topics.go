package broker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/postbus/postbus/broker/consumequeue"
	"github.com/postbus/postbus/broker/meta"
)

// MaxQueues is the most queues a topic may have.
const MaxQueues = 1024

// Topic is a topic's settings. Retention 0 means the broker's default.
type Topic struct {
	Name      string
	Queues    int
	Retention time.Duration
	CreatedAt time.Time
	// logStart is the log offset where this incarnation of the topic
	// begins (see owns); -1 for a topic stored before it was recorded.
	logStart int64
}

// owns reports whether the record of this topic's name at log offset off,
// stored at storedAtMs, belongs to this incarnation of the topic rather than
// to a deleted one of the same name. Every record a topic gets is appended
// after its creation, under the append lock that also created it, so the
// log offset separates incarnations exactly; a clock could not (two
// incarnations within one millisecond, or a clock stepped back). Topics
// stored before the offset was recorded fall back to the creation time.
func (t *Topic) owns(off, storedAtMs int64) bool {
	if t.logStart >= 0 {
		return off >= t.logStart
	}
	return storedAtMs >= t.CreatedAt.UnixMilli()
}

// ownsCopy says whether the record at log offset off can be the current
// incarnation of topic's: false once the topic was deleted, and for a
// record stored before it was created again. A topic from before log
// starts were kept (no logStart) is taken to own it.
func (b *Broker) ownsCopy(topic string, off int64) bool {
	b.topicsMu.RLock()
	ts := b.topics[topic]
	b.topicsMu.RUnlock()
	if ts == nil {
		return false
	}
	t := ts.info.Load()
	return t.logStart < 0 || off >= t.logStart
}

// QueueStats describes one queue: its live offsets [MinOffset, MaxOffset)
// and what they hold.
type QueueStats struct {
	ID        int
	MinOffset int64
	MaxOffset int64
	Messages  int64
	Bytes     int64
}

// TopicStats is a topic with its queues.
type TopicStats struct {
	Topic
	Messages int64
	Bytes    int64
	Queues   []QueueStats
}

func topicFromMeta(t meta.Topic) Topic {
	return Topic{Name: t.Name, Queues: t.Queues, Retention: t.Retention, CreatedAt: t.CreatedAt, logStart: t.LogStart}
}

// topicForPublish returns the topic, creating it when auto-creation is on.
func (b *Broker) topicForPublish(ctx context.Context, name string) (*topicState, error) {
	b.topicsMu.RLock()
	ts := b.topics[name]
	b.topicsMu.RUnlock()
	if ts != nil {
		return ts, nil
	}
	if !b.cfg.AutoCreateTopics {
		return nil, &Error{Code: CodeTopicNotFound, Field: "topic", Err: ErrTopicNotFound,
			Detail: fmt.Sprintf("topic %q does not exist and auto-creation is off; create it with PUT /v1/topics/%s", name, name)}
	}
	if _, _, err := b.PutTopic(ctx, name, TopicSettings{}); err != nil {
		return nil, err
	}
	b.topicsMu.RLock()
	defer b.topicsMu.RUnlock()
	if ts := b.topics[name]; ts != nil {
		return ts, nil
	}
	return nil, &Error{Code: CodeTopicNotFound, Field: "topic", Err: ErrTopicNotFound, Detail: fmt.Sprintf("topic %q was deleted while publishing", name)}
}

// TopicSettings are what a PUT of a topic sets. A zero Queues or a nil
// Retention keeps the topic's current value, or takes the default for a new
// topic; a Retention of 0 means the broker's retention.
type TopicSettings struct {
	Queues    int
	Retention *time.Duration
}

func (b *Broker) validateTopicSettings(t Topic) error {
	if t.Queues < 1 || t.Queues > MaxQueues {
		return errf(CodeInvalidQueues, "queues", "%d queues: a topic has 1-%d", t.Queues, MaxQueues)
	}
	if t.Retention < 0 || (t.Retention > 0 && t.Retention < time.Minute) || t.Retention > 10*365*24*time.Hour {
		return errf(CodeInvalidRetention, "retention", "retention %s must be between 1m and 10 years (or 0 for the broker's %s)", t.Retention, b.cfg.Retention)
	}
	return nil
}

// PutTopic creates a topic or changes its settings. Queues can only grow:
// shrinking would strand the messages in the removed queues.
func (b *Broker) PutTopic(ctx context.Context, name string, s TopicSettings) (Topic, bool, error) {
	if err := ValidateTopicName(name); err != nil {
		return Topic{}, false, err
	}
	// appendMu orders this against publishes reading next[], and against
	// deletes of the same topic.
	b.appendMu.Lock()
	defer b.appendMu.Unlock()
	if b.isClosing() {
		return Topic{}, false, ErrClosed
	}
	t := Topic{Name: name, Queues: b.cfg.DefaultQueues}
	b.topicsMu.RLock()
	ts := b.topics[name]
	if ts != nil {
		t = *ts.info.Load()
	}
	b.topicsMu.RUnlock()
	if s.Queues != 0 {
		t.Queues = s.Queues
	}
	if s.Retention != nil {
		t.Retention = *s.Retention
	}
	if err := b.validateTopicSettings(t); err != nil {
		return Topic{}, false, err
	}
	logStart := int64(-1)
	if ts == nil {
		var err error
		if logStart, err = b.incarnationStart(ctx); err != nil {
			return Topic{}, false, err
		}
	}
	var createdAt time.Time // the store's clock, for a topic it has
	if ts == nil {
		createdAt = b.creationTime()
	}
	mt, created, err := b.meta.PutTopic(ctx, meta.Topic{Name: t.Name, Queues: t.Queues, Retention: t.Retention, LogStart: logStart, CreatedAt: createdAt})
	if errors.Is(err, meta.ErrQueuesShrink) {
		return Topic{}, false, errf(CodeInvalidQueues, "queues", "topic %q has more than %d queues; queues can only grow", t.Name, t.Queues)
	}
	if err != nil {
		return Topic{}, false, fmt.Errorf("store topic %q: %w", t.Name, err)
	}
	nt := topicFromMeta(mt)
	b.topicsMu.Lock()
	defer b.topicsMu.Unlock()
	if ts, ok := b.topics[nt.Name]; ok {
		for len(ts.next) < nt.Queues {
			ts.next = append(ts.next, 0)
		}
		ts.info.Store(&nt)
	} else {
		b.topics[nt.Name] = newTopicState(nt)
		if i, found := slices.BinarySearch(b.names, nt.Name); !found && !strings.HasPrefix(nt.Name, "%") {
			b.names = slices.Insert(b.names, i, nt.Name)
		}
	}
	if created {
		b.logger.Info("topic created", slog.String("topic", nt.Name), slog.Int("queues", nt.Queues))
	}
	b.topicsSig.fire()
	return nt, created, nil
}

// incarnationStart is where a topic created now begins in the log: its end,
// made durable first, so that a crash cannot cut the log below it and leave
// the topic's first records under it (hidden as a deleted topic's). Called
// with appendMu held, so nothing is appended between this and the topic's
// creation.
func (b *Broker) incarnationStart(ctx context.Context) (int64, error) {
	end := b.log.End()
	if err := b.log.Sync(ctx, end); err != nil {
		return 0, fmt.Errorf("flush commitlog before creating a topic: %w", err)
	}
	return end, nil
}

func (b *Broker) topicState(name string) (*topicState, error) {
	if err := ValidateTopicName(name); err != nil {
		return nil, err
	}
	b.topicsMu.RLock()
	defer b.topicsMu.RUnlock()
	ts := b.topics[name]
	if ts == nil {
		return nil, &Error{Code: CodeTopicNotFound, Field: "topic", Err: ErrTopicNotFound, Detail: fmt.Sprintf("topic %q does not exist", name)}
	}
	return ts, nil
}

// Topic returns a topic with its queues' offsets and counts.
func (b *Broker) Topic(ctx context.Context, name string) (TopicStats, error) {
	ts, err := b.topicState(name)
	if err != nil {
		return TopicStats{}, err
	}
	// Count what was acknowledged before this call, as a client expects.
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return TopicStats{}, err
	}
	t := *ts.info.Load()
	st := TopicStats{Topic: t, Queues: make([]QueueStats, t.Queues)}
	r := b.retentionOf(&t, b.now())
	los := make([]int64, t.Queues)
	for q := range los {
		if los[q], _, err = b.retainedBounds(&t, q, r); err != nil {
			return TopicStats{}, err
		}
	}
	b.dispatchMu.Lock()
	defer b.dispatchMu.Unlock()
	for q := range st.Queues {
		lo, hi := b.cq.Bounds(name, q)
		bytes := b.queueBytes[consumequeue.QueueID{Topic: name, Queue: q}]
		if floor := min(los[q], hi); floor > lo {
			// Past the topic's retention, though still on disk: not counted.
			bytes -= b.entryBytes(name, q, lo, floor)
			lo = floor
		}
		st.Queues[q] = QueueStats{ID: q, MinOffset: lo, MaxOffset: hi, Messages: hi - lo, Bytes: bytes}
		st.Messages += hi - lo
		st.Bytes += bytes
	}
	return st, nil
}

// entryBytes sums the sizes of a queue's entries [from, to), as
// queueBytes counts them. Called with dispatchMu held.
func (b *Broker) entryBytes(topic string, queue int, from, to int64) int64 {
	var n int64
	var buf []consumequeue.Entry
	for from < to {
		var err error
		buf, err = b.cq.Read(topic, queue, from, int(min(to-from, 4096)), buf[:0])
		if err != nil || len(buf) == 0 {
			break
		}
		for _, e := range buf {
			n += liveBytes(e)
		}
		from += int64(len(buf))
	}
	return n
}

// Topics lists user topics by name, after the name `after`, at most limit.
// System topics (retry, dead-letter) are the broker's and are not listed;
// their contents are reached through the groups API.
func (b *Broker) Topics(ctx context.Context, after string, limit int) []Topic {
	b.topicsMu.RLock()
	defer b.topicsMu.RUnlock()
	i, found := slices.BinarySearch(b.names, after)
	if found {
		i++
	}
	names := b.names[i:]
	if limit > 0 && len(names) > limit {
		names = names[:limit]
	}
	out := make([]Topic, len(names))
	for k, name := range names {
		out[k] = *b.topics[name].info.Load()
	}
	return out
}

// SystemTopics lists the broker's system topics (%RETRY%group%topic,
// %DLQ%group), sorted by name, for its registration with the name
// servers, whose routes cover them too.
func (b *Broker) SystemTopics() []Topic {
	b.topicsMu.RLock()
	defer b.topicsMu.RUnlock()
	var out []Topic
	for name, ts := range b.topics {
		if strings.HasPrefix(name, "%") {
			out = append(out, *ts.info.Load())
		}
	}
	slices.SortFunc(out, func(x, y Topic) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// DeleteTopic removes a topic and its queues. Its records stay in the log
// until retention removes their segments, but nothing reaches them: queries
// ignore messages of topics that no longer exist (or were created again
// later), and dispatch skips them.
func (b *Broker) DeleteTopic(ctx context.Context, name string) error {
	if _, err := b.topicState(name); err != nil {
		return err
	}
	// First the tombstone: a crash between the two leaves a tombstone of a
	// topic still held, which ApplyOwnTopicTombstones completes.
	if err := b.storeTopicTombstone(ctx, name); err != nil {
		return err
	}
	// Holding appendMu, nothing more is appended to the topic; once
	// dispatch has passed the log's end, its queues are complete and can go.
	b.appendMu.Lock()
	defer b.appendMu.Unlock()
	end := b.log.End()
	if err := b.log.Sync(ctx, end); err != nil {
		return fmt.Errorf("flush commitlog: %w", err)
	}
	if err := b.waitDispatched(ctx, end); err != nil {
		return err
	}
	if v, ok := ctx.Value(keepNewerKey{}).(int64); ok {
		// Another broker's tombstone: under appendMu, no publish can be
		// acknowledged between this look and the delete.
		b.topicsMu.RLock()
		ts := b.topics[name]
		b.topicsMu.RUnlock()
		if ts == nil {
			return ErrTopicNotFound
		}
		if newest := b.newestPublish(ts); newest >= v {
			return &keptNewerError{newest: newest}
		}
	}
	// The groups' retry topics of it go too: their copies (and the timers
	// still to bring them back) belong to the deleted topic. A retry topic
	// made again later is a new incarnation, which the old copies' timers
	// cannot reach.
	gone := []string{name}
	b.topicsMu.RLock()
	for n := range b.topics {
		if isRetryTopicOf(n, name) {
			gone = append(gone, n)
		}
	}
	b.topicsMu.RUnlock()
	subs, err := b.Subscriptions(ctx)
	if err != nil {
		return err
	}
	dead, err := b.deadLettersOf(ctx, name)
	if err != nil {
		return err
	}
	txns, err := b.meta.DeleteTopicWith(ctx, meta.TopicDelete{Name: name, RetryTopics: gone[1:], DeadLetters: dead})
	if err != nil && !errors.Is(err, meta.ErrNotFound) {
		return fmt.Errorf("delete topic %q: %w", name, err)
	}
	if txns > 0 {
		// Their messages can never be delivered: decided now, not left
		// prepared (and checked) until their timeouts.
		b.logger.Warn("prepared transactions rolled back with their topic", slog.String("topic", name), slog.Int64("transactions", txns))
		b.metrics.txn.rolledBack.Add(float64(txns))
	}
	for g, offs := range dead {
		b.logger.Warn("dead letters deleted with their topic", slog.String("topic", name), slog.String("group", g), slog.Int("dead_letters", len(offs)))
	}
	b.topicsMu.Lock()
	for _, n := range gone {
		delete(b.topics, n)
	}
	if i, found := slices.BinarySearch(b.names, name); found {
		b.names = slices.Delete(b.names, i, i+1)
	}
	b.topicsMu.Unlock()
	// Its dedup ids go with it: a topic created again under the name is a
	// new topic, whose publishes must not be answered with the deleted
	// topic's messages.
	prefix := dedupKey(name, "")
	for k := range b.dedup {
		if strings.HasPrefix(k, prefix) {
			delete(b.dedup, k)
		}
	}
	// Its subscriptions went with it (in meta.DeleteTopic's transaction);
	// the groups' offsets on it too.
	for _, s := range subs {
		if s.Topic == name {
			// Said out loud: a topic created again under the name does not
			// get them back, and an operator re-creating it to change a
			// setting must know to subscribe again.
			b.logger.Warn("subscription deleted with its topic", slog.String("topic", name),
				slog.String("subscription", s.ID), slog.String("group", s.Group))
		}
	}
	b.offs.mu.Lock()
	for k := range b.offs.next {
		if slices.Contains(gone, k.topic) {
			delete(b.offs.next, k)
			delete(b.offs.dirty, k)
			delete(b.offs.progress, k)
		}
	}
	b.offs.mu.Unlock()
	// Pull groups keep their cursors in memory: a group pulling a topic
	// created again under the name starts from that topic's offsets.
	b.eng.drop(func(_, t string) bool { return slices.Contains(gone, t) })
	b.subsSig.fire()
	b.dispatchMu.Lock()
	for _, n := range gone {
		if derr := b.cq.DeleteTopic(n); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete queues of %q: %w", n, derr))
		}
	}
	for k := range b.queueBytes {
		if slices.Contains(gone, k.Topic) {
			delete(b.queueBytes, k)
		}
	}
	b.checkpointDirty = true
	b.dispatchMu.Unlock()
	if err != nil {
		return err
	}
	b.logger.Info("topic deleted", slog.String("topic", name))
	b.topicsSig.fire()
	// A checkpoint past the topic's last record keeps recovery from
	// dispatching it again, into a topic of the same name created later.
	return b.checkpoint()
}

// isRetryTopicOf reports whether n is a group's retry topic of topic:
// RetryTopic(group, topic). Group names cannot hold '%', so the group is
// everything between the prefix and the next '%'.
func isRetryTopicOf(n, topic string) bool {
	rest, ok := strings.CutPrefix(n, "%RETRY%")
	if !ok {
		return false
	}
	i := strings.IndexByte(rest, '%')
	return i >= 0 && rest[i+1:] == topic
}

// topicAlive reports whether a stored message still belongs to a live
// topic: the topic exists, was not re-created after the message, and its
// retention has not passed. A delayed message waiting for its timer is not
// subject to retention: it is put back on its queue as a new record when
// due, and retention counts from then (so a delay longer than the
// retention loses nothing, and the message stays findable meanwhile).
func (b *Broker) topicAlive(m *Message, now time.Time) bool {
	b.topicsMu.RLock()
	ts := b.topics[m.Topic]
	b.topicsMu.RUnlock()
	if ts == nil {
		return false
	}
	t := ts.info.Load()
	if !t.owns(m.LogOffset, m.StoredAt.UnixMilli()) {
		return false
	}
	return m.delayed() || b.retained(t, m.StoredAt, now)
}

// retained is the one rule for what a topic still holds: a message stored
// within the topic's retention (the broker's when the topic sets none).
// The log is shared and keeps a segment for the longest retention of any
// topic, so every read path (by id, by key, by queue offset, pulls and
// pushes) asks this rather than whether the log still has the record.
func (b *Broker) retained(t *Topic, storedAt, now time.Time) bool {
	return storedAt.UnixMilli() > b.retainCutoff(t, now)
}

// retainCutoff is the store time, in unix ms, at or before which t's
// messages are no longer retained.
func (b *Broker) retainCutoff(t *Topic, now time.Time) int64 {
	keep := b.cfg.Retention
	if t.Retention > 0 {
		keep = t.Retention
	}
	return now.Add(-keep).UnixMilli()
}

// retention is what a caller needs to apply a topic's retention to its
// queues' bounds: the cutoff, and whether the log holds anything older
// (when not, no queue needs searching).
type retention struct {
	cutoff  int64 // unix ms; see retainCutoff
	nothing bool  // the log's oldest readable record is retained: so is everything
}

func (b *Broker) retentionOf(t *Topic, now time.Time) retention {
	r := retention{cutoff: b.retainCutoff(t, now)}
	if segs := b.log.Segments(); len(segs) > 0 {
		if rec, err := b.firstReadable(segs[0].Base, segs[len(segs)-1].End); err == nil && rec != nil && len(rec) >= posStoredAt+8 {
			r.nothing = int64(binary.BigEndian.Uint64(rec[posStoredAt:])) > r.cutoff
		}
	}
	return r
}

// retainedBounds is a queue's retained offsets [lo, hi): the consume
// queue's, less the entries at its start that retention has passed.
func (b *Broker) retainedBounds(t *Topic, queue int, r retention) (lo, hi int64, err error) {
	lo, hi = b.cq.Bounds(t.Name, queue)
	if lo == hi || r.nothing {
		return lo, hi, nil
	}
	floor, err := b.offsetAt(t.Name, queue, time.UnixMilli(r.cutoff+1))
	if err != nil {
		return 0, 0, fmt.Errorf("retained start of %s/%d: %w", t.Name, queue, err)
	}
	return max(lo, floor), hi, nil
}

// TopicsChanged returns a channel closed at the next change to any topic
// (for the name server client, which re-registers at once).
func (b *Broker) TopicsChanged() <-chan struct{} { return b.topicsSig.wait() }

// deadLettersOf is, by group, the DLQ offsets of the dead letters of a
// topic being deleted: its messages can no longer be read, and a redrive
// would deliver them into a topic created again under the name. They go
// in the delete's transaction; the groups' dead-letter queues stay (they
// hold other topics' too).
func (b *Broker) deadLettersOf(ctx context.Context, topic string) (map[string][]int64, error) {
	b.topicsMu.RLock()
	var groups []string
	for n := range b.topics {
		if g, ok := strings.CutPrefix(n, "%DLQ%"); ok {
			groups = append(groups, g)
		}
	}
	b.topicsMu.RUnlock()
	out := map[string][]int64{}
	for _, g := range groups {
		for after := int64(-1); ; {
			page, err := b.DeadLetters(ctx, g, after, 256)
			if err != nil {
				return nil, fmt.Errorf("dead letters of %q in group %q: %w", topic, g, err)
			}
			if len(page) == 0 {
				break
			}
			for _, d := range page {
				after = d.DLQOffset
				if d.originTopic() == topic {
					out[g] = append(out[g], d.DLQOffset)
				}
			}
		}
	}
	return out, nil
}
