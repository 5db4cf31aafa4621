package broker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestReplacedSegmentNotServedByOffset: a sealed segment whose content was
// replaced while stopped by a copy of another (valid CRCs, other records:
// a bad restore, a misdirected write) must not make a read by queue offset
// answer a different message as the one at that offset (found by the
// hostile pass: every entry of the replaced segment served the record
// found at its log offset). Each such entry is an ERROR and counted; the
// messages of the intact segments still read back.
func TestReplacedSegmentNotServedByOffset(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	cfg.SegmentSize = 1 << 20
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 1}); err != nil {
		t.Fatal(err)
	}
	var res []Result
	for i := 0; len(b.log.Segments()) < 4; i++ {
		body := strings.Repeat(fmt.Sprint(i%10), 50<<10)
		res = append(res, publish(t, b, "t", msg(body))...)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(cfg.Dir, "commitlog", "0*"))
	if err != nil || len(segs) < 4 {
		t.Fatalf("segments %v (%v)", segs, err)
	}
	slices.Sort(segs)
	// Segment 1 becomes a copy of segment 0: the same frames, at the
	// same relative places, hence valid at the same log offsets.
	data, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(segs[1], data, 0o644); err != nil {
		t.Fatal(err)
	}
	b, logs, reg := reopenWatched(t, cfg)
	var replaced, intact int
	for _, r := range res {
		got, _, err := b.ReadQueue("t", 0, r.QueueOffset, 1, Filter{all: true})
		if err != nil {
			t.Fatalf("read t/0 at %d: %v", r.QueueOffset, err)
		}
		inReplaced := r.logOffset >= 1<<20 && r.logOffset < 2<<20
		switch {
		case inReplaced:
			replaced++
			if len(got) > 0 && got[0].QueueOffset == r.QueueOffset && got[0].ID != r.ID {
				t.Fatalf("read t/0 at %d answers %s as the message there; %s was acknowledged at that offset", r.QueueOffset, got[0].ID, r.ID)
			}
			if _, err := b.ReadMessageAt("t", 0, r.QueueOffset); CodeOf(err) != CodeMessageDamaged {
				t.Fatalf("ReadMessageAt t/0 %d: %v, want %s", r.QueueOffset, err, CodeMessageDamaged)
			}
		default:
			intact++
			if len(got) != 1 || got[0].ID != r.ID {
				t.Fatalf("read t/0 at %d of an intact segment: %v, want %s", r.QueueOffset, got, r.ID)
			}
		}
	}
	if replaced == 0 || intact == 0 {
		t.Fatalf("%d messages in the replaced segment, %d elsewhere: the test needs both", replaced, intact)
	}
	if n := len(logs.lines("ERROR", "not its own")); n < replaced {
		t.Errorf("%d ERROR lines about misplaced entries, want at least %d", n, replaced)
	}
	if v := counterValue(t, reg, "postbus_queue_entries_misplaced_total", "", ""); v < float64(replaced) {
		t.Errorf("postbus_queue_entries_misplaced_total = %v, want at least %d", v, replaced)
	}
}
