//! The embedded default: SQLite in WAL mode.
//!
//! One writer connection (SQLite allows one writer at a time anyway) and a
//! few reader connections, each behind a mutex and used from tokio's
//! blocking pool. `synchronous = FULL`, so a committed transaction survives
//! power loss. Write transactions are `BEGIN IMMEDIATE`, which makes the
//! check-then-insert rules (artifact name conflicts) race-free.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use satchel_model::api::{
    Artifact, ArtifactState, CreateTyped, CreateUpload, FileInfo, ImageInfo, LinkInfo, NewFile,
    NewRun, Package, PackageFile, PackageOrigin, PackageWithFiles, PinnedSource, Producer, Run,
    RunRef, SetRunState, UploadFinished, RUN_STATES,
};
use satchel_model::id::{new_id, now_millis, rfc3339_millis};
use satchel_model::selector::RunSelector;

use crate::{DbError, MetaStore, MisSized, Quotas, UploadNeeds, UploadPlan};

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_pipelines.sql"),
    include_str!("../migrations/sqlite/0003_retention.sql"),
];
const READERS: usize = 4;

/// Metadata in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

fn backend(e: rusqlite::Error) -> DbError {
    DbError::Backend(e.to_string())
}

fn connect(path: &Path) -> Result<Connection, DbError> {
    let c = Connection::open(path)
        .map_err(|e| DbError::Backend(format!("opening {}: {e}", path.display())))?;
    c.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(backend)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(backend)?;
    Ok(c)
}

impl SqliteStore {
    /// Opens or creates the database at `path` and applies migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, DbError> {
        let path = path.as_ref();
        let mut writer = connect(path)?;
        migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| connect(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                next: AtomicUsize::new(0),
            }),
        })
    }

    async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, DbError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let out = f(&tx)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
        .map_err(|e| DbError::Backend(format!("database task failed: {e}")))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let i = inner.next.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let c = inner.readers[i].lock().unwrap_or_else(|p| p.into_inner());
            f(&c)
        })
        .await
        .map_err(|e| DbError::Backend(format!("database task failed: {e}")))?
    }
}

fn migrate(c: &mut Connection) -> Result<(), DbError> {
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        tx.execute_batch(sql)
            .map_err(|e| DbError::Backend(format!("migration {}: {e}", i + 1)))?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    if version as usize > MIGRATIONS.len() {
        return Err(DbError::Backend(format!(
            "database schema version {version} is newer than this satchel ({}): upgrade satchel",
            MIGRATIONS.len()
        )));
    }
    Ok(())
}

/// Columns of a visible-file row, in the order [`file_row`] reads them.
const FILE_SELECT: &str = "
SELECT f.id, f.artifact_id, a.name, f.path, f.size, f.sha256, f.mode, f.content_type, u.step,
       p.key, r.number, j.stage, j.key, j.attempt,
       EXISTS (SELECT 1 FROM jobs j2 WHERE j2.run_id = j.run_id AND j2.key = j.key
                                       AND j2.attempt > j.attempt),
       f.source_path, f.glob, u.finished_at
FROM files f
JOIN uploads u ON u.id = f.upload_id
JOIN artifacts a ON a.id = f.artifact_id
JOIN jobs j ON j.id = a.job_id
JOIN runs r ON r.id = j.run_id
JOIN pipelines p ON p.id = r.pipeline_id
WHERE u.state = 'finished' AND a.state = 'finished'";

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileInfo> {
    let at: i64 = r.get(17)?;
    Ok(FileInfo {
        id: r.get(0)?,
        artifact_id: r.get(1)?,
        artifact_name: r.get(2)?,
        path: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        sha256: r.get(5)?,
        mode: r.get::<_, i64>(6)? as u32,
        content_type: r.get(7)?,
        step: r.get(8)?,
        producer: Producer {
            pipeline: r.get(9)?,
            run: r.get::<_, i64>(10)? as u64,
            stage: r.get(11)?,
            job: r.get(12)?,
            attempt: r.get::<_, i64>(13)? as u32,
            superseded: r.get(14)?,
        },
        source_path: r.get(15)?,
        glob: r.get(16)?,
        uploaded_at: rfc3339_millis(at),
        uploaded_at_ms: at,
    })
}

/// Columns of an artifact row with its visible totals.
const ARTIFACT_SELECT: &str = "
SELECT a.id, a.name, a.is_default, a.kind, a.state, a.created_at,
       p.key, r.number, j.stage, j.key, j.attempt,
       EXISTS (SELECT 1 FROM jobs j2 WHERE j2.run_id = j.run_id AND j2.key = j.key
                                       AND j2.attempt > j.attempt),
       (SELECT COUNT(*) FROM files f JOIN uploads u ON u.id = f.upload_id
         WHERE f.artifact_id = a.id AND u.state = 'finished'),
       (SELECT COALESCE(SUM(f.size), 0) FROM files f JOIN uploads u ON u.id = f.upload_id
         WHERE f.artifact_id = a.id AND u.state = 'finished'),
       a.meta,
       (SELECT group_concat(DISTINCT u.step) FROM uploads u
         WHERE u.artifact_id = a.id AND u.state = 'finished' AND u.step IS NOT NULL)
FROM artifacts a
JOIN jobs j ON j.id = a.job_id
JOIN runs r ON r.id = j.run_id
JOIN pipelines p ON p.id = r.pipeline_id";

fn artifact_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Artifact> {
    let state: String = r.get(4)?;
    let kind: String = r.get(3)?;
    let meta: Option<String> = r.get(14)?;
    let (image, link) = parse_meta(&kind, meta.as_deref());
    let steps: Option<String> = r.get(15)?;
    let mut steps: Vec<String> = steps
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    steps.sort();
    Ok(Artifact {
        steps,
        image,
        link,
        id: r.get(0)?,
        name: r.get(1)?,
        is_default: r.get(2)?,
        kind,
        state: ArtifactState::parse(&state).unwrap_or(ArtifactState::Error),
        created_at: rfc3339_millis(r.get(5)?),
        producer: Producer {
            pipeline: r.get(6)?,
            run: r.get::<_, i64>(7)? as u64,
            stage: r.get(8)?,
            job: r.get(9)?,
            attempt: r.get::<_, i64>(10)? as u32,
            superseded: r.get(11)?,
        },
        file_count: r.get::<_, i64>(12)? as u64,
        size: r.get::<_, i64>(13)? as u64,
    })
}

/// The typed part of an artifact or package, from its `meta` column.
fn parse_meta(kind: &str, meta: Option<&str>) -> (Option<ImageInfo>, Option<LinkInfo>) {
    let Some(meta) = meta else {
        return (None, None);
    };
    match kind {
        "image" => (serde_json::from_str(meta).ok(), None),
        "link" => (None, serde_json::from_str(meta).ok()),
        _ => (None, None),
    }
}

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    let sources: Option<String> = r.get(8)?;
    let triggered_pipeline: Option<String> = r.get(9)?;
    let triggered_run: Option<i64> = r.get(10)?;
    Ok(Run {
        finished_at: r.get::<_, Option<i64>>(7)?.map(rfc3339_millis),
        sources: sources
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
        triggered_from: triggered_pipeline
            .zip(triggered_run)
            .map(|(pipeline, run)| RunRef {
                pipeline,
                run: run as u64,
            }),
        id: r.get(0)?,
        pipeline: r.get(1)?,
        number: r.get::<_, i64>(2)? as u64,
        branch: r.get(3)?,
        commit: r.get(4)?,
        state: r.get(5)?,
        created_at: rfc3339_millis(r.get(6)?),
    })
}

const RUN_SELECT: &str =
    "SELECT r.id, p.key, r.number, r.branch, r.commit_sha, r.state, r.created_at, r.finished_at,
       r.sources,
       (SELECT p2.key FROM runs r2 JOIN pipelines p2 ON p2.id = r2.pipeline_id
         WHERE r2.id = r.triggered_from),
       (SELECT r2.number FROM runs r2 WHERE r2.id = r.triggered_from)
FROM runs r JOIN pipelines p ON p.id = r.pipeline_id";

fn get_artifact(c: &Connection, id: &str) -> Result<Artifact, DbError> {
    c.query_row(
        &format!("{ARTIFACT_SELECT} WHERE a.id = ?1 AND a.state != 'deleted'"),
        [id],
        artifact_row,
    )
    .optional()
    .map_err(backend)?
    .ok_or_else(|| DbError::NotFound(format!("artifact {id} not found")))
}

/// Finds or creates a row keyed by `select` (one `?1`/`?2`… id query).
fn ensure(
    tx: &rusqlite::Transaction<'_>,
    select: &str,
    insert: &str,
    keys: &[&dyn rusqlite::ToSql],
) -> Result<String, DbError> {
    if let Some(id) = tx
        .query_row(select, keys, |r| r.get::<_, String>(0))
        .optional()
        .map_err(backend)?
    {
        return Ok(id);
    }
    let id = new_id();
    let mut all: Vec<&dyn rusqlite::ToSql> = vec![&id];
    all.extend_from_slice(keys);
    let now = now_millis();
    all.push(&now);
    tx.execute(insert, all.as_slice()).map_err(backend)?;
    Ok(id)
}

/// Finds or creates the default organization, cluster and the pipeline.
fn ensure_pipeline(tx: &rusqlite::Transaction<'_>, pipeline: &str) -> Result<String, DbError> {
    let org = ensure(
        tx,
        "SELECT id FROM organizations WHERE key = ?1",
        "INSERT INTO organizations (id, key, created_at) VALUES (?1, ?2, ?3)",
        &[&"default"],
    )?;
    let cluster = ensure(
        tx,
        "SELECT id FROM clusters WHERE organization_id = ?1 AND key = ?2",
        "INSERT INTO clusters (id, organization_id, key, created_at) VALUES (?1, ?2, ?3, ?4)",
        &[&org, &"default"],
    )?;
    ensure(
        tx,
        "SELECT id FROM pipelines WHERE cluster_id = ?1 AND key = ?2",
        "INSERT INTO pipelines (id, cluster_id, key, created_at) VALUES (?1, ?2, ?3, ?4)",
        &[&cluster, &pipeline],
    )
}

/// Finds or creates a run by number, recording branch and commit if it has
/// none yet.
fn ensure_run(
    tx: &rusqlite::Transaction<'_>,
    pipeline: &str,
    number: u64,
    branch: Option<&str>,
    commit: Option<&str>,
) -> Result<String, DbError> {
    let pipeline = ensure_pipeline(tx, pipeline)?;
    let run_number = i64::try_from(number)
        .map_err(|_| DbError::Invalid(format!("run number {number} is too large")))?;
    let run = ensure(
        tx,
        "SELECT id FROM runs WHERE pipeline_id = ?1 AND number = ?2",
        "INSERT INTO runs (id, pipeline_id, number, created_at) VALUES (?1, ?2, ?3, ?4)",
        &[&pipeline, &run_number],
    )?;
    tx.execute(
        "UPDATE runs SET branch = COALESCE(branch, ?2), commit_sha = COALESCE(commit_sha, ?3) WHERE id = ?1",
        params![run, branch, commit],
    )
    .map_err(backend)?;
    Ok(run)
}

/// Finds or creates the run and job attempt of `ctx`: `(run id, job id)`.
fn ensure_job(
    tx: &rusqlite::Transaction<'_>,
    ctx: &satchel_model::api::JobContext,
) -> Result<(String, String), DbError> {
    let run = ensure_run(
        tx,
        &ctx.pipeline,
        ctx.run,
        ctx.branch.as_deref(),
        ctx.commit.as_deref(),
    )?;
    let attempt = ctx.attempt as i64;
    let job = ensure(
        tx,
        "SELECT id FROM jobs WHERE run_id = ?1 AND key = ?2 AND attempt = ?3",
        "INSERT INTO jobs (id, run_id, key, attempt, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[&run, &ctx.job, &attempt],
    )?;
    if let Some(stage) = &ctx.stage {
        tx.execute(
            "UPDATE jobs SET stage = ?2 WHERE id = ?1 AND stage IS NULL",
            params![job, stage],
        )
        .map_err(backend)?;
    }
    Ok((run, job))
}

/// Checks that job `job` of `ctx` may use artifact name `name` in `run`;
/// returns the job's own live artifact of that name, if any, with its state.
///
/// Names are unique in a run. Another job's artifact of that name is a
/// conflict (unless its upload failed: a failed upload holds no name), as
/// is a later attempt's. An earlier attempt of the same job does not block
/// (the retry gets its own copy). With `exclusive` (publish semantics), the
/// job's own finished artifact of that name is a conflict too.
fn claim_name(
    tx: &rusqlite::Transaction<'_>,
    run: &str,
    job: &str,
    ctx: &satchel_model::api::JobContext,
    name: &str,
    exclusive: bool,
) -> Result<Option<(String, String)>, DbError> {
    let mut stmt = tx
        .prepare(
            "SELECT a.id, j.id, j.key, j.attempt, a.state FROM artifacts a JOIN jobs j ON j.id = a.job_id
             WHERE a.run_id = ?1 AND a.name = ?2 AND a.is_default = 0
               AND a.state NOT IN ('deleted', 'expired')",
        )
        .map_err(backend)?;
    let existing: Vec<(String, String, String, i64, String)> = stmt
        .query_map(params![run, name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    let conflict = |jkey: &str, jattempt: i64| {
        let stage = ctx
            .stage
            .as_deref()
            .map(|s| format!(" (stage {s:?})"))
            .unwrap_or_default();
        DbError::Conflict(format!(
            "artifact {name:?} already exists in run {} of pipeline {:?}: it was published by job {jkey:?} (attempt {jattempt}); job {:?}{stage} cannot publish it again. Artifact names are unique within a run: choose another name",
            ctx.run, ctx.pipeline, ctx.job
        ))
    };
    // Another owner is the better message, so the job's own rows go last.
    let mut existing = existing;
    existing.sort_by_key(|(_, jid, ..)| jid == job);
    let mut mine = None;
    for (aid, jid, jkey, jattempt, state) in existing {
        if jid == job {
            if exclusive && state == "finished" {
                return Err(conflict(&jkey, jattempt));
            }
            // Ours, possibly after a failed or interrupted upload: reuse it.
            mine = Some((aid, state));
        } else if state == "error" {
            // Another job's upload that never finished holds no name.
        } else if jkey != ctx.job || jattempt > ctx.attempt as i64 {
            return Err(conflict(&jkey, jattempt));
        }
    }
    Ok(mine)
}

/// Refuses when `run` holds more live artifacts than the quota allows
/// (counted inside the transaction that added one).
fn check_artifacts_per_run(
    tx: &rusqlite::Transaction<'_>,
    run: &str,
    quotas: &Quotas,
) -> Result<(), DbError> {
    let n: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM artifacts WHERE run_id = ?1
               AND state NOT IN ('deleted', 'expired', 'error')",
            [run],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if n as u64 > quotas.artifacts_per_run {
        return Err(DbError::Limit(format!(
            "a run may hold at most {} artifacts (satchel serve --max-artifacts-per-run); this one is full",
            quotas.artifacts_per_run
        )));
    }
    Ok(())
}

fn create_upload_tx(
    tx: &rusqlite::Transaction<'_>,
    req: &CreateUpload,
    quotas: &Quotas,
) -> Result<UploadPlan, DbError> {
    let ctx = &req.context;
    let (run, job) = ensure_job(tx, ctx)?;

    let now = now_millis();
    let name = req.name.as_deref().filter(|n| *n != "default");
    // Whether this upload adds an artifact to the run (counted against
    // the run's quota; adding files to one does not).
    let mut created = false;
    let artifact_id = match name {
        None => {
            let found: Option<String> = tx
                .query_row(
                    "SELECT id FROM artifacts WHERE job_id = ?1 AND is_default = 1
                       AND state NOT IN ('deleted', 'expired')",
                    [&job],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            match found {
                Some(id) => id,
                None => {
                    let id = new_id();
                    tx.execute(
                        "INSERT INTO artifacts (id, run_id, job_id, name, is_default, state, created_at)
                         VALUES (?1, ?2, ?3, 'default', 1, 'uploading', ?4)",
                        params![id, run, job, now],
                    )
                    .map_err(backend)?;
                    created = true;
                    id
                }
            }
        }
        Some(name) => match claim_name(tx, &run, &job, ctx, name, req.exclusive)? {
            Some((id, _)) => id,
            None => {
                let id = new_id();
                tx.execute(
                    "INSERT INTO artifacts (id, run_id, job_id, name, is_default, state, created_at)
                     VALUES (?1, ?2, ?3, ?4, 0, 'uploading', ?5)",
                    params![id, run, job, name, now],
                )
                .map_err(backend)?;
                created = true;
                id
            }
        },
    };
    if let Some(secs) = req.expire_in_secs {
        // Only while the artifact is being created: later uploads into a
        // finished artifact do not move its expiry.
        tx.execute(
            "UPDATE artifacts SET expires_at = created_at + ?2 WHERE id = ?1 AND state != 'finished'",
            params![artifact_id, (secs as i64).saturating_mul(1000)],
        )
        .map_err(backend)?;
    }
    let (artifact_name, artifact_state, kind): (String, String, String) = tx
        .query_row(
            "SELECT name, state, kind FROM artifacts WHERE id = ?1",
            [&artifact_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(backend)?;
    if kind != "files" {
        return Err(DbError::Conflict(format!(
            "artifact {artifact_name:?} is a {kind} artifact; files cannot be added to it"
        )));
    }
    if artifact_state == "deleted" || artifact_state == "expired" {
        return Err(DbError::Conflict(format!(
            "artifact {artifact_name:?} was {artifact_state}; it cannot take new files"
        )));
    }

    // Files the artifact already has. Finished ones are permanent; ones
    // staged by another unfinished upload (e.g. a crashed or abandoned
    // attempt of this same command) move to this upload.
    let mut existing: HashMap<String, (String, String, bool)> = HashMap::new();
    {
        let mut stmt = tx
            .prepare(
                "SELECT f.path, f.sha256, f.id, u.state = 'finished' FROM files f JOIN uploads u ON u.id = f.upload_id
                 WHERE f.artifact_id = ?1 AND u.state != 'error'",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([&artifact_id], |r| {
                Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))
            })
            .map_err(backend)?;
        for row in rows {
            let (p, v) = row.map_err(backend)?;
            existing.insert(p, v);
        }
    }

    let upload_id = new_id();
    tx.execute(
        "INSERT INTO uploads (id, artifact_id, step, state, created_at) VALUES (?1, ?2, ?3, 'uploading', ?4)",
        params![upload_id, artifact_id, ctx.step, now],
    )
    .map_err(backend)?;

    check_sizes(tx, &req.files)?;
    let mut seen = HashSet::new();
    let mut wanted = HashSet::new();
    let mut already_present = 0u64;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO files (id, artifact_id, upload_id, path, size, sha256, mode, content_type, source_path, glob, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .map_err(backend)?;
        for f in &req.files {
            if !seen.insert(f.path.as_str()) {
                return Err(DbError::Invalid(format!(
                    "the manifest lists {:?} twice",
                    f.path
                )));
            }
            if let Some((old, file_id, finished)) = existing.get(&f.path) {
                if !finished {
                    tx.execute("DELETE FROM files WHERE id = ?1", [file_id])
                        .map_err(backend)?;
                } else if *old == f.sha256 {
                    already_present += 1;
                    continue;
                } else {
                    return Err(DbError::Conflict(format!(
                    "{:?} is already in artifact {artifact_name:?} with different content (sha256 {old}); files of an artifact cannot be replaced",
                        f.path
                    )));
                }
            }
            let content_type = f
                .content_type
                .clone()
                .unwrap_or_else(|| satchel_model::mime::content_type_for(&f.path).to_string());
            insert
                .execute(params![
                    new_id(),
                    artifact_id,
                    upload_id,
                    f.path,
                    f.size as i64,
                    f.sha256,
                    (f.mode & 0o7777) as i64,
                    content_type,
                    f.source_path,
                    f.glob,
                    now
                ])
                .map_err(backend)?;
            wanted.insert(f.sha256.clone());
        }
    }
    if created {
        check_artifacts_per_run(tx, &run, quotas)?;
    }
    let files: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM files f JOIN uploads u ON u.id = f.upload_id
             WHERE f.artifact_id = ?1 AND u.state != 'error'",
            [&artifact_id],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if files as u64 > quotas.files_per_artifact {
        return Err(DbError::Limit(format!(
            "an artifact may hold at most {} files (satchel serve --max-files-per-artifact); {artifact_name:?} would hold {files}",
            quotas.files_per_artifact
        )));
    }
    let mut missing = Vec::new();
    {
        let mut known = tx
            .prepare("SELECT 1 FROM blobs WHERE sha256 = ?1")
            .map_err(backend)?;
        for d in wanted {
            if !known.exists([&d]).map_err(backend)? {
                missing.push(d);
            }
        }
    }
    missing.sort();
    Ok(UploadPlan {
        upload_id,
        artifact_id,
        artifact_name,
        missing,
        already_present,
    })
}

/// Refuses a manifest whose sizes contradict themselves or the content
/// already held: one digest is one size. Without this a file could claim
/// any size for content another pipeline stored, and every reader that
/// trusts the recorded size (archives, fsck, range requests) would be
/// misled about bytes the uploader never sent.
fn check_sizes(tx: &rusqlite::Transaction<'_>, files: &[NewFile]) -> Result<(), DbError> {
    let mut sizes: HashMap<&str, (&str, u64)> = HashMap::new();
    for f in files {
        match sizes.insert(f.sha256.as_str(), (f.path.as_str(), f.size)) {
            Some((other, size)) if size != f.size => {
                return Err(DbError::SizeMismatch(format!(
                    "{:?} and {other:?} have the same sha256 {} but sizes {} and {size}",
                    f.path, f.sha256, f.size
                )))
            }
            _ => {}
        }
    }
    let mut held = tx
        .prepare("SELECT size FROM blobs WHERE sha256 = ?1")
        .map_err(backend)?;
    for (sha, (path, size)) in sizes {
        let stored: Option<i64> = held
            .query_row([sha], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        if let Some(stored) = stored.filter(|&n| n as u64 != size) {
            return Err(DbError::SizeMismatch(format!(
                "{path:?} claims {size} bytes, but the content with sha256 {sha} has {stored}"
            )));
        }
    }
    Ok(())
}

fn finish_upload_tx(
    tx: &rusqlite::Transaction<'_>,
    upload_id: &str,
) -> Result<UploadFinished, DbError> {
    let (artifact_id, state): (String, String) = tx
        .query_row(
            "SELECT artifact_id, state FROM uploads WHERE id = ?1",
            [upload_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?
        .ok_or_else(|| DbError::NotFound(format!("upload {upload_id} not found")))?;
    match state.as_str() {
        "uploading" | "finished" => {}
        _ => {
            return Err(DbError::Conflict(format!(
                "upload {upload_id} failed earlier and cannot be finished; start a new upload"
            )))
        }
    }
    let missing: Vec<String> = {
        let mut stmt = tx
            .prepare(
                "SELECT f.path FROM files f LEFT JOIN blobs b ON b.sha256 = f.sha256
                 WHERE f.upload_id = ?1 AND b.sha256 IS NULL ORDER BY f.path LIMIT 11",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([upload_id], |r| r.get(0))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        rows
    };
    // Content recorded after this upload was created (by another upload)
    // is checked against the sizes this one announced.
    let wrong: Option<(String, i64, i64)> = tx
        .query_row(
            "SELECT f.path, f.size, b.size FROM files f JOIN blobs b ON b.sha256 = f.sha256
             WHERE f.upload_id = ?1 AND b.size != f.size ORDER BY f.path LIMIT 1",
            [upload_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(backend)?;
    if let Some((path, claimed, stored)) = wrong {
        return Err(DbError::SizeMismatch(format!(
            "{path:?} claims {claimed} bytes, but its content has {stored}; start a new upload with the right size"
        )));
    }
    if !missing.is_empty() {
        let more = if missing.len() > 10 { ", …" } else { "" };
        return Err(DbError::Conflict(format!(
            "content has not been uploaded for: {}{more}",
            missing[..missing.len().min(10)].join(", ")
        )));
    }
    let now = now_millis();
    tx.execute(
        "UPDATE uploads SET state = 'finished', finished_at = ?2 WHERE id = ?1 AND state = 'uploading'",
        params![upload_id, now],
    )
    .map_err(backend)?;
    tx.execute(
        "UPDATE artifacts SET state = 'finished', finished_at = COALESCE(finished_at, ?2)
         WHERE id = ?1 AND state IN ('uploading', 'error')",
        params![artifact_id, now],
    )
    .map_err(backend)?;
    let (files_added, bytes_added): (i64, i64) = tx
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE upload_id = ?1",
            [upload_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(backend)?;
    Ok(UploadFinished {
        artifact: get_artifact(tx, &artifact_id)?,
        files_added: files_added as u64,
        bytes_added: bytes_added as u64,
    })
}

/// Marks an upload `error`, drops its staged files, and errors its artifact
/// when no other upload of it is alive.
fn fail_upload(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<(), DbError> {
    tx.execute("DELETE FROM files WHERE upload_id = ?1", [id])
        .map_err(backend)?;
    tx.execute("UPDATE uploads SET state = 'error' WHERE id = ?1", [id])
        .map_err(backend)?;
    tx.execute(
        "UPDATE artifacts SET state = 'error'
         WHERE id = (SELECT artifact_id FROM uploads WHERE id = ?1) AND state = 'uploading'
           AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.artifact_id = artifacts.id AND u.state != 'error')",
        [id],
    )
    .map_err(backend)?;
    Ok(())
}

fn create_typed_tx(
    tx: &rusqlite::Transaction<'_>,
    req: &CreateTyped,
    quotas: &Quotas,
) -> Result<Artifact, DbError> {
    let ctx = &req.context;
    let (kind, meta) = match (&req.image, &req.link) {
        (Some(image), None) => {
            let info = ImageInfo::parse(image).map_err(DbError::Invalid)?;
            ("image", serde_json::to_string(&info))
        }
        (None, Some(link)) => {
            let info = link.clone().validated().map_err(DbError::Invalid)?;
            ("link", serde_json::to_string(&info))
        }
        _ => {
            return Err(DbError::Invalid(
                "a typed artifact has exactly one of `image` and `link`".into(),
            ))
        }
    };
    let meta = meta.map_err(|e| DbError::Backend(e.to_string()))?;
    let (run, job) = ensure_job(tx, ctx)?;
    if let Some((old, _)) = claim_name(tx, &run, &job, ctx, &req.name, true)? {
        // This job's own unfinished attempt at the name: replace it.
        tx.execute(
            "UPDATE artifacts SET state = 'deleted' WHERE id = ?1",
            [&old],
        )
        .map_err(backend)?;
    }
    let now = now_millis();
    let id = new_id();
    tx.execute(
        "INSERT INTO artifacts (id, run_id, job_id, name, is_default, kind, meta, state, created_at, finished_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, 'finished', ?7, ?7, ?8)",
        params![
            id,
            run,
            job,
            req.name,
            kind,
            meta,
            now,
            req.expire_in_secs
                .map(|s| now.saturating_add((s as i64).saturating_mul(1000)))
        ],
    )
    .map_err(backend)?;
    check_artifacts_per_run(tx, &run, quotas)?;
    // An empty, finished upload records the producing step.
    tx.execute(
        "INSERT INTO uploads (id, artifact_id, step, state, created_at, finished_at)
         VALUES (?1, ?2, ?3, 'finished', ?4, ?4)",
        params![new_id(), id, ctx.step, now],
    )
    .map_err(backend)?;
    get_artifact(tx, &id)
}

fn find_run_conn(c: &Connection, pipeline: &str, number: u64) -> Result<Run, DbError> {
    let not_found =
        || DbError::NotFound(format!("run {number} of pipeline {pipeline:?} not found"));
    let n = i64::try_from(number).map_err(|_| not_found())?;
    c.query_row(
        &format!("{RUN_SELECT} WHERE p.key = ?1 AND r.number = ?2"),
        params![pipeline, n],
        run_row,
    )
    .optional()
    .map_err(backend)?
    .ok_or_else(not_found)
}

/// The newest few runs of a pipeline as `#3 failed, #2 passed`, for messages.
fn recent_runs(c: &Connection, pipeline: &str) -> Result<String, DbError> {
    let mut stmt = c
        .prepare(&format!(
            "{RUN_SELECT} WHERE p.key = ?1 ORDER BY r.number DESC LIMIT 5"
        ))
        .map_err(backend)?;
    let runs: Vec<Run> = stmt
        .query_map([pipeline], run_row)
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    Ok(runs
        .iter()
        .map(|r| match &r.branch {
            Some(b) => format!("#{} {} on {b}", r.number, r.state),
            None => format!("#{} {}", r.number, r.state),
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// The run of `pipeline` that `selector` picks; `triggered_from` is the
/// asking run's trigger, for [`RunSelector::Triggering`].
fn select_run_conn(
    c: &Connection,
    pipeline: &str,
    selector: &RunSelector,
    triggered_from: Option<&RunRef>,
) -> Result<Run, DbError> {
    let exists = c
        .prepare("SELECT 1 FROM pipelines WHERE key = ?1")
        .and_then(|mut s| s.exists([pipeline]))
        .map_err(backend)?;
    if !exists {
        return Err(DbError::NotFound(format!(
            "pipeline {pipeline:?} not found: it has no runs yet"
        )));
    }
    let newest = |cond: &str, arg: Option<&str>| -> Result<Option<Run>, DbError> {
        let sql = format!("{RUN_SELECT} WHERE p.key = ?1 {cond} ORDER BY r.number DESC LIMIT 1");
        let r = match arg {
            Some(a) => c.query_row(&sql, params![pipeline, a], run_row),
            None => c.query_row(&sql, params![pipeline], run_row),
        };
        r.optional().map_err(backend)
    };
    let found = match selector {
        RunSelector::Number(n) => return find_run_conn(c, pipeline, *n),
        RunSelector::Latest => newest("", None)?,
        RunSelector::LastSuccessful { branch: None } => newest("AND r.state = 'passed'", None)?,
        RunSelector::LastSuccessful { branch: Some(b) } => {
            newest("AND r.state = 'passed' AND r.branch = ?2", Some(b))?
        }
        RunSelector::LatestFromBranch(b) => newest("AND r.branch = ?2", Some(b))?,
        RunSelector::Triggering => match triggered_from {
            Some(t) if t.pipeline == pipeline => return find_run_conn(c, pipeline, t.run),
            Some(t) => {
                return Err(DbError::NotFound(format!(
                    "selector `triggering` on pipeline {pipeline:?}: this run was triggered by run {} of pipeline {:?}, not by {pipeline:?}",
                    t.run, t.pipeline
                )))
            }
            None => {
                return Err(DbError::NotFound(format!(
                    "selector `triggering` on pipeline {pipeline:?}: this run was not triggered by another run (start it with --triggered-by {pipeline}#N)"
                )))
            }
        },
    };
    found.ok_or_else(|| {
        let recent = recent_runs(c, pipeline).unwrap_or_default();
        DbError::NotFound(format!(
            "pipeline {pipeline:?} has no run matching `{selector}` ({}); its newest runs: {}",
            selector.describe(),
            if recent.is_empty() {
                "none".to_string()
            } else {
                recent
            }
        ))
    })
}

fn create_run_tx(
    tx: &rusqlite::Transaction<'_>,
    pipeline: &str,
    req: &NewRun,
) -> Result<Run, DbError> {
    let triggered_from = match &req.triggered_from {
        Some(t) => Some(find_run_conn(tx, &t.pipeline, t.run).map_err(|_| {
            DbError::NotFound(format!(
                "triggering run {} of pipeline {:?} not found",
                t.run, t.pipeline
            ))
        })?),
        None => None,
    };
    let mut sources = std::collections::BTreeMap::new();
    for (name, spec) in &req.sources {
        let selector: RunSelector = spec
            .run
            .parse()
            .map_err(|e| DbError::Invalid(format!("source {name:?}: {e}")))?;
        let run = select_run_conn(tx, &spec.pipeline, &selector, req.triggered_from.as_ref())
            .map_err(|e| match e {
                DbError::NotFound(m) => DbError::NotFound(format!("source {name:?}: {m}")),
                other => other,
            })?;
        sources.insert(
            name.clone(),
            PinnedSource {
                pipeline: spec.pipeline.clone(),
                selector: selector.to_string(),
                run: run.number,
            },
        );
    }
    let pipeline_id = ensure_pipeline(tx, pipeline)?;
    // The `+ 1` in Rust: SQLite would turn an overflow into a float, and
    // a run numbered i64::MAX (uploads may name any run) must not break
    // the pipeline's run creation for good.
    let last: Option<i64> = tx
        .query_row(
            "SELECT MAX(number) FROM runs WHERE pipeline_id = ?1",
            [&pipeline_id],
            |r| r.get(0),
        )
        .map_err(backend)?;
    let next = last.unwrap_or(0).checked_add(1).ok_or_else(|| {
        DbError::Conflict(format!(
            "pipeline {pipeline:?} has a run numbered {}, the largest there can be; no later run can be created",
            i64::MAX
        ))
    })?;
    let sources_json = if sources.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&sources).map_err(|e| DbError::Backend(e.to_string()))?)
    };
    tx.execute(
        "INSERT INTO runs (id, pipeline_id, number, branch, commit_sha, state, created_at, sources, triggered_from)
         VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8)",
        params![
            new_id(),
            pipeline_id,
            next,
            req.branch,
            req.commit,
            now_millis(),
            sources_json,
            triggered_from.map(|r| r.id)
        ],
    )
    .map_err(backend)?;
    find_run_conn(tx, pipeline, next as u64)
}

fn package_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Package)> {
    let kind: String = r.get(4)?;
    let meta: Option<String> = r.get(5)?;
    let origin: String = r.get(6)?;
    let (image, link) = parse_meta(&kind, meta.as_deref());
    let origin: PackageOrigin = serde_json::from_str(&origin).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok((
        r.get(0)?,
        Package {
            repository: r.get(1)?,
            name: r.get(2)?,
            version: r.get(3)?,
            kind,
            image,
            link,
            file_count: r.get::<_, i64>(8)? as u64,
            size: r.get::<_, i64>(9)? as u64,
            origin,
            created_at: rfc3339_millis(r.get(7)?),
        },
    ))
}

/// True for a blob row `b` that nothing live references: no file of a
/// live upload (finished or in flight) of a live artifact, no package file.
const UNREFERENCED: &str = "
NOT EXISTS (SELECT 1 FROM files f
              JOIN uploads u ON u.id = f.upload_id
              JOIN artifacts a ON a.id = f.artifact_id
            WHERE f.sha256 = b.sha256 AND u.state != 'error'
              AND a.state NOT IN ('deleted', 'expired'))
AND NOT EXISTS (SELECT 1 FROM package_files p WHERE p.sha256 = b.sha256)";

const PACKAGE_SELECT: &str = "
SELECT k.id, k.repository, k.name, k.version, k.kind, k.meta, k.origin, k.created_at,
       (SELECT COUNT(*) FROM package_files f WHERE f.package_id = k.id),
       (SELECT COALESCE(SUM(f.size), 0) FROM package_files f WHERE f.package_id = k.id)
FROM packages k";

fn promote_tx(
    tx: &rusqlite::Transaction<'_>,
    req: &satchel_model::api::Promote,
) -> Result<Package, DbError> {
    let artifact = get_artifact(tx, &req.artifact_id)?;
    if artifact.state != ArtifactState::Finished {
        return Err(DbError::Conflict(format!(
            "artifact {:?} ({}) is {}; only finished artifacts can be promoted",
            artifact.name,
            artifact.id,
            artifact.state.as_str()
        )));
    }
    if let Some((_, existing)) = tx
        .query_row(
            &format!("{PACKAGE_SELECT} WHERE k.repository = ?1 AND k.name = ?2 AND k.version = ?3"),
            params![req.repository, req.package, req.version],
            package_row,
        )
        .optional()
        .map_err(backend)?
    {
        let p = &existing.origin.producer;
        return Err(DbError::Conflict(format!(
            "{}/{}@{} already exists (promoted from artifact {:?} of run {} of pipeline {:?} at {}); versions are immutable: promote to a new version",
            req.repository, req.package, req.version, existing.origin.artifact, p.run, p.pipeline, existing.created_at
        )));
    }
    let meta: Option<String> = tx
        .query_row(
            "SELECT meta FROM artifacts WHERE id = ?1",
            [&artifact.id],
            |r| r.get(0),
        )
        .map_err(backend)?;
    let origin = PackageOrigin {
        artifact_id: artifact.id.clone(),
        artifact: artifact.name.clone(),
        producer: artifact.producer.clone(),
    };
    let id = new_id();
    tx.execute(
        "INSERT INTO packages (id, repository, name, version, kind, meta, origin, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id,
            req.repository,
            req.package,
            req.version,
            artifact.kind,
            meta,
            serde_json::to_string(&origin).map_err(|e| DbError::Backend(e.to_string()))?,
            now_millis()
        ],
    )
    .map_err(backend)?;
    tx.execute(
        "INSERT INTO package_files (package_id, path, size, sha256, mode, content_type)
         SELECT ?1, f.path, f.size, f.sha256, f.mode, f.content_type
         FROM files f JOIN uploads u ON u.id = f.upload_id
         WHERE f.artifact_id = ?2 AND u.state = 'finished'",
        params![id, artifact.id],
    )
    .map_err(backend)?;
    tx.query_row(
        &format!("{PACKAGE_SELECT} WHERE k.id = ?1"),
        [&id],
        package_row,
    )
    .map(|(_, p)| p)
    .map_err(backend)
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn create_upload(
        &self,
        req: &CreateUpload,
        quotas: &Quotas,
    ) -> Result<UploadPlan, DbError> {
        let (req, quotas) = (req.clone(), *quotas);
        self.write(move |tx| create_upload_tx(tx, &req, &quotas))
            .await
    }

    async fn upload_needs(&self, upload_id: &str) -> Result<UploadNeeds, DbError> {
        let id = upload_id.to_string();
        self.read(move |c| {
            let state: String = c
                .query_row("SELECT state FROM uploads WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(backend)?
                .ok_or_else(|| DbError::NotFound(format!("upload {id} not found")))?;
            let mut stmt = c
                .prepare("SELECT DISTINCT sha256, size FROM files WHERE upload_id = ?1")
                .map_err(backend)?;
            let blobs = stmt
                .query_map([&id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(UploadNeeds { state, blobs })
        })
        .await
    }

    async fn known_blobs(&self, digests: &[String]) -> Result<HashSet<String>, DbError> {
        let digests = digests.to_vec();
        self.read(move |c| {
            let mut stmt = c
                .prepare("SELECT 1 FROM blobs WHERE sha256 = ?1")
                .map_err(backend)?;
            let mut out = HashSet::new();
            for d in digests {
                if stmt.exists([&d]).map_err(backend)? {
                    out.insert(d);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn record_blobs(&self, blobs: &[(String, u64)]) -> Result<(), DbError> {
        let blobs = blobs.to_vec();
        self.write(move |tx| {
            let now = now_millis();
            let mut stmt = tx
                .prepare(
                    "INSERT INTO blobs (sha256, size, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (sha256) DO UPDATE SET created_at = excluded.created_at",
                )
                .map_err(backend)?;
            for (d, size) in blobs {
                stmt.execute(params![d, size as i64, now])
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn finish_upload(&self, upload_id: &str) -> Result<UploadFinished, DbError> {
        let id = upload_id.to_string();
        self.write(move |tx| finish_upload_tx(tx, &id)).await
    }

    async fn abort_upload(&self, upload_id: &str) -> Result<(), DbError> {
        let id = upload_id.to_string();
        self.write(move |tx| {
            let state: Option<String> = tx
                .query_row("SELECT state FROM uploads WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(backend)?;
            match state.as_deref() {
                None => return Err(DbError::NotFound(format!("upload {id} not found"))),
                Some("finished") => {
                    return Err(DbError::Conflict(format!(
                        "upload {id} is already finished; delete the artifact instead"
                    )))
                }
                _ => {}
            }
            fail_upload(tx, &id)
        })
        .await
    }

    async fn expire_stale_uploads(&self, cutoff_ms: i64) -> Result<u64, DbError> {
        self.write(move |tx| {
            let ids: Vec<String> = {
                let mut stmt = tx
                    .prepare("SELECT id FROM uploads WHERE state = 'uploading' AND created_at < ?1")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([cutoff_ms], |r| r.get(0))
                    .map_err(backend)?
                    .collect::<Result<_, _>>()
                    .map_err(backend)?;
                rows
            };
            for id in &ids {
                fail_upload(tx, id)?;
            }
            Ok(ids.len() as u64)
        })
        .await
    }

    async fn list_runs(&self, pipeline: &str) -> Result<Vec<Run>, DbError> {
        let p = pipeline.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "{RUN_SELECT} WHERE p.key = ?1 ORDER BY r.number DESC"
                ))
                .map_err(backend)?;
            let runs: Vec<Run> = stmt
                .query_map([&p], run_row)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            if runs.is_empty() {
                let exists = c
                    .prepare("SELECT 1 FROM pipelines WHERE key = ?1")
                    .and_then(|mut s| s.exists([&p]))
                    .map_err(backend)?;
                if !exists {
                    return Err(DbError::NotFound(format!("pipeline {p:?} not found")));
                }
            }
            Ok(runs)
        })
        .await
    }

    async fn find_run(&self, pipeline: &str, number: u64) -> Result<Run, DbError> {
        let p = pipeline.to_string();
        self.read(move |c| find_run_conn(c, &p, number)).await
    }

    async fn run_files(&self, run_id: &str) -> Result<Vec<FileInfo>, DbError> {
        let id = run_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!("{FILE_SELECT} AND a.run_id = ?1"))
                .map_err(backend)?;
            let files = stmt
                .query_map([&id], file_row)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(files)
        })
        .await
    }

    async fn list_artifacts(&self, run_id: &str) -> Result<Vec<Artifact>, DbError> {
        let id = run_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "{ARTIFACT_SELECT} WHERE a.run_id = ?1 AND a.state != 'deleted' ORDER BY a.name, a.created_at"
                ))
                .map_err(backend)?;
            let out = stmt
                .query_map([&id], artifact_row)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(out)
        })
        .await
    }

    async fn get_artifact(&self, id: &str) -> Result<Artifact, DbError> {
        let id = id.to_string();
        self.read(move |c| get_artifact(c, &id)).await
    }

    async fn artifact_files(&self, id: &str) -> Result<Vec<FileInfo>, DbError> {
        let id = id.to_string();
        self.read(move |c| {
            get_artifact(c, &id)?;
            let mut stmt = c
                .prepare(&format!(
                    "{FILE_SELECT} AND f.artifact_id = ?1 ORDER BY f.path"
                ))
                .map_err(backend)?;
            let files = stmt
                .query_map([&id], file_row)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(files)
        })
        .await
    }

    async fn get_files(&self, ids: &[String]) -> Result<Vec<FileInfo>, DbError> {
        let ids = ids.to_vec();
        self.read(move |c| {
            // A few `IN` queries instead of one query per id.
            let mut found: HashMap<String, FileInfo> = HashMap::with_capacity(ids.len());
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(",");
                let mut stmt = c
                    .prepare_cached(&format!("{FILE_SELECT} AND f.id IN ({marks})"))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(chunk), file_row)
                    .map_err(backend)?;
                for row in rows {
                    let f = row.map_err(backend)?;
                    found.insert(f.id.clone(), f);
                }
            }
            ids.iter()
                .map(|id| {
                    found
                        .get(id)
                        .cloned()
                        .ok_or_else(|| DbError::NotFound(format!("file {id} not found")))
                })
                .collect()
        })
        .await
    }

    async fn delete_artifact(&self, id: &str) -> Result<Artifact, DbError> {
        let id = id.to_string();
        self.write(move |tx| {
            let a = get_artifact(tx, &id)?;
            tx.execute(
                "UPDATE artifacts SET state = 'deleted' WHERE id = ?1",
                [&id],
            )
            .map_err(backend)?;
            Ok(Artifact {
                state: ArtifactState::Deleted,
                ..a
            })
        })
        .await
    }

    async fn create_typed(&self, req: &CreateTyped, quotas: &Quotas) -> Result<Artifact, DbError> {
        let (req, quotas) = (req.clone(), *quotas);
        self.write(move |tx| create_typed_tx(tx, &req, &quotas))
            .await
    }

    async fn create_run(&self, pipeline: &str, req: &NewRun) -> Result<Run, DbError> {
        let (p, req) = (pipeline.to_string(), req.clone());
        self.write(move |tx| create_run_tx(tx, &p, &req)).await
    }

    async fn set_run_state(
        &self,
        pipeline: &str,
        number: u64,
        req: &SetRunState,
    ) -> Result<Run, DbError> {
        if !RUN_STATES.contains(&req.state.as_str()) {
            return Err(DbError::Invalid(format!(
                "unknown run state {:?}: use one of {}",
                req.state,
                RUN_STATES.join(", ")
            )));
        }
        let (p, req) = (pipeline.to_string(), req.clone());
        self.write(move |tx| {
            let run = ensure_run(tx, &p, number, req.branch.as_deref(), req.commit.as_deref())?;
            let finished = (req.state != "running").then(now_millis);
            tx.execute(
                "UPDATE runs SET state = ?2, finished_at = ?3 WHERE id = ?1",
                params![run, req.state, finished],
            )
            .map_err(backend)?;
            find_run_conn(tx, &p, number)
        })
        .await
    }

    async fn select_run(
        &self,
        pipeline: &str,
        selector: &RunSelector,
        triggered_from: Option<&RunRef>,
    ) -> Result<Run, DbError> {
        let (p, sel, t) = (
            pipeline.to_string(),
            selector.clone(),
            triggered_from.cloned(),
        );
        self.read(move |c| select_run_conn(c, &p, &sel, t.as_ref()))
            .await
    }

    async fn list_jobs(&self, run_id: &str) -> Result<Vec<crate::JobSummary>, DbError> {
        let id = run_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare("SELECT stage, key, attempt FROM jobs WHERE run_id = ?1 ORDER BY stage, key, attempt")
                .map_err(backend)?;
            let jobs = stmt
                .query_map([&id], |r| {
                    Ok(crate::JobSummary {
                        stage: r.get(0)?,
                        key: r.get(1)?,
                        attempt: r.get::<_, i64>(2)? as u32,
                    })
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(jobs)
        })
        .await
    }

    async fn promote(&self, req: &satchel_model::api::Promote) -> Result<Package, DbError> {
        let req = req.clone();
        self.write(move |tx| promote_tx(tx, &req)).await
    }

    async fn get_package(
        &self,
        repository: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<PackageWithFiles, DbError> {
        let (repo, name, version) = (
            repository.to_string(),
            name.to_string(),
            version.map(str::to_string),
        );
        self.read(move |c| {
            let found = match &version {
                Some(v) => c.query_row(
                    &format!("{PACKAGE_SELECT} WHERE k.repository = ?1 AND k.name = ?2 AND k.version = ?3"),
                    params![repo, name, v],
                    package_row,
                ),
                None => c.query_row(
                    &format!("{PACKAGE_SELECT} WHERE k.repository = ?1 AND k.name = ?2 ORDER BY k.created_at DESC, k.rowid DESC LIMIT 1"),
                    params![repo, name],
                    package_row,
                ),
            }
            .optional()
            .map_err(backend)?;
            let Some((id, package)) = found else {
                let what = match &version {
                    Some(v) => format!("{repo}/{name}@{v} not found"),
                    None => format!("package {repo}/{name} has no versions"),
                };
                return Err(DbError::NotFound(what));
            };
            let mut stmt = c
                .prepare("SELECT path, size, sha256, mode, content_type FROM package_files WHERE package_id = ?1 ORDER BY path")
                .map_err(backend)?;
            let files = stmt
                .query_map([&id], |r| {
                    Ok(PackageFile {
                        path: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        sha256: r.get(2)?,
                        mode: r.get::<_, i64>(3)? as u32,
                        content_type: r.get(4)?,
                    })
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(PackageWithFiles { package, files })
        })
        .await
    }

    async fn list_packages(
        &self,
        repository: &str,
        name: Option<&str>,
    ) -> Result<Vec<Package>, DbError> {
        let (repo, name) = (repository.to_string(), name.map(str::to_string));
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "{PACKAGE_SELECT} WHERE k.repository = ?1 AND (?2 IS NULL OR k.name = ?2)
                     ORDER BY k.created_at DESC, k.rowid DESC"
                ))
                .map_err(backend)?;
            let out = stmt
                .query_map(params![repo, name], package_row)
                .map_err(backend)?
                .map(|r| r.map(|(_, p)| p))
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(out)
        })
        .await
    }

    async fn expire_artifacts(&self, now_ms: i64) -> Result<u64, DbError> {
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE artifacts SET state = 'expired'
                     WHERE state = 'finished' AND expires_at IS NOT NULL AND expires_at < ?1
                       AND run_id NOT IN (
                         SELECT r.id FROM runs r
                         WHERE r.state = 'passed' AND r.number = (
                           SELECT MAX(r2.number) FROM runs r2
                           WHERE r2.pipeline_id = r.pipeline_id AND r2.state = 'passed'
                             AND r2.branch IS r.branch))",
                    [now_ms],
                )
                .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }

    async fn unreferenced_blobs(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, DbError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT b.sha256, b.size FROM blobs b
                     WHERE b.created_at < ?1 AND {UNREFERENCED} LIMIT ?2"
                ))
                .map_err(backend)?;
            let out = stmt
                .query_map(params![cutoff_ms, limit as i64], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(out)
        })
        .await
    }

    async fn forget_blobs(
        &self,
        digests: &[String],
        cutoff_ms: i64,
    ) -> Result<Vec<String>, DbError> {
        let digests = digests.to_vec();
        self.write(move |tx| {
            let mut stmt = tx
                .prepare(&format!(
                    "DELETE FROM blobs AS b
                     WHERE b.sha256 = ?1 AND b.created_at < ?2 AND {UNREFERENCED}"
                ))
                .map_err(backend)?;
            let mut gone = Vec::new();
            for d in digests {
                if stmt.execute(params![&d, cutoff_ms]).map_err(backend)? > 0 {
                    gone.push(d);
                }
            }
            Ok(gone)
        })
        .await
    }

    async fn unrecord_blobs(&self, digests: &[String]) -> Result<u64, DbError> {
        let digests = digests.to_vec();
        self.write(move |tx| {
            let mut stmt = tx
                .prepare("DELETE FROM blobs WHERE sha256 = ?1")
                .map_err(backend)?;
            let mut n = 0u64;
            for d in digests {
                n += stmt.execute(params![&d]).map_err(backend)? as u64;
            }
            Ok(n)
        })
        .await
    }

    async fn recorded_blobs(&self) -> Result<Vec<String>, DbError> {
        self.read(move |c| {
            let mut stmt = c.prepare("SELECT sha256 FROM blobs").map_err(backend)?;
            let out = stmt
                .query_map([], |r| r.get(0))
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(out)
        })
        .await
    }

    async fn mis_sized_files(&self, limit: usize) -> Result<Vec<MisSized>, DbError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT 'artifact ' || f.artifact_id, f.path, f.sha256, f.size, b.size
                       FROM files f JOIN blobs b ON b.sha256 = f.sha256
                       JOIN uploads u ON u.id = f.upload_id
                       JOIN artifacts a ON a.id = f.artifact_id
                      WHERE f.size != b.size AND u.state = 'finished' AND a.state = 'finished'
                     UNION ALL
                     SELECT 'package ' || p.repository || '/' || p.name || '@' || p.version,
                            pf.path, pf.sha256, pf.size, b.size
                       FROM package_files pf JOIN packages p ON p.id = pf.package_id
                       JOIN blobs b ON b.sha256 = pf.sha256
                      WHERE pf.size != b.size
                     LIMIT ?1",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([limit as i64], |r| {
                    Ok(MisSized {
                        owner: r.get(0)?,
                        path: r.get(1)?,
                        sha256: r.get(2)?,
                        claimed: r.get::<_, i64>(3)? as u64,
                        actual: r.get::<_, i64>(4)? as u64,
                    })
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(rows)
        })
        .await
    }

    async fn referenced_blobs(&self) -> Result<Vec<(String, Option<u64>)>, DbError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT f.sha256, MAX(b.size) FROM files f
                       JOIN uploads u ON u.id = f.upload_id
                       JOIN artifacts a ON a.id = f.artifact_id
                       LEFT JOIN blobs b ON b.sha256 = f.sha256
                     WHERE u.state = 'finished' AND a.state = 'finished'
                     GROUP BY f.sha256
                     UNION
                     SELECT pf.sha256, MAX(b.size) FROM package_files pf
                       LEFT JOIN blobs b ON b.sha256 = pf.sha256
                     GROUP BY pf.sha256",
                )
                .map_err(backend)?;
            let rows: Vec<(String, Option<u64>)> = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.map(|n| n as u64)))
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            let mut seen = HashSet::new();
            Ok(rows
                .into_iter()
                .filter(|(d, _)| seen.insert(d.clone()))
                .collect())
        })
        .await
    }
}
