package commitlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
)

const (
	// scanChunk is how much Scan and recovery read per pread.
	scanChunk = 1 << 20
	// readChunk is ReadAt's first pread: header, a typical payload and the
	// next frame's header in one system call.
	readChunk = 4 << 10
)

var (
	scanPool = sync.Pool{New: func() any { b := make([]byte, scanChunk); return &b }}
	readPool = sync.Pool{New: func() any { b := make([]byte, readChunk); return &b }}
)

// locate finds the segment holding off, which must lie in [MinOffset,
// Committed) — or equal Committed when atEnd is allowed.
func (l *Log) locate(off int64, atEnd bool) (*segment, int64, error) {
	if l.closing.Load() {
		return nil, 0, ErrClosed
	}
	// Committed before segs: a roll publishes the new segment before it
	// moves written or flushed, so every offset below committed has its
	// segment in this snapshot.
	committed := l.Committed()
	segs := *l.segs.Load()
	if off < segs[0].base || off > committed || (off == committed && !atEnd) {
		return nil, 0, fmt.Errorf("commitlog: offset %d outside [%d, %d): %w", off, segs[0].base, committed, ErrOutOfRange)
	}
	i := sort.Search(len(segs), func(i int) bool { return segs[i].base > off }) - 1
	return segs[i], committed, nil
}

// readErr explains a failed pread: the segment was dropped or the log closed
// under it, or a real I/O error.
func (l *Log) readErr(seg *segment, err error) error {
	switch {
	case seg.dropped.Load():
		return fmt.Errorf("commitlog: segment %020d dropped: %w", seg.base, ErrOutOfRange)
	case l.closing.Load() && errors.Is(err, os.ErrClosed):
		return ErrClosed
	}
	return fmt.Errorf("commitlog: read segment %020d: %w", seg.base, err)
}

// ReadAt reads and verifies the frame at off, which must be a frame's offset
// below Committed. The payload is written into buf's backing array when
// cap(buf) is large enough (pass buf[:0] of a previous result to reuse it),
// else into a fresh slice. next is the offset of the following frame; when
// that is an end-of-segment marker already committed, next is the next
// segment's base. Reads use pread and never wait for the writer.
func (l *Log) ReadAt(off int64, buf []byte) (payload []byte, next int64, err error) {
	seg, committed, err := l.locate(off, false)
	if err != nil {
		return nil, 0, err
	}
	size := l.cfg.SegmentSize
	segEnd := seg.base + size
	rel := off - seg.base
	room := size - rel

	sp := readPool.Get().(*[]byte)
	defer readPool.Put(sp)
	s := *sp
	n, err := seg.f.ReadAt(s[:min(int64(len(s)), room)], rel)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, l.readErr(seg, err)
	}
	kind, p, frameSize, reason := decodeFrame(s[:n], room, l.cfg.MaxPayload)
	switch kind {
	case frameData:
		payload = append(buf[:0], p...)
	case frameShort:
		if n < headerSize {
			return nil, 0, &CorruptError{Segment: seg.base, Offset: off, Reason: "segment file shorter than its size"}
		}
		length := frameSize - headerSize
		payload = buf[:0]
		if cap(payload) < length {
			payload = make([]byte, length)
		}
		payload = payload[:length]
		k := copy(payload, s[headerSize:n])
		if _, err := seg.f.ReadAt(payload[k:], rel+int64(n)); err != nil {
			return nil, 0, l.readErr(seg, err)
		}
		if frameCRC(s, payload) != binary.BigEndian.Uint32(s[8:12]) {
			return nil, 0, &CorruptError{Segment: seg.base, Offset: off, Reason: "crc mismatch"}
		}
	case frameEnd:
		if room >= headerSize && binary.BigEndian.Uint32(s[4:8]) != blankMagic {
			// Zeros below Committed: the offset is not where a frame starts.
			return nil, 0, fmt.Errorf("commitlog: no frame at %d: %w", off, ErrOutOfRange)
		}
		return nil, segEnd, fmt.Errorf("commitlog: read at %d: %w", off, ErrEndOfSegment)
	default:
		return nil, 0, &CorruptError{Segment: seg.base, Offset: off, Reason: reason}
	}

	next = off + int64(frameSize)
	// Look at what follows, so that a reader walking by next steps over an
	// end-of-segment marker. Only bytes below committed are stable.
	if next < committed {
		nrel := rel + int64(frameSize)
		if size-nrel < headerSize {
			return payload, segEnd, nil
		}
		var h []byte
		if n >= frameSize+headerSize {
			h = s[frameSize : frameSize+headerSize]
		} else {
			h = s[:headerSize]
			if _, err := seg.f.ReadAt(h, nrel); err != nil {
				return nil, 0, l.readErr(seg, err)
			}
		}
		if k, _, _, _ := decodeFrame(h, size-nrel, l.cfg.MaxPayload); k == frameEnd {
			next = segEnd
		}
	}
	return payload, next, nil
}

// Scan calls fn for each frame from off up to Committed (as of the call),
// reading in chunks of scanChunk bytes, and returns the offset after the last
// frame delivered (past an end-of-segment marker when it read one). off must
// be a frame's offset, an end-of-segment position, or Committed. fn's payload
// is valid only during the call. If fn returns an error, Scan stops and
// returns that error with the offset of the frame fn refused, so that a retry
// starts there.
func (l *Log) Scan(off int64, fn func(off int64, payload []byte) error) (next int64, err error) {
	_, committed, err := l.locate(off, true)
	if err != nil {
		return off, err
	}
	segs := *l.segs.Load()
	i := sort.Search(len(segs), func(i int) bool { return segs[i].base > off }) - 1
	if i < 0 {
		// A drop raced the locate above.
		return off, fmt.Errorf("commitlog: offset %d below %d: %w", off, segs[0].base, ErrOutOfRange)
	}
	bp := scanPool.Get().(*[]byte)
	defer scanPool.Put(bp)

	size := l.cfg.SegmentSize
	next = off
	for ; next < committed && i < len(segs); i++ {
		seg := segs[i]
		r := frameReader{
			f:          seg.f,
			size:       size,
			limit:      min(committed-seg.base, size),
			maxPayload: l.cfg.MaxPayload,
			buf:        *bp,
			pos:        next - seg.base,
		}
	frames:
		for r.pos < r.limit {
			at := seg.base + r.pos
			kind, payload, reason, err := r.next()
			if err != nil {
				return next, l.readErr(seg, err)
			}
			switch kind {
			case frameData:
				if err := fn(at, payload); err != nil {
					return at, err
				}
				next = seg.base + r.pos
			case frameEnd:
				if r.limit < size {
					// Only the active segment ends below its size, and its
					// committed part holds frames only.
					return next, &CorruptError{Segment: seg.base, Offset: at, Reason: "end of segment below the committed end"}
				}
				break frames
			default:
				return next, &CorruptError{Segment: seg.base, Offset: at, Reason: reason}
			}
		}
		if r.limit == size {
			// Stopped at the marker or consumed the segment to its end:
			// reading goes on at the next segment.
			next = seg.base + size
		}
	}
	return next, nil
}

// frameReader walks the frames of one segment file through a large buffer,
// so that scanning costs one pread per chunk rather than one per frame.
type frameReader struct {
	f          *os.File
	size       int64 // segment size: no frame crosses it
	limit      int64 // segment-relative end of the bytes that may be read
	maxPayload int
	buf        []byte // buf[:n] holds the segment's bytes from bufPos
	bufPos     int64
	n          int
	pos        int64 // segment-relative offset of the next frame
}

// next decodes the frame at r.pos and, for a data frame, moves past it. The
// payload aliases r's buffer and is valid until the next call.
func (r *frameReader) next() (kind frameKind, payload []byte, reason string, err error) {
	refilled := false
	for {
		var avail []byte
		if rel := r.pos - r.bufPos; rel >= 0 && rel <= int64(r.n) {
			avail = r.buf[rel:r.n]
		}
		kind, payload, size, reason := decodeFrame(avail, r.size-r.pos, r.maxPayload)
		switch kind {
		case frameData:
			r.pos += int64(size)
			return frameData, payload, "", nil
		case frameShort:
			if refilled {
				// A fresh read from pos still lacks bytes: the frame claims
				// to run past the readable end.
				return frameBad, nil, "frame runs past the readable end", nil
			}
			if err := r.fill(size); err != nil {
				return 0, nil, "", err
			}
			refilled = true
		default:
			return kind, nil, reason, nil
		}
	}
}

// fill reads from r.pos at least need bytes (when the limit allows) and up
// to the buffer's capacity.
func (r *frameReader) fill(need int) error {
	want := min(int64(max(cap(r.buf), need)), r.limit-r.pos)
	if want > int64(cap(r.buf)) {
		r.buf = make([]byte, want) // a frame larger than the chunk
	}
	n, err := r.f.ReadAt(r.buf[:want], r.pos)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	r.bufPos, r.n = r.pos, n
	return err
}
