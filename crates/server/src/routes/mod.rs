//! Routes of `/api/v1`: runs, artifacts, files and search here; uploads and
//! content transfer in their own modules.

mod admin;
pub(crate) mod archive;
mod content;
pub(crate) use admin::storage_report;
pub(crate) use content::{disposition, stream_blob_inline};
pub(crate) mod diff;
mod permalink;
pub(crate) use permalink::{artifact_named, file_in, pick_run, run_artifacts};
mod pipelines;
pub(crate) use pipelines::{
    artifact_archive, readable_packages, repositories, run_archive, PackageFilter,
};
pub(crate) mod uploads;
mod zip;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::get;
use satchel_db::listing::{DEFAULT_PAGE, MAX_PAGE};
use satchel_db::{ArtifactFilter, PageRequest};
use satchel_model::api::{
    Artifact, ArtifactList, ArtifactWithFiles, FileInfo, FileList, Run, RunList,
};
use satchel_model::glob::Glob;
use satchel_model::query::{self, Scope};
use serde::Deserialize;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::access::{Acting, Caller};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::AppState;

/// The REST API under `/api/v1`: every handler registered through its own
/// `#[utoipa::path]` (so the route and its description in
/// [`crate::openapi`] are one), with the body limits of its route.
pub(crate) fn api(limits: &crate::Limits) -> OpenApiRouter<AppState> {
    let manifest = limits.manifest_bytes;
    let wildcard_files = {
        // axum's `{*path}` is OpenAPI's `{path}`: registered by hand, their
        // descriptions from the same annotations.
        use utoipa::Path as _;
        type Package = pipelines::__path_package_file;
        type Named = permalink::__path_artifact_by_name_file;
        // `routes!` adds an operation's tag; by hand, so does this.
        let tagged = |mut op: utoipa::openapi::path::Operation, tag: &str| {
            op.tags = Some(vec![tag.to_string()]);
            op
        };
        let mut paths = utoipa::openapi::path::Paths::new();
        paths.add_path_operation(
            Package::path(),
            Package::methods(),
            tagged(Package::operation(), "packages"),
        );
        paths.add_path_operation(
            Named::path(),
            Named::methods(),
            tagged(Named::operation(), "artifacts"),
        );
        paths
    };
    let mut router = OpenApiRouter::new()
        .routes(routes!(list_runs, pipelines::create_run))
        .routes(routes!(get_run))
        .routes(routes!(runs_of_build))
        .routes(routes!(diff::diff))
        .routes(routes!(pipelines::set_run_state))
        .routes(routes!(pipelines::create_typed))
        .routes(routes!(pipelines::artifact_archive))
        .routes(routes!(pipelines::run_archive))
        .routes(routes!(pipelines::resolve))
        .routes(routes!(crate::gha::mint_token))
        .routes(routes!(admin::list_pipelines))
        .routes(routes!(admin::storage))
        .routes(routes!(admin::list_tokens, admin::create_token))
        .routes(routes!(admin::revoke_token))
        .routes(routes!(admin::list_orgs, admin::create_org))
        .routes(routes!(admin::list_clusters, admin::create_cluster))
        .routes(routes!(admin::create_pipeline))
        .routes(routes!(admin::move_pipeline))
        .routes(routes!(admin::list_rules, admin::create_rule))
        .routes(routes!(admin::delete_rule))
        .routes(routes!(admin::audit))
        .routes(routes!(crate::maintenance::gc_handler))
        .routes(routes!(crate::maintenance::fsck_handler))
        .routes(routes!(crate::maintenance::keys_handler))
        .routes(routes!(crate::maintenance::rotate_handler))
        .routes(routes!(pipelines::promote, pipelines::list_repositories))
        .routes(routes!(pipelines::list_packages))
        .routes(routes!(pipelines::get_package))
        .routes(routes!(pipelines::package_archive))
        .route(
            "/packages/{repo}/{name}/{version}/files/{*path}",
            get(pipelines::package_file),
        )
        .routes(routes!(list_artifacts))
        .routes(routes!(permalink::artifact_by_name))
        .routes(routes!(permalink::artifact_by_name_archive))
        .route(
            "/pipelines/{pipeline}/runs/{run}/artifacts/{name}/files/{*path}",
            get(permalink::artifact_by_name_file),
        )
        .routes(routes!(search))
        .routes(routes!(get_artifact, delete_artifact))
        .routes(routes!(get_file))
        .routes(routes!(zip_members))
        .routes(routes!(content::file_content))
        .routes(routes!(content::files_content))
        .routes(routes!(uploads::create).layer(DefaultBodyLimit::max(manifest)))
        .routes(routes!(uploads::put_batch).layer(DefaultBodyLimit::disable()))
        .routes(routes!(uploads::put_blob).layer(DefaultBodyLimit::disable()))
        .routes(routes!(uploads::chunks_missing).layer(DefaultBodyLimit::max(manifest)))
        .routes(routes!(uploads::assemble).layer(DefaultBodyLimit::max(manifest)))
        .routes(
            routes!(uploads::put_chunk)
                .layer(DefaultBodyLimit::max(satchel_store::chunked::MAX_CHUNK)),
        )
        .routes(routes!(uploads::finish))
        .routes(routes!(uploads::abort));
    router
        .get_openapi_mut()
        .paths
        .paths
        .extend(wildcard_files.paths);
    router
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
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageParams {
    /// Items per page (default 1,000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// Where the page starts: the previous page's `next_cursor`.
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

#[utoipa::path(
    get,
    path = "/pipelines/{pipeline}/runs",
    tag = "runs",
    summary = "List a pipeline's runs, newest first",
    params(("pipeline" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), PageParams),
    responses((status = 200, description = "A page of runs", body = RunList), crate::openapi::Errors)
)]
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

#[utoipa::path(
    get,
    path = "/pipelines/{pipeline}/runs/{run}",
    tag = "runs",
    summary = "Get one run",
    params(("pipeline" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("run" = String, Path, description = "Run number or selector: `latest`, `lastSuccessfulBuild[:BRANCH]`, `latestFromBranch:BRANCH`")),
    responses((status = 200, description = "The run", body = Run), crate::openapi::Errors)
)]
async fn get_run(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run)): Path<(String, String)>,
) -> Result<axum::Json<Run>, ApiError> {
    caller.read(&s, &pipeline).await?;
    Ok(axum::Json(pick_run(&s, &pipeline, &run).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct BuildParams {
    /// Only runs of this pipeline.
    pipeline: Option<String>,
}

/// `GET /api/v1/builds/{build}[?pipeline=P]`: the runs, in pipelines the
/// caller may read, whose CI build id is `build` (Buildkite's `--build
/// UUID`).
#[utoipa::path(
    get,
    path = "/builds/{build}",
    tag = "runs",
    summary = "The runs whose CI build id is `build`",
    params(("build" = String, Path, description = "The CI's build id (Buildkite's build UUID, GITHUB_RUN_ID, …)"), BuildParams),
    responses((status = 200, description = "The runs, in pipelines the token may read", body = RunList), crate::openapi::Errors)
)]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ArtifactParams {
    job: Option<String>,
    #[serde(default)]
    include_retried_jobs: bool,
}

#[utoipa::path(
    get,
    path = "/pipelines/{pipeline}/runs/{run}/artifacts",
    tag = "artifacts",
    summary = "List a run's artifacts",
    params(("pipeline" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("run" = String, Path, description = "Run number or selector: `latest`, `lastSuccessfulBuild[:BRANCH]`, `latestFromBranch:BRANCH`"), ArtifactParams, PageParams),
    responses((status = 200, description = "A page of artifacts", body = ArtifactList), crate::openapi::Errors)
)]
async fn list_artifacts(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run)): Path<(String, String)>,
    Query(f): Query<ArtifactParams>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<ArtifactList>, ApiError> {
    caller.read(&s, &pipeline).await?;
    let page = page.request()?;
    let run = pick_run(&s, &pipeline, &run).await?;
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
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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
        Ok((
            Glob::new(self.query.as_deref().unwrap_or("**"))?,
            Scope {
                job: self.job.clone(),
                step: self.step.clone(),
                name: self.name.clone(),
                include_retried: self.include_retried_jobs,
            },
        ))
    }

    /// Blank fields (as a form sends them) dropped: no filter. Only the
    /// UI's form means that; to the API a blank glob is an error and a
    /// blank job matches nothing, as a script's empty variable should.
    pub(crate) fn without_blanks(self) -> SearchParams {
        let given = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        SearchParams {
            query: given(self.query),
            job: given(self.job),
            step: given(self.step),
            name: given(self.name),
            ..self
        }
    }
}

/// One page of a run's files that a query selects. Every match of a path is
/// on one page, so the download rules hold page by page.
#[utoipa::path(
    get,
    path = "/pipelines/{pipeline}/runs/{run}/search",
    tag = "files",
    summary = "Find files in a run by glob and scope",
    params(("pipeline" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("run" = String, Path, description = "Run number or selector: `latest`, `lastSuccessfulBuild[:BRANCH]`, `latestFromBranch:BRANCH`"), SearchParams, PageParams),
    responses((status = 200, description = "A page of matching files", body = FileList), crate::openapi::Errors)
)]
async fn search(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run)): Path<(String, String)>,
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
    let run = pick_run(&s, &pipeline, &run).await?;
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

#[utoipa::path(
    get,
    path = "/artifacts/{id}",
    tag = "artifacts",
    summary = "Get an artifact and a page of its files",
    params(("id" = String, Path, description = "Artifact id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$"), PageParams),
    responses((status = 200, description = "The artifact", body = ArtifactWithFiles), crate::openapi::Errors)
)]
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

#[utoipa::path(
    delete,
    path = "/artifacts/{id}",
    tag = "artifacts",
    summary = "Delete an artifact (its content is freed by GC)",
    params(("id" = String, Path, description = "Artifact id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The artifact, deleted", body = Artifact), crate::openapi::Errors)
)]
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

#[utoipa::path(
    get,
    path = "/files/{id}/members",
    tag = "files",
    summary = "What a zip file holds, read from its central directory (nothing is extracted)",
    params(("id" = String, Path, description = "File id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "Its members", body = satchel_model::api::ZipMembers), crate::openapi::Errors)
)]
async fn zip_members(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<satchel_model::api::ZipMembers>, ApiError> {
    check_id("file", &id)?;
    let f = s.db.get_files(std::slice::from_ref(&id)).await?.remove(0);
    caller.note(format!("artifact={} file={id}", f.artifact_id));
    caller.read(&s, &f.producer.pipeline).await?;
    let digest = satchel_store::Digest::from_hex(&f.sha256)?;
    let dir = crate::unzip::directory(&*s.store, &digest, f.size).await?;
    Ok(axum::Json(satchel_model::api::ZipMembers {
        members: dir
            .members
            .iter()
            .cloned()
            .map(|m| satchel_model::api::ZipMember {
                name: m.name,
                size: m.size,
                compressed: m.compressed,
                method: m.method,
                encrypted: m.encrypted,
            })
            .collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/files/{id}",
    tag = "files",
    summary = "Get one file's metadata",
    params(("id" = String, Path, description = "File id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The file", body = FileInfo), crate::openapi::Errors)
)]
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
