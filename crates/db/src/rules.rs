//! Every metadata rule and query, once, for both databases.
//!
//! Each function runs inside one transaction of a backend ([`crate::sql`]):
//! writes inside a write transaction, reads on a reader connection. The
//! rules (artifact naming, the default artifact, staging takeover,
//! supersession, quotas, sizes, retention) and their error messages live
//! here and nowhere else.
//!
//! Concurrency. SQLite runs one write transaction at a time, so on it the
//! rules below are serialized. PostgreSQL runs at its default isolation
//! (`READ COMMITTED`), and there uniqueness comes from the database:
//! - rows found by key (organization, cluster, pipeline, run, job) are
//!   inserted with `ON CONFLICT DO NOTHING` against their unique index and
//!   then read back, so two writers creating one run get the same row;
//! - name claims and artifact creation in a run hold the run's row lock
//!   ([`Lock::Run`]), run numbering the pipeline's; whatever changes an
//!   artifact's files or state holds the artifact's (staging takeover,
//!   finishing, failing, deleting, promoting), and finishing or failing an
//!   upload also the upload's. Locks are taken in one order, run →
//!   artifact → upload (blobs in digest order), so they cannot deadlock
//!   one another; a GitHub Actions upload in progress ([`crate::gha`]) is
//!   locked before the blob rows it records;
//! - an upload that references recorded content, and a finish, touch the
//!   content's `blobs` row (`created_at` = now) under its row lock.
//!   Garbage collection locks the row before the statement that deletes
//!   it while old and unreferenced. A concurrent touch either comes first
//!   (the delete's statement then starts after that upload committed, and
//!   sees its files) or finds the row gone (the content is then reported
//!   missing, never assumed).

use std::collections::{BTreeMap, HashMap, HashSet};

use satchel_model::api::{
    Artifact, ArtifactState, CreateTyped, CreateUpload, FileInfo, ImageInfo, JobContext, LinkInfo,
    NewFile, NewRun, Package, PackageFile, PackageOrigin, PackageWithFiles, PinnedSource, Producer,
    Promote, Run, RunRef, RunState, SetRunState, UploadFinished, UploadState,
};
use satchel_model::id::{new_id, now_millis, rfc3339_millis};
use satchel_model::selector::RunSelector;

use crate::sql::{args, marks, Lock, Row, Sql, Value};
use crate::{DbError, JobSummary, MisSized, Quotas, UploadNeeds, UploadPlan};

pub(crate) fn to_i64(n: u64, what: &str) -> Result<i64, DbError> {
    i64::try_from(n).map_err(|_| DbError::Invalid(format!("{what} {n} is too large")))
}

/// Rows per multi-row statement: well under both databases' parameter
/// limits (SQLite 32,766, PostgreSQL 65,535) for the widest row (12).
pub(crate) const BATCH_ROWS: usize = 500;

/// `(?a, ?b, …), (…)`: placeholders for `rows` rows of `width` values,
/// numbered from `?first`.
pub(crate) fn value_rows(rows: usize, width: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (0..width)
                .map(|c| format!("?{}", first + r * width + c))
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Touches the recorded blobs among `digests` (sorted, distinct): their
/// `created_at` becomes `now`. Returns the ones recorded, with their sizes.
/// One statement per [`BATCH_ROWS`] digests.
fn touch_blobs(
    c: &mut dyn Sql,
    digests: &[&str],
    now: i64,
) -> Result<HashMap<String, i64>, DbError> {
    let mut found = HashMap::new();
    for chunk in digests.chunks(BATCH_ROWS) {
        // Where the lock tells which rows exist, only those are updated
        // (none, for new content).
        let locked = c.lock_blobs(chunk)?;
        let update: Vec<&str> = match &locked {
            Some(rows) => rows.iter().map(|(d, _)| d.as_str()).collect(),
            None => chunk.to_vec(),
        };
        if update.is_empty() {
            continue;
        }
        let mut a = vec![Value::Int(now)];
        a.extend(update.iter().map(|d| Value::from(*d)));
        let sql = format!(
            "UPDATE blobs SET created_at = ?1 WHERE sha256 IN ({})",
            marks(update.len(), 2)
        );
        match locked {
            Some(rows) => {
                c.execute(&sql, &a)?;
                found.extend(rows);
            }
            None => {
                for mut r in c.query(&format!("{sql} RETURNING sha256, size"), &a)? {
                    found.insert(r.text(0)?, r.int(1)?);
                }
            }
        }
    }
    Ok(found)
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, DbError> {
    serde_json::to_string(v).map_err(|e| DbError::Backend(e.to_string()))
}

/// The producer of a file or artifact: pipeline key, run number, stage,
/// job key, attempt and superseded, from column `at` on (the `p.key,
/// r.number, j.stage, j.key, j.attempt, EXISTS (…)` of the selects below).
fn producer(r: &mut Row, at: usize) -> Result<Producer, DbError> {
    Ok(Producer {
        pipeline: r.text(at)?,
        run: r.uint(at + 1)?,
        stage: r.opt_text(at + 2)?,
        job: r.text(at + 3)?,
        attempt: r.uint(at + 4)? as u32,
        superseded: r.boolean(at + 5)?,
    })
}

/// The select of visible-file rows, in the column order [`file_row`]
/// reads; `$producer` is the pipeline key and run number columns, `$joins`
/// the joins they need, `$where` which rows (by default finished uploads
/// of finished artifacts).
macro_rules! file_select {
    ($producer:literal, $joins:literal) => {
        file_select!(
            $producer,
            $joins,
            "u.state = 'finished' AND a.state = 'finished'"
        )
    };
    ($producer:literal, $joins:literal, $where:literal) => {
        concat!(
            "
SELECT f.id, f.artifact_id, a.name, f.path, f.size, f.sha256, f.mode, f.content_type, u.step,
       ",
            $producer,
            ", j.stage, j.key, j.attempt,
       j.superseded,
       f.source_path, f.glob, u.finished_at
FROM files f
JOIN uploads u ON u.id = f.upload_id
JOIN artifacts a ON a.id = f.artifact_id
JOIN jobs j ON j.id = a.job_id",
            $joins,
            "
WHERE ",
            $where
        )
    };
}

/// [`FILE_SELECT`] of finished uploads whatever their artifact's state.
pub(crate) const ANY_ARTIFACT_FILE_SELECT: &str = file_select!(
    "p.key, r.number",
    "
JOIN runs r ON r.id = j.run_id
JOIN pipelines p ON p.id = r.pipeline_id",
    "u.state = 'finished'"
);

/// Columns of a visible-file row, in the order [`file_row`] reads them.
pub(crate) const FILE_SELECT: &str = file_select!(
    "p.key, r.number",
    "
JOIN runs r ON r.id = j.run_id
JOIN pipelines p ON p.id = r.pipeline_id"
);

/// [`FILE_SELECT`] for files of one run (the caller adds `f.run_id` or
/// `f.artifact_id` and `j.run_id`), without the run and pipeline: every
/// row's are the run's, which [`fill_producer_run`] sets. Two joins fewer
/// make PostgreSQL plan a search in a fraction of the time.
pub(crate) const RUN_FILE_SELECT: &str = file_select!("'', 0", "");

/// Sets the pipeline key and run number of files read with
/// [`RUN_FILE_SELECT`] from run `run_id`.
pub(crate) fn fill_producer_run(
    c: &mut dyn Sql,
    run_id: &str,
    files: &mut [FileInfo],
) -> Result<(), DbError> {
    if files.is_empty() {
        return Ok(());
    }
    let mut r = c.query_one(
        "SELECT p.key, r.number FROM runs r JOIN pipelines p ON p.id = r.pipeline_id
         WHERE r.id = ?1",
        args![run_id],
    )?;
    let (pipeline, number) = (r.text(0)?, r.uint(1)?);
    for f in files {
        f.producer.pipeline.clone_from(&pipeline);
        f.producer.run = number;
    }
    Ok(())
}

pub(crate) fn file_row(mut r: Row) -> Result<FileInfo, DbError> {
    let at = r.int(17)?;
    Ok(FileInfo {
        id: r.text(0)?,
        artifact_id: r.text(1)?,
        artifact_name: r.text(2)?,
        path: r.text(3)?,
        size: r.uint(4)?,
        sha256: r.text(5)?,
        mode: r.uint(6)? as u32,
        content_type: r.text(7)?,
        step: r.opt_text(8)?,
        producer: producer(&mut r, 9)?,
        source_path: r.opt_text(15)?,
        glob: r.opt_text(16)?,
        uploaded_at: rfc3339_millis(at),
        uploaded_at_ms: at,
    })
}

/// Columns of an artifact row with its visible totals.
pub(crate) const ARTIFACT_SELECT: &str = "
SELECT a.id, a.name, a.is_default, a.kind, a.state, a.created_at,
       p.key, r.number, j.stage, j.key, j.attempt,
       j.superseded,
       a.file_count, a.total_size, a.meta,
       (SELECT string_agg(s.step, ',') FROM (SELECT DISTINCT u.step AS step FROM uploads u
         WHERE u.artifact_id = a.id AND u.state = 'finished' AND u.step IS NOT NULL) s)
FROM artifacts a
JOIN jobs j ON j.id = a.job_id
JOIN runs r ON r.id = j.run_id
JOIN pipelines p ON p.id = r.pipeline_id";

pub(crate) fn artifact_row(mut r: Row) -> Result<Artifact, DbError> {
    let state = r.state(4, ArtifactState::parse)?;
    let kind = r.text(3)?;
    let meta = r.opt_text(14)?;
    let (image, link) = parse_meta(&kind, meta.as_deref());
    let mut steps: Vec<String> = r
        .opt_text(15)?
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    steps.sort();
    Ok(Artifact {
        steps,
        image,
        link,
        id: r.text(0)?,
        name: r.text(1)?,
        is_default: r.boolean(2)?,
        kind,
        state,
        created_at: rfc3339_millis(r.int(5)?),
        producer: producer(&mut r, 6)?,
        file_count: r.uint(12)?,
        size: r.uint(13)?,
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

pub(crate) const RUN_SELECT: &str =
    "SELECT r.id, p.key, r.number, r.branch, r.commit_sha, r.state, r.created_at, r.finished_at,
       r.sources,
       (SELECT p2.key FROM runs r2 JOIN pipelines p2 ON p2.id = r2.pipeline_id
         WHERE r2.id = r.triggered_from),
       (SELECT r2.number FROM runs r2 WHERE r2.id = r.triggered_from),
       r.build_id, r.failed_jobs
FROM runs r JOIN pipelines p ON p.id = r.pipeline_id";

pub(crate) fn run_row(mut r: Row) -> Result<Run, DbError> {
    let sources = r.opt_text(8)?;
    let triggered_pipeline = r.opt_text(9)?;
    let triggered_run = r.opt_int(10)?;
    Ok(Run {
        finished_at: r.opt_int(7)?.map(rfc3339_millis),
        sources: sources
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
        triggered_from: triggered_pipeline
            .zip(triggered_run)
            .map(|(pipeline, run)| RunRef {
                pipeline,
                run: run as u64,
            }),
        build_id: r.opt_text(11)?,
        failed_jobs: r.opt_text(12)?.and_then(|j| serde_json::from_str(&j).ok()),
        id: r.text(0)?,
        pipeline: r.text(1)?,
        number: r.uint(2)?,
        branch: r.opt_text(3)?,
        commit: r.opt_text(4)?,
        state: r.state(5, |s| RunState::parse(s).ok())?,
        created_at: rfc3339_millis(r.int(6)?),
    })
}

pub(crate) fn rows<T>(
    c: &mut dyn Sql,
    sql: &str,
    a: &[Value],
    f: fn(Row) -> Result<T, DbError>,
) -> Result<Vec<T>, DbError> {
    c.query(sql, a)?.into_iter().map(f).collect()
}

pub(crate) fn get_artifact(c: &mut dyn Sql, id: &str) -> Result<Artifact, DbError> {
    c.query_opt(
        &format!("{ARTIFACT_SELECT} WHERE a.id = ?1 AND a.state != 'deleted'"),
        args![id],
    )?
    .map(artifact_row)
    .transpose()?
    .ok_or_else(|| DbError::NotFound(format!("artifact {id} not found")))
}

/// Finds or creates a row by its unique key. `select` reads its id with
/// the key as `?1`, `?2` …; `insert` takes `(id, key…, created_at)` and
/// ends in `ON CONFLICT DO NOTHING`, so a concurrent creator's row wins
/// and is read back.
pub(crate) fn ensure(
    c: &mut dyn Sql,
    select: &str,
    insert: &str,
    keys: &[Value],
) -> Result<String, DbError> {
    if let Some(mut r) = c.query_opt(select, keys)? {
        return r.text(0);
    }
    let mut all = Vec::with_capacity(keys.len() + 2);
    all.push(Value::Text(new_id()));
    all.extend_from_slice(keys);
    all.push(Value::Int(now_millis()));
    c.execute(insert, &all)?;
    c.query_one(select, keys)?.text(0)
}

/// Finds the pipeline by key, wherever it lives, or creates it in the
/// default organization's default cluster. (The server first puts a
/// pipeline that a scoped token brings into the token's cluster, see
/// `crate::access::ensure_pipeline_in`.)
fn ensure_pipeline(c: &mut dyn Sql, pipeline: &str) -> Result<String, DbError> {
    if let Some(mut r) = c.query_opt("SELECT id FROM pipelines WHERE key = ?1", args![pipeline])? {
        return r.text(0);
    }
    let org = ensure(
        c,
        "SELECT id FROM organizations WHERE key = ?1",
        "INSERT INTO organizations (id, key, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        args!["default"],
    )?;
    let cluster = ensure(
        c,
        "SELECT id FROM clusters WHERE organization_id = ?1 AND key = ?2",
        "INSERT INTO clusters (id, organization_id, key, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        args![org, "default"],
    )?;
    c.execute(
        "INSERT INTO pipelines (id, cluster_id, key, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        args![new_id(), cluster, pipeline, now_millis()],
    )?;
    c.query_one("SELECT id FROM pipelines WHERE key = ?1", args![pipeline])?
        .text(0)
}

/// Finds or creates a run by number, recording branch, commit and the CI's
/// build id where it has none yet.
fn ensure_run(
    c: &mut dyn Sql,
    pipeline: &str,
    number: u64,
    (branch, commit): (Option<&str>, Option<&str>),
    build: Option<&str>,
) -> Result<String, DbError> {
    let pipeline = ensure_pipeline(c, pipeline)?;
    let run_number = to_i64(number, "run number")?;
    let run = ensure(
        c,
        "SELECT id FROM runs WHERE pipeline_id = ?1 AND number = ?2",
        "INSERT INTO runs (id, pipeline_id, number, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        args![pipeline, run_number],
    )?;
    if branch.is_some() || commit.is_some() {
        c.execute(
            "UPDATE runs SET branch = COALESCE(branch, ?2), commit_sha = COALESCE(commit_sha, ?3)
             WHERE id = ?1 AND (branch IS NULL OR commit_sha IS NULL)",
            args![&run, branch, commit],
        )?;
    }
    if let Some(build) = build {
        c.execute(
            "UPDATE runs SET build_id = ?2 WHERE id = ?1 AND build_id IS NULL",
            args![&run, build],
        )?;
    }
    Ok(run)
}

/// Finds or creates the run and job attempt of `ctx`: `(run id, job id)`,
/// holding the run's lock (artifacts are created and named under it).
fn ensure_job(c: &mut dyn Sql, ctx: &JobContext) -> Result<(String, String), DbError> {
    let run = ensure_run(
        c,
        &ctx.pipeline,
        ctx.run,
        (ctx.branch.as_deref(), ctx.commit.as_deref()),
        ctx.build.as_deref(),
    )?;
    c.lock(Lock::Run, &run)?;
    let job = ensure(
        c,
        "SELECT id FROM jobs WHERE run_id = ?1 AND key = ?2 AND attempt = ?3",
        "INSERT INTO jobs (id, run_id, key, attempt, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO NOTHING",
        args![&run, &ctx.job, ctx.attempt as i64],
    )?;
    // The one owner of supersession: every attempt below the job's latest
    // is superseded (this one too, when a later attempt came first).
    c.execute(
        "UPDATE jobs SET superseded = TRUE
         WHERE run_id = ?1 AND key = ?2 AND NOT superseded
           AND attempt < (SELECT MAX(attempt) FROM jobs WHERE run_id = ?1 AND key = ?2)",
        args![&run, &ctx.job],
    )?;
    if let Some(stage) = &ctx.stage {
        c.execute(
            "UPDATE jobs SET stage = ?2 WHERE id = ?1 AND stage IS NULL",
            args![&job, stage],
        )?;
    }
    Ok((run, job))
}

/// Checks that job `job` of `ctx` may use artifact name `name` in `run`;
/// returns the job's own live artifact of that name, if any, with its state.
/// The caller holds the run's lock.
///
/// Names are unique in a run. Another job's artifact of that name is a
/// conflict (unless its upload failed: a failed upload holds no name), as
/// is a later attempt's. An earlier attempt of the same job does not block
/// (the retry gets its own copy). With `exclusive` (publish semantics), the
/// job's own finished artifact of that name is a conflict too. With
/// `replace`, no finished artifact is a conflict, nor reused: the upload
/// gets a new artifact, which replaces them when it finishes.
fn claim_name(
    c: &mut dyn Sql,
    run: &str,
    job: &str,
    ctx: &JobContext,
    name: &str,
    exclusive: bool,
    replace: bool,
) -> Result<Option<(String, ArtifactState)>, DbError> {
    let mut existing = Vec::new();
    for mut r in c.query(
        "SELECT a.id, j.id, j.key, j.attempt, a.state FROM artifacts a JOIN jobs j ON j.id = a.job_id
         WHERE a.run_id = ?1 AND a.name = ?2 AND a.is_default = 0
           AND a.state NOT IN ('deleted', 'expired')",
        args![run, name],
    )? {
        existing.push((
            r.text(0)?,
            r.text(1)?,
            r.text(2)?,
            r.int(3)?,
            r.state(4, ArtifactState::parse)?,
        ));
    }
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
    existing.sort_by_key(|(_, jid, ..)| jid == job);
    let mut mine = None;
    let own = existing.iter().filter(|(_, jid, ..)| jid == job).count();
    for (aid, jid, jkey, jattempt, state) in existing {
        if replace && state == ArtifactState::Finished {
            continue;
        }
        if jid == job && own > 1 && !replace {
            // Its finished artifact and a replacement still uploading.
            return Err(DbError::Conflict(format!(
                "artifact {name:?} of job {jkey:?} is being replaced (`--replace`) right now; try again when that upload ends"
            )));
        }
        if jid == job {
            if exclusive && state == ArtifactState::Finished {
                return Err(conflict(&jkey, jattempt));
            }
            // Ours, possibly after a failed or interrupted upload: reuse it.
            mine = Some((aid, state));
        } else if state == ArtifactState::Error {
            // Another job's upload that never finished holds no name.
        } else if jkey != ctx.job || jattempt > ctx.attempt as i64 {
            return Err(conflict(&jkey, jattempt));
        }
    }
    Ok(mine)
}

/// Refuses when `run` holds more live artifacts than the quota allows
/// (counted inside the transaction that added one).
fn check_artifacts_per_run(c: &mut dyn Sql, run: &str, quotas: &Quotas) -> Result<(), DbError> {
    let n = c
        .query_one(
            "SELECT COUNT(*) FROM artifacts WHERE run_id = ?1
               AND state NOT IN ('deleted', 'expired', 'error')",
            args![run],
        )?
        .uint(0)?;
    if n > quotas.artifacts_per_run {
        return Err(DbError::Limit(format!(
            "a run may hold at most {} artifacts (satchel serve --max-artifacts-per-run); this one is full",
            quotas.artifacts_per_run
        )));
    }
    Ok(())
}

pub(crate) fn create_upload(
    c: &mut dyn Sql,
    req: &CreateUpload,
    quotas: &Quotas,
    prove_in: Option<(&str, &str)>,
) -> Result<UploadPlan, DbError> {
    let ctx = &req.context;
    let (run, job) = ensure_job(c, ctx)?;

    let now = now_millis();
    let name = req.name.as_deref().filter(|n| *n != "default");
    // Whether this upload adds an artifact to the run (counted against
    // the run's quota; adding files to one does not).
    let mut created = false;
    let found = match name {
        None => c
            .query_opt(
                "SELECT id FROM artifacts WHERE job_id = ?1 AND is_default = 1
                   AND state NOT IN ('deleted', 'expired')",
                args![&job],
            )?
            .map(|mut r| r.text(0))
            .transpose()?,
        Some(name) => {
            claim_name(c, &run, &job, ctx, name, req.exclusive, req.replace)?.map(|(id, _)| id)
        }
    };
    let artifact_id = match found {
        Some(id) => id,
        None => {
            let id = new_id();
            c.execute(
                "INSERT INTO artifacts (id, run_id, job_id, name, is_default, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'uploading', ?6)",
                args![
                    &id,
                    &run,
                    &job,
                    name.unwrap_or("default"),
                    name.is_none() as i64,
                    now
                ],
            )?;
            created = true;
            id
        }
    };
    // Its files and state are read and changed below: a finish, abort or
    // delete of it waits (see the module's concurrency notes).
    c.lock(Lock::Artifact, &artifact_id)?;
    // Reused after its uploads failed: it is being uploaded again, so it
    // holds its name again (a failed artifact holds none).
    c.execute(
        "UPDATE artifacts SET state = 'uploading' WHERE id = ?1 AND state = 'error'",
        args![&artifact_id],
    )?;
    if let Some(secs) = req.expire_in_secs {
        // Only while the artifact is being created: later uploads into a
        // finished artifact do not move its expiry.
        c.execute(
            "UPDATE artifacts SET expires_at = created_at + ?2 WHERE id = ?1 AND state != 'finished'",
            args![&artifact_id, (secs as i64).saturating_mul(1000)],
        )?;
    }
    let mut r = c.query_one(
        "SELECT name, state, kind FROM artifacts WHERE id = ?1",
        args![&artifact_id],
    )?;
    let (artifact_name, artifact_state, kind) =
        (r.text(0)?, r.state(1, ArtifactState::parse)?, r.text(2)?);
    if kind != "files" {
        return Err(DbError::Conflict(format!(
            "artifact {artifact_name:?} is a {kind} artifact; files cannot be added to it"
        )));
    }
    if matches!(
        artifact_state,
        ArtifactState::Deleted | ArtifactState::Expired
    ) {
        return Err(DbError::Conflict(format!(
            "artifact {artifact_name:?} was {artifact_state}; it cannot take new files"
        )));
    }

    // Files the artifact already has. Finished ones are permanent; ones
    // staged by another unfinished upload (e.g. a crashed or abandoned
    // attempt of this same command) move to this upload.
    let mut existing: HashMap<String, (String, String, bool, u64)> = HashMap::new();
    for mut r in c.query(
        "SELECT f.path, f.sha256, f.id, u.state = 'finished', f.size FROM files f
           JOIN uploads u ON u.id = f.upload_id
         WHERE f.artifact_id = ?1 AND u.state != 'error'",
        args![&artifact_id],
    )? {
        existing.insert(
            r.text(0)?,
            (r.text(1)?, r.text(2)?, r.boolean(3)?, r.uint(4)?),
        );
    }

    let upload_id = new_id();
    c.execute(
        "INSERT INTO uploads (id, artifact_id, step, state, created_at)
         VALUES (?1, ?2, ?3, 'uploading', ?4)",
        args![&upload_id, &artifact_id, &ctx.step, now],
    )?;
    // What finishing will replace, chosen under the run's lock: the run's
    // finished artifacts of the name, but not another attempt's of this
    // job (a retry gets its own copy, as without `replace`).
    let mut replaces = Vec::new();
    if req.replace {
        for mut r in c.query(
            "SELECT a.id FROM artifacts a JOIN jobs j ON j.id = a.job_id
             WHERE a.run_id = ?1 AND a.name = ?2 AND a.is_default = 0 AND a.state = 'finished'
               AND a.id != ?3 AND (j.id = ?4 OR j.key != ?5)
             ORDER BY a.id",
            args![&run, &artifact_name, &artifact_id, &job, &ctx.job],
        )? {
            replaces.push(r.text(0)?);
        }
        for id in &replaces {
            c.execute(
                "INSERT INTO upload_replaces (upload_id, artifact_id) VALUES (?1, ?2)",
                args![&upload_id, id],
            )?;
        }
    }

    let sizes = check_sizes(&req.files)?;
    let mut seen = HashSet::new();
    let mut wanted = HashSet::new();
    let mut already_present = 0u64;
    let mut rows: Vec<Value> = Vec::new();
    for f in &req.files {
        if !seen.insert(f.path.as_str()) {
            return Err(DbError::Invalid(format!(
                "the manifest lists {:?} twice",
                f.path
            )));
        }
        if let Some((old, file_id, finished, stored)) = existing.get(&f.path) {
            if !finished {
                c.execute("DELETE FROM files WHERE id = ?1", args![file_id])?;
            } else if *old == f.sha256 && *stored != f.size {
                return Err(DbError::SizeMismatch(format!(
                    "{:?} claims {} bytes, but the content with sha256 {old} has {stored}",
                    f.path, f.size
                )));
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
        rows.extend_from_slice(args![
            new_id(),
            &artifact_id,
            &run,
            &upload_id,
            &f.path,
            to_i64(f.size, "file size")?,
            &f.sha256,
            (f.mode & 0o7777) as i64,
            content_type,
            &f.source_path,
            &f.glob,
            now
        ]);
        wanted.insert(f.sha256.as_str());
    }
    const FILE_COLUMNS: usize = 12;
    for chunk in rows.chunks(FILE_COLUMNS * BATCH_ROWS) {
        c.execute(
            &format!(
                "INSERT INTO files (id, artifact_id, run_id, upload_id, path, size, sha256, mode,
                                    content_type, source_path, glob, created_at)
                 VALUES {}",
                value_rows(chunk.len() / FILE_COLUMNS, FILE_COLUMNS, 1)
            ),
            chunk,
        )?;
    }
    // Recorded content this upload relies on is made young again (see the
    // module's concurrency notes); what is not recorded is missing. A size
    // that contradicts stored content is refused before any quota.
    let mut wanted: Vec<&str> = wanted.into_iter().collect();
    wanted.sort_unstable();
    let recorded = touch_blobs(c, &wanted, now)?;
    check_stored_sizes(&sizes, &recorded)?;
    if created {
        check_artifacts_per_run(c, &run, quotas)?;
    }
    let files = c
        .query_one(
            "SELECT COUNT(*) FROM files f JOIN uploads u ON u.id = f.upload_id
             WHERE f.artifact_id = ?1 AND u.state != 'error'",
            args![&artifact_id],
        )?
        .uint(0)?;
    if files > quotas.files_per_artifact {
        return Err(DbError::Limit(format!(
            "an artifact may hold at most {} files (satchel serve --max-files-per-artifact); {artifact_name:?} would hold {files}",
            quotas.files_per_artifact
        )));
    }
    let mut missing: Vec<String> = wanted
        .iter()
        .filter(|d| !recorded.contains_key(**d))
        .map(|d| d.to_string())
        .collect();
    if let Some(home) = prove_in {
        // Held content counts as present only if this cluster holds it.
        // Everything missing is owed until this upload sends it (content
        // nobody holds now may be stored by someone else before this
        // upload finishes); what is held elsewhere must come whole, never
        // assembled from stored chunks. New content may reuse chunks.
        let held: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|d| recorded.contains_key(*d))
            .collect();
        let known = held_in_cluster(c, home, &held)?;
        let elsewhere: HashSet<&str> = held.into_iter().filter(|d| !known.contains(*d)).collect();
        missing.extend(elsewhere.iter().map(|d| d.to_string()));
        missing.sort_unstable();
        for chunk in missing.chunks(BATCH_ROWS) {
            let mut a = Vec::with_capacity(chunk.len() * 3);
            for d in chunk {
                a.push(Value::from(&upload_id));
                a.push(Value::from(d));
                a.push(Value::Int(i64::from(elsewhere.contains(d.as_str()))));
            }
            c.execute(
                &format!(
                    "INSERT INTO upload_owed (upload_id, sha256, whole) VALUES {}",
                    value_rows(chunk.len(), 3, 1)
                ),
                &a,
            )?;
        }
    }
    Ok(UploadPlan {
        upload_id,
        artifact_id,
        artifact_name,
        missing,
        already_present,
        replaces,
    })
}

/// The digests among `digests` that a finished upload of a pipeline in
/// cluster `cluster` of organization `org` holds. (Per cluster, not per
/// organization: what one cluster may not read, another cluster's upload
/// must not obtain by naming it.) Each digest stops at its first holder.
fn held_in_cluster(
    c: &mut dyn Sql,
    (org, cluster): (&str, &str),
    digests: &[&str],
) -> Result<HashSet<String>, DbError> {
    let mut out = HashSet::new();
    for chunk in digests.chunks(BATCH_ROWS) {
        let mut a = vec![Value::from(org), Value::from(cluster)];
        a.extend(chunk.iter().map(|d| Value::from(*d)));
        let values = (0..chunk.len())
            .map(|i| format!("(CAST(?{} AS TEXT))", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        for mut r in c.query(
            &format!(
                "WITH wanted(sha) AS (VALUES {values})
                 SELECT sha FROM wanted WHERE EXISTS (
                     SELECT 1 FROM files f
                     JOIN uploads u ON u.id = f.upload_id
                     JOIN artifacts a ON a.id = f.artifact_id
                     JOIN runs r ON r.id = a.run_id
                     JOIN pipelines p ON p.id = r.pipeline_id
                     JOIN clusters cl ON cl.id = p.cluster_id
                     JOIN organizations o ON o.id = cl.organization_id
                     WHERE f.sha256 = wanted.sha AND u.state = 'finished'
                       AND o.key = ?1 AND cl.key = ?2)"
            ),
            &a,
        )? {
            out.insert(r.text(0)?);
        }
    }
    Ok(out)
}

/// Records blobs that upload `upload_id` sent (their bytes verified), so
/// it owes them no more.
pub(crate) fn record_blobs_for(
    c: &mut dyn Sql,
    upload_id: &str,
    blobs: &[(String, u64)],
) -> Result<(), DbError> {
    record_blobs(c, blobs)?;
    let mut digests: Vec<&str> = blobs.iter().map(|(d, _)| d.as_str()).collect();
    digests.sort_unstable();
    digests.dedup();
    for chunk in digests.chunks(BATCH_ROWS) {
        let mut a = vec![Value::from(upload_id)];
        a.extend(chunk.iter().map(|d| Value::from(*d)));
        c.execute(
            &format!(
                "DELETE FROM upload_owed WHERE upload_id = ?1 AND sha256 IN ({})",
                marks(chunk.len(), 2)
            ),
            &a,
        )?;
    }
    Ok(())
}

/// Refuses a manifest whose sizes contradict themselves: one digest is one
/// size. Returns each digest's path and size, for [`check_stored_sizes`].
fn check_sizes(files: &[NewFile]) -> Result<HashMap<&str, (&str, u64)>, DbError> {
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
    Ok(sizes)
}

/// Refuses a manifest whose sizes contradict the content already held
/// (`recorded`: digest and stored size). Without this a file could claim
/// any size for content another pipeline stored, and every reader that
/// trusts the recorded size (archives, fsck, range requests) would be
/// misled about bytes the uploader never sent.
fn check_stored_sizes(
    sizes: &HashMap<&str, (&str, u64)>,
    recorded: &HashMap<String, i64>,
) -> Result<(), DbError> {
    let mut wrong: Vec<(&str, u64, &str, i64)> = recorded
        .iter()
        .filter_map(|(sha, &stored)| {
            let &(path, size) = sizes.get(sha.as_str())?;
            (i64::try_from(size) != Ok(stored)).then_some((path, size, sha.as_str(), stored))
        })
        .collect();
    wrong.sort_unstable();
    match wrong.first() {
        Some((path, size, sha, stored)) => Err(DbError::SizeMismatch(format!(
            "{path:?} claims {size} bytes, but the content with sha256 {sha} has {stored}"
        ))),
        None => Ok(()),
    }
}

pub(crate) fn upload_needs(c: &mut dyn Sql, id: &str) -> Result<UploadNeeds, DbError> {
    let mut r = c
        .query_opt(
            "SELECT u.state, p.key, r.number, j.stage, j.key, j.attempt, 0
             FROM uploads u
             JOIN artifacts a ON a.id = u.artifact_id
             JOIN jobs j ON j.id = a.job_id
             JOIN runs r ON r.id = a.run_id
             JOIN pipelines p ON p.id = r.pipeline_id
             WHERE u.id = ?1",
            args![id],
        )?
        .ok_or_else(|| DbError::NotFound(format!("upload {id} not found")))?;
    let state = r.state(0, UploadState::parse)?;
    let producer = producer(&mut r, 1)?;
    let mut blobs = HashMap::new();
    for mut r in c.query(
        "SELECT DISTINCT sha256, size FROM files WHERE upload_id = ?1",
        args![id],
    )? {
        blobs.insert(r.text(0)?, r.uint(1)?);
    }
    let mut owed = HashSet::new();
    for mut r in c.query(
        "SELECT sha256 FROM upload_owed WHERE upload_id = ?1 AND whole = 1",
        args![id],
    )? {
        owed.insert(r.text(0)?);
    }
    Ok(UploadNeeds {
        state,
        blobs,
        producer,
        owed,
    })
}

pub(crate) fn known_blobs(c: &mut dyn Sql, digests: &[String]) -> Result<HashSet<String>, DbError> {
    let mut out = HashSet::new();
    for chunk in digests.chunks(BATCH_ROWS) {
        let a: Vec<Value> = chunk.iter().map(Value::from).collect();
        for mut r in c.query(
            &format!(
                "SELECT sha256 FROM blobs WHERE sha256 IN ({})",
                marks(chunk.len(), 1)
            ),
            &a,
        )? {
            out.insert(r.text(0)?);
        }
    }
    Ok(out)
}

pub(crate) fn record_blobs(c: &mut dyn Sql, blobs: &[(String, u64)]) -> Result<(), DbError> {
    let now = now_millis();
    // Sorted and distinct: one row may not be updated twice by one
    // statement, and rows are locked in digest order.
    // Of two sizes given for one digest, the smaller is kept (as when
    // rows went in one by one, in sorted order).
    let mut sorted: std::collections::BTreeMap<&str, u64> = BTreeMap::new();
    for (d, n) in blobs {
        sorted
            .entry(d.as_str())
            .and_modify(|s| *s = (*s).min(*n))
            .or_insert(*n);
    }
    let sorted: Vec<(&str, u64)> = sorted.into_iter().collect();
    for chunk in sorted.chunks(BATCH_ROWS) {
        let mut a = Vec::with_capacity(chunk.len() * 3);
        for (d, size) in chunk {
            a.extend_from_slice(args![*d, to_i64(*size, "blob size")?, now]);
        }
        c.execute(
            &format!(
                "INSERT INTO blobs (sha256, size, created_at) VALUES {}
                 ON CONFLICT (sha256) DO UPDATE SET created_at = excluded.created_at",
                value_rows(chunk.len(), 3, 1)
            ),
            &a,
        )?;
    }
    Ok(())
}

/// The paths `sql` (ending in `LIMIT 11`, parameter `?1` = `upload_id`)
/// returns, as an error message lists them: the first ten, then `, …`;
/// `None` when there are none.
fn first_paths(c: &mut dyn Sql, sql: &str, upload_id: &str) -> Result<Option<String>, DbError> {
    let paths: Vec<String> = c
        .query(sql, args![upload_id])?
        .into_iter()
        .map(|mut r| r.text(0))
        .collect::<Result<_, _>>()?;
    if paths.is_empty() {
        return Ok(None);
    }
    let more = if paths.len() > 10 { ", …" } else { "" };
    Ok(Some(format!(
        "{}{more}",
        paths[..paths.len().min(10)].join(", ")
    )))
}

/// For a replacing upload still uploading: locks its run, then the
/// artifacts it replaces (chosen at create, in id order), and returns them.
fn lock_replaced(c: &mut dyn Sql, upload_id: &str) -> Result<Vec<String>, DbError> {
    // An upload's artifact, and an artifact's run, never change.
    let ids: Vec<String> = c
        .query(
            "SELECT r.artifact_id FROM upload_replaces r JOIN uploads u ON u.id = r.upload_id
             WHERE r.upload_id = ?1 AND u.state = 'uploading' ORDER BY r.artifact_id",
            args![upload_id],
        )?
        .into_iter()
        .map(|mut r| r.text(0))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Ok(ids);
    }
    let run = c
        .query_one(
            "SELECT a.run_id FROM uploads u JOIN artifacts a ON a.id = u.artifact_id
             WHERE u.id = ?1",
            args![upload_id],
        )?
        .text(0)?;
    c.lock(Lock::Run, &run)?;
    for id in &ids {
        c.lock(Lock::Artifact, id)?;
    }
    Ok(ids)
}

/// Locks an upload and its artifact, in the lock order (artifact first);
/// `false` when there is no such upload.
fn lock_upload(c: &mut dyn Sql, upload_id: &str) -> Result<bool, DbError> {
    // An upload's artifact never changes, so reading it unlocked is safe.
    let Some(mut r) = c.query_opt(
        "SELECT artifact_id FROM uploads WHERE id = ?1",
        args![upload_id],
    )?
    else {
        return Ok(false);
    };
    c.lock(Lock::Artifact, &r.text(0)?)?;
    c.lock(Lock::Upload, upload_id)?;
    Ok(true)
}

pub(crate) fn finish_upload(c: &mut dyn Sql, upload_id: &str) -> Result<UploadFinished, DbError> {
    // A replacing upload deletes its run's other artifacts of the name as
    // it finishes: their run and rows are locked first, in the order every
    // writer takes (run, then artifacts in id order, then the upload).
    let replaced = lock_replaced(c, upload_id)?;
    lock_upload(c, upload_id)?;
    let mut r = c
        .query_opt(
            "SELECT artifact_id, state FROM uploads WHERE id = ?1",
            args![upload_id],
        )?
        .ok_or_else(|| DbError::NotFound(format!("upload {upload_id} not found")))?;
    let (artifact_id, state) = (r.text(0)?, r.state(1, UploadState::parse)?);
    if state == UploadState::Error {
        return Err(DbError::Conflict(format!(
            "upload {upload_id} failed earlier and cannot be finished; start a new upload"
        )));
    }
    if !replaced.is_empty() {
        // Replacing with an artifact deleted meanwhile would leave neither.
        let own = c
            .query_one(
                "SELECT state FROM artifacts WHERE id = ?1",
                args![&artifact_id],
            )?
            .text(0)?;
        if own == "deleted" || own == "expired" {
            return Err(DbError::Conflict(format!(
                "the artifact upload {upload_id} fills was {own} meanwhile; nothing was replaced"
            )));
        }
    }
    let now = now_millis();
    // Touch first, check after: content collected before the touch is
    // missing below, content not yet collected is young from here on. In
    // digest order, as every writer of blob rows does. The touch returns
    // what is recorded and its size, so the checks read no blob row again.
    let mut claimed: Vec<(String, i64)> = Vec::new();
    for mut r in c.query(
        "SELECT DISTINCT sha256, size FROM files WHERE upload_id = ?1 ORDER BY sha256",
        args![upload_id],
    )? {
        claimed.push((r.text(0)?, r.int(1)?));
    }
    let mut digests: Vec<&str> = claimed.iter().map(|(d, _)| d.as_str()).collect();
    digests.dedup();
    let recorded = touch_blobs(c, &digests, now)?;
    // Content recorded after this upload was created (by another upload)
    // is checked against the sizes this one announced.
    if claimed
        .iter()
        .any(|(d, size)| recorded.get(d).is_some_and(|stored| stored != size))
    {
        let mut w = c.query_one(
            "SELECT f.path, f.size, b.size FROM files f JOIN blobs b ON b.sha256 = f.sha256
             WHERE f.upload_id = ?1 AND b.size != f.size ORDER BY f.path LIMIT 1",
            args![upload_id],
        )?;
        let (path, claimed, stored) = (w.text(0)?, w.int(1)?, w.int(2)?);
        return Err(DbError::SizeMismatch(format!(
            "{path:?} claims {claimed} bytes, but its content has {stored}; start a new upload with the right size"
        )));
    }
    // Named by a join, which also sees content another upload recorded
    // since the touch's snapshot (PostgreSQL): that is young, and present.
    if recorded.len() < digests.len() {
        if let Some(paths) = first_paths(
            c,
            "SELECT f.path FROM files f LEFT JOIN blobs b ON b.sha256 = f.sha256
             WHERE f.upload_id = ?1 AND b.sha256 IS NULL ORDER BY f.path LIMIT 11",
            upload_id,
        )? {
            return Err(DbError::Conflict(format!(
                "content has not been uploaded for: {paths}"
            )));
        }
    }
    if let Some(paths) = first_paths(
        c,
        "SELECT f.path FROM upload_owed o JOIN files f
           ON f.upload_id = o.upload_id AND f.sha256 = o.sha256
         WHERE o.upload_id = ?1 ORDER BY f.path LIMIT 11",
        upload_id,
    )? {
        return Err(DbError::Conflict(format!(
            "this upload was asked to send the content of {paths} and has not: held content is shared only within a cluster that has sent it"
        )));
    }
    let mut t = c.query_one(
        "SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM files WHERE upload_id = ?1",
        args![upload_id],
    )?;
    let (added, added_bytes) = (t.uint(0)?, t.uint(1)?);
    let (files, bytes) = (added as i64, added_bytes as i64);
    let newly = c.execute(
        "UPDATE uploads SET state = 'finished', finished_at = ?2 WHERE id = ?1 AND state = 'uploading'",
        args![upload_id, now],
    )?;
    // The artifact's totals grow once per upload (a repeated finish adds
    // nothing); its finished files stay, so they never shrink.
    let (files, bytes) = if newly == 1 { (files, bytes) } else { (0, 0) };
    c.execute(
        "UPDATE artifacts SET file_count = file_count + ?2, total_size = total_size + ?3
         WHERE id = ?1",
        args![&artifact_id, files, bytes],
    )?;
    // The swap: the artifacts it replaces go in the same transaction,
    // before this one is finished (a job's own name is unique among its
    // finished artifacts).
    if newly == 1 && !replaced.is_empty() {
        for id in &replaced {
            c.execute(
                "UPDATE artifacts SET state = 'deleted' WHERE id = ?1 AND state = 'finished'",
                args![id],
            )?;
        }
        c.execute(
            "DELETE FROM upload_replaces WHERE upload_id = ?1",
            args![upload_id],
        )?;
    }
    c.execute(
        "UPDATE artifacts SET state = 'finished', finished_at = COALESCE(finished_at, ?2)
         WHERE id = ?1 AND state IN ('uploading', 'error')",
        args![&artifact_id, now],
    )?;
    Ok(UploadFinished {
        files_added: added,
        bytes_added: added_bytes,
        artifact: get_artifact(c, &artifact_id)?,
    })
}

/// Marks an upload `error`, drops its staged files, and errors its artifact
/// when no other upload of it is alive. The caller holds the locks of
/// [`lock_upload`] (the artifact's makes "no other upload is alive" hold).
fn fail_upload(c: &mut dyn Sql, id: &str) -> Result<(), DbError> {
    c.execute("DELETE FROM files WHERE upload_id = ?1", args![id])?;
    c.execute(
        "UPDATE uploads SET state = 'error' WHERE id = ?1",
        args![id],
    )?;
    c.execute(
        "UPDATE artifacts SET state = 'error'
         WHERE id = (SELECT artifact_id FROM uploads WHERE id = ?1) AND state = 'uploading'
           AND NOT EXISTS (SELECT 1 FROM uploads u
                            WHERE u.artifact_id = artifacts.id AND u.state != 'error')",
        args![id],
    )?;
    // A failed replacement of the job's own artifact (still live) goes
    // rather than holding the name beside it.
    c.execute(
        "UPDATE artifacts SET state = 'deleted'
         WHERE id = (SELECT artifact_id FROM uploads WHERE id = ?1) AND state = 'error'
           AND EXISTS (SELECT 1 FROM artifacts o WHERE o.run_id = artifacts.run_id
                         AND o.name = artifacts.name AND o.job_id = artifacts.job_id
                         AND o.id != artifacts.id AND o.is_default = 0
                         AND o.state = 'finished')",
        args![id],
    )?;
    c.execute(
        "DELETE FROM upload_replaces WHERE upload_id = ?1",
        args![id],
    )?;
    Ok(())
}

pub(crate) fn abort_upload(c: &mut dyn Sql, id: &str) -> Result<(), DbError> {
    lock_upload(c, id)?;
    c.execute("DELETE FROM upload_owed WHERE upload_id = ?1", args![id])?;
    let state = c
        .query_opt("SELECT state FROM uploads WHERE id = ?1", args![id])?
        .map(|mut r| r.text(0))
        .transpose()?;
    match state.as_deref() {
        None => return Err(DbError::NotFound(format!("upload {id} not found"))),
        Some("finished") => {
            return Err(DbError::Conflict(format!(
                "upload {id} is already finished; delete the artifact instead"
            )))
        }
        _ => {}
    }
    fail_upload(c, id)
}

/// Uploads started before `cutoff_ms` and still `uploading`.
pub(crate) fn stale_uploads(c: &mut dyn Sql, cutoff_ms: i64) -> Result<Vec<String>, DbError> {
    c.query(
        "SELECT id FROM uploads WHERE state = 'uploading' AND created_at < ?1 ORDER BY id",
        args![cutoff_ms],
    )?
    .into_iter()
    .map(|mut r| r.text(0))
    .collect()
}

/// Fails one stale upload (one transaction each, so a long list holds no
/// locks for long); `false` when it was finished or failed meanwhile.
pub(crate) fn expire_upload(c: &mut dyn Sql, id: &str) -> Result<bool, DbError> {
    lock_upload(c, id)?;
    c.execute("DELETE FROM upload_owed WHERE upload_id = ?1", args![id])?;
    if !c.exists(
        "SELECT 1 FROM uploads WHERE id = ?1 AND state = 'uploading'",
        args![id],
    )? {
        return Ok(false);
    }
    fail_upload(c, id)?;
    Ok(true)
}

pub(crate) fn create_typed(
    c: &mut dyn Sql,
    req: &CreateTyped,
    quotas: &Quotas,
) -> Result<Artifact, DbError> {
    let ctx = &req.context;
    let (kind, meta) = match (&req.image, &req.link) {
        (Some(image), None) => {
            let info = ImageInfo::parse(image).map_err(DbError::Invalid)?;
            ("image", json(&info)?)
        }
        (None, Some(link)) => {
            let info = link.clone().validated().map_err(DbError::Invalid)?;
            ("link", json(&info)?)
        }
        _ => {
            return Err(DbError::Invalid(
                "a typed artifact has exactly one of `image` and `link`".into(),
            ))
        }
    };
    let (run, job) = ensure_job(c, ctx)?;
    if let Some((old, _)) = claim_name(c, &run, &job, ctx, &req.name, true, false)? {
        // This job's own unfinished attempt at the name: replace it.
        c.execute(
            "UPDATE artifacts SET state = 'deleted' WHERE id = ?1",
            args![&old],
        )?;
    }
    let now = now_millis();
    let id = new_id();
    c.execute(
        "INSERT INTO artifacts (id, run_id, job_id, name, is_default, kind, meta, state, created_at,
                                finished_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, 'finished', ?7, ?7, ?8)",
        args![
            &id,
            &run,
            &job,
            &req.name,
            kind,
            meta,
            now,
            req.expire_in_secs
                .map(|s| now.saturating_add((s as i64).saturating_mul(1000)))
        ],
    )?;
    check_artifacts_per_run(c, &run, quotas)?;
    // An empty, finished upload records the producing step.
    c.execute(
        "INSERT INTO uploads (id, artifact_id, step, state, created_at, finished_at)
         VALUES (?1, ?2, ?3, 'finished', ?4, ?4)",
        args![new_id(), &id, &ctx.step, now],
    )?;
    get_artifact(c, &id)
}

/// The runs whose CI build id is `build_id`, in `pipeline` or any, at
/// most [`crate::BUILD_RUNS_MAX`] + 1.
pub(crate) fn runs_by_build(
    c: &mut dyn Sql,
    build_id: &str,
    pipeline: Option<&str>,
) -> Result<Vec<Run>, DbError> {
    rows(
        c,
        &format!(
            "{RUN_SELECT} WHERE r.build_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR p.key = ?2)
             ORDER BY p.key, r.number LIMIT ?3"
        ),
        args![build_id, pipeline, (crate::BUILD_RUNS_MAX + 1) as i64],
        run_row,
    )
}

pub(crate) fn find_run(c: &mut dyn Sql, pipeline: &str, number: u64) -> Result<Run, DbError> {
    let not_found =
        || DbError::NotFound(format!("run {number} of pipeline {pipeline:?} not found"));
    let n = i64::try_from(number).map_err(|_| not_found())?;
    c.query_opt(
        &format!("{RUN_SELECT} WHERE p.key = ?1 AND r.number = ?2"),
        args![pipeline, n],
    )?
    .map(run_row)
    .transpose()?
    .ok_or_else(not_found)
}

/// The newest few runs of a pipeline as `#3 failed, #2 passed`, for messages.
fn recent_runs(c: &mut dyn Sql, pipeline: &str) -> Result<String, DbError> {
    let runs = rows(
        c,
        &format!("{RUN_SELECT} WHERE p.key = ?1 ORDER BY r.number DESC LIMIT 5"),
        args![pipeline],
        run_row,
    )?;
    Ok(runs
        .iter()
        .map(|r| match &r.branch {
            Some(b) => format!("#{} {} on {b}", r.number, r.state),
            None => format!("#{} {}", r.number, r.state),
        })
        .collect::<Vec<_>>()
        .join(", "))
}

pub(crate) fn pipeline_exists(c: &mut dyn Sql, pipeline: &str) -> Result<bool, DbError> {
    c.exists("SELECT 1 FROM pipelines WHERE key = ?1", args![pipeline])
}

/// The run of `pipeline` that `selector` picks; `triggered_from` is the
/// asking run's trigger, for [`RunSelector::Triggering`].
pub(crate) fn select_run(
    c: &mut dyn Sql,
    pipeline: &str,
    selector: &RunSelector,
    triggered_from: Option<&RunRef>,
) -> Result<Run, DbError> {
    if !pipeline_exists(c, pipeline)? {
        return Err(DbError::NotFound(format!(
            "pipeline {pipeline:?} not found: it has no runs yet"
        )));
    }
    let mut newest = |cond: &str, arg: Option<&str>| -> Result<Option<Run>, DbError> {
        let sql = format!("{RUN_SELECT} WHERE p.key = ?1 {cond} ORDER BY r.number DESC LIMIT 1");
        let row = match arg {
            Some(a) => c.query_opt(&sql, args![pipeline, a])?,
            None => c.query_opt(&sql, args![pipeline])?,
        };
        row.map(run_row).transpose()
    };
    let found = match selector {
        RunSelector::Number(n) => return find_run(c, pipeline, *n),
        RunSelector::Latest => newest("", None)?,
        RunSelector::LastSuccessful { branch: None } => newest("AND r.state = 'passed'", None)?,
        RunSelector::LastSuccessful { branch: Some(b) } => {
            newest("AND r.state = 'passed' AND r.branch = ?2", Some(b))?
        }
        RunSelector::LatestFromBranch(b) => newest("AND r.branch = ?2", Some(b))?,
        RunSelector::Triggering => match triggered_from {
            Some(t) if t.pipeline == pipeline => return find_run(c, pipeline, t.run),
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
    match found {
        Some(run) => Ok(run),
        None => {
            let recent = recent_runs(c, pipeline).unwrap_or_default();
            Err(DbError::NotFound(format!(
                "pipeline {pipeline:?} has no run matching `{selector}` ({}); its newest runs: {}",
                selector.describe(),
                if recent.is_empty() {
                    "none".to_string()
                } else {
                    recent
                }
            )))
        }
    }
}

pub(crate) fn create_run(c: &mut dyn Sql, pipeline: &str, req: &NewRun) -> Result<Run, DbError> {
    let triggered_from = match &req.triggered_from {
        Some(t) => Some(find_run(c, &t.pipeline, t.run).map_err(|_| {
            DbError::NotFound(format!(
                "triggering run {} of pipeline {:?} not found",
                t.run, t.pipeline
            ))
        })?),
        None => None,
    };
    let mut sources = BTreeMap::new();
    for (name, spec) in &req.sources {
        let selector: RunSelector = spec
            .run
            .parse()
            .map_err(|e| DbError::Invalid(format!("source {name:?}: {e}")))?;
        let run =
            select_run(c, &spec.pipeline, &selector, req.triggered_from.as_ref()).map_err(|e| {
                match e {
                    DbError::NotFound(m) => DbError::NotFound(format!("source {name:?}: {m}")),
                    other => other,
                }
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
    let pipeline_id = ensure_pipeline(c, pipeline)?;
    c.lock(Lock::Pipeline, &pipeline_id)?;
    // The `+ 1` in Rust: SQLite would turn an overflow into a float, and
    // a run numbered i64::MAX (uploads may name any run) must not break
    // the pipeline's run creation for good.
    let last = c
        .query_one(
            "SELECT MAX(number) FROM runs WHERE pipeline_id = ?1",
            args![&pipeline_id],
        )?
        .opt_int(0)?;
    let next = last.unwrap_or(0).checked_add(1).ok_or_else(|| {
        DbError::Conflict(format!(
            "pipeline {pipeline:?} has a run numbered {}, the largest there can be; no later run can be created",
            i64::MAX
        ))
    })?;
    let sources_json = if sources.is_empty() {
        None
    } else {
        Some(json(&sources)?)
    };
    c.execute(
        "INSERT INTO runs (id, pipeline_id, number, branch, commit_sha, state, created_at, sources,
                           triggered_from, build_id)
         VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8, ?9)",
        args![
            new_id(),
            &pipeline_id,
            next,
            &req.branch,
            &req.commit,
            now_millis(),
            sources_json,
            triggered_from.map(|r| r.id),
            &req.build_id
        ],
    )?;
    find_run(c, pipeline, next as u64)
}

pub(crate) fn set_run_state(
    c: &mut dyn Sql,
    pipeline: &str,
    number: u64,
    req: &SetRunState,
) -> Result<Run, DbError> {
    let run = ensure_run(
        c,
        pipeline,
        number,
        (req.branch.as_deref(), req.commit.as_deref()),
        None,
    )?;
    let finished = (req.state != RunState::Running).then(now_millis);
    c.execute(
        "UPDATE runs SET state = ?2, finished_at = ?3 WHERE id = ?1",
        args![&run, req.state.as_str(), finished],
    )?;
    if let Some(jobs) = &req.failed_jobs {
        c.execute(
            "UPDATE runs SET failed_jobs = ?2 WHERE id = ?1",
            args![&run, json(jobs)?],
        )?;
    }
    find_run(c, pipeline, number)
}

pub(crate) fn run_files(c: &mut dyn Sql, run_id: &str) -> Result<Vec<FileInfo>, DbError> {
    rows(
        c,
        &format!("{FILE_SELECT} AND f.run_id = ?1"),
        args![run_id],
        file_row,
    )
}

pub(crate) fn list_artifacts(c: &mut dyn Sql, run_id: &str) -> Result<Vec<Artifact>, DbError> {
    rows(
        c,
        &format!(
            "{ARTIFACT_SELECT} WHERE a.run_id = ?1 AND a.state != 'deleted' ORDER BY a.name, a.created_at, a.id"
        ),
        args![run_id],
        artifact_row,
    )
}

pub(crate) fn artifact_files(c: &mut dyn Sql, id: &str) -> Result<Vec<FileInfo>, DbError> {
    get_artifact(c, id)?;
    rows(
        c,
        &format!("{FILE_SELECT} AND f.artifact_id = ?1 ORDER BY f.path"),
        args![id],
        file_row,
    )
}

pub(crate) fn get_files(c: &mut dyn Sql, ids: &[String]) -> Result<Vec<FileInfo>, DbError> {
    // A few `IN` queries instead of one query per id.
    let mut found: HashMap<String, FileInfo> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(BATCH_ROWS) {
        let a: Vec<Value> = chunk.iter().map(Value::from).collect();
        for f in rows(
            c,
            &format!("{FILE_SELECT} AND f.id IN ({})", marks(chunk.len(), 1)),
            &a,
            file_row,
        )? {
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
}

pub(crate) fn delete_artifact(c: &mut dyn Sql, id: &str) -> Result<Artifact, DbError> {
    // The run's lock too: an upload claiming the artifact's name in the
    // run then sees it either live or deleted, never in between.
    if let Some(mut r) = c.query_opt("SELECT run_id FROM artifacts WHERE id = ?1", args![id])? {
        c.lock(Lock::Run, &r.text(0)?)?;
        c.lock(Lock::Artifact, id)?;
    }
    let a = get_artifact(c, id)?;
    c.execute(
        "UPDATE artifacts SET state = 'deleted' WHERE id = ?1",
        args![id],
    )?;
    Ok(Artifact {
        state: ArtifactState::Deleted,
        ..a
    })
}

pub(crate) fn list_jobs(c: &mut dyn Sql, run_id: &str) -> Result<Vec<JobSummary>, DbError> {
    c.query(
        // NULL stages first on both databases.
        "SELECT stage, key, attempt FROM jobs WHERE run_id = ?1
         ORDER BY stage IS NOT NULL, stage, key, attempt",
        args![run_id],
    )?
    .into_iter()
    .map(|mut r| {
        Ok(JobSummary {
            stage: r.opt_text(0)?,
            key: r.text(1)?,
            attempt: r.uint(2)? as u32,
        })
    })
    .collect()
}

pub(crate) fn package_row(mut r: Row) -> Result<(String, Package), DbError> {
    let kind = r.text(4)?;
    let meta = r.opt_text(5)?;
    let origin = r.text(6)?;
    let (image, link) = parse_meta(&kind, meta.as_deref());
    let origin: PackageOrigin = serde_json::from_str(&origin)
        .map_err(|e| DbError::Backend(format!("a package's origin: {e}")))?;
    Ok((
        r.text(0)?,
        Package {
            repository: r.text(1)?,
            name: r.text(2)?,
            version: r.text(3)?,
            kind,
            image,
            link,
            file_count: r.uint(8)?,
            size: r.uint(9)?,
            origin,
            created_at: rfc3339_millis(r.int(7)?),
        },
    ))
}

/// True for a blob row `b` that nothing live references: no file of a
/// live upload (finished or in flight) of a live artifact, no package
/// file, no block or committed blob of a GitHub Actions upload in
/// progress ([`crate::gha`]).
const UNREFERENCED: &str = "
NOT EXISTS (SELECT 1 FROM files f
              JOIN uploads u ON u.id = f.upload_id
              JOIN artifacts a ON a.id = f.artifact_id
            WHERE f.sha256 = b.sha256 AND u.state != 'error'
              AND a.state NOT IN ('deleted', 'expired'))
AND NOT EXISTS (SELECT 1 FROM package_files p WHERE p.sha256 = b.sha256)
AND NOT EXISTS (SELECT 1 FROM gha_uploads g WHERE g.sha256 = b.sha256)
AND NOT EXISTS (SELECT 1 FROM gha_blocks g WHERE g.sha256 = b.sha256)
AND NOT EXISTS (SELECT 1 FROM gha_views v JOIN files f ON f.artifact_id = v.artifact_id
                WHERE f.sha256 = b.sha256)";

/// Packages newest first; `seq` breaks ties within a millisecond.
pub(crate) const PACKAGE_SELECT: &str = "
SELECT k.id, k.repository, k.name, k.version, k.kind, k.meta, k.origin, k.created_at,
       (SELECT COUNT(*) FROM package_files f WHERE f.package_id = k.id),
       (SELECT CAST(COALESCE(SUM(f.size), 0) AS BIGINT) FROM package_files f
         WHERE f.package_id = k.id)
FROM packages k";

/// The organization (id) of pipeline `key`.
fn org_of_pipeline(c: &mut dyn Sql, key: &str) -> Result<Option<String>, DbError> {
    c.query_opt(
        "SELECT cl.organization_id FROM pipelines p JOIN clusters cl ON cl.id = p.cluster_id
         WHERE p.key = ?1",
        args![key],
    )?
    .map(|mut r| r.text(0))
    .transpose()
}

/// Refuses a promotion of `pipeline`'s artifact into `repository` unless
/// the repository is (or becomes, being new) its organization's. In the
/// promotion's transaction: of two organizations promoting into a new
/// repository at once, one gets it and the other is refused.
fn claim_repository(c: &mut dyn Sql, repository: &str, pipeline: &str) -> Result<(), DbError> {
    let Some(org) = org_of_pipeline(c, pipeline)? else {
        return Err(DbError::NotFound(format!(
            "pipeline {pipeline:?} not found"
        )));
    };
    // A repository from before owners were kept is its oldest package's.
    let first_owner = match c.query_opt(
        "SELECT origin FROM packages WHERE repository = ?1 ORDER BY seq LIMIT 1",
        args![repository],
    )? {
        Some(mut r) => {
            let origin: PackageOrigin = serde_json::from_str(&r.text(0)?)
                .map_err(|e| DbError::Backend(format!("package origin: {e}")))?;
            org_of_pipeline(c, &origin.producer.pipeline)?.unwrap_or_else(|| org.clone())
        }
        None => org.clone(),
    };
    c.execute(
        "INSERT INTO package_repositories (repository, organization_id, created_at)
         VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        args![repository, first_owner, now_millis()],
    )?;
    let owner = c
        .query_one(
            "SELECT organization_id FROM package_repositories WHERE repository = ?1",
            args![repository],
        )?
        .text(0)?;
    if owner != org {
        return Err(DbError::Forbidden(format!(
            "repository {repository:?} belongs to another organization; choose another repository"
        )));
    }
    Ok(())
}

pub(crate) fn promote(c: &mut dyn Sql, req: &Promote) -> Result<Package, DbError> {
    // Held until the package's files are in: a delete waits, so the
    // content never goes unreferenced in between.
    c.lock(Lock::Artifact, &req.artifact_id)?;
    let artifact = get_artifact(c, &req.artifact_id)?;
    if artifact.state != ArtifactState::Finished {
        return Err(DbError::Conflict(format!(
            "artifact {:?} ({}) is {}; only finished artifacts can be promoted",
            artifact.name,
            artifact.id,
            artifact.state.as_str()
        )));
    }
    claim_repository(c, &req.repository, &artifact.producer.pipeline)?;
    let existing = c.query_opt(
        &format!("{PACKAGE_SELECT} WHERE k.repository = ?1 AND k.name = ?2 AND k.version = ?3"),
        args![&req.repository, &req.package, &req.version],
    )?;
    if let Some(row) = existing {
        let (_, existing) = package_row(row)?;
        let p = &existing.origin.producer;
        return Err(DbError::Conflict(format!(
            "{}/{}@{} already exists (promoted from artifact {:?} of run {} of pipeline {:?} at {}); versions are immutable: promote to a new version",
            req.repository, req.package, req.version, existing.origin.artifact, p.run, p.pipeline, existing.created_at
        )));
    }
    let meta = c
        .query_one(
            "SELECT meta FROM artifacts WHERE id = ?1",
            args![&artifact.id],
        )?
        .opt_text(0)?;
    let origin = PackageOrigin {
        artifact_id: artifact.id.clone(),
        artifact: artifact.name.clone(),
        producer: artifact.producer.clone(),
    };
    let id = new_id();
    // A concurrent promotion to the same version loses on the unique
    // index: nothing is inserted, and it gets the conflict above.
    let inserted = c.execute(
        "INSERT INTO packages (id, repository, name, version, kind, meta, origin, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        args![
            &id,
            &req.repository,
            &req.package,
            &req.version,
            &artifact.kind,
            meta,
            json(&origin)?,
            now_millis()
        ],
    )?;
    if inserted == 0 {
        return Err(DbError::Conflict(format!(
            "{}/{}@{} was just promoted by another request; versions are immutable: promote to a new version",
            req.repository, req.package, req.version
        )));
    }
    c.execute(
        "INSERT INTO package_files (package_id, path, size, sha256, mode, content_type)
         SELECT CAST(?1 AS TEXT), f.path, f.size, f.sha256, f.mode, f.content_type
         FROM files f JOIN uploads u ON u.id = f.upload_id
         WHERE f.artifact_id = ?2 AND u.state = 'finished'",
        args![&id, &artifact.id],
    )?;
    let row = c.query_one(&format!("{PACKAGE_SELECT} WHERE k.id = ?1"), args![&id])?;
    Ok(package_row(row)?.1)
}

pub(crate) fn get_package(
    c: &mut dyn Sql,
    repo: &str,
    name: &str,
    version: Option<&str>,
) -> Result<PackageWithFiles, DbError> {
    let found = match version {
        Some(v) => c.query_opt(
            &format!("{PACKAGE_SELECT} WHERE k.repository = ?1 AND k.name = ?2 AND k.version = ?3"),
            args![repo, name, v],
        )?,
        None => c.query_opt(
            &format!(
                "{PACKAGE_SELECT} WHERE k.repository = ?1 AND k.name = ?2
                 ORDER BY k.created_at DESC, k.seq DESC LIMIT 1"
            ),
            args![repo, name],
        )?,
    };
    let Some(row) = found else {
        let what = match version {
            Some(v) => format!("{repo}/{name}@{v} not found"),
            None => format!("package {repo}/{name} has no versions"),
        };
        return Err(DbError::NotFound(what));
    };
    let (id, package) = package_row(row)?;
    let files = c
        .query(
            "SELECT path, size, sha256, mode, content_type FROM package_files
             WHERE package_id = ?1 ORDER BY path",
            args![&id],
        )?
        .into_iter()
        .map(|mut r| {
            Ok(PackageFile {
                path: r.text(0)?,
                size: r.uint(1)?,
                sha256: r.text(2)?,
                mode: r.uint(3)? as u32,
                content_type: r.text(4)?,
            })
        })
        .collect::<Result<_, DbError>>()?;
    Ok(PackageWithFiles { package, files })
}

pub(crate) fn expire_artifacts(c: &mut dyn Sql, now_ms: i64) -> Result<u64, DbError> {
    c.execute(
        "UPDATE artifacts SET state = 'expired'
         WHERE state = 'finished' AND expires_at IS NOT NULL AND expires_at < ?1
           AND run_id NOT IN (
             SELECT r.id FROM runs r
             WHERE r.state = 'passed' AND r.number = (
               SELECT MAX(r2.number) FROM runs r2
               WHERE r2.pipeline_id = r.pipeline_id AND r2.state = 'passed'
                 AND r2.branch IS NOT DISTINCT FROM r.branch))",
        args![now_ms],
    )
}

pub(crate) fn unreferenced_blobs(
    c: &mut dyn Sql,
    cutoff_ms: i64,
    limit: usize,
) -> Result<Vec<(String, u64)>, DbError> {
    c.query(
        &format!(
            "SELECT b.sha256, b.size FROM blobs b
             WHERE b.created_at < ?1 AND {UNREFERENCED} ORDER BY b.sha256 LIMIT ?2"
        ),
        args![cutoff_ms, limit as i64],
    )?
    .into_iter()
    .map(|mut r| Ok((r.text(0)?, r.uint(1)?)))
    .collect()
}

pub(crate) fn forget_blobs(
    c: &mut dyn Sql,
    digests: &[String],
    cutoff_ms: i64,
) -> Result<Vec<String>, DbError> {
    let mut sorted: Vec<&str> = digests.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    // Each row is locked before the statement that deletes it. Where
    // writers run concurrently (PostgreSQL), a DELETE's NOT EXISTS reads
    // the snapshot its statement started with: had it waited there for an
    // upload that touched the row, it would not see the files that upload
    // committed and would delete a blob they reference (the touch's time
    // is that upload's start, which may be before the cutoff). Waiting in
    // the lock instead, the DELETE starts after that upload committed and
    // sees its files.
    for chunk in sorted.chunks(BATCH_ROWS) {
        c.lock_blobs(chunk)?;
    }
    let mut gone = Vec::new();
    for d in sorted {
        let n = c.execute(
            &format!(
                "DELETE FROM blobs AS b
                 WHERE b.sha256 = ?1 AND b.created_at < ?2 AND {UNREFERENCED}"
            ),
            args![d, cutoff_ms],
        )?;
        if n > 0 {
            gone.push(d.to_string());
        }
    }
    Ok(gone)
}

pub(crate) fn unrecord_blobs(c: &mut dyn Sql, digests: &[String]) -> Result<u64, DbError> {
    let mut n = 0u64;
    for d in digests {
        n += c.execute("DELETE FROM blobs WHERE sha256 = ?1", args![d])?;
    }
    Ok(n)
}

pub(crate) fn recorded_blobs(c: &mut dyn Sql) -> Result<Vec<String>, DbError> {
    c.query("SELECT sha256 FROM blobs", &[])?
        .into_iter()
        .map(|mut r| r.text(0))
        .collect()
}

pub(crate) fn mis_sized_files(c: &mut dyn Sql, limit: usize) -> Result<Vec<MisSized>, DbError> {
    c.query(
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
        args![limit as i64],
    )?
    .into_iter()
    .map(|mut r| {
        Ok(MisSized {
            owner: r.text(0)?,
            path: r.text(1)?,
            sha256: r.text(2)?,
            claimed: r.uint(3)?,
            actual: r.uint(4)?,
        })
    })
    .collect()
}

/// The artifacts whose kept totals differ from their files' (read in one
/// snapshot, without the write lock): fsck's first step.
pub(crate) fn miscounted_artifacts(c: &mut dyn Sql) -> Result<Vec<String>, DbError> {
    c.query(
        "SELECT a.id FROM artifacts a
           JOIN (SELECT a2.id, COUNT(f.id) AS n,
                        CAST(COALESCE(SUM(f.size), 0) AS BIGINT) AS size
                   FROM artifacts a2
                   LEFT JOIN uploads u ON u.artifact_id = a2.id AND u.state = 'finished'
                   LEFT JOIN files f ON f.upload_id = u.id
                  GROUP BY a2.id) t ON t.id = a.id
          WHERE a.file_count != t.n OR a.total_size != t.size
          ORDER BY a.id",
        &[],
    )?
    .into_iter()
    .map(|mut r| r.text(0))
    .collect()
}

/// Recounts artifact `id` under its lock (so no finish adds to it
/// meanwhile) and sets its totals; describes the correction, or `None`
/// when they were right by then.
pub(crate) fn recount_artifact(c: &mut dyn Sql, id: &str) -> Result<Option<String>, DbError> {
    c.lock(Lock::Artifact, id)?;
    let mut r = c.query_one(
        "SELECT a.name, a.file_count, a.total_size,
                (SELECT COUNT(*) FROM files f JOIN uploads u ON u.id = f.upload_id
                  WHERE f.artifact_id = a.id AND u.state = 'finished'),
                (SELECT CAST(COALESCE(SUM(f.size), 0) AS BIGINT) FROM files f
                   JOIN uploads u ON u.id = f.upload_id
                  WHERE f.artifact_id = a.id AND u.state = 'finished')
           FROM artifacts a WHERE a.id = ?1",
        args![id],
    )?;
    let (name, count, size, n, bytes) = (r.text(0)?, r.int(1)?, r.int(2)?, r.int(3)?, r.int(4)?);
    if (count, size) == (n, bytes) {
        return Ok(None);
    }
    c.execute(
        "UPDATE artifacts SET file_count = ?2, total_size = ?3 WHERE id = ?1",
        args![id, n, bytes],
    )?;
    Ok(Some(format!(
        "artifact {id} ({name:?}): counted {count} files of {size} bytes, holds {n} of {bytes}; corrected"
    )))
}

pub(crate) fn referenced_blobs(c: &mut dyn Sql) -> Result<Vec<(String, Option<u64>)>, DbError> {
    let found = c.query(
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
        &[],
    )?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(found.len());
    for mut r in found {
        let d = r.text(0)?;
        let size = r.opt_int(1)?.map(|n| n as u64);
        if seen.insert(d.clone()) {
            out.push((d, size));
        }
    }
    Ok(out)
}
