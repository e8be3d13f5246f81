-- Every digest a scoped token's upload was told is missing is owed; those
-- the server already held for other clusters must moreover be sent whole
-- (`whole` = 1), never assembled from stored chunks.
ALTER TABLE upload_owed ADD COLUMN whole INTEGER NOT NULL DEFAULT 1;
