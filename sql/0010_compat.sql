-- What a foreign API (Judge0, ...) needs to answer in its own terms: the API, and request details
-- coderund itself does not run with (an expected output, the client's language id). Workers never read it.
ALTER TABLE tasks ADD COLUMN compat jsonb;
