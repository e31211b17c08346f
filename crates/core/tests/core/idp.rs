//! IdP use cases against in-memory fakes of the identity and IdP ports and a scripted connector.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use flowgate_core::event::Details;
use flowgate_core::identity::ports::{IdpLinkCheck, NewUserIdpLink, USER_NOT_FOUND};
use flowgate_core::identity::*;
use flowgate_core::idp::ports::{CONNECTOR_LDAP_FAILED, CONNECTOR_NONCE_MISMATCH, CONNECTOR_UNREACHABLE};
use flowgate_core::idp::redirect::{EMPTY_ALLOWLIST_MESSAGE, REDIRECT_INVALID};
use flowgate_core::idp::validate::IDP_INVALID;
use flowgate_core::idp::*;
use flowgate_core::session::ports::IntentVerifier;
use flowgate_core::{Error, ErrorKind, Result};
use tokio::sync::Mutex;

// ------------------------------------------------------------------------------------------ fakes

fn details(sequence: u64, owner: &str) -> Details {
    let now = Utc::now();
    Details { sequence, creation_date: now, change_date: now, resource_owner: owner.to_owned() }
}

fn not_needed<T>() -> Result<T> {
    Err(Error::internal("FAKE", "not needed by these tests"))
}

#[derive(Default)]
struct Db {
    orgs: Vec<Organization>,
    users: Vec<User>,
    idps: HashMap<IdpId, Idp>,
    intents: HashMap<IntentId, Intent>,
    links: Vec<IdpLink>,
    /// (aggregate, event type) in write order.
    events: Vec<(String, String)>,
}

impl Db {
    fn log(&mut self, aggregate: String, event: &str) {
        self.events.push((aggregate, event.to_owned()));
    }

    fn add_link(&mut self, link: IdpLink) -> Result<()> {
        if self.links.iter().any(|l| l.idp_id == link.idp_id && l.external_user_id == link.external_user_id) {
            return Err(Error::new(ErrorKind::AlreadyExists, IDP_LINK_EXISTS, "taken"));
        }
        self.log(format!("user/{}", link.user_id), "user.idp.link.added");
        self.links.push(link);
        Ok(())
    }
}

#[derive(Default)]
struct Fake {
    db: Mutex<Db>,
}

fn page<T>(items: Vec<T>, q: &ListQuery) -> Page<T> {
    let total = items.len() as u64;
    Page { items: items.into_iter().skip(q.offset as usize).take(q.limit as usize).collect(), total }
}

#[async_trait]
impl OrgRepo for Fake {
    async fn create(&self, _org: &NewOrgRecord, _actor: &str) -> Result<Organization> {
        not_needed()
    }
    async fn get(&self, id: &OrgId) -> Result<Option<Organization>> {
        Ok(self.db.lock().await.orgs.iter().find(|o| o.id == *id).cloned())
    }
    async fn list(&self, filters: &[OrgFilter], q: &ListQuery) -> Result<Page<Organization>> {
        let db = self.db.lock().await;
        let matches = |o: &Organization| {
            filters.iter().all(|f| match f {
                OrgFilter::Name(n, m) => m.matches(&o.name, n),
                OrgFilter::State(s) => o.state == *s,
                OrgFilter::Id(id) => o.id == *id,
                OrgFilter::Ids(ids) => ids.contains(&o.id),
                OrgFilter::Domain(d, m) => m.matches(&o.primary_domain, d),
            })
        };
        Ok(page(db.orgs.iter().filter(|o| matches(o)).cloned().collect(), q))
    }
    async fn set_state(&self, _id: &OrgId, _change: OrgStateChange, _actor: &str) -> Result<Details> {
        not_needed()
    }
    async fn delete(&self, _id: &OrgId, _actor: &str) -> Result<Details> {
        not_needed()
    }
}

#[async_trait]
impl UserRepo for Fake {
    async fn create(&self, user: &NewUserRecord, _hash: Option<&str>, _actor: &str) -> Result<User> {
        let mut db = self.db.lock().await;
        if db.users.iter().any(|u| u.username.eq_ignore_ascii_case(&user.username)) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                flowgate_core::identity::ports::USER_USERNAME_TAKEN,
                "taken",
            ));
        }
        for l in &user.idp_links {
            if db.links.iter().any(|x| x.idp_id == l.idp_id && x.external_user_id == l.external_user_id) {
                return Err(Error::new(ErrorKind::AlreadyExists, IDP_LINK_EXISTS, "taken"));
            }
        }
        let NewUserKind::Human { profile, email, phone, password_change_required } = &user.kind else {
            return not_needed();
        };
        let created = User {
            id: user.id.clone(),
            org_id: user.org_id.clone(),
            username: user.username.clone(),
            state: UserState::Active,
            kind: UserKind::Human(Human {
                profile: profile.clone(),
                email: email.clone(),
                phone: phone.clone(),
                password_set: false,
                password_change_required: *password_change_required,
                password_changed: None,
            }),
            details: details(1, user.org_id.as_str()),
            login_names: vec![user.username.clone()],
            preferred_login_name: user.username.clone(),
        };
        db.log(format!("user/{}", user.id), "user.human.added");
        db.users.push(created.clone());
        for l in &user.idp_links {
            db.add_link(IdpLink {
                idp_id: l.idp_id.clone(),
                user_id: user.id.clone(),
                external_user_id: l.external_user_id.clone(),
                external_username: l.external_username.clone(),
            })?;
        }
        Ok(created)
    }
    async fn get(&self, id: &UserId) -> Result<Option<User>> {
        Ok(self.db.lock().await.users.iter().find(|u| u.id == *id).cloned())
    }
    async fn find_by_login_name(&self, _login_name: &str) -> Result<Option<User>> {
        not_needed()
    }
    async fn list(&self, _filters: &[UserFilter], _sort: UserSort, _q: &ListQuery) -> Result<Page<User>> {
        not_needed()
    }
    async fn update_human(&self, _id: &UserId, _change: &HumanChange, _actor: &str) -> Result<Details> {
        not_needed()
    }
    async fn password_hash(&self, _id: &UserId) -> Result<Option<String>> {
        Ok(None)
    }
    async fn set_password(&self, _id: &UserId, _hash: &str, _required: bool, _actor: &str) -> Result<Details> {
        not_needed()
    }
    async fn replace_password_hash(&self, _id: &UserId, _old: &str, _new: &str, _actor: &str) -> Result<bool> {
        not_needed()
    }
    async fn set_state(&self, _id: &UserId, _change: UserStateChange, _actor: &str) -> Result<Details> {
        not_needed()
    }
    async fn delete(&self, _id: &UserId, _actor: &str) -> Result<Details> {
        not_needed()
    }
}

#[async_trait]
impl TokenRepo for Fake {
    async fn create(&self, _token: &NewTokenRecord, _actor: &str) -> Result<PersonalAccessToken> {
        not_needed()
    }
    async fn find_by_hash(&self, _token_hash: &str) -> Result<Option<TokenOwner>> {
        Ok(None)
    }
    async fn list(&self, _user: &UserId, _q: &ListQuery) -> Result<Page<PersonalAccessToken>> {
        not_needed()
    }
    async fn delete(&self, _user: &UserId, _token: &TokenId, _actor: &str) -> Result<Details> {
        not_needed()
    }
}

#[async_trait]
impl MemberRepo for Fake {
    async fn set(&self, _user: &UserId, _scope: &MemberScope, _roles: &[Role], _actor: &str) -> Result<Details> {
        not_needed()
    }
    async fn remove(&self, _user: &UserId, _scope: &MemberScope, _actor: &str) -> Result<Details> {
        not_needed()
    }
    async fn list(&self, _scope: &MemberScope, _q: &ListQuery) -> Result<Page<Member>> {
        not_needed()
    }
    async fn of_user(&self, _user: &UserId) -> Result<Vec<Member>> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl InstanceRepo for Fake {
    async fn exists(&self) -> Result<bool> {
        Ok(true)
    }
    async fn bootstrap(&self, _record: &BootstrapRecord) -> Result<()> {
        not_needed()
    }
}

#[async_trait]
impl IdpRepo for Fake {
    async fn create(&self, idp: &NewIdpRecord, _actor: &str) -> Result<Idp> {
        let mut db = self.db.lock().await;
        let created = Idp {
            id: idp.id.clone(),
            name: idp.name.clone(),
            state: IdpState::Active,
            options: idp.options,
            kind: idp.kind.clone(),
            details: details(1, INSTANCE_OWNER),
        };
        db.idps.insert(idp.id.clone(), created.clone());
        db.log(format!("idp/{}", idp.id), "idp.added");
        Ok(created)
    }
    async fn get(&self, id: &IdpId) -> Result<Option<Idp>> {
        Ok(self.db.lock().await.idps.get(id).cloned())
    }
    async fn list(&self, filters: &[IdpFilter], q: &ListQuery) -> Result<Page<Idp>> {
        let db = self.db.lock().await;
        let mut all: Vec<Idp> = db
            .idps
            .values()
            .filter(|i| {
                filters.iter().all(|f| match f {
                    IdpFilter::Name(n, m) => m.matches(&i.name, n),
                    IdpFilter::Type(t) => i.kind.idp_type() == *t,
                })
            })
            .cloned()
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(page(all, q))
    }
    async fn update(&self, id: &IdpId, expected: u64, update: &IdpUpdate, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let idp = db.idps.get_mut(id).ok_or_else(|| Error::new(ErrorKind::NotFound, IDP_NOT_FOUND, "gone"))?;
        if idp.details.sequence != expected {
            return Err(Error::new(ErrorKind::Aborted, "FAKE-sequence", "changed concurrently"));
        }
        idp.name.clone_from(&update.name);
        idp.options = update.options;
        idp.kind = update.kind.clone();
        idp.details.sequence += 1;
        let d = idp.details.clone();
        db.log(format!("idp/{id}"), "idp.changed");
        Ok(d)
    }
    async fn set_state(&self, id: &IdpId, change: IdpStateChange, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let idp = db.idps.get_mut(id).ok_or_else(|| Error::new(ErrorKind::NotFound, IDP_NOT_FOUND, "gone"))?;
        idp.state = match change {
            IdpStateChange::Deactivate => IdpState::Inactive,
            IdpStateChange::Reactivate => IdpState::Active,
        };
        idp.details.sequence += 1;
        let d = idp.details.clone();
        db.log(format!("idp/{id}"), change.event_type());
        Ok(d)
    }
    async fn delete(&self, id: &IdpId, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        db.idps.remove(id).ok_or_else(|| Error::new(ErrorKind::NotFound, IDP_NOT_FOUND, "gone"))?;
        db.links.retain(|l| l.idp_id != *id);
        db.intents.retain(|_, i| i.idp_id != *id);
        db.log(format!("idp/{id}"), "idp.removed");
        Ok(details(9, INSTANCE_OWNER))
    }
}

#[async_trait]
impl IntentRepo for Fake {
    async fn create(&self, intent: &NewIntentRecord, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let d = details(1, INSTANCE_OWNER);
        db.intents.insert(
            intent.id.clone(),
            Intent {
                id: intent.id.clone(),
                idp_id: intent.idp_id.clone(),
                state: IntentState::Started,
                success_url: intent.success_url.clone(),
                failure_url: intent.failure_url.clone(),
                pkce_verifier: intent.pkce_verifier.clone(),
                nonce: intent.nonce.clone(),
                token_hash: None,
                external: None,
                user_id: None,
                created_at: intent.created_at,
                succeeded_at: None,
                expires_at: intent.expires_at,
                failure: None,
                details: d.clone(),
            },
        );
        db.log(format!("idp_intent/{}", intent.id), "idp.intent.started");
        Ok(d)
    }
    async fn get(&self, id: &IntentId) -> Result<Option<Intent>> {
        Ok(self.db.lock().await.intents.get(id).cloned())
    }
    async fn succeed(&self, id: &IntentId, s: &IntentSuccess, _actor: &str) -> Result<Option<Details>> {
        let mut db = self.db.lock().await;
        let Some(intent) = db.intents.get_mut(id).filter(|i| i.state == IntentState::Started) else {
            return Ok(None);
        };
        intent.state = IntentState::Succeeded;
        intent.token_hash = Some(s.token_hash.clone());
        intent.external = Some(s.external.clone());
        intent.user_id.clone_from(&s.user_id);
        intent.succeeded_at = Some(s.succeeded_at);
        intent.expires_at = s.expires_at;
        intent.details.sequence += 1;
        let d = intent.details.clone();
        db.log(format!("idp_intent/{id}"), "idp.intent.succeeded");
        Ok(Some(d))
    }
    async fn fail(&self, id: &IntentId, f: &IntentFailure, _actor: &str) -> Result<Option<Details>> {
        let mut db = self.db.lock().await;
        let Some(intent) = db.intents.get_mut(id).filter(|i| i.state == IntentState::Started) else {
            return Ok(None);
        };
        intent.state = IntentState::Failed;
        intent.failure = Some(f.clone());
        intent.details.sequence += 1;
        let d = intent.details.clone();
        db.log(format!("idp_intent/{id}"), "idp.intent.failed");
        Ok(Some(d))
    }
    async fn consume(&self, id: &IntentId, _actor: &str) -> Result<bool> {
        let mut db = self.db.lock().await;
        let Some(intent) = db.intents.get_mut(id).filter(|i| i.state == IntentState::Succeeded) else {
            return Ok(false);
        };
        intent.state = IntentState::Consumed;
        db.log(format!("idp_intent/{id}"), "idp.intent.consumed");
        Ok(true)
    }
    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut db = self.db.lock().await;
        let count = db.intents.len();
        db.intents.retain(|_, i| i.expires_at >= before);
        Ok((count - db.intents.len()) as u64)
    }
}

#[async_trait]
impl LinkRepo for Fake {
    async fn add(&self, link: &IdpLink, _actor: &str) -> Result<Details> {
        self.db.lock().await.add_link(link.clone())?;
        Ok(details(2, "org"))
    }
    async fn find(&self, idp: &IdpId, external_user_id: &str) -> Result<Option<IdpLink>> {
        let db = self.db.lock().await;
        Ok(db.links.iter().find(|l| l.idp_id == *idp && l.external_user_id == external_user_id).cloned())
    }
    async fn list(&self, user: &UserId, q: &ListQuery) -> Result<Page<IdpLink>> {
        Ok(page(self.db.lock().await.links.iter().filter(|l| l.user_id == *user).cloned().collect(), q))
    }
    async fn remove(&self, user: &UserId, idp: &IdpId, external_user_id: &str, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let before = db.links.len();
        db.links.retain(|l| !(l.user_id == *user && l.idp_id == *idp && l.external_user_id == external_user_id));
        if db.links.len() == before {
            return Err(Error::new(ErrorKind::NotFound, IDP_LINK_NOT_FOUND, "no such link"));
        }
        db.log(format!("user/{user}"), "user.idp.link.removed");
        Ok(details(3, "org"))
    }
}

struct FakeClock(AtomicI64);

impl FakeClock {
    fn advance(&self, d: TimeDelta) {
        self.0.fetch_add(d.num_seconds(), Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.0.load(Ordering::SeqCst), 0).unwrap_or_default()
    }
}

struct Ids(AtomicU64);

impl IdGenerator for Ids {
    fn new_id(&self) -> String {
        format!("{:032x}", self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

/// A connector whose answers the code / credentials choose, recording what it was given.
#[derive(Default)]
struct FakeConnector {
    auth_requests: Mutex<Vec<(RedirectProvider, AuthRequest)>>,
    exchanges: Mutex<Vec<CodeExchange>>,
    ldap_calls: Mutex<Vec<(String, String)>>,
}

fn external(id: &str, email: Option<&str>) -> ExternalUser {
    ExternalUser {
        id: id.to_owned(),
        username: format!("{id}-name"),
        raw: serde_json::json!({ "sub": id, "email": email }),
        access_token: Some(format!("at-{id}")),
        id_token: Some(format!("idt-{id}")),
        ldap_attributes: None,
        profile: ExternalProfile {
            email: email.map(str::to_owned),
            email_verified: true,
            given_name: Some("Ext".to_owned()),
            family_name: Some("User".to_owned()),
            preferred_username: Some(format!("{id}-login")),
            ..ExternalProfile::default()
        },
    }
}

#[async_trait]
impl IdpConnector for FakeConnector {
    async fn authorization_url(&self, p: &RedirectProvider, r: &AuthRequest) -> Result<String> {
        self.auth_requests.lock().await.push((p.clone(), r.clone()));
        Ok(format!("https://idp.example.com/authorize?client_id={}&state={}", p.client_id, r.state))
    }
    async fn exchange(&self, _p: &RedirectProvider, x: &CodeExchange) -> Result<ExternalUser> {
        self.exchanges.lock().await.push(x.clone());
        match x.code.as_str() {
            "nonce" => Err(Error::new(ErrorKind::InvalidArgument, CONNECTOR_NONCE_MISMATCH, "nonce differs")),
            "down" => Err(Error::new(ErrorKind::Unavailable, CONNECTOR_UNREACHABLE, "the IdP is unreachable")),
            "bug" => Err(Error::internal("FAKE-bug", "secret detail s3cret")),
            "new" => Ok(external("ext-new", Some("new@example.com"))),
            other => Ok(external(other, None)),
        }
    }
    async fn ldap_login(&self, _p: &LdapProvider, username: &str, password: &str) -> Result<ExternalUser> {
        self.ldap_calls.lock().await.push((username.to_owned(), password.to_owned()));
        if username == "alice" && password == "right" {
            let mut user = external("uid-alice", Some("alice@example.com"));
            user.access_token = None;
            user.id_token = None;
            user.ldap_attributes = Some(BTreeMap::from([("uid".to_owned(), vec!["alice".to_owned()])]));
            Ok(user)
        } else {
            Err(Error::new(ErrorKind::InvalidArgument, CONNECTOR_LDAP_FAILED, "invalid credentials for alice"))
        }
    }
}

// ------------------------------------------------------------------------------------------ world

const SUCCESS: &str = "https://app.example.com/login/done?from=idp";
const FAILURE: &str = "https://app.example.com/login/failed";

struct World {
    fake: Arc<Fake>,
    connector: Arc<FakeConnector>,
    clock: Arc<FakeClock>,
    idps: Idps,
    identity: Identity,
    admin: CallContext,
    /// A login client: authenticated, no IdP or user permissions.
    client: CallContext,
    org: OrgId,
    alice: UserId,
    bob: UserId,
}

fn ctx(user: &str, org: &OrgId, instance_roles: Vec<Role>, org_roles: Vec<(OrgId, Vec<Role>)>) -> CallContext {
    CallContext {
        principal: Principal { user_id: UserId::from(user), org_id: org.clone(), instance_roles, org_roles },
        org_id: org.clone(),
    }
}

fn human_user(id: &str, org: &OrgId) -> User {
    User {
        id: UserId::from(id),
        org_id: org.clone(),
        username: id.to_owned(),
        state: UserState::Active,
        kind: UserKind::Human(Human {
            profile: Profile::default(),
            email: Email::default(),
            phone: None,
            password_set: false,
            password_change_required: false,
            password_changed: None,
        }),
        details: details(1, org.as_str()),
        login_names: vec![id.to_owned()],
        preferred_login_name: id.to_owned(),
    }
}

impl World {
    async fn new() -> Self {
        Self::with_allowlist(vec!["https://app.example.com/login".to_owned()]).await
    }

    async fn with_allowlist(allowed: Vec<String>) -> Self {
        let fake = Arc::new(Fake::default());
        let org = OrgId::from("org-default");
        {
            let mut db = fake.db.lock().await;
            for (id, name) in [("org-default", DEFAULT_ORG_NAME), ("org-other", "other")] {
                db.orgs.push(Organization {
                    id: OrgId::from(id),
                    name: name.to_owned(),
                    primary_domain: format!("{name}.localhost"),
                    state: OrgState::Active,
                    details: details(1, id),
                });
            }
            db.users.push(human_user("alice", &org));
            db.users.push(human_user("bob", &OrgId::from("org-other")));
        }
        let repos = Repos {
            orgs: fake.clone(),
            users: fake.clone(),
            tokens: fake.clone(),
            members: fake.clone(),
            instance: fake.clone(),
        };
        let clock = Arc::new(FakeClock(AtomicI64::new(1_700_000_000)));
        let ids = Arc::new(Ids(AtomicU64::new(0)));
        let identity = Identity::new(IdentityConfig::default(), repos, clock.clone(), ids.clone()).expect("identity");
        let idp_repos = IdpRepos { idps: fake.clone(), intents: fake.clone(), links: fake.clone() };
        let identity = identity.with_idp_link_check(Arc::new(IdpLinkChecker::new(idp_repos.clone())));
        let connector = Arc::new(FakeConnector::default());
        let config = IdpConfig {
            external_url: "https://login.example.com/".to_owned(),
            allowlist: RedirectAllowlist::new(allowed).expect("allowlist"),
            intent_lifetime: DEFAULT_INTENT_LIFETIME,
        };
        let idps = Idps::new(
            config,
            idp_repos,
            identity.clone(),
            connector.clone(),
            SecretBox::new([42u8; 32]),
            clock.clone(),
            ids,
        );
        World {
            fake,
            connector,
            clock,
            idps,
            identity,
            admin: ctx("admin", &org, vec![Role::IamOwner], vec![]),
            client: ctx("login-client", &org, vec![Role::IamLoginClient], vec![]),
            org,
            alice: UserId::from("alice"),
            bob: UserId::from("bob"),
        }
    }

    async fn add_oidc(&self, options: ProviderOptions) -> Idp {
        let input = IdpInput {
            name: "Corp OIDC".to_owned(),
            options,
            provider: ProviderInput::Oidc(OidcInput {
                issuer: "https://issuer.example.com/".to_owned(),
                client_id: "flowgate".to_owned(),
                client_secret: "s3cret".to_owned(),
                scopes: Vec::new(),
                is_id_token_mapping: false,
                use_pkce: None,
            }),
        };
        self.idps.add_idp(&self.admin, input).await.expect("add oidc")
    }

    async fn add_ldap(&self) -> Idp {
        let input = IdpInput {
            name: "Directory".to_owned(),
            options: linking(),
            provider: ProviderInput::Ldap(ldap_input("bind-pw")),
        };
        self.idps.add_idp(&self.admin, input).await.expect("add ldap")
    }

    /// Starts an intent and answers its id (the `state` the connector was given).
    async fn start(&self, idp: &Idp) -> String {
        let (url, _) = self.idps.start_redirect(&self.client, idp.id.as_str(), SUCCESS, FAILURE).await.expect("start");
        let state = self.connector.auth_requests.lock().await.last().map(|(_, r)| r.state.clone()).unwrap();
        assert!(url.ends_with(&format!("state={state}")));
        state
    }

    async fn callback(&self, state: &str, code: &str) -> CallbackOutcome {
        let params =
            CallbackParams { state: Some(state.to_owned()), code: Some(code.to_owned()), ..Default::default() };
        self.idps.callback(params).await.expect("callback")
    }

    async fn intent(&self, id: &str) -> Intent {
        self.fake.db.lock().await.intents.get(&IntentId::from(id)).cloned().expect("intent")
    }

    async fn link(&self, idp: &Idp, user: &UserId, external_id: &str) {
        self.fake
            .db
            .lock()
            .await
            .add_link(IdpLink {
                idp_id: idp.id.clone(),
                user_id: user.clone(),
                external_user_id: external_id.to_owned(),
                external_username: String::new(),
            })
            .expect("link");
    }

    /// A succeeded intent for the account `external_id`: (intent id, token).
    async fn succeeded(&self, idp: &Idp, external_id: &str) -> (String, String) {
        let state = self.start(idp).await;
        let (_, query) = redirected(&self.callback(&state, external_id).await);
        assert!(query.contains_key("token"), "{query:?}");
        (state, query["token"].clone())
    }
}

fn linking() -> ProviderOptions {
    ProviderOptions { is_linking_allowed: true, ..ProviderOptions::default() }
}

fn ldap_input(password: &str) -> LdapInput {
    LdapInput {
        servers: vec!["ldaps://ldap.example.com:636".to_owned()],
        start_tls: false,
        tls_verify: None,
        root_ca_pem: None,
        base_dn: "dc=example,dc=test".to_owned(),
        bind_dn: "cn=svc,dc=example,dc=test".to_owned(),
        bind_password: password.to_owned(),
        user_base: "ou=people,dc=example,dc=test".to_owned(),
        user_object_classes: vec!["inetOrgPerson".to_owned()],
        user_filters: vec!["uid".to_owned(), "mail".to_owned()],
        timeout: None,
        attributes: LdapAttributes { id_attribute: "uid".to_owned(), ..LdapAttributes::default() },
    }
}

/// The base and decoded query of a redirect outcome.
fn redirected(outcome: &CallbackOutcome) -> (String, BTreeMap<String, String>) {
    let CallbackOutcome::Redirect(location) = outcome else {
        panic!("expected a redirect, got {outcome:?}");
    };
    let url = url::Url::parse(location).expect("absolute location");
    let base = format!("{}://{}{}", url.scheme(), url.host_str().unwrap_or_default(), url.path());
    (base, url.query_pairs().into_owned().collect())
}

fn kind_id(err: &Error) -> (ErrorKind, String) {
    (err.kind(), err.id().to_owned())
}

fn field(err: &Error) -> String {
    err.violations().first().map(|v| v.field.clone()).unwrap_or_default()
}

// ------------------------------------------------------------------------------------------ configuration

#[tokio::test]
async fn configuration_seals_secrets_and_keeps_them_on_update() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;
    let IdpKind::Oidc(config) = &idp.kind else { panic!("oidc expected") };
    assert_eq!(config.issuer, "https://issuer.example.com", "trailing slash dropped");
    assert_eq!(config.scopes, ["openid", "profile", "email"]);
    assert!(config.use_pkce);
    assert!(config.client_secret.as_str().starts_with("v1.") && !config.client_secret.as_str().contains("s3cret"));
    assert!(!format!("{idp:?}").contains("s3cret"));

    // An empty secret on update keeps the stored one; the connector sees it opened.
    let update = IdpInput {
        name: "Renamed".to_owned(),
        options: linking(),
        provider: ProviderInput::Oidc(OidcInput {
            issuer: "http://127.0.0.1:9999".to_owned(),
            client_id: "flowgate-2".to_owned(),
            client_secret: String::new(),
            scopes: vec!["openid".to_owned()],
            is_id_token_mapping: true,
            use_pkce: Some(false),
        }),
    };
    w.idps.update_idp(&w.admin, &idp.id, update).await.unwrap();
    let stored = w.idps.get_idp(&w.client, &idp.id).await.unwrap();
    assert_eq!(stored.name, "Renamed");
    w.start(&stored).await;
    let (provider, request) = w.connector.auth_requests.lock().await.last().cloned().unwrap();
    assert_eq!(provider.client_secret, "s3cret");
    assert_eq!(provider.client_id, "flowgate-2");
    assert!(!provider.use_pkce && request.pkce_challenge.is_none());
    assert_eq!(request.redirect_uri, "https://login.example.com/idps/callback");

    // Another type is refused; so are bad fields, named as in the proto.
    let github = IdpInput {
        name: "gh".to_owned(),
        options: linking(),
        provider: ProviderInput::GitHub(TemplateInput {
            client_id: "c".to_owned(),
            client_secret: String::new(),
            scopes: vec![],
        }),
    };
    let err = w.idps.update_idp(&w.admin, &idp.id, github.clone()).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, IDP_TYPE_MISMATCH.to_owned()));
    let err = w.idps.add_idp(&w.admin, github).await.unwrap_err();
    assert_eq!((field(&err), err.id().to_owned()), ("client_secret".to_owned(), IDP_INVALID.to_owned()));
    let bad = IdpInput {
        name: " ".to_owned(),
        options: linking(),
        provider: ProviderInput::Oidc(OidcInput {
            issuer: "http://issuer.example.com".to_owned(),
            client_id: String::new(),
            client_secret: "x".to_owned(),
            scopes: vec!["a b".to_owned()],
            is_id_token_mapping: false,
            use_pkce: None,
        }),
    };
    let err = w.idps.add_idp(&w.admin, bad.clone()).await.unwrap_err();
    assert_eq!(field(&err), "name");
    let err = w.idps.add_idp(&w.admin, IdpInput { name: "n".to_owned(), ..bad }).await.unwrap_err();
    let fields: Vec<&str> = err.violations().iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["issuer", "client_id", "scopes[0]"]);

    // Only idp.write may configure.
    let err = w.add_oidc_as(&w.client).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
}

impl World {
    async fn add_oidc_as(&self, caller: &CallContext) -> Result<Idp> {
        let input = IdpInput {
            name: "x".to_owned(),
            options: linking(),
            provider: ProviderInput::Google(TemplateInput {
                client_id: "c".to_owned(),
                client_secret: "s".to_owned(),
                scopes: vec![],
            }),
        };
        self.idps.add_idp(caller, input).await
    }
}

#[tokio::test]
async fn templates_ldap_validation_listing_state_and_delete() {
    let w = World::new().await;
    let google = w.add_oidc_as(&w.admin).await.unwrap();
    assert_eq!(google.kind.idp_type(), IdpType::Google);
    let github = IdpInput {
        name: "GitHub".to_owned(),
        options: linking(),
        provider: ProviderInput::GitHub(TemplateInput {
            client_id: "c".to_owned(),
            client_secret: "s".to_owned(),
            scopes: vec![],
        }),
    };
    let github = w.idps.add_idp(&w.admin, github).await.unwrap();
    let IdpKind::OAuth(c) = &github.kind else { panic!("oauth expected") };
    assert_eq!(c.token_endpoint, "https://github.com/login/oauth/access_token");
    assert_eq!(
        (c.id_attribute.as_str(), c.scopes.clone()),
        ("id", vec!["read:user".to_owned(), "user:email".to_owned()])
    );

    let ldap = w.add_ldap().await;
    let IdpKind::Ldap(c) = &ldap.kind else { panic!("ldap expected") };
    assert!(c.tls_verify);
    assert_eq!(c.timeout, std::time::Duration::from_secs(10));
    assert!(!c.bind_password.as_str().contains("bind-pw"));
    let mut bad = ldap_input("");
    bad.servers = vec!["http://ldap.example.com".to_owned(), "ldaps://ok.example.com".to_owned()];
    bad.start_tls = true;
    bad.user_filters = vec!["(uid=*)".to_owned()];
    bad.timeout = Some(std::time::Duration::from_secs(120));
    bad.attributes.id_attribute = String::new();
    bad.root_ca_pem = Some("not a certificate".to_owned());
    let err = w
        .idps
        .add_idp(&w.admin, IdpInput { name: "d".to_owned(), options: linking(), provider: ProviderInput::Ldap(bad) })
        .await
        .unwrap_err();
    let fields: Vec<&str> = err.violations().iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "servers[0]",
            "servers[1]",
            "user_filters[0]",
            "timeout",
            "root_ca",
            "attributes.id_attribute",
            "bind_password"
        ]
    );

    let page = w.idps.list_idps(&w.client, vec![IdpFilter::Type(IdpType::Ldap)], ListQuery::default()).await.unwrap();
    assert_eq!((page.total, page.items[0].id.clone()), (1, ldap.id.clone()));
    let page = w
        .idps
        .list_idps(
            &w.client,
            vec![IdpFilter::Name("git".to_owned(), TextMethod::StartsWithIgnoreCase)],
            ListQuery::default(),
        )
        .await
        .unwrap();
    assert_eq!(page.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&github.id));

    w.idps.deactivate_idp(&w.admin, &ldap.id).await.unwrap();
    let err = w.idps.deactivate_idp(&w.admin, &ldap.id).await.unwrap_err();
    assert_eq!(err.id(), IDP_STATE);
    w.idps.reactivate_idp(&w.admin, &ldap.id).await.unwrap();
    assert_eq!(w.idps.deactivate_idp(&w.client, &ldap.id).await.unwrap_err().kind(), ErrorKind::PermissionDenied);

    w.link(&github, &w.alice, "gh-1").await;
    w.idps.delete_idp(&w.admin, &github.id).await.unwrap();
    assert!(w.fake.db.lock().await.links.is_empty(), "links go with the IdP");
    let err = w.idps.get_idp(&w.admin, &github.id).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::NotFound, IDP_NOT_FOUND.to_owned()));
}

// ------------------------------------------------------------------------------------------ redirect flow

#[tokio::test]
async fn redirect_flow_end_to_end() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;
    w.link(&idp, &w.alice, "ext-alice").await;
    let state = w.start(&idp).await;
    let (_, request) = w.connector.auth_requests.lock().await.last().cloned().unwrap();
    let stored = w.intent(&state).await;
    assert_eq!(stored.state, IntentState::Started);
    assert_eq!(request.nonce, stored.nonce);
    assert!(request.nonce.as_ref().is_some_and(|n| n.len() >= 43));
    let challenge = request.pkce_challenge.clone().expect("PKCE always on by default");
    assert_eq!(challenge.len(), 43);
    let sealed = stored.pkce_verifier.clone().expect("verifier stored sealed");

    let outcome = w.callback(&state, "ext-alice").await;
    let (base, query) = redirected(&outcome);
    assert_eq!(base, "https://app.example.com/login/done");
    assert_eq!(query["from"], "idp", "existing query parameters are kept");
    assert_eq!(query["id"], state);
    assert_eq!(query["user"], "alice");
    let token = query["token"].clone();
    assert!(token.starts_with("fgi_"));

    // The connector got the verifier matching the challenge, and the nonce; the stored one is sealed.
    let exchange = w.connector.exchanges.lock().await.last().cloned().unwrap();
    let verifier = exchange.pkce_verifier.clone().unwrap();
    assert_eq!(flowgate_core::idp::crypto::pkce_challenge(&verifier), challenge);
    assert!(!sealed.as_str().contains(&verifier));
    assert_eq!(exchange.nonce, stored.nonce);
    assert_eq!(exchange.redirect_uri, "https://login.example.com/idps/callback");

    let stored = w.intent(&state).await;
    assert_eq!(stored.state, IntentState::Succeeded);
    assert_ne!(stored.token_hash.as_deref(), Some(token.as_str()), "only the hash is stored");
    let ext = stored.external.clone().unwrap();
    assert!(ext.access_token.as_ref().is_some_and(|t| !t.as_str().contains("at-ext-alice")));

    let info = w.idps.retrieve(&w.client, &state, &token).await.unwrap();
    assert_eq!(info.idp_id, idp.id);
    assert_eq!(info.external_user_id, "ext-alice");
    assert_eq!(info.external_username, "ext-alice-name");
    assert_eq!(info.access_token.as_deref(), Some("at-ext-alice"));
    assert_eq!(info.id_token.as_deref(), Some("idt-ext-alice"));
    assert_eq!(info.raw["sub"], "ext-alice");
    assert_eq!(info.user_id, Some(w.alice.clone()));

    // A second callback for the finished intent only redirects to the failure URL.
    let (base, query) = redirected(&w.callback(&state, "ext-alice").await);
    assert_eq!(
        (base.as_str(), query["error"].as_str()),
        ("https://app.example.com/login/failed", "intent_not_started")
    );
    assert_eq!(w.intent(&state).await.state, IntentState::Succeeded);

    let events: Vec<String> = w.fake.db.lock().await.events.iter().map(|(_, e)| e.clone()).collect();
    assert!(events.ends_with(&["idp.intent.started".to_owned(), "idp.intent.succeeded".to_owned()]));
}

#[tokio::test]
async fn unlinked_accounts_succeed_without_a_user() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;
    let state = w.start(&idp).await;
    let (_, query) = redirected(&w.callback(&state, "nobody").await);
    assert!(!query.contains_key("user"));
    let info = w.idps.retrieve(&w.client, &state, &query["token"]).await.unwrap();
    assert_eq!(info.user_id, None);
}

#[tokio::test]
async fn callback_without_a_known_state_never_redirects() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;
    w.start(&idp).await;
    for state in [None, Some(""), Some("   "), Some("ffffffffffffffffffffffffffffffff"), Some(&"x".repeat(300)[..])] {
        let params = CallbackParams {
            state: state.map(str::to_owned),
            code: Some("ext-alice".to_owned()),
            ..Default::default()
        };
        let outcome = w.idps.callback(params).await.unwrap();
        assert!(matches!(outcome, CallbackOutcome::BadRequest(_)), "{state:?}: {outcome:?}");
    }
    assert!(w.connector.exchanges.lock().await.is_empty());
}

#[tokio::test]
async fn every_callback_failure_marks_the_intent_failed_and_redirects() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;

    // The provider reports an error.
    let state = w.start(&idp).await;
    let params = CallbackParams {
        state: Some(state.clone()),
        code: None,
        error: Some("access_denied".to_owned()),
        error_description: Some("the user said no & left".to_owned()),
    };
    let (base, query) = redirected(&w.idps.callback(params).await.unwrap());
    assert_eq!(base, "https://app.example.com/login/failed");
    assert_eq!((query["id"].as_str(), query["error"].as_str()), (state.as_str(), "access_denied"));
    assert_eq!(query["error_description"], "the user said no & left");
    let failed = w.intent(&state).await;
    assert_eq!((failed.state, failed.failure.unwrap().error), (IntentState::Failed, "access_denied".to_owned()));

    // Connector failures carry their id; internal ones say nothing more.
    for (code, error) in
        [("nonce", "nonce_mismatch"), ("down", "idp_unreachable"), ("bug", "server_error"), ("", "invalid_request")]
    {
        let state = w.start(&idp).await;
        let (_, query) = redirected(&w.callback(&state, code).await);
        assert_eq!(query["error"], error, "{code}");
        assert!(!query["error_description"].contains("s3cret"));
        assert_eq!(w.intent(&state).await.state, IntentState::Failed, "{code}");
        // Failed is final: retrieve refuses.
        assert!(!query.contains_key("token"));
    }

    // Expired before the callback.
    let state = w.start(&idp).await;
    w.clock.advance(TimeDelta::minutes(11));
    let (_, query) = redirected(&w.callback(&state, "ext-alice").await);
    assert_eq!(query["error"], "intent_expired");
    assert_eq!(w.intent(&state).await.state, IntentState::Failed);
    // Intents are purged an hour after they expire, not before.
    let fresh = w.start(&idp).await;
    w.clock.advance(TimeDelta::minutes(61));
    // Everything started before `fresh` expired over an hour ago; `fresh` expired 51 minutes ago.
    assert!(w.idps.purge_expired_intents().await.unwrap() >= 1);
    assert!(!w.fake.db.lock().await.intents.contains_key(&IntentId::from(state.as_str())), "purged");
    assert_eq!(w.intent(&fresh).await.state, IntentState::Started, "kept until an hour past its expiry");
    w.clock.advance(TimeDelta::minutes(10));
    assert_eq!(w.idps.purge_expired_intents().await.unwrap(), 1);
    assert!(matches!(w.callback(&fresh, "ext-alice").await, CallbackOutcome::BadRequest(_)), "unknown now");

    // The IdP was deactivated since the start.
    let state = w.start(&idp).await;
    w.idps.deactivate_idp(&w.admin, &idp.id).await.unwrap();
    let exchanges = w.connector.exchanges.lock().await.len();
    let (_, query) = redirected(&w.callback(&state, "ext-alice").await);
    assert_eq!(query["error"], "idp_inactive");
    assert_eq!(w.connector.exchanges.lock().await.len(), exchanges, "no exchange with an inactive IdP");
    assert_eq!(w.intent(&state).await.state, IntentState::Failed);
}

#[tokio::test]
async fn start_refuses_foreign_urls_inactive_and_ldap_idps() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;
    for (success, failure, bad_field) in [
        ("https://evil.com/login", FAILURE, "urls.success_url"),
        (SUCCESS, "https://app.example.com.evil.com/login", "urls.failure_url"),
        ("https://app.example.com@evil.com/login", FAILURE, "urls.success_url"),
        (SUCCESS, "https://app.example.com/login/%2e%2e/admin", "urls.failure_url"),
        ("javascript:alert(1)", FAILURE, "urls.success_url"),
        ("https://app.example.com/loginx", FAILURE, "urls.success_url"),
    ] {
        let err = w.idps.start_redirect(&w.client, idp.id.as_str(), success, failure).await.unwrap_err();
        assert_eq!(
            (kind_id(&err), field(&err)),
            ((ErrorKind::InvalidArgument, REDIRECT_INVALID.to_owned()), bad_field.to_owned())
        );
    }
    let ldap = w.add_ldap().await;
    let err = w.idps.start_redirect(&w.client, ldap.id.as_str(), SUCCESS, FAILURE).await.unwrap_err();
    assert_eq!(
        (kind_id(&err), field(&err)),
        ((ErrorKind::InvalidArgument, IDP_TYPE_NOT_IMPLEMENTED.to_owned()), "urls".to_owned())
    );
    let err = w.idps.start_redirect(&w.client, "unknown", SUCCESS, FAILURE).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::NotFound, IDP_NOT_FOUND.to_owned()));
    w.idps.deactivate_idp(&w.admin, &idp.id).await.unwrap();
    let err = w.idps.start_redirect(&w.client, idp.id.as_str(), SUCCESS, FAILURE).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, IDP_INACTIVE.to_owned()));
    assert!(w.fake.db.lock().await.intents.is_empty(), "no intent for a refused start");

    let empty = World::with_allowlist(Vec::new()).await;
    let idp = empty.add_oidc(linking()).await;
    let err = empty.idps.start_redirect(&empty.client, idp.id.as_str(), SUCCESS, FAILURE).await.unwrap_err();
    assert_eq!(err.violations()[0].description, EMPTY_ALLOWLIST_MESSAGE);
}

// ------------------------------------------------------------------------------------------ retrieve and session check

#[tokio::test]
async fn retrieve_needs_the_whole_token_success_and_time() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;
    let (id, token) = w.succeeded(&idp, "ext-alice").await;
    let (other_id, other_token) = w.succeeded(&idp, "ext-bob").await;
    for wrong in [&token[..token.len() - 1], &format!("{token}A"), &other_token, "fgi_short"] {
        let err = w.idps.retrieve(&w.client, &id, wrong).await.unwrap_err();
        assert_eq!(kind_id(&err), (ErrorKind::PermissionDenied, IDP_INTENT_TOKEN_INVALID.to_owned()), "{wrong}");
    }
    assert!(w.idps.retrieve(&w.client, &other_id, &other_token).await.is_ok());
    let err = w.idps.retrieve(&w.client, &id, "").await.unwrap_err();
    assert_eq!(field(&err), "idp_intent_token");
    let started = w.start(&idp).await;
    let err = w.idps.retrieve(&w.client, &started, &token).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, IDP_INTENT_NOT_SUCCEEDED.to_owned()));

    w.clock.advance(TimeDelta::minutes(59));
    assert!(w.idps.retrieve(&w.client, &id, &token).await.is_ok());
    w.clock.advance(TimeDelta::minutes(2));
    let err = w.idps.retrieve(&w.client, &id, &token).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, IDP_INTENT_EXPIRED.to_owned()));
    let err = w.idps.consume_for_session(&id, &token, &w.bob).await.unwrap_err();
    assert_eq!(err.id(), IDP_INTENT_EXPIRED);
}

#[tokio::test]
async fn session_check_is_single_use_and_bound_to_the_user() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;
    w.link(&idp, &w.alice, "ext-alice").await;
    let (id, token) = w.succeeded(&idp, "ext-alice").await;

    // Another user, or another intent's token, is refused and consumes nothing.
    let err = w.idps.verify_for_session(&id, &token, &w.bob).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, IDP_INTENT_OTHER_USER.to_owned()));
    let (other, other_token) = w.succeeded(&idp, "ext-unlinked").await;
    assert_eq!(
        w.idps.consume_for_session(&id, &other_token, &w.alice).await.unwrap_err().id(),
        IDP_INTENT_TOKEN_INVALID
    );
    let err = w.idps.consume_for_session(&other, &other_token, &w.alice).await.unwrap_err();
    assert_eq!(err.id(), IDP_INTENT_OTHER_USER, "no user on the intent and no link to alice");

    w.idps.verify_for_session(&id, &token, &w.alice).await.unwrap();
    assert_eq!(w.intent(&id).await.state, IntentState::Succeeded, "verify writes nothing");
    w.idps.consume_for_session(&id, &token, &w.alice).await.unwrap();
    assert_eq!(w.intent(&id).await.state, IntentState::Consumed);
    let err = w.idps.consume_for_session(&id, &token, &w.alice).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, IDP_INTENT_NOT_SUCCEEDED.to_owned()));
    assert_eq!(w.idps.retrieve(&w.client, &id, &token).await.unwrap_err().id(), IDP_INTENT_NOT_SUCCEEDED);

    // An account linked after the intent succeeded counts too (intent without a user id).
    w.link(&idp, &w.bob, "ext-unlinked").await;
    w.idps.consume_for_session(&other, &other_token, &w.bob).await.unwrap();
}

#[tokio::test]
async fn parallel_consumes_have_exactly_one_winner() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;
    w.link(&idp, &w.alice, "ext-alice").await;
    let (id, token) = w.succeeded(&idp, "ext-alice").await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (idps, id, token, user) = (w.idps.clone(), id.clone(), token.clone(), w.alice.clone());
        tasks.push(tokio::spawn(async move { idps.consume_for_session(&id, &token, &user).await }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => wins += 1,
            Err(e) => assert_eq!(e.id(), IDP_INTENT_NOT_SUCCEEDED),
        }
    }
    assert_eq!(wins, 1);
    let consumed = w.fake.db.lock().await.events.iter().filter(|(_, e)| e == "idp.intent.consumed").count();
    assert_eq!(consumed, 1);
}

#[tokio::test]
async fn session_check_refuses_an_idp_deactivated_since_success() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;
    w.link(&idp, &w.alice, "ext-alice").await;
    let (id, token) = w.succeeded(&idp, "ext-alice").await;
    w.idps.deactivate_idp(&w.admin, &idp.id).await.unwrap();
    let err = w.idps.consume_for_session(&id, &token, &w.alice).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::FailedPrecondition, IDP_INACTIVE.to_owned()));
    assert_eq!(w.intent(&id).await.state, IntentState::Succeeded);
}

// ------------------------------------------------------------------------------------------ LDAP

#[tokio::test]
async fn ldap_login_succeeds_with_the_linked_user() {
    let w = World::new().await;
    let ldap = w.add_ldap().await;
    w.link(&ldap, &w.alice, "uid-alice").await;
    let result = w.idps.start_ldap(&w.client, ldap.id.as_str(), "alice", "right").await.unwrap();
    assert_eq!(result.user_id, Some(w.alice.clone()));
    assert!(!format!("{result:?}").contains(&result.token));
    let (_, password) = w.connector.ldap_calls.lock().await.last().cloned().unwrap();
    assert_eq!(password, "right");
    let info = w.idps.retrieve(&w.client, result.id.as_str(), &result.token).await.unwrap();
    assert_eq!(info.ldap_attributes.unwrap()["uid"], ["alice"]);
    assert_eq!((info.access_token, info.user_id), (None, Some(w.alice.clone())));
    w.idps.consume_for_session(result.id.as_str(), &result.token, &w.alice).await.unwrap();
}

#[tokio::test]
async fn ldap_failures_are_uniform_and_empty_passwords_stay_offline() {
    let w = World::new().await;
    let ldap = w.add_ldap().await;
    let mut messages = Vec::new();
    for (username, password, reaches_connector) in [
        ("alice", "wrong", true),
        ("nobody", "right", true),
        ("*)(uid=*", "x", true),
        ("alice", "", false),
        ("", "right", false),
        ("alice", &"p".repeat(2000)[..], false),
    ] {
        let calls = w.connector.ldap_calls.lock().await.len();
        let err = w.idps.start_ldap(&w.client, ldap.id.as_str(), username, password).await.unwrap_err();
        assert_eq!(kind_id(&err), (ErrorKind::InvalidArgument, IDP_LDAP_LOGIN_FAILED.to_owned()), "{username}");
        messages.push(err.message().to_owned());
        let after = w.connector.ldap_calls.lock().await.len();
        assert_eq!(after - calls, usize::from(reaches_connector), "{username}/{password}");
    }
    assert!(messages.iter().all(|m| m == LDAP_LOGIN_FAILED_MESSAGE), "{messages:?}");
    assert!(w.connector.ldap_calls.lock().await.iter().all(|(_, p)| !p.is_empty()));
    let db = w.fake.db.lock().await;
    assert_eq!(db.intents.len(), 6);
    assert!(db.intents.values().all(|i| i.state == IntentState::Failed && i.token_hash.is_none()));
    drop(db);

    let oidc = w.add_oidc(linking()).await;
    let err = w.idps.start_ldap(&w.client, oidc.id.as_str(), "alice", "right").await.unwrap_err();
    assert_eq!((err.id(), field(&err)), (IDP_TYPE_NOT_IMPLEMENTED, "ldap".to_owned()));
}

// ------------------------------------------------------------------------------------------ links and creation

#[tokio::test]
async fn links_need_the_user_or_user_write_and_a_linking_idp() {
    let w = World::new().await;
    let idp = w.add_oidc(linking()).await;
    let alice = ctx("alice", &w.org, vec![], vec![]);
    w.idps.add_link(&alice, &w.alice, idp.id.as_str(), "ext-1", "alice@corp").await.unwrap();
    let err = w.idps.add_link(&alice, &w.bob, idp.id.as_str(), "ext-2", "").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let other_owner =
        ctx("owner", &OrgId::from("org-other"), vec![], vec![(OrgId::from("org-other"), vec![Role::OrgOwner])]);
    w.idps.add_link(&other_owner, &w.bob, idp.id.as_str(), "ext-2", "").await.unwrap();
    assert_eq!(
        w.idps.add_link(&other_owner, &w.alice, idp.id.as_str(), "ext-3", "").await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );

    let err = w.idps.add_link(&w.admin, &w.bob, idp.id.as_str(), "ext-1", "").await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::AlreadyExists, IDP_LINK_EXISTS.to_owned()), "one account, one user");
    let err = w.idps.add_link(&w.admin, &UserId::from("ghost"), idp.id.as_str(), "ext-9", "").await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::NotFound, USER_NOT_FOUND.to_owned()));
    let err = w.idps.add_link(&w.admin, &w.alice, idp.id.as_str(), "", "").await.unwrap_err();
    assert_eq!(field(&err), "idp_link.user_id");

    let closed = w.add_oidc(ProviderOptions::default()).await;
    let err = w.idps.add_link(&w.admin, &w.alice, closed.id.as_str(), "ext-4", "").await.unwrap_err();
    assert_eq!(err.id(), IDP_LINKING_NOT_ALLOWED);
    w.idps.deactivate_idp(&w.admin, &idp.id).await.unwrap();
    let err = w.idps.add_link(&w.admin, &w.alice, idp.id.as_str(), "ext-5", "").await.unwrap_err();
    assert_eq!(err.id(), IDP_INACTIVE);

    let page = w.idps.list_links(&alice, &w.alice, ListQuery::default()).await.unwrap();
    assert_eq!(page.items.iter().map(|l| l.external_user_id.as_str()).collect::<Vec<_>>(), ["ext-1"]);
    assert_eq!(
        w.idps.list_links(&alice, &w.bob, ListQuery::default()).await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        w.idps.remove_link(&alice, &w.bob, idp.id.as_str(), "ext-2").await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    w.idps.remove_link(&alice, &w.alice, idp.id.as_str(), "ext-1").await.unwrap();
    let err = w.idps.remove_link(&alice, &w.alice, idp.id.as_str(), "ext-1").await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::NotFound, IDP_LINK_NOT_FOUND.to_owned()));
}

#[tokio::test]
async fn auto_creation_makes_one_user_with_a_link() {
    let w = World::new().await;
    let options = ProviderOptions { is_creation_allowed: true, is_auto_creation: true, ..ProviderOptions::default() };
    let idp = w.add_oidc(options).await;
    let state = w.start(&idp).await;
    let (_, query) = redirected(&w.callback(&state, "new").await);
    let created = UserId::from(query["user"].as_str());
    let user = w.identity.find_user(&created).await.unwrap().expect("created");
    assert_eq!(user.org_id, w.org, "the default org");
    assert_eq!(user.username, "ext-new-login");
    let UserKind::Human(h) = &user.kind else { panic!("human expected") };
    assert_eq!((h.email.address.as_str(), h.email.verified), ("new@example.com", true));
    assert_eq!((h.profile.given_name.as_str(), h.profile.family_name.as_str()), ("Ext", "User"));
    {
        let db = w.fake.db.lock().await;
        assert_eq!(db.links.len(), 1);
        assert_eq!((db.links[0].user_id.clone(), db.links[0].external_user_id.as_str()), (created.clone(), "ext-new"));
    }
    // The next login of the same account finds the link; no second user.
    let state = w.start(&idp).await;
    let (_, query) = redirected(&w.callback(&state, "new").await);
    assert_eq!(query["user"], created.as_str());
    assert_eq!(w.fake.db.lock().await.users.len(), 3);

    // Without an e-mail address there is nothing valid to create: success without a user.
    let state = w.start(&idp).await;
    let (_, query) = redirected(&w.callback(&state, "no-mail").await);
    assert!(query.contains_key("token") && !query.contains_key("user"));

    // Auto-creation needs creation allowed too.
    let half = w.add_oidc(ProviderOptions { is_auto_creation: true, ..ProviderOptions::default() }).await;
    let state = w.start(&half).await;
    let (_, query) = redirected(&w.callback(&state, "new").await);
    assert!(!query.contains_key("user"));
}

#[tokio::test]
async fn add_human_with_links_checks_idps_and_writes_once() {
    let w = World::new().await;
    let idp = w.add_oidc(ProviderOptions { is_creation_allowed: true, ..ProviderOptions::default() }).await;
    let new = |links: Vec<NewUserIdpLink>| NewHuman {
        org_id: None,
        user_id: None,
        username: Some(format!("u{}", links.len())),
        profile: Profile {
            given_name: "G".to_owned(),
            family_name: "F".to_owned(),
            display_name: String::new(),
            preferred_language: String::new(),
        },
        email: Email { address: "g@example.com".to_owned(), verified: false },
        phone: None,
        password: None,
        idp_links: links,
    };
    let link = |idp: &str, ext: &str| NewUserIdpLink {
        idp_id: IdpId::from(idp),
        external_user_id: ext.to_owned(),
        external_username: String::new(),
    };
    let err = w.identity.add_human(&w.admin, new(vec![link("unknown", "e1")])).await.unwrap_err();
    assert_eq!(field(&err), "idp_links[0].idp_id");
    let err = w
        .identity
        .add_human(&w.admin, new(vec![link(idp.id.as_str(), "e1"), link(idp.id.as_str(), "e1")]))
        .await
        .unwrap_err();
    assert_eq!(field(&err), "idp_links[1]");
    let user = w.identity.add_human(&w.admin, new(vec![link(idp.id.as_str(), "e1")])).await.unwrap();
    let links = w.idps.list_links(&w.admin, &user.id, ListQuery::default()).await.unwrap();
    assert_eq!(links.items.len(), 1);
    let err = w.identity.add_human(&w.admin, new(vec![link(idp.id.as_str(), "e1")])).await.unwrap_err();
    assert_eq!(kind_id(&err), (ErrorKind::AlreadyExists, IDP_LINK_EXISTS.to_owned()));
    assert_eq!(w.idps.check_new_links(&[link(idp.id.as_str(), "e2")]).await.map_err(|e| e.id().to_owned()), Ok(()));

    // Without the check, links are refused rather than written unchecked.
    let fake = w.fake.clone();
    let repos =
        Repos { orgs: fake.clone(), users: fake.clone(), tokens: fake.clone(), members: fake.clone(), instance: fake };
    let bare =
        Identity::new(IdentityConfig::default(), repos, w.clock.clone(), Arc::new(Ids(AtomicU64::new(900)))).unwrap();
    let err = bare.add_human(&w.admin, new(vec![link(idp.id.as_str(), "e3")])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
}
