package broker

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postbus/postbus/broker/meta"
)

// waitDeadLetters pulls (which also dead-letters what is past its last
// attempt) until group's DLQ holds want entries, and fails past 20 s.
func waitDeadLetters(tb testing.TB, b *Broker, group, topic string, want int) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		dls, err := b.DeadLetters(context.Background(), group, -1, 100)
		if err != nil {
			tb.Fatal(err)
		}
		if len(dls) == want {
			return
		}
		if len(dls) > want || time.Now().After(deadline) {
			tb.Fatalf("the DLQ holds %d entries, want %d", len(dls), want)
		}
		if got := pullN(tb, b, group, topic, 10, 100*time.Millisecond, time.Minute); len(got) > 0 {
			tb.Fatalf("handed out %q past their last attempt", bodies(got))
		}
	}
}

// TestDeadLetterOnceAcrossLostOffset: a pull that dead-letters retry
// copies read from the group's retry queue (max_retries lowered while
// they waited) stores the offset past them before it answers, and when
// that offset is lost anyway (a crash between the dead letter and the
// offset's write, played here by writing the old offset back into
// meta.db while the broker is closed), the copies read again are not
// dead-lettered a second time: an ERROR line and
// postbus_delayed_anomalies_total{reason="already_dead_lettered"}.
// Before the fix each restart after a SIGKILL dead-lettered them again.
func TestDeadLetterOnceAcrossLostOffset(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	w := newPullEachWorld(t, dir, false, func(c *Config) { c.Registerer = reg })
	sub, err := w.b.Subscription(ctx, subscriptionID(t, w.b, "g", "t"))
	if err != nil {
		t.Fatal(err)
	}
	sub.MaxRetries = 1
	if _, err := w.b.UpdateSubscription(ctx, sub); err != nil {
		t.Fatal(err)
	}
	const n = 3
	for i := range n {
		publish(t, w.b, "t", msg(fmt.Sprint("m", i)))
	}
	if got := pullN(t, w.b, "g", "t", n, 0, time.Second); len(got) != n {
		t.Fatalf("pulled %d, want %d", len(got), n)
	}
	// Their visibility copies come back to the retry queue as attempt 2;
	// lowering max_retries to 0 makes that one attempt too many.
	retry := RetryTopic("g", "t")
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, hi := w.b.cq.Bounds(retry, 0)
		if hi == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the retry queue holds %d copies, want %d", hi, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	sub.MaxRetries = 0
	if _, err := w.b.UpdateSubscription(ctx, sub); err != nil {
		t.Fatal(err)
	}
	waitDeadLetters(t, w.b, "g", "t", n)
	if err := w.b.Close(); err != nil {
		t.Fatal(err)
	}
	// The stored offset is past the dead letters: read it from meta.db,
	// then put the old one back, as a crash before its write would.
	ms, err := meta.Open(ctx, filepath.Join(dir, metaFile))
	if err != nil {
		t.Fatal(err)
	}
	offs, err := ms.Offsets(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	stored := int64(-1)
	for _, o := range offs {
		if o.Topic == retry && o.Queue == 0 {
			stored = o.Next
		}
	}
	if err := ms.CommitOffsets(ctx, []meta.Offset{{Group: "g", Topic: retry, Queue: 0, Next: 0}}); err != nil {
		t.Fatal(err)
	}
	if err := ms.Close(); err != nil {
		t.Fatal(err)
	}
	if stored != n {
		t.Errorf("retry queue offset stored %d, want %d", stored, n)
	}
	reg = prometheus.NewRegistry()
	w.cfg.Registerer = reg
	if w.b, err = Open(ctx, w.cfg); err != nil {
		t.Fatal(err)
	}
	if got := pullN(t, w.b, "g", "t", 10, 0, time.Minute); len(got) > 0 {
		t.Fatalf("handed out %q past their last attempt", bodies(got))
	}
	dls, err := w.b.DeadLetters(ctx, "g", -1, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != n {
		t.Errorf("the DLQ holds %d entries after the lost offset, want %d", len(dls), n)
	}
	if got := counterValue(t, reg, "postbus_delayed_anomalies_total", "reason", delayAlreadyDead); got != n {
		t.Errorf("already_dead_lettered anomalies %v, want %d", got, n)
	}
	if off, _ := w.b.Offset("g", retry, 0); off != n {
		t.Errorf("retry queue offset after the pull %d, want %d", off, n)
	}
}

// subscriptionID is the id of group's subscription on topic.
func subscriptionID(tb testing.TB, b *Broker, group, topic string) string {
	tb.Helper()
	subs, err := b.Subscriptions(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range subs {
		if s.Group == group && s.Topic == topic {
			return s.ID
		}
	}
	tb.Fatalf("no subscription of %s on %s", group, topic)
	return ""
}

// TestLastAttemptDeadLettersWithoutAPull: a pull group's last attempt
// that runs out goes to the DLQ when its timer fires, with nobody
// pulling; a nacked one at the next pull; each carrying how that attempt
// ended. Before the fix it
// waited in the retry queue (counted as lag) until the next pull, and a
// nacked one carried "not acked within its visibility".
func TestLastAttemptDeadLettersWithoutAPull(t *testing.T) {
	ctx := context.Background()
	w := newPullEachWorld(t, t.TempDir(), false)
	sub, err := w.b.Subscription(ctx, subscriptionID(t, w.b, "g", "t"))
	if err != nil {
		t.Fatal(err)
	}
	sub.MaxRetries = 0
	if _, err := w.b.UpdateSubscription(ctx, sub); err != nil {
		t.Fatal(err)
	}
	publish(t, w.b, "t", msg("expires"), msg("nacked"))
	got := pullN(t, w.b, "g", "t", 2, 0, time.Second)
	if len(got) != 2 {
		t.Fatalf("pulled %d, want 2", len(got))
	}
	for _, p := range got {
		if string(p.Body) == "nacked" {
			if _, err := w.b.NackEach(ctx, "g", []string{p.Receipt}, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := map[string]string{
		"expires": "not acked within its visibility on any of 1 attempts",
		"nacked":  "nacked on its last attempt, 1 of 1",
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		dls, err := w.b.DeadLetters(ctx, "g", -1, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(dls) == 1 {
			for _, d := range dls {
				if d.Reason != want[string(d.Body)] {
					t.Errorf("dead letter %q carries %q, want %q", d.Body, d.Reason, want[string(d.Body)])
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with no pull, the DLQ holds %d entries 20s later, want the expired one", len(dls))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A nacked last attempt is put back on the retry queue and
	// dead-lettered by the next pull (its copy's timer is dispatch's, not
	// the settle's): the pull hands out neither.
	if again := pullN(t, w.b, "g", "t", 10, 0, time.Minute); len(again) > 0 {
		t.Fatalf("dead letters handed out: %q", bodies(again))
	}
	dls, err := w.b.DeadLetters(ctx, "g", -1, 10)
	if err != nil || len(dls) != 2 {
		t.Fatalf("after a pull the DLQ holds %d entries (%v), want 2", len(dls), err)
	}
	for _, d := range dls {
		if d.Reason != want[string(d.Body)] {
			t.Errorf("dead letter %q carries %q, want %q", d.Body, d.Reason, want[string(d.Body)])
		}
	}
}
