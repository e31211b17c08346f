//! How to reach the database.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Connection settings of the store; built once from flowgate's configuration and passed to [`crate::Store::connect`].
#[derive(Clone)]
pub struct StoreConfig {
    /// `sqlite://…` or `postgres://…`/`postgresql://…`; `None` means SQLite at `<data_dir>/flowgate.db`.
    pub url: Option<String>,
    /// Directory for the default SQLite file; created (mode 0700) when missing.
    pub data_dir: PathBuf,
    /// Upper bound of pooled connections (SQLite: reader connections; the single writer comes on top).
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection before the operation fails as unavailable.
    pub acquire_timeout: Duration,
    /// How long SQLite waits for a lock held by another process before answering `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    /// Attempts of one write (first try included) when concurrent writers collide and no sequence was expected.
    pub write_attempts: u32,
    /// Most writes one SQLite transaction carries when writes arrive faster than the single writer commits
    /// them one by one (group commit); 1 commits every write on its own. Ignored on PostgreSQL.
    pub group_commit: usize,
}

impl Default for StoreConfig {
    /// SQLite under `./data`, 8 connections, 10 s acquire timeout, 5 s busy timeout, 5 write attempts, up to
    /// 64 writes per shared SQLite transaction.
    fn default() -> Self {
        Self {
            url: None,
            data_dir: PathBuf::from("data"),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(5),
            write_attempts: 5,
            group_commit: crate::group_commit::MAX_MEMBERS,
        }
    }
}

impl StoreConfig {
    /// Default settings with the database at `url` (`None` = SQLite in the default data directory).
    pub fn with_url(url: Option<String>) -> Self {
        Self { url, ..Self::default() }
    }
}

impl fmt::Debug for StoreConfig {
    // A PostgreSQL URL may carry a password; configuration dumps and logs must never show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("data_dir", &self.data_dir)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("busy_timeout", &self.busy_timeout)
            .field("write_attempts", &self.write_attempts)
            .field("group_commit", &self.group_commit)
            .finish()
    }
}

/// `url` with any password replaced by `***`, for logs and error messages.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        // File paths carry no secrets and are what an operator needs to see.
        Ok(parsed) if parsed.scheme() == "sqlite" => url.to_owned(),
        Ok(mut parsed) if parsed.has_host() => {
            if parsed.password().is_some() {
                // set_password only fails for URLs without a host, and this one has one.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        // Without a host there is no telling where a secret might sit.
        Ok(parsed) => format!("{}:…", parsed.scheme()),
        // An unparsable URL may still contain a secret; show only its scheme-like prefix.
        Err(_) => match url.split_once(':') {
            Some((scheme, _))
                if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
            {
                format!("{scheme}:…")
            }
            _ => "…".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_password() {
        let config = StoreConfig::with_url(Some("postgres://app:s3cret@db:5432/flowgate".into()));
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("app:***@db"), "{shown}");
    }

    #[test]
    fn unparsable_url_is_cut() {
        assert_eq!(redact_url("postgres//user:pw@host"), "…");
        assert_eq!(redact_url("weird:user:pw"), "weird:…");
    }
}
