//! JWTs of an external OpenID issuer as bearer tokens — over every protocol. The test runs the issuer
//! itself on loopback (discovery document + JWKS) with a signing key made for the test.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flowgate::pb::flowgate::admin::v2 as admin;
use flowgate::pb::flowgate::object::v2 as object;
use flowgate::pb::flowgate::org::v2 as org;
use flowgate::pb::flowgate::user::v2 as user;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};
use tonic::Code;

use crate::client::{Client, Failure};
use crate::harness::{PROTOCOLS, Protocol, Server};

const ADD_MACHINE: &str = "/flowgate.user.v2.UserService/AddMachineUser";
const GET_USER: &str = "/flowgate.user.v2.UserService/GetUserByID";
const DEACTIVATE: &str = "/flowgate.user.v2.UserService/DeactivateUser";
const ADD_ORG: &str = "/flowgate.org.v2.OrganizationService/AddOrganization";
const CREATE_ADMIN: &str = "/flowgate.admin.v2.AdministratorService/CreateAdministrator";
const AUDIENCE: &str = "flowgate-it";
const KID: &str = "test-key-1";

/// An Ed25519 key pair: the private half signs, the public half is served as a JWK.
struct SigningKey {
    encoding: EncodingKey,
    x: String,
}

impl SigningKey {
    fn generate() -> SigningKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse ed25519");
        SigningKey {
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        }
    }

    fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// A minimal OpenID issuer on 127.0.0.1: the discovery document and a JWKS with one key.
struct Issuer {
    url: String,
    key: SigningKey,
}

impl Issuer {
    async fn start() -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind issuer");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let key = SigningKey::generate();
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks")}).to_string();
        let jwks =
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": key.x, "kid": KID, "use": "sig", "alg": "EdDSA"}]})
                .to_string();
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { ([("content-type", "application/json")], discovery) }),
            )
            .route("/jwks", get(move || async move { ([("content-type", "application/json")], jwks) }));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Issuer { url, key }
    }

    fn claims(&self, sub: &str) -> Value {
        let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()).expect("now");
        json!({"iss": self.url, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600})
    }

    fn token(&self, claims: &Value) -> String {
        self.key.sign(KID, claims)
    }
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

async fn add_machine(c: &Client<'_>, username: &str, org_id: &str) -> String {
    let res: user::AddMachineUserResponse = c
        .call(
            ADD_MACHINE,
            user::AddMachineUserRequest {
                user_id: None,
                username: username.to_owned(),
                organization: Some(object::Organization {
                    org: Some(object::organization::Org::OrgId(org_id.to_owned())),
                }),
                name: format!("{username} service"),
                description: "signs in with JWTs of the external issuer".to_owned(),
            },
        )
        .await
        .expect("add machine");
    res.user_id
}

fn refused<T: std::fmt::Debug>(result: Result<T, Failure>, what: &str) -> Failure {
    let failure = result.expect_err(what);
    assert_eq!(failure.code, Code::Unauthenticated, "{what}: {failure:?}");
    if let Some(status) = failure.http_status
        && failure.body.is_some()
    {
        assert_eq!(status, 401, "{what}: {failure:?}");
    }
    failure
}

#[tokio::test]
async fn jwts_of_the_configured_issuer_authenticate_machine_users() {
    let issuer = Issuer::start().await;
    let server = Server::start_with(&["--jwt-issuer", &issuer.url, "--jwt-audience", AUDIENCE]).await;
    let admin_token = server.admin_token();
    let root = Client::new(&server, Protocol::Grpc).with_token(&admin_token);
    let added: org::AddOrganizationResponse = root
        .call(ADD_ORG, org::AddOrganizationRequest { name: "Federated".to_owned(), ..Default::default() })
        .await
        .expect("add org");
    let org_id = added.organization_id;
    let robot = add_machine(&root, "jwt-robot", &org_id).await;
    let colleague = add_machine(&root, "jwt-colleague", &org_id).await;
    let _: admin::CreateAdministratorResponse = root
        .call(
            CREATE_ADMIN,
            admin::CreateAdministratorRequest {
                user_id: robot.clone(),
                resource: Some(admin::ResourceType {
                    resource: Some(admin::resource_type::Resource::OrganizationId(org_id.clone())),
                }),
                roles: vec!["ORG_USER_MANAGER".to_owned()],
            },
        )
        .await
        .expect("grant role");

    let good = issuer.claims(&robot);
    let valid = issuer.token(&good);
    let now = good["iat"].as_i64().expect("iat");
    let impostor = SigningKey::generate();
    let segment = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let bad_tokens = [
        ("expired", issuer.token(&with(good.clone(), "exp", json!(now - 3600)))),
        ("not yet valid", issuer.token(&with(good.clone(), "nbf", json!(now + 3600)))),
        ("wrong audience", issuer.token(&with(good.clone(), "aud", json!("another-api")))),
        ("wrong issuer", issuer.token(&with(good.clone(), "iss", json!("https://impostor.example")))),
        ("bad signature", impostor.sign(KID, &good)),
        ("alg none", format!("{}.{}.", segment(&json!({"alg": "none", "typ": "JWT", "kid": KID})), segment(&good))),
        ("unknown kid", issuer.key.sign("rotated-away", &good)),
        ("unknown subject", issuer.token(&issuer.claims("no-such-user"))),
        ("malformed", "not.a.jwt".to_owned()),
    ];

    for protocol in PROTOCOLS {
        let me = Client::new(&server, protocol).with_token(&valid);
        let got: user::GetUserByIdResponse =
            me.call(GET_USER, user::GetUserByIdRequest { user_id: robot.clone() }).await.expect("own user by JWT");
        assert_eq!(got.user.expect("user").user_id, robot, "{protocol:?}");
        let got: user::GetUserByIdResponse = me
            .call(GET_USER, user::GetUserByIdRequest { user_id: colleague.clone() })
            .await
            .expect("the granted role applies to JWT callers");
        assert_eq!(got.user.expect("user").user_id, colleague, "{protocol:?}");

        // The same answer as for a bad personal access token: no way to tell which check failed.
        let bad_pat = Client::new(&server, protocol).with_token("fgp_not-a-real-token");
        let pat_failure = refused(
            bad_pat
                .call::<_, user::GetUserByIdResponse>(GET_USER, user::GetUserByIdRequest { user_id: robot.clone() })
                .await,
            "bad PAT",
        );
        for (what, token) in &bad_tokens {
            let c = Client::new(&server, protocol).with_token(token);
            let res = c
                .call::<_, user::GetUserByIdResponse>(GET_USER, user::GetUserByIdRequest { user_id: robot.clone() })
                .await;
            let failure = refused(res, &format!("{protocol:?} {what} JWT"));
            assert_eq!(failure.message, pat_failure.message, "{protocol:?} {what}: same message as a bad PAT");
            if let Some(body) = &failure.body {
                assert!(body.to_string().contains("AUTH-token-invalid"), "{what}: {body}");
            }
        }
    }

    // The mapped user must be active, exactly as for personal access tokens.
    let _: user::DeactivateUserResponse =
        root.call(DEACTIVATE, user::DeactivateUserRequest { user_id: robot.clone() }).await.expect("deactivate");
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&valid);
        let res =
            c.call::<_, user::GetUserByIdResponse>(GET_USER, user::GetUserByIdRequest { user_id: robot.clone() }).await;
        refused(res, &format!("{protocol:?} JWT of a deactivated user"));
    }
    let logs = server.logs().await.join("\n");
    assert!(!logs.contains(&valid), "tokens must never be logged");
}

#[tokio::test]
async fn an_unreachable_issuer_refuses_jwts_but_not_personal_access_tokens() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let server = Server::start_with(&["--jwt-issuer", &url, "--jwt-audience", AUDIENCE]).await;
    let key = SigningKey::generate();
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()).expect("now");
    let jwt = key.sign(KID, &json!({"iss": url, "aud": AUDIENCE, "sub": "someone", "exp": now + 600}));
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&jwt);
        let res = c.call::<_, org::ListOrganizationsResponse>(
            "/flowgate.org.v2.OrganizationService/ListOrganizations",
            org::ListOrganizationsRequest::default(),
        );
        refused(res.await, &format!("{protocol:?} JWT while the issuer is down"));
        let admin = Client::new(&server, protocol).with_token(&server.admin_token());
        let _: org::ListOrganizationsResponse = admin
            .call("/flowgate.org.v2.OrganizationService/ListOrganizations", org::ListOrganizationsRequest::default())
            .await
            .expect("personal access tokens keep working");
    }
    let logs = server.logs().await.join("\n");
    assert!(
        logs.lines().any(|l| l.contains("\"WARN\"") && l.contains("signing keys of the JWT issuer")),
        "the outage is logged at warn"
    );
}

#[tokio::test]
async fn a_jwt_audience_without_an_issuer_is_a_configuration_error() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["check-config", "--jwt-audience", AUDIENCE])
        .output()
        .await
        .expect("run flowgate");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwt_issuer"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["check-config", "--jwt-issuer", "http://login.example.com", "--jwt-audience", AUDIENCE])
        .output()
        .await
        .expect("run flowgate");
    assert_eq!(out.status.code(), Some(64), "plain http to a non-loopback issuer is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwt_issuer"));
}
