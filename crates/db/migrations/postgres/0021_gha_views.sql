-- What one job's GitHub Actions protocol calls did to, or saw of, an
-- artifact by name (SQLite migration 0022 says what the columns mean).
CREATE TABLE gha_views (
    pipeline TEXT COLLATE "C" NOT NULL,
    run BIGINT NOT NULL,
    job TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL CHECK (kind IN ('delete', 'read')),
    artifact_id TEXT COLLATE "C" NOT NULL,
    at BIGINT NOT NULL,
    done_at BIGINT,
    PRIMARY KEY (pipeline, run, job, name, kind, artifact_id)
);
CREATE INDEX gha_views_artifact ON gha_views (artifact_id);
CREATE INDEX gha_views_at ON gha_views (at);
