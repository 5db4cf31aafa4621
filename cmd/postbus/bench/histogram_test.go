package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"
)

// oracleQuantile is the nearest-rank quantile of sorted values.
func oracleQuantile(sorted []uint64, q float64) uint64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func TestHistogramQuantilesMatchOracle(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	gen := map[string]func() uint64{
		"exact small values": func() uint64 { return rng.Uint64N(100) },
		"uniform 0..10ms":    func() uint64 { return rng.Uint64N(uint64(10 * time.Millisecond)) },
		"log-normal around 1ms": func() uint64 {
			return uint64(math.Exp(rng.NormFloat64()*1.5 + math.Log(float64(time.Millisecond))))
		},
		"bimodal 200us and 2s": func() uint64 {
			if rng.IntN(100) < 97 {
				return uint64(200*time.Microsecond) + rng.Uint64N(50_000)
			}
			return uint64(2*time.Second) + rng.Uint64N(uint64(time.Second))
		},
		"constant": func() uint64 { return 123_456_789 },
	}
	quantiles := []float64{0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1}
	for name, next := range gen {
		for _, n := range []int{1, 7, 1000, 100_000} {
			t.Run(name+"/n="+strconv.Itoa(n), func(t *testing.T) {
				var h histogram
				vals := make([]uint64, n)
				for i := range vals {
					vals[i] = next()
					h.record(time.Duration(vals[i]))
				}
				slices.Sort(vals)
				if got, want := h.count(), uint64(n); got != want {
					t.Fatalf("count = %d, want %d", got, want)
				}
				if got, want := uint64(h.maxValue()), vals[n-1]; got != want {
					t.Errorf("max = %d, want %d (exact)", got, want)
				}
				for _, q := range quantiles {
					got := uint64(h.quantile(q))
					want := oracleQuantile(vals, q)
					if bucketOf(got) != bucketOf(want) {
						t.Errorf("quantile(%v) = %d in bucket %d, oracle %d in bucket %d",
							q, got, bucketOf(got), want, bucketOf(want))
					}
					if diff := absDiff(got, want); diff > want/histSub {
						t.Errorf("quantile(%v) = %d, oracle %d: off by %d, more than 1/%d", q, got, want, diff, histSub)
					}
				}
			})
		}
	}
}

func TestHistogramBuckets(t *testing.T) {
	// Every value falls inside the range of its bucket, and buckets tile
	// the value line without gaps or overlaps.
	prevIdx, prevEnd := -1, uint64(0)
	check := func(v uint64) {
		t.Helper()
		i := bucketOf(v)
		low, width := bucketRange(i)
		if v < low || v >= low+width {
			t.Fatalf("value %d in bucket %d = [%d, %d)", v, i, low, low+width)
		}
		if i != prevIdx {
			if i != prevIdx+1 || low != prevEnd {
				t.Fatalf("value %d: bucket %d starts at %d; previous bucket %d ended at %d", v, i, low, prevIdx, prevEnd)
			}
			if width > 1 && width*histSub > low {
				t.Fatalf("bucket %d [%d,+%d): width more than 1/%d of its low end", i, low, width, histSub)
			}
			prevIdx, prevEnd = i, low+width
		}
	}
	// Walk every bucket boundary: each bucket's low end and the value
	// just below the next one.
	for i := 0; i < histBuckets; i++ {
		low, width := bucketRange(i)
		check(low)
		check(low + width - 1)
	}
	if got, want := bucketOf(histMaxVal), histBuckets-1; got != want {
		t.Fatalf("bucketOf(max) = %d, want last bucket %d", got, want)
	}
}

func TestHistogramMergeResetAndEdges(t *testing.T) {
	var a, b, all histogram
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 5000 {
		d := time.Duration(rng.Int64N(int64(50 * time.Millisecond)))
		all.record(d)
		if i%3 == 0 {
			a.record(d)
		} else {
			b.record(d)
		}
	}
	var m histogram
	m.merge(&a)
	m.merge(&b)
	m.merge(&histogram{}) // merging an empty one changes nothing
	if m != all {
		t.Fatalf("merge of parts differs from recording all: n %d vs %d, min %d vs %d, max %d vs %d",
			m.n, all.n, m.min, all.min, m.max, all.max)
	}
	m.reset()
	if m.count() != 0 || m.quantile(0.5) != 0 || m.maxValue() != 0 || m.mean() != 0 {
		t.Fatalf("reset histogram not empty: n=%d p50=%s", m.count(), m.quantile(0.5))
	}

	var h histogram
	h.record(-time.Second) // a clock step back records as zero, not a panic
	h.record(100 * time.Hour)
	if got := h.quantile(0); got != 0 {
		t.Errorf("quantile(0) = %s, want 0", got)
	}
	if got, want := h.maxValue(), 100*time.Hour; got != want {
		t.Errorf("max = %s, want %s kept exactly beyond the bucket range", got, want)
	}
	if got := h.quantile(math.NaN()); got != 0 {
		t.Errorf("quantile(NaN) = %s, want 0", got)
	}
	if got := h.quantile(2); got > 100*time.Hour || got < time.Hour {
		t.Errorf("quantile(2) = %s, want the top bucket (clamped rank)", got)
	}
}

func BenchmarkHistogram(b *testing.B) {
	b.Run("op=record", func(b *testing.B) {
		b.ReportAllocs()
		var h histogram
		for i := range b.N {
			h.record(time.Duration(i&0xfffff) * time.Microsecond)
		}
	})
	b.Run("op=merge", func(b *testing.B) {
		b.ReportAllocs()
		var h, o histogram
		o.record(time.Millisecond)
		for range b.N {
			h.merge(&o)
		}
	})
	b.Run("op=quantile", func(b *testing.B) {
		b.ReportAllocs()
		var h histogram
		for i := range 100_000 {
			h.record(time.Duration(i) * time.Microsecond)
		}
		for range b.N {
			h.quantile(0.99)
		}
	})
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}
