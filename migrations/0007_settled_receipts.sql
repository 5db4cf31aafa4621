-- 0007_settled_receipts: what a pull consumer's ack or nack did to a
-- visibility timer, so that an ack retried after its answer was lost is
-- answered "acked" again rather than "stale" (also after a restart), and
-- the end of visibility an ordered pull lease's receipt names, which stays
-- the lease's name when its visibility is changed.
--
-- timers.settled: 0 while pending or fired by the timer loop; the time of
-- the ack (Unix ms) when acked; minus the time of the nack when nacked.
-- Settled rows are kept for a while after they are fired (see
-- broker/meta PurgeFiredTimers).
ALTER TABLE timers ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;

-- ordered_retries.lease_until: the end of visibility (Unix ms) named by the
-- receipt of the lease out on the queue, when its visibility was changed
-- after it was handed out; 0 when next_at still is that end.
ALTER TABLE ordered_retries ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
