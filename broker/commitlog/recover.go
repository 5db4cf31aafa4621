package commitlog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/postbus/postbus/broker/internal/durable"
)

// recover opens the segments in the directory and makes the last one
// writable again (the recovery rules are in doc.go). Every other segment was
// fsynced when it was sealed, so only the last is scanned: from its start,
// verifying each frame. A damaged frame followed by valid ones is kept in
// place and quarantined; only a torn tail, after which nothing valid
// follows, is zeroed and fsynced, so that a stale frame beyond it can never
// be taken for data by a later recovery. Files left by a preparation that a
// crash interrupted (or completed, but never used) are deleted: the log
// prepares a fresh one once open.
func (l *Log) recover() error {
	dir := l.cfg.Dir
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
	segs := make([]*segment, 0, len(bases))
	for i, base := range bases {
		path := filepath.Join(dir, segmentName(base))
		f, err := l.cfg.FS.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			l.segs.Store(&segs) // so that Open closes what was opened
			return fmt.Errorf("open segment %020d: %w", base, err)
		}
		seg := &segment{base: base, size: l.cfg.SegmentSize, path: path, f: f}
		segs = append(segs, seg)
		if i+1 < len(bases) {
			// A sealed segment holds the log up to the next one's base,
			// whatever SegmentSize is now: the size it was written with.
			seg.size = bases[i+1] - base
		}
	}
	l.segs.Store(&segs)

	for {
		last := segs[len(segs)-1]
		t, err := l.scanNewest(last)
		if err != nil {
			return err
		}
		if t.end > 0 || len(t.spans) > 0 || len(segs) == 1 {
			if err := l.reopenNewest(last, t); err != nil {
				return err
			}
			break
		}
		// A roll that found no prepared file creates the new one before it
		// seals the old one, so a crash can leave an empty (or never
		// preallocated) newest segment whose predecessor was not fsynced;
		// a prepared one is renamed in after the seal, and may be left empty
		// too, or hold only a torn first append. It holds no valid frame:
		// drop it and recover the predecessor.
		l.log.Warn("commitlog: removing newest segment holding no frame, left by an interrupted roll",
			logKeySegment, segmentName(last.base), logKeyReason, t.reason)
		_ = last.f.Close()
		if err := l.cfg.FS.Remove(last.path); err != nil {
			return fmt.Errorf("remove empty segment %020d: %w", last.base, err)
		}
		if err := durable.SyncDir(l.cfg.FS, dir); err != nil {
			return err
		}
		segs = segs[:len(segs)-1]
		l.segs.Store(&segs)
	}
	// Checked once the newest segment is settled: a stray file holding no
	// frame past a gap is removed above, and the segment before it is the
	// newest again rather than a sealed one missing bytes.
	for _, s := range segs[:len(segs)-1] {
		if err := l.checkSealed(s); err != nil {
			return err
		}
	}
	return nil
}

// checkSealed makes sure a sealed segment's file holds every byte of its
// place in the log. Bytes past it (none are ever written there) are left
// alone and never read. A file shorter than its place (cut short, or a
// segment file missing after it, which leaves a gap up to the next one) is
// not a reason to refuse to start: the missing bytes are quarantined, from
// the end of the last whole frame the file holds to the next segment's base,
// and readers go on at that base.
func (l *Log) checkSealed(s *segment) error {
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("stat segment %020d: %w", s.base, err)
	}
	if fi.Size() > s.size {
		l.log.Warn("commitlog: sealed segment is longer than its place in the log; the bytes past it are ignored",
			logKeySegment, segmentName(s.base), "file_size", fi.Size(), "size", s.size)
	}
	if fi.Size() >= s.size {
		return nil
	}
	from, err := l.lastWholeFrameEnd(s, fi.Size())
	if err != nil {
		return err
	}
	l.quarantine(CorruptError{Off: s.base + from, Next: s.base + s.size,
		Reason: fmt.Sprintf("sealed segment %s is %d bytes, but the next segment starts %d bytes after it: "+
			"a segment file is missing or was cut short", segmentName(s.base), fi.Size(), s.size)})
	return nil
}

// lastWholeFrameEnd walks the frames of a sealed segment whose file is only
// fileSize bytes and returns where the missing part starts: the start of the
// frame the file's end cuts, or the file's end. Damage before it is stepped
// over (readers find and quarantine it); an end-of-segment marker means every
// frame is there and only bytes past it are missing.
func (l *Log) lastWholeFrameEnd(s *segment, fileSize int64) (int64, error) {
	bp := scanPool.Get().(*[]byte)
	defer scanPool.Put(bp)
	r := frameReader{f: s.f, size: s.size, limit: fileSize, buf: *bp}
	for r.pos < r.limit {
		at := r.pos
		kind, _, _, err := r.next()
		if err != nil {
			return 0, fmt.Errorf("scan segment %020d: %w", s.base, err)
		}
		switch kind {
		case frameData:
			continue
		case frameEnd:
			return fileSize, nil
		}
		next, _, found, err := r.resyncAfter(at)
		if err != nil {
			return 0, fmt.Errorf("scan segment %020d: %w", s.base, err)
		}
		if !found {
			return at, nil
		}
		r.pos = next
	}
	return fileSize, nil
}

// tailScan is what recovery found in the newest segment.
type tailScan struct {
	fileSize int64
	end      int64          // segment-relative end of the last valid frame: where appends go on
	spans    []CorruptError // damaged spans with valid frames after them: kept, quarantined
	tornAt   int64          // where a torn tail starts (cut); -1 when the frames end cleanly
	reason   string         // why the frame at tornAt failed
}

// scanNewest walks every frame of s, the newest segment, up to the end of its
// file, resynchronising after damage (see frameReader.resync). It reads the
// file as it is, whatever its length: frames up to the file's end count even
// when it is longer than SegmentSize, and one running past a short file's end
// is torn.
func (l *Log) scanNewest(s *segment) (tailScan, error) {
	fi, err := s.f.Stat()
	if err != nil {
		return tailScan{}, fmt.Errorf("stat segment %020d: %w", s.base, err)
	}
	t := tailScan{fileSize: fi.Size(), tornAt: -1}
	bp := scanPool.Get().(*[]byte)
	defer scanPool.Put(bp)
	r := frameReader{f: s.f, size: max(t.fileSize, s.size), limit: t.fileSize, buf: *bp}
	for r.pos < r.limit {
		at := r.pos
		if r.limit-at < headerSize && r.limit < r.size {
			// Fewer bytes than a header before the file's end, in a
			// segment now given more room (SegmentSize grew): the zeros
			// that close a segment too full for a marker are its clean
			// end, not a frame running past the file. (With no more room
			// than the file, decodeFrame says so itself.)
			var tail [headerSize]byte
			n, err := s.f.ReadAt(tail[:r.limit-at], at)
			if err != nil && !errors.Is(err, io.EOF) {
				return tailScan{}, fmt.Errorf("scan segment %020d: %w", s.base, err)
			}
			if tail == [headerSize]byte{} {
				return t, nil
			}
			t.tornAt, t.reason = at, fmt.Sprintf("%d bytes after the last frame, too few for one", n)
			return t, nil
		}
		kind, _, why, err := r.next()
		if err != nil {
			return tailScan{}, fmt.Errorf("scan segment %020d: %w", s.base, err)
		}
		switch kind {
		case frameData:
			t.end = r.pos
			continue
		case frameEnd:
			return t, nil
		}
		next, kind, found, err := r.resyncAfter(at)
		if err != nil {
			return tailScan{}, fmt.Errorf("scan segment %020d: %w", s.base, err)
		}
		if !found {
			t.tornAt, t.reason = at, why
			return t, nil
		}
		if kind == frameEnd {
			// A marker: the segment was sealed, so nothing was torn after it.
			t.spans = append(t.spans, CorruptError{Off: s.base + at, Next: s.base + r.size, Reason: why})
			t.end = next
			return t, nil
		}
		t.spans = append(t.spans, CorruptError{Off: s.base + at, Next: s.base + next, Reason: why})
		r.pos = next
	}
	return t, nil
}

// reopenNewest makes s, scanned as t, the active segment: it keeps every
// valid frame, quarantines the damaged spans between them, cuts a torn tail
// (zeros from the end of the last valid frame on, fsynced), and gives the
// file the length the segment needs: SegmentSize, or the file's own length
// when it holds frames past SegmentSize (an oversized segment, made for a
// batch larger than SegmentSize, or one made with a larger SegmentSize).
func (l *Log) reopenNewest(s *segment, t tailScan) error {
	s.size = l.cfg.SegmentSize
	if t.end > s.size {
		// Normal after a large batch: not a warning.
		s.size = t.fileSize
		l.log.Info("commitlog: newest segment holds frames past SegmentSize (made for a large batch, or with a larger SegmentSize); it keeps its length",
			logKeySegment, segmentName(s.base), "file_size", t.fileSize, "segment_size", l.cfg.SegmentSize)
	}
	for _, e := range t.spans {
		if e.Next > s.base+s.size {
			e.Next = s.base + s.size
		}
		l.quarantine(e)
	}
	if t.tornAt >= 0 {
		l.log.Warn("commitlog: cutting torn tail",
			logKeySegment, segmentName(s.base), logKeyOffset, s.base+t.tornAt, logKeyReason, t.reason)
	}
	switch {
	case t.fileSize > s.size:
		l.log.Warn("commitlog: newest segment is longer than SegmentSize and holds no frame past it; cutting it to size",
			logKeySegment, segmentName(s.base), "file_size", t.fileSize, "segment_size", s.size)
		if err := l.cfg.FS.Truncate(s.f, s.size); err != nil {
			return fmt.Errorf("cut segment %020d to %d bytes: %w", s.base, s.size, err)
		}
	case t.fileSize < s.size:
		if t.end > 0 {
			l.log.Warn("commitlog: newest segment is shorter than SegmentSize (its preallocated tail was lost, or it was made smaller); extending it",
				logKeySegment, segmentName(s.base), "file_size", t.fileSize, "segment_size", s.size)
		}
		// Created but not (fully) preallocated when the process died, or
		// cut short since.
		if err := l.cfg.io.allocate(s.f, s.size); err != nil {
			return fmt.Errorf("preallocate segment %020d: %w", s.base, err)
		}
	}
	if err := l.cfg.FS.ZeroRange(s.f, t.end, s.size-t.end); err != nil {
		return fmt.Errorf("zero tail of segment %020d from %d: %w", s.base, t.end, err)
	}
	if err := l.cfg.FS.Sync(s.f); err != nil {
		return fmt.Errorf("fsync segment %020d: %w", s.base, err)
	}
	l.active = s
	l.pos = t.end
	l.written.Store(s.base + t.end)
	l.flushed.Store(s.base + t.end)
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
	seg := &segment{base: 0, size: size, path: path, f: f}
	l.segs.Store(&[]*segment{seg}) // so that Open closes it on failure
	if err := durable.SyncDir(l.cfg.FS, dir); err != nil {
		return err
	}
	l.active = seg
	return nil
}
