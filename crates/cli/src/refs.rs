//! `satchel resolve` (one `$[…]` reference from a shell), `satchel
//! run-state` (record a run's outcome when another CI drives Satchel),
//! `satchel promote` and `satchel package …` (immutable, versioned copies
//! of artifacts).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use satchel_client::Client;
use satchel_model::api::{
    Promote, ResolveRequest, Resolved, RunContext, RunState, SetRunState, SourceSpec,
};
use satchel_model::selector::RunSelector;

use crate::context::{JobArgs, ServerArgs};
use crate::download::{write_stream, Expected};
use crate::output::{bytes_bar, human};
use crate::publish::write_typed;

/// Options of `satchel resolve`.
#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// The reference, e.g. `$[stages.build.job1.image.artifacts.my_image]`
    /// (the `$[` `]` are optional).
    expr: String,
    /// Define or override a source: NAME=PIPELINE@SELECTOR, e.g.
    /// `upstream=pipeline-a@lastSuccessfulBuild`.
    #[arg(long = "source", value_name = "NAME=PIPELINE@SELECTOR")]
    sources: Vec<String>,
    /// Print the whole answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    at: JobArgs,
    #[command(flatten)]
    server: ServerArgs,
}

/// Parses `NAME=PIPELINE@SELECTOR`.
fn parse_source(s: &str) -> anyhow::Result<(String, SourceSpec)> {
    let usage = || {
        format!("invalid --source {s:?}: expected NAME=PIPELINE@SELECTOR, e.g. upstream=pipeline-a@lastSuccessfulBuild")
    };
    let (name, rest) = s.split_once('=').with_context(usage)?;
    let (pipeline, selector) = rest.split_once('@').with_context(usage)?;
    selector
        .parse::<RunSelector>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", usage()))?;
    Ok((
        name.to_string(),
        SourceSpec {
            pipeline: pipeline.to_string(),
            run: selector.to_string(),
        },
    ))
}

/// Resolves one reference through the server; the value of a files
/// artifact comes back as an absolute URL.
pub async fn resolve(
    client: &Client,
    at: &RunContext,
    expr: &str,
    sources: BTreeMap<String, SourceSpec>,
) -> anyhow::Result<Resolved> {
    let mut r = client
        .resolve(&ResolveRequest {
            context: at.clone(),
            expr: expr.to_string(),
            sources,
        })
        .await?;
    r.value = client.absolute(&r.value);
    Ok(r)
}

/// `satchel resolve`.
pub async fn run_resolve(a: ResolveArgs) -> anyhow::Result<()> {
    let at = a.at.run_context()?;
    let sources = a
        .sources
        .iter()
        .map(|s| parse_source(s))
        .collect::<anyhow::Result<_>>()?;
    let client = a.server.client()?;
    let r = resolve(&client, &at, &a.expr, sources).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}", r.value);
    }
    Ok(())
}

/// Options of `satchel run-state`.
#[derive(Args, Debug)]
pub struct RunStateArgs {
    /// `running`, `passed`, `failed` or `canceled`.
    state: String,
    /// Pipeline key.
    #[arg(long, env = "SATCHEL_PIPELINE")]
    pipeline: Option<String>,
    /// Run number.
    #[arg(long, env = "SATCHEL_RUN")]
    run: Option<u64>,
    /// Branch, recorded if the run has none yet.
    #[arg(long, env = "SATCHEL_BRANCH")]
    branch: Option<String>,
    /// Commit, recorded if the run has none yet.
    #[arg(long, env = "SATCHEL_COMMIT")]
    commit: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// `satchel run-state`.
pub async fn run_run_state(a: RunStateArgs) -> anyhow::Result<()> {
    let state = RunState::parse(&a.state).map_err(anyhow::Error::msg)?;
    use crate::context::{missing, number_or_ci, or_ci};
    let pipeline =
        or_ci(&a.pipeline, "pipeline").with_context(|| missing("pipeline", "SATCHEL_PIPELINE"))?;
    let run = number_or_ci(a.run, "run").with_context(|| missing("run", "SATCHEL_RUN"))?;
    let client = a.server.client()?;
    let r = client
        .set_run_state(
            &pipeline,
            run,
            &SetRunState {
                state,
                branch: or_ci(&a.branch, "branch"),
                commit: or_ci(&a.commit, "commit"),
                failed_jobs: None,
            },
        )
        .await?;
    eprintln!(
        "run {} of pipeline {:?} is {}",
        r.number, r.pipeline, r.state
    );
    Ok(())
}

/// `REPO/PACKAGE@VERSION`, split.
fn parse_coordinates(s: &str, allow_latest: bool) -> anyhow::Result<(String, String, String)> {
    let usage =
        || format!("invalid package {s:?}: expected REPO/PACKAGE@VERSION, e.g. releases/app@1.2.0");
    let (repo, rest) = s.split_once('/').with_context(usage)?;
    let (name, version) = rest.split_once('@').with_context(usage)?;
    satchel_model::names::validate_key("repository", repo)?;
    satchel_model::names::validate_key("package", name)?;
    // Reading, `latest` or a requirement (`^1.4`) picks a version.
    let picks = version == "latest" || satchel_model::version::is_requirement(version);
    if !(allow_latest && picks) {
        satchel_model::api::validate_version(version).map_err(anyhow::Error::msg)?;
    }
    Ok((repo.into(), name.into(), version.into()))
}

/// Options of `satchel promote`.
#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// Artifact id, or the name of an artifact in the run (--pipeline,
    /// --run, default: the current run).
    artifact: String,
    /// Target `REPO/PACKAGE@VERSION`.
    #[arg(long)]
    to: String,
    /// Pipeline key, to find the artifact by name.
    #[arg(long, env = "SATCHEL_PIPELINE")]
    pipeline: Option<String>,
    /// Run number, to find the artifact by name.
    #[arg(long, alias = "build", env = "SATCHEL_RUN")]
    run: Option<u64>,
    /// Job key, when the name is `default`.
    #[arg(long)]
    job: Option<String>,
    /// Print the package as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// `satchel promote`.
pub async fn run_promote(a: PromoteArgs) -> anyhow::Result<()> {
    let (repository, package, version) = parse_coordinates(&a.to, false)?;
    let client = a.server.client()?;
    let artifact_id = if satchel_model::id::is_id(&a.artifact) {
        a.artifact.clone()
    } else {
        let pipeline = a
            .pipeline
            .clone()
            .filter(|s| !s.is_empty())
            .context("to promote by name, pass --pipeline or set SATCHEL_PIPELINE")?;
        let run = a
            .run
            .context("to promote by name, pass --run or set SATCHEL_RUN")?;
        let found: Vec<_> = client
            .list_artifacts(&pipeline, run)
            .await?
            .into_iter()
            .filter(|x| x.name == a.artifact && !x.producer.superseded)
            .filter(|x| a.job.as_deref().is_none_or(|j| x.producer.job == j))
            .collect();
        match found.as_slice() {
            [one] => one.id.clone(),
            [] => bail!(
                "no artifact named {:?} in run {run} of pipeline {pipeline:?}",
                a.artifact
            ),
            many => bail!(
                "{:?} names artifacts of several jobs in run {run} of pipeline {pipeline:?} ({}): pass --job",
                a.artifact,
                many.iter()
                    .map(|x| x.producer.job.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    };
    let p = client
        .promote(&Promote {
            artifact_id,
            repository,
            package,
            version,
        })
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        eprintln!(
            "promoted artifact {:?} (run {} of pipeline {:?}) to {}/{}@{}: {} files, {}; no content copied",
            p.origin.artifact,
            p.origin.producer.run,
            p.origin.producer.pipeline,
            p.repository,
            p.name,
            p.version,
            p.file_count,
            human(p.size)
        );
    }
    Ok(())
}

/// `satchel package …`.
#[derive(Subcommand, Debug)]
pub enum PackageCommand {
    /// Download REPO/PACKAGE@VERSION (or @latest, or @^1.4) into DEST.
    Download(PackageDownloadArgs),
    /// List versions in a repository: REPO or REPO/PACKAGE.
    List(PackageListArgs),
}

/// Options of `satchel package download`.
#[derive(Args, Debug)]
pub struct PackageDownloadArgs {
    /// `REPO/PACKAGE@VERSION`, `REPO/PACKAGE@latest`, or a version
    /// requirement such as `REPO/PACKAGE@^1.4` (the highest version that
    /// meets it).
    package: String,
    /// Destination directory.
    dest: PathBuf,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Options of `satchel package list`.
#[derive(Args, Debug)]
pub struct PackageListArgs {
    /// `REPO` or `REPO/PACKAGE`.
    what: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// `satchel package …`.
pub async fn run_package(cmd: PackageCommand) -> anyhow::Result<()> {
    match cmd {
        PackageCommand::Download(a) => package_download(a).await,
        PackageCommand::List(a) => {
            let (repo, name) = match a.what.split_once('/') {
                Some((r, n)) => (r.to_string(), Some(n.to_string())),
                None => (a.what.clone(), None),
            };
            let client = a.server.client()?;
            let list = client.list_packages(&repo, name.as_deref()).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for p in list {
                    println!(
                        "{}/{}@{}\t{}\t{} files\t{}\tfrom {:?} of {} run {}",
                        p.repository,
                        p.name,
                        p.version,
                        p.kind,
                        p.file_count,
                        human(p.size),
                        p.origin.artifact,
                        p.origin.producer.pipeline,
                        p.origin.producer.run
                    );
                }
            }
            Ok(())
        }
    }
}

async fn package_download(a: PackageDownloadArgs) -> anyhow::Result<()> {
    let (repo, name, version) = parse_coordinates(&a.package, true)?;
    let client = a.server.client()?;
    let p = client.get_package(&repo, &name, &version).await?;
    let version = p.package.version.clone();
    std::fs::create_dir_all(&a.dest).with_context(|| format!("creating {}", a.dest.display()))?;
    if p.package.kind != "files" {
        write_typed(&a.dest, &p.package)?;
        eprintln!(
            "downloaded {} package {repo}/{name}@{version} to {}",
            p.package.kind,
            a.dest.join("artifact.json").display()
        );
        return Ok(());
    }
    let total = p.package.size;
    let bar = bytes_bar(total, "downloading", a.quiet);
    for f in &p.files {
        let stream = client.package_file(&repo, &name, &version, &f.path).await?;
        let expected = Expected {
            path: f.path.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            mode: f.mode,
        };
        write_stream(&a.dest, &expected, stream, &bar).await?;
    }
    bar.finish_and_clear();
    eprintln!(
        "downloaded {repo}/{name}@{version}: {} files ({}) to {}, all sha256-verified",
        p.files.len(),
        human(total),
        a.dest.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_coordinates() {
        let (n, s) = parse_source("up=pipeline-a@lastSuccessfulBuild").unwrap();
        assert_eq!(n, "up");
        assert_eq!(s.pipeline, "pipeline-a");
        assert!(parse_source("up=pipeline-a").is_err());
        assert!(parse_source("up=p@bogus").is_err());
        assert_eq!(
            parse_coordinates("rel/app@1.0", false).unwrap(),
            ("rel".into(), "app".into(), "1.0".into())
        );
        assert!(parse_coordinates("rel/app@latest", false).is_err());
        assert!(parse_coordinates("rel/app@latest", true).is_ok());
        assert!(parse_coordinates("app@1", false).is_err());
    }
}
