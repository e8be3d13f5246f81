-- Retention: when an artifact expires (milliseconds since the epoch; NULL
-- for never). Expired artifacts move to state `expired`; garbage collection
-- then frees content nothing live references.
ALTER TABLE artifacts ADD COLUMN expires_at INTEGER;
CREATE INDEX artifacts_expiry ON artifacts (state, expires_at);
CREATE INDEX blobs_created ON blobs (created_at);
