-- 0009_subscription_versions: one truth for a subscription across the
-- brokers holding its topic. Every change of a subscription carries a
-- version, the same on every broker's copy: version is the change's time
-- in Unix milliseconds as a hybrid logical clock (never below a version
-- the minting broker has seen, so a later change has a higher one), and
-- version_by the name of the broker that minted it (two brokers never
-- mint the same pair). Brokers exchange their records and keep, per id,
-- the highest: version first, then a tombstone over a live record, then
-- version_by. 0 and '' are the rows stored before versions existed, older
-- than any change since.
ALTER TABLE subscriptions ADD COLUMN version INTEGER NOT NULL DEFAULT 0 CHECK (version >= 0);
ALTER TABLE subscriptions ADD COLUMN version_by TEXT NOT NULL DEFAULT '';

-- A deleted subscription, kept with the version of its delete so that a
-- broker that missed the delete (down at the time) loses its copy when it
-- meets this record, rather than bringing the subscription back. Purged
-- once older than the broker's tombstone lifetime (7 days by default).
CREATE TABLE subscription_tombstones (
    id         TEXT    NOT NULL PRIMARY KEY CHECK (length(id) > 0),
    group_name TEXT    NOT NULL CHECK (length(group_name) > 0),
    topic      TEXT    NOT NULL CHECK (length(topic) > 0),
    version    INTEGER NOT NULL CHECK (version >= 0),
    version_by TEXT    NOT NULL,
    deleted_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX subscription_tombstones_by_topic ON subscription_tombstones (topic);
