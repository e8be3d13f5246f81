//! Request extractors whose rejections go through the error boundary, so a
//! malformed body, path or query string gets the same JSON error as any
//! other bad input.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use satchel_model::api::ChunkList;
use satchel_model::frames::{parse_chunk_list, CHUNK_LIST_TYPE, CHUNK_RECORD};
use satchel_store::Digest;

use crate::error::ApiError;

/// The whole body, within the route's limit (over it: 413).
async fn body_bytes<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request body is too large: {}", e.body_text()),
                )
            } else {
                ApiError::bad_request(format!("cannot read request body: {}", e.body_text()))
            }
        })
}

/// A large file's chunk list, `(size, sha256)` in file order: binary
/// records ([`satchel_model::frames`]) when the content type is
/// [`CHUNK_LIST_TYPE`], else the JSON form ([`ChunkList`]). A cut record
/// or a digest that is not hex: 400.
pub struct ChunkListBody(pub Vec<(u64, Digest)>);

impl<S: Send + Sync> FromRequest<S> for ChunkListBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let binary = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(CHUNK_LIST_TYPE));
        if !binary {
            let Json(list) = Json::<ChunkList>::from_request(req, state).await?;
            let mut out = Vec::with_capacity(list.chunks.len());
            for c in list.chunks {
                out.push((c.size, Digest::from_hex(&c.sha256)?));
            }
            return Ok(ChunkListBody(out));
        }
        let bytes = body_bytes(req, state).await?;
        let records = parse_chunk_list(&bytes).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_chunk_list",
                format!(
                    "a binary chunk list ({CHUNK_LIST_TYPE}) is whole records of {CHUNK_RECORD} \
                     bytes (size: u32 big-endian, then the chunk's SHA-256); this body has {} bytes",
                    bytes.len()
                ),
            )
        })?;
        Ok(ChunkListBody(
            records
                .map(|(size, d)| (u64::from(size), Digest(d)))
                .collect(),
        ))
    }
}

/// A JSON body: an object, as every body of the API is. Invalid UTF-8,
/// bad JSON, another shape (serde would take an array for a struct): 400;
/// over the body limit: 413.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the JSON body must be an object (`{…}`)",
            ));
        }
        serde_json::from_slice(&bytes).map(Json).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("invalid JSON body: {e}"),
            )
        })
    }
}

/// Path parameters.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| {
                ApiError::bad_request(format!("invalid path parameter: {}", e.body_text()))
            })
    }
}

/// Query-string parameters.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
    }
}
