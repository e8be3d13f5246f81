//! `satchel artifact upload`: find files by glob, hash them in parallel,
//! announce the manifest, send only what the server lacks (small files
//! framed many per request, large files streamed), then finish.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Args;
use futures_util::{StreamExt, TryStreamExt};
use satchel_model::api::{CreateUpload, NewFile};
use satchel_model::frames::ChunkRecord;
use satchel_model::glob::Glob;
use satchel_model::path::clean_relative;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::context::{JobArgs, ServerArgs};
use crate::output::{bytes_bar, human};
use crate::transfer::{concurrency, is_transient, plan, retrying, retrying_if, Work};

/// Options of `satchel artifact upload`.
#[derive(Args, Debug)]
pub struct UploadArgs {
    /// Glob patterns (`*`, `**`, `?`, `{a,b}`, `[abc]`), also split on the
    /// delimiter. A pattern starting with `!` excludes the files it matches.
    #[arg(required = true)]
    patterns: Vec<String>,
    /// Artifact name (default: the job's default artifact).
    #[arg(long)]
    name: Option<String>,
    /// The artifact must be new: fail if the run already has one of this
    /// name, even from this job (GitHub's artifacts are immutable).
    #[arg(long, requires = "name")]
    exclusive: bool,
    /// Replace the run's artifact of this name, whichever job uploaded it
    /// (GitHub's `overwrite: true`): the new one is swapped in when it is
    /// complete, so a reader gets the old one or the new one, never
    /// neither. Implies `--exclusive`; the token must be allowed to delete
    /// the artifact it replaces.
    #[arg(long, requires = "name")]
    replace: bool,
    /// Content type for every file (default: from the extension).
    #[arg(long)]
    content_type: Option<String>,
    /// Split patterns on this string; empty disables splitting.
    #[arg(long, default_value = ";")]
    delimiter: String,
    /// Treat patterns as literal paths, not globs.
    #[arg(long)]
    literal: bool,
    /// Expire the artifact after this long (e.g. 7d, 12h; default: the
    /// server's retention, 180 days unless configured).
    #[arg(long, value_parser = parse_expire)]
    expire_in: Option<u64>,
    /// Skip symbolic links instead of uploading their targets.
    #[arg(long)]
    skip_symlinks: bool,
    /// Skip hidden files and directories (names starting with `.`).
    #[arg(long)]
    skip_hidden: bool,
    /// Store paths relative to the deepest directory the patterns share
    /// (a glob's directory before its first wildcard, a directory itself,
    /// a file's parent), and upload a directory's files when a pattern
    /// names one: GitHub's upload-artifact `path`. Default: paths relative
    /// to the working directory, and every pattern must match a file.
    #[arg(long)]
    common_root: bool,
    /// What to do when the patterns match no file at all: error, warn or
    /// ignore (both exit 0 without uploading). Given, a single pattern
    /// may match nothing (GitHub's `if-no-files-found`).
    #[arg(long, value_parser = ["error", "warn", "ignore"])]
    if_no_files_found: Option<String>,
    /// Upload files that symbolic links lead to even outside the working
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

/// Parses `--expire-in`.
pub fn parse_expire(s: &str) -> Result<u64, String> {
    satchel_model::api::parse_duration(s)
}

/// A local file to upload and the path it is stored under.
#[derive(Debug, Clone)]
pub struct Found {
    /// Where it is on disk.
    pub abs: PathBuf,
    /// Its normalized path in the artifact.
    pub stored: String,
    /// The pattern (or published path) that matched it.
    pub glob: String,
}

#[derive(Debug, Clone)]
struct Hashed {
    found: Found,
    size: u64,
    sha256: String,
    mode: u32,
    /// For a file of [`CHUNKED_MIN`] or more: its chunks in order (size,
    /// SHA-256: 36 bytes each, about 2.7 MB for 6 GiB), cut while it was
    /// hashed.
    chunks: Option<std::sync::Arc<Vec<ChunkRecord>>>,
}

/// What an upload did.
#[derive(Serialize)]
pub struct Summary {
    artifact_id: String,
    artifact: String,
    files: u64,
    bytes: u64,
    files_sent: u64,
    bytes_sent: u64,
    already_present: u64,
}

/// Lexical `path` relative to `base` (both absolute), with `..` where needed.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<Component> = path.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// Lexically normalizes an absolute path (`.` and `..` resolved).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn stored_path(abs: &Path, cwd: &Path) -> anyhow::Result<String> {
    let rel = relative_to(abs, cwd);
    let s = rel
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", abs.display()))?;
    Ok(clean_relative(s)?)
}

/// Byte index in `pattern` just past the `n`-th unescaped `/`.
fn after_segments(pattern: &str, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let mut seen = 0;
    let mut esc = false;
    for (i, c) in pattern.char_indices() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            '\\' => esc = true,
            '/' => {
                seen += 1;
                if seen == n {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    pattern.len()
}

/// Where symbolic links may lead: `None` anywhere, else inside this
/// (canonical) directory.
pub type LinkRoot<'a> = Option<&'a Path>;

/// Refuses `path` if it resolves (through any symbolic link on the way)
/// to somewhere outside `root`. `flag` is the option that allows it.
pub fn ensure_inside(path: &Path, root: LinkRoot<'_>, flag: &str) -> anyhow::Result<()> {
    let Some(root) = root else { return Ok(()) };
    let real =
        std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    if !real.starts_with(root) {
        bail!(
            "{} is a symbolic link (or lies under one) that leads outside {}, to {}; refusing to upload it (pass {flag} to allow it)",
            path.display(),
            root.display(),
            real.display()
        );
    }
    Ok(())
}

/// The canonical directory that links found under `base` must stay in:
/// the working directory when `base` is inside it, else `base` itself.
/// `None` if it does not exist (then nothing is found under it either).
pub fn link_root(base: &Path, cwd: &Path) -> Option<PathBuf> {
    let root = if base.starts_with(cwd) { cwd } else { base };
    std::fs::canonicalize(root).ok()
}

/// How [`find_files`] looks for files.
#[derive(Debug, Clone, Copy, Default)]
struct Finding {
    /// Patterns are literal paths.
    literal: bool,
    skip_symlinks: bool,
    allow_outside: bool,
    skip_hidden: bool,
    /// `--common-root`.
    common_root: bool,
    /// A pattern may match nothing (`--if-no-files-found` given).
    misses_ok: bool,
}

fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Files under `dir` whose path below the walk's start (`rel` so far)
/// `glob` matches. With `whole_dirs`, a directory the glob matches
/// brings every file under it (GitHub's upload-artifact).
fn walk(
    dir: &Path,
    rel: &str,
    glob: &Glob,
    (skip_symlinks, inside, skip_hidden, whole_dirs): (bool, LinkRoot<'_>, bool, bool),
    out: &mut Vec<(PathBuf, String)>,
) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading directory {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading directory {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            eprintln!(
                "warning: skipping {} (name is not UTF-8)",
                entry.path().display()
            );
            continue;
        };
        if skip_hidden && hidden(&name) {
            continue;
        }
        let child_rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type()?;
        let path = entry.path();
        if ft.is_dir() {
            let glob = if whole_dirs && glob.is_match(&child_rel) {
                &Glob::new("**")?
            } else {
                glob
            };
            walk(
                &path,
                &child_rel,
                glob,
                (skip_symlinks, inside, skip_hidden, whole_dirs),
                out,
            )?;
        } else if ft.is_symlink() {
            if skip_symlinks {
                continue;
            }
            // Symlinks to files are uploaded as their targets, if those
            // stay inside; symlinked directories are not followed.
            if std::fs::metadata(&path)
                .map(|m| m.is_file())
                .unwrap_or(false)
                && glob.is_match(&child_rel)
            {
                ensure_inside(&path, inside, "--allow-links-outside")?;
                out.push((path, child_rel));
            }
        } else if ft.is_file() && glob.is_match(&child_rel) {
            out.push((path, child_rel));
        }
    }
    Ok(())
}

/// Every file the patterns match, de-duplicated, in a stable order,
/// without those a `!` pattern matches.
fn find_files(patterns: &[String], how: Finding, cwd: &Path) -> anyhow::Result<Vec<Found>> {
    const FLAG: &str = "--allow-links-outside";
    let allow_outside = how.allow_outside;
    let mut out: BTreeMap<PathBuf, Found> = BTreeMap::new();
    // Each pattern's directory, for --common-root.
    let mut roots: Vec<PathBuf> = Vec::new();
    let mut excludes: Vec<(PathBuf, Glob)> = Vec::new();
    for pattern in patterns {
        if let Some(ex) = pattern.strip_prefix('!').filter(|_| !how.literal) {
            let ex = ex.strip_prefix("./").unwrap_or(ex);
            let (root, pat) = match ex.strip_prefix('/') {
                Some(r) => (PathBuf::from("/"), r),
                None => (cwd.to_path_buf(), ex),
            };
            let g = Glob::new(pat).with_context(|| format!("invalid pattern {pattern:?}"))?;
            excludes.push((root, g));
            continue;
        }
        let mut matched = Vec::new();
        let trimmed = pattern.strip_prefix("./").unwrap_or(pattern);
        let (root, pat) = match trimmed.strip_prefix('/') {
            Some(r) => (PathBuf::from("/"), r),
            None => (cwd.to_path_buf(), trimmed),
        };
        let literal_path = if how.literal {
            Some(pat.to_string())
        } else {
            let g = Glob::new(pat).with_context(|| format!("invalid pattern {pattern:?}"))?;
            match g.literal_path() {
                Some(p) => Some(p),
                None => {
                    let prefix = g.literal_prefix();
                    let nseg = if prefix.is_empty() {
                        0
                    } else {
                        prefix.split('/').count()
                    };
                    let rest = &pat[after_segments(pat, nseg)..];
                    let base = lexical(&root.join(&prefix));
                    let rest_glob =
                        Glob::new(rest).with_context(|| format!("invalid pattern {pattern:?}"))?;
                    let mut hits = Vec::new();
                    let root = (!allow_outside).then(|| link_root(&base, cwd)).flatten();
                    if root.is_some() && base.exists() {
                        // The pattern's own directories may be links too.
                        ensure_inside(&base, root.as_deref(), FLAG)?;
                    }
                    walk(
                        &base,
                        "",
                        &rest_glob,
                        (
                            how.skip_symlinks,
                            root.as_deref(),
                            how.skip_hidden,
                            how.common_root,
                        ),
                        &mut hits,
                    )?;
                    matched.extend(hits.into_iter().map(|(p, _)| p));
                    roots.push(base);
                    None
                }
            }
        };
        if let Some(p) = literal_path {
            let abs = lexical(&root.join(&p));
            // Named, it counts for the common root even when missing, as
            // in GitHub's upload-artifact.
            roots.push(abs.clone());
            let meta = std::fs::symlink_metadata(&abs);
            let is_hidden = abs.file_name().and_then(|n| n.to_str()).is_some_and(hidden);
            match meta {
                Err(_) => {}
                Ok(_) if how.skip_hidden && is_hidden => continue,
                Ok(m) if m.file_type().is_symlink() && how.skip_symlinks => {
                    eprintln!("warning: skipping symlink {p}");
                    continue;
                }
                Ok(_) => match std::fs::metadata(&abs) {
                    Ok(m) if m.is_dir() && how.common_root => {
                        let inside = (!allow_outside).then(|| link_root(&abs, cwd)).flatten();
                        if inside.is_some() {
                            ensure_inside(&abs, inside.as_deref(), FLAG)?;
                        }
                        let mut hits = Vec::new();
                        walk(
                            &abs,
                            "",
                            &Glob::new("**")?,
                            (how.skip_symlinks, inside.as_deref(), how.skip_hidden, false),
                            &mut hits,
                        )?;
                        matched.extend(hits.into_iter().map(|(p, _)| p));
                    }
                    Ok(m) if m.is_dir() => {
                        eprintln!("warning: {p} is a directory; skipping (use {p}/** to upload its files)");
                        continue;
                    }
                    Ok(_) => {
                        if !allow_outside {
                            let parent = abs.parent().unwrap_or(Path::new("/"));
                            ensure_inside(&abs, link_root(parent, cwd).as_deref(), FLAG)?;
                        }
                        matched.push(abs)
                    }
                    Err(_) => {}
                },
            }
        }
        if matched.is_empty() && !how.misses_ok {
            bail!(
                "no files match pattern {pattern:?} (relative to {})",
                cwd.display()
            );
        }
        for abs in matched {
            out.entry(abs.clone()).or_insert(Found {
                abs,
                stored: String::new(),
                glob: pattern.clone(),
            });
        }
    }
    // An exclusion that matches a directory excludes what is under it.
    out.retain(|abs, _| {
        !excludes.iter().any(|(root, g)| {
            abs.strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .is_some_and(|rel| {
                    rel.match_indices('/')
                        .map(|(i, _)| &rel[..i])
                        .chain(std::iter::once(rel))
                        .any(|prefix| g.is_match(prefix))
                })
        })
    });
    // Stored paths: relative to the working directory, or to the deepest
    // directory every pattern's lies in (a file's own: its parent).
    let base = match roots.split_first() {
        Some((first, rest)) if how.common_root => {
            let common: PathBuf = rest.iter().fold(first.clone(), |acc, r| {
                acc.components()
                    .zip(r.components())
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| a.as_os_str())
                    .collect()
            });
            if common.is_dir() {
                common
            } else {
                common.parent().unwrap_or(Path::new("/")).to_path_buf()
            }
        }
        _ => cwd.to_path_buf(),
    };
    for f in out.values_mut() {
        f.stored = stored_path(&f.abs, &base)?;
    }
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for f in out.values() {
        if let Some(other) = seen.insert(f.stored.clone(), f.abs.clone()) {
            bail!(
                "{} and {} would both be stored as {:?}",
                other.display(),
                f.abs.display(),
                f.stored
            );
        }
    }
    Ok(out.into_values().collect())
}

/// Files at least this large go chunk by chunk when the server already
/// holds some of their content.
const CHUNKED_MIN: u64 = 8 * 1024 * 1024;

/// Cuts a stream of blocks into content-defined chunks with the store's
/// own chunker ([`satchel_store::chunked::Chunker`]), with each chunk's
/// size and SHA-256. Runs on its own thread while the whole file is
/// hashed.
fn chunk_blocks(blocks: std::sync::mpsc::Receiver<Vec<u8>>) -> Vec<ChunkRecord> {
    let mut chunker = satchel_store::chunked::Chunker::new();
    let mut out = Vec::new();
    let mut eof = false;
    loop {
        while chunker.wants_more() && !eof {
            match blocks.recv() {
                Ok(b) => chunker.buffer().extend_from_slice(&b),
                Err(_) => eof = true,
            }
        }
        let Some(chunk) = chunker.next(eof) else {
            break;
        };
        let size = u32::try_from(chunk.len()).expect("a chunk is at most 256 KiB");
        out.push((size, Sha256::digest(&chunk).into()));
    }
    out
}

/// Times a large file's chunks are asked for, sent and assembled before
/// `chunk_missing` (chunks collected between sending and assembling) is
/// final.
const ASSEMBLE_ATTEMPTS: u32 = 3;

/// Sends a large file: only the chunks the server lacks, when it holds
/// some; else the whole file in one stream. Returns the bytes sent. Each
/// request is retried after a transient failure
/// ([`crate::transfer::retrying`]); an assembly that finds a chunk
/// collected since the server said it held it asks again which to send.
async fn send_large(
    client: &satchel_client::Client,
    upload_id: &str,
    h: &Hashed,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    // Bytes of this file the progress bar shows.
    let mut shown = 0u64;
    let mut sent = 0u64;
    if let Some(chunks) = &h.chunks {
        let list: &[ChunkRecord] = chunks;
        for attempt in 1..=ASSEMBLE_ATTEMPTS {
            let what = format!("asking which chunks of {} to send", h.found.stored);
            let missing = retrying(&what, || async {
                client
                    .chunks_missing(upload_id, &h.sha256, list)
                    .await
                    .with_context(|| what.clone())
            })
            .await?
            .missing;
            if missing.iter().any(|&i| i >= chunks.len()) || !missing.is_sorted_by(|a, b| a < b) {
                bail!(
                    "the server's list of missing chunks of {} is not ascending indices into its {} chunks",
                    h.found.stored,
                    chunks.len()
                );
            }
            if missing.len() == chunks.len() {
                // Nothing to gain from chunks: the whole file, below.
                break;
            }
            // The bar shows all but these now, and the whole file once
            // they are sent.
            let held = h.size - missing.iter().map(|&i| u64::from(chunks[i].0)).sum::<u64>();
            bar.dec(shown.saturating_sub(held));
            bar.inc(held.saturating_sub(shown));
            sent += send_chunks(client, upload_id, h, chunks, &missing, bar).await?;
            shown = h.size;
            let what = format!("assembling {} from its chunks", h.found.stored);
            // A chunk gone, or aged, since the server said it held it: not
            // the same request again, but a new round (ask, send, assemble).
            let same_again = |e: &anyhow::Error| is_transient(e) && !new_round(e);
            let assembled = retrying_if(&what, &same_again, || async {
                client
                    .assemble(upload_id, &h.sha256, list)
                    .await
                    .with_context(|| what.clone())
            })
            .await;
            match assembled {
                Ok(_) => return Ok(sent),
                Err(e) if attempt < ASSEMBLE_ATTEMPTS && new_round(&e) => {
                    eprintln!("warning: {e:#}; sending the missing chunks again");
                }
                Err(e) => return Err(e),
            }
        }
    }
    let what = format!("uploading {}", h.found.stored);
    // What the attempt under way has added to the bar; a retry starts the
    // file over and takes it back.
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(shown));
    retrying(&what, || {
        bar.dec(counted.swap(0, std::sync::atomic::Ordering::Relaxed));
        let (b, c, what) = (bar.clone(), counted.clone(), what.clone());
        async move {
            let file = tokio::fs::File::open(&h.found.abs)
                .await
                .with_context(|| format!("opening {}", h.found.abs.display()))?;
            let stream =
                tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |r| {
                    if let Ok(chunk) = r {
                        b.inc(chunk.len() as u64);
                        c.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            client
                .put_blob(upload_id, &h.sha256, h.size, stream)
                .await
                .with_context(|| what)
        }
    })
    .await?;
    Ok(sent + h.size)
}

/// Sends the chunks of `h` at the indexes `missing`, [`concurrency`] at
/// once, each retried after a transient failure; the bytes sent.
async fn send_chunks(
    client: &satchel_client::Client,
    upload_id: &str,
    h: &Hashed,
    chunks: &[ChunkRecord],
    missing: &[usize],
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    // Where each missing chunk starts in the file.
    let mut offsets = Vec::with_capacity(missing.len());
    let (mut at, mut next) = (0u64, missing.iter().peekable());
    for (i, (size, _)) in chunks.iter().enumerate() {
        if next.peek() == Some(&&i) {
            offsets.push(at);
            next.next();
        }
        at += u64::from(*size);
    }
    futures_util::stream::iter(missing.iter().zip(offsets))
        .map(|(&i, offset)| {
            let (size, digest) = chunks[i];
            let path = h.found.abs.clone();
            async move {
                let data = tokio::task::spawn_blocking(move || -> anyhow::Result<Bytes> {
                    use std::io::{Seek, SeekFrom};
                    let mut f = std::fs::File::open(&path)?;
                    f.seek(SeekFrom::Start(offset))?;
                    let mut data = vec![0u8; size as usize];
                    f.read_exact(&mut data)?;
                    Ok(data.into())
                })
                .await??;
                let (what, hex) = (
                    format!("uploading a chunk of {}", h.found.stored),
                    hex::encode(digest),
                );
                retrying(&what, || async {
                    client
                        .put_chunk(upload_id, &hex, data.clone())
                        .await
                        .with_context(|| what.clone())
                })
                .await?;
                bar.inc(u64::from(size));
                anyhow::Ok(u64::from(size))
            }
        })
        .buffer_unordered(concurrency())
        .try_fold(0u64, |a, n| async move { Ok(a + n) })
        .await
}

/// Whether an assembly failed because a chunk it names is not stored
/// (`chunk_missing`), or was collected or aged while it ran (`retry`): the
/// server now answers those chunks missing, and they are sent again.
fn new_round(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<satchel_client::ClientError>(),
            Some(satchel_client::ClientError::Api { code, .. })
                if code == "chunk_missing" || code == "retry"
        )
    })
}

fn hash_file(found: Found) -> anyhow::Result<Hashed> {
    let mut f = std::fs::File::open(&found.abs)
        .with_context(|| format!("opening {}", found.abs.display()))?;
    let meta = f.metadata()?;
    #[cfg(unix)]
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
    #[cfg(not(unix))]
    let mode = 0o644;
    let mut h = Sha256::new();
    let mut size = 0u64;
    let mut read = |h: &mut Sha256, each: &mut dyn FnMut(&[u8])| -> anyhow::Result<()> {
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", found.abs.display()))?;
            if n == 0 {
                return Ok(());
            }
            h.update(&buf[..n]);
            each(&buf[..n]);
            size += n as u64;
        }
    };
    let mut chunks = None;
    if meta.len() >= CHUNKED_MIN {
        // One read: the whole-file hash here, the chunks on a second thread.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let cut = std::thread::scope(|scope| -> anyhow::Result<_> {
            let chunker = scope.spawn(move || chunk_blocks(rx));
            read(&mut h, &mut |b| {
                let _ = tx.send(b.to_vec());
            })?;
            drop(tx);
            Ok(chunker.join().expect("chunker panicked"))
        })?;
        chunks = Some(std::sync::Arc::new(cut));
    } else {
        read(&mut h, &mut |_| {})?;
    }
    // The chunks and the size come from the same read, so they agree; a
    // file that changes after it was read fails the server's hash check.
    if size < CHUNKED_MIN {
        chunks = None;
    }
    Ok(Hashed {
        found,
        size,
        sha256: hex::encode(h.finalize()),
        mode,
        chunks,
    })
}

/// Runs the command.
pub async fn run(a: UploadArgs) -> anyhow::Result<()> {
    let ctx = a.job.context()?;
    let client = a.server.client()?;
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let mut patterns = Vec::new();
    for p in &a.patterns {
        if a.delimiter.is_empty() {
            patterns.push(p.clone());
        } else {
            patterns.extend(
                p.split(a.delimiter.as_str())
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
    }
    if patterns.is_empty() {
        bail!("no patterns given");
    }
    let how = Finding {
        literal: a.literal,
        skip_symlinks: a.skip_symlinks,
        allow_outside: a.allow_links_outside,
        skip_hidden: a.skip_hidden,
        common_root: a.common_root,
        misses_ok: a.if_no_files_found.is_some(),
    };
    let cwd2 = cwd.clone();
    let found = tokio::task::spawn_blocking(move || find_files(&patterns, how, &cwd2)).await??;
    if found.is_empty() {
        let what = format!("no files match {}", a.patterns.join(" "));
        match a.if_no_files_found.as_deref() {
            Some("ignore") => return Ok(()),
            Some("warn") => {
                eprintln!("warning: {what}; nothing uploaded");
                return Ok(());
            }
            _ => bail!("{what}"),
        }
    }

    let how = Sending {
        name: a.name.clone(),
        exclusive: a.exclusive || a.replace,
        replace: a.replace,
        expire_in_secs: a.expire_in,
        content_type: a.content_type.clone(),
        quiet: a.quiet || a.json,
    };
    send_and_report(&client, &ctx, how, found, a.json).await
}

/// [`send`], then a JSON summary on stdout or one line on stderr.
pub async fn send_and_report(
    client: &satchel_client::Client,
    ctx: &satchel_model::api::JobContext,
    how: Sending,
    found: Vec<Found>,
    json: bool,
) -> anyhow::Result<()> {
    let summary = send(client, ctx, how, found).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!("{}", summary.describe(ctx));
    }
    Ok(())
}

/// How [`send`] uploads.
pub struct Sending {
    /// Artifact name; `None` for the job's default artifact.
    pub name: Option<String>,
    /// Publish semantics: the name must be new in the run.
    pub exclusive: bool,
    /// Replace the run's artifact of the name when done (`--replace`).
    pub replace: bool,
    /// Seconds until the artifact expires (default: the server's).
    pub expire_in_secs: Option<u64>,
    /// Content type for every file.
    pub content_type: Option<String>,
    /// No progress bar.
    pub quiet: bool,
}

impl Summary {
    /// One line for people.
    pub fn describe(&self, ctx: &satchel_model::api::JobContext) -> String {
        format!(
            "uploaded {} ({}) to artifact {:?} of {} run {} job {}; sent {} ({}), {} deduplicated",
            crate::output::count(self.files, "file", "files"),
            human(self.bytes),
            self.artifact,
            ctx.pipeline,
            ctx.run,
            ctx.job,
            human(self.bytes_sent),
            crate::output::count(self.files_sent, "new blob", "new blobs"),
            human(self.bytes - self.bytes_sent),
        )
    }
}

/// Hashes `found` in parallel, announces the manifest, sends what the
/// server lacks and finishes the upload (or aborts it on failure).
pub async fn send(
    client: &satchel_client::Client,
    ctx: &satchel_model::api::JobContext,
    how: Sending,
    found: Vec<Found>,
) -> anyhow::Result<Summary> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    // Files are hashed in groups so that many small files do not each cost
    // a trip to the blocking pool; groups stay small enough to share work.
    let group = (found.len() / (workers * 8)).clamp(1, 256);
    let mut groups = Vec::new();
    let mut found = found.into_iter().peekable();
    while found.peek().is_some() {
        groups.push(found.by_ref().take(group).collect::<Vec<_>>());
    }
    let hashed: Vec<Hashed> = futures_util::stream::iter(groups)
        .map(|g| {
            tokio::task::spawn_blocking(move || {
                g.into_iter()
                    .map(hash_file)
                    .collect::<anyhow::Result<Vec<_>>>()
            })
        })
        .buffered(workers)
        .map(|r| r.context("hashing task failed").and_then(|x| x))
        .try_collect::<Vec<Vec<Hashed>>>()
        .await?
        .into_iter()
        .flatten()
        .collect();

    let files: Vec<NewFile> = hashed
        .iter()
        .map(|h| NewFile {
            path: h.found.stored.clone(),
            size: h.size,
            sha256: h.sha256.clone(),
            mode: h.mode,
            content_type: how.content_type.clone(),
            source_path: h.found.abs.to_str().map(String::from),
            glob: Some(h.found.glob.clone()),
        })
        .collect();
    let total_bytes: u64 = hashed.iter().map(|h| h.size).sum();
    let created = client
        .create_upload(&CreateUpload {
            context: ctx.clone(),
            name: how.name.clone(),
            files,
            exclusive: how.exclusive,
            replace: how.replace,
            expire_in_secs: how.expire_in_secs,
        })
        .await?;

    // One local file per missing digest.
    let missing: HashSet<&str> = created.missing.iter().map(String::as_str).collect();
    let mut to_send: Vec<Hashed> = Vec::new();
    let mut picked = HashSet::new();
    for h in &hashed {
        if missing.contains(h.sha256.as_str()) && picked.insert(h.sha256.clone()) {
            to_send.push(h.clone());
        }
    }
    let bytes_to_send: u64 = to_send.iter().map(|h| h.size).sum();
    let files_sent = to_send.len() as u64;
    // What actually goes over the wire: large files may send only the
    // chunks the server lacks.
    let sent_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let transfers = plan(to_send, |h| h.size);

    let bar = bytes_bar(bytes_to_send, "uploading", how.quiet);
    let upload_id = created.upload_id.clone();
    let result: anyhow::Result<()> = futures_util::stream::iter(transfers)
        .map(|t| {
            let (client, id, bar) = (client.clone(), upload_id.clone(), bar.clone());
            let sent_bytes = sent_bytes.clone();
            async move {
                match t {
                    Work::Batch(items) => {
                        let framed = tokio::task::spawn_blocking(
                            move || -> anyhow::Result<(Vec<u8>, u64)> {
                                let mut body = Vec::new();
                                let mut n = 0;
                                for h in &items {
                                    let data = std::fs::read(&h.found.abs).with_context(|| {
                                        format!("reading {}", h.found.abs.display())
                                    })?;
                                    if data.len() as u64 != h.size {
                                        bail!("{} changed while uploading", h.found.abs.display());
                                    }
                                    let digest: [u8; 32] = hex::decode(&h.sha256)?
                                        .try_into()
                                        .map_err(|_| anyhow::anyhow!("bad digest {}", h.sha256))?;
                                    satchel_model::frames::push_blob_frame(
                                        &mut body, &digest, &data,
                                    );
                                    n += h.size;
                                }
                                Ok((body, n))
                            },
                        )
                        .await??;
                        let (body, n) = (Bytes::from(framed.0), framed.1);
                        let what = "uploading a batch of small files";
                        retrying(what, || async {
                            client.put_blob_batch(&id, body.clone()).await.context(what)
                        })
                        .await?;
                        bar.inc(n);
                        sent_bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Work::Single(h) => {
                        let n = send_large(&client, &id, &h, &bar).await?;
                        sent_bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency())
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ());
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = client.abort_upload(&upload_id).await;
        return Err(e);
    }
    let finished = client.finish_upload(&upload_id).await?;
    let summary = Summary {
        artifact_id: finished.artifact.id.clone(),
        artifact: finished.artifact.name.clone(),
        files: hashed.len() as u64,
        bytes: total_bytes,
        files_sent,
        bytes_sent: sent_bytes.load(std::sync::atomic::Ordering::Relaxed),
        already_present: created.already_present,
    };
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent must cut a file exactly as the store will, whatever
    /// sizes its reads come in, or asking which chunks the server lacks
    /// finds none and dedup silently ends.
    #[test]
    fn the_agent_cuts_chunks_as_the_store_does() {
        let data = satchel_store::conformance::random_bytes(5 * 1024 * 1024 + 77, 5);
        let want: Vec<ChunkRecord> = satchel_store::chunked::cuts(&data)
            .map(|r| (r.len() as u32, Sha256::digest(&data[r]).into()))
            .collect();
        assert!(want.len() > 40, "{} chunks", want.len());
        for block in [1024 * 1024, 37, 300_000] {
            let (tx, rx) = std::sync::mpsc::channel();
            for b in data.chunks(block) {
                tx.send(b.to_vec()).unwrap();
            }
            drop(tx);
            assert_eq!(chunk_blocks(rx), want, "reads of {block} bytes");
        }
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/a/b/c"), Path::new("/a")),
            PathBuf::from("b/c")
        );
        assert_eq!(
            relative_to(Path::new("/x/y"), Path::new("/a/b")),
            PathBuf::from("../../x/y")
        );
        assert_eq!(
            stored_path(Path::new("/tmp/out/x.txt"), Path::new("/work/job")).unwrap(),
            "tmp/out/x.txt"
        );
        assert_eq!(lexical(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
    }

    /// `--common-root`, `!` exclusions, `--skip-hidden` and tolerated
    /// misses: GitHub's upload-artifact `path` rules.
    #[test]
    fn common_root_exclusions_and_hidden_files() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in [
            "dist/a.js",
            "dist/sub/b.js",
            "dist/.hidden",
            "README.md",
            "logs/x.log",
        ] {
            std::fs::create_dir_all(r.join(f).parent().unwrap()).unwrap();
            std::fs::write(r.join(f), f).unwrap();
        }
        let find = |pats: &[&str], how: Finding| -> anyhow::Result<Vec<String>> {
            let pats: Vec<String> = pats.iter().map(|p| p.to_string()).collect();
            let mut got: Vec<String> = find_files(&pats, how, r)?
                .into_iter()
                .map(|f| f.stored)
                .collect();
            got.sort();
            Ok(got)
        };
        let gh = Finding {
            common_root: true,
            misses_ok: true,
            ..Finding::default()
        };
        assert_eq!(
            find(&["dist/"], gh).unwrap(),
            [".hidden", "a.js", "sub/b.js"],
            "a directory's files, relative to it"
        );
        let no_hidden = Finding {
            skip_hidden: true,
            ..gh
        };
        assert_eq!(find(&["dist"], no_hidden).unwrap(), ["a.js", "sub/b.js"]);
        assert_eq!(
            find(&["dist/**/*.js", "README.md"], gh).unwrap(),
            ["README.md", "dist/a.js", "dist/sub/b.js"],
            "the patterns' common directory"
        );
        assert_eq!(
            find(&["logs/x.log"], gh).unwrap(),
            ["x.log"],
            "a file alone"
        );
        assert_eq!(
            find(&["dist/", "!dist/sub/**"], gh).unwrap(),
            [".hidden", "a.js"]
        );
        assert_eq!(
            find(&["dist/", "!dist/sub"], gh).unwrap(),
            [".hidden", "a.js"],
            "excluding a directory excludes its files"
        );
        assert_eq!(
            find(&["dist/*"], gh).unwrap(),
            [".hidden", "a.js", "sub/b.js"],
            "a directory a glob matches brings its files"
        );
        assert_eq!(
            find(&["nope/*", "README.md"], gh).unwrap(),
            ["README.md"],
            "a pattern may match nothing"
        );
        // Without the options: relative to the working directory, and
        // every pattern must match.
        let plain = Finding::default();
        assert_eq!(find(&["dist/*.js"], plain).unwrap(), ["dist/a.js"]);
        assert_eq!(
            find(&["**/*.js", "!dist/sub/*"], plain).unwrap(),
            ["dist/a.js"]
        );
        assert!(find(&["nope/*", "README.md"], plain).is_err());
        assert!(
            find(&["dist"], plain).unwrap().is_empty(),
            "a directory alone is skipped with a warning"
        );
    }

    #[test]
    fn segment_split() {
        assert_eq!(after_segments("logs/app/**/*.txt", 2), 9);
        assert_eq!(&"a\\/b/c*"[after_segments("a\\/b/c*", 1)..], "c*");
        assert_eq!(after_segments("*.txt", 0), 0);
    }
}
