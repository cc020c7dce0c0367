-- This deployment's id: its sandbox containers carry it, so that deployments sharing one Docker
-- engine touch only their own.
CREATE TABLE deployment (
    only_one boolean PRIMARY KEY DEFAULT true CHECK (only_one),
    id uuid NOT NULL DEFAULT gen_random_uuid()
);
INSERT INTO deployment DEFAULT VALUES;
