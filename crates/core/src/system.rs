//! System information: what this server is and what it runs on.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::Result;

/// Which database engine backs the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file (the default).
    Sqlite,
    /// PostgreSQL server (production, several replicas).
    Postgres,
}

impl Backend {
    /// Lower-case name as shown to operators and clients (`sqlite` | `postgres`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Port: what the system use cases need to know about storage.
#[async_trait]
pub trait StoreStatus: Send + Sync {
    /// The engine behind the store.
    fn backend(&self) -> Backend;
    /// Name of the newest applied migration.
    async fn schema_version(&self) -> Result<String>;
    /// Succeeds when the database answers a trivial query.
    async fn ping(&self) -> Result<()>;
}

/// Facts about the running server, answered by `GetInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// Semantic version of the binary.
    pub version: String,
    /// Git commit the binary was built from (`unknown` outside a checkout).
    pub commit: String,
    /// Database engine.
    pub backend: Backend,
    /// Newest applied migration.
    pub schema_version: String,
    /// Time since the server started.
    pub uptime: Duration,
    /// When the server started (wall clock).
    pub start_time: DateTime<Utc>,
    /// The served API families.
    pub families: Vec<ApiFamily>,
}

/// One served protobuf package with its services and REST dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFamily {
    /// Protobuf package, e.g. `flowgate.session.v2`.
    pub package: String,
    /// Fully-qualified service names in the package.
    pub services: Vec<String>,
    /// REST dialect name (`zitadel`, `authentik`, `pingone`).
    pub rest_dialect: String,
}

/// Static facts fixed at start-up.
#[derive(Debug, Clone)]
pub struct BuildFacts {
    /// Semantic version of the binary.
    pub version: String,
    /// Git commit the binary was built from.
    pub commit: String,
    /// The served API families.
    pub families: Vec<ApiFamily>,
    /// Newest migration applied when this process started. Read once: the schema only changes by a
    /// migration at start-up, and GetInfo should cost no database round trip.
    pub schema_version: String,
    /// When the server started (monotonic, for uptime).
    pub started: Instant,
    /// When the server started (wall clock).
    pub start_time: DateTime<Utc>,
}

/// Use case: report version, storage and uptime.
pub async fn get_info(facts: &BuildFacts, store: &dyn StoreStatus) -> Result<SystemInfo> {
    Ok(SystemInfo {
        version: facts.version.clone(),
        commit: facts.commit.clone(),
        backend: store.backend(),
        schema_version: facts.schema_version.clone(),
        uptime: facts.started.elapsed(),
        start_time: facts.start_time,
        families: facts.families.clone(),
    })
}
