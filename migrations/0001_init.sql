-- 0001_init: the tables every part of the broker starts from.
-- Times are unix milliseconds (INTEGER). Tables are STRICT so a wrong type is
-- an error rather than a silent coercion.

-- One row per topic. Queues may grow but never shrink: a queue id that once
-- held messages must keep meaning the same queue.
CREATE TABLE topics (
    name         TEXT    NOT NULL PRIMARY KEY CHECK (length(name) > 0),
    queues       INTEGER NOT NULL CHECK (queues BETWEEN 1 AND 1024),
    retention_ms INTEGER NOT NULL CHECK (retention_ms >= 0), -- 0: the broker default
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Per (group, topic, queue) the lowest queue offset not yet done. Written in
-- batches, read at start-up and by the groups API.
CREATE TABLE consumer_offsets (
    group_name  TEXT    NOT NULL CHECK (length(group_name) > 0),
    topic       TEXT    NOT NULL CHECK (length(topic) > 0),
    queue_id    INTEGER NOT NULL CHECK (queue_id BETWEEN 0 AND 1023),
    next_offset INTEGER NOT NULL CHECK (next_offset >= 0),
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (group_name, topic, queue_id)
) STRICT, WITHOUT ROWID;

-- Deleting a topic deletes its offsets; this keeps that from scanning the table.
CREATE INDEX consumer_offsets_by_topic ON consumer_offsets (topic);

-- One subscription per (group, topic), push (url set) or pull (url NULL).
-- config holds the delivery knobs (retry delays or backoff, timeout,
-- max_in_flight, rate, visibility, ...) as a JSON object so new knobs need no
-- migration. secret is the webhook signing secret (NULL for pull).
CREATE TABLE subscriptions (
    id         TEXT    NOT NULL PRIMARY KEY CHECK (length(id) > 0),
    group_name TEXT    NOT NULL CHECK (length(group_name) > 0),
    topic      TEXT    NOT NULL CHECK (length(topic) > 0),
    url        TEXT,
    filter     TEXT    NOT NULL DEFAULT '*',
    ordered    INTEGER NOT NULL DEFAULT 0 CHECK (ordered IN (0, 1)),
    config     TEXT    NOT NULL DEFAULT '{}'
                       CHECK (json_valid(config) AND json_type(config) = 'object'),
    secret     TEXT,
    state      TEXT    NOT NULL DEFAULT 'active'
                       CHECK (state IN ('active', 'paused', 'disabled')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (group_name, topic)
) STRICT;

CREATE INDEX subscriptions_by_topic ON subscriptions (topic);
