//! Rows, ratios, the targets of the performance issue, the table on stdout and the JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Measured;

/// One line of the report: a scenario (or a baseline) over one protocol.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario name (`baseline-…` for baselines).
    pub name: String,
    /// `grpc`, `grpc-web`, `json`, or what a baseline ran on.
    pub protocol: String,
    /// Successful requests (or operations) per second.
    pub rps: f64,
    /// Latency quantiles of successful requests, in milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p90_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
    /// Failures by gRPC code name (or TRANSPORT).
    pub errors: BTreeMap<String, u64>,
    /// The baseline rate this row is compared with.
    pub baseline: Option<f64>,
    /// Which baseline: `echo`, `argon2id`, `commit`.
    pub baseline_name: Option<String>,
    /// `rps / baseline`.
    pub ratio: Option<f64>,
    /// Every applicable ratio: to `echo`, `commit`, `argon2id`, and to the same scenario over `grpc`.
    pub ratios: BTreeMap<String, f64>,
    /// Successful requests in the window.
    pub requests: u64,
    /// Length of the measured window in seconds.
    pub window_s: f64,
    /// Server CPU time (user+system) spent in the window, in seconds.
    pub server_cpu_s: Option<f64>,
    /// Server CPU per successful request, in microseconds.
    pub server_cpu_us_per_request: Option<f64>,
    /// Server resident memory at the end of the window, in MiB.
    pub server_rss_mb: Option<f64>,
    /// Anything unusual about the run (e.g. it ended early).
    pub note: Option<String>,
    /// Scenario-specific figures (the overload scenario's refusals).
    pub extra: Option<serde_json::Value>,
}

impl Row {
    /// A row from a measured run.
    pub fn measured(name: &str, protocol: &str, m: &Measured) -> Self {
        let cpu = match (m.proc_start, m.proc_end) {
            (Some(a), Some(b)) => Some((b.cpu_seconds - a.cpu_seconds).max(0.0)),
            (Some(_), None) | (None, Some(_)) | (None, None) => None,
        };
        Row {
            name: name.to_owned(),
            protocol: protocol.to_owned(),
            rps: m.rps(),
            p50_ms: m.quantile_ms(0.5),
            p90_ms: m.quantile_ms(0.9),
            p99_ms: m.quantile_ms(0.99),
            p999_ms: m.quantile_ms(0.999),
            errors: m.errors.iter().map(|(k, v)| (k.clone(), v.count)).collect(),
            baseline: None,
            baseline_name: None,
            ratio: None,
            ratios: BTreeMap::new(),
            requests: m.ok,
            window_s: m.window.as_secs_f64(),
            server_cpu_s: cpu,
            server_cpu_us_per_request: cpu.filter(|_| m.ok > 0).map(|c| c * 1e6 / m.ok as f64),
            server_rss_mb: m.proc_end.map(|p| p.rss_bytes as f64 / 1_048_576.0),
            note: m.exhausted.then(|| "ended early: no session left to delete".to_owned()),
            extra: None,
        }
    }

    /// A row for a rate measured outside the load loop (argon2id, commits).
    pub fn rate(name: &str, protocol: &str, rps: f64) -> Self {
        Row {
            name: name.to_owned(),
            protocol: protocol.to_owned(),
            rps,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            errors: BTreeMap::new(),
            baseline: None,
            baseline_name: None,
            ratio: None,
            ratios: BTreeMap::new(),
            requests: 0,
            window_s: 0.0,
            server_cpu_s: None,
            server_cpu_us_per_request: None,
            server_rss_mb: None,
            note: None,
            extra: None,
        }
    }
}

/// The baseline rates of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Baselines {
    /// Echo GetInfo per second, by protocol.
    pub echo: BTreeMap<String, f64>,
    /// argon2id verifies per second on the server's cores.
    pub argon2id_verify_per_s: Option<f64>,
    /// The same, measured again right before each password run, by `"<scenario> <protocol>"`; that run's
    /// baseline.
    pub argon2id_adjacent: BTreeMap<String, f64>,
    /// Single-row insert+commit per second.
    pub commit_per_s: Option<f64>,
}

impl Baselines {
    /// The argon2id rate a password run is judged by: the one measured next to it, else the run's first.
    pub fn argon2id_for(&self, name: &str, protocol: &str) -> Option<f64> {
        self.argon2id_adjacent.get(&format!("{name} {protocol}")).copied().or(self.argon2id_verify_per_s)
    }
}

/// Which baselines a scenario is compared with; the first is its primary baseline.
fn baselines_of(name: &str) -> &'static [&'static str] {
    match name {
        "get-info" | "get-session" | "overload/get-session" => &["echo"],
        "create-session-user" | "set-session-metadata" | "delete-session" | "start-idp-intent" | "flow-patch" => {
            &["commit", "echo"]
        }
        "create-session-password" | "overload/password" => &["argon2id"],
        _ => &[],
    }
}

/// Fills in every row's ratios from the baselines and from the gRPC row of the same scenario.
pub fn add_ratios(rows: &mut [Row], baselines: &Baselines) {
    let grpc: BTreeMap<String, f64> =
        rows.iter().filter(|r| r.protocol == "grpc").map(|r| (r.name.clone(), r.rps)).collect();
    for row in rows.iter_mut() {
        for (i, &kind) in baselines_of(&row.name).iter().enumerate() {
            let base = match kind {
                "echo" => baselines.echo.get(&row.protocol).copied(),
                "commit" => baselines.commit_per_s,
                "argon2id" => baselines.argon2id_for(&row.name, &row.protocol),
                _ => None,
            };
            let Some(base) = base.filter(|b| *b > 0.0) else { continue };
            let ratio = row.rps / base;
            row.ratios.insert(kind.to_owned(), ratio);
            if i == 0 {
                row.baseline = Some(base);
                row.baseline_name = Some(kind.to_owned());
                row.ratio = Some(ratio);
            }
        }
        if row.protocol != "grpc"
            && let Some(g) = grpc.get(&row.name).filter(|g| **g > 0.0)
        {
            row.ratios.insert("grpc".to_owned(), row.rps / g);
        }
    }
}

/// One target of the performance issue and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is asked, e.g. `get-session grpc ≥ 0.5 × echo`.
    pub target: String,
    /// The measured value.
    pub value: f64,
    /// The bound.
    pub bound: f64,
    /// Whether the value is within the bound.
    pub met: bool,
}

fn at_least(target: String, value: f64, bound: f64) -> Target {
    Target { target, value, bound, met: value >= bound }
}

fn at_most(target: String, value: f64, bound: f64) -> Target {
    Target { target, value, bound, met: value <= bound }
}

/// Server memory figures outside the scenarios.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerMemory {
    /// RSS one second after start, in MiB.
    pub rss_idle_mb: Option<f64>,
    /// RSS after the fixtures were created, in MiB.
    pub rss_after_bootstrap_mb: Option<f64>,
}

/// The issue's targets, evaluated on this run's rows.
pub fn targets(rows: &[Row], memory: &ServerMemory) -> Vec<Target> {
    let mut out = Vec::new();
    let find = |name: &str, protocol: &str| rows.iter().find(|r| r.name == name && r.protocol == protocol);
    for row in rows.iter().filter(|r| !r.name.starts_with("baseline") && !r.name.starts_with("overload")) {
        if let Some(v) = row.ratios.get("grpc") {
            out.push(at_least(format!("{} {} ≥ 0.9 × grpc", row.name, row.protocol), *v, 0.9));
        }
    }
    if let Some(v) = find("get-info", "grpc").and_then(|r| r.ratios.get("echo")) {
        out.push(at_least("get-info grpc ≥ 0.9 × echo".to_owned(), *v, 0.9));
    }
    for row in rows.iter().filter(|r| r.name == "get-session") {
        if let Some(v) = row.ratios.get("echo") {
            out.push(at_least(format!("get-session {} ≥ 0.5 × echo", row.protocol), *v, 0.5));
        }
    }
    for row in rows.iter().filter(|r| r.name == "create-session-user") {
        if let Some(v) = row.ratios.get("echo") {
            out.push(at_least(format!("create-session-user {} ≥ 0.3 × echo", row.protocol), *v, 0.3));
        }
        if let Some(v) = row.ratios.get("commit") {
            out.push(at_least(format!("create-session-user {} ≥ 0.5 × commit", row.protocol), *v, 0.5));
        }
    }
    for row in rows.iter().filter(|r| r.name == "create-session-password") {
        if let Some(v) = row.ratios.get("argon2id") {
            out.push(at_least(format!("create-session-password {} ≥ 0.85 × argon2id", row.protocol), *v, 0.85));
        }
    }
    for row in rows.iter().filter(|r| r.name == "overload/password") {
        let refused = row.extra.as_ref().and_then(|e| e.get("refused_within_1s_fraction")).and_then(|v| v.as_f64());
        if let Some(v) = refused {
            out.push(at_least(format!("overload {}: refusals answered within 1 s (fraction)", row.protocol), v, 1.0));
        }
        let mut other: u64 = row.errors.iter().filter(|(k, _)| *k != "RESOURCE_EXHAUSTED").map(|(_, v)| v).sum();
        if let Some(get) = find("overload/get-session", &row.protocol) {
            out.push(at_most(format!("overload {}: get-session p99 ms", row.protocol), get.p99_ms, 50.0));
            other += get.errors.iter().filter(|(k, _)| *k != "RESOURCE_EXHAUSTED").map(|(_, v)| v).sum::<u64>();
            if let Some(rss) = get.server_rss_mb {
                out.push(at_most(format!("overload {}: server RSS MiB at the end", row.protocol), rss, 150.0));
            }
        }
        out.push(at_most(
            format!("overload {}: errors other than RESOURCE_EXHAUSTED", row.protocol),
            other as f64,
            0.0,
        ));
    }
    if let Some(rss) = memory.rss_idle_mb {
        out.push(at_most("server RSS MiB idle".to_owned(), rss, 40.0));
    }
    out
}

fn ms(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// The table printed on stdout.
pub fn table(rows: &[Row], targets: &[Target]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<26} {:<10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:<18} {:>7} {:>7}  errors",
        "scenario",
        "protocol",
        "rps",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "cpu µs/r",
        "rss MiB",
        "ratio",
        "÷echo",
        "÷grpc"
    );
    for r in rows {
        let ratio = match (&r.ratio, &r.baseline_name) {
            (Some(v), Some(b)) => format!("{v:.3} × {b}"),
            (Some(_), None) | (None, Some(_)) | (None, None) => "-".to_owned(),
        };
        let opt = |v: Option<&f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        let errors = if r.errors.is_empty() {
            String::new()
        } else {
            r.errors.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        };
        let note = r.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
        let extra = r
            .extra
            .as_ref()
            .and_then(|e| e.get("summary"))
            .and_then(|s| s.as_str())
            .map(|s| format!(" [{s}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<26} {:<10} {:>10.1} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:<18} {:>7} {:>7}  {errors}{note}{extra}",
            r.name,
            r.protocol,
            r.rps,
            ms(r.p50_ms),
            ms(r.p90_ms),
            ms(r.p99_ms),
            ms(r.p999_ms),
            r.server_cpu_us_per_request.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            r.server_rss_mb.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
            ratio,
            opt(r.ratios.get("echo")),
            opt(r.ratios.get("grpc")),
        );
    }
    if !targets.is_empty() {
        let _ = writeln!(out, "\ntargets (issue 7; they apply to SQLite)");
        for t in targets {
            let _ = writeln!(
                out,
                "  {:<4} {:<62} {:>10.3}  (bound {})",
                if t.met { "met" } else { "MISS" },
                t.target,
                t.value,
                t.bound
            );
        }
    }
    out
}
