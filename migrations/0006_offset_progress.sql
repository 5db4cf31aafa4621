-- 0006_offset_progress: what a push consumer settled above its offset. The
-- offset (next_offset) cannot pass the lowest message still out, so without
-- this a kill delivers again everything settled above it. NULL: nothing is
-- recorded, and the group resumes at next_offset as before. Otherwise a
-- varint, how far past next_offset the consumer had read, then the queue
-- offsets still out above next_offset (next_offset itself is out), each as
-- a varint step from the one before: everything else below that point was
-- settled. Written in the same batched commit as the offset.
ALTER TABLE consumer_offsets ADD COLUMN progress BLOB;
