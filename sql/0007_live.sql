-- A live run (GET /ws): its worker streams output to Redis and takes stdin from it as it comes.
ALTER TABLE tasks ADD COLUMN live boolean NOT NULL DEFAULT false;
