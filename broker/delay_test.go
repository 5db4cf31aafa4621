package broker

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func queued(tb testing.TB, b *Broker, topic string) int64 {
	tb.Helper()
	st, err := b.Topic(context.Background(), topic)
	if err != nil {
		tb.Fatal(err)
	}
	return st.Messages
}

func TestDelayedMessageArrivesWhenDue(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	// The delay is long enough that the checks below run before it
	// passes even on a loaded machine; the first one says if they did not.
	const delay = 3 * time.Second
	start := time.Now()
	res := publish(t, b, "t", &Message{Body: []byte("later"), Delay: delay, Keys: []string{"k"}})[0]
	if res.QueueOffset != -1 || res.DeliverAt.IsZero() {
		t.Fatalf("delayed result = %+v, want queue offset -1 and a deliver-at", res)
	}
	publish(t, b, "t", msg("now"))
	if n := queued(t, b, "t"); n != 1 && time.Since(start) < delay {
		t.Fatalf("%d messages queued right after publishing one delayed and one plain, want 1", n)
	}
	// Findable while it waits.
	if m, err := b.Message(context.Background(), res.ID); err != nil || string(m.Body) != "later" {
		t.Fatalf("delayed message by id: %v", err)
	}
	waitFor(t, delay+10*time.Second, "the delayed message on its queue", func() bool { return queued(t, b, "t") == 2 })
	if took := time.Since(start); took < delay {
		t.Fatalf("delivered after %s, before its delay of %s", took, delay)
	}
	m, err := b.Message(context.Background(), res.ID)
	if err != nil || m.QueueOffset < 0 || string(m.Body) != "later" || m.QueueID != res.QueueID {
		t.Fatalf("re-put message: %+v, %v", m, err)
	}
}

// TestDelayedMessageSurvivesRestart: a message due after a restart still
// arrives, once.
func TestDelayedMessageSurvivesRestart(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	b := openBroker(t, cfg)
	due := time.Now().Add(700 * time.Millisecond)
	publish(t, b, "t", &Message{Body: []byte("x"), DeliverAt: due}, &Message{Body: []byte("y"), DelayLevel: 1})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openBroker(t, cfg)
	if n := queued(t, b, "t"); n != 0 {
		t.Fatalf("%d queued before due", n)
	}
	waitFor(t, 5*time.Second, "both delayed messages", func() bool { return queued(t, b, "t") == 2 })
	if time.Now().Before(due) {
		t.Fatal("delivered before due")
	}
	time.Sleep(100 * time.Millisecond)
	if n := queued(t, b, "t"); n != 2 {
		t.Fatalf("%d queued, want each delayed message once", n)
	}
}

// TestDelayedMessageOutlivesItsSegment: retention moves a pending delayed
// message ahead rather than deleting it with its segment.
func TestDelayedMessageOutlivesItsSegment(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	now := time.Now()
	var shift atomic.Int64
	cfg.Now = func() time.Time { return now.Add(time.Duration(shift.Load())) }
	cfg.Retention = time.Hour
	b := openBroker(t, cfg)
	res := publish(t, b, "t", &Message{Body: []byte("in two hours"), Delay: 2 * time.Hour})[0]
	for len(b.log.Segments()) < 3 {
		publish(t, b, "t", &Message{Body: make([]byte, 100<<10)})
	}
	shift.Store(int64(90 * time.Minute)) // past retention, before due
	publish(t, b, "t", &Message{Body: make([]byte, 100<<10)})
	for len(b.log.Segments()) < 4 {
		publish(t, b, "t", &Message{Body: make([]byte, 100<<10)})
	}
	if err := b.waitDispatched(context.Background(), b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	if err := b.applyRetention(); err != nil {
		t.Fatal(err)
	}
	if b.log.MinOffset() == 0 {
		t.Fatal("retention deleted nothing; the test proves nothing")
	}
	m, err := b.Message(context.Background(), res.ID)
	if err != nil || string(m.Body) != "in two hours" || m.LogOffset < b.log.MinOffset() {
		t.Fatalf("delayed message after its segment went: %+v, %v", m, err)
	}
	n, err := b.meta.PendingTimers(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("%d pending timers (%v), want the moved one", n, err)
	}
}

// TestDelayedMessageWithDedupID: the timer's re-put of a message with a
// dedup id is not mistaken for a duplicate of the message itself.
func TestDelayedMessageWithDedupID(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	publish(t, b, "t", &Message{Body: []byte("x"), Delay: 200 * time.Millisecond, DedupID: "once"})
	waitFor(t, 5*time.Second, "the delayed message on its queue", func() bool { return queued(t, b, "t") == 1 })
	if r := publish(t, b, "t", &Message{Body: []byte("again"), DedupID: "once"})[0]; !r.Duplicate {
		t.Fatal("a repeat of the dedup id after the re-put was stored again")
	}
}

// TestDelayedMessageQueriedOnce: while it waits, a delayed message reads
// back by id with the queue offset its publish answered (-1); once due it
// is listed once by key (not also as the record that waited), at its queue
// offset.
func TestDelayedMessageQueriedOnce(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	res := publish(t, b, "t", &Message{Body: []byte("later"), Delay: 300 * time.Millisecond, Keys: []string{"k"}})[0]
	if res.QueueOffset != -1 {
		t.Fatalf("publish answered queue offset %d, want -1", res.QueueOffset)
	}
	m, err := b.Message(ctx, res.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.QueueOffset != -1 {
		t.Errorf("waiting delayed message by id: queue offset %d, want -1 as its publish answered", m.QueueOffset)
	}
	if byKey, _, err := b.MessagesByKey(ctx, "t", "k", 0, 10); err != nil || len(byKey) != 1 || byKey[0].QueueOffset != -1 {
		t.Errorf("waiting delayed message by key: %d messages (%v), want 1 at offset -1", len(byKey), err)
	}
	waitFor(t, 5*time.Second, "the delayed message on its queue", func() bool { return queued(t, b, "t") == 1 })
	byKey, next, err := b.MessagesByKey(ctx, "t", "k", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(byKey) != 1 || byKey[0].ID != res.ID || byKey[0].QueueOffset != 0 || next != 0 {
		var got []string
		for _, m := range byKey {
			got = append(got, fmt.Sprintf("%s@%d", m.ID, m.QueueOffset))
		}
		t.Fatalf("due delayed message by key: %v (next %d), want %s@0 once", got, next, res.ID)
	}
	if m, err := b.Message(ctx, res.ID); err != nil || m.QueueOffset != 0 {
		t.Fatalf("due delayed message by id: %+v, %v; want queue offset 0", m, err)
	}
}

// waitQueued waits until queue 0 of topic holds n messages, and fails the
// test if they are not there 15 s after they fell due: the timer loop
// looks at least every second.
func waitQueued(t *testing.T, b *Broker, topic string, n int) {
	t.Helper()
	all, _ := ParseFilter("*")
	deadline := time.After(60 * time.Second)
	for {
		sig := b.Dispatched()
		got, _, err := b.ReadQueue(topic, 0, 0, n+1, all)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == n {
			return
		}
		select {
		case <-sig:
		case <-time.After(200 * time.Millisecond): // the timer loop runs on its own clock
		case <-deadline:
			t.Fatalf("%d of %d delayed messages on their queue 60s after they fell due", len(got), n)
		}
	}
}

// TestDelayedMessagesDueTogetherOverASegment: delayed messages that fall due
// together used to be put back on their topic in one append; three of
// 4 MiB add up to more than one publish may store, and that append was
// refused (batch_too_large) and retried every second, forever: none of
// them was ever delivered.
func TestDelayedMessagesDueTogetherOverASegment(t *testing.T) {
	ctx := context.Background()
	clock := &tortureClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg := testConfig(t, t.TempDir())
	cfg.MaxMessageBytes = MaxBatchBytes
	cfg.SegmentSize = MinSegmentSize(cfg.MaxMessageBytes)
	cfg.Now = clock.Now
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		body := bytes.Repeat([]byte{byte('a' + i)}, cfg.MaxMessageBytes)
		publish(t, b, "t", &Message{Body: body, Delay: time.Second})
	}
	clock.advance(2 * time.Second)
	waitQueued(t, b, "t", 3)
}

// TestDelayedMessageLargerThanALoweredLimit: a delayed message stored under
// one --max-message-bytes falls due after a restart with a lower one. The
// limit is for publishes; putting the stored message back used to be
// refused by the log's record limit, every second, forever.
func TestDelayedMessageLargerThanALoweredLimit(t *testing.T) {
	ctx := context.Background()
	clock := &tortureClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.MaxMessageBytes = 1 << 20
	cfg.Now = clock.Now
	b, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("x"), cfg.MaxMessageBytes)
	res := publish(t, b, "t", &Message{Body: body, Delay: time.Minute})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	cfg.MaxMessageBytes = 64 << 10
	b = openBroker(t, cfg)
	if _, err := b.Publish(ctx, "t", []*Message{{Body: body}}); CodeOf(err) != CodeBodyTooLarge {
		t.Fatalf("a new publish over the lowered limit: %v, want body_too_large", err)
	}
	clock.advance(2 * time.Minute)
	waitQueued(t, b, "t", 1)
	m, err := b.Message(ctx, res[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Body, body) || m.QueueOffset != 0 {
		t.Fatalf("the delayed message reads back with %d bytes at queue offset %d", len(m.Body), m.QueueOffset)
	}
}

// TestDelayedMessagePutBackOnce: a put-back whose append reported an error
// although its bytes reached the log leaves the timer pending; when it
// fired again it used to put a second copy on the queue, and consumers got
// the message twice. The surviving copy is simulated by storing it as the
// timer loop does, without marking the timer fired.
func TestDelayedMessagePutBackOnce(t *testing.T) {
	ctx := context.Background()
	clock := &tortureClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg := testConfig(t, t.TempDir())
	cfg.Now = clock.Now
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	res := publish(t, b, "t", &Message{Body: []byte("once"), Delay: time.Minute})[0]
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	m, err := b.readMessage(res.logOffset)
	if err != nil {
		t.Fatal(err)
	}
	m.flags |= flagRePut
	if err := b.putDue(ctx, "t", []*Message{m}); err != nil {
		t.Fatal(err)
	}
	clock.advance(2 * time.Minute)
	waitFor(t, 15*time.Second, "the timer marked fired", func() bool {
		n, err := b.meta.PendingTimers(ctx)
		return err == nil && n == 0
	})
	all, _ := ParseFilter("*")
	got, _, err := b.ReadQueue("t", 0, 0, 10, all)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != res.ID {
		ids := make([]string, len(got))
		for i, g := range got {
			ids[i] = g.ID
		}
		t.Fatalf("queue holds %v after the timer fired, want %s once", ids, res.ID)
	}
}

// TestDelayedMessageLongerThanRetention: a delay longer than its topic's
// retention loses nothing. While it waits the message is found by id (it
// used to vanish once its stored time passed the retention, and come back
// when put on its queue); the copy put on its queue when due is a new
// record whose retention counts from then, and every read path (by id, by
// key, by queue) agrees on it, until that retention passes too.
func TestDelayedMessageLongerThanRetention(t *testing.T) {
	ctx := context.Background()
	clock := &tortureClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg := testConfig(t, t.TempDir())
	cfg.Now = clock.Now
	b := openBroker(t, cfg)
	ret := time.Minute
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1, Retention: &ret}); err != nil {
		t.Fatal(err)
	}
	res := publish(t, b, "t", &Message{Body: []byte("late"), Delay: 10 * time.Minute, Keys: []string{"k"}})[0]
	all, _ := ParseFilter("*")
	look := func(step string, wantSeen bool, wantQOff int64) {
		t.Helper()
		m, err := b.Message(ctx, res.ID)
		switch {
		case wantSeen && err != nil:
			t.Fatalf("%s: by id: %v", step, err)
		case !wantSeen && CodeOf(err) != CodeMessageNotFound:
			t.Fatalf("%s: by id: %v, want message_not_found", step, err)
		case wantSeen && m.QueueOffset != wantQOff:
			t.Fatalf("%s: by id at queue offset %d, want %d", step, m.QueueOffset, wantQOff)
		}
		byKey, _, err := b.MessagesByKey(ctx, "t", "k", 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{true: 1, false: 0}[wantSeen]; len(byKey) != want {
			t.Fatalf("%s: %d messages by key, want %d", step, len(byKey), want)
		}
		got, _, err := b.ReadQueue("t", 0, 0, 10, all)
		if err != nil {
			t.Fatal(err)
		}
		inQueue := wantSeen && wantQOff >= 0
		if (len(got) == 1) != inQueue || len(got) > 1 {
			t.Fatalf("%s: queue holds %d messages, want it to hold the message: %v", step, len(got), inQueue)
		}
	}
	clock.advance(5 * time.Minute)
	look("waiting, past the retention since it was published", true, -1)
	clock.advance(6 * time.Minute)
	waitQueued(t, b, "t", 1)
	look("put back", true, 0)
	clock.advance(30 * time.Second)
	look("put back, within the retention since then", true, 0)
	clock.advance(time.Minute)
	look("put back, past the retention since then", false, 0)
}

// TestDelayedMessageMovedWhileDue: retention moving a delayed message ahead
// of the segment it deletes, at the moment the message falls due, leaves it
// on its queue once. The move used to read the pending timers, then the
// timer loop put the message back and marked its timer fired, then the move
// appended its copy with a timer of its own, which fired again later: the
// copy, newer than the put-back, did not see it, and the message was on its
// queue twice (torture seed 2060). Moving and firing are now one at a time.
// Both are started together, many times, because which comes first is a
// race.
func TestDelayedMessageMovedWhileDue(t *testing.T) {
	ctx := context.Background()
	clock := &tortureClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg := testConfig(t, t.TempDir())
	cfg.Now = clock.Now
	cfg.SegmentSize = 1 << 20
	cfg.MaxMessageBytes = 128 << 10
	cfg.Retention = time.Hour
	cfg.RetentionInterval = time.Hour // this test runs retention itself
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	const rounds, perRound = 12, 16
	all, _ := ParseFilter("*")
	for round := range rounds {
		var ids []string
		for range perRound {
			ids = append(ids, publish(t, b, "t", &Message{Body: []byte(fmt.Sprint("round ", round)), Delay: time.Minute})[0].ID)
		}
		// Two more segments, so that the delayed messages' one can go.
		for n := len(b.log.Segments()); len(b.log.Segments()) < n+2; {
			publish(t, b, "t", &Message{Body: make([]byte, 128<<10)})
		}
		if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
			t.Fatal(err)
		}
		clock.advance(2 * time.Hour) // past due, and past retention
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		wg.Add(2)
		go func() { defer wg.Done(); errs <- b.applyRetention() }()
		go func() { defer wg.Done(); _, err := b.timer.FireDue(ctx); errs <- err }()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		waitFor(t, 15*time.Second, "every due timer fired", func() bool {
			n, err := b.meta.PendingTimers(ctx)
			return err == nil && n == 0
		})
		if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
			t.Fatal(err)
		}
		count := map[string]int{}
		lo, hi := b.QueueBounds("t", 0)
		for from := lo; from < hi; {
			got, next, err := b.ReadQueue("t", 0, from, 256, all)
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range got {
				count[g.ID]++
			}
			from = next
		}
		for _, id := range ids {
			if count[id] != 1 {
				t.Errorf("round %d: delayed message %s is on its queue %d times, want once", round, id, count[id])
			}
		}
		if t.Failed() {
			return
		}
	}
}
