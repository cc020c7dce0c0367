-- A delivery claims the fairest queued task of its queue, not always the one its message names: the
-- user with the fewest running tasks first, then the one waiting longest. One index serves that
-- choice and the per-user cap's count (the index on user_id alone it replaces).
ALTER TABLE tasks ADD COLUMN queue text;  -- the RabbitMQ queue its messages go to (NULL: any)
CREATE INDEX tasks_unfinished_by_user_state ON tasks (user_id, state, created_at) INCLUDE (queue) WHERE state <> 'done';
DROP INDEX tasks_unfinished_by_user;
-- The task id named by the message whose delivery claimed the task: when that delivery's worker dies,
-- the broker redelivers the message, and the redelivery resumes this task.
ALTER TABLE tasks ADD COLUMN message uuid;
