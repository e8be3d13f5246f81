-- Where packed blobs are (satchel_store::PackCatalog), so that a replica
-- finds a pack another wrote with one lookup instead of listing every pack
-- of the bucket. Written only where replicas share the database; one row
-- per blob and pack holding it (a blob sent again may be in several),
-- recorded_at (milliseconds) saying which is newest. Bookkeeping of one
-- store, not data: admin migrate does not copy it.
CREATE TABLE pack_entries (
    sha256 TEXT NOT NULL,
    pack TEXT NOT NULL,
    pack_size INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (sha256, pack)
);
CREATE INDEX pack_entries_pack ON pack_entries (pack);
