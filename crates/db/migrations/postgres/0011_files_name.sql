-- SQLite migration 0013: the path's last segment, kept by the database, so
-- a search by file name anywhere in a run reads only the files of that
-- name, in search's (path, id) order.
ALTER TABLE files ADD COLUMN file_name TEXT COLLATE "C"
    GENERATED ALWAYS AS (regexp_replace(path, '^.*/', '')) STORED;
CREATE INDEX files_run_name ON files (run_id, file_name, path, id);
