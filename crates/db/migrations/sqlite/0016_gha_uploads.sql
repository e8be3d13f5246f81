-- GitHub Actions artifact uploads between CreateArtifact and
-- FinalizeArtifact, in the database so that any replica takes any request
-- of one upload. Each block is a blob of the content store; the committed
-- blob (sha256, size) is the blocks in list order. Their rows reference
-- those blobs, so GC keeps them until the upload is finalized, replaced or
-- reaped (touched_at: milliseconds since the epoch). committed_list is the
-- SHA-256 (hex) of the committed block list, so a retried commit of the
-- same list is recognised after its blocks are gone.
CREATE TABLE gha_uploads (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    run INTEGER NOT NULL,
    job TEXT NOT NULL,
    name TEXT NOT NULL,
    file_name TEXT NOT NULL,
    mime TEXT NOT NULL,
    touched_at INTEGER NOT NULL,
    committed_list TEXT,
    sha256 TEXT,
    size INTEGER,
    UNIQUE (pipeline, run, job, name)
);
CREATE INDEX gha_uploads_touched ON gha_uploads (touched_at);
CREATE INDEX gha_uploads_sha256 ON gha_uploads (sha256);
-- block: the hex of the block id's decoded bytes.
CREATE TABLE gha_blocks (
    upload_id TEXT NOT NULL REFERENCES gha_uploads (id) ON DELETE CASCADE,
    block TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (upload_id, block)
);
CREATE INDEX gha_blocks_sha256 ON gha_blocks (sha256);
