//! The OpenID provider peer: `tests/peers/oidc/server.js` (npm `oidc-provider`) run by node on
//! loopback, and a login that walks its pages with plain HTTP the way a browser would.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use reqwest::redirect::Policy;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Mutex;

/// How long node may take to load the provider and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects and form posts one login may take before it counts as a loop.
const MAX_LOGIN_STEPS: usize = 12;

/// A running OpenID provider with one confidential client; the node process ends on drop.
pub struct OidcPeer {
    /// Issuer URL (`http://127.0.0.1:<port>`), also the base of the discovery document.
    pub issuer: String,
    /// The registered client's id (`flowgate-test`).
    pub client_id: String,
    /// The registered client's secret (random per peer).
    pub client_secret: String,
    redirect_uris: Vec<String>,
    logs: Arc<Mutex<Vec<String>>>,
    // Field order is drop order: closing stdin tells the peer to exit, the kill makes sure of it.
    _stdin: ChildStdin,
    _child: Child,
}

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/oidc")
}

impl OidcPeer {
    /// Starts the provider with client `flowgate-test` allowed to redirect to `redirect_uris`.
    /// Panics with instructions when node or the npm packages are missing: a test needing this peer
    /// must fail, never skip.
    pub async fn start(redirect_uris: &[String]) -> OidcPeer {
        assert!(!redirect_uris.is_empty(), "OidcPeer::start needs at least one redirect URI");
        let dir = peer_dir();
        assert!(
            dir.join("node_modules/oidc-provider/package.json").is_file(),
            "the OpenID test peer's npm packages are missing: run `npm ci` in {} (.ci/run does this)",
            dir.display()
        );
        let client_secret = format!("secret-{:032x}", rand::rng().random::<u128>());
        let mut cmd = Command::new("node");
        cmd.arg("server.js")
            .current_dir(&dir)
            .env("PORT", "0")
            .env("CLIENT_SECRET", &client_secret)
            .env("REDIRECT_URIS", redirect_uris.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(err) => panic!("cannot run `node` for the OpenID test peer (node 20 or later must be on PATH): {err}"),
        };
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");

        let logs = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().await.push(line);
            }
        });

        let mut stdout = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, stdout.next_line()).await;
        let line = match ready {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child.wait().await;
                // Let the stderr reader catch up with what the process wrote before it ended.
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!("the OpenID test peer exited before listening ({status:?}):\n{}", logs.lock().await.join("\n"))
            }
            Err(_) => panic!(
                "the OpenID test peer did not listen within {START_TIMEOUT:?}:\n{}",
                logs.lock().await.join("\n")
            ),
        };
        // Keep reading stdout so the peer can never block on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

        let ready: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("the OpenID test peer's ready line is not JSON ({err}): {line}"));
        let issuer = ready["issuer"]
            .as_str()
            .unwrap_or_else(|| panic!("the OpenID test peer's ready line has no issuer: {line}"))
            .to_owned();
        OidcPeer {
            issuer,
            client_id: "flowgate-test".to_owned(),
            client_secret,
            redirect_uris: redirect_uris.to_vec(),
            logs,
            _stdin: stdin,
            _child: child,
        }
    }

    /// Logs `username` (`alice` or `bob`) in at the provider, starting from `auth_url` (the
    /// authorization URL a relying party built), the way a browser would: follows the provider's
    /// redirects with a fresh cookie jar, submits the login form (consent is part of it) and returns
    /// the URL the provider finally sends the browser to, i.e. one of the registered redirect URIs
    /// with `code`/`state` (or `error`). An error names the step that did not go as a login should.
    pub async fn login(&self, auth_url: &str, username: &str) -> Result<String, String> {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let issuer = reqwest::Url::parse(&self.issuer).map_err(|e| format!("issuer {}: {e}", self.issuer))?;
        let mut url = reqwest::Url::parse(auth_url).map_err(|e| format!("auth URL {auth_url:?}: {e}"))?;
        for _ in 0..MAX_LOGIN_STEPS {
            if url.origin() != issuer.origin() {
                return Err(format!("the login left the provider for {url} (not a registered redirect URI)"));
            }
            let response = http.get(url.clone()).send().await.map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status();
            let next = if status.is_redirection() {
                location(&url, &response)?
            } else if status.is_success() && url.path().starts_with("/interaction/") {
                let page = response.text().await.map_err(|e| format!("GET {url}: {e}"))?;
                let action = form_action(&page).ok_or_else(|| format!("no login form at {url}: {page}"))?;
                let target = url.join(&action).map_err(|e| format!("form action {action:?}: {e}"))?;
                let response = http
                    .post(target.clone())
                    .form(&[("login", username)])
                    .send()
                    .await
                    .map_err(|e| format!("POST {target}: {e}"))?;
                if !response.status().is_redirection() {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(format!("login as {username:?} refused ({status}): {body}"));
                }
                location(&target, &response)?
            } else {
                let body = response.text().await.unwrap_or_default();
                return Err(format!("GET {url} answered {status}: {body}"));
            };
            if self.is_redirect_uri(&next) {
                return Ok(next.to_string());
            }
            url = next;
        }
        Err(format!("the login did not reach a redirect URI in {MAX_LOGIN_STEPS} steps (last {url})"))
    }

    /// What the provider wrote to stderr so far (for failure messages).
    pub async fn logs(&self) -> String {
        self.logs.lock().await.join("\n")
    }

    /// Whether `url` is one of the registered redirect URIs plus a query (the provider's answer).
    fn is_redirect_uri(&self, url: &reqwest::Url) -> bool {
        let mut bare = url.clone();
        bare.set_query(None);
        bare.set_fragment(None);
        self.redirect_uris.iter().any(|uri| reqwest::Url::parse(uri).is_ok_and(|registered| registered == bare))
    }
}

/// The absolute target of a redirect response.
fn location(base: &reqwest::Url, response: &reqwest::Response) -> Result<reqwest::Url, String> {
    let value = response
        .headers()
        .get(reqwest::header::LOCATION)
        .ok_or_else(|| format!("{} from {base} without Location", response.status()))?;
    let value = value.to_str().map_err(|e| format!("Location from {base}: {e}"))?;
    base.join(value).map_err(|e| format!("Location {value:?} from {base}: {e}"))
}

/// The `action` of the first form on `page` (the peer's own minimal login page), unescaped.
fn form_action(page: &str) -> Option<String> {
    let start = page.find("<form")?;
    let rest = &page[start..];
    let value_start = rest.find("action=\"")? + "action=\"".len();
    let value = &rest[value_start..];
    let value = &value[..value.find('"')?];
    Some(value.replace("&#38;", "&").replace("&amp;", "&"))
}
