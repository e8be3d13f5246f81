-- SQLite migration 0011: what background work last reported.
CREATE TABLE background_status (
    name TEXT COLLATE "C" PRIMARY KEY,
    status TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
