-- A sandbox's own credential for the calls inside it that E2B's SDKs make (envd's X-Access-Token):
-- E2B's API hands it back on create and on connect, so it is kept as it is; 256 random bits.
ALTER TABLE sandboxes ADD COLUMN access_token text;
UPDATE sandboxes SET access_token = replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
ALTER TABLE sandboxes ALTER COLUMN access_token SET NOT NULL;
-- Where its files live and its commands start: /box, or /home/user for a sandbox made through E2B's API.
ALTER TABLE sandboxes ADD COLUMN work_folder text NOT NULL DEFAULT '/box';
