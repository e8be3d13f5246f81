//! Named artifacts, Azure Pipelines style: `satchel artifact publish`
//! (a file or a directory, honouring `.artifactignore`), typed artifacts
//! (`publish-image`, `publish-link`), and `download-artifact`, which puts
//! each named artifact in its own folder under the workspace.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use satchel_model::api::{Artifact, ArtifactState, CreateTyped, LinkInfo};
use satchel_model::glob::Glob;
use satchel_model::ignore::IgnoreRules;
use satchel_model::path::clean_relative;
use serde::Serialize;

use crate::context::{JobArgs, ServerArgs};
use crate::download::fetch_files;
use crate::output::human;
use crate::upload::{ensure_inside, link_root, send_and_report, Found, Sending};

/// The name of the ignore file read at the root of a published directory.
pub const IGNORE_FILE: &str = ".artifactignore";

/// Options of `satchel artifact publish`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// File or directory to publish. A directory's files keep their paths
    /// relative to it; a file is stored under its own name.
    path: PathBuf,
    /// Artifact name, unique in the run.
    #[arg(long)]
    name: String,
    /// Content type for every file (default: from the extension).
    #[arg(long)]
    content_type: Option<String>,
    /// Expire the artifact after this long (e.g. 7d; default: the server's
    /// retention).
    #[arg(long, value_parser = crate::upload::parse_expire)]
    expire_in: Option<u64>,
    /// Follow symbolic links even where they lead outside the published
    /// directory (refused by default, so a planted link cannot carry a
    /// secret into an artifact).
    #[arg(long)]
    allow_links_outside: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    job: JobArgs,
    #[command(flatten)]
    server: ServerArgs,
}

/// Lists the files under `root` that `.artifactignore` does not exclude,
/// with their paths relative to `root`. Symbolic links to files and
/// directories are followed where they stay inside `root` (anywhere with
/// `allow_outside`); directories are entered once (no link loops).
fn walk_publish(root: &Path, allow_outside: bool) -> anyhow::Result<Vec<Found>> {
    let meta =
        std::fs::metadata(root).with_context(|| format!("cannot publish {}", root.display()))?;
    if !allow_outside {
        // The root itself may be (or lie under) a link, as upload checks
        // a pattern's own directories.
        let abs = std::path::absolute(root)?;
        let parent = abs.parent().unwrap_or(Path::new("/"));
        let cwd = std::env::current_dir()?;
        ensure_inside(
            &abs,
            link_root(parent, &cwd).as_deref(),
            "--allow-links-outside",
        )?;
    }
    let shown = root.display().to_string();
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no UTF-8 file name", root.display()))?;
        let abs = std::path::absolute(root)?;
        return Ok(vec![Found {
            abs,
            stored: clean_relative(name)?,
            glob: shown,
        }]);
    }
    if !meta.is_dir() {
        bail!("{} is neither a file nor a directory", root.display());
    }
    let rules = match std::fs::read_to_string(root.join(IGNORE_FILE)) {
        Ok(text) => IgnoreRules::parse(&text)
            .with_context(|| format!("in {}", root.join(IGNORE_FILE).display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => IgnoreRules::parse("")?,
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", root.join(IGNORE_FILE).display()))
        }
    };
    let root_abs = std::path::absolute(root)?;
    let root_real = std::fs::canonicalize(&root_abs)?;
    let inside = (!allow_outside).then_some(root_real.as_path());
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(root_abs.clone(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let canon = std::fs::canonicalize(&dir)?;
        if !seen.insert(canon) {
            continue;
        }
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("{} is not valid UTF-8", e.path().display()))?;
            let child = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            if child == IGNORE_FILE {
                continue;
            }
            // Ignored entries are never looked at, links included.
            let is_link = e.file_type()?.is_symlink();
            let m = std::fs::metadata(e.path());
            if rules.is_ignored(&child, m.as_ref().is_ok_and(|m| m.is_dir())) {
                continue;
            }
            let m = m.with_context(|| format!("reading {}", e.path().display()))?;
            if is_link {
                ensure_inside(&e.path(), inside, "--allow-links-outside")?;
            }
            if m.is_dir() {
                stack.push((e.path(), child));
            } else if m.is_file() {
                out.push(Found {
                    abs: e.path(),
                    stored: clean_relative(&child)?,
                    glob: shown.clone(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.stored.cmp(&b.stored));
    Ok(out)
}

/// `satchel artifact publish`.
pub async fn run_publish(a: PublishArgs) -> anyhow::Result<()> {
    let ctx = a.job.context()?;
    satchel_model::names::validate_artifact_name(&a.name)?;
    if a.name == "default" {
        bail!("`default` names a job's default artifact; choose another name");
    }
    let client = a.server.client()?;
    let (path, allow) = (a.path.clone(), a.allow_links_outside);
    let found = tokio::task::spawn_blocking(move || walk_publish(&path, allow)).await??;
    if found.is_empty() {
        bail!(
            "nothing to publish: {} has no files{}",
            a.path.display(),
            if a.path.join(IGNORE_FILE).exists() {
                format!(" that {IGNORE_FILE} keeps")
            } else {
                String::new()
            }
        );
    }
    let how = Sending {
        name: Some(a.name.clone()),
        exclusive: true,
        replace: false,
        expire_in_secs: a.expire_in,
        content_type: a.content_type.clone(),
        quiet: a.quiet || a.json,
    };
    send_and_report(&client, &ctx, how, found, a.json).await
}

/// What every typed publish takes.
#[derive(Args, Debug)]
pub struct TypedArgs {
    /// Artifact name, unique in the run.
    #[arg(long)]
    name: String,
    /// Expire the artifact after this long (e.g. 7d; default: the server's
    /// retention).
    #[arg(long, value_parser = crate::upload::parse_expire)]
    expire_in: Option<u64>,
    /// Print the artifact as JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    job: JobArgs,
    #[command(flatten)]
    server: ServerArgs,
}

/// Options of `satchel artifact publish-image`.
#[derive(Args, Debug)]
pub struct PublishImageArgs {
    /// Image reference `NAME[:TAG][@DIGEST]`. Nothing is pushed: the
    /// artifact records the reference.
    image: String,
    #[command(flatten)]
    typed: TypedArgs,
}

/// Options of `satchel artifact publish-link`.
#[derive(Args, Debug)]
pub struct PublishLinkArgs {
    /// URL of the artifact (http, https, s3, gs, az, oci, ftp or file).
    #[arg(value_name = "URL")]
    link_url: String,
    /// SHA-256 of what the URL serves.
    #[arg(long)]
    sha256: Option<String>,
    /// MD5 of what the URL serves.
    #[arg(long)]
    md5: Option<String>,
    #[command(flatten)]
    typed: TypedArgs,
}

async fn publish_typed(
    t: TypedArgs,
    image: Option<String>,
    link: Option<LinkInfo>,
) -> anyhow::Result<()> {
    satchel_model::names::validate_artifact_name(&t.name)?;
    let req = CreateTyped {
        context: t.job.context()?,
        name: t.name,
        image,
        link,
        expire_in_secs: t.expire_in,
    };
    let client = t.server.client()?;
    let a = client.create_typed(&req).await?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        eprintln!(
            "published {} artifact {:?} = {} in {} run {} job {}",
            a.kind,
            a.name,
            a.reference_value(),
            req.context.pipeline,
            req.context.run,
            req.context.job
        );
    }
    Ok(())
}

/// `satchel artifact publish-image`.
pub async fn run_publish_image(a: PublishImageArgs) -> anyhow::Result<()> {
    let info = satchel_model::api::ImageInfo::parse(&a.image).map_err(anyhow::Error::msg)?;
    publish_typed(a.typed, Some(info.reference), None).await
}

/// `satchel artifact publish-link`.
pub async fn run_publish_link(a: PublishLinkArgs) -> anyhow::Result<()> {
    let link = LinkInfo {
        url: a.link_url,
        sha256: a.sha256,
        md5: a.md5,
    }
    .validated()
    .map_err(anyhow::Error::msg)?;
    publish_typed(a.typed, None, Some(link)).await
}

/// Options of `satchel artifact download-artifact`.
#[derive(Args, Debug)]
pub struct DownloadArtifactArgs {
    /// Names of the artifacts to download (`default` with --job for a
    /// job's default artifact).
    names: Vec<String>,
    /// Download every named artifact of the run.
    #[arg(long, conflicts_with = "names")]
    all: bool,
    /// Download every named artifact whose name matches this glob
    /// (GitHub's download-artifact `pattern`).
    #[arg(long, conflicts_with_all = ["names", "all"])]
    name_pattern: Option<String>,
    /// Destination; each artifact goes into DEST/<name>/ (default:
    /// $SATCHEL_WORKSPACE, else the current directory).
    #[arg(long)]
    dest: Option<PathBuf>,
    /// Only files matching this glob (Azure `itemPattern`); repeat it for
    /// several, and `!GLOB` leaves out what it matches.
    #[arg(long)]
    pattern: Vec<String>,
    /// Put every artifact's files straight into DEST, without a directory
    /// per artifact (GitHub's `merge-multiple`, Azure's download of one
    /// artifact into a `path`); a later artifact's file replaces an
    /// earlier one's of the same path.
    #[arg(long)]
    merge: bool,
    /// Pipeline key (default: SATCHEL_PIPELINE).
    #[arg(long)]
    pipeline: Option<String>,
    /// Run number (default: SATCHEL_RUN).
    #[arg(long)]
    run: Option<u64>,
    /// The run by its number, or by the CI's build id in any pipeline
    /// this token may read.
    #[arg(long, value_name = "NUMBER|ID", conflicts_with = "run")]
    build: Option<String>,
    /// Only artifacts of jobs with this key.
    #[arg(long)]
    job: Option<String>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Serialize)]
struct Downloaded {
    name: String,
    kind: String,
    files: u64,
    bytes: u64,
    destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

/// The artifacts `names` (or all named ones) pick among `artifacts`.
fn pick(
    artifacts: &[Artifact],
    names: &[String],
    (all, name_glob): (bool, Option<&Glob>),
    run: &str,
) -> anyhow::Result<Vec<Artifact>> {
    let live: Vec<&Artifact> = artifacts
        .iter()
        .filter(|a| a.state == ArtifactState::Finished && !a.producer.superseded)
        .collect();
    let named = || {
        let mut have: Vec<String> = live
            .iter()
            .filter(|a| !a.is_default)
            .map(|a| a.name.clone())
            .collect();
        have.sort();
        have.dedup();
        if have.is_empty() {
            "none".into()
        } else {
            have.join(", ")
        }
    };
    if let Some(g) = name_glob {
        let out: Vec<Artifact> = live
            .iter()
            .filter(|a| !a.is_default && g.is_match(&a.name))
            .map(|a| (*a).clone())
            .collect();
        if out.is_empty() {
            bail!(
                "no finished artifact of {run} has a name matching {:?} (its artifacts: {})",
                g.as_str(),
                named()
            );
        }
        return Ok(out);
    }
    if all {
        return Ok(live
            .into_iter()
            .filter(|a| !a.is_default)
            .cloned()
            .collect());
    }
    if names.is_empty() {
        bail!("name the artifacts to download, or pass --all");
    }
    let mut out = Vec::new();
    for n in names {
        let found: Vec<&&Artifact> = live.iter().filter(|a| a.name == *n).collect();
        match found.len() {
            0 => {
                bail!(
                    "no finished artifact named {n:?} in {run} (its artifacts: {})",
                    named()
                );
            }
            1 => out.push((*found[0]).clone()),
            _ => {
                let jobs: Vec<String> = found.iter().map(|a| a.producer.job.clone()).collect();
                bail!(
                    "{n:?} names the default artifacts of several jobs in {run} ({}): pass --job",
                    jobs.join(", ")
                );
            }
        }
    }
    Ok(out)
}

/// Globs that choose files: any of the plain ones (all when there are
/// none), and none of the `!` ones.
struct Patterns {
    include: Vec<Glob>,
    exclude: Vec<Glob>,
}

impl Patterns {
    fn new(patterns: &[String]) -> anyhow::Result<Patterns> {
        let mut p = Patterns {
            include: Vec::new(),
            exclude: Vec::new(),
        };
        for text in patterns.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            match text.strip_prefix('!') {
                Some(x) => p
                    .exclude
                    .push(Glob::new(x).with_context(|| format!("--pattern {text:?}"))?),
                None => p
                    .include
                    .push(Glob::new(text).with_context(|| format!("--pattern {text:?}"))?),
            }
        }
        Ok(p)
    }

    fn admit(&self, path: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.is_match(path)))
            && !self.exclude.iter().any(|g| g.is_match(path))
    }
}

/// The destination root: --dest, else $SATCHEL_WORKSPACE, else `.`.
pub fn workspace_or(dest: Option<PathBuf>) -> PathBuf {
    dest.or_else(|| {
        std::env::var_os("SATCHEL_WORKSPACE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from("."))
}

/// Writes a typed artifact's description as `dir/artifact.json`.
pub fn write_typed(dir: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("artifact.json");
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// `satchel artifact download-artifact`.
pub async fn run_download_artifact(a: DownloadArtifactArgs) -> anyhow::Result<()> {
    let scope = crate::context::ScopeArgs {
        pipeline: a.pipeline.clone(),
        run: a.run,
        build: a.build.clone(),
        job: a.job.clone(),
        step: None,
        name: None,
        include_retried_jobs: false,
    };
    let wanted = Patterns::new(&a.pattern)?;
    let client = a.server.client()?;
    let (pipeline, run) = scope.resolve(&client).await?;
    let where_ = format!("run {run} of pipeline {pipeline:?}");
    let artifacts: Vec<Artifact> = client
        .list_artifacts(&pipeline, run)
        .await?
        .into_iter()
        .filter(|x| a.job.as_deref().is_none_or(|j| x.producer.job == j))
        .collect();
    let name_glob = a
        .name_pattern
        .as_deref()
        .map(Glob::new)
        .transpose()
        .context("--name-pattern")?;
    let chosen = pick(&artifacts, &a.names, (a.all, name_glob.as_ref()), &where_)?;
    if chosen.is_empty() {
        bail!("{where_} has no finished named artifacts to download");
    }
    let root = workspace_or(a.dest.clone());
    let mut report = Vec::new();
    for art in chosen {
        let dir = if a.merge {
            root.clone()
        } else {
            root.join(&art.name)
        };
        if art.kind != "files" {
            write_typed(&dir, &art)?;
            report.push(Downloaded {
                name: art.name.clone(),
                kind: art.kind.clone(),
                files: 0,
                bytes: 0,
                destination: dir.join("artifact.json").display().to_string(),
                value: Some(art.reference_value()),
            });
            continue;
        }
        let files: Vec<_> = client
            .get_artifact(&art.id)
            .await?
            .files
            .into_iter()
            .filter(|f| wanted.admit(&f.path))
            .collect();
        let (count, bytes) = (files.len() as u64, files.iter().map(|f| f.size).sum());
        if files.is_empty() {
            std::fs::create_dir_all(&dir)?;
        } else {
            fetch_files(&client, &dir, files, a.quiet || a.json).await?;
        }
        report.push(Downloaded {
            name: art.name.clone(),
            kind: art.kind.clone(),
            files: count,
            bytes,
            destination: dir.display().to_string(),
            value: None,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for d in &report {
            match &d.value {
                Some(v) => eprintln!(
                    "downloaded {} artifact {:?} = {v} to {}",
                    d.kind, d.name, d.destination
                ),
                None => eprintln!(
                    "downloaded artifact {:?}: {} ({}) to {}, all sha256-verified",
                    d.name,
                    crate::output::count(d.files, "file", "files"),
                    human(d.bytes),
                    d.destination
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(found: &[Found]) -> Vec<&str> {
        found.iter().map(|f| f.stored.as_str()).collect()
    }

    #[test]
    fn publish_walk_honours_artifactignore() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("out/logs")).unwrap();
        std::fs::create_dir_all(r.join("node_modules/x")).unwrap();
        for f in [
            "app.bin",
            "out/a.txt",
            "out/logs/1.log",
            "out/keep.log",
            "node_modules/x/y.js",
        ] {
            std::fs::write(r.join(f), f).unwrap();
        }
        std::fs::write(
            r.join(IGNORE_FILE),
            "# comment\nnode_modules/\n*.log\n!keep.log\n",
        )
        .unwrap();
        let found = walk_publish(r, false).unwrap();
        assert_eq!(names(&found), ["app.bin", "out/a.txt", "out/keep.log"]);
        let one = walk_publish(&r.join("out/a.txt"), false).unwrap();
        assert_eq!(names(&one), ["a.txt"]);
        assert!(walk_publish(&r.join("missing"), false).is_err());
    }

    #[test]
    fn patterns_include_any_and_exclude_every() {
        let p = Patterns::new(&["**/*.so".into(), "docs/**".into(), "!**/test_*".into()]).unwrap();
        assert!(p.admit("lib/a.so") && p.admit("docs/x.md"));
        assert!(!p.admit("lib/test_a.so") && !p.admit("src/a.c"));
        let all = Patterns::new(&["!*.tmp".into()]).unwrap();
        assert!(all.admit("a/b.txt") && !all.admit("x.tmp"));
        assert!(Patterns::new(&[]).unwrap().admit("anything"));
    }

    #[test]
    fn publish_walk_survives_link_loops() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/f"), "x").unwrap();
        std::os::unix::fs::symlink(d.path(), d.path().join("a/loop")).unwrap();
        let found = walk_publish(d.path(), false).unwrap();
        assert!(found.iter().any(|f| f.stored == "a/f"));
    }
}
