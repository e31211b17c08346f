//! LDAP login: service bind, one-entry search with an escaped filter, bind as the entry, attribute mapping.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use flowgate_core::idp::model::{ExternalProfile, LdapAttributes};
use flowgate_core::idp::ports::{CONNECTOR_LDAP_FAILED, CONNECTOR_UNREACHABLE, ExternalUser, LdapProvider};
use flowgate_core::{Error, ErrorKind, Result};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use url::Url;

/// Escapes `value` for use as an assertion value in an LDAP search filter (RFC 4515 §3): `*`, `(`, `)`,
/// `\` and NUL become `\2a`, `\28`, `\29`, `\5c` and `\00`, so the filter compares the literal string.
pub fn escape_filter_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => escaped.push_str("\\2a"),
            '(' => escaped.push_str("\\28"),
            ')' => escaped.push_str("\\29"),
            '\\' => escaped.push_str("\\5c"),
            '\0' => escaped.push_str("\\00"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The user search filter `(&(|(objectClass=c1)…)(|(attr1=<value>)(attr2=<value>)…))` with `username`
/// escaped; object classes and attribute names come from the (admin-validated) configuration.
pub fn user_filter(object_classes: &[String], filter_attributes: &[String], username: &str) -> String {
    let value = escape_filter_value(username);
    let mut filter = String::from("(&(|");
    for class in object_classes {
        // Writing to a String cannot fail.
        let _ = write!(filter, "(objectClass={class})");
    }
    filter.push_str(")(|");
    for attribute in filter_attributes {
        let _ = write!(filter, "({attribute}={value})");
    }
    filter.push_str("))");
    filter
}

/// The one answer to every failed login, whatever the cause, so callers cannot tell users apart.
fn login_failed() -> Error {
    Error::new(ErrorKind::FailedPrecondition, CONNECTOR_LDAP_FAILED, "the user could not be authenticated at the IdP")
}

/// Why a login step failed; logged (never shown) to tell operators what to fix.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no server could be reached: {0}")]
    Unreachable(String),
    #[error("TLS refused: {0}")]
    Tls(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{step} timed out")]
    Timeout { step: &'static str },
    #[error("{step} failed: {source}")]
    Ldap { step: &'static str, source: Box<ldap3::LdapError> },
    #[error("user search failed: {0}")]
    Search(Box<ldap3::LdapResult>),
    #[error("the search found {0} entries for the username (exactly one is required)")]
    EntryCount(usize),
    #[error("the entry has no value for the id attribute {0:?}")]
    NoId(String),
}

/// Logs in `username` with `password` at the directory of `provider`.
pub(crate) async fn login(provider: &LdapProvider, username: &str, password: &str) -> Result<ExternalUser> {
    // An empty password would make the user bind an unauthenticated bind (RFC 4513 §5.1.2), which
    // servers answer with success.
    if password.is_empty() || username.is_empty() {
        return Err(login_failed());
    }
    match run(provider, username, password).await {
        Ok(user) => Ok(user),
        Err(Failure::Unreachable(reason)) => {
            tracing::warn!(servers = ?provider.servers, %reason, "LDAP login: no server could be reached");
            Err(Error::new(ErrorKind::Unavailable, CONNECTOR_UNREACHABLE, "the LDAP server could not be reached")
                .with_source(reason))
        }
        Err(failure) => {
            tracing::info!(servers = ?provider.servers, %failure, "LDAP login refused");
            Err(login_failed())
        }
    }
}

async fn run(provider: &LdapProvider, username: &str, password: &str) -> Result<ExternalUser, Failure> {
    let timeout = provider.timeout;
    let mut ldap = connect(provider).await?;
    let outcome = authenticate(&mut ldap, provider, username, password).await;
    // Best effort: the connection ends with this function either way.
    let _ = tokio::time::timeout(timeout, ldap.unbind()).await;
    outcome
}

/// Runs one LDAP operation under the provider's timeout.
async fn step<T>(
    timeout: Duration,
    step: &'static str,
    operation: impl Future<Output = ldap3::result::Result<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Failure::Ldap { step, source: Box::new(source) }),
        Err(_) => Err(Failure::Timeout { step }),
    }
}

async fn authenticate(
    ldap: &mut Ldap,
    provider: &LdapProvider,
    username: &str,
    password: &str,
) -> Result<ExternalUser, Failure> {
    let timeout = provider.timeout;
    // Names go into the filter unescaped (only the username is a value): anything beyond the attribute
    // description syntax of RFC 4512 §2.5 would change the filter's structure.
    let mut names = provider.user_object_classes.iter().chain(&provider.user_filters);
    if let Some(bad) = names.find(|n| !is_attribute_name(n)) {
        return Err(Failure::Config(format!("{bad:?} is not an attribute or object class name")));
    }
    step(timeout, "service bind", async {
        ldap.simple_bind(&provider.bind_dn, &provider.bind_password).await?.success()
    })
    .await?;
    let filter = user_filter(&provider.user_object_classes, &provider.user_filters, username);
    let attributes = requested_attributes(&provider.attributes);
    let base = if provider.user_base.is_empty() { &provider.base_dn } else { &provider.user_base };
    // Two are enough to tell "exactly one" from "several"; the server answers sizeLimitExceeded beyond.
    ldap.with_search_options(SearchOptions::new().sizelimit(2));
    let search =
        step(timeout, "user search", async { ldap.search(base, Scope::Subtree, &filter, attributes.clone()).await })
            .await?;
    let ldap3::SearchResult(entries, result) = search;
    if result.rc != 0 && entries.len() < 2 {
        return Err(Failure::Search(Box::new(result)));
    }
    if entries.len() != 1 {
        return Err(Failure::EntryCount(entries.len()));
    }
    let Some(entry) = entries.into_iter().next() else { return Err(Failure::EntryCount(0)) };
    let entry = SearchEntry::construct(entry);
    step(timeout, "user bind", async { ldap.simple_bind(&entry.dn, password).await?.success() }).await?;
    map_entry(&provider.attributes, &attributes, entry.attrs, username)
}

/// Whether `name` is a descriptor or numeric OID (letters, digits, `-`, `.`), optionally with options (`;`).
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ';'))
}

/// The configured attribute names (non-empty, deduplicated), and nothing else: asking for `*` would
/// hand every readable attribute (possibly password hashes) to whoever retrieves the intent.
fn requested_attributes(mapping: &LdapAttributes) -> Vec<String> {
    let LdapAttributes {
        id_attribute,
        first_name_attribute,
        last_name_attribute,
        display_name_attribute,
        nick_name_attribute,
        preferred_username_attribute,
        email_attribute,
        email_verified_attribute,
        phone_attribute,
        phone_verified_attribute,
        preferred_language_attribute,
        avatar_url_attribute,
        profile_attribute,
    } = mapping;
    let mut names: Vec<String> = Vec::new();
    for name in [
        id_attribute,
        first_name_attribute,
        last_name_attribute,
        display_name_attribute,
        nick_name_attribute,
        preferred_username_attribute,
        email_attribute,
        email_verified_attribute,
        phone_attribute,
        phone_verified_attribute,
        preferred_language_attribute,
        avatar_url_attribute,
        profile_attribute,
    ] {
        if !name.is_empty() && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.clone());
        }
    }
    if names.is_empty() {
        // An empty list means "all user attributes" in LDAP; `1.1` means "none" (RFC 4511 §4.5.1.8).
        names.push("1.1".to_owned());
    }
    names
}

/// The account from the entry's attributes; attribute names compare case-insensitively, as in LDAP.
fn map_entry(
    mapping: &LdapAttributes,
    requested: &[String],
    attrs: HashMap<String, Vec<String>>,
    username: &str,
) -> Result<ExternalUser, Failure> {
    let mut attributes = BTreeMap::new();
    for (name, values) in attrs {
        // Keep the configured spelling so that callers find what they configured.
        let key = requested.iter().find(|r| r.eq_ignore_ascii_case(&name)).cloned().unwrap_or(name);
        attributes.insert(key, values);
    }
    let first = |name: &str| -> Option<String> {
        if name.is_empty() {
            return None;
        }
        attributes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let id = first(&mapping.id_attribute).ok_or_else(|| Failure::NoId(mapping.id_attribute.clone()))?;
    let preferred_username = first(&mapping.preferred_username_attribute);
    let profile = ExternalProfile {
        email: first(&mapping.email_attribute),
        email_verified: first(&mapping.email_verified_attribute).is_some_and(|v| v.eq_ignore_ascii_case("true")),
        given_name: first(&mapping.first_name_attribute),
        family_name: first(&mapping.last_name_attribute),
        display_name: first(&mapping.display_name_attribute),
        nick_name: first(&mapping.nick_name_attribute),
        preferred_username: preferred_username.clone(),
        phone: first(&mapping.phone_attribute),
        preferred_language: first(&mapping.preferred_language_attribute),
    };
    let raw = serde_json::json!({ "User": &attributes });
    Ok(ExternalUser {
        id,
        username: preferred_username.unwrap_or_else(|| username.to_owned()),
        raw,
        access_token: None,
        id_token: None,
        ldap_attributes: Some(attributes),
        profile,
    })
}

/// Connects to the first server that answers, with TLS (`ldaps://`, or StartTLS on `ldap://`).
async fn connect(provider: &LdapProvider) -> Result<Ldap, Failure> {
    let tls = tls_config(provider)?;
    let mut reasons = Vec::new();
    let mut tls_refused = false;
    for server in &provider.servers {
        let url = Url::parse(server).map_err(|e| Failure::Config(format!("server {server:?}: {e}")))?;
        let start_tls = match url.scheme() {
            "ldaps" => false,
            "ldap" if provider.start_tls => true,
            // The bind password and the user's password would cross the network in the clear.
            "ldap" if is_loopback(&url) => false,
            "ldap" => {
                return Err(Failure::Config(format!(
                    "server {server:?}: ldap:// without StartTLS is allowed for loopback hosts only"
                )));
            }
            other => return Err(Failure::Config(format!("server {server:?}: unsupported scheme {other}"))),
        };
        let settings =
            LdapConnSettings::new().set_conn_timeout(provider.timeout).set_starttls(start_tls).set_config(tls.clone());
        match tokio::time::timeout(provider.timeout, LdapConnAsync::from_url_with_settings(settings, &url)).await {
            Ok(Ok((conn, ldap))) => {
                tokio::spawn(async move {
                    if let Err(error) = conn.drive().await {
                        tracing::debug!(%error, "LDAP connection ended with an error");
                    }
                });
                return Ok(ldap);
            }
            Ok(Err(error)) => {
                tls_refused |= is_tls_failure(&error);
                reasons.push(format!("{server}: {error}"));
            }
            Err(_) => reasons.push(format!("{server}: timed out")),
        }
    }
    if tls_refused {
        // The server answered but its certificate is not trusted: a configuration problem, not an outage.
        return Err(Failure::Tls(reasons.join("; ")));
    }
    Err(Failure::Unreachable(reasons.join("; ")))
}

/// Whether the connection failed in the TLS handshake (certificate not trusted, name mismatch, …).
fn is_tls_failure(error: &ldap3::LdapError) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        current = e.source();
    }
    false
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        // `ldap:` is not a special scheme for the URL parser: its hosts, IP literals included, come as text.
        Some(url::Host::Domain(domain)) => {
            let bare = domain.trim_start_matches('[').trim_end_matches(']');
            domain.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// TLS settings: the public web roots plus the configured extra root, or no verification at all when the
/// operator turned it off.
fn tls_config(provider: &LdapProvider) -> Result<Arc<ClientConfig>, Failure> {
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(crypto.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::Config(format!("TLS: {e}")))?;
    let config = if provider.tls_verify {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(pem) = provider.root_ca_pem.as_deref().filter(|p| !p.trim().is_empty()) {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| Failure::Config(format!("root_ca: {e}")))?;
                roots.add(cert).map_err(|e| Failure::Config(format!("root_ca: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(Failure::Config("root_ca: no certificate in the PEM".to_owned()));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(crypto))).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Accepts any certificate (the operator set `tls_verify = false`); signatures are still checked so the
/// handshake itself stays sound.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::{escape_filter_value, is_attribute_name, user_filter};

    #[test]
    fn escapes_every_special_character_of_rfc_4515() {
        assert_eq!(escape_filter_value("*"), "\\2a");
        assert_eq!(escape_filter_value("("), "\\28");
        assert_eq!(escape_filter_value(")"), "\\29");
        assert_eq!(escape_filter_value("\\"), "\\5c");
        assert_eq!(escape_filter_value("\0"), "\\00");
        assert_eq!(escape_filter_value("a*)(uid=*))(|(uid=*"), "a\\2a\\29\\28uid=\\2a\\29\\29\\28|\\28uid=\\2a");
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        assert_eq!(escape_filter_value("alice"), "alice");
        assert_eq!(escape_filter_value("jürgen.müller@example.test"), "jürgen.müller@example.test");
        assert_eq!(escape_filter_value(""), "");
    }

    #[test]
    fn an_escaped_value_has_no_filter_syntax_left() {
        let hostile = "*)(objectClass=*))(&(uid=\0\\";
        let escaped = escape_filter_value(hostile);
        assert!(!escaped.contains(['*', '(', ')', '\0']));
        // Every backslash starts a two-digit hex escape.
        for (i, _) in escaped.match_indices('\\') {
            let hex = escaped.get(i + 1..i + 3).expect("two characters follow every backslash");
            assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{hex:?}");
        }
    }

    #[test]
    fn only_attribute_names_pass_as_names() {
        for good in ["uid", "mail", "inetOrgPerson", "2.5.4.3", "cn;lang-en", "x-custom"] {
            assert!(is_attribute_name(good), "{good}");
        }
        for bad in ["", "uid=*", "uid)(cn", "mail ", "*", "a\\b", "objectClass=*)(uid"] {
            assert!(!is_attribute_name(bad), "{bad}");
        }
    }

    #[test]
    fn builds_the_user_filter_with_the_escaped_username() {
        let classes = vec!["inetOrgPerson".to_owned(), "person".to_owned()];
        let attributes = vec!["uid".to_owned(), "mail".to_owned()];
        assert_eq!(
            user_filter(&classes, &attributes, "al*ce"),
            "(&(|(objectClass=inetOrgPerson)(objectClass=person))(|(uid=al\\2ace)(mail=al\\2ace)))"
        );
        assert_eq!(
            user_filter(&classes[..1], &attributes[..1], "x)(uid=*"),
            "(&(|(objectClass=inetOrgPerson))(|(uid=x\\29\\28uid=\\2a)))"
        );
    }
}
