package consumequeue

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// entryAt is the entry the tests store at queue offset i: commitlog offsets
// 100 apart starting at 1000, so offset 1000+100*i belongs to entry i.
func entryAt(i int64) Entry {
	return Entry{Offset: 1000 + 100*i, Size: int32(50 + i%7), TagHash: uint64(i) * 0x9e3779b97f4a7c15}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openStore(tb testing.TB, dir string, perFile int64) *Store {
	tb.Helper()
	s, err := Open(Config{Dir: dir, EntriesPerFile: perFile, Logger: quietLogger()})
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func appendN(tb testing.TB, s *Store, topic string, queue int, from, to int64) {
	tb.Helper()
	for i := from; i < to; i++ {
		if err := s.Append(topic, queue, i, entryAt(i)); err != nil {
			tb.Fatalf("Append(%s, %d, %d): %v", topic, queue, i, err)
		}
	}
}

// checkRange reads [from, to) in chunks of n and compares with entryAt.
func checkRange(tb testing.TB, s *Store, topic string, queue int, from, to int64, n int) {
	tb.Helper()
	var got []Entry
	for i := from; i < to; {
		es, err := s.Read(topic, queue, i, n, got[:0])
		if err != nil {
			tb.Fatalf("Read(%s, %d, %d, %d): %v", topic, queue, i, n, err)
		}
		if len(es) == 0 {
			tb.Fatalf("Read(%s, %d, %d, %d): no entries, want up to %d", topic, queue, i, n, to)
		}
		for j, e := range es {
			if want := entryAt(i + int64(j)); e != want {
				tb.Fatalf("entry %d = %+v, want %+v", i+int64(j), e, want)
			}
		}
		i += int64(len(es))
		got = es
	}
	if es, err := s.Read(topic, queue, to, n, nil); err != nil || len(es) != 0 {
		tb.Fatalf("Read at max %d = %d entries, %v; want none", to, len(es), err)
	}
}

func checkBounds(tb testing.TB, s *Store, topic string, queue int, wantMin, wantMax int64) {
	tb.Helper()
	if lo, hi := s.Bounds(topic, queue); lo != wantMin || hi != wantMax {
		tb.Fatalf("Bounds(%s, %d) = [%d, %d), want [%d, %d)", topic, queue, lo, hi, wantMin, wantMax)
	}
}

func queueFiles(tb testing.TB, dir, topic string, queue int) []string {
	tb.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, topic, fmt.Sprint(queue)))
	if err != nil {
		tb.Fatalf("ReadDir: %v", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestAppendReadAcrossFiles(t *testing.T) {
	for _, tc := range []struct {
		name    string
		perFile int64
		n       int64
		chunk   int
		flush   bool
	}{
		{"perFile=7/n=50/chunk=3/buffered", 7, 50, 3, false},
		{"perFile=7/n=50/chunk=32/flushed", 7, 50, 32, true},
		{"perFile=1/n=10/chunk=4/flushed", 1, 10, 4, true},
		{"perFile=1000/n=600/chunk=1000/flushed", 1000, 600, 1000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, tc.perFile)
			appendN(t, s, "orders", 3, 0, tc.n)
			if tc.flush {
				if err := s.Flush(); err != nil {
					t.Fatal(err)
				}
				files := queueFiles(t, dir, "orders", 3)
				if want := int((tc.n + tc.perFile - 1) / tc.perFile); len(files) != want {
					t.Fatalf("files = %v, want %d files", files, want)
				}
				if files[1%len(files)] != fileName(tc.perFile*int64(1%len(files))) {
					t.Fatalf("files = %v, want names = first entry index", files)
				}
			}
			checkBounds(t, s, "orders", 3, 0, tc.n)
			checkRange(t, s, "orders", 3, 0, tc.n, tc.chunk)
			checkRange(t, s, "orders", 3, tc.n/2, tc.n, tc.chunk)
		})
	}
}

func TestReopenAfterFlush(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 10)
	appendN(t, s, "a", 0, 0, 35)
	appendN(t, s, "a", 1, 0, 3)
	appendN(t, s, "%RETRY%g", 0, 0, 12)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Append("a", 0, 35, entryAt(35)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}

	s = openStore(t, dir, 10)
	want := []QueueID{{"%RETRY%g", 0}, {"a", 0}, {"a", 1}}
	if got := s.Queues(); !slices.Equal(got, want) {
		t.Fatalf("Queues = %v, want %v", got, want)
	}
	checkBounds(t, s, "a", 0, 0, 35)
	checkRange(t, s, "a", 0, 0, 35, 8)
	checkRange(t, s, "a", 1, 0, 3, 8)
	checkRange(t, s, "%RETRY%g", 0, 0, 12, 8)
	// The queue continues where it stopped, in the partly filled file.
	appendN(t, s, "a", 0, 35, 41)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	checkRange(t, s, "a", 0, 0, 41, 64)
	if got := queueFiles(t, dir, "a", 0); len(got) != 5 {
		t.Fatalf("files = %v, want 5", got)
	}
	// Commitlog order is kept across reopen too.
	if err := s.Append("a", 0, 41, entryAt(40)); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("Append with an old commitlog offset after reopen: %v, want ErrOutOfOrder", err)
	}
}

func TestTruncateFrom(t *testing.T) {
	for _, tc := range []struct {
		name     string
		n        int64
		flushed  int64 // entries flushed before the rest is appended
		cut      int64 // first entry removed
		logOff   int64 // commitlog offset passed
		wantFile int
	}{
		{"mid-file", 40, 40, 25, entryAt(25).Offset, 3},
		{"between-records", 40, 40, 25, entryAt(24).Offset + 1, 3},
		{"at-file-start", 40, 40, 20, entryAt(20).Offset, 3}, // file 20 kept, empty
		{"across-files", 40, 40, 3, entryAt(3).Offset, 1},
		{"everything", 40, 40, 0, 0, 1},
		{"nothing", 40, 40, 40, entryAt(40).Offset, 5}, // file 40 kept, empty
		{"buffered-only", 40, 30, 35, entryAt(35).Offset, 4},
		{"buffered-and-disk", 40, 30, 22, entryAt(22).Offset, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, 10)
			appendN(t, s, "t", 0, 0, tc.flushed)
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			appendN(t, s, "t", 0, tc.flushed, tc.n)
			if err := s.TruncateFrom(tc.logOff); err != nil {
				t.Fatal(err)
			}
			checkBounds(t, s, "t", 0, 0, tc.cut)
			checkRange(t, s, "t", 0, 0, tc.cut, 7)
			// Re-dispatch from the cut, then reopen: the new entries follow the old.
			appendN(t, s, "t", 0, tc.cut, tc.n+5)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openStore(t, dir, 10)
			checkBounds(t, s, "t", 0, 0, tc.n+5)
			checkRange(t, s, "t", 0, 0, tc.n+5, 7)
			if err := s.TruncateFrom(tc.logOff); err != nil {
				t.Fatal(err)
			}
			if got := queueFiles(t, dir, "t", 0); len(got) != tc.wantFile {
				t.Fatalf("files after second truncate = %v, want %d", got, tc.wantFile)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openStore(t, dir, 10)
			checkBounds(t, s, "t", 0, 0, tc.cut)
		})
	}
}

func TestDropBefore(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 10)
	appendN(t, s, "t", 0, 0, 45)
	appendN(t, s, "u", 0, 0, 5)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	// Entries 0..22 are dead: files 0 and 10 go, file 20 stays with Min 23.
	if err := s.DropBefore(entryAt(23).Offset - 50); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, "t", 0, 23, 45)
	checkBounds(t, s, "u", 0, 5, 5) // every entry dead, Max kept
	if got, want := queueFiles(t, dir, "t", 0), []string{fileName(20), fileName(30), fileName(40)}; !slices.Equal(got, want) {
		t.Fatalf("files = %v, want %v", got, want)
	}
	if _, err := s.Read("t", 0, 22, 5, nil); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Read below Min: %v, want ErrOutOfRange", err)
	}
	checkRange(t, s, "t", 0, 23, 45, 4)
	// A smaller floor later never moves Min back.
	if err := s.DropBefore(0); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, "t", 0, 23, 45)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dir, 10)
	checkBounds(t, s, "t", 0, 23, 45)
	checkBounds(t, s, "u", 0, 5, 5)
	checkRange(t, s, "t", 0, 23, 45, 4)
	appendN(t, s, "u", 0, 5, 8)
	checkBounds(t, s, "u", 0, 5, 8)
	if err := s.DropBefore(entryAt(100).Offset); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, "t", 0, 45, 45)
	if got := queueFiles(t, dir, "t", 0); len(got) != 1 {
		t.Fatalf("files = %v, want the last one only", got)
	}
}

func TestDropBeforeFileReappearsAfterCrash(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 10)
	appendN(t, s, "t", 0, 0, 30)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "t", "0", fileName(0))
	saved, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DropBefore(entryAt(15).Offset); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The unlink was not dir-fsynced; simulate it being lost.
	if err := os.WriteFile(path, saved, 0o644); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, 10)
	checkBounds(t, s, "t", 0, 15, 30)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dead file after reopen: %v, want it deleted again", err)
	}
}

func TestAppendRefused(t *testing.T) {
	s := openStore(t, t.TempDir(), 10)
	appendN(t, s, "t", 0, 0, 5)
	for _, tc := range []struct {
		name  string
		topic string
		queue int
		qoff  int64
		e     Entry
		want  error
	}{
		{"gap", "t", 0, 6, entryAt(6), ErrOutOfOrder},
		{"repeat", "t", 0, 4, entryAt(4), ErrOutOfOrder},
		{"negative", "t", 0, -1, entryAt(5), ErrOutOfOrder},
		{"commitlog-offset-back", "t", 0, 5, entryAt(4), ErrOutOfOrder},
		{"commitlog-offset-same", "t", 0, 5, Entry{Offset: entryAt(4).Offset, Size: 1}, ErrOutOfOrder},
		{"zero-size", "t", 0, 5, Entry{Offset: entryAt(5).Offset}, ErrInvalidEntry},
		{"negative-offset", "t", 0, 5, Entry{Offset: -1, Size: 1}, ErrInvalidEntry},
		{"bad-topic-dot", ".hidden", 0, 0, entryAt(0), ErrInvalidTopic},
		{"bad-topic-slash", "a/b", 0, 0, entryAt(0), ErrInvalidTopic},
		{"bad-topic-empty", "", 0, 0, entryAt(0), ErrInvalidTopic},
		{"bad-queue", "t", -1, 0, entryAt(0), ErrInvalidQueue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Append(tc.topic, tc.queue, tc.qoff, tc.e); !errors.Is(err, tc.want) {
				t.Fatalf("Append = %v, want %v", err, tc.want)
			}
		})
	}
	checkBounds(t, s, "t", 0, 0, 5)
	checkRange(t, s, "t", 0, 0, 5, 10)
	if got := s.Queues(); !slices.Equal(got, []QueueID{{"t", 0}}) {
		t.Fatalf("Queues = %v, want only t/0", got)
	}
}

func TestAppendRestartsEmptyQueue(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 10)
	// A rebuilt queue starts where the commitlog's oldest message is.
	appendN(t, s, "t", 0, 1234, 1240)
	checkBounds(t, s, "t", 0, 1234, 1240)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, 10)
	checkBounds(t, s, "t", 0, 1234, 1240)
	checkRange(t, s, "t", 0, 1234, 1240, 3)
	if got := queueFiles(t, dir, "t", 0); !slices.Equal(got, []string{fileName(1234)}) {
		t.Fatalf("files = %v", got)
	}
	// A queue with live entries does not jump.
	if err := s.Append("t", 0, 1300, entryAt(1300)); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("jump on a live queue: %v, want ErrOutOfOrder", err)
	}
	// Once everything is dead it may.
	if err := s.DropBefore(entryAt(2000).Offset); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, "t", 0, 2000, 2003)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, 10)
	checkBounds(t, s, "t", 0, 2000, 2003)
	if got := queueFiles(t, dir, "t", 0); !slices.Equal(got, []string{fileName(2000)}) {
		t.Fatalf("files = %v", got)
	}
}

func TestReadBounds(t *testing.T) {
	s := openStore(t, t.TempDir(), 10)
	appendN(t, s, "t", 0, 0, 30)
	if err := s.DropBefore(entryAt(12).Offset); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		topic   string
		from    int64
		limit   int
		want    int
		wantErr error
	}{
		{"below-min", "t", 11, 5, 0, ErrOutOfRange},
		{"negative", "t", -1, 5, 0, ErrOutOfRange},
		{"at-min", "t", 12, 5, 5, nil},
		{"clipped-at-max", "t", 28, 5, 2, nil},
		{"at-max", "t", 30, 5, 0, nil},
		{"past-max", "t", 1 << 62, 5, 0, nil},
		{"zero-limit", "t", 12, 0, 0, nil},
		{"negative-limit", "t", 12, -3, 0, nil},
		{"huge-limit", "t", 12, 1 << 62, 18, nil},
		{"unknown-queue", "nope", 0, 5, 0, nil},
		{"unknown-queue-negative", "nope", -1, 5, 0, ErrOutOfRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []Entry{{Offset: 7, Size: 7}}
			got, err := s.Read(tc.topic, 0, tc.from, tc.limit, prefix)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if len(got) != 1+tc.want || got[0] != prefix[0] {
				t.Fatalf("got %d entries (%v), want dst kept plus %d", len(got), got, tc.want)
			}
		})
	}
	if lo, hi := s.Bounds("nope", 0); lo != 0 || hi != 0 {
		t.Fatalf("Bounds of unknown queue = %d, %d", lo, hi)
	}
}

func TestManyQueuesSmallLRU(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, EntriesPerFile: 4, MaxOpenFiles: 8, QueueBuffer: 3, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const topics, queues, n = 10, 4, 11 // 40 queues, 3 files each, 8 handles
	for round := int64(0); round < n; round++ {
		for tp := range topics {
			for q := range queues {
				if err := s.Append(fmt.Sprintf("topic-%d", tp), q, round, entryAt(round)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if got := s.Stats().OpenFiles; got > 8 {
		t.Fatalf("open files = %d, want <= 8", got)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	for tp := range topics {
		for q := range queues {
			checkRange(t, s, fmt.Sprintf("topic-%d", tp), q, 0, n, 5)
		}
	}
	st := s.Stats()
	if st.OpenFiles > 8 || st.Queues != topics*queues || st.BufferedEntries != 0 {
		t.Fatalf("Stats = %+v, want <= 8 files, %d queues, nothing buffered", st, topics*queues)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir, 4)
	if got := len(s2.Queues()); got != topics*queues {
		t.Fatalf("queues after reopen = %d", got)
	}
	checkRange(t, s2, "topic-9", 3, 0, n, 100)
}

func TestMaxBufferedSpills(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, EntriesPerFile: 100, MaxBuffered: 10, QueueBuffer: 1000, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := int64(0); i < 25; i++ {
		for q := range 3 {
			if err := s.Append("t", q, i, entryAt(i)); err != nil {
				t.Fatal(err)
			}
		}
		if got := s.Stats().BufferedEntries; got > 10 {
			t.Fatalf("buffered = %d, want <= 10", got)
		}
	}
	for q := range 3 {
		checkRange(t, s, "t", q, 0, 25, 9)
	}
}

func TestConcurrentReadersDuringAppends(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir(), EntriesPerFile: 50, MaxOpenFiles: 4, QueueBuffer: 16, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n, queues = 3000, 3
	var done atomic.Bool
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []Entry
			for i := 0; !done.Load(); i++ {
				q := (r + i) % queues
				lo, hi := s.Bounds("t", q)
				if hi == lo {
					continue
				}
				from := lo + int64(i*37)%(hi-lo)
				es, err := s.Read("t", q, from, 32, buf[:0])
				if err != nil && !errors.Is(err, ErrOutOfRange) {
					errc <- err
					return
				}
				for j, e := range es {
					if want := entryAt(from + int64(j)); e != want {
						errc <- fmt.Errorf("queue %d entry %d = %+v, want %+v", q, from+int64(j), e, want)
						return
					}
				}
				buf = es
			}
		}()
	}
	for i := int64(0); i < n; i++ {
		for q := range queues {
			if err := s.Append("t", q, i, entryAt(i)); err != nil {
				t.Fatal(err)
			}
		}
		switch {
		case i%500 == 499:
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
		case i == n/2:
			if err := s.DropBefore(entryAt(i / 3).Offset); err != nil {
				t.Fatal(err)
			}
		}
	}
	done.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

func TestSearchOffset(t *testing.T) {
	s := openStore(t, t.TempDir(), 10)
	appendN(t, s, "t", 0, 0, 40)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, "t", 0, 40, 45) // buffered tail
	if err := s.DropBefore(entryAt(5).Offset); err != nil {
		t.Fatal(err)
	}
	errBoom := errors.New("boom")
	atLeast := func(off int64) func(Entry) (bool, error) {
		return func(e Entry) (bool, error) { return e.Offset >= off, nil }
	}
	for _, tc := range []struct {
		name    string
		topic   string
		pred    func(Entry) (bool, error)
		want    int64
		wantErr error
	}{
		{"first-live", "t", atLeast(0), 5, nil},
		{"exact", "t", atLeast(entryAt(17).Offset), 17, nil},
		{"between", "t", atLeast(entryAt(17).Offset + 1), 18, nil},
		{"last-flushed", "t", atLeast(entryAt(39).Offset), 39, nil},
		{"buffered", "t", atLeast(entryAt(42).Offset), 42, nil},
		{"none", "t", atLeast(1 << 60), 45, nil},
		{"error", "t", func(Entry) (bool, error) { return false, errBoom }, 0, errBoom},
		{"unknown-queue", "nope", atLeast(0), 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.SearchOffset(tc.topic, 0, tc.pred)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Fatalf("SearchOffset = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestDeleteTopic(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 10)
	appendN(t, s, "gone", 0, 0, 25)
	appendN(t, s, "gone", 1, 0, 3)
	appendN(t, s, "kept", 0, 0, 3)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, "gone", 0, 25, 27) // buffered, must not reappear
	if err := s.DeleteTopic("gone"); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, "gone", 0, 0, 0)
	if es, err := s.Read("gone", 0, 0, 10, nil); err != nil || len(es) != 0 {
		t.Fatalf("Read deleted = %v, %v", es, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "gone")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("topic dir: %v, want removed", err)
	}
	if err := s.Flush(); err != nil {
		t.Fatalf("Flush after delete: %v", err)
	}
	// The name can be reused from offset 0.
	appendN(t, s, "gone", 0, 0, 2)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, 10)
	if got, want := s.Queues(), []QueueID{{"gone", 0}, {"kept", 0}}; !slices.Equal(got, want) {
		t.Fatalf("Queues = %v, want %v", got, want)
	}
	checkRange(t, s, "gone", 0, 0, 2, 10)
	if err := s.DeleteTopic("../x"); !errors.Is(err, ErrInvalidTopic) {
		t.Fatalf("DeleteTopic(../x) = %v, want ErrInvalidTopic", err)
	}
}

func TestOpenCutsCrashDamage(t *testing.T) {
	enc := func(es ...int64) []byte {
		var b []byte
		for _, i := range es {
			var buf [EntrySize]byte
			putEntry(buf[:], entryAt(i))
			b = append(b, buf[:]...)
		}
		return b
	}
	zeros := make([]byte, 3*EntrySize)
	for _, tc := range []struct {
		name      string
		files     map[int64][]byte
		wantMax   int64
		wantFiles []string
	}{
		{"torn-last-entry", map[int64][]byte{0: append(enc(0, 1, 2), enc(3)[:11]...)}, 3, []string{fileName(0)}},
		{"torn-in-second-file", map[int64][]byte{0: enc(0, 1, 2, 3), 4: append(enc(4), 9, 9)}, 5, []string{fileName(0), fileName(4)}},
		{"zero-filled-tail", map[int64][]byte{0: append(enc(0, 1), zeros...)}, 2, []string{fileName(0)}},
		{"zero-and-torn", map[int64][]byte{0: append(append(enc(0, 1), zeros...), 0, 0)}, 2, []string{fileName(0)}},
		{"all-zero", map[int64][]byte{0: zeros}, 0, []string{fileName(0)}},
		{"short-middle-file", map[int64][]byte{0: enc(0, 1, 2, 3), 4: enc(4, 5), 8: enc(8)}, 6, []string{fileName(0), fileName(4)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			qdir := filepath.Join(dir, "t", "0")
			if err := os.MkdirAll(qdir, 0o755); err != nil {
				t.Fatal(err)
			}
			for base, b := range tc.files {
				if err := os.WriteFile(filepath.Join(qdir, fileName(base)), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			s := openStore(t, dir, 4)
			checkBounds(t, s, "t", 0, 0, tc.wantMax)
			checkRange(t, s, "t", 0, 0, tc.wantMax, 10)
			if got := queueFiles(t, dir, "t", 0); !slices.Equal(got, tc.wantFiles) {
				t.Fatalf("files = %v, want %v", got, tc.wantFiles)
			}
			// Appending continues right after the last good entry.
			appendN(t, s, "t", 0, tc.wantMax, tc.wantMax+6)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openStore(t, dir, 4)
			checkRange(t, s, "t", 0, 0, tc.wantMax+6, 10)
		})
	}
}

func TestTruncateFromCutsHoleGarbage(t *testing.T) {
	// A crash during a Flush can persist a later page but not an earlier one;
	// the zeros in between lie past the checkpoint and must go with it.
	dir := t.TempDir()
	qdir := filepath.Join(dir, "t", "0")
	if err := os.MkdirAll(qdir, 0o755); err != nil {
		t.Fatal(err)
	}
	var b []byte
	for i := range int64(12) {
		var buf [EntrySize]byte
		if i < 5 || i >= 9 {
			putEntry(buf[:], entryAt(i))
		}
		b = append(b, buf[:]...)
	}
	if err := os.WriteFile(filepath.Join(qdir, fileName(0)), b, 0o644); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, dir, 100)
	checkBounds(t, s, "t", 0, 0, 12)
	if err := s.TruncateFrom(entryAt(5).Offset); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, "t", 0, 0, 5)
	checkRange(t, s, "t", 0, 0, 5, 10)
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", DefaultConfig("x"), true},
		{"no-dir", Config{EntriesPerFile: 1, MaxOpenFiles: 1, QueueBuffer: 1, MaxBuffered: 1}, false},
		{"negative-per-file", Config{Dir: "x", EntriesPerFile: -1, MaxOpenFiles: 1, QueueBuffer: 1, MaxBuffered: 1}, false},
		{"no-handles", Config{Dir: "x", EntriesPerFile: 1, MaxOpenFiles: 0, QueueBuffer: 1, MaxBuffered: 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// TestSetFloor: the floor is recorded (and kept across a reopen) without
// moving any queue until DropBefore or Open applies it, and never lowered.
func TestSetFloor(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, 10)
	appendN(t, s, "t", 0, 0, 30)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	floor := entryAt(12).Offset
	if err := s.SetFloor(floor); err != nil {
		t.Fatal(err)
	}
	if err := s.SetFloor(floor - 1); err != nil {
		t.Fatal(err)
	}
	if got := s.Floor(); got != floor {
		t.Fatalf("Floor() = %d, want %d (never lowered)", got, floor)
	}
	checkBounds(t, s, "t", 0, 0, 30)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, 10)
	if got := s.Floor(); got != floor {
		t.Fatalf("Floor() after reopen = %d, want %d", got, floor)
	}
	checkBounds(t, s, "t", 0, 12, 30)
}
