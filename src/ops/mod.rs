//! Operations that read the database as a whole rather than a context's read models.

pub mod assessment;
pub mod backup;
