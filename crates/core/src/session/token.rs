//! Session tokens: generation and strict parsing; only their SHA-256 is stored.
//!
//! A token is `fgs_<session id>.<secret>`: the session id (the selector) lets the bearer path read the
//! session by its primary key, the secret (the verifier: 43 base64url characters of 32 CSPRNG bytes) proves
//! possession. The stored digest is the SHA-256 of the whole token, id included, so no two sessions share
//! one and a token only ever matches the session it names.
//!
//! Tokens issued before the id was part of them (`fgs_` + secret, the *legacy* shape) are still accepted
//! until their session's next change rotates them: the bearer path finds their session by the digest kept
//! aside for exactly those sessions (`SessionRepo::get_by_legacy_token_hash`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore;
use rand::rngs::OsRng;

use super::model::SessionId;
use crate::identity::token::{constant_time_eq, token_hash};
use crate::{Error, Result};

/// Prefix of every session token, so a leaked one is recognisable and routed to the session path.
pub const SESSION_TOKEN_PREFIX: &str = "fgs_";
/// Separates the session id from the secret.
const SEPARATOR: char = '.';
/// Longest session id a token may carry.
const MAX_ID_CHARS: usize = 64;
/// Random bytes in a token (256 bits).
const SECRET_BYTES: usize = 32;
/// Length of the base64url (unpadded) encoding of the secret.
const SECRET_CHARS: usize = 43;

/// A freshly generated session token and the digest to store.
#[derive(Clone)]
pub struct SessionToken {
    /// `fgs_<session id>.<43 base64url characters>`; given to the caller once, never stored or logged.
    pub token: String,
    /// Lower-case hex SHA-256 of `token`.
    pub hash: String,
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret must not reach logs through a Debug print.
        f.debug_struct("SessionToken").field("hash", &self.hash).finish_non_exhaustive()
    }
}

/// What a well-formed session token is, by [`parse_session_token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionTokenShape<'a> {
    /// `fgs_<id>.<secret>`: names the session it claims to open.
    Split {
        /// The session id part (1 to 64 of `[A-Za-z0-9_-]`).
        id: &'a str,
    },
    /// `fgs_<secret>`: issued before tokens named their session.
    Legacy,
}

/// A new token for session `id` from 32 bytes of the operating system's CSPRNG. An id that a token cannot
/// carry (empty, longer than 64 characters, or outside `[A-Za-z0-9_-]`) ⇒ Internal: ids are generated.
pub fn generate_session_token(id: &SessionId) -> Result<SessionToken> {
    if !is_token_id(id.as_str()) {
        return Err(Error::internal(
            "SESSION-token-id",
            format!("the session id {:?} cannot be part of a session token: 1 to 64 of [A-Za-z0-9_-]", id.as_str()),
        ));
    }
    let mut secret = [0u8; SECRET_BYTES];
    OsRng.try_fill_bytes(&mut secret).map_err(|e| Error::internal("SESSION-rng", e))?;
    let token = format!("{SESSION_TOKEN_PREFIX}{id}{SEPARATOR}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = token_hash(&token);
    Ok(SessionToken { token, hash })
}

/// The shape of `s` when it is exactly a session token this server issues or issued (prefix; for the split
/// shape a valid id and exactly one separator; a secret that is the canonical encoding of 32 bytes);
/// `None` for anything else, so truncated or extended tokens never reach the database.
pub fn parse_session_token(s: &str) -> Option<SessionTokenShape<'_>> {
    let rest = s.strip_prefix(SESSION_TOKEN_PREFIX)?;
    // Neither the id nor the secret alphabet holds the separator, so a second one fails their checks.
    match rest.split_once(SEPARATOR) {
        Some((id, secret)) => (is_token_id(id) && is_secret(secret)).then_some(SessionTokenShape::Split { id }),
        None => is_secret(rest).then_some(SessionTokenShape::Legacy),
    }
}

/// Whether `s` has exactly the shape of a session token, split or legacy (see [`parse_session_token`]).
pub fn is_well_formed_session_token(s: &str) -> bool {
    parse_session_token(s).is_some()
}

/// Lower-case hex SHA-256 of the whole session token: what is stored and compared.
pub fn session_token_hash(token: &str) -> String {
    token_hash(token)
}

/// Whether `token` opens session `id`, whose current token digest is `digest`: well-formed, naming `id` when
/// it names a session, and with that digest (compared in constant time).
pub(crate) fn session_token_opens(token: &str, id: &SessionId, digest: &str) -> bool {
    let names_it = match parse_session_token(token) {
        Some(SessionTokenShape::Split { id: named }) => named == id.as_str(),
        Some(SessionTokenShape::Legacy) => true,
        None => false,
    };
    // The digest covers the id already; checking it too keeps a token from opening another session even
    // should two digests ever be equal.
    names_it && digest_matches(token, digest)
}

/// Whether the digest of `token` is `digest`, compared in constant time; for a token already parsed.
pub(crate) fn digest_matches(token: &str, digest: &str) -> bool {
    constant_time_eq(session_token_hash(token).as_bytes(), digest.as_bytes())
}

/// 1 to [`MAX_ID_CHARS`] of `[A-Za-z0-9_-]`.
fn is_token_id(id: &str) -> bool {
    (1..=MAX_ID_CHARS).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The canonical unpadded base64url encoding of exactly [`SECRET_BYTES`] bytes.
fn is_secret(secret: &str) -> bool {
    // The decoder refuses non-canonical trailing bits, so only the encodings we produce pass.
    secret.len() == SECRET_CHARS && matches!(URL_SAFE_NO_PAD.decode(secret), Ok(bytes) if bytes.len() == SECRET_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0196f3c2a1b27d5e8f00112233445566";

    fn id() -> SessionId {
        SessionId::from(ID)
    }

    /// A token of the shape issued before tokens carried their session id.
    fn legacy() -> String {
        format!("{SESSION_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode([7u8; SECRET_BYTES]))
    }

    #[test]
    fn generated_tokens_have_the_documented_shape() {
        let t = generate_session_token(&id()).unwrap();
        assert!(t.token.starts_with(&format!("{SESSION_TOKEN_PREFIX}{ID}.")), "{t:?}");
        assert_eq!(t.token.len(), SESSION_TOKEN_PREFIX.len() + ID.len() + 1 + SECRET_CHARS);
        assert_eq!(parse_session_token(&t.token), Some(SessionTokenShape::Split { id: ID }));
        assert!(is_well_formed_session_token(&t.token));
        assert_eq!(t.hash, session_token_hash(&t.token));
        assert_eq!(t.hash.len(), 64);
        assert_ne!(generate_session_token(&id()).unwrap().token, t.token);
        assert!(!format!("{t:?}").contains(&t.token));
    }

    #[test]
    fn ids_a_token_cannot_carry_are_refused() {
        let longest = "a".repeat(MAX_ID_CHARS);
        assert!(generate_session_token(&SessionId::from(longest.as_str())).is_ok());
        assert!(generate_session_token(&SessionId::from("A-z_09")).is_ok());
        for bad in ["", "a.b", "a b", "a/b", "é", &"a".repeat(MAX_ID_CHARS + 1)] {
            let err = generate_session_token(&SessionId::from(bad)).expect_err(bad);
            assert_eq!((err.kind(), err.id()), (crate::ErrorKind::Internal, "SESSION-token-id"), "{bad}");
        }
    }

    #[test]
    fn both_shapes_are_recognised() {
        assert_eq!(parse_session_token(&legacy()), Some(SessionTokenShape::Legacy));
        assert!(is_well_formed_session_token(&legacy()));
        let secret = &legacy()[SESSION_TOKEN_PREFIX.len()..];
        let longest = "a".repeat(MAX_ID_CHARS);
        for id in ["x", "A-z_09", longest.as_str()] {
            let token = format!("{SESSION_TOKEN_PREFIX}{id}.{secret}");
            assert_eq!(parse_session_token(&token), Some(SessionTokenShape::Split { id }), "{token}");
        }
    }

    #[test]
    fn parsing_is_strict() {
        let t = generate_session_token(&id()).unwrap().token;
        let secret = t.rsplit_once('.').unwrap().1;
        let long_id = "a".repeat(MAX_ID_CHARS + 1);
        let bad = [
            (t[..t.len() - 1].to_owned(), "truncated"),
            (format!("{t}A"), "extended"),
            (t.replacen("fgs_", "FGS_", 1), "prefix case"),
            (t.replacen("fgs_", "fgp_", 1), "pat prefix"),
            (t[SESSION_TOKEN_PREFIX.len()..].to_owned(), "no prefix"),
            (format!("{SESSION_TOKEN_PREFIX}.{secret}"), "empty id"),
            (format!("{SESSION_TOKEN_PREFIX}{long_id}.{secret}"), "id too long"),
            (format!("{SESSION_TOKEN_PREFIX}a+b.{secret}"), "id alphabet"),
            (format!("{SESSION_TOKEN_PREFIX}a.b.{secret}"), "two separators"),
            (format!("{SESSION_TOKEN_PREFIX}{ID}.{secret}."), "trailing separator"),
            (format!("{SESSION_TOKEN_PREFIX}{ID}."), "no secret"),
            (format!("{SESSION_TOKEN_PREFIX}{ID}.{}", &secret[..SECRET_CHARS - 1]), "short secret"),
            // 43 characters whose last one carries bits beyond the 32 bytes: not what the encoder writes.
            (format!("{SESSION_TOKEN_PREFIX}{ID}.{}B", &secret[..SECRET_CHARS - 1]), "non-canonical"),
            (format!("{}B", &legacy()[..legacy().len() - 1]), "non-canonical legacy"),
            (format!("{}A", legacy()), "extended legacy"),
            (String::new(), "empty"),
            (SESSION_TOKEN_PREFIX.to_owned(), "prefix only"),
        ];
        for (token, what) in bad {
            assert_eq!(parse_session_token(&token), None, "{what}: {token}");
            assert!(!is_well_formed_session_token(&token), "{what}");
        }
    }

    #[test]
    fn a_token_opens_only_the_session_it_names() {
        let t = generate_session_token(&id()).unwrap();
        assert!(session_token_opens(&t.token, &id(), &t.hash));
        assert!(!session_token_opens(&t.token, &SessionId::from("other"), &t.hash), "another session's id");
        assert!(!session_token_opens(&t.token, &id(), &session_token_hash("x")), "another digest");
        assert!(!session_token_opens(&t.token, &id(), &t.hash.to_uppercase()), "digests are compared exactly");
        let legacy = legacy();
        assert!(session_token_opens(&legacy, &id(), &session_token_hash(&legacy)));
        let malformed = format!("{legacy}A");
        assert!(!session_token_opens(&malformed, &id(), &session_token_hash(&malformed)), "malformed");
    }
}
