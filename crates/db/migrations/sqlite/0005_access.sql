-- Access control: tokens, artifact-read rules and the audit log. A
-- pipeline's key is unique on the server (moving one between clusters
-- keeps its key). Existing pipelines already live in the default
-- organization's default cluster, which the rules create when first needed.
CREATE UNIQUE INDEX pipelines_key_unique ON pipelines (key);

-- `hash`: hex SHA-256 of the secret; the secret itself is never stored.
-- `scopes`: comma-separated, sorted. `pipeline` is a key (the pipeline may
-- not exist yet: the first upload creates it in the token's cluster).
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    cluster_id TEXT NOT NULL REFERENCES clusters(id),
    pipeline TEXT,
    run INTEGER,
    job TEXT,
    attempt INTEGER,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
);

-- One end of a rule is a pipeline key or a cluster; exactly one of each
-- pair is set.
CREATE TABLE access_rules (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    source_pipeline TEXT,
    source_cluster_id TEXT REFERENCES clusters(id),
    target_pipeline TEXT,
    target_cluster_id TEXT REFERENCES clusters(id),
    condition TEXT,
    created_at INTEGER NOT NULL
);

-- Every API request. `id` is time-ordered (the cursor). Kept for its own
-- period, never touched by artifact retention.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at INTEGER NOT NULL,
    token_id TEXT,
    token_name TEXT,
    org TEXT,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT,
    client TEXT,
    user_agent TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_token ON audit_log (token_id, id);
