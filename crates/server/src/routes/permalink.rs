//! Runs and artifacts named the way people name them: a run by number or
//! selector (`latest`, `lastSuccessfulBuild[:BRANCH]`,
//! `latestFromBranch:BRANCH`, as in `sources:`), an artifact by its name
//! in that run. The UI's permalinks (`/p/…`) and their API twins under
//! `/api/v1/pipelines/{pipeline}/runs/{run}/…` both resolve through here,
//! so they cannot disagree on which run or artifact a link means.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use satchel_db::{ArtifactFilter, PageRequest};
use satchel_model::api::{Artifact, ArtifactWithFiles, FileInfo, Run};
use satchel_model::selector::RunSelector;

use super::archive::ArchiveParams;
use super::PageParams;
use crate::access::Caller;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::AppState;

/// Run `run` (a number or selector) of `pipeline`.
pub(crate) async fn pick_run(s: &AppState, pipeline: &str, run: &str) -> Result<Run, ApiError> {
    let sel: RunSelector = run
        .parse()
        .map_err(|e: satchel_model::selector::SelectorError| {
            ApiError::bad_request(e.to_string())
        })?;
    if sel == RunSelector::Triggering {
        return Err(ApiError::bad_request(
            "`triggering` names a run only inside a run",
        ));
    }
    Ok(s.db.select_run(pipeline, &sel, None).await?)
}

/// Most artifacts one run page lists.
const RUN_ARTIFACTS: usize = 10_000;

/// A run's artifacts (up to [`RUN_ARTIFACTS`]), with those of superseded
/// attempts if `include_retried`.
pub(crate) async fn run_artifacts(
    s: &AppState,
    run: &Run,
    include_retried: bool,
) -> Result<Vec<Artifact>, ApiError> {
    let filter = ArtifactFilter {
        job: None,
        include_retried,
    };
    let mut page = PageRequest {
        limit: 1000,
        ..PageRequest::default()
    };
    let mut all = Vec::new();
    loop {
        let p = s.db.artifacts_page(&run.id, &filter, &page).await?;
        all.extend(p.items);
        match p.next {
            Some(c) if all.len() < RUN_ARTIFACTS => page.cursor = Some(c),
            _ => return Ok(all),
        }
    }
}

/// For the API's by-name routes: the caller may read `pipeline`, and
/// `run` (a number or selector) has an artifact `name` ([`artifact_named`]).
async fn readable_artifact_named(
    s: &AppState,
    caller: &Caller,
    pipeline: &str,
    run: &str,
    name: &str,
) -> Result<Artifact, ApiError> {
    caller.read(s, pipeline).await?;
    let run = pick_run(s, pipeline, run).await?;
    artifact_named(s, &run, name).await
}

/// The artifact named `name` in a run: a finished one of the newest
/// attempt that has one.
pub(crate) async fn artifact_named(
    s: &AppState,
    run: &Run,
    name: &str,
) -> Result<Artifact, ApiError> {
    // A name is held again after its artifact expired or failed, so a run
    // may list several of one name (oldest first): the newest finished one
    // is the permalink's, else the newest, whose page says what became of it.
    let found: Vec<Artifact> = run_artifacts(s, run, false)
        .await?
        .into_iter()
        .filter(|a| a.name == name)
        .collect();
    // Every job may have a default artifact: several finished ones of
    // different jobs are ambiguous, as the API's download says.
    let mut jobs: Vec<&str> = found
        .iter()
        .filter(|a| a.is_default && a.state == satchel_model::api::ArtifactState::Finished)
        .map(|a| a.producer.job.as_str())
        .collect();
    jobs.sort_unstable();
    jobs.dedup();
    if jobs.len() > 1 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous",
            format!(
                "{} #{} has default artifacts of {} jobs ({}); open one from the run's page",
                run.pipeline,
                run.number,
                jobs.len(),
                jobs.join(", ")
            ),
        ));
    }
    let finished = found
        .iter()
        .rposition(|a| a.state == satchel_model::api::ArtifactState::Finished);
    if let Some(a) = finished
        .or(found.len().checked_sub(1))
        .map(|i| found[i].clone())
    {
        return Ok(a);
    }
    Err(ApiError::not_found(format!(
        "{} #{} has no artifact {name:?}",
        run.pipeline, run.number
    )))
}

#[utoipa::path(
    get,
    path = "/pipelines/{pipeline}/runs/{run}/artifacts/{name}",
    tag = "artifacts",
    summary = "An artifact by its name in a run (the permalink's twin), with a page of its files",
    params(
        ("pipeline" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"),
        ("run" = String, Path, description = "Run number or selector: `latest`, `lastSuccessfulBuild[:BRANCH]`, `latestFromBranch:BRANCH`"),
        ("name" = String, Path, description = "Artifact name (the newest finished artifact of that name)"),
        PageParams
    ),
    responses((status = 200, description = "The artifact", body = ArtifactWithFiles), crate::openapi::Errors)
)]
pub(super) async fn artifact_by_name(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run, name)): Path<(String, String, String)>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<ArtifactWithFiles>, ApiError> {
    let page = page.request()?;
    let artifact = readable_artifact_named(&s, &caller, &pipeline, &run, &name).await?;
    caller.note(format!("artifact={}", artifact.id));
    let files = s.db.artifact_files_page(&artifact.id, &page).await?;
    Ok(axum::Json(ArtifactWithFiles {
        artifact,
        files: files.items,
        next_cursor: files.next,
    }))
}

#[utoipa::path(
    get,
    path = "/pipelines/{pipeline}/runs/{run}/artifacts/{name}/archive",
    tag = "artifacts",
    summary = "An artifact by its name in a run, as one archive, streamed",
    params(
        ("pipeline" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"),
        ("run" = String, Path, description = "Run number or selector: `latest`, `lastSuccessfulBuild[:BRANCH]`, `latestFromBranch:BRANCH`"),
        ("name" = String, Path, description = "Artifact name"),
        ArchiveParams
    ),
    responses((status = 200, description = "The archive", content((inline(crate::openapi::Binary) = "application/x-tar"), (inline(crate::openapi::Binary) = "application/zip"), (inline(crate::openapi::Binary) = "application/zstd"))), crate::openapi::Errors)
)]
pub(super) async fn artifact_by_name_archive(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run, name)): Path<(String, String, String)>,
    Query(params): Query<ArchiveParams>,
) -> Result<Response, ApiError> {
    let artifact = readable_artifact_named(&s, &caller, &pipeline, &run, &name).await?;
    super::pipelines::archive_of(&s, &caller, artifact, &params).await
}

#[utoipa::path(
    get,
    path = "/pipelines/{pipeline}/runs/{run}/artifacts/{name}/files/{path}",
    tag = "artifacts",
    summary = "One file of an artifact by its name in a run (the permalink's twin)",
    params(
        ("pipeline" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"),
        ("run" = String, Path, description = "Run number or selector: `latest`, `lastSuccessfulBuild[:BRANCH]`, `latestFromBranch:BRANCH`"),
        ("name" = String, Path, description = "Artifact name"),
        ("path" = String, Path, description = "The file's path in the artifact")
    ),
    responses((status = 200, description = "The file's bytes", content_type = "*/*", body = inline(crate::openapi::Binary)), crate::openapi::Errors)
)]
pub(super) async fn artifact_by_name_file(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run, name, path)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let artifact = readable_artifact_named(&s, &caller, &pipeline, &run, &name).await?;
    caller.note(format!("artifact={} path={path}", artifact.id));
    let f = file_in(&s, &artifact, &path).await?;
    super::content::stream_blob(&s, &f.sha256, f.size, &f.content_type, &f.path).await
}

/// The file at `path` in finished artifact `a`, found through the run's
/// name index (a report's every stylesheet and image is one such lookup),
/// not by reading the artifact's whole file list.
pub(crate) async fn file_in(s: &AppState, a: &Artifact, path: &str) -> Result<FileInfo, ApiError> {
    if a.state != satchel_model::api::ArtifactState::Finished {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_finished",
            format!("artifact {:?} is {}", a.name, a.state.as_str()),
        ));
    }
    let run = s.db.find_run(&a.producer.pipeline, a.producer.run).await?;
    let glob = satchel_model::glob::Glob::new(&satchel_model::glob::escape(path))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let scope = satchel_model::query::Scope {
        name: Some(a.name.clone()),
        include_retried: true,
        ..Default::default()
    };
    let mut page = PageRequest {
        limit: 1000,
        ..PageRequest::default()
    };
    loop {
        let found = s.db.search_files(&run.id, &glob, &scope, &page).await?;
        if let Some(f) = found.items.into_iter().find(|f| f.artifact_id == a.id) {
            return Ok(f);
        }
        match found.next {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    Err(ApiError::not_found(format!(
        "artifact {:?} has no file {path:?}",
        a.name
    )))
}
