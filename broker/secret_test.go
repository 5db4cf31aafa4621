package broker

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// A second rotation within the overlap keeps the first rotation's old
// secret signing until its own overlap ends; it used to end it at once
// (issue 11, fault 12). Each secret is dropped exactly when its overlap
// ends, and all of it survives a restart.
func TestRotationsKeepEveryOverlap(t *testing.T) {
	var mu sync.Mutex
	t0 := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	now := t0
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	set := func(t time.Time) { mu.Lock(); now = t; mu.Unlock() }
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Now = clock
	b, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "orders", URL: "http://127.0.0.1:9/hook", MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	a := sub.Secret
	r1, err := b.RotateSecret(ctx, sub.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	set(t0.Add(time.Hour))
	r2, err := b.RotateSecret(ctx, sub.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	bSecret, c := r1.Secret, r2.Secret
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openBroker(t, cfg)
	stored, err := b.Subscription(ctx, sub.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		at   time.Duration
		want []string
	}{
		{time.Hour, []string{c, bSecret, a}},
		{SecretOverlap - time.Millisecond, []string{c, bSecret, a}},
		{SecretOverlap, []string{c, bSecret}}, // a's overlap ends 24h after the first rotation
		{SecretOverlap + time.Hour - time.Millisecond, []string{c, bSecret}},
		{SecretOverlap + time.Hour, []string{c}},
	} {
		if got := stored.SigningSecrets(t0.Add(tt.at)); !slices.Equal(got, tt.want) {
			t.Errorf("at t0+%s signing with %d secrets %v, want %d", tt.at, len(got), got, len(tt.want))
		}
	}
	// A rotation after both overlaps ended keeps only the secret it
	// replaces.
	set(t0.Add(SecretOverlap + 2*time.Hour))
	r3, err := b.RotateSecret(ctx, sub.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(r3.PreviousSecrets) != 1 || r3.PreviousSecrets[0].Secret != c {
		t.Fatalf("after a late rotation, previous secrets %+v, want only the one it replaced", r3.PreviousSecrets)
	}
}

// The secrets signing at once are bounded: the rotation past the bound is
// refused and changes nothing; a rotation to the current secret is refused.
func TestRotationBound(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	ctx := context.Background()
	sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "orders", URL: "http://127.0.0.1:9/hook", MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range MaxPreviousSecrets {
		if _, err := b.RotateSecret(ctx, sub.ID, ""); err != nil {
			t.Fatalf("rotation %d: %v", i+1, err)
		}
	}
	before, _ := b.Subscription(ctx, sub.ID)
	if _, err := b.RotateSecret(ctx, sub.ID, ""); CodeOf(err) != CodeInvalidSubscription {
		t.Fatalf("rotation %d: %v, want invalid_subscription", MaxPreviousSecrets+1, err)
	}
	if _, err := b.RotateSecret(ctx, sub.ID, before.Secret); CodeOf(err) != CodeInvalidSubscription {
		t.Fatalf("rotation to the current secret: %v, want invalid_subscription", err)
	}
	after, _ := b.Subscription(ctx, sub.ID)
	if after.Secret != before.Secret || len(after.PreviousSecrets) != MaxPreviousSecrets {
		t.Fatalf("a refused rotation changed the secrets: %d previous", len(after.PreviousSecrets))
	}
}

// A subscription stored before secrets were kept as a list (one
// previous_secret with previous_until_ms) still signs with that secret.
func TestLegacyPreviousSecretRead(t *testing.T) {
	until := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	m := subscriptionMetaForTest(`{"max_retries":16,"timeout_ms":15000,"max_in_flight":32,"visibility_ms":30000,"start_from":"latest","previous_secret":"whsec_old","previous_until_ms":` +
		strconv.FormatInt(until.UnixMilli(), 10) + `}`)
	s, err := subscriptionFromMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.SigningSecrets(until.Add(-time.Millisecond)); !slices.Equal(got, []string{"whsec_new", "whsec_old"}) {
		t.Fatalf("before the overlap ends: %v", got)
	}
	if got := s.SigningSecrets(until); !slices.Equal(got, []string{"whsec_new"}) {
		t.Fatalf("when the overlap ends: %v", got)
	}
}

func subscriptionMetaForTest(config string) meta.Subscription {
	return meta.Subscription{ID: "s1", Group: "g", Topic: "orders", URL: "http://127.0.0.1:9/", Filter: "*",
		Config: config, Secret: "whsec_new", State: StateActive}
}
