//! Organizations, users, machine users, tokens, authentication and permissions — over every protocol.

use flowgate::pb::flowgate::admin::v2 as admin;
use flowgate::pb::flowgate::object::v2 as object;
use flowgate::pb::flowgate::org::v2 as org;
use flowgate::pb::flowgate::user::v2 as user;
use tonic::Code;

use crate::client::{Client, Failure};
use crate::harness::{PROTOCOLS, Protocol, Server, eventually};

const ADD_HUMAN: &str = "/flowgate.user.v2.UserService/AddHumanUser";
const ADD_MACHINE: &str = "/flowgate.user.v2.UserService/AddMachineUser";
const GET_USER: &str = "/flowgate.user.v2.UserService/GetUserByID";
const LIST_USERS: &str = "/flowgate.user.v2.UserService/ListUsers";
const UPDATE_HUMAN: &str = "/flowgate.user.v2.UserService/UpdateHumanUser";
const SET_PASSWORD: &str = "/flowgate.user.v2.UserService/SetPassword";
const DEACTIVATE: &str = "/flowgate.user.v2.UserService/DeactivateUser";
const REACTIVATE: &str = "/flowgate.user.v2.UserService/ReactivateUser";
const LOCK: &str = "/flowgate.user.v2.UserService/LockUser";
const UNLOCK: &str = "/flowgate.user.v2.UserService/UnlockUser";
const DELETE_USER: &str = "/flowgate.user.v2.UserService/DeleteUser";
const ADD_PAT: &str = "/flowgate.user.v2.UserService/AddPersonalAccessToken";
const LIST_PATS: &str = "/flowgate.user.v2.UserService/ListPersonalAccessTokens";
const REMOVE_PAT: &str = "/flowgate.user.v2.UserService/RemovePersonalAccessToken";
const ADD_ORG: &str = "/flowgate.org.v2.OrganizationService/AddOrganization";
const GET_ORG: &str = "/flowgate.org.v2.OrganizationService/GetOrganization";
const LIST_ORGS: &str = "/flowgate.org.v2.OrganizationService/ListOrganizations";
const DEACTIVATE_ORG: &str = "/flowgate.org.v2.OrganizationService/DeactivateOrganization";
const REACTIVATE_ORG: &str = "/flowgate.org.v2.OrganizationService/ReactivateOrganization";
const DELETE_ORG: &str = "/flowgate.org.v2.OrganizationService/DeleteOrganization";
const CREATE_ADMIN: &str = "/flowgate.admin.v2.AdministratorService/CreateAdministrator";
const DELETE_ADMIN: &str = "/flowgate.admin.v2.AdministratorService/DeleteAdministrator";

fn org_ref(id: &str) -> Option<object::Organization> {
    Some(object::Organization { org: Some(object::organization::Org::OrgId(id.to_owned())) })
}

fn human(username: &str, org_id: Option<&str>, password: Option<&str>) -> user::AddHumanUserRequest {
    user::AddHumanUserRequest {
        user_id: None,
        username: Some(username.to_owned()),
        profile: Some(user::SetHumanProfile {
            given_name: "Ada".to_owned(),
            family_name: "Lovelace".to_owned(),
            nick_name: None,
            display_name: Some("Ada L.".to_owned()),
            preferred_language: Some("en".to_owned()),
            gender: None,
        }),
        email: Some(user::SetHumanEmail {
            email: format!("{username}@example.com"),
            verification: Some(user::set_human_email::Verification::IsVerified(true)),
        }),
        password_type: password.map(|p| {
            user::add_human_user_request::PasswordType::Password(user::Password {
                password: p.to_owned(),
                change_required: false,
            })
        }),
        phone: None,
        organization: org_id.and_then(org_ref),
        idp_links: vec![],
    }
}

async fn add_org(c: &Client<'_>, name: &str) -> String {
    let res: org::AddOrganizationResponse = c
        .call(ADD_ORG, org::AddOrganizationRequest { name: name.to_owned(), ..Default::default() })
        .await
        .expect("add org");
    res.organization_id
}

async fn add_machine_with_token(c: &Client<'_>, username: &str, org_id: &str) -> (String, String) {
    let res: user::AddMachineUserResponse = c
        .call(
            ADD_MACHINE,
            user::AddMachineUserRequest {
                user_id: None,
                username: username.to_owned(),
                organization: org_ref(org_id),
                name: format!("{username} service"),
                description: "automation".to_owned(),
            },
        )
        .await
        .expect("add machine");
    let pat: user::AddPersonalAccessTokenResponse = c
        .call(ADD_PAT, user::AddPersonalAccessTokenRequest { user_id: res.user_id.clone(), expiration_date: None })
        .await
        .expect("add pat");
    (res.user_id, pat.token)
}

async fn grant(c: &Client<'_>, user_id: &str, org_id: Option<&str>, role: &str) {
    let resource = admin::ResourceType {
        resource: Some(match org_id {
            Some(o) => admin::resource_type::Resource::OrganizationId(o.to_owned()),
            None => admin::resource_type::Resource::Instance(true),
        }),
    };
    let _: admin::CreateAdministratorResponse = c
        .call(
            CREATE_ADMIN,
            admin::CreateAdministratorRequest {
                user_id: user_id.to_owned(),
                resource: Some(resource),
                roles: vec![role.to_owned()],
            },
        )
        .await
        .expect("grant role");
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, Failure>, code: Code, http: u16, what: &str) -> Failure {
    let failure = result.expect_err(what);
    assert_eq!(failure.code, code, "{what}: {failure:?}");
    if let Some(status) = failure.http_status
        && failure.body.is_some()
    {
        assert_eq!(status, http, "{what}: {failure:?}");
    }
    failure
}

#[tokio::test]
async fn bootstrap_writes_one_owner_only_token_and_restarts_keep_it() {
    let server = Server::start().await;
    let path = server.data_file("admin.pat");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("admin.pat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "admin.pat mode {mode:o}");
    }
    let token = server.admin_token();
    assert!(token.starts_with("fgp_"), "token format");
    let logs = server.logs().await.join("\n");
    assert!(!logs.contains(&token), "the token must never be logged");
    assert!(logs.contains("admin.pat"), "the log names the file");
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let orgs: org::ListOrganizationsResponse =
            c.call(LIST_ORGS, org::ListOrganizationsRequest::default()).await.expect("list orgs");
        assert_eq!(orgs.result.len(), 1, "{protocol:?}: exactly the default org");
    }
    let server = server.restart().await;
    assert_eq!(server.admin_token(), token, "a restart must not create a second admin");
    let c = Client::new(&server, Protocol::Json).with_token(&token);
    let orgs: org::ListOrganizationsResponse =
        c.call(LIST_ORGS, org::ListOrganizationsRequest::default()).await.expect("list orgs");
    assert_eq!(orgs.result.len(), 1);
}

#[tokio::test]
async fn user_lifecycle_over_every_protocol() {
    let server = Server::start().await;
    let token = server.admin_token();
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let tag = format!("{protocol:?}").to_lowercase().replace('-', "");
        let org_id = add_org(&c, &format!("Acme {tag}")).await;
        let o: org::GetOrganizationResponse =
            c.call(GET_ORG, org::GetOrganizationRequest { organization_id: org_id.clone() }).await.expect("get org");
        let o = o.organization.expect("org");
        assert_eq!(o.primary_domain, format!("acme-{tag}.localhost"));
        assert_eq!(o.state, org::OrganizationState::Active as i32);

        let username = format!("ada-{tag}");
        let added: user::AddHumanUserResponse = c
            .call(ADD_HUMAN, human(&username, Some(&org_id), Some("correct horse battery staple")))
            .await
            .expect("add human");
        let details = added.details.expect("details");
        assert_eq!(details.sequence, 1);
        assert_eq!(details.resource_owner, org_id);

        let got: user::GetUserByIdResponse =
            c.call(GET_USER, user::GetUserByIdRequest { user_id: added.user_id.clone() }).await.expect("get user");
        let u = got.user.expect("user");
        assert_eq!(u.username, username);
        assert_eq!(u.state, user::UserState::Active as i32);
        assert!(u.login_names.contains(&format!("{username}@acme-{tag}.localhost")), "{:?}", u.login_names);
        let Some(user::user::Type::Human(h)) = u.r#type else { panic!("human expected") };
        assert_eq!(h.email.expect("email").email, format!("{username}@example.com"));

        // Every query finds the user.
        let queries: Vec<user::search_query::Query> = vec![
            user::search_query::Query::UserNameQuery(user::UserNameQuery {
                user_name: username.to_uppercase(),
                method: object::TextQueryMethod::EqualsIgnoreCase as i32,
            }),
            user::search_query::Query::EmailQuery(user::EmailQuery {
                email_address: format!("{username}@"),
                method: object::TextQueryMethod::StartsWith as i32,
            }),
            user::search_query::Query::OrganizationIdQuery(user::OrganizationIdQuery {
                organization_id: org_id.clone(),
            }),
            user::search_query::Query::StateQuery(user::StateQuery { state: user::UserState::Active as i32 }),
            user::search_query::Query::TypeQuery(user::TypeQuery { r#type: user::Type::Human as i32 }),
            user::search_query::Query::LoginNameQuery(user::LoginNameQuery {
                login_name: format!("{username}@acme-{tag}.localhost"),
                method: object::TextQueryMethod::Equals as i32,
            }),
            user::search_query::Query::InUserIdsQuery(user::InUserIdQuery { user_ids: vec![added.user_id.clone()] }),
        ];
        for query in queries {
            let label = format!("{query:?}");
            let list: user::ListUsersResponse = c
                .call(
                    LIST_USERS,
                    user::ListUsersRequest {
                        query: Some(object::ListQuery { offset: 0, limit: 10, asc: true }),
                        sorting_column: 0,
                        queries: vec![
                            user::SearchQuery { query: Some(query) },
                            user::SearchQuery {
                                query: Some(user::search_query::Query::OrganizationIdQuery(
                                    user::OrganizationIdQuery { organization_id: org_id.clone() },
                                )),
                            },
                        ],
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{protocol:?} list {label}: {e:?}"));
            assert_eq!(list.details.expect("details").total_result, 1, "{protocol:?} {label}");
            assert_eq!(list.result[0].user_id, added.user_id, "{protocol:?} {label}");
        }

        // Update: only what was sent changes.
        let _: user::UpdateHumanUserResponse = c
            .call(
                UPDATE_HUMAN,
                user::UpdateHumanUserRequest {
                    user_id: added.user_id.clone(),
                    username: None,
                    profile: Some(user::SetHumanProfile {
                        given_name: "Augusta".to_owned(),
                        family_name: "King".to_owned(),
                        ..Default::default()
                    }),
                    email: None,
                    phone: None,
                    password: None,
                },
            )
            .await
            .expect("update");
        let got: user::GetUserByIdResponse =
            c.call(GET_USER, user::GetUserByIdRequest { user_id: added.user_id.clone() }).await.expect("get");
        let u = got.user.expect("user");
        assert!(u.details.expect("details").sequence >= 2);
        let Some(user::user::Type::Human(h)) = u.r#type else { panic!("human") };
        assert_eq!(h.profile.expect("profile").given_name, "Augusta");
        assert_eq!(h.email.expect("email").email, format!("{username}@example.com"), "email untouched");

        // Password change with the current password, wrong current password refused.
        let wrong = c
            .call::<_, user::SetPasswordResponse>(
                SET_PASSWORD,
                user::SetPasswordRequest {
                    user_id: added.user_id.clone(),
                    new_password: Some(user::Password {
                        password: "another long password".into(),
                        change_required: false,
                    }),
                    verification: Some(user::set_password_request::Verification::CurrentPassword(
                        "not it at all".into(),
                    )),
                },
            )
            .await;
        assert!(wrong.is_err(), "{protocol:?}: wrong current password accepted");
        let _: user::SetPasswordResponse = c
            .call(
                SET_PASSWORD,
                user::SetPasswordRequest {
                    user_id: added.user_id.clone(),
                    new_password: Some(user::Password {
                        password: "another long password".into(),
                        change_required: false,
                    }),
                    verification: Some(user::set_password_request::Verification::CurrentPassword(
                        "correct horse battery staple".into(),
                    )),
                },
            )
            .await
            .expect("set password");

        // States.
        for (path, state) in [
            (DEACTIVATE, user::UserState::Inactive),
            (REACTIVATE, user::UserState::Active),
            (LOCK, user::UserState::Locked),
            (UNLOCK, user::UserState::Active),
        ] {
            let _: user::DeactivateUserResponse =
                c.call(path, user::DeactivateUserRequest { user_id: added.user_id.clone() }).await.expect(path);
            let got: user::GetUserByIdResponse =
                c.call(GET_USER, user::GetUserByIdRequest { user_id: added.user_id.clone() }).await.expect("get");
            assert_eq!(got.user.expect("user").state, state as i32, "{protocol:?} {path}");
        }
        let again = c
            .call::<_, user::ReactivateUserResponse>(
                REACTIVATE,
                user::ReactivateUserRequest { user_id: added.user_id.clone() },
            )
            .await;
        assert_code(again, Code::FailedPrecondition, 400, "reactivating an active user");

        let _: user::DeleteUserResponse =
            c.call(DELETE_USER, user::DeleteUserRequest { user_id: added.user_id.clone() }).await.expect("delete");
        let gone = c
            .call::<_, user::GetUserByIdResponse>(GET_USER, user::GetUserByIdRequest { user_id: added.user_id.clone() })
            .await;
        assert_code(gone, Code::NotFound, 404, "deleted user");

        // Organization states.
        let _: org::DeactivateOrganizationResponse = c
            .call(DEACTIVATE_ORG, org::DeactivateOrganizationRequest { organization_id: org_id.clone() })
            .await
            .expect("deactivate org");
        let _: org::ReactivateOrganizationResponse = c
            .call(REACTIVATE_ORG, org::ReactivateOrganizationRequest { organization_id: org_id.clone() })
            .await
            .expect("reactivate org");
        let _: org::DeleteOrganizationResponse = c
            .call(DELETE_ORG, org::DeleteOrganizationRequest { organization_id: org_id.clone() })
            .await
            .expect("delete org");
    }
}

#[tokio::test]
async fn machine_tokens_authenticate_and_bad_tokens_are_refused() {
    let server = Server::start().await;
    let admin_token = server.admin_token();
    let admin = Client::new(&server, Protocol::Grpc).with_token(&admin_token);
    let org_id = add_org(&admin, "Robots").await;
    let (machine_id, token) = add_machine_with_token(&admin, "robot", &org_id).await;
    grant(&admin, &machine_id, Some(&org_id), "ORG_USER_MANAGER").await;
    let expired: user::AddPersonalAccessTokenResponse = admin
        .call(
            ADD_PAT,
            user::AddPersonalAccessTokenRequest {
                user_id: machine_id.clone(),
                expiration_date: Some(pbjson_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp() + 1,
                    nanos: 0,
                }),
            },
        )
        .await
        .expect("short-lived pat");
    let revoked: user::AddPersonalAccessTokenResponse = admin
        .call(ADD_PAT, user::AddPersonalAccessTokenRequest { user_id: machine_id.clone(), expiration_date: None })
        .await
        .expect("pat to revoke");
    let _: user::RemovePersonalAccessTokenResponse = admin
        .call(
            REMOVE_PAT,
            user::RemovePersonalAccessTokenRequest { user_id: machine_id.clone(), token_id: revoked.token_id.clone() },
        )
        .await
        .expect("revoke");
    let pats: user::ListPersonalAccessTokensResponse = admin
        .call(LIST_PATS, user::ListPersonalAccessTokensRequest { user_id: machine_id.clone(), query: None })
        .await
        .expect("list pats");
    assert_eq!(pats.result.len(), 2, "the revoked token is gone; two remain");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    // Flip the case of the first letter of the secret part (the `fgp_` prefix is fixed).
    let flipped: String = {
        let at = token.char_indices().skip(4).find(|(_, c)| c.is_ascii_alphabetic()).map(|(i, _)| i).expect("a letter");
        token
            .char_indices()
            .map(|(i, c)| {
                if i == at {
                    if c.is_ascii_uppercase() { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() }
                } else {
                    c
                }
            })
            .collect()
    };
    assert_ne!(flipped, token);
    let bad_tokens = [
        ("truncated", token[..token.len() - 1].to_owned()),
        ("extended", format!("{token}A")),
        ("case-flipped", flipped),
        ("expired", expired.token.clone()),
        ("revoked", revoked.token.clone()),
        ("garbage", "definitely-not-a-token".to_owned()),
        ("empty", String::new()),
    ];
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let me: user::GetUserByIdResponse = c
            .call(GET_USER, user::GetUserByIdRequest { user_id: machine_id.clone() })
            .await
            .expect("machine token works");
        assert_eq!(me.user.expect("user").user_id, machine_id);
        for (what, bad) in &bad_tokens {
            let c = Client::new(&server, protocol).with_token(bad);
            let res = c
                .call::<_, user::GetUserByIdResponse>(
                    GET_USER,
                    user::GetUserByIdRequest { user_id: machine_id.clone() },
                )
                .await;
            assert_code(res, Code::Unauthenticated, 401, &format!("{protocol:?} {what} token"));
        }
        let anonymous = Client::new(&server, protocol);
        let res = anonymous
            .call::<_, user::GetUserByIdResponse>(GET_USER, user::GetUserByIdRequest { user_id: machine_id.clone() })
            .await;
        assert_code(res, Code::Unauthenticated, 401, &format!("{protocol:?} no token"));
    }
    let logs = server.logs().await.join("\n");
    assert!(!logs.contains(&token) && !logs.contains(&admin_token), "tokens must never be logged");
}

#[tokio::test]
async fn a_role_or_token_revoked_on_one_server_stops_working_on_the_other() {
    let first = Server::start().await;
    let second = first.sibling().await;
    let admin_token = first.admin_token();
    // Resolved tokens are remembered with their owner's roles; every membership and token change is
    // announced as a change of the owner.
    let within = first.sibling_sees_changes_within(std::time::Duration::from_millis(500));
    let admin = Client::new(&first, Protocol::Grpc).with_token(&admin_token);
    let org_id = add_org(&admin, "Wardens").await;
    let target: user::AddHumanUserResponse =
        admin.call(ADD_HUMAN, human("watched", Some(&org_id), None)).await.expect("a user to read");
    for protocol in PROTOCOLS {
        let (machine_id, token) =
            add_machine_with_token(&admin, &format!("warden-{protocol:?}").to_lowercase(), &org_id).await;
        // An instance-wide role: a membership that touches no org.
        grant(&admin, &machine_id, None, "IAM_LOGIN_CLIENT").await;
        let on_second = Client::new(&second, protocol).with_token(&token);
        let read = || {
            let c = &on_second;
            let id = target.user_id.clone();
            async move { c.call::<_, user::GetUserByIdResponse>(GET_USER, user::GetUserByIdRequest { user_id: id }).await }
        };
        read().await.expect("the second server resolves the token and its role (and may remember both)");

        let instance = admin::ResourceType { resource: Some(admin::resource_type::Resource::Instance(true)) };
        let _: admin::DeleteAdministratorResponse = admin
            .call(
                DELETE_ADMIN,
                admin::DeleteAdministratorRequest { user_id: machine_id.clone(), resource: Some(instance) },
            )
            .await
            .expect("revoke the role on the first server");
        eventually(&format!("{protocol:?} role revoked"), within, read, |answer| {
            answer.as_ref().is_err_and(|failure| failure.code == Code::PermissionDenied)
        })
        .await;
        grant(&admin, &machine_id, None, "IAM_LOGIN_CLIENT").await;
        eventually(&format!("{protocol:?} role granted again"), within, read, |answer| answer.is_ok()).await;

        let pats: user::ListPersonalAccessTokensResponse = admin
            .call(LIST_PATS, user::ListPersonalAccessTokensRequest { user_id: machine_id.clone(), query: None })
            .await
            .expect("list pats");
        let token_id = pats.result.first().expect("the machine's token").id.clone();
        let _: user::RemovePersonalAccessTokenResponse = admin
            .call(REMOVE_PAT, user::RemovePersonalAccessTokenRequest { user_id: machine_id.clone(), token_id })
            .await
            .expect("remove the token on the first server");
        eventually(&format!("{protocol:?} token removed"), within, read, |answer| {
            answer.as_ref().is_err_and(|failure| failure.code == Code::Unauthenticated)
        })
        .await;
    }
}

#[tokio::test]
async fn org_owners_stay_in_their_org_and_instance_owners_switch_with_the_header() {
    let server = Server::start().await;
    let root = Client::new(&server, Protocol::Grpc).with_token(&server.admin_token());
    let org_a = add_org(&root, "Org A").await;
    let org_b = add_org(&root, "Org B").await;
    let (owner_a, owner_a_token) = add_machine_with_token(&root, "owner-a", &org_a).await;
    grant(&root, &owner_a, Some(&org_a), "ORG_OWNER").await;
    let b_user: user::AddHumanUserResponse =
        root.call(ADD_HUMAN, human("bob", Some(&org_b), None)).await.expect("user in B");
    let (_, plain_token) = add_machine_with_token(&root, "no-roles", &org_a).await;

    for protocol in PROTOCOLS {
        let a = Client::new(&server, protocol).with_token(&owner_a_token);
        // Own org works.
        let mine: user::AddHumanUserResponse = a
            .call(ADD_HUMAN, human(&format!("alice-{protocol:?}").to_lowercase(), None, None))
            .await
            .expect("create in own org");
        assert!(!mine.user_id.is_empty());
        // The other org: reading, changing, creating and switching by header are all refused.
        let read = a
            .call::<_, user::GetUserByIdResponse>(
                GET_USER,
                user::GetUserByIdRequest { user_id: b_user.user_id.clone() },
            )
            .await;
        assert_code(read, Code::PermissionDenied, 403, &format!("{protocol:?} read B's user"));
        let change =
            a.call::<_, user::LockUserResponse>(LOCK, user::LockUserRequest { user_id: b_user.user_id.clone() }).await;
        assert_code(change, Code::PermissionDenied, 403, &format!("{protocol:?} lock B's user"));
        let create = a.call::<_, user::AddHumanUserResponse>(ADD_HUMAN, human("mallory", Some(&org_b), None)).await;
        assert_code(create, Code::PermissionDenied, 403, &format!("{protocol:?} create in B"));
        let switched =
            a.in_org(&org_b).call::<_, user::ListUsersResponse>(LIST_USERS, user::ListUsersRequest::default()).await;
        assert_code(switched, Code::PermissionDenied, 403, &format!("{protocol:?} x-zitadel-orgid B"));
        let unknown = a
            .in_org("no-such-org")
            .call::<_, user::ListUsersResponse>(LIST_USERS, user::ListUsersRequest::default())
            .await;
        let unknown = assert_code(unknown, Code::PermissionDenied, 403, &format!("{protocol:?} unknown org"));
        assert!(
            !unknown.message.to_lowercase().contains("exist"),
            "no hint whether the org exists: {}",
            unknown.message
        );
        // Listing shows only org A's users.
        let list: user::ListUsersResponse = a.call(LIST_USERS, user::ListUsersRequest::default()).await.expect("list");
        assert!(list.result.iter().all(|u| u.user_id != b_user.user_id), "{protocol:?}: B's user leaked");

        // A machine user without roles administers nothing.
        let nobody = Client::new(&server, protocol).with_token(&plain_token);
        let res = nobody.call::<_, user::AddHumanUserResponse>(ADD_HUMAN, human("eve", None, None)).await;
        assert_code(res, Code::PermissionDenied, 403, &format!("{protocol:?} no roles"));

        // The instance owner switches organizations with the header.
        let root_p = Client::new(&server, protocol).with_token(&server.admin_token());
        let in_b: user::ListUsersResponse =
            root_p.in_org(&org_b).call(LIST_USERS, user::ListUsersRequest::default()).await.expect("switch");
        assert!(in_b.result.iter().any(|u| u.user_id == b_user.user_id), "{protocol:?}: instance owner sees B");
        let created: user::AddHumanUserResponse = root_p
            .in_org(&org_b)
            .call(ADD_HUMAN, human(&format!("carol-{protocol:?}").to_lowercase(), None, None))
            .await
            .expect("create via header");
        let got: user::GetUserByIdResponse =
            root_p.call(GET_USER, user::GetUserByIdRequest { user_id: created.user_id.clone() }).await.expect("get");
        assert_eq!(got.details.expect("details").resource_owner, org_b, "{protocol:?}: header chose the org");
    }
}

#[tokio::test]
async fn fifty_concurrent_creations_of_one_username_yield_one_user() {
    let server = Server::start().await;
    let token = server.admin_token();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let protocol = PROTOCOLS[i % 3];
        let server = &server;
        let token = token.clone();
        tasks.push(async move {
            let c = Client::new(server, protocol).with_token(&token);
            c.call::<_, user::AddMachineUserResponse>(
                ADD_MACHINE,
                user::AddMachineUserRequest {
                    user_id: None,
                    username: if i % 2 == 0 { "Twin".to_owned() } else { "twin".to_owned() },
                    organization: None,
                    name: "twin".to_owned(),
                    description: String::new(),
                },
            )
            .await
        });
    }
    let results = futures::future::join_all(tasks).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.into_iter().filter(Result::is_err) {
        assert_code(r, Code::AlreadyExists, 409, "duplicate username");
    }
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let server = Server::start().await;
    let token = server.admin_token();
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let long = "x".repeat(201);
        let cases: Vec<(&str, user::AddHumanUserRequest)> = vec![
            ("username", {
                let mut r = human("ok", None, None);
                r.username = Some(String::new());
                r
            }),
            ("username", human(&long, None, None)),
            ("email", {
                let mut r = human("mail", None, None);
                r.email.as_mut().expect("email").email = "not-an-email".into();
                r
            }),
            ("password", human("pw-long", None, Some(&"p".repeat(1025)))),
            ("password", human("pw-short", None, Some("short"))),
            ("profile.given_name", {
                let mut r = human("given", None, None);
                r.profile.as_mut().expect("p").given_name = String::new();
                r
            }),
        ];
        for (field, request) in cases {
            let res = c.call::<_, user::AddHumanUserResponse>(ADD_HUMAN, request).await;
            let failure = assert_code(res, Code::InvalidArgument, 400, &format!("{protocol:?} {field}"));
            assert!(failure.message.contains(field), "{protocol:?}: message {:?} should name {field}", failure.message);
        }
        let list: user::ListUsersResponse = c.call(LIST_USERS, user::ListUsersRequest::default()).await.expect("list");
        assert_eq!(list.result.len(), 1, "{protocol:?}: only the admin exists; nothing half-written");
    }
    // JSON-only mistakes: unknown enum values and wrong types.
    let http = server.http();
    for (body, field) in [
        (serde_json::json!({"queries": [{"stateQuery": {"state": "USER_STATE_SLEEPY"}}]}), "state"),
        (serde_json::json!({"query": {"limit": "many"}}), "limit"),
        (serde_json::json!({"query": {"asc": "yes"}}), "asc"),
    ] {
        let res = http.post(server.url("/v2/users")).bearer_auth(&token).json(&body).send().await.expect("send");
        assert_eq!(res.status(), 400, "{body}");
        let text = res.text().await.expect("text");
        assert!(text.contains(field), "{text} should name {field}");
    }
    let res = http
        .post(server.url("/v2/users"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"query": {"limit": 1001}}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn password_hashing_overload_fails_fast_while_reads_answer() {
    // One slow hashing worker and no queue: the second concurrent password operation must be refused.
    let server = Server::start_with(&[
        "--password-hash-workers",
        "1",
        "--password-hash-queue",
        "0",
        "--password-hash-memory-kib",
        "65536",
        "--password-hash-iterations",
        "6",
    ])
    .await;
    let token = server.admin_token();
    let c = Client::new(&server, Protocol::Grpc).with_token(&token);
    let list: user::ListUsersResponse = c.call(LIST_USERS, user::ListUsersRequest::default()).await.expect("list");
    let admin_id = list.result[0].user_id.clone();
    let mut creations = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        creations.push(async move {
            c.call::<_, user::AddHumanUserResponse>(
                ADD_HUMAN,
                human(&format!("busy{i}"), None, Some("a very good password")),
            )
            .await
        });
    }
    let reads = async {
        let mut answered = 0;
        for _ in 0..5 {
            let got: user::GetUserByIdResponse = c
                .call(GET_USER, user::GetUserByIdRequest { user_id: admin_id.clone() })
                .await
                .expect("read during overload");
            assert!(got.user.is_some());
            answered += 1;
        }
        answered
    };
    let (results, answered) = tokio::join!(futures::future::join_all(creations), reads);
    assert_eq!(answered, 5);
    let exhausted = results.iter().filter(|r| matches!(r, Err(f) if f.code == Code::ResourceExhausted)).count();
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert!(exhausted >= 1, "no call was shed: {results:?}");
    assert!(created >= 1, "nothing was created: {results:?}");
    assert_eq!(exhausted + created, 8, "{results:?}");
}

#[tokio::test]
async fn secrets_never_reach_the_database_or_the_logs() {
    let server = Server::start().await;
    let admin_token = server.admin_token();
    let c = Client::new(&server, Protocol::Json).with_token(&admin_token);
    let password = "Unmistakable-Passw0rd-42";
    let _: user::AddHumanUserResponse = c.call(ADD_HUMAN, human("secretive", None, Some(password))).await.expect("add");
    let (_, machine_token) = add_machine_with_token(&c, "bot", &{
        let list: org::ListOrganizationsResponse =
            c.call(LIST_ORGS, org::ListOrganizationsRequest::default()).await.expect("orgs");
        list.result[0].id.clone()
    })
    .await;
    let dump = server.database_dump().await;
    for secret in [password, admin_token.as_str(), machine_token.as_str()] {
        assert!(!dump.contains(secret), "a secret is stored in the clear");
    }
    assert!(dump.contains("$argon2id$"), "passwords are stored as argon2id");
    let logs = server.logs().await.join("\n");
    for secret in [password, admin_token.as_str(), machine_token.as_str()] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}

#[tokio::test]
async fn imported_bcrypt_hashes_verify() {
    let server = Server::start().await;
    let token = server.admin_token();
    // bcrypt of "legacy password 1" at cost 4, as another system would export it.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import crypt,sys; print(crypt.crypt('legacy password 1', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))",
        ])
        .output();
    let hash = match out {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("$2") => {
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        }
        // A fixed, well-known test vector when the platform's crypt lacks bcrypt.
        _ => "$2b$04$Ri6lIXpm4sDb.nxk/VRyUOOwuZjPiGIvHKVBMjyr1tPe73S63lnAW".to_owned(),
    };
    let plain = if hash.starts_with("$2b$04$Ri6lIXpm4sDb") { "password" } else { "legacy password 1" };
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let mut request = human(&format!("legacy-{protocol:?}").to_lowercase(), None, None);
        request.password_type =
            Some(user::add_human_user_request::PasswordType::HashedPassword(user::HashedPassword {
                hash: hash.clone(),
                change_required: false,
            }));
        let added: user::AddHumanUserResponse = c.call(ADD_HUMAN, request).await.expect("import bcrypt");
        // The imported hash verifies: changing the password with it as the current one succeeds.
        let _: user::SetPasswordResponse = c
            .call(
                SET_PASSWORD,
                user::SetPasswordRequest {
                    user_id: added.user_id.clone(),
                    new_password: Some(user::Password {
                        password: "a brand new password".into(),
                        change_required: false,
                    }),
                    verification: Some(user::set_password_request::Verification::CurrentPassword(plain.into())),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{protocol:?}: bcrypt verify: {e:?}"));
    }
    // Not a hash at all.
    let c = Client::new(&server, Protocol::Json).with_token(&token);
    let mut request = human("bogus-hash", None, None);
    request.password_type = Some(user::add_human_user_request::PasswordType::HashedPassword(user::HashedPassword {
        hash: "md5:5f4dcc3b5aa765d61d8327deb882cf99".into(),
        change_required: false,
    }));
    let failure = assert_code(
        c.call::<_, user::AddHumanUserResponse>(ADD_HUMAN, request).await,
        Code::InvalidArgument,
        400,
        "md5",
    );
    assert!(failure.message.contains("hashed_password"), "{}", failure.message);
}

#[tokio::test]
async fn admin_create_token_prints_a_working_token() {
    let server = Server::start().await;
    let admin = Client::new(&server, Protocol::Json).with_token(&server.admin_token());
    let orgs: org::ListOrganizationsResponse =
        admin.call(LIST_ORGS, org::ListOrganizationsRequest::default()).await.expect("orgs");
    let org_id = orgs.result[0].id.clone();
    let (machine_id, _) = add_machine_with_token(&admin, "ops-bot", &org_id).await;
    grant(&admin, &machine_id, None, "IAM_OWNER").await;
    // Operators run it next to the live server, on the same data directory and database.
    let out = server.run_cli(&["admin", "create-token", "--user", "ops-bot", "--expires-in", "30d"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let err = server.run_cli(&["admin", "create-token", "--user", "nobody-here"]).await;
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("not found"), "{}", String::from_utf8_lossy(&err.stderr));
    assert!(token.starts_with("fgp_"), "{token}");
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let me: user::GetUserByIdResponse =
            c.call(GET_USER, user::GetUserByIdRequest { user_id: machine_id.clone() }).await.expect("works");
        assert_eq!(me.user.expect("user").username, "ops-bot");
    }
}

#[tokio::test]
async fn a_refused_password_leaves_the_rest_of_an_update_unwritten() {
    let server = Server::start().await;
    let token = server.admin_token();
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let added: user::AddHumanUserResponse = c
            .call(ADD_HUMAN, human(&format!("atomic-{protocol:?}").to_lowercase(), None, Some(PASSWORD_FOR_UPDATE)))
            .await
            .expect("add");
        for (what, password, verification) in [
            ("too short", "short", None),
            (
                "wrong current password",
                "a perfectly fine new password",
                Some(user::set_password::Verification::CurrentPassword("not the current one".into())),
            ),
        ] {
            let res = c
                .call::<_, user::UpdateHumanUserResponse>(
                    UPDATE_HUMAN,
                    user::UpdateHumanUserRequest {
                        user_id: added.user_id.clone(),
                        profile: Some(user::SetHumanProfile {
                            given_name: "Changed".into(),
                            family_name: "Name".into(),
                            ..Default::default()
                        }),
                        password: Some(user::SetPassword {
                            password_type: Some(user::set_password::PasswordType::Password(user::Password {
                                password: password.into(),
                                change_required: false,
                            })),
                            verification,
                        }),
                        ..Default::default()
                    },
                )
                .await;
            let failure = assert_code(res, Code::InvalidArgument, 400, &format!("{protocol:?} {what}"));
            assert!(failure.message.contains("password"), "{protocol:?} {what}: {}", failure.message);
            let got: user::GetUserByIdResponse =
                c.call(GET_USER, user::GetUserByIdRequest { user_id: added.user_id.clone() }).await.expect("get");
            let Some(user::user::Type::Human(h)) = got.user.expect("user").r#type else { panic!("human") };
            assert_eq!(h.profile.expect("profile").given_name, "Ada", "{protocol:?} {what}: profile must be unchanged");
        }
    }
}

const PASSWORD_FOR_UPDATE: &str = "the first good password";
