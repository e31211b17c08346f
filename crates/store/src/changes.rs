//! Changes announced by PostgreSQL to every listening server. Triggers (migrations
//! `m20261124_000006_session_notify`, `m20261125_000007_identity_notify` and
//! `m20261125_000008_credential_notify`) notify a channel per table with the id of every row that is
//! updated or deleted, when the transaction commits: sessions on [`SESSION_CHANGES_CHANNEL`], users on
//! [`USER_CHANGES_CHANNEL`], orgs on [`ORG_CHANGES_CHANNEL`]. What a user's bearer tokens grant — the tokens
//! themselves and the user's memberships — is announced as a change of the user (an org membership also as a
//! change of the org). Servers that remember such
//! rows forget a changed one as soon as the notification arrives.

use sea_orm::sqlx::postgres::PgListener;

use crate::Store;
use crate::error::StoreError;

/// The notification channel of session changes; the payload is the session id.
pub const SESSION_CHANGES_CHANNEL: &str = "flowgate_sessions";

/// The notification channel of user changes; the payload is the user id.
pub const USER_CHANGES_CHANNEL: &str = "flowgate_users";

/// The notification channel of org changes; the payload is the org id.
pub const ORG_CHANGES_CHANNEL: &str = "flowgate_orgs";

/// What a listener learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The session with this id changed (or was deleted).
    Session(String),
    /// The user with this id changed (or was deleted).
    User(String),
    /// The org with this id changed (or was deleted).
    Org(String),
    /// The connection was lost: notifications may have been missed. Forget everything and listen anew.
    Lost,
}

/// A connection listening for changes (it holds one connection of the store's pool).
pub struct Changes {
    listener: PgListener,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

impl Changes {
    /// Waits for the next change. After [`Change::Lost`] this listener is spent: open a new one with
    /// [`Store::listen_changes`], so the caller knows when it listens again.
    pub async fn next(&mut self) -> Change {
        loop {
            let notification = match self.listener.try_recv().await {
                Ok(Some(notification)) => notification,
                Ok(None) => return Change::Lost,
                Err(err) => {
                    tracing::warn!(error = %err, "listening for changes failed");
                    return Change::Lost;
                }
            };
            let id = notification.payload().to_owned();
            match notification.channel() {
                SESSION_CHANGES_CHANNEL => return Change::Session(id),
                USER_CHANGES_CHANNEL => return Change::User(id),
                ORG_CHANGES_CHANNEL => return Change::Org(id),
                // Only the channels above are listened to; anything else is not ours to act on.
                other => tracing::debug!(channel = other, "ignoring a notification"),
            }
        }
    }
}

impl Store {
    /// Starts listening for changes of sessions, users and orgs: `Ok(None)` on SQLite, which has no
    /// listeners (one server per file). Once this returns, every later committed change is announced.
    pub async fn listen_changes(&self) -> Result<Option<Changes>, StoreError> {
        let Some(pool) = self.postgres_pool() else { return Ok(None) };
        let mut listener = PgListener::connect_with(pool).await.map_err(StoreError::Connect)?;
        listener
            .listen_all([SESSION_CHANGES_CHANNEL, USER_CHANGES_CHANNEL, ORG_CHANGES_CHANNEL])
            .await
            .map_err(StoreError::Connect)?;
        Ok(Some(Changes { listener }))
    }
}
