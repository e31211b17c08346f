//! [`CachedSessionRepo`]: a [`SessionRepo`] that remembers sessions read by id, for one server process.
//!
//! Reading a session by id is the whole cost of GetSession besides authentication, and of authenticating
//! with a session token (which names its session); relying parties do both on every request they serve.
//! The cache holds what [`SessionRepo::get`] answered; every write through it (apply, terminate, terminate
//! all of a user) forgets the session(s) it touched, before and after the write, whatever its outcome. A
//! read that raced such a write cannot put its stale result back: every write bumps a generation first, and
//! a result is stored only when the generation is still the one seen before the read started. Sessions
//! expire by time, which the core checks on every answer, so a cached session expires exactly like a stored
//! one.
//!
//! Writes made by another process are not seen by themselves. Where other processes write sessions (replicas
//! on PostgreSQL), the server feeds their changes in with [`CachedSessionRepo::changed`] as the database
//! announces them, and keeps the cache [`CachedSessionRepo::suspend`]ed whenever it cannot hear those
//! announcements. On SQLite one server owns the file; two processes can still share it for a while (the old
//! and the new server during a restart), and there a change made by one is seen by the other within
//! [`DEFAULT_SESSION_TTL`], as with the principal cache. Everywhere, a change based on a stale read fails its
//! sequence check instead of overwriting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::model::{Session, SessionFilter, SessionId};
use super::ports::{NewSessionRecord, SessionRepo, SessionUpdate, StoredSession};
use crate::Result;
use crate::event::Details;
use crate::identity::{ListQuery, Page, UserId};

/// How long an entry is trusted (see the module documentation).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(2);

/// Most sessions kept (a session is well under a kilobyte); beyond it stale entries go, then all.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
struct Entry {
    stored: StoredSession,
    cached_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped before every write is forwarded; see the module documentation.
    generation: u64,
    entries: HashMap<SessionId, Entry>,
}

/// A [`SessionRepo`] in front of another that answers [`SessionRepo::get`] from memory when it can.
pub struct CachedSessionRepo {
    inner: Arc<dyn SessionRepo>,
    ttl: Duration,
    /// False while suspended: every read goes to `inner` and nothing is stored.
    live: AtomicBool,
    state: RwLock<State>,
}

impl std::fmt::Debug for CachedSessionRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSessionRepo").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl CachedSessionRepo {
    /// Caches `inner`'s sessions for `ttl` (zero: nothing is cached).
    pub fn new(inner: Arc<dyn SessionRepo>, ttl: Duration) -> Self {
        Self { inner, ttl, live: AtomicBool::new(true), state: RwLock::new(State::default()) }
    }

    /// Like [`CachedSessionRepo::new`], but suspended until [`CachedSessionRepo::resume`].
    pub fn suspended(inner: Arc<dyn SessionRepo>, ttl: Duration) -> Self {
        let cache = Self::new(inner, ttl);
        cache.live.store(false, Ordering::SeqCst);
        cache
    }

    /// Forgets session `id`, changed by someone else (another replica).
    pub fn changed(&self, id: &SessionId) {
        self.forget_one(id);
    }

    /// Forgets everything and stops caching: changes made elsewhere can no longer be heard.
    pub fn suspend(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.forget(|_, _| true);
    }

    /// Forgets everything and caches again: from now on every change made elsewhere is heard.
    pub fn resume(&self) {
        self.forget(|_, _| true);
        self.live.store(true, Ordering::SeqCst);
    }

    // The lock is never held across an await and nothing under it panics, so a poisoned lock still holds
    // consistent data.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh(&self, entry: &Entry, now: Instant) -> bool {
        now.duration_since(entry.cached_at) < self.ttl
    }

    /// Bumps the generation so that reads in flight store nothing, and forgets what `matches`.
    fn forget(&self, matches: impl Fn(&SessionId, &StoredSession) -> bool) {
        let mut state = self.write();
        state.generation = state.generation.wrapping_add(1);
        state.entries.retain(|id, entry| !matches(id, &entry.stored));
    }

    /// [`Self::forget`] for one session: a removal, not a pass over every entry (it runs twice per write).
    fn forget_one(&self, id: &SessionId) {
        let mut state = self.write();
        state.generation = state.generation.wrapping_add(1);
        state.entries.remove(id);
    }

    /// Runs a write of `id` with the cache forgetting it before and after.
    async fn writing<T>(&self, id: &SessionId, write: impl Future<Output = Result<T>>) -> Result<T> {
        // Before: a read that starts now and finishes after the write must not store the old state.
        // After: a read that finished before the write stored the old state, which must go.
        self.forget_one(id);
        let result = write.await;
        self.forget_one(id);
        result
    }

    /// Number of entries held, fresh or not (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.read().entries.len()
    }
}

#[async_trait]
impl SessionRepo for CachedSessionRepo {
    async fn create(&self, record: &NewSessionRecord, actor: &str) -> Result<Session> {
        // A new id: nothing cached to forget, and the session is only read back if someone asks for it.
        self.inner.create(record, actor).await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<StoredSession>> {
        if self.ttl.is_zero() || !self.live.load(Ordering::SeqCst) {
            return self.inner.get(id).await;
        }
        let generation = {
            let state = self.read();
            if let Some(entry) = state.entries.get(id)
                && self.fresh(entry, Instant::now())
            {
                return Ok(Some(entry.stored.clone()));
            }
            state.generation
        };
        let found = self.inner.get(id).await?;
        if let Some(stored) = &found {
            let now = Instant::now();
            let mut state = self.write();
            // Checked under the lock that `suspend` takes too: a read racing a suspension stores nothing.
            if state.generation == generation && self.live.load(Ordering::SeqCst) {
                if state.entries.len() >= MAX_ENTRIES && !state.entries.contains_key(id) {
                    state.entries.retain(|_, entry| now.duration_since(entry.cached_at) < self.ttl);
                    if state.entries.len() >= MAX_ENTRIES {
                        state.entries.clear();
                    }
                }
                state.entries.insert(id.clone(), Entry { stored: stored.clone(), cached_at: now });
            }
        }
        Ok(found)
    }

    async fn get_by_legacy_token_hash(&self, token_hash: &str) -> Result<Option<Session>> {
        // Only sessions from before tokens named their id, ever fewer: not worth a second index in memory.
        self.inner.get_by_legacy_token_hash(token_hash).await
    }

    async fn apply(&self, id: &SessionId, read: &Details, update: &SessionUpdate, actor: &str) -> Result<Session> {
        self.writing(id, self.inner.apply(id, read, update, actor)).await
    }

    async fn list(&self, filters: &[SessionFilter], q: &ListQuery) -> Result<Page<Session>> {
        self.inner.list(filters, q).await
    }

    async fn terminate(&self, id: &SessionId, read: Option<&Details>, actor: &str) -> Result<Details> {
        self.writing(id, self.inner.terminate(id, read, actor)).await
    }

    async fn terminate_all_of_user(&self, user: &UserId, actor: &str) -> Result<u64> {
        let of_user = |_: &SessionId, stored: &StoredSession| {
            stored.session.factors.user.as_ref().is_some_and(|factor| factor.id == *user)
        };
        self.forget(of_user);
        let result = self.inner.terminate_all_of_user(user, actor).await;
        self.forget(of_user);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::{DateTime, Utc};
    use tokio::sync::Notify;

    use super::*;
    use crate::session::model::{Factors, UserFactor};
    use crate::session::ports::SessionState;
    use crate::{Error, ErrorKind};

    fn details(sequence: u64) -> Details {
        Details {
            sequence,
            creation_date: DateTime::<Utc>::UNIX_EPOCH,
            change_date: DateTime::<Utc>::UNIX_EPOCH,
            resource_owner: "instance".into(),
        }
    }

    fn stored(id: &str, user: Option<&str>, sequence: u64) -> StoredSession {
        let factors = Factors {
            user: user.map(|u| UserFactor {
                verified_at: DateTime::<Utc>::UNIX_EPOCH,
                id: UserId::from(u),
                login_name: u.into(),
                display_name: u.into(),
                organization_id: "org".into(),
            }),
            ..Factors::default()
        };
        StoredSession {
            session: Session {
                id: SessionId::from(id),
                creator: "creator".into(),
                user_agent: None,
                factors,
                metadata: Default::default(),
                expiration: None,
                terminated: false,
                details: details(sequence),
            },
            token_hash: format!("hash-{sequence}"),
        }
    }

    /// Sessions in a map; counts reads and can hold one read until released.
    #[derive(Default)]
    struct Fake {
        rows: RwLock<HashMap<SessionId, StoredSession>>,
        reads: AtomicUsize,
        /// When set, the next read takes its snapshot, then waits for `release`.
        hold: RwLock<Option<Arc<(Notify, Notify)>>>,
    }

    impl Fake {
        fn put(&self, row: StoredSession) {
            self.rows.write().unwrap().insert(row.session.id.clone(), row);
        }

        fn change(&self, id: &str, f: impl FnOnce(&mut StoredSession)) {
            f(self.rows.write().unwrap().get_mut(&SessionId::from(id)).expect("row"));
        }
    }

    #[async_trait]
    impl SessionRepo for Fake {
        async fn create(&self, record: &NewSessionRecord, _: &str) -> Result<Session> {
            let mut row = stored(record.id.as_str(), None, 1);
            row.token_hash = record.token_hash.clone();
            self.put(row.clone());
            Ok(row.session)
        }

        async fn get(&self, id: &SessionId) -> Result<Option<StoredSession>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let snapshot = self.rows.write().unwrap().get(id).cloned();
            let hold = self.hold.write().unwrap().take();
            if let Some(hold) = hold {
                hold.0.notify_one();
                hold.1.notified().await;
            }
            Ok(snapshot)
        }

        async fn get_by_legacy_token_hash(&self, _: &str) -> Result<Option<Session>> {
            // The cache passes it through; nothing here depends on what it answers.
            Ok(None)
        }

        async fn apply(&self, id: &SessionId, read: &Details, update: &SessionUpdate, _: &str) -> Result<Session> {
            let mut rows = self.rows.write().unwrap();
            let row = rows.get_mut(id).ok_or_else(|| Error::new(ErrorKind::NotFound, "X", "missing"))?;
            if row.session.details.sequence != read.sequence {
                return Err(Error::new(ErrorKind::Aborted, "X", "sequence"));
            }
            row.session.metadata = update.state.metadata.clone();
            row.session.details.sequence += 1;
            row.token_hash = update.token_hash.clone();
            Ok(row.session.clone())
        }

        async fn list(&self, _: &[SessionFilter], _: &ListQuery) -> Result<Page<Session>> {
            let items: Vec<Session> = self.rows.write().unwrap().values().map(|row| row.session.clone()).collect();
            Ok(Page { total: items.len() as u64, items })
        }

        async fn terminate(&self, id: &SessionId, _: Option<&Details>, _: &str) -> Result<Details> {
            let mut rows = self.rows.write().unwrap();
            let row = rows.get_mut(id).ok_or_else(|| Error::new(ErrorKind::NotFound, "X", "missing"))?;
            row.session.terminated = true;
            Ok(row.session.details.clone())
        }

        async fn terminate_all_of_user(&self, user: &UserId, _: &str) -> Result<u64> {
            let mut count = 0;
            for row in self.rows.write().unwrap().values_mut() {
                if row.session.user_id() == Some(user) && !row.session.terminated {
                    row.session.terminated = true;
                    count += 1;
                }
            }
            Ok(count)
        }
    }

    fn cached(fake: &Arc<Fake>, ttl: Duration) -> CachedSessionRepo {
        CachedSessionRepo::new(fake.clone(), ttl)
    }

    fn update(token: &str) -> SessionUpdate {
        SessionUpdate {
            state: SessionState {
                metadata: [("k".to_owned(), b"v".to_vec())].into_iter().collect(),
                ..SessionState::default()
            },
            token_hash: token.into(),
            challenges: Vec::new(),
            events: Vec::new(),
        }
    }

    #[tokio::test]
    async fn repeated_reads_are_answered_from_memory_and_misses_are_not_cached() {
        let fake = Arc::new(Fake::default());
        fake.put(stored("s1", None, 1));
        let cache = cached(&fake, Duration::from_secs(60));
        let id = SessionId::from("s1");
        for _ in 0..3 {
            assert_eq!(cache.get(&id).await.unwrap(), Some(stored("s1", None, 1)));
        }
        assert_eq!(fake.reads.load(Ordering::SeqCst), 1);
        let unknown = SessionId::from("nope");
        assert_eq!(cache.get(&unknown).await.unwrap(), None);
        assert_eq!(cache.get(&unknown).await.unwrap(), None);
        assert_eq!(fake.reads.load(Ordering::SeqCst), 3, "an unknown id is asked every time");
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn every_write_forgets_the_session_it_touched() {
        let fake = Arc::new(Fake::default());
        fake.put(stored("s1", Some("u1"), 1));
        fake.put(stored("s2", Some("u1"), 1));
        fake.put(stored("s3", Some("u2"), 1));
        let cache = cached(&fake, Duration::from_secs(60));
        let (s1, s2, s3) = (SessionId::from("s1"), SessionId::from("s2"), SessionId::from("s3"));
        for id in [&s1, &s2, &s3] {
            cache.get(id).await.unwrap();
        }

        let read = cache.get(&s1).await.unwrap().unwrap().session.details;
        cache.apply(&s1, &read, &update("new"), "a").await.unwrap();
        let after = cache.get(&s1).await.unwrap().unwrap();
        assert_eq!((after.session.details.sequence, after.token_hash.as_str()), (2, "new"));

        // A failed write forgets too: the cache cannot know how far it got.
        assert!(cache.apply(&s1, &read, &update("stale"), "a").await.is_err());
        assert_eq!(cache.len(), 2);

        cache.get(&s1).await.unwrap();
        cache.terminate(&s1, None, "a").await.unwrap();
        assert!(cache.get(&s1).await.unwrap().unwrap().session.terminated);

        // Ending every session of u1 forgets u1's sessions and keeps u2's.
        cache.get(&s2).await.unwrap();
        let reads = fake.reads.load(Ordering::SeqCst);
        assert_eq!(cache.terminate_all_of_user(&UserId::from("u1"), "a").await.unwrap(), 1);
        assert!(cache.get(&s2).await.unwrap().unwrap().session.terminated);
        cache.get(&s3).await.unwrap();
        assert_eq!(fake.reads.load(Ordering::SeqCst), reads + 1, "only s2 was read again");
    }

    #[tokio::test]
    async fn a_read_that_raced_a_write_does_not_store_the_old_state() {
        let fake = Arc::new(Fake::default());
        fake.put(stored("s1", None, 1));
        let cache = Arc::new(cached(&fake, Duration::from_secs(60)));
        let hold = Arc::new((Notify::new(), Notify::new()));
        *fake.hold.write().unwrap() = Some(hold.clone());

        // The read takes its snapshot (sequence 1), then waits while the session is terminated.
        let reader = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get(&SessionId::from("s1")).await }
        });
        hold.0.notified().await;
        cache.terminate(&SessionId::from("s1"), None, "a").await.unwrap();
        hold.1.notify_one();
        let raced = reader.await.unwrap().unwrap().unwrap();
        assert!(!raced.session.terminated, "the racing read answers what it saw");

        assert!(cache.get(&SessionId::from("s1")).await.unwrap().unwrap().session.terminated);
    }

    #[tokio::test]
    async fn entries_age_out_and_a_zero_ttl_caches_nothing() {
        let fake = Arc::new(Fake::default());
        fake.put(stored("s1", None, 1));
        let id = SessionId::from("s1");

        let short = cached(&fake, Duration::from_millis(30));
        short.get(&id).await.unwrap();
        // Another process changes the row behind the cache's back.
        fake.change("s1", |row| row.session.terminated = true);
        assert!(!short.get(&id).await.unwrap().unwrap().session.terminated);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(short.get(&id).await.unwrap().unwrap().session.terminated);

        let off = cached(&fake, Duration::ZERO);
        let before = fake.reads.load(Ordering::SeqCst);
        off.get(&id).await.unwrap();
        off.get(&id).await.unwrap();
        assert_eq!(fake.reads.load(Ordering::SeqCst), before + 2);
        assert_eq!(off.len(), 0);
    }

    #[tokio::test]
    async fn changes_heard_from_elsewhere_and_suspension() {
        let fake = Arc::new(Fake::default());
        fake.put(stored("s1", None, 1));
        let id = SessionId::from("s1");
        let cache = CachedSessionRepo::suspended(fake.clone(), Duration::from_secs(60));
        cache.get(&id).await.unwrap();
        cache.get(&id).await.unwrap();
        assert_eq!((fake.reads.load(Ordering::SeqCst), cache.len()), (2, 0), "suspended: nothing kept");

        cache.resume();
        cache.get(&id).await.unwrap();
        // Another replica terminates the session and the database announces it.
        fake.change("s1", |row| row.session.terminated = true);
        assert!(!cache.get(&id).await.unwrap().unwrap().session.terminated, "not heard yet");
        cache.changed(&id);
        assert!(cache.get(&id).await.unwrap().unwrap().session.terminated);

        cache.suspend();
        assert_eq!(cache.len(), 0);
        fake.change("s1", |row| row.session.terminated = false);
        assert!(!cache.get(&id).await.unwrap().unwrap().session.terminated, "suspended: read fresh");
    }
}
