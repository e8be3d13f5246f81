//! The metadata benchmark of issue 14, on SQLite and PostgreSQL side by
//! side: a run with 100,000 files across 1,000 artifacts, a pipeline with
//! 10,000 runs, and the queries the server answers from them (search and
//! list, first page and a deep cursor page), p50 and p99 over many
//! repetitions, against the goal of p99 ≤ 20 ms. Then a 10,000-file
//! manifest committed into that populated database (goal ≤ 0.5 s).
//!
//! Times are taken at the [`MetaStore`] boundary, the calls the HTTP
//! handlers make: they include the database, the row decoding and the
//! glob matching, not HTTP and JSON.
//!
//! ```sh
//! bash bench/metadata.sh
//! ```
//!
//! `META_FILES` (100000), `META_ARTIFACTS` (1000), `META_RUNS` (10000) and
//! `META_REPS` (200) size it; `META_BACKENDS=sqlite` skips PostgreSQL;
//! `META_KEEP=1` keeps the PostgreSQL database (and prints its URL) for
//! `EXPLAIN ANALYZE`.

use std::time::{Duration, Instant};

use satchel_db::{ArtifactFilter, MetaStore, PageRequest, Quotas};
use satchel_model::api::{CreateUpload, JobContext, NewFile, NewRun};
use satchel_model::glob::Glob;
use satchel_model::query::Scope;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Jobs of the big run; each publishes `artifacts / JOBS` named artifacts.
const JOBS: usize = 50;

fn ctx(pipeline: &str, run: u64, job: &str) -> JobContext {
    JobContext {
        pipeline: pipeline.into(),
        run,
        stage: Some("build".into()),
        job: job.into(),
        step: Some("step".into()),
        attempt: 1,
        branch: Some("main".into()),
        commit: None,
        build: None,
    }
}

fn new_file(path: String, digest: String) -> NewFile {
    NewFile {
        path,
        size: 100,
        sha256: digest,
        mode: 0o644,
        content_type: None,
        source_path: None,
        glob: None,
    }
}

/// Creates, records and finishes one upload.
async fn publish(db: &dyn MetaStore, req: &CreateUpload) -> Duration {
    let t = Instant::now();
    let plan = db.create_upload(req, &Quotas::default()).await.unwrap();
    let created = t.elapsed();
    let missing: std::collections::HashSet<&str> =
        plan.missing.iter().map(String::as_str).collect();
    let blobs: Vec<(String, u64)> = req
        .files
        .iter()
        .filter(|f| missing.contains(f.sha256.as_str()))
        .map(|f| (f.sha256.clone(), f.size))
        .collect();
    db.record_blobs(&blobs).await.unwrap();
    let recorded = t.elapsed();
    db.finish_upload(&plan.upload_id).await.unwrap();
    if std::env::var("META_PHASES").as_deref() == Ok("1") {
        eprintln!(
            "    {} files: create {created:?}, record {:?}, finish {:?}",
            req.files.len(),
            recorded - created,
            t.elapsed() - recorded
        );
    }
    t.elapsed()
}

/// The data set: run 1 of `big` with `files` files in `artifacts`
/// artifacts (every artifact also holds `logs/build.log`, one path with a
/// match per artifact), and `runs` runs of `many`.
async fn populate(db: &dyn MetaStore, files: usize, artifacts: usize, runs: usize) {
    let per = files / artifacts;
    let t = Instant::now();
    for k in 0..artifacts {
        // Artifact names are unique in a run: `j25-n10`, files under
        // `out/j25/n10/`.
        let (job, n) = (format!("j{:02}", k % JOBS), format!("n{:02}", k / JOBS));
        let name = format!("{job}-{n}");
        let mut list: Vec<NewFile> = (0..per - 1)
            .map(|i| {
                new_file(
                    format!("out/{job}/{n}/d{}/f{i:03}.txt", i % 10),
                    format!("{:032x}{:032x}", k, i),
                )
            })
            .collect();
        list.push(new_file(
            "logs/build.log".into(),
            format!("{:032x}{:032x}", k, 999_999),
        ));
        let req = CreateUpload {
            context: ctx("big", 1, &job),
            name: Some(name),
            files: list,
            exclusive: false,
            replace: false,
            expire_in_secs: None,
        };
        publish(db, &req).await;
    }
    eprintln!(
        "  {files} files in {artifacts} artifacts: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for i in 0..runs {
        db.create_run(
            "many",
            &NewRun {
                branch: Some(format!("b{}", i % 10)),
                commit: Some(format!("{i:040x}")),
                ..NewRun::default()
            },
        )
        .await
        .unwrap();
    }
    eprintln!("  {runs} runs: {:.1} s", t.elapsed().as_secs_f64());
}

/// Statements sent to PostgreSQL so far (0 on SQLite).
fn statements() -> u64 {
    satchel_db::postgres::statements_sent()
}

/// p50 and p99 of `reps` calls of `f`, after one warm-up call, and the
/// statements one call sent to PostgreSQL.
async fn time<F, Fut>(reps: usize, mut f: F) -> (Duration, Duration, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let sent = statements();
    assert!(f().await > 0, "the query found nothing");
    let per_call = (statements() - sent) as f64;
    let mut v: Vec<Duration> = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed());
    }
    v.sort();
    (
        v[v.len() / 2],
        v[(v.len() * 99).div_ceil(100) - 1],
        per_call,
    )
}

/// The cursor `depth` pages into a list, by walking; `None` when the list
/// is not that deep.
async fn cursor_at<F, Fut>(depth: usize, mut page: F) -> Option<String>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let mut cursor = None;
    for _ in 0..depth {
        cursor = Some(page(cursor).await?);
    }
    cursor
}

struct Row {
    query: String,
    backend: &'static str,
    p50: Duration,
    p99: Duration,
    goal: Duration,
    /// Statements one call sent (PostgreSQL only).
    statements: f64,
}

async fn bench(db: &dyn MetaStore, backend: &'static str, rows: &mut Vec<Row>) {
    let (files, artifacts, runs, reps) = (
        env("META_FILES", 100_000),
        env("META_ARTIFACTS", 1_000),
        env("META_RUNS", 10_000),
        env("META_REPS", 200),
    );
    eprintln!("{backend}: populating");
    populate(db, files, artifacts, runs).await;
    // As autovacuum does a minute or so after a bulk load, and `satchel
    // admin migrate` at its end: the figures are those of a database in
    // use, not of PostgreSQL planning from empty-table statistics.
    db.refresh_statistics().await.unwrap();
    let run = db.find_run("big", 1).await.unwrap();
    let goal = Duration::from_millis(20);
    let mut push = |query: String, (p50, p99, statements): (Duration, Duration, f64)| {
        eprintln!("  {query}: p50 {p50:?} p99 {p99:?}");
        rows.push(Row {
            query,
            backend,
            p50,
            p99,
            goal,
            statements,
        })
    };
    let search = |q: &str, scope: Scope, limit: usize| {
        let (glob, id) = (Glob::new(q).unwrap(), run.id.clone());
        move |cursor: Option<String>| {
            let (glob, scope, id) = (glob.clone(), scope.clone(), id.clone());
            async move {
                db.search_files(
                    &id,
                    &glob,
                    &scope,
                    &PageRequest {
                        cursor,
                        limit,
                        ..PageRequest::default()
                    },
                )
                .await
                .unwrap()
            }
        }
    };
    // One artifact three quarters into the run.
    let k = artifacts * 3 / 4;
    let (job, n) = (format!("j{:02}", k % JOBS), format!("n{:02}", k / JOBS));
    let cases: [(&str, String, Scope, usize); 6] = [
        (
            "search one file",
            format!("out/{job}/{n}/d5/f005.txt"),
            Scope::default(),
            100,
        ),
        (
            "search a directory glob",
            format!("out/{job}/{n}/**"),
            Scope::default(),
            100,
        ),
        (
            "search a path in every artifact",
            "logs/build.log".into(),
            Scope::default(),
            100,
        ),
        (
            "search scoped by job and name",
            "**".into(),
            Scope {
                job: Some(job.clone()),
                name: Some(format!("{job}-{n}")),
                ..Scope::default()
            },
            100,
        ),
        (
            "search an unanchored glob",
            "**/f005.txt".into(),
            Scope::default(),
            100,
        ),
        ("search everything", "**".into(), Scope::default(), 100),
    ];
    for (what, q, scope, limit) in cases {
        let f = search(&q, scope, limit);
        push(
            format!("{what} `{q}`, first page of {limit}"),
            time(reps, || {
                let f = f.clone();
                async move { f(None).await.items.len() }
            })
            .await,
        );
    }
    // A deep page: 90% of the way through the whole run.
    let f = search("**", Scope::default(), 100);
    let depth = (files * 9 / 10 / 100).max(1);
    if let Some(deep) = cursor_at(depth, |c| {
        let f = f.clone();
        async move { f(c).await.next }
    })
    .await
    {
        push(
            format!("search everything `**`, page {depth} of 100"),
            time(reps, || {
                let (f, c) = (f.clone(), deep.clone());
                async move { f(Some(c)).await.items.len() }
            })
            .await,
        );
    }

    let arts = |cursor: Option<String>| {
        let id = run.id.clone();
        async move {
            db.artifacts_page(
                &id,
                &ArtifactFilter::default(),
                &PageRequest {
                    cursor,
                    limit: 100,
                    ..PageRequest::default()
                },
            )
            .await
            .unwrap()
        }
    };
    push(
        "list artifacts, first page of 100".into(),
        time(reps, || async { arts(None).await.items.len() }).await,
    );
    let depth = (artifacts * 9 / 10 / 100).max(1);
    if let Some(deep) = cursor_at(depth, |c| async { arts(c).await.next }).await {
        push(
            format!("list artifacts, page {depth} of 100"),
            time(reps, || {
                let c = deep.clone();
                async { arts(Some(c)).await.items.len() }
            })
            .await,
        );
    }
    let one = arts(None).await.items[0].id.clone();
    push(
        "list an artifact's files, first page of 100".into(),
        time(reps, || async {
            db.artifact_files_page(&one, &PageRequest::first(100))
                .await
                .unwrap()
                .items
                .len()
        })
        .await,
    );

    let list_runs = |cursor: Option<String>| async move {
        db.list_runs(
            "many",
            &PageRequest {
                cursor,
                limit: 100,
                ..PageRequest::default()
            },
        )
        .await
        .unwrap()
    };
    push(
        "list runs, first page of 100".into(),
        time(reps, || async { list_runs(None).await.items.len() }).await,
    );
    let depth = (runs * 9 / 10 / 100).max(1);
    if let Some(deep) = cursor_at(depth, |c| async { list_runs(c).await.next }).await {
        push(
            format!("list runs, page {depth} of 100"),
            time(reps, || {
                let c = deep.clone();
                async { list_runs(Some(c)).await.items.len() }
            })
            .await,
        );
    }

    // A 10,000-file manifest into the populated database, new content
    // each time: median and worst of 5.
    let mut commits: Vec<Duration> = Vec::new();
    let mut commit_statements = 0.0;
    for round in 0..5u64 {
        let list: Vec<NewFile> = (0..10_000)
            .map(|i| {
                new_file(
                    format!("dir{}/file{i}.txt", i % 100),
                    format!("{:032x}{:032x}", 0xc0ffee_u64 + round, i),
                )
            })
            .collect();
        let req = CreateUpload {
            context: ctx("big", 2 + round, "commit"),
            name: Some("manifest".into()),
            files: list,
            exclusive: false,
            replace: false,
            expire_in_secs: None,
        };
        let sent = statements();
        commits.push(publish(db, &req).await);
        commit_statements = (statements() - sent) as f64;
    }
    commits.sort();
    let (p50, worst) = (commits[2], commits[4]);
    eprintln!("  10,000-file manifest commit: median {p50:?}, worst {worst:?}");
    rows.push(Row {
        query: "commit a 10,000-file manifest (median, worst of 5)".into(),
        backend,
        p50,
        p99: worst,
        goal: Duration::from_millis(500),
        statements: commit_statements,
    });
}

#[tokio::main]
async fn main() {
    let backends = std::env::var("META_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let mut rows: Vec<Row> = Vec::new();
    for backend in backends.split(',') {
        match backend {
            "sqlite" => {
                let dir = tempfile::tempdir().unwrap();
                let db = satchel_db::SqliteStore::open(dir.path().join("m.db")).unwrap();
                bench(&db, "sqlite", &mut rows).await;
            }
            "postgres" => {
                let base = std::env::var("SATCHEL_TEST_POSTGRES_URL").expect(
                    "SATCHEL_TEST_POSTGRES_URL (source scripts/services.sh's env), or META_BACKENDS=sqlite",
                );
                let url = satchel_db::postgres::create_test_database(&base)
                    .await
                    .unwrap();
                let db = satchel_db::PostgresStore::connect(&url).await.unwrap();
                bench(&db, "postgres", &mut rows).await;
                drop(db);
                if std::env::var("META_KEEP").as_deref() == Ok("1") {
                    eprintln!("kept the PostgreSQL database: {url}");
                } else {
                    satchel_db::postgres::drop_test_database(&base, &url)
                        .await
                        .unwrap();
                }
            }
            other => panic!("unknown backend {other:?}: use sqlite or postgres"),
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| query | backend | p50 ms | p99 ms | goal (p99) | | statements |\n| --- | --- | ---: | ---: | ---: | --- | ---: |"
    );
    let mut met = 0;
    for r in &rows {
        let ok = r.p99 <= r.goal;
        met += usize::from(ok);
        println!(
            "| {} | {} | {:.2} | {:.2} | ≤ {:.0} ms | {} | {} |",
            r.query,
            r.backend,
            ms(r.p50),
            ms(r.p99),
            ms(r.goal),
            if ok { "met" } else { "NOT MET" },
            if r.backend == "postgres" {
                format!("{}", r.statements)
            } else {
                "–".into()
            }
        );
    }
    println!("{met} of {} goals met", rows.len());
}
