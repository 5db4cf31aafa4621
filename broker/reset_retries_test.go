package broker

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

// TestResetDropsWaitingRetries (pull model seed 418): an offset reset
// drops what the group had waiting for its time in its retry topic (a
// pulled message's visibility copy, a nack's retry copy), as it drops the
// retries already queued: they belong to the old position. The replay
// hands each message out once, as attempt 1; the old receipt is stale.
// The visibility copy used to fire after the reset, so that one pull
// handed the message out as attempt 1 (the replay) and 2 (the copy).
func TestResetDropsWaitingRetries(t *testing.T) {
	for _, tc := range []struct {
		name string
		nack bool // nacked with a delay before the reset, instead of left out
		to   string
	}{
		{"out, reset to earliest", false, "earliest"},
		{"out, reset to a time", false, "2000-01-01T00:00:00Z"},
		{"nacked, reset to earliest", true, "earliest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				w := newPullEachWorld(t, dir, false)
				b := w.b
				publish(t, b, "t", msg("m0"))
				got := pullN(t, b, "g", "t", 1, time.Second, 10*time.Second)
				if len(got) != 1 {
					t.Fatalf("pulled %d, want 1", len(got))
				}
				if tc.nack {
					if res, err := b.NackEach(ctx, "g", receipts(got), 5*time.Second); err != nil || res[0].Status != ReceiptNacked {
						t.Fatalf("nack: %+v, %v", res, err)
					}
				}
				if err := b.ResetOffsets(ctx, "g", "t", tc.to); err != nil {
					t.Fatal(err)
				}
				if !tc.nack {
					if res, err := b.AckEach(ctx, "g", receipts(got)); err != nil || res[0].Status != ReceiptStale {
						t.Fatalf("ack of the receipt from before the reset: %+v, %v, want stale", res, err)
					}
				}
				// Past the old visibility (and the nack's delay), the
				// replay is the only hand-out.
				time.Sleep(20 * time.Second)
				again := pullN(t, b, "g", "t", 10, 0, time.Minute)
				if len(again) != 1 || again[0].Attempt != 1 {
					var attempts []int
					for _, p := range again {
						attempts = append(attempts, p.Attempt)
					}
					t.Fatalf("after the reset pulled %d messages (attempts %v), want m0 once as attempt 1", len(again), attempts)
				}
				if res, err := b.AckEach(ctx, "g", receipts(again)); err != nil || res[0].Status != ReceiptAcked {
					t.Fatalf("ack of the replay: %+v, %v", res, err)
				}
				time.Sleep(2 * time.Minute)
				if late := pullN(t, b, "g", "t", 10, 0, time.Minute); len(late) != 0 {
					t.Fatalf("%d handed out again after the replay was acked (attempt %d)", len(late), late[0].Attempt)
				}
			})
		})
	}
}
