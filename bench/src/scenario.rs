//! The scenarios and the fixtures they need (login client, users, sessions), created through the API.

use std::sync::Arc;

use flowgate::pb::flowgate::admin::v2 as admin;
use flowgate::pb::flowgate::flow::v1 as flow;
use flowgate::pb::flowgate::idp::v2 as idp;
use flowgate::pb::flowgate::session::v2 as session;
use flowgate::pb::flowgate::system::v1 as system;
use flowgate::pb::flowgate::user::v2 as user;
use parking_lot::Mutex;

use crate::client::Client;
use crate::load::Step;

pub const GET_INFO: &str = "/flowgate.system.v1.SystemService/GetInfo";
pub const GET_SESSION: &str = "/flowgate.session.v2.SessionService/GetSession";
pub const CREATE_SESSION: &str = "/flowgate.session.v2.SessionService/CreateSession";
pub const SET_SESSION: &str = "/flowgate.session.v2.SessionService/SetSession";
pub const DELETE_SESSION: &str = "/flowgate.session.v2.SessionService/DeleteSession";
pub const START_INTENT: &str = "/flowgate.idp.v2.IntentService/StartIdentityProviderIntent";
pub const PATCH_FLOW: &str = "/flowgate.flow.v1.FlowService/PatchFlow";
const CREATE_FLOW: &str = "/flowgate.flow.v1.FlowService/CreateFlow";
const ADD_OIDC: &str = "/flowgate.idp.v2.IdentityProviderService/AddGenericOIDCProvider";
const ADD_HUMAN: &str = "/flowgate.user.v2.UserService/AddHumanUser";
const ADD_MACHINE: &str = "/flowgate.user.v2.UserService/AddMachineUser";
const ADD_PAT: &str = "/flowgate.user.v2.UserService/AddPersonalAccessToken";
const CREATE_ADMIN: &str = "/flowgate.admin.v2.AdministratorService/CreateAdministrator";

/// The password of every benchmark user.
pub const PASSWORD: &str = "correct horse battery staple";

/// The redirect allowlist entry a started server gets (`--allowed-redirect-url`); intents send the browser
/// below it. A server given with `--addr` needs the same entry for `start-idp-intent`.
pub const REDIRECT_PREFIX: &str = "http://127.0.0.1/flowgate-bench";

/// A scenario of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// `SystemService/GetInfo`, anonymous.
    GetInfo,
    /// `GetSession` by id with the login client's PAT as bearer token.
    GetSession,
    /// `CreateSession` with a user check (login name lookup, one write).
    CreateSessionUser,
    /// `CreateSession` with a user and a password check (one argon2id verify).
    CreateSessionPassword,
    /// `SetSession` changing metadata (read, token rotation, one write).
    SetSessionMetadata,
    /// `DeleteSession` of a fresh session (read, one write).
    DeleteSession,
    /// `StartIdentityProviderIntent` with redirect URLs at an OIDC provider the benchmark serves itself.
    StartIdpIntent,
    /// `PatchFlow` changing the title of the slot's own flow (admin token; flow definitions, authentik dialect).
    FlowPatch,
    /// Password checks offered at twice the hashing capacity while GetSession runs beside them.
    Overload,
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 9] = [
        Scenario::GetInfo,
        Scenario::GetSession,
        Scenario::CreateSessionUser,
        Scenario::CreateSessionPassword,
        Scenario::SetSessionMetadata,
        Scenario::DeleteSession,
        Scenario::StartIdpIntent,
        Scenario::FlowPatch,
        Scenario::Overload,
    ];

    /// The row of this scenario that hashing bounds (judged by the argon2id rate measured next to it).
    pub fn password_run(self) -> Option<&'static str> {
        match self {
            Scenario::CreateSessionPassword => Some("create-session-password"),
            Scenario::Overload => Some("overload/password"),
            Scenario::GetInfo
            | Scenario::GetSession
            | Scenario::CreateSessionUser
            | Scenario::SetSessionMetadata
            | Scenario::DeleteSession
            | Scenario::StartIdpIntent
            | Scenario::FlowPatch => None,
        }
    }

    /// Name used in the table and the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::GetInfo => "get-info",
            Scenario::GetSession => "get-session",
            Scenario::CreateSessionUser => "create-session-user",
            Scenario::CreateSessionPassword => "create-session-password",
            Scenario::SetSessionMetadata => "set-session-metadata",
            Scenario::DeleteSession => "delete-session",
            Scenario::StartIdpIntent => "start-idp-intent",
            Scenario::FlowPatch => "flow-patch",
            Scenario::Overload => "overload",
        }
    }
}

/// What the scenarios share: users to log in and sessions to read, update and delete.
pub struct Fixtures {
    /// Login names of human users with [`PASSWORD`].
    pub users: Vec<String>,
    /// The login client's PAT (machine user with IAM_LOGIN_CLIENT).
    pub login_token: String,
    /// Sessions GetSession reads.
    pub read_sessions: Vec<String>,
    /// One session per slot for SetSession (a slot never races itself).
    pub set_sessions: Vec<String>,
    /// Fresh sessions, filled by the CreateSession scenarios and emptied by DeleteSession.
    pub stock: Mutex<Vec<String>>,
    /// The OIDC identity provider intents are started at (only when `start-idp-intent` runs).
    pub idp_id: Option<String>,
    /// Slugs of the flows, one per slot (only when `flow-patch` runs).
    pub flow_slugs: Vec<String>,
    /// Unique per run: names of what bootstrap creates carry it.
    run: String,
}

fn failed(what: &str, e: &crate::client::Failure) -> String {
    format!("{what}: {} {}", e.kind(), e.message)
}

impl Fixtures {
    /// Creates the login client, `users` users and the sessions, through `root` (gRPC, admin token).
    pub async fn bootstrap(
        root: &Client,
        addr: std::net::SocketAddr,
        users: usize,
        sessions: usize,
    ) -> Result<Fixtures, String> {
        // Names are unique per run so that a benchmark can target the same server (`--addr`) again.
        let run = uuid::Uuid::now_v7().simple().to_string();
        let run = &run[run.len() - 10..];
        let name = format!("bench-login-{run}");
        let machine: user::AddMachineUserResponse = root
            .call(ADD_MACHINE, user::AddMachineUserRequest { username: name.clone(), name, ..Default::default() })
            .await
            .map_err(|e| failed("add login client", &e))?;
        let _: admin::CreateAdministratorResponse = root
            .call(
                CREATE_ADMIN,
                admin::CreateAdministratorRequest {
                    user_id: machine.user_id.clone(),
                    resource: Some(admin::ResourceType {
                        resource: Some(admin::resource_type::Resource::Instance(true)),
                    }),
                    roles: vec!["IAM_LOGIN_CLIENT".into()],
                },
            )
            .await
            .map_err(|e| failed("grant IAM_LOGIN_CLIENT", &e))?;
        let pat: user::AddPersonalAccessTokenResponse = root
            .call(ADD_PAT, user::AddPersonalAccessTokenRequest { user_id: machine.user_id, expiration_date: None })
            .await
            .map_err(|e| failed("add PAT", &e))?;
        let mut names = Vec::new();
        for i in 0..users.max(1) {
            let username = format!("bench-{run}-{i}");
            let _: user::AddHumanUserResponse =
                root.call(ADD_HUMAN, human(&username)).await.map_err(|e| failed("add user", &e))?;
            names.push(username);
        }
        let login = Client::connect(crate::client::Protocol::Grpc, addr, 1, Some(&pat.token)).await?;
        let mut read_sessions = Vec::new();
        let mut set_sessions = Vec::new();
        for i in 0..sessions.max(1) {
            let login_name = names.get(i % names.len()).cloned().unwrap_or_default();
            read_sessions.push(create(&login, &login_name, false).await.map_err(|e| failed("create session", &e))?);
            set_sessions.push(create(&login, &login_name, false).await.map_err(|e| failed("create session", &e))?);
        }
        Ok(Fixtures {
            users: names,
            login_token: pat.token,
            read_sessions,
            set_sessions,
            stock: Mutex::new(Vec::new()),
            idp_id: None,
            flow_slugs: Vec::new(),
            run: run.to_owned(),
        })
    }

    /// Adds an OIDC identity provider whose issuer is `issuer` (through `root`, admin token).
    pub async fn add_oidc_provider(&mut self, root: &Client, issuer: &str) -> Result<(), String> {
        let res: idp::AddGenericOidcProviderResponse = root
            .call(
                ADD_OIDC,
                idp::AddGenericOidcProviderRequest {
                    name: format!("bench-oidc-{}", self.run),
                    issuer: issuer.to_owned(),
                    client_id: "flowgate-bench".into(),
                    client_secret: "bench-secret".into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| failed("add OIDC provider", &e))?;
        self.idp_id = Some(res.id);
        Ok(())
    }

    /// Creates `count` authentication flows, one per slot (through `root`, admin token).
    pub async fn add_flows(&mut self, root: &Client, count: usize) -> Result<(), String> {
        for i in 0..count.max(1) {
            let slug = format!("bench-{}-{i}", self.run);
            let _: flow::CreateFlowResponse = root
                .call(
                    CREATE_FLOW,
                    flow::CreateFlowRequest {
                        flow: Some(flow::FlowRequest {
                            name: Some(slug.clone()),
                            slug: Some(slug.clone()),
                            title: Some("Welcome".into()),
                            designation: flow::FlowDesignation::Authentication.into(),
                            ..Default::default()
                        }),
                    },
                )
                .await
                .map_err(|e| failed("create flow", &e))?;
            self.flow_slugs.push(slug);
        }
        Ok(())
    }

    fn user(&self, seq: u64) -> &str {
        let i = usize::try_from(seq).unwrap_or(0) % self.users.len().max(1);
        self.users.get(i).map_or("", String::as_str)
    }
}

fn human(username: &str) -> user::AddHumanUserRequest {
    user::AddHumanUserRequest {
        username: Some(username.to_owned()),
        profile: Some(user::SetHumanProfile {
            given_name: "Bench".into(),
            family_name: "User".into(),
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
    }
}

/// Creates a session for `login_name`, with a password check when `password` is set; answers its id.
async fn create(client: &Client, login_name: &str, password: bool) -> Result<String, crate::client::Failure> {
    let checks = session::Checks {
        user: Some(session::CheckUser { search: Some(session::check_user::Search::LoginName(login_name.to_owned())) }),
        password: password.then(|| session::CheckPassword { password: PASSWORD.to_owned() }),
        ..Default::default()
    };
    let res: session::CreateSessionResponse = client
        .call(CREATE_SESSION, session::CreateSessionRequest { checks: Some(checks), ..Default::default() })
        .await?;
    Ok(res.session_id)
}

fn step<T>(result: Result<T, crate::client::Failure>) -> Step {
    match result {
        Ok(_) => Step::Ok,
        Err(e) => Step::Failed(e.kind()),
    }
}

/// GetInfo, anonymous.
pub async fn get_info(client: Client) -> Step {
    step(client.call::<_, system::GetInfoResponse>(GET_INFO, system::GetInfoRequest {}).await)
}

/// GetSession of one of the prepared sessions, by id, with the login client's PAT.
pub async fn get_session(client: Client, fixtures: Arc<Fixtures>, seq: u64) -> Step {
    let i = usize::try_from(seq).unwrap_or(0) % fixtures.read_sessions.len().max(1);
    let id = fixtures.read_sessions.get(i).cloned().unwrap_or_default();
    step(
        client
            .call::<_, session::GetSessionResponse>(
                GET_SESSION,
                session::GetSessionRequest { session_id: id, session_token: None },
            )
            .await,
    )
}

/// CreateSession with a user check (and a password check when `password`); the new session goes to the stock.
pub async fn create_session(client: Client, fixtures: Arc<Fixtures>, seq: u64, password: bool) -> Step {
    match create(&client, fixtures.user(seq), password).await {
        Ok(id) => {
            let mut stock = fixtures.stock.lock();
            // Bounded, so a long run cannot grow the stock without limit.
            if stock.len() < 2_000_000 {
                stock.push(id);
            }
            Step::Ok
        }
        Err(e) => Step::Failed(e.kind()),
    }
}

/// SetSession with new metadata on the slot's own session.
pub async fn set_session(client: Client, fixtures: Arc<Fixtures>, slot: usize, seq: u64) -> Step {
    let id = fixtures.set_sessions.get(slot % fixtures.set_sessions.len().max(1)).cloned().unwrap_or_default();
    let request = session::SetSessionRequest {
        session_id: id,
        metadata: [("bench".to_owned(), seq.to_string().into_bytes())].into_iter().collect(),
        ..Default::default()
    };
    step(client.call::<_, session::SetSessionResponse>(SET_SESSION, request).await)
}

/// DeleteSession of a session from the stock; the run ends when the stock is empty.
pub async fn delete_session(client: Client, fixtures: Arc<Fixtures>) -> Step {
    let Some(id) = fixtures.stock.lock().pop() else {
        return Step::Exhausted;
    };
    step(
        client
            .call::<_, session::DeleteSessionResponse>(
                DELETE_SESSION,
                session::DeleteSessionRequest { session_id: id, session_token: None },
            )
            .await,
    )
}

/// StartIdentityProviderIntent at the benchmark's OIDC provider, with URLs below [`REDIRECT_PREFIX`].
pub async fn start_idp_intent(client: Client, fixtures: Arc<Fixtures>) -> Step {
    let request = idp::StartIdentityProviderIntentRequest {
        idp_id: fixtures.idp_id.clone().unwrap_or_default(),
        content: Some(idp::start_identity_provider_intent_request::Content::Urls(idp::RedirectUrLs {
            success_url: format!("{REDIRECT_PREFIX}/success"),
            failure_url: format!("{REDIRECT_PREFIX}/failure"),
        })),
    };
    step(client.call::<_, idp::StartIdentityProviderIntentResponse>(START_INTENT, request).await)
}

/// PatchFlow of the slot's own flow: a new title (update mask `title`; over REST `{"title": …}`).
pub async fn flow_patch(client: Client, fixtures: Arc<Fixtures>, slot: usize, seq: u64) -> Step {
    let slug = fixtures.flow_slugs.get(slot % fixtures.flow_slugs.len().max(1)).cloned().unwrap_or_default();
    let request = flow::PatchFlowRequest {
        slug,
        flow: Some(flow::FlowRequest { title: Some(format!("Welcome {seq}")), ..Default::default() }),
        update_mask: Some(pbjson_types::FieldMask { paths: vec!["title".to_owned()] }),
    };
    step(client.call::<_, flow::PatchFlowResponse>(PATCH_FLOW, request).await)
}
