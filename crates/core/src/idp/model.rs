//! Identity-provider domain types: IdP configurations, intents, user links and what a login at an IdP
//! yields.
//!
//! Configurations and stored external users derive serde so that the store keeps them as one JSON value
//! in exactly the shape defined here (secrets inside are [`Sealed`], never clear text).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Details;
use crate::identity::{TextMethod, UserId};

string_id!(
    /// Identifier of an identity provider configuration (UUIDv7 simple form).
    IdpId
);
string_id!(
    /// Identifier of an intent; it is also the `state` parameter of the redirect to the IdP.
    IntentId
);

/// A value encrypted with [`crate::idp::crypto::SecretBox`] (`v1.<base64url(nonce‖ciphertext)>`).
///
/// Only the core can open it (it knows the key and the purpose string); everything else stores and
/// copies it as an opaque string. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// Wraps a stored sealed string as read from the database (not checked until opened).
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The sealed string to store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(..)")
    }
}

/// Lifecycle state of an IdP configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdpState {
    /// Usable for intents, links and session checks.
    Active,
    /// Deactivated: no new intents, links or session checks; may be reactivated.
    Inactive,
}

impl IdpState {
    /// Stable lower-case name (`active` | `inactive`), as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            IdpState::Active => "active",
            IdpState::Inactive => "inactive",
        }
    }

    /// Parses [`IdpState::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(IdpState::Active),
            "inactive" => Some(IdpState::Inactive),
            _ => None,
        }
    }
}

/// What users of an IdP may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProviderOptions {
    /// Existing users may link an account of this IdP.
    pub is_linking_allowed: bool,
    /// New users may be created from an account of this IdP.
    pub is_creation_allowed: bool,
    /// A succeeded intent without a linked user creates the user (needs `is_creation_allowed` too).
    pub is_auto_creation: bool,
    /// Profile changes at the IdP update the linked user (stored; applied by later work).
    pub is_auto_update: bool,
}

/// A ready-made configuration an OIDC or OAuth IdP was created from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdpTemplate {
    /// GitHub (OAuth2, see [`GITHUB_AUTHORIZATION_ENDPOINT`] and siblings).
    GitHub,
    /// Google (OpenID Connect, issuer [`GOOGLE_ISSUER`]).
    Google,
}

impl IdpTemplate {
    /// Stable lower-case name (`github` | `google`), as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            IdpTemplate::GitHub => "github",
            IdpTemplate::Google => "google",
        }
    }

    /// Parses [`IdpTemplate::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "github" => Some(IdpTemplate::GitHub),
            "google" => Some(IdpTemplate::Google),
            _ => None,
        }
    }
}

/// GitHub's authorization endpoint (template [`IdpTemplate::GitHub`]).
pub const GITHUB_AUTHORIZATION_ENDPOINT: &str = "https://github.com/login/oauth/authorize";
/// GitHub's token endpoint.
pub const GITHUB_TOKEN_ENDPOINT: &str = "https://github.com/login/oauth/access_token";
/// GitHub's user endpoint.
pub const GITHUB_USER_ENDPOINT: &str = "https://api.github.com/user";
/// The JSON field of GitHub's user that holds the user id.
pub const GITHUB_ID_ATTRIBUTE: &str = "id";
/// Google's OpenID issuer (template [`IdpTemplate::Google`]).
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";

/// Scopes of an OIDC IdP when none are configured.
pub fn default_oidc_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(str::to_owned).to_vec()
}

/// Scopes of a GitHub IdP when none are configured.
pub fn default_github_scopes() -> Vec<String> {
    ["read:user", "user:email"].map(str::to_owned).to_vec()
}

/// A generic OpenID Connect provider (also Google).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcConfig {
    /// Issuer URL (https, or http only for loopback hosts); discovery at `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// Client id at the provider.
    pub client_id: String,
    /// Client secret, sealed with purpose [`crate::idp::crypto::purpose_client_secret`].
    pub client_secret: Sealed,
    /// Requested scopes (default [`default_oidc_scopes`]).
    pub scopes: Vec<String>,
    /// Claims from the ID token only (`true`) or from the userinfo endpoint (`false`).
    pub is_id_token_mapping: bool,
    /// Whether PKCE (S256) is sent (default true).
    pub use_pkce: bool,
    /// The template it was created from, if any.
    pub template: Option<IdpTemplate>,
}

/// A generic OAuth2 provider (also GitHub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthConfig {
    /// Authorization endpoint URL.
    pub authorization_endpoint: String,
    /// Token endpoint URL.
    pub token_endpoint: String,
    /// User (userinfo) endpoint URL, fetched with the access token.
    pub user_endpoint: String,
    /// Client id at the provider.
    pub client_id: String,
    /// Client secret, sealed with purpose [`crate::idp::crypto::purpose_client_secret`].
    pub client_secret: Sealed,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// The JSON field of the user endpoint's answer that holds the user id (default `sub`).
    pub id_attribute: String,
    /// Whether PKCE (S256) is sent (default true).
    pub use_pkce: bool,
    /// The template it was created from, if any.
    pub template: Option<IdpTemplate>,
}

/// Which LDAP attribute fills which profile field; "" = not mapped.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LdapAttributes {
    /// Attribute holding the stable external user id (required, e.g. `uid` or `entryUUID`).
    pub id_attribute: String,
    /// Given name (e.g. `givenName`).
    pub first_name_attribute: String,
    /// Family name (e.g. `sn`).
    pub last_name_attribute: String,
    /// Display name (e.g. `cn`).
    pub display_name_attribute: String,
    /// Nick name.
    pub nick_name_attribute: String,
    /// Preferred username.
    pub preferred_username_attribute: String,
    /// E-mail address (e.g. `mail`).
    pub email_attribute: String,
    /// Whether the e-mail is verified (`TRUE`/`true`).
    pub email_verified_attribute: String,
    /// Phone number.
    pub phone_attribute: String,
    /// Whether the phone is verified.
    pub phone_verified_attribute: String,
    /// Preferred language.
    pub preferred_language_attribute: String,
    /// Avatar URL.
    pub avatar_url_attribute: String,
    /// Profile URL.
    pub profile_attribute: String,
}

/// An LDAP directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LdapConfig {
    /// `ldap://` or `ldaps://` URLs, tried in order (≥ 1).
    pub servers: Vec<String>,
    /// Upgrade `ldap://` connections with StartTLS.
    pub start_tls: bool,
    /// Verify the server certificate (default true).
    pub tls_verify: bool,
    /// Extra trust anchor (PEM), if any.
    pub root_ca_pem: Option<String>,
    /// Base DN of the directory.
    pub base_dn: String,
    /// DN of the service account used for the search.
    pub bind_dn: String,
    /// Its password, sealed with purpose [`crate::idp::crypto::purpose_bind_password`].
    pub bind_password: Sealed,
    /// Where users are searched.
    pub user_base: String,
    /// Object classes a user entry has one of (≥ 1).
    pub user_object_classes: Vec<String>,
    /// Attributes the login name is compared with, ORed (≥ 1, e.g. `uid`, `mail`).
    pub user_filters: Vec<String>,
    /// Timeout of each LDAP operation (1..=60 s, default 10 s).
    pub timeout: Duration,
    /// Attribute mapping.
    pub attributes: LdapAttributes,
}

/// Default LDAP operation timeout.
pub const DEFAULT_LDAP_TIMEOUT: Duration = Duration::from_secs(10);

/// The protocol-specific part of an IdP configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[expect(clippy::large_enum_variant, reason = "configurations are few and rarely moved; boxing would only add noise")]
pub enum IdpKind {
    /// OpenID Connect (redirect flow).
    Oidc(OidcConfig),
    /// OAuth2 (redirect flow).
    #[serde(rename = "oauth")]
    OAuth(OAuthConfig),
    /// LDAP (synchronous username/password flow).
    Ldap(LdapConfig),
}

impl IdpKind {
    /// Stable lower-case name of the kind (`oidc` | `oauth` | `ldap`), as stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            IdpKind::Oidc(_) => "oidc",
            IdpKind::OAuth(_) => "oauth",
            IdpKind::Ldap(_) => "ldap",
        }
    }

    /// The template, if the IdP was created from one.
    pub fn template(&self) -> Option<IdpTemplate> {
        match self {
            IdpKind::Oidc(c) => c.template,
            IdpKind::OAuth(c) => c.template,
            IdpKind::Ldap(_) => None,
        }
    }

    /// The type shown to clients and used by [`IdpFilter::Type`].
    pub fn idp_type(&self) -> IdpType {
        match (self, self.template()) {
            (_, Some(IdpTemplate::GitHub)) => IdpType::GitHub,
            (_, Some(IdpTemplate::Google)) => IdpType::Google,
            (IdpKind::Oidc(_), None) => IdpType::Oidc,
            (IdpKind::OAuth(_), None) => IdpType::OAuth,
            (IdpKind::Ldap(_), None) => IdpType::Ldap,
        }
    }
}

/// The type of an IdP as clients see it: the kind, or the template when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdpType {
    /// Generic OIDC (kind `oidc`, no template).
    Oidc,
    /// Generic OAuth2 (kind `oauth`, no template).
    OAuth,
    /// LDAP (kind `ldap`).
    Ldap,
    /// GitHub (kind `oauth`, template `github`).
    GitHub,
    /// Google (kind `oidc`, template `google`).
    Google,
}

impl IdpType {
    /// The stored (kind, template) pair of this type, for stores filtering by type.
    pub fn kind_and_template(self) -> (&'static str, Option<IdpTemplate>) {
        match self {
            IdpType::Oidc => ("oidc", None),
            IdpType::OAuth => ("oauth", None),
            IdpType::Ldap => ("ldap", None),
            IdpType::GitHub => ("oauth", Some(IdpTemplate::GitHub)),
            IdpType::Google => ("oidc", Some(IdpTemplate::Google)),
        }
    }
}

/// An identity provider configuration (instance-level, owner [`crate::identity::INSTANCE_OWNER`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idp {
    /// Its id.
    pub id: IdpId,
    /// Display name, 1..=200 chars.
    pub name: String,
    /// Lifecycle state.
    pub state: IdpState,
    /// What users may do with it.
    pub options: ProviderOptions,
    /// Protocol and its settings (secrets sealed).
    pub kind: IdpKind,
    /// Change metadata of the `idp` aggregate.
    pub details: Details,
}

/// An IdP list filter; all filters of a list are ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdpFilter {
    /// Name compared with the method.
    Name(String, TextMethod),
    /// IdPs of this type (see [`IdpType::kind_and_template`]).
    Type(IdpType),
}

/// Lifecycle state of an intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntentState {
    /// Waiting for the callback (redirect flows only).
    Started,
    /// The IdP authenticated the user; retrievable and usable once for a session check.
    Succeeded,
    /// The login at the IdP failed; final.
    Failed,
    /// Used by a session check; final.
    Consumed,
}

impl IntentState {
    /// Stable lower-case name (`started` | `succeeded` | `failed` | `consumed`), as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            IntentState::Started => "started",
            IntentState::Succeeded => "succeeded",
            IntentState::Failed => "failed",
            IntentState::Consumed => "consumed",
        }
    }

    /// Parses [`IntentState::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "started" => Some(IntentState::Started),
            "succeeded" => Some(IntentState::Succeeded),
            "failed" => Some(IntentState::Failed),
            "consumed" => Some(IntentState::Consumed),
            _ => None,
        }
    }
}

/// Why an intent failed: an error code (the `error` query value) and a description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentFailure {
    /// Short code such as `access_denied` or `idp_token_exchange_failed`.
    pub error: String,
    /// Human-readable text; never contains secrets.
    pub description: String,
}

/// Profile data an IdP reported, mapped to flowgate's fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExternalProfile {
    /// E-mail address.
    pub email: Option<String>,
    /// Whether the IdP says the address is verified.
    pub email_verified: bool,
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Display name.
    pub display_name: Option<String>,
    /// Nick name.
    pub nick_name: Option<String>,
    /// Preferred username.
    pub preferred_username: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// Preferred language tag.
    pub preferred_language: Option<String>,
}

/// The account at the IdP as stored with a succeeded intent: upstream tokens sealed (purpose
/// [`crate::idp::crypto::purpose_intent_token`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredExternalUser {
    /// Stable user id at the IdP (`sub`, the id attribute, or the LDAP id attribute).
    pub id: String,
    /// Username at the IdP.
    pub username: String,
    /// The IdP's full user payload (claims, user JSON or LDAP attributes).
    pub raw: serde_json::Value,
    /// The upstream access token, sealed.
    pub access_token: Option<Sealed>,
    /// The upstream ID token, sealed.
    pub id_token: Option<Sealed>,
    /// LDAP attributes (name → values), for LDAP intents.
    pub ldap_attributes: Option<BTreeMap<String, Vec<String>>>,
    /// Mapped profile.
    pub profile: ExternalProfile,
}

/// A login at an IdP in progress or finished.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// Its id (UUIDv7 simple form; the redirect `state`).
    pub id: IntentId,
    /// The IdP.
    pub idp_id: IdpId,
    /// Lifecycle state.
    pub state: IntentState,
    /// Where the callback redirects on success (`None` for LDAP).
    pub success_url: Option<String>,
    /// Where the callback redirects on failure (`None` for LDAP).
    pub failure_url: Option<String>,
    /// PKCE code verifier, sealed with purpose [`crate::idp::crypto::purpose_pkce_verifier`].
    pub pkce_verifier: Option<Sealed>,
    /// OIDC nonce sent in the authorization request.
    pub nonce: Option<String>,
    /// Lower-case hex SHA-256 of the intent token (set on success).
    pub token_hash: Option<String>,
    /// The account at the IdP (set on success).
    pub external: Option<StoredExternalUser>,
    /// The linked (or auto-created) flowgate user (set on success, when there is one).
    pub user_id: Option<UserId>,
    /// When it was started.
    pub created_at: DateTime<Utc>,
    /// When it succeeded.
    pub succeeded_at: Option<DateTime<Utc>>,
    /// Started: when the callback stops being accepted; succeeded: when retrieve and checks stop working.
    pub expires_at: DateTime<Utc>,
    /// Why it failed (state Failed only).
    pub failure: Option<IntentFailure>,
    /// Change metadata of the `idp_intent` aggregate.
    pub details: Details,
}

impl Intent {
    /// Whether `expires_at` has passed at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
    }
}

/// A link between a flowgate user and an account at an IdP; unique by (`idp_id`, `external_user_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpLink {
    /// The IdP.
    pub idp_id: IdpId,
    /// The flowgate user.
    pub user_id: UserId,
    /// Stable user id at the IdP.
    pub external_user_id: String,
    /// Username at the IdP (informational).
    pub external_username: String,
}

/// Query parameters of the IdP's redirect to `/idps/callback`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallbackParams {
    /// The intent id, as sent in the authorization request.
    pub state: Option<String>,
    /// The authorization code.
    pub code: Option<String>,
    /// The provider's error code, when the login failed there.
    pub error: Option<String>,
    /// The provider's error text.
    pub error_description: Option<String>,
}

/// What the callback route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// 302 to this URL (the intent's success or failure URL with the result appended).
    Redirect(String),
    /// 400 with this plain-text message (missing or unknown state: never a redirect).
    BadRequest(String),
}

/// What a succeeded intent tells the client (RetrieveIdentityProviderIntent).
#[derive(Debug, Clone, PartialEq)]
pub struct IntentInformation {
    /// Change metadata of the intent.
    pub details: Details,
    /// The IdP.
    pub idp_id: IdpId,
    /// Stable user id at the IdP.
    pub external_user_id: String,
    /// Username at the IdP.
    pub external_username: String,
    /// The IdP's full user payload.
    pub raw: serde_json::Value,
    /// Upstream access token (opened), for OIDC/OAuth intents.
    pub access_token: Option<String>,
    /// Upstream ID token (opened), for OIDC intents.
    pub id_token: Option<String>,
    /// LDAP attributes, for LDAP intents.
    pub ldap_attributes: Option<BTreeMap<String, Vec<String>>>,
    /// Mapped profile.
    pub profile: ExternalProfile,
    /// The linked flowgate user, if any.
    pub user_id: Option<UserId>,
}
