//! The server: one listener answering native gRPC, gRPC-web and REST/JSON from the same service
//! implementations, plus health, readiness, reflection and metrics; graceful drain on SIGTERM/SIGINT.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flowgate_core::flow::{Flows, FlowsConfig, PolicyConfig};
use flowgate_core::identity::password::{HashingConfig, PasswordPolicy};
use flowgate_core::identity::ports::{SystemClock, UuidV7Ids};
use flowgate_core::identity::{Identity, IdentityConfig, UserId};
use flowgate_core::idp::{IdpConfig, IdpLinkChecker, Idps, RedirectAllowlist, SecretBox};
use flowgate_core::session::{
    CachedSessionRepo, DEFAULT_SESSION_TTL, LockoutPolicy, SessionConfig, SessionId, Sessions,
};
use flowgate_core::system::{ApiFamily, BuildFacts, StoreStatus};
use flowgate_gateway::{Dialect, Gateway, GatewayConfig, HttpBinding};
use flowgate_idp::{ConnectorConfig, Connectors, JwtSettings, JwtVerifier};
use flowgate_store::{Backend, Change, Store, StoreConfig};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::admin::AdminApi;
use crate::api::flow::FlowApi;
use crate::api::idp::IdpApi;
use crate::api::org::OrgApi;
use crate::api::session::SessionApi;
use crate::api::system::SystemApi;
use crate::api::user::UserApi;
use crate::auth::{self, Authorizer};
use crate::config::{Config, Delivery, JwtIssuer, Lockout, PasswordHashing, TlsFiles};
use crate::edge::{Edge, EdgeLayer, GrpcEdgeLayer};
use crate::http_metrics::{HttpMetrics, PoolGauge};
use crate::notify::Notifier;
use crate::pb;
use crate::pb::flowgate::admin::v2::administrator_service_server::AdministratorServiceServer;
use crate::pb::flowgate::flow::v1::binding_service_server::BindingServiceServer;
use crate::pb::flowgate::flow::v1::flow_service_server::FlowServiceServer;
use crate::pb::flowgate::flow::v1::policy_service_server::PolicyServiceServer;
use crate::pb::flowgate::flow::v1::stage_service_server::StageServiceServer;
use crate::pb::flowgate::idp::v2::identity_provider_service_server::IdentityProviderServiceServer;
use crate::pb::flowgate::idp::v2::intent_service_server::IntentServiceServer;
use crate::pb::flowgate::org::v2::organization_service_server::OrganizationServiceServer;
use crate::pb::flowgate::session::v2::session_service_server::SessionServiceServer;
use crate::pb::flowgate::system::v1::system_service_server::SystemServiceServer;
use crate::pb::flowgate::user::v2::user_service_server::UserServiceServer;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A configured value turned out unusable at start-up (e.g. an unreadable TLS key).
    #[error("{0}")]
    Config(String),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(String),
    /// Binding or accepting on the listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The generated API tables are inconsistent (a build defect).
    #[error("api tables: {0}")]
    Api(String),
    /// An operator command was refused (e.g. unknown user); the message says why.
    #[error("{0}")]
    Refused(String),
}

/// The identity use cases over the store, configured from `config`.
fn identity(config: &Config, store: &Store) -> Result<Identity, ServeError> {
    let PasswordHashing { memory_kib, iterations, parallelism, workers, queue } = config.password_hashing;
    let identity_config = IdentityConfig {
        external_domain: config.external_domain.clone(),
        password_policy: PasswordPolicy::default(),
        hashing: HashingConfig { memory_kib, iterations, parallelism, workers, queue },
    };
    let identity = Identity::new(
        identity_config,
        flowgate_store::identity::repos(store),
        Arc::new(SystemClock),
        Arc::new(UuidV7Ids),
    )
    .map_err(|e| ServeError::Config(format!("password hashing: {e}")))?;
    let Some(JwtIssuer { issuer, audience }) = &config.jwt else {
        return Ok(identity);
    };
    // Nothing is fetched here: the issuer's keys are discovered when the first JWT arrives, so an issuer
    // that is down at start-up costs only its own tokens, never the server.
    let verifier = JwtVerifier::new(JwtSettings::new(issuer.clone(), audience.clone()))
        .map_err(|e| ServeError::Config(format!("jwt_issuer: {e}")))?;
    Ok(identity.with_external_verifier(Arc::new(verifier)))
}

/// The session use cases over the store, and the identity they complete: deactivating, locking or
/// deleting a user ends its sessions, and session tokens work as bearer tokens.
fn sessions(config: &Config, store: &Store, identity: Identity) -> Result<(Identity, Sessions), ServeError> {
    let Delivery { smtp_url, smtp_from, sms_webhook_url } = &config.delivery;
    let notifier = Notifier::new(smtp_url.as_deref(), smtp_from.as_deref(), sms_webhook_url.as_deref())
        .map_err(ServeError::Config)?;
    let Lockout { max_password_attempts, max_otp_attempts } = config.lockout;
    let session_config = SessionConfig {
        lockout: LockoutPolicy { max_password_attempts, max_otp_attempts },
        ..SessionConfig::default()
    };
    let mut repos = flowgate_store::session::repos(store);
    match store.backend() {
        // One server per file: its own writes are all there is to hear.
        Backend::Sqlite => repos.sessions = Arc::new(CachedSessionRepo::new(repos.sessions, DEFAULT_SESSION_TTL)),
        // Replicas share the database: remember sessions, and the users of sign-in checks, only while
        // listening to the changes the database announces. The listener holds a pool connection, so a pool
        // of one connection reads fresh instead.
        Backend::Postgres if config.max_connections >= 2 => {
            let cache = Arc::new(CachedSessionRepo::suspended(repos.sessions, DEFAULT_SESSION_TTL));
            identity.suspend_user_cache();
            spawn_change_follower(store.clone(), cache.clone(), identity.clone());
            repos.sessions = cache;
        }
        Backend::Postgres => identity.suspend_user_cache(),
    }
    let sessions = Sessions::new(
        session_config,
        repos,
        identity.clone(),
        Arc::new(notifier),
        Arc::new(SystemClock),
        Arc::new(UuidV7Ids),
    );
    let identity =
        identity.with_lifecycle_hook(Arc::new(sessions.clone())).with_session_tokens(Arc::new(sessions.clone()));
    Ok((identity, sessions))
}

/// The IdP use cases, and the identity and sessions they complete: AddHumanUser checks IdP links, and
/// sessions accept `checks.idp_intent`. `addr` is the bound address, the external URL's fallback.
fn federation(
    config: &Config,
    store: &Store,
    identity: Identity,
    sessions: Sessions,
    addr: SocketAddr,
) -> Result<(Identity, Sessions, Idps), ServeError> {
    let federation = &config.federation;
    let external_url = match &federation.external_url {
        Some(url) => url.clone(),
        None => format!("{}://{addr}", if config.tls.is_some() { "https" } else { "http" }),
    };
    let allowlist = RedirectAllowlist::new(federation.allowed_redirect_urls.clone())
        .map_err(|e| ServeError::Config(format!("allowed_redirect_urls: {e}")))?;
    if allowlist.is_empty() {
        tracing::info!("no --allowed-redirect-url configured: redirect IdP intents will be refused");
    }
    let connectors = Connectors::new(ConnectorConfig {
        http_timeout: Duration::from_secs(10),
        discovery_ttl: Duration::from_secs(15 * 60),
    })
    .map_err(|e| ServeError::Config(format!("IdP connectors: {e}")))?;
    let repos = flowgate_store::idp::repos(store);
    let idps = Idps::new(
        IdpConfig { external_url, allowlist, intent_lifetime: federation.intent_lifetime },
        repos.clone(),
        identity.clone(),
        Arc::new(connectors),
        SecretBox::new(sealing_key(config)?),
        Arc::new(SystemClock),
        Arc::new(UuidV7Ids),
    );
    let identity = identity.with_idp_link_check(Arc::new(IdpLinkChecker::new(repos)));
    let sessions = sessions.with_intents(Arc::new(idps.clone()));
    Ok((identity, sessions, idps))
}

/// Keeps `sessions` and the users `identity` remembers in step with what other replicas change: both cache
/// only while the database's announcements are heard, forget each announced session, user or org, and are
/// suspended (everything forgotten, reads fresh) from the moment the listening connection is lost until a
/// new one listens.
fn spawn_change_follower(store: Store, sessions: Arc<CachedSessionRepo>, identity: Identity) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        while !store.is_closed() {
            match store.listen_changes().await {
                Ok(Some(mut changes)) => {
                    backoff = Duration::from_millis(250);
                    sessions.resume();
                    identity.resume_user_cache();
                    loop {
                        match changes.next().await {
                            Change::Session(id) => sessions.changed(&SessionId::from(id)),
                            Change::User(id) => identity.user_changed(&UserId::from(id)),
                            Change::Org(_) => identity.org_changed(),
                            Change::Lost => {
                                sessions.suspend();
                                identity.suspend_user_cache();
                                if store.is_closed() {
                                    // Shutting down: nothing was lost that anyone will ask for.
                                    return;
                                }
                                tracing::warn!(
                                    "lost the change listener; sessions and users are read fresh until it is back"
                                );
                                break;
                            }
                        }
                    }
                }
                Ok(None) => return,
                Err(err) => {
                    if store.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis(), "cannot listen for changes");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
}

/// Deletes long-expired IdP intents every ten minutes, so the table holds only recent logins. Every
/// replica may run it: the delete is idempotent.
fn spawn_intent_purge(idps: Idps) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match idps.purge_expired_intents().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired IdP intents deleted"),
                Err(err) => tracing::warn!(error = %err, "purging expired IdP intents failed; retrying later"),
            }
        }
    });
}

/// Creates the instance on first start and hands the admin token to the operator through a file only
/// the owner can read; the token itself is never logged.
async fn bootstrap(identity: &Identity, data_dir: &Path) -> Result<(), ServeError> {
    let Some(token) = identity.bootstrap().await.map_err(|e| ServeError::Store(e.to_string()))? else {
        return Ok(());
    };
    let path = data_dir.join("admin.pat");
    write_secret_file(&path, &token).map_err(|e| {
        ServeError::Refused(format!(
            "instance created but {} could not be written ({e}); create a token with `flowgate admin create-token --user admin`",
            path.display()
        ))
    })?;
    tracing::info!(path = %path.display(), "instance created; the admin machine user's token is in this file (mode 0600)");
    Ok(())
}

/// Writes `secret` to `path` readable by the owner only, replacing an older file.
fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // `mode` applies only to new files; an older file keeps its bits unless they are reset.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// The key sealing IdP secrets: configured, or read from `<data_dir>/encryption.key`, or created there
/// (mode 0600) on first start. Losing the file makes stored IdP secrets unreadable, which the log says.
fn sealing_key(config: &Config) -> Result<[u8; 32], ServeError> {
    use base64::Engine as _;
    if let Some(text) = &config.federation.encryption_key {
        return crate::config::decode_key(text).map_err(|m| ServeError::Config(format!("encryption_key: {m}")));
    }
    let path = config.data_dir.join("encryption.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            crate::config::decode_key(&text).map_err(|m| ServeError::Config(format!("{}: {m}", path.display())))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            write_secret_file(&path, &base64::engine::general_purpose::STANDARD.encode(key))?;
            tracing::info!(path = %path.display(), "created the key that seals IdP secrets; back it up with the database");
            Ok(key)
        }
        Err(err) => Err(ServeError::Config(format!("cannot read {}: {err}", path.display()))),
    }
}

/// `flowgate admin create-token`: prints a new token for an existing machine user.
pub async fn create_token(config: &Config, user: &str, expires_in: Option<Duration>) -> Result<(), ServeError> {
    let store = open_store(config).await?;
    let identity = identity(config, &store)?;
    let (id, token) =
        identity.create_token_for(user, expires_in).await.map_err(|e| ServeError::Refused(e.to_string()))?;
    tracing::info!(token_id = %id, user, "personal access token created");
    println!("{token}");
    Ok(())
}

async fn open_store(config: &Config) -> Result<Store, ServeError> {
    let store_config = StoreConfig {
        url: config.database_url.clone(),
        data_dir: config.data_dir.clone(),
        max_connections: config.max_connections,
        ..StoreConfig::default()
    };
    let store = Store::connect(&store_config).await.map_err(|e| ServeError::Store(e.to_string()))?;
    store.migrate().await.map_err(|e| ServeError::Store(e.to_string()))?;
    Ok(store)
}

/// `flowgate migrate`: apply every pending migration and report the schema version.
pub async fn migrate(config: &Config) -> Result<(), ServeError> {
    let store = open_store(config).await?;
    let version = store.schema_version().await.map_err(|e| ServeError::Store(e.to_string()))?;
    tracing::info!(backend = store.backend().as_str(), schema_version = %version, "migrations applied");
    println!("schema version {version} ({})", store.backend().as_str());
    Ok(())
}

/// `flowgate serve`: migrate, bind, serve until SIGTERM/SIGINT, then drain.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let store = open_store(&config).await?;
    let schema_version = store.schema_version().await.map_err(|e| ServeError::Store(e.to_string()))?;
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let (identity, sessions) = sessions(&config, &store, identity(&config, &store)?)?;
    bootstrap(&identity, &config.data_dir).await?;
    // Bound before the application is built: without a configured external URL, the IdP callback URL is
    // the bound address (port 0 resolves here).
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let (identity, sessions, idps) = federation(&config, &store, identity, sessions, addr)?;
    spawn_intent_purge(idps.clone());
    let flows = Flows::new(
        FlowsConfig {
            plan_cache_ttl: config.flows.plan_cache_ttl,
            policy: PolicyConfig {
                max_timeout: config.flows.policy_max_timeout,
                max_concurrent: config.flows.policy_max_concurrent,
            },
        },
        flowgate_store::flow::repos(&store),
        Arc::new(SystemClock),
        Arc::new(UuidV7Ids),
    );
    let app = build_app(&config, store.clone(), identity, sessions, idps, flows, schema_version.clone()).await?;
    let signal = ShutdownSignal::install()?;
    tracing::info!(
        addr = %addr,
        scheme = if tls.is_some() { "https" } else { "http" },
        backend = store.backend().as_str(),
        schema_version = %schema_version,
        "listening"
    );
    run(listener, app, tls, config.drain_timeout, signal).await;
    tracing::info!("stopped");
    Ok(())
}

/// The served API families, derived from the REST handler table and the bindings.
fn api_families(services: &[String], bindings: &[HttpBinding]) -> Vec<ApiFamily> {
    let dialects: HashMap<&str, Dialect> = bindings.iter().map(|b| (b.service.as_str(), b.dialect)).collect();
    let mut by_package: BTreeMap<String, ApiFamily> = BTreeMap::new();
    for service in services {
        let package = service.rsplit_once('.').map_or("", |(p, _)| p).to_owned();
        let dialect = match dialects.get(service.as_str()) {
            Some(Dialect::Zitadel) | None => "zitadel",
            Some(Dialect::Authentik) => "authentik",
            Some(Dialect::PingOne) => "pingone",
        };
        let family = by_package.entry(package.clone()).or_insert_with(|| ApiFamily {
            package,
            services: Vec::new(),
            rest_dialect: dialect.to_owned(),
        });
        if !family.services.contains(service) {
            family.services.push(service.clone());
        }
    }
    by_package.into_values().collect()
}

struct StorePool(Store);

impl PoolGauge for StorePool {
    fn pool_figures(&self) -> (u32, u32, u32) {
        let stats = self.0.pool_stats();
        (stats.connections, stats.idle, stats.max)
    }
}

/// Shared state of the operational endpoints.
#[derive(Clone)]
struct Ops {
    store: Store,
    metrics: Arc<HttpMetrics>,
}

/// Builds the whole HTTP application behind its edge (exposed for in-process use).
pub async fn build_app(
    config: &Config,
    store: Store,
    identity: Identity,
    sessions: Sessions,
    idps: Idps,
    flows: Flows,
    schema_version: String,
) -> Result<Edge<Router>, ServeError> {
    let started = Instant::now();
    let pool =
        prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).map_err(|e| ServeError::Api(e.to_string()))?;
    let bindings = pb::http_bindings();

    // The served families follow from the REST bindings: every API service has them.
    let mut services: Vec<String> = bindings.iter().map(|b| b.service.clone()).collect();
    services.sort();
    services.dedup();
    let facts = Arc::new(BuildFacts {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: env!("FLOWGATE_GIT_COMMIT").to_owned(),
        families: api_families(&services, &bindings),
        schema_version,
        started,
        start_time: chrono::Utc::now(),
    });
    let store_status: Arc<dyn StoreStatus> = Arc::new(store.clone());
    let system = Arc::new(SystemApi::new(facts, store_status));
    let authorizer = Authorizer::new(auth::requirement_table(&pool).map_err(ServeError::Api)?, identity.clone());
    let mut handlers = HashMap::new();
    let users = Arc::new(UserApi::new(identity.clone(), sessions.clone(), idps.clone()));
    let orgs = Arc::new(OrgApi::new(identity.clone(), UserApi::new(identity.clone(), sessions.clone(), idps.clone())));
    let idp_api = Arc::new(IdpApi::new(idps.clone()));
    let session_api = Arc::new(SessionApi::new(sessions));
    let admins = Arc::new(AdminApi::new(identity.clone()));
    let flow_api = Arc::new(FlowApi::new(flows, identity.clone()));
    handlers.extend(pb::rest::system_service_handlers(system.clone()));
    handlers.extend(pb::rest::user_service_handlers(users.clone()));
    handlers.extend(pb::rest::session_service_handlers(session_api.clone()));
    handlers.extend(pb::rest::organization_service_handlers(orgs.clone()));
    handlers.extend(pb::rest::administrator_service_handlers(admins.clone()));
    handlers.extend(pb::rest::identity_provider_service_handlers(idp_api.clone()));
    handlers.extend(pb::rest::intent_service_handlers(idp_api.clone()));
    handlers.extend(pb::rest::flow_service_handlers(flow_api.clone()));
    handlers.extend(pb::rest::stage_service_handlers(flow_api.clone()));
    handlers.extend(pb::rest::binding_service_handlers(flow_api.clone()));
    handlers.extend(pb::rest::policy_service_handlers(flow_api.clone()));
    // Every REST handler runs behind the same authorization as native gRPC.
    let handlers: HashMap<String, flowgate_gateway::Handler> =
        handlers.into_iter().map(|(path, h)| (path.clone(), authorizer.wrap(&path, h))).collect();

    // Every RPC's labels are built once, here.
    let rpc_paths = pool
        .services()
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .map(|m| format!("/{}/{}", m.parent_service().full_name(), m.name()));
    let metrics = Arc::new(HttpMetrics::new(Arc::new(StorePool(store.clone())), rpc_paths));
    let gateway_config =
        GatewayConfig { body_limit: config.body_limit, trusted_proxies: config.trusted_proxies.clone() };
    let gateway = Gateway::new(pool, bindings, handlers, gateway_config).map_err(|e| ServeError::Api(e.to_string()))?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<SystemServiceServer<SystemApi>>().await;
    health_reporter.set_serving::<UserServiceServer<UserApi>>().await;
    health_reporter.set_serving::<SessionServiceServer<SessionApi>>().await;
    health_reporter.set_serving::<OrganizationServiceServer<OrgApi>>().await;
    health_reporter.set_serving::<AdministratorServiceServer<AdminApi>>().await;
    health_reporter.set_serving::<IdentityProviderServiceServer<IdpApi>>().await;
    health_reporter.set_serving::<IntentServiceServer<IdpApi>>().await;
    health_reporter.set_serving::<FlowServiceServer<FlowApi>>().await;
    health_reporter.set_serving::<StageServiceServer<FlowApi>>().await;
    health_reporter.set_serving::<BindingServiceServer<FlowApi>>().await;
    health_reporter.set_serving::<PolicyServiceServer<FlowApi>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| ServeError::Api(e.to_string()))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| ServeError::Api(e.to_string()))?;
    let limit = config.body_limit;
    let grpc = tonic::service::Routes::new(SystemServiceServer::from_arc(system).max_decoding_message_size(limit))
        .add_service(UserServiceServer::from_arc(users).max_decoding_message_size(limit))
        .add_service(SessionServiceServer::from_arc(session_api).max_decoding_message_size(limit))
        .add_service(OrganizationServiceServer::from_arc(orgs).max_decoding_message_size(limit))
        .add_service(AdministratorServiceServer::from_arc(admins).max_decoding_message_size(limit))
        .add_service(IdentityProviderServiceServer::from_arc(idp_api.clone()).max_decoding_message_size(limit))
        .add_service(IntentServiceServer::from_arc(idp_api).max_decoding_message_size(limit))
        .add_service(FlowServiceServer::from_arc(flow_api.clone()).max_decoding_message_size(limit))
        .add_service(StageServiceServer::from_arc(flow_api.clone()).max_decoding_message_size(limit))
        .add_service(BindingServiceServer::from_arc(flow_api.clone()).max_decoding_message_size(limit))
        .add_service(PolicyServiceServer::from_arc(flow_api).max_decoding_message_size(limit))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router();
    // Both wrap the router as a whole rather than each of its routes, so a call passes each once. gRPC-web
    // answers 400 to any HTTP/1 request that is not gRPC-web, so it wraps only this router.
    let grpc = tonic_web::GrpcWebLayer::new().layer(GrpcEdgeLayer::new(authorizer, metrics.clone()).layer(grpc));

    let dispatch = tower::service_fn(move |req: Request| {
        let grpc = grpc.clone();
        let gateway = gateway.clone();
        async move {
            let is_grpc = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/grpc"));
            if is_grpc { grpc.oneshot(req).await.map(|res| res.map(Body::new)) } else { Ok(gateway.handle(req).await) }
        }
    });

    let ops = Ops { store, metrics: metrics.clone() };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(ops)
        .merge(Router::new().route(flowgate_core::idp::CALLBACK_PATH, get(crate::api::idp::callback)).with_state(idps))
        .fallback_service(dispatch);
    // The edge wraps the router as a whole: `Router::layer` would wrap each route, boxing once more per call.
    Ok(EdgeLayer::new(config.trusted_proxies.clone(), cors(&config.cors_origins), metrics).layer(app))
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers.
async fn readyz(State(ops): State<Ops>) -> Response {
    match ops.store.ping().await {
        Ok(()) => "ready\n".into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}

/// Prometheus scrape endpoint.
async fn metrics_text(State(ops): State<Ops>) -> Response {
    let body = ops.metrics.render();
    ([(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// CORS from the configured allowlist only; an empty list allows no cross-origin browser calls.
fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    let h = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([
            http::header::CONTENT_TYPE,
            http::header::AUTHORIZATION,
            h("x-grpc-web"),
            h("x-user-agent"),
            h("grpc-timeout"),
            h("x-zitadel-orgid"),
            h("x-request-id"),
            h("connect-protocol-version"),
            h("connect-timeout-ms"),
        ])
        .expose_headers([h("grpc-status"), h("grpc-message"), h("grpc-status-details-bin"), h("x-request-id")])
        .max_age(Duration::from_secs(600))
}

/// Loads the PEM certificate chain and key; failures name the configuration key.
fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs =
        CertificateDer::pem_file_iter(&files.cert).and_then(|it| it.collect::<Result<Vec<_>, _>>()).map_err(|e| {
            ServeError::Config(format!("invalid configuration key `tls_cert`: {}: {e}", files.cert.display()))
        })?;
    if certs.is_empty() {
        return Err(ServeError::Config(format!(
            "invalid configuration key `tls_cert`: {} holds no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        ServeError::Config(format!("invalid configuration key `tls_key`: {}: {e}", files.key.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Config(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Config(format!("invalid configuration key `tls_key`: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// SIGTERM/SIGINT listeners. They are registered before the server says it is listening, so a signal
/// sent the moment a supervisor sees that line is a graceful stop rather than the default kill.
struct ShutdownSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the first SIGTERM or SIGINT.
    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Accepts connections (HTTP/1.1 and h2c, or TLS with ALPN) until a signal, then drains.
async fn run(
    listener: TcpListener,
    app: Edge<Router>,
    tls: Option<TlsAcceptor>,
    drain_timeout: Duration,
    signal: ShutdownSignal,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Slow clients must not hold connections open indefinitely before sending a request.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(60)));
    let graceful = GracefulShutdown::new();
    let signal = signal.wait();
    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(req)
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!(timeout_s = drain_timeout.as_secs_f64(), "shutting down; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(drain_timeout) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}
