package broker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// syncBroker is a broker holding topic orders, its clock fixed at now,
// tombstones living an hour.
func syncBroker(tb testing.TB, now time.Time) *Broker {
	tb.Helper()
	cfg := testConfig(tb, tb.TempDir())
	cfg.Now = func() time.Time { return now }
	cfg.TombstoneTTL = time.Hour
	b := openBroker(tb, cfg)
	b.SetName("broker-x")
	if _, _, err := b.PutTopic(context.Background(), "orders", TopicSettings{Queues: 2}); err != nil {
		tb.Fatal(err)
	}
	return b
}

// liveRecord is a record of a pull subscription of group on orders.
func liveRecord(tb testing.TB, id, group string, at int64, by, filter string) SubscriptionRecord {
	tb.Helper()
	s := Subscription{ID: id, Group: group, Topic: "orders", Filter: filter, MaxRetries: -1, StartFrom: "earliest"}
	s.applyDefaults()
	if err := s.validate(); err != nil {
		tb.Fatal(err)
	}
	m, err := s.toMeta()
	if err != nil {
		tb.Fatal(err)
	}
	m.Version = Version{At: at, By: by}
	m.CreatedAt, m.UpdatedAt = time.UnixMilli(at), time.UnixMilli(at)
	return recordOf(m)
}

func tombRecord(id, group string, at int64, by string) SubscriptionRecord {
	return SubscriptionRecord{ID: id, Group: group, Topic: "orders", Version: at, VersionBy: by, Deleted: true}
}

// recordState describes what b holds of id: "live <filter> <version>",
// "tombstone <version>" or "none".
func recordState(tb testing.TB, b *Broker, id string) string {
	tb.Helper()
	ctx := context.Background()
	s, err := b.Subscription(ctx, id)
	if err == nil {
		return fmt.Sprintf("live %s %s", s.Filter, s.Version)
	}
	if !errors.Is(err, ErrSubscriptionNotFound) {
		tb.Fatal(err)
	}
	t, err := b.meta.SubscriptionTombstone(ctx, id)
	if errors.Is(err, meta.ErrNotFound) {
		return "none"
	}
	if err != nil {
		tb.Fatal(err)
	}
	return "tombstone " + t.Version.String()
}

// TestSubscriptionRecordMerge is the conflict rule: per id the highest
// version wins; at equal version a tombstone wins over a live record, then
// the greater broker name; an expired tombstone is neither kept nor taken;
// a version too far ahead is refused; a winning live record replaces
// another id of the same group and topic.
func TestSubscriptionRecordMerge(t *testing.T) {
	now := time.Now().Truncate(time.Millisecond)
	v := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }
	ver := func(d time.Duration, by string) string { return Version{At: v(d), By: by}.String() }
	tests := []struct {
		name     string
		before   []func(tb testing.TB) SubscriptionRecord
		incoming func(tb testing.TB) SubscriptionRecord
		want     map[string]string // id -> recordState
		stats    SyncStats
	}{
		{name: "new live record creates",
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "a")
			},
			want: map[string]string{"s1": "live a " + ver(-time.Minute, "broker-a")}, stats: SyncStats{Applied: 1}},
		{name: "new tombstone is kept",
			incoming: func(tb testing.TB) SubscriptionRecord { return tombRecord("s1", "g", v(-time.Minute), "broker-a") },
			want:     map[string]string{"s1": "tombstone " + ver(-time.Minute, "broker-a")}, stats: SyncStats{Tombstones: 1}},
		{name: "higher version replaces",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-2*time.Minute), "broker-z", "a")
			}},
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "b")
			},
			want: map[string]string{"s1": "live b " + ver(-time.Minute, "broker-a")}, stats: SyncStats{Applied: 1}},
		{name: "lower version loses",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "a")
			}},
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-2*time.Minute), "broker-z", "b")
			},
			want: map[string]string{"s1": "live a " + ver(-time.Minute, "broker-a")}, stats: SyncStats{Stale: 1}},
		{name: "the same record again changes nothing",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "a")
			}},
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "a")
			},
			want: map[string]string{"s1": "live a " + ver(-time.Minute, "broker-a")}, stats: SyncStats{Stale: 1}},
		{name: "equal version: greater broker name wins",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "a")
			}},
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-b", "b")
			},
			want: map[string]string{"s1": "live b " + ver(-time.Minute, "broker-b")}, stats: SyncStats{Applied: 1}},
		{name: "equal version: smaller broker name loses",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-b", "b")
			}},
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "a")
			},
			want: map[string]string{"s1": "live b " + ver(-time.Minute, "broker-b")}, stats: SyncStats{Stale: 1}},
		{name: "equal version: tombstone wins over live",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-z", "a")
			}},
			incoming: func(tb testing.TB) SubscriptionRecord { return tombRecord("s1", "g", v(-time.Minute), "broker-a") },
			want:     map[string]string{"s1": "tombstone " + ver(-time.Minute, "broker-a")}, stats: SyncStats{Tombstones: 1}},
		{name: "equal version: live loses to tombstone",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord { return tombRecord("s1", "g", v(-time.Minute), "broker-a") }},
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-z", "a")
			},
			want: map[string]string{"s1": "tombstone " + ver(-time.Minute, "broker-a")}, stats: SyncStats{Stale: 1}},
		{name: "older tombstone loses",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "a")
			}},
			incoming: func(tb testing.TB) SubscriptionRecord { return tombRecord("s1", "g", v(-2*time.Minute), "broker-z") },
			want:     map[string]string{"s1": "live a " + ver(-time.Minute, "broker-a")}, stats: SyncStats{Stale: 1}},
		{name: "later create wins over tombstone",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord { return tombRecord("s1", "g", v(-2*time.Minute), "broker-z") }},
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "a")
			},
			want: map[string]string{"s1": "live a " + ver(-time.Minute, "broker-a")}, stats: SyncStats{Applied: 1}},
		{name: "expired tombstone is not taken",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-3*time.Hour), "broker-a", "a")
			}},
			incoming: func(tb testing.TB) SubscriptionRecord { return tombRecord("s1", "g", v(-2*time.Hour), "broker-z") },
			want:     map[string]string{"s1": "live a " + ver(-3*time.Hour, "broker-a")}, stats: SyncStats{Skipped: 1}},
		{name: "version too far ahead is refused",
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(time.Hour), "broker-a", "a")
			},
			want: map[string]string{"s1": "none"}, stats: SyncStats{Refused: 1}},
		{name: "other topic is skipped",
			incoming: func(tb testing.TB) SubscriptionRecord {
				r := liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "a")
				r.Topic = "elsewhere"
				return r
			},
			want: map[string]string{"s1": "none"}, stats: SyncStats{Skipped: 1}},
		{name: "later record of another id replaces the group's subscription",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-2*time.Minute), "broker-a", "a")
			}},
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s2", "g", v(-time.Minute), "broker-b", "b")
			},
			want:  map[string]string{"s1": "tombstone " + ver(-time.Minute, "broker-b"), "s2": "live b " + ver(-time.Minute, "broker-b")},
			stats: SyncStats{Applied: 1}},
		{name: "earlier record of another id loses to the group's subscription",
			before: []func(tb testing.TB) SubscriptionRecord{func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s1", "g", v(-time.Minute), "broker-a", "a")
			}},
			incoming: func(tb testing.TB) SubscriptionRecord {
				return liveRecord(tb, "s2", "g", v(-2*time.Minute), "broker-b", "b")
			},
			want: map[string]string{"s1": "live a " + ver(-time.Minute, "broker-a"), "s2": "none"}, stats: SyncStats{Stale: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			b := syncBroker(t, now)
			for _, f := range tt.before {
				if st, err := b.ApplySubscriptionRecords(ctx, []SubscriptionRecord{f(t)}); err != nil || st.Applied+st.Tombstones != 1 {
					t.Fatalf("setting up: %+v, %v", st, err)
				}
			}
			st, err := b.ApplySubscriptionRecords(ctx, []SubscriptionRecord{tt.incoming(t)})
			if err != nil {
				t.Fatal(err)
			}
			if st != tt.stats {
				t.Errorf("stats %+v, want %+v", st, tt.stats)
			}
			for id, want := range tt.want {
				if got := recordState(t, b, id); got != want {
					t.Errorf("%s: %s, want %s", id, got, want)
				}
			}
		})
	}
}

// TestSubscriptionChangesVersioned: every local change mints a higher
// version (above any seen from elsewhere too), a delete leaves a
// tombstone that expires with the tombstone lifetime, a coordinator's
// version (WithVersion) is stored as given, and a change older than the
// stored record does not replace it.
func TestSubscriptionChangesVersioned(t *testing.T) {
	now := time.Now().Truncate(time.Millisecond)
	// The broker's background loops read the clock too: it moves
	// atomically.
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	cfg := testConfig(t, t.TempDir())
	cfg.Now = func() time.Time { return *clock.Load() }
	cfg.TombstoneTTL = time.Hour
	b := openBroker(t, cfg)
	b.SetName("broker-x")
	ctx := context.Background()
	s, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "orders", MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	if s.Version.By != "broker-x" || s.Version.At < now.UnixMilli() {
		t.Fatalf("created at version %s, want broker-x's at or after %d", s.Version, now.UnixMilli())
	}
	// The clock does not move: versions still increase.
	s.Filter = "a"
	u1, err := b.UpdateSubscription(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if !meta.Wins(u1.Version, false, s.Version, false) {
		t.Errorf("update at %s does not win over the create's %s", u1.Version, s.Version)
	}
	// A version seen from elsewhere, ahead of this clock: the next local
	// change is above it.
	ahead := Version{At: now.Add(time.Minute).UnixMilli(), By: "broker-a"}
	if err := b.CheckVersion(ahead); err != nil {
		t.Fatal(err)
	}
	p, err := b.SetSubscriptionState(ctx, s.ID, StatePaused, "")
	if err != nil {
		t.Fatal(err)
	}
	if p.Version.At <= ahead.At {
		t.Errorf("pause at %s, not above the version seen %s", p.Version, ahead)
	}
	// A coordinator's version is taken as given; one older than stored
	// leaves the stored record.
	given := Version{At: p.Version.At + 5, By: "broker-a"}
	r, err := b.SetSubscriptionState(WithVersion(ctx, given), s.ID, StateActive, "")
	if err != nil || r.Version != given || r.State != StateActive {
		t.Fatalf("resume with the coordinator's version = %+v, %v; want active at %s", r, err, given)
	}
	old := Version{At: given.At - 1, By: "broker-z"}
	r, err = b.SetSubscriptionState(WithVersion(ctx, old), s.ID, StatePaused, "")
	if err != nil || r.Version != given || r.State != StateActive {
		t.Errorf("a change older than the stored one = %+v, %v; want the stored one (active at %s) kept", r, err, given)
	}
	if err := b.DeleteSubscription(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	state := recordState(t, b, s.ID)
	recs, err := b.SubscriptionRecords(ctx, []string{"orders"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs["orders"]) != 1 || !recs["orders"][0].Deleted || !meta.Wins(recs["orders"][0].V(), true, given, false) {
		t.Fatalf("after the delete: %s, records %+v; want one tombstone above %s", state, recs["orders"], given)
	}
	// Past the lifetime the tombstone is no longer sent, and purged.
	later := now.Add(2 * time.Hour)
	clock.Store(&later)
	if recs, _ := b.SubscriptionRecords(ctx, []string{"orders"}); len(recs["orders"]) != 0 {
		t.Errorf("an expired tombstone is still sent: %+v", recs["orders"])
	}
	b.purgeTombstones(ctx)
	if got := recordState(t, b, s.ID); got != "none" {
		t.Errorf("after the purge: %s, want none", got)
	}
}

// TestSubscriptionRecordCarriesFormat: another broker's copy of a push
// subscription, taken from its record, keeps the delivery format.
func TestSubscriptionRecordCarriesFormat(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	from, to := syncBroker(t, now), syncBroker(t, now)
	s, err := from.CreateSubscription(ctx, Subscription{Group: "billing", Topic: "orders", URL: "https://hooks.example.com/x",
		MaxRetries: -1, Format: FormatCloudEvents})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := from.SubscriptionRecords(ctx, []string{"orders"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := to.ApplySubscriptionRecords(ctx, recs["orders"]); err != nil {
		t.Fatal(err)
	}
	got, err := to.Subscription(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Format != FormatCloudEvents {
		t.Fatalf("the copy's format is %q, want %q", got.Format, FormatCloudEvents)
	}
}
