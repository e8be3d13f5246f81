//! Upgrades: a SQLite database written at schema version 4 (before access
//! control), with a finished artifact, opens with today's migrations and
//! keeps everything: its files are visible, its pipeline lives in the
//! default organization's default cluster, and the new rules hold on it
//! (a pipeline's key stays unique, tokens can be made for it).

use rusqlite::Connection;
use satchel_db::{AccessStore, MetaStore, SqliteStore};

/// The schema as satchel left it at version 4.
const V4: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_pipelines.sql"),
    include_str!("../migrations/sqlite/0003_retention.sql"),
    include_str!("../migrations/sqlite/0004_package_order.sql"),
];

/// Rows as a version-4 satchel wrote them: one finished upload of one
/// file in run 3 of pipeline `old`.
const V4_ROWS: &str = "
INSERT INTO organizations VALUES ('o1', 'default', 1000);
INSERT INTO clusters VALUES ('c1', 'o1', 'default', 1000);
INSERT INTO pipelines VALUES ('p1', 'c1', 'old', 1000);
INSERT INTO runs (id, pipeline_id, number, branch, commit_sha, state, created_at)
    VALUES ('r1', 'p1', 3, 'main', 'abc', 'passed', 1000);
INSERT INTO jobs VALUES ('j1', 'r1', 'build', 'compile', 1, 1000);
INSERT INTO artifacts (id, run_id, job_id, name, is_default, kind, state, created_at, finished_at)
    VALUES ('a1', 'r1', 'j1', 'default', 1, 'files', 'finished', 1000, 1001);
INSERT INTO uploads VALUES ('u1', 'a1', 'step', 'finished', 1000, 1001);
INSERT INTO blobs VALUES ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 5, 1000);
INSERT INTO files VALUES ('f1', 'a1', 'u1', 'dist/app.txt', 5,
    'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 420, 'text/plain',
    NULL, NULL, 1000);
";

#[tokio::test]
async fn a_version_4_database_upgrades_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    {
        let c = Connection::open(&path).unwrap();
        for sql in V4 {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch(V4_ROWS).unwrap();
        c.execute_batch("PRAGMA user_version = 4").unwrap();
    }
    let db = SqliteStore::open(&path).unwrap();
    let run = db.find_run("old", 3).await.unwrap();
    assert_eq!(
        (run.branch.as_deref(), run.state.as_str()),
        (Some("main"), "passed")
    );
    let files = db.run_files(&run.id).await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, "dist/app.txt");
    let home = db.pipeline_home("old").await.unwrap().unwrap();
    assert_eq!(
        (home.org.as_str(), home.cluster.as_str()),
        ("default", "default")
    );
    // The key is unique now: a second `old` in another cluster is refused.
    db.create_org("acme").await.unwrap();
    db.create_cluster("acme", "x").await.unwrap();
    assert!(db.create_pipeline("old", "acme", "x").await.is_err());
    let t = db
        .create_token(&satchel_db::TokenRow {
            id: "t1".into(),
            hash: "0".repeat(64),
            spec: satchel_model::access::NewToken {
                scopes: vec![satchel_model::access::Scope::Read],
                pipeline: Some("old".into()),
                ..Default::default()
            },
            expires_at_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(t.cluster, "default");
    assert!(db
        .list_audit(&Default::default())
        .await
        .unwrap()
        .entries
        .is_empty());
    drop(db);
    // And it opens again at the new version without migrating twice.
    let db = SqliteStore::open(&path).unwrap();
    assert_eq!(db.list_tokens(None).await.unwrap().len(), 1);
}
