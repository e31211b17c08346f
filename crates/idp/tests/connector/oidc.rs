//! OpenID Connect: the happy path, and every ID token or exchange the connector must refuse.

use flowgate_core::ErrorKind;
use flowgate_core::idp::ports::{
    AuthRequest, CONNECTOR_CONFIG_INVALID, CONNECTOR_EXCHANGE_FAILED, CONNECTOR_ID_TOKEN_INVALID,
    CONNECTOR_NONCE_MISMATCH, CONNECTOR_UNREACHABLE, CONNECTOR_USERINFO_FAILED, IdpConnector as _, RedirectKind,
    RedirectProvider,
};
use serde_json::{Value, json};

use crate::fake_oidc::{CLIENT_ID, CLIENT_SECRET, FakeOidc, Fault};
use crate::{REDIRECT_URI, connectors, login, pkce, query};

fn provider(issuer: &str, is_id_token_mapping: bool) -> RedirectProvider {
    RedirectProvider {
        kind: RedirectKind::Oidc { issuer: issuer.to_owned(), is_id_token_mapping },
        client_id: CLIENT_ID.to_owned(),
        client_secret: CLIENT_SECRET.to_owned(),
        scopes: vec!["profile".to_owned(), "email".to_owned()],
        use_pkce: true,
    }
}

fn alice() -> Value {
    json!({
        "sub": "alice-sub-1",
        "email": "alice@example.test",
        "email_verified": true,
        "given_name": "Alice",
        "family_name": "Liddell",
        "name": "Alice Liddell",
        "preferred_username": "alice",
        "locale": "en",
        "phone_number": "+41 79 000 00 00",
        "custom_claim": {"team": "wonderland"},
    })
}

#[tokio::test]
async fn the_authorization_url_carries_every_parameter_once() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let (_, challenge) = pkce("url");
    let request = AuthRequest {
        state: "intent-123".to_owned(),
        redirect_uri: REDIRECT_URI.to_owned(),
        pkce_challenge: Some(challenge.clone()),
        nonce: Some("n-0S6_WzA2Mj".to_owned()),
    };
    let url = connectors.authorization_url(&provider(&fake.issuer, false), &request).await.expect("authorization URL");
    assert!(url.starts_with(&format!("{}/authorize?", fake.issuer)), "{url}");
    let params = query(&url);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(params["redirect_uri"], REDIRECT_URI);
    assert_eq!(params["state"], "intent-123");
    assert_eq!(params["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(params["code_challenge"], challenge);
    assert_eq!(params["code_challenge_method"], "S256");
    // `openid` is added when the configuration lacks it.
    assert_eq!(params["scope"], "openid profile email");
    assert!(!url.contains(CLIENT_SECRET), "the client secret must never be in the URL");
}

#[tokio::test]
async fn without_pkce_no_challenge_is_sent() {
    let fake = FakeOidc::start().await;
    let mut provider = provider(&fake.issuer, false);
    provider.use_pkce = false;
    let request = AuthRequest {
        state: "s".to_owned(),
        redirect_uri: REDIRECT_URI.to_owned(),
        pkce_challenge: None,
        nonce: Some("n".to_owned()),
    };
    let params = query(&connectors().authorization_url(&provider, &request).await.expect("authorization URL"));
    assert!(!params.contains_key("code_challenge"));
    assert!(!params.contains_key("code_challenge_method"));
}

#[tokio::test]
async fn a_login_with_userinfo_maps_the_profile_and_keeps_the_raw_claims() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let user = login(&fake, &connectors, &provider(&fake.issuer, false), "happy", alice(), |_| {})
        .await
        .expect("the login succeeds");
    assert_eq!(user.id, "alice-sub-1");
    assert_eq!(user.username, "alice");
    let profile = &user.profile;
    assert_eq!(profile.email.as_deref(), Some("alice@example.test"));
    assert!(profile.email_verified);
    assert_eq!(profile.given_name.as_deref(), Some("Alice"));
    assert_eq!(profile.family_name.as_deref(), Some("Liddell"));
    assert_eq!(profile.display_name.as_deref(), Some("Alice Liddell"));
    assert_eq!(profile.preferred_username.as_deref(), Some("alice"));
    assert_eq!(profile.preferred_language.as_deref(), Some("en"));
    assert_eq!(profile.phone.as_deref(), Some("+41 79 000 00 00"));
    assert_eq!(user.raw["User"]["custom_claim"]["team"], "wonderland");
    assert_eq!(user.raw["User"]["sub"], "alice-sub-1");
    assert!(user.access_token.as_deref().is_some_and(|t| t.starts_with("fake-access-")));
    let id_token = user.id_token.as_deref().expect("the ID token is kept");
    assert_eq!(id_token.split('.').count(), 3);
    assert!(user.ldap_attributes.is_none());
}

#[tokio::test]
async fn a_login_with_id_token_mapping_reads_the_id_token_claims() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    // Userinfo would answer another subject: with ID token mapping it is not asked at all.
    fake.set_fault(Fault::UserinfoOtherSubject).await;
    let user = login(&fake, &connectors, &provider(&fake.issuer, true), "mapping", alice(), |_| {})
        .await
        .expect("the login succeeds");
    assert_eq!(user.id, "alice-sub-1");
    assert_eq!(user.raw["User"]["iss"], fake.issuer.as_str());
    assert_eq!(user.raw["User"]["aud"], CLIENT_ID);
    assert_eq!(user.raw["User"]["nonce"], "nonce-mapping");
    assert_eq!(user.profile.email.as_deref(), Some("alice@example.test"));
}

#[tokio::test]
async fn the_discovery_document_is_cached_per_issuer() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let provider = provider(&fake.issuer, false);
    for code in ["c1", "c2", "c3"] {
        login(&fake, &connectors, &provider, code, alice(), |_| {}).await.expect("the login succeeds");
    }
    assert_eq!(fake.discovery_hits(), 1);
}

/// Logs in once with `fault` and answers the error.
async fn refused_with(fault: Fault, is_id_token_mapping: bool) -> flowgate_core::Error {
    let fake = FakeOidc::start().await;
    fake.set_fault(fault).await;
    let connectors = connectors();
    let code = format!("{fault:?}");
    match login(&fake, &connectors, &provider(&fake.issuer, is_id_token_mapping), &code, alice(), |_| {}).await {
        Ok(user) => panic!("{fault:?} was accepted: {user:?}"),
        Err(error) => error,
    }
}

fn assert_refused(error: &flowgate_core::Error, id: &str) {
    assert_eq!(error.id(), id, "{error}");
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition, "{error}");
    for secret in [CLIENT_SECRET, "fake-access-", "eyJ"] {
        assert!(!error.message().contains(secret), "the message leaks {secret:?}: {}", error.message());
    }
}

#[tokio::test]
async fn a_wrong_nonce_is_refused() {
    assert_refused(&refused_with(Fault::WrongNonce, false).await, CONNECTOR_NONCE_MISMATCH);
}

#[tokio::test]
async fn a_missing_nonce_is_refused() {
    assert_refused(&refused_with(Fault::MissingNonce, false).await, CONNECTOR_NONCE_MISMATCH);
}

#[tokio::test]
async fn another_audience_is_refused() {
    assert_refused(&refused_with(Fault::WrongAudience, false).await, CONNECTOR_ID_TOKEN_INVALID);
}

#[tokio::test]
async fn several_audiences_need_azp() {
    assert_refused(&refused_with(Fault::SeveralAudiencesWithoutAzp, false).await, CONNECTOR_ID_TOKEN_INVALID);
}

#[tokio::test]
async fn an_azp_of_another_client_is_refused() {
    assert_refused(&refused_with(Fault::ForeignAzp, false).await, CONNECTOR_ID_TOKEN_INVALID);
}

#[tokio::test]
async fn another_issuer_is_refused() {
    assert_refused(&refused_with(Fault::WrongIssuer, false).await, CONNECTOR_ID_TOKEN_INVALID);
}

#[tokio::test]
async fn an_unsigned_token_is_refused() {
    assert_refused(&refused_with(Fault::AlgNone, false).await, CONNECTOR_ID_TOKEN_INVALID);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    assert_refused(&refused_with(Fault::Expired, true).await, CONNECTOR_ID_TOKEN_INVALID);
}

#[tokio::test]
async fn hs256_keyed_with_the_public_key_is_refused() {
    assert_refused(&refused_with(Fault::Hs256WithPublicKey, false).await, CONNECTOR_ID_TOKEN_INVALID);
}

#[tokio::test]
async fn a_token_signed_under_an_unknown_key_is_refused() {
    assert_refused(&refused_with(Fault::UnknownKid, false).await, CONNECTOR_ID_TOKEN_INVALID);
}

#[tokio::test]
async fn a_tampered_payload_is_refused() {
    assert_refused(&refused_with(Fault::TamperedPayload, true).await, CONNECTOR_ID_TOKEN_INVALID);
}

#[tokio::test]
async fn a_token_response_without_id_token_is_refused() {
    assert_refused(&refused_with(Fault::NoIdToken, false).await, CONNECTOR_ID_TOKEN_INVALID);
}

#[tokio::test]
async fn userinfo_about_another_subject_is_refused() {
    assert_refused(&refused_with(Fault::UserinfoOtherSubject, false).await, CONNECTOR_USERINFO_FAILED);
}

#[tokio::test]
async fn a_code_is_redeemed_once() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let provider = provider(&fake.issuer, false);
    let (verifier, _) = pkce("replay");
    login(&fake, &connectors, &provider, "replay", alice(), |_| {}).await.expect("the first exchange succeeds");
    let again = flowgate_core::idp::ports::CodeExchange {
        code: "replay".to_owned(),
        redirect_uri: REDIRECT_URI.to_owned(),
        pkce_verifier: Some(verifier),
        nonce: Some("nonce-replay".to_owned()),
    };
    let error = connectors.exchange(&provider, &again).await.expect_err("a replayed code is refused");
    assert_refused(&error, CONNECTOR_EXCHANGE_FAILED);
    assert!(error.message().contains("invalid_grant"), "{error}");
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn a_missing_pkce_verifier_is_refused() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let error = login(&fake, &connectors, &provider(&fake.issuer, false), "no-verifier", alice(), |x| {
        x.pkce_verifier = None;
    })
    .await
    .expect_err("an exchange without the verifier is refused");
    assert_refused(&error, CONNECTOR_EXCHANGE_FAILED);
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_refused() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let error = login(&fake, &connectors, &provider(&fake.issuer, false), "bad-verifier", alice(), |x| {
        x.pkce_verifier = Some(pkce("another-verifier").0);
    })
    .await
    .expect_err("an exchange with another verifier is refused");
    assert_refused(&error, CONNECTOR_EXCHANGE_FAILED);
}

#[tokio::test]
async fn a_wrong_client_secret_is_refused() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let mut provider = provider(&fake.issuer, false);
    provider.client_secret = "not-the-secret".to_owned();
    let error = login(&fake, &connectors, &provider, "bad-secret", alice(), |_| {})
        .await
        .expect_err("a wrong client secret is refused");
    assert_refused(&error, CONNECTOR_EXCHANGE_FAILED);
    assert!(!error.to_string().contains("not-the-secret"));
}

#[tokio::test]
async fn an_unreachable_issuer_is_unavailable() {
    // Bind and drop a listener: the port is closed, nothing answers there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let request = AuthRequest {
        state: "s".to_owned(),
        redirect_uri: REDIRECT_URI.to_owned(),
        pkce_challenge: Some(pkce("x").1),
        nonce: Some("n".to_owned()),
    };
    let error = connectors().authorization_url(&provider(&issuer, false), &request).await.expect_err("unreachable");
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert_eq!(error.id(), CONNECTOR_UNREACHABLE);
}

#[tokio::test]
async fn a_plain_http_issuer_off_loopback_is_refused_before_any_request() {
    let request = AuthRequest {
        state: "s".to_owned(),
        redirect_uri: REDIRECT_URI.to_owned(),
        pkce_challenge: Some(pkce("x").1),
        nonce: Some("n".to_owned()),
    };
    let error = connectors()
        .authorization_url(&provider("http://idp.example.test", false), &request)
        .await
        .expect_err("plain http is refused");
    assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{error}");
    assert_eq!(error.id(), CONNECTOR_CONFIG_INVALID);
    assert_eq!(error.violations()[0].field, "issuer");
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let error = refused_with(Fault::DiscoveryOtherIssuer, false).await;
    assert_refused(&error, CONNECTOR_CONFIG_INVALID);
}

#[tokio::test]
async fn a_missing_discovery_document_is_a_configuration_error() {
    let fake = FakeOidc::start().await;
    // The fake serves no document under this path.
    let issuer = format!("{}/tenant", fake.issuer);
    let request = AuthRequest {
        state: "s".to_owned(),
        redirect_uri: REDIRECT_URI.to_owned(),
        pkce_challenge: Some(pkce("x").1),
        nonce: Some("n".to_owned()),
    };
    let error = connectors().authorization_url(&provider(&issuer, false), &request).await.expect_err("refused");
    assert_refused(&error, CONNECTOR_CONFIG_INVALID);
}
