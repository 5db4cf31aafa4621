package broker

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestPullRacingTopicDelete (attack F2): a pull whose lease stores its
// visibility copies just as the topic is deleted failed with an internal
// error ("append to %RETRY%…: topic deleted while publishing", a 500). It
// is a pull of a deleted topic: topic_not_found.
func TestPullRacingTopicDelete(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	cfg.DiskCleanRatio, cfg.DiskFullRatio = 0.99, 0.995
	b := openBroker(t, cfg)
	publish(t, b, "doomed", &Message{Body: []byte("a")}, &Message{Body: []byte("b")})
	testHookLeaseStoring = func() {
		testHookLeaseStoring = nil
		if err := b.DeleteTopic(ctx, "doomed"); err != nil {
			t.Errorf("delete: %v", err)
		}
	}
	t.Cleanup(func() { testHookLeaseStoring = nil })
	got, err := b.Pull(ctx, "g", "doomed", 10, 0, 30*time.Second)
	if !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("pull while the topic is deleted: %d messages, %v; want topic_not_found", len(got), err)
	}
	var be *Error
	if !errors.As(err, &be) || be.Code != CodeTopicNotFound {
		t.Fatalf("pull while the topic is deleted: %v; want a %s problem", err, CodeTopicNotFound)
	}
}

// TestReceiptOfDeletedTopicIsStale (attack F13): a receipt handed out
// before its topic was deleted still settled after the topic was created
// again, and a nack with it put the deleted topic's message into the new
// one. Such a receipt is stale now, for an ack, a nack and a visibility
// change, and the new topic hands out only its own messages.
func TestReceiptOfDeletedTopicIsStale(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	cfg.DiskCleanRatio, cfg.DiskFullRatio = 0.99, 0.995
	b := openBroker(t, cfg)
	publish(t, b, "r", &Message{Body: []byte("old")})
	got, err := b.Pull(ctx, "g", "r", 1, 0, time.Minute)
	if err != nil || len(got) != 1 {
		t.Fatalf("pull old: %v, %v", got, err)
	}
	old := got[0].Receipt
	if err := b.DeleteTopic(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.PutTopic(ctx, "r", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "r", &Message{Body: []byte("new")})
	if got, err = b.Pull(ctx, "g", "r", 1, 0, time.Minute); err != nil || len(got) != 1 || string(got[0].Body) != "new" {
		t.Fatalf("pull new: %v, %v", got, err)
	}
	for name, settle := range map[string]func() ([]ReceiptResult, error){
		"nack":       func() ([]ReceiptResult, error) { return b.NackEach(ctx, "g", []string{old}, 0) },
		"ack":        func() ([]ReceiptResult, error) { return b.AckEach(ctx, "g", []string{old}) },
		"visibility": func() ([]ReceiptResult, error) { return b.ChangeVisibility(ctx, "g", []string{old}, time.Hour) },
	} {
		res, err := settle()
		if err != nil || len(res) != 1 || res[0].Status != ReceiptStale {
			t.Errorf("%s with a receipt of the deleted topic: %+v, %v; want stale", name, res, err)
		}
	}
	if got, err = b.Pull(ctx, "g", "r", 8, 500*time.Millisecond, time.Minute); err != nil || len(got) != 0 {
		t.Fatalf("pull after the stale nack: %d messages (%v), %v; want none", len(got), got, err)
	}
}
