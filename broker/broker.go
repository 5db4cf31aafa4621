package broker

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/consumequeue"
	"github.com/postbus/postbus/broker/delaytimer"
	"github.com/postbus/postbus/broker/internal/vfs"
	"github.com/postbus/postbus/broker/keyindex"
	"github.com/postbus/postbus/broker/meta"
)

// Broker is one broker: it owns a data directory and everything in it.
type Broker struct {
	cfg     Config
	logger  *slog.Logger
	now     func() time.Time
	started time.Time

	lockFile *os.File // flock'd: one process per data directory
	log      *commitlog.Log
	cq       *consumequeue.Store
	idx      *keyindex.Index
	meta     *meta.Store
	metrics  *metrics

	// appendMu serialises appends so that queue offsets follow log order.
	// It guards topicState.next and dedup.
	appendMu sync.Mutex
	dedup    map[string]dedupEntry
	repl     replState // in a replica group: appends in flight; guarded by appendMu

	topicsMu sync.RWMutex
	topics   map[string]*topicState // guarded by topicsMu
	// names is the user topics' names (no system topics), sorted, kept in
	// step with topics so that listing them never sorts: a broker in a
	// cluster lists every topic in each heartbeat. Guarded by topicsMu.
	names []string

	// dispatchMu is held by the dispatcher while it appends to the derived
	// indexes and by checkpoint, so a checkpoint never sees half a dispatch.
	dispatchMu  sync.Mutex
	queueBytes  map[consumequeue.QueueID]int64 // live bytes per queue; guarded by dispatchMu
	dispatched  atomic.Int64                   // the log offset up to which indexes are built
	replayAt    atomic.Int64                   // the offset dispatch is at, for progress logs of a rebuild
	dispatchSig signal                         // fired after each dispatch round
	// touched is the queue topics the dispatch round under way put
	// records in, whose held polls it wakes (pollwake.go); guarded by
	// dispatchMu.
	touched map[string]struct{}
	waiters pollWaiters // held long polls' wake-ups, by queue topic
	// checkpointed is the offset of the last checkpoint written, and
	// checkpointDirty says whether queueBytes changed otherwise since;
	// both guarded by dispatchMu.
	checkpointed    int64
	checkpointDirty bool
	ckpt            checkpointHealth
	// lostTail is the stretches of the log that the checkpoint or the
	// indexes prove were stored but the log no longer holds (a segment
	// deleted or cut while stopped, at its end or its start), found at
	// open; set once, then read only. The queue offsets of a lost end are
	// kept as holes (lostQueueMax); those of a lost start fall below the
	// queues' new start.
	lostTail  []DamagedSpan
	misplaced misplacedSpans // records that contradict their position, and queue gaps kept as holes
	// recovering: Open's dispatch of the log is running (queue gaps become
	// holes, see gapHoles); set and read only by Open's goroutine.
	recovering   bool
	lostUntil    []int64 // per span found by this start: forget it once the log starts there
	lostQueueMax map[consumequeue.QueueID]int64
	marks        marksState // queue-offset reservations; guarded by appendMu
	logEnd       logEndWitness
	newTimers    []meta.Timer      // delayed records met by this dispatch round; guarded by dispatchMu
	timer        *delaytimer.Timer // fires the timers of delayed messages; set by Open, after open
	newTxns      []meta.Txn        // prepared records met by this dispatch round; guarded by dispatchMu
	txnSig       signal            // fired when dispatch adds transactions: the check loop looks again
	txnWakeAt    atomic.Int64      // unix ms the check loop sleeps until (0 while it looks): later checks need not wake it
	txnMu        txnLocks          // one decision at a time per transaction
	txnChecker   atomic.Pointer[TxnChecker]
	decisions    decideBatch        // transaction decisions being written together
	txnLive      txnLive            // commits not yet marked in their rows, and commits of unknown outcome
	producers    sync.Map           // names of producer groups known to exist (never deleted): a prepare reads no row
	newCommits   []meta.TxnDecision // commit copies met by this dispatch round; guarded by dispatchMu
	txnCheckErrs atomic.Int64       // failed look-ups of due checks since the last that worked
	deferred     deferredMetrics    // deferred acknowledgement of push deliveries (deferred.go)
	deferredSig  signal             // fired when a deferred delivery is settled by its token

	receiptKey []byte    // MACs receipts
	eng        *Engine   // the consumer engine: leases and settles for pull and push
	polls      heldPolls // long polls waiting for messages, by group
	offs       offsets
	subsSig    signal // fired when a subscription changes
	// name is this broker's name in a cluster, for the versions of the
	// subscription changes it mints; clock mints them (subsync.go).
	name  atomic.Pointer[string]
	clock versionClock
	// syncMu serialises the application of other brokers' subscription
	// records, so that a create's positioning and its insert are not
	// interleaved with another record's.
	syncMu sync.Mutex
	// keptNewer is, per topic, the version of the last tombstone that was
	// not applied because the copy here holds messages stored after it
	// (logged at ERROR once per version); guarded by syncMu.
	keptNewer  map[string]int64
	topicsSig  signal // fired when a topic is created, changed or deleted
	attemptsMu sync.Mutex
	attempts   []meta.Attempt // not yet written; guarded by attemptsMu

	diskFull atomic.Bool
	// retentionHeldAt and diskCleanHeldAt are 1 + the offset of the
	// prepared record last logged as keeping segments from deletion
	// (retention.go noteHeld).
	retentionHeldAt, diskCleanHeldAt atomic.Int64
	diskUsed                         atomic.Uint64 // float64 bits of the last disk-use ratio
	closing                          chan struct{}
	closeOnce                        sync.Once
	closeErr                         error
	wg                               sync.WaitGroup
}

// Engine is the broker's consumer engine.
func (b *Broker) Engine() *Engine { return b.eng }

// MaxMessageBytes is the largest body a publish may carry.
func (b *Broker) MaxMessageBytes() int { return b.cfg.MaxMessageBytes }

type topicState struct {
	name string
	info atomic.Pointer[Topic] // replaced whole when the topic changes
	next []int64               // next queue offset per queue; guarded by Broker.appendMu
	// reserved is each queue's mark in queuemarks.json: no offset at or
	// above it was handed out (see reserve); guarded by Broker.appendMu.
	reserved []int64
	rr       atomic.Uint32 // round-robin queue selection
	// lastPublish is when this process last stored a producer's publish
	// in the topic (Unix ms; 0: not since it started); guarded by
	// Broker.appendMu. See newestPublish.
	lastPublish int64
}

func newTopicState(t Topic) *topicState {
	ts := &topicState{name: t.Name, next: make([]int64, t.Queues)}
	ts.info.Store(&t)
	return ts
}

type dedupEntry struct {
	res Result
	at  time.Time
}

// Open opens (creating if needed) the broker's data directory, recovers the
// commitlog, rebuilds the derived indexes past their checkpoint and starts
// the background work: dispatch, checkpoints, retention.
func Open(ctx context.Context, cfg Config) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("broker config: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FS == nil {
		cfg.FS = vfs.OS
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	b := &Broker{
		cfg:        cfg,
		logger:     cfg.Logger,
		now:        cfg.Now,
		started:    cfg.Now(),
		dedup:      make(map[string]dedupEntry),
		topics:     make(map[string]*topicState),
		queueBytes: make(map[consumequeue.QueueID]int64),
		closing:    make(chan struct{}),
		metrics:    newMetrics(cfg.MetricsTopics, cfg.Logger),
	}
	b.eng = newEngine(b)
	b.deferred = newDeferredMetrics()
	b.txnMu.seed = maphash.MakeSeed()
	b.SetTxnChecker(cfg.TxnChecker)
	if err := b.open(ctx); err != nil {
		if cerr := b.closeFiles(); cerr != nil {
			// The open error is the answer; this one is only worth a line.
			b.logger.Warn("closing after a failed open", slog.Any("err", cerr))
		}
		if ctx.Err() != nil {
			// Told to stop (a signal while opening): nothing is damaged,
			// whatever the step that met the cancelled context says.
			return nil, fmt.Errorf("stopped while starting: %w", ctx.Err())
		}
		return nil, err
	}
	maxVersion, err := b.meta.MaxSubscriptionVersion(ctx)
	if err != nil {
		if cerr := b.closeFiles(); cerr != nil {
			b.logger.Warn("closing after a failed open", slog.Any("err", cerr))
		}
		return nil, err
	}
	b.clock.observe(maxVersion) // no version minted below one stored
	b.metrics.register(b, cfg.Registerer)
	b.timer = delaytimer.Start(delaytimer.Config{
		Store: claimingStore{b.meta}, Host: (*timerHost)(b), Now: b.now,
		Logger: b.logger.With(slog.String("component", "delaytimer")),
	})
	b.eng.start()
	b.wg.Add(5)
	go b.txnLoop()
	go b.dispatchLoop()
	go b.retentionLoop()
	go b.consumeLoop()
	go b.verifyLoop()
	return b, nil
}

func (b *Broker) open(ctx context.Context) error {
	start := time.Now()
	lock, err := lockDir(b.cfg.FS, b.cfg.Dir)
	if err != nil {
		return err
	}
	b.lockFile = lock

	if b.cfg.Replica != nil {
		b.log = b.cfg.Replica.Log
	} else if b.log, err = commitlog.Open(b.logConfig()); err != nil {
		return fmt.Errorf("open commitlog: %w", err)
	}
	if err := b.openMeta(ctx); err != nil {
		return err
	}
	return b.openRest(ctx, start)
}

// LogConfig is the commitlog configuration a broker opened with cfg uses.
func LogConfig(cfg Config) commitlog.Config {
	b := &Broker{cfg: cfg, logger: cfg.Logger}
	if b.logger == nil {
		b.logger = slog.New(slog.DiscardHandler)
	}
	if b.cfg.FS == nil {
		b.cfg.FS = vfs.OS
	}
	return b.logConfig()
}

func (b *Broker) logConfig() commitlog.Config {
	lcfg := commitlog.DefaultConfig(filepath.Join(b.cfg.Dir, "commitlog"))
	lcfg.SegmentSize = b.cfg.SegmentSize
	lcfg.Sync = b.cfg.SyncFlush
	lcfg.FlushInterval = b.cfg.FlushInterval
	// Publishes are held to MaxMessageBytes before they reach the log; the
	// log itself must take any record a broker may have to append again —
	// a delayed message falling due, a retry or dead-letter copy — and
	// those were stored under whatever limit was in force then, up to
	// the highest any configuration allows. A lowered flag must never
	// wedge the timer that puts an older, larger message back.
	lcfg.MaxPayload = int(maxRecordBytes(MaxBatchBytes))
	lcfg.Logger = b.logger.With(slog.String("component", "commitlog"))
	lcfg.FS = b.cfg.FS
	return lcfg
}

func (b *Broker) openRest(ctx context.Context, start time.Time) error {
	topics, err := b.meta.Topics(ctx)
	if err != nil {
		return fmt.Errorf("load topics: %w", err)
	}
	for _, t := range topics {
		b.topics[t.Name] = newTopicState(topicFromMeta(t))
		if !strings.HasPrefix(t.Name, "%") {
			b.names = append(b.names, t.Name)
		}
	}
	slices.Sort(b.names)
	if err := b.loadOffsets(ctx); err != nil {
		return err
	}
	if b.receiptKey, err = loadReceiptKey(b.cfg.FS, b.cfg.Dir); err != nil {
		return err
	}
	if err := b.openQueues(); err != nil {
		return err
	}
	cp, err := readCheckpoint(b.cfg.Dir)
	if errors.Is(err, errBadCheckpoint) {
		// Derived, so nothing is lost, but something damaged the file: an
		// operator should know, and the rebuild may take a while.
		b.logger.Error("checkpoint is unreadable; rebuilding the indexes from the start of the commitlog", slog.Any("err", err))
		b.metrics.rebuilds.WithLabelValues(rebuildCheckpoint).Inc()
		err = nil
	}
	if err != nil {
		return err
	}
	if err := b.openIndex(); err != nil {
		if !errors.Is(err, keyindex.ErrCorrupt) {
			return err
		}
		// The index is derived: rebuild it, and the queues with it, from the log.
		b.logger.Error("key index is corrupt; rebuilding indexes from the commitlog", slog.Any("err", err))
		b.metrics.rebuilds.WithLabelValues(rebuildKeyIndex).Inc()
		if err := b.resetDerived(); err != nil {
			return err
		}
		cp = checkpoint{}
	}
	if b.cfg.RebuildMetadata {
		// Timers live in the metadata: only a dispatch of the whole log
		// gives them back, and the queues and index are rebuilt with it.
		b.logger.Warn("--rebuild-metadata: rebuilding the topics, the consume queues, the key index and the timers from the whole commitlog")
		if err := b.resetDerived(); err != nil {
			return err
		}
		cp = checkpoint{}
	}
	if err := b.recoverDerived(ctx, cp); err != nil {
		return err
	}
	b.openLogEnd()
	b.logger.Info("broker opened",
		slog.String("dir", b.cfg.Dir),
		slog.Int64("log_min", b.log.MinOffset()),
		slog.Int64("log_end", b.log.Committed()),
		slog.Int("topics", len(b.topics)),
		slog.Duration("took", time.Since(start)))
	return nil
}

// openQueues opens the consume queues, logging through the broker's logger.
func (b *Broker) openQueues() error {
	var err error
	b.cq, err = consumequeue.Open(consumequeue.Config{Dir: filepath.Join(b.cfg.Dir, "consumequeue"), FS: b.cfg.FS,
		Logger: b.logger.With(slog.String("component", "consumequeue"))})
	if err != nil {
		return fmt.Errorf("open consume queues: %w", err)
	}
	return nil
}

// openIndex opens the key index, logging through the broker's logger.
func (b *Broker) openIndex() error {
	var err error
	b.idx, err = keyindex.Open(keyindex.Config{Dir: filepath.Join(b.cfg.Dir, "index"), FS: b.cfg.FS,
		Logger: b.logger.With(slog.String("component", "keyindex"))})
	if err != nil {
		return fmt.Errorf("open key index: %w", err)
	}
	return nil
}

// resetDerived removes the consume queues and key index so recovery
// rebuilds both from the commitlog.
func (b *Broker) resetDerived() error {
	if b.cq != nil {
		b.cq.Close()
	}
	if b.idx != nil {
		b.idx.Close()
	}
	for _, d := range []string{"consumequeue", "index"} {
		if err := b.cfg.FS.RemoveAll(filepath.Join(b.cfg.Dir, d)); err != nil {
			return fmt.Errorf("remove %s: %w", d, err)
		}
	}
	if err := b.openQueues(); err != nil {
		return err
	}
	return b.openIndex()
}

// recoverDerived drops index entries past the checkpoint, re-dispatches the
// log from there, and sets each queue's next offset from its consume queue.
// Before it changes anything it checks that the metadata knows every topic
// the log (from the checkpoint on) and the consume queues hold; with
// RebuildMetadata it creates those it does not, otherwise it refuses with
// ErrMetadataLost.
func (b *Broker) recoverDerived(ctx context.Context, cp checkpoint) error {
	orig, reset := cp, false
	earlier := b.loadLostSpans()
	if lost := b.derivedLost(cp); lost != "" {
		b.logger.Warn("indexes lost data since their checkpoint; rebuilding them from the commitlog", slog.String("why", lost))
		if err := b.resetDerived(); err != nil {
			return err
		}
		cp, reset = checkpoint{}, true
	}
	if err := b.checkLostTail(orig, reset); err != nil {
		return err
	}
	lostHead, err := b.checkLostHead()
	if err != nil {
		return err
	}
	if err := b.rememberLost(earlier, b.lostTail, b.lostUntil); err != nil {
		// Reported now (ERROR, Damaged); only the next start would not.
		b.logger.Error("could not persist the lost spans: a later start will not list them", slog.Any("err", err))
	}
	from := min(cp.Dispatched, b.log.Committed())
	from = max(from, b.log.MinOffset())
	end := b.log.Committed()
	tomb, err := b.meta.DeletedTopics(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	sv, err := b.surveyLog("checking the commitlog's topics", from, end, tomb)
	if err != nil {
		return err
	}
	if b.cfg.RebuildMetadata {
		if err := b.rebuildTopics(ctx, sv, tomb, b.meta.Fresh(), time.Since(start)); err != nil {
			return err
		}
	}
	if unknown := b.unknownTopics(sv, tomb); len(unknown) > 0 {
		return b.refuseUnknown(unknown)
	}
	if err := b.cq.TruncateFrom(from); err != nil {
		return fmt.Errorf("truncate consume queues: %w", err)
	}
	if err := b.idx.TruncateFrom(from); err != nil {
		return fmt.Errorf("truncate key index: %w", err)
	}
	// Queues of topics deleted before a crash may outlive their topic; the
	// metadata recorded the deletion (unknownTopics refused any other).
	for _, q := range b.cq.Queues() {
		if _, ok := b.topics[q.Topic]; !ok {
			b.logger.Info("removing the consume queues of a deleted topic", slog.String("topic", q.Topic),
				slog.Time("deleted_at", tomb[q.Topic]))
			if err := b.cq.DeleteTopic(q.Topic); err != nil {
				return fmt.Errorf("remove queues of deleted topic %q: %w", q.Topic, err)
			}
		}
	}
	if cp.Dispatched == from && !lostHead {
		for name, q := range cp.Queues {
			if id, ok := parseQueueName(name); ok {
				b.queueBytes[id] = q.Bytes
			}
		}
	} else {
		b.recountQueueBytes()
	}
	b.dispatched.Store(from)
	if end > from {
		b.logger.Info("rebuilding indexes from the commitlog", slog.Int64("from", from), slog.Int64("to", end))
	}
	p := b.startProgress("rebuilding indexes from the commitlog", from, end, &b.replayAt)
	b.recovering = true // no other goroutine dispatches yet
	err = b.dispatchOnce()
	b.recovering = false
	p.stop()
	if err != nil {
		return fmt.Errorf("re-dispatch: %w", err)
	}
	b.keepMisplaced()
	// Dispatch added a timer for every delayed record it met; those whose
	// message was already put on its queue must not fire again.
	if err := b.meta.FireTimers(ctx, sv.fired); err != nil {
		return fmt.Errorf("mark fired timers: %w", err)
	}
	b.dispatchMu.Lock()
	for _, ts := range b.topics {
		for q := range ts.next {
			ts.next[q] = b.queueEnd(ts.name, q)
		}
	}
	b.dispatchMu.Unlock()
	// The reservations of the last run are spent: what they reserved is
	// either in the queues or kept as holes (when the log proved a loss).
	// Rewritten now, so that a later start does not measure the log
	// against the durable end they recorded before this recovery.
	if err := b.writeMarks(0, false); err != nil {
		b.logger.Error("could not rewrite the queue-offset reservations after recovery; the first publish retries", slog.Any("err", err))
	}
	b.checkpointDirty = true
	if err := b.checkpoint(); err != nil {
		// The indexes are built; only their checkpoint could not be written
		// (a full disk, say). The dispatch loop retries it, and persistent
		// failures make Ready fail: not a reason to refuse to start.
		b.logger.Error("checkpoint after recovery failed; starting anyway, retrying", slog.Any("err", err))
	}
	return nil
}

// queueEnd is the queue offset the next record of a queue takes after
// recovery: the rebuilt queue's end, unless a consumer group had already
// read past it, which happens when records at the queue's end were lost
// (damaged and quarantined, or a tail cut after a crash under async flush).
// New records must not take offsets a group has passed, or the group would
// never see them: the lost offsets are kept as holes (logged at ERROR and
// counted). Called with dispatchMu held, before anything is appended.
func (b *Broker) queueEnd(topic string, queue int) int64 {
	lo, hi := b.cq.Bounds(topic, queue)
	read := hi
	b.offs.mu.Lock()
	for k, next := range b.offs.next {
		if k.topic == topic && k.queue == queue {
			read = max(read, next)
		}
	}
	b.offs.mu.Unlock()
	// Offsets the queue had handed out before the log lost its tail are
	// taken as well, read by a group or not: they were acknowledged.
	read = max(read, b.lostQueueMax[consumequeue.QueueID{Topic: topic, Queue: queue}])
	if read == hi {
		return hi
	}
	b.logger.Error("consumer groups read past the end of a queue rebuilt from the log, or the log lost its tail: its last messages were lost; their offsets are kept as holes",
		slog.String("topic", topic), slog.Int("queue", queue), slog.Int64("queue_end", hi), slog.Int64("group_offset", read))
	b.metrics.lostQueueEnd(read - hi)
	if lo == hi {
		return read // empty: the next record's offset re-bases the queue
	}
	es, err := b.cq.Read(topic, queue, hi-1, 1, nil)
	if err != nil || len(es) != 1 {
		return hi
	}
	// Holes need increasing log offsets between the queue's last entry
	// and the next record, which goes at or past the log's end; no reader
	// reads a hole's offset.
	last, end := es[0].Offset, b.log.End()
	if end-last-1 < read-hi {
		b.logger.Error("no room in the log for the holes of lost messages: their queue offsets will be handed out again",
			slog.String("topic", topic), slog.Int("queue", queue), slog.Int64("from", hi), slog.Int64("to", read),
			slog.Int64("after_log_offset", last), slog.Int64("log_end", end))
		return hi
	}
	for i := int64(0); i < read-hi; i++ {
		if err := b.cq.Append(topic, queue, hi+i, consumequeue.Entry{Offset: last + 1 + i, Size: holeSize}); err != nil {
			b.logger.Error("could not keep a hole for a lost message", slog.String("topic", topic),
				slog.Int("queue", queue), slog.Int64("queue_offset", hi+i), slog.Any("err", err))
			return hi + i
		}
	}
	return read
}

// checkLostTail finds acknowledged records missing from the end of the
// log: the checkpoint says the indexes covered the log up to cp.Dispatched,
// and the consume queues hold entries up to where their records ended, so a
// log that now ends before either lost records that were stored, not a torn
// write of unacknowledged ones (the commitlog cuts a torn tail only above
// what was synced, and cannot know what the checkpoint saw). This happens
// when the newest segment is deleted or cut while the broker is stopped, or
// its last record is damaged and cut as torn. The lost range is reported
// like a quarantined span (ERROR, postbus_commitlog_quarantined_spans,
// /readyz), and the queue offsets its records had are remembered so that
// queueEnd keeps them as holes: no offset is handed out twice. When the
// consume queues were lost too (reset: they are rebuilt from the log),
// only the checkpoint remembers those offsets: each queue's max there is
// kept, for the topics that existed when it was written. Called before the
// indexes are truncated to the log.
func (b *Broker) checkLostTail(cp checkpoint, reset bool) error {
	end := b.log.Committed()
	proven := cp.Dispatched
	m, haveMarks := b.readMarks()
	witness := b.readLogEnd()
	proven = max(proven, m.Durable, witness)
	lostQ := make(map[consumequeue.QueueID]int64)
	var lostEntries int64
	for _, q := range b.cq.Queues() {
		lo, hi := b.cq.Bounds(q.Topic, q.Queue)
		if lo == hi {
			continue
		}
		es, err := b.cq.Read(q.Topic, q.Queue, hi-1, 1, nil)
		if err != nil {
			return fmt.Errorf("read the end of queue %s: %w", q, err)
		}
		if len(es) != 1 || es[0].Offset < end {
			continue
		}
		if es[0].Size != holeSize {
			proven = max(proven, es[0].Offset+commitlog.FrameHeaderSize+int64(es[0].Size))
		}
		k, err := b.cq.SearchOffset(q.Topic, q.Queue, func(e consumequeue.Entry) (bool, error) { return e.Offset >= end, nil })
		if err != nil {
			return fmt.Errorf("search queue %s for the log's end: %w", q, err)
		}
		lostQ[q] = hi
		lostEntries += hi - k
	}
	if proven <= end {
		return nil
	}
	if reset {
		for name, q := range cp.Queues {
			id, ok := parseQueueName(name)
			ts := b.topics[id.Topic]
			if !ok || ts == nil {
				continue
			}
			// A topic created after the checkpoint is another incarnation:
			// the checkpoint's offsets are not its own.
			if start := ts.info.Load().logStart; start < 0 || start > cp.Dispatched {
				continue
			}
			lostQ[id] = max(lostQ[id], q.Max)
		}
	}
	// Records acknowledged after the checkpoint and the queues' last
	// flush may have had offsets up to the reservations: keep them all.
	for q, r := range b.reservedFor(m) {
		lostQ[q] = max(lostQ[q], r)
	}
	b.lostQueueMax = lostQ
	b.lostTail = []DamagedSpan{{Offset: end, Next: proven, Reason: "log ends before what its checkpoint, indexes or queue-offset reservations hold: acknowledged records lost"}}
	b.lostUntil = []int64{proven}
	b.logger.Error("the commitlog ends before what was stored: acknowledged records are lost (a segment deleted or cut while stopped?); their queue offsets are kept as holes",
		slog.Int64("log_end", end), slog.Int64("checkpoint", cp.Dispatched), slog.Int64("lost_from", end),
		slog.Int64("lost_to", proven), slog.Int64("lost_queue_entries", lostEntries), slog.Int("queues", len(lostQ)),
		slog.Bool("queues_rebuilt", reset), slog.Bool("reservations", haveMarks), slog.Int64("reservations_durable", m.Durable), slog.Int64("log_end_witness", witness))
	return nil
}

// checkLostHead finds acknowledged records missing from the start of the
// log: segments deleted while the broker was stopped, which retention did
// not retire (it raises the consume queues' floor before it deletes a
// segment). Queue entries between the floor and the log's start point at
// records that are gone. The range is reported like a lost tail (ERROR,
// postbus_commitlog_quarantined_spans, /readyz; the entries counted in
// postbus_recovery_lost_queue_offsets_total), and the queues and key
// index then drop what points below the log's start, as retention would,
// so that no read meets the missing records. It reports whether it
// dropped anything.
func (b *Broker) checkLostHead() (bool, error) {
	floor, logMin := b.cq.Floor(), b.log.MinOffset()
	if logMin <= floor {
		return false, nil
	}
	var lost int64
	from := logMin
	for _, q := range b.cq.Queues() {
		lo, _ := b.cq.Bounds(q.Topic, q.Queue)
		k, err := b.cq.SearchOffset(q.Topic, q.Queue, func(e consumequeue.Entry) (bool, error) { return e.Offset >= logMin, nil })
		if err != nil {
			return false, fmt.Errorf("search queue %s for the log's start: %w", q, err)
		}
		if k > lo {
			es, err := b.cq.Read(q.Topic, q.Queue, lo, 1, nil)
			if err != nil {
				return false, fmt.Errorf("read the start of queue %s: %w", q, err)
			}
			if len(es) == 1 {
				from = min(from, es[0].Offset)
			}
			lost += k - lo
		}
	}
	if lost == 0 {
		// Nothing the queues hold is gone (they may have been rebuilt from
		// the log as it is): there is nothing to tell a lost head from.
		return false, nil
	}
	from = max(from, floor)
	b.lostTail = append(b.lostTail, DamagedSpan{Offset: from, Next: logMin, Reason: "log starts after records its queues hold, above the retention floor: acknowledged records lost"})
	b.lostUntil = append(b.lostUntil, b.firstSegmentEnd())
	b.logger.Error("the commitlog starts after records that were stored and not retired by retention: acknowledged records are lost (a segment deleted while stopped?)",
		slog.Int64("log_min", logMin), slog.Int64("retention_floor", floor), slog.Int64("lost_from", from),
		slog.Int64("lost_queue_entries", lost))
	b.metrics.lostQueueEnd(lost)
	if err := b.cq.DropBefore(logMin); err != nil {
		return false, fmt.Errorf("drop queue entries below the log's start: %w", err)
	}
	if err := b.idx.DropBefore(logMin); err != nil {
		return false, fmt.Errorf("drop key-index entries below the log's start: %w", err)
	}
	return true, nil
}

// derivedLost says why the consume queues or key index hold less than the
// checkpoint says they did, or "" when they are whole.
func (b *Broker) derivedLost(cp checkpoint) string {
	if n := b.idx.Stats().Entries; n < cp.IndexEntries {
		return fmt.Sprintf("key index has %d entries, the checkpoint %d", n, cp.IndexEntries)
	}
	for name, q := range cp.Queues {
		id, ok := parseQueueName(name)
		if !ok {
			continue
		}
		if _, ok := b.topics[id.Topic]; !ok {
			continue
		}
		if _, hi := b.cq.Bounds(id.Topic, id.Queue); hi < q.Max {
			return fmt.Sprintf("queue %s ends at %d, the checkpoint says %d", name, hi, q.Max)
		}
	}
	return ""
}

// recountQueueBytes rebuilds the per-queue byte counts by reading every
// live consume-queue entry: only after a lost or stale checkpoint.
func (b *Broker) recountQueueBytes() {
	clear(b.queueBytes)
	var buf []consumequeue.Entry
	for _, q := range b.cq.Queues() {
		lo, hi := b.cq.Bounds(q.Topic, q.Queue)
		for lo < hi {
			var err error
			buf, err = b.cq.Read(q.Topic, q.Queue, lo, 4096, buf[:0])
			if err != nil || len(buf) == 0 {
				break
			}
			for _, e := range buf {
				b.queueBytes[q] += liveBytes(e)
			}
			lo += int64(len(buf))
		}
	}
}

// lockDir takes the data directory's lock: one process per directory.
func lockDir(fsys vfs.FS, dir string) (*os.File, error) {
	f, err := vfs.Lock(fsys, filepath.Join(dir, "lock"))
	if err != nil {
		return nil, fmt.Errorf("data directory %s is in use by another postbus process, or its lock file cannot be opened: %w", dir, err)
	}
	return f, nil
}

// Close stops background work, persists the indexes' checkpoint and closes
// every file. It is idempotent; publishes after Close fail with ErrClosed.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		// The timer stops first: a round in progress puts its messages
		// back and marks their timers fired while appends are still
		// taken, so a clean restart finds no round cut in half.
		b.timer.Close()
		b.appendMu.Lock()
		close(b.closing)
		b.appendMu.Unlock()
		b.wg.Wait()
		var errs []error
		errs = append(errs, b.eng.Close())
		// Everything acknowledged is in the log; dispatch the rest so the
		// next start has nothing to rebuild.
		if err := b.dispatchOnce(); err != nil {
			errs = append(errs, err)
		}
		if err := b.checkpoint(); err != nil {
			errs = append(errs, err)
		}
		// Nothing more is appended: the reservations shrink to what was
		// handed out, so that a loss found at the next start keeps no
		// more holes than it must.
		b.appendMu.Lock()
		if err := b.writeMarks(0, false); err != nil {
			errs = append(errs, err)
		}
		b.appendMu.Unlock()
		errs = append(errs, b.flushOffsets(context.Background()), b.flushAttempts(context.Background()))
		errs = append(errs, b.closeFiles())
		b.closeErr = errors.Join(errs...)
		b.logger.Info("broker closed", slog.Any("err", b.closeErr))
	})
	return b.closeErr
}

func (b *Broker) closeFiles() error {
	var errs []error
	if b.log != nil && b.cfg.Replica == nil {
		errs = append(errs, b.log.Close())
	}
	if b.cq != nil {
		errs = append(errs, b.cq.Close())
	}
	if b.idx != nil {
		errs = append(errs, b.idx.Close())
	}
	errs = append(errs, b.closeLogEnd())
	if b.meta != nil && b.cfg.Replica == nil {
		errs = append(errs, b.meta.Close())
	}
	if b.lockFile != nil {
		errs = append(errs, b.lockFile.Close())
	}
	return errors.Join(errs...)
}

func (b *Broker) isClosing() bool {
	select {
	case <-b.closing:
		return true
	default:
		return false
	}
}

// Ready reports whether the broker takes requests: open, and its indexes
// can be checkpointed (see checkpointHealth). A disk over the full
// watermark does not make it unready, since reads still work; it answers
// publishes with disk_full and shows in /metrics.
func (b *Broker) Ready() error {
	if b.isClosing() {
		return ErrClosed
	}
	if err := b.log.Failed(); err != nil {
		return fmt.Errorf("the commitlog failed and refuses every write until the broker is restarted: %w", err)
	}
	if err := b.meta.Corrupt(); err != nil {
		return fmt.Errorf("%w; timers, offsets and topic changes cannot be stored: stop the broker and start it once "+
			"with --rebuild-metadata, or restore meta.db from a backup", err)
	}
	if b.diskFull.Load() {
		// Publishes are refused (507 disk_full) until retention or the
		// operator frees space: a load balancer should send them
		// elsewhere meanwhile.
		return fmt.Errorf("%w: the disk holding the data directory is over the full watermark (%.0f%%); publishes are refused until space is freed",
			ErrDiskFull, b.cfg.DiskFullRatio*100)
	}
	return b.ckpt.err()
}

// DamagedSpan is a stretch of the commitlog that failed its checks and is
// skipped: the records in it are lost, those around it are not.
type DamagedSpan struct {
	Offset int64  // where the damage starts
	Next   int64  // where reading resumes
	Reason string // the check that failed
}

// Damaged lists the commitlog spans quarantined so far, and the end of the
// log found lost at open (each was logged at ERROR when found). The broker stays ready with them: /readyz shows them.
func (b *Broker) Damaged() []DamagedSpan {
	q := b.log.Quarantined()
	mis := b.misplaced.list()
	out := make([]DamagedSpan, 0, len(q)+len(b.lostTail)+len(mis))
	for _, e := range q {
		out = append(out, DamagedSpan{Offset: e.Off, Next: e.Next, Reason: e.Reason})
	}
	out = append(out, b.lostTail...)
	return append(out, mis...)
}

// signal wakes every waiter at once: waiters take the channel, the firer
// closes it and puts a fresh one in its place.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
	s.mu.Unlock()
}
