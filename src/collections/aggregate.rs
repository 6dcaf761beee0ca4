//! A collection's declaration: its TTL and the fields its items may be sorted by. The
//! seed's three collections exist for every tenant without one; a declaration overrides
//! them.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::commands::{CollectionCommand, CollectionDraft};
use super::events::CollectionEvent;
use crate::pipeline::{DomainError, EventSourced, Rejection};

/// The longest TTL: ten years.
pub const MAX_TTL_SECONDS: i32 = 315_360_000;
/// The most sortable fields a collection declares.
pub const MAX_INDEXES: usize = 16;
/// Sorts every collection has; an index may not take their names.
pub const BUILT_IN_SORTS: [&str; 3] = ["key", "created_at", "updated_at"];

#[derive(Debug, thiserror::Error)]
pub enum CollectionError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl DomainError for CollectionError {
    fn rejection(&self) -> Rejection {
        match self {
            Self::Invalid { field, message } => Rejection::Invalid {
                field: field.clone(),
                message: message.clone(),
            },
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> CollectionError {
    CollectionError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// What a collection is: declared, or a seed's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declaration {
    pub name: String,
    pub ttl_seconds: Option<i32>,
    pub indexes: Vec<String>,
}

impl Declaration {
    /// Whether items may be sorted by `field` of their data.
    pub fn sorts_by(&self, field: &str) -> bool {
        self.indexes.iter().any(|i| i == field)
    }
}

/// A collection every tenant has without declaring it.
pub struct Seed {
    pub name: &'static str,
    pub ttl_seconds: Option<i32>,
    pub indexes: &'static [&'static str],
}

/// The seed's collections (MongoDB's `system_logs`, `configurations` and the Redis-like
/// `task_status_cache` with its 24 h TTL).
pub const SEEDS: [Seed; 3] = [
    Seed {
        name: "system_logs",
        ttl_seconds: None,
        indexes: &["level", "service"],
    },
    Seed {
        name: "configurations",
        ttl_seconds: None,
        indexes: &["component", "environment", "version", "is_active"],
    },
    Seed {
        name: "task_status_cache",
        ttl_seconds: Some(86_400),
        indexes: &["task_id", "status", "task_type"],
    },
];

/// The seed's default declaration of `name`, if it is one of the seed's collections.
pub fn seed(name: &str) -> Option<Declaration> {
    SEEDS.iter().find(|s| s.name == name).map(|s| Declaration {
        name: s.name.to_owned(),
        ttl_seconds: s.ttl_seconds,
        indexes: s.indexes.iter().map(|i| (*i).to_owned()).collect(),
    })
}

/// A collection name: `[a-z][a-z0-9_]{0,62}`.
pub fn check_name(name: &str) -> Result<(), CollectionError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            "must match [a-z][a-z0-9_]{0,62} (lowercase letters, digits, underscores)",
        ))
    }
}

/// A sortable field: `^[A-Za-z_][A-Za-z0-9_]{0,62}$`, not a built-in sort.
pub fn check_index(field: &str) -> Result<(), CollectionError> {
    let mut chars = field.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && field.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(invalid(
            "indexes",
            format!("{field:?} does not match ^[A-Za-z_][A-Za-z0-9_]{{0,62}}$"),
        ));
    }
    if BUILT_IN_SORTS.contains(&field) {
        return Err(invalid(
            "indexes",
            format!("{field:?} is a built-in sort of every collection"),
        ));
    }
    Ok(())
}

/// Checks a draft against `name` and gives the declaration it makes.
pub fn declaration(name: &str, d: &CollectionDraft) -> Result<Declaration, CollectionError> {
    check_name(name)?;
    if let Some(t) = d.ttl_seconds {
        if !(1..=MAX_TTL_SECONDS).contains(&t) {
            return Err(invalid(
                "ttl_seconds",
                format!("must be from 1 to {MAX_TTL_SECONDS} seconds, or null for no expiry"),
            ));
        }
    }
    if d.indexes.len() > MAX_INDEXES {
        return Err(invalid("indexes", format!("at most {MAX_INDEXES} fields")));
    }
    for (i, field) in d.indexes.iter().enumerate() {
        check_index(field)?;
        if d.indexes[..i].contains(field) {
            return Err(invalid("indexes", format!("{field:?} appears twice")));
        }
    }
    Ok(Declaration {
        name: name.to_owned(),
        ttl_seconds: d.ttl_seconds,
        indexes: d.indexes.clone(),
    })
}

/// A collection's stream: its declarations, the last one in force.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Collection {
    pub declared: Option<Declaration>,
}

impl Collection {
    /// What the collection `name` is now: declared, else the seed's default, else none.
    pub fn effective(&self, name: &str) -> Option<Declaration> {
        self.declared.clone().or_else(|| seed(name))
    }
}

impl EventSourced for Collection {
    const STREAM_TYPE: &'static str = "collection";
}

#[async_trait]
impl Aggregate for Collection {
    type Command = CollectionCommand;
    type Event = CollectionEvent;
    type Error = CollectionError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        c: CollectionCommand,
        _: &(),
    ) -> Result<Vec<CollectionEvent>, CollectionError> {
        match c {
            CollectionCommand::Declare { name, draft } => {
                let d = declaration(&name, &draft)?;
                // The same declaration again changes nothing. (A seed's first explicit
                // declaration is recorded even when it equals the default.)
                if self.declared.as_ref() == Some(&d) {
                    return Ok(Vec::new());
                }
                Ok(vec![CollectionEvent::CollectionDeclared {
                    name: d.name,
                    ttl_seconds: d.ttl_seconds,
                    indexes: d.indexes,
                }])
            }
        }
    }

    fn apply(&mut self, e: CollectionEvent) {
        match e {
            CollectionEvent::CollectionDeclared {
                name,
                ttl_seconds,
                indexes,
            } => {
                self.declared = Some(Declaration {
                    name,
                    ttl_seconds,
                    indexes,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type CollectionTest = TestFramework<Collection>;

    fn declare(name: &str, ttl: Option<i32>, indexes: &[&str]) -> CollectionCommand {
        CollectionCommand::Declare {
            name: name.into(),
            draft: CollectionDraft {
                ttl_seconds: ttl,
                indexes: indexes.iter().map(|i| (*i).to_owned()).collect(),
            },
        }
    }

    fn declared(name: &str, ttl: Option<i32>, indexes: &[&str]) -> CollectionEvent {
        CollectionEvent::CollectionDeclared {
            name: name.into(),
            ttl_seconds: ttl,
            indexes: indexes.iter().map(|i| (*i).to_owned()).collect(),
        }
    }

    #[test]
    fn a_declaration_is_recorded_whole() {
        CollectionTest::with(())
            .given_no_previous_events()
            .when(declare("sessions", Some(3600), &["user"]))
            .then_expect_events(vec![declared("sessions", Some(3600), &["user"])]);
    }

    #[test]
    fn the_same_declaration_again_records_nothing_and_a_change_records_it_whole() {
        CollectionTest::with(())
            .given(vec![declared("sessions", Some(3600), &["user"])])
            .when(declare("sessions", Some(3600), &["user"]))
            .then_expect_events(vec![]);
        CollectionTest::with(())
            .given(vec![declared("sessions", Some(3600), &["user"])])
            .when(declare("sessions", None, &["user", "ip"]))
            .then_expect_events(vec![declared("sessions", None, &["user", "ip"])]);
    }

    #[test]
    fn a_seed_collection_may_be_overridden_and_is_recorded_even_unchanged() {
        CollectionTest::with(())
            .given_no_previous_events()
            .when(declare(
                "task_status_cache",
                Some(86_400),
                &["task_id", "status", "task_type"],
            ))
            .then_expect_events(vec![declared(
                "task_status_cache",
                Some(86_400),
                &["task_id", "status", "task_type"],
            )]);
        let mut c = Collection::default();
        assert_eq!(
            c.effective("task_status_cache").unwrap().ttl_seconds,
            Some(86_400)
        );
        assert!(c.effective("sessions").is_none());
        c.apply(declared("task_status_cache", Some(60), &[]));
        assert_eq!(
            c.effective("task_status_cache").unwrap().ttl_seconds,
            Some(60)
        );
    }

    #[test]
    fn bad_declarations_name_their_field() {
        let many: Vec<String> = (0..17).map(|i| format!("f{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let long = "a".repeat(64);
        let cases: Vec<(&str, CollectionCommand)> = vec![
            ("name", declare("Logs", None, &[])),
            ("name", declare("1logs", None, &[])),
            ("name", declare("", None, &[])),
            ("name", declare("a-b", None, &[])),
            ("name", declare(&long, None, &[])),
            ("ttl_seconds", declare("c", Some(0), &[])),
            ("ttl_seconds", declare("c", Some(-5), &[])),
            ("ttl_seconds", declare("c", Some(MAX_TTL_SECONDS + 1), &[])),
            ("indexes", declare("c", None, &many)),
            ("indexes", declare("c", None, &["level", "level"])),
            ("indexes", declare("c", None, &["9lives"])),
            ("indexes", declare("c", None, &["a.b"])),
            ("indexes", declare("c", None, &["lev el"])),
            ("indexes", declare("c", None, &["data->>'x'"])),
            ("indexes", declare("c", None, &[&long])),
            ("indexes", declare("c", None, &["created_at"])),
            ("indexes", declare("c", None, &["key"])),
        ];
        for (field, command) in cases {
            let err = CollectionTest::with(())
                .given_no_previous_events()
                .when(command)
                .inspect_result()
                .unwrap_err();
            let CollectionError::Invalid { field: f, .. } = err;
            assert_eq!(f, field);
        }
        // The boundaries are allowed.
        let max: Vec<String> = (0..16).map(|i| format!("F_{i}")).collect();
        let max: Vec<&str> = max.iter().map(String::as_str).collect();
        let name63 = "a".repeat(63);
        CollectionTest::with(())
            .given_no_previous_events()
            .when(declare(&name63, Some(MAX_TTL_SECONDS), &max))
            .then_expect_events(vec![declared(&name63, Some(MAX_TTL_SECONDS), &max)]);
        CollectionTest::with(())
            .given_no_previous_events()
            .when(declare("c", Some(1), &["_x", &"b".repeat(63)]))
            .then_expect_events(vec![declared("c", Some(1), &["_x", &"b".repeat(63)])]);
    }
}
