package broker

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// logBuffer collects a broker's log lines for a test to read.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) lines(level, substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.buf.String(), "\n") {
		if strings.Contains(line, "level="+level) && strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

// counterValue is the value of a counter series in reg, or -1 when it is
// not exported.
func counterValue(tb testing.TB, reg *prometheus.Registry, name, label, value string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

// TestDispatchSkipsOutOfOrderLoudly: a record whose queue offset does not
// follow its queue's is skipped with an ERROR line and a metric, and the
// records after it are still dispatched. Appends cannot produce one since
// a publish refuses a topic deleted under it, so the test writes one into
// the log directly, as a bug or a damaged log would.
func TestDispatchSkipsOutOfOrderLoudly(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("first"))

	bad := &Message{Body: []byte("stray"), ContentType: DefaultContentType, ID: "stray1", Topic: "t", BornAt: b.now()}
	rec := encodeRecord(nil, bad)
	patchRecord(rec, b.now(), 5) // the queue is at 1
	b.appendMu.Lock()
	_, end, err := b.log.Append([][]byte{rec})
	b.appendMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.log.Sync(ctx, end); err != nil {
		t.Fatal(err)
	}
	after := publish(t, b, "t", msg("after"))[0]
	if after.QueueOffset != 1 {
		t.Fatalf("the publish after the stray record got offset %d, want 1", after.QueueOffset)
	}
	got, _, err := b.ReadQueueWait(ctx, "t", 0, 1, 10, 0)
	if err != nil || len(got) != 1 || got[0].ID != after.ID {
		t.Fatalf("queue after the stray record: %d messages (%v), want the one published after it", len(got), err)
	}
	if n := counterValue(t, reg, "postbus_dispatch_skipped_records_total", "reason", "out_of_order"); n != 1 {
		t.Errorf("postbus_dispatch_skipped_records_total{reason=out_of_order} = %v, want 1", n)
	}
	if lines := logs.lines("ERROR", "out of order"); len(lines) != 1 {
		t.Errorf("%d ERROR lines about the out-of-order record, want 1:\n%s", len(lines), strings.Join(logs.lines("", "out of order"), "\n"))
	}
}
