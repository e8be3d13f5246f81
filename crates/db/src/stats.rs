//! Storage figures from metadata: artifacts by state, logical bytes and
//! distinct content per pipeline. Each is one aggregate over the whole
//! table, so callers cache the result (the server keeps it for a minute).

use std::collections::BTreeMap;

use satchel_model::access::PipelineStorage;

use crate::sql::{args, Sql};
use crate::DbError;

/// Every pipeline's figures (those without artifacts too), by key, and
/// the bytes of the distinct contents known to be stored.
pub(crate) fn storage(c: &mut dyn Sql) -> Result<(Vec<PipelineStorage>, u64), DbError> {
    let mut by: BTreeMap<String, PipelineStorage> = BTreeMap::new();
    for mut row in c.query("SELECT key FROM pipelines", args![])? {
        let key = row.text(0)?;
        by.insert(
            key.clone(),
            PipelineStorage {
                pipeline: key,
                ..PipelineStorage::default()
            },
        );
    }
    for mut row in c.query(
        "SELECT p.key, a.state, COUNT(*),
                CAST(COALESCE(SUM(a.total_size), 0) AS BIGINT)
         FROM artifacts a JOIN runs r ON r.id = a.run_id
         JOIN pipelines p ON p.id = r.pipeline_id
         GROUP BY p.key, a.state",
        args![],
    )? {
        let (key, state, n, size) = (row.text(0)?, row.text(1)?, row.uint(2)?, row.uint(3)?);
        let p = by.entry(key.clone()).or_insert_with(|| PipelineStorage {
            pipeline: key,
            ..PipelineStorage::default()
        });
        if state == "finished" {
            p.logical_bytes = size;
        }
        p.artifacts.insert(state, n);
    }
    for mut row in c.query(
        "SELECT k, CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM (
             SELECT DISTINCT p.key AS k, f.sha256, f.size
             FROM files f JOIN artifacts a ON a.id = f.artifact_id
             JOIN uploads u ON u.id = f.upload_id AND u.state = 'finished'
             JOIN runs r ON r.id = a.run_id
             JOIN pipelines p ON p.id = r.pipeline_id
             WHERE a.state = 'finished'
         ) d GROUP BY k",
        args![],
    )? {
        let (key, size) = (row.text(0)?, row.uint(1)?);
        if let Some(p) = by.get_mut(&key) {
            p.content_bytes = size;
        }
    }
    let stored = c
        .query_one(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs",
            args![],
        )?
        .uint(0)?;
    Ok((by.into_values().collect(), stored))
}
