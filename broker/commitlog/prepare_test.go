package commitlog

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// waitLimit bounds every wait on the log's goroutines, so that a hang fails
// the test with a message rather than at the package timeout.
const waitLimit = 20 * time.Second

// recv waits for a value from ch (or for ch to be closed).
func recv[T any](tb testing.TB, ch <-chan T, what string) T {
	tb.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		tb.Fatalf("no %s within %v", what, waitLimit)
		panic("unreachable")
	}
}

// waitPrepared waits for the running preparation to finish and returns it.
func waitPrepared(tb testing.TB, l *Log) *prepared {
	tb.Helper()
	l.mu.Lock()
	p := l.prep
	l.mu.Unlock()
	if p == nil {
		tb.Fatal("no segment preparation running")
	}
	recv(tb, p.done, "end of the segment preparation")
	return p
}

// rollOnce fills the active segment and appends one more record, which must
// open the next segment. It returns what it appended.
func rollOnce(tb testing.TB, l *Log) []record {
	tb.Helper()
	recs := fillSegment(tb, l, 1000)
	l.mu.Lock()
	next := l.active.base + l.cfg.SegmentSize
	l.mu.Unlock()
	p := bytes.Repeat([]byte{'r'}, 1000)
	offs, _, err := l.Append([][]byte{p})
	if err != nil {
		tb.Fatalf("Append that rolls: %v", err)
	}
	if offs[0] != next {
		tb.Fatalf("Append that rolls landed at %d, want %d", offs[0], next)
	}
	return append(recs, record{off: offs[0], payload: p})
}

func checkNoPreparedFiles(tb testing.TB, dir string) {
	tb.Helper()
	left, err := filepath.Glob(filepath.Join(dir, "*"+nextSuffix))
	if err != nil {
		tb.Fatal(err)
	}
	if len(left) > 0 {
		tb.Fatalf("prepared files left behind: %v", left)
	}
}

// checkZeroFilled checks that no byte of the file at path is in an
// unwritten extent: it was zero-filled, not merely fallocated.
func checkZeroFilled(tb testing.TB, path string, want bool) {
	tb.Helper()
	n, ok := unwrittenBytes(tb, path)
	if !ok {
		tb.Logf("FIEMAP not supported here; not checking the extents of %s", filepath.Base(path))
		return
	}
	if got := n == 0; got != want {
		tb.Fatalf("%s: %d bytes in unwritten extents; want zero-filled = %v", filepath.Base(path), n, want)
	}
}

func TestRollUsesPreparedFile(t *testing.T) {
	dir := t.TempDir()
	cfg, logs := testConfig(t, dir)
	fio := &faultIO{}
	cfg.io = fio
	l := openLog(t, cfg)
	// The first segment of a new log is zero-filled by Open itself.
	if got := fio.zeroed(nextName(0)); got != cfg.SegmentSize {
		t.Fatalf("zeros written for segment 0: %d, want %d", got, cfg.SegmentSize)
	}
	checkZeroFilled(t, segmentPath(dir, 0), true)

	var recs []record
	const rolls = 4
	for i := range int64(rolls) {
		p := waitPrepared(t, l)
		if p.err != nil {
			t.Fatalf("preparation %d: %v", i, p.err)
		}
		if got := fio.zeroed(filepath.Base(p.path)); got != cfg.SegmentSize {
			t.Fatalf("zeros written to %s: %d, want %d", filepath.Base(p.path), got, cfg.SegmentSize)
		}
		recs = append(recs, rollOnce(t, l)...)
		checkZeroFilled(t, segmentPath(dir, (i+1)*cfg.SegmentSize), true)
	}
	if p, d := l.preparedRolls.Load(), l.directRolls.Load(); p != rolls || d != 0 {
		t.Fatalf("rolls: %d prepared, %d direct; want %d and 0", p, d, rolls)
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("warnings on rolls into prepared files:\n%s", logs.String())
	}
	checkRecordsAfterSync(t, l, recs)
	closeLog(t, l)
	checkNoPreparedFiles(t, dir) // Close deleted the one prepared for the next roll
	l = openLog(t, cfg)
	checkRecords(t, l, recs)
}

// TestRollFallsBackWhenNotPrepared holds a preparation: rolls go on with
// fallocated segments and warn once; the preparation, once done, serves the
// next roll.
func TestRollFallsBackWhenNotPrepared(t *testing.T) {
	dir := t.TempDir()
	cfg, logs := testConfig(t, dir)
	fio := &faultIO{}
	cfg.io = fio
	l := openLog(t, cfg)
	waitPrepared(t, l)

	gate := make(chan struct{})
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // before Close, which waits for the held preparation
	entered := make(chan struct{}, 1)
	fio.set(func(fi *faultIO) {
		fi.zeroFault = func(*os.File, int64) error {
			select {
			case entered <- struct{}{}:
			default:
			}
			<-gate
			return nil
		}
	})
	recs := rollOnce(t, l) // into prepared segment 1; preparing segment 2 starts and is held
	recv(t, entered, "preparation write")
	for range 2 {
		recs = append(recs, rollOnce(t, l)...)
	}
	// Segment 3 holds one record: the rest of it is still only reserved.
	checkZeroFilled(t, segmentPath(dir, 3*cfg.SegmentSize), false)
	if p, d := l.preparedRolls.Load(), l.directRolls.Load(); p != 1 || d != 2 {
		t.Fatalf("rolls: %d prepared, %d direct; want 1 and 2", p, d)
	}
	if n := strings.Count(logs.String(), "not zero-filled in time"); n != 1 {
		t.Fatalf("%d warnings about the late preparation, want 1; log:\n%s", n, logs.String())
	}

	fio.set(func(fi *faultIO) { fi.zeroFault = nil })
	release()
	if p := waitPrepared(t, l); p.err != nil {
		t.Fatalf("preparation: %v", p.err)
	}
	recs = append(recs, rollOnce(t, l)...)
	if p, d := l.preparedRolls.Load(), l.directRolls.Load(); p != 2 || d != 2 {
		t.Fatalf("rolls: %d prepared, %d direct; want 2 and 2", p, d)
	}
	checkZeroFilled(t, segmentPath(dir, 4*cfg.SegmentSize), true)
	checkRecordsAfterSync(t, l, recs)
	closeLog(t, l)
	checkNoPreparedFiles(t, dir)
	l = openLog(t, cfg)
	checkRecords(t, l, recs)
}

// TestRollWaitsForNearlyPrepared: a roll that finds the zeros written and
// only the preparation's fsync pending waits for it, up to rollWait.
func TestRollWaitsForNearlyPrepared(t *testing.T) {
	tests := []struct {
		name         string
		wait         time.Duration
		release      bool // let the preparation finish while the roll waits
		wantPrepared int64
	}{
		{name: "finishes within the wait", wait: time.Hour, release: true, wantPrepared: 2},
		{name: "wait runs out", wait: time.Millisecond, wantPrepared: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _ := testConfig(t, t.TempDir())
			fio := &faultIO{}
			cfg.io = fio
			l := openLog(t, cfg)
			waitPrepared(t, l)

			gate := make(chan struct{})
			release := sync.OnceFunc(func() { close(gate) })
			t.Cleanup(release)
			entered := make(chan struct{}, 1)
			fio.set(func(fi *faultIO) {
				fi.zeroSyncFault = func(*os.File) error {
					entered <- struct{}{}
					<-gate
					return nil
				}
			})
			recs := rollOnce(t, l) // preparing segment 2 starts and is held in its fsync
			recv(t, entered, "preparation fsync")
			waiting := make(chan struct{})
			l.mu.Lock()
			l.rollWait = tt.wait
			l.testHookRollWait = func() { close(waiting) }
			l.mu.Unlock()

			recs = append(recs, fillSegment(t, l, 1000)...)
			type result struct {
				off int64
				err error
			}
			done := make(chan result, 1)
			p := bytes.Repeat([]byte{'w'}, 1000) // does not fit: rolls
			go func() {
				offs, _, err := l.Append([][]byte{p})
				if err != nil {
					done <- result{err: err}
					return
				}
				done <- result{off: offs[0]}
			}()
			select {
			case <-waiting:
			case res := <-done:
				t.Fatalf("Append rolled (at %d, err %v) without waiting for the nearly prepared file", res.off, res.err)
			case <-time.After(waitLimit):
				t.Fatalf("no roll waiting for the preparation within %v", waitLimit)
			}
			if tt.release {
				release()
			}
			res := recv(t, done, "Append that rolls")
			release()
			if res.err != nil {
				t.Fatalf("Append that rolls: %v", res.err)
			}
			if res.off != 2*cfg.SegmentSize {
				t.Fatalf("Append that rolls landed at %d, want %d", res.off, 2*cfg.SegmentSize)
			}
			recs = append(recs, record{off: res.off, payload: p})
			if got := l.preparedRolls.Load(); got != tt.wantPrepared {
				t.Fatalf("%d rolls into prepared files, want %d", got, tt.wantPrepared)
			}
			checkRecordsAfterSync(t, l, recs)
		})
	}
}

// TestClosePreparing: Close stops a preparation in the middle, waits for
// its goroutine, and deletes its file.
func TestClosePreparing(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := testConfig(t, dir)
	cfg.SegmentSize = 8 << 20 // many chunks of zeros
	fio := &faultIO{}
	cfg.io = fio
	target := nextName(cfg.SegmentSize)
	gate := make(chan struct{})
	entered := make(chan struct{}, 1)
	fio.zeroFault = func(f *os.File, _ int64) error {
		if filepath.Base(f.Name()) == target {
			select {
			case entered <- struct{}{}:
			default:
			}
			<-gate
		}
		return nil
	}
	l := openLog(t, cfg)
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release)
	recv(t, entered, "preparation write")
	l.mu.Lock()
	p := l.prep
	l.mu.Unlock()

	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	recv(t, l.stop, "Close stopping the background work")
	release()
	if err := recv(t, closed, "Close"); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-p.done:
	default:
		t.Fatal("preparation goroutine still running after Close returned")
	}
	if !errors.Is(p.err, errStopped) || p.f != nil {
		t.Fatalf("stopped preparation: file %v, err %v; want none and errStopped", p.f, p.err)
	}
	if got := fio.zeroed(target); got >= cfg.SegmentSize {
		t.Fatalf("preparation wrote all %d bytes: Close did not stop it", got)
	}
	checkNoPreparedFiles(t, dir)
}

// TestOpenRemovesLeftoverPreparation: files a crash left mid-preparation are
// deleted, and the one the log prepares anew is all zeros even where the
// leftover had the same name and other bytes.
func TestOpenRemovesLeftoverPreparation(t *testing.T) {
	tests := []struct {
		name     string
		existing bool // a log with segments, or a new one
	}{
		{"new log", false},
		{"existing log", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, _ := testConfig(t, dir)
			var recs []record
			if tt.existing {
				l := openLog(t, cfg)
				recs = appendRecords(t, l, 0, 20)
				closeLog(t, l)
			}
			junk := bytes.Repeat([]byte{0xab}, 5000)
			for _, base := range []int64{0, cfg.SegmentSize, 7 * cfg.SegmentSize} {
				if err := os.WriteFile(filepath.Join(dir, nextName(base)), junk, 0o644); err != nil {
					t.Fatal(err)
				}
			}

			l := openLog(t, cfg)
			p := waitPrepared(t, l)
			if p.err != nil {
				t.Fatalf("preparation: %v", p.err)
			}
			for _, base := range []int64{0, 7 * cfg.SegmentSize} {
				if _, err := os.Stat(filepath.Join(dir, nextName(base))); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("leftover %s still there: %v", nextName(base), err)
				}
			}
			b, err := os.ReadFile(p.path)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(b)) != cfg.SegmentSize || bytes.IndexFunc(b, func(r rune) bool { return r != 0 }) >= 0 {
				t.Fatalf("prepared file is %d bytes and not all zeros", len(b))
			}
			recs = append(recs, appendRecords(t, l, len(recs), 20)...)
			recs = append(recs, rollOnce(t, l)...)
			if got := l.preparedRolls.Load(); got != 1 {
				t.Fatalf("%d rolls into prepared files, want 1", got)
			}
			checkRecordsAfterSync(t, l, recs)
			closeLog(t, l)
			l = openLog(t, cfg)
			checkRecords(t, l, recs)
		})
	}
}
