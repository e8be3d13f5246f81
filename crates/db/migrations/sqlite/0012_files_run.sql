-- Search walks one run's files in path order (issue 14) instead of loading
-- the whole run: every file carries its run, and (run_id, path, id) is the
-- order search and its cursor pages follow. The column cannot be NOT NULL
-- here (SQLite adds columns only with a default); the rules always write it.
ALTER TABLE files ADD COLUMN run_id TEXT REFERENCES runs(id);
UPDATE files SET run_id = (SELECT a.run_id FROM artifacts a WHERE a.id = files.artifact_id);
CREATE INDEX files_run_path ON files (run_id, path, id);
-- Listing a run's artifacts page by page in their shown order (runs page
-- through their UNIQUE (pipeline_id, number)).
CREATE INDEX artifacts_run_order ON artifacts (run_id, name, created_at, id);
DROP INDEX artifacts_run;
