//! An in-process cache of the principals behind personal access tokens, and of whether orgs are active.
//!
//! Authenticating a PAT means reading the token, its owner, the owner's org and the owner's memberships:
//! several statements on every call, the biggest cost of a cheap read such as GetSession. Entries live a
//! short time (two seconds by default) and are keyed by the token's digest, never the token itself.
//! Whether an org is active is asked on every session check (a user of an inactive org cannot sign in);
//! it is kept the same way, and every org change forgets all of it.
//!
//! Correctness inside one process: every change that can revoke or narrow a principal (token removed, user
//! deactivated, locked or deleted, membership changed, org deactivated or deleted) goes through
//! [`super::Identity`], which invalidates the cache after the write. A lookup that raced such a change
//! cannot put its stale result back: each invalidation bumps a generation, and a result is only stored when
//! the generation is still the one seen before the lookup started. Token expiration is checked on every hit.
//!
//! Other replicas (and the `flowgate admin` command, a process of its own) do not see this process's
//! invalidations: there a change takes effect when the entry ages out, at most the TTL later.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::authz::Principal;
use super::model::{OrgId, UserId};

/// Default time an entry is trusted; short, because other replicas' changes are only seen after it.
pub const DEFAULT_PRINCIPAL_TTL: Duration = Duration::from_secs(2);

/// Most entries kept; beyond it expired entries are dropped, and if that is not enough, all of them.
const MAX_ENTRIES: usize = 10_000;

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
}

/// The principal cache; `ttl` zero disables it.
#[derive(Debug)]
pub(crate) struct PrincipalCache {
    ttl: TimeDelta,
    state: RwLock<State>,
}

/// What a lookup needs to store its result later: the generation seen before it read the database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

impl PrincipalCache {
    /// A cache trusting entries for `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self { ttl: TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX), state: RwLock::new(State::default()) }
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

    fn young(&self, cached_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        // A clock that went backwards makes the entry stale rather than immortal.
        let age = now - cached_at;
        age >= TimeDelta::zero() && age < self.ttl
    }

    /// Forgets every entry of `user` (its tokens, its state or its roles changed).
    pub(crate) fn invalidate_user(&self, user: &UserId) {
        let mut state = self.write();
        state.generation = state.generation.wrapping_add(1);
        state.entries.retain(|_, entry| entry.principal.user_id != *user);
    }

    /// Forgets every entry (an org changed: it touches all its users, every membership in it and its state).
    pub(crate) fn invalidate_all(&self) {
        let mut state = self.write();
        state.generation = state.generation.wrapping_add(1);
        state.entries.clear();
        state.orgs.clear();
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
