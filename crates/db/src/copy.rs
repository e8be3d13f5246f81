//! Copying a whole metadata database into another one (`satchel admin
//! migrate`): an embedded SQLite into PostgreSQL, for instance.
//!
//! [`TABLES`] names every table and column satchel keeps, in an order that
//! satisfies the foreign keys. Before anything is copied, both databases'
//! actual columns are checked against it, so a column added by a later
//! migration and not listed here stops the copy instead of being lost.
//! The destination must be empty. Rows move in pages (keyset order), one
//! write transaction per page; a copy that fails half way leaves a
//! destination that is not empty, and a new attempt refuses it: drop and
//! recreate the database, then run it again.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::{Backend, Store};
use crate::sql::{Row, Value};
use crate::DbError;

/// One table: its name, the columns copied, and its key (the keyset order).
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    key: &'static [&'static str],
}

/// Every table satchel keeps, parents first. `runs.triggered_from` (a run
/// of the same table) is copied in a second pass.
const TABLES: &[Table] = &[
    Table {
        name: "organizations",
        columns: &["id", "key", "created_at"],
        key: &["id"],
    },
    Table {
        name: "clusters",
        columns: &["id", "organization_id", "key", "created_at"],
        key: &["id"],
    },
    Table {
        name: "pipelines",
        columns: &["id", "cluster_id", "key", "created_at"],
        key: &["id"],
    },
    Table {
        name: "tokens",
        columns: &[
            "id",
            "name",
            "hash",
            "scopes",
            "cluster_id",
            "pipeline",
            "run",
            "job",
            "attempt",
            "created_at",
            "expires_at",
            "revoked_at",
        ],
        key: &["id"],
    },
    Table {
        name: "access_rules",
        columns: &[
            "id",
            "kind",
            "organization_id",
            "source_pipeline",
            "source_cluster_id",
            "target_pipeline",
            "target_cluster_id",
            "condition",
            "created_at",
        ],
        key: &["id"],
    },
    Table {
        name: "audit_log",
        columns: &[
            "id",
            "at",
            "token_id",
            "token_name",
            "org",
            "action",
            "resource",
            "allowed",
            "status",
            "reason",
            "client",
            "user_agent",
        ],
        key: &["id"],
    },
    Table {
        name: "server_secrets",
        columns: &["name", "value", "created_at"],
        key: &["name"],
    },
    Table {
        name: "runs",
        columns: &[
            "id",
            "pipeline_id",
            "number",
            "branch",
            "commit_sha",
            "state",
            "created_at",
            "sources",
            "finished_at",
            "build_id",
            "failed_jobs",
        ],
        key: &["id"],
    },
    Table {
        name: "jobs",
        columns: &[
            "id",
            "run_id",
            "stage",
            "key",
            "attempt",
            "created_at",
            "superseded",
        ],
        key: &["id"],
    },
    Table {
        name: "artifacts",
        columns: &[
            "id",
            "run_id",
            "job_id",
            "name",
            "is_default",
            "kind",
            "state",
            "created_at",
            "finished_at",
            "meta",
            "expires_at",
            "file_count",
            "total_size",
        ],
        key: &["id"],
    },
    Table {
        name: "uploads",
        columns: &[
            "id",
            "artifact_id",
            "step",
            "state",
            "created_at",
            "finished_at",
        ],
        key: &["id"],
    },
    Table {
        name: "upload_owed",
        columns: &["upload_id", "sha256", "whole"],
        key: &["upload_id", "sha256"],
    },
    Table {
        name: "upload_replaces",
        columns: &["upload_id", "artifact_id"],
        key: &["upload_id", "artifact_id"],
    },
    Table {
        name: "files",
        columns: &[
            "id",
            "artifact_id",
            "run_id",
            "upload_id",
            "path",
            "size",
            "sha256",
            "mode",
            "content_type",
            "source_path",
            "glob",
            "created_at",
        ],
        key: &["id"],
    },
    Table {
        name: "blobs",
        columns: &["sha256", "size", "created_at"],
        key: &["sha256"],
    },
    // `seq` is the destination's own (insertion order): packages go in the
    // source's `seq` order, so their order survives.
    Table {
        name: "packages",
        columns: &[
            "id",
            "repository",
            "name",
            "version",
            "kind",
            "meta",
            "origin",
            "created_at",
        ],
        key: &["seq"],
    },
    Table {
        name: "package_repositories",
        columns: &["repository", "organization_id", "created_at"],
        key: &["repository"],
    },
    Table {
        name: "package_files",
        columns: &[
            "package_id",
            "path",
            "size",
            "sha256",
            "mode",
            "content_type",
        ],
        key: &["package_id", "path"],
    },
];

/// Columns that are not data: derived (`packages.seq`, and `files.file_name`,
/// which the database computes from the path), copied in a second pass
/// (`runs.triggered_from`).
const SPECIAL: &[(&str, &str)] = &[
    ("packages", "seq"),
    ("runs", "triggered_from"),
    ("files", "file_name"),
];
/// Tables that are not data: bookkeeping of one database, of writes in
/// flight (GitHub Actions uploads not yet finalized among them: their
/// clients start again), of which replica does background work, or of where
/// one store keeps packs (a store found without it lists its packs).
const NOT_COPIED: &[&str] = &[
    "satchel_schema",
    "blob_writes",
    "leases",
    "background_status",
    "gha_uploads",
    "gha_blocks",
    "gha_views",
    "pack_entries",
];
/// Rows per page.
const PAGE: usize = 2000;

/// What a copy moved: rows per table.
pub type CopyReport = Vec<(String, u64)>;

/// Checks that `found` (a database's tables and columns) holds exactly
/// what [`TABLES`] copies, apart from [`SPECIAL`] and [`NOT_COPIED`].
fn check_schema(what: &str, found: &BTreeMap<String, BTreeSet<String>>) -> Result<(), DbError> {
    let mut problems = Vec::new();
    for (table, cols) in found {
        if NOT_COPIED.contains(&table.as_str()) {
            continue;
        }
        let Some(t) = TABLES.iter().find(|t| t.name == table) else {
            problems.push(format!("table {table} is not known"));
            continue;
        };
        for c in cols {
            let special = SPECIAL.contains(&(t.name, c.as_str()));
            if !special && !t.columns.contains(&c.as_str()) {
                problems.push(format!("column {table}.{c} is not known"));
            }
        }
        for c in t.columns {
            if !cols.contains(*c) {
                problems.push(format!("column {table}.{c} is missing"));
            }
        }
    }
    for t in TABLES {
        if !found.contains_key(t.name) {
            problems.push(format!("table {} is missing", t.name));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DbError::Invalid(format!(
            "the {what} database's schema is not the one this satchel copies ({}); use the satchel version that wrote it",
            problems.join("; ")
        )))
    }
}

fn page_query(t: &Table, after: bool) -> String {
    let cols = t.columns.join(", ");
    let key = t.key.join(", ");
    let marks = crate::sql::marks(t.key.len(), 1);
    let key_cols = t
        .key
        .iter()
        .filter(|k| !t.columns.contains(k))
        .map(|k| format!(", {k}"))
        .collect::<String>();
    let cond = if after {
        format!(" WHERE ({key}) > ({marks})")
    } else {
        String::new()
    };
    format!(
        "SELECT {cols}{key_cols} FROM {} {cond} ORDER BY {key} LIMIT {PAGE}",
        t.name
    )
}

/// Copies every row of `from` into `to`, which must be empty; calls
/// `progress(table, rows so far)` after each page.
pub async fn copy_all<A: Backend, B: Backend>(
    from: &Store<A>,
    to: &Store<B>,
    progress: impl Fn(&str, u64) + Send + 'static,
) -> Result<CopyReport, DbError> {
    let (src, dst) = (from.shared_backend(), to.shared_backend());
    tokio::task::spawn_blocking(move || copy_blocking(&*src, &*dst, &progress))
        .await
        .map_err(|e| DbError::Backend(format!("database task failed: {e}")))?
}

fn copy_blocking<A: Backend, B: Backend>(
    src: &A,
    dst: &B,
    progress: &dyn Fn(&str, u64),
) -> Result<CopyReport, DbError> {
    check_schema("source", &src.columns()?)?;
    check_schema("destination", &dst.columns()?)?;
    for t in TABLES {
        let any = dst.read(&mut |c| c.exists(&format!("SELECT 1 FROM {} LIMIT 1", t.name), &[]))?;
        if any {
            return Err(DbError::Conflict(format!(
                "the destination database is not empty (table {} has rows): migrate into a new, empty database",
                t.name
            )));
        }
    }
    let mut report = Vec::new();
    for t in TABLES {
        let mut after: Option<Vec<Value>> = None;
        let mut n = 0u64;
        loop {
            let sql = page_query(t, after.is_some());
            let args = after.clone().unwrap_or_default();
            let rows: Vec<Row> = src.read(&mut |c| c.query(&sql, &args))?;
            if rows.is_empty() {
                break;
            }
            let last = rows.last().expect("a page with rows");
            after = Some(
                t.key
                    .iter()
                    .map(|k| {
                        let i = t
                            .columns
                            .iter()
                            .position(|c| c == k)
                            .unwrap_or(t.columns.len());
                        last.0[i].clone()
                    })
                    .collect(),
            );
            let insert = format!(
                "INSERT INTO {} ({}) VALUES ({})",
                t.name,
                t.columns.join(", "),
                crate::sql::marks(t.columns.len(), 1)
            );
            let count = rows.len();
            dst.write(&mut |c| {
                for r in &rows {
                    c.execute(&insert, &r.0[..t.columns.len()])?;
                }
                Ok(())
            })?;
            n += count as u64;
            progress(t.name, n);
            if count < PAGE {
                break;
            }
        }
        report.push((t.name.to_string(), n));
    }
    // Second pass: which run triggered which.
    let links: Vec<Row> = src.read(&mut |c| {
        c.query(
            "SELECT id, triggered_from FROM runs WHERE triggered_from IS NOT NULL",
            &[],
        )
    })?;
    for chunk in links.chunks(PAGE) {
        dst.write(&mut |c| {
            for r in chunk {
                c.execute("UPDATE runs SET triggered_from = ?2 WHERE id = ?1", &r.0)?;
            }
            Ok(())
        })?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed() -> BTreeMap<String, BTreeSet<String>> {
        TABLES
            .iter()
            .map(|t| {
                let mut cols: BTreeSet<String> = t.columns.iter().map(|c| c.to_string()).collect();
                cols.extend(
                    SPECIAL
                        .iter()
                        .filter(|(table, _)| *table == t.name)
                        .map(|(_, c)| c.to_string()),
                );
                (t.name.to_string(), cols)
            })
            .collect()
    }

    #[test]
    fn the_sqlite_schema_is_what_the_copy_knows() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::SqliteStore::open(dir.path().join("m.db")).unwrap();
        check_schema("sqlite", &db.backend().columns().unwrap()).unwrap();
    }

    #[test]
    fn a_column_the_copy_does_not_know_stops_it() {
        let mut found = listed();
        check_schema("test", &found).unwrap();
        found
            .get_mut("files")
            .unwrap()
            .insert("checksum_md5".into());
        let e = check_schema("test", &found).unwrap_err().to_string();
        assert!(e.contains("files.checksum_md5 is not known"), "{e}");
        let mut found = listed();
        found.remove("blobs");
        let e = check_schema("test", &found).unwrap_err().to_string();
        assert!(e.contains("table blobs is missing"), "{e}");
    }
}
