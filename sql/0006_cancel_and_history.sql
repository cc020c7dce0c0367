-- A cancel asked for while the task runs: the worker running it learns of it by NOTIFY, or reads it here.
ALTER TABLE tasks ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
-- A user's history, newest first, paged by (created_at, id).
CREATE INDEX tasks_history ON tasks (user_id, created_at DESC, id DESC);
