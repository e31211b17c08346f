//! OpenID Connect: discovery (cached per issuer), authorization URL, code exchange, ID token validation and
//! userinfo.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flowgate_core::idp::ports::{
    AuthRequest, CONNECTOR_CONFIG_INVALID, CONNECTOR_ID_TOKEN_INVALID, CONNECTOR_NONCE_MISMATCH,
    CONNECTOR_USERINFO_FAILED, CodeExchange, ExternalUser, RedirectProvider,
};
use flowgate_core::{Error, Result};
use oauth2::{AuthType, TokenUrl};
use openidconnect::core::{
    CoreClientAuthMethod, CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{ClaimsVerificationError, ClientId, Nonce, SignatureVerificationError};
use serde_json::{Map, Value, json};
use tokio::sync::{Mutex, RwLock};

use super::client::HttpClient;
use super::{config_invalid, fetch_user, profile_from_claims, refused, unreachable, username};
use crate::jwt::{IssuerUrl, check_fetch_url};

/// Signature algorithms an ID token may use: asymmetric only, so neither `none` nor an HMAC keyed with
/// something public (the JWKS, or a client secret the library would otherwise accept) can pass.
const ALLOWED_ALGORITHMS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Least age of cached keys before an ID token with an unknown key makes the connector fetch them again
/// (key rotation), so that tokens with made-up key ids cannot drive traffic to the issuer.
const ROTATION_INTERVAL: Duration = Duration::from_secs(30);

/// Discovery document plus keys of one issuer, and when they were fetched.
#[derive(Clone)]
struct Cached {
    metadata: Arc<CoreProviderMetadata>,
    fetched_at: Instant,
}

/// Discovery documents and key sets by issuer, each kept for the TTL.
pub(crate) struct DiscoveryCache {
    ttl: Duration,
    /// One slot per issuer; the slot's lock is held while fetching, so concurrent logins share one fetch.
    slots: RwLock<HashMap<String, Arc<Mutex<Option<Cached>>>>>,
}

impl DiscoveryCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self { ttl, slots: RwLock::new(HashMap::new()) }
    }

    /// The issuer's metadata (with its keys), fetched when absent or older than the TTL.
    pub(crate) async fn get(&self, http: &HttpClient, issuer: &str) -> Result<Arc<CoreProviderMetadata>> {
        self.get_fresher_than(http, issuer, self.ttl).await
    }

    /// The issuer's metadata, fetched when absent or older than `max_age`.
    async fn get_fresher_than(
        &self,
        http: &HttpClient,
        issuer: &str,
        max_age: Duration,
    ) -> Result<Arc<CoreProviderMetadata>> {
        let slot = self.slot(issuer).await;
        let mut cached = slot.lock().await;
        if let Some(entry) = cached.as_ref()
            && entry.fetched_at.elapsed() < max_age.min(self.ttl)
        {
            return Ok(entry.metadata.clone());
        }
        let metadata = Arc::new(discover(http, issuer).await?);
        *cached = Some(Cached { metadata: metadata.clone(), fetched_at: Instant::now() });
        Ok(metadata)
    }

    async fn slot(&self, issuer: &str) -> Arc<Mutex<Option<Cached>>> {
        if let Some(slot) = self.slots.read().await.get(issuer) {
            return slot.clone();
        }
        self.slots.write().await.entry(issuer.to_owned()).or_default().clone()
    }
}

/// Fetches `<issuer>/.well-known/openid-configuration` and the key set it names.
async fn discover(http: &HttpClient, issuer: &str) -> Result<CoreProviderMetadata> {
    let issuer_url = IssuerUrl::parse(issuer).map_err(|reason| config_invalid("issuer", reason))?;
    let metadata: CoreProviderMetadata = get_document(http, issuer_url.discovery_url(), "discovery document").await?;
    // OpenID Connect Discovery §4.3: the document must name exactly the issuer it was fetched for.
    if metadata.issuer().as_str() != issuer {
        return Err(refused(CONNECTOR_CONFIG_INVALID, "the discovery document names another issuer")
            .with_source(format!("expected {issuer:?}, found {:?}", metadata.issuer().as_str())));
    }
    // Every endpoint a code, secret or token goes to must be https (http only on loopback).
    let jwks_uri = check_fetch_url(metadata.jwks_uri().as_str())
        .map_err(|reason| refused(CONNECTOR_CONFIG_INVALID, "unusable jwks_uri").with_source(reason))?;
    if let Some(token) = metadata.token_endpoint() {
        check_fetch_url(token.as_str())
            .map_err(|reason| refused(CONNECTOR_CONFIG_INVALID, "unusable token_endpoint").with_source(reason))?;
    }
    if let Some(userinfo) = metadata.userinfo_endpoint() {
        check_fetch_url(userinfo.as_str())
            .map_err(|reason| refused(CONNECTOR_CONFIG_INVALID, "unusable userinfo_endpoint").with_source(reason))?;
    }
    let keys: CoreJsonWebKeySet = get_document(http, &jwks_uri, "key set").await?;
    Ok(metadata.set_jwks(keys))
}

/// GETs a JSON document of the issuer; 5xx and transport failures are Unavailable, anything else unusable
/// is a configuration problem.
async fn get_document<T: serde::de::DeserializeOwned>(http: &HttpClient, url: &url::Url, what: &str) -> Result<T> {
    let response = http.get(url).await.map_err(|e| {
        if e.is_unreachable() {
            unreachable(what, e)
        } else {
            refused(CONNECTOR_CONFIG_INVALID, format!("unusable {what}")).with_source(e)
        }
    })?;
    let status = response.status();
    if status.is_server_error() {
        return Err(unreachable(what, format!("HTTP {status}")));
    }
    if !status.is_success() {
        return Err(refused(CONNECTOR_CONFIG_INVALID, format!("the {what} answered HTTP {}", status.as_u16())));
    }
    serde_json::from_slice(response.body())
        .map_err(|e| refused(CONNECTOR_CONFIG_INVALID, format!("unusable {what}")).with_source(format!("{url}: {e}")))
}

/// The authorization URL at the issuer's authorization endpoint; `openid` is always among the scopes.
pub(crate) fn authorization_url(
    metadata: &CoreProviderMetadata,
    provider: &RedirectProvider,
    request: &AuthRequest,
) -> Result<String> {
    let nonce = request
        .nonce
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::internal("IDP-nonce-missing", "an OpenID authorization request needs a nonce"))?;
    let mut provider = provider.clone();
    if !provider.scopes.iter().any(|s| s == "openid") {
        provider.scopes.insert(0, "openid".to_owned());
    }
    super::authorization_url(metadata.authorization_endpoint().clone(), &provider, request, &[("nonce", nonce)])
}

/// Exchanges the code, validates the ID token and (unless the ID token is the only source) reads userinfo.
pub(crate) async fn exchange(
    http: &HttpClient,
    cache: &DiscoveryCache,
    issuer: &str,
    is_id_token_mapping: bool,
    provider: &RedirectProvider,
    exchange: &CodeExchange,
) -> Result<ExternalUser> {
    let expected_nonce =
        exchange.nonce.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| {
            Error::internal("IDP-nonce-missing", "an OpenID code exchange needs the nonce that was sent")
        })?;
    let metadata = cache.get(http, issuer).await?;
    let token_url = metadata
        .token_endpoint()
        .map(|t| TokenUrl::from_url(t.url().clone()))
        .ok_or_else(|| refused(CONNECTOR_CONFIG_INVALID, "the discovery document names no token endpoint"))?;
    let tokens = super::exchange_code(http, token_url, auth_type(&metadata), provider, exchange).await?;
    let raw_id_token =
        tokens.id_token.ok_or_else(|| refused(CONNECTOR_ID_TOKEN_INVALID, "the token response has no ID token"))?;
    let claims = match verify_id_token(&metadata, provider, &raw_id_token, expected_nonce) {
        // The issuer may have rotated its keys since they were fetched: fetch once more, then decide.
        Err(Rejection::UnknownKey) => {
            let metadata = cache.get_fresher_than(http, issuer, ROTATION_INTERVAL).await?;
            verify_id_token(&metadata, provider, &raw_id_token, expected_nonce)
        }
        other => other,
    }
    .map_err(Rejection::into_error)?;
    let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
    let user_claims = if is_id_token_mapping {
        claims
    } else {
        let endpoint = metadata
            .userinfo_endpoint()
            .ok_or_else(|| refused(CONNECTOR_USERINFO_FAILED, "the discovery document names no userinfo endpoint"))?;
        let userinfo = fetch_user(http, endpoint.url(), &tokens.access_token, CONNECTOR_USERINFO_FAILED).await?;
        // OpenID Connect Core §5.3.2: a userinfo answer about another subject must not be used.
        if userinfo.get("sub").and_then(Value::as_str) != Some(subject.as_str()) {
            return Err(refused(CONNECTOR_USERINFO_FAILED, "the userinfo answer is about another subject"));
        }
        userinfo
    };
    let profile = profile_from_claims(&user_claims);
    Ok(ExternalUser {
        username: username(&profile, &subject),
        id: subject,
        raw: json!({ "User": Value::Object(user_claims) }),
        access_token: Some(tokens.access_token),
        id_token: Some(raw_id_token),
        ldap_attributes: None,
        profile,
    })
}

/// Client authentication at the token endpoint: HTTP Basic (the default every server must support)
/// unless the issuer lists only `client_secret_post`.
fn auth_type(metadata: &CoreProviderMetadata) -> AuthType {
    match metadata.token_endpoint_auth_methods_supported() {
        Some(methods)
            if !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
                && methods.contains(&CoreClientAuthMethod::ClientSecretPost) =>
        {
            AuthType::RequestBody
        }
        Some(_) | None => AuthType::BasicAuth,
    }
}

/// Why an ID token was refused.
#[derive(Debug)]
enum Rejection {
    /// No key of the issuer matches the token's key id and algorithm.
    UnknownKey,
    /// The nonce is missing or differs from the one sent.
    Nonce(String),
    /// Anything else (signature, algorithm, `iss`, `aud`, `azp`, `exp`, shape); the text is for logs.
    Invalid(&'static str, String),
}

impl Rejection {
    fn into_error(self) -> Error {
        match self {
            Self::UnknownKey => refused(CONNECTOR_ID_TOKEN_INVALID, "the ID token is invalid: no matching signing key"),
            Self::Nonce(detail) => {
                refused(CONNECTOR_NONCE_MISMATCH, "the ID token's nonce does not match the request").with_source(detail)
            }
            Self::Invalid(what, detail) => {
                refused(CONNECTOR_ID_TOKEN_INVALID, format!("the ID token is invalid: {what}")).with_source(detail)
            }
        }
    }
}

/// Verifies `raw` and answers its claims as JSON: signature with the issuer's key (asymmetric algorithms
/// only), `iss`, `aud` (and `azp` when several audiences), `exp` and `nonce`.
fn verify_id_token(
    metadata: &CoreProviderMetadata,
    provider: &RedirectProvider,
    raw: &str,
    expected_nonce: &str,
) -> Result<Map<String, Value>, Rejection> {
    let token = CoreIdToken::from_str(raw).map_err(|e| Rejection::Invalid("unreadable", e.to_string()))?;
    let client_id = ClientId::new(provider.client_id.clone());
    // A public-client verifier: it never accepts HMAC signatures, whatever the key.
    let verifier =
        CoreIdTokenVerifier::new_public_client(client_id.clone(), metadata.issuer().clone(), metadata.jwks().clone())
            .set_allowed_algs(ALLOWED_ALGORITHMS)
            // Other audiences are allowed only together with `azp` = this client, checked below.
            .set_other_audience_verifier_fn(|_| true);
    let nonce = Nonce::new(expected_nonce.to_owned());
    let claims = token.claims(&verifier, &nonce).map_err(|error| match error {
        ClaimsVerificationError::InvalidNonce(detail) => Rejection::Nonce(detail),
        ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey) => {
            Rejection::UnknownKey
        }
        ClaimsVerificationError::SignatureVerification(detail) => Rejection::Invalid("signature", detail.to_string()),
        ClaimsVerificationError::InvalidIssuer(detail) => Rejection::Invalid("issuer", detail),
        ClaimsVerificationError::InvalidAudience(detail) => Rejection::Invalid("audience", detail),
        ClaimsVerificationError::Expired(detail) => Rejection::Invalid("expired", detail),
        // The enum is non-exhaustive: claims the connector does not check itself stay "claims".
        other @ (ClaimsVerificationError::InvalidAuthContext(_)
        | ClaimsVerificationError::InvalidAuthTime(_)
        | ClaimsVerificationError::InvalidSubject(_)
        | ClaimsVerificationError::Other(_)
        | ClaimsVerificationError::Unsupported(_)
        | _) => Rejection::Invalid("claims", other.to_string()),
    })?;
    let audiences = claims.audiences();
    match claims.authorized_party() {
        Some(azp) if **azp != *client_id => {
            return Err(Rejection::Invalid("authorized party", format!("azp is {:?}", azp.as_str())));
        }
        None if audiences.len() > 1 => {
            return Err(Rejection::Invalid("authorized party", "several audiences and no azp".to_owned()));
        }
        Some(_) | None => {}
    }
    if claims.subject().is_empty() {
        return Err(Rejection::Invalid("subject", "empty sub".to_owned()));
    }
    // The signature covers the payload, so its JSON is trustworthy now; reading it whole keeps the claims
    // the typed view does not know.
    let payload = raw.split('.').nth(1).unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|e| Rejection::Invalid("unreadable", e.to_string()))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::Invalid("unreadable", "the payload is not a JSON object".to_owned())),
        Err(e) => Err(Rejection::Invalid("unreadable", e.to_string())),
    }
}
