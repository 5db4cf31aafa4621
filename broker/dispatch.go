package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/consumequeue"
	"github.com/postbus/postbus/broker/internal/durable"
	"github.com/postbus/postbus/broker/meta"
)

// Kinds of key-index entries; the kind is hashed with the key so one index
// serves ids, keys and dedup ids.
const (
	keyID    = 'i'
	keyKey   = 'k'
	keyDedup = 'd'
)

// FNV-1a, written out: the hash.Hash version allocates, and these run for
// every message on the dispatch path.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

func fnvAdd(h uint64, p []byte) uint64 {
	for _, c := range p {
		h ^= uint64(c)
		h *= fnvPrime64
	}
	return h
}

func fnvAddString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

// hashKey is the key-index hash of a kind and a key; hashKeyBytes of a
// kind and parts joined by NUL (topic and key). They agree:
// hashKey(k, a+"\x00"+b) == hashKeyBytes(k, a, b).
func hashKey(kind byte, key string) uint64 {
	return fnvAddString(fnvAdd(fnvOffset64, []byte{kind}), key)
}

func hashKeyBytes(kind byte, parts ...[]byte) uint64 {
	h := fnvAdd(fnvOffset64, []byte{kind})
	for i, p := range parts {
		if i > 0 {
			h = fnvAdd(h, []byte{0})
		}
		h = fnvAdd(h, p)
	}
	return h
}

// TagHash is the tag's hash stored in consume-queue entries, so filters
// can skip messages without reading the log. 0 means no tag.
func TagHash(tag string) uint64 {
	if tag == "" {
		return 0
	}
	if h := fnvAddString(fnvOffset64, tag); h != 0 {
		return h
	}
	return 1
}

func tagHashBytes(tag []byte) uint64 {
	if len(tag) == 0 {
		return 0
	}
	if h := fnvAdd(fnvOffset64, tag); h != 0 {
		return h
	}
	return 1
}

// dispatchLoop builds the consume queues and key index from the log as it
// grows (RocketMQ's reput service), and checkpoints them every
// CheckpointInterval, or once CheckpointBytes of log have been dispatched
// since the last checkpoint. Checkpoints cost fsyncs that share the disk
// with the log's own, so they are rare when traffic is light (keeping
// publish latency flat) and bounded by bytes when it is heavy (keeping the
// re-dispatch after a crash short).
func (b *Broker) dispatchLoop() {
	defer b.wg.Done()
	tick := time.NewTicker(b.cfg.CheckpointInterval)
	defer tick.Stop()
	checkpoint := func() {
		if err := b.checkpoint(); err != nil {
			b.logger.Error("checkpoint failed", slog.Any("err", err))
			return
		}
		b.refreshMarks()
	}
	for {
		changed := b.log.Changed()
		if err := b.dispatchOnce(); err != nil {
			b.logger.Error("dispatch failed; retrying", slog.Any("err", err))
			select {
			case <-time.After(100 * time.Millisecond):
			case <-b.closing:
				return
			}
			continue
		}
		b.dispatchMu.Lock()
		due := b.dispatched.Load()-b.checkpointed >= b.cfg.CheckpointBytes
		b.dispatchMu.Unlock()
		if due {
			checkpoint()
			tick.Reset(b.cfg.CheckpointInterval)
		}
		select {
		case <-changed:
		case <-tick.C:
			checkpoint()
		case <-b.closing:
			return
		}
	}
}

// dispatchOnce indexes everything committed to the log since the last round.
func (b *Broker) dispatchOnce() error {
	b.dispatchMu.Lock()
	from := b.dispatched.Load()
	next, err := b.log.Scan(from, b.dispatchRecord)
	for {
		// A damaged span is quarantined, never a reason to stop: the
		// records after it are dispatched (and the indexes rebuilt around
		// it), so one bad record cannot stop delivery or a restart.
		var ce *commitlog.CorruptError
		if !errors.As(err, &ce) || ce.Next <= ce.Off || ce.Next <= next {
			break
		}
		b.logger.Error("damaged commitlog span quarantined: its records are skipped by dispatch",
			slog.Int64("offset", ce.Off), slog.Int64("next", ce.Next), slog.String("reason", ce.Reason))
		b.metrics.skipped(skipCorrupt)
		next, err = b.log.Scan(ce.Next, b.dispatchRecord)
		if next < ce.Next {
			next = ce.Next
		}
	}
	if len(b.newTimers) > 0 {
		// The timers are stored before dispatch moves past their records,
		// so a crash replays any it did not store.
		if terr := b.meta.AddTimers(context.Background(), b.newTimers); terr != nil {
			b.newTimers = b.newTimers[:0]
			b.dispatchMu.Unlock()
			return fmt.Errorf("store timers: %w", terr)
		}
		b.newTimers = b.newTimers[:0]
		if b.timer != nil { // nil during Open's recovery: the timer starts after it
			b.timer.Wake()
		}
	}
	if len(b.newTxns) > 0 || len(b.newCommits) > 0 {
		// As timers: stored before dispatch moves past their records.
		if terr := b.meta.AddTxns(context.Background(), b.newTxns, b.newCommits); terr != nil {
			b.newTxns, b.newCommits = b.newTxns[:0], b.newCommits[:0]
			b.dispatchMu.Unlock()
			return fmt.Errorf("store transactions: %w", terr)
		}
		b.txnLive.marked(b.newCommits)
		b.txnLive.rowsStored(b.newTxns)
		if len(b.newTxns) > 0 {
			// Only a transaction due before the check loop wakes anyway
			// wakes it: each pass costs a meta.db read.
			earliest := b.newTxns[0].NextCheck
			for _, t := range b.newTxns[1:] {
				if t.NextCheck.Before(earliest) {
					earliest = t.NextCheck
				}
			}
			if earliest.UnixMilli() < b.txnWakeAt.Load() {
				b.txnSig.fire()
			}
		}
		b.newTxns, b.newCommits = b.newTxns[:0], b.newCommits[:0]
	}
	if next > from {
		b.dispatched.Store(next)
	}
	var touched []string
	for t := range b.touched {
		touched = append(touched, t)
	}
	clear(b.touched)
	b.dispatchMu.Unlock()
	if next > from {
		b.dispatchSig.fire()
	}
	// Only the polls waiting on what this round queued: a publish costs
	// the same however many polls wait on other topics.
	b.waiters.wake(touched...)
	return err
}

// dispatchRecord adds one record to its consume queue and the key index.
// Called with dispatchMu held.
func (b *Broker) dispatchRecord(off int64, rec []byte) error {
	b.replayAt.Store(off)
	h, err := decodeHeader(rec)
	if err != nil {
		// The frame's CRC was good, so this is a bug or a newer format:
		// skip it loudly rather than stop the whole broker.
		b.logger.Error("undecodable record skipped", slog.Int64("offset", off), slog.Any("err", err))
		b.metrics.skipped(skipUndecodable)
		return nil
	}
	topic := string(h.Topic)
	b.topicsMu.RLock()
	ts := b.topics[topic]
	b.topicsMu.RUnlock()
	if ts == nil || !ts.info.Load().owns(off, h.StoredAt) {
		if h.Flags&flagPrepared != 0 {
			b.txnLive.unexpect(string(h.ID)) // no row, and no transaction
		}
		return nil // the topic was deleted (and maybe created again since)
	}
	if h.Flags&(flagPrepared|flagRolledBack) == flagPrepared|flagRolledBack {
		b.dispatchRolledBack(off, rec)
		return nil
	}
	if h.Flags&flagPrepared != 0 {
		b.dispatchPrepared(off, rec, &h)
		return nil
	}
	if h.Flags&flagCommitted != 0 {
		// A transaction's commit: its row is marked by this round.
		id := string(h.ID)
		b.newCommits = append(b.newCommits, meta.TxnDecision{MsgID: id, State: meta.TxnCommitted, QueueID: h.QueueID,
			QueueOffset: h.QueueOffset, At: time.UnixMilli(h.StoredAt), Reason: b.txnLive.commitReason(id)})
	}
	if h.Flags&(flagDelayed|flagRePut) == flagDelayed {
		// Waits in the timer store; findable by id and key meanwhile. A
		// lease's visibility copy gets its timer from the lease, in the
		// transaction that moves the offsets past its message: one the
		// lease never committed (a crash, a consumer dropped) must not
		// fire beside the message handed out again from the queue.
		if h.Flags&flagLeased == 0 {
			t := meta.Timer{LogOffset: off, DeliverAt: time.UnixMilli(h.DeliverAt)}
			if h.Flags&flagRetry != 0 {
				t.Owner = topic
			}
			b.newTimers = append(b.newTimers, t)
		}
		b.indexRecord(off, &h)
		return nil
	}
	err = b.cq.Append(topic, h.QueueID, h.QueueOffset, consumequeue.Entry{
		Offset: off, Size: int32(len(rec)), TagHash: tagHashBytes(h.Tag),
	})
	if errors.Is(err, consumequeue.ErrOutOfOrder) {
		if b.queued(topic, h.QueueID, h.QueueOffset, off) {
			return nil // already there: dispatched before
		}
		if lo, hi := b.cq.Bounds(topic, h.QueueID); h.QueueOffset < hi && lo < hi {
			// A good record whose queue offset its queue already holds (or
			// passed): not the message at that offset. Quarantined, and
			// the records after it are dispatched as usual.
			b.misplacedRecord(off, len(rec), topic, h.QueueID, h.QueueOffset, hi)
			return nil
		}
		if b.fillHoles(topic, h.QueueID, h.QueueOffset, off) {
			err = b.cq.Append(topic, h.QueueID, h.QueueOffset, consumequeue.Entry{
				Offset: off, Size: int32(len(rec)), TagHash: tagHashBytes(h.Tag),
			})
		}
	}
	switch {
	case errors.Is(err, consumequeue.ErrOutOfOrder):
		// Appends hand out queue offsets in log order under one lock, so
		// this is a fault: say so loudly, and keep dispatching the rest.
		b.logger.Error("record not queued: queue offset out of order; skipped", slog.String("topic", topic),
			slog.Int("queue", h.QueueID), slog.Int64("queue_offset", h.QueueOffset),
			slog.Int64("offset", off), slog.Any("err", err))
		b.metrics.skipped(skipOutOfOrder)
		return nil
	case err != nil:
		return fmt.Errorf("append to queue %s/%d: %w", topic, h.QueueID, err)
	}
	b.queueBytes[consumequeue.QueueID{Topic: topic, Queue: h.QueueID}] += int64(len(rec))
	if b.touched == nil {
		b.touched = make(map[string]struct{})
	}
	b.touched[topic] = struct{}{}
	b.indexRecord(off, &h)
	return nil
}

// holeSize is the size of a consume-queue entry that stands for a record
// lost in a damaged (quarantined) span of the log. No record is that small,
// so readers know the entry is a hole and do not read the log there.
const holeSize = 1

// liveBytes is what an entry counts in a queue's bytes: its record's size,
// or nothing for a hole.
func liveBytes(e consumequeue.Entry) int64 {
	if e.Size == holeSize {
		return 0
	}
	return int64(e.Size)
}

// fillHoles keeps the queue offsets of records lost in damaged spans: when
// the record at off, due at queue offset qoff, finds its queue short of
// qoff, and quarantined spans lie between the queue's last entry and off,
// the missing offsets become holes pointing into those spans, so the
// records after the damage keep the offsets they were acknowledged with.
// It reports whether it filled the gap. Called with dispatchMu held.
func (b *Broker) fillHoles(topic string, queue int, qoff, off int64) bool {
	lo, hi := b.cq.Bounds(topic, queue)
	if qoff <= hi || lo == hi {
		return false
	}
	es, err := b.cq.Read(topic, queue, hi-1, 1, nil)
	if err != nil || len(es) != 1 {
		return false
	}
	after, missing := es[0].Offset, qoff-hi
	holes := b.holeOffsets(after, off, missing)
	if int64(len(holes)) < missing {
		// Not explained by damage: the records are missing from the log.
		return b.gapHoles(topic, queue, after, hi, qoff, off)
	}
	for i, o := range holes {
		if err := b.cq.Append(topic, queue, hi+int64(i), consumequeue.Entry{Offset: o, Size: holeSize}); err != nil {
			b.logger.Error("could not keep a hole for a quarantined record", slog.String("topic", topic),
				slog.Int("queue", queue), slog.Int64("queue_offset", hi+int64(i)), slog.Any("err", err))
			return false
		}
	}
	b.logger.Error("queue offsets of records lost in a damaged log span kept as holes", slog.String("topic", topic),
		slog.Int("queue", queue), slog.Int64("from", hi), slog.Int64("to", qoff))
	return true
}

// queued reports whether the queue already holds the record at log offset
// off as its entry qoff: a record dispatched a second time.
func (b *Broker) queued(topic string, queue int, qoff, off int64) bool {
	if lo, hi := b.cq.Bounds(topic, queue); qoff < lo || qoff >= hi {
		return false
	}
	es, err := b.cq.Read(topic, queue, qoff, 1, nil)
	return err == nil && len(es) == 1 && es[0].Offset == off
}

// indexRecord adds a record's id, keys and dedup id to the key index. A
// re-put or retry copy is indexed again under the same id: lookups return
// the newest copy.
func (b *Broker) indexRecord(off int64, h *recordHeader) {
	b.idx.Add(hashKeyBytes(keyID, h.ID), off)
	h.eachKey(func(k []byte) {
		b.idx.Add(hashKeyBytes(keyKey, h.Topic, k), off)
	})
	if len(h.DedupID) > 0 && h.Flags&(flagRePut|flagRetry|flagDead) == 0 {
		b.idx.Add(hashKeyBytes(keyDedup, h.Topic, h.DedupID), off)
	}
}

// waitDispatched waits until the indexes cover the log up to off.
func (b *Broker) waitDispatched(ctx context.Context, off int64) error {
	for b.dispatched.Load() < off {
		ch := b.dispatchSig.wait()
		if b.dispatched.Load() >= off {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
			// The dispatcher may be gone (closing); dispatch ourselves.
			if err := b.dispatchOnce(); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkpoint is the point recovery re-dispatches from. Everything the
// indexes hold before Dispatched is flushed before it is written. It also
// records what the indexes held then, so that recovery notices an index
// that lost data (a deleted directory) and rebuilds it from the log.
type checkpoint struct {
	Dispatched   int64                      `json:"dispatched"`
	IndexEntries int64                      `json:"index_entries"`
	Queues       map[string]checkpointQueue `json:"queues"` // by "topic/queue"
}

type checkpointQueue struct {
	Max   int64 `json:"max"`   // the queue's max offset
	Bytes int64 `json:"bytes"` // live bytes in the queue
}

const checkpointFile = "checkpoint.json"

func queueName(q consumequeue.QueueID) string { return q.Topic + "/" + strconv.Itoa(q.Queue) }

func parseQueueName(s string) (consumequeue.QueueID, bool) {
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return consumequeue.QueueID{}, false
	}
	n, err := strconv.Atoi(s[i+1:])
	return consumequeue.QueueID{Topic: s[:i], Queue: n}, err == nil
}

// writeCheckpoint flushes the derived indexes and writes the checkpoint;
// checkpoint (health.go) calls it and keeps count of its failures.
func (b *Broker) writeCheckpoint() error {
	b.dispatchMu.Lock()
	defer b.dispatchMu.Unlock()
	if b.checkpointed == b.dispatched.Load() && !b.checkpointDirty {
		return nil
	}
	if err := b.cq.Flush(); err != nil {
		return fmt.Errorf("flush consume queues: %w", err)
	}
	if err := b.idx.Flush(); err != nil {
		return fmt.Errorf("flush key index: %w", err)
	}
	cp := checkpoint{
		Dispatched:   b.dispatched.Load(),
		IndexEntries: b.idx.Stats().Entries,
		Queues:       make(map[string]checkpointQueue, len(b.queueBytes)),
	}
	for q, n := range b.queueBytes {
		_, hi := b.cq.Bounds(q.Topic, q.Queue)
		cp.Queues[queueName(q)] = checkpointQueue{Max: hi, Bytes: n}
	}
	data, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(b.cfg.FS, filepath.Join(b.cfg.Dir, checkpointFile), data, 0o644); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	b.checkpointed, b.checkpointDirty = cp.Dispatched, false
	return nil
}

// errBadCheckpoint: checkpoint.json does not parse. Recovery then starts
// from the zero checkpoint, rebuilding everything, and says so.
var errBadCheckpoint = errors.New("checkpoint unreadable")

// readCheckpoint reads the checkpoint; a missing one is the zero
// checkpoint, from which recovery rebuilds everything, and so is an
// unreadable one (returned with errBadCheckpoint).
func readCheckpoint(dir string) (checkpoint, error) {
	var cp checkpoint
	data, err := os.ReadFile(filepath.Join(dir, checkpointFile))
	if errors.Is(err, os.ErrNotExist) {
		return checkpoint{}, nil
	}
	if err != nil {
		return cp, fmt.Errorf("read checkpoint: %w", err)
	}
	if err := json.Unmarshal(data, &cp); err != nil {
		return checkpoint{}, fmt.Errorf("%w: %v", errBadCheckpoint, err)
	}
	return cp, nil
}
