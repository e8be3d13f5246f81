//! What one job's protocol calls see of its run's artifacts, so that
//! `overwrite: true` is a swap no reader notices.
//!
//! `upload-artifact` with `overwrite: true` calls DeleteArtifact and then
//! uploads the new artifact; a download that lists the artifact, then asks
//! for its URL by name (the only key GetSignedArtifactURL takes), then
//! fetches it, may fall anywhere in between. Deleting at once, as GitHub
//! does, leaves other jobs with nothing for the length of an upload. Here:
//!
//! - DeleteArtifact records a pending delete: the deleting job no longer
//!   sees the artifact (so its CreateArtifact of the name is allowed);
//!   every other reader still does.
//! - The same job's FinalizeArtifact of that name publishes the new
//!   artifact and deletes the old in one transaction
//!   ([`satchel_db::GhaStore::gha_publish`]): readers see one or the other.
//! - A pending delete without an upload of that name in progress is
//!   carried out after [`DELETE_WAIT_MS`] (10 s) (when the run is next read
//!   through the protocol, or by the reaper every minute), so a plain
//!   DeleteArtifact takes effect for other protocol readers within that
//!   wait, and at once for another job that uploads the name.
//! - A filtered ListArtifacts pins, for the job that made it, the artifact
//!   it returned for that name; GetSignedArtifactURL serves the pinned one
//!   for [`PIN_FRESH_MS`], and a replaced artifact stays listable by id for
//!   [`REPLACED_READABLE_MS`]. So a download that listed the old artifact
//!   just before a swap fetches the old bytes whole, and its digest check
//!   holds. The views hold their artifacts' content from GC until they are
//!   dropped after [`VIEW_KEEP_MS`].

use satchel_db::{DbError, GhaKey, GhaView, GhaViewKind};
use satchel_model::api::FileInfo;

use super::token::Identity;
use super::{database_id, TwirpError};
use crate::AppState;

/// How long a pending delete waits for its job's upload of the name, by
/// default ([`super::Gha::delete_wait_ms`]).
pub const DELETE_WAIT_MS: i64 = 10_000;
/// How long a replaced artifact stays listable by id.
pub const REPLACED_READABLE_MS: i64 = 60_000;
/// How long a read's pin decides GetSignedArtifactURL.
pub const PIN_FRESH_MS: i64 = 60_000;
/// How long views (and the content they hold) are kept; longer than
/// [`REPLACED_READABLE_MS`] plus [`PIN_FRESH_MS`], so content a pin may
/// still serve is never collected.
pub const VIEW_KEEP_MS: i64 = 10 * 60_000;

/// A run's protocol artifacts and views, as one job's calls see them.
pub struct RunView {
    live: Vec<FileInfo>,
    replaced: Vec<FileInfo>,
    views: Vec<GhaView>,
}

impl RunView {
    /// The token's run, with its pending deletes that are due carried out.
    pub async fn load(s: &AppState, who: &Identity) -> Result<RunView, TwirpError> {
        let run = match s.db.find_run(&who.pipeline, who.run).await {
            Ok(r) => r,
            Err(DbError::NotFound(_)) => {
                return Ok(RunView {
                    live: Vec::new(),
                    replaced: Vec::new(),
                    views: Vec::new(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let mut snap = s.db.gha_snapshot(&run.id, &who.pipeline, who.run).await?;
        let wait = s.gha.delete_wait_ms();
        let due = snap.views.iter().any(|v| {
            v.kind == GhaViewKind::Delete && v.done_ms.is_none() && !v.waiting && v.age_ms >= wait
        });
        if due {
            // The reaper settles them too: failing here would fail a read.
            match s
                .db
                .gha_settle_views(Some((&who.pipeline, who.run, None)), wait, VIEW_KEEP_MS)
                .await
            {
                Ok(_) => snap = s.db.gha_snapshot(&run.id, &who.pipeline, who.run).await?,
                Err(e) => tracing::warn!("carrying out GitHub Actions deletes: {e}"),
            }
        }
        Ok(RunView {
            live: snap.live,
            replaced: snap.replaced,
            views: snap.views,
        })
    }

    /// The pending deletes of artifact `name` by other jobs than `who`'s
    /// with no upload of the name in progress: `who` may take the name
    /// once they are carried out.
    pub fn others_pending(&self, who: &Identity, name: &str) -> bool {
        self.views.iter().any(|v| {
            v.kind == GhaViewKind::Delete
                && v.done_ms.is_none()
                && !v.waiting
                && v.name == name
                && v.job != who.job
        })
    }

    /// Whether `who`'s job deleted artifact `id` (pending or done).
    fn deleted_by(&self, who: &Identity, id: &str) -> bool {
        self.deleted_by_job(&who.job, id)
    }

    fn deleted_by_job(&self, job: &str, id: &str) -> bool {
        self.views
            .iter()
            .any(|v| v.kind == GhaViewKind::Delete && v.job == job && v.artifact_id == id)
    }

    /// The live artifacts `who` sees, oldest first.
    pub fn visible<'a>(&'a self, who: &Identity) -> impl Iterator<Item = &'a FileInfo> + 'a {
        let job = who.job.clone();
        self.live
            .iter()
            .filter(move |f| !self.deleted_by_job(&job, &f.artifact_id))
    }

    /// The newest artifact named `name` that `who` sees.
    pub fn named(&self, who: &Identity, name: &str) -> Option<&FileInfo> {
        self.visible(who).filter(|f| f.artifact_name == name).last()
    }

    /// The artifact with protocol id `id` that `who` sees: live, or
    /// replaced (by someone else) moments ago.
    pub fn by_id(&self, who: &Identity, id: i64) -> Option<&FileInfo> {
        self.visible(who)
            .find(|f| database_id(&f.artifact_id) == id)
            .or_else(|| {
                self.replaced.iter().find(|f| {
                    database_id(&f.artifact_id) == id
                        && !self.deleted_by(who, &f.artifact_id)
                        && self.views.iter().any(|v| {
                            v.artifact_id == f.artifact_id
                                && v.done_ms.is_some_and(|d| d < REPLACED_READABLE_MS)
                        })
                })
            })
    }

    /// The artifact GetSignedArtifactURL serves `who` for `name`: the one
    /// its last filtered listing returned, if that was moments ago and the
    /// content is still held, else the newest.
    pub fn for_url(&self, who: &Identity, name: &str) -> Option<&FileInfo> {
        let pinned = self.views.iter().rev().find(|v| {
            v.kind == GhaViewKind::Read
                && v.job == who.job
                && v.name == name
                && v.age_ms < PIN_FRESH_MS
        });
        pinned
            .and_then(|p| {
                self.live
                    .iter()
                    .chain(&self.replaced)
                    .find(|f| f.artifact_id == p.artifact_id)
            })
            .filter(|f| !self.deleted_by(who, &f.artifact_id))
            .or_else(|| self.named(who, name))
    }
}

/// Records that `who`'s job did `kind` to artifact `f`.
pub async fn record(
    s: &AppState,
    who: &Identity,
    kind: GhaViewKind,
    f: &FileInfo,
) -> Result<(), TwirpError> {
    let key = GhaKey {
        pipeline: who.pipeline.clone(),
        run: who.run,
        job: who.job.clone(),
        name: f.artifact_name.clone(),
    };
    Ok(s.db.gha_record_view(&key, kind, &f.artifact_id).await?)
}
