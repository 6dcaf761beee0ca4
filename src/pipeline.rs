//! The command pipeline around cqrs-es aggregates (ADR 0003).
//!
//! cqrs-es' `CqrsFramework` commits events without telling the caller their global
//! positions and has no idempotency keys, both of which the API promises. So the
//! aggregate's `handle`/`apply` come from cqrs-es, and this module does the rest:
//! replay a stored response for a known idempotency key, load and fold the stream, check
//! the expected version, let the aggregate decide, append with optimistic concurrency.

use std::time::Instant;

use cqrs_es::Aggregate;
use serde_json::json;
use uuid::Uuid;

use crate::eventstore::codec::{self, Upcaster};
use crate::eventstore::{AppendRequest, EventStore, IdempotencyRecord, RecordedEvent, StoreError};
use crate::telemetry::METRICS;

/// What a domain error means for the one who sent the command, without naming any
/// transport: the HTTP layer maps each kind to a status and a stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The command is invalid; `field` names the offending input.
    Invalid { field: String, message: String },
    /// The aggregate does not exist (or no longer does); `what` names it.
    NotFound { what: String },
    /// The aggregate exists already.
    AlreadyExists { what: String },
    /// The aggregate's state does not allow the command.
    Refused { message: String },
    /// The actor may see the aggregate but not change it (it is someone else's).
    NotOwner { message: String },
}

/// A domain error enum of a bounded context.
pub trait DomainError: std::error::Error {
    fn rejection(&self) -> Rejection;
}

/// An aggregate stored in the event store.
pub trait EventSourced: Aggregate {
    /// `stream_type` of its events; stable forever.
    const STREAM_TYPE: &'static str;

    /// Upcasters for older schema versions of its events.
    fn upcasters() -> &'static [Upcaster] {
        &[]
    }

    /// One of its recorded events, decoded and upcast.
    fn decode(e: &RecordedEvent) -> Result<Self::Event, codec::CodecError> {
        codec::decode(
            &e.event_type,
            e.schema_version,
            &e.payload,
            Self::upcasters(),
        )
    }
}

/// Whether `t` is a tenant name: `[a-z0-9_-]{1,64}` (the `X-Tenant-Id` header, a key's
/// tenant).
pub fn is_tenant(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Who sent a command and how to trace it; becomes the events' metadata.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub tenant_id: String,
    pub actor: String,
    pub command_id: Uuid,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub idempotency: Option<IdempotencyRecord>,
}

impl CommandContext {
    pub fn new(tenant_id: impl Into<String>) -> Self {
        let command_id = Uuid::now_v7();
        Self {
            tenant_id: tenant_id.into(),
            actor: "anonymous".into(),
            command_id,
            correlation_id: command_id,
            causation_id: None,
            idempotency: None,
        }
    }
}

impl CommandContext {
    /// The metadata every event of the command carries.
    pub fn metadata(&self) -> serde_json::Value {
        json!({
            "command_id": self.command_id,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id.unwrap_or(self.command_id),
            "actor": self.actor,
            "tenant_id": self.tenant_id,
        })
    }
}

/// What the command expects of the stream before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A new stream: nothing is loaded; a clash shows up as a conflict on append.
    New,
    /// Whatever version the stream has now (still checked on append).
    Any,
    /// Exactly this version (`If-Match`).
    Version(i64),
}

/// The answer to a successful command.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct CommandResult {
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Domain(E),
    /// The stream is not at the expected version (or moved while deciding).
    #[error("stream is at version {actual:?}, expected {expected:?}")]
    Conflict {
        expected: Option<i64>,
        actual: Option<i64>,
    },
    /// The idempotency key was used before with a different request.
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode or decode an event: {0}")]
    Codec(#[from] codec::CodecError),
}

impl<E: std::error::Error> CommandError<E> {
    fn outcome(&self) -> &'static str {
        match self {
            CommandError::Domain(_) => "rejected",
            CommandError::Conflict { .. } => "conflict",
            CommandError::IdempotencyMismatch => "idempotency_mismatch",
            CommandError::Store(StoreError::Unavailable(_)) => "unavailable",
            CommandError::Store(_) | CommandError::Codec(_) => "error",
        }
    }
}

/// An aggregate folded from its stream, with the stream's version and the global
/// position of its last event.
pub struct Loaded<A> {
    pub aggregate: A,
    pub version: i64,
    pub position: i64,
}

/// Loads an aggregate of `tenant` by folding its stream. A stream of another tenant
/// loads as an empty one: tenants never see, change or learn of each other's streams.
pub async fn load<A: EventSourced>(
    store: &EventStore,
    tenant: &str,
    id: Uuid,
) -> Result<Loaded<A>, CommandError<A::Error>> {
    let mut aggregate = A::default();
    let mut version = 0;
    let mut position = 0;
    let events = store.load_stream(A::STREAM_TYPE, id).await?;
    if events.first().is_some_and(|e| e.tenant_id != tenant) {
        return Ok(Loaded {
            aggregate,
            version,
            position,
        });
    }
    for e in events {
        aggregate.apply(A::decode(&e)?);
        version = e.stream_version;
        position = e.position;
    }
    Ok(Loaded {
        aggregate,
        version,
        position,
    })
}

/// Runs one command against stream `id` of aggregate `A`.
#[tracing::instrument(name = "command", level = "debug", skip_all, fields(command = command_type, stream_id = %id))]
pub async fn execute<A: EventSourced>(
    store: &EventStore,
    ctx: &CommandContext,
    command_type: &'static str,
    id: Uuid,
    expect: Expect,
    command: A::Command,
    services: &A::Services,
) -> Result<(CommandResult, bool), CommandError<A::Error>> {
    let started = Instant::now();
    let result = run::<A>(store, ctx, id, expect, command, services).await;
    let outcome = match &result {
        Ok((_, true)) => "replayed",
        Ok((_, false)) => "ok",
        Err(e) => e.outcome(),
    };
    METRICS
        .commands
        .with_label_values(&[command_type, outcome])
        .inc();
    METRICS
        .command_duration
        .with_label_values(&[command_type])
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The bool is true when the result is a stored response replayed for a retry.
///
/// With an idempotency key, every answer other than "appended" is checked against the key
/// once more before it is given: a request with the same key may have committed between
/// this one's first look-up and its stream load, and then this one decided against the
/// state the first produced (a delete finds nothing, an `If-Match` is stale, an update
/// changes nothing). So whenever one request under a key appended, every request under
/// that key answers with its result, under any timing: an append under a taken key fails
/// as a whole (the key is written in the same statement).
async fn run<A: EventSourced>(
    store: &EventStore,
    ctx: &CommandContext,
    id: Uuid,
    expect: Expect,
    command: A::Command,
    services: &A::Services,
) -> Result<(CommandResult, bool), CommandError<A::Error>> {
    if let Some(replayed) = replay(store, ctx).await? {
        return Ok((replayed, true));
    }
    let attempt = decide_and_append::<A>(store, ctx, id, expect, command, services).await;
    let maybe_answered_by_another = match &attempt {
        Ok((_, appended)) => !appended,
        Err(CommandError::Domain(_) | CommandError::Conflict { .. }) => true,
        Err(CommandError::Store(StoreError::IdempotencyKeyTaken)) => true,
        Err(_) => false,
    };
    if maybe_answered_by_another {
        if let Some(replayed) = replay(store, ctx).await? {
            return Ok((replayed, true));
        }
    }
    attempt.map(|(result, _)| (result, false))
}

/// Loads, decides and appends; the bool is false when the command changed nothing.
async fn decide_and_append<A: EventSourced>(
    store: &EventStore,
    ctx: &CommandContext,
    id: Uuid,
    expect: Expect,
    command: A::Command,
    services: &A::Services,
) -> Result<(CommandResult, bool), CommandError<A::Error>> {
    let Loaded {
        aggregate,
        version,
        position,
    } = match expect {
        Expect::New => Loaded {
            aggregate: A::default(),
            version: 0,
            position: 0,
        },
        Expect::Any | Expect::Version(_) => load::<A>(store, &ctx.tenant_id, id).await?,
    };
    if let Expect::Version(expected) = expect {
        // An empty (or foreign) stream is for the aggregate to refuse, not a conflict.
        if expected != version && version > 0 {
            return Err(CommandError::Conflict {
                expected: Some(expected),
                actual: Some(version),
            });
        }
    }
    let events = aggregate
        .handle(command, services)
        .await
        .map_err(CommandError::Domain)?;
    if events.is_empty() {
        return Ok((
            CommandResult {
                id,
                version,
                position,
            },
            false,
        ));
    }
    let events = events
        .iter()
        .map(codec::encode)
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = ctx.metadata();
    let appended = store
        .append(AppendRequest {
            tenant_id: &ctx.tenant_id,
            stream_type: A::STREAM_TYPE,
            stream_id: id,
            expected_version: version,
            events,
            metadata,
            idempotency: ctx.idempotency.as_ref(),
        })
        .await;
    match appended {
        Ok(a) => Ok((
            CommandResult {
                id,
                version: a.version,
                position: a.position,
            },
            true,
        )),
        Err(StoreError::Conflict) => Err(CommandError::Conflict {
            expected: match expect {
                Expect::New => Some(0),
                _ => Some(version),
            },
            actual: None,
        }),
        Err(e) => Err(e.into()),
    }
}

/// The stored result for the context's idempotency key, if any; a different request
/// under the same key is refused. (Routes that append without `execute`, such as a
/// multi-stream append, call it themselves.)
pub async fn replay<E: std::error::Error>(
    store: &EventStore,
    ctx: &CommandContext,
) -> Result<Option<CommandResult>, CommandError<E>> {
    let Some(idem) = &ctx.idempotency else {
        return Ok(None);
    };
    let Some(stored) = store.find_idempotent(&ctx.tenant_id, &idem.key).await? else {
        return Ok(None);
    };
    if stored.request_hash != idem.request_hash {
        return Err(CommandError::IdempotencyMismatch);
    }
    Ok(Some(CommandResult {
        id: stored.stream_id,
        version: stored.appended.version,
        position: stored.appended.position,
    }))
}
