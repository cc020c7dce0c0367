-- The sandbox container a task ran in (the last step's), for operators and for the tests that
-- prove each container serves one task.
ALTER TABLE tasks ADD COLUMN container text;
