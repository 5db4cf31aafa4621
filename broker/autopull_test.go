package broker

import (
	"context"
	"testing"
	"time"
)

// A subscription holding the id a group's first pull would give its own
// (stored by an older version, which let a caller choose it) made that
// first pull look again for ever: the stack overflowed and the process
// died. The first pull now answers subscription_exists, and a create with
// such an id for another group or topic is refused.
func TestFirstPullWithItsIDTaken(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	ctx := context.Background()
	publish(t, b, "orders", &Message{Body: []byte("x")})
	id := autoPullID("billing", "orders")
	if _, err := b.CreateSubscription(ctx, Subscription{ID: id, Group: "mallory", Topic: "orders", MaxRetries: -1}); CodeOf(err) != CodeInvalidSubscription {
		t.Fatalf("create with billing's first-pull id for mallory: %v, want invalid_subscription", err)
	}
	s := Subscription{ID: id, Group: "mallory", Topic: "orders", MaxRetries: -1}
	s.applyDefaults()
	ms, err := s.toMeta()
	if err != nil {
		t.Fatal(err)
	}
	ms.CreatedAt, ms.UpdatedAt = time.Now(), time.Now()
	if _, err := b.meta.CreateSubscription(ctx, ms); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Pull(ctx, "billing", "orders", 1, 0, 0); CodeOf(err) != CodeSubscriptionExists {
		t.Fatalf("first pull with its id taken: %v, want subscription_exists", err)
	}
	// The group's own id given explicitly is fine (a cluster copies it).
	if _, err := b.CreateSubscription(ctx, Subscription{ID: autoPullID("audit", "orders"), Group: "audit", Topic: "orders", MaxRetries: -1}); err != nil {
		t.Fatalf("create with audit's own first-pull id: %v", err)
	}
}
