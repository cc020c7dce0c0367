-- An operator can disable a user (coderund users disable): its logins, sessions and API keys are refused.
ALTER TABLE users ADD COLUMN disabled_at timestamptz;
