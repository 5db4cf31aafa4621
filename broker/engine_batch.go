package broker

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// SettleBatch settles the push leases of one batched delivery, one after
// another in the order given, each with its own verdict, and then waits
// once for the offset write that carries them (pushWritten), where a
// Settle of each would wait for one write apiece: a batch of a hundred
// would take a hundred offset writes to settle.
//
// The order matters for an ordered subscription's run of one queue
// (LeaseBatch): what follows a message settled other than by Ack is taken
// back with it, and its own settle then finds it stale. errs[i] is
// receipts[i]'s error: nil, one wrapping ErrStaleReceipt, or another
// failure (the lease stays out, to be settled again).
func (e *Engine) SettleBatch(ctx context.Context, receipts []string, verdicts []Verdict) (errs []error) {
	errs = make([]error, len(receipts))
	moved := false
	for i, rcpt := range receipts {
		r, err := decodeReceipt(rcpt, e.b.receiptKey, e.b.nodeName())
		if err != nil || r.Kind != receiptPush || i >= len(verdicts) {
			errs[i] = errf(CodeInvalidReceipt, fmt.Sprintf("receipts[%d]", i), "not a push receipt this bus issued")
			continue
		}
		m, err := e.settlePushMoved(ctx, r, verdicts[i])
		e.dropRetired(r.Group, r.Topic)
		moved = moved || m
		errs[i] = err
	}
	e.pushWritten(moved)
	return errs
}

// LeaseBatch is Lease for a batched push loop: up to max messages, and
// for an ordered subscription up to run consecutive messages of a queue,
// in queue order, where Lease hands out one a queue.
func (e *Engine) LeaseBatch(ctx context.Context, group, topic string, max, run int, visibility time.Duration) ([]Lease, error) {
	return e.leaseRun(ctx, group, topic, max, run, visibility)
}

// truncateRun takes back what follows l in its ordered push run: those
// leases end (their settles find them stale) and the queue's cursor goes
// back to just after l, so that they are read and go out again after it,
// in order. sent says they went out with l (l failed, or its visibility
// ran out): read again, each is then its next attempt (attemptAt). It
// reports whether it moved the queue's offsets. Called with c.mu held.
func (e *Engine) truncateRun(c *consumer, l *memLease, sent bool) bool {
	ids := c.runs[l.c.slot]
	at := slices.Index(ids, l.id)
	if at < 0 || at == len(ids)-1 {
		return false
	}
	for _, rid := range ids[at+1:] {
		if rl := c.leases[rid]; rl != nil {
			delete(c.leases, rid)
			l.c.Finish(rl.m.QueueOffset) // not out any more; read again from Next
			if sent {
				if c.sentBefore == nil {
					c.sentBefore = map[[2]int64]int{}
				}
				c.sentBefore[[2]int64{int64(l.c.slot), rl.m.QueueOffset}] = rl.attempt
			}
		}
	}
	c.runs[l.c.slot] = ids[:at+1]
	l.c.Next = l.m.QueueOffset + 1
	e.setOffset(c, l.c)
	return true
}

// attemptAt is the attempt a message of an ordered push queue read again
// at off goes out as: the one after those made while a run's failure took
// it back, else attempt; never past the subscription's last. Called with
// c.mu held.
func (c *consumer) attemptAt(slot int, off int64, attempt int) int {
	k := [2]int64{int64(slot), off}
	made, ok := c.sentBefore[k]
	if !ok {
		return attempt
	}
	delete(c.sentBefore, k)
	return min(max(made+1, attempt), c.sub.MaxRetries+1)
}

// leaveRun takes settled l out of its ordered push run and reports
// whether its queue stays busy (others of the run still out) or blocked
// by a later message of the run (a retry waiting): then only l is done,
// and the queue's block, if any, stays. Called with c.mu held.
func (e *Engine) leaveRun(c *consumer, l *memLease) bool {
	ids := c.runs[l.c.slot]
	at := slices.Index(ids, l.id)
	if at < 0 {
		return false
	}
	ids = slices.Delete(ids, at, at+1)
	if len(ids) > 0 {
		c.runs[l.c.slot] = ids
		c.out[l.c.slot] = ids[0] // the first still out: a dropped consumer's fence waits for it
		return true
	}
	delete(c.runs, l.c.slot)
	blk, blocked := c.blocks[l.c.slot]
	if blocked && blk.QueueOffset > l.m.QueueOffset {
		delete(c.out, l.c.slot)
		return true
	}
	return false
}
