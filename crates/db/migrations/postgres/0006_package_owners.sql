-- A package repository belongs to one organization (SQLite migration 0008).
CREATE TABLE package_repositories (
    repository TEXT COLLATE "C" PRIMARY KEY,
    organization_id TEXT COLLATE "C" NOT NULL REFERENCES organizations(id),
    created_at BIGINT NOT NULL
);
