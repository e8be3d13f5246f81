-- What one job's GitHub Actions protocol calls did to, or saw of, an
-- artifact by name (PostgreSQL migration 0021). A 'delete' row is a
-- DeleteArtifact: the artifact is hidden from that job at once and stays
-- live for every other reader until the same job finalizes an artifact of
-- that name (both change in one transaction: `overwrite: true` is a swap)
-- or, with no upload of that name in progress, until the wait runs out;
-- done_at is when it was carried out. A 'read' row is the artifact the
-- job's last filtered ListArtifacts returned for that name, so that its
-- GetSignedArtifactURL (by name only) serves the same one although a swap
-- came between. Either row keeps its artifact's content from GC until it
-- is dropped (times: milliseconds since the epoch).
CREATE TABLE gha_views (
    pipeline TEXT NOT NULL,
    run INTEGER NOT NULL,
    job TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('delete', 'read')),
    artifact_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    done_at INTEGER,
    PRIMARY KEY (pipeline, run, job, name, kind, artifact_id)
);
CREATE INDEX gha_views_artifact ON gha_views (artifact_id);
CREATE INDEX gha_views_at ON gha_views (at);
