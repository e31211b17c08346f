//! Sessions: create, check, read, list and terminate — over every protocol, with the bad inputs that
//! must fail.

use flowgate::pb::flowgate::admin::v2 as admin;
use flowgate::pb::flowgate::session::v2 as pb;
use flowgate::pb::flowgate::user::v2 as user;
use tonic::Code;

use crate::client::{Client, Failure};
use crate::harness::{PROTOCOLS, Protocol, Server, eventually};

const CREATE: &str = "/flowgate.session.v2.SessionService/CreateSession";
const SET: &str = "/flowgate.session.v2.SessionService/SetSession";
const GET: &str = "/flowgate.session.v2.SessionService/GetSession";
const LIST: &str = "/flowgate.session.v2.SessionService/ListSessions";
const DELETE: &str = "/flowgate.session.v2.SessionService/DeleteSession";
const ADD_HUMAN: &str = "/flowgate.user.v2.UserService/AddHumanUser";
const ADD_MACHINE: &str = "/flowgate.user.v2.UserService/AddMachineUser";
const ADD_PAT: &str = "/flowgate.user.v2.UserService/AddPersonalAccessToken";
const DEACTIVATE: &str = "/flowgate.user.v2.UserService/DeactivateUser";
const GET_USER: &str = "/flowgate.user.v2.UserService/GetUserByID";
const REGISTER_TOTP: &str = "/flowgate.user.v2.UserService/RegisterTOTP";
const VERIFY_TOTP: &str = "/flowgate.user.v2.UserService/VerifyTOTPRegistration";
const CREATE_ADMIN: &str = "/flowgate.admin.v2.AdministratorService/CreateAdministrator";

const PASSWORD: &str = "correct horse battery staple";

fn expect_code<T: std::fmt::Debug>(result: Result<T, Failure>, code: Code, what: &str) -> Failure {
    let failure = result.expect_err(what);
    assert_eq!(failure.code, code, "{what}: {failure:?}");
    failure
}

async fn add_user(c: &Client<'_>, username: &str) -> String {
    let res: user::AddHumanUserResponse = c
        .call(
            ADD_HUMAN,
            user::AddHumanUserRequest {
                username: Some(username.to_owned()),
                profile: Some(user::SetHumanProfile {
                    given_name: "Grace".into(),
                    family_name: "Hopper".into(),
                    ..Default::default()
                }),
                email: Some(user::SetHumanEmail {
                    email: format!("{username}@example.com"),
                    verification: Some(user::set_human_email::Verification::IsVerified(true)),
                }),
                password_type: Some(user::add_human_user_request::PasswordType::Password(user::Password {
                    password: PASSWORD.into(),
                    change_required: false,
                })),
                ..Default::default()
            },
        )
        .await
        .expect("add user");
    res.user_id
}

/// A machine user with the login-client role, as a custom login UI would use.
async fn login_client(root: &Client<'_>, name: &str) -> String {
    let machine: user::AddMachineUserResponse = root
        .call(
            ADD_MACHINE,
            user::AddMachineUserRequest { username: name.into(), name: name.into(), ..Default::default() },
        )
        .await
        .expect("machine");
    let _: admin::CreateAdministratorResponse = root
        .call(
            CREATE_ADMIN,
            admin::CreateAdministratorRequest {
                user_id: machine.user_id.clone(),
                resource: Some(admin::ResourceType { resource: Some(admin::resource_type::Resource::Instance(true)) }),
                roles: vec!["IAM_LOGIN_CLIENT".into()],
            },
        )
        .await
        .expect("grant login client");
    let pat: user::AddPersonalAccessTokenResponse = root
        .call(ADD_PAT, user::AddPersonalAccessTokenRequest { user_id: machine.user_id, expiration_date: None })
        .await
        .expect("pat");
    pat.token
}

fn user_check(login_name: &str) -> Option<pb::Checks> {
    Some(pb::Checks {
        user: Some(pb::CheckUser { search: Some(pb::check_user::Search::LoginName(login_name.to_owned())) }),
        ..Default::default()
    })
}

fn password_check(password: &str) -> Option<pb::Checks> {
    Some(pb::Checks { password: Some(pb::CheckPassword { password: password.to_owned() }), ..Default::default() })
}

#[tokio::test]
async fn login_flow_over_every_protocol() {
    let server = Server::start().await;
    let root = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    let client_token = login_client(&root, "login-ui").await;
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&client_token);
        let username = format!("grace-{protocol:?}").to_lowercase();
        let user_id = add_user(&root, &username).await;

        // Identify the user; no password yet.
        let created: pb::CreateSessionResponse = c
            .call(
                CREATE,
                pb::CreateSessionRequest {
                    checks: user_check(&username.to_uppercase()),
                    metadata: [("device".to_owned(), b"laptop".to_vec())].into_iter().collect(),
                    user_agent: Some(pb::UserAgent {
                        fingerprint_id: Some(format!("fp-{username}")),
                        ip: Some("192.0.2.1".into()),
                        description: Some("Firefox".into()),
                        header: [(
                            "accept-language".to_owned(),
                            pb::user_agent::HeaderValues { values: vec!["en".into()] },
                        )]
                        .into_iter()
                        .collect(),
                    }),
                    lifetime: Some(pbjson_types::Duration { seconds: 18000, nanos: 0 }),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{protocol:?} create: {e:?}"));
        assert!(created.session_token.len() >= 40, "{protocol:?}: token too short");
        // The token names its session: `fgs_<session id>.<secret>`.
        assert!(
            created.session_token.starts_with(&format!("fgs_{}.", created.session_id)),
            "{protocol:?}: {}",
            created.session_token
        );
        let first_token = created.session_token.clone();
        // One event per fact (added, user checked, metadata, lifetime): the sequence counts them.
        let created_sequence = created.details.as_ref().expect("details").sequence;
        assert!(created_sequence >= 1, "{protocol:?}");

        // Add the password: the token rotates and the old one stops working at once.
        let set: pb::SetSessionResponse = c
            .call(
                SET,
                pb::SetSessionRequest {
                    session_id: created.session_id.clone(),
                    checks: password_check(PASSWORD),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{protocol:?} password: {e:?}"));
        assert_ne!(set.session_token, first_token, "{protocol:?}: token must rotate");
        let anonymous = Client::new(&server, protocol).with_token(&server.admin_token());
        let stale = anonymous
            .call::<_, pb::GetSessionResponse>(
                GET,
                pb::GetSessionRequest {
                    session_id: created.session_id.clone(),
                    session_token: Some(first_token.clone()),
                },
            )
            .await;
        // A token that is sent must be the current one, whoever sends it.
        expect_code(stale, Code::PermissionDenied, &format!("{protocol:?} rotated-out token"));
        let _: pb::GetSessionResponse = anonymous
            .call(GET, pb::GetSessionRequest { session_id: created.session_id.clone(), session_token: None })
            .await
            .unwrap_or_else(|e| panic!("{protocol:?}: session.read needs no token: {e:?}"));

        // The session's own token is enough to read it, for a caller without any permission.
        let (_, nobody_token) = {
            let m: user::AddMachineUserResponse = root
                .call(
                    ADD_MACHINE,
                    user::AddMachineUserRequest {
                        username: format!("nobody-{username}"),
                        name: "n".into(),
                        ..Default::default()
                    },
                )
                .await
                .expect("nobody");
            let pat: user::AddPersonalAccessTokenResponse = root
                .call(
                    ADD_PAT,
                    user::AddPersonalAccessTokenRequest { user_id: m.user_id.clone(), expiration_date: None },
                )
                .await
                .expect("pat");
            (m.user_id, pat.token)
        };
        let nobody = Client::new(&server, protocol).with_token(&nobody_token);
        let got: pb::GetSessionResponse = nobody
            .call(
                GET,
                pb::GetSessionRequest {
                    session_id: created.session_id.clone(),
                    session_token: Some(set.session_token.clone()),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{protocol:?} get with token: {e:?}"));
        let session = got.session.expect("session");
        let factors = session.factors.expect("factors");
        assert_eq!(factors.user.as_ref().expect("user factor").id, user_id);
        assert!(factors.password.and_then(|p| p.verified_at).is_some(), "{protocol:?}: password factor");
        assert_eq!(session.metadata.get("device").map(Vec::as_slice), Some(&b"laptop"[..]));
        assert!(session.expiration_date.is_some(), "{protocol:?}: lifetime sets an expiration");
        assert_eq!(session.user_agent.expect("ua").fingerprint_id.as_deref(), Some(format!("fp-{username}").as_str()));
        assert!(session.sequence > created_sequence, "{protocol:?}: the password check is an event");

        // The rotated-out token, a truncated, an extended and a case-flipped one are all refused. The case
        // is flipped in the secret, after the session id the token names.
        let mut flipped: Vec<char> = set.session_token.chars().collect();
        let secret = set.session_token.rfind('.').expect("fgs_<session id>.<secret>") + 1;
        let at = flipped.iter().skip(secret).position(char::is_ascii_alphabetic).expect("a letter") + secret;
        flipped[at] = if flipped[at].is_ascii_uppercase() {
            flipped[at].to_ascii_lowercase()
        } else {
            flipped[at].to_ascii_uppercase()
        };
        let flipped: String = flipped.into_iter().collect();
        for (what, bad) in [
            ("rotated-out", first_token.clone()),
            ("truncated", set.session_token[..set.session_token.len() - 1].to_owned()),
            ("extended", format!("{}A", set.session_token)),
            ("case-flipped", flipped),
        ] {
            let res = nobody
                .call::<_, pb::GetSessionResponse>(
                    GET,
                    pb::GetSessionRequest { session_id: created.session_id.clone(), session_token: Some(bad) },
                )
                .await;
            expect_code(res, Code::PermissionDenied, &format!("{protocol:?} {what} session token"));
        }
        // No token and no permission: 403.
        let res = nobody
            .call::<_, pb::GetSessionResponse>(
                GET,
                pb::GetSessionRequest { session_id: created.session_id.clone(), session_token: None },
            )
            .await;
        expect_code(res, Code::PermissionDenied, &format!("{protocol:?} no token"));

        // The session token works as a bearer token for the user's own data.
        let me = Client::new(&server, protocol).with_token(&set.session_token);
        let own: user::GetUserByIdResponse = me
            .call(GET_USER, user::GetUserByIdRequest { user_id: user_id.clone() })
            .await
            .unwrap_or_else(|e| panic!("{protocol:?} bearer: {e:?}"));
        assert_eq!(own.user.expect("user").user_id, user_id);

        // A token opens only the session it names: shown for another session of the same user it is
        // refused, and with the id part changed to that session's it is no bearer token either.
        let other: pb::CreateSessionResponse = c
            .call(CREATE, pb::CreateSessionRequest { checks: user_check(&username), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("{protocol:?} second create: {e:?}"));
        let res = nobody
            .call::<_, pb::GetSessionResponse>(
                GET,
                pb::GetSessionRequest {
                    session_id: other.session_id.clone(),
                    session_token: Some(set.session_token.clone()),
                },
            )
            .await;
        expect_code(res, Code::PermissionDenied, &format!("{protocol:?} another session's token"));
        let (_, secret) = set.session_token.rsplit_once('.').expect("fgs_<session id>.<secret>");
        let renamed = format!("fgs_{}.{secret}", other.session_id);
        let res = Client::new(&server, protocol)
            .with_token(&renamed)
            .call::<_, user::GetUserByIdResponse>(GET_USER, user::GetUserByIdRequest { user_id: user_id.clone() })
            .await;
        expect_code(res, Code::Unauthenticated, &format!("{protocol:?} token renamed to another session"));

        // Metadata: overwrite and delete by empty value; lifetime refresh.
        let set2: pb::SetSessionResponse = c
            .call(
                SET,
                pb::SetSessionRequest {
                    session_id: created.session_id.clone(),
                    metadata: [("device".to_owned(), Vec::new()), ("theme".to_owned(), b"dark".to_vec())]
                        .into_iter()
                        .collect(),
                    lifetime: Some(pbjson_types::Duration { seconds: 60, nanos: 0 }),
                    ..Default::default()
                },
            )
            .await
            .expect("metadata");
        let got: pb::GetSessionResponse = nobody
            .call(
                GET,
                pb::GetSessionRequest {
                    session_id: created.session_id.clone(),
                    session_token: Some(set2.session_token.clone()),
                },
            )
            .await
            .expect("get");
        let s = got.session.expect("session");
        assert!(
            !s.metadata.contains_key("device") && s.metadata.contains_key("theme"),
            "{protocol:?}: {:?}",
            s.metadata
        );

        // Terminate with the token (the seed's call), idempotently; an unknown id is 404.
        let deleted: pb::DeleteSessionResponse = nobody
            .call(
                DELETE,
                pb::DeleteSessionRequest {
                    session_id: created.session_id.clone(),
                    session_token: Some(set2.session_token.clone()),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{protocol:?} delete: {e:?}"));
        assert!(deleted.details.is_some());
        let again: pb::DeleteSessionResponse = c
            .call(DELETE, pb::DeleteSessionRequest { session_id: created.session_id.clone(), session_token: None })
            .await
            .unwrap_or_else(|e| panic!("{protocol:?} second delete: {e:?}"));
        assert!(again.details.is_some());
        // Read just before the deletion, the session is gone right after it.
        let res = c
            .call::<_, pb::GetSessionResponse>(
                GET,
                pb::GetSessionRequest { session_id: created.session_id.clone(), session_token: None },
            )
            .await;
        expect_code(res, Code::NotFound, &format!("{protocol:?} deleted session"));
        let res = c
            .call::<_, pb::DeleteSessionResponse>(
                DELETE,
                pb::DeleteSessionRequest { session_id: "never-existed".into(), session_token: None },
            )
            .await;
        expect_code(res, Code::NotFound, &format!("{protocol:?} unknown session"));
        // A terminated session's token is no bearer token any more.
        let res = me
            .call::<_, user::GetUserByIdResponse>(GET_USER, user::GetUserByIdRequest { user_id: user_id.clone() })
            .await;
        expect_code(res, Code::Unauthenticated, &format!("{protocol:?} terminated bearer"));
    }
}

#[tokio::test]
async fn seed_terminate_session_v2beta_as_documented() {
    let server = Server::start().await;
    let root = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    add_user(&root, "seed-user").await;
    let created: pb::CreateSessionResponse = root
        .call(CREATE, pb::CreateSessionRequest { checks: user_check("seed-user"), ..Default::default() })
        .await
        .expect("create");
    // An unrelated caller (no permission) terminates it with the session token, exactly as the document shows.
    let res = server
        .http()
        .delete(server.url(&format!("/v2beta/sessions/{}", created.session_id)))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "sessionToken": created.session_token }).to_string())
        .bearer_auth(&created.session_token)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    let details = &body["details"];
    assert!(details["sequence"].is_string(), "{body}");
    let change = details["changeDate"].as_str().expect("changeDate");
    assert!(chrono::DateTime::parse_from_rfc3339(change).is_ok() && change.ends_with('Z'), "{change}");
    // v2 path too, and creation answers 201 on both.
    let res = server
        .http()
        .post(server.url("/v2beta/sessions"))
        .bearer_auth(server.admin_token())
        .json(&serde_json::json!({"checks": {"user": {"loginName": "seed-user"}}}))
        .send()
        .await
        .expect("create v2beta");
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn credentials_errors_are_uniform_and_lockout_is_exact() {
    let server = Server::start_with(&["--lockout-max-password-attempts", "5"]).await;
    let root = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    let victim = add_user(&root, "victim").await;
    let locked = add_user(&root, "locked-one").await;
    let _: user::LockUserResponse = root
        .call("/flowgate.user.v2.UserService/LockUser", user::LockUserRequest { user_id: locked })
        .await
        .expect("lock");

    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&server.admin_token());
        let unknown =
            expect_code(login(&c, "no-such-user", "whatever password").await, Code::FailedPrecondition, "unknown user");
        let locked = expect_code(login(&c, "locked-one", PASSWORD).await, Code::FailedPrecondition, "locked user");
        let wrong =
            expect_code(login(&c, "victim", "wrong password!!").await, Code::FailedPrecondition, "wrong password");
        assert_eq!(unknown.message, wrong.message, "{protocol:?}: unknown vs wrong");
        assert_eq!(locked.message, wrong.message, "{protocol:?}: locked vs wrong");
    }
    // Three wrong attempts so far; 50 more in parallel must count exactly up to 5 and lock the user.
    let c = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    let results = futures::future::join_all((0..50).map(|_| login(&c, "victim", "still wrong!!"))).await;
    assert!(results.iter().all(Result::is_err));
    // The right password no longer helps: the user is locked.
    expect_code(login(&c, "victim", PASSWORD).await, Code::FailedPrecondition, "locked after the limit");
    let got: user::GetUserByIdResponse =
        root.call(GET_USER, user::GetUserByIdRequest { user_id: victim }).await.expect("get");
    assert_eq!(got.user.expect("user").state, user::UserState::Locked as i32);
    let dump = server.database_dump().await;
    assert!(!dump.contains(PASSWORD), "passwords never stored");
}

/// One login attempt: user by login name and password in a single CreateSession.
async fn login(c: &Client<'_>, login_name: &str, password: &str) -> Result<pb::CreateSessionResponse, Failure> {
    let checks = pb::Checks {
        user: Some(pb::CheckUser { search: Some(pb::check_user::Search::LoginName(login_name.into())) }),
        password: Some(pb::CheckPassword { password: password.into() }),
        ..Default::default()
    };
    c.call(CREATE, pb::CreateSessionRequest { checks: Some(checks), ..Default::default() }).await
}

#[tokio::test]
async fn totp_and_email_codes_check_once() {
    let server = Server::start().await;
    let token = server.admin_token();
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let username = format!("mfa-{protocol:?}").to_lowercase();
        let user_id = add_user(&c, &username).await;
        let reg: user::RegisterTotpResponse =
            c.call(REGISTER_TOTP, user::RegisterTotpRequest { user_id: user_id.clone() }).await.expect("register");
        assert!(reg.uri.starts_with("otpauth://totp/"), "{}", reg.uri);
        let code = flowgate_core::session::totp::code_at(&reg.secret, chrono::Utc::now()).expect("code");
        let _: user::VerifyTotpRegistrationResponse = c
            .call(VERIFY_TOTP, user::VerifyTotpRegistrationRequest { user_id: user_id.clone(), code })
            .await
            .expect("verify");

        let created: pb::CreateSessionResponse = c
            .call(
                CREATE,
                pb::CreateSessionRequest {
                    checks: user_check(&username),
                    challenges: Some(pb::RequestChallenges {
                        otp_email: Some(pb::request_challenges::OtpEmail {
                            delivery_type: Some(pb::request_challenges::otp_email::DeliveryType::ReturnCode(
                                pb::request_challenges::otp_email::ReturnCode {},
                            )),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .expect("create with challenge");
        let email_code = created.challenges.and_then(|c| c.otp_email).expect("returned code");
        assert!(email_code.len() == 8 && email_code.chars().all(|c| c.is_ascii_digit()), "{email_code}");

        for bad in ["12345", "1234567"] {
            let res = c
                .call::<_, pb::SetSessionResponse>(
                    SET,
                    pb::SetSessionRequest {
                        session_id: created.session_id.clone(),
                        checks: Some(pb::Checks {
                            totp: Some(pb::CheckTotp { code: bad.into() }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
                .await;
            let f = expect_code(res, Code::InvalidArgument, &format!("{protocol:?} totp {bad}"));
            assert!(f.message.contains("totp"), "{}", f.message);
        }
        // The registration used this time step's code, and a code works once: the check uses the next
        // step's code, which the ±1 step window accepts.
        let code =
            flowgate_core::session::totp::code_at(&reg.secret, chrono::Utc::now() + chrono::TimeDelta::seconds(30))
                .expect("code");
        let _: pb::SetSessionResponse = c
            .call(
                SET,
                pb::SetSessionRequest {
                    session_id: created.session_id.clone(),
                    checks: Some(pb::Checks {
                        totp: Some(pb::CheckTotp { code }),
                        otp_email: Some(pb::CheckOtp { code: email_code.clone() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{protocol:?} totp + email: {e:?}"));
        let reused = c
            .call::<_, pb::SetSessionResponse>(
                SET,
                pb::SetSessionRequest {
                    session_id: created.session_id.clone(),
                    checks: Some(pb::Checks {
                        otp_email: Some(pb::CheckOtp { code: email_code }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await;
        assert!(reused.is_err(), "{protocol:?}: an e-mail code works once");
        let got: pb::GetSessionResponse = c
            .call(GET, pb::GetSessionRequest { session_id: created.session_id.clone(), session_token: None })
            .await
            .expect("get");
        let f = got.session.and_then(|s| s.factors).expect("factors");
        assert!(f.totp.is_some() && f.otp_email.is_some(), "{protocol:?}: {f:?}");
    }
}

#[tokio::test]
async fn bad_session_input_is_refused() {
    let server = Server::start().await;
    let c0 = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    add_user(&c0, "plain").await;
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&server.admin_token());
        let res = c
            .call::<_, pb::CreateSessionResponse>(
                CREATE,
                pb::CreateSessionRequest {
                    checks: user_check("plain"),
                    lifetime: Some(pbjson_types::Duration { seconds: -5, nanos: 0 }),
                    ..Default::default()
                },
            )
            .await;
        let f = expect_code(res, Code::InvalidArgument, &format!("{protocol:?} negative lifetime"));
        assert!(f.message.contains("lifetime"), "{}", f.message);
        let res = c
            .call::<_, pb::CreateSessionResponse>(
                CREATE,
                pb::CreateSessionRequest { checks: user_check(&"x".repeat(201)), ..Default::default() },
            )
            .await;
        assert!(res.is_err(), "{protocol:?}: 201-character login name");
        // Control characters cannot hide in metadata keys or the user agent.
        let res = c
            .call::<_, pb::CreateSessionResponse>(
                CREATE,
                pb::CreateSessionRequest {
                    checks: user_check("plain"),
                    metadata: [("a\u{0}b".to_owned(), b"x".to_vec())].into_iter().collect(),
                    ..Default::default()
                },
            )
            .await;
        let f = expect_code(res, Code::InvalidArgument, &format!("{protocol:?} NUL in a metadata key"));
        assert!(f.message.contains("metadata"), "{}", f.message);
        let res = c
            .call::<_, pb::CreateSessionResponse>(
                CREATE,
                pb::CreateSessionRequest {
                    checks: user_check("plain"),
                    user_agent: Some(pb::UserAgent { description: Some("evil\u{0}".into()), ..Default::default() }),
                    ..Default::default()
                },
            )
            .await;
        let f = expect_code(res, Code::InvalidArgument, &format!("{protocol:?} NUL in the user agent"));
        assert!(f.message.contains("user_agent.description"), "{}", f.message);
        // Password before the user is known.
        let res = c
            .call::<_, pb::CreateSessionResponse>(
                CREATE,
                pb::CreateSessionRequest { checks: password_check(PASSWORD), ..Default::default() },
            )
            .await;
        assert!(res.is_err(), "{protocol:?}: password check without a user");
        let list: pb::ListSessionsResponse = c.call(LIST, pb::ListSessionsRequest::default()).await.expect("list");
        assert!(list.sessions.is_empty(), "{protocol:?}: nothing half-written");
    }
}

#[tokio::test]
async fn deactivating_a_user_ends_its_sessions_and_lists_filter() {
    let server = Server::start().await;
    let root = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    let user_id = add_user(&root, "leaver").await;
    add_user(&root, "stayer").await;
    let mut tokens = Vec::new();
    for login in ["leaver", "leaver", "stayer"] {
        let created: pb::CreateSessionResponse = root
            .call(CREATE, pb::CreateSessionRequest { checks: user_check(login), ..Default::default() })
            .await
            .expect("create");
        tokens.push((created.session_id, created.session_token));
    }
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&server.admin_token());
        let list: pb::ListSessionsResponse = c
            .call(
                LIST,
                pb::ListSessionsRequest {
                    queries: vec![pb::SearchQuery {
                        query: Some(pb::search_query::Query::UserIdQuery(pb::UserIdQuery { id: user_id.clone() })),
                    }],
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(list.details.expect("details").total_result, 2, "{protocol:?}");
    }
    // Read every session first, so that a server which remembers sessions has them in memory when the user
    // is deactivated: what it remembers must not outlive the change.
    for (id, token) in &tokens {
        for protocol in PROTOCOLS {
            let _: pb::GetSessionResponse = Client::new(&server, protocol)
                .with_token(token)
                .call(GET, pb::GetSessionRequest { session_id: id.clone(), session_token: Some(token.clone()) })
                .await
                .expect("usable before the deactivation");
        }
    }
    let _: user::DeactivateUserResponse =
        root.call(DEACTIVATE, user::DeactivateUserRequest { user_id: user_id.clone() }).await.expect("deactivate");
    for (i, (id, token)) in tokens.iter().enumerate() {
        let bearer = Client::new(&server, Protocol::Json).with_token(token);
        let res = bearer
            .call::<_, pb::GetSessionResponse>(
                GET,
                pb::GetSessionRequest { session_id: id.clone(), session_token: Some(token.clone()) },
            )
            .await;
        if i < 2 {
            assert!(res.is_err(), "the leaver's session {i} must be unusable");
        } else {
            assert!(res.is_ok(), "the stayer's session is untouched: {res:?}");
        }
    }
}

#[tokio::test]
async fn a_change_on_one_server_is_seen_by_the_other() {
    let first = Server::start().await;
    let second = first.sibling().await;
    let token = first.admin_token();
    // Sessions read by id are remembered.
    let within = first.sibling_sees_changes_within(std::time::Duration::from_millis(1500));
    add_user(&Client::new(&first, Protocol::Grpc).with_token(&token), "roamer").await;
    for protocol in PROTOCOLS {
        let (on_first, on_second) =
            (Client::new(&first, protocol).with_token(&token), Client::new(&second, protocol).with_token(&token));
        let created: pb::CreateSessionResponse = on_first
            .call(CREATE, pb::CreateSessionRequest { checks: user_check("roamer"), ..Default::default() })
            .await
            .expect("create");
        let id = created.session_id.clone();
        let get = || {
            let (c, id) = (&on_second, id.clone());
            async move { c.call(GET, pb::GetSessionRequest { session_id: id, session_token: None }).await }
        };
        // The second server reads the session (and may remember it) before the first one changes it.
        let before: pb::GetSessionResponse = get().await.expect("get on the second server");
        assert!(before.session.expect("session").metadata.is_empty());
        let _: pb::SetSessionResponse = on_first
            .call(
                SET,
                pb::SetSessionRequest {
                    session_id: id.clone(),
                    metadata: [("seen".to_owned(), b"yes".to_vec())].into_iter().collect(),
                    ..Default::default()
                },
            )
            .await
            .expect("set on the first server");
        eventually(&format!("{protocol:?} metadata"), within, get, |answer| {
            answer.as_ref().is_ok_and(|got| got.session.as_ref().is_some_and(|s| s.metadata.contains_key("seen")))
        })
        .await;
        let _: pb::DeleteSessionResponse = on_first
            .call(DELETE, pb::DeleteSessionRequest { session_id: id.clone(), session_token: None })
            .await
            .expect("delete on the first server");
        eventually(&format!("{protocol:?} deletion"), within, get, |answer| {
            answer.as_ref().is_err_and(|failure| failure.code == Code::NotFound)
        })
        .await;
    }
}

#[tokio::test]
async fn a_user_locked_on_one_server_cannot_sign_in_on_the_other() {
    let first = Server::start().await;
    let second = first.sibling().await;
    let token = first.admin_token();
    // Sign-in checks remember their user; a lock is announced as a change of the user.
    let within = first.sibling_sees_changes_within(std::time::Duration::from_millis(500));
    let user_id = add_user(&Client::new(&first, Protocol::Grpc).with_token(&token), "wanderer").await;
    for protocol in PROTOCOLS {
        let (on_first, on_second) =
            (Client::new(&first, protocol).with_token(&token), Client::new(&second, protocol).with_token(&token));
        let create = || {
            let c = &on_second;
            async move {
                c.call::<_, pb::CreateSessionResponse>(
                    CREATE,
                    pb::CreateSessionRequest { checks: user_check("wanderer"), ..Default::default() },
                )
                .await
            }
        };
        create().await.expect("the second server checks the user (and may remember it)");
        let _: user::LockUserResponse = on_first
            .call("/flowgate.user.v2.UserService/LockUser", user::LockUserRequest { user_id: user_id.clone() })
            .await
            .expect("lock on the first server");
        eventually(&format!("{protocol:?} lock"), within, create, |answer| {
            answer.as_ref().is_err_and(|failure| failure.code == Code::FailedPrecondition)
        })
        .await;
        let _: user::UnlockUserResponse = on_first
            .call("/flowgate.user.v2.UserService/UnlockUser", user::UnlockUserRequest { user_id: user_id.clone() })
            .await
            .expect("unlock on the first server");
        eventually(&format!("{protocol:?} unlock"), within, create, |answer| answer.is_ok()).await;
    }
}

#[tokio::test]
async fn concurrent_changes_from_two_server_processes_lose_nothing() {
    let first = Server::start().await;
    let second = first.sibling().await;
    let token = first.admin_token();
    let root = Client::new(&first, Protocol::Grpc).with_token(&token);
    add_user(&root, "busy-bee").await;
    let created: pb::CreateSessionResponse = root
        .call(CREATE, pb::CreateSessionRequest { checks: user_check("busy-bee"), ..Default::default() })
        .await
        .expect("create");
    let start = created.details.expect("details").sequence;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let server = if i % 2 == 0 { &first } else { &second };
        let c = Client::new(server, PROTOCOLS[i % 3]).with_token(&token);
        let id = created.session_id.clone();
        tasks.push(async move {
            c.call::<_, pb::SetSessionResponse>(
                SET,
                pb::SetSessionRequest {
                    session_id: id,
                    metadata: [(format!("k{i}"), format!("v{i}").into_bytes())].into_iter().collect(),
                    ..Default::default()
                },
            )
            .await
        });
    }
    let results = futures::future::join_all(tasks).await;
    let mut applied = Vec::new();
    for r in results {
        match r {
            Ok(res) => applied.push((res.details.expect("details").sequence, res.session_token)),
            // A clean refusal is allowed; anything else is a defect.
            Err(f) => assert_eq!(f.code, Code::Aborted, "{f:?}"),
        }
    }
    assert!(!applied.is_empty());
    applied.sort();
    let sequences: Vec<u64> = applied.iter().map(|(s, _)| *s).collect();
    let mut unique = sequences.clone();
    unique.dedup();
    assert_eq!(unique, sequences, "no two changes share a sequence");
    let got: pb::GetSessionResponse = root
        .call(GET, pb::GetSessionRequest { session_id: created.session_id.clone(), session_token: None })
        .await
        .expect("get");
    let session = got.session.expect("session");
    assert_eq!(session.sequence, *sequences.last().expect("one"), "the last change is the session's state");
    assert!(session.sequence - start >= applied.len() as u64, "every applied change is an event");
    // Each applied change added its own key: none is lost.
    assert_eq!(session.metadata.len(), applied.len(), "{:?}", session.metadata.keys().collect::<Vec<_>>());
    // Only the newest token is valid.
    let nobody = Client::new(&first, Protocol::Json);
    for (i, (_, t)) in applied.iter().enumerate() {
        let res = nobody
            .with_token(t)
            .call::<_, pb::GetSessionResponse>(
                GET,
                pb::GetSessionRequest { session_id: created.session_id.clone(), session_token: Some(t.clone()) },
            )
            .await;
        if i + 1 == applied.len() {
            assert!(res.is_ok(), "the newest token works: {res:?}");
        } else {
            assert!(res.is_err(), "an older token {i} still works");
        }
    }
}

#[tokio::test]
async fn list_sessions_by_every_query() {
    let server = Server::start().await;
    let root = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    let client_token = login_client(&root, "lister").await;
    let lister = Client::new(&server, Protocol::Grpc).with_token(&client_token);
    add_user(&root, "listed").await;
    let before = chrono::Utc::now() - chrono::TimeDelta::seconds(5);
    let mut ids = Vec::new();
    for (i, lifetime) in [None, Some(60), Some(7200)].into_iter().enumerate() {
        let created: pb::CreateSessionResponse = lister
            .call(
                CREATE,
                pb::CreateSessionRequest {
                    checks: user_check("listed"),
                    user_agent: Some(pb::UserAgent { fingerprint_id: Some(format!("fp-{i}")), ..Default::default() }),
                    lifetime: lifetime.map(|s| pbjson_types::Duration { seconds: s, nanos: 0 }),
                    ..Default::default()
                },
            )
            .await
            .expect("create");
        ids.push(created.session_id);
    }
    let ts = |t: chrono::DateTime<chrono::Utc>| Some(pbjson_types::Timestamp { seconds: t.timestamp(), nanos: 0 });
    let in_an_hour = chrono::Utc::now() + chrono::TimeDelta::seconds(3600);
    let cases: Vec<(&str, pb::search_query::Query, usize)> = vec![
        ("ids", pb::search_query::Query::IdsQuery(pb::IDsQuery { ids: vec![ids[0].clone(), ids[2].clone()] }), 2),
        (
            "creation date",
            pb::search_query::Query::CreationDateQuery(pb::CreationDateQuery {
                creation_date: ts(before),
                method: flowgate::pb::flowgate::object::v2::TimestampQueryMethod::Greater as i32,
            }),
            3,
        ),
        ("creator", pb::search_query::Query::CreatorQuery(pb::CreatorQuery { id: None }), 3),
        (
            "fingerprint",
            pb::search_query::Query::UserAgentQuery(pb::UserAgentQuery { fingerprint_id: Some("fp-1".into()) }),
            1,
        ),
        (
            "expiration",
            pb::search_query::Query::ExpirationDateQuery(pb::ExpirationDateQuery {
                expiration_date: ts(in_an_hour),
                method: flowgate::pb::flowgate::object::v2::TimestampQueryMethod::Less as i32,
            }),
            1,
        ),
    ];
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&client_token);
        for (what, query, expected) in &cases {
            let list: pb::ListSessionsResponse = c
                .call(
                    LIST,
                    pb::ListSessionsRequest {
                        queries: vec![pb::SearchQuery { query: Some(query.clone()) }],
                        ..Default::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{protocol:?} {what}: {e:?}"));
            assert_eq!(list.sessions.len(), *expected, "{protocol:?} {what}");
            assert_eq!(list.details.expect("details").total_result, *expected as u64, "{protocol:?} {what}");
        }
        // Paging and sorting by creation date.
        let page: pb::ListSessionsResponse = c
            .call(
                LIST,
                pb::ListSessionsRequest {
                    query: Some(flowgate::pb::flowgate::object::v2::ListQuery { offset: 1, limit: 1, asc: true }),
                    sorting_column: pb::SessionFieldName::CreationDate as i32,
                    ..Default::default()
                },
            )
            .await
            .expect("page");
        assert_eq!(page.sessions.len(), 1);
        assert_eq!(page.sessions[0].id, ids[1], "{protocol:?}: ascending by creation, second item");
        assert_eq!(page.details.expect("details").total_result, 3);
    }
}

#[tokio::test]
async fn expired_sessions_are_listed_and_deletable_but_refuse_checks_and_bearer_use() {
    let server = Server::start().await;
    let root = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    add_user(&root, "shortlived").await;
    add_user(&root, "neighbour").await;
    let short: pb::CreateSessionResponse = root
        .call(
            CREATE,
            pb::CreateSessionRequest {
                checks: user_check("shortlived"),
                lifetime: Some(pbjson_types::Duration { seconds: 1, nanos: 0 }),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    let other: pb::CreateSessionResponse = root
        .call(CREATE, pb::CreateSessionRequest { checks: user_check("neighbour"), ..Default::default() })
        .await
        .expect("create");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&server.admin_token());
        let res = c
            .call::<_, pb::SetSessionResponse>(
                SET,
                pb::SetSessionRequest {
                    session_id: short.session_id.clone(),
                    checks: password_check(PASSWORD),
                    ..Default::default()
                },
            )
            .await;
        expect_code(res, Code::FailedPrecondition, &format!("{protocol:?} check on an expired session"));
        let bearer = Client::new(&server, protocol).with_token(&short.session_token);
        let res = bearer.call::<_, pb::ListSessionsResponse>(LIST, pb::ListSessionsRequest::default()).await;
        expect_code(res, Code::Unauthenticated, &format!("{protocol:?} expired session as bearer"));
        // Another session's token does not open this one.
        let res = Client::new(&server, protocol)
            .with_token(&other.session_token)
            .call::<_, pb::GetSessionResponse>(
                GET,
                pb::GetSessionRequest {
                    session_id: short.session_id.clone(),
                    session_token: Some(other.session_token.clone()),
                },
            )
            .await;
        expect_code(res, Code::PermissionDenied, &format!("{protocol:?} other session's token"));
        let list: pb::ListSessionsResponse = c
            .call(
                LIST,
                pb::ListSessionsRequest {
                    queries: vec![pb::SearchQuery {
                        query: Some(pb::search_query::Query::IdsQuery(pb::IDsQuery {
                            ids: vec![short.session_id.clone()],
                        })),
                    }],
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(list.sessions.len(), 1, "{protocol:?}: expired sessions are still listed");
    }
    let _: pb::DeleteSessionResponse = root
        .call(
            DELETE,
            pb::DeleteSessionRequest {
                session_id: short.session_id.clone(),
                session_token: Some(short.session_token.clone()),
            },
        )
        .await
        .expect("an expired session can be deleted");
}
