package broker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/consumequeue"
	"github.com/postbus/postbus/broker/meta"
)

// diskCheckInterval is how often disk use is measured; statfs is cheap and
// the full watermark must trip before the disk does.
const diskCheckInterval = time.Second

// retentionLoop deletes what retention and the disk watermarks say must go.
func (b *Broker) retentionLoop() {
	defer b.wg.Done()
	disk := time.NewTicker(min(diskCheckInterval, b.cfg.RetentionInterval))
	defer disk.Stop()
	ret := time.NewTicker(b.cfg.RetentionInterval)
	defer ret.Stop()
	b.checkDisk()
	for {
		select {
		case <-b.closing:
			return
		case <-disk.C:
			b.checkDisk()
		case <-ret.C:
			b.pruneDedup()
			b.purgeTombstones(context.Background())
			b.dispatchMu.Lock()
			cp := b.checkpointed
			b.dispatchMu.Unlock()
			if _, err := b.meta.PurgeFiredTimers(context.Background(), cp); err != nil {
				b.logger.Error("purging fired timers failed", slog.Any("err", err))
			}
			// The attempt log is kept as long as the messages it traces.
			if err := b.meta.PurgeAttempts(context.Background(), b.now().Add(-b.logRetention())); err != nil {
				b.logger.Error("trimming the attempt log failed", slog.Any("err", err))
			}
			if err := b.applyRetention(); err != nil {
				b.logger.Error("retention failed", slog.Any("err", err))
			}
		}
	}
}

// DiskUsage returns the used fraction of the file system holding dir, as
// df's Use% shows it: used / (used + what an unprivileged writer may
// still use), the blocks reserved for root counted in neither.
func DiskUsage(dir string) (float64, error) {
	avail, total, err := diskSpace(dir)
	if err != nil {
		return 0, fmt.Errorf("disk space of %s: %w", dir, err)
	}
	if total == 0 {
		return 0, nil
	}
	return 1 - float64(avail)/float64(total), nil
}

// checkDisk applies the watermarks: above DiskCleanRatio the oldest
// segments are deleted even if retention has not passed; above
// DiskFullRatio (after cleaning) publishes are refused.
func (b *Broker) checkDisk() {
	used, err := DiskUsage(b.cfg.Dir)
	if err != nil {
		b.logger.Error("disk check failed", slog.Any("err", err))
		return
	}
	if used <= b.cfg.DiskCleanRatio {
		b.metrics.held(heldByDiskClean, 0)
	} else {
		if n, err := b.dropOldest(used); err != nil {
			b.logger.Error("cleaning the oldest segments failed", slog.Any("err", err))
		} else if n > 0 {
			if used, err = DiskUsage(b.cfg.Dir); err != nil {
				return
			}
		}
	}
	b.diskUsed.Store(math.Float64bits(used))
	full := used > b.cfg.DiskFullRatio
	if was := b.diskFull.Swap(full); was != full {
		if full {
			b.logger.Error("disk over the full watermark: refusing publishes",
				slog.Float64("used", used), slog.Float64("watermark", b.cfg.DiskFullRatio))
		} else {
			b.logger.Info("disk below the full watermark: accepting publishes again", slog.Float64("used", used))
		}
	}
}

// dropOldest deletes sealed segments, oldest first, while the disk is over
// the clean watermark. It never deletes what dispatch has not indexed.
func (b *Broker) dropOldest(used float64) (int, error) {
	dropped := 0
	b.metrics.held(heldByDiskClean, 0) // until a prepared record stops it
	for used > b.cfg.DiskCleanRatio {
		segs := b.log.Segments()
		if len(segs) < 2 || segs[0].End > b.dispatched.Load() {
			break
		}
		// A prepared, undecided transaction's record is kept even here:
		// its producer was told it is stored, and its commit needs the
		// body. It waits at most its transaction's lifetime.
		floor, held, err := b.preparedFloor(context.Background())
		if err != nil {
			return dropped, err
		}
		if held && segs[0].End > floor {
			b.metrics.held(heldByDiskClean, segs[len(segs)-1].Base-segs[0].Base)
			b.noteHeld(&b.diskCleanHeldAt, floor, slog.LevelError, "disk over the clean watermark: the oldest segment holds an undecided prepared transaction; keeping it and every later one until it is decided")
			break
		}
		// Acknowledged messages go before their retention: by design (a
		// full disk would stop every publish), but never quietly.
		msgs := b.queuedIn(segs[0].Base, segs[0].End)
		b.logger.Error("disk over the clean watermark: deleting the oldest segment before its retention",
			slog.Float64("used", used), slog.Float64("watermark", b.cfg.DiskCleanRatio),
			slog.Int64("segment", segs[0].Base), slog.Int64("bytes", segs[0].End-segs[0].Base), slog.Int64("messages", msgs))
		if err := b.dropBefore(segs[0].End); err != nil {
			return dropped, err
		}
		b.metrics.cleaned(msgs, segs[0].End-segs[0].Base)
		dropped++
		if used, err = DiskUsage(b.cfg.Dir); err != nil {
			return dropped, err
		}
	}
	return dropped, nil
}

// queuedIn counts the queue entries (messages on their queues, retry and
// dead-letter copies included) whose records lie in [from, to) of the log.
func (b *Broker) queuedIn(from, to int64) int64 {
	b.dispatchMu.Lock()
	defer b.dispatchMu.Unlock()
	var n int64
	var buf []consumequeue.Entry
	var err error
	for _, q := range b.cq.Queues() {
		lo, hi := b.cq.Bounds(q.Topic, q.Queue)
	scan:
		for lo < hi {
			if buf, err = b.cq.Read(q.Topic, q.Queue, lo, 1024, buf[:0]); err != nil || len(buf) == 0 {
				break
			}
			for _, e := range buf {
				if e.Offset >= to {
					break scan
				}
				if e.Offset >= from {
					n++
				}
			}
			lo += int64(len(buf))
		}
	}
	return n
}

// logRetention is how long the log keeps a segment: the broker's retention,
// or a topic's if longer (the log is shared; a shorter topic retention only
// hides messages from reads).
func (b *Broker) logRetention() time.Duration {
	keep := b.cfg.Retention
	b.topicsMu.RLock()
	for _, ts := range b.topics {
		keep = max(keep, ts.info.Load().Retention)
	}
	b.topicsMu.RUnlock()
	return keep
}

// applyRetention deletes sealed segments whose every record is older than
// the retention. A segment's records are all older than the first record
// of the segment after it.
func (b *Broker) applyRetention() error {
	cutoff := b.now().Add(-b.logRetention()).UnixMilli()
	segs := b.log.Segments()
	drop := int64(-1)
	for i := 0; i+1 < len(segs); i++ {
		next := segs[i+1]
		if next.End <= next.Base || segs[i].End > b.dispatched.Load() {
			break
		}
		// Dated by the first record from the next segment on: it may hold
		// none (sealed empty, or all damaged). When nothing readable (or
		// nothing at all, a read failing) tells its age, its file's
		// modification time does: the seal, after every record in it. A
		// segment that cannot be dated by its records must not keep every
		// later one, and the disk, forever.
		rec, err := b.firstReadable(next.Base, segs[len(segs)-1].End)
		var stored int64
		switch {
		case err == nil && rec != nil && len(rec) >= posStoredAt+8:
			stored = int64(binary.BigEndian.Uint64(rec[posStoredAt:]))
		default:
			mt, merr := b.log.SegmentModTime(segs[i].Base)
			if merr != nil {
				return fmt.Errorf("date segment %d: %w", segs[i].Base, errors.Join(err, merr))
			}
			stored = mt.UnixMilli()
			b.logger.Warn("retention: no readable record after the segment dates it; using its file's modification time",
				slog.Int64("segment", segs[i].Base), slog.Time("mtime", mt), slog.Any("err", err))
		}
		if stored >= cutoff {
			break
		}
		drop = segs[i].End
	}
	if drop < 0 {
		b.metrics.held(heldByRetention, 0)
		return nil
	}
	// The segments holding a prepared, undecided transaction's record, and
	// those after it, are kept until it is decided (attack s8 F10).
	floor, held, err := b.preparedFloor(context.Background())
	if err != nil {
		return err
	}
	if held && drop > floor {
		keep := int64(-1)
		for _, sg := range segs {
			if sg.End > floor {
				break
			}
			keep = sg.End
		}
		b.metrics.held(heldByRetention, drop-max(keep, b.log.MinOffset()))
		b.noteHeld(&b.retentionHeldAt, floor, slog.LevelWarn, "retention: keeping the segments from an undecided prepared transaction's record on until it is decided")
		if drop = keep; drop < 0 {
			return nil
		}
	} else {
		b.metrics.held(heldByRetention, 0)
	}
	return b.dropBefore(drop)
}

// preparedFloor is the log offset of the oldest prepared record whose
// transaction is undecided; held is false when there is none. Its rows are
// stored before dispatch moves past it, and retention deletes nothing
// dispatch has not passed, so the rows tell all that retention could reach.
// A transaction is decided at the latest when its timeout and checks run
// out, so what it keeps is bounded.
func (b *Broker) preparedFloor(ctx context.Context) (floor int64, held bool, err error) {
	ts, err := b.meta.Txns(ctx, meta.TxnPrepared, -1, 1)
	if err != nil {
		return 0, false, fmt.Errorf("find undecided transactions before deleting segments: %w", err)
	}
	if len(ts) == 0 {
		return 0, false, nil
	}
	return ts[0].LogOffset, true, nil
}

// noteHeld logs, once per record and path (last holds 1 + the offset it
// logged last), that a prepared record holds segments retention or the
// disk watermark would delete.
func (b *Broker) noteHeld(last *atomic.Int64, floor int64, level slog.Level, msg string) {
	if last.Swap(floor+1) == floor+1 {
		return
	}
	b.logger.Log(context.Background(), level, msg, slog.Int64("offset", floor))
}

// The label values of postbus_retention_held_bytes.
const (
	heldByRetention = "retention"
	heldByDiskClean = "disk_clean"
)

// firstReadable reads the first record in [off, end) that is not damaged,
// or nil when there is none: retention dates a segment by it, and a damaged
// record must not stop retention for the whole log. A segment may hold no
// record at all, only its end marker (sealed empty because the batch that
// came next was larger than a segment and got a segment of its own): the
// search goes on in the next one.
func (b *Broker) firstReadable(off, end int64) ([]byte, error) {
	end = min(end, b.log.Committed()) // nothing past it can be read yet
	for off < end {
		rec, next, err := b.log.ReadAt(off, nil)
		if errors.Is(err, commitlog.ErrEndOfSegment) && next > off {
			off = next
			continue
		}
		var ce *commitlog.CorruptError
		if !errors.As(err, &ce) {
			return rec, err
		}
		if ce.Next <= off {
			return nil, err
		}
		off = ce.Next
	}
	return nil, nil
}

// dropBefore deletes log segments ending at or before off and the index
// entries that pointed into them, keeping per-queue byte counts true.
func (b *Broker) dropBefore(off int64) error {
	if err := b.timer.MoveBefore(context.Background(), off); err != nil {
		return fmt.Errorf("move delayed messages out of the way: %w", err)
	}
	// The consume queues' floor is raised before the segments go: a
	// segment missing below the log's start at the next open, with the
	// floor not past it, was lost while stopped, not retired (recover.go).
	if err := b.cq.SetFloor(retentionFloor(b.log, off)); err != nil {
		return fmt.Errorf("drop segments: %w", err)
	}
	var n int
	var err error
	if r := b.cfg.Replica; r != nil {
		// In a replica group the cut is the group's: it goes through raft
		// and every member drops the same segments when it applies it
		// (RetireBefore). A member never deletes log on its own, or the
		// members' logs would differ and what is readable would depend on
		// which one leads.
		n, err = r.Trim(off)
	} else {
		n, err = b.log.DropBefore(off)
	}
	if err != nil {
		return fmt.Errorf("drop segments: %w", err)
	}
	if n == 0 {
		return nil
	}
	logMin := b.log.MinOffset()
	b.dispatchMu.Lock()
	defer b.dispatchMu.Unlock()
	var buf []consumequeue.Entry
	for _, q := range b.cq.Queues() {
		lo, hi := b.cq.Bounds(q.Topic, q.Queue)
	scan:
		for lo < hi {
			buf, err = b.cq.Read(q.Topic, q.Queue, lo, 1024, buf[:0])
			if err != nil || len(buf) == 0 {
				break
			}
			for _, e := range buf {
				if e.Offset >= logMin {
					break scan
				}
				b.queueBytes[q] -= liveBytes(e)
			}
			lo += int64(len(buf))
		}
	}
	b.checkpointDirty = true
	if err := b.cq.DropBefore(logMin); err != nil {
		return fmt.Errorf("drop consume-queue entries: %w", err)
	}
	if err := b.idx.DropBefore(logMin); err != nil {
		return fmt.Errorf("drop key-index files: %w", err)
	}
	b.logger.Info("retention removed segments", slog.Int("segments", n), slog.Int64("log_min", logMin))
	return nil
}

// retentionFloor is the consume queues' retention floor once the segments
// ending at or before off are gone: the base of the first one kept.
func retentionFloor(l *commitlog.Log, off int64) int64 {
	segs := l.Segments()
	floor := segs[len(segs)-1].Base
	for _, sg := range segs[:len(segs)-1] {
		if sg.End > off {
			floor = sg.Base
			break
		}
	}
	return floor
}

// RetireBefore applies a replica group's retention cut to a member's
// files in dir, whether or not its broker runs: the consume queues'
// floor is raised first (as dropBefore does, so that the next open does
// not take the segments for lost ones), then the commitlog's segments
// ending at or before off are deleted. It reports how many were. The
// leader's broker drops its queue and key-index entries itself.
func RetireBefore(dir string, l *commitlog.Log, off int64) (int, error) {
	if err := consumequeue.RaiseFloor(filepath.Join(dir, "consumequeue"), retentionFloor(l, off)); err != nil {
		return 0, fmt.Errorf("retire the log before %d: %w", off, err)
	}
	n, err := l.DropBefore(off)
	if err != nil {
		return n, fmt.Errorf("retire the log before %d: %w", off, err)
	}
	return n, nil
}
