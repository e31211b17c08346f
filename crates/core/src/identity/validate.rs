//! Input rules of the identity use cases; each violation names the proto field path (snake_case).

use super::model::{Email, ListQuery, Phone, Profile};
use super::ports::NewUserIdpLink;
use crate::{Error, FieldViolation, Result};

/// Longest id, name or address accepted from a request, in characters.
pub const MAX_TEXT: usize = 200;
/// Longest machine description, in characters.
pub const MAX_DESCRIPTION: usize = 500;
/// Longest preferred language tag.
pub const MAX_LANGUAGE: usize = 10;
/// Default page size when a request gives none.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size.
pub const MAX_LIMIT: u32 = 1000;

/// Collects violations so one answer names every invalid field.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `field` as invalid when `check` failed.
    pub fn check(&mut self, field: &str, check: std::result::Result<(), String>) {
        if let Err(description) = check {
            self.0.push(FieldViolation { field: field.to_owned(), description });
        }
    }

    /// Records `field` as invalid.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.to_owned(), description: description.into() });
    }

    /// Ok when nothing was recorded, else InvalidArgument `id` with every violation.
    pub fn finish(self, id: &'static str) -> Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(Error::invalid_fields(id, self.0)) }
    }
}

type Check = std::result::Result<(), String>;

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// 1..=`max` characters.
pub fn required_text(s: &str, max: usize) -> Check {
    if s.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    optional_text(s, max)
}

/// At most `max` characters.
pub fn optional_text(s: &str, max: usize) -> Check {
    if chars(s) > max { Err(format!("must be at most {max} characters")) } else { Ok(()) }
}

/// An id from a request: 1..=200 characters without control characters (no stored id has one, and NUL
/// cannot even reach PostgreSQL).
pub fn id(s: &str) -> Check {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    optional_text(s, MAX_TEXT)
}

/// A username: 1..=200 characters, no whitespace or control characters.
pub fn username(s: &str) -> Check {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    optional_text(s, MAX_TEXT)?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    Ok(())
}

/// `local@domain.tld`, at most 200 characters.
pub fn email(s: &str) -> Check {
    const SHAPE: &str = "must be an address like name@example.com";
    optional_text(s, MAX_TEXT)?;
    let Some((local, domain)) = s.rsplit_once('@') else {
        return Err(SHAPE.to_owned());
    };
    let local_ok = !local.is_empty()
        && !local.contains('@')
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '(' | ')' | ',' | ';'));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels.last().is_some_and(|tld| chars(tld) >= 2 && !tld.chars().all(|c| c.is_ascii_digit()));
    if local_ok && domain_ok { Ok(()) } else { Err(SHAPE.to_owned()) }
}

/// E.164-like: an optional `+`, 4..=15 digits, optionally separated by spaces, dots, dashes or parentheses.
pub fn phone(s: &str) -> Check {
    const SHAPE: &str = "must be a phone number like +41791234567";
    optional_text(s, MAX_TEXT)?;
    let rest = s.strip_prefix('+').unwrap_or(s);
    if !rest.chars().all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')')) {
        return Err(SHAPE.to_owned());
    }
    let digits = rest.chars().filter(char::is_ascii_digit).count();
    if (4..=15).contains(&digits) && rest.starts_with(|c: char| c.is_ascii_digit() || c == '(') {
        Ok(())
    } else {
        Err(SHAPE.to_owned())
    }
}

/// "" or a BCP-47-like tag (`en`, `de-CH`, `zh-Hant`), at most 10 characters.
pub fn language(s: &str) -> Check {
    if s.is_empty() {
        return Ok(());
    }
    const SHAPE: &str = "must be a language tag like en or de-CH";
    if s.len() > MAX_LANGUAGE {
        return Err(format!("must be at most {MAX_LANGUAGE} characters"));
    }
    let mut parts = s.split('-');
    let primary_ok =
        parts.next().is_some_and(|p| (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphabetic()));
    let rest_ok = parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()));
    if primary_ok && rest_ok { Ok(()) } else { Err(SHAPE.to_owned()) }
}

/// Checks a profile, naming fields under `prefix` (e.g. `profile`).
pub fn profile(v: &mut Violations, prefix: &str, p: &Profile) {
    let Profile { given_name, family_name, display_name, preferred_language } = p;
    v.check(&format!("{prefix}.given_name"), required_text(given_name, MAX_TEXT));
    v.check(&format!("{prefix}.family_name"), required_text(family_name, MAX_TEXT));
    v.check(&format!("{prefix}.display_name"), optional_text(display_name, MAX_TEXT));
    v.check(&format!("{prefix}.preferred_language"), language(preferred_language));
}

/// Checks an e-mail, naming the field `<prefix>.email`.
pub fn email_field(v: &mut Violations, prefix: &str, e: &Email) {
    let Email { address, verified: _ } = e;
    v.check(&format!("{prefix}.email"), email(address));
}

/// Checks a phone, naming the field `<prefix>.phone`.
pub fn phone_field(v: &mut Violations, prefix: &str, p: &Phone) {
    let Phone { number, verified: _ } = p;
    v.check(&format!("{prefix}.phone"), phone(number));
}

/// Checks the IdP links of a new user: each field 1..=200 characters, no account twice.
pub fn idp_links(v: &mut Violations, links: &[NewUserIdpLink]) {
    for (i, link) in links.iter().enumerate() {
        let NewUserIdpLink { idp_id, external_user_id, external_username } = link;
        v.check(&format!("idp_links[{i}].idp_id"), id(idp_id.as_str()));
        v.check(&format!("idp_links[{i}].user_id"), id(external_user_id));
        v.check(&format!("idp_links[{i}].user_name"), optional_text(external_username, MAX_TEXT));
        if links[..i].iter().any(|l| l.idp_id == *idp_id && l.external_user_id == *external_user_id) {
            v.add(&format!("idp_links[{i}]"), "links the same account twice");
        }
    }
}

/// The query with its limit resolved (0 ⇒ 100); > 1000 ⇒ InvalidArgument `query.limit`.
pub fn list_query(q: ListQuery) -> Result<ListQuery> {
    let ListQuery { offset, limit, asc } = q;
    let limit = match limit {
        0 => DEFAULT_LIMIT,
        n if n > MAX_LIMIT => {
            return Err(Error::invalid_field("QUERY-invalid", "query.limit", format!("must be at most {MAX_LIMIT}")));
        }
        n => n,
    };
    Ok(ListQuery { offset, limit, asc })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(username("alice").is_ok());
        assert!(username("alice@example.com").is_ok());
        assert!(username("").is_err());
        assert!(username("a b").is_err());
        assert!(username("a\u{7}").is_err());
        assert!(username(&"x".repeat(200)).is_ok());
        assert!(username(&"x".repeat(201)).is_err());
    }

    #[test]
    fn emails() {
        for ok in ["a@b.ch", "first.last+tag@sub.example.com", "ü@bücher.de"] {
            assert!(email(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "a@", "@b.ch", "a@b", "a@b.", "a@.ch", "a b@c.ch", "a@b@c.ch", "a@-b.ch", "a@b.1"] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones_and_languages() {
        assert!(phone("+41791234567").is_ok());
        assert!(phone("+1 (555) 123-4567").is_ok());
        assert!(phone("12").is_err());
        assert!(phone("+41abc").is_err());
        assert!(phone("+1234567890123456").is_err());
        for ok in ["", "en", "de-CH", "zh-Hant-TW"] {
            assert!(language(ok).is_ok(), "{ok}");
        }
        for bad in ["e", "english", "de_CH", "de-", "zh-Hant-TW-x"] {
            assert!(language(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(list_query(ListQuery::default()).unwrap().limit, 100);
        assert_eq!(list_query(ListQuery { offset: 0, limit: 1000, asc: true }).unwrap().limit, 1000);
        let err = list_query(ListQuery { offset: 0, limit: 1001, asc: true }).unwrap_err();
        assert_eq!(err.violations()[0].field, "query.limit");
    }
}
