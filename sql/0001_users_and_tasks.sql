-- Accounts and tasks. Code, stdin and outputs are bytea: PostgreSQL text cannot hold NUL bytes.
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
    id             uuid PRIMARY KEY,
    user_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    language       text NOT NULL,
    code           bytea NOT NULL,
    stdin          bytea NOT NULL DEFAULT '',
    args           jsonb NOT NULL DEFAULT '[]',
    time_ms        integer NOT NULL,
    memory_mb      integer NOT NULL,
    state          text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done')),
    attempts       integer NOT NULL DEFAULT 0,
    worker         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    -- the result, set once when state becomes 'done'
    verdict        text,
    exit_code      integer,
    signal         integer,
    stdout         bytea,
    stderr         bytea,
    compile_output bytea,
    truncated      boolean,
    cpu_ms         integer,
    wall_ms        integer,
    memory_kb      integer
);

CREATE INDEX tasks_unfinished_by_user ON tasks (user_id) WHERE state <> 'done';

CREATE TABLE workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
