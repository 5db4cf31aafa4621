package commitlog

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// benchConfig uses 64 MiB segments; appending benchmarks drop sealed ones as
// they go, as retention would, so that disk use stays bounded.
func benchConfig(tb testing.TB, syncMode bool) Config {
	tb.Helper()
	cfg := DefaultConfig(tb.TempDir())
	cfg.SegmentSize = 64 << 20
	cfg.Sync = syncMode
	return cfg
}

func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{256, 4096} {
		for _, batch := range []int{1, 16, 100} {
			for _, mode := range []string{"none", "group"} {
				name := fmt.Sprintf("size=%d/batch=%d/sync=%s", size, batch, mode)
				b.Run(name, func(b *testing.B) { benchAppend(b, size, batch, mode == "group") })
			}
		}
	}
}

func benchAppend(b *testing.B, size, batch int, group bool) {
	l, err := Open(benchConfig(b, group))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	payloads := make([][]byte, batch)
	for i := range payloads {
		payloads[i] = make([]byte, size)
		for j := range payloads[i] {
			payloads[i][j] = byte(i + j)
		}
	}
	b.ReportAllocs()
	b.SetBytes(int64(size * batch))
	b.ResetTimer()
	start := time.Now()
	if !group {
		for i := 0; b.Loop(); i++ {
			if _, _, err := l.Append(payloads); err != nil {
				b.Fatal(err)
			}
			if i%1024 == 1023 {
				if _, err := l.DropBefore(l.Committed()); err != nil {
					b.Fatal(err)
				}
			}
		}
	} else {
		// 64 writers on this machine's cores, each waiting for its own
		// records to be durable: the shape group commit is for.
		b.SetParallelism(max(1, 64/runtimeProcs()))
		ctx := context.Background()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				_, end, err := l.Append(payloads)
				if err == nil {
					err = l.Sync(ctx, end)
				}
				if err != nil {
					b.Error(err)
					return
				}
				if i++; i%1024 == 0 {
					if _, err := l.DropBefore(l.Committed()); err != nil {
						b.Error(err)
						return
					}
				}
			}
		})
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N*batch)/elapsed.Seconds(), "records/s")
	// Rolls that found the next segment not zero-filled in time: appends
	// into those segments take the slow path.
	b.ReportMetric(float64(l.directRolls.Load()), "unprepared-rolls")
	if group {
		syncs := float64(max(1, l.syncs.Load()))
		b.ReportMetric(float64(b.N)/syncs, "appends/fsync")
		// The machine's fsync latency, to read records/s against.
		b.ReportMetric(float64(elapsed.Microseconds())/syncs, "µs/fsync")
	}
}

// fillLog appends n records of size bytes in batches of 100 and syncs.
func fillLog(b *testing.B, l *Log, n, size int) []int64 {
	b.Helper()
	p := make([]byte, size)
	batch := make([][]byte, 100)
	for i := range batch {
		batch[i] = p
	}
	var offs []int64
	var end int64
	for len(offs) < n {
		o, e, err := l.Append(batch[:min(100, n-len(offs))])
		if err != nil {
			b.Fatal(err)
		}
		offs, end = append(offs, o...), e
	}
	if err := l.Sync(context.Background(), end); err != nil {
		b.Fatal(err)
	}
	return offs
}

func BenchmarkRead(b *testing.B) {
	for _, size := range []int{256, 4096} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			l, err := Open(benchConfig(b, true))
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			offs := fillLog(b, l, 100_000, size)
			buf := make([]byte, 0, size)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for i := 0; b.Loop(); i++ {
				// A stride through the log rather than a sequential walk.
				off := offs[(i*7919)%len(offs)]
				p, _, err := l.ReadAt(off, buf)
				if err != nil || len(p) != size {
					b.Fatalf("ReadAt(%d) = %d bytes, %v", off, len(p), err)
				}
			}
		})
	}
}

func BenchmarkScan(b *testing.B) {
	for _, size := range []int{256, 4096} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			l, err := Open(benchConfig(b, true))
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			const n = 100_000
			fillLog(b, l, n, size)
			b.ReportAllocs()
			b.SetBytes(int64(n * size))
			start := time.Now()
			for b.Loop() {
				count := 0
				if _, err := l.Scan(0, func(int64, []byte) error { count++; return nil }); err != nil || count != n {
					b.Fatalf("Scan delivered %d, %v", count, err)
				}
			}
			b.ReportMetric(float64(b.N*n)/time.Since(start).Seconds(), "records/s")
		})
	}
}

// BenchmarkRecover times Open of a log whose last segment is 128 MiB: empty
// (the cost of zeroing the tail) or full of 256-byte frames (the recovery
// scan of a whole segment).
func BenchmarkRecover(b *testing.B) {
	for _, fill := range []string{"empty", "full"} {
		b.Run("segment=128MiB/fill="+fill, func(b *testing.B) {
			cfg := DefaultConfig(b.TempDir())
			l, err := Open(cfg)
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			if fill == "full" {
				n = int(cfg.SegmentSize/(headerSize+256)) - 1
				fillLog(b, l, n, 256)
			}
			if err := l.Close(); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(n) * (headerSize + 256))
			for b.Loop() {
				l, err := Open(cfg)
				if err != nil {
					b.Fatal(err)
				}
				if got := l.Committed(); got != int64(n)*(headerSize+256) {
					b.Fatalf("recovered to %d", got)
				}
				if err := l.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
