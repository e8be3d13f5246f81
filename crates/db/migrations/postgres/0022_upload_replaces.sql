-- The artifacts an upload replaces when it finishes, and a job's unique
-- name among its finished artifacts only (SQLite migration 0023 says why).
CREATE TABLE upload_replaces (
    upload_id TEXT COLLATE "C" NOT NULL,
    artifact_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (upload_id, artifact_id)
);
DROP INDEX artifacts_name_per_job;
CREATE UNIQUE INDEX artifacts_name_per_job ON artifacts (run_id, name, job_id)
    WHERE is_default = 0 AND state = 'finished';
