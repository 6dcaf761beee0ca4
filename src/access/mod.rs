//! Access: API keys with a role and a tenant (issue "Security and operations").
//!
//! `keys` makes and checks secrets (argon2id; only the hash is kept); the `ApiKey`
//! aggregate issues and revokes them as events; the `api_keys` projector keeps the read
//! model that `http::auth` checks every request against; `routes` binds
//! `/api/v1/admin/api-keys`.

pub mod aggregate;
pub mod events;
pub mod keys;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod routes;

use std::sync::Arc;

use utoipa::OpenApi;
use uuid::Uuid;

use aggregate::{AccessError, ApiKey, ApiKeyCommand};
use events::KeyIssued;

use crate::context::BoundedContext;
use crate::eventstore::EventStore;
use crate::pipeline::{self, CommandContext, CommandError, CommandResult, Expect};
use crate::projections::Typed;

/// The stream of the key with this prefix.
pub fn key_stream(prefix: &str) -> Uuid {
    const NS: Uuid = Uuid::from_u128(0x0193_c7a9_4a5e_7c1d_9d0e_acce_5500_0001);
    Uuid::new_v5(&NS, prefix.as_bytes())
}

/// Issues `key` (made by `keys::generate`, or handed in by an operator) as `draft` says:
/// the event holds its prefix and argon2id hash, in the key's tenant. Issuing the same
/// key twice is `AlreadyExists`.
pub async fn issue(
    store: &EventStore,
    ctx: &CommandContext,
    draft: &routes::KeyDraft,
    key: &str,
) -> Result<(Uuid, CommandResult), CommandError<AccessError>> {
    let invalid = |message: String| {
        CommandError::Domain(AccessError::Invalid {
            field: "key".into(),
            message,
        })
    };
    let prefix = keys::prefix_of(key)
        .ok_or_else(|| invalid("is not a cloudlens key (clk_<12 hex>_<64 hex>)".into()))?
        .to_owned();
    let hash = keys::hash(key).map_err(|e| invalid(e.to_string()))?;
    let id = key_stream(&prefix);
    let mut ctx = ctx.clone();
    ctx.tenant_id = draft.tenant.clone();
    let command = ApiKeyCommand::Issue(KeyIssued {
        name: draft.name.clone(),
        role: draft.role,
        tenant: draft.tenant.clone(),
        prefix,
        hash,
    });
    let (result, replayed) =
        pipeline::execute::<ApiKey>(store, &ctx, "IssueApiKey", id, Expect::New, command, &())
            .await?;
    if replayed {
        // A retry under an Idempotency-Key: the first request issued a key whose secret
        // was in its answer only; this request's secret was never stored.
        return Err(CommandError::Domain(AccessError::Refused(format!(
            "this Idempotency-Key issued API key {} already; its secret was shown once, \
             in the first answer",
            result.id
        ))));
    }
    Ok((id, result))
}

#[derive(OpenApi)]
#[openapi(
    paths(routes::issue, routes::list, routes::revoke),
    components(schemas(
        routes::KeyDraft,
        routes::IssuedKey,
        events::Role,
        queries::KeyView,
        queries::KeyList
    ))
)]
struct AccessApi;

/// The access context, as the server registers it (`context::all`).
pub fn context() -> BoundedContext {
    metrics::init();
    BoundedContext {
        name: "access",
        routes: routes::configure,
        openapi: AccessApi::openapi,
        projections: |_| vec![Arc::new(Typed(projection::ApiKeysProjector))],
        jobs: Vec::new,
        scheduled: |_| Vec::new(),
        ended: &[],
    }
}
