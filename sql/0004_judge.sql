-- A judge's task: more files beside the entry file, test cases with a checker, and each case's result.
ALTER TABLE tasks
    ADD COLUMN files jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN tests jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN checker jsonb NOT NULL DEFAULT '"trim"',
    ADD COLUMN stop_on_failure boolean NOT NULL DEFAULT false,
    ADD COLUMN case_results jsonb;
