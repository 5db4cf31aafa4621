package push

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"
)

// DefaultRetryDelays is RocketMQ's retry schedule: the n-th retry waits the
// n-th delay.
var DefaultRetryDelays = []time.Duration{
	10 * time.Second, 30 * time.Second,
	1 * time.Minute, 2 * time.Minute, 3 * time.Minute, 4 * time.Minute, 5 * time.Minute,
	6 * time.Minute, 7 * time.Minute, 8 * time.Minute, 9 * time.Minute, 10 * time.Minute,
	20 * time.Minute, 30 * time.Minute, 1 * time.Hour, 2 * time.Hour,
}

// Retry policy bounds.
const (
	DefaultMaxRetries = 16
	MaxMaxRetries     = 100
	MaxRetryDelays    = 100            // entries in a delay list
	MaxDelay          = 24 * time.Hour // any one wait, Retry-After included
	// backoffJitter is the most exponential backoff moves a delay either way.
	backoffJitter = 0.10
)

// ErrInvalidRetryPolicy is wrapped by RetryPolicy.Validate's errors.
var ErrInvalidRetryPolicy = errors.New("invalid retry policy")

// RetryPolicy says how long a failed delivery waits before its next attempt
// and when it is dead instead. It is a plain value: the dispatcher stores
// the time of the next attempt, never sleeps on it.
//
// Exactly one of Delays (a list, whose last entry repeats) and BackoffMin
// with BackoffMax (exponential backoff) is set.
type RetryPolicy struct {
	MaxRetries int // retries after the first attempt; 0 sends a failure straight to the DLQ
	Delays     []time.Duration
	BackoffMin time.Duration
	BackoffMax time.Duration
}

// DefaultRetryPolicy is RocketMQ's: 16 retries on DefaultRetryDelays (a
// copy, which the caller may change).
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxRetries: DefaultMaxRetries, Delays: slices.Clone(DefaultRetryDelays)}
}

// Validate checks the policy's bounds.
func (p RetryPolicy) Validate() error {
	if p.MaxRetries < 0 || p.MaxRetries > MaxMaxRetries {
		return fmt.Errorf("%w: max_retries %d; want 0 to %d", ErrInvalidRetryPolicy, p.MaxRetries, MaxMaxRetries)
	}
	backoff := p.BackoffMin != 0 || p.BackoffMax != 0
	switch {
	case len(p.Delays) > 0 && backoff:
		return fmt.Errorf("%w: give retry delays or a backoff, not both", ErrInvalidRetryPolicy)
	case len(p.Delays) == 0 && !backoff:
		return fmt.Errorf("%w: give retry delays or a backoff", ErrInvalidRetryPolicy)
	case len(p.Delays) > MaxRetryDelays:
		return fmt.Errorf("%w: %d retry delays; at most %d", ErrInvalidRetryPolicy, len(p.Delays), MaxRetryDelays)
	case backoff:
		if p.BackoffMin <= 0 || p.BackoffMax < p.BackoffMin || p.BackoffMax > MaxDelay {
			return fmt.Errorf("%w: backoff min %s, max %s; want 0 < min <= max <= %s", ErrInvalidRetryPolicy, p.BackoffMin, p.BackoffMax, MaxDelay)
		}
	}
	for i, d := range p.Delays {
		if d <= 0 || d > MaxDelay {
			return fmt.Errorf("%w: retry delay %d is %s; want more than 0 and at most %s", ErrInvalidRetryPolicy, i+1, d, MaxDelay)
		}
	}
	return nil
}

// Next says what follows the failure of attempt n (n >= 1; attempt 1 is the
// first delivery): wait delay before attempt n+1, or, when n > MaxRetries,
// the message is dead (it has had 1 + MaxRetries attempts) and goes to the
// DLQ. A subscriber's retryAfter replaces the schedule's delay when it is
// longer, up to MaxDelay. jitter returns a number in [0, 1) and only moves
// exponential backoff (by up to ±10%, never outside [BackoffMin,
// BackoffMax]); nil uses math/rand. An invalid policy falls back to the
// default schedule rather than fail: Validate guards the way in.
func (p RetryPolicy) Next(n int, retryAfter time.Duration, jitter func() float64) (delay time.Duration, dead bool) {
	n = max(n, 1)
	if n > p.MaxRetries {
		return 0, true
	}
	switch {
	case len(p.Delays) > 0:
		delay = p.Delays[min(n, len(p.Delays))-1]
	case p.BackoffMin > 0 && p.BackoffMax >= p.BackoffMin:
		delay = p.backoff(n, jitter)
	default:
		delay = DefaultRetryDelays[min(n, len(DefaultRetryDelays))-1]
	}
	if retryAfter > delay {
		delay = retryAfter
	}
	return min(max(delay, 0), MaxDelay), false
}

// backoff is BackoffMin·2^(n-1), capped at BackoffMax, jittered.
func (p RetryPolicy) backoff(n int, jitter func() float64) time.Duration {
	d := p.BackoffMin
	for i := 1; i < n && d < p.BackoffMax; i++ {
		if d > p.BackoffMax/2 {
			d = p.BackoffMax
			break
		}
		d *= 2
	}
	if jitter == nil {
		jitter = rand.Float64
	}
	j := jitter()
	if !(j >= 0 && j <= 1) { // NaN too
		j = 0.5
	}
	d = time.Duration(float64(d) * (1 + backoffJitter*(2*j-1)))
	return min(max(d, p.BackoffMin), p.BackoffMax)
}
