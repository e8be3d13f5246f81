-- Pipeline semantics: run outcomes, pinned sources, typed artifacts, and
-- promoted packages.

-- `sources`: JSON object, source name -> {pipeline, selector, run}, pinned
-- when the run starts so every job of the run sees the same upstream run.
ALTER TABLE runs ADD COLUMN sources TEXT;
ALTER TABLE runs ADD COLUMN triggered_from TEXT REFERENCES runs(id);
ALTER TABLE runs ADD COLUMN finished_at INTEGER;
CREATE INDEX runs_state ON runs (pipeline_id, state, number);

-- `meta`: JSON of a typed artifact (kind `image`: {image, tag, digest,
-- reference}; kind `link`: {url, sha256, md5}); NULL for `files`.
ALTER TABLE artifacts ADD COLUMN meta TEXT;

-- Promoted, immutable copies of artifacts. Files are copied by reference
-- (path -> sha256); content is shared with the artifact and never copied.
CREATE TABLE packages (
    id TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    meta TEXT,
    -- JSON: where it came from (pipeline, run, stage, job, attempt, artifact).
    origin TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (repository, name, version)
);
CREATE INDEX packages_latest ON packages (repository, name, created_at);

CREATE TABLE package_files (
    package_id TEXT NOT NULL REFERENCES packages(id),
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    mode INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    PRIMARY KEY (package_id, path)
);
CREATE INDEX package_files_sha256 ON package_files (sha256);
