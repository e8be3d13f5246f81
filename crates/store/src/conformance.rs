//! One conformance story for every storage backend.
//!
//! Each backend's tests call [`run_all`] with a fresh, empty
//! [`ObjectBackend`], as `object_store`'s own integration suite does, so every
//! backend (local directory, memory, S3/Garage, Azure/Azurite, HTTP/WebDAV,
//! GCS/fake-gcs-server) is held to the same behaviour, through the same
//! [`ChunkStore`] the server uses: verified and atomic writes, chunk dedup, ranges across chunks,
//! refusing corrupted content, packs of small blobs, encryption that hides
//! content and hashes, key rotation, and a sweep that frees exactly what
//! nothing uses.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::TryStreamExt;

use crate::backend::ObjectBackend;
use crate::codec::{Codec, Compression, Keyring};
use crate::{ChunkStore, ContentStore, Digest, Durability, StoreError};

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

/// Deterministic bytes that do not repeat (so FastCDC finds cut points).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

async fn put(store: &ChunkStore, body: &[u8]) -> Digest {
    let d = Digest::of(body);
    store
        .put(&d, body.len() as u64, &mut &body[..], Durability::Sync)
        .await
        .unwrap_or_else(|e| panic!("put of {} bytes: {e}", body.len()));
    d
}

/// The digests of `data`'s chunks, cut as the store cuts them.
pub fn chunk_digests(data: &[u8]) -> Vec<Digest> {
    crate::chunked::cuts(data)
        .map(|r| Digest::of(&data[r]))
        .collect()
}

async fn keys(backend: &dyn ObjectBackend) -> HashSet<String> {
    let mut out = HashSet::new();
    for dir in ["b", "c", "p", "r"] {
        for l in backend.list(dir).await.expect("listing") {
            out.insert(l.key);
        }
    }
    out
}

/// The variable that lets a plain `cargo test` skip the remote backends
/// (S3, Azure, WebDAV, GCS) whose servers `scripts/test.sh` starts.
pub const SKIP_REMOTE: &str = "SATCHEL_SKIP_REMOTE_TESTS";

/// The base URL of the test server that `var` names (`scripts/services.sh`
/// exports them), or `None` when [`SKIP_REMOTE`] is `1` and it is unset, in
/// which case it says so on stderr. Any other missing variable fails the
/// test: a backend never passes by not running.
pub fn remote_base(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(base) if !base.is_empty() => Some(base),
        _ if std::env::var(SKIP_REMOTE).as_deref() == Ok("1") => {
            eprintln!("SKIPPED: {var} is not set and {SKIP_REMOTE}=1");
            None
        }
        _ => panic!(
            "{var} is not set: run the suite with scripts/test.sh, which starts the server, \
             or set {SKIP_REMOTE}=1 to skip the remote backends"
        ),
    }
}

/// Runs every check against `backend`, which must start empty. Panics on the
/// first failure with a message naming the check.
///
/// Call it from a multi-threaded runtime
/// (`#[tokio::test(flavor = "multi_thread")]`): concurrent writers run on
/// threads of their own.
pub async fn run_all(backend: Arc<dyn ObjectBackend>) {
    backend_basics(&*backend).await;
    let plain = ChunkStore::new(backend.clone(), Codec::plain());
    put_get_roundtrip(&plain).await;
    rejects_wrong_digest_and_size(&plain).await;
    ranges_across_chunks(&plain).await;
    delete_is_idempotent(&plain).await;
    deferred_then_flush(&plain).await;
    concurrent_writers_of_one_blob(&plain).await;
    dedup_shares_chunks(&plain).await;
    corruption_is_refused(&plain).await;
    small_blobs_share_packs(backend.clone()).await;
    packs_of_tiny_blobs_and_repairs(backend.clone()).await;
    packs_another_process_wrote_are_found_through_the_catalog(backend.clone()).await;
    a_swept_pack_leaves_the_other_copies_of_its_blobs_in_the_catalog(backend.clone()).await;
    a_read_that_missed_a_pack_another_read_found_still_finds_it(backend.clone()).await;
    let zstd = ChunkStore::new(
        backend.clone(),
        Codec {
            compression: Compression::Zstd(3),
            keys: None,
        },
    );
    compression_saves_space(&zstd).await;
    encryption_hides_content_and_hashes(backend.clone()).await;
    a_rotation_keeps_the_copies_a_concurrent_sweep_may_drop(backend.clone()).await;
    encryption_turned_on_for_a_plain_store(backend.clone()).await;
    reused_old_chunks_are_refreshed(backend.clone()).await;
    a_reused_chunk_swept_before_the_recipe_fails_the_write(backend.clone()).await;
    a_pack_written_but_not_recorded_stores_nothing(backend.clone()).await;
    a_sweep_during_a_write_keeps_the_packs_it_relies_on(backend.clone()).await;
    repacking_races_a_write_that_reuses_the_pack(backend.clone()).await;
    sweep_frees_exactly_the_unused(backend.clone()).await;
    settings_marker_guards_keys(backend).await;
}

async fn backend_basics(b: &dyn ObjectBackend) {
    assert!(b.get("c/aa/missing").await.unwrap().is_none());
    assert!(b.head("c/aa/missing").await.unwrap().is_none());
    b.delete("c/aa/missing")
        .await
        .expect("deleting a missing object");
    b.put("c/aa/one", Bytes::from_static(b"first"), true)
        .await
        .unwrap();
    b.put("c/aa/one", Bytes::from_static(b"second"), true)
        .await
        .unwrap();
    assert_eq!(b.get("c/aa/one").await.unwrap().unwrap(), &b"second"[..]);
    let modified = b.head("c/aa/one").await.unwrap().expect("head");
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(300), "mtime is {age:?} old");
    b.put("c/bb/two", Bytes::from_static(b"2"), false)
        .await
        .unwrap();
    b.flush().await.unwrap();
    let listed: HashSet<String> = b
        .list("c")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(
        listed,
        HashSet::from(["c/aa/one".to_string(), "c/bb/two".to_string()])
    );
    assert!(b.list("r").await.unwrap().is_empty());
    for k in ["c/aa/one", "c/bb/two"] {
        b.delete(k).await.unwrap();
        assert!(b.get(k).await.unwrap().is_none(), "{k} survived delete");
    }
}

async fn put_get_roundtrip(store: &ChunkStore) {
    for (i, n) in [
        0usize,
        1,
        4096,
        256 * 1024,
        256 * 1024 + 1,
        3 * 1024 * 1024 + 7,
        9 * 1024 * 1024 + 11,
    ]
    .into_iter()
    .enumerate()
    {
        let body = random_bytes(n, 100 + i as u64);
        let d = Digest::of(&body);
        assert!(
            !store.contains(&d).await.unwrap(),
            "empty store holds {n}-byte blob"
        );
        put(store, &body).await;
        assert!(store.contains(&d).await.unwrap());
        assert_eq!(store.size(&d).await.unwrap(), n as u64);
        assert!(
            read_all(store, &d, None).await.unwrap() == body,
            "roundtrip {n}"
        );
        // Writing the same content again is harmless.
        put(store, &body).await;
        assert!(read_all(store, &d, None).await.unwrap() == body);
    }
}

async fn rejects_wrong_digest_and_size(store: &ChunkStore) {
    for n in [10usize, 2 * 1024 * 1024, 6 * 1024 * 1024] {
        let body = random_bytes(n, 200 + n as u64);
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
        for announced in [n as u64 + 5, n as u64 - 3] {
            let err = store
                .put(&d, announced, &mut &body[..], Durability::Sync)
                .await
                .unwrap_err();
            // Too short is a size error; too long reads only `announced`
            // bytes (a batch goes on with the next blob), which then do not
            // hash to the digest.
            assert!(
                matches!(
                    err,
                    StoreError::SizeMismatch { .. } | StoreError::DigestMismatch { .. }
                ),
                "{err}"
            );
            assert!(!store.contains(&d).await.unwrap(), "wrong-size blob stored");
        }
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

async fn ranges_across_chunks(store: &ChunkStore) {
    let body = random_bytes(10 * 1024 * 1024 + 3, 3);
    let d = put(store, &body).await;
    let n = body.len() as u64;
    for r in [
        0..10,
        10..20,
        n - 10..n,
        5..5,
        1_000_000..5_000_000,
        123_456..n - 1,
        0..n,
    ] {
        let got = read_all(store, &d, Some(r.clone())).await.unwrap();
        assert!(
            got[..] == body[r.start as usize..r.end as usize],
            "range {r:?}"
        );
    }
    assert!(matches!(
        store.get(&d, Some(0..n + 1)).await,
        Err(StoreError::BadRange { .. })
    ));
}

async fn delete_is_idempotent(store: &ChunkStore) {
    for n in [100usize, 5 * 1024 * 1024] {
        let body = random_bytes(n, 4);
        let d = put(store, &body).await;
        store.delete(&d).await.unwrap();
        assert!(!store.contains(&d).await.unwrap());
        store.delete(&d).await.unwrap();
    }
}

async fn deferred_then_flush(store: &ChunkStore) {
    let mut digests = Vec::new();
    for i in 0..50u64 {
        let body = random_bytes(4096, 1000 + i);
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

/// Six writers of one blob at once, each on a thread of its own (so they
/// run in parallel, not just interleaved on one thread), all succeed and
/// leave it whole. Needs a multi-threaded runtime (see [`run_all`]).
async fn concurrent_writers_of_one_blob(store: &ChunkStore) {
    let body = random_bytes(6 * 1024 * 1024 + 3, 5);
    let d = Digest::of(&body);
    let rt = tokio::runtime::Handle::current();
    let results: Vec<Result<(), StoreError>> = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..6)
                .map(|_| {
                    let (rt, body) = (&rt, &body);
                    scope.spawn(move || {
                        rt.block_on(store.put(
                            &d,
                            body.len() as u64,
                            &mut &body[..],
                            Durability::Sync,
                        ))
                    })
                })
                .collect();
            writers
                .into_iter()
                .map(|w| w.join().expect("writer thread"))
                .collect()
        })
    });
    for r in results {
        r.expect("concurrent put");
    }
    assert!(read_all(store, &d, None).await.unwrap() == body);
}

/// Every stored object with its size.
async fn sizes(backend: &dyn ObjectBackend) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for dir in ["b", "c", "p", "r"] {
        for l in backend.list(dir).await.expect("listing") {
            out.insert(l.key, l.size);
        }
    }
    out
}

/// What `before` lacks of `after`: objects and their bytes.
fn added(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> (usize, u64) {
    let new: Vec<u64> = after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .map(|(_, s)| *s)
        .collect();
    (new.len(), new.iter().sum())
}

/// A large blob is a few packs of chunks and a recipe, not an object per
/// chunk; a change of a few bytes stores the chunks around it, in one pack.
async fn dedup_shares_chunks(store: &ChunkStore) {
    let before = sizes(&**store.backend()).await;
    let mut body = random_bytes(40 * 1024 * 1024, 6);
    put(store, &body).await;
    let after_first = sizes(&**store.backend()).await;
    let (objects, bytes) = added(&before, &after_first);
    // 40 MiB: two packs of chunks and the recipe.
    assert!(
        objects <= 3,
        "40 MiB made {objects} objects: {:?}",
        after_first
            .keys()
            .filter(|k| !before.contains_key(*k))
            .collect::<Vec<_>>()
    );
    assert!(bytes >= body.len() as u64, "{bytes} bytes stored");
    // Change a few bytes in the middle: only the chunks around them are new.
    for b in &mut body[20_000_000..20_000_016] {
        *b ^= 0xff;
    }
    put(store, &body).await;
    let after_second = sizes(&**store.backend()).await;
    let (objects, bytes) = added(&after_first, &after_second);
    assert!(
        objects <= 2 && bytes <= 3 * crate::chunked::MAX_CHUNK as u64 + 64 * 1024,
        "a 16-byte change stored {objects} new objects of {bytes} bytes"
    );
}

/// A flipped bit in stored content (a blob of its own, or a chunk in a
/// pack) fails the read; discarding the blob and storing it again repairs it.
async fn corruption_is_refused(store: &ChunkStore) {
    for n in [1000usize, 9 * 1024 * 1024] {
        let body = random_bytes(n, 7 + n as u64);
        let before = keys(&**store.backend()).await;
        let d = put(store, &body).await;
        // Flip one bit in the blob's object, or in the first chunk of the
        // pack just written for it.
        let key = keys(&**store.backend())
            .await
            .difference(&before)
            .find(|k| k.starts_with("p/") || k.starts_with("b/"))
            .cloned()
            .expect("the put wrote a pack or a blob");
        let stored = store.backend().get(&key).await.unwrap().unwrap();
        let mut bad = stored.to_vec();
        let at = if key.starts_with("p/") {
            40
        } else {
            bad.len() - 1
        };
        bad[at] ^= 0x01;
        store
            .backend()
            .put(&key, Bytes::from(bad), true)
            .await
            .unwrap();
        let whole = read_all(store, &d, None).await;
        let msg = whole.expect_err("corrupted blob was served").to_string();
        assert!(msg.contains("integrity error"), "{msg}");
        // Discarding removes the damaged object (and forgets a damaged
        // chunk), so storing the same content again repairs it.
        let removed = store.discard(&d).await.unwrap();
        assert_eq!(removed, u64::from(key.starts_with("p/")), "{key}");
        assert!(!store.contains(&d).await.unwrap());
        // The new pack must be newer by the store's clock (WebDAV tells
        // times to the second).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        put(store, &body).await;
        assert!(read_all(store, &d, None).await.unwrap() == body);
        // A process that never saw the damage reads the good copy too.
        let fresh = ChunkStore::new(store.backend().clone(), Codec::plain());
        assert!(read_all(&fresh, &d, None).await.unwrap() == body);
        if key.starts_with("b/") {
            assert!(store.backend().get(&key).await.unwrap().unwrap() == stored);
        }
    }
}

async fn small_blobs_share_packs(backend: Arc<dyn ObjectBackend>) {
    let store = ChunkStore::new(backend.clone(), Codec::plain()).with_refresh_after(Duration::ZERO);
    let blobs: Vec<(Digest, Bytes)> = (0..1000u64)
        .map(|i| {
            let b = Bytes::from(random_bytes(4096 + (i as usize % 7), 1000 + i));
            (Digest::of(&b), b)
        })
        .collect();
    let before: HashSet<String> = backend
        .list("p")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    store.put_packed(blobs.clone()).await.expect("put_packed");
    let packs = backend.list("p").await.unwrap();
    assert_eq!(
        packs.len(),
        before.len() + 1,
        "1,000 small blobs, one object"
    );
    let key = packs
        .iter()
        .map(|l| l.key.clone())
        .find(|k| !before.contains(k))
        .expect("the new pack");
    // A mismatch anywhere in a pack stores nothing of it.
    let mut wrong = blobs[..3].to_vec();
    wrong[1].1 = Bytes::from_static(b"not what the digest says");
    let e = store.put_packed(wrong).await.unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    assert_eq!(backend.list("p").await.unwrap().len(), packs.len());
    // Readable here, and by a process that only has the bucket.
    let fresh = ChunkStore::new(backend.clone(), Codec::plain()).with_refresh_after(Duration::ZERO);
    for (d, b) in blobs.iter().step_by(97) {
        assert!(fresh.contains(d).await.unwrap());
        assert_eq!(fresh.size(d).await.unwrap(), b.len() as u64);
        assert!(read_all(&fresh, d, None).await.unwrap() == b[..]);
        assert!(read_all(&store, d, Some(10..20)).await.unwrap() == b[10..20]);
    }
    // A flipped bit in one packed blob fails that blob only (once no other
    // copy of it is stored: an earlier check may have left one, which
    // reads would rightly fall back to).
    let hex = blobs[0].0.to_hex();
    backend
        .delete(&format!("b/{}/{hex}", &hex[..2]))
        .await
        .unwrap();
    let stored = backend.get(&key).await.unwrap().unwrap();
    let mut bad = stored.to_vec();
    bad[30] ^= 0x01; // inside the first entry's body
    backend.put(&key, Bytes::from(bad), true).await.unwrap();
    let msg = read_all(&fresh, &blobs[0].0, None)
        .await
        .expect_err("a damaged packed blob was served")
        .to_string();
    assert!(msg.contains("integrity error"), "{msg}");
    assert!(read_all(&fresh, &blobs[1].0, None).await.unwrap() == blobs[1].1[..]);
    backend.put(&key, stored, true).await.unwrap();
    // Sweep: keep a quarter; the pack is rewritten with just those, and a
    // store that still has the old location finds the new one.
    let keep: HashSet<Digest> = blobs.iter().step_by(4).map(|(d, _)| *d).collect();
    let future = SystemTime::now() + Duration::from_secs(3600);
    let mut before = 0;
    for dir in ["b", "r", "c", "p"] {
        before += backend
            .list(dir)
            .await
            .unwrap()
            .iter()
            .map(|o| o.size)
            .sum::<u64>();
    }
    let r = store.sweep(&keep, future).await.unwrap();
    assert!(r.deleted >= 1 && r.bytes_freed > 0, "{r:?}");
    assert!(
        r.bytes_listed >= r.bytes_freed && r.bytes_listed == before,
        "the sweep counts what it looked at: {r:?}, {before} bytes stored"
    );
    let after = backend.list("p").await.unwrap();
    assert!(after.iter().all(|l| l.key != key), "old pack still there");
    for (i, (d, b)) in blobs.iter().enumerate() {
        if i % 4 == 0 {
            assert!(
                read_all(&fresh, d, None).await.unwrap() == b[..],
                "kept blob {i}"
            );
        } else if i % 50 == 1 {
            assert!(
                !store.contains(d).await.unwrap(),
                "swept blob {i} is still there"
            );
        }
    }
    // Deleted blobs read as missing at once; the sweep then frees the pack.
    for d in &keep {
        store.delete(d).await.unwrap();
    }
    assert!(!store.contains(&blobs[0].0).await.unwrap());
    store.sweep(&HashSet::new(), future).await.unwrap();
    assert!(backend.list("p").await.unwrap().is_empty());
    assert!(!fresh.contains(&blobs[0].0).await.unwrap());
}

/// Two processes sharing a bucket and a pack catalog (replicas on one
/// database): each finds the packs the other writes, and the new pack of
/// a rewritten one, with a catalog lookup and that pack's index, never by
/// listing the store again after its first load.
async fn packs_another_process_wrote_are_found_through_the_catalog(
    backend: Arc<dyn ObjectBackend>,
) {
    let catalog: Arc<dyn crate::PackCatalog> = Arc::new(crate::MemoryCatalog::default());
    let a = ChunkStore::new(backend.clone(), Codec::plain())
        .with_refresh_after(Duration::ZERO)
        .with_pack_catalog(catalog.clone());
    let watch = Arc::new(Watch::new(backend.clone(), String::new()));
    let b = ChunkStore::new(watch.clone(), Codec::plain())
        .with_refresh_after(Duration::ZERO)
        .with_pack_catalog(catalog);
    let never = Digest::of(b"never stored");
    assert!(!b.contains(&never).await.unwrap());
    let loaded = watch.lists();
    assert!(loaded >= 1, "the first use loads every pack");
    let blobs: Vec<(Digest, Bytes)> = (0..32u64)
        .map(|i| {
            let b = Bytes::from(random_bytes(3000 + i as usize, 7000 + i));
            (Digest::of(&b), b)
        })
        .collect();
    a.put_packed(blobs.clone()).await.unwrap();
    for (d, data) in blobs.iter().step_by(5) {
        assert!(b.contains(d).await.unwrap(), "B finds A's pack");
        assert!(read_all(&b, d, None).await.unwrap() == data[..]);
    }
    assert!(!b.contains(&never).await.unwrap());
    assert_eq!(watch.lists(), loaded, "B listed the store on a miss");
    // A rewrites the pack around the one blob kept; B still points at the
    // old pack, finds it gone, and follows the catalog to the new one.
    let kept = blobs[3].0;
    let future = SystemTime::now() + Duration::from_secs(3600);
    let keep: HashSet<Digest> = [kept].into();
    let report = a.sweep(&keep, future).await.unwrap();
    assert!(report.deleted >= 1, "{report:?}");
    let listed_by_sweep = watch.lists();
    assert!(read_all(&b, &kept, None).await.unwrap() == blobs[3].1[..]);
    assert!(!b.contains(&blobs[4].0).await.unwrap(), "a swept blob");
    assert_eq!(
        watch.lists(),
        listed_by_sweep,
        "B listed the store after a rewrite"
    );
    // Cleaned up for the tests after this one.
    a.delete(&kept).await.unwrap();
    a.sweep(&HashSet::new(), future).await.unwrap();
}

/// Blobs held by two packs (sent twice, by two processes): sweeping one
/// pack away must leave the blob placeable through the catalog by a
/// process that never listed the other, whatever order the packs were
/// recorded in, and even when the other copy was never recorded (a crash
/// between writing a pack and recording it, or a writer without the
/// catalog). Found in review: the catalog kept one row per blob, so
/// forgetting the swept pack forgot the blob.
async fn a_swept_pack_leaves_the_other_copies_of_its_blobs_in_the_catalog(
    backend: Arc<dyn ObjectBackend>,
) {
    let catalog: Arc<dyn crate::PackCatalog> = Arc::new(crate::MemoryCatalog::default());
    let with = || {
        ChunkStore::new(backend.clone(), Codec::plain())
            .with_refresh_after(Duration::ZERO)
            .with_pack_catalog(catalog.clone())
    };
    let (a, b) = (with(), with());
    let watch = Arc::new(Watch::new(backend.clone(), String::new()));
    let c = ChunkStore::new(watch.clone(), Codec::plain())
        .with_refresh_after(Duration::ZERO)
        .with_pack_catalog(catalog.clone());
    assert!(!c.contains(&Digest::of(b"nothing")).await.unwrap());
    let loaded = watch.lists();
    let set = |seed: u64, shared: &Bytes| -> Vec<(Digest, Bytes)> {
        let mut v: Vec<(Digest, Bytes)> = (0..16u64)
            .map(|i| {
                let b = Bytes::from(random_bytes(1500 + i as usize, seed + i));
                (Digest::of(&b), b)
            })
            .collect();
        v.push((Digest::of(shared), shared.clone()));
        v
    };
    let future = SystemTime::now() + Duration::from_secs(3600);

    // Two processes pack blob Z; the first pack is recorded last.
    let z = Bytes::from(random_bytes(1200, 9100));
    let (one, two) = (set(9200, &z), set(9300, &z));
    a.put_packed(one.clone()).await.unwrap();
    b.put_packed(two.clone()).await.unwrap();
    let zd = Digest::of(&z);
    let located = catalog.locate(&zd).await.unwrap();
    assert_eq!(located.len(), 2, "both copies recorded: {located:?}");
    let (first, first_size) = located[1].clone();
    catalog.record(&first, first_size, &[zd]).await.unwrap();
    // A's sweep finds the second pack newer, so the first is all dead.
    let keep: HashSet<Digest> = two.iter().map(|(d, _)| *d).collect();
    a.sweep(&keep, future).await.unwrap();
    assert!(
        backend.head(&first).await.unwrap().is_none(),
        "the first pack was swept"
    );
    assert!(
        read_all(&c, &zd, None).await.unwrap() == z[..],
        "Z through the catalog"
    );

    // A copy never recorded (written without the catalog), newer than a
    // recorded one that is then swept.
    let y = Bytes::from(random_bytes(1300, 9400));
    let (three, four) = (set(9500, &y), set(9600, &y));
    a.put_packed(three.clone()).await.unwrap();
    ChunkStore::new(backend.clone(), Codec::plain())
        .with_refresh_after(Duration::ZERO)
        .put_packed(four.clone())
        .await
        .unwrap();
    let yd = Digest::of(&y);
    let keep: HashSet<Digest> = keep
        .into_iter()
        .chain(four.iter().map(|(d, _)| *d))
        .collect();
    a.sweep(&keep, future).await.unwrap();
    assert!(
        read_all(&c, &yd, None).await.unwrap() == y[..],
        "Y through the catalog"
    );
    assert_eq!(watch.lists(), loaded, "C listed the store to find them");
    // Cleaned up for the tests after this one.
    for (d, _) in one.iter().chain(&two).chain(&three).chain(&four) {
        a.delete(d).await.unwrap();
    }
    a.sweep(&HashSet::new(), future).await.unwrap();
}

/// Regression: two reads in one process of blobs another process had just
/// packed both missed; the first to list the packs learnt the new one,
/// and the second's listing, finding nothing new, made it answer "not in
/// the store" (seen as a 500 "stored content is missing" on a replica
/// serving a download of many small files another replica had packed).
async fn a_read_that_missed_a_pack_another_read_found_still_finds_it(
    backend: Arc<dyn ObjectBackend>,
) {
    let a = ChunkStore::new(backend.clone(), Codec::plain()).with_refresh_after(Duration::ZERO);
    let blobs: Vec<(Digest, Bytes)> = (0..20u64)
        .map(|i| {
            let b = Bytes::from(random_bytes(2000 + i as usize, 8000 + i));
            (Digest::of(&b), b)
        })
        .collect();
    let (first, second) = (blobs[0].0, blobs[1].0);
    let mut watch = Watch::new(backend.clone(), a.blob_key(&first));
    watch.hold_get = true;
    let watch = Arc::new(watch);
    let b =
        Arc::new(ChunkStore::new(watch.clone(), Codec::plain()).with_refresh_after(Duration::ZERO));
    // B has loaded where packs are before A packs the blobs.
    assert!(!b.contains(&Digest::of(b"nothing")).await.unwrap());
    a.put_packed(blobs.clone()).await.unwrap();
    // B's read of the first blob misses the pack and is held while it
    // looks for the blob stored on its own; meanwhile another read finds
    // the pack.
    let held = {
        let b = b.clone();
        tokio::spawn(async move { read_all(&*b, &first, None).await })
    };
    watch.seen.notified().await;
    assert!(read_all(&*b, &second, None).await.unwrap() == blobs[1].1[..]);
    watch.release.notify_one();
    let got = held.await.unwrap().expect("the held read found the pack");
    assert!(got == blobs[0].1[..]);
    for (d, _) in &blobs {
        a.delete(d).await.unwrap();
    }
    a.sweep(
        &HashSet::new(),
        SystemTime::now() + Duration::from_secs(3600),
    )
    .await
    .unwrap();
}

/// A pack of tiny blobs (its index outweighs them) that are all in use
/// survives the sweep; a damaged packed blob, discarded and stored again,
/// reads back from a store that only has the bucket, whether the new copy
/// is an object of its own or in a newer pack.
async fn packs_of_tiny_blobs_and_repairs(backend: Arc<dyn ObjectBackend>) {
    let store = ChunkStore::new(backend.clone(), Codec::plain()).with_refresh_after(Duration::ZERO);
    let future = SystemTime::now() + Duration::from_secs(3600);
    store.sweep(&HashSet::new(), future).await.unwrap();
    let tiny: Vec<(Digest, Bytes)> = (0..20)
        .map(|i| {
            let b = Bytes::from(format!("exit {i}\n"));
            (Digest::of(&b), b)
        })
        .collect();
    store.put_packed(tiny.clone()).await.unwrap();
    let keep: HashSet<Digest> = tiny.iter().map(|(d, _)| *d).collect();
    store.sweep(&keep, future).await.unwrap();
    let fresh =
        || ChunkStore::new(backend.clone(), Codec::plain()).with_refresh_after(Duration::ZERO);
    for (d, b) in &tiny {
        assert!(
            read_all(&fresh(), d, None).await.unwrap() == b[..],
            "tiny blob lost"
        );
    }
    // Damage the first packed blob, discard it, store it again.
    let key = backend.list("p").await.unwrap()[0].key.clone();
    let stored = backend.get(&key).await.unwrap().unwrap();
    let mut bad = stored.to_vec();
    bad[27] ^= 1; // inside the first entry's payload
    backend.put(&key, Bytes::from(bad), true).await.unwrap();
    let (d0, b0) = tiny[0].clone();
    assert!(read_all(&fresh(), &d0, None).await.is_err());
    store.discard(&d0).await.unwrap();
    put(&store, &b0).await;
    assert!(
        read_all(&fresh(), &d0, None).await.unwrap() == b0[..],
        "own object"
    );
    store.delete(&d0).await.unwrap();
    // Newer by the store's clock, which WebDAV tells to the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store
        .put_packed(vec![tiny[0].clone(), tiny[1].clone()])
        .await
        .unwrap();
    assert!(
        read_all(&fresh(), &d0, None).await.unwrap() == b0[..],
        "newer pack"
    );
    // The sweep keeps the good copy, whatever it drops.
    fresh().sweep(&keep, future).await.unwrap();
    for (d, b) in &tiny {
        assert!(
            read_all(&fresh(), d, None).await.unwrap() == b[..],
            "after sweep"
        );
    }
    store.sweep(&HashSet::new(), future).await.unwrap();
}

async fn compression_saves_space(store: &ChunkStore) {
    let text: Vec<u8> = b"INFO build step 17 finished in 0.42s\n".repeat(200_000);
    let before = keys(&**store.backend()).await;
    let d = put(store, &text).await;
    let mut stored = 0u64;
    for dir in ["b", "c", "p"] {
        for l in store.backend().list(dir).await.unwrap() {
            if !before.contains(&l.key) {
                stored += l.size;
            }
        }
    }
    assert!(
        stored > 0 && stored * 10 < text.len() as u64,
        "{} bytes of log stored as {stored}",
        text.len()
    );
    assert!(read_all(store, &d, None).await.unwrap() == text);
    // Random bytes do not compress and are stored as they are.
    let noise = random_bytes(2 * 1024 * 1024, 8);
    let d = put(store, &noise).await;
    assert!(read_all(store, &d, None).await.unwrap() == noise);
}

async fn encryption_hides_content_and_hashes(backend: Arc<dyn ObjectBackend>) {
    let k1 = Keyring::generate();
    let ring1 = Keyring::parse(&k1).unwrap();
    let enc = ChunkStore::new(
        backend.clone(),
        Codec {
            compression: Compression::Zstd(3),
            keys: Some(ring1.clone()),
        },
    );
    let marker = b"SATCHEL-SECRET-MARKER-7f3a";
    let mut small = marker.to_vec();
    small.extend_from_slice(b" small file");
    let mut big = random_bytes(6 * 1024 * 1024, 9);
    for at in (0..big.len() - 64).step_by(700_000) {
        big[at..at + marker.len()].copy_from_slice(marker);
    }
    let mut packed = marker.to_vec();
    packed.extend_from_slice(b" packed with others");
    // What was stored before (by the plain stores earlier in the story):
    // every object written from here on must be encrypted.
    let before = keys(&*backend).await;
    let mut digests = Vec::new();
    for body in [&small, &big] {
        let d = put(&enc, body).await;
        assert!(read_all(&enc, &d, None).await.unwrap() == *body);
        digests.push(d);
    }
    let other_small = Bytes::from_static(b"another small file");
    let d = Digest::of(&packed);
    enc.put_packed(vec![
        (d, Bytes::from(packed.clone())),
        (Digest::of(&other_small), other_small),
    ])
    .await
    .unwrap();
    assert!(read_all(&enc, &d, None).await.unwrap() == packed);
    digests.push(d);
    // The big file's chunks, cut as the store cuts them: their hashes must
    // not show either.
    let chunk_digests = chunk_digests(&big);
    assert!(chunk_digests.len() > 20, "{} chunks", chunk_digests.len());
    digests.extend(chunk_digests);
    // Nothing stored under an encrypting store is plain, shows the marker
    // or a hash of a file or a chunk.
    let mut checked = 0;
    for key in keys(&*backend).await {
        if before.contains(&key) {
            continue;
        }
        let stored = backend.get(&key).await.unwrap().unwrap();
        assert!(
            Codec::peek(&stored).unwrap().key_id.is_some(),
            "{key} was written in plain by an encrypting store"
        );
        checked += 1;
        assert!(!stored.windows(marker.len()).any(|w| w == marker));
        for d in &digests {
            let hex = d.to_hex();
            assert!(!key.contains(&hex), "object name {key} shows a hash");
            assert!(!stored.windows(32).any(|w| w == d.0));
            assert!(!stored.windows(64).any(|w| w == hex.as_bytes()));
        }
    }
    assert!(checked >= 4, "checked {checked}");
    // Without the key, nothing is readable; with a rotated ring, all is.
    let other = ChunkStore::new(
        backend.clone(),
        Codec {
            compression: Compression::None,
            keys: Some(Keyring::parse(&Keyring::generate()).unwrap()),
        },
    );
    assert!(!other.contains(&digests[0]).await.unwrap());
    let rotated = Keyring::parse(&format!("{k1}\n{}", ring1.next_key_line())).unwrap();
    let enc2 = ChunkStore::new(
        backend.clone(),
        Codec {
            compression: Compression::Zstd(3),
            keys: Some(rotated),
        },
    )
    .with_refresh_after(Duration::ZERO);
    let seen = std::sync::Mutex::new(0u64);
    let report = enc2
        .rewrite(&|r| *seen.lock().unwrap() = r.rewritten)
        .await
        .unwrap();
    assert!(report.rewritten >= 4, "{report:?}");
    assert_eq!(*seen.lock().unwrap(), report.rewritten);
    let usage = enc2.key_usage().await.unwrap();
    assert_eq!(
        usage,
        vec![(Some(2), usage[0].1)],
        "all on key 2: {usage:?}"
    );
    for (d, body) in digests.iter().zip([&small, &big, &packed]) {
        assert!(read_all(&enc2, d, None).await.unwrap() == **body);
        // The old ring alone can no longer read (the content moved to key 2).
        assert!(read_all(&enc, d, None).await.is_err());
    }
    for d in &digests {
        enc2.delete(d).await.unwrap();
    }
    // Only a store with the key can tell what a pack holds: it sweeps it.
    enc2.sweep(
        &HashSet::new(),
        SystemTime::now() + Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert!(backend.list("p").await.unwrap().is_empty());
}

/// Regression: a key rotation carried over only the entries of a pack
/// that its own index pointed at. Another replica's sweep, whose index
/// pointed a shared blob at the other copy (packs of equal age are ordered
/// by when each replica learnt them), could drop the blob from the pack the
/// rotation relied on while the rotation dropped it from this one: no copy
/// was left. Here the rotating store finds the second pack newer, and the
/// other replica's sweep removes that copy while the rotation holds the
/// first pack.
async fn a_rotation_keeps_the_copies_a_concurrent_sweep_may_drop(backend: Arc<dyn ObjectBackend>) {
    let k1 = Keyring::generate();
    let ring1 = Keyring::parse(&k1).unwrap();
    let rotated = Keyring::parse(&format!("{k1}\n{}", ring1.next_key_line())).unwrap();
    let codec = |keys: Keyring| Codec {
        compression: Compression::None,
        keys: Some(keys),
    };
    let writer = ChunkStore::new(backend.clone(), codec(ring1.clone()));
    let before = keys(&*backend).await;
    let z = Bytes::from(random_bytes(1200, 9700));
    let zd = Digest::of(&z);
    let set = |seed: u64, with_z: bool| -> Vec<(Digest, Bytes)> {
        let mut v: Vec<(Digest, Bytes)> = (0..16u64)
            .map(|i| {
                let b = Bytes::from(random_bytes(1500 + i as usize, seed + i));
                (Digest::of(&b), b)
            })
            .collect();
        if with_z {
            v.push((zd, z.clone()));
        }
        v
    };
    let (one, two) = (set(9800, true), set(9900, true));
    writer.put_packed(one.clone()).await.unwrap();
    writer.put_packed(two.clone()).await.unwrap();
    let packs: Vec<String> = backend
        .list("p")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !before.contains(k))
        .collect();
    assert_eq!(packs.len(), 2, "{packs:?}");
    // The pack listed second is made newer: the rotation reads Z there.
    let (first, second) = (packs[0].clone(), packs[1].clone());
    wait_until_older(&*backend, &second, Duration::from_secs(1)).await;
    let bytes = backend.get(&second).await.unwrap().unwrap();
    backend.put(&second, bytes, true).await.unwrap();

    let mut watch = Watch::new(backend.clone(), first.clone());
    watch.hold_get = true;
    let watch = Arc::new(watch);
    let rotating = Arc::new(ChunkStore::new(watch.clone(), codec(rotated.clone())));
    let rotation = {
        let rotating = rotating.clone();
        tokio::spawn(async move { rotating.rewrite(&|_| {}).await })
    };
    while watch.held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        watch.seen.notified().await;
    }
    // Meanwhile the other replica's sweep keeps Z in the first pack only:
    // it rewrites the second without Z.
    let other =
        ChunkStore::new(backend.clone(), codec(ring1.clone())).with_refresh_after(Duration::ZERO);
    other.put_packed(set(9900, false)).await.unwrap();
    backend.delete(&second).await.unwrap();
    watch.release.notify_one();
    rotation.await.unwrap().expect("the rotation finishes");

    let fresh =
        ChunkStore::new(backend.clone(), codec(rotated.clone())).with_refresh_after(Duration::ZERO);
    assert!(
        read_all(&fresh, &zd, None).await.unwrap() == z[..],
        "Z survived the rotation"
    );
    for (d, _) in one.iter().chain(&two) {
        fresh.delete(d).await.unwrap();
    }
    fresh
        .sweep(
            &HashSet::new(),
            SystemTime::now() + Duration::from_secs(3600),
        )
        .await
        .unwrap();
}

async fn encryption_turned_on_for_a_plain_store(backend: Arc<dyn ObjectBackend>) {
    // A plain store (what earlier checks left under other keys goes first).
    let future = SystemTime::now() + Duration::from_secs(3600);
    ChunkStore::new(backend.clone(), Codec::plain())
        .with_refresh_after(Duration::ZERO)
        .sweep(&HashSet::new(), future)
        .await
        .unwrap();
    let left = keys(&*backend).await;
    assert!(left.is_empty(), "sweep left objects: {left:?}");
    // Content stored before encryption: whole, chunked, packed.
    let plain = ChunkStore::new(backend.clone(), Codec::plain());
    let small = random_bytes(3000, 30);
    let big = random_bytes(3 * 1024 * 1024, 31);
    let tiny: Vec<(Digest, Bytes)> = (0..crate::pack::PACK_MIN_BLOBS as u64)
        .map(|i| {
            let b = Bytes::from(random_bytes(200, 300 + i));
            (Digest::of(&b), b)
        })
        .collect();
    let ds = put(&plain, &small).await;
    let db = put(&plain, &big).await;
    plain.put_packed(tiny.clone()).await.unwrap();
    let mut all: Vec<(Digest, Vec<u8>)> = vec![(ds, small), (db, big)];
    all.extend(tiny.iter().map(|(d, b)| (*d, b.to_vec())));

    let ring = Keyring::parse(&Keyring::generate()).unwrap();
    let enc = ChunkStore::new(
        backend.clone(),
        Codec {
            compression: Compression::Zstd(3),
            keys: Some(ring),
        },
    )
    .with_refresh_after(Duration::ZERO);
    enc.check_settings()
        .await
        .expect("turning encryption on is allowed");
    async fn readable(store: &ChunkStore, all: &[(Digest, Vec<u8>)], what: &str) {
        for (d, body) in all {
            assert!(store.contains(d).await.unwrap(), "{what}: {d} missing");
            let got = read_all(store, d, None).await;
            assert!(
                got.as_deref().ok() == Some(&body[..]),
                "{what}: {d} does not read back"
            );
        }
    }
    readable(&enc, &all, "plain content under encryption").await;
    // A sweep under encryption keeps plain content that is kept.
    let keep: HashSet<Digest> = all.iter().map(|(d, _)| *d).collect();
    enc.sweep(&keep, future).await.unwrap();
    readable(&enc, &all, "after a sweep keeping it").await;
    // Rotation renames every plain object to its keyed name and encrypts
    // it; afterwards nothing plain is left, and everything reads.
    let report = enc.rewrite(&|_| {}).await.unwrap();
    assert!(report.rewritten >= 4, "{report:?}");
    for key in keys(&*backend).await {
        let stored = backend.get(&key).await.unwrap().unwrap();
        assert!(
            Codec::peek(&stored).unwrap().key_id.is_some(),
            "{key} is still plain after the rewrite"
        );
        for (d, _) in &all {
            assert!(!key.contains(&d.to_hex()), "{key} still has its plain name");
        }
    }
    readable(&enc, &all, "after the rewrite").await;
    assert!(
        !plain.contains(&db).await.unwrap() && read_all(&plain, &ds, None).await.is_err(),
        "a store without the keys still reads content that was encrypted"
    );
    enc.sweep(&HashSet::new(), future).await.unwrap();
    backend.delete("satchel-store").await.unwrap();
}

/// Waits until the backend reports `key` older than `age`.
async fn wait_until_older(backend: &dyn ObjectBackend, key: &str, age: Duration) {
    let deadline = SystemTime::now() + age + Duration::from_secs(20);
    loop {
        let modified = backend.head(key).await.unwrap().expect("object exists");
        if SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default()
            > age
        {
            return;
        }
        assert!(SystemTime::now() < deadline, "{key} never aged");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn reused_old_chunks_are_refreshed(backend: Arc<dyn ObjectBackend>) {
    // Backends report times to the second (an age reads up to a second
    // high), so ages are compared with a second to spare each way.
    let refresh = Duration::from_secs(5);
    let store = ChunkStore::new(backend.clone(), Codec::plain()).with_refresh_after(refresh);
    let a = random_bytes(2 * 1024 * 1024, 40);
    put(&store, &a).await;
    let mut b = a.clone();
    b.extend(random_bytes(100_000, 41));
    let (in_a, in_b) = (chunk_digests(&a), chunk_digests(&b));
    let shared: Vec<Digest> = in_a.iter().filter(|d| in_b.contains(d)).copied().collect();
    assert!(shared.len() >= 10, "{} shared", shared.len());
    let old_pack = store.pack_of(&shared[0]).expect("A's chunks are packed");
    assert!(shared
        .iter()
        .all(|d| store.pack_of(d).as_ref() == Some(&old_pack)));
    wait_until_older(&*backend, &old_pack, refresh + Duration::from_secs(1)).await;
    // B reuses A's chunks, now older than the refresh age (by more than a
    // second, and read as at least six): the write copies them forward
    // into a new pack (a touched pack would keep its dead chunks as long
    // as one chunk is reused), so a sweep sees them young.
    put(&store, &b).await;
    let age = |m: SystemTime| SystemTime::now().duration_since(m).unwrap_or_default();
    for d in &shared {
        let pack = store.pack_of(d).expect("packed");
        let m = backend.head(&pack).await.unwrap().unwrap();
        assert!(
            age(m) < refresh,
            "chunk {d} was reused at {:?} old without a refresh",
            age(m)
        );
    }
    assert!(read_all(&store, &Digest::of(&b), None).await.unwrap() == b);
    // So does a process that learns the packs afresh.
    let fresh = ChunkStore::new(backend.clone(), Codec::plain());
    assert!(read_all(&fresh, &Digest::of(&b), None).await.unwrap() == b);
}

/// A backend that reports the first `head` of one key (the moment a
/// write has decided to reuse that stored chunk) and, when asked, holds a
/// `get` of it until released; and counts listings.
struct Watch {
    inner: Arc<dyn ObjectBackend>,
    key: String,
    seen: tokio::sync::Notify,
    lists: std::sync::atomic::AtomicUsize,
    /// Whether a `get` of `key` waits for `release`.
    hold_get: bool,
    /// How many `get`s of `key` are waiting (or have waited) for `release`.
    held: std::sync::atomic::AtomicUsize,
    release: tokio::sync::Notify,
}

impl Watch {
    fn new(inner: Arc<dyn ObjectBackend>, key: String) -> Watch {
        Watch {
            inner,
            key,
            seen: tokio::sync::Notify::new(),
            lists: std::sync::atomic::AtomicUsize::new(0),
            hold_get: false,
            held: std::sync::atomic::AtomicUsize::new(0),
            release: tokio::sync::Notify::new(),
        }
    }

    fn lists(&self) -> usize {
        self.lists.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl ObjectBackend for Watch {
    async fn put(&self, key: &str, data: Bytes, sync: bool) -> Result<(), StoreError> {
        self.inner.put(key, data, sync).await
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let r = self.inner.get(key).await;
        if self.hold_get && key == self.key {
            self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.seen.notify_one();
            self.release.notified().await;
        }
        r
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Bytes>, StoreError> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<Option<SystemTime>, StoreError> {
        let r = self.inner.head(key).await;
        if key == self.key {
            self.seen.notify_one();
        }
        r
    }
    async fn touch(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.touch(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn list(&self, dir: &str) -> Result<Vec<crate::backend::Listed>, StoreError> {
        self.lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.list(dir).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A write that decided to reuse a stored chunk whose pack a sweep (of
/// another process, or after a rewrite) took before the recipe was
/// written fails and writes no recipe; its retry stores the chunk again.
async fn a_reused_chunk_swept_before_the_recipe_fails_the_write(backend: Arc<dyn ObjectBackend>) {
    let store = ChunkStore::new(backend.clone(), Codec::plain());
    let a = random_bytes(2 * 1024 * 1024, 50);
    put(&store, &a).await;
    let mut b = a[..1024 * 1024].to_vec();
    b.extend(random_bytes(1024 * 1024, 51));
    let first = chunk_digests(&a)[0];
    let pack = store.pack_of(&first).expect("A's chunks are packed");
    // The writer knows where A's chunks are; then the pack goes.
    backend.delete(&pack).await.unwrap();
    let db = Digest::of(&b);
    let e = store
        .put(&db, b.len() as u64, &mut &b[..], Durability::Sync)
        .await
        .expect_err("a recipe was written over a chunk that is gone");
    assert!(e.to_string().contains("retry the upload"), "{e}");
    assert!(!store.contains(&db).await.unwrap());
    assert!(backend
        .head(&store.recipe_key(&db))
        .await
        .unwrap()
        .is_none());
    // The retry stores the chunks again.
    put(&store, &b).await;
    assert!(read_all(&store, &db, None).await.unwrap() == b);
    let fresh = ChunkStore::new(backend.clone(), Codec::plain());
    assert!(read_all(&fresh, &db, None).await.unwrap() == b);

    // Where other processes sweep (a catalog), a pack one of them deleted
    // before the write began is looked for before it is relied on: the
    // write stores those chunks again instead of failing at its end.
    let shared = ChunkStore::new(backend.clone(), Codec::plain())
        .with_pack_catalog(Arc::new(crate::MemoryCatalog::default()));
    let c = random_bytes(2 * 1024 * 1024, 52);
    put(&shared, &c).await;
    let pack = shared.pack_of(&chunk_digests(&c)[0]).expect("packed");
    backend.delete(&pack).await.unwrap();
    // Asked which chunks it lacks, it looks too: they are missing.
    let missing = shared.missing_chunks(&chunk_digests(&c)).await.unwrap();
    assert!(missing.iter().all(|m| *m), "{missing:?}");
    let mut e = c[..1024 * 1024].to_vec();
    e.extend(random_bytes(1024 * 1024, 53));
    let de = put(&shared, &e).await;
    for store in [&shared, &ChunkStore::new(backend.clone(), Codec::plain())] {
        assert!(read_all(store, &de, None).await.unwrap() == e);
    }
}

/// A crash between writing a pack of chunks and recording it (here: the
/// catalog fails) stores no blob; the blob stored again reads whole, and
/// the sweep deletes the pack nothing names.
async fn a_pack_written_but_not_recorded_stores_nothing(backend: Arc<dyn ObjectBackend>) {
    struct Failing;
    #[async_trait::async_trait]
    impl crate::PackCatalog for Failing {
        async fn record(&self, _: &str, _: u64, _: &[Digest]) -> Result<(), StoreError> {
            Err(StoreError::Backend("the database went away".into()))
        }
        async fn locate(&self, _: &Digest) -> Result<Vec<(String, u64)>, StoreError> {
            Ok(Vec::new())
        }
        async fn forget(&self, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
    }
    let before = keys(&*backend).await;
    let crashing = ChunkStore::new(backend.clone(), Codec::plain())
        .with_refresh_after(Duration::ZERO)
        .with_pack_catalog(Arc::new(Failing));
    let body = random_bytes(3 * 1024 * 1024, 60);
    let d = Digest::of(&body);
    let e = crashing
        .put(&d, body.len() as u64, &mut &body[..], Durability::Sync)
        .await
        .expect_err("a blob was stored over an unrecorded pack");
    assert!(e.to_string().contains("database went away"), "{e}");
    let orphans: Vec<String> = keys(&*backend).await.difference(&before).cloned().collect();
    assert!(
        orphans.iter().all(|k| k.starts_with("p/")) && !orphans.is_empty(),
        "{orphans:?}"
    );
    let store = ChunkStore::new(backend.clone(), Codec::plain()).with_refresh_after(Duration::ZERO);
    assert!(!store.contains(&d).await.unwrap());
    // Newer than the orphan by the store's clock (to the second on S3).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    put(&store, &body).await;
    assert!(read_all(&store, &d, None).await.unwrap() == body);
    // Nothing keeps the blob: both packs go; kept, the orphan goes alone
    // (its chunks are placed in the newer pack).
    let future = SystemTime::now() + Duration::from_secs(3600);
    store.sweep(&HashSet::from([d]), future).await.unwrap();
    for k in &orphans {
        assert!(
            backend.head(k).await.unwrap().is_none(),
            "{k} outlived the sweep"
        );
    }
    assert!(read_all(&store, &d, None).await.unwrap() == body);
    let fresh = ChunkStore::new(backend.clone(), Codec::plain());
    assert!(read_all(&fresh, &d, None).await.unwrap() == body);
    store.delete(&d).await.unwrap();
    store.sweep(&HashSet::new(), future).await.unwrap();
    let left: Vec<String> = keys(&*backend).await.difference(&before).cloned().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A sweep in the same process while a write is under way: the packs the
/// write has written (no recipe names them yet, and with no age floor
/// here they are old enough to go) are pinned, so the sweep leaves them
/// and the write succeeds whole.
async fn a_sweep_during_a_write_keeps_the_packs_it_relies_on(backend: Arc<dyn ObjectBackend>) {
    use tokio::io::AsyncWriteExt;
    let store = ChunkStore::new(backend.clone(), Codec::plain()).with_refresh_after(Duration::ZERO);
    let body = random_bytes(72 * 1024 * 1024, 80);
    let d = Digest::of(&body);
    let before = keys(&*backend).await;
    let (mut tx, mut rx) = tokio::io::duplex(256 * 1024);
    let writer = store.clone();
    let len = body.len() as u64;
    let writing = tokio::spawn(async move { writer.put(&d, len, &mut rx, Durability::Sync).await });
    // Feed until the write's first pack is written and pinned.
    let mut sent = 0;
    let first = loop {
        assert!(sent < body.len(), "no pack of the write was pinned");
        let end = (sent + 1024 * 1024).min(body.len());
        tx.write_all(&body[sent..end]).await.unwrap();
        sent = end;
        let new: Vec<String> = keys(&*backend)
            .await
            .difference(&before)
            .filter(|k| k.starts_with("p/"))
            .cloned()
            .collect();
        if let Some(k) = new.into_iter().find(|k| store.is_pinned(k)) {
            break k;
        }
    };
    let future = SystemTime::now() + Duration::from_secs(3600);
    store.sweep(&HashSet::new(), future).await.unwrap();
    assert!(
        backend.head(&first).await.unwrap().is_some(),
        "the sweep took a pack a write in flight relies on"
    );
    tx.write_all(&body[sent..]).await.unwrap();
    drop(tx);
    writing.await.unwrap().expect("the write succeeds");
    let fresh = ChunkStore::new(backend.clone(), Codec::plain());
    assert!(read_all(&fresh, &d, None).await.unwrap() == body);
    store.delete(&d).await.unwrap();
    store.sweep(&HashSet::new(), future).await.unwrap();
}

/// A sweep that rewrites a mostly dead pack of chunks while another
/// process writes a blob reusing chunks of it: the writer, pointed at the
/// old pack, fails cleanly (no recipe), and its retry reads whole; the
/// chunks the sweep kept stay readable throughout.
async fn repacking_races_a_write_that_reuses_the_pack(backend: Arc<dyn ObjectBackend>) {
    let sweeper =
        ChunkStore::new(backend.clone(), Codec::plain()).with_refresh_after(Duration::ZERO);
    // The writer relies on young packs without asking the backend.
    let writer = ChunkStore::new(backend.clone(), Codec::plain())
        .with_refresh_after(Duration::from_secs(3600));
    // A and C share A's first quarter; A goes, C stays.
    let a = random_bytes(8 * 1024 * 1024, 70);
    let mut c = a[..2 * 1024 * 1024].to_vec();
    c.extend(random_bytes(1024 * 1024, 71));
    let da = put(&sweeper, &a).await;
    let dc = put(&sweeper, &c).await;
    // A's last chunk is A's alone.
    let a_only = *chunk_digests(&a).last().unwrap();
    let old = sweeper.pack_of(&a_only).expect("packed");
    // The writer learns where A's chunks are.
    assert!(writer.contains(&da).await.unwrap());
    assert_eq!(writer.pack_of(&a_only), Some(old.clone()));
    sweeper.delete(&da).await.unwrap();
    let future = SystemTime::now() + Duration::from_secs(3600);
    let report = sweeper.sweep(&HashSet::from([dc]), future).await.unwrap();
    assert!(report.deleted >= 1, "{report:?}");
    assert!(
        backend.head(&old).await.unwrap().is_none(),
        "the pack was rewritten"
    );
    assert!(read_all(&sweeper, &dc, None).await.unwrap() == c);
    // B reuses A's second half (dropped by the sweep) and its first part
    // (kept, now in the new pack): the writer still points at the old one.
    let b = a.clone();
    let db = Digest::of(&b);
    let e = writer
        .put(&db, b.len() as u64, &mut &b[..], Durability::Sync)
        .await
        .expect_err("a recipe was written over a swept pack");
    assert!(e.to_string().contains("retry the upload"), "{e}");
    assert!(backend
        .head(&writer.recipe_key(&db))
        .await
        .unwrap()
        .is_none());
    put(&writer, &b).await;
    for store in [
        &writer,
        &sweeper,
        &ChunkStore::new(backend.clone(), Codec::plain()),
    ] {
        assert!(read_all(store, &db, None).await.unwrap() == b);
        assert!(read_all(store, &dc, None).await.unwrap() == c);
    }
    for d in [db, dc] {
        sweeper.delete(&d).await.unwrap();
    }
    sweeper.sweep(&HashSet::new(), future).await.unwrap();
}

/// A caller of a quiet sweep with no writers anywhere.
struct Alone;

#[async_trait::async_trait]
impl crate::Quiet for Alone {
    async fn still(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A caller of a quiet sweep that lost its hold on writers.
struct Lost;

#[async_trait::async_trait]
impl crate::Quiet for Lost {
    async fn still(&self) -> Result<(), StoreError> {
        Err(StoreError::Backend("gate lost".into()))
    }
}

async fn sweep_frees_exactly_the_unused(backend: Arc<dyn ObjectBackend>) {
    // Chunks are kept for twice the refresh age whatever the cutoff; zero
    // here so the story can watch them go.
    let store = ChunkStore::new(backend.clone(), Codec::plain()).with_refresh_after(Duration::ZERO);
    // Clear what earlier checks left, keeping nothing.
    let future = SystemTime::now() + Duration::from_secs(3600);
    store.sweep(&HashSet::new(), future).await.unwrap();
    let left = keys(&*backend).await;
    assert!(left.is_empty(), "sweep left objects: {left:?}");

    let a = random_bytes(9 * 1024 * 1024, 10);
    let mut b = a.clone();
    b[4_000_000] ^= 1;
    let small = random_bytes(1000, 11);
    let (da, db, ds) = (
        put(&store, &a).await,
        put(&store, &b).await,
        put(&store, &small).await,
    );
    // Recent objects survive even when nothing keeps them.
    let r = store
        .sweep(&HashSet::new(), SystemTime::now() - Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(r.deleted, 0);
    // The default store keeps young chunks even past the cutoff.
    let cautious = ChunkStore::new(backend.clone(), Codec::plain());
    let r = cautious.sweep(&HashSet::new(), future).await.unwrap();
    assert!(keys(&*backend).await.iter().any(|k| k.starts_with("p/")));
    assert!(r.deleted >= 3, "blobs go, chunks stay: {r:?}");
    // Unless the caller knows no write is in flight: then the cutoff
    // alone decides (an operator's `gc --grace 0s`); but only while it
    // still does (a caller that lost its gate stops the sweep before any
    // young pack goes).
    let packs_before: Vec<String> = keys(&*backend)
        .await
        .into_iter()
        .filter(|k| k.starts_with("p/"))
        .collect();
    let e = cautious
        .sweep_quiet(&HashSet::new(), future, &Lost)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("gate lost"), "{e}");
    for k in &packs_before {
        assert!(backend.head(k).await.unwrap().is_some(), "{k} went");
    }
    let r = cautious
        .sweep_quiet(&HashSet::new(), future, &Alone)
        .await
        .unwrap();
    assert!(r.deleted >= 1 && r.bytes_freed > 0, "{r:?}");
    let left = keys(&*backend).await;
    assert!(left.is_empty(), "a quiet sweep left {left:?}");
    for body in [&a, &b, &small] {
        put(&store, body).await;
    }
    // Keep B only: A's own chunks and the small blob go, B stays whole.
    let r = store.sweep(&HashSet::from([db]), future).await.unwrap();
    assert!(r.deleted >= 2 && r.bytes_freed > 0, "{r:?}");
    assert!(read_all(&store, &db, None).await.unwrap() == b);
    assert!(!store.contains(&da).await.unwrap());
    assert!(!store.contains(&ds).await.unwrap());
    store.sweep(&HashSet::new(), future).await.unwrap();
    assert!(keys(&*backend).await.is_empty());
}

async fn settings_marker_guards_keys(backend: Arc<dyn ObjectBackend>) {
    let with = |keys: Option<Keyring>| {
        ChunkStore::new(
            backend.clone(),
            Codec {
                compression: Compression::None,
                keys,
            },
        )
    };
    with(None)
        .check_settings()
        .await
        .expect("first use records");
    with(None).check_settings().await.expect("same settings");
    let text = Keyring::generate();
    let ring = Keyring::parse(&text).unwrap();
    with(Some(ring.clone()))
        .check_settings()
        .await
        .expect("turning encryption on");
    let e = with(None).check_settings().await.unwrap_err().to_string();
    assert!(e.contains("is encrypted"), "{e}");
    let other = Keyring::parse(&Keyring::generate()).unwrap();
    let e = with(Some(other))
        .check_settings()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong"), "{e}");
    // A rotated ring keeps its naming key, so it still fits.
    let rotated = Keyring::parse(&format!("{text}\n{}", ring.next_key_line())).unwrap();
    with(Some(rotated))
        .check_settings()
        .await
        .expect("rotated keys fit");
    backend.delete("satchel-store").await.unwrap();
}
