//! `satchel serve`: the embedded default (SQLite + local disk) on one port,
//! or SQLite with content on an object store (`--store`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use satchel_server::{AppState, DataDir};

/// Options of `satchel serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory for metadata and content.
    #[arg(long, env = "SATCHEL_DATA_DIR", default_value = "./satchel-data")]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "SATCHEL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Days until artifacts expire when they do not say (0: never).
    #[arg(long, env = "SATCHEL_RETENTION_DAYS", default_value_t = satchel_server::maintenance::DEFAULT_RETENTION_DAYS)]
    retention_days: u64,
    /// Days audit entries are kept (0: forever); artifact retention never
    /// deletes them.
    #[arg(long, env = "SATCHEL_AUDIT_RETENTION_DAYS", default_value_t = satchel_server::DEFAULT_AUDIT_RETENTION_DAYS)]
    audit_retention_days: u64,
    /// Minutes between garbage collection passes (0: only `satchel admin gc`).
    #[arg(long, env = "SATCHEL_GC_MINUTES", default_value_t = 60)]
    gc_minutes: u64,
    /// Seconds between passes instead of `--gc-minutes`; for tests that
    /// watch the periodic task work.
    #[arg(long, env = "SATCHEL_GC_EVERY_SECS", hide = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    gc_every_secs: Option<u32>,
    /// Grace period of the periodic GC in seconds (default 3600).
    #[arg(long, env = "SATCHEL_GC_GRACE_SECS", hide = true)]
    gc_grace_secs: Option<u32>,
    /// Seconds before an idle GitHub Actions upload is dropped (default a
    /// day).
    #[arg(long, env = "SATCHEL_GHA_UPLOAD_IDLE_SECS", hide = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    gha_upload_idle_secs: Option<u32>,
    /// Milliseconds a GitHub Actions DeleteArtifact waits for its job's
    /// upload of the same name before it takes effect for other readers
    /// (default 30000); for tests.
    #[arg(long, env = "SATCHEL_GHA_DELETE_WAIT_MS", hide = true,
          value_parser = clap::value_parser!(u32).range(0..=3_600_000))]
    gha_delete_wait_ms: Option<u32>,
    /// Packs of small files gathered in memory at once (8 MiB each);
    /// further batches wait their turn.
    #[arg(long, env = "SATCHEL_PACK_BUFFERS", default_value_t = satchel_server::PACK_BUFFERS as u16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pack_buffers: u16,
    /// Milliseconds a batch may keep a pack buffer while it waits on its
    /// client (default 2000); for tests that need a buffer held.
    #[arg(long, env = "SATCHEL_PACK_HOLD_MS", hide = true,
          value_parser = clap::value_parser!(u32).range(1..=3_600_000))]
    pack_hold_ms: Option<u32>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    storage: StorageArgs,
}

/// What one request, upload or client may use (docs/security.md).
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest manifest or chunk list body, in bytes.
    #[arg(long, env = "SATCHEL_MAX_MANIFEST_BYTES", default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..))]
    max_manifest_bytes: u32,
    /// Most files in one upload request.
    #[arg(long, env = "SATCHEL_MAX_FILES_PER_UPLOAD", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_files_per_upload: u32,
    /// Most files in one artifact.
    #[arg(long, env = "SATCHEL_MAX_FILES_PER_ARTIFACT", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_files_per_artifact: u64,
    /// Most live artifacts in one run.
    #[arg(long, env = "SATCHEL_MAX_ARTIFACTS_PER_RUN", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_artifacts_per_run: u64,
    /// Longest file path in bytes (16 to 1024).
    #[arg(long, env = "SATCHEL_MAX_PATH_BYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u16).range(16..=1024))]
    max_path_bytes: u16,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, env = "SATCHEL_HEADER_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    header_timeout: u32,
    /// Seconds a request body may go without a byte arriving.
    #[arg(long, env = "SATCHEL_BODY_IDLE_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    body_idle_timeout: u32,
    /// Failed authentications per client address and minute before it
    /// is answered 429.
    #[arg(long, env = "SATCHEL_MAX_AUTH_FAILURES", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_auth_failures: u32,
}

impl LimitArgs {
    /// The server's limits.
    pub fn limits(&self) -> satchel_server::Limits {
        use std::time::Duration;
        satchel_server::Limits {
            manifest_bytes: self.max_manifest_bytes as usize,
            files_per_upload: self.max_files_per_upload as usize,
            path_bytes: usize::from(self.max_path_bytes),
            quotas: satchel_db::Quotas {
                artifacts_per_run: self.max_artifacts_per_run,
                files_per_artifact: self.max_files_per_artifact,
            },
            header_timeout: Duration::from_secs(u64::from(self.header_timeout)),
            body_idle_timeout: Duration::from_secs(u64::from(self.body_idle_timeout)),
            auth_failures_per_minute: self.max_auth_failures,
        }
    }
}

/// Where and how content is stored (see docs/storage.md).
#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Metadata database: `postgres://USER:PASSWORD@HOST:PORT/DATABASE`
    /// (options: `pool_size=N`, default 8; `connect_timeout=SECS`;
    /// `sslmode=verify-full` with `sslrootcert=CA.pem` for TLS) or
    /// `sqlite://PATH`. Default: `satchel.db` (SQLite) in the data
    /// directory. Replicas sharing one PostgreSQL need one content store.
    #[arg(long = "database", env = "SATCHEL_DATABASE", hide_env_values = true)]
    database_url: Option<String>,
    /// Content store: `s3://bucket[/prefix]?endpoint=…`, `az://container`,
    /// `gs://bucket`, `http(s)://host/path` (WebDAV), `file:///dir`.
    /// Default: `content/` in the data directory.
    #[arg(long = "store", env = "SATCHEL_STORE")]
    store_url: Option<String>,
    /// Compression of stored content: `zstd`, `zstd:<level>` (-7..19) or
    /// `none`. Skipped per chunk where it does not pay.
    #[arg(long, env = "SATCHEL_COMPRESSION", default_value = "zstd", value_parser = parse_compression)]
    compression: satchel_store::Compression,
    /// Encrypt content at rest with the keys in this file (make one with
    /// `satchel admin keys generate`).
    #[arg(long, env = "SATCHEL_KEYS_FILE", conflicts_with = "keys")]
    keys_file: Option<PathBuf>,
    /// The key file's contents inline (comma-separated entries), for
    /// secret stores that hand out environment variables.
    #[arg(long, env = "SATCHEL_KEYS", hide_env_values = true)]
    keys: Option<String>,
    /// Seconds a stored chunk is trusted before a write that reuses it
    /// refreshes it; GC never deletes a chunk younger than twice this, and
    /// a write must record a reused chunk within half of it. A knob for
    /// tests that make GC race uploads (default 900; at least 5).
    #[arg(long, env = "SATCHEL_CHUNK_REFRESH_SECS", hide = true,
          value_parser = clap::value_parser!(u32).range(5..=86_400))]
    chunk_refresh_secs: Option<u32>,
    /// MiB a local content directory keeps free on its disk, so the
    /// metadata database beside it can still finish, abort and delete
    /// uploads (and GC run) when content has filled the rest: content
    /// writes that would eat into it answer 507. 0 turns it off.
    #[arg(long, env = "SATCHEL_RESERVE_MIB", default_value_t = (satchel_server::RESERVE_DEFAULT >> 20) as u32)]
    reserve_mib: u32,
    /// Seconds a failed request to a remote object store (a server error,
    /// a timeout, a broken connection) is retried, with backoff, before
    /// the upload or download fails with 502. 0: never retried.
    #[arg(long, env = "SATCHEL_STORE_RETRY_SECS", default_value_t = satchel_store::RETRY_FOR_DEFAULT.as_secs() as u16,
          value_parser = clap::value_parser!(u16).range(0..=600))]
    store_retry_secs: u16,
}

fn parse_compression(s: &str) -> Result<satchel_store::Compression, String> {
    match s {
        "none" | "off" => Ok(satchel_store::Compression::None),
        "zstd" => Ok(satchel_store::Compression::Zstd(1)),
        _ => match s.strip_prefix("zstd:").map(str::parse::<i32>) {
            Some(Ok(l)) if (-7..=19).contains(&l) => Ok(satchel_store::Compression::Zstd(l)),
            _ => Err(format!(
                "{s:?}: expected `zstd`, `zstd:<level>` with a level from -7 to 19, or `none`"
            )),
        },
    }
}

impl StorageArgs {
    /// The server's storage options.
    pub fn options(&self) -> anyhow::Result<satchel_server::StorageOptions> {
        let keys = match (&self.keys_file, &self.keys) {
            (Some(f), _) => Some(
                satchel_store::Keyring::load(f)
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .context("loading encryption keys")?,
            ),
            (None, Some(text)) => Some(
                satchel_store::Keyring::parse(text)
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .context("parsing SATCHEL_KEYS")?,
            ),
            (None, None) => None,
        };
        Ok(satchel_server::StorageOptions {
            database_url: self.database_url.clone(),
            store_url: self.store_url.clone(),
            compression: self.compression,
            keys,
            chunk_refresh: self
                .chunk_refresh_secs
                .map(|s| std::time::Duration::from_secs(u64::from(s))),
            reserve: u64::from(self.reserve_mib) << 20,
            store_retry: std::time::Duration::from_secs(u64::from(self.store_retry_secs)),
        })
    }
}

/// The admin token: `SATCHEL_ADMIN_TOKEN`, else the saved one, else a new
/// one saved with mode 0600 and printed once.
pub(crate) fn admin_token(file: &Path) -> anyhow::Result<String> {
    let min = satchel_server::MIN_ADMIN_TOKEN_CHARS;
    if let Ok(t) = std::env::var("SATCHEL_ADMIN_TOKEN") {
        let t = t.trim();
        if !t.is_empty() {
            anyhow::ensure!(
                t.chars().count() >= min,
                "SATCHEL_ADMIN_TOKEN is {} characters long; an admin token needs at least {min} (unset it to have one generated)",
                t.chars().count()
            );
            return Ok(t.to_string());
        }
    }
    match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => {
            let t = t.trim();
            anyhow::ensure!(
                t.chars().count() >= min,
                "the admin token in {} is {} characters long; an admin token needs at least {min} (delete the file to have one generated)",
                file.display(),
                t.chars().count()
            );
            return Ok(t.to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    let token = format!("satchel_{}", satchel_model::id::random_hex(24));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    eprintln!(
        "generated admin token (saved to {}, shown only this once):\n  {token}",
        file.display()
    );
    Ok(token)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(a: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SATCHEL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let dir = DataDir {
        root: a.data_dir.clone(),
    };
    let stores = satchel_server::open_embedded_with(&dir.root, &a.storage.options()?)
        .await
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("opening data directory {}", dir.root.display()))?;
    let token = admin_token(&dir.admin_token())?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    let secret = satchel_server::signing_secret(&stores, &dir.signing_secret())
        .await
        .map_err(anyhow::Error::msg)?;
    let _lock = stores.lock;
    let state = AppState::new(stores.db, stores.store, &token)
        .with_shared_db(stores.shared_db)
        .with_scratch(dir.scratch())
        .with_signing_secret(secret)
        .with_retention_days(a.retention_days)
        .with_audit_retention_days(a.audit_retention_days)
        .with_pack_buffers(usize::from(a.pack_buffers))
        .with_pack_hold(a.pack_hold_ms.map_or(satchel_server::PACK_HOLD, |ms| {
            std::time::Duration::from_millis(u64::from(ms))
        }))
        .with_limits(a.limits.limits());
    let every = match a.gc_every_secs {
        Some(secs) => u64::from(secs),
        None => a.gc_minutes.saturating_mul(60),
    };
    let secs = |s: u32| std::time::Duration::from_secs(u64::from(s));
    let mut periodic = satchel_server::maintenance::Periodic::every(
        (every > 0).then(|| std::time::Duration::from_secs(every)),
    );
    if let Some(g) = a.gc_grace_secs {
        periodic.grace = secs(g);
    }
    if let Some(i) = a.gha_upload_idle_secs {
        periodic.upload_idle = secs(i);
    }
    if let Some(ms) = a.gha_delete_wait_ms {
        state.gha.set_delete_wait_ms(i64::from(ms));
    }
    satchel_server::maintenance::spawn_periodic(state.clone(), periodic);
    satchel_server::serve(listener, state.clone(), shutdown_signal()).await?;
    satchel_server::maintenance::release_leases(&state).await;
    tracing::info!("shut down cleanly");
    Ok(())
}
