-- SQLite migration 0017: where packed blobs are, for replicas sharing a
-- bucket (see the SQLite file).
CREATE TABLE pack_entries (
    sha256 TEXT COLLATE "C" NOT NULL,
    pack TEXT COLLATE "C" NOT NULL,
    pack_size BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (sha256, pack)
);
CREATE INDEX pack_entries_pack ON pack_entries (pack);
