-- An artifact's file count and size are kept on its row, added to as each
-- of its uploads finishes (issue 14), instead of counted over its files on
-- every listing: a page of 100 artifacts of a 100,000-file run read every
-- one of their files. A finished file is never removed from its artifact.
ALTER TABLE artifacts ADD COLUMN file_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE artifacts ADD COLUMN total_size INTEGER NOT NULL DEFAULT 0;
UPDATE artifacts SET
    file_count = (SELECT COUNT(*) FROM files f JOIN uploads u ON u.id = f.upload_id
                   WHERE f.artifact_id = artifacts.id AND u.state = 'finished'),
    total_size = (SELECT COALESCE(SUM(f.size), 0) FROM files f JOIN uploads u ON u.id = f.upload_id
                   WHERE f.artifact_id = artifacts.id AND u.state = 'finished');
