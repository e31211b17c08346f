//! PostgreSQL tells every listening server when a session row changes, so replicas that remember sessions
//! forget a changed one at once (channel [`crate::SESSION_CHANGES_CHANNEL`], payload: the session id).
//! A trigger rather than a statement in each write: no extra round trip, and no write path can forget it.
//! SQLite has no listeners; there the migration does nothing.

use sea_orm_migration::prelude::*;

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000006_session_notify"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Notifications are sent when the transaction commits, and never for one that rolls back.
        super::on_postgres(
            manager,
            &[
                "CREATE OR REPLACE FUNCTION flowgate_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN \
                   PERFORM pg_notify('flowgate_sessions', CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END); \
                   RETURN NULL; \
                 END $$",
                "CREATE TRIGGER sessions_changed AFTER UPDATE OR DELETE ON sessions \
                 FOR EACH ROW EXECUTE FUNCTION flowgate_session_changed()",
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(
            manager,
            &[
                "DROP TRIGGER IF EXISTS sessions_changed ON sessions",
                "DROP FUNCTION IF EXISTS flowgate_session_changed()",
            ],
        )
        .await
    }
}
