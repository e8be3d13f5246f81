-- SQLite migration 0019: package versions in the order pages list them.
CREATE INDEX packages_repo_order ON packages (repository, created_at, seq);
CREATE INDEX packages_name_order ON packages (repository, name, created_at, seq);
