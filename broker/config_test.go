package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/postbus/postbus/broker/commitlog"
)

// TestCheckSizes: any segment from minSegmentSize on is accepted with any
// body limit up to the batch limit (a batch larger than a segment gets a
// segment of its own; 1 MiB segments with 100 KiB messages used to be
// refused, and before that answered 503 to batches), the commitlog accepts
// what the broker accepts, and a refusal says which setting and why.
func TestCheckSizes(t *testing.T) {
	tests := []struct {
		name    string
		segment int64
		maxMsg  int
		ok      bool
		want    string
	}{
		{"defaults", 128 << 20, DefaultMaxMessageBytes, true, ""},
		{"smallest segment", minSegmentSize, DefaultMaxMessageBytes, true, ""},
		{"segment one byte short", minSegmentSize - 1, DefaultMaxMessageBytes, false, "below the smallest, 1048576"},
		{"no segment", 0, DefaultMaxMessageBytes, false, "segment size 0"},
		{"negative segment", -1 << 20, DefaultMaxMessageBytes, false, "segment size -1048576"},
		{"max message plus 64 KiB", DefaultMaxMessageBytes + 64<<10, DefaultMaxMessageBytes, true, ""},
		{"max message plus 64 KiB and a frame header", DefaultMaxMessageBytes + 64<<10 + 12, DefaultMaxMessageBytes, true, ""},
		{"1 MiB segments, 100 KiB messages", 1 << 20, 100 << 10, true, ""},
		{"8 MiB segments", 8 << 20, DefaultMaxMessageBytes, true, ""},
		{"largest segment", MaxSegmentSize, DefaultMaxMessageBytes, true, ""},
		{"segment one byte over the largest", MaxSegmentSize + 1, DefaultMaxMessageBytes, false, "over the largest, 1073741824"},
		{"smallest body limit", minSegmentSize, 1, true, ""},
		{"no body limit", minSegmentSize, 0, false, "max message bytes"},
		{"body limit at the batch limit", minSegmentSize, MaxBatchBytes, true, ""},
		{"body limit over the batch limit", 128 << 20, MaxBatchBytes + 1, false, "max message bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckSizes(tt.segment, tt.maxMsg)
			if (err == nil) != tt.ok {
				t.Fatalf("CheckSizes(%d, %d) = %v, want ok %v", tt.segment, tt.maxMsg, err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrSizes) || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("CheckSizes(%d, %d) = %v, want ErrSizes saying %q", tt.segment, tt.maxMsg, err, tt.want)
				}
				return
			}
			// What the broker accepts, the commitlog accepts too.
			lcfg := commitlog.DefaultConfig(t.TempDir())
			lcfg.SegmentSize, lcfg.MaxPayload = tt.segment, int(maxRecordBytes(tt.maxMsg))
			if err := lcfg.Validate(); err != nil {
				t.Fatalf("broker accepts segment %d with max message %d; the commitlog says %v", tt.segment, tt.maxMsg, err)
			}
		})
	}
}

// TestMaximalRecordWithinOverhead: a message at every limit of validate
// encodes to at most its body plus maxRecordOverhead, which the commitlog's
// MaxPayload allows for.
func TestMaximalRecordWithinOverhead(t *testing.T) {
	m := maximalMessage(0, 10)
	if err := m.validate("", 10, DefaultConfig("").MaxDelay, m.BornAt); err != nil {
		t.Fatalf("the maximal message is not valid: %v", err)
	}
	m.ID = strings.Repeat("i", 255)
	m.Topic = strings.Repeat("t", 127)
	m.Origin = strings.Repeat("o", 127)
	m.Reason = strings.Repeat("r", 1000)
	rec := encodeRecord(nil, m)
	if over := int64(len(rec)) - int64(len(m.Body)); over > maxRecordOverhead {
		t.Fatalf("a maximal record takes %d bytes besides its body; maxRecordOverhead is %d", over, maxRecordOverhead)
	}
}

// maximalMessage is a message at every per-message limit, with a body of
// size bytes; i varies its keys.
func maximalMessage(i, size int) *Message {
	m := &Message{
		Tag:         strings.Repeat("é", MaxTagLen), // 2 bytes a character
		ShardingKey: strings.Repeat("s", MaxShardingKeyLen),
		ContentType: strings.Repeat("c", MaxContentTypeLen),
		DedupID:     strings.Repeat("d", MaxDedupIDLen),
		Body:        make([]byte, size),
		Properties:  map[string]string{},
	}
	for k := range MaxKeys {
		m.Keys = append(m.Keys, fmt.Sprintf("%d-%d-%s", i, k, strings.Repeat("k", MaxKeyLen-12)))
	}
	for len(m.Properties) < MaxPropertiesBytes/MaxPropertyValueLen-1 {
		m.Properties[fmt.Sprint("p", len(m.Properties))] = strings.Repeat("v", MaxPropertyValueLen)
	}
	return m
}

// TestMaximalBatchInSmallestSegment: with the smallest segment allowed for
// 100 KiB messages, a batch within every documented limit is stored, even
// when the segment already holds data; one larger as stored than any the
// API admits is refused for good (413 batch_too_large), never with a
// retryable 503, and leaves nothing behind. (With 1 MiB segments, twenty
// 100 KB messages in one batch used to answer 503 on every retry.)
func TestMaximalBatchInSmallestSegment(t *testing.T) {
	cfg := DefaultConfig(t.TempDir())
	cfg.MaxMessageBytes = 100 << 10
	cfg.SegmentSize = MinSegmentSize(cfg.MaxMessageBytes)
	cfg.AutoCreateTopics = true
	b := openBroker(t, cfg)
	ctx := context.Background()

	publish(t, b, "t", &Message{Body: make([]byte, 100<<10)}) // the segment is not empty
	var batch []*Message
	for range 20 {
		batch = append(batch, &Message{Body: make([]byte, 100_000)})
	}
	publish(t, b, "t", batch...)
	// The most bodies a batch may carry, in 100 KiB messages.
	batch = batch[:0]
	for range MaxBatchBytes / (100 << 10) {
		batch = append(batch, &Message{Body: make([]byte, 100<<10)})
	}
	publish(t, b, "t", batch...)

	before, err := b.Topic(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	// Every message at every per-message limit: far more, as stored, than
	// the JSON of any batch request may carry.
	batch = batch[:0]
	for i := range MaxBatchMessages {
		batch = append(batch, maximalMessage(i, 100))
	}
	_, err = b.Publish(ctx, "t", batch)
	if code := CodeOf(err); code != CodeBatchTooLarge {
		t.Fatalf("over-large stored batch: err = %v (code %q), want %s", err, code, CodeBatchTooLarge)
	}
	after, err := b.Topic(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	if after.Messages != before.Messages {
		t.Fatalf("the refused batch left %d messages", after.Messages-before.Messages)
	}
}

// TestSegmentSizeChangesBetweenRestarts: --segment-size sizes new segments
// only, so a broker restarted with another one opens and reads every
// message it stored before (it used to refuse: "missing segment, or
// SegmentSize changed").
func TestSegmentSizeChangesBetweenRestarts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var ids []string
	for run, size := range []int64{minSegmentSize, 3 << 20, minSegmentSize} {
		cfg := testConfig(t, dir)
		cfg.SegmentSize = size
		b := openBroker(t, cfg)
		for i, id := range ids {
			m, err := b.Message(ctx, id)
			if err != nil || len(m.Body) != 100<<10 || m.Body[0] != byte(i) {
				t.Fatalf("run %d (segments of %d): message %d: %v", run, size, i, err)
			}
		}
		for range 100 {
			body := make([]byte, 100<<10)
			body[0] = byte(len(ids))
			ids = append(ids, publish(t, b, "t", &Message{Body: body})[0].ID)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
