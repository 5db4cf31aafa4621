package broker

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// oldestGauge is postbus_group_oldest_unacked_seconds for group and topic
// in reg, or -1 when it is not exported.
func oldestGauge(tb testing.TB, reg *prometheus.Registry, group, topic string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "postbus_group_oldest_unacked_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["group"] == group && labels["topic"] == topic {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// TestOldestUnackedAge: the groups API and
// postbus_group_oldest_unacked_seconds give how long ago the oldest
// message out to a pull group and not acked was published, through pulls,
// acks, a nack's wait and a restart, for unordered and ordered groups.
func TestOldestUnackedAge(t *testing.T) {
	for _, ordered := range []bool{false, true} {
		name := "unordered"
		if ordered {
			name = "ordered"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				reg := prometheus.NewRegistry()
				w := newPullEachWorld(t, dir, ordered, func(c *Config) { c.Registerer = reg })
				check := func(step string, want time.Duration) {
					t.Helper()
					g, err := w.b.Group(ctx, "g")
					if err != nil {
						t.Fatal(err)
					}
					if g.OldestUnacked != want {
						t.Errorf("%s: group's oldest unacked %s, want %s", step, g.OldestUnacked, want)
					}
					wantGauge := want.Seconds()
					if want == 0 {
						wantGauge = -1 // not exported
					}
					if got := oldestGauge(t, reg, "g", "t"); got != wantGauge {
						t.Errorf("%s: postbus_group_oldest_unacked_seconds %v, want %v", step, got, wantGauge)
					}
				}
				check("nothing published", 0)
				publish(t, w.b, "t", msg("m0"))
				time.Sleep(5 * time.Second)
				publish(t, w.b, "t", msg("m1"))
				check("published, not pulled", 0)
				first := pullN(t, w.b, "g", "t", 1, 0, time.Minute)
				if len(first) != 1 || string(first[0].Body) != "m0" {
					t.Fatalf("pulled %q", bodies(first))
				}
				time.Sleep(10 * time.Second)
				check("m0 out", 15*time.Second)
				reg = prometheus.NewRegistry() // the series of the broker opened again
				w.cfg.Registerer = reg
				w.reopen()
				check("m0 out, after a restart", 15*time.Second)
				if err := w.b.Ack(ctx, "g", receipts(first)); err != nil {
					t.Fatal(err)
				}
				check("m0 acked", 0)
				second := pullN(t, w.b, "g", "t", 1, 0, time.Minute)
				if len(second) != 1 || string(second[0].Body) != "m1" {
					t.Fatalf("pulled %q", bodies(second))
				}
				if err := w.b.Nack(ctx, "g", receipts(second), time.Minute); err != nil {
					t.Fatal(err)
				}
				time.Sleep(20 * time.Second)
				check("m1 waiting for its retry", 30*time.Second)
				time.Sleep(41 * time.Second)
				again := pullN(t, w.b, "g", "t", 1, 0, time.Minute)
				if len(again) != 1 || string(again[0].Body) != "m1" {
					t.Fatalf("pulled %q after the nack's delay", bodies(again))
				}
				if err := w.b.Ack(ctx, "g", receipts(again)); err != nil {
					t.Fatal(err)
				}
				check("all acked", 0)
			})
		})
	}
}
