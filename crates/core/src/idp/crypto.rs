//! Secrets at rest and the random values of a login at an IdP: AES-256-GCM sealing bound to a purpose,
//! PKCE verifiers and challenges, nonces and intent tokens, all from the operating system's CSPRNG.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

use super::model::{IdpId, IntentId, Sealed};
use crate::identity::token::token_hash;
use crate::{Error, Result};

/// Error id: Internal, a sealed value cannot be opened (wrong key, wrong purpose, or tampered).
pub const SECRET_UNREADABLE: &str = "IDP-secret-unreadable";
/// Prefix of the current sealed format.
const SEALED_PREFIX: &str = "v1.";
/// AES-GCM nonce length (96 bits, random per seal).
const NONCE_BYTES: usize = 12;
/// Prefix of every intent token, so a leaked one is recognisable.
pub const INTENT_TOKEN_PREFIX: &str = "fgi_";
/// Random bytes of an intent token, a PKCE verifier and a nonce (256 bits).
const RANDOM_BYTES: usize = 32;
/// Length of the base64url (unpadded) encoding of [`RANDOM_BYTES`].
const RANDOM_CHARS: usize = 43;

/// Purpose of an IdP's client secret.
pub fn purpose_client_secret(idp: &IdpId) -> String {
    format!("idp:{idp}:client_secret")
}

/// Purpose of an LDAP IdP's bind password.
pub fn purpose_bind_password(idp: &IdpId) -> String {
    format!("idp:{idp}:bind_password")
}

/// Purpose of an intent's PKCE verifier.
pub fn purpose_pkce_verifier(intent: &IntentId) -> String {
    format!("idp_intent:{intent}:pkce_verifier")
}

/// Purpose of an upstream token (`access_token` | `id_token`) stored with an intent.
pub fn purpose_intent_token(intent: &IntentId, name: &str) -> String {
    format!("idp_intent:{intent}:{name}")
}

/// Seals and opens secrets with one AES-256-GCM key. The purpose string is the associated data, so a
/// sealed value copied to another row or field cannot be opened there.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

fn unreadable() -> Error {
    Error::new(crate::ErrorKind::Internal, SECRET_UNREADABLE, "internal error")
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    OsRng.try_fill_bytes(&mut bytes).map_err(|e| Error::internal("IDP-rng", e))?;
    Ok(bytes)
}

impl SecretBox {
    /// A box with the 256-bit `key`.
    pub fn new(key: [u8; 32]) -> Self {
        Self { cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(key)) }
    }

    /// `plaintext` encrypted under a fresh random nonce with `purpose` as associated data:
    /// `v1.<base64url(nonce ‖ ciphertext ‖ tag)>`.
    pub fn seal(&self, purpose: &str, plaintext: &str) -> Result<Sealed> {
        let nonce = random::<NONCE_BYTES>()?;
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext.as_bytes(), aad: purpose.as_bytes() })
            .map_err(|_| Error::new(crate::ErrorKind::Internal, "IDP-seal-failed", "internal error"))?;
        let mut bytes = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Ok(Sealed::from_stored(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))))
    }

    /// The plaintext of `sealed`, when it was sealed with this key and exactly this `purpose` and is
    /// unchanged; otherwise Internal [`SECRET_UNREADABLE`].
    pub fn open(&self, purpose: &str, sealed: &Sealed) -> Result<String> {
        let encoded = sealed.as_str().strip_prefix(SEALED_PREFIX).ok_or_else(unreadable)?;
        let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| unreadable())?;
        if bytes.len() < NONCE_BYTES {
            return Err(unreadable());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| unreadable())?;
        let plaintext = self
            .cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad: purpose.as_bytes() })
            .map_err(|_| unreadable())?;
        String::from_utf8(plaintext).map_err(|_| unreadable())
    }
}

/// A PKCE pair: the verifier (kept, sealed) and its S256 challenge (sent).
#[derive(Clone)]
pub struct Pkce {
    /// 43 base64url characters from 32 random bytes (RFC 7636 allows 43..=128).
    pub verifier: String,
    /// base64url(SHA-256(verifier)) without padding.
    pub challenge: String,
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce").field("challenge", &self.challenge).finish_non_exhaustive()
    }
}

/// The S256 challenge of `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A fresh PKCE pair.
pub fn new_pkce() -> Result<Pkce> {
    let verifier = URL_SAFE_NO_PAD.encode(random::<RANDOM_BYTES>()?);
    let challenge = pkce_challenge(&verifier);
    Ok(Pkce { verifier, challenge })
}

/// A fresh OIDC nonce (43 base64url characters).
pub fn new_nonce() -> Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(random::<RANDOM_BYTES>()?))
}

/// A fresh intent token (`fgi_` + 43 base64url characters) and its lower-case hex SHA-256 (stored).
pub fn new_intent_token() -> Result<(String, String)> {
    let token = format!("{INTENT_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(random::<RANDOM_BYTES>()?));
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// Whether `token` has exactly the shape of an intent token this server issues (prefix, length,
/// canonical encoding of 32 bytes), so truncated or extended tokens never match.
pub fn is_well_formed_intent_token(token: &str) -> bool {
    let Some(secret) = token.strip_prefix(INTENT_TOKEN_PREFIX) else {
        return false;
    };
    secret.len() == RANDOM_CHARS && matches!(URL_SAFE_NO_PAD.decode(secret), Ok(b) if b.len() == RANDOM_BYTES)
}

/// Whether `token` is the intent token whose hash is `stored_hash` (strict shape, whole-string digest,
/// constant-time comparison of the digests).
pub fn intent_token_matches(token: &str, stored_hash: &str) -> bool {
    if !is_well_formed_intent_token(token) {
        return false;
    }
    let computed = token_hash(token);
    computed.len() == stored_hash.len()
        && computed.bytes().zip(stored_hash.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed() -> SecretBox {
        SecretBox::new([7u8; 32])
    }

    #[test]
    fn seal_round_trips_with_fresh_nonces() {
        let b = boxed();
        let a = b.seal("idp:1:client_secret", "s3cret").unwrap();
        let c = b.seal("idp:1:client_secret", "s3cret").unwrap();
        assert!(a.as_str().starts_with("v1."));
        assert!(!a.as_str().contains("s3cret"));
        assert_ne!(a, c, "a fresh nonce per seal");
        assert_eq!(b.open("idp:1:client_secret", &a).unwrap(), "s3cret");
        assert_eq!(b.open("idp:1:client_secret", &c).unwrap(), "s3cret");
        assert_eq!(b.open("p", &b.seal("p", "").unwrap()).unwrap(), "");
    }

    #[test]
    fn wrong_purpose_or_key_fails() {
        let sealed = boxed().seal("idp:1:client_secret", "s3cret").unwrap();
        let err = boxed().open("idp:2:client_secret", &sealed).unwrap_err();
        assert_eq!(err.id(), SECRET_UNREADABLE);
        assert!(SecretBox::new([8u8; 32]).open("idp:1:client_secret", &sealed).is_err());
    }

    #[test]
    fn tampering_fails() {
        let b = boxed();
        let sealed = b.seal("p", "value").unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed.as_str()[3..]).unwrap();
        for i in [0, NONCE_BYTES, bytes.len() - 1] {
            bytes[i] ^= 1;
            let tampered = Sealed::from_stored(format!("v1.{}", URL_SAFE_NO_PAD.encode(&bytes)));
            assert!(b.open("p", &tampered).is_err(), "byte {i}");
            bytes[i] ^= 1;
        }
        for garbage in ["", "v1.", "v2.AAAA", "v1.!!!", "v1.AAAA", "value"] {
            assert!(b.open("p", &Sealed::from_stored(garbage.to_owned())).is_err(), "{garbage}");
        }
    }

    #[test]
    fn pkce_matches_rfc7636_example() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let pkce = new_pkce().unwrap();
        assert!((43..=128).contains(&pkce.verifier.len()));
        assert_eq!(pkce.challenge, pkce_challenge(&pkce.verifier));
        assert_ne!(new_pkce().unwrap().verifier, pkce.verifier);
    }

    #[test]
    fn intent_tokens_are_strict() {
        let (token, hash) = new_intent_token().unwrap();
        assert!(token.starts_with(INTENT_TOKEN_PREFIX) && token.len() == 47);
        assert!(intent_token_matches(&token, &hash));
        assert!(!intent_token_matches(&token[..46], &hash));
        assert!(!intent_token_matches(&format!("{token}A"), &hash));
        assert!(!intent_token_matches(&token.to_uppercase(), &hash));
        let (other, _) = new_intent_token().unwrap();
        assert!(!intent_token_matches(&other, &hash));
        assert_ne!(new_nonce().unwrap(), new_nonce().unwrap());
    }
}
