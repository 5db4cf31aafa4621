package replica

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/postbus/postbus/broker/commitlog"
)

// ErrUntrusted: this member's files may no longer match its group's (an
// entry it could not apply, or damaged commitlog spans), so it must not
// lead nor say it is ready. Nothing short of a restore from the group
// makes it trusted again.
var ErrUntrusted = errors.New("this member's files may no longer match its replica group's")

// untrustedLogEvery is how often a member that is not trusted says so
// again at ERROR.
const untrustedLogEvery = 30 * time.Second

// Untrusted is why this member is not trusted (wrapping ErrUntrusted), or
// nil. It never turns nil again in this process.
func (n *Node) Untrusted() error {
	if p := n.untrusted.Load(); p != nil {
		return *p
	}
	return nil
}

// distrust marks this member as no longer holding the group's state, from
// now on: the broker of its current lead is fenced at once (its proposals
// fail), the lead goes to another member (guard), and BecomeLeader
// refuses. The reason names the operator's way out.
func (n *Node) distrust(why string) {
	err := fmt.Errorf("%w: %s; this member will not lead or report ready: stop it, delete its data directory (%s) and start it again with the same flags: the group restores it (a snapshot and the log)",
		ErrUntrusted, why, n.dir)
	if !n.untrusted.CompareAndSwap(nil, &err) {
		return
	}
	n.epoch.Store(0)
	n.metrics.untrusted.Set(1)
	n.logger.Error("replica member no longer trusted", slog.Any("err", err))
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// guard checks the member's sealed commitlog segments once (a damaged span
// is quarantined, and reading skips it: a leader would serve the group's
// log with holes), then keeps a member that is not trusted from leading
// and says so at ERROR every untrustedLogEvery.
func (n *Node) guard() {
	defer n.wg.Done()
	n.verifySealed()
	close(n.verified)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var said time.Time
	for {
		select {
		case <-n.done:
			return
		case <-n.kick:
		case <-tick.C:
		}
		n.checkQuarantine()
		err := n.Untrusted()
		if err == nil {
			continue
		}
		if time.Since(said) >= untrustedLogEvery {
			said = time.Now()
			n.logger.Error("replica member not trusted: not leading, not ready", slog.Any("err", err))
		}
		if n.IsLeader() {
			n.logger.Error("replica member not trusted: handing the lead to another member", slog.Any("err", err))
			if terr := n.raft.LeadershipTransfer().Error(); terr != nil {
				n.logger.Error("handing the lead to another member failed; this member leads without a broker until it succeeds", slog.Any("err", terr))
			}
		}
	}
}

// checkQuarantine distrusts the member if its commitlog holds damaged
// spans (found by the check at start, or by any read since).
func (n *Node) checkQuarantine() {
	n.mu.RLock()
	var q []commitlog.CorruptError
	if n.log != nil {
		q = n.log.Quarantined()
	}
	n.mu.RUnlock()
	if len(q) > 0 {
		n.distrust(fmt.Sprintf("its commitlog has %d damaged span(s) (the first at offset %d: %s) that reading skips; repair from the group is not done", len(q), q[0].Off, q[0].Reason))
	}
}

// verifySealed reads every sealed segment once, which quarantines any
// damaged span; the active one was checked when the log opened.
func (n *Node) verifySealed() {
	n.mu.RLock()
	segs := n.log.Segments()
	n.mu.RUnlock()
	for _, s := range segs[:max(0, len(segs)-1)] {
		select {
		case <-n.done:
			return
		default:
		}
		n.mu.RLock()
		err := n.log.Verify(s)
		gone := s.Base < n.log.MinOffset() // retention deleted it meanwhile
		n.mu.RUnlock()
		if err != nil && !gone {
			n.logger.Warn("verifying a sealed commitlog segment failed", slog.Int64("segment", s.Base), slog.Any("err", err))
		}
	}
	n.checkQuarantine()
}
