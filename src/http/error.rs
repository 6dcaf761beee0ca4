//! One error type for every HTTP answer that is not a success, rendered as RFC 7807
//! `application/problem+json` with a stable `code`. Internal causes go to the log, never
//! to the client.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::QueryError;
use crate::eventstore::StoreError;
use crate::imports::ImportError;
use crate::pipeline::{CommandError, DomainError, Rejection};
use crate::projections::wait::WaitError;

/// The media type of every error body (RFC 7807).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The table of error codes: variant → HTTP status → stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `malformed_json`: the body is not JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// 400 `invalid_header`: a header such as If-Match or X-Tenant-Id is not valid.
    #[error("{header}: {message}")]
    InvalidHeader {
        header: &'static str,
        message: String,
    },
    /// 422 `validation_failed`: the request is well-formed but a field is invalid.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    /// 401 `unauthenticated`, with `WWW-Authenticate: Bearer`: no key, or one that is not
    /// valid (unknown, revoked, malformed).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// 403 `forbidden`: the key's role or tenant does not allow the request.
    #[error("{0}")]
    Forbidden(String),
    /// 403 `not_owner`: the command changes something its actor does not own (a shared
    /// dashboard of someone else).
    #[error("{0}")]
    NotOwner(String),
    /// 429 `rate_limited`, with `Retry-After` (whole seconds, at least 1).
    #[error("too many requests; retry after {0} s")]
    RateLimited(u64),
    /// 404 `not_found`.
    #[error("{0} not found")]
    NotFound(String),
    /// 409 `version_conflict`: the stream is not at the version the command expected.
    #[error("{0}")]
    Conflict(String),
    /// 409 `already_exists`: the command would create what exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// 409 `command_refused`: the aggregate's state does not allow the command.
    #[error("{0}")]
    Refused(String),
    /// 409 `rebuild_in_progress`.
    #[error("{0}")]
    RebuildInProgress(String),
    /// 405 `method_not_allowed`, with `Allow` listing the methods the path has.
    #[error("method not allowed; this path allows {allow}")]
    MethodNotAllowed { allow: String },
    /// 422 `position_not_issued`: `min_position` lies beyond the last position handed out.
    #[error("position {requested} was never handed out; the last one is {last}")]
    PositionNotIssued { requested: i64, last: i64 },
    /// 413 `payload_too_large`.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415 `unsupported_media_type`; names the media types the route takes.
    #[error("expected Content-Type: {0}")]
    UnsupportedMediaType(&'static str),
    /// 400 `malformed_body`: a streamed body could not be read.
    #[error("{0}")]
    MalformedBody(String),
    /// 422 `invalid_row`: a row of an uploaded file is invalid; nothing was applied.
    #[error("row {row}, column {column}: {message}")]
    InvalidRow {
        row: i64,
        column: String,
        message: String,
    },
    /// 422 `idempotency_key_reused`: the key was used with a different request.
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// 503 `database_unavailable` with Retry-After.
    #[error("the database is unavailable")]
    Unavailable(String),
    /// 503 `read_model_behind` with Retry-After: `min_position` not reached in time.
    #[error("read models have not reached position {0} yet")]
    ReadModelBehind(i64),
    /// 503 `encryption_unavailable`: sensitive values arrived but the server has no master
    /// key (`CLOUDLENS_MASTER_KEY`); no Retry-After, a retry needs the configuration fixed.
    #[error("sensitive attributes need a master key; the server has none (CLOUDLENS_MASTER_KEY)")]
    EncryptionUnavailable,
    /// 503 `vector_search_unavailable`: a vector or hybrid search, but this deployment
    /// cannot serve one (no pgvector, vector search off, or its index still building).
    #[error("vector search is unavailable: {0}")]
    VectorSearchUnavailable(String),
    /// 503 `query_timeout`: a scanning query ran past `CLOUDLENS_SCAN_TIMEOUT_MS`.
    #[error("the query ran too long and was cancelled; narrow the range or the grouping")]
    QueryTimeout,
    /// 503 `consumer_group_busy` with Retry-After: a consumer group's poll, ack or view
    /// ran past its statement time limit or waited too long for a lock (another poll of
    /// the group stuck); nothing was changed.
    #[error("the consumer group is busy: a statement or a lock wait ran past its limit; retry")]
    GroupBusy,
    /// 422 `too_many_points`: a query would return more points than the server's limit;
    /// the detail names a bucket that would fit.
    #[error("{message}")]
    TooManyPoints {
        field: &'static str,
        message: String,
    },
    /// 500 `internal_error`; the cause is logged only.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The problem document (RFC 7807) every error response carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    /// Stable, machine-readable error code.
    pub code: &'static str,
    pub detail: String,
    /// The offending field (validation errors) or header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `position_not_issued`: the last position handed out so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_position: Option<i64>,
    /// `invalid_row`: the row (data rows count from 1; a CSV header is row 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<i64>,
    /// The request's trace id (32 hex digits) when traces are on, to find its logs and
    /// spans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidHeader { .. } => "invalid_header",
            ApiError::Validation { .. } => "validation_failed",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotOwner(_) => "not_owner",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "version_conflict",
            ApiError::AlreadyExists(_) => "already_exists",
            ApiError::Refused(_) => "command_refused",
            ApiError::RebuildInProgress(_) => "rebuild_in_progress",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PositionNotIssued { .. } => "position_not_issued",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::MalformedBody(_) => "malformed_body",
            ApiError::InvalidRow { .. } => "invalid_row",
            ApiError::TooManyPoints { .. } => "too_many_points",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::Unavailable(_) => "database_unavailable",
            ApiError::ReadModelBehind(_) => "read_model_behind",
            ApiError::QueryTimeout => "query_timeout",
            ApiError::GroupBusy => "consumer_group_busy",
            ApiError::EncryptionUnavailable => "encryption_unavailable",
            ApiError::VectorSearchUnavailable(_) => "vector_search_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::Validation { field, .. } => Some(field.clone()),
            ApiError::InvalidHeader { header, .. } => Some((*header).to_owned()),
            ApiError::PositionNotIssued { .. } => Some("min_position".to_owned()),
            ApiError::InvalidRow { column, .. } => Some(column.clone()),
            ApiError::TooManyPoints { field, .. } => Some((*field).to_owned()),
            _ => None,
        }
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl ApiError {
    /// The problem document of this error, for answers that carry errors inside a
    /// success (a dashboard widget's error); `error_response` sends the same one.
    pub fn problem(&self) -> Problem {
        let status = self.status_code();
        Problem {
            problem_type: format!("https://cloudlens.dev/problems/{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            code: self.code(),
            detail: self.to_string(),
            field: self.field(),
            last_position: match self {
                ApiError::PositionNotIssued { last, .. } => Some(*last),
                _ => None,
            },
            row: match self {
                ApiError::InvalidRow { row, .. } => Some(*row),
                _ => None,
            },
            trace_id: crate::telemetry::current_trace_id(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::MalformedBody(_)
            | ApiError::InvalidHeader { .. } => StatusCode::BAD_REQUEST,
            ApiError::Validation { .. }
            | ApiError::InvalidRow { .. }
            | ApiError::IdempotencyKeyReused
            | ApiError::TooManyPoints { .. }
            | ApiError::PositionNotIssued { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::NotOwner(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_)
            | ApiError::AlreadyExists(_)
            | ApiError::Refused(_)
            | ApiError::RebuildInProgress(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_)
            | ApiError::ReadModelBehind(_)
            | ApiError::QueryTimeout
            | ApiError::GroupBusy
            | ApiError::EncryptionUnavailable
            | ApiError::VectorSearchUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        match self {
            ApiError::Internal(cause) => tracing::error!(error = ?cause, "internal error"),
            ApiError::Unavailable(cause) => tracing::warn!(%cause, "database unavailable"),
            _ => {}
        }
        let problem = self.problem();
        let mut builder = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE
            && !matches!(self, ApiError::EncryptionUnavailable)
        {
            builder.insert_header((header::RETRY_AFTER, "1"));
        }
        if let ApiError::MethodNotAllowed { allow } = self {
            builder.insert_header((header::ALLOW, allow.as_str()));
        }
        if let ApiError::Unauthenticated(_) = self {
            builder.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let ApiError::RateLimited(secs) = self {
            builder.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        match serde_json::to_vec(&problem) {
            Ok(body) => builder.content_type(PROBLEM_JSON).body(body),
            Err(_) => builder.finish(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => ApiError::Unavailable(cause),
            StoreError::Conflict => {
                ApiError::Conflict("the stream was changed by another command".into())
            }
            StoreError::BadValue(m) => bad_value(m),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// A value of the request the database cannot hold or compare (no single field to name).
fn bad_value(message: String) -> ApiError {
    ApiError::validation(
        "request",
        format!("a value of the request was refused: {message}"),
    )
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::BadRow {
                row,
                column,
                message,
            } => ApiError::InvalidRow {
                row,
                column,
                message,
            },
            ImportError::Body(m) => ApiError::MalformedBody(m),
            ImportError::Busy(m) => ApiError::Refused(m),
            ImportError::TooLarge(crate::imports::BodyTooLarge(limit)) => {
                ApiError::PayloadTooLarge(usize::try_from(limit).unwrap_or(usize::MAX))
            }
            ImportError::Store(s) => s.into(),
            ImportError::Codec(c) => ApiError::Internal(c.into()),
            ImportError::Crypto(crate::crypto::CryptoError::NoMasterKey) => {
                ApiError::EncryptionUnavailable
            }
            ImportError::Crypto(e) => ApiError::Internal(e.into()),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Unavailable(cause) => ApiError::Unavailable(cause),
            QueryError::Failed(e) => ApiError::Internal(e.into()),
            QueryError::BadValue(m) => bad_value(m),
            QueryError::Timeout => ApiError::QueryTimeout,
        }
    }
}

impl From<WaitError> for ApiError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Behind(p) => ApiError::ReadModelBehind(p),
            WaitError::NeverIssued { requested, last } => {
                ApiError::PositionNotIssued { requested, last }
            }
            WaitError::Store(s) => s.into(),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Invalid { field, message } => ApiError::Validation { field, message },
            Rejection::NotFound { what } => ApiError::NotFound(what),
            Rejection::AlreadyExists { what } => ApiError::AlreadyExists(what),
            Rejection::Refused { message } => ApiError::Refused(message),
            Rejection::NotOwner { message } => ApiError::NotOwner(message),
        }
    }
}

impl<E: DomainError> From<CommandError<E>> for ApiError {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Domain(d) => d.rejection().into(),
            CommandError::Conflict { expected, actual } => {
                ApiError::Conflict(match (expected, actual) {
                    (Some(x), Some(a)) => {
                        format!("expected version {x}, but the stream is at version {a}")
                    }
                    _ => "the stream was changed by another command; reload and retry".into(),
                })
            }
            CommandError::IdempotencyMismatch => ApiError::IdempotencyKeyReused,
            CommandError::Store(s) => s.into(),
            CommandError::Codec(c) => ApiError::Internal(c.into()),
        }
    }
}
