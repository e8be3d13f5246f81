//! Jobs see the source, as on a real agent (`docs/pipelines.md`,
//! "Checkout").
//!
//! Once per run, [`snapshot`] makes the run's copy of the source: a clone
//! of the pipeline file's git repository at HEAD (with `.git`, so `git
//! describe` works, and never the user's own tree, so a job cannot damage
//! it), plus the uncommitted changes and untracked files when asked; or a
//! copy of the directory when it is not in git. Then each job that wants a
//! checkout gets its own copy of that snapshot ([`copy_tree`]): a job may
//! change or delete any file without another job seeing it.
//!
//! Copies are cheap where the filesystem allows: file contents go through
//! `copy_file_range` (a reflink on XFS and Btrfs, an in-kernel copy
//! elsewhere), and git's object files, which git never changes once
//! written, are hard links. Work-tree files are never hard links: a job
//! appending to a tracked file would change every other job's copy.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// Where a run's checkout comes from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The pipeline file's directory.
    pub dir: PathBuf,
    /// Add uncommitted changes and untracked (not ignored) files to HEAD.
    pub include_dirty: bool,
    /// Never copied: the runner's work and data directories, which may
    /// lie inside the source.
    pub exclude: Vec<PathBuf>,
}

/// A run's copy of the source, removed when dropped.
#[derive(Debug)]
pub struct Snapshot {
    /// Its directory.
    pub root: PathBuf,
    /// What it holds, for the log: `commit 1a2b3c4d of /src (clean)`.
    pub describe: String,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// What [`copy_tree`] copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Files, symbolic links included.
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Runs git in `dir` with the caller's repository variables removed (a
/// hook's `GIT_DIR` must not redirect it); its stdout, or an error with
/// its stderr.
fn git(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(args);
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_CEILING_DIRECTORIES",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("running git (is it installed?)")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).context("writing to git")?;
    }
    let out = child.wait_with_output().context("running git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Git's one-line answer, without its line end (a path may end in
/// spaces).
fn git_text(dir: &Path, args: &[&str]) -> Option<String> {
    let out = git(dir, args, None).ok()?;
    let s = String::from_utf8(out).ok()?;
    let s = s.strip_suffix('\n').unwrap_or(&s).to_string();
    (!s.trim().is_empty()).then_some(s)
}

/// Makes the run's copy of `src` in `dest` (which must not exist).
pub fn snapshot(src: &Source, dest: &Path) -> anyhow::Result<Snapshot> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let exclude: Vec<PathBuf> = src
        .exclude
        .iter()
        .chain(std::iter::once(&dest.to_path_buf()))
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let top = git_text(&src.dir, &["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    let head = top
        .as_deref()
        .and_then(|t| git_text(t, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]));
    let mut snap = Snapshot {
        root: dest.to_path_buf(),
        describe: String::new(),
    };
    match (top, head) {
        (Some(top), Some(head)) => {
            let top_s = top.to_string_lossy().into_owned();
            let dest_s = dest.to_string_lossy().into_owned();
            // A clone that borrows the user's objects through an alternate
            // (read only: git never writes to one, and no file is shared
            // that a job could write through) and cannot push: `origin`
            // still fetches from the user's repository, but a `git push`
            // from a job goes nowhere.
            git(
                &top,
                &[
                    "clone",
                    "--quiet",
                    "--no-checkout",
                    "--shared",
                    "--",
                    &top_s,
                    &dest_s,
                ],
                None,
            )?;
            git(
                dest,
                &[
                    "config",
                    "remote.origin.pushurl",
                    "/dev/null/satchel-run-does-not-push",
                ],
                None,
            )?;
            git(
                dest,
                &[
                    "-c",
                    "advice.detachedHead=false",
                    "checkout",
                    "--quiet",
                    "--detach",
                    &head,
                ],
                None,
            )?;
            let mut state = "clean";
            if src.include_dirty {
                if add_dirty(&top, dest, &exclude)? {
                    state = "with uncommitted changes";
                }
            } else if git_text(
                &top,
                &[
                    "--no-optional-locks",
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                ],
            )
            .is_some()
            {
                state = "uncommitted changes left out; --include-dirty adds them";
            }
            snap.describe = format!(
                "commit {} of {} ({state})",
                &head[..12.min(head.len())],
                top_s
            );
        }
        (top, _) => {
            let dir = top.unwrap_or_else(|| src.dir.clone());
            std::fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
            copy_tree(&dir, dest, &exclude)
                .with_context(|| format!("copying {} into the run", dir.display()))?;
            snap.describe = format!("a copy of {} (not a git commit)", dir.display());
        }
    }
    Ok(snap)
}

/// Applies the uncommitted changes of `top` to the clone `dest` and copies
/// the untracked, not ignored files; whether there were any.
fn add_dirty(top: &Path, dest: &Path, exclude: &[PathBuf]) -> anyhow::Result<bool> {
    // Prefixes and options fixed whatever the user's configuration says
    // (`diff.noprefix`, external diff drivers, textconv).
    let diff = git(
        top,
        &[
            "diff",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--ignore-submodules",
            "--src-prefix=a/",
            "--dst-prefix=b/",
            "HEAD",
        ],
        None,
    )?;
    let mut dirty = !diff.is_empty();
    if dirty {
        git(
            dest,
            &["apply", "--binary", "--whitespace=nowarn", "-"],
            Some(&diff),
        )
        .context("applying the uncommitted changes to the run's checkout")?;
    }
    let listed = git(
        top,
        &["ls-files", "-z", "--others", "--exclude-standard"],
        None,
    )?;
    for rel in listed.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let rel = Path::new(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(rel));
        let from = top.join(rel);
        if is_excluded(&from, exclude) {
            continue;
        }
        let meta = match std::fs::symlink_metadata(&from) {
            Ok(m) => m,
            // Gone since git listed it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", from.display())),
        };
        let to = dest.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        copy_entry(&from, &to, &meta, false, &mut Copied::default())
            .with_context(|| format!("copying {}", from.display()))?;
        dirty = true;
    }
    Ok(dirty)
}

/// Whether `path` is one of `exclude` or inside one (compared as
/// canonical paths, as [`snapshot`] makes them).
fn is_excluded(path: &Path, exclude: &[PathBuf]) -> bool {
    // Every job's copy excludes nothing: no resolving per directory.
    if exclude.is_empty() {
        return false;
    }
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    exclude.iter().any(|e| canon.starts_with(e))
}

/// Copies the contents of directory `from` into the existing directory
/// `to`: directories, files (with their permissions) and symbolic links
/// (as links, never followed); sockets and devices are left out, as are
/// `exclude` (canonical paths). Files under a `.git/objects` directory are
/// hard-linked where possible.
pub fn copy_tree(from: &Path, to: &Path, exclude: &[PathBuf]) -> anyhow::Result<Copied> {
    let mut copied = Copied::default();
    // (source dir, destination dir, inside .git/objects); permissions of a
    // directory are set once its contents are in (a read-only directory
    // could not take them otherwise).
    let mut stack = vec![(from.to_path_buf(), to.to_path_buf(), false)];
    let mut dirs = Vec::new();
    while let Some((src, dst, objects)) = stack.pop() {
        let entries =
            std::fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", src.display()))?;
            let path = entry.path();
            let meta = entry
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?;
            let target = dst.join(entry.file_name());
            if meta.is_dir() {
                if is_excluded(&path, exclude) {
                    continue;
                }
                std::fs::create_dir(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                let objects = objects
                    || (entry.file_name() == "objects"
                        && src.file_name() == Some(OsStr::new(".git")));
                dirs.push((target.clone(), meta.permissions()));
                stack.push((path, target, objects));
            } else {
                copy_entry(&path, &target, &meta, objects, &mut copied)
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    for (dir, perms) in dirs.into_iter().rev() {
        std::fs::set_permissions(&dir, perms)
            .with_context(|| format!("setting the permissions of {}", dir.display()))?;
    }
    Ok(copied)
}

/// Copies one file or symbolic link (`meta` from `symlink_metadata`).
fn copy_entry(
    from: &Path,
    to: &Path,
    meta: &std::fs::Metadata,
    link: bool,
    copied: &mut Copied,
) -> std::io::Result<()> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if kind.is_file() {
        if !(link && std::fs::hard_link(from, to).is_ok()) {
            std::fs::copy(from, to)?;
        }
        copied.bytes += meta.len();
    } else {
        return Ok(());
    }
    copied.files += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn sh(dir: &Path, script: &str) {
        let st = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    }

    /// A repository with one commit (a.txt, sub/run.sh executable,
    /// link → a.txt), then a changed a.txt, an untracked new.txt, an
    /// ignored build/out and the runner's work directory inside it.
    fn repo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        sh(
            d.path(),
            "git init -q . && mkdir sub && echo committed > a.txt && printf '#!/bin/sh\\n' > sub/run.sh \
             && chmod 755 sub/run.sh && ln -s a.txt link && echo build/ > .gitignore \
             && git add -A && git commit -qm one \
             && echo changed > a.txt && echo new > new.txt && mkdir -p build work \
             && echo ignored > build/out && echo mine > work/job-file",
        );
        d
    }

    fn source(d: &Path, include_dirty: bool) -> Source {
        Source {
            dir: d.join("sub"),
            include_dirty,
            exclude: vec![d.join("work")],
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn a_git_checkout_is_head_of_the_whole_repository_without_the_users_changes() {
        let d = repo();
        let s = snapshot(&source(d.path(), false), &d.path().join("work/snap")).unwrap();
        let r = &s.root;
        assert_eq!(read(&r.join("a.txt")), "committed\n");
        assert!(!r.join("new.txt").exists() && !r.join("build").exists());
        assert!(r.join(".git").is_dir(), "a checkout has its history");
        assert_eq!(
            std::fs::read_link(r.join("link")).unwrap(),
            Path::new("a.txt")
        );
        let mode = std::fs::metadata(r.join("sub/run.sh")).unwrap().mode();
        assert_eq!(mode & 0o111, 0o111, "executable bits kept");
        assert!(s.describe.contains("left out"), "{}", s.describe);
        assert_eq!(
            git_text(r, &["rev-parse", "HEAD"]),
            git_text(d.path(), &["rev-parse", "HEAD"])
        );
        // A job cannot push into the user's repository.
        let heads = git_text(d.path(), &["show-ref"]);
        let push = Command::new("git")
            .args(["push", "origin", "HEAD:refs/heads/from-a-job"])
            .current_dir(r)
            .output()
            .unwrap();
        assert!(
            !push.status.success(),
            "a push from the checkout went through"
        );
        assert_eq!(git_text(d.path(), &["show-ref"]), heads);
        let root = s.root.clone();
        drop(s);
        assert!(!root.exists(), "a snapshot is removed with the run");
    }

    #[test]
    fn include_dirty_adds_changes_and_untracked_files_but_not_ignored_ones() {
        let d = repo();
        let s = snapshot(&source(d.path(), true), &d.path().join("work/snap")).unwrap();
        let r = &s.root;
        assert_eq!(read(&r.join("a.txt")), "changed\n");
        assert_eq!(read(&r.join("new.txt")), "new\n");
        assert!(!r.join("build").exists(), "ignored files stay out");
        assert!(
            !r.join("work").exists(),
            "the runner's own directories stay out"
        );
        assert!(
            s.describe.contains("with uncommitted changes"),
            "{}",
            s.describe
        );
    }

    #[test]
    fn a_directory_outside_git_is_copied_without_the_excluded_ones() {
        let d = tempfile::tempdir().unwrap();
        sh(
            d.path(),
            "mkdir -p src data/work && echo x > src/f && echo secret > data/work/token \
             && ln -s /etc/hostname host",
        );
        let s = snapshot(
            &Source {
                dir: d.path().to_path_buf(),
                include_dirty: false,
                exclude: vec![d.path().join("data")],
            },
            &d.path().join("data/work/snap"),
        )
        .unwrap();
        assert_eq!(read(&s.root.join("src/f")), "x\n");
        assert!(!s.root.join("data").exists());
        assert!(
            std::fs::symlink_metadata(s.root.join("host"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "links are copied as links, not followed"
        );
        assert!(s.describe.contains("not a git commit"), "{}", s.describe);
    }

    /// Each job's copy is its own: writing into a file in one (in place,
    /// as `>>` does) changes neither the snapshot nor another job's copy.
    /// Git's objects are shared.
    #[test]
    fn job_copies_do_not_share_work_tree_files() {
        let d = repo();
        let s = snapshot(&source(d.path(), false), &d.path().join("work/snap")).unwrap();
        let (a, b) = (d.path().join("work/a"), d.path().join("work/b"));
        for j in [&a, &b] {
            std::fs::create_dir(j).unwrap();
            let c = copy_tree(&s.root, j, &[]).unwrap();
            assert!(c.files >= 4, "{c:?}");
        }
        sh(&a, "echo more >> a.txt");
        assert_eq!(read(&b.join("a.txt")), "committed\n");
        assert_eq!(read(&s.root.join("a.txt")), "committed\n");
        assert_eq!(git_text(&b, &["status", "--porcelain"]), None, "b is clean");
        let object = |root: &Path| {
            let objects = root.join(".git/objects");
            let mut found = None;
            for e in walk(&objects) {
                if e.is_file() {
                    found = Some(std::fs::metadata(&e).unwrap().ino());
                    break;
                }
            }
            found.expect("an object file")
        };
        assert_eq!(object(&a), object(&s.root), "objects are hard links");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }
}
