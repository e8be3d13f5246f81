//! Alibaba Cloud Flow pipelines, run as written (`satchel run flow.yml`).
//!
//! What runs (`docs/pipelines.md`, "Alibaba Cloud Flow pipelines"):
//! - `stages`, `jobs` and `steps` as mappings, in the order written (a
//!   stage after the one before it; the jobs of a stage in parallel, a job
//!   after those it `needs` or whose artifacts it references with
//!   `$[jobs.<job>.…]`; steps in order).
//! - Steps `Command` (`with.run`, run with bash `-e`), `ArtifactUpload`
//!   (`with.artifact`, `with.filePath`: a files artifact of the step) and
//!   `DockerBuildPush` (`with.artifact`, `with.image`: an image artifact,
//!   declared; built and pushed only with `--push` where a docker client
//!   is present).
//! - `$[jobs…]`, `$[stages…]` and `$[sources…]` references are Satchel's
//!   own, resolved by the runner wherever they stand; `${NAME}` in inputs
//!   is the job's variable `NAME` (`PIPELINE_ID`, `BUILD_NUMBER`, …).
//! - `sources` of `type: flowPipeline` become sources (`flowPipeline` is
//!   the pipeline key, `build` the run selector); repository sources are
//!   the local checkout.
//! - Other steps and component jobs (`DockerLogin`, `KubectlApply`,
//!   `VMDeploy`, …) are refused before anything runs, or with
//!   `--skip-unsupported` reported with their inputs after substitution,
//!   so the run shows which image or artifact a deploy would have used.

use std::collections::BTreeMap;

use satchel_model::selector::RunSelector;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::expanded::{Expanded, Piece};
use super::{order_jobs, scalar, script_title, shell_quote, LoadOptions, Translated};
use crate::pipeline::{Job, Pipeline, Shell, Source, Stage, Step, When};

/// Steps this translator runs, as error messages list them.
const SUPPORTED_STEPS: &str = "Command, ArtifactUpload, DockerBuildPush";

/// The variables a Flow job has, from the runner's own, set first in
/// every script.
const PREAMBLE: &str = r#"export PIPELINE_ID="$SATCHEL_PIPELINE" PIPELINE_NAME="$SATCHEL_PIPELINE" BUILD_NUMBER="$SATCHEL_RUN"
export CI_COMMIT_ID="${SATCHEL_COMMIT:-}" CI_COMMIT_REF_NAME="${SATCHEL_BRANCH:-}" CI_SOURCE_DIR="$PWD" PROJECT_DIR="$PWD"
"#;

/// A mapping in file order (Flow runs stages, jobs and steps in the order
/// written).
#[derive(Debug)]
struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered<T>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, T>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Debug, Deserialize)]
struct Doc {
    #[serde(default)]
    sources: Option<Ordered<Value>>,
    stages: Ordered<FlowStage>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct FlowStage {
    jobs: Ordered<FlowJob>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct FlowJob {
    #[serde(default)]
    steps: Option<Ordered<FlowStep>>,
    #[serde(default)]
    component: Option<String>,
    #[serde(default)]
    with: Option<Value>,
    #[serde(default)]
    needs: Option<Value>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct FlowStep {
    step: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    with: Option<Value>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// Keys of a stage, job or step that do not change what runs locally.
const IGNORED: &[&str] = &["name", "runsOn", "driven", "timeoutMinutes", "condition"];

/// Translates a Flow pipeline (its YAML `text`) with pipeline key `key`.
pub fn translate(text: &str, key: &str, opts: &LoadOptions) -> anyhow::Result<Translated> {
    let doc: Doc = serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tr = Tr {
        opts,
        errors: Vec::new(),
        skipped: Vec::new(),
    };
    let pipeline = tr.pipeline(doc, key);
    Translated::finish("this Flow pipeline", pipeline, tr.errors, tr.skipped)
}

struct Tr<'a> {
    opts: &'a LoadOptions,
    errors: Vec<String>,
    skipped: Vec<String>,
}

/// `${NAME}` in an input: the job's variable at run time; the rest text.
fn variables(text: &str) -> Expanded {
    let mut out = Expanded::default();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let after = &rest[at + 2..];
        let end = after.find('}');
        let name = end.map(|e| &after[..e]).filter(|n| {
            n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        match (name, end) {
            (Some(n), Some(e)) => {
                out.push_text(&rest[..at]);
                out.0.push(Piece::Runtime {
                    env: n.to_string(),
                    path: None,
                    written: format!("${{{n}}}"),
                });
                rest = &after[e + 1..];
            }
            _ => {
                out.push_text(&rest[..at + 2]);
                rest = after;
            }
        }
    }
    out.push_text(rest);
    out
}

/// Every `(path, text)` of an input tree, flattened (`variables[0].value`).
fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&p, x, out);
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                leaves(&format!("{prefix}[{i}]"), x, out);
            }
        }
        other => out.push((prefix.to_string(), scalar(other).unwrap_or_default())),
    }
}

/// The job keys of stage `stage` a text references (`$[jobs.<job>.…]`,
/// or `$[stages.<stage>.<job>.…]` naming that stage).
fn referenced_jobs(text: &str, stage: &str) -> Vec<String> {
    satchel_model::expr::find(text)
        .into_iter()
        .filter_map(|f| f.parsed.ok())
        .filter(|r| r.source.is_none() && r.stage.as_deref().is_none_or(|s| s == stage))
        .map(|r| r.job)
        .collect()
}

impl Tr<'_> {
    fn error(&mut self, place: &str, what: impl std::fmt::Display) {
        self.errors.push(format!("{place}: {what}"));
    }

    fn rest(&mut self, place: &str, rest: &BTreeMap<String, Value>, ignored: &[&str]) {
        for k in rest.keys() {
            if !ignored.contains(&k.as_str()) {
                self.error(place, format!("`{k}` is not supported here"));
            }
        }
    }

    fn pipeline(&mut self, doc: Doc, key: &str) -> Pipeline {
        self.rest(
            "the pipeline",
            &doc.rest,
            &["name", "variables", "triggers"],
        );
        // Top-level `variables`: the jobs' environment (`${NAME}` in
        // inputs and scripts).
        let mut env = BTreeMap::new();
        if let Some(v) = doc.rest.get("variables") {
            match v.as_object() {
                Some(m) => {
                    for (k, v) in m {
                        let ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                        if v.as_f64().is_some() && v.as_i64().is_none() && v.as_u64().is_none() {
                            self.error(
                                "variables",
                                format!(
                                    "{k}: write {v} in quotes (YAML reads 1.10 as the number 1.1)"
                                ),
                            );
                            continue;
                        }
                        match (ok, scalar(v)) {
                            (true, Some(v)) => {
                                env.insert(k.clone(), v);
                            }
                            _ => self.error(
                                "variables",
                                format!("{k:?}: a variable has a name of letters, digits and _, and a plain value"),
                            ),
                        }
                    }
                }
                None => self.error("variables", "`variables` is a mapping of names to values"),
            }
        }
        let mut sources = BTreeMap::new();
        for (id, s) in doc.sources.map(|s| s.0).unwrap_or_default() {
            let place = format!("sources.{id}");
            let Some(m) = s.as_object() else {
                // `my_repo: ……` and the like: a repository, the checkout.
                continue;
            };
            match m.get("type").and_then(Value::as_str) {
                Some("flowPipeline") => {}
                // An artifact repository: a promoted package by version.
                Some("packages") => {
                    let (Some(repo), Some(package)) = (
                        m.get("repository").and_then(scalar),
                        m.get("package").and_then(scalar),
                    ) else {
                        self.error(&place, "a packages source names `repository` and `package`");
                        continue;
                    };
                    let version = match m.get("version") {
                        Some(Value::String(v)) => Some(v.clone()),
                        None | Some(Value::Null) => None,
                        Some(other) => {
                            self.error(
                                &format!("{place}.version"),
                                format!("write the version {other} in quotes (YAML reads 1.10 as the number 1.1)"),
                            );
                            continue;
                        }
                    };
                    sources.insert(
                        id.clone(),
                        Source {
                            pipeline: String::new(),
                            run: RunSelector::Latest,
                            package: Some(format!("{repo}/{package}")),
                            version,
                        },
                    );
                    continue;
                }
                _ => continue,
            }
            let Some(pipeline) = m.get("flowPipeline").and_then(scalar) else {
                self.error(
                    &place,
                    "a flowPipeline source names the pipeline in `flowPipeline`",
                );
                continue;
            };
            let build = m
                .get("build")
                .and_then(scalar)
                .unwrap_or_else(|| "lastSuccessfulBuild".into());
            match build.parse::<RunSelector>() {
                Ok(run) => {
                    sources.insert(
                        id.clone(),
                        Source {
                            pipeline,
                            run,
                            package: None,
                            version: None,
                        },
                    );
                }
                Err(e) => self.error(&format!("{place}.build"), e),
            }
        }
        let mut stages = Vec::new();
        for (sid, stage) in doc.stages.0 {
            let place = format!("stages.{sid}");
            self.rest(&place, &stage.rest, IGNORED);
            let ids: Vec<String> = stage.jobs.0.iter().map(|(k, _)| k.clone()).collect();
            let mut jobs = Vec::new();
            for (jid, job) in stage.jobs.0 {
                let at = format!("{place}.jobs.{jid}");
                if let Some(j) = self.job(&at, (&sid, &jid), job, &ids) {
                    jobs.push(j);
                }
            }
            match order_jobs("job", "needs", jobs) {
                Ok(jobs) => stages.push(Stage {
                    key: sid,
                    depends_on: None,
                    when: When::OnSuccess,
                    jobs,
                }),
                Err(e) => self.error(&place, e),
            }
        }
        Pipeline {
            name: key.to_string(),
            env,
            sources,
            stages,
        }
    }

    fn job(
        &mut self,
        place: &str,
        (stage, id): (&str, &str),
        job: FlowJob,
        stage_jobs: &[String],
    ) -> Option<Job> {
        self.rest(place, &job.rest, IGNORED);
        let mut depends: Vec<String> = match &job.needs {
            None => Vec::new(),
            Some(v) => super::names(v).unwrap_or_else(|| {
                self.error(place, "`needs` is a job id or a list of them");
                Vec::new()
            }),
        };
        let mut steps = Vec::new();
        let mut texts = Vec::new();
        if let Some(c) = &job.component {
            // A component job (a cloud deploy): reported, or refused.
            let with = job.with.clone().unwrap_or(Value::Null);
            let mut l = Vec::new();
            leaves("", &with, &mut l);
            texts.extend(l.iter().map(|(_, t)| t.clone()));
            steps.extend(self.unsupported(place, &format!("component {c}"), id, &with));
        } else {
            let Some(list) = job.steps else {
                self.error(place, "a job has `steps` or a `component`");
                return None;
            };
            for (sid, step) in list.0 {
                let at = format!("{place}.steps.{sid}");
                if let Some(w) = &step.with {
                    let mut l = Vec::new();
                    leaves("", w, &mut l);
                    texts.extend(l.into_iter().map(|(_, t)| t));
                }
                steps.extend(self.step(&at, &sid, step));
            }
        }
        // A job waits for the jobs of its stage whose artifacts it uses.
        for t in &texts {
            for j in referenced_jobs(t, stage) {
                if j != id && stage_jobs.contains(&j) && !depends.contains(&j) {
                    depends.push(j);
                }
            }
        }
        if steps.is_empty() {
            return None;
        }
        Some(Job {
            key: id.to_string(),
            depends_on: depends,
            when: When::OnSuccess,
            env: BTreeMap::new(),
            checkout: true,
            retries: 0,
            outputs: BTreeMap::new(),
            outputs_as: None,
            steps,
        })
    }

    fn step(&mut self, place: &str, id: &str, step: FlowStep) -> Vec<Step> {
        self.rest(place, &step.rest, IGNORED);
        let with = step.with.clone().unwrap_or(Value::Null);
        let input = |k: &str| with.get(k).and_then(scalar);
        let title = step.name.clone();
        let base = Step {
            key: Some(id.to_string()),
            title: title.clone(),
            shell: Some(Shell::Bash),
            ..Step::default()
        };
        match step.step.as_str() {
            "Command" => {
                let Some(run) = input("run") else {
                    self.error(place, "a Command step has `with.run`");
                    return Vec::new();
                };
                vec![Step {
                    title: title.or_else(|| Some(script_title(&run))),
                    run: Some(format!("{PREAMBLE}set -e\n{run}\n")),
                    ..base
                }]
            }
            "ArtifactUpload" => {
                let (Some(name), Some(paths)) = (input("artifact"), with.get("filePath")) else {
                    self.error(
                        place,
                        "an ArtifactUpload step has `with.artifact` and `with.filePath`",
                    );
                    return Vec::new();
                };
                let paths: Vec<String> = match paths {
                    Value::Array(items) => items.iter().filter_map(scalar).collect(),
                    other => scalar(other).into_iter().collect(),
                };
                if paths.is_empty() {
                    self.error(
                        place,
                        "`with.filePath` lists the files or directories to upload",
                    );
                    return Vec::new();
                }
                let mut words = vec![
                    "satchel artifact upload --quiet --exclusive --common-root --delimiter '' --name".to_string(),
                    variables(&name).word(),
                    "--".into(),
                ];
                words.extend(paths.iter().map(|p| variables(p).word()));
                vec![Step {
                    title: title.or_else(|| Some(format!("upload {}", paths.join(" ")))),
                    run: Some(format!("{PREAMBLE}set -e\n{}\n", words.join(" "))),
                    ..base
                }]
            }
            "DockerBuildPush" => {
                let (Some(name), Some(image)) = (input("artifact"), input("image")) else {
                    self.error(
                        place,
                        "a DockerBuildPush step has `with.artifact` and `with.image`",
                    );
                    return Vec::new();
                };
                let image = variables(&image);
                let mut script = String::from(PREAMBLE);
                script.push_str("set -e\n");
                if self.opts.push {
                    let file = input("dockerfilePath").unwrap_or_else(|| "Dockerfile".into());
                    let context = input("contextPath").unwrap_or_else(|| ".".into());
                    script.push_str(&format!(
                        "if command -v docker >/dev/null; then\n  docker build -t {img} -f {f} {c}\n  docker push {img}\nelse\n  echo 'no docker client here: the image is declared, not built' >&2\nfi\n",
                        img = image.word(),
                        f = variables(&file).word(),
                        c = variables(&context).word()
                    ));
                }
                script.push_str(&format!(
                    "satchel artifact publish-image {} --name {}\n",
                    image.word(),
                    variables(&name).word()
                ));
                vec![Step {
                    title: title.or_else(|| Some(format!("image {}", image.script()))),
                    run: Some(script),
                    ..base
                }]
            }
            other => self.unsupported(place, &format!("step {other}"), id, &with),
        }
    }

    /// A step or component the runner cannot execute: an error, or with
    /// `--skip-unsupported` a step printing its inputs (references and
    /// variables resolved when it runs).
    fn unsupported(&mut self, place: &str, what: &str, key: &str, with: &Value) -> Vec<Step> {
        if !self.opts.skip_unsupported {
            self.error(
                place,
                format!("{what} cannot run locally (supported steps: {SUPPORTED_STEPS}; pass --skip-unsupported to report it and go on)"),
            );
            return Vec::new();
        }
        self.skipped.push(format!("{place}: {what}"));
        let mut l = Vec::new();
        leaves("", with, &mut l);
        let mut words = vec![shell_quote(&format!("skipped {what} (not run locally)"))];
        for (k, v) in l {
            words.push(variables(&format!("  {k}={v}")).word());
        }
        vec![Step {
            key: Some(key.to_string()),
            title: Some(format!("report {what}")),
            run: Some(format!("{PREAMBLE}printf '%s\\n' {}\n", words.join(" "))),
            shell: Some(Shell::Bash),
            ..Step::default()
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(yaml: &str, skip: bool) -> anyhow::Result<Translated> {
        translate(
            yaml,
            "flow",
            &LoadOptions {
                skip_unsupported: skip,
                ..LoadOptions::default()
            },
        )
    }

    #[test]
    fn stages_jobs_and_steps_keep_their_written_order() {
        let p = tr(
            r#"
stages:
  zeta:
    jobs:
      b_job:
        steps:
          s2: { step: Command, with: { run: echo two } }
          s1: { step: Command, with: { run: echo one } }
  alpha:
    jobs:
      user:
        steps:
          use: { step: Command, with: { run: 'echo $[jobs.maker.img.artifacts.my_image]' } }
      maker:
        steps:
          img: { step: DockerBuildPush, with: { artifact: my_image, image: 'r/ns/demo:${BUILD_NUMBER}' } }
"#,
            false,
        )
        .unwrap()
        .pipeline;
        let stages: Vec<&str> = p.stages.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(stages, ["zeta", "alpha"]);
        let steps: Vec<&str> = p.stages[0].jobs[0].steps.iter().map(|s| s.key()).collect();
        assert_eq!(steps, ["s2", "s1"]);
        let jobs: Vec<&str> = p.stages[1].jobs.iter().map(|j| j.key.as_str()).collect();
        assert_eq!(jobs, ["maker", "user"], "a job after the one it references");
        assert_eq!(p.stages[1].jobs[1].depends_on, ["maker"]);
        let img = p.stages[1].jobs[0].steps[0].run.as_deref().unwrap();
        assert!(
            img.ends_with("satchel artifact publish-image 'r/ns/demo:'\"${BUILD_NUMBER}\" --name 'my_image'\n"),
            "{img}"
        );
    }

    #[test]
    fn unsupported_steps_fail_or_report_their_inputs() {
        let yaml = r#"
sources:
  my_repo:
    ……
  a:
    type: flowPipeline
    flowPipeline: pipe-a
    build: lastSuccessfulBuild
stages:
  s:
    jobs:
      deploy:
        steps:
          apply:
            step: KubectlApply
            with:
              variables:
                - key: image
                  value: $[sources.a.stages.b.j.s.artifacts.my_image]
"#;
        let e = tr(yaml, false).unwrap_err().to_string();
        assert!(
            e.contains("stages.s.jobs.deploy.steps.apply: step KubectlApply cannot run locally"),
            "{e}"
        );
        let t = tr(yaml, true).unwrap();
        assert_eq!(t.skipped.len(), 1);
        let p = t.pipeline;
        assert_eq!(p.sources["a"].pipeline, "pipe-a");
        let run = p.stages[0].jobs[0].steps[0].run.as_deref().unwrap();
        assert!(
            run.contains("'  variables[0].value=$[sources.a.stages.b.j.s.artifacts.my_image]'"),
            "the reference is left for the runner to resolve: {run}"
        );
    }

    #[test]
    fn pipeline_variables_and_stage_form_references() {
        let p = tr(
            "variables:\n  TAG: '1.2'\nstages:\n  s:\n    jobs:\n      use:\n        steps:\n          u: { step: Command, with: { run: 'echo $[stages.s.make.m.artifacts.x]' } }\n      make:\n        steps:\n          m: { step: Command, with: { run: 'echo ${TAG}' } }\n",
            false,
        )
        .unwrap()
        .pipeline;
        assert_eq!(p.env.get("TAG").map(String::as_str), Some("1.2"));
        assert_eq!(p.stages[0].jobs[1].key, "use");
        assert_eq!(p.stages[0].jobs[1].depends_on, ["make"]);
    }

    #[test]
    fn variables_in_inputs_are_the_jobs_at_run_time() {
        let x = variables("Artifacts_${PIPELINE_ID}-$x ${not closed");
        assert_eq!(x.word(), "'Artifacts_'\"${PIPELINE_ID}\"'-$x ${not closed'");
    }
}
