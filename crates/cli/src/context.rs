//! Where the CLI is: server, token, and the job it runs in. Each field
//! comes from its flag, else its `SATCHEL_*` variable, else the CI the job
//! runs in (Buildkite, GitHub Actions, GitLab CI, Azure Pipelines; see
//! `satchel_model::ci`). `satchel context` shows what was found and where.

use anyhow::{bail, Context as _};
use clap::Args;
use satchel_client::Client;
use satchel_model::api::JobContext;

/// Server connection.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Server URL.
    #[arg(long, env = "SATCHEL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API token.
    #[arg(long, env = "SATCHEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ServerArgs {
    /// A client for this server.
    pub fn client(&self) -> anyhow::Result<Client> {
        let Some(token) = &self.token else {
            bail!("no token: pass --token or set SATCHEL_TOKEN (the server prints its admin token on first start and keeps it in DATA_DIR/admin.token)");
        };
        Ok(Client::new(&self.url, token)?)
    }
}

/// The producing job, for uploads.
#[derive(Args, Debug, Clone)]
pub struct JobArgs {
    /// Pipeline key.
    #[arg(long, env = "SATCHEL_PIPELINE")]
    pub pipeline: Option<String>,
    /// Run number within the pipeline.
    #[arg(long, env = "SATCHEL_RUN")]
    pub run: Option<u64>,
    /// Stage key.
    #[arg(long, env = "SATCHEL_STAGE")]
    pub stage: Option<String>,
    /// Job key.
    #[arg(long, env = "SATCHEL_JOB")]
    pub job: Option<String>,
    /// Step key.
    #[arg(long, env = "SATCHEL_STEP")]
    pub step: Option<String>,
    /// Attempt of the job (a higher attempt is a retry; default 1).
    #[arg(long, env = "SATCHEL_ATTEMPT")]
    pub attempt: Option<u32>,
    /// Branch the run builds.
    #[arg(long, env = "SATCHEL_BRANCH")]
    pub branch: Option<String>,
    /// Commit the run builds.
    #[arg(long, env = "SATCHEL_COMMIT")]
    pub commit: Option<String>,
    /// The CI's own id of the build (Buildkite's build UUID,
    /// GITHUB_RUN_ID, …), recorded on the run so `--build ID` finds it.
    #[arg(long, env = "SATCHEL_BUILD_ID")]
    pub build_id: Option<String>,
}

/// The CI detected from this process's environment, once.
pub fn detected() -> Option<&'static satchel_model::ci::Detected> {
    static D: std::sync::OnceLock<Option<satchel_model::ci::Detected>> = std::sync::OnceLock::new();
    D.get_or_init(|| satchel_model::ci::detect(|k| std::env::var(k).ok()))
        .as_ref()
}

/// A field from its flag or `SATCHEL_*` variable, else from the CI.
pub(crate) fn or_ci(given: &Option<String>, field: &str) -> Option<String> {
    given
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| detected().and_then(|d| d.get(field)).map(str::to_string))
}

/// A numeric field from its flag or variable, else from the CI.
pub(crate) fn number_or_ci<T: std::str::FromStr + Copy>(
    given: Option<T>,
    field: &str,
) -> Option<T> {
    given.or_else(|| {
        detected()
            .and_then(|d| d.get(field))
            .and_then(|v| v.parse().ok())
    })
}

/// The message for a field no source provided.
pub(crate) fn missing(flag: &str, var: &str) -> String {
    let ci = detected()
        .map(|d| format!(" ({} was detected but does not provide it)", d.ci))
        .unwrap_or_default();
    format!("no {flag}: pass --{flag} or set {var}{ci}")
}

impl JobArgs {
    /// Pipeline and run number.
    pub fn run_ref(&self) -> anyhow::Result<(String, u64)> {
        let pipeline = or_ci(&self.pipeline, "pipeline")
            .with_context(|| missing("pipeline", "SATCHEL_PIPELINE"))?;
        let run = number_or_ci(self.run, "run").with_context(|| missing("run", "SATCHEL_RUN"))?;
        Ok((pipeline, run))
    }

    /// The job context, or an error naming what is missing.
    pub fn context(&self) -> anyhow::Result<JobContext> {
        let (pipeline, run) = self.run_ref()?;
        let job = or_ci(&self.job, "job").with_context(|| missing("job", "SATCHEL_JOB"))?;
        Ok(JobContext {
            pipeline,
            run,
            stage: or_ci(&self.stage, "stage"),
            job,
            step: or_ci(&self.step, "step"),
            attempt: number_or_ci(self.attempt, "attempt").unwrap_or(1),
            branch: or_ci(&self.branch, "branch"),
            commit: or_ci(&self.commit, "commit"),
            build: or_ci(&self.build_id, "build"),
        })
    }

    /// Where a `$[…]` reference is resolved from: the run, and (when set)
    /// the asking job and its stage.
    pub fn run_context(&self) -> anyhow::Result<satchel_model::api::RunContext> {
        let (pipeline, run) = self.run_ref()?;
        Ok(satchel_model::api::RunContext {
            pipeline,
            run,
            stage: or_ci(&self.stage, "stage"),
            job: or_ci(&self.job, "job"),
        })
    }

    /// Every field with its value and where it came from, for `satchel
    /// context`.
    pub fn explain(&self) -> Vec<(&'static str, Option<String>, String)> {
        let d = detected();
        let from = |field: &str, given: Option<String>, var: &str| -> (Option<String>, String) {
            if let Some(v) = given.filter(|s| !s.is_empty()) {
                let src = if std::env::var(var).ok().as_deref() == Some(v.as_str()) {
                    var.to_string()
                } else {
                    format!("--{field}")
                };
                return (Some(v), src);
            }
            match d.and_then(|d| d.fields.iter().find(|f| f.name == field)) {
                Some(f) => (
                    Some(f.value.clone()),
                    format!("{} ({})", f.from, d.map_or("", |d| d.ci)),
                ),
                None => (None, "not set".into()),
            }
        };
        let mut out = Vec::new();
        for (field, given, var) in [
            ("pipeline", self.pipeline.clone(), "SATCHEL_PIPELINE"),
            ("run", self.run.map(|r| r.to_string()), "SATCHEL_RUN"),
            ("stage", self.stage.clone(), "SATCHEL_STAGE"),
            ("job", self.job.clone(), "SATCHEL_JOB"),
            ("step", self.step.clone(), "SATCHEL_STEP"),
            (
                "attempt",
                self.attempt.map(|a| a.to_string()),
                "SATCHEL_ATTEMPT",
            ),
            ("branch", self.branch.clone(), "SATCHEL_BRANCH"),
            ("commit", self.commit.clone(), "SATCHEL_COMMIT"),
            ("build", self.build_id.clone(), "SATCHEL_BUILD_ID"),
        ] {
            let (v, src) = from(field, given, var);
            let (v, src) = if field == "attempt" && v.is_none() {
                (Some("1".to_string()), "default".to_string())
            } else {
                (v, src)
            };
            out.push((field, v, src));
        }
        out
    }
}

/// Which run to look in and how to narrow, for search and download.
#[derive(Args, Debug, Clone)]
pub struct ScopeArgs {
    /// Pipeline key (default: SATCHEL_PIPELINE, the current pipeline).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Run number (default: SATCHEL_RUN, the current run).
    #[arg(long)]
    pub run: Option<u64>,
    /// The run by its number, or by the CI's build id (Buildkite's build
    /// UUID, GITHUB_RUN_ID, …) in any pipeline this token may read;
    /// `id:N` is always a build id.
    #[arg(long, value_name = "NUMBER|ID", conflicts_with = "run")]
    pub build: Option<String>,
    /// Only files uploaded by jobs with this key.
    #[arg(long)]
    pub job: Option<String>,
    /// Only files uploaded by this step key.
    #[arg(long)]
    pub step: Option<String>,
    /// Only files of the artifact with this name (`default` for jobs'
    /// default artifacts).
    #[arg(long)]
    pub name: Option<String>,
    /// Include files of superseded (retried) job attempts.
    #[arg(long)]
    pub include_retried_jobs: bool,
}

impl ScopeArgs {
    /// Pipeline and run: a `--build` id names both (asking the server),
    /// else see [`ScopeArgs::run`]. A number given to `--build` is a run
    /// number of the current pipeline or a build id (`GITHUB_RUN_ID`,
    /// `BUILD_BUILDID` are numbers too): whichever exists; both is an
    /// error that says how to choose.
    pub async fn resolve(&self, client: &Client) -> anyhow::Result<(String, u64)> {
        let Some(b) = self.build.as_deref().filter(|b| !b.is_empty()) else {
            return self.run();
        };
        // `id:N` is a build id whatever it looks like.
        if let Some(id) = b.strip_prefix("id:") {
            return run_of_build(client, id, self.pipeline.as_deref()).await;
        }
        if !b.bytes().all(|c| c.is_ascii_digit()) {
            return run_of_build(client, b, self.pipeline.as_deref()).await;
        }
        let as_run = match self.run() {
            Ok((pipeline, n)) => match client.get_run(&pipeline, n).await {
                Ok(_) => Some((pipeline, n)),
                Err(satchel_client::ClientError::Api { status: 404, .. }) => None,
                Err(e) => return Err(e.into()),
            },
            Err(_) => None,
        };
        let mut as_build = match client.runs_of_build(b, self.pipeline.as_deref()).await {
            Ok(runs) => runs,
            // The run number still answers when the build lookup cannot.
            Err(_) if as_run.is_some() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        // Azure's run number is its build id: the same run twice is one.
        if let Some((p, n)) = &as_run {
            as_build.retain(|r| !(r.pipeline == *p && r.number == *n));
        }
        match (as_run, as_build.as_slice()) {
            (Some(r), []) => Ok(r),
            (None, _) => run_of_build(client, b, self.pipeline.as_deref()).await,
            (Some((p, n)), builds) => {
                let list: Vec<String> = builds
                    .iter()
                    .map(|r| format!("{}#{}", r.pipeline, r.number))
                    .collect();
                bail!(
                    "--build {b} is both run {n} of pipeline {p:?} and the build id of {}: pass --run {n} for the run number, or --build id:{b} for the build",
                    list.join(", ")
                )
            }
        }
    }

    /// Pipeline and run, falling back to the job's environment
    /// (`SATCHEL_PIPELINE`, `SATCHEL_RUN`, then the detected CI).
    pub fn run(&self) -> anyhow::Result<(String, u64)> {
        let env = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        let pipeline = self.pipeline.clone().or_else(|| env("SATCHEL_PIPELINE"));
        let number = match self.build.as_deref().filter(|b| !b.is_empty()) {
            Some(b) => Some(
                b.parse::<u64>()
                    .with_context(|| format!("--build {b:?} is not a run number"))?,
            ),
            None => self.run,
        };
        let run = match number {
            Some(r) => Some(r),
            None => match env("SATCHEL_RUN") {
                Some(r) => Some(r.parse().context("SATCHEL_RUN is not a run number")?),
                None => None,
            },
        };
        let pipeline = or_ci(&pipeline, "pipeline")
            .with_context(|| missing("pipeline", "SATCHEL_PIPELINE"))?;
        let run =
            number_or_ci(run, "run").with_context(|| missing("run (or --build)", "SATCHEL_RUN"))?;
        Ok((pipeline, run))
    }

    /// The search parameters for `query`.
    pub fn search(&self, query: &str) -> satchel_client::SearchQuery {
        satchel_client::SearchQuery {
            query: query.to_string(),
            job: self.job.clone(),
            step: self.step.clone(),
            name: self.name.clone(),
            include_retried_jobs: self.include_retried_jobs,
        }
    }
}

/// The one run whose CI build id is `build`, in `pipeline` if given (the
/// build of a triggering run is in another pipeline, so the job's own
/// pipeline does not narrow it).
pub async fn run_of_build(
    client: &Client,
    build: &str,
    pipeline: Option<&str>,
) -> anyhow::Result<(String, u64)> {
    satchel_model::names::validate_key("build id", build)?;
    let runs = client.runs_of_build(build, pipeline).await?;
    match runs.as_slice() {
        [one] => Ok((one.pipeline.clone(), one.number)),
        [] => bail!(
            "no run has build id {build:?}{} (or this token may not read it)",
            pipeline
                .map(|p| format!(" in pipeline {p:?}"))
                .unwrap_or_default()
        ),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|r| format!("{}#{}", r.pipeline, r.number))
                .collect();
            bail!(
                "build id {build:?} names runs of several pipelines ({}): pass --pipeline",
                list.join(", ")
            )
        }
    }
}

/// Options of `satchel context`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    job: JobArgs,
}

/// `satchel context`: what the CLI would use, and where each value came
/// from.
pub fn run_show(a: ShowArgs) -> anyhow::Result<()> {
    let rows = a.job.explain();
    let ci = detected().map(|d| d.ci);
    if a.json {
        let fields: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, v, src)| (k.to_string(), serde_json::json!({"value": v, "from": src})))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ci": ci, "fields": fields}))?
        );
        return Ok(());
    }
    println!("CI: {}", ci.unwrap_or("none detected"));
    for (k, v, src) in rows {
        println!("{k:<9} {:<40} {src}", v.unwrap_or_else(|| "-".into()));
    }
    Ok(())
}
