-- Satchel metadata, SQLite dialect. Times are milliseconds since the Unix epoch.
CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE clusters (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (organization_id, key)
);

CREATE TABLE pipelines (
    id TEXT PRIMARY KEY,
    cluster_id TEXT NOT NULL REFERENCES clusters(id),
    key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (cluster_id, key)
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL REFERENCES pipelines(id),
    number INTEGER NOT NULL,
    branch TEXT,
    commit_sha TEXT,
    state TEXT NOT NULL DEFAULT 'running',
    created_at INTEGER NOT NULL,
    UNIQUE (pipeline_id, number)
);

-- One row per attempt of a job; a higher attempt supersedes lower ones.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),
    stage TEXT,
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (run_id, key, attempt)
);

CREATE TABLE artifacts (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),
    job_id TEXT NOT NULL REFERENCES jobs(id),
    name TEXT NOT NULL,
    is_default INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'files',
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
-- Deleted and expired artifacts free their name.
CREATE UNIQUE INDEX artifacts_default_per_job ON artifacts (job_id)
    WHERE is_default = 1 AND state NOT IN ('deleted', 'expired');
CREATE UNIQUE INDEX artifacts_name_per_job ON artifacts (run_id, name, job_id)
    WHERE is_default = 0 AND state NOT IN ('deleted', 'expired');
CREATE INDEX artifacts_run ON artifacts (run_id, name);

-- One `artifact upload` call: its files become visible together.
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    artifact_id TEXT NOT NULL REFERENCES artifacts(id),
    step TEXT,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX uploads_artifact ON uploads (artifact_id);

CREATE TABLE files (
    id TEXT PRIMARY KEY,
    artifact_id TEXT NOT NULL REFERENCES artifacts(id),
    upload_id TEXT NOT NULL REFERENCES uploads(id),
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    mode INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    source_path TEXT,
    glob TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (artifact_id, path)
);
CREATE INDEX files_upload ON files (upload_id);
CREATE INDEX files_sha256 ON files (sha256);

-- Content known to be durably stored in the content store.
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
