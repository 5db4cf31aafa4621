package commitlog

import (
	"fmt"
	"github.com/postbus/postbus/broker/internal/durable"
	"os"
	"path/filepath"
	"slices"
)

// recover opens the segments in the directory and makes the last one
// writable again. Every other segment was fsynced when it was sealed, so only
// the last is scanned: from its start, verifying each frame, up to the first
// that fails. Everything after that point is zeroed and fsynced, so that a
// stale frame beyond it can never be taken for data by a later recovery.
// Files left by a preparation that a crash interrupted (or completed, but
// never used) are deleted: the log prepares a fresh one once open.
func (l *Log) recover() error {
	dir, size := l.cfg.Dir, l.cfg.SegmentSize
	entries, err := l.cfg.FS.ReadDir(dir)
	if err != nil {
		return err
	}
	var bases []int64
	for _, e := range entries {
		if base, ok := parseSegmentName(e.Name()); ok && e.Type().IsRegular() {
			bases = append(bases, base)
		}
		if isNextName(e.Name()) {
			if err := l.cfg.FS.Remove(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("remove leftover %s: %w", e.Name(), err)
			}
			l.log.Debug("commitlog: removed leftover segment preparation", logKeySegment, e.Name())
		}
	}
	slices.Sort(bases)

	if len(bases) == 0 {
		return l.createFirst()
	}
	for i := 1; i < len(bases); i++ {
		if bases[i] != bases[i-1]+size {
			return fmt.Errorf("segment %020d follows %020d; want %020d (missing segment, or SegmentSize changed): %w",
				bases[i], bases[i-1], bases[i-1]+size, ErrCorrupt)
		}
	}

	segs := make([]*segment, 0, len(bases))
	for _, base := range bases {
		path := filepath.Join(dir, segmentName(base))
		f, err := l.cfg.FS.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			l.segs.Store(&segs) // so that Open closes what was opened
			return fmt.Errorf("open segment %020d: %w", base, err)
		}
		segs = append(segs, &segment{base: base, path: path, f: f})
	}
	l.segs.Store(&segs)
	for _, s := range segs[:len(segs)-1] {
		if err := checkSize(s, size); err != nil {
			return err
		}
	}

	last := segs[len(segs)-1]
	fileSize, pos, reason, err := scanTail(last, size, l.cfg.MaxPayload)
	if err != nil {
		return err
	}
	if pos == 0 && len(segs) > 1 {
		// A roll that found no prepared file creates the new one before it
		// seals the old one, so a crash can leave an empty (or never
		// preallocated) newest segment whose predecessor was not fsynced;
		// a prepared one is renamed in after the seal, and may be left empty
		// too. Drop it and recover the predecessor.
		l.log.Warn("commitlog: removing empty newest segment left by an interrupted roll",
			logKeySegment, segmentName(last.base), logKeyReason, reason)
		_ = last.f.Close()
		if err := l.cfg.FS.Remove(last.path); err != nil {
			return fmt.Errorf("remove empty segment %020d: %w", last.base, err)
		}
		if err := durable.SyncDir(l.cfg.FS, dir); err != nil {
			return err
		}
		segs = segs[:len(segs)-1]
		l.segs.Store(&segs)
		last = segs[len(segs)-1]
		if fileSize, pos, reason, err = scanTail(last, size, l.cfg.MaxPayload); err != nil {
			return err
		}
	}
	if fileSize < size {
		if pos > 0 {
			return fmt.Errorf("segment %020d is %d bytes, want %d (SegmentSize changed?)", last.base, fileSize, size)
		}
		// Created but not (fully) preallocated when the process died.
		if err := l.cfg.io.allocate(last.f, size); err != nil {
			return fmt.Errorf("preallocate segment %020d: %w", last.base, err)
		}
	}
	if reason != "" {
		l.log.Warn("commitlog: truncating torn or corrupt tail",
			logKeySegment, segmentName(last.base), logKeyOffset, last.base+pos, logKeyReason, reason)
	}
	if err := zeroRange(last.f, pos, size-pos); err != nil {
		return fmt.Errorf("zero tail of segment %020d from %d: %w", last.base, pos, err)
	}
	if err := l.cfg.FS.Sync(last.f); err != nil {
		return fmt.Errorf("fsync segment %020d: %w", last.base, err)
	}
	l.active = last
	l.pos = pos
	l.written.Store(last.base + pos)
	l.flushed.Store(last.base + pos)
	return nil
}

// createFirst makes the first segment of a new log, zero-filled like every
// segment appends go to. It is a one-off, so it is done here rather than in
// the background: prepared under its .next name, then renamed.
func (l *Log) createFirst() error {
	dir, size := l.cfg.Dir, l.cfg.SegmentSize
	tmp := filepath.Join(dir, nextName(0))
	f, err := prepareFile(l.cfg.FS, tmp, size, l.cfg.io, nil, nil)
	if err != nil {
		return fmt.Errorf("create segment %020d: %w", 0, err)
	}
	path := filepath.Join(dir, segmentName(0))
	if err := l.cfg.FS.Rename(tmp, path); err != nil {
		_ = f.Close()
		_ = l.cfg.FS.Remove(tmp)
		return fmt.Errorf("create segment %020d: %w", 0, err)
	}
	seg := &segment{base: 0, path: path, f: f}
	l.segs.Store(&[]*segment{seg}) // so that Open closes it on failure
	if err := durable.SyncDir(l.cfg.FS, dir); err != nil {
		return err
	}
	l.active = seg
	return nil
}

func checkSize(s *segment, size int64) error {
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("stat segment %020d: %w", s.base, err)
	}
	if fi.Size() != size {
		return fmt.Errorf("sealed segment %020d is %d bytes, want %d (SegmentSize changed?)", s.base, fi.Size(), size)
	}
	return nil
}

// scanTail finds the end of the valid frames of s: the position of the first
// frame that is not a valid data frame, and, when that is not a clean end
// (zeros or an end-of-segment marker), why.
func scanTail(s *segment, size int64, maxPayload int) (fileSize, pos int64, reason string, err error) {
	fi, err := s.f.Stat()
	if err != nil {
		return 0, 0, "", fmt.Errorf("stat segment %020d: %w", s.base, err)
	}
	fileSize = fi.Size()
	if fileSize > size {
		return 0, 0, "", fmt.Errorf("segment %020d is %d bytes, want %d (SegmentSize changed?)", s.base, fileSize, size)
	}
	bp := scanPool.Get().(*[]byte)
	defer scanPool.Put(bp)
	r := frameReader{f: s.f, size: fileSize, limit: fileSize, maxPayload: maxPayload, buf: *bp}
	for r.pos < r.limit {
		kind, _, why, err := r.next()
		if err != nil {
			return 0, 0, "", fmt.Errorf("scan segment %020d: %w", s.base, err)
		}
		switch kind {
		case frameData:
			continue
		case frameEnd:
			return fileSize, r.pos, "", nil
		default:
			return fileSize, r.pos, why, nil
		}
	}
	return fileSize, r.pos, "", nil
}
