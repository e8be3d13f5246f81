-- Blobs being stored right now, by any replica: garbage collection on
-- every replica skips them (see satchel-server's gate). `writer` is one
-- write's id; rows of a replica that died are ignored, and removed, after
-- a day.
CREATE TABLE blob_writes (
    writer TEXT COLLATE "C" NOT NULL,
    sha256 TEXT COLLATE "C" NOT NULL,
    started_at BIGINT NOT NULL,
    PRIMARY KEY (writer, sha256)
);
CREATE INDEX blob_writes_started ON blob_writes (started_at);
