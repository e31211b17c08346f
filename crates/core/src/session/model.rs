//! Session domain types: the session, its factors, checks, challenges and the list vocabulary.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};

use crate::event::Details;
use crate::identity::{OrgId, UserId};

/// Identifier of a session (opaque; UUIDv7 simple form when generated).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the id and answers its string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for SessionId {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SessionId {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A login session: who was checked with which factors, plus client metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Id of the caller that created it.
    pub creator: String,
    /// The user agent as sent on create.
    pub user_agent: Option<UserAgent>,
    /// The successful checks so far.
    pub factors: Factors,
    /// Client metadata.
    pub metadata: BTreeMap<String, Vec<u8>>,
    /// When it stops being usable; `None` = never.
    pub expiration: Option<DateTime<Utc>>,
    /// Whether it was deleted (terminated sessions are kept for the event log but never answered).
    pub terminated: bool,
    /// Change metadata of the session aggregate (owner [`crate::identity::INSTANCE_OWNER`]).
    pub details: Details,
}

impl Session {
    /// The checked user, if any.
    pub fn user_id(&self) -> Option<&UserId> {
        self.factors.user.as_ref().map(|u| &u.id)
    }

    /// Whether the session has expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expiration.is_some_and(|at| at <= now)
    }
}

/// The client that created a session, as it described itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserAgent {
    /// Client-chosen fingerprint (≤ 200 chars).
    pub fingerprint_id: Option<String>,
    /// Client IP address as reported.
    pub ip: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// HTTP headers as reported, by name.
    pub headers: BTreeMap<String, Vec<String>>,
}

/// The successful checks of a session, each with the time it succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Factors {
    /// The checked user.
    pub user: Option<UserFactor>,
    /// Password check.
    pub password: Option<DateTime<Utc>>,
    /// TOTP check.
    pub totp: Option<DateTime<Utc>>,
    /// One-time code by SMS.
    pub otp_sms: Option<DateTime<Utc>>,
    /// One-time code by e-mail.
    pub otp_email: Option<DateTime<Utc>>,
    /// IdP intent.
    pub intent: Option<DateTime<Utc>>,
}

/// The user a session belongs to, as it was when checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFactor {
    /// When the user check succeeded.
    pub verified_at: DateTime<Utc>,
    /// The user.
    pub id: UserId,
    /// The user's preferred login name.
    pub login_name: String,
    /// Display name (humans) or name (machines).
    pub display_name: String,
    /// The user's organization.
    pub organization_id: OrgId,
}

/// The checks of a create/set request, run in field order; the first failure aborts the call.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Checks {
    /// Who is logging in (only once per session).
    pub user: Option<UserCheck>,
    /// The user's password.
    pub password: Option<String>,
    /// An IdP intent (id, token).
    pub idp_intent: Option<(String, String)>,
    /// A TOTP code (6 digits).
    pub totp: Option<String>,
    /// A code sent by an `otp_sms` challenge.
    pub otp_sms: Option<String>,
    /// A code sent by an `otp_email` challenge.
    pub otp_email: Option<String>,
}

impl fmt::Debug for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Passwords and codes stay out of logs.
        f.debug_struct("Checks")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("idp_intent", &self.idp_intent.as_ref().map(|(id, _)| id))
            .field("totp", &self.totp.as_ref().map(|_| ".."))
            .field("otp_sms", &self.otp_sms.as_ref().map(|_| ".."))
            .field("otp_email", &self.otp_email.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Checks {
    /// Whether no check is requested.
    pub fn is_empty(&self) -> bool {
        let Checks { user, password, idp_intent, totp, otp_sms, otp_email } = self;
        user.is_none()
            && password.is_none()
            && idp_intent.is_none()
            && totp.is_none()
            && otp_sms.is_none()
            && otp_email.is_none()
    }
}

/// How the user of a session is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCheck {
    /// By user id.
    Id(UserId),
    /// By login name, ignoring case.
    LoginName(String),
}

/// The challenges a create/set request asks for (created after the checks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChallengeRequest {
    /// A code for the user's phone.
    pub otp_sms: Option<OtpDelivery>,
    /// A code for the user's e-mail address.
    pub otp_email: Option<OtpDelivery>,
}

impl ChallengeRequest {
    /// Whether no challenge is requested.
    pub fn is_empty(&self) -> bool {
        self.otp_sms.is_none() && self.otp_email.is_none()
    }
}

/// How a one-time code reaches the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtpDelivery {
    /// Answered in the response (the login UI delivers it).
    Return,
    /// Sent through the [`super::ports::OtpSender`]; e-mails may carry a link built from `url_template`
    /// (placeholders `{{.Code}}`, `{{.UserID}}`, `{{.LoginName}}`, `{{.DisplayName}}`,
    /// `{{.PreferredLanguage}}`, `{{.SessionID}}`).
    Send {
        /// Link template (e-mail only; ignored for SMS).
        url_template: Option<String>,
    },
}

/// The codes of challenges asked with [`OtpDelivery::Return`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Challenges {
    /// The SMS code, when asked to return it.
    pub otp_sms: Option<String>,
    /// The e-mail code, when asked to return it.
    pub otp_email: Option<String>,
}

impl fmt::Debug for Challenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenges")
            .field("otp_sms", &self.otp_sms.as_ref().map(|_| ".."))
            .field("otp_email", &self.otp_email.as_ref().map(|_| ".."))
            .finish()
    }
}

/// What a create/set request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionChange {
    /// Checks, in order.
    pub checks: Checks,
    /// Metadata to set; an empty value deletes the key.
    pub metadata: BTreeMap<String, Vec<u8>>,
    /// Challenges to create.
    pub challenges: ChallengeRequest,
    /// New lifetime, counted from this change; `None` = unchanged. Zero or negative ⇒ InvalidArgument
    /// `lifetime` (a signed type so the edge can pass wire durations through unchanged).
    pub lifetime: Option<TimeDelta>,
}

/// A session list filter; all filters of a list are ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionFilter {
    /// Sessions with one of these ids.
    Ids(Vec<SessionId>),
    /// Sessions whose checked user is this one.
    UserId(UserId),
    /// Creation date compared with the method.
    CreationDate(DateTime<Utc>, TimestampMethod),
    /// Sessions created by this caller; `None` = the calling user (repositories only ever get `Some`).
    Creator(Option<String>),
    /// Sessions whose user agent has this fingerprint id; `None` = the caller's user agent (resolved or
    /// refused by the core; repositories only ever get `Some`).
    UserAgentFingerprint(Option<String>),
    /// Expiration date compared with the method (sessions without expiration never match).
    ExpirationDate(DateTime<Utc>, TimestampMethod),
    /// Added by the core for callers without `session.read` everywhere: sessions created by `creator`, OR
    /// whose checked user is `user`, OR whose checked user belongs to one of `orgs`.
    VisibleTo {
        /// The caller's id (matches the session creator).
        creator: String,
        /// The caller's user id (matches the checked user).
        user: UserId,
        /// Orgs where the caller holds `session.read` (matches the checked user's org).
        orgs: Vec<OrgId>,
    },
}

/// How a timestamp filter compares (`value <method> reference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampMethod {
    /// Equal.
    Equals,
    /// Later than the reference.
    Greater,
    /// Later than or equal to the reference.
    GreaterOrEquals,
    /// Earlier than the reference.
    Less,
    /// Earlier than or equal to the reference.
    LessOrEquals,
}

impl TimestampMethod {
    /// Whether `value` matches `reference` with this method (reference semantics for stores and fakes).
    pub fn matches(self, value: DateTime<Utc>, reference: DateTime<Utc>) -> bool {
        match self {
            TimestampMethod::Equals => value == reference,
            TimestampMethod::Greater => value > reference,
            TimestampMethod::GreaterOrEquals => value >= reference,
            TimestampMethod::Less => value < reference,
            TimestampMethod::LessOrEquals => value <= reference,
        }
    }
}

/// Failed-attempt limits; 0 = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockoutPolicy {
    /// Wrong passwords before the user is locked.
    pub max_password_attempts: u32,
    /// Wrong TOTP/OTP codes (one shared counter) before the user is locked.
    pub max_otp_attempts: u32,
}

/// Which failed-attempt counter of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockoutKind {
    /// Wrong passwords.
    Password,
    /// Wrong TOTP, OTP SMS and OTP e-mail codes (shared).
    Otp,
}

impl LockoutKind {
    /// Stable lower-case name (`password` | `otp`).
    pub fn as_str(self) -> &'static str {
        match self {
            LockoutKind::Password => "password",
            LockoutKind::Otp => "otp",
        }
    }
}

/// The channel of a one-time code challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtpKind {
    /// Text message to the user's phone.
    Sms,
    /// E-mail to the user's address.
    Email,
}

impl OtpKind {
    /// Stable lower-case name (`sms` | `email`), as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            OtpKind::Sms => "sms",
            OtpKind::Email => "email",
        }
    }

    /// Parses [`OtpKind::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sms" => Some(OtpKind::Sms),
            "email" => Some(OtpKind::Email),
            _ => None,
        }
    }
}
