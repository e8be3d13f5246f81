//! The one HTTP error boundary.
//!
//! Policy: handlers return `Result<_, ApiError>` and never build error
//! responses themselves. Every error leaves as the JSON body
//! `{"error": {"code", "message", "candidates"?}}` with a status that says
//! whose fault it is: bad input 400, missing or wrong token 401, unknown
//! thing 404, conflict with stored state 409, too large 413, unsatisfiable
//! range 416, no space left for the content or the database 507 (naming
//! what is full, never a path). Anything else is logged once here and answered 500 without
//! internal detail beyond the message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use satchel_db::DbError;
use satchel_model::api::{ErrorBody, ErrorDetail, FileInfo};
use satchel_store::StoreError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// Candidates of an ambiguous query.
    pub candidates: Option<Vec<FileInfo>>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// The content store was full: what failed writes left is to be freed
    /// ([`Full`]).
    pub store_full: bool,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            candidates: None,
            retry_after: None,
            store_full: false,
        }
    }

    /// 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 with code `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 with code `internal`.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

/// Marks a response that found the content store full (507). The
/// request layer then asks for what failed writes left to be freed
/// ([`crate::maintenance::release_soon`]). A full metadata database does
/// not ask: on PostgreSQL content is elsewhere, and an embedded SQLite
/// beside local content is kept writable by the reserve, so content writes
/// find the disk full first.
#[derive(Debug, Clone, Copy)]
pub struct Full;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                candidates: self.candidates,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if self.store_full {
            resp.extensions_mut().insert(Full);
        }
        resp
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        match e {
            DbError::NotFound(m) => ApiError::not_found(m),
            DbError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            DbError::Invalid(m) => ApiError::bad_request(m),
            DbError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            DbError::SizeMismatch(m) => ApiError::new(StatusCode::BAD_REQUEST, "size_mismatch", m),
            DbError::Limit(m) => ApiError::new(StatusCode::CONFLICT, "limit_exceeded", m),
            DbError::Full(m) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", m)
            }
            // Its text may name the database's host or file: logged only.
            other => {
                tracing::error!("metadata database: {other}");
                ApiError::internal("the metadata database failed (the server log has the details)")
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if !e.is_client_error() && !matches!(e, StoreError::Retry(_)) {
            crate::metrics::storage_error();
        }
        match &e {
            StoreError::DigestMismatch { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "digest_mismatch", e.to_string())
            }
            StoreError::SizeMismatch { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "size_mismatch", e.to_string())
            }
            StoreError::BadRange { .. } => ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                e.to_string(),
            ),
            StoreError::Corrupt { .. } | StoreError::Undecodable(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "integrity_error",
                e.to_string(),
            ),
            StoreError::ChunkMissing(_) => {
                ApiError::new(StatusCode::CONFLICT, "chunk_missing", e.to_string())
            }
            StoreError::NotFound(_) => ApiError::internal(format!(
                "stored content is missing: {e}; the content store lost data the metadata refers to"
            )),
            // The store's address and the failed key stay in the log.
            StoreError::Backend(_) => {
                tracing::error!("{e}");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "storage_unavailable",
                    "the object store failed or could not be reached, also when the request was \
                     retried (the server log has the details): nothing was recorded; retry later",
                )
            }
            StoreError::Retry(_) => {
                let mut a = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "retry", e.to_string());
                a.retry_after = Some(1);
                a
            }
            StoreError::Io { source, .. } if satchel_store::is_full(source) => ApiError {
                store_full: true,
                ..ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    satchel_store::CONTENT_FULL,
                )
            },
            _ if e.is_client_error() => ApiError::bad_request(e.to_string()),
            // A server path stays in the log.
            StoreError::Io { .. } => {
                tracing::error!("{e}");
                ApiError::internal(
                    "the content store failed to read or write (the server log has the details)",
                )
            }
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<satchel_model::glob::GlobError> for ApiError {
    fn from(e: satchel_model::glob::GlobError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_glob", e.to_string())
    }
}

impl From<satchel_model::path::PathError> for ApiError {
    fn from(e: satchel_model::path::PathError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string())
    }
}

impl From<satchel_model::names::NameError> for ApiError {
    fn from(e: satchel_model::names::NameError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
    }
}

impl From<satchel_model::query::Ambiguous> for ApiError {
    fn from(e: satchel_model::query::Ambiguous) -> ApiError {
        let message = e.to_string();
        ApiError {
            candidates: Some(e.candidates),
            ..ApiError::new(StatusCode::BAD_REQUEST, "ambiguous_query", message)
        }
    }
}
