-- SQLite migration 0012: every file carries its run, so search walks one
-- run's files in path order through an index instead of loading the run.
-- Nullable as on SQLite (which cannot add a NOT NULL column); the rules
-- always write it.
ALTER TABLE files ADD COLUMN run_id TEXT COLLATE "C" REFERENCES runs(id);
UPDATE files f SET run_id = a.run_id FROM artifacts a WHERE a.id = f.artifact_id;
CREATE INDEX files_run_path ON files (run_id, path, id);
-- Artifacts page through (run_id, name, created_at, id), runs through
-- their UNIQUE (pipeline_id, number).
CREATE INDEX artifacts_run_order ON artifacts (run_id, name, created_at, id);
DROP INDEX artifacts_run;
