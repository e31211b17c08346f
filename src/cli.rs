//! Command line: `flowgate serve | migrate | check-config`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, ConfigError, Layers, RawConfig};

/// Exit code for unusable configuration (EX_USAGE from sysexits.h), so supervisors can tell a bad
/// deployment from a crash.
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "flowgate", version, about = "Headless login-flow, session and identity-federation service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: native gRPC, gRPC-web and JSON on one port.
    Serve(Flags),
    /// Apply database migrations and exit.
    Migrate(Flags),
    /// Validate the configuration and exit (code 64 when invalid).
    CheckConfig(Flags),
    /// Operator tasks on an existing instance.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Print a new personal access token for an existing machine user (e.g. after losing admin.pat).
    CreateToken {
        /// The machine user, by id or username.
        #[arg(long, value_name = "ID|USERNAME")]
        user: String,
        /// Lifetime of the token, e.g. 30d, 12h or 90m; without it the token does not expire.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        #[command(flatten)]
        flags: Flags,
    },
}

/// What to do once the configuration is valid.
#[derive(Debug)]
pub enum Action {
    /// Serve until a signal.
    Serve,
    /// Apply migrations.
    Migrate,
    /// Only validate the configuration.
    CheckConfig,
    /// Create a token for a machine user.
    CreateToken {
        /// Id or username.
        user: String,
        /// Optional lifetime.
        expires_in: Option<std::time::Duration>,
    },
}

/// `30d`, `12h`, `90m`, `45s`.
fn parse_lifetime(v: &str) -> Option<std::time::Duration> {
    let v = v.trim();
    let (number, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "d" => n.checked_mul(86_400)?,
        "h" => n.checked_mul(3_600)?,
        "m" => n.checked_mul(60)?,
        "s" => n,
        _ => return None,
    };
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// Flags shared by every subcommand; each overrides the same key from the file and environment.
#[derive(Debug, Args)]
struct Flags {
    /// TOML configuration file (also FLOWGATE_CONFIG).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Data directory for the SQLite database and generated files [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Database URL: postgres://… for PostgreSQL, sqlite:… for another SQLite file.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Maximum database connections [default: 16].
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. info or flowgate=debug [default: info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Browser origin allowed by CORS (repeatable), e.g. https://login.example.com.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// TLS certificate chain (PEM); serve HTTPS with HTTP/2 and HTTP/1.1.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// Largest request body in bytes [default: 4194304].
    #[arg(long, value_name = "BYTES")]
    body_limit: Option<u64>,
    /// Proxy address or CIDR whose x-forwarded-for is trusted (repeatable).
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<String>,
    /// Time in-flight requests get to finish on shutdown, e.g. 30s [default: 30s].
    #[arg(long, value_name = "DURATION")]
    drain_timeout: Option<String>,
    /// Domain organization domains are derived under [default: localhost].
    #[arg(long, value_name = "DOMAIN")]
    external_domain: Option<String>,
    /// argon2id memory per hash in KiB [default: 19456].
    #[arg(long, value_name = "KIB")]
    password_hash_memory_kib: Option<u64>,
    /// argon2id passes [default: 2].
    #[arg(long, value_name = "N")]
    password_hash_iterations: Option<u64>,
    /// argon2id lanes [default: 1].
    #[arg(long, value_name = "N")]
    password_hash_parallelism: Option<u64>,
    /// Password hashes computed at once; 0 = one per core [default: 0].
    #[arg(long, value_name = "N")]
    password_hash_workers: Option<u64>,
    /// Password hashes allowed to wait; 0 = four per worker [default: 0].
    #[arg(long, value_name = "N")]
    password_hash_queue: Option<u64>,
    /// OpenID issuer whose JWTs are accepted as bearer tokens, e.g. https://login.example.com.
    #[arg(long, value_name = "URL")]
    jwt_issuer: Option<String>,
    /// Audience (`aud`) the issuer's JWTs must carry; required with --jwt-issuer.
    #[arg(long, value_name = "AUDIENCE")]
    jwt_audience: Option<String>,
    /// Wrong passwords in a row before a user is locked; 0 = no limit [default: 0].
    #[arg(long, value_name = "N")]
    lockout_max_password_attempts: Option<u64>,
    /// Wrong one-time codes in a row before a user is locked; 0 = no limit [default: 0].
    #[arg(long, value_name = "N")]
    lockout_max_otp_attempts: Option<u64>,
    /// SMTP server for code e-mails, e.g. smtp://user:pass@mail.example.com:587?tls=required.
    #[arg(long, value_name = "URL")]
    smtp_url: Option<String>,
    /// Sender address of code e-mails.
    #[arg(long, value_name = "ADDRESS")]
    smtp_from: Option<String>,
    /// Webhook receiving {"to","code"} for each text message.
    #[arg(long, value_name = "URL")]
    sms_webhook_url: Option<String>,
    /// Public base URL of this server, e.g. https://login.example.com [default: the bound address].
    #[arg(long, value_name = "URL")]
    external_url: Option<String>,
    /// URL prefix allowed as an IdP intent's success or failure URL (repeatable).
    #[arg(long = "allowed-redirect-url", value_name = "URL")]
    allowed_redirect_urls: Vec<String>,
    /// Base64 32-byte key sealing IdP secrets [default: <data-dir>/encryption.key, created on first start].
    #[arg(long, value_name = "BASE64")]
    encryption_key: Option<String>,
    /// How long a succeeded IdP intent stays usable, e.g. 1h [default: 1h].
    #[arg(long, value_name = "DURATION")]
    idp_intent_lifetime: Option<String>,
    /// How long a flow plan is reused per flow and user, e.g. 5m; 0 turns the cache off [default: 5m].
    #[arg(long, value_name = "DURATION")]
    flow_plan_cache_ttl: Option<String>,
    /// Longest an expression policy may run before it fails closed, e.g. 500ms [default: 1s].
    #[arg(long, value_name = "DURATION")]
    policy_max_timeout: Option<String>,
    /// Expression policies evaluated at once [default: 8].
    #[arg(long, value_name = "N")]
    policy_max_concurrent: Option<u64>,
}

impl Flags {
    fn into_raw(self) -> (Option<PathBuf>, RawConfig) {
        let list = |v: Vec<String>| (!v.is_empty()).then_some(v);
        let Flags {
            config,
            listen,
            data_dir,
            database_url,
            max_connections,
            log_format,
            log_level,
            cors_origins,
            tls_cert,
            tls_key,
            body_limit,
            trusted_proxies,
            drain_timeout,
            external_domain,
            password_hash_memory_kib,
            password_hash_iterations,
            password_hash_parallelism,
            password_hash_workers,
            password_hash_queue,
            jwt_issuer,
            jwt_audience,
            lockout_max_password_attempts,
            lockout_max_otp_attempts,
            smtp_url,
            smtp_from,
            sms_webhook_url,
            external_url,
            allowed_redirect_urls,
            encryption_key,
            idp_intent_lifetime,
            flow_plan_cache_ttl,
            policy_max_timeout,
            policy_max_concurrent,
        } = self;
        let raw = RawConfig {
            listen,
            data_dir,
            database_url,
            max_connections,
            log_format,
            log_level,
            cors_origins: list(cors_origins),
            tls_cert,
            tls_key,
            body_limit,
            trusted_proxies: list(trusted_proxies),
            drain_timeout,
            external_domain,
            password_hash_memory_kib,
            password_hash_iterations,
            password_hash_parallelism,
            password_hash_workers,
            password_hash_queue,
            jwt_issuer,
            jwt_audience,
            lockout_max_password_attempts,
            lockout_max_otp_attempts,
            smtp_url,
            smtp_from,
            sms_webhook_url,
            external_url,
            allowed_redirect_urls: list(allowed_redirect_urls),
            encryption_key,
            idp_intent_lifetime,
            flow_plan_cache_ttl,
            policy_max_timeout,
            policy_max_concurrent,
        };
        (config, raw)
    }
}

/// Builds the configuration from flags, the process environment and the optional file.
fn load(flags: Flags) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("FLOWGATE_")).collect();
    let (config_path, flags) = flags.into_raw();
    let config_path = config_path.or_else(|| env.get("FLOWGATE_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from));
    let file = match config_path {
        Some(path) => {
            let raw = config::read_file(&path)?;
            Some((path, raw))
        }
        None => None,
    };
    let layers = Layers { file, env: config::read_env(&env)?, flags };
    layers.resolve()
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let (flags, action) = match cli.command {
        Command::Serve(f) => (f, Action::Serve),
        Command::Migrate(f) => (f, Action::Migrate),
        Command::CheckConfig(f) => (f, Action::CheckConfig),
        Command::Admin(AdminCommand::CreateToken { user, expires_in, flags }) => {
            let expires_in = match expires_in.as_deref().map(|v| parse_lifetime(v).ok_or(v)) {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(v)) => {
                    eprintln!(
                        "flowgate: invalid --expires-in {v:?}: expected a positive duration like 30d, 12h or 90m"
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            (flags, Action::CreateToken { user, expires_in })
        }
    };
    let config = match load(flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("flowgate: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if matches!(action, Action::CheckConfig) {
        println!("configuration is valid (listen {}, data dir {})", config.listen, config.data_dir.display());
        return ExitCode::SUCCESS;
    }
    crate::telemetry::init(config.log_format, &config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("flowgate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match action {
            Action::Migrate => crate::server::migrate(&config).await,
            Action::CreateToken { user, expires_in } => crate::server::create_token(&config, &user, expires_in).await,
            Action::Serve | Action::CheckConfig => crate::server::serve(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "flowgate stopped with an error");
            eprintln!("flowgate: {err}");
            if matches!(err, crate::server::ServeError::Config(_)) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_lifetime;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d").map(|d| d.as_secs()), Some(30 * 86_400));
        assert_eq!(parse_lifetime("12h").map(|d| d.as_secs()), Some(12 * 3_600));
        assert_eq!(parse_lifetime("0d"), None);
        assert_eq!(parse_lifetime("d"), None);
        assert_eq!(parse_lifetime("3w"), None);
        assert_eq!(parse_lifetime("99999999999999999999d"), None);
    }
}
