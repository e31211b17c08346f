//! flowgate's storage: the database connection (SQLite by default, PostgreSQL by URL), the schema
//! migrations and the event log with the one write helper every mutation goes through, and the repositories
//! of the identity core ([`identity::repos`]) and of sessions ([`session::repos`]).
//!
//! Every difference between SQLite and PostgreSQL lives in the private `backend` module; the rest of the crate is
//! written once against sea-orm.

mod backend;
mod changes;
mod config;
mod error;
mod event_log;
pub mod flow;
mod group_commit;
pub mod identity;
pub mod idp;
pub mod migration;
mod planned;
pub mod session;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use backend::Backend;
pub use changes::{Change, Changes, ORG_CHANGES_CHANNEL, SESSION_CHANGES_CHANNEL, USER_CHANGES_CHANNEL};
pub use config::StoreConfig;
pub use error::StoreError;
pub use event_log::{Planned, StateError, StateFuture, WriteContext, state};
pub use planned::{PlannedStatement, RowInsert};
pub use store::{PoolStats, Store};

/// Re-export of sea-orm so that repositories and tests use exactly the version the store was built with.
pub use sea_orm;
