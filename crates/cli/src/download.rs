//! `satchel artifact download`, `search` and `shasum`.
//!
//! Download asks the server which files a query selects (the server applies
//! the ambiguity and latest-per-path rules), then fetches small files many
//! per request and large files streamed, several at a time (the largest as
//! several ranges at once, [`crate::ranged`]). Every file is
//! hashed as it is written to a temp file beside its target, checked against
//! its SHA-256, and only then renamed into place. Targets never leave the
//! destination: paths are re-validated here and no existing symlink along
//! the way is followed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::{StreamExt, TryStreamExt};
use satchel_client::{Client, ClientError};
use satchel_model::api::FileInfo;
use satchel_model::frames::FileBatch;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::context::{ScopeArgs, ServerArgs};
use crate::output::{bytes_bar, human};
use crate::transfer::{concurrency, plan, ranged_downloads, retrying, Work, RANGED_MIN};

/// Options of `satchel artifact download`.
#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// Path glob of the files to download.
    query: String,
    /// Destination directory; files mirror their stored paths under it.
    dest: PathBuf,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Options of `satchel artifact search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Path glob (default: every file).
    #[arg(default_value = "**")]
    query: String,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Succeed when nothing matches.
    #[arg(long)]
    allow_empty_results: bool,
    /// Line template: %p path, %s size, %T sha256, %j job, %S step, %a attempt,
    /// %n artifact name, %i file id, %c upload time.
    #[arg(long)]
    format: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Options of `satchel artifact shasum`.
#[derive(Args, Debug)]
pub struct ShasumArgs {
    /// Path glob that must match exactly one file.
    query: String,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Accepted for Buildkite compatibility: the hash is always SHA-256.
    #[arg(long)]
    sha256: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Api { code, message, .. } if code == "ambiguous_query" => {
            anyhow::anyhow!(message)
        }
        other => other.into(),
    }
}

fn format_line(t: &str, f: &FileInfo) -> String {
    let mut out = String::new();
    let mut chars = t.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('p') => out.push_str(&f.path),
            Some('s') => out.push_str(&f.size.to_string()),
            Some('T') => out.push_str(&f.sha256),
            Some('j') => out.push_str(&f.producer.job),
            Some('S') => out.push_str(f.step.as_deref().unwrap_or("-")),
            Some('a') => out.push_str(&f.producer.attempt.to_string()),
            Some('n') => out.push_str(&f.artifact_name),
            Some('i') => out.push_str(&f.id),
            Some('c') => out.push_str(&f.uploaded_at),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Connects and runs a query in the scoped run: the client, pipeline, run
/// number and matching files.
async fn find(
    server: &ServerArgs,
    scope: &ScopeArgs,
    query: &str,
    for_download: bool,
) -> anyhow::Result<(Client, String, u64, Vec<FileInfo>)> {
    let client = server.client()?;
    let (pipeline, run) = scope.resolve(&client).await?;
    let files = client
        .search(&pipeline, run, &scope.search(query), for_download)
        .await
        .map_err(explain)?;
    Ok((client, pipeline, run, files))
}

/// `satchel artifact search`.
pub async fn run_search(a: SearchArgs) -> anyhow::Result<()> {
    let (_, pipeline, run, files) = find(&a.server, &a.scope, &a.query, false).await?;
    if files.is_empty() && !a.allow_empty_results {
        bail!(
            "no files match {:?} in run {run} of pipeline {pipeline:?}",
            a.query
        );
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &files)?;
        writeln!(out)?;
        return Ok(());
    }
    for f in &files {
        match &a.format {
            Some(t) => writeln!(out, "{}", format_line(t, f))?,
            None => writeln!(
                out,
                "{}\t{}\t{}\tjob={}\tstep={}\tattempt={}\tartifact={}",
                f.path,
                f.size,
                f.sha256,
                f.producer.job,
                f.step.as_deref().unwrap_or("-"),
                f.producer.attempt,
                f.artifact_name
            )?,
        }
    }
    Ok(())
}

/// `satchel artifact shasum`.
pub async fn run_shasum(a: ShasumArgs) -> anyhow::Result<()> {
    let _ = a.sha256;
    let (_, pipeline, run, files) = find(&a.server, &a.scope, &a.query, false).await?;
    match files.as_slice() {
        [] => bail!(
            "no file matches {:?} in run {run} of pipeline {pipeline:?}",
            a.query
        ),
        [f] => {
            writeln!(std::io::stdout().lock(), "{}", f.sha256)?;
            Ok(())
        }
        many => {
            let list: Vec<String> = many.iter().map(satchel_model::query::describe).collect();
            bail!(
                "{} files match {:?}; shasum needs exactly one:\n  {}\nscope with --job, --step or --name, or a more precise query",
                many.len(),
                a.query,
                list.join("\n  ")
            )
        }
    }
}

/// The path under `root` for `rel`, creating directories on the way and
/// refusing anything that could escape `root`, or an existing directory.
fn safe_target(root: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let cur = safe_path(root, rel, &mut KnownDirs::default())?;
    if std::fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir()) {
        bail!(
            "refusing to write {rel:?}: {} is a directory",
            cur.display()
        );
    }
    Ok(cur)
}

/// Directories under the destination already checked to be real
/// directories (made, or found and not a symlink) by one batch of files:
/// each is checked once per batch, not once per file (10,000 small files
/// took three `statx` each).
#[derive(Default)]
struct KnownDirs(std::collections::HashSet<PathBuf>);

/// The path under `root` for `rel`, its directories made or checked on
/// the way (those in `known` are not checked again); nothing that could
/// escape `root`. The last segment is not looked at.
fn safe_path(root: &Path, rel: &str, known: &mut KnownDirs) -> anyhow::Result<PathBuf> {
    satchel_model::path::validate(rel).with_context(|| format!("refusing to write {rel:?}"))?;
    let mut cur = root.to_path_buf();
    let segments: Vec<&str> = rel.split('/').collect();
    for seg in &segments[..segments.len() - 1] {
        cur.push(seg);
        if known.0.contains(&cur) {
            continue;
        }
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "refusing to write {rel:?}: {} exists and is not a directory (symlinks are not followed)",
                cur.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::create_dir(&cur) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if !std::fs::symlink_metadata(&cur)?.is_dir() {
                            bail!("refusing to write {rel:?}: {} is not a directory", cur.display());
                        }
                    }
                    Err(e) => return Err(e).with_context(|| format!("creating {}", cur.display())),
                }
            }
            Err(e) => return Err(e).with_context(|| format!("checking {}", cur.display())),
        }
        known.0.insert(cur.clone());
    }
    cur.push(segments[segments.len() - 1]);
    Ok(cur)
}

fn temp_beside(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    target.with_file_name(format!(
        ".{name}.{}.satchel-tmp",
        satchel_model::id::random_hex(6)
    ))
}

/// What a downloaded file must be.
pub struct Expected {
    /// Stored path, also the target under the destination.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Mode bits.
    pub mode: u32,
}

impl From<&FileInfo> for Expected {
    fn from(f: &FileInfo) -> Expected {
        Expected {
            path: f.path.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            mode: f.mode,
        }
    }
}

pub(crate) fn check(f: &Expected, size: u64, digest: &[u8]) -> anyhow::Result<()> {
    let got = hex::encode(digest);
    if size != f.size || got != f.sha256 {
        bail!(
            "integrity check failed for {}: expected {} bytes with sha256 {}, got {size} bytes with sha256 {got}; nothing was written",
            f.path,
            f.size,
            f.sha256
        );
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o777))
}
#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// Writes one small file of a batch: checked, written to a temp file,
/// renamed into place. A directory where the file goes fails the rename
/// (a symlink there is replaced, never followed).
fn write_small(
    root: &Path,
    f: &Expected,
    data: &[u8],
    known: &mut KnownDirs,
) -> anyhow::Result<()> {
    check(f, data.len() as u64, &Sha256::digest(data))?;
    let mut temp = Temp::beside(safe_path(root, &f.path, known)?);
    // Mode at creation (the umask applies, as with tar): no extra chmod.
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, f.mode & 0o777);
    opts.open(temp.path())
        .and_then(|mut file| file.write_all(data))
        .with_context(|| format!("writing {}", temp.path().display()))?;
    temp.rename(&f.path)
}

/// What the large files of one download share.
struct LargeFiles {
    /// Requests in flight (and pieces held): the concurrency, however
    /// many large files.
    requests: Arc<tokio::sync::Semaphore>,
    /// The server ignored a range request once: no more pieces.
    no_ranges: AtomicBool,
}

async fn fetch_large(
    client: &Client,
    root: &Path,
    f: &FileInfo,
    budget: &LargeFiles,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let window = concurrency();
    if f.size >= RANGED_MIN
        && window > 1
        && !budget.no_ranges.load(Ordering::Relaxed)
        && ranged_downloads(client.base())
    {
        let (c, id) = (client.clone(), f.id.clone());
        let fetch: crate::ranged::FetchPiece = Arc::new(move |start, end| {
            let (c, id) = (c.clone(), id.clone());
            Box::pin(async move { c.file_range(&id, start, end).await })
        });
        match crate::ranged::write_pieces(
            root,
            &Expected::from(f),
            fetch,
            window,
            budget.requests.clone(),
            bar,
        )
        .await
        {
            Err(e) if e.downcast_ref::<crate::ranged::RangesIgnored>().is_some() => {
                if !budget.no_ranges.swap(true, Ordering::Relaxed) {
                    eprintln!("warning: {e}; large files download as one stream each");
                }
            }
            other => return other,
        }
    }
    let _permit = budget.requests.acquire().await?;
    let stream = client.file_content(&f.id).await?;
    write_stream(root, &Expected::from(f), stream, bar).await
}

/// Writes `stream` to a temp file beside `f`'s target under `root`,
/// hashing as it goes, and renames it into place only if size and SHA-256
/// match.
pub async fn write_stream(
    root: &Path,
    f: &Expected,
    mut stream: impl futures_util::Stream<Item = Result<bytes::Bytes, ClientError>> + Unpin,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let temp = prepare_temp(root, f).await?;
    let file = tokio::fs::File::create(temp.path())
        .await
        .with_context(|| format!("creating {}", temp.path().display()))?;
    let mut w = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
    let mut h = Sha256::new();
    let mut n = 0u64;
    let res = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("downloading {}", f.path))?;
            h.update(&chunk);
            n += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
            w.write_all(&chunk).await?;
        }
        w.flush().await?;
        anyhow::Ok(())
    }
    .await;
    if res.is_err() {
        // Taken back: a retry starts the file over.
        bar.dec(n);
    }
    res?;
    drop(w);
    check(f, n, &h.finalize())?;
    temp.finish(f).await
}

/// Where `f` goes under `root` (directories made on the way, nothing
/// followed out of it), and the temp file beside it to write first.
pub(crate) async fn prepare_temp(root: &Path, f: &Expected) -> anyhow::Result<Temp> {
    let (root2, rel) = (root.to_path_buf(), f.path.clone());
    let target = tokio::task::spawn_blocking(move || safe_target(&root2, &rel)).await??;
    Ok(Temp::beside(target))
}

/// A download's temp file beside its target: renamed into place by
/// [`Temp::finish`] once checked, removed if dropped before that (an
/// error, or the download dropped because another file failed).
pub(crate) struct Temp {
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

impl Temp {
    /// A temp file beside `target` (not created yet).
    fn beside(target: PathBuf) -> Temp {
        Temp {
            tmp: temp_beside(&target),
            target,
            done: false,
        }
    }

    /// The temp file to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the written, checked file (`path` in the artifact) into
    /// place, blocking. A directory where the file goes fails it (a
    /// symlink there is replaced, never followed).
    fn rename(&mut self, path: &str) -> anyhow::Result<()> {
        std::fs::rename(&self.tmp, &self.target).map_err(|e| {
            if self.target.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                anyhow::anyhow!(
                    "refusing to write {path:?}: {} is a directory",
                    self.target.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("renaming into {}", self.target.display()))
            }
        })?;
        self.done = true;
        Ok(())
    }

    /// Gives the written, checked file `f`'s mode and renames it into place.
    pub async fn finish(mut self, f: &Expected) -> anyhow::Result<()> {
        set_mode(&self.tmp, f.mode)?;
        let path = f.path.clone();
        tokio::task::spawn_blocking(move || self.rename(&path)).await?
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

async fn fetch_batch(
    client: &Client,
    root: &Path,
    files: Vec<FileInfo>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let ids = files.iter().map(|f| f.id.clone()).collect();
    // Whole before anything is written, so a cut answer counts nothing.
    let body: Vec<bytes::Bytes> = client.files_content(ids).await?.try_collect().await?;
    let body = body.concat();
    let root = root.to_path_buf();
    let bar = bar.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut frames = FileBatch::new(&body);
        let mut known = KnownDirs::default();
        for f in &files {
            let data = frames
                .next_frame(f.size)
                .with_context(|| format!("batch response for {}", f.path))?;
            write_small(&root, &Expected::from(f), data, &mut known)?;
            bar.inc(data.len() as u64);
        }
        frames.finish().context("batch response")?;
        Ok(())
    })
    .await?
}

/// Downloads `files` under `root` (created if needed): small files many
/// per request, large ones streamed, several at a time, each verified.
pub async fn fetch_files(
    client: &Client,
    root: &Path,
    files: Vec<FileInfo>,
    quiet: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = bytes_bar(total, "downloading", quiet);
    let work = plan(files, |f| f.size);
    let large = Arc::new(LargeFiles {
        requests: Arc::new(tokio::sync::Semaphore::new(concurrency())),
        no_ranges: AtomicBool::new(false),
    });
    futures_util::stream::iter(work)
        .map(|group| {
            let (client, root, bar) = (client.clone(), root.to_path_buf(), bar.clone());
            let large = large.clone();
            async move {
                // An answer cut short, or refused for a passing reason, is
                // asked for again: the file (or batch) starts over.
                match group {
                    Work::Single(f) => {
                        let what = format!("downloading {}", f.path);
                        retrying(&what, || fetch_large(&client, &root, &f, &large, &bar)).await
                    }
                    Work::Batch(files) => {
                        let what = format!("downloading a batch of {} small files", files.len());
                        retrying(&what, || fetch_batch(&client, &root, files.clone(), &bar)).await
                    }
                }
            }
        })
        .buffer_unordered(concurrency())
        .try_collect::<Vec<()>>()
        .await?;
    bar.finish_and_clear();
    Ok(())
}

#[derive(Serialize)]
struct DownloadSummary {
    files: u64,
    bytes: u64,
    destination: String,
}

/// `satchel artifact download`.
pub async fn run_download(a: DownloadArgs) -> anyhow::Result<()> {
    let (client, pipeline, run, files) = find(&a.server, &a.scope, &a.query, true).await?;
    if files.is_empty() {
        bail!(
            "no files match {:?} in run {run} of pipeline {pipeline:?} (files of retried jobs need --include-retried-jobs)",
            a.query
        );
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let count = files.len() as u64;
    fetch_files(&client, &a.dest, files, a.quiet || a.json).await?;
    let summary = DownloadSummary {
        files: count,
        bytes: total,
        destination: a.dest.display().to_string(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!(
            "downloaded {} ({}) to {}, all sha256-verified",
            crate::output::count(summary.files, "file", "files"),
            human(summary.bytes),
            summary.destination
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_never_leave_the_destination() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("dest");
        std::fs::create_dir(&root).unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../x", "a\\..\\x", ""] {
            assert!(safe_target(&root, bad).is_err(), "{bad:?}");
        }
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let err = safe_target(&root, "link/x.txt").unwrap_err().to_string();
        assert!(err.contains("symlinks are not followed"), "{err}");
        assert_eq!(
            safe_target(&root, "a/b/c.txt").unwrap(),
            root.join("a/b/c.txt")
        );
        assert!(root.join("a/b").is_dir());
    }

    fn fixture(path: &str, size: u64, sha256: String) -> FileInfo {
        FileInfo {
            id: "0".repeat(32),
            artifact_id: "0".repeat(32),
            artifact_name: "n".into(),
            path: path.into(),
            size,
            sha256,
            mode: 0o644,
            content_type: "text/plain".into(),
            step: None,
            producer: satchel_model::api::Producer {
                pipeline: "p".into(),
                run: 1,
                stage: None,
                job: "j".into(),
                attempt: 2,
                superseded: false,
            },
            source_path: None,
            glob: None,
            uploaded_at: "t".into(),
            uploaded_at_ms: 0,
        }
    }

    #[test]
    fn corrupted_content_is_never_written() {
        let d = tempfile::tempdir().unwrap();
        let f = fixture("x.txt", 5, hex::encode(Sha256::digest(b"hello")));
        let f = Expected::from(&f);
        let known = &mut KnownDirs::default();
        let err = write_small(d.path(), &f, b"hellp", known)
            .unwrap_err()
            .to_string();
        assert!(err.contains("integrity check failed"), "{err}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        write_small(d.path(), &f, b"hello", known).unwrap();
        assert_eq!(std::fs::read(d.path().join("x.txt")).unwrap(), b"hello");
    }

    #[test]
    fn a_batch_checks_each_directory_once_and_never_writes_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("dest");
        std::fs::create_dir(&root).unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::fs::create_dir_all(root.join("a/dir.txt")).unwrap();
        let known = &mut KnownDirs::default();
        let file =
            |path: &str| Expected::from(&fixture(path, 5, hex::encode(Sha256::digest(b"hello"))));
        write_small(&root, &file("a/b/one.txt"), b"hello", known).unwrap();
        assert!(known.0.contains(&root.join("a/b")), "a/b was checked");
        write_small(&root, &file("a/b/two.txt"), b"hello", known).unwrap();
        assert_eq!(std::fs::read(root.join("a/b/two.txt")).unwrap(), b"hello");
        // A symlinked directory is refused, whatever was checked before.
        let err = write_small(&root, &file("link/x.txt"), b"hello", known)
            .unwrap_err()
            .to_string();
        assert!(err.contains("symlinks are not followed"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // A directory where the file goes: refused, no temp file left.
        let err = write_small(&root, &file("a/dir.txt"), b"hello", known)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a directory"), "{err}");
        let mut left: Vec<_> = std::fs::read_dir(root.join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["b", "dir.txt"]);
        // A file replacing the symlink's target name replaces the link, not
        // what it points to.
        std::os::unix::fs::symlink(outside.join("victim"), root.join("a/b/ln.txt")).unwrap();
        write_small(&root, &file("a/b/ln.txt"), b"hello", known).unwrap();
        assert!(!outside.join("victim").exists());
        assert!(root
            .join("a/b/ln.txt")
            .symlink_metadata()
            .unwrap()
            .is_file());
    }

    #[test]
    fn format_templates() {
        let mut f = fixture("p", 3, "s".into());
        f.id = "i".into();
        assert_eq!(
            format_line("%p %s %T %j %S %a %n %i %c %% %z", &f),
            "p 3 s j - 2 n i t % %z"
        );
        f.step = Some("st".into());
        assert_eq!(format_line("%S%", &f), "st%");
    }
}
