//! The connectors against an in-process OpenID provider (OIDC and OAuth2) and a throwaway slapd (LDAP).

mod fake_oidc;
mod ldap;
mod oauth;
mod oidc;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flowgate_core::idp::ports::{AuthRequest, CodeExchange, ExternalUser, IdpConnector as _, RedirectProvider};
use flowgate_idp::{ConnectorConfig, Connectors};
use url::Url;

use crate::fake_oidc::{FakeOidc, Grant};

pub const REDIRECT_URI: &str = "https://flowgate.example.test/idps/callback";

/// Connectors with short timeouts and a long discovery TTL.
pub fn connectors() -> Connectors {
    Connectors::new(ConnectorConfig { http_timeout: Duration::from_secs(5), discovery_ttl: Duration::from_secs(3600) })
        .expect("connectors")
}

/// A PKCE verifier of 43 characters and its S256 challenge.
pub fn pkce(seed: &str) -> (String, String) {
    let verifier = format!("{seed:-<43}");
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    (verifier, URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

/// The query parameters of `url`; each name at most once (asserted).
pub fn query(url: &str) -> HashMap<String, String> {
    let url = Url::parse(url).expect("the authorization URL parses");
    let mut params = HashMap::new();
    for (name, value) in url.query_pairs() {
        assert!(params.insert(name.to_string(), value.to_string()).is_none(), "{name} appears twice in {url}");
    }
    params
}

/// One login through the redirect flow: authorization URL, the provider records the grant from that URL's
/// parameters (as its authorization endpoint would), then the code exchange with `exchange` adjusted by
/// `tweak` (to send a wrong verifier, say).
pub async fn login(
    fake: &FakeOidc,
    connectors: &Connectors,
    provider: &RedirectProvider,
    code: &str,
    claims: serde_json::Value,
    tweak: impl FnOnce(&mut CodeExchange),
) -> flowgate_core::Result<ExternalUser> {
    let (verifier, challenge) = pkce(code);
    let nonce = format!("nonce-{code}");
    let request = AuthRequest {
        state: format!("state-{code}"),
        redirect_uri: REDIRECT_URI.to_owned(),
        pkce_challenge: Some(challenge),
        nonce: Some(nonce.clone()),
    };
    let url = connectors.authorization_url(provider, &request).await?;
    let params = query(&url);
    fake.issue_code(
        code,
        Grant {
            claims,
            nonce: params.get("nonce").cloned(),
            code_challenge: params.get("code_challenge").cloned(),
            redirect_uri: params.get("redirect_uri").cloned().unwrap_or_default(),
        },
    )
    .await;
    let mut exchange = CodeExchange {
        code: code.to_owned(),
        redirect_uri: REDIRECT_URI.to_owned(),
        pkce_verifier: Some(verifier),
        nonce: Some(nonce),
    };
    tweak(&mut exchange);
    connectors.exchange(provider, &exchange).await
}
