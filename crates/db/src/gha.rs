//! GitHub Actions artifact uploads in progress (between CreateArtifact and
//! FinalizeArtifact), kept in the database so that every replica can take
//! every request of one upload.
//!
//! An upload is a row keyed by a random id (in its signed URL) and unique
//! per job and artifact name: a new CreateArtifact replaces the old upload
//! and its blocks. Each block the client sends is stored as a blob of the
//! content store and recorded here by block id; committing the block list
//! records the assembled blob on the upload and drops the blocks. These
//! rows reference their blobs as files do (see `rules::UNREFERENCED`), so
//! GC keeps them exactly as long as the upload lives: until it is
//! finalized, replaced, or reaped after going idle. Times are the
//! database's clock, so replicas' clocks need not agree.

use std::collections::HashMap;

use satchel_model::api::FileInfo;

use crate::rules::{file_row, record_blobs, rows, BATCH_ROWS, FILE_SELECT};
use crate::sql::{args, marks, Lock, Sql, Value};
use crate::DbError;

/// Which upload: one per job and artifact name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GhaKey {
    /// Pipeline key.
    pub pipeline: String,
    /// Run number.
    pub run: u64,
    /// Job.
    pub job: String,
    /// Artifact name.
    pub name: String,
}

/// An upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GhaUpload {
    /// Random id, in the signed upload URL.
    pub id: String,
    /// Whose artifact.
    pub key: GhaKey,
    /// The file it becomes: `NAME.zip`, or the raw file's name.
    pub file_name: String,
    /// Its content type.
    pub mime: String,
    /// The committed blob, once a block list (or a whole blob) is.
    pub committed: Option<GhaCommitted>,
}

/// A committed block list: what FinalizeArtifact will record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GhaCommitted {
    /// SHA-256 (hex) of the committed list of block ids, so a retry of the
    /// same commit is recognised once its blocks are gone.
    pub list: String,
    /// The blob (hex SHA-256).
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// One stored block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GhaBlock {
    /// Hex of the block id's decoded bytes.
    pub block: String,
    /// Its blob (hex SHA-256).
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

const UPLOAD_SELECT: &str = "SELECT id, pipeline, run, job, name, file_name, mime, committed_list, sha256, size FROM gha_uploads";

fn upload_row(mut r: crate::sql::Row) -> Result<GhaUpload, DbError> {
    let id = r.text(0)?;
    let key = GhaKey {
        pipeline: r.text(1)?,
        run: r.uint(2)?,
        job: r.text(3)?,
        name: r.text(4)?,
    };
    let (file_name, mime) = (r.text(5)?, r.text(6)?);
    let committed = match (r.opt_text(7)?, r.opt_text(8)?, r.opt_int(9)?) {
        (Some(list), Some(sha256), Some(size)) => Some(GhaCommitted {
            list,
            sha256,
            size: u64::try_from(size).map_err(|_| DbError::Backend("negative size".into()))?,
        }),
        _ => None,
    };
    Ok(GhaUpload {
        id,
        key,
        file_name,
        mime,
        committed,
    })
}

/// Starts upload `u`, replacing (with its blocks) any upload of the same
/// job and name; the last of two racing starts wins.
pub(crate) fn start(c: &mut dyn Sql, u: &GhaUpload) -> Result<(), DbError> {
    let now = c.now_ms()?;
    let k = &u.key;
    // A concurrent start may insert between the delete and the insert:
    // then it is deleted in turn (its blocks cascade).
    for _ in 0..8 {
        c.execute(
            "DELETE FROM gha_uploads WHERE pipeline = ?1 AND run = ?2 AND job = ?3 AND name = ?4",
            args![&k.pipeline, k.run as i64, &k.job, &k.name],
        )?;
        let n = c.execute(
            "INSERT INTO gha_uploads (id, pipeline, run, job, name, file_name, mime, touched_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (pipeline, run, job, name) DO NOTHING",
            args![
                &u.id,
                &k.pipeline,
                k.run as i64,
                &k.job,
                &k.name,
                &u.file_name,
                &u.mime,
                now
            ],
        )?;
        if n == 1 {
            return Ok(());
        }
    }
    Err(DbError::Conflict(format!(
        "artifact {:?} is being created by another request right now; try again",
        k.name
    )))
}

/// Upload `id`, marked used now, with the bytes its blocks other than
/// `except_block` hold; `None` if it was finalized, replaced or reaped.
pub(crate) fn touch(
    c: &mut dyn Sql,
    id: &str,
    except_block: Option<&str>,
) -> Result<Option<(GhaUpload, u64)>, DbError> {
    let now = c.now_ms()?;
    if c.execute(
        "UPDATE gha_uploads SET touched_at = ?1 WHERE id = ?2",
        args![now, id],
    )? == 0
    {
        return Ok(None);
    }
    let u = upload_row(c.query_one(&format!("{UPLOAD_SELECT} WHERE id = ?1"), args![id])?)?;
    let held = c
        .query_one(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM gha_blocks
             WHERE upload_id = ?1 AND block != ?2",
            args![id, except_block.unwrap_or("")],
        )?
        .uint(0)?;
    Ok(Some((u, held)))
}

/// The upload of `key`, marked used now.
pub(crate) fn find(c: &mut dyn Sql, key: &GhaKey) -> Result<Option<GhaUpload>, DbError> {
    let now = c.now_ms()?;
    let run = key.run as i64;
    c.execute(
        "UPDATE gha_uploads SET touched_at = ?5
         WHERE pipeline = ?1 AND run = ?2 AND job = ?3 AND name = ?4",
        args![&key.pipeline, run, &key.job, &key.name, now],
    )?;
    c.query_opt(
        &format!("{UPLOAD_SELECT} WHERE pipeline = ?1 AND run = ?2 AND job = ?3 AND name = ?4"),
        args![&key.pipeline, run, &key.job, &key.name],
    )?
    .map(upload_row)
    .transpose()
}

/// Records block `b` of upload `id` (and its blob as stored: call only
/// once the content store holds it durably), replacing a block of the same
/// id, unless the upload's blocks would then hold more than `cap` bytes:
/// `false`, and nothing written. `NotFound` if the upload is gone.
pub(crate) fn put_block(
    c: &mut dyn Sql,
    id: &str,
    b: &GhaBlock,
    cap: u64,
) -> Result<bool, DbError> {
    // Concurrent blocks of one upload queue here, so the cap holds.
    c.lock(Lock::GhaUpload, id)?;
    let now = c.now_ms()?;
    if c.execute(
        "UPDATE gha_uploads SET touched_at = ?1 WHERE id = ?2",
        args![now, id],
    )? == 0
    {
        return Err(gone());
    }
    let others = c
        .query_one(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM gha_blocks
             WHERE upload_id = ?1 AND block != ?2",
            args![id, &b.block],
        )?
        .uint(0)?;
    if others.checked_add(b.size).is_none_or(|t| t > cap) {
        return Ok(false);
    }
    record_blobs(c, &[(b.sha256.clone(), b.size)])?;
    c.execute(
        "INSERT INTO gha_blocks (upload_id, block, sha256, size) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (upload_id, block) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size",
        args![id, &b.block, &b.sha256, b.size as i64],
    )?;
    Ok(true)
}

fn gone() -> DbError {
    DbError::NotFound("no upload in progress for this URL (finalized, replaced or reaped)".into())
}

/// The blocks of upload `id` named by `blocks`, in that order (`None`
/// where there is no such block).
pub(crate) fn blocks(
    c: &mut dyn Sql,
    id: &str,
    blocks: &[String],
) -> Result<Vec<Option<GhaBlock>>, DbError> {
    let mut distinct: Vec<&str> = blocks.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut found: HashMap<String, GhaBlock> = HashMap::new();
    for chunk in distinct.chunks(BATCH_ROWS) {
        let mut a = vec![Value::from(id)];
        a.extend(chunk.iter().map(|b| Value::from(*b)));
        for mut r in c.query(
            &format!(
                "SELECT block, sha256, size FROM gha_blocks WHERE upload_id = ?1 AND block IN ({})",
                marks(chunk.len(), 2)
            ),
            &a,
        )? {
            let b = GhaBlock {
                block: r.text(0)?,
                sha256: r.text(1)?,
                size: r.uint(2)?,
            };
            found.insert(b.block.clone(), b);
        }
    }
    Ok(blocks.iter().map(|b| found.get(b).cloned()).collect())
}

/// Records the committed blob of upload `id` (and the blob as stored) and
/// drops its blocks; `false` if the upload is gone.
pub(crate) fn commit(c: &mut dyn Sql, id: &str, done: &GhaCommitted) -> Result<bool, DbError> {
    c.lock(Lock::GhaUpload, id)?;
    let now = c.now_ms()?;
    if c.execute(
        "UPDATE gha_uploads SET committed_list = ?1, sha256 = ?2, size = ?3, touched_at = ?4
         WHERE id = ?5",
        args![&done.list, &done.sha256, done.size as i64, now, id],
    )? == 0
    {
        return Ok(false);
    }
    record_blobs(c, &[(done.sha256.clone(), done.size)])?;
    c.execute("DELETE FROM gha_blocks WHERE upload_id = ?1", args![id])?;
    Ok(true)
}

/// Ends upload `id` (finalized): its rows go, and with them the hold on
/// its blobs.
pub(crate) fn end(c: &mut dyn Sql, id: &str) -> Result<(), DbError> {
    c.execute("DELETE FROM gha_uploads WHERE id = ?1", args![id])?;
    Ok(())
}

/// Drops the uploads not used for `idle_ms`; how many.
pub(crate) fn reap(c: &mut dyn Sql, idle_ms: i64) -> Result<u64, DbError> {
    let cutoff = c.now_ms()?.saturating_sub(idle_ms);
    c.execute(
        "DELETE FROM gha_uploads WHERE touched_at < ?1",
        args![cutoff],
    )
}

/// How many uploads are in progress.
pub(crate) fn count(c: &mut dyn Sql) -> Result<u64, DbError> {
    c.query_one("SELECT COUNT(*) FROM gha_uploads", args![])?
        .uint(0)
}

/// The files of run `run_id`'s finished protocol artifacts (one each, its
/// `glob` `gha-zip` or `gha-raw`) of current job attempts, oldest artifact
/// first: through their own index, not every file of the run.
pub(crate) fn files(c: &mut dyn Sql, run_id: &str) -> Result<Vec<FileInfo>, DbError> {
    rows(
        c,
        &format!(
            "{FILE_SELECT} AND f.run_id = ?1 AND f.glob IN ('gha-zip', 'gha-raw')
             AND NOT j.superseded ORDER BY f.artifact_id"
        ),
        args![run_id],
        file_row,
    )
}
