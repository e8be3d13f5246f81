-- The jobs of a run that did not pass (a JSON list of job keys), as the
-- local runner records them, so that running part of the run again knows
-- whether the jobs it reuses had passed (PostgreSQL migration 0020).
ALTER TABLE runs ADD COLUMN failed_jobs TEXT;
