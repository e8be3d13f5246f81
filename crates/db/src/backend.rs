//! [`MetaStore`] for any database: the trait's methods are the rules of
//! [`crate::rules`], run on tokio's blocking pool inside a transaction of a
//! [`Backend`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
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

use crate::listing::{self, ArtifactFilter, Page, PageRequest};
use crate::sql::Sql;
use crate::{
    access, gha, lease, packs, rules, AccessStore, DbError, GhaBlock, GhaCommitted, GhaKey,
    GhaSnapshot, GhaStore, GhaUpload, GhaView, GhaViewKind, JobSummary, MetaStore, MisSized,
    NewRuleRow, Quotas, TokenRow, UploadNeeds, UploadPlan, WriteGateHold,
};

/// Tables and their columns.
pub type ColumnMap = BTreeMap<String, BTreeSet<String>>;

/// What a database gives the rules: a connection to read on and a write
/// transaction. Both are blocking calls, made from tokio's blocking pool.
pub trait Backend: Send + Sync + 'static {
    /// Runs `f` on a connection that sees committed data.
    #[doc(hidden)]
    fn read<T>(&self, f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, DbError>;
    /// Runs `f` in one write transaction and commits it when `f` succeeds;
    /// rolls back (nothing written) when it fails. A backend may run `f`
    /// again after a transient conflict (a deadlock), so `f` must not
    /// keep state between calls.
    #[doc(hidden)]
    fn write<T>(&self, f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, DbError>)
        -> Result<T, DbError>;
    /// Every table and its columns, as the database has them (for
    /// [`crate::copy`]).
    #[doc(hidden)]
    fn columns(&self) -> Result<ColumnMap, DbError>;
    /// [`MetaStore::announce_writes`]; nothing by default (one process).
    #[doc(hidden)]
    fn announce_writes(&self, _writer: &str, _digests: &[String]) -> Result<(), DbError> {
        Ok(())
    }
    /// [`MetaStore::end_writes`]; nothing by default.
    #[doc(hidden)]
    fn end_writes(&self, _writer: &str) -> Result<(), DbError> {
        Ok(())
    }
    /// [`MetaStore::hold_write_gate`]; `None` by default.
    #[doc(hidden)]
    fn hold_write_gate(&self) -> Result<Option<WriteGateHold>, DbError> {
        Ok(None)
    }
    /// [`MetaStore::refresh_statistics`]; nothing by default.
    #[doc(hidden)]
    fn refresh_statistics(&self) -> Result<(), DbError> {
        Ok(())
    }
    /// [`MetaStore::connection_encrypted`]; `false` by default (a file).
    #[doc(hidden)]
    fn connection_encrypted(&self) -> Result<bool, DbError> {
        Ok(false)
    }
}

/// The metadata store on backend `B`.
pub struct Store<B> {
    backend: Arc<B>,
}

impl<B> Clone for Store<B> {
    fn clone(&self) -> Store<B> {
        Store {
            backend: self.backend.clone(),
        }
    }
}

impl<B: Backend> Store<B> {
    pub(crate) fn new(backend: B) -> Store<B> {
        Store {
            backend: Arc::new(backend),
        }
    }

    /// The backend, for backend-specific calls.
    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, shared, for work on tokio's blocking pool.
    pub(crate) fn shared_backend(&self) -> Arc<B> {
        self.backend.clone()
    }

    async fn read<T, F>(&self, mut f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Sql) -> Result<T, DbError> + Send + 'static,
    {
        self.blocking(move |b| b.read(&mut f)).await
    }

    /// Runs `f` on the backend in tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&B) -> Result<T, DbError> + Send + 'static,
    {
        let b = self.backend.clone();
        tokio::task::spawn_blocking(move || f(&b))
            .await
            .map_err(|e| DbError::Backend(format!("database task failed: {e}")))?
    }

    async fn write<T, F>(&self, mut f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Sql) -> Result<T, DbError> + Send + 'static,
    {
        self.blocking(move |b| b.write(&mut f)).await
    }
}

#[async_trait]
impl<B: Backend> MetaStore for Store<B> {
    async fn create_upload_proving(
        &self,
        req: &CreateUpload,
        quotas: &Quotas,
        prove_in: Option<(&str, &str)>,
    ) -> Result<UploadPlan, DbError> {
        let (req, quotas) = (req.clone(), *quotas);
        let home = prove_in.map(|(o, c)| (o.to_string(), c.to_string()));
        self.write(move |c| {
            let home = home.as_ref().map(|(o, cl)| (o.as_str(), cl.as_str()));
            rules::create_upload(c, &req, &quotas, home)
        })
        .await
    }

    async fn record_blobs_for(
        &self,
        upload_id: &str,
        blobs: &[(String, u64)],
    ) -> Result<(), DbError> {
        let (id, blobs) = (upload_id.to_string(), blobs.to_vec());
        self.write(move |c| rules::record_blobs_for(c, &id, &blobs))
            .await
    }

    async fn upload_needs(&self, upload_id: &str) -> Result<UploadNeeds, DbError> {
        let id = upload_id.to_string();
        self.read(move |c| rules::upload_needs(c, &id)).await
    }

    async fn known_blobs(&self, digests: &[String]) -> Result<HashSet<String>, DbError> {
        let digests = digests.to_vec();
        self.read(move |c| rules::known_blobs(c, &digests)).await
    }

    async fn record_blobs(&self, blobs: &[(String, u64)]) -> Result<(), DbError> {
        let blobs = blobs.to_vec();
        self.write(move |c| rules::record_blobs(c, &blobs)).await
    }

    async fn finish_upload(&self, upload_id: &str) -> Result<UploadFinished, DbError> {
        let id = upload_id.to_string();
        self.write(move |c| rules::finish_upload(c, &id)).await
    }

    async fn abort_upload(&self, upload_id: &str) -> Result<(), DbError> {
        let id = upload_id.to_string();
        self.write(move |c| rules::abort_upload(c, &id)).await
    }

    async fn expire_stale_uploads(&self, cutoff_ms: i64) -> Result<u64, DbError> {
        let ids = self
            .read(move |c| rules::stale_uploads(c, cutoff_ms))
            .await?;
        let mut n = 0;
        for id in ids {
            if self.write(move |c| rules::expire_upload(c, &id)).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn list_runs(&self, pipeline: &str, page: &PageRequest) -> Result<Page<Run>, DbError> {
        let (p, page) = (pipeline.to_string(), page.clone());
        self.read(move |c| listing::runs(c, &p, &page)).await
    }

    async fn find_run(&self, pipeline: &str, number: u64) -> Result<Run, DbError> {
        let p = pipeline.to_string();
        self.read(move |c| rules::find_run(c, &p, number)).await
    }

    async fn runs_by_build(
        &self,
        build_id: &str,
        pipeline: Option<&str>,
    ) -> Result<Vec<Run>, DbError> {
        let (b, p) = (build_id.to_string(), pipeline.map(String::from));
        self.read(move |c| rules::runs_by_build(c, &b, p.as_deref()))
            .await
    }

    async fn run_files(&self, run_id: &str) -> Result<Vec<FileInfo>, DbError> {
        let id = run_id.to_string();
        self.read(move |c| rules::run_files(c, &id)).await
    }

    async fn list_artifacts(&self, run_id: &str) -> Result<Vec<Artifact>, DbError> {
        let id = run_id.to_string();
        self.read(move |c| rules::list_artifacts(c, &id)).await
    }

    async fn artifacts_page(
        &self,
        run_id: &str,
        filter: &ArtifactFilter,
        page: &PageRequest,
    ) -> Result<Page<Artifact>, DbError> {
        let (id, filter, page) = (run_id.to_string(), filter.clone(), page.clone());
        self.read(move |c| listing::artifacts(c, &id, &filter, &page))
            .await
    }

    async fn search_files(
        &self,
        run_id: &str,
        glob: &Glob,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<FileInfo>, DbError> {
        let (id, glob, scope, page) = (
            run_id.to_string(),
            glob.clone(),
            scope.clone(),
            page.clone(),
        );
        self.read(move |c| listing::search(c, &id, &glob, &scope, &page))
            .await
    }

    async fn get_artifact(&self, id: &str) -> Result<Artifact, DbError> {
        let id = id.to_string();
        self.read(move |c| rules::get_artifact(c, &id)).await
    }

    async fn artifact_files(&self, id: &str) -> Result<Vec<FileInfo>, DbError> {
        let id = id.to_string();
        self.read(move |c| rules::artifact_files(c, &id)).await
    }

    async fn artifact_files_page(
        &self,
        id: &str,
        page: &PageRequest,
    ) -> Result<Page<FileInfo>, DbError> {
        let (id, page) = (id.to_string(), page.clone());
        self.read(move |c| listing::artifact_files(c, &id, &page))
            .await
    }

    async fn get_files(&self, ids: &[String]) -> Result<Vec<FileInfo>, DbError> {
        let ids = ids.to_vec();
        self.read(move |c| rules::get_files(c, &ids)).await
    }

    async fn delete_artifact(&self, id: &str) -> Result<Artifact, DbError> {
        let id = id.to_string();
        self.write(move |c| rules::delete_artifact(c, &id)).await
    }

    async fn create_typed(&self, req: &CreateTyped, quotas: &Quotas) -> Result<Artifact, DbError> {
        let (req, quotas) = (req.clone(), *quotas);
        self.write(move |c| rules::create_typed(c, &req, &quotas))
            .await
    }

    async fn create_run(&self, pipeline: &str, req: &NewRun) -> Result<Run, DbError> {
        let (p, req) = (pipeline.to_string(), req.clone());
        self.write(move |c| rules::create_run(c, &p, &req)).await
    }

    async fn set_run_state(
        &self,
        pipeline: &str,
        number: u64,
        req: &SetRunState,
    ) -> Result<Run, DbError> {
        let (p, req) = (pipeline.to_string(), req.clone());
        self.write(move |c| rules::set_run_state(c, &p, number, &req))
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
        self.read(move |c| rules::select_run(c, &p, &sel, t.as_ref()))
            .await
    }

    async fn list_jobs(&self, run_id: &str) -> Result<Vec<JobSummary>, DbError> {
        let id = run_id.to_string();
        self.read(move |c| rules::list_jobs(c, &id)).await
    }

    async fn promote(&self, req: &Promote) -> Result<Package, DbError> {
        let req = req.clone();
        self.write(move |c| rules::promote(c, &req)).await
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
        self.read(move |c| rules::get_package(c, &repo, &name, version.as_deref()))
            .await
    }

    async fn package_repositories(&self, org: Option<&str>) -> Result<Vec<(String, u64)>, DbError> {
        let org = org.map(str::to_string);
        self.read(move |c| listing::package_repositories(c, org.as_deref()))
            .await
    }

    async fn list_packages(
        &self,
        repository: &str,
        name: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<Package>, DbError> {
        let (repo, name) = (repository.to_string(), name.map(str::to_string));
        let page = page.clone();
        self.read(move |c| listing::packages(c, &repo, name.as_deref(), &page))
            .await
    }

    async fn expire_artifacts(&self, now_ms: i64) -> Result<u64, DbError> {
        self.write(move |c| rules::expire_artifacts(c, now_ms))
            .await
    }

    async fn unreferenced_blobs(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, DbError> {
        self.read(move |c| rules::unreferenced_blobs(c, cutoff_ms, limit))
            .await
    }

    async fn forget_blobs(
        &self,
        digests: &[String],
        cutoff_ms: i64,
    ) -> Result<Vec<String>, DbError> {
        let digests = digests.to_vec();
        self.write(move |c| rules::forget_blobs(c, &digests, cutoff_ms))
            .await
    }

    async fn unrecord_blobs(&self, digests: &[String]) -> Result<u64, DbError> {
        let digests = digests.to_vec();
        self.write(move |c| rules::unrecord_blobs(c, &digests))
            .await
    }

    async fn referenced_blobs(&self) -> Result<Vec<(String, Option<u64>)>, DbError> {
        self.read(rules::referenced_blobs).await
    }

    async fn mis_sized_files(&self, limit: usize) -> Result<Vec<MisSized>, DbError> {
        self.read(move |c| rules::mis_sized_files(c, limit)).await
    }

    async fn recount_artifacts(&self, limit: usize) -> Result<Vec<String>, DbError> {
        let mut out = Vec::new();
        // Found in one read; each set right in a write of its own, under
        // the artifact's lock, so uploads are never held up for long.
        for id in self.read(rules::miscounted_artifacts).await? {
            let fixed = self.write(move |c| rules::recount_artifact(c, &id)).await?;
            if let Some(note) = fixed.filter(|_| out.len() < limit) {
                out.push(note);
            }
        }
        Ok(out)
    }

    async fn recorded_blobs(&self) -> Result<Vec<String>, DbError> {
        self.read(rules::recorded_blobs).await
    }

    async fn announce_writes(&self, writer: &str, digests: &[String]) -> Result<(), DbError> {
        let (w, d) = (writer.to_string(), digests.to_vec());
        self.blocking(move |b| b.announce_writes(&w, &d)).await
    }

    async fn end_writes(&self, writer: &str) -> Result<(), DbError> {
        let w = writer.to_string();
        self.blocking(move |b| b.end_writes(&w)).await
    }

    async fn hold_write_gate(&self) -> Result<Option<WriteGateHold>, DbError> {
        self.blocking(|b| b.hold_write_gate()).await
    }

    async fn refresh_statistics(&self) -> Result<(), DbError> {
        self.blocking(|b| b.refresh_statistics()).await
    }

    async fn connection_encrypted(&self) -> Result<bool, DbError> {
        self.blocking(|b| b.connection_encrypted()).await
    }

    async fn record_pack(&self, key: &str, size: u64, digests: &[String]) -> Result<(), DbError> {
        let (key, digests) = (key.to_string(), digests.to_vec());
        self.write(move |c| packs::record(c, &key, size, &digests))
            .await
    }

    async fn locate_pack(&self, digest: &str) -> Result<Vec<(String, u64)>, DbError> {
        let d = digest.to_string();
        self.read(move |c| packs::locate(c, &d, 8)).await
    }

    async fn forget_pack(&self, key: &str) -> Result<(), DbError> {
        let key = key.to_string();
        self.write(move |c| packs::forget(c, &key)).await
    }

    async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, DbError> {
        let (n, h) = (name.to_string(), holder.to_string());
        self.write(move |c| lease::take(c, &n, &h, ttl_ms)).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), DbError> {
        let (n, h) = (name.to_string(), holder.to_string());
        self.write(move |c| lease::release(c, &n, &h)).await
    }

    async fn set_background_status(&self, name: &str, status: &str) -> Result<(), DbError> {
        let (n, st) = (name.to_string(), status.to_string());
        self.write(move |c| lease::set_status(c, &n, &st)).await
    }

    async fn background_status(&self, name: &str) -> Result<Option<(String, i64)>, DbError> {
        let n = name.to_string();
        self.read(move |c| lease::status(c, &n)).await
    }
}

#[async_trait]
impl<B: Backend> AccessStore for Store<B> {
    async fn create_org(&self, key: &str) -> Result<OrgInfo, DbError> {
        let k = key.to_string();
        self.write(move |c| access::create_org(c, &k)).await
    }

    async fn list_orgs(&self) -> Result<Vec<OrgInfo>, DbError> {
        self.write(access::list_orgs).await
    }

    async fn create_cluster(&self, org: &str, key: &str) -> Result<ClusterInfo, DbError> {
        let (o, k) = (org.to_string(), key.to_string());
        self.write(move |c| access::create_cluster(c, &o, &k)).await
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterInfo>, DbError> {
        self.write(access::list_clusters).await
    }

    async fn create_pipeline(
        &self,
        key: &str,
        org: &str,
        cluster: &str,
    ) -> Result<PipelineInfo, DbError> {
        let (k, o, cl) = (key.to_string(), org.to_string(), cluster.to_string());
        self.write(move |c| access::create_pipeline(c, &k, &o, &cl))
            .await
    }

    async fn ensure_pipeline_in(
        &self,
        key: &str,
        org: &str,
        cluster: &str,
    ) -> Result<PipelineInfo, DbError> {
        let k = key.to_string();
        if let Some(p) = self.read(move |c| access::pipeline_home(c, &k)).await? {
            return Ok(p);
        }
        let (k, o, cl) = (key.to_string(), org.to_string(), cluster.to_string());
        self.write(move |c| access::ensure_pipeline_in(c, &k, &o, &cl).map(|(p, _)| p))
            .await
    }

    async fn pipeline_home(&self, key: &str) -> Result<Option<PipelineInfo>, DbError> {
        let k = key.to_string();
        self.read(move |c| access::pipeline_home(c, &k)).await
    }

    async fn storage_stats(&self) -> Result<(Vec<PipelineStorage>, u64), DbError> {
        self.read(crate::stats::storage).await
    }

    async fn list_pipelines(&self, org: Option<&str>) -> Result<Vec<PipelineInfo>, DbError> {
        let o = org.map(str::to_string);
        self.read(move |c| access::list_pipelines(c, o.as_deref()))
            .await
    }

    async fn move_pipeline(
        &self,
        key: &str,
        org: &str,
        cluster: &str,
    ) -> Result<PipelineInfo, DbError> {
        let (k, o, cl) = (key.to_string(), org.to_string(), cluster.to_string());
        self.write(move |c| access::move_pipeline(c, &k, &o, &cl))
            .await
    }

    async fn create_token(&self, token: &TokenRow) -> Result<TokenInfo, DbError> {
        let t = token.clone();
        self.write(move |c| access::create_token(c, &t)).await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>, DbError> {
        let h = hash.to_string();
        self.read(move |c| access::token_by_hash(c, &h)).await
    }

    async fn token_by_id(&self, id: &str) -> Result<Option<TokenInfo>, DbError> {
        let i = id.to_string();
        self.read(move |c| access::token_by_id(c, &i)).await
    }

    async fn list_tokens(&self, org: Option<&str>) -> Result<Vec<TokenInfo>, DbError> {
        let o = org.map(str::to_string);
        self.read(move |c| access::list_tokens(c, o.as_deref()))
            .await
    }

    async fn revoke_token(&self, id: &str) -> Result<TokenInfo, DbError> {
        let i = id.to_string();
        self.write(move |c| access::revoke_token(c, &i)).await
    }

    async fn create_rule(&self, rule: &NewRuleRow) -> Result<RuleInfo, DbError> {
        let r = rule.clone();
        self.write(move |c| access::create_rule(c, &r)).await
    }

    async fn list_rules(&self, org: Option<&str>) -> Result<Vec<RuleInfo>, DbError> {
        let o = org.map(str::to_string);
        self.read(move |c| access::list_rules(c, o.as_deref()))
            .await
    }

    async fn delete_rule(&self, id: &str) -> Result<RuleInfo, DbError> {
        let i = id.to_string();
        self.write(move |c| access::delete_rule(c, &i)).await
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), DbError> {
        let e = entries.to_vec();
        self.write(move |c| access::append_audit(c, &e)).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, DbError> {
        let q = query.clone();
        self.read(move |c| access::list_audit(c, &q)).await
    }

    async fn prune_audit(&self, before_ms: i64) -> Result<u64, DbError> {
        self.write(move |c| access::prune_audit(c, before_ms)).await
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, DbError> {
        let (n, v) = (name.to_string(), candidate.to_string());
        self.write(move |c| access::shared_secret(c, &n, &v)).await
    }
}

#[async_trait]
impl<B: Backend> GhaStore for Store<B> {
    async fn gha_start(&self, u: &GhaUpload) -> Result<(), DbError> {
        let u = u.clone();
        self.write(move |c| gha::start(c, &u)).await
    }

    async fn gha_touch(
        &self,
        id: &str,
        except_block: Option<&str>,
    ) -> Result<Option<(GhaUpload, u64)>, DbError> {
        let (id, except) = (id.to_string(), except_block.map(String::from));
        self.write(move |c| gha::touch(c, &id, except.as_deref()))
            .await
    }

    async fn gha_find(&self, key: &GhaKey) -> Result<Option<GhaUpload>, DbError> {
        let key = key.clone();
        self.write(move |c| gha::find(c, &key)).await
    }

    async fn gha_put_block(&self, id: &str, block: &GhaBlock, cap: u64) -> Result<bool, DbError> {
        let (id, b) = (id.to_string(), block.clone());
        self.write(move |c| gha::put_block(c, &id, &b, cap)).await
    }

    async fn gha_blocks(
        &self,
        id: &str,
        blocks: &[String],
    ) -> Result<Vec<Option<GhaBlock>>, DbError> {
        let (id, blocks) = (id.to_string(), blocks.to_vec());
        self.read(move |c| gha::blocks(c, &id, &blocks)).await
    }

    async fn gha_commit(&self, id: &str, done: &GhaCommitted) -> Result<bool, DbError> {
        let (id, done) = (id.to_string(), done.clone());
        self.write(move |c| gha::commit(c, &id, &done)).await
    }

    async fn gha_end(&self, id: &str) -> Result<(), DbError> {
        let id = id.to_string();
        self.write(move |c| gha::end(c, &id)).await
    }

    async fn gha_reap(&self, idle_ms: i64) -> Result<u64, DbError> {
        self.write(move |c| gha::reap(c, idle_ms)).await
    }

    async fn gha_count(&self) -> Result<u64, DbError> {
        self.read(gha::count).await
    }

    async fn gha_files(&self, run_id: &str) -> Result<Vec<FileInfo>, DbError> {
        let id = run_id.to_string();
        self.read(move |c| gha::files(c, &id)).await
    }

    async fn gha_snapshot(
        &self,
        run_id: &str,
        pipeline: &str,
        run: u64,
    ) -> Result<GhaSnapshot, DbError> {
        let (id, p) = (run_id.to_string(), pipeline.to_string());
        self.read(move |c| gha::snapshot(c, &id, &p, run)).await
    }

    async fn gha_file(&self, id: &str) -> Result<Option<FileInfo>, DbError> {
        let id = id.to_string();
        self.read(move |c| gha::file(c, &id)).await
    }

    async fn gha_record_view(
        &self,
        key: &GhaKey,
        kind: GhaViewKind,
        artifact_id: &str,
    ) -> Result<(), DbError> {
        let (key, id) = (key.clone(), artifact_id.to_string());
        self.write(move |c| gha::record_view(c, &key, kind, &id))
            .await
    }

    async fn gha_views(&self, pipeline: &str, run: u64) -> Result<Vec<GhaView>, DbError> {
        let p = pipeline.to_string();
        self.read(move |c| gha::views(c, &p, run)).await
    }

    async fn gha_publish(
        &self,
        key: &GhaKey,
        req: &CreateUpload,
        quotas: &Quotas,
    ) -> Result<UploadFinished, DbError> {
        let (key, req, quotas) = (key.clone(), req.clone(), *quotas);
        self.write(move |c| gha::publish(c, &key, &req, &quotas))
            .await
    }

    async fn gha_settle_views(
        &self,
        run: Option<(&str, u64, Option<&str>)>,
        wait_ms: i64,
        keep_ms: i64,
    ) -> Result<u64, DbError> {
        let run = run.map(|(p, n, a)| (p.to_string(), n, a.map(String::from)));
        self.write(move |c| {
            let scope = run.as_ref().map(|(p, n, a)| (p.as_str(), *n, a.as_deref()));
            gha::settle_views(c, scope, wait_ms, keep_ms)
        })
        .await
    }
}
