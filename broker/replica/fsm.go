package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"

	"github.com/postbus/postbus/broker"
	"github.com/postbus/postbus/broker/commitlog"
)

// fsm applies the group's committed entries to this member's files. It is
// raft's state machine; raft calls Apply, Snapshot and Restore from one
// goroutine.
type fsm struct{ n *Node }

// recordsResult is a records entry's answer to the proposer.
type recordsResult struct {
	offs []int64
	end  int64
	err  error
}

// trimResult is a trim entry's answer to the proposer.
type trimResult struct {
	dropped int
	err     error
}

// errDiverged: an entry does not fit this member's files: its log holds
// something else where the entry says its records go. Raft guarantees the
// same entries in the same order everywhere, so this is a bug or a file
// changed behind the broker's back; the member must not go on as if it
// held the group's state.
var errDiverged = errors.New("replica diverged from its group")

func (f fsm) Apply(l *raft.Log) any {
	// Raft's own applied index moves when it hands entries over, before
	// they are applied; this one when they are.
	defer f.n.applied.Store(l.Index)
	if l.Type != raft.LogCommand || len(l.Data) == 0 {
		return nil
	}
	n := f.n
	start := time.Now()
	n.mu.RLock()
	defer n.mu.RUnlock()
	var res any
	switch l.Data[0] {
	case kindRecords:
		epoch, at, recs, err := decodeRecords(l.Data)
		if err != nil {
			res = recordsResult{err: err}
			break
		}
		if err := n.checkEpoch(l.Index, "records", epoch); err != nil {
			res = recordsResult{err: err}
			break
		}
		offs, end, err := n.applyRecords(at, recs)
		res = recordsResult{offs: offs, end: end, err: err}
		if err != nil {
			n.applyFailed(l.Index, "records", err)
		}
	case kindMeta:
		epoch, stmts, err := decodeMeta(l.Data)
		if err == nil {
			if err = n.checkEpoch(l.Index, "meta", epoch); err != nil {
				res = err
				break
			}
			_, err = n.meta.ApplyReplicated(context.Background(), l.Index, stmts)
		}
		if err != nil {
			n.applyFailed(l.Index, "meta", err)
			res = err
		}
	case kindTrim:
		epoch, off, err := decodeTrim(l.Data)
		if err == nil {
			if err = n.checkEpoch(l.Index, "trim", epoch); err != nil {
				res = trimResult{err: err}
				break
			}
		}
		var dropped int
		if err == nil {
			dropped, err = n.applyTrim(off)
		}
		res = trimResult{dropped: dropped, err: err}
		if err != nil {
			n.applyFailed(l.Index, "trim", err)
		}
	case kindGroup:
		id, err := decodeGroup(l.Data)
		if err != nil {
			n.applyFailed(l.Index, "group", err)
			return err
		}
		n.setGroupID(id)
	case kindLeader:
		li, err := decodeLeader(l.Data)
		if err != nil {
			n.applyFailed(l.Index, "leader", err)
			return err
		}
		n.leader.Store(&li)
	default:
		err := fmt.Errorf("entry %d of kind %d: %w", l.Index, l.Data[0], errBadEntry)
		n.applyFailed(l.Index, "unknown", err)
		res = err
	}
	n.metrics.applySeconds.Observe(time.Since(start).Seconds())
	return res
}

// errStaleEpoch: an entry proposed by a broker of an earlier lead, applied
// after a newer leader announced itself. Every member refuses it alike.
var errStaleEpoch = errors.New("proposed under an earlier lead of the group")

// checkEpoch refuses a records or metadata entry that the last announced
// leader did not propose: a broker still running from an earlier lead
// (stepping down, or its member elected again before it noticed) must not
// write with what it remembers of that lead (queue offsets, placements).
func (n *Node) checkEpoch(idx uint64, kind string, epoch uint64) error {
	li := n.leader.Load()
	if li != nil && li.Epoch == epoch {
		return nil
	}
	var cur uint64
	if li != nil {
		cur = li.Epoch
	}
	n.metrics.staleEntries.WithLabelValues(kind).Inc()
	n.logger.Error("raft entry from an earlier lead refused (a broker of that lead was still writing)",
		slog.Uint64("index", idx), slog.String("kind", kind), slog.Uint64("epoch", epoch), slog.Uint64("current_epoch", cur))
	return fmt.Errorf("entry %d of epoch %d, the group's is %d: %w", idx, epoch, cur, errStaleEpoch)
}

// applyFailed reports an entry this member could not apply: never silent.
// The member's files then lack what the group committed (or hold what it
// did not), so from then on it is not trusted: it does not lead nor report
// ready (distrust).
func (n *Node) applyFailed(idx uint64, kind string, err error) {
	n.metrics.applyFailures.WithLabelValues(kind).Inc()
	n.logger.Error("raft entry not applied: this member's files may no longer match its group's",
		slog.Uint64("index", idx), slog.String("kind", kind), slog.Any("err", err))
	n.distrust(fmt.Sprintf("raft entry %d (%s) was not applied: %v", idx, kind, err))
}

// applyRecords appends a batch at start, or the part of it the log does not
// hold yet: after a restart raft hands again the entries after the last
// snapshot, and the log (fsynced only at snapshots; raft's own log is what
// a majority fsynced) may hold all, part or none of each.
func (n *Node) applyRecords(start int64, recs [][]byte) ([]int64, int64, error) {
	offs := make([]int64, len(recs))
	at := start
	for i, r := range recs {
		offs[i] = at
		at += commitlog.FramedSize(len(r))
	}
	end := at
	have := n.log.End()
	if end <= have {
		if err := n.checkHeld(start, offs, recs); err != nil {
			return nil, 0, err
		}
		n.metrics.skipped.Add(float64(len(recs)))
		return offs, end, nil
	}
	k := 0
	if start < have {
		// The log holds the first records: append from the first it lacks,
		// which must begin exactly where the log ends.
		for k < len(recs) && offs[k] < have {
			k++
		}
		if offs[k] != have {
			return nil, 0, fmt.Errorf("batch at %d: the log ends at %d, inside record %d: %w", start, have, k-1, errDiverged)
		}
		if err := n.checkHeld(start, offs[:k], recs[:k]); err != nil {
			return nil, 0, err
		}
		n.metrics.skipped.Add(float64(k))
	}
	rest := recs[k:]
	var total int64
	for _, r := range rest {
		total += commitlog.FramedSize(len(r))
	}
	if next := n.log.NextStart(total); next != offs[k] {
		return nil, 0, fmt.Errorf("batch at %d: record %d belongs at %d, but the log would write it at %d: %w", start, k, offs[k], next, errDiverged)
	}
	got, gotEnd, err := n.log.Append(rest)
	if err != nil {
		return nil, 0, fmt.Errorf("append %d records at %d: %w", len(rest), offs[k], err)
	}
	if got[0] != offs[k] || gotEnd != end {
		return nil, 0, fmt.Errorf("batch at %d: written at %d..%d, want %d..%d: %w", start, got[0], gotEnd, offs[k], end, errDiverged)
	}
	return offs, end, nil
}

// applyTrim applies the leader's retention cut: every member deletes the
// same segments (their logs are the same byte for byte), the leader's
// included. Applied again after a restart it finds them gone already.
func (n *Node) applyTrim(off int64) (int, error) {
	dropped, err := broker.RetireBefore(n.dir, n.log, off)
	if err != nil {
		return dropped, err
	}
	if dropped > 0 {
		n.logger.Info("the group's retention cut applied: commitlog segments deleted",
			slog.Int64("before", off), slog.Int("segments", dropped), slog.Int64("log_min", n.log.MinOffset()))
	}
	return dropped, nil
}

// checkHeld makes sure the log holds these records where a batch says
// they go before it is taken for a replay: a member whose log grew by
// something else (written behind the broker's back, or a bug) holds other
// bytes there, and skipping the batch would leave it with a log that is no
// longer its group's. Records below the log's start went with a retention
// cut of the group and cannot be compared.
func (n *Node) checkHeld(start int64, offs []int64, recs [][]byte) error {
	logMin := n.log.MinOffset()
	var buf []byte
	for i, r := range recs {
		if offs[i] < logMin {
			continue
		}
		got, _, err := n.log.ReadAt(offs[i], buf)
		if err != nil {
			return fmt.Errorf("batch at %d: record %d at %d, which the log should hold already: %w (%w)", start, i, offs[i], errDiverged, err)
		}
		if !bytes.Equal(got, r) {
			return fmt.Errorf("batch at %d: the log holds %d other bytes at %d where the group's record %d (%d bytes) is: %w",
				start, len(got), offs[i], i, len(r), errDiverged)
		}
		buf = got
	}
	return nil
}

func (f fsm) Snapshot() (raft.FSMSnapshot, error) {
	return f.n.snapshot()
}

func (f fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	return f.n.restore(rc)
}
