-- Secrets every replica of one database must share, such as the key that
-- signs GitHub Actions runtime tokens and signed URLs. The first replica
-- to start writes one; the others read it.
CREATE TABLE server_secrets (
    name TEXT COLLATE "C" PRIMARY KEY,
    value TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL
);
