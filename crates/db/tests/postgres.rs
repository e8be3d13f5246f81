//! The metadata story against a real PostgreSQL (`SATCHEL_TEST_POSTGRES_URL`,
//! started by scripts/services.sh), each test in a database of its own.

use satchel_db::{story, MetaStore, PageRequest, PostgresStore};

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
        db.list_runs("pipe", &PageRequest::default())
            .await
            .unwrap()
            .items
            .len(),
        1,
        "survives reconnect"
    );
}

#[tokio::test]
async fn postgres_store_works_on_a_current_thread_runtime() {
    let Some(url) = fresh().await else { return };
    let db = satchel_db::open(&url).await.unwrap();
    assert!(db.list_runs("none", &PageRequest::default()).await.is_err());
    assert!(db.recorded_blobs().await.unwrap().is_empty());
}

/// The blob-write gate across processes: an announcement waits while a
/// sweep holds the gate and goes through once it is released; a hold
/// whose connection is killed says so, and frees the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_gate_excludes_announcements_and_notices_a_lost_hold() {
    let Some(url) = fresh().await else { return };
    let a = PostgresStore::connect(&url).await.unwrap();
    let b = std::sync::Arc::new(PostgresStore::connect(&url).await.unwrap());
    b.announce_writes("w1", &["aa".repeat(32)]).await.unwrap();
    let hold = a.hold_write_gate().await.unwrap().expect("a shared gate");
    assert!(hold.announced.contains(&"aa".repeat(32)));
    hold.check().await.unwrap();
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.announce_writes("w2", &["bb".repeat(32)]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "announcing waits for the sweep");
    drop(hold);
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("announcing after the sweep")
        .unwrap()
        .unwrap();
    b.end_writes("w1").await.unwrap();
    let hold = a.hold_write_gate().await.unwrap().unwrap();
    assert!(!hold.announced.contains(&"aa".repeat(32)), "ended");
    assert!(hold.announced.contains(&"bb".repeat(32)));

    // The session holding the gate is killed (a failover, an admin).
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'",
        )
        .await
        .unwrap();
    let mut lost = false;
    for _ in 0..50 {
        if hold.check().await.is_err() {
            lost = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(lost, "a lost hold is noticed");
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        b.announce_writes("w3", &["cc".repeat(32)]),
    )
    .await
    .expect("the gate is free again")
    .unwrap();
}

/// `sslmode=verify-full` with the test CA encrypts every connection;
/// without a root that signed the server's certificate (the system's roots
/// here) the connection is refused, never made unverified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_are_encrypted_and_the_server_verified() {
    let Some(url) = fresh().await else { return };
    let ca = std::env::var("SATCHEL_TEST_POSTGRES_CA")
        .expect("SATCHEL_TEST_POSTGRES_CA (written by scripts/services.sh) names the test CA");
    let plain = PostgresStore::connect(&url).await.unwrap();
    assert!(!plain.connection_encrypted().await.unwrap());
    drop(plain);
    for mode in ["require", "verify-ca", "verify-full"] {
        let db = PostgresStore::connect(&format!("{url}?sslmode={mode}&sslrootcert={ca}"))
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        assert!(db.connection_encrypted().await.unwrap(), "sslmode={mode}");
        assert!(db.recorded_blobs().await.unwrap().is_empty());
    }
    let e = match PostgresStore::connect(&format!("{url}?sslmode=require")).await {
        Ok(_) => panic!("connected without a root that signed the server's certificate"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
    let e = match PostgresStore::connect(&format!(
        "{url}?sslmode=require&sslrootcert=/nonexistent.pem"
    ))
    .await
    {
        Ok(_) => panic!("a missing root file was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("/nonexistent.pem"), "{e}");
}
