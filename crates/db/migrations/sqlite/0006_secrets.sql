-- Secrets every replica of one database must share, such as the key that
-- signs GitHub Actions runtime tokens and signed URLs (an embedded server
-- keeps its own in the data directory instead). The first replica to
-- start writes one; the others read it.
CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
