//! The indexes on `sessions.fingerprint_id` and `sessions.expiration` hold only the rows that have a value.
//!
//! Most sessions have neither (a client sends no fingerprint, a session without a lifetime never expires),
//! yet every new session paid for an entry under NULL in both indexes. The filters they serve compare the
//! column with a value (`fingerprint_id = ?`, `expiration < ?`, …), which no NULL satisfies, so both engines
//! still use the partial indexes for them. The same statements run on SQLite and PostgreSQL.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000010_session_sparse_indexes"
    }
}

/// The indexed columns; each index is named `sessions_<column>_idx`, as migration 003 made it.
const SPARSE: [&str; 2] = ["fingerprint_id", "expiration"];

/// Replaces each index of [`SPARSE`] by one over the rows where the column is set (`partial`) or all rows.
async fn recreate(manager: &SchemaManager<'_>, partial: bool) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for column in SPARSE {
        let only_set = if partial { format!(" WHERE {column} IS NOT NULL") } else { String::new() };
        db.execute_unprepared(&format!("DROP INDEX sessions_{column}_idx")).await?;
        db.execute_unprepared(&format!("CREATE INDEX sessions_{column}_idx ON sessions ({column}){only_set}")).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        recreate(manager, true).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        recreate(manager, false).await
    }

    fn use_transaction(&self) -> Option<bool> {
        // A filter must never find its index missing between the drop and the create.
        Some(true)
    }
}
