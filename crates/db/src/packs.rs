//! Where packed blobs are: the rows behind the server's
//! `satchel_store::PackCatalog` where replicas share a database, so that
//! one replica finds a pack another wrote with one indexed lookup instead
//! of listing every pack of the bucket. One row per blob and pack that
//! holds it (a blob sent again may be in several), newest first; a
//! deleted pack's rows go, and the copies its blobs have elsewhere keep
//! theirs.

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
    let now = c.now_ms()?;
    let mut sorted: Vec<&str> = digests.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    for chunk in sorted.chunks(BATCH_ROWS) {
        let mut a = vec![Value::from(key), Value::from(size as i64), Value::from(now)];
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("(?{}, ?1, ?2, ?3)", i + 4))
            .collect();
        a.extend(chunk.iter().map(|d| Value::from(*d)));
        c.execute(
            &format!(
                "INSERT INTO pack_entries (sha256, pack, pack_size, recorded_at) VALUES {}
                 ON CONFLICT (sha256, pack) DO UPDATE
                 SET pack_size = excluded.pack_size, recorded_at = excluded.recorded_at",
                rows.join(", ")
            ),
            &a,
        )?;
    }
    Ok(())
}

/// The packs (key and size) recorded as holding `digest` (hex), newest
/// first, at most `limit`.
pub(crate) fn locate(
    c: &mut dyn Sql,
    digest: &str,
    limit: usize,
) -> Result<Vec<(String, u64)>, DbError> {
    c.query(
        &format!(
            "SELECT pack, pack_size FROM pack_entries WHERE sha256 = ?1
             ORDER BY recorded_at DESC, pack LIMIT {limit}"
        ),
        args![digest],
    )?
    .into_iter()
    .map(|mut r| Ok((r.text(0)?, r.uint(1)?)))
    .collect()
}

/// Forgets what pack `key` holds (it was deleted).
pub(crate) fn forget(c: &mut dyn Sql, key: &str) -> Result<(), DbError> {
    c.execute("DELETE FROM pack_entries WHERE pack = ?1", args![key])?;
    Ok(())
}
