package push

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDeliverCloudEvents: a delivery in format cloudevents carries the
// binary mode's ce-* headers, ce-id always the message id: the event's
// own others for a message published as one (its ce- properties not
// repeated as Postbus-Prop-*), one made from the message otherwise; values percent-encoded as the HTTP binding says;
// signed as any delivery. Format raw sends none.
func TestDeliverCloudEvents(t *testing.T) {
	born := time.Date(2026, 5, 6, 7, 8, 9, 10, time.UTC)
	event := map[string]string{"ce-specversion": "1.0", "ce-id": "ev-1", "ce-source": "https://src.example/a b",
		"ce-type": "com.example.t", "ce-subject": `50% "off" café`, "ce-time": "2026-01-02T03:04:05Z", "ce-tenant": "acme", "Region": "eu"}
	noTime := map[string]string{"ce-specversion": "1.0", "ce-id": "ev-2", "ce-source": "/s", "ce-type": "t"}
	for _, tc := range []struct {
		name   string
		format string
		tag    string
		props  map[string]string
		want   map[string]string // "" : absent
	}{
		{"event", broker.FormatCloudEvents, "tag-not-type", event, map[string]string{
			"ce-specversion": "1.0", "ce-id": "msg_0001", "ce-source": "https://src.example/a%20b", "ce-type": "com.example.t",
			"ce-subject": "50%25%20%22off%22%20caf%C3%A9", "ce-time": "2026-01-02T03:04:05Z", "ce-tenant": "acme",
			"Postbus-Prop-Region": "eu", "Postbus-Prop-Ce-Id": "", "Postbus-Prop-Ce-Tenant": "", "Postbus-Message-Id": "msg_0001"}},
		{"event without a time", broker.FormatCloudEvents, "", noTime, map[string]string{
			"ce-id": "msg_0001", "ce-time": "2026-05-06T07:08:09.00000001Z", "ce-subject": ""}},
		{"plain message", broker.FormatCloudEvents, "created", map[string]string{"Region": "eu"}, map[string]string{
			"ce-specversion": "1.0", "ce-id": "msg_0001", "ce-source": "/topics/orders", "ce-type": "created",
			"ce-time": "2026-05-06T07:08:09.00000001Z", "ce-subject": "", "Postbus-Prop-Region": "eu"}},
		{"plain message without a tag", broker.FormatCloudEvents, "", nil, map[string]string{"ce-type": DefaultCEType}},
		// Stored before ce- properties were checked: not an event, so
		// made one from the message, and its ce- properties not lost.
		{"partial event", broker.FormatCloudEvents, "created", map[string]string{"ce-id": "x", "ce-tenant": "acme"}, map[string]string{
			"ce-id": "msg_0001", "ce-source": "/topics/orders", "ce-type": "created", "ce-tenant": "",
			"Postbus-Prop-Ce-Id": "x", "Postbus-Prop-Ce-Tenant": "acme"}},
		{"raw", broker.FormatRaw, "created", event, map[string]string{"ce-id": "", "ce-specversion": "", "Postbus-Prop-Ce-Id": "ev-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := make(chan http.Header, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				ch <- r.Header.Clone()
			}))
			defer srv.Close()
			c := newTestClient(t, ClientConfig{AllowPrivate: true})
			d := testDelivery(srv.URL + "/hook")
			d.Format, d.Tag, d.Properties, d.BornAt = tc.format, tc.tag, tc.props, born
			now := time.Unix(1_800_000_000, 0)
			if res := c.Deliver(context.Background(), d, nil, now); res.Outcome != Delivered {
				t.Fatalf("Deliver = %+v", res)
			}
			h := <-ch
			for k, v := range tc.want {
				if got := h.Values(k); (v == "" && len(got) != 0) || (v != "" && (len(got) != 1 || got[0] != v)) {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if err := VerifyStandardWebhook(testSecret, h, d.Body, time.Minute, now); err != nil {
				t.Errorf("signature: %v", err)
			}
		})
	}
}

func TestEncodeCEHeader(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain/ascii-_.~!#$&'()*+,;=:@[]", "plain/ascii-_.~!#$&'()*+,;=:@[]"},
		{"a b", "a%20b"},
		{`"q"`, "%22q%22"},
		{"100%", "100%25"},
		{"é", "%C3%A9"},
		{"tab\there", "tab%09here"},
		{"\x7f", "%7F"},
		{"", ""},
	} {
		if got := encodeCEHeader(tc.in); got != tc.want {
			t.Errorf("encodeCEHeader(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func ExampleDelivery_cloudEvents() {
	h := http.Header{}
	cloudEventHeaders(h, Delivery{MsgID: "4Ttn2ZCzJmUUDkvb3QhxtJ", Topic: "orders", Tag: "order.created",
		BornAt: time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)}, false)
	for _, k := range []string{"ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time"} {
		fmt.Printf("%s: %s\n", k, h[k][0])
	}
	// Output:
	// ce-specversion: 1.0
	// ce-id: 4Ttn2ZCzJmUUDkvb3QhxtJ
	// ce-source: /topics/orders
	// ce-type: order.created
	// ce-time: 2026-01-02T15:04:05Z
}

// TestPartialEventCounted: a cloudevents delivery of a message whose ce-
// properties are not a whole event is logged at ERROR and counted.
func TestPartialEventCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	d := NewDispatcher(DispatcherConfig{Registerer: reg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	l := &loop{d: d, sub: broker.Subscription{ID: "sub_1", Format: broker.FormatCloudEvents}, log: d.logger}
	l.checkEvent(&broker.Message{ID: "m1", Properties: map[string]string{"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}})
	l.checkEvent(&broker.Message{ID: "m2", Properties: map[string]string{"Region": "eu"}})
	if got := testutil.ToFloat64(d.metrics.partial.WithLabelValues("sub_1")); got != 0 {
		t.Fatalf("whole events and plain messages counted: %v", got)
	}
	l.checkEvent(&broker.Message{ID: "m3", Properties: map[string]string{"ce-id": "1"}})
	if got := testutil.ToFloat64(d.metrics.partial.WithLabelValues("sub_1")); got != 1 {
		t.Fatalf("postbus_push_partial_cloudevents_total = %v, want 1", got)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "msg_id=m3") {
		t.Fatalf("no ERROR line for m3: %s", logs.String())
	}
}
