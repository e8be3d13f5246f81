//! Satchel's content store.
//!
//! Content is addressed by the SHA-256 of its bytes ([`Digest`]), so identical
//! files are stored once. The [`ContentStore`] trait is what the server sees.
//! Its implementation, [`ChunkStore`], splits blobs into content-defined
//! chunks ([`chunked`]), encodes each as an object ([`codec`]: zstd,
//! AES-256-GCM) and keeps the objects on an [`ObjectBackend`]: a local
//! directory ([`DirBackend`], the embedded default) or any `object_store`
//! store ([`RemoteBackend`]: S3, Azure Blob, GCS, HTTP/WebDAV). [`open`] picks
//! one by URL.
//!
//! Every write verifies size and hash before the blob becomes visible under
//! its name, and is atomic (temp file + rename). Writers choose whether a
//! write is durable on return ([`Durability::Sync`]) or whether they will call
//! [`ContentStore::flush`] once for a batch ([`Durability::Deferred`]); the
//! caller records blobs in the metadata store only after they are durable.

pub mod backend;
pub mod chunked;
pub mod codec;
pub mod conformance;
pub mod pack;
pub mod packer;
pub mod remote;

use std::fmt;
use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use tokio::io::AsyncRead;

pub use backend::{DirBackend, ObjectBackend};
pub use chunked::{ChunkStore, RewriteReport, SweepReport};
pub use codec::{Codec, Compression, Keyring};
pub use pack::{MemoryCatalog, PackCatalog};
pub use remote::RemoteBackend;

/// SHA-256 of a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Parses 64 lowercase or uppercase hex characters.
    pub fn from_hex(s: &str) -> Result<Digest, StoreError> {
        let mut out = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(StoreError::BadDigest(s.chars().take(80).collect()));
        }
        Ok(Digest(out))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(data).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Not a SHA-256 in hex.
    #[error("not a SHA-256 hex digest: {0:?}")]
    BadDigest(String),
    /// The bytes sent do not hash to the announced digest.
    #[error("content does not match its SHA-256: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Announced digest.
        expected: Digest,
        /// Digest of the bytes received.
        actual: Digest,
    },
    /// Fewer or more bytes than announced.
    #[error("content of {digest} has the wrong size: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Blob.
        digest: Digest,
        /// Announced size.
        expected: u64,
        /// Bytes received (a lower bound when more were sent).
        actual: u64,
    },
    /// No blob with this digest.
    #[error("content {0} is not in the store")]
    NotFound(Digest),
    /// A chunk named in a chunk list is not in the store: never sent, or
    /// collected since the client was told it was there (409: send it and
    /// assemble again).
    #[error("chunk {0} is not in the store: send it (PUT …/chunks/{0}) and assemble again")]
    ChunkMissing(Digest),
    /// Reading the client's request body failed (cut short, malformed).
    #[error("reading the request body: {0}")]
    BodyRead(String),
    /// A byte range outside the blob.
    #[error("range {start}..{end} is outside content of {size} bytes")]
    BadRange {
        /// Range start.
        start: u64,
        /// Range end (exclusive).
        end: u64,
        /// Blob size.
        size: u64,
    },
    /// Stored content no longer hashes to its digest (storage corruption).
    #[error("integrity error: stored content {digest} now hashes to {actual}; it was not served")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// What the stored bytes hash to.
        actual: Digest,
    },
    /// A stored object that cannot be decoded (corrupted, or not ours).
    #[error("integrity error: {0}")]
    Undecodable(String),
    /// The store's configuration (URL, keys) is wrong.
    #[error("{0}")]
    Config(String),
    /// A remote object store failed.
    #[error("object store: {0}")]
    Backend(String),
    /// Content the write relied on was being collected or had aged
    /// meanwhile (503): nothing was recorded, and the same request sent
    /// again writes what it needs anew.
    #[error("{0}")]
    Retry(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What failed, e.g. the path.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// The same error again, for a failure several waiters share (an I/O
    /// error keeps its kind, which decides the HTTP answer).
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Io { context, source } => StoreError::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::Backend(m) => StoreError::Backend(m.clone()),
            StoreError::Retry(m) => StoreError::Retry(m.clone()),
            StoreError::Config(m) => StoreError::Config(m.clone()),
            StoreError::Undecodable(m) => StoreError::Undecodable(m.clone()),
            StoreError::BodyRead(m) => StoreError::BodyRead(m.clone()),
            StoreError::BadDigest(m) => StoreError::BadDigest(m.clone()),
            StoreError::NotFound(d) => StoreError::NotFound(*d),
            StoreError::ChunkMissing(d) => StoreError::ChunkMissing(*d),
            StoreError::DigestMismatch { expected, actual } => StoreError::DigestMismatch {
                expected: *expected,
                actual: *actual,
            },
            StoreError::SizeMismatch {
                digest,
                expected,
                actual,
            } => StoreError::SizeMismatch {
                digest: *digest,
                expected: *expected,
                actual: *actual,
            },
            StoreError::BadRange { start, end, size } => StoreError::BadRange {
                start: *start,
                end: *end,
                size: *size,
            },
            StoreError::Corrupt { digest, actual } => StoreError::Corrupt {
                digest: *digest,
                actual: *actual,
            },
        }
    }

    /// Whether the error was caused by the bytes a client sent (4xx), as
    /// opposed to the store failing (5xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StoreError::BadDigest(_)
                | StoreError::DigestMismatch { .. }
                | StoreError::SizeMismatch { .. }
                | StoreError::BadRange { .. }
                | StoreError::ChunkMissing(_)
                | StoreError::BodyRead(_)
        )
    }
}

/// A quiet sweep's caller: it keeps every write out while the sweep runs
/// (GC holding the upload gate of every replica, none announced).
#[async_trait::async_trait]
pub trait Quiet: Send + Sync {
    /// Fails when writes may have started since the sweep began (the
    /// database connection holding the gate ended): the sweep stops.
    async fn still(&self) -> Result<(), StoreError>;
}

/// When a write must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Durable when `put` returns.
    Sync,
    /// Durable after the next [`ContentStore::flush`].
    Deferred,
}

/// A stream of blob bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Wraps a stream of a whole blob so that it hashes the bytes as they
/// pass and fails, instead of ending cleanly, if they do not hash to
/// `digest`. The last chunk is held back until the hash is checked: an
/// HTTP response with a `Content-Length` stops reading once it has that
/// many bytes, so the verdict must come before the last byte does. Readers
/// (an HTTP response) then fail rather than deliver bad bytes as good.
/// Backends use it for every whole-blob read.
pub fn verified(stream: ByteStream, digest: Digest) -> ByteStream {
    use futures_util::StreamExt;
    use sha2::Digest as _;
    struct State {
        inner: ByteStream,
        hasher: sha2::Sha256,
        held: Option<Bytes>,
        done: bool,
    }
    let state = State {
        inner: stream,
        hasher: sha2::Sha256::new(),
        held: None,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        move |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                match st.inner.next().await {
                    Some(Ok(chunk)) if chunk.is_empty() => continue,
                    Some(Ok(chunk)) => {
                        st.hasher.update(&chunk);
                        match st.held.replace(chunk) {
                            Some(prev) => return Some((Ok(prev), st)),
                            None => continue,
                        }
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    None => {
                        st.done = true;
                        let actual = Digest(std::mem::take(&mut st.hasher).finalize().into());
                        if actual != digest {
                            let e = StoreError::Corrupt { digest, actual };
                            return Some((
                                Err(std::io::Error::new(
                                    std::io::ErrorKind::InvalidData,
                                    e.to_string(),
                                )),
                                st,
                            ));
                        }
                        return st.held.take().map(|last| (Ok(last), st));
                    }
                }
            }
        },
    ))
}

/// Content-addressed blob storage.
#[async_trait]
pub trait ContentStore: Send + Sync + 'static {
    /// Whether the blob is stored. (Durability is tracked by the caller: a
    /// blob may exist here before it has been flushed.)
    async fn contains(&self, digest: &Digest) -> Result<bool, StoreError>;

    /// Reads exactly `size` bytes from `reader`, verifies they hash to
    /// `digest`, and stores them atomically under that digest. On any error
    /// nothing is stored.
    async fn put(
        &self,
        digest: &Digest,
        size: u64,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        durability: Durability,
    ) -> Result<(), StoreError>;

    /// Checks each small blob against its digest and stores them together
    /// as one pack object, durably on return. Any mismatch stores nothing.
    /// For many small blobs written at once (an upload batch); blobs of up
    /// to [`pack::PACK_ENTRY_MAX`] bytes, about [`pack::PACK_TARGET`] bytes
    /// in all.
    async fn put_packed(&self, blobs: Vec<(Digest, Bytes)>) -> Result<(), StoreError>;

    /// Makes every completed [`Durability::Deferred`] write durable.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Size of a stored blob.
    async fn size(&self, digest: &Digest) -> Result<u64, StoreError>;

    /// Streams a blob, or the byte range of it.
    async fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StoreError>;

    /// Removes a blob; removing a missing blob is not an error. Content it
    /// shared with other blobs stays; what nothing uses any more is freed by
    /// [`ContentStore::sweep`].
    async fn delete(&self, digest: &Digest) -> Result<(), StoreError>;

    /// Removes what is stored of blob `digest` so it can be stored afresh:
    /// its whole object or recipe, its pack entry, and every chunk of it
    /// that fails its check (a damaged chunk would otherwise be reused by
    /// the next upload). Healthy chunks stay. Returns the chunks removed.
    /// fsck's repair path.
    async fn discard(&self, digest: &Digest) -> Result<u64, StoreError>;

    /// Deletes stored content older than `cutoff` that no blob in `keep`
    /// uses. The caller guarantees no write relying on such content runs
    /// concurrently.
    async fn sweep(
        &self,
        keep: &std::collections::HashSet<Digest>,
        cutoff: std::time::SystemTime,
    ) -> Result<SweepReport, StoreError>;

    /// As [`ContentStore::sweep`], for a caller that keeps every write out
    /// meanwhile, in any process sharing the store: chunks no blob uses go
    /// by `cutoff` alone, not also by their age. `quiet` is asked again
    /// before each such deletion.
    async fn sweep_quiet(
        &self,
        keep: &std::collections::HashSet<Digest>,
        cutoff: std::time::SystemTime,
        quiet: &dyn Quiet,
    ) -> Result<SweepReport, StoreError>;

    /// Re-encodes everything not written with the current key and settings
    /// (key rotation), reporting progress after each object.
    async fn rewrite(
        &self,
        progress: &(dyn for<'r> Fn(&'r RewriteReport) + Send + Sync),
    ) -> Result<RewriteReport, StoreError>;

    /// How many stored objects each key id encrypts (`None`: plain).
    async fn key_usage(&self) -> Result<Vec<(Option<u32>, u64)>, StoreError>;

    /// Where the content lives, for logs (no secrets).
    fn describe(&self) -> String;

    /// How many times this process listed every pack of the store (to load
    /// where packed blobs are, or to look for one it missed).
    fn pack_listings(&self) -> u64 {
        0
    }

    /// For each chunk, whether the store lacks it (or holds it too old to be
    /// relied on; one it can refresh cheaply counts as present).
    async fn missing_chunks(&self, chunks: &[Digest]) -> Result<Vec<bool>, StoreError>;

    /// Stores one chunk sent on its own, after checking it hashes to
    /// `digest`. Until a blob's recipe uses it, it is garbage the sweep may
    /// collect once old.
    async fn put_chunk(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError>;

    /// Makes blob `digest` of `size` bytes out of stored chunks: checks they
    /// are all there and young, that together they hash to `digest`, then
    /// writes the recipe durably.
    async fn assemble(
        &self,
        digest: &Digest,
        size: u64,
        chunks: &[(u32, Digest)],
    ) -> Result<(), StoreError>;

    /// Checks (and on first use records) the settings the store is written
    /// with, so a wrong or missing key file is refused at start.
    async fn check_settings(&self) -> Result<(), StoreError>;

    /// With encryption on: the active key id and every known key id.
    fn key_ids(&self) -> Option<(u32, Vec<u32>)>;
}

/// How to open a content store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `file:///path`, `s3://…`, `az://…`, `gs://…`, `http(s)://…`,
    /// `memory://`; a plain path means `file://`.
    pub url: String,
    /// Compression of new objects.
    pub compression: Compression,
    /// Encryption keys; `None` stores content unencrypted.
    pub keys: Option<Keyring>,
    /// How long a request to a remote object store is retried (with
    /// backoff) after a server error, a timeout or a broken connection,
    /// before it fails ([`RETRY_FOR_DEFAULT`]; zero: never retried).
    /// Ignored by local directories.
    pub retry_for: std::time::Duration,
    /// Bytes a local directory store keeps free: a content write that
    /// would eat into them fails as full, so the metadata database beside
    /// it can still record, abort and delete. Ignored by object stores.
    pub reserve: u64,
}

/// The default of [`StoreConfig::retry_for`]: a store that stays down
/// this long fails the request (502), rather than holding it for the
/// three minutes `object_store` would.
pub const RETRY_FOR_DEFAULT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a full content store answers (HTTP 507), naming the limit and
/// never a path.
pub const CONTENT_FULL: &str =
    "the content store has no space left (its disk, quota, or the space \
     kept free for the metadata): nothing was stored; free space (delete artifacts and run \
     `satchel admin gc`) or enlarge the store, then retry";

/// Whether an I/O error means the disk or quota is full.
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::QuotaExceeded
            | std::io::ErrorKind::FileTooLarge
    )
}

/// Opens the content store a configuration names.
pub fn open(config: &StoreConfig) -> Result<ChunkStore, StoreError> {
    let codec = Codec {
        compression: config.compression,
        keys: config.keys.clone(),
    };
    let url = config.url.as_str();
    let backend: std::sync::Arc<dyn ObjectBackend> = if let Some(path) = url.strip_prefix("file://")
    {
        std::sync::Arc::new(DirBackend::open(path)?.with_reserve(config.reserve))
    } else if !url.contains("://") {
        std::sync::Arc::new(DirBackend::open(url)?.with_reserve(config.reserve))
    } else {
        std::sync::Arc::new(RemoteBackend::from_url_retrying(url, config.retry_for)?)
    };
    Ok(ChunkStore::new(backend, codec))
}
