-- What background work last reported, for every replica to show (key
-- rotation: its state and counts, as JSON). `updated_at` (milliseconds
-- since the epoch, the database's clock) tells a running job that stopped
-- reporting from one that is still at work.
CREATE TABLE background_status (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
