//! The API key aggregate: issued once, revoked at most once.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::events::{ApiKeyEvent, KeyIssued};
use crate::pipeline::{DomainError, EventSourced, Rejection};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("API key not found")]
    NotFound,
    #[error("API key already exists")]
    AlreadyExists,
    #[error("{0}")]
    Refused(String),
}

impl DomainError for AccessError {
    fn rejection(&self) -> Rejection {
        match self {
            AccessError::Invalid { field, message } => Rejection::Invalid {
                field: field.clone(),
                message: message.clone(),
            },
            AccessError::NotFound => Rejection::NotFound {
                what: "API key".into(),
            },
            AccessError::AlreadyExists => Rejection::AlreadyExists {
                what: "API key".into(),
            },
            AccessError::Refused(why) => Rejection::Refused {
                message: why.clone(),
            },
        }
    }
}

fn invalid(field: &str, message: &str) -> AccessError {
    AccessError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub enum ApiKeyCommand {
    /// The route generated the secret; the aggregate checks the rest.
    Issue(KeyIssued),
    Revoke,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub issued: Option<KeyIssued>,
    pub revoked: bool,
}

impl EventSourced for ApiKey {
    const STREAM_TYPE: &'static str = "api_key";
}

#[async_trait]
impl Aggregate for ApiKey {
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;
    type Error = AccessError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: ApiKeyCommand,
        _: &(),
    ) -> Result<Vec<ApiKeyEvent>, AccessError> {
        match command {
            ApiKeyCommand::Issue(key) => {
                if self.issued.is_some() {
                    return Err(AccessError::AlreadyExists);
                }
                let name = &key.name;
                if name.is_empty()
                    || name.chars().count() > 100
                    || name.chars().any(char::is_control)
                {
                    return Err(invalid(
                        "name",
                        "must be 1 to 100 characters without control characters",
                    ));
                }
                if !crate::pipeline::is_tenant(&key.tenant) {
                    return Err(invalid("tenant", "must match ^[a-z0-9_-]{1,64}$"));
                }
                Ok(vec![ApiKeyEvent::ApiKeyIssued(key)])
            }
            ApiKeyCommand::Revoke => match (&self.issued, self.revoked) {
                (None, _) => Err(AccessError::NotFound),
                (Some(_), true) => Ok(vec![]), // revoked already: nothing changes
                (Some(_), false) => Ok(vec![ApiKeyEvent::ApiKeyRevoked {}]),
            },
        }
    }

    fn apply(&mut self, event: ApiKeyEvent) {
        match event {
            ApiKeyEvent::ApiKeyIssued(k) => self.issued = Some(k),
            ApiKeyEvent::ApiKeyRevoked {} => self.revoked = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::events::Role;
    use super::*;

    fn key(name: &str, tenant: &str) -> KeyIssued {
        KeyIssued {
            name: name.into(),
            role: Role::Writer,
            tenant: tenant.into(),
            prefix: "0123456789ab".into(),
            hash: "$argon2id$…".into(),
        }
    }

    #[tokio::test]
    async fn a_key_is_issued_once_checked_and_revoked_once() {
        let k = ApiKey::default();
        let events = k
            .handle(ApiKeyCommand::Issue(key("ci", "t1")), &())
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        for (name, tenant, field) in [("", "t1", "name"), ("ci", "T 1", "tenant")] {
            let err = k
                .handle(ApiKeyCommand::Issue(key(name, tenant)), &())
                .await
                .unwrap_err();
            assert!(matches!(err, AccessError::Invalid { field: f, .. } if f == field));
        }
        assert!(matches!(
            k.handle(ApiKeyCommand::Revoke, &()).await,
            Err(AccessError::NotFound)
        ));
        let mut issued = ApiKey::default();
        issued.apply(events[0].clone());
        assert!(matches!(
            issued
                .handle(ApiKeyCommand::Issue(key("ci", "t1")), &())
                .await,
            Err(AccessError::AlreadyExists)
        ));
        let revoked = issued.handle(ApiKeyCommand::Revoke, &()).await.unwrap();
        assert_eq!(revoked, vec![ApiKeyEvent::ApiKeyRevoked {}]);
        issued.apply(revoked[0].clone());
        assert!(issued
            .handle(ApiKeyCommand::Revoke, &())
            .await
            .unwrap()
            .is_empty());
    }
}
