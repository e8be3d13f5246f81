//! Where the CLI is: server, token, and the job it runs in, from flags or
//! `SATCHEL_*` environment variables (flags win).

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
    /// Attempt of the job (a higher attempt is a retry).
    #[arg(long, env = "SATCHEL_ATTEMPT", default_value_t = 1)]
    pub attempt: u32,
    /// Branch the run builds.
    #[arg(long, env = "SATCHEL_BRANCH")]
    pub branch: Option<String>,
    /// Commit the run builds.
    #[arg(long, env = "SATCHEL_COMMIT")]
    pub commit: Option<String>,
}

impl JobArgs {
    /// The job context, or an error naming what is missing.
    pub fn context(&self) -> anyhow::Result<JobContext> {
        let pipeline = self
            .pipeline
            .clone()
            .context("no pipeline: pass --pipeline or set SATCHEL_PIPELINE")?;
        let run = self.run.context("no run: pass --run or set SATCHEL_RUN")?;
        let job = self
            .job
            .clone()
            .context("no job: pass --job or set SATCHEL_JOB")?;
        Ok(JobContext {
            pipeline,
            run,
            stage: self.stage.clone().filter(|s| !s.is_empty()),
            job,
            step: self.step.clone().filter(|s| !s.is_empty()),
            attempt: self.attempt,
            branch: self.branch.clone().filter(|s| !s.is_empty()),
            commit: self.commit.clone().filter(|s| !s.is_empty()),
        })
    }
}

impl JobArgs {
    /// Where a `$[…]` reference is resolved from: the run, and (when set)
    /// the asking job and its stage.
    pub fn run_context(&self) -> anyhow::Result<satchel_model::api::RunContext> {
        Ok(satchel_model::api::RunContext {
            pipeline: self
                .pipeline
                .clone()
                .filter(|s| !s.is_empty())
                .context("no pipeline: pass --pipeline or set SATCHEL_PIPELINE")?,
            run: self.run.context("no run: pass --run or set SATCHEL_RUN")?,
            stage: self.stage.clone().filter(|s| !s.is_empty()),
            job: self.job.clone().filter(|s| !s.is_empty()),
        })
    }
}

/// Which run to look in and how to narrow, for search and download.
#[derive(Args, Debug, Clone)]
pub struct ScopeArgs {
    /// Pipeline key (default: SATCHEL_PIPELINE, the current pipeline).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Run number (default: SATCHEL_RUN, the current run).
    #[arg(long, alias = "build")]
    pub run: Option<u64>,
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
    /// Pipeline and run, falling back to the job's environment.
    pub fn run(&self) -> anyhow::Result<(String, u64)> {
        let pipeline = match &self.pipeline {
            Some(p) => p.clone(),
            None => std::env::var("SATCHEL_PIPELINE")
                .ok()
                .filter(|s| !s.is_empty())
                .context("no pipeline: pass --pipeline or set SATCHEL_PIPELINE")?,
        };
        let run = match self.run {
            Some(r) => r,
            None => std::env::var("SATCHEL_RUN")
                .ok()
                .filter(|s| !s.is_empty())
                .context("no run: pass --run (or --build) or set SATCHEL_RUN")?
                .parse()
                .context("SATCHEL_RUN is not a run number")?,
        };
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
