//! Lists page by page: keyset cursors over the indexes that follow the
//! scoping rules, so a page costs the same on the first and the hundredth
//! page, on a run with ten files or with a hundred thousand.
//!
//! * Runs page newest first through `UNIQUE (pipeline_id, number)`.
//! * A run's artifacts page in (name, created, id) order through
//!   `artifacts_run_order`.
//! * An artifact's files page by path through `UNIQUE (artifact_id, path)`.
//! * Search walks a run's files in (path, id) order through
//!   `files_run_path`, starting at the glob's literal directory prefix (or
//!   at its one path when it has no wildcards), with job, step, artifact
//!   name and supersession pushed into the query; a glob whose matches all
//!   end in one file name (`**/index.html`) walks `files_run_name`, the
//!   run's files of that name, instead. The glob itself is
//!   matched here, on the rows the index range yields, by the model's own
//!   matcher, so there is one glob dialect. A search page never splits a
//!   path: every match of a path is on one page, so the download rules
//!   (ambiguity, the latest upload per path) apply page by page exactly as
//!   to the whole list.
//!
//! A cursor is opaque to callers: hex of the keyset fields, and a cursor
//! that does not decode is a [`DbError::Invalid`].

use std::collections::VecDeque;

use satchel_model::api::{Artifact, FileInfo, Package, Run};
use satchel_model::glob::Glob;
use satchel_model::query::{self, Scope};

use crate::rules::{
    artifact_row, file_row, fill_producer_run, get_artifact, package_row, pipeline_exists, rows,
    run_row, ARTIFACT_SELECT, FILE_SELECT, PACKAGE_SELECT, RUN_FILE_SELECT, RUN_SELECT,
};
use crate::sql::{Sql, Value};
use crate::DbError;

/// The most items one page holds, whatever a caller asks for.
pub const MAX_PAGE: usize = 10_000;

/// Items per page when a caller does not say.
pub const DEFAULT_PAGE: usize = 1_000;

/// Rows a search page reads before it ends with a cursor however few of
/// them matched, so that a glob matching little of a large run answers in
/// bounded time (the caller follows the cursor).
pub const SEARCH_SCAN_BUDGET: usize = 20_000;

/// Rows one search statement reads at most. The first reads just enough
/// for a page that every row matches (`limit + 1`, the one more showing
/// where the path changes); each further one reads four times as many.
const SCAN_ROWS: usize = 1_000;

/// Which page: after `cursor` (from the previous page), at most `limit`
/// items (0 means [`DEFAULT_PAGE`]; more than [`MAX_PAGE`] means that).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Where the previous page ended; `None` for the first page.
    pub cursor: Option<String>,
    /// How many items at most.
    pub limit: usize,
    /// For search: rows read before the page ends however few matched
    /// (0 means [`SEARCH_SCAN_BUDGET`]). Tests set it small.
    pub scan_budget: usize,
}

impl PageRequest {
    /// The first page of `limit` items.
    pub fn first(limit: usize) -> PageRequest {
        PageRequest {
            limit,
            ..PageRequest::default()
        }
    }

    fn limit(&self) -> usize {
        match self.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        }
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// The cursor of the next page; `None` on the last one.
    pub next: Option<String>,
}

/// Which of a run's artifacts to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactFilter {
    /// Only artifacts of jobs with this key.
    pub job: Option<String>,
    /// Include artifacts of superseded job attempts.
    pub include_retried: bool,
}

/// Only rows of the latest attempt of their job (`j` is the job).
const NOT_SUPERSEDED: &str = "AND NOT j.superseded";

fn bad_cursor(cursor: &str) -> DbError {
    DbError::Invalid(format!("cursor {cursor:?} is not one this list gave out"))
}

/// Refuses a filter value holding a NUL byte, which no stored key holds
/// (and PostgreSQL cannot even compare), the same on every backend.
fn no_nul<'a>(values: impl IntoIterator<Item = &'a Option<String>>) -> Result<(), DbError> {
    match values.into_iter().flatten().find(|v| v.contains('\0')) {
        Some(v) => Err(DbError::Invalid(format!(
            "{v:?} holds a NUL byte, which no job, step or artifact name holds"
        ))),
        None => Ok(()),
    }
}

fn encode(fields: &[&str]) -> String {
    let joined = fields.join("\0");
    joined.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode(cursor: &str, fields: usize) -> Result<Vec<String>, DbError> {
    let bad = || bad_cursor(cursor);
    if !cursor.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let parts: Vec<String> = text.split('\0').map(str::to_string).collect();
    if parts.len() != fields {
        return Err(bad());
    }
    Ok(parts)
}

/// Numbered-parameter SQL built clause by clause.
struct Query {
    sql: String,
    args: Vec<Value>,
}

impl Query {
    fn new(select: &str) -> Query {
        Query {
            sql: select.to_string(),
            args: Vec::new(),
        }
    }

    /// Appends `clause`, whose `?` marks take `values` in order.
    fn and(&mut self, clause: &str, values: Vec<Value>) -> &mut Query {
        let mut out = String::with_capacity(clause.len() + 8);
        let mut values = values.into_iter();
        for ch in clause.chars() {
            if ch == '?' {
                self.args.push(values.next().expect("a value per mark"));
                out.push_str(&format!("?{}", self.args.len()));
            } else {
                out.push(ch);
            }
        }
        assert!(values.next().is_none(), "a mark per value");
        self.sql.push(' ');
        self.sql.push_str(&out);
        self
    }
}

/// Runs of `pipeline`, newest first.
pub(crate) fn runs(
    c: &mut dyn Sql,
    pipeline: &str,
    page: &PageRequest,
) -> Result<Page<Run>, DbError> {
    let limit = page.limit();
    let mut q = Query::new(RUN_SELECT);
    // The pipeline's id first, so the planner walks its runs through
    // `UNIQUE (pipeline_id, number)` rather than all runs.
    q.and(
        "WHERE r.pipeline_id = (SELECT id FROM pipelines WHERE key = ?)",
        vec![pipeline.into()],
    );
    if let Some(cursor) = &page.cursor {
        let number: i64 = decode(cursor, 1)?[0]
            .parse()
            .map_err(|_| bad_cursor(cursor))?;
        q.and("AND r.number < ?", vec![number.into()]);
    }
    q.and(
        &format!("ORDER BY r.number DESC LIMIT {}", limit + 1),
        vec![],
    );
    let mut items = rows(c, &q.sql, &q.args, run_row)?;
    if items.is_empty() && page.cursor.is_none() && !pipeline_exists(c, pipeline)? {
        return Err(DbError::NotFound(format!(
            "pipeline {pipeline:?} not found"
        )));
    }
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        encode(&[&items[limit - 1].number.to_string()])
    });
    Ok(Page { items, next })
}

/// The package repositories of organization `org` (every one when
/// `None`), by key, each with how many package versions it holds.
pub(crate) fn package_repositories(
    c: &mut dyn Sql,
    org: Option<&str>,
) -> Result<Vec<(String, u64)>, DbError> {
    let select = "SELECT r.repository, COUNT(p.id) FROM package_repositories r
                  JOIN organizations o ON o.id = r.organization_id
                  LEFT JOIN packages p ON p.repository = r.repository";
    let group = "GROUP BY r.repository ORDER BY r.repository";
    let rows = match org {
        Some(o) => c.query(
            &format!("{select} WHERE o.key = ?1 {group}"),
            &[Value::from(o)],
        )?,
        None => c.query(&format!("{select} {group}"), &[])?,
    };
    rows.into_iter()
        .map(|mut row| Ok((row.text(0)?, row.uint(1)?)))
        .collect()
}

/// Package versions of repository `repo` (of package `name` only, if
/// given), newest first: by creation, then insertion order (`seq`).
pub(crate) fn packages(
    c: &mut dyn Sql,
    repo: &str,
    name: Option<&str>,
    page: &PageRequest,
) -> Result<Page<Package>, DbError> {
    let name = name.map(str::to_string);
    no_nul([&name])?;
    let limit = page.limit();
    let mut q = Query::new(PACKAGE_SELECT);
    q.and("WHERE k.repository = ?", vec![repo.into()]);
    if let Some(n) = &name {
        q.and("AND k.name = ?", vec![n.into()]);
    }
    if let Some(cursor) = &page.cursor {
        let f = decode(cursor, 2)?;
        let num = |s: &str| s.parse::<i64>().map_err(|_| bad_cursor(cursor));
        let (at, seq) = (num(&f[0])?, num(&f[1])?);
        q.and(
            "AND (k.created_at < ? OR (k.created_at = ? AND k.seq < ?))",
            vec![at.into(), at.into(), seq.into()],
        );
    }
    q.and(
        &format!("ORDER BY k.created_at DESC, k.seq DESC LIMIT {}", limit + 1),
        vec![],
    );
    let mut found = c
        .query(&q.sql, &q.args)?
        .into_iter()
        .map(package_row)
        .collect::<Result<Vec<_>, _>>()?;
    let mut next = None;
    if found.len() > limit {
        found.truncate(limit);
        // The row's own milliseconds and order (the item shows RFC 3339).
        let mut r = c.query_one(
            "SELECT created_at, seq FROM packages WHERE id = ?1",
            &[found[limit - 1].0.as_str().into()],
        )?;
        next = Some(encode(&[&r.int(0)?.to_string(), &r.int(1)?.to_string()]));
    }
    Ok(Page {
        items: found.into_iter().map(|(_, p)| p).collect(),
        next,
    })
}

/// Artifacts of run `run_id` that `filter` admits, by name, then creation.
pub(crate) fn artifacts(
    c: &mut dyn Sql,
    run_id: &str,
    filter: &ArtifactFilter,
    page: &PageRequest,
) -> Result<Page<Artifact>, DbError> {
    no_nul([&filter.job])?;
    let limit = page.limit();
    let mut q = Query::new(ARTIFACT_SELECT);
    q.and(
        "WHERE a.run_id = ? AND a.state != 'deleted'",
        vec![run_id.into()],
    );
    if let Some(job) = &filter.job {
        q.and("AND j.key = ?", vec![job.into()]);
    }
    if !filter.include_retried {
        q.and(NOT_SUPERSEDED, vec![]);
    }
    if let Some(cursor) = &page.cursor {
        let f = decode(cursor, 3)?;
        let at: i64 = f[1].parse().map_err(|_| bad_cursor(cursor))?;
        q.and(
            "AND (a.name, a.created_at, a.id) > (?, ?, ?)",
            vec![f[0].clone().into(), at.into(), f[2].clone().into()],
        );
    }
    q.and(
        &format!("ORDER BY a.name, a.created_at, a.id LIMIT {}", limit + 1),
        vec![],
    );
    let mut items = rows(c, &q.sql, &q.args, artifact_row)?;
    let mut next = None;
    if items.len() > limit {
        items.truncate(limit);
        let last = &items[limit - 1];
        // The row's own milliseconds (the item shows them as RFC 3339).
        let at = c
            .query_one(
                "SELECT created_at FROM artifacts WHERE id = ?1",
                &[last.id.as_str().into()],
            )?
            .int(0)?;
        next = Some(encode(&[&last.name, &at.to_string(), &last.id]));
    }
    Ok(Page { items, next })
}

/// Visible files of artifact `id`, by path.
pub(crate) fn artifact_files(
    c: &mut dyn Sql,
    id: &str,
    page: &PageRequest,
) -> Result<Page<FileInfo>, DbError> {
    get_artifact(c, id)?;
    let limit = page.limit();
    let mut q = Query::new(FILE_SELECT);
    q.and("AND f.artifact_id = ?", vec![id.into()]);
    if let Some(cursor) = &page.cursor {
        q.and("AND f.path > ?", vec![decode(cursor, 1)?.remove(0).into()]);
    }
    q.and(&format!("ORDER BY f.path LIMIT {}", limit + 1), vec![]);
    let mut items = rows(c, &q.sql, &q.args, file_row)?;
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        encode(&[&items[limit - 1].path])
    });
    Ok(Page { items, next })
}

/// A scope naming an artifact or a job is read artifact by artifact
/// (through `UNIQUE (artifact_id, path)`, merged in (path, id) order) when
/// it admits at most this many artifacts; more, and the run is walked.
const MERGE_ARTIFACTS: usize = 16;

/// Files of run `run_id` that `glob` matches within `scope`, sorted by path
/// then upload time (as [`query::search`] sorts them), every match of a
/// path on one page.
pub(crate) fn search(
    c: &mut dyn Sql,
    run_id: &str,
    glob: &Glob,
    scope: &Scope,
    page: &PageRequest,
) -> Result<Page<FileInfo>, DbError> {
    no_nul([&scope.job, &scope.step, &scope.name])?;
    let limit = page.limit();
    let budget = match page.scan_budget {
        0 => SEARCH_SCAN_BUDGET,
        n => n,
    };
    // Where the files come from: the run's, or a few artifacts' files.
    let sources: Vec<(&str, Value)> = match scoped_artifacts(c, run_id, scope)? {
        Some(ids) => ids
            .into_iter()
            .map(|id| (ARTIFACT_SOURCE, id.into()))
            .collect(),
        None => vec![("AND f.run_id = ?", run_id.into())],
    };
    // The clauses every source's statement adds, with their values. The
    // jobs' run is named too, for PostgreSQL's planner.
    let mut filters: Vec<(&str, Vec<Value>)> = vec![("AND j.run_id = ?", vec![run_id.into()])];
    if let Some(path) = glob.literal_path() {
        filters.push(("AND f.path = ?", vec![path.into()]));
    } else {
        let prefix = glob.literal_prefix();
        if !prefix.is_empty() {
            // Every path under `prefix/` sorts in [prefix, prefix + "0"):
            // '0' is the byte after '/'. The range holds some paths the
            // glob does not match (`prefix.txt`); the matcher drops them.
            let end = format!("{prefix}0");
            filters.push((
                "AND f.path >= ? AND f.path < ?",
                vec![prefix.into(), end.into()],
            ));
        }
        if let Some(name) = glob.literal_name() {
            // `**/index.html`: only files of that name, through
            // `files_run_name`, still in (path, id) order.
            filters.push(("AND f.file_name = ?", vec![name.into()]));
        }
    }
    if let Some(job) = &scope.job {
        filters.push(("AND j.key = ?", vec![job.into()]));
    }
    if let Some(step) = &scope.step {
        filters.push(("AND u.step = ?", vec![step.into()]));
    }
    if let Some(name) = &scope.name {
        filters.push(("AND a.name = ?", vec![name.into()]));
    }
    if !scope.include_retried {
        filters.push((NOT_SUPERSEDED, vec![]));
    }
    // Each source's rows come in statements of growing size, buffered;
    // the scan takes the least (path, id) of the sources' next rows.
    let start = match &page.cursor {
        Some(cursor) => After::Path(decode(cursor, 1)?.remove(0)),
        None => After::Start,
    };
    let mut sources: Vec<Source> = sources
        .into_iter()
        .map(|(clause, value)| Source {
            unique_paths: clause == ARTIFACT_SOURCE,
            clause,
            value,
            after: start.clone(),
            rows: VecDeque::new(),
            done: false,
            path_done: false,
            n: (limit + 1).min(SCAN_ROWS),
        })
        .collect();
    // Once the page's last path is known (`finishing`), a source reads only
    // the rest of that path, in statements of the largest size: a path in
    // every one of 1,000 artifacts is then read in two statements, not in
    // growing batches that read past it.
    let mut next_row =
        |c: &mut dyn Sql, finishing: Option<&str>| -> Result<Option<FileInfo>, DbError> {
            let wanted =
                |s: &Source| s.rows.is_empty() && !s.done && !(finishing.is_some() && s.path_done);
            for src in sources.iter_mut().filter(|s| wanted(s)) {
                if finishing.is_none() && src.path_done {
                    // Whether anything follows the finished path: one row.
                    src.path_done = false;
                    src.n = 1;
                }
                let mut q = Query::new(RUN_FILE_SELECT);
                q.and(src.clause, vec![src.value.clone()]);
                for (clause, values) in &filters {
                    q.and(clause, values.clone());
                }
                if let Some(path) = finishing {
                    q.and("AND f.path = ?", vec![path.into()]);
                    src.n = SCAN_ROWS;
                }
                match &src.after {
                    // An artifact's paths are unique: its index on (artifact_id,
                    // path) serves `path >` directly.
                    After::Row(path, _) if src.unique_paths => {
                        q.and("AND f.path > ?", vec![path.into()]);
                    }
                    After::Row(path, id) => {
                        q.and("AND (f.path, f.id) > (?, ?)", vec![path.into(), id.into()]);
                    }
                    After::Path(path) => {
                        q.and("AND f.path > ?", vec![path.into()]);
                    }
                    After::Start => {}
                }
                q.and(&format!("ORDER BY f.path, f.id LIMIT {}", src.n), vec![]);
                let batch = rows(c, &q.sql, &q.args, file_row)?;
                // A short batch of the last path ends that path, not the source.
                match finishing {
                    Some(_) => src.path_done = batch.len() < src.n,
                    None => src.done = batch.len() < src.n,
                }
                src.n = (src.n * 4).min(SCAN_ROWS);
                if let Some(last) = batch.last() {
                    src.after = After::Row(last.path.clone(), last.id.clone());
                }
                src.rows.extend(batch);
            }
            let least = sources
                .iter_mut()
                .filter(|s| !s.rows.is_empty())
                .min_by(|a, b| {
                    let (a, b) = (&a.rows[0], &b.rows[0]);
                    (&a.path, &a.id).cmp(&(&b.path, &b.id))
                });
            Ok(least.and_then(|s| s.rows.pop_front()))
        };
    let mut kept: Vec<FileInfo> = Vec::new();
    let mut matched = 0usize;
    let mut scanned = 0usize;
    // Once set, the page ends where the path changes.
    let mut last_path: Option<String> = None;
    // Set once every source has read all of the last path: the sources are
    // then read past it, a row each, to know whether a next page exists.
    let mut probing = false;
    loop {
        let finishing = last_path.as_deref().filter(|_| !probing);
        let Some(f) = next_row(c, finishing)? else {
            if finishing.is_some() {
                probing = true;
                continue;
            }
            break;
        };
        if let Some(last) = &last_path {
            if f.path != *last {
                let next = Some(encode(&[last]));
                fill_producer_run(c, run_id, &mut kept)?;
                return Ok(Page {
                    items: query::search(glob, scope, kept),
                    next,
                });
            }
        }
        scanned += 1;
        let end_here = last_path.is_none();
        if scope.admits(&f) && glob.is_match(&f.path) {
            matched += 1;
            if end_here && matched >= limit {
                last_path = Some(f.path.clone());
            }
            kept.push(f);
        } else if end_here && scanned >= budget {
            last_path = Some(f.path.clone());
        }
    }
    fill_producer_run(c, run_id, &mut kept)?;
    Ok(Page {
        items: query::search(glob, scope, kept),
        next: None,
    })
}

/// One source of a search's rows: its clause and value (`f.run_id = ?` or
/// `f.artifact_id = ?`), where its reading stands, the rows read and not
/// yet taken, and how many the next statement reads.
struct Source {
    clause: &'static str,
    /// Whether the source is one artifact, whose paths are unique.
    unique_paths: bool,
    value: Value,
    after: After,
    rows: VecDeque<FileInfo>,
    done: bool,
    /// Every row of the page's last path is read (see `finishing`).
    path_done: bool,
    n: usize,
}

/// The clause of a search source that is one artifact.
const ARTIFACT_SOURCE: &str = "AND f.artifact_id = ?";

/// Where a search scan stands.
#[derive(Clone)]
enum After {
    /// At the start of the run.
    Start,
    /// After every row of this path (a cursor).
    Path(String),
    /// After this (path, id) row.
    Row(String, String),
}

/// The ids of the artifacts a scope naming an artifact or a job admits, when
/// they are few enough to read one by one ([`MERGE_ARTIFACTS`]); `None` when
/// the scope names neither, or admits more.
fn scoped_artifacts(
    c: &mut dyn Sql,
    run_id: &str,
    scope: &Scope,
) -> Result<Option<Vec<String>>, DbError> {
    if scope.name.is_none() && scope.job.is_none() {
        return Ok(None);
    }
    let mut q = Query::new("SELECT a.id FROM artifacts a JOIN jobs j ON j.id = a.job_id");
    q.and(
        "WHERE a.run_id = ? AND a.state = 'finished'",
        vec![run_id.into()],
    );
    if let Some(name) = &scope.name {
        q.and("AND a.name = ?", vec![name.into()]);
    }
    if let Some(job) = &scope.job {
        q.and("AND j.key = ?", vec![job.into()]);
    }
    if !scope.include_retried {
        q.and(NOT_SUPERSEDED, vec![]);
    }
    q.and(&format!("LIMIT {}", MERGE_ARTIFACTS + 1), vec![]);
    let ids: Vec<String> = c
        .query(&q.sql, &q.args)?
        .into_iter()
        .map(|mut r| r.text(0))
        .collect::<Result<_, _>>()?;
    Ok((ids.len() <= MERGE_ARTIFACTS).then_some(ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_its_fields() {
        let c = encode(&["a/b c.txt", "17", "ünï"]);
        assert!(c.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(decode(&c, 3).unwrap(), ["a/b c.txt", "17", "ünï"]);
    }

    #[test]
    fn a_cursor_not_given_out_is_refused() {
        for bad in ["zz", "abc", "ff", &encode(&["a", "b"])] {
            let e = decode(bad, 1).unwrap_err();
            assert!(matches!(e, DbError::Invalid(_)), "{bad}: {e}");
        }
    }
}
