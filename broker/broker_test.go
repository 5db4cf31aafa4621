package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func testConfig(tb testing.TB, dir string) Config {
	tb.Helper()
	cfg := DefaultConfig(dir)
	cfg.SegmentSize = 8 << 20
	cfg.MaxMessageBytes = 256 << 10
	cfg.AutoCreateTopics = true
	cfg.CheckpointInterval = 50 * time.Millisecond
	return cfg
}

func openBroker(tb testing.TB, cfg Config) *Broker {
	tb.Helper()
	b, err := Open(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("open broker: %v", err)
	}
	tb.Cleanup(func() { b.Close() })
	return b
}

func publish(tb testing.TB, b *Broker, topic string, msgs ...*Message) []Result {
	tb.Helper()
	res, err := b.Publish(context.Background(), topic, msgs)
	if err != nil {
		tb.Fatalf("publish to %s: %v", topic, err)
	}
	return res
}

func msg(body string) *Message { return &Message{Body: []byte(body)} }

func TestPublishAndQuery(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, testConfig(t, t.TempDir()))

	res := publish(t, b, "orders", &Message{
		Body: []byte(`{"id":1001}`), ContentType: "application/json", Tag: "created",
		Keys: []string{"order-1001", "customer-7"}, Properties: map[string]string{"Region": "eu"},
	})
	if len(res) != 1 || res[0].ID == "" || res[0].Topic != "orders" || res[0].Duplicate {
		t.Fatalf("result = %+v", res)
	}
	got, err := b.Message(ctx, res[0].ID)
	if err != nil {
		t.Fatalf("Message(%s): %v", res[0].ID, err)
	}
	if string(got.Body) != `{"id":1001}` || got.Tag != "created" || got.ContentType != "application/json" ||
		got.Properties["Region"] != "eu" || got.QueueID != res[0].QueueID || got.QueueOffset != res[0].QueueOffset {
		t.Errorf("stored message = %+v", got)
	}
	publish(t, b, "orders", &Message{Body: []byte("second"), Keys: []string{"order-1001"}})
	publish(t, b, "other", &Message{Body: []byte("other topic"), Keys: []string{"order-1001"}})
	byKey, next, err := b.MessagesByKey(ctx, "orders", "order-1001", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(byKey) != 2 || string(byKey[0].Body) != "second" || string(byKey[1].Body) != `{"id":1001}` || next != 0 {
		t.Fatalf("by key: %d messages, next %d; want second then first", len(byKey), next)
	}
	page, next, err := b.MessagesByKey(ctx, "orders", "order-1001", 0, 1)
	if err != nil || len(page) != 1 || next == 0 {
		t.Fatalf("first page: %d messages, next %d, err %v", len(page), next, err)
	}
	page2, _, err := b.MessagesByKey(ctx, "orders", "order-1001", next, 1)
	if err != nil || len(page2) != 1 || string(page2[0].Body) != `{"id":1001}` {
		t.Fatalf("second page: %+v, %v", page2, err)
	}
	if _, err := b.Message(ctx, "nosuchmessage0000000000"); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("unknown id: err = %v, want message_not_found", err)
	}
	if _, err := b.Message(ctx, "bad id!"); CodeOf(err) != CodeInvalidMessageID {
		t.Errorf("malformed id: err = %v", err)
	}
}

func TestQueueSelection(t *testing.T) {
	b := openBroker(t, testConfig(t, t.TempDir()))
	if _, _, err := b.PutTopic(context.Background(), "t", TopicSettings{Queues: 4}); err != nil {
		t.Fatal(err)
	}
	counts := map[int]int{}
	for i := 0; i < 40; i++ {
		counts[publish(t, b, "t", msg("rr"))[0].QueueID]++
	}
	for q := 0; q < 4; q++ {
		if counts[q] != 10 {
			t.Errorf("round robin put %d messages in queue %d, want 10 (all: %v)", counts[q], q, counts)
		}
	}
	first := publish(t, b, "t", &Message{Body: []byte("k"), ShardingKey: "customer-7"})[0]
	for i := 0; i < 10; i++ {
		r := publish(t, b, "t", &Message{Body: []byte("k"), ShardingKey: "customer-7"})[0]
		if r.QueueID != first.QueueID || r.QueueOffset != first.QueueOffset+int64(i)+1 {
			t.Fatalf("sharding key went to queue %d offset %d; want queue %d offset %d",
				r.QueueID, r.QueueOffset, first.QueueID, first.QueueOffset+int64(i)+1)
		}
	}
}

// TestBadInputStoresNothing: every invalid publish gets its code, and the
// log does not move.
func TestBadInputStoresNothing(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.MaxMessageBytes = 1024
	b := openBroker(t, cfg)
	publish(t, b, "t", msg("seed"))
	manyKeys := make([]string, MaxKeys+1)
	for i := range manyKeys {
		manyKeys[i] = fmt.Sprint("k", i)
	}
	manyProps := map[string]string{}
	for i := 0; i <= MaxProperties; i++ {
		manyProps[fmt.Sprint("p", i)] = "v"
	}
	tooMany := make([]*Message, MaxBatchMessages+1)
	for i := range tooMany {
		tooMany[i] = msg("x")
	}
	tests := []struct {
		name  string
		topic string
		msgs  []*Message
		code  Code
	}{
		{"invalid topic", "bad topic!", []*Message{msg("x")}, CodeInvalidTopic},
		{"system topic", "%DLQ%g", []*Message{msg("x")}, CodeSystemTopic},
		{"long topic", strings.Repeat("a", 128), []*Message{msg("x")}, CodeInvalidTopic},
		{"empty body", "t", []*Message{{}}, CodeEmptyBody},
		{"body too large", "t", []*Message{{Body: make([]byte, 1025)}}, CodeBodyTooLarge},
		{"long tag", "t", []*Message{{Body: []byte("x"), Tag: strings.Repeat("é", 128)}}, CodeInvalidTag},
		{"tag with ||", "t", []*Message{{Body: []byte("x"), Tag: "a||b"}}, CodeInvalidTag},
		{"blank tag", "t", []*Message{{Body: []byte("x"), Tag: "  "}}, CodeInvalidTag},
		{"control char tag", "t", []*Message{{Body: []byte("x"), Tag: "a\x00"}}, CodeInvalidTag},
		{"too many keys", "t", []*Message{{Body: []byte("x"), Keys: manyKeys}}, CodeInvalidKeys},
		{"empty key", "t", []*Message{{Body: []byte("x"), Keys: []string{""}}}, CodeInvalidKeys},
		{"too many properties", "t", []*Message{{Body: []byte("x"), Properties: manyProps}}, CodeInvalidProperties},
		{"bad property name", "t", []*Message{{Body: []byte("x"), Properties: map[string]string{"a b": "v"}}}, CodeInvalidProperties},
		{"huge property value", "t", []*Message{{Body: []byte("x"), Properties: map[string]string{"p": strings.Repeat("v", MaxPropertyValueLen+1)}}}, CodeInvalidProperties},
		{"two delays", "t", []*Message{{Body: []byte("x"), Delay: time.Second, DelayLevel: 2}}, CodeInvalidDelay},
		{"delay level 19", "t", []*Message{{Body: []byte("x"), DelayLevel: 19}}, CodeInvalidDelay},
		{"delay past max", "t", []*Message{{Body: []byte("x"), Delay: 31 * 24 * time.Hour}}, CodeInvalidDelay},
		{"long dedup id", "t", []*Message{{Body: []byte("x"), DedupID: strings.Repeat("d", MaxDedupIDLen+1)}}, CodeInvalidDedupID},
		{"empty batch", "t", []*Message{}, CodeInvalidBatch},
		{"batch over 1000", "t", tooMany, CodeBatchTooLarge},
		{"one bad message spoils the batch", "t", []*Message{msg("ok"), msg("ok"), {Body: []byte("x"), Tag: "a||b"}}, CodeInvalidTag},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := b.log.End()
			_, err := b.Publish(context.Background(), tt.topic, tt.msgs)
			if CodeOf(err) != tt.code {
				t.Fatalf("err = %v, want code %s", err, tt.code)
			}
			if after := b.log.End(); after != before {
				t.Errorf("log end moved from %d to %d by a refused publish", before, after)
			}
		})
	}
	st, err := b.Topic(context.Background(), "t")
	if err != nil || st.Messages != 1 {
		t.Fatalf("topic t holds %d messages (err %v), want only the seed", st.Messages, err)
	}
	b.topicsMu.RLock()
	_, created := b.topics["bad topic!"]
	b.topicsMu.RUnlock()
	if created {
		t.Error("a refused publish auto-created its topic")
	}
}

func TestAutoCreateOff(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.AutoCreateTopics = false
	b := openBroker(t, cfg)
	if _, err := b.Publish(context.Background(), "orders", []*Message{msg("x")}); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("publish to unknown topic with auto-create off: err = %v", err)
	}
	if _, _, err := b.PutTopic(context.Background(), "orders", TopicSettings{}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "orders", msg("x"))
}

func TestDedup(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	b := openBroker(t, cfg)
	first := publish(t, b, "t", &Message{Body: []byte("a"), DedupID: "d1"})[0]
	again := publish(t, b, "t", &Message{Body: []byte("b"), DedupID: "d1"})[0]
	if !again.Duplicate || again.ID != first.ID || again.QueueOffset != first.QueueOffset {
		t.Fatalf("second publish with the same dedup id = %+v, want duplicate of %+v", again, first)
	}
	other := publish(t, b, "u", &Message{Body: []byte("c"), DedupID: "d1"})[0]
	if other.Duplicate {
		t.Fatal("a dedup id matched across topics")
	}
	batch := publish(t, b, "t", &Message{Body: []byte("x"), DedupID: "d2"}, &Message{Body: []byte("y"), DedupID: "d2"}, &Message{Body: []byte("z"), DedupID: "d1"})
	if batch[0].Duplicate || !batch[1].Duplicate || batch[1].ID != batch[0].ID || !batch[2].Duplicate || batch[2].ID != first.ID {
		t.Fatalf("batch dedup = %+v", batch)
	}
	st, _ := b.Topic(context.Background(), "t")
	if st.Messages != 2 {
		t.Fatalf("topic holds %d messages, want 2", st.Messages)
	}

	// Concurrent publishes of one dedup id store it once.
	var wg sync.WaitGroup
	ids := make([]string, 16)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := b.Publish(context.Background(), "t", []*Message{{Body: []byte("c"), DedupID: "conc"}})
			if err == nil {
				ids[i] = r[0].ID
			}
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] || id == "" {
			t.Fatalf("concurrent dedup gave ids %q", ids)
		}
	}

	// After a restart, within the window, the index remembers.
	b.Close()
	b2 := openBroker(t, cfg)
	r := publish(t, b2, "t", &Message{Body: []byte("after restart"), DedupID: "d1"})[0]
	if !r.Duplicate || r.ID != first.ID {
		t.Fatalf("dedup after restart = %+v, want duplicate of %s", r, first.ID)
	}
	// Past the window it is a new message.
	cfg.Now = func() time.Time { return time.Now().Add(cfg.DedupWindow + time.Minute) }
	b2.Close()
	b3 := openBroker(t, cfg)
	if r := publish(t, b3, "t", &Message{Body: []byte("later"), DedupID: "d1"})[0]; r.Duplicate {
		t.Fatal("dedup id matched after the window passed")
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	b := openBroker(t, cfg)
	var ids []string
	for i := 0; i < 300; i++ {
		body := bytes.Repeat([]byte{byte(i)}, 5000)
		ids = append(ids, publish(t, b, "t", &Message{Body: body, Keys: []string{fmt.Sprint("k", i%7)}})[0].ID)
	}
	before, _ := b.Topic(context.Background(), "t")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	for _, lose := range []string{"", checkpointFile, "index", "consumequeue"} {
		t.Run("lose "+lose, func(t *testing.T) {
			if lose != "" {
				if err := os.RemoveAll(filepath.Join(dir, lose)); err != nil {
					t.Fatal(err)
				}
			}
			b := openBroker(t, cfg)
			after, err := b.Topic(context.Background(), "t")
			if err != nil {
				t.Fatal(err)
			}
			if after.Messages != before.Messages || after.Bytes != before.Bytes {
				t.Fatalf("after reopen: %d messages %d bytes, before %d / %d", after.Messages, after.Bytes, before.Messages, before.Bytes)
			}
			for i, id := range ids {
				m, err := b.Message(context.Background(), id)
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				if !bytes.Equal(m.Body, bytes.Repeat([]byte{byte(i)}, 5000)) {
					t.Fatalf("message %d body differs", i)
				}
			}
			byKey, _, err := b.MessagesByKey(context.Background(), "t", "k3", 0, 100)
			if err != nil || len(byKey) != 43 {
				t.Fatalf("by key k3: %d messages, err %v; want 43", len(byKey), err)
			}
			r := publish(t, b, "t", msg("more"))[0]
			if r.QueueOffset != after.Queues[r.QueueID].MaxOffset {
				t.Fatalf("new message got queue offset %d, want %d", r.QueueOffset, after.Queues[r.QueueID].MaxOffset)
			}
			// The next round expects the message just added.
			if before, err = b.Topic(context.Background(), "t"); err != nil {
				t.Fatal(err)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestDeleteAndRecreateTopic(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	b := openBroker(t, cfg)
	old := publish(t, b, "t", &Message{Body: []byte("old"), Keys: []string{"k"}})[0]
	if err := b.DeleteTopic(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Topic(ctx, "t"); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("deleted topic: err = %v", err)
	}
	if _, err := b.Message(ctx, old.ID); !errors.Is(err, ErrMessageNotFound) {
		t.Fatalf("message of a deleted topic: err = %v", err)
	}
	r := publish(t, b, "t", &Message{Body: []byte("new"), Keys: []string{"k"}})[0]
	if r.QueueOffset != 0 {
		t.Fatalf("recreated topic starts at offset %d", r.QueueOffset)
	}
	msgs, _, err := b.MessagesByKey(ctx, "t", "k", 0, 10)
	if err != nil || len(msgs) != 1 || string(msgs[0].Body) != "new" {
		t.Fatalf("by key after re-create: %d messages, %v", len(msgs), err)
	}
	b.Close()
	b = openBroker(t, cfg)
	st, err := b.Topic(ctx, "t")
	if err != nil || st.Messages != 1 {
		t.Fatalf("after reopen the recreated topic has %d messages (%v), want 1", st.Messages, err)
	}
}

func TestRetention(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	var mu sync.Mutex
	now := time.Now()
	cfg.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	cfg.Retention = time.Hour
	b := openBroker(t, cfg)
	var old []string
	for i := 0; i < 90; i++ { // 90 x 100 KiB: more than one segment
		old = append(old, publish(t, b, "t", &Message{Body: make([]byte, 100<<10)})[0].ID)
	}
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	fresh := publish(t, b, "t", &Message{Body: make([]byte, 100<<10)})[0]
	for len(b.log.Segments()) < 2 {
		publish(t, b, "t", msg("fill"))
	}
	segsBefore := len(b.log.Segments())
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	if err := b.applyRetention(); err != nil {
		t.Fatal(err)
	}
	if segs := len(b.log.Segments()); segs >= segsBefore {
		t.Fatalf("retention kept all %d segments", segs)
	}
	if _, err := b.Message(ctx, old[0]); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("expired message: err = %v", err)
	}
	if _, err := b.Message(ctx, fresh.ID); err != nil {
		t.Errorf("fresh message: %v", err)
	}
	st, _ := b.Topic(ctx, "t")
	var minSum int64
	for _, q := range st.Queues {
		minSum += q.MinOffset
	}
	if minSum == 0 {
		t.Error("queue min offsets did not move past expired messages")
	}
}

func TestDiskFullWatermark(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	used, err := DiskUsage(cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if used <= 0.001 {
		t.Skipf("disk use %.4f is too low to set a watermark under it", used)
	}
	cfg.DiskCleanRatio, cfg.DiskFullRatio = used/2, used/2
	b := openBroker(t, cfg)
	b.checkDisk()
	_, err = b.Publish(context.Background(), "t", []*Message{msg("x")})
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("publish over the full watermark: err = %v", err)
	}
	// While publishes are refused the broker says it is not ready.
	if err := b.Ready(); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Ready over the full watermark: %v, want the disk full", err)
	}
	b.Close()
	cfg.DiskCleanRatio, cfg.DiskFullRatio = 1, 1
	publish(t, openBroker(t, cfg), "t", msg("x"))
}

// TestGarbageTailTruncated: garbage after the last record of the log (a
// torn write) is cut off at start, every earlier message survives, and the
// broker takes publishes again.
func TestGarbageTailTruncated(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	b := openBroker(t, cfg)
	var ids []string
	for i := 0; i < 50; i++ {
		ids = append(ids, publish(t, b, "t", msg(fmt.Sprint("message ", i)))[0].ID)
	}
	end := b.log.End()
	segs := b.log.Segments()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	last := segs[len(segs)-1]
	f, err := os.OpenFile(filepath.Join(dir, "commitlog", fmt.Sprintf("%020d", last.Base)), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	garbage := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 1000)
	if _, err := f.WriteAt(garbage, end-last.Base); err != nil {
		t.Fatal(err)
	}
	f.Close()

	b = openBroker(t, cfg)
	if got := b.log.End(); got != end {
		t.Fatalf("log end after recovery = %d, want %d", got, end)
	}
	for i, id := range ids {
		m, err := b.Message(context.Background(), id)
		if err != nil || string(m.Body) != fmt.Sprint("message ", i) {
			t.Fatalf("message %d after recovery: %v", i, err)
		}
	}
	r := publish(t, b, "t", msg("after"))[0]
	if m, err := b.Message(context.Background(), r.ID); err != nil || string(m.Body) != "after" {
		t.Fatalf("publish after recovery: %v", err)
	}
}

// TestDiskCleanWatermark: over the clean watermark the broker's own disk
// check deletes the oldest segments before their retention, and keeps the
// newest one.
func TestDiskCleanWatermark(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	used, err := DiskUsage(cfg.Dir)
	if err != nil || used <= 0.001 {
		t.Skipf("disk use %.4f (%v) is too low to set a watermark under it", used, err)
	}
	cfg.DiskCleanRatio, cfg.DiskFullRatio = used/2, 1
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	cleanedBytes := func() float64 { return counterValue(t, reg, "postbus_disk_clean_dropped_bytes_total", "", "") }
	b := openBroker(t, cfg)
	first := publish(t, b, "t", &Message{Body: make([]byte, 100<<10)})[0].ID
	ids := []string{first}
	// Publish until the log spans several segments, or until the cleaner,
	// which runs all the while, has taken some already: on a nearly full
	// disk it deletes them as fast as they appear.
	for i := 0; len(b.log.Segments()) < 4 && cleanedBytes() == 0; i++ {
		if i == 1000 {
			t.Fatalf("1000 publishes of 100 KiB: %d segments, nothing cleaned", len(b.log.Segments()))
		}
		ids = append(ids, publish(t, b, "t", &Message{Body: make([]byte, 100<<10)})[0].ID)
	}
	deadline := time.Now().Add(10 * time.Second)
	// The counters move just after a segment goes: wait for both.
	for len(b.log.Segments()) > 1 || cleanedBytes() != float64(b.log.MinOffset()) {
		if time.Now().After(deadline) {
			t.Fatalf("%d segments remain (log from %d, %v bytes counted as cleaned) 10s after the disk went over the clean watermark",
				len(b.log.Segments()), b.log.MinOffset(), cleanedBytes())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := b.Message(context.Background(), first); !errors.Is(err, ErrMessageNotFound) {
		t.Fatalf("message in a cleaned segment: err = %v", err)
	}
	// Messages deleted before their retention are counted, with the log
	// bytes they took.
	gone := 0
	for _, id := range ids {
		if _, err := b.Message(context.Background(), id); errors.Is(err, ErrMessageNotFound) {
			gone++
		}
	}
	if got := counterValue(t, reg, "postbus_disk_clean_dropped_messages_total", "", ""); got != float64(gone) {
		t.Errorf("postbus_disk_clean_dropped_messages_total = %v, want %d (messages no longer found)", got, gone)
	}
	if got, want := cleanedBytes(), float64(b.log.MinOffset()); got != want {
		t.Errorf("postbus_disk_clean_dropped_bytes_total = %v, want %v (the log's start)", got, want)
	}
}

// TestTopicRetentionAppliesToEveryRead: a topic whose retention is shorter
// than the log's hides its older messages from every read, not only from a
// query by id: a read by queue offset, a new pull group and the topic's
// offsets agree. A topic with the broker's retention keeps its messages.
func TestTopicRetentionAppliesToEveryRead(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	var shift atomic.Int64
	start := time.Now()
	cfg.Now = func() time.Time { return start.Add(time.Duration(shift.Load())) }
	cfg.Retention = time.Hour
	b := openBroker(t, cfg)
	short := time.Minute
	for _, name := range []string{"short", "long"} {
		s := TopicSettings{Queues: 1}
		if name == "short" {
			s.Retention = &short
		}
		if _, _, err := b.PutTopic(ctx, name, s); err != nil {
			t.Fatal(err)
		}
	}
	var old []Result
	for i := 0; i < 3; i++ {
		old = append(old, publish(t, b, "short", msg(fmt.Sprint("old-", i)))[0])
		publish(t, b, "long", msg(fmt.Sprint("long-", i)))
	}
	before, err := b.Topic(ctx, "short")
	if err != nil {
		t.Fatal(err)
	}
	shift.Store(int64(2 * time.Minute)) // past "short"'s retention, within the log's
	fresh := publish(t, b, "short", msg("fresh"))[0]

	if _, err := b.Message(ctx, old[0].ID); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("expired message by id: %v", err)
	}
	got, next, err := b.ReadQueueWait(ctx, "short", 0, 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != fresh.ID || next != 4 {
		var bodies []string
		for _, m := range got {
			bodies = append(bodies, string(m.Body))
		}
		t.Errorf("read by offset from 0: %q (next %d), want only fresh", bodies, next)
	}
	if m, err := b.ReadMessageAt("short", 0, 0); err == nil {
		t.Errorf("entry 0 read by offset: %q, want it past retention", m.Body)
	}
	pulled := pullN(t, b, "new-group", "short", 10, 0, time.Minute)
	if len(pulled) != 1 || pulled[0].ID != fresh.ID {
		var bodies []string
		for _, p := range pulled {
			bodies = append(bodies, string(p.Body))
		}
		t.Errorf("a new pull group got %q, want only fresh", bodies)
	}
	st, err := b.Topic(ctx, "short")
	if err != nil {
		t.Fatal(err)
	}
	if q := st.Queues[0]; q.MinOffset != 3 || q.MaxOffset != 4 || q.Messages != 1 || st.Messages != 1 {
		t.Errorf("short's queue: %+v, %d messages; want offsets [3, 4), 1 message", q, st.Messages)
	}
	// Every record here has the same size: what is left is one of three.
	if st.Bytes != before.Bytes/3 || st.Queues[0].Bytes != st.Bytes {
		t.Errorf("short holds %d bytes (queue %d), want %d: one of the three records before", st.Bytes, st.Queues[0].Bytes, before.Bytes/3)
	}
	if got, _, err := b.ReadQueueWait(ctx, "long", 0, 0, 10, 0); err != nil || len(got) != 3 {
		t.Errorf("a topic with the broker's retention: %d messages by offset (%v), want 3", len(got), err)
	}
}

// TestDedupLookupFailureRefuses: after a restart, a dedup id is checked
// against the key index; when that look-up fails (here the caller's
// context is gone while it reads), the publish is refused and nothing is
// stored, rather than stored as if the id were new.
func TestDedupLookupFailureRefuses(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	b := openBroker(t, cfg)
	first := publish(t, b, "t", &Message{Body: []byte("a"), DedupID: "d1"})[0]
	b.Close()
	b2 := openBroker(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if r, err := b2.Publish(ctx, "t", []*Message{{Body: []byte("retry"), DedupID: "d1"}}); err == nil {
		t.Fatalf("publish whose dedup look-up failed = %+v, want an error", r)
	} else if CodeOf(err) != CodeUnavailable {
		t.Fatalf("publish whose dedup look-up failed: %v, want code %s", err, CodeUnavailable)
	}
	st, err := b2.Topic(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 1 {
		t.Fatalf("topic holds %d messages after the refused publish, want 1", st.Messages)
	}
	if r := publish(t, b2, "t", &Message{Body: []byte("retry"), DedupID: "d1"})[0]; !r.Duplicate || r.ID != first.ID {
		t.Fatalf("retry = %+v, want duplicate of %s", r, first.ID)
	}
}
