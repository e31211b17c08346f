//! A fake OpenID provider (axum, in process, own RSA key) whose token endpoint can be told to
//! misbehave, for the rejection cases a real provider never produces: wrong nonce, audience or
//! issuer, `alg: none`, an expired token, HS256 signed with the public key. Its authorization
//! endpoint logs the configured user in at once (no pages), and every code works once.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::Rng as _;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// How the token endpoint builds the next ID tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A correct RS256 ID token.
    None,
    /// `nonce` differs from the one of the authorization request.
    WrongNonce,
    /// `aud` names another client.
    WrongAudience,
    /// `iss` names another issuer.
    WrongIssuer,
    /// Unsigned token with header `alg: none`.
    AlgNone,
    /// `exp` (and `iat`) an hour in the past.
    Expired,
    /// HS256 with the PEM of the provider's public RSA key as the HMAC secret (key confusion).
    Hs256WithPublicKey,
}

/// What the authorization endpoint remembered for a code.
struct Grant {
    redirect_uri: String,
    nonce: Option<String>,
    challenge: Option<String>,
    claims: Value,
}

struct Inner {
    issuer: String,
    client_id: String,
    client_secret: String,
    kid: String,
    encoding: EncodingKey,
    public_pem: String,
    modulus: String,
    misbehaviour: Mutex<Misbehaviour>,
    user: Mutex<Value>,
    codes: Mutex<HashMap<String, Grant>>,
    access_tokens: Mutex<HashMap<String, Value>>,
    token_requests: Mutex<Vec<Result<(), String>>>,
}

/// The running fake; its server task ends on drop.
pub struct FakeOidc {
    /// `http://127.0.0.1:<port>`.
    pub issuer: String,
    /// The only client it knows.
    pub client_id: String,
    /// That client's secret (random per fake).
    pub client_secret: String,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for FakeOidc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fresh 2048-bit RSA key: (PKCS#1 DER of the private key, PEM of the public key, modulus
/// base64url). ring cannot generate RSA keys, so the openssl command line does (.ci/run installs it).
fn rsa_key() -> (Vec<u8>, String, String) {
    let run = |args: &[&str], input: Option<&[u8]>| -> Vec<u8> {
        use std::io::Write as _;
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("the fake OpenID provider needs the openssl command line: {e}"));
        let mut stdin = child.stdin.take().expect("openssl stdin");
        stdin.write_all(input.unwrap_or_default()).expect("write to openssl");
        drop(stdin);
        let out = child.wait_with_output().expect("openssl output");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let pem = run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], None);
    let pkcs1 = run(&["rsa", "-traditional", "-outform", "DER"], Some(&pem));
    let public_pem = String::from_utf8(run(&["rsa", "-pubout"], Some(&pem))).expect("PEM is ASCII");
    let modulus = String::from_utf8(run(&["rsa", "-noout", "-modulus"], Some(&pem))).expect("modulus is ASCII");
    let hex = modulus.trim().strip_prefix("Modulus=").expect("openssl prints Modulus=<hex>");
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("modulus hex")).collect();
    (pkcs1, public_pem, URL_SAFE_NO_PAD.encode(bytes))
}

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()).expect("time")
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 24]>())
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body.to_string())
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(status, &json!({"error": error, "error_description": description}))
}

/// `application/x-www-form-urlencoded` into a map (last value wins).
fn parse_form(body: &str) -> HashMap<String, String> {
    let decode = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

impl FakeOidc {
    /// Starts the fake on 127.0.0.1 with user `alice` (see [`FakeOidc::set_user`]) and correct tokens.
    pub async fn start() -> FakeOidc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake OpenID provider");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let (pkcs1, public_pem, modulus) = tokio::task::spawn_blocking(rsa_key).await.expect("generate RSA key");
        let inner = Arc::new(Inner {
            issuer: issuer.clone(),
            client_id: "flowgate-fake".to_owned(),
            client_secret: format!("fake-{}", random_token()),
            kid: format!("fake-{}", &random_token()[..8]),
            encoding: EncodingKey::from_rsa_der(&pkcs1),
            public_pem,
            modulus,
            misbehaviour: Mutex::new(Misbehaviour::None),
            user: Mutex::new(json!({
                "sub": "alice-fake",
                "email": "alice@fake.test",
                "email_verified": true,
                "given_name": "Alice",
                "family_name": "Fake",
                "name": "Alice Fake",
                "preferred_username": "alice",
            })),
            codes: Mutex::new(HashMap::new()),
            access_tokens: Mutex::new(HashMap::new()),
            token_requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOidc { issuer, client_id: inner.client_id.clone(), client_secret: inner.client_secret.clone(), inner, task }
    }

    /// Makes the following token responses misbehave (or behave again with `Misbehaviour::None`).
    pub async fn set_misbehaviour(&self, misbehaviour: Misbehaviour) {
        *self.inner.misbehaviour.lock().await = misbehaviour;
    }

    /// The claims (must include `sub`) of whoever logs in next, in ID tokens and at userinfo.
    pub async fn set_user(&self, claims: Value) {
        assert!(claims["sub"].is_string(), "a user needs a string sub: {claims}");
        *self.inner.user.lock().await = claims;
    }

    /// Follows `auth_url` as a browser would; the fake logs the user in at once and answers with a
    /// redirect to the relying party's redirect URI, which is returned (with `code`/`state`, or
    /// `error`). An error means the fake refused the request itself (unknown client, no redirect_uri).
    pub async fn login(&self, auth_url: &str) -> Result<String, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let response = http.get(auth_url).send().await.map_err(|e| format!("GET {auth_url}: {e}"))?;
        if !response.status().is_redirection() {
            let status = response.status();
            return Err(format!("{status}: {}", response.text().await.unwrap_or_default()));
        }
        response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| "redirect without Location".to_owned())
    }

    /// Every token request so far: `Ok` when a token was issued, else the refusal (`invalid_grant: …`),
    /// so a test can check that a code was exchanged once and only once.
    pub async fn token_requests(&self) -> Vec<Result<(), String>> {
        self.inner.token_requests.lock().await.clone()
    }
}

async fn discovery(State(inner): State<Arc<Inner>>) -> Response {
    let issuer = &inner.issuer;
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "userinfo_endpoint": format!("{issuer}/userinfo"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code"],
        }),
    )
}

async fn jwks(State(inner): State<Arc<Inner>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"keys": [{"kty": "RSA", "n": inner.modulus, "e": "AQAB", "kid": inner.kid, "use": "sig", "alg": "RS256"}]}),
    )
}

async fn authorize(State(inner): State<Arc<Inner>>, Query(params): Query<HashMap<String, String>>) -> Response {
    if params.get("client_id") != Some(&inner.client_id) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "unknown client_id");
    }
    let Some(redirect_uri) = params.get("redirect_uri").cloned() else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri is required");
    };
    let Ok(mut target) = reqwest::Url::parse(&redirect_uri) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri is not a URL");
    };
    let mut query = vec![];
    if params.get("response_type").map(String::as_str) != Some("code") {
        query.push(("error", "unsupported_response_type".to_owned()));
    } else if params.contains_key("code_challenge")
        && params.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        query.push(("error", "invalid_request".to_owned()));
        query.push(("error_description", "only S256 code challenges".to_owned()));
    } else {
        let code = random_token();
        let grant = Grant {
            redirect_uri: redirect_uri.clone(),
            nonce: params.get("nonce").cloned(),
            challenge: params.get("code_challenge").cloned(),
            claims: inner.user.lock().await.clone(),
        };
        inner.codes.lock().await.insert(code.clone(), grant);
        query.push(("code", code));
    }
    if let Some(state) = params.get("state") {
        query.push(("state", state.clone()));
    }
    query.push(("iss", inner.issuer.clone()));
    target.query_pairs_mut().extend_pairs(query);
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

/// The client of a token request: HTTP Basic or `client_id`/`client_secret` in the form.
fn client_credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(basic) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let encoded = basic.strip_prefix("Basic ")?;
        let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let unescape = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        return Some((unescape(id), unescape(secret)));
    }
    Some((form.get("client_id")?.clone(), form.get("client_secret")?.clone()))
}

async fn token(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: String) -> Response {
    let outcome = exchange(&inner, &headers, &body).await;
    inner.token_requests.lock().await.push(outcome.as_ref().map(|_| ()).map_err(|(_, e, d)| format!("{e}: {d}")));
    match outcome {
        Ok(tokens) => json_response(StatusCode::OK, &tokens),
        Err((status, error, description)) => oauth_error(status, error, &description),
    }
}

type Refusal = (StatusCode, &'static str, String);

async fn exchange(inner: &Inner, headers: &HeaderMap, body: &str) -> Result<Value, Refusal> {
    let form = parse_form(body);
    let Some((client_id, secret)) = client_credentials(headers, &form) else {
        return Err((StatusCode::UNAUTHORIZED, "invalid_client", "no client authentication".to_owned()));
    };
    if client_id != inner.client_id || secret != inner.client_secret {
        return Err((StatusCode::UNAUTHORIZED, "invalid_client", "wrong client credentials".to_owned()));
    }
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return Err((StatusCode::BAD_REQUEST, "unsupported_grant_type", "authorization_code only".to_owned()));
    }
    let code = form.get("code").cloned().unwrap_or_default();
    // Removed on first use, whatever the outcome: a code never works twice.
    let Some(grant) = inner.codes.lock().await.remove(&code) else {
        return Err((StatusCode::BAD_REQUEST, "invalid_grant", "unknown or used code".to_owned()));
    };
    if form.get("redirect_uri") != Some(&grant.redirect_uri) {
        return Err((StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri differs".to_owned()));
    }
    if let Some(challenge) = &grant.challenge {
        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
        let computed = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
        if &computed != challenge {
            return Err((StatusCode::BAD_REQUEST, "invalid_grant", "PKCE verification failed".to_owned()));
        }
    }

    let misbehaviour = *inner.misbehaviour.lock().await;
    let issued_at = if misbehaviour == Misbehaviour::Expired { now() - 7200 } else { now() };
    let mut claims = grant.claims.clone();
    claims["iss"] =
        json!(if misbehaviour == Misbehaviour::WrongIssuer { "https://other.example" } else { inner.issuer.as_str() });
    claims["aud"] =
        json!(if misbehaviour == Misbehaviour::WrongAudience { "another-client" } else { inner.client_id.as_str() });
    claims["iat"] = json!(issued_at);
    claims["exp"] = json!(issued_at + 3600);
    if let Some(nonce) = &grant.nonce {
        claims["nonce"] =
            json!(if misbehaviour == Misbehaviour::WrongNonce { format!("{nonce}-other") } else { nonce.clone() });
    }
    let id_token = match misbehaviour {
        Misbehaviour::None
        | Misbehaviour::WrongNonce
        | Misbehaviour::WrongAudience
        | Misbehaviour::WrongIssuer
        | Misbehaviour::Expired => {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(inner.kid.clone());
            jsonwebtoken::encode(&header, &claims, &inner.encoding).expect("sign RS256")
        }
        Misbehaviour::AlgNone => {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
            let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
            format!("{header}.{payload}.")
        }
        Misbehaviour::Hs256WithPublicKey => {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(inner.kid.clone());
            let key = EncodingKey::from_secret(inner.public_pem.as_bytes());
            jsonwebtoken::encode(&header, &claims, &key).expect("sign HS256")
        }
    };
    let access_token = random_token();
    inner.access_tokens.lock().await.insert(access_token.clone(), grant.claims);
    Ok(json!({"access_token": access_token, "token_type": "Bearer", "expires_in": 3600, "id_token": id_token}))
}

async fn userinfo(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let claims = match token {
        Some(token) => inner.access_tokens.lock().await.get(token).cloned(),
        None => None,
    };
    match claims {
        Some(claims) => json_response(StatusCode::OK, &claims),
        None => {
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")]).into_response()
        }
    }
}
