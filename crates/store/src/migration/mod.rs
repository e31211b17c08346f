//! Schema migrations, applied in order by [`Migrator`]; one module per migration.
//!
//! Names are written out in each module (not derived from file names) so that moving a file can never
//! rename an applied migration. What a migration does, once released, is never changed: add a new one.
//! (Their code may share helpers that run the very same statements.)

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr};
use sea_orm_migration::{MigrationTrait, MigratorTrait, SchemaManager};

mod m20261124_000001_event_log;
mod m20261124_000002_identity;
mod m20261124_000003_sessions;
mod m20261124_000004_flows;
mod m20261124_000005_idps;
mod m20261124_000006_session_notify;
mod m20261125_000007_identity_notify;
mod m20261125_000008_credential_notify;
mod m20261125_000009_session_token_selector;
mod m20261125_000010_session_sparse_indexes;

/// The ordered list of flowgate's migrations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    /// Every migration, oldest first.
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_event_log::Migration),
            Box::new(m20261124_000002_identity::Migration),
            Box::new(m20261124_000003_sessions::Migration),
            Box::new(m20261124_000004_flows::Migration),
            Box::new(m20261124_000005_idps::Migration),
            Box::new(m20261124_000006_session_notify::Migration),
            Box::new(m20261125_000007_identity_notify::Migration),
            Box::new(m20261125_000008_credential_notify::Migration),
            Box::new(m20261125_000009_session_token_selector::Migration),
            Box::new(m20261125_000010_session_sparse_indexes::Migration),
        ]
    }
}

/// Runs `statements` in order on PostgreSQL, and nothing on SQLite: for the migrations that add what only
/// PostgreSQL offers (triggers that announce changes to listening servers; SQLite has no listeners).
async fn on_postgres(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let db = manager.get_connection();
    for statement in statements {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}
