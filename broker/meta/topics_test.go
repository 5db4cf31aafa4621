package meta

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

// TestTopicCRUD runs its steps in order against one store: each step sees
// what the previous ones left.
func TestTopicCRUD(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	s := openStore(t, dbPath(t), withClock(clk))
	t0 := clk.Now()
	t1 := t0.Add(time.Minute)

	names := func(ts []Topic) []string {
		var out []string
		for _, tp := range ts {
			out = append(out, tp.Name)
		}
		return out
	}

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"create", func(t *testing.T) {
			got, err := s.CreateTopic(ctx, Topic{Name: "orders", Queues: 4, Retention: 72 * time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			want := Topic{Name: "orders", Queues: 4, Retention: 72 * time.Hour, CreatedAt: t0, UpdatedAt: t0}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("CreateTopic = %+v, want %+v", got, want)
			}
		}},
		{"create duplicate", func(t *testing.T) {
			_, err := s.CreateTopic(ctx, Topic{Name: "orders", Queues: 8})
			if !errors.Is(err, ErrExists) {
				t.Fatalf("err = %v, want ErrExists", err)
			}
			got, err := s.Topic(ctx, "orders")
			if err != nil {
				t.Fatal(err)
			}
			if got.Queues != 4 {
				t.Errorf("duplicate create changed queues to %d", got.Queues)
			}
		}},
		{"create invalid", func(t *testing.T) {
			for _, tp := range []Topic{
				{Name: "", Queues: 1},
				{Name: "a\x00b", Queues: 1},
				{Name: "q0", Queues: 0},
				{Name: "q-1", Queues: -1},
				{Name: "q1025", Queues: MaxQueues + 1},
				{Name: "neg", Queues: 1, Retention: -time.Second},
			} {
				if _, err := s.CreateTopic(ctx, tp); !errors.Is(err, ErrInvalid) {
					t.Errorf("CreateTopic(%+v) err = %v, want ErrInvalid", tp, err)
				}
				if _, _, err := s.PutTopic(ctx, tp); !errors.Is(err, ErrInvalid) {
					t.Errorf("PutTopic(%+v) err = %v, want ErrInvalid", tp, err)
				}
			}
		}},
		{"create at the queue limit", func(t *testing.T) {
			if _, err := s.CreateTopic(ctx, Topic{Name: "wide", Queues: MaxQueues}); err != nil {
				t.Fatal(err)
			}
		}},
		{"get", func(t *testing.T) {
			got, err := s.Topic(ctx, "orders")
			if err != nil {
				t.Fatal(err)
			}
			want := Topic{Name: "orders", Queues: 4, Retention: 72 * time.Hour, CreatedAt: t0, UpdatedAt: t0}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Topic = %+v, want %+v", got, want)
			}
		}},
		{"get missing", func(t *testing.T) {
			if _, err := s.Topic(ctx, "nope"); !errors.Is(err, ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
		}},
		{"put creates", func(t *testing.T) {
			got, created, err := s.PutTopic(ctx, Topic{Name: "Audit", Queues: 2, Retention: 1500 * time.Microsecond})
			if err != nil {
				t.Fatal(err)
			}
			want := Topic{Name: "Audit", Queues: 2, Retention: time.Millisecond, CreatedAt: t0, UpdatedAt: t0}
			if !created || !reflect.DeepEqual(got, want) {
				t.Errorf("PutTopic = %+v, %v; want %+v, true", got, created, want)
			}
		}},
		{"list ordered by name", func(t *testing.T) {
			for _, n := range []string{"zeta", "alpha", "beta"} {
				if _, err := s.CreateTopic(ctx, Topic{Name: n, Queues: 1}); err != nil {
					t.Fatal(err)
				}
			}
			ts, err := s.Topics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"Audit", "alpha", "beta", "orders", "wide", "zeta"} // byte order
			if got := names(ts); !reflect.DeepEqual(got, want) {
				t.Errorf("Topics = %v, want %v", got, want)
			}
		}},
		{"put same is a no-op", func(t *testing.T) {
			clk.Advance(time.Minute)
			got, created, err := s.PutTopic(ctx, Topic{Name: "orders", Queues: 4, Retention: 72 * time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			if created || !got.UpdatedAt.Equal(t0) {
				t.Errorf("PutTopic unchanged = %+v, created %v; want UpdatedAt %v, not created", got, created, t0)
			}
		}},
		{"put grows", func(t *testing.T) {
			got, created, err := s.PutTopic(ctx, Topic{Name: "orders", Queues: 16, Retention: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			want := Topic{Name: "orders", Queues: 16, Retention: time.Hour, CreatedAt: t0, UpdatedAt: t1}
			if created || !reflect.DeepEqual(got, want) {
				t.Errorf("PutTopic = %+v, %v; want %+v, false", got, created, want)
			}
			if stored, err := s.Topic(ctx, "orders"); err != nil || !reflect.DeepEqual(stored, want) {
				t.Errorf("stored = %+v, %v; want %+v", stored, err, want)
			}
		}},
		{"put shrink refused", func(t *testing.T) {
			_, _, err := s.PutTopic(ctx, Topic{Name: "orders", Queues: 8, Retention: 2 * time.Hour})
			if !errors.Is(err, ErrQueuesShrink) {
				t.Fatalf("err = %v, want ErrQueuesShrink", err)
			}
			got, err := s.Topic(ctx, "orders")
			if err != nil {
				t.Fatal(err)
			}
			if got.Queues != 16 || got.Retention != time.Hour {
				t.Errorf("refused shrink changed the topic: %+v", got)
			}
		}},
		{"delete cascades offsets", func(t *testing.T) {
			if err := s.CommitOffsets(ctx, []Offset{
				{Group: "g1", Topic: "orders", Queue: 0, Next: 5},
				{Group: "g2", Topic: "orders", Queue: 15, Next: 9},
				{Group: "g1", Topic: "alpha", Queue: 0, Next: 3},
			}); err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteTopic(ctx, "orders"); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Topic(ctx, "orders"); !errors.Is(err, ErrNotFound) {
				t.Errorf("after delete: err = %v, want ErrNotFound", err)
			}
			offs, err := s.AllOffsets(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(offs) != 1 || offs[0].Topic != "alpha" {
				t.Errorf("offsets after delete = %+v, want only alpha's", offs)
			}
		}},
		{"delete missing", func(t *testing.T) {
			if err := s.DeleteTopic(ctx, "orders"); !errors.Is(err, ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
		}},
		{"recreate after delete", func(t *testing.T) {
			got, created, err := s.PutTopic(ctx, Topic{Name: "orders", Queues: 2})
			if err != nil || !created || got.Queues != 2 {
				t.Errorf("PutTopic = %+v, %v, %v; want a new 2-queue topic", got, created, err)
			}
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.run) {
			t.FailNow() // later steps depend on this one
		}
	}
}

// TestTopicLogStart: a topic's log start is set when it is created, kept
// by updates, and read back after a reopen; it tells a topic from a deleted
// one of the same name, so it must never change while the topic lives.
func TestTopicLogStart(t *testing.T) {
	ctx := context.Background()
	path := dbPath(t)
	s := openStore(t, path)
	if _, created, err := s.PutTopic(ctx, Topic{Name: "orders", Queues: 1, LogStart: 4096}); err != nil || !created {
		t.Fatalf("PutTopic = created %v, %v", created, err)
	}
	got, _, err := s.PutTopic(ctx, Topic{Name: "orders", Queues: 2, LogStart: 9999})
	if err != nil {
		t.Fatal(err)
	}
	if got.LogStart != 4096 {
		t.Errorf("after an update LogStart = %d, want 4096", got.LogStart)
	}
	if err := s.DeleteTopic(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.PutTopic(ctx, Topic{Name: "orders", Queues: 1, LogStart: 8192}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path)
	got, err = s.Topic(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	if got.LogStart != 8192 {
		t.Errorf("re-created topic after reopen: LogStart = %d, want 8192", got.LogStart)
	}
}
