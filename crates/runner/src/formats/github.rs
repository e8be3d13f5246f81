//! GitHub Actions workflows, run as written (`satchel run
//! .github/workflows/ci.yml`).
//!
//! What runs (`docs/pipelines.md`, "GitHub Actions workflows"):
//! - `jobs` with `needs` (each job after those it needs; a cycle or an
//!   unknown job is an error), `if: success() | always() | failure() |
//!   !cancelled()` on jobs and steps, `env` (workflow, job, step),
//!   `defaults.run` (`shell`, `working-directory`), and
//!   `strategy.matrix` with `include` / `exclude`: each leg is a job of its
//!   own, `build-linux-20`, and a job that needs `build` waits for every
//!   leg.
//! - Steps `run` (bash with `-e`, as the runner's default shell; `shell:
//!   bash` adds `-o pipefail`; `shell: sh`), `uses: actions/checkout`
//!   (every job starts with a checkout anyway), and
//!   `actions/upload-artifact` / `actions/download-artifact` v4 and later,
//!   run natively against the Satchel server with their inputs' rules
//!   (`path` lines with `!` exclusions relative to their common directory,
//!   `if-no-files-found`, `retention-days`, `include-hidden-files`,
//!   `overwrite` as an atomic replace; `name`,
//!   `pattern`, `merge-multiple`, `path`); `actions/upload-artifact/merge`
//!   v4 and later as `satchel artifact merge`, by reference (no content
//!   moves).
//! - `${{ … }}` with `matrix.*`, `env.*`, `github.*` (run number and id,
//!   sha, ref, workspace, job, workflow), `runner.*`, `secrets.*` (from
//!   the environment of `satchel run`) and literals, substituted as text
//!   the way GitHub does; values known only when the job runs become the
//!   environment variables the runner sets (`$GITHUB_RUN_NUMBER`).
//! - Anything else (another action, reusable workflows, containers,
//!   services, other expressions) is refused before anything runs, or with
//!   `--skip-unsupported` reported as skipped with its inputs.

use std::collections::BTreeMap;

use anyhow::bail;
use satchel_model::expr::escape;
use serde_json::{Map, Value};

use super::expanded::{Expanded, Piece};
use super::{check_keys, names, order, scalar, script_title, shell_quote, LoadOptions, Translated};
use crate::pipeline::{Job, Pipeline, Shell, Stage, Step, When};

/// Steps this translator runs, as error messages list them.
const SUPPORTED_STEPS: &str = "run, uses: actions/checkout, actions/upload-artifact@v4 (or later), actions/upload-artifact/merge@v4 (or later), actions/download-artifact@v4 (or later)";

/// The stage every job of a workflow goes in (jobs order themselves by
/// `needs`).
const STAGE: &str = "workflow";

/// The most legs one matrix may have (GitHub's limit).
const MAX_LEGS: usize = 256;

/// The environment every translated script sets first: the variables a
/// GitHub runner exports, from the Satchel runner's own.
const PREAMBLE: &str = r#"export GITHUB_ACTIONS=true CI=true RUNNER_OS=Linux RUNNER_ARCH=X64
export GITHUB_WORKSPACE="$PWD" RUNNER_TEMP="$SATCHEL_WORKSPACE/_temp"
export GITHUB_RUN_NUMBER="$SATCHEL_RUN" GITHUB_RUN_ID="$SATCHEL_RUN" GITHUB_RUN_ATTEMPT="$SATCHEL_ATTEMPT"
export GITHUB_SHA="${SATCHEL_COMMIT:-}" GITHUB_REF_NAME="${SATCHEL_BRANCH:-}" GITHUB_REF="refs/heads/${SATCHEL_BRANCH:-}" GITHUB_REF_TYPE=branch
export GITHUB_OUTPUT="$SATCHEL_OUTPUT" GITHUB_ENV="$SATCHEL_ENV" GITHUB_PATH="$SATCHEL_PATH" GITHUB_STEP_SUMMARY="$SATCHEL_WORKSPACE/_temp/step-summary.md"
mkdir -p "$RUNNER_TEMP"
"#;

/// Top-level keys that do not change what runs locally.
const IGNORED_TOP: &[&str] = &[
    "name",
    "run-name",
    "on",
    "true",
    "permissions",
    "concurrency",
];

/// Job keys that do not change what runs locally.
const IGNORED_JOB: &[&str] = &[
    "name",
    "runs-on",
    "timeout-minutes",
    "permissions",
    "concurrency",
    "environment",
];

/// Translates a GitHub Actions workflow (parsed into `doc`) with pipeline
/// key `key`.
pub fn translate(doc: &Value, key: &str, opts: &LoadOptions) -> anyhow::Result<Translated> {
    let Some(top) = doc.as_object() else {
        bail!("a GitHub Actions workflow is a mapping of keys (on, jobs, env, …)");
    };
    let mut tr = Tr {
        opts,
        errors: Vec::new(),
        skipped: Vec::new(),
        workflow: top
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(key)
            .to_string(),
    };
    let pipeline = tr.pipeline(top, key);
    Translated::finish(
        "this GitHub Actions workflow",
        pipeline,
        tr.errors,
        tr.skipped,
    )
}

struct Tr<'a> {
    opts: &'a LoadOptions,
    errors: Vec<String>,
    skipped: Vec<String>,
    /// The workflow's `name` (`GITHUB_WORKFLOW`), else the pipeline key.
    workflow: String,
}

/// What `${{ … }}` can see where it stands.
#[derive(Debug, Clone, Default)]
struct Ctx {
    /// The job's id (not its leg's key).
    job: String,
    /// This leg's matrix values.
    matrix: BTreeMap<String, Value>,
    /// `env` of the workflow, job and step so far.
    env: BTreeMap<String, Expanded>,
    /// The jobs this job needs (whose outputs it may read).
    needs: Vec<String>,
}

/// The defaults of `run` steps (`defaults.run`).
#[derive(Debug, Clone, Default)]
struct RunDefaults {
    shell: Option<String>,
    dir: Option<String>,
}

/// A job's condition as a `when`, or why it cannot be one.
fn condition(text: &str) -> Result<When, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("${{")
        .and_then(|x| x.strip_suffix("}}"))
        .unwrap_or(t)
        .trim();
    Ok(match t.replace(' ', "").as_str() {
        "success()" => When::OnSuccess,
        "always()" | "!cancelled()" => When::Always,
        "failure()" => When::OnFailure,
        _ => {
            return Err(format!(
                "`if: {text}` is not supported (supported: success(), always(), failure(), !cancelled())"
            ))
        }
    })
}

/// A matrix value as text, as GitHub writes it into a string.
fn text_of(v: &Value) -> String {
    scalar(v).unwrap_or_else(|| v.to_string())
}

/// `s` with every character a key may not hold replaced by `_`.
fn key_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether `name` can be an environment variable's.
fn env_name_ok(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The major version of `uses: owner/name@vN…`, if it names one.
fn major(version: &str) -> Option<u32> {
    let v = version.strip_prefix('v').unwrap_or(version);
    v.split('.').next()?.parse().ok()
}

/// The legs of a `strategy.matrix`: base keys' product, less `exclude`,
/// with `include` added as GitHub does (an entry extends every leg whose
/// base values it agrees with, else becomes a leg of its own).
fn legs(matrix: &Map<String, Value>) -> Result<Vec<BTreeMap<String, Value>>, String> {
    let mut base: Vec<(&String, &Vec<Value>)> = Vec::new();
    for (k, v) in matrix {
        if k == "include" || k == "exclude" {
            continue;
        }
        match v.as_array() {
            Some(values) => base.push((k, values)),
            None => return Err(format!("`matrix.{k}` is a list of values")),
        }
    }
    let mut out: Vec<BTreeMap<String, Value>> = Vec::new();
    if !base.is_empty() {
        out.push(BTreeMap::new());
        for (k, values) in &base {
            let mut next = Vec::new();
            for leg in &out {
                for v in values.iter() {
                    let mut l = leg.clone();
                    l.insert((*k).clone(), v.clone());
                    next.push(l);
                }
            }
            out = next;
            if out.len() > MAX_LEGS * 4 {
                return Err(format!("the matrix has more than {MAX_LEGS} legs"));
            }
        }
    }
    let entries = |key: &str| -> Result<Vec<Map<String, Value>>, String> {
        match matrix.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_object()
                        .cloned()
                        .ok_or_else(|| format!("`matrix.{key}` is a list of mappings"))
                })
                .collect(),
            Some(_) => Err(format!("`matrix.{key}` is a list of mappings")),
        }
    };
    for ex in entries("exclude")? {
        out.retain(|leg| !ex.iter().all(|(k, v)| leg.get(k) == Some(v)));
    }
    let is_base = |k: &str| base.iter().any(|(b, _)| b.as_str() == k);
    let originals = out.len();
    for inc in entries("include")? {
        let mut used = false;
        for leg in out.iter_mut().take(originals) {
            let agrees = inc
                .iter()
                .filter(|(k, _)| is_base(k))
                .all(|(k, v)| leg.get(k) == Some(v));
            if agrees {
                for (k, v) in &inc {
                    leg.insert(k.clone(), v.clone());
                }
                used = true;
            }
        }
        if !used {
            out.push(inc.into_iter().collect());
        }
    }
    if out.is_empty() {
        return Err("the matrix has no legs (every combination is excluded)".into());
    }
    if out.len() > MAX_LEGS {
        return Err(format!(
            "the matrix has {} legs; GitHub allows at most {MAX_LEGS}",
            out.len()
        ));
    }
    Ok(out)
}

impl Tr<'_> {
    fn error(&mut self, place: &str, what: impl std::fmt::Display) {
        self.errors.push(format!("{place}: {what}"));
    }

    fn check_keys(
        &mut self,
        place: &str,
        map: &Map<String, Value>,
        known: &[&str],
        ignored: &[&str],
    ) {
        check_keys(&mut self.errors, place, map, (known, ignored));
    }

    fn pipeline(&mut self, top: &Map<String, Value>, key: &str) -> Pipeline {
        self.check_keys(
            "the workflow",
            top,
            &["jobs", "env", "defaults"],
            IGNORED_TOP,
        );
        let mut ctx = Ctx::default();
        self.env_into(&mut ctx, "env", top.get("env"));
        let defaults = self.defaults("defaults", top.get("defaults"), &RunDefaults::default());
        let Some(jobs) = top.get("jobs").and_then(Value::as_object) else {
            self.error("the workflow", "`jobs` is a mapping of job ids to jobs");
            return empty(key);
        };
        let mut deps = Vec::new();
        for (id, job) in jobs {
            let needs = job.get("needs").map_or(Some(Vec::new()), names);
            match needs {
                Some(n) => deps.push((id.clone(), n)),
                None => {
                    self.error(&format!("jobs.{id}.needs"), "a job id or a list of them");
                    deps.push((id.clone(), Vec::new()));
                }
            }
        }
        let ordered = match order("job", "needs", &deps) {
            Ok(o) => o,
            Err(e) => {
                self.error("jobs", e);
                return empty(key);
            }
        };
        // Each job id's legs' keys, for the jobs that need it.
        let mut leg_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut out = Vec::new();
        for i in ordered {
            let (id, needs) = &deps[i];
            let place = format!("jobs.{id}");
            let Some(job) = jobs[id].as_object() else {
                self.error(&place, "a job is a mapping");
                continue;
            };
            let depends_on: Vec<String> = needs
                .iter()
                .flat_map(|n| leg_keys.get(n).cloned().unwrap_or_default())
                .collect();
            let jobs_of = self.job(&place, id, job, &ctx, &defaults, depends_on);
            leg_keys.insert(id.clone(), jobs_of.iter().map(|j| j.key.clone()).collect());
            out.extend(jobs_of);
        }
        // The workflow's `env` is exported by each script (see `script`),
        // after the runner's variables its values may use.
        Pipeline {
            name: key.to_string(),
            env: BTreeMap::new(),
            sources: BTreeMap::new(),
            stages: vec![Stage {
                key: STAGE.into(),
                depends_on: None,
                when: When::OnSuccess,
                jobs: out,
            }],
        }
    }

    /// `defaults.run` over `outer`.
    fn defaults(&mut self, place: &str, v: Option<&Value>, outer: &RunDefaults) -> RunDefaults {
        let mut d = outer.clone();
        let Some(v) = v else { return d };
        let Some(run) = v.get("run").and_then(Value::as_object) else {
            self.error(place, "`defaults` holds `run: {shell, working-directory}`");
            return d;
        };
        self.check_keys(
            &format!("{place}.run"),
            run,
            &["shell", "working-directory"],
            &[],
        );
        if let Some(s) = run.get("shell").and_then(scalar) {
            d.shell = Some(s);
        }
        if let Some(s) = run.get("working-directory").and_then(scalar) {
            d.dir = Some(s);
        }
        d
    }

    /// A job's `outputs:` as templates the runner expands when the job
    /// ends (`${SATCHEL_STEP_<step>__<name>}` for a step's output).
    fn outputs(&mut self, place: &str, v: Option<&Value>, ctx: &Ctx) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(v) = v else { return out };
        let Some(map) = v.as_object() else {
            self.error(place, "`outputs` is a mapping of names to values");
            return out;
        };
        for (k, v) in map {
            match self.expand(&text_of(v), ctx) {
                Ok(x) => {
                    let mut template = String::new();
                    for p in &x.0 {
                        match p {
                            Piece::Text(t) => template.push_str(t),
                            Piece::Runtime { env, written, .. } => {
                                // When the job ends only the runner's own
                                // variables are known, not the ones a
                                // script's preamble exports.
                                let var = match env.as_str() {
                                    "GITHUB_RUN_NUMBER" | "GITHUB_RUN_ID" => "SATCHEL_RUN",
                                    "GITHUB_RUN_ATTEMPT" => "SATCHEL_ATTEMPT",
                                    "GITHUB_SHA" => "SATCHEL_COMMIT",
                                    "GITHUB_REF_NAME" => "SATCHEL_BRANCH",
                                    e if e.starts_with("GITHUB_") || e.starts_with("RUNNER_") => {
                                        self.error(
                                            &format!("{place}.{k}"),
                                            format!("{written} is not known when a job's outputs are set"),
                                        );
                                        continue;
                                    }
                                    other => other,
                                };
                                template.push_str(&format!("${{{var}}}"));
                            }
                        }
                    }
                    out.insert(k.clone(), template);
                }
                Err(e) => self.error(place, e),
            }
        }
        out
    }

    /// Adds an `env:` mapping to `ctx` (its values substituted first).
    fn env_into(&mut self, ctx: &mut Ctx, place: &str, v: Option<&Value>) {
        let Some(v) = v else { return };
        let Some(map) = v.as_object() else {
            self.error(place, "`env` is a mapping");
            return;
        };
        for (k, v) in map {
            if !env_name_ok(k) {
                self.error(
                    place,
                    format!("{k:?} is not an environment variable name (letters, digits and _, not starting with a digit)"),
                );
                continue;
            }
            match self.expand(&text_of(v), ctx) {
                Ok(x) => {
                    ctx.env.insert(k.clone(), x);
                }
                Err(e) => self.error(place, e),
            }
        }
    }

    /// A job, one per matrix leg.
    fn job(
        &mut self,
        place: &str,
        id: &str,
        job: &Map<String, Value>,
        outer: &Ctx,
        defaults: &RunDefaults,
        depends_on: Vec<String>,
    ) -> Vec<Job> {
        self.check_keys(
            place,
            job,
            &[
                "needs", "if", "env", "steps", "strategy", "defaults", "outputs",
            ],
            IGNORED_JOB,
        );
        for k in ["uses", "container", "services", "continue-on-error"] {
            if job.contains_key(k) && !(k == "continue-on-error" && job[k] == Value::Bool(false)) {
                self.error(place, format!("`{k}` is not supported yet"));
            }
        }
        let when = match job.get("if").map(text_of) {
            None => When::OnSuccess,
            Some(c) => condition(&c).unwrap_or_else(|e| {
                self.error(place, e);
                When::OnSuccess
            }),
        };
        let defaults = self.defaults(&format!("{place}.defaults"), job.get("defaults"), defaults);
        let matrix = match job.get("strategy") {
            None => None,
            Some(s) => {
                let Some(s) = s.as_object() else {
                    self.error(place, "`strategy` is a mapping");
                    return Vec::new();
                };
                self.check_keys(
                    &format!("{place}.strategy"),
                    s,
                    &["matrix"],
                    &["fail-fast", "max-parallel"],
                );
                match s.get("matrix").map(|m| m.as_object()) {
                    None => None,
                    Some(Some(m)) => match legs(m) {
                        Ok(l) => Some(l),
                        Err(e) => {
                            self.error(&format!("{place}.strategy"), e);
                            return Vec::new();
                        }
                    },
                    Some(None) => {
                        self.error(
                            &format!("{place}.strategy.matrix"),
                            "a matrix written as an expression is not supported; write its lists",
                        );
                        return Vec::new();
                    }
                }
            }
        };
        let Some(steps) = job.get("steps").and_then(Value::as_array) else {
            self.error(
                place,
                "`steps` is a list (reusable workflows are not supported)",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut taken = std::collections::HashSet::new();
        let legs = matrix.unwrap_or_else(|| vec![BTreeMap::new()]);
        let several = legs.len() > 1 || !legs[0].is_empty();
        for (n, leg) in legs.into_iter().enumerate() {
            let mut key = if several {
                let parts: Vec<String> = leg.values().map(|v| key_part(&text_of(v))).collect();
                format!("{id}-{}", parts.join("-"))
            } else {
                id.to_string()
            };
            if key.len() > 100 {
                key = format!("{id}-{}", n + 1);
            }
            let key = super::unique_key(key, &mut taken);
            let mut ctx = Ctx {
                job: id.to_string(),
                matrix: leg,
                env: outer.env.clone(),
                needs: job.get("needs").and_then(names).unwrap_or_default(),
            };
            self.env_into(&mut ctx, &format!("{place}.env"), job.get("env"));
            let mut env = BTreeMap::new();
            env.insert("GITHUB_JOB".to_string(), id.to_string());
            env.insert("GITHUB_WORKFLOW".to_string(), self.workflow.clone());
            let mut translated = Vec::new();
            for (i, s) in steps.iter().enumerate() {
                let at = format!("{place}.steps[{i}]");
                if let Some(step) = self.step(&at, s, &ctx, &defaults) {
                    translated.push(step);
                }
            }
            if translated.is_empty() {
                translated.push(Step {
                    run: Some("true".into()),
                    ..Step::default()
                });
            }
            let outputs = self.outputs(&format!("{place}.outputs"), job.get("outputs"), &ctx);
            out.push(Job {
                key,
                depends_on: depends_on.clone(),
                when,
                env: env.clone(),
                checkout: true,
                retries: 0,
                outputs,
                // Every leg publishes as the matrix job: `needs.<id>`
                // reads the last leg to end, as on GitHub.
                outputs_as: several.then(|| id.to_string()),
                steps: translated,
            });
        }
        out
    }

    fn step(&mut self, place: &str, s: &Value, job: &Ctx, defaults: &RunDefaults) -> Option<Step> {
        let Some(m) = s.as_object() else {
            self.error(place, "a step is a mapping with `run` or `uses`");
            return None;
        };
        let mut ctx = job.clone();
        self.env_into(&mut ctx, &format!("{place}.env"), m.get("env"));
        let when = match m.get("if").map(text_of) {
            None => When::OnSuccess,
            Some(c) => match condition(&c) {
                Ok(w) => w,
                Err(e) => {
                    self.error(place, e);
                    return None;
                }
            },
        };
        let allow_failure = match m.get("continue-on-error") {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(v) => {
                self.error(
                    place,
                    format!(
                        "`continue-on-error: {}` is not supported (true or false)",
                        text_of(v)
                    ),
                );
                false
            }
        };
        let common = [
            "name",
            "id",
            "if",
            "env",
            "continue-on-error",
            "timeout-minutes",
        ];
        let key = m
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| satchel_model::names::validate_key("step", id).is_ok())
            .map(String::from);
        let title = m.get("name").and_then(scalar);
        let (body, what) = if let Some(run) = m.get("run") {
            let mut known = common.to_vec();
            known.extend(["run", "shell", "working-directory"]);
            self.check_keys(place, m, &known, &[]);
            let text = text_of(run);
            let shell = m.get("shell").and_then(scalar).or(defaults.shell.clone());
            let dir = m
                .get("working-directory")
                .and_then(scalar)
                .or(defaults.dir.clone());
            let body = match self.expand(&text, &ctx) {
                Ok(x) => x.script(),
                Err(e) => {
                    self.error(place, e);
                    return None;
                }
            };
            let (shell, set) = match shell.as_deref() {
                None => (Shell::Bash, "set -e\n"),
                Some("bash") => (Shell::Bash, "set -eo pipefail\n"),
                Some("sh") => (Shell::Sh, "set -e\n"),
                Some(other) => {
                    self.error(
                        place,
                        format!("`shell: {other}` is not supported (supported: bash, sh)"),
                    );
                    return None;
                }
            };
            let dir = match dir.map(|d| self.expand(&d, &ctx)).transpose() {
                Ok(d) => d,
                Err(e) => {
                    self.error(place, e);
                    return None;
                }
            };

            (
                (shell, self.script(&ctx, dir.as_ref(), set, &body)),
                title.clone().unwrap_or_else(|| script_title(&text)),
            )
        } else if let Some(uses) = m.get("uses").and_then(Value::as_str) {
            let mut known = common.to_vec();
            known.extend(["uses", "with"]);
            self.check_keys(place, m, &known, &[]);
            let with = match m.get("with").map(Value::as_object) {
                None => Map::new(),
                Some(Some(w)) => w.clone(),
                Some(None) => {
                    self.error(place, "`with` is a mapping");
                    return None;
                }
            };
            let (action, version) = uses.split_once('@').unwrap_or((uses, ""));
            let v4 = major(version).is_some_and(|v| v >= 4);
            let words = match action {
                "actions/checkout" => {
                    self.check_keys(
                        &format!("{place}.with"),
                        &with,
                        &[],
                        &[
                            "fetch-depth",
                            "clean",
                            "lfs",
                            "submodules",
                            "persist-credentials",
                            "fetch-tags",
                            "show-progress",
                        ],
                    );
                    // Every job starts with the checkout.
                    return None;
                }
                "actions/upload-artifact" if v4 => self.upload(place, &with, &ctx)?,
                "actions/download-artifact" if v4 => self.download(place, &with, &ctx)?,
                "actions/upload-artifact/merge" if v4 => self.merge(place, &with, &ctx)?,
                _ => return self.unsupported(place, &format!("uses: {uses}"), &with, &ctx),
            };
            let body = format!("{}\n", words.join(" "));
            (
                (Shell::Bash, self.script(&ctx, None, "set -e\n", &body)),
                title.clone().unwrap_or_else(|| format!("uses: {uses}")),
            )
        } else {
            self.error(place, "a step has `run` or `uses`");
            return None;
        };
        let ((shell, script), title) = (body, what);
        Some(Step {
            key,
            title: Some(title),
            run: Some(escape(&script)),
            shell: Some(shell),
            when,
            allow_failure,
            ..Step::default()
        })
    }

    /// A step's whole script: the preamble, the environment known only
    /// when the job runs, the working directory, then `body`.
    fn script(&self, ctx: &Ctx, dir: Option<&Expanded>, set: &str, body: &str) -> String {
        let mut script = String::from(PREAMBLE);
        for (k, v) in &ctx.env {
            script.push_str(&format!("export {k}={}\n", v.word()));
        }
        if let Some(d) = dir {
            script.push_str(&format!("cd -- {} || exit 1\n", d.word()));
        }
        script.push_str(set);
        script.push_str(body);
        script
    }

    /// An input of `with`, substituted; `None` if absent.
    fn input(
        &mut self,
        place: &str,
        with: &Map<String, Value>,
        name: &str,
        ctx: &Ctx,
    ) -> Option<Option<Expanded>> {
        let Some(v) = with.get(name) else {
            return Some(None);
        };
        match self.expand(&text_of(v), ctx) {
            Ok(x) => Some(Some(x)),
            Err(e) => {
                self.error(&format!("{place}.with.{name}"), e);
                None
            }
        }
    }

    /// `actions/upload-artifact` as an `artifact upload` command.
    fn upload(&mut self, place: &str, with: &Map<String, Value>, ctx: &Ctx) -> Option<Vec<String>> {
        self.check_keys(
            &format!("{place}.with"),
            with,
            &[
                "name",
                "path",
                "if-no-files-found",
                "retention-days",
                "include-hidden-files",
                "overwrite",
                "compression-level",
            ],
            &[],
        );
        let flag = |v: Option<&Value>| v.map(text_of).is_some_and(|t| t.trim() == "true");
        let name = self
            .input(place, with, "name", ctx)?
            .unwrap_or_else(|| Expanded(vec![Piece::Text("artifact".into())]));
        let Some(path) = self.input(place, with, "path", ctx)? else {
            self.error(place, "upload-artifact needs `path`");
            return None;
        };
        let mode = with
            .get("if-no-files-found")
            .map(text_of)
            .unwrap_or_else(|| "warn".into());
        if !["warn", "error", "ignore"].contains(&mode.as_str()) {
            self.error(
                &format!("{place}.with.if-no-files-found"),
                format!("{mode:?} is not one of warn, error, ignore"),
            );
            return None;
        }
        let mut words: Vec<String> = [
            "satchel",
            "artifact",
            "upload",
            "--quiet",
            "--exclusive",
            "--common-root",
            "--delimiter",
            "",
            "--if-no-files-found",
        ]
        .iter()
        .map(|w| shell_quote(w))
        .collect();
        words.push(shell_quote(&mode));
        words.push("--name".into());
        words.push(name.word());
        // Swapped in whole once uploaded: readers never see the name gone.
        if flag(with.get("overwrite")) {
            words.push("--replace".into());
        }
        if !flag(with.get("include-hidden-files")) {
            words.push("--skip-hidden".into());
        }
        words.extend(self.retention(place, with)?);
        words.push("--".into());
        // One path per line, as the action reads them.
        let lines = split_lines(&path);
        if lines.is_empty() {
            self.error(place, "upload-artifact's `path` names no file");
            return None;
        }
        words.extend(lines.iter().map(Expanded::word));
        Some(words)
    }

    /// The `retention-days` input as `--expire-in` words (none when absent).
    fn retention(&mut self, place: &str, with: &Map<String, Value>) -> Option<Vec<String>> {
        let Some(days) = with.get("retention-days").map(text_of) else {
            return Some(Vec::new());
        };
        match days.trim().parse::<u32>() {
            Ok(d) if d >= 1 => Some(vec!["--expire-in".into(), format!("{d}d")]),
            _ => {
                self.error(
                    &format!("{place}.with.retention-days"),
                    format!("{days:?} is not a number of days (1 or more)"),
                );
                None
            }
        }
    }

    /// `actions/upload-artifact/merge` as an `artifact merge` command.
    fn merge(&mut self, place: &str, with: &Map<String, Value>, ctx: &Ctx) -> Option<Vec<String>> {
        self.check_keys(
            &format!("{place}.with"),
            with,
            &[
                "name",
                "pattern",
                "separate-directories",
                "delete-merged",
                "retention-days",
                "include-hidden-files",
                "compression-level",
            ],
            &[],
        );
        let flag = |v: Option<&Value>| v.map(text_of).is_some_and(|t| t.trim() == "true");
        let mut words: Vec<String> = ["satchel", "artifact", "merge"]
            .iter()
            .map(|w| shell_quote(w))
            .collect();
        for (input, option) in [("name", "--name"), ("pattern", "--pattern")] {
            if let Some(v) = self.input(place, with, input, ctx)? {
                words.push(option.into());
                words.push(v.word());
            }
        }
        for (input, option) in [
            ("separate-directories", "--separate-directories"),
            ("delete-merged", "--delete-merged"),
            ("include-hidden-files", "--include-hidden"),
        ] {
            if flag(with.get(input)) {
                words.push(option.into());
            }
        }
        words.extend(self.retention(place, with)?);
        Some(words)
    }

    /// `actions/download-artifact` as an `artifact download-artifact`
    /// command.
    fn download(
        &mut self,
        place: &str,
        with: &Map<String, Value>,
        ctx: &Ctx,
    ) -> Option<Vec<String>> {
        self.check_keys(
            &format!("{place}.with"),
            with,
            &["name", "path", "pattern", "merge-multiple"],
            &[],
        );
        for k in ["run-id", "github-token", "repository", "artifact-ids"] {
            if with.contains_key(k) {
                self.error(
                    &format!("{place}.with"),
                    format!("`{k}` (artifacts of another workflow run) is not supported yet"),
                );
                return None;
            }
        }
        let mut words: Vec<String> = ["satchel", "artifact", "download-artifact", "--quiet"]
            .iter()
            .map(|w| shell_quote(w))
            .collect();
        let merge = with
            .get("merge-multiple")
            .map(text_of)
            .is_some_and(|t| t.trim() == "true");
        match self.input(place, with, "name", ctx)? {
            // One artifact lands straight in `path`.
            Some(name) => {
                words.push("--merge".into());
                words.push(name.word());
            }
            None => {
                match self.input(place, with, "pattern", ctx)? {
                    Some(p) => {
                        words.push("--name-pattern".into());
                        words.push(p.word());
                    }
                    None => words.push("--all".into()),
                }
                if merge {
                    words.push("--merge".into());
                }
            }
        }
        let dest = self
            .input(place, with, "path", ctx)?
            .unwrap_or_else(|| Expanded(vec![Piece::Text(".".into())]));
        words.push("--dest".into());
        words.push(dest.word());
        Some(words)
    }

    /// A step the runner cannot execute: an error, or with
    /// `--skip-unsupported` a step printing its inputs.
    fn unsupported(
        &mut self,
        place: &str,
        what: &str,
        with: &Map<String, Value>,
        ctx: &Ctx,
    ) -> Option<Step> {
        if !self.opts.skip_unsupported {
            self.error(
                place,
                format!("{what} cannot run locally (supported steps: {SUPPORTED_STEPS}; pass --skip-unsupported to report it and go on)"),
            );
            return None;
        }
        let mut words = vec![shell_quote(&format!("skipped {what} (not run locally)"))];
        for (k, v) in with {
            match self.expand(&text_of(v), ctx) {
                Ok(x) => words.push(format!("{}{}", shell_quote(&format!("  {k}=")), x.word())),
                Err(e) => self.error(place, e),
            }
        }
        self.skipped.push(format!("{place}: {what}"));
        let body = format!("printf '%s\\n' {}\n", words.join(" "));
        Some(Step {
            run: Some(escape(&self.script(ctx, None, "", &body))),
            shell: Some(Shell::Bash),
            title: Some(format!("report {what}")),
            ..Step::default()
        })
    }

    /// Substitutes `${{ … }}` in `text`.
    fn expand(&self, text: &str, ctx: &Ctx) -> Result<Expanded, String> {
        let mut out = Expanded::default();
        let mut rest = text;
        while let Some(at) = rest.find("${{") {
            out.push_text(&rest[..at]);
            let after = &rest[at + 3..];
            let Some(end) = after.find("}}") else {
                return Err(format!("an expression is not closed with }}}}: {text:?}"));
            };
            let expr = after[..end].trim();
            self.value(expr, ctx, &mut out)?;
            rest = &after[end + 2..];
        }
        out.push_text(rest);
        Ok(out)
    }

    /// Appends the value of expression `expr` to `out`.
    fn value(&self, expr: &str, ctx: &Ctx, out: &mut Expanded) -> Result<(), String> {
        let runtime = |env: &str| Piece::Runtime {
            env: env.to_string(),
            path: None,
            written: format!("${{{{ {expr} }}}}"),
        };
        if let Some(s) = expr.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            out.push_text(&s.replace("''", "'"));
            return Ok(());
        }
        if expr == "true" || expr == "false" || expr.parse::<f64>().is_ok() {
            out.push_text(expr);
            return Ok(());
        }
        let parts: Vec<&str> = expr.split('.').collect();
        match parts.as_slice() {
            ["matrix", k] => match ctx.matrix.get(*k) {
                Some(v) => out.push_text(&text_of(v)),
                None => {
                    return Err(format!(
                        "${{{{ {expr} }}}}: the matrix has no {k:?}{}",
                        if ctx.matrix.is_empty() {
                            " (this job has no matrix)".to_string()
                        } else {
                            format!(
                                " (it has {})",
                                ctx.matrix.keys().cloned().collect::<Vec<_>>().join(", ")
                            )
                        }
                    ))
                }
            },
            ["env", k] if env_name_ok(k) => match ctx.env.get(*k) {
                Some(v) => {
                    for p in &v.0 {
                        match p {
                            Piece::Text(t) => out.push_text(t),
                            other => out.0.push(other.clone()),
                        }
                    }
                }
                // Set by an earlier step or the runner's environment.
                None => out.0.push(runtime(k)),
            },
            ["github", field] => match *field {
                "job" => out.push_text(&ctx.job),
                "workflow" => out.push_text(&self.workflow),
                "run_number" => out.0.push(runtime("GITHUB_RUN_NUMBER")),
                "run_id" => out.0.push(runtime("GITHUB_RUN_ID")),
                "run_attempt" => out.0.push(runtime("GITHUB_RUN_ATTEMPT")),
                "sha" => out.0.push(runtime("GITHUB_SHA")),
                "ref" => out.0.push(runtime("GITHUB_REF")),
                "ref_name" => out.0.push(runtime("GITHUB_REF_NAME")),
                "workspace" => out.0.push(runtime("GITHUB_WORKSPACE")),
                _ => {
                    return Err(format!(
                        "${{{{ {expr} }}}} is not supported (github.* supported: job, workflow, run_number, run_id, run_attempt, sha, ref, ref_name, workspace)"
                    ))
                }
            },
            ["steps", s, "outputs", n] => {
                out.0.push(runtime(&crate::outputs::step_var(s, n)));
            }
            ["needs", j, "outputs", n] => {
                if !ctx.needs.iter().any(|x| x == j) {
                    return Err(format!(
                        "${{{{ {expr} }}}}: {j:?} is not one of this job's needs ({})",
                        if ctx.needs.is_empty() {
                            "it needs none".to_string()
                        } else {
                            ctx.needs.join(", ")
                        }
                    ));
                }
                out.0.push(runtime(&crate::outputs::job_var(j, n)));
            }
            ["runner", "os"] => out.push_text("Linux"),
            ["runner", "arch"] => out.push_text("X64"),
            ["runner", "temp"] => out.0.push(runtime("RUNNER_TEMP")),
            ["secrets", k] if env_name_ok(k) => out.0.push(runtime(k)),
            _ => {
                return Err(format!(
                    "${{{{ {expr} }}}} is not supported (supported: matrix.*, env.*, github.*, runner.os/arch/temp, secrets.*, steps.*.outputs.*, needs.*.outputs.*, and literals)"
                ))
            }
        }
        Ok(())
    }
}

/// The non-empty lines of `x`, each trimmed (GitHub's multi-line inputs).
fn split_lines(x: &Expanded) -> Vec<Expanded> {
    let mut lines = vec![Expanded::default()];
    for p in &x.0 {
        match p {
            Piece::Text(t) => {
                let mut first = true;
                for part in t.split('\n') {
                    if !first {
                        lines.push(Expanded::default());
                    }
                    first = false;
                    lines.last_mut().expect("one line at least").push_text(part);
                }
            }
            other => lines
                .last_mut()
                .expect("one line at least")
                .0
                .push(other.clone()),
        }
    }
    lines
        .into_iter()
        .map(|mut l| {
            if let Some(Piece::Text(t)) = l.0.first_mut() {
                *t = t.trim_start().to_string();
            }
            if let Some(Piece::Text(t)) = l.0.last_mut() {
                *t = t.trim_end().to_string();
            }
            l.0.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
            l
        })
        .filter(|l| !l.0.is_empty())
        .collect()
}

fn empty(key: &str) -> Pipeline {
    Pipeline {
        name: key.to_string(),
        env: BTreeMap::new(),
        sources: BTreeMap::new(),
        stages: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(yaml: &str) -> anyhow::Result<Translated> {
        translate(
            &super::super::parse_tree(yaml).unwrap(),
            "ci",
            &LoadOptions::default(),
        )
    }

    fn err(yaml: &str) -> String {
        match tr(yaml) {
            Ok(_) => panic!("translated:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_matrix_is_a_job_per_leg_with_include_and_exclude() {
        let m: Map<String, Value> = serde_json::from_str(
            r#"{"os": ["linux", "mac"], "v": [1, 2],
                "exclude": [{"os": "mac", "v": 1}],
                "include": [{"os": "linux", "extra": "x"}, {"os": "win", "v": 3}]}"#,
        )
        .unwrap();
        let got: Vec<String> = legs(&m)
            .unwrap()
            .iter()
            .map(|l| serde_json::to_string(l).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                r#"{"extra":"x","os":"linux","v":1}"#,
                r#"{"extra":"x","os":"linux","v":2}"#,
                r#"{"os":"mac","v":2}"#,
                r#"{"os":"win","v":3}"#,
            ]
        );
    }

    #[test]
    fn needs_order_jobs_and_wait_for_every_leg() {
        let p = tr(r#"
on: push
jobs:
  test:
    needs: build
    if: always()
    runs-on: ubuntu-latest
    steps:
      - run: echo ${{ github.job }} ${{ env.GREETING }}
  build:
    strategy:
      matrix:
        os: [linux, mac]
    steps:
      - uses: actions/checkout@v4
      - name: Build it
        run: |
          echo "${{ matrix.os }} #${{ github.run_number }}"
env:
  GREETING: hi
"#)
        .unwrap()
        .pipeline;
        let jobs = &p.stages[0].jobs;
        let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
        assert_eq!(keys, ["build-linux", "build-mac", "test"]);
        assert_eq!(jobs[2].depends_on, ["build-linux", "build-mac"]);
        assert_eq!(jobs[2].when, When::Always);
        assert_eq!(jobs[0].steps.len(), 1, "checkout is not a step");
        let script = jobs[0].steps[0].run.as_deref().unwrap();
        assert!(
            script.ends_with("echo \"linux #${GITHUB_RUN_NUMBER}\"\n"),
            "{script}"
        );
        assert_eq!(jobs[0].steps[0].title.as_deref(), Some("Build it"));
        assert!(jobs[2].steps[0]
            .run
            .as_deref()
            .unwrap()
            .ends_with("echo test hi"));
        assert!(jobs[2].steps[0]
            .run
            .as_deref()
            .unwrap()
            .contains("export GREETING='hi'\n"));
    }

    #[test]
    fn matrix_values_with_dots_or_clashes_make_valid_unique_keys() {
        let p = tr("on: push\njobs:\n  t:\n    strategy: { matrix: { v: ['3.11', 'a b', 'a_b'] } }\n    steps: [{ run: x }]\n")
            .unwrap()
            .pipeline;
        let keys: Vec<&str> = p.stages[0].jobs.iter().map(|j| j.key.as_str()).collect();
        assert_eq!(keys, ["t-3_11", "t-a_b", "t-a_b-2"]);
    }

    #[test]
    fn artifact_actions_become_satchel_commands() {
        let p = tr(r#"
on: push
jobs:
  a:
    steps:
      - uses: actions/upload-artifact@v4
        with:
          name: out-${{ github.run_number }}
          path: |
            dist/
            !dist/**/*.map
          retention-days: 3
      - uses: actions/download-artifact@v5
        with:
          pattern: out-*
          merge-multiple: true
          path: got
"#)
        .unwrap()
        .pipeline;
        let steps = &p.stages[0].jobs[0].steps;
        let up = steps[0].run.as_deref().unwrap();
        assert!(
            up.ends_with(
                "'satchel' 'artifact' 'upload' '--quiet' '--exclusive' '--common-root' '--delimiter' '' '--if-no-files-found' 'warn' --name 'out-'\"${GITHUB_RUN_NUMBER}\" --skip-hidden --expire-in 3d -- 'dist/' '!dist/**/*.map'\n"
            ),
            "{up}"
        );
        let down = steps[1].run.as_deref().unwrap();
        assert!(
            down.ends_with("'satchel' 'artifact' 'download-artifact' '--quiet' --name-pattern 'out-*' --merge --dest 'got'\n"),
            "{down}"
        );
    }

    #[test]
    fn what_cannot_run_is_named_before_anything_runs() {
        let e = err("on: push\njobs:\n  a:\n    steps:\n      - uses: actions/setup-node@v4\n        with: { node-version: 20 }\n");
        assert!(
            e.contains("jobs.a.steps[0]: uses: actions/setup-node@v4 cannot run locally"),
            "{e}"
        );
        let e = err("on: push\njobs:\n  a:\n    needs: b\n    steps: [{run: x}]\n  b:\n    needs: a\n    steps: [{run: x}]\n");
        assert!(e.contains("a cycle in needs among the jobs a, b"), "{e}");
        let e = err("on: push\njobs:\n  a:\n    needs: nope\n    steps: [{run: x}]\n");
        assert!(e.contains("depends on \"nope\""), "{e}");
        let e = err("on: push\njobs:\n  a:\n    steps:\n      - run: echo ${{ needs.b.outputs.x }}\n  b:\n    steps: [{run: x}]\n");
        assert!(
            e.contains("\"b\" is not one of this job's needs (it needs none)"),
            "{e}"
        );
        let e = err("on: push\njobs:\n  a:\n    steps:\n      - run: echo ${{ matrix.os }}\n");
        assert!(e.contains("this job has no matrix"), "{e}");
        let e = err("on: push\njobs:\n  a:\n    steps:\n      - run: echo ${{ hashFiles('x') }}\n");
        assert!(e.contains("is not supported"), "{e}");
        let e = err(
            "on: push\njobs:\n  a:\n    if: github.event_name == 'push'\n    steps: [{run: x}]\n",
        );
        assert!(
            e.contains("`if: github.event_name == 'push'` is not supported"),
            "{e}"
        );
        let e = err("on: push\njobs:\n  a:\n    steps:\n      - uses: actions/upload-artifact@v3\n        with: { path: x }\n");
        assert!(e.contains("upload-artifact@v3 cannot run locally"), "{e}");
        let e = err("on: push\njobs:\n  a:\n    steps:\n      - uses: actions/download-artifact@v4\n        with: { run-id: 5 }\n");
        assert!(e.contains("`run-id`"), "{e}");
    }

    #[test]
    fn skipped_actions_report_their_inputs() {
        let t = translate(
            &super::super::parse_tree(
                "on: push\njobs:\n  a:\n    strategy: { matrix: { env: [prod] } }\n    steps:\n      - uses: azure/webapps-deploy@v3\n        with: { app-name: 'web-${{ matrix.env }}' }\n",
            )
            .unwrap(),
            "ci",
            &LoadOptions {
                skip_unsupported: true,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        assert_eq!(t.skipped.len(), 1);
        let run = t.pipeline.stages[0].jobs[0].steps[0].run.clone().unwrap();
        assert!(run.contains("'  app-name=''web-prod'"), "{run}");
    }
}
