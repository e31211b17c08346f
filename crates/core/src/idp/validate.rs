//! Input rules of the IdP use cases; each violation names the proto field path (snake_case).

use std::net::IpAddr;
use std::time::Duration;

use url::Url;

use crate::identity::validate::{MAX_TEXT, Violations, optional_text, required_text};

/// Error id: InvalidArgument, a request field is invalid (the violations name it).
pub const IDP_INVALID: &str = "IDP-invalid";
/// Longest URL accepted in a configuration.
pub const MAX_URL: usize = 2048;
/// Most entries in a list field (scopes, servers, object classes, filters).
pub const MAX_LIST: usize = 50;
/// Largest PEM trust anchor accepted.
pub const MAX_PEM: usize = 64 * 1024;
/// Shortest LDAP timeout.
pub const MIN_LDAP_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest LDAP timeout.
pub const MAX_LDAP_TIMEOUT: Duration = Duration::from_secs(60);

type Check = std::result::Result<(), String>;

/// Whether `host` (as the `url` crate prints it) is a loopback name or address.
pub fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An absolute `https` URL with a host, no user information and no fragment; `http` only for loopback
/// hosts (local test providers). At most [`MAX_URL`] characters.
pub fn http_url(s: &str) -> Check {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    optional_text(s, MAX_URL)?;
    let url = Url::parse(s).map_err(|e| format!("must be an absolute URL: {e}"))?;
    let host = url.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err("must name a host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user information".to_owned());
    }
    if url.fragment().is_some() {
        return Err("must not contain a fragment".to_owned());
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(host) => Ok(()),
        "http" => Err("must use https (http only for loopback hosts)".to_owned()),
        _ => Err("must be an https URL".to_owned()),
    }
}

/// An `ldap://` or `ldaps://` URL with a host and nothing after the port but an optional `/`.
pub fn ldap_url(s: &str) -> Check {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    optional_text(s, MAX_URL)?;
    let url = Url::parse(s).map_err(|e| format!("must be an ldap:// or ldaps:// URL: {e}"))?;
    if !matches!(url.scheme(), "ldap" | "ldaps") {
        return Err("must be an ldap:// or ldaps:// URL".to_owned());
    }
    if url.host_str().unwrap_or_default().is_empty() {
        return Err("must name a host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user information".to_owned());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a path, query or fragment".to_owned());
    }
    Ok(())
}

/// An LDAP attribute description: a name (`uid`, `givenName`, `x-custom`) or a numeric OID, ≤ 200 chars.
pub fn attribute_name(s: &str) -> Check {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    optional_text(s, MAX_TEXT)?;
    let name_ok = s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';');
    let oid_ok = s.split('.').all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()));
    if name_ok || oid_ok { Ok(()) } else { Err("must be an LDAP attribute name such as uid or mail".to_owned()) }
}

/// An optional attribute name ("" = not mapped).
pub fn optional_attribute_name(s: &str) -> Check {
    if s.is_empty() { Ok(()) } else { attribute_name(s) }
}

/// A distinguished name: 1..=1000 characters without control characters (syntax is the server's to judge).
pub fn dn(s: &str) -> Check {
    required_text(s, 1000)?;
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// A short required value such as a client id: 1..=200 characters, no control characters.
pub fn token_text(s: &str) -> Check {
    required_text(s, MAX_TEXT)?;
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// A secret from a request: 1..=1000 characters (client secrets and passwords can be long).
pub fn secret(s: &str) -> Check {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    optional_text(s, 1000)
}

/// Scopes: at most [`MAX_LIST`], each 1..=200 characters without whitespace or control characters.
pub fn scopes(v: &mut Violations, field: &str, scopes: &[String]) {
    if scopes.len() > MAX_LIST {
        v.add(field, format!("must have at most {MAX_LIST} entries"));
        return;
    }
    for (i, scope) in scopes.iter().enumerate() {
        let ok = !scope.is_empty()
            && scope.chars().count() <= MAX_TEXT
            && !scope.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            v.add(&format!("{field}[{i}]"), "must be 1 to 200 characters without whitespace");
        }
    }
}

/// A non-empty list of at most [`MAX_LIST`] attribute names, naming `field[i]`.
pub fn attribute_list(v: &mut Violations, field: &str, names: &[String]) {
    if names.is_empty() {
        v.add(field, "must have at least one entry");
    } else if names.len() > MAX_LIST {
        v.add(field, format!("must have at most {MAX_LIST} entries"));
    } else {
        for (i, name) in names.iter().enumerate() {
            v.check(&format!("{field}[{i}]"), attribute_name(name));
        }
    }
}

/// An LDAP timeout of 1..=60 seconds.
pub fn ldap_timeout(d: Duration) -> Check {
    if (MIN_LDAP_TIMEOUT..=MAX_LDAP_TIMEOUT).contains(&d) {
        Ok(())
    } else {
        Err("must be between 1 and 60 seconds".to_owned())
    }
}

/// A PEM certificate (at least one `BEGIN CERTIFICATE` block), at most [`MAX_PEM`] bytes.
pub fn pem_certificate(s: &str) -> Check {
    if s.len() > MAX_PEM {
        return Err(format!("must be at most {MAX_PEM} bytes"));
    }
    if s.contains("-----BEGIN CERTIFICATE-----") && s.contains("-----END CERTIFICATE-----") {
        Ok(())
    } else {
        Err("must be a PEM certificate".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls() {
        for ok in [
            "https://accounts.google.com",
            "https://idp.example.com/realms/x",
            "http://localhost:8080",
            "http://127.0.0.1:4000/oidc",
            "http://[::1]:9000",
        ] {
            assert!(http_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "idp.example.com",
            "http://idp.example.com",
            "ftp://idp.example.com",
            "https://u:p@idp.example.com",
            "https://idp.example.com/#x",
            "http://localhost.evil.com",
        ] {
            assert!(http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ldap_urls_and_attributes() {
        assert!(ldap_url("ldap://127.0.0.1:389").is_ok());
        assert!(ldap_url("ldaps://ldap.example.com/").is_ok());
        for bad in ["", "http://ldap.example.com", "ldap://", "ldap://h/dc=x", "ldap://u@h"] {
            assert!(ldap_url(bad).is_err(), "{bad}");
        }
        for ok in ["uid", "givenName", "x-custom", "2.5.4.3"] {
            assert!(attribute_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "(uid=*)", "*", "1uid", "a\u{0}"] {
            assert!(attribute_name(bad).is_err(), "{bad}");
        }
        assert!(ldap_timeout(Duration::from_secs(10)).is_ok());
        assert!(ldap_timeout(Duration::from_millis(999)).is_err());
        assert!(ldap_timeout(Duration::from_secs(61)).is_err());
    }
}
