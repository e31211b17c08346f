//! Session use cases against in-memory fakes of the identity and session ports.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use flowgate_core::event::{Details, NewEvent};
use flowgate_core::identity::*;
use flowgate_core::session::ports::{SESSION_NOT_FOUND, SESSION_TERMINATED, TOTP_NOT_FOUND};
use flowgate_core::session::*;
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

struct SessionRow {
    session: Session,
    token_hash: String,
    /// Set only for sessions stored with a legacy-shaped token (see `give_legacy_token`).
    legacy_token_hash: Option<String>,
}

struct ChallengeRow {
    session: SessionId,
    kind: OtpKind,
    code_hash: String,
    expires_at: DateTime<Utc>,
    used: bool,
}

#[derive(Default)]
struct Db {
    instance: bool,
    orgs: Vec<Organization>,
    users: Vec<UserRow>,
    tokens: Vec<(PersonalAccessToken, String)>,
    members: Vec<Member>,
    sessions: Vec<SessionRow>,
    challenges: Vec<ChallengeRow>,
    totp: HashMap<UserId, TotpRegistration>,
    counters: HashMap<(UserId, LockoutKind), u32>,
    /// (aggregate, event type) in write order.
    events: Vec<(String, String)>,
    /// Calls of `SessionRepo::get_by_legacy_token_hash`.
    legacy_lookups: usize,
}

fn details(sequence: u64, owner: &str) -> Details {
    let now = Utc::now();
    Details { sequence, creation_date: now, change_date: now, resource_owner: owner.to_owned() }
}

fn not_found(id: &'static str) -> Error {
    Error::new(ErrorKind::NotFound, id, "not found")
}

impl Db {
    /// The row of user `id`, or the store's NotFound.
    fn user_row(&mut self, id: &UserId) -> Result<&mut UserRow> {
        self.users
            .iter_mut()
            .find(|u| u.id == *id)
            .ok_or_else(|| not_found(flowgate_core::identity::ports::USER_NOT_FOUND))
    }

    fn log(&mut self, aggregate: &str, event: &str) {
        self.events.push((aggregate.to_owned(), event.to_owned()));
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
            details: details(1, row.org_id.as_str()),
            login_names: names,
            preferred_login_name: preferred,
        }
    }

    fn create_org(&mut self, org: &NewOrgRecord) -> Organization {
        self.log(&format!("org/{}", org.id), "org.added");
        let created = Organization {
            id: org.id.clone(),
            name: org.name.clone(),
            primary_domain: org.primary_domain.clone(),
            state: OrgState::Active,
            details: details(1, org.id.as_str()),
        };
        self.orgs.push(created.clone());
        created
    }

    fn create_user(&mut self, user: &NewUserRecord, hash: Option<&str>) -> User {
        let kind = match &user.kind {
            NewUserKind::Human { profile, email, phone, password_change_required } => UserKind::Human(Human {
                profile: profile.clone(),
                email: email.clone(),
                phone: phone.clone(),
                password_set: hash.is_some(),
                password_change_required: *password_change_required,
                password_changed: None,
            }),
            NewUserKind::Machine(m) => UserKind::Machine(m.clone()),
        };
        self.log(&format!("user/{}", user.id), "user.added");
        self.users.push(UserRow {
            id: user.id.clone(),
            org_id: user.org_id.clone(),
            username: user.username.clone(),
            state: UserState::Active,
            kind,
            hash: hash.map(str::to_owned),
        });
        self.user(self.users.last().unwrap())
    }

    fn create_token(&mut self, token: &NewTokenRecord) -> PersonalAccessToken {
        let pat = PersonalAccessToken {
            id: token.id.clone(),
            user_id: token.user_id.clone(),
            expiration: token.expiration,
            details: details(1, "x"),
        };
        self.tokens.push((pat.clone(), token.token_hash.clone()));
        pat
    }

    fn set_member(&mut self, user: &UserId, scope: &MemberScope, roles: &[Role]) -> Details {
        self.members.retain(|m| !(m.user_id == *user && m.scope == *scope));
        self.members.push(Member {
            user_id: user.clone(),
            scope: scope.clone(),
            roles: roles.to_vec(),
            details: details(1, scope.owner()),
        });
        details(1, scope.owner())
    }

    fn session_matches(&self, s: &Session, filter: &SessionFilter) -> bool {
        match filter {
            SessionFilter::Ids(ids) => ids.contains(&s.id),
            SessionFilter::UserId(u) => s.user_id() == Some(u),
            SessionFilter::CreationDate(at, m) => m.matches(s.details.creation_date, *at),
            SessionFilter::Creator(c) => c.as_deref() == Some(s.creator.as_str()),
            SessionFilter::UserAgentFingerprint(f) => {
                f.is_some() && s.user_agent.as_ref().and_then(|a| a.fingerprint_id.as_ref()) == f.as_ref()
            }
            SessionFilter::ExpirationDate(at, m) => s.expiration.is_some_and(|e| m.matches(e, *at)),
            SessionFilter::VisibleTo { creator, user, orgs } => {
                s.creator == *creator
                    || s.factors.user.as_ref().is_some_and(|u| u.id == *user || orgs.contains(&u.organization_id))
            }
        }
    }

    fn store_challenges(&mut self, session: &SessionId, challenges: &[NewOtpChallenge]) {
        for c in challenges {
            self.challenges.retain(|r| !(r.session == *session && r.kind == c.kind));
            self.challenges.push(ChallengeRow {
                session: session.clone(),
                kind: c.kind,
                code_hash: c.code_hash.clone(),
                expires_at: c.expires_at,
                used: false,
            });
        }
    }

    fn log_all(&mut self, session: &SessionId, events: &[NewEvent]) {
        for e in events {
            self.log(&format!("session/{session}"), &e.event_type);
        }
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
}

#[async_trait]
impl OrgRepo for Fake {
    async fn create(&self, org: &NewOrgRecord, _actor: &str) -> Result<Organization> {
        Ok(self.db.lock().await.create_org(org))
    }
    async fn get(&self, id: &OrgId) -> Result<Option<Organization>> {
        Ok(self.db.lock().await.orgs.iter().find(|o| o.id == *id).cloned())
    }
    async fn list(&self, _filters: &[OrgFilter], q: &ListQuery) -> Result<Page<Organization>> {
        Ok(page(self.db.lock().await.orgs.clone(), q))
    }
    async fn set_state(&self, id: &OrgId, change: OrgStateChange, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let org = db
            .orgs
            .iter_mut()
            .find(|o| o.id == *id)
            .ok_or_else(|| not_found(flowgate_core::identity::ports::ORG_NOT_FOUND))?;
        org.state = change.target();
        Ok(details(2, id.as_str()))
    }
    async fn delete(&self, _id: &OrgId, _actor: &str) -> Result<Details> {
        Err(Error::internal("FAKE", "not needed"))
    }
}

#[async_trait]
impl UserRepo for Fake {
    async fn create(&self, user: &NewUserRecord, password_hash: Option<&str>, _actor: &str) -> Result<User> {
        Ok(self.db.lock().await.create_user(user, password_hash))
    }
    async fn get(&self, id: &UserId) -> Result<Option<User>> {
        let db = self.db.lock().await;
        Ok(db.users.iter().find(|u| u.id == *id).map(|u| db.user(u)))
    }
    async fn find_by_login_name(&self, login_name: &str) -> Result<Option<User>> {
        let db = self.db.lock().await;
        let wanted = login_name.to_lowercase();
        Ok(db.users.iter().map(|u| db.user(u)).find(|u| u.login_names.iter().any(|l| l.to_lowercase() == wanted)))
    }
    async fn list(&self, _filters: &[UserFilter], _sort: UserSort, q: &ListQuery) -> Result<Page<User>> {
        let db = self.db.lock().await;
        Ok(page(db.users.iter().map(|u| db.user(u)).collect(), q))
    }
    async fn update_human(&self, id: &UserId, change: &HumanChange, _actor: &str) -> Result<Details> {
        // Only renames are needed here.
        if change.profile.is_some() || change.email.is_some() || change.phone.is_some() {
            return Err(Error::internal("FAKE", "not needed"));
        }
        let mut db = self.db.lock().await;
        let row = db.user_row(id)?;
        if let Some(username) = &change.username {
            row.username = username.clone();
        }
        Ok(details(2, row.org_id.as_str()))
    }
    async fn password_hash(&self, id: &UserId) -> Result<Option<String>> {
        Ok(self.db.lock().await.users.iter().find(|u| u.id == *id).and_then(|u| u.hash.clone()))
    }
    async fn set_password(&self, _id: &UserId, _hash: &str, _required: bool, _actor: &str) -> Result<Details> {
        Err(Error::internal("FAKE", "not needed"))
    }
    async fn replace_password_hash(&self, id: &UserId, old: &str, new: &str, _actor: &str) -> Result<bool> {
        let mut db = self.db.lock().await;
        let Some(row) = db.users.iter_mut().find(|u| u.id == *id && u.hash.as_deref() == Some(old)) else {
            return Ok(false);
        };
        row.hash = Some(new.to_owned());
        Ok(true)
    }
    async fn set_state(&self, id: &UserId, change: UserStateChange, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let row = db.user_row(id)?;
        row.state = change.target();
        let owner = row.org_id.clone();
        db.log(&format!("user/{id}"), change.event_type());
        Ok(details(2, owner.as_str()))
    }
    async fn delete(&self, id: &UserId, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        db.users.retain(|u| u.id != *id);
        db.log(&format!("user/{id}"), "user.removed");
        Ok(details(3, "x"))
    }
}

#[async_trait]
impl TokenRepo for Fake {
    async fn create(&self, token: &NewTokenRecord, _actor: &str) -> Result<PersonalAccessToken> {
        Ok(self.db.lock().await.create_token(token))
    }
    async fn find_by_hash(&self, token_hash: &str) -> Result<Option<TokenOwner>> {
        let db = self.db.lock().await;
        let Some((pat, _)) = db.tokens.iter().find(|(_, h)| h == token_hash) else {
            return Ok(None);
        };
        let Some(row) = db.users.iter().find(|u| u.id == pat.user_id) else {
            return Ok(None);
        };
        let user = db.user(row);
        let org_state = db.orgs.iter().find(|o| o.id == user.org_id).map_or(OrgState::Inactive, |o| o.state);
        Ok(Some(TokenOwner { token: pat.clone(), user, org_state }))
    }
    async fn list(&self, _user: &UserId, q: &ListQuery) -> Result<Page<PersonalAccessToken>> {
        Ok(page(Vec::new(), q))
    }
    async fn delete(&self, _user: &UserId, _token: &TokenId, _actor: &str) -> Result<Details> {
        Err(Error::internal("FAKE", "not needed"))
    }
}

#[async_trait]
impl MemberRepo for Fake {
    async fn set(&self, user: &UserId, scope: &MemberScope, roles: &[Role], _actor: &str) -> Result<Details> {
        Ok(self.db.lock().await.set_member(user, scope, roles))
    }
    async fn remove(&self, _user: &UserId, _scope: &MemberScope, _actor: &str) -> Result<Details> {
        Err(Error::internal("FAKE", "not needed"))
    }
    async fn list(&self, scope: &MemberScope, q: &ListQuery) -> Result<Page<Member>> {
        Ok(page(self.db.lock().await.members.iter().filter(|m| m.scope == *scope).cloned().collect(), q))
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
        let mut db = self.db.lock().await;
        db.instance = true;
        db.create_org(&record.org);
        db.create_user(&record.admin, None);
        db.set_member(&record.admin.id, &MemberScope::Instance, &record.admin_roles);
        db.create_token(&record.token);
        Ok(())
    }
}

#[async_trait]
impl SessionRepo for Fake {
    async fn create(&self, record: &NewSessionRecord, _actor: &str) -> Result<Session> {
        let mut db = self.db.lock().await;
        let session = Session {
            id: record.id.clone(),
            creator: record.creator.clone(),
            user_agent: record.user_agent.clone(),
            factors: record.state.factors.clone(),
            metadata: record.state.metadata.clone(),
            expiration: record.state.expiration,
            terminated: false,
            details: details(record.events.len() as u64, INSTANCE_OWNER),
        };
        db.store_challenges(&record.id, &record.challenges);
        db.log_all(&record.id, &record.events);
        db.sessions.push(SessionRow {
            session: session.clone(),
            token_hash: record.token_hash.clone(),
            legacy_token_hash: None,
        });
        Ok(session)
    }
    async fn get(&self, id: &SessionId) -> Result<Option<StoredSession>> {
        let db = self.db.lock().await;
        Ok(db
            .sessions
            .iter()
            .find(|r| r.session.id == *id)
            .map(|r| StoredSession { session: r.session.clone(), token_hash: r.token_hash.clone() }))
    }
    async fn get_by_legacy_token_hash(&self, token_hash: &str) -> Result<Option<Session>> {
        let mut db = self.db.lock().await;
        db.legacy_lookups += 1;
        Ok(db.sessions.iter().find(|r| r.legacy_token_hash.as_deref() == Some(token_hash)).map(|r| r.session.clone()))
    }
    async fn apply(&self, id: &SessionId, read: &Details, update: &SessionUpdate, _actor: &str) -> Result<Session> {
        let expected_sequence = read.sequence;
        let mut db = self.db.lock().await;
        let row = db.sessions.iter_mut().find(|r| r.session.id == *id).ok_or_else(|| not_found(SESSION_NOT_FOUND))?;
        if row.session.terminated {
            return Err(Error::new(ErrorKind::FailedPrecondition, SESSION_TERMINATED, "terminated"));
        }
        if row.session.details.sequence != expected_sequence {
            return Err(Error::new(ErrorKind::Aborted, "FAKE-aborted", "concurrent change"));
        }
        row.session.factors = update.state.factors.clone();
        row.session.metadata = update.state.metadata.clone();
        row.session.expiration = update.state.expiration;
        row.session.details.sequence += update.events.len() as u64;
        row.session.details.change_date = Utc::now();
        row.token_hash = update.token_hash.clone();
        row.legacy_token_hash = None;
        let session = row.session.clone();
        db.store_challenges(id, &update.challenges);
        db.log_all(id, &update.events);
        Ok(session)
    }
    async fn list(&self, filters: &[SessionFilter], q: &ListQuery) -> Result<Page<Session>> {
        let db = self.db.lock().await;
        let mut items: Vec<Session> = db
            .sessions
            .iter()
            .map(|r| r.session.clone())
            .filter(|s| !s.terminated && filters.iter().all(|f| db.session_matches(s, f)))
            .collect();
        if !q.asc {
            items.reverse();
        }
        Ok(page(items, q))
    }
    async fn terminate(&self, id: &SessionId, _read: Option<&Details>, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let row = db.sessions.iter_mut().find(|r| r.session.id == *id).ok_or_else(|| not_found(SESSION_NOT_FOUND))?;
        if !row.session.terminated {
            row.session.terminated = true;
            row.session.details.sequence += 1;
            db.log(&format!("session/{id}"), "session.terminated");
        }
        let row = db.sessions.iter().find(|r| r.session.id == *id).ok_or_else(|| not_found(SESSION_NOT_FOUND))?;
        Ok(row.session.details.clone())
    }
    async fn terminate_all_of_user(&self, user: &UserId, _actor: &str) -> Result<u64> {
        let mut db = self.db.lock().await;
        let mut ended = Vec::new();
        for row in db.sessions.iter_mut().filter(|r| !r.session.terminated && r.session.user_id() == Some(user)) {
            row.session.terminated = true;
            row.session.details.sequence += 1;
            ended.push(row.session.id.clone());
        }
        for id in &ended {
            db.log(&format!("session/{id}"), "session.terminated");
        }
        Ok(ended.len() as u64)
    }
}

#[async_trait]
impl OtpChallengeRepo for Fake {
    async fn consume(
        &self,
        session: &SessionId,
        kind: OtpKind,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<OtpConsume> {
        let mut db = self.db.lock().await;
        let Some(row) = db.challenges.iter_mut().find(|c| c.session == *session && c.kind == kind && !c.used) else {
            return Ok(OtpConsume::Missing);
        };
        if row.expires_at <= now {
            return Ok(OtpConsume::Expired);
        }
        if row.code_hash != code_hash {
            return Ok(OtpConsume::Mismatch);
        }
        row.used = true;
        Ok(OtpConsume::Consumed)
    }
}

#[async_trait]
impl TotpRepo for Fake {
    async fn get(&self, user: &UserId) -> Result<Option<TotpRegistration>> {
        Ok(self.db.lock().await.totp.get(user).cloned())
    }
    async fn put_unverified(&self, user: &UserId, secret: &str, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        db.totp.insert(user.clone(), TotpRegistration { secret: secret.to_owned(), verified: false, last_step: 0 });
        db.log(&format!("user/{user}"), "user.totp.added");
        Ok(details(5, "x"))
    }
    async fn mark_verified(&self, user: &UserId, step: u64, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let reg = db.totp.get_mut(user).ok_or_else(|| not_found(TOTP_NOT_FOUND))?;
        reg.verified = true;
        reg.last_step = step;
        db.log(&format!("user/{user}"), "user.totp.verified");
        Ok(details(6, "x"))
    }
    async fn advance_step(&self, user: &UserId, step: u64) -> Result<bool> {
        let mut db = self.db.lock().await;
        let Some(reg) = db.totp.get_mut(user) else {
            return Ok(false);
        };
        if reg.last_step >= step {
            return Ok(false);
        }
        reg.last_step = step;
        Ok(true)
    }
    async fn remove(&self, user: &UserId, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        db.totp.remove(user).ok_or_else(|| not_found(TOTP_NOT_FOUND))?;
        db.log(&format!("user/{user}"), "user.totp.removed");
        Ok(details(7, "x"))
    }
}

#[async_trait]
impl LockoutRepo for Fake {
    async fn failed_attempts(&self, user: &UserId, kind: LockoutKind) -> Result<u32> {
        Ok(self.db.lock().await.counters.get(&(user.clone(), kind)).copied().unwrap_or(0))
    }
    async fn record_failure(&self, user: &UserId, kind: LockoutKind, max: u32) -> Result<FailureOutcome> {
        // One lock = the store's one conditional UPDATE.
        let mut db = self.db.lock().await;
        let counter = db.counters.entry((user.clone(), kind)).or_insert(0);
        if max > 0 && *counter >= max {
            return Ok(FailureOutcome { failed_attempts: *counter, locked_now: false });
        }
        *counter += 1;
        Ok(FailureOutcome { failed_attempts: *counter, locked_now: max > 0 && *counter == max })
    }
    async fn reset(&self, user: &UserId, kind: LockoutKind) -> Result<()> {
        self.db.lock().await.counters.insert((user.clone(), kind), 0);
        Ok(())
    }
}

/// A clock tests can move forward.
#[derive(Default)]
struct TestClock {
    offset_secs: AtomicI64,
}

impl TestClock {
    fn advance(&self, secs: i64) {
        self.offset_secs.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + TimeDelta::seconds(self.offset_secs.load(Ordering::SeqCst))
    }
}

/// Records what would have been sent.
#[derive(Default)]
struct RecordingSender {
    sent: Mutex<Vec<(String, String, Option<String>)>>,
}

#[async_trait]
impl OtpSender for RecordingSender {
    async fn send_sms(&self, to: &str, code: &str) -> Result<()> {
        self.sent.lock().await.push((to.to_owned(), code.to_owned(), None));
        Ok(())
    }
    async fn send_email(&self, to: &str, code: &str, url: Option<&str>) -> Result<()> {
        self.sent.lock().await.push((to.to_owned(), code.to_owned(), url.map(str::to_owned)));
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------ harness

const PASSWORD: &str = "correct horse battery staple";
const MAX_PASSWORD: u32 = 5;
const MAX_OTP: u32 = 3;

struct World {
    identity: Identity,
    sessions: Sessions,
    fake: Arc<Fake>,
    clock: Arc<TestClock>,
    sender: Arc<RecordingSender>,
    admin_token: String,
    org: OrgId,
    /// IAM_LOGIN_CLIENT machine.
    client: CallContext,
    alice: User,
}

impl World {
    async fn new() -> World {
        let fake = Arc::new(Fake::default());
        let repos = Repos {
            orgs: fake.clone(),
            users: fake.clone(),
            tokens: fake.clone(),
            members: fake.clone(),
            instance: fake.clone(),
        };
        let clock = Arc::new(TestClock::default());
        let hashing = HashingConfig { memory_kib: 64, iterations: 1, parallelism: 1, workers: 2, queue: 128 };
        let config = IdentityConfig { hashing, ..IdentityConfig::default() };
        let base = Identity::new(config, repos, clock.clone(), Arc::new(UuidV7Ids)).unwrap();
        let sender = Arc::new(RecordingSender::default());
        let session_repos = SessionRepos {
            sessions: fake.clone(),
            otp_challenges: fake.clone(),
            totp: fake.clone(),
            lockout: fake.clone(),
        };
        let session_config = SessionConfig {
            lockout: LockoutPolicy { max_password_attempts: MAX_PASSWORD, max_otp_attempts: MAX_OTP },
            ..SessionConfig::default()
        };
        let sessions = Sessions::new(
            session_config,
            session_repos,
            base.clone(),
            sender.clone(),
            clock.clone(),
            Arc::new(UuidV7Ids),
        );
        let identity =
            base.with_lifecycle_hook(Arc::new(sessions.clone())).with_session_tokens(Arc::new(sessions.clone()));
        let admin_token = identity.bootstrap().await.unwrap().unwrap();
        let admin = ctx_of(&identity, &admin_token).await;
        let org = admin.org_id.clone();
        let (_, client_token) = machine(&identity, &admin, &org, "login-client", vec![Role::IamLoginClient]).await;
        let client = ctx_of(&identity, &client_token).await;
        let alice = human(&identity, &admin, &org, "alice", Some("+41791234567")).await;
        World { identity, sessions, fake, clock, sender, admin_token, org, client, alice }
    }

    async fn admin(&self) -> CallContext {
        ctx_of(&self.identity, &self.admin_token).await
    }

    /// A session of alice checked with user + password; answers (session, token).
    async fn alice_session(&self) -> (Session, String) {
        let change = SessionChange { checks: user_and_password(&self.alice, PASSWORD), ..SessionChange::default() };
        let (session, token, _) = self.sessions.create(&self.client, change, None).await.unwrap();
        (session, token)
    }

    async fn counter(&self, user: &UserId, kind: LockoutKind) -> u32 {
        self.fake.db.lock().await.counters.get(&(user.clone(), kind)).copied().unwrap_or(0)
    }

    async fn state_of(&self, user: &UserId) -> UserState {
        self.identity.find_user(user).await.unwrap().unwrap().state
    }

    async fn session_events(&self, id: &SessionId) -> Vec<String> {
        let aggregate = format!("session/{id}");
        let db = self.fake.db.lock().await;
        db.events.iter().filter(|(a, _)| *a == aggregate).map(|(_, e)| e.clone()).collect()
    }

    /// Registers and verifies TOTP for alice; answers the secret.
    async fn alice_totp(&self) -> String {
        let admin = self.admin().await;
        let (uri, secret, _) = self.sessions.register_totp(&admin, &self.alice.id).await.unwrap();
        assert!(uri.starts_with("otpauth://totp/flowgate:alice%40"), "{uri}");
        assert!(uri.contains(&format!("secret={secret}")));
        assert!(uri.contains("issuer=flowgate"));
        let code = totp::code_at(&secret, self.clock.now()).unwrap();
        self.sessions.verify_totp_registration(&admin, &self.alice.id, &code).await.unwrap();
        secret
    }
}

async fn ctx_of(identity: &Identity, token: &str) -> CallContext {
    let principal = identity.authenticate(Some(&format!("Bearer {token}"))).await.unwrap();
    identity.call_context(principal, None).await.unwrap()
}

async fn machine(
    identity: &Identity,
    admin: &CallContext,
    org: &OrgId,
    name: &str,
    roles: Vec<Role>,
) -> (UserId, String) {
    let new = NewMachine {
        org_id: Some(org.clone()),
        user_id: None,
        username: name.to_owned(),
        name: name.to_owned(),
        description: String::new(),
    };
    let user = identity.add_machine(admin, new).await.unwrap();
    if !roles.is_empty() {
        let scope = if roles.iter().all(|r| r.is_instance_role()) {
            MemberScope::Instance
        } else {
            MemberScope::Org(org.clone())
        };
        identity.add_member(admin, &user.id, scope, roles).await.unwrap();
    }
    let (_, token) = identity.add_pat(admin, &user.id, None).await.unwrap();
    (user.id, token)
}

async fn human(identity: &Identity, admin: &CallContext, org: &OrgId, name: &str, phone: Option<&str>) -> User {
    let new = NewHuman {
        org_id: Some(org.clone()),
        user_id: None,
        username: Some(name.to_owned()),
        profile: Profile {
            given_name: "Alice".to_owned(),
            family_name: "Liddell".to_owned(),
            display_name: String::new(),
            preferred_language: "en".to_owned(),
        },
        email: Email { address: format!("{name}@example.com"), verified: true },
        phone: phone.map(|p| Phone { number: p.to_owned(), verified: true }),
        password: Some(NewPassword::Plain { password: PASSWORD.to_owned(), change_required: false }),
        idp_links: Vec::new(),
    };
    identity.add_human(admin, new).await.unwrap()
}

fn user_and_password(user: &User, password: &str) -> Checks {
    Checks {
        user: Some(UserCheck::LoginName(user.preferred_login_name.clone())),
        password: Some(password.to_owned()),
        ..Checks::default()
    }
}

fn checks(checks: Checks) -> SessionChange {
    SessionChange { checks, ..SessionChange::default() }
}

fn kind_id(e: &Error) -> (ErrorKind, String) {
    (e.kind(), e.id().to_owned())
}

fn flip_case(token: &str) -> String {
    // Flip the first letter of the secret so only the case differs (the session id stays the same).
    let (head, secret) = token.split_at(token.rfind('.').map_or(SESSION_TOKEN_PREFIX.len(), |dot| dot + 1));
    let idx = secret.find(|c: char| c.is_ascii_alphabetic()).unwrap();
    let mut chars: Vec<char> = secret.chars().collect();
    chars[idx] =
        if chars[idx].is_ascii_lowercase() { chars[idx].to_ascii_uppercase() } else { chars[idx].to_ascii_lowercase() };
    format!("{head}{}", chars.into_iter().collect::<String>())
}

/// The secret part of a split token.
fn secret_of(token: &str) -> &str {
    token.rsplit_once('.').expect("a split token").1
}

/// `token` naming session `id` instead of its own.
fn with_id(token: &str, id: &SessionId) -> String {
    format!("{SESSION_TOKEN_PREFIX}{id}.{}", secret_of(token))
}

impl World {
    /// Stores session `id` as sessions issued before tokens named their session were: its current token is
    /// a legacy-shaped one (answered), found through its legacy digest.
    async fn give_legacy_token(&self, id: &SessionId, split: &str) -> String {
        let legacy = format!("{SESSION_TOKEN_PREFIX}{}", secret_of(split));
        assert_eq!(parse_session_token(&legacy), Some(SessionTokenShape::Legacy));
        let mut db = self.fake.db.lock().await;
        let row = db.sessions.iter_mut().find(|r| r.session.id == *id).expect("session");
        row.token_hash = session_token_hash(&legacy);
        row.legacy_token_hash = Some(row.token_hash.clone());
        legacy
    }

    async fn legacy_lookups(&self) -> usize {
        self.fake.db.lock().await.legacy_lookups
    }
}

// ------------------------------------------------------------------------------------------ tests

#[tokio::test]
async fn create_checks_user_and_password_and_answers_a_token() {
    let w = World::new().await;
    let agent = UserAgent { fingerprint_id: Some("fp-1".to_owned()), ..UserAgent::default() };
    let change = checks(user_and_password(&w.alice, PASSWORD));
    let (session, token, challenges) = w.sessions.create(&w.client, change, Some(agent.clone())).await.unwrap();
    // `fgs_<session id>.<43 base64url characters>`
    assert_eq!(parse_session_token(&token), Some(SessionTokenShape::Split { id: session.id.as_str() }));
    assert!(token.starts_with(&format!("fgs_{}.", session.id)) && is_well_formed_session_token(&token));
    assert_eq!(token.len(), "fgs_".len() + session.id.as_str().len() + 1 + 43);
    assert_eq!(challenges.otp_sms, None);
    let user = session.factors.user.clone().unwrap();
    assert_eq!(user.id, w.alice.id);
    assert_eq!(user.login_name, w.alice.preferred_login_name);
    assert_eq!(user.display_name, "Alice Liddell");
    assert_eq!(user.organization_id, w.org);
    assert!(session.factors.password.is_some());
    assert!(session.factors.totp.is_none());
    assert_eq!(session.user_agent, Some(agent));
    assert_eq!(session.creator, w.client.actor());
    assert_eq!(session.details.resource_owner, INSTANCE_OWNER);
    assert_eq!(session.details.sequence, 3);
    assert_eq!(
        w.session_events(&session.id).await,
        ["session.added", "session.user.checked", "session.password.checked"]
    );
    // Only the hash is stored.
    let db = w.fake.db.lock().await;
    assert_eq!(db.sessions[0].token_hash, session_token_hash(&token));
    assert_ne!(db.sessions[0].token_hash, token);
}

#[tokio::test]
async fn create_and_set_need_session_write() {
    let w = World::new().await;
    let admin = w.admin().await;
    let (_, plain) = machine(&w.identity, &admin, &w.org, "plain", vec![]).await;
    let plain = ctx_of(&w.identity, &plain).await;
    let err = w.sessions.create(&plain, SessionChange::default(), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let (session, _) = w.alice_session().await;
    let err = w.sessions.set(&plain, &session.id, SessionChange::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
}

#[tokio::test]
async fn first_failing_check_aborts_and_nothing_is_written() {
    let w = World::new().await;
    // Wrong password before a TOTP check: the TOTP check never runs, no session is created.
    w.alice_totp().await;
    let mut c = user_and_password(&w.alice, "wrong password!");
    c.totp = Some("000000".to_owned());
    let err = w.sessions.create(&w.client, checks(c), None).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, SESSION_CREDENTIALS_INVALID.to_owned()));
    assert_eq!(err.metadata().get(FAILED_ATTEMPTS).map(String::as_str), Some("1"));
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Password).await, 1, "stored although the call failed");
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Otp).await, 0, "later checks did not run");
    assert!(w.fake.db.lock().await.sessions.is_empty());

    // On set: a correct password followed by a wrong TOTP code stores neither factor.
    let (session, token) = {
        let change = checks(Checks { user: Some(UserCheck::Id(w.alice.id.clone())), ..Checks::default() });
        let (s, t, _) = w.sessions.create(&w.client, change, None).await.unwrap();
        (s, t)
    };
    let c = Checks { password: Some(PASSWORD.to_owned()), totp: Some("000000".to_owned()), ..Checks::default() };
    let wrong = totp::code_at(&w.fake.db.lock().await.totp[&w.alice.id].secret, w.clock.now()).unwrap();
    let c = Checks { totp: Some(if wrong == "000000" { "111111".to_owned() } else { "000000".to_owned() }), ..c };
    let err = w.sessions.set(&w.client, &session.id, checks(c)).await.unwrap_err();
    assert_eq!(err.id(), SESSION_CODE_INVALID);
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Otp).await, 1);
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Password).await, 0, "the good password reset the counter");
    let now = w.sessions.get(&w.client, &session.id, Some(&token)).await.unwrap();
    assert!(now.factors.password.is_none() && now.factors.totp.is_none());
    assert_eq!(now.details.sequence, session.details.sequence, "no write");

    // IdP intents are not available; checks after them never run.
    let c = Checks {
        idp_intent: Some(("intent".to_owned(), "token".to_owned())),
        otp_sms: Some("12345678".to_owned()),
        ..Checks::default()
    };
    let err = w.sessions.set(&w.client, &session.id, checks(c)).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, SESSION_INTENT_UNAVAILABLE.to_owned()));
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Otp).await, 1);
}

#[tokio::test]
async fn checks_after_the_user_need_a_user() {
    let w = World::new().await;
    let c = Checks { password: Some(PASSWORD.to_owned()), ..Checks::default() };
    let err = w.sessions.create(&w.client, checks(c), None).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, SESSION_USER_MISSING.to_owned()));
    // A session without a user shows no factors.
    let (session, _, _) = w.sessions.create(&w.client, SessionChange::default(), None).await.unwrap();
    assert_eq!(session.factors, Factors::default());
    // The user cannot be changed once checked.
    let (session, _) = w.alice_session().await;
    let admin = w.admin().await;
    let bob = human(&w.identity, &admin, &w.org, "bob", None).await;
    let c = Checks { user: Some(UserCheck::Id(bob.id)), ..Checks::default() };
    let err = w.sessions.set(&w.client, &session.id, checks(c)).await.unwrap_err();
    assert_eq!(err.id(), SESSION_USER_MISMATCH);
}

#[tokio::test]
async fn every_change_rotates_the_token() {
    let w = World::new().await;
    let (session, first) = w.alice_session().await;
    let mut change = SessionChange::default();
    change.metadata.insert("k".to_owned(), b"v".to_vec());
    let (_, second, _) = w.sessions.set(&w.client, &session.id, change).await.unwrap();
    assert_ne!(first, second);
    let err = w.sessions.get(&w.admin().await, &session.id, Some(&first)).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::PermissionDenied, SESSION_TOKEN_INVALID.to_owned()));
    assert_eq!(w.sessions.principal_for_token(&first).await.unwrap(), None);
    assert_eq!(w.sessions.principal_for_token(&second).await.unwrap(), Some(w.alice.id.clone()));
    // An empty change still answers a new token (event session.token.rotated).
    let (_, third, _) = w.sessions.set(&w.client, &session.id, SessionChange::default()).await.unwrap();
    assert_eq!(w.sessions.principal_for_token(&second).await.unwrap(), None);
    w.sessions.get(&w.client, &session.id, Some(&third)).await.unwrap();
    assert_eq!(w.session_events(&session.id).await.last().map(String::as_str), Some("session.token.rotated"));
}

#[tokio::test]
async fn tokens_are_compared_in_full() {
    let w = World::new().await;
    let (session, token) = w.alice_session().await;
    let admin = w.admin().await;
    let variants = [
        token[..token.len() - 1].to_owned(),
        format!("{token}A"),
        flip_case(&token),
        token.replacen("fgs_", "FGS_", 1),
        token[..20].to_owned(),
    ];
    for bad in &variants {
        assert_ne!(bad, &token);
        let err = w.sessions.get(&admin, &session.id, Some(bad)).await.unwrap_err();
        assert_eq!(kind_id(&err), (ErrorKind::PermissionDenied, SESSION_TOKEN_INVALID.to_owned()), "{bad}");
        assert_eq!(w.sessions.principal_for_token(bad).await.unwrap(), None, "{bad}");
        let err = w.identity.authenticate(Some(&format!("Bearer {bad}"))).await.unwrap_err();
        assert_eq!(kind_id(&err), (ErrorKind::Unauthenticated, AUTH_TOKEN_INVALID.to_owned()), "{bad}");
    }
    // Another session's token does not open this one.
    let (_, other) = w.alice_session().await;
    let err = w.sessions.get(&admin, &session.id, Some(&other)).await.unwrap_err();
    assert_eq!(err.id(), SESSION_TOKEN_INVALID);
}

#[tokio::test]
async fn session_tokens_are_bearer_tokens_of_their_user() {
    let w = World::new().await;
    let (session, token) = w.alice_session().await;
    let principal = w.identity.authenticate(Some(&format!("Bearer {token}"))).await.unwrap();
    assert_eq!(principal.user_id, w.alice.id);
    // A session without a checked user is no bearer token.
    let (_, anonymous, _) = w.sessions.create(&w.client, SessionChange::default(), None).await.unwrap();
    assert!(w.identity.authenticate(Some(&format!("Bearer {anonymous}"))).await.is_err());
    // Terminated ⇒ Unauthenticated.
    w.sessions.delete(&w.client, &session.id, None).await.unwrap();
    let err = w.identity.authenticate(Some(&format!("Bearer {token}"))).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::Unauthenticated, AUTH_TOKEN_INVALID.to_owned()));
    // Inactive user ⇒ Unauthenticated (the session is also terminated by the hook).
    let (_, token) = w.alice_session().await;
    w.identity.deactivate_user(&w.admin().await, &w.alice.id).await.unwrap();
    let err = w.identity.authenticate(Some(&format!("Bearer {token}"))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
}

#[tokio::test]
async fn a_split_bearer_token_finds_its_session_by_id() {
    let w = World::new().await;
    let (_, token) = w.alice_session().await;
    assert_eq!(w.sessions.principal_for_token(&token).await.unwrap(), Some(w.alice.id.clone()));
    let principal = w.identity.authenticate(Some(&format!("Bearer {token}"))).await.unwrap();
    assert_eq!(principal.user_id, w.alice.id);
    assert_eq!(w.legacy_lookups().await, 0, "read by id, never by digest");
    // A well-formed token naming no session is refused like any other.
    let unknown = with_id(&token, &SessionId::from("no-such-session"));
    assert_eq!(w.sessions.principal_for_token(&unknown).await.unwrap(), None);
    assert_eq!(w.legacy_lookups().await, 0);
}

#[tokio::test]
async fn a_split_token_naming_another_session_fails() {
    let w = World::new().await;
    let (a, token_a) = w.alice_session().await;
    let (b, token_b) = w.alice_session().await;
    let admin = w.admin().await;
    // A's secret with B's id: B exists and is alice's, but its digest is of another token.
    for (bad, id) in [(with_id(&token_a, &b.id), &b.id), (with_id(&token_b, &a.id), &a.id)] {
        assert_eq!(w.sessions.principal_for_token(&bad).await.unwrap(), None, "{bad}");
        let err = w.identity.authenticate(Some(&format!("Bearer {bad}"))).await.unwrap_err();
        assert_eq!(kind_id(&err), (ErrorKind::Unauthenticated, AUTH_TOKEN_INVALID.to_owned()), "{bad}");
        let err = w.sessions.get(&admin, id, Some(&bad)).await.unwrap_err();
        assert_eq!(kind_id(&err), (ErrorKind::PermissionDenied, SESSION_TOKEN_INVALID.to_owned()), "{bad}");
    }
    // The tokens themselves still work.
    assert_eq!(w.sessions.principal_for_token(&token_a).await.unwrap(), Some(w.alice.id.clone()));
    assert_eq!(w.sessions.principal_for_token(&token_b).await.unwrap(), Some(w.alice.id.clone()));
}

#[tokio::test]
async fn a_legacy_token_works_until_the_session_is_set() {
    let w = World::new().await;
    let (session, split) = w.alice_session().await;
    let legacy = w.give_legacy_token(&session.id, &split).await;
    let admin = w.admin().await;

    assert_eq!(w.sessions.principal_for_token(&legacy).await.unwrap(), Some(w.alice.id.clone()));
    assert_eq!(w.legacy_lookups().await, 1, "found by its digest");
    let principal = w.identity.authenticate(Some(&format!("Bearer {legacy}"))).await.unwrap();
    assert_eq!(principal.user_id, w.alice.id);
    w.sessions.get(&admin, &session.id, Some(&legacy)).await.unwrap();
    // The split token issued before the row was rewritten is not the session's token any more.
    assert_eq!(w.sessions.principal_for_token(&split).await.unwrap(), None);
    for bad in [format!("{legacy}A"), legacy[..legacy.len() - 1].to_owned(), flip_case(&legacy)] {
        assert_eq!(w.sessions.principal_for_token(&bad).await.unwrap(), None, "{bad}");
    }

    // A change rotates it out: the new token is a split one, the legacy one is refused everywhere.
    let (_, rotated, _) = w.sessions.set(&w.client, &session.id, SessionChange::default()).await.unwrap();
    assert_eq!(parse_session_token(&rotated), Some(SessionTokenShape::Split { id: session.id.as_str() }));
    assert_eq!(w.sessions.principal_for_token(&legacy).await.unwrap(), None);
    let err = w.identity.authenticate(Some(&format!("Bearer {legacy}"))).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::Unauthenticated, AUTH_TOKEN_INVALID.to_owned()));
    let err = w.sessions.get(&admin, &session.id, Some(&legacy)).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::PermissionDenied, SESSION_TOKEN_INVALID.to_owned()));
    assert_eq!(w.sessions.principal_for_token(&rotated).await.unwrap(), Some(w.alice.id.clone()));
}

#[tokio::test]
async fn authorize_refuses_a_token_of_another_session() {
    let w = World::new().await;
    let (a, token_a) = w.alice_session().await;
    let (b, _) = w.alice_session().await;
    let (_, plain) = machine(&w.identity, &w.admin().await, &w.org, "plain", vec![]).await;
    let plain = ctx_of(&w.identity, &plain).await;
    let err = w.sessions.get(&plain, &b.id, Some(&token_a)).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::PermissionDenied, SESSION_TOKEN_INVALID.to_owned()));
    let err = w.sessions.delete(&plain, &b.id, Some(&token_a)).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::PermissionDenied, SESSION_TOKEN_INVALID.to_owned()));
    // Even were B's stored digest that of A's token, A's token names A and does not open B.
    w.fake.db.lock().await.sessions.iter_mut().find(|r| r.session.id == b.id).unwrap().token_hash =
        session_token_hash(&token_a);
    let err = w.sessions.get(&plain, &b.id, Some(&token_a)).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::PermissionDenied, SESSION_TOKEN_INVALID.to_owned()));
    assert_eq!(w.sessions.principal_for_token(&token_a).await.unwrap(), Some(w.alice.id.clone()));
    w.sessions.get(&plain, &a.id, Some(&token_a)).await.unwrap();
}

#[tokio::test]
async fn permission_matrix_for_get_and_delete() {
    let w = World::new().await;
    let admin = w.admin().await;
    let (session, token) = w.alice_session().await;
    let other_org = w.identity.add_org(&admin, "Other").await.unwrap().id;
    let (_, plain) = machine(&w.identity, &admin, &w.org, "plain", vec![]).await;
    let plain = ctx_of(&w.identity, &plain).await;
    let (_, owner_here) = machine(&w.identity, &admin, &w.org, "owner-here", vec![Role::OrgOwner]).await;
    let owner_here = ctx_of(&w.identity, &owner_here).await;
    let (_, owner_there) = machine(&w.identity, &admin, &other_org, "owner-there", vec![Role::OrgOwner]).await;
    let owner_there = ctx_of(&w.identity, &owner_there).await;
    let (_, manager) = machine(&w.identity, &admin, &w.org, "manager", vec![Role::OrgUserManager]).await;
    let manager = ctx_of(&w.identity, &manager).await;
    let alice = ctx_of(&w.identity, &token).await;

    // Allowed: creator, the session's user, session.read in the user's org, instance roles, the token.
    for (who, ctx) in [("creator", &w.client), ("user", &alice), ("org owner", &owner_here), ("admin", &admin)] {
        assert!(w.sessions.get(ctx, &session.id, None).await.is_ok(), "{who}");
    }
    assert!(w.sessions.get(&plain, &session.id, Some(&token)).await.is_ok(), "token");
    // Denied: no role, a role in another org, a role without session.read.
    for (who, ctx) in [("plain", &plain), ("other org", &owner_there), ("user manager", &manager)] {
        let err = w.sessions.get(ctx, &session.id, None).await.unwrap_err();
        assert_eq!(kind_id(&err), (ErrorKind::PermissionDenied, SESSION_DENIED.to_owned()), "{who}");
        let err = w.sessions.delete(ctx, &session.id, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{who}");
    }
    // A wrong token is refused even for callers with the permission.
    let err = w.sessions.get(&admin, &session.id, Some("fgs_wrong")).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::PermissionDenied, SESSION_TOKEN_INVALID.to_owned()));
    let err = w.sessions.delete(&admin, &session.id, Some("fgs_wrong")).await.unwrap_err();
    assert_eq!(err.id(), SESSION_TOKEN_INVALID);

    // Delete with the token, by the user, by an org owner.
    w.sessions.delete(&plain, &session.id, Some(&token)).await.unwrap();
    let (s2, _) = w.alice_session().await;
    w.sessions.delete(&owner_here, &s2.id, None).await.unwrap();
    let (s3, _) = w.alice_session().await;
    w.sessions.delete(&alice, &s3.id, None).await.unwrap();
}

#[tokio::test]
async fn delete_is_idempotent_and_terminated_sessions_are_gone() {
    let w = World::new().await;
    let (session, token) = w.alice_session().await;
    let first = w.sessions.delete(&w.client, &session.id, None).await.unwrap();
    let again = w.sessions.delete(&w.client, &session.id, None).await.unwrap();
    assert_eq!(first.sequence, again.sequence, "no second event");
    let err = w.sessions.get(&w.client, &session.id, None).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::NotFound, SESSION_NOT_FOUND.to_owned()));
    let err = w.sessions.get(&w.client, &session.id, Some(&token)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = w.sessions.set(&w.client, &session.id, SessionChange::default()).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, SESSION_TERMINATED.to_owned()));
    let err = w.sessions.delete(&w.client, &SessionId::from("never-existed"), None).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::NotFound, SESSION_NOT_FOUND.to_owned()));
    let err = w.sessions.get(&w.client, &SessionId::from("never-existed"), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(w.sessions.list(&w.client, vec![], ListQuery::default(), true).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn lifetime_sets_expiration_and_expired_sessions_refuse_checks() {
    let w = World::new().await;
    for bad in [TimeDelta::zero(), TimeDelta::seconds(-5)] {
        let change = SessionChange { lifetime: Some(bad), ..SessionChange::default() };
        let err = w.sessions.create(&w.client, change, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(err.violations()[0].field, "lifetime");
    }
    let before = w.clock.now();
    let change = SessionChange {
        checks: user_and_password(&w.alice, PASSWORD),
        lifetime: Some(TimeDelta::seconds(60)),
        ..SessionChange::default()
    };
    let (session, _, _) = w.sessions.create(&w.client, change, None).await.unwrap();
    let expiration = session.expiration.unwrap();
    assert!(expiration >= before + TimeDelta::seconds(60) && expiration <= w.clock.now() + TimeDelta::seconds(60));
    assert!(w.session_events(&session.id).await.contains(&"session.lifetime.set".to_owned()));

    // Refresh: a later set counts from its own time.
    w.clock.advance(30);
    let change = SessionChange { lifetime: Some(TimeDelta::seconds(60)), ..SessionChange::default() };
    let (refreshed, token, _) = w.sessions.set(&w.client, &session.id, change).await.unwrap();
    assert!(refreshed.expiration.unwrap() >= expiration + TimeDelta::seconds(29));

    w.clock.advance(61);
    let err = w.sessions.set(&w.client, &session.id, checks(user_and_password(&w.alice, PASSWORD))).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, SESSION_EXPIRED.to_owned()));
    assert_eq!(w.sessions.principal_for_token(&token).await.unwrap(), None, "no bearer");
    assert!(w.identity.authenticate(Some(&format!("Bearer {token}"))).await.is_err());
    // Still readable, listed and deletable.
    w.sessions.get(&w.client, &session.id, Some(&token)).await.unwrap();
    let listed = w.sessions.list(&w.client, vec![], ListQuery::default(), true).await.unwrap();
    assert_eq!(listed.total, 1);
    w.sessions.delete(&w.client, &session.id, Some(&token)).await.unwrap();
}

#[tokio::test]
async fn metadata_is_set_overwritten_and_deleted() {
    let w = World::new().await;
    let mut change = SessionChange::default();
    change.metadata.insert("a".to_owned(), b"1".to_vec());
    change.metadata.insert("b".to_owned(), b"2".to_vec());
    let (session, _, _) = w.sessions.create(&w.client, change, None).await.unwrap();
    assert_eq!(session.metadata.len(), 2);
    let mut change = SessionChange::default();
    change.metadata.insert("a".to_owned(), Vec::new());
    change.metadata.insert("b".to_owned(), b"3".to_vec());
    change.metadata.insert("c".to_owned(), b"4".to_vec());
    let (session, _, _) = w.sessions.set(&w.client, &session.id, change).await.unwrap();
    assert_eq!(session.metadata, BTreeMap::from([("b".to_owned(), b"3".to_vec()), ("c".to_owned(), b"4".to_vec())]));
    for (key, value) in [
        (String::new(), b"x".to_vec()),
        ("k".repeat(201), b"x".to_vec()),
        ("big".to_owned(), vec![7u8; MAX_METADATA_BYTES + 1]),
    ] {
        let mut change = SessionChange::default();
        change.metadata.insert(key, value);
        let err = w.sessions.set(&w.client, &session.id, change).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(err.violations()[0].field, "metadata");
    }
    let mut change = SessionChange::default();
    change.metadata.insert("k".repeat(200), vec![1u8; MAX_METADATA_BYTES - 2]);
    w.sessions.set(&w.client, &session.id, change).await.unwrap();
}

#[tokio::test]
async fn otp_codes_work_once_and_expire() {
    let w = World::new().await;
    let (session, _) = w.alice_session().await;
    let ask = |kind: OtpKind, delivery: OtpDelivery| SessionChange {
        challenges: match kind {
            OtpKind::Sms => ChallengeRequest { otp_sms: Some(delivery), otp_email: None },
            OtpKind::Email => ChallengeRequest { otp_sms: None, otp_email: Some(delivery) },
        },
        ..SessionChange::default()
    };
    let (_, _, challenges) =
        w.sessions.set(&w.client, &session.id, ask(OtpKind::Sms, OtpDelivery::Return)).await.unwrap();
    let code = challenges.otp_sms.unwrap();
    assert!(code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()));
    {
        let db = w.fake.db.lock().await;
        assert_eq!(db.challenges[0].code_hash, session_token_hash(&code), "stored hashed");
        assert!(db.challenges[0].expires_at <= w.clock.now() + TimeDelta::minutes(5));
    }
    let wrong = if code == "00000000" { "11111111" } else { "00000000" };
    let err = w
        .sessions
        .set(&w.client, &session.id, checks(Checks { otp_sms: Some(wrong.to_owned()), ..Checks::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.id(), SESSION_CODE_INVALID);
    assert_eq!(err.metadata().get(FAILED_ATTEMPTS).map(String::as_str), Some("1"));
    let sms = checks(Checks { otp_sms: Some(code.clone()), ..Checks::default() });
    let (updated, _, _) = w.sessions.set(&w.client, &session.id, sms.clone()).await.unwrap();
    assert!(updated.factors.otp_sms.is_some());
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Otp).await, 0, "success resets");
    let err = w.sessions.set(&w.client, &session.id, sms).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, SESSION_OTP_MISSING.to_owned()), "single use");

    // E-mail, sent with a link; expired after five minutes.
    let template = "https://login.example.com/otp?code={{.Code}}&user={{.UserID}}&session={{.SessionID}}";
    let send = OtpDelivery::Send { url_template: Some(template.to_owned()) };
    let (_, _, challenges) = w.sessions.set(&w.client, &session.id, ask(OtpKind::Email, send)).await.unwrap();
    assert_eq!(challenges.otp_email, None, "sent, not returned");
    let (to, code, url) = w.sender.sent.lock().await.last().cloned().unwrap();
    assert_eq!(to, "alice@example.com");
    assert_eq!(
        url.as_deref(),
        Some(format!("https://login.example.com/otp?code={code}&user={}&session={}", w.alice.id, session.id).as_str())
    );
    w.clock.advance(301);
    let email = checks(Checks { otp_email: Some(code), ..Checks::default() });
    let err = w.sessions.set(&w.client, &session.id, email).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, SESSION_OTP_EXPIRED.to_owned()));

    // SMS sent to the user's phone; a user without a phone cannot get one.
    w.sessions.set(&w.client, &session.id, ask(OtpKind::Sms, OtpDelivery::Send { url_template: None })).await.unwrap();
    assert_eq!(w.sender.sent.lock().await.last().unwrap().0, "+41791234567");
    let admin = w.admin().await;
    let bob = human(&w.identity, &admin, &w.org, "bob", None).await;
    let change = SessionChange {
        checks: user_and_password(&bob, PASSWORD),
        challenges: ChallengeRequest { otp_sms: Some(OtpDelivery::Send { url_template: None }), otp_email: None },
        ..SessionChange::default()
    };
    let err = w.sessions.create(&w.client, change, None).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, SESSION_OTP_UNAVAILABLE.to_owned()));
    // Challenges need a checked user.
    let err = w.sessions.create(&w.client, ask(OtpKind::Email, OtpDelivery::Return), None).await.unwrap_err();
    assert_eq!(err.id(), SESSION_USER_MISSING);
}

#[tokio::test]
async fn unconfigured_sender_fails_with_failed_precondition() {
    let w = World::new().await;
    let repos = SessionRepos {
        sessions: w.fake.clone(),
        otp_challenges: w.fake.clone(),
        totp: w.fake.clone(),
        lockout: w.fake.clone(),
    };
    let sessions = Sessions::new(
        SessionConfig::default(),
        repos,
        w.identity.clone(),
        Arc::new(UnconfiguredOtpSender),
        w.clock.clone(),
        Arc::new(UuidV7Ids),
    );
    let change = SessionChange {
        checks: user_and_password(&w.alice, PASSWORD),
        challenges: ChallengeRequest { otp_sms: None, otp_email: Some(OtpDelivery::Send { url_template: None }) },
        ..SessionChange::default()
    };
    let err = sessions.create(&w.client, change, None).await.unwrap_err();
    assert_eq!(
        kind_id(&err),
        (ErrorKind::FailedPrecondition, flowgate_core::session::ports::OTP_SENDER_MISSING.to_owned())
    );
    assert!(err.message().contains("smtp"));
}

#[tokio::test]
async fn totp_registration_and_check() {
    let w = World::new().await;
    let (session, _) = w.alice_session().await;
    let totp_check = |code: &str| checks(Checks { totp: Some(code.to_owned()), ..Checks::default() });
    // Not registered yet.
    let err = w.sessions.set(&w.client, &session.id, totp_check("123456")).await.unwrap_err();
    assert_eq!(err.id(), SESSION_TOTP_MISSING);

    // Registration: own user or user.credential.write; verify with a wrong code first.
    let admin = w.admin().await;
    let (_, secret, _) = w.sessions.register_totp(&admin, &w.alice.id).await.unwrap();
    let err = w.sessions.set(&w.client, &session.id, totp_check("123456")).await.unwrap_err();
    assert_eq!(err.id(), SESSION_TOTP_MISSING, "unverified registrations do not count");
    let good = totp::code_at(&secret, w.clock.now()).unwrap();
    let bad = if good == "000000" { "111111" } else { "000000" };
    let err = w.sessions.verify_totp_registration(&admin, &w.alice.id, bad).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::InvalidArgument, TOTP_CODE_INVALID.to_owned()));
    assert_eq!(err.violations()[0].field, "code");
    w.sessions.verify_totp_registration(&admin, &w.alice.id, &good).await.unwrap();
    let err = w.sessions.register_totp(&admin, &w.alice.id).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::AlreadyExists, TOTP_EXISTS.to_owned()));
    let (_, plain) = machine(&w.identity, &admin, &w.org, "plain", vec![]).await;
    let plain = ctx_of(&w.identity, &plain).await;
    assert_eq!(w.sessions.remove_totp(&plain, &w.alice.id).await.unwrap_err().kind(), ErrorKind::PermissionDenied);

    // Codes of 5 or 7 digits are malformed.
    for malformed in ["12345", "1234567", "12a456"] {
        let err = w.sessions.set(&w.client, &session.id, totp_check(malformed)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{malformed}");
        assert_eq!(err.violations()[0].field, "checks.totp.code");
    }
    // The code of the next step (clock drift) works; the registration's own step was used already.
    w.clock.advance(30);
    let now_code = totp::code_at(&secret, w.clock.now()).unwrap();
    let err = w.sessions.set(&w.client, &session.id, totp_check(bad_code(&now_code))).await.unwrap_err();
    assert_eq!(err.id(), SESSION_CODE_INVALID);
    assert_eq!(err.metadata().get(FAILED_ATTEMPTS).map(String::as_str), Some("1"));
    let (updated, _, _) = w.sessions.set(&w.client, &session.id, totp_check(&now_code)).await.unwrap();
    assert!(updated.factors.totp.is_some());
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Otp).await, 0);
    // A replay of the same code is refused.
    let err = w.sessions.set(&w.client, &session.id, totp_check(&now_code)).await.unwrap_err();
    assert_eq!(err.id(), SESSION_CODE_INVALID);

    w.sessions.remove_totp(&admin, &w.alice.id).await.unwrap();
    let err = w.sessions.remove_totp(&admin, &w.alice.id).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::NotFound, TOTP_NOT_FOUND.to_owned()));
}

fn bad_code(good: &str) -> &'static str {
    if good == "000000" { "111111" } else { "000000" }
}

#[tokio::test]
async fn totp_and_otp_share_one_counter_that_locks() {
    let w = World::new().await;
    let secret = w.alice_totp().await;
    let (session, _) = w.alice_session().await;
    let (_, _, challenges) = w
        .sessions
        .set(
            &w.client,
            &session.id,
            SessionChange {
                challenges: ChallengeRequest { otp_sms: Some(OtpDelivery::Return), otp_email: None },
                ..SessionChange::default()
            },
        )
        .await
        .unwrap();
    let sms = challenges.otp_sms.unwrap();
    let totp_now = totp::code_at(&secret, w.clock.now()).unwrap();
    let wrong_sms = if sms == "00000000" { "11111111" } else { "00000000" };
    let attempts = [
        Checks { totp: Some(bad_code(&totp_now).to_owned()), ..Checks::default() },
        Checks { otp_sms: Some(wrong_sms.to_owned()), ..Checks::default() },
        Checks { totp: Some(bad_code(&totp_now).to_owned()), ..Checks::default() },
    ];
    for (i, c) in attempts.into_iter().enumerate() {
        let err = w.sessions.set(&w.client, &session.id, checks(c)).await.unwrap_err();
        assert_eq!(err.metadata().get(FAILED_ATTEMPTS), Some(&(i + 1).to_string()));
    }
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Otp).await, MAX_OTP);
    assert_eq!(w.state_of(&w.alice.id).await, UserState::Locked);
    // Locked users fail every check with the uniform error, even the right password.
    let err = w.sessions.create(&w.client, checks(user_and_password(&w.alice, PASSWORD)), None).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, SESSION_CREDENTIALS_INVALID.to_owned()));
    // Locking ended the user's sessions.
    assert_eq!(w.sessions.get(&w.client, &session.id, None).await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_wrong_passwords_count_exactly_the_limit() {
    let w = World::new().await;
    let (session, _, _) = w
        .sessions
        .create(&w.client, checks(Checks { user: Some(UserCheck::Id(w.alice.id.clone())), ..Checks::default() }), None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let sessions = w.sessions.clone();
        let client = w.client.clone();
        let id = session.id.clone();
        tasks.push(tokio::spawn(async move {
            let c = Checks { password: Some(format!("wrong password {i}")), ..Checks::default() };
            sessions.set(&client, &id, checks(c)).await
        }));
    }
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        // Locking ends the user's sessions, so attempts that arrive after the lock find the session
        // terminated; every other attempt gets the uniform credentials error.
        if err.id() == "SESSION-terminated" {
            assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
            continue;
        }
        assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, SESSION_CREDENTIALS_INVALID.to_owned()));
        assert_eq!(err.message(), CREDENTIALS_MESSAGE);
    }
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Password).await, MAX_PASSWORD);
    assert_eq!(w.state_of(&w.alice.id).await, UserState::Locked);
    let locked = w.fake.db.lock().await.events.iter().filter(|(_, e)| e == "user.locked").count();
    assert_eq!(locked, 1, "locked exactly once");
    let err = w.sessions.create(&w.client, checks(user_and_password(&w.alice, PASSWORD)), None).await.unwrap_err();
    assert_eq!(err.id(), SESSION_CREDENTIALS_INVALID);
}

#[tokio::test]
async fn unknown_user_wrong_password_and_locked_user_look_the_same() {
    let w = World::new().await;
    let unknown = Checks {
        user: Some(UserCheck::LoginName("nobody@flowgate.localhost".to_owned())),
        password: Some(PASSWORD.to_owned()),
        ..Checks::default()
    };
    let e_unknown = w.sessions.create(&w.client, checks(unknown), None).await.unwrap_err();
    let e_unknown_id = w
        .sessions
        .create(&w.client, checks(Checks { user: Some(UserCheck::Id("nope".into())), ..Checks::default() }), None)
        .await
        .unwrap_err();
    let e_wrong = w.sessions.create(&w.client, checks(user_and_password(&w.alice, "nope nope")), None).await;
    let e_wrong = e_wrong.unwrap_err();
    let admin = w.admin().await;
    let carol = human(&w.identity, &admin, &w.org, "carol", None).await;
    w.identity.lock_user(&admin, &carol.id).await.unwrap();
    let e_locked = w.sessions.create(&w.client, checks(user_and_password(&carol, PASSWORD)), None).await.unwrap_err();
    let dave = human(&w.identity, &admin, &w.org, "dave", None).await;
    w.identity.deactivate_user(&admin, &dave.id).await.unwrap();
    let e_inactive = w.sessions.create(&w.client, checks(user_and_password(&dave, PASSWORD)), None).await.unwrap_err();
    for e in [&e_unknown, &e_unknown_id, &e_wrong, &e_locked, &e_inactive] {
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert_eq!(e.id(), SESSION_CREDENTIALS_INVALID);
        assert_eq!(e.message(), CREDENTIALS_MESSAGE);
    }
    assert_eq!(e_wrong.metadata().get(FAILED_ATTEMPTS).map(String::as_str), Some("1"));
    assert!(e_unknown.metadata().is_empty());
    assert!(e_locked.metadata().is_empty());
}

#[tokio::test]
async fn a_user_changed_here_is_seen_by_the_next_check_at_once() {
    // Sign-in checks remember their users; every change made through this process must show at once.
    let w = World::new().await;
    let admin = w.admin().await;
    let by_name =
        |name: &str| checks(Checks { user: Some(UserCheck::LoginName(name.to_owned())), ..Checks::default() });
    let by_id = || checks(Checks { user: Some(UserCheck::Id(w.alice.id.clone())), ..Checks::default() });
    let old_name = w.alice.preferred_login_name.clone();
    w.sessions.create(&w.client, by_name(&old_name), None).await.unwrap();
    w.sessions.create(&w.client, by_id(), None).await.unwrap();

    let rename = HumanUpdate { username: Some("alicia".to_owned()), ..HumanUpdate::default() };
    w.identity.update_human(&admin, &w.alice.id, rename).await.unwrap();
    let err = w.sessions.create(&w.client, by_name(&old_name), None).await.unwrap_err();
    assert_eq!(err.id(), SESSION_CREDENTIALS_INVALID, "the old name names nobody any more");
    let (session, _, _) = w.sessions.create(&w.client, by_id(), None).await.unwrap();
    let new_name = session.factors.user.expect("user factor").login_name;
    assert!(new_name.starts_with("alicia@"), "{new_name}");
    w.sessions.create(&w.client, by_name(&new_name), None).await.unwrap();

    w.identity.lock_user(&admin, &w.alice.id).await.unwrap();
    for change in [by_name(&new_name), by_id()] {
        let err = w.sessions.create(&w.client, change, None).await.unwrap_err();
        assert_eq!(err.id(), SESSION_CREDENTIALS_INVALID, "a locked user cannot sign in");
    }
    w.identity.unlock_user(&admin, &w.alice.id).await.unwrap();
    w.sessions.create(&w.client, by_name(&new_name), None).await.unwrap();
}

#[tokio::test]
async fn a_successful_password_resets_the_counter() {
    let w = World::new().await;
    for _ in 0..MAX_PASSWORD - 1 {
        w.sessions.create(&w.client, checks(user_and_password(&w.alice, "wrong password")), None).await.unwrap_err();
    }
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Password).await, MAX_PASSWORD - 1);
    w.alice_session().await;
    assert_eq!(w.counter(&w.alice.id, LockoutKind::Password).await, 0);
    let err =
        w.sessions.create(&w.client, checks(user_and_password(&w.alice, "wrong password")), None).await.unwrap_err();
    assert_eq!(err.metadata().get(FAILED_ATTEMPTS).map(String::as_str), Some("1"));
    assert_eq!(w.state_of(&w.alice.id).await, UserState::Active);
}

#[tokio::test]
async fn disabling_a_user_terminates_its_sessions() {
    let w = World::new().await;
    let admin = w.admin().await;
    let (s1, _) = w.alice_session().await;
    let (s2, _) = w.alice_session().await;
    let bob = human(&w.identity, &admin, &w.org, "bob", None).await;
    let (bob_session, _, _) =
        w.sessions.create(&w.client, checks(user_and_password(&bob, PASSWORD)), None).await.unwrap();
    w.identity.lock_user(&admin, &w.alice.id).await.unwrap();
    for id in [&s1.id, &s2.id] {
        assert_eq!(w.sessions.get(&w.client, id, None).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(w.session_events(id).await.last().map(String::as_str), Some("session.terminated"));
    }
    w.sessions.get(&w.client, &bob_session.id, None).await.unwrap();
    w.identity.delete_user(&admin, &bob.id).await.unwrap();
    assert!(w.sessions.get(&w.client, &bob_session.id, None).await.is_err());
}

#[tokio::test]
async fn list_shows_what_the_caller_may_see() {
    let w = World::new().await;
    let admin = w.admin().await;
    let fp = UserAgent { fingerprint_id: Some("fp".to_owned()), ..UserAgent::default() };
    let (mine, _, _) =
        w.sessions.create(&w.client, checks(user_and_password(&w.alice, PASSWORD)), Some(fp)).await.unwrap();
    let (_, token) = w.alice_session().await;
    let (_, other_client) = machine(&w.identity, &admin, &w.org, "client-2", vec![Role::IamLoginClient]).await;
    let other_client = ctx_of(&w.identity, &other_client).await;
    let (_, _, _) = w.sessions.create(&other_client, SessionChange::default(), None).await.unwrap();

    let q = ListQuery::default();
    assert_eq!(w.sessions.list(&admin, vec![], q, true).await.unwrap().total, 3);
    let own = w.sessions.list(&w.client, vec![SessionFilter::Creator(None)], q, true).await.unwrap();
    assert_eq!(own.total, 2);
    let by_fp = w.sessions.list(&admin, vec![SessionFilter::UserAgentFingerprint(Some("fp".into()))], q, true).await;
    assert_eq!(by_fp.unwrap().items.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), [mine.id]);
    let err = w.sessions.list(&admin, vec![SessionFilter::UserAgentFingerprint(None)], q, true).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let by_user = w.sessions.list(&admin, vec![SessionFilter::UserId(w.alice.id.clone())], q, false).await.unwrap();
    assert_eq!(by_user.total, 2);

    // Without session.read: only own creations and own sessions.
    let (_, plain) = machine(&w.identity, &admin, &w.org, "plain", vec![]).await;
    let plain = ctx_of(&w.identity, &plain).await;
    assert_eq!(w.sessions.list(&plain, vec![], q, true).await.unwrap().total, 0);
    let alice = ctx_of(&w.identity, &token).await;
    assert_eq!(w.sessions.list(&alice, vec![], q, true).await.unwrap().total, 2);
    let err = w.sessions.list(&admin, vec![], ListQuery { limit: 1001, ..q }, true).await.unwrap_err();
    assert_eq!(err.violations()[0].field, "query.limit");
}
