package replica

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/postbus/postbus/broker"
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
		n.checkDisk()
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

// ErrDiskOverClean: a follower's disk is fuller than --disk-clean-ratio.
// It deletes nothing on its own (the group's log must stay the same on
// every member); it says so, and is not ready, until space is freed.
var ErrDiskOverClean = errors.New("this member's disk is over the clean watermark")

// NotReady is why this member must not report ready: it is not trusted
// (Untrusted), or its disk is over the clean watermark while it follows.
func (n *Node) NotReady() error {
	var disk error
	if p := n.diskOver.Load(); p != nil {
		disk = *p
	}
	return errors.Join(n.Untrusted(), disk)
}

// checkDisk watches a follower's disk. Only the leader decides what the
// group's log drops (its broker's retention and disk watermark, a trim
// entry every member applies): a follower whose disk is fuller than the
// clean watermark must not delete segments by itself, or the members'
// logs would differ and acknowledged messages would vanish with a
// failover to it. It reports the state instead: ERROR (again every
// untrustedLogEvery), postbus_raft_disk_over_clean 1, and /readyz 503.
func (n *Node) checkDisk() {
	ratio := n.cfg.Broker.DiskCleanRatio
	if ratio <= 0 || ratio >= 1 || n.IsLeader() {
		// A leader's broker applies the watermark for the group.
		n.clearDisk()
		return
	}
	used, err := broker.DiskUsage(n.dir)
	if err != nil {
		n.logger.Error("disk check failed", slog.Any("err", err))
		return
	}
	if used <= ratio {
		n.clearDisk()
		return
	}
	why := fmt.Errorf("%w: %.1f%% of the disk holding %s is used, over --disk-clean-ratio %.2f; a follower deletes no log on its own (the leader's retention cut, applied by every member, does): free space on this disk before it fills and the member falls behind its group",
		ErrDiskOverClean, used*100, n.dir, ratio)
	first := n.diskOver.Swap(&why) == nil
	n.metrics.diskOver.Set(1)
	if first || time.Since(n.diskSaid) >= untrustedLogEvery {
		n.diskSaid = time.Now()
		n.logger.Error("replica follower's disk over the clean watermark: not deleting anything, not ready",
			slog.Float64("used", used), slog.Float64("watermark", ratio), slog.String("dir", n.dir))
	}
}

func (n *Node) clearDisk() {
	if n.diskOver.Swap(nil) != nil {
		n.metrics.diskOver.Set(0)
		n.logger.Info("replica member's disk below the clean watermark again (or it leads and its broker cleans for the group)")
	}
}
