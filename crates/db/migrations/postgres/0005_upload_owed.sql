-- Content an upload of a scoped token must send itself before it can
-- finish (SQLite migration 0007).
CREATE TABLE upload_owed (
    upload_id TEXT COLLATE "C" NOT NULL REFERENCES uploads(id),
    sha256 TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (upload_id, sha256)
);
