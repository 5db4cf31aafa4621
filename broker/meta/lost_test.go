package meta

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// TestFresh: Fresh tells a database whose schema this Open created (a
// missing file, or one whose only committed content was lost) from one
// that already held it.
func TestFresh(t *testing.T) {
	ctx := context.Background()
	path := dbPath(t)
	s := openStore(t, path)
	if !s.Fresh() {
		t.Fatal("new file: Fresh = false")
	}
	if _, err := s.CreateTopic(ctx, Topic{Name: "orders", Queues: 2}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s := openStore(t, path); s.Fresh() {
		t.Fatal("reopened database: Fresh = true")
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(path + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	if s := openStore(t, path); !s.Fresh() {
		t.Fatal("database deleted and recreated: Fresh = false")
	}
}

// TestDeleteTopicLeavesTombstone: a deleted topic is remembered with the
// time of its latest deletion, so the broker can tell its leftovers from a
// topic the database lost; a failed delete records nothing.
func TestDeleteTopicLeavesTombstone(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	s := openStore(t, dbPath(t), withClock(clk))
	for _, name := range []string{"orders", "payments"} {
		if _, err := s.CreateTopic(ctx, Topic{Name: name, Queues: 1}); err != nil {
			t.Fatal(err)
		}
	}
	t0 := clk.Now()
	if err := s.DeleteTopic(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTopic(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteTopic(nope) = %v, want ErrNotFound", err)
	}
	clk.Advance(time.Hour)
	if _, err := s.CreateTopic(ctx, Topic{Name: "orders", Queues: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTopic(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	got, err := s.DeletedTopics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Time{"orders": t0.Add(time.Hour)}
	if len(got) != len(want) || !got["orders"].Equal(want["orders"]) {
		t.Fatalf("DeletedTopics = %v, want %v", got, want)
	}
}

// TestDeleteTopicTakesItsSubscriptionsAndRetryTopics (attack F12): a
// topic's delete removes, in its one transaction, its subscriptions and
// the retry topics named with it. Made one by one, a SIGKILL between
// them left a deleted topic's subscription (and its retry copies), which
// a topic created again under the name then delivered.
func TestDeleteTopicTakesItsSubscriptionsAndRetryTopics(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, dbPath(t))
	for _, name := range []string{"orders", "%RETRY%g%orders", "payments"} {
		if _, err := s.CreateTopic(ctx, Topic{Name: name, Queues: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []Subscription{{ID: "s1", Group: "g", Topic: "orders"}, {ID: "s2", Group: "h", Topic: "orders", Ordered: true}, {ID: "s3", Group: "g", Topic: "payments"}} {
		if _, err := s.CreateSubscription(ctx, sub); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteTopic(ctx, "orders", "%RETRY%g%orders", "%RETRY%never%orders"); err != nil {
		t.Fatal(err)
	}
	subs, err := s.Subscriptions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 1 || subs[0].ID != "s3" {
		t.Fatalf("subscriptions after the delete: %+v, want s3 alone", subs)
	}
	topics, err := s.Topics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(topics) != 1 || topics[0].Name != "payments" {
		t.Fatalf("topics after the delete: %+v, want payments alone", topics)
	}
	deleted, err := s.DeletedTopics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := deleted["%RETRY%g%orders"]; !ok || len(deleted) != 2 {
		t.Fatalf("deleted topics: %v, want orders and its retry topic", deleted)
	}
}
