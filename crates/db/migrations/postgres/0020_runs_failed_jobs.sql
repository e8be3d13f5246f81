-- SQLite migration 0021: the jobs of a run that did not pass, as JSON.
ALTER TABLE runs ADD COLUMN failed_jobs TEXT;
