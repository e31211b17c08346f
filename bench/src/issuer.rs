//! A minimal OpenID provider for the intent scenario: just enough (discovery document and an empty key
//! set) for flowgate to build authorization URLs. No browser ever follows them, so nothing else is served.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use serde_json::json;

/// A running issuer; it stops when the benchmark's runtime does.
pub struct Issuer {
    /// `http://127.0.0.1:<port>`, the issuer identifier (without a trailing slash).
    pub url: String,
}

/// Serves `/.well-known/openid-configuration` and `/jwks` on a fresh loopback port.
pub async fn start() -> Result<Issuer, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("issuer: bind: {e}"))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| format!("issuer: {e}"))?;
    let url = format!("http://{addr}");
    let discovery = json!({
        "issuer": url,
        "authorization_endpoint": format!("{url}/authorize"),
        "token_endpoint": format!("{url}/token"),
        "userinfo_endpoint": format!("{url}/userinfo"),
        "jwks_uri": format!("{url}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email"],
        "code_challenge_methods_supported": ["S256"],
    });
    let discovery = Bytes::from(discovery.to_string());
    let json = |body: Bytes| ([(http::header::CONTENT_TYPE, "application/json")], body);
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(move || std::future::ready(json(discovery.clone()))))
        .route("/jwks", get(move || std::future::ready(json(Bytes::from_static(br#"{"keys":[]}"#)))));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("flowgate-bench: issuer stopped: {e}");
        }
    });
    Ok(Issuer { url })
}
