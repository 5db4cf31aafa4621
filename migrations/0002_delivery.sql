-- 0002_delivery: what push and pull delivery keep beside the commitlog.

-- Delayed messages (delay levels, Postbus-Delay, Postbus-Deliver-At, and the
-- retries of deliveries): one row per delayed record of the log, put back on
-- its topic when due. Rows are derived from the log by dispatch (inserted
-- idempotently) and marked fired, not deleted, until dispatch can no longer
-- replay them.
CREATE TABLE timers (
    log_offset INTEGER NOT NULL PRIMARY KEY CHECK (log_offset >= 0),
    deliver_at INTEGER NOT NULL,
    fired      INTEGER NOT NULL DEFAULT 0 CHECK (fired IN (0, 1))
) STRICT;

CREATE INDEX timers_due ON timers (fired, deliver_at);

-- The delivery attempt log behind GET /v1/messages/{id}/trace, written in
-- batches and trimmed by retention.
CREATE TABLE attempts (
    msg_id       TEXT    NOT NULL,
    group_name   TEXT    NOT NULL,
    subscription TEXT    NOT NULL,
    attempt      INTEGER NOT NULL CHECK (attempt >= 1),
    at           INTEGER NOT NULL,
    outcome      TEXT    NOT NULL CHECK (outcome IN ('delivered', 'retry', 'dead', 'gone', 'acked', 'nacked', 'expired')),
    status       INTEGER NOT NULL DEFAULT 0,
    error        TEXT    NOT NULL DEFAULT '',
    latency_us   INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX attempts_by_msg ON attempts (msg_id, at);
CREATE INDEX attempts_by_time ON attempts (at);

-- Dead letters redriven or purged one by one: the queue offsets in the
-- group's %DLQ% topic that are no longer listed. A purge of the whole DLQ
-- moves the group's offset on its %DLQ% topic instead.
CREATE TABLE dlq_removed (
    group_name   TEXT    NOT NULL,
    queue_offset INTEGER NOT NULL,
    PRIMARY KEY (group_name, queue_offset)
) STRICT, WITHOUT ROWID;

-- An ordered subscription's queue blocked on a failing message: where, which
-- attempt comes next and when. Cleared when the message is delivered or
-- dead-lettered, so a restart resumes the wait rather than restarting it.
CREATE TABLE ordered_retries (
    subscription TEXT    NOT NULL,
    queue_id     INTEGER NOT NULL,
    queue_offset INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    next_at      INTEGER NOT NULL,
    PRIMARY KEY (subscription, queue_id)
) STRICT, WITHOUT ROWID;
