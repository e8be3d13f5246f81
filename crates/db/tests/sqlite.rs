//! The metadata story against SQLite, including a reopen.

use satchel_db::{story, MetaStore, PageRequest, SqliteStore};

#[tokio::test]
async fn sqlite_store_tells_the_story() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteStore::open(dir.path().join("m.db")).unwrap();
    story::run_all(&db).await;
    drop(db);
    let db = SqliteStore::open(dir.path().join("m.db")).unwrap();
    assert_eq!(
        db.list_runs("pipe", &PageRequest::default())
            .await
            .unwrap()
            .items
            .len(),
        1,
        "survives reopen"
    );
}
