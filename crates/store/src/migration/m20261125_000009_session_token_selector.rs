//! Session tokens name their session (`fgs_<session id>.<secret>`), so the bearer path reads the session by
//! its primary key and compares the digest itself. The unique index on `sessions.token_hash` served only
//! the lookup by digest, and every new session paid for it with an insert on a random page of that index:
//! it goes.
//!
//! Tokens issued before keep working until their session's next change rotates them. Their sessions can
//! only be found by digest, so the digest is copied into `legacy_token_hash` for every existing row (all of
//! their tokens are of the old shape), with a unique index that holds just those rows: new sessions and
//! rotated ones leave the column NULL.
//!
//! PostgreSQL changes the table in place. SQLite cannot drop a constraint declared with its table, so there
//! the table is rebuilt; `otp_challenges` refers to it with `ON DELETE CASCADE` and foreign keys cannot be
//! switched off inside the migration's transaction, so the challenges are set aside while `sessions` is
//! replaced and `otp_challenges` is created again around them.
//!
//! `down` restores the shape of before (the unique index on `token_hash`, no `legacy_token_hash`). Tokens
//! issued since in the new shape are then not understood any more: their sessions need a change (which
//! answers a new token) before their tokens work again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

use super::m20261124_000003_sessions::{otp_challenges_table, session_columns, session_indexes, token_hash_key};

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000009_session_token_selector"
    }
}

/// The partial unique index of the legacy digests (the same statement on both engines).
const LEGACY_TOKEN_HASH_KEY: &str = concat!(
    "CREATE UNIQUE INDEX sessions_legacy_token_hash_key ON sessions (legacy_token_hash) ",
    "WHERE legacy_token_hash IS NOT NULL"
);

/// The column of the legacy digests.
const LEGACY_TOKEN_HASH: &str = "legacy_token_hash";

/// Where SQLite builds the new `sessions` before it takes the name.
const REBUILT: &str = "sessions_rebuilt";

/// Where SQLite keeps the challenges while `otp_challenges` is created again.
const CHALLENGES_ASIDE: &str = "otp_challenges_aside";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Sqlite {
            return rebuild_sessions_on_sqlite(manager, Shape::WithLegacyColumn).await;
        }
        super::on_postgres(
            manager,
            &[
                "ALTER TABLE sessions ADD COLUMN legacy_token_hash text NULL",
                // Filling the column changes nothing a server remembers of a session: no announcement of
                // every row to the listening replicas.
                "ALTER TABLE sessions DISABLE TRIGGER sessions_changed",
                "UPDATE sessions SET legacy_token_hash = token_hash",
                "ALTER TABLE sessions ENABLE TRIGGER sessions_changed",
                "ALTER TABLE sessions DROP CONSTRAINT sessions_token_hash_key",
                LEGACY_TOKEN_HASH_KEY,
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Sqlite {
            return rebuild_sessions_on_sqlite(manager, Shape::Before).await;
        }
        super::on_postgres(
            manager,
            &[
                "DROP INDEX sessions_legacy_token_hash_key",
                "ALTER TABLE sessions DROP COLUMN legacy_token_hash",
                "ALTER TABLE sessions ADD CONSTRAINT sessions_token_hash_key UNIQUE (token_hash)",
            ],
        )
        .await
    }

    fn use_transaction(&self) -> Option<bool> {
        // The SQLite rebuild must never be seen half done.
        Some(true)
    }
}

/// What [`rebuild_sessions_on_sqlite`] makes of `sessions`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// This migration's: `legacy_token_hash` filled with every row's digest, no unique index on `token_hash`.
    WithLegacyColumn,
    /// As migration 003 created it.
    Before,
}

/// `"a", "b", …` of `names`.
fn column_list(names: &[String]) -> String {
    names.iter().map(|name| format!("\"{name}\"")).collect::<Vec<_>>().join(", ")
}

/// Replaces SQLite's `sessions` by a table of `shape` holding the same rows, without losing a challenge.
async fn rebuild_sessions_on_sqlite(manager: &SchemaManager<'_>, shape: Shape) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let columns = session_columns();
    let names: Vec<String> = columns.iter().map(ColumnDef::get_column_name).collect();

    let mut rebuilt = Table::create().table(Alias::new(REBUILT)).to_owned();
    for column in columns {
        rebuilt.col(column);
    }
    let copied = column_list(&names);
    let copy = match shape {
        Shape::WithLegacyColumn => {
            rebuilt.col(ColumnDef::new(Alias::new(LEGACY_TOKEN_HASH)).text().null());
            // Every token issued so far is of the legacy shape.
            let into = format!("{copied}, \"{LEGACY_TOKEN_HASH}\"");
            format!("INSERT INTO {REBUILT} ({into}) SELECT {copied}, \"token_hash\" FROM sessions")
        }
        Shape::Before => {
            rebuilt.index(&mut token_hash_key());
            format!("INSERT INTO {REBUILT} ({copied}) SELECT {copied} FROM sessions")
        }
    };
    manager.create_table(rebuilt).await?;
    db.execute_unprepared(&copy).await?;

    // The challenges wait in a table of the same column types (so SQLite converts no value) without the
    // foreign key, whose cascade would delete them with the old `sessions`.
    let challenges = otp_challenges_table();
    let challenge_names: Vec<String> = challenges.get_columns().iter().map(ColumnDef::get_column_name).collect();
    let mut aside = Table::create().table(Alias::new(CHALLENGES_ASIDE)).to_owned();
    for column in challenges.get_columns() {
        aside.col(column.clone());
    }
    manager.create_table(aside).await?;
    let challenge_columns = column_list(&challenge_names);
    db.execute_unprepared(&format!(
        "INSERT INTO {CHALLENGES_ASIDE} ({challenge_columns}) SELECT {challenge_columns} FROM otp_challenges"
    ))
    .await?;
    db.execute_unprepared("DROP TABLE otp_challenges").await?;

    db.execute_unprepared("DROP TABLE sessions").await?;
    db.execute_unprepared(&format!("ALTER TABLE {REBUILT} RENAME TO sessions")).await?;
    manager.create_table(challenges).await?;
    db.execute_unprepared(&format!(
        "INSERT INTO otp_challenges ({challenge_columns}) SELECT {challenge_columns} FROM {CHALLENGES_ASIDE}"
    ))
    .await?;
    db.execute_unprepared(&format!("DROP TABLE {CHALLENGES_ASIDE}")).await?;

    // The indexes went with the old table.
    for index in session_indexes() {
        manager.create_index(index).await?;
    }
    if shape == Shape::WithLegacyColumn {
        db.execute_unprepared(LEGACY_TOKEN_HASH_KEY).await?;
    }
    Ok(())
}
