-- 0004_deleted_topics: a row per deleted topic, written in the transaction
-- that deletes it. The commitlog keeps a deleted topic's records until
-- retention, and a crash can leave its consume queues behind; at start the
-- broker tells those apart from the records and queues of a topic this
-- database never heard of (a lost or restored meta.db), which it must not
-- drop silently. deleted_at is unix milliseconds; a topic deleted again
-- keeps its latest deletion.
CREATE TABLE deleted_topics (
    name       TEXT    NOT NULL PRIMARY KEY CHECK (length(name) > 0),
    deleted_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
