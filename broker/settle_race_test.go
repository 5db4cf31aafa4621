package broker

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

// TestSettleRacingANackOneWins (pull hostile pass F3): an ack, or a change
// of visibility, of a receipt that a nack of it with no delay is settling
// at the same moment. Exactly one of the two settles wins, and the message
// comes back as the winner says: never after an ack answered "acked", once
// (as attempt 2) after the nack. The ack used to cancel the timer the nack
// had reserved, answered "acked", and the nack's retry copy, due at once,
// still brought the message back as attempt 2 (1-5 rounds in 30 over HTTP).
// The hooks hold the nack between its steps so that the other settle comes
// in between and the retry copy's timer gets to fire before the swap, the
// interleaving that lost the race.
func TestSettleRacingANackOneWins(t *testing.T) {
	for _, tc := range []struct {
		name string
		// other settles the receipt while the nack is under way.
		other func(ctx context.Context, b *Broker, rcpt string) ([]ReceiptResult, error)
		won   ReceiptStatus // what the other settle answers when it wins
	}{
		{"ack", func(ctx context.Context, b *Broker, rcpt string) ([]ReceiptResult, error) {
			return b.AckEach(ctx, "g", []string{rcpt})
		}, ReceiptAcked},
		{"visibility 0s", func(ctx context.Context, b *Broker, rcpt string) ([]ReceiptResult, error) {
			return b.ChangeVisibility(ctx, "g", []string{rcpt}, 0)
		}, ReceiptExtended},
	} {
		for _, where := range []string{"reserved", "stored"} {
			t.Run(tc.name+" once the nack "+where, func(t *testing.T) {
				dir := t.TempDir()
				synctest.Test(t, func(t *testing.T) {
					ctx := context.Background()
					w := newPullEachWorld(t, dir, false)
					b := w.b
					publish(t, b, "t", msg("m0"))
					got := pullN(t, b, "g", "t", 1, time.Second, 60*time.Second)
					if len(got) != 1 {
						t.Fatalf("pulled %d, want 1", len(got))
					}
					rcpt := got[0].Receipt
					var other []ReceiptResult
					var otherErr error
					race := func() { other, otherErr = tc.other(ctx, b, rcpt) }
					// The retry copy, due at once, fires before the swap
					// (synctest.Wait: the timer loop is idle again).
					fire := func() { synctest.Wait() }
					if where == "reserved" {
						testHookNackReserved = race
						testHookNackStored = fire
					} else {
						testHookNackStored = func() { race(); fire() }
					}
					defer func() { testHookNackReserved, testHookNackStored = nil, nil }()
					nack, err := b.NackEach(ctx, "g", []string{rcpt}, 0)
					testHookNackReserved, testHookNackStored = nil, nil
					if err != nil || otherErr != nil {
						t.Fatalf("nack: %v; %s: %v", err, tc.name, otherErr)
					}
					nackWon, otherWon := nack[0].Status == ReceiptNacked, other[0].Status == tc.won
					if nackWon == otherWon {
						t.Fatalf("nack answered %s and %s %s: exactly one must win", nack[0].Status, tc.name, other[0].Status)
					}
					time.Sleep(time.Second) // synctest: a second passes, the copies due fire
					again := pullN(t, b, "g", "t", 10, 0, 60*time.Second)
					switch {
					case tc.won == ReceiptAcked && otherWon && len(again) != 0:
						t.Fatalf("acked (the nack answered %s), yet handed out again: %d messages, attempt %d", nack[0].Status, len(again), again[0].Attempt)
					case (nackWon || tc.won == ReceiptExtended) && (len(again) != 1 || again[0].Attempt != 2):
						t.Fatalf("nack %s, %s %s: pulled %d messages %+v, want m0 once as attempt 2", nack[0].Status, tc.name, other[0].Status, len(again), again)
					}
					if len(again) == 1 {
						if res, err := b.AckEach(ctx, "g", receipts(again)); err != nil || res[0].Status != ReceiptAcked {
							t.Fatalf("ack of attempt 2: %+v, %v", res, err)
						}
					}
					// Past the nack's reservation nothing else comes.
					time.Sleep(2 * nackReserve)
					if late := pullN(t, b, "g", "t", 10, 0, 60*time.Second); len(late) != 0 {
						t.Fatalf("after the settles, %d messages handed out again (attempt %d)", len(late), late[0].Attempt)
					}
				})
			})
		}
	}
}
