//! Flow definitions (authentik's admin API): flows, stages, stage bindings, expression policies and policy
//! bindings over every protocol; the authentik wire shapes over raw HTTP; the published Python client.

use flowgate::pb::flowgate::flow::v1 as fpb;
use flowgate::pb::flowgate::org::v2 as org;
use flowgate::pb::flowgate::user::v2 as user;
use serde_json::{Value, json};
use tonic::Code;

use crate::client::{Client, Failure};
use crate::harness::{PROTOCOLS, Protocol, Server};

const LIST_FLOWS: &str = "/flowgate.flow.v1.FlowService/ListFlows";
const CREATE_FLOW: &str = "/flowgate.flow.v1.FlowService/CreateFlow";
const GET_FLOW: &str = "/flowgate.flow.v1.FlowService/GetFlow";
const UPDATE_FLOW: &str = "/flowgate.flow.v1.FlowService/UpdateFlow";
const PATCH_FLOW: &str = "/flowgate.flow.v1.FlowService/PatchFlow";
const DELETE_FLOW: &str = "/flowgate.flow.v1.FlowService/DeleteFlow";
const USED_BY: &str = "/flowgate.flow.v1.FlowService/FlowUsedBy";
const EXPORT: &str = "/flowgate.flow.v1.FlowService/ExportFlow";
const IMPORT: &str = "/flowgate.flow.v1.FlowService/ImportFlow";
const DIAGRAM: &str = "/flowgate.flow.v1.FlowService/DiagramFlow";
const CACHE_INFO: &str = "/flowgate.flow.v1.FlowService/CacheInfo";
const CACHE_CLEAR: &str = "/flowgate.flow.v1.FlowService/CacheClear";
const LIST_STAGES: &str = "/flowgate.flow.v1.StageService/ListStages";
const DELETE_STAGE: &str = "/flowgate.flow.v1.StageService/DeleteStage";
const CREATE_IDENTIFICATION: &str = "/flowgate.flow.v1.StageService/CreateIdentificationStage";
const PATCH_IDENTIFICATION: &str = "/flowgate.flow.v1.StageService/PatchIdentificationStage";
const GET_IDENTIFICATION: &str = "/flowgate.flow.v1.StageService/GetIdentificationStage";
const CREATE_PASSWORD: &str = "/flowgate.flow.v1.StageService/CreatePasswordStage";
const GET_PASSWORD: &str = "/flowgate.flow.v1.StageService/GetPasswordStage";
const UPDATE_PASSWORD: &str = "/flowgate.flow.v1.StageService/UpdatePasswordStage";
const LIST_PASSWORD: &str = "/flowgate.flow.v1.StageService/ListPasswordStages";
const CREATE_USER_LOGIN: &str = "/flowgate.flow.v1.StageService/CreateUserLoginStage";
const CREATE_PROMPT: &str = "/flowgate.flow.v1.StageService/CreatePromptStage";
const CREATE_REDIRECT: &str = "/flowgate.flow.v1.StageService/CreateRedirectStage";
const DELETE_REDIRECT: &str = "/flowgate.flow.v1.StageService/DeleteRedirectStage";
const CREATE_DUMMY: &str = "/flowgate.flow.v1.StageService/CreateDummyStage";
const LIST_BINDINGS: &str = "/flowgate.flow.v1.BindingService/ListBindings";
const CREATE_BINDING: &str = "/flowgate.flow.v1.BindingService/CreateBinding";
const GET_BINDING: &str = "/flowgate.flow.v1.BindingService/GetBinding";
const UPDATE_BINDING: &str = "/flowgate.flow.v1.BindingService/UpdateBinding";
const PATCH_BINDING: &str = "/flowgate.flow.v1.BindingService/PatchBinding";
const DELETE_BINDING: &str = "/flowgate.flow.v1.BindingService/DeleteBinding";
const CREATE_POLICY: &str = "/flowgate.flow.v1.PolicyService/CreateExpressionPolicy";
const GET_POLICY: &str = "/flowgate.flow.v1.PolicyService/GetExpressionPolicy";
const LIST_POLICIES: &str = "/flowgate.flow.v1.PolicyService/ListExpressionPolicies";
const PATCH_POLICY: &str = "/flowgate.flow.v1.PolicyService/PatchExpressionPolicy";
const DELETE_POLICY: &str = "/flowgate.flow.v1.PolicyService/DeleteExpressionPolicy";
const TEST_POLICY: &str = "/flowgate.flow.v1.PolicyService/TestPolicy";
const CREATE_POLICY_BINDING: &str = "/flowgate.flow.v1.PolicyService/CreatePolicyBinding";
const LIST_POLICY_BINDINGS: &str = "/flowgate.flow.v1.PolicyService/ListPolicyBindings";
const PATCH_POLICY_BINDING: &str = "/flowgate.flow.v1.PolicyService/PatchPolicyBinding";
const DELETE_POLICY_BINDING: &str = "/flowgate.flow.v1.PolicyService/DeletePolicyBinding";
const ADD_ORG: &str = "/flowgate.org.v2.OrganizationService/AddOrganization";
const ADD_MACHINE: &str = "/flowgate.user.v2.UserService/AddMachineUser";
const ADD_PAT: &str = "/flowgate.user.v2.UserService/AddPersonalAccessToken";

/// Every key of authentik's `Flow` schema.
const FLOW_KEYS: [&str; 18] = [
    "pk",
    "policybindingmodel_ptr_id",
    "name",
    "slug",
    "title",
    "designation",
    "background",
    "background_url",
    "background_themed_urls",
    "stages",
    "policies",
    "cache_count",
    "policy_engine_mode",
    "compatibility_mode",
    "export_url",
    "layout",
    "denied_action",
    "authentication",
];

fn expect_code<T: std::fmt::Debug>(result: Result<T, Failure>, code: Code, what: &str) -> Failure {
    let failure = result.expect_err(what);
    assert_eq!(failure.code, code, "{what}: {failure:?}");
    failure
}

/// For JSON, the DRF body names `field` with a message containing `needle`.
fn expect_field(failure: &Failure, field: &str, needle: &str) {
    if let Some(body) = &failure.body {
        let messages = body[field].as_array().unwrap_or_else(|| panic!("no `{field}` in {body}"));
        assert!(messages.iter().any(|m| m.as_str().is_some_and(|m| m.contains(needle))), "{field}: {body}");
    } else {
        assert!(failure.message.contains(needle) || failure.code == Code::InvalidArgument, "{failure:?}");
    }
}

fn tag(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Grpc => "grpc",
        Protocol::GrpcWeb => "web",
        Protocol::Json => "json",
    }
}

fn mask(paths: &[&str]) -> Option<pbjson_types::FieldMask> {
    Some(pbjson_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

fn flow_request(name: &str, slug: &str, designation: fpb::FlowDesignation) -> fpb::FlowRequest {
    fpb::FlowRequest {
        name: Some(name.to_owned()),
        slug: Some(slug.to_owned()),
        title: Some(format!("{name} title")),
        designation: designation.into(),
        ..Default::default()
    }
}

async fn create_flow(c: &Client<'_>, name: &str, slug: &str, designation: fpb::FlowDesignation) -> fpb::Flow {
    let res: fpb::CreateFlowResponse = c
        .call(CREATE_FLOW, fpb::CreateFlowRequest { flow: Some(flow_request(name, slug, designation)) })
        .await
        .unwrap_or_else(|e| panic!("create flow {slug}: {e:?}"));
    res.flow.expect("flow")
}

async fn get_flow(c: &Client<'_>, slug: &str) -> Result<fpb::Flow, Failure> {
    let res: fpb::GetFlowResponse = c.call(GET_FLOW, fpb::GetFlowRequest { slug: slug.to_owned() }).await?;
    Ok(res.flow.expect("flow"))
}

async fn list_flows(c: &Client<'_>, req: fpb::ListFlowsRequest) -> fpb::ListFlowsResponse {
    c.call(LIST_FLOWS, req).await.expect("list flows")
}

async fn password_stage(c: &Client<'_>, name: &str) -> fpb::PasswordStage {
    let res: fpb::CreatePasswordStageResponse = c
        .call(
            CREATE_PASSWORD,
            fpb::CreatePasswordStageRequest {
                stage: Some(fpb::PasswordStageRequest {
                    name: Some(name.to_owned()),
                    failed_attempts_before_cancel: Some(3),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("password stage {name}: {e:?}"));
    res.stage.expect("stage")
}

async fn dummy_stage(c: &Client<'_>, name: &str) -> fpb::DummyStage {
    let res: fpb::CreateDummyStageResponse = c
        .call(
            CREATE_DUMMY,
            fpb::CreateDummyStageRequest {
                stage: Some(fpb::DummyStageRequest { name: Some(name.to_owned()), throw_error: None }),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("dummy stage {name}: {e:?}"));
    res.stage.expect("stage")
}

async fn bind(c: &Client<'_>, target: &str, stage: &str, order: i32) -> Result<fpb::FlowStageBinding, Failure> {
    let res: fpb::CreateBindingResponse = c
        .call(
            CREATE_BINDING,
            fpb::CreateBindingRequest {
                binding: Some(fpb::FlowStageBindingRequest {
                    target: Some(target.to_owned()),
                    stage: Some(stage.to_owned()),
                    order: Some(order),
                    ..Default::default()
                }),
            },
        )
        .await?;
    Ok(res.binding.expect("binding"))
}

async fn policy(c: &Client<'_>, name: &str, expression: &str) -> Result<fpb::ExpressionPolicy, Failure> {
    let res: fpb::CreateExpressionPolicyResponse = c
        .call(
            CREATE_POLICY,
            fpb::CreateExpressionPolicyRequest {
                policy: Some(fpb::ExpressionPolicyRequest {
                    name: Some(name.to_owned()),
                    expression: Some(expression.to_owned()),
                    execution_logging: None,
                }),
            },
        )
        .await?;
    Ok(res.policy.expect("policy"))
}

async fn bind_policy(c: &Client<'_>, policy: &str, target: &str, order: i32) -> fpb::PolicyBinding {
    let res: fpb::CreatePolicyBindingResponse = c
        .call(
            CREATE_POLICY_BINDING,
            fpb::CreatePolicyBindingRequest {
                binding: Some(fpb::PolicyBindingRequest {
                    policy: Some(policy.to_owned()),
                    target: Some(target.to_owned()),
                    order: Some(order),
                    ..Default::default()
                }),
            },
        )
        .await
        .expect("bind policy");
    res.binding.expect("policy binding")
}

fn context(value: Value) -> Option<pbjson_types::Struct> {
    Some(serde_json::from_value(value).expect("struct"))
}

async fn test_policy(c: &Client<'_>, id: &str, ctx: Value) -> fpb::TestPolicyResponse {
    c.call(TEST_POLICY, fpb::TestPolicyRequest { policy_uuid: id.to_owned(), user: None, context: context(ctx) })
        .await
        .expect("test policy")
}

#[tokio::test]
async fn flows_crud_list_filters_and_paging_over_every_protocol() {
    let server = Server::start().await;
    let token = server.admin_token();
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let t = tag(protocol);
        let login = create_flow(&c, "Login", &format!("{t}-login"), fpb::FlowDesignation::Authentication).await;
        assert_ne!(login.pk, login.policybindingmodel_ptr_id);
        assert_eq!(login.layout, i32::from(fpb::FlowLayout::Stacked));
        assert_eq!(login.denied_action, i32::from(fpb::DeniedAction::MessageContinue));
        assert_eq!(login.authentication, i32::from(fpb::FlowAuthentication::None));
        assert_eq!(login.policy_engine_mode, i32::from(fpb::PolicyEngineMode::Any));
        assert_eq!(login.export_url, format!("/api/v3/flows/instances/{t}-login/export/"));
        assert_eq!(login.background, None);
        assert_eq!(login.background_url, "/static/dist/assets/images/flow_background.jpg");
        for (name, designation) in [
            ("Recover", fpb::FlowDesignation::Recovery),
            ("Enrol", fpb::FlowDesignation::Enrollment),
            ("Login again", fpb::FlowDesignation::Authentication),
        ] {
            create_flow(&c, name, &format!("{t}-{}", name.to_lowercase().replace(' ', "-")), designation).await;
        }
        assert_eq!(get_flow(&c, &format!("{t}-login")).await.expect("get"), login);

        // Exact filters, search, ordering.
        let auth = list_flows(
            &c,
            fpb::ListFlowsRequest {
                designation: fpb::FlowDesignation::Authentication.into(),
                search: t.to_owned(),
                ordering: "-slug".into(),
                ..Default::default()
            },
        )
        .await;
        let slugs: Vec<&str> = auth.results.iter().map(|f| f.slug.as_str()).collect();
        assert_eq!(slugs, vec![format!("{t}-login-again"), format!("{t}-login")], "{protocol:?}");
        assert_eq!(auth.autocomplete, Some(pbjson_types::Struct::default()));
        let by_slug =
            list_flows(&c, fpb::ListFlowsRequest { slug: format!("{t}-recover"), ..Default::default() }).await;
        assert_eq!(by_slug.results.len(), 1);
        assert_eq!(by_slug.results[0].designation, i32::from(fpb::FlowDesignation::Recovery));
        let bad = c
            .call::<_, fpb::ListFlowsResponse>(
                LIST_FLOWS,
                fpb::ListFlowsRequest { ordering: "bogus".into(), ..Default::default() },
            )
            .await;
        expect_field(&expect_code(bad, Code::InvalidArgument, "bad ordering"), "ordering", "bogus");

        // Paging: 4 of this protocol's flows, 3 per page.
        let page = |n: i32| fpb::ListFlowsRequest {
            search: format!("{t}-"),
            ordering: "slug".into(),
            page: n,
            page_size: 3,
            ..Default::default()
        };
        let first = list_flows(&c, page(1)).await;
        let p = first.pagination.expect("pagination");
        assert_eq!(
            (p.count, p.current, p.next, p.previous, p.total_pages, p.start_index, p.end_index),
            (4, 1, 2, 0, 2, 1, 3),
            "{protocol:?}"
        );
        let second = list_flows(&c, page(2)).await;
        let p = second.pagination.expect("pagination");
        assert_eq!(
            (p.count, p.current, p.next, p.previous, p.total_pages, p.start_index, p.end_index),
            (4, 2, 0, 1, 2, 4, 4)
        );
        assert_eq!(second.results.len(), 1);

        // PUT replaces every writable field; omitted optional fields return to their defaults.
        let put: fpb::UpdateFlowResponse = c
            .call(
                UPDATE_FLOW,
                fpb::UpdateFlowRequest {
                    slug: format!("{t}-login"),
                    flow: Some(fpb::FlowRequest {
                        layout: fpb::FlowLayout::ContentRight.into(),
                        background: Some("https://img.example.com/bg.png".into()),
                        compatibility_mode: Some(true),
                        ..flow_request("Login v2", &format!("{t}-login"), fpb::FlowDesignation::Authorization)
                    }),
                },
            )
            .await
            .expect("put");
        let put = put.flow.expect("flow");
        assert_eq!(
            (put.name.as_str(), put.designation, put.layout, put.compatibility_mode),
            (
                "Login v2",
                i32::from(fpb::FlowDesignation::Authorization),
                i32::from(fpb::FlowLayout::ContentRight),
                true
            )
        );
        assert_eq!(put.background_url, "https://img.example.com/bg.png");
        assert_eq!(put.pk, login.pk);

        // PATCH changes the masked fields only (over JSON the gateway derives the mask from the body).
        let patched: fpb::PatchFlowResponse = c
            .call(
                PATCH_FLOW,
                fpb::PatchFlowRequest {
                    slug: format!("{t}-login"),
                    flow: Some(fpb::FlowRequest {
                        title: Some("Welcome back".into()),
                        denied_action: fpb::DeniedAction::Continue.into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["title", "denied_action"]),
                },
            )
            .await
            .expect("patch");
        let patched = patched.flow.expect("flow");
        assert_eq!(patched.title, "Welcome back");
        assert_eq!(patched.denied_action, i32::from(fpb::DeniedAction::Continue));
        assert_eq!(
            fpb::Flow { title: put.title.clone(), denied_action: put.denied_action, ..patched.clone() },
            put,
            "{protocol:?}: PATCH changed a field it did not name"
        );

        // Changing the slug moves the resource.
        let moved: fpb::PatchFlowResponse = c
            .call(
                PATCH_FLOW,
                fpb::PatchFlowRequest {
                    slug: format!("{t}-login"),
                    flow: Some(fpb::FlowRequest { slug: Some(format!("{t}-signin")), ..Default::default() }),
                    update_mask: mask(&["slug"]),
                },
            )
            .await
            .expect("move");
        assert_eq!(moved.flow.expect("flow").export_url, format!("/api/v3/flows/instances/{t}-signin/export/"));
        expect_code(get_flow(&c, &format!("{t}-login")).await, Code::NotFound, "old slug");

        let _: fpb::DeleteFlowResponse =
            c.call(DELETE_FLOW, fpb::DeleteFlowRequest { slug: format!("{t}-signin") }).await.expect("delete");
        expect_code(get_flow(&c, &format!("{t}-signin")).await, Code::NotFound, "deleted flow");
        let again =
            c.call::<_, fpb::DeleteFlowResponse>(DELETE_FLOW, fpb::DeleteFlowRequest { slug: format!("{t}-signin") });
        expect_code(again.await, Code::NotFound, "delete twice");

        // Bad input names the field.
        let dup = c
            .call::<_, fpb::CreateFlowResponse>(
                CREATE_FLOW,
                fpb::CreateFlowRequest {
                    flow: Some(flow_request("Dup", &format!("{t}-recover"), fpb::FlowDesignation::Recovery)),
                },
            )
            .await;
        expect_field(&expect_code(dup, Code::InvalidArgument, "duplicate"), "slug", "already exists");
        let missing = c
            .call::<_, fpb::CreateFlowResponse>(
                CREATE_FLOW,
                fpb::CreateFlowRequest {
                    flow: Some(flow_request("No designation", &format!("{t}-x"), fpb::FlowDesignation::Unspecified)),
                },
            )
            .await;
        expect_field(&expect_code(missing, Code::InvalidArgument, "no designation"), "designation", "required");
    }
}

#[tokio::test]
async fn unknown_enum_numbers_over_grpc_name_the_field() {
    let server = Server::start().await;
    let token = server.admin_token();
    for protocol in [Protocol::Grpc, Protocol::GrpcWeb] {
        let c = Client::new(&server, protocol).with_token(&token);
        let res = c
            .call::<_, fpb::CreateFlowResponse>(
                CREATE_FLOW,
                fpb::CreateFlowRequest {
                    flow: Some(fpb::FlowRequest {
                        designation: 42,
                        ..flow_request("Odd", "odd", fpb::FlowDesignation::Unspecified)
                    }),
                },
            )
            .await;
        let failure = expect_code(res, Code::InvalidArgument, "designation 42");
        assert!(failure.message.contains("REQUEST-invalid"), "{failure:?}");
    }
    // The wire test above cannot see the field name over gRPC without decoding details; decode them.
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(fpb::CreateFlowRequest {
        flow: Some(fpb::FlowRequest { layout: 99, ..flow_request("Odd", "odd", fpb::FlowDesignation::Recovery) }),
    });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    let codec = tonic_prost::ProstCodec::<fpb::CreateFlowRequest, fpb::CreateFlowResponse>::default();
    let status =
        grpc.unary(request, http::uri::PathAndQuery::from_static(CREATE_FLOW), codec).await.expect_err("layout 99");
    use tonic_types::StatusExt as _;
    let details = status.get_error_details();
    let violations = details.bad_request().map(|b| b.field_violations.clone()).unwrap_or_default();
    assert_eq!(violations.len(), 1, "{status:?}");
    assert_eq!(violations[0].field, "layout");
    assert_eq!(violations[0].description, "\"99\" is not a valid choice.");
}

#[tokio::test]
async fn stages_of_several_types_over_every_protocol() {
    let server = Server::start().await;
    let token = server.admin_token();
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let t = tag(protocol);
        let enrol = create_flow(&c, "Enrol", &format!("{t}-enrol"), fpb::FlowDesignation::Enrollment).await;

        let password = password_stage(&c, &format!("{t} password")).await;
        assert_eq!(password.component, "ak-stage-password");
        assert_eq!(password.meta_model_name, "authentik_stages_password.passwordstage");
        assert_eq!(password.verbose_name, "Password Stage");
        assert_eq!(password.failed_attempts_before_cancel, 3);
        assert_eq!(password.backends, vec!["flowgate.core.password".to_owned()]);
        assert_eq!(password.configure_flow, None);

        let ident: fpb::CreateIdentificationStageResponse = c
            .call(
                CREATE_IDENTIFICATION,
                fpb::CreateIdentificationStageRequest {
                    stage: Some(fpb::IdentificationStageRequest {
                        name: Some(format!("{t} identify")),
                        user_fields: vec![fpb::UserField::Email.into()],
                        password_stage: Some(password.pk.clone()),
                        enrollment_flow: Some(enrol.pk.clone()),
                        ..Default::default()
                    }),
                },
            )
            .await
            .expect("identification");
        let ident = ident.stage.expect("stage");
        assert_eq!(ident.component, "ak-stage-identification");
        assert_eq!(ident.user_fields, vec![i32::from(fpb::UserField::Email)]);
        assert_eq!(ident.password_stage.as_deref(), Some(password.pk.as_str()));
        assert!(ident.case_insensitive_matching && ident.pretend_user_exists && ident.show_matched_user);

        // A password stage link must point at a password stage.
        let dummy = dummy_stage(&c, &format!("{t} dummy")).await;
        let wrong = c
            .call::<_, fpb::CreateIdentificationStageResponse>(
                CREATE_IDENTIFICATION,
                fpb::CreateIdentificationStageRequest {
                    stage: Some(fpb::IdentificationStageRequest {
                        name: Some(format!("{t} identify 2")),
                        password_stage: Some(dummy.pk.clone()),
                        ..Default::default()
                    }),
                },
            )
            .await;
        expect_field(&expect_code(wrong, Code::InvalidArgument, "dummy as password"), "password_stage", "Invalid pk");

        let login: fpb::CreateUserLoginStageResponse = c
            .call(
                CREATE_USER_LOGIN,
                fpb::CreateUserLoginStageRequest {
                    stage: Some(fpb::UserLoginStageRequest {
                        name: Some(format!("{t} login")),
                        session_duration: Some("hours=8".into()),
                        ..Default::default()
                    }),
                },
            )
            .await
            .expect("user login");
        let login = login.stage.expect("stage");
        assert_eq!((login.component.as_str(), login.session_duration.as_str()), ("ak-stage-user-login", "hours=8"));
        assert_eq!(login.remember_me_offset, "seconds=0");
        let bad_duration = c
            .call::<_, fpb::CreateUserLoginStageResponse>(
                CREATE_USER_LOGIN,
                fpb::CreateUserLoginStageRequest {
                    stage: Some(fpb::UserLoginStageRequest {
                        name: Some(format!("{t} login 2")),
                        session_duration: Some("fortnights=2".into()),
                        ..Default::default()
                    }),
                },
            )
            .await;
        expect_code(bad_duration, Code::InvalidArgument, "bad duration");

        let prompt: fpb::CreatePromptStageResponse = c
            .call(
                CREATE_PROMPT,
                fpb::CreatePromptStageRequest {
                    stage: Some(fpb::PromptStageRequest {
                        name: Some(format!("{t} prompt")),
                        fields: vec![
                            fpb::PromptField {
                                field_key: "email".into(),
                                label: "E-mail".into(),
                                r#type: "email".into(),
                                required: true,
                                order: 1,
                                ..Default::default()
                            },
                            fpb::PromptField {
                                field_key: "colour".into(),
                                label: "Colour".into(),
                                r#type: "radio-button-group".into(),
                                order: 2,
                                ..Default::default()
                            },
                        ],
                        validation_policies: vec![],
                    }),
                },
            )
            .await
            .expect("prompt");
        let prompt = prompt.stage.expect("stage");
        let keys: Vec<(&str, &str)> = prompt.fields.iter().map(|f| (f.field_key.as_str(), f.r#type.as_str())).collect();
        assert_eq!(keys, vec![("email", "email"), ("colour", "radio-button-group")]);
        let bad_prompt = c
            .call::<_, fpb::CreatePromptStageResponse>(
                CREATE_PROMPT,
                fpb::CreatePromptStageRequest {
                    stage: Some(fpb::PromptStageRequest {
                        name: Some(format!("{t} prompt 2")),
                        fields: vec![fpb::PromptField {
                            field_key: "Bad Key".into(),
                            r#type: "text".into(),
                            ..Default::default()
                        }],
                        validation_policies: vec![],
                    }),
                },
            )
            .await;
        expect_field(&expect_code(bad_prompt, Code::InvalidArgument, "bad key"), "fields[0].field_key", "field key");

        let redirect: fpb::CreateRedirectStageResponse = c
            .call(
                CREATE_REDIRECT,
                fpb::CreateRedirectStageRequest {
                    stage: Some(fpb::RedirectStageRequest {
                        name: Some(format!("{t} redirect")),
                        mode: fpb::RedirectMode::Flow.into(),
                        target_flow: Some(enrol.pk.clone()),
                        ..Default::default()
                    }),
                },
            )
            .await
            .expect("redirect");
        let redirect = redirect.stage.expect("stage");
        assert_eq!(redirect.mode, i32::from(fpb::RedirectMode::Flow));
        assert!(redirect.keep_context);
        let no_target = c
            .call::<_, fpb::CreateRedirectStageResponse>(
                CREATE_REDIRECT,
                fpb::CreateRedirectStageRequest {
                    stage: Some(fpb::RedirectStageRequest {
                        name: Some(format!("{t} redirect 2")),
                        ..Default::default()
                    }),
                },
            )
            .await;
        expect_field(&expect_code(no_target, Code::InvalidArgument, "static without url"), "target_static", "URL");

        // Patch: only the masked fields change; an unset nullable masked field is cleared.
        let patched: fpb::PatchIdentificationStageResponse = c
            .call(
                PATCH_IDENTIFICATION,
                fpb::PatchIdentificationStageRequest {
                    stage_uuid: ident.pk.clone(),
                    stage: Some(fpb::IdentificationStageRequest {
                        user_fields: vec![fpb::UserField::Username.into(), fpb::UserField::Upn.into()],
                        show_source_labels: Some(true),
                        ..Default::default()
                    }),
                    update_mask: mask(&["user_fields", "show_source_labels"]),
                },
            )
            .await
            .expect("patch identification");
        let patched = patched.stage.expect("stage");
        assert_eq!(patched.user_fields, vec![i32::from(fpb::UserField::Username), i32::from(fpb::UserField::Upn)]);
        assert!(patched.show_source_labels);
        assert_eq!(patched.password_stage, ident.password_stage);
        assert_eq!(patched.enrollment_flow, ident.enrollment_flow);

        // PUT on a password stage: unsent fields take their defaults again.
        let put: fpb::UpdatePasswordStageResponse = c
            .call(
                UPDATE_PASSWORD,
                fpb::UpdatePasswordStageRequest {
                    stage_uuid: password.pk.clone(),
                    stage: Some(fpb::PasswordStageRequest {
                        name: Some(format!("{t} password v2")),
                        allow_show_password: Some(true),
                        ..Default::default()
                    }),
                },
            )
            .await
            .expect("put password");
        let put = put.stage.expect("stage");
        assert_eq!((put.failed_attempts_before_cancel, put.allow_show_password), (5, true));

        // A stage is not found under another type's path.
        let typed = c
            .call::<_, fpb::GetPasswordStageResponse>(
                GET_PASSWORD,
                fpb::GetPasswordStageRequest { stage_uuid: ident.pk.clone() },
            )
            .await;
        expect_code(typed, Code::NotFound, "identification under password");
        let listed: fpb::ListPasswordStagesResponse = c
            .call(LIST_PASSWORD, fpb::ListPasswordStagesRequest { search: t.into(), ..Default::default() })
            .await
            .expect("list password");
        assert_eq!(listed.results.iter().map(|s| s.pk.as_str()).collect::<Vec<_>>(), vec![password.pk.as_str()]);

        // The generic list shows every type with its component.
        let all: fpb::ListStagesResponse = c
            .call(LIST_STAGES, fpb::ListStagesRequest { search: format!("{t} "), ..Default::default() })
            .await
            .expect("list all");
        let mut components: Vec<&str> = all.results.iter().map(|s| s.component.as_str()).collect();
        components.sort_unstable();
        assert_eq!(
            components,
            vec![
                "ak-stage-dummy",
                "ak-stage-identification",
                "ak-stage-password",
                "ak-stage-prompt",
                "ak-stage-redirect",
                "ak-stage-user-login"
            ],
            "{protocol:?}"
        );
        assert_eq!(all.pagination.expect("pagination").count, 6);

        // Deleting the password stage clears the identification stage's link to it.
        let _: fpb::DeleteStageResponse = c
            .call(DELETE_STAGE, fpb::DeleteStageRequest { stage_uuid: password.pk.clone() })
            .await
            .expect("delete via all");
        let ident_now: fpb::GetIdentificationStageResponse = c
            .call(GET_IDENTIFICATION, fpb::GetIdentificationStageRequest { stage_uuid: ident.pk.clone() })
            .await
            .expect("get identification");
        assert_eq!(ident_now.stage.expect("stage").password_stage, None);
        let _: fpb::DeleteRedirectStageResponse = c
            .call(DELETE_REDIRECT, fpb::DeleteRedirectStageRequest { stage_uuid: redirect.pk.clone() })
            .await
            .expect("delete typed");
        let gone = c
            .call::<_, fpb::DeleteStageResponse>(
                DELETE_STAGE,
                fpb::DeleteStageRequest { stage_uuid: redirect.pk.clone() },
            )
            .await;
        expect_code(gone, Code::NotFound, "deleted stage");
    }
}

async fn add_org(c: &Client<'_>, name: &str) -> String {
    let res: org::AddOrganizationResponse = c
        .call(ADD_ORG, org::AddOrganizationRequest { name: name.to_owned(), ..Default::default() })
        .await
        .expect("add org");
    res.organization_id
}

#[tokio::test]
async fn bindings_crud_filters_uniqueness_and_org_isolation() {
    let server = Server::start().await;
    let token = server.admin_token();
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let t = tag(protocol);
        let flow = create_flow(&c, "Login", &format!("{t}-login"), fpb::FlowDesignation::Authentication).await;
        let other = create_flow(&c, "Other", &format!("{t}-other"), fpb::FlowDesignation::Authentication).await;
        let first = dummy_stage(&c, &format!("{t} first")).await;
        let second = dummy_stage(&c, &format!("{t} second")).await;

        let b10 = bind(&c, &flow.pk, &first.pk, 10).await.expect("bind 10");
        assert_ne!(b10.pk, b10.policybindingmodel_ptr_id);
        assert!(!b10.evaluate_on_plan && b10.re_evaluate_policies);
        assert_eq!(b10.invalid_response_action, i32::from(fpb::InvalidResponseAction::Retry));
        let stage_obj = b10.stage_obj.clone().expect("stage_obj");
        assert_eq!((stage_obj.pk.as_str(), stage_obj.component.as_str()), (first.pk.as_str(), "ak-stage-dummy"));
        assert_eq!(stage_obj.flow_set.iter().map(|f| f.slug.as_str()).collect::<Vec<_>>(), vec![flow.slug.as_str()]);
        let b20 = bind(&c, &flow.pk, &second.pk, 20).await.expect("bind 20");
        bind(&c, &other.pk, &first.pk, 10).await.expect("bind other");

        let dup = bind(&c, &flow.pk, &first.pk, 10).await;
        expect_field(&expect_code(dup, Code::InvalidArgument, "duplicate binding"), "non_field_errors", "unique set");

        // The flow lists its stages by order.
        let got = get_flow(&c, &flow.slug).await.expect("flow");
        assert_eq!(got.stages, vec![first.pk.clone(), second.pk.clone()]);

        let list = |req: fpb::ListBindingsRequest| {
            let c = c.clone();
            async move {
                let res: fpb::ListBindingsResponse = c.call(LIST_BINDINGS, req).await.expect("list bindings");
                res.results.into_iter().map(|b| b.pk).collect::<Vec<_>>()
            }
        };
        assert_eq!(
            list(fpb::ListBindingsRequest { target: flow.pk.clone(), ..Default::default() }).await,
            vec![b10.pk.clone(), b20.pk.clone()]
        );
        assert_eq!(
            list(fpb::ListBindingsRequest { target: flow.pk.clone(), order: Some(20), ..Default::default() }).await,
            vec![b20.pk.clone()]
        );
        assert_eq!(list(fpb::ListBindingsRequest { stage: first.pk.clone(), ..Default::default() }).await.len(), 2);
        assert_eq!(
            list(fpb::ListBindingsRequest {
                target: flow.pk.clone(),
                search: format!("{t} second"),
                ..Default::default()
            })
            .await,
            vec![b20.pk.clone()]
        );
        assert_eq!(
            list(fpb::ListBindingsRequest { target: flow.pk.clone(), ordering: "-order".into(), ..Default::default() })
                .await,
            vec![b20.pk.clone(), b10.pk.clone()]
        );

        let patched: fpb::PatchBindingResponse = c
            .call(
                PATCH_BINDING,
                fpb::PatchBindingRequest {
                    fsb_uuid: b20.pk.clone(),
                    binding: Some(fpb::FlowStageBindingRequest {
                        order: Some(5),
                        invalid_response_action: fpb::InvalidResponseAction::RestartWithContext.into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["order", "invalid_response_action"]),
                },
            )
            .await
            .expect("patch binding");
        let patched = patched.binding.expect("binding");
        assert_eq!(patched.order, 5);
        assert_eq!(patched.invalid_response_action, i32::from(fpb::InvalidResponseAction::RestartWithContext));
        assert_eq!((patched.target.as_str(), patched.stage.as_str()), (flow.pk.as_str(), second.pk.as_str()));
        assert_eq!(get_flow(&c, &flow.slug).await.expect("flow").stages, vec![second.pk.clone(), first.pk.clone()]);

        let put: fpb::UpdateBindingResponse = c
            .call(
                UPDATE_BINDING,
                fpb::UpdateBindingRequest {
                    fsb_uuid: b20.pk.clone(),
                    binding: Some(fpb::FlowStageBindingRequest {
                        target: Some(flow.pk.clone()),
                        stage: Some(second.pk.clone()),
                        order: Some(30),
                        evaluate_on_plan: Some(true),
                        ..Default::default()
                    }),
                },
            )
            .await
            .expect("put binding");
        let put = put.binding.expect("binding");
        assert_eq!((put.order, put.evaluate_on_plan), (30, true));
        assert_eq!(put.invalid_response_action, i32::from(fpb::InvalidResponseAction::Retry));

        // A stage of another organization does not exist here.
        let org_b = add_org(&c, &format!("{t} Org B")).await;
        let in_b = c.in_org(&org_b);
        let foreign = dummy_stage(&in_b, &format!("{t} foreign")).await;
        let cross = bind(&c, &flow.pk, &foreign.pk, 40).await;
        let failure = expect_code(cross, Code::InvalidArgument, "stage of another org");
        expect_field(&failure, "stage", "object does not exist");
        let hidden = c
            .call::<_, fpb::GetBindingResponse>(GET_BINDING, fpb::GetBindingRequest { fsb_uuid: b10.pk.clone() })
            .await
            .expect("own binding");
        assert_eq!(hidden.binding.expect("binding").pk, b10.pk);
        let from_b = in_b
            .call::<_, fpb::GetBindingResponse>(GET_BINDING, fpb::GetBindingRequest { fsb_uuid: b10.pk.clone() })
            .await;
        expect_code(from_b, Code::NotFound, "binding of org A seen from B");
        expect_code(get_flow(&in_b, &flow.slug).await, Code::NotFound, "flow of org A from B");

        let _: fpb::DeleteBindingResponse = c
            .call(DELETE_BINDING, fpb::DeleteBindingRequest { fsb_uuid: b10.pk.clone() })
            .await
            .expect("delete binding");
        let gone =
            c.call::<_, fpb::GetBindingResponse>(GET_BINDING, fpb::GetBindingRequest { fsb_uuid: b10.pk.clone() });
        expect_code(gone.await, Code::NotFound, "deleted binding");
        assert_eq!(get_flow(&c, &flow.slug).await.expect("flow").stages, vec![second.pk.clone()]);
    }
}

#[tokio::test]
async fn expression_policies_test_endpoint_and_policy_bindings() {
    let server = Server::start().await;
    let token = server.admin_token();
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let t = tag(protocol);
        let p = policy(&c, &format!("{t} is admin"), "context.role == 'admin'").await.expect("policy");
        assert_eq!(p.component, "ak-policy-expression");
        assert_eq!(p.bound_to, 0);
        assert!(!p.execution_logging);

        let broken = policy(&c, &format!("{t} broken"), "context.role ==").await;
        let failure = expect_code(broken, Code::InvalidArgument, "uncompilable");
        expect_field(&failure, "expression", "");
        if let Some(body) = &failure.body {
            let message = body["expression"][0].as_str().unwrap_or_default();
            assert!(!message.is_empty() && message != "This field is required.", "{body}");
        }
        let dup = policy(&c, &format!("{t} is admin"), "true").await;
        expect_code(dup, Code::InvalidArgument, "duplicate policy name");

        assert!(test_policy(&c, &p.pk, json!({"role": "admin"})).await.passing);
        let denied = test_policy(&c, &p.pk, json!({"role": "guest"})).await;
        assert!(!denied.passing);
        // A non-boolean result fails closed with a message.
        let number = policy(&c, &format!("{t} number"), "1 + 1").await.expect("number policy");
        let result = test_policy(&c, &number.pk, json!({})).await;
        assert!(!result.passing && !result.messages.is_empty(), "{result:?}");

        let patched: fpb::PatchExpressionPolicyResponse = c
            .call(
                PATCH_POLICY,
                fpb::PatchExpressionPolicyRequest {
                    policy_uuid: p.pk.clone(),
                    policy: Some(fpb::ExpressionPolicyRequest {
                        expression: Some("context.role in ['admin', 'owner']".into()),
                        ..Default::default()
                    }),
                    update_mask: mask(&["expression"]),
                },
            )
            .await
            .expect("patch policy");
        let patched = patched.policy.expect("policy");
        assert_eq!(patched.name, p.name);
        assert!(test_policy(&c, &p.pk, json!({"role": "owner"})).await.passing);

        // Bindings on a flow and on a stage binding.
        let flow = create_flow(&c, "Gated", &format!("{t}-gated"), fpb::FlowDesignation::Authentication).await;
        let stage = dummy_stage(&c, &format!("{t} gated stage")).await;
        let fsb = bind(&c, &flow.pk, &stage.pk, 10).await.expect("binding");
        let on_flow = bind_policy(&c, &p.pk, &flow.policybindingmodel_ptr_id, 0).await;
        assert_eq!((on_flow.timeout, on_flow.enabled, on_flow.negate), (30, true, false));
        assert_eq!(on_flow.policy_obj.as_ref().map(|o| o.pk.as_str()), Some(p.pk.as_str()));
        let on_binding = bind_policy(&c, &number.pk, &fsb.policybindingmodel_ptr_id, 0).await;
        assert_eq!(get_flow(&c, &flow.slug).await.expect("flow").policies, vec![p.pk.clone()]);
        let got: fpb::GetExpressionPolicyResponse = c
            .call(GET_POLICY, fpb::GetExpressionPolicyRequest { policy_uuid: p.pk.clone() })
            .await
            .expect("get policy");
        assert_eq!(got.policy.expect("policy").bound_to, 1);

        let listed: fpb::ListPolicyBindingsResponse = c
            .call(
                LIST_POLICY_BINDINGS,
                fpb::ListPolicyBindingsRequest { target: fsb.policybindingmodel_ptr_id.clone(), ..Default::default() },
            )
            .await
            .expect("list policy bindings");
        assert_eq!(listed.results.iter().map(|b| b.pk.as_str()).collect::<Vec<_>>(), vec![on_binding.pk.as_str()]);

        let patched: fpb::PatchPolicyBindingResponse = c
            .call(
                PATCH_POLICY_BINDING,
                fpb::PatchPolicyBindingRequest {
                    policy_binding_uuid: on_flow.pk.clone(),
                    binding: Some(fpb::PolicyBindingRequest {
                        negate: Some(true),
                        timeout: Some(5),
                        ..Default::default()
                    }),
                    update_mask: mask(&["negate", "timeout"]),
                },
            )
            .await
            .expect("patch policy binding");
        let patched = patched.binding.expect("binding");
        assert_eq!((patched.negate, patched.timeout, patched.order), (true, 5, 0));
        let too_long = c
            .call::<_, fpb::PatchPolicyBindingResponse>(
                PATCH_POLICY_BINDING,
                fpb::PatchPolicyBindingRequest {
                    policy_binding_uuid: on_flow.pk.clone(),
                    binding: Some(fpb::PolicyBindingRequest { timeout: Some(301), ..Default::default() }),
                    update_mask: mask(&["timeout"]),
                },
            )
            .await;
        expect_field(&expect_code(too_long, Code::InvalidArgument, "timeout 301"), "timeout", "300");
        let bad_target = c
            .call::<_, fpb::CreatePolicyBindingResponse>(
                CREATE_POLICY_BINDING,
                fpb::CreatePolicyBindingRequest {
                    binding: Some(fpb::PolicyBindingRequest {
                        policy: Some(p.pk.clone()),
                        target: Some(flow.pk.clone()),
                        order: Some(1),
                        ..Default::default()
                    }),
                },
            )
            .await;
        expect_field(&expect_code(bad_target, Code::InvalidArgument, "flow pk as target"), "target", "Invalid pk");

        let _: fpb::DeletePolicyBindingResponse = c
            .call(DELETE_POLICY_BINDING, fpb::DeletePolicyBindingRequest { policy_binding_uuid: on_flow.pk.clone() })
            .await
            .expect("delete policy binding");
        assert!(get_flow(&c, &flow.slug).await.expect("flow").policies.is_empty());

        // Deleting a policy removes its bindings.
        let _: fpb::DeleteExpressionPolicyResponse = c
            .call(DELETE_POLICY, fpb::DeleteExpressionPolicyRequest { policy_uuid: number.pk.clone() })
            .await
            .expect("delete policy");
        let listed: fpb::ListPolicyBindingsResponse = c
            .call(
                LIST_POLICY_BINDINGS,
                fpb::ListPolicyBindingsRequest { target: fsb.policybindingmodel_ptr_id.clone(), ..Default::default() },
            )
            .await
            .expect("list policy bindings");
        assert!(listed.results.is_empty());
        let all: fpb::ListExpressionPoliciesResponse = c
            .call(LIST_POLICIES, fpb::ListExpressionPoliciesRequest { search: format!("{t} "), ..Default::default() })
            .await
            .expect("list policies");
        assert_eq!(all.results.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec![p.name.as_str()]);
    }
}

#[tokio::test]
async fn a_runaway_expression_fails_closed_and_the_call_returns() {
    let server = Server::start().await;
    let token = server.admin_token();
    // One protocol only: the evaluation thread keeps a core busy until the server stops, and the timeout is
    // the evaluator's, which every protocol reaches through the same method.
    let c = Client::new(&server, Protocol::Json).with_token(&token);
    let runaway = policy(&c, "runaway", "context.xs.all(a, context.xs.all(b, context.xs.all(x, a + b + x >= 0)))")
        .await
        .expect("runaway policy");
    let xs: Vec<i64> = (0..3000).collect();
    let result = test_policy(&c, &runaway.pk, json!({ "xs": xs })).await;
    assert!(!result.passing, "{result:?}");
    assert!(result.messages.iter().any(|m| m.contains("timed out")), "{result:?}");
    drop(server);
}

#[tokio::test]
async fn export_delete_import_round_trip_diagram_used_by_and_cache() {
    let server = Server::start().await;
    let token = server.admin_token();
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&token);
        let t = tag(protocol);
        let enrol = create_flow(&c, "Enrol", &format!("{t}-enrol"), fpb::FlowDesignation::Enrollment).await;
        let flow = create_flow(&c, "Login \"main\"", &format!("{t}-login"), fpb::FlowDesignation::Authentication).await;
        let password = password_stage(&c, &format!("{t} password")).await;
        let ident: fpb::CreateIdentificationStageResponse = c
            .call(
                CREATE_IDENTIFICATION,
                fpb::CreateIdentificationStageRequest {
                    stage: Some(fpb::IdentificationStageRequest {
                        name: Some(format!("{t} identify")),
                        enrollment_flow: Some(enrol.pk.clone()),
                        ..Default::default()
                    }),
                },
            )
            .await
            .expect("identification");
        let ident = ident.stage.expect("stage");
        let b1 = bind(&c, &flow.pk, &ident.pk, 10).await.expect("bind identification");
        bind(&c, &flow.pk, &password.pk, 20).await.expect("bind password");
        let gate = policy(&c, &format!("{t} gate"), "context.ok == true").await.expect("policy");
        bind_policy(&c, &gate.pk, &flow.policybindingmodel_ptr_id, 0).await;
        bind_policy(&c, &gate.pk, &b1.policybindingmodel_ptr_id, 0).await;

        // Diagram: Mermaid, stages in order.
        let diagram: fpb::DiagramFlowResponse =
            c.call(DIAGRAM, fpb::DiagramFlowRequest { slug: flow.slug.clone() }).await.expect("diagram");
        assert!(diagram.diagram.starts_with("graph TD"), "{}", diagram.diagram);
        let first = diagram.diagram.find(&format!("{t} identify")).expect("identification in diagram");
        let second = diagram.diagram.find(&format!("{t} password")).expect("password in diagram");
        assert!(first < second, "{}", diagram.diagram);

        // used_by: the identification stage links the enrollment flow.
        let used: fpb::FlowUsedByResponse =
            c.call(USED_BY, fpb::FlowUsedByRequest { slug: enrol.slug.clone() }).await.expect("used by");
        assert_eq!(used.results.len(), 1, "{used:?}");
        assert_eq!(used.results[0].pk, ident.pk);
        assert_eq!(used.results[0].action, i32::from(fpb::UsedByAction::SetNull));
        let used: fpb::FlowUsedByResponse =
            c.call(USED_BY, fpb::FlowUsedByRequest { slug: flow.slug.clone() }).await.expect("used by");
        assert_eq!(used.results.len(), 2);
        assert!(used.results.iter().all(|u| u.action == i32::from(fpb::UsedByAction::Cascade)), "{used:?}");

        let cache: fpb::CacheInfoResponse = c.call(CACHE_INFO, fpb::CacheInfoRequest {}).await.expect("cache info");
        assert_eq!(cache.count, 0);
        let _: fpb::CacheClearResponse = c.call(CACHE_CLEAR, fpb::CacheClearRequest {}).await.expect("cache clear");

        let exported: fpb::ExportFlowResponse =
            c.call(EXPORT, fpb::ExportFlowRequest { slug: flow.slug.clone() }).await.expect("export");
        let file = exported.file.expect("file");
        assert!(file.content_type.starts_with("application/yaml"), "{}", file.content_type);
        let yaml = String::from_utf8(file.data).expect("utf-8");
        assert!(yaml.contains(&flow.slug) && yaml.contains(&format!("{t} identify")), "{yaml}");
        assert!(!yaml.contains(&flow.pk), "the export refers by slug and name, not by id: {yaml}");

        let before_bindings: fpb::ListBindingsResponse = c
            .call(LIST_BINDINGS, fpb::ListBindingsRequest { target: flow.pk.clone(), ..Default::default() })
            .await
            .expect("bindings");
        let _: fpb::DeleteFlowResponse =
            c.call(DELETE_FLOW, fpb::DeleteFlowRequest { slug: flow.slug.clone() }).await.expect("delete");
        expect_code(get_flow(&c, &flow.slug).await, Code::NotFound, "deleted before import");

        let imported: fpb::ImportFlowResponse =
            c.call(IMPORT, fpb::ImportFlowRequest { file: yaml.clone(), clear: false }).await.expect("import");
        assert!(imported.success, "{imported:?}");
        assert!(!imported.logs.is_empty());
        let back = get_flow(&c, &flow.slug).await.expect("imported flow");
        assert_eq!((back.name.as_str(), back.title.as_str()), (flow.name.as_str(), flow.title.as_str()));
        assert_eq!(back.stages, vec![ident.pk.clone(), password.pk.clone()], "stages are found again by name");
        assert_eq!(back.policies, vec![gate.pk.clone()]);
        let after: fpb::ListBindingsResponse = c
            .call(LIST_BINDINGS, fpb::ListBindingsRequest { target: back.pk.clone(), ..Default::default() })
            .await
            .expect("bindings");
        let shape = |r: &fpb::ListBindingsResponse| {
            r.results.iter().map(|b| (b.stage.clone(), b.order, b.invalid_response_action)).collect::<Vec<_>>()
        };
        assert_eq!(shape(&after), shape(&before_bindings));
        let gated: fpb::ListPolicyBindingsResponse = c
            .call(
                LIST_POLICY_BINDINGS,
                fpb::ListPolicyBindingsRequest {
                    target: after.results[0].policybindingmodel_ptr_id.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("binding policies");
        assert_eq!(gated.results.len(), 1, "the stage binding's policy binding came back");

        // Importing the same file again changes nothing.
        let again: fpb::ImportFlowResponse =
            c.call(IMPORT, fpb::ImportFlowRequest { file: yaml.clone(), clear: false }).await.expect("re-import");
        assert!(again.success);
        assert!(
            again.logs.iter().all(|l| !matches!(l.event.as_str(), "created" | "updated" | "deleted")),
            "{:?}",
            again.logs
        );
        assert_eq!(get_flow(&c, &flow.slug).await.expect("flow"), back);

        let broken = c
            .call::<_, fpb::ImportFlowResponse>(
                IMPORT,
                fpb::ImportFlowRequest { file: "version: 1\nentries: [{model: flowgate.nope}]\n".into(), clear: false },
            )
            .await;
        expect_field(&expect_code(broken, Code::InvalidArgument, "bad file"), "file", "");
    }
}

// ------------------------------------------------------------------------------ raw HTTP (authentik wire)

async fn http_json(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = server.http().request(method, server.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("send");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("json body") };
    (status, value)
}

fn assert_whole_flow(flow: &Value) {
    let obj = flow.as_object().expect("flow object");
    for key in FLOW_KEYS {
        assert!(obj.contains_key(key), "key `{key}` missing in {flow}");
    }
    for key in
        ["pk", "policybindingmodel_ptr_id", "name", "slug", "title", "designation", "background_url", "export_url"]
    {
        assert!(obj[key].is_string(), "`{key}` must be a string: {flow}");
    }
    assert!(obj["cache_count"].is_i64(), "{flow}");
    assert!(obj["stages"].is_array() && obj["policies"].is_array(), "{flow}");
    assert!(obj["background_themed_urls"].is_null(), "{flow}");
    assert_ne!(obj["pk"], obj["policybindingmodel_ptr_id"]);
    assert!(uuid::Uuid::parse_str(obj["pk"].as_str().unwrap_or_default()).is_ok(), "{flow}");
}

#[tokio::test]
async fn the_seed_patch_answers_the_whole_flow() {
    let server = Server::start().await;
    let token = server.admin_token();
    let (status, created) = http_json(
        &server,
        reqwest::Method::POST,
        "/api/v3/flows/instances/",
        Some(&token),
        Some(json!({"name": "Login", "slug": "default-authentication-flow", "title": "Welcome", "designation": "authentication"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_whole_flow(&created);
    assert_eq!(created["background"], Value::Null);

    let (status, patched) = http_json(
        &server,
        reqwest::Method::PATCH,
        "/api/v3/flows/instances/default-authentication-flow/",
        Some(&token),
        Some(json!({"title": "Welcome to flowgate!"})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_whole_flow(&patched);
    assert_eq!(patched["title"], "Welcome to flowgate!");
    let mut expected = created.clone();
    expected["title"] = json!("Welcome to flowgate!");
    assert_eq!(patched, expected, "only the title changed");
    assert_eq!(patched["export_url"], "/api/v3/flows/instances/default-authentication-flow/export/");
    assert_eq!(patched["background_url"], "/static/dist/assets/images/flow_background.jpg");
    assert_eq!(
        (&patched["layout"], &patched["denied_action"], &patched["authentication"], &patched["policy_engine_mode"]),
        (&json!("stacked"), &json!("message_continue"), &json!("none"), &json!("any"))
    );

    // Lists: the DRF envelope with numbers, never nulls, and `autocomplete: {}`.
    let (status, list) =
        http_json(&server, reqwest::Method::GET, "/api/v3/flows/instances/?page_size=1", Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        list["pagination"],
        json!({"next": 0, "previous": 0, "count": 1, "current": 1, "total_pages": 1, "start_index": 1, "end_index": 1})
    );
    assert_eq!(list["autocomplete"], json!({}));
    assert_whole_flow(&list["results"][0]);

    // Export: YAML with a download name; DELETE: 204 with no body.
    let res = server
        .http()
        .get(server.url("/api/v3/flows/instances/default-authentication-flow/export/"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("export");
    assert_eq!(res.status().as_u16(), 200);
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(header("content-type").starts_with("application/yaml"), "{}", header("content-type"));
    assert_eq!(header("content-disposition"), "attachment; filename=\"default-authentication-flow.yaml\"");
    let (status, used_by) = http_json(
        &server,
        reqwest::Method::GET,
        "/api/v3/flows/instances/default-authentication-flow/used_by/",
        Some(&token),
        None,
    )
    .await;
    assert_eq!((status, used_by), (200, json!([])), "used_by is a bare array");
    let (status, body) = http_json(
        &server,
        reqwest::Method::DELETE,
        "/api/v3/flows/instances/default-authentication-flow/",
        Some(&token),
        None,
    )
    .await;
    assert_eq!((status, body), (204, Value::Null));
}

#[tokio::test]
async fn every_documented_choice_is_accepted_and_others_are_refused() {
    let server = Server::start().await;
    let token = server.admin_token();
    let designations = [
        "authentication",
        "authorization",
        "invalidation",
        "enrollment",
        "unenrollment",
        "recovery",
        "stage_configuration",
    ];
    for (i, designation) in designations.iter().enumerate() {
        let slug = format!("d{i}");
        let (status, flow) = http_json(
            &server,
            reqwest::Method::POST,
            "/api/v3/flows/instances/",
            Some(&token),
            Some(json!({"name": "F", "slug": slug, "title": "T", "designation": designation})),
        )
        .await;
        assert_eq!(status, 201, "{designation}: {flow}");
        assert_eq!(flow["designation"], *designation);
    }
    let fields: [(&str, &[&str]); 4] = [
        (
            "layout",
            &[
                "stacked",
                "content_left",
                "content_right",
                "sidebar_left",
                "sidebar_right",
                "sidebar_left_frame_background",
                "sidebar_right_frame_background",
            ],
        ),
        ("denied_action", &["message_continue", "message", "continue"]),
        (
            "authentication",
            &[
                "none",
                "require_authenticated",
                "require_unauthenticated",
                "require_superuser",
                "require_redirect",
                "require_outpost",
            ],
        ),
        ("policy_engine_mode", &["all", "any"]),
    ];
    for (field, values) in fields {
        for value in values {
            let (status, flow) = http_json(
                &server,
                reqwest::Method::PATCH,
                "/api/v3/flows/instances/d0/",
                Some(&token),
                Some(json!({ field: value })),
            )
            .await;
            assert_eq!(status, 200, "{field}={value}: {flow}");
            assert_eq!(flow[field], *value, "{field}");
        }
        let (status, body) = http_json(
            &server,
            reqwest::Method::PATCH,
            "/api/v3/flows/instances/d0/",
            Some(&token),
            Some(json!({ field: "bogus" })),
        )
        .await;
        assert_eq!((status, body), (400, json!({ field: ["\"bogus\" is not a valid choice."] })), "{field}");
    }
    // Proto names and other spellings are not among the documented choices either.
    for bogus in ["bogus", "unspecified", "AUTHENTICATION_X", "FLOW_DESIGNATION_AUTHENTICATION", "Authentication", "1"]
    {
        let (status, body) = http_json(
            &server,
            reqwest::Method::POST,
            "/api/v3/flows/instances/",
            Some(&token),
            Some(json!({"name": "F", "slug": "bogus", "title": "T", "designation": bogus})),
        )
        .await;
        assert_eq!(status, 400, "{bogus}: {body}");
        assert_eq!(body, json!({"designation": [format!("\"{bogus}\" is not a valid choice.")]}), "{bogus}");
    }
}

#[tokio::test]
async fn bad_input_and_auth_failures_use_drf_bodies() {
    let server = Server::start().await;
    let token = server.admin_token();
    let create = |body: Value| {
        let server = &server;
        let token = token.clone();
        async move { http_json(server, reqwest::Method::POST, "/api/v3/flows/instances/", Some(&token), Some(body)).await }
    };
    let base = |slug: &str| json!({"name": "F", "slug": slug, "title": "T", "designation": "authentication"});
    let slug_message = "Enter a valid “slug” consisting of letters, numbers, underscores or hyphens.";
    let long = "a".repeat(51);
    for (slug, message) in [
        (long.as_str(), "Ensure this field has no more than 50 characters."),
        ("a/b", slug_message),
        ("a b", slug_message),
    ] {
        let (status, body) = create(base(slug)).await;
        assert_eq!((status, body), (400, json!({"slug": [message]})), "slug {slug:?}");
    }
    let (status, body) = create(base(&"a".repeat(50))).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = create(json!({"name": "  ", "slug": "blank", "title": "T", "designation": "recovery"})).await;
    assert_eq!((status, body), (400, json!({"name": ["This field may not be blank."]})));
    let (status, body) = create(json!({"slug": "nothing"})).await;
    assert_eq!(status, 400);
    for field in ["name", "title", "designation"] {
        assert_eq!(body[field], json!(["This field is required."]), "{body}");
    }
    let (status, _) = create(base("taken")).await;
    assert_eq!(status, 201);
    let (status, body) = create(base("taken")).await;
    assert_eq!((status, body), (400, json!({"slug": ["Flow with this slug already exists."]})));

    let (status, body) =
        http_json(&server, reqwest::Method::GET, "/api/v3/flows/instances/nope/", Some(&token), None).await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"], "Not found.", "DRF's wording, the error id apart in `code`: {body}");
    assert!(body["code"].is_string(), "{body}");

    // Authentication failures: 403 with `detail`, as DRF answers without a challenge scheme.
    for auth in [None, Some("not-a-token")] {
        let (status, body) = http_json(&server, reqwest::Method::GET, "/api/v3/flows/instances/", auth, None).await;
        assert_eq!(status, 403, "{auth:?}: {body}");
        assert!(body["detail"].is_string(), "{body}");
    }

    // A user without the flow permission.
    let admin = Client::new(&server, Protocol::Grpc).with_token(&token);
    let machine: user::AddMachineUserResponse = admin
        .call(
            ADD_MACHINE,
            user::AddMachineUserRequest { username: "no-flows".into(), name: "no flows".into(), ..Default::default() },
        )
        .await
        .expect("machine");
    let pat: user::AddPersonalAccessTokenResponse = admin
        .call(ADD_PAT, user::AddPersonalAccessTokenRequest { user_id: machine.user_id, expiration_date: None })
        .await
        .expect("pat");
    let (status, body) =
        http_json(&server, reqwest::Method::GET, "/api/v3/flows/instances/", Some(&pat.token), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].is_string(), "{body}");
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&pat.token);
        let res = c.call::<_, fpb::ListFlowsResponse>(LIST_FLOWS, fpb::ListFlowsRequest::default()).await;
        expect_code(res, Code::PermissionDenied, "no flow permission");
    }
}

#[tokio::test]
async fn the_published_authentik_client_works_against_flowgate() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-clients/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `.ci/setup` to create the venv with authentik-client (tests/clients/requirements.txt)",
        python.display()
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/authentik_flows.py");
    let server = Server::start().await;
    let base = server.url("/api/v3");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&base)
        .arg(server.admin_token())
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "authentik-client check failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("ok"), "{stdout}");
}

/// The six stage types the other tests do not drive: create over every protocol, with the documented
/// defaults read back, then delete; a blank name is refused naming the field.
#[tokio::test]
async fn remaining_stage_types_round_trip_over_every_protocol() {
    let server = Server::start().await;
    for protocol in PROTOCOLS {
        let c = Client::new(&server, protocol).with_token(&server.admin_token());
        let p = format!("{protocol:?}").to_lowercase();
        macro_rules! create {
            ($method:literal, $req:ident, $resp:ident, $body:expr) => {{
                let res: Result<fpb::$resp, Failure> =
                    c.call(concat!("/flowgate.flow.v1.StageService/", $method), fpb::$req { stage: Some($body) }).await;
                res.map(|r| r.stage.expect("stage"))
            }};
        }
        let validate = create!(
            "CreateAuthenticatorValidateStage",
            CreateAuthenticatorValidateStageRequest,
            CreateAuthenticatorValidateStageResponse,
            fpb::AuthenticatorValidateStageRequest { name: Some(format!("mfa-{p}")), ..Default::default() }
        )
        .expect("authenticator_validate");
        assert_eq!(validate.component, "ak-stage-authenticator-validate");
        assert_eq!(validate.not_configured_action, fpb::NotConfiguredAction::Skip as i32);
        assert!(!validate.device_classes.is_empty(), "default device classes");

        let logout = create!(
            "CreateUserLogoutStage",
            CreateUserLogoutStageRequest,
            CreateUserLogoutStageResponse,
            fpb::UserLogoutStageRequest { name: Some(format!("logout-{p}")) }
        )
        .expect("user_logout");
        assert_eq!(logout.component, "ak-stage-user-logout");

        let deny = create!(
            "CreateDenyStage",
            CreateDenyStageRequest,
            CreateDenyStageResponse,
            fpb::DenyStageRequest { name: Some(format!("deny-{p}")), deny_message: Some("Not here.".into()) }
        )
        .expect("deny");
        assert_eq!((deny.component.as_str(), deny.deny_message.as_deref()), ("ak-stage-deny", Some("Not here.")));

        let consent = create!(
            "CreateConsentStage",
            CreateConsentStageRequest,
            CreateConsentStageResponse,
            fpb::ConsentStageRequest { name: Some(format!("consent-{p}")), ..Default::default() }
        )
        .expect("consent");
        assert_eq!(consent.mode, fpb::ConsentMode::AlwaysRequire as i32);

        let source = create!(
            "CreateSourceStage",
            CreateSourceStageRequest,
            CreateSourceStageResponse,
            fpb::SourceStageRequest {
                name: Some(format!("source-{p}")),
                source: Some("corp-idp".into()),
                ..Default::default()
            }
        )
        .expect("source");
        assert_eq!(source.source, "corp-idp");

        let write = create!(
            "CreateUserWriteStage",
            CreateUserWriteStageRequest,
            CreateUserWriteStageResponse,
            fpb::UserWriteStageRequest { name: Some(format!("write-{p}")), ..Default::default() }
        )
        .expect("user_write");
        assert_eq!(write.user_creation_mode, fpb::UserCreationMode::CreateWhenRequired as i32);

        // A blank name is refused, naming the field, and nothing is created.
        let blank = create!(
            "CreateDenyStage",
            CreateDenyStageRequest,
            CreateDenyStageResponse,
            fpb::DenyStageRequest { name: Some("  ".into()), deny_message: None }
        );
        let failure = blank.expect_err("blank name");
        assert_eq!(failure.code, Code::InvalidArgument, "{failure:?}");
        if protocol == Protocol::Json {
            assert!(failure.body.as_ref().is_some_and(|b| b.get("name").is_some()), "{failure:?}");
        }

        for pk in [validate.pk, logout.pk, deny.pk, consent.pk, source.pk, write.pk] {
            let _: fpb::DeleteStageResponse = c
                .call("/flowgate.flow.v1.StageService/DeleteStage", fpb::DeleteStageRequest { stage_uuid: pk })
                .await
                .expect("delete");
        }
    }
}
