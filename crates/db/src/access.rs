//! Access control's rows, once, for both databases: organizations,
//! clusters, where pipelines live, tokens (only their hashes), artifact-read
//! rules and the audit log.
//!
//! Uniqueness comes from the databases' unique indexes (an organization's
//! key, a cluster's key in its organization, a pipeline's key on the
//! server, a token's hash): creations insert with `ON CONFLICT DO NOTHING`
//! and read back, so two replicas creating one name get one row, and the
//! loser a clear conflict where the caller asked for a new one.

use satchel_model::access::{
    AuditEntry, AuditPage, AuditQuery, ClusterInfo, OrgInfo, PipelineInfo, RuleEnd, RuleInfo,
    Scope, TokenInfo,
};
use satchel_model::id::{new_id, now_millis, rfc3339_millis};

use crate::rules::{ensure, to_i64, value_rows, BATCH_ROWS};
use crate::sql::{args, Row, Sql, Value};
use crate::{DbError, NewRuleRow, TokenRow};

/// The organization and cluster a key without one means.
pub const DEFAULT: &str = "default";

fn org_id(c: &mut dyn Sql, org: &str) -> Result<String, DbError> {
    match c.query_opt("SELECT id FROM organizations WHERE key = ?1", args![org])? {
        Some(mut r) => r.text(0),
        None => Err(DbError::NotFound(format!(
            "organization {org:?} not found (create it with `satchel admin org create {org}`)"
        ))),
    }
}

fn cluster_id(c: &mut dyn Sql, org: &str, cluster: &str) -> Result<String, DbError> {
    if org == DEFAULT && cluster == DEFAULT {
        // Always there (migrations make them; this also covers a database
        // created before they did).
        return default_cluster(c);
    }
    let org_id = org_id(c, org)?;
    match c.query_opt(
        "SELECT id FROM clusters WHERE organization_id = ?1 AND key = ?2",
        args![org_id, cluster],
    )? {
        Some(mut r) => r.text(0),
        None => Err(DbError::NotFound(format!(
            "cluster {cluster:?} not found in organization {org:?} (create it with `satchel admin cluster create {cluster} --org {org}`)"
        ))),
    }
}

fn default_cluster(c: &mut dyn Sql) -> Result<String, DbError> {
    let org = ensure(
        c,
        "SELECT id FROM organizations WHERE key = ?1",
        "INSERT INTO organizations (id, key, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        args![DEFAULT],
    )?;
    ensure(
        c,
        "SELECT id FROM clusters WHERE organization_id = ?1 AND key = ?2",
        "INSERT INTO clusters (id, organization_id, key, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        args![org, DEFAULT],
    )
}

fn time(ms: i64) -> String {
    rfc3339_millis(ms)
}

/// Creates organization `key`; a conflict if it exists.
pub(crate) fn create_org(c: &mut dyn Sql, key: &str) -> Result<OrgInfo, DbError> {
    let now = now_millis();
    let n = c.execute(
        "INSERT INTO organizations (id, key, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        args![new_id(), key, now],
    )?;
    if n == 0 {
        return Err(DbError::Conflict(format!(
            "organization {key:?} already exists"
        )));
    }
    Ok(OrgInfo {
        name: key.to_string(),
        created_at: time(now),
    })
}

pub(crate) fn list_orgs(c: &mut dyn Sql) -> Result<Vec<OrgInfo>, DbError> {
    default_cluster(c)?;
    c.query(
        "SELECT key, created_at FROM organizations ORDER BY key",
        &[],
    )?
    .into_iter()
    .map(|mut r| {
        Ok(OrgInfo {
            name: r.text(0)?,
            created_at: time(r.int(1)?),
        })
    })
    .collect()
}

/// Creates cluster `key` in `org`; a conflict if it exists.
pub(crate) fn create_cluster(
    c: &mut dyn Sql,
    org: &str,
    key: &str,
) -> Result<ClusterInfo, DbError> {
    if org == DEFAULT {
        default_cluster(c)?;
    }
    let org_id = org_id(c, org)?;
    let now = now_millis();
    let n = c.execute(
        "INSERT INTO clusters (id, organization_id, key, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        args![new_id(), org_id, key, now],
    )?;
    if n == 0 {
        return Err(DbError::Conflict(format!(
            "cluster {key:?} already exists in organization {org:?}"
        )));
    }
    Ok(ClusterInfo {
        org: org.to_string(),
        name: key.to_string(),
        created_at: time(now),
    })
}

pub(crate) fn list_clusters(c: &mut dyn Sql) -> Result<Vec<ClusterInfo>, DbError> {
    default_cluster(c)?;
    c.query(
        "SELECT o.key, cl.key, cl.created_at FROM clusters cl
         JOIN organizations o ON o.id = cl.organization_id ORDER BY o.key, cl.key",
        &[],
    )?
    .into_iter()
    .map(|mut r| {
        Ok(ClusterInfo {
            org: r.text(0)?,
            name: r.text(1)?,
            created_at: time(r.int(2)?),
        })
    })
    .collect()
}

const PIPELINE_SELECT: &str = "
SELECT p.key, o.key, cl.key, p.created_at FROM pipelines p
JOIN clusters cl ON cl.id = p.cluster_id
JOIN organizations o ON o.id = cl.organization_id";

fn pipeline_row(mut r: Row) -> Result<PipelineInfo, DbError> {
    Ok(PipelineInfo {
        name: r.text(0)?,
        org: r.text(1)?,
        cluster: r.text(2)?,
        created_at: time(r.int(3)?),
    })
}

/// Where pipeline `key` lives, if it exists.
pub(crate) fn pipeline_home(c: &mut dyn Sql, key: &str) -> Result<Option<PipelineInfo>, DbError> {
    c.query_opt(&format!("{PIPELINE_SELECT} WHERE p.key = ?1"), args![key])?
        .map(pipeline_row)
        .transpose()
}

/// Pipeline `key` where it lives, or created in `org`/`cluster`; `created`
/// says which.
pub(crate) fn ensure_pipeline_in(
    c: &mut dyn Sql,
    key: &str,
    org: &str,
    cluster: &str,
) -> Result<(PipelineInfo, bool), DbError> {
    if let Some(p) = pipeline_home(c, key)? {
        return Ok((p, false));
    }
    let cluster_id = cluster_id(c, org, cluster)?;
    let n = c.execute(
        "INSERT INTO pipelines (id, cluster_id, key, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        args![new_id(), cluster_id, key, now_millis()],
    )?;
    let p = pipeline_home(c, key)?
        .ok_or_else(|| DbError::Backend(format!("pipeline {key:?} vanished after insert")))?;
    Ok((p, n > 0))
}

/// Creates pipeline `key` in `org`/`cluster`; a conflict if it exists
/// anywhere.
pub(crate) fn create_pipeline(
    c: &mut dyn Sql,
    key: &str,
    org: &str,
    cluster: &str,
) -> Result<PipelineInfo, DbError> {
    let (p, created) = ensure_pipeline_in(c, key, org, cluster)?;
    if !created {
        // Where it lives is for its own organization to know only.
        let place = if p.org == org {
            format!(
                ", in cluster {:?} (move it with `satchel admin pipeline move {key} --cluster C`)",
                p.cluster
            )
        } else {
            " (pipeline keys are unique on the server: choose another)".to_string()
        };
        return Err(DbError::Conflict(format!(
            "pipeline {key:?} already exists{place}"
        )));
    }
    Ok(p)
}

pub(crate) fn list_pipelines(
    c: &mut dyn Sql,
    org: Option<&str>,
) -> Result<Vec<PipelineInfo>, DbError> {
    let rows = match org {
        Some(o) => c.query(
            &format!("{PIPELINE_SELECT} WHERE o.key = ?1 ORDER BY p.key"),
            args![o],
        )?,
        None => c.query(&format!("{PIPELINE_SELECT} ORDER BY p.key"), &[])?,
    };
    rows.into_iter().map(pipeline_row).collect()
}

/// Moves pipeline `key` (with its runs and artifacts) to `org`/`cluster`.
pub(crate) fn move_pipeline(
    c: &mut dyn Sql,
    key: &str,
    org: &str,
    cluster: &str,
) -> Result<PipelineInfo, DbError> {
    let cluster_id = cluster_id(c, org, cluster)?;
    let n = c.execute(
        "UPDATE pipelines SET cluster_id = ?1 WHERE key = ?2",
        args![cluster_id, key],
    )?;
    if n == 0 {
        return Err(DbError::NotFound(format!("pipeline {key:?} not found")));
    }
    pipeline_home(c, key)?
        .ok_or_else(|| DbError::Backend(format!("pipeline {key:?} vanished after move")))
}

const TOKEN_SELECT: &str = "
SELECT t.id, t.name, t.scopes, o.key, cl.key, t.pipeline, t.run, t.job, t.attempt,
       t.created_at, t.expires_at, t.revoked_at
FROM tokens t
JOIN clusters cl ON cl.id = t.cluster_id
JOIN organizations o ON o.id = cl.organization_id";

fn token_row(mut r: Row) -> Result<TokenInfo, DbError> {
    let scopes = r.text(2)?;
    let expires = r.opt_int(10)?;
    Ok(TokenInfo {
        id: r.text(0)?,
        name: r.text(1)?,
        scopes: Scope::parse_list(&scopes).map_err(DbError::Backend)?,
        org: r.text(3)?,
        cluster: r.text(4)?,
        pipeline: r.opt_text(5)?,
        run: r.opt_int(6)?.map(|n| n as u64),
        job: r.opt_text(7)?,
        attempt: r.opt_int(8)?.map(|n| n as u32),
        created_at: time(r.int(9)?),
        expires_at: expires.map(time),
        expires_at_ms: expires,
        revoked_at: r.opt_int(11)?.map(time),
    })
}

/// Stores a new token (its hash only).
pub(crate) fn create_token(c: &mut dyn Sql, t: &TokenRow) -> Result<TokenInfo, DbError> {
    let s = &t.spec;
    let cluster_id = cluster_id(
        c,
        s.org.as_deref().unwrap_or(DEFAULT),
        s.cluster.as_deref().unwrap_or(DEFAULT),
    )?;
    let run = s.run.map(|r| to_i64(r, "run number")).transpose()?;
    c.execute(
        "INSERT INTO tokens (id, name, hash, scopes, cluster_id, pipeline, run, job, attempt,
                             created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        args![
            &t.id,
            &s.name,
            &t.hash,
            Scope::join(&s.scopes),
            cluster_id,
            &s.pipeline,
            run,
            &s.job,
            s.attempt.map(i64::from),
            now_millis(),
            t.expires_at_ms,
        ],
    )?;
    token_by_id(c, &t.id)?.ok_or_else(|| DbError::Backend("token vanished after insert".into()))
}

/// The token whose secret hashes to `hash`, live or not.
pub(crate) fn token_by_hash(c: &mut dyn Sql, hash: &str) -> Result<Option<TokenInfo>, DbError> {
    c.query_opt(&format!("{TOKEN_SELECT} WHERE t.hash = ?1"), args![hash])?
        .map(token_row)
        .transpose()
}

pub(crate) fn token_by_id(c: &mut dyn Sql, id: &str) -> Result<Option<TokenInfo>, DbError> {
    c.query_opt(&format!("{TOKEN_SELECT} WHERE t.id = ?1"), args![id])?
        .map(token_row)
        .transpose()
}

pub(crate) fn list_tokens(c: &mut dyn Sql, org: Option<&str>) -> Result<Vec<TokenInfo>, DbError> {
    let rows = match org {
        Some(o) => c.query(
            &format!("{TOKEN_SELECT} WHERE o.key = ?1 ORDER BY t.created_at, t.id"),
            args![o],
        )?,
        None => c.query(&format!("{TOKEN_SELECT} ORDER BY t.created_at, t.id"), &[])?,
    };
    rows.into_iter().map(token_row).collect()
}

/// Revokes token `id` (again is fine: the first time stays).
pub(crate) fn revoke_token(c: &mut dyn Sql, id: &str) -> Result<TokenInfo, DbError> {
    c.execute(
        "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
        args![now_millis(), id],
    )?;
    token_by_id(c, id)?.ok_or_else(|| DbError::NotFound(format!("token {id:?} not found")))
}

const RULE_SELECT: &str = "
SELECT r.id, r.kind, o.key, r.source_pipeline, sc.key, r.target_pipeline, tc.key, r.condition,
       r.created_at
FROM access_rules r
JOIN organizations o ON o.id = r.organization_id
LEFT JOIN clusters sc ON sc.id = r.source_cluster_id
LEFT JOIN clusters tc ON tc.id = r.target_cluster_id";

fn rule_end(pipeline: Option<String>, cluster: Option<String>) -> Result<RuleEnd, DbError> {
    match (pipeline, cluster) {
        (Some(p), None) => Ok(RuleEnd::Pipeline(p)),
        (None, Some(c)) => Ok(RuleEnd::Cluster(c)),
        _ => Err(DbError::Backend(
            "a rule end names neither or both of a pipeline and a cluster".into(),
        )),
    }
}

fn rule_row(mut r: Row) -> Result<RuleInfo, DbError> {
    Ok(RuleInfo {
        id: r.text(0)?,
        kind: r.text(1)?,
        org: r.text(2)?,
        source: rule_end(r.opt_text(3)?, r.opt_text(4)?)?,
        target: rule_end(r.opt_text(5)?, r.opt_text(6)?)?,
        condition: r.opt_text(7)?,
        created_at: time(r.int(8)?),
    })
}

/// The pipeline and cluster columns of one rule end.
fn end_columns(
    c: &mut dyn Sql,
    org: &str,
    end: &RuleEnd,
) -> Result<(Option<String>, Option<String>), DbError> {
    Ok(match end {
        RuleEnd::Pipeline(p) => (Some(p.clone()), None),
        RuleEnd::Cluster(cl) => (None, Some(cluster_id(c, org, cl)?)),
    })
}

pub(crate) fn create_rule(c: &mut dyn Sql, r: &NewRuleRow) -> Result<RuleInfo, DbError> {
    let org = r.org.as_str();
    let org_id = if org == DEFAULT {
        default_cluster(c)?;
        org_id(c, org)?
    } else {
        org_id(c, org)?
    };
    let (sp, sc) = end_columns(c, org, &r.source)?;
    let (tp, tc) = end_columns(c, org, &r.target)?;
    let id = new_id();
    c.execute(
        "INSERT INTO access_rules (id, kind, organization_id, source_pipeline, source_cluster_id,
                                   target_pipeline, target_cluster_id, condition, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        args![
            &id,
            &r.kind,
            org_id,
            sp,
            sc,
            tp,
            tc,
            &r.condition,
            now_millis()
        ],
    )?;
    c.query_one(&format!("{RULE_SELECT} WHERE r.id = ?1"), args![&id])
        .and_then(rule_row)
}

pub(crate) fn list_rules(c: &mut dyn Sql, org: Option<&str>) -> Result<Vec<RuleInfo>, DbError> {
    let rows = match org {
        Some(o) => c.query(
            &format!("{RULE_SELECT} WHERE o.key = ?1 ORDER BY r.created_at, r.id"),
            args![o],
        )?,
        None => c.query(&format!("{RULE_SELECT} ORDER BY r.created_at, r.id"), &[])?,
    };
    rows.into_iter().map(rule_row).collect()
}

pub(crate) fn delete_rule(c: &mut dyn Sql, id: &str) -> Result<RuleInfo, DbError> {
    let rule = c
        .query_opt(&format!("{RULE_SELECT} WHERE r.id = ?1"), args![id])?
        .map(rule_row)
        .transpose()?
        .ok_or_else(|| DbError::NotFound(format!("rule {id:?} not found")))?;
    c.execute("DELETE FROM access_rules WHERE id = ?1", args![id])?;
    Ok(rule)
}

const AUDIT_WIDTH: usize = 12;

/// Appends audit entries, [`BATCH_ROWS`] per statement.
pub(crate) fn append_audit(c: &mut dyn Sql, entries: &[AuditEntry]) -> Result<(), DbError> {
    for chunk in entries.chunks(BATCH_ROWS) {
        let mut a = Vec::with_capacity(chunk.len() * AUDIT_WIDTH);
        for e in chunk {
            a.extend([
                Value::from(&e.id),
                Value::Int(e.at_ms),
                Value::from(&e.token_id),
                Value::from(&e.token_name),
                Value::from(&e.org),
                Value::from(&e.action),
                Value::from(&e.resource),
                Value::Int(i64::from(e.allowed)),
                Value::Int(i64::from(e.status)),
                Value::from(&e.reason),
                Value::from(&e.client),
                Value::from(&e.user_agent),
            ]);
        }
        c.execute(
            &format!(
                "INSERT INTO audit_log (id, at, token_id, token_name, org, action, resource,
                                        allowed, status, reason, client, user_agent)
                 VALUES {} ON CONFLICT DO NOTHING",
                value_rows(chunk.len(), AUDIT_WIDTH, 1)
            ),
            &a,
        )?;
    }
    Ok(())
}

/// Most entries in one page of the audit log.
pub const AUDIT_PAGE_MAX: usize = 1000;

/// A page of entries matching `q`, newest first.
pub(crate) fn list_audit(c: &mut dyn Sql, q: &AuditQuery) -> Result<AuditPage, DbError> {
    let limit = q.limit.unwrap_or(100).clamp(1, AUDIT_PAGE_MAX);
    let mut conds = Vec::new();
    let mut a: Vec<Value> = Vec::new();
    let mut param = |conds: &mut Vec<String>, sql: &str, v: Value| {
        a.push(v);
        conds.push(sql.replace('?', &format!("?{}", a.len())));
    };
    if let Some(s) = q.since_ms {
        param(&mut conds, "at >= ?", Value::Int(s));
    }
    if let Some(t) = &q.token {
        param(&mut conds, "token_id = ?", Value::from(t));
    }
    if let Some(o) = &q.org {
        param(&mut conds, "org = ?", Value::from(o));
    }
    if let Some(cur) = &q.cursor {
        param(&mut conds, "id < ?", Value::from(cur));
    }
    if q.denied {
        conds.push("allowed = 0".into());
    }
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    a.push(Value::Int((limit + 1) as i64));
    let rows = c.query(
        &format!(
            "SELECT id, at, token_id, token_name, org, action, resource, allowed, status, reason,
                    client, user_agent
             FROM audit_log {filter} ORDER BY id DESC LIMIT ?{}",
            a.len()
        ),
        &a,
    )?;
    let mut entries = rows
        .into_iter()
        .map(|mut r| {
            let at_ms = r.int(1)?;
            Ok(AuditEntry {
                id: r.text(0)?,
                at: time(at_ms),
                at_ms,
                token_id: r.opt_text(2)?,
                token_name: r.opt_text(3)?,
                org: r.opt_text(4)?,
                action: r.text(5)?,
                resource: r.text(6)?,
                allowed: r.boolean(7)?,
                status: u16::try_from(r.int(8)?).unwrap_or(0),
                reason: r.opt_text(9)?,
                client: r.opt_text(10)?,
                user_agent: r.opt_text(11)?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    let next_cursor = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(AuditPage {
        entries,
        next_cursor,
    })
}

/// Deletes audit entries older than `before_ms`.
pub(crate) fn prune_audit(c: &mut dyn Sql, before_ms: i64) -> Result<u64, DbError> {
    c.execute("DELETE FROM audit_log WHERE at < ?1", args![before_ms])
}

/// The shared secret `name`: the one stored, or `candidate`, stored now
/// (the first writer wins; everyone reads the winner's).
pub(crate) fn shared_secret(
    c: &mut dyn Sql,
    name: &str,
    candidate: &str,
) -> Result<String, DbError> {
    c.execute(
        "INSERT INTO server_secrets (name, value, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        args![name, candidate, now_millis()],
    )?;
    c.query_one(
        "SELECT value FROM server_secrets WHERE name = ?1",
        args![name],
    )?
    .text(0)
}
