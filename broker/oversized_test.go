package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// sized is a publish of count messages of size bytes each, with a key each.
func sized(seed uint64, count, size int) []*Message {
	r := rand.New(rand.NewPCG(seed, uint64(count)))
	msgs := make([]*Message, count)
	for i := range msgs {
		body := make([]byte, size)
		for j := 0; j < size; j += 8 {
			body[j] = byte(r.Uint32())
		}
		msgs[i] = &Message{Body: body, Keys: []string{fmt.Sprintf("k-%d-%d", seed, i)}}
	}
	return msgs
}

// stored is a message acknowledged by a publish.
type stored struct {
	res  Result
	body []byte
	key  string
}

// checkStored reads every message back by id, by key and by queue offset.
func checkStored(tb testing.TB, b *Broker, topic string, want []stored) {
	tb.Helper()
	ctx := context.Background()
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		tb.Fatal(err)
	}
	for i, w := range want {
		m, err := b.Message(ctx, w.res.ID)
		if err != nil || !bytes.Equal(m.Body, w.body) {
			tb.Fatalf("message %d (%s) by id: %v", i, w.res.ID, err)
		}
		if w.key != "" {
			ms, _, err := b.MessagesByKey(ctx, topic, w.key, 0, 10)
			if err != nil || len(ms) != 1 || ms[0].ID != w.res.ID || !bytes.Equal(ms[0].Body, w.body) {
				tb.Fatalf("message %d by key %q: %d found, %v", i, w.key, len(ms), err)
			}
		}
		m, err = b.ReadMessageAt(topic, w.res.QueueID, w.res.QueueOffset)
		if err != nil || m.ID != w.res.ID || !bytes.Equal(m.Body, w.body) {
			tb.Fatalf("message %d at queue %d offset %d: %v", i, w.res.QueueID, w.res.QueueOffset, err)
		}
	}
}

func publishStored(tb testing.TB, b *Broker, topic string, msgs []*Message) []stored {
	tb.Helper()
	res := publish(tb, b, topic, msgs...)
	out := make([]stored, len(msgs))
	for i, m := range msgs {
		out[i] = stored{res: res[i], body: m.Body}
		if len(m.Keys) > 0 {
			out[i].key = m.Keys[0]
		}
	}
	return out
}

// TestSmallSegmentsStoreEveryPublish: with 1 MiB segments (the smallest
// allowed) every publish within the documented limits is stored: twenty
// 100 KB messages with a 100 KiB limit (issue 10, fault 14: it answered a
// retryable 503 forever), one 4 MiB body, and 1000 messages whose bodies
// total 4 MiB. Each is read back by id, key and queue offset, with
// ordinary publishes around it, after a clean restart, and after restarts
// with a larger and then the small segment size again.
func TestSmallSegmentsStoreEveryPublish(t *testing.T) {
	tests := []struct {
		name         string
		maxMsg       int
		count, size  int
		wantSegments int // at least this many segments after the publishes
	}{
		{"20 x 100KB, 100KiB limit", 100 << 10, 20, 100_000, 3},
		{"one 4MiB body", DefaultMaxMessageBytes, 1, MaxBatchBytes, 2},
		{"1000 messages, 4MiB of bodies", DefaultMaxMessageBytes, MaxBatchMessages, MaxBatchBytes / MaxBatchMessages, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seed := uint64(tt.count*31 + tt.size)
			t.Logf("seed %d", seed)
			dir := t.TempDir()
			cfg := testConfig(t, dir)
			cfg.SegmentSize = minSegmentSize
			cfg.MaxMessageBytes = tt.maxMsg
			b := openBroker(t, cfg)
			want := publishStored(t, b, "t", sized(seed, 3, 50_000)) // the segment is not empty
			want = append(want, publishStored(t, b, "t", sized(seed+1, tt.count, tt.size))...)
			want = append(want, publishStored(t, b, "t", sized(seed+2, 40, 30_000))...)
			checkStored(t, b, "t", want)
			if n := len(b.log.Segments()); n < tt.wantSegments {
				t.Fatalf("%d segments, want at least %d", n, tt.wantSegments)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			for run, size := range []int64{minSegmentSize, 8 << 20, minSegmentSize} {
				cfg.SegmentSize = size
				b = openBroker(t, cfg)
				checkStored(t, b, "t", want)
				// The same publish again, after the restart.
				want = append(want, publishStored(t, b, "t", sized(seed+uint64(run+3)*1000, tt.count, tt.size))...)
				checkStored(t, b, "t", want)
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestRetentionDropsOversizedSegment: a segment made for a batch larger
// than the segment size, and the empty one sealed before it when it was the
// first publish, are dropped by retention like any other; what is newer
// stays readable.
func TestRetentionDropsOversizedSegment(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	cfg.SegmentSize = minSegmentSize
	cfg.MaxMessageBytes = DefaultMaxMessageBytes
	var mu sync.Mutex
	now := time.Now()
	cfg.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	cfg.Retention = time.Hour
	b := openBroker(t, cfg)
	old := publishStored(t, b, "t", sized(1, 1, MaxBatchBytes)) // segment 0 is sealed empty
	if segs := b.log.Segments(); len(segs) != 2 || segs[0].End != segs[0].Base+minSegmentSize || segs[1].End-segs[1].Base <= minSegmentSize {
		t.Fatalf("segments %v, want an empty one and an oversized one", segs)
	}
	// A record after it, as old, too large for the 4 KiB page rounding
	// left in it: a segment is dated by the first record after it.
	old = append(old, publishStored(t, b, "t", sized(2, 1, 10_000))...)
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	var fresh []stored
	for len(b.log.Segments()) < 4 {
		fresh = append(fresh, publishStored(t, b, "t", sized(uint64(len(fresh)), 1, 200_000))...)
	}
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		t.Fatal(err)
	}
	if err := b.applyRetention(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Message(ctx, old[0].res.ID); !errors.Is(err, ErrMessageNotFound) {
		t.Fatalf("message in the dropped oversized segment: err = %v", err)
	}
	if min := b.log.MinOffset(); min <= old[0].res.logOffset {
		t.Fatalf("log starts at %d, still holding the oversized segment at %d (segments %v)", min, old[0].res.logOffset, b.log.Segments())
	}
	checkStored(t, b, "t", fresh)
}
