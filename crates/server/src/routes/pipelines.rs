//! Pipeline semantics: starting runs with pinned sources, recording run
//! outcomes, typed (image and link) artifacts, `$[…]` reference
//! resolution, whole-artifact archives, and promotion to packages.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use satchel_db::listing::MAX_PAGE;
use satchel_db::{DbError, PageRequest};
use satchel_model::api::{
    Artifact, ArtifactState, CreateTyped, NewRun, Package, PackageList, PackageWithFiles, Promote,
    ResolveRequest, Resolved, Run, SetRunState,
};
use satchel_model::expr::Reference;
use satchel_model::names;
use satchel_model::selector::RunSelector;
use serde::Deserialize;

use super::archive::{archive_response, ArchiveParams, Member};
use super::check_id;
use super::uploads::{validate_branch_commit, validate_context, validate_expiry};
use crate::access::{Acting, Caller};
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::AppState;

fn validate_run_number(run: u64) -> Result<(), ApiError> {
    if run == 0 || run > i64::MAX as u64 {
        return Err(ApiError::bad_request("run numbers start at 1"));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/pipelines/{pipeline}/runs",
    tag = "runs",
    summary = "Start the next run of a pipeline, pinning its sources",
    params(("pipeline" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")),
    request_body = satchel_model::api::NewRun,
    responses((status = 201, description = "The run", body = Run), crate::openapi::Errors)
)]
pub(super) async fn create_run(
    State(s): State<AppState>,
    caller: Caller,
    Path(pipeline): Path<String>,
    Json(req): Json<NewRun>,
) -> Result<(StatusCode, axum::Json<Run>), ApiError> {
    names::validate_key("pipeline", &pipeline)?;
    validate_branch_commit(req.branch.as_deref(), req.commit.as_deref())?;
    if let Some(b) = &req.build_id {
        names::validate_key("build id", b)?;
    }
    for (name, spec) in &req.sources {
        names::validate_key("source", name)?;
        names::validate_key("pipeline", &spec.pipeline)?;
        spec.run
            .parse::<RunSelector>()
            .map_err(|e| ApiError::bad_request(format!("source {name:?}: {e}")))?;
    }
    if let Some(t) = &req.triggered_from {
        names::validate_key("pipeline", &t.pipeline)?;
        validate_run_number(t.run)?;
    }
    caller.write(&s, &pipeline, &Acting::default()).await?;
    // Pinning a source or naming a trigger reads that pipeline's runs.
    for spec in req.sources.values() {
        caller.read(&s, &spec.pipeline).await?;
    }
    if let Some(t) = &req.triggered_from {
        caller.read(&s, &t.pipeline).await?;
    }
    let run = s.db.create_run(&pipeline, &req).await?;
    Ok((StatusCode::CREATED, axum::Json(run)))
}

#[utoipa::path(
    put,
    path = "/pipelines/{pipeline}/runs/{run}/state",
    tag = "runs",
    summary = "Record a run's state",
    params(("pipeline" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("run" = u64, Path, description = "Run number")),
    request_body = satchel_model::api::SetRunState,
    responses((status = 200, description = "The run", body = Run), crate::openapi::Errors)
)]
pub(super) async fn set_run_state(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run)): Path<(String, u64)>,
    Json(req): Json<SetRunState>,
) -> Result<axum::Json<Run>, ApiError> {
    names::validate_key("pipeline", &pipeline)?;
    validate_run_number(run)?;
    validate_branch_commit(req.branch.as_deref(), req.commit.as_deref())?;
    caller.note(format!("run={run}"));
    caller.write(&s, &pipeline, &Acting::default()).await?;
    Ok(axum::Json(s.db.set_run_state(&pipeline, run, &req).await?))
}

#[utoipa::path(
    post,
    path = "/artifacts",
    tag = "artifacts",
    summary = "Publish a typed artifact (an image or a link)",
    request_body = satchel_model::api::CreateTyped,
    responses((status = 201, description = "The artifact", body = Artifact), crate::openapi::Errors)
)]
pub(super) async fn create_typed(
    State(s): State<AppState>,
    caller: Caller,
    Json(mut req): Json<CreateTyped>,
) -> Result<(StatusCode, axum::Json<Artifact>), ApiError> {
    validate_context(&req.context)?;
    validate_expiry(req.expire_in_secs)?;
    req.expire_in_secs = req.expire_in_secs.or(s.default_expire_secs);
    names::validate_artifact_name(&req.name)?;
    if req.name == "default" {
        return Err(ApiError::bad_request(
            "`default` names a job's default artifact; choose another name",
        ));
    }
    caller
        .write(&s, &req.context.pipeline, &Acting::of(&req.context))
        .await?;
    if caller.is_job_token() {
        // The run's branch and commit are the runner's to say.
        (req.context.branch, req.context.commit) = (None, None);
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(s.db.create_typed(&req, &s.limits.quotas).await?),
    ))
}

fn unresolved(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unresolved_reference", message)
}

fn list_or_none(items: impl IntoIterator<Item = String>) -> String {
    let mut v: Vec<String> = items.into_iter().collect();
    v.sort();
    v.dedup();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[utoipa::path(
    post,
    path = "/resolve",
    tag = "artifacts",
    summary = "Resolve a `$[…]` artifact reference",
    request_body = satchel_model::api::ResolveRequest,
    responses((status = 200, description = "Its value", body = satchel_model::api::Resolved), crate::openapi::Errors)
)]
pub(super) async fn resolve(
    State(s): State<AppState>,
    caller: Caller,
    Json(req): Json<ResolveRequest>,
) -> Result<axum::Json<Resolved>, ApiError> {
    let ctx = &req.context;
    names::validate_key("pipeline", &ctx.pipeline)?;
    validate_run_number(ctx.run)?;
    caller.read(&s, &ctx.pipeline).await?;
    let text = req.expr.trim();
    let inner = text
        .strip_prefix("$[")
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let r: Reference = Reference::parse(inner)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_reference", e.to_string()))?;
    let expr = format!("$[{r}]");
    if r.is_package() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_reference",
            format!("{expr} names a package source's artifact: `satchel run` resolves those from the package it picked; a run's artifact is {}", satchel_model::expr::SOURCES_SHAPE),
        ));
    }
    let here = s.db.find_run(&ctx.pipeline, ctx.run).await?;

    // The run the reference points into.
    let run = match &r.source {
        None => here.clone(),
        Some(src) => {
            if let Some(spec) = req.sources.get(src) {
                caller.read(&s, &spec.pipeline).await?;
                let sel: RunSelector = spec
                    .run
                    .parse()
                    .map_err(|e| ApiError::bad_request(format!("source {src:?}: {e}")))?;
                s.db.select_run(&spec.pipeline, &sel, here.triggered_from.as_ref())
                    .await
                    .map_err(|e| unresolved(format!("{expr}: source {src:?}: {e}")))?
            } else if let Some(pinned) = here.sources.get(src) {
                s.db.find_run(&pinned.pipeline, pinned.run).await?
            } else {
                return Err(unresolved(format!(
                    "{expr}: source {src:?} is not defined for run {} of pipeline {:?} (its sources: {}); declare it under `sources:` in the pipeline",
                    here.number,
                    here.pipeline,
                    list_or_none(here.sources.keys().cloned())
                )));
            }
        }
    };
    caller.read(&s, &run.pipeline).await?;
    let where_run = format!("run {} of pipeline {:?}", run.number, run.pipeline);
    // `jobs.` references mean the asking job's stage.
    let stage = match (&r.stage, &r.source) {
        (Some(st), _) => Some(st.clone()),
        (None, None) => ctx.stage.clone(),
        (None, Some(_)) => None,
    };

    let jobs = s.db.list_jobs(&run.id).await?;
    let in_stage: Vec<_> = jobs
        .iter()
        .filter(|j| stage.is_none() || j.stage == stage)
        .collect();
    if let Some(st) = &stage {
        if in_stage.is_empty() {
            return Err(unresolved(format!(
                "{expr}: stage {st:?} has no job with artifacts in {where_run} (stages with artifacts: {})",
                list_or_none(jobs.iter().filter_map(|j| j.stage.clone()))
            )));
        }
    }
    let stage_words = stage
        .as_deref()
        .map(|s| format!(" of stage {s:?}"))
        .unwrap_or_default();
    if !in_stage.iter().any(|j| j.key == r.job) {
        return Err(unresolved(format!(
            "{expr}: no job {:?}{stage_words} has published artifacts in {where_run} (jobs there: {})",
            r.job,
            list_or_none(in_stage.iter().map(|j| j.key.clone()))
        )));
    }
    let of_job: Vec<Artifact> =
        s.db.list_artifacts(&run.id)
            .await?
            .into_iter()
            .filter(|a| a.state == ArtifactState::Finished && !a.producer.superseded)
            .filter(|a| a.producer.job == r.job)
            .filter(|a| stage.is_none() || a.producer.stage == stage)
            .collect();
    let of_step: Vec<&Artifact> = of_job
        .iter()
        .filter(|a| a.steps.contains(&r.step))
        .collect();
    if of_step.is_empty() {
        return Err(unresolved(format!(
            "{expr}: step {:?} of job {:?}{stage_words} published no artifacts in {where_run} (steps of that job that did: {})",
            r.step,
            r.job,
            list_or_none(of_job.iter().flat_map(|a| a.steps.clone()))
        )));
    }
    let names = || list_or_none(of_step.iter().map(|a| a.name.clone()));
    let found = if r.artifact == "default" {
        match of_step.iter().find(|a| a.is_default) {
            Some(a) => Some(*a),
            None if of_step.len() == 1 => Some(of_step[0]),
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "ambiguous_reference",
                    format!(
                        "{expr}: step {:?} of job {:?} published several artifacts ({}); name one instead of `default`",
                        r.step,
                        r.job,
                        names()
                    ),
                ))
            }
        }
    } else {
        of_step.iter().find(|a| a.name == r.artifact).copied()
    };
    let Some(artifact) = found else {
        return Err(unresolved(format!(
            "{expr}: step {:?} of job {:?}{stage_words} did not publish an artifact named {:?} in {where_run} (it published: {})",
            r.step,
            r.job,
            r.artifact,
            names()
        )));
    };
    Ok(axum::Json(Resolved {
        expr,
        value: artifact.reference_value(),
        artifact: artifact.clone(),
    }))
}

fn mtime_secs(rfc3339_ms: i64) -> u64 {
    (rfc3339_ms.max(0) / 1000) as u64
}

/// `GET /pipelines/{pipeline}/runs/{run}/archive[?format=&path=]`: every
/// current artifact's files of the run as one archive, each under a folder
/// of its own (`satchel_model::diff::archive_folders`).
#[utoipa::path(
    get,
    path = "/pipelines/{pipeline}/runs/{run}/archive",
    tag = "artifacts",
    summary = "Every current artifact of a run as one archive, streamed",
    params(("pipeline" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("run" = String, Path, description = "Run number or selector: `latest`, `lastSuccessfulBuild[:BRANCH]`, `latestFromBranch:BRANCH`"), crate::routes::archive::ArchiveParams),
    responses((status = 200, description = "The archive", content((inline(crate::openapi::Binary) = "application/x-tar"), (inline(crate::openapi::Binary) = "application/zip"), (inline(crate::openapi::Binary) = "application/zstd"))), crate::openapi::Errors)
)]
pub(crate) async fn run_archive(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run)): Path<(String, String)>,
    Query(params): Query<ArchiveParams>,
) -> Result<Response, ApiError> {
    caller.read(&s, &pipeline).await?;
    let run = super::pick_run(&s, &pipeline, &run).await?;
    let files = super::diff::whole_run_files(&s, &pipeline, &run).await?;
    let keyed = satchel_model::diff::keyed_files(&files);
    let folders = satchel_model::diff::archive_folders(keyed.iter().map(|(k, _)| k.as_str()));
    let members: Vec<Member> = keyed
        .into_iter()
        .map(|(key, f)| Member {
            mtime_secs: mtime_secs(f.uploaded_at_ms),
            path: format!("{}/{}", folders[&key], f.path),
            size: f.size,
            mode: f.mode,
            sha256: f.sha256.clone(),
        })
        .collect();
    if members.is_empty() {
        return Err(ApiError::not_found(format!(
            "run {} of pipeline {pipeline:?} has no files",
            run.number
        )));
    }
    archive_response(
        s.store.clone(),
        &params,
        members,
        &format!("{pipeline}-{}", run.number),
    )
}

#[utoipa::path(
    get,
    path = "/artifacts/{id}/archive",
    tag = "artifacts",
    summary = "An artifact (or a directory of it) as one archive, streamed",
    params(("id" = String, Path, description = "Artifact id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$"), crate::routes::archive::ArchiveParams),
    responses((status = 200, description = "The archive", content((inline(crate::openapi::Binary) = "application/x-tar"), (inline(crate::openapi::Binary) = "application/zip"), (inline(crate::openapi::Binary) = "application/zstd"))), crate::openapi::Errors)
)]
pub(crate) async fn artifact_archive(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<ArchiveParams>,
) -> Result<Response, ApiError> {
    check_id("artifact", &id)?;
    let artifact = s.db.get_artifact(&id).await?;
    caller.read(&s, &artifact.producer.pipeline).await?;
    archive_of(&s, &caller, artifact, &params).await
}

/// Finished files artifact `artifact` (which the caller may read) as the
/// archive `params` asks for.
pub(super) async fn archive_of(
    s: &AppState,
    caller: &Caller,
    artifact: Artifact,
    params: &ArchiveParams,
) -> Result<Response, ApiError> {
    let id = artifact.id.clone();
    caller.note(format!("artifact={id}"));
    if artifact.kind != "files" {
        return Err(ApiError::bad_request(format!(
            "artifact {:?} is an {} artifact without files; its value is {}",
            artifact.name,
            artifact.kind,
            artifact.reference_value()
        )));
    }
    if artifact.state != ArtifactState::Finished {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_finished",
            format!(
                "artifact {:?} is {}; only finished artifacts can be downloaded",
                artifact.name,
                artifact.state.as_str()
            ),
        ));
    }
    let files = s.db.artifact_files(&id).await?;
    let members = files
        .into_iter()
        .map(|f| Member {
            mtime_secs: mtime_secs(f.uploaded_at_ms),
            path: f.path,
            size: f.size,
            mode: f.mode,
            sha256: f.sha256,
        })
        .collect();
    archive_response(s.store.clone(), params, members, &artifact.name)
}

#[utoipa::path(
    post,
    path = "/packages",
    tag = "packages",
    summary = "Promote a finished artifact to REPO/PACKAGE@VERSION",
    request_body = satchel_model::api::Promote,
    responses((status = 201, description = "The package version", body = Package), crate::openapi::Errors)
)]
pub(super) async fn promote(
    State(s): State<AppState>,
    caller: Caller,
    Json(req): Json<Promote>,
) -> Result<(StatusCode, axum::Json<Package>), ApiError> {
    check_id("artifact", &req.artifact_id)?;
    names::validate_key("repository", &req.repository)?;
    names::validate_key("package", &req.package)?;
    satchel_model::api::validate_version(&req.version).map_err(ApiError::bad_request)?;
    let artifact = s.db.get_artifact(&req.artifact_id).await?;
    caller.note(format!(
        "artifact={} package={}/{}@{}",
        req.artifact_id, req.repository, req.package, req.version
    ));
    caller
        .write(
            &s,
            &artifact.producer.pipeline,
            &Acting::producer(&artifact.producer),
        )
        .await?;
    // The repository must be (or become) the artifact's organization's:
    // `rules::promote` decides, in the promotion's transaction.
    Ok((StatusCode::CREATED, axum::Json(s.db.promote(&req).await?)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PackageFilter {
    pub(crate) package: Option<String>,
}

/// `GET /api/v1/packages`: the repositories of the caller's organization
/// (every one for the bootstrap admin).
#[utoipa::path(
    get,
    path = "/packages",
    tag = "packages",
    summary = "The package repositories of the token's organization",
    responses((status = 200, description = "Repositories by key", body = satchel_model::api::RepositoryList), crate::openapi::Errors)
)]
pub(super) async fn list_repositories(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<satchel_model::api::RepositoryList>, ApiError> {
    Ok(axum::Json(repositories(&s, &caller).await?))
}

/// The package repositories `caller` may list: those of its organization.
pub(crate) async fn repositories(
    s: &AppState,
    caller: &Caller,
) -> Result<satchel_model::api::RepositoryList, ApiError> {
    let org = match caller.token() {
        Some(t) => {
            caller.require(satchel_model::access::Scope::Read)?;
            Some(t.org.as_str())
        }
        None => None,
    };
    let counted = caller
        .token()
        .is_none_or(|t| t.scopes.contains(&satchel_model::access::Scope::Admin));
    let repositories =
        s.db.package_repositories(org)
            .await?
            .into_iter()
            .map(
                |(repository, versions)| satchel_model::api::RepositoryInfo {
                    repository,
                    versions: counted.then_some(versions),
                },
            )
            .collect();
    Ok(satchel_model::api::RepositoryList { repositories })
}

#[utoipa::path(
    get,
    path = "/packages/{repo}",
    tag = "packages",
    summary = "List a repository's package versions, newest first",
    params(("repo" = String, Path, description = "Package repository key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), PackageFilter, super::PageParams),
    responses((status = 200, description = "A page of versions", body = PackageList), crate::openapi::Errors)
)]
pub(super) async fn list_packages(
    State(s): State<AppState>,
    caller: Caller,
    Path(repo): Path<String>,
    Query(f): Query<PackageFilter>,
    Query(page): Query<super::PageParams>,
) -> Result<axum::Json<PackageList>, ApiError> {
    Ok(axum::Json(
        readable_packages(&s, &caller, &repo, f.package.as_deref(), &page.request()?).await?,
    ))
}

/// A page of repository `repo`'s versions (of `package` only, if given),
/// newest first, keeping those of pipelines `caller` may read (so a page
/// may hold fewer than asked, and still give a cursor).
pub(crate) async fn readable_packages(
    s: &AppState,
    caller: &Caller,
    repo: &str,
    package: Option<&str>,
    page: &satchel_db::PageRequest,
) -> Result<PackageList, ApiError> {
    names::validate_key("repository", repo)?;
    caller.note(format!("repository={repo}"));
    let mut readable = std::collections::HashMap::new();
    let mut packages = Vec::new();
    let found = s.db.list_packages(repo, package, page).await?;
    for p in found.items {
        let from = p.origin.producer.pipeline.clone();
        let ok = match readable.get(&from) {
            Some(ok) => *ok,
            None => {
                let ok = caller.can_read(s, &from).await?;
                readable.insert(from, ok);
                ok
            }
        };
        if ok {
            packages.push(p);
        }
    }
    Ok(PackageList {
        packages,
        next_cursor: found.next,
    })
}

/// A package version the caller may read (that of its origin pipeline).
async fn readable_package(
    s: &AppState,
    caller: &Caller,
    repo: &str,
    name: &str,
    version: &str,
) -> Result<PackageWithFiles, ApiError> {
    let p = match s.db.get_package(repo, name, version_arg(version)).await {
        // Not a version of it: a requirement (`^1.4`) picks one.
        Err(DbError::NotFound(_)) if satchel_model::version::is_requirement(version) => {
            // Only versions this caller may read take part (and show in
            // the answer): a requirement never lands on, or lists, one
            // promoted from a pipeline it may not read.
            let mut versions = Vec::new();
            let mut readable: std::collections::HashMap<String, bool> = Default::default();
            let mut page = PageRequest {
                limit: MAX_PAGE,
                ..PageRequest::default()
            };
            loop {
                let got = s.db.list_packages(repo, Some(name), &page).await?;
                for p in got.items {
                    let origin = p.origin.producer.pipeline.clone();
                    let ok = match readable.get(&origin) {
                        Some(ok) => *ok,
                        None => {
                            let ok = caller.can_read(s, &origin).await?;
                            readable.insert(origin, ok);
                            ok
                        }
                    };
                    if ok {
                        versions.push(p.version);
                    }
                }
                match got.next {
                    Some(c) => page.cursor = Some(c),
                    None => break,
                }
            }
            let picked = satchel_model::version::pick(version, versions.iter().map(String::as_str))
                .map_err(ApiError::bad_request)?
                .ok_or_else(|| {
                    const SHOWN: usize = 20;
                    let mut shown = versions
                        .iter()
                        .take(SHOWN)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ");
                    if versions.len() > SHOWN {
                        shown.push_str(", …");
                    }
                    ApiError::not_found(format!(
                        "no version of package {repo}/{name} meets {version:?} (it has {})",
                        if versions.is_empty() {
                            "none you may read".to_string()
                        } else {
                            shown
                        }
                    ))
                })?
                .to_string();
            s.db.get_package(repo, name, Some(&picked)).await?
        }
        other => other?,
    };
    caller.note(format!(
        "package={repo}/{name}@{} artifact={}",
        p.package.version, p.package.origin.artifact_id
    ));
    caller.read(s, &p.package.origin.producer.pipeline).await?;
    Ok(p)
}

fn version_arg(v: &str) -> Option<&str> {
    (v != "latest").then_some(v)
}

#[utoipa::path(
    get,
    path = "/packages/{repo}/{name}/{version}",
    tag = "packages",
    summary = "Get a package version and its files",
    params(("repo" = String, Path, description = "Package repository key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("name" = String, Path, description = "Package key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("version" = String, Path, description = "Version, `latest`, or a semver range such as `^1.4`")),
    responses((status = 200, description = "The version", body = PackageWithFiles), crate::openapi::Errors)
)]
pub(super) async fn get_package(
    State(s): State<AppState>,
    caller: Caller,
    Path((repo, name, version)): Path<(String, String, String)>,
) -> Result<axum::Json<PackageWithFiles>, ApiError> {
    Ok(axum::Json(
        readable_package(&s, &caller, &repo, &name, &version).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/packages/{repo}/{name}/{version}/archive",
    tag = "packages",
    summary = "A package version as one archive, streamed",
    params(("repo" = String, Path, description = "Package repository key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("name" = String, Path, description = "Package key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("version" = String, Path, description = "Version, `latest`, or a semver range such as `^1.4`"), crate::routes::archive::ArchiveParams),
    responses((status = 200, description = "The archive", content((inline(crate::openapi::Binary) = "application/x-tar"), (inline(crate::openapi::Binary) = "application/zip"), (inline(crate::openapi::Binary) = "application/zstd"))), crate::openapi::Errors)
)]
pub(super) async fn package_archive(
    State(s): State<AppState>,
    caller: Caller,
    Path((repo, name, version)): Path<(String, String, String)>,
    Query(params): Query<ArchiveParams>,
) -> Result<Response, ApiError> {
    let p = readable_package(&s, &caller, &repo, &name, &version).await?;
    let now = mtime_secs(satchel_model::id::now_millis());
    let members = p
        .files
        .into_iter()
        .map(|f| Member {
            path: f.path,
            size: f.size,
            mode: f.mode,
            sha256: f.sha256,
            mtime_secs: now,
        })
        .collect();
    archive_response(
        s.store.clone(),
        &params,
        members,
        &format!("{}-{}", p.package.name, p.package.version),
    )
}

#[utoipa::path(
    get,
    path = "/packages/{repo}/{name}/{version}/files/{path}",
    tag = "packages",
    summary = "One file of a package version",
    params(("repo" = String, Path, description = "Package repository key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("name" = String, Path, description = "Package key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"), ("version" = String, Path, description = "Version, `latest`, or a semver range such as `^1.4`"), ("path" = String, Path, description = "The file's path in the package")),
    responses((status = 200, description = "The file's bytes", content_type = "*/*", body = inline(crate::openapi::Binary)), crate::openapi::Errors)
)]
pub(super) async fn package_file(
    State(s): State<AppState>,
    caller: Caller,
    Path((repo, name, version, path)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let p = readable_package(&s, &caller, &repo, &name, &version).await?;
    let Some(f) = p.files.iter().find(|f| f.path == path) else {
        return Err(ApiError::not_found(format!(
            "{repo}/{name}@{} has no file {path:?}",
            p.package.version
        )));
    };
    super::content::stream_blob(&s, &f.sha256, f.size, &f.content_type, &f.path).await
}
