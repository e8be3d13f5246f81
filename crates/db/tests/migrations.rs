//! Upgrades with data in place. Every schema version satchel has had, on
//! SQLite and on PostgreSQL, filled with rows of every feature it had
//! (named-column fixtures, one set per feature), opens with today's
//! migrations and still means the same through the store's API. And a
//! version-4 SQLite database (before access control) gains the new rules:
//! its pipeline lives in the default organization's default cluster, its
//! key stays unique, tokens can be made for it.

use rusqlite::Connection;
use satchel_db::{AccessStore, MetaStore, PageRequest, SqliteStore};

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

/// Rows as satchel wrote them, one set per feature, with the first
/// schema version (SQLite, PostgreSQL) that could hold them. Named
/// columns: a row written at one version is valid at every later one.
const FIXTURES: &[(&str, usize, usize, &str)] = &[
    ("base", 1, 1, "
INSERT INTO organizations (id, key, created_at) VALUES ('o1', 'default', 1000);
INSERT INTO clusters (id, organization_id, key, created_at) VALUES ('c1', 'o1', 'default', 1000);
INSERT INTO pipelines (id, cluster_id, key, created_at) VALUES ('p1', 'c1', 'old', 1000);
INSERT INTO runs (id, pipeline_id, number, branch, commit_sha, state, created_at)
    VALUES ('r1', 'p1', 3, 'main', 'abc', 'passed', 1000);
INSERT INTO jobs (id, run_id, stage, key, attempt, created_at) VALUES ('j1', 'r1', 'build', 'compile', 1, 1000);
INSERT INTO artifacts (id, run_id, job_id, name, is_default, kind, state, created_at, finished_at)
    VALUES ('a1', 'r1', 'j1', 'default', 1, 'files', 'finished', 1000, 1001);
INSERT INTO uploads (id, artifact_id, step, state, created_at, finished_at)
    VALUES ('u1', 'a1', 'step', 'finished', 1000, 1001);
INSERT INTO blobs (sha256, size, created_at)
    VALUES ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 5, 1000);
INSERT INTO files (id, artifact_id, upload_id, path, size, sha256, mode, content_type, created_at)
    VALUES ('f1', 'a1', 'u1', 'dist/app.txt', 5,
            'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 420, 'text/plain', 1000);
"),
    ("pipelines", 2, 1, r#"
INSERT INTO runs (id, pipeline_id, number, branch, commit_sha, state, created_at, sources, triggered_from, finished_at)
    VALUES ('r2', 'p1', 4, 'main', 'def', 'failed', 2000, '{}', 'r1', 2100);
INSERT INTO jobs (id, run_id, stage, key, attempt, created_at) VALUES ('j2', 'r2', NULL, 'image', 1, 2000);
INSERT INTO artifacts (id, run_id, job_id, name, is_default, kind, state, created_at, finished_at, meta)
    VALUES ('a2', 'r2', 'j2', 'app-image', 0, 'image', 'finished', 2000, 2001,
            '{"image":"registry.example/app","tag":"1","reference":"registry.example/app:1"}');
INSERT INTO packages (id, repository, name, version, kind, meta, origin, created_at)
    VALUES ('k1', 'releases', 'app', '1.0', 'files', NULL,
            '{"artifact_id":"a1","artifact":"default","producer":{"pipeline":"old","run":3,"stage":"build","job":"compile","attempt":1,"superseded":false}}',
            3000);
INSERT INTO package_files (package_id, path, size, sha256, mode, content_type)
    VALUES ('k1', 'dist/app.txt', 5, 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 420, 'text/plain');
INSERT INTO packages (id, repository, name, version, kind, meta, origin, created_at)
    VALUES ('k0', 'releases', 'app', '1.1', 'files', NULL,
            '{"artifact_id":"a1","artifact":"default","producer":{"pipeline":"old","run":3,"stage":"build","job":"compile","attempt":1,"superseded":false}}',
            3000);
"#),
    ("retention", 3, 1, "
INSERT INTO artifacts (id, run_id, job_id, name, is_default, kind, state, created_at, finished_at, expires_at)
    VALUES ('a3', 'r2', 'j2', 'logs', 0, 'files', 'finished', 2000, 2001, 5000);
"),
    ("access", 5, 3, "
INSERT INTO tokens (id, name, hash, scopes, cluster_id, pipeline, created_at)
    VALUES ('t1', 'ci', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'read,write', 'c1', 'old', 4000);
INSERT INTO access_rules (id, kind, organization_id, source_pipeline, target_pipeline, created_at)
    VALUES ('ru1', 'pipeline.artifacts_read.pipeline', 'o1', 'old', 'other', 4000);
INSERT INTO audit_log (id, at, token_id, token_name, org, action, resource, allowed, status)
    VALUES ('0000000000000000000000000000a001', 4000, 't1', 'ci', 'default', 'GET /api/v1/pipelines', '-', 1, 200);
"),
    ("secrets", 6, 4, "
INSERT INTO server_secrets (name, value, created_at) VALUES ('fixture', 'kept-secret', 5000);
"),
    ("owed", 7, 5, "
INSERT INTO artifacts (id, run_id, job_id, name, is_default, kind, state, created_at)
    VALUES ('a4', 'r2', 'j2', 'wip', 0, 'files', 'uploading', 6000);
INSERT INTO uploads (id, artifact_id, step, state, created_at) VALUES ('u4', 'a4', NULL, 'uploading', 6000);
INSERT INTO files (id, artifact_id, upload_id, path, size, sha256, mode, content_type, created_at)
    VALUES ('f4', 'a4', 'u4', 'wip.bin', 7,
            'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc', 420, 'application/octet-stream', 6000);
INSERT INTO upload_owed (upload_id, sha256)
    VALUES ('u4', 'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc');
"),
    ("package owners", 8, 6, "
INSERT INTO package_repositories (repository, organization_id, created_at) VALUES ('releases', 'o1', 7000);
INSERT INTO organizations (id, key, created_at) VALUES ('o2', 'acme', 7000);
INSERT INTO clusters (id, organization_id, key, created_at) VALUES ('c2', 'o2', 'x', 7000);
INSERT INTO pipelines (id, cluster_id, key, created_at) VALUES ('p2', 'c2', 'intruder', 7000);
INSERT INTO runs (id, pipeline_id, number, state, created_at) VALUES ('r3', 'p2', 1, 'passed', 7000);
INSERT INTO jobs (id, run_id, key, attempt, created_at) VALUES ('j3', 'r3', 'build', 1, 7000);
INSERT INTO artifacts (id, run_id, job_id, name, is_default, kind, state, created_at, finished_at)
    VALUES ('a5', 'r3', 'j3', 'default', 1, 'files', 'finished', 7000, 7001);
"),
];

/// Columns the rules keep from other rows, from the schema version that
/// introduced them (SQLite, PostgreSQL): [`FIXTURES`] are written in the
/// columns of the version that introduced them, so on a schema that has
/// such a column they fill it in as the rules would.
const FILLS: &[(usize, usize, &str)] = &[
    // `files.run_id`.
    (
        12,
        10,
        "UPDATE files SET run_id = \
         (SELECT a.run_id FROM artifacts a WHERE a.id = files.artifact_id) WHERE run_id IS NULL",
    ),
    // `artifacts.file_count` and `total_size`.
    (
        14,
        12,
        "UPDATE artifacts SET
           file_count = (SELECT COUNT(*) FROM files f JOIN uploads u ON u.id = f.upload_id
                          WHERE f.artifact_id = artifacts.id AND u.state = 'finished'),
           total_size = (SELECT COALESCE(SUM(f.size), 0) FROM files f
                          JOIN uploads u ON u.id = f.upload_id
                          WHERE f.artifact_id = artifacts.id AND u.state = 'finished')",
    ),
];

/// What the rows of `feature` must still mean after the upgrade.
async fn check(db: &dyn MetaStore, feature: &str, at: &str) {
    let ctx = format!("{feature} rows written at {at}");
    match feature {
        "base" => {
            let run = db.find_run("old", 3).await.expect(&ctx);
            assert_eq!(
                (run.branch.as_deref(), run.state.as_str()),
                (Some("main"), "passed"),
                "{ctx}"
            );
            let files = db.run_files(&run.id).await.expect(&ctx);
            assert_eq!(
                (files.len(), files[0].path.as_str(), files[0].size),
                (1, "dist/app.txt", 5),
                "{ctx}"
            );
            // Totals kept on the artifact row (migrations 14 / 12) count
            // the files written before them.
            let arts = db.list_artifacts(&run.id).await.expect(&ctx);
            let art = arts
                .iter()
                .find(|a| a.id == files[0].artifact_id)
                .expect(&ctx);
            assert_eq!((art.file_count, art.size), (1, 5), "{ctx}");
            assert!(
                db.recorded_blobs()
                    .await
                    .unwrap()
                    .iter()
                    .any(|b| b.starts_with("aaaa")),
                "{ctx}"
            );
            let home = db.pipeline_home("old").await.unwrap().expect(&ctx);
            assert_eq!(
                (home.org.as_str(), home.cluster.as_str()),
                ("default", "default"),
                "{ctx}"
            );
        }
        "pipelines" => {
            let run = db.find_run("old", 4).await.expect(&ctx);
            assert_eq!(run.state.as_str(), "failed", "{ctx}");
            assert_eq!(run.triggered_from.map(|t| t.run), Some(3), "{ctx}");
            let image = db.list_artifacts(&run.id).await.unwrap();
            let image = image.iter().find(|a| a.name == "app-image").expect(&ctx);
            assert_eq!(
                image.image.as_ref().map(|i| i.reference.as_str()),
                Some("registry.example/app:1"),
                "{ctx}"
            );
            let packages = db
                .list_packages("releases", Some("app"), &PageRequest::default())
                .await
                .expect(&ctx)
                .items;
            // Promoted in the same millisecond: the later one is newer.
            let versions: Vec<(&str, u64)> = packages
                .iter()
                .map(|p| (p.version.as_str(), p.file_count))
                .collect();
            assert_eq!(versions, [("1.1", 0), ("1.0", 1)], "{ctx}");
        }
        "retention" => {
            assert!(db.expire_artifacts(10_000).await.unwrap() >= 1, "{ctx}");
            let run = db.find_run("old", 4).await.unwrap();
            let logs = db.list_artifacts(&run.id).await.unwrap();
            let logs = logs.iter().find(|a| a.name == "logs").expect(&ctx);
            assert_eq!(
                logs.state,
                satchel_model::api::ArtifactState::Expired,
                "{ctx}"
            );
            assert!(
                !db.run_files(&db.find_run("old", 3).await.unwrap().id)
                    .await
                    .unwrap()
                    .is_empty(),
                "{ctx}"
            );
        }
        "access" => {
            let tokens = db.list_tokens(None).await.unwrap();
            assert!(
                tokens
                    .iter()
                    .any(|t| t.id == "t1" && t.pipeline.as_deref() == Some("old")),
                "{ctx}: {tokens:?}"
            );
            assert_eq!(db.list_rules(None).await.unwrap().len(), 1, "{ctx}");
            assert_eq!(
                db.list_audit(&Default::default())
                    .await
                    .unwrap()
                    .entries
                    .len(),
                1,
                "{ctx}"
            );
        }
        "secrets" => {
            assert_eq!(
                db.shared_secret("fixture", "another").await.unwrap(),
                "kept-secret",
                "{ctx}"
            );
        }
        "owed" => {
            let needs = db.upload_needs("u4").await.expect(&ctx);
            assert_eq!(needs.state.as_str(), "uploading", "{ctx}");
            assert!(needs.owed.iter().any(|d| d.starts_with("cccc")), "{ctx}");
            assert!(
                db.finish_upload("u4").await.is_err(),
                "{ctx}: finished while owing content"
            );
        }
        "package owners" => {
            let promote = |artifact: &str, version: &str| satchel_model::api::Promote {
                artifact_id: artifact.into(),
                repository: "releases".into(),
                package: "app".into(),
                version: version.into(),
            };
            let e = db.promote(&promote("a5", "9.0")).await;
            assert!(
                matches!(e, Err(satchel_db::DbError::Forbidden(_))),
                "{ctx}: another organization promoted into the repository: {e:?}"
            );
            db.promote(&promote("a1", "2.0")).await.expect(&ctx);
        }
        other => panic!("no check for {other}"),
    }
}

/// Every schema version satchel has shipped, holding the rows of every
/// feature it had, upgrades to today's: for each version N, a database
/// built by migrations 1..=N, filled with the fixtures of N, is opened
/// by the store (which migrates the rest) and must still mean the same.
#[tokio::test]
async fn every_sqlite_schema_upgrades_with_its_data() {
    let all = satchel_db::SQLITE_MIGRATIONS;
    for n in 1..all.len() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        {
            let c = Connection::open(&path).unwrap();
            for sql in &all[..n] {
                c.execute_batch(sql).unwrap();
            }
            for (feature, from, _, rows) in FIXTURES.iter().filter(|f| f.1 <= n) {
                c.execute_batch(rows)
                    .unwrap_or_else(|e| panic!("{feature} rows (from v{from}) at v{n}: {e}"));
            }
            for (_, _, fill) in FILLS.iter().filter(|f| n >= f.0) {
                c.execute_batch(fill).unwrap();
            }
            c.execute_batch(&format!("PRAGMA user_version = {n}"))
                .unwrap();
        }
        let db = SqliteStore::open(&path).unwrap_or_else(|e| panic!("upgrading v{n}: {e}"));
        for (feature, ..) in FIXTURES.iter().filter(|f| f.1 <= n) {
            check(&db, feature, &format!("SQLite v{n}")).await;
        }
    }
}

/// [`every_sqlite_schema_upgrades_with_its_data`] on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_schema_upgrades_with_its_data() {
    let Some(base) = satchel_store::conformance::remote_base("SATCHEL_TEST_POSTGRES_URL") else {
        return;
    };
    let all = satchel_db::postgres::MIGRATIONS;
    for n in 1..all.len() {
        let url = satchel_db::postgres::create_test_database(&base)
            .await
            .unwrap();
        {
            let plain = url.split('?').next().unwrap();
            let (c, conn) = tokio_postgres::connect(plain, tokio_postgres::NoTls)
                .await
                .unwrap();
            let conn = tokio::spawn(conn);
            c.batch_execute("CREATE TABLE satchel_schema (version BIGINT NOT NULL)")
                .await
                .unwrap();
            for (i, sql) in all[..n].iter().enumerate() {
                c.batch_execute(sql).await.unwrap();
                c.execute(
                    "INSERT INTO satchel_schema (version) VALUES ($1)",
                    &[&(i as i64 + 1)],
                )
                .await
                .unwrap();
            }
            for (feature, _, from, rows) in FIXTURES.iter().filter(|f| f.2 <= n) {
                c.batch_execute(rows)
                    .await
                    .unwrap_or_else(|e| panic!("{feature} rows (from v{from}) at v{n}: {e}"));
            }
            for (_, _, fill) in FILLS.iter().filter(|f| n >= f.1) {
                c.batch_execute(fill).await.unwrap();
            }
            drop(c);
            let _ = conn.await;
        }
        let db = satchel_db::PostgresStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("upgrading v{n}: {e}"));
        for (feature, ..) in FIXTURES.iter().filter(|f| f.2 <= n) {
            check(&db, feature, &format!("PostgreSQL v{n}")).await;
        }
    }
}
