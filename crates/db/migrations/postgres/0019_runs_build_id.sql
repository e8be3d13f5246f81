-- SQLite migration 0020: the CI's own build id of a run, found by
-- `--build ID` in any pipeline.
ALTER TABLE runs ADD COLUMN build_id TEXT COLLATE "C";
CREATE INDEX runs_build_id ON runs (build_id) WHERE build_id IS NOT NULL;
