//! Typed events to rows and back.
//!
//! Events are serde enums tagged `{"type": …, "data": …}`; the store keeps the type in
//! `event_type`, the data in `payload` and the variant's `event_version()` in
//! `schema_version`. Reading an older schema version runs the registered upcasters in
//! order until the payload has the current shape, so old events never need rewriting.

use cqrs_es::DomainEvent;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::NewEvent;

/// Rewrites the payload of `event_type` at `from_version` into `from_version + 1`.
pub struct Upcaster {
    pub event_type: &'static str,
    pub from_version: i32,
    pub upcast: fn(Value) -> Value,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("event is not a tagged object: {0}")]
    Shape(String),
    #[error("cannot decode {event_type} v{schema_version}: {source}")]
    Decode {
        event_type: String,
        schema_version: i32,
        #[source]
        source: serde_json::Error,
    },
    #[error("event_version {0:?} is not a positive integer")]
    Version(String),
}

/// The adjacently tagged form of an event, `data` left as text.
#[derive(serde::Deserialize)]
struct Tagged<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Turns a typed event into the row parts the store writes.
pub fn encode<E: DomainEvent>(event: &E) -> Result<NewEvent, CodecError> {
    let schema_version: i32 = event
        .event_version()
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| CodecError::Version(event.event_version()))?;
    // Written as text and the `data` member cut out of it: no JSON tree is built, which
    // matters for batch events of a thousand rows.
    let text = serde_json::to_string(event).map_err(|e| CodecError::Shape(e.to_string()))?;
    let tagged: Tagged<'_> =
        serde_json::from_str(&text).map_err(|e| CodecError::Shape(e.to_string()))?;
    let payload = match tagged.data {
        Some(data) => data.to_owned(),
        None => {
            RawValue::from_string("{}".to_owned()).map_err(|e| CodecError::Shape(e.to_string()))?
        }
    };
    Ok(NewEvent {
        event_type: event.event_type(),
        schema_version,
        payload,
    })
}

/// Rebuilds a typed event from its row parts, upcasting older schema versions first.
/// Events already at their current version are parsed straight from the stored text.
pub fn decode<E: DomainEvent>(
    event_type: &str,
    schema_version: i32,
    payload: &RawValue,
    upcasters: &[Upcaster],
) -> Result<E, CodecError> {
    let err = |source| CodecError::Decode {
        event_type: event_type.to_owned(),
        schema_version,
        source,
    };
    let needs_upcast = upcasters
        .iter()
        .any(|u| u.event_type == event_type && u.from_version == schema_version);
    if !needs_upcast {
        let tag = serde_json::to_string(event_type).map_err(err)?;
        let tagged = format!("{{\"type\":{tag},\"data\":{}}}", payload.get());
        return serde_json::from_str(&tagged).map_err(err);
    }
    let mut version = schema_version;
    let mut data: Value = serde_json::from_str(payload.get()).map_err(err)?;
    while let Some(u) = upcasters
        .iter()
        .find(|u| u.event_type == event_type && u.from_version == version)
    {
        data = (u.upcast)(data);
        version += 1;
    }
    serde_json::from_value(json!({ "type": event_type, "data": data })).map_err(err)
}
