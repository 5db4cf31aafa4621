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
