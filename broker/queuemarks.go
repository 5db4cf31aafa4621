package broker

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/postbus/postbus/broker/consumequeue"
	"github.com/postbus/postbus/broker/internal/durable"
)

// Queue-offset reservations (queuemarks.json).
//
// A publish is acknowledged once its record is in the log; the consume
// queues, the key index and the checkpoint catch up later and are flushed
// only now and then. When the log then loses its newest records while the
// broker is stopped (a segment cut or deleted), those derived files cannot
// say which queue offsets the lost records had, and recovery would hand
// them to new messages: a consumer keeping its own position would read a
// different message at an offset it already read. So before a publish
// takes a queue offset at or above what the file reserves, the file is
// rewritten, durably, reserving a block of offsets ahead for every queue of
// every topic: no offset at or above a queue's reserved mark was ever
// handed out. Recovery, once it knows the log lost its tail, keeps each
// queue's offsets as holes up to that mark (an upper bound: it may include
// offsets nobody took). The file also records how far the log was durable
// when it was written, so that it proves a loss by itself when the
// checkpoint and the consume queues are gone too.
const marksFile = "queuemarks.json"

// Reservation block sizes: a queue reserves marksStep offsets ahead; the
// step doubles while reservations come faster than one a second (at most
// marksMaxStep), so that a busy broker writes the file about once a second,
// and halves back when they are rare.
const (
	marksMinStep = 256
	marksMaxStep = 1 << 16
)

type marks struct {
	// Durable is the log offset below which every record was durable when
	// the file was written: a log that opens ending before it lost them.
	Durable int64                  `json:"durable"`
	Topics  map[string]marksTopics `json:"topics"`
}

type marksTopics struct {
	// CreatedMs and LogStart name the topic's incarnation: a topic deleted
	// and created again starts its queues at 0, and the marks of the old
	// one are not its own.
	CreatedMs int64 `json:"created_ms"`
	LogStart  int64 `json:"log_start"`
	// Reserved per queue: no offset at or above it was handed out.
	Reserved []int64 `json:"reserved"`
}

// marksState is the broker's side of the file; guarded by appendMu.
type marksState struct {
	step    int64
	at      time.Time // last reservation
	durable int64     // Durable of the file as last written
}

func (b *Broker) marksPath() string { return b.dataPath(marksFile) }

// readMarks reads the reservations; a missing file reads as none, and so
// does an unreadable one (said at WARN: it is one witness among several).
func (b *Broker) readMarks() (marks, bool) {
	data, err := os.ReadFile(b.marksPath())
	if errors.Is(err, os.ErrNotExist) {
		return marks{}, false
	}
	var m marks
	if err == nil {
		err = json.Unmarshal(data, &m)
	}
	if err != nil {
		b.logger.Warn("queue-offset reservations unreadable; recovery goes without them", slog.String("path", b.marksPath()), slog.Any("err", err))
		return marks{}, false
	}
	return m, true
}

// reservedFor returns, for the topics that still exist in the incarnation
// the file names, each queue's reserved mark.
func (b *Broker) reservedFor(m marks) map[consumequeue.QueueID]int64 {
	out := make(map[consumequeue.QueueID]int64)
	for name, mt := range m.Topics {
		ts := b.topics[name]
		if ts == nil {
			continue
		}
		t := ts.info.Load()
		if t.CreatedAt.UnixMilli() != mt.CreatedMs || t.logStart != mt.LogStart {
			continue
		}
		for q, r := range mt.Reserved {
			out[consumequeue.QueueID{Topic: name, Queue: q}] = r
		}
	}
	return out
}

// reserve makes sure the queue offsets ts.next hands out are reserved in
// the file, rewriting it when a queue has run past its mark. batch is how
// many offsets each queue of ts took in the append under way (already
// counted in ts.next). Called with appendMu held, before the append.
func (b *Broker) reserve(ts *topicState) error {
	need := false
	for q, n := range ts.next {
		if q >= len(ts.reserved) || n > ts.reserved[q] {
			need = true
			break
		}
	}
	if !need {
		return nil
	}
	now := time.Now()
	switch st := &b.marks; {
	case st.step == 0:
		st.step = marksMinStep
	case now.Sub(st.at) < time.Second:
		st.step = min(st.step*2, marksMaxStep)
	case now.Sub(st.at) > 10*time.Second:
		st.step = max(st.step/2, marksMinStep)
	}
	b.marks.at = now
	return b.writeMarks(b.marks.step, true)
}

// refreshMarks rewrites the file with the same reservations and the log's
// durable end now, after a checkpoint: a witness of the log's end that
// outlives a lost checkpoint.json. Called by the dispatch loop, which
// must never wait for appendMu: its holder may be waiting for dispatch (a
// topic delete), so a busy lock skips this refresh until the next
// checkpoint.
func (b *Broker) refreshMarks() {
	if !b.appendMu.TryLock() {
		return
	}
	defer b.appendMu.Unlock()
	if b.isClosing() || b.log.Committed() == b.marks.durable {
		return
	}
	if err := b.writeMarks(0, true); err != nil {
		b.logger.Warn("could not refresh the queue-offset reservations; the next publish that needs one retries", slog.Any("err", err))
	}
}

// writeMarks rewrites the file reserving step offsets ahead of every
// queue's next, keeping (keep) or dropping what was reserved before: step
// 0 without keep reserves exactly what was handed out (a clean close, the
// end of a recovery). On success the topics' in-memory marks follow.
// Called with appendMu held.
func (b *Broker) writeMarks(step int64, keep bool) error {
	m := marks{Durable: b.log.Committed(), Topics: make(map[string]marksTopics)}
	b.topicsMu.RLock()
	states := make([]*topicState, 0, len(b.topics))
	for name, ts := range b.topics {
		t := ts.info.Load()
		mt := marksTopics{CreatedMs: t.CreatedAt.UnixMilli(), LogStart: t.logStart, Reserved: make([]int64, len(ts.next))}
		for q, n := range ts.next {
			r := n + step
			if keep && q < len(ts.reserved) {
				// A reservation is never taken back while the process runs.
				r = max(r, ts.reserved[q])
			}
			mt.Reserved[q] = r
		}
		m.Topics[name] = mt
		states = append(states, ts)
	}
	b.topicsMu.RUnlock()
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(b.cfg.FS, b.marksPath(), data, 0o644); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			b.metrics.rejected(CodeDiskFull)
			return &Error{Code: CodeDiskFull, Detail: "the disk is full: the queue offsets could not be reserved; nothing was stored", Err: err}
		}
		b.logger.Error("reserving queue offsets failed", slog.Any("err", err))
		return &Error{Code: CodeUnavailable, Detail: "the queue offsets could not be reserved; nothing was stored", Err: fmt.Errorf("write queue-offset reservations: %w", err)}
	}
	for _, ts := range states {
		ts.reserved = m.Topics[ts.name].Reserved
	}
	b.marks.durable = m.Durable
	return nil
}

// persisted lost spans (lostspans.json): what recovery found lost stays
// reported (/readyz, postbus_commitlog_quarantined_spans) at later starts,
// until retention has moved the log's start past it.
const lostSpansFile = "lostspans.json"

type lostSpan struct {
	Offset int64  `json:"offset"`
	Next   int64  `json:"next"`
	Reason string `json:"reason"`
	Found  string `json:"found"` // when recovery found it (RFC 3339)
	// Until: once the log's start is at or past it, the span is forgotten
	// (retention retired everything around it).
	Until int64 `json:"until"`
}

// loadLostSpans returns the spans earlier starts found that are still
// within the log.
func (b *Broker) loadLostSpans() []lostSpan {
	data, err := os.ReadFile(b.dataPath(lostSpansFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var spans []lostSpan
	if err == nil {
		err = json.Unmarshal(data, &spans)
	}
	if err != nil {
		b.logger.Error("lost spans found by earlier starts unreadable: they are no longer listed", slog.String("path", b.dataPath(lostSpansFile)), slog.Any("err", err))
		return nil
	}
	keep := spans[:0]
	for _, s := range spans {
		if b.log.MinOffset() < s.Until {
			keep = append(keep, s)
		}
	}
	return keep
}

// saveLostSpans writes the spans still reported, so that the next start
// reports them too.
func (b *Broker) saveLostSpans(spans []lostSpan) error {
	path := b.dataPath(lostSpansFile)
	if len(spans) == 0 {
		if err := b.cfg.FS.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		return nil
	}
	data, err := json.Marshal(spans)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(b.cfg.FS, path, data, 0o644); err != nil {
		return fmt.Errorf("remember the lost spans: %w", err)
	}
	return nil
}

// rememberLost adds the spans this start found to those of earlier starts,
// persists them all and lists them in Damaged.
func (b *Broker) rememberLost(earlier []lostSpan, found []DamagedSpan, until []int64) error {
	all := earlier
	now := b.now().UTC().Format(time.RFC3339)
	for i, d := range found {
		all = append(all, lostSpan{Offset: d.Offset, Next: d.Next, Reason: d.Reason, Found: now, Until: until[i]})
	}
	if len(found) > 0 || len(earlier) > 0 {
		if err := b.saveLostSpans(all); err != nil {
			return err
		}
	}
	spans := make([]DamagedSpan, 0, len(all))
	for _, s := range all {
		spans = append(spans, DamagedSpan{Offset: s.Offset, Next: s.Next, Reason: fmt.Sprintf("%s (found at the start of %s)", s.Reason, s.Found)})
	}
	b.lostTail = spans
	return nil
}

// firstSegmentEnd is where the log's oldest segment ends (its end when it
// has one segment): a lost head is forgotten once retention retires it.
func (b *Broker) firstSegmentEnd() int64 {
	segs := b.log.Segments()
	if len(segs) > 1 {
		return segs[1].Base
	}
	return b.log.Committed()
}

// The log-end witness (logend): after each publish's records are durable,
// and before it is answered, the log's committed end is written in place
// to a small file, without an fsync. A crash of the process (SIGKILL, a
// panic) keeps what the page cache holds, so at the next start the file
// says at least how far acknowledged records reached; a log that then ends
// before it lost them (a segment cut or deleted while stopped). After a
// power cut the file may be older (never newer than what was synced, since
// it is written after the log's own fsync), which only weakens it: it
// never reports a loss that was not one. Under --flush async it may be
// newer than the log after a power cut, and then reports records that
// were acknowledged and are gone: a real loss.
const logEndFile = "logend"

type logEndWitness struct {
	mu     sync.Mutex
	f      *os.File // nil: not kept (it could not be opened; said at ERROR)
	at     atomic.Int64
	failed bool // a write failed; said once at ERROR
}

// readLogEnd returns the end the witness holds, or 0.
func (b *Broker) readLogEnd() int64 {
	data, err := os.ReadFile(b.dataPath(logEndFile))
	if err != nil || len(data) < 12 {
		return 0
	}
	if crc32.Checksum(data[:8], castagnoli) != binary.BigEndian.Uint32(data[8:12]) {
		b.logger.Warn("log-end witness unreadable (torn); recovery goes without it", slog.String("path", b.dataPath(logEndFile)))
		return 0
	}
	return int64(binary.BigEndian.Uint64(data[:8]))
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// openLogEnd opens the witness once recovery is done and writes the log's
// end as it is now: what an earlier run wrote past it is accounted for.
func (b *Broker) openLogEnd() {
	w := &b.logEnd
	f, err := b.cfg.FS.OpenFile(b.dataPath(logEndFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		b.logger.Error("cannot open the log-end witness: a log cut below acknowledged records while stopped may go unnoticed", slog.Any("err", err))
		return
	}
	w.f = f
	w.at.Store(-1)
	b.witnessLogEnd(b.log.Committed())
}

// witnessLogEnd records end (a committed log offset) in the witness when
// it is past what the witness holds.
func (b *Broker) witnessLogEnd(end int64) {
	w := &b.logEnd
	if w.f == nil || end <= w.at.Load() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if end <= w.at.Load() || w.f == nil {
		return
	}
	var buf [16]byte
	binary.BigEndian.PutUint64(buf[:8], uint64(end))
	binary.BigEndian.PutUint32(buf[8:12], crc32.Checksum(buf[:8], castagnoli))
	if _, err := b.cfg.FS.WriteAt(w.f, buf[:], 0); err != nil {
		if !w.failed {
			w.failed = true
			b.logger.Error("cannot write the log-end witness: a log cut below acknowledged records while stopped may go unnoticed", slog.Any("err", err))
		}
		return
	}
	w.at.Store(end)
}

func (b *Broker) closeLogEnd() error {
	w := &b.logEnd
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}
