//! Where packed blobs are: the rows behind the server's
//! `satchel_store::PackCatalog` where replicas share a database, so that
//! one replica finds a pack another wrote with one indexed lookup instead
//! of listing every pack of the bucket. One row per blob, pointing at the
//! newest pack recorded as holding it; a stale row costs the store a
//! lookup, never content (it checks every location against the pack's own
//! index).

use crate::rules::BATCH_ROWS;
use crate::sql::{args, Sql, Value};
use crate::DbError;

/// Records that pack `key` (of `size` bytes) holds `digests` (hex).
pub(crate) fn record(
    c: &mut dyn Sql,
    key: &str,
    size: u64,
    digests: &[String],
) -> Result<(), DbError> {
    let mut sorted: Vec<&str> = digests.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    for chunk in sorted.chunks(BATCH_ROWS) {
        let mut a = vec![Value::from(key), Value::from(size as i64)];
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("(?{}, ?1, ?2)", i + 3))
            .collect();
        a.extend(chunk.iter().map(|d| Value::from(*d)));
        c.execute(
            &format!(
                "INSERT INTO pack_entries (sha256, pack, pack_size) VALUES {}
                 ON CONFLICT (sha256) DO UPDATE SET pack = excluded.pack, pack_size = excluded.pack_size",
                rows.join(", ")
            ),
            &a,
        )?;
    }
    Ok(())
}

/// The pack (key and size) recorded as holding `digest` (hex).
pub(crate) fn locate(c: &mut dyn Sql, digest: &str) -> Result<Option<(String, u64)>, DbError> {
    c.query_opt(
        "SELECT pack, pack_size FROM pack_entries WHERE sha256 = ?1",
        args![digest],
    )?
    .map(|mut r| Ok((r.text(0)?, r.uint(1)?)))
    .transpose()
}

/// Forgets what pack `key` holds (it was deleted).
pub(crate) fn forget(c: &mut dyn Sql, key: &str) -> Result<(), DbError> {
    c.execute("DELETE FROM pack_entries WHERE pack = ?1", args![key])?;
    Ok(())
}
