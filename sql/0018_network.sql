-- A task's network policy ({"allow": [host patterns]}), within the operator's widest; NULL: no network.
ALTER TABLE tasks ADD COLUMN network jsonb;
-- What its run did with it: {"allowed", "refused", "bytes"}, counted by the worker's egress proxy.
ALTER TABLE tasks ADD COLUMN network_usage jsonb;
ALTER TABLE sandboxes ADD COLUMN network jsonb;
