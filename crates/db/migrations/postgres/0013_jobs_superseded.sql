-- SQLite migration 0015: whether a later attempt of the job exists, kept on
-- the job's row by the rule that creates attempts.
ALTER TABLE jobs ADD COLUMN superseded BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE jobs SET superseded = TRUE
 WHERE EXISTS (SELECT 1 FROM jobs j2 WHERE j2.run_id = jobs.run_id AND j2.key = jobs.key
                                        AND j2.attempt > jobs.attempt);
