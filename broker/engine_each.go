package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// Settling pull leases receipt by receipt, as SQS's batch calls answer
// (DESIGN §4 Pull): a well-formed request settles every receipt it can and
// says, for each, what became of it; only a malformed request (no
// receipts or too many, a receipt this bus did not issue to the group)
// changes nothing.

// ReceiptStatus is what became of one receipt of an ack, a nack or a
// change of visibility.
type ReceiptStatus string

const (
	// ReceiptAcked: acked by this request, or by an earlier one (a retry
	// whose answer was lost), within meta.SettledMemory of that ack.
	ReceiptAcked ReceiptStatus = "acked"
	// ReceiptNacked: nacked by this request, or by an earlier one.
	ReceiptNacked ReceiptStatus = "nacked"
	// ReceiptExtended: the lease's visibility now ends when asked.
	ReceiptExtended ReceiptStatus = "extended"
	// ReceiptStale: the receipt holds nothing any more: its visibility ran
	// out and the message was handed out again (or is being), it was
	// settled the other way, its group's position was reset, or its
	// subscription deleted.
	ReceiptStale ReceiptStatus = "stale"
	// ReceiptInvalid: a receipt this bus issued to the group that this
	// operation does not take: a push delivery's, in a batch of more than
	// one or in a change of visibility.
	ReceiptInvalid ReceiptStatus = "invalid"
)

// ReceiptResult is the answer for one receipt, in the request's order.
type ReceiptResult struct {
	Receipt string
	Status  ReceiptStatus
	now     bool // settled by this request, not a retry's answer: for the trace
}

// MaxSettleReceipts bounds the receipts of one ack, nack or change of
// visibility.
const MaxSettleReceipts = MaxPullMessages * 4

// verdictVisibility moves a pull lease's end of visibility to at (a change
// of visibility): the lease stays out, its receipt good.
const verdictVisibility verdictKind = 255

// visibleAt is the verdict of a change of visibility to end at t.
func visibleAt(t time.Time) Verdict { return Verdict{kind: verdictVisibility, at: t} }

// decodeEach checks a request's receipts: any that this bus did not issue
// to group makes the whole request malformed.
func (e *Engine) decodeEach(group string, receipts []string) ([]receipt, error) {
	if err := ValidateGroupName(group); err != nil {
		return nil, err
	}
	if len(receipts) == 0 || len(receipts) > MaxSettleReceipts {
		return nil, errf(CodeInvalidReceipt, "receipts", "give 1-%d receipts", MaxSettleReceipts)
	}
	rs := make([]receipt, len(receipts))
	for i, s := range receipts {
		r, err := decodeReceipt(s, e.b.receiptKey, e.b.nodeName())
		if err != nil {
			return nil, errf(CodeInvalidReceipt, fmt.Sprintf("receipts[%d]", i), "not a receipt this bus issued")
		}
		if r.Group != group {
			return nil, errf(CodeInvalidReceipt, fmt.Sprintf("receipts[%d]", i), "the receipt was issued to another group")
		}
		rs[i] = r
	}
	return rs, nil
}

// settleEach settles receipts of group with v, each on its own: the one
// settle path of every lease, pull and push, behind Engine.Settle, Ack,
// Nack and ChangeVisibility. A push lease's receipt is settled alone (in
// a batch, or for a change of visibility, it is invalid); an ordered pull
// receipt by its queue's block; the others by their visibility timers.
func (e *Engine) settleEach(ctx context.Context, group string, receipts []string, v Verdict) ([]ReceiptResult, error) {
	rs, err := e.decodeEach(group, receipts)
	if err != nil {
		return nil, err
	}
	out := make([]ReceiptResult, len(rs))
	var timerIdx []int
	for i, r := range rs {
		out[i].Receipt = receipts[i]
		switch r.Kind {
		case receiptDeferred:
			// A push delivery's ack token settles through POST
			// /v1/acks/{token} only (AckDeferred).
			out[i].Status = ReceiptInvalid
		case receiptPush:
			out[i].Status = ReceiptInvalid
			if len(rs) == 1 && v.kind != verdictVisibility {
				err := e.settlePush(ctx, r, v)
				e.dropRetired(r.Group, r.Topic)
				if errors.Is(err, ErrStaleReceipt) {
					out[i].Status = ReceiptStale
				} else if err != nil {
					return nil, err
				} else {
					out[i].Status, out[i].now = done(v), true
				}
			}
		case receiptOrdered, receiptOrderedUntil:
			if timer, ok := e.convertedReceipt(ctx, group, r); ok {
				// Out when its group turned unordered: its visibility
				// copy's timer settles it, as an unordered receipt.
				rs[i].Kind, rs[i].Timer = receiptTimer, timer
				timerIdx = append(timerIdx, i)
				continue
			}
			st, now, err := e.settleOrderedEach(ctx, group, r, v)
			if err != nil {
				return nil, err
			}
			out[i].Status, out[i].now = st, now
		default:
			timerIdx = append(timerIdx, i)
		}
	}
	// A receipt of a topic deleted since (and perhaps created again) is
	// stale: its copy is the deleted topic's, and settling it would bring
	// the deleted topic's message into the new one.
	timerIdx = slices.DeleteFunc(timerIdx, func(i int) bool {
		if e.b.ownsCopy(RetryTopic(rs[i].Group, rs[i].Topic), rs[i].Timer) {
			return false
		}
		out[i].Status = ReceiptStale
		return true
	})
	if len(timerIdx) == 0 {
		return out, nil
	}
	trs := make([]receipt, len(timerIdx))
	for j, i := range timerIdx {
		trs[j] = rs[i]
	}
	states, err := e.settleTimersEach(ctx, group, trs, v)
	if err != nil {
		return nil, err
	}
	for j, i := range timerIdx {
		out[i].Status, out[i].now = statusOf(v, states[j]), states[j] == meta.TimerDone
	}
	return out, nil
}

// done is the status of a receipt settled now with v: a dead letter and a
// release are recorded as nacks.
func done(v Verdict) ReceiptStatus {
	switch v.kind {
	case verdictAck:
		return ReceiptAcked
	case verdictVisibility:
		return ReceiptExtended
	}
	return ReceiptNacked
}

// statusOf answers a timer's state for v: a retried ack is acked, a
// retried nack nacked; a receipt settled the other way is stale.
func statusOf(v Verdict, st meta.TimerState) ReceiptStatus {
	switch {
	case st == meta.TimerDone:
		return done(v)
	case st == meta.TimerAcked && v.kind == verdictAck:
		return ReceiptAcked
	case st == meta.TimerNacked && v.kind == verdictRetry:
		return ReceiptNacked
	}
	return ReceiptStale
}

// settleTimersEach settles, or moves, unordered pull leases by their
// visibility timers, each on its own. An ack cancels a timer; a change of
// visibility moves it. A nack, a dead letter or a release first reserves
// the timers it can (so the timer loop keeps off them), stores those
// messages' replacements (a retry copy, a dead letter), then swaps each
// timer for its copy's: a crash in between brings a message back twice
// rather than never.
func (e *Engine) settleTimersEach(ctx context.Context, group string, rs []receipt, v Verdict) ([]meta.TimerState, error) {
	b := e.b
	offs := make([]int64, len(rs))
	var last int64
	for i, r := range rs {
		offs[i] = r.Timer
		last = max(last, r.Timer)
	}
	// A receipt's copy is dispatched before its lease answers; a copy
	// stored by an older version got its timer from dispatch.
	if err := b.waitDispatched(ctx, last+1); err != nil {
		return nil, err
	}
	// The group's offsets moved past these messages when they were handed
	// out (stored with the lease): this writes any other move pending.
	if err := b.flushOffsets(ctx); err != nil {
		return nil, err
	}
	switch v.kind {
	case verdictAck:
		return b.meta.SettleTimers(ctx, offs, nil, true)
	case verdictVisibility:
		states, err := b.meta.SetTimersDue(ctx, offs, v.at)
		if err == nil && !v.at.After(b.now()) && b.timer != nil {
			b.timer.Wake() // due now: the timer loop sleeps until the next one it knew
		}
		return states, err
	}
	states, err := b.meta.ReserveTimersEach(ctx, offs, b.now().Add(nackReserve))
	if err != nil {
		return nil, err
	}
	if testHookNackReserved != nil {
		testHookNackReserved()
	}
	repl := make([]int64, len(rs))
	var copies []*Message
	var idx []int // copies[k] replaces rs[idx[k]]
	for i, r := range rs {
		repl[i] = -1
		if states[i] != meta.TimerDone {
			continue
		}
		m, err := b.readMessage(r.Timer)
		if err != nil {
			return nil, fmt.Errorf("read the visibility copy of %s: %w", r.MsgID, err)
		}
		// m is the visibility copy: it carries the next attempt.
		var cp *Message
		switch v.kind {
		case verdictDead:
			cp = m.copyFor(DeadLetterTopic(group))
			cp.Attempt, cp.Reason, cp.flags = max(m.Attempt-1, 1), v.reason, flagDead
		case verdictRelease:
			cp = m.retryCopy(group, max(m.Attempt-1, 1), b.now()) // not sent: the same attempt, now
		default:
			cp = m.retryCopy(group, m.Attempt, v.at)
		}
		copies = append(copies, cp)
		idx = append(idx, i)
	}
	var end int64
	if len(copies) > 0 {
		byTopic := map[string][]int{}
		var order []string
		for k, cp := range copies {
			if _, ok := byTopic[cp.Topic]; !ok {
				order = append(order, cp.Topic)
			}
			byTopic[cp.Topic] = append(byTopic[cp.Topic], k)
		}
		for _, t := range order {
			ts, err := b.topicOrSystem(ctx, t)
			if err != nil {
				return nil, err
			}
			ks := byTopic[t]
			for len(ks) > 0 {
				msgs := make([]*Message, len(ks))
				for j, k := range ks {
					msgs[j] = copies[k]
				}
				n := dueChunk(msgs)
				res, err := b.store(ctx, ts, msgs[:n], false)
				if err != nil {
					return nil, err
				}
				for j, r := range res {
					repl[idx[ks[j]]] = r.logOffset
					end = max(end, r.logOffset+1)
				}
				ks = ks[n:]
			}
		}
		// The replacements' timers must exist before the originals' go.
		if err := b.waitDispatched(ctx, end); err != nil {
			return nil, err
		}
	}
	if testHookNackStored != nil {
		testHookNackStored()
	}
	var swapOffs, swapRepl []int64
	var swapIdx []int
	for i := range rs {
		if repl[i] >= 0 {
			swapOffs, swapRepl, swapIdx = append(swapOffs, offs[i]), append(swapRepl, repl[i]), append(swapIdx, i)
		}
	}
	if len(swapOffs) > 0 {
		swapped, err := b.meta.SettleTimers(ctx, swapOffs, swapRepl, false)
		if err != nil {
			return nil, err
		}
		for j, i := range swapIdx {
			states[i] = swapped[j]
			if swapped[j] != meta.TimerDone {
				// Reserved, yet due before the swap (a settle slower than
				// nackReserve): the timer put the message back, and its
				// replacement was dropped (a dead letter stays).
				b.logger.Error("a nack outlasted its reservation; its message came back from its visibility instead",
					slog.String("group", group), slog.String("msg_id", rs[i].MsgID))
			}
		}
	}
	return states, nil
}

// Test hooks of a nack's steps (settleTimersEach): once its timers are
// reserved, and once its replacements are stored with their timers,
// before the swap.
var testHookNackReserved, testHookNackStored func()

// leaseEnd is the end of visibility an ordered pull lease's receipt
// names: the block's NextAt, unless its visibility was changed since.
func leaseEnd(blk OrderedRetry) time.Time {
	if !blk.LeaseUntil.IsZero() {
		return blk.LeaseUntil
	}
	return blk.NextAt
}

// settleOrderedEach settles, or moves, one ordered pull lease. A receipt
// that no longer holds its queue is answered acked when the group has
// moved past its message (an ack retried: the position is durable, so
// this holds after a restart too, until an offset reset), nacked when its
// message waits as the same attempt after a nack, and stale otherwise.
func (e *Engine) settleOrderedEach(ctx context.Context, group string, r receipt, v Verdict) (st ReceiptStatus, now bool, err error) {
	b := e.b
	c, err := b.pullGroup(ctx, group, r.Topic, false)
	if errors.Is(err, errNoPullGroup) {
		return ReceiptStale, false, nil // its subscription was deleted
	}
	if err != nil {
		return "", false, err
	}
	settled, err := e.settleOrdered(ctx, c, r, v)
	if err != nil {
		return "", false, err
	}
	if settled {
		return done(v), true, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	blk, blocked := c.blocks[r.Queue]
	cur := c.cursorAt(r.Queue)
	switch {
	case c.closed || cur == nil:
		return ReceiptStale, false, nil
	case !c.sub.Ordered:
		// Turned unordered since: its message may have become a retry
		// copy (Engine.unorder) that this process no longer knows the
		// receipt of (a restart), and the position moved past it either
		// way. Answered acked, the copy would still bring it back.
		return ReceiptStale, false, nil
	case v.kind == verdictAck && (!blocked || blk.QueueOffset != r.Timer) && cur.Committed() > r.Timer:
		if a, ok := c.ackedOrdered[[2]int64{int64(r.Queue), r.Timer}]; ok && a != r.Attempt {
			// Another attempt's receipt was acked: this one's lease ran
			// out and its message went out again.
			return ReceiptStale, false, nil
		}
		return ReceiptAcked, false, nil
	case v.kind == verdictRetry && blocked && blk.QueueOffset == r.Timer && blk.Attempt == r.Attempt && !c.pulledOut[r.Queue]:
		return ReceiptNacked, false, nil
	case v.kind == verdictRetry && blocked && blk.QueueOffset == r.Timer && blk.Attempt == r.Attempt && blk.LeaseUntil.IsZero() &&
		r.Kind == receiptOrderedUntil && blk.NextAt.UnixMilli() != r.Until:
		// After a restart every block is taken as out; a nacked one
		// waits until another time than its receipt names.
		return ReceiptNacked, false, nil
	}
	return ReceiptStale, false, nil
}

// settleOrdered settles an ordered group's pull lease while its receipt
// holds its queue: an ack moves the queue on; a retry makes the message
// wait until then as the next attempt; a release as the same attempt; a
// change of visibility moves the lease's end. It reports whether the
// receipt held (and so was settled).
func (e *Engine) settleOrdered(ctx context.Context, c *consumer, r receipt, v Verdict) (bool, error) {
	b := e.b
	c.mu.Lock()
	cur := c.cursorAt(r.Queue)
	if c.closed || cur == nil || !c.holds(r) {
		// A closed consumer was dropped (a reset, a change): its block
		// belongs to the old consumer, and writing it now would undo
		// the reset.
		c.mu.Unlock()
		return false, nil
	}
	blk := c.blocks[r.Queue]
	var err error
	switch v.kind {
	case verdictVisibility:
		blk.LeaseUntil = leaseEnd(blk)
		blk.NextAt = v.at
		if err = b.meta.SetOrderedRetry(ctx, blk); err == nil {
			c.blocks[r.Queue] = blk
		}
		c.mu.Unlock()
		return err == nil, err
	case verdictAck:
		delete(c.pulledOut, r.Queue) // settled: not expired, and not out
		e.clearBlock(ctx, c, cur, r.Timer+1)
		c.noteOrderedAck(r)
	case verdictDead:
		var m *Message
		if m, err = b.ReadMessageAt(cur.Topic, cur.Queue, r.Timer); err == nil {
			if err = b.DeadLetter(ctx, c.sub.Group, m, r.Attempt, v.reason); err == nil {
				delete(c.pulledOut, r.Queue)
				e.clearBlock(ctx, c, cur, r.Timer+1)
			}
		}
	default:
		delete(c.pulledOut, r.Queue)
		until := leaseEnd(blk)
		blk.LeaseUntil = time.Time{} // settled: nothing out
		blk.NextAt = b.now()
		if v.kind == verdictRetry {
			blk.NextAt = v.at
		} else {
			blk.Attempt-- // not sent: not an attempt
		}
		if blk.NextAt.UnixMilli() == until.UnixMilli() {
			// The block waits until another millisecond than the
			// lease's end, so that its receipt, which names that end,
			// is stale after a restart too.
			blk.NextAt = blk.NextAt.Add(time.Millisecond)
		}
		c.blocks[r.Queue] = blk
		err = b.meta.SetOrderedRetry(ctx, blk)
	}
	c.mu.Unlock()
	if err != nil {
		return false, err
	}
	if v.kind == verdictAck || v.kind == verdictDead {
		// An ordered queue's offset moves past a settled message only now.
		return true, b.flushOffsets(ctx)
	}
	return true, nil
}

// convertedReceipt is the timer of the visibility copy an ordered pull
// receipt's message became when its group turned unordered while it was
// out (see Engine.unorder), when it did and this process remembers it.
func (e *Engine) convertedReceipt(ctx context.Context, group string, r receipt) (int64, bool) {
	c, err := e.b.pullGroup(ctx, group, r.Topic, false)
	if err != nil {
		return 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holds(r) {
		return 0, false
	}
	timer, ok := c.unordered[[3]int64{int64(r.Queue), r.Timer, int64(r.Attempt)}]
	return timer, ok
}

// maxOrderedAcks bounds what a consumer remembers of its ordered acks.
const maxOrderedAcks = 4096

// noteOrderedAck remembers which attempt's receipt acked an ordered
// queue's message, so that another attempt's receipt of it (one whose
// visibility ran out before the message went out again) is answered
// stale, not taken for a retry of the ack. Only the last maxOrderedAcks
// are kept, in memory: past them, or after a restart, any receipt of a
// message the group moved past is answered acked. Called with c.mu held.
func (c *consumer) noteOrderedAck(r receipt) {
	if c.ackedOrdered == nil {
		c.ackedOrdered = map[[2]int64]int{}
	}
	k := [2]int64{int64(r.Queue), r.Timer}
	c.ackedOrdered[k] = r.Attempt
	c.ackedOrder = append(c.ackedOrder, k)
	if len(c.ackedOrder) > maxOrderedAcks {
		delete(c.ackedOrdered, c.ackedOrder[0])
		c.ackedOrder = c.ackedOrder[1:]
	}
}
