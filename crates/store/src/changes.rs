//! Changes announced by PostgreSQL to every listening server: a trigger (migration
//! `m20261124_000006_session_notify`) notifies [`SESSION_CHANGES_CHANNEL`] with the id of every session row
//! that is updated or deleted, when the transaction commits. Servers that remember sessions forget a changed
//! one as soon as the notification arrives.

use sea_orm::sqlx::postgres::PgListener;

use crate::Store;
use crate::error::StoreError;

/// The notification channel of session changes; the payload is the session id.
pub const SESSION_CHANGES_CHANNEL: &str = "flowgate_sessions";

/// What a listener learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// The session with this id changed (or was deleted).
    Changed(String),
    /// The connection was lost: notifications may have been missed. Forget everything and listen anew.
    Lost,
}

/// A connection listening for session changes (it holds one connection of the store's pool).
pub struct SessionChanges {
    listener: PgListener,
}

impl std::fmt::Debug for SessionChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionChanges").finish_non_exhaustive()
    }
}

impl SessionChanges {
    /// Waits for the next change. After [`SessionChange::Lost`] this listener is spent: open a new one with
    /// [`Store::listen_session_changes`], so the caller knows when it listens again.
    pub async fn next(&mut self) -> SessionChange {
        match self.listener.try_recv().await {
            Ok(Some(notification)) => SessionChange::Changed(notification.payload().to_owned()),
            Ok(None) => SessionChange::Lost,
            Err(err) => {
                tracing::warn!(error = %err, "listening for session changes failed");
                SessionChange::Lost
            }
        }
    }
}

impl Store {
    /// Starts listening for session changes: `Ok(None)` on SQLite, which has no listeners (one server per
    /// file). Once this returns, every later committed change is announced to the listener.
    pub async fn listen_session_changes(&self) -> Result<Option<SessionChanges>, StoreError> {
        let Some(pool) = self.postgres_pool() else { return Ok(None) };
        let mut listener = PgListener::connect_with(pool).await.map_err(StoreError::Connect)?;
        listener.listen(SESSION_CHANGES_CHANNEL).await.map_err(StoreError::Connect)?;
        Ok(Some(SessionChanges { listener }))
    }
}
