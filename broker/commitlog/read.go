package commitlog

import (
	"bytes"
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
//
// A frame that fails its checks is a *CorruptError (errors.Is ErrCorrupt)
// whose Next is where reading can go on; the span is quarantined.
func (l *Log) ReadAt(off int64, buf []byte) (payload []byte, next int64, err error) {
	seg, committed, err := l.locate(off, false)
	if err != nil {
		return nil, 0, err
	}
	size := seg.size
	segEnd := seg.base + size
	rel := off - seg.base
	room := size - rel
	limit := min(committed-seg.base, size) // the stable part of this segment

	sp := readPool.Get().(*[]byte)
	defer readPool.Put(sp)
	s := *sp
	n, err := seg.f.ReadAt(s[:min(int64(len(s)), room)], rel)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, l.readErr(seg, err)
	}
	kind, p, frameSize, reason := decodeFrame(s[:n], room)
	switch kind {
	case frameData:
		payload = append(buf[:0], p...)
	case frameShort:
		if n < headerSize {
			return nil, 0, l.damaged(seg, rel, limit, "segment file ends inside a frame header")
		}
		if int64(frameSize) > limit-rel {
			return nil, 0, l.damaged(seg, rel, limit, "frame runs past the readable end")
		}
		length := frameSize - headerSize
		payload = buf[:0]
		if cap(payload) < length {
			payload = make([]byte, length)
		}
		payload = payload[:length]
		k := copy(payload, s[headerSize:n])
		if _, err := seg.f.ReadAt(payload[k:], rel+int64(n)); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, 0, l.damaged(seg, rel, limit, "segment file ends inside a frame")
			}
			return nil, 0, l.readErr(seg, err)
		}
		if frameCRC(s, payload) != binary.BigEndian.Uint32(s[8:12]) {
			return nil, 0, l.damaged(seg, rel, limit, "crc mismatch")
		}
	case frameEnd:
		if room >= headerSize && binary.BigEndian.Uint32(s[4:8]) != blankMagic {
			if limit == size {
				// A sealed segment ends with its marker (or fewer bytes
				// than one): zeros where a frame or the marker should be
				// are damage, never its end. Past the marker they are
				// only not a frame's offset.
				after, err := l.pastMarker(seg, rel)
				if err != nil {
					return nil, 0, err
				}
				if !after {
					return nil, 0, l.damaged(seg, rel, limit, zerosInSealed)
				}
			}
			// Zeros below Committed: the offset is not where a frame starts.
			return nil, 0, fmt.Errorf("commitlog: no frame at %d: %w", off, ErrOutOfRange)
		}
		return nil, segEnd, fmt.Errorf("commitlog: read at %d: %w", off, ErrEndOfSegment)
	default:
		return nil, 0, l.damaged(seg, rel, limit, reason)
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
			if _, err := seg.f.ReadAt(h, nrel); err != nil && !errors.Is(err, io.EOF) {
				return nil, 0, l.readErr(seg, err)
			}
		}
		if k, _, _, _ := decodeFrame(h, size-nrel); k == frameEnd {
			next = segEnd
		}
	}
	return payload, next, nil
}

// pastMarker says whether rel lies past the end-of-segment marker of seg, a
// sealed segment, walking its frames from the start (over damage). It runs
// only when ReadAt meets zeros in a sealed segment, never on a good read.
func (l *Log) pastMarker(seg *segment, rel int64) (bool, error) {
	bp := scanPool.Get().(*[]byte)
	defer scanPool.Put(bp)
	r := frameReader{f: seg.f, size: seg.size, limit: rel, buf: *bp}
	for r.pos < r.limit {
		at := r.pos
		kind, _, _, err := r.next()
		if err != nil {
			return false, l.readErr(seg, err)
		}
		switch kind {
		case frameData:
			continue
		case frameEnd:
			return !r.zeroHeaderAt(at), nil
		}
		next, _, found, err := r.resyncAfter(at)
		if err != nil {
			return false, l.readErr(seg, err)
		}
		if !found {
			return false, nil
		}
		r.pos = next
	}
	return false, nil
}

// damaged makes the CorruptError for the span of seg starting at rel (segment
// relative) that failed with reason: it finds where the next valid frame
// starts, no further than limit, and quarantines the span.
func (l *Log) damaged(seg *segment, rel, limit int64, reason string) error {
	bp := scanPool.Get().(*[]byte)
	defer scanPool.Put(bp)
	r := frameReader{f: seg.f, size: seg.size, limit: limit, buf: *bp}
	return l.damagedAt(&r, seg, rel, reason)
}

// damagedAt is damaged with a reader over the segment already at hand.
func (l *Log) damagedAt(r *frameReader, seg *segment, rel int64, reason string) error {
	if e, ok := l.quarantinedAround(seg.base + rel); ok {
		// Inside a span already known (a reader given an offset in it):
		// the same span, not a new one.
		return &e
	}
	at, kind, found, err := r.resyncAfter(rel)
	if err != nil {
		return l.readErr(seg, err)
	}
	next := seg.base + r.limit // nothing valid follows: go on where the stable bytes end
	switch {
	case found && kind == frameData:
		next = seg.base + at
	case found || r.limit == seg.size:
		// An end-of-segment marker, or a sealed segment with nothing valid
		// after the damage: reading goes on at the next segment.
		next = seg.base + seg.size
	}
	e := CorruptError{Off: seg.base + rel, Next: next, Reason: reason}
	l.quarantine(e)
	return &e
}

// Scan calls fn for each frame from off up to Committed (as of the call),
// reading in chunks of scanChunk bytes, and returns the offset after the last
// frame delivered (past an end-of-segment marker when it read one). off must
// be a frame's offset, an end-of-segment position, or Committed. fn's payload
// is valid only during the call. If fn returns an error, Scan stops and
// returns that error with the offset of the frame fn refused, so that a retry
// starts there.
//
// A damaged span stops Scan too: it returns the span's offset and a
// *CorruptError (quarantined) whose Next is where a new Scan can start.
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

	next = off
	for ; next < committed && i < len(segs); i++ {
		seg := segs[i]
		r := frameReader{
			f:     seg.f,
			size:  seg.size,
			limit: min(committed-seg.base, seg.size),
			buf:   *bp,
			pos:   next - seg.base,
		}
	frames:
		for r.pos < r.limit {
			at := r.pos
			kind, payload, reason, err := r.next()
			if err != nil {
				return next, l.readErr(seg, err)
			}
			switch kind {
			case frameData:
				if err := fn(seg.base+at, payload); err != nil {
					return seg.base + at, err
				}
				next = seg.base + r.pos
			case frameEnd:
				if r.limit < seg.size {
					// Only the active segment ends below its size, and its
					// committed part holds frames only.
					return next, l.damagedAt(&r, seg, at, "end of segment below the committed end")
				}
				if r.zeroHeaderAt(at) {
					// A sealed segment ends with its marker: zeros before
					// it (or instead of it) are damage, not its end.
					return next, l.damagedAt(&r, seg, at, zerosInSealed)
				}
				break frames
			default:
				return next, l.damagedAt(&r, seg, at, reason)
			}
		}
		if r.limit == seg.size {
			// Stopped at the marker or consumed the segment to its end:
			// reading goes on at the next segment.
			next = seg.base + seg.size
		}
	}
	return next, nil
}

// frameReader walks the frames of one segment file through a large buffer,
// so that scanning costs one pread per chunk rather than one per frame. It
// has no size limit of its own: a frame larger than its buffer gets a buffer
// of its size, up to MaxFramePayload.
type frameReader struct {
	f      *os.File
	size   int64  // segment size: no frame crosses it
	limit  int64  // segment-relative end of the bytes that may be read
	buf    []byte // buf[:n] holds the segment's bytes from bufPos
	bufPos int64
	n      int
	pos    int64 // segment-relative offset of the next frame
}

// next decodes the frame at r.pos and, for a data frame, moves past it. The
// payload aliases r's buffer and is valid until the next call.
func (r *frameReader) next() (kind frameKind, payload []byte, reason string, err error) {
	filled := 0 // how many bytes from r.pos the last fill asked for
	for {
		var avail []byte
		if rel := r.pos - r.bufPos; rel >= 0 && rel <= int64(r.n) {
			avail = r.buf[rel:r.n]
		}
		kind, payload, size, reason := decodeFrame(avail, r.size-r.pos)
		switch kind {
		case frameData:
			r.pos += int64(size)
			return frameData, payload, "", nil
		case frameShort:
			if size <= filled {
				// A read from pos of every byte the frame needs came back
				// short: the frame claims to run past the readable end.
				return frameBad, nil, "frame runs past the readable end", nil
			}
			// The header may be all there was (the chunk ended inside
			// it): read again, as much as this frame needs.
			if err := r.fill(r.pos, size); err != nil {
				return 0, nil, "", err
			}
			filled = size
		default:
			return kind, nil, reason, nil
		}
	}
}

// zerosInSealed is the reason given for zeros where a sealed segment must
// hold a frame or its end-of-segment marker.
const zerosInSealed = "zeros where a frame or the end-of-segment marker should be, in a sealed segment"

// zeroHeaderAt says whether the frameEnd that next just returned at at is a
// header of zeros rather than an end-of-segment marker or the few bytes
// closing a segment too full for one.
func (r *frameReader) zeroHeaderAt(at int64) bool {
	if r.size-at < headerSize {
		return false
	}
	rel := at - r.bufPos
	if rel < 0 || rel+headerSize > int64(r.n) {
		return false // not read: next decides frameEnd only from read bytes
	}
	return binary.BigEndian.Uint32(r.buf[rel+4:rel+8]) != blankMagic
}

// fill reads from pos at least need bytes (when the limit allows) and up to
// the buffer's capacity, growing the buffer for a frame larger than it.
func (r *frameReader) fill(pos int64, need int) error {
	want := max(min(int64(max(cap(r.buf), need)), r.limit-pos), 0)
	if want > int64(cap(r.buf)) {
		r.buf = make([]byte, want) // a frame larger than the chunk
	}
	n, err := r.f.ReadAt(r.buf[:want], pos)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	r.bufPos, r.n = pos, n
	return err
}

// resyncAfter finds where reading goes on after the bad frame at at. When its
// header holds the data magic and a length that fits, the frame's payload is
// most likely what was damaged, and the position right after it is tried
// first: that keeps a whole frame embedded in a damaged payload from being
// taken for a record. Otherwise, or if nothing valid is there, it resyncs
// from the byte after at.
func (r *frameReader) resyncAfter(at int64) (next int64, kind frameKind, found bool, err error) {
	if rel := at - r.bufPos; rel < 0 || rel+headerSize > int64(r.n) {
		if err := r.fill(at, headerSize); err != nil {
			return 0, 0, false, err
		}
	}
	if rel := at - r.bufPos; rel >= 0 && rel+headerSize <= int64(r.n) {
		h := r.buf[rel : rel+headerSize]
		length := int64(binary.BigEndian.Uint32(h[0:4]))
		if c := at + headerSize + length; binary.BigEndian.Uint32(h[4:8]) == frameMagic &&
			length <= MaxFramePayload && c+headerSize <= r.limit {
			r.pos = c
			k, _, _, err := r.next()
			if err != nil {
				return 0, 0, false, err
			}
			if k == frameData {
				return c, k, true, nil
			}
			if rel := c - r.bufPos; k == frameEnd && rel >= 0 && rel+headerSize <= int64(r.n) &&
				binary.BigEndian.Uint32(r.buf[rel+4:rel+8]) == blankMagic {
				return c, k, true, nil
			}
		}
	}
	return r.resync(at + 1)
}

// resync finds the first valid data frame or end-of-segment marker that
// starts in [from, limit): where reading goes on after damage. A candidate
// is any position whose magic field holds a magic; it counts only if its
// CRC checks, so damaged bytes are never taken for a frame (short of a
// CRC-32C collision, or a body that itself embeds a whole valid frame and
// loses its own header). It leaves r.pos unspecified.
func (r *frameReader) resync(from int64) (at int64, kind frameKind, found bool, err error) {
	for p := from; p+headerSize <= r.limit; {
		if rel := p - r.bufPos; rel < 0 || rel+headerSize > int64(r.n) {
			if err := r.fill(p, headerSize); err != nil {
				return 0, 0, false, err
			}
			if r.n < headerSize {
				break // the file ends here
			}
		}
		win := r.buf[p-r.bufPos : r.n]
		j := indexMagic(win[4:])
		if j < 0 {
			// Every candidate whose magic lies wholly in win is ruled out;
			// one whose magic straddles its end is looked at again.
			p += int64(len(win)) - 7
			continue
		}
		c := p + int64(j)
		if c+headerSize > r.limit {
			break
		}
		isMarker := binary.BigEndian.Uint32(win[j+4:]) == blankMagic
		r.pos = c
		k, _, _, err := r.next()
		if err != nil {
			return 0, 0, false, err
		}
		// With a magic in place, decodeFrame says frameEnd only for a marker
		// whose CRC checks.
		if k == frameData || (k == frameEnd && isMarker) {
			return c, k, true, nil
		}
		p = c + 1
	}
	return 0, 0, false, nil
}

// indexMagic returns the index of the first data or marker magic in b, or -1.
func indexMagic(b []byte) int {
	for i := 0; ; {
		j := bytes.Index(b[i:], magicPrefix)
		if j < 0 {
			return -1
		}
		k := i + j
		if k+4 > len(b) {
			return -1
		}
		if m := binary.BigEndian.Uint32(b[k:]); m == frameMagic || m == blankMagic {
			return k
		}
		i = k + 1
	}
}

// magicPrefix is what both magics start with ("PB").
var magicPrefix = []byte{0x50, 0x42}

// errStopVerify ends Verify's scan at the segment's end.
var errStopVerify = errors.New("stop verify")

// Verify reads every frame of the sealed segment s, stepping over damaged
// spans: the reads quarantine them (Quarantined lists them), so a caller
// learns of damage before a reader meets it. It returns only an error that
// is not damage.
func (l *Log) Verify(s Segment) error {
	stop := func(off int64, _ []byte) error {
		if off >= s.End {
			return errStopVerify
		}
		return nil
	}
	for off := s.Base; off < s.End; {
		_, err := l.Scan(off, stop)
		var ce *CorruptError
		switch {
		case errors.As(err, &ce) && ce.Next > off:
			off = ce.Next
		case err == nil || errors.Is(err, errStopVerify):
			return nil
		default:
			return err
		}
	}
	return nil
}
