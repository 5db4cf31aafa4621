package replica

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"
)

// The group's id tells this replica group apart from any other started
// under the same broker name: a member wiped and started again with
// another --raft-peers list bootstraps a group of its own, which must not
// pass for this one at the name servers (the leader registers with an
// instance made from the id). The group's first leader makes it and
// proposes it in a group entry; the first such entry applied wins on
// every member, so all hold the same id. It lives in raft's state, the
// entries and the snapshots (snapHeader.GroupID), like the rest of the
// group's state.

// GroupID is the group's id, or "" while this member has not applied the
// entry that made it.
func (n *Node) GroupID() string {
	if p := n.groupID.Load(); p != nil {
		return *p
	}
	return ""
}

// setGroupID keeps the first id applied; a later group entry (two
// leaders each proposing one before either was applied) changes nothing.
func (n *Node) setGroupID(id string) {
	if n.groupID.CompareAndSwap(nil, &id) {
		n.logger.Info("replica group id", slog.String("group_id", id))
	}
}

// ensureGroupID makes the group's id on a leader that applied every entry
// before its term (BecomeLeader's barrier) and found none.
func (n *Node) ensureGroupID() error {
	if n.GroupID() != "" {
		return nil
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	if err := n.raft.Apply(encodeGroup(hex.EncodeToString(b)), 10*time.Second).Error(); err != nil {
		return fmt.Errorf("replica: make the group's id: %w", wrapRaft(err))
	}
	if n.GroupID() == "" {
		return fmt.Errorf("replica: the group's id entry was committed but not applied here: %w", errDiverged)
	}
	return nil
}
