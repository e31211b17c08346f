//! Plain OAuth2: code exchange, user endpoint, id attribute.

use flowgate_core::ErrorKind;
use flowgate_core::idp::ports::{
    AuthRequest, CONNECTOR_CONFIG_INVALID, CONNECTOR_EXCHANGE_FAILED, CONNECTOR_USERINFO_FAILED, IdpConnector as _,
    RedirectKind, RedirectProvider,
};
use serde_json::{Value, json};

use crate::fake_oidc::{CLIENT_ID, CLIENT_SECRET, FakeOidc};
use crate::{REDIRECT_URI, connectors, login, pkce, query};

fn provider(base: &str, user_path: &str, id_attribute: &str) -> RedirectProvider {
    RedirectProvider {
        kind: RedirectKind::OAuth {
            authorization_endpoint: format!("{base}/login/oauth/authorize"),
            token_endpoint: format!("{base}/token"),
            user_endpoint: format!("{base}{user_path}"),
            id_attribute: id_attribute.to_owned(),
        },
        client_id: CLIENT_ID.to_owned(),
        client_secret: CLIENT_SECRET.to_owned(),
        scopes: vec!["read:user".to_owned(), "user:email".to_owned()],
        use_pkce: true,
    }
}

fn octocat() -> Value {
    json!({"id": 583231, "login": "octocat", "name": "The Octocat", "email": "octocat@example.test", "plan": {"name": "free"}})
}

#[tokio::test]
async fn the_authorization_url_has_no_nonce_and_no_openid_scope() {
    let fake = FakeOidc::start().await;
    let (_, challenge) = pkce("oauth-url");
    let request = AuthRequest {
        state: "intent-9".to_owned(),
        redirect_uri: REDIRECT_URI.to_owned(),
        pkce_challenge: Some(challenge.clone()),
        nonce: None,
    };
    let url = connectors()
        .authorization_url(&provider(&fake.issuer, "/user", "id"), &request)
        .await
        .expect("authorization URL");
    assert!(url.starts_with(&format!("{}/login/oauth/authorize?", fake.issuer)), "{url}");
    let params = query(&url);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(params["redirect_uri"], REDIRECT_URI);
    assert_eq!(params["state"], "intent-9");
    assert_eq!(params["scope"], "read:user user:email");
    assert_eq!(params["code_challenge"], challenge);
    assert_eq!(params["code_challenge_method"], "S256");
    assert!(!params.contains_key("nonce"));
    // No discovery for plain OAuth.
    assert_eq!(fake.discovery_hits(), 0);
}

#[tokio::test]
async fn a_numeric_id_becomes_its_decimal_string() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let user = login(&fake, &connectors, &provider(&fake.issuer, "/user", "id"), "octo", octocat(), |_| {})
        .await
        .expect("the login succeeds");
    assert_eq!(user.id, "583231");
    assert_eq!(user.username, "octocat");
    assert_eq!(user.profile.preferred_username.as_deref(), Some("octocat"));
    assert_eq!(user.profile.display_name.as_deref(), Some("The Octocat"));
    assert_eq!(user.profile.email.as_deref(), Some("octocat@example.test"));
    assert!(!user.profile.email_verified);
    assert_eq!(user.raw, octocat());
    assert!(user.access_token.is_some());
    assert!(user.id_token.is_none());
}

#[tokio::test]
async fn a_string_id_attribute_is_taken_as_it_is() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let user = login(&fake, &connectors, &provider(&fake.issuer, "/user", "login"), "login", octocat(), |_| {})
        .await
        .expect("the login succeeds");
    assert_eq!(user.id, "octocat");
}

#[tokio::test]
async fn a_missing_id_attribute_is_refused() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    for (code, attribute) in [("missing", "uuid"), ("object", "plan")] {
        let error = login(&fake, &connectors, &provider(&fake.issuer, "/user", attribute), code, octocat(), |_| {})
            .await
            .expect_err("no usable id");
        assert_eq!(error.id(), CONNECTOR_USERINFO_FAILED, "{error}");
        assert_eq!(error.kind(), ErrorKind::FailedPrecondition);
    }
}

#[tokio::test]
async fn a_redirect_of_the_user_endpoint_is_not_followed() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let error = login(&fake, &connectors, &provider(&fake.issuer, "/moved-user", "id"), "moved", octocat(), |_| {})
        .await
        .expect_err("the redirect is not followed");
    assert_eq!(error.id(), CONNECTOR_USERINFO_FAILED, "{error}");
    assert!(error.message().contains("302"), "{error}");
}

#[tokio::test]
async fn a_replayed_code_and_a_wrong_verifier_are_refused() {
    let fake = FakeOidc::start().await;
    let connectors = connectors();
    let provider = provider(&fake.issuer, "/user", "id");
    let error = login(&fake, &connectors, &provider, "wrong-verifier", octocat(), |x| {
        x.pkce_verifier = Some(pkce("someone-else").0);
    })
    .await
    .expect_err("a wrong verifier is refused");
    assert_eq!(error.id(), CONNECTOR_EXCHANGE_FAILED, "{error}");
    login(&fake, &connectors, &provider, "once", octocat(), |_| {}).await.expect("the first use succeeds");
    let error = login(&fake, &connectors, &provider, "once", octocat(), |_| {}).await.expect_err("replay");
    assert_eq!(error.id(), CONNECTOR_EXCHANGE_FAILED, "{error}");
}

#[tokio::test]
async fn plain_http_endpoints_off_loopback_are_refused() {
    let provider = provider("http://github.example.test", "/user", "id");
    let exchange = flowgate_core::idp::ports::CodeExchange {
        code: "c".to_owned(),
        redirect_uri: REDIRECT_URI.to_owned(),
        pkce_verifier: Some(pkce("c").0),
        nonce: None,
    };
    let error = connectors().exchange(&provider, &exchange).await.expect_err("refused");
    assert_eq!(error.id(), CONNECTOR_CONFIG_INVALID, "{error}");
    assert_eq!(error.violations()[0].field, "token_endpoint");
}
