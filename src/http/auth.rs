//! Who may do what (ADR 0014): every request is checked against the API keys of the
//! `api_keys` read model before it reaches a route.
//!
//! - **Open until the first key.** A server without any key (a fresh install, the tests)
//!   answers as before: the tenant is `X-Tenant-Id`. Once a key exists, revoked or not,
//!   every request but `/healthz`, `/readyz` and (`CLOUDLENS_METRICS_PUBLIC`) `/metrics`
//!   needs `Authorization: Bearer <key>`: 401 `unauthenticated` without a valid one.
//! - **Roles.** `admin`: everything, any tenant (`X-Tenant-Id` chooses, `default`
//!   without it). `writer`: commands and queries of its tenant. `reader`: `GET`/`HEAD` of
//!   its tenant. `/api/v1/admin/…` is for admin keys only. Otherwise 403 `forbidden`, also
//!   for an `X-Tenant-Id` naming another tenant than the key's.
//! - **Rate limits.** A token bucket per key (`CLOUDLENS_RATE_LIMIT_PER_SECOND`, 1,000 a
//!   second, burst `CLOUDLENS_RATE_LIMIT_BURST`, 2,000; 0 turns it off), and 10 a second
//!   per client address for the checks that cost a read of the log or an argon2id
//!   verification (unknown keys, first uses): 429 `rate_limited` with `Retry-After`.
//! - **Cost.** Keys are checked against an in-memory copy of `api_keys`, reloaded at most
//!   every second (every 100 ms while there is no key); a key it does not know yet is
//!   read from its stream, so a key works as soon as it is issued. The
//!   argon2id verification (tens of milliseconds) runs once per key and process: a key
//!   that verified is remembered by its SHA-256. A revoked key answers 401 from the next
//!   reload on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::access::aggregate::ApiKey;
use crate::access::events::Role;
use crate::access::keys;
use crate::access::metrics::decided;
use crate::access::queries::{keyring, keys_in_log, KeyRecord};
use crate::db::Reader;
use crate::eventstore::EventStore;
use crate::pipeline::EventSourced;
use cqrs_es::Aggregate;

/// How old the copy of the keys may get.
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// The soonest a key the copy does not know triggers another reload.
const RELOAD_FOR_UNKNOWN: Duration = Duration::from_millis(100);

/// The key a request came with, once checked: routes read the tenant and the actor here.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: Uuid,
    pub name: String,
    pub role: Role,
    /// The tenant the request acts in.
    pub tenant: String,
}

#[derive(Default)]
struct Snapshot {
    by_prefix: HashMap<String, Arc<KeyRecord>>,
    loaded_at: Option<Instant>,
}

type Limiter<K> = governor::DefaultKeyedRateLimiter<K>;

/// A token bucket per key: `rate` a second, up to `burst` at once (`None` when 0).
fn limiter<K: std::hash::Hash + Eq + Clone>(rate: u32, burst: u32) -> Option<Limiter<K>> {
    let rate = std::num::NonZeroU32::new(rate)?;
    let burst = std::num::NonZeroU32::new(burst).unwrap_or(rate);
    Some(governor::RateLimiter::keyed(
        governor::Quota::per_second(rate).allow_burst(burst),
    ))
}

/// `Err(429)` once `key` has used its bucket.
fn take<K: std::hash::Hash + Eq + Clone>(l: &Option<Limiter<K>>, key: &K) -> Result<(), ApiError> {
    use governor::clock::Clock;
    match l.as_ref().map(|l| l.check_key(key)) {
        Some(Err(not_until)) => {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            Err(ApiError::RateLimited(wait.as_secs().max(1)))
        }
        _ => Ok(()),
    }
}

/// The keys as this process last read them, the secrets it has verified, and the rate
/// limits: per key, and per client address for keys that cost a lookup or a verification
/// (unknown prefixes, first uses), so guessing keys is slow.
pub struct Keyring {
    /// Once a key was ever issued (the log says so, or `CLOUDLENS_ADMIN_KEY` is set), the
    /// server stays closed, also while the read model is empty (rebuilt, lagging).
    closed: std::sync::atomic::AtomicBool,
    per_key: Option<Limiter<Uuid>>,
    per_address: Option<Limiter<std::net::IpAddr>>,
    snapshot: RwLock<Arc<Snapshot>>,
    reloading: tokio::sync::Mutex<()>,
    verified: Mutex<HashMap<[u8; 32], Uuid>>,
    /// One argon2id verification at a time (19 MiB and tens of ms each): many requests
    /// arriving at once with a new key wait for the first instead of each verifying it.
    verifying: tokio::sync::Mutex<()>,
}

/// Expensive key checks (a read of the log, an argon2id verification) per client address.
const CHECKS_PER_SECOND: u32 = 10;

impl Keyring {
    pub fn new(settings: &crate::config::Settings) -> Self {
        Self {
            closed: settings.admin_key.is_some().into(),
            per_key: limiter(settings.rate_per_second, settings.rate_burst),
            per_address: limiter(CHECKS_PER_SECOND, CHECKS_PER_SECOND * 5),
            snapshot: RwLock::default(),
            reloading: tokio::sync::Mutex::default(),
            verified: Mutex::default(),
            verifying: tokio::sync::Mutex::default(),
        }
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The copy, reloaded when older than `max_age` (one reload at a time; while one
    /// runs, the others go on with the copy they have, unless there is none yet).
    async fn keys(&self, reads: &Reader, max_age: Duration) -> Result<Arc<Snapshot>, ApiError> {
        let current = self.current();
        if current.loaded_at.is_some_and(|t| t.elapsed() < max_age) {
            return Ok(current);
        }
        let _guard = match self.reloading.try_lock() {
            Ok(g) => g,
            Err(_) if current.loaded_at.is_some() => return Ok(current),
            Err(_) => self.reloading.lock().await,
        };
        let current = self.current();
        if current.loaded_at.is_some_and(|t| t.elapsed() < max_age) {
            return Ok(current); // reloaded while this one waited
        }
        let loaded = match reads.get().await {
            Ok(conn) => self.load(&conn).await,
            Err(e) => Err(ApiError::from(e)),
        };
        let records = match loaded {
            Ok(records) => records,
            // The database is away: go on with the keys known, if any.
            Err(e) if current.loaded_at.is_some() => {
                tracing::warn!(error = %e, "cannot reload the API keys; using the last copy");
                return Ok(current);
            }
            Err(e) => return Err(e),
        };
        let by_prefix = records
            .into_iter()
            .map(|k| (k.prefix.clone(), Arc::new(k)))
            .collect();
        let fresh = Arc::new(Snapshot {
            by_prefix,
            loaded_at: Some(Instant::now()),
        });
        if let Ok(mut s) = self.snapshot.write() {
            *s = fresh.clone();
        }
        Ok(fresh)
    }

    /// The keys of the read model; and whether any was ever issued, from the log.
    async fn load(&self, conn: &crate::db::ReadConnection) -> Result<Vec<KeyRecord>, ApiError> {
        let records = keyring(conn).await?;
        use std::sync::atomic::Ordering::Relaxed;
        if !self.closed.load(Relaxed) && (!records.is_empty() || keys_in_log(conn).await?) {
            self.closed.store(true, Relaxed);
        }
        // Buckets of keys and addresses not seen for a while go.
        if let Some(l) = &self.per_key {
            l.retain_recent();
        }
        if let Some(l) = &self.per_address {
            l.retain_recent();
        }
        Ok(records)
    }

    /// Whether the key `id` has not been revoked, from a copy at most `RELOAD_EVERY` old:
    /// responses that last (SSE streams) ask between their chunks. A key the copy does not
    /// know yet (issued since) and a database that cannot be asked count as good.
    pub async fn still_valid(&self, reads: &Reader, id: Uuid) -> bool {
        match self.keys(reads, RELOAD_EVERY).await {
            Ok(s) => !s.by_prefix.values().any(|k| k.id == id && k.revoked),
            Err(_) => true,
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `None` while no key exists (open); else the checked key of `bearer`.
    async fn check(
        &self,
        reads: &Reader,
        store: &EventStore,
        bearer: Option<&str>,
        client: Option<std::net::IpAddr>,
    ) -> Result<Option<Arc<KeyRecord>>, ApiError> {
        let expensive = || match client {
            Some(ip) => take(&self.per_address, &ip),
            None => Ok(()),
        };
        // Open: look more often, so the first key closes the server within ~100 ms.
        let max_age = if self.is_closed() {
            RELOAD_EVERY
        } else {
            RELOAD_FOR_UNKNOWN
        };
        let snapshot = self.keys(reads, max_age).await?;
        if !self.is_closed() {
            return Ok(None);
        }
        let bearer = bearer.ok_or(ApiError::Unauthenticated(
            "this server needs Authorization: Bearer <API key>",
        ))?;
        let invalid = || ApiError::Unauthenticated("the API key is not valid");
        let prefix = keys::prefix_of(bearer).ok_or_else(invalid)?;
        let key = match snapshot.by_prefix.get(prefix) {
            Some(k) => k.clone(),
            // Issued since the last reload (or not projected yet): the log decides.
            None => {
                expensive()?;
                from_log(store, prefix).await?.ok_or_else(invalid)?
            }
        };
        if key.revoked {
            return Err(ApiError::Unauthenticated("the API key was revoked"));
        }
        let digest: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        let known = || {
            self.verified
                .lock()
                .map(|v| v.get(&digest) == Some(&key.id))
                .unwrap_or(false)
        };
        if !known() {
            let _one_at_a_time = self.verifying.lock().await;
            if known() {
                return Ok(Some(key));
            }
            expensive()?;
            let (secret, hash) = (bearer.to_owned(), key.hash.clone());
            let ok = tokio::task::spawn_blocking(move || keys::verify(&secret, &hash))
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
            if !ok {
                return Err(invalid());
            }
            if let Ok(mut v) = self.verified.lock() {
                v.insert(digest, key.id);
            }
        }
        Ok(Some(key))
    }
}

/// The key with `prefix` as its stream says, for a key the copy does not know yet: a key
/// works as soon as it is issued, before the read model has it.
async fn from_log(store: &EventStore, prefix: &str) -> Result<Option<Arc<KeyRecord>>, ApiError> {
    let id = crate::access::key_stream(prefix);
    let mut key = ApiKey::default();
    for e in store.load_stream(ApiKey::STREAM_TYPE, id).await? {
        key.apply(ApiKey::decode(&e).map_err(|e| ApiError::Internal(e.into()))?);
    }
    Ok(key.issued.map(|k| {
        Arc::new(KeyRecord {
            id,
            name: k.name,
            role: k.role,
            tenant: k.tenant,
            prefix: k.prefix,
            hash: k.hash,
            revoked: key.revoked,
        })
    }))
}

/// What `role` of `key_tenant` may do: the tenant the request acts in, or why not.
pub fn decide(
    role: Role,
    key_tenant: &str,
    method: &Method,
    path: &str,
    header_tenant: Option<&str>,
) -> Result<String, ApiError> {
    if role == Role::Admin {
        return Ok(header_tenant.unwrap_or("default").to_owned());
    }
    if path.starts_with("/api/v1/admin/") {
        return Err(ApiError::Forbidden(
            "the admin API takes an admin key".into(),
        ));
    }
    if role == Role::Reader && method != Method::GET && method != Method::HEAD {
        return Err(ApiError::Forbidden("a reader key only reads".into()));
    }
    match header_tenant {
        Some(t) if t != key_tenant => Err(ApiError::Forbidden(format!(
            "the API key belongs to tenant {key_tenant:?}"
        ))),
        _ => Ok(key_tenant.to_owned()),
    }
}

/// Paths that answer without a key.
fn public(path: &str, metrics_public: bool) -> bool {
    matches!(path, "/healthz" | "/readyz") || (metrics_public && path == "/metrics")
}

/// The middleware: checks the key, then hands the request on with its [`Principal`].
/// A refusal is answered here (not returned as an error), so it is rendered inside the
/// request's trace span and counted by the request metrics like any other answer.
pub async fn authenticate<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    // The path as the router matches it (percent-escapes decoded): `/api/v1/%61dmin/…`
    // is the admin API too.
    let path = req.match_info().as_str().to_owned();
    if public(&path, state.settings.metrics_public) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    match principal(&state, &req, &path).await {
        Ok(None) => decided("open"),
        Ok(Some(p)) => {
            decided("granted");
            req.extensions_mut().insert(p);
        }
        Err(e) => {
            decided(e.code());
            return Ok(req.error_response(e).map_into_right_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Who the request is, by its key: `None` while the server is open.
async fn principal(
    state: &AppState,
    req: &ServiceRequest,
    path: &str,
) -> Result<Option<Principal>, ApiError> {
    let bearer = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let client = req.peer_addr().map(|a| a.ip());
    let Some(key) = state
        .keyring
        .check(&state.reads, &state.store, bearer, client)
        .await?
    else {
        return Ok(None); // no key exists yet: open
    };
    let header = super::extract::header_tenant(req.request())?;
    let sent = req
        .headers()
        .contains_key("x-tenant-id")
        .then_some(header.as_str());
    let tenant = decide(key.role, &key.tenant, req.method(), path, sent)?;
    take(&state.keyring.per_key, &key.id)?;
    Ok(Some(Principal {
        key_id: key.id,
        name: key.name.clone(),
        role: key.role,
        tenant,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_tenants_decide_what_a_key_may_do() {
        let get = Method::GET;
        let post = Method::POST;
        let b = "/api/v1/budgets";
        let admin = "/api/v1/admin/api-keys";
        // Admin: everything, the tenant it names.
        assert_eq!(
            decide(Role::Admin, "a", &post, admin, None).unwrap(),
            "default"
        );
        assert_eq!(decide(Role::Admin, "a", &post, b, Some("b")).unwrap(), "b");
        // Writer: its tenant, no admin API, no other tenant.
        assert_eq!(decide(Role::Writer, "a", &post, b, None).unwrap(), "a");
        assert_eq!(decide(Role::Writer, "a", &get, b, Some("a")).unwrap(), "a");
        for (role, method, path, tenant) in [
            (Role::Writer, &get, admin, None),
            (Role::Writer, &post, b, Some("b")),
            (Role::Reader, &post, b, None),
            (Role::Reader, &Method::DELETE, b, None),
            (Role::Reader, &get, admin, None),
            (Role::Reader, &get, b, Some("b")),
        ] {
            let e = decide(role, "a", method, path, tenant).unwrap_err();
            assert!(
                matches!(e, ApiError::Forbidden(_)),
                "{role:?} {method} {path}"
            );
        }
        assert_eq!(decide(Role::Reader, "a", &get, b, None).unwrap(), "a");
    }

    #[test]
    fn only_health_and_optionally_metrics_are_public() {
        assert!(public("/healthz", false) && public("/readyz", false));
        assert!(public("/metrics", true) && !public("/metrics", false));
        assert!(!public("/api/v1/openapi.json", true));
    }
}
