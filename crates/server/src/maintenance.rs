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
//! upload (finished or in flight) of a live artifact, no package file. For
//! each batch, GC takes [`crate::AppState::blob_gate`] exclusively, skips
//! every digest a writer is storing right now, deletes the rows that are
//! *still* unreferenced and still older than the cutoff (recording a blob
//! again makes it young: a GitHub Actions upload records its blob when the
//! block list commits, well before FinalizeArtifact references it) in one
//! transaction (SQLite serializes this against `create_upload`, which
//! checks `blobs` and inserts its file rows in one transaction: an upload
//! is either told the content is missing, or its staged rows keep the blob
//! alive), then deletes their content. Writers announce a digest before
//! they store it and until they record it (see [`crate::gate`]), so a blob
//! re-sent during a sweep cannot be deleted after it was stored, and no
//! lock is held while a client streams its bytes.
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
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Artifacts moved to `expired` by this pass.
    pub expired_artifacts: u64,
    /// Blobs deleted.
    pub blobs_deleted: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// Expires artifacts, then collects unreferenced content older than `grace`.
pub async fn gc(s: &AppState, grace: Duration) -> Result<GcReport, ApiError> {
    let now = satchel_model::id::now_millis();
    let mut report = GcReport {
        expired_artifacts: s.db.expire_artifacts(now).await?,
        ..GcReport::default()
    };
    let cutoff = now - grace.as_millis() as i64;
    loop {
        let candidates = s.db.unreferenced_blobs(cutoff, BATCH).await?;
        if candidates.is_empty() {
            break;
        }
        let sweep = s.blob_gate.sweep().await;
        let digests: Vec<String> = candidates
            .iter()
            .map(|(d, _)| d.clone())
            .filter(|d| !sweep.is_being_written(d))
            .collect();
        let gone = s.db.forget_blobs(&digests, cutoff).await?;
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
        if candidates.len() < BATCH {
            break;
        }
    }
    if report.blobs_deleted > 0 || report.expired_artifacts > 0 {
        tracing::info!(
            "gc: {} artifacts expired, {} blobs deleted, {} bytes freed",
            report.expired_artifacts,
            report.blobs_deleted,
            report.bytes_freed
        );
    }
    Ok(report)
}

/// What fsck found.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
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
    /// Whether nothing was wrong.
    pub ok: bool,
}

/// Checks every referenced blob: present, right size, right hash.
pub async fn fsck(s: &AppState) -> Result<FsckReport, ApiError> {
    let mut r = FsckReport::default();
    for (hex, size) in s.db.referenced_blobs().await? {
        r.checked += 1;
        let d = Digest::from_hex(&hex)?;
        match s.store.size(&d).await {
            Err(StoreError::NotFound(_)) => {
                r.missing.push(hex);
                continue;
            }
            Err(e) => return Err(e.into()),
            Ok(n) if n != size => {
                r.wrong_size.push(hex);
                continue;
            }
            Ok(_) => {}
        }
        let mut stream = match s.store.get(&d, None).await {
            Ok(st) => st,
            Err(StoreError::Corrupt { .. }) => {
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
    r.ok = r.missing.is_empty() && r.wrong_size.is_empty() && r.corrupt.is_empty();
    Ok(r)
}

/// Runs [`gc`] every `every` with the default grace, and reaps GitHub
/// Actions uploads idle for a day, for `satchel serve`.
pub fn spawn_periodic_gc(s: AppState, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let reaped = s
                .gha
                .reap_idle(crate::gha::SESSION_IDLE_SECS, crate::gha::now_secs());
            if reaped > 0 {
                tracing::info!("reaped {reaped} idle GitHub Actions uploads");
            }
            if let Err(e) = gc(&s, DEFAULT_GRACE).await {
                tracing::warn!("periodic gc failed: {}", e.message);
            }
        }
    });
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct GcParams {
    grace_seconds: Option<u64>,
}

pub(crate) async fn gc_handler(
    axum::extract::State(s): axum::extract::State<AppState>,
    crate::extract::Json(p): crate::extract::Json<GcParams>,
) -> Result<axum::Json<GcReport>, ApiError> {
    let grace = p.grace_seconds.map_or(DEFAULT_GRACE, Duration::from_secs);
    Ok(axum::Json(gc(&s, grace).await?))
}

pub(crate) async fn fsck_handler(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> Result<axum::Json<FsckReport>, ApiError> {
    Ok(axum::Json(fsck(&s).await?))
}
