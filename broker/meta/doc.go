// Package meta is the broker's metadata store: topics, consumer-group offsets,
// subscriptions, delayed-message timers, the delivery attempt log,
// transactions with their checks and producer groups (txn.go), and the
// other state that must survive a restart, kept in one SQLite database file. It is the only package
// of postbus that uses database/sql.
//
// # What it owns
//
// The database file (plus SQLite's -wal and -shm beside it) and its schema,
// which it brings up to date on Open by applying the numbered files of package
// migrations in order, each in its own transaction. A database written by a
// newer binary (a schema version this one does not know) is refused with
// ErrSchemaTooNew rather than used or downgraded.
//
// # Invariants
//
//   - Every store method is one transaction: it happens whole or not at all.
//     CommitOffsets writes a whole batch of offsets in one transaction, so a
//     reader sees either none of a batch or all of it.
//   - A write is durable when the method returns: the writer runs with
//     journal_mode=WAL and synchronous=FULL, so each commit fsyncs the WAL.
//   - One writer: all writes go through a single connection and begin with
//     BEGIN IMMEDIATE, so writers queue in Go instead of failing with
//     SQLITE_BUSY part-way through a transaction.
//   - Reads never queue behind writes: they use a separate pool of read-only
//     connections (mode=ro, query_only) that WAL lets run beside the writer,
//     each seeing the last committed state.
//   - A topic's queue count only grows (ErrQueuesShrink): a queue id that held
//     messages keeps meaning the same queue.
//   - Deleting a topic deletes its consumer offsets in the same transaction,
//     and records the deletion in deleted_topics: a topic's records and
//     queues that outlive it are then known to be a deleted topic's, not
//     those of a topic this database has lost.
//   - A damaged file is never used unknowingly: Open runs PRAGMA
//     quick_check (every page read once; integrity_check would also
//     compare each index with its table, at several times the cost) on a
//     file up to the check limit (WithCheckLimit, DefaultCheckLimit
//     64 MiB, about a second) and refuses a damaged one with ErrCorrupt;
//     a larger file is checked by Check, which the broker runs in the
//     background. Any SQLITE_CORRUPT or SQLITE_NOTADB met later is
//     returned wrapped in ErrCorrupt, logged at ERROR once and kept
//     (Corrupt), so the broker can stop saying it is ready.
//   - A subscription change carries a Version; Wins is the one rule of
//     which of two records of an id stands (higher version, then a
//     tombstone, then the greater broker name). UpdateSubscription and
//     DeleteSubscriptionAt refuse, with ErrStale, a change older than the
//     stored record; DeleteSubscriptionAt leaves a tombstone in the same
//     transaction; ApplySubscription stores another broker's record only
//     when it wins, all in one transaction.
//   - Migrations are applied by version, each once; a version missing
//     below the database's highest (its number was reserved while a later
//     file shipped) is applied when its file arrives, and a database that
//     records a version this binary lacks is refused (ErrSchemaTooNew).
//   - Fresh says whether Open created the schema: with a commitlog that
//     holds messages, that means the metadata was lost (the broker refuses
//     to start unless told to rebuild it from the log).
//
// # On disk
//
//	<path>          SQLite database, WAL mode
//	<path>-wal      committed transactions not yet checkpointed
//	<path>-shm      WAL index (shared memory)
//
//	schema_migrations(version INTEGER PK, name TEXT, applied_at TEXT)  one row per applied file
//	topics(name PK, queues, retention_ms, created_at, updated_at, log_start)  times in unix ms; log_start: the commitlog offset where the topic (this incarnation) begins
//	consumer_offsets((group_name, topic, queue_id) PK, next_offset, updated_at, progress)
//	subscriptions(id PK, group_name, topic, url, filter, ordered, config, secret, state, ..., version, version_by)
//	subscription_tombstones(id PK, group_name, topic, version, version_by, deleted_at)  deleted subscriptions, purged after their lifetime
//	deleted_topics(name PK, deleted_at)                                   the latest deletion of each topic
//	timers(log_offset PK, deliver_at, fired, owner, settled, ack_key)     one per delayed record of the log (delays, retries, visibility copies); settled: its receipt was acked or nacked; ack_key: a deferred push delivery's, named by its ack token
//	attempts(msg_id, group_name, subscription, attempt, at, outcome, ...) the delivery attempt log behind /trace, trimmed by retention
//	dlq_removed((group_name, queue_offset) PK)                            dead letters redriven or purged one by one
//	ordered_retries((subscription, queue_id) PK, queue_offset, attempt, next_at, lease_until)  an ordered queue blocked on a failing message
//	dlq_redrives(subscription PK, state, next_probe, probes, redriven, last_error, updated_at)  a push subscription's dlq_redrive: where probing its endpoint with its oldest dead letter stands
//	topic_tombstones(name PK, version, version_by)                        a topic deleted in a cluster with its delete's version, so a holder that missed the delete drops its copy instead of bringing it back
//
//	raft_applied(id=1 PK, idx)                                            in a replica group: the raft index of the last replicated write applied
//
// Backup writes a consistent copy of a database (VACUUM INTO on a read-only
// connection) while a broker may have it open; `postbus backup` uses it.
//
// # In a replica group
//
// SetReplicator (package broker/replica) turns every write into a
// replicated one: the write's body runs in a transaction on the writer,
// which keeps each statement that succeeded with its arguments (a Tx is a
// *sql.Tx, or this recorder around one), and is rolled back; the
// statements go to raft, and every member, this one included, runs them in
// one transaction with the entry's index (ApplyReplicated), skipping an
// index at or below raft_applied's. A lock held from the capture to the
// apply keeps the state the body read the state the statements apply to.
// Unsynced offset writes are synced ones there.
//
// The tables are described in full in package migrations. Times are stored in
// unix milliseconds and returned in UTC, so a sub-millisecond part is lost.
package meta
