//! Real external systems the black-box tests talk to, as a user's deployment would: an OpenID
//! provider (npm `oidc-provider` under node) and an LDAP server (Debian's `slapd`), each started on
//! loopback per test and stopped on drop. The tests here prove the peers behave as the IdP tests
//! expect (PKCE, RS256 ID tokens, both client secret methods, TLS with the test CA, filter escaping).

mod fake_oidc;
mod ldap;
mod oidc;

pub use fake_oidc::{FakeOidc, Misbehaviour};
pub use ldap::LdapPeer;
pub use oidc::OidcPeer;

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng as _;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A redirect URI nobody listens on: the peer only redirects the (simulated) browser to it.
const REDIRECT_URI: &str = "http://127.0.0.1:9/idps/callback";

/// A PKCE verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    (verifier, challenge)
}

/// The provider's discovery document.
async fn discovery(peer: &OidcPeer) -> Value {
    let url = format!("{}/.well-known/openid-configuration", peer.issuer);
    let response = reqwest::get(&url).await.expect("GET discovery");
    assert!(response.status().is_success(), "discovery answered {}", response.status());
    response.json().await.expect("discovery JSON")
}

/// An authorization URL as a relying party builds it; `challenge` None leaves PKCE out.
fn auth_url(endpoint: &str, peer: &OidcPeer, state: &str, nonce: &str, challenge: Option<&str>) -> String {
    let mut url = reqwest::Url::parse(endpoint).expect("authorization endpoint");
    url.query_pairs_mut()
        .append_pair("client_id", &peer.client_id)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid profile email")
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("state", state)
        .append_pair("nonce", nonce);
    if let Some(challenge) = challenge {
        url.query_pairs_mut().append_pair("code_challenge", challenge).append_pair("code_challenge_method", "S256");
    }
    url.to_string()
}

/// The query parameter `name` of `url`.
fn query(url: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).expect("callback URL");
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The claims of `id_token` after checking its RS256 signature against the JWKS at `jwks_uri`, its
/// issuer, audience and expiry.
async fn verified_id_token(
    issuer: &str,
    client_id: &str,
    jwks_uri: &str,
    id_token: &str,
) -> Result<Value, jsonwebtoken::errors::Error> {
    let jwks: Value = reqwest::get(jwks_uri).await.expect("GET jwks").json().await.expect("JWKS JSON");
    let kid = jsonwebtoken::decode_header(id_token)?.kid.expect("ID token kid");
    let jwk = jwks["keys"]
        .as_array()
        .expect("JWKS keys")
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("no JWK {kid} in {jwks}"));
    assert!(jwk.get("d").is_none(), "the JWKS must not publish the private key");
    let key = DecodingKey::from_rsa_components(jwk["n"].as_str().expect("n"), jwk["e"].as_str().expect("e"))
        .expect("RSA key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[client_id]);
    Ok(jsonwebtoken::decode::<Value>(id_token, &key, &validation)?.claims)
}

#[tokio::test]
async fn oidc_peer_issues_a_code() {
    let peer = OidcPeer::start(&[REDIRECT_URI.to_owned()]).await;
    let config = discovery(&peer).await;
    assert_eq!(config["issuer"], peer.issuer.as_str());
    let (verifier, challenge) = pkce();
    let url =
        auth_url(config["authorization_endpoint"].as_str().expect("endpoint"), &peer, "st-1", "n-1", Some(&challenge));

    let callback = match peer.login(&url, "alice").await {
        Ok(callback) => callback,
        Err(err) => panic!("login failed: {err}\n{}", peer.logs().await),
    };
    assert!(callback.starts_with(&format!("{REDIRECT_URI}?")), "{callback}");
    assert_eq!(query(&callback, "state").as_deref(), Some("st-1"));
    assert_eq!(query(&callback, "iss").as_deref(), Some(peer.issuer.as_str()));
    let code = query(&callback, "code").expect("code in callback");

    // client_secret_basic, with the verifier: an ID token for alice with the nonce and her claims.
    let token_endpoint = config["token_endpoint"].as_str().expect("token endpoint");
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", verifier.as_str()),
    ];
    let http = reqwest::Client::new();
    let response = http
        .post(token_endpoint)
        .basic_auth(&peer.client_id, Some(&peer.client_secret))
        .form(&form)
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), 200);
    let tokens: Value = response.json().await.expect("token JSON");
    let id_token = tokens["id_token"].as_str().expect("id_token");
    assert_eq!(jsonwebtoken::decode_header(id_token).expect("header").alg, Algorithm::RS256);
    let jwks_uri = config["jwks_uri"].as_str().expect("jwks_uri");
    let claims = verified_id_token(&peer.issuer, &peer.client_id, jwks_uri, id_token).await.expect("valid ID token");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(claims["email"], "alice@example.test");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["given_name"], "Alice");
    assert_eq!(claims["family_name"], "Liddell");
    assert_eq!(claims["preferred_username"], "alice");

    // A code works once.
    let replay = http
        .post(token_endpoint)
        .basic_auth(&peer.client_id, Some(&peer.client_secret))
        .form(&form)
        .send()
        .await
        .expect("token request");
    assert_eq!(replay.status(), 400);
    let body: Value = replay.json().await.expect("error JSON");
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn oidc_peer_accepts_client_secret_post_and_serves_userinfo() {
    let redirect_uris = [REDIRECT_URI.to_owned(), "http://127.0.0.1:9/other".to_owned()];
    let peer = OidcPeer::start(&redirect_uris).await;
    let config = discovery(&peer).await;
    let (verifier, challenge) = pkce();
    let url =
        auth_url(config["authorization_endpoint"].as_str().expect("endpoint"), &peer, "st-2", "n-2", Some(&challenge));
    let callback = peer.login(&url, "bob").await.expect("login bob");
    let code = query(&callback, "code").expect("code");

    let http = reqwest::Client::new();
    let token_endpoint = config["token_endpoint"].as_str().expect("token endpoint");
    let wrong_verifier = pkce().0;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("client_id", peer.client_id.as_str()),
        ("client_secret", "not-the-secret"),
        ("code_verifier", verifier.as_str()),
    ];
    let refused = http.post(token_endpoint).form(&form).send().await.expect("token request");
    assert_eq!(refused.status(), 401, "a wrong client secret is refused");
    form[4].1 = peer.client_secret.as_str();
    form[5].1 = wrong_verifier.as_str();
    let refused = http.post(token_endpoint).form(&form).send().await.expect("token request");
    assert_eq!(refused.status(), 400, "a wrong PKCE verifier is refused");

    // The failed verifier check consumed the code; a fresh login gets another one.
    let (verifier, challenge) = pkce();
    let url =
        auth_url(config["authorization_endpoint"].as_str().expect("endpoint"), &peer, "st-3", "n-3", Some(&challenge));
    let callback = peer.login(&url, "bob").await.expect("login bob again");
    let code = query(&callback, "code").expect("code");
    form[1].1 = code.as_str();
    form[5].1 = verifier.as_str();
    let response = http.post(token_endpoint).form(&form).send().await.expect("token request");
    assert_eq!(response.status(), 200);
    let tokens: Value = response.json().await.expect("token JSON");
    let access_token = tokens["access_token"].as_str().expect("access token");

    let userinfo: Value = http
        .get(config["userinfo_endpoint"].as_str().expect("userinfo endpoint"))
        .bearer_auth(access_token)
        .send()
        .await
        .expect("userinfo")
        .json()
        .await
        .expect("userinfo JSON");
    assert_eq!(userinfo["sub"], "bob");
    assert_eq!(userinfo["email"], "bob@example.test");
    assert_eq!(userinfo["email_verified"], false);
    assert_eq!(userinfo["name"], "Bob Builder");
    assert_eq!(userinfo["preferred_username"], "bob");
}

#[tokio::test]
async fn oidc_peer_requires_pkce_and_a_known_account() {
    let peer = OidcPeer::start(&[REDIRECT_URI.to_owned()]).await;
    let config = discovery(&peer).await;
    let endpoint = config["authorization_endpoint"].as_str().expect("endpoint");

    // Without a code challenge the provider answers the redirect URI with an error, no code.
    let callback = peer.login(&auth_url(endpoint, &peer, "st-4", "n-4", None), "alice").await.expect("error redirect");
    assert_eq!(query(&callback, "error").as_deref(), Some("invalid_request"), "{callback}");
    assert_eq!(query(&callback, "state").as_deref(), Some("st-4"));
    assert_eq!(query(&callback, "code"), None);

    let (_, challenge) = pkce();
    let err = peer
        .login(&auth_url(endpoint, &peer, "st-5", "n-5", Some(&challenge)), "mallory")
        .await
        .expect_err("unknown account");
    assert!(err.contains("mallory"), "{err}");

    // A redirect URI that is not registered never gets a redirect.
    let mut foreign = reqwest::Url::parse(&auth_url(endpoint, &peer, "st-6", "n-6", Some(&challenge))).expect("url");
    let pairs: Vec<(String, String)> = foreign
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "redirect_uri" { "http://127.0.0.1:9/evil".to_owned() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    foreign.query_pairs_mut().clear().extend_pairs(pairs);
    let err = peer.login(foreign.as_str(), "alice").await.expect_err("unregistered redirect URI");
    assert!(err.contains("redirect_uri"), "{err}");
}

/// The test CA written to a file, for `LDAPTLS_CACERT`.
fn ca_file(peer: &LdapPeer) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &peer.ca_pem).expect("write CA");
    file
}

/// Runs `ldapsearch -LLL -x` with `args`, trusting only `ca`; returns the exit code and stdout.
async fn ldapsearch(ca: &Path, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new("ldapsearch")
        .args(["-LLL", "-x", "-o", "ldif-wrap=no"])
        .args(args)
        .env("LDAPTLS_CACERT", ca)
        .env("LDAPTLS_REQCERT", "demand")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run ldapsearch (package ldap-utils; .ci/run installs it): {e}"));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The DNs in ldapsearch's LDIF output.
fn dns(ldif: &str) -> Vec<&str> {
    ldif.lines().filter_map(|line| line.strip_prefix("dn: ")).collect()
}

#[tokio::test]
async fn ldap_peer_binds() {
    let peer = LdapPeer::start().await;
    let ca = ca_file(&peer);
    let people = format!("ou=people,{}", peer.base_dn);
    let service = ["-D", peer.bind_dn.as_str(), "-w", peer.bind_password.as_str(), "-b", people.as_str()];

    // The service account searches over plain LDAP, StartTLS and LDAPS; userPassword stays hidden.
    for (url, extra) in [(&peer.url, None), (&peer.url, Some("-ZZ")), (&peer.ldaps_url, None)] {
        let mut args = vec!["-H", url.as_str()];
        args.extend(extra);
        args.extend(service);
        args.extend(["(uid=alice)", "mail", "givenName", "sn", "cn", "userPassword"]);
        let (code, out) = ldapsearch(ca.path(), &args).await;
        assert_eq!(code, 0, "{url} {extra:?}: {out}\n{}", peer.logs().await);
        assert_eq!(dns(&out), ["uid=alice,ou=people,dc=example,dc=test"], "{out}");
        assert!(out.contains("mail: alice@example.test"), "{out}");
        assert!(out.contains("givenName: Alice") && out.contains("sn: Liddell"), "{out}");
        assert!(!out.contains("userPassword"), "{out}");
    }

    // Users bind with their own password (what an LDAP login does after the search).
    let (code, out) = ldapsearch(
        ca.path(),
        &[
            "-H",
            &peer.ldaps_url,
            "-D",
            "uid=bob,ou=people,dc=example,dc=test",
            "-w",
            "bob-password",
            "-b",
            &people,
            "(uid=bob)",
            "mail",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("mail: bob@example.test"), "{out}");
    let (code, _) = ldapsearch(
        ca.path(),
        &[
            "-H",
            &peer.url,
            "-D",
            "uid=alice,ou=people,dc=example,dc=test",
            "-w",
            "bob-password",
            "-b",
            &people,
            "(uid=alice)",
        ],
    )
    .await;
    assert_eq!(code, 49, "a wrong password is invalidCredentials");
    let (code, _) =
        ldapsearch(ca.path(), &["-H", &peer.url, "-D", &peer.bind_dn, "-w", "", "-b", &people, "(uid=alice)"]).await;
    assert_ne!(code, 0, "an empty password is no login (an unauthenticated bind sees nothing)");

    // Anonymous clients see nothing.
    let (code, out) = ldapsearch(ca.path(), &["-H", &peer.url, "-b", &people, "(uid=*)"]).await;
    assert_eq!(code, 32, "{out}");
    assert!(dns(&out).is_empty(), "{out}");
}

#[tokio::test]
async fn ldap_peer_needs_escaped_filters() {
    let peer = LdapPeer::start().await;
    let ca = ca_file(&peer);
    let people = format!("ou=people,{}", peer.base_dn);
    let search = |filter: &'static str| {
        let (url, dn, pw, base) = (peer.url.clone(), peer.bind_dn.clone(), peer.bind_password.clone(), people.clone());
        let ca = ca.path().to_owned();
        async move { ldapsearch(&ca, &["-H", &url, "-D", &dn, "-w", &pw, "-b", &base, filter, "uid"]).await }
    };
    // RFC 4515 escaping finds exactly the user whose uid contains `*`; unescaped it is a wildcard.
    let (code, out) = search(r"(uid=weird\2auser)").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(dns(&out), ["uid=weird*user,ou=people,dc=example,dc=test"], "{out}");
    let (code, out) = search("(uid=weird*user)").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(dns(&out).len(), 2, "{out}");
    let (code, out) = search("(|(objectClass=inetOrgPerson))").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(dns(&out).len(), 4, "{out}");
}

#[tokio::test]
async fn ldap_peer_certificate_verifies_with_rustls() {
    let peer = LdapPeer::start().await;
    let ca = CertificateDer::from_pem_slice(peer.ca_pem.as_bytes()).expect("CA PEM");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let address = peer.ldaps_url.strip_prefix("ldaps://").expect("ldaps URL");
    let name = ServerName::try_from("127.0.0.1").expect("server name");

    let handshake = |roots: RootCertStore| {
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = name.clone();
        async move {
            let tcp = TcpStream::connect(address).await.expect("connect ldaps");
            let mut tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
            tls.shutdown().await
        }
    };
    let mut trusted = RootCertStore::empty();
    trusted.add(ca).expect("add CA");
    handshake(trusted).await.expect("the server certificate verifies against the test CA for 127.0.0.1");

    let mut public = RootCertStore::empty();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("other certificate");
    public.add(other.cert.der().clone()).expect("add other root");
    let err = handshake(public).await.expect_err("an unrelated root must not verify the server");
    assert!(err.to_string().contains("certificate"), "{err}");
}

/// Logs the fake's user in with PKCE and nonce `nonce`, and exchanges the code (client_secret_basic).
/// Returns the token response and the code.
async fn fake_tokens(fake: &FakeOidc, nonce: &str) -> (Value, String) {
    let config: Value = reqwest::get(format!("{}/.well-known/openid-configuration", fake.issuer))
        .await
        .expect("GET discovery")
        .json()
        .await
        .expect("discovery JSON");
    let (verifier, challenge) = pkce();
    let mut url = reqwest::Url::parse(config["authorization_endpoint"].as_str().expect("endpoint")).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", &fake.client_id)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid profile email")
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("state", "fake-state")
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let callback = fake.login(url.as_str()).await.expect("fake login");
    assert!(callback.starts_with(&format!("{REDIRECT_URI}?")), "{callback}");
    assert_eq!(query(&callback, "state").as_deref(), Some("fake-state"));
    let code = query(&callback, "code").expect("code");
    let response = reqwest::Client::new()
        .post(config["token_endpoint"].as_str().expect("token endpoint"))
        .basic_auth(&fake.client_id, Some(&fake.client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), 200);
    (response.json().await.expect("token JSON"), code)
}

#[tokio::test]
async fn fake_oidc_misbehaves_on_request() {
    use jsonwebtoken::errors::ErrorKind;

    let fake = FakeOidc::start().await;
    fake.set_user(serde_json::json!({"sub": "ext-42", "email": "carol@fake.test", "given_name": "Carol"})).await;
    let jwks_uri = format!("{}/jwks", fake.issuer);
    let verify = |id_token: String| {
        let (issuer, client_id, jwks_uri) = (fake.issuer.clone(), fake.client_id.clone(), jwks_uri.clone());
        async move { verified_id_token(&issuer, &client_id, &jwks_uri, &id_token).await }
    };
    let id_token = |tokens: &Value| tokens["id_token"].as_str().expect("id_token").to_owned();

    // Behaving: a valid RS256 token for the configured user with the request's nonce; userinfo agrees.
    let (tokens, code) = fake_tokens(&fake, "nonce-ok").await;
    let claims = verify(id_token(&tokens)).await.expect("valid ID token");
    assert_eq!(claims["sub"], "ext-42");
    assert_eq!(claims["email"], "carol@fake.test");
    assert_eq!(claims["nonce"], "nonce-ok");
    let userinfo: Value = reqwest::Client::new()
        .get(format!("{}/userinfo", fake.issuer))
        .bearer_auth(tokens["access_token"].as_str().expect("access token"))
        .send()
        .await
        .expect("userinfo")
        .json()
        .await
        .expect("userinfo JSON");
    assert_eq!(userinfo["sub"], "ext-42");

    // A code works once; the fake records both requests.
    let replay = reqwest::Client::new()
        .post(format!("{}/token", fake.issuer))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", fake.client_id.as_str()),
            ("client_secret", fake.client_secret.as_str()),
        ])
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), 400);
    let requests = fake.token_requests().await;
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[0].is_ok(), "{requests:?}");
    assert!(requests[1].as_ref().is_err_and(|e| e.starts_with("invalid_grant")), "{requests:?}");

    fake.set_misbehaviour(Misbehaviour::WrongNonce).await;
    let claims = verify(id_token(&fake_tokens(&fake, "nonce-1").await.0)).await.expect("signature still valid");
    assert_ne!(claims["nonce"], "nonce-1");

    for (misbehaviour, expected) in [
        (Misbehaviour::WrongAudience, ErrorKind::InvalidAudience),
        (Misbehaviour::WrongIssuer, ErrorKind::InvalidIssuer),
        (Misbehaviour::Expired, ErrorKind::ExpiredSignature),
        (Misbehaviour::Hs256WithPublicKey, ErrorKind::InvalidAlgorithm),
    ] {
        fake.set_misbehaviour(misbehaviour).await;
        let err = verify(id_token(&fake_tokens(&fake, "nonce-2").await.0)).await.expect_err("refused");
        assert_eq!(err.kind(), &expected, "{misbehaviour:?}");
    }

    fake.set_misbehaviour(Misbehaviour::AlgNone).await;
    let token = id_token(&fake_tokens(&fake, "nonce-3").await.0);
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().expect("header")).expect("base64"))
            .expect("header JSON");
    assert_eq!(header["alg"], "none");
    assert!(token.ends_with('.'), "no signature: {token}");
    assert!(verify(token).await.is_err());

    fake.set_misbehaviour(Misbehaviour::None).await;
    verify(id_token(&fake_tokens(&fake, "nonce-4").await.0)).await.expect("valid again");
}
