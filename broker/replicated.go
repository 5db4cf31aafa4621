package broker

import (
	"errors"
	"fmt"

	"github.com/postbus/postbus/broker/commitlog"
	"github.com/postbus/postbus/broker/meta"
)

// Replicated is what a broker of a replica group (package broker/replica)
// is opened on: the member's commitlog and metadata store, open for the
// life of the process and shared with the raft state machine that applies
// the group's entries to them, and the way this broker's appends go to the
// group. A broker is opened on them only while its member leads; it does
// not close them.
type Replicated struct {
	Log  *commitlog.Log
	Meta *meta.Store // with meta.Store.SetReplicator done: its writes go to the group
	// Epoch names the lead this broker was opened for: its member stops
	// taking its proposals once the lead is over.
	Epoch uint64
	// Propose hands raft one batch of records, to be written at start, and
	// returns at once; wait returns once a majority holds the batch and it
	// is applied here (nil), or with why not (the outcome is then
	// unknown). wait may be called more than once, from any goroutine.
	// Proposals are committed in the order Propose is called.
	Propose func(start int64, recs [][]byte) (wait func() error)
	// Trim hands raft the cut of the log below off that retention or the
	// disk watermark decided on (the leader decides; RetireBefore applies
	// it on every member) and waits until it is committed and applied
	// here; it returns how many segments went here.
	Trim func(off int64) (int, error)
}

// ErrNotLeader: a write reached a member of a replica group that does not
// lead it (leadership moved while the write was under way). Whether the
// write was stored is unknown.
var ErrNotLeader = errors.New("this replica is not the leader of its group")

// ErrReplicationBroken: a replicated append of this broker failed, so the
// queue offsets and log offsets it handed out since may not match what the
// group stored; it takes no more appends. Its member opens a new broker
// (the recovery of a restart) while it still leads.
var ErrReplicationBroken = errors.New("a replicated append failed; the broker must be opened again")

// replState is the leader's view of its appends in flight; guarded by
// appendMu.
type replState struct {
	placer commitlog.Placer
	placed bool         // placer follows every proposal made
	last   func() error // the last proposal's wait
	broken error        // set by the first failed proposal
}

// ReplicationBroken reports the failure that stopped this broker's
// replicated appends, or nil.
func (b *Broker) ReplicationBroken() error {
	b.appendMu.Lock()
	defer b.appendMu.Unlock()
	return b.repl.broken
}

// appendLog appends recs, called with appendMu held: to the commitlog, or
// in a replica group through raft, to every member's commitlog. In a group
// it returns before the batch is committed, with the offsets it will have
// (raft keeps the order of proposals, and every member rolls its segments
// at the same places); the caller calls wait, without appendMu, before it
// answers. So concurrent publishes share raft's batches and fsyncs, as
// they share the commitlog's group commit on a standalone broker.
func (b *Broker) appendLog(recs [][]byte) (offs []int64, end int64, wait func() error, err error) {
	r := b.cfg.Replica
	if r == nil {
		offs, end, err = b.log.Append(recs)
		return offs, end, nil, err
	}
	if b.repl.broken != nil {
		return nil, 0, nil, &Error{Code: CodeUnavailable, Err: errors.Join(ErrReplicationBroken, b.repl.broken),
			Detail: "the broker is taking up the lead of its replica group again after a failed write; nothing was stored, retry"}
	}
	if !b.repl.placed {
		// After a failure, or at the first append: every earlier proposal
		// applied, the log itself says where the next batch goes.
		if b.repl.last != nil {
			_ = b.repl.last()
		}
		b.repl.placer = b.log.Placer()
		b.repl.placed = true
	}
	offs = make([]int64, len(recs))
	var total int64
	for _, rec := range recs {
		total += commitlog.FramedSize(len(rec))
	}
	start := b.repl.placer.Place(total)
	at := start
	for i, rec := range recs {
		offs[i] = at
		at += commitlog.FramedSize(len(rec))
	}
	// A copy of the slice for raft, so that a standalone broker's batch
	// (the same variable in append) can stay on the stack.
	w := r.Propose(start, append([][]byte(nil), recs...))
	b.repl.last = w
	n := len(recs)
	wait = func() error {
		if err := w(); err != nil {
			b.appendMu.Lock()
			if b.repl.broken == nil {
				b.repl.broken = err
				b.logger.Error("replicated append failed: this broker takes no more appends until it is opened again", "records", n, "err", err)
			}
			b.repl.placed = false
			b.appendMu.Unlock()
			return &Error{Code: CodeUnavailable, Err: err,
				Detail: fmt.Sprintf("the replica group did not commit the %d messages (leadership moved, or a majority is unreachable); whether they were stored is unknown: retry with the same dedup ids", n)}
		}
		return nil
	}
	return offs, at, wait, nil
}
