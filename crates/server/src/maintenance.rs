//! Retention, garbage collection and fsck.
//!
//! **Retention.** Every artifact gets an expiry when it is created: what the
//! upload asked for (`--expire-in`), else the server's default (180 days).
//! Expiry moves finished artifacts to `expired`, except those of the newest
//! passed run of each pipeline and branch. Promoted packages never expire:
//! they hold their own file entries.
//!
//! **GC is mark and sweep, race-free.** Candidates are blobs recorded more
//! than a grace period ago that nothing live references: no file of a live
//! upload (finished or in flight) of a live artifact, no package file, no
//! block or committed blob of a GitHub Actions upload in progress. For
//! each batch, GC takes [`crate::AppState::blob_gate`] exclusively, skips
//! every digest a writer is storing right now, deletes the rows that are
//! *still* unreferenced and still older than the cutoff (recording a blob
//! again makes it young) in one
//! transaction (SQLite serializes this against `create_upload`, which
//! checks `blobs` and inserts its file rows in one transaction: an upload
//! is either told the content is missing, or its staged rows keep the blob
//! alive), then deletes their content. Writers announce a digest before
//! they store it and until they record it (see [`crate::gate`]), so a blob
//! re-sent during a sweep cannot be deleted after it was stored, and no
//! lock is held while a client streams its bytes.
//!
//! After the blob rows, GC sweeps the content store itself
//! ([`satchel_store::ContentStore::sweep`]): chunks no recorded blob uses and
//! older than the grace period are deleted, still under the gate. While a
//! write is announced on any replica, unused chunks must also be older
//! than twice the chunk refresh age (a write may rely on them); with none,
//! the grace alone decides, so `gc --grace 0s` frees a failed upload's
//! chunks at once.
//!
//! **fsck** re-reads every referenced blob through the verifying read path
//! and reports, never repairs, what is missing, of the wrong size, or
//! corrupt.

use std::time::Duration;

use futures_util::StreamExt;
use satchel_store::{Digest, StoreError};
use serde::Serialize;

use crate::error::ApiError;
use crate::AppState;

/// Retention of artifacts that do not ask for one.
pub const DEFAULT_RETENTION_DAYS: u64 = 180;
/// Blobs younger than this are never collected by the periodic GC.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// Blobs handled per GC transaction.
const BATCH: usize = 500;

/// What a GC pass did.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GcReport {
    /// Artifacts moved to `expired` by this pass.
    pub expired_artifacts: u64,
    /// Blobs deleted.
    pub blobs_deleted: u64,
    /// Stored objects (chunks, recipes) the content store's sweep deleted.
    #[serde(default)]
    pub objects_deleted: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Writes were in flight (on some replica) when the content store was
    /// swept, and the grace is shorter than twice the chunk refresh age
    /// (30 minutes by default): unused chunks younger than that were kept,
    /// as an upload may rely on them. With none in flight, the grace alone
    /// decides.
    #[serde(default)]
    pub young_chunks_kept: bool,
}

/// Expires artifacts, then collects unreferenced content older than `grace`.
pub async fn gc(s: &AppState, grace: Duration) -> Result<GcReport, ApiError> {
    let now = satchel_model::id::now_millis();
    let mut report = GcReport {
        expired_artifacts: s.db.expire_artifacts(now).await?,
        ..GcReport::default()
    };
    // A grace beyond the epoch keeps everything (a wrapped cast would
    // have turned a huge grace into none).
    let cutoff = i64::try_from(grace.as_millis()).map_or(i64::MIN, |g| now.saturating_sub(g));
    loop {
        let candidates = s.db.unreferenced_blobs(cutoff, BATCH).await?;
        if candidates.is_empty() {
            break;
        }
        let sweep = s.blob_gate.sweep().await?;
        let digests: Vec<String> = candidates
            .iter()
            .map(|(d, _)| d.clone())
            .filter(|d| !sweep.is_being_written(d))
            .collect();
        sweep.check().await?;
        let gone = s.db.forget_blobs(&digests, cutoff).await?;
        // Rows forgotten but content kept, if the gate was lost: garbage
        // for a later pass, never a loss.
        sweep.check().await?;
        let size_of = |d: &str| {
            candidates
                .iter()
                .find(|(c, _)| c == d)
                .map_or(0, |(_, size)| *size)
        };
        // A blob whose content could not be deleted is recorded again (its
        // content is still there), so a later pass tries again instead of
        // the file being forgotten for good.
        let mut failed = Vec::new();
        let mut first_error = None;
        for d in &gone {
            match s.store.delete(&Digest::from_hex(d)?).await {
                Ok(()) => {
                    report.blobs_deleted += 1;
                    report.bytes_freed += size_of(d);
                    s.metrics
                        .gc_content_deleted
                        .fetch_add(size_of(d), std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    failed.push((d.clone(), size_of(d)));
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            s.db.record_blobs(&failed).await?;
            return Err(ApiError::internal(format!(
                "gc: {} blobs could not be deleted and are kept for the next pass: {e}",
                failed.len()
            )));
        }
        drop(sweep);
        // A batch that freed nothing (every candidate being written, or
        // re-recorded meanwhile) would come back the same: the next pass
        // takes it.
        if candidates.len() < BATCH || gone.is_empty() {
            break;
        }
    }
    // Then the content store's sweep: stored blobs no row records (left by
    // failed writes or a crash) and chunks no remaining recipe uses.
    let cutoff = std::time::SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(std::time::UNIX_EPOCH);
    let (swept, _) = sweep_store(s, cutoff, false)
        .await?
        .expect("a sweep that need not be quiet runs");
    report.young_chunks_kept = swept.young_kept;
    report.objects_deleted = swept.deleted;
    report.bytes_freed += swept.bytes_freed;
    s.counters
        .gc_passes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.metrics.forget_storage();
    if report.blobs_deleted > 0 || report.expired_artifacts > 0 || report.objects_deleted > 0 {
        tracing::info!(
            "gc: {} artifacts expired, {} blobs deleted, {} stored objects deleted, {} bytes freed",
            report.expired_artifacts,
            report.blobs_deleted,
            report.objects_deleted,
            report.bytes_freed
        );
    }
    Ok(report)
}

/// What fsck found.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FsckReport {
    /// Blobs checked.
    pub checked: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Referenced blobs not in the store.
    pub missing: Vec<String>,
    /// Blobs whose stored size differs from the recorded one.
    pub wrong_size: Vec<String>,
    /// Blobs whose content no longer hashes to their digest.
    pub corrupt: Vec<String>,
    /// File rows (up to 1000) that claim a size their content does not
    /// have, as `OWNER PATH: claims N bytes, its content (SHA256) has M`.
    /// Left by uploads before sizes were checked; the content itself is
    /// fine and repair never touches it. Such files cannot be served
    /// correctly: delete their artifact and upload it again.
    #[serde(default)]
    pub mis_sized_files: Vec<String>,
    /// Artifacts (up to 1000) whose file count or size disagreed with their
    /// files, each corrected as found (the totals are derived: nothing is
    /// lost by setting them right).
    #[serde(default)]
    pub miscounted_artifacts: Vec<String>,
    /// Whether nothing was wrong.
    pub ok: bool,
    /// With `forget_damaged`: the damaged blobs forgotten (their rows and
    /// what was stored of them removed), so that the next upload of the
    /// same content restores them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten: Vec<String>,
}

/// Checks every referenced blob: present, right size, right hash. With
/// `forget_damaged`, then forgets what it found damaged (see
/// [`forget_damaged`]); it still reports them, and the files that refer to
/// them stay unreadable until their content is uploaded again.
pub async fn fsck(s: &AppState, forget_damaged: bool) -> Result<FsckReport, ApiError> {
    let mut r = FsckReport::default();
    for (hex, size) in s.db.referenced_blobs().await? {
        r.checked += 1;
        let d = Digest::from_hex(&hex)?;
        match s.store.size(&d).await {
            Err(StoreError::NotFound(_)) => {
                r.missing.push(hex);
                continue;
            }
            Err(StoreError::Corrupt { .. } | StoreError::Undecodable(_)) => {
                r.corrupt.push(hex);
                continue;
            }
            Err(e) => return Err(e.into()),
            Ok(n) if size.is_some_and(|size| n != size) => {
                r.wrong_size.push(hex);
                continue;
            }
            Ok(_) => {}
        }
        // Every chunk is checked as it streams; the whole digest on top.
        let mut stream = match s.store.get(&d, None).await {
            Ok(st) => satchel_store::verified(st, d),
            Err(StoreError::Corrupt { .. } | StoreError::Undecodable(_)) => {
                r.corrupt.push(hex);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut bad = false;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => r.bytes += c.len() as u64,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    bad = true;
                    break;
                }
                Err(e) => return Err(ApiError::internal(format!("reading {hex}: {e}"))),
            }
        }
        if bad {
            r.corrupt.push(hex);
        }
    }
    r.mis_sized_files =
        s.db.mis_sized_files(1000)
            .await?
            .into_iter()
            .map(|m| {
                format!(
                    "{} {}: claims {} bytes, its content ({}) has {}",
                    m.owner, m.path, m.claimed, m.sha256, m.actual
                )
            })
            .collect();
    r.miscounted_artifacts = s.db.recount_artifacts(1000).await?;
    r.ok = r.missing.is_empty()
        && r.wrong_size.is_empty()
        && r.corrupt.is_empty()
        && r.mis_sized_files.is_empty()
        && r.miscounted_artifacts.is_empty();
    if forget_damaged {
        let damaged: Vec<String> = r
            .missing
            .iter()
            .chain(&r.wrong_size)
            .chain(&r.corrupt)
            .cloned()
            .collect();
        r.forgotten = self::forget_damaged(s, &damaged).await?;
    }
    Ok(r)
}

/// fsck's repair path: forgets each damaged blob's row, then removes what
/// is stored of it (its object and any damaged chunk), so an upload of the
/// same content is told it is missing and stores it afresh, which makes
/// every file referring to it readable again. Under the GC gate, skipping
/// blobs being written right now (a re-upload may be repairing them).
pub async fn forget_damaged(s: &AppState, damaged: &[String]) -> Result<Vec<String>, ApiError> {
    let sweep = s.blob_gate.sweep().await?;
    let chosen: Vec<String> = damaged
        .iter()
        .filter(|d| !sweep.is_being_written(d))
        .cloned()
        .collect();
    sweep.check().await?;
    s.db.unrecord_blobs(&chosen).await?;
    sweep.check().await?;
    for d in &chosen {
        let removed = s.store.discard(&Digest::from_hex(d)?).await?;
        tracing::warn!("fsck: forgot damaged content {d} ({removed} damaged chunks removed); upload it again to restore it");
    }
    drop(sweep);
    Ok(chosen)
}

/// Progress of a key rotation (re-encrypting stored objects).
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Rotation {
    /// `idle`, `running`, `done`, `failed`, or `interrupted` (the replica
    /// running it stopped reporting).
    pub state: String,
    /// Objects looked at so far.
    pub objects: u64,
    /// Objects re-encrypted with the active key so far.
    pub rewritten: u64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `GET /api/v1/admin/keys` answers.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct KeysReport {
    /// Whether content is encrypted at rest.
    pub encryption: bool,
    /// The key new objects are encrypted with.
    pub active_key: Option<u32>,
    /// Keys the server can decrypt with.
    pub keys: Vec<u32>,
    /// Stored objects per key id (`null`: unencrypted).
    pub usage: Vec<(Option<u32>, u64)>,
    /// The last or running rotation.
    pub rotation: Rotation,
}

#[utoipa::path(
    get,
    path = "/admin/keys",
    tag = "maintenance",
    summary = "Encryption keys and what each encrypts",
    responses((status = 200, description = "Keys and the last rotation", body = KeysReport), crate::openapi::Errors)
)]
pub(crate) async fn keys_handler(
    axum::extract::State(s): axum::extract::State<AppState>,
    caller: crate::access::Caller,
) -> Result<axum::Json<KeysReport>, ApiError> {
    caller.server_admin()?;
    let ids = s.store.key_ids();
    Ok(axum::Json(KeysReport {
        encryption: ids.is_some(),
        active_key: ids.as_ref().map(|(a, _)| *a),
        keys: ids.map(|(_, k)| k).unwrap_or_default(),
        usage: s.store.key_usage().await?,
        rotation: rotation(&s).await,
    }))
}

/// The lease on key rotation, and the name of the status it reports.
const ROTATION: &str = "key-rotation";
/// How often a rotation reports progress and renews its lease, where
/// replicas share the database.
const ROTATION_REPORT_EVERY: Duration = Duration::from_secs(2);
/// A rotation reported as running but silent this long has stopped (its
/// replica died).
const ROTATION_SILENT_MS: i64 = 30_000;
/// How long a rotation's lease lasts unless renewed: as long as a silent
/// one is still shown running, so no second one starts before.
const ROTATION_LEASE_MS: i64 = ROTATION_SILENT_MS;

/// The last or running key rotation: on a shared database, whichever
/// replica runs it (as it last reported); else this process's.
pub async fn rotation(s: &AppState) -> Rotation {
    let local = s.rotation.lock().expect("rotation lock").clone();
    if !s.shared_db {
        return local;
    }
    match s.db.background_status(ROTATION).await {
        Ok(Some((json, age_ms))) => match serde_json::from_str::<Rotation>(&json) {
            Ok(mut r) => {
                if r.state == "running" && age_ms > ROTATION_SILENT_MS {
                    r.state = "interrupted".into();
                    r.error = Some(
                        "the replica running it stopped reporting; start the rotation again".into(),
                    );
                }
                r
            }
            Err(e) => {
                tracing::warn!("unreadable key rotation status: {e}");
                local
            }
        },
        Ok(None) => local,
        Err(e) => {
            tracing::warn!("reading the key rotation status: {e}");
            local
        }
    }
}

/// Tells the other replicas how this process's rotation stands.
async fn report_rotation(s: &AppState) {
    if !s.shared_db {
        return;
    }
    let r = s.rotation.lock().expect("rotation lock").clone();
    let json = serde_json::to_string(&r).expect("a rotation serializes");
    if let Err(e) = s.db.set_background_status(ROTATION, &json).await {
        tracing::warn!("reporting the key rotation: {e}");
    }
}

/// Starts re-encrypting, in the background, every object not on the
/// active key (or stored before encryption was on), unless one runs
/// already, here or (under its lease) on another replica; answers how the
/// rotation stands. On a shared database the rotation holds its lease
/// under a holder of its own (so a run that just ended cannot release the
/// next one's), renews it every [`ROTATION_REPORT_EVERY`], and stops if it
/// ever loses it.
pub async fn start_rotation(s: &AppState) -> Result<Rotation, ApiError> {
    if s.rotation.lock().expect("rotation lock").state == "running" {
        return Ok(rotation(s).await);
    }
    let holder = format!("{}/{}", s.replica, satchel_model::id::new_id());
    if s.shared_db {
        match s.db.take_lease(ROTATION, &holder, ROTATION_LEASE_MS).await {
            Ok(true) => {}
            // Running on another replica.
            Ok(false) => return Ok(rotation(s).await),
            Err(e) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("could not tell whether a key rotation runs elsewhere: {e}"),
                ))
            }
        }
    }
    let started = {
        let mut r = s.rotation.lock().expect("rotation lock");
        let free = r.state != "running";
        if free {
            *r = Rotation {
                state: "running".into(),
                ..Rotation::default()
            };
        }
        free
    };
    if !started {
        // Another request of this process started one meanwhile.
        if s.shared_db {
            let _ = s.db.release_lease(ROTATION, &holder).await;
        }
        return Ok(rotation(s).await);
    }
    report_rotation(s).await;
    let st = s.clone();
    tokio::spawn(async move {
        let mut keeper = st.shared_db.then(|| {
            LeaseKeeper::start(
                &st,
                ROTATION,
                holder.clone(),
                ROTATION_REPORT_EVERY,
                Duration::from_millis(ROTATION_LEASE_MS as u64),
                |s| async move { report_rotation(&s).await },
            )
        });
        let progress = |p: &satchel_store::RewriteReport| {
            let mut r = st.rotation.lock().expect("rotation lock");
            r.objects = p.objects;
            r.rewritten = p.rewritten;
        };
        // Objects are replaced atomically under their names; a sweep that
        // runs meanwhile only sees them younger.
        let rewrite = st.store.rewrite(&progress);
        let result = match keeper.as_mut() {
            Some(k) => tokio::select! {
                r = rewrite => Some(r),
                Ok(()) = &mut k.lost => None,
            },
            None => Some(rewrite.await),
        };
        if let Some(k) = keeper {
            k.stop().await;
        }
        let Some(result) = result else {
            // Another replica holds the lease and reports from now on.
            tracing::warn!("key rotation stopped: another replica took its lease over");
            let mut r = st.rotation.lock().expect("rotation lock");
            r.state = "failed".into();
            r.error = Some("another replica took the rotation over".into());
            return;
        };
        {
            let mut r = st.rotation.lock().expect("rotation lock");
            match result {
                Ok(done) => {
                    r.state = "done".into();
                    r.objects = done.objects;
                    r.rewritten = done.rewritten;
                    tracing::info!(
                        "key rotation done: {} of {} objects re-encrypted",
                        done.rewritten,
                        done.objects
                    );
                }
                Err(e) => {
                    tracing::warn!("key rotation failed: {e}");
                    r.state = "failed".into();
                    r.error = Some(e.to_string());
                }
            }
        }
        report_rotation(&st).await;
        if st.shared_db {
            if let Err(e) = st.db.release_lease(ROTATION, &holder).await {
                tracing::warn!("releasing the key rotation lease: {e}");
            }
        }
    });
    Ok(rotation(s).await)
}

/// `POST /admin/keys/rotate`: [`start_rotation`], 202.
#[utoipa::path(
    post,
    path = "/admin/keys/rotate",
    tag = "maintenance",
    summary = "Start re-encrypting the store with the active key",
    responses((status = 202, description = "The rotation, started", body = Rotation), crate::openapi::Errors)
)]
pub(crate) async fn rotate_handler(
    axum::extract::State(s): axum::extract::State<AppState>,
    caller: crate::access::Caller,
) -> Result<(axum::http::StatusCode, axum::Json<Rotation>), ApiError> {
    caller.server_admin()?;
    if s.store.key_ids().is_none() {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "encryption_off",
            "encryption at rest is not configured: start the server with --keys-file (see docs/storage.md)",
        ));
    }
    Ok((
        axum::http::StatusCode::ACCEPTED,
        axum::Json(start_rotation(&s).await?),
    ))
}

/// Deletes audit entries past their retention
/// ([`AppState::audit_retention_days`]; artifact retention never does).
pub async fn prune_audit(s: &AppState) {
    if s.audit_retention_days == 0 {
        return;
    }
    let keep_ms =
        i64::try_from(s.audit_retention_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
    let before = satchel_model::id::now_millis().saturating_sub(keep_ms);
    match s.db.prune_audit(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "pruned {n} audit entries older than {} days",
            s.audit_retention_days
        ),
        Err(e) => tracing::warn!("pruning the audit log failed: {e}"),
    }
}

/// Sweeps the content store under the gate, keeping every recorded or
/// announced blob: a blob being written now is kept. Chunks no blob uses
/// go once older than `cutoff`, and, while a write is announced on any
/// replica, than twice the chunk refresh age too (a write may rely on
/// them). With `only_if_quiet`, nothing is swept (`None`) while a write is
/// announced. Returns what was swept, and whether writes were in flight.
async fn sweep_store(
    s: &AppState,
    cutoff: std::time::SystemTime,
    only_if_quiet: bool,
) -> Result<Option<(satchel_store::SweepReport, bool)>, ApiError> {
    let sweep = s.blob_gate.sweep().await?;
    // Announced digests first, recorded ones second: a writer leaves
    // the announced set (which needs no gate) only after recording its
    // blob, so reading them the other way round can miss a blob that
    // was recorded just after the first read and unannounced just
    // before the second, and delete it (seen in the GC race test).
    let announced = sweep.announced();
    // No write announced anywhere, and none can start while the gate is
    // held: no write relies on a chunk, so unused chunks go by the cutoff
    // alone (a failed upload's packs, at once under `--grace 0s`). Chunks
    // sent for an assembly still to come may go too; the assembly answers
    // `chunk_missing` and the client sends them again.
    let writes_in_flight = !announced.is_empty();
    if writes_in_flight && only_if_quiet {
        return Ok(None);
    }
    let mut keep: std::collections::HashSet<Digest> = announced
        .iter()
        .filter_map(|d| Digest::from_hex(d).ok())
        .collect();
    keep.extend(
        s.db.recorded_blobs()
            .await?
            .iter()
            .filter_map(|d| Digest::from_hex(d).ok()),
    );
    sweep.check().await?;
    let swept = if writes_in_flight {
        s.store.sweep(&keep, cutoff).await?
    } else {
        s.store.sweep_quiet(&keep, cutoff, &sweep).await?
    };
    s.metrics.swept(swept.bytes_listed, swept.bytes_freed);
    s.metrics
        .gc_bytes_freed
        .fetch_add(swept.bytes_freed, std::sync::atomic::Ordering::Relaxed);
    drop(sweep);
    Ok(Some((swept, writes_in_flight)))
}

/// Frees what failed content writes left in the store (the chunks of an
/// upload that ran out of space), at once: the content store is swept
/// with no grace as soon as no write is in flight on any replica. Runs
/// after a write found the store full ([`release_soon`]); uploads work
/// again as soon as the space is back, without waiting for GC.
async fn release_failed_writes(s: &AppState) -> Result<Option<u64>, ApiError> {
    Ok(sweep_store(s, std::time::SystemTime::now(), true)
        .await?
        .map(|(swept, _)| swept.bytes_freed))
}

/// Asks for [`release_failed_writes`] soon: a content write found the
/// store full. Requests that arrive while one is pending are one.
pub fn release_soon(s: &AppState) {
    s.release.notify_one();
}

/// Least time between two releases: each lists the whole store, and a
/// store full of live content has nothing to release. Doubled, up to
/// [`RELEASE_SPACING_MAX`], after each release that freed nothing.
const RELEASE_SPACING: Duration = Duration::from_secs(30);
const RELEASE_SPACING_MAX: Duration = Duration::from_secs(600);

/// Runs [`release_failed_writes`] whenever [`release_soon`] asks: after
/// the failing request has ended, and again, further and further apart,
/// for about four minutes while writes are in flight.
pub fn spawn_release(s: AppState) {
    tokio::spawn(async move {
        let mut spacing = RELEASE_SPACING;
        loop {
            s.release.notified().await;
            let (mut ran, mut freed) = (false, 0);
            for wait in [1, 2, 4, 8, 15, 30, 60, 60, 60] {
                // The failed write must end (and stop being announced).
                tokio::time::sleep(Duration::from_secs(wait)).await;
                match release_failed_writes(&s).await {
                    Ok(None) => continue,
                    Ok(Some(n)) => {
                        (ran, freed) = (true, n);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "releasing what failed writes left in the content store: {}",
                            e.message
                        );
                        break;
                    }
                }
            }
            if freed > 0 {
                tracing::info!(
                    "released {freed} bytes that failed writes left in the content store"
                );
                spacing = RELEASE_SPACING;
            } else if ran {
                // A store full of live content: the next sweep waits longer.
                spacing = (spacing * 2).min(RELEASE_SPACING_MAX);
            }
            tokio::time::sleep(spacing).await;
        }
    });
}

/// What the periodic maintenance of `satchel serve` does, and how often.
#[derive(Debug, Clone, Copy)]
pub struct Periodic {
    /// Time between GC passes; `None`: only `satchel admin gc`.
    pub every: Option<Duration>,
    /// GC's grace period ([`DEFAULT_GRACE`]).
    pub grace: Duration,
    /// GitHub Actions uploads idle this long are dropped
    /// ([`crate::gha::SESSION_IDLE_SECS`]).
    pub upload_idle: Duration,
}

impl Periodic {
    /// GC every `every` (`None`: never), with the default grace and idle
    /// time.
    pub fn every(every: Option<Duration>) -> Periodic {
        Periodic {
            every,
            grace: DEFAULT_GRACE,
            upload_idle: Duration::from_secs(crate::gha::SESSION_IDLE_SECS),
        }
    }
}

/// Starts the maintenance tasks of `satchel serve`: GC, retention and
/// audit pruning as `p` says, and, whether or not GC runs, failing
/// abandoned uploads (every ten minutes) and reaping idle GitHub Actions
/// uploads and carrying out their due deletes (every
/// [`crate::gha::REAP_EVERY`] at most). Where replicas share a database,
/// GC and the stale-upload sweep run on one replica at a time, under a
/// lease ([`satchel_db::MetaStore::take_lease`]); reaping is a short
/// transaction that any replica may run at any time (deletes are carried
/// out in run order, so two replicas doing so wait, not deadlock).
pub fn spawn_periodic(s: AppState, p: Periodic) {
    spawn_release(s.clone());
    let reap_every = p
        .every
        .map_or(crate::gha::REAP_EVERY, |e| e.min(crate::gha::REAP_EVERY));
    let reaper = s.clone();
    tokio::spawn(async move {
        let mut tick = interval_after(reap_every);
        loop {
            tick.tick().await;
            match crate::gha::reap_idle(&reaper, p.upload_idle).await {
                Ok(0) => {}
                Ok(reaped) => {
                    reaper
                        .counters
                        .gha_reaped
                        .fetch_add(reaped, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!("reaped {reaped} idle GitHub Actions uploads");
                }
                Err(e) => tracing::warn!("reaping idle GitHub Actions uploads: {e}"),
            }
        }
    });
    let sweeper = s.clone();
    tokio::spawn(async move {
        // The first sweep at start-up: a crash is what leaves them.
        let mut tick = tokio::time::interval(STALE_SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            tick.tick().await;
            // At start-up whatever the lease says (cheap, and safe to run
            // on two replicas at once); then only by its holder.
            if !std::mem::take(&mut first)
                && !leads(&sweeper, STALE_SWEEP_LEASE, 3 * STALE_SWEEP_EVERY).await
            {
                continue;
            }
            let cutoff = satchel_model::id::now_millis()
                - i64::try_from(STALE_UPLOAD.as_millis()).unwrap_or(i64::MAX);
            match sweeper.db.expire_stale_uploads(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "failed {n} uploads started over 24 hours ago and never finished"
                ),
                Err(e) => tracing::warn!("sweeping stale uploads: {e}"),
            }
        }
    });
    let Some(every) = p.every else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = interval_after(every);
        loop {
            tick.tick().await;
            // One replica at a time; another takes over three periods after
            // this one stops renewing.
            let leader = leads(&s, GC_LEASE, 3 * every).await;
            s.counters
                .gc_leader
                .store(u64::from(leader), std::sync::atomic::Ordering::Relaxed);
            if !leader {
                continue;
            }
            // A pass may outlast the lease: it is renewed while it runs.
            let keeper = s.shared_db.then(|| {
                LeaseKeeper::start(
                    &s,
                    GC_LEASE,
                    s.replica.to_string(),
                    every,
                    3 * every,
                    |_| async {},
                )
            });
            if let Err(e) = gc(&s, p.grace).await {
                tracing::warn!("periodic gc failed: {}", e.message);
            }
            prune_audit(&s).await;
            if let Some(k) = keeper {
                k.stop().await;
            }
        }
    });
}

/// Renews a lease on background work while the work runs: every `every`,
/// for `ttl`, calling `after` once it held; `lost` fires if another holder
/// took it. [`LeaseKeeper::stop`] waits for the task's last database
/// write, so none lands after what the work does next (an aborted task's
/// write could: it runs on a thread of its own).
struct LeaseKeeper {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    lost: tokio::sync::oneshot::Receiver<()>,
}

impl LeaseKeeper {
    fn start<F, Fut>(
        s: &AppState,
        name: &'static str,
        holder: String,
        every: Duration,
        ttl: Duration,
        after: F,
    ) -> LeaseKeeper
    where
        F: Fn(AppState) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (lost_tx, lost) = tokio::sync::oneshot::channel::<()>();
        let s = s.clone();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let task = tokio::spawn(async move {
            let mut tick = interval_after(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => return,
                }
                match s.db.take_lease(name, &holder, ttl_ms).await {
                    Ok(true) => after(s.clone()).await,
                    Ok(false) => {
                        let _ = lost_tx.send(());
                        return;
                    }
                    // It may still hold; a later renewal tells.
                    Err(e) => tracing::warn!("renewing the {name} lease: {e}"),
                }
            }
        });
        LeaseKeeper { stop, task, lost }
    }

    async fn stop(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

/// The lease on periodic GC, retention and audit pruning.
const GC_LEASE: &str = "gc";
/// The lease on failing abandoned uploads.
const STALE_SWEEP_LEASE: &str = "stale-uploads";
/// How often abandoned uploads are looked for.
const STALE_SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Uploads still unfinished this long after they started are failed (see
/// [`satchel_db::MetaStore::expire_stale_uploads`]).
pub const STALE_UPLOAD: Duration = Duration::from_secs(24 * 3600);

/// Whether this replica holds lease `name` on background work (taking or
/// renewing it for `ttl`); a database error counts as not holding it. A
/// database no other process shares needs no lease (and one left by this
/// data directory's previous, crashed process must not hold it up).
async fn leads(s: &AppState, name: &str, ttl: Duration) -> bool {
    if !s.shared_db {
        return true;
    }
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    match s.db.take_lease(name, &s.replica, ttl_ms).await {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!("taking the {name} lease: {e}");
            false
        }
    }
}

/// Gives up this replica's leases (at a clean shutdown), so another
/// replica takes the work over at its next pass instead of after expiry.
pub async fn release_leases(s: &AppState) {
    if !s.shared_db {
        return;
    }
    for name in [GC_LEASE, STALE_SWEEP_LEASE] {
        if let Err(e) = s.db.release_lease(name, &s.replica).await {
            tracing::warn!("releasing the {name} lease: {e}");
        }
    }
}

/// Ticks every `period`, the first a period from now; a pass that overran
/// starts the next one a full period later.
fn interval_after(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct GcParams {
    grace_seconds: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/admin/gc",
    tag = "maintenance",
    summary = "Expire due artifacts and delete unreferenced content",
    request_body = GcParams,
    responses((status = 200, description = "What the pass did", body = GcReport), crate::openapi::Errors)
)]
pub(crate) async fn gc_handler(
    axum::extract::State(s): axum::extract::State<AppState>,
    caller: crate::access::Caller,
    crate::extract::Json(p): crate::extract::Json<GcParams>,
) -> Result<axum::Json<GcReport>, ApiError> {
    caller.server_admin()?;
    const MAX_GRACE_SECS: u64 = 100 * 365 * 86_400;
    if p.grace_seconds.is_some_and(|g| g > MAX_GRACE_SECS) {
        return Err(ApiError::bad_request(
            "grace_seconds may be at most 100 years",
        ));
    }
    let grace = p.grace_seconds.map_or(DEFAULT_GRACE, Duration::from_secs);
    Ok(axum::Json(gc(&s, grace).await?))
}

/// Query of `POST /admin/fsck`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct FsckParams {
    /// Forget damaged blobs so that re-uploads restore them.
    #[serde(default)]
    forget_damaged: bool,
}

#[utoipa::path(
    post,
    path = "/admin/fsck",
    tag = "maintenance",
    summary = "Check every finished artifact's content",
    params(FsckParams),
    responses((status = 200, description = "What is wrong, if anything", body = FsckReport), crate::openapi::Errors)
)]
pub(crate) async fn fsck_handler(
    axum::extract::State(s): axum::extract::State<AppState>,
    caller: crate::access::Caller,
    crate::extract::Query(p): crate::extract::Query<FsckParams>,
) -> Result<axum::Json<FsckReport>, ApiError> {
    caller.server_admin()?;
    Ok(axum::Json(fsck(&s, p.forget_damaged).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use satchel_store::ContentStore as _;

    /// A kill -9 leaves the dead process's lease in the database; its data
    /// directory's next process (the only one a database nobody shares
    /// can have) must not wait for it to expire before collecting garbage
    /// and failing the uploads the crash abandoned.
    #[tokio::test]
    async fn a_restarted_single_server_is_not_held_up_by_its_predecessors_lease() {
        let dir = crate::testing::dir("lease");
        let s = crate::testing::state(&dir);
        // The crashed predecessor's lease, an hour from expiring.
        assert!(s.db.take_lease(GC_LEASE, "dead", 3_600_000).await.unwrap());
        assert!(leads(&s, GC_LEASE, Duration::from_secs(3)).await);
        // Where replicas share the database, the lease is honoured.
        let shared = s.with_shared_db(true);
        assert!(!leads(&shared, GC_LEASE, Duration::from_secs(3)).await);
        std::fs::remove_dir_all(dir).ok();
    }

    /// What a failed write left (here: chunks of a blob whose digest did
    /// not match) is young: while any write is announced, GC keeps it
    /// whatever the grace and says so; with none, `--grace 0s` frees it.
    #[tokio::test]
    async fn gc_frees_young_unused_chunks_only_while_no_write_is_in_flight() {
        let dir = crate::testing::dir("quiet");
        let s = crate::testing::state(&dir);
        let body = satchel_store::conformance::random_bytes(3 << 20, 5);
        let wrong = Digest::of(b"something else");
        let e = s
            .store
            .put(
                &wrong,
                body.len() as u64,
                &mut &body[..],
                satchel_store::Durability::Sync,
            )
            .await
            .unwrap_err();
        assert!(e.is_client_error(), "{e}");
        let packs = || {
            std::fs::read_dir(dir.join("c/objects/p"))
                .into_iter()
                .flatten()
                .flat_map(|fan| std::fs::read_dir(fan.unwrap().path()).unwrap())
                .count()
        };
        // (its chunks' pack is written once sealed)
        s.store.flush().await.unwrap();
        let before = packs();
        assert!(before >= 1, "the failed write left no pack");
        let mut writing = s.blob_gate.writer();
        writing.add(&"ab".repeat(32)).await.unwrap();
        let r = gc(&s, Duration::ZERO).await.unwrap();
        assert!(r.young_chunks_kept, "{r:?}");
        assert_eq!(packs(), before, "{r:?}");
        drop(writing);
        let r = gc(&s, Duration::ZERO).await.unwrap();
        assert!(!r.young_chunks_kept, "{r:?}");
        assert!(r.bytes_freed >= 3 << 20, "{r:?}");
        assert_eq!(packs(), 0);
        std::fs::remove_dir_all(dir).ok();
    }

    /// Replicas on one database run one key rotation at a time, and each
    /// shows how the one running anywhere stands: a rotation another
    /// replica holds the lease on is not started again, and one that ran
    /// on a replica is reported done by the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_rotation_runs_once_per_database_and_shows_on_every_replica() {
        let Some(base) = satchel_store::conformance::remote_base("SATCHEL_TEST_POSTGRES_URL")
        else {
            return;
        };
        let url = satchel_db::postgres::create_test_database(&base)
            .await
            .unwrap();
        let dir = crate::testing::dir("rotation");
        let open = |keys: &str| crate::testing::store(&dir, Some(keys));
        // Content on key 1; then both replicas get key 2 as well.
        let k1 = satchel_store::Keyring::generate();
        let old = open(&k1);
        for i in 0..20u64 {
            let body = satchel_store::conformance::random_bytes(50_000, i);
            let d = Digest::of(&body);
            old.put(
                &d,
                body.len() as u64,
                &mut &body[..],
                satchel_store::Durability::Sync,
            )
            .await
            .unwrap();
        }
        let both = format!(
            "{k1}\n{}",
            satchel_store::Keyring::parse(&k1).unwrap().next_key_line()
        );
        let replica = || async {
            let db = satchel_db::PostgresStore::connect(&url).await.unwrap();
            AppState::new(std::sync::Arc::new(db), open(&both), "t").with_shared_db(true)
        };
        let (a, b) = (replica().await, replica().await);
        // A rotation some other replica holds the lease on is not started.
        assert!(a
            .db
            .take_lease(ROTATION, "elsewhere", 60_000)
            .await
            .unwrap());
        a.db.set_background_status(ROTATION, r#"{"state":"running","objects":7,"rewritten":3}"#)
            .await
            .unwrap();
        let r = start_rotation(&b).await.unwrap();
        assert_eq!((r.state.as_str(), r.rewritten), ("running", 3), "{r:?}");
        assert_eq!(
            b.rotation.lock().unwrap().state,
            "idle",
            "started a second one"
        );
        // Once free, one replica runs it and the other sees it end.
        a.db.release_lease(ROTATION, "elsewhere").await.unwrap();
        let started = start_rotation(&a).await.unwrap();
        assert!(
            ["running", "done"].contains(&started.state.as_str()),
            "{started:?}"
        );
        let mut seen = rotation(&b).await;
        for _ in 0..600 {
            if seen.state == "done" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen = rotation(&b).await;
        }
        assert!(seen.state == "done" && seen.rewritten >= 20, "{seen:?}");
        // And the lease is free again.
        assert!(b.db.take_lease(ROTATION, "next", 60_000).await.unwrap());
        assert_eq!(b.rotation.lock().unwrap().state, "idle");
        std::fs::remove_dir_all(dir).ok();
    }
}
