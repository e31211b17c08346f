//! An OpenID provider served in-process on loopback: discovery, JWKS, a token endpoint that redeems codes
//! the test registered beforehand (there is no authorization page), userinfo, a GitHub-like user endpoint,
//! and switchable faults in the ID tokens it issues.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// The provider's RSA key (PKCS#1 PEM, made for tests only) and its public modulus, base64url.
const RSA_PEM: &str = include_str!("../../src/jwt/test-rsa.pem");
const RSA_N: &str = "xYy_INWU8uYWLh1OqD3dqZah2SvOZGagioH9j7LrsAaN2wYaULxtBmPdB4cdqG4blytlK07meSHAGh_Fl2e3k2GESXt3AP5dwVRxhUAomHuDIL5sCH73-EnNI3pcnozVj0P2sqWRA6KnbgmfYAS0Vu_QLI6zcTO9xStxYpGfIgehtyxGw6U2NrZE31kEn8D3BDj5XbPzC9JlWPQi-yAh7EEFRSvKLV7hRSOUuHgZNVmWjS8OsCHyVgBv-5eIFQDpg6ZZ163eT3kTcB2c9LCRtYUki1rg6fe82Qi7ue0F38Zh4Rn6Y_GJPfbcWQMaTjJKKnjVVeV5QMIv-pIo0ulXVQ";
/// The key id the JWKS publishes.
pub const KID: &str = "fake-key-1";
/// The one registered client.
pub const CLIENT_ID: &str = "flowgate-client";
pub const CLIENT_SECRET: &str = "flowgate-client-secret";

/// How the provider misbehaves in the ID tokens (and userinfo answers) it issues from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Everything right.
    None,
    /// `nonce` differs from the one of the authorization request.
    WrongNonce,
    /// No `nonce` at all.
    MissingNonce,
    /// `aud` is another client.
    WrongAudience,
    /// `aud` has this client and another one, and there is no `azp`.
    SeveralAudiencesWithoutAzp,
    /// `aud` has this client and another one, `azp` names the other one.
    ForeignAzp,
    /// `iss` is another issuer.
    WrongIssuer,
    /// Unsigned: `alg: none` and an empty signature.
    AlgNone,
    /// `exp` an hour ago.
    Expired,
    /// HS256 keyed with the bytes of the public key (the JWK's modulus), the classic key-confusion attack.
    Hs256WithPublicKey,
    /// Signed with the right key but under a `kid` the JWKS does not have.
    UnknownKid,
    /// The signature belongs to other claims.
    TamperedPayload,
    /// The token response has no `id_token`.
    NoIdToken,
    /// Userinfo answers another `sub` than the ID token.
    UserinfoOtherSubject,
    /// The discovery document names another issuer.
    DiscoveryOtherIssuer,
}

/// What a code stands for: what the authorization endpoint would have recorded.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Claims of the user (at least `sub`; for the OAuth user endpoint, whatever the answer should be).
    pub claims: Value,
    /// The `nonce` of the authorization request.
    pub nonce: Option<String>,
    /// The `code_challenge` (S256) of the authorization request.
    pub code_challenge: Option<String>,
    /// The `redirect_uri` of the authorization request.
    pub redirect_uri: String,
}

struct Shared {
    issuer: String,
    fault: Mutex<Fault>,
    codes: Mutex<HashMap<String, Grant>>,
    /// Codes that were redeemed: a second use is refused.
    used: Mutex<Vec<String>>,
    /// Access token → claims for userinfo / the user endpoint.
    access: Mutex<HashMap<String, Value>>,
    discovery_hits: AtomicUsize,
    token_requests: AtomicUsize,
    next_token: AtomicUsize,
}

/// A running fake provider; stops when dropped.
pub struct FakeOidc {
    /// `http://127.0.0.1:<port>`.
    pub issuer: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOidc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOidc {
    /// Starts the provider on a free loopback port.
    pub async fn start() -> FakeOidc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake provider");
        let issuer = format!("http://{}", listener.local_addr().expect("local address"));
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            fault: Mutex::new(Fault::None),
            codes: Mutex::new(HashMap::new()),
            used: Mutex::new(Vec::new()),
            access: Mutex::new(HashMap::new()),
            discovery_hits: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            next_token: AtomicUsize::new(1),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .route("/user", get(userinfo))
            .route("/moved-user", get(moved))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOidc { issuer, shared, task }
    }

    /// Makes the provider misbehave (or stop misbehaving with [`Fault::None`]).
    pub async fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().await = fault;
    }

    /// Registers `code` as if the user had logged in at the authorization endpoint.
    pub async fn issue_code(&self, code: &str, grant: Grant) {
        self.shared.codes.lock().await.insert(code.to_owned(), grant);
    }

    /// How often the discovery document was fetched.
    pub fn discovery_hits(&self) -> usize {
        self.shared.discovery_hits.load(Ordering::SeqCst)
    }

    /// How often the token endpoint was called.
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.discovery_hits.fetch_add(1, Ordering::SeqCst);
    let issuer = &shared.issuer;
    let named = if *shared.fault.lock().await == Fault::DiscoveryOtherIssuer {
        "https://evil.example.test".to_owned()
    } else {
        issuer.clone()
    };
    Json(json!({
        "issuer": named,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn jwks() -> Json<Value> {
    Json(json!({"keys": [
        {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID, "n": RSA_N, "e": "AQAB"},
        // A key of a kind no ID token may be verified with: it must be skipped, not trusted.
        {"kty": "oct", "kid": "symmetric", "k": URL_SAFE_NO_PAD.encode(RSA_N)},
    ]}))
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": format!("fake provider: {error}")}))).into_response()
}

/// The client from HTTP Basic or from the body.
fn client_credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(basic) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = String::from_utf8(STANDARD.decode(basic).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        return Some((id.to_owned(), secret.to_owned()));
    }
    Some((form.get("client_id")?.clone(), form.get("client_secret")?.clone()))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    if client_credentials(&headers, &form) != Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let Some(code) = form.get("code") else { return oauth_error(StatusCode::BAD_REQUEST, "invalid_request") };
    {
        // A code is good for one redemption (RFC 6749 §4.1.2), whatever happens next.
        let mut used = shared.used.lock().await;
        if used.contains(code) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
        used.push(code.clone());
    }
    let Some(grant) = shared.codes.lock().await.get(code).cloned() else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    if form.get("redirect_uri") != Some(&grant.redirect_uri) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    if let Some(challenge) = &grant.code_challenge {
        let Some(verifier) = form.get("code_verifier") else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
        if URL_SAFE_NO_PAD.encode(digest.as_ref()) != *challenge {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
    }
    let fault = *shared.fault.lock().await;
    let access_token = format!("fake-access-{}", shared.next_token.fetch_add(1, Ordering::SeqCst));
    let mut userinfo = grant.claims.clone();
    if fault == Fault::UserinfoOtherSubject {
        userinfo["sub"] = json!("someone-else");
    }
    shared.access.lock().await.insert(access_token.clone(), userinfo);
    let mut body = json!({"access_token": access_token, "token_type": "Bearer", "expires_in": 300});
    if fault != Fault::NoIdToken {
        body["id_token"] = json!(id_token(&shared.issuer, &grant, fault));
    }
    Json(body).into_response()
}

/// An ID token for `grant`, spoiled as `fault` says.
fn id_token(issuer: &str, grant: &Grant, fault: Fault) -> String {
    let now = now();
    let mut claims = grant.claims.clone();
    claims["iss"] = json!(issuer);
    claims["aud"] = json!(CLIENT_ID);
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + 300);
    if let Some(nonce) = &grant.nonce {
        claims["nonce"] = json!(nonce);
    }
    match fault {
        Fault::WrongNonce => claims["nonce"] = json!("not-the-nonce-that-was-sent"),
        Fault::MissingNonce => {
            claims.as_object_mut().expect("claims are an object").remove("nonce");
        }
        Fault::WrongAudience => claims["aud"] = json!("another-client"),
        Fault::SeveralAudiencesWithoutAzp => claims["aud"] = json!([CLIENT_ID, "another-client"]),
        Fault::ForeignAzp => {
            claims["aud"] = json!([CLIENT_ID, "another-client"]);
            claims["azp"] = json!("another-client");
        }
        Fault::WrongIssuer => claims["iss"] = json!("https://evil.example.test"),
        Fault::Expired => {
            claims["iat"] = json!(now - 7200);
            claims["exp"] = json!(now - 3600);
        }
        Fault::None
        | Fault::AlgNone
        | Fault::Hs256WithPublicKey
        | Fault::UnknownKid
        | Fault::TamperedPayload
        | Fault::NoIdToken
        | Fault::UserinfoOtherSubject
        | Fault::DiscoveryOtherIssuer => {}
    }
    let rsa = EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).expect("the fixture RSA key parses");
    match fault {
        Fault::AlgNone => {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": KID}).to_string());
            let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
            format!("{header}.{payload}.")
        }
        Fault::Hs256WithPublicKey => {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(KID.to_owned());
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(RSA_N.as_bytes())).expect("sign HS256")
        }
        Fault::UnknownKid => {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some("rotated-away".to_owned());
            jsonwebtoken::encode(&header, &claims, &rsa).expect("sign RS256")
        }
        Fault::TamperedPayload => {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(KID.to_owned());
            let signed = jsonwebtoken::encode(&header, &claims, &rsa).expect("sign RS256");
            let mut parts: Vec<&str> = signed.split('.').collect();
            let mut forged = claims.clone();
            forged["sub"] = json!("admin");
            let forged = URL_SAFE_NO_PAD.encode(forged.to_string());
            parts[1] = &forged;
            parts.join(".")
        }
        Fault::None
        | Fault::WrongNonce
        | Fault::MissingNonce
        | Fault::WrongAudience
        | Fault::SeveralAudiencesWithoutAzp
        | Fault::ForeignAzp
        | Fault::WrongIssuer
        | Fault::Expired
        | Fault::NoIdToken
        | Fault::UserinfoOtherSubject
        | Fault::DiscoveryOtherIssuer => {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(KID.to_owned());
            jsonwebtoken::encode(&header, &claims, &rsa).expect("sign RS256")
        }
    }
}

async fn userinfo(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = token else { return StatusCode::UNAUTHORIZED.into_response() };
    match shared.access.lock().await.get(&token) {
        Some(claims) => Json(claims.clone()).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// A user endpoint that moved: the connector must not follow the redirect with the bearer token.
async fn moved(State(shared): State<Arc<Shared>>) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, format!("{}/user", shared.issuer))]).into_response()
}
