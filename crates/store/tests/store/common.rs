//! The harness every scenario shares: one migrated database per test, on SQLite and (when
//! `FLOWGATE_TEST_DATABASE_URL` is set) PostgreSQL.

use flowgate_store::{Backend, Store, StoreConfig, testing};

/// One database for one test; removed again when the test passes.
pub struct TestDb {
    pub store: Store,
    /// Keeps the SQLite directory alive for the test's duration.
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database to drop at the end.
    postgres_url: Option<String>,
}

pub fn default_config(url: Option<String>, data_dir: std::path::PathBuf) -> StoreConfig {
    StoreConfig { url, data_dir, max_connections: 8, write_attempts: 5, ..StoreConfig::default() }
}

impl TestDb {
    pub async fn sqlite(config: fn(Option<String>, std::path::PathBuf) -> StoreConfig) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::connect(&config(None, dir.path().join("data"))).await.expect("connect to SQLite");
        assert_eq!(store.backend(), Backend::Sqlite);
        TestDb { store, _dir: Some(dir), postgres_url: None }
    }

    pub async fn postgres(config: fn(Option<String>, std::path::PathBuf) -> StoreConfig) -> Option<TestDb> {
        let base = std::env::var("FLOWGATE_TEST_DATABASE_URL").ok().filter(|url| !url.is_empty())?;
        let url = testing::isolated_database_url(&base).await.expect("create a PostgreSQL test database");
        let store = Store::connect(&config(Some(url.clone()), std::env::temp_dir())).await.expect("connect");
        assert_eq!(store.backend(), Backend::Postgres);
        Some(TestDb { store, _dir: None, postgres_url: Some(url) })
    }

    pub async fn finish(self) {
        self.store.close().await;
        if let Some(url) = self.postgres_url {
            testing::drop_isolated_database(&url).await.expect("drop the test database");
        }
    }
}

/// Generates one `#[tokio::test]` per scenario and backend; `migrate` says whether the scenario gets
/// a migrated store or starts from an empty database.
macro_rules! scenarios {
    (config = $config:path, migrate = $migrate:expr; $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::TestDb::sqlite($config).await;
                    if $migrate {
                        db.store.migrate().await.expect("migrate");
                    }
                    super::$name(&db.store).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::common::TestDb::postgres($config).await else {
                        eprintln!("FLOWGATE_TEST_DATABASE_URL is not set; PostgreSQL variant skipped");
                        return;
                    };
                    if $migrate {
                        db.store.migrate().await.expect("migrate");
                    }
                    super::$name(&db.store).await;
                    db.finish().await;
                }
            )*
        }
    };
}

pub(crate) use scenarios;
