//! Sessions: login checks, factors, challenges, session tokens, lockout and TOTP registration.

pub mod model;
pub mod ports;
pub mod token;

pub use model::*;
pub use ports::{
    FailureOutcome, LockoutRepo, NewOtpChallenge, NewSessionRecord, OtpChallengeRepo, OtpConsume, OtpSender,
    SessionRepo, SessionRepos, SessionState, SessionUpdate, StoredSession, TotpRegistration, TotpRepo,
    UnconfiguredOtpSender,
};
pub use token::{SESSION_TOKEN_PREFIX, generate_session_token, is_well_formed_session_token, session_token_hash};
