//! Which stored files a query selects.
//!
//! A query is a path glob plus optional scoping (job, step, artifact name) and
//! the retried-jobs switch. The rules, shared by search, shasum and download:
//!
//! * Files of superseded job attempts (a later attempt of the same job exists)
//!   are invisible unless `include_retried` is set.
//! * **Search** lists every match.
//! * **Download** of a query *without* wildcards must name one file: when the
//!   matches come from more than one artifact (two jobs or steps uploaded the
//!   same path), it fails with [`Ambiguous`], listing every candidate so the
//!   user can scope by `--job`, `--step` or `--name`.
//! * **Download** of a query *with* wildcards takes, for each path, the most
//!   recently uploaded match.
//!
//! One dialect for upload and download: `*` stays within a path segment,
//! `**` crosses segments (see [`crate::glob`]).

use std::collections::BTreeMap;

use crate::api::FileInfo;
use crate::glob::Glob;

/// Scoping that narrows a query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only files of jobs with this key.
    pub job: Option<String>,
    /// Only files uploaded by this step key.
    pub step: Option<String>,
    /// Only files of the artifact with this name.
    pub name: Option<String>,
    /// Include files of superseded job attempts.
    pub include_retried: bool,
}

impl Scope {
    /// Whether `f` is inside this scope.
    pub fn admits(&self, f: &FileInfo) -> bool {
        (self.include_retried || !f.producer.superseded)
            && self.job.as_deref().is_none_or(|j| f.producer.job == j)
            && self
                .step
                .as_deref()
                .is_none_or(|s| f.step.as_deref() == Some(s))
            && self.name.as_deref().is_none_or(|n| f.artifact_name == n)
    }
}

/// A query without wildcards matched files of several artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguous {
    /// The query as the user wrote it.
    pub query: String,
    /// Every matching file.
    pub candidates: Vec<FileInfo>,
}

impl std::fmt::Display for Ambiguous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "multiple files match query `{}` ({} candidates):",
            self.query,
            self.candidates.len()
        )?;
        for c in &self.candidates {
            writeln!(f, "  {}", describe(c))?;
        }
        write!(
            f,
            "scope the query with --job JOB, --step STEP or --name ARTIFACT, or use a wildcard to take the most recent match per path"
        )
    }
}

impl std::error::Error for Ambiguous {}

/// One line describing where a file came from.
pub fn describe(f: &FileInfo) -> String {
    format!(
        "{} (job {}, step {}, attempt {}, artifact {}, {} bytes, uploaded {})",
        f.path,
        f.producer.job,
        f.step.as_deref().unwrap_or("-"),
        f.producer.attempt,
        f.artifact_name,
        f.size,
        f.uploaded_at
    )
}

/// All files in `files` that match `query` within `scope`, sorted by path
/// then upload time.
pub fn search(query: &Glob, scope: &Scope, files: Vec<FileInfo>) -> Vec<FileInfo> {
    let mut out: Vec<FileInfo> = files
        .into_iter()
        .filter(|f| scope.admits(f) && query.is_match(&f.path))
        .collect();
    out.sort_by(|a, b| {
        (a.path.as_str(), a.uploaded_at_ms, a.id.as_str()).cmp(&(
            b.path.as_str(),
            b.uploaded_at_ms,
            b.id.as_str(),
        ))
    });
    out
}

/// The files a download of `query` within `scope` fetches (see the module
/// docs for the rules), sorted by path.
pub fn select_for_download(
    query: &Glob,
    scope: &Scope,
    files: Vec<FileInfo>,
) -> Result<Vec<FileInfo>, Ambiguous> {
    let matches = search(query, scope, files);
    if !query.has_wildcards() {
        let first = matches.first().map(|f| f.artifact_id.clone());
        if matches
            .iter()
            .any(|f| Some(&f.artifact_id) != first.as_ref())
        {
            return Err(Ambiguous {
                query: query.as_str().to_string(),
                candidates: matches,
            });
        }
        return Ok(matches);
    }
    let mut latest: BTreeMap<String, FileInfo> = BTreeMap::new();
    for f in matches {
        // `matches` is sorted by upload time within a path: the last wins.
        latest.insert(f.path.clone(), f);
    }
    Ok(latest.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Producer;

    fn file(path: &str, job: &str, step: &str, attempt: u32, superseded: bool, t: i64) -> FileInfo {
        FileInfo {
            id: format!("{job}-{attempt}-{path}-{t}"),
            artifact_id: format!("a-{job}-{attempt}-{step}"),
            artifact_name: "default".into(),
            path: path.into(),
            size: 1,
            sha256: "00".repeat(32),
            mode: 0o644,
            content_type: "text/plain".into(),
            step: Some(step.into()),
            producer: Producer {
                pipeline: "p".into(),
                run: 1,
                stage: None,
                job: job.into(),
                attempt,
                superseded,
            },
            source_path: None,
            glob: None,
            uploaded_at: String::new(),
            uploaded_at_ms: t,
        }
    }

    fn g(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn literal_query_from_two_jobs_is_ambiguous_and_lists_both() {
        let files = vec![
            file("pkg/app.tar", "build-a", "make", 1, false, 1),
            file("pkg/app.tar", "build-b", "make", 1, false, 2),
            file("other.txt", "build-a", "make", 1, false, 3),
        ];
        let err =
            select_for_download(&g("pkg/app.tar"), &Scope::default(), files.clone()).unwrap_err();
        assert_eq!(err.candidates.len(), 2);
        let msg = err.to_string();
        assert!(
            msg.contains("job build-a") && msg.contains("job build-b"),
            "{msg}"
        );
        assert!(msg.contains("--job") && msg.contains("--step") && msg.contains("--name"));

        let scoped = Scope {
            job: Some("build-b".into()),
            ..Scope::default()
        };
        let ok = select_for_download(&g("pkg/app.tar"), &scoped, files).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].producer.job, "build-b");
    }

    #[test]
    fn wildcard_query_takes_latest_per_path() {
        let files = vec![
            file("out/a.txt", "j1", "s", 1, false, 5),
            file("out/a.txt", "j2", "s", 1, false, 9),
            file("out/b.txt", "j1", "s", 1, false, 1),
        ];
        let got = select_for_download(&g("out/*.txt"), &Scope::default(), files).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].producer.job, "j2");
        assert_eq!(got[1].path, "out/b.txt");
    }

    #[test]
    fn superseded_attempts_are_hidden_unless_asked() {
        let files = vec![
            file("r.txt", "j", "s", 1, true, 1),
            file("r.txt", "j", "s", 2, false, 2),
        ];
        let got = select_for_download(&g("r.txt"), &Scope::default(), files.clone()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].producer.attempt, 2);
        let all = Scope {
            include_retried: true,
            ..Scope::default()
        };
        assert_eq!(search(&g("r.txt"), &all, files.clone()).len(), 2);
        assert!(select_for_download(&g("r.txt"), &all, files).is_err());
    }

    #[test]
    fn step_and_name_scope() {
        let mut f = file("x", "j", "s1", 1, false, 1);
        f.artifact_name = "named".into();
        let scope = Scope {
            step: Some("s1".into()),
            name: Some("named".into()),
            ..Scope::default()
        };
        assert!(scope.admits(&f));
        let other = Scope {
            step: Some("s2".into()),
            ..Scope::default()
        };
        assert!(!other.admits(&f));
    }
}
