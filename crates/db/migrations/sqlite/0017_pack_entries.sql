-- Where packed blobs are (satchel_store::PackCatalog), so that a replica
-- finds a pack another wrote with one lookup instead of listing every pack
-- of the bucket. Written only where replicas share the database; one row
-- per blob, the newest pack that holds it. Bookkeeping of one store, not
-- data: admin migrate does not copy it.
CREATE TABLE pack_entries (
    sha256 TEXT PRIMARY KEY,
    pack TEXT NOT NULL,
    pack_size INTEGER NOT NULL
);
CREATE INDEX pack_entries_pack ON pack_entries (pack);
