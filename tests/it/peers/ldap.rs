//! The LDAP peer: Debian's `slapd` with a throw-away configuration and database in a temporary
//! directory, loaded from `tests/peers/ldap/base.ldif`, serving plain LDAP (with StartTLS) and LDAPS
//! with a server certificate for 127.0.0.1 signed by a per-run test CA.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Mutex;

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
/// How long slapd may take to open its database and answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with fresh ports: a port found free can be taken by another test before slapd binds it.
const START_ATTEMPTS: usize = 3;

/// Runs slapd (arguments after the script) and ends it when our end of the wrapper's stdin closes,
/// which happens on drop and also when the test process dies without unwinding: slapd stays in the
/// foreground (`-d 0`) and would otherwise outlive the tests holding its ports.
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" </dev/null &
pid=$!
{ read -r _ <&3; kill "$pid" 2>/dev/null; } &
wait "$pid""#;

/// A running slapd with the test directory; stopped on drop, its files removed.
pub struct LdapPeer {
    /// `ldap://127.0.0.1:<port>` (plain, StartTLS available).
    pub url: String,
    /// `ldaps://127.0.0.1:<port>`.
    pub ldaps_url: String,
    /// PEM of the test CA that signed the server certificate (SAN IP 127.0.0.1, DNS localhost).
    pub ca_pem: String,
    /// The service account allowed to search (`cn=reader,dc=example,dc=test`).
    pub bind_dn: String,
    /// The service account's password.
    pub bind_password: String,
    /// `dc=example,dc=test`; users are under `ou=people` (see `tests/peers/ldap/base.ldif`).
    pub base_dn: String,
    logs: Arc<Mutex<Vec<String>>>,
    // Field order is drop order: closing stdin stops slapd (watchdog), the kill ends the wrapper, and
    // only then is the directory removed.
    _stdin: ChildStdin,
    _child: Child,
    _dir: tempfile::TempDir,
}

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/ldap")
}

/// The test CA and the server certificate it signed, as PEM.
struct TestPki {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

fn test_pki() -> TestPki {
    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "flowgate LDAP test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign CA");

    let server_key = KeyPair::generate().expect("generate server key");
    // rcgen turns "127.0.0.1" into an IP address SAN, which is what clients connecting by IP verify.
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server certificate parameters");
    server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::from_params(&ca, &ca_key);
    let server_cert = server.signed_by(&server_key, &issuer).expect("sign server certificate");
    TestPki { ca_pem: ca_cert.pem(), server_pem: server_cert.pem(), server_key_pem: server_key.serialize_pem() }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn write_private(path: &Path, contents: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(contents.as_bytes()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl LdapPeer {
    /// Creates the directory (config, TLS files, database loaded with slapadd), starts slapd on two
    /// free ports and waits until it answers an LDAP bind. Panics with instructions when slapd is not
    /// installed: a test needing this peer must fail, never skip.
    pub async fn start() -> LdapPeer {
        for tool in [SLAPD, SLAPADD] {
            assert!(
                Path::new(tool).is_file(),
                "{tool} is missing: the LDAP test peer needs Debian's slapd \
                 (`DEBIAN_FRONTEND=noninteractive apt-get install -y slapd ldap-utils`; .ci/run does this)"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("data")).expect("create data directory");
        let pki = test_pki();
        std::fs::write(root.join("ca.pem"), &pki.ca_pem).expect("write ca.pem");
        std::fs::write(root.join("server.pem"), &pki.server_pem).expect("write server.pem");
        write_private(&root.join("server.key"), &pki.server_key_pem);

        // The manager's password only lets tests with the config file change entries; slapd accepts a
        // clear-text rootpw, and the file is private to this run.
        let root_password = format!("admin-{:032x}", rand::rng().random::<u128>());
        let template = std::fs::read_to_string(peer_dir().join("slapd.conf.in")).expect("read slapd.conf.in");
        let root_str = root.to_str().expect("temporary directory path is UTF-8");
        let config = template.replace("@DIR@", root_str).replace("@ROOTPW@", &root_password);
        let config_path = root.join("slapd.conf");
        write_private(&config_path, &config);

        let ldif = peer_dir().join("base.ldif");
        let loaded = Command::new(SLAPADD)
            .arg("-q")
            .arg("-f")
            .arg(&config_path)
            .arg("-l")
            .arg(&ldif)
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {SLAPADD}: {e}"));
        assert!(
            loaded.status.success(),
            "slapadd could not load {}: {}{}",
            ldif.display(),
            String::from_utf8_lossy(&loaded.stdout),
            String::from_utf8_lossy(&loaded.stderr)
        );

        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let (ldap_port, ldaps_port) = (free_port(), free_port());
            match Self::spawn(&config_path, ldap_port, ldaps_port).await {
                Ok((child, stdin, logs)) => {
                    return LdapPeer {
                        url: format!("ldap://127.0.0.1:{ldap_port}"),
                        ldaps_url: format!("ldaps://127.0.0.1:{ldaps_port}"),
                        ca_pem: pki.ca_pem,
                        bind_dn: "cn=reader,dc=example,dc=test".to_owned(),
                        bind_password: "reader-password".to_owned(),
                        base_dn: "dc=example,dc=test".to_owned(),
                        logs,
                        _stdin: stdin,
                        _child: child,
                        _dir: dir,
                    };
                }
                Err(failure) => failures.push(failure),
            }
        }
        panic!("slapd did not start:\n{}", failures.join("\n---\n"))
    }

    /// What slapd wrote to stderr so far (for failure messages).
    pub async fn logs(&self) -> String {
        self.logs.lock().await.join("\n")
    }

    /// Starts slapd under the watchdog and waits until the plain port answers a bind and the LDAPS
    /// port accepts connections; an error carries slapd's output.
    async fn spawn(
        config: &Path,
        ldap_port: u16,
        ldaps_port: u16,
    ) -> Result<(Child, ChildStdin, Arc<Mutex<Vec<String>>>), String> {
        let urls = format!("ldap://127.0.0.1:{ldap_port}/ ldaps://127.0.0.1:{ldaps_port}/");
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(SLAPD)
            .arg("-h")
            .arg(&urls)
            .arg("-f")
            .arg(config)
            .args(["-d", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {SLAPD}: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().await.push(line);
            }
        });

        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the stderr reader catch up with what slapd wrote before it ended.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Err(format!("slapd -h {urls:?} exited ({status}):\n{}", logs.lock().await.join("\n")));
            }
            let plain = SocketAddr::from((Ipv4Addr::LOCALHOST, ldap_port));
            let tls = SocketAddr::from((Ipv4Addr::LOCALHOST, ldaps_port));
            if anonymous_bind_succeeds(plain).await && TcpStream::connect(tls).await.is_ok() {
                return Ok((child, stdin, logs));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "slapd -h {urls:?} did not answer within {START_TIMEOUT:?}:\n{}",
                    logs.lock().await.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends an anonymous LDAPv3 simple bind (message id 1) and checks for a successful BindResponse:
/// a TCP accept alone can come from the kernel's backlog before slapd serves requests.
async fn anonymous_bind_succeeds(addr: SocketAddr) -> bool {
    // SEQUENCE { messageID 1, [APPLICATION 0] BindRequest { version 3, name "", [0] simple "" } }
    const BIND: [u8; 14] = [0x30, 0x0c, 0x02, 0x01, 0x01, 0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00];
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(&BIND).await.ok()?;
        let mut reply = [0u8; 64];
        let mut read = 0;
        // SEQUENCE, length, messageID 1, [APPLICATION 1] BindResponse, length, ENUMERATED resultCode.
        while read < 10 {
            let n = stream.read(&mut reply[read..]).await.ok()?;
            if n == 0 {
                return None;
            }
            read += n;
        }
        Some(reply)
    };
    match tokio::time::timeout(Duration::from_secs(2), exchange).await {
        Ok(Some(reply)) => {
            reply[0] == 0x30
                && reply[2..5] == [0x02, 0x01, 0x01]
                && reply[5] == 0x61
                && reply[7..10] == [0x0a, 0x01, 0x00]
        }
        Ok(None) | Err(_) => false,
    }
}
