-- A sandbox's persisted state: a tar of its files (work folder, /tmp) in chunks of at most 1 MiB, so it is
-- written and read streamed, never whole in memory. `state_generation` names the complete one (0: none yet);
-- a save writes the next generation beside it and swaps in one transaction, so a half save leaves nothing.
ALTER TABLE sandboxes ADD COLUMN state_generation integer NOT NULL DEFAULT 0,
                      ADD COLUMN state_bytes bigint NOT NULL DEFAULT 0,
                      ADD COLUMN state_at timestamptz,
                      ADD COLUMN restored text,
                      ADD COLUMN placed_at timestamptz NOT NULL DEFAULT now();
CREATE TABLE sandbox_state (
    sandbox_id uuid NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    generation integer NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (sandbox_id, generation, seq)
);
-- Tars of files seldom shrink much: not worth PostgreSQL's compression on every chunk.
ALTER TABLE sandbox_state ALTER COLUMN data SET STORAGE EXTERNAL;
-- Deleted with the sandbox: the moment it ends, whichever path ends it.
CREATE FUNCTION sandbox_state_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sandbox_state WHERE sandbox_id = NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER sandbox_state_ended AFTER UPDATE OF state ON sandboxes
    FOR EACH ROW WHEN (NEW.state = 'ended' AND OLD.state <> 'ended') EXECUTE FUNCTION sandbox_state_ended();
