package keyindex

import (
	"bytes"
	"cmp"
	"slices"
	"testing"
)

// FuzzOpenSealed feeds arbitrary bytes to the sealed-file loader: it must
// return a sealed file or an error (ErrCorrupt for bad content), never panic
// or allocate beyond what the input's size implies; lookups in whatever loads
// must come back newest first.
func FuzzOpenSealed(f *testing.F) {
	for _, n := range []int{0, 1, 3, 300} {
		recs := make([]rec, n)
		for i := range recs {
			recs[i] = rec{uint64(i % 5), int64(i * 10)}
		}
		sortRecs(recs)
		var b bytes.Buffer
		if err := encodeSealed(&b, recs); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes())
	}
	f.Add([]byte("PBKI"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		m, err := loadSealed(r, int64(len(b)))
		if err != nil {
			return
		}
		buf := make([]byte, blockBytes)
		for _, h := range []uint64{0, 1, 2, 4, 1 << 63} {
			var got []int64
			read := func(j int, offs []int64) ([]int64, bool, error) { return m.readBlock(r, j, h, buf, offs) }
			if _, err := m.find(read, h, nil, func(off int64) bool { got = append(got, off); return true }); err != nil {
				t.Fatalf("find %d in a verified file: %v", h, err)
			}
			if !slices.IsSortedFunc(got, func(a, b int64) int { return cmp.Compare(b, a) }) {
				t.Fatalf("find %d = %v, not newest first", h, got)
			}
		}
	})
}

// FuzzReplay feeds arbitrary bytes to the active-log replay: it must stop at
// the first bad record without panicking, report a whole number of records,
// and yield non-decreasing offsets.
func FuzzReplay(f *testing.F) {
	var log []byte
	for i := range 5 {
		log = appendLogRec(log, uint64(i%2), int64(i*7))
	}
	f.Add(log)
	f.Add(log[:len(log)-3])
	f.Add(make([]byte, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		last, n := int64(-1), int64(0)
		good, err := replayLog(bytes.NewReader(b), func(_ uint64, off int64) {
			if off < last {
				t.Fatalf("offset %d after %d", off, last)
			}
			last = off
			n++
		})
		if err != nil {
			t.Fatalf("replay of an in-memory log: %v", err)
		}
		if good != n*logRecSize || good > int64(len(b)) {
			t.Fatalf("good = %d after %d records of %d bytes", good, n, len(b))
		}
	})
}
