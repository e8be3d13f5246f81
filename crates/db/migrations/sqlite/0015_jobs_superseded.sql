-- Whether a later attempt of the job exists, kept on the job's row by the
-- one rule that creates attempts (issue 14), instead of a subquery over
-- the run's jobs for every file and artifact row a list reads.
ALTER TABLE jobs ADD COLUMN superseded INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET superseded = 1
 WHERE EXISTS (SELECT 1 FROM jobs j2 WHERE j2.run_id = jobs.run_id AND j2.key = jobs.key
                                        AND j2.attempt > jobs.attempt);
