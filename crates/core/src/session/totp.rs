//! RFC 6238 time-based one-time passwords (HMAC-SHA-1, 6 digits, 30-second steps) and base32 secrets.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha1::Sha1;

use crate::identity::token::constant_time_eq;
use crate::{Error, Result};

/// Digits of a TOTP code.
pub const TOTP_DIGITS: usize = 6;
/// Length of a time step in seconds.
pub const TOTP_PERIOD: i64 = 30;
/// Bytes of a generated secret (160 bits, the HMAC-SHA-1 block recommendation of RFC 4226).
const SECRET_BYTES: usize = 20;
/// Steps accepted before and after the current one (clock drift).
const SKEW_STEPS: u64 = 1;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits: u32 = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 0x1f) as usize]));
        }
        // Only the unconsumed low bits matter; keep the buffer small.
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 0x1f) as usize]));
    }
    out
}

/// Decodes RFC 4648 base32 (case-insensitive, padding optional); `None` for any other character.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits: u32 = 0;
    for c in s.bytes() {
        let value = BASE32.iter().position(|&x| x == c.to_ascii_uppercase())?;
        buffer = (buffer << 5) | u32::try_from(value).ok()?;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
        buffer &= (1 << bits) - 1;
    }
    Some(out)
}

/// A new random secret, base32-encoded.
pub fn generate_secret() -> Result<String> {
    let mut secret = [0u8; SECRET_BYTES];
    OsRng.try_fill_bytes(&mut secret).map_err(|e| Error::internal("TOTP-rng", e))?;
    Ok(base32_encode(&secret))
}

/// The RFC 4226 HOTP value of `key` at `counter`, as a zero-padded 6-digit string.
fn hotp(key: &[u8], counter: u64) -> Option<String> {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).ok()?;
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest.get(19)? & 0x0f);
    let window: [u8; 4] = digest.get(offset..offset + 4)?.try_into().ok()?;
    let binary = u32::from_be_bytes(window) & 0x7fff_ffff;
    Some(format!("{:06}", binary % 1_000_000))
}

/// The time step of `at` (seconds since the epoch / 30); times before 1970 are step 0.
pub fn time_step(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp().div_euclid(TOTP_PERIOD)).unwrap_or(0)
}

/// The code for `secret` (base32) at `at`; `None` for an undecodable secret.
pub fn code_at(secret: &str, at: DateTime<Utc>) -> Option<String> {
    hotp(&base32_decode(secret)?, time_step(at))
}

/// The step (current ±1) whose code equals `code`, if any; every candidate is computed and compared so
/// the time does not reveal which one matched.
pub fn verify(secret: &str, code: &str, now: DateTime<Utc>) -> Option<u64> {
    let key = base32_decode(secret)?;
    let current = time_step(now);
    let mut found = None;
    for step in current.saturating_sub(SKEW_STEPS)..=current.saturating_add(SKEW_STEPS) {
        if let Some(expected) = hotp(&key, step)
            && constant_time_eq(expected.as_bytes(), code.as_bytes())
        {
            found = Some(step);
        }
    }
    found
}

/// Whether `code` has the shape of a TOTP code (exactly 6 ASCII digits).
pub fn is_well_formed_code(code: &str) -> bool {
    code.len() == TOTP_DIGITS && code.bytes().all(|b| b.is_ascii_digit())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `otpauth://totp/…` URI authenticator apps scan.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &str) -> String {
    let issuer = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer}:{}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_PERIOD}",
        percent_encode(account)
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).single().unwrap()
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), encoded);
            assert_eq!(base32_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(base32_decode("mzxw6ytboi======").unwrap(), b"foobar");
        assert!(base32_decode("MZ1W").is_none());
        let secret = generate_secret().unwrap();
        assert_eq!(secret.len(), 32);
        assert_eq!(base32_decode(&secret).unwrap().len(), 20);
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        // Appendix B of RFC 6238 (8-digit values; the 6-digit code is their last six digits).
        let secret = base32_encode(b"12345678901234567890");
        for (t, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
            (20_000_000_000, "353130"),
        ] {
            assert_eq!(code_at(&secret, at(t)).unwrap(), code, "t={t}");
        }
    }

    #[test]
    fn verify_accepts_one_step_of_drift() {
        let secret = generate_secret().unwrap();
        let now = at(1_700_000_000);
        for drift in [-30, 0, 30] {
            let code = code_at(&secret, at(1_700_000_000 + drift)).unwrap();
            assert_eq!(verify(&secret, &code, now), Some(time_step(at(1_700_000_000 + drift))));
        }
        let far = code_at(&secret, at(1_700_000_000 + 90)).unwrap();
        let near: Vec<String> = [-30, 0, 30].iter().filter_map(|d| code_at(&secret, at(1_700_000_000 + d))).collect();
        if !near.contains(&far) {
            assert_eq!(verify(&secret, &far, now), None);
        }
    }

    #[test]
    fn code_shape_and_uri() {
        assert!(is_well_formed_code("123456"));
        assert!(!is_well_formed_code("12345"));
        assert!(!is_well_formed_code("1234567"));
        assert!(!is_well_formed_code("12345a"));
        assert_eq!(
            otpauth_uri("flowgate", "alice@acme.localhost", "ABC"),
            "otpauth://totp/flowgate:alice%40acme.localhost?secret=ABC&issuer=flowgate&algorithm=SHA1&digits=6&period=30"
        );
    }
}
