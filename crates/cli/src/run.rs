//! `satchel run PIPELINE.yml`: the local runner. Without `--server` it
//! starts the embedded server in-process on `--data-dir`, so nothing else
//! is needed; with `--server URL --token T` it uses that server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Args;
use satchel_client::Client;
use satchel_model::api::RunRef;
use satchel_runner::{Outcome, Pipeline, RunnerConfig};
use satchel_server::AppState;

/// Options of `satchel run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The pipeline file: Satchel's own format, Azure Pipelines YAML, a
    /// GitHub Actions workflow, a Buildkite or an Alibaba Cloud Flow
    /// pipeline, detected from the file (see docs/pipelines.md).
    file: PathBuf,
    /// The file's format, instead of detecting it: satchel, azure, github,
    /// buildkite or flow.
    #[arg(long)]
    format: Option<satchel_runner::formats::Format>,
    /// Pipeline key (default: the file's `name:` in Satchel's format, else
    /// the file name without its extension).
    #[arg(long)]
    pipeline: Option<String>,
    /// Report steps that cannot run locally (another task, a cloud-only
    /// step) as skipped, with their inputs, instead of refusing the file.
    #[arg(long)]
    skip_unsupported: bool,
    /// Build and push the images that Flow's DockerBuildPush steps name,
    /// where a docker client is present (default: declare them only).
    #[arg(long)]
    push: bool,
    /// Run at most N jobs at once (default: every job a stage can start).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Use this server instead of the embedded one.
    #[arg(long, env = "SATCHEL_URL")]
    server: Option<String>,
    /// Token for --server.
    #[arg(long, env = "SATCHEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of the embedded server.
    #[arg(long, env = "SATCHEL_DATA_DIR", default_value = "./satchel-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    storage: crate::serve::StorageArgs,
    /// Where job directories go (default: DATA_DIR/work, or ./satchel-work
    /// with --server).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Branch of the run (default: SATCHEL_BRANCH, else the git branch of
    /// the pipeline file's directory).
    #[arg(long, env = "SATCHEL_BRANCH")]
    branch: Option<String>,
    /// Commit of the run (default: SATCHEL_COMMIT, else git HEAD).
    #[arg(long, env = "SATCHEL_COMMIT")]
    commit: Option<String>,
    /// The run that triggered this one, `PIPELINE#NUMBER`; sources with
    /// `run: triggering` take it.
    #[arg(long, value_name = "PIPELINE#N")]
    triggered_by: Option<String>,
    /// Add uncommitted changes and untracked (not ignored) files to the
    /// checkout each job starts with (default: the git HEAD only).
    #[arg(long, conflicts_with = "no_checkout")]
    include_dirty: bool,
    /// Start every job in an empty directory instead of a checkout of the
    /// pipeline file's repository (or directory).
    #[arg(long)]
    no_checkout: bool,
    /// Never copy this directory into a checkout (a triggering run's own
    /// work and data directories).
    #[arg(long, hide = true, value_name = "DIR")]
    exclude_from_checkout: Vec<PathBuf>,
    /// The build id to record for the run, which `--build ID` and
    /// `BUILDKITE_BUILD_ID` name (default: a new UUID).
    #[arg(long, value_name = "ID")]
    build_id: Option<String>,
    /// Run part of the pipeline again inside run N (`latest`: the newest)
    /// instead of starting a new run: the jobs --only and --from choose
    /// (default: all) run as new attempts whose artifacts supersede the
    /// earlier ones; the others are not run, and their artifacts stay.
    #[arg(long, value_name = "N|latest")]
    reuse_run: Option<String>,
    /// With --reuse-run (default: the newest run): only this job
    /// (repeatable).
    #[arg(long, value_name = "JOB")]
    only: Vec<String>,
    /// With --reuse-run (default: the newest run): this stage and every
    /// stage after it.
    #[arg(long, value_name = "STAGE")]
    from: Option<String>,
    /// Only check the pipeline file, run nothing.
    #[arg(long)]
    check: bool,
}

fn git(dir: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty() && s != "HEAD").then_some(s)
}

fn parse_triggered_by(s: &str) -> anyhow::Result<RunRef> {
    let (p, n) = s
        .rsplit_once('#')
        .with_context(|| format!("invalid --triggered-by {s:?}: expected PIPELINE#NUMBER"))?;
    satchel_model::names::validate_key("pipeline", p)?;
    let run: u64 = n
        .parse()
        .with_context(|| format!("invalid --triggered-by {s:?}: {n:?} is not a run number"))?;
    Ok(RunRef {
        pipeline: p.into(),
        run,
    })
}

/// Runs the command; the exit code is 0 if the run passed, 1 if it
/// failed, 130 if it was canceled.
pub async fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    // The file's directory; a bare file name is in the current one.
    let parent = a
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let source_dir = std::path::absolute(parent)?;
    let loaded = satchel_runner::formats::load(
        &a.file,
        &text,
        &satchel_runner::formats::LoadOptions {
            format: a.format,
            pipeline: a.pipeline.clone(),
            skip_unsupported: a.skip_unsupported,
            push: a.push,
            source_dir: source_dir.clone(),
        },
    )
    .with_context(|| format!("in {}", a.file.display()))?;
    let pipeline: Pipeline = loaded.pipeline;
    for s in &loaded.skipped {
        eprintln!("satchel: will report, not run: {s}");
    }
    if a.check {
        eprintln!(
            "{}: {} pipeline {:?} is valid ({} stages, {} jobs)",
            a.file.display(),
            loaded.format.as_str(),
            pipeline.name,
            pipeline.stages.len(),
            pipeline.stages.iter().map(|s| s.jobs.len()).sum::<usize>()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let triggered_from = a
        .triggered_by
        .as_deref()
        .map(parse_triggered_by)
        .transpose()?;
    let branch = a
        .branch
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&source_dir, &["rev-parse", "--abbrev-ref", "HEAD"]));
    let commit = a
        .commit
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&source_dir, &["rev-parse", "HEAD"]));

    // The server: remote, or embedded in this process.
    let (url, token, work_root, _embedded) = match &a.server {
        Some(url) => {
            let Some(token) = a.token.clone() else {
                bail!("--server needs a token: pass --token or set SATCHEL_TOKEN");
            };
            let work = a
                .work_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("./satchel-work"));
            (url.trim_end_matches('/').to_string(), token, work, None)
        }
        None => {
            let stores = satchel_server::open_embedded_with(&a.data_dir, &a.storage.options()?)
                .await
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("opening data directory {}", a.data_dir.display()))?;
            let dir = satchel_server::DataDir {
                root: a.data_dir.clone(),
            };
            let token = crate::serve::admin_token(&dir.admin_token())?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let secret = satchel_server::signing_secret(&stores, &dir.signing_secret())
                .await
                .map_err(anyhow::Error::msg)?;
            let state = AppState::new(stores.db, stores.store, &token)
                .with_scratch(dir.scratch())
                .with_signing_secret(secret);
            let server = tokio::spawn(async move {
                let _ = satchel_server::serve(listener, state, async {
                    let _ = stop_rx.await;
                })
                .await;
            });
            let work = a
                .work_dir
                .clone()
                .unwrap_or_else(|| a.data_dir.join("work"));
            (
                format!("http://{addr}"),
                token,
                work,
                Some((stop_tx, server, stores.lock)),
            )
        }
    };
    let work_root = std::path::absolute(&work_root)?;
    // Never part of a checkout, even where they lie inside the source.
    let mut exclude = vec![work_root.clone()];
    if a.server.is_none() {
        exclude.push(std::path::absolute(&a.data_dir)?);
    }
    for x in &a.exclude_from_checkout {
        exclude.push(std::path::absolute(x)?);
    }
    let client = Client::new(&url, &token)?;
    client
        .health()
        .await
        .with_context(|| format!("satchel server at {url} is not answering"))?;

    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("canceling: stopping every job (Ctrl-C again to quit at once)");
            let _ = cancel_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                // Quitting at once must not leave steps running behind.
                satchel_runner::exec::kill_all_steps();
                std::process::exit(130);
            }
        }
    });
    let cfg = RunnerConfig {
        client,
        url,
        token,
        satchel_exe: std::env::current_exe().context("finding the satchel binary")?,
        work_root,
        source_dir: source_dir.clone(),
        branch,
        commit,
        triggered_from,
        cancel: cancel_rx,
        max_jobs: a.jobs.map(usize::from),
        partial: if a.reuse_run.is_some() || !a.only.is_empty() || a.from.is_some() {
            let run = match a.reuse_run.as_deref() {
                None | Some("latest") => None,
                Some(n) => Some(
                    n.parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("--reuse-run {n:?}: a run number or `latest`"))?,
                ),
            };
            Some(satchel_runner::exec::Partial {
                run,
                only: a.only.clone(),
                from: a.from.clone(),
            })
        } else {
            None
        },
        trigger_args: {
            let mut v = Vec::new();
            if a.skip_unsupported {
                v.push("--skip-unsupported".to_string());
            }
            if a.push {
                v.push("--push".to_string());
            }
            if let Some(n) = a.jobs {
                v.extend(["--jobs".to_string(), n.to_string()]);
            }
            v
        },
        build_id: a
            .build_id
            .clone()
            .map(|b| satchel_model::names::validate_key("build id", &b).map(|()| b))
            .transpose()
            .context("--build-id")?,
        checkout: (!a.no_checkout).then(|| satchel_runner::checkout::Source {
            dir: source_dir.clone(),
            include_dirty: a.include_dirty,
            exclude,
        }),
    };
    let report = satchel_runner::run_pipeline(pipeline, cfg).await?;
    print!("{}", satchel_runner::summary(&report));
    if let Some((stop, server, lock)) = _embedded {
        let _ = stop.send(());
        let _ = server.await;
        drop(lock);
    }
    Ok(match report.outcome {
        Outcome::Passed => ExitCode::SUCCESS,
        Outcome::Canceled => ExitCode::from(130),
        _ => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggered_by() {
        let r = parse_triggered_by("pipeline-a#12").unwrap();
        assert_eq!((r.pipeline.as_str(), r.run), ("pipeline-a", 12));
        assert!(parse_triggered_by("pipeline-a").is_err());
        assert!(parse_triggered_by("a#x").is_err());
    }
}
