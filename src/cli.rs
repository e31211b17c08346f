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
    let (flags, command) = match cli.command {
        Command::Serve(f) => (f, "serve"),
        Command::Migrate(f) => (f, "migrate"),
        Command::CheckConfig(f) => (f, "check-config"),
    };
    let config = match load(flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("flowgate: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if command == "check-config" {
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
        match command {
            "migrate" => crate::server::migrate(&config).await,
            _ => crate::server::serve(config).await,
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
