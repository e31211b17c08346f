//! The validation matrix against an issuer served in-process on loopback (discovery document + JWKS).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flowgate_core::identity::ExternalTokenVerifier;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};
use tokio::sync::RwLock;

use super::{IssuerUrl, JwtSettings, JwtVerifier};

const AUDIENCE: &str = "flowgate-api";
/// A 2048-bit RSA key made for these tests only (PKCS#1 PEM) and its public modulus, base64url.
const RSA_PEM: &str = include_str!("test-rsa.pem");
const RSA_N: &str = "xYy_INWU8uYWLh1OqD3dqZah2SvOZGagioH9j7LrsAaN2wYaULxtBmPdB4cdqG4blytlK07meSHAGh_Fl2e3k2GESXt3AP5dwVRxhUAomHuDIL5sCH73-EnNI3pcnozVj0P2sqWRA6KnbgmfYAS0Vu_QLI6zcTO9xStxYpGfIgehtyxGw6U2NrZE31kEn8D3BDj5XbPzC9JlWPQi-yAh7EEFRSvKLV7hRSOUuHgZNVmWjS8OsCHyVgBv-5eIFQDpg6ZZ163eT3kTcB2c9LCRtYUki1rg6fe82Qi7ue0F38Zh4Rn6Y_GJPfbcWQMaTjJKKnjVVeV5QMIv-pIo0ulXVQ";

/// A signing key of the test issuer and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn ed25519(kid: &str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse ed25519");
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Signer {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig"}),
        }
    }

    fn p256(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("p256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("parse");
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]));
        Signer {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256"}),
        }
    }

    /// The fixture RSA key; `declared` is the JWK's `alg`, if any.
    fn rsa(kid: &str, alg: Algorithm, declared: Option<&str>) -> Signer {
        let mut jwk = json!({"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": kid});
        if let Some(declared) = declared {
            jwk["alg"] = json!(declared);
        }
        Signer { kid: kid.to_owned(), alg, key: EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).expect("rsa pem"), jwk }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, &self.kid, claims)
    }

    fn sign_as(&self, alg: Algorithm, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }
}

fn now() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs())
        .expect("seconds")
}

/// An OpenID issuer on 127.0.0.1 serving a replaceable JWKS and counting JWKS downloads.
struct Issuer {
    url: String,
    jwks: Arc<RwLock<Value>>,
    fetches: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct IssuerState {
    discovery: Value,
    jwks: Arc<RwLock<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl Issuer {
    async fn start(keys: &[&Signer]) -> Issuer {
        Self::start_claiming(keys, None).await
    }

    /// An issuer whose discovery document names `claimed` (default: its own URL) as issuer.
    async fn start_claiming(keys: &[&Signer], claimed: Option<&str>) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let jwks = Arc::new(RwLock::new(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})));
        let fetches = Arc::new(AtomicUsize::new(0));
        let state = IssuerState {
            discovery: json!({"issuer": claimed.unwrap_or(&url), "jwks_uri": format!("{url}/jwks")}),
            jwks: jwks.clone(),
            fetches: fetches.clone(),
        };
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<IssuerState>| async move { json_response(&s.discovery) }),
            )
            .route(
                "/jwks",
                get(|State(s): State<IssuerState>| async move {
                    s.fetches.fetch_add(1, Ordering::SeqCst);
                    json_response(&*s.jwks.read().await)
                }),
            )
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Issuer { url, jwks, fetches }
    }

    async fn set_keys(&self, keys: &[&Signer]) {
        *self.jwks.write().await = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn settings(&self) -> JwtSettings {
        JwtSettings::new(IssuerUrl::parse(&self.url).expect("issuer url"), AUDIENCE)
    }

    fn verifier(&self) -> JwtVerifier {
        JwtVerifier::new(self.settings()).expect("verifier")
    }

    fn claims(&self, sub: &str) -> Value {
        json!({"iss": self.url, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 300})
    }
}

fn json_response(value: &Value) -> ([(&'static str, &'static str); 1], String) {
    ([("content-type", "application/json")], value.to_string())
}

async fn verify(verifier: &JwtVerifier, token: &str) -> Option<String> {
    // Bounded, so a hanging fetch fails the test instead of stalling it.
    tokio::time::timeout(Duration::from_secs(20), verifier.verify(token))
        .await
        .expect("verify returns in time")
        .expect("no verifier fault")
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("object").remove(key);
    claims
}

#[tokio::test]
async fn valid_tokens_of_every_key_type_yield_the_subject() {
    let ed = Signer::ed25519("ed");
    let ec = Signer::p256("ec");
    let rsa = Signer::rsa("rsa", Algorithm::RS256, None);
    let issuer = Issuer::start(&[&ed, &ec, &rsa]).await;
    let verifier = issuer.verifier();
    let claims = issuer.claims("user-1");
    assert_eq!(verify(&verifier, &ed.sign(&claims)).await.as_deref(), Some("user-1"));
    assert_eq!(verify(&verifier, &ec.sign(&claims)).await.as_deref(), Some("user-1"));
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256] {
        assert_eq!(verify(&verifier, &rsa.sign_as(alg, "rsa", &claims)).await.as_deref(), Some("user-1"), "{alg:?}");
    }
    // An audience list containing ours, and expiry within the leeway, are accepted.
    let listed = with(claims.clone(), "aud", json!(["other", AUDIENCE]));
    assert_eq!(verify(&verifier, &ed.sign(&listed)).await.as_deref(), Some("user-1"));
    let just_expired = with(claims, "exp", json!(now() - 10));
    assert_eq!(verify(&verifier, &ed.sign(&just_expired)).await.as_deref(), Some("user-1"));
    assert_eq!(issuer.fetches(), 1, "the keys are fetched once and cached");
}

#[tokio::test]
async fn invalid_tokens_are_refused() {
    let ed = Signer::ed25519("ed");
    let rsa_rs256_only = Signer::rsa("rsa", Algorithm::RS256, Some("RS256"));
    let ec = Signer::p256("ec");
    let impostor = Signer::ed25519("ed");
    let issuer = Issuer::start(&[&ed, &rsa_rs256_only, &ec]).await;
    let mut jwks = issuer.jwks.read().await.clone();
    // A symmetric key in the set must never verify anything.
    jwks["keys"].as_array_mut().expect("keys").push(json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}));
    *issuer.jwks.write().await = jwks;
    let verifier = issuer.verifier();
    let good = issuer.claims("user-1");
    assert!(verify(&verifier, &ed.sign(&good)).await.is_some(), "the baseline token is valid");

    let segment = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", segment(&json!({"alg": "none", "typ": "JWT", "kid": "ed"})), segment(&good));
    let valid = ed.sign(&good);
    let (head, rest) = valid.split_once('.').expect("dots");
    let (_, signature) = rest.split_once('.').expect("dots");
    let tampered = format!("{head}.{}.{signature}", segment(&with(good.clone(), "sub", json!("admin"))));
    let hmac_secret = EncodingKey::from_secret(ed.jwk["x"].as_str().expect("x").as_bytes());
    let mut hmac_header = Header::new(Algorithm::HS256);
    hmac_header.kid = Some("ed".to_owned());
    let hmac_confusion = jsonwebtoken::encode(&hmac_header, &good, &hmac_secret).expect("hs256");
    hmac_header.kid = Some("hmac".to_owned());
    let hmac_with_oct_key =
        jsonwebtoken::encode(&hmac_header, &good, &EncodingKey::from_secret(b"secret")).expect("hs256");
    let mut no_kid = Header::new(Algorithm::EdDSA);
    no_kid.kid = None;
    let no_kid = jsonwebtoken::encode(&no_kid, &good, &ed.key).expect("sign");

    let cases: Vec<(&str, String)> = vec![
        ("expired", ed.sign(&with(good.clone(), "exp", json!(now() - 3600)))),
        ("not yet valid", ed.sign(&with(good.clone(), "nbf", json!(now() + 3600)))),
        ("no exp", ed.sign(&without(good.clone(), "exp"))),
        ("wrong issuer", ed.sign(&with(good.clone(), "iss", json!("https://evil.example")))),
        ("issuer with a trailing slash", ed.sign(&with(good.clone(), "iss", json!(format!("{}/", issuer.url))))),
        ("no issuer", ed.sign(&without(good.clone(), "iss"))),
        ("wrong audience", ed.sign(&with(good.clone(), "aud", json!("someone-else")))),
        ("no audience", ed.sign(&without(good.clone(), "aud"))),
        ("no subject", ed.sign(&without(good.clone(), "sub"))),
        ("empty subject", ed.sign(&with(good.clone(), "sub", json!("")))),
        ("long subject", ed.sign(&with(good.clone(), "sub", json!("x".repeat(201))))),
        ("numeric subject", ed.sign(&with(good.clone(), "sub", json!(42)))),
        ("bad signature", impostor.sign(&good)),
        ("tampered payload", tampered),
        ("alg none", unsigned),
        ("hmac with the public key as secret", hmac_confusion),
        ("hmac with a symmetric jwk", hmac_with_oct_key),
        ("alg other than the key's declared one", rsa_rs256_only.sign_as(Algorithm::PS256, "rsa", &good)),
        ("alg of another key family", ec.sign_as(Algorithm::ES256, "ed", &good)),
        ("unknown kid", ed.sign_as(Algorithm::EdDSA, "nope", &good)),
        ("no kid", no_kid),
        ("garbage", "a.b.c".to_owned()),
        ("oversized", format!("{}.{}.x", "a".repeat(10_000), "b".repeat(10_000))),
    ];
    for (what, token) in cases {
        assert_eq!(verify(&verifier, &token).await, None, "{what}");
    }
    assert!(issuer.fetches() <= 2, "an unknown kid causes at most one refetch, got {}", issuer.fetches());
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_for_key_rotation() {
    let old = Signer::ed25519("old");
    let new = Signer::p256("new");
    let issuer = Issuer::start(&[&old]).await;
    let mut settings = issuer.settings();
    settings.rotation_interval = Duration::ZERO;
    let verifier = JwtVerifier::new(settings).expect("verifier");
    let claims = issuer.claims("user-1");
    assert!(verify(&verifier, &old.sign(&claims)).await.is_some());
    assert_eq!(issuer.fetches(), 1);
    issuer.set_keys(&[&old, &new]).await;
    assert!(verify(&verifier, &new.sign(&claims)).await.is_some(), "the rotated-in key is found");
    assert_eq!(issuer.fetches(), 2, "one refetch for the unknown kid");
    assert!(verify(&verifier, &new.sign(&claims)).await.is_some());
    assert!(verify(&verifier, &old.sign(&claims)).await.is_some());
    assert_eq!(issuer.fetches(), 2, "known kids are served from the cache");
    assert!(verify(&verifier, &old.sign_as(Algorithm::EdDSA, "gone", &claims)).await.is_none());
    assert_eq!(issuer.fetches(), 3, "a still-unknown kid costs exactly one refetch");

    // With the default rotation interval, random kids cannot make the verifier hammer the issuer.
    let verifier = issuer.verifier();
    assert!(verify(&verifier, &old.sign(&claims)).await.is_some());
    for i in 0..5 {
        assert!(verify(&verifier, &old.sign_as(Algorithm::EdDSA, &format!("random-{i}"), &claims)).await.is_none());
    }
    assert_eq!(issuer.fetches(), 4, "one fetch for the new verifier, none for the random kids");
}

#[tokio::test]
async fn an_issuer_that_is_down_or_hangs_refuses_tokens_without_hanging() {
    let ed = Signer::ed25519("ed");
    // A port that nobody listens on any more.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let verifier =
        JwtVerifier::new(JwtSettings::new(IssuerUrl::parse(&url).expect("url"), AUDIENCE)).expect("verifier");
    let claims = json!({"iss": url, "aud": AUDIENCE, "sub": "user-1", "exp": now() + 300});
    assert_eq!(verify(&verifier, &ed.sign(&claims)).await, None);
    assert_eq!(verify(&verifier, &ed.sign(&claims)).await, None, "and again, answered from the failure");

    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", silent.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut settings = JwtSettings::new(IssuerUrl::parse(&url).expect("url"), AUDIENCE);
    settings.fetch_timeout = Duration::from_millis(300);
    let verifier = JwtVerifier::new(settings).expect("verifier");
    let claims = json!({"iss": url, "aud": AUDIENCE, "sub": "user-1", "exp": now() + 300});
    assert_eq!(verify(&verifier, &ed.sign(&claims)).await, None);
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_not_trusted() {
    let ed = Signer::ed25519("ed");
    let issuer = Issuer::start_claiming(&[&ed], Some("https://elsewhere.example")).await;
    let verifier = issuer.verifier();
    assert_eq!(verify(&verifier, &ed.sign(&issuer.claims("user-1"))).await, None);
    assert_eq!(issuer.fetches(), 0, "the JWKS of a mismatching issuer is not even fetched");
}

#[test]
fn issuer_urls_are_https_or_loopback_http() {
    for ok in [
        "https://login.example.com",
        "https://login.example.com/realms/main/",
        "http://127.0.0.1:9000",
        "http://localhost:8080/oidc",
        "http://[::1]:8080",
    ] {
        let issuer = IssuerUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(issuer.as_str(), ok, "kept exactly");
        assert!(issuer.discovery_url().as_str().ends_with("/.well-known/openid-configuration"));
        assert!(!issuer.discovery_url().as_str().contains("//.well-known"), "{}", issuer.discovery_url());
    }
    for bad in [
        "http://login.example.com",
        "http://10.0.0.1",
        "ftp://login.example.com",
        "https://login.example.com?x=1",
        "https://login.example.com#top",
        "https://user:pw@login.example.com",
        "login.example.com",
        "",
    ] {
        assert!(IssuerUrl::parse(bad).is_err(), "{bad:?} must be refused");
    }
}
