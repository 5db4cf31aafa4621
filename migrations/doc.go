// Package migrations holds the schema of the broker's SQLite metadata store as
// numbered SQL files, embedded in the binary.
//
// It owns the files and nothing else: the migrator that applies them lives in
// broker/meta, the only package that speaks database/sql.
//
// # Files
//
// Each file is named NNNN_name.sql: a four-digit version, an underscore and a
// lower_snake name (0001_init.sql, 0002_receipts.sql, ...). Versions start at
// 1 and increase; a number may be skipped while it is reserved for a change
// being made elsewhere, and its file, when it comes, is applied to databases
// that already have higher versions. A file is applied once, in version
// order, inside its own transaction together with the row that records it:
//
//	schema_migrations(version INTEGER PRIMARY KEY, name TEXT, applied_at TEXT /* RFC 3339 */)
//
// so a file either takes effect whole or not at all. A database whose
// schema_migrations holds a version that no file here has was written by a
// newer binary and is refused, never downgraded.
//
// # Rules for a new file
//
//   - Never edit or renumber a file that has shipped: add a new one.
//   - Statements must be legal inside a transaction: no VACUUM, no
//     journal_mode changes, and PRAGMA foreign_keys is a no-op there.
//   - Tables are STRICT; times are INTEGER unix milliseconds unless the
//     column says otherwise; JSON columns carry a json_valid CHECK.
//
// # Schema at version 1
//
//	topics            name PK, queues 1..1024, retention_ms, created_at, updated_at
//	consumer_offsets  (group_name, topic, queue_id) PK -> next_offset, updated_at
//	                  next_offset is the lowest queue offset the group has not yet
//	                  finished; a restarted group resumes there (at-least-once)
//	subscriptions     id PK, UNIQUE(group_name, topic), url (NULL = pull), filter,
//	                  ordered, config JSON, secret, state active|paused|disabled
//
// Later files add timers, attempts, dlq_removed, ordered_retries (0002), the
// timers' owner (0003), deleted_topics (0004: name PK, deleted_at), the
// tombstones that let the broker tell a deleted topic's leftovers from a
// topic the database lost, topics.log_start (0005), where a topic's
// current incarnation begins in the commitlog,
// consumer_offsets.progress (0006), what a push consumer settled above its
// offset, so a kill does not deliver it again, and timers.settled (how a
// consumer settled a visibility timer: acked or nacked, and when) and
// ordered_retries.lease_until (0007). 0009 gives subscriptions a version
// (version, version_by: the last change's, the same on every broker's
// copy) and adds subscription_tombstones, the deleted subscriptions kept
// with their delete's version so that a broker that missed the delete
// drops its copy; 0008 is reserved. 0013 adds transactions (a
// transactional message's row: its prepared record, state, next check and
// checks made, and once decided where it was committed and why),
// transaction_checks (each check-back, for the trace) and producer_groups
// (check_url and the secrets that sign the checks).
//
// consumer_offsets deliberately has no foreign key to topics: groups also
// keep offsets on system topics (%RETRY%group, the delay schedule topic) that
// need not be rows in topics. Deleting a topic removes its offsets in the
// same transaction instead (see broker/meta).
package migrations
