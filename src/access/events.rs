//! Events of the access context. `event_type` and `event_version` are stable: they are
//! stored with every event forever.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a key may do (`http::auth` enforces it on every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, every tenant (an `X-Tenant-Id` header chooses one).
    Admin,
    /// Commands and queries of its tenant.
    Writer,
    /// Queries of its tenant.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "writer" => Some(Role::Writer),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

/// A key as issued: never the secret, only its public prefix and a slow hash of it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct KeyIssued {
    pub name: String,
    pub role: Role,
    pub tenant: String,
    /// Public part of the key, for lookup (`clk_<prefix>_…`).
    pub prefix: String,
    /// Argon2id hash of the whole key, in PHC string form.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ApiKeyEvent {
    ApiKeyIssued(KeyIssued),
    ApiKeyRevoked {},
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        match self {
            ApiKeyEvent::ApiKeyIssued(_) => "ApiKeyIssued",
            ApiKeyEvent::ApiKeyRevoked {} => "ApiKeyRevoked",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
