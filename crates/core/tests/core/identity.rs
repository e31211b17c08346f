//! Identity use cases against in-memory fakes of the repository ports.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::event::Details;
use flowgate_core::identity::authz::AUTHZ_DENIED;
use flowgate_core::identity::password::PASSWORD_BUSY;
use flowgate_core::identity::ports::{INSTANCE_EXISTS, USER_USERNAME_TAKEN};
use flowgate_core::identity::token::PAT_PREFIX;
use flowgate_core::identity::*;
use flowgate_core::{Error, ErrorKind, Result};
use tokio::sync::Mutex;

// ------------------------------------------------------------------------------------------ fakes

struct UserRow {
    id: UserId,
    org_id: OrgId,
    username: String,
    state: UserState,
    kind: UserKind,
    hash: Option<String>,
}

struct TokenRow {
    pat: PersonalAccessToken,
    hash: String,
}

#[derive(Default)]
struct Db {
    instance: bool,
    orgs: Vec<Organization>,
    users: Vec<UserRow>,
    tokens: Vec<TokenRow>,
    members: Vec<Member>,
    aggregates: HashMap<String, Details>,
    events: Vec<(String, String)>,
}

impl Db {
    fn write(&mut self, aggregate: &str, owner: &str, event: &str) -> Details {
        let now = Utc::now();
        let details = self
            .aggregates
            .entry(aggregate.to_owned())
            .and_modify(|d| {
                d.sequence += 1;
                d.change_date = now;
            })
            .or_insert_with(|| Details {
                sequence: 1,
                creation_date: now,
                change_date: now,
                resource_owner: owner.to_owned(),
            })
            .clone();
        self.events.push((aggregate.to_owned(), event.to_owned()));
        details
    }

    fn details(&self, aggregate: &str) -> Details {
        self.aggregates.get(aggregate).cloned().unwrap_or_else(|| Details {
            sequence: 0,
            creation_date: DateTime::UNIX_EPOCH,
            change_date: DateTime::UNIX_EPOCH,
            resource_owner: String::new(),
        })
    }

    fn user(&self, row: &UserRow) -> User {
        let domain =
            self.orgs.iter().find(|o| o.id == row.org_id).map(|o| o.primary_domain.clone()).unwrap_or_default();
        let (names, preferred) = login_names(&row.username, &domain);
        User {
            id: row.id.clone(),
            org_id: row.org_id.clone(),
            username: row.username.clone(),
            state: row.state,
            kind: row.kind.clone(),
            details: self.details(&format!("user/{}", row.id)),
            login_names: names,
            preferred_login_name: preferred,
        }
    }

    fn matches(&self, user: &User, filter: &UserFilter) -> bool {
        match filter {
            UserFilter::Username(s, m) => m.matches(&user.username, s),
            UserFilter::Email(s, m) => match &user.kind {
                UserKind::Human(h) => m.matches(&h.email.address, s),
                UserKind::Machine(_) => false,
            },
            UserFilter::DisplayName(s, m) => match &user.kind {
                UserKind::Human(h) => m.matches(&h.profile.display_name, s),
                UserKind::Machine(_) => false,
            },
            UserFilter::Org(o) => user.org_id == *o,
            UserFilter::State(s) => user.state == *s,
            UserFilter::Kind(UserKindFilter::Human) => !user.is_machine(),
            UserFilter::Kind(UserKindFilter::Machine) => user.is_machine(),
            UserFilter::Ids(ids) => ids.contains(&user.id),
            UserFilter::LoginName(n) => user.login_names.iter().any(|l| l.to_lowercase() == n.to_lowercase()),
            UserFilter::Orgs(orgs) => orgs.contains(&user.org_id),
        }
    }

    fn create_org(&mut self, org: &NewOrgRecord) -> Result<Organization> {
        if self.orgs.iter().any(|o| o.name.to_lowercase() == org.name.to_lowercase()) {
            return Err(Error::new(ErrorKind::AlreadyExists, ports::ORG_NAME_TAKEN, "taken"));
        }
        let details = self.write(&format!("org/{}", org.id), org.id.as_str(), "org.added");
        let created = Organization {
            id: org.id.clone(),
            name: org.name.clone(),
            primary_domain: org.primary_domain.clone(),
            state: OrgState::Active,
            details,
        };
        self.orgs.push(created.clone());
        Ok(created)
    }

    fn create_user(&mut self, user: &NewUserRecord, hash: Option<&str>) -> Result<User> {
        if self.users.iter().any(|u| u.username.to_lowercase() == user.username.to_lowercase()) {
            return Err(Error::new(ErrorKind::AlreadyExists, USER_USERNAME_TAKEN, "taken"));
        }
        if self.users.iter().any(|u| u.id == user.id) {
            return Err(Error::new(ErrorKind::AlreadyExists, ports::USER_ID_TAKEN, "taken"));
        }
        let (kind, event) = match &user.kind {
            NewUserKind::Human { profile, email, phone, password_change_required } => (
                UserKind::Human(Human {
                    profile: profile.clone(),
                    email: email.clone(),
                    phone: phone.clone(),
                    password_set: hash.is_some(),
                    password_change_required: *password_change_required,
                    password_changed: hash.map(|_| Utc::now()),
                }),
                "user.human.added",
            ),
            NewUserKind::Machine(m) => (UserKind::Machine(m.clone()), "user.machine.added"),
        };
        self.write(&format!("user/{}", user.id), user.org_id.as_str(), event);
        self.users.push(UserRow {
            id: user.id.clone(),
            org_id: user.org_id.clone(),
            username: user.username.clone(),
            state: UserState::Active,
            kind,
            hash: hash.map(str::to_owned),
        });
        let row = self.users.last().ok_or_else(|| Error::internal("FAKE", "no row"))?;
        Ok(self.user(row))
    }

    fn create_token(&mut self, token: &NewTokenRecord) -> Result<PersonalAccessToken> {
        let owner = self
            .users
            .iter()
            .find(|u| u.id == token.user_id)
            .map(|u| u.org_id.clone())
            .ok_or_else(|| Error::new(ErrorKind::NotFound, ports::USER_NOT_FOUND, "no user"))?;
        let details = self.write(&format!("user/{}", token.user_id), owner.as_str(), "user.pat.added");
        let pat = PersonalAccessToken {
            id: token.id.clone(),
            user_id: token.user_id.clone(),
            expiration: token.expiration,
            details,
        };
        self.tokens.push(TokenRow { pat: pat.clone(), hash: token.token_hash.clone() });
        Ok(pat)
    }

    fn set_member(&mut self, user: &UserId, scope: &MemberScope, roles: &[Role]) -> Details {
        let aggregate = match scope {
            MemberScope::Instance => "instance/instance".to_owned(),
            MemberScope::Org(o) => format!("org/{o}"),
        };
        let existing = self.members.iter_mut().find(|m| m.user_id == *user && m.scope == *scope);
        let event = if existing.is_some() { "member.changed" } else { "member.added" };
        let details = self.write(&aggregate, scope.owner(), event);
        match self.members.iter_mut().find(|m| m.user_id == *user && m.scope == *scope) {
            Some(m) => {
                m.roles = roles.to_vec();
                m.details = details.clone();
            }
            None => self.members.push(Member {
                user_id: user.clone(),
                scope: scope.clone(),
                roles: roles.to_vec(),
                details: details.clone(),
            }),
        }
        details
    }
}

fn page<T: Clone>(items: Vec<T>, q: &ListQuery) -> Page<T> {
    let total = items.len() as u64;
    let items = items.into_iter().skip(q.offset as usize).take(q.limit as usize).collect();
    Page { items, total }
}

#[derive(Default)]
struct Fake {
    db: Mutex<Db>,
    /// How often a token was looked up by its digest (the principal cache saves these).
    token_lookups: std::sync::atomic::AtomicUsize,
}

fn not_found(id: &'static str) -> Error {
    Error::new(ErrorKind::NotFound, id, "not found")
}

#[async_trait]
impl OrgRepo for Fake {
    async fn create(&self, org: &NewOrgRecord, _actor: &str) -> Result<Organization> {
        self.db.lock().await.create_org(org)
    }
    async fn get(&self, id: &OrgId) -> Result<Option<Organization>> {
        Ok(self.db.lock().await.orgs.iter().find(|o| o.id == *id).cloned())
    }
    async fn list(&self, filters: &[OrgFilter], q: &ListQuery) -> Result<Page<Organization>> {
        let db = self.db.lock().await;
        let items = db
            .orgs
            .iter()
            .filter(|o| {
                filters.iter().all(|f| match f {
                    OrgFilter::Name(s, m) => m.matches(&o.name, s),
                    OrgFilter::Domain(s, m) => m.matches(&o.primary_domain, s),
                    OrgFilter::State(s) => o.state == *s,
                    OrgFilter::Id(id) => o.id == *id,
                    OrgFilter::Ids(ids) => ids.contains(&o.id),
                })
            })
            .cloned()
            .collect();
        Ok(page(items, q))
    }
    async fn set_state(&self, id: &OrgId, change: OrgStateChange, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let details = db.write(&format!("org/{id}"), id.as_str(), change.event_type());
        let org = db.orgs.iter_mut().find(|o| o.id == *id).ok_or_else(|| not_found(ports::ORG_NOT_FOUND))?;
        org.state = change.target();
        org.details = details.clone();
        Ok(details)
    }
    async fn delete(&self, id: &OrgId, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        if !db.orgs.iter().any(|o| o.id == *id) {
            return Err(not_found(ports::ORG_NOT_FOUND));
        }
        let details = db.write(&format!("org/{id}"), id.as_str(), "org.removed");
        db.orgs.retain(|o| o.id != *id);
        let gone: Vec<UserId> = db.users.iter().filter(|u| u.org_id == *id).map(|u| u.id.clone()).collect();
        db.users.retain(|u| u.org_id != *id);
        db.tokens.retain(|t| !gone.contains(&t.pat.user_id));
        db.members.retain(|m| !gone.contains(&m.user_id) && m.scope != MemberScope::Org(id.clone()));
        Ok(details)
    }
}

#[async_trait]
impl UserRepo for Fake {
    async fn create(&self, user: &NewUserRecord, password_hash: Option<&str>, _actor: &str) -> Result<User> {
        self.db.lock().await.create_user(user, password_hash)
    }
    async fn get(&self, id: &UserId) -> Result<Option<User>> {
        let db = self.db.lock().await;
        Ok(db.users.iter().find(|u| u.id == *id).map(|u| db.user(u)))
    }
    async fn find_by_login_name(&self, login_name: &str) -> Result<Option<User>> {
        let db = self.db.lock().await;
        let filter = UserFilter::LoginName(login_name.to_owned());
        Ok(db.users.iter().map(|u| db.user(u)).find(|u| db.matches(u, &filter)))
    }
    async fn list(&self, filters: &[UserFilter], sort: UserSort, q: &ListQuery) -> Result<Page<User>> {
        let db = self.db.lock().await;
        let mut items: Vec<User> =
            db.users.iter().map(|u| db.user(u)).filter(|u| filters.iter().all(|f| db.matches(u, f))).collect();
        match sort {
            UserSort::CreationDate => {}
            UserSort::Username => items.sort_by_key(|u| u.username.to_lowercase()),
        }
        if !q.asc {
            items.reverse();
        }
        Ok(page(items, q))
    }
    async fn update_human(&self, id: &UserId, change: &HumanChange, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        if let Some(name) = &change.username
            && db.users.iter().any(|u| u.id != *id && u.username.to_lowercase() == name.to_lowercase())
        {
            return Err(Error::new(ErrorKind::AlreadyExists, USER_USERNAME_TAKEN, "taken"));
        }
        let owner = db.users.iter().find(|u| u.id == *id).ok_or_else(|| not_found(ports::USER_NOT_FOUND))?;
        let owner = owner.org_id.clone();
        let details = db.write(&format!("user/{id}"), owner.as_str(), "user.profile.changed");
        let row = db.users.iter_mut().find(|u| u.id == *id).ok_or_else(|| not_found(ports::USER_NOT_FOUND))?;
        if let Some(name) = &change.username {
            row.username = name.clone();
        }
        if let UserKind::Human(h) = &mut row.kind {
            if let Some(p) = &change.profile {
                h.profile = p.clone();
            }
            if let Some(e) = &change.email {
                h.email = e.clone();
            }
            if let Some(p) = &change.phone {
                h.phone = p.clone();
            }
        }
        Ok(details)
    }
    async fn password_hash(&self, id: &UserId) -> Result<Option<String>> {
        Ok(self.db.lock().await.users.iter().find(|u| u.id == *id).and_then(|u| u.hash.clone()))
    }
    async fn set_password(&self, id: &UserId, hash: &str, change_required: bool, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let owner = db.users.iter().find(|u| u.id == *id).ok_or_else(|| not_found(ports::USER_NOT_FOUND))?;
        let owner = owner.org_id.clone();
        let details = db.write(&format!("user/{id}"), owner.as_str(), "user.password.changed");
        let row = db.users.iter_mut().find(|u| u.id == *id).ok_or_else(|| not_found(ports::USER_NOT_FOUND))?;
        row.hash = Some(hash.to_owned());
        if let UserKind::Human(h) = &mut row.kind {
            h.password_set = true;
            h.password_change_required = change_required;
            h.password_changed = Some(details.change_date);
        }
        Ok(details)
    }
    async fn replace_password_hash(&self, id: &UserId, old: &str, new: &str, _actor: &str) -> Result<bool> {
        let mut db = self.db.lock().await;
        let Some(row) = db.users.iter_mut().find(|u| u.id == *id && u.hash.as_deref() == Some(old)) else {
            return Ok(false);
        };
        row.hash = Some(new.to_owned());
        let owner = row.org_id.clone();
        db.write(&format!("user/{id}"), owner.as_str(), "user.password.rehashed");
        Ok(true)
    }
    async fn set_state(&self, id: &UserId, change: UserStateChange, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let row = db.users.iter_mut().find(|u| u.id == *id).ok_or_else(|| not_found(ports::USER_NOT_FOUND))?;
        row.state = change.target();
        let owner = row.org_id.clone();
        Ok(db.write(&format!("user/{id}"), owner.as_str(), change.event_type()))
    }
    async fn delete(&self, id: &UserId, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let owner = db.users.iter().find(|u| u.id == *id).ok_or_else(|| not_found(ports::USER_NOT_FOUND))?;
        let owner = owner.org_id.clone();
        let details = db.write(&format!("user/{id}"), owner.as_str(), "user.removed");
        db.users.retain(|u| u.id != *id);
        db.tokens.retain(|t| t.pat.user_id != *id);
        db.members.retain(|m| m.user_id != *id);
        Ok(details)
    }
}

#[async_trait]
impl TokenRepo for Fake {
    async fn create(&self, token: &NewTokenRecord, _actor: &str) -> Result<PersonalAccessToken> {
        self.db.lock().await.create_token(token)
    }
    async fn find_by_hash(&self, token_hash: &str) -> Result<Option<TokenOwner>> {
        self.token_lookups.fetch_add(1, Ordering::SeqCst);
        let db = self.db.lock().await;
        let Some(t) = db.tokens.iter().find(|t| t.hash == token_hash) else {
            return Ok(None);
        };
        let Some(row) = db.users.iter().find(|u| u.id == t.pat.user_id) else {
            return Ok(None);
        };
        let user = db.user(row);
        let org_state = db.orgs.iter().find(|o| o.id == user.org_id).map_or(OrgState::Inactive, |o| o.state);
        Ok(Some(TokenOwner { token: t.pat.clone(), user, org_state }))
    }
    async fn list(&self, user: &UserId, q: &ListQuery) -> Result<Page<PersonalAccessToken>> {
        let db = self.db.lock().await;
        Ok(page(db.tokens.iter().filter(|t| t.pat.user_id == *user).map(|t| t.pat.clone()).collect(), q))
    }
    async fn delete(&self, user: &UserId, token: &TokenId, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        if !db.tokens.iter().any(|t| t.pat.user_id == *user && t.pat.id == *token) {
            return Err(not_found(ports::TOKEN_NOT_FOUND));
        }
        db.tokens.retain(|t| t.pat.id != *token);
        let owner = db.users.iter().find(|u| u.id == *user).map(|u| u.org_id.to_string()).unwrap_or_default();
        Ok(db.write(&format!("user/{user}"), &owner, "user.pat.removed"))
    }
}

#[async_trait]
impl MemberRepo for Fake {
    async fn set(&self, user: &UserId, scope: &MemberScope, roles: &[Role], _actor: &str) -> Result<Details> {
        Ok(self.db.lock().await.set_member(user, scope, roles))
    }
    async fn remove(&self, user: &UserId, scope: &MemberScope, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        if !db.members.iter().any(|m| m.user_id == *user && m.scope == *scope) {
            return Err(not_found(ports::MEMBER_NOT_FOUND));
        }
        db.members.retain(|m| !(m.user_id == *user && m.scope == *scope));
        Ok(db.write("member", scope.owner(), "member.removed"))
    }
    async fn list(&self, scope: &MemberScope, q: &ListQuery) -> Result<Page<Member>> {
        let db = self.db.lock().await;
        Ok(page(db.members.iter().filter(|m| m.scope == *scope).cloned().collect(), q))
    }
    async fn of_user(&self, user: &UserId) -> Result<Vec<Member>> {
        Ok(self.db.lock().await.members.iter().filter(|m| m.user_id == *user).cloned().collect())
    }
}

#[async_trait]
impl InstanceRepo for Fake {
    async fn exists(&self) -> Result<bool> {
        Ok(self.db.lock().await.instance)
    }
    async fn bootstrap(&self, record: &BootstrapRecord) -> Result<()> {
        // One lock for the whole bootstrap stands for the store's one transaction.
        let mut db = self.db.lock().await;
        if db.instance {
            return Err(Error::new(ErrorKind::AlreadyExists, INSTANCE_EXISTS, "exists"));
        }
        db.instance = true;
        db.write("instance/instance", INSTANCE_OWNER, "instance.added");
        db.create_org(&record.org)?;
        db.create_user(&record.admin, None)?;
        db.set_member(&record.admin.id, &MemberScope::Instance, &record.admin_roles);
        db.create_token(&record.token)?;
        Ok(())
    }
}

/// A clock tests can move forward.
#[derive(Default)]
struct TestClock {
    offset_secs: AtomicI64,
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.offset_secs.load(Ordering::SeqCst))
    }
}

/// Counts lifecycle notifications.
#[derive(Default)]
struct CountingHook {
    disabled: Mutex<Vec<UserId>>,
}

#[async_trait]
impl UserLifecycleHook for CountingHook {
    async fn on_user_disabled(&self, user: &UserId) -> Result<()> {
        self.disabled.lock().await.push(user.clone());
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------ harness

fn fast_hashing() -> HashingConfig {
    HashingConfig { memory_kib: 64, iterations: 1, parallelism: 1, workers: 2, queue: 8 }
}

struct World {
    identity: Identity,
    fake: Arc<Fake>,
    clock: Arc<TestClock>,
    hook: Arc<CountingHook>,
    admin_token: String,
}

impl World {
    async fn new() -> World {
        Self::with_config(IdentityConfig { hashing: fast_hashing(), ..IdentityConfig::default() }).await
    }

    async fn with_config(config: IdentityConfig) -> World {
        let fake = Arc::new(Fake::default());
        let repos = Repos {
            orgs: fake.clone(),
            users: fake.clone(),
            tokens: fake.clone(),
            members: fake.clone(),
            instance: fake.clone(),
        };
        let clock = Arc::new(TestClock::default());
        let hook = Arc::new(CountingHook::default());
        let identity =
            Identity::new(config, repos, clock.clone(), Arc::new(UuidV7Ids)).unwrap().with_lifecycle_hook(hook.clone());
        let admin_token = identity.bootstrap().await.unwrap().unwrap();
        World { identity, fake, clock, hook, admin_token }
    }

    async fn ctx(&self, token: &str) -> CallContext {
        let principal = self.identity.authenticate(Some(&format!("Bearer {token}"))).await.unwrap();
        self.identity.call_context(principal, None).await.unwrap()
    }

    async fn admin(&self) -> CallContext {
        self.ctx(&self.admin_token).await
    }

    /// A machine user in `org` with `roles` there and a token; answers (user id, token).
    async fn machine_with_roles(&self, org: &OrgId, name: &str, roles: Vec<Role>) -> (UserId, String) {
        let admin = self.admin().await;
        let user = self
            .identity
            .add_machine(
                &admin,
                NewMachine {
                    org_id: Some(org.clone()),
                    user_id: None,
                    username: name.to_owned(),
                    name: name.to_owned(),
                    description: String::new(),
                },
            )
            .await
            .unwrap();
        if !roles.is_empty() {
            let scope = if roles.iter().all(|r| r.is_instance_role()) {
                MemberScope::Instance
            } else {
                MemberScope::Org(org.clone())
            };
            self.identity.add_member(&admin, &user.id, scope, roles).await.unwrap();
        }
        let (_, token) = self.identity.add_pat(&admin, &user.id, None).await.unwrap();
        (user.id, token)
    }
}

fn human(username: Option<&str>, email: &str, password: Option<NewPassword>) -> NewHuman {
    NewHuman {
        org_id: None,
        user_id: None,
        username: username.map(str::to_owned),
        profile: Profile {
            given_name: "Ada".to_owned(),
            family_name: "Lovelace".to_owned(),
            display_name: String::new(),
            preferred_language: "en".to_owned(),
        },
        email: Email { address: email.to_owned(), verified: false },
        phone: None,
        password,
        idp_links: Vec::new(),
    }
}

fn plain(password: &str) -> Option<NewPassword> {
    Some(NewPassword::Plain { password: password.to_owned(), change_required: false })
}

fn fields(err: &Error) -> Vec<&str> {
    err.violations().iter().map(|v| v.field.as_str()).collect()
}

// ------------------------------------------------------------------------------------------ tests

#[tokio::test]
async fn bootstrap_happens_once() {
    let w = World::new().await;
    assert_eq!(w.identity.bootstrap().await.unwrap(), None);
    let admin = w.admin().await;
    assert_eq!(admin.principal.instance_roles, vec![Role::IamOwner]);
    let me = w.identity.get_user(&admin, &admin.principal.user_id).await.unwrap();
    assert_eq!(me.username, ADMIN_USERNAME);
    assert!(me.is_machine());
    let org = w.identity.get_org(&admin, &me.org_id).await.unwrap();
    assert_eq!(org.name, DEFAULT_ORG_NAME);
    assert_eq!(org.primary_domain, "flowgate.localhost");
    assert_eq!(me.login_names, vec!["admin".to_owned(), "admin@flowgate.localhost".to_owned()]);
    assert_eq!(me.preferred_login_name, "admin@flowgate.localhost");
    let instance_events = w.fake.db.lock().await.events.iter().filter(|(_, e)| e == "instance.added").count();
    assert_eq!(instance_events, 1);
}

#[tokio::test]
async fn concurrent_bootstraps_create_one_instance() {
    let fake = Arc::new(Fake::default());
    let repos = Repos {
        orgs: fake.clone(),
        users: fake.clone(),
        tokens: fake.clone(),
        members: fake.clone(),
        instance: fake.clone(),
    };
    let config = IdentityConfig { hashing: fast_hashing(), ..IdentityConfig::default() };
    let identity = Identity::new(config, repos, Arc::new(SystemClock), Arc::new(UuidV7Ids)).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let identity = identity.clone();
            tokio::spawn(async move { identity.bootstrap().await })
        })
        .collect();
    let mut tokens = 0;
    for t in tasks {
        if t.await.unwrap().unwrap().is_some() {
            tokens += 1;
        }
    }
    assert_eq!(tokens, 1);
    assert_eq!(fake.db.lock().await.orgs.len(), 1);
}

#[tokio::test]
async fn permission_table_and_cross_org_denial() {
    let w = World::new().await;
    let admin = w.admin().await;
    let a = w.identity.add_org(&admin, "Org A").await.unwrap();
    let b = w.identity.add_org(&admin, "Org B").await.unwrap();
    assert_eq!(a.primary_domain, "org-a.localhost");
    let b_user = w
        .identity
        .add_human(&admin, NewHuman { org_id: Some(b.id.clone()), ..human(None, "bob@b.ch", None) })
        .await
        .unwrap();

    let (_, owner_token) = w.machine_with_roles(&a.id, "owner-a", vec![Role::OrgOwner]).await;
    let owner = w.ctx(&owner_token).await;
    assert_eq!(owner.org_id, a.id);

    // Own org: full user management.
    let a_user = w.identity.add_human(&owner, human(None, "alice@a.ch", plain("correct horse"))).await.unwrap();
    assert_eq!(a_user.org_id, a.id);
    assert_eq!(a_user.username, "alice@a.ch", "username defaults to the email");
    assert!(w.identity.get_org(&owner, &a.id).await.is_ok());

    // Other org: acting there is refused, its objects are invisible, writes are denied.
    let principal = w.identity.authenticate(Some(&format!("Bearer {owner_token}"))).await.unwrap();
    let err = w.identity.call_context(principal.clone(), Some(b.id.as_str())).await.unwrap_err();
    assert_eq!((err.kind(), err.id()), (ErrorKind::PermissionDenied, AUTH_ORG_DENIED));
    let err = w.identity.call_context(principal, Some("no-such-org")).await.unwrap_err();
    assert_eq!((err.kind(), err.id()), (ErrorKind::PermissionDenied, AUTH_ORG_DENIED), "same answer");
    let err = w.identity.get_user(&owner, &b_user.id).await.unwrap_err();
    assert_eq!((err.kind(), err.id()), (ErrorKind::PermissionDenied, "AUTHZ-denied"));
    let err = w.identity.get_org(&owner, &b.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let err = w.identity.deactivate_user(&owner, &b_user.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let err = w
        .identity
        .add_human(&owner, NewHuman { org_id: Some(b.id.clone()), ..human(None, "eve@b.ch", None) })
        .await
        .unwrap_err();
    assert_eq!((err.kind(), err.id()), (ErrorKind::PermissionDenied, AUTHZ_DENIED));
    let err = w.identity.add_org(&owner, "Org C").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let err = w.identity.add_member(&owner, &b_user.id, MemberScope::Org(b.id.clone()), vec![Role::OrgOwner]).await;
    assert_eq!(err.unwrap_err().kind(), ErrorKind::PermissionDenied);
    let err = w.identity.add_member(&owner, &a_user.id, MemberScope::Instance, vec![Role::IamOwner]).await;
    assert_eq!(err.unwrap_err().kind(), ErrorKind::PermissionDenied, "no escalation to the instance");

    // Lists are scoped to what the caller may read.
    let users = w.identity.list_users(&owner, vec![], UserSort::Username, ListQuery::default()).await.unwrap();
    assert!(users.items.iter().all(|u| u.org_id == a.id));
    assert_eq!(users.total, 2);
    let orgs = w.identity.list_orgs(&owner, vec![], ListQuery::default()).await.unwrap();
    assert_eq!(orgs.items.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), vec![a.id.clone()]);
    let all = w.identity.list_orgs(&admin, vec![], ListQuery::default()).await.unwrap();
    assert_eq!(all.total, 3);

    // ORG_USER_MANAGER: users yes, members no.
    let (_, manager_token) = w.machine_with_roles(&a.id, "manager-a", vec![Role::OrgUserManager]).await;
    let manager = w.ctx(&manager_token).await;
    assert!(w.identity.get_user(&manager, &a_user.id).await.is_ok());
    let err = w.identity.add_member(&manager, &a_user.id, MemberScope::Org(a.id.clone()), vec![Role::OrgOwner]).await;
    assert_eq!(err.unwrap_err().kind(), ErrorKind::PermissionDenied);
    let err = w.identity.deactivate_org(&manager, &a.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "readable org, missing org.write");

    // IAM_LOGIN_CLIENT reads everywhere, writes nowhere.
    let (_, login_token) = w.machine_with_roles(&a.id, "login-client", vec![Role::IamLoginClient]).await;
    let login = w.ctx(&login_token).await;
    assert!(w.identity.get_user(&login, &b_user.id).await.is_ok());
    let err = w.identity.lock_user(&login, &b_user.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);

    // No role at all: sees nothing, not even its own org's users.
    let (nobody_id, nobody_token) = w.machine_with_roles(&a.id, "nobody", vec![]).await;
    let nobody = w.ctx(&nobody_token).await;
    let users = w.identity.list_users(&nobody, vec![], UserSort::CreationDate, ListQuery::default()).await.unwrap();
    assert_eq!(users.total, 0);
    assert!(w.identity.get_user(&nobody, &nobody_id).await.is_ok(), "a caller can read itself");
    assert_eq!(w.identity.get_user(&nobody, &a_user.id).await.unwrap_err().kind(), ErrorKind::PermissionDenied);
}

#[tokio::test]
async fn validation_names_fields() {
    let w = World::new().await;
    let admin = w.admin().await;
    let cases: Vec<(NewHuman, &str, &str)> = vec![
        (human(Some(""), "a@b.ch", None), "username", "must not be empty"),
        (human(Some(&"u".repeat(201)), "a@b.ch", None), "username", "at most 200"),
        (human(Some("ok"), "not-an-email", None), "email.email", "name@example.com"),
        (human(Some("ok"), "a@b.ch", plain(&"p".repeat(1025))), "password.password", "at most 1024 bytes"),
        (human(Some("ok"), "a@b.ch", plain("1234567")), "password.password", "at least 8 bytes"),
        (
            human(
                Some("ok"),
                "a@b.ch",
                Some(NewPassword::Hashed { hash: "$1$md5$nope".to_owned(), change_required: false }),
            ),
            "hashed_password.hash",
            "argon2id",
        ),
    ];
    for (new, field, text) in cases {
        let err = w.identity.add_human(&admin, new).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{field}");
        assert_eq!(fields(&err), vec![field]);
        assert!(err.violations()[0].description.contains(text), "{}", err.message());
        assert!(err.message().contains(field));
    }
    let ok = w.identity.add_human(&admin, human(Some("ok"), "a@b.ch", None)).await.unwrap();
    match &ok.kind {
        UserKind::Human(h) => {
            assert_eq!(h.profile.display_name, "Ada Lovelace", "derived when omitted");
            assert!(!h.password_set);
        }
        UserKind::Machine(_) => panic!("human expected"),
    }
    // Several problems are reported at once.
    let mut bad = human(Some("a b"), "x@", None);
    bad.profile.given_name = String::new();
    bad.phone = Some(Phone { number: "call me".to_owned(), verified: false });
    let err = w.identity.add_human(&admin, bad).await.unwrap_err();
    assert_eq!(fields(&err), vec!["username", "profile.given_name", "email.email", "phone.phone"]);

    let err = w
        .identity
        .list_users(&admin, vec![], UserSort::CreationDate, ListQuery { offset: 0, limit: 1001, asc: false })
        .await
        .unwrap_err();
    assert_eq!(fields(&err), vec!["query.limit"]);
    let err = w.identity.add_org(&admin, "   ").await.unwrap_err();
    assert_eq!(fields(&err), vec!["name"]);
    let err = w
        .identity
        .add_machine(
            &admin,
            NewMachine {
                org_id: None,
                user_id: Some(String::new()),
                username: "m".to_owned(),
                name: String::new(),
                description: "d".repeat(501),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(fields(&err), vec!["user_id", "name", "description"]);
}

#[tokio::test]
async fn passwords_are_bytes_and_never_truncated() {
    let w = World::new().await;
    let admin = w.admin().await;
    // 100 bytes; bcrypt would silently use only 72 of them.
    let long = "ä".repeat(50);
    let user = w.identity.add_human(&admin, human(Some("long"), "l@b.ch", plain(&long))).await.unwrap();
    assert!(w.identity.verify_password(&user.id, &long).await.unwrap());
    assert!(!w.identity.verify_password(&user.id, &long[..72]).await.unwrap());
    assert!(!w.identity.verify_password(&user.id, &long[..98]).await.unwrap());
    // Four characters, eight bytes: long enough.
    assert!(w.identity.add_human(&admin, human(Some("short"), "s@b.ch", plain("ääää"))).await.is_ok());
    // Unknown users simply do not match.
    assert!(!w.identity.verify_password(&UserId::from("nobody"), "whatever1").await.unwrap());
    assert!(!w.identity.verify_password(&user.id, &"x".repeat(5000)).await.unwrap());
    // The stored hash is argon2id, never the password.
    let stored = w.fake.db.lock().await.users.iter().find(|u| u.id == user.id).and_then(|u| u.hash.clone()).unwrap();
    assert!(stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{stored}");
}

#[tokio::test]
async fn bcrypt_import_verifies_and_is_rehashed_to_argon2id() {
    let w = World::new().await;
    let admin = w.admin().await;
    let legacy = bcrypt::hash("imported secret", 4).unwrap();
    let user = w
        .identity
        .add_human(
            &admin,
            human(
                Some("imported"),
                "i@b.ch",
                Some(NewPassword::Hashed { hash: legacy.clone(), change_required: true }),
            ),
        )
        .await
        .unwrap();
    match &user.kind {
        UserKind::Human(h) => assert!(h.password_set && h.password_change_required),
        UserKind::Machine(_) => panic!("human expected"),
    }
    assert!(!w.identity.verify_password(&user.id, "wrong secret").await.unwrap());
    let stored = |w: &World| {
        let fake = w.fake.clone();
        let id = user.id.clone();
        async move { fake.db.lock().await.users.iter().find(|u| u.id == id).and_then(|u| u.hash.clone()).unwrap() }
    };
    assert_eq!(stored(&w).await, legacy, "a failed verify does not rehash");
    assert!(w.identity.verify_password(&user.id, "imported secret").await.unwrap());
    let rehashed = stored(&w).await;
    assert!(rehashed.starts_with("$argon2id$"), "{rehashed}");
    assert!(!w.identity.hasher().needs_rehash(&rehashed));
    assert!(w.identity.verify_password(&user.id, "imported secret").await.unwrap());
    assert_eq!(stored(&w).await, rehashed, "a current hash is kept");
    let events = w.fake.db.lock().await.events.iter().filter(|(_, e)| e == "user.password.rehashed").count();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn argon2_with_other_parameters_needs_rehash() {
    let current = PasswordHasher::new(&fast_hashing()).unwrap();
    let other = PasswordHasher::new(&HashingConfig { memory_kib: 128, ..fast_hashing() }).unwrap();
    let more_passes = PasswordHasher::new(&HashingConfig { iterations: 2, ..fast_hashing() }).unwrap();
    let h = current.hash("password1").await.unwrap();
    assert!(!current.needs_rehash(&h));
    assert!(other.needs_rehash(&h));
    assert!(more_passes.needs_rehash(&h));
    // Verification uses the parameters stored in the hash.
    assert!(other.verify("password1", &h).await.unwrap());
    assert!(!other.verify("password2", &h).await.unwrap());
    assert!(current.needs_rehash(&bcrypt::hash("password1", 4).unwrap()));
    assert!(current.needs_rehash("garbage"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_once() {
    let pool = HashPool::new(1, 1).unwrap();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let running = tokio::spawn(pool.run(move || {
        let _ = started_tx.send(());
        let _ = release_rx.recv();
        1
    }));
    tokio::task::spawn_blocking(move || started_rx.recv()).await.unwrap().unwrap();
    let waiting = tokio::spawn(pool.run(|| 2));
    assert_eq!(pool.load(), (1, 1));
    // Full: refused before the job even starts, without waiting for a worker.
    let refused = tokio::time::timeout(Duration::from_secs(30), pool.run(|| 3)).await.expect("answered at once");
    let err = refused.unwrap_err();
    assert_eq!((err.kind(), err.id()), (ErrorKind::ResourceExhausted, PASSWORD_BUSY));
    release_tx.send(()).unwrap();
    assert_eq!(running.await.unwrap().unwrap(), 1);
    assert_eq!(waiting.await.unwrap().unwrap(), 2);
    assert_eq!(pool.load(), (0, 0));
    assert_eq!(pool.run(|| 4).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_cases_shed_password_work_when_the_pool_is_full() {
    let config = IdentityConfig {
        hashing: HashingConfig { workers: 1, queue: 1, ..fast_hashing() },
        ..IdentityConfig::default()
    };
    let w = World::with_config(config).await;
    let admin = w.admin().await;
    let pool = w.identity.hasher().pool().clone();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let blocker = tokio::spawn(pool.run(move || {
        let _ = started_tx.send(());
        let _ = release_rx.recv();
    }));
    tokio::task::spawn_blocking(move || started_rx.recv()).await.unwrap().unwrap();
    let queued = tokio::spawn(pool.run(|| ()));
    assert_eq!(pool.load(), (1, 1));
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        w.identity.add_human(&admin, human(Some("busy"), "busy@b.ch", plain("long enough"))),
    )
    .await
    .expect("answered at once")
    .unwrap_err();
    assert_eq!((err.kind(), err.id()), (ErrorKind::ResourceExhausted, PASSWORD_BUSY));
    let err = w.identity.verify_password(&UserId::from("x"), "password").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    release_tx.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    queued.await.unwrap().unwrap();
    assert!(w.identity.add_human(&admin, human(Some("busy"), "busy@b.ch", plain("long enough"))).await.is_ok());
}

#[tokio::test]
async fn tokens_are_parsed_strictly() {
    let w = World::new().await;
    let token = w.admin_token.clone();
    assert!(token.starts_with(PAT_PREFIX));
    assert_eq!(token.len(), 47);
    let auth = |v: String| {
        let identity = w.identity.clone();
        async move { identity.authenticate(Some(&v)).await }
    };
    assert!(auth(format!("Bearer {token}")).await.is_ok());
    let flipped = {
        let mut chars: Vec<char> = token.chars().collect();
        let i = chars.iter().rposition(|c| c.is_ascii_alphabetic()).unwrap();
        chars[i] =
            if chars[i].is_ascii_lowercase() { chars[i].to_ascii_uppercase() } else { chars[i].to_ascii_lowercase() };
        chars.into_iter().collect::<String>()
    };
    let bad = vec![
        format!("Bearer {}", &token[..token.len() - 1]),
        format!("Bearer {token}x"),
        format!("Bearer {token}AAAA"),
        format!("Bearer {flipped}"),
        format!("Bearer {}", token.to_uppercase()),
        format!("Bearer {}", token.replacen(PAT_PREFIX, "", 1)),
        format!("Basic {token}"),
        token.clone(),
        String::new(),
    ];
    for value in bad {
        let err = auth(value.clone()).await.unwrap_err();
        assert_eq!((err.kind(), err.id()), (ErrorKind::Unauthenticated, AUTH_TOKEN_INVALID), "{value}");
    }
    let err = w.identity.authenticate(None).await.unwrap_err();
    assert_eq!(err.id(), AUTH_TOKEN_INVALID);
    // The database holds only the digest.
    let db = w.fake.db.lock().await;
    assert!(db.tokens.iter().all(|t| t.hash.len() == 64 && !t.hash.contains(&token)));
}

#[tokio::test]
async fn tokens_stop_working_when_expired_revoked_or_owner_disabled() {
    let w = World::new().await;
    let admin = w.admin().await;
    let org = w.identity.add_org(&admin, "Tokens").await.unwrap();
    let (bot, token) = w.machine_with_roles(&org.id, "bot", vec![]).await;
    let header = format!("Bearer {token}");
    assert!(w.identity.authenticate(Some(&header)).await.is_ok());

    // Expiry.
    let in_an_hour = Utc::now() + chrono::Duration::hours(1);
    let (pat, expiring) = w.identity.add_pat(&admin, &bot, Some(in_an_hour)).await.unwrap();
    assert_eq!(pat.expiration, Some(in_an_hour));
    let expiring = format!("Bearer {expiring}");
    assert!(w.identity.authenticate(Some(&expiring)).await.is_ok());
    w.clock.offset_secs.store(7200, Ordering::SeqCst);
    assert_eq!(w.identity.authenticate(Some(&expiring)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);
    w.clock.offset_secs.store(0, Ordering::SeqCst);
    let err = w.identity.add_pat(&admin, &bot, Some(Utc::now() - chrono::Duration::seconds(1))).await.unwrap_err();
    assert_eq!(fields(&err), vec!["expiration_date"]);

    // Revocation.
    w.identity.remove_pat(&admin, &bot, &pat.id).await.unwrap();
    assert_eq!(w.identity.authenticate(Some(&expiring)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);
    let listed = w.identity.list_pats(&admin, &bot, ListQuery::default()).await.unwrap();
    assert_eq!(listed.total, 1);

    // Owner locked, then org deactivated.
    w.identity.lock_user(&admin, &bot).await.unwrap();
    assert_eq!(w.identity.authenticate(Some(&header)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);
    let err = w.identity.lock_user(&admin, &bot).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    w.identity.unlock_user(&admin, &bot).await.unwrap();
    assert!(w.identity.authenticate(Some(&header)).await.is_ok());
    w.identity.deactivate_org(&admin, &org.id).await.unwrap();
    assert_eq!(w.identity.authenticate(Some(&header)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);
    assert_eq!(w.identity.deactivate_org(&admin, &org.id).await.unwrap_err().kind(), ErrorKind::FailedPrecondition);
    w.identity.reactivate_org(&admin, &org.id).await.unwrap();
    assert!(w.identity.authenticate(Some(&header)).await.is_ok());

    // A machine user manages its own tokens without any role.
    let me = w.ctx(&token).await;
    let (own, _) = w.identity.add_pat(&me, &bot, None).await.unwrap();
    w.identity.remove_pat(&me, &bot, &own.id).await.unwrap();
    // PATs are for machines only.
    let person = w.identity.add_human(&admin, human(Some("person"), "p@b.ch", None)).await.unwrap();
    let err = w.identity.add_pat(&admin, &person.id, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    // create_token_for (admin CLI) by username.
    let (_, cli) = w.identity.create_token_for("bot", Some(Duration::from_secs(60))).await.unwrap();
    assert!(w.identity.authenticate(Some(&format!("Bearer {cli}"))).await.is_ok());
    assert_eq!(w.identity.create_token_for("person", None).await.unwrap_err().kind(), ErrorKind::FailedPrecondition);
    assert_eq!(w.identity.create_token_for("ghost", None).await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn lifecycle_hook_and_deletion() {
    let w = World::new().await;
    let admin = w.admin().await;
    let org = w.identity.add_org(&admin, "Doomed Inc.").await.unwrap();
    let (bot, token) = w.machine_with_roles(&org.id, "doomed-bot", vec![Role::OrgOwner]).await;
    let person = w
        .identity
        .add_human(&admin, NewHuman { org_id: Some(org.id.clone()), ..human(Some("p1"), "p1@b.ch", None) })
        .await
        .unwrap();
    assert_eq!(person.preferred_login_name, "p1@doomed-inc.localhost");

    w.identity.deactivate_user(&admin, &person.id).await.unwrap();
    w.identity.reactivate_user(&admin, &person.id).await.unwrap();
    assert_eq!(*w.hook.disabled.lock().await, vec![person.id.clone()]);
    let err = w.identity.deactivate_user(&admin, &admin.principal.user_id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "no self-lockout");

    w.identity.delete_org(&admin, &org.id).await.unwrap();
    let disabled = w.hook.disabled.lock().await.clone();
    assert!(disabled.contains(&bot) && disabled.iter().filter(|u| **u == person.id).count() == 2);
    assert_eq!(w.identity.get_user(&admin, &person.id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(w.identity.get_org(&admin, &org.id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(w.identity.authenticate(Some(&format!("Bearer {token}"))).await.unwrap_err().id(), AUTH_TOKEN_INVALID);
    let db = w.fake.db.lock().await;
    assert!(db.members.iter().all(|m| m.user_id != bot));
    assert!(db.tokens.iter().all(|t| t.pat.user_id != bot));
    drop(db);

    let err = w.identity.delete_org(&admin, &admin.org_id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "own org stays");
    let victim = w.identity.add_human(&admin, human(Some("victim"), "v@b.ch", None)).await.unwrap();
    w.identity.delete_user(&admin, &victim.id).await.unwrap();
    assert!(w.hook.disabled.lock().await.contains(&victim.id));
    assert_eq!(w.identity.delete_user(&admin, &victim.id).await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn usernames_are_unique_ignoring_case_and_login_names_resolve() {
    let w = World::new().await;
    let admin = w.admin().await;
    w.identity.add_human(&admin, human(Some("Carol"), "c@b.ch", None)).await.unwrap();
    let err = w.identity.add_human(&admin, human(Some("carol"), "c2@b.ch", None)).await.unwrap_err();
    assert_eq!((err.kind(), err.id()), (ErrorKind::AlreadyExists, USER_USERNAME_TAKEN));
    let err = w.identity.add_org(&admin, "FLOWGATE").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let found = w
        .identity
        .list_users(
            &admin,
            vec![UserFilter::LoginName("CAROL@flowgate.localhost".to_owned())],
            UserSort::CreationDate,
            ListQuery::default(),
        )
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].username, "Carol");
}

#[tokio::test]
async fn set_password_needs_the_current_one_or_the_permission() {
    let w = World::new().await;
    let admin = w.admin().await;
    let org = w.identity.add_org(&admin, "Pw").await.unwrap();
    let user = w
        .identity
        .add_human(
            &admin,
            NewHuman { org_id: Some(org.id.clone()), ..human(Some("pw"), "pw@b.ch", plain("first password")) },
        )
        .await
        .unwrap();
    // Administrators set it without the current one.
    w.identity
        .set_password(&admin, &user.id, "second password", PasswordVerification::Administrator, true)
        .await
        .unwrap();
    assert!(w.identity.verify_password(&user.id, "second password").await.unwrap());
    assert!(!w.identity.verify_password(&user.id, "first password").await.unwrap());
    // The policy is checked first and names the field.
    let err = w
        .identity
        .set_password(&admin, &user.id, "short", PasswordVerification::Administrator, false)
        .await
        .unwrap_err();
    assert_eq!(fields(&err), vec!["new_password.password"]);
    // A caller without user.credential.write in that org is refused, even with the right current password.
    let (_, reader_token) = w.machine_with_roles(&org.id, "reader", vec![Role::IamLoginClient]).await;
    let reader = w.ctx(&reader_token).await;
    let err = w
        .identity
        .set_password(
            &reader,
            &user.id,
            "third password",
            PasswordVerification::CurrentPassword("second password".to_owned()),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    // Machines have no password.
    let err = w
        .identity
        .set_password(&admin, &admin.principal.user_id, "some password", PasswordVerification::Administrator, false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    // Updates: only given parts; validation names fields.
    let d = w
        .identity
        .update_human(&admin, &user.id, HumanUpdate { username: Some("pw2".to_owned()), ..HumanUpdate::default() })
        .await
        .unwrap();
    assert!(d.sequence > 1);
    let err = w
        .identity
        .update_human(
            &admin,
            &user.id,
            HumanUpdate { email: Some(Email { address: "bad".to_owned(), verified: true }), ..HumanUpdate::default() },
        )
        .await
        .unwrap_err();
    assert_eq!(fields(&err), vec!["email.email"]);
    let seen = w.identity.get_user(&admin, &user.id).await.unwrap();
    assert_eq!(seen.username, "pw2");
    assert_eq!(seen.login_names[1], "pw2@pw.localhost");
}

#[tokio::test]
async fn members_validate_roles_and_scope() {
    let w = World::new().await;
    let admin = w.admin().await;
    let org = w.identity.add_org(&admin, "Members").await.unwrap();
    let (bot, _) = w.machine_with_roles(&org.id, "member-bot", vec![]).await;
    let scope = MemberScope::Org(org.id.clone());
    let err = w.identity.add_member(&admin, &bot, scope.clone(), vec![]).await.unwrap_err();
    assert_eq!(fields(&err), vec!["roles"]);
    let err = w.identity.add_member(&admin, &bot, scope.clone(), vec![Role::IamOwner]).await.unwrap_err();
    assert_eq!(fields(&err), vec!["roles"]);
    let err =
        w.identity.add_member(&admin, &bot, scope.clone(), vec![Role::OrgOwner, Role::OrgOwner]).await.unwrap_err();
    assert_eq!(fields(&err), vec!["roles"]);
    w.identity.add_member(&admin, &bot, scope.clone(), vec![Role::OrgUserManager]).await.unwrap();
    w.identity.add_member(&admin, &bot, scope.clone(), vec![Role::OrgOwner]).await.unwrap();
    let members = w.identity.list_members(&admin, scope.clone(), ListQuery::default()).await.unwrap();
    assert_eq!(members.items.len(), 1);
    assert_eq!(members.items[0].roles, vec![Role::OrgOwner], "roles are replaced");
    let err = w.identity.add_member(&admin, &UserId::from("ghost"), scope.clone(), vec![Role::OrgOwner]).await;
    assert_eq!(err.unwrap_err().kind(), ErrorKind::NotFound);
    w.identity.remove_member(&admin, &bot, scope.clone()).await.unwrap();
    assert_eq!(w.identity.remove_member(&admin, &bot, scope).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!("ORG_OWNER".parse::<Role>().unwrap(), Role::OrgOwner);
    assert!("org_owner".parse::<Role>().is_err());
    assert!(w.hook.disabled.lock().await.is_empty());
}

#[tokio::test]
async fn principal_cache_never_outlives_a_change_made_in_this_process() {
    let w = World::new().await;
    let admin = w.admin().await;
    let org = w.identity.add_org(&admin, "Cached").await.unwrap();
    let (bot, token) = w.machine_with_roles(&org.id, "cached-bot", vec![Role::OrgOwner]).await;
    let header = format!("Bearer {token}");
    let lookups = || w.fake.token_lookups.load(Ordering::SeqCst);
    let roles = |p: &Principal| p.org_roles.iter().flat_map(|(_, r)| r.clone()).collect::<Vec<_>>();

    // Served from the cache: one lookup for two calls.
    let before = lookups();
    let first = w.identity.authenticate(Some(&header)).await.unwrap();
    assert_eq!(w.identity.authenticate(Some(&header)).await.unwrap(), first);
    assert_eq!(lookups() - before, 1);
    assert_eq!(roles(&first), vec![Role::OrgOwner]);

    // Membership changes are seen by the very next call.
    w.identity.add_member(&admin, &bot, MemberScope::Org(org.id.clone()), vec![Role::OrgUserManager]).await.unwrap();
    assert_eq!(roles(&w.identity.authenticate(Some(&header)).await.unwrap()), vec![Role::OrgUserManager]);
    w.identity.remove_member(&admin, &bot, MemberScope::Org(org.id.clone())).await.unwrap();
    assert!(w.identity.authenticate(Some(&header)).await.unwrap().org_roles.is_empty());

    // So are deactivation, locking and revocation, through a clone of the use cases too.
    let other = w.identity.clone();
    assert!(other.authenticate(Some(&header)).await.is_ok());
    w.identity.deactivate_user(&admin, &bot).await.unwrap();
    assert_eq!(other.authenticate(Some(&header)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);
    w.identity.reactivate_user(&admin, &bot).await.unwrap();
    assert!(other.authenticate(Some(&header)).await.is_ok());
    w.identity.lock_user(&admin, &bot).await.unwrap();
    assert_eq!(w.identity.authenticate(Some(&header)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);
    w.identity.unlock_user(&admin, &bot).await.unwrap();
    assert!(w.identity.lock_after_failed_attempts(&bot).await.unwrap());
    assert_eq!(w.identity.authenticate(Some(&header)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);
    w.identity.unlock_user(&admin, &bot).await.unwrap();
    assert!(w.identity.authenticate(Some(&header)).await.is_ok());
    let pats = w.identity.list_pats(&admin, &bot, ListQuery::default()).await.unwrap();
    for pat in &pats.items {
        w.identity.remove_pat(&admin, &bot, &pat.id).await.unwrap();
    }
    assert_eq!(w.identity.authenticate(Some(&header)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);

    // Org deactivation and deletion reach every user of the org.
    let (doomed, doomed_token) = w.machine_with_roles(&org.id, "doomed", vec![]).await;
    let doomed_header = format!("Bearer {doomed_token}");
    assert!(w.identity.authenticate(Some(&doomed_header)).await.is_ok());
    w.identity.deactivate_org(&admin, &org.id).await.unwrap();
    assert_eq!(w.identity.authenticate(Some(&doomed_header)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);
    w.identity.reactivate_org(&admin, &org.id).await.unwrap();
    assert!(w.identity.authenticate(Some(&doomed_header)).await.is_ok());
    w.identity.delete_user(&admin, &doomed).await.unwrap();
    assert_eq!(w.identity.authenticate(Some(&doomed_header)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);

    // A token expiring while cached stops working at its expiration, not at the end of the TTL.
    let soon = Utc::now() + chrono::Duration::milliseconds(1500);
    let (_, expiring) = w.identity.add_pat(&admin, &admin.principal.user_id, Some(soon)).await.unwrap();
    let expiring = format!("Bearer {expiring}");
    assert!(w.identity.authenticate(Some(&expiring)).await.is_ok());
    w.clock.offset_secs.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(w.identity.authenticate(Some(&expiring)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);
    w.clock.offset_secs.store(0, Ordering::SeqCst);
}

#[tokio::test]
async fn principal_cache_sees_other_replicas_changes_after_its_ttl() {
    let w = World::new().await;
    let admin = w.admin().await;
    let org = w.identity.add_org(&admin, "Replicas").await.unwrap();
    let (bot, token) = w.machine_with_roles(&org.id, "replica-bot", vec![]).await;
    let header = format!("Bearer {token}");
    assert!(w.identity.authenticate(Some(&header)).await.is_ok());
    // Another replica deactivates the user: this process learns nothing of it ...
    w.fake.db.lock().await.users.iter_mut().filter(|u| u.id == bot).for_each(|u| u.state = UserState::Inactive);
    assert!(w.identity.authenticate(Some(&header)).await.is_ok());
    // ... until the entry is older than the TTL (two seconds).
    w.clock.offset_secs.store(2, Ordering::SeqCst);
    assert_eq!(w.identity.authenticate(Some(&header)).await.unwrap_err().id(), AUTH_TOKEN_INVALID);

    // Without the cache every call reads the token.
    let uncached = w.identity.clone().with_principal_cache_ttl(Duration::ZERO);
    let before = w.fake.token_lookups.load(Ordering::SeqCst);
    let admin_header = format!("Bearer {}", w.admin_token);
    assert!(uncached.authenticate(Some(&admin_header)).await.is_ok());
    assert!(uncached.authenticate(Some(&admin_header)).await.is_ok());
    assert_eq!(w.fake.token_lookups.load(Ordering::SeqCst) - before, 2);
}
