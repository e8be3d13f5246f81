-- The CI's own id of a build (Buildkite's build UUID, GITHUB_RUN_ID,
-- CI_PIPELINE_ID, BUILD_BUILDID; the local runner makes one), so that
-- `--build ID` finds the run in any pipeline (PostgreSQL migration 0019).
ALTER TABLE runs ADD COLUMN build_id TEXT;
CREATE INDEX runs_build_id ON runs (build_id) WHERE build_id IS NOT NULL;
