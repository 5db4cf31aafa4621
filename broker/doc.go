// Package broker is a postbus broker: topics, publish, query and the
// storage engine behind them.
//
// A publish is validated, encoded into a record (record.go) and appended to
// the commitlog under one mutex, which also hands out queue offsets, so a
// queue's order is the log's order. With SyncFlush the publish returns only
// after a group-commit fsync covers it. A dispatcher goroutine then reads
// the log and builds the derived structures: one consume queue per (topic,
// queue), whose entry index is the queue offset, and the key index, which
// maps message ids, keys and dedup ids to log offsets. Derived structures
// are flushed and checkpointed every CheckpointInterval; after a crash,
// recovery truncates them to the checkpoint and dispatches the log again
// from there, so they never disagree with the log for long and can always
// be rebuilt from it.
//
// A message published as a CloudEvent carries the event's attributes as
// properties named ce-<attribute> (cloudevents.go); validation holds any
// message with a ce- property to a whole CloudEvent 1.0, so a consumer
// that finds ce-specversion finds an event. A subscription's Format
// (raw, cloudevents) is how push sends it; it lives in the subscription's
// config JSON, which subsync's records carry to other brokers.
//
// Topic settings, consumer offsets, subscriptions and timers live in
// SQLite (package meta), never on the per-message path of publishing. The
// delay timer (package delaytimer) fires the timers of delayed messages
// and moves waiting ones ahead of retention, one at a time; delay.go is
// the broker's side of it: reading a message, putting it back, copying it
// ahead.
//
// In a cluster each broker holding a topic keeps its own copy of each of
// the topic's subscriptions, and every change of one carries a Version
// (subsync.go): a hybrid logical clock in Unix milliseconds that never
// goes below a version the broker has seen, with the minting broker's
// name. The broker coordinating a change gives every copy its version
// (WithVersion); a delete leaves a tombstone at its version, kept for
// Config.TombstoneTTL (7 days by default). ApplySubscriptionRecords
// merges other brokers' records, keeping per id the one that wins: the
// highest version; at equal version a tombstone over a live record; then
// the greater broker name. A live record that wins also replaces a
// subscription of the same group and topic under another id (tombstoned
// at the winner's version). A subscription created from a record starts
// as the record says, "latest" meaning its creation time, and the engine
// starts, changes or stops as the records say. A version more than
// MaxVersionSkew ahead of this broker's clock is refused.
//
// In a replica group (package broker/replica) a broker is opened, while its
// member leads, with Config.Replica: on the member's commitlog and meta.db,
// which it does not close. Its appends (replicated.go) are placed where the
// log will put them (commitlog.Placer), proposed to raft under appendMu,
// and waited for outside it; the raft state machine writes them on every
// member. Its metadata writes go through raft too (meta.SetReplicator). A
// proposal that fails stops its appends (ErrReplicationBroken) until the
// member opens a new broker from the files, as a restart would.
//
// Consuming goes through one consumer engine (engine.go, RocketMQ 5's pop
// model), for pull and push alike: Engine.Lease hands a group up to max
// messages of a topic, each out for a visibility, and Engine.Settle takes
// one back with Ack, RetryAt(t), Dead(reason) or Release (never sent; no
// attempt counted). The engine owns each group's cursors on a topic's
// queues and on its retry queue, what is out, ordered queues' blocks,
// retry copies and dead-lettering; offset resets, subscription changes
// and topic growth act on it, so no consumer writes its own position back
// over them. Every lease is settled by one per-receipt path
// (engine_each.go), which Engine.Settle, AckEach, NackEach and
// ChangeVisibility wrap; pullers settle receipt by receipt, as SQS's
// batch calls answer: each
// receipt's timer records whether an ack or a nack settled it, so a
// retried ack is answered acked (meta.SettledMemory, across restarts), and
// a malformed request changes nothing. Pull leases are durable (a
// visibility copy each, whose timer is stored with the offsets past its
// message in one transaction, so a crash keeps both or neither); push leases
// live in the process, and their offsets are written as they settle, with
// what was settled above each (consumer_offsets.progress), so a consumer
// built again after a kill hands out again only what was out. A push
// delivery its endpoint answered 202 becomes durable (deferred.go,
// Engine.Defer): a retry copy due at the subscription's ack_timeout whose
// timer its ack token names, settled through POST /v1/acks/{token} as a
// pull lease is by its receipt. Turning a
// subscription ordered or unordered changes its consumer in place: what is
// out stays out, and a queue's block becomes a retry copy, keeping its
// attempt count. An unordered pull lease's copy past its group's last
// attempt is dead-lettered by the timer loop when it fires, not by the next
// pull, and a message is dead-lettered once per group: a retry copy with a
// dead letter of its message written after it (a crash cut the step that
// followed) is neither put back nor dead-lettered again.
//
// A batched push loop leases with Engine.LeaseBatch and settles a batch in
// one call (SettleBatch, engine_batch.go), which waits once for the offset
// write. For an ordered subscription LeaseBatch hands out a queue's next
// messages as one run (consumer.runs), in queue order: the queue stays busy
// until the run is settled, and a message of the run settled other than by
// Ack (a retry, a dead letter, a release, its visibility running out)
// takes back what follows it, whose settles are then stale: the cursor
// goes back to just after it, so they go out again after it, in order,
// as their next attempt (consumer.sentBefore, in memory) unless it was
// released unsent.
//
// Open checks that meta.db knows every topic the commitlog (from the
// checkpoint on) and the consume queues hold, or recorded its deletion. A
// missing or empty meta.db beside a log with messages, or one older than
// the log (a restored backup, a -wal lost in a crash), is refused with
// ErrMetadataLost rather than served with its messages hidden and their
// queues deleted; Config.RebuildMetadata recreates the missing topics from
// the records (recover.go) and rebuilds every derived structure and the
// timers from the whole log. Checkpoints that keep failing make Ready
// report an error until one succeeds (health.go).
//
// A damaged meta.db (meta.ErrCorrupt: SQLITE_CORRUPT or SQLITE_NOTADB, or
// its quick_check fails at open, or in the background after open for a
// file over meta.DefaultCheckLimit) is refused at open, naming the file
// and --rebuild-metadata, which moves it aside as meta.db.damaged-<time>
// and rebuilds as for a lost one. Met while running, it makes Ready fail
// (and postbus_meta_damaged 1) until that restart, and a delayed publish
// is refused before anything is stored (its timer could not be kept); a
// plain publish needs nothing from meta.db and is still taken.
//
// Segments are Config.SegmentSize (at least MinSegmentSize, 1 MiB), except
// that a batch larger than that gets an oversized segment of its own
// (package commitlog), so one publish is one write into one segment;
// CheckSizes refuses a segment size below 1 MiB and a body limit over
// MaxBatchBytes (4 MiB), and nothing else. A frame holds at
// most commitlog.MaxFramePayload (16 MiB), a constant of the format, not
// MaxMessageBytes, which bounds new publishes only.
//
// Every file operation of the commitlog, the consume queues and the key
// index that changes the disk goes through Config.FS (package
// internal/vfs): the OS by default, a fault-injecting file system in tests.
// torture_test.go drives random publishes, topic changes, clock jumps, a
// full disk, restarts and power cuts through it and checks every answer
// against a model of what was acknowledged.
//
// Transactional messages (txn.go) are prepared records on their real topic
// that take no queue offset, like a delayed message, and whose id only is
// indexed; dispatch writes each one's transaction row to meta.db, so a
// crash replays into it (a prepare answers once its record is durable; the
// process holds the row until dispatch has stored it). Commit appends the
// message again, with the same id and a queue offset, and that copy is the
// decision: dispatch marks the row committed when it meets it (the replay
// after a crash too), and until then the process answers from the commit
// it made, so a commit is stored once and costs one append. A rollback
// leaves a small record in the log too, so that a rebuilt meta.db knows
// it; a topic's delete rolls its prepared transactions back. A check-back
// loop claims due rows (moving their next check ahead in the same write)
// and asks the producer group through Config.TxnChecker; after TxnCheckMax
// checks without an answer it rolls back, the reason kept in the row.
//
// Decisions the design leaves open:
//   - Dedup ids are kept in the record and the key index, not in SQLite: a
//     dedup id is then exactly as durable as the message it names, with no
//     window where one is stored without the other. Ids from this process's
//     lifetime are also held in memory for the dedup window (about 150 bytes
//     each).
//   - A topic's retention can only lengthen how long the shared log keeps a
//     segment (the log keeps the longest retention of any topic); a topic
//     with a shorter retention hides its older messages from every read:
//     by id, by key, by queue offset, pulls and pushes ask one rule
//     (retained), and a queue's min offset moves past them.
//   - Neither retention nor the disk's clean watermark deletes a segment
//     holding an undecided transaction's prepared record, nor any later
//     one (retention.go preparedFloor): its commit needs the body. A
//     transaction is decided within its timeout and checks, so what it
//     keeps is bounded; postbus_retention_held_bytes shows it. Delayed
//     messages and lease copies are moved ahead instead (moveAhead); a
//     prepared record is not, since its row, its recovery and its checks
//     all name its offset.
//   - A topic's incarnation is the log offset where it was created (stored
//     with it in SQLite), not a time: records of its name below that offset
//     belong to a deleted topic of the same name, and no read, dispatch,
//     rebuild, dedup check or timer reaches them. Offsets cannot collide as
//     creation times within one millisecond (or a clock stepped back) can.
//   - A publish looks its topic up before taking the append lock; if the
//     topic was deleted in between, the append refuses it and the publish
//     starts again on the topic as it is now (or is refused), so nothing is
//     stored with a deleted topic's queue offsets.
//   - A deleted topic's records stay in the log until retention, unreachable,
//     and its dedup ids go with it.
//   - A damaged span of the log (commitlog.CorruptError) is quarantined:
//     dispatch and rebuilds skip it with an ERROR line and the
//     postbus_dispatch_skipped_records_total metric and go on after it. The
//     queue offsets of records lost in it are kept as holes (entries of size
//     holeSize that readers skip), so later records keep the offsets they
//     were acknowledged with. A query that meets the damaged record answers
//     message_damaged for that message only. Retention dates a segment by
//     the first readable record after it, stepping over damage; when none
//     can be read, by its file's modification time (its seal), so a damaged
//     segment never keeps the log from shrinking.
//   - Damage is looked for, not only met: after Open, a background pass
//     (verify.go) reads every sealed segment once, at most 64 MiB/s, so a
//     damaged record nothing reads again is still quarantined and
//     reported. Open itself checks only the newest segment, to start fast.
//   - After recovery a queue never hands out an offset a consumer group has
//     already read past: offsets lost at a queue's end (damage, or a tail
//     cut after a crash under async flush) are kept as holes, logged at
//     ERROR and counted in postbus_recovery_lost_queue_offsets_total.
//   - A log that opens ending before what its checkpoint, the consume
//     queues, the queue-offset reservations (queuemarks.json: their
//     durable end) or the log-end witness (logend, written in place before
//     each publish is answered) prove was stored (its newest segment
//     deleted or cut while stopped, or its last record damaged and cut as
//     a torn tail) lost acknowledged records: open logs the range and the
//     number of lost queue entries at ERROR, Damaged (and so /readyz and
//     postbus_commitlog_quarantined_spans) lists the range, and the lost
//     queue offsets are kept as holes and counted in
//     postbus_recovery_lost_queue_offsets_total. Records acknowledged after
//     the last checkpoint left no trace in the derived files, so the holes
//     go up to each queue's reservation: a publish reserves its queue
//     offsets in queuemarks.json (fsynced, in blocks) before it takes them,
//     and no offset a 201 gave goes to another message (the holes may
//     include offsets never handed out). A torn tail past every witness
//     stays the commitlog's WARN. The spans found are kept in
//     lostspans.json and listed again at later starts, until the log's
//     start passes them. Limit: logend is not fsynced, so after a power cut
//     (not a killed process) a cut above the other witnesses goes
//     unnoticed; with every witness deleted the log cannot tell.
//   - Retention raises the consume queues' floor before it deletes a
//     segment, so a log that opens starting after records its queues
//     still hold above that floor lost its oldest segments while
//     stopped: open reports the range like a lost tail (ERROR, Damaged,
//     the quarantine gauge, the entries in
//     postbus_recovery_lost_queue_offsets_total), and the queues then
//     start after it.
//   - A read through a queue entry checks that the record it finds names
//     the entry's topic, queue and queue offset: a segment replaced by
//     other content keeps valid CRCs, and its records must not be served
//     as the messages at those offsets. Such an entry is an ERROR, counted
//     in postbus_queue_entries_misplaced_total, skipped by queue reads and
//     answered message_damaged when read alone.
//   - A record whose queue offset does not follow its queue's is a fault,
//     never dropped quietly. One whose queue offset its queue already holds
//     or passed (a good CRC on the wrong content: a segment replaced by a
//     copy of another) contradicts its position: it is quarantined as a
//     misplaced span (positions.go: an ERROR line per span,
//     postbus_dispatch_skipped_records_total{reason="misplaced"}, Damaged
//     and /readyz, lostspans.json when recovery found it). The queue
//     offsets such a span hid become holes when the next intact record
//     of the queue arrives; in recovery's dispatch any forward gap does
//     (its span listed, its offsets counted in
//     postbus_recovery_lost_queue_offsets_total), so the records after it
//     keep their offsets and each queue goes on from its true end. While
//     running, a record ahead of its queue is skipped with an ERROR line
//     (reason out_of_order): the offsets it claims were not handed out.
//   - A failed fsync of the commitlog (commitlog.ErrFailed) stops every
//     write until a restart: the publish that met it answers unavailable
//     with an unknown outcome and keeps the queue offsets it was given
//     (its bytes may be on disk, and a later record must not claim them
//     at the next recovery); Ready fails and postbus_commitlog_failed is
//     1. Offsets are given back only when the commitlog says the append
//     left nothing.
//   - Queues can grow but not shrink. Consumers pick up a queue the topic
//     gained from its start: every message in it is new to them.
//   - One meaning for an ordered queue's stored block (OrderedRetry): the
//     queue offset of the message it waits on, the attempts already made
//     at it, and when the next may go out. Blocks stored by an older
//     version for push held the next attempt's number; such a message
//     gets one attempt fewer after an upgrade.
//   - An ordered group's retry queue is consumed as one more ordered queue
//     (one message out at a time, in its order, a failing one retried in
//     place), beside its queues and not ordered against them: it holds
//     redriven dead letters, put back oldest first, and what was out or
//     waiting when the subscription turned ordered. RocketMQ re-sends a
//     dead letter as a new message; here a redrive to an ordered group
//     keeps the promise the group was made, one at a time and in order.
package broker
