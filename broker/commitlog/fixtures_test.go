package commitlog

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

const testSegmentSize = 64 << 10

// testConfig is a sync-mode config with small segments, so that tests roll
// often, and a logger that keeps what was logged.
func testConfig(tb testing.TB, dir string) (Config, *logBuffer) {
	tb.Helper()
	logs := &logBuffer{}
	cfg := DefaultConfig(dir)
	cfg.SegmentSize = testSegmentSize
	cfg.MaxPayload = 16 << 10
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return cfg, logs
}

func openLog(tb testing.TB, cfg Config) *Log {
	tb.Helper()
	l, err := Open(cfg)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	return l
}

func closeLog(tb testing.TB, l *Log) {
	tb.Helper()
	if err := l.Close(); err != nil {
		tb.Fatalf("Close: %v", err)
	}
}

// payloadFor is record i's payload: varied lengths (some empty), content
// tied to i so that a misplaced read cannot pass.
func payloadFor(i int) []byte {
	if i%97 == 5 {
		return []byte{}
	}
	n := 20 + (i*131)%1500
	p := make([]byte, n)
	copy(p, fmt.Sprintf("record-%d|", i))
	for j := len(fmt.Sprintf("record-%d|", i)); j < n; j++ {
		p[j] = byte(i + j)
	}
	return p
}

type record struct {
	off     int64
	payload []byte
}

// appendRecords appends payloadFor(first..first+n-1) in batches of varying
// size and returns them with their offsets.
func appendRecords(tb testing.TB, l *Log, first, n int) []record {
	tb.Helper()
	var out []record
	for i := first; i < first+n; {
		batch := 1 + i%7
		if i+batch > first+n {
			batch = first + n - i
		}
		ps := make([][]byte, batch)
		for j := range ps {
			ps[j] = payloadFor(i + j)
		}
		offs, end, err := l.Append(ps)
		if err != nil {
			tb.Fatalf("Append records %d..%d: %v", i, i+batch-1, err)
		}
		if len(offs) != batch {
			tb.Fatalf("Append returned %d offsets for %d payloads", len(offs), batch)
		}
		if last := offs[batch-1] + headerSize + int64(len(ps[batch-1])); end != last {
			tb.Fatalf("Append end = %d, want %d", end, last)
		}
		for j := range ps {
			out = append(out, record{off: offs[j], payload: ps[j]})
		}
		i += batch
	}
	return out
}

// checkRecords reads every record back with ReadAt and checks that walking
// by next visits exactly these offsets, and that Scan from the first
// delivers exactly these records.
func checkRecords(tb testing.TB, l *Log, recs []record) {
	tb.Helper()
	var buf []byte
	for i, r := range recs {
		got, next, err := l.ReadAt(r.off, buf)
		if err != nil {
			tb.Fatalf("ReadAt(%d) record %d: %v", r.off, i, err)
		}
		if !bytes.Equal(got, r.payload) {
			tb.Fatalf("ReadAt(%d) record %d: payload differs (len %d, want %d)", r.off, i, len(got), len(r.payload))
		}
		if i+1 < len(recs) && next != recs[i+1].off {
			tb.Fatalf("ReadAt(%d) next = %d, want %d", r.off, next, recs[i+1].off)
		}
		buf = got
	}
	if len(recs) == 0 {
		return
	}
	got := scanAll(tb, l, recs[0].off)
	if len(got) != len(recs) {
		tb.Fatalf("Scan(%d) delivered %d records, want %d", recs[0].off, len(got), len(recs))
	}
	for i := range recs {
		if got[i].off != recs[i].off || !bytes.Equal(got[i].payload, recs[i].payload) {
			tb.Fatalf("Scan record %d at %d, want %d (or payload differs)", i, got[i].off, recs[i].off)
		}
	}
}

func scanAll(tb testing.TB, l *Log, from int64) []record {
	tb.Helper()
	var out []record
	next, err := l.Scan(from, func(off int64, p []byte) error {
		out = append(out, record{off: off, payload: bytes.Clone(p)})
		return nil
	})
	if err != nil {
		tb.Fatalf("Scan(%d): %v", from, err)
	}
	if c := l.Committed(); next != c {
		tb.Fatalf("Scan(%d) next = %d, want Committed %d", from, next, c)
	}
	return out
}

func segmentPath(dir string, base int64) string { return filepath.Join(dir, segmentName(base)) }

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// faultIO wraps the real file operations with switchable faults.
type faultIO struct {
	mu         sync.Mutex
	allocErr   error                                              // returned by allocate instead of preallocating
	writeFault func(f *os.File, b []byte, off int64) (int, error) // replaces writeAt when set
	syncFault  func() error                                       // runs before datasync; its error replaces it
	// zeroFault runs before each zeroAt of a file being prepared; its error
	// replaces the write. It may block, to hold a preparation.
	zeroFault func(f *os.File, off int64) error
	// zeroSyncFault runs before the fsync that ends a preparation; its
	// error replaces it. It may block.
	zeroSyncFault func(f *os.File) error
	zeroWrites    map[string]int64 // guarded by mu: bytes zeroAt wrote, by file base name
}

var _ segmentIO = (*faultIO)(nil)

func (fi *faultIO) allocate(f *os.File, size int64) error {
	fi.mu.Lock()
	err := fi.allocErr
	fi.mu.Unlock()
	if err != nil {
		return err
	}
	return osIO{}.allocate(f, size)
}

func (fi *faultIO) writeAt(f *os.File, b []byte, off int64) (int, error) {
	fi.mu.Lock()
	w := fi.writeFault
	fi.mu.Unlock()
	if w != nil {
		return w(f, b, off)
	}
	return osIO{}.writeAt(f, b, off)
}

func (fi *faultIO) datasync(f *os.File) error {
	fi.mu.Lock()
	s := fi.syncFault
	fi.mu.Unlock()
	if s != nil {
		if err := s(); err != nil {
			return err
		}
	}
	return osIO{}.datasync(f)
}

func (fi *faultIO) zeroAt(f *os.File, b []byte, off int64) error {
	fi.mu.Lock()
	z := fi.zeroFault
	fi.mu.Unlock()
	if z != nil {
		if err := z(f, off); err != nil {
			return err
		}
	}
	if err := (osIO{}).zeroAt(f, b, off); err != nil {
		return err
	}
	fi.mu.Lock()
	if fi.zeroWrites == nil {
		fi.zeroWrites = make(map[string]int64)
	}
	fi.zeroWrites[filepath.Base(f.Name())] += int64(len(b))
	fi.mu.Unlock()
	return nil
}

func (fi *faultIO) syncZeroed(f *os.File) error {
	fi.mu.Lock()
	s := fi.zeroSyncFault
	fi.mu.Unlock()
	if s != nil {
		if err := s(f); err != nil {
			return err
		}
	}
	return osIO{}.syncZeroed(f)
}

// zeroed reports how many bytes of zeros were written to the file named
// name (a base name) while it was being prepared.
func (fi *faultIO) zeroed(name string) int64 {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	return fi.zeroWrites[name]
}

func (fi *faultIO) set(fn func(fi *faultIO)) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	fn(fi)
}

var errInjected = errors.New("injected I/O error")
