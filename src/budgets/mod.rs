//! Budgets: how much a team may spend per period, with filters and alert thresholds.
//!
//! `commands` (what a client asks) → `aggregate` (decides, cqrs-es) → `events` (what
//! happened) → `projection` (the `budgets_view` read model) → `queries` (what clients
//! read) ; `routes` binds it all to HTTP.

pub mod aggregate;
pub mod commands;
pub mod events;
pub mod projection;
pub mod queries;
pub mod routes;

pub use aggregate::{Budget, BudgetError};
pub use commands::{BudgetCommand, BudgetDraft};
pub use events::{BudgetDetails, BudgetEvent};
