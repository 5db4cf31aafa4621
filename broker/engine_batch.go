package broker

import (
	"context"
	"fmt"
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
	return e.Lease(ctx, group, topic, max, visibility)
}
