package commitlog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// scanSkipping scans from from to Committed, going on after each damaged
// span at its Next, and returns the records delivered and the spans met.
func scanSkipping(tb testing.TB, l *Log, from int64) ([]record, []CorruptError) {
	tb.Helper()
	var recs []record
	var spans []CorruptError
	for {
		next, err := l.Scan(from, func(off int64, p []byte) error {
			recs = append(recs, record{off: off, payload: bytes.Clone(p)})
			return nil
		})
		var ce *CorruptError
		switch {
		case err == nil:
			if c := l.Committed(); next != c {
				tb.Fatalf("Scan(%d) ended at %d, want Committed %d", from, next, c)
			}
			return recs, spans
		case errors.As(err, &ce):
			if !errors.Is(err, ErrCorrupt) {
				tb.Fatalf("CorruptError does not match ErrCorrupt")
			}
			if next != ce.Off || ce.Next <= ce.Off {
				tb.Fatalf("Scan returned %d with span [%d, %d)", next, ce.Off, ce.Next)
			}
			spans = append(spans, *ce)
			from = ce.Next
		default:
			tb.Fatalf("Scan(%d): %v", from, err)
		}
	}
}

// damageFile applies damage to the file at path, which the log must not
// have open.
func damageFile(tb testing.TB, path string, damage func(b []byte)) {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	damage(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// checkDamaged checks that the log delivers every record of want, in order,
// reports exactly the spans wantSpans (by offset and Next), answers ReadAt
// of each span's offset with the same CorruptError, and lists them in
// Quarantined.
func checkDamaged(tb testing.TB, l *Log, want []record, wantSpans []CorruptError) {
	tb.Helper()
	got, spans := scanSkipping(tb, l, l.MinOffset())
	if len(got) != len(want) {
		tb.Fatalf("delivered %d records, want %d; spans %v", len(got), len(want), spans)
	}
	for i := range want {
		if got[i].off != want[i].off || !bytes.Equal(got[i].payload, want[i].payload) {
			tb.Fatalf("record %d at %d, want %d (or payload differs)", i, got[i].off, want[i].off)
		}
		p, _, err := l.ReadAt(want[i].off, nil)
		if err != nil || !bytes.Equal(p, want[i].payload) {
			tb.Fatalf("ReadAt(%d) record %d: %v", want[i].off, i, err)
		}
	}
	if len(spans) != len(wantSpans) {
		tb.Fatalf("spans %v, want %v", spans, wantSpans)
	}
	for i, s := range spans {
		if s.Off != wantSpans[i].Off || s.Next != wantSpans[i].Next || s.Reason == "" {
			tb.Fatalf("span %d = %+v, want [%d, %d)", i, s, wantSpans[i].Off, wantSpans[i].Next)
		}
		_, _, err := l.ReadAt(s.Off, nil)
		var ce *CorruptError
		if !errors.As(err, &ce) || ce.Off != s.Off || ce.Next != s.Next {
			tb.Fatalf("ReadAt(%d) of a damaged span: %v, want [%d, %d)", s.Off, err, s.Off, s.Next)
		}
	}
	for _, s := range wantSpans {
		// An offset inside a known span (not where a frame starts) is the
		// same span, not a new one.
		if mid := s.Off + 1; mid < s.Next {
			_, _, err := l.ReadAt(mid, nil)
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Off != s.Off || ce.Next != s.Next {
				tb.Fatalf("ReadAt(%d) inside the span [%d, %d): %v", mid, s.Off, s.Next, err)
			}
		}
	}
	q := l.Quarantined()
	if len(q) != len(wantSpans) {
		tb.Fatalf("Quarantined() = %v, want %v", q, wantSpans)
	}
	for i := range q {
		if q[i].Off != wantSpans[i].Off || q[i].Next != wantSpans[i].Next {
			tb.Fatalf("Quarantined()[%d] = %+v, want [%d, %d)", i, q[i], wantSpans[i].Off, wantSpans[i].Next)
		}
	}
}

func frameEndOf(r record) int64 { return r.off + headerSize + int64(len(r.payload)) }

// TestOpenKeepsFramesAfterDamage: damage to a frame of the newest segment
// that valid frames follow is corruption, not a torn write. Recovery keeps
// every valid frame, before and after it, quarantines the damaged span
// (ERROR with its offset), and the log reads around it, appends after its
// end, and says the same after another restart. It used to cut everything
// from the damaged frame on (and to delete the whole file when that frame
// was the segment's first).
func TestOpenKeepsFramesAfterDamage(t *testing.T) {
	tests := []struct {
		name string
		// first picks the damaged frame among the newest segment's recs;
		// n how many frames the damage spans.
		first  func(seg []record) int
		n      int
		damage func(b []byte, r record) // b is the whole segment, r the first damaged frame (offsets relative)
	}{
		{"flipped payload byte", middle, 1, func(b []byte, r record) { b[r.off+headerSize+3] ^= 0x40 }},
		{"flipped length byte", middle, 1, func(b []byte, r record) { b[r.off+3] ^= 0x01 }},
		{"length far past the frame", middle, 1, func(b []byte, r record) { b[r.off+1] ^= 0x10 }},
		{"bad magic", middle, 1, func(b []byte, r record) { b[r.off+5] ^= 0xff }},
		{"bad crc field", middle, 1, func(b []byte, r record) { b[r.off+9] ^= 0xff }},
		{"zeros across the next header", middle, 2, func(b []byte, r record) {
			end := r.off + headerSize + int64(len(r.payload))
			clear(b[end-20 : end+8])
		}},
		{"garbage over two frames", middle, 2, func(b []byte, r record) {
			end := r.off + headerSize + int64(len(r.payload))
			for i := r.off + 6; i < end+10; i++ {
				b[i] = byte(i*13 + 7)
			}
		}},
		{"first frame of the segment", func([]record) int { return 0 }, 1, func(b []byte, r record) { b[r.off+headerSize+1] ^= 0x01 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, logs := testConfig(t, dir)
			l := openLog(t, cfg)
			recs := appendRecords(t, l, 0, 210)
			closeLog(t, l)
			last := recs[len(recs)-1]
			segBase := last.off - last.off%cfg.SegmentSize
			if segBase < 2*cfg.SegmentSize {
				t.Fatalf("last frame in segment %d: want at least the third", segBase)
			}
			var inSeg []record
			for _, r := range recs {
				if r.off >= segBase {
					inSeg = append(inSeg, record{off: r.off - segBase, payload: r.payload})
				}
			}
			i := tt.first(inSeg)
			if i+tt.n >= len(inSeg) {
				t.Fatalf("damage at frame %d of %d leaves no frame after it", i, len(inSeg))
			}
			damageFile(t, segmentPath(dir, segBase), func(b []byte) { tt.damage(b, inSeg[i]) })

			k := len(recs) - len(inSeg) + i // index in recs of the first damaged frame
			want := append(recs[:k:k], recs[k+tt.n:]...)
			span := CorruptError{Off: recs[k].off, Next: recs[k+tt.n].off}
			end := frameEndOf(last)

			l = openLog(t, cfg)
			if got := l.Committed(); got != end {
				t.Fatalf("Committed after recovery = %d, want %d (every valid frame kept)", got, end)
			}
			checkDamaged(t, l, want, []CorruptError{span})
			if s := logs.String(); !strings.Contains(s, "level=ERROR") || !strings.Contains(s, fmt.Sprintf("offset=%d", span.Off)) {
				t.Fatalf("no ERROR naming offset %d; log:\n%s", span.Off, s)
			}
			if s := logs.String(); strings.Contains(s, "cutting") || strings.Contains(s, "removing") {
				t.Fatalf("recovery cut or removed something; log:\n%s", s)
			}

			more := appendRecords(t, l, len(recs), 30)
			if more[0].off != end {
				t.Fatalf("first append after recovery at %d, want %d", more[0].off, end)
			}
			checkRecordsAfterSync(t, l, more)
			closeLog(t, l)
			l = openLog(t, cfg)
			checkDamaged(t, l, append(want, more...), []CorruptError{span})
		})
	}
}

func middle(seg []record) int { return len(seg) / 2 }

// TestOpenDamageThenTornTail: a damaged frame with valid frames after it is
// kept around; the torn tail after them is still cut.
func TestOpenDamageThenTornTail(t *testing.T) {
	dir := t.TempDir()
	cfg, logs := testConfig(t, dir)
	l := openLog(t, cfg)
	recs := appendRecords(t, l, 0, 210)
	closeLog(t, l)
	last := recs[len(recs)-1]
	segBase := last.off - last.off%cfg.SegmentSize
	k := len(recs) - 6
	if recs[k].off < segBase {
		t.Fatalf("frame %d not in the newest segment", k)
	}
	damageFile(t, segmentPath(dir, segBase), func(b []byte) {
		b[recs[k].off-segBase+headerSize+2] ^= 0x04                                                 // damage in the middle
		clear(b[last.off-segBase+headerSize+int64(len(last.payload))/2 : frameEndOf(last)-segBase]) // torn last frame
	})
	l = openLog(t, cfg)
	want := append(recs[:k:k], recs[k+1:len(recs)-1]...)
	if got, wantEnd := l.Committed(), frameEndOf(recs[len(recs)-2]); got != wantEnd {
		t.Fatalf("Committed = %d, want %d", got, wantEnd)
	}
	checkDamaged(t, l, want, []CorruptError{{Off: recs[k].off, Next: recs[k+1].off}})
	if !strings.Contains(logs.String(), "cutting torn tail") {
		t.Fatalf("torn tail not reported; log:\n%s", logs.String())
	}
}

// TestDamageInSealedSegment: a damaged record in an old, sealed segment
// stops neither Open nor reading: Scan and ReadAt report it as a
// CorruptError whose Next is where reading goes on (the next frame, or the
// next segment when the damage ends the segment), every other record is
// read, and the span is quarantined.
func TestDamageInSealedSegment(t *testing.T) {
	tests := []struct {
		name string
		pick func(seg0 []record) int // which frame of segment 0 to damage
	}{
		{"middle frame", func(seg0 []record) int { return len(seg0) / 2 }},
		{"first frame", func([]record) int { return 0 }},
		{"last frame before the marker", func(seg0 []record) int { return len(seg0) - 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, logs := testConfig(t, dir)
			l := openLog(t, cfg)
			recs := appendRecords(t, l, 0, 210)
			closeLog(t, l)
			var seg0 []record
			for _, r := range recs {
				if r.off < cfg.SegmentSize {
					seg0 = append(seg0, r)
				}
			}
			k := tt.pick(seg0)
			if len(recs[k].payload) < 8 {
				k++ // an empty payload has no byte to flip
			}
			damageFile(t, segmentPath(dir, 0), func(b []byte) { b[recs[k].off+headerSize+5] ^= 0x80 })

			next := recs[k+1].off
			l = openLog(t, cfg)
			if len(l.Quarantined()) != 0 {
				t.Fatalf("sealed segments are not scanned at Open, yet spans are quarantined")
			}
			want := append(recs[:k:k], recs[k+1:]...)
			checkDamaged(t, l, want, []CorruptError{{Off: recs[k].off, Next: next}})
			if k == len(seg0)-1 && next != cfg.SegmentSize {
				t.Fatalf("damage ending segment 0 goes on at %d, want the next segment %d", next, cfg.SegmentSize)
			}
			if !strings.Contains(logs.String(), fmt.Sprintf("offset=%d", recs[k].off)) {
				t.Fatalf("no ERROR naming the offset; log:\n%s", logs.String())
			}
			if n := strings.Count(logs.String(), "damaged span quarantined"); n != 1 {
				t.Fatalf("the span was logged %d times, want once", n)
			}
		})
	}
}

// TestOpenNewestSegmentOfAnotherLength: a newest segment whose preallocated
// zero tail was lost (shorter than SegmentSize, every frame intact), or one
// with bytes past SegmentSize, opens with every frame, gets the length it
// needs, and says what was done. Both used to refuse to start.
func TestOpenNewestSegmentOfAnotherLength(t *testing.T) {
	tests := []struct {
		name   string
		length func(end int64) int64 // new file length, given the end of the frames (segment relative)
		fill   byte                  // what bytes added past the old length hold
		warn   string
	}{
		{"cut right after the last frame", func(end int64) int64 { return end }, 0, "shorter than SegmentSize"},
		{"cut inside the zero tail", func(end int64) int64 { return end + 100 }, 0, "shorter than SegmentSize"},
		{"zeros past the segment", func(int64) int64 { return testSegmentSize + 5000 }, 0, "longer than SegmentSize"},
		{"garbage past the segment", func(int64) int64 { return testSegmentSize + 5000 }, 0xa5, "longer than SegmentSize"},
		{"one byte past", func(int64) int64 { return testSegmentSize + 1 }, 1, "longer than SegmentSize"},
		{"one byte short", func(int64) int64 { return testSegmentSize - 1 }, 0, "shorter than SegmentSize"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, logs := testConfig(t, dir)
			l := openLog(t, cfg)
			recs := appendRecords(t, l, 0, 150)
			closeLog(t, l)
			last := recs[len(recs)-1]
			segBase := last.off - last.off%cfg.SegmentSize
			end := frameEndOf(last) - segBase
			path := segmentPath(dir, segBase)
			n := tt.length(end)
			if err := os.Truncate(path, n); err != nil {
				t.Fatal(err)
			}
			if tt.fill != 0 && n > cfg.SegmentSize {
				damageFile(t, path, func(b []byte) {
					for i := cfg.SegmentSize; i < n; i++ {
						b[i] = tt.fill
					}
				})
			}

			l = openLog(t, cfg)
			checkRecords(t, l, recs)
			if !strings.Contains(logs.String(), tt.warn) {
				t.Fatalf("no warning %q; log:\n%s", tt.warn, logs.String())
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != cfg.SegmentSize {
				t.Fatalf("segment is %d bytes after recovery, want %d", fi.Size(), cfg.SegmentSize)
			}
			more := appendRecords(t, l, len(recs), 100) // rolls
			checkRecordsAfterSync(t, l, append(recs, more...))
			closeLog(t, l)
			l = openLog(t, cfg)
			checkRecords(t, l, append(recs, more...))
		})
	}
}

// TestSegmentSizeChangedBetweenRuns: SegmentSize sizes new segments only.
// Reopening a log of several segments with a larger or smaller one reads
// every record (each segment keeps the size it was made with), appends go
// on, and a third run with yet another size reads them all again.
func TestSegmentSizeChangedBetweenRuns(t *testing.T) {
	for _, sizes := range [][]int64{
		{64 << 10, 128 << 10, 32 << 10},
		{64 << 10, 16 << 10, 64 << 10},
	} {
		t.Run(fmt.Sprint(sizes), func(t *testing.T) {
			dir := t.TempDir()
			var all []record
			for run, size := range sizes {
				cfg, _ := testConfig(t, dir)
				cfg.SegmentSize = size
				cfg.MaxPayload = 8 << 10
				l := openLog(t, cfg)
				checkRecords(t, l, all)
				all = append(all, appendRecords(t, l, len(all), 300)...)
				checkRecordsAfterSync(t, l, all)
				if run == 0 && len(l.Segments()) < 3 {
					t.Fatalf("%d segments, want several", len(l.Segments()))
				}
				closeLog(t, l)
			}
		})
	}
}

// TestDamagedPayloadHidesEmbeddedFrame: a body may hold bytes that form a
// whole valid frame. When damage hits such a record's payload, reading goes
// on right after the record, not at the frame inside it, which is no record.
func TestDamagedPayloadHidesEmbeddedFrame(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := testConfig(t, dir)
	l := openLog(t, cfg)
	inner := make([]byte, headerSize+5)
	putFrame(inner, frameMagic, []byte("forge"))
	outer := append(append(bytes.Repeat([]byte{'a'}, 100), inner...), bytes.Repeat([]byte{'b'}, 100)...)
	var recs []record
	for _, p := range [][]byte{[]byte("before"), outer, []byte("after")} {
		offs, end, err := l.Append([][]byte{p})
		if err != nil {
			t.Fatal(err)
		}
		syncEnd(t, l, end)
		recs = append(recs, record{off: offs[0], payload: p})
	}
	closeLog(t, l)
	damageFile(t, segmentPath(dir, 0), func(b []byte) { b[recs[1].off+headerSize+10] ^= 0x01 })
	l = openLog(t, cfg)
	checkDamaged(t, l, []record{recs[0], recs[2]}, []CorruptError{{Off: recs[1].off, Next: recs[2].off}})
}

// TestZerosInSealedSegment: zeros where a sealed segment must hold frames
// (its first page wiped, the whole file zero-filled, or its marker gone) are
// damage, quarantined with an ERROR; they used to read as the segment's clean
// end, so Scan skipped the rest of the segment in silence and ReadAt of a
// record there said only "no frame" (ErrOutOfRange).
func TestZerosInSealedSegment(t *testing.T) {
	const S = testSegmentSize
	tests := []struct {
		name string
		from func(seg1 []record) int64 // zeros from this offset (global)...
		to   func(seg1 []record) int64 // ...to this one
	}{
		{"first 4 KiB", func([]record) int64 { return S }, func([]record) int64 { return S + 4096 }},
		{"whole segment", func([]record) int64 { return S }, func([]record) int64 { return 2 * S }},
		{"marker and after", func(seg1 []record) int64 { return frameEndOf(seg1[len(seg1)-1]) },
			func([]record) int64 { return 2 * S }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, logs := testConfig(t, dir)
			l := openLog(t, cfg)
			recs := appendRecords(t, l, 0, 210)
			closeLog(t, l)
			var seg1 []record
			for _, r := range recs {
				if r.off >= S && r.off < 2*S {
					seg1 = append(seg1, r)
				}
			}
			if len(l.Segments()) < 3 || len(seg1) == 0 {
				t.Fatalf("want 3 segments with records in the middle one")
			}
			from, to := tt.from(seg1), tt.to(seg1)
			damageFile(t, segmentPath(dir, S), func(b []byte) { clear(b[from-S : to-S]) })

			var want []record
			next := int64(2 * S)
			for _, r := range recs {
				if r.off < to && frameEndOf(r) > from {
					continue
				}
				if r.off >= to && r.off < next {
					next = r.off
				}
				want = append(want, r)
			}
			l = openLog(t, cfg)
			// A reader may meet the damage at a later lost record first
			// (a queue entry); the span found from its start then covers
			// that one, and only it is listed.
			var lost []record
			for _, r := range recs {
				if r.off > from && r.off < to && frameEndOf(r) <= to {
					lost = append(lost, r)
				}
			}
			if len(lost) > 0 {
				if _, _, err := l.ReadAt(lost[len(lost)-1].off, nil); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("ReadAt of a zeroed record: %v, want ErrCorrupt", err)
				}
			}
			checkDamaged(t, l, want, []CorruptError{{Off: from, Next: next}})
			if !strings.Contains(logs.String(), fmt.Sprintf("offset=%d", from)) {
				t.Fatalf("no ERROR naming offset %d; log:\n%s", from, logs.String())
			}
		})
	}
}
