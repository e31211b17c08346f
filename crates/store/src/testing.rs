//! Throw-away databases for test suites: every test gets its own, on SQLite or on PostgreSQL, migrated
//! fully or (to test a migration) up to an older schema.

use std::path::PathBuf;
use std::time::Duration;

use sea_orm::{DbErr, Statement};

use crate::backend::Backend;
use crate::backend::testing::{
    DB_PREFIX, create_postgres_database, drop_postgres_database, drop_unused_databases, is_postgres,
};
use crate::error::StoreError;
use crate::planned::{self, PlannedStatement, RowInsert};
use crate::store::Store;

/// URL of a database nobody else uses: a new `flowgate_t_<uuid>` database on the server of a PostgreSQL
/// `base`, otherwise a new SQLite file in a new directory under the system's temp dir (left for the OS to clean).
pub async fn isolated_database_url(base: &str) -> Result<String, StoreError> {
    // Version 7: the name tells its creation time, so a cleanup can spare databases just being set up.
    let id = uuid::Uuid::now_v7().simple();
    if is_postgres(base) {
        return create_postgres_database(base, &format!("{DB_PREFIX}{id}")).await;
    }
    let dir = std::env::temp_dir().join(format!("flowgate-test-{id}"));
    std::fs::create_dir_all(&dir).map_err(|source| StoreError::DataDir { path: dir.clone(), source })?;
    Ok(sqlite_url(dir.join("flowgate.db")))
}

/// Drops what [`isolated_database_url`] created for `url`: the PostgreSQL database (even if still connected)
/// or the SQLite file's directory. Close the store first.
pub async fn drop_isolated_database(url: &str) -> Result<(), StoreError> {
    if is_postgres(url) {
        let parsed = url::Url::parse(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let name = parsed.path().trim_start_matches('/').to_owned();
        if !name.starts_with(DB_PREFIX) {
            return Err(StoreError::InvalidUrl(format!("{name} is not a test database")));
        }
        return drop_postgres_database(url, &name).await;
    }
    let Some(path) = url.strip_prefix("sqlite://") else { return Ok(()) };
    let file = PathBuf::from(path.split('?').next().unwrap_or(path));
    match file.parent() {
        Some(dir) if dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("flowgate-test-")) => {
            std::fs::remove_dir_all(dir).map_err(|source| StoreError::DataDir { path: dir.to_owned(), source })
        }
        _ => Ok(()),
    }
}

/// Drops the `flowgate_t_…` databases that earlier runs left on the server of `base` (those in use or
/// created in the last minute are kept); returns how many were dropped. Does nothing for other URLs.
pub async fn drop_stale_databases(base: &str) -> Result<u64, StoreError> {
    if !is_postgres(base) {
        return Ok(0);
    }
    drop_unused_databases(base, STALE_AFTER).await
}

/// Applies the pending migrations up to and including the one named `last`, and no later one: a schema of
/// before, for testing a migration on rows written before it. `last` not pending ⇒ [`StoreError::Db`]
/// naming it.
pub async fn migrate_until(store: &Store, last: &str) -> Result<(), StoreError> {
    let pending = store.pending_migrations().await?;
    let Some(position) = pending.iter().position(|name| name == last) else {
        return Err(StoreError::Db(DbErr::Migration(format!("migration {last} is not pending"))));
    };
    let steps = u32::try_from(position + 1).map_err(|_| DbErr::Migration("too many migrations".to_owned()))?;
    store.migrate_steps(Some(steps)).await
}

/// Age after which an unused test database counts as left over.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// `sqlite://` URL of `file` that creates the file when missing.
pub fn sqlite_url(file: PathBuf) -> String {
    format!("sqlite://{}?mode=rwc", file.display())
}

/// The statement `rows` of a planned write go in as when nothing else comes with them: a batch's merged
/// inserts on SQLite, the single statement on PostgreSQL; for tests that run it on the engine directly.
pub fn combined_inserts(backend: Backend, rows: Vec<RowInsert>) -> Option<Statement> {
    match backend {
        Backend::Sqlite if rows.is_empty() => None,
        Backend::Sqlite => Some(planned::combine_for_sqlite(rows.into_iter().map(PlannedStatement::from))),
        Backend::Postgres => planned::insert_all_for_postgres(rows),
    }
}
