-- SQLite migration 0009: owed digests that must be sent whole.
ALTER TABLE upload_owed ADD COLUMN whole BIGINT NOT NULL DEFAULT 1;
