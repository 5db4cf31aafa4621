package keyindex

import (
	"fmt"
	"testing"
)

// BenchmarkAdd measures Add with the default table size, sealing included
// (one seal every MemEntries adds), and a Flush every 4096 adds.
func BenchmarkAdd(b *testing.B) {
	for _, mem := range []int{DefaultMemEntries, 16_384} {
		b.Run(fmt.Sprintf("mem=%d/flush-every=4096", mem), func(b *testing.B) {
			x, err := Open(Config{Dir: b.TempDir(), MemEntries: mem, Logger: quietLogger()})
			if err != nil {
				b.Fatal(err)
			}
			defer x.Close()
			b.ReportAllocs()
			b.SetBytes(logRecSize)
			i := int64(0)
			for b.Loop() {
				x.Add(idHash(i), 100*i)
				i++
				if i%4096 == 0 {
					if err := x.Flush(); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkLookup measures lookups in an index of 10 sealed files of the
// default size (2.6M entries) plus a half-full active table: a miss, which
// reads one block from every file; an id found in the oldest file, where the
// caller stops at the first verified offset; the 32 newest offsets of a key
// found on every 1000th message (all in the active table); and all of them,
// spread over every file.
func BenchmarkLookup(b *testing.B) {
	const mem = DefaultMemEntries
	x, err := Open(Config{Dir: b.TempDir(), MemEntries: mem, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	n := int64(10*mem + mem/2)
	for i := range n {
		h := idHash(i)
		if i%1000 == 0 {
			h = keyHash(1)
		}
		x.Add(h, 100*i)
	}
	if st := x.Stats(); st.SealedFiles != 10 {
		b.Fatalf("sealed files = %d", st.SealedFiles)
	}
	for _, tc := range []struct {
		name string
		hash func(i int64) uint64
		stop int
		want int
	}{
		{"sealed=10/case=miss", func(i int64) uint64 { return keyHash(uint64(i) + 2) }, 0, 0},
		{"sealed=10/case=id-in-oldest-file", func(i int64) uint64 { return idHash(1 + i%999) }, 1, 1},
		{"sealed=10/case=key-newest-32-from-memory", func(int64) uint64 { return keyHash(1) }, 32, 32},
		{"sealed=10/case=key-all-2753", func(int64) uint64 { return keyHash(1) }, -1, int(n+999) / 1000},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			i := int64(0)
			for b.Loop() {
				got := 0
				err := x.Lookup(tc.hash(i), func(int64) bool { got++; return got != tc.stop })
				if err != nil || got != tc.want {
					b.Fatalf("Lookup: %d offsets, %v; want %d", got, err, tc.want)
				}
				i++
			}
		})
	}
}
