-- SQLite migration 0016: GitHub Actions uploads in progress, shared by
-- every replica (see the SQLite file for what the columns mean).
CREATE TABLE gha_uploads (
    id TEXT COLLATE "C" PRIMARY KEY,
    pipeline TEXT COLLATE "C" NOT NULL,
    run BIGINT NOT NULL,
    job TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    file_name TEXT NOT NULL,
    mime TEXT NOT NULL,
    touched_at BIGINT NOT NULL,
    committed_list TEXT COLLATE "C",
    sha256 TEXT COLLATE "C",
    size BIGINT,
    UNIQUE (pipeline, run, job, name)
);
CREATE INDEX gha_uploads_touched ON gha_uploads (touched_at);
CREATE INDEX gha_uploads_sha256 ON gha_uploads (sha256);
CREATE TABLE gha_blocks (
    upload_id TEXT COLLATE "C" NOT NULL REFERENCES gha_uploads (id) ON DELETE CASCADE,
    block TEXT COLLATE "C" NOT NULL,
    sha256 TEXT COLLATE "C" NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (upload_id, block)
);
CREATE INDEX gha_blocks_sha256 ON gha_blocks (sha256);
