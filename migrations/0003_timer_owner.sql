-- 0003_timer_owner: which topic a timer's record is for, so the groups API
-- can count a group's messages out on pull (their visibility copies) or
-- waiting for a push retry: the pending timers of its retry topics.
ALTER TABLE timers ADD COLUMN owner TEXT NOT NULL DEFAULT '';

CREATE INDEX timers_by_owner ON timers (owner, fired);
