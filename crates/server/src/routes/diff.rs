//! `GET /api/v1/diff?from=PIPELINE%23RUN&to=PIPELINE%23RUN[&artifact=NAME]`:
//! two runs compared from their metadata ([`satchel_model::diff`]), for
//! `satchel diff` and the UI's run diff page. `RUN` is a number or a run
//! selector (`latest`, `lastSuccessfulBuild`, …).

use axum::extract::State;
use satchel_model::diff::{diff_runs, RunDiff};
use satchel_model::selector::RunSelector;
use serde::Deserialize;

use axum::http::StatusCode;

use crate::access::Caller;
use crate::error::ApiError;
use crate::extract::Query;
use crate::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DiffParams {
    from: String,
    to: String,
    #[serde(default)]
    artifact: Option<String>,
}

/// `PIPELINE#RUN` as a pipeline key and a run selector.
fn parse_run_ref(which: &str, text: &str) -> Result<(String, RunSelector), ApiError> {
    let (pipeline, run) = text.rsplit_once('#').ok_or_else(|| {
        ApiError::bad_request(format!(
            "{which} {text:?} is not PIPELINE#RUN (a run number or selector such as latest)"
        ))
    })?;
    satchel_model::names::validate_key("pipeline", pipeline)?;
    let sel: RunSelector = run
        .parse()
        .map_err(|e: satchel_model::selector::SelectorError| {
            ApiError::bad_request(format!("{which}: {e}"))
        })?;
    if sel == RunSelector::Triggering {
        return Err(ApiError::bad_request(format!(
            "{which}: `triggering` names a run only inside a run"
        )));
    }
    Ok((pipeline.to_string(), sel))
}

/// Most files a run may hold to be compared or archived whole: its file
/// metadata is read into memory at once.
pub const MAX_WHOLE_RUN_FILES: u64 = 200_000;

/// Every visible file of `run` of `pipeline`, unless it holds more than
/// [`MAX_WHOLE_RUN_FILES`] (413).
pub(crate) async fn whole_run_files(
    s: &AppState,
    pipeline: &str,
    run: &satchel_model::api::Run,
) -> Result<Vec<satchel_model::api::FileInfo>, ApiError> {
    let held: u64 =
        s.db.list_artifacts(&run.id)
            .await?
            .iter()
            .map(|a| a.file_count)
            .sum();
    if held > MAX_WHOLE_RUN_FILES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{pipeline}#{} holds {held} files; runs of more than {MAX_WHOLE_RUN_FILES} files are not compared or archived whole (take its artifacts one by one)",
                run.number
            ),
        ));
    }
    Ok(s.db.run_files(&run.id).await?)
}

/// Runs `from` and `to` (each `PIPELINE#RUN`) compared, as `caller` may
/// read them; `artifact` compares one artifact.
pub(crate) async fn run_diff(
    s: &AppState,
    caller: &Caller,
    from: &str,
    to: &str,
    artifact: Option<&str>,
) -> Result<RunDiff, ApiError> {
    // Both sides are parsed and allowed before either is read.
    let refs = [parse_run_ref("from", from)?, parse_run_ref("to", to)?];
    for (pipeline, _) in &refs {
        caller.read(s, pipeline).await?;
    }
    let mut sides = Vec::with_capacity(2);
    for (pipeline, sel) in &refs {
        let run = s.db.select_run(pipeline, sel, None).await?;
        let files = whole_run_files(s, pipeline, &run).await?;
        sides.push((format!("{pipeline}#{}", run.number), files));
    }
    let (to, from) = (sides.pop(), sides.pop());
    let ((from_label, from_files), (to_label, to_files)) =
        (from.expect("two sides"), to.expect("two sides"));
    let only = artifact.filter(|a| !a.is_empty());
    let d = diff_runs(&from_label, &from_files, &to_label, &to_files, only);
    if let (Some(name), true) = (only, d.artifacts.is_empty()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("neither {from_label} nor {to_label} has an artifact {name:?}"),
        ));
    }
    Ok(d)
}

#[utoipa::path(
    get,
    path = "/diff",
    tag = "runs",
    summary = "Compare two runs from metadata",
    params(DiffParams),
    responses((status = 200, description = "Files added, removed and changed per artifact", body = satchel_model::diff::RunDiff), crate::openapi::Errors)
)]
pub(crate) async fn diff(
    State(s): State<AppState>,
    caller: Caller,
    Query(p): Query<DiffParams>,
) -> Result<axum::Json<RunDiff>, ApiError> {
    caller.note(format!("diff={} {}", p.from, p.to));
    Ok(axum::Json(
        run_diff(&s, &caller, &p.from, &p.to, p.artifact.as_deref()).await?,
    ))
}
