package push

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/postbus/postbus/broker"
	"github.com/prometheus/client_golang/prometheus"
)

// gathered returns the value of the series name{labels} in reg, summing
// counters and gauges over any other labels; -1 when there is none.
func gathered(tb testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	total, found := 0.0, false
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				ok := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						ok = true
					}
				}
				if !ok {
					continue series
				}
			}
			found = true
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	if !found {
		return -1
	}
	return total
}

// TestPushMetrics: attempts, retries and lag per subscription reach the
// registry that /metrics serves; a delivery is no retry (every ack used to
// count one in postbus_push_retries_total).
func TestPushMetrics(t *testing.T) {
	r := newRigRun(t, false)
	reg := prometheus.NewRegistry()
	client := NewClient(ClientConfig{AllowPrivate: true})
	defer client.Close()
	d := NewDispatcher(DispatcherConfig{Broker: r.b, Client: client, Key: r.key, Registerer: reg})
	s := newSink(t, func(_ *http.Request, n int) int {
		if n == 1 {
			return 500
		}
		return 200
	})
	sub := r.subscribe(t, broker.Subscription{Group: "m", Topic: "t", URL: s.URL, RetryDelays: []time.Duration{10 * time.Millisecond}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for i := 0; i < 5; i++ {
		r.publish(t, "t", &broker.Message{Body: []byte("x")})
	}
	waitUntil(t, 10*time.Second, "attempts in the metrics", func() bool {
		return gathered(t, reg, "postbus_push_attempts_total", map[string]string{"subscription": sub.ID}) >= 1
	})
	if v := gathered(t, reg, "postbus_push_lag_messages", map[string]string{"subscription": sub.ID}); v < 0 {
		t.Fatal("no lag series for the subscription")
	}
	if v := gathered(t, reg, "postbus_push_attempt_seconds", nil); v < 0 {
		t.Fatal("no attempt latency histogram")
	}
	waitUntil(t, 10*time.Second, "every message delivered", func() bool {
		return gathered(t, reg, "postbus_push_attempts_total", map[string]string{"subscription": sub.ID, "outcome": "delivered"}) == 5
	})
	if v := gathered(t, reg, "postbus_push_retries_total", map[string]string{"subscription": sub.ID}); v != 1 {
		t.Fatalf("postbus_push_retries_total = %v after one 500 and five deliveries, want 1", v)
	}
	if v := gathered(t, reg, "postbus_push_dead_letters_total", map[string]string{"subscription": sub.ID}); v > 0 {
		t.Fatalf("postbus_push_dead_letters_total = %v, want none", v)
	}
}
