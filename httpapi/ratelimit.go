package httpapi

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// publishLimiter holds a token bucket per principal (token subject, or
// client address when the API is open), in messages per second.
type publishLimiter struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[string]*bucket // guarded by mu
	calls   int                // guarded by mu; sweeps idle buckets now and then
}

type bucket struct {
	lim  *rate.Limiter
	used time.Time
}

// idleBucket is how long an unused bucket is kept. A fresh bucket is full,
// so forgetting an idle one changes nothing for its owner.
const idleBucket = 10 * time.Minute

// newPublishLimiter limits each principal to perSecond messages a second,
// in bursts of up to burst messages; burst 0 is one second's worth (the
// rate rounded up, at least 1). Each message of a batch counts, so a batch
// larger than the burst can never pass (take says so; the handler refuses
// it outright).
func newPublishLimiter(perSecond float64, burst int) *publishLimiter {
	if perSecond <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = int(min(math.Ceil(perSecond), math.MaxInt32))
	}
	return &publishLimiter{limit: rate.Limit(perSecond), burst: burst, buckets: make(map[string]*bucket)}
}

// take asks for n messages for key. When they are not there yet it takes
// nothing and says how long to wait.
func (l *publishLimiter) take(key string, n int, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	if l.calls%4096 == 0 {
		for k, b := range l.buckets {
			if now.Sub(b.used) > idleBucket {
				delete(l.buckets, k)
			}
		}
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.buckets[key] = b
	}
	b.used = now
	res := b.lim.ReserveN(now, n)
	if !res.OK() {
		// More than the burst: no wait would do (the handler refuses
		// such a batch before asking).
		return false, -1
	}
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}
