package broker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestTopicTombstones: a topic deleted in a cluster leaves a tombstone
// at its delete's version; another broker's tombstone deletes a copy
// created before it and keeps one created after; expired, invalid and
// far-future tombstones change nothing; and a topic created on a broker
// that has seen a tombstone is created above it, whatever its wall clock.
func TestTopicTombstones(t *testing.T) {
	ctx := context.Background()
	now := time.UnixMilli(1_900_000_000_000).UTC()
	ms := now.UnixMilli()
	type step struct {
		name   string
		tomb   TopicTombstone
		held   bool // the topic is held afterwards
		stored int
	}
	for _, tc := range []step{
		{"a tombstone after the copy's creation deletes it", TopicTombstone{"orders", ms + 5, "broker-y"}, false, 1},
		{"a tombstone before the copy's creation keeps it (a new topic)", TopicTombstone{"orders", ms - 60_000, "broker-y"}, true, 1},
		{"an expired tombstone is not taken", TopicTombstone{"orders", ms - 2*time.Hour.Milliseconds(), "broker-y"}, true, 0},
		{"a tombstone from more than the skew ahead is refused", TopicTombstone{"orders", ms + (MaxVersionSkew + time.Minute).Milliseconds(), "broker-y"}, true, 0},
		{"a system topic's tombstone is refused", TopicTombstone{"%DLQ%g", ms + 5, "broker-y"}, true, 0},
		{"a tombstone of a topic not held is kept", TopicTombstone{"other", ms + 5, "broker-y"}, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := syncBroker(t, now) // orders created at now by the hybrid clock
			st, err := b.ApplyTopicTombstones(ctx, []TopicTombstone{tc.tomb})
			if err != nil {
				t.Fatal(err)
			}
			_, err = b.topicState("orders")
			if held := err == nil; held != tc.held || st.Stored != tc.stored {
				t.Fatalf("after %+v: orders held %v (want %v), stored %d (want %d), stats %+v", tc.tomb, held, tc.held, st.Stored, tc.stored, st)
			}
			again, err := b.ApplyTopicTombstones(ctx, []TopicTombstone{tc.tomb})
			if err != nil || again.Stored != 0 || len(again.Deleted) != 0 {
				t.Fatalf("the same tombstone again changed something: %+v, %v", again, err)
			}
		})
	}

	t.Run("a delete's tombstone, and a topic created after it", func(t *testing.T) {
		b := syncBroker(t, now)
		if err := b.DeleteTopic(ctx, "orders"); err != nil {
			t.Fatal(err)
		}
		ts, err := b.TopicTombstones(ctx)
		if err != nil || len(ts) != 1 || ts[0].Name != "orders" || ts[0].VersionBy != "broker-x" {
			t.Fatalf("tombstones after a delete: %+v, %v", ts, err)
		}
		// A tombstone from a broker whose clock is ahead, seen here: a
		// topic created here afterwards, at the same wall clock, is above
		// it and survives it.
		ahead := TopicTombstone{"orders", ms + 60_000, "broker-y"}
		if _, err := b.ApplyTopicTombstones(ctx, []TopicTombstone{ahead}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.PutTopic(ctx, "orders", TopicSettings{}); err != nil {
			t.Fatal(err)
		}
		st, err := b.ApplyTopicTombstones(ctx, []TopicTombstone{ahead})
		if err != nil || len(st.Deleted) != 0 {
			t.Fatalf("the topic created after the tombstone was seen: %+v, %v; want kept", st, err)
		}
		if err := b.ApplyOwnTopicTombstones(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := b.topicState("orders"); err != nil {
			t.Fatalf("the topic created after its tombstone was deleted by it: %v", err)
		}
		mine, _ := b.TopicTombstones(ctx)
		if got := NewerTopicTombstones(mine, []TopicTombstone{{"orders", ms + 1, "broker-z"}}); len(got) != 1 || got[0] != ahead {
			t.Fatalf("newer tombstones than a lower one: %+v; want %+v", got, ahead)
		}
		if got := NewerTopicTombstones(mine, []TopicTombstone{ahead}); len(got) != 0 {
			t.Fatalf("newer tombstones than the same: %+v; want none", got)
		}
	})
}

// TestTopicTombstoneKeepsLaterPublishes (attack F1): a broker that missed
// a topic's delete (it was down or hung) and then acknowledged publishes
// into its copy does not drop them when the delete's tombstone reaches
// it: the copy is kept, with an ERROR and a metric once per tombstone.
// The same holds after a restart, when only the messages themselves say
// when they were stored. A copy whose last publish came before the
// delete is deleted, as before.
func TestTopicTombstoneKeepsLaterPublishes(t *testing.T) {
	ctx := context.Background()
	base := time.UnixMilli(1_900_000_000_000).UTC()
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "running", true: "after a restart"}[restart], func(t *testing.T) {
			var clock atomic.Int64
			clock.Store(base.UnixMilli())
			cfg := testConfig(t, t.TempDir())
			cfg.Now = func() time.Time { return time.UnixMilli(clock.Load()).UTC() }
			cfg.TombstoneTTL = time.Hour
			b, logs, reg := reopenWatched(t, cfg)
			b.SetName("broker-x")
			if _, _, err := b.PutTopic(ctx, "orders", TopicSettings{Queues: 2}); err != nil {
				t.Fatal(err)
			}
			// The delete is made elsewhere at base+5ms; this broker, not
			// knowing, takes a publish at base+10ms.
			clock.Add(10)
			res := publish(t, b, "orders", &Message{Body: []byte("after the delete")})
			if restart {
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
				b, logs, reg = reopenWatched(t, cfg)
				b.SetName("broker-x")
			}
			tomb := TopicTombstone{"orders", base.UnixMilli() + 5, "broker-y"}
			for range 2 {
				st, err := b.ApplyTopicTombstones(ctx, []TopicTombstone{tomb})
				if err != nil || len(st.Deleted) != 0 {
					t.Fatalf("tombstone before the last publish: %+v, %v; want the copy kept", st, err)
				}
				if err := b.ApplyOwnTopicTombstones(ctx); err != nil {
					t.Fatal(err)
				}
			}
			m, err := b.Message(ctx, res[0].ID)
			if err != nil || string(m.Body) != "after the delete" {
				t.Fatalf("the message acknowledged after the delete: %v, %v", m, err)
			}
			if n := len(logs.lines("ERROR", "the copy is kept")); n != 1 {
				t.Errorf("%d ERROR lines for the kept copy, want 1", n)
			}
			if v := counterValue(t, reg, "postbus_topic_tombstones_kept_total", "", ""); v != 1 {
				t.Errorf("postbus_topic_tombstones_kept_total = %v, want 1", v)
			}
			// A delete made after that publish drops the copy.
			later := TopicTombstone{"orders", base.UnixMilli() + 11, "broker-y"}
			if st, err := b.ApplyTopicTombstones(ctx, []TopicTombstone{later}); err != nil || len(st.Deleted) != 1 {
				t.Fatalf("tombstone after the last publish: %+v, %v; want the copy deleted", st, err)
			}
		})
	}
}
