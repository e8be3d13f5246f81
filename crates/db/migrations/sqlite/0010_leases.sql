-- Background work (GC, retention, stale-upload sweeps) that one replica at
-- a time does: the holder renews its lease each pass; when it stops (the
-- replica died), another takes the lease once it expired. Times are
-- milliseconds since the epoch.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
