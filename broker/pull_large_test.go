package broker

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// A pull whose messages' retry copies would exceed one append's limits
// hands out fewer messages, at least one, instead of refusing the pull as
// batch_too_large: with the default max, 3 MiB messages were never
// delivered at all.
func TestPullLargeMessagesHandsOutFewer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		segment int64
		bodies  []int
		max     int
	}{
		{"six 3MiB, max 32", 8 << 20, []int{3 << 20, 3 << 20, 3 << 20, 3 << 20, 3 << 20, 3 << 20}, 32},
		{"three 3MiB, max 3, 1MiB segments", 1 << 20, []int{3 << 20, 3 << 20, 3 << 20}, 3},
		{"4MiB messages and small ones", 8 << 20, []int{4 << 20, 10, 4 << 20, 2 << 20, 100, 4 << 20}, 32},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cfg := testConfig(t, t.TempDir())
			cfg.SegmentSize = tc.segment
			cfg.MaxMessageBytes = DefaultMaxMessageBytes
			b := openBroker(t, cfg)
			want := map[string][]byte{}
			for i, n := range tc.bodies {
				body := bytes.Repeat([]byte{byte('a' + i)}, n)
				res := publish(t, b, "big", &Message{Body: body, ShardingKey: "one", Properties: map[string]string{"P": strings.Repeat("p", 1000)}})
				want[res[0].ID] = body
			}
			got := 0
			for pulls := 0; got < len(tc.bodies); pulls++ {
				if pulls > len(tc.bodies) {
					t.Fatalf("%d pulls delivered only %d of %d messages", pulls, got, len(tc.bodies))
				}
				ps, err := b.Pull(ctx, "g", "big", tc.max, 0, time.Minute)
				if err != nil {
					t.Fatalf("pull %d: %v", pulls, err)
				}
				if len(ps) == 0 {
					t.Fatalf("pull %d handed out nothing with %d messages left", pulls, len(tc.bodies)-got)
				}
				for _, p := range ps {
					body, ok := want[p.ID]
					if !ok || !bytes.Equal(body, p.Body) || p.Attempt != 1 {
						t.Fatalf("pulled %s (attempt %d) unknown, twice or with another body", p.ID, p.Attempt)
					}
					delete(want, p.ID)
				}
				got += len(ps)
				if err := b.Ack(ctx, "g", receipts(ps)); err != nil {
					t.Fatalf("ack: %v", err)
				}
			}
			if ps := pullN(t, b, "g", "big", tc.max, 0, time.Minute); len(ps) != 0 {
				t.Fatalf("%d more messages after all were acked", len(ps))
			}
		})
	}
}

// recordLen must agree with encodeRecord: pulls size their appends by it.
func TestRecordLen(t *testing.T) {
	for i, m := range []*Message{
		{},
		{ID: "id", Topic: "t", Body: []byte("body")},
		{ID: strings.Repeat("i", 20), Topic: "topic", Tag: "tag", ShardingKey: "sk", ContentType: "text/plain", DedupID: "d",
			Attempt: 3, Origin: "orig", Reason: "why", Keys: []string{"a", "bb", strings.Repeat("k", 256)},
			Properties: map[string]string{"X": "1", "Yy": strings.Repeat("v", 1000)}, Body: make([]byte, 1<<20)},
	} {
		if got, want := recordLen(m), len(encodeRecord(nil, m)); got != want {
			t.Errorf("message %d: recordLen %d, encoded %d", i, got, want)
		}
	}
}
