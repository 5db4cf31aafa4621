package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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

// counterValue is the value of a counter series in reg (the first series
// when label is ""), or -1 when it is not exported.
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
			if label == "" {
				return m.GetCounter().GetValue()
			}
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

// TestDamagedRecordInSealedSegment: one record damaged in an old, sealed
// segment while the broker is stopped. The broker opens, with its indexes
// as they were or rebuilt from the log; every other message reads back by
// id, by key and at its queue offset; the damaged one answers a clear
// problem of its own; a rebuild counts and logs the quarantined span and
// keeps the queue offsets acknowledged after it.
func TestDamagedRecordInSealedSegment(t *testing.T) {
	for _, rebuild := range []bool{false, true} {
		t.Run(fmt.Sprintf("rebuild=%v", rebuild), func(t *testing.T) {
			ctx := context.Background()
			cfg := testConfig(t, t.TempDir())
			b := openBroker(t, cfg)
			if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
				t.Fatal(err)
			}
			const n, size, batch = 50, 200 << 10, 10 // 10 MB: past the first of testConfig's 8 MiB segments
			var res []Result
			bodyOf := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, size) }
			for i := 0; i < n; i += batch {
				var msgs []*Message
				for j := i; j < i+batch; j++ {
					msgs = append(msgs, &Message{Body: bodyOf(j), Keys: []string{fmt.Sprint("k-", j)}})
				}
				res = append(res, publish(t, b, "t", msgs...)...)
			}
			victim := res[3]
			segs := b.log.Segments()
			if len(segs) < 2 || victim.logOffset >= segs[0].End {
				t.Fatalf("the victim at %d is not in a sealed segment of %d", victim.logOffset, len(segs))
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			// Flip one byte of the victim's body on disk.
			f, err := os.OpenFile(filepath.Join(cfg.Dir, "commitlog", fmt.Sprintf("%020d", segs[0].Base)), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			at := victim.logOffset - segs[0].Base + 12 + size/2
			var one [1]byte
			if _, err := f.ReadAt(one[:], at); err != nil {
				t.Fatal(err)
			}
			one[0] ^= 0xff
			if _, err := f.WriteAt(one[:], at); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if rebuild {
				for _, d := range []string{"index", "consumequeue", checkpointFile} {
					if err := os.RemoveAll(filepath.Join(cfg.Dir, d)); err != nil {
						t.Fatal(err)
					}
				}
			}
			logs := &logBuffer{}
			cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
			reg := prometheus.NewRegistry()
			cfg.Registerer = reg
			b, err = Open(ctx, cfg)
			if err != nil {
				t.Fatalf("open with one damaged record: %v", err)
			}
			defer b.Close()

			for i, r := range res {
				if i == 3 {
					continue
				}
				m, err := b.Message(ctx, r.ID)
				if err != nil || !bytes.Equal(m.Body, bodyOf(i)) {
					t.Fatalf("message %d by id: %v", i, err)
				}
				byKey, _, err := b.MessagesByKey(ctx, "t", fmt.Sprint("k-", i), 0, 10)
				if err != nil || len(byKey) != 1 || byKey[0].ID != r.ID {
					t.Fatalf("message %d by key: %d messages, %v", i, len(byKey), err)
				}
			}
			got, next, err := b.ReadQueueWait(ctx, "t", 0, 0, 2*n, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != n-1 || next != n {
				t.Fatalf("queue read: %d messages up to %d, want %d up to %d", len(got), next, n-1, n)
			}
			for _, m := range got {
				if m.ID == victim.ID {
					t.Fatal("the damaged message was read from its queue")
				}
				if i := slices.IndexFunc(res, func(r Result) bool { return r.ID == m.ID }); i < 0 || res[i].QueueOffset != m.QueueOffset {
					t.Fatalf("message %s read at queue offset %d, acknowledged at %d", m.ID, m.QueueOffset, res[i].QueueOffset)
				}
			}
			if _, err := b.ReadMessageAt("t", 0, victim.QueueOffset); CodeOf(err) != "message_damaged" {
				t.Errorf("the damaged entry by queue offset: %v, want message_damaged", err)
			}
			_, err = b.Message(ctx, victim.ID)
			if want := Code("message_damaged"); !rebuild && CodeOf(err) != want {
				t.Errorf("the damaged message by id: %v, want %s", err, want)
			}
			if rebuild && !errors.Is(err, ErrMessageNotFound) {
				// Rebuilt around the damage, the index never saw its id.
				t.Errorf("the damaged message by id after a rebuild: %v, want %s", err, CodeMessageNotFound)
			}
			if r := publish(t, b, "t", msg("after"))[0]; r.QueueOffset != n {
				t.Errorf("a new publish got queue offset %d, want %d", r.QueueOffset, n)
			}
			if rebuild {
				if v := counterValue(t, reg, "postbus_dispatch_skipped_records_total", "reason", "corrupt"); v != 1 {
					t.Errorf("postbus_dispatch_skipped_records_total{reason=corrupt} = %v, want 1", v)
				}
				if lines := logs.lines("ERROR", "quarantined"); len(lines) == 0 {
					t.Error("no ERROR line about the quarantined span")
				}
			}
		})
	}
}

// TestDamagedQueueTailKeepsOffsets: the last record of a queue is damaged
// (with intact records of another topic after it) after a group has pulled
// past it; rebuilt from the log, the queue keeps the damaged record's
// offset as a hole, so the next message takes a new offset and the group
// gets it, rather than it taking the offset the group has passed.
func TestDamagedQueueTailKeepsOffsets(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	var last Result
	for i := 0; i < 5; i++ {
		last = publish(t, b, "t", msg(fmt.Sprintf("message %d of t, long enough to damage", i)))[0]
	}
	publish(t, b, "other", msg("an intact record after the damaged one"))
	got := pullN(t, b, "g", "t", 10, 0, time.Minute)
	if len(got) != 5 {
		t.Fatalf("pulled %d of 5", len(got))
	}
	if err := b.Ack(ctx, "g", receipts(got)); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(cfg.Dir, "commitlog", fmt.Sprintf("%020d", 0)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	at := last.logOffset + 12 + 70
	one := make([]byte, 1)
	if _, err := f.ReadAt(one, at); err != nil {
		t.Fatal(err)
	}
	one[0] ^= 0xff
	if _, err := f.WriteAt(one, at); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, d := range []string{"index", "consumequeue", checkpointFile} {
		if err := os.RemoveAll(filepath.Join(cfg.Dir, d)); err != nil {
			t.Fatal(err)
		}
	}
	b = openBroker(t, cfg)
	r := publish(t, b, "t", msg("after the damage"))[0]
	if r.QueueOffset != 5 {
		t.Errorf("the next message took queue offset %d, want 5 (4 was the damaged one's)", r.QueueOffset)
	}
	got = pullN(t, b, "g", "t", 10, 0, time.Minute)
	if len(got) != 1 || got[0].ID != r.ID {
		t.Fatalf("the group pulled %d messages after the damage, want the new one", len(got))
	}
}

// TestCutQueueTailKeepsOffsets: the log's last record is lost (zeroed, as
// a tail not yet synced under async flush is after a crash) after a group
// has pulled past it. The queue keeps its offset as a hole, logged and
// counted, so the next message takes a new offset and the group gets it.
func TestCutQueueTailKeepsOffsets(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	var last Result
	for i := 0; i < 5; i++ {
		last = publish(t, b, "t", msg(fmt.Sprint("message ", i)))[0]
	}
	got := pullN(t, b, "g", "t", 10, 0, time.Minute)
	if err := b.Ack(ctx, "g", receipts(got)); err != nil || len(got) != 5 {
		t.Fatalf("pulled %d of 5 (%v)", len(got), err)
	}
	end := b.log.End()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(cfg.Dir, "commitlog", fmt.Sprintf("%020d", 0)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, end-last.logOffset), last.logOffset); err != nil {
		t.Fatal(err)
	}
	f.Close()
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	b = openBroker(t, cfg)
	if _, err := b.Message(ctx, last.ID); !errors.Is(err, ErrMessageNotFound) {
		t.Fatalf("the cut message: %v; the test expects it gone", err)
	}
	r := publish(t, b, "t", msg("after the cut"))[0]
	if r.QueueOffset != 5 {
		t.Errorf("the next message took queue offset %d, want 5 (4 was the lost one's, which the group passed)", r.QueueOffset)
	}
	got = pullN(t, b, "g", "t", 10, 0, time.Minute)
	if len(got) != 1 || got[0].ID != r.ID {
		t.Errorf("the group pulled %d messages after the cut, want the new one", len(got))
	}
	if v := counterValue(t, reg, "postbus_recovery_lost_queue_offsets_total", "", ""); v != 1 {
		t.Errorf("postbus_recovery_lost_queue_offsets_total = %v, want 1", v)
	}
	if lines := logs.lines("ERROR", "read past the end"); len(lines) != 1 {
		t.Errorf("%d ERROR lines about the lost queue end, want 1", len(lines))
	}
}

// TestLostLogTailKeepsOffsets: the end of the log removed while the broker
// is stopped after a clean shutdown (its newest segment deleted, cut, or its
// last record damaged and so cut as torn) lost acknowledged, indexed
// messages. Open must say so at ERROR and in Damaged (so /readyz and the
// quarantined-spans gauge show it), count the lost queue offsets, and keep
// them as holes so the next message does not take a lost one's offset.
func TestLostLogTailKeepsOffsets(t *testing.T) {
	const n = 7
	for _, tc := range []struct {
		name string
		lost int // how many of the n messages the damage removes
		// damage changes the stopped broker's log; segs are its segment
		// files, newest last, res the publishes' results.
		damage func(t *testing.T, segs []string, res []Result, end int64)
	}{
		{"delete newest segment", 2, func(t *testing.T, segs []string, res []Result, end int64) {
			if err := os.Remove(segs[len(segs)-1]); err != nil {
				t.Fatal(err)
			}
		}},
		{"cut to the middle", 1, func(t *testing.T, segs []string, res []Result, end int64) {
			zeroFrom(t, segs[len(segs)-1], res[n-1].logOffset-(1<<20), end-res[n-1].logOffset)
		}},
		{"bit flip in the last record", 1, func(t *testing.T, segs []string, res []Result, end int64) {
			f, err := os.OpenFile(segs[len(segs)-1], os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			at := end - 1 - (1 << 20)
			var bt [1]byte
			if _, err := f.ReadAt(bt[:], at); err != nil {
				t.Fatal(err)
			}
			bt[0] ^= 0x10
			if _, err := f.WriteAt(bt[:], at); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		// The consume queues, the key index and the checkpoint are derived:
		// removed while stopped too, they are rebuilt from the log, and
		// what is left must still prove the loss and keep the lost
		// messages' queue offsets (found by the hostile pass: with any one
		// of them gone, new publishes took those offsets).
		for _, drop := range [][]string{nil, {"consumequeue"}, {"index"}, {checkpointFile}, {"index", checkpointFile}} {
			name := tc.name
			if len(drop) > 0 {
				name += ", " + strings.Join(drop, " and ") + " removed"
			}
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				cfg := testConfig(t, t.TempDir())
				cfg.SegmentSize = 1 << 20
				b := openBroker(t, cfg)
				res := publishTwoSegments(t, b, n)
				end := b.log.End()
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
				segs, err := filepath.Glob(filepath.Join(cfg.Dir, "commitlog", "0*"))
				if err != nil || len(segs) != 2 {
					t.Fatalf("segment files %v (%v)", segs, err)
				}
				tc.damage(t, segs, res, end)
				b, logs, reg := reopenWatched(t, cfg, drop...)
				for i, r := range res {
					_, err := b.Message(ctx, r.ID)
					if i < n-tc.lost && err != nil {
						t.Errorf("message %d: %v, want it kept", i, err)
					}
					if i >= n-tc.lost && !errors.Is(err, ErrMessageNotFound) {
						t.Fatalf("message %d: %v; the test expects it lost", i, err)
					}
				}
				cut := res[n-tc.lost].logOffset
				// Rebuilt queues count the lost entries in the metric only
				// (from the checkpoint, after the rebuild).
				lines := logs.lines("ERROR", "ends before what was stored")
				want := fmt.Sprintf("lost_queue_entries=%d", tc.lost)
				if len(lines) == 1 && strings.Contains(lines[0], "queues_rebuilt=true") {
					want = "queues_rebuilt=true"
				}
				if len(lines) != 1 || !strings.Contains(lines[0], want) {
					t.Errorf("ERROR lines about the lost tail: %q, want one with %s", lines, want)
				}
				if d := b.Damaged(); len(d) != 1 || d[0].Offset > cut || d[0].Next != end {
					t.Errorf("Damaged() = %+v, want one span from at most %d to %d", d, cut, end)
				}
				if v := counterValue(t, reg, "postbus_recovery_lost_queue_offsets_total", "", ""); v != float64(tc.lost) {
					t.Errorf("postbus_recovery_lost_queue_offsets_total = %v, want %d", v, tc.lost)
				}
				r := publish(t, b, "t", msg("after the loss"))[0]
				if r.QueueOffset != n {
					t.Errorf("the next message took queue offset %d, want %d (a lost message's offset reused)", r.QueueOffset, n)
				}
				got := pullN(t, b, "g", "t", 20, 0, time.Minute)
				if len(got) != n-tc.lost+1 || got[len(got)-1].ID != r.ID {
					t.Errorf("a new group pulled %d messages, want the %d kept and the new one last", len(got), n-tc.lost)
				}
			})
		}
	}
}

// publishTwoSegments creates topic t with one queue and publishes n (7)
// messages of 200 KiB, with keys k0..k6, on segments of 1 MiB: five fill
// the first segment, the last two go to the second.
func publishTwoSegments(t *testing.T, b *Broker, n int) []Result {
	t.Helper()
	if _, _, err := b.PutTopic(context.Background(), "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	var res []Result
	for i := 0; i < n; i++ {
		body := strings.Repeat(fmt.Sprint(i), 200<<10)
		res = append(res, publish(t, b, "t", &Message{Body: []byte(body), Keys: []string{fmt.Sprint("k", i)}})...)
	}
	if got := len(b.log.Segments()); got != 2 || res[n-2].logOffset < 1<<20 || res[n-3].logOffset >= 1<<20 {
		t.Fatalf("%d segments, message %d at %d: the test expects the last two in a second segment of 1 MiB", got, n-2, res[n-2].logOffset)
	}
	return res
}

// reopenWatched opens a stopped broker's data directory again, with its
// log lines and metrics kept for the test, after removing the derived
// files or directories named in drop (consumequeue, index,
// checkpoint.json), as they may be lost.
func reopenWatched(t *testing.T, cfg Config, drop ...string) (*Broker, *logBuffer, *prometheus.Registry) {
	t.Helper()
	for _, d := range drop {
		if err := os.RemoveAll(filepath.Join(cfg.Dir, d)); err != nil {
			t.Fatal(err)
		}
	}
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	return openBroker(t, cfg), logs, reg
}

func zeroFrom(t *testing.T, path string, at, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, n), at); err != nil {
		t.Fatal(err)
	}
}

// TestLostRetryCopyCountsDroppedTimer: a pulled, unacknowledged message's
// redelivery copy lost with the log's tail while the broker was stopped
// cannot be brought back (its timer knows only the copy's offset): dropping
// its timer is an ERROR and counts in postbus_delay_timers_dropped_total.
func TestLostRetryCopyCountsDroppedTimer(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", msg("in flight"))
	copyAt := b.log.End() // the pull's redelivery copy goes here
	if got := pullN(t, b, "g", "t", 1, 0, time.Hour); len(got) != 1 {
		t.Fatalf("pulled %d messages, want 1", len(got))
	}
	end := b.log.End()
	if end <= copyAt {
		t.Fatalf("the pull appended nothing at %d: the test expects its redelivery copy there", copyAt)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	zeroFrom(t, filepath.Join(cfg.Dir, "commitlog", fmt.Sprintf("%020d", 0)), copyAt, end-copyAt)

	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	later := time.Now().Add(2 * time.Hour)
	cfg.Now = func() time.Time { return later }
	openBroker(t, cfg)
	waitFor(t, 20*time.Second, "postbus_delay_timers_dropped_total to reach 1", func() bool {
		return counterValue(t, reg, "postbus_delay_timers_dropped_total", "", "") == 1
	})
	if lines := logs.lines("ERROR", "dropping its timer"); len(lines) != 1 {
		t.Errorf("%d ERROR lines about the dropped timer, want 1", len(lines))
	}
}

// TestLostLogHeadReported: the oldest segment deleted while the broker was
// stopped, well within retention, used to vanish without a word: its
// messages answered 404 "may have expired", reads skipped them with WARN
// lines, and /readyz, the quarantine gauge and the lost-offsets counter
// said nothing (found by the hostile pass, F1). Retention raises the
// consume queues' floor before it deletes a segment, so a segment missing
// above the floor was lost: it is reported like a lost tail, the queues
// start after it, and nothing else changes. Segments retired by retention,
// and queues rebuilt from the log, are not reported.
func TestLostLogHeadReported(t *testing.T) {
	const n = 7
	for _, tc := range []struct {
		name     string
		retire   bool // retention deletes the first segment, not the test
		rebuilt  bool // consumequeue/ removed while stopped too
		wantLost int
	}{
		{name: "oldest segment deleted", wantLost: 5},
		{name: "retired by retention", retire: true},
		{name: "retired by retention, queues rebuilt", retire: true, rebuilt: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clock := &tortureClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			cfg := testConfig(t, t.TempDir())
			cfg.SegmentSize = 1 << 20
			cfg.Now = clock.Now
			cfg.Retention = time.Hour
			cfg.RetentionInterval = time.Hour // run by the test
			b := openBroker(t, cfg)
			res := publishTwoSegments(t, b, n)
			next := int64(n)
			if tc.retire {
				// Past retention, and a third segment: retention dates the
				// first by the second's first record, and deletes it.
				clock.advance(2 * time.Hour)
				for len(b.log.Segments()) < 3 {
					publish(t, b, "t", &Message{Body: make([]byte, 200<<10)})
					next++
				}
				if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
					t.Fatal(err)
				}
				if err := b.applyRetention(); err != nil {
					t.Fatal(err)
				}
				if b.log.MinOffset() != 1<<20 {
					t.Fatalf("retention left the log at %d", b.log.MinOffset())
				}
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if !tc.retire {
				if err := os.Remove(filepath.Join(cfg.Dir, "commitlog", "00000000000000000000")); err != nil {
					t.Fatal(err)
				}
			}
			var drop []string
			if tc.rebuilt {
				drop = []string{"consumequeue"}
			}
			b, logs, reg := reopenWatched(t, cfg, drop...)
			lines := logs.lines("ERROR", "starts after records")
			lostMetric := counterValue(t, reg, "postbus_recovery_lost_queue_offsets_total", "", "")
			if tc.wantLost == 0 {
				if len(lines) != 0 || len(b.Damaged()) != 0 || lostMetric != 0 {
					t.Fatalf("segments retired by retention reported lost: %q, %+v, metric %v", lines, b.Damaged(), lostMetric)
				}
			} else {
				if len(lines) != 1 || !strings.Contains(lines[0], fmt.Sprintf("lost_queue_entries=%d", tc.wantLost)) {
					t.Errorf("ERROR lines about the lost start: %q, want one with lost_queue_entries=%d", lines, tc.wantLost)
				}
				if d := b.Damaged(); len(d) != 1 || d[0].Offset != 0 || d[0].Next != 1<<20 {
					t.Errorf("Damaged() = %+v, want one span [0, %d)", d, 1<<20)
				}
				if lostMetric != float64(tc.wantLost) {
					t.Errorf("postbus_recovery_lost_queue_offsets_total = %v, want %d", lostMetric, tc.wantLost)
				}
			}
			if lo, hi := b.QueueBounds("t", 0); lo != 5 || hi != next {
				t.Errorf("queue bounds [%d, %d), want [5, %d)", lo, hi, next)
			}
			for i := 5; i < n && !tc.retire; i++ { // (retired, they are past retention too)
				if _, err := b.Message(ctx, res[i].ID); err != nil {
					t.Errorf("message %d: %v, want it kept", i, err)
				}
			}
			if r := publish(t, b, "t", msg("after"))[0]; r.QueueOffset != next {
				t.Errorf("the next message took queue offset %d, want %d", r.QueueOffset, next)
			}
		})
	}
}

// TestSealedDamageFoundWithoutReads: a record damaged in a sealed segment
// while the broker was stopped used to be reported only when something
// read it (found by the hostile pass, F8: after a disk incident /readyz
// said ready with nothing listed). The background check after start reads
// every sealed segment, so the damage is quarantined and reported (ERROR,
// Damaged) with no read at all; every other message is still there.
func TestSealedDamageFoundWithoutReads(t *testing.T) {
	const n = 7
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	cfg.SegmentSize = 1 << 20
	b := openBroker(t, cfg)
	res := publishTwoSegments(t, b, n)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// One byte in the middle of message 2's body, in the sealed segment.
	at := res[2].logOffset + 100<<10
	f, err := os.OpenFile(filepath.Join(cfg.Dir, "commitlog", "00000000000000000000"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var bt [1]byte
	if _, err := f.ReadAt(bt[:], at); err != nil {
		t.Fatal(err)
	}
	bt[0] ^= 0x01
	if _, err := f.WriteAt(bt[:], at); err != nil {
		t.Fatal(err)
	}
	f.Close()

	b, logs, _ := reopenWatched(t, cfg)
	waitFor(t, 15*time.Second, "the damaged record quarantined without a read", func() bool { return len(b.Damaged()) == 1 })
	if d := b.Damaged()[0]; d.Offset != res[2].logOffset || d.Next != res[3].logOffset {
		t.Errorf("Damaged() = %+v, want message 2's record [%d, %d)", d, res[2].logOffset, res[3].logOffset)
	}
	if lines := logs.lines("ERROR", "quarantined"); len(lines) != 1 {
		t.Errorf("ERROR lines about the damage: %q, want one", lines)
	}
	for i, r := range res {
		_, err := b.Message(ctx, r.ID)
		if i == 2 && CodeOf(err) != CodeMessageDamaged {
			t.Errorf("message 2: %v, want %s", err, CodeMessageDamaged)
		}
		if i != 2 && err != nil {
			t.Errorf("message %d: %v, want it kept", i, err)
		}
	}
}

// TestDamagedDerivedFilesRebuildLoudly: an unreadable checkpoint or a
// corrupt key index is rebuilt from the log (nothing is lost), and the
// rebuild is an ERROR line and a count in postbus_recovery_rebuilds_total,
// not a quiet re-index. A missing checkpoint (a first start) is not counted.
func TestDamagedDerivedFilesRebuildLoudly(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string)
		reason string // "" for no rebuild counted
	}{
		{"missing checkpoint", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, checkpointFile)); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"garbled checkpoint", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, checkpointFile), []byte(`{"dispatched": 12, "queues": {`), 0o644); err != nil {
				t.Fatal(err)
			}
		}, rebuildCheckpoint},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cfg := testConfig(t, t.TempDir())
			b := openBroker(t, cfg)
			var ids []string
			for i := range 20 {
				ids = append(ids, publish(t, b, "t", msg(fmt.Sprintf("m%d", i)))[0].ID)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, cfg.Dir)
			logs := &logBuffer{}
			cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
			reg := prometheus.NewRegistry()
			cfg.Registerer = reg
			b = openBroker(t, cfg)
			for i, id := range ids {
				m, err := b.Message(ctx, id)
				if err != nil || string(m.Body) != fmt.Sprintf("m%d", i) {
					t.Fatalf("message %d after the rebuild: %v", i, err)
				}
			}
			for _, r := range []string{rebuildCheckpoint, rebuildKeyIndex} {
				want := 0.0
				if r == tc.reason {
					want = 1
				}
				if got := counterValue(t, reg, "postbus_recovery_rebuilds_total", "reason", r); got != want {
					t.Errorf("postbus_recovery_rebuilds_total{reason=%q} = %v, want %v", r, got, want)
				}
			}
			if errs := logs.lines("ERROR", "rebuilding"); (len(errs) > 0) != (tc.reason != "") {
				t.Errorf("ERROR lines about a rebuild: %q, want some: %v", errs, tc.reason != "")
			}
		})
	}
}
