//! The metadata story against a real PostgreSQL (`SATCHEL_TEST_POSTGRES_URL`,
//! started by scripts/services.sh), each test in a database of its own.

use satchel_db::{story, MetaStore, PostgresStore};

/// A fresh database's URL, or `None` when remote tests are skipped.
async fn fresh() -> Option<String> {
    let base = satchel_store::conformance::remote_base("SATCHEL_TEST_POSTGRES_URL")?;
    Some(
        satchel_db::postgres::create_test_database(&base)
            .await
            .expect("creating a test database"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_tells_the_story() {
    let Some(url) = fresh().await else { return };
    let db = PostgresStore::connect(&url).await.unwrap();
    story::run_all(&db).await;
    drop(db);
    // Connecting again applies no migration twice and sees the data.
    let db = PostgresStore::connect(&url).await.unwrap();
    assert_eq!(
        db.list_runs("pipe").await.unwrap().len(),
        1,
        "survives reconnect"
    );
}

#[tokio::test]
async fn postgres_store_works_on_a_current_thread_runtime() {
    let Some(url) = fresh().await else { return };
    let db = satchel_db::open(&url).await.unwrap();
    assert!(db.list_runs("none").await.is_err());
    assert!(db.recorded_blobs().await.unwrap().is_empty());
}
