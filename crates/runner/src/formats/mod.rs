//! Pipeline files of other CI systems, run as written (`satchel run
//! azure-pipelines.yml`).
//!
//! Each foreign format is a translator into Satchel's own [`Pipeline`],
//! which the runner executes with the artifact semantics of a real server:
//! the format's own rules (where a download lands, what a macro means)
//! live in its translator, the execution in [`crate::exec`]. [`load`]
//! detects the format from the file (or takes `--format`), parses it with
//! a panic-free YAML parser (`serde-saphyr`, line and column in errors) and
//! translates it. A step the runner cannot execute is an error before
//! anything runs, naming the step and what is supported, unless the caller
//! asks to skip such steps: each becomes a step that prints what it would
//! have received (its inputs after substitution).
//!
//! Formats: [`azure`] (Azure Pipelines), [`github`] (GitHub Actions),
//! [`buildkite`] and [`flow`] (Alibaba Cloud Flow).

pub mod azure;
pub mod buildkite;
mod expanded;
pub mod flow;
pub mod github;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::pipeline::Pipeline;

/// A pipeline file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Satchel's own (`docs/pipelines.md`).
    Satchel,
    /// Azure Pipelines YAML.
    Azure,
    /// Buildkite pipeline YAML.
    Buildkite,
    /// Alibaba Cloud Flow YAML.
    Flow,
    /// A GitHub Actions workflow.
    Github,
}

impl Format {
    /// The name `--format` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Satchel => "satchel",
            Format::Azure => "azure",
            Format::Buildkite => "buildkite",
            Format::Flow => "flow",
            Format::Github => "github",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Format> {
        Ok(match s {
            "satchel" => Format::Satchel,
            "azure" => Format::Azure,
            "buildkite" => Format::Buildkite,
            "flow" => Format::Flow,
            "github" => Format::Github,
            _ => bail!("unknown format {s:?}: use azure, buildkite, flow, github or satchel"),
        })
    }
}

/// A translated file.
#[derive(Debug)]
pub struct Translated {
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Steps only reported, each as `place: what`.
    pub skipped: Vec<String>,
}

impl Translated {
    /// The translation of a `what` file (`this Flow pipeline`), or every
    /// problem found in it at once.
    pub(crate) fn finish(
        what: &str,
        pipeline: Pipeline,
        errors: Vec<String>,
        skipped: Vec<String>,
    ) -> anyhow::Result<Translated> {
        if !errors.is_empty() {
            bail!("{what} cannot run here:\n  {}", errors.join("\n  "));
        }
        Ok(Translated {
            pipeline: pipeline.validated()?,
            skipped,
        })
    }
}

/// A scalar as text (`true`, `3`, `x`); `None` for a list or a map.
pub(crate) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// A string or a list of strings (`dependsOn: A` or `dependsOn: [A, B]`).
pub(crate) fn names(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items.iter().map(|i| i.as_str().map(String::from)).collect(),
        Value::Null => Some(Vec::new()),
        _ => None,
    }
}

/// `items` (key and dependencies) in an order where each comes after its
/// dependencies, file order kept where free; an error names an unknown
/// dependency or the items of a cycle (`depends` is the key naming them).
pub(crate) fn order(
    what: &str,
    depends: &str,
    items: &[(String, Vec<String>)],
) -> Result<Vec<usize>, String> {
    let mut keys: HashSet<&str> = HashSet::new();
    for (k, _) in items {
        if !keys.insert(k.as_str()) {
            return Err(format!("{what} name {k:?} is used twice"));
        }
    }
    for (k, deps) in items {
        for d in deps {
            if !keys.contains(d.as_str()) {
                return Err(format!(
                    "{what} {k} depends on {d:?}, which is not a {what} here"
                ));
            }
        }
    }
    let mut done: Vec<usize> = Vec::new();
    let mut placed: HashSet<&str> = HashSet::new();
    while done.len() < items.len() {
        let next = items.iter().enumerate().find(|(i, (k, deps))| {
            !done.contains(i)
                && !placed.contains(k.as_str())
                && deps.iter().all(|d| placed.contains(d.as_str()))
        });
        match next {
            Some((i, (k, _))) => {
                done.push(i);
                placed.insert(k);
            }
            None => {
                let rest: Vec<&str> = items
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .filter(|k| !placed.contains(k))
                    .collect();
                return Err(format!(
                    "a cycle in {depends} among the {what}s {}",
                    rest.join(", ")
                ));
            }
        }
    }
    Ok(done)
}

/// `jobs` ordered so each comes after those its `depends_on` names (see
/// [`order`]).
pub(crate) fn order_jobs(
    what: &str,
    depends: &str,
    jobs: Vec<crate::pipeline::Job>,
) -> Result<Vec<crate::pipeline::Job>, String> {
    let deps: Vec<(String, Vec<String>)> = jobs
        .iter()
        .map(|j| (j.key.clone(), j.depends_on.clone()))
        .collect();
    let o = order(what, depends, &deps)?;
    let mut slots: Vec<Option<crate::pipeline::Job>> = jobs.into_iter().map(Some).collect();
    Ok(o.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// `text` made a job or step key: what a key may not hold, and `.`
/// (references split on it), becomes `-` (see
/// [`satchel_model::ci::sanitize_key`]); `None` if nothing is left.
pub(crate) fn key_of(text: &str) -> Option<String> {
    satchel_model::ci::sanitize_key(&text.replace('.', "_"))
}

/// A key from `want` that `taken` does not hold yet (`want-2`, …),
/// recorded there.
pub(crate) fn unique_key(want: String, taken: &mut std::collections::HashSet<String>) -> String {
    let mut key = want.clone();
    let mut n = 2;
    while !taken.insert(key.clone()) {
        key = format!("{want}-{n}");
        n += 1;
    }
    key
}

/// A script's title: its first non-empty line, and ` …` when more follow.
pub(crate) fn script_title(text: &str) -> String {
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let more = if text.trim().lines().count() > 1 {
        " …"
    } else {
        ""
    };
    format!("{first}{more}")
}

/// Adds an error for each key of `map` that neither `known` nor `ignored`
/// lists.
pub(crate) fn check_keys(
    errors: &mut Vec<String>,
    place: &str,
    map: &serde_json::Map<String, Value>,
    (known, ignored): (&[&str], &[&str]),
) {
    for k in map.keys() {
        if !known.contains(&k.as_str()) && !ignored.contains(&k.as_str()) {
            errors.push(format!(
                "{place}: `{k}` is not supported here (supported: {})",
                known.join(", ")
            ));
        }
    }
}

/// How to load a pipeline file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The format, instead of detecting it.
    pub format: Option<Format>,
    /// The pipeline key, instead of the file's own.
    pub pipeline: Option<String>,
    /// Report steps the runner cannot execute instead of refusing the file.
    pub skip_unsupported: bool,
    /// Build and push images (Flow's `DockerBuildPush`) where a docker
    /// client is present, instead of only declaring them.
    pub push: bool,
    /// The directory of the pipeline file (the sources' directory).
    pub source_dir: PathBuf,
}

/// A loaded pipeline.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The pipeline to run.
    pub pipeline: Pipeline,
    /// The format it was written in.
    pub format: Format,
    /// Steps that will only be reported, not run (`--skip-unsupported`),
    /// each as `place: what`.
    pub skipped: Vec<String>,
}

/// Parses YAML text into a tree (for translators), with the parser's line
/// and column on errors.
pub fn parse_tree(text: &str) -> anyhow::Result<Value> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Loads the pipeline file `path` (its `text`).
pub fn load(path: &Path, text: &str, opts: &LoadOptions) -> anyhow::Result<Loaded> {
    // The tree detection reads is the one a translator takes.
    let mut tree = None;
    let format = match opts.format {
        Some(f) => f,
        None => detect(path, tree.insert(parse_tree(text)?)),
    };
    let (mut pipeline, skipped) = match format {
        Format::Satchel => (Pipeline::parse(text)?, Vec::new()),
        Format::Azure | Format::Github | Format::Buildkite => {
            let key = opts.pipeline.clone().unwrap_or_else(|| file_key(path));
            let tree = match tree {
                Some(t) => t,
                None => parse_tree(text)?,
            };
            let t = match format {
                Format::Azure => azure::translate(&tree, &key, opts)?,
                Format::Github => github::translate(&tree, &key, opts)?,
                _ => buildkite::translate(&tree, &key, opts)?,
            };
            (t.pipeline, t.skipped)
        }
        Format::Flow => {
            let key = opts.pipeline.clone().unwrap_or_else(|| file_key(path));
            let t = flow::translate(text, &key, opts)?;
            (t.pipeline, t.skipped)
        }
    };
    if let Some(key) = &opts.pipeline {
        satchel_model::names::validate_key("pipeline", key).context("--pipeline")?;
        pipeline.name.clone_from(key);
    }
    Ok(Loaded {
        pipeline,
        format,
        skipped,
    })
}

/// A foreign file's pipeline key when the format has no name of its own:
/// the file name without its extension (`.github/workflows/ci.yml` → `ci`).
pub fn file_key(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The format of a pipeline file, from its path and its top-level keys.
pub fn detect(path: &Path, doc: &Value) -> Format {
    let p = path.to_string_lossy().replace('\\', "/");
    let has = |k: &str| doc.get(k).is_some();
    let list_items_have = |list: &str, keys: &[&str]| -> bool {
        doc.get(list)
            .and_then(Value::as_array)
            .is_some_and(|items| {
                items
                    .iter()
                    .any(|i| keys.iter().any(|k| i.get(*k).is_some()))
            })
    };
    if p.contains(".github/workflows/")
        || (has("on") && doc.get("jobs").is_some_and(Value::is_object))
    {
        return Format::Github;
    }
    let bare_steps = doc.as_array().is_some_and(|items| {
        items.iter().any(|i| {
            i.as_str() == Some("wait")
                || ["command", "commands", "trigger", "wait"]
                    .iter()
                    .any(|k| i.get(*k).is_some())
        })
    });
    if p.contains(".buildkite/")
        || bare_steps
        || list_items_have(
            "steps",
            &["command", "commands", "label", "wait", "trigger", "block"],
        )
        || doc
            .get("steps")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|i| i.as_str() == Some("wait")))
    {
        return Format::Buildkite;
    }
    if doc.get("stages").is_some_and(Value::is_object)
        || doc.get("sources").is_some_and(Value::is_array)
    {
        return Format::Flow;
    }
    if list_items_have("stages", &["key"]) && has("name") {
        return Format::Satchel;
    }
    if list_items_have("stages", &["stage", "template"])
        || list_items_have("jobs", &["job", "deployment", "template"])
        || list_items_have(
            "steps",
            &[
                "script", "bash", "task", "publish", "download", "checkout", "pwsh",
            ],
        )
        || has("trigger")
        || has("pool")
        || has("resources")
        || has("variables")
    {
        return Format::Azure;
    }
    Format::Satchel
}

/// `text` quoted for a POSIX shell (single quotes).
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect_text(path: &str, text: &str) -> Format {
        detect(Path::new(path), &parse_tree(text).unwrap())
    }

    #[test]
    fn formats_are_detected_from_path_and_keys() {
        assert_eq!(
            detect_text("p.yml", "name: x\nstages:\n  - key: a\n    jobs: []\n"),
            Format::Satchel
        );
        assert_eq!(
            detect_text("azure-pipelines.yml", "steps:\n  - script: echo hi\n"),
            Format::Azure
        );
        assert_eq!(
            detect_text("p.yml", "stages:\n  - stage: A\n    jobs: []\n"),
            Format::Azure
        );
        assert_eq!(
            detect_text(".github/workflows/ci.yml", "jobs: {}\n"),
            Format::Github
        );
        assert_eq!(
            detect_text("p.yml", "on: push\njobs:\n  a:\n    steps: []\n"),
            Format::Github
        );
        assert_eq!(
            detect_text("p.yml", "steps:\n  - command: make\n  - wait\n"),
            Format::Buildkite
        );
        assert_eq!(
            detect_text("p.yml", "sources: []\nstages:\n  build:\n    name: b\n"),
            Format::Flow
        );
    }

    #[test]
    fn yaml_errors_give_line_and_column() {
        let e = parse_tree("steps:\n  - script: [unclosed\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") || e.contains(":2:"), "{e}");
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
