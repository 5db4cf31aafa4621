package broker

import (
	"context"
	"errors"
	"testing"
)

// TestCheckCloudEvent: ce- properties are a whole CloudEvent or refused
// with invalid_cloudevent naming the property, whichever way they came.
func TestCheckCloudEvent(t *testing.T) {
	whole := func(kv ...string) map[string]string {
		m := map[string]string{"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "-" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	for _, tc := range []struct {
		name  string
		props map[string]string
		field string // "": valid
	}{
		{"no properties", nil, ""},
		{"no ce- properties", map[string]string{"Ce-Id": "1", "region": "eu"}, ""},
		{"a whole event", whole("ce-subject", "x", "ce-time", "2026-01-02T03:04:05.123+02:00", "ce-tenant", "a", "region", "eu"), ""},
		{"only an id", map[string]string{"ce-id": "1"}, "properties.ce-specversion"},
		{"another specversion", whole("ce-specversion", "0.3"), "properties.ce-specversion"},
		{"no source", whole("ce-source", "-"), "properties.ce-source"},
		{"empty type", whole("ce-type", ""), "properties.ce-type"},
		{"bad time", whole("ce-time", "2026-01-02"), "properties.ce-time"},
		{"empty subject", whole("ce-subject", ""), "properties.ce-subject"},
		{"upper-case extension", whole("ce-Tenant", "a"), "properties.ce-Tenant"},
		{"extension with a dot", whole("ce-a.b", "a"), "properties.ce-a.b"},
		{"extension named data", whole("ce-data", "a"), "properties.ce-data"},
		{"extension of 21 characters", whole("ce-abcdefghijklmnopqrstu", "a"), "properties.ce-abcdefghijklmnopqrstu"},
		{"extension of 20 characters", whole("ce-abcdefghijklmnopqrst", "a"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckCloudEvent("", tc.props)
			var be *Error
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.field != "" && (!errors.As(err, &be) || be.Code != CodeInvalidCloudEvent || be.Field != tc.field):
				t.Fatalf("got %v, want invalid_cloudevent on %s", err, tc.field)
			}
		})
	}
}

// TestSubscriptionFormat: the format defaults to raw, takes cloudevents
// on a push subscription only, refuses anything else, and is kept across
// a restart.
func TestSubscriptionFormat(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	b := openBroker(t, cfg)
	const hook = "https://hooks.example.com/x"
	for _, tc := range []struct {
		name string
		sub  Subscription
		want string // "": refused
	}{
		{"default", Subscription{Group: "g1", Topic: "t", URL: hook}, FormatRaw},
		{"pull default", Subscription{Group: "g2", Topic: "t"}, FormatRaw},
		{"cloudevents", Subscription{Group: "g3", Topic: "t", URL: hook, Format: FormatCloudEvents}, FormatCloudEvents},
		{"raw", Subscription{Group: "g4", Topic: "t", URL: hook, Format: FormatRaw}, FormatRaw},
		{"unknown", Subscription{Group: "g5", Topic: "t", URL: hook, Format: "CloudEvents"}, ""},
		{"pull cloudevents", Subscription{Group: "g6", Topic: "t", Format: FormatCloudEvents}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.sub.MaxRetries = -1
			s, err := b.CreateSubscription(ctx, tc.sub)
			var be *Error
			switch {
			case tc.want == "" && (!errors.As(err, &be) || be.Code != CodeInvalidSubscription || be.Field != "format"):
				t.Fatalf("got %v, want invalid_subscription on format", err)
			case tc.want != "" && err != nil:
				t.Fatal(err)
			case tc.want != "" && s.Format != tc.want:
				t.Fatalf("format %q, want %q", s.Format, tc.want)
			}
		})
	}
	subs, err := b.Subscriptions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	b = openBroker(t, cfg)
	for _, s := range subs {
		got, err := b.Subscription(ctx, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Format != s.Format {
			t.Errorf("%s: format %q after a restart, want %q", s.Group, got.Format, s.Format)
		}
	}
}
