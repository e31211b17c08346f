//! The IdP use cases: configuration, intents (redirect and LDAP), retrieval, the session check, links.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

use super::crypto::{
    SecretBox, intent_token_matches, new_intent_token, new_nonce, new_pkce, purpose_bind_password,
    purpose_client_secret, purpose_intent_token, purpose_pkce_verifier,
};
use super::model::{
    CallbackOutcome, CallbackParams, GITHUB_AUTHORIZATION_ENDPOINT, GITHUB_ID_ATTRIBUTE, GITHUB_TOKEN_ENDPOINT,
    GITHUB_USER_ENDPOINT, GOOGLE_ISSUER, Idp, IdpFilter, IdpId, IdpKind, IdpLink, IdpState, IdpTemplate, IdpType,
    Intent, IntentFailure, IntentId, IntentInformation, IntentState, LdapAttributes, LdapConfig, OAuthConfig,
    OidcConfig, ProviderOptions, Sealed, StoredExternalUser, default_github_scopes, default_oidc_scopes,
};
use super::ports::{
    AuthRequest, CodeExchange, ExternalUser, IDP_LINK_EXISTS, IDP_NOT_FOUND, INTENT_NOT_FOUND, IdpConnector, IdpRepos,
    IdpStateChange, IdpUpdate, IntentSuccess, LdapProvider, NewIdpRecord, NewIntentRecord, RedirectKind,
    RedirectProvider,
};
use super::redirect::RedirectAllowlist;
use super::validate::{self as rules, IDP_INVALID};
use crate::event::Details;
use crate::identity::ports::{NewUserIdpLink, SYSTEM_ACTOR, USER_NOT_FOUND};
use crate::identity::validate::{self, MAX_TEXT, Violations};
use crate::identity::{
    CallContext, Clock, DEFAULT_ORG_NAME, Email, IdGenerator, Identity, IdpLinkCheck, ListQuery, NewHuman, OrgFilter,
    OrgId, OrgState, Page, Permission, Principal, Profile, Role, TextMethod, User, UserId,
};
use crate::session::ports::IntentVerifier;
use crate::{Error, ErrorKind, Result};

/// Error id: PermissionDenied, the intent token does not belong to the intent.
pub const IDP_INTENT_TOKEN_INVALID: &str = "IDP-intent-token-invalid";
/// Error id: FailedPrecondition, the intent has not succeeded (still started, failed, or consumed already).
pub const IDP_INTENT_NOT_SUCCEEDED: &str = "IDP-intent-not-succeeded";
/// Error id: FailedPrecondition, the intent has expired.
pub const IDP_INTENT_EXPIRED: &str = "IDP-intent-expired";
/// Error id: FailedPrecondition, the intent belongs to another user than the session's.
pub const IDP_INTENT_OTHER_USER: &str = "IDP-intent-other-user";
/// Error id: FailedPrecondition, the IdP is not active.
pub const IDP_INACTIVE: &str = "IDP-inactive";
/// Error id: FailedPrecondition, the IdP is already in the requested state.
pub const IDP_STATE: &str = "IDP-state";
/// Error id: FailedPrecondition, an update names another provider type than the IdP has.
pub const IDP_TYPE_MISMATCH: &str = "IDP-type-mismatch";
/// Error id: InvalidArgument, the request does not fit the IdP's type (redirect URLs for LDAP, or LDAP
/// credentials for a redirect IdP).
pub const IDP_TYPE_NOT_IMPLEMENTED: &str = "IDP-type-not-implemented";
/// Message of [`IDP_TYPE_NOT_IMPLEMENTED`].
pub const TYPE_NOT_IMPLEMENTED_MESSAGE: &str = "IdP type not implemented for this request";
/// Error id: InvalidArgument, the LDAP login failed (one answer for every cause).
pub const IDP_LDAP_LOGIN_FAILED: &str = "IDP-ldap-login-failed";
/// Message of [`IDP_LDAP_LOGIN_FAILED`].
pub const LDAP_LOGIN_FAILED_MESSAGE: &str = "the user could not be authenticated at the IdP";
/// Error id: FailedPrecondition, the IdP does not allow linking accounts.
pub const IDP_LINKING_NOT_ALLOWED: &str = "IDP-linking-not-allowed";
/// How long a started intent waits for its callback.
pub const STARTED_INTENT_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Default lifetime of a succeeded intent, counted from its success.
pub const DEFAULT_INTENT_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Path of the callback route under the external URL.
pub const CALLBACK_PATH: &str = "/idps/callback";
/// Longest LDAP username or password passed on (longer ones fail like wrong credentials, offline).
const MAX_LDAP_CREDENTIAL: usize = 1000;

/// Settings of the IdP use cases.
#[derive(Debug, Clone)]
pub struct IdpConfig {
    /// Public base URL of this server (`https://login.example.com`); the callback is `<this>/idps/callback`.
    pub external_url: String,
    /// Where intents may redirect to.
    pub allowlist: RedirectAllowlist,
    /// Lifetime of a succeeded intent (default [`DEFAULT_INTENT_LIFETIME`]).
    pub intent_lifetime: Duration,
}

/// A new or replacing IdP configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpInput {
    /// Display name (1..=200 after trimming).
    pub name: String,
    /// Options.
    pub options: ProviderOptions,
    /// Protocol settings.
    pub provider: ProviderInput,
}

/// Protocol settings of an [`IdpInput`]; secrets in the clear (sealed before storing, never returned).
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(clippy::large_enum_variant, reason = "one short-lived request value; boxing would only add noise")]
pub enum ProviderInput {
    /// Generic OpenID Connect.
    Oidc(OidcInput),
    /// Generic OAuth2.
    OAuth(OAuthInput),
    /// GitHub (OAuth2 template).
    GitHub(TemplateInput),
    /// Google (OIDC template).
    Google(TemplateInput),
    /// LDAP.
    Ldap(LdapInput),
}

impl ProviderInput {
    fn idp_type(&self) -> IdpType {
        match self {
            ProviderInput::Oidc(_) => IdpType::Oidc,
            ProviderInput::OAuth(_) => IdpType::OAuth,
            ProviderInput::GitHub(_) => IdpType::GitHub,
            ProviderInput::Google(_) => IdpType::Google,
            ProviderInput::Ldap(_) => IdpType::Ldap,
        }
    }
}

/// Generic OIDC settings.
#[derive(Clone, PartialEq, Eq)]
pub struct OidcInput {
    /// Issuer URL.
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret; empty on update = keep the stored one.
    pub client_secret: String,
    /// Scopes; empty = `openid profile email`.
    pub scopes: Vec<String>,
    /// Claims from the ID token only.
    pub is_id_token_mapping: bool,
    /// PKCE; `None` = on.
    pub use_pkce: Option<bool>,
}

/// Generic OAuth2 settings.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthInput {
    /// Authorization endpoint.
    pub authorization_endpoint: String,
    /// Token endpoint.
    pub token_endpoint: String,
    /// User endpoint.
    pub user_endpoint: String,
    /// Client id.
    pub client_id: String,
    /// Client secret; empty on update = keep the stored one.
    pub client_secret: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// JSON field with the user id; empty = `sub`.
    pub id_attribute: String,
    /// PKCE; `None` = on.
    pub use_pkce: Option<bool>,
}

/// Settings of a templated provider (GitHub, Google).
#[derive(Clone, PartialEq, Eq)]
pub struct TemplateInput {
    /// Client id.
    pub client_id: String,
    /// Client secret; empty on update = keep the stored one.
    pub client_secret: String,
    /// Scopes; empty = the template's defaults.
    pub scopes: Vec<String>,
}

/// LDAP settings.
#[derive(Clone, PartialEq, Eq)]
pub struct LdapInput {
    /// `ldap://` / `ldaps://` URLs.
    pub servers: Vec<String>,
    /// StartTLS on `ldap://`.
    pub start_tls: bool,
    /// Verify certificates; `None` = on.
    pub tls_verify: Option<bool>,
    /// Extra trust anchor (PEM); `None` or empty = none.
    pub root_ca_pem: Option<String>,
    /// Base DN.
    pub base_dn: String,
    /// Service account DN.
    pub bind_dn: String,
    /// Service account password; empty on update = keep the stored one.
    pub bind_password: String,
    /// User search base.
    pub user_base: String,
    /// User object classes.
    pub user_object_classes: Vec<String>,
    /// Attributes compared with the username.
    pub user_filters: Vec<String>,
    /// Operation timeout; `None` = 10 s.
    pub timeout: Option<Duration>,
    /// Attribute mapping.
    pub attributes: LdapAttributes,
}

macro_rules! redacted_debug {
    ($ty:ident { $($field:ident),* }) => {
        impl std::fmt::Debug for $ty {
            // Secrets stay out of logs.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))$(.field(stringify!($field), &self.$field))*.finish_non_exhaustive()
            }
        }
    };
}

redacted_debug!(OidcInput { issuer, client_id, scopes, is_id_token_mapping, use_pkce });
redacted_debug!(OAuthInput { authorization_endpoint, token_endpoint, user_endpoint, client_id, scopes, id_attribute });
redacted_debug!(TemplateInput { client_id, scopes });
redacted_debug!(LdapInput { servers, start_tls, tls_verify, base_dn, bind_dn, user_base, timeout });

/// The answer of an LDAP intent: id, token (shown once) and the linked user.
#[derive(Clone, PartialEq, Eq)]
pub struct LdapIntent {
    /// The intent id.
    pub id: IntentId,
    /// The intent token (`fgi_…`).
    pub token: String,
    /// The linked or auto-created user, if any.
    pub user_id: Option<UserId>,
    /// Change metadata of the intent.
    pub details: Details,
}

impl std::fmt::Debug for LdapIntent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapIntent").field("id", &self.id).field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

struct Inner {
    config: IdpConfig,
    callback_url: String,
    repos: IdpRepos,
    identity: Identity,
    connector: Arc<dyn IdpConnector>,
    secrets: SecretBox,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdGenerator>,
}

/// The IdP use cases; cheap to clone, built once at start-up.
#[derive(Clone)]
pub struct Idps {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Idps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idps").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

fn precondition(id: &'static str, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::FailedPrecondition, id, message)
}

fn idp_not_found() -> Error {
    Error::new(ErrorKind::NotFound, IDP_NOT_FOUND, "IdP not found")
}

fn intent_not_found() -> Error {
    Error::new(ErrorKind::NotFound, INTENT_NOT_FOUND, "intent not found")
}

fn token_invalid() -> Error {
    Error::new(ErrorKind::PermissionDenied, IDP_INTENT_TOKEN_INVALID, "the intent token is invalid")
}

fn not_succeeded() -> Error {
    precondition(IDP_INTENT_NOT_SUCCEEDED, "the intent has not succeeded or was used already")
}

fn ldap_failed() -> Error {
    Error::new(ErrorKind::InvalidArgument, IDP_LDAP_LOGIN_FAILED, LDAP_LOGIN_FAILED_MESSAGE)
}

fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn failure(error: &str, description: &str) -> IntentFailure {
    IntentFailure { error: error.to_owned(), description: description.to_owned() }
}

/// The `error` value and description of a failed connector call (internal details never leave).
fn connector_failure(e: &Error) -> IntentFailure {
    match e.kind() {
        ErrorKind::Internal => failure("server_error", "internal error"),
        ErrorKind::NotFound
        | ErrorKind::InvalidArgument
        | ErrorKind::FailedPrecondition
        | ErrorKind::PermissionDenied
        | ErrorKind::Unauthenticated
        | ErrorKind::AlreadyExists
        | ErrorKind::ResourceExhausted
        | ErrorKind::Aborted
        | ErrorKind::Unavailable => failure(e.id(), e.message()),
    }
}

/// `base` with `pairs` appended to its query (existing parameters kept, values form-encoded).
fn with_query(base: &str, pairs: &[(&str, &str)]) -> Result<String> {
    let mut url = url::Url::parse(base).map_err(|e| Error::internal("IDP-redirect-unparsable", e))?;
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in pairs {
            query.append_pair(k, v);
        }
    }
    Ok(url.into())
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// The principal of trusted writes the IdP use cases make through [`Identity`] (auto-created users).
fn system_context() -> CallContext {
    CallContext {
        principal: Principal {
            user_id: UserId::from(SYSTEM_ACTOR),
            org_id: OrgId::from(""),
            instance_roles: vec![Role::IamOwner],
            org_roles: Vec::new(),
        },
        org_id: OrgId::from(""),
    }
}

/// Checks the IdP links of new users (the [`IdpLinkCheck`] port of [`Identity`]).
#[derive(Debug, Clone)]
pub struct IdpLinkChecker {
    repos: IdpRepos,
}

impl IdpLinkChecker {
    /// A checker over `repos`.
    pub fn new(repos: IdpRepos) -> Self {
        Self { repos }
    }
}

#[async_trait]
impl IdpLinkCheck for IdpLinkChecker {
    async fn check_new_links(&self, links: &[NewUserIdpLink]) -> Result<()> {
        let mut v = Violations::new();
        for (i, link) in links.iter().enumerate() {
            let field = format!("idp_links[{i}].idp_id");
            match self.repos.idps.get(&link.idp_id).await? {
                None => v.add(&field, "no such IdP"),
                Some(idp) if idp.state != IdpState::Active => v.add(&field, "the IdP is not active"),
                Some(idp) if !(idp.options.is_linking_allowed || idp.options.is_creation_allowed) => {
                    v.add(&field, "the IdP allows neither linking nor creating users");
                }
                Some(_) => {}
            }
        }
        v.finish(IDP_INVALID)?;
        for link in links {
            if self.repos.links.find(&link.idp_id, &link.external_user_id).await?.is_some() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    IDP_LINK_EXISTS,
                    "the account at the IdP is linked to a user already",
                ));
            }
        }
        Ok(())
    }
}

impl Idps {
    /// The use cases. `identity` gets an [`IdpLinkChecker`] over `repos` for the users this creates.
    pub fn new(
        config: IdpConfig,
        repos: IdpRepos,
        identity: Identity,
        connector: Arc<dyn IdpConnector>,
        secrets: SecretBox,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
    ) -> Self {
        let callback_url = format!("{}{CALLBACK_PATH}", config.external_url.trim_end_matches('/'));
        let identity = identity.with_idp_link_check(Arc::new(IdpLinkChecker::new(repos.clone())));
        Self { inner: Arc::new(Inner { config, callback_url, repos, identity, connector, secrets, clock, ids }) }
    }

    /// The redirect URI registered at providers: `<external URL>/idps/callback`.
    pub fn callback_url(&self) -> &str {
        &self.inner.callback_url
    }

    fn repos(&self) -> &IdpRepos {
        &self.inner.repos
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    fn secrets(&self) -> &SecretBox {
        &self.inner.secrets
    }

    // ---------------------------------------------------------------- configuration

    /// Seals `secret` for `purpose`, or keeps `previous` when `secret` is empty (updates); an empty secret
    /// without a previous one is a violation of `field`.
    fn seal_or_keep(
        &self,
        v: &mut Violations,
        field: &str,
        secret: &str,
        purpose: &str,
        previous: Option<&Sealed>,
    ) -> Result<Sealed> {
        match (secret.is_empty(), previous) {
            (true, Some(kept)) => Ok(kept.clone()),
            (true, None) => {
                v.add(field, "must not be empty");
                Ok(Sealed::from_stored(String::new()))
            }
            (false, _) => {
                v.check(field, rules::secret(secret));
                self.secrets().seal(purpose, secret)
            }
        }
    }

    /// Validates `input` and builds the stored configuration (secrets sealed for `id`); `previous` is the
    /// stored configuration on updates (same type, checked by the caller).
    fn build_kind(&self, id: &IdpId, provider: ProviderInput, previous: Option<&IdpKind>) -> Result<IdpKind> {
        let mut v = Violations::new();
        let previous_secret = match previous {
            Some(IdpKind::Oidc(c)) => Some(&c.client_secret),
            Some(IdpKind::OAuth(c)) => Some(&c.client_secret),
            Some(IdpKind::Ldap(c)) => Some(&c.bind_password),
            None => None,
        };
        let client_purpose = purpose_client_secret(id);
        let kind = match provider {
            ProviderInput::Oidc(OidcInput {
                issuer,
                client_id,
                client_secret,
                scopes,
                is_id_token_mapping,
                use_pkce,
            }) => {
                v.check("issuer", rules::http_url(&issuer));
                v.check("client_id", rules::token_text(&client_id));
                rules::scopes(&mut v, "scopes", &scopes);
                let client_secret =
                    self.seal_or_keep(&mut v, "client_secret", &client_secret, &client_purpose, previous_secret)?;
                IdpKind::Oidc(OidcConfig {
                    issuer: issuer.trim_end_matches('/').to_owned(),
                    client_id,
                    client_secret,
                    scopes: if scopes.is_empty() { default_oidc_scopes() } else { scopes },
                    is_id_token_mapping,
                    use_pkce: use_pkce.unwrap_or(true),
                    template: None,
                })
            }
            ProviderInput::Google(TemplateInput { client_id, client_secret, scopes }) => {
                v.check("client_id", rules::token_text(&client_id));
                rules::scopes(&mut v, "scopes", &scopes);
                let client_secret =
                    self.seal_or_keep(&mut v, "client_secret", &client_secret, &client_purpose, previous_secret)?;
                IdpKind::Oidc(OidcConfig {
                    issuer: GOOGLE_ISSUER.to_owned(),
                    client_id,
                    client_secret,
                    scopes: if scopes.is_empty() { default_oidc_scopes() } else { scopes },
                    is_id_token_mapping: false,
                    use_pkce: true,
                    template: Some(IdpTemplate::Google),
                })
            }
            ProviderInput::OAuth(OAuthInput {
                authorization_endpoint,
                token_endpoint,
                user_endpoint,
                client_id,
                client_secret,
                scopes,
                id_attribute,
                use_pkce,
            }) => {
                v.check("authorization_endpoint", rules::http_url(&authorization_endpoint));
                v.check("token_endpoint", rules::http_url(&token_endpoint));
                v.check("user_endpoint", rules::http_url(&user_endpoint));
                v.check("client_id", rules::token_text(&client_id));
                rules::scopes(&mut v, "scopes", &scopes);
                if !id_attribute.is_empty() {
                    v.check("id_attribute", rules::token_text(&id_attribute));
                }
                let client_secret =
                    self.seal_or_keep(&mut v, "client_secret", &client_secret, &client_purpose, previous_secret)?;
                IdpKind::OAuth(OAuthConfig {
                    authorization_endpoint,
                    token_endpoint,
                    user_endpoint,
                    client_id,
                    client_secret,
                    scopes,
                    id_attribute: if id_attribute.is_empty() { "sub".to_owned() } else { id_attribute },
                    use_pkce: use_pkce.unwrap_or(true),
                    template: None,
                })
            }
            ProviderInput::GitHub(TemplateInput { client_id, client_secret, scopes }) => {
                v.check("client_id", rules::token_text(&client_id));
                rules::scopes(&mut v, "scopes", &scopes);
                let client_secret =
                    self.seal_or_keep(&mut v, "client_secret", &client_secret, &client_purpose, previous_secret)?;
                IdpKind::OAuth(OAuthConfig {
                    authorization_endpoint: GITHUB_AUTHORIZATION_ENDPOINT.to_owned(),
                    token_endpoint: GITHUB_TOKEN_ENDPOINT.to_owned(),
                    user_endpoint: GITHUB_USER_ENDPOINT.to_owned(),
                    client_id,
                    client_secret,
                    scopes: if scopes.is_empty() { default_github_scopes() } else { scopes },
                    id_attribute: GITHUB_ID_ATTRIBUTE.to_owned(),
                    use_pkce: true,
                    template: Some(IdpTemplate::GitHub),
                })
            }
            ProviderInput::Ldap(input) => IdpKind::Ldap(self.build_ldap(&mut v, id, input, previous_secret)?),
        };
        v.finish(IDP_INVALID)?;
        Ok(kind)
    }

    fn build_ldap(
        &self,
        v: &mut Violations,
        id: &IdpId,
        input: LdapInput,
        previous_secret: Option<&Sealed>,
    ) -> Result<LdapConfig> {
        let LdapInput {
            servers,
            start_tls,
            tls_verify,
            root_ca_pem,
            base_dn,
            bind_dn,
            bind_password,
            user_base,
            user_object_classes,
            user_filters,
            timeout,
            attributes,
        } = input;
        if servers.is_empty() {
            v.add("servers", "must have at least one entry");
        } else if servers.len() > rules::MAX_LIST {
            v.add("servers", format!("must have at most {} entries", rules::MAX_LIST));
        }
        for (i, server) in servers.iter().enumerate() {
            v.check(&format!("servers[{i}]"), rules::ldap_url(server));
            if start_tls && server.to_ascii_lowercase().starts_with("ldaps://") {
                v.add(&format!("servers[{i}]"), "StartTLS cannot be combined with ldaps://");
            }
        }
        v.check("base_dn", rules::dn(&base_dn));
        v.check("bind_dn", rules::dn(&bind_dn));
        v.check("user_base", rules::dn(&user_base));
        rules::attribute_list(v, "user_object_classes", &user_object_classes);
        rules::attribute_list(v, "user_filters", &user_filters);
        let timeout = timeout.unwrap_or(super::model::DEFAULT_LDAP_TIMEOUT);
        v.check("timeout", rules::ldap_timeout(timeout));
        let root_ca_pem = root_ca_pem.filter(|pem| !pem.trim().is_empty());
        if let Some(pem) = &root_ca_pem {
            v.check("root_ca", rules::pem_certificate(pem));
        }
        let LdapAttributes {
            id_attribute,
            first_name_attribute,
            last_name_attribute,
            display_name_attribute,
            nick_name_attribute,
            preferred_username_attribute,
            email_attribute,
            email_verified_attribute,
            phone_attribute,
            phone_verified_attribute,
            preferred_language_attribute,
            avatar_url_attribute,
            profile_attribute,
        } = &attributes;
        v.check("attributes.id_attribute", rules::attribute_name(id_attribute));
        for (field, value) in [
            ("attributes.first_name_attribute", first_name_attribute),
            ("attributes.last_name_attribute", last_name_attribute),
            ("attributes.display_name_attribute", display_name_attribute),
            ("attributes.nick_name_attribute", nick_name_attribute),
            ("attributes.preferred_username_attribute", preferred_username_attribute),
            ("attributes.email_attribute", email_attribute),
            ("attributes.email_verified_attribute", email_verified_attribute),
            ("attributes.phone_attribute", phone_attribute),
            ("attributes.phone_verified_attribute", phone_verified_attribute),
            ("attributes.preferred_language_attribute", preferred_language_attribute),
            ("attributes.avatar_url_attribute", avatar_url_attribute),
            ("attributes.profile_attribute", profile_attribute),
        ] {
            v.check(field, rules::optional_attribute_name(value));
        }
        let bind_password =
            self.seal_or_keep(v, "bind_password", &bind_password, &purpose_bind_password(id), previous_secret)?;
        Ok(LdapConfig {
            servers,
            start_tls,
            tls_verify: tls_verify.unwrap_or(true),
            root_ca_pem,
            base_dn,
            bind_dn,
            bind_password,
            user_base,
            user_object_classes,
            user_filters,
            timeout,
            attributes,
        })
    }

    fn name(v: &mut Violations, name: &str) -> String {
        let name = name.trim();
        v.check("name", validate::required_text(name, MAX_TEXT));
        name.to_owned()
    }

    /// Adds an IdP (`idp.write` on the instance), state Active; secrets are sealed.
    pub async fn add_idp(&self, ctx: &CallContext, input: IdpInput) -> Result<Idp> {
        ctx.require_instance(Permission::IdpWrite)?;
        let IdpInput { name, options, provider } = input;
        let id = IdpId::from(self.inner.ids.new_id());
        let mut v = Violations::new();
        let name = Self::name(&mut v, &name);
        v.finish(IDP_INVALID)?;
        let kind = self.build_kind(&id, provider, None)?;
        let record = NewIdpRecord { id, name, options, kind };
        self.repos().idps.create(&record, ctx.actor()).await
    }

    /// Replaces an IdP's configuration (`idp.write`); the type must stay the same (else FailedPrecondition
    /// [`IDP_TYPE_MISMATCH`]); an empty client secret / bind password keeps the stored one.
    pub async fn update_idp(&self, ctx: &CallContext, id: &IdpId, input: IdpInput) -> Result<Details> {
        ctx.require_instance(Permission::IdpWrite)?;
        let IdpInput { name, options, provider } = input;
        let mut v = Violations::new();
        let name = Self::name(&mut v, &name);
        v.finish(IDP_INVALID)?;
        let current = self.repos().idps.get(id).await?.ok_or_else(idp_not_found)?;
        if current.kind.idp_type() != provider.idp_type() {
            return Err(precondition(IDP_TYPE_MISMATCH, "the IdP is of another type"));
        }
        let kind = self.build_kind(id, provider, Some(&current.kind))?;
        let update = IdpUpdate { name, options, kind };
        self.repos().idps.update(id, current.details.sequence, &update, ctx.actor()).await
    }

    /// The IdP (`idp.read`); secrets stay sealed.
    pub async fn get_idp(&self, ctx: &CallContext, id: &IdpId) -> Result<Idp> {
        ctx.require_instance(Permission::IdpRead)?;
        self.repos().idps.get(id).await?.ok_or_else(idp_not_found)
    }

    /// IdPs matching `filters` (`idp.read`).
    pub async fn list_idps(&self, ctx: &CallContext, filters: Vec<IdpFilter>, q: ListQuery) -> Result<Page<Idp>> {
        ctx.require_instance(Permission::IdpRead)?;
        let q = validate::list_query(q)?;
        let mut v = Violations::new();
        for filter in &filters {
            match filter {
                IdpFilter::Name(name, _) => {
                    v.check("queries.idp_name_query.name", validate::optional_text(name, MAX_TEXT))
                }
                IdpFilter::Type(_) => {}
            }
        }
        v.finish(IDP_INVALID)?;
        self.repos().idps.list(&filters, &q).await
    }

    /// Deletes an IdP with its links and intents (`idp.write`).
    pub async fn delete_idp(&self, ctx: &CallContext, id: &IdpId) -> Result<Details> {
        ctx.require_instance(Permission::IdpWrite)?;
        self.repos().idps.delete(id, ctx.actor()).await
    }

    /// Deactivates an active IdP (`idp.write`): no new intents, links or session checks with it.
    pub async fn deactivate_idp(&self, ctx: &CallContext, id: &IdpId) -> Result<Details> {
        self.change_state(ctx, id, IdpStateChange::Deactivate).await
    }

    /// Reactivates an inactive IdP (`idp.write`).
    pub async fn reactivate_idp(&self, ctx: &CallContext, id: &IdpId) -> Result<Details> {
        self.change_state(ctx, id, IdpStateChange::Reactivate).await
    }

    async fn change_state(&self, ctx: &CallContext, id: &IdpId, change: IdpStateChange) -> Result<Details> {
        ctx.require_instance(Permission::IdpWrite)?;
        let idp = self.repos().idps.get(id).await?.ok_or_else(idp_not_found)?;
        let from = match change {
            IdpStateChange::Deactivate => IdpState::Active,
            IdpStateChange::Reactivate => IdpState::Inactive,
        };
        if idp.state != from {
            return Err(precondition(IDP_STATE, format!("the IdP is already {}", idp.state.as_str())));
        }
        self.repos().idps.set_state(id, change, ctx.actor()).await
    }

    // ---------------------------------------------------------------- opened providers

    fn redirect_provider(&self, idp: &Idp) -> Result<Option<RedirectProvider>> {
        let purpose = purpose_client_secret(&idp.id);
        Ok(match &idp.kind {
            IdpKind::Oidc(c) => Some(RedirectProvider {
                kind: RedirectKind::Oidc { issuer: c.issuer.clone(), is_id_token_mapping: c.is_id_token_mapping },
                client_id: c.client_id.clone(),
                client_secret: self.secrets().open(&purpose, &c.client_secret)?,
                scopes: c.scopes.clone(),
                use_pkce: c.use_pkce,
            }),
            IdpKind::OAuth(c) => Some(RedirectProvider {
                kind: RedirectKind::OAuth {
                    authorization_endpoint: c.authorization_endpoint.clone(),
                    token_endpoint: c.token_endpoint.clone(),
                    user_endpoint: c.user_endpoint.clone(),
                    id_attribute: c.id_attribute.clone(),
                },
                client_id: c.client_id.clone(),
                client_secret: self.secrets().open(&purpose, &c.client_secret)?,
                scopes: c.scopes.clone(),
                use_pkce: c.use_pkce,
            }),
            IdpKind::Ldap(_) => None,
        })
    }

    fn ldap_provider(&self, id: &IdpId, c: &LdapConfig) -> Result<LdapProvider> {
        Ok(LdapProvider {
            servers: c.servers.clone(),
            start_tls: c.start_tls,
            tls_verify: c.tls_verify,
            root_ca_pem: c.root_ca_pem.clone(),
            base_dn: c.base_dn.clone(),
            bind_dn: c.bind_dn.clone(),
            bind_password: self.secrets().open(&purpose_bind_password(id), &c.bind_password)?,
            user_base: c.user_base.clone(),
            user_object_classes: c.user_object_classes.clone(),
            user_filters: c.user_filters.clone(),
            timeout: c.timeout,
            attributes: c.attributes.clone(),
        })
    }

    /// The active IdP `id` for a new intent.
    async fn active_idp(&self, id: &IdpId) -> Result<Idp> {
        let idp = self.repos().idps.get(id).await?.ok_or_else(idp_not_found)?;
        if idp.state != IdpState::Active {
            return Err(precondition(IDP_INACTIVE, "the IdP is not active"));
        }
        Ok(idp)
    }

    // ---------------------------------------------------------------- intents

    /// Starts a redirect intent (any authenticated caller): both URLs must pass the allowlist, the IdP must
    /// be an active OIDC/OAuth one. Answers the authorization URL (`state` = intent id, PKCE S256, nonce).
    pub async fn start_redirect(
        &self,
        ctx: &CallContext,
        idp_id: &str,
        success_url: &str,
        failure_url: &str,
    ) -> Result<(String, Details)> {
        let mut v = Violations::new();
        v.check("idp_id", validate::id(idp_id));
        v.finish(IDP_INVALID)?;
        let allowlist = &self.inner.config.allowlist;
        allowlist.check("urls.success_url", success_url)?;
        allowlist.check("urls.failure_url", failure_url)?;
        let idp = self.active_idp(&IdpId::from(idp_id)).await?;
        let Some(provider) = self.redirect_provider(&idp)? else {
            return Err(Error::invalid_field(IDP_TYPE_NOT_IMPLEMENTED, "urls", TYPE_NOT_IMPLEMENTED_MESSAGE));
        };
        let id = IntentId::from(self.inner.ids.new_id());
        let pkce = if provider.use_pkce { Some(new_pkce()?) } else { None };
        let nonce = match provider.kind {
            RedirectKind::Oidc { .. } => Some(new_nonce()?),
            RedirectKind::OAuth { .. } => None,
        };
        let request = AuthRequest {
            state: id.to_string(),
            redirect_uri: self.inner.callback_url.clone(),
            pkce_challenge: pkce.as_ref().map(|p| p.challenge.clone()),
            nonce: nonce.clone(),
        };
        // Asked before anything is stored: an unreachable provider leaves no intent behind.
        let auth_url = self.inner.connector.authorization_url(&provider, &request).await?;
        let pkce_verifier = match &pkce {
            Some(p) => Some(self.secrets().seal(&purpose_pkce_verifier(&id), &p.verifier)?),
            None => None,
        };
        let now = self.now();
        let record = NewIntentRecord {
            id,
            idp_id: idp.id,
            success_url: Some(success_url.to_owned()),
            failure_url: Some(failure_url.to_owned()),
            pkce_verifier,
            nonce,
            created_at: now,
            expires_at: now + to_delta(STARTED_INTENT_LIFETIME),
        };
        let details = self.repos().intents.create(&record, ctx.actor()).await?;
        Ok((auth_url, details))
    }

    /// Deletes intents that expired more than an hour ago (started ones that never came back, succeeded
    /// ones never used, failed and consumed ones); the hour keeps a late callback's answer "failed" rather
    /// than "unknown state". Answers how many were deleted.
    pub async fn purge_expired_intents(&self) -> Result<u64> {
        let before = self.now() - TimeDelta::hours(1);
        self.repos().intents.purge_expired(before).await
    }

    /// Handles the IdP's redirect to `/idps/callback`. Missing or unknown `state` ⇒ BadRequest (never a
    /// redirect); every other failure marks the intent failed and redirects to its failure URL; success
    /// redirects to `success_url?id=&token=[&user=]`. `Err` only for faults of this server (database).
    pub async fn callback(&self, params: CallbackParams) -> Result<CallbackOutcome> {
        let CallbackParams { state, code, error, error_description } = params;
        let Some(state) = non_empty(state.as_deref()) else {
            return Ok(CallbackOutcome::BadRequest("the state parameter is missing".to_owned()));
        };
        if validate::id(state).is_err() {
            return Ok(CallbackOutcome::BadRequest("the state parameter is unknown".to_owned()));
        }
        let Some(intent) = self.repos().intents.get(&IntentId::from(state)).await? else {
            return Ok(CallbackOutcome::BadRequest("the state parameter is unknown".to_owned()));
        };
        let (Some(success_url), Some(failure_url)) = (intent.success_url.clone(), intent.failure_url.clone()) else {
            return Ok(CallbackOutcome::BadRequest("the intent does not take a callback".to_owned()));
        };
        if intent.state != IntentState::Started {
            // Already finished: nothing to change, but the browser still lands somewhere sensible.
            return self.failure_redirect(
                &intent.id,
                &failure_url,
                &failure("intent_not_started", "the login was completed already"),
            );
        }
        let outcome =
            self.complete_redirect(&intent, code.as_deref(), error.as_deref(), error_description.as_deref()).await?;
        match outcome {
            Ok((token, user)) => {
                let mut pairs = vec![("id", intent.id.as_str()), ("token", token.as_str())];
                if let Some(user) = &user {
                    pairs.push(("user", user.as_str()));
                }
                Ok(CallbackOutcome::Redirect(with_query(&success_url, &pairs)?))
            }
            Err(f) => {
                // A concurrent callback may have finished the intent first; then this one only redirects.
                self.repos().intents.fail(&intent.id, &f, SYSTEM_ACTOR).await?;
                self.failure_redirect(&intent.id, &failure_url, &f)
            }
        }
    }

    fn failure_redirect(&self, id: &IntentId, failure_url: &str, f: &IntentFailure) -> Result<CallbackOutcome> {
        let pairs = [("id", id.as_str()), ("error", f.error.as_str()), ("error_description", f.description.as_str())];
        Ok(CallbackOutcome::Redirect(with_query(failure_url, &pairs)?))
    }

    /// The checks and the exchange of a callback: Ok(Ok((token, user))) on success (stored), Ok(Err(failure))
    /// when the login failed (not stored yet), Err for faults of this server.
    async fn complete_redirect(
        &self,
        intent: &Intent,
        code: Option<&str>,
        error: Option<&str>,
        error_description: Option<&str>,
    ) -> Result<std::result::Result<(String, Option<UserId>), IntentFailure>> {
        if intent.is_expired(self.now()) {
            return Ok(Err(failure("intent_expired", "the login took too long")));
        }
        let idp = match self.repos().idps.get(&intent.idp_id).await? {
            Some(idp) if idp.state == IdpState::Active => idp,
            Some(_) | None => return Ok(Err(failure("idp_inactive", "the IdP is not active"))),
        };
        if let Some(error) = non_empty(error) {
            let description = error_description.unwrap_or_default();
            return Ok(Err(failure(
                &error.chars().take(MAX_TEXT).collect::<String>(),
                &description.chars().take(1000).collect::<String>(),
            )));
        }
        let Some(code) = non_empty(code) else {
            return Ok(Err(failure("invalid_request", "the callback carries no code")));
        };
        let Some(provider) = self.redirect_provider(&idp)? else {
            return Ok(Err(failure("idp_inactive", "the IdP does not use redirects")));
        };
        let pkce_verifier = match &intent.pkce_verifier {
            Some(sealed) => Some(self.secrets().open(&purpose_pkce_verifier(&intent.id), sealed)?),
            None => None,
        };
        let exchange = CodeExchange {
            code: code.to_owned(),
            redirect_uri: self.inner.callback_url.clone(),
            pkce_verifier,
            nonce: intent.nonce.clone(),
        };
        let external = match self.inner.connector.exchange(&provider, &exchange).await {
            Ok(external) => external,
            Err(e) => return Ok(Err(connector_failure(&e))),
        };
        if external.id.is_empty() {
            return Ok(Err(failure(super::ports::CONNECTOR_USERINFO_FAILED, "the IdP answered no user id")));
        }
        let (token, user) = match self.succeed(intent, &idp, external).await? {
            Some(done) => done,
            None => return Ok(Err(failure("intent_not_started", "the login was completed already"))),
        };
        Ok(Ok((token, user)))
    }

    /// Finds (or auto-creates) the user, seals the upstream tokens and stores the success; `None` when the
    /// intent was finished concurrently.
    async fn succeed(
        &self,
        intent: &Intent,
        idp: &Idp,
        external: ExternalUser,
    ) -> Result<Option<(String, Option<UserId>)>> {
        let user_id = match self.repos().links.find(&idp.id, &external.id).await? {
            Some(link) => Some(link.user_id),
            None => self.auto_create(idp, &external).await?,
        };
        let ExternalUser { id, username, raw, access_token, id_token, ldap_attributes, profile } = external;
        let seal = |name: &str, value: Option<String>| -> Result<Option<Sealed>> {
            value.map(|v| self.secrets().seal(&purpose_intent_token(&intent.id, name), &v)).transpose()
        };
        let stored = StoredExternalUser {
            id,
            username,
            raw,
            access_token: seal("access_token", access_token)?,
            id_token: seal("id_token", id_token)?,
            ldap_attributes,
            profile,
        };
        let (token, token_hash) = new_intent_token()?;
        let now = self.now();
        let success = IntentSuccess {
            token_hash,
            external: stored,
            user_id: user_id.clone(),
            succeeded_at: now,
            expires_at: now + to_delta(self.inner.config.intent_lifetime),
        };
        Ok(self.repos().intents.succeed(&intent.id, &success, SYSTEM_ACTOR).await?.map(|_| (token, user_id)))
    }

    /// Creates the user of an unlinked account when the IdP allows auto-creation: in the default org, with
    /// the mapped profile and a link, in one write. `None` when not allowed or when the profile does not
    /// make a valid user (the client can still create it after retrieving the intent).
    async fn auto_create(&self, idp: &Idp, external: &ExternalUser) -> Result<Option<UserId>> {
        let ProviderOptions { is_creation_allowed, is_auto_creation, .. } = idp.options;
        if !(is_creation_allowed && is_auto_creation) {
            return Ok(None);
        }
        let system = system_context();
        let identity = &self.inner.identity;
        let filters =
            vec![OrgFilter::Name(DEFAULT_ORG_NAME.to_owned(), TextMethod::Equals), OrgFilter::State(OrgState::Active)];
        let orgs = identity.list_orgs(&system, filters, ListQuery { offset: 0, limit: 1, asc: true }).await?;
        let Some(org) = orgs.items.into_iter().next() else {
            return Ok(None);
        };
        let p = &external.profile;
        let Some(email) = non_empty(p.email.as_deref()) else {
            return Ok(None);
        };
        let fallback =
            non_empty(p.preferred_username.as_deref()).or(non_empty(Some(external.username.as_str()))).unwrap_or(email);
        let given = non_empty(p.given_name.as_deref()).or(non_empty(p.display_name.as_deref())).unwrap_or(fallback);
        let family = non_empty(p.family_name.as_deref()).unwrap_or(given);
        let language =
            non_empty(p.preferred_language.as_deref()).filter(|l| validate::language(l).is_ok()).unwrap_or_default();
        let new = NewHuman {
            org_id: Some(org.id),
            user_id: None,
            username: Some(fallback.to_owned()),
            profile: Profile {
                given_name: given.to_owned(),
                family_name: family.to_owned(),
                display_name: non_empty(p.display_name.as_deref()).unwrap_or_default().to_owned(),
                preferred_language: language.to_owned(),
            },
            email: Email { address: email.to_owned(), verified: p.email_verified },
            phone: None,
            password: None,
            idp_links: vec![NewUserIdpLink {
                idp_id: idp.id.clone(),
                external_user_id: external.id.clone(),
                external_username: external.username.chars().take(MAX_TEXT).collect(),
            }],
        };
        match identity.add_human(&system, new).await {
            Ok(user) => Ok(Some(user.id)),
            Err(e) if e.kind() == ErrorKind::InvalidArgument => Ok(None),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // A concurrent login of the same account may have created and linked it first.
                Ok(self.repos().links.find(&idp.id, &external.id).await?.map(|l| l.user_id))
            }
            Err(e) => Err(e),
        }
    }

    /// Runs an LDAP login at once (any authenticated caller). Every failure — empty or oversized
    /// credentials (refused before any network), unknown user, wrong password, several entries, directory
    /// unreachable — marks the intent failed and answers the same InvalidArgument [`IDP_LDAP_LOGIN_FAILED`].
    pub async fn start_ldap(
        &self,
        ctx: &CallContext,
        idp_id: &str,
        username: &str,
        password: &str,
    ) -> Result<LdapIntent> {
        let mut v = Violations::new();
        v.check("idp_id", validate::id(idp_id));
        v.finish(IDP_INVALID)?;
        let idp = self.active_idp(&IdpId::from(idp_id)).await?;
        let IdpKind::Ldap(config) = &idp.kind else {
            return Err(Error::invalid_field(IDP_TYPE_NOT_IMPLEMENTED, "ldap", TYPE_NOT_IMPLEMENTED_MESSAGE));
        };
        let id = IntentId::from(self.inner.ids.new_id());
        let now = self.now();
        let record = NewIntentRecord {
            id: id.clone(),
            idp_id: idp.id.clone(),
            success_url: None,
            failure_url: None,
            pkce_verifier: None,
            nonce: None,
            created_at: now,
            expires_at: now + to_delta(STARTED_INTENT_LIFETIME),
        };
        self.repos().intents.create(&record, ctx.actor()).await?;
        let usable = |s: &str| !s.is_empty() && s.len() <= MAX_LDAP_CREDENTIAL && !s.contains('\0');
        let login = if usable(username) && usable(password) {
            let provider = self.ldap_provider(&idp.id, config)?;
            self.inner.connector.ldap_login(&provider, username, password).await
        } else {
            Err(ldap_failed())
        };
        let external = match login {
            Ok(external) if !external.id.is_empty() => external,
            Ok(_) => return Err(self.fail_ldap(&id, ctx, None).await),
            Err(e) => return Err(self.fail_ldap(&id, ctx, Some(e)).await),
        };
        let intent = self.repos().intents.get(&id).await?.ok_or_else(intent_not_found)?;
        let Some((token, user_id)) = self.succeed(&intent, &idp, external).await? else {
            return Err(ldap_failed());
        };
        let details = self.repos().intents.get(&id).await?.ok_or_else(intent_not_found)?.details;
        Ok(LdapIntent { id, token, user_id, details })
    }

    /// Marks the LDAP intent failed and answers the uniform error (the cause kept only as its source).
    async fn fail_ldap(&self, id: &IntentId, ctx: &CallContext, cause: Option<Error>) -> Error {
        let f = failure("ldap_login_failed", LDAP_LOGIN_FAILED_MESSAGE);
        if let Err(e) = self.repos().intents.fail(id, &f, ctx.actor()).await {
            return e;
        }
        match cause {
            Some(cause) => ldap_failed().with_source(cause),
            None => ldap_failed(),
        }
    }

    /// The intent `id` when `token` is its token; PermissionDenied [`IDP_INTENT_TOKEN_INVALID`] otherwise,
    /// FailedPrecondition [`IDP_INTENT_NOT_SUCCEEDED`] when it has no token (not succeeded).
    async fn intent_with_token(&self, id: &str, token: &str) -> Result<Intent> {
        let intent = self.repos().intents.get(&IntentId::from(id)).await?.ok_or_else(intent_not_found)?;
        let Some(hash) = &intent.token_hash else {
            return Err(not_succeeded());
        };
        if !intent_token_matches(token, hash) {
            return Err(token_invalid());
        }
        Ok(intent)
    }

    /// A succeeded, unexpired intent or the matching FailedPrecondition.
    fn usable(&self, intent: &Intent) -> Result<()> {
        if intent.state != IntentState::Succeeded {
            return Err(not_succeeded());
        }
        if intent.is_expired(self.now()) {
            return Err(precondition(IDP_INTENT_EXPIRED, "the intent has expired"));
        }
        Ok(())
    }

    /// What a succeeded, unexpired intent learned (any authenticated caller holding the token).
    pub async fn retrieve(&self, ctx: &CallContext, id: &str, token: &str) -> Result<IntentInformation> {
        let _ = ctx;
        let mut v = Violations::new();
        v.check("idp_intent_id", validate::id(id));
        v.check("idp_intent_token", validate::id(token));
        v.finish(IDP_INVALID)?;
        let intent = self.intent_with_token(id, token).await?;
        self.usable(&intent)?;
        let Intent { id, idp_id, external, user_id, details, .. } = intent;
        let external = external.ok_or_else(not_succeeded)?;
        let StoredExternalUser {
            id: external_user_id,
            username,
            raw,
            access_token,
            id_token,
            ldap_attributes,
            profile,
        } = external;
        let open = |name: &str, sealed: Option<Sealed>| -> Result<Option<String>> {
            sealed.map(|s| self.secrets().open(&purpose_intent_token(&id, name), &s)).transpose()
        };
        Ok(IntentInformation {
            details,
            idp_id,
            external_user_id,
            external_username: username,
            raw,
            access_token: open("access_token", access_token)?,
            id_token: open("id_token", id_token)?,
            ldap_attributes,
            profile,
            user_id,
        })
    }

    /// The checks of the session's `idp_intent` check, without writing.
    async fn check_for_session(&self, intent_id: &str, token: &str, user: &UserId) -> Result<Intent> {
        let intent = self.intent_with_token(intent_id, token).await?;
        self.usable(&intent)?;
        let active = self.repos().idps.get(&intent.idp_id).await?.is_some_and(|i| i.state == IdpState::Active);
        if !active {
            return Err(precondition(IDP_INACTIVE, "the IdP is not active"));
        }
        let belongs = match (&intent.user_id, &intent.external) {
            (Some(owner), _) => owner == user,
            (None, Some(external)) => {
                self.repos().links.find(&intent.idp_id, &external.id).await?.is_some_and(|link| link.user_id == *user)
            }
            (None, None) => false,
        };
        if !belongs {
            return Err(precondition(IDP_INTENT_OTHER_USER, "the intent belongs to another user"));
        }
        Ok(intent)
    }

    // ---------------------------------------------------------------- links

    /// The user `id` when the caller is that user or holds `perm` in its org.
    async fn user_for_links(&self, ctx: &CallContext, id: &UserId, perm: Permission) -> Result<User> {
        let user = self
            .inner
            .identity
            .find_user(id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, USER_NOT_FOUND, "user not found"))?;
        if user.id != ctx.principal.user_id {
            ctx.require(perm, &user.org_id)?;
        }
        Ok(user)
    }

    /// Links an account at an active IdP that allows linking to `user` (the user itself or `user.write`).
    pub async fn add_link(
        &self,
        ctx: &CallContext,
        user: &UserId,
        idp_id: &str,
        external_user_id: &str,
        external_username: &str,
    ) -> Result<Details> {
        let mut v = Violations::new();
        v.check("idp_link.idp_id", validate::id(idp_id));
        v.check("idp_link.user_id", validate::id(external_user_id));
        v.check("idp_link.user_name", validate::optional_text(external_username, MAX_TEXT));
        v.finish(IDP_INVALID)?;
        self.user_for_links(ctx, user, Permission::UserWrite).await?;
        let idp = self.active_idp(&IdpId::from(idp_id)).await?;
        if !idp.options.is_linking_allowed {
            return Err(precondition(IDP_LINKING_NOT_ALLOWED, "the IdP does not allow linking accounts"));
        }
        let link = IdpLink {
            idp_id: idp.id,
            user_id: user.clone(),
            external_user_id: external_user_id.to_owned(),
            external_username: external_username.to_owned(),
        };
        self.repos().links.add(&link, ctx.actor()).await
    }

    /// The links of `user` (the user itself or `user.read`).
    pub async fn list_links(&self, ctx: &CallContext, user: &UserId, q: ListQuery) -> Result<Page<IdpLink>> {
        let q = validate::list_query(q)?;
        self.user_for_links(ctx, user, Permission::UserRead).await?;
        self.repos().links.list(user, &q).await
    }

    /// Removes a link of `user` (the user itself or `user.write`).
    pub async fn remove_link(
        &self,
        ctx: &CallContext,
        user: &UserId,
        idp_id: &str,
        external_user_id: &str,
    ) -> Result<Details> {
        let mut v = Violations::new();
        v.check("idp_id", validate::id(idp_id));
        v.check("linked_user_id", validate::id(external_user_id));
        v.finish(IDP_INVALID)?;
        self.user_for_links(ctx, user, Permission::UserWrite).await?;
        self.repos().links.remove(user, &IdpId::from(idp_id), external_user_id, ctx.actor()).await
    }
}

#[async_trait]
impl IntentVerifier for Idps {
    async fn verify_for_session(&self, intent_id: &str, token: &str, user: &UserId) -> Result<()> {
        self.check_for_session(intent_id, token, user).await.map(|_| ())
    }

    async fn consume_for_session(&self, intent_id: &str, token: &str, user: &UserId) -> Result<()> {
        let intent = self.check_for_session(intent_id, token, user).await?;
        if self.repos().intents.consume(&intent.id, user.as_str()).await? { Ok(()) } else { Err(not_succeeded()) }
    }
}

#[async_trait]
impl IdpLinkCheck for Idps {
    async fn check_new_links(&self, links: &[NewUserIdpLink]) -> Result<()> {
        IdpLinkChecker::new(self.repos().clone()).check_new_links(links).await
    }
}
