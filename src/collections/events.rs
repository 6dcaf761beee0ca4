//! Events of the collections context; `event_type` and `event_version` are stable.
//!
//! Only declarations are events. Items are written to `collection_items` directly and
//! never reach the log (ADR 0023).

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CollectionEvent {
    /// The whole declaration, so the projector and item writes never need an earlier one.
    CollectionDeclared {
        name: String,
        /// `None`: items never expire.
        ttl_seconds: Option<i32>,
        /// The fields items may be sorted by.
        indexes: Vec<String>,
    },
}

impl DomainEvent for CollectionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CollectionDeclared { .. } => "CollectionDeclared",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
