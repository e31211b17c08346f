//! Personal access tokens: generation, strict parsing and the digest that is stored instead.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Prefix of every personal access token, so a leaked one is recognisable.
pub const PAT_PREFIX: &str = "fgp_";
/// Random bytes in a token (256 bits).
const SECRET_BYTES: usize = 32;
/// Length of the base64url (unpadded) encoding of the secret.
const SECRET_CHARS: usize = 43;
/// Length of a whole token.
pub const PAT_LEN: usize = PAT_PREFIX.len() + SECRET_CHARS;

/// A freshly generated token: the secret shown once and the digest to store.
#[derive(Clone)]
pub struct GeneratedToken {
    /// `fgp_` + 43 base64url characters; give it to the caller once, never store or log it.
    pub token: String,
    /// Lower-case hex SHA-256 of `token`.
    pub hash: String,
}

impl std::fmt::Debug for GeneratedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret must not reach logs through a Debug print.
        f.debug_struct("GeneratedToken").field("hash", &self.hash).finish_non_exhaustive()
    }
}

/// A new personal access token from 32 bytes of the operating system's CSPRNG.
pub fn generate_pat() -> Result<GeneratedToken> {
    let mut secret = [0u8; SECRET_BYTES];
    OsRng.try_fill_bytes(&mut secret).map_err(|e| Error::internal("TOKEN-rng", e))?;
    let token = format!("{PAT_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = token_hash(&token);
    Ok(GeneratedToken { token, hash })
}

/// Whether `s` has exactly the shape of a token this server issues (prefix, length, alphabet, canonical
/// encoding of 32 bytes). Cheap, so malformed tokens never reach the database.
pub fn is_well_formed_pat(s: &str) -> bool {
    let Some(secret) = s.strip_prefix(PAT_PREFIX) else {
        return false;
    };
    if secret.len() != SECRET_CHARS {
        return false;
    }
    // The decoder refuses non-canonical trailing bits, so only the encodings we produce pass.
    matches!(URL_SAFE_NO_PAD.decode(secret), Ok(bytes) if bytes.len() == SECRET_BYTES)
}

/// Lower-case hex SHA-256 of the whole token string: what is stored and looked up.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Equality of two byte strings in time that depends only on their lengths: for comparing secrets and
/// their digests, where the position of the first difference must not show in the time taken.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The token of an `Authorization` header value `Bearer <token>` (scheme case-insensitive, one space).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(char::is_whitespace) {
        return None;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_documented_shape() {
        let t = generate_pat().unwrap();
        assert!(t.token.starts_with(PAT_PREFIX));
        assert_eq!(t.token.len(), PAT_LEN);
        assert!(t.token[PAT_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(is_well_formed_pat(&t.token));
        assert_eq!(t.hash.len(), 64);
        assert_eq!(t.hash, token_hash(&t.token));
        assert_ne!(generate_pat().unwrap().token, t.token);
        assert!(!format!("{t:?}").contains(&t.token));
    }

    #[test]
    fn parsing_is_strict() {
        let t = generate_pat().unwrap().token;
        assert!(!is_well_formed_pat(&t[..t.len() - 1]), "truncated");
        assert!(!is_well_formed_pat(&format!("{t}A")), "extended");
        assert!(!is_well_formed_pat(&t.replacen("fgp_", "FGP_", 1)), "prefix case");
        assert!(!is_well_formed_pat(&t[PAT_PREFIX.len()..]), "no prefix");
        assert!(!is_well_formed_pat(&format!("{}=", &t[..t.len() - 1])), "padding");
        assert!(!is_well_formed_pat(&format!("{}+{}", &t[..10], &t[11..])), "standard alphabet");
        assert!(!is_well_formed_pat(""));
    }

    #[test]
    fn sha256_is_hex_of_the_whole_string() {
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn constant_time_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"xbc"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer  abc"), None);
        assert_eq!(bearer_token("Bearer abc "), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
