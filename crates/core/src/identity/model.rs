//! Identity domain types: organizations, users, tokens, members, and the list/filter vocabulary.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::event::Details;

string_id!(
    /// Identifier of an organization (opaque; UUIDv7 simple form when generated).
    OrgId
);
string_id!(
    /// Identifier of a user (opaque; UUIDv7 simple form when generated, or chosen by the client).
    UserId
);
string_id!(
    /// Identifier of a personal access token (opaque; UUIDv7 simple form).
    TokenId
);

/// Lifecycle state of an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrgState {
    /// Usable: its users may authenticate.
    Active,
    /// Deactivated: its users may not authenticate; may be reactivated.
    Inactive,
}

impl OrgState {
    /// Stable lower-case name (`active` | `inactive`), as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgState::Active => "active",
            OrgState::Inactive => "inactive",
        }
    }

    /// Parses [`OrgState::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(OrgState::Active),
            "inactive" => Some(OrgState::Inactive),
            _ => None,
        }
    }
}

/// An organization: owner of users, members and (later) IdPs and flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    /// Its id.
    pub id: OrgId,
    /// Display name, unique in the instance ignoring case.
    pub name: String,
    /// `<slug of name>.<external domain>`; the suffix of its users' second login name.
    pub primary_domain: String,
    /// Lifecycle state.
    pub state: OrgState,
    /// Change metadata of the org aggregate.
    pub details: Details,
}

/// Lifecycle state of a user (deleted users are gone, event `user.removed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserState {
    /// May authenticate.
    Active,
    /// Deactivated by an administrator; may be reactivated.
    Inactive,
    /// Locked (by an administrator or, later, by lockout); may be unlocked.
    Locked,
}

impl UserState {
    /// Stable lower-case name (`active` | `inactive` | `locked`), as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Inactive => "inactive",
            UserState::Locked => "locked",
        }
    }

    /// Parses [`UserState::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(UserState::Active),
            "inactive" => Some(UserState::Inactive),
            "locked" => Some(UserState::Locked),
            _ => None,
        }
    }
}

/// Names of a human user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    /// Given name, 1..=200 chars.
    pub given_name: String,
    /// Family name, 1..=200 chars.
    pub family_name: String,
    /// Display name, ≤ 200 chars (may be empty).
    pub display_name: String,
    /// "" or a BCP-47-like tag such as `en` or `de-CH`.
    pub preferred_language: String,
}

/// An e-mail address and whether it was verified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Email {
    /// `local@domain.tld`, ≤ 200 chars.
    pub address: String,
    /// Whether the address is known to belong to the user.
    pub verified: bool,
}

/// A phone number and whether it was verified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Phone {
    /// E.164-like number, ≤ 200 chars.
    pub number: String,
    /// Whether the number is known to belong to the user.
    pub verified: bool,
}

/// Data of a human user; never holds the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Human {
    /// Names.
    pub profile: Profile,
    /// E-mail address.
    pub email: Email,
    /// Phone number, if any.
    pub phone: Option<Phone>,
    /// Whether a password hash is stored.
    pub password_set: bool,
    /// Whether the user must change the password at the next login.
    pub password_change_required: bool,
    /// When the password was last set.
    pub password_changed: Option<DateTime<Utc>>,
}

/// Data of a machine (service) user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Name, 1..=200 chars.
    pub name: String,
    /// Free text, ≤ 500 chars.
    pub description: String,
}

/// Human or machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserKind {
    /// A person who logs in interactively.
    Human(Human),
    /// A service authenticating with personal access tokens.
    Machine(Machine),
}

/// A user of an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// The organization owning it.
    pub org_id: OrgId,
    /// Unique in the instance ignoring case.
    pub username: String,
    /// Lifecycle state.
    pub state: UserState,
    /// Human or machine data.
    pub kind: UserKind,
    /// Change metadata of the user aggregate.
    pub details: Details,
    /// Names the user may log in with: see [`login_names`].
    pub login_names: Vec<String>,
    /// The login name shown first (`username@<org primary domain>`).
    pub preferred_login_name: String,
}

impl User {
    /// Whether this is a machine user.
    pub fn is_machine(&self) -> bool {
        matches!(self.kind, UserKind::Machine(_))
    }
}

/// The login names of `username` in an org with `primary_domain`: (all names, preferred name).
///
/// The store calls this when it builds a [`User`], so the rule lives in one place.
pub fn login_names(username: &str, primary_domain: &str) -> (Vec<String>, String) {
    let qualified = format!("{username}@{primary_domain}");
    (vec![username.to_owned(), qualified.clone()], qualified)
}

/// The primary domain of an org named `name`: slug of the name + `.` + `external_domain`.
///
/// Slug: lower-case, every run of non-alphanumeric characters becomes one `-`, trimmed of `-`.
pub fn org_primary_domain(name: &str, external_domain: &str) -> String {
    let mut slug = String::with_capacity(name.len());
    let mut dash = false;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
            dash = false;
        } else if !dash && !slug.is_empty() {
            slug.push('-');
            dash = true;
        }
    }
    while slug.ends_with('-') {
        slug.pop();
    }
    if slug.is_empty() {
        // A name of only symbols still needs a label; "org" keeps the domain valid.
        slug.push_str("org");
    }
    format!("{slug}.{external_domain}")
}

/// A personal access token of a machine user (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalAccessToken {
    /// Its id.
    pub id: TokenId,
    /// The machine user it authenticates.
    pub user_id: UserId,
    /// When it stops working; `None` = never.
    pub expiration: Option<DateTime<Utc>>,
    /// Change metadata (of the write that added it; the owner is the user's org).
    pub details: Details,
}

/// A named bundle of permissions, see `authz::role_permissions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything, instance-wide.
    IamOwner,
    /// Runs logins (sessions, reads users/orgs/IdPs/flows); administers nothing.
    IamLoginClient,
    /// Everything inside one organization.
    OrgOwner,
    /// Users and their credentials inside one organization.
    OrgUserManager,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 4] = [Role::IamOwner, Role::IamLoginClient, Role::OrgOwner, Role::OrgUserManager];

    /// Wire/storage name (`IAM_OWNER`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::IamOwner => "IAM_OWNER",
            Role::IamLoginClient => "IAM_LOGIN_CLIENT",
            Role::OrgOwner => "ORG_OWNER",
            Role::OrgUserManager => "ORG_USER_MANAGER",
        }
    }

    /// Whether the role may be granted on the instance (else on an org).
    pub fn is_instance_role(self) -> bool {
        match self {
            Role::IamOwner | Role::IamLoginClient => true,
            Role::OrgOwner | Role::OrgUserManager => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not a role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Where a membership applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MemberScope {
    /// The whole instance.
    Instance,
    /// One organization.
    Org(OrgId),
}

impl MemberScope {
    /// The resource owner string of the scope: the org id or `instance`.
    pub fn owner(&self) -> &str {
        match self {
            MemberScope::Instance => INSTANCE_OWNER,
            MemberScope::Org(org) => org.as_str(),
        }
    }
}

/// Resource owner of instance-level aggregates.
pub const INSTANCE_OWNER: &str = "instance";

/// A user's roles in one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member.
    pub user_id: UserId,
    /// Where the roles apply.
    pub scope: MemberScope,
    /// The granted roles (non-empty, no duplicates).
    pub roles: Vec<Role>,
    /// Change metadata of the write that last changed this membership.
    pub details: Details,
}

/// Paging of a list request; normalized by the core before it reaches a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListQuery {
    /// Items to skip.
    pub offset: u64,
    /// Page size: 0 ⇒ 100; > 1000 ⇒ InvalidArgument `query.limit`. Repositories get 1..=1000.
    pub limit: u32,
    /// `true` = ascending order of the sort key, `false` = descending.
    pub asc: bool,
}

/// One page of a list and the total number of matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of the page.
    pub items: Vec<T>,
    /// Matches in total (ignoring offset and limit).
    pub total: u64,
}

/// How a text filter compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextMethod {
    /// Exactly equal.
    Equals,
    /// Equal ignoring case.
    EqualsIgnoreCase,
    /// Prefix.
    StartsWith,
    /// Prefix ignoring case.
    StartsWithIgnoreCase,
    /// Substring.
    Contains,
    /// Substring ignoring case.
    ContainsIgnoreCase,
    /// Suffix.
    EndsWith,
    /// Suffix ignoring case.
    EndsWithIgnoreCase,
}

impl TextMethod {
    /// Whether `value` matches `pattern` with this method (reference semantics for stores and fakes).
    pub fn matches(self, value: &str, pattern: &str) -> bool {
        match self {
            TextMethod::Equals => value == pattern,
            TextMethod::EqualsIgnoreCase => value.to_lowercase() == pattern.to_lowercase(),
            TextMethod::StartsWith => value.starts_with(pattern),
            TextMethod::StartsWithIgnoreCase => value.to_lowercase().starts_with(&pattern.to_lowercase()),
            TextMethod::Contains => value.contains(pattern),
            TextMethod::ContainsIgnoreCase => value.to_lowercase().contains(&pattern.to_lowercase()),
            TextMethod::EndsWith => value.ends_with(pattern),
            TextMethod::EndsWithIgnoreCase => value.to_lowercase().ends_with(&pattern.to_lowercase()),
        }
    }
}

/// A user list filter; all filters of a list are ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserFilter {
    /// Username compared with the method.
    Username(String, TextMethod),
    /// E-mail address (humans only; machines never match) compared with the method.
    Email(String, TextMethod),
    /// Display name (humans only; machines never match) compared with the method.
    DisplayName(String, TextMethod),
    /// Users of this org.
    Org(OrgId),
    /// Users in this state.
    State(UserState),
    /// Humans or machines.
    Kind(UserKindFilter),
    /// Users with one of these ids.
    Ids(Vec<UserId>),
    /// Users one of whose login names equals this, ignoring case: `username`, or `username@<org primary domain>`.
    LoginName(String),
    /// Users of one of these orgs (the core adds it to scope lists to what the caller may read).
    Orgs(Vec<OrgId>),
}

/// Human or machine, for [`UserFilter::Kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKindFilter {
    /// Human users.
    Human,
    /// Machine users.
    Machine,
}

/// An organization list filter; all filters of a list are ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgFilter {
    /// Name compared with the method.
    Name(String, TextMethod),
    /// Primary domain compared with the method.
    Domain(String, TextMethod),
    /// Orgs in this state.
    State(OrgState),
    /// The org with this id.
    Id(OrgId),
    /// Orgs with one of these ids (the core adds it to scope lists to what the caller may read).
    Ids(Vec<OrgId>),
}

/// Sort key of a user list (ties broken by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserSort {
    /// By creation date (the default).
    #[default]
    CreationDate,
    /// By username, ignoring case.
    Username,
}
