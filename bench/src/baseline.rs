//! The physical limits a scenario is compared with, measured in the same run: the argon2id verify rate
//! of the server's parameters on the server's cores, and the raw single-row insert+commit rate of the
//! database with flowgate's settings.

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sqlx::AssertSqlSafe;
use sqlx::ConnectOptions as _;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};

use crate::process::pin_current_thread;

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Argon2Params {
    /// Memory per hash in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

/// Verifies per second with one thread per server core, each pinned to its core when the run is pinned.
pub async fn argon2_verify_rate(
    params: Argon2Params,
    cores: Vec<usize>,
    pinned: bool,
    time: Duration,
) -> Result<f64, String> {
    tokio::task::spawn_blocking(move || argon2_blocking(params, &cores, pinned, time))
        .await
        .map_err(|e| format!("argon2 task: {e}"))?
}

fn argon2_blocking(params: Argon2Params, cores: &[usize], pinned: bool, time: Duration) -> Result<f64, String> {
    const PASSWORD: &[u8] = b"correct horse battery staple";
    let argon = argon2(params)?;
    let salt = SaltString::encode_b64(b"flowgate-bench-salt").map_err(|e| format!("salt: {e}"))?;
    let phc = argon.hash_password(PASSWORD, &salt).map_err(|e| format!("hash: {e}"))?.to_string();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads = cores.len().max(1);
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..threads {
        let (done, stop, phc) = (Arc::clone(&done), Arc::clone(&stop), phc.clone());
        let core = if pinned { cores.get(i).copied() } else { None };
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            if let Some(core) = core {
                pin_current_thread(&[core])?;
            }
            let argon = argon2(params)?;
            while !stop.load(Ordering::Relaxed) {
                // Parsing the stored string is part of every check the server makes.
                let hash = PasswordHash::new(&phc).map_err(|e| format!("parse: {e}"))?;
                argon.verify_password(PASSWORD, &hash).map_err(|e| format!("verify: {e}"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    std::thread::sleep(time);
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().map_err(|_| "argon2 thread panicked".to_owned())??;
    }
    // Each thread finishes the verify it was in; counting those over the real elapsed time is exact.
    let elapsed = start.elapsed().as_secs_f64();
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
}

fn argon2(params: Argon2Params) -> Result<Argon2<'static>, String> {
    let params = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
        .map_err(|e| format!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// A row about as large as one of flowgate's event rows.
fn payload(i: u64) -> String {
    format!(
        r#"{{"type":"session.added","aggregate":"session","sequence":{i},"data":{{"user_agent_fingerprint_id":"fp-0123456789abcdef","ip":"192.0.2.1"}},"creator":"bench"}}"#
    )
}

/// SQLite: one connection (flowgate has exactly one writer), WAL, `synchronous=NORMAL`, each row its own
/// `BEGIN IMMEDIATE … COMMIT`, in a file in a fresh temporary directory. Runs on a thread of the
/// server's cores.
pub async fn sqlite_commit_rate(cores: Vec<usize>, time: Duration) -> Result<f64, String> {
    let handle = std::thread::spawn(move || -> Result<f64, String> {
        pin_current_thread(&cores)?;
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("runtime: {e}"))?;
        runtime.block_on(sqlite_commits(time))
    });
    tokio::task::spawn_blocking(move || handle.join().map_err(|_| "commit thread panicked".to_owned()))
        .await
        .map_err(|e| format!("commit task: {e}"))??
}

async fn sqlite_commits(time: Duration) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("commit.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let mut conn = options.connect().await.map_err(|e| format!("sqlite: {e}"))?;
    sqlx::query("CREATE TABLE events (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, payload TEXT NOT NULL)")
        .execute(&mut conn)
        .await
        .map_err(|e| format!("create table: {e}"))?;
    let result = sqlite_loop(&mut conn, time).await;
    let _ = conn.close().await;
    result
}

async fn sqlite_loop(conn: &mut SqliteConnection, time: Duration) -> Result<f64, String> {
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < time {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.map_err(|e| format!("begin: {e}"))?;
        sqlx::query("INSERT INTO events (id, seq, payload) VALUES (?, ?, ?)")
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .bind(payload(n))
            .execute(&mut *conn)
            .await
            .map_err(|e| format!("insert: {e}"))?;
        sqlx::query("COMMIT").execute(&mut *conn).await.map_err(|e| format!("commit: {e}"))?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// PostgreSQL: `writers` connections (flowgate's pool size), each inserting one row per transaction,
/// into a table of its own that is dropped afterwards.
pub async fn postgres_commit_rate(url: &str, writers: usize, time: Duration) -> Result<f64, String> {
    let options = PgConnectOptions::from_str(url).map_err(|e| format!("database url: {e}"))?;
    let writers = writers.max(1);
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(writers).unwrap_or(u32::MAX))
        .connect_with(options)
        .await
        .map_err(|e| format!("postgres: {e}"))?;
    let table = format!("flowgate_bench_commit_{}", std::process::id());
    // The table name is made here from the process id, never from input.
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id TEXT PRIMARY KEY, seq BIGINT NOT NULL, payload TEXT NOT NULL)"
    )))
    .execute(&pool)
    .await
    .map_err(|e| format!("create table: {e}"))?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let pool = pool.clone();
        let insert = format!("INSERT INTO {table} (id, seq, payload) VALUES ($1, $2, $3)");
        tasks.spawn(async move {
            let mut n: u64 = 0;
            while start.elapsed() < time {
                let seq = n * writers as u64 + w as u64;
                let mut tx = pool.begin().await.map_err(|e| format!("begin: {e}"))?;
                sqlx::query(AssertSqlSafe(insert.clone()))
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                    .bind(payload(seq))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| format!("insert: {e}"))?;
                tx.commit().await.map_err(|e| format!("commit: {e}"))?;
                n += 1;
            }
            Ok::<u64, String>(n)
        });
    }
    let mut total = 0;
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(format!("writer task: {e}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}"))).execute(&pool).await;
    pool.close().await;
    match failure {
        Some(e) => Err(e),
        None => Ok(total as f64 / elapsed),
    }
}
