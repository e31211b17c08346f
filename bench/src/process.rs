//! Child processes (the flowgate server, the echo server), CPU pinning and /proc figures.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use parking_lot::Mutex;

/// Which cores the server and the load generator may use.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Cores of the server (and of the echo server and the argon2 baseline).
    pub server: Vec<usize>,
    /// Cores of the load generator; empty when not pinned.
    pub client: Vec<usize>,
    /// Whether the cores were split (`--pin`).
    pub pinned: bool,
}

impl Layout {
    /// Without pinning every process may use every allowed core; with it, the load generator gets the
    /// lower half and the server the upper half (on 2 cores: one each).
    pub fn new(pin: bool) -> Result<Self, String> {
        let allowed = allowed_cores()?;
        if !pin {
            return Ok(Self { server: allowed, client: Vec::new(), pinned: false });
        }
        if allowed.len() < 2 {
            return Err(format!("--pin needs at least 2 cores, this process may use {}", allowed.len()));
        }
        let half = allowed.len() / 2;
        Ok(Self { client: allowed[..half].to_vec(), server: allowed[half..].to_vec(), pinned: true })
    }
}

/// The cores this process may run on.
pub fn allowed_cores() -> Result<Vec<usize>, String> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(|e| format!("sched_getaffinity: {e}"))?;
    Ok((0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect())
}

/// Restricts the calling thread (and any process it spawns afterwards) to `cores`.
pub fn pin_current_thread(cores: &[usize]) -> Result<(), String> {
    if cores.is_empty() {
        return Ok(());
    }
    let mut set = CpuSet::new();
    for &core in cores {
        set.set(core).map_err(|e| format!("core {core}: {e}"))?;
    }
    // Pid 0 is the calling thread: the affinity is per thread and inherited by children.
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("sched_setaffinity: {e}"))
}

/// A child process that announced its address with a JSON `listening` log line; stopped on drop.
pub struct Child {
    child: std::process::Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its process id (for /proc figures).
    pub pid: u32,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Child {
    /// Spawns `cmd` on `cores` (all when empty) and waits up to two minutes for its `listening` line.
    pub async fn spawn(cmd: Command, cores: Vec<usize>) -> Result<Child, String> {
        tokio::task::spawn_blocking(move || Self::spawn_blocking(cmd, &cores))
            .await
            .map_err(|e| format!("spawn task: {e}"))?
    }

    fn spawn_blocking(mut cmd: Command, cores: &[usize]) -> Result<Child, String> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // A fresh thread pins itself and spawns: the child inherits that thread's affinity, and no thread
        // of the load generator is re-pinned. This needs neither taskset nor an unsafe pre-exec hook.
        let cores = cores.to_vec();
        let mut child = std::thread::spawn(move || {
            pin_current_thread(&cores)?;
            cmd.spawn().map_err(|e| format!("spawn {program}: {e}"))
        })
        .join()
        .map_err(|_| "spawn thread panicked".to_owned())??;
        let pid = child.id();
        let Some(stderr) = child.stderr.take() else {
            return Err("child has no stderr".to_owned());
        };
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let sink = Arc::clone(&logs);
        // The log is drained for the child's whole life: a full pipe would stall the server.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
                let mut logs = sink.lock();
                // Only the tail is kept, for error messages.
                if logs.len() >= 200 {
                    logs.remove(0);
                }
                logs.push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => Ok(Child { child, addr, pid, logs }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("child did not announce its address ({e}); its log:\n{}", logs.lock().join("\n")))
            }
        }
    }

    /// The last lines the child logged.
    pub fn log_tail(&self) -> String {
        self.logs.lock().join("\n")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SIGTERM lets the server drain and close its database cleanly; kill if it takes too long.
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr` of the JSON log line that announces the listener.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields").unwrap_or(&v);
    let message = fields.get("message").or_else(|| v.get("message"))?.as_str()?;
    (message == "listening").then_some(())?;
    fields.get("addr").or_else(|| v.get("addr"))?.as_str()?.parse().ok()
}

/// Resident memory and CPU time of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// User + system CPU time in seconds.
    pub cpu_seconds: f64,
}

impl ProcStats {
    /// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`; `None` when the process is gone or not Linux.
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: fields are counted after the last ')'.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); after the name, state is index 0, so 11 and 12.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(Self { rss_bytes: rss_kib * 1024, cpu_seconds: (utime + stime) as f64 / clock_ticks() })
    }
}

/// Clock ticks per second of /proc CPU times.
fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        // USER_HZ is 100 on every mainstream Linux architecture.
        Ok(_) | Err(_) => 100.0,
    }
}

/// What the report says about the machine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// CPU model from /proc/cpuinfo.
    pub cpu: String,
    /// Cores this process may use.
    pub cores: usize,
    /// Cores of the server.
    pub server_cores: Vec<usize>,
    /// Cores of the load generator (empty: not pinned).
    pub client_cores: Vec<usize>,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description from /proc.
    pub fn describe(layout: &Layout) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
            .unwrap_or("unknown")
            .to_owned();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        Self {
            cpu,
            // The load generator's threads are pinned by now: the layout knows every core of the run.
            cores: layout.server.len() + layout.client.len(),
            server_cores: layout.server.clone(),
            client_cores: layout.client.clone(),
            memory_mib: memory_kib / 1024,
            kernel,
        }
    }
}

/// This binary's path, for re-executing it as the echo server.
pub fn current_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("current executable: {e}"))
}
