-- 0011_topic_tombstones: a topic deleted in a cluster, kept with the
-- version of its delete (as 0009's subscription versions: Unix ms from the
-- coordinating broker's hybrid logical clock, and that broker's name), so
-- that a holder that missed the delete (down at the time) drops its copy
-- when it meets this record, rather than bringing the topic back. A copy
-- created after the delete (created_at above version) is a new topic and
-- is kept. Purged once older than the broker's tombstone lifetime.
CREATE TABLE topic_tombstones (
    name       TEXT    NOT NULL PRIMARY KEY CHECK (length(name) > 0),
    version    INTEGER NOT NULL CHECK (version > 0),
    version_by TEXT    NOT NULL
) STRICT, WITHOUT ROWID;
