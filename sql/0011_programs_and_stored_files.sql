-- A task's own commands in place of its plugin's (a foreign API's conventions, e.g. Jobe's), read by workers.
ALTER TABLE tasks ADD COLUMN program jsonb;

-- Files a client stores ahead of the runs that name them (Jobe's file cache): per owner, bounded,
-- the least recently used dropped first.
CREATE TABLE stored_files (
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    file_id text NOT NULL,
    content bytea NOT NULL,
    size integer NOT NULL,
    used_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, file_id)
);
CREATE INDEX stored_files_lru ON stored_files (user_id, used_at);
