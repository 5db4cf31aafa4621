package httpapi

import (
	"context"
	"testing"
	"time"
)

// sampleStats records one sample of s's broker taken at `at`, as RunStats
// does at each step.
func sampleStats(tb testing.TB, s *Server, at time.Time) {
	tb.Helper()
	snap, err := s.statsSnapshot(context.Background())
	if err != nil {
		tb.Fatalf("sample: %v", err)
	}
	s.stats.Record(at, snap)
}
