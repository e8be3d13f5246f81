-- The files of GitHub Actions protocol artifacts of a run (one each), which
-- every call of the protocol lists: found through this small index instead
-- of every file of the run.
CREATE INDEX files_run_gha ON files (run_id, artifact_id) WHERE glob IN ('gha-zip', 'gha-raw');
