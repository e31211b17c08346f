//! The store handle: pools, migrations and health.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use flowgate_core::system::StoreStatus;
use sea_orm::{DatabaseConnection, TransactionTrait};
use sea_orm_migration::MigratorTrait;

use crate::backend::{self, Backend, Pools};
use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::group_commit::GroupCommit;
use crate::migration::Migrator;

/// Handle to the database; cheap to clone (all clones share the pools).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pools: Pools,
    write_attempts: u32,
    /// Shared transactions for concurrent writes, where one connection does all writing (SQLite files).
    group_commit: Option<GroupCommit>,
    /// WAL frames the background checkpoints copied into the SQLite file so far.
    checkpointed: AtomicU64,
}

/// Pause between background checkpoints while writes keep coming.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(100);

/// Longest pause between background checkpoints, reached while nothing is written.
const CHECKPOINT_IDLE_PAUSE: Duration = Duration::from_millis(400);

/// Connection counts of the store's pools, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections (idle or in use).
    pub connections: u32,
    /// Open connections waiting for work.
    pub idle: u32,
    /// Most connections the pools will open.
    pub max: u32,
}

/// Copies the WAL of an SQLite file back into the file while the store lives, so that the single writer
/// never does it inside a commit: there a checkpoint (reading the WAL, writing and syncing the file) held up
/// every write queued behind it. The checkpoints run on a reader connection, `PASSIVE`ly (they wait for
/// nobody and skip frames that readers still use); every [`CHECKPOINT_PAUSE`] while writes come in, backing
/// off to [`CHECKPOINT_IDLE_PAUSE`] when there is nothing to copy. The writer checkpoints by itself only when
/// the WAL grows past [`backend::WRITER_AUTOCHECKPOINT_PAGES`]. Holds the store weakly: a store that is
/// dropped or closed ends it.
async fn checkpoint_in_background(store: Weak<Inner>) {
    let mut pause = CHECKPOINT_PAUSE;
    let mut last = None;
    loop {
        tokio::time::sleep(pause).await;
        let Some(inner) = store.upgrade() else { return };
        if inner.pools.is_closed() {
            return;
        }
        match inner.pools.checkpoint().await {
            Ok(Some(progress)) => {
                let copied = match last {
                    // The same WAL as last time: the difference. A WAL restarted from its beginning since
                    // (by the writer, once everything was copied) counts from zero.
                    Some(backend::WalProgress { frames, checkpointed })
                        if progress.frames >= frames && progress.checkpointed >= checkpointed =>
                    {
                        progress.checkpointed - checkpointed
                    }
                    _ => progress.checkpointed,
                };
                inner.checkpointed.fetch_add(u64::try_from(copied).unwrap_or(0), Ordering::Relaxed);
                pause = if Some(progress) == last { (pause * 2).min(CHECKPOINT_IDLE_PAUSE) } else { CHECKPOINT_PAUSE };
                last = Some(progress);
            }
            Ok(None) => return,
            Err(err) => {
                if inner.pools.is_closed() {
                    return;
                }
                // The writer's own checkpoints still bound the WAL; try again later.
                tracing::warn!(error = %err, "background checkpoint failed");
                pause = CHECKPOINT_IDLE_PAUSE;
            }
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend()).field("pools", &self.pool_stats()).finish()
    }
}

impl Store {
    /// Opens the database named by `config` (SQLite file by default); does not migrate.
    pub async fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        let pools = backend::open(config).await?;
        tracing::debug!(backend = pools.backend.as_str(), "store connected");
        // PostgreSQL runs concurrent writes side by side and groups their commits itself. An in-memory SQLite
        // database has one connection for everything, which a batch must not hold while members gather.
        let group_commit = (pools.has_dedicated_writer() && config.group_commit > 1)
            .then(|| GroupCommit::new(pools.writer.clone(), config.group_commit));
        let write_attempts = config.write_attempts.max(1);
        let has_wal = pools.has_dedicated_writer();
        let inner = Arc::new(Inner { pools, write_attempts, group_commit, checkpointed: AtomicU64::new(0) });
        if has_wal {
            tokio::spawn(checkpoint_in_background(Arc::downgrade(&inner)));
        }
        Ok(Store { inner })
    }

    /// WAL frames the background checkpoints have copied into the SQLite file (0 on PostgreSQL and for
    /// in-memory SQLite, which have none); a lower bound when the WAL restarts between two checkpoints.
    pub fn checkpointed_frames(&self) -> u64 {
        self.inner.checkpointed.load(Ordering::Relaxed)
    }

    /// Applies pending migrations in one transaction; safe to run again and from several replicas at once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_steps(None).await
    }

    /// [`Store::migrate`] for the next `steps` pending migrations only (all of them for `None`).
    pub(crate) async fn migrate_steps(&self, steps: Option<u32>) -> Result<(), StoreError> {
        let txn = self.writer().begin_with_options(backend::write_transaction_options(self.backend())).await?;
        backend::lock_migrations(&txn, self.backend()).await?;
        Migrator::up(&txn, steps).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Name of the newest applied migration (e.g. `m20261124_000001_event_log`).
    pub async fn schema_version(&self) -> Result<String, StoreError> {
        // The read-only variant never creates the bookkeeping table, so asking never changes the database.
        let applied = Migrator::get_applied_migrations_read_only(self.reader()).await?;
        applied.last().map(|m| m.name().to_owned()).ok_or(StoreError::NotMigrated)
    }

    /// Names of migrations not yet applied, oldest first (empty when the schema is current).
    pub async fn pending_migrations(&self) -> Result<Vec<String>, StoreError> {
        let pending = Migrator::get_pending_migrations_read_only(self.reader()).await?;
        Ok(pending.iter().map(|m| m.name().to_owned()).collect())
    }

    /// Succeeds when the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.reader().ping().await?)
    }

    /// The engine behind the store.
    pub fn backend(&self) -> Backend {
        self.inner.pools.backend
    }

    /// Current connection counts, for the Prometheus exporter.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pools.stats()
    }

    /// Connection for queries. On SQLite, writes must not go through it: use [`Store::write`] or [`Store::writer`].
    pub fn reader(&self) -> &DatabaseConnection {
        &self.inner.pools.reader
    }

    /// Connection for writes that append no event (e.g. deleting expired rows); on SQLite it is the single,
    /// serialized writer, so keep its transactions short.
    pub fn writer(&self) -> &DatabaseConnection {
        &self.inner.pools.writer
    }

    /// Closes all connections (after waiting for those in use); later calls fail as unavailable.
    pub async fn close(&self) {
        self.inner.pools.close().await;
    }

    /// Whether [`Store::close`] ran: the store answers nothing any more.
    pub fn is_closed(&self) -> bool {
        self.inner.pools.is_closed()
    }

    /// The PostgreSQL pool behind the store, if that is the engine.
    pub(crate) fn postgres_pool(&self) -> Option<&sea_orm::sqlx::PgPool> {
        self.inner.pools.postgres()
    }

    /// Shared transactions for concurrent writes, when the store batches them.
    pub(crate) fn group_commit(&self) -> Option<&GroupCommit> {
        self.inner.group_commit.as_ref()
    }

    /// How many times a write is tried before it fails with `STORE-conflict`.
    pub(crate) fn write_attempts(&self) -> u32 {
        self.inner.write_attempts
    }
}

#[async_trait]
impl StoreStatus for Store {
    fn backend(&self) -> Backend {
        Store::backend(self)
    }

    async fn schema_version(&self) -> flowgate_core::Result<String> {
        Ok(Store::schema_version(self).await?)
    }

    async fn ping(&self) -> flowgate_core::Result<()> {
        Ok(Store::ping(self).await?)
    }
}
