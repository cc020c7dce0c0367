-- Stateful sandboxes: long-lived containers with persistent interpreters, each on one worker.
-- state: starting (waiting for a worker) → running ⇄ paused → ended, and never back from ended.
CREATE TABLE sandboxes (
    id uuid PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    language text NOT NULL,
    memory_mb integer NOT NULL,
    cpus real NOT NULL,
    disk_mb integer NOT NULL,
    idle_timeout_s integer NOT NULL,
    env jsonb NOT NULL DEFAULT '{}',
    metadata jsonb NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'starting',
    worker_id text,
    container_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    ended_at timestamptz,
    end_reason text
);
CREATE INDEX sandboxes_live_by_user ON sandboxes (user_id) WHERE state <> 'ended';
CREATE INDEX sandboxes_live_by_worker ON sandboxes (worker_id) WHERE state <> 'ended';
