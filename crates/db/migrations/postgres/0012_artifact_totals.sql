-- SQLite migration 0014: an artifact's file count and size on its row,
-- added to as each of its uploads finishes.
ALTER TABLE artifacts ADD COLUMN file_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE artifacts ADD COLUMN total_size BIGINT NOT NULL DEFAULT 0;
UPDATE artifacts a SET file_count = t.n, total_size = t.size
  FROM (SELECT f.artifact_id, COUNT(*) AS n, SUM(f.size) AS size
          FROM files f JOIN uploads u ON u.id = f.upload_id
         WHERE u.state = 'finished' GROUP BY f.artifact_id) t
 WHERE t.artifact_id = a.id;
