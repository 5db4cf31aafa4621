-- 0017_deferred_acks: deferred acknowledgement of push deliveries (DESIGN
-- §4 "Push extras"). An endpoint that answers a delivery 202 Accepted holds
-- it until it calls POST /v1/acks/{token}: the delivery becomes a copy of
-- the message in the group's retry topic, due when the subscription's
-- ack_timeout ends, whose timer the token names by ack_key (a random
-- number the token carries under the broker's MAC). Acking cancels the
-- timer, a retry swaps it for the retry's copy, and the timer firing is the
-- timeout: the copy goes out again as the next attempt.
--
-- timers.ack_key: NULL for every other timer.
ALTER TABLE timers ADD COLUMN ack_key INTEGER;

CREATE UNIQUE INDEX timers_by_ack_key ON timers (ack_key) WHERE ack_key IS NOT NULL;

-- attempts.outcome gains 'deferred' (a 202: the endpoint acknowledges
-- later). SQLite cannot change a CHECK in place: the table is rebuilt.
CREATE TABLE attempts_0017 (
    msg_id       TEXT    NOT NULL,
    group_name   TEXT    NOT NULL,
    subscription TEXT    NOT NULL,
    attempt      INTEGER NOT NULL CHECK (attempt >= 1),
    at           INTEGER NOT NULL,
    outcome      TEXT    NOT NULL CHECK (outcome IN ('delivered', 'retry', 'dead', 'gone', 'acked', 'nacked', 'expired', 'deferred')),
    status       INTEGER NOT NULL DEFAULT 0,
    error        TEXT    NOT NULL DEFAULT '',
    latency_us   INTEGER NOT NULL DEFAULT 0
) STRICT;

INSERT INTO attempts_0017 (rowid, msg_id, group_name, subscription, attempt, at, outcome, status, error, latency_us)
    SELECT rowid, msg_id, group_name, subscription, attempt, at, outcome, status, error, latency_us FROM attempts;

DROP TABLE attempts;

ALTER TABLE attempts_0017 RENAME TO attempts;

CREATE INDEX attempts_by_msg ON attempts (msg_id, at);
CREATE INDEX attempts_by_time ON attempts (at);

-- Self-healing dead letters (a push subscription's dlq_redrive): where the
-- probing of its endpoint with the group's oldest dead letter of its topic
-- stands. next_probe (Unix ms) is when the next probe may go, once a probe
-- failed (0: when the oldest dead letter has waited dlq_redrive.after);
-- redriven counts the dead letters put back after probes that succeeded.
CREATE TABLE dlq_redrives (
    subscription TEXT    NOT NULL PRIMARY KEY,
    state        TEXT    NOT NULL CHECK (state IN ('waiting', 'probe_failed', 'redriven')),
    next_probe   INTEGER NOT NULL DEFAULT 0,
    probes       INTEGER NOT NULL DEFAULT 0 CHECK (probes >= 0),
    redriven     INTEGER NOT NULL DEFAULT 0 CHECK (redriven >= 0),
    last_error   TEXT    NOT NULL DEFAULT '',
    updated_at   INTEGER NOT NULL
) STRICT;
