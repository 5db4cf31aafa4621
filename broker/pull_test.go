package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

func pullN(tb testing.TB, b *Broker, group, topic string, max int, wait, vis time.Duration) []Pulled {
	tb.Helper()
	got, err := b.Pull(context.Background(), group, topic, max, wait, vis)
	if err != nil {
		tb.Fatalf("pull: %v", err)
	}
	return got
}

func receipts(ps []Pulled) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Receipt
	}
	return out
}

func TestPullAckNackVisibility(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))
	for i := 0; i < 10; i++ {
		publish(t, b, "t", msg(fmt.Sprint("m", i)))
	}
	first := pullN(t, b, "g", "t", 4, 0, time.Second)
	second := pullN(t, b, "g", "t", 4, 0, time.Second)
	if len(first) != 4 || len(second) != 4 {
		t.Fatalf("pulled %d and %d, want 4 and 4", len(first), len(second))
	}
	seen := map[string]bool{}
	for _, p := range append(first, second...) {
		if seen[p.ID] || p.Attempt != 1 || p.Receipt == "" {
			t.Fatalf("pulled %+v twice or wrongly", p)
		}
		seen[p.ID] = true
	}
	if err := b.Ack(ctx, "g", receipts(first)); err != nil {
		t.Fatal(err)
	}
	// An ack retried (its answer lost) is acked again, not stale.
	if res, err := b.AckEach(ctx, "g", receipts(first[:2])); err != nil || len(res) != 2 || res[0].Status != ReceiptAcked || res[1].Status != ReceiptAcked {
		t.Fatalf("second ack of receipts: %+v, %v, want both acked", res, err)
	}
	if err := b.Ack(ctx, "other", receipts(second[:1])); CodeOf(err) != CodeInvalidReceipt {
		t.Fatalf("ack by another group: %v, want invalid_receipt", err)
	}
	if err := b.Ack(ctx, "g", []string{"garbage"}); CodeOf(err) != CodeInvalidReceipt {
		t.Fatalf("ack of garbage: %v", err)
	}
	// A request with one receipt this bus did not issue changes nothing.
	if err := b.Ack(ctx, "g", []string{second[0].Receipt, "garbage"}); CodeOf(err) != CodeInvalidReceipt {
		t.Fatalf("ack with a garbage receipt: %v, want invalid_receipt", err)
	}
	if err := b.Nack(ctx, "g", receipts(second[:2]), 0); err != nil {
		t.Fatal(err)
	}
	// The rest (2 fresh + 2 nacked) come now; the 2 unacked of second come
	// back after their visibility.
	var again []Pulled
	deadline := time.Now().Add(5 * time.Second)
	for len(again) < 6 && time.Now().Before(deadline) {
		again = append(again, pullN(t, b, "g", "t", 10, 200*time.Millisecond, 10*time.Second)...)
	}
	attempts := map[string]int{}
	for _, p := range again {
		attempts[p.ID] = p.Attempt
	}
	for _, p := range second {
		if attempts[p.ID] != 2 {
			t.Errorf("%s (nacked or not acked in time) came back as attempt %d, want 2", p.ID, attempts[p.ID])
		}
	}
	for _, p := range first {
		if _, ok := attempts[p.ID]; ok {
			t.Errorf("acked %s came back", p.ID)
		}
	}
	if len(again) != 6 {
		t.Fatalf("%d messages after nack and visibility, want 6", len(again))
	}
	// The old receipt of a redelivered message is stale; the new ones in
	// the same request are acked all the same.
	if err := b.Ack(ctx, "g", receipts(second[2:3])); CodeOf(err) != CodeStaleReceipt {
		t.Fatalf("ack of a receipt after redelivery: %v", err)
	}
	res, err := b.AckEach(ctx, "g", append(receipts(second[2:3]), receipts(again)...))
	if err != nil {
		t.Fatalf("ack of the new receipts: %v", err)
	}
	for i, r := range res {
		if want := map[bool]ReceiptStatus{true: ReceiptStale, false: ReceiptAcked}[i == 0]; r.Status != want {
			t.Errorf("results[%d] = %s, want %s", i, r.Status, want)
		}
	}
	if got := pullN(t, b, "g", "t", 10, 0, time.Second); len(got) != 0 {
		t.Fatalf("pulled %q after acking everything", bodies(got))
	}
}

func TestPullLongPollWakesOnPublish(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	pullN(t, b, "g", "t", 1, 0, 0) // creates the subscription
	done := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		got, _ := b.Pull(context.Background(), "g", "t", 1, 10*time.Second, 0)
		if len(got) == 1 {
			done <- time.Since(start)
		}
		close(done)
	}()
	time.Sleep(100 * time.Millisecond)
	published := time.Now()
	publish(t, b, "t", msg("wake"))
	took, ok := <-done
	if !ok {
		t.Fatal("the waiting pull returned nothing")
	}
	if took > 5*time.Second {
		t.Fatalf("the waiting pull returned %s after start (%s after the publish)", took, time.Since(published))
	}
	// An empty wait ends at its deadline with nothing.
	start = time.Now()
	if got := pullN(t, b, "g", "t", 1, 300*time.Millisecond, 0); len(got) != 0 || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("empty long poll: %d messages after %s", len(got), time.Since(start))
	}
}

func TestPullDeadLettersAfterMaxRetries(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	if _, err := b.CreateSubscription(context.Background(), Subscription{Group: "g", Topic: "t", MaxRetries: 1, StartFrom: "earliest", Visibility: time.Second}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("never acked"))
	var attempts []int
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range pullN(t, b, "g", "t", 1, 500*time.Millisecond, 0) {
			attempts = append(attempts, p.Attempt)
		}
		if dls, _ := b.DeadLetters(context.Background(), "g", -1, 10); len(dls) == 1 {
			if len(attempts) != 2 || attempts[0] != 1 || attempts[1] != 2 {
				t.Fatalf("attempts before the DLQ: %v, want [1 2]", attempts)
			}
			return
		}
	}
	t.Fatalf("no dead letter after attempts %v", attempts)
}

func TestPullGroupsAndPullers(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	const n = 200
	for i := 0; i < n; i++ {
		publish(t, b, "t", msg(fmt.Sprint(i)))
	}
	// Four concurrent pullers in one group share the messages: each once.
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				got, err := b.Pull(context.Background(), "g1", "t", 16, 100*time.Millisecond, 30*time.Second)
				if err != nil || len(got) == 0 {
					return
				}
				mu.Lock()
				for _, p := range got {
					seen[p.ID]++
				}
				mu.Unlock()
				if err := b.Ack(context.Background(), "g1", receipts(got)); err != nil {
					t.Errorf("ack: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("group g1 got %d distinct messages, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("%s handed out %d times within one group", id, c)
		}
	}
	// Another group gets everything too.
	total := 0
	for {
		got := pullN(t, b, "g2", "t", 64, 0, 0)
		if len(got) == 0 {
			break
		}
		total += len(got)
	}
	if total != n {
		t.Fatalf("group g2 got %d, want %d", total, n)
	}
}

// TestPullSurvivesRestart: after a restart, acked messages stay acked and
// unacked ones come back when their visibility ends.
func TestPullSurvivesRestart(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	b := openBroker(t, cfg)
	for i := 0; i < 4; i++ {
		publish(t, b, "t", msg(fmt.Sprint(i)))
	}
	got := pullN(t, b, "g", "t", 4, 0, time.Second)
	if err := b.Ack(context.Background(), "g", receipts(got[:2])); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b = openBroker(t, cfg)
	var back []Pulled
	deadline := time.Now().Add(5 * time.Second)
	for len(back) < 2 && time.Now().Before(deadline) {
		back = append(back, pullN(t, b, "g", "t", 4, 300*time.Millisecond, 0)...)
	}
	if len(back) != 2 || back[0].Attempt != 2 {
		t.Fatalf("after restart: %d messages (%+v), want the 2 unacked as attempt 2", len(back), back)
	}
	for _, p := range back {
		if p.ID == got[0].ID || p.ID == got[1].ID {
			t.Fatalf("acked %s came back after the restart", p.ID)
		}
	}
	// A receipt from before the restart still acks (keys persist).
	if err := b.Ack(context.Background(), "g", receipts(back)); err != nil {
		t.Fatal(err)
	}
}

func TestPullBadInput(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	ctx := context.Background()
	for _, c := range []struct {
		group, topic string
		max          int
		wait, vis    time.Duration
		code         Code
	}{
		{"g", "t", 0, 0, 0, CodeInvalidPull},
		{"g", "t", 257, 0, 0, CodeInvalidPull},
		{"g", "t", 1, 31 * time.Second, 0, CodeInvalidPull},
		{"g", "t", 1, 0, time.Millisecond, CodeInvalidPull},
		{"bad group!", "t", 1, 0, 0, CodeInvalidGroup},
		{"g", "%DLQ%g", 1, 0, 0, CodeSystemTopic},
	} {
		if _, err := b.Pull(ctx, c.group, c.topic, c.max, c.wait, c.vis); CodeOf(err) != c.code {
			t.Errorf("pull %+v: %v, want %s", c, err, c.code)
		}
	}
	if err := b.Nack(ctx, "g", []string{"x"}, -time.Second); CodeOf(err) != CodeInvalidNack {
		t.Errorf("negative nack delay: %v", err)
	}
	if err := b.Ack(ctx, "g", nil); CodeOf(err) != CodeInvalidReceipt {
		t.Errorf("empty ack: %v", err)
	}
}

// TestOrderedPull: an ordered group gets a queue's messages one at a time,
// in order; an unacked one comes back first; after its retries it goes to
// the DLQ and the queue moves on. The block survives a restart.
func TestOrderedPull(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	b := openBroker(t, cfg)
	ctx := context.Background()
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateSubscription(ctx, Subscription{Group: "g", Topic: "t", Ordered: true, MaxRetries: 1, StartFrom: "earliest", Visibility: time.Second}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		publish(t, b, "t", msg(fmt.Sprint("m", i)))
	}
	got := pullN(t, b, "g", "t", 10, 0, 0)
	if len(got) != 1 || string(got[0].Body) != "m0" {
		t.Fatalf("first ordered pull: %d messages", len(got))
	}
	if more := pullN(t, b, "g", "t", 10, 0, 0); len(more) != 0 {
		t.Fatalf("a second message of the queue went out while m0 was out: %s", more[0].Body)
	}
	if err := b.Ack(ctx, "g", receipts(got)); err != nil {
		t.Fatal(err)
	}
	// A retried ack is acked again (the group is past m0), not stale.
	if res, err := b.AckEach(ctx, "g", receipts(got)); err != nil || len(res) != 1 || res[0].Status != ReceiptAcked {
		t.Fatalf("second ack: %+v, %v; want acked", res, err)
	}
	got = pullN(t, b, "g", "t", 10, 0, 0)
	if len(got) != 1 || string(got[0].Body) != "m1" {
		t.Fatalf("after the ack: %v", got)
	}
	// m1 is never acked: it comes back (attempt 2) after its visibility,
	// also across a restart, then goes to the DLQ; m2 follows.
	b.Close()
	b = openBroker(t, cfg)
	var bodies []string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range pullN(t, b, "g", "t", 10, 500*time.Millisecond, 0) {
			bodies = append(bodies, fmt.Sprintf("%s@%d", p.Body, p.Attempt))
			if string(p.Body) == "m2" {
				if err := b.Ack(ctx, "g", []string{p.Receipt}); err != nil {
					t.Fatalf("ack: %v", err)
				}
				deadline = time.Now()
			}
		}
	}
	if want := "m1@2 m2@1"; fmt.Sprint(bodies) != "["+want+"]" {
		t.Fatalf("handed out %v, want [%s]", bodies, want)
	}
	if dls, _ := b.DeadLetters(ctx, "g", -1, 10); len(dls) != 1 || string(dls[0].Body) != "m1" {
		t.Fatalf("dead letters: %d", len(dls))
	}
}

// TestPullInFlight: messages out on pull count as in flight on the group's
// retry queue from the first pull on, and leave it when acked.
func TestPullInFlight(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	ctx := context.Background()
	publish(t, b, "t", msg("a"), msg("b"))
	got := pullN(t, b, "g", "t", 2, 0, time.Minute)
	if len(got) != 2 {
		t.Fatalf("pulled %d, want 2", len(got))
	}
	inFlight := func() int {
		t.Helper()
		g, err := b.Group(ctx, "g")
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range g.Queues {
			if q.Topic == RetryTopic("g", "t") {
				return q.InFlight
			}
		}
		t.Fatalf("group %+v does not list its retry queue", g)
		return 0
	}
	if n := inFlight(); n != 2 {
		t.Fatalf("in flight after pulling 2: %d", n)
	}
	if err := b.Ack(ctx, "g", receipts(got[:1])); err != nil {
		t.Fatal(err)
	}
	if n := inFlight(); n != 1 {
		t.Fatalf("in flight after acking 1 of 2: %d", n)
	}
}

// TestFirstPullSubscriptionID: brokers that each create a group's pull
// subscription on its first pull give it the same id, so that a cluster
// shows one subscription, not one per broker.
func TestFirstPullSubscriptionID(t *testing.T) {
	var ids []string
	for range 2 {
		b := openBroker(t, testConfig(t, t.TempDir()))
		publish(t, b, "t", msg("x"))
		pullN(t, b, "g", "t", 1, 0, 0)
		subs, err := b.Subscriptions(context.Background())
		if err != nil || len(subs) != 1 {
			t.Fatalf("subscriptions after a first pull: %v, %v", subs, err)
		}
		ids = append(ids, subs[0].ID)
	}
	if ids[0] != ids[1] || ids[0] == "" {
		t.Fatalf("two brokers' first pulls made subscription ids %q", ids)
	}
}
