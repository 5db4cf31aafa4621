package broker

import (
	"math"
	"testing"
	"time"
)

// TestRedriveOffset holds the pacing arithmetic at its edges: no overflow,
// no NaN, and the boundary itself fits.
func TestRedriveOffset(t *testing.T) {
	const max = 30 * 24 * time.Hour
	tests := []struct {
		i    int
		rate float64
		want time.Duration
		ok   bool
	}{
		{0, 1, 0, true},
		{0, 1e-300, 0, true},
		{1, 1e-300, 0, false},
		{math.MaxInt, 1e-300, 0, false},
		{math.MaxInt, 10000, 0, false},
		{1, 0, 0, false},
		{0, 0, 0, false},
		{1, -1, 0, false},
		{1, math.Inf(1), 0, false},
		{1, math.NaN(), 0, false},
		{2592000, 1, max, true},
		{2592001, 1, 0, false},
		{25920000, 10, max, true},
		{25920001, 10, 0, false},
		{3, 2, 1500 * time.Millisecond, true},
	}
	for _, tt := range tests {
		got, ok := RedriveOffset(tt.i, tt.rate, max)
		if got != tt.want || ok != tt.ok {
			t.Errorf("RedriveOffset(%d, %g) = %s, %v; want %s, %v", tt.i, tt.rate, got, ok, tt.want, tt.ok)
		}
	}
}
