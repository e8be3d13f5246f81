//! The upload protocol: announce a manifest, send only missing content,
//! finish.
//!
//! 1. `POST /uploads` validates the manifest, stages the files (invisible)
//!    and answers the digests the server lacks.
//! 2. Missing content arrives either one blob per request
//!    (`PUT /uploads/{id}/blobs/{sha256}`, streamed, for large files) or many
//!    small blobs framed in one request (`POST /uploads/{id}/blobs`, each
//!    frame = 32-byte raw SHA-256, big-endian u64 length, bytes). Every blob is
//!    hashed as it is written and must be one the manifest announced, with
//!    the announced size. Small blobs of a batch are stored together in packs
//!    (one object per ~8 MiB, not one per file); a batch is made durable
//!    before its blobs are recorded.
//!    A large missing file can instead go chunk by chunk, so that content
//!    the server already holds is not sent again: the client lists the
//!    file's content-defined chunks (`POST /uploads/{id}/blobs/{sha256}/chunks`,
//!    answered with the ones missing), sends those
//!    (`PUT /uploads/{id}/chunks/{sha256}`), then asks the server to assemble
//!    the file (`POST /uploads/{id}/blobs/{sha256}/assemble`), which reads
//!    the chunks back and checks the whole against the file's SHA-256.
//! 3. `POST /uploads/{id}/finish` makes all files visible in one transaction,
//!    and fails if any content is missing.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::TryStreamExt;
use satchel_db::UploadNeeds;
use satchel_model::api::{
    BlobsStored, ChunkList, ChunksMissing, CreateUpload, JobContext, UploadCreated, UploadFinished,
};
use satchel_model::frames::{parse_blob_header, BLOB_FRAME_HEADER};
use satchel_model::{names, path};
use satchel_store::pack::{PACK_ENTRY_MAX, PACK_MIN_BLOBS, PACK_TARGET};
use satchel_store::{Digest, Durability};
use std::sync::atomic::Ordering;
use tokio::io::AsyncReadExt;
use tokio_util::io::StreamReader;

use super::check_id;
use crate::access::{Acting, Caller};
use crate::error::ApiError;
use crate::extract::{ChunkListBody, Json, Path};
use crate::AppState;

/// Frames of a batch up to this size are read into memory (one at a time
/// per request) before they are stored; larger ones stream. The CLI sends
/// files up to this size in batches.
const BUFFERED_FRAME_MAX: u64 = 1024 * 1024;

/// Checks an artifact lifetime: 1 second to 100 years.
pub(super) fn validate_expiry(secs: Option<u64>) -> Result<(), ApiError> {
    match secs {
        Some(s) if s == 0 || s > 100 * 365 * 86_400 => Err(ApiError::bad_request(
            "expire_in_secs must be between 1 second and 100 years",
        )),
        _ => Ok(()),
    }
}

/// Checks a branch and commit: at most 1024 bytes, no control characters.
pub(super) fn validate_branch_commit(
    branch: Option<&str>,
    commit: Option<&str>,
) -> Result<(), ApiError> {
    for (what, v) in [("branch", branch), ("commit", commit)] {
        if let Some(v) = v {
            if v.len() > 1024 || v.chars().any(char::is_control) {
                return Err(ApiError::bad_request(format!(
                    "{what} is over 1024 bytes or has control characters"
                )));
            }
        }
    }
    Ok(())
}
const MAX_TEXT: usize = 4096;

/// Checks a job context's keys and numbers.
pub(super) fn validate_context(c: &JobContext) -> Result<(), ApiError> {
    names::validate_key("pipeline", &c.pipeline)?;
    names::validate_key("job", &c.job)?;
    if let Some(s) = &c.stage {
        names::validate_key("stage", s)?;
    }
    if let Some(s) = &c.step {
        names::validate_key("step", s)?;
    }
    if let Some(b) = &c.build {
        names::validate_key("build id", b)?;
    }
    if c.run == 0 || c.run > i64::MAX as u64 {
        return Err(ApiError::bad_request("run numbers start at 1"));
    }
    if c.attempt == 0 {
        return Err(ApiError::bad_request("attempts start at 1"));
    }
    validate_branch_commit(c.branch.as_deref(), c.commit.as_deref())?;
    Ok(())
}

/// Checks an upload manifest before anything is stored: context, names,
/// paths, digests, sizes and text fields.
pub fn validate_manifest(req: &CreateUpload, limits: &crate::Limits) -> Result<(), ApiError> {
    validate_context(&req.context)?;
    validate_expiry(req.expire_in_secs)?;
    if let Some(n) = &req.name {
        names::validate_artifact_name(n)?;
    }
    if req.replace && (req.name.as_deref().is_none_or(|n| n == "default") || !req.exclusive) {
        return Err(ApiError::bad_request(
            "`replace` needs an artifact name and `exclusive` (it swaps a named artifact of the run)",
        ));
    }
    if req.files.is_empty() {
        return Err(ApiError::bad_request("an upload needs at least one file"));
    }
    if req.files.len() > limits.files_per_upload {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "an upload may hold at most {} files (satchel serve --max-files-per-upload); split it ({} given)",
                limits.files_per_upload,
                req.files.len()
            ),
        ));
    }
    for f in &req.files {
        path::validate(&f.path)?;
        if f.path.len() > limits.path_bytes {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                format!(
                    "{:?} is {} bytes long; this server takes paths of at most {} bytes (satchel serve --max-path-bytes)",
                    f.path,
                    f.path.len(),
                    limits.path_bytes
                ),
            ));
        }
        Digest::from_hex(&f.sha256).map_err(|_| {
            ApiError::bad_request(format!("{:?}: sha256 must be 64 hex characters", f.path))
        })?;
        if f.sha256.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::bad_request(format!(
                "{:?}: sha256 must be lowercase hex",
                f.path
            )));
        }
        if f.size > i64::MAX as u64 {
            return Err(ApiError::bad_request(format!(
                "{:?}: size is too large",
                f.path
            )));
        }
        if let Some(ct) = &f.content_type {
            if ct.is_empty() || ct.len() > 255 || ct.chars().any(char::is_control) {
                return Err(ApiError::bad_request(format!(
                    "{:?}: invalid content type",
                    f.path
                )));
            }
        }
        for v in [&f.source_path, &f.glob].into_iter().flatten() {
            if v.len() > MAX_TEXT || v.contains('\0') {
                return Err(ApiError::bad_request(format!(
                    "{:?}: source path or glob is too long or has NUL",
                    f.path
                )));
            }
        }
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/uploads",
    tag = "uploads",
    summary = "Announce a manifest; the answer lists the content still missing",
    request_body = CreateUpload,
    responses((status = 201, description = "The upload and what to send", body = UploadCreated), crate::openapi::Errors)
)]
pub(super) async fn create(
    State(s): State<AppState>,
    caller: Caller,
    Json(mut req): Json<CreateUpload>,
) -> Result<(StatusCode, axum::Json<UploadCreated>), ApiError> {
    validate_manifest(&req, &s.limits)?;
    caller
        .write(&s, &req.context.pipeline, &Acting::of(&req.context))
        .await?;
    if caller.is_job_token() {
        // The run's branch and commit are the runner's to say: a job must
        // not give its run a branch that a rule's condition trusts.
        (req.context.branch, req.context.commit) = (None, None);
    }
    req.expire_in_secs = req.expire_in_secs.or(s.default_expire_secs);
    // A scoped token sends what its organization has not: naming a
    // digest is no key to other organizations' content.
    let home = caller.token().map(|t| (t.org.as_str(), t.cluster.as_str()));
    let plan =
        s.db.create_upload_proving(&req, &s.limits.quotas, home)
            .await?;
    // Replacing deletes: the caller must be allowed to delete each artifact
    // finishing would replace (chosen by the create, under the run's lock),
    // else the upload is given up before anything is sent.
    for id in &plan.replaces {
        let allowed = match s.db.get_artifact(id).await {
            Ok(a) => {
                caller
                    .delete(&s, &a.producer.pipeline, &Acting::producer(&a.producer))
                    .await
            }
            Err(e) => Err(e.into()),
        };
        if let Err(e) = allowed {
            if let Err(abort) = s.db.abort_upload(&plan.upload_id).await {
                tracing::warn!("giving up upload {}: {abort}", plan.upload_id);
            }
            return Err(e);
        }
    }
    // What the client need not send: each content the server holds, once.
    let missing: std::collections::HashSet<&str> =
        plan.missing.iter().map(String::as_str).collect();
    let mut counted = std::collections::HashSet::new();
    let held: u64 = req
        .files
        .iter()
        .filter(|f| !missing.contains(f.sha256.as_str()) && counted.insert(f.sha256.as_str()))
        .map(|f| f.size)
        .sum();
    s.metrics
        .dedup_bytes
        .fetch_add(held, std::sync::atomic::Ordering::Relaxed);
    Ok((
        StatusCode::CREATED,
        axum::Json(UploadCreated {
            upload_id: plan.upload_id,
            artifact_id: plan.artifact_id,
            artifact_name: plan.artifact_name,
            missing: plan.missing,
            already_present: plan.already_present,
        }),
    ))
}

/// The upload `id`, if the caller may write as its job.
async fn authorize_upload(
    s: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<UploadNeeds, ApiError> {
    check_id("upload", id)?;
    let needs = s.db.upload_needs(id).await?;
    let p = &needs.producer;
    caller.note(format!("upload={id}"));
    let acting = Acting {
        run: Some(p.run),
        job: Some((p.job.clone(), p.attempt)),
    };
    caller.write(s, &p.pipeline, &acting).await?;
    Ok(needs)
}

async fn open_upload(s: &AppState, caller: &Caller, id: &str) -> Result<UploadNeeds, ApiError> {
    let needs = authorize_upload(s, caller, id).await?;
    if needs.state != satchel_model::api::UploadState::Uploading {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("upload {id} is {}; it takes no more content", needs.state),
        ));
    }
    Ok(needs)
}

fn expected_size(needs: &UploadNeeds, hex: &str) -> Result<u64, ApiError> {
    needs.blobs.get(hex).copied().ok_or_else(|| {
        ApiError::bad_request(format!(
            "content {hex} is not part of this upload's manifest"
        ))
    })
}

fn body_reader(body: Body) -> impl tokio::io::AsyncRead + Unpin + Send {
    StreamReader::new(body.into_data_stream().map_err(std::io::Error::other))
}

#[utoipa::path(
    put,
    path = "/uploads/{id}/blobs/{sha256}",
    tag = "uploads",
    summary = "Send one missing file's bytes",
    params(("id" = String, Path, description = "Upload id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$"), ("sha256" = String, Path, description = "SHA-256 of the whole file, 64 lowercase hex characters", pattern = "^[0-9a-f]{64}$")),
    request_body(content = inline(crate::openapi::Binary), content_type = "application/octet-stream"),
    responses((status = 201, description = "Stored", body = BlobsStored), crate::openapi::Errors)
)]
pub(super) async fn put_blob(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, hex)): Path<(String, String)>,
    body: Body,
) -> Result<(StatusCode, axum::Json<BlobsStored>), ApiError> {
    let needs = open_upload(&s, &caller, &id).await?;
    let digest = Digest::from_hex(&hex)?;
    let hex = digest.to_hex();
    let size = expected_size(&needs, &hex)?;
    // Announced to GC until recorded; no lock is held while the body streams.
    let mut writing = s.blob_gate.writer();
    writing.add(&hex).await?;
    let mut reader = body_reader(body);
    s.store
        .put(&digest, size, &mut reader, Durability::Sync)
        .await?;
    let mut extra = [0u8; 1];
    if reader.read(&mut extra).await.unwrap_or(0) != 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "size_mismatch",
            format!("body for {hex} is longer than the announced {size} bytes"),
        ));
    }
    s.db.record_blobs_for(&id, &[(hex, size)]).await?;
    drop(writing);
    Ok((
        StatusCode::CREATED,
        axum::Json(BlobsStored {
            stored: 1,
            bytes: size,
        }),
    ))
}

/// Checks a chunk list against the manifest's size for `hex`: sizes add up,
/// each chunk is 1 byte to the store's maximum, digests are hex.
fn check_chunk_list(
    needs: &UploadNeeds,
    hex: &str,
    list: &[(u64, Digest)],
) -> Result<(u64, Vec<(u32, Digest)>), ApiError> {
    let size = expected_size(needs, hex)?;
    let max = satchel_store::chunked::MAX_CHUNK as u64;
    if list.is_empty() || list.len() as u64 > size / 1024 + 1 {
        return Err(ApiError::bad_request(format!(
            "a chunk list for {size} bytes needs between 1 and {} chunks",
            size / 1024 + 1
        )));
    }
    let mut out = Vec::with_capacity(list.len());
    let mut total = 0u64;
    for &(size, d) in list {
        if size == 0 || size > max {
            return Err(ApiError::bad_request(format!(
                "chunk {} has {size} bytes; chunks hold 1 to {max}",
                d.to_hex()
            )));
        }
        total += size;
        out.push((size as u32, d));
    }
    if total != size {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "size_mismatch",
            format!("the chunks of {hex} add up to {total} bytes; the manifest says {size}"),
        ));
    }
    Ok((size, out))
}

#[utoipa::path(
    post,
    path = "/uploads/{id}/blobs/{sha256}/chunks",
    tag = "uploads",
    summary = "Which chunks of a large file the server lacks",
    params(("id" = String, Path, description = "Upload id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$"), ("sha256" = String, Path, description = "SHA-256 of the whole file, 64 lowercase hex characters", pattern = "^[0-9a-f]{64}$")),
    request_body(content(
        (ChunkList = "application/json"),
        (inline(crate::openapi::Binary) = "application/vnd.satchel.chunk-list")
    ), description = "The file's chunks in order: JSON, or binary records of 36 bytes (size: u32 big-endian, SHA-256)"),
    responses((status = 200, description = "The indexes of the missing chunks", body = ChunksMissing), crate::openapi::Errors)
)]
pub(super) async fn chunks_missing(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, hex)): Path<(String, String)>,
    ChunkListBody(list): ChunkListBody,
) -> Result<axum::Json<ChunksMissing>, ApiError> {
    let needs = open_upload(&s, &caller, &id).await?;
    let hex = Digest::from_hex(&hex)?.to_hex();
    let (_, chunks) = check_chunk_list(&needs, &hex, &list)?;
    if needs.owed.contains(&hex) {
        // Owed content is proven by sending it whole (every chunk
        // missing makes the client do so), never assembled from chunks
        // someone else stored.
        return Ok(axum::Json(ChunksMissing {
            missing: (0..chunks.len()).collect(),
        }));
    }
    let digests: Vec<Digest> = chunks.iter().map(|(_, d)| *d).collect();
    let missing = s.store.missing_chunks(&digests).await?;
    let held: u64 = chunks
        .iter()
        .zip(&missing)
        .filter(|(_, m)| !**m)
        .map(|((len, _), _)| u64::from(*len))
        .sum();
    s.metrics
        .dedup_bytes
        .fetch_add(held, std::sync::atomic::Ordering::Relaxed);
    Ok(axum::Json(ChunksMissing {
        missing: missing
            .iter()
            .enumerate()
            .filter(|(_, m)| **m)
            .map(|(i, _)| i)
            .collect(),
    }))
}

#[utoipa::path(
    put,
    path = "/uploads/{id}/chunks/{sha256}",
    tag = "uploads",
    summary = "Send one chunk",
    params(("id" = String, Path, description = "Upload id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$"), ("sha256" = String, Path, description = "SHA-256 of the chunk")),
    request_body(content = inline(crate::openapi::Binary), content_type = "application/octet-stream"),
    responses((status = 201, description = "Stored", body = BlobsStored), crate::openapi::Errors)
)]
pub(super) async fn put_chunk(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, hex)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, axum::Json<BlobsStored>), ApiError> {
    open_upload(&s, &caller, &id).await?;
    let digest = Digest::from_hex(&hex)?;
    let n = body.len() as u64;
    s.store.put_chunk(&digest, body).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(BlobsStored {
            stored: 1,
            bytes: n,
        }),
    ))
}

#[utoipa::path(
    post,
    path = "/uploads/{id}/blobs/{sha256}/assemble",
    tag = "uploads",
    summary = "Assemble a file from its chunks",
    params(("id" = String, Path, description = "Upload id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$"), ("sha256" = String, Path, description = "SHA-256 of the whole file, 64 lowercase hex characters", pattern = "^[0-9a-f]{64}$")),
    request_body(content(
        (ChunkList = "application/json"),
        (inline(crate::openapi::Binary) = "application/vnd.satchel.chunk-list")
    ), description = "The file's chunks in order: JSON, or binary records of 36 bytes (size: u32 big-endian, SHA-256)"),
    responses((status = 201, description = "Stored", body = BlobsStored), crate::openapi::Errors)
)]
pub(super) async fn assemble(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, hex)): Path<(String, String)>,
    ChunkListBody(list): ChunkListBody,
) -> Result<(StatusCode, axum::Json<BlobsStored>), ApiError> {
    let needs = open_upload(&s, &caller, &id).await?;
    let digest = Digest::from_hex(&hex)?;
    let hex = digest.to_hex();
    let (size, chunks) = check_chunk_list(&needs, &hex, &list)?;
    if needs.owed.contains(&hex) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "send_whole",
            format!(
                "this upload must send the content of {hex} itself: PUT /uploads/{id}/blobs/{hex} (it is held for others only, and chunks prove nothing)"
            ),
        ));
    }
    let mut writing = s.blob_gate.writer();
    writing.add(&hex).await?;
    s.store.assemble(&digest, size, &chunks).await?;
    s.db.record_blobs_for(&id, &[(hex, size)]).await?;
    drop(writing);
    Ok((
        StatusCode::CREATED,
        axum::Json(BlobsStored {
            stored: 1,
            bytes: size,
        }),
    ))
}

/// The small blobs of one batch on their way into packs.
///
/// Invariant: a pack buffer (a permit of [`AppState::pack_buffers`]) is
/// held only while blobs wait in `pending`, and never longer than
/// [`crate::PACK_HOLD`] (or what the server was told) while the client is being waited for: at that deadline
/// what has arrived is written out (a smaller pack, or single blobs) and
/// the buffer goes back. So a slow or stalled client holds at most one
/// frame of its own memory, never a shared buffer, and other batches go
/// on.
struct Packer {
    /// The batch's announcements to GC: small blobs are announced together
    /// when they are written, every other blob before it is stored.
    writing: crate::gate::Writing,
    pending: Vec<(Digest, Bytes)>,
    bytes: usize,
    /// Whether this batch wrote a full pack already (its tail then goes
    /// into a pack too, however small).
    packed: bool,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When the held buffer must be given back if the client sends
    /// nothing more: [`AppState::pack_hold`] after its last bytes, and
    /// never later than `held_until`.
    deadline: Option<tokio::time::Instant>,
    /// The latest the held buffer is given back, however steadily the
    /// client sends ([`crate::PACK_HOLD_MAX`] after it was taken).
    held_until: Option<tokio::time::Instant>,
}

impl Packer {
    fn new(writing: crate::gate::Writing) -> Packer {
        Packer {
            writing,
            pending: Vec::new(),
            bytes: 0,
            packed: false,
            permit: None,
            deadline: None,
            held_until: None,
        }
    }

    /// Adds a received blob, taking a buffer first if none is held.
    async fn push(&mut self, s: &AppState, digest: Digest, data: Bytes) -> Result<(), ApiError> {
        if self.permit.is_none() {
            let permit = match s.pack_buffers.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    s.counters.pack_buffer_waits.fetch_add(1, Ordering::Relaxed);
                    s.pack_buffers
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| ApiError::internal("the server is shutting down"))?
                }
            };
            self.permit = Some(permit);
            s.counters
                .pack_buffers_taken
                .fetch_add(1, Ordering::Relaxed);
            let now = tokio::time::Instant::now();
            let until = now + crate::PACK_HOLD_MAX.max(s.pack_hold);
            self.held_until = Some(until);
            self.deadline = Some((now + s.pack_hold).min(until));
        }
        self.bytes += data.len();
        self.pending.push((digest, data));
        if self.bytes >= PACK_TARGET {
            self.write(s).await?;
            self.packed = true;
        }
        Ok(())
    }

    /// Writes what is pending (one pack, or single blobs when there are
    /// too few for a pack and no full pack was written yet) and gives the
    /// buffer back.
    async fn write(&mut self, s: &AppState) -> Result<(), ApiError> {
        let pending = std::mem::take(&mut self.pending);
        let digests: Vec<String> = pending.iter().map(|(d, _)| d.to_hex()).collect();
        self.writing.add_all(&digests).await?;
        if pending.is_empty() {
        } else if self.packed || pending.len() >= PACK_MIN_BLOBS {
            s.store.put_packed(pending).await?;
        } else {
            for (digest, data) in pending {
                let size = data.len() as u64;
                s.store
                    .put(&digest, size, &mut &data[..], Durability::Deferred)
                    .await?;
            }
        }
        self.bytes = 0;
        self.permit = None;
        self.deadline = None;
        self.held_until = None;
        Ok(())
    }

    /// Fills `buf` from the client as far as the body goes (returns how
    /// much), writing out the pending blobs if the hold deadline passes
    /// first.
    async fn read(
        &mut self,
        s: &AppState,
        reader: &mut (impl tokio::io::AsyncRead + Unpin),
        buf: &mut [u8],
    ) -> Result<usize, ApiError> {
        let mut got = 0;
        while got < buf.len() {
            let read = match self.deadline {
                Some(at) => tokio::select! {
                    // `read` is cancel-safe: nothing is lost if the
                    // deadline wins.
                    r = reader.read(&mut buf[got..]) => r,
                    () = tokio::time::sleep_until(at) => {
                        self.write(s).await?;
                        continue;
                    }
                },
                None => reader.read(&mut buf[got..]).await,
            };
            let n = read.map_err(|e| ApiError::bad_request(format!("reading batch body: {e}")))?;
            if n == 0 {
                break;
            }
            got += n;
            // Bytes arrived: a client that keeps sending keeps its buffer
            // (a busy machine may deliver a pack slowly), up to held_until.
            if let (Some(_), Some(until)) = (self.deadline, self.held_until) {
                self.deadline = Some((tokio::time::Instant::now() + s.pack_hold).min(until));
            }
        }
        Ok(got)
    }
}

#[utoipa::path(
    post,
    path = "/uploads/{id}/blobs",
    tag = "uploads",
    summary = "Send many missing files in one framed body",
    params(("id" = String, Path, description = "Upload id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$")),
    request_body(content = inline(crate::openapi::Binary), content_type = "application/octet-stream"),
    responses((status = 200, description = "Stored", body = BlobsStored), crate::openapi::Errors)
)]
pub(super) async fn put_batch(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<axum::Json<BlobsStored>, ApiError> {
    let needs = open_upload(&s, &caller, &id).await?;
    // Each blob is announced to GC before it is stored, until recorded
    // (the packer holds the announcements).
    let mut reader = body_reader(body);
    let mut stored = Vec::new();
    let mut bytes = 0u64;
    let mut packer = Packer::new(s.blob_gate.writer());
    loop {
        let mut header = [0u8; BLOB_FRAME_HEADER];
        let got = packer.read(&s, &mut reader, &mut header).await?;
        if got == 0 {
            break;
        }
        if got < header.len() {
            return Err(ApiError::bad_request(
                "batch body ends inside a frame header",
            ));
        }
        let (digest, size) = parse_blob_header(&header);
        let digest = Digest(digest);
        let hex = digest.to_hex();
        let expected = expected_size(&needs, &hex)?;
        if size != expected {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "size_mismatch",
                format!("frame for {hex} says {size} bytes; the manifest says {expected}"),
            ));
        }
        if size > PACK_ENTRY_MAX {
            packer.writing.add(&hex).await?;
        }
        if size <= BUFFERED_FRAME_MAX {
            // The frame is read before a buffer is taken, so waiting for
            // the client holds none. Small blobs go into packs: a handful
            // of objects per batch, not one per file; larger ones are
            // objects of their own, written as they come.
            let mut data = vec![0u8; size as usize];
            if packer.read(&s, &mut reader, &mut data).await? < data.len() {
                return Err(ApiError::bad_request(format!(
                    "batch body ends inside the content of {hex}"
                )));
            }
            if size <= PACK_ENTRY_MAX {
                packer.push(&s, digest, Bytes::from(data)).await?;
            } else {
                s.store
                    .put(&digest, size, &mut &data[..], Durability::Deferred)
                    .await?;
            }
        } else {
            // Streamed straight from the client: no buffer may wait on it.
            if packer.permit.is_some() {
                packer.write(&s).await?;
            }
            s.store
                .put(&digest, size, &mut reader, Durability::Deferred)
                .await?;
        }
        bytes += size;
        stored.push((hex, size));
    }
    packer.write(&s).await?;
    s.store.flush().await?;
    s.db.record_blobs_for(&id, &stored).await?;
    drop(packer);
    Ok(axum::Json(BlobsStored {
        stored: stored.len() as u64,
        bytes,
    }))
}

#[utoipa::path(
    post,
    path = "/uploads/{id}/finish",
    tag = "uploads",
    summary = "Finish an upload: its files become visible together",
    params(("id" = String, Path, description = "Upload id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The artifact", body = UploadFinished), crate::openapi::Errors)
)]
pub(super) async fn finish(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<UploadFinished>, ApiError> {
    authorize_upload(&s, &caller, &id).await?;
    Ok(axum::Json(s.db.finish_upload(&id).await?))
}

#[utoipa::path(
    post,
    path = "/uploads/{id}/abort",
    tag = "uploads",
    summary = "Give an upload up",
    params(("id" = String, Path, description = "Upload id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 204, description = "Given up"), crate::openapi::Errors)
)]
pub(super) async fn abort(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize_upload(&s, &caller, &id).await?;
    s.db.abort_upload(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
