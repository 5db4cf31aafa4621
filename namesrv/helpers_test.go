package namesrv

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// logRecord is one captured log line.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// logCapture is a slog.Handler that keeps every record, for tests that
// check what was logged and how often.
type logCapture struct {
	mu      *sync.Mutex
	records *[]logRecord
	attrs   []slog.Attr
}

func newLogCapture() *logCapture {
	return &logCapture{mu: new(sync.Mutex), records: new([]logRecord)}
}

func (h *logCapture) Enabled(context.Context, slog.Level) bool { return true }

func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	*h.records = append(*h.records, rec)
	h.mu.Unlock()
	return nil
}

func (h *logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(slices.Clone(h.attrs), as...)
	return &c
}

func (h *logCapture) WithGroup(string) slog.Handler { return h }

func (h *logCapture) logger() *slog.Logger { return slog.New(h) }

// count returns how many records have level lvl, a message containing msg
// and every attribute in attrs (key, value pairs).
func (h *logCapture) count(lvl slog.Level, msg string, attrs ...string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
next:
	for _, r := range *h.records {
		if r.level != lvl || !strings.Contains(r.msg, msg) {
			continue
		}
		for i := 0; i+1 < len(attrs); i += 2 {
			if r.attrs[attrs[i]] != attrs[i+1] {
				continue next
			}
		}
		n++
	}
	return n
}

// waitFor waits until cond holds, failing the test after a generous
// deadline. cond is checked every millisecond.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// topics builds n topics "topic-00000"... with q queues each.
func topics(n, q int) []Topic {
	ts := make([]Topic, n)
	for i := range ts {
		ts[i] = Topic{Name: fmt.Sprintf("topic-%05d", i), Queues: q}
	}
	return ts
}

func broker(name string, ts ...Topic) BrokerInfo {
	return BrokerInfo{Name: name, Addr: "http://" + name + ".example:8080", Version: "test", Topics: ts}
}

func mustHeartbeat(tb testing.TB, r *Registry, info BrokerInfo) {
	tb.Helper()
	if err := r.Heartbeat(info); err != nil {
		tb.Fatalf("Heartbeat(%s): %v", info.Name, err)
	}
}

// checkInvariants verifies the registry's index against its brokers: a
// (topic, broker) pair is indexed exactly when the broker lists the topic,
// with its queue count, holders are sorted by name, and no list is empty.
func checkInvariants(tb testing.TB, r *Registry) {
	tb.Helper()
	if err := invariantErr(r); err != nil {
		tb.Fatal(err)
	}
}

func invariantErr(r *Registry) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	pairs := 0
	for name, e := range r.brokers {
		if e.info.Name != name {
			return fmt.Errorf("broker %q filed under %q", e.info.Name, name)
		}
		for _, t := range e.info.Topics {
			hs := r.index[t.Name]
			i := slices.IndexFunc(hs, func(h holder) bool { return h.b == e })
			if i < 0 {
				return fmt.Errorf("topic %q of broker %q not indexed", t.Name, name)
			}
			if hs[i].queues != t.Queues {
				return fmt.Errorf("topic %q of broker %q indexed with %d queues, registered with %d", t.Name, name, hs[i].queues, t.Queues)
			}
			pairs++
		}
	}
	indexed := 0
	for topic, hs := range r.index {
		if len(hs) == 0 {
			return fmt.Errorf("topic %q has an empty holder list", topic)
		}
		if !slices.IsSortedFunc(hs, func(a, b holder) int { return strings.Compare(a.b.info.Name, b.b.info.Name) }) {
			return fmt.Errorf("holders of %q not sorted", topic)
		}
		for _, h := range hs {
			if r.brokers[h.b.info.Name] != h.b {
				return fmt.Errorf("topic %q held by broker %q which is not registered", topic, h.b.info.Name)
			}
		}
		indexed += len(hs)
	}
	if indexed != pairs {
		return fmt.Errorf("%d indexed pairs, %d registered", indexed, pairs)
	}
	return nil
}

// registered counts the registry's entries, expired or not.
func registered(r *Registry) (brokers, topics int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.brokers), len(r.index)
}
