//! Satchel's metadata store.
//!
//! [`MetaStore`] is everything the server asks of a database: creating and
//! finishing uploads, finding runs, artifacts and files. The rules and the
//! queries live once, in `rules` (written against the small interface of
//! [`sql`]); each database is a thin module with its own append-only
//! `migrations/`: SQLite (the embedded default) and PostgreSQL, chosen by
//! URL at start-up through [`open`]. Nothing database-specific leaks out of
//! this crate: callers see the wire types of `satchel_model::api`.
//!
//! Visibility rule, enforced here: a file is visible only when its upload and
//! its artifact are `finished`. An upload becomes finished in one transaction,
//! and only after every blob it references is recorded as durable.

pub mod access;
mod backend;
pub mod copy;
pub mod gha;
mod lease;
pub mod listing;
mod packs;
pub mod postgres;
mod rules;
#[doc(hidden)]
pub mod sql;
mod sqlite;
mod stats;
pub mod story;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use satchel_model::access::{
    AuditEntry, AuditPage, AuditQuery, ClusterInfo, OrgInfo, PipelineInfo, PipelineStorage,
    RuleInfo, TokenInfo,
};
use satchel_model::api::{
    Artifact, CreateTyped, CreateUpload, FileInfo, NewRun, Package, PackageWithFiles, Promote, Run,
    RunRef, SetRunState, UploadFinished,
};
use satchel_model::glob::Glob;
use satchel_model::query::Scope;
use satchel_model::selector::RunSelector;

pub use backend::{Backend, Store};
pub use gha::{GhaBlock, GhaCommitted, GhaKey, GhaSnapshot, GhaUpload, GhaView, GhaViewKind};
pub use listing::{ArtifactFilter, Page, PageRequest};
pub use postgres::PostgresStore;
pub use sqlite::{SqliteBackend, SqliteStore, MIGRATIONS as SQLITE_MIGRATIONS};

/// Errors of the metadata store. The server maps them to HTTP statuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The named thing does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored (409).
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed (400).
    #[error("{0}")]
    Invalid(String),
    /// A rule of the data refuses the caller (403), e.g. a package
    /// repository of another organization.
    #[error("{0}")]
    Forbidden(String),
    /// A quota of [`Quotas`] would be passed (409 `limit_exceeded`).
    #[error("{0}")]
    Limit(String),
    /// A file's announced size is not the size of the content its digest
    /// names (400 `size_mismatch`).
    #[error("{0}")]
    SizeMismatch(String),
    /// The database failed (500).
    #[error("database error: {0}")]
    Backend(String),
    /// The database's disk or quota is full (507): nothing was written.
    #[error("{0}")]
    Full(String),
}

/// The message of [`DbError::Full`]: what is full, without paths.
pub const DATABASE_FULL: &str =
    "the metadata database has no space left on its disk: nothing was written; free space \
     (delete artifacts and run `satchel admin gc`) or enlarge the disk, then retry";

/// What the server must still do for a new upload.
#[derive(Debug, Clone)]
pub struct UploadPlan {
    /// Upload session id.
    pub upload_id: String,
    /// Target artifact.
    pub artifact_id: String,
    /// Target artifact's name.
    pub artifact_name: String,
    /// Distinct digests (hex) of new files that are not yet durably stored.
    pub missing: Vec<String>,
    /// Manifest entries the artifact already had with identical content.
    pub already_present: u64,
    /// With `replace`: the artifacts finishing will delete (the caller must
    /// be allowed to, else abort the upload).
    pub replaces: Vec<String>,
}

/// How much one run and one artifact may hold (`satchel serve
/// --max-artifacts-per-run`, `--max-files-per-artifact`). An upload or
/// typed artifact that would pass a quota is refused whole
/// ([`DbError::Limit`]) and nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Live (not deleted, expired or failed) artifacts in one run.
    pub artifacts_per_run: u64,
    /// Files in one artifact, finished and staged.
    pub files_per_artifact: u64,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            artifacts_per_run: 10_000,
            files_per_artifact: 1_000_000,
        }
    }
}

/// A file row whose size is not its content's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MisSized {
    /// Where it is: `artifact ID` or `package REPO/NAME@VERSION`.
    pub owner: String,
    /// Its path.
    pub path: String,
    /// Its content.
    pub sha256: String,
    /// The size the row claims.
    pub claimed: u64,
    /// The size of the content.
    pub actual: u64,
}

/// The blobs an upload session may send: digest (hex) and size.
#[derive(Debug, Clone)]
pub struct UploadNeeds {
    /// Its state.
    pub state: satchel_model::api::UploadState,
    /// Every digest referenced by the upload's files, with its size.
    pub blobs: std::collections::HashMap<String, u64>,
    /// Who is uploading: the artifact's pipeline, run, job and attempt.
    pub producer: satchel_model::api::Producer,
    /// Digests this upload must send itself, whole (held for other
    /// clusters only), before it finishes (see
    /// [`MetaStore::create_upload_proving`]).
    pub owed: HashSet<String>,
}

/// The most runs one build id may name in an answer (ids from one CI do
/// not repeat; ids of two CIs rarely meet).
pub const BUILD_RUNS_MAX: usize = 100;

/// A job attempt of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    /// Stage key, when known.
    pub stage: Option<String>,
    /// Job key.
    pub key: String,
    /// Attempt.
    pub attempt: u32,
}

/// GC's exclusive hold on the blob-write gate of a database that several
/// processes write (see [`MetaStore::hold_write_gate`]); released when
/// dropped.
pub struct WriteGateHold {
    /// Digests (hex) some process announced it is storing when the hold
    /// began; no announcement can start while it is held.
    pub announced: HashSet<String>,
    /// What holds the gate (a database connection).
    holder: Box<dyn GateHolder>,
}

/// What holds a [`WriteGateHold`]: a connection whose session holds the lock.
#[async_trait]
pub(crate) trait GateHolder: Send + Sync {
    /// Fails when the hold is lost (the connection ended).
    async fn check(&self) -> Result<(), DbError>;
}

impl WriteGateHold {
    pub(crate) fn new(announced: HashSet<String>, holder: Box<dyn GateHolder>) -> WriteGateHold {
        WriteGateHold { announced, holder }
    }

    /// Fails when the gate is no longer held: the connection holding it
    /// ended (a database restart or failover frees the lock), so writers
    /// elsewhere may be storing what this sweep is about to delete. GC
    /// checks before each step that deletes and stops when it fails.
    pub async fn check(&self) -> Result<(), DbError> {
        self.holder.check().await
    }
}

impl std::fmt::Debug for WriteGateHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteGateHold")
            .field("announced", &self.announced.len())
            .finish()
    }
}

/// How long an announcement protects a blob at most: rows of a process
/// that died mid-write stop counting (and are removed) after this.
pub const WRITE_ANNOUNCEMENT_MAX_MS: i64 = 24 * 3600 * 1000;

/// The metadata store.
#[async_trait]
pub trait MetaStore: AccessStore + GhaStore + Send + Sync + 'static {
    /// Creates the run, job attempt and artifact on first use, stages the
    /// manifest's files (invisible until [`MetaStore::finish_upload`]) and
    /// says which content is missing.
    async fn create_upload(
        &self,
        req: &CreateUpload,
        quotas: &Quotas,
    ) -> Result<UploadPlan, DbError> {
        self.create_upload_proving(req, quotas, None).await
    }
    /// [`MetaStore::create_upload`] for a caller of cluster `prove_in`
    /// (organization and cluster keys; `None`: a trusted caller): content
    /// the server holds but no finished upload of that cluster does is
    /// missing too, and owed:
    /// the upload finishes only once it has sent it
    /// ([`MetaStore::record_blobs_for`]). So a digest learned somewhere is
    /// not a key to another organization's content.
    async fn create_upload_proving(
        &self,
        req: &CreateUpload,
        quotas: &Quotas,
        prove_in: Option<(&str, &str)>,
    ) -> Result<UploadPlan, DbError>;
    /// [`MetaStore::record_blobs`] of content upload `upload_id` sent
    /// itself, bytes verified: it no longer owes them.
    async fn record_blobs_for(
        &self,
        upload_id: &str,
        blobs: &[(String, u64)],
    ) -> Result<(), DbError>;
    /// The blobs an upload references.
    async fn upload_needs(&self, upload_id: &str) -> Result<UploadNeeds, DbError>;
    /// Which of `digests` are durably stored.
    async fn known_blobs(&self, digests: &[String]) -> Result<HashSet<String>, DbError>;
    /// Records blobs as durably stored. Call only after the content store
    /// made them durable. Recording a blob again makes it young again (its
    /// `created_at` becomes now), so content that was just re-sent or
    /// re-committed gets the full GC grace period.
    async fn record_blobs(&self, blobs: &[(String, u64)]) -> Result<(), DbError>;
    /// Makes an upload's files visible, atomically, once all their content
    /// is recorded; finishing twice is harmless.
    async fn finish_upload(&self, upload_id: &str) -> Result<UploadFinished, DbError>;
    /// Marks an upload failed; its staged files are dropped.
    async fn abort_upload(&self, upload_id: &str) -> Result<(), DbError>;
    /// Fails every upload started before `cutoff_ms` (milliseconds since the
    /// epoch) that is still `uploading`, as [`MetaStore::abort_upload`] does;
    /// returns how many. The server runs this periodically so abandoned
    /// uploads (a killed agent, a crash) end in state `error`.
    async fn expire_stale_uploads(&self, cutoff_ms: i64) -> Result<u64, DbError>;
    /// Runs of a pipeline, newest first, a page at a time.
    async fn list_runs(&self, pipeline: &str, page: &PageRequest) -> Result<Page<Run>, DbError>;
    /// One run.
    async fn find_run(&self, pipeline: &str, number: u64) -> Result<Run, DbError>;
    /// The runs whose CI build id is `build_id`, in `pipeline` or any; at
    /// most [`BUILD_RUNS_MAX`] + 1, so a caller can tell there are more.
    async fn runs_by_build(
        &self,
        build_id: &str,
        pipeline: Option<&str>,
    ) -> Result<Vec<Run>, DbError>;
    /// Every visible file of a run (all attempts; callers filter).
    async fn run_files(&self, run_id: &str) -> Result<Vec<FileInfo>, DbError>;
    /// Artifacts of a run, any state but `deleted`.
    async fn list_artifacts(&self, run_id: &str) -> Result<Vec<Artifact>, DbError>;
    /// Artifacts of a run that `filter` admits, any state but `deleted`, by
    /// name then creation, a page at a time.
    async fn artifacts_page(
        &self,
        run_id: &str,
        filter: &ArtifactFilter,
        page: &PageRequest,
    ) -> Result<Page<Artifact>, DbError>;
    /// Files of a run that `glob` matches within `scope`, by path then
    /// upload time, a page at a time; every match of one path is on one page
    /// (see [`listing`]).
    async fn search_files(
        &self,
        run_id: &str,
        glob: &Glob,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<FileInfo>, DbError>;
    /// One artifact.
    async fn get_artifact(&self, id: &str) -> Result<Artifact, DbError>;
    /// Visible files of an artifact.
    async fn artifact_files(&self, id: &str) -> Result<Vec<FileInfo>, DbError>;
    /// Visible files of an artifact by path, a page at a time.
    async fn artifact_files_page(
        &self,
        id: &str,
        page: &PageRequest,
    ) -> Result<Page<FileInfo>, DbError>;
    /// Visible files by id, in the order asked; unknown ids are an error.
    async fn get_files(&self, ids: &[String]) -> Result<Vec<FileInfo>, DbError>;
    /// Marks an artifact deleted; its files disappear at once.
    async fn delete_artifact(&self, id: &str) -> Result<Artifact, DbError>;
    /// Publishes a typed (image or link) artifact, finished at once; the
    /// name rules of [`MetaStore::create_upload`] with `exclusive` apply.
    async fn create_typed(&self, req: &CreateTyped, quotas: &Quotas) -> Result<Artifact, DbError>;
    /// Starts the next run of `pipeline`, pinning its sources (each
    /// selector must match a run, else `NotFound` naming the source).
    async fn create_run(&self, pipeline: &str, req: &NewRun) -> Result<Run, DbError>;
    /// Records a run's state (creating the run if needed).
    async fn set_run_state(
        &self,
        pipeline: &str,
        number: u64,
        req: &SetRunState,
    ) -> Result<Run, DbError>;
    /// The run of `pipeline` that `selector` picks.
    async fn select_run(
        &self,
        pipeline: &str,
        selector: &RunSelector,
        triggered_from: Option<&RunRef>,
    ) -> Result<Run, DbError>;
    /// Every job attempt of a run.
    async fn list_jobs(&self, run_id: &str) -> Result<Vec<JobSummary>, DbError>;
    /// Copies a finished artifact into an immutable package version, by
    /// reference (no content is copied).
    async fn promote(&self, req: &Promote) -> Result<Package, DbError>;
    /// One package version; `None` means the newest.
    async fn get_package(
        &self,
        repository: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<PackageWithFiles, DbError>;
    /// Marks finished artifacts whose expiry is before `now_ms` as
    /// `expired`, except those of the newest passed run of each pipeline
    /// and branch; returns how many.
    async fn expire_artifacts(&self, now_ms: i64) -> Result<u64, DbError>;
    /// Up to `limit` blobs recorded before `cutoff_ms` that nothing live
    /// references (no file of a live upload of a live artifact, no package).
    async fn unreferenced_blobs(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, DbError>;
    /// Deletes the rows of those `digests` that are still unreferenced and
    /// still recorded before `cutoff_ms` (a blob re-recorded since it was
    /// listed is young again and stays), in one transaction, and returns
    /// them: only their content may go.
    async fn forget_blobs(
        &self,
        digests: &[String],
        cutoff_ms: i64,
    ) -> Result<Vec<String>, DbError>;
    /// Deletes the rows of `digests` whatever references them, and returns
    /// how many there were: fsck's repair path, so that an upload of the
    /// same content is told it is missing and restores it.
    async fn unrecord_blobs(&self, digests: &[String]) -> Result<u64, DbError>;
    /// Every blob that finished artifacts and packages reference, with its
    /// size as recorded when its content was verified (`None` when no row
    /// records it: then no file row's claim stands in), for fsck.
    async fn referenced_blobs(&self) -> Result<Vec<(String, Option<u64>)>, DbError>;
    /// Up to `limit` visible file rows (of finished artifacts, or of
    /// packages) whose size is not the size of their content: left by uploads before sizes were
    /// checked. fsck reports them; they never make content count as
    /// damaged.
    async fn mis_sized_files(&self, limit: usize) -> Result<Vec<MisSized>, DbError>;
    /// Sets every artifact's `file_count` and `size` to those of its
    /// visible files where they differ (they are kept as uploads finish,
    /// so only a fault or an older replica writing meanwhile can make them
    /// drift), and describes up to `limit` it corrected: fsck's check.
    async fn recount_artifacts(&self, limit: usize) -> Result<Vec<String>, DbError>;
    /// Every recorded blob's digest, referenced or not: what the content
    /// store's sweep must keep.
    async fn recorded_blobs(&self) -> Result<Vec<String>, DbError>;
    /// Announces to garbage collection in every process sharing this
    /// database that write `writer` (a fresh id) is storing `digests`
    /// (hex), until [`MetaStore::end_writes`]; waits while a GC holds the
    /// gate. Nothing on a database only this process writes (SQLite,
    /// behind the data directory's lock), where the server's own gate is
    /// enough.
    async fn announce_writes(&self, writer: &str, digests: &[String]) -> Result<(), DbError>;
    /// Ends the announcements of write `writer`.
    async fn end_writes(&self, writer: &str) -> Result<(), DbError>;
    /// Takes the gate exclusively for a GC sweep, once announcements in
    /// flight are in: new ones wait until the hold is dropped. `None` on a
    /// database only this process writes.
    async fn hold_write_gate(&self) -> Result<Option<WriteGateHold>, DbError>;
    /// Brings the query planner's statistics up to date after a bulk load
    /// (a migration): PostgreSQL plans from them, and until autovacuum
    /// analyzes the new rows (a minute or more later) it can pick plans
    /// that read whole tables per row; seen as a search running for minutes
    /// right after 20,000 files were loaded. Nothing on SQLite, whose
    /// plans use no statistics unless `ANALYZE` ran once (Satchel never
    /// runs it).
    async fn refresh_statistics(&self) -> Result<(), DbError>;
    /// Whether the connections to the database are encrypted (TLS to
    /// PostgreSQL); `false` for a file.
    async fn connection_encrypted(&self) -> Result<bool, DbError>;
    /// The package repositories of an organization (every one when
    /// `None`), by key, with how many versions each holds.
    async fn package_repositories(&self, org: Option<&str>) -> Result<Vec<(String, u64)>, DbError>;
    /// Package versions of a repository (optionally one package), newest
    /// first, a page at a time.
    async fn list_packages(
        &self,
        repository: &str,
        name: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<Package>, DbError>;
    /// Records that pack `key` of the content store, of `size` bytes, holds
    /// `digests` (hex): where replicas share the database, so that one
    /// finds a pack another wrote without listing the bucket.
    async fn record_pack(&self, key: &str, size: u64, digests: &[String]) -> Result<(), DbError>;
    /// The packs (key, size) recorded as holding `digest` (hex), newest
    /// first (a few at most).
    async fn locate_pack(&self, digest: &str) -> Result<Vec<(String, u64)>, DbError>;
    /// Forgets what pack `key` holds (it was deleted).
    async fn forget_pack(&self, key: &str) -> Result<(), DbError>;
    /// Takes or renews the lease on background work `name` for `holder`
    /// (one id per process) for `ttl_ms`, if it is free, expired or
    /// `holder`'s; whether `holder` holds it now.
    async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, DbError>;
    /// Gives up lease `name` if `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), DbError>;
    /// Records what background work `name` reports now (JSON), for every
    /// replica to show.
    async fn set_background_status(&self, name: &str, status: &str) -> Result<(), DbError>;
    /// What background work `name` last reported, and how many
    /// milliseconds ago.
    async fn background_status(&self, name: &str) -> Result<Option<(String, i64)>, DbError>;
}

/// A token to store: its id, the hash of its secret, what it may do.
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Token id.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// Scopes, home and narrowing.
    pub spec: satchel_model::access::NewToken,
    /// Expiry, milliseconds since the epoch.
    pub expires_at_ms: Option<i64>,
}

/// A rule to store, with its organization resolved and its condition
/// validated.
#[derive(Debug, Clone)]
pub struct NewRuleRow {
    /// Rule type.
    pub kind: String,
    /// Organization key.
    pub org: String,
    /// Who reads.
    pub source: satchel_model::access::RuleEnd,
    /// Whose artifacts.
    pub target: satchel_model::access::RuleEnd,
    /// Condition text.
    pub condition: Option<String>,
}

/// Access control's rows (see [`access`]): organizations, clusters, where
/// pipelines live, tokens, rules and the audit log.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Creates an organization (409 if it exists).
    async fn create_org(&self, key: &str) -> Result<OrgInfo, DbError>;
    /// Organizations by key.
    async fn list_orgs(&self) -> Result<Vec<OrgInfo>, DbError>;
    /// Creates a cluster in an organization (409 if it exists).
    async fn create_cluster(&self, org: &str, key: &str) -> Result<ClusterInfo, DbError>;
    /// Clusters by organization and key.
    async fn list_clusters(&self) -> Result<Vec<ClusterInfo>, DbError>;
    /// Creates a pipeline in a cluster (409 if it exists anywhere).
    async fn create_pipeline(
        &self,
        key: &str,
        org: &str,
        cluster: &str,
    ) -> Result<PipelineInfo, DbError>;
    /// The pipeline where it lives, or created in `org`/`cluster`.
    async fn ensure_pipeline_in(
        &self,
        key: &str,
        org: &str,
        cluster: &str,
    ) -> Result<PipelineInfo, DbError>;
    /// Where a pipeline lives, if it exists.
    async fn pipeline_home(&self, key: &str) -> Result<Option<PipelineInfo>, DbError>;
    /// Pipelines (of one organization) by key.
    async fn list_pipelines(&self, org: Option<&str>) -> Result<Vec<PipelineInfo>, DbError>;
    /// Every pipeline's storage figures, by key, and the bytes of the
    /// distinct contents known to be stored: aggregates over whole tables,
    /// for callers to cache.
    async fn storage_stats(&self) -> Result<(Vec<PipelineStorage>, u64), DbError>;
    /// Moves a pipeline to another cluster.
    async fn move_pipeline(
        &self,
        key: &str,
        org: &str,
        cluster: &str,
    ) -> Result<PipelineInfo, DbError>;
    /// Stores a token.
    async fn create_token(&self, token: &TokenRow) -> Result<TokenInfo, DbError>;
    /// The token whose secret hashes to `hash` (hex), live or not.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>, DbError>;
    /// A token by id, live or not.
    async fn token_by_id(&self, id: &str) -> Result<Option<TokenInfo>, DbError>;
    /// Tokens (of one organization), oldest first.
    async fn list_tokens(&self, org: Option<&str>) -> Result<Vec<TokenInfo>, DbError>;
    /// Revokes a token; it stops working on the next request.
    async fn revoke_token(&self, id: &str) -> Result<TokenInfo, DbError>;
    /// Stores a rule.
    async fn create_rule(&self, rule: &NewRuleRow) -> Result<RuleInfo, DbError>;
    /// Rules (of one organization), oldest first.
    async fn list_rules(&self, org: Option<&str>) -> Result<Vec<RuleInfo>, DbError>;
    /// Deletes a rule.
    async fn delete_rule(&self, id: &str) -> Result<RuleInfo, DbError>;
    /// Appends audit entries (an id seen before is skipped).
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), DbError>;
    /// A page of the audit log, newest first.
    async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, DbError>;
    /// Deletes audit entries older than `before_ms`; how many.
    async fn prune_audit(&self, before_ms: i64) -> Result<u64, DbError>;
    /// The secret `name` every process of this database shares: the one
    /// stored, or `candidate` if none is yet.
    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, DbError>;
}

/// GitHub Actions uploads in progress ([`gha`]), shared by every replica.
#[async_trait]
pub trait GhaStore: Send + Sync + 'static {
    /// Starts upload `u`, replacing (with its blocks) any upload of the
    /// same job and artifact name.
    async fn gha_start(&self, u: &GhaUpload) -> Result<(), DbError>;
    /// Upload `id`, marked used now, with the bytes held by its blocks
    /// other than `except_block`; `None` once finalized, replaced or reaped.
    async fn gha_touch(
        &self,
        id: &str,
        except_block: Option<&str>,
    ) -> Result<Option<(GhaUpload, u64)>, DbError>;
    /// The upload of `key`, marked used now.
    async fn gha_find(&self, key: &GhaKey) -> Result<Option<GhaUpload>, DbError>;
    /// Records a block of upload `id` (and its blob as durably stored),
    /// replacing one of the same id, unless the upload's blocks would hold
    /// more than `cap` bytes (`false`, nothing written). `NotFound` once
    /// the upload is gone.
    async fn gha_put_block(&self, id: &str, block: &GhaBlock, cap: u64) -> Result<bool, DbError>;
    /// Upload `id`'s blocks named by `blocks`, in order (`None`: unknown).
    async fn gha_blocks(
        &self,
        id: &str,
        blocks: &[String],
    ) -> Result<Vec<Option<GhaBlock>>, DbError>;
    /// Records upload `id`'s committed blob (as durably stored) and drops
    /// its blocks; `false` if the upload is gone.
    async fn gha_commit(&self, id: &str, done: &GhaCommitted) -> Result<bool, DbError>;
    /// Ends upload `id` (finalized).
    async fn gha_end(&self, id: &str) -> Result<(), DbError>;
    /// Drops the uploads not used for `idle_ms` (by the database's
    /// clock); how many.
    async fn gha_reap(&self, idle_ms: i64) -> Result<u64, DbError>;
    /// How many uploads are in progress.
    async fn gha_count(&self) -> Result<u64, DbError>;
    /// The files of a run's finished protocol artifacts (one each, `glob`
    /// `gha-zip` or `gha-raw`) of current job attempts, oldest first.
    async fn gha_files(&self, run_id: &str) -> Result<Vec<FileInfo>, DbError>;
    /// Run `run` of `pipeline` (id `run_id`): its protocol artifacts, the
    /// ones a carried-out delete still holds, and its views, read in one
    /// transaction.
    async fn gha_snapshot(
        &self,
        run_id: &str,
        pipeline: &str,
        run: u64,
    ) -> Result<GhaSnapshot, DbError>;
    /// Protocol file `id`, of a finished artifact or of one a carried-out
    /// delete still holds.
    async fn gha_file(&self, id: &str) -> Result<Option<FileInfo>, DbError>;
    /// Records what job `key.job`'s call did to artifact `artifact_id`
    /// named `key.name` (see [`GhaViewKind`]).
    async fn gha_record_view(
        &self,
        key: &GhaKey,
        kind: GhaViewKind,
        artifact_id: &str,
    ) -> Result<(), DbError>;
    /// The views recorded in run `run` of `pipeline`, oldest first.
    async fn gha_views(&self, pipeline: &str, run: u64) -> Result<Vec<GhaView>, DbError>;
    /// Publishes `req` (one protocol file whose content is stored) for job
    /// `key.job` and deletes, in the same transaction, the artifacts named
    /// `key.name` that the job's pending deletes name: a swap.
    async fn gha_publish(
        &self,
        key: &GhaKey,
        req: &CreateUpload,
        quotas: &Quotas,
    ) -> Result<UploadFinished, DbError>;
    /// Carries out the pending deletes older than `wait_ms` whose job has
    /// no upload of that name in progress (of one run, and of one artifact
    /// name, when given), then drops views older than `keep_ms`; how many
    /// deletes it carried out.
    async fn gha_settle_views(
        &self,
        run: Option<(&str, u64, Option<&str>)>,
        wait_ms: i64,
        keep_ms: i64,
    ) -> Result<u64, DbError>;
}

/// Opens the metadata store named by `url`: `sqlite://PATH` (or a bare
/// path) for the embedded default, `postgres://USER:PASSWORD@HOST:PORT/DB`
/// (or `postgresql://`) for PostgreSQL (see [`PostgresStore::connect`]).
pub async fn open(url: &str) -> Result<Arc<dyn MetaStore>, DbError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(SqliteStore::open(path)?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(url).await?));
    }
    if url.contains("://") {
        return Err(DbError::Invalid(format!(
            "unsupported database URL {url:?}: use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        )));
    }
    Ok(Arc::new(SqliteStore::open(url)?))
}
