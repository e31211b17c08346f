//! Password hashing: argon2id with configured parameters, legacy verification (argon2i/d, bcrypt), and a
//! bounded pool so that a flood of password checks is refused at once instead of queueing for seconds.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::TryRngCore;
use rand::rngs::OsRng;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::{Error, ErrorKind, Result};

/// Error id: ResourceExhausted, every worker and queue slot is taken.
pub const PASSWORD_BUSY: &str = "PASSWORD-busy";

/// Upper bounds for the parameters of *imported* argon2 hashes, so one stored hash cannot make a single
/// verify take gigabytes or minutes.
const MAX_IMPORTED_MEMORY_KIB: u32 = 256 * 1024;
const MAX_IMPORTED_ITERATIONS: u32 = 64;
const MAX_IMPORTED_PARALLELISM: u32 = 16;
/// Upper bound of an imported bcrypt cost (cost 16 ≈ 4 s per verify on one core here).
const MAX_IMPORTED_BCRYPT_COST: u32 = 15;
/// Password hashed by the dummy verify of unknown users.
const DUMMY_PASSWORD: &[u8] = b"flowgate dummy password, never matches";

/// Rules a new password must satisfy (lengths in bytes of UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Shortest accepted password in bytes (default 8).
    pub min_length: usize,
    /// Longest accepted password in bytes (default 1024); longer ones are refused before hashing.
    pub max_length: usize,
    /// Requires a lower-case letter.
    pub require_lowercase: bool,
    /// Requires an upper-case letter.
    pub require_uppercase: bool,
    /// Requires an ASCII digit.
    pub require_digit: bool,
    /// Requires a character that is neither a letter nor a digit.
    pub require_symbol: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 8,
            max_length: 1024,
            require_lowercase: false,
            require_uppercase: false,
            require_digit: false,
            require_symbol: false,
        }
    }
}

impl PasswordPolicy {
    /// Checks `password` against the policy; the first broken rule as a description.
    pub fn check(&self, password: &str) -> std::result::Result<(), String> {
        let len = password.len();
        if len > self.max_length {
            return Err(format!("must be at most {} bytes", self.max_length));
        }
        if len < self.min_length {
            return Err(format!("must be at least {} bytes", self.min_length));
        }
        if self.require_lowercase && !password.chars().any(char::is_lowercase) {
            return Err("must contain a lower-case letter".to_owned());
        }
        if self.require_uppercase && !password.chars().any(char::is_uppercase) {
            return Err("must contain an upper-case letter".to_owned());
        }
        if self.require_digit && !password.chars().any(|c| c.is_ascii_digit()) {
            return Err("must contain a digit".to_owned());
        }
        if self.require_symbol && !password.chars().any(|c| !c.is_alphanumeric()) {
            return Err("must contain a symbol".to_owned());
        }
        Ok(())
    }
}

/// argon2id parameters and the size of the hashing pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashingConfig {
    /// Memory per hash in KiB (default 19456, OWASP).
    pub memory_kib: u32,
    /// Passes (default 2).
    pub iterations: u32,
    /// Lanes (default 1).
    pub parallelism: u32,
    /// Hashes running at once; 0 ⇒ the number of available cores.
    pub workers: usize,
    /// Hashes waiting for a worker; 0 ⇒ 4 × workers.
    pub queue: usize,
}

impl Default for HashingConfig {
    fn default() -> Self {
        Self { memory_kib: 19456, iterations: 2, parallelism: 1, workers: 0, queue: 0 }
    }
}

impl HashingConfig {
    /// The effective number of workers (0 resolved to the available cores).
    pub fn effective_workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        }
    }

    /// The effective queue length (0 resolved to 4 × workers).
    pub fn effective_queue(&self) -> usize {
        match self.queue {
            0 => 4 * self.effective_workers(),
            n => n,
        }
    }
}

/// A bounded pool for CPU-heavy jobs: at most `workers` run, each on one of `workers` dedicated threads,
/// at most `queue` wait; anything beyond is refused with ResourceExhausted [`PASSWORD_BUSY`] without
/// waiting.
///
/// Dedicated threads, not `spawn_blocking`: each hashing thread keeps argon2's working memory (m KiB) for
/// reuse, so memory is exactly `workers × m` — on the runtime's blocking pool every thread that ever ran
/// a hash would keep its own copy, and under overload that pool grows to dozens of threads.
#[derive(Clone)]
pub struct HashPool {
    running: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    workers: usize,
    queue: usize,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

/// A unit of work for a hashing thread.
type Job = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool").field("workers", &self.workers).field("queue", &self.queue).finish_non_exhaustive()
    }
}

impl HashPool {
    /// A pool with exactly `workers` (at least 1) threads and `queue` waiting slots (0 = no waiting).
    /// The threads end when the last clone of the pool is dropped. Fails only if a thread cannot start.
    pub fn new(workers: usize, queue: usize) -> Result<Self> {
        let workers = workers.max(1);
        let (jobs, receiver) = tokio::sync::mpsc::unbounded_channel::<Job>();
        // One receiver shared by all workers: whoever holds the lock takes the next job.
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for i in 0..workers {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("flowgate-hash-{i}"))
                .spawn(move || {
                    loop {
                        let job = receiver.blocking_lock().blocking_recv();
                        let Some(job) = job else { break };
                        // A panicking job must not take the worker with it; its caller sees the dropped
                        // answer channel as an internal error.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| Error::internal("PASSWORD-pool", e))?;
        }
        Ok(Self {
            running: Arc::new(Semaphore::new(workers)),
            waiting: Arc::new(Semaphore::new(queue)),
            workers,
            queue,
            jobs,
        })
    }

    /// Runs `job` on a hashing thread once a worker is free; refuses at once when the queue is full.
    ///
    /// Admission is decided synchronously, before the returned future is first polled, so overload is
    /// answered immediately and in call order.
    pub fn run<T, F>(&self, job: F) -> impl Future<Output = Result<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let admission = self.admit();
        let running = Arc::clone(&self.running);
        let jobs = self.jobs.clone();
        async move {
            let permit = match admission? {
                Admission::Running(permit) => permit,
                Admission::Waiting(slot) => {
                    let permit = running.acquire_owned().await.map_err(|e| Error::internal("PASSWORD-pool", e))?;
                    // The queue slot is free again as soon as the job holds a worker.
                    drop(slot);
                    permit
                }
            };
            let (answer, result) = tokio::sync::oneshot::channel();
            let work: Job = Box::new(move || {
                let value = job();
                drop(permit);
                let _ = answer.send(value);
            });
            // The send error carries the job back, which is not Sync: report the closed pool without it.
            jobs.send(work)
                .map_err(|_| Error::internal("PASSWORD-pool", std::io::Error::other("hashing threads stopped")))?;
            result.await.map_err(|e| Error::internal("PASSWORD-worker", e))
        }
    }

    /// (jobs running, jobs waiting) right now, for metrics and tests.
    pub fn load(&self) -> (usize, usize) {
        (self.workers - self.running.available_permits(), self.queue - self.waiting.available_permits())
    }

    fn admit(&self) -> Result<Admission> {
        match Arc::clone(&self.running).try_acquire_owned() {
            Ok(permit) => return Ok(Admission::Running(permit)),
            Err(TryAcquireError::NoPermits) => {}
            Err(e @ TryAcquireError::Closed) => return Err(Error::internal("PASSWORD-pool", e)),
        }
        match Arc::clone(&self.waiting).try_acquire_owned() {
            Ok(slot) => Ok(Admission::Waiting(slot)),
            Err(TryAcquireError::NoPermits) => Err(busy()),
            Err(e @ TryAcquireError::Closed) => Err(Error::internal("PASSWORD-pool", e)),
        }
    }
}

enum Admission {
    Running(OwnedSemaphorePermit),
    Waiting(OwnedSemaphorePermit),
}

fn busy() -> Error {
    Error::new(ErrorKind::ResourceExhausted, PASSWORD_BUSY, "too many password checks at once; retry later")
}

/// Which scheme a stored hash uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashScheme {
    /// argon2id PHC string.
    Argon2id,
    /// argon2i PHC string (legacy).
    Argon2i,
    /// argon2d PHC string (legacy; never accepted on import).
    Argon2d,
    /// bcrypt `$2a$`/`$2b$`/`$2y$` (legacy).
    Bcrypt,
}

/// The scheme of `hash` when it is a well-formed hash this server can verify within its cost limits.
pub fn hash_scheme(hash: &str) -> Option<HashScheme> {
    if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$") {
        // `$2a$NN$` + 53 characters of salt and hash.
        let cost = hash.get(4..6)?.parse::<u32>().ok()?;
        let ok =
            hash.len() == 60 && hash.as_bytes().get(6) == Some(&b'$') && (4..=MAX_IMPORTED_BCRYPT_COST).contains(&cost);
        return ok.then_some(HashScheme::Bcrypt);
    }
    let parsed = PasswordHash::new(hash).ok()?;
    let scheme = match parsed.algorithm.as_str() {
        "argon2id" => HashScheme::Argon2id,
        "argon2i" => HashScheme::Argon2i,
        "argon2d" => HashScheme::Argon2d,
        _ => return None,
    };
    let params = Params::try_from(&parsed).ok()?;
    let sane = params.m_cost() <= MAX_IMPORTED_MEMORY_KIB
        && params.t_cost() <= MAX_IMPORTED_ITERATIONS
        && params.p_cost() <= MAX_IMPORTED_PARALLELISM
        && parsed.salt.is_some()
        && parsed.hash.is_some();
    sane.then_some(scheme)
}

/// Whether `hash` may be imported (argon2id/argon2i PHC or bcrypt, within the cost limits).
pub fn is_importable_hash(hash: &str) -> bool {
    match hash_scheme(hash) {
        Some(HashScheme::Argon2id | HashScheme::Argon2i | HashScheme::Bcrypt) => true,
        Some(HashScheme::Argon2d) | None => false,
    }
}

/// Hashes and verifies passwords on a bounded pool.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    pool: HashPool,
    /// A real hash with the current parameters, verified for unknown users so they cost the same;
    /// computed on first use (on the pool) so that start-up does not pay for it.
    dummy_hash: Arc<OnceCell<Arc<str>>>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").field("params", &self.params).field("pool", &self.pool).finish()
    }
}

impl PasswordHasher {
    /// A hasher with `config`'s argon2id parameters and pool size; invalid parameters ⇒ InvalidArgument
    /// naming the configuration key.
    pub fn new(config: &HashingConfig) -> Result<Self> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| Error::invalid_field("PASSWORD-config", "hashing", e.to_string()))?;
        let pool = HashPool::new(config.effective_workers(), config.effective_queue())?;
        Ok(Self { params, pool, dummy_hash: Arc::new(OnceCell::new()) })
    }

    /// The pool the hashes run on.
    pub fn pool(&self) -> &HashPool {
        &self.pool
    }

    /// A new argon2id PHC string for `password` (all bytes, never truncated), computed on the pool.
    pub async fn hash(&self, password: &str) -> Result<String> {
        let params = self.params.clone();
        let password = password.as_bytes().to_vec();
        self.pool.run(move || hash_with(&params, &password)).await?
    }

    /// Whether `password` matches `hash` (argon2 PHC or bcrypt), computed on the pool. An unusable hash
    /// answers `false` (and is logged), never an error the caller could tell apart.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool> {
        let password = password.as_bytes().to_vec();
        let hash = hash.to_owned();
        self.pool.run(move || verify_with(&password, &hash)).await
    }

    /// The same work as [`PasswordHasher::verify`] against a fixed hash; always `false`.
    pub async fn dummy_verify(&self, password: &str) -> Result<bool> {
        let hash = self
            .dummy_hash
            .get_or_try_init(|| async {
                let params = self.params.clone();
                let hash = self.pool.run(move || hash_with(&params, DUMMY_PASSWORD)).await??;
                Ok::<_, Error>(Arc::<str>::from(hash))
            })
            .await?;
        let hash = Arc::clone(hash);
        let password = password.as_bytes().to_vec();
        self.pool
            .run(move || {
                // black_box: the work must really happen, that is the point of the dummy.
                let _ = std::hint::black_box(verify_with(&password, &hash));
                false
            })
            .await
    }

    /// Whether `hash` should be replaced after a successful verify: it is not argon2id with the current
    /// parameters (other algorithm, version, memory, passes, lanes or output length).
    pub fn needs_rehash(&self, hash: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(hash) else {
            return true;
        };
        if parsed.algorithm.as_str() != Algorithm::Argon2id.as_str() || parsed.version != Some(Version::V0x13.into()) {
            return true;
        }
        let Ok(stored) = Params::try_from(&parsed) else {
            return true;
        };
        stored.m_cost() != self.params.m_cost()
            || stored.t_cost() != self.params.t_cost()
            || stored.p_cost() != self.params.p_cost()
            || stored.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)
                != self.params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)
    }
}

thread_local! {
    /// argon2's working memory (m KiB), kept per hashing thread. Allocating and freeing ~19 MiB per check
    /// makes glibc raise its mmap threshold and keep the pages in per-thread arenas, so RSS grew to
    /// hundreds of MiB under load; one reused buffer per thread bounds it to about threads × m.
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs argon2 into `out` using this thread's reusable working memory.
fn argon2_into(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> std::result::Result<(), argon2::Error> {
    ARGON2_MEMORY.with(|cell| {
        let mut blocks = cell.borrow_mut();
        let needed = argon.params().block_count();
        if blocks.len() < needed {
            blocks.resize(needed, argon2::Block::default());
        }
        argon.hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
    })
}

/// Equal-length byte strings compared without an early exit.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hash_with(params: &Params, password: &[u8]) -> Result<String> {
    let mut salt = [0u8; 16];
    OsRng.try_fill_bytes(&mut salt).map_err(|e| Error::internal("PASSWORD-rng", e))?;
    let salt_string = SaltString::encode_b64(&salt).map_err(|e| Error::internal("PASSWORD-salt", e))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    argon2_into(&argon, password, &salt, &mut out).map_err(|e| Error::internal("PASSWORD-hash", e))?;
    let output = argon2::password_hash::Output::new(&out).map_err(|e| Error::internal("PASSWORD-hash", e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: params.try_into().map_err(|e| Error::internal("PASSWORD-hash", e))?,
        salt: Some(salt_string.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Verifies a stored argon2 PHC string with the thread's reusable memory (see [`argon2_into`]).
fn verify_argon2(password: &[u8], parsed: &PasswordHash<'_>) -> bool {
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) =
        (Algorithm::try_from(parsed.algorithm), Params::try_from(parsed), parsed.salt, parsed.hash)
    else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    argon2_into(&argon, password, salt, &mut out).is_ok() && same_bytes(&out, expected.as_bytes())
}

fn verify_with(password: &[u8], hash: &str) -> bool {
    match hash_scheme(hash) {
        Some(HashScheme::Bcrypt) => {
            // Non-truncating: bcrypt ignores bytes after the 72nd, so a longer password never matches.
            bcrypt::non_truncating_verify(password, hash).unwrap_or(false)
        }
        Some(HashScheme::Argon2id | HashScheme::Argon2i | HashScheme::Argon2d) => match PasswordHash::new(hash) {
            // The verifier takes algorithm, version and parameters from the stored hash.
            Ok(parsed) => verify_argon2(password, &parsed),
            Err(_) => false,
        },
        // A stored hash the server cannot verify is a data problem; it must not become an oracle, so it
        // simply never matches.
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    use super::*;

    #[test]
    fn reused_memory_hashes_agree_with_the_reference_implementation() {
        let params = Params::new(1024, 2, 1, None).expect("params");
        // Ours → reference verifier.
        let ours = hash_with(&params, b"s3cret passw0rd").expect("hash");
        let parsed = PasswordHash::new(&ours).expect("phc");
        assert!(Argon2::default().verify_password(b"s3cret passw0rd", &parsed).is_ok(), "{ours}");
        assert!(Argon2::default().verify_password(b"s3cret passw0rd!", &parsed).is_err());
        // Reference hasher → ours, for argon2id and argon2i, twice on one thread (memory reused).
        for algorithm in [Algorithm::Argon2id, Algorithm::Argon2i] {
            let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
            let reference = Argon2::new(algorithm, Version::V0x13, params.clone())
                .hash_password(b"another one", &salt)
                .expect("reference hash")
                .to_string();
            for _ in 0..2 {
                assert!(verify_with(b"another one", &reference), "{reference}");
                assert!(!verify_with(b"another on", &reference));
            }
        }
        // Larger memory after smaller memory on the same thread still verifies.
        let bigger = Params::new(4096, 1, 1, None).expect("params");
        let big = hash_with(&bigger, b"x-long-enough").expect("hash");
        assert!(verify_with(b"x-long-enough", &big));
    }

    #[test]
    fn policy_counts_bytes() {
        let p = PasswordPolicy::default();
        assert!(p.check("1234567").is_err());
        assert!(p.check("12345678").is_ok());
        // 4 characters but 8 bytes.
        assert!(p.check("ääää").is_ok());
        assert!(p.check(&"a".repeat(1024)).is_ok());
        assert!(p.check(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn schemes() {
        let b = bcrypt::hash("pw", 4).unwrap();
        assert_eq!(hash_scheme(&b[..59]), None, "too short");
        assert_eq!(hash_scheme(&b), Some(HashScheme::Bcrypt));
        assert!(is_importable_hash(&b));
        assert!(!is_importable_hash("$1$abc$def"));
        assert!(!is_importable_hash("plain"));
        assert!(!is_importable_hash(&bcrypt::hash("pw", 4).unwrap().replacen("$04$", "$31$", 1)));
    }
}
