-- SQLite migration 0018: the files of a run's GitHub Actions artifacts.
CREATE INDEX files_run_gha ON files (run_id, artifact_id) WHERE glob IN ('gha-zip', 'gha-raw');
