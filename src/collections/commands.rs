//! What a client sends to declare a collection, and the command it becomes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A collection's declaration as a client writes it (`PUT /api/v1/collections/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionDraft {
    /// Seconds an item lives after each write (1 to 315,360,000, ten years); absent or
    /// `null`: items never expire. A change applies to items written afterwards.
    #[schema(minimum = 1, maximum = 315_360_000)]
    pub ttl_seconds: Option<i32>,
    /// Fields of `data` that items may be sorted by (`sort=field` / `sort=-field`): at
    /// most 16 names matching `^[A-Za-z_][A-Za-z0-9_]{0,62}$`, not `key`, `created_at` or
    /// `updated_at`. Filters (`filter=`) work on every field, declared or not.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub indexes: Vec<String>,
}

/// Commands of a collection's stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CollectionCommand {
    /// Declare (or change) the collection `name`.
    Declare {
        name: String,
        draft: CollectionDraft,
    },
}
