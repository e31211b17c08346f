//! The IdP repositories: IdP configurations, intents and users' links to accounts at IdPs, implementing
//! the ports of [`flowgate_core::idp::ports`] over the [`Store`].
//!
//! Every change is one [`Store::write`]: IdP changes on the `idp` aggregate, intent changes on the
//! `idp_intent` aggregate, link changes on the user's aggregate. What must hold under concurrency (an
//! intent leaves `started` or `succeeded` once; one external account is linked to one user) is decided by
//! the database: a conditional `UPDATE` on the intent's state, and the primary key of `user_idp_links`.
//! Secrets reach this module sealed by the core and are stored as given; event payloads never carry them.

mod entity;
mod idps;
mod intents;
pub(crate) mod links;

pub use idps::IDP_ID_TAKEN;
pub use intents::INTENT_ID_TAKEN;

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use flowgate_core::Error;
use flowgate_core::idp::ports::IdpRepos;

use crate::store::Store;

/// Aggregate type of IdP configurations.
const IDP: &str = "idp";
/// Aggregate type of intents.
const IDP_INTENT: &str = "idp_intent";

/// Every IdP repository over one [`Store`]; each port trait is implemented by this one type.
#[derive(Debug, Clone)]
pub struct IdpRepositories {
    store: Store,
}

impl IdpRepositories {
    /// Repositories reading and writing through `store` (which must be migrated).
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// The [`IdpRepos`] bundle the IdP use cases are built with, all backed by `store`.
pub fn repos(store: &Store) -> IdpRepos {
    let repos = Arc::new(IdpRepositories::new(store.clone()));
    IdpRepos { idps: repos.clone(), intents: repos.clone(), links: repos }
}

/// A time as stored: microseconds, what PostgreSQL keeps, so answers equal what is read back later.
fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// The error of a failed serialization of `what` into a JSON column; the core's plain data types always
/// serialize, so a failure is a bug.
fn serialize_error(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
    move |e| Error::internal("STORE-serialize", format!("cannot serialize {what}: {e}"))
}
