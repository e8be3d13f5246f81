//! The embedded default: SQLite in WAL mode.
//!
//! One writer connection (SQLite allows one writer at a time anyway) and a
//! few reader connections, each behind a mutex and used from tokio's
//! blocking pool. `synchronous = FULL`, so a committed transaction survives
//! power loss. Write transactions are `BEGIN IMMEDIATE`: one at a time, so
//! the row locks the rules ask for ([`Sql::lock`]) are already held.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};

use crate::backend::{Backend, Store};
use crate::sql::{Lock, Row, Sql, Value};
use crate::DbError;

/// The SQLite schema, one append-only migration per version (version N is
/// `PRAGMA user_version = N`).
pub const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_pipelines.sql"),
    include_str!("../migrations/sqlite/0003_retention.sql"),
    include_str!("../migrations/sqlite/0004_package_order.sql"),
    include_str!("../migrations/sqlite/0005_access.sql"),
    include_str!("../migrations/sqlite/0006_secrets.sql"),
    include_str!("../migrations/sqlite/0007_upload_owed.sql"),
    include_str!("../migrations/sqlite/0008_package_owners.sql"),
    include_str!("../migrations/sqlite/0009_owed_whole.sql"),
    include_str!("../migrations/sqlite/0010_leases.sql"),
    include_str!("../migrations/sqlite/0011_background_status.sql"),
    include_str!("../migrations/sqlite/0012_files_run.sql"),
    include_str!("../migrations/sqlite/0013_files_name.sql"),
    include_str!("../migrations/sqlite/0014_artifact_totals.sql"),
    include_str!("../migrations/sqlite/0015_jobs_superseded.sql"),
    include_str!("../migrations/sqlite/0016_gha_uploads.sql"),
    include_str!("../migrations/sqlite/0017_pack_entries.sql"),
    include_str!("../migrations/sqlite/0018_files_gha.sql"),
    include_str!("../migrations/sqlite/0019_packages_order.sql"),
    include_str!("../migrations/sqlite/0020_runs_build_id.sql"),
    include_str!("../migrations/sqlite/0021_runs_failed_jobs.sql"),
    include_str!("../migrations/sqlite/0022_gha_views.sql"),
    include_str!("../migrations/sqlite/0023_upload_replaces.sql"),
];
const READERS: usize = 4;

/// Metadata in one SQLite file.
pub type SqliteStore = Store<SqliteBackend>;

/// The SQLite connections of a [`SqliteStore`].
pub struct SqliteBackend {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

fn backend(e: rusqlite::Error) -> DbError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => DbError::Full(crate::DATABASE_FULL.into()),
        _ => DbError::Backend(e.to_string()),
    }
}

fn connect(path: &Path) -> Result<Connection, DbError> {
    let c = Connection::open(path)
        .map_err(|e| DbError::Backend(format!("opening {}: {e}", path.display())))?;
    c.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(backend)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(backend)?;
    c.set_prepared_statement_cache_capacity(128);
    Ok(c)
}

impl Store<SqliteBackend> {
    /// Opens or creates the database at `path` and applies migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, DbError> {
        let path = path.as_ref();
        let mut writer = connect(path)?;
        migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| connect(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Store::new(SqliteBackend {
            writer: Mutex::new(writer),
            readers,
            next: AtomicUsize::new(0),
        }))
    }
}

impl Backend for SqliteBackend {
    fn columns(&self) -> Result<crate::backend::ColumnMap, DbError> {
        self.read(&mut |c| {
            let mut out = crate::backend::ColumnMap::new();
            let tables = c.query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                &[],
            )?;
            for mut t in tables {
                let table = t.text(0)?;
                let cols = c.query(
                    "SELECT name FROM pragma_table_xinfo(?1)",
                    &[Value::Text(table.clone())],
                )?;
                let set = out.entry(table).or_default();
                for mut col in cols {
                    set.insert(col.text(0)?);
                }
            }
            Ok(out)
        })
    }

    fn read<T>(&self, f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, DbError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let mut c = self.readers[i].lock().unwrap_or_else(|p| p.into_inner());
        // One snapshot for every statement of the read (a search page reads
        // in several), so a write committed meanwhile is seen whole or not.
        in_transaction(&mut c, TransactionBehavior::Deferred, f)
    }

    fn write<T>(
        &self,
        f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut c = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        in_transaction(&mut c, TransactionBehavior::Immediate, f)
    }
}

/// Runs `f` in one transaction of `c` that begins as `behavior` says and
/// commits when `f` succeeds (rolls back, when dropped, when it fails).
fn in_transaction<T>(
    c: &mut Connection,
    behavior: TransactionBehavior,
    f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, DbError>,
) -> Result<T, DbError> {
    let tx = c.transaction_with_behavior(behavior).map_err(backend)?;
    let out = f(&mut Conn(&tx))?;
    tx.commit().map_err(backend)?;
    Ok(out)
}

fn migrate(c: &mut Connection) -> Result<(), DbError> {
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    if version as usize > MIGRATIONS.len() {
        return Err(DbError::Backend(format!(
            "database schema version {version} is newer than this satchel ({}): upgrade satchel",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        tx.execute_batch(sql)
            .map_err(|e| DbError::Backend(format!("migration {}: {e}", i + 1)))?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// Statements with more parameters than this (multi-row inserts of a
/// batch, whose text varies with its length) are prepared each time, not
/// cached: each compiles to tens of KiB, and caching every batch length
/// on every connection held tens of MiB.
const CACHED_ARGS_MAX: usize = 64;

/// Runs `f` on `sql` prepared on `c`: from the connection's statement
/// cache unless it takes more than [`CACHED_ARGS_MAX`] parameters.
fn with_statement<T>(
    c: &Connection,
    sql: &str,
    args: usize,
    f: impl FnOnce(&mut rusqlite::Statement<'_>) -> Result<T, DbError>,
) -> Result<T, DbError> {
    if args > CACHED_ARGS_MAX {
        f(&mut c.prepare(sql).map_err(backend)?)
    } else {
        f(&mut *c.prepare_cached(sql).map_err(backend)?)
    }
}

/// Every row `stmt` gives for `args`.
fn query_rows(stmt: &mut rusqlite::Statement<'_>, args: &[Value]) -> Result<Vec<Row>, DbError> {
    let n = stmt.column_count();
    let mut found = stmt
        .query(rusqlite::params_from_iter(args))
        .map_err(backend)?;
    let mut out = Vec::new();
    while let Some(r) = found.next().map_err(backend)? {
        let mut vals = Vec::with_capacity(n);
        for i in 0..n {
            vals.push(match r.get_ref(i).map_err(backend)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Text(t) => Value::Text(
                    std::str::from_utf8(t)
                        .map_err(|e| DbError::Backend(format!("column {i}: {e}")))?
                        .to_string(),
                ),
                other => {
                    return Err(DbError::Backend(format!(
                        "column {i}: unexpected {:?}",
                        other.data_type()
                    )))
                }
            });
        }
        out.push(Row(vals));
    }
    Ok(out)
}

/// A connection or a write transaction (which derefs to one).
struct Conn<'a>(&'a Connection);

impl Sql for Conn<'_> {
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        with_statement(self.0, sql, args.len(), |stmt| query_rows(stmt, args))
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        with_statement(self.0, sql, args.len(), |stmt| {
            stmt.execute(rusqlite::params_from_iter(args))
                .map(|n| n as u64)
                .map_err(backend)
        })
    }

    fn lock(&mut self, _lock: Lock, _id: &str) -> Result<(), DbError> {
        Ok(())
    }

    fn lock_blobs(&mut self, _digests: &[&str]) -> Result<Option<Vec<(String, i64)>>, DbError> {
        Ok(None)
    }
}
