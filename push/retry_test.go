package push

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func fixedJitter(v float64) func() float64 { return func() float64 { return v } }

func TestDefaultRetrySchedule(t *testing.T) {
	p := DefaultRetryPolicy()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	s, m, h := time.Second, time.Minute, time.Hour
	want := []time.Duration{ // after attempt 1, 2, ... fails
		10 * s, 30 * s, 1 * m, 2 * m, 3 * m, 4 * m, 5 * m, 6 * m, 7 * m, 8 * m, 9 * m, 10 * m, 20 * m, 30 * m, 1 * h, 2 * h,
	}
	for i, w := range want {
		n := i + 1
		got, dead := p.Next(n, 0, nil)
		if dead || got != w {
			t.Errorf("attempt %d fails: Next = %v, dead %v; want %v", n, got, dead, w)
		}
	}
	// 1 + 16 retries = 17 attempts; the 17th failing is the end.
	for _, n := range []int{17, 18, 1000, math.MaxInt} {
		if got, dead := p.Next(n, time.Hour, nil); !dead || got != 0 {
			t.Errorf("attempt %d fails: Next = %v, dead %v; want dead", n, got, dead)
		}
	}
	// n < 1 is taken as the first attempt, not a panic.
	for _, n := range []int{0, -1, math.MinInt} {
		if got, dead := p.Next(n, 0, nil); dead || got != 10*s {
			t.Errorf("Next(%d) = %v, %v; want 10s", n, got, dead)
		}
	}
	// Each DefaultRetryPolicy has its own copy of the list.
	p.Delays[0] = time.Hour
	if DefaultRetryDelays[0] != 10*s || DefaultRetryPolicy().Delays[0] != 10*s {
		t.Fatal("changing a default policy's delays changed the defaults")
	}
}

func TestRetryDelaysList(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name   string
		policy RetryPolicy
		want   []time.Duration // after attempt 1, 2, ...; then dead
	}{
		{"last repeats", RetryPolicy{MaxRetries: 5, Delays: []time.Duration{time.Second, 5 * time.Second}},
			[]time.Duration{time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second}},
		{"sub-second", RetryPolicy{MaxRetries: 3, Delays: []time.Duration{100 * ms, 250 * ms, 1500 * ms}},
			[]time.Duration{100 * ms, 250 * ms, 1500 * ms}},
		{"longer list than retries", RetryPolicy{MaxRetries: 2, Delays: []time.Duration{1 * ms, 2 * ms, 3 * ms}},
			[]time.Duration{1 * ms, 2 * ms}},
		{"one nanosecond", RetryPolicy{MaxRetries: 1, Delays: []time.Duration{1}}, []time.Duration{1}},
		{"no retries", RetryPolicy{MaxRetries: 0, Delays: []time.Duration{time.Second}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.policy.Validate(); err != nil {
				t.Fatal(err)
			}
			for i, w := range tt.want {
				if got, dead := tt.policy.Next(i+1, 0, nil); dead || got != w {
					t.Errorf("attempt %d fails: %v, dead %v; want %v", i+1, got, dead, w)
				}
			}
			if _, dead := tt.policy.Next(len(tt.want)+1, 0, nil); !dead {
				t.Errorf("attempt %d fails: not dead", len(tt.want)+1)
			}
		})
	}
}

func TestRetryBackoff(t *testing.T) {
	p := RetryPolicy{MaxRetries: 20, BackoffMin: time.Second, BackoffMax: time.Minute}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	// Without jitter (0.5 is the midpoint): min·2^(n-1) capped at max.
	s := time.Second
	want := []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 60 * s, 60 * s, 60 * s}
	for i, w := range want {
		if got, dead := p.Next(i+1, 0, fixedJitter(0.5)); dead || got != w {
			t.Errorf("attempt %d fails: %v, %v; want %v", i+1, got, dead, w)
		}
	}
	// The jitter's extremes: ±10%, never below min or above max.
	tests := []struct {
		n      int
		jitter float64
		want   time.Duration
	}{
		{1, 0, 1 * s},                       // 0.9s, raised to min
		{1, 1, 1100 * time.Millisecond},     // +10%
		{3, 0, 3600 * time.Millisecond},     // 4s -10%
		{3, 1, 4400 * time.Millisecond},     // 4s +10%
		{6, 0.75, 33600 * time.Millisecond}, // 32s +5%
		{7, 0, 54 * s},                      // 60s -10%
		{7, 1, 60 * s},                      // 66s, lowered to max
		{20, 0, 54 * s},                     // far past the cap
		{3, math.NaN(), 4 * s},              // a broken jitter source is ignored
		{3, -3, 4 * s},                      // so is one out of range
	}
	for _, tt := range tests {
		got, _ := p.Next(tt.n, 0, fixedJitter(tt.jitter))
		if d := got - tt.want; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("attempt %d, jitter %v: %v, want %v", tt.n, tt.jitter, got, tt.want)
		}
	}
	// Real randomness stays within the bounds and does vary.
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[time.Duration]bool{}
	for range 1000 {
		n := 1 + r.IntN(10)
		base := min(time.Second<<(n-1), time.Minute)
		got, _ := p.Next(n, 0, r.Float64)
		lo, hi := max(base*9/10, p.BackoffMin), min(base*11/10, p.BackoffMax)
		if got < lo || got > hi {
			t.Fatalf("attempt %d: %v outside [%v, %v]", n, got, lo, hi)
		}
		seen[got] = true
	}
	if len(seen) < 100 {
		t.Fatalf("only %d distinct delays in 1000 draws: no jitter?", len(seen))
	}
	// nil jitter uses math/rand, within the same bounds.
	if got, _ := p.Next(4, 0, nil); got < 7200*time.Millisecond || got > 8800*time.Millisecond {
		t.Fatalf("nil jitter: %v outside 8s±10%%", got)
	}
}

func TestRetryAfterDominance(t *testing.T) {
	list := RetryPolicy{MaxRetries: 3, Delays: []time.Duration{10 * time.Second}}
	backoff := RetryPolicy{MaxRetries: 3, BackoffMin: time.Second, BackoffMax: time.Minute}
	tests := []struct {
		name       string
		policy     RetryPolicy
		n          int
		retryAfter time.Duration
		want       time.Duration
		dead       bool
	}{
		{"longer wins", list, 1, 30 * time.Second, 30 * time.Second, false},
		{"shorter loses", list, 1, 5 * time.Second, 10 * time.Second, false},
		{"zero", list, 1, 0, 10 * time.Second, false},
		{"negative", list, 1, -time.Hour, 10 * time.Second, false},
		{"capped at 24h", list, 1, 48 * time.Hour, 24 * time.Hour, false},
		{"beats the backoff cap", backoff, 3, 10 * time.Minute, 10 * time.Minute, false},
		{"dead stays dead", list, 4, time.Minute, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, dead := tt.policy.Next(tt.n, tt.retryAfter, fixedJitter(0.5))
			if got != tt.want || dead != tt.dead {
				t.Fatalf("Next = %v, %v; want %v, %v", got, dead, tt.want, tt.dead)
			}
		})
	}
}

func TestRetryPolicyValidate(t *testing.T) {
	day := 24 * time.Hour
	many := make([]time.Duration, MaxRetryDelays+1)
	for i := range many {
		many[i] = time.Second
	}
	tests := []struct {
		name   string
		policy RetryPolicy
		err    string // substring; "" for valid
	}{
		{"default", DefaultRetryPolicy(), ""},
		{"no retries", RetryPolicy{Delays: []time.Duration{time.Second}}, ""},
		{"100 retries", RetryPolicy{MaxRetries: 100, Delays: []time.Duration{time.Second}}, ""},
		{"100 delays", RetryPolicy{MaxRetries: 1, Delays: many[:100]}, ""},
		{"24h delay", RetryPolicy{MaxRetries: 1, Delays: []time.Duration{day}}, ""},
		{"backoff", RetryPolicy{MaxRetries: 5, BackoffMin: time.Millisecond, BackoffMax: day}, ""},
		{"backoff min = max", RetryPolicy{MaxRetries: 5, BackoffMin: time.Second, BackoffMax: time.Second}, ""},
		{"negative retries", RetryPolicy{MaxRetries: -1, Delays: []time.Duration{time.Second}}, "max_retries"},
		{"101 retries", RetryPolicy{MaxRetries: 101, Delays: []time.Duration{time.Second}}, "max_retries"},
		{"neither", RetryPolicy{MaxRetries: 3}, "give retry delays or a backoff"},
		{"both", RetryPolicy{MaxRetries: 3, Delays: []time.Duration{time.Second}, BackoffMin: time.Second, BackoffMax: time.Minute}, "not both"},
		{"101 delays", RetryPolicy{MaxRetries: 1, Delays: many}, "at most 100"},
		{"zero delay", RetryPolicy{MaxRetries: 1, Delays: []time.Duration{time.Second, 0}}, "retry delay 2"},
		{"negative delay", RetryPolicy{MaxRetries: 1, Delays: []time.Duration{-time.Second}}, "retry delay 1"},
		{"delay over 24h", RetryPolicy{MaxRetries: 1, Delays: []time.Duration{day + 1}}, "retry delay 1"},
		{"backoff min 0", RetryPolicy{MaxRetries: 1, BackoffMax: time.Minute}, "backoff"},
		{"backoff max 0", RetryPolicy{MaxRetries: 1, BackoffMin: time.Minute}, "backoff"},
		{"backoff min > max", RetryPolicy{MaxRetries: 1, BackoffMin: time.Hour, BackoffMax: time.Minute}, "backoff"},
		{"backoff max over 24h", RetryPolicy{MaxRetries: 1, BackoffMin: time.Hour, BackoffMax: day + 1}, "backoff"},
		{"backoff negative", RetryPolicy{MaxRetries: 1, BackoffMin: -time.Hour, BackoffMax: time.Hour}, "backoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.policy.Validate()
			if tt.err == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidRetryPolicy) || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Validate = %v, want ErrInvalidRetryPolicy with %q", err, tt.err)
			}
		})
	}
}

// TestRetryInvalidPolicyNoPanic: Next on a policy that never went through
// Validate still answers within [0, 24h].
func TestRetryInvalidPolicyNoPanic(t *testing.T) {
	for _, p := range []RetryPolicy{
		{MaxRetries: 5},
		{MaxRetries: 5, Delays: []time.Duration{-time.Hour}},
		{MaxRetries: 5, Delays: []time.Duration{math.MaxInt64}},
		{MaxRetries: 100, BackoffMin: time.Hour, BackoffMax: math.MaxInt64},
		{MaxRetries: 100, BackoffMin: 1, BackoffMax: math.MaxInt64},
		{MaxRetries: 5, BackoffMin: time.Hour, BackoffMax: time.Minute},
	} {
		for n := 1; n <= p.MaxRetries; n++ {
			got, dead := p.Next(n, 0, fixedJitter(0.99))
			if dead || got < 0 || got > MaxDelay {
				t.Fatalf("%+v: Next(%d) = %v, %v", p, n, got, dead)
			}
		}
	}
	if got, _ := (RetryPolicy{MaxRetries: 1}).Next(1, 0, nil); got != DefaultRetryDelays[0] {
		t.Fatalf("empty policy: %v, want the default schedule's %v", got, DefaultRetryDelays[0])
	}
}
