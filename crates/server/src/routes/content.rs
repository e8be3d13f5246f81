//! Downloads: one file with HTTP Range, or many small files in one framed
//! response (`POST /files/content`: for each requested id in order, a
//! big-endian u64 length then the bytes), so 10,000 small files are not
//! 10,000 requests.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use satchel_model::api::{FetchFiles, FileInfo};
use satchel_model::frames::{file_frame_header, FILE_FRAME_HEADER};
use satchel_store::{Digest, StoreError};

use super::check_id;
use crate::access::Caller;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::AppState;

/// Most files one batch request may ask for, and their total size.
const BATCH_FILES: usize = 10_000;
const BATCH_BYTES: u64 = 256 * 1024 * 1024;

/// The requested range of a file of `size` bytes (see
/// [`satchel_model::range`]); `Ok(None)`: serve all.
fn parse_range(h: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = h else { return Ok(None) };
    satchel_model::range::parse(v.as_bytes(), size).map_err(|e| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            e.to_string(),
        )
    })
}

/// `Content-Disposition` naming `path`'s file: `kind` is `attachment`
/// (save it) or `inline` (show it).
pub(crate) fn disposition(kind: &'static str, path: &str) -> HeaderValue {
    let name = satchel_model::path::split(path).1;
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("{kind}; filename=\"{ascii}\""))
        .unwrap_or_else(|_| HeaderValue::from_static(kind))
}

#[utoipa::path(
    get,
    path = "/files/{id}/content",
    tag = "files",
    summary = "One file's bytes (a `Range` header is honoured)",
    params(("id" = String, Path, description = "File id (32 lowercase hex characters)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The file's bytes", content_type = "*/*", body = inline(crate::openapi::Binary)), (status = 206, description = "The range asked for", content_type = "*/*", body = inline(crate::openapi::Binary)), crate::openapi::Errors)
)]
pub(super) async fn file_content(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_id("file", &id)?;
    let file = s.db.get_files(std::slice::from_ref(&id)).await?.remove(0);
    caller.note(format!("artifact={} file={id}", file.artifact_id));
    caller.read(&s, &file.producer.pipeline).await?;
    let digest = Digest::from_hex(&file.sha256)?;
    let range = match parse_range(headers.get(header::RANGE), file.size) {
        Err(mut e) => {
            e.message = format!("{} ({})", e.message, file.path);
            let mut r = e.into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", file.size)).expect("ascii"),
            );
            return Ok(r);
        }
        Ok(r) => r,
    };
    let (status, start, end) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b),
        None => (StatusCode::OK, 0, file.size),
    };
    let stream = s.store.get(&digest, Some(start..end)).await?;
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&file.content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{}\"", file.sha256)).expect("hex"),
    );
    h.insert(
        "x-checksum-sha256",
        HeaderValue::from_str(&file.sha256).expect("hex"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        disposition("attachment", &file.path),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{}", end - 1, file.size))
                .expect("ascii"),
        );
    }
    Ok(resp)
}

/// The whole content of one blob as a download named after `path`.
pub(super) async fn stream_blob(
    s: &AppState,
    sha256: &str,
    size: u64,
    content_type: &str,
    path: &str,
) -> Result<Response, ApiError> {
    let digest = Digest::from_hex(sha256)?;
    let stream = s.store.get(&digest, None).await?;
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        "x-checksum-sha256",
        HeaderValue::from_str(sha256).expect("hex"),
    );
    h.insert(header::CONTENT_DISPOSITION, disposition("attachment", path));
    Ok(resp)
}

/// One file for viewing in a browser: its own content type, shown in
/// place (`inline`), under its own name when saved.
pub(crate) async fn stream_blob_inline(s: &AppState, f: &FileInfo) -> Result<Response, ApiError> {
    let mut r = stream_blob(s, &f.sha256, f.size, &f.content_type, &f.path).await?;
    r.headers_mut()
        .insert(header::CONTENT_DISPOSITION, disposition("inline", &f.path));
    Ok(r)
}

#[utoipa::path(
    post,
    path = "/files/content",
    tag = "files",
    summary = "Many files' bytes in one framed stream",
    request_body = satchel_model::api::FetchFiles,
    responses((status = 200, description = "The files, framed (see docs/api.md)", content_type = "application/octet-stream", body = inline(crate::openapi::Binary)), crate::openapi::Errors)
)]
pub(super) async fn files_content(
    State(s): State<AppState>,
    caller: Caller,
    Json(req): Json<FetchFiles>,
) -> Result<Response, ApiError> {
    if req.ids.len() > BATCH_FILES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "at most {BATCH_FILES} files per batch ({} asked)",
                req.ids.len()
            ),
        ));
    }
    for id in &req.ids {
        check_id("file", id)?;
    }
    let files = s.db.get_files(&req.ids).await?;
    // One check per pipeline, one audit resource per artifact.
    let mut pipelines: Vec<&str> = files.iter().map(|f| f.producer.pipeline.as_str()).collect();
    pipelines.sort_unstable();
    pipelines.dedup();
    let mut artifacts: Vec<&str> = files.iter().map(|f| f.artifact_id.as_str()).collect();
    artifacts.sort_unstable();
    artifacts.dedup();
    for a in artifacts {
        caller.note(format!("artifact={a}"));
    }
    for p in pipelines {
        caller.read(&s, p).await?;
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    if total > BATCH_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a batch may carry at most {BATCH_BYTES} bytes ({total} asked); fetch large files one by one"),
        ));
    }
    let mut parts = Vec::with_capacity(files.len());
    for f in &files {
        parts.push((Digest::from_hex(&f.sha256)?, f.size));
    }
    let store = s.store.clone();
    // Open several files ahead (in order) so small reads overlap.
    let mut opened = futures_util::stream::iter(parts)
        .map(move |(d, size)| {
            let store = store.clone();
            async move { (d, size, store.get(&d, None).await) }
        })
        .buffered(16);
    // The first file is opened before the response starts, so a store that
    // cannot serve (a missing key, corruption, an unreachable bucket) gets
    // a proper error status; later failures can only cut the body short,
    // and are logged.
    let first = opened.next().await;
    if let Some((_, _, Err(e))) = first {
        return Err(e.into());
    }
    let frame =
        |(d, size, opened): (Digest, u64, Result<satchel_store::ByteStream, StoreError>)| {
            let header = file_frame_header(size);
            let head = futures_util::stream::once(async move {
                Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&header))
            });
            match opened {
                Ok(s) => head.chain(s).boxed(),
                Err(e) => {
                    tracing::error!("batch download: content {d} cannot be read: {e}");
                    head.chain(futures_util::stream::once(async move {
                        Err(std::io::Error::other(e.to_string()))
                    }))
                    .boxed()
                }
            }
        };
    let body = futures_util::stream::iter(first)
        .chain(opened)
        .map(frame)
        .flatten();
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp.headers_mut().insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(total + (FILE_FRAME_HEADER * files.len()) as u64),
    );
    Ok(resp)
}
