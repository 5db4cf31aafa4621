package commitlog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/postbus/postbus/broker/internal/durable"
	"github.com/postbus/postbus/broker/internal/vfs"
)

// Log keys, constant so that log lines can be searched.
const (
	logKeySegment = "segment"
	logKeyOffset  = "offset"
	logKeyReason  = "reason"
	logKeyNext    = "next"
	logKeyErr     = "err"
)

// maxKeptWriteBuf caps the append buffer kept between calls, so one huge batch
// does not pin its buffer for the life of the Log.
const maxKeptWriteBuf = 4 << 20

// maxGatherYields bounds how long the flusher waits for more writes before an
// fsync (see gather).
const maxGatherYields = 8

// Log is the append-only commit log. All methods are safe for concurrent use.
type Log struct {
	cfg  Config
	log  *slog.Logger
	lock *os.File // holds the flock on Dir/LOCK while open

	mu     sync.Mutex // serialises Append, roll, DropBefore's list update, Segments and Close
	active *segment   // guarded by mu: the segment appends go to
	pos    int64      // guarded by mu: write position inside active
	wbuf   []byte     // guarded by mu: reused frame-encoding buffer
	closed bool       // guarded by mu
	// maxAppend bounds one Append's frames beyond SegmentSize: a batch
	// larger than a segment gets a segment of its own, of its size. Open
	// sets it to MaxAppendBytes; tests lower it.
	maxAppend int64

	prep             *prepared     // guarded by mu: the next segment's file being prepared; nil if none
	rollWait         time.Duration // guarded by mu: longest a roll waits for a nearly prepared file
	warnedSlowPrep   bool          // guarded by mu: the "not prepared in time" warning is logged once
	testHookRollWait func()        // guarded by mu: nil except in tests; called when a roll starts waiting

	// segs is an immutable snapshot of the open segments, oldest first. It is
	// replaced (under mu) on roll and drop; readers load it without locking,
	// so reads never wait for the writer.
	segs atomic.Pointer[[]*segment]
	// written is the end of the last frame written to the page cache. It is
	// stored under mu after the write and after segs, so a reader that loads
	// written (or flushed) first always finds the segment in segs.
	written atomic.Int64
	flushed atomic.Int64 // everything below it has been fsynced
	syncs   atomic.Int64 // fdatasync calls, including rolls; lets tests see group commit grouping
	// Rolls by path: into a prepared (zero-filled) file, or into one created
	// and fallocated under mu. Tests read them to see which path was taken.
	preparedRolls  atomic.Int64
	directRolls    atomic.Int64
	oversizedRolls atomic.Int64 // rolls into a segment sized for a batch larger than SegmentSize (also counted in directRolls)

	quarMu      sync.Mutex
	quarantined map[int64]CorruptError // guarded by quarMu: damaged spans found so far, by offset

	failure atomic.Pointer[error]
	closing atomic.Bool // set at the start of Close, read by readers without mu

	changed notifier // broadcast whenever Committed advances

	// Sync waiters share one channel per fsync round instead of all waking
	// on every broadcast: a waiter joins the next round, and the flusher,
	// taking the round when it snapshots written, closes it after the fsync.
	syncMu      sync.Mutex
	nextRound   chan struct{} // guarded by syncMu: closed when the next fsync round is durable; nil if nobody waits
	failedRound bool          // guarded by syncMu: the log failed; waiters must not join a round that will never come

	kick    chan struct{} // cap 1: "there is something to fsync" (sync mode)
	stop    chan struct{} // closed by Close to stop the flusher
	stopped chan struct{} // closed by the flusher when it exits
	done    chan struct{} // closed when Close has finished

	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating if need be) the log in cfg.Dir, recovers its last
// segment, starts the background flusher, and starts preparing the next
// segment's file. The first segment of a new log is zero-filled before Open
// returns.
func Open(cfg Config) (*Log, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.FS.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("commitlog: open: %w", err)
	}
	lock, err := lockDir(cfg.FS, cfg.Dir)
	if err != nil {
		return nil, err
	}
	l := &Log{
		cfg:       cfg,
		log:       cfg.Logger,
		lock:      lock,
		rollWait:  defaultRollWait,
		maxAppend: MaxAppendBytes,
		kick:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		stopped:   make(chan struct{}),
		done:      make(chan struct{}),
	}
	if err := l.recover(); err != nil {
		if segs := l.segs.Load(); segs != nil {
			for _, s := range *segs {
				_ = s.f.Close()
			}
		}
		_ = lock.Close()
		return nil, fmt.Errorf("commitlog: open %s: %w", cfg.Dir, err)
	}
	l.startPrepare(l.active.base + l.active.size)
	go l.flushLoop()
	return l, nil
}

// lockDir takes an exclusive flock on dir/LOCK so two processes cannot append
// to the same log. The lock dies with the process, so a crash leaves nothing
// to clean up.
func lockDir(fsys vfs.FS, dir string) (*os.File, error) {
	f, err := vfs.Lock(fsys, filepath.Join(dir, "LOCK"))
	if err != nil {
		return nil, fmt.Errorf("commitlog: lock %s (in use by another process?): %w", dir, err)
	}
	return f, nil
}

// Close stops the flusher and the segment preparation (deleting its file),
// fsyncs everything written, and closes the files. It is idempotent: later
// calls return the first call's result.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.closing.Store(true)
		prep := l.prep // no roll can start another once closed is set
		l.prep = nil
		l.mu.Unlock()

		close(l.stop)
		<-l.stopped
		if prep != nil {
			stopPrepare(l.cfg.FS, prep)
		}
		err := l.flush()

		for _, s := range *l.segs.Load() {
			if cerr := s.f.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("close segment %020d: %w", s.base, cerr)
			}
		}
		if cerr := l.lock.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if err != nil {
			err = fmt.Errorf("commitlog: close: %w", err)
		}
		l.closeErr = err
		close(l.done)
		l.changed.shutdown()
	})
	return l.closeErr
}

// Append frames each payload and writes them as consecutive frames of one
// segment with a single write. It returns the offset of each frame and the
// end offset (one past the last frame). After it returns the frames are in
// the OS page cache, so a process crash keeps them; they are durable once
// Sync(ctx, end) returns. On any error nothing of this call is visible: the
// written range is zeroed again and the tail does not move. ENOSPC when a new
// segment is created returns an error wrapping ErrDiskFull.
func (l *Log) Append(payloads [][]byte) (offs []int64, end int64, err error) {
	var total int64
	for i, p := range payloads {
		if len(p) > l.cfg.MaxPayload {
			return nil, 0, fmt.Errorf("commitlog: append: payload %d is %d bytes, max %d: %w", i, len(p), l.cfg.MaxPayload, ErrTooLarge)
		}
		total += headerSize + int64(len(p))
	}
	if limit := max(l.cfg.SegmentSize, l.maxAppend); total > limit {
		return nil, 0, fmt.Errorf("commitlog: append: batch of %d bytes over the largest append, %d: %w", total, limit, ErrTooLarge)
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, 0, ErrClosed
	}
	if err := l.failed(); err != nil {
		return nil, 0, err
	}
	if len(payloads) == 0 {
		return nil, l.written.Load(), nil
	}
	if l.pos+total > l.active.size {
		if err := l.roll(total); err != nil {
			return nil, 0, fmt.Errorf("commitlog: append: %w", err)
		}
	}

	buf := l.wbuf
	if int64(cap(buf)) < total {
		buf = make([]byte, total)
	}
	buf = buf[:total]
	start := l.active.base + l.pos
	offs = make([]int64, len(payloads))
	at := 0
	for i, p := range payloads {
		offs[i] = start + int64(at)
		putFrame(buf[at:], frameMagic, p)
		at += headerSize + len(p)
	}
	if cap(buf) <= maxKeptWriteBuf {
		l.wbuf = buf
	}

	if _, err := l.cfg.io.writeAt(l.active.f, buf, l.pos); err != nil {
		err = fmt.Errorf("commitlog: append: write segment %020d at %d: %w", l.active.base, l.pos, err)
		if errors.Is(err, syscall.ENOSPC) {
			err = fmt.Errorf("%w: %w", ErrDiskFull, err)
		}
		l.undoWrite(buf, err)
		if ferr := l.failed(); ferr != nil {
			return nil, 0, ferr // the batch may be on disk: say so
		}
		return nil, 0, err
	}
	l.pos += total
	end = start + total
	l.written.Store(end)
	if l.cfg.Sync {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	} else {
		l.changed.broadcast()
	}
	return offs, end, nil
}

// undoWrite zeroes the range a failed write may have touched (buf's length at
// pos), so that neither a reader nor a later recovery can find a frame of the
// failed call. If even that fails, the log cannot promise anything about its
// tail any more and refuses further appends.
func (l *Log) undoWrite(buf []byte, cause error) {
	clear(buf)
	if _, err := l.cfg.io.writeAt(l.active.f, buf, l.pos); err != nil {
		l.fail(fmt.Errorf("commitlog: zero failed append in segment %020d at %d: %w (after: %w)", l.active.base, l.pos, err, cause))
	}
}

// roll seals the active segment and makes a new one active, large enough
// for an append of need bytes (frames included). The new file exists before
// the old segment is touched, so ENOSPC leaves the log as it was: normally
// it is the file prepared in the background since the old segment became
// active, else (not ready in time, or its preparation failed) one created
// and fallocated here. Then the old segment gets its end marker and an
// fsync before any byte can reach the new one: that is why recovery only
// ever scans the last segment. A prepared file takes its segment name only
// after that fsync. Called with mu held.
//
// A batch larger than SegmentSize gets an oversized segment: created and
// fallocated here at oversizedSize(need), written by that one append. The
// preparation in flight is left alone (its file is SegmentSize long) and
// serves the next roll, under the name of the base that roll gives it: its
// .next name is only a name.
func (l *Log) roll(need int64) error {
	old := l.active
	base := old.base + old.size
	segPath := filepath.Join(l.cfg.Dir, segmentName(base))
	size := l.cfg.SegmentSize
	var prep *prepared
	if need > size {
		size = oversizedSize(need)
	} else {
		prep = l.takePrepared()
	}
	var seg *segment
	if prep == nil {
		var err error
		if seg, err = createSegment(l.cfg.FS, l.cfg.Dir, base, size, l.cfg.io); err != nil {
			return err
		}
	}
	// abandon undoes the roll before the new segment is published. A
	// prepared file not yet renamed stays good for the next attempt.
	abandon := func() {
		if seg != nil {
			_ = seg.f.Close()
			_ = l.cfg.FS.Remove(seg.path)
			return
		}
		l.prep = prep
	}
	if room := old.size - l.pos; room >= headerSize {
		var marker [headerSize]byte
		putFrame(marker[:], blankMagic, nil)
		if _, err := l.cfg.io.writeAt(old.f, marker[:], l.pos); err != nil {
			abandon()
			return fmt.Errorf("seal segment %020d: %w", old.base, err)
		}
	}
	l.syncs.Add(1)
	if err := l.cfg.io.datasync(old.f); err != nil {
		abandon()
		l.fail(fmt.Errorf("fsync sealed segment %020d: %w", old.base, err))
		return l.failed()
	}
	if prep != nil {
		if err := l.cfg.FS.Rename(prep.path, segPath); err != nil {
			abandon()
			return fmt.Errorf("roll to segment %020d: %w", base, err)
		}
		seg = &segment{base: base, size: size, path: segPath, f: prep.f}
	}
	if err := durable.SyncDir(l.cfg.FS, l.cfg.Dir); err != nil {
		abandon() // seg is set: the renamed file goes like a created one
		return fmt.Errorf("roll to segment %020d: %w", base, err)
	}
	segs := append(slices.Clone(*l.segs.Load()), seg)
	l.segs.Store(&segs)
	l.active = seg
	l.pos = 0
	l.written.Store(base)
	l.advanceFlushed(base) // the fsync above made all of the old segment durable
	if !l.cfg.Sync {
		l.changed.broadcast()
	}
	switch {
	case prep != nil:
		l.preparedRolls.Add(1)
	case size > l.cfg.SegmentSize:
		l.directRolls.Add(1)
		l.oversizedRolls.Add(1)
		l.log.Info("commitlog: a batch larger than SegmentSize gets a segment of its own",
			logKeySegment, segmentName(base), "size", size, "batch", need, "segment_size", l.cfg.SegmentSize)
	default:
		l.directRolls.Add(1)
	}
	l.startPrepare(base + seg.size)
	return nil
}

// oversizedAlign rounds an oversized segment up to whole 4 KiB pages, so
// that the segments after it keep page-aligned bases.
const oversizedAlign = 4 << 10

// oversizedSize is the size of the segment made for a batch of need bytes
// (frames included) larger than SegmentSize: the batch, rounded up to
// oversizedAlign. What the rounding leaves over takes the end-of-segment
// marker (or, under headerSize bytes, stays zeros), or a later append small
// enough to fit.
func oversizedSize(need int64) int64 {
	return (need + oversizedAlign - 1) / oversizedAlign * oversizedAlign
}

// Sync blocks until everything below end is durable or ctx is done. In sync
// mode this is group commit: the flusher fsyncs whatever has been written,
// and every waiter whose end it covers is released by the same broadcast. In
// async mode Sync returns at once; the flusher fsyncs every FlushInterval.
func (l *Log) Sync(ctx context.Context, end int64) error {
	if !l.cfg.Sync {
		return nil
	}
	for {
		if l.flushed.Load() >= end {
			return nil
		}
		if err := l.failed(); err != nil {
			return err
		}
		if w := l.written.Load(); end > w {
			return fmt.Errorf("commitlog: sync to %d past written end %d: %w", end, w, ErrOutOfRange)
		}
		l.syncMu.Lock()
		if l.flushed.Load() >= end { // re-check: a round may have ended meanwhile
			l.syncMu.Unlock()
			return nil
		}
		if l.failedRound {
			l.syncMu.Unlock()
			continue // failed() now reports it
		}
		if l.nextRound == nil {
			l.nextRound = make(chan struct{})
		}
		ch := l.nextRound
		l.syncMu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-l.done:
			if l.flushed.Load() >= end {
				return nil
			}
			return ErrClosed
		}
	}
}

// flushLoop is the one goroutine that fsyncs appends. In sync mode Append
// kicks it; whatever was written while it was in fdatasync is covered by its
// next round, which is what groups commits. In async mode it runs on a ticker.
func (l *Log) flushLoop() {
	defer close(l.stopped)
	var tick <-chan time.Time
	if !l.cfg.Sync {
		t := time.NewTicker(l.cfg.FlushInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-l.kick:
		case <-tick:
		case <-l.stop:
			return
		}
		if err := l.flush(); err != nil {
			return // l.fail has recorded it; Append and Sync report it
		}
	}
}

// flush fsyncs the active segment until flushed catches up with written.
func (l *Log) flush() error {
	for {
		if err := l.failed(); err != nil {
			return err
		}
		l.gather()
		// Take the written end and the waiting round together. No Append
		// can finish while mu is held, and a waiter joins a round only after
		// its Append returned, so every waiter in this round has end <= w.
		// (Lock order: mu, then syncMu.)
		l.mu.Lock()
		seg, w := l.active, l.written.Load()
		l.syncMu.Lock()
		round := l.nextRound
		l.nextRound = nil
		l.syncMu.Unlock()
		l.mu.Unlock()

		if w <= l.flushed.Load() {
			if round != nil {
				close(round)
			}
			return nil
		}
		l.syncs.Add(1)
		err := l.cfg.io.datasync(seg.f)
		if err != nil && seg.dropped.Load() {
			// Dropped after a roll, whose own fsync already covered it.
			err = nil
		}
		if err != nil {
			err = fmt.Errorf("commitlog: fsync segment %020d: %w", seg.base, err)
			l.fail(err)
		} else {
			l.advanceFlushed(w)
		}
		if round != nil {
			close(round)
		}
		if err != nil {
			return err
		}
	}
}

// gather lets writers that the last round released append before the next
// fsync starts, so that they share it rather than wait a whole extra round.
// Yielding puts the flusher behind every runnable goroutine; it goes on as
// soon as a yield brings no new writes, so a lone writer loses next to
// nothing.
func (l *Log) gather() {
	for range maxGatherYields {
		w := l.written.Load()
		runtime.Gosched()
		if l.written.Load() == w {
			return
		}
	}
}

// advanceFlushed raises flushed to off (never lowers it) and, in sync mode,
// wakes waiters since Committed moved.
func (l *Log) advanceFlushed(off int64) {
	for {
		cur := l.flushed.Load()
		if off <= cur {
			return
		}
		if l.flushed.CompareAndSwap(cur, off) {
			break
		}
	}
	if l.cfg.Sync {
		l.changed.broadcast()
	}
}

// fail records the first unrecoverable error (a failed fsync: the kernel may
// have dropped the dirty pages, so retrying would lie; or a failed write
// that could not be zeroed again) and wakes waiters. From then on Append
// and Sync return it, wrapping ErrFailed.
func (l *Log) fail(err error) {
	err = fmt.Errorf("%w: %w", ErrFailed, err)
	if l.failure.CompareAndSwap(nil, &err) {
		l.log.Error("commitlog failed; refusing further appends until reopened", logKeyErr, err)
	}
	l.syncMu.Lock()
	l.failedRound = true
	if l.nextRound != nil {
		close(l.nextRound)
		l.nextRound = nil
	}
	l.syncMu.Unlock()
	l.changed.broadcast()
}

func (l *Log) failed() error {
	if p := l.failure.Load(); p != nil {
		return *p
	}
	return nil
}

// Failed returns the error that made the Log refuse appends (wrapping
// ErrFailed), or nil while it works.
func (l *Log) Failed() error { return l.failed() }

// Committed is the readable end of the log: the fsynced offset in sync mode,
// the written offset in async mode.
func (l *Log) Committed() int64 {
	if l.cfg.Sync {
		return l.flushed.Load()
	}
	return l.written.Load()
}

// End is the offset after the last frame appended: what a Sync for
// everything appended so far waits for.
func (l *Log) End() int64 { return l.written.Load() }

// Changed returns a channel that is closed when Committed next advances (or
// the log fails). Take a new channel after each wake-up. Once the log is
// closed, the channel returned is always closed.
func (l *Log) Changed() <-chan struct{} { return l.changed.wait() }

// MinOffset is the base offset of the oldest segment still on disk.
func (l *Log) MinOffset() int64 { return (*l.segs.Load())[0].base }

// Segment describes one segment file.
type Segment struct {
	Base int64 // offset of the segment's first byte
	End  int64 // Base plus the segment's size when sealed; the written end for the active one
}

// Segments lists the segments, oldest first.
func (l *Log) Segments() []Segment {
	l.mu.Lock()
	defer l.mu.Unlock()
	segs := *l.segs.Load()
	out := make([]Segment, len(segs))
	for i, s := range segs {
		out[i] = Segment{Base: s.base, End: s.base + s.size}
	}
	out[len(out)-1].End = l.written.Load()
	return out
}

// SegmentModTime is when the segment at base was last written: for a sealed
// segment, its seal, so no record in it was stored later. Retention dates a
// segment by it when no readable record after the segment can.
func (l *Log) SegmentModTime(base int64) (time.Time, error) {
	for _, s := range *l.segs.Load() {
		if s.base == base {
			fi, err := s.f.Stat()
			if err != nil {
				return time.Time{}, l.readErr(s, err)
			}
			return fi.ModTime(), nil
		}
	}
	return time.Time{}, fmt.Errorf("commitlog: no segment at %d: %w", base, ErrOutOfRange)
}

// DropBefore deletes the sealed segments whose End <= off, oldest first; the
// active segment is never dropped. It returns how many were deleted. Reads of
// offsets in a dropped segment return ErrOutOfRange, including reads that
// were in flight when it was dropped.
func (l *Log) DropBefore(off int64) (int, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return 0, ErrClosed
	}
	segs := *l.segs.Load()
	n := 0
	for n < len(segs)-1 && segs[n].base+segs[n].size <= off {
		n++
	}
	if n == 0 {
		l.mu.Unlock()
		return 0, nil
	}
	keep := slices.Clone(segs[n:])
	l.segs.Store(&keep)
	l.mu.Unlock()

	// Unlinking a large preallocated file takes a while; do it without mu so
	// appends go on.
	var errs []error
	for _, s := range segs[:n] {
		s.dropped.Store(true)
		_ = s.f.Close()
		if err := l.cfg.FS.Remove(s.path); err != nil {
			errs = append(errs, fmt.Errorf("remove segment %020d: %w", s.base, err))
		}
	}
	if err := durable.SyncDir(l.cfg.FS, l.cfg.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("commitlog: drop before %d: %w", off, err)
	}
	return n, nil
}

// quarantine records a damaged span that reading skips, saying so at ERROR
// the first time it is found in this process.
func (l *Log) quarantine(e CorruptError) {
	l.quarMu.Lock()
	_, seen := l.quarantined[e.Off]
	for _, q := range l.quarantined {
		// Inside a span already known (found from a later offset first,
		// then from an earlier one): the same damage.
		seen = seen || (q.Off <= e.Off && e.Next <= q.Next)
	}
	if !seen {
		if l.quarantined == nil {
			l.quarantined = make(map[int64]CorruptError)
		}
		for off, q := range l.quarantined {
			if e.Off <= q.Off && q.Next <= e.Next {
				delete(l.quarantined, off) // one span covers both
			}
		}
		l.quarantined[e.Off] = e
	}
	l.quarMu.Unlock()
	if !seen {
		l.log.Error("commitlog: damaged span quarantined; reading skips it",
			logKeyOffset, e.Off, logKeyNext, e.Next, logKeyReason, e.Reason)
	}
}

// quarantinedAround returns the known damaged span holding off, if any.
func (l *Log) quarantinedAround(off int64) (CorruptError, bool) {
	l.quarMu.Lock()
	defer l.quarMu.Unlock()
	for _, e := range l.quarantined {
		if e.Off <= off && off < e.Next {
			return e, true
		}
	}
	return CorruptError{}, false
}

// Quarantined lists the damaged spans found so far (by recovery, ReadAt or
// Scan) in segments still on disk, by offset. Each is logged once at ERROR
// when found; a restart finds those of the newest segment again at once, and
// the others when something reads them.
func (l *Log) Quarantined() []CorruptError {
	minOff := l.MinOffset()
	l.quarMu.Lock()
	out := make([]CorruptError, 0, len(l.quarantined))
	for _, e := range l.quarantined {
		if e.Off >= minOff {
			out = append(out, e)
		}
	}
	l.quarMu.Unlock()
	slices.SortFunc(out, func(a, b CorruptError) int { return cmp.Compare(a.Off, b.Off) })
	return out
}

// notifier wakes any number of waiters by closing a channel and replacing it
// (lazily: no allocation while nobody waits).
type notifier struct {
	mu   sync.Mutex
	ch   chan struct{} // guarded by mu; nil until someone waits
	shut bool          // guarded by mu: after shutdown every wait returns a closed channel
}

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(chan struct{})
		if n.shut {
			close(n.ch)
		}
	}
	return n.ch
}

func (n *notifier) broadcast() {
	n.mu.Lock()
	if n.ch != nil && !n.shut {
		close(n.ch)
		n.ch = nil
	}
	n.mu.Unlock()
}

// shutdown wakes every waiter for good, so that nobody blocks on a closed log.
func (n *notifier) shutdown() {
	n.mu.Lock()
	if !n.shut {
		n.shut = true
		if n.ch != nil {
			close(n.ch)
		} else {
			n.ch = make(chan struct{})
			close(n.ch)
		}
	}
	n.mu.Unlock()
}
