-- Access control (PostgreSQL dialect of SQLite migration 0005): tokens,
-- artifact-read rules and the audit log. A pipeline's key is unique on the
-- server (moving one between clusters keeps its key). Existing pipelines
-- live in the default organization's default cluster.
CREATE UNIQUE INDEX pipelines_key_unique ON pipelines (key);

-- `hash`: hex SHA-256 of the secret; the secret itself is never stored.
-- `scopes`: comma-separated, sorted. `pipeline` is a key (the pipeline may
-- not exist yet: the first upload creates it in the token's cluster).
CREATE TABLE tokens (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    hash TEXT COLLATE "C" NOT NULL UNIQUE,
    scopes TEXT COLLATE "C" NOT NULL,
    cluster_id TEXT COLLATE "C" NOT NULL REFERENCES clusters(id),
    pipeline TEXT COLLATE "C",
    run BIGINT,
    job TEXT COLLATE "C",
    attempt BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

-- One end of a rule is a pipeline key or a cluster; exactly one of each
-- pair is set.
CREATE TABLE access_rules (
    id TEXT COLLATE "C" PRIMARY KEY,
    kind TEXT COLLATE "C" NOT NULL,
    organization_id TEXT COLLATE "C" NOT NULL REFERENCES organizations(id),
    source_pipeline TEXT COLLATE "C",
    source_cluster_id TEXT COLLATE "C" REFERENCES clusters(id),
    target_pipeline TEXT COLLATE "C",
    target_cluster_id TEXT COLLATE "C" REFERENCES clusters(id),
    condition TEXT COLLATE "C",
    created_at BIGINT NOT NULL
);

-- Every API request. `id` is time-ordered (the cursor). Kept for its own
-- period, never touched by artifact retention.
CREATE TABLE audit_log (
    id TEXT COLLATE "C" PRIMARY KEY,
    at BIGINT NOT NULL,
    token_id TEXT COLLATE "C",
    token_name TEXT COLLATE "C",
    org TEXT COLLATE "C",
    action TEXT COLLATE "C" NOT NULL,
    resource TEXT COLLATE "C" NOT NULL,
    allowed BIGINT NOT NULL,
    status BIGINT NOT NULL,
    reason TEXT COLLATE "C",
    client TEXT COLLATE "C",
    user_agent TEXT COLLATE "C"
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_token ON audit_log (token_id, id);
