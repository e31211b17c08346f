//! PostgreSQL tells every listening server when a session row changes, so replicas that remember sessions
//! forget a changed one at once (channel [`crate::SESSION_CHANGES_CHANNEL`], payload: the session id).
//! A trigger rather than a statement in each write: no extra round trip, and no write path can forget it.
//! SQLite has no listeners; there the migration does nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000006_session_notify"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        // Notifications are sent when the transaction commits, and never for one that rolls back.
        db.execute_unprepared(
            "CREATE OR REPLACE FUNCTION flowgate_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               PERFORM pg_notify('flowgate_sessions', CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END); \
               RETURN NULL; \
             END $$",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TRIGGER sessions_changed AFTER UPDATE OR DELETE ON sessions \
             FOR EACH ROW EXECUTE FUNCTION flowgate_session_changed()",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared("DROP TRIGGER IF EXISTS sessions_changed ON sessions").await?;
        db.execute_unprepared("DROP FUNCTION IF EXISTS flowgate_session_changed()").await?;
        Ok(())
    }
}
