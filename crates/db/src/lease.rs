//! Leases on background work (GC, retention, stale-upload sweeps, key
//! rotation): one replica at a time does each, and another takes over when
//! it stops; and the status such work reports, for every replica to show.
//!
//! A lease is a row (name, holder, expiry). Taking it is one statement
//! that inserts the row, or updates it when it is the caller's already or
//! has expired, so two replicas racing for a free lease cannot both win on
//! either database (the row's uniqueness and lock decide). The holder
//! renews it while it works; a replica that died simply stops renewing.
//! Expiry is by the database's clock, so replicas' clocks need not agree. A lease is an economy, not a lock: the work it
//! covers is safe to run twice (GC holds the blob-write gate).

use crate::sql::{args, Sql};
use crate::DbError;

/// Takes or renews lease `name` for `holder` until `ttl_ms` from now, if
/// it is free, expired, or `holder`'s already; whether `holder` holds it.
pub(crate) fn take(
    c: &mut dyn Sql,
    name: &str,
    holder: &str,
    ttl_ms: i64,
) -> Result<bool, DbError> {
    // The database's clock: replicas' own clocks may disagree.
    let now = c.now_ms()?;
    c.execute(
        "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
         WHERE leases.holder = excluded.holder OR leases.expires_at < ?4",
        args![name, holder, now.saturating_add(ttl_ms), now],
    )?;
    Ok(
        c.query_one("SELECT holder FROM leases WHERE name = ?1", args![name])?
            .text(0)?
            == holder,
    )
}

/// Gives up lease `name` if `holder` holds it (a replica shutting down
/// cleanly), so another need not wait for it to expire.
pub(crate) fn release(c: &mut dyn Sql, name: &str, holder: &str) -> Result<(), DbError> {
    c.execute(
        "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
        args![name, holder],
    )?;
    Ok(())
}

/// Records what background work `name` reports now (`status`, JSON).
pub(crate) fn set_status(c: &mut dyn Sql, name: &str, status: &str) -> Result<(), DbError> {
    let now = c.now_ms()?;
    c.execute(
        "INSERT INTO background_status (name, status, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
        args![name, status, now],
    )?;
    Ok(())
}

/// What background work `name` last reported, and how many milliseconds
/// ago (by the database's clock).
pub(crate) fn status(c: &mut dyn Sql, name: &str) -> Result<Option<(String, i64)>, DbError> {
    let now = c.now_ms()?;
    match c.query_opt(
        "SELECT status, updated_at FROM background_status WHERE name = ?1",
        args![name],
    )? {
        Some(mut r) => Ok(Some((r.text(0)?, now.saturating_sub(r.int(1)?)))),
        None => Ok(None),
    }
}
