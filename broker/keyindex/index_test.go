package keyindex

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openIndex(tb testing.TB, dir string, mem int) *Index {
	tb.Helper()
	x, err := Open(Config{Dir: dir, MemEntries: mem, Logger: quietLogger()})
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = x.Close() })
	return x
}

// model is the reference: every (hash, offset) added, in order.
type model struct{ adds []rec }

func (m *model) add(x *Index, hash uint64, off int64) {
	x.Add(hash, off)
	m.adds = append(m.adds, rec{hash, off})
}

// want is what Lookup must report for hash: offsets newest first, a repeated
// offset once, those >= below dropped.
func (m *model) want(hash uint64, below int64) []int64 {
	var out []int64
	for i := len(m.adds) - 1; i >= 0; i-- {
		r := m.adds[i]
		if r.hash == hash && r.off < below && (len(out) == 0 || out[len(out)-1] != r.off) {
			out = append(out, r.off)
		}
	}
	return out
}

func lookupAll(tb testing.TB, x *Index, hash uint64) []int64 {
	tb.Helper()
	var got []int64
	if err := x.Lookup(hash, func(off int64) bool { got = append(got, off); return true }); err != nil {
		tb.Fatalf("Lookup(%#x): %v", hash, err)
	}
	return got
}

func checkAll(tb testing.TB, x *Index, m *model, hashes []uint64, below int64) {
	tb.Helper()
	for _, h := range hashes {
		if got, want := lookupAll(tb, x, h), m.want(h, below); !slices.Equal(got, want) {
			tb.Fatalf("Lookup(%#x) = %v, want %v", h, got, want)
		}
	}
}

// fill adds n messages from offset start, 100 apart; message i is indexed
// under its own id hash and under key hash i%keys (a multi-valued hash).
func fill(x *Index, m *model, start, n int64, keys uint64) {
	for i := start; i < start+n; i++ {
		off := 1000 + 100*i
		m.add(x, idHash(i), off)
		m.add(x, keyHash(uint64(i)%keys), off)
	}
}

func idHash(i int64) uint64   { return uint64(i)*0x9e3779b97f4a7c15 | 1 }
func keyHash(k uint64) uint64 { return k << 1 } // even, never an id hash

func hashesFor(n int64, keys uint64) []uint64 {
	hs := []uint64{0xdead << 1}
	for i := range n {
		hs = append(hs, idHash(i))
	}
	for k := range keys {
		hs = append(hs, keyHash(k))
	}
	return hs
}

func sealedFiles(tb testing.TB, dir string) []string {
	tb.Helper()
	ms, err := filepath.Glob(filepath.Join(dir, "*.idx"))
	if err != nil {
		tb.Fatal(err)
	}
	return ms
}

func TestAddLookupAcrossSeals(t *testing.T) {
	for _, tc := range []struct {
		name string
		mem  int
		n    int64
		keys uint64
	}{
		{"mem=10/n=45/keys=3", 10, 45, 3},
		{"mem=1/n=5/keys=2", 1, 5, 2},
		{"mem=1000/n=1500/keys=1", 1000, 1500, 1},   // one run crossing blocks
		{"mem=600/n=2000/keys=7", 600, 2000, 7},     // runs crossing blocks and files
		{"mem=100000/n=300/keys=5", 100000, 300, 5}, // never sealed
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := openIndex(t, t.TempDir(), tc.mem)
			m := &model{}
			fill(x, m, 0, tc.n, tc.keys)
			wantFiles := int(2 * tc.n / int64(tc.mem))
			if st := x.Stats(); st.SealedFiles != wantFiles || st.Entries != 2*tc.n {
				t.Fatalf("Stats = %+v, want %d sealed files, %d entries", st, wantFiles, 2*tc.n)
			}
			checkAll(t, x, m, hashesFor(tc.n, tc.keys), 1<<62)
		})
	}
}

func TestLookupStops(t *testing.T) {
	x := openIndex(t, t.TempDir(), 8)
	m := &model{}
	fill(x, m, 0, 40, 2)
	want := m.want(keyHash(1), 1<<62)
	for _, n := range []int{1, 3, 4, 5, len(want)} {
		t.Run(fmt.Sprintf("after=%d", n), func(t *testing.T) {
			var got []int64
			err := x.Lookup(keyHash(1), func(off int64) bool {
				got = append(got, off)
				return len(got) < n
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want[:n]) {
				t.Fatalf("got %v, want %v", got, want[:n])
			}
		})
	}
}

func TestDuplicateOffsetsReportedOnce(t *testing.T) {
	x := openIndex(t, t.TempDir(), 3)
	// One message with the same key twice, and an id equal to a key.
	for _, off := range []int64{10, 10, 20, 20, 20, 30} {
		x.Add(7, off)
	}
	if got, want := lookupAll(t, x, 7), []int64{30, 20, 10}; !slices.Equal(got, want) {
		t.Fatalf("Lookup = %v, want %v", got, want)
	}
}

func TestDecreasingOffsetDropped(t *testing.T) {
	dir := t.TempDir()
	x := openIndex(t, dir, 4)
	x.Add(1, 100)
	x.Add(2, 50)
	x.Add(1, -1)
	x.Add(1, 100)
	if got := x.Stats().Dropped; got != 2 {
		t.Fatalf("Dropped = %d, want 2", got)
	}
	if got := lookupAll(t, x, 2); len(got) != 0 {
		t.Fatalf("Lookup(2) = %v, want none", got)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	x = openIndex(t, dir, 4)
	// The order holds across a reopen too.
	x.Add(3, 99)
	if got := lookupAll(t, x, 3); len(got) != 0 {
		t.Fatalf("Lookup(3) = %v, want none", got)
	}
}

func TestReopen(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mem    int
		n      int64
		reopen int // MemEntries after reopen
	}{
		{"sealed-and-active", 16, 50, 16},
		{"active-only", 1000, 50, 1000},
		{"sealed-only", 10, 25, 10},
		{"smaller-mem-seals-on-open", 1000, 50, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			x := openIndex(t, dir, tc.mem)
			m := &model{}
			fill(x, m, 0, tc.n, 3)
			if err := x.Flush(); err != nil {
				t.Fatal(err)
			}
			before := x.Stats()
			// No Close: a crash after Flush.
			x2 := openIndex(t, dir, tc.reopen)
			if st := x2.Stats(); st.Entries != before.Entries {
				t.Fatalf("entries after reopen = %d, want %d", st.Entries, before.Entries)
			}
			checkAll(t, x2, m, hashesFor(tc.n, 3), 1<<62)
			// And it goes on.
			fill(x2, m, tc.n, 30, 3)
			if err := x2.Close(); err != nil {
				t.Fatal(err)
			}
			x3 := openIndex(t, dir, tc.reopen)
			checkAll(t, x3, m, hashesFor(tc.n+30, 3), 1<<62)
		})
	}
}

func TestTruncateFrom(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cut       int64 // first message removed
		wantFiles int
	}{
		{"active-only", 52, 5}, // mem 20 = 10 messages per file; 50..54 active
		{"active-start", 50, 5},
		{"straddling-sealed", 25, 3},
		{"sealed-boundary", 20, 2},
		{"all", 0, 0},
		{"nothing", 60, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			x := openIndex(t, dir, 20)
			m := &model{}
			fill(x, m, 0, 55, 4)
			logOff := 1000 + 100*tc.cut
			if err := x.TruncateFrom(logOff); err != nil {
				t.Fatal(err)
			}
			hashes := hashesFor(60, 4)
			checkAll(t, x, m, hashes, logOff)
			if got := len(sealedFiles(t, dir)); got != tc.wantFiles {
				t.Fatalf("sealed files = %d, want %d", got, tc.wantFiles)
			}
			// Re-dispatch from the cut: the index equals one built in one go.
			m.adds = slices.DeleteFunc(m.adds, func(r rec) bool { return r.off >= logOff })
			from := min(tc.cut, 55)
			fill(x, m, from, 60-from, 4)
			checkAll(t, x, m, hashes, 1<<62)
			if err := x.Close(); err != nil {
				t.Fatal(err)
			}
			x = openIndex(t, dir, 20)
			checkAll(t, x, m, hashes, 1<<62)
			if st := x.Stats(); st.Entries != 120 {
				t.Fatalf("entries = %d, want 120", st.Entries)
			}
		})
	}
}

func TestTruncateThenCrash(t *testing.T) {
	dir := t.TempDir()
	x := openIndex(t, dir, 20)
	m := &model{}
	fill(x, m, 0, 35, 4)
	logOff := int64(1000 + 100*15)
	if err := x.TruncateFrom(logOff); err != nil {
		t.Fatal(err)
	}
	// No Flush, no Close: the truncation itself must be durable.
	x2 := openIndex(t, dir, 20)
	checkAll(t, x2, m, hashesFor(35, 4), logOff)
}

func TestDropBefore(t *testing.T) {
	dir := t.TempDir()
	x := openIndex(t, dir, 20)
	m := &model{}
	fill(x, m, 0, 55, 4) // 5 sealed files of 10 messages, 5 messages active
	if err := x.DropBefore(1000 + 100*25); err != nil {
		t.Fatal(err)
	}
	// Files [0,10) and [10,20) are dead; [20,30) straddles and stays.
	if got := x.Stats().SealedFiles; got != 3 {
		t.Fatalf("sealed files = %d, want 3", got)
	}
	if got := len(sealedFiles(t, dir)); got != 3 {
		t.Fatalf("sealed files on disk = %d, want 3", got)
	}
	for i := int64(0); i < 55; i++ {
		got := lookupAll(t, x, idHash(i))
		if want := i >= 20; (len(got) == 1) != want {
			t.Fatalf("Lookup(id %d) = %v, want found=%v", i, got, want)
		}
	}
	got := lookupAll(t, x, keyHash(0))
	if last := got[len(got)-1]; last != 1000+100*20 {
		t.Fatalf("oldest key offset = %d, want %d", last, 1000+100*20)
	}
	if err := x.DropBefore(1 << 62); err != nil {
		t.Fatal(err)
	}
	if st := x.Stats(); st.SealedFiles != 0 || st.Entries != 10 {
		t.Fatalf("Stats = %+v, want only the 10 active entries", st)
	}
}

func TestCorruptSealedFile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(b []byte) []byte
	}{
		{"flip-entry-bit", func(b []byte) []byte { b[37] ^= 0x10; return b }},
		{"flip-footer-bit", func(b []byte) []byte { b[len(b)-9] ^= 1; return b }},
		{"flip-reserved-bit", func(b []byte) []byte { b[len(b)-8] ^= 1; return b }}, // only the crc covers it
		{"flip-crc-bit", func(b []byte) []byte { b[len(b)-1] ^= 1; return b }},
		{"truncated", func(b []byte) []byte { return b[:len(b)-3] }},
		{"cut-whole-entry", func(b []byte) []byte { return append(b[:16:16], b[32:]...) }},
		{"zeroed", func(b []byte) []byte { clear(b); return b }},
		{"empty", func(b []byte) []byte { return b[:0] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			x := openIndex(t, dir, 10)
			m := &model{}
			fill(x, m, 0, 12, 2)
			if err := x.Close(); err != nil {
				t.Fatal(err)
			}
			files := sealedFiles(t, dir)
			if len(files) != 2 {
				t.Fatalf("sealed files = %v", files)
			}
			b, err := os.ReadFile(files[1])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(files[1], tc.damage(b), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = Open(Config{Dir: dir, MemEntries: 10, Logger: quietLogger()})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), filepath.Base(files[1])) {
				t.Fatalf("error %q does not name %s", err, filepath.Base(files[1]))
			}
		})
	}
}

func TestTornLogTail(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(b []byte) []byte
		keep   int // records kept of 7
	}{
		{"partial-record", func(b []byte) []byte { return b[:len(b)-7] }, 6},
		{"zero-tail", func(b []byte) []byte { clear(b[5*logRecSize:]); return b }, 5},
		{"zero-extension", func(b []byte) []byte { return append(b, make([]byte, 3*logRecSize)...) }, 7},
		{"bad-crc-mid", func(b []byte) []byte { b[3*logRecSize+2] ^= 4; return b }, 3},
		{"decreasing-offset", func(b []byte) []byte {
			copy(b[6*logRecSize:], appendLogRec(nil, 1, 5))
			return b
		}, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			x := openIndex(t, dir, 100)
			m := &model{}
			for i := range int64(7) {
				m.add(x, 1, 1000+i)
			}
			if err := x.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, seqName(0, ".log"))
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tc.damage(b), 0o644); err != nil {
				t.Fatal(err)
			}
			x = openIndex(t, dir, 100)
			m.adds = m.adds[:tc.keep]
			checkAll(t, x, m, []uint64{1}, 1<<62)
			if info, err := os.Stat(path); err != nil || info.Size() != int64(tc.keep)*logRecSize {
				t.Fatalf("log after open: %v, %v; want %d bytes", info.Size(), err, tc.keep*logRecSize)
			}
			// New adds follow the good prefix and survive a reopen.
			m.add(x, 1, 2000)
			if err := x.Close(); err != nil {
				t.Fatal(err)
			}
			x = openIndex(t, dir, 100)
			checkAll(t, x, m, []uint64{1}, 1<<62)
		})
	}
}

func TestOpenAfterInterruptedSeal(t *testing.T) {
	// Build the pieces of a seal of log 0 by hand, then combine them as a
	// crash at each step would leave them.
	src := t.TempDir()
	x := openIndex(t, src, 10)
	m := &model{}
	fill(x, m, 0, 4, 2) // 8 entries, active only
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	logBytes, err := os.ReadFile(filepath.Join(src, seqName(0, ".log")))
	if err != nil {
		t.Fatal(err)
	}
	recs := slices.Clone(m.adds)
	sortRecs(recs)
	var idx bytes.Buffer
	if err := encodeSealed(&idx, recs); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		files     map[string][]byte
		wantFiles int
	}{
		{"tmp-only", map[string][]byte{seqName(0, ".log"): logBytes, seqName(0, ".idx.tmp"): idx.Bytes()[:50]}, 0},
		{"renamed-log-kept", map[string][]byte{seqName(0, ".log"): logBytes, seqName(0, ".idx"): idx.Bytes()}, 1},
		{"new-log-created", map[string][]byte{seqName(0, ".log"): logBytes, seqName(0, ".idx"): idx.Bytes(), seqName(1, ".log"): nil}, 1},
		{"empty-newer-log", map[string][]byte{seqName(0, ".log"): logBytes, seqName(1, ".log"): nil}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, b := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			x := openIndex(t, dir, 10)
			checkAll(t, x, m, hashesFor(4, 2), 1<<62)
			if st := x.Stats(); st.Entries != 8 || st.SealedFiles != tc.wantFiles {
				t.Fatalf("Stats = %+v, want 8 entries in %d sealed files", st, tc.wantFiles)
			}
			fill(x, m, 4, 10, 2)
			if err := x.Close(); err != nil {
				t.Fatal(err)
			}
			x = openIndex(t, dir, 10)
			checkAll(t, x, m, hashesFor(14, 2), 1<<62)
			m.adds = m.adds[:8]
		})
	}
	t.Run("two-unsealed-logs", func(t *testing.T) {
		dir := t.TempDir()
		for _, name := range []string{seqName(0, ".log"), seqName(1, ".log")} {
			if err := os.WriteFile(filepath.Join(dir, name), logBytes, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := Open(Config{Dir: dir, Logger: quietLogger()}); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open = %v, want ErrCorrupt", err)
		}
	})
}

func TestConcurrentLookupsDuringAddsAndSeals(t *testing.T) {
	const n, mem = 2000, 100
	x := openIndex(t, t.TempDir(), mem)
	var added atomic.Int64 // messages [0, added) are indexed
	var done atomic.Bool
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !done.Load(); i++ {
				hi := added.Load()
				if hi == 0 {
					continue
				}
				msg := int64(i*31+r) % hi
				var got []int64
				if err := x.Lookup(idHash(msg), func(off int64) bool { got = append(got, off); return true }); err != nil {
					errc <- err
					return
				}
				if len(got) != 1 || got[0] != 1000+100*msg {
					errc <- fmt.Errorf("Lookup(id %d) = %v", msg, got)
					return
				}
				// Key chains must come newest first, whatever is sealed meanwhile.
				got = got[:0]
				if err := x.Lookup(keyHash(uint64(msg%3)), func(off int64) bool { got = append(got, off); return true }); err != nil {
					errc <- err
					return
				}
				if !slices.IsSortedFunc(got, func(a, b int64) int { return cmp.Compare(b, a) }) || len(got) < int(hi/3) {
					errc <- fmt.Errorf("key lookup after %d messages = %d offsets, not newest first or short", hi, len(got))
					return
				}
			}
		}()
	}
	m := &model{}
	for i := int64(0); i < n; i++ {
		fill(x, m, i, 1, 3)
		added.Store(i + 1)
		if i%500 == 499 {
			if err := x.Flush(); err != nil {
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
	if st := x.Stats(); st.SealedFiles != 2*n/mem {
		t.Fatalf("sealed files = %d, want %d", st.SealedFiles, 2*n/mem)
	}
}

func TestClosed(t *testing.T) {
	x := openIndex(t, t.TempDir(), 10)
	x.Add(1, 1)
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for name, err := range map[string]error{
		"Lookup":       x.Lookup(1, func(int64) bool { return true }),
		"Flush":        x.Flush(),
		"TruncateFrom": x.TruncateFrom(0),
		"DropBefore":   x.DropBefore(0),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
	x.Add(2, 2) // must not panic
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", DefaultConfig("x"), true},
		{"no-dir", Config{MemEntries: 1}, false},
		{"negative-mem", Config{Dir: "x", MemEntries: -1}, false},
		{"huge-mem", Config{Dir: "x", MemEntries: maxMemEntries + 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
