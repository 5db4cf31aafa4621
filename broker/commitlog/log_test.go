package commitlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

func TestRoundTripAcrossSegments(t *testing.T) {
	for _, syncMode := range []bool{true, false} {
		t.Run(fmt.Sprintf("sync=%v", syncMode), func(t *testing.T) {
			dir := t.TempDir()
			cfg, _ := testConfig(t, dir)
			cfg.Sync = syncMode
			l := openLog(t, cfg)

			recs := appendRecords(t, l, 0, 1500)
			end := recs[len(recs)-1].off + headerSize + int64(len(recs[len(recs)-1].payload))
			if err := l.Sync(context.Background(), end); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			if got := l.Committed(); got != end {
				t.Fatalf("Committed = %d, want %d", got, end)
			}
			segs := l.Segments()
			if len(segs) < 10 {
				t.Fatalf("%d segments, want at least 10 rolls with %d-byte segments", len(segs), cfg.SegmentSize)
			}
			for i, s := range segs {
				if s.Base != int64(i)*cfg.SegmentSize {
					t.Fatalf("segment %d base %d, want %d", i, s.Base, int64(i)*cfg.SegmentSize)
				}
			}
			if last := segs[len(segs)-1]; last.End != end {
				t.Fatalf("active segment End = %d, want %d", last.End, end)
			}
			for _, r := range recs {
				frameEnd := r.off + headerSize + int64(len(r.payload))
				if r.off/cfg.SegmentSize != (frameEnd-1)/cfg.SegmentSize && len(r.payload) > 0 {
					t.Fatalf("frame at %d (%d bytes) spans segments", r.off, frameEnd-r.off)
				}
			}
			checkRecords(t, l, recs)

			mid := len(recs) / 2
			got := scanAll(t, l, recs[mid].off)
			if len(got) != len(recs)-mid || got[0].off != recs[mid].off {
				t.Fatalf("Scan from middle: %d records starting %d, want %d starting %d", len(got), got[0].off, len(recs)-mid, recs[mid].off)
			}

			// Everything survives a reopen, and appends go on after it.
			closeLog(t, l)
			l = openLog(t, cfg)
			if got := l.Committed(); got != end {
				t.Fatalf("Committed after reopen = %d, want %d", got, end)
			}
			recs = append(recs, appendRecords(t, l, len(recs), 300)...)
			last := recs[len(recs)-1]
			if err := l.Sync(context.Background(), last.off+headerSize+int64(len(last.payload))); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			checkRecords(t, l, recs)
		})
	}
}

func TestAppendRefusesTooLarge(t *testing.T) {
	cfg, _ := testConfig(t, t.TempDir())
	l := openLog(t, cfg)
	before := l.Committed()
	tests := []struct {
		name     string
		payloads [][]byte
	}{
		{"payload over MaxPayload", [][]byte{make([]byte, cfg.MaxPayload+1)}},
		// A batch larger than a segment gets one of its own, up to the
		// largest append (lowered here, so that the test stays small).
		{"batch over the largest append", func() [][]byte {
			var ps [][]byte
			for range 5 {
				ps = append(ps, make([]byte, cfg.MaxPayload))
			}
			return ps
		}()},
	}
	l.maxAppend = 4 * (headerSize + int64(cfg.MaxPayload))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := l.Append(tt.payloads)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Append err = %v, want ErrTooLarge", err)
			}
			if got := l.Committed(); got != before {
				t.Fatalf("Committed moved to %d", got)
			}
		})
	}
	// The largest legal payload is fine.
	if _, _, err := l.Append([][]byte{make([]byte, cfg.MaxPayload)}); err != nil {
		t.Fatalf("Append MaxPayload bytes: %v", err)
	}
}

func TestConcurrentAppendGroupCommit(t *testing.T) {
	cfg, _ := testConfig(t, t.TempDir())
	cfg.SegmentSize = 1 << 20
	l := openLog(t, cfg)

	const writers, perWriter = 64, 50
	type result struct {
		off int64
		w   int
		i   int
	}
	results := make([][]result, writers)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range perWriter {
				p := []byte(fmt.Sprintf("writer %d message %d %s", w, i, bytes.Repeat([]byte{'x'}, 200)))
				offs, end, err := l.Append([][]byte{p})
				if err != nil {
					errs <- err
					return
				}
				if err := l.Sync(context.Background(), end); err != nil {
					errs <- err
					return
				}
				if c := l.Committed(); c < end {
					errs <- fmt.Errorf("after Sync(%d) Committed = %d", end, c)
					return
				}
				results[w] = append(results[w], result{off: offs[0], w: w, i: i})
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	seen := map[int64]bool{}
	for w := range results {
		if len(results[w]) != perWriter {
			t.Fatalf("writer %d stored %d messages, want %d", w, len(results[w]), perWriter)
		}
		for _, r := range results[w] {
			if seen[r.off] {
				t.Fatalf("offset %d returned twice", r.off)
			}
			seen[r.off] = true
			got, _, err := l.ReadAt(r.off, nil)
			if err != nil {
				t.Fatalf("ReadAt(%d): %v", r.off, err)
			}
			want := fmt.Sprintf("writer %d message %d ", r.w, r.i)
			if !bytes.HasPrefix(got, []byte(want)) {
				t.Fatalf("ReadAt(%d) = %.30q, want prefix %q", r.off, got, want)
			}
		}
	}
	waiters := int64(writers * perWriter)
	syncs := l.syncs.Load()
	t.Logf("%d Sync waiters shared %d fsyncs", waiters, syncs)
	if syncs >= waiters {
		t.Fatalf("%d fsyncs for %d waiters: commits were not grouped", syncs, waiters)
	}
}

func TestDropBefore(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := testConfig(t, dir)
	l := openLog(t, cfg)
	recs := appendRecords(t, l, 0, 800)
	last := recs[len(recs)-1]
	if err := l.Sync(context.Background(), last.off+headerSize+int64(len(last.payload))); err != nil {
		t.Fatal(err)
	}
	segs := l.Segments()
	if len(segs) < 5 {
		t.Fatalf("only %d segments", len(segs))
	}

	if n, err := l.DropBefore(segs[2].End - 1); err != nil || n != 2 {
		t.Fatalf("DropBefore(inside segment 2) = %d, %v; want 2 dropped", n, err)
	}
	if got := l.MinOffset(); got != segs[2].Base {
		t.Fatalf("MinOffset = %d, want %d", got, segs[2].Base)
	}
	for _, s := range segs[:2] {
		if _, err := os.Stat(segmentPath(dir, s.Base)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("segment %d still on disk: %v", s.Base, err)
		}
	}
	if got := l.Segments(); len(got) != len(segs)-2 || got[0] != segs[2] {
		t.Fatalf("Segments after drop = %v", got)
	}

	var kept []record
	for _, r := range recs {
		if r.off >= segs[2].Base {
			kept = append(kept, r)
			continue
		}
		if _, _, err := l.ReadAt(r.off, nil); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("ReadAt dropped offset %d: err = %v, want ErrOutOfRange", r.off, err)
		}
	}
	if _, err := l.Scan(recs[0].off, func(int64, []byte) error { return nil }); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Scan from dropped offset: err = %v, want ErrOutOfRange", err)
	}
	for _, off := range []int64{-1, l.Committed(), l.Committed() + 100} {
		if _, _, err := l.ReadAt(off, nil); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("ReadAt(%d): err = %v, want ErrOutOfRange", off, err)
		}
	}
	checkRecords(t, l, kept)

	// Never the active segment, however far off reaches.
	n, err := l.DropBefore(1 << 62)
	if err != nil || n != len(segs)-3 {
		t.Fatalf("DropBefore(huge) = %d, %v; want %d", n, err, len(segs)-3)
	}
	active := segs[len(segs)-1]
	if got := l.Segments(); len(got) != 1 || got[0].Base != active.Base {
		t.Fatalf("Segments = %v, want only the active one", got)
	}

	// A log whose only segment does not start at 0 reopens and goes on.
	closeLog(t, l)
	l = openLog(t, cfg)
	if got := l.MinOffset(); got != active.Base {
		t.Fatalf("MinOffset after reopen = %d, want %d", got, active.Base)
	}
	var activeRecs []record
	for _, r := range kept {
		if r.off >= active.Base {
			activeRecs = append(activeRecs, r)
		}
	}
	more := appendRecords(t, l, len(recs), 100)
	m := more[len(more)-1]
	if err := l.Sync(context.Background(), m.off+headerSize+int64(len(m.payload))); err != nil {
		t.Fatal(err)
	}
	checkRecords(t, l, append(activeRecs, more...))
}

func TestAsyncMode(t *testing.T) {
	t.Run("Sync returns at once", func(t *testing.T) {
		cfg, _ := testConfig(t, t.TempDir())
		cfg.Sync = false
		cfg.FlushInterval = time.Hour // the flusher will not run during the test
		l := openLog(t, cfg)
		changed := l.Changed()
		_, end, err := l.Append([][]byte{[]byte("async")})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-changed:
		default:
			t.Fatal("Changed not closed by an async Append")
		}
		if got := l.Committed(); got != end {
			t.Fatalf("async Committed = %d, want written end %d", got, end)
		}
		if err := l.Sync(context.Background(), end); err != nil {
			t.Fatalf("Sync: %v", err)
		}
		if f := l.flushed.Load(); f >= end {
			t.Fatalf("flushed = %d already: Sync must not have waited for an fsync", f)
		}
	})
	t.Run("flusher fsyncs within the interval", func(t *testing.T) {
		dir := t.TempDir()
		cfg, _ := testConfig(t, dir)
		cfg.Sync = false
		cfg.FlushInterval = 50 * time.Millisecond
		l := openLog(t, cfg)
		recs := appendRecords(t, l, 0, 100)
		last := recs[len(recs)-1]
		end := last.off + headerSize + int64(len(last.payload))
		start := time.Now()
		waitFor(t, 5*time.Second, func() bool { return l.flushed.Load() >= end })
		// Loose: a loaded machine delays the flusher; that it flushes at all
		// without a Sync is the point.
		if took := time.Since(start); took > 40*cfg.FlushInterval {
			t.Fatalf("flushed after %v, FlushInterval is %v", took, cfg.FlushInterval)
		}
		if l.syncs.Load() == 0 {
			t.Fatal("no fsync counted")
		}
		closeLog(t, l)
		l = openLog(t, cfg)
		checkRecords(t, l, recs)
	})
}

// waitFor polls cond until it holds or the deadline passes. Used only where
// the log offers no channel to wait on (the async flusher's progress).
func waitFor(tb testing.TB, limit time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met within %v", limit)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSyncWaitsForFsync(t *testing.T) {
	cfg, _ := testConfig(t, t.TempDir())
	fio := &faultIO{}
	cfg.io = fio
	l := openLog(t, cfg)

	gate := make(chan struct{})
	entered := make(chan struct{}, 1)
	fio.set(func(fi *faultIO) {
		fi.syncFault = func() error {
			select {
			case entered <- struct{}{}:
			default:
			}
			<-gate
			return nil
		}
	})
	changed := l.Changed()
	_, end, err := l.Append([][]byte{[]byte("held")})
	if err != nil {
		t.Fatal(err)
	}
	<-entered // the flusher is inside fdatasync

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.Sync(ctx, end); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sync while fsync is held: err = %v, want DeadlineExceeded", err)
	}
	if got := l.Committed(); got >= end {
		t.Fatalf("Committed = %d before the fsync finished", got)
	}
	if _, _, err := l.ReadAt(0, nil); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("ReadAt of an unsynced frame: err = %v, want ErrOutOfRange", err)
	}
	select {
	case <-changed:
		t.Fatal("Changed closed before Committed advanced")
	default:
	}

	close(gate)
	if err := l.Sync(context.Background(), end); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	<-changed
	if got, _, err := l.ReadAt(0, nil); err != nil || string(got) != "held" {
		t.Fatalf("ReadAt(0) = %q, %v", got, err)
	}
	if err := l.Sync(context.Background(), end+1); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Sync past the written end: err = %v, want ErrOutOfRange", err)
	}
}

func TestFsyncFailureIsSticky(t *testing.T) {
	cfg, _ := testConfig(t, t.TempDir())
	fio := &faultIO{}
	cfg.io = fio
	l := openLog(t, cfg)
	fio.set(func(fi *faultIO) { fi.syncFault = func() error { return errInjected } })

	_, end, err := l.Append([][]byte{[]byte("lost?")})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(context.Background(), end); !errors.Is(err, errInjected) || !errors.Is(err, ErrFailed) {
		t.Fatalf("Sync: err = %v, want the fsync error, as ErrFailed", err)
	}
	if _, _, err := l.Append([][]byte{[]byte("more")}); !errors.Is(err, errInjected) || !errors.Is(err, ErrFailed) {
		t.Fatalf("Append after failed fsync: err = %v, want the fsync error, as ErrFailed", err)
	}
	if err := l.Failed(); !errors.Is(err, ErrFailed) {
		t.Fatalf("Failed() = %v, want ErrFailed", err)
	}
	// Clearing the fault changes nothing: only a reopen does.
	fio.set(func(fi *faultIO) { fi.syncFault = nil })
	if _, _, err := l.Append([][]byte{[]byte("more")}); !errors.Is(err, ErrFailed) {
		t.Fatalf("Append after the fault cleared: err = %v, want ErrFailed", err)
	}
	if err := l.Close(); !errors.Is(err, errInjected) {
		t.Fatalf("Close: err = %v, want the fsync error", err)
	}
}

func TestCloseAndLock(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := testConfig(t, dir)
	l := openLog(t, cfg)
	if _, err := Open(cfg); err == nil {
		t.Fatal("second Open of a directory in use succeeded")
	}
	_, end, err := l.Append([][]byte{[]byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, _, err := l.Append([][]byte{[]byte("y")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if _, _, err := l.ReadAt(0, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadAt after Close: %v", err)
	}
	if err := l.Sync(context.Background(), end); err != nil {
		t.Fatalf("Sync of data Close flushed: %v", err)
	}
	select {
	case <-l.Changed():
	default:
		t.Fatal("Changed of a closed log is not closed: a dispatcher would block forever")
	}
	l2 := openLog(t, cfg)
	if got, _, err := l2.ReadAt(0, nil); err != nil || string(got) != "x" {
		t.Fatalf("ReadAt after reopen = %q, %v", got, err)
	}
}

func TestReadAtEndOfSegment(t *testing.T) {
	cfg, _ := testConfig(t, t.TempDir())
	l := openLog(t, cfg)
	// Fill the first segment to leave a gap that the next frame cannot use.
	big := bytes.Repeat([]byte{'a'}, cfg.MaxPayload)
	offs, end, err := l.Append([][]byte{big[:cfg.MaxPayload], big[:cfg.MaxPayload], big[:cfg.MaxPayload]})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	// Frame 3 ends where the marker will go, which is not yet written: next
	// is the plain end.
	if _, next, err := l.ReadAt(offs[2], nil); err != nil || next != end {
		t.Fatalf("ReadAt(last) next = %d, %v; want %d", next, err, end)
	}
	offs2, end2, err := l.Append([][]byte{big[:cfg.MaxPayload], big[:cfg.MaxPayload]})
	if err != nil {
		t.Fatal(err)
	}
	if offs2[0] != cfg.SegmentSize {
		t.Fatalf("batch that does not fit went to %d, want next segment %d", offs2[0], cfg.SegmentSize)
	}
	if err := l.Sync(context.Background(), end2); err != nil {
		t.Fatal(err)
	}
	if _, next, err := l.ReadAt(offs[2], nil); err != nil || next != cfg.SegmentSize {
		t.Fatalf("ReadAt(last of segment) next = %d, %v; want %d", next, err, cfg.SegmentSize)
	}
	_, next, err := l.ReadAt(end, nil)
	if !errors.Is(err, ErrEndOfSegment) || next != cfg.SegmentSize {
		t.Fatalf("ReadAt(marker) = next %d, %v; want %d, ErrEndOfSegment", next, err, cfg.SegmentSize)
	}
	// Scan from the marker position goes on in the next segment.
	got := scanAll(t, l, end)
	if len(got) != 2 || got[0].off != offs2[0] {
		t.Fatalf("Scan(marker) = %d records from %d", len(got), got[0].off)
	}
	// An offset inside a payload is not a frame.
	if _, _, err := l.ReadAt(offs[0]+headerSize+1, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadAt(inside a payload): err = %v, want ErrCorrupt", err)
	}
	// Nor is one in the zeros after the marker.
	if _, _, err := l.ReadAt(end+headerSize, nil); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("ReadAt(after the marker): err = %v, want ErrOutOfRange", err)
	}
}

func TestScanStopsOnCallbackError(t *testing.T) {
	cfg, _ := testConfig(t, t.TempDir())
	l := openLog(t, cfg)
	recs := appendRecords(t, l, 0, 50)
	last := recs[len(recs)-1]
	if err := l.Sync(context.Background(), last.off+headerSize+int64(len(last.payload))); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	n := 0
	next, err := l.Scan(0, func(off int64, p []byte) error {
		if n == 10 {
			return stop
		}
		n++
		return nil
	})
	if !errors.Is(err, stop) || next != recs[10].off {
		t.Fatalf("Scan = %d, %v; want %d, stop", next, err, recs[10].off)
	}
}
