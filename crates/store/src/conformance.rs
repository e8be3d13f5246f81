//! One conformance story for every [`ContentStore`] backend.
//!
//! Each backend's tests call [`run_all`] with a fresh, empty store, as
//! `object_store`'s own integration suite does, so every backend is held to
//! the same behaviour: verified writes, atomic failure, ranges, idempotent
//! deletes, concurrent writers of the same blob.

use futures_util::TryStreamExt;

use crate::{ContentStore, Digest, Durability, StoreError};

async fn read_all<S: ContentStore + ?Sized>(
    store: &S,
    d: &Digest,
    range: Option<std::ops::Range<u64>>,
) -> Result<Vec<u8>, StoreError> {
    let s = store.get(d, range).await?;
    let chunks: Vec<bytes::Bytes> = s.try_collect().await.map_err(|e| StoreError::Io {
        context: "reading".into(),
        source: e,
    })?;
    Ok(chunks.concat())
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Runs every check against `store`, which must start empty. Panics on the
/// first failure with a message naming the check.
pub async fn run_all<S: ContentStore + ?Sized>(store: &S) {
    put_get_roundtrip(store).await;
    rejects_wrong_digest_and_size(store).await;
    ranges(store).await;
    delete_is_idempotent(store).await;
    deferred_then_flush(store).await;
}

async fn put_get_roundtrip<S: ContentStore + ?Sized>(store: &S) {
    for n in [
        0usize,
        1,
        4096,
        256 * 1024,
        256 * 1024 + 1,
        3 * 1024 * 1024 + 7,
    ] {
        let body = data(n, 1);
        let d = Digest::of(&body);
        assert!(
            !store.contains(&d).await.unwrap(),
            "empty store holds {n}-byte blob"
        );
        store
            .put(&d, n as u64, &mut &body[..], Durability::Sync)
            .await
            .unwrap_or_else(|e| panic!("put of {n} bytes: {e}"));
        assert!(store.contains(&d).await.unwrap());
        assert_eq!(store.size(&d).await.unwrap(), n as u64);
        assert_eq!(
            read_all(store, &d, None).await.unwrap(),
            body,
            "roundtrip {n}"
        );
        // Writing the same content again is harmless.
        store
            .put(&d, n as u64, &mut &body[..], Durability::Sync)
            .await
            .unwrap();
        assert_eq!(read_all(store, &d, None).await.unwrap(), body);
    }
}

async fn rejects_wrong_digest_and_size<S: ContentStore + ?Sized>(store: &S) {
    for n in [10usize, 2 * 1024 * 1024] {
        let body = data(n, 2);
        let wrong = Digest::of(b"something else");
        let err = store
            .put(&wrong, n as u64, &mut &body[..], Durability::Sync)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(
            !store.contains(&wrong).await.unwrap(),
            "mismatched blob was stored"
        );
        let d = Digest::of(&body);
        let err = store
            .put(&d, n as u64 + 5, &mut &body[..], Durability::Sync)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err}");
        assert!(!store.contains(&d).await.unwrap(), "short blob was stored");
    }
    let missing = Digest::of(b"never stored");
    assert!(matches!(
        store.size(&missing).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get(&missing, None).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn ranges<S: ContentStore + ?Sized>(store: &S) {
    let body = data(1_000_000, 3);
    let d = Digest::of(&body);
    store
        .put(&d, body.len() as u64, &mut &body[..], Durability::Sync)
        .await
        .unwrap();
    assert_eq!(
        read_all(store, &d, Some(10..20)).await.unwrap(),
        &body[10..20]
    );
    assert_eq!(
        read_all(store, &d, Some(999_990..1_000_000)).await.unwrap(),
        &body[999_990..]
    );
    assert_eq!(read_all(store, &d, Some(5..5)).await.unwrap(), b"");
    assert!(matches!(
        store.get(&d, Some(0..1_000_001)).await,
        Err(StoreError::BadRange { .. })
    ));
}

async fn delete_is_idempotent<S: ContentStore + ?Sized>(store: &S) {
    let body = data(100, 4);
    let d = Digest::of(&body);
    store
        .put(&d, 100, &mut &body[..], Durability::Sync)
        .await
        .unwrap();
    store.delete(&d).await.unwrap();
    assert!(!store.contains(&d).await.unwrap());
    store.delete(&d).await.unwrap();
}

async fn deferred_then_flush<S: ContentStore + ?Sized>(store: &S) {
    let mut digests = Vec::new();
    for i in 0..50u8 {
        let body = data(4096, 100 + i);
        let d = Digest::of(&body);
        store
            .put(&d, 4096, &mut &body[..], Durability::Deferred)
            .await
            .unwrap();
        digests.push((d, body));
    }
    store.flush().await.unwrap();
    for (d, body) in digests {
        assert_eq!(read_all(store, &d, None).await.unwrap(), body);
    }
}
