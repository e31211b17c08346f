//! Identity providers and intents against real peers: an OpenID provider (npm `oidc-provider`), an LDAP
//! directory (slapd), and a fake provider that misbehaves on request — over every protocol, with every
//! rejection the security targets list.

use flowgate::pb::flowgate::idp::v2 as idp;
use flowgate::pb::flowgate::session::v2 as session;
use flowgate::pb::flowgate::user::v2 as user;
use tonic::Code;

use crate::client::{Client, Failure};
use crate::harness::{PROTOCOLS, Protocol, Server};
use crate::peers::{FakeOidc, LdapPeer, Misbehaviour, OidcPeer};

const ADD_OIDC: &str = "/flowgate.idp.v2.IdentityProviderService/AddGenericOIDCProvider";
const ADD_LDAP: &str = "/flowgate.idp.v2.IdentityProviderService/AddLDAPProvider";
const ADD_GITHUB: &str = "/flowgate.idp.v2.IdentityProviderService/AddGitHubProvider";
const UPDATE_OIDC: &str = "/flowgate.idp.v2.IdentityProviderService/UpdateGenericOIDCProvider";
const GET_IDP: &str = "/flowgate.idp.v2.IdentityProviderService/GetIDPByID";
const LIST_IDPS: &str = "/flowgate.idp.v2.IdentityProviderService/ListIDPs";
const DELETE_IDP: &str = "/flowgate.idp.v2.IdentityProviderService/DeleteIDP";
const DEACTIVATE_IDP: &str = "/flowgate.idp.v2.IdentityProviderService/DeactivateIDP";
const START: &str = "/flowgate.idp.v2.IntentService/StartIdentityProviderIntent";
const RETRIEVE: &str = "/flowgate.idp.v2.IntentService/RetrieveIdentityProviderIntent";
const ADD_HUMAN: &str = "/flowgate.user.v2.UserService/AddHumanUser";
const ADD_LINK: &str = "/flowgate.user.v2.UserService/AddIDPLink";
const LIST_LINKS: &str = "/flowgate.user.v2.UserService/ListIDPLinks";
const REMOVE_LINK: &str = "/flowgate.user.v2.UserService/RemoveIDPLink";
const CREATE_SESSION: &str = "/flowgate.session.v2.SessionService/CreateSession";

const APP: &str = "https://app.example.test/login";

fn expect_code<T: std::fmt::Debug>(result: Result<T, Failure>, code: Code, what: &str) -> Failure {
    let failure = result.expect_err(what);
    assert_eq!(failure.code, code, "{what}: {failure:?}");
    failure
}

fn options() -> Option<idp::Options> {
    Some(idp::Options {
        is_linking_allowed: true,
        is_creation_allowed: true,
        is_auto_creation: false,
        is_auto_update: false,
    })
}

async fn start_server() -> Server {
    Server::start_with(&["--allowed-redirect-url", APP]).await
}

async fn add_oidc(c: &Client<'_>, name: &str, issuer: &str, client_id: &str, secret: &str) -> String {
    let res: idp::AddGenericOidcProviderResponse = c
        .call(
            ADD_OIDC,
            idp::AddGenericOidcProviderRequest {
                name: name.into(),
                issuer: issuer.into(),
                client_id: client_id.into(),
                client_secret: secret.into(),
                scopes: vec!["openid".into(), "profile".into(), "email".into()],
                provider_options: options(),
                is_id_token_mapping: false,
                use_pkce: None,
            },
        )
        .await
        .expect("add OIDC IdP");
    assert!(res.details.is_some());
    res.id
}

async fn add_user(c: &Client<'_>, username: &str) -> String {
    let res: user::AddHumanUserResponse = c
        .call(
            ADD_HUMAN,
            user::AddHumanUserRequest {
                username: Some(username.to_owned()),
                profile: Some(user::SetHumanProfile {
                    given_name: "Alice".into(),
                    family_name: "Liddell".into(),
                    ..Default::default()
                }),
                email: Some(user::SetHumanEmail {
                    email: format!("{username}@example.com"),
                    verification: Some(user::set_human_email::Verification::IsVerified(true)),
                }),
                ..Default::default()
            },
        )
        .await
        .expect("add user");
    res.user_id
}

async fn link(c: &Client<'_>, user_id: &str, idp_id: &str, external: &str) {
    let _: user::AddIdpLinkResponse = c
        .call(
            ADD_LINK,
            user::AddIdpLinkRequest {
                user_id: user_id.into(),
                idp_link: Some(user::IdpLink {
                    idp_id: idp_id.into(),
                    user_id: external.into(),
                    user_name: external.into(),
                }),
            },
        )
        .await
        .expect("link");
}

async fn start_redirect(c: &Client<'_>, idp_id: &str, success: &str, failure: &str) -> Result<String, Failure> {
    let res: idp::StartIdentityProviderIntentResponse = c
        .call(
            START,
            idp::StartIdentityProviderIntentRequest {
                idp_id: idp_id.into(),
                content: Some(idp::start_identity_provider_intent_request::Content::Urls(idp::RedirectUrLs {
                    success_url: success.into(),
                    failure_url: failure.into(),
                })),
            },
        )
        .await?;
    match res.next_step {
        Some(idp::start_identity_provider_intent_response::NextStep::AuthUrl(url)) => Ok(url),
        other => panic!("expected an auth URL, got {other:?}"),
    }
}

async fn start_ldap(c: &Client<'_>, idp_id: &str, username: &str, password: &str) -> Result<idp::IdpIntent, Failure> {
    let res: idp::StartIdentityProviderIntentResponse = c
        .call(
            START,
            idp::StartIdentityProviderIntentRequest {
                idp_id: idp_id.into(),
                content: Some(idp::start_identity_provider_intent_request::Content::Ldap(idp::LdapCredentials {
                    username: username.into(),
                    password: password.into(),
                })),
            },
        )
        .await?;
    match res.next_step {
        Some(idp::start_identity_provider_intent_response::NextStep::IdpIntent(intent)) => Ok(intent),
        other => panic!("expected an intent, got {other:?}"),
    }
}

/// The browser's last hop: GET the callback URL the provider redirected to; answers status and Location.
async fn callback(url: &str) -> (u16, Option<reqwest::Url>) {
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let res = browser.get(url).send().await.expect("callback");
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(|l| reqwest::Url::parse(l).expect("absolute Location"));
    (res.status().as_u16(), location)
}

fn param(url: &reqwest::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Session with the user and the intent checked.
async fn session_with_intent(
    c: &Client<'_>,
    user_id: &str,
    intent_id: &str,
    token: &str,
) -> Result<session::CreateSessionResponse, Failure> {
    c.call(
        CREATE_SESSION,
        session::CreateSessionRequest {
            checks: Some(session::Checks {
                user: Some(session::CheckUser { search: Some(session::check_user::Search::UserId(user_id.into())) }),
                idp_intent: Some(session::CheckIdpIntent {
                    idp_intent_id: intent_id.into(),
                    idp_intent_token: token.into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
}

async fn session_factor_intent(c: &Client<'_>, created: &session::CreateSessionResponse) -> bool {
    let got: session::GetSessionResponse = c
        .call(
            "/flowgate.session.v2.SessionService/GetSession",
            session::GetSessionRequest {
                session_id: created.session_id.clone(),
                session_token: Some(created.session_token.clone()),
            },
        )
        .await
        .expect("get session");
    got.session.and_then(|s| s.factors).and_then(|f| f.intent).and_then(|i| i.verified_at).is_some()
}

#[tokio::test]
async fn oidc_login_end_to_end_over_every_protocol() {
    let server = start_server().await;
    let callback_url = server.url("/idps/callback");
    let peer = OidcPeer::start(std::slice::from_ref(&callback_url)).await;
    let admin = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    let idp_id = add_oidc(&admin, "Test provider", &peer.issuer, &peer.client_id, &peer.client_secret).await;
    let alice = add_user(&admin, "alice-oidc").await;
    link(&admin, &alice, &idp_id, "alice").await;

    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&server.admin_token());
        let auth_url = start_redirect(&c, &idp_id, APP, &format!("{APP}/failed")).await.expect("start");
        let parsed = reqwest::Url::parse(&auth_url).expect("auth URL");
        assert!(auth_url.starts_with(&peer.issuer), "{auth_url}");
        assert_eq!(param(&parsed, "redirect_uri").as_deref(), Some(callback_url.as_str()));
        assert_eq!(param(&parsed, "code_challenge_method").as_deref(), Some("S256"));
        assert!(param(&parsed, "code_challenge").is_some_and(|c| c.len() >= 43), "{auth_url}");
        assert!(param(&parsed, "nonce").is_some(), "{auth_url}");
        let state = param(&parsed, "state").expect("state");

        let back = peer.login(&auth_url, "alice").await.expect("provider login");
        let (status, location) = callback(&back).await;
        assert_eq!(status, 302, "{back}");
        let location = location.expect("Location");
        assert!(location.as_str().starts_with(APP), "{location}");
        assert_eq!(param(&location, "id").as_deref(), Some(state.as_str()), "state is the intent id");
        assert_eq!(param(&location, "user").as_deref(), Some(alice.as_str()), "linked user");
        let token = param(&location, "token").expect("token");

        let info: idp::RetrieveIdentityProviderIntentResponse = c
            .call(
                RETRIEVE,
                idp::RetrieveIdentityProviderIntentRequest {
                    idp_intent_id: state.clone(),
                    idp_intent_token: token.clone(),
                },
            )
            .await
            .expect("retrieve");
        assert_eq!(info.user_id, alice);
        let information = info.idp_information.expect("information");
        assert_eq!(information.idp_id, idp_id);
        assert_eq!(information.user_id, "alice");
        match information.access {
            Some(idp::idp_information::Access::Oauth(access)) => {
                assert!(!access.access_token.is_empty());
                assert!(access.id_token.is_some_and(|t| t.split('.').count() == 3));
            }
            other => panic!("expected OAuth access, got {other:?}"),
        }
        let raw = serde_json::to_value(information.raw_information.expect("raw")).expect("json");
        assert_eq!(raw["User"]["email"], "alice@example.test", "{raw}");

        // A wrong token reads nothing.
        expect_code(
            c.call::<_, idp::RetrieveIdentityProviderIntentResponse>(
                RETRIEVE,
                idp::RetrieveIdentityProviderIntentRequest {
                    idp_intent_id: state.clone(),
                    idp_intent_token: format!("{token}x"),
                },
            )
            .await,
            Code::PermissionDenied,
            "wrong intent token",
        );

        let created = session_with_intent(&c, &alice, &state, &token).await.expect("session with intent");
        assert!(session_factor_intent(&c, &created).await, "intent factor set");
        // Single use: the same intent cannot authenticate a second session, nor be retrieved again.
        expect_code(session_with_intent(&c, &alice, &state, &token).await, Code::FailedPrecondition, "reuse");
        expect_code(
            c.call::<_, idp::RetrieveIdentityProviderIntentResponse>(
                RETRIEVE,
                idp::RetrieveIdentityProviderIntentRequest { idp_intent_id: state, idp_intent_token: token },
            )
            .await,
            Code::FailedPrecondition,
            "retrieve after use",
        );
    }
}

#[tokio::test]
async fn auto_creation_and_links_at_user_creation() {
    let server = start_server().await;
    let callback_url = server.url("/idps/callback");
    let peer = OidcPeer::start(std::slice::from_ref(&callback_url)).await;
    let c = Client::new(&server, Protocol::Json).with_token(&server.admin_token());
    let res: idp::AddGenericOidcProviderResponse = c
        .call(
            ADD_OIDC,
            idp::AddGenericOidcProviderRequest {
                name: "Auto".into(),
                issuer: peer.issuer.clone(),
                client_id: peer.client_id.clone(),
                client_secret: peer.client_secret.clone(),
                provider_options: Some(idp::Options {
                    is_linking_allowed: true,
                    is_creation_allowed: true,
                    is_auto_creation: true,
                    is_auto_update: false,
                }),
                ..Default::default()
            },
        )
        .await
        .expect("add");
    let idp_id = res.id;

    // Bob has no account yet: the succeeded intent creates one from his claims, linked to the IdP.
    let auth_url = start_redirect(&c, &idp_id, APP, APP).await.expect("start");
    let (status, location) = callback(&peer.login(&auth_url, "bob").await.expect("login")).await;
    assert_eq!(status, 302);
    let location = location.expect("location");
    let bob = param(&location, "user").expect("auto-created user");
    let got: user::GetUserByIdResponse = c
        .call("/flowgate.user.v2.UserService/GetUserByID", user::GetUserByIdRequest { user_id: bob.clone() })
        .await
        .expect("get bob");
    let json = serde_json::to_value(&got).expect("json");
    assert_eq!(json["user"]["human"]["email"]["email"], "bob@example.test", "{json}");
    let links: user::ListIdpLinksResponse =
        c.call(LIST_LINKS, user::ListIdpLinksRequest { user_id: bob.clone(), query: None }).await.expect("links");
    assert_eq!(links.result.len(), 1);
    assert_eq!(links.result[0].user_id, "bob");
    // The next login finds the same user through the link, not a second one.
    let auth_url = start_redirect(&c, &idp_id, APP, APP).await.expect("start");
    let (_, location) = callback(&peer.login(&auth_url, "bob").await.expect("login")).await;
    assert_eq!(param(&location.expect("location"), "user").as_deref(), Some(bob.as_str()));

    // AddHumanUser with an IdP link: Alice's first login finds her by the link only.
    let alice: user::AddHumanUserResponse = c
        .call(
            ADD_HUMAN,
            user::AddHumanUserRequest {
                username: Some("alice-linked".into()),
                profile: Some(user::SetHumanProfile {
                    given_name: "Alice".into(),
                    family_name: "Liddell".into(),
                    ..Default::default()
                }),
                email: Some(user::SetHumanEmail { email: "someone-else@example.com".into(), verification: None }),
                idp_links: vec![user::IdpLink {
                    idp_id: idp_id.clone(),
                    user_id: "alice".into(),
                    user_name: "alice".into(),
                }],
                ..Default::default()
            },
        )
        .await
        .expect("add with link");
    let auth_url = start_redirect(&c, &idp_id, APP, APP).await.expect("start");
    let (_, location) = callback(&peer.login(&auth_url, "alice").await.expect("login")).await;
    assert_eq!(param(&location.expect("location"), "user").as_deref(), Some(alice.user_id.as_str()));
    // A link to an IdP that does not exist is refused, and no user is left behind.
    let refused: Result<user::AddHumanUserResponse, _> = c
        .call(
            ADD_HUMAN,
            user::AddHumanUserRequest {
                username: Some("ghost-linked".into()),
                profile: Some(user::SetHumanProfile {
                    given_name: "G".into(),
                    family_name: "H".into(),
                    ..Default::default()
                }),
                email: Some(user::SetHumanEmail { email: "ghost@example.com".into(), verification: None }),
                idp_links: vec![user::IdpLink {
                    idp_id: "no-such-idp".into(),
                    user_id: "x".into(),
                    user_name: "x".into(),
                }],
                ..Default::default()
            },
        )
        .await;
    let failure = expect_code(refused, Code::InvalidArgument, "unknown IdP");
    assert!(failure.body.is_some_and(|b| b.to_string().contains("idp")), "names the field");
    add_user(&c, "ghost-linked").await;
}

#[tokio::test]
async fn seed_call_over_json_and_the_allowlist() {
    let server = start_server().await;
    let fake = FakeOidc::start().await;
    let admin = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    let idp_id = add_oidc(&admin, "Fake", &fake.issuer, &fake.client_id, &fake.client_secret).await;

    // The documented call, byte for byte: v2beta path, camelCase body, 200 with details and authUrl.
    let res = server
        .http()
        .post(server.url("/v2beta/idp_intents"))
        .bearer_auth(server.admin_token())
        .json(&serde_json::json!({
            "idpId": idp_id,
            "urls": {"successUrl": APP, "failureUrl": format!("{APP}/failed")}
        }))
        .send()
        .await
        .expect("seed call");
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    assert!(body["details"]["sequence"].is_string(), "{body}");
    assert!(body["authUrl"].as_str().is_some_and(|u| u.starts_with(&fake.issuer)), "{body}");

    let tricks = [
        "//evil.com",
        "https://app.example.test.evil.com/login",
        "https://app.example.test@evil.com/login",
        "https://a@b@app.example.test/login",
        "https://app.example.test/login/..;/admin",
        "https://app.example.test/login/%2e%2e/admin",
        "https://app.example.test\\@evil.com/login",
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "https://app.example.test./login",
        "http://app.example.test/login",
        "https://app.example.test:8443/login",
        "https://app.example.test/loginx",
        "https://localhost/login",
    ];
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&server.admin_token());
        for trick in tricks {
            let failure = expect_code(start_redirect(&c, &idp_id, trick, APP).await, Code::InvalidArgument, trick);
            if protocol == Protocol::Json {
                assert_eq!(failure.http_status, Some(400), "{trick}");
                assert!(failure.body.as_ref().is_some_and(|b| b.to_string().contains("success_url")), "{failure:?}");
            }
            expect_code(start_redirect(&c, &idp_id, APP, trick).await, Code::InvalidArgument, trick);
        }
        // A path below an allowed prefix is fine.
        start_redirect(&c, &idp_id, &format!("{APP}/done?x=1"), APP).await.expect("sub path");
    }

    // Without an allowlist every redirect intent is refused, and the message says what to configure.
    let closed = Server::start().await;
    let c = Client::new(&closed, Protocol::Json).with_token(&closed.admin_token());
    let idp_id = add_oidc(&c, "Fake", &fake.issuer, &fake.client_id, &fake.client_secret).await;
    let failure = expect_code(start_redirect(&c, &idp_id, APP, APP).await, Code::InvalidArgument, "no allowlist");
    assert!(failure.message.contains("--allowed-redirect-url"), "{failure:?}");
}

#[tokio::test]
async fn callback_rejects_bad_tokens_and_states() {
    let server = start_server().await;
    let fake = FakeOidc::start().await;
    let c = Client::new(&server, Protocol::Json).with_token(&server.admin_token());
    let idp_id = add_oidc(&c, "Fake", &fake.issuer, &fake.client_id, &fake.client_secret).await;
    let failure_url = format!("{APP}/failed");

    // Missing or unknown state: 400, never a redirect.
    for query in ["", "?code=abc", "?state=nope&code=abc", "?state=%00&code=x"] {
        let (status, location) = callback(&server.url(&format!("/idps/callback{query}"))).await;
        assert_eq!((status, location), (400, None), "{query}");
    }

    // Every bad ID token sends the browser to the failure URL with an error, and nothing succeeds.
    for misbehaviour in [
        Misbehaviour::WrongNonce,
        Misbehaviour::WrongAudience,
        Misbehaviour::WrongIssuer,
        Misbehaviour::AlgNone,
        Misbehaviour::Expired,
        Misbehaviour::Hs256WithPublicKey,
    ] {
        fake.set_misbehaviour(misbehaviour).await;
        let auth_url = start_redirect(&c, &idp_id, APP, &failure_url).await.expect("start");
        let back = fake.login(&auth_url).await.expect("fake login");
        let (status, location) = callback(&back).await;
        let location = location.unwrap_or_else(|| panic!("{misbehaviour:?}: no redirect ({status})"));
        assert_eq!(status, 302);
        assert!(location.as_str().starts_with(&failure_url), "{misbehaviour:?}: {location}");
        assert!(param(&location, "error").is_some_and(|e| !e.is_empty()), "{misbehaviour:?}: {location}");
        assert!(param(&location, "token").is_none(), "{misbehaviour:?}: {location}");
    }

    // A replayed callback (code reuse) fails without a second code exchange.
    fake.set_misbehaviour(Misbehaviour::None).await;
    let auth_url = start_redirect(&c, &idp_id, APP, &failure_url).await.expect("start");
    let back = fake.login(&auth_url).await.expect("fake login");
    let (_, first) = callback(&back).await;
    assert!(param(&first.expect("first"), "token").is_some(), "first callback succeeds");
    let exchanges = fake.token_requests().await.len();
    let (status, second) = callback(&back).await;
    assert_eq!(status, 302);
    assert!(second.expect("second").as_str().starts_with(&failure_url), "replay goes to the failure URL");
    assert_eq!(fake.token_requests().await.len(), exchanges, "no second exchange");

    // A state the provider never saw with the code of another intent fails too.
    let a = start_redirect(&c, &idp_id, APP, &failure_url).await.expect("start a");
    let b = start_redirect(&c, &idp_id, APP, &failure_url).await.expect("start b");
    let back_a = reqwest::Url::parse(&fake.login(&a).await.expect("login a")).expect("url");
    let state_b = param(&reqwest::Url::parse(&b).expect("b"), "state").expect("state b");
    let mut swapped = back_a.clone();
    swapped
        .query_pairs_mut()
        .clear()
        .append_pair("state", &state_b)
        .append_pair("code", &param(&back_a, "code").expect("code"));
    let (status, location) = callback(swapped.as_str()).await;
    assert_eq!(status, 302);
    assert!(location.expect("location").as_str().starts_with(&failure_url), "PKCE of intent b does not fit code a");

    // The IdP deactivated between start and callback: the callback fails.
    let auth_url = start_redirect(&c, &idp_id, APP, &failure_url).await.expect("start");
    let _: idp::DeactivateIdpResponse =
        c.call(DEACTIVATE_IDP, idp::DeactivateIdpRequest { id: idp_id.clone() }).await.expect("deactivate");
    let back = fake.login(&auth_url).await.expect("fake login");
    let (_, location) = callback(&back).await;
    assert!(location.expect("location").as_str().starts_with(&failure_url), "deactivated IdP");
}

#[tokio::test]
async fn intents_belong_to_their_user_and_expire() {
    let server = Server::start_with(&["--allowed-redirect-url", APP, "--idp-intent-lifetime", "2s"]).await;
    let fake = FakeOidc::start().await;
    let c = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    let idp_id = add_oidc(&c, "Fake", &fake.issuer, &fake.client_id, &fake.client_secret).await;
    let alice = add_user(&c, "alice-own").await;
    let mallory = add_user(&c, "mallory").await;
    link(&c, &alice, &idp_id, "alice-fake").await;

    let login = |success: &'static str| {
        let c = c.clone();
        let fake = &fake;
        let idp_id = idp_id.clone();
        async move {
            let auth_url = start_redirect(&c, &idp_id, success, APP).await.expect("start");
            let (_, location) = callback(&fake.login(&auth_url).await.expect("login")).await;
            let location = location.expect("location");
            (param(&location, "id").expect("id"), param(&location, "token").expect("token"))
        }
    };

    // Alice's intent cannot authenticate Mallory's session.
    let (id, token) = login(APP).await;
    expect_code(session_with_intent(&c, &mallory, &id, &token).await, Code::FailedPrecondition, "other user");
    // The token of one intent does not open another.
    let (id2, _) = login(APP).await;
    expect_code(session_with_intent(&c, &alice, &id2, &token).await, Code::PermissionDenied, "foreign token");
    // A session check needs the user checked first.
    let unchecked: Result<session::CreateSessionResponse, _> = c
        .call(
            CREATE_SESSION,
            session::CreateSessionRequest {
                checks: Some(session::Checks {
                    idp_intent: Some(session::CheckIdpIntent {
                        idp_intent_id: id.clone(),
                        idp_intent_token: token.clone(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
    expect_code(unchecked, Code::FailedPrecondition, "no user checked");

    // Expired after the configured lifetime.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    expect_code(session_with_intent(&c, &alice, &id, &token).await, Code::FailedPrecondition, "expired");

    // Deactivated since success: refused at the session check.
    let (id3, token3) = login(APP).await;
    let _: idp::DeactivateIdpResponse =
        c.call(DEACTIVATE_IDP, idp::DeactivateIdpRequest { id: idp_id.clone() }).await.expect("deactivate");
    expect_code(session_with_intent(&c, &alice, &id3, &token3).await, Code::FailedPrecondition, "inactive IdP");
}

#[tokio::test]
async fn ldap_login_end_to_end_and_uniform_failures() {
    let server = start_server().await;
    let directory = LdapPeer::start().await;
    let admin = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    let added: idp::AddLdapProviderResponse = admin
        .call(
            ADD_LDAP,
            idp::AddLdapProviderRequest {
                name: "Directory".into(),
                servers: vec![directory.ldaps_url.clone()],
                start_tls: false,
                base_dn: directory.base_dn.clone(),
                bind_dn: directory.bind_dn.clone(),
                bind_password: directory.bind_password.clone(),
                user_base: format!("ou=people,{}", directory.base_dn),
                user_object_classes: vec!["inetOrgPerson".into()],
                user_filters: vec!["uid".into(), "mail".into()],
                timeout: Some(pbjson_types::Duration { seconds: 5, nanos: 0 }),
                attributes: Some(idp::LdapAttributes {
                    id_attribute: "uid".into(),
                    first_name_attribute: "givenName".into(),
                    last_name_attribute: "sn".into(),
                    display_name_attribute: "cn".into(),
                    email_attribute: "mail".into(),
                    ..Default::default()
                }),
                provider_options: options(),
                tls_verify: None,
                root_ca: Some(directory.ca_pem.clone()),
            },
        )
        .await
        .expect("add LDAP IdP");
    let idp_id = added.id;
    // The same directory without its CA: the certificate does not verify, so nobody logs in.
    let untrusted: idp::AddLdapProviderResponse = admin
        .call(
            ADD_LDAP,
            idp::AddLdapProviderRequest {
                name: "Untrusted directory".into(),
                servers: vec![directory.ldaps_url.clone()],
                base_dn: directory.base_dn.clone(),
                bind_dn: directory.bind_dn.clone(),
                bind_password: directory.bind_password.clone(),
                user_base: format!("ou=people,{}", directory.base_dn),
                user_object_classes: vec!["inetOrgPerson".into()],
                user_filters: vec!["uid".into()],
                attributes: Some(idp::LdapAttributes { id_attribute: "uid".into(), ..Default::default() }),
                provider_options: options(),
                ..Default::default()
            },
        )
        .await
        .expect("add untrusted LDAP IdP");
    expect_code(
        start_ldap(&admin, &untrusted.id, "alice", "alice-password").await,
        Code::InvalidArgument,
        "certificate not trusted",
    );
    // Changing an LDAP configuration needs idp.write: a machine user without roles is refused (CVE-2025-27507).
    let machine: user::AddMachineUserResponse = admin
        .call(
            "/flowgate.user.v2.UserService/AddMachineUser",
            user::AddMachineUserRequest { username: "no-roles".into(), name: "no roles".into(), ..Default::default() },
        )
        .await
        .expect("machine");
    let pat: user::AddPersonalAccessTokenResponse = admin
        .call(
            "/flowgate.user.v2.UserService/AddPersonalAccessToken",
            user::AddPersonalAccessTokenRequest { user_id: machine.user_id, expiration_date: None },
        )
        .await
        .expect("pat");
    for protocol in PROTOCOLS {
        let weak = Client::new(&server, protocol).with_token(&pat.token);
        expect_code(
            weak.call::<_, idp::UpdateLdapProviderResponse>(
                "/flowgate.idp.v2.IdentityProviderService/UpdateLDAPProvider",
                idp::UpdateLdapProviderRequest {
                    id: idp_id.clone(),
                    name: "Hijacked".into(),
                    servers: vec!["ldap://evil.example:389".into()],
                    ..Default::default()
                },
            )
            .await,
            Code::PermissionDenied,
            "update without idp.write",
        );
        expect_code(
            weak.call::<_, idp::GetIdpByIdResponse>(GET_IDP, idp::GetIdpByIdRequest { id: idp_id.clone() }).await,
            Code::PermissionDenied,
            "read without idp.read",
        );
    }
    let alice = add_user(&admin, "alice-ldap").await;
    link(&admin, &alice, &idp_id, "alice").await;

    // The stored bind password is never returned.
    let got: idp::GetIdpByIdResponse =
        admin.call(GET_IDP, idp::GetIdpByIdRequest { id: idp_id.clone() }).await.expect("get");
    let json = serde_json::to_string(&got).expect("json");
    assert!(!json.contains(&directory.bind_password), "{json}");

    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&server.admin_token());
        let intent = start_ldap(&c, &idp_id, "alice", "alice-password").await.expect("ldap login");
        assert_eq!(intent.user_id, alice, "linked user");
        let info: idp::RetrieveIdentityProviderIntentResponse = c
            .call(
                RETRIEVE,
                idp::RetrieveIdentityProviderIntentRequest {
                    idp_intent_id: intent.idp_intent_id.clone(),
                    idp_intent_token: intent.idp_intent_token.clone(),
                },
            )
            .await
            .expect("retrieve");
        let information = info.idp_information.expect("information");
        assert_eq!(information.user_id, "alice");
        match information.access {
            Some(idp::idp_information::Access::Ldap(ldap)) => {
                let attrs = serde_json::to_value(ldap.attributes.expect("attributes")).expect("json");
                assert_eq!(attrs["mail"], serde_json::json!(["alice@example.test"]), "{attrs}");
                assert!(attrs.get("userPassword").is_none(), "password hashes are never read: {attrs}");
            }
            other => panic!("expected LDAP access, got {other:?}"),
        }
        let created =
            session_with_intent(&c, &alice, &intent.idp_intent_id, &intent.idp_intent_token).await.expect("session");
        assert!(session_factor_intent(&c, &created).await);
        expect_code(
            session_with_intent(&c, &alice, &intent.idp_intent_id, &intent.idp_intent_token).await,
            Code::FailedPrecondition,
            "second use",
        );

        // Wrong password, unknown user, empty password and filter injection: one answer for all.
        let mut messages = Vec::new();
        for (username, password) in [
            ("alice", "wrong"),
            ("nobody", "alice-password"),
            ("alice", ""),
            ("*)(uid=*", "alice-password"),
            ("*", "x"),
        ] {
            let failure = expect_code(
                start_ldap(&c, &idp_id, username, password).await,
                Code::InvalidArgument,
                &format!("{username}/{password}"),
            );
            messages.push(failure.message);
        }
        messages.dedup();
        assert_eq!(messages.len(), 1, "one message for every cause: {messages:?}");
    }
}

#[tokio::test]
async fn idp_configuration_and_links() {
    let server = start_server().await;
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&server.admin_token());
        let github: idp::AddGitHubProviderResponse = c
            .call(
                ADD_GITHUB,
                idp::AddGitHubProviderRequest {
                    name: format!("GitHub {protocol:?}"),
                    client_id: "gh-client".into(),
                    client_secret: "gh-secret-value".into(),
                    scopes: vec![],
                    provider_options: options(),
                },
            )
            .await
            .expect("github");
        let got: idp::GetIdpByIdResponse =
            c.call(GET_IDP, idp::GetIdpByIdRequest { id: github.id.clone() }).await.expect("get");
        assert!(!serde_json::to_string(&got).expect("json").contains("gh-secret-value"), "secret never returned");
        let idp = got.idp.expect("idp");
        assert_eq!(idp.r#type, idp::IdpType::Github as i32);
        assert_eq!(idp.state, idp::IdpState::Active as i32);
        match idp.config.and_then(|c| c.config) {
            Some(idp::idp_config::Config::Github(gh)) => {
                assert_eq!(gh.client_id, "gh-client");
                assert_eq!(gh.scopes, ["read:user", "user:email"]);
            }
            other => panic!("expected a GitHub config, got {other:?}"),
        }

        // Bad input names the field.
        let bad = expect_code(
            c.call::<_, idp::AddGenericOidcProviderResponse>(
                ADD_OIDC,
                idp::AddGenericOidcProviderRequest {
                    name: "Bad".into(),
                    issuer: "not a url".into(),
                    client_id: "x".into(),
                    client_secret: "y".into(),
                    ..Default::default()
                },
            )
            .await,
            Code::InvalidArgument,
            "bad issuer",
        );
        assert!(bad.message.contains("issuer") || bad.body.is_some_and(|b| b.to_string().contains("issuer")));
        // An update with an empty secret keeps the stored one; the name changes.
        let oidc = add_oidc(&c, &format!("OIDC {protocol:?}"), "https://login.example.test", "cid", "secret").await;
        let _: idp::UpdateGenericOidcProviderResponse = c
            .call(
                UPDATE_OIDC,
                idp::UpdateGenericOidcProviderRequest {
                    id: oidc.clone(),
                    name: format!("Renamed {protocol:?}"),
                    issuer: "https://login.example.test".into(),
                    client_id: "cid".into(),
                    client_secret: String::new(),
                    provider_options: options(),
                    ..Default::default()
                },
            )
            .await
            .expect("update");
        let list: idp::ListIdPsResponse = c
            .call(
                LIST_IDPS,
                idp::ListIdPsRequest {
                    query: None,
                    queries: vec![idp::IdpQuery {
                        query: Some(idp::idp_query::Query::IdpNameQuery(idp::IdpNameQuery {
                            name: format!("Renamed {protocol:?}"),
                            method: 0,
                        })),
                    }],
                },
            )
            .await
            .expect("list");
        assert_eq!(list.result.len(), 1, "{list:?}");

        // Links: add, list, remove; an account links to one user only.
        let user_a = add_user(&c, &format!("links-a-{protocol:?}").to_lowercase()).await;
        let user_b = add_user(&c, &format!("links-b-{protocol:?}").to_lowercase()).await;
        link(&c, &user_a, &oidc, "ext-1").await;
        let taken: Result<user::AddIdpLinkResponse, _> = c
            .call(
                ADD_LINK,
                user::AddIdpLinkRequest {
                    user_id: user_b.clone(),
                    idp_link: Some(user::IdpLink {
                        idp_id: oidc.clone(),
                        user_id: "ext-1".into(),
                        user_name: "x".into(),
                    }),
                },
            )
            .await;
        expect_code(taken, Code::AlreadyExists, "account linked twice");
        let links: user::ListIdpLinksResponse = c
            .call(LIST_LINKS, user::ListIdpLinksRequest { user_id: user_a.clone(), query: None })
            .await
            .expect("list links");
        assert_eq!(links.result.len(), 1);
        assert_eq!(links.result[0].user_id, "ext-1");
        let _: user::RemoveIdpLinkResponse = c
            .call(
                REMOVE_LINK,
                user::RemoveIdpLinkRequest {
                    user_id: user_a.clone(),
                    idp_id: oidc.clone(),
                    linked_user_id: "ext-1".into(),
                },
            )
            .await
            .expect("remove link");
        let _: idp::DeleteIdpResponse =
            c.call(DELETE_IDP, idp::DeleteIdpRequest { id: oidc.clone() }).await.expect("delete");
        expect_code(
            c.call::<_, idp::GetIdpByIdResponse>(GET_IDP, idp::GetIdpByIdRequest { id: oidc }).await,
            Code::NotFound,
            "deleted",
        );
    }

    // IdP configuration needs idp.write: an ordinary user is refused.
    let root = Client::new(&server, Protocol::Json).with_token(&server.admin_token());
    let nobody = add_user(&root, "plain-user").await;
    let _ = nobody;
    let anonymous = Client::new(&server, Protocol::Json);
    expect_code(
        anonymous
            .call::<_, idp::AddGitHubProviderResponse>(
                ADD_GITHUB,
                idp::AddGitHubProviderRequest {
                    name: "x".into(),
                    client_id: "x".into(),
                    client_secret: "y".into(),
                    ..Default::default()
                },
            )
            .await,
        Code::Unauthenticated,
        "anonymous",
    );
}
