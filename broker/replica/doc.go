// Package replica makes a broker name a replica group: three (or five)
// postbus processes on hashicorp/raft, each holding the same commitlog and
// the same meta.db, one of them leading (DESIGN §6).
//
// # What raft carries
//
// Raft's entries are the group's writes, of five kinds (entry.go):
//
//   - records: one append of the broker (a publish's whole batch, a delayed
//     message put back on its queue, a retry or dead-letter copy), encoded
//     records and the log offset they must land at. The leader's broker
//     reads that offset from its log under its append lock
//     (commitlog.Log.NextStart), proposes, and waits for the entry to be
//     committed and applied on the leader: the broker's append does not
//     touch the log itself (broker.Replicated).
//   - meta: the effects of one metadata write transaction. meta.Store, given
//     this Node as its Replicator, runs the transaction's body, keeps each
//     statement that ran with its arguments (times are values the leader
//     read), rolls it back and proposes the statements; every member runs
//     them in one transaction that also records the entry's index
//     (migration 0010). A lock held from the capture to the apply keeps
//     another write of the leader from coming between.
//   - leader: a new leader's HTTP address, so followers know where to
//     forward.
//   - trim: a retention cut. Only the leader decides what the log drops
//     (its broker's retention and disk watermark, broker.Replicated.Trim);
//     every member applies the cut alike (broker.RetireBefore: the consume
//     queues' floor is raised, then the segments ending at or before the
//     offset are deleted), so the logs stay the same byte for byte. A
//     member never deletes log on its own: a follower whose disk is over
//     --disk-clean-ratio says so at ERROR (again every 30 s), sets
//     postbus_raft_disk_over_clean and is not ready (NotReady), and
//     deletes nothing. A snapshot carries the log's start, so a member
//     that restores one drops what cuts it missed.
//   - group: the group's id (group.go), made by its first leader; the
//     first applied wins on every member, and snapshots carry it. The
//     leader registers at the name servers with an instance made from
//     it, so a group bootstrapped apart under the same broker name (a
//     wiped member started with another --raft-peers) is refused there
//     rather than taking the name. A member with raft state ignores
//     --raft-peers and logs a WARN naming both lists when they differ.
//
// Only committed entries change a member's files, the leader's included.
// A member applies entries to its commitlog and meta.db whether it leads or
// follows; the consume queues, the key index and the timers' dispatch are
// derived from them by the broker, which runs on the leader only.
//
// # One copy, and its cost
//
// A message is written to raft's log (logstore.go: plain files, one
// fdatasync a batch of entries; fsynced on a majority before the publish
// is answered) and then to the commitlog by the state machine, without an
// fsync of its own: the commitlog is fsynced when a
// snapshot is taken (Snapshot syncs it first) and at every segment roll.
// Raft's log is kept short by snapshots (--raft-snapshot-threshold entries,
// plus TrailingLogs kept for members briefly away), so in the steady state
// each message is on disk twice only for a while, and fsynced once per
// raft batch. Taking the commitlog itself as raft's log store would save
// that, at the price of raft's log format in the commitlog; not done.
//
// # Replays
//
// After a restart raft restores the member's latest snapshot and hands it
// again every entry after it. Restore sees that the files already hold the
// snapshot (meta.db's applied index and the log's end are at or past it)
// and changes nothing; each records entry then appends only what the log
// lacks (a crash may have cut its unsynced tail; the records before the
// log's end are skipped and counted, once each is found there byte for
// byte: a log that holds other bytes where the batch goes has diverged,
// which distrusts the member rather than pass for a replay), and each
// meta entry at or below meta.db's applied index is skipped. An entry that contradicts the files
// is an ERROR, counted in postbus_raft_apply_failures_total.
//
// # Members that are no longer trusted
//
// From the first entry a member cannot apply, or once its commitlog holds
// damaged spans (quarantined: reading skips them; a check of the sealed
// segments runs when the member starts), its files may no longer match
// the group's (trust.go). Nothing repairs them from the group yet, so the
// member stops being trusted for the rest of the process: the broker of
// its lead is fenced, the lead is handed to another member, BecomeLeader
// refuses (its broker is never opened again), the front's /readyz answers
// 503 with the reason (Untrusted), it says so at ERROR every 30 s and
// postbus_raft_member_untrusted is 1. The reason names the way out: stop
// it, delete its data directory, start it again; the group restores it.
//
// # Snapshots
//
// A snapshot kept by a member holds a copy of meta.db and the log's end,
// not the segments, which its commitlog holds anyway. When raft sends one
// to a member that lacks the entries it needs (a wiped disk, a long
// absence), snapshotStore.Open streams the sender's segments after it;
// the receiver replaces its meta.db and commitlog with them and drops the
// derived files, which its broker rebuilds from the log when it next leads.
// Every member must use the same --segment-size: their logs are the same
// byte for byte.
//
// # Leading
//
// A member that becomes leader first waits until every entry of earlier
// terms is applied (a barrier), announces its HTTP address, then opens its
// broker on its files: the recovery a restart runs, so the engine, timers,
// push deliveries and pull receipts resume from the replicated offsets and
// timers. The group's receipt and delivery signing keys are derived from
// the raft secret, so a receipt handed out by one leader is taken by the
// next and the group keeps one identity at the name servers. On losing the
// lead the broker closes. A leader whose raft proposal fails answers 503
// unavailable: the entry may still commit (raft decides), as with any lost
// acknowledgement; a publish retried with its dedup id is stored once.
//
// # Transport
//
// Raft's TCP connections start with a challenge on the shared secret
// (transport.go): each side proves it with an HMAC-SHA256 of both sides'
// random nonces; a connection whose proof is wrong is closed, logged at
// ERROR and counted (postbus_raft_connections_refused_total); one closed
// before it proved anything (a member restarting, a network cut) is a WARN,
// counted apart (postbus_raft_handshake_failures_total). The secret
// authenticates the members; it does not encrypt their traffic.
//
// # Leaders and appends
//
// The leader's broker does not wait for raft under its append lock: it
// places each batch where the commitlog will put it (commitlog.Placer:
// every member rolls segments at the same places), proposes, and waits
// outside the lock, so concurrent publishes share raft's batches and
// fsyncs. A proposal that fails leaves the broker refusing appends
// (broker.ErrReplicationBroken) until the member opens it again from the
// files, as a restart would.
package replica
