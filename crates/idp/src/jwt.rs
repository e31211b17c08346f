//! JWTs of an external OpenID issuer as bearer tokens: signature against the issuer's JWKS, then `iss`,
//! `aud`, `exp` and `nbf`; the subject is handed to the core, which maps it to a flowgate user.

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use flowgate_core::identity::ExternalTokenVerifier;
use jsonwebtoken::{Algorithm, Validation};
use reqwest::Url;
use serde::Deserialize;

use crate::jwks::{CachePolicy, KeyCache};

/// Longest token looked at; real ones are far smaller, and parsing stops before spending effort on junk.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest subject passed on: longer than any flowgate user id, so anything longer cannot match one.
const MAX_SUBJECT_LEN: usize = 200;

/// Whether `url` may be fetched: `https://`, or `http://` to a loopback host only (tests, local issuers).
pub(crate) fn check_fetch_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("{url:?} has no host"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{url:?} must not carry credentials"));
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(host) => Ok(parsed),
        "http" => Err(format!("{url:?} must use https:// (http:// is allowed for loopback hosts only)")),
        other => Err(format!("{url:?} has scheme {other}; only https:// is allowed")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The identifier of an OpenID issuer: an `https://` URL (or `http://` on loopback) without query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerUrl {
    /// Exactly as configured: tokens' `iss` must equal it byte for byte.
    issuer: String,
    /// `<issuer>/.well-known/openid-configuration`.
    discovery: Url,
}

impl IssuerUrl {
    /// Parses an issuer identifier; the error says what is wrong with it.
    pub fn parse(issuer: &str) -> Result<Self, String> {
        // Compared byte for byte with `iss`: stray whitespace would make every token fail.
        if issuer.contains(char::is_whitespace) {
            return Err(format!("{issuer:?} must not contain whitespace"));
        }
        let url = check_fetch_url(issuer)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{issuer:?} must not have a query or fragment"));
        }
        let discovery = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let discovery = Url::parse(&discovery).map_err(|e| format!("{issuer:?}: {e}"))?;
        Ok(Self { issuer: issuer.to_owned(), discovery })
    }

    /// The identifier as configured.
    pub fn as_str(&self) -> &str {
        &self.issuer
    }

    /// Where the OpenID discovery document is fetched from.
    pub fn discovery_url(&self) -> &Url {
        &self.discovery
    }
}

/// What the verifier accepts and how it talks to the issuer.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The issuer; tokens' `iss` must equal it.
    pub issuer: IssuerUrl,
    /// The audience; tokens' `aud` must be or contain it.
    pub audience: String,
    /// Clock skew tolerated for `exp` and `nbf`.
    pub leeway: Duration,
    /// How long fetched keys are used before the issuer is asked again.
    pub cache_ttl: Duration,
    /// Least time between two refetches caused by a token with an unknown `kid`.
    pub rotation_interval: Duration,
    /// After a failed fetch, how long tokens are refused at once instead of asking the issuer again.
    pub retry_after: Duration,
    /// Bound on each request to the issuer (connect and whole response).
    pub fetch_timeout: Duration,
}

impl JwtSettings {
    /// Settings with the defaults: 60 s leeway, keys cached 5 minutes, rotation refetch at most every 30 s,
    /// 10 s pause after a failed fetch, 5 s per request.
    pub fn new(issuer: IssuerUrl, audience: impl Into<String>) -> Self {
        Self {
            issuer,
            audience: audience.into(),
            leeway: Duration::from_secs(60),
            cache_ttl: Duration::from_secs(300),
            rotation_interval: Duration::from_secs(30),
            retry_after: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// The claims the verifier reads itself; `iss`, `aud`, `exp` and `nbf` are checked by the validation.
#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Why a token was refused; logged at debug level, never shown to the caller.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("unreadable header: {0}")]
    Header(jsonwebtoken::errors::Error),
    #[error("the header has no kid")]
    NoKeyId,
    #[error("no usable key with kid {0:?} (unknown, or the issuer is unreachable)")]
    UnknownKey(String),
    #[error("algorithm {0:?} does not fit the key")]
    Algorithm(Algorithm),
    #[error("{0}")]
    Claims(jsonwebtoken::errors::Error),
    #[error("the subject is empty or too long")]
    Subject,
}

/// Verifies JWTs of one OpenID issuer; build it once and share it.
pub struct JwtVerifier {
    issuer: IssuerUrl,
    audience: String,
    leeway: Duration,
    keys: KeyCache,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("issuer", &self.issuer).field("audience", &self.audience).finish()
    }
}

impl JwtVerifier {
    /// A verifier for `settings`; fails only when the HTTP client cannot be built. Fetches nothing yet.
    pub fn new(settings: JwtSettings) -> Result<Self, String> {
        let JwtSettings { issuer, audience, leeway, cache_ttl, rotation_interval, retry_after, fetch_timeout } =
            settings;
        let http = reqwest::Client::builder()
            .connect_timeout(fetch_timeout)
            .timeout(fetch_timeout)
            // The discovery document and the JWKS are fetched from where the issuer says, not from
            // wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flowgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let policy = CachePolicy { ttl: cache_ttl, rotation_interval, retry_after };
        let keys = KeyCache::new(http, issuer.clone(), policy);
        Ok(Self { issuer, audience, leeway, keys })
    }

    /// The subject of `token` when its signature, issuer, audience and validity period are right.
    async fn check(&self, token: &str) -> Result<String, Rejection> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Rejection::TooLong);
        }
        // `alg: none` and unknown algorithms fail here already: they are no `Algorithm`.
        let header = jsonwebtoken::decode_header(token).map_err(Rejection::Header)?;
        let kid = header.kid.ok_or(Rejection::NoKeyId)?;
        let key = self.keys.key(&kid).await.ok_or(Rejection::UnknownKey(kid))?;
        // Only the algorithms of the issuer's key: HMAC (with the public key as secret) never qualifies.
        if !key.algorithms.contains(&header.alg) {
            return Err(Rejection::Algorithm(header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_audience(&[self.audience.as_str()]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(Rejection::Claims)?;
        let subject = data.claims.sub;
        if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
            return Err(Rejection::Subject);
        }
        Ok(subject)
    }
}

#[async_trait]
impl ExternalTokenVerifier for JwtVerifier {
    async fn verify(&self, token: &str) -> flowgate_core::Result<Option<String>> {
        match self.check(token).await {
            Ok(subject) => Ok(Some(subject)),
            Err(reason) => {
                tracing::debug!(issuer = self.issuer.as_str(), %reason, "JWT refused");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests;
