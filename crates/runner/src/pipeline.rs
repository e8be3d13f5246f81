//! The pipeline file (`docs/pipelines.md`): parsing and validation.
//!
//! Parsing is strict: an unknown key or a wrong type is an error with its
//! line and column (from the YAML parser). Validation then checks what a
//! schema cannot (unique keys, exactly one action per step, stage
//! dependencies, sources, reference syntax) and names the offending place
//! as `stages[1].jobs[0].steps[2]` with its keys.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use satchel_model::expr;
use satchel_model::names::validate_key;
use satchel_model::selector::RunSelector;
use serde::Deserialize;

/// A pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Pipeline key: runs are numbered per pipeline.
    pub name: String,
    /// Environment for every step.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Other pipelines' runs to take artifacts from, by name.
    #[serde(default)]
    pub sources: BTreeMap<String, Source>,
    /// Stages, run in order.
    pub stages: Vec<Stage>,
}

/// Another pipeline's run, or a promoted package (`package:`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Pipeline key (empty for a package source).
    #[serde(default)]
    pub pipeline: String,
    /// Which run (default `lastSuccessfulBuild`).
    #[serde(default = "last_successful")]
    pub run: RunSelector,
    /// A promoted package, `REPO/PACKAGE`, instead of a pipeline's run.
    #[serde(default)]
    pub package: Option<String>,
    /// For `package`: `1.4.2`, `latest` (the default) or a requirement
    /// such as `^1.4` (the highest version that meets it).
    #[serde(default)]
    pub version: Option<String>,
}

fn last_successful() -> RunSelector {
    RunSelector::LastSuccessful { branch: None }
}

/// A stage: jobs that run in parallel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Stage key.
    pub key: String,
    /// Stages that must pass first (default: the previous stage; `[]`
    /// for none).
    #[serde(default)]
    pub depends_on: Option<Vec<String>>,
    /// When the stage runs, given the stages it depends on.
    #[serde(default)]
    pub when: When,
    /// Jobs.
    pub jobs: Vec<Job>,
}

/// A job: steps run in order in one fresh working directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Job key, unique in the pipeline.
    pub key: String,
    /// Earlier jobs of the same stage that must pass first (default: none,
    /// the job starts with the stage).
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// When the job runs, given the jobs it depends on.
    #[serde(default)]
    pub when: When,
    /// Environment for the job's steps.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whether the job starts with the source checked out (the default),
    /// or in an empty directory (`checkout: false`).
    #[serde(default = "yes")]
    pub checkout: bool,
    /// How many times a failed job runs again, each time as a new attempt
    /// whose artifacts supersede the last one's (default 0).
    #[serde(default)]
    pub retries: u32,
    /// Outputs for the jobs after it, by name: text in which `${NAME}` is
    /// a variable its steps handed on (`${SATCHEL_STEP_<step>__<output>}`,
    /// see `docs/pipelines.md`); later jobs read each as
    /// `$SATCHEL_JOB_<job>__<name>`.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Publish the outputs under this job key instead of its own (the
    /// legs of a GitHub matrix publish under the matrix job's id).
    #[serde(default)]
    pub outputs_as: Option<String>,
    /// Steps.
    pub steps: Vec<Step>,
}

fn yes() -> bool {
    true
}

/// A step. Exactly one of `run`, `publish`, `image`, `link` and
/// `download` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Step key, unique in the job (default `step-N`).
    pub key: Option<String>,
    /// What the runner shows for the step (default: the script's first
    /// line, or what the step does).
    pub title: Option<String>,
    /// Shell script, run with `sh -c` (or the `shell`).
    pub run: Option<String>,
    /// For `run`: `sh` (the default) or `bash` (run as `bash --noprofile
    /// --norc -c`, as Azure's and GitHub's agents run scripts).
    pub shell: Option<Shell>,
    /// Globs uploaded into the job's default artifact after `run` succeeds.
    pub artifact_paths: Option<Vec<String>>,
    /// File or directory to publish as the named `artifact`.
    pub publish: Option<String>,
    /// Image reference to declare as the named `artifact` (nothing is pushed).
    pub image: Option<String>,
    /// URL to declare as the named `artifact`.
    pub link: Option<String>,
    /// SHA-256 of a `link`.
    pub sha256: Option<String>,
    /// MD5 of a `link`.
    pub md5: Option<String>,
    /// Artifact name for `publish`, `image`, `link`; for `download`, the
    /// one artifact to fetch (default: all).
    pub artifact: Option<String>,
    /// `current` (this run) or a source name.
    pub download: Option<String>,
    /// For `download`: only files matching this glob; several on lines of
    /// their own, and a `!GLOB` line leaves out what it matches.
    pub pattern: Option<String>,
    /// For `download`: destination (default `$SATCHEL_WORKSPACE`).
    pub path: Option<String>,
    /// For `download`: the files of every artifact straight into `path`,
    /// without a directory per artifact (a later artifact's file replaces
    /// an earlier one's of the same path).
    #[serde(default)]
    pub merge: bool,
    /// Another pipeline file (relative to this one's directory) to run as
    /// a run triggered by this one, on the same server; the step waits for
    /// it and fails if it does not pass.
    pub trigger: Option<String>,
    /// For `trigger`: the triggered run's pipeline key (default: the
    /// file's own).
    pub pipeline: Option<String>,
    /// Environment for this step.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A failure of this step is reported, and fails neither the job nor
    /// the steps after it (GitHub's `continue-on-error`, Buildkite's
    /// `soft_fail`).
    #[serde(default)]
    pub allow_failure: bool,
    /// When the step runs, given the job's earlier steps: by default only
    /// while they all passed; `always` also after one failed (to upload
    /// logs), `on_failure` only then. A job with a failed step fails
    /// whatever its later steps do.
    #[serde(default)]
    pub when: When,
}

/// The shell of a `run` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shell {
    /// `sh -c`.
    Sh,
    /// `bash --noprofile --norc -c`.
    Bash,
}

/// When a stage or job runs, given the outcomes of what it depends on
/// (Azure's `condition:`, GitLab's `when:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Only when everything it depends on passed (the default).
    #[default]
    OnSuccess,
    /// Whatever happened before, unless the run was canceled.
    Always,
    /// Only when something it depends on failed.
    OnFailure,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run a script.
    Run,
    /// Publish files.
    Publish,
    /// Declare an image.
    Image,
    /// Declare a link.
    Link,
    /// Download artifacts.
    Download,
    /// Run another pipeline file.
    Trigger,
}

impl Step {
    /// The step's action (valid after [`Pipeline::parse`]).
    pub fn action(&self) -> Action {
        if self.run.is_some() {
            Action::Run
        } else if self.publish.is_some() {
            Action::Publish
        } else if self.image.is_some() {
            Action::Image
        } else if self.link.is_some() {
            Action::Link
        } else if self.trigger.is_some() {
            Action::Trigger
        } else {
            Action::Download
        }
    }

    /// The step key.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }
}

/// A position in the file for messages: `stages[1] (deploy).jobs[0] (use-all)`.
fn place(parts: &[(&str, usize, &str)]) -> String {
    let mut s = String::new();
    for (i, (what, idx, key)) in parts.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        let _ = write!(s, "{what}[{idx}]");
        if !key.is_empty() {
            let _ = write!(s, " ({key})");
        }
    }
    s
}

impl Pipeline {
    /// Parses and validates a pipeline file's text.
    pub fn parse(text: &str) -> anyhow::Result<Pipeline> {
        let mut p: Pipeline = serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        p.validate()?;
        Ok(p)
    }

    /// Validates a pipeline built by a translator of another format (see
    /// [`crate::formats`]), filling in defaults as [`Pipeline::parse`] does.
    pub fn validated(mut self) -> anyhow::Result<Pipeline> {
        self.validate()?;
        Ok(self)
    }

    fn validate(&mut self) -> anyhow::Result<()> {
        let mut errors: Vec<String> = Vec::new();
        if let Err(e) = validate_key("pipeline name", &self.name) {
            errors.push(format!("name: {e}"));
        }
        for (name, src) in &self.sources {
            if let Err(e) = validate_key("source name", name) {
                errors.push(format!("sources.{name}: {e}"));
            }
            if name.contains('.') {
                errors.push(format!(
                    "sources.{name}: a source name cannot contain '.' (references split on it)"
                ));
            }
            match &src.package {
                None => {
                    if let Err(e) = validate_key("pipeline", &src.pipeline) {
                        errors.push(format!("sources.{name}.pipeline: {e}"));
                    }
                    if src.version.is_some() {
                        errors.push(format!(
                            "sources.{name}.version: only a package source has a version (a pipeline source has `run`)"
                        ));
                    }
                }
                Some(p) => {
                    if !src.pipeline.is_empty() {
                        errors.push(format!(
                            "sources.{name}: a source names a `pipeline` or a `package`, not both"
                        ));
                    }
                    let ok = p.split_once('/').is_some_and(|(r, n)| {
                        validate_key("repository", r).is_ok() && validate_key("package", n).is_ok()
                    });
                    if !ok {
                        errors.push(format!("sources.{name}.package: {p:?} is not REPO/PACKAGE"));
                    }
                    let v = src.version.as_deref().unwrap_or("latest");
                    if v != "latest"
                        && satchel_model::api::validate_version(v).is_err()
                        && !satchel_model::version::is_requirement(v)
                    {
                        errors.push(format!(
                            "sources.{name}.version: {v:?} is neither a version, `latest`, nor a requirement such as ^1.4"
                        ));
                    }
                }
            }
        }
        if self.stages.is_empty() {
            errors.push("stages: a pipeline needs at least one stage".into());
        }
        let mut stage_keys: Vec<String> = Vec::new();
        let mut job_keys: HashSet<String> = HashSet::new();
        let mut stage_jobs: Vec<String>;
        for (si, stage) in self.stages.iter_mut().enumerate() {
            let at = place(&[("stages", si, &stage.key)]);
            if let Err(e) = validate_key("stage key", &stage.key) {
                errors.push(format!("{at}: {e}"));
            } else if stage.key.contains('.') {
                errors.push(format!(
                    "{at}: a stage key cannot contain '.' (references split on it)"
                ));
            }
            if stage_keys.contains(&stage.key) {
                errors.push(format!("{at}: stage key {:?} is used twice", stage.key));
            }
            match &stage.depends_on {
                None => {
                    if let Some(prev) = stage_keys.last() {
                        stage.depends_on = Some(vec![prev.clone()]);
                    } else {
                        stage.depends_on = Some(Vec::new());
                    }
                }
                Some(deps) => {
                    for d in deps {
                        if d == &stage.key {
                            errors
                                .push(format!("{at}.depends_on: a stage cannot depend on itself"));
                        } else if !stage_keys.contains(d) {
                            let later = d.as_str();
                            errors.push(format!(
                                "{at}.depends_on: {later:?} is not an earlier stage (earlier stages: {})",
                                if stage_keys.is_empty() { "none".into() } else { stage_keys.join(", ") }
                            ));
                        }
                    }
                }
            }
            if stage.jobs.is_empty() {
                errors.push(format!("{at}: a stage needs at least one job"));
            }
            stage_jobs = Vec::new();
            for (ji, job) in stage.jobs.iter_mut().enumerate() {
                let at = place(&[("stages", si, &stage.key), ("jobs", ji, &job.key)]);
                for d in &job.depends_on {
                    if !stage_jobs.contains(d) {
                        errors.push(format!(
                            "{at}.depends_on: {d:?} is not an earlier job of stage {:?} (earlier jobs: {}); jobs of later stages wait through the stage's depends_on",
                            stage.key,
                            if stage_jobs.is_empty() { "none".into() } else { stage_jobs.join(", ") }
                        ));
                    }
                }
                stage_jobs.push(job.key.clone());
                if let Err(e) = validate_key("job key", &job.key) {
                    errors.push(format!("{at}: {e}"));
                } else if job.key.contains('.') {
                    errors.push(format!(
                        "{at}: a job key cannot contain '.' (references split on it)"
                    ));
                }
                if !job_keys.insert(job.key.clone()) {
                    errors.push(format!(
                        "{at}: job key {:?} is used twice; job keys are unique in a pipeline",
                        job.key
                    ));
                }
                if job.steps.is_empty() {
                    errors.push(format!("{at}: a job needs at least one step"));
                }
                let mut step_keys = HashSet::new();
                for (ti, step) in job.steps.iter_mut().enumerate() {
                    if step.key.is_none() {
                        step.key = Some(format!("step-{}", ti + 1));
                    }
                    let at = place(&[
                        ("stages", si, &stage.key),
                        ("jobs", ji, &job.key),
                        ("steps", ti, step.key()),
                    ]);
                    if let Err(e) = validate_key("step key", step.key()) {
                        errors.push(format!("{at}: {e}"));
                    } else if step.key().contains('.') {
                        errors.push(format!(
                            "{at}: a step key cannot contain '.' (references split on it)"
                        ));
                    }
                    if !step_keys.insert(step.key().to_string()) {
                        errors.push(format!(
                            "{at}: step key {:?} is used twice in the job",
                            step.key()
                        ));
                    }
                    for e in check_step(step, &self.sources) {
                        errors.push(format!("{at}: {e}"));
                    }
                }
            }
            stage_keys.push(stage.key.clone());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid pipeline:\n  {}", errors.join("\n  "))
        }
    }

    /// The stage a job belongs to.
    pub fn stage_of(&self, job: &str) -> Option<&Stage> {
        self.stages
            .iter()
            .find(|s| s.jobs.iter().any(|j| j.key == job))
    }
}

fn check_step(step: &Step, sources: &BTreeMap<String, Source>) -> Vec<String> {
    let mut errors = Vec::new();
    let actions: Vec<&str> = [
        ("run", step.run.is_some()),
        ("publish", step.publish.is_some()),
        ("image", step.image.is_some()),
        ("link", step.link.is_some()),
        ("download", step.download.is_some()),
        ("trigger", step.trigger.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| k)
    .collect();
    match actions.len() {
        0 => {
            errors.push(
                "a step needs one of `run`, `publish`, `image`, `link`, `download` or `trigger`"
                    .into(),
            );
            return errors;
        }
        1 => {}
        _ => {
            errors.push(format!(
                "a step has exactly one of `run`, `publish`, `image`, `link`, `download`, `trigger`; this one has {}",
                actions.join(" and ")
            ));
            return errors;
        }
    }
    let action = step.action();
    let only = |set: bool, key: &str, allowed: &str, errors: &mut Vec<String>| {
        if set {
            errors.push(format!("`{key}` only goes with {allowed}"));
        }
    };
    only(
        (step.artifact_paths.is_some() || step.shell.is_some()) && action != Action::Run,
        "artifact_paths/shell",
        "`run`",
        &mut errors,
    );
    only(
        (step.sha256.is_some() || step.md5.is_some()) && action != Action::Link,
        "sha256/md5",
        "`link`",
        &mut errors,
    );
    only(
        (step.pattern.is_some() || step.path.is_some() || step.merge) && action != Action::Download,
        "pattern/path/merge",
        "`download`",
        &mut errors,
    );
    only(
        step.pipeline.is_some() && action != Action::Trigger,
        "pipeline",
        "`trigger`",
        &mut errors,
    );
    match action {
        Action::Publish | Action::Image | Action::Link => match &step.artifact {
            None => errors.push("`publish`, `image` and `link` steps need `artifact: NAME`".into()),
            Some(n) if !n.contains("$[") => {
                if let Err(e) = satchel_model::names::validate_artifact_name(n) {
                    errors.push(format!("artifact: {e}"));
                } else if n == "default" {
                    errors.push(
                        "artifact: `default` names a job's default artifact; choose another name"
                            .into(),
                    );
                }
            }
            Some(_) => {}
        },
        Action::Download => {
            let d = step.download.as_deref().unwrap_or("");
            if d != "current" && !sources.contains_key(d) {
                errors.push(format!(
                    "download: {d:?} is neither `current` nor a source (sources: {})",
                    if sources.is_empty() {
                        "none".to_string()
                    } else {
                        sources.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ));
            }
            if sources.get(d).is_some_and(|s| s.package.is_some()) && step.pattern.is_some() {
                errors.push(format!(
                    "download: {d:?} is a package source, which downloads whole (no `pattern`)"
                ));
            }
            for line in step.pattern.iter().flat_map(|p| p.lines()) {
                let glob = line.trim();
                let glob = glob.strip_prefix('!').unwrap_or(glob);
                if !glob.is_empty() {
                    if let Err(e) = satchel_model::glob::Glob::new(glob) {
                        errors.push(format!("pattern: {e}"));
                    }
                }
            }
        }
        Action::Trigger => {
            if let Some(p) = &step.pipeline {
                if let Err(e) = validate_key("pipeline", p) {
                    errors.push(format!("pipeline: {e}"));
                }
            }
        }
        Action::Run => {}
    }
    // Reference syntax, and sources named in references, checked up front.
    for (field, text) in step.templated() {
        for found in expr::find(text) {
            match found.parsed {
                Err(e) => errors.push(format!("{field}: {}: {e}", found.inner)),
                Ok(r) => {
                    if let Some(src) = &r.source {
                        match sources.get(src) {
                            None => errors.push(format!(
                                "{field}: $[{r}] names source {src:?}, which is not under `sources:`"
                            )),
                            Some(s) if s.package.is_some() && !r.is_package() => errors.push(format!(
                                "{field}: $[{r}]: source {src:?} is a package; write $[sources.{src}.artifacts.<name>]"
                            )),
                            Some(s) if s.package.is_none() && r.is_package() => errors.push(format!(
                                "{field}: $[{r}]: source {src:?} is a pipeline's run; write $[{}]",
                                satchel_model::expr::SOURCES_SHAPE.replace("<source>", src)
                            )),
                            Some(_) => {}
                        }
                    }
                }
            }
        }
    }
    errors
}

impl Step {
    /// The fields in which `$[…]` references are substituted.
    pub fn templated(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        for (name, v) in [
            ("run", &self.run),
            ("publish", &self.publish),
            ("image", &self.image),
            ("link", &self.link),
            ("download", &self.download),
            ("artifact", &self.artifact),
        ] {
            if let Some(v) = v {
                out.push((name, v.as_str()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAN_IN: &str = r#"
name: fan-in
stages:
  - key: build
    jobs:
      - key: job1
        steps:
          - run: echo one > job1.txt
          - key: publish
            publish: job1.txt
            artifact: job1-artifact
      - key: job2
        steps:
          - run: echo two > job2.txt
            artifact_paths: ["job2.txt"]
  - key: deploy
    jobs:
      - key: use-all
        steps:
          - download: current
"#;

    #[test]
    fn parses_and_fills_defaults() {
        let p = Pipeline::parse(FAN_IN).unwrap();
        assert_eq!(p.name, "fan-in");
        assert_eq!(p.stages[0].depends_on.as_deref(), Some(&[][..]));
        assert_eq!(
            p.stages[1].depends_on.as_deref(),
            Some(&["build".to_string()][..])
        );
        assert_eq!(p.stages[0].jobs[0].steps[0].key(), "step-1");
        assert_eq!(p.stages[0].jobs[0].steps[1].action(), Action::Publish);
        assert_eq!(p.stage_of("use-all").unwrap().key, "deploy");
    }

    #[test]
    fn unknown_keys_are_errors_with_line_numbers() {
        let bad = FAN_IN.replace("artifact_paths:", "artifact_path:");
        let e = Pipeline::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("unknown field `artifact_path`"), "{e}");
        assert!(e.contains("line 15"), "{e}");
        let e = Pipeline::parse("name: x\nstages: []\nfoo: 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `foo`") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_name_the_place() {
        let cases = [
            (
                FAN_IN.replace("key: job2", "key: job1"),
                "stages[0] (build).jobs[1] (job1): job key \"job1\" is used twice",
            ),
            (
                FAN_IN.replace("- download: current", "- download: upstream"),
                "\"upstream\" is neither `current` nor a source",
            ),
            (
                FAN_IN.replace("publish: job1.txt", "publish: job1.txt\n            run: x"),
                "exactly one of",
            ),
            (
                FAN_IN.replace("            artifact: job1-artifact\n", ""),
                "need `artifact: NAME`",
            ),
            (
                FAN_IN.replace(
                    "- download: current",
                    "- download: current\n            depends_on: []",
                ),
                "unknown field `depends_on`",
            ),
            (
                FAN_IN.replace(
                    "  - key: deploy\n",
                    "  - key: deploy\n    depends_on: [later]\n",
                ),
                "\"later\" is not an earlier stage",
            ),
            (
                FAN_IN.replace(
                    "      - key: job2\n",
                    "      - key: job2\n        depends_on: [use-all]\n",
                ),
                "\"use-all\" is not an earlier job of stage \"build\"",
            ),
            (
                FAN_IN.replace("echo one > job1.txt", "echo $[jobs.a.b.artifact.c]"),
                "expected `artifacts`",
            ),
            (
                FAN_IN.replace(
                    "echo one > job1.txt",
                    "echo $[sources.up.stages.a.b.c.artifacts.d]",
                ),
                "names source \"up\", which is not under `sources:`",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", Pipeline::parse(&text).unwrap_err());
            assert!(e.contains(want), "want {want:?} in:\n{e}");
        }
    }

    #[test]
    fn sources_take_selectors() {
        let p = Pipeline::parse(
            "name: b\nsources:\n  up: { pipeline: a, run: 42 }\n  last: { pipeline: a }\n  br: { pipeline: a, run: 'latestFromBranch:main' }\nstages:\n  - key: s\n    jobs:\n      - key: j\n        steps:\n          - download: up\n",
        )
        .unwrap();
        assert_eq!(p.sources["up"].run, RunSelector::Number(42));
        assert_eq!(
            p.sources["last"].run,
            RunSelector::LastSuccessful { branch: None }
        );
        assert_eq!(
            p.sources["br"].run,
            RunSelector::LatestFromBranch("main".into())
        );
        let e =
            Pipeline::parse("name: b\nsources:\n  up: { pipeline: a, run: nope }\nstages: []\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("line 3"), "{e}");
    }
}
