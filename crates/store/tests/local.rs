//! The conformance story against the local-disk backend.

use std::sync::Arc;

use satchel_store::{conformance, ContentStore, Digest, Durability, LocalStore};

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn interrupted_writes_leave_no_temp_files_or_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let body = vec![7u8; 3 * 1024 * 1024];
    let d = Digest::of(&body);
    // The body ends early: nothing may be left behind.
    let err = store
        .put(
            &d,
            body.len() as u64,
            &mut &body[..1024 * 1024],
            Durability::Sync,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wrong size"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert!(!store.contains(&d).await.unwrap());
}

#[tokio::test]
async fn concurrent_writers_of_one_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path()).unwrap());
    let body = Arc::new(vec![9u8; 2 * 1024 * 1024 + 3]);
    let d = Digest::of(&body);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, b) = (store.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            s.put(&d, b.len() as u64, &mut &b[..], Durability::Sync)
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.size(&d).await.unwrap(), body.len() as u64);
}

#[test]
fn reopening_clears_stale_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    LocalStore::open(dir.path()).unwrap();
    std::fs::write(dir.path().join("tmp/leftover"), b"half a blob").unwrap();
    LocalStore::open(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn corrupted_blobs_are_never_served_whole() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    for size in [100usize, 2 * 1024 * 1024] {
        let body: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let d = Digest::of(&body);
        store
            .put(&d, size as u64, &mut &body[..], Durability::Sync)
            .await
            .unwrap();
        let hex = d.to_hex();
        let path = dir.path().join("blobs").join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[size - 1] ^= 0x80;
        std::fs::write(&path, bytes).unwrap();
        // Whole reads fail, either at once or before the last byte.
        match store.get(&d, None).await {
            Err(e) => assert!(e.to_string().contains("integrity error"), "{e}"),
            Ok(mut s) => {
                let mut got = 0usize;
                let mut failed = false;
                while let Some(c) = s.next().await {
                    match c {
                        Ok(c) => got += c.len(),
                        Err(e) => {
                            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                            failed = true;
                        }
                    }
                }
                assert!(failed && got < size, "{got} of {size} bytes served");
            }
        }
        // Ranged reads cannot be checked and still work.
        let mut s = store.get(&d, Some(0..10)).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().len(), 10);
    }
}
