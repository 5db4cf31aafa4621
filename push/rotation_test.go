package push

import (
	"context"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
)

// After two rotations within the overlap a delivery is signed with all
// three secrets, so a receiver still holding the first one verifies it
// (issue 11, fault 12: the second rotation used to drop the first secret).
func TestDeliverySignedWithEverySecretInOverlap(t *testing.T) {
	r := newStopRig(t, time.Second)
	s := newSink(t, nil)
	sub := r.subscribe(t, broker.Subscription{Group: "g", Topic: "orders", URL: s.URL})
	secrets := []string{sub.Secret}
	for range 2 {
		rotated, err := r.b.RotateSecret(context.Background(), sub.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, rotated.Secret)
	}
	// A rotation reaches the loop when the dispatcher reconciles.
	waitUntil(t, 10*time.Second, "the loop on the newest secret", func() bool {
		r.d.mu.Lock()
		defer r.d.mu.Unlock()
		l := r.d.loops[sub.ID]
		return l != nil && l.sub.Secret == secrets[2]
	})
	r.publish(t, "orders", &broker.Message{Body: []byte(`{"n":1}`)})
	waitUntil(t, 10*time.Second, "a delivery", func() bool { return len(s.requests()) >= 1 })
	got := s.requests()[0]
	for i, secret := range secrets {
		if err := VerifyStandardWebhook(secret, got.header, []byte(got.body), time.Minute, time.Now()); err != nil {
			t.Errorf("secret %d of %d does not verify the delivery: %v (webhook-signature %q)", i+1, len(secrets), err, got.header.Get("webhook-signature"))
		}
	}
}
