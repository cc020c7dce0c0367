-- A judge's task: more files beside the entry file, test cases with a checker, and each case's result.
ALTER TABLE tasks
    ADD COLUMN files jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN tests jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN checker jsonb NOT NULL DEFAULT '"trim"',
    ADD COLUMN stop_on_failure boolean NOT NULL DEFAULT false,
    ADD COLUMN case_results jsonb;

-- A cancel asked for while the task runs: the worker running it learns of it by NOTIFY, or reads it here.
ALTER TABLE tasks ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
-- A user's history, newest first, paged by (created_at, id).
CREATE INDEX tasks_history ON tasks (user_id, created_at DESC, id DESC);
