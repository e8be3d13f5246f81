//! `satchel admin migrate`: moves an embedded data directory (SQLite and
//! its content store) into PostgreSQL and, optionally, another content
//! store, for a deployment of several replicas. Offline: it takes the data
//! directory's lock, so the server must be stopped.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use futures_util::TryStreamExt as _;
use satchel_db::MetaStore as _;
use satchel_store::{Digest, Durability};

/// Options of `satchel admin migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The data directory to move (the server using it must be stopped).
    #[arg(long, env = "SATCHEL_DATA_DIR", default_value = "./satchel-data")]
    data_dir: PathBuf,
    /// The new, empty PostgreSQL database:
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE`.
    #[arg(
        long = "to",
        value_name = "DATABASE_URL",
        env = "SATCHEL_MIGRATE_TO",
        hide_env_values = true
    )]
    to: String,
    /// Copy the content into this store (`s3://…`, `az://…`, `gs://…`, …),
    /// with the data directory's compression and keys. Without it the
    /// content stays where it is, and the new servers must be pointed at
    /// it (`--store`).
    #[arg(long = "to-store", value_name = "STORE_URL")]
    to_store: Option<String>,
    /// How the data directory's content is stored now (as `satchel
    /// serve` was started).
    #[command(flatten)]
    storage: crate::serve::StorageArgs,
}

/// Runs the migration, printing progress on stderr and a summary on stdout.
pub async fn run(a: MigrateArgs) -> anyhow::Result<()> {
    let opts = a.storage.options()?;
    if opts
        .database_url
        .as_deref()
        .is_some_and(|u| !u.starts_with("sqlite://"))
    {
        anyhow::bail!(
            "satchel admin migrate moves an embedded (SQLite) data directory; this one's database is {}",
            satchel_db::postgres::redacted(opts.database_url.as_deref().unwrap_or_default())
        );
    }
    // Takes the data directory's lock: refuses while a server uses it.
    let source = satchel_server::open_embedded_with(&a.data_dir, &opts)
        .await
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("opening data directory {}", a.data_dir.display()))?;
    let dir = satchel_server::DataDir {
        root: a.data_dir.clone(),
    };
    let from_db = satchel_db::SqliteStore::open(opts.database_url.as_deref().map_or_else(
        || dir.database(),
        |u| PathBuf::from(u.trim_start_matches("sqlite://")),
    ))?;
    let to_db = satchel_db::PostgresStore::connect(&a.to)
        .await
        .context("connecting to the destination database")?;

    let mut blobs_copied = 0u64;
    let mut bytes_copied = 0u64;
    if let Some(url) = &a.to_store {
        let to_store: Arc<dyn satchel_store::ContentStore> = Arc::new(
            satchel_store::open(&satchel_store::StoreConfig {
                url: url.clone(),
                compression: opts.compression,
                keys: opts.keys.clone(),
                reserve: opts.reserve,
                retry_for: opts.store_retry,
            })
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("opening the destination store")?,
        );
        to_store
            .check_settings()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let digests = from_db.recorded_blobs().await?;
        let total = digests.len();
        for (i, hex) in digests.iter().enumerate() {
            let d = Digest::from_hex(hex).map_err(|e| anyhow::anyhow!("{e}"))?;
            if to_store
                .contains(&d)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                continue;
            }
            let size = source
                .store
                .size(&d)
                .await
                .map_err(|e| anyhow::anyhow!("content {hex}: {e}"))?;
            let stream = source
                .store
                .get(&d, None)
                .await
                .map_err(|e| anyhow::anyhow!("content {hex}: {e}"))?
                .map_err(std::io::Error::other);
            let mut reader = tokio_util::io::StreamReader::new(stream);
            // put checks the bytes against the digest: nothing damaged
            // arrives.
            to_store
                .put(&d, size, &mut reader, Durability::Deferred)
                .await
                .map_err(|e| anyhow::anyhow!("copying content {hex}: {e}"))?;
            blobs_copied += 1;
            bytes_copied += size;
            if (i + 1) % 500 == 0 || i + 1 == total {
                eprintln!("content: {} of {total} blobs", i + 1);
            }
        }
        to_store.flush().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let report = satchel_db::copy::copy_all(&from_db, &to_db, |table, n| {
        eprintln!("metadata: {table}: {n} rows");
    })
    .await
    .context("copying metadata")?;
    // Plans for the first requests come from statistics of the copied rows,
    // not of the empty tables the copy started with.
    to_db
        .refresh_statistics()
        .await
        .context("analyzing the copied tables")?;
    println!(
        "migrated {} into {}",
        a.data_dir.display(),
        satchel_db::postgres::redacted(&a.to)
    );
    for (table, n) in report {
        println!("  {table}: {n} rows");
    }
    if a.to_store.is_some() {
        println!(
            "  content: {blobs_copied} blobs ({}) copied",
            crate::output::human(bytes_copied)
        );
    }
    println!(
        "start the servers with --database {} {}and the same SATCHEL_ADMIN_TOKEN on each",
        satchel_db::postgres::redacted(&a.to),
        a.to_store
            .as_deref()
            .map(|s| format!("--store {} ", satchel_db::postgres::redacted(s)))
            .unwrap_or_default()
    );
    Ok(())
}
