package broker

import (
	"context"
	"testing"
	"time"
)

// TestNackCutShortReturnsSoon (attack F5): a nack reserves its receipts'
// timers while it stores their replacements; cut short there (a crash),
// the reservation is what brings the messages back. It was a minute, so a
// SIGKILL during a nack of messages pulled with a 4s visibility hid them
// for a minute after the restart. The reservation now ends within
// nackReserve (10s) of the nack, or at the visibility's end if later.
func TestNackCutShortReturnsSoon(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	publish(t, b, "t", msg("m0"))
	got := pullN(t, b, "g", "t", 1, 10*time.Second, 2*time.Second)
	if len(got) != 1 {
		t.Fatalf("pulled %d, want 1", len(got))
	}
	var due, nackAt time.Time
	testHookNackReserved = func() {
		var ok bool
		var err error
		if due, ok, err = b.meta.NextTimer(ctx); err != nil || !ok {
			t.Errorf("next timer after the reservation: %v, %v", ok, err)
		}
	}
	defer func() { testHookNackReserved = nil }()
	nackAt = time.Now()
	if _, err := b.NackEach(ctx, "g", receipts(got), 0); err != nil {
		t.Fatal(err)
	}
	if limit := nackAt.Add(15 * time.Second); due.After(limit) {
		t.Fatalf("a nack cut short after its reservation brings its message back at %s, %s after the nack; want within 15s",
			due.Format(time.RFC3339Nano), due.Sub(nackAt).Round(time.Second))
	}
}
