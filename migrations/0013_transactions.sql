-- 0013_transactions: transactional messages (DESIGN §3). A prepared ("half")
-- message is a record in the commitlog flagged prepared, with no queue
-- offset; dispatch adds its row here (so a crash before the row was written
-- adds it again on the replay). A decision changes the row: commit appends
-- the message again with the same id, on its queue, and records where it
-- went; rollback only marks the row. next_check is when the check-back
-- loop asks the producer group's check_url next (unix ms); checks is how
-- many it has asked.
CREATE TABLE transactions (
    msg_id         TEXT    NOT NULL PRIMARY KEY,
    topic          TEXT    NOT NULL,
    producer_group TEXT    NOT NULL,
    log_offset     INTEGER NOT NULL CHECK (log_offset >= 0),
    state          TEXT    NOT NULL DEFAULT 'prepared' CHECK (state IN ('prepared', 'committed', 'rolled_back')),
    prepared_at    INTEGER NOT NULL,
    next_check     INTEGER NOT NULL,
    checks         INTEGER NOT NULL DEFAULT 0 CHECK (checks >= 0),
    queue_id       INTEGER NOT NULL DEFAULT -1,
    queue_offset   INTEGER NOT NULL DEFAULT -1,
    decided_at     INTEGER NOT NULL DEFAULT 0,
    reason         TEXT    NOT NULL DEFAULT ''
) STRICT;

-- The check-back loop's due query and the operators' list of what is
-- undecided, in prepare order.
CREATE INDEX transactions_due ON transactions (state, next_check);
CREATE INDEX transactions_by_state ON transactions (state, log_offset);

-- A producer group: where its transactions are checked and the secrets
-- that sign the checks (the current one, and earlier ones still signing
-- beside it after a rotation, as JSON [{"secret","until"}]).
CREATE TABLE producer_groups (
    name             TEXT    NOT NULL PRIMARY KEY,
    check_url        TEXT    NOT NULL,
    secret           TEXT    NOT NULL,
    previous_secrets TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(previous_secrets)),
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) STRICT;

-- Each check-back of a transaction, for its trace: the answer (commit,
-- rollback, unknown) or failed, with the HTTP status, the error and the
-- latency.
CREATE TABLE transaction_checks (
    msg_id     TEXT    NOT NULL,
    check_n    INTEGER NOT NULL CHECK (check_n >= 1),
    at         INTEGER NOT NULL,
    outcome    TEXT    NOT NULL CHECK (outcome IN ('commit', 'rollback', 'unknown', 'failed')),
    status     INTEGER NOT NULL DEFAULT 0,
    error      TEXT    NOT NULL DEFAULT '',
    latency_us INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (msg_id, check_n)
) STRICT;
