package meta

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestSettleTimersEach: each timer is settled on its own; a settle
// retried the same way is told so, the other way is stale, and a stale
// timer's replacement is dropped while the others' are kept.
func TestSettleTimersEach(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "meta.db"))
	now := time.Now()
	later := now.Add(time.Minute)
	if err := s.AddTimers(ctx, []Timer{{LogOffset: 1, DeliverAt: later}, {LogOffset: 2, DeliverAt: later}, {LogOffset: 3, DeliverAt: now},
		{LogOffset: 10, DeliverAt: later}, {LogOffset: 11, DeliverAt: later}}); err != nil {
		t.Fatal(err)
	}
	// 1 acked; 3 is due (past its visibility): stale, the rest still acked.
	got, err := s.SettleTimers(ctx, []int64{1, 3}, nil, true)
	if want := []TimerState{TimerDone, TimerStale}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("ack: %v %v, want %v", got, err, want)
	}
	// 2 nacked with replacement 10; 1 (acked) with replacement 11: stale,
	// and 11 dropped.
	got, err = s.SettleTimers(ctx, []int64{2, 1}, []int64{10, 11}, false)
	if want := []TimerState{TimerDone, TimerAcked}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("nack: %v %v, want %v", got, err, want)
	}
	if n, _ := s.PendingTimers(ctx); n != 2 { // 3 (due, the timer loop's) and 10
		t.Fatalf("%d pending, want 2: the dropped replacement must not come out", n)
	}
	// Retries: the ack of 1 again is acked, the nack of 2 again nacked.
	if got, _ := s.SettleTimers(ctx, []int64{1, 2}, nil, true); !slices.Equal(got, []TimerState{TimerAcked, TimerNacked}) {
		t.Fatalf("retried settles: %v", got)
	}
	// Purged only once SettledMemory has passed since the settle.
	if err := s.FireTimers(ctx, []int64{3}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PurgeFiredTimers(ctx, 100); err != nil || n != 2 {
		t.Fatalf("purge: %d %v, want 2 (the timer loop's 3 and the dropped 11, not the settled)", n, err)
	}
	if got, _ := s.SettleTimers(ctx, []int64{1}, nil, true); !slices.Equal(got, []TimerState{TimerAcked}) {
		t.Fatalf("after a purge within SettledMemory: %v, want acked", got)
	}
	// Moving a due time: a pending one moves, a settled one does not.
	if got, _ := s.SetTimersDue(ctx, []int64{10, 1}, now.Add(time.Hour)); !slices.Equal(got, []TimerState{TimerDone, TimerAcked}) {
		t.Fatalf("move: %v", got)
	}
	if got, _ := s.ReserveTimersEach(ctx, []int64{10, 2}, now.Add(2*time.Hour)); !slices.Equal(got, []TimerState{TimerDone, TimerNacked}) {
		t.Fatalf("reserve: %v", got)
	}
}
