-- Search for a file by name anywhere in a run (`**/index.html`, issue 14)
-- reads only the files of that name instead of walking the whole run:
-- `file_name` is the path's last segment, kept by the database itself, and
-- (run_id, file_name, path, id) gives them in search's (path, id) order.
-- rtrim strips the trailing characters that are not '/', so its length is
-- the position of the last '/' (0 when there is none).
ALTER TABLE files ADD COLUMN file_name TEXT
    GENERATED ALWAYS AS (substr(path, length(rtrim(path, replace(path, '/', ''))) + 1)) VIRTUAL;
CREATE INDEX files_run_name ON files (run_id, file_name, path, id);
