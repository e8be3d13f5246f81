//! The metadata story against a real PostgreSQL (`SATCHEL_TEST_POSTGRES_URL`,
//! started by scripts/services.sh), each test in a database of its own.

use satchel_db::{story, MetaStore, PageRequest, PostgresStore, Quotas};

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

/// GC's delete of an old, unreferenced blob row queued behind an upload
/// that references the blob (a dedup: its create touches the row and adds
/// files): once the upload commits, the delete must see those files and
/// keep the row. Before the fix the delete's statement read the files as
/// they were before it waited, and removed the blob (seen as a 409
/// "content has not been uploaded" at finish in the replica GC race test).
/// A trigger holds the create inside its transaction right after its
/// touch until the delete is waiting, so the interleaving is certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_racing_a_dedup_upload_keeps_the_blob_it_references() {
    let Some(url) = fresh().await else { return };
    let db = std::sync::Arc::new(PostgresStore::connect(&url).await.unwrap());
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let blob = "7".repeat(64);
    db.record_blobs(&[(blob.clone(), 7)]).await.unwrap();
    admin
        .batch_execute(
            "CREATE FUNCTION hold_touch() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_advisory_xact_lock_shared(7007); RETURN NULL; END $$;
             CREATE TRIGGER hold_touch AFTER UPDATE ON blobs
               FOR EACH STATEMENT EXECUTE FUNCTION hold_touch();
             SELECT pg_advisory_lock(7007);",
        )
        .await
        .unwrap();
    // Backends of this database waiting for `event` (a lock's kind).
    let waiting = |event: &'static str| {
        let admin = &admin;
        async move {
            for _ in 0..1000 {
                let row = admin
                    .query_one(
                        "SELECT COUNT(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event = $1",
                        &[&event],
                    )
                    .await
                    .unwrap();
                if row.get::<_, i64>(0) > 0 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("nothing came to wait for {event}");
        }
    };

    let create = {
        let db = db.clone();
        tokio::spawn(async move {
            let files = vec![story::file("data.bin", '7', 7)];
            db.create_upload(&story::upload("j", 1, Some("a"), files), &Quotas::default())
                .await
        })
    };
    waiting("advisory").await;
    // A cutoff after the upload's start, as a pass with no grace reads it
    // while the upload is being created.
    let cutoff = satchel_model::id::now_millis() + 60_000;
    let forget = {
        let (db, blob) = (db.clone(), blob.clone());
        tokio::spawn(async move { db.forget_blobs(&[blob], cutoff).await })
    };
    waiting("transactionid").await;
    admin
        .batch_execute("SELECT pg_advisory_unlock(7007)")
        .await
        .unwrap();
    let plan = create.await.unwrap().unwrap();
    assert!(plan.missing.is_empty(), "the content was recorded");
    let gone = forget.await.unwrap().unwrap();
    assert!(
        gone.is_empty(),
        "GC forgot {gone:?}, which an upload references"
    );
    db.finish_upload(&plan.upload_id)
        .await
        .expect("the upload finishes with the content it was told is present");
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
