//! The issuer's signing keys: OpenID discovery, JWKS download and a cache that follows key rotation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::Url;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, RwLock};

use crate::jwt::{IssuerUrl, check_fetch_url};

/// Largest discovery document or JWKS accepted; real ones are a few KiB, and the bound keeps a broken or
/// hostile issuer from filling memory.
const MAX_DOCUMENT: usize = 256 * 1024;

/// Algorithms accepted from RSA keys (the PS384/PS512 variants are not offered by common issuers).
const RSA_ALGORITHMS: &[Algorithm] = &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256];

/// One verification key of the issuer and the algorithms a token signed with it may name.
pub(crate) struct VerifyingKey {
    /// The public key.
    pub(crate) key: DecodingKey,
    /// The token's `alg` must be one of these (never an HMAC algorithm, never `none`).
    pub(crate) algorithms: Vec<Algorithm>,
}

/// Keys by `kid`.
type KeyMap = HashMap<String, Arc<VerifyingKey>>;

/// Why the keys could not be fetched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// Connection, TLS, timeout or protocol failure.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The requested URL.
        url: Url,
        /// The client's error.
        source: reqwest::Error,
    },
    /// The server answered with a non-success status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The requested URL.
        url: Url,
        /// The HTTP status.
        status: u16,
    },
    /// The document exceeds [`MAX_DOCUMENT`].
    #[error("{url} answered more than {MAX_DOCUMENT} bytes")]
    TooLarge {
        /// The requested URL.
        url: Url,
    },
    /// The document is not the expected JSON.
    #[error("{url} answered unusable JSON: {source}")]
    Json {
        /// The requested URL.
        url: Url,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The discovery document names another issuer (OpenID Connect Discovery requires equality).
    #[error("the discovery document names issuer {found:?}")]
    IssuerMismatch {
        /// The `issuer` found in the document.
        found: String,
    },
    /// The discovery document's `jwks_uri` is unusable.
    #[error("jwks_uri {uri:?}: {reason}")]
    JwksUri {
        /// The value found.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The parts of the OpenID discovery document that are used.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// A JWKS with its keys left raw, so that one key of a type this crate does not know (e.g. an encryption
/// key on another curve) does not make the whole set unusable.
#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

/// Downloads the issuer's keys.
struct Fetcher {
    http: reqwest::Client,
    issuer: IssuerUrl,
}

impl Fetcher {
    async fn fetch(&self) -> Result<KeyMap, FetchError> {
        let discovery: Discovery = self.get_json(self.issuer.discovery_url().clone()).await?;
        if discovery.issuer != self.issuer.as_str() {
            return Err(FetchError::IssuerMismatch { found: discovery.issuer });
        }
        let jwks_uri = check_fetch_url(&discovery.jwks_uri)
            .map_err(|reason| FetchError::JwksUri { uri: discovery.jwks_uri.clone(), reason })?;
        let set: RawKeySet = self.get_json(jwks_uri).await?;
        let mut keys = KeyMap::new();
        for raw in set.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                tracing::debug!(issuer = self.issuer.as_str(), "skipping a JWKS entry of an unsupported shape");
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            if let Some(key) = verifying_key(&jwk) {
                // The first key with a kid wins; a set with duplicates is ambiguous, not an invitation to try all.
                keys.entry(kid).or_insert_with(|| Arc::new(key));
            }
        }
        Ok(keys)
    }

    async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, FetchError> {
        let http = |source| FetchError::Http { url: url.clone(), source };
        let mut response =
            self.http.get(url.clone()).header("accept", "application/json").send().await.map_err(http)?;
        if !response.status().is_success() {
            return Err(FetchError::Status { url, status: response.status().as_u16() });
        }
        if response.content_length().is_some_and(|n| n > MAX_DOCUMENT as u64) {
            return Err(FetchError::TooLarge { url });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(FetchError::TooLarge { url });
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|source| FetchError::Json { url, source })
    }
}

/// The key and its algorithms, or `None` for keys that must not verify tokens: symmetric (HMAC) keys,
/// encryption keys, unsupported curves, and keys whose declared `alg` is not one this crate accepts.
fn verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
        return None;
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.iter().any(|op| matches!(op, KeyOperations::Verify))
    {
        return None;
    }
    let (key, family): (DecodingKey, &[Algorithm]) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => (DecodingKey::from_rsa_components(&rsa.n, &rsa.e).ok()?, RSA_ALGORITHMS),
        AlgorithmParameters::EllipticCurve(ec) => {
            let algorithms: &[Algorithm] = match ec.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                EllipticCurve::P521 | EllipticCurve::Ed25519 => return None,
            };
            (DecodingKey::from_ec_components(&ec.x, &ec.y).ok()?, algorithms)
        }
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => (DecodingKey::from_ed_components(&okp.x).ok()?, &[Algorithm::EdDSA]),
            EllipticCurve::P256 | EllipticCurve::P384 | EllipticCurve::P521 => return None,
        },
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family.to_vec(),
        // A key that declares its algorithm is used with that one only.
        Some(declared) => vec![signing_algorithm(declared).filter(|a| family.contains(a))?],
    };
    Some(VerifyingKey { key, algorithms })
}

/// The signature algorithm named by a JWK `alg`, when it is one this crate accepts.
fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    match alg {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::RS384 => Some(Algorithm::RS384),
        KeyAlgorithm::RS512 => Some(Algorithm::RS512),
        KeyAlgorithm::PS256 => Some(Algorithm::PS256),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::ES384 => Some(Algorithm::ES384),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        KeyAlgorithm::HS256
        | KeyAlgorithm::HS384
        | KeyAlgorithm::HS512
        | KeyAlgorithm::PS384
        | KeyAlgorithm::PS512
        | KeyAlgorithm::RSA1_5
        | KeyAlgorithm::RSA_OAEP
        | KeyAlgorithm::RSA_OAEP_256 => None,
    }
}

/// What the cache holds at one moment; replaced whole, never edited in place.
#[derive(Clone, Default)]
struct Snapshot {
    keys: Arc<KeyMap>,
    fetched_at: Option<Instant>,
    failed_at: Option<Instant>,
}

/// Timing of the key cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CachePolicy {
    /// How long fetched keys are used without asking the issuer again.
    pub(crate) ttl: Duration,
    /// Least time between two fetches caused by an unknown `kid`, so random kids cannot drive traffic.
    pub(crate) rotation_interval: Duration,
    /// After a failed fetch, how long calls are answered at once instead of trying again.
    pub(crate) retry_after: Duration,
}

/// The issuer's keys, fetched on demand, kept for `ttl`, refetched once when a token names an unknown kid.
pub(crate) struct KeyCache {
    fetcher: Fetcher,
    policy: CachePolicy,
    snapshot: RwLock<Snapshot>,
    /// Held while fetching, so that concurrent calls share one fetch instead of each starting their own.
    refreshing: Mutex<()>,
}

impl KeyCache {
    /// A cache for `issuer`'s keys; nothing is fetched before the first token arrives.
    pub(crate) fn new(http: reqwest::Client, issuer: IssuerUrl, policy: CachePolicy) -> Self {
        Self {
            fetcher: Fetcher { http, issuer },
            policy,
            snapshot: RwLock::new(Snapshot::default()),
            refreshing: Mutex::new(()),
        }
    }

    /// The key with `kid`, fetching the keys when the cache is stale or (rate-limited) when `kid` is unknown.
    pub(crate) async fn key(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        let asked_at = Instant::now();
        let current = self.snapshot.read().await.clone();
        if let Some(fetched_at) = current.fetched_at
            && asked_at.saturating_duration_since(fetched_at) < self.policy.ttl
        {
            if let Some(key) = current.keys.get(kid) {
                return Some(key.clone());
            }
            if asked_at.saturating_duration_since(fetched_at) < self.policy.rotation_interval {
                return None;
            }
        }
        let refreshed = self.refresh(asked_at).await;
        let fresh = refreshed.fetched_at.is_some_and(|t| Instant::now().saturating_duration_since(t) < self.policy.ttl);
        if fresh { refreshed.keys.get(kid).cloned() } else { None }
    }

    /// Fetches the keys unless a fetch finished (or failed recently) since `asked_at`; answers the result.
    async fn refresh(&self, asked_at: Instant) -> Snapshot {
        let _fetching = self.refreshing.lock().await;
        let current = self.snapshot.read().await.clone();
        // Another call fetched while this one waited for the lock: its result answers this call too.
        let done_since = |t: Option<Instant>| t.is_some_and(|t| t >= asked_at);
        if done_since(current.fetched_at) || done_since(current.failed_at) {
            return current;
        }
        if current.failed_at.is_some_and(|t| asked_at.saturating_duration_since(t) < self.policy.retry_after) {
            return current;
        }
        let next = match self.fetcher.fetch().await {
            Ok(keys) => Snapshot { keys: Arc::new(keys), fetched_at: Some(Instant::now()), failed_at: None },
            Err(error) => {
                tracing::warn!(
                    issuer = self.fetcher.issuer.as_str(),
                    %error,
                    "cannot fetch the signing keys of the JWT issuer; its tokens are refused until it answers"
                );
                Snapshot { failed_at: Some(Instant::now()), ..current }
            }
        };
        *self.snapshot.write().await = next.clone();
        next
    }
}
