//! PostgreSQL, for several `satchel serve` replicas on one database.
//!
//! A small pool of connections (`?pool_size=N` in the URL, default 8),
//! used from tokio's blocking pool like SQLite's: each call blocks on the
//! async client on the runtime that opened the store. Transactions run at
//! PostgreSQL's default isolation, `READ COMMITTED`; the rules take the row
//! locks they need ([`Sql::lock`]: `SELECT … FOR NO KEY UPDATE`, which
//! serializes the lockers but not the foreign key checks of rows that
//! reference the locked one) and rely on
//! unique indexes, never on a check-then-insert (see `rules`). A write
//! transaction that loses a deadlock, or a unique index race, is rolled
//! back and run again, up to [`WRITE_ATTEMPTS`] times in all. Statements
//! are prepared once per connection.
//!
//! Migrations are append-only (`migrations/postgres`), applied at start
//! under an advisory lock so replicas starting together apply each once.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::runtime::Handle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{Client, Config, NoTls, Statement};

use crate::backend::{Backend, Store};
use crate::sql::{dollar_params, Lock, Row, Sql, Value};
use crate::{DbError, WriteGateHold, WRITE_ANNOUNCEMENT_MAX_MS};

/// The PostgreSQL schema, one append-only migration per version (version N
/// is a row of `satchel_schema`).
pub const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0002_blob_writes.sql"),
    include_str!("../migrations/postgres/0003_access.sql"),
    include_str!("../migrations/postgres/0004_secrets.sql"),
    include_str!("../migrations/postgres/0005_upload_owed.sql"),
    include_str!("../migrations/postgres/0006_package_owners.sql"),
    include_str!("../migrations/postgres/0007_owed_whole.sql"),
    include_str!("../migrations/postgres/0008_leases.sql"),
    include_str!("../migrations/postgres/0009_background_status.sql"),
    include_str!("../migrations/postgres/0010_files_run.sql"),
    include_str!("../migrations/postgres/0011_files_name.sql"),
    include_str!("../migrations/postgres/0012_artifact_totals.sql"),
    include_str!("../migrations/postgres/0013_jobs_superseded.sql"),
    include_str!("../migrations/postgres/0014_gha_uploads.sql"),
    include_str!("../migrations/postgres/0015_pack_entries.sql"),
    include_str!("../migrations/postgres/0016_files_gha.sql"),
    include_str!("../migrations/postgres/0017_files_fks.sql"),
    include_str!("../migrations/postgres/0018_packages_order.sql"),
    include_str!("../migrations/postgres/0019_runs_build_id.sql"),
    include_str!("../migrations/postgres/0020_runs_failed_jobs.sql"),
    include_str!("../migrations/postgres/0021_gha_views.sql"),
    include_str!("../migrations/postgres/0022_upload_replaces.sql"),
];
/// Key of the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x5a7c_4e1d;
/// Key of the advisory lock of the blob-write gate: announcements take it
/// shared for their transaction, a GC sweep exclusively for its session.
const WRITE_GATE: i64 = 0x5a7c_6a7e;
/// How often a write transaction runs at most.
pub const WRITE_ATTEMPTS: usize = 5;
const DEFAULT_POOL: usize = 8;
/// How long a call waits for a free connection.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// Metadata in a PostgreSQL database.
pub type PostgresStore = Store<PostgresBackend>;

/// The connection pool of a [`PostgresStore`].
pub struct PostgresBackend {
    config: Config,
    /// TLS for every connection, when the URL asks for it.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    rt: Handle,
    max: usize,
    pool: Mutex<Pool>,
    freed: Condvar,
}

struct Pool {
    idle: Vec<Slot>,
    open: usize,
}

/// One connection and the statements prepared on it.
struct Slot {
    client: Client,
    stmts: HashMap<String, Statement>,
    /// Inside a transaction not yet committed or rolled back: such a
    /// connection (left by a panic) is closed, never reused.
    in_tx: bool,
}

/// Splits satchel's own options off a PostgreSQL URL: `(URL for the
/// driver, pool size)`.
/// The options of a database URL Satchel reads itself.
#[derive(Debug)]
struct UrlOptions {
    /// Connections in the pool.
    pool: usize,
    /// Encrypt and verify (`sslmode=require`, `verify-ca`, `verify-full`).
    tls: bool,
    /// A PEM file of the certificates that may sign the server's
    /// (`sslrootcert`); the system's roots otherwise.
    root_cert: Option<String>,
}

fn split_options(url: &str) -> Result<(String, UrlOptions), DbError> {
    let mut opts = UrlOptions {
        pool: DEFAULT_POOL,
        tls: false,
        root_cert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), opts));
    };
    let mut rest = Vec::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("sslmode", v)) => match v {
                "disable" | "prefer" | "allow" => {}
                "require" | "verify-ca" | "verify-full" => opts.tls = true,
                _ => {
                    return Err(DbError::Invalid(format!(
                        "sslmode={v:?} in the database URL: use disable, require, verify-ca or verify-full"
                    )))
                }
            },
            Some(("sslrootcert", v)) => {
                // A path with `%20` for a space, as in any URL.
                opts.root_cert = Some(percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned());
            }
            Some(("pool_size", v)) => {
                opts.pool = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        DbError::Invalid(format!(
                            "pool_size={v:?} in the database URL: use a number from 1 to 1000"
                        ))
                    })?;
            }
            _ => rest.push(kv),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    if opts.root_cert.is_some() && !opts.tls {
        return Err(DbError::Invalid(
            "sslrootcert in the database URL needs sslmode=verify-full (or require, verify-ca)"
                .into(),
        ));
    }
    Ok((url, opts))
}

/// TLS that verifies the server's certificate against `root_cert` (a PEM
/// file) or the system's roots, and the server's name: libpq's
/// `verify-full`, for every mode that encrypts (an unverified connection
/// is open to whoever sits between the replica and the database).
fn tls_connector(
    root_cert: Option<&str>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DbError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| DbError::Invalid(format!("sslrootcert {path:?}: {e}")))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| DbError::Invalid(format!("sslrootcert {path:?}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(DbError::Invalid(format!(
                    "sslrootcert {path:?} holds no PEM certificate"
                )));
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(DbError::Invalid(
                    "sslmode asks for TLS, but this system has no root certificates: give sslrootcert=PATH".into(),
                ));
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| DbError::Backend(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `url` with its password replaced, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let user_pass = &url[s + 3..at];
            match user_pass.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn pg_error(e: tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        // Text PostgreSQL cannot hold (a NUL byte) can only come from the
        // caller's input.
        Some(db) if *db.code() == SqlState::CHARACTER_NOT_IN_REPERTOIRE => {
            DbError::Invalid("text may not contain a NUL byte".into())
        }
        Some(db) if *db.code() == SqlState::DISK_FULL => DbError::Full(crate::DATABASE_FULL.into()),
        Some(db) => DbError::Backend(format!(
            "PostgreSQL: {} ({})",
            db.message(),
            db.code().code()
        )),
        None => DbError::Backend(format!("PostgreSQL: {e}")),
    }
}

/// Whether running the transaction again may succeed.
fn transient(code: Option<&SqlState>) -> bool {
    matches!(
        code,
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

impl Store<PostgresBackend> {
    /// Connects to the database `url` names (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`,
    /// libpq's URL options such as `connect_timeout` allowed, plus
    /// `pool_size`) and applies migrations. `sslmode=require`, `verify-ca`
    /// or `verify-full` encrypts every connection and verifies the server's
    /// certificate and name against `sslrootcert=PATH` (PEM) or the
    /// system's roots; without it (or with `disable`, `prefer`) connections
    /// are unencrypted.
    pub async fn connect(url: &str) -> Result<PostgresStore, DbError> {
        let (driver_url, opts) = split_options(url)?;
        let mut config: Config = driver_url
            .parse()
            .map_err(|e| DbError::Invalid(format!("database URL {}: {e}", redacted(url))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let tls = if opts.tls {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(tls_connector(opts.root_cert.as_deref())?)
        } else {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            None
        };
        let max = opts.pool;
        let store = Store::new(PostgresBackend {
            config,
            tls,
            rt: Handle::current(),
            max,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        });
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.backend().migrate())
            .await
            .map_err(|e| DbError::Backend(format!("database task failed: {e}")))??;
        Ok(store)
    }
}

impl PostgresBackend {
    fn connect_slot(&self) -> Result<Slot, DbError> {
        let failed = |e: tokio_postgres::Error| {
            // The TLS error (an unknown issuer, a wrong name) is the source.
            let why = std::error::Error::source(&e)
                .map(|s| format!("{e}: {s}"))
                .unwrap_or_else(|| e.to_string());
            DbError::Backend(format!("connecting to PostgreSQL: {why}"))
        };
        // The connection's socket is driven by a task of its own; its end
        // shows as a closed client.
        let client = match &self.tls {
            None => {
                let (client, connection) = self
                    .rt
                    .block_on(self.config.connect(NoTls))
                    .map_err(failed)?;
                self.rt.spawn(async move {
                    let _ = connection.await;
                });
                client
            }
            Some(tls) => {
                let (client, connection) = self
                    .rt
                    .block_on(self.config.connect(tls.clone()))
                    .map_err(failed)?;
                self.rt.spawn(async move {
                    let _ = connection.await;
                });
                client
            }
        };
        Ok(Slot {
            client,
            stmts: HashMap::new(),
            in_tx: false,
        })
    }

    fn checkout(&self) -> Result<Checkout<'_>, DbError> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = std::time::Instant::now() + POOL_WAIT;
        loop {
            if let Some(slot) = pool.idle.pop() {
                if slot.client.is_closed() {
                    pool.open -= 1;
                    continue;
                }
                return Ok(Checkout {
                    backend: self,
                    slot: Some(slot),
                });
            }
            if pool.open < self.max {
                pool.open += 1;
                drop(pool);
                return match self.connect_slot() {
                    Ok(slot) => Ok(Checkout {
                        backend: self,
                        slot: Some(slot),
                    }),
                    Err(e) => {
                        self.pool.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(DbError::Backend(format!(
                    "no database connection was free for {} s (pool_size={}): raise pool_size in the database URL",
                    POOL_WAIT.as_secs(),
                    self.max
                )));
            }
            pool = self
                .freed
                .wait_timeout(pool, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn migrate(&self) -> Result<(), DbError> {
        let mut co = self.checkout()?;
        let slot = co.slot();
        let rt = &self.rt;
        let run = |sql: &str| {
            rt.block_on(slot.client.batch_execute(sql))
                .map_err(pg_error)
        };
        run("BEGIN")?;
        let result = (|| {
            rt.block_on(
                slot.client
                    .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]),
            )
            .map_err(pg_error)?;
            run("CREATE TABLE IF NOT EXISTS satchel_schema (version BIGINT NOT NULL)")?;
            let version: i64 = rt
                .block_on(
                    slot.client
                        .query_opt("SELECT MAX(version) FROM satchel_schema", &[]),
                )
                .map_err(pg_error)?
                .and_then(|r| r.get::<_, Option<i64>>(0))
                .unwrap_or(0);
            if version as usize > MIGRATIONS.len() {
                return Err(DbError::Backend(format!(
                    "database schema version {version} is newer than this satchel ({}): upgrade satchel",
                    MIGRATIONS.len()
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                run(sql).map_err(|e| DbError::Backend(format!("migration {}: {e}", i + 1)))?;
                rt.block_on(slot.client.execute(
                    "INSERT INTO satchel_schema (version) VALUES ($1)",
                    &[&(i as i64 + 1)],
                ))
                .map_err(pg_error)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => run("COMMIT"),
            Err(e) => {
                let _ = run("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// A connection taken from the pool; back in the pool when dropped (or
/// closed for good, when it broke).
struct Checkout<'a> {
    backend: &'a PostgresBackend,
    slot: Option<Slot>,
}

impl Checkout<'_> {
    fn slot(&mut self) -> &mut Slot {
        self.slot.as_mut().expect("a checked-out connection")
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        let mut pool = self.backend.pool.lock().unwrap_or_else(|p| p.into_inner());
        if slot.client.is_closed() || slot.in_tx {
            pool.open -= 1;
        } else {
            pool.idle.push(slot);
        }
        drop(pool);
        self.backend.freed.notify_one();
    }
}

impl Backend for PostgresBackend {
    fn read<T>(&self, f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, DbError> {
        let mut retried = false;
        loop {
            let mut co = self.checkout()?;
            let mut conn = PgConn::new(&self.rt, co.slot());
            // One snapshot for every statement of the read (a search page
            // reads in several), so a write committed meanwhile is seen
            // whole or not at all.
            let result = conn
                .batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .and_then(|()| {
                    // Until it ends, a connection dropped (a panic) is
                    // closed, not pooled inside the transaction.
                    conn.slot.in_tx = true;
                    let out = f(&mut conn).and_then(|out| conn.batch("COMMIT").map(|()| out));
                    if out.is_ok() || conn.batch("ROLLBACK").is_ok() {
                        conn.slot.in_tx = false;
                    }
                    out
                });
            let closed = conn.slot.client.is_closed();
            // A pooled connection the server closed meanwhile (a restart,
            // an idle timeout): reads change nothing, so once more on a
            // fresh one.
            if result.is_err() && closed && !retried {
                retried = true;
                continue;
            }
            return result;
        }
    }

    fn columns(&self) -> Result<crate::backend::ColumnMap, DbError> {
        self.read(&mut |c| {
            let mut out = crate::backend::ColumnMap::new();
            for mut r in c.query(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema()",
                &[],
            )? {
                let table = r.text(0)?;
                out.entry(table).or_default().insert(r.text(1)?);
            }
            Ok(out)
        })
    }

    fn announce_writes(&self, writer: &str, digests: &[String]) -> Result<(), DbError> {
        let now = satchel_model::id::now_millis();
        loop {
            let mut co = self.checkout()?;
            let mut conn = PgConn::new(&self.rt, co.slot());
            conn.batch("BEGIN")?;
            conn.slot.in_tx = true;
            // Queued behind a sweep holding the gate (so a GC running flat
            // out cannot starve writers), but for a second at most: then
            // the connection goes back to the pool and the writer queues
            // again, so a long sweep does not park the whole pool.
            let locked = conn.batch("SET LOCAL lock_timeout = '1s'").and_then(|()| {
                conn.execute(
                    "SELECT pg_advisory_xact_lock_shared(?1)",
                    &[Value::Int(WRITE_GATE)],
                )
            });
            let result = match locked {
                Err(_) if conn.code == Some(SqlState::LOCK_NOT_AVAILABLE) => None,
                Err(e) => Some(Err(e)),
                Ok(_) => Some((|| {
                    // One statement for up to 500 digests (a pack's worth
                    // of small files), not a round trip each.
                    for chunk in digests.chunks(500) {
                        let rows: Vec<String> = (0..chunk.len())
                            .map(|i| format!("(?1, ?{}, ?2)", i + 3))
                            .collect();
                        let mut args = vec![writer.into(), Value::Int(now)];
                        args.extend(chunk.iter().map(Value::from));
                        conn.execute(
                            &format!(
                                "INSERT INTO blob_writes (writer, sha256, started_at) VALUES {}
                                 ON CONFLICT DO NOTHING",
                                rows.join(", ")
                            ),
                            &args,
                        )?;
                    }
                    conn.batch("COMMIT")
                })()),
            };
            match result {
                Some(Ok(())) => {
                    conn.slot.in_tx = false;
                    return Ok(());
                }
                other => {
                    if conn.batch("ROLLBACK").is_ok() {
                        conn.slot.in_tx = false;
                    }
                    if let Some(Err(e)) = other {
                        return Err(e);
                    }
                }
            }
            drop(co);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn end_writes(&self, writer: &str) -> Result<(), DbError> {
        self.write(&mut |c| {
            c.execute(
                "DELETE FROM blob_writes WHERE writer = ?1",
                &[writer.into()],
            )
            .map(drop)
        })
    }

    fn connection_encrypted(&self) -> Result<bool, DbError> {
        self.read(&mut |c| {
            c.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )?
            .boolean(0)
        })
    }

    fn refresh_statistics(&self) -> Result<(), DbError> {
        self.write(&mut |c| c.execute("ANALYZE", &[]).map(drop))
    }

    fn hold_write_gate(&self) -> Result<Option<WriteGateHold>, DbError> {
        // A connection of its own, outside the pool: the session lock is
        // held as long as it is open, and released by PostgreSQL if this
        // process dies.
        let mut slot = self.connect_slot()?;
        let mut conn = PgConn::new(&self.rt, &mut slot);
        conn.execute("SELECT pg_advisory_lock(?1)", &[Value::Int(WRITE_GATE)])?;
        let stale = satchel_model::id::now_millis() - WRITE_ANNOUNCEMENT_MAX_MS;
        conn.execute(
            "DELETE FROM blob_writes WHERE started_at < ?1",
            &[Value::Int(stale)],
        )?;
        let mut announced = std::collections::HashSet::new();
        for mut r in conn.query("SELECT DISTINCT sha256 FROM blob_writes", &[])? {
            announced.insert(r.text(0)?);
        }
        Ok(Some(WriteGateHold::new(
            announced,
            Box::new(GateConnection(slot.client)),
        )))
    }

    fn write<T>(
        &self,
        f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut attempt = 1;
        let mut reconnected = false;
        loop {
            let mut co = self.checkout()?;
            let mut conn = PgConn::new(&self.rt, co.slot());
            if let Err(e) = conn.batch("BEGIN") {
                // A pooled connection the server closed meanwhile: nothing
                // ran, so once more on a fresh one.
                if conn.slot.client.is_closed() && !reconnected {
                    reconnected = true;
                    continue;
                }
                return Err(e);
            }
            conn.slot.in_tx = true;
            let result = f(&mut conn).and_then(|out| {
                // PostgreSQL answers COMMIT of a transaction in which a
                // statement failed with a rollback, not an error: a rule
                // that went on after a failure must not look committed.
                if conn.failed {
                    return Err(DbError::Backend(
                        "a statement failed inside the transaction; nothing was written".into(),
                    ));
                }
                conn.batch("COMMIT").map(|()| out)
            });
            match result {
                Ok(out) => {
                    conn.slot.in_tx = false;
                    return Ok(out);
                }
                Err(e) => {
                    let retry = transient(conn.code.as_ref()) && attempt < WRITE_ATTEMPTS;
                    // A failed COMMIT has ended the transaction already;
                    // ROLLBACK then only warns.
                    if conn.batch("ROLLBACK").is_ok() {
                        conn.slot.in_tx = false;
                    }
                    if !retry {
                        return Err(e);
                    }
                }
            }
            drop(co);
            std::thread::sleep(Duration::from_millis(5 * attempt as u64));
            attempt += 1;
        }
    }
}

/// The connection whose session holds the blob-write gate; dropping it
/// ends the session, and PostgreSQL releases the lock.
struct GateConnection(Client);

#[async_trait::async_trait]
impl crate::GateHolder for GateConnection {
    async fn check(&self) -> Result<(), DbError> {
        self.0
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| {
                DbError::Backend(format!(
                    "lost the connection holding GC's blob-write gate ({e}); stopping this sweep"
                ))
            })
    }
}

/// A checked-out connection, inside a transaction for writes.
struct PgConn<'a> {
    rt: &'a Handle,
    slot: &'a mut Slot,
    /// The SQLSTATE of the last failed statement.
    code: Option<SqlState>,
    /// Whether any statement failed.
    failed: bool,
}

impl<'a> PgConn<'a> {
    fn new(rt: &'a Handle, slot: &'a mut Slot) -> PgConn<'a> {
        PgConn {
            rt,
            slot,
            code: None,
            failed: false,
        }
    }

    fn fail(&mut self, e: tokio_postgres::Error) -> DbError {
        self.code = e.code().cloned();
        self.failed = true;
        pg_error(e)
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        STATEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = self.rt.block_on(self.slot.client.batch_execute(sql));
        r.map_err(|e| self.fail(e))
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, DbError> {
        if let Some(s) = self.slot.stmts.get(sql) {
            return Ok(s.clone());
        }
        let r = self
            .rt
            .block_on(self.slot.client.prepare(&dollar_params(sql)));
        let s = r.map_err(|e| self.fail(e))?;
        if self.slot.stmts.len() >= 2048 {
            self.slot.stmts.clear();
        }
        self.slot.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

fn column(row: &tokio_postgres::Row, i: usize) -> Result<Value, DbError> {
    let bad = |e: tokio_postgres::Error| DbError::Backend(format!("column {i}: {e}"));
    let ty = row.columns()[i].type_();
    Ok(match *ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(bad)?
            .map(|b| Value::Int(b as i64)),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(bad)?
            .map(|n| Value::Int(n.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map(|n| Value::Int(n.into())),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map(Value::Int),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row
            .try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map(Value::Text),
        _ => {
            return Err(DbError::Backend(format!(
                "column {i}: unexpected type {ty}"
            )))
        }
    }
    .unwrap_or(Value::Null))
}

impl Sql for PgConn<'_> {
    fn now_ms(&mut self) -> Result<i64, DbError> {
        let mut rows = self.query(
            "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint",
            &[],
        )?;
        rows.pop()
            .ok_or_else(|| DbError::Backend("the database gave no time".into()))?
            .int(0)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        STATEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let st = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|v| v as _).collect();
        let r = self.rt.block_on(self.slot.client.query(&st, &params));
        let found = r.map_err(|e| self.fail(e))?;
        found
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| column(row, i))
                    .collect::<Result<_, _>>()
                    .map(Row)
            })
            .collect()
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        STATEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let st = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|v| v as _).collect();
        let r = self.rt.block_on(self.slot.client.execute(&st, &params));
        r.map_err(|e| self.fail(e))
    }

    fn lock(&mut self, lock: Lock, id: &str) -> Result<(), DbError> {
        let sql = format!(
            "SELECT 1 FROM {} WHERE id = ?1 FOR NO KEY UPDATE",
            lock.table()
        );
        self.query(&sql, &[Value::Text(id.to_string())]).map(drop)
    }

    fn lock_blobs(&mut self, digests: &[&str]) -> Result<Option<Vec<(String, i64)>>, DbError> {
        if digests.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let marks = crate::sql::marks(digests.len(), 1);
        let args: Vec<Value> = digests.iter().map(|d| Value::from(*d)).collect();
        // Rows are locked as the sort returns them: in digest order.
        self.query(
            &format!(
                "SELECT sha256, size FROM blobs WHERE sha256 IN ({marks}) ORDER BY sha256 FOR NO KEY UPDATE"
            ),
            &args,
        )?
        .into_iter()
        .map(|mut r| Ok((r.text(0)?, r.int(1)?)))
        .collect::<Result<_, DbError>>()
        .map(Some)
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::BOOL => (*n != 0).to_sql(ty, out),
                _ => Err(format!("an integer parameter where {ty} is expected").into()),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => {
                    s.as_str().to_sql(ty, out)
                }
                _ => Err(format!("a text parameter where {ty} is expected").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Statements sent to PostgreSQL by this process (each a round trip;
/// preparing a statement the first time on a connection is not counted).
static STATEMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Benchmark support: statements sent to PostgreSQL so far by this process
/// (`BEGIN` and `COMMIT` included), for the capacity model's figures.
#[doc(hidden)]
pub fn statements_sent() -> u64 {
    STATEMENTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A connection to the server `base_url` names, for creating and dropping
/// test databases.
async fn server_client(base_url: &str) -> Result<Client, DbError> {
    let (client, connection) = tokio_postgres::connect(base_url, NoTls)
        .await
        .map_err(|e| DbError::Backend(format!("connecting to {}: {e}", redacted(base_url))))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Test support: a fresh, empty database on the server `base_url` names
/// (its database part is ignored), so each test has its own. Returns its
/// URL.
#[doc(hidden)]
pub async fn create_test_database(base_url: &str) -> Result<String, DbError> {
    let name = format!("satchel_t_{}", satchel_model::id::new_id());
    server_client(base_url)
        .await?
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(pg_error)?;
    Ok(with_database(base_url, &name))
}

/// Test support: drops the database `url` names (made by
/// [`create_test_database`]), disconnecting whoever uses it.
#[doc(hidden)]
pub async fn drop_test_database(base_url: &str, url: &str) -> Result<(), DbError> {
    let name = url
        .split_once('?')
        .map_or(url, |(u, _)| u)
        .rsplit('/')
        .next()
        .filter(|n| {
            n.starts_with("satchel_t_") && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .ok_or_else(|| DbError::Invalid(format!("{} is not a test database", redacted(url))))?;
    server_client(base_url)
        .await?
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .map_err(pg_error)
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satchel_options_are_split_off() {
        let (url, o) =
            split_options("postgres://u:p@h:5/db?pool_size=3&connect_timeout=2").unwrap();
        assert_eq!(
            (url.as_str(), o.pool, o.tls),
            ("postgres://u:p@h:5/db?connect_timeout=2", 3, false)
        );
        let (url, o) = split_options("postgres://h/db").unwrap();
        assert_eq!((url.as_str(), o.pool), ("postgres://h/db", DEFAULT_POOL));
        assert!(split_options("postgres://h/db?pool_size=0").is_err());
        let (url, o) =
            split_options("postgres://h/db?sslmode=verify-full&sslrootcert=/etc/a%20b/ca.pem")
                .unwrap();
        assert_eq!(url, "postgres://h/db");
        assert!(o.tls);
        assert_eq!(o.root_cert.as_deref(), Some("/etc/a b/ca.pem"));
        let (_, o) = split_options("postgres://h/db?sslmode=disable").unwrap();
        assert!(!o.tls);
        for bad in ["sslmode=maybe", "sslrootcert=/ca.pem"] {
            let e = split_options(&format!("postgres://h/db?{bad}")).unwrap_err();
            assert!(matches!(e, DbError::Invalid(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("postgres://satchel:secret@127.0.0.1:5432/db"),
            "postgres://satchel:***@127.0.0.1:5432/db"
        );
    }

    #[test]
    fn test_databases_replace_the_database_part() {
        assert_eq!(
            with_database("postgres://u:p@h:1/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
    }
}
