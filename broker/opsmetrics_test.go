package broker

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestTopicPublishMetricsCap: publishes are counted by topic, each of the
// first MetricsTopics topics under its own label and the rest under
// "other" (one WARN line when that starts), so the series stay bounded.
func TestTopicPublishMetricsCap(t *testing.T) {
	cfg, logs := withLogs(testConfig(t, t.TempDir()))
	reg := prometheus.NewRegistry()
	cfg.Registerer, cfg.MetricsTopics = reg, 2
	b := openBroker(t, cfg)
	for _, p := range []struct {
		topic string
		n     int
	}{{"a", 2}, {"b", 1}, {"c", 1}, {"d", 3}, {"a", 1}} {
		msgs := make([]*Message, p.n)
		for i := range msgs {
			msgs[i] = msg("12345")
		}
		publish(t, b, p.topic, msgs...)
	}
	for _, tt := range []struct {
		label         string
		messages, bts float64
	}{{"a", 3, 15}, {"b", 1, 5}, {"other", 4, 20}, {"c", -1, -1}, {"d", -1, -1}} {
		if got := counterValue(t, reg, "postbus_topic_published_messages_total", "topic", tt.label); got != tt.messages {
			t.Errorf("postbus_topic_published_messages_total{topic=%q} = %v, want %v", tt.label, got, tt.messages)
		}
		if got := counterValue(t, reg, "postbus_topic_published_bytes_total", "topic", tt.label); got != tt.bts {
			t.Errorf("postbus_topic_published_bytes_total{topic=%q} = %v, want %v", tt.label, got, tt.bts)
		}
	}
	if n := strings.Count(logs.String(), `counted under topic=\"other\"`); n != 1 {
		t.Errorf("%d WARN lines about the cap, want 1:\n%s", n, logs.String())
	}
}

// gaugeOf reads a gauge with the given labels; -1 when it is absent.
func gaugeOf(tb testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue next
				}
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// TestGroupMetrics: pull groups have lag, in flight, dead letters,
// connected long-pollers and the age of their oldest unconsumed message
// in /metrics, per group.
func TestGroupMetrics(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	var clock atomic.Int64
	clock.Store(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	cfg.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	b := openBroker(t, cfg)
	publish(t, b, "orders", msg("one"), msg("two"), msg("three"))
	for _, g := range []string{"workers", "slow"} {
		if _, err := b.CreateSubscription(ctx, Subscription{Group: g, Topic: "orders", StartFrom: "earliest", MaxRetries: 0}); err != nil {
			t.Fatal(err)
		}
	}
	clock.Add(int64(100 * time.Second))

	pulled := pullN(t, b, "workers", "orders", 1, 0, time.Minute)
	if len(pulled) != 1 {
		t.Fatalf("pulled %d, want 1", len(pulled))
	}
	g := func(name string, labels ...string) float64 {
		m := map[string]string{}
		for i := 0; i+1 < len(labels); i += 2 {
			m[labels[i]] = labels[i+1]
		}
		return gaugeOf(t, reg, name, m)
	}
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"postbus_group_lag", []string{"group", "workers", "topic", "orders"}, 2},
		{"postbus_group_lag", []string{"group", "slow", "topic", "orders"}, 3},
		{"postbus_group_in_flight", []string{"group", "workers", "topic", RetryTopic("workers", "orders")}, 1},
		{"postbus_group_dead_letters", []string{"group", "workers"}, 0},
		{"postbus_group_held_polls", []string{"group", "workers"}, 0},
		{"postbus_group_oldest_unconsumed_seconds", []string{"group", "slow", "topic", "orders"}, 100},
		{"postbus_group_oldest_unconsumed_seconds", []string{"group", "workers", "topic", "orders"}, 100},
		{"postbus_group_metrics_errors", nil, 0},
	} {
		if got := g(tt.name, tt.labels...); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}

	// A held long poll is a connected puller of its group.
	if _, err := b.CreateSubscription(ctx, Subscription{Group: "idle", Topic: "orders", StartFrom: "latest"}); err != nil {
		t.Fatal(err)
	}
	pollCtx, cancelPoll := context.WithCancel(ctx)
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		_, _ = b.Pull(pollCtx, "idle", "orders", 1, 30*time.Second, time.Minute) // idle starts at the end: nothing to give
	}()
	t.Cleanup(func() { cancelPoll(); <-polled })
	waitGauge(t, func() bool { return g("postbus_group_held_polls", "group", "idle") == 1 }, "the held poll of idle to be counted")

	// A message nacked past max_retries (0) is a dead letter of the group
	// when it comes back.
	sub, err := b.Subscription(ctx, subscriptionID(t, b, "workers", "orders"))
	if err != nil {
		t.Fatal(err)
	}
	sub.MaxRetries = 0
	if _, err := b.UpdateSubscription(ctx, sub); err != nil {
		t.Fatal(err)
	}
	if err := b.Nack(ctx, "workers", []string{pulled[0].Receipt}, 0); err != nil {
		t.Fatal(err)
	}
	waitGauge(t, func() bool {
		pullN(t, b, "workers", "orders", 2, 0, time.Minute)
		return g("postbus_group_dead_letters", "group", "workers") == 1
	}, "the nacked message to be dead-lettered")
	if got := g("postbus_group_lag", "group", "workers", "topic", "orders"); got != 0 {
		t.Errorf("lag of workers after pulling the rest: %v, want 0", got)
	}
	// The names keep Prometheus's conventions (what promtool checks).
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}

func waitGauge(tb testing.TB, cond func() bool, what string) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("waited 20s for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
