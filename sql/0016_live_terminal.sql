-- A live run whose program has a terminal (a pseudo-terminal for its stdin and stdout) rather than pipes.
ALTER TABLE tasks ADD COLUMN tty boolean NOT NULL DEFAULT false;
