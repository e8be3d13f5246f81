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

use satchel_model::api::CreateUpload;

use crate::rules::{
    create_upload, delete_artifact, file_row, finish_upload, record_blobs, rows,
    ANY_ARTIFACT_FILE_SELECT, BATCH_ROWS, FILE_SELECT,
};
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

/// What a job's protocol call did to, or saw of, an artifact by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GhaViewKind {
    /// A DeleteArtifact: the artifact is hidden from that job at once, and
    /// deleted when the job finalizes another of that name (a swap) or, with
    /// no upload of that name in progress, when the wait runs out.
    Delete,
    /// The artifact the job's last filtered ListArtifacts returned for that
    /// name, which its GetSignedArtifactURL serves.
    Read,
}

impl GhaViewKind {
    fn as_str(self) -> &'static str {
        match self {
            GhaViewKind::Delete => "delete",
            GhaViewKind::Read => "read",
        }
    }
}

/// A recorded [`GhaViewKind`], with its age by the database's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GhaView {
    /// The job whose call it was.
    pub job: String,
    /// Artifact name.
    pub name: String,
    /// What the call did.
    pub kind: GhaViewKind,
    /// The artifact.
    pub artifact_id: String,
    /// Milliseconds since it was recorded.
    pub age_ms: i64,
    /// Milliseconds since a delete was carried out; `None` while pending
    /// (and for reads).
    pub done_ms: Option<i64>,
    /// A pending delete whose job has an upload of the name in progress
    /// (it waits for that upload, however long).
    pub waiting: bool,
}

/// A run's protocol artifacts and views, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct GhaSnapshot {
    /// Files of the finished protocol artifacts, oldest first.
    pub live: Vec<FileInfo>,
    /// Files of artifacts a view's delete (carried out) still holds.
    pub replaced: Vec<FileInfo>,
    /// Every view of the run, oldest first.
    pub views: Vec<GhaView>,
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

/// Records that job `key.job`'s call did `kind` to artifact `artifact_id`
/// of name `key.name`: a read replaces the job's earlier read of that name;
/// a delete already recorded keeps its time.
pub(crate) fn record_view(
    c: &mut dyn Sql,
    key: &GhaKey,
    kind: GhaViewKind,
    artifact_id: &str,
) -> Result<(), DbError> {
    // Only a live artifact, or (for a read) one whose delete was carried
    // out moments ago and still holds it, under the artifact's lock: a
    // delete and a GC pass cannot come between the check and the insert.
    c.lock(Lock::Artifact, artifact_id)?;
    let state = c
        .query_opt(
            "SELECT state FROM artifacts WHERE id = ?1",
            args![artifact_id],
        )?
        .map(|mut r| r.text(0))
        .transpose()?;
    let held = kind == GhaViewKind::Read
        && state.as_deref() == Some("deleted")
        && c.query_opt(
            "SELECT 1 FROM gha_views WHERE artifact_id = ?1 AND kind = 'delete'
               AND done_at IS NOT NULL",
            args![artifact_id],
        )?
        .is_some();
    if state.as_deref() != Some("finished") && !held {
        return Err(DbError::NotFound(format!(
            "artifact {:?} was deleted meanwhile",
            key.name
        )));
    }
    let now = c.now_ms()?;
    let k = (&key.pipeline, key.run as i64, &key.job, &key.name);
    if kind == GhaViewKind::Read {
        c.execute(
            "DELETE FROM gha_views WHERE pipeline = ?1 AND run = ?2 AND job = ?3 AND name = ?4
               AND kind = 'read' AND artifact_id != ?5",
            args![k.0, k.1, k.2, k.3, artifact_id],
        )?;
    }
    c.execute(
        &format!(
            "INSERT INTO gha_views (pipeline, run, job, name, kind, artifact_id, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (pipeline, run, job, name, kind, artifact_id) DO {}",
            if kind == GhaViewKind::Read {
                "UPDATE SET at = excluded.at"
            } else {
                "NOTHING"
            }
        ),
        args![k.0, k.1, k.2, k.3, kind.as_str(), artifact_id, now],
    )?;
    Ok(())
}

/// Every view recorded in run `run` of `pipeline`.
pub(crate) fn views(c: &mut dyn Sql, pipeline: &str, run: u64) -> Result<Vec<GhaView>, DbError> {
    let now = c.now_ms()?;
    c.query(
        "SELECT v.job, v.name, v.kind, v.artifact_id, ?3 - v.at, ?3 - v.done_at,
                EXISTS (SELECT 1 FROM gha_uploads u WHERE u.pipeline = v.pipeline
                          AND u.run = v.run AND u.job = v.job AND u.name = v.name)
         FROM gha_views v WHERE v.pipeline = ?1 AND v.run = ?2 ORDER BY v.at",
        args![pipeline, run as i64, now],
    )?
    .into_iter()
    .map(|mut r| {
        Ok(GhaView {
            job: r.text(0)?,
            name: r.text(1)?,
            kind: if r.text(2)? == "delete" {
                GhaViewKind::Delete
            } else {
                GhaViewKind::Read
            },
            artifact_id: r.text(3)?,
            age_ms: r.int(4)?,
            done_ms: r.opt_int(5)?,
            waiting: r.boolean(6)?,
        })
    })
    .collect()
}

/// Deleted artifacts a view's delete still holds: only those the protocol
/// deleted itself (one deleted otherwise, by the REST API, say, is gone).
const HELD: &str = "a.state = 'deleted' AND EXISTS (SELECT 1 FROM gha_views v
    WHERE v.artifact_id = a.id AND v.kind = 'delete' AND v.done_at IS NOT NULL)";

/// Run `run` of `pipeline` (id `run_id`) as [`GhaSnapshot`].
pub(crate) fn snapshot(
    c: &mut dyn Sql,
    run_id: &str,
    pipeline: &str,
    run: u64,
) -> Result<GhaSnapshot, DbError> {
    let views = views(c, pipeline, run)?;
    let live = files(c, run_id)?;
    let replaced = if views.iter().any(|v| v.done_ms.is_some()) {
        rows(
            c,
            &format!(
                "{ANY_ARTIFACT_FILE_SELECT} AND {HELD} AND f.run_id = ?1
                 AND f.glob IN ('gha-zip', 'gha-raw') ORDER BY f.artifact_id"
            ),
            args![run_id],
            file_row,
        )?
    } else {
        Vec::new()
    };
    Ok(GhaSnapshot {
        live,
        replaced,
        views,
    })
}

/// Protocol file `id`: of a finished artifact, or of one a view's delete
/// still holds.
pub(crate) fn file(c: &mut dyn Sql, id: &str) -> Result<Option<FileInfo>, DbError> {
    Ok(rows(
        c,
        &format!(
            "{ANY_ARTIFACT_FILE_SELECT} AND f.id = ?1 AND f.glob IN ('gha-zip', 'gha-raw')
             AND (a.state = 'finished' OR ({HELD}))"
        ),
        args![id],
        file_row,
    )?
    .pop())
}

/// Deletes artifact `id` if it is live (not deleted or expired otherwise
/// meanwhile); whether it did.
fn delete_live(c: &mut dyn Sql, id: &str) -> Result<bool, DbError> {
    let live = c
        .query_opt("SELECT state FROM artifacts WHERE id = ?1", args![id])?
        .map(|mut r| r.text(0))
        .transpose()?
        .is_some_and(|s| s != "deleted" && s != "expired");
    if live {
        delete_artifact(c, id)?;
    }
    Ok(live)
}

/// Marks the delete view of `artifact` (by `k`'s job and name) carried
/// out if this delete carried it out; else (deleted otherwise) drops it,
/// so it holds nothing.
fn settle_one(
    c: &mut dyn Sql,
    k: (&str, i64, &str, &str),
    artifact: &str,
    deleted: bool,
    now: i64,
) -> Result<u64, DbError> {
    const ROW: &str = "pipeline = ?1 AND run = ?2 AND job = ?3 AND name = ?4
        AND kind = 'delete' AND artifact_id = ?5 AND done_at IS NULL";
    if deleted {
        c.execute(
            &format!("UPDATE gha_views SET done_at = ?6 WHERE {ROW}"),
            args![k.0, k.1, k.2, k.3, artifact, now],
        )
    } else {
        c.execute(
            &format!("DELETE FROM gha_views WHERE {ROW}"),
            args![k.0, k.1, k.2, k.3, artifact],
        )
    }
}

/// Publishes `req` (one protocol file whose content is stored) for job
/// `key.job`, and in the same transaction deletes the artifacts of that
/// name the job's pending deletes name: readers see the old artifact or
/// the new one, never neither.
pub(crate) fn publish(
    c: &mut dyn Sql,
    key: &GhaKey,
    req: &CreateUpload,
    quotas: &crate::Quotas,
) -> Result<crate::UploadFinished, DbError> {
    let k = (&key.pipeline, key.run as i64, &key.job, &key.name);
    let pending: Vec<String> = c
        .query(
            "SELECT artifact_id FROM gha_views WHERE pipeline = ?1 AND run = ?2 AND job = ?3
               AND name = ?4 AND kind = 'delete' AND done_at IS NULL ORDER BY artifact_id",
            args![k.0, k.1, k.2, k.3],
        )?
        .into_iter()
        .map(|mut r| r.text(0))
        .collect::<Result<_, _>>()?;
    let mut deleted = Vec::with_capacity(pending.len());
    for id in &pending {
        deleted.push(delete_live(c, id)?);
    }
    let plan = create_upload(c, req, quotas, None)?;
    let done = finish_upload(c, &plan.upload_id)?;
    let now = c.now_ms()?;
    for (id, was) in pending.iter().zip(deleted) {
        settle_one(c, (k.0, k.1, k.2, k.3), id, was, now)?;
    }
    Ok(done)
}

/// Carries out the pending deletes recorded more than `wait_ms` ago whose
/// job has no upload of that name in progress (in run `run` of pipeline
/// `pipeline` only, and of that name only, when given), then drops the views older than
/// `keep_ms` (reads by their time, deletes by when they were carried out).
/// Returns how many deletes it carried out.
pub(crate) fn settle_views(
    c: &mut dyn Sql,
    run: Option<(&str, u64, Option<&str>)>,
    wait_ms: i64,
    keep_ms: i64,
) -> Result<u64, DbError> {
    let now = c.now_ms()?;
    // Pipeline keys and artifact names are never empty: '' means every
    // run, every name.
    let (pipeline, number, name) = run.map_or((String::new(), 0, String::new()), |(p, n, a)| {
        (p.to_string(), n as i64, a.unwrap_or("").to_string())
    });
    let due: Vec<(String, i64, String, String, String)> = c
        .query(
            "SELECT v.pipeline, v.run, v.job, v.name, v.artifact_id FROM gha_views v
             WHERE v.kind = 'delete' AND v.done_at IS NULL AND v.at < ?1
               AND (?2 = '' OR (v.pipeline = ?2 AND v.run = ?3))
               AND (?4 = '' OR v.name = ?4)
               AND NOT EXISTS (SELECT 1 FROM gha_uploads u WHERE u.pipeline = v.pipeline
                                 AND u.run = v.run AND u.job = v.job AND u.name = v.name)
             ORDER BY v.pipeline, v.run, v.artifact_id",
            args![now.saturating_sub(wait_ms), &pipeline, number, &name],
        )?
        .into_iter()
        .map(|mut r| Ok((r.text(0)?, r.int(1)?, r.text(2)?, r.text(3)?, r.text(4)?)))
        .collect::<Result<_, DbError>>()?;
    let mut carried = 0;
    for (p, n, job, name, artifact) in &due {
        let deleted = delete_live(c, artifact)?;
        let n = settle_one(c, (p, *n, job, name), artifact, deleted, now)?;
        if deleted {
            carried += n;
        }
    }
    let old = now.saturating_sub(keep_ms);
    c.execute(
        "DELETE FROM gha_views WHERE (kind = 'read' AND at < ?1) OR done_at < ?1",
        args![old],
    )?;
    Ok(carried)
}
