//! The GitHub Actions artifact protocol v4, as the unmodified
//! `@actions/artifact` client (upload-artifact@v4+, download-artifact@v4+)
//! speaks it.
//!
//! - Twirp JSON at the origin root:
//!   `POST /twirp/github.actions.results.api.v1.ArtifactService/{Method}`,
//!   authenticated by the runtime token ([`token`]), answering Twirp errors
//!   `{code, msg}`. This protocol's error shape is its own boundary
//!   ([`TwirpError`]); everything else keeps the API's one error boundary.
//! - Signed blob URLs ([`blob`]) implementing the Azure Blob block-upload
//!   subset the client uses, and plain downloads.
//!
//! Artifacts uploaded this way are ordinary Satchel artifacts: one file
//! (`NAME.zip`, or the raw file with `skipArchive`), visible to the CLI,
//! references and promotion. Their file's `glob` is `gha-zip` or `gha-raw`,
//! which is how the protocol's listing tells them from other artifacts.

pub mod blob;
pub mod token;
pub mod view;

use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use satchel_db::{DbError, GhaCommitted, GhaKey, GhaUpload, GhaViewKind};
use satchel_model::api::{CreateUpload, FileInfo, JobContext, NewFile};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::access::{Acting, Caller, Principal};
use crate::audit::AuditNote;
use crate::AppState;
use token::{Identity, Keys};
use view::RunView;

/// How long a runtime token lives unless asked otherwise.
pub const DEFAULT_TOKEN_TTL: u64 = 6 * 3600;
/// How long signed upload URLs live.
const UPLOAD_URL_TTL: u64 = 6 * 3600;
/// How long signed download URLs live.
const DOWNLOAD_URL_TTL: u64 = 3600;
/// Uploads idle this long are reaped (their URLs expired long before).
pub const SESSION_IDLE_SECS: u64 = 24 * 3600;
/// Default of [`Gha::max_session_bytes`]: 32 GiB.
pub const DEFAULT_MAX_SESSION_BYTES: u64 = 32 << 30;

/// State of the protocol: keys, and scratch space for blocks on their way
/// into the content store. Uploads in progress live in the database
/// ([`satchel_db::gha`]), so any replica takes any of their requests.
pub struct Gha {
    /// Token and URL keys.
    pub keys: Keys,
    /// Where a block waits, while it is received and hashed, before it is
    /// stored (one file per request in flight, removed when it ends).
    pub scratch: PathBuf,
    max_session_bytes: std::sync::atomic::AtomicU64,
    delete_wait_ms: std::sync::atomic::AtomicI64,
}

impl Gha {
    /// Protocol state with keys derived from `secret` and block files
    /// under `scratch`.
    pub fn new(secret: &[u8], scratch: PathBuf) -> Gha {
        Gha {
            keys: Keys::new(secret),
            scratch,
            max_session_bytes: DEFAULT_MAX_SESSION_BYTES.into(),
            delete_wait_ms: view::DELETE_WAIT_MS.into(),
        }
    }

    /// How long a DeleteArtifact waits for its job's upload of the name
    /// before it is carried out for every reader ([`view`]).
    pub fn delete_wait_ms(&self) -> i64 {
        self.delete_wait_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets [`Gha::delete_wait_ms`].
    pub fn set_delete_wait_ms(&self, ms: i64) {
        self.delete_wait_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Most bytes of blocks one upload may hold.
    pub fn max_session_bytes(&self) -> u64 {
        self.max_session_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets [`Gha::max_session_bytes`].
    pub fn set_max_session_bytes(&self, n: u64) {
        self.max_session_bytes
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Drops the uploads (on every replica) not used for `max_idle`; returns
/// how many. Their signed URLs expired long before; their blocks and
/// committed blobs become garbage for GC.
/// Carries out the pending deletes that are due, and drops old views
/// ([`view`]), on the way.
pub async fn reap_idle(s: &AppState, max_idle: std::time::Duration) -> Result<u64, DbError> {
    let reaped =
        s.db.gha_reap(i64::try_from(max_idle.as_millis()).unwrap_or(i64::MAX))
            .await?;
    s.db.gha_settle_views(None, s.gha.delete_wait_ms(), view::VIEW_KEEP_MS)
        .await?;
    Ok(reaped)
}

/// How often idle uploads are looked for.
pub const REAP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    (satchel_model::id::now_millis() / 1000) as u64
}

/// A Twirp error: `{code, msg}` with the status Twirp assigns the code.
#[derive(Debug)]
pub struct TwirpError {
    status: StatusCode,
    code: &'static str,
    msg: String,
    /// See [`crate::error::ApiError::store_full`].
    store_full: bool,
}

impl TwirpError {
    fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> TwirpError {
        TwirpError {
            status,
            code,
            msg: msg.into(),
            store_full: false,
        }
    }
    fn invalid(msg: impl Into<String>) -> TwirpError {
        TwirpError::new(StatusCode::BAD_REQUEST, "invalid_argument", msg)
    }
    fn not_found(msg: impl Into<String>) -> TwirpError {
        TwirpError::new(StatusCode::NOT_FOUND, "not_found", msg)
    }
    fn internal(msg: impl Into<String>) -> TwirpError {
        TwirpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
    }
}

impl IntoResponse for TwirpError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!("twirp {}: {}", self.code, self.msg);
        }
        let mut resp = (
            self.status,
            axum::Json(json!({"code": self.code, "msg": self.msg})),
        )
            .into_response();
        if self.store_full {
            resp.extensions_mut().insert(crate::error::Full);
        }
        resp
    }
}

impl From<DbError> for TwirpError {
    fn from(e: DbError) -> TwirpError {
        match e {
            DbError::NotFound(m) => TwirpError::not_found(m),
            DbError::Conflict(m) => TwirpError::new(StatusCode::CONFLICT, "already_exists", m),
            DbError::Invalid(m) | DbError::SizeMismatch(m) => TwirpError::invalid(m),
            DbError::Forbidden(m) => TwirpError::new(StatusCode::FORBIDDEN, "permission_denied", m),
            DbError::Limit(m) => {
                TwirpError::new(StatusCode::PRECONDITION_FAILED, "failed_precondition", m)
            }
            DbError::Full(_) => crate::error::ApiError::from(e).into(),
            other => TwirpError::internal(other.to_string()),
        }
    }
}

impl From<crate::error::ApiError> for TwirpError {
    fn from(e: crate::error::ApiError) -> TwirpError {
        let code = match e.status.as_u16() {
            401 => "unauthenticated",
            403 => "permission_denied",
            404 => "not_found",
            409 => "already_exists",
            s if s < 500 => "invalid_argument",
            502 | 503 => "unavailable",
            507 => "resource_exhausted",
            _ => "internal",
        };
        TwirpError {
            store_full: e.store_full,
            ..TwirpError::new(e.status, code, e.message)
        }
    }
}

impl From<satchel_store::StoreError> for TwirpError {
    fn from(e: satchel_store::StoreError) -> TwirpError {
        if e.is_client_error() {
            TwirpError::invalid(e.to_string())
        } else {
            // The one mapping of store failures: a full store answers 507
            // naming the limit (never a path), a failing bucket 502.
            crate::error::ApiError::from(e).into()
        }
    }
}

/// The routes at the origin root: Twirp and the signed blob URLs.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post, put};
    axum::Router::new()
        .route(
            "/twirp/github.actions.results.api.v1.ArtifactService/{method}",
            post(twirp),
        )
        .route(
            "/gha-blob/u/{session}/{file}",
            put(blob::put).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/gha-blob/d/{file_id}/{file}", get(blob::download))
}

/// proto-JSON int64: a string or a number.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(None),
        Some(N::I(i)) => Ok(Some(i)),
        Some(N::S(s)) if s.is_empty() => Ok(None),
        Some(N::S(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an int64"))),
    }
}

/// Every request field of the five methods; proto-JSON leaves defaults out.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Request {
    #[serde(alias = "workflowRunBackendId")]
    workflow_run_backend_id: String,
    #[serde(alias = "workflowJobRunBackendId")]
    workflow_job_run_backend_id: String,
    name: String,
    #[serde(alias = "mimeType")]
    mime_type: Option<String>,
    #[serde(deserialize_with = "int64")]
    size: Option<i64>,
    hash: Option<String>,
    #[serde(alias = "nameFilter")]
    name_filter: Option<String>,
    #[serde(alias = "idFilter", deserialize_with = "int64")]
    id_filter: Option<i64>,
    version: Option<i64>,
    #[serde(alias = "expiresAt")]
    expires_at: Option<String>,
}

/// Start of the seconds in [`database_id`]: 2025-01-01T00:00:00Z.
const DATABASE_ID_EPOCH_SECS: u64 = 1_735_689_600;
/// Random bits in [`database_id`].
const DATABASE_ID_RANDOM_BITS: u32 = 21;

/// The numeric id the protocol uses for an artifact, from its Satchel id
/// (48 bits of milliseconds, then 80 random bits): seconds since 2025 (32
/// bits, good until 2161) then 21 of its random bits, so at most 2^53 - 1.
/// The wire type is an int64, but `@actions/artifact` turns ids into
/// JavaScript numbers (`Number(…)`) and sends them back as ID filters, so
/// only integers up to 2^53 round-trip. Two artifacts of a run share an id
/// only if created in the same second with the same 21 random bits (it was
/// the same millisecond and 12 bits). Newer artifacts get higher numbers,
/// to the second.
pub fn database_id(artifact_id: &str) -> i64 {
    let hex = |r: std::ops::Range<usize>| {
        artifact_id
            .get(r)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    let secs = (hex(0..12) / 1000)
        .saturating_sub(DATABASE_ID_EPOCH_SECS)
        .min(u64::from(u32::MAX));
    let random = hex(12..18) & ((1 << DATABASE_ID_RANDOM_BITS) - 1);
    ((secs << DATABASE_ID_RANDOM_BITS) | random).max(1) as i64
}

/// `scheme://host` of the request, for signed URLs.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// The runtime token's job, and the caller it acts for: the token that
/// minted it, checked again now (revoked or expired: refused).
async fn authenticate(
    s: &AppState,
    headers: &HeaderMap,
    note: AuditNote,
) -> Result<(Identity, Caller), TwirpError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            note.deny("no runtime token");
            TwirpError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing `Authorization: Bearer <ACTIONS_RUNTIME_TOKEN>`",
            )
        })?;
    let who = s.gha.keys.verify(token, now_secs()).map_err(|e| {
        note.deny(&e.to_string());
        TwirpError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
    })?;
    let principal = match &who.by {
        None => {
            note.token("admin", "bootstrap admin", None);
            Principal::Admin
        }
        Some(id) => {
            let t = s.db.token_by_id(id).await?;
            match t {
                Some(t) if t.is_live(satchel_model::id::now_millis()) => {
                    note.token(&t.id, &t.name, Some(&t.org));
                    Principal::Token(Box::new(t))
                }
                other => {
                    if let Some(t) = other {
                        note.token(&t.id, &t.name, Some(&t.org));
                    }
                    let why = format!(
                        "token {id}, which issued this runtime token, is revoked, expired or gone"
                    );
                    note.deny(&why);
                    return Err(TwirpError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        why,
                    ));
                }
            }
        }
    };
    Ok((who, Caller::new(principal, note)))
}

async fn twirp(
    State(s): State<AppState>,
    Path(method): Path<String>,
    note: Option<axum::Extension<AuditNote>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<serde_json::Value>, TwirpError> {
    let note = note.map(|n| n.0).unwrap_or_default();
    let (who, caller) = authenticate(&s, &headers, note).await?;
    caller.note(format!(
        "pipeline={} run={} job={}",
        who.pipeline, who.run, who.job
    ));
    let req: Request = serde_json::from_slice(&body)
        .map_err(|e| TwirpError::new(StatusCode::BAD_REQUEST, "malformed", e.to_string()))?;
    // Reads and deletes name the job that produced the artifact (the
    // client copies it from ListArtifacts), which may be another job of
    // the run; an upload is always the token's own job's.
    let own_job = matches!(method.as_str(), "CreateArtifact" | "FinalizeArtifact");
    if req.workflow_run_backend_id != who.run_backend_id()
        || (own_job && req.workflow_job_run_backend_id != who.job_backend_id())
    {
        return Err(TwirpError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!(
                "this token is for run {:?} job {:?}; the request names run {:?} job {:?}",
                who.run_backend_id(),
                who.job_backend_id(),
                req.workflow_run_backend_id,
                req.workflow_job_run_backend_id
            ),
        ));
    }
    let acting = Acting {
        run: Some(who.run),
        job: Some((who.job.clone(), 1)),
    };
    match method.as_str() {
        "CreateArtifact" | "FinalizeArtifact" => caller.write(&s, &who.pipeline, &acting).await?,
        "DeleteArtifact" => caller.delete(&s, &who.pipeline, &acting).await?,
        _ => caller.read(&s, &who.pipeline).await?,
    }
    let answer = match method.as_str() {
        "CreateArtifact" => create(&s, &who, &req, &origin(&headers)).await?,
        "FinalizeArtifact" => finalize(&s, &who, &req).await?,
        "ListArtifacts" => list(&s, &who, &req).await?,
        "GetSignedArtifactURL" => signed_url(&s, &who, &req, &origin(&headers)).await?,
        "DeleteArtifact" => delete(&s, &who, &req).await?,
        other => {
            return Err(TwirpError::new(
                StatusCode::NOT_FOUND,
                "bad_route",
                format!("no method {other:?} in github.actions.results.api.v1.ArtifactService"),
            ))
        }
    };
    Ok(axum::Json(answer))
}

fn validate_name(name: &str) -> Result<(), TwirpError> {
    satchel_model::names::validate_artifact_name(name)
        .map_err(|e| TwirpError::invalid(e.to_string()))?;
    if name == "default" {
        return Err(TwirpError::invalid(
            "`default` names a job's default artifact in Satchel; choose another name",
        ));
    }
    Ok(())
}

fn upload_key(who: &Identity, name: &str) -> GhaKey {
    GhaKey {
        pipeline: who.pipeline.clone(),
        run: who.run,
        job: who.job.clone(),
        name: name.to_string(),
    }
}

async fn create(
    s: &AppState,
    who: &Identity,
    req: &Request,
    origin: &str,
) -> Result<serde_json::Value, TwirpError> {
    validate_name(&req.name)?;
    if let Some(v) = req.version {
        if v != 4 && v != 7 {
            return Err(TwirpError::invalid(format!(
                "artifact version {v} is not supported (4 and 7 are)"
            )));
        }
    }
    // Not one this job deleted: `overwrite: true` deletes, then creates.
    // Another job's delete of the name, with no upload of it following,
    // is carried out now: this job takes the name.
    let mut run = RunView::load(s, who).await?;
    if run.named(who, &req.name).is_some() && run.others_pending(who, &req.name) {
        let scope = (who.pipeline.as_str(), who.run, Some(req.name.as_str()));
        s.db.gha_settle_views(Some(scope), 0, view::VIEW_KEEP_MS)
            .await?;
        run = RunView::load(s, who).await?;
    }
    if let Some(f) = run.named(who, &req.name) {
        return Err(TwirpError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!(
                "an artifact named {:?} already exists in run {} of pipeline {:?} (uploaded by job {:?}); artifact names are unique within a run",
                req.name, who.run, who.pipeline, f.producer.job
            ),
        ));
    }
    let mime = req
        .mime_type
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "application/zip".into());
    let zip = mime == "application/zip";
    let file_name = if zip {
        format!("{}.zip", req.name)
    } else {
        req.name.clone()
    };
    satchel_model::path::validate(&file_name).map_err(|e| TwirpError::invalid(e.to_string()))?;
    // Refused now, not after every byte was sent (finalize checks again).
    if file_name.len() > s.limits.path_bytes {
        return Err(TwirpError::invalid(format!(
            "artifact name {:?} makes a file name of {} bytes; this server takes at most {} (satchel serve --max-path-bytes)",
            req.name,
            file_name.len(),
            s.limits.path_bytes
        )));
    }
    let upload = GhaUpload {
        id: satchel_model::id::random_hex(16),
        key: upload_key(who, &req.name),
        file_name,
        mime,
        committed: None,
    };
    // Replaces an upload of the same name (its blocks become garbage).
    match s.db.gha_start(&upload).await {
        Ok(()) => {}
        // Lost to other starts of this name, round after round: a retry's.
        Err(DbError::Conflict(m)) => {
            return Err(TwirpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                m,
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let expires = now_secs() + UPLOAD_URL_TTL;
    let url = format!(
        "{origin}/gha-blob/u/{}/{}?se={expires}&sig={}",
        upload.id,
        satchel_model::path::url_segment(&upload.file_name),
        s.gha.keys.sign_url(&format!("u/{}", upload.id), expires)
    );
    Ok(json!({"ok": true, "signed_upload_url": url}))
}

async fn finalize(
    s: &AppState,
    who: &Identity,
    req: &Request,
) -> Result<serde_json::Value, TwirpError> {
    validate_name(&req.name)?;
    let Some(upload) = s.db.gha_find(&upload_key(who, &req.name)).await? else {
        // A retry of a finalize that succeeded answers the same.
        if let Some(done) = already_finalized(s, who, req, None).await? {
            return Ok(done);
        }
        return Err(TwirpError::not_found(format!(
            "no upload of artifact {:?} is in progress for this job; call CreateArtifact first",
            req.name
        )));
    };
    let GhaUpload {
        id: upload_id,
        file_name,
        mime,
        committed,
        ..
    } = upload;
    let Some(GhaCommitted { sha256, size, .. }) = committed else {
        return Err(TwirpError::new(
            StatusCode::PRECONDITION_FAILED,
            "failed_precondition",
            format!(
                "artifact {:?} has no committed content: upload its blocks and the block list first",
                req.name
            ),
        ));
    };
    if let Some(want) = req.size {
        if want != size as i64 {
            return Err(TwirpError::invalid(format!(
                "size mismatch for {:?}: the block list assembled {size} bytes, FinalizeArtifact says {want}",
                req.name
            )));
        }
    }
    if let Some(h) = req.hash.as_deref().filter(|h| !h.is_empty()) {
        let want = h.strip_prefix("sha256:").unwrap_or(h).to_ascii_lowercase();
        if want != sha256 {
            return Err(TwirpError::invalid(format!(
                "digest mismatch for {:?}: the uploaded bytes have sha256:{sha256}, FinalizeArtifact says {h}",
                req.name
            )));
        }
    }
    let zip = mime == "application/zip";
    // The one check every manifest passes, whichever way it arrives.
    let manifest = CreateUpload {
        context: JobContext {
            pipeline: who.pipeline.clone(),
            run: who.run,
            stage: None,
            job: who.job.clone(),
            step: None,
            attempt: 1,
            branch: None,
            commit: None,
            build: None,
        },
        name: Some(req.name.clone()),
        files: vec![NewFile {
            path: file_name,
            size,
            sha256: sha256.clone(),
            mode: 0o644,
            content_type: Some(mime),
            source_path: None,
            glob: Some(if zip { "gha-zip" } else { "gha-raw" }.into()),
        }],
        exclusive: true,
        replace: false,
        // The server's default retention is applied after the check (it
        // is not the client's input), as for REST uploads.
        expire_in_secs: None,
    };
    crate::validate_manifest(&manifest, &s.limits)?;
    let mut manifest = manifest;
    manifest.expire_in_secs = s.default_expire_secs;
    // The upload's row keeps the blob from GC until the file row that
    // references it is committed; should the upload be replaced or reaped
    // meanwhile, this announcement keeps it instead.
    let mut hold = s.blob_gate.writer();
    hold.add(&sha256).await?;
    if s.db
        .known_blobs(std::slice::from_ref(&sha256))
        .await?
        .is_empty()
    {
        return Err(TwirpError::new(
            StatusCode::PRECONDITION_FAILED,
            "failed_precondition",
            format!(
                "the upload of artifact {:?} was replaced or expired while it was finalized: upload it again",
                req.name
            ),
        ));
    }
    // Replaces, in the same transaction, what this job deleted of the name.
    let key = upload_key(who, &req.name);
    let answer = match s.db.gha_publish(&key, &manifest, &s.limits.quotas).await {
        Ok(done) => {
            json!({"ok": true, "artifact_id": database_id(&done.artifact.id).to_string()})
        }
        // A concurrent or retried finalize of this very upload won.
        Err(DbError::Conflict(m)) => already_finalized(s, who, req, Some(&sha256))
            .await?
            .ok_or_else(|| TwirpError::from(DbError::Conflict(m)))?,
        Err(e) => return Err(e.into()),
    };
    drop(hold);
    // Only the upload finalized here goes: CreateArtifact may have started
    // a newer one for the same name meanwhile (it has another id). The
    // artifact is recorded: should this fail, the reaper ends it later.
    if let Err(e) = s.db.gha_end(&upload_id).await {
        tracing::warn!("ending GitHub Actions upload {upload_id}: {e}");
    }
    Ok(answer)
}

/// The answer of a finalize that already succeeded for this job's
/// artifact `req.name` (so that a retry gets the same answer), if the
/// request matches it: same size and digest when given, and `sha256` when
/// the content is known. `None` if there is no such artifact.
async fn already_finalized(
    s: &AppState,
    who: &Identity,
    req: &Request,
    sha256: Option<&str>,
) -> Result<Option<serde_json::Value>, TwirpError> {
    let run = RunView::load(s, who).await?;
    let Some(f) = run
        .visible(who)
        .find(|f| f.artifact_name == req.name && f.producer.job == who.job)
    else {
        return Ok(None);
    };
    let want_hash = req
        .hash
        .as_deref()
        .filter(|h| !h.is_empty())
        .map(|h| h.strip_prefix("sha256:").unwrap_or(h).to_ascii_lowercase());
    let same = req.size.is_none_or(|n| n == f.size as i64)
        && want_hash.is_none_or(|h| h == f.sha256)
        && sha256.is_none_or(|h| h == f.sha256);
    if !same {
        return Err(TwirpError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!(
                "artifact {:?} was already finalized with other content (sha256:{}, {} bytes)",
                req.name, f.sha256, f.size
            ),
        ));
    }
    Ok(Some(
        json!({"ok": true, "artifact_id": database_id(&f.artifact_id).to_string()}),
    ))
}

async fn list(
    s: &AppState,
    who: &Identity,
    req: &Request,
) -> Result<serde_json::Value, TwirpError> {
    let run = RunView::load(s, who).await?;
    let name = req.name_filter.as_deref().filter(|n| !n.is_empty());
    let found: Vec<&FileInfo> = match (name, req.id_filter) {
        (None, None) => run.visible(who).collect(),
        (Some(n), None) => run.named(who, n).into_iter().collect(),
        (n, Some(id)) => run
            .by_id(who, id)
            .filter(|f| n.is_none_or(|n| f.artifact_name == n))
            .into_iter()
            .collect(),
    };
    // A filtered listing is how a download picks its artifact: its URL,
    // asked for by name next, is for this one (see `view`).
    if let ([f], true) = (found.as_slice(), name.is_some() || req.id_filter.is_some()) {
        view::record(s, who, GhaViewKind::Read, f).await?;
    }
    let artifacts: Vec<serde_json::Value> = found
        .into_iter()
        .map(|f| {
            json!({
                "workflow_run_backend_id": who.run_backend_id(),
                "workflow_job_run_backend_id": f.producer.job,
                "database_id": database_id(&f.artifact_id).to_string(),
                "name": f.artifact_name,
                "size": f.size.to_string(),
                "created_at": f.uploaded_at,
                "digest": format!("sha256:{}", f.sha256),
            })
        })
        .collect();
    Ok(json!({ "artifacts": artifacts }))
}

fn no_artifact(who: &Identity, name: &str) -> TwirpError {
    TwirpError::not_found(format!(
        "no artifact named {name:?} in run {} of pipeline {:?}",
        who.run, who.pipeline
    ))
}

async fn signed_url(
    s: &AppState,
    who: &Identity,
    req: &Request,
    origin: &str,
) -> Result<serde_json::Value, TwirpError> {
    let run = RunView::load(s, who).await?;
    let f = run
        .for_url(who, &req.name)
        .ok_or_else(|| no_artifact(who, &req.name))?;
    let expires = now_secs() + DOWNLOAD_URL_TTL;
    let url = format!(
        "{origin}/gha-blob/d/{}/{}?se={expires}&sig={}",
        f.id,
        satchel_model::path::url_segment(&f.path),
        s.gha.keys.sign_url(&format!("d/{}", f.id), expires)
    );
    Ok(json!({ "signed_url": url }))
}

async fn delete(
    s: &AppState,
    who: &Identity,
    req: &Request,
) -> Result<serde_json::Value, TwirpError> {
    // Gone for this job now; for others once it is replaced or the wait
    // runs out (see `view`).
    let run = RunView::load(s, who).await?;
    let f = run
        .named(who, &req.name)
        .ok_or_else(|| no_artifact(who, &req.name))?;
    view::record(s, who, GhaViewKind::Delete, f).await?;
    Ok(json!({"ok": true, "artifact_id": database_id(&f.artifact_id).to_string()}))
}

/// `POST /api/v1/gha/tokens` (admin): a runtime token for one job.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct MintToken {
    pipeline: String,
    run: u64,
    job: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/gha/tokens",
    tag = "artifacts",
    summary = "Mint a GitHub Actions runtime token for one job",
    request_body = MintToken,
    responses((status = 200, description = "The token and the job's backend ids", body = serde_json::Value), crate::openapi::Errors)
)]
pub(crate) async fn mint_token(
    State(s): State<AppState>,
    caller: Caller,
    crate::extract::Json(req): crate::extract::Json<MintToken>,
) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
    satchel_model::names::validate_key("pipeline", &req.pipeline)?;
    satchel_model::names::validate_key("job", &req.job)?;
    if req.run == 0 || req.run > i64::MAX as u64 {
        return Err(crate::error::ApiError::bad_request(
            "run numbers start at 1",
        ));
    }
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL);
    if ttl == 0 || ttl > 7 * 24 * 3600 {
        return Err(crate::error::ApiError::bad_request(
            "ttl_seconds must be between 1 and 604800 (7 days)",
        ));
    }
    // The runtime token can do what its job does: upload as attempt 1 of
    // the job, read and delete in its run; so minting one needs that.
    let acting = Acting {
        run: Some(req.run),
        job: Some((req.job.clone(), 1)),
    };
    caller.write(&s, &req.pipeline, &acting).await?;
    let who = Identity {
        pipeline: req.pipeline,
        run: req.run,
        job: req.job,
        by: caller.token().map(|t| t.id.clone()),
    };
    let now = now_secs();
    Ok(axum::Json(json!({
        "token": s.gha.keys.issue(&who, now, ttl),
        "expires_at": satchel_model::id::rfc3339_millis(((now + ttl) * 1000) as i64),
        "workflow_run_backend_id": who.run_backend_id(),
        "workflow_job_run_backend_id": who.job_backend_id(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_json_requests() {
        let r: Request = serde_json::from_str(
            r#"{"workflow_run_backend_id":"a","workflow_job_run_backend_id":"b","name":"n","size":"123","hash":"sha256:ab","version":4}"#,
        )
        .unwrap();
        assert_eq!(r.size, Some(123));
        assert_eq!(r.hash.as_deref(), Some("sha256:ab"));
        let r: Request =
            serde_json::from_str(r#"{"workflowRunBackendId":"a","size":5,"idFilter":"7"}"#)
                .unwrap();
        assert_eq!(r.workflow_run_backend_id, "a");
        assert_eq!((r.size, r.id_filter), (Some(5), Some(7)));
        let r: Request = serde_json::from_str("{}").unwrap();
        assert_eq!(r.name, "");
        assert!(serde_json::from_str::<Request>(r#"{"size":"x"}"#).is_err());
    }

    #[test]
    fn database_ids_follow_creation_order() {
        let a = satchel_model::id::new_id();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = satchel_model::id::new_id();
        assert!(database_id(&b) > database_id(&a));
        assert!(database_id(&a) > 0);
    }

    /// Artifacts made in the same millisecond differ unless 21 random bits
    /// agree (not 12), and every id survives a trip through a JavaScript
    /// number (the client does `Number(id)`).
    #[test]
    fn database_ids_are_wide_and_javascript_safe() {
        const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;
        let ms = format!("{:012x}", 1_795_350_586_123u64);
        // Same millisecond; random parts differ past their first 12 bits.
        let a = format!("{ms}000001{}", "0".repeat(14));
        let b = format!("{ms}000002{}", "0".repeat(14));
        let c = format!("{ms}100000{}", "0".repeat(14));
        assert_ne!(database_id(&a), database_id(&b));
        assert_ne!(database_id(&a), database_id(&c));
        let later = format!("{:012x}000{}", 1_795_350_587_000u64, "0".repeat(17));
        assert!(database_id(&later) > database_id(&c), "ordered by second");
        for id in [
            format!("{}{}", "f".repeat(12), "f".repeat(20)),
            format!("{:012x}{}", 6_000_000_000_000u64, "f".repeat(20)),
            satchel_model::id::new_id(),
        ] {
            let n = database_id(&id);
            assert!(n > 0 && n <= MAX_SAFE_INTEGER, "{id}: {n}");
            assert_eq!(n as f64 as i64, n);
        }
        assert_eq!(database_id(&"0".repeat(32)), 1);
    }
}
