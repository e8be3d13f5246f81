//! Running a pipeline: stages in order, the jobs of a stage in parallel,
//! each in its own fresh directory as separate agents would be, the steps
//! of a job in order.
//!
//! Every step is a child process in its own process group: scripts run
//! with `sh -c`; `publish`, `image`, `link`, `download` and
//! `artifact_paths` run the `satchel` binary itself, so a step behaves
//! exactly as the same command typed inside a job. Output is prefixed with
//! `[stage/job]`. When a step's process exits, its process group is
//! killed, so background processes it left do not outlive it (nor keep its
//! output pipes open). Cancelling (Ctrl-C) stops every child's process
//! group and records the run as `canceled`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use satchel_client::Client;
use satchel_model::api::{
    Artifact, NewRun, ResolveRequest, Run, RunContext, RunRef, SetRunState, SourceSpec,
};
use satchel_model::expr;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

use crate::pipeline::{Action, Job, Pipeline, Shell, Step, When};

/// How to run.
pub struct RunnerConfig {
    /// Client of the server (embedded or remote).
    pub client: Client,
    /// The server URL steps talk to.
    pub url: String,
    /// The token steps use.
    pub token: String,
    /// The `satchel` binary that built-in steps run.
    pub satchel_exe: PathBuf,
    /// Where job directories are made (`<root>/<pipeline>/<run>/<job>/`).
    pub work_root: PathBuf,
    /// The directory holding the pipeline file (`SATCHEL_SOURCE_DIR`).
    pub source_dir: PathBuf,
    /// Branch of the run.
    pub branch: Option<String>,
    /// Commit of the run.
    pub commit: Option<String>,
    /// The run that triggered this one.
    pub triggered_from: Option<RunRef>,
    /// Set to `true` to cancel the run.
    pub cancel: watch::Receiver<bool>,
    /// At most this many jobs run at once (`None`: every job a stage can
    /// start).
    pub max_jobs: Option<usize>,
    /// Where jobs' checkouts come from (`None`: every job starts empty).
    pub checkout: Option<crate::checkout::Source>,
    /// The build id to record for the run (`None`: a new UUID, as a CI
    /// names its builds).
    pub build_id: Option<String>,
    /// Run part of the pipeline again inside an earlier run instead of
    /// starting a new one.
    pub partial: Option<Partial>,
    /// Options a run started by a `trigger` step takes as this one did
    /// (`--skip-unsupported`, `--push`, `--jobs N`).
    pub trigger_args: Vec<String>,
}

/// A partial run (`--reuse-run`, `--only`, `--from`): the chosen jobs run
/// again as new attempts of an earlier run, against the artifacts the
/// others left there.
#[derive(Debug, Clone, Default)]
pub struct Partial {
    /// The run (default: the pipeline's newest).
    pub run: Option<u64>,
    /// Only these jobs (default: every job).
    pub only: Vec<String>,
    /// Only this stage and the stages after it.
    pub from: Option<String>,
}

impl Partial {
    /// Refuses job and stage keys `pipeline` does not have.
    fn check(&self, pipeline: &Pipeline) -> anyhow::Result<()> {
        let jobs: Vec<&str> = pipeline
            .stages
            .iter()
            .flat_map(|s| s.jobs.iter().map(|j| j.key.as_str()))
            .collect();
        for j in &self.only {
            if !jobs.contains(&j.as_str()) {
                anyhow::bail!(
                    "--only {j:?}: the pipeline has no such job (jobs: {})",
                    jobs.join(", ")
                );
            }
        }
        if let Some(f) = &self.from {
            if !pipeline.stages.iter().any(|s| &s.key == f) {
                let stages: Vec<&str> = pipeline.stages.iter().map(|s| s.key.as_str()).collect();
                anyhow::bail!(
                    "--from {f:?}: the pipeline has no such stage (stages: {})",
                    stages.join(", ")
                );
            }
        }
        Ok(())
    }

    /// Whether job `job` of the `index`-th stage runs.
    fn runs(&self, pipeline: &Pipeline, index: usize, job: &str) -> bool {
        let from = self
            .from
            .as_ref()
            .and_then(|f| pipeline.stages.iter().position(|s| &s.key == f))
            .unwrap_or(0);
        index >= from && (self.only.is_empty() || self.only.iter().any(|o| o == job))
    }
}

/// Lines of a failed step's output the summary repeats.
pub const TAIL_LINES: usize = 20;

/// Characters of each such line the summary keeps.
const TAIL_LINE_CHARS: usize = 400;

/// The last [`TAIL_LINES`] lines a step printed.
type Tail = Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;

/// How a job or stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every step succeeded.
    Passed,
    /// A step failed.
    Failed,
    /// Not run: a stage it depends on did not pass.
    Skipped,
    /// Stopped by cancellation.
    Canceled,
    /// Not run again: a partial run (`--only`, `--from`) keeps what an
    /// earlier run of the same run number left, as if it passed.
    Reused,
}

impl Outcome {
    /// Whether what depends on it may go on.
    pub fn passed(self) -> bool {
        matches!(self, Outcome::Passed | Outcome::Reused)
    }

    /// The run state a run with this outcome records.
    pub fn run_state(self) -> satchel_model::api::RunState {
        use satchel_model::api::RunState;
        match self {
            Outcome::Passed | Outcome::Reused => RunState::Passed,
            // A run whose stages were all skipped did not pass either.
            Outcome::Failed | Outcome::Skipped => RunState::Failed,
            Outcome::Canceled => RunState::Canceled,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Canceled => "canceled",
            Outcome::Reused => "reused",
        }
    }
}

/// A job's result.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// Stage key.
    pub stage: String,
    /// Job key.
    pub job: String,
    /// Outcome.
    pub outcome: Outcome,
    /// Wall time.
    pub duration: Duration,
    /// Why it failed, or why it was skipped.
    pub reason: Option<String>,
    /// The failed step's last lines of output (at most [`TAIL_LINES`]).
    pub tail: Vec<String>,
    /// Skipped because its `when` did not apply: it fails nothing.
    pub unwanted: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run as recorded on the server at the end.
    pub run: Run,
    /// Outcome of the run.
    pub outcome: Outcome,
    /// Every job.
    pub jobs: Vec<JobResult>,
    /// Every artifact of the run.
    pub artifacts: Vec<Artifact>,
}

/// Serialized printing of prefixed lines from many jobs.
fn say(prefix: &str, line: &str) {
    use std::io::Write;
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "[{prefix}] {line}");
    let _ = out.flush();
}

struct Shared {
    cfg: RunnerConfig,
    pipeline: Pipeline,
    run: Run,
    /// Permits for running jobs (`--jobs`).
    slots: tokio::sync::Semaphore,
    /// The run's copy of the source, for jobs that check it out.
    snapshot: Option<crate::checkout::Snapshot>,
    /// The build id of the run that triggered this one.
    triggered_from_build: Option<String>,
    /// The directory holding the `buildkite-agent` stand-in, first on
    /// every step's `PATH`.
    shims: Option<PathBuf>,
    /// Each job's first attempt when it is not 1 (a partial run).
    first_attempts: BTreeMap<String, u32>,
    /// The outputs of the jobs that ended, as the variables later jobs
    /// read them from ([`crate::outputs::job_var`]).
    job_outputs: std::sync::Mutex<BTreeMap<String, String>>,
    /// The package each package source picked, by source name.
    packages: BTreeMap<String, satchel_model::api::Package>,
}

/// What a job's steps handed on so far ([`crate::outputs`]): variables
/// (step outputs, environment) and `PATH` entries, newest first.
#[derive(Debug, Default)]
struct Handed {
    vars: BTreeMap<String, String>,
    path: Vec<String>,
}

/// The files one step writes what it hands on to.
struct StepFiles {
    output: PathBuf,
    env: PathBuf,
    path: PathBuf,
}

impl StepFiles {
    /// Empty files for the `n`-th step in `dir`.
    fn new(dir: &Path, n: usize) -> std::io::Result<StepFiles> {
        let f = StepFiles {
            output: dir.join(format!("{n}.output")),
            env: dir.join(format!("{n}.env")),
            path: dir.join(format!("{n}.path")),
        };
        for p in [&f.output, &f.env, &f.path] {
            std::fs::write(p, b"")?;
        }
        Ok(f)
    }

    /// Reads what the step wrote into `handed` (outputs under `step`).
    fn take(&self, step: &str, handed: &mut Handed) -> Result<(), String> {
        let read = |p: &Path, what: &str| -> Result<String, String> {
            use std::io::Read as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            // A regular file only (a step may have replaced it with a
            // FIFO or a link to /dev/zero): opened without following a
            // link or waiting for a writer, checked on the open handle,
            // read up to the limit.
            let f = match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(p)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
                Err(e) => return Err(format!("${what} cannot be read as a regular file ({e})")),
            };
            if !f.metadata().is_ok_and(|m| m.file_type().is_file()) {
                return Err(format!("${what} is no longer a regular file"));
            }
            let mut buf = Vec::new();
            f.take(crate::outputs::MAX_BYTES + 1)
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading ${what}: {e}"))?;
            if buf.len() as u64 > crate::outputs::MAX_BYTES {
                return Err(format!(
                    "the step wrote more than {} bytes to ${what}",
                    crate::outputs::MAX_BYTES
                ));
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        let outputs = crate::outputs::parse(&read(&self.output, "SATCHEL_OUTPUT")?)
            .map_err(|e| format!("$SATCHEL_OUTPUT (GITHUB_OUTPUT): {e}"))?;
        let env = crate::outputs::parse(&read(&self.env, "SATCHEL_ENV")?)
            .map_err(|e| format!("$SATCHEL_ENV (GITHUB_ENV): {e}"))?;
        // Every value becomes an environment variable of the later steps:
        // the kernel refuses to start a process with one over 128 KiB, or
        // with too many bytes in all.
        let mut add = |var: String, value: String| -> Result<(), String> {
            crate::outputs::check_value(&var, &value)?;
            handed.vars.insert(var, value);
            let total: usize = handed.vars.iter().map(|(k, v)| k.len() + v.len()).sum();
            if total > crate::outputs::MAX_TOTAL {
                return Err(format!(
                    "the job's steps handed on {total} bytes of values; at most {} fit in the environment of the steps after them",
                    crate::outputs::MAX_TOTAL
                ));
            }
            Ok(())
        };
        for (name, value) in outputs {
            add(crate::outputs::step_var(step, &name), value)?;
        }
        for (name, value) in env {
            add(name, value)?;
        }
        for line in read(&self.path, "SATCHEL_PATH")?
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            handed.path.insert(0, line.trim().to_string());
        }
        Ok(())
    }
}

/// Runs `pipeline`: creates the run (pinning its sources), runs every
/// stage, records the outcome on the server, and reports.
pub async fn run_pipeline(pipeline: Pipeline, cfg: RunnerConfig) -> anyhow::Result<RunReport> {
    // The source first: a checkout that cannot be made starts no run.
    let wants_checkout = pipeline
        .stages
        .iter()
        .flat_map(|s| &s.jobs)
        .any(|j| j.checkout);
    let snapshot = match (&cfg.checkout, wants_checkout) {
        (Some(src), true) => {
            let src = src.clone();
            let dest = cfg.work_root.join(".sources").join(format!(
                "{}-{}-{}",
                pipeline.name,
                std::process::id(),
                satchel_model::id::new_id()
            ));
            let started = Instant::now();
            let snap = tokio::task::spawn_blocking(move || crate::checkout::snapshot(&src, &dest))
                .await
                .context("checking out the source")?
                .context(
                    "checking out the source (--no-checkout runs jobs in empty directories)",
                )?;
            say(
                "satchel",
                &format!("source: {} ({})", snap.describe, secs(started.elapsed())),
            );
            Some(snap)
        }
        _ => None,
    };
    // Package sources: the version each picks, before anything runs.
    let mut packages: BTreeMap<String, satchel_model::api::Package> = BTreeMap::new();
    for (name, s) in &pipeline.sources {
        let Some(coords) = &s.package else { continue };
        let (repo, pkg) = coords.split_once('/').unwrap_or((coords, ""));
        let want = s.version.as_deref().unwrap_or("latest");
        let p = cfg
            .client
            .get_package(repo, pkg, want)
            .await
            .with_context(|| format!("source {name}: package {coords}@{want}"))?
            .package;
        say(
            "satchel",
            &format!("source {name}: package {coords}@{} ({want})", p.version),
        );
        packages.insert(name.clone(), p);
    }
    let sources: BTreeMap<String, SourceSpec> = pipeline
        .sources
        .iter()
        .filter(|(_, s)| s.package.is_none())
        .map(|(k, s)| {
            (
                k.clone(),
                SourceSpec {
                    pipeline: s.pipeline.clone(),
                    run: s.run.to_string(),
                },
            )
        })
        .collect();
    let run = match &cfg.partial {
        Some(partial) => {
            partial.check(&pipeline)?;
            let run = match partial.run {
                Some(n) => cfg
                    .client
                    .get_run(&pipeline.name, n)
                    .await
                    .with_context(|| {
                        format!(
                            "--reuse-run {n}: no run {n} of pipeline {:?} to run again in",
                            pipeline.name
                        )
                    })?,
                None => cfg
                    .client
                    .list_runs(&pipeline.name)
                    .await
                    .with_context(|| format!("listing the runs of pipeline {:?}", pipeline.name))?
                    .into_iter()
                    .next()
                    .with_context(|| {
                        format!(
                            "pipeline {:?} has no run to reuse yet: run it whole first",
                            pipeline.name
                        )
                    })?,
            };
            say(
                "satchel",
                &format!(
                    "running part of run #{} of pipeline {:?} again on {}; the jobs left out keep its artifacts",
                    run.number, run.pipeline, cfg.url
                ),
            );
            // Running again until it ends, whatever it was.
            cfg.client
                .set_run_state(
                    &run.pipeline,
                    run.number,
                    &SetRunState {
                        state: satchel_model::api::RunState::Running,
                        branch: None,
                        commit: None,
                        failed_jobs: None,
                    },
                )
                .await
                .context("recording the run as running again")?;
            if let (Some(was), Some(now)) = (&run.commit, &cfg.commit) {
                if was != now {
                    say(
                        "satchel",
                        &format!(
                            "note: run #{} built commit {was}; the jobs run now check out {now}",
                            run.number
                        ),
                    );
                }
            }
            run
        }
        None => {
            let run = cfg
                .client
                .create_run(
                    &pipeline.name,
                    &NewRun {
                        branch: cfg.branch.clone(),
                        commit: cfg.commit.clone(),
                        sources,
                        triggered_from: cfg.triggered_from.clone(),
                        build_id: Some(
                            cfg.build_id
                                .clone()
                                .unwrap_or_else(satchel_model::id::new_uuid),
                        ),
                    },
                )
                .await
                .with_context(|| format!("starting a run of pipeline {:?}", pipeline.name))?;
            say(
                "satchel",
                &format!(
                    "run #{} of pipeline {:?} on {}",
                    run.number, run.pipeline, cfg.url
                ),
            );
            run
        }
    };
    // The attempt each job starts at: 1 in a new run; one past the
    // newest attempt with artifacts when running part of a run again, so
    // what it publishes supersedes what the earlier attempt did (see
    // `run_job` for jobs without artifacts).
    let mut first_attempts: BTreeMap<String, u32> = BTreeMap::new();
    if cfg.partial.is_some() {
        for a in cfg
            .client
            .list_artifacts(&run.pipeline, run.number)
            .await
            .context("listing the run's artifacts")?
        {
            let n = first_attempts.entry(a.producer.job.clone()).or_insert(2);
            *n = (*n).max(a.producer.attempt + 1);
        }
    }
    for (name, s) in &run.sources {
        say(
            "satchel",
            &format!(
                "source {name}: run #{} of pipeline {:?} ({})",
                s.run, s.pipeline, s.selector
            ),
        );
    }
    let slots = tokio::sync::Semaphore::new(
        cfg.max_jobs
            .unwrap_or(tokio::sync::Semaphore::MAX_PERMITS)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
    );
    let triggered_from_build = match &run.triggered_from {
        Some(t) => {
            cfg.client
                .get_run(&t.pipeline, t.run)
                .await
                .with_context(|| {
                    format!("reading the triggering run {} of {:?}", t.run, t.pipeline)
                })?
                .build_id
        }
        None => None,
    };
    let shims = match install_shims(&cfg) {
        Ok(dir) => Some(dir),
        Err(e) => {
            say(
                "satchel",
                &format!("note: steps get no buildkite-agent on their PATH: {e:#}"),
            );
            None
        }
    };
    let shared = Arc::new(Shared {
        cfg,
        pipeline,
        run,
        slots,
        snapshot,
        triggered_from_build,
        shims,
        first_attempts,
        job_outputs: std::sync::Mutex::new(BTreeMap::new()),
        packages,
    });
    let mut results: Vec<JobResult> = Vec::new();
    let mut stage_outcome: BTreeMap<String, Outcome> = BTreeMap::new();
    // Stages and jobs not run because their `when` did not apply: they do
    // not fail their stage or the run.
    let mut not_wanted: Vec<String> = Vec::new();
    for (index, stage) in shared.pipeline.stages.iter().enumerate() {
        let deps: Vec<Dep> = stage
            .depends_on
            .iter()
            .flatten()
            .map(|d| Dep {
                key: d.clone(),
                outcome: stage_outcome.get(d).copied().unwrap_or(Outcome::Skipped),
                unwanted: not_wanted.contains(d),
            })
            .collect();
        let canceled = *shared.cfg.cancel.borrow();
        if let Some((outcome, reason, unwanted)) = gate(stage.when, &deps, canceled) {
            if unwanted {
                not_wanted.push(stage.key.clone());
            }
            say(
                &stage.key,
                &format!("stage {} {}: {reason}", stage.key, outcome.as_str()),
            );
            for job in &stage.jobs {
                results.push(JobResult {
                    stage: stage.key.clone(),
                    job: job.key.clone(),
                    outcome,
                    duration: Duration::ZERO,
                    reason: Some(reason.clone()),
                    tail: Vec::new(),
                    unwanted,
                });
            }
            stage_outcome.insert(stage.key.clone(), outcome);
            continue;
        }
        say(&stage.key, &format!("stage {} started", stage.key));
        // Each job publishes its outcome; jobs with `depends_on` wait for it.
        let outcomes: BTreeMap<String, watch::Sender<Option<(Outcome, bool)>>> = stage
            .jobs
            .iter()
            .map(|j| (j.key.clone(), watch::channel(None).0))
            .collect();
        let outcomes = Arc::new(outcomes);
        let jobs = stage.jobs.iter().map(|job| {
            let shared = shared.clone();
            let stage = stage.key.clone();
            let job = job.clone();
            let outcomes = outcomes.clone();
            async move {
                let left_out = shared
                    .cfg
                    .partial
                    .as_ref()
                    .is_some_and(|p| !p.runs(&shared.pipeline, index, &job.key));
                if left_out {
                    let r = JobResult {
                        stage: stage.clone(),
                        job: job.key.clone(),
                        outcome: Outcome::Reused,
                        duration: Duration::ZERO,
                        reason: Some(format!(
                            "not run again; run #{} has its artifacts",
                            shared.run.number
                        )),
                        tail: Vec::new(),
                        unwanted: false,
                    };
                    outcomes[&job.key].send_replace(Some((r.outcome, false)));
                    return (r, false);
                }
                let mut deps = Vec::new();
                for d in &job.depends_on {
                    let mut rx = outcomes[d].subscribe();
                    let (outcome, unwanted) = rx
                        .wait_for(Option::is_some)
                        .await
                        .map(|o| o.unwrap_or((Outcome::Skipped, false)))
                        .unwrap_or((Outcome::Skipped, false));
                    deps.push(Dep {
                        key: d.clone(),
                        outcome,
                        unwanted,
                    });
                }
                let canceled = *shared.cfg.cancel.borrow();
                let (result, unwanted) = match gate(job.when, &deps, canceled) {
                    None => (run_job(&shared, &stage, &job).await, false),
                    Some((outcome, reason, unwanted)) => {
                        say(
                            &format!("{stage}/{}", job.key),
                            &format!("job {}: {reason}", outcome.as_str()),
                        );
                        let r = JobResult {
                            stage: stage.clone(),
                            job: job.key.clone(),
                            outcome,
                            duration: Duration::ZERO,
                            reason: Some(reason),
                            tail: Vec::new(),
                            unwanted,
                        };
                        (r, unwanted)
                    }
                };
                outcomes[&job.key].send_replace(Some((result.outcome, unwanted)));
                (result, unwanted)
            }
        });
        let done: Vec<(JobResult, bool)> = futures_util::future::join_all(jobs).await;
        let outcome = if done.iter().any(|(j, _)| j.outcome == Outcome::Canceled) {
            Outcome::Canceled
        } else if done
            .iter()
            .all(|(j, unwanted)| j.outcome.passed() || *unwanted)
        {
            Outcome::Passed
        } else {
            Outcome::Failed
        };
        let done: Vec<JobResult> = done.into_iter().map(|(j, _)| j).collect();
        say(
            &stage.key,
            &format!("stage {} {}", stage.key, outcome.as_str()),
        );
        stage_outcome.insert(stage.key.clone(), outcome);
        results.extend(done);
    }
    let outcome =
        if stage_outcome.values().any(|o| *o == Outcome::Canceled) || *shared.cfg.cancel.borrow() {
            Outcome::Canceled
        } else if stage_outcome
            .iter()
            .all(|(k, o)| o.passed() || not_wanted.contains(k))
        {
            Outcome::Passed
        } else {
            Outcome::Failed
        };
    let client = &shared.cfg.client;
    // The jobs that did not pass, recorded with the state. A job not run
    // again (a partial run) keeps what the run knew of it, so a partial
    // run passes the run only when no job it reuses had failed; where the
    // run knows nothing of its jobs (it was recorded another way) and had
    // not passed, it stays failed.
    let known = shared.run.failed_jobs.clone();
    let mut failed_jobs: Vec<String> = Vec::new();
    for j in &results {
        let failed = match j.outcome {
            Outcome::Reused => known.as_ref().is_some_and(|k| k.contains(&j.job)),
            o => !o.passed() && !j.unwanted,
        };
        if failed {
            failed_jobs.push(j.job.clone());
        }
    }
    let mut state = outcome.run_state();
    if state == satchel_model::api::RunState::Passed {
        let reused = results.iter().any(|j| j.outcome == Outcome::Reused);
        let still: Vec<&str> = results
            .iter()
            .filter(|j| j.outcome == Outcome::Reused && failed_jobs.contains(&j.job))
            .map(|j| j.job.as_str())
            .collect();
        if !still.is_empty() {
            state = satchel_model::api::RunState::Failed;
            say(
                "satchel",
                &format!(
                    "run #{} stays failed: {} did not pass and was not run again",
                    shared.run.number,
                    still.join(", ")
                ),
            );
        } else if reused
            && known.is_none()
            && shared.run.state != satchel_model::api::RunState::Passed
        {
            state = satchel_model::api::RunState::Failed;
            say(
                "satchel",
                &format!(
                    "run #{} stays {}: whether the jobs it reuses passed is not recorded (leave out --only and --from to run them too)",
                    shared.run.number,
                    satchel_model::api::RunState::Failed.as_str()
                ),
            );
        }
    }
    let run = client
        .set_run_state(
            &shared.run.pipeline,
            shared.run.number,
            &SetRunState {
                state,
                branch: None,
                commit: None,
                failed_jobs: Some(failed_jobs),
            },
        )
        .await
        .context("recording the run's outcome")?;
    let artifacts = client
        .list_artifacts(&shared.run.pipeline, shared.run.number)
        .await
        .context("listing the run's artifacts")?;
    Ok(RunReport {
        run,
        outcome,
        jobs: results,
        artifacts,
    })
}

/// What a job's steps authenticate with: a job token of their own when
/// the runner's token may mint one, else the runner's token.
struct JobAuth {
    token: String,
    client: Client,
    /// The minted token's id, revoked when the job ends.
    minted: Option<String>,
    /// The job's attempt (1, then one more per retry).
    attempt: u32,
}

/// How long a job token lives at most (it is revoked when its job ends).
const JOB_TOKEN_SECS: u64 = 24 * 3600;

/// Mints the job token of `job`: it may read what the run's pipeline may,
/// and upload and delete only as this job of this run.
async fn job_auth(
    shared: &Shared,
    job: &Job,
    attempt: u32,
    prefix: &str,
) -> anyhow::Result<JobAuth> {
    use satchel_model::access::{NewToken, Scope};
    let cfg = &shared.cfg;
    let fallback = || -> anyhow::Result<JobAuth> {
        Ok(JobAuth {
            token: cfg.token.clone(),
            client: cfg.client.clone(),
            minted: None,
            attempt,
        })
    };
    // The server puts the token where the run's pipeline lives.
    let req = NewToken {
        name: format!(
            "satchel run {}#{} {}",
            shared.run.pipeline, shared.run.number, job.key
        ),
        scopes: vec![Scope::Read, Scope::Write, Scope::Delete],
        org: None,
        cluster: None,
        pipeline: Some(shared.run.pipeline.clone()),
        run: Some(shared.run.number),
        job: Some(job.key.clone()),
        attempt: Some(attempt),
        expires_in_secs: Some(JOB_TOKEN_SECS),
    };
    match cfg.client.create_token(&req).await {
        Ok(t) => match Client::new(&cfg.url, &t.token) {
            Ok(client) => Ok(JobAuth {
                client,
                token: t.token,
                minted: Some(t.id),
                attempt,
            }),
            Err(e) => {
                let _ = cfg.client.revoke_token(&t.id).await;
                Err(anyhow::anyhow!("using the job token: {e}"))
            }
        },
        Err(satchel_client::ClientError::Api { status: 403, .. }) => {
            say(
                prefix,
                "note: this token may not mint job tokens (that needs the `admin` scope); steps use it as it is",
            );
            fallback()
        }
        Err(e) => Err(anyhow::anyhow!("minting the job token: {e}")),
    }
}

async fn run_job(shared: &Shared, stage: &str, job: &Job) -> JobResult {
    // A slot first (`--jobs`); it is never closed.
    let _slot = shared.slots.acquire().await.ok();
    let started = Instant::now();
    let prefix = format!("{stage}/{}", job.key);
    let tail: Tail = Arc::default();
    let attempt = |attempt: u32| {
        let (prefix, tail) = (&prefix, &tail);
        async move {
            let mut handed = Handed::default();
            let auth = match job_auth(shared, job, attempt, prefix).await {
                Ok(a) => a,
                Err(e) => return (Err(e.into()), handed),
            };
            let result =
                run_job_steps(shared, &auth, stage, job, (prefix, tail), &mut handed).await;
            if let Some(id) = &auth.minted {
                if let Err(e) = shared.cfg.client.revoke_token(id).await {
                    say(prefix, &format!("note: revoking the job token {id}: {e}"));
                }
            }
            (result, handed)
        }
    };
    // A failed attempt is retried while `retries` allow: a new attempt of
    // the job, in a fresh directory, whose artifacts supersede the last.
    // A job that published nothing left no attempt number behind: it runs
    // again as attempt 2.
    let again = if shared.cfg.partial.is_some() { 2 } else { 1 };
    let first = shared
        .first_attempts
        .get(&job.key)
        .copied()
        .unwrap_or(again);
    let mut n = first;
    let (result, handed) = loop {
        match attempt(n).await {
            (Err(StepError::Failed(why)), _) if n - first < job.retries => {
                say(
                    &prefix,
                    &format!("attempt {n} failed ({why}); retrying as attempt {}", n + 1),
                );
                n += 1;
            }
            other => break other,
        }
    };
    // The job's outputs, from what its last attempt's steps handed on,
    // for the jobs after it.
    if !job.outputs.is_empty() {
        let run = &shared.run;
        let mut vars = shared.pipeline.env.clone();
        if let Ok(all) = shared.job_outputs.lock() {
            vars.extend(all.clone());
        }
        vars.extend(job.env.clone());
        for (k, v) in [
            ("SATCHEL_PIPELINE", Some(run.pipeline.clone())),
            ("SATCHEL_RUN", Some(run.number.to_string())),
            ("SATCHEL_ATTEMPT", Some(n.to_string())),
            ("SATCHEL_BRANCH", run.branch.clone()),
            ("SATCHEL_COMMIT", run.commit.clone()),
            ("SATCHEL_BUILD_ID", run.build_id.clone()),
        ] {
            vars.insert(k.into(), v.unwrap_or_default());
        }
        vars.extend(handed.vars);
        let name = job.outputs_as.as_deref().unwrap_or(&job.key);
        if let Ok(mut all) = shared.job_outputs.lock() {
            for (k, template) in &job.outputs {
                let var = crate::outputs::job_var(name, k);
                let value = crate::outputs::expand(template, &vars);
                // Legs of one matrix job share its outputs: a leg that
                // leaves one empty does not blank another leg's value.
                if value.is_empty() && all.contains_key(&var) {
                    continue;
                }
                all.insert(var, value);
            }
        }
    }
    let (outcome, reason) = match result {
        Ok(()) => (Outcome::Passed, None),
        Err(StepError::Canceled) => (Outcome::Canceled, Some("canceled".to_string())),
        Err(StepError::Failed(why)) => {
            say(&prefix, &format!("job failed: {why}"));
            (Outcome::Failed, Some(why))
        }
    };
    if outcome == Outcome::Passed {
        say(
            &prefix,
            &format!("job passed in {}", secs(started.elapsed())),
        );
    }
    let tail = match outcome {
        Outcome::Failed => tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    JobResult {
        stage: stage.to_string(),
        job: job.key.clone(),
        outcome,
        duration: started.elapsed(),
        reason,
        tail,
        unwanted: false,
    }
}

/// Makes `WORK/.bin/buildkite-agent`, a link to the `satchel` binary,
/// which answers to that name as Buildkite's agent does for its
/// `artifact` commands; returns the directory.
fn install_shims(cfg: &RunnerConfig) -> anyhow::Result<PathBuf> {
    let dir = cfg.work_root.join(".bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join("buildkite-agent");
    if std::fs::read_link(&link).ok().as_deref() == Some(cfg.satchel_exe.as_path()) {
        return Ok(dir);
    }
    // Made beside it and renamed over it: runs sharing a work directory
    // never see a missing or half-made link.
    let tmp = dir.join(format!(
        ".buildkite-agent.{}",
        satchel_model::id::random_hex(6)
    ));
    std::os::unix::fs::symlink(&cfg.satchel_exe, &tmp)
        .with_context(|| format!("linking {}", tmp.display()))?;
    std::fs::rename(&tmp, &link).with_context(|| format!("placing {}", link.display()))?;
    Ok(dir)
}

/// A duration as `1.2s`.
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

enum StepError {
    Failed(String),
    Canceled,
}

impl From<anyhow::Error> for StepError {
    fn from(e: anyhow::Error) -> StepError {
        StepError::Failed(format!("{e:#}"))
    }
}

async fn run_job_steps(
    shared: &Shared,
    auth: &JobAuth,
    stage: &str,
    job: &Job,
    (prefix, tail): (&str, &Tail),
    handed: &mut Handed,
) -> Result<(), StepError> {
    let run = &shared.run;
    let dir = shared
        .cfg
        .work_root
        .join(&run.pipeline)
        .join(run.number.to_string())
        .join(&job.key);
    let work = dir.join("work");
    let workspace = dir.join("workspace");
    // Where steps write what they hand on (not in the workspace, where
    // downloads land and uploads look).
    let files = dir.join("files");
    // Fresh every time: the same run number comes again with another
    // server, or a server whose data was reset, and must not see the
    // files an earlier job left.
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(StepError::Failed(format!(
                "clearing {}: {e}",
                dir.display()
            )))
        }
        _ => {}
    }
    for d in [&work, &workspace, &files] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    say(prefix, &format!("job started in {}", work.display()));
    if let Some(snap) = shared.snapshot.as_ref().filter(|_| job.checkout) {
        let (from, to) = (snap.root.clone(), work.clone());
        let started = Instant::now();
        let copied =
            tokio::task::spawn_blocking(move || crate::checkout::copy_tree(&from, &to, &[]))
                .await
                .map_err(|e| StepError::Failed(format!("checking out: {e}")))?
                .map_err(|e| StepError::Failed(format!("checking out: {e:#}")))?;
        say(
            prefix,
            &format!(
                "checked out {} files ({} bytes) in {}",
                copied.files,
                copied.bytes,
                secs(started.elapsed())
            ),
        );
    }
    // The first failure; later steps run only if their `when` asks to.
    let mut failed: Option<StepError> = None;
    // After a failure, later steps' output goes here: the summary keeps
    // the failed step's lines.
    let after: Tail = Arc::default();
    for (n, step) in job.steps.iter().enumerate() {
        if *shared.cfg.cancel.borrow() {
            return Err(StepError::Canceled);
        }
        let wanted = match step.when {
            When::OnSuccess => failed.is_none(),
            When::OnFailure => failed.is_some(),
            When::Always => true,
        };
        if !wanted {
            continue;
        }
        let tail = if failed.is_some() { &after } else { tail };
        // The tail is this step's output only, whichever of its commands
        // (or its references) fails.
        if let Ok(mut t) = tail.lock() {
            t.clear();
        }
        let step_files = StepFiles::new(&files, n + 1)
            .with_context(|| format!("creating the step's files in {}", files.display()))?;
        let ran = run_step(
            shared,
            auth,
            (stage, job),
            step,
            (&work, &workspace),
            (&step_files, &*handed),
            (prefix, tail),
        )
        .await;
        // What the step handed on counts whether it passed or not, as on
        // GitHub; a file it wrote wrongly fails a step that passed.
        let taken = step_files.take(step.key(), handed);
        let ran = match (ran, taken) {
            (Ok(()), Err(e)) => Err(StepError::Failed(format!("step {}: {e}", step.key()))),
            (ran, _) => ran,
        };
        match ran {
            Ok(()) => {}
            Err(StepError::Canceled) => return Err(StepError::Canceled),
            Err(StepError::Failed(why)) if step.allow_failure => {
                say(
                    prefix,
                    &format!("✘ {why}; its failure is allowed, the job goes on"),
                );
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Runs one step of `job` in `work`.
async fn run_step(
    shared: &Shared,
    auth: &JobAuth,
    (stage, job): (&str, &Job),
    step: &Step,
    (work, workspace): (&Path, &Path),
    (files, handed): (&StepFiles, &Handed),
    (prefix, tail): (&str, &Tail),
) -> Result<(), StepError> {
    let key = step.key();
    let (step, ref_env) = substitute(shared, auth, stage, &job.key, step)
        .await
        .map_err(|e| StepError::Failed(format!("step {key}: {e:#}")))?;
    let mut env: BTreeMap<String, String> = shared.pipeline.env.clone();
    if let Ok(outputs) = shared.job_outputs.lock() {
        env.extend(outputs.clone());
    }
    env.extend(job.env.clone());
    env.extend(step.env.clone());
    env.extend(handed.vars.clone());
    let ctx_env = context_env(
        shared,
        auth,
        stage,
        &job.key,
        key,
        workspace,
        env.get("PATH").cloned(),
    );
    env.extend(ctx_env);
    env.extend(ref_env);
    for (var, file) in [
        ("SATCHEL_OUTPUT", &files.output),
        ("SATCHEL_ENV", &files.env),
        ("SATCHEL_PATH", &files.path),
    ] {
        env.insert(var.into(), file.display().to_string());
    }
    if !handed.path.is_empty() {
        let path = env.get("PATH").cloned().unwrap_or_default();
        env.insert("PATH".into(), format!("{}:{path}", handed.path.join(":")));
    }
    if step.action() == Action::Trigger {
        // The triggered run is a run of its own, not a step of this one:
        // none of this job's environment, and the runner's own token (a
        // job token may not create runs of another pipeline), passed in
        // the environment rather than on a command line.
        env = BTreeMap::from([("SATCHEL_TOKEN".to_string(), shared.cfg.token.clone())]);
    }
    say(prefix, &format!("▶ {key}: {}", describe(&step)));
    let started = Instant::now();
    for argv in commands(shared, &step, workspace) {
        let status = spawn(&argv, work, &env, prefix, tail, shared.cfg.cancel.clone()).await?;
        if !status {
            return Err(StepError::Failed(format!("step {key} failed")));
        }
    }
    say(prefix, &format!("✔ {key} ({})", secs(started.elapsed())));
    Ok(())
}

/// The environment every step gets: where it is, and how to reach the
/// server, so `satchel artifact …` works inside it. `PATH` is the
/// pipeline's (`user_path`, when its `env:` sets one) or else the
/// runner's, with the `satchel` binary's directory first.
fn context_env(
    shared: &Shared,
    auth: &JobAuth,
    stage: &str,
    job: &str,
    step: &str,
    workspace: &Path,
    user_path: Option<String>,
) -> Vec<(String, String)> {
    let run = &shared.run;
    let cfg = &shared.cfg;
    let mut v: Vec<(String, String)> = vec![
        ("SATCHEL_URL".into(), cfg.url.clone()),
        ("SATCHEL_TOKEN".into(), auth.token.clone()),
        ("SATCHEL_PIPELINE".into(), run.pipeline.clone()),
        ("SATCHEL_RUN".into(), run.number.to_string()),
        ("SATCHEL_STAGE".into(), stage.into()),
        ("SATCHEL_JOB".into(), job.into()),
        ("SATCHEL_STEP".into(), step.into()),
        ("SATCHEL_ATTEMPT".into(), auth.attempt.to_string()),
        ("SATCHEL_RUNNER".into(), "1".into()),
        ("SATCHEL_WORKSPACE".into(), workspace.display().to_string()),
        (
            "SATCHEL_SOURCE_DIR".into(),
            cfg.source_dir.display().to_string(),
        ),
        (
            "SATCHEL_BRANCH".into(),
            run.branch.clone().unwrap_or_default(),
        ),
        (
            "SATCHEL_COMMIT".into(),
            run.commit.clone().unwrap_or_default(),
        ),
        (
            "SATCHEL_BUILD_ID".into(),
            run.build_id.clone().unwrap_or_default(),
        ),
        (
            "SATCHEL_TRIGGERED_FROM_BUILD_ID".into(),
            shared.triggered_from_build.clone().unwrap_or_default(),
        ),
    ];
    if let Some(dir) = cfg.satchel_exe.parent() {
        let path = user_path.unwrap_or_else(|| std::env::var("PATH").unwrap_or_default());
        let shims = shared
            .shims
            .as_ref()
            .map(|d| format!("{}:", d.display()))
            .unwrap_or_default();
        v.push(("PATH".into(), format!("{shims}{}:{path}", dir.display())));
    }
    v
}

fn describe(step: &Step) -> String {
    let one_line = |s: &str| {
        let first = s.lines().next().unwrap_or("");
        if s.lines().count() > 1 {
            format!("{first} …")
        } else {
            first.to_string()
        }
    };
    if let Some(t) = &step.title {
        return t.clone();
    }
    match step.action() {
        Action::Run => one_line(step.run.as_deref().unwrap_or("")),
        Action::Publish => format!(
            "publish {} as {}",
            step.publish.as_deref().unwrap_or(""),
            step.artifact.as_deref().unwrap_or("")
        ),
        Action::Image => format!(
            "image {} as {}",
            step.image.as_deref().unwrap_or(""),
            step.artifact.as_deref().unwrap_or("")
        ),
        Action::Link => format!(
            "link {} as {}",
            step.link.as_deref().unwrap_or(""),
            step.artifact.as_deref().unwrap_or("")
        ),
        Action::Download => format!(
            "download {} from {}",
            step.artifact.as_deref().unwrap_or("all artifacts"),
            step.download.as_deref().unwrap_or("")
        ),
        Action::Trigger => format!("trigger {}", step.trigger.as_deref().unwrap_or("")),
    }
}

/// Resolves every `$[…]` in the step's fields through the server. Fields
/// passed as arguments get the values; a `run:` script gets quoted
/// expansions of `SATCHEL_REF_<n>` variables instead (see [`crate::shell`]),
/// returned to be exported, so no value is ever parsed by the shell.
async fn substitute(
    shared: &Shared,
    auth: &JobAuth,
    stage: &str,
    job: &str,
    step: &Step,
) -> anyhow::Result<(Step, Vec<(String, String)>)> {
    let at = RunContext {
        pipeline: shared.run.pipeline.clone(),
        run: shared.run.number,
        stage: Some(stage.to_string()),
        job: Some(job.to_string()),
    };
    let mut out = step.clone();
    let mut env = Vec::new();
    for (is_script, field) in [
        (true, &mut out.run),
        (false, &mut out.publish),
        (false, &mut out.image),
        (false, &mut out.link),
        (false, &mut out.download),
        (false, &mut out.artifact),
    ] {
        let Some(text) = field.as_ref() else { continue };
        if !text.contains("$[") {
            continue;
        }
        // Resolve each distinct reference once, then substitute.
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        for f in expr::find(text) {
            let r = f.parsed.map_err(|e| anyhow::anyhow!("{}: {e}", f.inner))?;
            let key = r.to_string();
            if values.contains_key(&key) {
                continue;
            }
            if r.is_package() {
                values.insert(key, package_value(shared, &r)?);
                continue;
            }
            // As the job: its token decides what it may reference.
            let resolved = auth
                .client
                .resolve(&ResolveRequest {
                    context: at.clone(),
                    expr: key.clone(),
                    sources: BTreeMap::new(),
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot resolve: {e}"))?;
            values.insert(key, shared.cfg.client.absolute(&resolved.value));
        }
        let replaced = if is_script {
            let (script, vars) = crate::shell::substitute(text, |k| values.get(k).cloned())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            env = vars;
            script
        } else {
            expr::substitute(text, |r| {
                values
                    .get(&r.to_string())
                    .cloned()
                    .ok_or_else(|| format!("$[{r}] was not resolved"))
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?
        };
        *field = Some(replaced);
    }
    Ok((out, env))
}

/// The value of `$[sources.<source>.artifacts.<name>]`: the package that
/// source picked (its archive's URL, its image, its link).
fn package_value(shared: &Shared, r: &satchel_model::expr::Reference) -> anyhow::Result<String> {
    let src = r.source.as_deref().unwrap_or("");
    let Some(p) = shared.packages.get(src) else {
        anyhow::bail!(
            "$[{r}]: {src:?} is not a package source of this pipeline (package sources: {})",
            if shared.packages.is_empty() {
                "none".to_string()
            } else {
                shared
                    .packages
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    };
    if r.artifact != p.name && r.artifact != "default" {
        anyhow::bail!(
            "$[{r}]: source {src} is package {}/{}@{}, whose artifact is {:?} (or `default`)",
            p.repository,
            p.name,
            p.version,
            p.name
        );
    }
    Ok(if let Some(i) = &p.image {
        i.reference.clone()
    } else if let Some(l) = &p.link {
        l.url.clone()
    } else {
        shared.cfg.client.absolute(&format!(
            "/api/v1/packages/{}/{}/{}/archive",
            satchel_model::path::url_segment(&p.repository),
            satchel_model::path::url_segment(&p.name),
            satchel_model::path::url_segment(&p.version)
        ))
    })
}

/// The processes a step runs, in order.
fn commands(shared: &Shared, step: &Step, workspace: &Path) -> Vec<Vec<String>> {
    let exe = shared.cfg.satchel_exe.display().to_string();
    let sat = |args: &[&str]| -> Vec<String> {
        let mut v = vec![exe.clone()];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let artifact = step.artifact.clone().unwrap_or_default();
    match step.action() {
        Action::Run => {
            let shell: &[&str] = match step.shell {
                None | Some(Shell::Sh) => &["sh", "-c"],
                Some(Shell::Bash) => &["bash", "--noprofile", "--norc", "-c"],
            };
            let mut argv: Vec<String> = shell.iter().map(|s| s.to_string()).collect();
            argv.push(step.run.clone().unwrap_or_default());
            let mut out = vec![argv];
            if let Some(paths) = &step.artifact_paths {
                let mut v = sat(&["artifact", "upload", "--quiet"]);
                v.extend(paths.iter().cloned());
                out.push(v);
            }
            out
        }
        Action::Publish => vec![sat(&[
            "artifact",
            "publish",
            "--quiet",
            &in_workspace(step.publish.as_deref().unwrap_or(""), workspace),
            "--name",
            &artifact,
        ])],
        Action::Image => vec![sat(&[
            "artifact",
            "publish-image",
            step.image.as_deref().unwrap_or(""),
            "--name",
            &artifact,
        ])],
        Action::Link => {
            let mut v = sat(&[
                "artifact",
                "publish-link",
                step.link.as_deref().unwrap_or(""),
                "--name",
                &artifact,
            ]);
            if let Some(h) = &step.sha256 {
                v.extend(["--sha256".to_string(), h.clone()]);
            }
            if let Some(h) = &step.md5 {
                v.extend(["--md5".to_string(), h.clone()]);
            }
            vec![v]
        }
        Action::Download
            if shared
                .packages
                .contains_key(step.download.as_deref().unwrap_or("")) =>
        {
            // A package source: its files into DEST/<package>/.
            let p = &shared.packages[step.download.as_deref().unwrap_or("")];
            let dest = step
                .path
                .as_deref()
                .map(|p| in_workspace(p, workspace))
                .unwrap_or_else(|| workspace.display().to_string());
            let dir = if step.merge {
                dest
            } else {
                format!("{dest}/{}", p.name)
            };
            vec![sat(&[
                "package",
                "download",
                "--quiet",
                &format!("{}/{}@{}", p.repository, p.name, p.version),
                &dir,
            ])]
        }
        Action::Download => {
            let mut v = sat(&["artifact", "download-artifact", "--quiet"]);
            match step.artifact.as_deref() {
                Some(a) => v.push(a.to_string()),
                None => v.push("--all".into()),
            }
            let from = step.download.as_deref().unwrap_or("current");
            if let Some(src) = shared.run.sources.get(from) {
                v.extend([
                    "--pipeline".to_string(),
                    src.pipeline.clone(),
                    "--run".to_string(),
                    src.run.to_string(),
                ]);
            }
            // One glob per line; `!` lines exclude.
            for p in step.pattern.iter().flat_map(|p| p.lines()) {
                if !p.trim().is_empty() {
                    v.extend(["--pattern".to_string(), p.trim().to_string()]);
                }
            }
            if step.merge {
                v.push("--merge".into());
            }
            let dest = step
                .path
                .as_deref()
                .map(|p| in_workspace(p, workspace))
                .unwrap_or_else(|| workspace.display().to_string());
            v.extend(["--dest".to_string(), dest]);
            vec![v]
        }
        Action::Trigger => {
            let cfg = &shared.cfg;
            let file = cfg.source_dir.join(step.trigger.as_deref().unwrap_or(""));
            let mut v = sat(&[
                "run",
                "--server",
                &cfg.url,
                "--triggered-by",
                &format!("{}#{}", shared.run.pipeline, shared.run.number),
                "--work-dir",
                &cfg.work_root.display().to_string(),
            ]);
            if let Some(p) = &step.pipeline {
                v.extend(["--pipeline".to_string(), p.clone()]);
            }
            v.extend(cfg.trigger_args.iter().cloned());
            // The triggered run checks out as this one does, and never
            // copies the directories this one keeps out.
            match &cfg.checkout {
                None => v.push("--no-checkout".into()),
                Some(src) => {
                    if src.include_dirty {
                        v.push("--include-dirty".into());
                    }
                    for x in &src.exclude {
                        v.extend(["--exclude-from-checkout".into(), x.display().to_string()]);
                    }
                }
            }
            for (flag, value) in [
                ("--branch", &shared.run.branch),
                ("--commit", &shared.run.commit),
            ] {
                if let Some(value) = value {
                    v.extend([flag.to_string(), value.clone()]);
                }
            }
            v.push(file.display().to_string());
            vec![v]
        }
    }
}

/// Stops a child's whole process group: SIGTERM, then SIGKILL after a grace.
#[allow(unsafe_code)]
fn signal_group(pgid: u32, sig: i32) {
    if pgid == 0 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; it has
    // no memory effects on this process.
    unsafe {
        libc::kill(-(pgid as i32), sig);
    }
}

/// Process groups of the steps running now, so that quitting at once
/// (a second Ctrl-C) can stop them; `None` once [`kill_all_steps`] ran,
/// after which no step starts.
static LIVE_GROUPS: std::sync::Mutex<Option<Vec<u32>>> = std::sync::Mutex::new(Some(Vec::new()));

fn live_groups() -> std::sync::MutexGuard<'static, Option<Vec<u32>>> {
    LIVE_GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills (SIGKILL) the process group of every step running now, and keeps
/// any further step from starting: for quitting at once (a second Ctrl-C)
/// without leaving jobs running behind.
pub fn kill_all_steps() {
    if let Some(groups) = live_groups().take() {
        for pgid in groups {
            signal_group(pgid, libc::SIGKILL);
        }
    }
}

/// How long a step's output is still read after its process group was
/// stopped (a process that left the group may hold the pipes open).
const DRAIN: Duration = Duration::from_secs(2);

async fn pump(reader: impl AsyncRead + Unpin, prefix: String, tail: Tail) {
    let mut r = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                say(&prefix, line);
                if let Ok(mut t) = tail.lock() {
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    // A progress bar redrawn with `\r` is one long line.
                    let cut: String = line.chars().take(TAIL_LINE_CHARS).collect();
                    t.push_back(cut);
                }
            }
        }
    }
}

/// Waits for a stopped step's output to end, at most [`DRAIN`].
async fn drain(out: tokio::task::JoinHandle<()>, err: tokio::task::JoinHandle<()>) {
    let (a, b) = (out.abort_handle(), err.abort_handle());
    if tokio::time::timeout(DRAIN, async {
        let _ = tokio::join!(out, err);
    })
    .await
    .is_err()
    {
        a.abort();
        b.abort();
    }
}

/// Resolves when cancellation is asked for; never if the sender is gone.
async fn canceled(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A `publish` or download `path` with a leading `$SATCHEL_WORKSPACE` (or
/// `${SATCHEL_WORKSPACE}`) made the job's workspace; other paths are
/// relative to the job's working directory, as given.
fn in_workspace(path: &str, workspace: &Path) -> String {
    for var in ["${SATCHEL_WORKSPACE}", "$SATCHEL_WORKSPACE"] {
        if let Some(rest) = path.strip_prefix(var) {
            if rest.is_empty() || rest.starts_with('/') {
                return format!("{}{rest}", workspace.display());
            }
        }
    }
    path.to_string()
}

/// A stage or job another depends on: how it ended, and whether it was
/// only not wanted (skipped because its `when` did not apply).
struct Dep {
    key: String,
    outcome: Outcome,
    unwanted: bool,
}

/// Whether a stage or job with `when` runs after `deps`: `None` to run
/// it, else its outcome (skipped or canceled), why, and whether it is only
/// not wanted, which fails nothing: its `when` did not apply, or what it
/// waited for was itself not wanted (as Azure skips, without failing the
/// run, what depends on a skipped stage).
fn gate(when: When, deps: &[Dep], canceled: bool) -> Option<(Outcome, String, bool)> {
    if canceled {
        return Some((Outcome::Canceled, "the run was canceled".into(), false));
    }
    let list = |keep: &dyn Fn(&Dep) -> bool| -> String {
        deps.iter()
            .filter(|d| keep(d))
            .map(|d| format!("{} {}", d.key, d.outcome.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Something upstream failed: a dependency failed, or was skipped
    // because something it needed failed.
    let upstream_failed = deps
        .iter()
        .any(|d| d.outcome == Outcome::Failed || (d.outcome == Outcome::Skipped && !d.unwanted));
    match when {
        When::Always => None,
        When::OnSuccess if deps.iter().all(|d| d.outcome.passed()) => None,
        When::OnSuccess => Some((
            Outcome::Skipped,
            format!("depends on {}", list(&|d| !d.outcome.passed())),
            !upstream_failed && deps.iter().all(|d| d.outcome != Outcome::Canceled),
        )),
        When::OnFailure if upstream_failed => None,
        When::OnFailure => Some((
            Outcome::Skipped,
            "runs only when something it depends on failed, and nothing did".into(),
            true,
        )),
    }
}

/// Runs one process with prefixed output; `Ok(true)` if it exited 0.
async fn spawn(
    argv: &[String],
    cwd: &Path,
    env: &BTreeMap<String, String>,
    prefix: &str,
    tail: &Tail,
    mut cancel: watch::Receiver<bool>,
) -> Result<bool, StepError> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let (mut child, pgid) = {
        let mut groups = live_groups();
        let Some(groups) = groups.as_mut() else {
            return Err(StepError::Canceled);
        };
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", argv[0]))?;
        let pgid = child.id().unwrap_or(0);
        groups.push(pgid);
        (child, pgid)
    };
    // Whatever happens next, the step's group goes: background processes
    // (`sleep 1000 &`) do not outlive their step.
    struct Group(u32);
    impl Drop for Group {
        fn drop(&mut self) {
            signal_group(self.0, libc::SIGKILL);
            if let Some(g) = live_groups().as_mut() {
                g.retain(|p| *p != self.0);
            }
        }
    }
    let group = Group(pgid);
    let out = tokio::spawn(pump(
        child.stdout.take().expect("piped"),
        prefix.to_string(),
        tail.clone(),
    ));
    let err = tokio::spawn(pump(
        child.stderr.take().expect("piped"),
        prefix.to_string(),
        tail.clone(),
    ));
    let status = tokio::select! {
        s = child.wait() => s.context("waiting for the step")?,
        _ = canceled(&mut cancel) => {
            signal_group(pgid, libc::SIGTERM);
            let s = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(s) => s.context("waiting for the step")?,
                Err(_) => {
                    signal_group(pgid, libc::SIGKILL);
                    child.wait().await.context("waiting for the step")?
                }
            };
            // Grandchildren that ignored SIGTERM go too.
            drop(group);
            let _ = s;
            drain(out, err).await;
            return Err(StepError::Canceled);
        }
    };
    // The script is done: its background processes go, and so the pipes
    // they held close.
    drop(group);
    drain(out, err).await;
    if !status.success() {
        let how = match status.code() {
            Some(c) => format!("exit code {c}"),
            None => "a signal".to_string(),
        };
        say(prefix, &format!("✘ {} ended with {how}", short(argv)));
    }
    Ok(status.success())
}

fn short(argv: &[String]) -> String {
    if matches!(argv.first().map(String::as_str), Some("sh" | "bash")) {
        "script".into()
    } else {
        argv.iter()
            .skip(1)
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The end-of-run summary: every job's result and every artifact.
pub fn summary(report: &RunReport) -> String {
    let mut s = String::new();
    let run = &report.run;
    let _ = writeln!(
        s,
        "\nrun #{} of pipeline {:?}: {}",
        run.number,
        run.pipeline,
        report.outcome.as_str().to_uppercase()
    );
    let mut rows = vec![vec![
        "STAGE".to_string(),
        "JOB".into(),
        "RESULT".into(),
        "TIME".into(),
        "NOTE".into(),
    ]];
    for j in &report.jobs {
        rows.push(vec![
            j.stage.clone(),
            j.job.clone(),
            j.outcome.as_str().into(),
            secs(j.duration),
            j.reason.clone().unwrap_or_default(),
        ]);
    }
    table(&mut s, &rows);
    let mut rows = vec![vec![
        "ARTIFACT".to_string(),
        "KIND".into(),
        "FILES".into(),
        "SIZE".into(),
        "PRODUCER".into(),
        "VALUE".into(),
    ]];
    for a in &report.artifacts {
        let name = if a.is_default {
            format!("default ({})", a.producer.job)
        } else {
            a.name.clone()
        };
        let producer = format!(
            "{}/{}/{}",
            a.producer.stage.as_deref().unwrap_or("-"),
            a.producer.job,
            if a.steps.is_empty() {
                "-".to_string()
            } else {
                a.steps.join(",")
            }
        );
        let value = if a.kind == "files" {
            String::new()
        } else {
            a.reference_value()
        };
        rows.push(vec![
            name,
            a.kind.clone(),
            a.file_count.to_string(),
            satchel_model::units::human_bytes(a.size),
            producer,
            value,
        ]);
    }
    s.push('\n');
    if report.artifacts.is_empty() {
        s.push_str("no artifacts\n");
    } else {
        table(&mut s, &rows);
    }
    // What failed, with the last lines its failed step printed.
    for j in report.jobs.iter().filter(|j| j.outcome == Outcome::Failed) {
        let _ = writeln!(
            s,
            "\n✘ {}/{}: {}",
            j.stage,
            j.job,
            j.reason.as_deref().unwrap_or("failed")
        );
        if !j.tail.is_empty() {
            let _ = writeln!(s, "  its last {} lines of output:", j.tail.len());
            for line in &j.tail {
                let _ = writeln!(s, "  | {line}");
            }
        }
    }
    s
}

use std::fmt::Write as _;

fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}
