-- Package versions are listed newest first, a page at a time, per
-- repository and optionally per package: ORDER BY created_at DESC, seq DESC.
-- Indexes in that order let a page read only its rows instead of sorting
-- every version of the repository (PostgreSQL migration 0018).
CREATE INDEX packages_repo_order ON packages (repository, created_at, seq);
CREATE INDEX packages_name_order ON packages (repository, name, created_at, seq);
