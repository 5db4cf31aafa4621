package broker

import (
	"context"
	"strings"
	"testing"
)

// ValidateWebhookURL is the only check of a webhook URL's form: the API
// refuses what it refuses, and push checks it again before each delivery.
// Ports 0 and 99999 used to pass here and fail every attempt into the DLQ
// (issue 11, fault 13).
func TestValidateWebhookURL(t *testing.T) {
	tests := []struct {
		url  string
		want string // substring of the error; "" for valid
	}{
		{"https://example.com/hook", ""},
		{"http://example.com:8080/hook?token=abc", ""},
		{"HTTPS://Example.COM/x", ""},
		{"http://[2001:db8::1]:9000/", ""},
		{"http://127.0.0.1/", ""}, // the address is the dialer's business
		{"http://example.com:1/", ""},
		{"http://example.com:65535/", ""},
		{"http://example.com:/", ""}, // an empty port is the scheme's
		{"", "empty"},
		{"/relative/path", "not absolute"},
		{"example.com/hook", "not absolute"},
		{"ftp://example.com/", "scheme"},
		{"javascript:alert(1)", "scheme"},
		{"file:///etc/passwd", "scheme"},
		{"http:opaque", "no host"},
		{"http:///path", "no host"},
		{"http://:80/", "no host"},
		{"https://user:pass@example.com/", "userinfo"},
		{"https://user@example.com/", "userinfo"},
		{"https://example.com/#frag", "fragment"},
		{"http://example.com:0/", "port"},
		{"http://example.com:00/", "port"},
		{"http://example.com:65536/", "port"},
		{"http://example.com:99999/", "port"},
		{"http://example.com:99999999999999999999999/", "port"},
		{"http://[::1]:0/", "port"},
		{"http://exa mple.com/", "invalid"},
		{"http://example.com/\x00", "invalid"},
		{"http://example.com:80a/", "invalid"},
		{"https://example.com/" + strings.Repeat("a", MaxURLLen-20), ""},
		{"https://example.com/" + strings.Repeat("a", MaxURLLen-19), "bytes"},
	}
	for _, tt := range tests {
		name := tt.url
		if len(name) > 60 {
			name = name[:60]
		}
		t.Run(name, func(t *testing.T) {
			err := ValidateWebhookURL(tt.url)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("ValidateWebhookURL(%q) = %v, want nil", tt.url, err)
				}
				return
			}
			if err == nil || CodeOf(err) != CodeInvalidSubscription || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ValidateWebhookURL(%q) = %v, want invalid_subscription containing %q", tt.url, err, tt.want)
			}
		})
	}
}

// A create or an update with an unusable URL is refused and stores
// nothing.
func TestSubscriptionURLRefusedAtCreateAndUpdate(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	ctx := context.Background()
	for _, u := range []string{"http://127.0.0.1:0/hook", "http://127.0.0.1:99999/hook"} {
		if _, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "orders", URL: u, MaxRetries: -1}); CodeOf(err) != CodeInvalidSubscription {
			t.Fatalf("create with %s: %v, want invalid_subscription", u, err)
		}
	}
	if subs, err := b.Subscriptions(ctx); err != nil || len(subs) != 0 {
		t.Fatalf("after refused creates: %d subscriptions, %v", len(subs), err)
	}
	sub, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "orders", URL: "http://127.0.0.1:9/hook", MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	bad := sub
	bad.URL = "http://127.0.0.1:65536/hook"
	if _, err := b.UpdateSubscription(ctx, bad); CodeOf(err) != CodeInvalidSubscription {
		t.Fatalf("update to %s: %v, want invalid_subscription", bad.URL, err)
	}
	if got, err := b.Subscription(ctx, sub.ID); err != nil || got.URL != sub.URL {
		t.Fatalf("after a refused update the URL is %q (%v), want %q", got.URL, err, sub.URL)
	}
}
