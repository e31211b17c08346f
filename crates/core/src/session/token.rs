//! Session tokens: generation and strict parsing; only their SHA-256 is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::identity::token::token_hash;
use crate::{Error, Result};

/// Prefix of every session token, so a leaked one is recognisable and routed to the session path.
pub const SESSION_TOKEN_PREFIX: &str = "fgs_";
/// Random bytes in a token (256 bits).
const SECRET_BYTES: usize = 32;
/// Length of the base64url (unpadded) encoding of the secret.
const SECRET_CHARS: usize = 43;
/// Length of a whole session token.
pub const SESSION_TOKEN_LEN: usize = SESSION_TOKEN_PREFIX.len() + SECRET_CHARS;

/// A freshly generated session token and the digest to store.
#[derive(Clone)]
pub struct SessionToken {
    /// `fgs_` + 43 base64url characters; given to the caller once, never stored or logged.
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

/// A new session token from 32 bytes of the operating system's CSPRNG.
pub fn generate_session_token() -> Result<SessionToken> {
    let mut secret = [0u8; SECRET_BYTES];
    OsRng.try_fill_bytes(&mut secret).map_err(|e| Error::internal("SESSION-rng", e))?;
    let token = format!("{SESSION_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = token_hash(&token);
    Ok(SessionToken { token, hash })
}

/// Whether `s` has exactly the shape of a session token this server issues (prefix, length, alphabet,
/// canonical encoding of 32 bytes), so truncated or extended tokens never reach the database.
pub fn is_well_formed_session_token(s: &str) -> bool {
    let Some(secret) = s.strip_prefix(SESSION_TOKEN_PREFIX) else {
        return false;
    };
    if secret.len() != SECRET_CHARS {
        return false;
    }
    // The decoder refuses non-canonical trailing bits, so only the encodings we produce pass.
    matches!(URL_SAFE_NO_PAD.decode(secret), Ok(bytes) if bytes.len() == SECRET_BYTES)
}

/// Lower-case hex SHA-256 of the whole session token: what is stored and looked up.
pub fn session_token_hash(token: &str) -> String {
    token_hash(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_documented_shape() {
        let t = generate_session_token().unwrap();
        assert!(t.token.starts_with(SESSION_TOKEN_PREFIX));
        assert_eq!(t.token.len(), SESSION_TOKEN_LEN);
        assert!(is_well_formed_session_token(&t.token));
        assert_eq!(t.hash, session_token_hash(&t.token));
        assert_eq!(t.hash.len(), 64);
        assert_ne!(generate_session_token().unwrap().token, t.token);
        assert!(!format!("{t:?}").contains(&t.token));
    }

    #[test]
    fn parsing_is_strict() {
        let t = generate_session_token().unwrap().token;
        assert!(!is_well_formed_session_token(&t[..t.len() - 1]), "truncated");
        assert!(!is_well_formed_session_token(&format!("{t}A")), "extended");
        assert!(!is_well_formed_session_token(&t.replacen("fgs_", "FGS_", 1)), "prefix case");
        assert!(!is_well_formed_session_token(&t.replacen("fgs_", "fgp_", 1)), "pat prefix");
        assert!(!is_well_formed_session_token(&t[SESSION_TOKEN_PREFIX.len()..]), "no prefix");
        assert!(!is_well_formed_session_token(""));
    }
}
