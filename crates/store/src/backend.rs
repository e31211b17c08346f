//! Every difference between SQLite and PostgreSQL: URLs, pools and pragmas, how writes are serialized,
//! and what a driver error means. Nothing outside this module looks at the engine.

use std::path::Path;
use std::str::FromStr;

use flowgate_core::event::AggregateRef;
use sea_orm::sea_query::{Expr, LikeExpr};
use sea_orm::sqlx::error::DatabaseError;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPool, PgPoolOptions};
use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteError, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, RuntimeErr, SqliteTransactionMode,
    SqlxPostgresConnector, SqlxSqliteConnector, Statement, TransactionOptions, sqlx,
};

pub use flowgate_core::system::Backend;

use crate::config::{StoreConfig, redact_url};
use crate::error::StoreError;
use crate::store::PoolStats;

/// File name of the default SQLite database inside the data directory.
const SQLITE_FILE: &str = "flowgate.db";

/// First key of PostgreSQL advisory locks taken by flowgate, so they never collide with other users of the
/// same database; the second key says what is locked.
const PG_LOCK_SPACE: i32 = 0x666c_6f77; // "flow"
/// Second advisory-lock key of the schema migration lock.
const PG_LOCK_MIGRATIONS: i32 = 0;

/// What a failed database operation means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DbErrorClass {
    /// A unique or primary key constraint rejected the row.
    UniqueViolation,
    /// Another transaction got in the way (busy, serialization failure, deadlock); retrying may succeed.
    Transient,
    /// The database cannot be reached or refuses work right now.
    Unavailable,
    /// Anything else: a bug or corruption.
    Other,
}

/// Where the configured URL points.
enum Target {
    Sqlite { options: SqliteConnectOptions, in_memory: bool },
    Postgres(PgConnectOptions),
}

/// The open pools behind a store.
pub(crate) struct Pools {
    /// Engine of both connections.
    pub(crate) backend: Backend,
    /// For queries; on SQLite several connections that read concurrently thanks to WAL.
    pub(crate) reader: DatabaseConnection,
    /// For transactions that write; on SQLite exactly one connection (see [`open`]).
    pub(crate) writer: DatabaseConnection,
    handles: Handles,
}

/// WAL pages after which the SQLite writer checkpoints by itself (SQLite's default is 1000): a safety net
/// for when the background checkpoints fall behind, e.g. while long reads keep old frames in use.
pub(crate) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// What one checkpoint found, as `PRAGMA wal_checkpoint` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalProgress {
    /// Frames in the WAL.
    pub(crate) frames: i64,
    /// Frames of them that are in the database file.
    pub(crate) checkpointed: i64,
}

/// The sqlx pools, kept for statistics and shutdown.
enum Handles {
    Sqlite { reader: SqlitePool, writer: Option<SqlitePool> },
    Postgres(PgPool),
}

fn parse_target(config: &StoreConfig) -> Result<Target, StoreError> {
    let Some(url) = config.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        create_dir(&config.data_dir)?;
        let options = SqliteConnectOptions::new().filename(config.data_dir.join(SQLITE_FILE));
        return Ok(Target::Sqlite { options, in_memory: false });
    };
    let scheme = url.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase()).unwrap_or_default();
    match scheme.as_str() {
        "sqlite" => {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact_url(url))))?;
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            if !in_memory && let Some(parent) = options.get_filename().parent().filter(|p| !p.as_os_str().is_empty()) {
                create_dir(parent)?;
            }
            Ok(Target::Sqlite { options, in_memory })
        }
        "postgres" | "postgresql" => {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact_url(url))))?;
            Ok(Target::Postgres(options.application_name("flowgate")))
        }
        _ => Err(StoreError::InvalidUrl(format!(
            "{} has an unsupported scheme; use sqlite://<file>, postgres:// or postgresql://",
            redact_url(url)
        ))),
    }
}

fn create_dir(path: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    // The database holds password hashes and token digests: keep other local users out of it.
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path).map_err(|source| StoreError::DataDir { path: path.to_owned(), source })
}

/// Opens the pools for `config`.
///
/// SQLite allows one writer at a time per file. Instead of letting several pooled connections race for the
/// write lock (and surface `database is locked` once `busy_timeout` runs out under load), all writes go
/// through a pool of exactly one connection: concurrent writers queue in the pool, fairly and without
/// spinning, while readers use their own connections and, with WAL, never wait for the writer. Write
/// transactions also start with `BEGIN IMMEDIATE` (see [`write_transaction_options`]) so that a writer in
/// another process (`flowgate migrate` next to a running server) is waited for at `BEGIN`, where
/// `busy_timeout` applies, instead of failing a read-to-write lock upgrade halfway through.
pub(crate) async fn open(config: &StoreConfig) -> Result<Pools, StoreError> {
    let max = config.max_connections.max(1);
    match parse_target(config)? {
        Target::Sqlite { options, in_memory: true } => {
            // An in-memory database lives as long as its connections; one connection, never recycled,
            // keeps it alive and serves both reads and writes.
            let pool = sqlite_pool()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(config.acquire_timeout)
                .connect_with(options.foreign_keys(true).busy_timeout(config.busy_timeout))
                .await
                .map_err(StoreError::Connect)?;
            let conn = SqlxSqliteConnector::from_sqlx_sqlite_pool(pool.clone());
            Ok(Pools {
                backend: Backend::Sqlite,
                reader: conn.clone(),
                writer: conn,
                handles: Handles::Sqlite { reader: pool, writer: None },
            })
        }
        Target::Sqlite { options, in_memory: false } => {
            let options = options
                .create_if_missing(true)
                .foreign_keys(true)
                .busy_timeout(config.busy_timeout)
                // NORMAL under WAL keeps the database consistent on power loss and costs no fsync per
                // commit (10k+ commits/s instead of a few hundred); the last commits before a power cut
                // may be lost, never half-applied.
                .synchronous(SqliteSynchronous::Normal);
            // The writer is opened first: it creates the file and switches it to WAL, a persistent property
            // of the file, so reader connections need not (and must not, it takes an exclusive lock) set it.
            // Checkpoints run in the background ([`Pools::checkpoint`]), off the writer's serial section; the
            // writer checkpoints only when they fall far behind.
            let writer_options = options
                .clone()
                .journal_mode(SqliteJournalMode::Wal)
                .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES.to_string());
            let writer = sqlite_pool()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .acquire_timeout(config.acquire_timeout)
                .connect_with(writer_options)
                .await
                .map_err(StoreError::Connect)?;
            let reader = sqlite_pool()
                .max_connections(max)
                .acquire_timeout(config.acquire_timeout)
                .connect_with(options)
                .await
                .map_err(StoreError::Connect)?;
            Ok(Pools {
                backend: Backend::Sqlite,
                reader: SqlxSqliteConnector::from_sqlx_sqlite_pool(reader.clone()),
                writer: SqlxSqliteConnector::from_sqlx_sqlite_pool(writer.clone()),
                handles: Handles::Sqlite { reader, writer: Some(writer) },
            })
        }
        Target::Postgres(options) => {
            let pool = PgPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(config.acquire_timeout)
                .connect_with(options)
                .await
                .map_err(StoreError::Connect)?;
            let conn = SqlxPostgresConnector::from_sqlx_postgres_pool(pool.clone());
            Ok(Pools {
                backend: Backend::Postgres,
                reader: conn.clone(),
                writer: conn,
                handles: Handles::Postgres(pool),
            })
        }
    }
}

/// Pool options shared by every SQLite pool.
fn sqlite_pool() -> SqlitePoolOptions {
    // A local file cannot drop the connection; a liveness ping per checkout would be pure cost.
    SqlitePoolOptions::new().test_before_acquire(false)
}

impl Pools {
    /// Connection counts over all pools.
    pub(crate) fn stats(&self) -> PoolStats {
        match &self.handles {
            Handles::Sqlite { reader, writer } => {
                let (mut connections, mut idle, mut max) =
                    (reader.size(), reader.num_idle(), reader.options().get_max_connections());
                if let Some(writer) = writer {
                    connections += writer.size();
                    idle += writer.num_idle();
                    max += writer.options().get_max_connections();
                }
                PoolStats { connections, idle: u32::try_from(idle).unwrap_or(u32::MAX), max }
            }
            Handles::Postgres(pool) => PoolStats {
                connections: pool.size(),
                idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
                max: pool.options().get_max_connections(),
            },
        }
    }

    /// Whether all writing goes through one connection of its own (a SQLite file), apart from the readers.
    pub(crate) fn has_dedicated_writer(&self) -> bool {
        matches!(self.handles, Handles::Sqlite { writer: Some(_), .. })
    }

    /// Copies what the WAL holds back into an SQLite file without waiting for anyone (`PASSIVE`), on a
    /// reader connection: answers the WAL's frames and how many of them are in the file now. `None` where
    /// there is no WAL to checkpoint (PostgreSQL, in-memory SQLite).
    pub(crate) async fn checkpoint(&self) -> Result<Option<WalProgress>, sea_orm::sqlx::Error> {
        let Handles::Sqlite { reader, writer: Some(_) } = &self.handles else { return Ok(None) };
        let (_busy, frames, checkpointed): (i64, i64, i64) =
            sea_orm::sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(reader).await?;
        Ok(Some(WalProgress { frames, checkpointed }))
    }

    /// The PostgreSQL pool, for what only PostgreSQL offers (listening for notifications).
    pub(crate) fn postgres(&self) -> Option<&PgPool> {
        match &self.handles {
            Handles::Postgres(pool) => Some(pool),
            Handles::Sqlite { .. } => None,
        }
    }

    /// Whether [`Pools::close`] ran.
    pub(crate) fn is_closed(&self) -> bool {
        match &self.handles {
            Handles::Sqlite { reader, .. } => reader.is_closed(),
            Handles::Postgres(pool) => pool.is_closed(),
        }
    }

    /// Closes every connection, waiting for checked-out ones to come back.
    pub(crate) async fn close(&self) {
        match &self.handles {
            Handles::Sqlite { reader, writer } => {
                reader.close().await;
                if let Some(writer) = writer {
                    writer.close().await;
                }
            }
            Handles::Postgres(pool) => pool.close().await,
        }
    }
}

/// How write transactions begin: `BEGIN IMMEDIATE` on SQLite (take the write lock up front), the server's
/// default (READ COMMITTED) on PostgreSQL, where [`lock_aggregate`] provides the ordering.
pub(crate) fn write_transaction_options(backend: Backend) -> TransactionOptions {
    match backend {
        Backend::Sqlite => TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        },
        Backend::Postgres => TransactionOptions::default(),
    }
}

/// Makes concurrent writers of one aggregate take turns until the end of `txn`.
///
/// PostgreSQL: a transaction-scoped advisory lock on a hash of the aggregate, so a second writer waits and
/// then reads the first one's events instead of doing its work twice and failing on the unique sequence.
/// A hash collision only serializes two unrelated aggregates, never breaks correctness: the unique key on
/// (aggregate, sequence) remains the guarantee. SQLite: nothing to do, the writer holds the file's write lock.
pub(crate) async fn lock_aggregate(
    txn: &DatabaseTransaction,
    backend: Backend,
    aggregate: &AggregateRef,
) -> Result<(), DbErr> {
    match backend {
        Backend::Postgres => {
            // Length prefix: ("ab", "c") and ("a", "bc") must not share a key.
            let key =
                format!("{}:{}{}", aggregate.aggregate_type.len(), aggregate.aggregate_type, aggregate.aggregate_id);
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                [PG_LOCK_SPACE.into(), key.into()],
            ))
            .await
            .map(drop)
        }
        Backend::Sqlite => Ok(()),
    }
}

/// Makes concurrent `migrate` runs (several replicas starting at once) take turns until the end of `txn`.
pub(crate) async fn lock_migrations(txn: &DatabaseTransaction, backend: Backend) -> Result<(), DbErr> {
    match backend {
        Backend::Postgres => txn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1, $2)",
                [PG_LOCK_SPACE.into(), PG_LOCK_MIGRATIONS.into()],
            ))
            .await
            .map(drop),
        // The migration runs on the single writer connection, inside BEGIN IMMEDIATE.
        Backend::Sqlite => Ok(()),
    }
}

/// Classifies a sea-orm error by the driver's error code.
#[expect(clippy::wildcard_enum_match_arm, reason = "DbErr is non-exhaustive; whatever is not recognised is Other")]
pub(crate) fn classify(err: &DbErr) -> DbErrorClass {
    match err {
        DbErr::ConnectionAcquire(_) => DbErrorClass::Unavailable,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => classify_sqlx(e),
        DbErr::Conn(_) => DbErrorClass::Unavailable,
        _ => DbErrorClass::Other,
    }
}

#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "sqlx::Error is non-exhaustive; whatever is not recognised is Other"
)]
fn classify_sqlx(err: &sqlx::Error) -> DbErrorClass {
    match err {
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                classify_sqlstate(pg.code())
            } else if let Some(sqlite) = db.try_downcast_ref::<SqliteError>() {
                classify_sqlite(sqlite.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or_default())
            } else if db.is_unique_violation() {
                DbErrorClass::UniqueViolation
            } else {
                DbErrorClass::Other
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbErrorClass::Unavailable,
        _ => DbErrorClass::Other,
    }
}

/// Whether PostgreSQL refused a text value it cannot store (a NUL character: SQLSTATE 22021, or an
/// untranslatable character: 22P05). That is the client's input, never a fault of the server; SQLite
/// stores such text as given.
#[expect(clippy::wildcard_enum_match_arm, reason = "DbErr and sqlx::Error are non-exhaustive")]
pub(crate) fn is_unstorable_text(err: &DbErr) -> bool {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => match e.as_ref() {
            sqlx::Error::Database(db) => {
                db.try_downcast_ref::<PgDatabaseError>().is_some_and(|pg| matches!(pg.code(), "22021" | "22P05"))
            }
            _ => false,
        },
        _ => false,
    }
}

/// What names the constraint a unique violation hit: the constraint (index) name on PostgreSQL, the
/// `table.column, …` list of the message on SQLite; `None` when `err` is no unique violation.
///
/// Index names in the migrations contain the column names (`users_username_lower_key`), so a caller can
/// tell which field was taken on both engines by looking for the column name.
pub(crate) fn unique_violation_target(err: &DbErr) -> Option<String> {
    if classify(err) != DbErrorClass::UniqueViolation {
        return None;
    }
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err else {
        return None;
    };
    let sqlx::Error::Database(db) = e.as_ref() else { return None };
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        return pg.constraint().map(str::to_owned);
    }
    // "UNIQUE constraint failed: users.username_lower"
    let message = db.message();
    Some(message.split_once("failed:").map_or(message, |(_, columns)| columns.trim()).to_owned())
}

/// Where a literal text must occur in a column for [`text_match`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextPosition {
    /// At the start.
    Start,
    /// Anywhere.
    Anywhere,
    /// At the end.
    End,
}

/// `column` contains `needle` at `position`, compared case-sensitively and literally (wildcards in the
/// needle match only themselves). For a comparison ignoring case pass a lower-cased column and needle.
///
/// PostgreSQL's `LIKE` is case-sensitive; SQLite's ignores ASCII case, so SQLite uses `GLOB` instead.
pub(crate) fn text_match(backend: Backend, column: Expr, needle: &str, position: TextPosition) -> Expr {
    // Scoped here: at module level `ExprTrait::max` would shadow `u32::max`.
    use sea_orm::sea_query::ExprTrait;
    use sea_orm::sea_query::extension::sqlite::SqliteExpr;

    let (any, escaped) = match backend {
        Backend::Postgres => ('%', escape_like(needle)),
        Backend::Sqlite => ('*', escape_glob(needle)),
    };
    let pattern = match position {
        TextPosition::Start => format!("{escaped}{any}"),
        TextPosition::Anywhere => format!("{any}{escaped}{any}"),
        TextPosition::End => format!("{any}{escaped}"),
    };
    match backend {
        Backend::Postgres => column.like(LikeExpr::new(pattern).escape('\\')),
        Backend::Sqlite => column.glob(pattern),
    }
}

/// Escapes `LIKE` wildcards (and the escape character itself) with a backslash.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes `GLOB` wildcards by putting each in a one-character class (GLOB has no escape character).
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[') {
            out.push('[');
            out.push(c);
            out.push(']');
        } else {
            out.push(c);
        }
    }
    out
}

/// PostgreSQL SQLSTATE codes (appendix A of the PostgreSQL manual).
fn classify_sqlstate(code: &str) -> DbErrorClass {
    match code {
        "23505" => DbErrorClass::UniqueViolation,
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => DbErrorClass::Transient,
        // too_many_connections, admin/crash shutdown, cannot_connect_now, and the whole connection class 08
        "53300" | "57P01" | "57P02" | "57P03" => DbErrorClass::Unavailable,
        c if c.starts_with("08") => DbErrorClass::Unavailable,
        _ => DbErrorClass::Other,
    }
}

/// SQLite extended result codes; the low byte is the primary code.
fn classify_sqlite(code: i32) -> DbErrorClass {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    const SQLITE_IOERR: i32 = 10;
    const SQLITE_FULL: i32 = 13;
    const SQLITE_CANTOPEN: i32 = 14;
    const SQLITE_CONSTRAINT_PRIMARYKEY: i32 = 1555;
    const SQLITE_CONSTRAINT_UNIQUE: i32 = 2067;
    match code {
        SQLITE_CONSTRAINT_PRIMARYKEY | SQLITE_CONSTRAINT_UNIQUE => DbErrorClass::UniqueViolation,
        c => match c & 0xff {
            SQLITE_BUSY | SQLITE_LOCKED => DbErrorClass::Transient,
            SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN => DbErrorClass::Unavailable,
            _ => DbErrorClass::Other,
        },
    }
}

/// Throw-away databases for test suites.
#[cfg(feature = "testing")]
pub(crate) mod testing {
    use std::str::FromStr;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sea_orm::sqlx::{self, Row};

    use crate::config::redact_url;
    use crate::error::StoreError;

    /// Prefix of every database created by [`create_postgres_database`].
    pub(crate) const DB_PREFIX: &str = "flowgate_t_";

    /// Whether `url` names a PostgreSQL server.
    pub(crate) fn is_postgres(url: &str) -> bool {
        let lower = url.trim_start().to_ascii_lowercase();
        lower.starts_with("postgres://") || lower.starts_with("postgresql://")
    }

    async fn admin_pool(base: &str) -> Result<sqlx::PgPool, StoreError> {
        let options = PgConnectOptions::from_str(base)
            .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact_url(base))))?;
        PgPoolOptions::new().max_connections(1).connect_with(options).await.map_err(StoreError::Connect)
    }

    /// Creates database `name` on the server of `base` and returns the URL of the new database.
    pub(crate) async fn create_postgres_database(base: &str, name: &str) -> Result<String, StoreError> {
        let pool = admin_pool(base).await?;
        // `name` is generated by the caller from a prefix and a UUID: nothing to quote or inject.
        let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&pool).await;
        pool.close().await;
        created.map_err(|e| StoreError::Db(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into()))))?;
        let mut url =
            url::Url::parse(base).map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact_url(base))))?;
        url.set_path(&format!("/{name}"));
        Ok(url.to_string())
    }

    /// Drops every `flowgate_t_…` database older than `min_age` that nobody is connected to; returns how
    /// many were dropped.
    pub(crate) async fn drop_unused_databases(base: &str, min_age: Duration) -> Result<u64, StoreError> {
        let pool = admin_pool(base).await?;
        let result = drop_unused(&pool, min_age).await;
        pool.close().await;
        result.map_err(|e| StoreError::Db(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into()))))
    }

    /// How long ago the database `name` was created, from the UUIDv7 in its name (`None` if it has none).
    fn age(name: &str) -> Option<Duration> {
        let id = uuid::Uuid::try_parse(name.strip_prefix(DB_PREFIX)?).ok()?;
        let (secs, nanos) = id.get_timestamp()?.to_unix();
        let created = UNIX_EPOCH + Duration::new(secs, nanos);
        Some(SystemTime::now().duration_since(created).unwrap_or_default())
    }

    async fn drop_unused(pool: &sqlx::PgPool, min_age: Duration) -> Result<u64, sqlx::Error> {
        let rows = sqlx::query("SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname")
            .bind(DB_PREFIX)
            .fetch_all(pool)
            .await?;
        let mut dropped = 0;
        for row in rows {
            let name: String = row.try_get(0)?;
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            // A suite may create its database a moment before it connects: young ones are left alone.
            if age(&name).is_some_and(|age| age < min_age) {
                continue;
            }
            // Without FORCE, PostgreSQL refuses to drop a database that has connections: a suite that is
            // still running keeps its databases, and only leftovers of finished or killed runs go.
            match sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\""))).execute(pool).await {
                Ok(_) => dropped += 1,
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(dropped)
    }

    /// Drops database `name` (which `url` points at) even if connections remain; like `dropdb`, it connects
    /// to the `postgres` maintenance database for that, or to `template1` when that one is missing.
    pub(crate) async fn drop_postgres_database(url: &str, name: &str) -> Result<(), StoreError> {
        let mut maintenance =
            url::Url::parse(url).map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact_url(url))))?;
        maintenance.set_path("/postgres");
        let pool = match admin_pool(maintenance.as_str()).await {
            Ok(pool) => pool,
            Err(_) => {
                maintenance.set_path("/template1");
                admin_pool(maintenance.as_str()).await?
            }
        };
        let dropped = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
            .execute(&pool)
            .await;
        pool.close().await;
        dropped.map(drop).map_err(|e| StoreError::Db(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_scheme_names_database_url() {
        let config = StoreConfig::with_url(Some("mysql://root:pw@localhost/db".into()));
        let Err(err) = parse_target(&config) else { panic!("mysql must be refused") };
        let text = err.to_string();
        assert!(text.contains("database_url"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
    }

    #[test]
    fn sqlite_codes() {
        assert_eq!(classify_sqlite(5), DbErrorClass::Transient);
        assert_eq!(classify_sqlite(517), DbErrorClass::Transient);
        assert_eq!(classify_sqlite(2067), DbErrorClass::UniqueViolation);
        assert_eq!(classify_sqlite(19), DbErrorClass::Other);
    }

    #[test]
    fn wildcards_are_escaped() {
        assert_eq!(escape_like(r"50%_a\b"), r"50\%\_a\\b");
        assert_eq!(escape_glob("a*b?[c]"), "a[*]b[?][[]c]");
    }

    #[test]
    fn postgres_codes() {
        assert_eq!(classify_sqlstate("23505"), DbErrorClass::UniqueViolation);
        assert_eq!(classify_sqlstate("40001"), DbErrorClass::Transient);
        assert_eq!(classify_sqlstate("08006"), DbErrorClass::Unavailable);
        assert_eq!(classify_sqlstate("42P01"), DbErrorClass::Other);
    }
}
