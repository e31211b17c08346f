//! Ports of the IdP use cases: repositories (implemented by `flowgate-store`) and the connector to
//! external identity providers (implemented by `flowgate-idp`).
//!
//! Every mutating repository method is ONE event-log write: the new state rows and the listed events in
//! one transaction, creator = `actor`. Aggregates: (`idp`, idp id) and (`idp_intent`, intent id), both with
//! resource owner [`INSTANCE_OWNER`]; link events go to (`user`, user id) with the user's org as owner.
//! Event payloads never contain secrets (sealed or not), tokens, token hashes, codes, nonces or PKCE
//! verifiers. Records carry the ids the core generated; repositories apply no business rules beyond
//! uniqueness and the conditional updates documented here (which only the database can make race-free).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::model::{
    ExternalProfile, Idp, IdpFilter, IdpId, IdpKind, IdpLink, Intent, IntentFailure, IntentId, LdapAttributes,
    ProviderOptions, Sealed, StoredExternalUser,
};
use crate::Result;
use crate::event::Details;
use crate::identity::{ListQuery, Page, UserId};

pub use crate::identity::INSTANCE_OWNER;

/// Error id: NotFound, no such IdP.
pub const IDP_NOT_FOUND: &str = "IDP-not-found";
/// Error id: NotFound, no such intent (also a wrong id in the callback's `state`).
pub const INTENT_NOT_FOUND: &str = "IDP-intent-not-found";
/// Error id: AlreadyExists, the account at the IdP (idp id, external user id) is linked to a user already.
pub const IDP_LINK_EXISTS: &str = "IDP-link-exists";
/// Error id: NotFound, the user has no such link.
pub const IDP_LINK_NOT_FOUND: &str = "IDP-link-not-found";

// ------------------------------------------------------------------------------------------ records

/// A new IdP (state Active).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIdpRecord {
    /// Generated id.
    pub id: IdpId,
    /// Trimmed name (not unique).
    pub name: String,
    /// Options.
    pub options: ProviderOptions,
    /// Configuration with secrets already sealed.
    pub kind: IdpKind,
}

/// The new configuration of an existing IdP; replaces name, options and kind (same kind as before; the
/// core has merged empty secrets with the stored ones already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpUpdate {
    /// New name.
    pub name: String,
    /// New options.
    pub options: ProviderOptions,
    /// New configuration (secrets sealed).
    pub kind: IdpKind,
}

/// A state transition of an IdP; the core has checked that it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdpStateChange {
    /// Active → Inactive, event `idp.deactivated`.
    Deactivate,
    /// Inactive → Active, event `idp.reactivated`.
    Reactivate,
}

impl IdpStateChange {
    /// The event type to append.
    pub fn event_type(self) -> &'static str {
        match self {
            IdpStateChange::Deactivate => "idp.deactivated",
            IdpStateChange::Reactivate => "idp.reactivated",
        }
    }
}

/// A new intent (state Started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIntentRecord {
    /// Generated id.
    pub id: IntentId,
    /// The IdP (exists; checked by the core).
    pub idp_id: IdpId,
    /// Success URL (redirect flows), already checked against the allowlist.
    pub success_url: Option<String>,
    /// Failure URL (redirect flows), already checked against the allowlist.
    pub failure_url: Option<String>,
    /// PKCE verifier, sealed.
    pub pkce_verifier: Option<Sealed>,
    /// OIDC nonce.
    pub nonce: Option<String>,
    /// Start time (the intent's `created_at`).
    pub created_at: DateTime<Utc>,
    /// When a callback stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// What a successful login at the IdP stores on its intent.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentSuccess {
    /// Lower-case hex SHA-256 of the intent token.
    pub token_hash: String,
    /// The account at the IdP (upstream tokens sealed).
    pub external: StoredExternalUser,
    /// The linked or auto-created user, if any.
    pub user_id: Option<UserId>,
    /// Time of success.
    pub succeeded_at: DateTime<Utc>,
    /// New `expires_at` (success + intent lifetime).
    pub expires_at: DateTime<Utc>,
}

// ------------------------------------------------------------------------------------------ repositories

/// IdP configurations (table `idps`).
#[async_trait]
pub trait IdpRepo: Send + Sync {
    /// Inserts the IdP; event `idp.added` (payload: name, type, options and the configuration without
    /// sealed values).
    async fn create(&self, idp: &NewIdpRecord, actor: &str) -> Result<Idp>;
    /// The IdP with `id`, if any.
    async fn get(&self, id: &IdpId) -> Result<Option<Idp>>;
    /// IdPs matching all `filters`, ordered by creation date (`q.asc`), then id; `q.limit` is 1..=1000.
    async fn list(&self, filters: &[IdpFilter], q: &ListQuery) -> Result<Page<Idp>>;
    /// Replaces name, options and configuration only if the IdP's last sequence is `expected_sequence`
    /// (else Aborted); event `idp.changed` (payload as for `idp.added`). Missing ⇒ NotFound [`IDP_NOT_FOUND`].
    async fn update(&self, id: &IdpId, expected_sequence: u64, update: &IdpUpdate, actor: &str) -> Result<Details>;
    /// Applies the state change (event from [`IdpStateChange::event_type`], empty payload). Missing ⇒
    /// NotFound [`IDP_NOT_FOUND`].
    async fn set_state(&self, id: &IdpId, change: IdpStateChange, actor: &str) -> Result<Details>;
    /// Removes the IdP together with all its user links and intents in the same transaction; event
    /// `idp.removed` on the IdP only (like `org.removed`, no per-link events). Missing ⇒ NotFound
    /// [`IDP_NOT_FOUND`].
    async fn delete(&self, id: &IdpId, actor: &str) -> Result<Details>;
}

/// Intents (table `idp_intents`).
#[async_trait]
pub trait IntentRepo: Send + Sync {
    /// Inserts the intent; event `idp.intent.started` (payload: idp_id, success_url, failure_url). Missing
    /// IdP ⇒ NotFound [`IDP_NOT_FOUND`].
    async fn create(&self, intent: &NewIntentRecord, actor: &str) -> Result<Details>;
    /// The intent with `id`, if any.
    async fn get(&self, id: &IntentId) -> Result<Option<Intent>>;
    /// Stores the success only if the intent is still Started (one conditional
    /// `UPDATE … WHERE id = ? AND state = 'started'`): state Succeeded, token hash, external user, user id,
    /// succeeded_at, expires_at; event `idp.intent.succeeded` (payload: external user id and username,
    /// user_id). Answers `None` (and writes nothing) when the intent is missing or not Started any more.
    async fn succeed(&self, id: &IntentId, success: &IntentSuccess, actor: &str) -> Result<Option<Details>>;
    /// Marks the intent Failed only if it is still Started (conditional update as above); event
    /// `idp.intent.failed` (payload: error, description). Answers `None` (and writes nothing) otherwise.
    async fn fail(&self, id: &IntentId, failure: &IntentFailure, actor: &str) -> Result<Option<Details>>;
    /// Atomically moves a Succeeded intent to Consumed: `UPDATE … SET state = 'consumed' WHERE id = ? AND
    /// state = 'succeeded'`, and, only when that changed a row, appends `idp.intent.consumed` (empty
    /// payload) in the same transaction. Answers whether it changed the row, so of two concurrent calls
    /// exactly one gets `true`.
    async fn consume(&self, id: &IntentId, actor: &str) -> Result<bool>;
    /// Deletes every intent whose `expires_at` is before `before`, whatever its state (housekeeping: no
    /// events; the intent's events stay in the log). Answers how many were deleted.
    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// Links between users and accounts at IdPs (table `user_idp_links`). Deleting a user (users repo) or an
/// IdP ([`IdpRepo::delete`]) removes its links in the same transaction.
#[async_trait]
pub trait LinkRepo: Send + Sync {
    /// Inserts the link; event `user.idp.link.added` (payload: idp_id, external_user_id, external_username)
    /// on the user, owner = the user's org. (idp, external user id) taken ⇒ AlreadyExists
    /// [`IDP_LINK_EXISTS`]; missing user ⇒ NotFound `USER-not-found`; missing IdP ⇒ NotFound
    /// [`IDP_NOT_FOUND`].
    async fn add(&self, link: &IdpLink, actor: &str) -> Result<Details>;
    /// The link of the account (`idp`, `external_user_id`), if any.
    async fn find(&self, idp: &IdpId, external_user_id: &str) -> Result<Option<IdpLink>>;
    /// Links of `user`, ordered by creation date (`q.asc`), then (idp id, external user id).
    async fn list(&self, user: &UserId, q: &ListQuery) -> Result<Page<IdpLink>>;
    /// Removes the link if it belongs to `user`; event `user.idp.link.removed` (payload: idp_id,
    /// external_user_id) on the user. Otherwise NotFound [`IDP_LINK_NOT_FOUND`].
    async fn remove(&self, user: &UserId, idp: &IdpId, external_user_id: &str, actor: &str) -> Result<Details>;
}

/// The repositories the IdP use cases need, shared.
#[derive(Clone)]
pub struct IdpRepos {
    /// IdP configurations.
    pub idps: Arc<dyn IdpRepo>,
    /// Intents.
    pub intents: Arc<dyn IntentRepo>,
    /// User links.
    pub links: Arc<dyn LinkRepo>,
}

impl std::fmt::Debug for IdpRepos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpRepos").finish_non_exhaustive()
    }
}

// ------------------------------------------------------------------------------------------ connector

/// Error id (and `error` query value) of a connector: the IdP could not be reached (kind Unavailable).
pub const CONNECTOR_UNREACHABLE: &str = "idp_unreachable";
/// Error id of a connector: the code exchange at the token endpoint failed.
pub const CONNECTOR_EXCHANGE_FAILED: &str = "idp_token_exchange_failed";
/// Error id of a connector: the ID token is invalid (signature, `iss`, `aud`, `azp`, `exp`, algorithm).
pub const CONNECTOR_ID_TOKEN_INVALID: &str = "id_token_invalid";
/// Error id of a connector: the ID token's nonce differs from the one sent.
pub const CONNECTOR_NONCE_MISMATCH: &str = "nonce_mismatch";
/// Error id of a connector: the userinfo / user endpoint failed or answered garbage (or another `sub`).
pub const CONNECTOR_USERINFO_FAILED: &str = "userinfo_failed";
/// Error id of a connector: the provider configuration (discovery, endpoints) is unusable.
pub const CONNECTOR_CONFIG_INVALID: &str = "idp_config_invalid";
/// Error id of a connector: LDAP bind, search (0 or > 1 entries) or user bind failed.
pub const CONNECTOR_LDAP_FAILED: &str = "ldap_login_failed";

/// A redirect-flow provider as the connector needs it (secret opened by the core).
#[derive(Clone, PartialEq, Eq)]
pub struct RedirectProvider {
    /// Protocol-specific settings.
    pub kind: RedirectKind,
    /// Client id.
    pub client_id: String,
    /// Client secret in the clear (never logged).
    pub client_secret: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Whether PKCE (S256) is used.
    pub use_pkce: bool,
}

impl std::fmt::Debug for RedirectProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { kind, client_id, client_secret: _, scopes, use_pkce } = self;
        f.debug_struct("RedirectProvider")
            .field("kind", kind)
            .field("client_id", client_id)
            .field("scopes", scopes)
            .field("use_pkce", use_pkce)
            .finish_non_exhaustive()
    }
}

/// OIDC or OAuth2 settings of a [`RedirectProvider`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectKind {
    /// OpenID Connect with discovery.
    Oidc {
        /// Issuer URL; the ID token's `iss` must equal it.
        issuer: String,
        /// Claims from the ID token only (no userinfo call).
        is_id_token_mapping: bool,
    },
    /// Plain OAuth2 with a user endpoint.
    OAuth {
        /// Authorization endpoint URL.
        authorization_endpoint: String,
        /// Token endpoint URL.
        token_endpoint: String,
        /// User endpoint URL.
        user_endpoint: String,
        /// JSON field of the user endpoint's answer holding the user id (numbers become strings).
        id_attribute: String,
    },
}

/// Parameters of the authorization URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The intent id, sent as `state`.
    pub state: String,
    /// `<external URL>/idps/callback`.
    pub redirect_uri: String,
    /// PKCE S256 challenge (base64url of SHA-256 of the verifier), when PKCE is used.
    pub pkce_challenge: Option<String>,
    /// OIDC nonce.
    pub nonce: Option<String>,
}

/// Parameters of the code exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeExchange {
    /// The authorization code from the callback.
    pub code: String,
    /// The same redirect URI as in the authorization request.
    pub redirect_uri: String,
    /// PKCE verifier (opened), when PKCE was used.
    pub pkce_verifier: Option<String>,
    /// The nonce the ID token must carry (OIDC).
    pub nonce: Option<String>,
}

impl std::fmt::Debug for CodeExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeExchange").field("redirect_uri", &self.redirect_uri).finish_non_exhaustive()
    }
}

/// An LDAP directory as the connector needs it (bind password opened by the core).
#[derive(Clone, PartialEq, Eq)]
pub struct LdapProvider {
    /// `ldap://` / `ldaps://` URLs, tried in order.
    pub servers: Vec<String>,
    /// StartTLS on `ldap://`.
    pub start_tls: bool,
    /// Verify the server certificate.
    pub tls_verify: bool,
    /// Extra trust anchor (PEM).
    pub root_ca_pem: Option<String>,
    /// Base DN.
    pub base_dn: String,
    /// Service account DN.
    pub bind_dn: String,
    /// Service account password in the clear (never logged).
    pub bind_password: String,
    /// Search base for users.
    pub user_base: String,
    /// Object classes, ORed.
    pub user_object_classes: Vec<String>,
    /// Attributes compared with the username (RFC 4515-escaped), ORed.
    pub user_filters: Vec<String>,
    /// Timeout of each operation.
    pub timeout: Duration,
    /// Attribute mapping.
    pub attributes: LdapAttributes,
}

impl std::fmt::Debug for LdapProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapProvider")
            .field("servers", &self.servers)
            .field("base_dn", &self.base_dn)
            .field("bind_dn", &self.bind_dn)
            .field("user_base", &self.user_base)
            .finish_non_exhaustive()
    }
}

/// The account a login at an IdP yielded, with upstream tokens in the clear (sealed by the core before
/// it is stored).
#[derive(Clone, PartialEq)]
pub struct ExternalUser {
    /// Stable user id at the IdP (`sub`, the id attribute, or the LDAP id attribute); non-empty.
    pub id: String,
    /// Username at the IdP (preferred_username, login, or the LDAP username).
    pub username: String,
    /// The IdP's full user payload (claims / user JSON / attributes).
    pub raw: serde_json::Value,
    /// Upstream access token.
    pub access_token: Option<String>,
    /// Upstream ID token.
    pub id_token: Option<String>,
    /// LDAP attributes (name → values).
    pub ldap_attributes: Option<BTreeMap<String, Vec<String>>>,
    /// Mapped profile.
    pub profile: ExternalProfile,
}

impl std::fmt::Debug for ExternalUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalUser")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// Talks to external identity providers. Errors: kind Unavailable (unreachable) or
/// InvalidArgument/FailedPrecondition with one of the `CONNECTOR_*` ids (used as the `error` query value
/// of the failure redirect); messages never contain secrets, codes or tokens.
#[async_trait]
pub trait IdpConnector: Send + Sync {
    /// The URL to send the browser to (authorization endpoint with client_id, redirect_uri, scope,
    /// response_type=code, state, and code_challenge/S256 and nonce when given).
    async fn authorization_url(&self, provider: &RedirectProvider, request: &AuthRequest) -> Result<String>;
    /// Exchanges the code (with the PKCE verifier), validates the ID token (OIDC), fetches userinfo when
    /// configured, and answers the account.
    async fn exchange(&self, provider: &RedirectProvider, exchange: &CodeExchange) -> Result<ExternalUser>;
    /// Binds as the service account, finds exactly one entry for `username`, binds as it with `password`
    /// and answers the mapped account. The core never calls it with an empty password.
    async fn ldap_login(&self, provider: &LdapProvider, username: &str, password: &str) -> Result<ExternalUser>;
}
