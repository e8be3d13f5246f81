-- The artifacts an upload replaces when it finishes (`satchel artifact
-- upload --replace`, GitHub's `overwrite: true`): chosen when the upload
-- is created, under the run's lock, so the server checks the caller may
-- delete exactly these; finishing deletes them in the finishing
-- transaction, before the new artifact is finished, so readers see the old
-- one or the new one, never neither (PostgreSQL migration 0022).
CREATE TABLE upload_replaces (
    upload_id TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    PRIMARY KEY (upload_id, artifact_id)
);
-- A job's replacement of its own artifact is a second row of the name
-- while the first is live, until the swap. Two finished ones never are:
-- creating artifacts holds the run's lock, and the swap deletes the old
-- row before the new one is finished.
DROP INDEX artifacts_name_per_job;
CREATE UNIQUE INDEX artifacts_name_per_job ON artifacts (run_id, name, job_id)
    WHERE is_default = 0 AND state = 'finished';
