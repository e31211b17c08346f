//! Test harness: spawns the real `flowgate` binary on 127.0.0.1:0 with a fresh database and offers
//! the three clients (tonic gRPC, gRPC-web frames over HTTP/1.1, JSON over HTTP/1.1).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// A running server and its scratch space; killed on drop.
pub struct Server {
    child: Child,
    /// Bound address.
    pub addr: SocketAddr,
    /// The data directory (SQLite file, generated files), removed when the server is dropped.
    data_dir: std::sync::Arc<tempfile::TempDir>,
    /// The PostgreSQL database of this server, if any.
    database_url: Option<String>,
    /// Extra flags, kept for restarts.
    extra: Vec<String>,
    logs: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

/// A database URL of its own for one server, from `FLOWGATE_TEST_DATABASE_URL` (PostgreSQL), or
/// `None` for the default SQLite file in the data directory.
pub async fn isolated_database() -> Option<String> {
    let base = std::env::var("FLOWGATE_TEST_DATABASE_URL").ok().filter(|v| !v.is_empty())?;
    Some(flowgate_store::testing::isolated_database_url(&base).await.expect("create isolated test database"))
}

impl Server {
    /// Starts a server with default settings.
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra `serve` flags.
    pub async fn start_with(extra: &[&str]) -> Server {
        let data_dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
        let database_url = isolated_database().await;
        let extra = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::spawn(data_dir, database_url, extra).await
    }

    /// Stops this server (SIGTERM) and starts a new one on the same data directory and database.
    pub async fn restart(mut self) -> Server {
        let pid = self.child.id().expect("pid");
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let data_dir = self.data_dir.clone();
        let database_url = self.database_url.take();
        let extra = std::mem::take(&mut self.extra);
        drop(self);
        Self::spawn(data_dir, database_url, extra).await
    }

    /// A second server process on the same data directory and database (as replicas run).
    pub async fn sibling(&self) -> Server {
        Self::spawn(self.data_dir.clone(), self.database_url.clone(), self.extra.clone()).await
    }

    async fn spawn(
        data_dir: std::sync::Arc<tempfile::TempDir>,
        database_url: Option<String>,
        extra: Vec<String>,
    ) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowgate"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "info"])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(url) = &database_url {
            cmd.arg("--database-url").arg(url);
        }
        let mut child = cmd.spawn().expect("spawn flowgate");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<SocketAddr, String>>();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = listening_addr(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(Ok(addr));
                }
                sink.lock().await.push(line);
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(Err(sink.lock().await.join("\n")));
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(120), rx).await {
            Ok(Ok(Ok(addr))) => addr,
            Ok(Ok(Err(logs))) => panic!("flowgate exited before listening:\n{logs}"),
            other => panic!("flowgate did not start: {other:?}"),
        };
        let http = reqwest::Client::builder().http1_only().build().expect("http client");
        Server { child, addr, data_dir, database_url, extra, logs, http }
    }

    /// Runs another `flowgate` command on this server's data directory and database.
    pub async fn run_cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowgate"));
        cmd.args(args).args(["--log-format", "json"]).arg("--data-dir").arg(self.data_dir.path());
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.output().await.expect("run flowgate")
    }

    /// Everything the database holds, as text: the SQLite files' bytes, or a `pg_dump` of PostgreSQL.
    pub async fn database_dump(&self) -> String {
        match &self.database_url {
            Some(url) => {
                let out = Command::new("pg_dump").arg("--data-only").arg(url).output().await.expect("pg_dump");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            None => {
                let mut text = String::new();
                for name in ["flowgate.db", "flowgate.db-wal"] {
                    if let Ok(bytes) = std::fs::read(self.data_dir.path().join(name)) {
                        text.push_str(&String::from_utf8_lossy(&bytes));
                    }
                }
                text
            }
        }
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Whether this server runs on PostgreSQL (else SQLite).
    pub fn on_postgres(&self) -> bool {
        self.database_url.is_some()
    }

    /// How long a change made on this server may take to reach a sibling's caches, which trust an entry
    /// for 2 s. On PostgreSQL the change is announced and the sibling forgets the entry at once: `announced`
    /// is chosen well inside those 2 s, so a test that passes needs the announcements to work. On SQLite (two
    /// processes on one file, as during a restart) the sibling sees it when its entry ages out.
    pub fn sibling_sees_changes_within(&self, announced: std::time::Duration) -> std::time::Duration {
        if self.on_postgres() { announced } else { std::time::Duration::from_secs(5) }
    }

    /// An HTTP/1.1 client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A tonic channel (HTTP/2, h2c).
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url("")).expect("endpoint").connect().await.expect("connect grpc")
    }

    /// The admin machine user's token that the first start wrote to `<data-dir>/admin.pat`.
    pub fn admin_token(&self) -> String {
        let path = self.data_dir.path().join("admin.pat");
        std::fs::read_to_string(&path).expect("admin.pat").trim().to_owned()
    }

    /// Path of a file in the data directory.
    pub fn data_file(&self, name: &str) -> std::path::PathBuf {
        self.data_dir.path().join(name)
    }

    /// Every log line so far.
    pub async fn logs(&self) -> Vec<String> {
        self.logs.lock().await.clone()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid");
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("exit in time").expect("wait")
    }

    /// One unary gRPC-web call over HTTP/1.1 with `application/grpc-web+proto`.
    pub async fn grpc_web<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &str,
        req: &Req,
        headers: &[(&str, &str)],
    ) -> GrpcWebReply<Resp> {
        let mut body = BytesMut::new();
        let msg = req.encode_to_vec();
        body.put_u8(0);
        body.put_u32(u32::try_from(msg.len()).expect("small"));
        body.put_slice(&msg);
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(body.freeze());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let res = request.send().await.expect("grpc-web send");
        let http_status = res.status().as_u16();
        let response_headers = res.headers().clone();
        let bytes = res.bytes().await.expect("grpc-web body");
        parse_grpc_web(http_status, &response_headers, bytes)
    }
}

impl Drop for Server {
    /// A failing test shows the server's log, which is usually where the reason is.
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(lines) = self.logs.try_lock()
        {
            eprintln!("--- flowgate log ({} lines) ---\n{}", lines.len(), lines.join("\n"));
        }
    }
}

/// The `addr` of the JSON log line that announces the listener.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v.get("message")?.as_str()? == "listening").then_some(())?;
    v.get("addr")?.as_str()?.parse().ok()
}

/// A decoded gRPC-web answer.
#[derive(Debug)]
pub struct GrpcWebReply<T> {
    /// HTTP status of the response.
    pub http_status: u16,
    /// `grpc-status` from the trailer frame or the headers.
    pub grpc_status: i32,
    /// `grpc-message`, percent-decoded.
    pub grpc_message: String,
    /// The message, if one came.
    pub message: Option<T>,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
}

fn parse_grpc_web<T: prost::Message + Default>(
    http_status: u16,
    headers: &reqwest::header::HeaderMap,
    mut bytes: Bytes,
) -> GrpcWebReply<T> {
    let mut message = None;
    let mut trailers = String::new();
    while bytes.remaining() >= 5 {
        let flag = bytes.get_u8();
        let len = bytes.get_u32() as usize;
        let frame = bytes.split_to(len.min(bytes.remaining()));
        if flag & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(&frame));
        } else {
            message = Some(T::decode(frame).expect("decode grpc-web message"));
        }
    }
    let mut fields: Vec<(String, String)> = trailers
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    for key in ["grpc-status", "grpc-message"] {
        if let Some(v) = headers.get(key).and_then(|v| v.to_str().ok()) {
            fields.push((key.to_owned(), v.to_owned()));
        }
    }
    let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    GrpcWebReply {
        http_status,
        grpc_status: get("grpc-status").and_then(|s| s.parse().ok()).unwrap_or(-1),
        grpc_message: get("grpc-message").map(|m| percent_decode(&m)).unwrap_or_default(),
        message,
        headers: headers.clone(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The three ways to reach an RPC; every API scenario runs over each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// tonic client over HTTP/2.
    Grpc,
    /// gRPC-web frames over HTTP/1.1.
    GrpcWeb,
    /// REST/JSON over HTTP/1.1.
    Json,
}

/// All three protocols.
pub const PROTOCOLS: [Protocol; 3] = [Protocol::Grpc, Protocol::GrpcWeb, Protocol::Json];

/// Calls `get` on a server until `done` accepts its answer within `within`.
pub async fn eventually<T, F>(
    what: &str,
    within: std::time::Duration,
    mut get: impl AsyncFnMut() -> Result<T, crate::client::Failure>,
    done: F,
) where
    T: std::fmt::Debug,
    F: Fn(&Result<T, crate::client::Failure>) -> bool,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        let answer = get().await;
        if done(&answer) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: still {answer:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
