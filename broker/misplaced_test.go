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
	// A shared disk near its clean watermark must not retire segments
	// under the test: only the damage it makes is to be seen.
	cfg.DiskCleanRatio, cfg.DiskFullRatio = 1, 1
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
		got, next, err := b.ReadQueue("t", 0, r.QueueOffset, 1, Filter{all: true})
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
			checkLost(t, b, r, got, next)
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

// TestReplacedSegmentRebuiltAroundIt: a sealed segment replaced by a copy
// of the one before it, and the derived files lost (checkpoint.json,
// consumequeue/, index/), so the whole log is dispatched again (S4-7).
// The rebuild used to meet queue offsets already seen and then skip every
// record of every later, intact segment as out of order: ~1,100 intact
// messages unreadable, no span reported, and the next publishes took the
// queue offsets of acknowledged messages. Now the replaced records are one
// quarantined span (ERROR, metric, Damaged, kept across restarts), the
// queue offsets they hid are holes, every message outside the span reads
// back by id and at its queue offset, and no offset is handed out twice.
func TestReplacedSegmentRebuiltAroundIt(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, t.TempDir())
	cfg.SegmentSize = 1 << 20
	// A shared disk near its clean watermark must not retire segments
	// under the test: only the damage it makes is to be seen.
	cfg.DiskCleanRatio, cfg.DiskFullRatio = 1, 1
	b := openBroker(t, cfg)
	if _, _, err := b.PutTopic(ctx, "t", TopicSettings{Queues: 2}); err != nil {
		t.Fatal(err)
	}
	var res []Result
	for i := 0; len(b.log.Segments()) < 5; i++ {
		body := strings.Repeat(fmt.Sprint(i%10), 20<<10+i*97%4096)
		res = append(res, publish(t, b, "t", msg(body))...)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(cfg.Dir, "commitlog", "0*"))
	if err != nil || len(segs) < 5 {
		t.Fatalf("segments %v (%v)", segs, err)
	}
	slices.Sort(segs)
	data, err := os.ReadFile(segs[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(segs[2], data, 0o644); err != nil {
		t.Fatal(err)
	}
	b, logs, reg := reopenWatched(t, cfg, checkpointFile, "consumequeue", "index")
	inReplaced := func(r Result) bool { return r.logOffset >= 2<<20 && r.logOffset < 3<<20 }
	var replaced, intact int
	for _, r := range res {
		if inReplaced(r) {
			replaced++
			got, next, err := b.ReadQueue("t", r.QueueID, r.QueueOffset, 1, Filter{all: true})
			if err != nil {
				t.Fatalf("read t/%d at %d: %v", r.QueueID, r.QueueOffset, err)
			}
			if len(got) > 0 && got[0].QueueOffset == r.QueueOffset && got[0].ID != r.ID {
				t.Fatalf("read t/%d at %d answers %s; %s was acknowledged there", r.QueueID, r.QueueOffset, got[0].ID, r.ID)
			}
			checkLost(t, b, r, got, next)
			continue
		}
		intact++
		m, err := b.Message(ctx, r.ID)
		if err != nil || m.QueueOffset != r.QueueOffset {
			t.Fatalf("message %s (t/%d at %d, log offset %d) after the rebuild: %v, %v", r.ID, r.QueueID, r.QueueOffset, r.logOffset, m, err)
		}
		got, _, err := b.ReadQueue("t", r.QueueID, r.QueueOffset, 1, Filter{all: true})
		if err != nil || len(got) != 1 || got[0].ID != r.ID || got[0].QueueOffset != r.QueueOffset {
			t.Fatalf("read t/%d at %d (log offset %d) of an intact segment: %v (%v), want %s", r.QueueID, r.QueueOffset, r.logOffset, got, err, r.ID)
		}
	}
	if replaced == 0 || intact == 0 {
		t.Fatalf("%d messages in the replaced segment, %d elsewhere: the test needs both", replaced, intact)
	}
	covered := func(b *Broker) bool {
		for _, d := range b.Damaged() {
			if d.Offset <= 2<<20 && 2<<20 < d.Next {
				return true
			}
		}
		return false
	}
	if !covered(b) {
		t.Errorf("Damaged() = %+v, want a span over the replaced segment at %d", b.Damaged(), 2<<20)
	}
	if n := len(logs.lines("ERROR", "contradicts its position")); n == 0 {
		t.Error("no ERROR line for the misplaced records")
	}
	if v := counterValue(t, reg, "postbus_dispatch_skipped_records_total", "reason", skipMisplaced); v < 1 {
		t.Errorf("postbus_dispatch_skipped_records_total{reason=misplaced} = %v, want > 0", v)
	}
	// No queue offset is handed out twice.
	next := map[int]int64{}
	for _, r := range res {
		next[r.QueueID] = max(next[r.QueueID], r.QueueOffset+1)
	}
	for range 4 {
		r := publish(t, b, "t", msg("after"))[0]
		if r.QueueOffset < next[r.QueueID] {
			t.Fatalf("publish after the rebuild got t/%d at %d, which an acknowledged message had (end %d)", r.QueueID, r.QueueOffset, next[r.QueueID])
		}
		next[r.QueueID] = r.QueueOffset + 1
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openBroker(t, cfg)
	if !covered(b) {
		t.Errorf("after a clean restart Damaged() = %+v, want the span still listed", b.Damaged())
	}
}

// checkLost: a read from the offset of r, whose message is lost, must name
// that offset as lost (the read-by-offset route's "lost"), so a consumer
// does not take the next readable message for it.
func checkLost(t *testing.T, b *Broker, r Result, got []*Message, next int64) {
	t.Helper()
	have := make([]int64, 0, len(got))
	for _, m := range got {
		have = append(have, m.QueueOffset)
	}
	for _, l := range b.LostIn("t", r.QueueID, r.QueueOffset, next, have) {
		if l.From <= r.QueueOffset && r.QueueOffset < l.To {
			return
		}
	}
	t.Fatalf("read t/%d at %d (lost) answered %d messages, next %d, and LostIn does not name it", r.QueueID, r.QueueOffset, len(got), next)
}
