package meta

import (
	"context"
	"errors"
	"flag"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

var benchMetaMB = flag.Int("meta.bench-mb", 64, "size in MiB of the database BenchmarkOpenQuickCheck opens")

// FillTimers adds n pending timers (log offsets from, from+1, ...) in one
// transaction, SQL-side, to grow a database quickly.
func fillTimers(tb testing.TB, s *Store, from int64, n int) {
	tb.Helper()
	err := s.write(context.Background(), func(tx Tx) error {
		_, err := tx.ExecContext(context.Background(), `INSERT INTO timers (log_offset, deliver_at, fired, owner)
			WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x + 1 < ?)
			SELECT ? + x, ? + x, 0, 'topic-' || (x % 7) FROM c`, n, from, time.Now().Add(time.Hour).UnixMilli())
		return err
	})
	if err != nil {
		tb.Fatalf("fill timers: %v", err)
	}
}

// damage writes random bytes over [off, off+size) of the file at path, as
// a misdirected write or a bad disk block would. The seed is logged on
// failure.
func damage(tb testing.TB, path string, off, size int64, seed uint64) {
	tb.Helper()
	junk := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range junk {
		junk[i] = byte(r.Uint32())
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(junk, off); err != nil {
		tb.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("damage seed %d: %d bytes at %d of %s", seed, size, off, path)
		}
	})
}

func walSize(path string) int64 {
	fi, err := os.Stat(path + "-wal")
	if err != nil {
		return 0
	}
	return fi.Size()
}

func fileSize(tb testing.TB, path string) int64 {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Size()
}

// A database damaged while the broker was stopped opens in SQLite and
// serves its whole pages, while every write touching a bad page fails
// (S4-5): Open must find it and refuse with ErrCorrupt.
func TestOpenRefusesDamagedDatabase(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(tb testing.TB, path string, seed uint64)
	}{
		{"8KiB garbage at the middle", func(tb testing.TB, path string, seed uint64) {
			damage(tb, path, fileSize(tb, path)/2, 8<<10, seed)
		}},
		{"one page garbage near the end", func(tb testing.TB, path string, seed uint64) {
			damage(tb, path, fileSize(tb, path)-8<<10, 4<<10, seed)
		}},
		{"header garbage", func(tb testing.TB, path string, seed uint64) {
			damage(tb, path, 0, 100, seed)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for seed := uint64(1); seed <= 3; seed++ {
				path := dbPath(t)
				s := openStore(t, path)
				fillTimers(t, s, 0, 20000)
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				tc.damage(t, path, seed)
				s2, err := Open(context.Background(), path, quietOptions()...)
				if err == nil {
					s2.Close()
					t.Fatalf("seed %d: Open of a damaged database succeeded", seed)
				}
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("seed %d: Open: %v, want ErrCorrupt", seed, err)
				}
			}
		})
	}
}

// Damage that appears while the store is open (a disk going bad under
// it) is met by a read or write: that error is ErrCorrupt, and Corrupt
// keeps it for the broker's readiness.
func TestCorruptionAtRunTimeIsKept(t *testing.T) {
	const seed = 7
	path := dbPath(t)
	s := openStore(t, path)
	fillTimers(t, s, 0, 200000)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path)
	if err := s.Corrupt(); err != nil {
		t.Fatalf("Corrupt before any damage: %v", err)
	}
	// Every page after the header: the readers' caches are cold, so the
	// next read of the timers goes to the file.
	size := fileSize(t, path)
	damage(t, path, 4096, size-4096, seed)
	_, err := s.PendingTimers(context.Background())
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("PendingTimers on a damaged file: %v, want ErrCorrupt", err)
	}
	if err := s.Corrupt(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Corrupt after a damaged read: %v, want ErrCorrupt", err)
	}
}

// BenchmarkOpenQuickCheck measures Open (with its quick_check) of a
// database of -meta.bench-mb MiB of timers: the cost every start pays.
func BenchmarkOpenQuickCheck(b *testing.B) {
	path := dbPath(b)
	s := openStore(b, path)
	for walked := int64(0); walked < int64(*benchMetaMB)<<20; walked = fileSize(b, path) + walSize(path) {
		n, _ := s.PendingTimers(context.Background())
		fillTimers(b, s, n, 100000)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(fileSize(b, path))
	for b.Loop() {
		s, err := Open(context.Background(), path, quietOptions()...)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// A file over the check limit opens unchecked, and Check (which the
// broker runs in the background) finds the damage and keeps it.
func TestCheckFindsDamageOfALargeFile(t *testing.T) {
	const seed = 11
	path := dbPath(t)
	s := openStore(t, path)
	fillTimers(t, s, 0, 20000)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	damage(t, path, fileSize(t, path)/2, 8<<10, seed)
	s = openStore(t, path, WithCheckLimit(4096))
	if s.Checked() {
		t.Fatal("Checked: true for a file over the limit")
	}
	if err := s.Check(context.Background()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Check: %v, want ErrCorrupt", err)
	}
	if err := s.Corrupt(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Corrupt after Check: %v, want ErrCorrupt", err)
	}
}
