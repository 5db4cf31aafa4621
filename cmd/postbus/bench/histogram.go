package bench

import (
	"math"
	"math/bits"
	"time"
)

// The latency histogram is log-linear, in the manner of HdrHistogram: values
// below histSub nanoseconds get one bucket each, and every octave above
// [2^h, 2^(h+1)) is cut into histSub equal buckets. A bucket's width is then
// at most 1/histSub of its lowest value, so any quantile read back from the
// middle of its bucket is within 1/(2*histSub) (under 1%) of the truth.
//
// The bucket array is fixed, so a histogram costs the same ~19 KiB after a
// second or after a day, and merging two is a loop over the array.
const (
	histSubBits = 6
	histSub     = 1 << histSubBits // buckets per octave
	// histMaxBits bounds the values kept in buckets: anything at or above
	// 2^43 ns (about 2.4 hours) goes to the last bucket. max stays exact.
	histMaxBits = 43
	histBuckets = (histMaxBits - histSubBits + 1) * histSub
	histMaxVal  = 1<<histMaxBits - 1
)

// histogram counts durations in nanoseconds. It is not safe for concurrent
// use; each worker owns its own and they are merged when read.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    uint64 // nanoseconds; overflows only after ~584 years of latency
	min    uint64
	max    uint64
}

// bucketOf returns the bucket index holding v, which must be <= histMaxVal.
func bucketOf(v uint64) int {
	if v < histSub {
		return int(v)
	}
	shift := bits.Len64(v) - 1 - histSubBits
	return shift*histSub + int(v>>uint(shift))
}

// bucketRange returns the lowest value of bucket i and its width.
func bucketRange(i int) (low, width uint64) {
	if i < 2*histSub {
		return uint64(i), 1
	}
	shift := uint(i/histSub - 1)
	return uint64(i-int(shift)*histSub) << shift, 1 << shift
}

func (h *histogram) record(d time.Duration) {
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += v
	h.counts[bucketOf(min(v, histMaxVal))]++
}

// merge adds o's counts into h.
func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
	for i, c := range o.counts {
		h.counts[i] += c
	}
}

func (h *histogram) reset() { *h = histogram{} }

func (h *histogram) count() uint64 { return h.n }

func (h *histogram) maxValue() time.Duration { return time.Duration(h.max) }

func (h *histogram) mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / h.n)
}

// quantile returns the value at rank ceil(q*n) (the nearest-rank definition,
// so quantile(1) is the largest value), read as the middle of its bucket and
// clamped to the exact min and max seen. It returns 0 for an empty histogram.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 || math.IsNaN(q) {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum < rank {
			continue
		}
		low, width := bucketRange(i)
		v := low + width/2
		return time.Duration(min(max(v, h.min), h.max))
	}
	return time.Duration(h.max) // unreachable while counts sum to n
}
