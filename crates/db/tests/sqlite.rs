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

/// Totals that drifted from an artifact's files (an older replica, a
/// fault) are found and set right by fsck's recount, and only those.
#[tokio::test]
async fn recount_corrects_artifact_totals_that_drifted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let db = SqliteStore::open(&path).unwrap();
    story::run_all(&db).await;
    drop(db);
    // One artifact's count drifts, another's size.
    let ids: Vec<String> = {
        let c = rusqlite::Connection::open(&path).unwrap();
        let mut q = c
            .prepare(
                "SELECT id FROM artifacts WHERE file_count > 0 AND state = 'finished' ORDER BY id LIMIT 2",
            )
            .unwrap();
        let ids: Vec<String> = q
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        c.execute(
            "UPDATE artifacts SET file_count = file_count + 5 WHERE id = ?1",
            [&ids[0]],
        )
        .unwrap();
        c.execute(
            "UPDATE artifacts SET total_size = total_size + 1 WHERE id = ?1",
            [&ids[1]],
        )
        .unwrap();
        ids
    };
    let db = SqliteStore::open(&path).unwrap();
    let fixed = db.recount_artifacts(10).await.unwrap();
    assert_eq!(fixed.len(), 2, "{fixed:?}");
    for id in &ids {
        assert!(fixed.iter().any(|f| f.contains(id.as_str())), "{fixed:?}");
        let a = db.get_artifact(id).await.unwrap();
        let files = db.artifact_files(id).await.unwrap();
        let size: u64 = files.iter().map(|f| f.size).sum();
        assert_eq!((a.file_count, a.size), (files.len() as u64, size));
    }
    assert_eq!(
        db.recount_artifacts(10).await.unwrap(),
        Vec::<String>::new()
    );
}
