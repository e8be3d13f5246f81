-- The foreign keys of `files` are checked by a trigger per inserted row,
-- each a lookup and a row lock of the parent: a third of the cost of
-- recording a 10,000-file manifest (about 140 ms on the 2-core test
-- machine). They guard nothing the rules do not already:
-- - `files.run_id` is a copy of the artifact's run (kept for the run-wide
--   search indexes), and the artifact references its run;
-- - files are inserted only by the rules (crates/db/src/rules.rs) in the
--   transaction that created or locked their upload and artifact, and by
--   `satchel admin migrate`, which copies parents first;
-- - no upload, artifact or run row is ever deleted.
-- SQLite keeps its constraints (dropping one there means rebuilding the
-- table, and SQLite's commit is well inside its goal).
ALTER TABLE files DROP CONSTRAINT files_run_id_fkey;
ALTER TABLE files DROP CONSTRAINT files_artifact_id_fkey;
ALTER TABLE files DROP CONSTRAINT files_upload_id_fkey;
