package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nuid"
	"github.com/postbus/postbus/broker/commitlog"
)

// Batch limits of the API: one batch is one append.
const (
	MaxBatchMessages = 1000
	MaxBatchBytes    = 4 << 20
)

// Result is what a publish answers for one message.
type Result struct {
	ID          string
	Topic       string
	QueueID     int
	QueueOffset int64
	DeliverAt   time.Time // zero unless delayed
	Duplicate   bool      // a dedup id matched: nothing new was stored
	logOffset   int64     // where the record went in the log
	storedAt    time.Time // its stored-at stamp (set with logOffset)
}

// Publish validates msgs, stores them in one append and returns once they
// are durable as configured (after fsync with SyncFlush). It is all or
// nothing: when it returns an error, none of msgs was stored, except that a
// failure of the fsync itself (or ctx ending while waiting for it) leaves the
// outcome unknown, as with any lost acknowledgement.
func (b *Broker) Publish(ctx context.Context, topic string, msgs []*Message) ([]Result, error) {
	if b.isClosing() {
		return nil, ErrClosed
	}
	now := b.now()
	total, err := b.check(topic, msgs, now)
	if err != nil {
		if code := CodeOf(err); code != "" {
			b.metrics.rejected(code)
		}
		return nil, err
	}
	if b.diskFull.Load() {
		b.metrics.rejected(CodeDiskFull)
		return nil, &Error{Code: CodeDiskFull, Err: ErrDiskFull, Detail: fmt.Sprintf("the disk holding the data directory is over %.0f%% full; publishes are refused until retention frees space", b.cfg.DiskFullRatio*100)}
	}
	if err := b.meta.Corrupt(); err != nil {
		// A delayed message is put on its queue by a timer stored in
		// meta.db: with the file damaged the timer may not be stored, and
		// the message would wait for ever. Refused before anything is
		// stored. (A plain message needs nothing from meta.db to be kept
		// and read back.)
		for _, m := range msgs {
			if !m.DeliverAt.IsZero() {
				b.metrics.rejected(CodeUnavailable)
				return nil, &Error{Code: CodeUnavailable, Err: err, Detail: "the metadata database is damaged, so the timer " +
					"of a delayed message cannot be stored; nothing was stored. The broker needs a restart with --rebuild-metadata"}
			}
		}
	}
	for _, m := range msgs {
		m.ID = nuid.Next()
		m.Topic = topic
		m.BornAt = now
		if !m.DeliverAt.IsZero() {
			m.flags |= flagDelayed
		}
	}
	// A topic deleted (and perhaps created again) between looking it up and
	// appending makes the append refuse the stale topic: the publish then
	// starts again on whatever the topic is now, so it is stored under the
	// topic it is acknowledged for, with that topic's queues and offsets,
	// or refused if the topic is gone.
	for attempt := 0; ; attempt++ {
		ts, err := b.topicForPublish(ctx, topic)
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			m.QueueID = ts.pickQueue(m.ShardingKey)
		}
		results, err := b.store(ctx, ts, msgs, true)
		if errors.Is(err, errStaleTopic) && attempt < maxStaleRetries {
			continue
		}
		if errors.Is(err, errStaleTopic) {
			return nil, &Error{Code: CodeUnavailable, Detail: fmt.Sprintf("topic %q was deleted and created again %d times while publishing; nothing was stored", topic, attempt+1), Err: err}
		}
		if err != nil {
			return nil, err
		}
		b.metrics.published(topic, len(msgs), total)
		return results, nil
	}
}

// errStaleTopic: the topic state a publish looked up was deleted before its
// append; nothing was stored.
var errStaleTopic = errors.New("topic deleted while publishing")

// maxStaleRetries bounds how often one publish starts again after its topic
// was deleted under it; each retry needs a delete and a create in between.
const maxStaleRetries = 8

// store encodes msgs (whose ids, topic and queues are set), appends them in
// one append and waits until they are durable. With dedup, messages whose
// dedup id was seen within the window are answered with the first one's
// result and not stored. A delayed message takes no queue offset now: it
// gets one when the timer puts it on its queue.
func (b *Broker) store(ctx context.Context, ts *topicState, msgs []*Message, dedup bool) ([]Result, error) {
	// Work that needs no lock happens here: encoding, dedup look-ups.
	results := make([]Result, len(msgs))
	recs := make([][]byte, len(msgs))
	for i, m := range msgs {
		recs[i] = encodeRecord(make([]byte, 0, recordFixedLen+96+len(m.Topic)+len(m.Body)), m)
		results[i] = Result{ID: m.ID, Topic: m.Topic, QueueID: m.QueueID, DeliverAt: m.DeliverAt}
		if m.delayed() {
			results[i].QueueOffset = -1
		}
	}
	// No batch within the API's limits takes more than MaxBatchStoredBytes
	// as stored: refuse more here, for good, rather than have the append
	// fail as if it could work on a retry. (Its segment is no limit: a
	// batch larger than a segment gets one of its own.)
	var stored int64
	for _, r := range recs {
		stored += int64(len(r))
	}
	if n := commitlog.MinSegmentSize(stored, len(recs)); n > MaxBatchStoredBytes {
		b.metrics.rejected(CodeBatchTooLarge)
		return nil, errf(CodeBatchTooLarge, "", "the batch takes %d bytes as stored (bodies, keys, properties and the rest); the limit is %d", n, MaxBatchStoredBytes)
	}
	var dups []bool
	if dedup {
		var err error
		if dups, err = b.dedupFromIndex(ctx, ts, msgs, results); err != nil {
			// Storing anyway could store a duplicate the producer asked
			// us to drop: refuse, so that its retry decides.
			b.logger.Error("dedup lookup failed; publish refused", slog.String("topic", ts.name), slog.Any("err", err))
			b.metrics.rejected(CodeUnavailable)
			return nil, &Error{Code: CodeUnavailable, Err: err,
				Detail: "the dedup ids could not be checked against the messages stored before the broker started; nothing was stored, retry"}
		}
	}
	end, wait, err := b.append(ts, msgs, recs, results, dups, dedup)
	if err != nil {
		return nil, err
	}
	if wait != nil {
		// A replica group's leader: the batch is on its way through raft.
		if err := wait(); err != nil {
			return nil, err
		}
	}
	if end >= 0 {
		if err := b.log.Sync(ctx, end); err != nil {
			if errors.Is(err, commitlog.ErrFailed) {
				return nil, errLogFailed(err)
			}
			return nil, fmt.Errorf("flush commitlog: %w", err)
		}
		b.witnessLogEnd(b.log.Committed())
	}
	return results, nil
}

// Check validates a publish without storing anything: what Publish would
// refuse for its input, it refuses too. It lets a caller spend a rate
// limit only on publishes that can succeed.
func (b *Broker) Check(topic string, msgs []*Message) error {
	_, err := b.check(topic, msgs, b.now())
	return err
}

// check validates topic and msgs and returns the bodies' total size.
func (b *Broker) check(topic string, msgs []*Message, now time.Time) (int, error) {
	if err := ValidateTopicName(topic); err != nil {
		return 0, err
	}
	if len(msgs) == 0 {
		return 0, errf(CodeInvalidBatch, "", "a batch needs at least one message")
	}
	if len(msgs) > MaxBatchMessages {
		return 0, errf(CodeBatchTooLarge, "", "%d messages; a batch holds at most %d", len(msgs), MaxBatchMessages)
	}
	total := 0
	for i, m := range msgs {
		if err := m.validate("", b.cfg.MaxMessageBytes, b.cfg.MaxDelay, now); err != nil {
			if len(msgs) > 1 {
				// Again, naming the item: formatting its prefix for every
				// message of every batch cost more than the checks.
				err = m.validate(fmt.Sprintf("[%d].", i), b.cfg.MaxMessageBytes, b.cfg.MaxDelay, now)
			}
			return 0, err
		}
		total += len(m.Body)
	}
	if total > MaxBatchBytes {
		return 0, errf(CodeBatchTooLarge, "", "the batch's bodies total %d bytes; the limit is %d", total, MaxBatchBytes)
	}
	return total, nil
}

// append assigns queue offsets and appends under appendMu. It returns the
// log end to wait for, or -1 when every message was a duplicate, and in a
// replica group what to wait on, without appendMu, for the batch's commit.
func (b *Broker) append(ts *topicState, msgs []*Message, recs [][]byte, results []Result, dups []bool, dedup bool) (int64, func() error, error) {
	b.appendMu.Lock()
	defer b.appendMu.Unlock()
	if b.isClosing() {
		return 0, nil, ErrClosed
	}
	// Under appendMu the topic cannot be deleted or created: if ts is still
	// the topic of its name now, it stays so until this append is done.
	b.topicsMu.RLock()
	current := b.topics[ts.name] == ts
	b.topicsMu.RUnlock()
	if !current {
		return 0, nil, fmt.Errorf("append to %q: %w", ts.name, errStaleTopic)
	}
	now := b.now()
	keep := recs[:0:0]
	kept := make([]int, 0, len(msgs)) // index in msgs of each kept record
	var firstOfBatch map[string]int   // dedup key -> index of its first message in this batch
	for i, m := range msgs {
		// Only a producer's publish is deduplicated; the broker's own
		// copies (re-puts, retries, dead letters) keep the dedup id they
		// carry but are always stored.
		if dedup && m.DedupID != "" {
			key := dedupKey(ts.name, m.DedupID)
			if j, ok := firstOfBatch[key]; ok {
				results[i] = results[j]
				results[i].Duplicate = true
				continue
			}
			if e, ok := b.dedup[key]; ok && now.Sub(e.at) < b.cfg.DedupWindow {
				results[i] = e.res
				results[i].Duplicate = true
				continue
			}
			if dups != nil && dups[i] {
				continue
			}
			if firstOfBatch == nil {
				firstOfBatch = make(map[string]int)
			}
			firstOfBatch[key] = i
		}
		if m.delayed() {
			patchRecord(recs[i], now, 0)
			keep = append(keep, recs[i])
			kept = append(kept, i)
			continue
		}
		q := m.QueueID
		patchRecord(recs[i], now, ts.next[q])
		results[i].QueueOffset = ts.next[q]
		ts.next[q]++
		keep = append(keep, recs[i])
		kept = append(kept, i)
	}
	if len(keep) == 0 {
		return -1, nil, nil
	}
	if err := b.reserve(ts); err != nil {
		// Nothing was stored: give back the queue offsets handed out.
		for _, i := range kept {
			if !msgs[i].delayed() {
				ts.next[msgs[i].QueueID]--
			}
		}
		return 0, nil, err
	}
	offs, end, wait, err := b.appendLog(keep)
	if err == nil && dedup {
		ts.lastPublish = now.UnixMilli()
	}
	if errors.Is(err, commitlog.ErrFailed) {
		// The batch may be on disk (a failed fsync, or a failed write it
		// could not zero again): its queue offsets stay taken, or a later
		// record could claim the same ones at the next recovery. The log
		// refuses every append from now on; a restart decides.
		return 0, nil, errLogFailed(err)
	}
	if err != nil {
		// Nothing was stored: give back the queue offsets handed out.
		for _, i := range kept {
			if !msgs[i].delayed() {
				ts.next[msgs[i].QueueID]--
			}
		}
		if errors.Is(err, commitlog.ErrDiskFull) {
			b.metrics.rejected(CodeDiskFull)
			return 0, nil, &Error{Code: CodeDiskFull, Detail: "the disk is full: the commitlog could not allocate a new segment; nothing was stored", Err: errors.Join(ErrDiskFull, err)}
		}
		if errors.Is(err, commitlog.ErrTooLarge) {
			// The check in store makes this unreachable: the commitlog
			// refuses only batches far over MaxBatchStoredBytes.
			b.metrics.rejected(CodeBatchTooLarge)
			return 0, nil, &Error{Code: CodeBatchTooLarge, Detail: "the batch does not fit in one commitlog segment; nothing was stored", Err: err}
		}
		b.logger.Error("commitlog append failed", slog.Any("err", err))
		return 0, nil, &Error{Code: CodeUnavailable, Detail: "the commitlog could not store the messages; nothing was stored", Err: err}
	}
	for j, i := range kept {
		results[i].logOffset, results[i].storedAt = offs[j], time.UnixMilli(now.UnixMilli())
	}
	for key, i := range firstOfBatch {
		b.dedup[key] = dedupEntry{res: results[i], at: now}
	}
	if wait != nil && len(firstOfBatch) > 0 {
		wait = b.forgetDedupOnFailure(wait, firstOfBatch, results)
	}
	return end, wait, nil
}

// forgetDedupOnFailure wraps a replicated batch's wait: a batch that may
// not be stored must not answer a retry of its dedup ids as a duplicate of
// itself. (A function of its own, so that append's variables do not escape
// into a closure on the standalone path.)
func (b *Broker) forgetDedupOnFailure(wait func() error, firstOfBatch map[string]int, results []Result) func() error {
	return func() error {
		err := wait()
		if err != nil {
			b.appendMu.Lock()
			for key, i := range firstOfBatch {
				if e, ok := b.dedup[key]; ok && e.res.ID == results[i].ID {
					delete(b.dedup, key)
				}
			}
			b.appendMu.Unlock()
		}
		return err
	}
}

// errLogFailed is a publish's answer once the commitlog has failed (see
// commitlog.ErrFailed): retrying will not help until the broker restarts,
// and whether this publish was stored only recovery can tell.
func errLogFailed(err error) error {
	return &Error{Code: CodeUnavailable, Err: err,
		Detail: "the commitlog failed (an fsync or a write it could not undo): the broker refuses publishes until it is restarted, and whether these messages were stored is unknown"}
}

// dedupFromIndex finds, for messages with a dedup id, a message stored
// before this process started and still within the window. Messages stored
// since start are in b.dedup, checked under appendMu. It runs outside the
// lock because it may read the disk. It returns nil when it looked at none
// (the common case: no dedup ids, or the window since start has passed).
// A failed look-up is an error: the caller must not store what may be a
// duplicate. A damaged record on the way is not (it is logged and counted
// by lookup): the id it held cannot be known.
func (b *Broker) dedupFromIndex(ctx context.Context, ts *topicState, msgs []*Message, results []Result) ([]bool, error) {
	topic, t := ts.name, ts.info.Load()
	now := b.now()
	if now.Sub(b.started) >= b.cfg.DedupWindow {
		return nil, nil
	}
	var dups []bool
	for i, m := range msgs {
		if m.DedupID == "" {
			continue
		}
		if dups == nil {
			dups = make([]bool, len(msgs))
		}
		key := dedupKey(topic, m.DedupID)
		_, err := b.lookup(ctx, hashKey(keyDedup, key), func(stored *Message) bool {
			if stored.Topic != topic || stored.DedupID != m.DedupID || stored.StoredAt.After(b.started) {
				return true
			}
			if !t.owns(stored.LogOffset, stored.StoredAt.UnixMilli()) {
				return false // a deleted topic's: this topic has not seen the id
			}
			if now.Sub(stored.StoredAt) < b.cfg.DedupWindow {
				dups[i] = true
				results[i] = Result{ID: stored.ID, Topic: topic, QueueID: stored.QueueID,
					QueueOffset: stored.QueueOffset, DeliverAt: stored.DeliverAt, Duplicate: true}
			}
			return false
		})
		if err != nil {
			return nil, fmt.Errorf("dedup id %q: %w", m.DedupID, err)
		}
	}
	return dups, nil
}

func dedupKey(topic, id string) string { return topic + "\x00" + id }

// pruneDedup forgets dedup ids older than the window.
func (b *Broker) pruneDedup() {
	b.appendMu.Lock()
	defer b.appendMu.Unlock()
	now := b.now()
	for k, e := range b.dedup {
		if now.Sub(e.at) >= b.cfg.DedupWindow {
			delete(b.dedup, k)
		}
	}
}

// pickQueue hashes a sharding key to a queue, so one key keeps its order,
// and spreads everything else round-robin.
func (ts *topicState) pickQueue(shardingKey string) int {
	n := ts.info.Load().Queues
	if shardingKey != "" {
		return int(fnvAddString(fnvOffset64, shardingKey) % uint64(n))
	}
	return int((ts.rr.Add(1) - 1) % uint32(n))
}
