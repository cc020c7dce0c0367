-- API keys: only a hash of each is kept. Usage per user, UTC day and language, summed as tasks
-- finish. Quotas per user, set by the operator (NULL: the server's default).
CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL,
    prefix text NOT NULL,
    key_hash bytea NOT NULL UNIQUE,
    scopes text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id);

CREATE TABLE usage_daily (
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    day date NOT NULL,
    language text NOT NULL,
    tasks bigint NOT NULL DEFAULT 0,
    cpu_ms bigint NOT NULL DEFAULT 0,
    wall_ms bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day, language)
);

ALTER TABLE users ADD COLUMN quota_cpu_s_per_day integer, ADD COLUMN quota_max_pending integer,
    ADD COLUMN quota_per_minute integer;
