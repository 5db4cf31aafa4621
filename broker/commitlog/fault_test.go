package commitlog

import (
	"bytes"
	"errors"
	"os"
	"syscall"
	"testing"
)

// fillSegment appends records until the next one of n bytes would not fit in
// the active segment, and returns what it appended.
func fillSegment(tb testing.TB, l *Log, n int) []record {
	tb.Helper()
	var recs []record
	for {
		l.mu.Lock()
		room := l.cfg.SegmentSize - l.pos
		l.mu.Unlock()
		if room < int64(headerSize+n) {
			return recs
		}
		p := bytes.Repeat([]byte{byte(len(recs))}, min(n, int(room)-headerSize))
		offs, _, err := l.Append([][]byte{p})
		if err != nil {
			tb.Fatalf("Append: %v", err)
		}
		recs = append(recs, record{off: offs[0], payload: p})
	}
}

// TestDiskFullOnRoll: the disk fills up while segment 0 is active. Segment
// 1 was prepared before, so its space is reserved and the first roll goes
// through; preparing segment 2 meets ENOSPC, and every Append that needs
// segment 2 fails with ErrDiskFull, leaving nothing behind, until space
// returns.
func TestDiskFullOnRoll(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := testConfig(t, dir)
	fio := &faultIO{}
	cfg.io = fio
	l := openLog(t, cfg)
	if p := waitPrepared(t, l); p.err != nil {
		t.Fatalf("preparing segment 1: %v", p.err)
	}

	fio.set(func(fi *faultIO) { fi.allocErr = syscall.ENOSPC })
	recs := rollOnce(t, l)
	if got := recs[len(recs)-1].off; got != cfg.SegmentSize {
		t.Fatalf("roll into the prepared segment at %d, want %d", got, cfg.SegmentSize)
	}
	if p := waitPrepared(t, l); !errors.Is(p.err, ErrDiskFull) {
		t.Fatalf("preparing segment 2 on a full disk: err = %v, want ErrDiskFull", p.err)
	}
	checkNoPreparedFiles(t, dir)
	recs = append(recs, fillSegment(t, l, 1000)...)
	checkRecordsAfterSync(t, l, recs)
	committed, segs := l.Committed(), l.Segments()

	for range 3 {
		_, _, err := l.Append([][]byte{make([]byte, 1000)})
		if !errors.Is(err, ErrDiskFull) {
			t.Fatalf("Append needing a new segment on a full disk: err = %v, want ErrDiskFull", err)
		}
	}
	if got := l.Committed(); got != committed {
		t.Fatalf("Committed moved from %d to %d", committed, got)
	}
	if got := l.Segments(); len(got) != len(segs) || got[len(got)-1] != segs[len(segs)-1] {
		t.Fatalf("Segments = %v, want %v", got, segs)
	}
	if _, err := os.Stat(segmentPath(dir, 2*cfg.SegmentSize)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("half-created segment left behind: %v", err)
	}
	checkNoPreparedFiles(t, dir)
	// A small record that still fits needs no new segment and succeeds.
	small, _, err := l.Append([][]byte{[]byte("fits")})
	if err != nil {
		t.Fatalf("Append that fits on a full disk: %v", err)
	}
	recs = append(recs, record{off: small[0], payload: []byte("fits")})

	fio.set(func(fi *faultIO) { fi.allocErr = nil })
	big := bytes.Repeat([]byte{'b'}, 1000)
	offs, _, err := l.Append([][]byte{big})
	if err != nil {
		t.Fatalf("Append after the fault cleared: %v", err)
	}
	if offs[0] != 2*cfg.SegmentSize {
		t.Fatalf("first append after the fault at %d, want next segment %d", offs[0], 2*cfg.SegmentSize)
	}
	if p, d := l.preparedRolls.Load(), l.directRolls.Load(); p != 1 || d != 1 {
		t.Fatalf("rolls: %d prepared, %d direct; want 1 and 1", p, d)
	}
	recs = append(recs, record{off: offs[0], payload: big})
	recs = append(recs, appendRecords(t, l, 0, 20)...)
	checkRecordsAfterSync(t, l, recs)
	closeLog(t, l)
	l = openLog(t, cfg)
	checkRecords(t, l, recs)
}

func TestDiskFullOnOpen(t *testing.T) {
	cfg, _ := testConfig(t, t.TempDir())
	cfg.io = &faultIO{allocErr: syscall.ENOSPC}
	l, err := Open(cfg)
	if !errors.Is(err, ErrDiskFull) {
		if l != nil {
			_ = l.Close()
		}
		t.Fatalf("Open on a full disk: err = %v, want ErrDiskFull", err)
	}
}

func TestWriteFailureLeavesNothing(t *testing.T) {
	tests := []struct {
		name       string
		undoFails  bool
		wantFailed bool
	}{
		{name: "torn write is zeroed"},
		{name: "zeroing fails too", undoFails: true, wantFailed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, _ := testConfig(t, dir)
			fio := &faultIO{}
			cfg.io = fio
			l := openLog(t, cfg)
			recs := appendRecords(t, l, 0, 30)
			checkRecordsAfterSync(t, l, recs)
			committed := l.Committed()

			// The write puts half the batch on disk, then fails.
			calls := 0
			fio.set(func(fi *faultIO) {
				fi.writeFault = func(f *os.File, b []byte, off int64) (int, error) {
					calls++
					if calls > 1 && !tt.undoFails {
						return osIO{}.writeAt(f, b, off)
					}
					n, err := osIO{}.writeAt(f, b[:len(b)/2], off)
					if err != nil {
						return n, err
					}
					return n, errInjected
				}
			})
			batch := [][]byte{payloadFor(1), payloadFor(2), payloadFor(3)}
			_, _, err := l.Append(batch)
			if !errors.Is(err, errInjected) || errors.Is(err, ErrFailed) != tt.wantFailed {
				t.Fatalf("Append: err = %v, want the write error (ErrFailed: %v)", err, tt.wantFailed)
			}
			if got := l.Failed(); errors.Is(got, ErrFailed) != tt.wantFailed {
				t.Fatalf("Failed() = %v after the failed append, want ErrFailed: %v", got, tt.wantFailed)
			}
			fio.set(func(fi *faultIO) { fi.writeFault = nil })

			if got := l.Committed(); got != committed {
				t.Fatalf("Committed moved from %d to %d", committed, got)
			}
			if got := scanAll(t, l, committed); len(got) != 0 {
				t.Fatalf("Scan after the failed append delivered %d records", len(got))
			}
			if tt.wantFailed {
				if _, _, err := l.Append(batch); !errors.Is(err, errInjected) || !errors.Is(err, ErrFailed) {
					t.Fatalf("Append after an unrecoverable tail: err = %v, want the recorded failure", err)
				}
				return
			}
			// Nothing of the failed batch is on disk either.
			b, err := os.ReadFile(segmentPath(dir, committed-committed%cfg.SegmentSize))
			if err != nil {
				t.Fatal(err)
			}
			if i := bytes.IndexFunc(b[committed%cfg.SegmentSize:], func(r rune) bool { return r != 0 }); i >= 0 {
				t.Fatalf("bytes of the failed append left at %d", committed+int64(i))
			}
			more := appendRecords(t, l, 100, 10)
			if more[0].off != committed {
				t.Fatalf("next append at %d, want %d", more[0].off, committed)
			}
			recs = append(recs, more...)
			checkRecordsAfterSync(t, l, recs)
			closeLog(t, l)
			l = openLog(t, cfg)
			checkRecords(t, l, recs)
		})
	}
}

func TestSealFailureKeepsSegment(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := testConfig(t, dir)
	fio := &faultIO{}
	cfg.io = fio
	l := openLog(t, cfg)
	recs := fillSegment(t, l, 1000)
	checkRecordsAfterSync(t, l, recs)

	// Writing the end-of-segment marker fails: the roll is abandoned.
	fio.set(func(fi *faultIO) {
		fi.writeFault = func(*os.File, []byte, int64) (int, error) { return 0, errInjected }
	})
	if _, _, err := l.Append([][]byte{make([]byte, 1000)}); !errors.Is(err, errInjected) {
		t.Fatalf("Append: err = %v, want the write error", err)
	}
	if _, err := os.Stat(segmentPath(dir, cfg.SegmentSize)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("abandoned segment left behind: %v", err)
	}
	fio.set(func(fi *faultIO) { fi.writeFault = nil })
	big := bytes.Repeat([]byte{'b'}, 1000)
	offs, _, err := l.Append([][]byte{big})
	if err != nil {
		t.Fatalf("Append after the fault cleared: %v", err)
	}
	if offs[0] != cfg.SegmentSize {
		t.Fatalf("append after the fault at %d, want %d", offs[0], cfg.SegmentSize)
	}
	recs = append(recs, record{off: offs[0], payload: big})
	checkRecordsAfterSync(t, l, recs)
	closeLog(t, l)
	l = openLog(t, cfg)
	checkRecords(t, l, recs)
}

// TestRollFsyncFailure: the fsync that seals a segment fails. That is fatal
// (the kernel may have dropped the pages), and must not deadlock with the
// flusher.
func TestRollFsyncFailure(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := testConfig(t, dir)
	fio := &faultIO{}
	cfg.io = fio
	l := openLog(t, cfg)
	recs := fillSegment(t, l, 1000)
	checkRecordsAfterSync(t, l, recs)

	fio.set(func(fi *faultIO) { fi.syncFault = func() error { return errInjected } })
	if _, _, err := l.Append([][]byte{make([]byte, 1000)}); !errors.Is(err, errInjected) || !errors.Is(err, ErrFailed) {
		t.Fatalf("Append: err = %v, want the fsync error, as ErrFailed", err)
	}
	if _, err := os.Stat(segmentPath(dir, cfg.SegmentSize)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("abandoned segment left behind: %v", err)
	}
	if _, _, err := l.Append([][]byte{[]byte("small")}); !errors.Is(err, errInjected) || !errors.Is(err, ErrFailed) {
		t.Fatalf("Append after the failure: err = %v, want the fsync error, as ErrFailed", err)
	}
	if err := l.Failed(); !errors.Is(err, ErrFailed) {
		t.Fatalf("Failed() = %v, want ErrFailed", err)
	}
	checkRecords(t, l, recs)
	if err := l.Close(); !errors.Is(err, errInjected) {
		t.Fatalf("Close: err = %v, want the fsync error", err)
	}
	// A restart recovers what was durable.
	l = openLog(t, func() Config { c := cfg; c.io = nil; return c }())
	checkRecords(t, l, recs)
}
