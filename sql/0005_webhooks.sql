-- Webhooks: a per-user signing secret, a task's callback URL, and an outbox of deliveries written in
-- the task's finishing transaction and sent by a dispatcher (at least once).
ALTER TABLE users ADD COLUMN webhook_secret text;
ALTER TABLE tasks ADD COLUMN callback_url text;
CREATE TABLE webhook_deliveries (
    id           uuid PRIMARY KEY,
    task_id      uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    url          text NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    gave_up_at   timestamptz,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
