//! Routes of `/api/v1`: runs, artifacts, files and search here; uploads and
//! content transfer in their own modules.

mod admin;
mod archive;
mod content;
pub(crate) use admin::storage_report;
pub(crate) use content::stream_blob_inline;
pub(crate) mod diff;
mod pipelines;
pub(crate) use pipelines::{
    artifact_archive, readable_packages, repositories, run_archive, PackageFilter,
};
pub(crate) mod uploads;
mod zip;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post, put};
use axum::Router;
use satchel_db::listing::{DEFAULT_PAGE, MAX_PAGE};
use satchel_db::{ArtifactFilter, PageRequest};
use satchel_model::api::{
    Artifact, ArtifactList, ArtifactWithFiles, FileInfo, FileList, Run, RunList,
};
use satchel_model::glob::Glob;
use satchel_model::query::{self, Scope};
use serde::Deserialize;

use crate::access::{Acting, Caller};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::AppState;

pub(crate) fn api(limits: &crate::Limits) -> Router<AppState> {
    let manifest = limits.manifest_bytes;
    Router::new()
        .route(
            "/pipelines/{pipeline}/runs",
            get(list_runs).post(pipelines::create_run),
        )
        .route("/pipelines/{pipeline}/runs/{run}", get(get_run))
        .route("/builds/{build}", get(runs_of_build))
        .route("/diff", get(diff::diff))
        .route(
            "/pipelines/{pipeline}/runs/{run}/state",
            put(pipelines::set_run_state),
        )
        .route("/artifacts", post(pipelines::create_typed))
        .route("/artifacts/{id}/archive", get(pipelines::artifact_archive))
        .route(
            "/pipelines/{pipeline}/runs/{run}/archive",
            get(pipelines::run_archive),
        )
        .route("/resolve", post(pipelines::resolve))
        .route("/gha/tokens", post(crate::gha::mint_token))
        .route("/pipelines", get(admin::list_pipelines))
        .route("/storage", get(admin::storage))
        .route(
            "/admin/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route("/admin/tokens/{id}/revoke", post(admin::revoke_token))
        .route("/admin/orgs", get(admin::list_orgs).post(admin::create_org))
        .route(
            "/admin/clusters",
            get(admin::list_clusters).post(admin::create_cluster),
        )
        .route("/admin/pipelines", post(admin::create_pipeline))
        .route("/admin/pipelines/{name}/move", post(admin::move_pipeline))
        .route(
            "/admin/rules",
            get(admin::list_rules).post(admin::create_rule),
        )
        .route(
            "/admin/rules/{id}",
            axum::routing::delete(admin::delete_rule),
        )
        .route("/admin/audit", get(admin::audit))
        .route("/admin/gc", post(crate::maintenance::gc_handler))
        .route("/admin/fsck", post(crate::maintenance::fsck_handler))
        .route("/admin/keys", get(crate::maintenance::keys_handler))
        .route(
            "/admin/keys/rotate",
            post(crate::maintenance::rotate_handler),
        )
        .route("/packages", post(pipelines::promote))
        .route("/packages", get(pipelines::list_repositories))
        .route("/packages/{repo}", get(pipelines::list_packages))
        .route(
            "/packages/{repo}/{name}/{version}",
            get(pipelines::get_package),
        )
        .route(
            "/packages/{repo}/{name}/{version}/archive",
            get(pipelines::package_archive),
        )
        .route(
            "/packages/{repo}/{name}/{version}/files/{*path}",
            get(pipelines::package_file),
        )
        .route(
            "/pipelines/{pipeline}/runs/{run}/artifacts",
            get(list_artifacts),
        )
        .route("/pipelines/{pipeline}/runs/{run}/search", get(search))
        .route("/artifacts/{id}", get(get_artifact).delete(delete_artifact))
        .route("/files/{id}", get(get_file))
        .route("/files/{id}/content", get(content::file_content))
        .route("/files/content", post(content::files_content))
        .route(
            "/uploads",
            post(uploads::create).layer(DefaultBodyLimit::max(manifest)),
        )
        .route(
            "/uploads/{id}/blobs",
            post(uploads::put_batch).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/uploads/{id}/blobs/{sha256}",
            put(uploads::put_blob).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/uploads/{id}/blobs/{sha256}/chunks",
            post(uploads::chunks_missing).layer(DefaultBodyLimit::max(manifest)),
        )
        .route(
            "/uploads/{id}/blobs/{sha256}/assemble",
            post(uploads::assemble).layer(DefaultBodyLimit::max(manifest)),
        )
        .route(
            "/uploads/{id}/chunks/{sha256}",
            put(uploads::put_chunk).layer(DefaultBodyLimit::max(satchel_store::chunked::MAX_CHUNK)),
        )
        .route("/uploads/{id}/finish", post(uploads::finish))
        .route("/uploads/{id}/abort", post(uploads::abort))
}

/// Rejects ids that cannot exist before they reach the database.
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if satchel_model::id::is_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("{what} {id:?} not found")))
    }
}

/// `?limit=N&cursor=C` on every list: at most `limit` items (default
/// 1,000, at most 10,000) after the page that gave out `cursor`.
#[derive(Deserialize)]
pub(super) struct PageParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

impl PageParams {
    pub(super) fn request(self) -> Result<PageRequest, ApiError> {
        let limit = match self.limit {
            None => DEFAULT_PAGE,
            Some(n @ 1..=MAX_PAGE) => n,
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "limit {n} is out of range: ask for 1 to {MAX_PAGE} items per page"
                )))
            }
        };
        Ok(PageRequest {
            cursor: self.cursor,
            limit,
            ..PageRequest::default()
        })
    }
}

async fn list_runs(
    State(s): State<AppState>,
    caller: Caller,
    Path(pipeline): Path<String>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<RunList>, ApiError> {
    caller.read(&s, &pipeline).await?;
    let page = s.db.list_runs(&pipeline, &page.request()?).await?;
    Ok(axum::Json(RunList {
        runs: page.items,
        next_cursor: page.next,
    }))
}

async fn get_run(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run)): Path<(String, u64)>,
) -> Result<axum::Json<Run>, ApiError> {
    caller.read(&s, &pipeline).await?;
    Ok(axum::Json(s.db.find_run(&pipeline, run).await?))
}

#[derive(Deserialize)]
struct BuildParams {
    /// Only runs of this pipeline.
    pipeline: Option<String>,
}

/// `GET /api/v1/builds/{build}[?pipeline=P]`: the runs, in pipelines the
/// caller may read, whose CI build id is `build` (Buildkite's `--build
/// UUID`).
async fn runs_of_build(
    State(s): State<AppState>,
    caller: Caller,
    Path(build): Path<String>,
    Query(q): Query<BuildParams>,
) -> Result<axum::Json<RunList>, ApiError> {
    satchel_model::names::validate_key("build id", &build)?;
    if let Some(p) = &q.pipeline {
        satchel_model::names::validate_key("pipeline", p)?;
    }
    let found = s.db.runs_by_build(&build, q.pipeline.as_deref()).await?;
    if found.len() > satchel_db::BUILD_RUNS_MAX {
        return Err(ApiError::bad_request(format!(
            "build id {build:?} names more than {} runs; name the pipeline (?pipeline=)",
            satchel_db::BUILD_RUNS_MAX
        )));
    }
    let mut runs = Vec::new();
    for run in found {
        // Runs of pipelines the caller may not read are left out, as if
        // they did not exist (and nothing is noted: this is a filter).
        if caller.can_read(&s, &run.pipeline).await? {
            runs.push(run);
        }
    }
    Ok(axum::Json(RunList {
        runs,
        next_cursor: None,
    }))
}

#[derive(Deserialize)]
struct ArtifactParams {
    job: Option<String>,
    #[serde(default)]
    include_retried_jobs: bool,
}

async fn list_artifacts(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run)): Path<(String, u64)>,
    Query(f): Query<ArtifactParams>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<ArtifactList>, ApiError> {
    caller.read(&s, &pipeline).await?;
    let page = page.request()?;
    let run = s.db.find_run(&pipeline, run).await?;
    let filter = ArtifactFilter {
        job: f.job,
        include_retried: f.include_retried_jobs,
    };
    let page = s.db.artifacts_page(&run.id, &filter, &page).await?;
    Ok(axum::Json(ArtifactList {
        artifacts: page.items,
        next_cursor: page.next,
    }))
}

/// A search's query and scope, as the CLI's `--job`, `--step`, `--name`
/// and `--include-retried-jobs` give them.
#[derive(Deserialize, Default)]
pub(crate) struct SearchParams {
    pub(crate) query: Option<String>,
    pub(crate) job: Option<String>,
    pub(crate) step: Option<String>,
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) include_retried_jobs: bool,
    /// `list` (every match, the default) or `download` (ambiguity rules).
    purpose: Option<String>,
}

impl SearchParams {
    /// The glob (`**` when none or blank) and the scope; blank fields (as
    /// a form sends them) are no filter.
    pub(crate) fn glob_and_scope(&self) -> Result<(Glob, Scope), ApiError> {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        let query = given(&self.query).unwrap_or_else(|| "**".into());
        Ok((
            Glob::new(&query)?,
            Scope {
                job: given(&self.job),
                step: given(&self.step),
                name: given(&self.name),
                include_retried: self.include_retried_jobs,
            },
        ))
    }
}

/// One page of a run's files that a query selects. Every match of a path is
/// on one page, so the download rules hold page by page.
async fn search(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run)): Path<(String, u64)>,
    Query(p): Query<SearchParams>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<FileList>, ApiError> {
    caller.read(&s, &pipeline).await?;
    let page = page.request()?;
    let (glob, scope) = p.glob_and_scope()?;
    let download = match p.purpose.as_deref().unwrap_or("list") {
        "list" => false,
        "download" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown purpose {other:?}: use `list` or `download`"
            )))
        }
    };
    let run = s.db.find_run(&pipeline, run).await?;
    let found = s.db.search_files(&run.id, &glob, &scope, &page).await?;
    let files = if download {
        query::select_for_download(&glob, &scope, found.items)?
    } else {
        found.items
    };
    Ok(axum::Json(FileList {
        files,
        next_cursor: found.next,
    }))
}

async fn get_artifact(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<ArtifactWithFiles>, ApiError> {
    check_id("artifact", &id)?;
    let page = page.request()?;
    let artifact = s.db.get_artifact(&id).await?;
    caller.note(format!("artifact={id}"));
    caller.read(&s, &artifact.producer.pipeline).await?;
    let files = s.db.artifact_files_page(&id, &page).await?;
    Ok(axum::Json(ArtifactWithFiles {
        artifact,
        files: files.items,
        next_cursor: files.next,
    }))
}

async fn delete_artifact(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Artifact>, ApiError> {
    check_id("artifact", &id)?;
    let artifact = s.db.get_artifact(&id).await?;
    caller.note(format!("artifact={id}"));
    caller
        .delete(
            &s,
            &artifact.producer.pipeline,
            &Acting::producer(&artifact.producer),
        )
        .await?;
    Ok(axum::Json(s.db.delete_artifact(&id).await?))
}

async fn get_file(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<FileInfo>, ApiError> {
    check_id("file", &id)?;
    let mut files = s.db.get_files(std::slice::from_ref(&id)).await?;
    caller.note(format!("artifact={} file={id}", files[0].artifact_id));
    caller.read(&s, &files[0].producer.pipeline).await?;
    Ok(axum::Json(files.remove(0)))
}
