//! An in-process cache of the principals behind personal access tokens, of whether orgs are active, and of
//! the users that sign-in checks look up.
//!
//! Authenticating a PAT means reading the token, its owner, the owner's org and the owner's memberships:
//! several statements on every call, the biggest cost of a cheap read such as GetSession. Entries live a
//! short time (two seconds by default) and are keyed by the token's digest, never the token itself.
//! Whether an org is active is asked on every session check (a user of an inactive org cannot sign in);
//! it is kept the same way, and every org change forgets all of it. Every session check also looks up its
//! user, by id or login name: a read of the user joined with its org, the largest part of CreateSession
//! after the write itself. Users are kept the same way, by id and by the login name they were asked by.
//!
//! Correctness inside one process: every change that can revoke or narrow a principal or change a user
//! (token removed, user changed, deactivated, locked or deleted, password set, membership changed, org
//! deactivated or deleted) goes through [`super::Identity`], which invalidates the cache after the write. A lookup that raced such a change
//! cannot put its stale result back: each invalidation bumps a generation, and a result is only stored when
//! the generation is still the one seen before the lookup started. Token expiration is checked on every hit.
//!
//! Other replicas (and the `flowgate admin` command, a process of its own) do not see this process's
//! invalidations: there a change takes effect when the entry ages out, at most the TTL later. Users are
//! kept to a stricter rule, because a sign-in check that passes leaves a session behind: where other
//! processes change users (replicas on PostgreSQL), the server feeds their changes in as the database
//! announces them ([`super::Identity::user_changed`], [`super::Identity::org_changed`]), and users are
//! only cached while those announcements are heard ([`PrincipalCache::suspend_users`]).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::authz::Principal;
use super::model::{OrgId, User, UserId};

/// Default time an entry is trusted; short, because other replicas' changes are only seen after it.
pub const DEFAULT_PRINCIPAL_TTL: Duration = Duration::from_secs(2);

/// Most entries kept; beyond it expired entries are dropped, and if that is not enough, all of them.
const MAX_ENTRIES: usize = 10_000;

/// One cached user, with the time it was read.
#[derive(Debug, Clone)]
struct UserEntry {
    user: User,
    cached_at: DateTime<Utc>,
}

/// How a sign-in check names its user.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UserKey<'a> {
    /// By id.
    Id(&'a UserId),
    /// By the login name exactly as asked (the store compares ignoring case; entries are per spelling).
    LoginName(&'a str),
}

/// One cached authentication result.
#[derive(Debug, Clone)]
struct Entry {
    principal: Principal,
    /// The token's own expiration, checked on every hit.
    expiration: Option<DateTime<Utc>>,
    cached_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every invalidation; see the module documentation.
    generation: u64,
    entries: HashMap<String, Entry>,
    /// Whether each org is active, and since when that is known.
    orgs: HashMap<OrgId, (bool, DateTime<Utc>)>,
    /// Users by id.
    users: HashMap<UserId, UserEntry>,
    /// The user each login name was found to name (only names of users present in `users`).
    login_names: HashMap<String, UserId>,
}

/// The principal cache; `ttl` zero disables it.
#[derive(Debug)]
pub(crate) struct PrincipalCache {
    ttl: TimeDelta,
    /// False while users are not cached (changes made elsewhere cannot be heard); principals and org
    /// states keep their TTL rule either way.
    users_live: AtomicBool,
    state: RwLock<State>,
}

/// What a lookup needs to store its result later: the generation seen before it read the database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

impl PrincipalCache {
    /// A cache trusting entries for `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl: TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX),
            users_live: AtomicBool::new(true),
            state: RwLock::new(State::default()),
        }
    }

    /// Forgets every user and stops caching users until [`Self::resume_users`].
    pub(crate) fn suspend_users(&self) {
        let mut state = self.write();
        self.users_live.store(false, Ordering::SeqCst);
        state.generation = state.generation.wrapping_add(1);
        state.users.clear();
        state.login_names.clear();
    }

    /// Forgets every user and caches users again.
    pub(crate) fn resume_users(&self) {
        let mut state = self.write();
        state.generation = state.generation.wrapping_add(1);
        state.users.clear();
        state.login_names.clear();
        self.users_live.store(true, Ordering::SeqCst);
    }

    fn enabled(&self) -> bool {
        self.ttl > TimeDelta::zero()
    }

    // The lock is never held across an await and no code under it can panic, so a poisoned lock still
    // holds consistent data.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh(&self, entry: &Entry, now: DateTime<Utc>) -> bool {
        self.young(entry.cached_at, now) && entry.expiration.is_none_or(|at| at > now)
    }

    /// The cached principal of the token with digest `hash`, if fresh; otherwise a ticket for [`Self::put`].
    pub(crate) fn get(&self, hash: &str, now: DateTime<Utc>) -> Result<Principal, Ticket> {
        let state = self.read();
        match state.entries.get(hash) {
            Some(entry) if self.enabled() && self.fresh(entry, now) => Ok(entry.principal.clone()),
            Some(_) | None => Err(Ticket(state.generation)),
        }
    }

    /// Stores what a lookup found, unless something was invalidated since `ticket` was taken.
    pub(crate) fn put(
        &self,
        ticket: Ticket,
        hash: &str,
        principal: &Principal,
        expiration: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) {
        if !self.enabled() {
            return;
        }
        let mut state = self.write();
        if state.generation != ticket.0 {
            return;
        }
        if state.entries.len() >= MAX_ENTRIES && !state.entries.contains_key(hash) {
            state.entries.retain(|_, entry| self.fresh(entry, now));
            if state.entries.len() >= MAX_ENTRIES {
                state.entries.clear();
            }
        }
        state.entries.insert(hash.to_owned(), Entry { principal: principal.clone(), expiration, cached_at: now });
    }

    /// Whether org `id` is active, if known and fresh; otherwise a ticket for [`Self::put_org`].
    pub(crate) fn org_active(&self, id: &OrgId, now: DateTime<Utc>) -> Result<bool, Ticket> {
        let state = self.read();
        match state.orgs.get(id) {
            Some(&(active, cached_at)) if self.enabled() && self.young(cached_at, now) => Ok(active),
            Some(_) | None => Err(Ticket(state.generation)),
        }
    }

    /// Stores whether org `id` is active, unless something was invalidated since `ticket` was taken.
    pub(crate) fn put_org(&self, ticket: Ticket, id: &OrgId, active: bool, now: DateTime<Utc>) {
        if !self.enabled() {
            return;
        }
        let mut state = self.write();
        if state.generation != ticket.0 {
            return;
        }
        if state.orgs.len() >= MAX_ENTRIES && !state.orgs.contains_key(id) {
            state.orgs.clear();
        }
        state.orgs.insert(id.clone(), (active, now));
    }

    /// The user named by `key`, if cached and fresh; otherwise a ticket for [`Self::put_user`].
    pub(crate) fn user(&self, key: UserKey<'_>, now: DateTime<Utc>) -> Result<User, Ticket> {
        let state = self.read();
        let id = match key {
            UserKey::Id(id) => Some(id),
            UserKey::LoginName(name) => state.login_names.get(name),
        };
        match id.and_then(|id| state.users.get(id)) {
            Some(entry) if self.users_enabled() && self.young(entry.cached_at, now) => Ok(entry.user.clone()),
            Some(_) | None => Err(Ticket(state.generation)),
        }
    }

    /// Stores the user a lookup by `key` found, unless something was invalidated since `ticket` was taken.
    /// Only users that exist are kept: a name that names nobody is asked again (a user may take it).
    pub(crate) fn put_user(&self, ticket: Ticket, key: UserKey<'_>, user: &User, now: DateTime<Utc>) {
        let mut state = self.write();
        // Checked under the lock that `suspend_users` takes too: a lookup racing a suspension stores nothing.
        if !self.users_enabled() || state.generation != ticket.0 {
            return;
        }
        if state.users.len() >= MAX_ENTRIES && !state.users.contains_key(&user.id) {
            state.users.retain(|_, entry| self.young(entry.cached_at, now));
            if state.users.len() >= MAX_ENTRIES {
                state.users.clear();
            }
            let State { users, login_names, .. } = &mut *state;
            login_names.retain(|_, id| users.contains_key(id));
        }
        if let UserKey::LoginName(name) = key {
            if state.login_names.len() >= MAX_ENTRIES && !state.login_names.contains_key(name) {
                state.login_names.clear();
            }
            state.login_names.insert(name.to_owned(), user.id.clone());
        }
        state.users.insert(user.id.clone(), UserEntry { user: user.clone(), cached_at: now });
    }

    fn users_enabled(&self) -> bool {
        self.enabled() && self.users_live.load(Ordering::SeqCst)
    }

    fn young(&self, cached_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        // A clock that went backwards makes the entry stale rather than immortal.
        let age = now - cached_at;
        age >= TimeDelta::zero() && age < self.ttl
    }

    /// Forgets every entry of `user` (its tokens, its state, its roles or its data changed).
    pub(crate) fn invalidate_user(&self, user: &UserId) {
        let mut state = self.write();
        state.generation = state.generation.wrapping_add(1);
        state.entries.retain(|_, entry| entry.principal.user_id != *user);
        state.users.remove(user);
        state.login_names.retain(|_, id| id != user);
    }

    /// Forgets every entry (an org changed: it touches all its users, every membership in it and its state).
    pub(crate) fn invalidate_all(&self) {
        let mut state = self.write();
        state.generation = state.generation.wrapping_add(1);
        state.entries.clear();
        state.orgs.clear();
        state.users.clear();
        state.login_names.clear();
    }

    /// Number of entries held, fresh or not (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.read().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(user: &str) -> Principal {
        Principal {
            user_id: UserId::from(user),
            org_id: OrgId::from("o"),
            instance_roles: Vec::new(),
            org_roles: Vec::new(),
        }
    }

    fn user(id: &str, username: &str) -> User {
        User {
            id: UserId::from(id),
            org_id: OrgId::from("o"),
            username: username.into(),
            state: super::super::model::UserState::Active,
            kind: super::super::model::UserKind::Machine(super::super::model::Machine {
                name: username.into(),
                description: String::new(),
            }),
            details: crate::event::Details {
                sequence: 1,
                creation_date: DateTime::<Utc>::UNIX_EPOCH,
                change_date: DateTime::<Utc>::UNIX_EPOCH,
                resource_owner: "o".into(),
            },
            login_names: vec![username.into()],
            preferred_login_name: username.into(),
        }
    }

    /// Looks `key` up and, on a miss, stores `found` with the ticket the miss gave.
    fn fill(cache: &PrincipalCache, key: UserKey<'_>, found: &User, now: DateTime<Utc>) {
        let ticket = cache.user(key, now).expect_err("a miss");
        cache.put_user(ticket, key, found, now);
    }

    #[test]
    fn users_are_kept_by_id_and_by_the_name_asked_until_the_ttl() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let (u, t0) = (user("u", "ann"), Utc::now());
        fill(&cache, UserKey::LoginName("Ann"), &u, t0);
        assert_eq!(cache.user(UserKey::LoginName("Ann"), t0).ok(), Some(u.clone()));
        // The lookup by name also answers by id; another spelling is asked again (the store decides).
        assert_eq!(cache.user(UserKey::Id(&u.id), t0 + TimeDelta::seconds(1)).ok(), Some(u.clone()));
        assert!(cache.user(UserKey::LoginName("ann"), t0).is_err());
        assert!(cache.user(UserKey::Id(&u.id), t0 + TimeDelta::seconds(2)).is_err(), "aged out");
        assert!(cache.user(UserKey::LoginName("Ann"), t0 + TimeDelta::seconds(2)).is_err(), "aged out");
        assert!(cache.user(UserKey::Id(&u.id), t0 - TimeDelta::seconds(1)).is_err(), "clock went back");

        let off = PrincipalCache::new(Duration::ZERO);
        let ticket = off.user(UserKey::Id(&u.id), t0).expect_err("empty");
        off.put_user(ticket, UserKey::Id(&u.id), &u, t0);
        assert!(off.user(UserKey::Id(&u.id), t0).is_err(), "a zero TTL keeps nothing");
    }

    #[test]
    fn a_changed_user_is_forgotten_with_every_name_it_was_asked_by() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let (u, v, now) = (user("u", "ann"), user("v", "bob"), Utc::now());
        fill(&cache, UserKey::LoginName("ann"), &u, now);
        fill(&cache, UserKey::LoginName("ann@o.example"), &u, now);
        fill(&cache, UserKey::LoginName("bob"), &v, now);
        cache.invalidate_user(&u.id);
        assert!(cache.user(UserKey::Id(&u.id), now).is_err());
        assert!(cache.user(UserKey::LoginName("ann"), now).is_err());
        assert!(cache.user(UserKey::LoginName("ann@o.example"), now).is_err());
        assert!(cache.read().login_names.values().all(|id| *id == v.id), "no name points at a forgotten user");
        assert_eq!(cache.user(UserKey::LoginName("bob"), now).ok(), Some(v.clone()));

        cache.invalidate_all();
        assert!(cache.user(UserKey::LoginName("bob"), now).is_err(), "an org change forgets every user");
        assert!(cache.read().login_names.is_empty());
    }

    #[test]
    fn a_user_read_before_a_change_is_not_stored_after_it() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let (u, now) = (user("u", "ann"), Utc::now());
        for key in [UserKey::Id(&u.id), UserKey::LoginName("ann")] {
            let ticket = cache.user(key, now).expect_err("empty");
            // The user is locked while the lookup reads the database: its result must not be stored.
            cache.invalidate_user(&u.id);
            cache.put_user(ticket, key, &u, now);
            assert!(cache.user(key, now).is_err());
        }
        // Any user's change counts: the generation is one for the whole cache.
        let ticket = cache.user(UserKey::Id(&u.id), now).expect_err("empty");
        cache.invalidate_user(&UserId::from("someone-else"));
        cache.put_user(ticket, UserKey::Id(&u.id), &u, now);
        assert!(cache.user(UserKey::Id(&u.id), now).is_err());
    }

    #[test]
    fn suspended_users_are_read_fresh_and_principals_stay() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let (u, now) = (user("u", "ann"), Utc::now());
        fill(&cache, UserKey::Id(&u.id), &u, now);
        let ticket = cache.get("h", now).expect_err("empty");
        cache.put(ticket, "h", &principal("u"), None, now);
        // A lookup that started before the suspension stores nothing, and neither does one during it.
        let racing = cache.user(UserKey::LoginName("ann"), now).expect_err("a miss");
        cache.suspend_users();
        assert!(cache.user(UserKey::Id(&u.id), now).is_err(), "suspending forgets every user");
        cache.put_user(racing, UserKey::LoginName("ann"), &u, now);
        let during = cache.user(UserKey::Id(&u.id), now).expect_err("a miss");
        cache.put_user(during, UserKey::Id(&u.id), &u, now);
        assert!(cache.user(UserKey::Id(&u.id), now).is_err());
        assert!(cache.read().users.is_empty() && cache.read().login_names.is_empty());
        assert_eq!(cache.get("h", now).ok(), Some(principal("u")), "principals keep their TTL rule");

        cache.resume_users();
        fill(&cache, UserKey::Id(&u.id), &u, now);
        assert_eq!(cache.user(UserKey::Id(&u.id), now).ok(), Some(u));
    }

    #[test]
    fn cached_users_are_bounded() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let now = Utc::now();
        for i in 0..MAX_ENTRIES + 10 {
            let (id, name) = (i.to_string(), format!("user-{i}"));
            fill(&cache, UserKey::LoginName(&name), &user(&id, &name), now);
        }
        let state = cache.read();
        assert!(state.users.len() <= MAX_ENTRIES);
        assert!(state.login_names.len() <= MAX_ENTRIES);
        assert!(state.login_names.values().all(|id| state.users.contains_key(id)));
    }

    #[test]
    fn hit_until_the_ttl_or_the_token_expires() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let now = Utc::now();
        let Err(ticket) = cache.get("h", now) else { panic!("empty cache answered") };
        cache.put(ticket, "h", &principal("u"), Some(now + TimeDelta::seconds(1)), now);
        assert_eq!(cache.get("h", now + TimeDelta::milliseconds(500)).ok(), Some(principal("u")));
        // The token expires before the entry does.
        assert!(cache.get("h", now + TimeDelta::seconds(1)).is_err());
        cache.put(ticket, "h", &principal("u"), None, now);
        assert!(cache.get("h", now + TimeDelta::milliseconds(1999)).is_ok());
        assert!(cache.get("h", now + TimeDelta::seconds(2)).is_err());
        // A clock that went backwards does not make the entry live longer.
        assert!(cache.get("h", now - TimeDelta::seconds(1)).is_err());
    }

    #[test]
    fn invalidation_wins_over_a_racing_lookup() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let now = Utc::now();
        let Err(ticket) = cache.get("h", now) else { panic!("empty cache answered") };
        // The user is deactivated while the lookup reads the database: its result must not be stored.
        cache.invalidate_user(&UserId::from("u"));
        cache.put(ticket, "h", &principal("u"), None, now);
        assert!(cache.get("h", now).is_err());
        let Err(ticket) = cache.get("h", now) else { panic!("stale entry") };
        cache.invalidate_all();
        cache.put(ticket, "h", &principal("u"), None, now);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn invalidate_user_keeps_other_users() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let now = Utc::now();
        for (hash, user) in [("a", "u"), ("b", "u"), ("c", "v")] {
            let Err(ticket) = cache.get(hash, now) else { panic!("empty cache answered") };
            cache.put(ticket, hash, &principal(user), None, now);
        }
        cache.invalidate_user(&UserId::from("u"));
        assert!(cache.get("a", now).is_err());
        assert!(cache.get("b", now).is_err());
        assert_eq!(cache.get("c", now).ok(), Some(principal("v")));
    }

    #[test]
    fn zero_ttl_disables_and_size_is_bounded() {
        let off = PrincipalCache::new(Duration::ZERO);
        let now = Utc::now();
        let Err(ticket) = off.get("h", now) else { panic!("empty cache answered") };
        off.put(ticket, "h", &principal("u"), None, now);
        assert!(off.get("h", now).is_err());

        let cache = PrincipalCache::new(Duration::from_secs(2));
        for i in 0..MAX_ENTRIES + 10 {
            let hash = i.to_string();
            let Err(ticket) = cache.get(&hash, now) else { panic!("empty cache answered") };
            cache.put(ticket, &hash, &principal("u"), None, now);
        }
        assert!(cache.len() <= MAX_ENTRIES);
    }

    #[test]
    fn org_states_are_kept_until_the_ttl_or_any_invalidation() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let (org, t0) = (OrgId::from("o"), Utc::now());
        let ticket = cache.org_active(&org, t0).expect_err("empty");
        cache.put_org(ticket, &org, true, t0);
        assert_eq!(cache.org_active(&org, t0 + TimeDelta::seconds(1)).ok(), Some(true));
        assert!(cache.org_active(&org, t0 + TimeDelta::seconds(2)).is_err(), "aged out");

        assert_eq!(cache.org_active(&org, t0).ok(), Some(true));
        cache.invalidate_all();
        assert!(cache.org_active(&org, t0).is_err(), "an org change forgets every org state");

        // A lookup that raced an invalidation stores nothing.
        let ticket = cache.org_active(&org, t0).expect_err("empty");
        cache.invalidate_user(&UserId::from("u"));
        cache.put_org(ticket, &org, false, t0);
        assert!(cache.org_active(&org, t0).is_err());
    }
}
