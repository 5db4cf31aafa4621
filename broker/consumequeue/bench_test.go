package consumequeue

import (
	"fmt"
	"testing"
)

// BenchmarkAppend measures one Append plus its share of a Flush (write and
// fsync) every batch entries, spread round-robin over queues.
func BenchmarkAppend(b *testing.B) {
	for _, queues := range []int{1, 64} {
		for _, batch := range []int{1, 64, 4096} {
			b.Run(fmt.Sprintf("queues=%d/flush-every=%d", queues, batch), func(b *testing.B) {
				s, err := Open(Config{Dir: b.TempDir(), Logger: quietLogger()})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				b.ReportAllocs()
				b.SetBytes(EntrySize)
				next := make([]int64, queues)
				i := 0
				for b.Loop() {
					q := i % queues
					if err := s.Append("bench", q, next[q], entryAt(next[q])); err != nil {
						b.Fatal(err)
					}
					next[q]++
					i++
					if i%batch == 0 {
						if err := s.Flush(); err != nil {
							b.Fatal(err)
						}
					}
				}
				if err := s.Flush(); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkRead measures a Read of 32 entries from the page cache (written
// and flushed) or from the write buffer.
func BenchmarkRead(b *testing.B) {
	const n = 100_000
	for _, where := range []string{"disk", "buffer"} {
		b.Run(fmt.Sprintf("entries=32/from=%s", where), func(b *testing.B) {
			s, err := Open(Config{Dir: b.TempDir(), EntriesPerFile: 30_000, QueueBuffer: n + 1, MaxBuffered: n + 1, Logger: quietLogger()})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			appendN(b, s, "bench", 0, 0, n)
			if where == "disk" {
				if err := s.Flush(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.SetBytes(32 * EntrySize)
			buf := make([]Entry, 0, 32)
			from := int64(0)
			for b.Loop() {
				es, err := s.Read("bench", 0, from, 32, buf[:0])
				if err != nil || len(es) != 32 {
					b.Fatalf("Read at %d: %d entries, %v", from, len(es), err)
				}
				from = (from + 7919) % (n - 32)
			}
		})
	}
}
