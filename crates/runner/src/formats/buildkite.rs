//! Buildkite pipelines, run as written (`satchel run
//! .buildkite/pipeline.yml`).
//!
//! What runs (`docs/pipelines.md`, "Buildkite pipelines"):
//! - `steps` (or a bare list): command steps (`command` / `commands`, run
//!   with `bash -e` as the agent does), `wait` (a new stage; with
//!   `continue_on_failure: true` it runs whatever happened before),
//!   `depends_on`, `key`, `label`, `env`, `artifact_paths` (uploaded after
//!   the command whether it passed or not, as the agent does),
//!   `parallelism` (jobs `KEY-0` … with `BUILDKITE_PARALLEL_JOB`),
//!   `retry.automatic` (a failed job runs again as a new attempt), `group`
//!   (its steps, in place), and `trigger` (another pipeline file of the
//!   same directory, run as a run triggered by this one).
//! - Inside commands, `buildkite-agent artifact upload|download|search|
//!   shasum` work unchanged: the runner puts a `buildkite-agent` on every
//!   step's `PATH`, and sets the `BUILDKITE_*` variables from its own.
//! - Anything else (plugins, `block` and `input` steps, conditions, build
//!   matrices) is refused before anything runs, or with
//!   `--skip-unsupported` reported.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::bail;
use satchel_model::expr::escape;
use serde_json::{Map, Value};

use super::{
    check_keys, names, order_jobs, scalar, script_title, shell_quote, LoadOptions, Translated,
};
use crate::pipeline::{Job, Pipeline, Shell, Stage, Step, When};

/// The environment every translated command sets first: the variables a
/// Buildkite agent exports, from the runner's own.
const PREAMBLE: &str = r#"export BUILDKITE=true CI=true BUILDKITE_AGENT_NAME=satchel
export BUILDKITE_BUILD_ID="$SATCHEL_BUILD_ID" BUILDKITE_BUILD_NUMBER="$SATCHEL_RUN" BUILDKITE_PIPELINE_SLUG="$SATCHEL_PIPELINE"
export BUILDKITE_BRANCH="${SATCHEL_BRANCH:-}" BUILDKITE_COMMIT="${SATCHEL_COMMIT:-}" BUILDKITE_BUILD_CHECKOUT_PATH="$PWD"
export BUILDKITE_JOB_ID="$SATCHEL_JOB" BUILDKITE_RETRY_COUNT="$((SATCHEL_ATTEMPT - 1))"
if [ -n "${SATCHEL_TRIGGERED_FROM_BUILD_ID:-}" ]; then export BUILDKITE_TRIGGERED_FROM_BUILD_ID="$SATCHEL_TRIGGERED_FROM_BUILD_ID"; fi
"#;

/// Step keys that do not change what runs locally.
const IGNORED_STEP: &[&str] = &[
    "agents",
    "timeout_in_minutes",
    "priority",
    "cancel_on_build_failing",
    "notify",
];

/// Most times a job is retried (Buildkite's limit).
const MAX_RETRIES: u64 = 10;

/// Most parallel jobs one step makes.
const MAX_PARALLELISM: u64 = 100;

/// Translates a Buildkite pipeline (parsed into `doc`) with pipeline key
/// `key`.
pub fn translate(doc: &Value, key: &str, opts: &LoadOptions) -> anyhow::Result<Translated> {
    let (steps, env) = match doc {
        Value::Array(steps) => (steps.clone(), None),
        Value::Object(top) => {
            let mut errors = Vec::new();
            check_keys(
                &mut errors,
                "the pipeline",
                top,
                (&["steps", "env"], &["agents", "notify", "priority"]),
            );
            if !errors.is_empty() {
                bail!(
                    "this Buildkite pipeline cannot run here:\n  {}",
                    errors.join("\n  ")
                );
            }
            match top.get("steps").and_then(Value::as_array) {
                Some(s) => (s.clone(), top.get("env").cloned()),
                None => bail!("a Buildkite pipeline has `steps`, a list"),
            }
        }
        _ => bail!("a Buildkite pipeline is a mapping with `steps`, or a list of steps"),
    };
    let mut tr = Tr {
        opts,
        errors: Vec::new(),
        skipped: Vec::new(),
        stages: vec![Building::default()],
        keys: HashMap::new(),
        taken: std::collections::HashSet::new(),
        count: 0,
    };
    let mut pipeline_env = BTreeMap::new();
    if let Some(e) = &env {
        pipeline_env = tr.env("env", e);
    }
    tr.steps("steps", &steps, None);
    let stages = tr.finish();
    let pipeline = Pipeline {
        name: key.to_string(),
        env: pipeline_env,
        sources: BTreeMap::new(),
        stages,
    };
    Translated::finish("this Buildkite pipeline", pipeline, tr.errors, tr.skipped)
}

/// A stage being built: the jobs between two `wait`s.
#[derive(Default)]
struct Building {
    /// Runs after a failure too (`wait` with `continue_on_failure`).
    always: bool,
    /// Jobs, with the step keys they depend on (resolved at the end).
    jobs: Vec<(Job, Vec<String>, String)>,
}

struct Tr<'a> {
    opts: &'a LoadOptions,
    errors: Vec<String>,
    skipped: Vec<String>,
    stages: Vec<Building>,
    /// Each step key's jobs (several with `parallelism`) and stage index.
    keys: HashMap<String, (usize, Vec<String>)>,
    /// Job keys in use.
    taken: std::collections::HashSet<String>,
    /// Steps seen, for default keys.
    count: usize,
}

/// `$$` is Buildkite's escape for a `$` the job's shell should see.
fn unescape(command: &str) -> String {
    command.replace("$$", "$")
}

impl Tr<'_> {
    fn error(&mut self, place: &str, what: impl std::fmt::Display) {
        self.errors.push(format!("{place}: {what}"));
    }

    fn env(&mut self, place: &str, v: &Value) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(m) = v.as_object() else {
            self.error(place, "`env` is a mapping");
            return out;
        };
        for (k, v) in m {
            let good = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !good {
                self.error(place, format!("{k:?} is not an environment variable name"));
                continue;
            }
            out.insert(k.clone(), scalar(v).unwrap_or_else(|| v.to_string()));
        }
        out
    }

    /// A new job key from `want`, unique in the pipeline.
    fn job_key(&mut self, want: &str) -> String {
        let base = super::key_of(want).unwrap_or_else(|| "step".into());
        super::unique_key(base, &mut self.taken)
    }

    fn steps(&mut self, place: &str, steps: &[Value], group: Option<&str>) {
        for (i, s) in steps.iter().enumerate() {
            let at = format!("{place}[{i}]");
            match s {
                Value::String(w) if w == "wait" || w == "waiter" => self.wait(false),
                Value::String(b) if b == "block" || b == "input" => self.block(&at, b),
                Value::Object(m) => self.step(&at, m, group),
                _ => self.error(&at, "a step is `wait` or a mapping"),
            }
        }
    }

    fn wait(&mut self, always: bool) {
        if !self.stages.last().is_some_and(|s| s.jobs.is_empty()) {
            self.stages.push(Building::default());
        }
        if let Some(s) = self.stages.last_mut() {
            s.always |= always;
        }
    }

    fn block(&mut self, place: &str, what: &str) {
        if self.opts.skip_unsupported {
            // Nobody is there to unblock it: it is passed, as a wait.
            self.skipped
                .push(format!("{place}: a {what} step (passed, as a wait)"));
            self.wait(false);
        } else {
            self.error(
                place,
                format!("a {what} step waits for a person, which a local run cannot (pass --skip-unsupported to pass it as a wait)"),
            );
        }
    }

    fn step(&mut self, place: &str, m: &Map<String, Value>, group: Option<&str>) {
        self.count += 1;
        if m.contains_key("wait") || m.contains_key("waiter") {
            check_keys(
                &mut self.errors,
                place,
                m,
                (&["wait", "waiter", "continue_on_failure", "key"], &[]),
            );
            let always = m
                .get("continue_on_failure")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            self.wait(always);
            return;
        }
        if m.contains_key("block") || m.contains_key("input") {
            self.block(
                place,
                if m.contains_key("block") {
                    "block"
                } else {
                    "input"
                },
            );
            return;
        }
        if let Some(inner) = m.get("group") {
            check_keys(
                &mut self.errors,
                place,
                m,
                (&["group", "steps", "key", "label"], &["notify"]),
            );
            let label = scalar(inner).unwrap_or_default();
            match m.get("steps").and_then(Value::as_array) {
                Some(steps) => self.steps(&format!("{place}.steps"), steps, Some(&label)),
                None => self.error(place, "a group has `steps`, a list"),
            }
            return;
        }
        if m.get("skip").is_some_and(|v| *v != Value::Bool(false)) {
            self.skipped.push(format!("{place}: skipped by `skip`"));
            return;
        }
        for k in [
            "plugins",
            "if",
            "branches",
            "matrix",
            "concurrency",
            "concurrency_group",
            "allow_dependency_failure",
        ] {
            if m.contains_key(k) {
                self.error(place, format!("`{k}` is not supported yet"));
            }
        }
        let label = m.get("label").or_else(|| m.get("name")).and_then(scalar);
        let step_key = m
            .get("key")
            .or_else(|| m.get("id"))
            .or_else(|| m.get("identifier"))
            .and_then(Value::as_str)
            .map(String::from);
        let want = step_key
            .clone()
            .or_else(|| label.clone())
            .unwrap_or_else(|| format!("step-{}", self.count));
        // The step key every job of this step uploads as (`--step` finds
        // them all).
        let base = super::key_of(&want).unwrap_or_else(|| format!("step-{}", self.count));
        let depends: Vec<String> = match m.get("depends_on") {
            None => Vec::new(),
            Some(v) => match names(v) {
                Some(n) => n,
                None => {
                    self.error(place, "`depends_on` is a step key or a list of them (`allow_failure` is not supported yet)");
                    Vec::new()
                }
            },
        };
        let mut env = match m.get("env") {
            Some(e) => self.env(&format!("{place}.env"), e),
            None => BTreeMap::new(),
        };
        if let Some(g) = group {
            env.insert("BUILDKITE_GROUP_LABEL".into(), g.to_string());
        }
        let (steps, jobs_of): (Vec<Step>, u64) = if let Some(t) = m.get("trigger") {
            check_keys(
                &mut self.errors,
                place,
                m,
                (
                    &[
                        "trigger",
                        "label",
                        "name",
                        "key",
                        "id",
                        "depends_on",
                        "async",
                        "build",
                    ],
                    &[],
                ),
            );
            let Some(slug) = scalar(t) else {
                self.error(place, "`trigger` names a pipeline");
                return;
            };
            if let Some(b) = m.get("build").and_then(Value::as_object) {
                check_keys(
                    &mut self.errors,
                    &format!("{place}.build"),
                    b,
                    (&["message"], &[]),
                );
            }
            match self.trigger_file(place, &slug) {
                Some(file) => (
                    vec![Step {
                        key: Some(base.clone()),
                        title: label.clone().or_else(|| Some(format!("trigger {slug}"))),
                        trigger: Some(escape(&file)),
                        pipeline: Some(slug),
                        // Buildkite does not wait for an async trigger, so
                        // its failure is not this build's: the runner
                        // still waits (the run must end), and lets it fail.
                        allow_failure: m.get("async").and_then(Value::as_bool) == Some(true),
                        ..Step::default()
                    }],
                    1,
                ),
                None => return,
            }
        } else if m.contains_key("command") || m.contains_key("commands") {
            let mut known = vec![
                "command",
                "commands",
                "label",
                "name",
                "key",
                "id",
                "identifier",
                "depends_on",
                "env",
                "artifact_paths",
                "parallelism",
                "retry",
                "skip",
                "skip_checkout",
                "soft_fail",
            ];
            known.extend(IGNORED_STEP);
            check_keys(&mut self.errors, place, m, (&known, &[]));
            let commands = m.get("command").or_else(|| m.get("commands"));
            let text = match commands {
                Some(Value::Array(items)) => {
                    let lines: Option<Vec<String>> = items
                        .iter()
                        .map(|i| scalar(i).map(|s| unescape(&s)))
                        .collect();
                    match lines {
                        Some(l) => l.join("\n"),
                        None => {
                            self.error(place, "`commands` is a list of strings");
                            return;
                        }
                    }
                }
                Some(v) if !v.is_null() && scalar(v).is_some() => {
                    unescape(&scalar(v).unwrap_or_default())
                }
                _ => {
                    self.error(place, "`command` is a string or a list of strings");
                    return;
                }
            };

            let soft = match m.get("soft_fail") {
                None | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(_) => {
                    self.error(
                        place,
                        "`soft_fail` for some exit statuses is not supported yet (`soft_fail: true` is)",
                    );
                    false
                }
            };
            let mut steps = vec![Step {
                key: Some(base.clone()),
                allow_failure: soft,
                title: Some(label.clone().unwrap_or_else(|| script_title(&text))),
                run: Some(escape(&format!("{PREAMBLE}set -e\n{text}\n"))),
                shell: Some(Shell::Bash),
                ..Step::default()
            }];
            if let Some(paths) = m.get("artifact_paths") {
                let list = match paths {
                    Value::String(s) => Some(vec![s.clone()]),
                    Value::Array(_) => names(paths),
                    _ => None,
                };
                match list {
                    Some(list) if !list.is_empty() => {
                        let upload = format!(
                            "SATCHEL_STEP={} buildkite-agent artifact upload {}\n",
                            shell_quote(&base),
                            shell_quote(&list.join(";"))
                        );
                        steps.push(Step {
                            key: Some(format!("{base}-artifacts")),
                            title: Some(format!("upload artifacts {}", list.join(";"))),
                            run: Some(escape(&format!("{PREAMBLE}{upload}"))),
                            shell: Some(Shell::Bash),
                            when: When::Always,
                            ..Step::default()
                        });
                    }
                    Some(_) => {}
                    None => self.error(place, "`artifact_paths` is a string or a list of strings"),
                }
            }
            let n = match m.get("parallelism") {
                None => 1,
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=MAX_PARALLELISM).contains(&n) => n,
                    _ => {
                        self.error(
                            place,
                            format!("`parallelism` is a number from 1 to {MAX_PARALLELISM}"),
                        );
                        1
                    }
                },
            };
            (steps, n)
        } else {
            if self.opts.skip_unsupported {
                self.skipped
                    .push(format!("{place}: a step without a command"));
            } else {
                self.error(place, "a step has `command`, `commands`, `trigger`, `wait`, `group` or `block` (pass --skip-unsupported to report others)");
            }
            return;
        };
        let retries = self.retries(place, m.get("retry"));
        let stage = self.stages.len() - 1;
        let mut keys = Vec::new();
        let parallel = m.contains_key("parallelism");
        for i in 0..jobs_of {
            let key = if parallel {
                self.job_key(&format!("{base}-{i}"))
            } else {
                self.job_key(&base)
            };
            let mut env = env.clone();
            if let Some(k) = &step_key {
                env.insert("BUILDKITE_STEP_KEY".into(), k.clone());
            }
            if let Some(l) = &label {
                env.insert("BUILDKITE_LABEL".into(), l.clone());
            }
            if parallel {
                env.insert("BUILDKITE_PARALLEL_JOB".into(), i.to_string());
                env.insert("BUILDKITE_PARALLEL_JOB_COUNT".into(), jobs_of.to_string());
            }
            let job = Job {
                key: key.clone(),
                depends_on: Vec::new(),
                when: When::OnSuccess,
                env,
                checkout: !m
                    .get("skip_checkout")
                    .is_some_and(|v| *v == Value::Bool(true)),
                retries,
                outputs: BTreeMap::new(),
                outputs_as: None,
                steps: steps.clone(),
            };
            keys.push(key);
            self.stages[stage]
                .jobs
                .push((job, depends.clone(), place.to_string()));
        }
        for k in [step_key.clone(), Some(want.clone())].into_iter().flatten() {
            self.keys.entry(k).or_insert((stage, keys.clone()));
        }
    }

    /// `retry.automatic` as a number of retries.
    fn retries(&mut self, place: &str, retry: Option<&Value>) -> u32 {
        let Some(retry) = retry else { return 0 };
        let Some(r) = retry.as_object() else {
            self.error(place, "`retry` is a mapping (`automatic`, `manual`)");
            return 0;
        };
        check_keys(
            &mut self.errors,
            &format!("{place}.retry"),
            r,
            (&["automatic"], &["manual"]),
        );
        let rule = |this: &mut Self, v: &Map<String, Value>| -> u64 {
            check_keys(
                &mut this.errors,
                &format!("{place}.retry.automatic"),
                v,
                (&["limit", "exit_status", "signal", "signal_reason"], &[]),
            );
            if v.get("exit_status")
                .is_some_and(|s| s.as_str() != Some("*"))
                || v.contains_key("signal")
                || v.contains_key("signal_reason")
            {
                this.error(place, "retrying only on some exit statuses or signals is not supported yet (`exit_status: \"*\"` is)");
            }
            v.get("limit").and_then(Value::as_u64).unwrap_or(2)
        };
        let n = match r.get("automatic") {
            None | Some(Value::Bool(false)) => 0,
            Some(Value::Bool(true)) => 2,
            Some(Value::Object(o)) => rule(self, o),
            Some(Value::Array(items)) => {
                let mut most = 0;
                for i in items {
                    match i.as_object() {
                        Some(o) => most = most.max(rule(self, o)),
                        None => self.error(place, "`retry.automatic` rules are mappings"),
                    }
                }
                most
            }
            Some(_) => {
                self.error(
                    place,
                    "`retry.automatic` is true, a rule or a list of rules",
                );
                0
            }
        };
        if n > MAX_RETRIES {
            self.error(
                place,
                format!("`retry.automatic.limit` is at most {MAX_RETRIES}"),
            );
        }
        n.min(MAX_RETRIES) as u32
    }

    /// The file a `trigger: SLUG` runs, relative to the pipeline's
    /// directory.
    fn trigger_file(&mut self, place: &str, slug: &str) -> Option<String> {
        if let Err(e) = satchel_model::names::validate_key("pipeline", slug) {
            self.error(place, e);
            return None;
        }
        let candidates = [
            format!("{slug}.yml"),
            format!("{slug}.yaml"),
            format!("pipeline.{slug}.yml"),
            format!("pipeline.{slug}.yaml"),
            format!(".buildkite/{slug}.yml"),
            format!(".buildkite/pipeline.{slug}.yml"),
        ];
        let dir: &Path = &self.opts.source_dir;
        match candidates.iter().find(|c| dir.join(c).is_file()) {
            Some(c) => Some(c.clone()),
            None => {
                self.error(
                    place,
                    format!(
                        "trigger {slug:?}: no pipeline file for it beside this one (looked for {} in {})",
                        candidates.join(", "),
                        dir.display()
                    ),
                );
                None
            }
        }
    }

    /// The stages, with `depends_on` resolved: on a job of the same stage
    /// it orders the stage; on an earlier stage it holds already.
    fn finish(&mut self) -> Vec<Stage> {
        let building = std::mem::take(&mut self.stages);
        let mut out = Vec::new();
        for (i, b) in building.into_iter().enumerate() {
            if b.jobs.is_empty() {
                continue;
            }
            let mut jobs = Vec::new();
            for (mut job, deps, place) in b.jobs {
                for d in deps {
                    match self.keys.get(&d).cloned() {
                        Some((stage, keys)) if stage == i => job.depends_on.extend(keys),
                        Some((stage, _)) if stage < i => {}
                        Some(_) => self.error(
                            &place,
                            format!("depends_on {d:?}, a step after a later `wait`"),
                        ),
                        None => self.error(
                            &place,
                            format!("depends_on {d:?}, which is no step of this pipeline"),
                        ),
                    }
                }
                jobs.push(job);
            }
            match order_jobs("step", "depends_on", jobs) {
                Ok(jobs) => {
                    let n = out.len() + 1;
                    // A `wait` waits for every step before it, not only
                    // for those since the last `wait`.
                    let before: Vec<String> = out.iter().map(|s: &Stage| s.key.clone()).collect();
                    out.push(Stage {
                        key: format!("stage-{n}"),
                        depends_on: Some(before),
                        when: if b.always {
                            When::Always
                        } else {
                            When::OnSuccess
                        },
                        jobs,
                    });
                }
                Err(e) => self.error("steps", e),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr_in(dir: &Path, yaml: &str) -> anyhow::Result<Translated> {
        translate(
            &super::super::parse_tree(yaml).unwrap(),
            "bk",
            &LoadOptions {
                source_dir: dir.to_path_buf(),
                ..LoadOptions::default()
            },
        )
    }

    fn tr(yaml: &str) -> anyhow::Result<Translated> {
        tr_in(Path::new("/nonexistent"), yaml)
    }

    #[test]
    fn waits_make_stages_and_parallel_steps_make_jobs() {
        let p = tr(r#"
steps:
  - label: ":hammer: Build"
    key: build
    command: make
    artifact_paths: ["dist/*;logs/**"]
    parallelism: 2
  - command: echo lint $$HOME
    key: lint
    depends_on: test
  - key: test
    commands: [./t1, ./t2]
    retry: { automatic: true }
  - wait: ~
    continue_on_failure: true
  - command: ./report
"#)
        .unwrap()
        .pipeline;
        assert_eq!(p.stages.len(), 2);
        let keys: Vec<&str> = p.stages[0].jobs.iter().map(|j| j.key.as_str()).collect();
        assert_eq!(keys, ["build-0", "build-1", "test", "lint"]);
        assert_eq!(p.stages[0].jobs[3].depends_on, ["test"]);
        assert_eq!(p.stages[0].jobs[2].retries, 2);
        assert_eq!(p.stages[1].when, When::Always);
        let build = &p.stages[0].jobs[1];
        assert_eq!(build.env["BUILDKITE_PARALLEL_JOB"], "1");
        assert_eq!(build.env["BUILDKITE_PARALLEL_JOB_COUNT"], "2");
        assert_eq!(build.steps[0].key.as_deref(), Some("build"));
        assert_eq!(
            build.steps[1].when,
            When::Always,
            "artifacts upload after a failure too"
        );
        assert!(build.steps[1]
            .run
            .as_deref()
            .unwrap()
            .ends_with("SATCHEL_STEP='build' buildkite-agent artifact upload 'dist/*;logs/**'\n"));
        assert!(p.stages[0].jobs[3].steps[0]
            .run
            .as_deref()
            .unwrap()
            .ends_with("echo lint $HOME\n"));
        assert!(p.stages[0].jobs[2].steps[0]
            .run
            .as_deref()
            .unwrap()
            .ends_with("./t1\n./t2\n"));
    }

    /// A plain `wait` after a `continue_on_failure` one still needs every
    /// step before it to have passed; dotted labels become keys.
    #[test]
    fn a_wait_waits_for_everything_before_it() {
        let p = tr("steps:\n  - command: build\n  - wait: ~\n    continue_on_failure: true\n  - command: cleanup\n  - wait\n  - label: Node 18.x\n    command: deploy\n")
            .unwrap()
            .pipeline;
        assert_eq!(
            p.stages[2].depends_on.as_deref(),
            Some(&["stage-1".to_string(), "stage-2".to_string()][..])
        );
        assert_eq!(p.stages[2].jobs[0].key, "Node-18_x");
    }

    #[test]
    fn triggers_find_the_other_pipeline_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("deploy.yml"), "steps: []\n").unwrap();
        let p = tr_in(
            d.path(),
            "steps:\n  - trigger: deploy\n    label: Ship it\n",
        )
        .unwrap()
        .pipeline;
        let s = &p.stages[0].jobs[0].steps[0];
        assert_eq!(
            (s.trigger.as_deref(), s.pipeline.as_deref()),
            (Some("deploy.yml"), Some("deploy"))
        );
        let e = tr_in(d.path(), "steps:\n  - trigger: nope\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no pipeline file for it"), "{e}");
    }

    #[test]
    fn what_cannot_run_is_named_before_anything_runs() {
        let e = tr("steps:\n  - command: x\n    plugins: [docker#v5: {image: x}]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("steps[0]: `plugins` is not supported yet"),
            "{e}"
        );
        let e = tr("steps:\n  - block: Release?\n").unwrap_err().to_string();
        assert!(e.contains("waits for a person"), "{e}");
        let e = tr("steps:\n  - command: x\n    key: a\n    depends_on: b\n  - command: y\n    key: b\n    depends_on: a\n").unwrap_err().to_string();
        assert!(e.contains("a cycle in depends_on"), "{e}");
        let e = tr("steps:\n  - command: x\n    depends_on: ghost\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("which is no step"), "{e}");
        let e = tr("steps:\n  - command: x\n    retry: { automatic: { exit_status: 2 } }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit statuses"), "{e}");
    }
}
