//! Azure Pipelines YAML, translated into a Satchel [`Pipeline`].
//!
//! What maps, and how (the table in `docs/pipelines.md` is the user's
//! view of this module):
//! - `stages`/`jobs`/`steps`, and the short forms without stages (one
//!   stage `default`) or without jobs (one job `Job`); `dependsOn` (a
//!   stage depends on the previous one unless it says otherwise) and
//!   `condition: succeeded() | always() | failed() | succeededOrFailed()`
//!   on stages, jobs and steps; `continueOnError` on steps.
//! - `variables` (map or list form, at pipeline, stage and job level) and
//!   `$(name)` macros, substituted as Azure does: in scripts an unknown
//!   name is left alone (it may be a shell command substitution); in task
//!   inputs it is an error. Predefined variables known only when the job
//!   runs (`$(Pipeline.Workspace)`, `$(Build.BuildId)`, …) become the
//!   environment variables an Azure agent sets (`$PIPELINE_WORKSPACE`, …),
//!   which every translated script exports first; in a path input,
//!   `$(Pipeline.Workspace)` is the job's workspace and
//!   `$(Build.SourcesDirectory)` its working directory.
//! - Steps `script`, `bash` (run with bash, as the agent does),
//!   `checkout: self` (every job starts with the source checked out;
//!   `checkout: none` starts it empty), `publish` /
//!   `download` shortcuts, `PublishPipelineArtifact@1` and
//!   `DownloadPipelineArtifact@2` (current run, or `source: specific` /
//!   `resources.pipelines` of another pipeline on the same server).
//!   Artifacts land under `$(Pipeline.Workspace)/<name>/` as the Azure
//!   seed shows; a download of one artifact into an explicit `path` puts
//!   its files straight there, as Azure's task does.
//! - Everything else (another task, `pwsh`, templates, `parameters`,
//!   deployment jobs, matrix strategies) is refused before anything runs,
//!   or with `--skip-unsupported` reported as skipped with its inputs.

use std::collections::{BTreeMap, HashMap};

use anyhow::bail;
use satchel_model::selector::RunSelector;
use serde_json::{Map, Value};

use satchel_model::expr::escape;

use super::expanded::{Expanded, Piece, MAX_EXPANDED};
use super::{
    check_keys, names, order, order_jobs, scalar, script_title, shell_quote, LoadOptions,
    Translated,
};
use crate::pipeline::{Job, Pipeline, Shell, Source, Stage, Step, When};

/// Steps this translator runs, as error messages list them.
const SUPPORTED_STEPS: &str = "script, bash, checkout, publish, download, task: PublishPipelineArtifact@1, task: DownloadPipelineArtifact@2";

/// Top-level keys that do not change what runs locally.
const IGNORED_TOP: &[&str] = &[
    "name",
    "trigger",
    "pr",
    "schedules",
    "pool",
    "workspace",
    "lockBehavior",
    "appendCommitMessageToRunName",
    "container",
    "services",
    "timeoutInMinutes",
    "cancelTimeoutInMinutes",
];

/// Stage and job keys that do not change what runs locally.
const IGNORED_UNIT: &[&str] = &[
    "displayName",
    "pool",
    "timeoutInMinutes",
    "cancelTimeoutInMinutes",
    "workspace",
    "container",
    "services",
    "lockBehavior",
    "templateContext",
    "isSkippable",
    "trigger",
];

/// Step keys that do not change what runs locally.
const IGNORED_STEP: &[&str] = &[
    "displayName",
    "timeoutInMinutes",
    "retryCountOnTaskFailure",
    "target",
];

/// The environment every translated script sets first: the variables an
/// Azure agent exports, from the runner's own.
const PREAMBLE: &str = r#"export PIPELINE_WORKSPACE="$SATCHEL_WORKSPACE" AGENT_BUILDDIRECTORY="$SATCHEL_WORKSPACE"
export BUILD_ARTIFACTSTAGINGDIRECTORY="$SATCHEL_WORKSPACE/a" BUILD_STAGINGDIRECTORY="$SATCHEL_WORKSPACE/a"
export BUILD_BINARIESDIRECTORY="$SATCHEL_WORKSPACE/b" AGENT_TEMPDIRECTORY="$SATCHEL_WORKSPACE/_temp"
export BUILD_SOURCESDIRECTORY="$PWD"
export SYSTEM_DEFAULTWORKINGDIRECTORY="$BUILD_SOURCESDIRECTORY" BUILD_REPOSITORY_LOCALPATH="$BUILD_SOURCESDIRECTORY"
export BUILD_BUILDID="$SATCHEL_RUN" BUILD_BUILDNUMBER="$SATCHEL_RUN"
export BUILD_SOURCEBRANCHNAME="${SATCHEL_BRANCH:-}" BUILD_SOURCEBRANCH="refs/heads/${SATCHEL_BRANCH:-}" BUILD_SOURCEVERSION="${SATCHEL_COMMIT:-}"
mkdir -p "$BUILD_ARTIFACTSTAGINGDIRECTORY" "$BUILD_BINARIESDIRECTORY" "$AGENT_TEMPDIRECTORY"
"#;

/// The job's workspace in a `publish` or download path (the runner makes
/// it the directory).
const WORKSPACE: &str = "${SATCHEL_WORKSPACE}";

/// A predefined variable known only when the job runs: the environment
/// variable the preamble sets, and its value in a path input, if it has
/// one there.
fn runtime_variable(lower: &str) -> Option<(&'static str, Option<String>)> {
    Some(match lower {
        "pipeline.workspace" | "agent.builddirectory" => {
            ("PIPELINE_WORKSPACE", Some(WORKSPACE.into()))
        }
        "build.artifactstagingdirectory" | "build.stagingdirectory" => (
            "BUILD_ARTIFACTSTAGINGDIRECTORY",
            Some(format!("{WORKSPACE}/a")),
        ),
        "build.binariesdirectory" => ("BUILD_BINARIESDIRECTORY", Some(format!("{WORKSPACE}/b"))),
        "agent.tempdirectory" => ("AGENT_TEMPDIRECTORY", Some(format!("{WORKSPACE}/_temp"))),
        // The job's working directory, where a checkout goes.
        "build.sourcesdirectory"
        | "system.defaultworkingdirectory"
        | "build.repository.localpath" => ("BUILD_SOURCESDIRECTORY", Some(".".into())),
        "build.buildid" => ("BUILD_BUILDID", None),
        "build.buildnumber" => ("BUILD_BUILDNUMBER", None),
        "build.sourcebranch" => ("BUILD_SOURCEBRANCH", None),
        "build.sourcebranchname" => ("BUILD_SOURCEBRANCHNAME", None),
        "build.sourceversion" => ("BUILD_SOURCEVERSION", None),
        _ => return None,
    })
}

/// Variables in scope, by lowercase name (Azure's names are not case
/// sensitive): name as written, and value.
type Vars = BTreeMap<String, (String, String)>;

struct Tr<'a> {
    opts: &'a LoadOptions,
    key: String,
    errors: Vec<String>,
    skipped: Vec<String>,
    /// `resources.pipelines` aliases and synthesized sources, by name.
    sources: BTreeMap<String, Source>,
    /// Source name of each (pipeline, selector) a `specific` download uses.
    specific: HashMap<(String, String), String>,
    /// Whether the job being translated has a `checkout: none` step.
    no_checkout: bool,
}

/// Translates an Azure Pipelines file (parsed into `doc`) with pipeline
/// key `key`.
pub fn translate(doc: &Value, key: &str, opts: &LoadOptions) -> anyhow::Result<Translated> {
    let Some(top) = doc.as_object() else {
        bail!("an Azure Pipelines file is a mapping of keys (stages, jobs or steps, variables, …)");
    };
    let mut tr = Tr {
        opts,
        key: key.to_string(),
        errors: Vec::new(),
        skipped: Vec::new(),
        no_checkout: false,
        sources: BTreeMap::new(),
        specific: HashMap::new(),
    };
    let pipeline = tr.pipeline(top);
    Translated::finish("this Azure Pipelines file", pipeline, tr.errors, tr.skipped)
}

impl Tr<'_> {
    fn error(&mut self, place: &str, what: impl std::fmt::Display) {
        self.errors.push(format!("{place}: {what}"));
    }

    /// Refuses keys `map` has that neither `known` nor `ignored` list.
    fn check_keys(
        &mut self,
        place: &str,
        map: &Map<String, Value>,
        known: &[&str],
        ignored: &[&str],
    ) {
        check_keys(&mut self.errors, place, map, (known, ignored));
    }

    fn pipeline(&mut self, top: &Map<String, Value>) -> Pipeline {
        for k in ["parameters", "extends", "strategy"] {
            if top.contains_key(k) {
                self.error(
                    k,
                    "not supported yet (templates, parameters and strategies are not run locally)",
                );
            }
        }
        self.check_keys(
            "the file",
            top,
            &[
                "variables",
                "resources",
                "stages",
                "jobs",
                "steps",
                "parameters",
                "extends",
                "strategy",
            ],
            IGNORED_TOP,
        );
        let vars = self.variables("variables", top.get("variables"), &Vars::new());
        if let Some(r) = top.get("resources") {
            self.resources(r);
        }
        let stages = match (top.get("stages"), top.get("jobs"), top.get("steps")) {
            (Some(s), None, None) => self.stages(s, &vars),
            (None, Some(j), None) => {
                let jobs = self.jobs("jobs", j, "default", &vars);
                vec![Stage {
                    key: "default".into(),
                    depends_on: Some(Vec::new()),
                    when: When::OnSuccess,
                    jobs,
                }]
            }
            (None, None, Some(s)) => {
                let job = self.job_body("steps", "default", "Job", s, &vars);
                vec![Stage {
                    key: "default".into(),
                    depends_on: Some(Vec::new()),
                    when: When::OnSuccess,
                    jobs: vec![job],
                }]
            }
            (None, None, None) => {
                self.error("the file", "it has no stages, jobs or steps");
                Vec::new()
            }
            _ => {
                self.error(
                    "the file",
                    "it has more than one of stages, jobs and steps; use one",
                );
                Vec::new()
            }
        };
        Pipeline {
            name: self.key.clone(),
            env: BTreeMap::new(),
            sources: std::mem::take(&mut self.sources),
            stages,
        }
    }

    /// Variables of `v` (map or list form) over `outer`.
    fn variables(&mut self, place: &str, v: Option<&Value>, outer: &Vars) -> Vars {
        let mut vars = outer.clone();
        let set = |vars: &mut Vars, name: &str, value: String| {
            vars.insert(name.to_lowercase(), (name.to_string(), value));
        };
        match v {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (name, value) in m {
                    match scalar(value) {
                        Some(s) => set(&mut vars, name, s),
                        None => {
                            self.error(&format!("{place}.{name}"), "a variable's value is a string")
                        }
                    }
                }
            }
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{place}[{i}]");
                    let Some(m) = item.as_object() else {
                        self.error(&at, "expected `- name: … value: …`");
                        continue;
                    };
                    if m.contains_key("group") || m.contains_key("template") {
                        self.error(&at, "variable groups and templates live on the Azure DevOps server; define the variables here");
                        continue;
                    }
                    self.check_keys(&at, m, &["name", "value"], &["readonly"]);
                    match (
                        m.get("name").and_then(Value::as_str),
                        m.get("value").and_then(scalar),
                    ) {
                        (Some(n), Some(v)) => set(&mut vars, n, v),
                        _ => self.error(&at, "expected `- name: … value: …`"),
                    }
                }
            }
            Some(_) => self.error(
                place,
                "expected a map of names to values, or a list of `- name: … value: …`",
            ),
        }
        vars
    }

    /// `resources.pipelines`: other pipelines' runs, by alias.
    fn resources(&mut self, r: &Value) {
        let Some(m) = r.as_object() else {
            self.error("resources", "expected a mapping");
            return;
        };
        self.check_keys(
            "resources",
            m,
            &["pipelines", "repositories"],
            &["containers"],
        );
        if let Some(repos) = m.get("repositories").and_then(Value::as_array) {
            for (i, repo) in repos.iter().enumerate() {
                if repo.get("repository").and_then(Value::as_str) != Some("self") {
                    self.error(
                        &format!("resources.repositories[{i}]"),
                        "only `self` (this checkout) is supported; other repositories are not fetched",
                    );
                }
            }
        }
        let Some(list) = m.get("pipelines") else {
            return;
        };
        let Some(items) = list.as_array() else {
            self.error("resources.pipelines", "expected a list");
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("resources.pipelines[{i}]");
            let Some(p) = item.as_object() else {
                self.error(&at, "expected `- pipeline: ALIAS` with `source: PIPELINE`");
                continue;
            };
            self.check_keys(
                &at,
                p,
                &["pipeline", "source", "branch", "version"],
                &["project", "trigger", "tags"],
            );
            let (Some(alias), Some(source)) = (
                p.get("pipeline").and_then(Value::as_str),
                p.get("source").and_then(Value::as_str),
            ) else {
                self.error(&at, "needs `pipeline: ALIAS` and `source: PIPELINE`");
                continue;
            };
            let branch = p.get("branch").and_then(Value::as_str).map(String::from);
            let run = match p.get("version").and_then(scalar) {
                Some(v) => match v.parse::<u64>() {
                    Ok(n) => RunSelector::Number(n),
                    Err(_) => {
                        self.error(&at, format!("version {v:?}: a run number is expected (runs are numbered per pipeline here)"));
                        continue;
                    }
                },
                None => RunSelector::LastSuccessful { branch },
            };
            self.add_source(&at, alias, source, run);
        }
    }

    fn add_source(&mut self, place: &str, name: &str, pipeline: &str, run: RunSelector) {
        for (what, v) in [("alias", name), ("source pipeline", pipeline)] {
            if let Err(e) = satchel_model::names::validate_key(what, v) {
                self.error(place, e);
                return;
            }
        }
        self.sources.insert(
            name.to_string(),
            Source {
                pipeline: pipeline.to_string(),
                run,
                package: None,
                version: None,
            },
        );
    }

    /// Maps a condition to a [`When`].
    fn condition(&mut self, place: &str, v: Option<&Value>) -> When {
        let Some(v) = v else { return When::OnSuccess };
        let text = scalar(v).unwrap_or_default();
        match text.trim().to_lowercase().replace(' ', "").as_str() {
            "succeeded()" | "" => When::OnSuccess,
            "always()" | "succeededorfailed()" => When::Always,
            "failed()" => When::OnFailure,
            _ => {
                self.error(
                    &format!("{place}.condition"),
                    format!("{text:?} is not supported (supported: succeeded(), always(), failed(), succeededOrFailed())"),
                );
                When::OnSuccess
            }
        }
    }

    fn stages(&mut self, v: &Value, vars: &Vars) -> Vec<Stage> {
        let Some(items) = v.as_array() else {
            self.error("stages", "expected a list of `- stage: NAME`");
            return Vec::new();
        };
        let mut stages: Vec<Stage> = Vec::new();
        let mut previous: Option<String> = None;
        // Job keys are unique in a Satchel pipeline; Azure's only in a stage.
        let mut job_stages: HashMap<String, usize> = HashMap::new();
        for item in items {
            for j in item
                .get("jobs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(k) = j.get("job").and_then(Value::as_str) {
                    *job_stages.entry(k.to_string()).or_default() += 1;
                }
            }
        }
        for (i, item) in items.iter().enumerate() {
            let Some(m) = item.as_object() else {
                self.error(&format!("stages[{i}]"), "expected `- stage: NAME`");
                continue;
            };
            if m.contains_key("template") {
                self.error(
                    &format!("stages[{i}]"),
                    "stage templates are not supported yet",
                );
                continue;
            }
            let Some(key) = m.get("stage").and_then(Value::as_str) else {
                self.error(&format!("stages[{i}]"), "expected `- stage: NAME`");
                continue;
            };
            let at = format!("stages[{i}] ({key})");
            self.check_keys(
                &at,
                m,
                &["stage", "dependsOn", "condition", "variables", "jobs"],
                IGNORED_UNIT,
            );
            let depends_on = match m.get("dependsOn") {
                None => previous.iter().cloned().collect(),
                Some(d) => names(d).unwrap_or_else(|| {
                    self.error(&at, "dependsOn is a stage name or a list of them");
                    Vec::new()
                }),
            };
            let when = self.condition(&at, m.get("condition"));
            let vars = self.variables(&format!("{at}.variables"), m.get("variables"), vars);
            let mut jobs = match m.get("jobs") {
                Some(j) => self.jobs(&at, j, key, &vars),
                None => {
                    self.error(&at, "a stage needs `jobs`");
                    Vec::new()
                }
            };
            let renamed = |k: &str| match job_stages.get(k).copied().unwrap_or(0) {
                n if n > 1 => format!("{key}-{k}"),
                _ => k.to_string(),
            };
            for job in &mut jobs {
                job.key = renamed(&job.key);
                for d in &mut job.depends_on {
                    *d = renamed(d);
                }
            }
            stages.push(Stage {
                key: key.to_string(),
                depends_on: Some(depends_on),
                when,
                jobs,
            });
            previous = Some(key.to_string());
        }
        let deps: Vec<(String, Vec<String>)> = stages
            .iter()
            .map(|s| (s.key.clone(), s.depends_on.clone().unwrap_or_default()))
            .collect();
        match order("stage", "dependsOn", &deps) {
            Ok(o) => {
                let mut slots: Vec<Option<Stage>> = stages.into_iter().map(Some).collect();
                o.into_iter().filter_map(|i| slots[i].take()).collect()
            }
            Err(e) => {
                self.error("stages", e);
                Vec::new()
            }
        }
    }

    fn jobs(&mut self, place: &str, v: &Value, stage: &str, vars: &Vars) -> Vec<Job> {
        let Some(items) = v.as_array() else {
            self.error(place, "`jobs` is a list of `- job: NAME`");
            return Vec::new();
        };
        let mut jobs = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{place}.jobs[{i}]");
            let Some(m) = item.as_object() else {
                self.error(&at, "expected `- job: NAME`");
                continue;
            };
            if m.contains_key("deployment") || m.contains_key("template") {
                self.error(
                    &at,
                    "deployment jobs and job templates are not supported yet; use `- job:`",
                );
                continue;
            }
            let Some(key) = m.get("job").and_then(Value::as_str) else {
                self.error(&at, "expected `- job: NAME`");
                continue;
            };
            let at = format!("{at} ({key})");
            if m.contains_key("strategy") {
                self.error(&at, "`strategy` (matrix, parallel) is not supported yet");
            }
            self.check_keys(
                &at,
                m,
                &[
                    "job",
                    "dependsOn",
                    "condition",
                    "variables",
                    "steps",
                    "strategy",
                    "continueOnError",
                ],
                IGNORED_UNIT,
            );
            if m.get("continueOnError").and_then(Value::as_bool) == Some(true) {
                self.error(&at, "`continueOnError: true` is not supported yet");
            }
            let vars = self.variables(&format!("{at}.variables"), m.get("variables"), vars);
            let Some(steps) = m.get("steps") else {
                self.error(&at, "a job needs `steps`");
                continue;
            };
            let mut job = self.job_body(&at, stage, key, steps, &vars);
            job.depends_on = match m.get("dependsOn") {
                None => Vec::new(),
                Some(d) => names(d).unwrap_or_else(|| {
                    self.error(&at, "dependsOn is a job name or a list of them");
                    Vec::new()
                }),
            };
            job.when = self.condition(&at, m.get("condition"));
            jobs.push(job);
        }
        match order_jobs("job", "dependsOn", jobs) {
            Ok(jobs) => jobs,
            Err(e) => {
                self.error(place, e);
                Vec::new()
            }
        }
    }

    /// A job's steps and environment (its variables, and the predefined
    /// ones known now, as the agent exports them).
    fn job_body(&mut self, place: &str, stage: &str, key: &str, steps: &Value, vars: &Vars) -> Job {
        let mut vars = vars.clone();
        for (name, value) in [
            ("System.JobName", key),
            ("Agent.JobName", key),
            ("System.StageName", stage),
            ("Build.DefinitionName", self.key.as_str()),
            ("System.DefinitionName", self.key.as_str()),
            ("Agent.OS", "Linux"),
        ] {
            vars.entry(name.to_lowercase())
                .or_insert((name.to_string(), value.to_string()));
        }
        let mut env = BTreeMap::new();
        for (name, _) in vars.values() {
            match self.expand(&vars, &format!("$({name})"), 0) {
                // Values known only when the job runs are exported by each
                // script instead (see `script_step`).
                Ok(x) => {
                    if let Some(v) = x.plain() {
                        env.insert(env_name(name), v);
                    }
                }
                Err(e) => self.error(place, e),
            }
        }
        let mut out = Vec::new();
        self.no_checkout = false;
        match steps.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{place}.steps[{i}]");
                    if let Some(s) = self.step(&at, item, key, &vars) {
                        out.push(s);
                    }
                }
            }
            None => self.error(place, "`steps` is a list"),
        }
        if out.is_empty() && !steps.as_array().is_some_and(|s| s.is_empty()) {
            // Only `checkout` steps: the job still runs (and passes).
            out.push(Step {
                run: Some("true".into()),
                ..Step::default()
            });
        }
        Job {
            key: key.to_string(),
            depends_on: Vec::new(),
            when: When::OnSuccess,
            env,
            checkout: !self.no_checkout,
            retries: 0,
            outputs: BTreeMap::new(),
            outputs_as: None,
            steps: out,
        }
    }

    /// Substitutes `$(name)` macros in `text`.
    fn expand(&self, vars: &Vars, text: &str, depth: usize) -> Result<Expanded, String> {
        if depth > 8 {
            return Err(format!(
                "variables refer to each other in a loop, at {text:?}"
            ));
        }
        let mut out = Expanded::default();
        let mut rest = text;
        while let Some(at) = rest.find("$(") {
            out.push_text(&rest[..at]);
            let after = &rest[at + 2..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                .unwrap_or(after.len());
            let name = &after[..name_len];
            if name.is_empty() || !after[name_len..].starts_with(')') {
                out.push_text("$(");
                rest = after;
                continue;
            }
            let lower = name.to_lowercase();
            if out.0.iter().map(Piece::len).sum::<usize>() > MAX_EXPANDED {
                return Err(format!(
                    "variables expand to more than {MAX_EXPANDED} bytes, at {name:?}"
                ));
            }
            if let Some((_, value)) = vars.get(&lower) {
                for piece in self.expand(vars, value, depth + 1)?.0 {
                    match piece {
                        Piece::Text(t) => out.push_text(&t),
                        runtime => out.0.push(runtime),
                    }
                }
            } else if let Some((env, value)) = runtime_variable(&lower) {
                out.0.push(Piece::Runtime {
                    env: env.to_string(),
                    path: value,
                    written: format!("$({name})"),
                });
            } else {
                // Azure leaves an unknown macro as written (in a script it
                // may be a command substitution); inputs refuse it below.
                out.push_text(&format!("$({name})"));
            }
            rest = &after[name_len + 1..];
        }
        out.push_text(rest);
        Ok(out)
    }

    /// A task input or shortcut value, known now.
    fn input(&mut self, place: &str, vars: &Vars, text: &str) -> Option<String> {
        let expanded = match self.expand(vars, text, 0) {
            Ok(x) => x,
            Err(e) => {
                self.error(place, e);
                return None;
            }
        };
        match expanded.value() {
            Ok(v) => {
                if let Some(at) = v.find("$(") {
                    let name: String = v[at..].chars().take_while(|c| *c != ')').skip(2).collect();
                    self.error(
                        place,
                        format!("$({name}) is not a variable of this pipeline (define it under `variables:`)"),
                    );
                    return None;
                }
                Some(v)
            }
            Err(e) => {
                self.error(place, e);
                None
            }
        }
    }

    fn step(&mut self, place: &str, item: &Value, job: &str, vars: &Vars) -> Option<Step> {
        let Some(m) = item.as_object() else {
            self.error(
                place,
                format!("a step is a mapping (supported steps: {SUPPORTED_STEPS})"),
            );
            return None;
        };
        if m.get("enabled").and_then(Value::as_bool) == Some(false) {
            return None;
        }
        let key = m.get("name").and_then(Value::as_str).map(String::from);
        let mut step = if let Some(text) = m.get("script").or_else(|| m.get("bash")) {
            let kind = if m.contains_key("script") {
                "script"
            } else {
                "bash"
            };
            self.check_keys(
                place,
                m,
                &[
                    kind,
                    "name",
                    "env",
                    "workingDirectory",
                    "condition",
                    "enabled",
                    "continueOnError",
                    "failOnStderr",
                ],
                IGNORED_STEP,
            );
            self.script_step(place, m, scalar(text).unwrap_or_default(), vars)?
        } else if m.contains_key("checkout") {
            self.check_keys(
                place,
                m,
                &[
                    "checkout",
                    "clean",
                    "fetchDepth",
                    "lfs",
                    "submodules",
                    "path",
                    "persistCredentials",
                    "fetchTags",
                    "condition",
                ],
                IGNORED_STEP,
            );
            match m.get("checkout").and_then(Value::as_str) {
                Some("self") => return None,
                Some("none") => {
                    self.no_checkout = true;
                    return None;
                }
                _ => return self.unsupported(place, "checkout of another repository", m, vars),
            }
        } else if let Some(path) = m.get("publish") {
            self.check_keys(
                place,
                m,
                &["publish", "artifact", "name", "condition"],
                IGNORED_STEP,
            );
            let path = self.input(
                &format!("{place}.publish"),
                vars,
                &scalar(path).unwrap_or_default(),
            )?;
            let artifact = match m.get("artifact").and_then(scalar) {
                Some(a) => self.input(&format!("{place}.artifact"), vars, &a)?,
                None => job.to_string(),
            };
            publish_step(path, artifact)
        } else if let Some(from) = m.get("download") {
            self.check_keys(
                place,
                m,
                &["download", "artifact", "patterns", "name", "condition"],
                IGNORED_STEP,
            );
            let from = scalar(from).unwrap_or_default();
            if from == "none" {
                return None;
            }
            let source = if from == "current" {
                "current".to_string()
            } else if self.sources.contains_key(&from) {
                from
            } else {
                self.error(
                    place,
                    format!(
                        "download: {from:?} is neither `current` nor an alias under resources.pipelines ({})",
                        if self.sources.is_empty() { "none defined".to_string() } else { self.sources.keys().cloned().collect::<Vec<_>>().join(", ") }
                    ),
                );
                return None;
            };
            let artifact = match m.get("artifact").and_then(scalar) {
                Some(a) => Some(self.input(&format!("{place}.artifact"), vars, &a)?),
                None => None,
            };
            let pattern = self.patterns(place, vars, m.get("patterns"))?;
            Step {
                download: Some(source),
                artifact: artifact.map(|a| escape(&a)),
                pattern,
                ..Step::default()
            }
        } else if let Some(task) = m.get("task").and_then(Value::as_str) {
            self.check_keys(
                place,
                m,
                &[
                    "task",
                    "inputs",
                    "name",
                    "condition",
                    "env",
                    "enabled",
                    "continueOnError",
                ],
                IGNORED_STEP,
            );
            let inputs: Map<String, Value> = match m.get("inputs") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(i)) => i.clone(),
                Some(_) => {
                    self.error(place, "`inputs` is a mapping");
                    return None;
                }
            };
            match task {
                "PublishPipelineArtifact@1" => self.publish_task(place, &inputs, job, vars)?,
                "DownloadPipelineArtifact@2" => self.download_task(place, &inputs, vars)?,
                _ => return self.unsupported(place, &format!("task {task}"), m, vars),
            }
        } else {
            let what = [
                "pwsh",
                "powershell",
                "template",
                "reviewApp",
                "restoreCache",
                "getPackage",
                "upload",
            ]
            .into_iter()
            .find(|k| m.contains_key(*k))
            .map(|k| format!("`{k}` step"))
            .unwrap_or_else(|| "this step".into());
            return self.unsupported(place, &what, m, vars);
        };
        // A step whose failure does not fail the job, and one that runs
        // (or not) after an earlier step of the job failed.
        step.allow_failure = m.get("continueOnError").and_then(Value::as_bool) == Some(true);
        step.when = self.condition(place, m.get("condition"));
        if let Some(k) = key {
            step.key = Some(k);
        }
        step.title = m.get("displayName").and_then(scalar).or(step.title);
        Some(step)
    }

    fn script_step(
        &mut self,
        place: &str,
        m: &Map<String, Value>,
        text: String,
        vars: &Vars,
    ) -> Option<Step> {
        if m.get("failOnStderr").and_then(Value::as_bool) == Some(true) {
            self.error(place, "`failOnStderr: true` is not supported yet");
        }
        let body = match self.expand(vars, &text, 0) {
            Ok(x) => x.script(),
            Err(e) => {
                self.error(place, e);
                return None;
            }
        };
        let mut script = String::from(PREAMBLE);
        // Variables whose values are known only when the job runs (they use
        // $(Build.BuildId), a directory, …): exported here, after the
        // preamble has set what they use.
        for (name, _) in vars.values() {
            if let Ok(x) = self.expand(vars, &format!("$({name})"), 0) {
                if x.plain().is_none() {
                    script.push_str(&format!("export {}={}\n", env_name(name), x.word()));
                }
            }
        }
        let mut env = BTreeMap::new();
        if let Some(e) = m.get("env") {
            let Some(e) = e.as_object() else {
                self.error(place, "`env` is a mapping");
                return None;
            };
            for (k, v) in e {
                let good = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !good {
                    self.error(
                        &format!("{place}.env"),
                        format!("{k:?} is not an environment variable name (letters, digits and _, not starting with a digit)"),
                    );
                    continue;
                }
                match self.expand(vars, &scalar(v).unwrap_or_default(), 0) {
                    Ok(x) => match x.plain() {
                        Some(v) => {
                            env.insert(k.clone(), v);
                        }
                        // Known only when the job runs: set by the script.
                        None => script.push_str(&format!("export {k}={}\n", x.word())),
                    },
                    Err(e) => self.error(place, e),
                }
            }
        }
        if let Some(dir) = m.get("workingDirectory").and_then(scalar) {
            match self.expand(vars, &dir, 0) {
                Ok(x) => script.push_str(&format!("cd -- {} || exit 1\n", x.word())),
                Err(e) => self.error(place, e),
            }
        }
        script.push_str(&body);
        // The runner substitutes `$[…]` in scripts; Azure text means it
        // literally.
        let script = escape(&script);

        Some(Step {
            run: Some(script),
            shell: Some(Shell::Bash),
            env,
            title: Some(script_title(&text)),
            ..Step::default()
        })
    }

    /// Input `names` (the first that is set) of a task.
    fn task_input(
        &mut self,
        place: &str,
        inputs: &Map<String, Value>,
        names: &[&str],
        vars: &Vars,
    ) -> Option<Option<String>> {
        for n in names {
            if let Some(v) = inputs.get(*n) {
                let text = scalar(v).unwrap_or_default();
                return self
                    .input(&format!("{place}.inputs.{n}"), vars, &text)
                    .map(Some);
            }
        }
        Some(None)
    }

    fn publish_task(
        &mut self,
        place: &str,
        inputs: &Map<String, Value>,
        job: &str,
        vars: &Vars,
    ) -> Option<Step> {
        self.check_input_keys(
            place,
            inputs,
            &[
                "targetPath",
                "path",
                "artifact",
                "artifactName",
                "publishLocation",
                "properties",
            ],
        );
        if let Some(loc) = inputs.get("publishLocation").and_then(Value::as_str) {
            if loc != "pipeline" {
                self.error(
                    place,
                    format!("publishLocation {loc:?}: only `pipeline` is supported"),
                );
            }
        }
        // Azure's default: the whole $(Pipeline.Workspace).
        let path = self
            .task_input(place, inputs, &["targetPath", "path"], vars)?
            .unwrap_or_else(|| WORKSPACE.into());
        let artifact = self
            .task_input(place, inputs, &["artifact", "artifactName"], vars)?
            .unwrap_or_else(|| job.to_string());
        Some(publish_step(path, artifact))
    }

    fn download_task(
        &mut self,
        place: &str,
        inputs: &Map<String, Value>,
        vars: &Vars,
    ) -> Option<Step> {
        self.check_input_keys(
            place,
            inputs,
            &[
                "buildType",
                "source",
                "project",
                "definition",
                "pipeline",
                "specificBuildWithTriggering",
                "buildVersionToDownload",
                "runVersion",
                "branchName",
                "runBranch",
                "pipelineId",
                "runId",
                "buildId",
                "allowPartiallySucceededBuilds",
                "allowFailedBuilds",
                "artifactName",
                "artifact",
                "itemPattern",
                "patterns",
                "targetPath",
                "path",
                "downloadPath",
            ],
        );
        let source = self
            .task_input(place, inputs, &["source", "buildType"], vars)?
            .unwrap_or_else(|| "current".into());
        let from = match source.as_str() {
            "current" => "current".to_string(),
            "specific" => self.specific_source(place, inputs, vars)?,
            other => {
                self.error(
                    place,
                    format!("source {other:?}: use `current` or `specific`"),
                );
                return None;
            }
        };
        let artifact = self.task_input(place, inputs, &["artifact", "artifactName"], vars)?;
        let pattern_text = ["patterns", "itemPattern"]
            .iter()
            .find_map(|k| inputs.get(*k));
        let pattern = self.patterns(place, vars, pattern_text)?;
        let path = self.task_input(place, inputs, &["path", "targetPath", "downloadPath"], vars)?;
        // Azure's task puts one named artifact's files straight into an
        // explicit `path`; without one, under $(Pipeline.Workspace)/<name>/
        // as the Azure seed shows.
        let merge = artifact.is_some() && path.is_some();
        Some(Step {
            download: Some(from),
            artifact: artifact.map(|a| escape(&a)),
            pattern,
            path,
            merge,
            ..Step::default()
        })
    }

    /// The source a `source: specific` download names (a pipeline of this
    /// server, and which of its runs).
    fn specific_source(
        &mut self,
        place: &str,
        inputs: &Map<String, Value>,
        vars: &Vars,
    ) -> Option<String> {
        let Some(pipeline) = self.task_input(place, inputs, &["pipeline", "definition"], vars)?
        else {
            self.error(
                place,
                "source: specific needs `pipeline` (the pipeline key on this server)",
            );
            return None;
        };
        let version = self
            .task_input(
                place,
                inputs,
                &["runVersion", "buildVersionToDownload"],
                vars,
            )?
            .unwrap_or_else(|| "latest".into());
        let branch = self
            .task_input(place, inputs, &["runBranch", "branchName"], vars)?
            .map(|b| b.trim_start_matches("refs/heads/").to_string());
        let run = match version.as_str() {
            "latest" => RunSelector::LastSuccessful { branch: None },
            "latestFromBranch" => match branch {
                Some(b) => RunSelector::LastSuccessful { branch: Some(b) },
                None => {
                    self.error(place, "runVersion latestFromBranch needs `runBranch`");
                    return None;
                }
            },
            "specific" => {
                match self.task_input(place, inputs, &["runId", "pipelineId", "buildId"], vars)? {
                    Some(n) => match n.parse::<u64>() {
                        Ok(n) => RunSelector::Number(n),
                        Err(_) => {
                            self.error(place, format!("runId {n:?} is not a run number"));
                            return None;
                        }
                    },
                    None => {
                        self.error(place, "runVersion specific needs `runId`");
                        return None;
                    }
                }
            }
            other => {
                self.error(
                    place,
                    format!("runVersion {other:?}: use latest, latestFromBranch or specific"),
                );
                return None;
            }
        };
        let id = (pipeline.clone(), run.to_string());
        if let Some(name) = self.specific.get(&id) {
            return Some(name.clone());
        }
        let name = format!("specific-{}", self.specific.len() + 1);
        self.add_source(place, &name, &pipeline, run);
        self.specific.insert(id, name.clone());
        Some(name)
    }

    fn check_input_keys(&mut self, place: &str, inputs: &Map<String, Value>, known: &[&str]) {
        for k in inputs.keys() {
            if !known.contains(&k.as_str()) {
                self.error(
                    &format!("{place}.inputs"),
                    format!(
                        "input `{k}` is not supported (supported: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }

    /// `patterns`: globs on paths in an artifact, one per line, `!` lines
    /// excluding (`**` alone: everything).
    fn patterns(&mut self, place: &str, vars: &Vars, v: Option<&Value>) -> Option<Option<String>> {
        let Some(v) = v else { return Some(None) };
        let text = self.input(
            &format!("{place}.patterns"),
            vars,
            &scalar(v).unwrap_or_default(),
        )?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        match lines.as_slice() {
            [] | ["**"] => Some(None),
            _ => {
                for l in &lines {
                    let glob = l.strip_prefix('!').unwrap_or(l);
                    if let Err(e) = satchel_model::glob::Glob::new(glob) {
                        self.error(&format!("{place}.patterns"), format!("{l:?}: {e}"));
                        return None;
                    }
                }
                Some(Some(lines.join("\n")))
            }
        }
    }

    /// A step this runner cannot execute: an error, or with
    /// `--skip-unsupported` a step that prints what it would have received.
    fn unsupported(
        &mut self,
        place: &str,
        what: &str,
        m: &Map<String, Value>,
        vars: &Vars,
    ) -> Option<Step> {
        if !self.opts.skip_unsupported {
            self.error(
                place,
                format!("{what} cannot run locally (supported steps: {SUPPORTED_STEPS}; pass --skip-unsupported to report it and go on)"),
            );
            return None;
        }
        let mut words = vec![shell_quote(&format!("skipped {what} (not run locally)"))];
        let inputs = m.get("inputs").and_then(Value::as_object);
        for (k, v) in inputs.into_iter().flatten() {
            let text = scalar(v).unwrap_or_else(|| v.to_string());
            match self.expand(vars, &text, 0) {
                Ok(x) => words.push(format!("{}{}", shell_quote(&format!("  {k}=")), x.word())),
                Err(e) => self.error(place, e),
            }
        }
        self.skipped.push(format!("{place}: {what}"));
        let script = format!(
            "{PREAMBLE}printf '%s\\n' {}\n",
            satchel_model::expr::escape(&words.join(" "))
        );
        Some(Step {
            run: Some(script),
            shell: Some(Shell::Bash),
            title: Some(format!("report {what}")),
            ..Step::default()
        })
    }
}

/// A `publish` step; its fields are ones the runner substitutes `$[…]` in,
/// so a literal `$[` from the Azure file is escaped.
fn publish_step(path: String, artifact: String) -> Step {
    Step {
        publish: Some(escape(&path)),
        artifact: Some(escape(&artifact)),
        ..Step::default()
    }
}

/// The environment variable Azure sets for variable `name`.
fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | ' ' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Action;

    fn tr(yaml: &str) -> anyhow::Result<Translated> {
        tr_with(yaml, false)
    }

    fn tr_with(yaml: &str, skip_unsupported: bool) -> anyhow::Result<Translated> {
        let opts = LoadOptions {
            skip_unsupported,
            ..LoadOptions::default()
        };
        translate(&super::super::parse_tree(yaml).unwrap(), "p", &opts)
    }

    fn err(yaml: &str) -> String {
        match tr(yaml) {
            Ok(_) => panic!("translated:\n{yaml}"),
            Err(e) => format!("{e:#}"),
        }
    }

    const SEED: &str = include_str!("../../../../examples/seeds/azure-fan-in.yml");

    #[test]
    fn the_seed_maps_onto_stages_jobs_and_artifact_steps() {
        let p = tr(SEED).unwrap().pipeline;
        assert_eq!(p.name, "p");
        let keys: Vec<&str> = p.stages.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["ParallelJobs", "CollectAndDeploy"]);
        assert_eq!(
            p.stages[1].depends_on.as_deref(),
            Some(&["ParallelJobs".to_string()][..])
        );
        let job1 = &p.stages[0].jobs[0];
        assert_eq!(job1.key, "Job1");
        assert_eq!(job1.steps[0].action(), Action::Run);
        assert_eq!(job1.steps[0].shell, Some(Shell::Bash));
        assert!(job1.steps[0]
            .run
            .as_deref()
            .unwrap()
            .ends_with("echo \"From Job1\" > job1.txt"));
        assert_eq!(job1.steps[1].publish.as_deref(), Some("job1.txt"));
        assert_eq!(job1.steps[1].artifact.as_deref(), Some("job1-artifact"));
        let use_all = &p.stages[1].jobs[0];
        assert_eq!(use_all.steps[0].download.as_deref(), Some("current"));
        assert_eq!(use_all.steps[0].artifact.as_deref(), Some("job1-artifact"));
        assert!(
            !use_all.steps[0].merge,
            "the seed's download lands in Workspace/<name>/"
        );
        let cat = use_all.steps[2].run.as_deref().unwrap();
        assert!(
            cat.contains("cat \"${PIPELINE_WORKSPACE}\"/job1-artifact/job1.txt"),
            "{cat}"
        );
    }

    #[test]
    fn step_conditions_and_continue_on_error() {
        let p = tr("steps:\n  - script: make\n    continueOnError: true\n  - script: upload logs\n    condition: always()\n  - script: alert\n    condition: failed()\n")
            .unwrap()
            .pipeline;
        let steps = &p.stages[0].jobs[0].steps;
        assert!(steps[0].allow_failure);
        assert_eq!(
            (steps[1].when, steps[2].when),
            (When::Always, When::OnFailure)
        );
    }

    #[test]
    fn checkout_none_starts_the_job_empty() {
        let p = tr("jobs:\n  - job: a\n    steps:\n      - checkout: none\n      - script: ls\n  - job: b\n    steps:\n      - checkout: self\n      - script: ls\n")
            .unwrap()
            .pipeline;
        let jobs = &p.stages[0].jobs;
        assert_eq!(
            jobs.iter()
                .map(|j| (j.key.as_str(), j.checkout))
                .collect::<Vec<_>>(),
            [("a", false), ("b", true)]
        );
        assert_eq!(jobs[0].steps.len(), 1, "checkout is not a step of its own");
    }

    #[test]
    fn variables_substitute_in_scripts_and_inputs_as_azure_does() {
        let p = tr(r#"
variables:
  artifactName: drop
  greeting: hello $(who)
  who: world
steps:
  - script: echo "$(greeting) $(date) $(Build.BuildId)"
  - task: PublishPipelineArtifact@1
    inputs:
      targetPath: $(Build.ArtifactStagingDirectory)/out
      artifact: $(artifactName)-1
  - task: DownloadPipelineArtifact@2
    inputs:
      artifact: $(artifactName)-1
      path: $(Pipeline.Workspace)/got
"#)
        .unwrap()
        .pipeline;
        let job = &p.stages[0].jobs[0];
        assert_eq!(job.key, "Job");
        let script = job.steps[0].run.as_deref().unwrap();
        assert!(
            script.ends_with("echo \"hello world $(date) ${BUILD_BUILDID}\""),
            "an unknown macro stays (a command substitution): {script}"
        );
        assert_eq!(
            job.env.get("ARTIFACTNAME").map(String::as_str),
            Some("drop")
        );
        assert_eq!(
            job.env.get("SYSTEM_JOBNAME").map(String::as_str),
            Some("Job")
        );
        assert_eq!(
            job.steps[1].publish.as_deref(),
            Some("${SATCHEL_WORKSPACE}/a/out")
        );
        assert_eq!(job.steps[1].artifact.as_deref(), Some("drop-1"));
        assert_eq!(
            job.steps[2].path.as_deref(),
            Some("${SATCHEL_WORKSPACE}/got")
        );
        assert!(
            job.steps[2].merge,
            "one artifact into an explicit path: straight there"
        );
    }

    #[test]
    fn inputs_refuse_what_cannot_be_known() {
        let e = err("steps:\n  - publish: out\n    artifact: drop-$(nope)\n");
        assert!(
            e.contains("$(nope) is not a variable of this pipeline"),
            "{e}"
        );
        let e = err("steps:\n  - publish: out\n    artifact: drop-$(Build.BuildId)\n");
        assert!(e.contains("known only when the job runs"), "{e}");
        let e = err("variables:\n  a: $(b)\n  b: $(a)\nsteps:\n  - script: echo $(a)\n");
        assert!(e.contains("loop"), "{e}");
    }

    #[test]
    fn unsupported_steps_fail_up_front_or_are_reported_with_their_inputs() {
        let yaml = r#"
variables: { app: web }
steps:
  - script: echo build
  - task: AzureWebApp@1
    inputs:
      appName: $(app)-prod
      package: $(Pipeline.Workspace)/drop
"#;
        let e = err(yaml);
        assert!(
            e.contains("steps[1]: task AzureWebApp@1 cannot run locally"),
            "{e}"
        );
        assert!(
            e.contains("PublishPipelineArtifact@1"),
            "lists what is supported: {e}"
        );
        let t = tr_with(yaml, true).unwrap();
        assert_eq!(t.skipped, ["steps.steps[1]: task AzureWebApp@1"]);
        let report = t.pipeline.stages[0].jobs[0].steps[1].run.clone().unwrap();
        assert!(report.contains("'  appName=''web-prod'"), "{report}");
        assert!(
            report.contains("'  package='\"${PIPELINE_WORKSPACE}\"'/drop'"),
            "{report}"
        );
    }

    #[test]
    fn dependencies_are_ordered_and_cycles_refused() {
        let p = tr(r#"
jobs:
  - job: b
    dependsOn: a
    steps: [{ script: echo b }]
  - job: a
    steps: [{ script: echo a }]
  - job: cleanup
    dependsOn: [a, b]
    condition: always()
    steps: [{ script: echo c }]
"#)
        .unwrap()
        .pipeline;
        let jobs: Vec<&str> = p.stages[0].jobs.iter().map(|j| j.key.as_str()).collect();
        assert_eq!(jobs, ["a", "b", "cleanup"]);
        assert_eq!(p.stages[0].jobs[2].when, When::Always);
        let e = err(r#"
stages:
  - stage: A
    dependsOn: B
    jobs: [{ job: x, steps: [{ script: echo }] }]
  - stage: B
    dependsOn: A
    jobs: [{ job: y, steps: [{ script: echo }] }]
"#);
        assert!(
            e.contains("a cycle in dependsOn among the stages A, B"),
            "{e}"
        );
        let e = err("jobs:\n  - job: a\n    dependsOn: zz\n    steps: [{ script: echo }]\n");
        assert!(
            e.contains("depends on \"zz\", which is not a job here"),
            "{e}"
        );
        let e = err("jobs:\n  - job: a\n    condition: eq(1, 1)\n    steps: [{ script: echo }]\n");
        assert!(
            e.contains("is not supported (supported: succeeded()"),
            "{e}"
        );
    }

    #[test]
    fn other_pipelines_come_from_resources_or_specific_downloads() {
        let p = tr(r#"
resources:
  pipelines:
    - pipeline: upstream
      source: pipeline-a
      branch: main
steps:
  - download: upstream
    artifact: lib
    patterns: "**/*.so"
  - task: DownloadPipelineArtifact@2
    inputs:
      source: specific
      pipeline: pipeline-b
      runVersion: latest
      artifact: docs
"#)
        .unwrap()
        .pipeline;
        let up = &p.sources["upstream"];
        assert_eq!(up.pipeline, "pipeline-a");
        assert_eq!(
            up.run,
            RunSelector::LastSuccessful {
                branch: Some("main".into())
            }
        );
        let steps = &p.stages[0].jobs[0].steps;
        assert_eq!(steps[0].download.as_deref(), Some("upstream"));
        assert_eq!(steps[0].pattern.as_deref(), Some("**/*.so"));
        let specific = steps[1].download.as_deref().unwrap();
        assert_eq!(p.sources[specific].pipeline, "pipeline-b");
        let e = err("steps:\n  - download: nowhere\n");
        assert!(e.contains("neither `current` nor an alias"), "{e}");
    }

    #[test]
    fn a_job_name_in_two_stages_gets_its_stage_in_front() {
        let p = tr(r#"
stages:
  - stage: A
    jobs:
      - { job: build, steps: [{ script: echo }] }
      - { job: test, dependsOn: build, steps: [{ script: echo }] }
  - stage: B
    jobs: [{ job: build, steps: [{ script: echo }] }]
"#)
        .unwrap()
        .pipeline;
        assert_eq!(p.stages[0].jobs[0].key, "A-build");
        assert_eq!(p.stages[0].jobs[1].depends_on, ["A-build"]);
        assert_eq!(p.stages[1].jobs[0].key, "B-build");
        let e = err("jobs:\n  - { job: a, steps: [{ script: echo }] }\n  - { job: a, steps: [{ script: echo }] }\n");
        assert!(e.contains("job name \"a\" is used twice"), "{e}");
    }

    #[test]
    fn runtime_values_are_exported_by_scripts_and_quoted_where_they_stand() {
        let p = tr(r#"
variables:
  out: $(Pipeline.Workspace)/out
  tag: build-$(Build.BuildId)
  plain: x
steps:
  - script: cat '$(Pipeline.Workspace)/a b.txt' "$(out)"
    workingDirectory: d$[x]
    env:
      DEST: $(Build.ArtifactStagingDirectory)
      MODE: fast
  - task: PublishPipelineArtifact@1
    inputs:
      artifact: all
"#)
        .unwrap()
        .pipeline;
        let job = &p.stages[0].jobs[0];
        assert_eq!(job.env.get("PLAIN").map(String::as_str), Some("x"));
        assert!(
            !job.env.contains_key("OUT"),
            "not known before the job runs"
        );
        let s = &job.steps[0];
        let script = s.run.as_deref().unwrap();
        assert!(
            script.contains("export OUT=\"${PIPELINE_WORKSPACE}\"'/out'\n"),
            "{script}"
        );
        assert!(
            script.contains("export TAG='build-'\"${BUILD_BUILDID}\"\n"),
            "{script}"
        );
        assert!(
            script.contains("export DEST=\"${BUILD_ARTIFACTSTAGINGDIRECTORY}\"\n"),
            "{script}"
        );
        assert_eq!(s.env.get("MODE").map(String::as_str), Some("fast"));
        assert!(
            script.contains("cd -- 'd$$[x]' || exit 1\n"),
            "escaped for the runner: {script}"
        );
        assert!(
            script.ends_with(
                r#"cat ''"${PIPELINE_WORKSPACE}"'/a b.txt' "${PIPELINE_WORKSPACE}/out""#
            ),
            "{script}"
        );
        assert_eq!(
            job.steps[1].publish.as_deref(),
            Some("${SATCHEL_WORKSPACE}")
        );
    }

    #[test]
    fn unknown_keys_and_templates_are_refused() {
        let e = err("steps:\n  - script: echo\n    retries: 3\n");
        assert!(e.contains("`retries` is not supported here"), "{e}");
        let e = err("extends:\n  template: t.yml\nsteps: []\n");
        assert!(e.contains("extends: not supported yet"), "{e}");
        let e = err("steps:\n  - template: steps.yml\n");
        assert!(e.contains("`template` step cannot run locally"), "{e}");
        let e = err("variables:\n  - group: secrets\nsteps:\n  - script: echo\n");
        assert!(e.contains("variable groups"), "{e}");
    }

    #[test]
    fn satchel_references_in_azure_text_are_literal() {
        let p = tr("steps:\n  - script: echo '$[jobs.a.b.artifacts.c]'\n")
            .unwrap()
            .pipeline;
        let script = p.stages[0].jobs[0].steps[0].run.clone().unwrap();
        assert!(
            script.ends_with("echo '$$[jobs.a.b.artifacts.c]'"),
            "{script}"
        );
    }
}
