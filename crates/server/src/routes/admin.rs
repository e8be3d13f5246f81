//! Administration of access: tokens, organizations, clusters, pipelines'
//! homes, artifact-read rules and the audit log (`/api/v1/admin/…`), and
//! the pipeline list every reader sees (`GET /api/v1/pipelines`). Who may
//! call each is [`crate::access`]'s decision.

use axum::extract::State;
use axum::http::StatusCode;
use satchel_db::{NewRuleRow, TokenRow};
use satchel_model::access::{
    AuditPage, AuditQuery, ClusterInfo, ClusterList, Condition, NewPlace, NewRule, NewToken,
    OrgInfo, OrgList, PipelineInfo, PipelineList, RuleEnd, RuleInfo, RuleList, Scope, TokenCreated,
    TokenInfo, TokenList, ARTIFACTS_READ, TOKEN_PREFIX,
};
use satchel_model::names;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::check_id;
use crate::access::Caller;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::AppState;

/// Longest token name, in characters.
const MAX_TOKEN_NAME: usize = 200;
/// Longest token life: ten years.
const MAX_TOKEN_SECS: u64 = 10 * 365 * 86_400;

fn org_of(caller: &Caller, given: Option<&str>) -> Result<(String, Option<String>), ApiError> {
    let scope = caller.org_admin(given)?;
    let org = given
        .map(str::to_string)
        .or_else(|| scope.clone())
        .unwrap_or_else(|| satchel_db::access::DEFAULT.to_string());
    names::validate_key("organization", &org)?;
    Ok((org, scope))
}

/// A new random secret: the prefix, then 256 bits in hex.
fn new_secret() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

#[utoipa::path(
    post,
    path = "/admin/tokens",
    tag = "admin",
    summary = "Create a token (its secret is shown once)",
    request_body = NewToken,
    responses((status = 201, description = "The token and its secret", body = TokenCreated), crate::openapi::Errors)
)]
pub(super) async fn create_token(
    State(s): State<AppState>,
    caller: Caller,
    Json(mut req): Json<NewToken>,
) -> Result<(StatusCode, axum::Json<TokenCreated>), ApiError> {
    // A token for an existing pipeline lives where the pipeline does,
    // unless told otherwise.
    if let (Some(p), None, None) = (&req.pipeline, &req.org, &req.cluster) {
        names::validate_key("pipeline", p)?;
        if let Some(home) = s.db.pipeline_home(p).await? {
            (req.org, req.cluster) = (Some(home.org), Some(home.cluster));
        }
    }
    let (org, _) = org_of(&caller, req.org.as_deref())?;
    req.org = Some(org.clone());
    let cluster = req
        .cluster
        .get_or_insert_with(|| satchel_db::access::DEFAULT.to_string())
        .clone();
    names::validate_key("cluster", &cluster)?;
    caller.note(format!("org={org} cluster={cluster}"));
    if req.scopes.is_empty() {
        return Err(ApiError::bad_request(
            "a token needs at least one scope (read, write, delete, admin)",
        ));
    }
    req.scopes.sort();
    req.scopes.dedup();
    if req.scopes.contains(&Scope::Admin) && (req.pipeline.is_some() || req.run.is_some()) {
        return Err(ApiError::bad_request(
            "an admin token administers its whole organization; it cannot be narrowed to a pipeline or a job",
        ));
    }
    if req.name.chars().count() > MAX_TOKEN_NAME || req.name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "a token name has at most {MAX_TOKEN_NAME} characters and no control characters"
        )));
    }
    if let Some(p) = &req.pipeline {
        names::validate_key("pipeline", p)?;
    }
    match (&req.run, &req.job) {
        (None, None) => {
            if req.attempt.is_some() {
                return Err(ApiError::bad_request("--attempt needs --run and --job"));
            }
        }
        (Some(run), Some(job)) => {
            if req.pipeline.is_none() {
                return Err(ApiError::bad_request(
                    "a job token (--run and --job) needs --pipeline",
                ));
            }
            if *run == 0 || *run > i64::MAX as u64 {
                return Err(ApiError::bad_request("run numbers start at 1"));
            }
            names::validate_key("job", job)?;
            if req.attempt == Some(0) {
                return Err(ApiError::bad_request("attempts start at 1"));
            }
            if req.scopes.contains(&Scope::Admin) {
                return Err(ApiError::bad_request(
                    "a job token cannot have the `admin` scope",
                ));
            }
            req.attempt.get_or_insert(1);
        }
        _ => {
            return Err(ApiError::bad_request(
                "a job token needs both --run and --job",
            ))
        }
    }
    let expires_at_ms = match req.expires_in_secs {
        None => None,
        Some(0) => return Err(ApiError::bad_request("expiry must be at least 1 second")),
        Some(n) if n > MAX_TOKEN_SECS => {
            return Err(ApiError::bad_request("a token may live at most 10 years"))
        }
        Some(n) => Some(satchel_model::id::now_millis() + (n as i64) * 1000),
    };
    let secret = new_secret();
    let hash: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let info =
        s.db.create_token(&TokenRow {
            id: satchel_model::id::new_id(),
            hash,
            spec: req,
            expires_at_ms,
        })
        .await?;
    caller.note(format!("token={}", info.id));
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenCreated {
            id: info.id.clone(),
            token: secret,
            info,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/admin/tokens",
    tag = "admin",
    summary = "List tokens (never their secrets)",
    responses((status = 200, description = "The tokens", body = TokenList), crate::openapi::Errors)
)]
pub(super) async fn list_tokens(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<TokenList>, ApiError> {
    let scope = caller.org_admin(None)?;
    Ok(axum::Json(TokenList {
        tokens: s.db.list_tokens(scope.as_deref()).await?,
    }))
}

#[utoipa::path(
    post,
    path = "/admin/tokens/{id}/revoke",
    tag = "admin",
    summary = "Revoke a token",
    params(("id" = String, Path, description = "Token id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The token, revoked", body = TokenInfo), crate::openapi::Errors)
)]
pub(super) async fn revoke_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<TokenInfo>, ApiError> {
    check_id("token", &id)?;
    caller.note(format!("token={id}"));
    let scope = caller.org_admin(None)?;
    let t =
        s.db.token_by_id(&id)
            .await?
            .filter(|t| scope.as_deref().is_none_or(|o| o == t.org))
            .ok_or_else(|| ApiError::not_found(format!("token {id:?} not found")))?;
    Ok(axum::Json(s.db.revoke_token(&t.id).await?))
}

#[utoipa::path(
    post,
    path = "/admin/orgs",
    tag = "admin",
    summary = "Create an organization",
    request_body = NewPlace,
    responses((status = 201, description = "The organization", body = OrgInfo), crate::openapi::Errors)
)]
pub(super) async fn create_org(
    State(s): State<AppState>,
    caller: Caller,
    Json(req): Json<NewPlace>,
) -> Result<(StatusCode, axum::Json<OrgInfo>), ApiError> {
    caller.note(format!("org={}", req.name));
    caller.server_admin()?;
    names::validate_key("organization", &req.name)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(s.db.create_org(&req.name).await?),
    ))
}

#[utoipa::path(
    get,
    path = "/admin/orgs",
    tag = "admin",
    summary = "List organizations",
    responses((status = 200, description = "The organizations", body = OrgList), crate::openapi::Errors)
)]
pub(super) async fn list_orgs(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<OrgList>, ApiError> {
    let scope = caller.org_admin(None)?;
    let orgs =
        s.db.list_orgs()
            .await?
            .into_iter()
            .filter(|o| scope.as_deref().is_none_or(|s| s == o.name))
            .collect();
    Ok(axum::Json(OrgList { orgs }))
}

#[utoipa::path(
    post,
    path = "/admin/clusters",
    tag = "admin",
    summary = "Create a cluster",
    request_body = NewPlace,
    responses((status = 201, description = "The cluster", body = ClusterInfo), crate::openapi::Errors)
)]
pub(super) async fn create_cluster(
    State(s): State<AppState>,
    caller: Caller,
    Json(req): Json<NewPlace>,
) -> Result<(StatusCode, axum::Json<ClusterInfo>), ApiError> {
    let (org, _) = org_of(&caller, req.org.as_deref())?;
    caller.note(format!("org={org} cluster={}", req.name));
    names::validate_key("cluster", &req.name)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(s.db.create_cluster(&org, &req.name).await?),
    ))
}

#[utoipa::path(
    get,
    path = "/admin/clusters",
    tag = "admin",
    summary = "List clusters",
    responses((status = 200, description = "The clusters", body = ClusterList), crate::openapi::Errors)
)]
pub(super) async fn list_clusters(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<ClusterList>, ApiError> {
    let scope = caller.org_admin(None)?;
    let clusters =
        s.db.list_clusters()
            .await?
            .into_iter()
            .filter(|c| scope.as_deref().is_none_or(|s| s == c.org))
            .collect();
    Ok(axum::Json(ClusterList { clusters }))
}

fn place(
    caller: &Caller,
    org: Option<&str>,
    cluster: Option<&str>,
) -> Result<(String, String), ApiError> {
    let (org, _) = org_of(caller, org)?;
    let Some(cluster) = cluster else {
        return Err(ApiError::bad_request("name the cluster (--cluster)"));
    };
    names::validate_key("cluster", cluster)?;
    Ok((org, cluster.to_string()))
}

#[utoipa::path(
    post,
    path = "/admin/pipelines",
    tag = "admin",
    summary = "Create a pipeline in a cluster",
    request_body = NewPlace,
    responses((status = 201, description = "The pipeline", body = PipelineInfo), crate::openapi::Errors)
)]
pub(super) async fn create_pipeline(
    State(s): State<AppState>,
    caller: Caller,
    Json(req): Json<NewPlace>,
) -> Result<(StatusCode, axum::Json<PipelineInfo>), ApiError> {
    let (org, cluster) = place(&caller, req.org.as_deref(), req.cluster.as_deref())?;
    caller.note(format!("pipeline={} org={org} cluster={cluster}", req.name));
    names::validate_key("pipeline", &req.name)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(s.db.create_pipeline(&req.name, &org, &cluster).await?),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct MoveTo {
    #[serde(default)]
    org: Option<String>,
    cluster: Option<String>,
}

#[utoipa::path(
    post,
    path = "/admin/pipelines/{name}/move",
    tag = "admin",
    summary = "Move a pipeline to another cluster",
    params(("name" = String, Path, description = "Pipeline key", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")),
    request_body = MoveTo,
    responses((status = 200, description = "The pipeline where it now lives", body = PipelineInfo), crate::openapi::Errors)
)]
pub(super) async fn move_pipeline(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(req): Json<MoveTo>,
) -> Result<axum::Json<PipelineInfo>, ApiError> {
    names::validate_key("pipeline", &name)?;
    let (org, cluster) = place(&caller, req.org.as_deref(), req.cluster.as_deref())?;
    caller.note(format!("pipeline={name} org={org} cluster={cluster}"));
    let home =
        s.db.pipeline_home(&name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("pipeline {name:?} not found")))?;
    // An organization's admin moves its own pipelines only.
    caller.org_admin(Some(&home.org))?;
    Ok(axum::Json(s.db.move_pipeline(&name, &org, &cluster).await?))
}

/// `GET /api/v1/pipelines`: the pipelines the caller may read.
#[utoipa::path(
    get,
    path = "/pipelines",
    tag = "runs",
    summary = "The pipelines the token may read",
    responses((status = 200, description = "Pipelines by key", body = PipelineList), crate::openapi::Errors)
)]
pub(super) async fn list_pipelines(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<PipelineList>, ApiError> {
    let pipelines = caller.readable_pipelines(&s).await?;
    Ok(axum::Json(PipelineList { pipelines }))
}

/// The storage figures of the pipelines `caller` may read (`pipelines`,
/// its readable pipelines, by name), and the server's totals.
pub(crate) async fn storage_report(
    s: &AppState,
    pipelines: &[satchel_model::access::PipelineInfo],
) -> Result<satchel_model::access::StorageReport, ApiError> {
    let f = s.metrics.storage(s).await?;
    let readable: std::collections::HashSet<&str> =
        pipelines.iter().map(|p| p.name.as_str()).collect();
    Ok(satchel_model::access::StorageReport {
        pipelines: f
            .pipelines
            .iter()
            .filter(|p| readable.contains(p.pipeline.as_str()))
            .cloned()
            .collect(),
        content_bytes: f.content_bytes,
        stored_bytes: s.metrics.stored_bytes(),
        computed_at: f.computed_at.clone(),
    })
}

/// `GET /api/v1/storage`: per readable pipeline, artifacts by state,
/// logical and distinct bytes; the server's distinct and stored bytes.
#[utoipa::path(
    get,
    path = "/storage",
    tag = "runs",
    summary = "Storage figures of the pipelines the token may read",
    responses((status = 200, description = "Per pipeline and server-wide", body = satchel_model::access::StorageReport), crate::openapi::Errors)
)]
pub(super) async fn storage(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<satchel_model::access::StorageReport>, ApiError> {
    let pipelines = caller.readable_pipelines(&s).await?;
    Ok(axum::Json(storage_report(&s, &pipelines).await?))
}

#[utoipa::path(
    post,
    path = "/admin/rules",
    tag = "admin",
    summary = "Create a rule letting pipelines read another cluster's artifacts",
    request_body = NewRule,
    responses((status = 201, description = "The rule", body = RuleInfo), crate::openapi::Errors)
)]
pub(super) async fn create_rule(
    State(s): State<AppState>,
    caller: Caller,
    Json(req): Json<NewRule>,
) -> Result<(StatusCode, axum::Json<RuleInfo>), ApiError> {
    let (org, _) = org_of(&caller, req.org.as_deref())?;
    if req.kind != ARTIFACTS_READ {
        return Err(ApiError::bad_request(format!(
            "unknown rule type {:?}: the one type is {ARTIFACTS_READ}",
            req.kind
        )));
    }
    for end in [&req.source, &req.target] {
        match end {
            RuleEnd::Pipeline(p) => names::validate_key("pipeline", p)?,
            RuleEnd::Cluster(c) => names::validate_key("cluster", c)?,
        }
    }
    if let Some(c) = &req.condition {
        Condition::parse(c).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_condition",
                format!("condition: {e}"),
            )
        })?;
    }
    caller.note(format!(
        "org={org} source={} target={}",
        req.source, req.target
    ));
    let rule =
        s.db.create_rule(&NewRuleRow {
            kind: req.kind,
            org,
            source: req.source,
            target: req.target,
            condition: req.condition,
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(rule)))
}

#[utoipa::path(
    get,
    path = "/admin/rules",
    tag = "admin",
    summary = "List rules",
    responses((status = 200, description = "The rules", body = RuleList), crate::openapi::Errors)
)]
pub(super) async fn list_rules(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<RuleList>, ApiError> {
    let scope = caller.org_admin(None)?;
    Ok(axum::Json(RuleList {
        rules: s.db.list_rules(scope.as_deref()).await?,
    }))
}

#[utoipa::path(
    delete,
    path = "/admin/rules/{id}",
    tag = "admin",
    summary = "Delete a rule",
    params(("id" = String, Path, description = "Rule id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The rule, deleted", body = RuleInfo), crate::openapi::Errors)
)]
pub(super) async fn delete_rule(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<RuleInfo>, ApiError> {
    check_id("rule", &id)?;
    caller.note(format!("rule={id}"));
    let scope = caller.org_admin(None)?;
    let visible =
        s.db.list_rules(scope.as_deref())
            .await?
            .into_iter()
            .any(|r| r.id == id);
    if !visible {
        return Err(ApiError::not_found(format!("rule {id:?} not found")));
    }
    Ok(axum::Json(s.db.delete_rule(&id).await?))
}

/// `GET /api/v1/admin/audit`: newest first, `cursor` pages older.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    summary = "The audit log, newest first",
    params(AuditQuery),
    responses((status = 200, description = "A page of entries", body = AuditPage), crate::openapi::Errors)
)]
pub(super) async fn audit(
    State(s): State<AppState>,
    caller: Caller,
    Query(mut q): Query<AuditQuery>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    let scope = caller.org_admin(q.org.as_deref())?;
    if scope.is_some() {
        q.org = scope;
    }
    if let Some(c) = &q.cursor {
        check_id("cursor", c)?;
    }
    // What this replica recorded so far is in the database first.
    s.audit.flush().await;
    Ok(axum::Json(s.db.list_audit(&q).await?))
}
