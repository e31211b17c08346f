//! Sessions: login checks, factors, challenges, session tokens, lockout and TOTP registration.

pub mod cache;
pub mod model;
pub mod ports;
mod service;
pub mod token;
pub mod totp;

pub use cache::{CachedSessionRepo, DEFAULT_SESSION_TTL};
pub use model::*;
pub use ports::{
    FailureOutcome, IntentVerifier, LockoutRepo, NewOtpChallenge, NewSessionRecord, OTP_SENDER_MISSING,
    OtpChallengeRepo, OtpConsume, OtpSender, SESSION_NOT_FOUND, SESSION_TERMINATED, SessionRepo, SessionRepos,
    SessionState, SessionUpdate, StoredSession, TOTP_NOT_FOUND, TotpRegistration, TotpRepo, UnconfiguredOtpSender,
};
pub use service::{
    CREDENTIALS_MESSAGE, FAILED_ATTEMPTS, MAX_METADATA_BYTES, SESSION_CODE_INVALID, SESSION_CREDENTIALS_INVALID,
    SESSION_DENIED, SESSION_EXPIRED, SESSION_INTENT_UNAVAILABLE, SESSION_INVALID, SESSION_OTP_EXPIRED,
    SESSION_OTP_MISSING, SESSION_OTP_UNAVAILABLE, SESSION_TOKEN_INVALID, SESSION_TOTP_MISSING, SESSION_USER_MISMATCH,
    SESSION_USER_MISSING, SessionConfig, Sessions, TOTP_ALREADY_VERIFIED, TOTP_CODE_INVALID, TOTP_EXISTS,
    TOTP_NOT_HUMAN,
};
pub use token::{
    SESSION_TOKEN_PREFIX, SessionTokenShape, generate_session_token, is_well_formed_session_token, parse_session_token,
    session_token_hash,
};
