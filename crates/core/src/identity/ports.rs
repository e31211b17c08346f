//! Ports of the identity use cases: repositories (implemented by `flowgate-store`), clock, ids, hooks.
//!
//! Every mutating repository method is ONE event-log write: the new state rows and the listed events in
//! one transaction, aggregate = (`org` | `user` | `instance`, id), resource owner = the org id (or
//! [`INSTANCE_OWNER`]), creator = `actor`. Event payloads never contain passwords, hashes or tokens.
//! Records carry the ids the core generated; repositories never invent ids or apply business rules beyond
//! uniqueness (which only a database constraint can enforce race-free).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::model::{
    Email, Machine, Member, MemberScope, OrgFilter, OrgId, OrgState, Organization, Page, PersonalAccessToken, Phone,
    Profile, Role, TokenId, User, UserFilter, UserId, UserSort, UserState,
};
use crate::Result;
use crate::event::Details;
use crate::idp::model::IdpId;

pub use super::model::{INSTANCE_OWNER, ListQuery};

/// Creator of events written without a calling user (bootstrap, admin CLI).
pub const SYSTEM_ACTOR: &str = "system";

/// Error id: AlreadyExists, an org with the same lower-cased name exists.
pub const ORG_NAME_TAKEN: &str = "ORG-name-taken";
/// Error id: AlreadyExists, a user with the same lower-cased username exists (in the whole instance).
pub const USER_USERNAME_TAKEN: &str = "USER-username-taken";
/// Error id: AlreadyExists, a user with the same id exists (client-chosen ids).
pub const USER_ID_TAKEN: &str = "USER-id-taken";
/// Error id: AlreadyExists, the instance was bootstrapped already.
pub const INSTANCE_EXISTS: &str = "INSTANCE-exists";
/// Error id: NotFound, no such org.
pub const ORG_NOT_FOUND: &str = "ORG-not-found";
/// Error id: NotFound, no such user.
pub const USER_NOT_FOUND: &str = "USER-not-found";
/// Error id: NotFound, no such token (of that user).
pub const TOKEN_NOT_FOUND: &str = "TOKEN-not-found";
/// Error id: NotFound, no such membership.
pub const MEMBER_NOT_FOUND: &str = "MEMBER-not-found";

/// A new organization (state Active). Event `org.added` on (`org`, id), owner = id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrgRecord {
    /// Generated id.
    pub id: OrgId,
    /// Trimmed name; unique by `lower(name)` ⇒ AlreadyExists [`ORG_NAME_TAKEN`].
    pub name: String,
    /// Computed by the core (`model::org_primary_domain`).
    pub primary_domain: String,
}

/// A new user (state Active).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUserRecord {
    /// Generated or client-chosen id; a duplicate ⇒ AlreadyExists [`USER_ID_TAKEN`].
    pub id: UserId,
    /// Owning org (exists and was checked by the core).
    pub org_id: OrgId,
    /// Unique by `lower(username)` in the instance ⇒ AlreadyExists [`USER_USERNAME_TAKEN`].
    pub username: String,
    /// Human or machine data.
    pub kind: NewUserKind,
    /// Accounts at IdPs to link to the new user in the same write (humans only; checked by the core).
    pub idp_links: Vec<NewUserIdpLink>,
}

/// A link to an account at an IdP, written together with a new user (table `user_idp_links`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUserIdpLink {
    /// The IdP (exists and allows linking; checked by the core).
    pub idp_id: IdpId,
    /// Stable user id at the IdP; (idp, external user id) is unique.
    pub external_user_id: String,
    /// Username at the IdP (informational).
    pub external_username: String,
}

/// Kind-specific data of a new user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewUserKind {
    /// Event `user.human.added`. `password_set` = a hash was given; `password_changed` = the event time then.
    Human {
        /// Names.
        profile: Profile,
        /// E-mail address.
        email: Email,
        /// Phone, if any.
        phone: Option<Phone>,
        /// Whether the password must be changed at the next login.
        password_change_required: bool,
    },
    /// Event `user.machine.added`.
    Machine(Machine),
}

/// Changes to a human user; `None` = unchanged. Events, in this order, only for given parts:
/// `user.username.changed`, `user.profile.changed`, `user.email.changed`, `user.phone.changed`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HumanChange {
    /// New username; a duplicate (ignoring case, other user) ⇒ AlreadyExists [`USER_USERNAME_TAKEN`].
    pub username: Option<String>,
    /// New names.
    pub profile: Option<Profile>,
    /// New e-mail.
    pub email: Option<Email>,
    /// `Some(None)` removes the phone.
    pub phone: Option<Option<Phone>>,
}

impl HumanChange {
    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self.username.is_none() && self.profile.is_none() && self.email.is_none() && self.phone.is_none()
    }
}

/// A new personal access token. Event `user.pat.added` (payload: token id, expiration) on (`user`, user id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTokenRecord {
    /// Generated id.
    pub id: TokenId,
    /// The machine user (exists; checked by the core).
    pub user_id: UserId,
    /// Lower-case hex SHA-256 of the whole token string; unique.
    pub token_hash: String,
    /// When it stops working; `None` = never.
    pub expiration: Option<DateTime<Utc>>,
}

/// Everything the first start creates, written in ONE transaction by [`InstanceRepo::bootstrap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapRecord {
    /// The default organization.
    pub org: NewOrgRecord,
    /// The admin machine user in `org`.
    pub admin: NewUserRecord,
    /// Instance roles of the admin (IAM_OWNER).
    pub admin_roles: Vec<Role>,
    /// The admin's first token.
    pub token: NewTokenRecord,
}

/// A state transition of an org; the core has checked that it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgStateChange {
    /// Active → Inactive, event `org.deactivated`.
    Deactivate,
    /// Inactive → Active, event `org.reactivated`.
    Reactivate,
}

impl OrgStateChange {
    /// The state after the change.
    pub fn target(self) -> OrgState {
        match self {
            OrgStateChange::Deactivate => OrgState::Inactive,
            OrgStateChange::Reactivate => OrgState::Active,
        }
    }

    /// The event type to append.
    pub fn event_type(self) -> &'static str {
        match self {
            OrgStateChange::Deactivate => "org.deactivated",
            OrgStateChange::Reactivate => "org.reactivated",
        }
    }
}

/// A state transition of a user; the core has checked that it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStateChange {
    /// Active → Inactive, event `user.deactivated`.
    Deactivate,
    /// Inactive → Active, event `user.reactivated`.
    Reactivate,
    /// Active → Locked, event `user.locked`.
    Lock,
    /// Locked → Active, event `user.unlocked`.
    Unlock,
}

impl UserStateChange {
    /// The state after the change.
    pub fn target(self) -> UserState {
        match self {
            UserStateChange::Deactivate => UserState::Inactive,
            UserStateChange::Reactivate | UserStateChange::Unlock => UserState::Active,
            UserStateChange::Lock => UserState::Locked,
        }
    }

    /// The event type to append.
    pub fn event_type(self) -> &'static str {
        match self {
            UserStateChange::Deactivate => "user.deactivated",
            UserStateChange::Reactivate => "user.reactivated",
            UserStateChange::Lock => "user.locked",
            UserStateChange::Unlock => "user.unlocked",
        }
    }
}

/// A token found by its hash, with what authentication needs to know about its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    /// The token (never its secret).
    pub token: PersonalAccessToken,
    /// Its owner.
    pub user: User,
    /// State of the owner's org.
    pub org_state: OrgState,
}

/// Organizations.
#[async_trait]
pub trait OrgRepo: Send + Sync {
    /// Inserts the org; event `org.added` (payload: name, primary_domain). Duplicate name ⇒ [`ORG_NAME_TAKEN`].
    async fn create(&self, org: &NewOrgRecord, actor: &str) -> Result<Organization>;
    /// The org with `id`, if any.
    async fn get(&self, id: &OrgId) -> Result<Option<Organization>>;
    /// Orgs matching all `filters`, ordered by creation date (`q.asc`), then id; `q.limit` is 1..=1000.
    async fn list(&self, filters: &[OrgFilter], q: &ListQuery) -> Result<Page<Organization>>;
    /// Applies the state change; missing org ⇒ NotFound [`ORG_NOT_FOUND`].
    async fn set_state(&self, id: &OrgId, change: OrgStateChange, actor: &str) -> Result<Details>;
    /// Removes the org with all its users, their tokens and memberships (any scope), and the memberships in
    /// the org's scope; event `org.removed` on the org. Missing ⇒ NotFound [`ORG_NOT_FOUND`].
    async fn delete(&self, id: &OrgId, actor: &str) -> Result<Details>;
}

/// Users and their password hashes.
#[async_trait]
pub trait UserRepo: Send + Sync {
    /// Inserts the user (`password_hash` only for humans); event `user.human.added` / `user.machine.added`
    /// (payload without the hash). Duplicates ⇒ [`USER_USERNAME_TAKEN`] / [`USER_ID_TAKEN`]. In the same
    /// transaction, inserts `user.idp_links` with one `user.idp.link.added` event each (payload: idp_id,
    /// external_user_id, external_username) after the added event; a taken (idp, external user id) ⇒
    /// AlreadyExists [`IDP_LINK_EXISTS`](crate::idp::ports::IDP_LINK_EXISTS), a missing IdP ⇒ NotFound
    /// [`IDP_NOT_FOUND`](crate::idp::ports::IDP_NOT_FOUND) (and nothing is written).
    async fn create(&self, user: &NewUserRecord, password_hash: Option<&str>, actor: &str) -> Result<User>;
    /// The user with `id`, if any, with login names from [`super::model::login_names`].
    async fn get(&self, id: &UserId) -> Result<Option<User>>;
    /// The user one of whose login names equals `login_name` ignoring case (see [`UserFilter::LoginName`]).
    async fn find_by_login_name(&self, login_name: &str) -> Result<Option<User>>;
    /// Users matching all `filters`, ordered by `sort` (`q.asc`), then id; `q.limit` is 1..=1000.
    async fn list(&self, filters: &[UserFilter], sort: UserSort, q: &ListQuery) -> Result<Page<User>>;
    /// Applies the changes of a human user in one write. Missing ⇒ NotFound [`USER_NOT_FOUND`].
    async fn update_human(&self, id: &UserId, change: &HumanChange, actor: &str) -> Result<Details>;
    /// The stored password hash of a human user; `None` when the user is unknown or has no password.
    async fn password_hash(&self, id: &UserId) -> Result<Option<String>>;
    /// Stores a new password hash; event `user.password.changed` (payload: change_required).
    /// Sets `password_changed` to the event time. Missing ⇒ NotFound [`USER_NOT_FOUND`].
    async fn set_password(&self, id: &UserId, hash: &str, change_required: bool, actor: &str) -> Result<Details>;
    /// Replaces `old_hash` by `new_hash` only if `old_hash` is still stored (a concurrent change wins);
    /// event `user.password.rehashed` (empty payload); `password_changed` unchanged. Answers whether it replaced.
    async fn replace_password_hash(&self, id: &UserId, old_hash: &str, new_hash: &str, actor: &str) -> Result<bool>;
    /// Applies the state change. Missing ⇒ NotFound [`USER_NOT_FOUND`].
    async fn set_state(&self, id: &UserId, change: UserStateChange, actor: &str) -> Result<Details>;
    /// Removes the user, its tokens and its memberships; event `user.removed`. Missing ⇒ NotFound.
    async fn delete(&self, id: &UserId, actor: &str) -> Result<Details>;
}

/// Personal access tokens.
#[async_trait]
pub trait TokenRepo: Send + Sync {
    /// Inserts the token; event `user.pat.added` on the user. Missing user ⇒ NotFound [`USER_NOT_FOUND`].
    async fn create(&self, token: &NewTokenRecord, actor: &str) -> Result<PersonalAccessToken>;
    /// The token whose stored hash equals `token_hash` exactly, with its owner and the owner's org state.
    async fn find_by_hash(&self, token_hash: &str) -> Result<Option<TokenOwner>>;
    /// Tokens of `user`, ordered by creation date (`q.asc`), then id.
    async fn list(&self, user: &UserId, q: &ListQuery) -> Result<Page<PersonalAccessToken>>;
    /// Removes the token if it belongs to `user`; event `user.pat.removed` (payload: token id) on the user.
    /// Otherwise NotFound [`TOKEN_NOT_FOUND`].
    async fn delete(&self, user: &UserId, token: &TokenId, actor: &str) -> Result<Details>;
}

/// Memberships (roles of users in the instance or an org).
#[async_trait]
pub trait MemberRepo: Send + Sync {
    /// Creates (`member.added`) or replaces the roles of (`member.changed`) the membership of `user` in
    /// `scope`; aggregate = the scope (`instance`/`instance` or `org`/org id), payload: user id, roles.
    async fn set(&self, user: &UserId, scope: &MemberScope, roles: &[Role], actor: &str) -> Result<Details>;
    /// Removes the membership; event `member.removed`. Missing ⇒ NotFound [`MEMBER_NOT_FOUND`].
    async fn remove(&self, user: &UserId, scope: &MemberScope, actor: &str) -> Result<Details>;
    /// Memberships in `scope`, ordered by creation date (`q.asc`), then user id.
    async fn list(&self, scope: &MemberScope, q: &ListQuery) -> Result<Page<Member>>;
    /// Every membership of `user` (instance and orgs).
    async fn of_user(&self, user: &UserId) -> Result<Vec<Member>>;
}

/// The instance itself.
#[async_trait]
pub trait InstanceRepo: Send + Sync {
    /// Whether the instance was bootstrapped.
    async fn exists(&self) -> Result<bool>;
    /// In ONE transaction: inserts the unique instance row (event `instance.added` on (`instance`,
    /// `instance`), which fails with AlreadyExists [`INSTANCE_EXISTS`] when it exists — also for a concurrent
    /// replica), the org, the admin user, its instance membership and its token, each with its events and
    /// creator [`SYSTEM_ACTOR`].
    async fn bootstrap(&self, record: &BootstrapRecord) -> Result<()>;
}

/// The repositories the identity use cases need, shared.
#[derive(Clone)]
pub struct Repos {
    /// Organizations.
    pub orgs: Arc<dyn OrgRepo>,
    /// Users.
    pub users: Arc<dyn UserRepo>,
    /// Personal access tokens.
    pub tokens: Arc<dyn TokenRepo>,
    /// Memberships.
    pub members: Arc<dyn MemberRepo>,
    /// The instance.
    pub instance: Arc<dyn InstanceRepo>,
}

impl std::fmt::Debug for Repos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repos").finish_non_exhaustive()
    }
}

/// Wall-clock time.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Source of new ids.
pub trait IdGenerator: Send + Sync {
    /// A new unique id.
    fn new_id(&self) -> String;
}

/// UUIDv7 ids in simple form (32 lower-case hex digits, time-ordered).
#[derive(Debug, Clone, Copy, Default)]
pub struct UuidV7Ids;

impl IdGenerator for UuidV7Ids {
    fn new_id(&self) -> String {
        uuid::Uuid::now_v7().simple().to_string()
    }
}

/// Told when a user may no longer authenticate (deactivated, locked, deleted), e.g. to end its sessions.
#[async_trait]
pub trait UserLifecycleHook: Send + Sync {
    /// Called after the change was written; errors are returned to the caller of the use case.
    async fn on_user_disabled(&self, user: &UserId) -> Result<()> {
        let _ = user;
        Ok(())
    }
}

/// Resolves session tokens (`fgs_…`) used as bearer tokens; implemented by the session use cases.
#[async_trait]
pub trait SessionTokenResolver: Send + Sync {
    /// The checked user of the unexpired, non-terminated session whose token is `token`; `None` for any
    /// other token. The caller still checks that the user and its org are active.
    async fn user_for_session_token(&self, token: &str) -> Result<Option<UserId>>;
}

/// A hook that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopLifecycleHook;

impl UserLifecycleHook for NoopLifecycleHook {}

/// Checks the IdP links of a new user before it is written; implemented by the IdP use cases.
#[async_trait]
pub trait IdpLinkCheck: Send + Sync {
    /// Ok when every link's IdP exists, is active and allows linking or user creation, and no link's account
    /// is linked to a user already; violations name `idp_links[i].idp_id` / `idp_links[i].user_id`.
    async fn check_new_links(&self, links: &[NewUserIdpLink]) -> Result<()>;
}

/// Checks bearer tokens issued outside flowgate (e.g. JWTs of an OpenID provider); implemented outside the core.
#[async_trait]
pub trait ExternalTokenVerifier: Send + Sync {
    /// The subject (a flowgate user id) of a valid `token`; `None` for any invalid one, including when the
    /// issuer cannot be reached. `Err` is reserved for faults of the verifier itself.
    async fn verify(&self, token: &str) -> Result<Option<String>>;
}
