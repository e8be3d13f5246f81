//! Comparing two runs' files from their metadata alone, the one rule
//! behind `satchel diff`, its API twin and the UI's run diff page: per
//! artifact, the files added, removed and changed (another digest or
//! mode), with sizes and totals. No content is read.
//!
//! Artifacts are matched by name; a job's default artifact (every job may
//! have one) by `default:JOB`, and a name that several jobs of either run
//! hold by `NAME:JOB`. `:` is in no artifact name or job key, and `default`
//! is no explicit artifact name, so no two artifacts share a key. Superseded attempts are left out: a retried job's
//! artifacts are its latest attempt's. At most [`MAX_LISTED`] changed files
//! are listed (the totals count them all).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::FileInfo;

/// Most changed files a comparison lists.
pub const MAX_LISTED: usize = 10_000;

/// What became of a file or an artifact between the two runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the second run.
    Added,
    /// Only in the first run.
    Removed,
    /// In both, with other content (or mode).
    Changed,
    /// In both, the same.
    Unchanged,
}

impl Change {
    /// Its word, as the JSON spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
        }
    }
}

/// One file that differs (unchanged files are only counted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileChange {
    /// Its path in the artifact.
    pub path: String,
    /// Added, removed or changed.
    pub change: Change,
    /// Size in the first run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_size: Option<u64>,
    /// Size in the second run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_size: Option<u64>,
    /// Digest in the first run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_sha256: Option<String>,
    /// Digest in the second run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_sha256: Option<String>,
    /// File id in the first run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_file: Option<String>,
    /// File id in the second run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_file: Option<String>,
    /// Mode in the first run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_mode: Option<u32>,
    /// Mode in the second run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_mode: Option<u32>,
}

/// Counts and sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Totals {
    /// Files only in the second run.
    pub added: u64,
    /// Files only in the first run.
    pub removed: u64,
    /// Files in both with other content.
    pub changed: u64,
    /// Files in both, the same.
    pub unchanged: u64,
    /// Bytes in the first run.
    pub from_size: u64,
    /// Bytes in the second run.
    pub to_size: u64,
}

impl Totals {
    /// Bytes gained (negative: lost).
    pub fn size_delta(&self) -> i128 {
        i128::from(self.to_size) - i128::from(self.from_size)
    }

    fn add(&mut self, o: &Totals) {
        self.added += o.added;
        self.removed += o.removed;
        self.changed += o.changed;
        self.unchanged += o.unchanged;
        self.from_size = self.from_size.saturating_add(o.from_size);
        self.to_size = self.to_size.saturating_add(o.to_size);
    }
}

/// One artifact's differences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactChange {
    /// Its name (`default:JOB` for a job's default artifact, `NAME:JOB`
    /// for a name several jobs hold).
    pub name: String,
    /// Added, removed, changed or unchanged as a whole.
    pub change: Change,
    /// Its counts and sizes.
    pub totals: Totals,
    /// The files that differ, by path.
    pub files: Vec<FileChange>,
}

/// Two runs compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunDiff {
    /// The first run, `PIPELINE#NUMBER`.
    pub from: String,
    /// The second run, `PIPELINE#NUMBER`.
    pub to: String,
    /// Per artifact, by name.
    pub artifacts: Vec<ArtifactChange>,
    /// Over every artifact compared.
    pub totals: Totals,
    /// More than [`MAX_LISTED`] files changed: the lists stop there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// The name an artifact is matched by, given the names several jobs hold.
fn artifact_key(f: &FileInfo, shared: &std::collections::BTreeSet<&str>) -> String {
    if f.artifact_name == "default" {
        format!("default:{}", f.producer.job)
    } else if shared.contains(f.artifact_name.as_str()) {
        format!("{}:{}", f.artifact_name, f.producer.job)
    } else {
        f.artifact_name.clone()
    }
}

/// The artifact names that several jobs of one of `runs` hold (current
/// attempts).
fn shared_names(runs: [&[FileInfo]; 2]) -> std::collections::BTreeSet<&str> {
    let mut shared = std::collections::BTreeSet::new();
    for files in runs {
        let mut jobs: BTreeMap<&str, &str> = BTreeMap::new();
        for f in files.iter().filter(|f| !f.producer.superseded) {
            let job = jobs
                .entry(f.artifact_name.as_str())
                .or_insert(f.producer.job.as_str());
            if *job != f.producer.job {
                shared.insert(f.artifact_name.as_str());
            }
        }
    }
    shared
}

/// The current-attempt files of one run, each with the name its artifact
/// goes by in comparisons (`default:JOB`, `NAME`, or `NAME:JOB` where
/// several jobs hold the name).
pub fn keyed_files(files: &[FileInfo]) -> Vec<(String, &FileInfo)> {
    let shared = shared_names([files, &[]]);
    files
        .iter()
        .filter(|f| !f.producer.superseded)
        .map(|f| (artifact_key(f, &shared), f))
        .collect()
}

/// The folder each artifact key gets in a whole-run archive: the key with
/// `:` (not allowed in Windows file names) as `@`, then `~2` added (again,
/// if need be) where a key before it, in key order, took that folder; so
/// no two artifacts share a folder.
pub fn archive_folders<'a>(keys: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, String> {
    let mut keys: Vec<&str> = keys.into_iter().collect();
    keys.sort_unstable();
    keys.dedup();
    let mut taken = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for key in keys {
        let mut folder = key.replace(':', "@");
        while !taken.insert(folder.clone()) {
            folder.push_str("~2");
        }
        out.insert(key.to_string(), folder);
    }
    out
}

/// The files of each artifact (by [`artifact_key`]) of current attempts,
/// by path; `only` keeps one artifact.
fn by_artifact<'a>(
    files: &'a [FileInfo],
    shared: &std::collections::BTreeSet<&str>,
    only: Option<&str>,
) -> BTreeMap<String, BTreeMap<&'a str, &'a FileInfo>> {
    let mut out: BTreeMap<String, BTreeMap<&str, &FileInfo>> = BTreeMap::new();
    for f in files.iter().filter(|f| !f.producer.superseded) {
        let key = artifact_key(f, shared);
        if only.is_some_and(|o| o != key) {
            continue;
        }
        out.entry(key).or_default().insert(f.path.as_str(), f);
    }
    out
}

/// Compares the files of run `from` with those of run `to` (each every
/// visible file of its run); `only` compares one artifact.
pub fn diff_runs(
    from_label: &str,
    from: &[FileInfo],
    to_label: &str,
    to: &[FileInfo],
    only: Option<&str>,
) -> RunDiff {
    let shared = shared_names([from, to]);
    let (a, b) = (
        by_artifact(from, &shared, only),
        by_artifact(to, &shared, only),
    );
    let mut listed = 0usize;
    let mut truncated = false;
    let empty = BTreeMap::new();
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    let mut artifacts = Vec::with_capacity(names.len());
    let mut totals = Totals::default();
    for name in names {
        let (old, new) = (a.get(name).unwrap_or(&empty), b.get(name).unwrap_or(&empty));
        let mut t = Totals::default();
        let mut files = Vec::new();
        let mut paths: Vec<&&str> = old.keys().chain(new.keys()).collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            let (x, y) = (old.get(*path), new.get(*path));
            t.from_size = t.from_size.saturating_add(x.map_or(0, |f| f.size));
            t.to_size = t.to_size.saturating_add(y.map_or(0, |f| f.size));
            let change = match (x, y) {
                (Some(_), None) => Change::Removed,
                (None, Some(_)) => Change::Added,
                (Some(x), Some(y)) if x.sha256 == y.sha256 && x.mode == y.mode => Change::Unchanged,
                _ => Change::Changed,
            };
            match change {
                Change::Added => t.added += 1,
                Change::Removed => t.removed += 1,
                Change::Changed => t.changed += 1,
                Change::Unchanged => {
                    t.unchanged += 1;
                    continue;
                }
            }
            if listed == MAX_LISTED {
                truncated = true;
                continue;
            }
            listed += 1;
            files.push(FileChange {
                path: (*path).to_string(),
                change,
                from_size: x.map(|f| f.size),
                to_size: y.map(|f| f.size),
                from_sha256: x.map(|f| f.sha256.clone()),
                to_sha256: y.map(|f| f.sha256.clone()),
                from_file: x.map(|f| f.id.clone()),
                to_file: y.map(|f| f.id.clone()),
                from_mode: x.map(|f| f.mode),
                to_mode: y.map(|f| f.mode),
            });
        }
        let change = if old.is_empty() {
            Change::Added
        } else if new.is_empty() {
            Change::Removed
        } else if t.added + t.removed + t.changed == 0 {
            Change::Unchanged
        } else {
            Change::Changed
        };
        totals.add(&t);
        artifacts.push(ArtifactChange {
            name: name.clone(),
            change,
            totals: t,
            files,
        });
    }
    RunDiff {
        from: from_label.to_string(),
        to: to_label.to_string(),
        artifacts,
        totals,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Producer;

    fn f(artifact: &str, job: &str, path: &str, sha: char, size: u64) -> FileInfo {
        FileInfo {
            id: format!("{artifact}/{path}/{sha}"),
            artifact_id: artifact.into(),
            artifact_name: artifact.into(),
            path: path.into(),
            size,
            sha256: sha.to_string().repeat(64),
            mode: 0o644,
            content_type: "text/plain".into(),
            step: None,
            producer: Producer {
                pipeline: "p".into(),
                run: 1,
                stage: None,
                job: job.into(),
                attempt: 1,
                superseded: false,
            },
            source_path: None,
            glob: None,
            uploaded_at: String::new(),
            uploaded_at_ms: 0,
        }
    }

    #[test]
    fn files_added_removed_and_changed_per_artifact() {
        let mut retried = f("app", "build", "stale.txt", 'z', 9);
        retried.producer.superseded = true;
        let from = vec![
            f("app", "build", "a.txt", 'a', 10),
            f("app", "build", "gone.txt", 'g', 5),
            f("app", "build", "same.txt", 's', 7),
            f("old", "build", "x", 'x', 3),
            f("default", "test", "log", 'l', 4),
            retried,
        ];
        let mut chmod = f("app", "build", "same.txt", 's', 7);
        chmod.mode = 0o755;
        let to = vec![
            f("app", "build", "a.txt", 'b', 14),
            f("app", "build", "new.txt", 'n', 2),
            chmod,
            f("default", "test", "log", 'l', 4),
            f("fresh", "build", "y", 'y', 1),
        ];
        let d = diff_runs("p#1", &from, "p#2", &to, None);
        let summary: Vec<(&str, Change, u64, u64, u64, u64)> = d
            .artifacts
            .iter()
            .map(|a| {
                let t = &a.totals;
                (
                    a.name.as_str(),
                    a.change,
                    t.added,
                    t.removed,
                    t.changed,
                    t.unchanged,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("app", Change::Changed, 1, 1, 2, 0),
                ("default:test", Change::Unchanged, 0, 0, 0, 1),
                ("fresh", Change::Added, 1, 0, 0, 0),
                ("old", Change::Removed, 0, 1, 0, 0),
            ]
        );
        let app = &d.artifacts[0];
        let paths: Vec<(&str, Change)> = app
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.change))
            .collect();
        assert_eq!(
            paths,
            [
                ("a.txt", Change::Changed),
                ("gone.txt", Change::Removed),
                ("new.txt", Change::Added),
                ("same.txt", Change::Changed),
            ]
        );
        assert_eq!((app.totals.from_size, app.totals.to_size), (22, 23));
        assert_eq!(app.files[0].from_size, Some(10));
        assert_eq!(app.files[0].to_size, Some(14));
        assert_eq!(d.totals.size_delta(), 23 + 4 + 1 - (22 + 3 + 4));
        assert_eq!(
            (
                d.totals.added,
                d.totals.removed,
                d.totals.changed,
                d.totals.unchanged
            ),
            (2, 2, 2, 1)
        );
        assert_eq!(
            (app.files[3].from_mode, app.files[3].to_mode),
            (Some(0o644), Some(0o755))
        );
        // One artifact only.
        let one = diff_runs("p#1", &from, "p#2", &to, Some("old"));
        assert_eq!(one.artifacts.len(), 1);
        assert_eq!(one.totals.removed, 1);
    }

    #[test]
    fn a_name_two_jobs_hold_is_compared_per_job() {
        let from = vec![f("app", "linux", "x", 'a', 1), f("app", "mac", "x", 'b', 1)];
        let to = vec![f("app", "linux", "x", 'a', 1), f("app", "mac", "x", 'c', 1)];
        let d = diff_runs("p#1", &from, "p#2", &to, None);
        let got: Vec<(&str, Change)> = d
            .artifacts
            .iter()
            .map(|a| (a.name.as_str(), a.change))
            .collect();
        assert_eq!(
            got,
            [
                ("app:linux", Change::Unchanged),
                ("app:mac", Change::Changed)
            ]
        );
    }

    #[test]
    fn keyed_files_name_each_artifact_once() {
        let mut old = f("app", "linux", "y", 'o', 1);
        old.producer.superseded = true;
        let files = vec![
            f("app", "linux", "x", 'a', 1),
            f("app", "mac", "x", 'b', 1),
            f("default", "test", "log", 'l', 1),
            f("docs", "build", "i", 'i', 1),
            old,
        ];
        let keys: Vec<(String, &str)> = keyed_files(&files)
            .into_iter()
            .map(|(k, f)| (k, f.path.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("app:linux".into(), "x"),
                ("app:mac".into(), "x"),
                ("default:test".into(), "log"),
                ("docs".into(), "i"),
            ]
        );
    }

    #[test]
    fn archive_folders_are_unique_and_windows_safe() {
        // An artifact may be named `app@linux` outright.
        let folders =
            archive_folders(["app:linux", "app@linux", "app@linux~2", "default:t", "docs"]);
        let got: Vec<(&str, &str)> = folders
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("app:linux", "app@linux"),
                ("app@linux", "app@linux~2"),
                ("app@linux~2", "app@linux~2~2"),
                ("default:t", "default@t"),
                ("docs", "docs"),
            ]
        );
    }

    #[test]
    fn long_lists_stop_but_totals_count_everything() {
        let to: Vec<FileInfo> = (0..MAX_LISTED + 5)
            .map(|i| f("big", "j", &format!("f{i}"), 'a', 1))
            .collect();
        let d = diff_runs("p#1", &[], "p#2", &to, None);
        assert!(d.truncated);
        assert_eq!(d.artifacts[0].files.len(), MAX_LISTED);
        assert_eq!(d.totals.added, (MAX_LISTED + 5) as u64);
    }
}
