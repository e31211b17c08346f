//! flowgate-bench: drives a real flowgate server over gRPC, gRPC-web and JSON and compares every
//! scenario with baselines measured in the same run (a bare echo server on the same stack, the argon2id
//! verify rate, the database's raw commit rate). See `bench/README.md`.

mod baseline;
mod client;
mod echo;
mod issuer;
mod load;
mod process;
mod report;
mod scenario;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use flowgate::pb::flowgate::system::v1 as system;
use prost::Message as _;

use crate::baseline::Argon2Params;
use crate::client::{Client, Protocol};
use crate::load::{Drive, Measured};
use crate::process::{Child, Layout, Machine, ProcStats};
use crate::report::{Baselines, Row, ServerMemory};
use crate::scenario::{Fixtures, Scenario};

#[derive(Parser)]
#[command(name = "flowgate-bench", about = "Load generator for flowgate with same-run baselines")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Sub {
    /// The transport baseline's server (started by the benchmark itself).
    #[command(hide = true)]
    EchoServer {
        /// File holding the protobuf-encoded GetInfoResponse to answer.
        #[arg(long)]
        reply: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// The flowgate binary to start.
    #[arg(long, default_value = "target/release/flowgate")]
    server_bin: PathBuf,
    /// Target a running server instead of starting one (needs --token).
    #[arg(long, requires = "token")]
    addr: Option<SocketAddr>,
    /// Admin PAT of the server at --addr.
    #[arg(long)]
    token: Option<String>,
    /// Process id of the server at --addr, for its RSS and CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// PostgreSQL URL for the started server (an empty database); SQLite in a temporary directory otherwise.
    #[arg(long)]
    database_url: Option<String>,
    /// Recorded time per scenario and protocol, e.g. 10s, 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unrecorded time before each measurement.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// TCP connections per client (HTTP/1.1 carries one request per connection at a time).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests in flight (closed loop: callers; open loop: the cap on outstanding requests).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Open loop: start this many requests per second; closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Scenario to run (repeatable); all when absent.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Protocol to run (repeatable); all when absent.
    #[arg(long = "protocol", value_enum)]
    protocols: Vec<Protocol>,
    /// Pin the server (upper half of the cores) and the load generator (lower half) apart.
    #[arg(long)]
    pin: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Human users to create (CreateSession spreads over them).
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// argon2id memory in KiB of the server (passed to a started server and used by the baseline).
    #[arg(long, default_value_t = 19456)]
    password_hash_memory_kib: u32,
    /// argon2id passes of the server.
    #[arg(long, default_value_t = 2)]
    password_hash_iterations: u32,
    /// argon2id lanes of the server.
    #[arg(long, default_value_t = 1)]
    password_hash_parallelism: u32,
    /// Database pool size of the started server (absent: the server's default, 16 on PostgreSQL); also the
    /// PostgreSQL commit baseline's writers.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Extra argument for `flowgate serve` (repeatable), e.g. --server-arg=--log-level=warn.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

/// `10s`, `500ms`, `2m` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number.parse().map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::EchoServer { reply }) => tokio::runtime::Runtime::new()
            .map_err(|e| format!("runtime: {e}"))
            .and_then(|rt| rt.block_on(echo::serve(&reply))),
        None => bench(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the load generator's runtime (on its own cores when pinned) and runs the benchmark.
fn bench(args: RunArgs) -> Result<(), String> {
    let layout = Layout::new(args.pin)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if layout.pinned {
        process::pin_current_thread(&layout.client)?;
        builder.worker_threads(layout.client.len().max(1));
        let cores = layout.client.clone();
        // Worker and blocking threads are created lazily; each pins itself as it starts.
        builder.on_thread_start(move || {
            let _ = process::pin_current_thread(&cores);
        });
    }
    let runtime = builder.build().map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(Bench::run(args, layout))
}

/// The server under test and what the run knows about it.
struct Target {
    addr: SocketAddr,
    token: String,
    pid: Option<u32>,
    child: Option<Child>,
    _data_dir: Option<tempfile::TempDir>,
}

struct Bench {
    args: RunArgs,
    layout: Layout,
    target: Target,
    protocols: Vec<Protocol>,
    rows: Vec<Row>,
    baselines: Baselines,
}

impl Bench {
    async fn run(args: RunArgs, layout: Layout) -> Result<(), String> {
        let target = start_target(&args, &layout).await?;
        let mut memory = ServerMemory::default();
        if let Some(pid) = target.pid {
            // Idle: started, migrated, nothing asked yet.
            tokio::time::sleep(Duration::from_secs(1)).await;
            memory.rss_idle_mb = ProcStats::of(pid).map(|p| mib(p.rss_bytes));
        }
        let mut protocols = if args.protocols.is_empty() { Protocol::ALL.to_vec() } else { args.protocols.clone() };
        protocols.sort();
        protocols.dedup();
        let mut bench = Bench { args, layout, target, protocols, rows: Vec::new(), baselines: Baselines::default() };
        let result = bench.measure(&mut memory).await;
        if let Err(e) = &result
            && let Some(child) = &bench.target.child
        {
            eprintln!("server log (tail):\n{}", child.log_tail());
            eprintln!("flowgate-bench: {e}");
        }
        result?;
        report::add_ratios(&mut bench.rows, &bench.baselines);
        let targets = report::targets(&bench.rows, &memory);
        let machine = Machine::describe(&bench.layout);
        let database = if bench.args.database_url.is_some() { "postgresql" } else { "sqlite" };
        println!(
            "\nflowgate-bench: {database}, {} cores ({}), pinned: {}, {} s per run after {} s warm-up, {} connections, {} in flight{}",
            machine.cores,
            machine.cpu,
            bench.layout.pinned,
            bench.args.duration.as_secs_f64(),
            bench.args.warmup.as_secs_f64(),
            bench.args.connections,
            bench.args.in_flight,
            bench.args.rate.map(|r| format!(", open loop at {r}/s")).unwrap_or_default(),
        );
        if let Some(rss) = memory.rss_idle_mb {
            println!(
                "server RSS idle {rss:.1} MiB, after bootstrap {:.1} MiB",
                memory.rss_after_bootstrap_mb.unwrap_or(0.0)
            );
        }
        println!("{}", report::table(&bench.rows, &targets));
        if let Some(path) = &bench.args.out {
            let json = serde_json::json!({
                "machine": machine,
                "database": database,
                "settings": {
                    "duration_s": bench.args.duration.as_secs_f64(),
                    "warmup_s": bench.args.warmup.as_secs_f64(),
                    "connections": bench.args.connections,
                    "in_flight": bench.args.in_flight,
                    "rate": bench.args.rate,
                    "pinned": bench.layout.pinned,
                    "argon2id": bench.argon2_params(),
                },
                "server": memory,
                "baselines": bench.baselines,
                "scenarios": bench.rows,
                "targets": targets,
            });
            let text = serde_json::to_string_pretty(&json).map_err(|e| format!("report: {e}"))?;
            std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
            println!("report written to {}", path.display());
        }
        Ok(())
    }

    fn argon2_params(&self) -> Argon2Params {
        Argon2Params {
            memory_kib: self.args.password_hash_memory_kib,
            iterations: self.args.password_hash_iterations,
            parallelism: self.args.password_hash_parallelism,
        }
    }

    fn drive(&self, in_flight: usize, rate: Option<f64>, pid: Option<u32>) -> Drive {
        Drive { warmup: self.args.warmup, duration: self.args.duration, in_flight, rate, pid }
    }

    /// Time for the baselines that are not driven through the load loop.
    fn baseline_time(&self) -> Duration {
        self.args.duration.clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    async fn client(&self, protocol: Protocol, addr: SocketAddr, token: Option<&str>) -> Result<Client, String> {
        Client::connect(protocol, addr, self.args.connections, token).await
    }

    async fn measure(&mut self, memory: &mut ServerMemory) -> Result<(), String> {
        let addr = self.target.addr;
        let root = Client::connect(Protocol::Grpc, addr, 1, Some(&self.target.token)).await?;
        let info: system::GetInfoResponse = root
            .call(scenario::GET_INFO, system::GetInfoRequest {})
            .await
            .map_err(|e| format!("GetInfo: {} {}", e.kind(), e.message))?;
        eprintln!("server {} at {addr}, schema {}", info.version, info.schema_version);
        let mut scenarios =
            if self.args.scenarios.is_empty() { Scenario::ALL.to_vec() } else { self.args.scenarios.clone() };
        scenarios.sort();
        scenarios.dedup();
        eprintln!("bootstrapping {} users and {} sessions …", self.args.users, 2 * self.args.in_flight);
        let mut fixtures = Fixtures::bootstrap(&root, addr, self.args.users, self.args.in_flight).await?;
        if scenarios.contains(&Scenario::StartIdpIntent) {
            let issuer = issuer::start().await?;
            eprintln!("OIDC provider for intents at {}", issuer.url);
            fixtures.add_oidc_provider(&root, &issuer.url).await?;
        }
        if scenarios.contains(&Scenario::FlowPatch) {
            eprintln!("creating {} flows …", self.args.in_flight);
            fixtures.add_flows(&root, self.args.in_flight).await?;
        }
        let fixtures = Arc::new(fixtures);
        if let Some(pid) = self.target.pid {
            memory.rss_after_bootstrap_mb = ProcStats::of(pid).map(|p| mib(p.rss_bytes));
        }

        self.measure_baselines(&info).await?;

        let mut last_delete_rps: Option<f64> = None;
        for scenario in scenarios {
            for protocol in self.protocols.clone() {
                if let Some(name) = scenario.password_run() {
                    self.argon2_next_to(name, protocol).await?;
                }
                eprintln!("running {} over {} …", scenario.name(), protocol.name());
                match scenario {
                    Scenario::Overload => self.overload(protocol, &fixtures).await?,
                    Scenario::DeleteSession => {
                        self.fill_stock(&fixtures, last_delete_rps).await?;
                        let row = self.scenario(scenario, protocol, &fixtures).await?;
                        last_delete_rps = Some(row.rps);
                        self.rows.push(row);
                    }
                    Scenario::GetInfo
                    | Scenario::GetSession
                    | Scenario::CreateSessionUser
                    | Scenario::CreateSessionPassword
                    | Scenario::SetSessionMetadata
                    | Scenario::StartIdpIntent
                    | Scenario::FlowPatch => {
                        let row = self.scenario(scenario, protocol, &fixtures).await?;
                        self.rows.push(row);
                    }
                }
            }
        }
        Ok(())
    }

    /// The echo server on the server's cores, the argon2id rate, the commit rate.
    async fn measure_baselines(&mut self, info: &system::GetInfoResponse) -> Result<(), String> {
        let reply_dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let reply = reply_dir.path().join("get-info.pb");
        std::fs::write(&reply, info.encode_to_vec()).map_err(|e| format!("{}: {e}", reply.display()))?;
        let mut cmd = Command::new(process::current_exe()?);
        cmd.arg("echo-server").arg("--reply").arg(&reply);
        let echo = Child::spawn(cmd, self.server_cores()).await?;
        for protocol in self.protocols.clone() {
            eprintln!("baseline: echo over {} …", protocol.name());
            let client = self.client(protocol, echo.addr, None).await?;
            let measured = load::run(&self.drive(self.args.in_flight, self.args.rate, Some(echo.pid)), move |_, _| {
                scenario::get_info(client.clone())
            })
            .await;
            self.baselines.echo.insert(protocol.name().to_owned(), measured.rps());
            self.rows.push(Row::measured("baseline-echo", protocol.name(), &measured));
        }
        drop(echo);

        let cores = self.layout.server.clone();
        eprintln!("baseline: argon2id verify on {} thread(s) …", cores.len());
        let rate =
            baseline::argon2_verify_rate(self.argon2_params(), cores.clone(), self.layout.pinned, self.baseline_time())
                .await?;
        self.baselines.argon2id_verify_per_s = Some(rate);
        let p = self.argon2_params();
        let label = format!("m={},t={},p={} ×{}", p.memory_kib, p.iterations, p.parallelism, cores.len());
        self.rows.push(Row::rate("baseline-argon2id-verify", &label, rate));

        eprintln!("baseline: single-row insert+commit …");
        let (rate, label) = match &self.args.database_url {
            Some(url) => {
                // The server's pool on PostgreSQL: as configured, or its default of 16.
                let writers = self.args.max_connections.unwrap_or(16).min(self.args.in_flight).max(1);
                (
                    baseline::postgres_commit_rate(url, writers, self.baseline_time()).await?,
                    format!("postgresql ×{writers}"),
                )
            }
            None => (
                baseline::sqlite_commit_rate(self.server_cores(), self.baseline_time()).await?,
                "sqlite wal/normal".to_owned(),
            ),
        };
        self.baselines.commit_per_s = Some(rate);
        self.rows.push(Row::rate("baseline-db-commit", &label, rate));
        Ok(())
    }

    /// Measures the argon2id rate again right before a password run, as that run's baseline: these machines
    /// slow down under sustained load, so a rate taken minutes earlier flatters or wrongs the run.
    async fn argon2_next_to(&mut self, name: &str, protocol: Protocol) -> Result<(), String> {
        let cores = self.layout.server.clone();
        eprintln!("baseline: argon2id verify next to {name} over {} …", protocol.name());
        let rate =
            baseline::argon2_verify_rate(self.argon2_params(), cores, self.layout.pinned, self.baseline_time()).await?;
        self.baselines.argon2id_adjacent.insert(format!("{name} {}", protocol.name()), rate);
        Ok(())
    }

    /// Cores for processes standing in for the server: its cores when pinned, any otherwise.
    fn server_cores(&self) -> Vec<usize> {
        if self.layout.pinned { self.layout.server.clone() } else { Vec::new() }
    }

    /// Password checks keep the server's hashing pool (one worker per core, four queued per worker) busy
    /// without overflowing its queue: two per server core.
    fn password_in_flight(&self) -> usize {
        self.args.in_flight.min(2 * self.layout.server.len().max(1)).max(1)
    }

    async fn scenario(&self, scenario: Scenario, protocol: Protocol, fixtures: &Arc<Fixtures>) -> Result<Row, String> {
        let addr = self.target.addr;
        let token = fixtures.login_token.clone();
        let client = match scenario {
            Scenario::GetInfo => self.client(protocol, addr, None).await?,
            Scenario::GetSession
            | Scenario::CreateSessionUser
            | Scenario::CreateSessionPassword
            | Scenario::SetSessionMetadata
            | Scenario::DeleteSession
            | Scenario::StartIdpIntent
            | Scenario::Overload => self.client(protocol, addr, Some(&token)).await?,
            // Changing flows needs flow.write, which the login client does not have.
            Scenario::FlowPatch => self.client(protocol, addr, Some(&self.target.token)).await?,
        };
        let pid = self.target.pid;
        let f = Arc::clone(fixtures);
        let in_flight = self.args.in_flight;
        let measured = match scenario {
            Scenario::GetInfo => {
                load::run(&self.drive(in_flight, self.args.rate, pid), move |_, _| scenario::get_info(client.clone()))
                    .await
            }
            Scenario::GetSession | Scenario::Overload => {
                load::run(&self.drive(in_flight, self.args.rate, pid), move |_, seq| {
                    scenario::get_session(client.clone(), Arc::clone(&f), seq)
                })
                .await
            }
            Scenario::CreateSessionUser => {
                load::run(&self.drive(in_flight, self.args.rate, pid), move |_, seq| {
                    scenario::create_session(client.clone(), Arc::clone(&f), seq, false)
                })
                .await
            }
            Scenario::CreateSessionPassword => {
                load::run(&self.drive(self.password_in_flight(), self.args.rate, pid), move |_, seq| {
                    scenario::create_session(client.clone(), Arc::clone(&f), seq, true)
                })
                .await
            }
            Scenario::SetSessionMetadata => {
                load::run(&self.drive(in_flight, self.args.rate, pid), move |slot, seq| {
                    scenario::set_session(client.clone(), Arc::clone(&f), slot, seq)
                })
                .await
            }
            Scenario::DeleteSession => {
                load::run(&self.drive(in_flight, self.args.rate, pid), move |_, _| {
                    scenario::delete_session(client.clone(), Arc::clone(&f))
                })
                .await
            }
            Scenario::StartIdpIntent => {
                load::run(&self.drive(in_flight, self.args.rate, pid), move |_, _| {
                    scenario::start_idp_intent(client.clone(), Arc::clone(&f))
                })
                .await
            }
            Scenario::FlowPatch => {
                load::run(&self.drive(in_flight, self.args.rate, pid), move |slot, seq| {
                    scenario::flow_patch(client.clone(), Arc::clone(&f), slot, seq)
                })
                .await
            }
        };
        Ok(Row::measured(scenario.name(), protocol.name(), &measured))
    }

    /// Makes sure DeleteSession has fresh sessions for a whole run: CreateSession runs before it fill the
    /// stock; otherwise (or when the last DeleteSession run used more) sessions are created here.
    async fn fill_stock(&self, fixtures: &Arc<Fixtures>, last_delete_rps: Option<f64>) -> Result<(), String> {
        let total = (self.args.warmup + self.args.duration).as_secs_f64();
        let needed = last_delete_rps.map_or(1, |rps| (rps * total * 1.2) as usize);
        if fixtures.stock.lock().len() >= needed {
            return Ok(());
        }
        eprintln!("creating sessions for delete-session …");
        let client = self.client(Protocol::Grpc, self.target.addr, Some(&fixtures.login_token)).await?;
        // One round creates a warm-up plus a window's worth; deleting can be faster than creating, so
        // rounds go on until the stock suffices (a few at most: the rates differ by less than 2×).
        for _ in 0..4 {
            let f = Arc::clone(fixtures);
            let client = client.clone();
            let drive = Drive {
                warmup: Duration::ZERO,
                duration: self.args.warmup + self.args.duration,
                in_flight: self.args.in_flight,
                rate: None,
                pid: None,
            };
            let made =
                load::run(&drive, move |_, seq| scenario::create_session(client.clone(), Arc::clone(&f), seq, false))
                    .await;
            if made.ok == 0 {
                return Err(format!("could not create sessions to delete: {:?}", made.errors));
            }
            if fixtures.stock.lock().len() >= needed {
                break;
            }
        }
        Ok(())
    }

    /// Password checks offered at twice the measured hashing capacity (open loop) while GetSession runs
    /// closed-loop beside them on connections of its own.
    async fn overload(&mut self, protocol: Protocol, fixtures: &Arc<Fixtures>) -> Result<(), String> {
        let capacity = self.baselines.argon2id_for("overload/password", protocol.name()).unwrap_or(1.0).max(1.0);
        let offered = 2.0 * capacity;
        let addr = self.target.addr;
        let token = fixtures.login_token.clone();
        // HTTP/1.1 needs a connection per outstanding call: enough that the client never holds calls back.
        // HTTP/2 multiplexes them on the usual connections.
        let connections = match protocol {
            Protocol::Grpc => self.args.connections,
            Protocol::GrpcWeb | Protocol::Json => 256,
        };
        let password_client = Client::connect(protocol, addr, connections, Some(&token)).await?;
        let read_client = self.client(protocol, addr, Some(&token)).await?;
        let f = Arc::clone(fixtures);
        let password_drive = Drive {
            warmup: self.args.warmup,
            duration: self.args.duration,
            in_flight: 1024,
            rate: Some(offered),
            pid: None,
        };
        let read_drive = self.drive(self.args.in_flight, None, self.target.pid);
        let g = Arc::clone(fixtures);
        let (passwords, reads): (Measured, Measured) = tokio::join!(
            load::run(&password_drive, move |_, seq| {
                scenario::create_session(password_client.clone(), Arc::clone(&f), seq, true)
            }),
            load::run(&read_drive, move |_, seq| scenario::get_session(read_client.clone(), Arc::clone(&g), seq)),
        );
        let refused = passwords.errors.get("RESOURCE_EXHAUSTED").cloned().unwrap_or_default();
        let fraction = if refused.count > 0 { refused.within_1s as f64 / refused.count as f64 } else { 1.0 };
        let mut row = Row::measured("overload/password", protocol.name(), &passwords);
        row.extra = Some(serde_json::json!({
            "offered_per_s": passwords.offered as f64 / passwords.window.as_secs_f64().max(1e-9),
            "refused": refused.count,
            "refused_within_1s": refused.within_1s,
            "refused_within_1s_fraction": fraction,
            "summary": format!(
                "offered {:.0}/s, refused {} ({:.1}% within 1 s)",
                passwords.offered as f64 / passwords.window.as_secs_f64().max(1e-9),
                refused.count,
                fraction * 100.0
            ),
        }));
        self.rows.push(row);
        self.rows.push(Row::measured("overload/get-session", protocol.name(), &reads));
        Ok(())
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Starts the flowgate binary on a fresh data directory, or takes `--addr` as it is.
async fn start_target(args: &RunArgs, layout: &Layout) -> Result<Target, String> {
    if let Some(addr) = args.addr {
        let token = args.token.clone().ok_or("--addr needs --token")?;
        return Ok(Target { addr, token, pid: args.server_pid, child: None, _data_dir: None });
    }
    if !args.server_bin.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release --bin flowgate` or pass --server-bin",
            args.server_bin.display()
        ));
    }
    let data_dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let mut cmd = Command::new(&args.server_bin);
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .arg("--password-hash-memory-kib")
        .arg(args.password_hash_memory_kib.to_string())
        .arg("--password-hash-iterations")
        .arg(args.password_hash_iterations.to_string())
        .arg("--password-hash-parallelism")
        .arg(args.password_hash_parallelism.to_string())
        // Where start-idp-intent sends the browser; the URLs are never visited.
        .arg("--allowed-redirect-url")
        .arg(scenario::REDIRECT_PREFIX);
    if let Some(url) = &args.database_url {
        cmd.arg("--database-url").arg(url);
    }
    if let Some(n) = args.max_connections {
        cmd.arg("--max-connections").arg(n.to_string());
    }
    cmd.args(&args.server_args);
    let cores = if layout.pinned { layout.server.clone() } else { Vec::new() };
    let child = Child::spawn(cmd, cores).await?;
    let token_file = data_dir.path().join("admin.pat");
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| format!("{}: {e} (is the database empty?)", token_file.display()))?
        .trim()
        .to_owned();
    Ok(Target { addr: child.addr, token, pid: Some(child.pid), child: Some(child), _data_dir: Some(data_dir) })
}
