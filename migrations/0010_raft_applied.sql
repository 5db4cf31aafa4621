-- 0010_raft_applied: in a replica group (broker/replica), the index of the
-- last raft entry whose metadata effects this database holds. It is written
-- in the same transaction as those effects, so a member that restarts and
-- is handed the same entries again skips what it already applied. A single
-- row; 0 on a standalone broker, which never writes it.
CREATE TABLE raft_applied (
    id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    idx   INTEGER NOT NULL CHECK (idx >= 0)
) STRICT;
INSERT INTO raft_applied (id, idx) VALUES (1, 0);
