package broker

import (
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/consumequeue"
)

// skipMisplaced: a record whose queue offset repeats or goes back on its
// queue's (the reason label of postbus_dispatch_skipped_records_total).
const skipMisplaced = "misplaced"

// misplacedSpans holds the stretches of the log whose records contradict
// their position: a record whose queue offset is below what its queue
// already holds, with a good CRC. A segment replaced by other content (a
// bad restore, a misdirected write: S4-7) is made of them. They are
// quarantined like damaged spans: skipped by dispatch with an ERROR line
// and a metric, listed by Damaged (/readyz), kept in lostspans.json by
// recovery, and the queue offsets they hid become holes (fillHoles), so
// the records after them keep theirs.
type misplacedSpans struct {
	mu    sync.Mutex
	spans []DamagedSpan // by offset; guarded by mu
}

// add records the frame at off (payload n bytes) as misplaced, extending
// the last span when the frame follows it, and reports whether it
// started a new span.
func (m *misplacedSpans) add(off int64, n int) bool {
	end := off + commitlog.FrameHeaderSize + int64(n)
	m.mu.Lock()
	defer m.mu.Unlock()
	if k := len(m.spans); k > 0 && m.spans[k-1].Offset <= off && off <= m.spans[k-1].Next {
		m.spans[k-1].Next = max(m.spans[k-1].Next, end)
		return false
	}
	m.spans = append(m.spans, DamagedSpan{Offset: off, Next: end, Reason: misplacedReason})
	slices.SortFunc(m.spans, func(a, b DamagedSpan) int { return int(min(max(a.Offset-b.Offset, -1), 1)) })
	return true
}

const misplacedReason = "records whose queue offsets repeat or go back on their queue's (CRCs good: other content, " +
	"e.g. a segment restored from elsewhere or written to the wrong place); quarantined"

// list returns a copy of the spans.
func (m *misplacedSpans) list() []DamagedSpan {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.spans)
}

// take returns the spans and forgets them (recovery hands them to the
// persisted lost spans).
func (m *misplacedSpans) take() []DamagedSpan {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.spans
	m.spans = nil
	return out
}

// misplacedRecord quarantines the record at off whose queue offset qoff is
// below its queue's end. Called with dispatchMu held.
func (b *Broker) misplacedRecord(off int64, n int, topic string, queue int, qoff, hi int64) {
	if b.misplaced.add(off, n) {
		b.logger.Error("record contradicts its position: its queue offset is below its queue's end; quarantined "+
			"(misplaced records right after it join the span; /readyz lists it)", slog.Int64("offset", off), slog.String("topic", topic),
			slog.Int("queue", queue), slog.Int64("queue_offset", qoff), slog.Int64("queue_end", hi))
	}
	b.metrics.skipped(skipMisplaced)
}

// holeOffsets returns up to missing log offsets in (after, before) for
// holes: first inside quarantined and misplaced spans (where the lost
// records were), in order.
func (b *Broker) holeOffsets(after, before, missing int64) []int64 {
	var spans [][2]int64
	for _, sp := range b.log.Quarantined() {
		spans = append(spans, [2]int64{sp.Off, sp.Next})
	}
	for _, sp := range b.misplaced.list() {
		spans = append(spans, [2]int64{sp.Offset, sp.Next})
	}
	slices.SortFunc(spans, func(a, b [2]int64) int { return int(min(max(a[0]-b[0], -1), 1)) })
	holes := make([]int64, 0, min(missing, 1<<16))
	last := after
	for _, sp := range spans {
		for o := max(sp[0], last+1); o < sp[1] && o < before && int64(len(holes)) < missing; o++ {
			holes = append(holes, o)
			last = o
		}
	}
	return holes
}

// gapHoles keeps as holes the queue offsets [hi, qoff) of a queue whose
// next record (at log offset off) skips them, when no damaged span
// explains the gap: the records are missing from the log (a segment
// replaced by content that lacks them, or lost). Dropping the records
// after the gap would lose intact messages and hand their offsets out
// again; the gap is reported instead (ERROR, a span in Damaged,
// postbus_recovery_lost_queue_offsets_total). It reports whether it kept
// them. Called with dispatchMu held.
func (b *Broker) gapHoles(topic string, queue int, after, hi, qoff, off int64) bool {
	missing := qoff - hi
	if !b.recovering {
		// While running, the append lock hands out queue offsets, and a
		// record ahead of its queue claims offsets not handed out yet:
		// holes there would be given to the next publishes. Recovery sets
		// each queue's next offset from its end after the dispatch.
		return false
	}
	if missing <= 0 || off-after-1 < missing {
		return false // no room for strictly increasing log offsets
	}
	for i := range missing {
		if err := b.cq.Append(topic, queue, hi+i, consumequeue.Entry{Offset: after + 1 + i, Size: holeSize}); err != nil {
			b.logger.Error("could not keep a hole for a missing queue offset", slog.String("topic", topic),
				slog.Int("queue", queue), slog.Int64("queue_offset", hi+i), slog.Any("err", err))
			return false
		}
	}
	b.misplaced.mu.Lock()
	b.misplaced.spans = append(b.misplaced.spans, DamagedSpan{Offset: after + 1, Next: off,
		Reason: fmt.Sprintf("queue offsets %d to %d of %s/%d are missing from the log; kept as holes", hi, qoff-1, topic, queue)})
	slices.SortFunc(b.misplaced.spans, func(a, b DamagedSpan) int { return int(min(max(a.Offset-b.Offset, -1), 1)) })
	b.misplaced.mu.Unlock()
	b.metrics.lostQueueEnd(missing)
	b.logger.Error("queue offsets missing from the log kept as holes; the records after them keep their offsets",
		slog.String("topic", topic), slog.Int("queue", queue), slog.Int64("from", hi), slog.Int64("to", qoff),
		slog.Int64("offset", off))
	return true
}

// keepMisplaced adds the misplaced spans and queue gaps that recovery's
// dispatch found to the persisted lost spans (lostspans.json), so later
// starts, which do not dispatch those records again, still list them.
// Called from Open, before anything else reads lostTail.
func (b *Broker) keepMisplaced() {
	found := b.misplaced.take()
	if len(found) == 0 {
		return
	}
	earlier := b.loadLostSpans()
	known := make(map[int64]bool, len(earlier))
	for _, s := range earlier {
		known[s.Offset] = true
	}
	fresh := found[:0:0]
	until := make([]int64, 0, len(found))
	for _, s := range found {
		if !known[s.Offset] { // met again by a later rebuild
			fresh = append(fresh, s)
			until = append(until, s.Next)
		}
	}
	if err := b.rememberLost(earlier, fresh, until); err != nil {
		b.logger.Error("could not persist the misplaced spans: a later start will not list them", slog.Any("err", err))
		b.misplaced.mu.Lock()
		b.misplaced.spans = append(found, b.misplaced.spans...)
		b.misplaced.mu.Unlock()
	}
}
