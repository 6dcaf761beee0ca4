//! One error type for every HTTP answer that is not a success, rendered as RFC 7807
//! `application/problem+json` with a stable `code`. Internal causes go to the log, never
//! to the client.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::budgets::BudgetError;
use crate::eventstore::StoreError;
use crate::pipeline::CommandError;

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
    /// 404 `not_found`.
    #[error("{0} not found")]
    NotFound(String),
    /// 409 `version_conflict`: the stream is not at the version the command expected.
    #[error("{0}")]
    Conflict(String),
    /// 409 `rebuild_in_progress`.
    #[error("{0}")]
    RebuildInProgress(String),
    /// 413 `payload_too_large`.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415 `unsupported_media_type`.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 422 `idempotency_key_reused`: the key was used with a different request.
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// 503 `database_unavailable` with Retry-After.
    #[error("the database is unavailable")]
    Unavailable(String),
    /// 503 `read_model_behind` with Retry-After: `min_position` not reached in time.
    #[error("read models have not reached position {0} yet")]
    ReadModelBehind(i64),
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
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidHeader { .. } => "invalid_header",
            ApiError::Validation { .. } => "validation_failed",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "version_conflict",
            ApiError::RebuildInProgress(_) => "rebuild_in_progress",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::Unavailable(_) => "database_unavailable",
            ApiError::ReadModelBehind(_) => "read_model_behind",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::Validation { field, .. } => Some(field.clone()),
            ApiError::InvalidHeader { header, .. } => Some((*header).to_owned()),
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

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::InvalidHeader { .. } => StatusCode::BAD_REQUEST,
            ApiError::Validation { .. } | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::RebuildInProgress(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) | ApiError::ReadModelBehind(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
        let problem = Problem {
            problem_type: format!("https://cloudlens.dev/problems/{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            code: self.code(),
            detail: self.to_string(),
            field: self.field(),
        };
        let mut builder = HttpResponse::build(status);
        builder.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            builder.insert_header((header::RETRY_AFTER, "1"));
        }
        builder.json(problem)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => ApiError::Unavailable(cause),
            StoreError::Conflict => {
                ApiError::Conflict("the stream was changed by another command".into())
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::from(e).into()
    }
}

impl From<BudgetError> for ApiError {
    fn from(e: BudgetError) -> Self {
        match e {
            BudgetError::Invalid { field, message } => ApiError::Validation { field, message },
            BudgetError::NotFound => ApiError::NotFound("budget".into()),
            BudgetError::AlreadyExists => ApiError::Conflict("budget already exists".into()),
        }
    }
}

impl<E> From<CommandError<E>> for ApiError
where
    E: std::error::Error + Into<ApiError>,
{
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Domain(d) => d.into(),
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
