//! The redirect allowlist: where an intent may send the browser after the IdP. One parser (the `url`
//! crate) plus strict checks on the raw string, so no parser differential lets a foreign host through.

use url::Url;

use crate::{Error, Result};

/// Error id: InvalidArgument, a redirect URL is not allowed (or an allowlist entry is malformed).
pub const REDIRECT_INVALID: &str = "IDP-redirect-url-invalid";
/// Message when no redirect URL is configured at all.
pub const EMPTY_ALLOWLIST_MESSAGE: &str =
    "no redirect URL is allowed: configure --allowed-redirect-url (FLOWGATE_ALLOWED_REDIRECT_URLS)";
/// Longest redirect URL accepted.
pub const MAX_REDIRECT_URL: usize = 2048;

/// One allowed prefix: scheme, host and port must be equal, the path must start at a segment boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    scheme: String,
    host: String,
    port: u16,
    /// Path without a trailing `/` (`""` = any path).
    path: String,
}

/// The configured redirect URL prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedirectAllowlist {
    entries: Vec<Entry>,
}

/// A URL that passed the raw checks and parsed: (parsed URL, raw path).
fn parse_strict(raw: &str) -> std::result::Result<Url, String> {
    if raw.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if raw.len() > MAX_REDIRECT_URL {
        return Err(format!("must be at most {MAX_REDIRECT_URL} characters"));
    }
    if !raw.is_ascii() || raw.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'\\') {
        return Err("must be ASCII without whitespace, control characters or backslashes".to_owned());
    }
    let lower = raw.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| "must be an absolute http or https URL".to_owned())?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err("must not contain user information".to_owned());
    }
    if authority.contains('%') {
        return Err("must not contain percent-encoding in the host".to_owned());
    }
    let path_end = after.find(['?', '#']).unwrap_or(after.len());
    let path = &after[..path_end];
    if path.contains("..") || path.contains("%2e") || path.contains(';') {
        return Err("must not contain dot segments, encoded dots or ';' in the path".to_owned());
    }
    let url = Url::parse(raw).map_err(|e| format!("is not a valid URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user information".to_owned());
    }
    let host = url.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err("must name a host".to_owned());
    }
    if host.ends_with('.') {
        return Err("must not end the host with a dot".to_owned());
    }
    Ok(url)
}

fn entry_of(url: &Url) -> std::result::Result<Entry, String> {
    let port = url.port_or_known_default().ok_or_else(|| "must have a port".to_owned())?;
    Ok(Entry {
        scheme: url.scheme().to_owned(),
        host: url.host_str().unwrap_or_default().to_owned(),
        port,
        path: url.path().trim_end_matches('/').to_owned(),
    })
}

impl RedirectAllowlist {
    /// The allowlist of `entries` (absolute http(s) URL prefixes without query, fragment or user
    /// information). A malformed entry ⇒ InvalidArgument naming `allowed_redirect_urls[i]`.
    pub fn new(entries: Vec<String>) -> Result<Self> {
        let mut parsed = Vec::with_capacity(entries.len());
        for (i, raw) in entries.iter().enumerate() {
            let field = format!("allowed_redirect_urls[{i}]");
            let url = parse_strict(raw).map_err(|d| Error::invalid_field(REDIRECT_INVALID, field.clone(), d))?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(Error::invalid_field(REDIRECT_INVALID, field, "must not have a query or fragment"));
            }
            parsed.push(entry_of(&url).map_err(|d| Error::invalid_field(REDIRECT_INVALID, field, d))?);
        }
        Ok(Self { entries: parsed })
    }

    /// Whether no redirect URL is allowed at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ok when `url` is allowed; else InvalidArgument [`REDIRECT_INVALID`] on `field`
    /// (`urls.success_url` / `urls.failure_url`), with [`EMPTY_ALLOWLIST_MESSAGE`] when nothing is allowed.
    pub fn check(&self, field: &str, url: &str) -> Result<()> {
        if self.entries.is_empty() {
            return Err(Error::invalid_field(REDIRECT_INVALID, field, EMPTY_ALLOWLIST_MESSAGE));
        }
        let parsed = parse_strict(url).map_err(|d| Error::invalid_field(REDIRECT_INVALID, field, d))?;
        let candidate = entry_of(&parsed).map_err(|d| Error::invalid_field(REDIRECT_INVALID, field, d))?;
        let allowed = self.entries.iter().any(|e| {
            e.scheme == candidate.scheme
                && e.host == candidate.host
                && e.port == candidate.port
                && (candidate.path == e.path
                    || candidate.path.strip_prefix(&e.path).is_some_and(|rest| rest.starts_with('/')))
        });
        if allowed {
            Ok(())
        } else {
            Err(Error::invalid_field(REDIRECT_INVALID, field, "is not in the allowed redirect URLs"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> RedirectAllowlist {
        RedirectAllowlist::new(vec![
            "https://app.example.com/cb".to_owned(),
            "http://localhost:3000/".to_owned(),
            "https://login.example.org".to_owned(),
        ])
        .unwrap()
    }

    #[test]
    fn accepts_urls_under_an_entry() {
        let l = list();
        for ok in [
            "https://app.example.com/cb",
            "https://app.example.com/cb/",
            "https://app.example.com/cb/done",
            "https://app.example.com/cb?x=1&y=a..b",
            "https://app.example.com/cb#frag",
            "https://APP.Example.com/cb",
            "HTTPS://app.example.com/cb",
            "https://app.example.com:443/cb",
            "http://localhost:3000/",
            "http://localhost:3000/any/path",
            "https://login.example.org",
            "https://login.example.org/x",
        ] {
            assert!(l.check("urls.success_url", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_every_trick() {
        let l = list();
        for bad in [
            "",
            "//evil.com",
            "//app.example.com/cb",
            "/cb",
            "https://app.example.com.evil.com/cb",
            "https://evil.com/https://app.example.com/cb",
            "https://app.example.com@evil.com/cb",
            "https://user@app.example.com/cb",
            "https://user:pw@app.example.com/cb",
            "https://a@b@app.example.com/cb",
            "https://evil.com@app.example.com@evil.com/cb",
            "https://app.example.com/cb/..;/admin",
            "https://app.example.com/cb;/x",
            "https://app.example.com/cb/../admin",
            "https://app.example.com/cb/%2e%2e/admin",
            "https://app.example.com/cb/%2E%2E/admin",
            "https://app.example.com/cb/.%2e/admin",
            "https://app.example.com/cb\\..\\admin",
            "https:\\\\app.example.com/cb",
            "https://app.example.com\\@evil.com/cb",
            "javascript:alert(1)",
            "JavaScript://app.example.com/cb%0Aalert(1)",
            "data:text/html,<script>alert(1)</script>",
            "https://app.example.com./cb",
            "https://app.example.com:8443/cb",
            "http://app.example.com/cb",
            "ftp://app.example.com/cb",
            "https:app.example.com/cb",
            "https:/app.example.com/cb",
            "https:///cb",
            "https://app.example.com/cbx",
            "https://app.example.com/c",
            "https://app.example.com/",
            "https://app%2eexample.com/cb",
            " https://app.example.com/cb",
            "https://app.example.com/cb\n",
            "https://app.example.com/cb\t",
            "https://app.example.com/cb/\u{fc}",
            "http://localhost/",
            "http://localhost:3001/",
            "http://127.0.0.1:3000/",
            "https://login.example.org.evil.com",
        ] {
            let err = l.check("urls.failure_url", bad).unwrap_err();
            assert_eq!(err.id(), REDIRECT_INVALID, "{bad}");
            assert_eq!(err.violations()[0].field, "urls.failure_url", "{bad}");
        }
        let long = format!("https://app.example.com/cb/{}", "a".repeat(MAX_REDIRECT_URL));
        assert!(l.check("f", &long).is_err());
    }

    #[test]
    fn empty_allowlist_says_how_to_configure() {
        let l = RedirectAllowlist::new(Vec::new()).unwrap();
        assert!(l.is_empty());
        let err = l.check("urls.success_url", "https://app.example.com/cb").unwrap_err();
        assert_eq!(err.violations()[0].description, EMPTY_ALLOWLIST_MESSAGE);
        assert!(err.message().contains("--allowed-redirect-url"));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["app.example.com", "https://u@app.example.com", "https://app.example.com/?q=1", "ftp://x.org"] {
            let err = RedirectAllowlist::new(vec!["https://ok.example.com".to_owned(), bad.to_owned()]).unwrap_err();
            assert_eq!(err.violations()[0].field, "allowed_redirect_urls[1]", "{bad}");
        }
    }
}
