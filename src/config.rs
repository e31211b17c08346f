//! Configuration: defaults → TOML file (`--config`) → environment (`FLOWGATE_*`) → flags.
//!
//! Every value remembers where it came from, so a bad value is reported with its key and source.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flowgate_gateway::IpNet;
use flowgate_idp::IssuerUrl;
use serde::Deserialize;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// PEM files for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// The external OpenID issuer whose JWTs are accepted as bearer tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuer {
    /// Issuer identifier; tokens' `iss` must equal it, its keys are discovered below it.
    pub issuer: IssuerUrl,
    /// Audience tokens must be issued for (`aud`).
    pub audience: String,
}

/// The validated configuration of a flowgate process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the one listener binds to.
    pub listen: SocketAddr,
    /// Directory for the SQLite database and generated files.
    pub data_dir: PathBuf,
    /// Database URL (`postgres://…` or `sqlite://…`); `None` means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Maximum database connections in the pool (SQLite: reader connections; the single writer comes on top).
    pub max_connections: u32,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directive (`info`, `flowgate=debug`, …).
    pub log_level: String,
    /// Origins allowed to call the API from browsers (exact match).
    pub cors_origins: Vec<String>,
    /// TLS certificate and key; `None` serves plain HTTP/1.1 and h2c.
    pub tls: Option<TlsFiles>,
    /// Largest accepted request body in bytes (JSON, gRPC and gRPC-web).
    pub body_limit: usize,
    /// Peers whose `x-forwarded-for` header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub drain_timeout: Duration,
    /// Domain under which organization domains are derived (`<org-slug>.<external_domain>`).
    pub external_domain: String,
    /// Password hashing cost and pool size.
    pub password_hashing: PasswordHashing,
    /// External JWT issuer; `None` accepts personal access tokens only.
    pub jwt: Option<JwtIssuer>,
    /// Failed-attempt limits that lock a user (0 = off).
    pub lockout: Lockout,
    /// Delivery of one-time codes.
    pub delivery: Delivery,
    /// Identity-provider federation settings.
    pub federation: Federation,
    /// Flow planning and policy evaluation limits.
    pub flows: FlowSettings,
}

/// Flow planning and expression-policy limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSettings {
    /// How long a computed flow plan is reused per (flow, user) in this process.
    pub plan_cache_ttl: Duration,
    /// Upper bound of any policy binding's timeout; an evaluation past it fails closed.
    pub policy_max_timeout: Duration,
    /// Policy evaluations running at once; more wait for a slot within their timeout.
    pub policy_max_concurrent: usize,
}

/// Settings of identity-provider federation (intents, callbacks, sealed secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federation {
    /// Public base URL of this server (`https://login.example.com`); the IdP callback is
    /// `<external_url>/idps/callback`. `None` means `http(s)://<bound listen address>`; request headers are
    /// never used to build it.
    pub external_url: Option<String>,
    /// URL prefixes success and failure URLs of intents must match (scheme, host, port exactly, path by prefix).
    pub allowed_redirect_urls: Vec<String>,
    /// Base64 of the 32-byte key sealing IdP secrets and upstream tokens; `None` reads (or creates)
    /// `<data_dir>/encryption.key`.
    pub encryption_key: Option<String>,
    /// How long a succeeded intent can be retrieved and used in a session check.
    pub intent_lifetime: Duration,
}

/// Failed attempts allowed before a user is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lockout {
    /// Wrong passwords in a row before the user is locked; 0 turns the limit off.
    pub max_password_attempts: u32,
    /// Wrong one-time codes (TOTP, SMS, e-mail) in a row before the user is locked; 0 turns it off.
    pub max_otp_attempts: u32,
}

/// Channels that deliver one-time codes; each is off when not configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// SMTP server URL, e.g. `smtp://user:pass@mail.example.com:587?tls=required`.
    pub smtp_url: Option<String>,
    /// Sender address of code e-mails.
    pub smtp_from: Option<String>,
    /// URL that receives `{"to", "code"}` as a JSON POST for each text message.
    pub sms_webhook_url: Option<String>,
}

/// argon2id cost and the bounded hashing pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordHashing {
    /// Memory per hash in KiB (OWASP: 19456).
    pub memory_kib: u32,
    /// Passes over memory (OWASP: 2).
    pub iterations: u32,
    /// Lanes (OWASP: 1).
    pub parallelism: u32,
    /// Hashes computed at once; 0 means one per CPU core.
    pub workers: usize,
    /// Hashes allowed to wait for a worker; 0 means four per worker. Beyond it, calls fail at once.
    pub queue: usize,
}

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built-in default.
    Default,
    /// The TOML file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// A configuration value that cannot be used, named by key and source.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration key `{key}` (from {origin}): {message}")]
pub struct ConfigError {
    /// The configuration key (TOML name).
    pub key: String,
    /// Where the bad value came from.
    pub origin: Source,
    /// What is wrong with it.
    pub message: String,
}

/// Raw values of one source, all optional; the TOML file has exactly these keys.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// See [`Config::listen`].
    pub listen: Option<String>,
    /// See [`Config::data_dir`].
    pub data_dir: Option<String>,
    /// See [`Config::database_url`].
    pub database_url: Option<String>,
    /// See [`Config::max_connections`].
    pub max_connections: Option<u32>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// See [`Config::log_level`].
    pub log_level: Option<String>,
    /// See [`Config::cors_origins`].
    pub cors_origins: Option<Vec<String>>,
    /// Path of the TLS certificate chain (PEM).
    pub tls_cert: Option<String>,
    /// Path of the TLS private key (PEM).
    pub tls_key: Option<String>,
    /// See [`Config::body_limit`].
    pub body_limit: Option<u64>,
    /// CIDRs or addresses, see [`Config::trusted_proxies`].
    pub trusted_proxies: Option<Vec<String>>,
    /// Seconds, or a number with `s`/`ms`/`m` suffix.
    pub drain_timeout: Option<String>,
    /// See [`Config::external_domain`].
    pub external_domain: Option<String>,
    /// See [`PasswordHashing::memory_kib`].
    pub password_hash_memory_kib: Option<u64>,
    /// See [`PasswordHashing::iterations`].
    pub password_hash_iterations: Option<u64>,
    /// See [`PasswordHashing::parallelism`].
    pub password_hash_parallelism: Option<u64>,
    /// See [`PasswordHashing::workers`].
    pub password_hash_workers: Option<u64>,
    /// See [`PasswordHashing::queue`].
    pub password_hash_queue: Option<u64>,
    /// See [`JwtIssuer::issuer`].
    pub jwt_issuer: Option<String>,
    /// See [`JwtIssuer::audience`].
    pub jwt_audience: Option<String>,
    /// See [`Lockout::max_password_attempts`].
    pub lockout_max_password_attempts: Option<u64>,
    /// See [`Lockout::max_otp_attempts`].
    pub lockout_max_otp_attempts: Option<u64>,
    /// See [`Delivery::smtp_url`].
    pub smtp_url: Option<String>,
    /// See [`Delivery::smtp_from`].
    pub smtp_from: Option<String>,
    /// See [`Delivery::sms_webhook_url`].
    pub sms_webhook_url: Option<String>,
    /// See [`Federation::external_url`].
    pub external_url: Option<String>,
    /// See [`Federation::allowed_redirect_urls`].
    pub allowed_redirect_urls: Option<Vec<String>>,
    /// See [`Federation::encryption_key`].
    pub encryption_key: Option<String>,
    /// See [`Federation::intent_lifetime`]; a duration like `1h`, `30m`, `90s`.
    pub idp_intent_lifetime: Option<String>,
    /// See [`FlowSettings::plan_cache_ttl`].
    pub flow_plan_cache_ttl: Option<String>,
    /// See [`FlowSettings::policy_max_timeout`].
    pub policy_max_timeout: Option<String>,
    /// See [`FlowSettings::policy_max_concurrent`].
    pub policy_max_concurrent: Option<u64>,
}

/// Reads a TOML file into raw values; unknown keys and wrong types are errors naming the key.
pub fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        key: "config".to_owned(),
        origin: Source::Flag("--config".to_owned()),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    toml::from_str(&text).map_err(|e| {
        let message = e.message().to_owned();
        // toml names the offending key in its message for unknown fields; for type errors the span
        // points at the value, so recover the key from the line it sits on.
        let key = e
            .span()
            .and_then(|span| text.get(..span.start))
            .and_then(|before| before.rsplit('\n').next())
            .and_then(|line| line.split('=').next())
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "config".to_owned());
        ConfigError { key, origin: Source::File(path.to_owned()), message }
    })
}

/// Reads `FLOWGATE_*` variables from `env` (a snapshot of the process environment, or a test map).
pub fn read_env(env: &HashMap<String, String>) -> Result<RawConfig, ConfigError> {
    let get = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
    let list =
        |name: &str| get(name).map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect());
    let number = |key: &str, name: &str| -> Result<Option<u64>, ConfigError> {
        get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|e| ConfigError {
                    key: key.to_owned(),
                    origin: Source::Env(name.to_owned()),
                    message: format!("{v:?} is not a number: {e}"),
                })
            })
            .transpose()
    };
    let max_connections = number("max_connections", "FLOWGATE_MAX_CONNECTIONS")?
        .map(|n| {
            u32::try_from(n).map_err(|_| ConfigError {
                key: "max_connections".to_owned(),
                origin: Source::Env("FLOWGATE_MAX_CONNECTIONS".to_owned()),
                message: "too large".to_owned(),
            })
        })
        .transpose()?;
    Ok(RawConfig {
        listen: get("FLOWGATE_LISTEN"),
        data_dir: get("FLOWGATE_DATA_DIR"),
        database_url: get("FLOWGATE_DATABASE_URL"),
        max_connections,
        log_format: get("FLOWGATE_LOG_FORMAT"),
        log_level: get("FLOWGATE_LOG_LEVEL"),
        cors_origins: list("FLOWGATE_CORS_ORIGINS"),
        tls_cert: get("FLOWGATE_TLS_CERT"),
        tls_key: get("FLOWGATE_TLS_KEY"),
        body_limit: number("body_limit", "FLOWGATE_BODY_LIMIT")?,
        trusted_proxies: list("FLOWGATE_TRUSTED_PROXIES"),
        drain_timeout: get("FLOWGATE_DRAIN_TIMEOUT"),
        external_domain: get("FLOWGATE_EXTERNAL_DOMAIN"),
        password_hash_memory_kib: number("password_hash_memory_kib", "FLOWGATE_PASSWORD_HASH_MEMORY_KIB")?,
        password_hash_iterations: number("password_hash_iterations", "FLOWGATE_PASSWORD_HASH_ITERATIONS")?,
        password_hash_parallelism: number("password_hash_parallelism", "FLOWGATE_PASSWORD_HASH_PARALLELISM")?,
        password_hash_workers: number("password_hash_workers", "FLOWGATE_PASSWORD_HASH_WORKERS")?,
        password_hash_queue: number("password_hash_queue", "FLOWGATE_PASSWORD_HASH_QUEUE")?,
        jwt_issuer: get("FLOWGATE_JWT_ISSUER"),
        jwt_audience: get("FLOWGATE_JWT_AUDIENCE"),
        lockout_max_password_attempts: number(
            "lockout_max_password_attempts",
            "FLOWGATE_LOCKOUT_MAX_PASSWORD_ATTEMPTS",
        )?,
        lockout_max_otp_attempts: number("lockout_max_otp_attempts", "FLOWGATE_LOCKOUT_MAX_OTP_ATTEMPTS")?,
        smtp_url: get("FLOWGATE_SMTP_URL"),
        smtp_from: get("FLOWGATE_SMTP_FROM"),
        sms_webhook_url: get("FLOWGATE_SMS_WEBHOOK_URL"),
        external_url: get("FLOWGATE_EXTERNAL_URL"),
        allowed_redirect_urls: list("FLOWGATE_ALLOWED_REDIRECT_URLS"),
        encryption_key: get("FLOWGATE_ENCRYPTION_KEY"),
        idp_intent_lifetime: get("FLOWGATE_IDP_INTENT_LIFETIME"),
        flow_plan_cache_ttl: get("FLOWGATE_FLOW_PLAN_CACHE_TTL"),
        policy_max_timeout: get("FLOWGATE_POLICY_MAX_TIMEOUT"),
        policy_max_concurrent: number("policy_max_concurrent", "FLOWGATE_POLICY_MAX_CONCURRENT")?,
    })
}

/// Name of the environment variable for a key, for error messages.
fn env_name(key: &str) -> String {
    format!("FLOWGATE_{}", key.to_ascii_uppercase())
}

/// Name of the flag for a key, for error messages.
fn flag_name(key: &str) -> String {
    match key {
        "cors_origins" => "--cors-origin".to_owned(),
        "trusted_proxies" => "--trusted-proxy".to_owned(),
        "allowed_redirect_urls" => "--allowed-redirect-url".to_owned(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

/// The layered sources, highest priority last.
#[derive(Debug, Default)]
pub struct Layers {
    /// Values from the TOML file and its path.
    pub file: Option<(PathBuf, RawConfig)>,
    /// Values from the environment.
    pub env: RawConfig,
    /// Values from command-line flags.
    pub flags: RawConfig,
}

impl Layers {
    /// The winning value of one key and its source.
    fn pick<T: Clone>(&self, key: &str, get: impl Fn(&RawConfig) -> Option<T>) -> Option<(T, Source)> {
        if let Some(v) = get(&self.flags) {
            return Some((v, Source::Flag(flag_name(key))));
        }
        if let Some(v) = get(&self.env) {
            return Some((v, Source::Env(env_name(key))));
        }
        if let Some((path, raw)) = &self.file
            && let Some(v) = get(raw)
        {
            return Some((v, Source::File(path.clone())));
        }
        None
    }

    /// Merges and validates the layers into a [`Config`].
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let bad =
            |key: &str, source: Source, message: String| ConfigError { key: key.to_owned(), origin: source, message };

        let listen = match self.pick("listen", |r| r.listen.clone()) {
            Some((v, src)) => v
                .parse::<SocketAddr>()
                .map_err(|e| bad("listen", src, format!("{v:?}: {e} (expected host:port, e.g. 127.0.0.1:8080)")))?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let data_dir = match self.pick("data_dir", |r| r.data_dir.clone()) {
            Some((v, src)) if v.trim().is_empty() => return Err(bad("data_dir", src, "must not be empty".to_owned())),
            Some((v, _)) => PathBuf::from(v),
            None => PathBuf::from("./data"),
        };
        let database_url = match self.pick("database_url", |r| r.database_url.clone()) {
            Some((v, src)) => {
                let ok = ["postgres://", "postgresql://", "sqlite:"].iter().any(|p| v.starts_with(p));
                if !ok {
                    return Err(bad(
                        "database_url",
                        src,
                        "must start with postgres://, postgresql:// or sqlite:".to_owned(),
                    ));
                }
                Some(v)
            }
            None => None,
        };
        let max_connections = match self.pick("max_connections", |r| r.max_connections) {
            Some((0, src)) => return Err(bad("max_connections", src, "must be at least 1".to_owned())),
            Some((n, _)) => n,
            None => default_max_connections(database_url.as_deref()),
        };
        let log_format = match self.pick("log_format", |r| r.log_format.clone()) {
            Some((v, src)) => match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => return Err(bad("log_format", src, format!("{other:?} is not one of text, json"))),
            },
            None => LogFormat::Text,
        };
        let log_level = match self.pick("log_level", |r| r.log_level.clone()) {
            Some((v, src)) => {
                tracing_subscriber::EnvFilter::try_new(&v).map_err(|e| bad("log_level", src, e.to_string()))?;
                v
            }
            None => "info".to_owned(),
        };
        let cors_origins = match self.pick("cors_origins", |r| r.cors_origins.clone()) {
            Some((list, src)) => {
                for origin in &list {
                    validate_origin(origin).map_err(|m| bad("cors_origins", src.clone(), m))?;
                }
                list
            }
            None => Vec::new(),
        };
        let tls = match (self.pick("tls_cert", |r| r.tls_cert.clone()), self.pick("tls_key", |r| r.tls_key.clone())) {
            (None, None) => None,
            (Some((cert, _)), Some((key, _))) => Some(TlsFiles { cert: cert.into(), key: key.into() }),
            (Some((_, src)), None) => return Err(bad("tls_key", src, "tls_cert is set but tls_key is not".to_owned())),
            (None, Some((_, src))) => {
                return Err(bad("tls_cert", src, "tls_key is set but tls_cert is not".to_owned()));
            }
        };
        let body_limit = match self.pick("body_limit", |r| r.body_limit) {
            Some((n, src)) if !(1024..=64 * 1024 * 1024).contains(&n) => {
                return Err(bad("body_limit", src, format!("{n} is outside 1024..=67108864 bytes")));
            }
            Some((n, src)) => usize::try_from(n).map_err(|_| bad("body_limit", src, "too large".to_owned()))?,
            None => 4 * 1024 * 1024,
        };
        let trusted_proxies = match self.pick("trusted_proxies", |r| r.trusted_proxies.clone()) {
            Some((list, src)) => list
                .iter()
                .map(|p| {
                    p.parse::<IpNet>()
                        .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| bad("trusted_proxies", src.clone(), format!("{p:?} is not an IP address or CIDR")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let drain_timeout = match self.pick("drain_timeout", |r| r.drain_timeout.clone()) {
            Some((v, src)) => parse_duration(&v)
                .ok_or_else(|| bad("drain_timeout", src, format!("{v:?} is not a duration like 30s, 500ms or 2m")))?,
            None => Duration::from_secs(30),
        };
        let external_domain = match self.pick("external_domain", |r| r.external_domain.clone()) {
            Some((v, src)) => {
                let v = v.trim().trim_end_matches('.').to_ascii_lowercase();
                let ok = !v.is_empty()
                    && v.len() <= 200
                    && v.split('.').all(|label| {
                        !label.is_empty()
                            && !label.starts_with('-')
                            && !label.ends_with('-')
                            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !ok {
                    return Err(bad("external_domain", src, format!("{v:?} is not a DNS name like login.example.com")));
                }
                v
            }
            None => "localhost".to_owned(),
        };
        let ranged =
            |key: &str, get: fn(&RawConfig) -> Option<u64>, range: std::ops::RangeInclusive<u64>, default: u64| {
                match self.pick(key, get) {
                    Some((n, src)) if !range.contains(&n) => {
                        Err(bad(key, src, format!("{n} is outside {}..={}", range.start(), range.end())))
                    }
                    Some((n, _)) => Ok(n),
                    None => Ok(default),
                }
            };
        let password_hashing = PasswordHashing {
            memory_kib: u32::try_from(ranged(
                "password_hash_memory_kib",
                |r| r.password_hash_memory_kib,
                1024..=4_194_304,
                19_456,
            )?)
            .unwrap_or(19_456),
            iterations: u32::try_from(ranged("password_hash_iterations", |r| r.password_hash_iterations, 1..=100, 2)?)
                .unwrap_or(2),
            parallelism: u32::try_from(ranged(
                "password_hash_parallelism",
                |r| r.password_hash_parallelism,
                1..=64,
                1,
            )?)
            .unwrap_or(1),
            workers: usize::try_from(ranged("password_hash_workers", |r| r.password_hash_workers, 0..=1024, 0)?)
                .unwrap_or(0),
            queue: usize::try_from(ranged("password_hash_queue", |r| r.password_hash_queue, 0..=100_000, 0)?)
                .unwrap_or(0),
        };
        let jwt = match (
            self.pick("jwt_issuer", |r| r.jwt_issuer.clone()),
            self.pick("jwt_audience", |r| r.jwt_audience.clone()),
        ) {
            (None, None) => None,
            (Some((issuer, issuer_src)), Some((audience, audience_src))) => {
                let issuer = IssuerUrl::parse(&issuer).map_err(|m| bad("jwt_issuer", issuer_src, m))?;
                if audience.trim().is_empty() || audience.trim() != audience {
                    return Err(bad(
                        "jwt_audience",
                        audience_src,
                        format!("{audience:?} must be non-empty without surrounding whitespace"),
                    ));
                }
                Some(JwtIssuer { issuer, audience })
            }
            (Some((_, src)), None) => {
                return Err(bad("jwt_audience", src, "jwt_issuer is set but jwt_audience is not".to_owned()));
            }
            (None, Some((_, src))) => {
                return Err(bad("jwt_issuer", src, "jwt_audience is set but jwt_issuer is not".to_owned()));
            }
        };
        let lockout = Lockout {
            max_password_attempts: u32::try_from(ranged(
                "lockout_max_password_attempts",
                |r| r.lockout_max_password_attempts,
                0..=1000,
                0,
            )?)
            .unwrap_or(0),
            max_otp_attempts: u32::try_from(ranged(
                "lockout_max_otp_attempts",
                |r| r.lockout_max_otp_attempts,
                0..=1000,
                0,
            )?)
            .unwrap_or(0),
        };
        let url_key = |key: &str,
                       get: fn(&RawConfig) -> Option<String>,
                       schemes: &[&str]|
         -> Result<Option<String>, ConfigError> {
            match self.pick(key, get) {
                Some((v, src)) if !schemes.iter().any(|s| v.starts_with(s)) || v.contains(char::is_whitespace) => {
                    Err(bad(key, src, format!("must be a URL starting with {}", schemes.join(" or "))))
                }
                Some((v, _)) => Ok(Some(v)),
                None => Ok(None),
            }
        };
        let delivery = Delivery {
            smtp_url: url_key("smtp_url", |r| r.smtp_url.clone(), &["smtp://", "smtps://"])?,
            smtp_from: match self.pick("smtp_from", |r| r.smtp_from.clone()) {
                Some((v, src)) if !v.contains('@') || v.contains(['\r', '\n']) => {
                    return Err(bad("smtp_from", src, format!("{v:?} is not an e-mail address")));
                }
                Some((v, _)) => Some(v),
                None => None,
            },
            sms_webhook_url: url_key("sms_webhook_url", |r| r.sms_webhook_url.clone(), &["https://", "http://"])?,
        };
        match (&delivery.smtp_url, &delivery.smtp_from) {
            (Some(_), None) => {
                let src = self.pick("smtp_url", |r| r.smtp_url.clone()).map_or(Source::Default, |(_, s)| s);
                return Err(bad("smtp_from", src, "smtp_url is set but smtp_from is not".to_owned()));
            }
            (None, Some(_)) => {
                let src = self.pick("smtp_from", |r| r.smtp_from.clone()).map_or(Source::Default, |(_, s)| s);
                return Err(bad("smtp_url", src, "smtp_from is set but smtp_url is not".to_owned()));
            }
            (Some(_), Some(_)) | (None, None) => {}
        }
        let federation = self.federation()?;
        let flows = self.flows()?;
        Ok(Config {
            listen,
            data_dir,
            database_url,
            max_connections,
            log_format,
            log_level,
            cors_origins,
            tls,
            body_limit,
            trusted_proxies,
            drain_timeout,
            external_domain,
            password_hashing,
            jwt,
            lockout,
            delivery,
            federation,
            flows,
        })
    }

    /// The flow keys: plan cache lifetime and policy evaluation limits.
    fn flows(&self) -> Result<FlowSettings, ConfigError> {
        let duration = |key: &str,
                        get: fn(&RawConfig) -> Option<String>,
                        range: std::ops::RangeInclusive<Duration>,
                        default: Duration|
         -> Result<Duration, ConfigError> {
            match self.pick(key, get) {
                Some((v, src)) => match parse_duration(&v) {
                    Some(d) if range.contains(&d) => Ok(d),
                    _ => Err(ConfigError {
                        key: key.to_owned(),
                        origin: src,
                        message: format!("{v:?} is not a duration within {:?}..={:?}", range.start(), range.end()),
                    }),
                },
                None => Ok(default),
            }
        };
        let plan_cache_ttl = duration(
            "flow_plan_cache_ttl",
            |r| r.flow_plan_cache_ttl.clone(),
            Duration::ZERO..=Duration::from_secs(3600),
            Duration::from_secs(300),
        )?;
        let policy_max_timeout = duration(
            "policy_max_timeout",
            |r| r.policy_max_timeout.clone(),
            Duration::from_millis(10)..=Duration::from_secs(300),
            Duration::from_secs(1),
        )?;
        let policy_max_concurrent = match self.pick("policy_max_concurrent", |r| r.policy_max_concurrent) {
            Some((n, src)) if !(1..=1024).contains(&n) => {
                return Err(ConfigError {
                    key: "policy_max_concurrent".to_owned(),
                    origin: src,
                    message: format!("{n} is outside 1..=1024"),
                });
            }
            Some((n, _)) => usize::try_from(n).unwrap_or(8),
            None => 8,
        };
        Ok(FlowSettings { plan_cache_ttl, policy_max_timeout, policy_max_concurrent })
    }

    /// The federation keys: external URL, redirect allowlist, sealing key, intent lifetime.
    fn federation(&self) -> Result<Federation, ConfigError> {
        let bad =
            |key: &str, source: Source, message: String| ConfigError { key: key.to_owned(), origin: source, message };
        let external_url = match self.pick("external_url", |r| r.external_url.clone()) {
            Some((v, src)) => {
                let v = v.trim_end_matches('/').to_owned();
                base_url(&v).map_err(|m| bad("external_url", src, m))?;
                Some(v)
            }
            None => None,
        };
        let allowed_redirect_urls = match self.pick("allowed_redirect_urls", |r| r.allowed_redirect_urls.clone()) {
            Some((list, src)) => {
                for entry in &list {
                    base_url(entry).map_err(|m| bad("allowed_redirect_urls", src.clone(), m))?;
                }
                list
            }
            None => Vec::new(),
        };
        let encryption_key = match self.pick("encryption_key", |r| r.encryption_key.clone()) {
            Some((v, src)) => {
                decode_key(&v).map_err(|m| bad("encryption_key", src, m))?;
                Some(v)
            }
            None => None,
        };
        let intent_lifetime = match self.pick("idp_intent_lifetime", |r| r.idp_intent_lifetime.clone()) {
            Some((v, src)) => match parse_duration(&v) {
                Some(d) if (Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&d) => d,
                Some(_) => return Err(bad("idp_intent_lifetime", src, format!("{v:?} is outside 1s..=24h"))),
                None => {
                    return Err(bad("idp_intent_lifetime", src, format!("{v:?} is not a duration like 1h or 30m")));
                }
            },
            None => Duration::from_secs(3600),
        };
        Ok(Federation { external_url, allowed_redirect_urls, encryption_key, intent_lifetime })
    }
}

/// Decodes a base64 (standard or URL-safe, padding optional) 32-byte key.
pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let text = text.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
        .map_err(|_| "is not base64".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("must decode to 32 bytes, not {}", bytes.len()))
}

/// An absolute `http(s)://host[:port][/path]` URL with no query, fragment, userinfo or whitespace.
fn base_url(v: &str) -> Result<(), String> {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or_else(|| format!("{v:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty()
        || host.contains('@')
        || v.contains(['?', '#', '\\'])
        || v.contains(char::is_whitespace)
        || v.chars().any(char::is_control)
    {
        return Err(format!("{v:?} must be scheme://host[:port][/path] without userinfo, query or fragment"));
    }
    Ok(())
}

/// An origin is `scheme://host[:port]` with nothing after it; `*` is refused because reflecting any
/// origin defeats the allowlist.
fn validate_origin(origin: &str) -> Result<(), String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| format!("{origin:?} must start with http:// or https://"))?;
    if rest.is_empty()
        || rest.contains('/')
        || rest.contains('*')
        || rest.contains('@')
        || rest.contains(char::is_whitespace)
    {
        return Err(format!("{origin:?} must be scheme://host[:port] with no path or wildcard"));
    }
    http::HeaderValue::from_str(origin).map_err(|_| format!("{origin:?} is not a valid header value"))?;
    Ok(())
}

/// `30`, `30s`, `500ms`, `2m`, `1h`.
fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.trim().parse().ok().map(Duration::from_millis);
    }
    if let Some(h) = v.strip_suffix('h') {
        return h.trim().parse::<u64>().ok().map(|h| Duration::from_secs(h * 3600));
    }
    if let Some(m) = v.strip_suffix('m') {
        return m.trim().parse::<u64>().ok().map(|m| Duration::from_secs(m * 60));
    }
    v.strip_suffix('s').unwrap_or(v).trim().parse().ok().map(Duration::from_secs)
}

/// The pool size when none is configured: 16 on PostgreSQL. On SQLite two reader connections per core,
/// from 2 to 16: reads there are CPU work on pages in memory, so more connections than that add no
/// throughput, only threads (each SQLite connection has its own) to wake for every query.
fn default_max_connections(database_url: Option<&str>) -> u32 {
    if database_url.is_some_and(|url| url.starts_with("postgres")) {
        return 16;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    u32::try_from(cores.saturating_mul(2)).unwrap_or(u32::MAX).clamp(2, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_apply() {
        let config = Layers::default().resolve().expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert!(config.database_url.is_none());
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let sqlite = u32::try_from(2 * cores).unwrap_or(16).clamp(2, 16);
        assert_eq!(config.max_connections, sqlite, "SQLite: two readers per core, 2 to 16");
    }

    #[test]
    fn pool_size_defaults_by_backend() {
        let postgres = RawConfig { database_url: Some("postgres://db/flowgate".into()), ..RawConfig::default() };
        let config = Layers { env: postgres, ..Layers::default() }.resolve().expect("valid");
        assert_eq!(config.max_connections, 16);
        let set = RawConfig {
            database_url: Some("sqlite:/tmp/x.db".into()),
            max_connections: Some(40),
            ..RawConfig::default()
        };
        let config = Layers { flags: set, ..Layers::default() }.resolve().expect("valid");
        assert_eq!(config.max_connections, 40, "a configured size is kept as it is");
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = RawConfig {
            listen: Some("127.0.0.1:1".into()),
            data_dir: Some("/f".into()),
            log_format: Some("json".into()),
            ..Default::default()
        };
        let layers = Layers {
            file: Some((PathBuf::from("c.toml"), file)),
            env: read_env(&env(&[("FLOWGATE_LISTEN", "127.0.0.1:2"), ("FLOWGATE_DATA_DIR", "/e")])).expect("env"),
            flags: RawConfig { listen: Some("127.0.0.1:3".into()), ..Default::default() },
        };
        let config = layers.resolve().expect("valid");
        assert_eq!(config.listen.port(), 3);
        assert_eq!(config.data_dir, PathBuf::from("/e"));
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_key_and_source() {
        let layers = Layers { env: read_env(&env(&[("FLOWGATE_LISTEN", "nope")])).expect("env"), ..Default::default() };
        let err = layers.resolve().expect_err("bad listen");
        assert_eq!(err.key, "listen");
        assert_eq!(err.origin, Source::Env("FLOWGATE_LISTEN".into()));
        let err = read_env(&env(&[("FLOWGATE_BODY_LIMIT", "big")])).expect_err("bad number");
        assert_eq!(err.key, "body_limit");
        for origin in ["*", "https://a.example/path", "ftp://x", "https://"] {
            let layers = Layers {
                flags: RawConfig { cors_origins: Some(vec![origin.into()]), ..Default::default() },
                ..Default::default()
            };
            assert_eq!(layers.resolve().expect_err(origin).key, "cors_origins");
        }
    }

    #[test]
    fn unknown_file_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9\"\nlisten_port = 3\n").expect("write");
        let err = read_file(&path).expect_err("unknown key");
        assert!(err.to_string().contains("listen_port"), "{err}");
        std::fs::write(&path, "body_limit = \"x\"\n").expect("write");
        assert_eq!(read_file(&path).expect_err("wrong type").key, "body_limit");
    }

    #[test]
    fn jwt_issuer_needs_an_audience_and_a_safe_url() {
        let layers = Layers {
            env: read_env(&env(&[
                ("FLOWGATE_JWT_ISSUER", "https://login.example.com/realms/main"),
                ("FLOWGATE_JWT_AUDIENCE", "flowgate"),
            ]))
            .expect("env"),
            ..Default::default()
        };
        let jwt = layers.resolve().expect("valid").jwt.expect("issuer configured");
        assert_eq!(jwt.issuer.as_str(), "https://login.example.com/realms/main");
        assert_eq!(jwt.audience, "flowgate");
        assert!(Layers::default().resolve().expect("defaults").jwt.is_none());

        let flags = |issuer: Option<&str>, audience: Option<&str>| Layers {
            flags: RawConfig {
                jwt_issuer: issuer.map(str::to_owned),
                jwt_audience: audience.map(str::to_owned),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = flags(Some("https://login.example.com"), None).resolve().expect_err("no audience");
        assert_eq!((err.key.as_str(), err.origin), ("jwt_audience", Source::Flag("--jwt-issuer".into())));
        let err = flags(None, Some("flowgate")).resolve().expect_err("no issuer");
        assert_eq!((err.key.as_str(), err.origin), ("jwt_issuer", Source::Flag("--jwt-audience".into())));
        for issuer in ["http://login.example.com", "ftp://x", "not a url", "https://a.example?x=1"] {
            let err = flags(Some(issuer), Some("flowgate")).resolve().expect_err(issuer);
            assert_eq!(err.key, "jwt_issuer", "{issuer}");
        }
        assert!(flags(Some("http://127.0.0.1:9000"), Some("flowgate")).resolve().is_ok(), "loopback http is allowed");
        assert_eq!(flags(Some("https://a.example"), Some(" ")).resolve().expect_err("blank").key, "jwt_audience");
    }

    #[test]
    fn federation_keys() {
        let defaults = Layers::default().resolve().expect("defaults").federation;
        assert!(defaults.allowed_redirect_urls.is_empty());
        assert_eq!(defaults.intent_lifetime, Duration::from_secs(3600));
        let layers = Layers {
            env: read_env(&env(&[
                ("FLOWGATE_ALLOWED_REDIRECT_URLS", "https://app.example.com/login, http://127.0.0.1:3000"),
                ("FLOWGATE_EXTERNAL_URL", "https://login.example.com/"),
                ("FLOWGATE_ENCRYPTION_KEY", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                ("FLOWGATE_IDP_INTENT_LIFETIME", "30m"),
            ]))
            .expect("env"),
            ..Default::default()
        };
        let federation = layers.resolve().expect("valid").federation;
        assert_eq!(federation.allowed_redirect_urls, ["https://app.example.com/login", "http://127.0.0.1:3000"]);
        assert_eq!(federation.external_url.as_deref(), Some("https://login.example.com"));
        assert_eq!(federation.intent_lifetime, Duration::from_secs(1800));
        let flag = |raw: RawConfig| Layers { flags: raw, ..Default::default() }.resolve().expect_err("bad");
        let err = flag(RawConfig { allowed_redirect_urls: Some(vec!["//evil.com".into()]), ..Default::default() });
        assert_eq!(
            (err.key.as_str(), err.origin),
            ("allowed_redirect_urls", Source::Flag("--allowed-redirect-url".into()))
        );
        for url in ["https://a@evil.com", "javascript:alert(1)", "https://a.example/?x=1", "https://"] {
            let err = flag(RawConfig { external_url: Some(url.into()), ..Default::default() });
            assert_eq!(err.key, "external_url", "{url}");
        }
        let err = flag(RawConfig { encryption_key: Some("c2hvcnQ=".into()), ..Default::default() });
        assert_eq!(err.key, "encryption_key");
        let err = flag(RawConfig { idp_intent_lifetime: Some("25h".into()), ..Default::default() });
        assert_eq!(err.key, "idp_intent_lifetime");
    }

    #[test]
    fn flow_keys() {
        let flows = Layers::default().resolve().expect("defaults").flows;
        assert_eq!(flows.policy_max_timeout, Duration::from_secs(1));
        let layers = Layers {
            env: read_env(&env(&[("FLOWGATE_POLICY_MAX_TIMEOUT", "250ms"), ("FLOWGATE_POLICY_MAX_CONCURRENT", "2")]))
                .expect("env"),
            ..Default::default()
        };
        let flows = layers.resolve().expect("valid").flows;
        assert_eq!((flows.policy_max_timeout, flows.policy_max_concurrent), (Duration::from_millis(250), 2));
        let bad = Layers {
            flags: RawConfig { policy_max_timeout: Some("1ms".into()), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(bad.resolve().expect_err("too short").key, "policy_max_timeout");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("soon"), None);
    }
}
