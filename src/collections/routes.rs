//! HTTP endpoints of collections and their items.
//!
//! Declarations are commands (`pipeline::execute`, events). Item writes go to
//! `collection_items` through `store`, after the collection's declaration is read from its
//! stream (the write side: a collection declared a moment ago takes items at once, with
//! its TTL). Item reads go through the tenant's read connections (`queries`).

use actix_web::http::header;
use actix_web::{delete, get, post, put, web, FromRequest, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::aggregate::{check_name, Collection, Declaration};
use super::commands::{CollectionCommand, CollectionDraft};
use super::items::{self, ItemData, ItemDraft, Refused};
use super::metrics::{label, COLLS};
use super::projection::COLLECTIONS;
use super::queries::{self, CollectionList, CollectionView, ItemPage, ItemView, ListQuery, Sort};
use super::store::{self, Stored};
use super::stream_id;
use crate::eventstore::StoreError;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{
    command_context, if_match, media_type, min_position, saved, streamed_body,
    streamed_command_context, tenant, time_param, with_etag, JsonBody, ReadParams,
};
use crate::http::AppState;
use crate::imports::{body_error, ImportError, StreamedKey};
use crate::pipeline::{self, CommandResult, Expect};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(declare)
        .service(list_collections)
        .service(get_collection)
        .service(write_items)
        .service(list_items)
        .service(get_item)
        .service(put_item)
        .service(delete_item)
        .service(run_purge);
}

fn unknown(name: &str) -> ApiError {
    ApiError::NotFound(format!("collection {name:?}"))
}

fn invalid(r: Refused) -> ApiError {
    ApiError::validation(r.field, r.message)
}

/// The collection as item writes see it: its stream's last declaration (no projector in
/// between), else the seed's default.
async fn writable(state: &AppState, tenant: &str, name: &str) -> Result<Declaration, ApiError> {
    if check_name(name).is_err() {
        return Err(unknown(name));
    }
    let loaded =
        pipeline::load::<Collection>(&state.store, tenant, stream_id(tenant, name)).await?;
    loaded
        .aggregate
        .effective(name)
        .ok_or_else(|| unknown(name))
}

/// A path segment percent-encoded (a key may hold any printable character).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn item_view(s: Stored) -> ItemView {
    ItemView {
        key: s.key,
        data: s.data,
        created_at: s.created_at,
        updated_at: s.updated_at,
        expires_at: s.expires_at,
    }
}

fn observe_write(kind: &str, collection: &str, items: i64, started: std::time::Instant) {
    COLLS.writes.with_label_values(&[kind, "ok"]).inc();
    COLLS
        .items_written
        .with_label_values(&[label(collection)])
        .inc_by(u64::try_from(items).unwrap_or(0));
    COLLS
        .write_duration
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
}

fn rejected<T>(kind: &str, outcome: Result<T, ApiError>) -> Result<T, ApiError> {
    if outcome.is_err() {
        COLLS.writes.with_label_values(&[kind, "rejected"]).inc();
    }
    outcome
}

// --- collections ------------------------------------------------------------------------

/// Declare a collection, or change one (the seed's `system_logs`, `configurations` and
/// `task_status_cache` exist without a declaration; declaring one overrides it). 201 for
/// the first declaration, else 200; ETag = version. A TTL change applies to items written
/// afterwards: stored items keep the expiry they got when they were written.
#[utoipa::path(put, path = "/api/v1/collections/{name}", request_body = CollectionDraft,
    params(("name" = String, Path, description = "[a-z][a-z0-9_]{0,62}"),
           ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 201, body = CommandResult),
              (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
#[put("/api/v1/collections/{name}")]
pub async fn declare(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: CollectionDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let name = name.into_inner();
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let (result, _) = pipeline::execute::<Collection>(
        &state.store,
        &ctx,
        "DeclareCollection",
        stream_id(&ctx.tenant_id, &name),
        expect,
        CollectionCommand::Declare { name, draft },
        &(),
    )
    .await?;
    Ok(saved(result))
}

/// The tenant's collections: the declared ones and the seed's.
#[utoipa::path(get, path = "/api/v1/collections",
    params(ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CollectionList), (status = 400, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/collections")]
pub async fn list_collections(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let conn = state
        .read_model(&tenant, COLLECTIONS, min_position(params.min_position)?)
        .await?;
    Ok(HttpResponse::Ok().json(queries::collections(&conn, &tenant).await?))
}

/// One collection (a seed collection's default when it was not declared). ETag = version.
#[utoipa::path(get, path = "/api/v1/collections/{name}",
    params(("name" = String, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CollectionView), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/collections/{name}")]
pub async fn get_collection(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let conn = state
        .read_model(&tenant, COLLECTIONS, min_position(params.min_position)?)
        .await?;
    let view = queries::collection(&conn, &tenant, &name)
        .await?
        .ok_or_else(|| unknown(&name))?;
    Ok(with_etag(
        actix_web::http::StatusCode::OK,
        view.version,
        view,
    ))
}

// --- items ------------------------------------------------------------------------------

/// What a batch wrote.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemsWritten {
    pub collection: String,
    /// Items (lines) written; a key given twice counts twice and keeps its last item.
    pub written: i64,
}

/// Write items. `application/json`: one item `{key?, data}`, answered with 201 and the
/// item as stored (an existing key is replaced and its TTL starts again). With
/// `application/x-ndjson`: one item per line, up to 100,000, written all or nothing (a bad
/// line refuses the batch with 422 `invalid_row` naming the line and the field; within a
/// batch the last line of a key wins), answered with 200 and the count. A key is 1 to 200
/// printable characters without `/`; absent, the item gets a new UUIDv7. `data` is a JSON
/// object of up to 1 MiB. Items are not events (ADR 0023). With an `Idempotency-Key`, a
/// retry of the same request (method, path, body) is answered as the first was and
/// writes nothing; the same key with another request is 422 `idempotency_key_reused`.
#[utoipa::path(post, path = "/api/v1/collections/{name}/items",
    request_body(content((ItemDraft = "application/json"), (String = "application/x-ndjson")),
                 description = "one item; or NDJSON, one item per line"),
    params(("name" = String, Path),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = ItemsWritten, description = "the NDJSON batch was written"),
              (status = 201, body = ItemView, description = "the item was written"),
              (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
#[post("/api/v1/collections/{name}/items")]
pub async fn write_items(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let tenant = tenant(&req)?;
    let name = name.into_inner();
    let media = media_type(&req).unwrap_or_default();
    let (_, key) = streamed_command_context(&req)?;
    let key = key.map(|(k, hash)| StreamedKey::new(k, hash));
    let pool = state.store.pool();
    let earlier = match &key {
        Some(k) => store::find_key(pool, &tenant, &k.key).await?,
        None => None,
    };
    if media == "application/x-ndjson" {
        let body = streamed_body(payload, state.settings.import_limit);
        if let (Some(k), Some(earlier)) = (&key, earlier) {
            return replay(&name, k, earlier, Box::new(body)).await;
        }
        let body: BodyReader = match &key {
            Some(k) => Box::new(k.reader(body)),
            None => Box::new(body),
        };
        let written = async {
            let collection = writable(&state, &tenant, &name).await?;
            Ok::<_, ApiError>(
                store::write_batch(pool, &tenant, &collection, body, key.as_ref()).await,
            )
        }
        .await;
        let written = match (written, &key) {
            (Ok(Err(ImportError::Store(StoreError::IdempotencyKeyTaken))), Some(k)) => {
                return taken(&state, &tenant, &name, k).await;
            }
            (Ok(r), _) => r.map_err(ApiError::from),
            (Err(e), _) => Err(e),
        };
        let written = rejected("batch", written)?;
        observe_write("batch", &name, written, started);
        return Ok(HttpResponse::Ok().json(ItemsWritten {
            collection: name,
            written,
        }));
    }
    if media != "application/json"
        && !(media.starts_with("application/") && media.ends_with("+json"))
    {
        return Err(ApiError::UnsupportedMediaType(
            "application/json or application/x-ndjson",
        ));
    }
    let body = rejected(
        "item",
        JsonBody::from_request(&req, &mut payload.into_inner()).await,
    )?;
    if let (Some(k), Some(earlier)) = (&key, earlier) {
        return replay(&name, k, earlier, Box::new(&body.bytes[..])).await;
    }
    if let Some(k) = &key {
        hash_body(k, Box::new(&body.bytes[..])).await?;
    }
    let stored = async {
        let draft: ItemDraft = body.parse()?;
        let item = items::check(draft.key, &draft.data).map_err(invalid)?;
        let collection = writable(&state, &tenant, &name).await?;
        let record = key.as_ref().map(StreamedKey::record);
        Ok::<_, ApiError>(store::put(pool, &tenant, &collection, &item, record.as_ref()).await)
    }
    .await;
    let stored = match (stored, &key) {
        (Ok(Err(StoreError::IdempotencyKeyTaken)), Some(k)) => {
            return taken(&state, &tenant, &name, k).await;
        }
        (Ok(r), _) => r.map_err(ApiError::from),
        (Err(e), _) => Err(e),
    };
    let stored = rejected("item", stored)?;
    observe_write("item", &name, 1, started);
    Ok(created_item(&name, stored))
}

/// A request body to read: streamed (NDJSON) or the bytes of a JSON body.
type BodyReader<'a> = Box<dyn tokio::io::AsyncRead + Unpin + Send + 'a>;

/// Reads the rest of `body` into `key`'s request hash.
async fn hash_body(key: &StreamedKey, body: BodyReader<'_>) -> Result<(), ApiError> {
    tokio::io::copy(&mut key.reader(body), &mut tokio::io::sink())
        .await
        .map_err(|e| ApiError::from(body_error(&e)))?;
    Ok(())
}

/// The answer of the write an earlier request under the same key made: only for the same
/// request (its whole body hashed), else 422 `idempotency_key_reused`.
async fn replay(
    name: &str,
    key: &StreamedKey,
    earlier: store::Earlier,
    rest: BodyReader<'_>,
) -> Result<HttpResponse, ApiError> {
    hash_body(key, rest).await?;
    if key.record().request_hash != earlier.request_hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    Ok(match earlier.outcome {
        store::Outcome::Batch(written) => HttpResponse::Ok().json(ItemsWritten {
            collection: name.to_owned(),
            written,
        }),
        store::Outcome::Item(stored) => created_item(name, stored),
    })
}

/// A concurrent request under the same key committed first (this one wrote nothing):
/// its answer.
async fn taken(
    state: &AppState,
    tenant: &str,
    name: &str,
    key: &StreamedKey,
) -> Result<HttpResponse, ApiError> {
    let earlier = store::find_key(state.store.pool(), tenant, &key.key)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("idempotency key vanished")))?;
    replay(name, key, earlier, Box::new(tokio::io::empty())).await
}

/// 201 with the item as stored and its `Location`.
fn created_item(name: &str, stored: Stored) -> HttpResponse {
    let location = format!(
        "/api/v1/collections/{}/items/{}",
        segment(name),
        segment(&stored.key)
    );
    HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(item_view(stored))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemsParams {
    /// A JSON object the items' data must contain, e.g. `{"level":"ERROR"}` (any field,
    /// declared or not).
    pub filter: Option<String>,
    /// Created at or after (RFC 3339).
    pub from: Option<String>,
    /// Created before (RFC 3339).
    pub to: Option<String>,
    /// `created_at`, `updated_at`, `key` or a declared index field; `-` before it for
    /// descending. Default `-created_at` (newest first).
    pub sort: Option<String>,
    /// 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (with the same sort).
    pub cursor: Option<String>,
    /// Wait until the `collections` read model reflects this position (a collection
    /// declared a moment ago, and its sort fields).
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// A page of the collection's live items, newest first unless `sort` says otherwise,
/// keyset paginated.
#[utoipa::path(get, path = "/api/v1/collections/{name}/items",
    params(("name" = String, Path), ItemsParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = ItemPage), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/collections/{name}/items")]
pub async fn list_items(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    params: web::Query<ItemsParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let p = params.into_inner();
    let filter: Option<serde_json::Value> = match &p.filter {
        None => None,
        Some(f) => match serde_json::from_str(f) {
            Ok(v @ serde_json::Value::Object(_)) if !items::has_nul(&v) => Some(v),
            _ => {
                return Err(ApiError::validation(
                    "filter",
                    "must be a JSON object (without NUL characters)",
                ))
            }
        },
    };
    let from = time_param("from", p.from.as_deref())?;
    let to = time_param("to", p.to.as_deref())?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation("limit", "must be from 1 to 1,000"));
    }
    let client = state
        .scan(&tenant, &[COLLECTIONS], min_position(p.min_position)?)
        .await?;
    let collection = queries::collection_on(&client, &tenant, &name)
        .await?
        .ok_or_else(|| unknown(&name))?
        .declaration();
    let sort = match p.sort.as_deref() {
        None => Sort::NEWEST,
        Some(s) => Sort::parse(s, &collection).ok_or_else(|| {
            ApiError::validation(
                "sort",
                format!(
                    "must be created_at, updated_at, key or a declared index ({}), with - for descending",
                    collection.indexes.join(", ")
                ),
            )
        })?,
    };
    let after = p
        .cursor
        .as_deref()
        .map(|c| {
            queries::decode_cursor(c, &sort).ok_or_else(|| {
                ApiError::validation("cursor", "is not a cursor of this list and sort")
            })
        })
        .transpose()?;
    let q = ListQuery {
        filter: filter.as_ref(),
        from,
        to,
        sort,
        after,
        limit,
    };
    let started = std::time::Instant::now();
    let page: ItemPage = queries::list(&client, &tenant, &name, &q).await?;
    COLLS
        .read_duration
        .with_label_values(&["list"])
        .observe(started.elapsed().as_secs_f64());
    Ok(HttpResponse::Ok().json(page))
}

/// One live item (an expired one is not found, whether purged yet or not).
#[utoipa::path(get, path = "/api/v1/collections/{name}/items/{key}",
    params(("name" = String, Path), ("key" = String, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = ItemView), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/collections/{name}/items/{key}")]
pub async fn get_item(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let (name, key) = path.into_inner();
    let conn = state
        .read_model(&tenant, COLLECTIONS, min_position(params.min_position)?)
        .await?;
    let started = std::time::Instant::now();
    let found = queries::item(&conn, &tenant, &name, &key).await?;
    COLLS
        .read_duration
        .with_label_values(&["get"])
        .observe(started.elapsed().as_secs_f64());
    match found {
        Some(item) => Ok(HttpResponse::Ok().json(item)),
        // Only a miss asks whether the collection exists, for the answer's detail.
        None => match queries::collection(&conn, &tenant, &name).await? {
            None => Err(unknown(&name)),
            Some(_) => Err(ApiError::NotFound(format!("item {key:?}"))),
        },
    }
}

/// Write the item with this key: 201 when it is new (or had expired), 200 when it
/// replaced a live one; either way its TTL starts again.
#[utoipa::path(put, path = "/api/v1/collections/{name}/items/{key}", request_body = ItemData,
    params(("name" = String, Path), ("key" = String, Path, description = "1 to 200 printable characters, no /"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = ItemView), (status = 201, body = ItemView),
              (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
#[put("/api/v1/collections/{name}/items/{key}")]
pub async fn put_item(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let tenant = tenant(&req)?;
    let (name, key) = path.into_inner();
    let stored = rejected(
        "item",
        async {
            let d: ItemData = body.parse()?;
            let item = items::check(Some(key), &d.data).map_err(invalid)?;
            let collection = writable(&state, &tenant, &name).await?;
            Ok::<_, ApiError>(
                store::put(state.store.pool(), &tenant, &collection, &item, None).await?,
            )
        }
        .await,
    )?;
    observe_write("item", &name, 1, started);
    let mut res = if stored.created() {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(res.json(item_view(stored)))
}

/// Delete an item: 204, or 404 when there is no live item with this key.
#[utoipa::path(delete, path = "/api/v1/collections/{name}/items/{key}",
    params(("name" = String, Path), ("key" = String, Path),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 204, description = "deleted"), (status = 400, body = Problem),
              (status = 404, body = Problem)))]
#[delete("/api/v1/collections/{name}/items/{key}")]
pub async fn delete_item(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let (name, key) = path.into_inner();
    let deleted = rejected(
        "delete",
        async {
            if check_name(&name).is_err() || items::check_key(&key).is_err() {
                return Ok(false);
            }
            Ok::<_, ApiError>(store::delete(state.store.pool(), &tenant, &name, &key).await?)
        }
        .await,
    )?;
    if !deleted {
        return Err(ApiError::NotFound(format!("item {key:?}")));
    }
    COLLS.writes.with_label_values(&["delete", "ok"]).inc();
    Ok(HttpResponse::NoContent().finish())
}

// --- purge (admin) ----------------------------------------------------------------------

/// What one purge did.
#[derive(Debug, Serialize, ToSchema)]
pub struct PurgeRun {
    /// Expired items deleted (every tenant).
    pub purged: i64,
    pub ran_at: DateTime<Utc>,
}

/// Delete expired items of every tenant now (the elected process also does it every
/// `CLOUDLENS_COLLECTIONS_PURGE_INTERVAL_SECONDS`). Expired items are never returned
/// either way; the purge only frees their space. Admin keys only.
#[utoipa::path(post, path = "/api/v1/admin/collections/purge:run",
    responses((status = 200, body = PurgeRun)))]
#[post("/api/v1/admin/collections/purge:run")]
pub async fn run_purge(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let purged = store::purge(state.store.pool()).await?;
    Ok(HttpResponse::Ok().json(PurgeRun {
        purged,
        ran_at: Utc::now(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_percent_encoded_segment() {
        assert_eq!(segment("task-1_a.b~"), "task-1_a.b~");
        assert_eq!(segment("a b/%?#"), "a%20b%2F%25%3F%23");
        assert_eq!(segment("日"), "%E6%97%A5");
    }
}
