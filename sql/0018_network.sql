-- A task's network policy ({"allow": [host patterns]}), within the operator's widest; NULL: no network.
ALTER TABLE tasks ADD COLUMN network jsonb;
ALTER TABLE sandboxes ADD COLUMN network jsonb;
