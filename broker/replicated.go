package broker

import (
	"context"
	"errors"

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
	// Append proposes one batch of records, to be written at start (what
	// Log.NextStart said for it under the broker's append lock), and
	// returns once a majority holds it and it is applied here: the
	// offsets, as Log.Append returns them.
	Append func(ctx context.Context, start int64, recs [][]byte) (offs []int64, end int64, err error)
}

// ErrNotLeader: a write reached a member of a replica group that does not
// lead it (leadership moved while the write was under way). Whether the
// write was stored is unknown.
var ErrNotLeader = errors.New("this replica is not the leader of its group")

// appendLog appends recs, called with appendMu held: to the commitlog, or
// in a replica group through raft, to every member's commitlog.
func (b *Broker) appendLog(recs [][]byte) ([]int64, int64, error) {
	r := b.cfg.Replica
	if r == nil {
		return b.log.Append(recs)
	}
	lens := make([]int, len(recs))
	for i, rec := range recs {
		lens[i] = len(rec)
	}
	start := b.log.NextStart(commitlog.FramedSize(lens...))
	offs, end, err := r.Append(context.Background(), start, recs)
	if err != nil {
		b.logger.Error("replicated append failed", "records", len(recs), "err", err)
		return nil, 0, &Error{Code: CodeUnavailable, Err: err,
			Detail: "the replica group did not commit the messages (leadership moved or a majority is unreachable); whether they were stored is unknown, retry"}
	}
	return offs, end, nil
}
