package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ack is what a publisher was answered, and what it sent.
type ack struct {
	res  Result
	body string
	key  string
}

// checkTopicHoldsExactly checks the topic against the acknowledgements: each
// message readable by id is the one acknowledged, at the queue and offset it
// was acknowledged with, and found by its key; the topic's queues hold those
// messages and nothing else, without gaps.
func checkTopicHoldsExactly(tb testing.TB, b *Broker, topic string, acks []ack, mustHave map[string]bool) {
	tb.Helper()
	ctx := context.Background()
	byID := make(map[string]ack, len(acks))
	readable := 0
	for _, a := range acks {
		byID[a.res.ID] = a
		m, err := b.Message(ctx, a.res.ID)
		if errors.Is(err, ErrMessageNotFound) {
			if mustHave[a.res.ID] {
				tb.Errorf("message %s (%s), acknowledged in the topic's last incarnation, is not readable", a.res.ID, a.body)
			}
			continue // acknowledged for an incarnation deleted since
		}
		if err != nil {
			tb.Fatalf("Message(%s): %v", a.res.ID, err)
		}
		readable++
		if string(m.Body) != a.body || m.QueueID != a.res.QueueID || m.QueueOffset != a.res.QueueOffset {
			tb.Errorf("message %s reads back as %q at %d/%d; acknowledged %q at %d/%d",
				a.res.ID, m.Body, m.QueueID, m.QueueOffset, a.body, a.res.QueueID, a.res.QueueOffset)
		}
		byKey, _, err := b.MessagesByKey(ctx, topic, a.key, 0, 10)
		if err != nil || len(byKey) != 1 || byKey[0].ID != a.res.ID {
			tb.Errorf("by key %s: %d messages (%v), want exactly %s", a.key, len(byKey), err, a.res.ID)
		}
	}
	st, err := b.Topic(ctx, topic)
	if err != nil {
		tb.Fatal(err)
	}
	queued := 0
	for q := range st.Queues {
		msgs, _, err := b.ReadQueue(topic, q, 0, 1<<20, Filter{all: true})
		if err != nil {
			tb.Fatal(err)
		}
		for i, m := range msgs {
			a, ok := byID[m.ID]
			switch {
			case m.QueueOffset != int64(i):
				tb.Errorf("queue %d: entry %d has offset %d: a gap", q, i, m.QueueOffset)
			case !ok:
				tb.Errorf("queue %d offset %d holds %s (%q), which no publish was answered with", q, i, m.ID, m.Body)
			case a.res.QueueID != q || a.res.QueueOffset != m.QueueOffset:
				tb.Errorf("queue %d offset %d holds %s, acknowledged at %d/%d", q, i, m.ID, a.res.QueueID, a.res.QueueOffset)
			}
		}
		queued += len(msgs)
		if st.Queues[q].MaxOffset != int64(len(msgs)) {
			tb.Errorf("queue %d: max offset %d, but %d messages read", q, st.Queues[q].MaxOffset, len(msgs))
		}
	}
	if queued != readable {
		tb.Errorf("the topic's queues hold %d messages; %d acknowledged messages are readable by id", queued, readable)
	}
}

// TestPublishRacingDeleteAndRecreate: publishes in flight while a topic is
// deleted and at once created again are stored under the topic they are
// acknowledged for, or refused; none is stored with the deleted topic's
// queue offsets, which made dispatch drop every later message of the new
// topic. Several publishers run while one goroutine deletes and re-creates
// the topic in a loop; the broker is then checked against what each
// publisher was answered, live and after a rebuild of its indexes.
func TestPublishRacingDeleteAndRecreate(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	cfg.AutoCreateTopics = false
	b := openBroker(t, cfg)
	const topic = "race"
	if _, _, err := b.PutTopic(ctx, topic, TopicSettings{Queues: 2}); err != nil {
		t.Fatal(err)
	}

	var (
		mu       sync.Mutex
		acks     []ack
		seq      atomic.Int64
		stop     atomic.Bool
		refused  atomic.Int64
		wg       sync.WaitGroup
		failures = make(chan error, 16)
	)
	for p := 0; p < 6; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				n := seq.Add(1)
				body, key := fmt.Sprintf("m-%d", n), fmt.Sprintf("k-%d", n)
				res, err := b.Publish(ctx, topic, []*Message{{Body: []byte(body), Keys: []string{key}}})
				switch {
				case err == nil:
					mu.Lock()
					acks = append(acks, ack{res[0], body, key})
					mu.Unlock()
				case errors.Is(err, ErrTopicNotFound) || CodeOf(err) == CodeUnavailable:
					refused.Add(1) // refused: allowed while the topic comes and goes
				default:
					failures <- fmt.Errorf("publish %s: %w", body, err)
					return
				}
			}
		}()
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := 0; i < 80; i++ {
		// Let some publishes through, then delete and re-create at once.
		for target := seq.Load() + int64(1+rng.IntN(20)); seq.Load() < target; {
			if len(failures) > 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if err := b.DeleteTopic(ctx, topic); err != nil {
			t.Fatalf("seed %d: delete: %v", seed, err)
		}
		if _, _, err := b.PutTopic(ctx, topic, TopicSettings{Queues: 1 + rng.IntN(3)}); err != nil {
			t.Fatalf("seed %d: re-create: %v", seed, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Fatalf("seed %d: %v", seed, err)
	}
	// Publishes after the last re-create must all be readable.
	mustHave := make(map[string]bool)
	for i := 0; i < 20; i++ {
		body, key := fmt.Sprintf("after-%d", i), fmt.Sprintf("after-k-%d", i)
		res := publish(t, b, topic, &Message{Body: []byte(body), Keys: []string{key}})
		acks = append(acks, ack{res[0], body, key})
		mustHave[res[0].ID] = true
	}
	t.Logf("%d publishes acknowledged, %d refused", len(acks), refused.Load())
	checkTopicHoldsExactly(t, b, topic, acks, mustHave)
	if t.Failed() {
		t.Fatalf("seed %d", seed)
	}

	// The same after the indexes are rebuilt from the log.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"index", "consumequeue", checkpointFile} {
		if err := os.RemoveAll(filepath.Join(cfg.Dir, d)); err != nil {
			t.Fatal(err)
		}
	}
	b = openBroker(t, cfg)
	checkTopicHoldsExactly(t, b, topic, acks, mustHave)
	if t.Failed() {
		t.Fatalf("seed %d (after a rebuild)", seed)
	}
}

// TestRecreateWithinOneMillisecond: a topic deleted and created again in
// the same millisecond as its last publish does not show the deleted
// topic's message, by id, by key, by queue offset, nor after its indexes
// are rebuilt from the log. The clock here never moves.
func TestRecreateWithinOneMillisecond(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	frozen := time.Now()
	cfg.Now = func() time.Time { return frozen }
	b := openBroker(t, cfg)
	old := publish(t, b, "t", &Message{Body: []byte("old"), Keys: []string{"k"}, DedupID: "d"})[0]
	if err := b.DeleteTopic(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	fresh := publish(t, b, "t", &Message{Body: []byte("new"), Keys: []string{"k"}})[0]
	check := func(b *Broker, when string) {
		t.Helper()
		if m, err := b.Message(ctx, old.ID); !errors.Is(err, ErrMessageNotFound) {
			t.Errorf("%s: the deleted topic's message by id: %v, %v", when, m, err)
		}
		byKey, _, err := b.MessagesByKey(ctx, "t", "k", 0, 10)
		if err != nil || len(byKey) != 1 || byKey[0].ID != fresh.ID {
			t.Errorf("%s: by key: %d messages (%v), want only the new one", when, len(byKey), err)
		}
		msgs, _, err := b.ReadQueue("t", 0, 0, 10, Filter{all: true})
		if err != nil || len(msgs) != 1 || msgs[0].ID != fresh.ID || msgs[0].QueueOffset != 0 {
			t.Errorf("%s: queue 0 holds %d messages (%v), want only the new one at 0", when, len(msgs), err)
		}
	}
	check(b, "live")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"index", "consumequeue", checkpointFile} {
		if err := os.RemoveAll(filepath.Join(cfg.Dir, d)); err != nil {
			t.Fatal(err)
		}
	}
	check(openBroker(t, cfg), "after a rebuild")
}

// TestDedupIDDoesNotOutliveItsTopic: a dedup id seen by a deleted topic is
// new to a topic created again under its name, in the same process and
// after a restart within the dedup window.
func TestDedupIDDoesNotOutliveItsTopic(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	b := openBroker(t, cfg)
	recreate := func(b *Broker) {
		t.Helper()
		if err := b.DeleteTopic(ctx, "t"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.PutTopic(ctx, "t", TopicSettings{}); err != nil {
			t.Fatal(err)
		}
	}
	stored := func(b *Broker, body, dedup, when string) Result {
		t.Helper()
		r := publish(t, b, "t", &Message{Body: []byte(body), DedupID: dedup})[0]
		if r.Duplicate {
			t.Fatalf("%s: publish with dedup id %q answered as a duplicate of %s", when, dedup, r.ID)
		}
		m, err := b.Message(ctx, r.ID)
		if err != nil || string(m.Body) != body {
			t.Fatalf("%s: the new message is not stored: %v", when, err)
		}
		return r
	}

	stored(b, "first", "d1", "first publish")
	recreate(b)
	stored(b, "after re-create", "d1", "same process")

	// A restart: the dedup ids now come from the index.
	stored(b, "before restart", "d2", "before restart")
	recreate(b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openBroker(t, cfg)
	r := stored(b, "after restart", "d2", "after restart")
	// The new topic's own dedup ids still work.
	if again := publish(t, b, "t", &Message{Body: []byte("repeat"), DedupID: "d2"})[0]; !again.Duplicate || again.ID != r.ID {
		t.Fatalf("repeat of the new topic's dedup id = %+v, want a duplicate of %s", again, r.ID)
	}
}

// TestDelayedMessageOfDeletedTopic: a delayed message whose topic is
// deleted and created again before it is due never reaches the new topic.
func TestDelayedMessageOfDeletedTopic(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	old := publish(t, b, "t", &Message{Body: []byte("due later"), Delay: 200 * time.Millisecond, Keys: []string{"k"}})[0]
	if err := b.DeleteTopic(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the delayed message's timer to fire", func() bool {
		n, err := b.meta.PendingTimers(ctx)
		return err == nil && n == 0
	})
	if n := queued(t, b, "t"); n != 0 {
		t.Errorf("the re-created topic holds %d messages, want none", n)
	}
	if m, err := b.Message(ctx, old.ID); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("the deleted topic's delayed message by id: %+v, %v", m, err)
	}
	if byKey, _, err := b.MessagesByKey(ctx, "t", "k", 0, 10); err != nil || len(byKey) != 0 {
		t.Errorf("by key: %d messages (%v), want none", len(byKey), err)
	}
}

// TestPullGroupAcrossDeleteAndRecreate: a group that pulled from a topic
// pulls every message of the topic created again under its name, from its
// first offset, rather than resuming at its offset in the deleted one, and
// gets no retries of the deleted topic's messages.
func TestPullGroupAcrossDeleteAndRecreate(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		publish(t, b, "t", msg(fmt.Sprint("old-", i)))
	}
	got := pullN(t, b, "g", "t", 10, 0, time.Second)
	if len(got) != 5 {
		t.Fatalf("pulled %d of the old topic's 5 messages", len(got))
	}
	// Three are acked; two come back to the group after their visibility,
	// as retries of messages of the deleted topic.
	if err := b.Ack(ctx, "g", receipts(got[:3])); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteTopic(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 0; i < 2; i++ {
		want = append(want, publish(t, b, "t", msg(fmt.Sprint("new-", i)))[0].ID)
	}
	waitFor(t, 10*time.Second, "the old messages' visibility timers to fire", func() bool {
		n, err := b.meta.PendingTimers(ctx)
		return err == nil && n == 0
	})
	got = pullN(t, b, "g", "t", 10, 0, time.Minute)
	var ids []string
	for _, p := range got {
		ids = append(ids, p.ID)
	}
	if fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("the group pulled %v from the re-created topic, want %v", ids, want)
	}
}

// TestOpenCancelledSaysStopped: a broker told to stop while it opens (a
// SIGTERM during start) used to fail with the metadata store's error and
// advise restoring meta.db or --rebuild-metadata, which on a real store
// loses subscriptions, offsets and secrets. It says it was stopped.
func TestOpenCancelledSaysStopped(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Open(ctx, testConfig(t, t.TempDir()))
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "stopped while starting") ||
		strings.Contains(err.Error(), "rebuild-metadata") || strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Open with a cancelled context: %v; want 'stopped while starting', without advice to rebuild", err)
	}
}
