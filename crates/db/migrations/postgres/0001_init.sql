-- Satchel metadata, PostgreSQL dialect: the schema of SQLite's migrations
-- 0001-0004 in one step. Times are milliseconds since the Unix epoch;
-- booleans are 0/1 integers, as on SQLite. Text is compared and sorted
-- byte by byte (COLLATE "C"), as SQLite does, whatever the server's locale.
CREATE TABLE organizations (
    id TEXT COLLATE "C" PRIMARY KEY,
    key TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE clusters (
    id TEXT COLLATE "C" PRIMARY KEY,
    organization_id TEXT COLLATE "C" NOT NULL REFERENCES organizations(id),
    key TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (organization_id, key)
);

CREATE TABLE pipelines (
    id TEXT COLLATE "C" PRIMARY KEY,
    cluster_id TEXT COLLATE "C" NOT NULL REFERENCES clusters(id),
    key TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (cluster_id, key)
);
CREATE INDEX pipelines_key ON pipelines (key);

CREATE TABLE runs (
    id TEXT COLLATE "C" PRIMARY KEY,
    pipeline_id TEXT COLLATE "C" NOT NULL REFERENCES pipelines(id),
    number BIGINT NOT NULL,
    branch TEXT COLLATE "C",
    commit_sha TEXT COLLATE "C",
    state TEXT COLLATE "C" NOT NULL DEFAULT 'running',
    created_at BIGINT NOT NULL,
    -- JSON object, source name -> {pipeline, selector, run}.
    sources TEXT,
    triggered_from TEXT COLLATE "C" REFERENCES runs(id),
    finished_at BIGINT,
    UNIQUE (pipeline_id, number)
);
CREATE INDEX runs_state ON runs (pipeline_id, state, number);

-- One row per attempt of a job; a higher attempt supersedes lower ones.
CREATE TABLE jobs (
    id TEXT COLLATE "C" PRIMARY KEY,
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs(id),
    stage TEXT COLLATE "C",
    key TEXT COLLATE "C" NOT NULL,
    attempt BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (run_id, key, attempt)
);

CREATE TABLE artifacts (
    id TEXT COLLATE "C" PRIMARY KEY,
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs(id),
    job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs(id),
    name TEXT COLLATE "C" NOT NULL,
    is_default BIGINT NOT NULL,
    kind TEXT COLLATE "C" NOT NULL DEFAULT 'files',
    state TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT,
    -- JSON of a typed artifact; NULL for kind `files`.
    meta TEXT,
    expires_at BIGINT
);
-- Deleted and expired artifacts free their name.
CREATE UNIQUE INDEX artifacts_default_per_job ON artifacts (job_id)
    WHERE is_default = 1 AND state NOT IN ('deleted', 'expired');
CREATE UNIQUE INDEX artifacts_name_per_job ON artifacts (run_id, name, job_id)
    WHERE is_default = 0 AND state NOT IN ('deleted', 'expired');
CREATE INDEX artifacts_run ON artifacts (run_id, name);
CREATE INDEX artifacts_job ON artifacts (job_id);
CREATE INDEX artifacts_expiry ON artifacts (state, expires_at);

-- One `artifact upload` call: its files become visible together.
CREATE TABLE uploads (
    id TEXT COLLATE "C" PRIMARY KEY,
    artifact_id TEXT COLLATE "C" NOT NULL REFERENCES artifacts(id),
    step TEXT COLLATE "C",
    state TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX uploads_artifact ON uploads (artifact_id);
CREATE INDEX uploads_stale ON uploads (state, created_at);

CREATE TABLE files (
    id TEXT COLLATE "C" PRIMARY KEY,
    artifact_id TEXT COLLATE "C" NOT NULL REFERENCES artifacts(id),
    upload_id TEXT COLLATE "C" NOT NULL REFERENCES uploads(id),
    path TEXT COLLATE "C" NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT COLLATE "C" NOT NULL,
    mode BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    source_path TEXT,
    glob TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (artifact_id, path)
);
CREATE INDEX files_upload ON files (upload_id);
CREATE INDEX files_sha256 ON files (sha256);

-- Content known to be durably stored in the content store.
CREATE TABLE blobs (
    sha256 TEXT COLLATE "C" PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX blobs_created ON blobs (created_at);

-- Promoted, immutable copies of artifacts, files copied by reference.
CREATE TABLE packages (
    id TEXT COLLATE "C" PRIMARY KEY,
    repository TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    version TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    meta TEXT,
    -- JSON: where it came from (pipeline, run, stage, job, attempt, artifact).
    origin TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Insertion order, for versions promoted in the same millisecond.
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    UNIQUE (repository, name, version)
);
CREATE INDEX packages_latest ON packages (repository, name, created_at);

CREATE TABLE package_files (
    package_id TEXT COLLATE "C" NOT NULL REFERENCES packages(id),
    path TEXT COLLATE "C" NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT COLLATE "C" NOT NULL,
    mode BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    PRIMARY KEY (package_id, path)
);
CREATE INDEX package_files_sha256 ON package_files (sha256);
