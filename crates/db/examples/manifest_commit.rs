//! How long a 10,000-file manifest takes to commit, on SQLite and on
//! PostgreSQL side by side (issue 14 asks for at most 0.5 s): create the
//! upload, record its blobs, finish it, list the run's files. Median of 5
//! fresh databases each. A start on the metadata benchmark, not all of it.
//!
//! ```sh
//! bash scripts/services.sh && source /tmp/satchel-test-services/env
//! cargo run --release -p satchel-db --example manifest_commit
//! ```

use std::time::{Duration, Instant};

use satchel_db::{MetaStore, Quotas};
use satchel_model::api::{CreateUpload, JobContext, NewFile};

const FILES: usize = 10_000;
const ROUNDS: usize = 5;

/// Times of one commit: create, record, finish, list.
async fn once(db: &dyn MetaStore) -> [Duration; 4] {
    let files: Vec<NewFile> = (0..FILES)
        .map(|i| NewFile {
            path: format!("dir{}/file{i}.txt", i % 100),
            size: 10,
            sha256: format!("{i:064x}"),
            mode: 0o644,
            content_type: None,
            source_path: None,
            glob: None,
        })
        .collect();
    let req = CreateUpload {
        context: JobContext {
            pipeline: "p".into(),
            run: 1,
            stage: None,
            job: "j".into(),
            step: None,
            attempt: 1,
            branch: None,
            commit: None,
        },
        name: Some("big".into()),
        files: files.clone(),
        exclusive: false,
        expire_in_secs: None,
    };
    let t = Instant::now();
    let plan = db.create_upload(&req, &Quotas::default()).await.unwrap();
    let create = t.elapsed();
    let blobs: Vec<(String, u64)> = files.iter().map(|f| (f.sha256.clone(), 10)).collect();
    let t = Instant::now();
    db.record_blobs(&blobs).await.unwrap();
    let record = t.elapsed();
    let t = Instant::now();
    db.finish_upload(&plan.upload_id).await.unwrap();
    let finish = t.elapsed();
    let run = db.find_run("p", 1).await.unwrap();
    let t = Instant::now();
    assert_eq!(db.run_files(&run.id).await.unwrap().len(), FILES);
    [create, record, finish, t.elapsed()]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let base = std::env::var("SATCHEL_TEST_POSTGRES_URL")
        .expect("SATCHEL_TEST_POSTGRES_URL (source scripts/services.sh's env)");
    let mut results: Vec<(&str, [Duration; 4])> = Vec::new();
    for backend in ["sqlite", "postgres"] {
        let mut runs = Vec::new();
        for _ in 0..ROUNDS {
            let times = if backend == "sqlite" {
                let dir = tempfile::tempdir().unwrap();
                let db = satchel_db::SqliteStore::open(dir.path().join("m.db")).unwrap();
                once(&db).await
            } else {
                let url = satchel_db::postgres::create_test_database(&base)
                    .await
                    .unwrap();
                let db = satchel_db::PostgresStore::connect(&url).await.unwrap();
                let t = once(&db).await;
                drop(db);
                satchel_db::postgres::drop_test_database(&base, &url)
                    .await
                    .unwrap();
                t
            };
            runs.push(times);
        }
        let m: [Duration; 4] = std::array::from_fn(|i| median(runs.iter().map(|r| r[i]).collect()));
        results.push((backend, m));
    }
    println!("{FILES}-file manifest, median of {ROUNDS} (ms)");
    println!("backend     create  record  finish  commit  list-run");
    for (b, m) in &results {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{b:<10} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>9.1}",
            ms(m[0]),
            ms(m[1]),
            ms(m[2]),
            ms(m[0] + m[1] + m[2]),
            ms(m[3])
        );
    }
    let commit = |m: &[Duration; 4]| (m[0] + m[1] + m[2]).as_secs_f64();
    println!(
        "postgres / sqlite commit: {:.2}x",
        commit(&results[1].1) / commit(&results[0].1)
    );
}
