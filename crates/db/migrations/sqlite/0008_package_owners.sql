-- A package repository belongs to one organization: the first to promote
-- into it (for repositories older than this table, the organization of
-- its oldest package, recorded at the next promotion).
CREATE TABLE package_repositories (
    repository TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    created_at INTEGER NOT NULL
);
