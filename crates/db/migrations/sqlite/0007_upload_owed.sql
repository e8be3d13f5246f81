-- Content an upload of a scoped token must send itself before it can
-- finish: what it was told is missing, including content the server holds
-- for other organizations only (naming a digest is not owning it).
CREATE TABLE upload_owed (
    upload_id TEXT NOT NULL REFERENCES uploads(id),
    sha256 TEXT NOT NULL,
    PRIMARY KEY (upload_id, sha256)
);
