-- 0005_topic_log_start: where in the commitlog a topic's current incarnation
-- begins. A topic deleted and created again keeps its name, and its old
-- records stay in the log until retention; the log offset (unlike a clock)
-- cannot collide, so records below it are the deleted topic's. -1 marks a
-- topic created before this column existed (told apart by created_at).
ALTER TABLE topics ADD COLUMN log_start INTEGER NOT NULL DEFAULT -1;
