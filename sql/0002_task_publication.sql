-- When the broker confirmed a task's message: a sweeper publishes tasks committed but never confirmed.
ALTER TABLE tasks ADD COLUMN published_at timestamptz;
UPDATE tasks SET published_at = created_at;
CREATE INDEX tasks_unfinished_by_state ON tasks (state, created_at) WHERE state <> 'done';
