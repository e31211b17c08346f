//! Connectors to external identity providers: OpenID Connect, plain OAuth2 and LDAP, behind the core's
//! [`IdpConnector`] port.

mod client;
pub mod ldap;
mod oauth;
mod oidc;

use std::time::Duration;

use async_trait::async_trait;
use flowgate_core::idp::model::ExternalProfile;
use flowgate_core::idp::ports::{
    AuthRequest, CONNECTOR_CONFIG_INVALID, CONNECTOR_EXCHANGE_FAILED, CONNECTOR_UNREACHABLE, CodeExchange,
    ExternalUser, IdpConnector, LdapProvider, RedirectKind, RedirectProvider,
};
use flowgate_core::{Error, ErrorKind, Result};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    ExtraTokenFields, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse as _, TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use self::client::{HttpClient, HttpError};
pub use self::ldap::escape_filter_value;

/// Timing of the connectors.
#[derive(Debug, Clone, Copy)]
pub struct ConnectorConfig {
    /// Bound on each HTTP request to an IdP (connect and whole answer).
    pub http_timeout: Duration,
    /// How long an issuer's discovery document and keys are used before they are fetched again.
    pub discovery_ttl: Duration,
}

impl Default for ConnectorConfig {
    /// 10 s per request, discovery kept 15 minutes.
    fn default() -> Self {
        Self { http_timeout: Duration::from_secs(10), discovery_ttl: Duration::from_secs(15 * 60) }
    }
}

/// The [`IdpConnector`] of flowgate: build it once and share it (it caches discovery per issuer).
pub struct Connectors {
    http: HttpClient,
    discovery: oidc::DiscoveryCache,
}

impl std::fmt::Debug for Connectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connectors").finish_non_exhaustive()
    }
}

impl Connectors {
    /// Connectors with `config`; fails (Internal) only when the HTTP client cannot be built.
    pub fn new(config: ConnectorConfig) -> Result<Self> {
        let ConnectorConfig { http_timeout, discovery_ttl } = config;
        let http = HttpClient::new(http_timeout).map_err(|e| Error::internal("IDP-http-client", e))?;
        Ok(Self { http, discovery: oidc::DiscoveryCache::new(discovery_ttl) })
    }
}

#[async_trait]
impl IdpConnector for Connectors {
    async fn authorization_url(&self, provider: &RedirectProvider, request: &AuthRequest) -> Result<String> {
        match &provider.kind {
            RedirectKind::Oidc { issuer, is_id_token_mapping: _ } => {
                let metadata = self.discovery.get(&self.http, issuer).await?;
                oidc::authorization_url(&metadata, provider, request)
            }
            RedirectKind::OAuth { authorization_endpoint, token_endpoint: _, user_endpoint: _, id_attribute: _ } => {
                let auth_url = AuthUrl::new(authorization_endpoint.clone())
                    .map_err(|e| config_invalid("authorization_endpoint", e.to_string()))?;
                authorization_url(auth_url, provider, request, &[])
            }
        }
    }

    async fn exchange(&self, provider: &RedirectProvider, exchange: &CodeExchange) -> Result<ExternalUser> {
        match &provider.kind {
            RedirectKind::Oidc { issuer, is_id_token_mapping } => {
                oidc::exchange(&self.http, &self.discovery, issuer, *is_id_token_mapping, provider, exchange).await
            }
            RedirectKind::OAuth { authorization_endpoint: _, token_endpoint, user_endpoint, id_attribute } => {
                oauth::exchange(&self.http, token_endpoint, user_endpoint, id_attribute, provider, exchange).await
            }
        }
    }

    async fn ldap_login(&self, provider: &LdapProvider, username: &str, password: &str) -> Result<ExternalUser> {
        ldap::login(provider, username, password).await
    }
}

// ------------------------------------------------------------------------------------- shared OAuth2 parts

/// The token response's `id_token`, kept as the raw string so that an unusable one fails its own check
/// (`id_token_invalid`) instead of failing the whole token response.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdTokenField {
    #[serde(default)]
    id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type TokenClient = oauth2::Client<
    BasicErrorResponse,
    StandardTokenResponse<IdTokenField, BasicTokenType>,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// What the token endpoint answered.
struct Tokens {
    access_token: String,
    id_token: Option<String>,
}

/// An InvalidArgument error: the provider's configuration `field` is unusable.
fn config_invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::invalid_field(CONNECTOR_CONFIG_INVALID, field, reason)
}

/// An Unavailable error: the IdP could not be reached (or answered with a server error).
fn unreachable(what: &str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::new(ErrorKind::Unavailable, CONNECTOR_UNREACHABLE, format!("the IdP could not be reached ({what})"))
        .with_source(source)
}

/// A FailedPrecondition error with a connector id; `message` must not contain secrets, codes or tokens.
fn refused(id: &'static str, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::FailedPrecondition, id, message)
}

fn oauth_client(
    provider: &RedirectProvider,
    auth_url: AuthUrl,
    token_url: TokenUrl,
    redirect_uri: &str,
    auth_type: AuthType,
) -> Result<TokenClient> {
    let redirect =
        RedirectUrl::new(redirect_uri.to_owned()).map_err(|e| config_invalid("redirect_uri", e.to_string()))?;
    let mut client = oauth2::Client::new(ClientId::new(provider.client_id.clone()))
        .set_auth_uri(auth_url)
        .set_token_uri(token_url)
        .set_redirect_uri(redirect)
        .set_auth_type(auth_type);
    if !provider.client_secret.is_empty() {
        client = client.set_client_secret(ClientSecret::new(provider.client_secret.clone()));
    }
    Ok(client)
}

/// The authorization URL: `response_type=code`, client id, redirect URI, scopes, state, and the PKCE
/// challenge (S256) and `extra` parameters (the OIDC nonce).
fn authorization_url(
    auth_url: AuthUrl,
    provider: &RedirectProvider,
    request: &AuthRequest,
    extra: &[(&str, &str)],
) -> Result<String> {
    // The token endpoint is not needed for the URL; any valid one keeps the client's type simple.
    let token_url = TokenUrl::from_url(auth_url.url().clone());
    let client = oauth_client(provider, auth_url, token_url, &request.redirect_uri, AuthType::BasicAuth)?;
    let mut authorize = client
        .authorize_url(|| CsrfToken::new(request.state.clone()))
        .add_scopes(provider.scopes.iter().map(|s| Scope::new(s.clone())));
    for (name, value) in extra {
        authorize = authorize.add_extra_param(*name, *value);
    }
    if provider.use_pkce {
        let challenge = request
            .pkce_challenge
            .as_deref()
            .ok_or_else(|| Error::internal("IDP-pkce-missing", "PKCE is configured but no challenge was given"))?;
        // The core derives the challenge from the verifier it keeps; only the S256 method is ever sent.
        authorize =
            authorize.add_extra_param("code_challenge", challenge).add_extra_param("code_challenge_method", "S256");
    }
    let (url, _state) = authorize.url();
    Ok(url.into())
}

/// Exchanges the code at `token_url` (with the PKCE verifier when given).
async fn exchange_code(
    http: &HttpClient,
    token_url: TokenUrl,
    auth_type: AuthType,
    provider: &RedirectProvider,
    exchange: &CodeExchange,
) -> Result<Tokens> {
    let auth_url = AuthUrl::from_url(token_url.url().clone());
    let client = oauth_client(provider, auth_url, token_url, &exchange.redirect_uri, auth_type)?;
    let mut request = client.exchange_code(AuthorizationCode::new(exchange.code.clone()));
    if let Some(verifier) = &exchange.pkce_verifier {
        request = request.set_pkce_verifier(PkceCodeVerifier::new(verifier.clone()));
    }
    let response = request.request_async(http).await.map_err(|error| match error {
        RequestTokenError::ServerResponse(answer) => {
            // The error code is a short registered token (invalid_grant, …); the description is the IdP's
            // prose and stays out of the message.
            refused(CONNECTOR_EXCHANGE_FAILED, format!("the IdP refused the code: {}", answer.error()))
        }
        RequestTokenError::Request(source) if source.is_unreachable() => unreachable("token endpoint", source),
        RequestTokenError::Request(source) => {
            refused(CONNECTOR_EXCHANGE_FAILED, "the token endpoint answered unusably").with_source(source)
        }
        // The parser's message may quote the body (which holds tokens): only the JSON path is kept.
        RequestTokenError::Parse(error, _body) => refused(CONNECTOR_EXCHANGE_FAILED, "the token response is unusable")
            .with_source(format!("unexpected JSON at {}", error.path())),
        RequestTokenError::Other(reason) => {
            refused(CONNECTOR_EXCHANGE_FAILED, "the token response is unusable").with_source(reason)
        }
    })?;
    Ok(Tokens {
        access_token: response.access_token().secret().clone(),
        id_token: response.extra_fields().id_token.clone(),
    })
}

/// GETs `url` with the access token and answers the JSON object; errors carry `id`.
async fn fetch_user(
    http: &HttpClient,
    url: &url::Url,
    access_token: &str,
    id: &'static str,
) -> Result<Map<String, Value>> {
    let response = http.get_with_bearer(url, access_token).await.map_err(|e: HttpError| {
        if e.is_unreachable() {
            unreachable("user endpoint", e)
        } else {
            refused(id, "the user endpoint answered unusably").with_source(e)
        }
    })?;
    let status = response.status();
    if status.is_server_error() {
        return Err(unreachable("user endpoint", format!("HTTP {status}")));
    }
    if !status.is_success() {
        return Err(refused(id, format!("the user endpoint answered HTTP {}", status.as_u16())));
    }
    if !client::is_json(&response) {
        return Err(refused(id, "the user endpoint did not answer JSON"));
    }
    match serde_json::from_slice::<Value>(response.body()) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(refused(id, "the user endpoint did not answer a JSON object")),
        Err(error) => Err(refused(id, "the user endpoint did not answer JSON").with_source(format!(
            "JSON error at line {} column {}",
            error.line(),
            error.column()
        ))),
    }
}

/// A non-empty string claim.
fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A boolean claim; some IdPs send `"true"` as a string.
fn bool_claim(claims: &Map<String, Value>, name: &str) -> bool {
    match claims.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        Some(Value::Null | Value::Number(_) | Value::Array(_) | Value::Object(_)) | None => false,
    }
}

/// The profile from OpenID standard claims (also used for OAuth user JSON, where GitHub's `login` stands
/// in for `preferred_username`).
fn profile_from_claims(claims: &Map<String, Value>) -> ExternalProfile {
    ExternalProfile {
        email: string_claim(claims, "email"),
        email_verified: bool_claim(claims, "email_verified"),
        given_name: string_claim(claims, "given_name"),
        family_name: string_claim(claims, "family_name"),
        display_name: string_claim(claims, "name"),
        nick_name: string_claim(claims, "nickname"),
        preferred_username: string_claim(claims, "preferred_username").or_else(|| string_claim(claims, "login")),
        phone: string_claim(claims, "phone_number"),
        preferred_language: string_claim(claims, "locale"),
    }
}

/// The username: preferred username, else e-mail, else the id.
fn username(profile: &ExternalProfile, id: &str) -> String {
    profile.preferred_username.clone().or_else(|| profile.email.clone()).unwrap_or_else(|| id.to_owned())
}
