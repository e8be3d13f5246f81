//! Satchel's HTTP server.
//!
//! Owns the REST API under `/api/v1` (documented in `docs/api.md`), bearer
//! token authentication ([`access`] decides who may do what, [`audit`]
//! records every request), and the one error boundary ([`error`]). Metadata
//! goes through `satchel_db::MetaStore`, content through
//! `satchel_store::ContentStore`; handlers never touch files or SQL.

pub mod access;
pub mod audit;
pub mod error;
mod extract;
pub mod gate;
pub mod gha;
pub mod maintenance;
pub mod metrics;
pub mod openapi;
pub mod packs;
mod routes;
#[cfg(test)]
mod testing;
pub mod ui;
pub mod unzip;

pub use routes::uploads::validate_manifest;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use satchel_db::MetaStore;
use satchel_store::ContentStore;
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;

/// How many packs of small files may be gathered in memory at once
/// (default of `satchel serve --pack-buffers`).
pub const PACK_BUFFERS: usize = 8;

/// The most a connection buffers of what it reads (hyper's default is
/// 408 KiB): with many uploads at once, their read buffers were a tenth
/// of the server's memory, and 64 KiB reads cost nothing measurable.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// How long one batch may keep a pack buffer while its client sends
/// nothing; then what arrived is written out and the buffer is released.
pub const PACK_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest one batch keeps a pack buffer however steadily its client
/// sends (a client trickling a byte a second cannot hold one for long).
pub const PACK_HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// What one request, upload or client may use. Each is a
/// `satchel serve` option; passing one is a clear 4xx (or a closed
/// connection, for a client that stops sending its headers) and stores
/// nothing.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON body of manifests and chunk lists.
    pub manifest_bytes: usize,
    /// Most files in one upload request.
    pub files_per_upload: usize,
    /// Longest file path, in bytes (at most the model's 1024).
    pub path_bytes: usize,
    /// Artifacts per run and files per artifact.
    pub quotas: satchel_db::Quotas,
    /// How long a client may take to send a request's headers.
    pub header_timeout: std::time::Duration,
    /// How long a request body may go without a byte arriving.
    pub body_idle_timeout: std::time::Duration,
    /// Failed authentications one client address may make per minute
    /// before it is answered 429 until the minute is over.
    pub auth_failures_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            manifest_bytes: 64 * 1024 * 1024,
            files_per_upload: 100_000,
            path_bytes: satchel_model::path::MAX_PATH_BYTES,
            quotas: satchel_db::Quotas::default(),
            header_timeout: std::time::Duration::from_secs(30),
            body_idle_timeout: std::time::Duration::from_secs(60),
            auth_failures_per_minute: 100,
        }
    }
}

/// Failed authentications per client address in the current minute.
///
/// Windows are global minutes, so the table is cleared once a minute and
/// every operation is O(1). IPv6 addresses count per /64 (what one host
/// usually holds), IPv4 per address. When the table is full, new addresses
/// go uncounted until the next minute rather than wiping what is known.
#[derive(Debug)]
pub struct AuthFailures {
    state: std::sync::Mutex<FailureWindow>,
}

#[derive(Debug)]
struct FailureWindow {
    started: std::time::Instant,
    counts: std::collections::HashMap<u128, u32>,
}

impl Default for AuthFailures {
    fn default() -> AuthFailures {
        AuthFailures {
            state: std::sync::Mutex::new(FailureWindow {
                started: std::time::Instant::now(),
                counts: std::collections::HashMap::new(),
            }),
        }
    }
}

impl AuthFailures {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
    /// Addresses counted at most per minute.
    const MAX_ADDRS: usize = 100_000;

    fn key(addr: std::net::IpAddr) -> u128 {
        match addr {
            std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
            std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => u128::from(u32::from(v4)),
                None => (u128::from(a) >> 64 << 64) | (1 << 32),
            },
        }
    }

    /// The current window, started anew when a minute has passed.
    fn window(&self) -> std::sync::MutexGuard<'_, FailureWindow> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if w.started.elapsed() >= Self::WINDOW {
            w.started = std::time::Instant::now();
            w.counts.clear();
        }
        w
    }

    /// Seconds until `addr` may fail again, if it failed `max` times in
    /// this window.
    fn blocked(&self, addr: std::net::IpAddr, max: u32) -> Option<u64> {
        let w = self.window();
        let n = *w.counts.get(&Self::key(addr))?;
        let left = Self::WINDOW.saturating_sub(w.started.elapsed());
        (n >= max).then(|| left.as_secs().max(1))
    }

    /// Counts one failure of `addr`.
    fn failed(&self, addr: std::net::IpAddr) {
        let mut w = self.window();
        let full = w.counts.len() >= Self::MAX_ADDRS;
        let key = Self::key(addr);
        if let Some(n) = w.counts.get_mut(&key) {
            *n = n.saturating_add(1);
        } else if !full {
            w.counts.insert(key, 1);
        }
    }
}

/// Counters and gauges of `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests received under `/api/v1`.
    pub api_requests: std::sync::atomic::AtomicU64,
    /// Pack buffers handed to batches so far.
    pub pack_buffers_taken: std::sync::atomic::AtomicU64,
    /// Batches that had to wait for a pack buffer.
    pub pack_buffer_waits: std::sync::atomic::AtomicU64,
    /// Requests refused for a wrong token.
    pub auth_failures: std::sync::atomic::AtomicU64,
    /// Requests answered 429 for too many failed authentications.
    pub auth_throttled: std::sync::atomic::AtomicU64,
    /// GC passes completed (periodic and `admin gc`).
    pub gc_passes: std::sync::atomic::AtomicU64,
    /// GitHub Actions uploads dropped for being idle.
    pub gha_reaped: std::sync::atomic::AtomicU64,
    /// 1 while this replica holds the lease on periodic GC.
    pub gc_leader: std::sync::atomic::AtomicU64,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// Metadata.
    pub db: Arc<dyn MetaStore>,
    /// Content.
    pub store: Arc<dyn ContentStore>,
    admin_token_hash: [u8; 32],
    /// Signs GitHub Actions runtime tokens and signed URLs; its own random
    /// secret, never derived from a token.
    signing_secret: [u8; 32],
    /// What `/metrics` reports.
    pub counters: Arc<Counters>,
    /// Requests by route, bytes, storage figures (see [`metrics`]).
    pub metrics: Arc<metrics::Metrics>,
    /// The GitHub Actions artifact protocol.
    pub gha: Arc<gha::Gha>,
    /// Writers of blobs announce what they store; garbage collection
    /// skips it, so a blob re-sent during a sweep is never deleted after
    /// it was stored, and no lock is held while a client sends (see
    /// [`gate`]).
    pub blob_gate: Arc<gate::BlobGate>,
    /// This process's id among replicas (it holds leases on background
    /// work under it).
    pub replica: Arc<str>,
    /// Whether other processes share the database (replicas on
    /// PostgreSQL): only then is background work leased.
    pub shared_db: bool,
    /// The last or running key rotation.
    pub rotation: Arc<std::sync::Mutex<maintenance::Rotation>>,
    /// One permit per pack being gathered in memory (up to
    /// [`satchel_store::pack::PACK_TARGET`] bytes each), so that many
    /// concurrent batches of small files cannot take unbounded memory:
    /// [`PACK_BUFFERS`] × 8 MiB at most; further batches wait.
    pub pack_buffers: Arc<tokio::sync::Semaphore>,
    /// How many pack buffers there are.
    pack_buffer_count: usize,
    /// How long a batch may keep a pack buffer while waiting on its client.
    pub pack_hold: std::time::Duration,
    /// Retention of new artifacts that do not ask for one, in seconds
    /// (`None`: keep forever).
    pub default_expire_secs: Option<u64>,
    /// What requests, uploads and clients may use.
    pub limits: Arc<Limits>,
    /// Failed authentications per client address.
    auth_failures: Arc<AuthFailures>,
    /// Where every request is recorded.
    pub audit: audit::AuditLog,
    /// How long audit entries are kept, in days (0: forever).
    pub audit_retention_days: u64,
    /// Wakes the task that frees what failed writes left behind
    /// ([`maintenance::release_soon`]).
    pub release: Arc<tokio::sync::Notify>,
}

impl AppState {
    /// State over the given stores, accepting `admin_token`.
    pub fn new(
        db: Arc<dyn MetaStore>,
        store: Arc<dyn ContentStore>,
        admin_token: &str,
    ) -> AppState {
        let admin_token_hash: [u8; 32] = Sha256::digest(admin_token.as_bytes()).into();
        let scratch = std::env::temp_dir().join(format!(
            "satchel-scratch-{}",
            satchel_model::id::random_hex(8)
        ));
        // Until a persistent secret is given (with_signing_secret), one of
        // this process's own: tokens it signs end with it.
        let mut signing_secret = [0u8; 32];
        getrandom::fill(&mut signing_secret).expect("the OS random source");
        let db_for_audit = db.clone();
        AppState {
            blob_gate: Arc::new(gate::BlobGate::new(db.clone())),
            replica: satchel_model::id::new_id().into(),
            shared_db: false,
            db,
            store,
            admin_token_hash,
            signing_secret,
            counters: Arc::default(),
            metrics: Arc::default(),
            gha: Arc::new(gha::Gha::new(&signing_secret, scratch)),
            pack_buffers: Arc::new(tokio::sync::Semaphore::new(PACK_BUFFERS)),
            pack_buffer_count: PACK_BUFFERS,
            pack_hold: PACK_HOLD,
            rotation: Arc::new(std::sync::Mutex::new(maintenance::Rotation {
                state: "idle".into(),
                ..maintenance::Rotation::default()
            })),
            default_expire_secs: Some(maintenance::DEFAULT_RETENTION_DAYS * 86_400),
            limits: Arc::default(),
            auth_failures: Arc::default(),
            audit: audit::AuditLog::start(db_for_audit),
            audit_retention_days: DEFAULT_AUDIT_RETENTION_DAYS,
            release: Arc::default(),
        }
    }

    /// Keeps audit entries for `days` (0: forever).
    pub fn with_audit_retention_days(mut self, days: u64) -> AppState {
        self.audit_retention_days = days;
        self
    }

    /// Who presented `secret`: the bootstrap admin, a live stored token,
    /// or (the inner `Err`) why it is refused.
    pub async fn authenticate(
        &self,
        secret: &str,
    ) -> Result<Result<access::Principal, access::Refused>, ApiError> {
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        // Comparing hashes: timing reveals nothing useful about the token.
        if hash == self.admin_token_hash {
            return Ok(Ok(access::Principal::Admin));
        }
        let invalid = || {
            Ok(Err(access::Refused {
                why: "the token is not valid for this server".to_string(),
                token: None,
            }))
        };
        if !secret.starts_with(satchel_model::access::TOKEN_PREFIX) {
            return invalid();
        }
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let Some(t) = self.db.token_by_hash(&hex).await? else {
            return invalid();
        };
        if let Some(at) = &t.revoked_at {
            return Ok(Err(access::Refused {
                why: format!("token {} was revoked at {at}", t.id),
                token: Some(t.clone()),
            }));
        }
        if !t.is_live(satchel_model::id::now_millis()) {
            return Ok(Err(access::Refused {
                why: format!(
                    "token {} expired at {}",
                    t.id,
                    t.expires_at.as_deref().unwrap_or("?")
                ),
                token: Some(t.clone()),
            }));
        }
        Ok(Ok(access::Principal::Token(Box::new(t))))
    }

    /// Applies `limits`.
    pub fn with_limits(mut self, limits: Limits) -> AppState {
        self.limits = Arc::new(limits);
        self
    }

    /// Sets the retention of new artifacts in days (0: keep forever).
    pub fn with_retention_days(mut self, days: u64) -> AppState {
        self.default_expire_secs = (days > 0).then(|| days.saturating_mul(86_400));
        self
    }

    /// Gathers at most `n` (at least 1) packs of small files in memory at
    /// once.
    pub fn with_pack_buffers(mut self, n: usize) -> AppState {
        let n = n.max(1);
        self.pack_buffers = Arc::new(tokio::sync::Semaphore::new(n));
        self.pack_buffer_count = n;
        self
    }

    /// Marks the database as shared with other replicas ([`Stores::shared_db`]).
    pub fn with_shared_db(mut self, shared: bool) -> AppState {
        self.shared_db = shared;
        self
    }

    /// Lets a batch keep a pack buffer for `d` while it waits on its
    /// client (default [`PACK_HOLD`]).
    pub fn with_pack_hold(mut self, d: std::time::Duration) -> AppState {
        self.pack_hold = d;
        self
    }

    /// Uses `dir` for scratch files (a GitHub Actions block while it is
    /// received and hashed); it is emptied now.
    pub fn with_scratch(mut self, dir: PathBuf) -> AppState {
        let _ = std::fs::remove_dir_all(&dir);
        self.gha = Arc::new(gha::Gha::new(&self.signing_secret, dir));
        self
    }

    /// Signs GitHub Actions runtime tokens and signed URLs with `secret`
    /// (see [`load_signing_secret`]), so they outlive a restart.
    pub fn with_signing_secret(mut self, secret: [u8; 32]) -> AppState {
        self.signing_secret = secret;
        self.gha = Arc::new(gha::Gha::new(&secret, self.gha.scratch.clone()));
        self
    }
}

/// How long audit entries are kept by default, in days.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u64 = 400;

/// The shortest admin token the server accepts.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// The secret in `path` that signs runtime tokens and URLs: 64 hex
/// characters, created (random, mode 0600, synced, atomically) on first
/// use. The caller holds the data directory's lock.
pub fn load_signing_secret(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Write as _;
    let bad = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: {why}; delete it to make a new one (tokens and URLs it signed stop working)",
                path.display()
            ),
        )
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let raw = hex::decode(text.trim()).map_err(|_| bad("not hex"))?;
            return raw.try_into().map_err(|_| bad("not 32 bytes of hex"));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Written whole to a temp file, synced, then renamed into place (the
    // caller holds the data directory's lock): a crash leaves either no
    // secret or a whole one, never an empty file that fails every start.
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(format!("{}\n", hex::encode(secret)).as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(secret)
}

/// Where the embedded default keeps things under a data directory.
pub struct DataDir {
    /// The directory.
    pub root: PathBuf,
}

impl DataDir {
    /// The SQLite database path.
    pub fn database(&self) -> PathBuf {
        self.root.join("satchel.db")
    }
    /// The content store root.
    pub fn content(&self) -> PathBuf {
        self.root.join("content")
    }
    /// The admin token file.
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    /// Scratch space (emptied at start-up).
    pub fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }
    /// The secret that signs runtime tokens and URLs.
    pub fn signing_secret(&self) -> PathBuf {
        self.root.join("signing.key")
    }
}

/// The metadata and content stores a server runs on.
pub struct Stores {
    /// Metadata.
    pub db: Arc<dyn MetaStore>,
    /// Content.
    pub store: Arc<dyn ContentStore>,
    /// Held for as long as the stores are in use: one process per data
    /// directory.
    pub lock: Option<std::fs::File>,
    /// Whether the database is shared by several processes (PostgreSQL),
    /// which then share its secrets too ([`signing_secret`]).
    pub shared_db: bool,
}

/// The secret that signs runtime tokens and signed URLs: with a shared
/// database, the one stored there (the first replica makes it), so a token
/// or URL one replica issued works on every other; else the data
/// directory's own `file` ([`load_signing_secret`]).
pub async fn signing_secret(stores: &Stores, file: &Path) -> Result<[u8; 32], String> {
    if !stores.shared_db {
        return load_signing_secret(file).map_err(|e| format!("loading the signing secret: {e}"));
    }
    let candidate = satchel_model::id::random_hex(32);
    let text = stores
        .db
        .shared_secret("signing", &candidate)
        .await
        .map_err(|e| format!("reading the shared signing secret: {e}"))?;
    let raw = hex::decode(text.trim())
        .map_err(|_| "the database's signing secret is not hex".to_string())?;
    raw.try_into()
        .map_err(|_| "the database's signing secret is not 32 bytes".to_string())
}

/// How content is stored: where, compressed how, encrypted with what.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Metadata database URL (`sqlite://PATH`, `postgres://…`); `None`:
    /// `satchel.db` (SQLite) in the data directory.
    pub database_url: Option<String>,
    /// Content store URL (`s3://…`, `az://…`, …); `None`: the data
    /// directory's `content/`.
    pub store_url: Option<String>,
    /// Compression of new objects.
    pub compression: satchel_store::Compression,
    /// Encryption keys; `None`: content is stored unencrypted.
    pub keys: Option<satchel_store::Keyring>,
    /// How long a stored chunk is trusted before a write that reuses it
    /// refreshes it; GC never deletes a chunk younger than twice this.
    /// `None`: the store's default (15 minutes).
    pub chunk_refresh: Option<std::time::Duration>,
    /// Bytes a local content directory keeps free for the metadata
    /// database (see [`satchel_store::StoreConfig::reserve`]).
    pub reserve: u64,
    /// How long a failed request to a remote object store is retried
    /// (see [`satchel_store::StoreConfig::retry_for`]).
    pub store_retry: std::time::Duration,
}

/// The default of [`StorageOptions::reserve`]: room for finishing,
/// aborting and deleting uploads, and for GC, when content fills the disk.
pub const RESERVE_DEFAULT: u64 = 64 << 20;

impl Default for StorageOptions {
    fn default() -> StorageOptions {
        StorageOptions {
            database_url: None,
            store_url: None,
            compression: satchel_store::Compression::Zstd(1),
            keys: None,
            chunk_refresh: None,
            reserve: RESERVE_DEFAULT,
            store_retry: satchel_store::RETRY_FOR_DEFAULT,
        }
    }
}

/// Opens the embedded default stores (SQLite + local disk) under `dir`.
pub async fn open_embedded(dir: &Path) -> Result<Stores, String> {
    open_embedded_with(dir, &StorageOptions::default()).await
}

/// Opens the database and the content store `opts` name (by default SQLite
/// and local disk, both under `dir`).
pub async fn open_embedded_with(dir: &Path, opts: &StorageOptions) -> Result<Stores, String> {
    let d = DataDir {
        root: dir.to_path_buf(),
    };
    std::fs::create_dir_all(&d.root).map_err(|e| format!("creating {}: {e}", d.root.display()))?;
    let lock_path = d.root.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(format!(
                "data directory {} is in use by another satchel process (serve or run); stop it, or point this command at it with --server/SATCHEL_URL",
                d.root.display()
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(format!("locking {}: {e}", lock_path.display()))
        }
    }
    let db_url = opts
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", d.database().display()));
    let db = satchel_db::open(&db_url).await.map_err(|e| e.to_string())?;
    let url = opts
        .store_url
        .clone()
        .unwrap_or_else(|| d.content().display().to_string());
    let mut store = satchel_store::open(&satchel_store::StoreConfig {
        url,
        compression: opts.compression,
        keys: opts.keys.clone(),
        reserve: opts.reserve,
        retry_for: opts.store_retry,
    })
    .map_err(|e| e.to_string())?;
    if let Some(r) = opts.chunk_refresh {
        store = store.with_refresh_after(r);
    }
    let shared_db = db_url.starts_with("postgres://") || db_url.starts_with("postgresql://");
    if shared_db {
        // Replicas find each other's packs through the database.
        store = store.with_pack_catalog(Arc::new(packs::DbPackCatalog::new(db.clone())));
    }
    satchel_store::ContentStore::check_settings(&store)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        "content store: {}",
        satchel_store::ContentStore::describe(&store)
    );
    Ok(Stores {
        db,
        store: Arc::new(store),
        lock: Some(lock),
        shared_db,
    })
}

/// `GET /readyz`: 200 when the metadata database and the content store
/// answer (one indexed lookup each), else 503 naming which does not. A load
/// balancer sends traffic only to ready replicas; `/healthz` says only that
/// the process is up.
async fn readyz(State(state): State<AppState>) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let probe = "0".repeat(64);
    // Unauthenticated: what failed, not where (the log has that).
    if let Err(e) = state.db.known_blobs(std::slice::from_ref(&probe)).await {
        tracing::warn!("readyz: metadata database unavailable: {e}");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metadata database unavailable (the server log has the details)\n".into(),
        );
    }
    if let Err(e) = state.store.contains(&satchel_store::Digest([0; 32])).await {
        tracing::warn!("readyz: content store unavailable: {e}");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "content store unavailable (the server log has the details)\n".into(),
        );
    }
    (StatusCode::OK, "ready\n".to_string())
}

/// `GET /metrics`: Prometheus text format. Counts only, no names (no
/// pipeline, token or path, only route patterns), so it needs no token.
async fn metrics(State(state): State<AppState>) -> String {
    let storage = match state.metrics.storage(&state).await {
        Ok(f) => Some(f),
        Err(e) => {
            // /readyz says why; the other series still report.
            tracing::warn!("metrics: storage figures: {}", e.message);
            None
        }
    };
    let mut out = plain_counters(&state).await;
    state.metrics.render(&mut out, storage.as_deref());
    out
}

/// The counters of [`Counters`] and a few gauges, in Prometheus text.
async fn plain_counters(state: &AppState) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &state.counters;
    // -1 when the database does not answer: /readyz says which.
    let gha_uploads = state.db.gha_count().await.map_or(-1, |n| n as i64);
    let in_use = state
        .pack_buffer_count
        .saturating_sub(state.pack_buffers.available_permits());
    format!(
        "# HELP satchel_api_requests_total Requests received under /api/v1.\n\
         # TYPE satchel_api_requests_total counter\n\
         satchel_api_requests_total {}\n\
         # HELP satchel_pack_buffers_taken_total Pack buffers handed to batches of small files.\n\
         # TYPE satchel_pack_buffers_taken_total counter\n\
         satchel_pack_buffers_taken_total {}\n\
         # HELP satchel_blobs_being_written Blobs announced to GC by writers on this replica now.\n\
         # TYPE satchel_blobs_being_written gauge\n\
         satchel_blobs_being_written {}\n\
         # HELP satchel_pack_buffer_waits_total Batches that waited for a pack buffer.\n\
         # TYPE satchel_pack_buffer_waits_total counter\n\
         satchel_pack_buffer_waits_total {}\n\
         # HELP satchel_pack_buffers_in_use Pack buffers held now.\n\
         # TYPE satchel_pack_buffers_in_use gauge\n\
         satchel_pack_buffers_in_use {in_use}\n\
         # HELP satchel_pack_buffers Pack buffers in all.\n\
         # TYPE satchel_pack_buffers gauge\n\
         satchel_pack_buffers {}\n\
         # HELP satchel_auth_failures_total Requests refused for a wrong token.\n\
         # TYPE satchel_auth_failures_total counter\n\
         satchel_auth_failures_total {}\n\
         # HELP satchel_auth_throttled_total Requests answered 429 after too many failed authentications.\n\
         # TYPE satchel_auth_throttled_total counter\n\
         satchel_auth_throttled_total {}\n\
         # HELP satchel_gc_passes_total Garbage collection passes completed.\n\
         # TYPE satchel_gc_passes_total counter\n\
         satchel_gc_passes_total {}\n\
         # HELP satchel_gc_leader 1 while this replica holds the lease on periodic GC and retention.\n\
         # TYPE satchel_gc_leader gauge\n\
         satchel_gc_leader {}\n\
         # HELP satchel_gha_uploads GitHub Actions uploads in progress (on every replica of the database).\n\
         # TYPE satchel_gha_uploads gauge\n\
         satchel_gha_uploads {}\n\
         # HELP satchel_gha_uploads_reaped_total GitHub Actions uploads dropped after going idle.\n\
         # TYPE satchel_gha_uploads_reaped_total counter\n\
         satchel_gha_uploads_reaped_total {}\n\
         # HELP satchel_store_pack_listings_total Times this replica listed every pack of the content store.\n\
         # TYPE satchel_store_pack_listings_total counter\n\
         satchel_store_pack_listings_total {}\n",
        c.api_requests.load(Relaxed),
        c.pack_buffers_taken.load(Relaxed),
        state.blob_gate.announced(),
        c.pack_buffer_waits.load(Relaxed),
        state.pack_buffer_count,
        c.auth_failures.load(Relaxed),
        c.auth_throttled.load(Relaxed),
        c.gc_passes.load(Relaxed),
        c.gc_leader.load(Relaxed),
        gha_uploads,
        c.gha_reaped.load(Relaxed),
        state.store.pack_listings(),
    )
}

async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state
        .counters
        .api_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let note = req
        .extensions()
        .get::<audit::AuditNote>()
        .cloned()
        .unwrap_or_default();
    let addr = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented else {
        // Not a guess: no token at all is not counted against the address.
        note.deny("no token");
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <token>` header (set SATCHEL_TOKEN)",
        ));
    };
    let why = match state.authenticate(token).await? {
        Ok(principal) => {
            note.principal(&principal);
            req.extensions_mut().insert(principal);
            // A valid token always passes, so guesses from an address
            // shared with CI jobs (NAT, a proxy) never lock those jobs out.
            return Ok(next.run(req).await);
        }
        Err(refused) => {
            if let Some(t) = &refused.token {
                note.token(&t.id, &t.name, Some(&t.org));
            }
            refused.why
        }
    };
    note.deny(&why);
    Err(state.auth_refused(addr, why))
}

impl AppState {
    /// The answer to a failed authentication from `addr`: 429 once the
    /// address has failed [`Limits::auth_failures_per_minute`] times in a
    /// minute, else 401 (and the failure counted). The API's bearer tokens
    /// and the UI's login form share it, so neither is a way around it.
    pub(crate) fn auth_refused(&self, addr: Option<std::net::IpAddr>, why: String) -> ApiError {
        use std::sync::atomic::Ordering::Relaxed;
        let max = self.limits.auth_failures_per_minute;
        if let Some(wait) = addr.and_then(|a| self.auth_failures.blocked(a, max)) {
            self.counters.auth_throttled.fetch_add(1, Relaxed);
            let mut e = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!(
                    "{max} failed authentications from this address within a minute; try again in {wait} s"
                ),
            );
            e.retry_after = Some(wait);
            return e;
        }
        self.counters.auth_failures.fetch_add(1, Relaxed);
        if let Some(a) = addr {
            self.auth_failures.failed(a);
        }
        ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "unauthorized", why)
    }
}

/// Request bodies that go quiet for longer than the limit end in an error
/// (which handlers answer as bad input), so a stalled client cannot hold a
/// handler, a connection or a shared buffer forever.
async fn idle_bodies(State(state): State<AppState>, req: Request) -> Request {
    let idle = state.limits.body_idle_timeout;
    let metrics = state.metrics.clone();
    req.map(|body| {
        let stream = futures_util::stream::unfold(body.into_data_stream(), move |mut s| {
            let metrics = metrics.clone();
            async move {
                use futures_util::StreamExt as _;
                match tokio::time::timeout(idle, s.next()).await {
                    Ok(Some(Ok(b))) => {
                        metrics
                            .bytes_in
                            .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        Some((Ok(b), s))
                    }
                    Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), s)),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                            "the client sent nothing for {} s (satchel serve --body-idle-timeout)",
                            idle.as_secs()
                        ),
                        )),
                        s,
                    )),
                }
            }
        });
        axum::body::Body::from_stream(stream)
    })
}

/// What no route takes: counted as `unmatched` (never by its path, which
/// the client chose).
async fn no_route(State(state): State<AppState>, method: axum::http::Method) -> ApiError {
    state
        .metrics
        .observe(method.as_str(), "unmatched", 404, std::time::Duration::ZERO);
    ApiError::not_found("no such endpoint; the API lives under /api/v1 (see docs/api.md)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not support that method (see docs/api.md)",
    )
}

/// The whole HTTP application.
pub fn router(state: AppState) -> axum::Router {
    let (api, _) = routes::api(&state.limits).split_for_parts();
    let api = api
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ));
    let probes = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .route("/api/v1/openapi.json", axum::routing::get(openapi::serve))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ));
    axum::Router::new()
        .merge(probes)
        .nest("/api/v1", api)
        .merge(ui::routes(state.clone()))
        .merge(
            gha::routes()
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    audit::record,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    metrics::track,
                )),
        )
        .fallback(no_route)
        .layer(axum::middleware::map_request_with_state(
            state.clone(),
            idle_bodies,
        ))
        .with_state(state)
}

/// How long a shutdown waits for requests in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `state` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish. Each connection gets
/// [`Limits::header_timeout`] to send a request's headers (a client that
/// trickles them is dropped), and its address for the per-address limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = state.limits.header_timeout;
    let audit = state.audit.clone();
    let app = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset};
                    // A peer gone before accept: go on at once. Out of
                    // file descriptors and the like: wait a little first.
                    if !matches!(e.kind(), ConnectionAborted | ConnectionReset) {
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                tower_service::Service::call(&mut app.clone(), req.map(axum::body::Body::new))
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(READ_BUFFER_MAX)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection from {remote}: {e}");
            }
        });
    }
    // New connections are refused from now on; those in flight get a
    // while to finish (a client that stops reading must not hold the
    // process forever).
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {} s; shutting down anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    // What the finished requests did is on record before the process ends.
    audit.flush().await;
    Ok(())
}
