package commitlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// batchOf returns n payloads whose frames take exactly total bytes, drawn
// from seed.
func batchOf(seed uint64, n int, total int64) [][]byte {
	body := total - int64(n)*headerSize
	ps := make([][]byte, n)
	for i := range ps {
		size := body / int64(n)
		if i == n-1 {
			size = body - size*int64(n-1)
		}
		ps[i] = bigPayload(seed+uint64(i)*1000, int(size))
	}
	return ps
}

// appendSynced appends ps as one batch, waits until it is durable, and
// returns its records.
func appendSynced(tb testing.TB, l *Log, ps [][]byte) []record {
	tb.Helper()
	offs, end, err := l.Append(ps)
	if err != nil {
		tb.Fatalf("Append of %d payloads: %v", len(ps), err)
	}
	syncEnd(tb, l, end)
	recs := make([]record, len(ps))
	for i := range ps {
		recs[i] = record{off: offs[i], payload: ps[i]}
	}
	return recs
}

// checkLayout checks that every sealed segment is SegmentSize long except
// those listed in oversized (base -> size), and that those are there.
func checkLayout(tb testing.TB, l *Log, segSize int64, oversized map[int64]int64) {
	tb.Helper()
	segs := l.Segments()
	seen := 0
	for _, s := range segs[:len(segs)-1] {
		want := segSize
		if o, ok := oversized[s.Base]; ok {
			want = o
			seen++
		}
		if got := s.End - s.Base; got != want {
			tb.Fatalf("segment %d is %d bytes, want %d (segments %v)", s.Base, got, want, segs)
		}
	}
	if last := segs[len(segs)-1]; oversized[last.Base] != 0 {
		seen++
	}
	if seen != len(oversized) {
		tb.Fatalf("segments %v: found %d of the oversized segments %v", segs, seen, oversized)
	}
}

// TestOversizedBatch: a batch whose frames take more than SegmentSize is
// stored, in one write, in a segment of its own sized for it (it used to be
// refused with ErrTooLarge, so a broker had to refuse segments smaller than
// its largest batch); one that fits is stored as before. Sizes are taken
// at SegmentSize and ±1, with one frame and with several, into an empty log
// and after a record. Every record reads back by ReadAt and Scan, the next
// segments are SegmentSize again (the prepared file serving the roll after
// the oversized one), and all of it survives clean and crash restarts,
// with the same SegmentSize or another, and appends after them.
func TestOversizedBatch(t *testing.T) {
	const S = testSegmentSize
	for _, total := range []int64{S - 1, S, S + 1, 3*S + 5} {
		for _, frames := range []int{1, 8} {
			for _, place := range []string{"first", "after a record"} {
				name := fmt.Sprintf("total=S%+d/frames=%d/%s", total-S, frames, strings.ReplaceAll(place, " ", "_"))
				if total > 2*S {
					name = fmt.Sprintf("total=3S+5/frames=%d/%s", frames, strings.ReplaceAll(place, " ", "_"))
				}
				t.Run(name, func(t *testing.T) {
					seed := uint64(total)*31 + uint64(frames)*7 + uint64(len(place))
					t.Logf("seed %d", seed)
					dir := t.TempDir()
					cfg, logs := testConfig(t, dir)
					cfg.MaxPayload = int(total)
					l := openLog(t, cfg)
					if p := waitPrepared(t, l); p.err != nil {
						t.Fatal(p.err)
					}
					var recs []record
					if place != "first" {
						recs = appendSynced(t, l, [][]byte{[]byte("a record before")})
					}
					batch := appendSynced(t, l, batchOf(seed, frames, total))
					recs = append(recs, batch...)
					oversized := map[int64]int64{}
					switch {
					case total > S:
						// Segment 0 is sealed (empty, or holding the first
						// record) and the batch opens an oversized segment.
						if batch[0].off != S {
							t.Fatalf("oversized batch at %d, want %d", batch[0].off, S)
						}
						oversized[S] = oversizedSize(total)
						if got := l.oversizedRolls.Load(); got != 1 {
							t.Fatalf("%d oversized rolls, want 1", got)
						}
					case place == "first":
						if batch[0].off != 0 {
							t.Fatalf("batch at %d, want 0", batch[0].off)
						}
					default:
						if batch[0].off != S {
							t.Fatalf("batch at %d, want the next segment %d", batch[0].off, S)
						}
					}
					if end := batch[len(batch)-1].off + headerSize + int64(len(batch[len(batch)-1].payload)); end-batch[0].off != total {
						t.Fatalf("batch takes %d bytes, want %d", end-batch[0].off, total)
					}
					if total > S {
						// The preparation in flight at the oversized roll
						// serves the next one.
						if p := waitPrepared(t, l); p.err != nil {
							t.Fatal(p.err)
						}
					}
					// Appends go on, in segments of SegmentSize.
					recs = append(recs, appendRecords(t, l, 0, 150)...)
					checkRecordsAfterSync(t, l, recs)
					checkLayout(t, l, S, oversized)
					if total > S {
						if p := l.preparedRolls.Load(); p < 1 {
							t.Fatalf("no roll into a prepared file after the oversized one")
						}
					}
					checkNoWarnings(t, logs)

					// Crash restarts put the batch's segment last (the
					// newest) or in the middle; a clean restart too.
					var batchSegEnd int64 // the end of the batch's segment
					for _, s := range l.Segments() {
						if s.Base <= batch[0].off && batch[0].off < s.End {
							batchSegEnd = s.End
						}
					}
					crashNewest := copyDirUpTo(t, dir, batch[0].off)
					crashAll := copyDir(t, dir)
					closeLog(t, l)
					restarts := []struct {
						name string
						dir  string
						recs []record
					}{
						{"clean", dir, recs},
						{"crash", crashAll, recs},
						{"crash with the batch newest", crashNewest, recsBelow(recs, batchSegEnd)},
					}
					for _, r := range restarts {
						for _, size := range []int64{S, S / 2, 4 * S} {
							t.Run(fmt.Sprintf("%s/segment=%d", strings.ReplaceAll(r.name, " ", "_"), size), func(t *testing.T) {
								rdir := copyDir(t, r.dir)
								rcfg, rlogs := testConfig(t, rdir)
								rcfg.SegmentSize, rcfg.MaxPayload = size, cfg.MaxPayload
								l := openLog(t, rcfg)
								checkRecords(t, l, r.recs)
								if c, want := l.Committed(), frameEndOf(r.recs[len(r.recs)-1]); c != want {
									t.Fatalf("Committed = %d, want %d", c, want)
								}
								if n := len(l.Quarantined()); n != 0 {
									t.Fatalf("%d spans quarantined", n)
								}
								if s := rlogs.String(); strings.Contains(s, "cutting") || strings.Contains(s, "removing") || strings.Contains(s, "level=ERROR") {
									t.Fatalf("restart touched the log:\n%s", s)
								}
								if size <= S {
									checkNoWarnings(t, rlogs) // a larger size extends the newest segment, and says so
								}
								more := append(r.recs[:len(r.recs):len(r.recs)], appendRecords(t, l, 1000, 80)...)
								checkRecordsAfterSync(t, l, more)
								closeLog(t, l)
								l = openLog(t, rcfg)
								checkRecords(t, l, more)
								closeLog(t, l)
							})
						}
					}
				})
			}
		}
	}
}

// recsBelow returns the records that end at or before end.
func recsBelow(recs []record, end int64) []record {
	var out []record
	for _, r := range recs {
		if frameEndOf(r) <= end {
			out = append(out, r)
		}
	}
	return out
}

// copyDirUpTo is copyDir keeping only the segments up to the one at base,
// the newest: what a crash right after the append into it leaves.
func copyDirUpTo(tb testing.TB, from string, base int64) string {
	tb.Helper()
	to := copyDir(tb, from)
	entries, err := os.ReadDir(to)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		if b, ok := parseSegmentName(e.Name()); ok && b > base {
			if err := os.Remove(filepath.Join(to, e.Name())); err != nil {
				tb.Fatal(err)
			}
		}
	}
	return to
}

// TestOversizedSegmentTorn: a crash during the append into an oversized
// segment, or during the roll that made it, leaves the log openable with
// every record before the batch, cutting only what is torn: a segment with
// no valid frame (empty, only reserved, or its first frame torn) is removed
// and its predecessor goes on; frames of the batch that were written whole
// are kept, and the segment keeps its length when they reach past
// SegmentSize, else is cut to SegmentSize.
func TestOversizedSegmentTorn(t *testing.T) {
	const S = testSegmentSize
	const frames = 8
	total := int64(3*S + 100) // frames of ~24 KiB: frames 0-1 end below S, 0-4 past it
	tests := []struct {
		name string
		// tear damages the oversized segment's file of a crashed copy;
		// frameStart(i) is where the batch's frame i starts in it.
		tear func(f *os.File, frameStart func(int) int64) error
		kept int // frames of the batch that survive
		// wantSize is the segment's size after recovery: 0 when it is
		// removed, -1 for the torn file's own length.
		wantSize int64
	}{
		{"empty file", func(f *os.File, _ func(int) int64) error { return f.Truncate(0) }, 0, 0},
		{"reserved but never written", func(f *os.File, _ func(int) int64) error {
			return zeroFrom(f, 0)
		}, 0, 0},
		{"first frame torn", func(f *os.File, at func(int) int64) error { return zeroFrom(f, at(0)+100) }, 0, 0},
		{"torn below SegmentSize", func(f *os.File, at func(int) int64) error { return zeroFrom(f, at(2)+5) }, 2, S},
		{"torn past SegmentSize", func(f *os.File, at func(int) int64) error { return zeroFrom(f, at(5)+headerSize) }, 5, oversizedSize(total)},
		{"last frame torn", func(f *os.File, at func(int) int64) error { return zeroFrom(f, at(frames-1)+1) }, frames - 1, oversizedSize(total)},
		{"file cut short below SegmentSize", func(f *os.File, at func(int) int64) error { return f.Truncate(at(1) + 7) }, 1, S},
		{"file cut short past SegmentSize", func(f *os.File, at func(int) int64) error { return f.Truncate(at(6) - 3) }, 5, -1},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			dir := t.TempDir()
			cfg, _ := testConfig(t, dir)
			cfg.MaxPayload = int(total)
			l := openLog(t, cfg)
			before := appendRecords(t, l, 0, 30)
			checkRecordsAfterSync(t, l, before)
			batch := appendSynced(t, l, batchOf(7, frames, total))
			base := batch[0].off
			if base != S || l.oversizedRolls.Load() != 1 {
				t.Fatalf("batch at %d after %d oversized rolls, want %d after 1", base, l.oversizedRolls.Load(), S)
			}
			crash := copyDir(t, dir)
			closeLog(t, l)

			f, err := os.OpenFile(segmentPath(crash, base), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.tear(f, func(i int) int64 { return batch[i].off - base }); err != nil {
				t.Fatal(err)
			}
			fi, err := f.Stat()
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantSize < 0 {
				tt.wantSize = fi.Size()
			}
			_ = f.Close()

			rcfg, logs := testConfig(t, crash)
			rcfg.MaxPayload = cfg.MaxPayload
			l = openLog(t, rcfg)
			want := append(before[:len(before):len(before)], batch[:tt.kept]...)
			checkRecords(t, l, want)
			if c, end := l.Committed(), frameEndOf(want[len(want)-1]); c != end {
				t.Fatalf("Committed = %d, want %d", c, end)
			}
			if n := len(l.Quarantined()); n != 0 {
				t.Fatalf("%d spans quarantined, want none (a torn tail is cut)", n)
			}
			segs := l.Segments()
			switch last := segs[len(segs)-1]; {
			case tt.wantSize == 0:
				if last.Base != 0 || !strings.Contains(logs.String(), "removing newest segment") {
					t.Fatalf("segments %v, want the oversized one removed and said so:\n%s", segs, logs)
				}
			default:
				fi, err := os.Stat(segmentPath(crash, base))
				if err != nil {
					t.Fatal(err)
				}
				if last.Base != base || fi.Size() != tt.wantSize {
					t.Fatalf("segments %v, file of %d bytes; want the segment at %d of %d bytes", segs, fi.Size(), base, tt.wantSize)
				}
			}
			// Appends go on after what was kept, and survive a restart.
			more := append(want, appendRecords(t, l, 500, 100)...)
			checkRecordsAfterSync(t, l, more)
			closeLog(t, l)
			l = openLog(t, rcfg)
			checkRecords(t, l, more)
			if n := len(l.Quarantined()); n != 0 {
				t.Fatalf("after the second restart: %d spans quarantined", n)
			}
		})
	}
}

// zeroFrom overwrites f with zeros from off to its end: pages a crash lost.
func zeroFrom(f *os.File, off int64) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	for off < fi.Size() {
		n := min(fi.Size()-off, int64(len(zeroBuf)))
		if _, err := f.WriteAt(zeroBuf[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// TestOversizedRollDiskFull: an oversized segment is reserved whole before
// any byte of its batch is written, so a full disk is ErrDiskFull with
// nothing left behind (no file, the tail where it was), the prepared next
// segment is kept, and the same batch is stored once space is back.
func TestOversizedRollDiskFull(t *testing.T) {
	const S = testSegmentSize
	dir := t.TempDir()
	cfg, logs := testConfig(t, dir)
	cfg.MaxPayload = 2 * S
	fio := &faultIO{}
	cfg.io = fio
	l := openLog(t, cfg)
	if p := waitPrepared(t, l); p.err != nil {
		t.Fatal(p.err)
	}
	recs := appendSynced(t, l, [][]byte{[]byte("before")})
	committed, segs := l.Committed(), l.Segments()
	big := batchOf(3, 2, 2*S)

	fio.set(func(fi *faultIO) { fi.allocErr = syscall.ENOSPC })
	for range 2 {
		if _, _, err := l.Append(big); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("oversized Append on a full disk: err = %v, want ErrDiskFull", err)
		}
	}
	if got := l.Committed(); got != committed {
		t.Fatalf("Committed moved from %d to %d", committed, got)
	}
	if got := l.Segments(); len(got) != len(segs) {
		t.Fatalf("Segments = %v, want %v", got, segs)
	}
	if _, err := os.Stat(segmentPath(dir, S)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("half-made oversized segment left behind: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*"+nextSuffix)); len(left) != 1 {
		t.Fatalf("prepared files %v, want the one prepared before", left)
	}

	fio.set(func(fi *faultIO) { fi.allocErr = nil })
	recs = append(recs, appendSynced(t, l, big)...)
	recs = append(recs, appendRecords(t, l, 0, 120)...) // rolls on, into the prepared file
	checkRecordsAfterSync(t, l, recs)
	checkLayout(t, l, S, map[int64]int64{S: 2 * S})
	if p, o := l.preparedRolls.Load(), l.oversizedRolls.Load(); p < 1 || o != 1 {
		t.Fatalf("rolls: %d prepared, %d oversized; want the prepared file used after the one oversized roll", p, o)
	}
	closeLog(t, l)
	checkNoPreparedFiles(t, dir)
	l = openLog(t, cfg)
	checkRecords(t, l, recs)
	_ = logs
}

// TestOversizedSegmentDropped: retention drops an oversized segment like
// any other, by its own size: reads into it are ErrOutOfRange, everything
// after it reads and scans, and a restart agrees.
func TestOversizedSegmentDropped(t *testing.T) {
	const S = testSegmentSize
	dir := t.TempDir()
	cfg, _ := testConfig(t, dir)
	cfg.MaxPayload = 5 * S
	l := openLog(t, cfg)
	first := appendRecords(t, l, 0, 20)
	batch := appendSynced(t, l, batchOf(11, 3, 5*S-1000))
	after := appendRecords(t, l, 100, 200)
	checkRecordsAfterSync(t, l, append(append(first, batch...), after...))
	end := S + oversizedSize(5*S-1000)

	if n, err := l.DropBefore(end); err != nil || n != 2 {
		t.Fatalf("DropBefore(%d) = %d, %v; want 2 segments dropped", end, n, err)
	}
	if got := l.MinOffset(); got != end {
		t.Fatalf("MinOffset = %d, want %d", got, end)
	}
	for _, r := range batch {
		if _, _, err := l.ReadAt(r.off, nil); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("ReadAt(%d) in the dropped segment: %v, want ErrOutOfRange", r.off, err)
		}
	}
	checkRecords(t, l, recsFrom(after, end))
	closeLog(t, l)
	l = openLog(t, cfg)
	checkRecords(t, l, recsFrom(after, end))
}

// recsFrom returns the records at or after off.
func recsFrom(recs []record, off int64) []record {
	var out []record
	for _, r := range recs {
		if r.off >= off {
			out = append(out, r)
		}
	}
	return out
}

// checkNoWarnings fails if anything was logged at WARN or ERROR, but for the
// slow preparation warning, which depends on the machine's speed.
func checkNoWarnings(tb testing.TB, logs *logBuffer) {
	tb.Helper()
	for _, line := range strings.Split(logs.String(), "\n") {
		if (strings.Contains(line, "level=WARN") && !strings.Contains(line, "not zero-filled in time")) || strings.Contains(line, "level=ERROR") {
			tb.Fatalf("logged a warning:\n%s", logs)
		}
	}
}

// TestOpenWithLargerSegmentAfterFullSegment: a newest segment whose frames
// end fewer than a header's bytes before its end (no room for a marker) is
// reopened with a larger SegmentSize as it is: the zeros closing it are its
// clean end, not a torn frame to cut (which was logged at WARN).
func TestOpenWithLargerSegmentAfterFullSegment(t *testing.T) {
	const S = testSegmentSize
	for _, left := range []int64{0, 1, headerSize - 1} {
		t.Run(fmt.Sprintf("left=%d", left), func(t *testing.T) {
			dir := t.TempDir()
			cfg, _ := testConfig(t, dir)
			cfg.MaxPayload = S
			l := openLog(t, cfg)
			recs := appendSynced(t, l, batchOf(uint64(left), 2, S-left))
			closeLog(t, l)

			rcfg, logs := testConfig(t, dir)
			rcfg.SegmentSize, rcfg.MaxPayload = 4*S, cfg.MaxPayload
			l = openLog(t, rcfg)
			checkRecords(t, l, recs)
			if s := logs.String(); strings.Contains(s, "cutting") || strings.Contains(s, "level=ERROR") {
				t.Fatalf("reopening touched the log:\n%s", s)
			}
			more := append(recs, appendRecords(t, l, 0, 50)...)
			checkRecordsAfterSync(t, l, more)
			closeLog(t, l)
			l = openLog(t, rcfg)
			checkRecords(t, l, more)
		})
	}
}
