//! The identity use cases: authentication, bootstrap, organizations, users, tokens and members.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::authz::{CallContext, Permission, Principal};
use super::cache::{DEFAULT_PRINCIPAL_TTL, PrincipalCache, UserKey};
use super::model::{
    Email, Machine, Member, MemberScope, OrgFilter, OrgId, OrgState, Organization, Page, PersonalAccessToken, Phone,
    Profile, Role, TokenId, User, UserFilter, UserId, UserSort, UserState, org_primary_domain,
};
use super::password::{HashingConfig, PasswordHasher, PasswordPolicy, is_importable_hash};
use super::ports::SessionTokenResolver;
use super::ports::{
    BootstrapRecord, Clock, ExternalTokenVerifier, HumanChange, IdGenerator, IdpLinkCheck, ListQuery, NewOrgRecord,
    NewTokenRecord, NewUserIdpLink, NewUserKind, NewUserRecord, NoopLifecycleHook, ORG_NOT_FOUND, OrgStateChange,
    Repos, SYSTEM_ACTOR, USER_NOT_FOUND, UserLifecycleHook, UserStateChange,
};
use super::token::{PAT_PREFIX, bearer_token, generate_pat, is_well_formed_pat, token_hash};
use super::validate::{self, MAX_DESCRIPTION, MAX_TEXT, Violations};
use crate::event::Details;
use crate::session::token::SESSION_TOKEN_PREFIX;
use crate::{Error, ErrorKind, Result};

/// Error id: Unauthenticated, the bearer token is missing, malformed, unknown, expired or its owner disabled.
pub const AUTH_TOKEN_INVALID: &str = "AUTH-token-invalid";
/// Error id: PermissionDenied, the org named by the request header is unknown or not the caller's to act on.
pub const AUTH_ORG_DENIED: &str = "AUTH-org-denied";
/// Name of the organization the first start creates.
pub const DEFAULT_ORG_NAME: &str = "flowgate";
/// Username of the admin machine user the first start creates.
pub const ADMIN_USERNAME: &str = "admin";

/// Settings of the identity use cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// Domain under which org domains are formed (`<slug>.<this>`); default `localhost`.
    pub external_domain: String,
    /// Rules for new passwords.
    pub password_policy: PasswordPolicy,
    /// argon2id parameters and hashing pool size.
    pub hashing: HashingConfig,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            external_domain: "localhost".to_owned(),
            password_policy: PasswordPolicy::default(),
            hashing: HashingConfig::default(),
        }
    }
}

/// A human user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHuman {
    /// Target org; default: the org the call acts on.
    pub org_id: Option<OrgId>,
    /// Client-chosen id (1..=200 chars); generated when `None`.
    pub user_id: Option<String>,
    /// Username; default: the e-mail address.
    pub username: Option<String>,
    /// Names.
    pub profile: Profile,
    /// E-mail address.
    pub email: Email,
    /// Phone, if any.
    pub phone: Option<Phone>,
    /// Initial password, if any.
    pub password: Option<NewPassword>,
    /// Accounts at IdPs to link in the same write (checked through the [`IdpLinkCheck`] port).
    pub idp_links: Vec<NewUserIdpLink>,
}

/// An initial password: clear text (hashed here) or an imported hash.
#[derive(Clone, PartialEq, Eq)]
pub enum NewPassword {
    /// Clear text, checked against the policy and hashed with argon2id.
    Plain {
        /// The password.
        password: String,
        /// Whether it must be changed at the next login.
        change_required: bool,
    },
    /// An argon2 PHC or bcrypt hash, stored as is (rehashed after the first successful verify).
    Hashed {
        /// The hash.
        hash: String,
        /// Whether it must be changed at the next login.
        change_required: bool,
    },
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs.
        match self {
            NewPassword::Plain { change_required, .. } => {
                f.debug_struct("Plain").field("change_required", change_required).finish_non_exhaustive()
            }
            NewPassword::Hashed { change_required, .. } => {
                f.debug_struct("Hashed").field("change_required", change_required).finish_non_exhaustive()
            }
        }
    }
}

/// A machine user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMachine {
    /// Target org; default: the org the call acts on.
    pub org_id: Option<OrgId>,
    /// Client-chosen id (1..=200 chars); generated when `None`.
    pub user_id: Option<String>,
    /// Username.
    pub username: String,
    /// Name, 1..=200 chars.
    pub name: String,
    /// Description, ≤ 500 chars.
    pub description: String,
}

/// Changes to a human user; `None` = unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HumanUpdate {
    /// New username.
    pub username: Option<String>,
    /// New names (replaces the whole profile).
    pub profile: Option<Profile>,
    /// New e-mail.
    pub email: Option<Email>,
    /// `Some(None)` removes the phone.
    pub phone: Option<Option<Phone>>,
    /// A new password, checked (policy, permission, current password, hashing capacity) before anything
    /// of the update is written, so a refused password leaves the profile untouched.
    pub password: Option<PasswordChange>,
}

/// A password change requested together with other changes of a user.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordChange {
    /// The new password.
    pub password: String,
    /// Why the caller may set it.
    pub verification: PasswordVerification,
    /// Whether the user must change it at the next login.
    pub change_required: bool,
}

impl std::fmt::Debug for PasswordChange {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChange").field("change_required", &self.change_required).finish_non_exhaustive()
    }
}

/// Why the caller may set a password.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordVerification {
    /// The user's current password (users changing their own).
    CurrentPassword(String),
    /// An administrator with `user.credential.write` on the user's org.
    Administrator,
}

impl std::fmt::Debug for PasswordVerification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordVerification::CurrentPassword(_) => f.write_str("CurrentPassword(..)"),
            PasswordVerification::Administrator => f.write_str("Administrator"),
        }
    }
}

struct Inner {
    config: IdentityConfig,
    repos: Repos,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdGenerator>,
    hasher: PasswordHasher,
}

/// The identity use cases; cheap to clone, built once at start-up.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
    hook: Arc<dyn UserLifecycleHook>,
    external: Option<Arc<dyn ExternalTokenVerifier>>,
    session_tokens: Option<Arc<dyn SessionTokenResolver>>,
    idp_links: Option<Arc<dyn IdpLinkCheck>>,
    /// Shared by every clone, so an invalidation reaches all of them.
    principals: Arc<PrincipalCache>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("config", &self.inner.config)
            .field("hasher", &self.inner.hasher)
            .finish_non_exhaustive()
    }
}

fn not_found_user() -> Error {
    Error::new(ErrorKind::NotFound, USER_NOT_FOUND, "user not found")
}

fn not_found_org() -> Error {
    Error::new(ErrorKind::NotFound, ORG_NOT_FOUND, "organization not found")
}

fn token_invalid() -> Error {
    Error::new(ErrorKind::Unauthenticated, AUTH_TOKEN_INVALID, "the token is missing, invalid or expired")
}

fn org_denied() -> Error {
    Error::new(ErrorKind::PermissionDenied, AUTH_ORG_DENIED, "the organization is unknown or not accessible")
}

/// The profile with an empty display name replaced by "<given name> <family name>".
fn with_display_name(mut profile: Profile) -> Profile {
    if profile.display_name.trim().is_empty() {
        profile.display_name = format!("{} {}", profile.given_name.trim(), profile.family_name.trim());
    }
    profile
}

fn importable(hash: &str) -> std::result::Result<(), String> {
    if is_importable_hash(hash) {
        Ok(())
    } else {
        Err("must be an argon2id, argon2i or bcrypt ($2a$, $2b$, $2y$) hash within the cost limits".to_owned())
    }
}

fn precondition(id: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::FailedPrecondition, id, message)
}

impl Identity {
    /// The use cases over `repos`; fails when the hashing parameters are invalid.
    pub fn new(config: IdentityConfig, repos: Repos, clock: Arc<dyn Clock>, ids: Arc<dyn IdGenerator>) -> Result<Self> {
        let hasher = PasswordHasher::new(&config.hashing)?;
        Ok(Self {
            inner: Arc::new(Inner { config, repos, clock, ids, hasher }),
            hook: Arc::new(NoopLifecycleHook),
            external: None,
            session_tokens: None,
            idp_links: None,
            principals: Arc::new(PrincipalCache::new(DEFAULT_PRINCIPAL_TTL)),
        })
    }

    /// The same use cases with the PAT principal cache trusting entries for `ttl` (zero: no cache). Other
    /// replicas see a revoked token or a changed user only after this long; this process at once. Call it
    /// before cloning: clones made earlier keep the old cache.
    #[must_use]
    pub fn with_principal_cache_ttl(mut self, ttl: Duration) -> Self {
        self.principals = Arc::new(PrincipalCache::new(ttl));
        self
    }

    /// The same use cases, telling `hook` whenever a user is deactivated, locked or deleted.
    #[must_use]
    pub fn with_lifecycle_hook(mut self, hook: Arc<dyn UserLifecycleHook>) -> Self {
        self.hook = hook;
        self
    }

    /// The same use cases, also accepting bearer tokens of an external issuer that `verifier` checks.
    #[must_use]
    pub fn with_external_verifier(mut self, verifier: Arc<dyn ExternalTokenVerifier>) -> Self {
        self.external = Some(verifier);
        self
    }

    /// The same use cases, accepting IdP links on new human users after `check` approved them.
    #[must_use]
    pub fn with_idp_link_check(mut self, check: Arc<dyn IdpLinkCheck>) -> Self {
        self.idp_links = Some(check);
        self
    }

    /// The password hasher (and its pool), e.g. for the session use cases and metrics.
    pub fn hasher(&self) -> &PasswordHasher {
        &self.inner.hasher
    }

    fn repos(&self) -> &Repos {
        &self.inner.repos
    }

    fn new_id(&self) -> String {
        self.inner.ids.new_id()
    }

    // ---------------------------------------------------------------- authentication

    /// Resolves the caller from an `Authorization` header value: a personal access token, or (when an
    /// external verifier is set) a JWT of the external issuer whose subject is a flowgate user id. Missing,
    /// malformed, unknown, expired, revoked or owner/org-inactive ⇒ Unauthenticated [`AUTH_TOKEN_INVALID`]
    /// (one answer for all, whichever kind of token it was).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let token = authorization.and_then(bearer_token).ok_or_else(token_invalid)?;
        if token.starts_with(SESSION_TOKEN_PREFIX) {
            return self.authenticate_session_token(token).await;
        }
        if !token.starts_with(PAT_PREFIX)
            && token.bytes().filter(|b| *b == b'.').count() == 2
            && let Some(verifier) = &self.external
        {
            return self.authenticate_external(verifier.as_ref(), token).await;
        }
        if !is_well_formed_pat(token) {
            return Err(token_invalid());
        }
        let hash = token_hash(token);
        let ticket = match self.principals.get(&hash, self.inner.clock.now()) {
            Ok(principal) => return Ok(principal),
            Err(ticket) => ticket,
        };
        let owner = self.repos().tokens.find_by_hash(&hash).await?.ok_or_else(token_invalid)?;
        let now = self.inner.clock.now();
        let expired = owner.token.expiration.is_some_and(|at| at <= now);
        if expired || owner.user.state != UserState::Active || owner.org_state != OrgState::Active {
            return Err(token_invalid());
        }
        let principal = self.principal_of(owner.user.id, owner.user.org_id).await?;
        self.principals.put(ticket, &hash, &principal, owner.token.expiration, now);
        Ok(principal)
    }

    /// The caller named by the subject of an external token; the user and its org must be active, as for PATs.
    async fn authenticate_external(&self, verifier: &dyn ExternalTokenVerifier, token: &str) -> Result<Principal> {
        let subject = verifier.verify(token).await?.ok_or_else(token_invalid)?;
        let user = self.find_active_user(&UserId::from(subject)).await?.ok_or_else(token_invalid)?;
        self.principal_of(user.id, user.org_id).await
    }

    /// The principal of `user` in `org` with its current roles.
    async fn principal_of(&self, user_id: UserId, org_id: OrgId) -> Result<Principal> {
        let memberships = self.repos().members.of_user(&user_id).await?;
        let mut instance_roles = Vec::new();
        let mut org_roles = Vec::new();
        for Member { user_id: _, scope, roles, details: _ } in memberships {
            match scope {
                MemberScope::Instance => instance_roles.extend(roles),
                MemberScope::Org(org) => org_roles.push((org, roles)),
            }
        }
        Ok(Principal { user_id, org_id, instance_roles, org_roles })
    }

    /// The org a call acts on: `org_header` (when non-empty) or the caller's own org. An unknown org, or
    /// one where the caller holds no role (and no instance role) ⇒ PermissionDenied [`AUTH_ORG_DENIED`].
    pub async fn call_context(&self, principal: Principal, org_header: Option<&str>) -> Result<CallContext> {
        let org_id = match org_header.map(str::trim).filter(|h| !h.is_empty()) {
            None => principal.org_id.clone(),
            Some(header) => {
                let org_id = OrgId::from(header);
                // The same answer for unknown and forbidden orgs: no way to probe which org ids exist.
                let allowed = org_id == principal.org_id || principal.has_any_role_in(&org_id);
                if !allowed || self.repos().orgs.get(&org_id).await?.is_none() {
                    return Err(org_denied());
                }
                org_id
            }
        };
        Ok(CallContext { principal, org_id })
    }

    // ---------------------------------------------------------------- bootstrap

    /// On an empty instance: creates the default org, the admin machine user with IAM_OWNER and its PAT,
    /// answering the token once; `None` when the instance exists (also when another replica won the race).
    pub async fn bootstrap(&self) -> Result<Option<String>> {
        if self.repos().instance.exists().await? {
            return Ok(None);
        }
        let org_id = OrgId::from(self.new_id());
        let admin_id = UserId::from(self.new_id());
        let generated = generate_pat()?;
        let record = BootstrapRecord {
            org: NewOrgRecord {
                id: org_id.clone(),
                name: DEFAULT_ORG_NAME.to_owned(),
                primary_domain: org_primary_domain(DEFAULT_ORG_NAME, &self.inner.config.external_domain),
            },
            admin: NewUserRecord {
                id: admin_id.clone(),
                org_id,
                username: ADMIN_USERNAME.to_owned(),
                kind: NewUserKind::Machine(Machine {
                    name: "Administrator".to_owned(),
                    description: "created at the first start".to_owned(),
                }),
                idp_links: Vec::new(),
            },
            admin_roles: vec![Role::IamOwner],
            token: NewTokenRecord {
                id: TokenId::from(self.new_id()),
                user_id: admin_id,
                token_hash: generated.hash.clone(),
                expiration: None,
            },
        };
        match self.repos().instance.bootstrap(&record).await {
            Ok(()) => Ok(Some(generated.token)),
            // A concurrent replica created the instance (or its default org) first.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A new PAT for an existing machine user named by id or login name (admin CLI; no caller).
    pub async fn create_token_for(&self, user: &str, expires_in: Option<Duration>) -> Result<(TokenId, String)> {
        let found = match self.repos().users.get(&UserId::from(user)).await? {
            Some(u) => Some(u),
            None => self.repos().users.find_by_login_name(user).await?,
        };
        let found = found.ok_or_else(not_found_user)?;
        if !found.is_machine() {
            return Err(precondition("USER-not-machine", "personal access tokens are for machine users only"));
        }
        let expiration = match expires_in {
            None => None,
            Some(d) => {
                let d = chrono::Duration::from_std(d)
                    .map_err(|_| Error::invalid_field("PAT-invalid", "expires_in", "is too long"))?;
                Some(
                    self.inner
                        .clock
                        .now()
                        .checked_add_signed(d)
                        .ok_or_else(|| Error::invalid_field("PAT-invalid", "expires_in", "is too long"))?,
                )
            }
        };
        let (pat, token) = self.issue_pat(&found.id, expiration, SYSTEM_ACTOR).await?;
        Ok((pat.id, token))
    }

    async fn issue_pat(
        &self,
        user: &UserId,
        expiration: Option<DateTime<Utc>>,
        actor: &str,
    ) -> Result<(PersonalAccessToken, String)> {
        let generated = generate_pat()?;
        let record = NewTokenRecord {
            id: TokenId::from(self.new_id()),
            user_id: user.clone(),
            token_hash: generated.hash.clone(),
            expiration,
        };
        let pat = self.repos().tokens.create(&record, actor).await?;
        Ok((pat, generated.token))
    }

    // ---------------------------------------------------------------- organizations

    /// Creates an org (`org.create` on the instance); name 1..=200 after trimming, unique ignoring case.
    pub async fn add_org(&self, ctx: &CallContext, name: &str) -> Result<Organization> {
        ctx.require_instance(Permission::OrgCreate)?;
        let name = name.trim();
        let mut v = Violations::new();
        v.check("name", validate::required_text(name, MAX_TEXT));
        v.finish("ORG-invalid")?;
        let record = NewOrgRecord {
            id: OrgId::from(self.new_id()),
            name: name.to_owned(),
            primary_domain: org_primary_domain(name, &self.inner.config.external_domain),
        };
        self.repos().orgs.create(&record, ctx.actor()).await
    }

    /// The org, when the caller has `org.read` in it; else NotFound.
    pub async fn get_org(&self, ctx: &CallContext, id: &OrgId) -> Result<Organization> {
        // Checked before the lookup, so the answer says nothing about whether the org exists.
        ctx.require(Permission::OrgRead, id)?;
        self.repos().orgs.get(id).await?.ok_or_else(not_found_org)
    }

    /// Orgs matching `filters` among those the caller may read.
    pub async fn list_orgs(
        &self,
        ctx: &CallContext,
        mut filters: Vec<OrgFilter>,
        q: ListQuery,
    ) -> Result<Page<Organization>> {
        let q = validate::list_query(q)?;
        if let Some(orgs) = ctx.principal.orgs_with(Permission::OrgRead) {
            if orgs.is_empty() {
                return Ok(Page { items: Vec::new(), total: 0 });
            }
            filters.push(OrgFilter::Ids(orgs));
        }
        self.repos().orgs.list(&filters, &q).await
    }

    /// Deactivates an active org (`org.write`); already inactive ⇒ FailedPrecondition.
    pub async fn deactivate_org(&self, ctx: &CallContext, id: &OrgId) -> Result<Details> {
        self.change_org_state(ctx, id, OrgStateChange::Deactivate).await
    }

    /// Reactivates an inactive org (`org.write`); already active ⇒ FailedPrecondition.
    pub async fn reactivate_org(&self, ctx: &CallContext, id: &OrgId) -> Result<Details> {
        self.change_org_state(ctx, id, OrgStateChange::Reactivate).await
    }

    async fn change_org_state(&self, ctx: &CallContext, id: &OrgId, change: OrgStateChange) -> Result<Details> {
        let org = self.get_org(ctx, id).await?;
        ctx.require(Permission::OrgWrite, id)?;
        let applies = match change {
            OrgStateChange::Deactivate => org.state == OrgState::Active,
            OrgStateChange::Reactivate => org.state == OrgState::Inactive,
        };
        if !applies {
            return Err(precondition("ORG-state", &format!("the organization is already {}", org.state.as_str())));
        }
        if change == OrgStateChange::Deactivate && org.id == ctx.principal.org_id {
            return Err(precondition("ORG-own", "the caller's own organization cannot be deactivated"));
        }
        let written = self.repos().orgs.set_state(id, change, ctx.actor()).await;
        // After the write, whatever its outcome (a failed commit may still have applied).
        self.principals.invalidate_all();
        written
    }

    /// Deletes an org (`org.delete`) with its users, tokens and memberships; the caller's own org cannot be.
    pub async fn delete_org(&self, ctx: &CallContext, id: &OrgId) -> Result<Details> {
        self.get_org(ctx, id).await?;
        ctx.require(Permission::OrgDelete, id)?;
        if *id == ctx.principal.org_id {
            return Err(precondition("ORG-own", "the caller's own organization cannot be deleted"));
        }
        let users = self.user_ids_of_org(id).await?;
        let written = self.repos().orgs.delete(id, ctx.actor()).await;
        self.principals.invalidate_all();
        let details = written?;
        for user in &users {
            self.hook.on_user_disabled(user).await?;
        }
        Ok(details)
    }

    async fn user_ids_of_org(&self, org: &OrgId) -> Result<Vec<UserId>> {
        let filters = [UserFilter::Org(org.clone())];
        let mut ids = Vec::new();
        let mut offset = 0;
        loop {
            let q = ListQuery { offset, limit: validate::MAX_LIMIT, asc: true };
            let page = self.repos().users.list(&filters, UserSort::CreationDate, &q).await?;
            let n = page.items.len();
            ids.extend(page.items.into_iter().map(|u| u.id));
            offset += n as u64;
            if n == 0 || offset >= page.total {
                return Ok(ids);
            }
        }
    }

    // ---------------------------------------------------------------- users

    /// The org a new user goes to, after checking `user.write` there and that it exists and is active.
    async fn target_org(&self, ctx: &CallContext, org: Option<OrgId>) -> Result<OrgId> {
        let org = org.unwrap_or_else(|| ctx.org_id.clone());
        ctx.require(Permission::UserWrite, &org)?;
        let found = self.repos().orgs.get(&org).await?.ok_or_else(not_found_org)?;
        if found.state != OrgState::Active {
            return Err(precondition("ORG-inactive", "the organization is inactive"));
        }
        Ok(org)
    }

    fn user_id_or_new(&self, v: &mut Violations, user_id: Option<String>) -> UserId {
        match user_id {
            Some(id) => {
                v.check("user_id", validate::id(&id));
                UserId::from(id)
            }
            None => UserId::from(self.new_id()),
        }
    }

    /// Creates a human user (`user.write` in the target org), hashing a clear-text password.
    pub async fn add_human(&self, ctx: &CallContext, new: NewHuman) -> Result<User> {
        let NewHuman { org_id, user_id, username, profile, email, phone, password, idp_links } = new;
        let org_id = self.target_org(ctx, org_id).await?;
        let mut v = Violations::new();
        let id = self.user_id_or_new(&mut v, user_id);
        // A defaulted username is the address, which the email check below covers.
        if let Some(username) = &username {
            v.check("username", validate::username(username));
        }
        let username = username.unwrap_or_else(|| email.address.clone());
        validate::profile(&mut v, "profile", &profile);
        validate::email_field(&mut v, "email", &email);
        if let Some(phone) = &phone {
            validate::phone_field(&mut v, "phone", phone);
        }
        match &password {
            None => {}
            Some(NewPassword::Plain { password, change_required: _ }) => {
                v.check("password.password", self.inner.config.password_policy.check(password));
            }
            Some(NewPassword::Hashed { hash, change_required: _ }) => {
                v.check("hashed_password.hash", importable(hash));
            }
        }
        validate::idp_links(&mut v, &idp_links);
        v.finish("USER-invalid")?;
        if !idp_links.is_empty() {
            let check = self.idp_links.as_ref().ok_or_else(|| {
                precondition("USER-idp-links-unavailable", "IdP links are not available on this server")
            })?;
            check.check_new_links(&idp_links).await?;
        }
        let (hash, change_required) = match password {
            None => (None, false),
            // Hashed only after every cheap check passed: hashing is the expensive part.
            Some(NewPassword::Plain { password, change_required }) => {
                (Some(self.inner.hasher.hash(&password).await?), change_required)
            }
            Some(NewPassword::Hashed { hash, change_required }) => (Some(hash), change_required),
        };
        let record = NewUserRecord {
            id,
            org_id,
            username,
            kind: NewUserKind::Human {
                profile: with_display_name(profile),
                email,
                phone,
                password_change_required: change_required,
            },
            idp_links,
        };
        self.repos().users.create(&record, hash.as_deref(), ctx.actor()).await
    }

    /// Creates a machine user (`user.write` in the target org).
    pub async fn add_machine(&self, ctx: &CallContext, new: NewMachine) -> Result<User> {
        let NewMachine { org_id, user_id, username, name, description } = new;
        let org_id = self.target_org(ctx, org_id).await?;
        let mut v = Violations::new();
        let id = self.user_id_or_new(&mut v, user_id);
        v.check("username", validate::username(&username));
        v.check("name", validate::required_text(&name, MAX_TEXT));
        v.check("description", validate::optional_text(&description, MAX_DESCRIPTION));
        v.finish("USER-invalid")?;
        let record = NewUserRecord {
            id,
            org_id,
            username,
            kind: NewUserKind::Machine(Machine { name, description }),
            idp_links: Vec::new(),
        };
        self.repos().users.create(&record, None, ctx.actor()).await
    }

    /// The user, when the caller has `user.read` in its org (or is the user); a missing user is NotFound
    /// [`USER_NOT_FOUND`], one of an org the caller may not read is PermissionDenied.
    pub async fn get_user(&self, ctx: &CallContext, id: &UserId) -> Result<User> {
        self.visible_user(ctx, id, Permission::UserRead).await
    }

    /// The user when the caller holds `perm` in its org (or it is the caller). Like ZITADEL, a user of
    /// another organization is PermissionDenied rather than NotFound: ids are random, so the answer
    /// reveals nothing a caller could enumerate, and operators can tell "wrong org" from "gone".
    async fn visible_user(&self, ctx: &CallContext, id: &UserId, perm: Permission) -> Result<User> {
        let user = self.repos().users.get(id).await?.ok_or_else(not_found_user)?;
        if user.id != ctx.principal.user_id {
            ctx.require(perm, &user.org_id)?;
        }
        Ok(user)
    }

    /// The user for a change needing `perm`: NotFound when missing, PermissionDenied unless `perm`.
    async fn user_for_change(&self, ctx: &CallContext, id: &UserId, perm: Permission) -> Result<User> {
        let user = self.repos().users.get(id).await?.ok_or_else(not_found_user)?;
        ctx.require(perm, &user.org_id)?;
        Ok(user)
    }

    /// Users matching `filters` among the orgs the caller may read users of.
    pub async fn list_users(
        &self,
        ctx: &CallContext,
        mut filters: Vec<UserFilter>,
        sort: UserSort,
        q: ListQuery,
    ) -> Result<Page<User>> {
        let q = validate::list_query(q)?;
        if let Some(orgs) = ctx.principal.orgs_with(Permission::UserRead) {
            if orgs.is_empty() {
                return Ok(Page { items: Vec::new(), total: 0 });
            }
            filters.push(UserFilter::Orgs(orgs));
        }
        self.repos().users.list(&filters, sort, &q).await
    }

    /// Changes username, profile, e-mail and/or phone of a human user (`user.write`).
    pub async fn update_human(&self, ctx: &CallContext, id: &UserId, update: HumanUpdate) -> Result<Details> {
        let user = self.user_for_change(ctx, id, Permission::UserWrite).await?;
        if user.is_machine() {
            return Err(precondition("USER-not-human", "the user is not a human user"));
        }
        let HumanUpdate { username, profile, email, phone, password } = update;
        let mut v = Violations::new();
        if let Some(username) = &username {
            v.check("username", validate::username(username));
        }
        if let Some(profile) = &profile {
            validate::profile(&mut v, "profile", profile);
        }
        if let Some(email) = &email {
            validate::email_field(&mut v, "email", email);
        }
        if let Some(Some(phone)) = &phone {
            validate::phone_field(&mut v, "phone", phone);
        }
        if let Some(change) = &password {
            v.check("password.password.password", self.inner.config.password_policy.check(&change.password));
        }
        v.finish("USER-invalid")?;
        // Everything that can refuse the password runs before the first write.
        let new_hash = match &password {
            Some(change) => Some(self.prepare_password(ctx, &user, change, "password.password").await?),
            None => None,
        };
        let change = HumanChange { username, profile: profile.map(with_display_name), email, phone };
        let mut details = if change.is_empty() {
            user.details.clone()
        } else {
            self.changing_user(id, self.repos().users.update_human(id, &change, ctx.actor())).await?
        };
        if let (Some(hash), Some(change)) = (new_hash, password) {
            let written = self.repos().users.set_password(id, &hash, change.change_required, ctx.actor());
            details = self.changing_user(id, written).await?;
        }
        Ok(details)
    }

    /// Runs `write`, a change of user `id`, then makes the cache forget the user whatever the outcome (a
    /// failed commit may still have applied). A lookup racing the write cannot store what it read.
    async fn changing_user<T>(&self, id: &UserId, write: impl Future<Output = Result<T>>) -> Result<T> {
        let written = write.await;
        self.principals.invalidate_user(id);
        written
    }

    /// Sets the password of a human user: the user itself with its current password, or a caller with
    /// `user.credential.write` on the user's org. The new password is checked before any hashing.
    pub async fn set_password(
        &self,
        ctx: &CallContext,
        id: &UserId,
        new_password: &str,
        verification: PasswordVerification,
        change_required: bool,
    ) -> Result<Details> {
        let own = *id == ctx.principal.user_id;
        let user = if own {
            self.repos().users.get(id).await?.ok_or_else(not_found_user)?
        } else {
            self.user_for_change(ctx, id, Permission::UserCredentialWrite).await?
        };
        if user.is_machine() {
            return Err(precondition("USER-not-human", "the user is not a human user"));
        }
        let change = PasswordChange { password: new_password.to_owned(), verification, change_required };
        let hash = self.prepare_password(ctx, &user, &change, "new_password").await?;
        self.changing_user(id, self.repos().users.set_password(id, &hash, change_required, ctx.actor())).await
    }

    /// Checks a new password (policy, then the current password or the caller's permission) and hashes
    /// it; writes nothing. `field` is the request path of the `Password` message, for error messages.
    async fn prepare_password(
        &self,
        ctx: &CallContext,
        user: &User,
        change: &PasswordChange,
        field: &str,
    ) -> Result<String> {
        let policy = &self.inner.config.password_policy;
        policy
            .check(&change.password)
            .map_err(|d| Error::invalid_field("PASSWORD-invalid", format!("{field}.password"), d))?;
        match &change.verification {
            PasswordVerification::CurrentPassword(current) => {
                if !self.check_current_password(&user.id, current).await? {
                    return Err(Error::invalid_field("PASSWORD-current-invalid", "current_password", "does not match"));
                }
            }
            PasswordVerification::Administrator => ctx.require(Permission::UserCredentialWrite, &user.org_id)?,
        }
        self.inner.hasher.hash(&change.password).await
    }

    async fn check_current_password(&self, id: &UserId, current: &str) -> Result<bool> {
        if current.len() > self.inner.config.password_policy.max_length {
            // Cannot be the stored one (it passed the policy) and must not cost a hash.
            return Ok(false);
        }
        self.verify_password(id, current).await
    }

    /// Whether `password` is the user's password. Unknown users and users without a password cost one
    /// dummy verify; a legacy or weaker hash is replaced by an argon2id one after a successful verify.
    pub async fn verify_password(&self, user_id: &UserId, password: &str) -> Result<bool> {
        let hasher = &self.inner.hasher;
        if password.len() > self.inner.config.password_policy.max_length {
            // Refused before hashing (hash DoS); such a password was never accepted by the policy.
            return Ok(false);
        }
        let Some(stored) = self.repos().users.password_hash(user_id).await? else {
            return hasher.dummy_verify(password).await;
        };
        if !hasher.verify(password, &stored).await? {
            return Ok(false);
        }
        if hasher.needs_rehash(&stored) {
            // Best effort: the login succeeded either way, and the next successful login tries again
            // (e.g. when the pool is busy right now or a concurrent change replaced the hash).
            if let Ok(new_hash) = hasher.hash(password).await {
                let replaced = self.repos().users.replace_password_hash(user_id, &stored, &new_hash, user_id.as_str());
                let _ = self.changing_user(user_id, replaced).await;
            }
        }
        Ok(true)
    }

    /// Deactivates an active user (`user.write`); tells the lifecycle hook.
    pub async fn deactivate_user(&self, ctx: &CallContext, id: &UserId) -> Result<Details> {
        self.change_user_state(ctx, id, UserStateChange::Deactivate).await
    }

    /// Reactivates an inactive user (`user.write`).
    pub async fn reactivate_user(&self, ctx: &CallContext, id: &UserId) -> Result<Details> {
        self.change_user_state(ctx, id, UserStateChange::Reactivate).await
    }

    /// Locks an active user (`user.write`); tells the lifecycle hook.
    pub async fn lock_user(&self, ctx: &CallContext, id: &UserId) -> Result<Details> {
        self.change_user_state(ctx, id, UserStateChange::Lock).await
    }

    /// Unlocks a locked user (`user.write`).
    pub async fn unlock_user(&self, ctx: &CallContext, id: &UserId) -> Result<Details> {
        self.change_user_state(ctx, id, UserStateChange::Unlock).await
    }

    async fn change_user_state(&self, ctx: &CallContext, id: &UserId, change: UserStateChange) -> Result<Details> {
        let user = self.user_for_change(ctx, id, Permission::UserWrite).await?;
        let (from, message) = match change {
            UserStateChange::Deactivate => (UserState::Active, "the user is not active"),
            UserStateChange::Reactivate => (UserState::Inactive, "the user is not inactive"),
            UserStateChange::Lock => (UserState::Active, "the user is not active"),
            UserStateChange::Unlock => (UserState::Locked, "the user is not locked"),
        };
        if user.state != from {
            return Err(precondition("USER-state", message));
        }
        let disables = match change {
            UserStateChange::Deactivate | UserStateChange::Lock => true,
            UserStateChange::Reactivate | UserStateChange::Unlock => false,
        };
        if disables && user.id == ctx.principal.user_id {
            return Err(precondition("USER-self", "callers cannot disable themselves"));
        }
        let written = self.repos().users.set_state(id, change, ctx.actor()).await;
        self.principals.invalidate_user(id);
        let details = written?;
        if disables {
            self.hook.on_user_disabled(id).await?;
        }
        Ok(details)
    }

    /// Deletes a user with its tokens and memberships (`user.delete`); tells the lifecycle hook.
    pub async fn delete_user(&self, ctx: &CallContext, id: &UserId) -> Result<Details> {
        self.user_for_change(ctx, id, Permission::UserDelete).await?;
        if *id == ctx.principal.user_id {
            return Err(precondition("USER-self", "callers cannot delete themselves"));
        }
        let written = self.repos().users.delete(id, ctx.actor()).await;
        self.principals.invalidate_user(id);
        let details = written?;
        self.hook.on_user_disabled(id).await?;
        Ok(details)
    }

    // ---------------------------------------------------------------- personal access tokens

    /// The machine user `id` for a token operation: its own tokens for the caller, else `perm` in its org.
    async fn machine_for_tokens(&self, ctx: &CallContext, id: &UserId, perm: Permission) -> Result<User> {
        let user = if *id == ctx.principal.user_id {
            self.repos().users.get(id).await?.ok_or_else(not_found_user)?
        } else {
            self.user_for_change(ctx, id, perm).await?
        };
        if !user.is_machine() {
            return Err(precondition("USER-not-machine", "personal access tokens are for machine users only"));
        }
        Ok(user)
    }

    /// Creates a PAT for a machine user (own, or `user.credential.write`); answers the token once.
    pub async fn add_pat(
        &self,
        ctx: &CallContext,
        user: &UserId,
        expiration: Option<DateTime<Utc>>,
    ) -> Result<(PersonalAccessToken, String)> {
        self.machine_for_tokens(ctx, user, Permission::UserCredentialWrite).await?;
        if let Some(at) = expiration
            && at <= self.inner.clock.now()
        {
            return Err(Error::invalid_field("PAT-invalid", "expiration_date", "must lie in the future"));
        }
        self.issue_pat(user, expiration, ctx.actor()).await
    }

    /// Lists the PATs of a user (own, or `user.read`).
    pub async fn list_pats(&self, ctx: &CallContext, user: &UserId, q: ListQuery) -> Result<Page<PersonalAccessToken>> {
        let q = validate::list_query(q)?;
        self.visible_user(ctx, user, Permission::UserRead).await?;
        self.repos().tokens.list(user, &q).await
    }

    /// Revokes a PAT (own, or `user.credential.write`).
    pub async fn remove_pat(&self, ctx: &CallContext, user: &UserId, token: &TokenId) -> Result<Details> {
        self.machine_for_tokens(ctx, user, Permission::UserCredentialWrite).await?;
        let written = self.repos().tokens.delete(user, token, ctx.actor()).await;
        // The digest of the removed token is unknown here: every entry of its owner goes.
        self.principals.invalidate_user(user);
        written
    }

    // ---------------------------------------------------------------- members

    fn require_scope(&self, ctx: &CallContext, perm: Permission, scope: &MemberScope) -> Result<()> {
        match scope {
            MemberScope::Instance => ctx.require_instance(perm),
            MemberScope::Org(org) => ctx.require(perm, org),
        }
    }

    /// Grants `roles` to `user` in `scope`, replacing earlier ones there (`member.write` on the scope).
    pub async fn add_member(
        &self,
        ctx: &CallContext,
        user: &UserId,
        scope: MemberScope,
        roles: Vec<Role>,
    ) -> Result<Details> {
        self.require_scope(ctx, Permission::MemberWrite, &scope)?;
        let mut v = Violations::new();
        if roles.is_empty() {
            v.add("roles", "must name at least one role");
        }
        for (i, role) in roles.iter().enumerate() {
            if roles[..i].contains(role) {
                v.add("roles", format!("{role} is given twice"));
            }
            let fits = match scope {
                MemberScope::Instance => role.is_instance_role(),
                MemberScope::Org(_) => !role.is_instance_role(),
            };
            if !fits {
                v.add("roles", format!("{role} cannot be granted on this resource"));
            }
        }
        v.finish("MEMBER-invalid")?;
        if let MemberScope::Org(org) = &scope {
            self.repos().orgs.get(org).await?.ok_or_else(not_found_org)?;
        }
        self.get_user(ctx, user).await?;
        let written = self.repos().members.set(user, &scope, &roles, ctx.actor()).await;
        self.principals.invalidate_user(user);
        written
    }

    /// Revokes all roles of `user` in `scope` (`member.write` on the scope); none held ⇒ NotFound.
    pub async fn remove_member(&self, ctx: &CallContext, user: &UserId, scope: MemberScope) -> Result<Details> {
        self.require_scope(ctx, Permission::MemberWrite, &scope)?;
        let written = self.repos().members.remove(user, &scope, ctx.actor()).await;
        self.principals.invalidate_user(user);
        written
    }

    /// The memberships in `scope` (`member.read` on the scope).
    pub async fn list_members(&self, ctx: &CallContext, scope: MemberScope, q: ListQuery) -> Result<Page<Member>> {
        let q = validate::list_query(q)?;
        self.require_scope(ctx, Permission::MemberRead, &scope)?;
        self.repos().members.list(&scope, &q).await
    }
}

// ---------------------------------------------------------------- support for the session use cases

impl Identity {
    /// The same use cases, also accepting session tokens (`fgs_…`) as bearer tokens through `resolver`.
    #[must_use]
    pub fn with_session_tokens(mut self, resolver: Arc<dyn SessionTokenResolver>) -> Self {
        self.session_tokens = Some(resolver);
        self
    }

    /// The caller behind a session token: its session must be valid and its user and org active.
    async fn authenticate_session_token(&self, token: &str) -> Result<Principal> {
        let resolver = self.session_tokens.as_ref().ok_or_else(token_invalid)?;
        let user_id = resolver.user_for_session_token(token).await?.ok_or_else(token_invalid)?;
        let user = self.find_active_user(&user_id).await?.ok_or_else(token_invalid)?;
        self.principal_of(user.id, user.org_id).await
    }

    /// The user with `id` without a permission check (for trusted use cases such as session checks).
    pub async fn find_user(&self, id: &UserId) -> Result<Option<User>> {
        self.repos().users.get(id).await
    }

    /// The user with the login name `login_name` (ignoring case), without a permission check.
    pub async fn find_user_by_login_name(&self, login_name: &str) -> Result<Option<User>> {
        self.repos().users.find_by_login_name(login_name).await
    }

    /// [`Self::find_user`] for sign-in checks and bearer authentication, which run on every login and call:
    /// answered from the principal cache for at most [`DEFAULT_PRINCIPAL_TTL`]. This process's own changes
    /// to the user are seen at once; another process's once it is announced through
    /// [`Self::user_changed`] (the cache must be [`Self::suspend_user_cache`]d while that cannot be
    /// heard). Callers that decide a write from the user read it with [`Self::find_user`].
    pub async fn sign_in_user(&self, id: &UserId) -> Result<Option<User>> {
        self.cached_user(UserKey::Id(id)).await
    }

    /// [`Self::find_user_by_login_name`] answered from the cache like [`Self::sign_in_user`].
    pub async fn sign_in_user_by_login_name(&self, login_name: &str) -> Result<Option<User>> {
        self.cached_user(UserKey::LoginName(login_name)).await
    }

    /// Forgets what this process remembers of user `id`, changed by another process (a replica).
    pub fn user_changed(&self, id: &UserId) {
        self.principals.invalidate_user(id);
    }

    /// Forgets every principal, org state and user this process remembers: an org was changed by another
    /// process (a replica), which touches all its users.
    pub fn org_changed(&self) {
        self.principals.invalidate_all();
    }

    /// Stops remembering users for sign-in checks (everything is read fresh): changes made by other
    /// processes can no longer be heard. PATs keep their TTL rule.
    pub fn suspend_user_cache(&self) {
        self.principals.suspend_users();
    }

    /// Remembers users for sign-in checks again: from now on every change made elsewhere is heard.
    pub fn resume_user_cache(&self) {
        self.principals.resume_users();
    }

    async fn cached_user(&self, key: UserKey<'_>) -> Result<Option<User>> {
        let ticket = match self.principals.user(key, self.inner.clock.now()) {
            Ok(user) => return Ok(Some(user)),
            Err(ticket) => ticket,
        };
        let found = match key {
            UserKey::Id(id) => self.repos().users.get(id).await?,
            UserKey::LoginName(name) => self.repos().users.find_by_login_name(name).await?,
        };
        if let Some(user) = &found {
            self.principals.put_user(ticket, key, user, self.inner.clock.now());
        }
        Ok(found)
    }

    /// The user with `id` when it and its org are active; `None` otherwise.
    pub async fn find_active_user(&self, id: &UserId) -> Result<Option<User>> {
        let Some(user) = self.sign_in_user(id).await? else {
            return Ok(None);
        };
        self.active(user).await
    }

    /// `user` when it and its org are active; `None` otherwise.
    pub async fn active(&self, user: User) -> Result<Option<User>> {
        if user.state != UserState::Active {
            return Ok(None);
        }
        let org_active = match self.principals.org_active(&user.org_id, self.inner.clock.now()) {
            Ok(active) => active,
            Err(ticket) => {
                let active = self.repos().orgs.get(&user.org_id).await?.is_some_and(|o| o.state == OrgState::Active);
                self.principals.put_org(ticket, &user.org_id, active, self.inner.clock.now());
                active
            }
        };
        Ok(org_active.then_some(user))
    }

    /// Locks an active user after too many failed attempts (event `user.locked`, creator [`SYSTEM_ACTOR`])
    /// and tells the lifecycle hook; answers whether it locked (false: not active any more, or gone).
    pub async fn lock_after_failed_attempts(&self, id: &UserId) -> Result<bool> {
        let Some(user) = self.find_user(id).await? else {
            return Ok(false);
        };
        if user.state != UserState::Active {
            return Ok(false);
        }
        let written = self.repos().users.set_state(id, UserStateChange::Lock, SYSTEM_ACTOR).await;
        self.principals.invalidate_user(id);
        match written {
            Ok(_) => {}
            // Deleted concurrently: nothing left to lock.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        self.hook.on_user_disabled(id).await?;
        Ok(true)
    }
}
