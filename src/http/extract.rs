//! Request parsing shared by every route: JSON bodies with precise errors (415, 413,
//! 400, 422 naming the field), the command context from headers, and `If-Match`.

use actix_web::http::header;
use actix_web::HttpMessage;
use actix_web::{web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::eventstore::IdempotencyRecord;
use crate::pipeline::CommandContext;

/// A JSON request body: content type checked, size limited.
pub struct JsonBody {
    pub bytes: web::Bytes,
}

impl JsonBody {
    /// Deserialises into `T` in one pass: a syntax error is 400 `malformed_json`, a type
    /// or missing-field error names the field (422).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(&self.bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            if matches!(
                e.inner().classify(),
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            ) {
                return ApiError::MalformedJson(format!("body is not valid JSON: {}", e.inner()));
            }
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            let message = e.into_inner().to_string();
            // serde names a missing field only in the message.
            let field = if field.is_empty() {
                message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split('`').next())
                    .unwrap_or("body")
                    .to_owned()
            } else {
                field
            };
            ApiError::validation(field, message)
        })?;
        de.end()
            .map_err(|e| ApiError::MalformedJson(format!("body is not valid JSON: {e}")))?;
        Ok(value)
    }
}

impl FromRequest for JsonBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        let limit = req
            .app_data::<web::Data<AppState>>()
            .map(|s| s.settings.body_limit)
            .unwrap_or(1 << 20);
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            if !is_json {
                return Err(ApiError::UnsupportedMediaType("application/json"));
            }
            let bytes = bytes.await.map_err(|e| {
                if let Some(actix_web::error::PayloadError::Overflow) =
                    e.as_error::<actix_web::error::PayloadError>()
                {
                    ApiError::PayloadTooLarge(limit)
                } else {
                    ApiError::MalformedJson(format!("cannot read the body: {e}"))
                }
            })?;
            Ok(JsonBody { bytes })
        })
    }
}

const MAX_KEY: usize = 200;

/// Headers that shape a command: tenant, actor, correlation id, idempotency key.
pub fn command_context(req: &HttpRequest, body: &[u8]) -> Result<CommandContext, ApiError> {
    let (mut ctx, key) = streamed_command_context(req)?;
    if let Some(key) = key {
        let mut record = key;
        record.1.update(body);
        ctx.idempotency = Some(IdempotencyRecord {
            key: record.0,
            request_hash: record.1.finalize().to_vec(),
        });
    }
    Ok(ctx)
}

/// [`command_context`] for a request whose body streams: the idempotency key, if any,
/// with the hash of the request so far; the body completes it as it is read
/// (`imports::StreamedKey`).
pub fn streamed_command_context(
    req: &HttpRequest,
) -> Result<(CommandContext, Option<(String, Sha256)>), ApiError> {
    let mut ctx = CommandContext::new(tenant(req)?);
    if let Some(a) = actor(req)? {
        ctx.actor = a;
    }
    if let Some(c) = header_str(req, "x-correlation-id")? {
        ctx.correlation_id = Uuid::parse_str(c).map_err(|_| ApiError::InvalidHeader {
            header: "X-Correlation-Id",
            message: "must be a UUID".into(),
        })?;
    }
    if let Some(key) = header_str(req, "idempotency-key")? {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(ApiError::InvalidHeader {
                header: "Idempotency-Key",
                message: "must be 1 to 200 characters".into(),
            });
        }
        // The key stands for this exact request: method, path and query, the version it
        // expects (`If-Match`) and body.
        let mut h = Sha256::new();
        h.update(req.method().as_str().as_bytes());
        h.update(b" ");
        h.update(req.path().as_bytes());
        if !req.query_string().is_empty() {
            h.update(b"?");
            h.update(req.query_string().as_bytes());
        }
        h.update(b"\nIf-Match: ");
        h.update(header_str(req, "if-match")?.unwrap_or("").as_bytes());
        h.update(b"\n");
        return Ok((ctx, Some((key.to_owned(), h))));
    }
    Ok((ctx, None))
}

/// Who sends the request, as commands record it (`CommandContext::actor`): the API key
/// (`key:NAME`, whatever a header says), else `X-Actor`; `None`: anonymous.
pub fn actor(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    if let Some(p) = req.extensions().get::<super::auth::Principal>() {
        return Ok(Some(format!("key:{}", p.name)));
    }
    Ok(header_str(req, "x-actor")?.map(|a| a.chars().take(MAX_KEY).collect()))
}

/// `?min_position=`: the query parameter every read takes (read-your-writes).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct ReadParams {
    /// Wait (up to about 5 s) until the read model reflects this global position (a
    /// position never handed out: 422).
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// `min_position`, checked.
pub fn min_position(p: Option<i64>) -> Result<Option<i64>, ApiError> {
    match p {
        Some(p) if p < 0 => Err(ApiError::validation("min_position", "must not be negative")),
        p => Ok(p),
    }
}

/// The tenant from `X-Tenant-Id` (default `default`), checked against `[a-z0-9_-]{1,64}`.
pub fn tenant(req: &HttpRequest) -> Result<String, ApiError> {
    // With API keys, the key decided the tenant (`http::auth`).
    if let Some(p) = req.extensions().get::<super::auth::Principal>() {
        return Ok(p.tenant.clone());
    }
    header_tenant(req)
}

/// `X-Tenant-Id` as sent (`default` without it), checked.
pub fn header_tenant(req: &HttpRequest) -> Result<String, ApiError> {
    let Some(t) = header_str(req, "x-tenant-id")? else {
        return Ok("default".into());
    };
    if !crate::pipeline::is_tenant(t) {
        return Err(ApiError::InvalidHeader {
            header: "X-Tenant-Id",
            message: "must match [a-z0-9_-]{1,64}".into(),
        });
    }
    Ok(t.to_owned())
}

/// `If-Match: "3"` (weak `W/"3"` and bare `3` accepted) → Some(3).
pub fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let Some(v) = header_str(req, "if-match")? else {
        return Ok(None);
    };
    let v = v.trim().trim_start_matches("W/").trim_matches('"');
    v.parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::InvalidHeader {
            header: "If-Match",
            message: "must be the expected version as an ETag, e.g. \"3\"".into(),
        })
}

fn header_str<'a>(req: &'a HttpRequest, name: &'static str) -> Result<Option<&'a str>, ApiError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::InvalidHeader {
                header: name,
                message: "must be visible ASCII".into(),
            }),
    }
}

/// The media type of the request body (`Content-Type` without parameters, lowercase).
pub fn media_type(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
}

/// A streamed request body as an `AsyncRead` (for `imports::CsvRows` and NDJSON readers),
/// cut off after `limit` bytes with `imports::BodyTooLarge` (413 through
/// `imports::body_error`): bulk routes take `CLOUDLENS_IMPORT_LIMIT`, not the JSON
/// routes' `CLOUDLENS_BODY_LIMIT`. Chunks are forwarded from actix's task, so the reader
/// may run in a `Send` future.
pub fn streamed_body(
    mut payload: web::Payload,
    limit: u64,
) -> impl tokio::io::AsyncRead + Unpin + Send + 'static {
    use futures::{SinkExt, StreamExt};
    let (mut tx, rx) = futures::channel::mpsc::channel(8);
    actix_web::rt::spawn(async move {
        let mut read = 0_u64;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|c| {
                    read += c.len() as u64;
                    if read > limit {
                        Err(std::io::Error::other(crate::imports::BodyTooLarge(limit)))
                    } else {
                        Ok(c)
                    }
                });
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    tokio_util::io::StreamReader::new(rx)
}

/// A page's `limit`: 1..=500, `default` when absent; else 422 naming it.
pub fn page_limit(limit: Option<i64>, default: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 500"));
    }
    Ok(limit)
}

/// A page's `cursor` as `db::cursor` encoded it; else 422 naming it.
pub fn page_cursor<T: DeserializeOwned>(cursor: Option<&str>) -> Result<Option<T>, ApiError> {
    cursor
        .map(|c| {
            crate::db::cursor::decode(c)
                .ok_or_else(|| ApiError::validation("cursor", "is not a cursor from this API"))
        })
        .transpose()
}

/// An optional time parameter (RFC 3339), or 422 naming it.
pub fn time_param(
    name: &str,
    value: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    value
        .map(|t| {
            crate::tagging::rules::parse_date(t)
                .ok_or_else(|| ApiError::validation(name, "is not a time (RFC 3339)"))
        })
        .transpose()
}

/// 201 for a command that created something: its version as the ETag, `Location: path`.
pub fn created(path: &str, version: i64, body: impl serde::Serialize) -> actix_web::HttpResponse {
    let mut response = with_etag(actix_web::http::StatusCode::CREATED, version, body);
    if let Ok(location) = path.parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// A command's answer with its version as the ETag (what `If-Match` takes back).
pub fn with_etag(
    status: actix_web::http::StatusCode,
    version: i64,
    body: impl serde::Serialize,
) -> actix_web::HttpResponse {
    actix_web::HttpResponse::build(status)
        .insert_header((header::ETAG, format!("\"{version}\"")))
        .json(body)
}

/// The answer to a create-or-replace command: 201 when it created the stream (version 1),
/// else 200; ETag = version.
pub fn saved(result: crate::pipeline::CommandResult) -> actix_web::HttpResponse {
    let status = if result.version == 1 {
        actix_web::http::StatusCode::CREATED
    } else {
        actix_web::http::StatusCode::OK
    };
    with_etag(status, result.version, result)
}
