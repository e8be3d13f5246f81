-- SQLite migration 0015: whether a later attempt of the job exists, kept on
-- the job's row by the rule that creates attempts. A BOOLEAN, unlike the
-- 0/1 integers of 0001, so that `NOT j.superseded` reads the same on both.
ALTER TABLE jobs ADD COLUMN superseded BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE jobs SET superseded = TRUE
 WHERE EXISTS (SELECT 1 FROM jobs j2 WHERE j2.run_id = jobs.run_id AND j2.key = jobs.key
                                        AND j2.attempt > jobs.attempt);
