//! Ports of the session use cases: repositories (implemented by `flowgate-store`) and the OTP sender.
//!
//! Every mutating session method is ONE event-log write: the new state rows and the listed events in one
//! transaction, aggregate = (`session`, id), resource owner = [`INSTANCE_OWNER`], creator = `actor`.
//! TOTP writes are events on the user aggregate (`user`, user id), owner = the user's org. Lockout counters
//! are plain columns changed only by single atomic statements (no events; the lock itself goes through
//! `UserRepo::set_state(Lock)` and writes `user.locked`). Event payloads never contain tokens, codes,
//! hashes or TOTP secrets. Repositories never apply business rules beyond what is documented here.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::model::{Factors, LockoutKind, OtpKind, Session, SessionFilter, SessionId, UserAgent};
use crate::Result;
use crate::event::{Details, NewEvent};
use crate::identity::{ListQuery, Page, UserId};

pub use crate::identity::INSTANCE_OWNER;

/// Error id: NotFound, no such session (or it is terminated, for reads).
pub const SESSION_NOT_FOUND: &str = "SESSION-not-found";
/// Error id: FailedPrecondition, the session was terminated (deleted) and cannot change.
pub const SESSION_TERMINATED: &str = "SESSION-terminated";
/// Error id: NotFound, the user has no TOTP registration.
pub const TOTP_NOT_FOUND: &str = "TOTP-not-found";

/// The mutable state of a session as the core computed it; repositories store it as given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionState {
    /// Factors (the whole set, replacing the stored one).
    pub factors: Factors,
    /// Metadata (the whole map, replacing the stored one).
    pub metadata: BTreeMap<String, Vec<u8>>,
    /// Expiration; `None` = never.
    pub expiration: Option<DateTime<Utc>>,
}

/// A one-time code challenge to store with a session write. It replaces any earlier challenge of the same
/// (session, kind), used or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOtpChallenge {
    /// SMS or e-mail.
    pub kind: OtpKind,
    /// Lower-case hex SHA-256 of the code.
    pub code_hash: String,
    /// When the code stops working.
    pub expires_at: DateTime<Utc>,
}

/// A new session, written with [`SessionRepo::create`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewSessionRecord {
    /// Generated id.
    pub id: SessionId,
    /// Id of the creating caller.
    pub creator: String,
    /// As sent by the client.
    pub user_agent: Option<UserAgent>,
    /// Initial state.
    pub state: SessionState,
    /// Lower-case hex SHA-256 of the session token (which names the session, so no other has it).
    pub token_hash: String,
    /// Challenges created by the same request.
    pub challenges: Vec<NewOtpChallenge>,
    /// At least `session.added`, then one event per successful check / change, in order.
    pub events: Vec<NewEvent>,
}

/// A change of an existing session, written with [`SessionRepo::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct SessionUpdate {
    /// New state (replaces factors, metadata and expiration).
    pub state: SessionState,
    /// Hash of the new token; the old token stops working in the same write.
    pub token_hash: String,
    /// Challenges created by the same request.
    pub challenges: Vec<NewOtpChallenge>,
    /// One event per successful check / change, in order (at least one).
    pub events: Vec<NewEvent>,
}

/// A session as stored, with the hash of its current token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The session (terminated ones included).
    pub session: Session,
    /// Lower-case hex SHA-256 of the current token.
    pub token_hash: String,
}

/// Sessions.
#[async_trait]
pub trait SessionRepo: Send + Sync {
    /// Inserts the session, its challenges and events (expected sequence 0). Answers it with its details.
    async fn create(&self, record: &NewSessionRecord, actor: &str) -> Result<Session>;
    /// The session with `id`, terminated or not, with its token hash.
    async fn get(&self, id: &SessionId) -> Result<Option<StoredSession>>;
    /// The session (terminated or not) with digest `token_hash`, found only for legacy-shaped unrotated tokens.
    async fn get_by_legacy_token_hash(&self, token_hash: &str) -> Result<Option<Session>>;
    /// Replaces the state and token hash (so a legacy token stops being found too), stores the challenges
    /// and appends the events, only if the session's last sequence is still `read.sequence` (else Aborted)
    /// and it is not terminated (else FailedPrecondition [`SESSION_TERMINATED`]). Missing ⇒ NotFound
    /// [`SESSION_NOT_FOUND`]. `read` is the session's details as the caller read them; its dates spare the
    /// store reading them again.
    async fn apply(&self, id: &SessionId, read: &Details, update: &SessionUpdate, actor: &str) -> Result<Session>;
    /// Non-terminated sessions matching all `filters`, ordered by creation date (`q.asc`), then id;
    /// `q.limit` is 1..=1000.
    async fn list(&self, filters: &[SessionFilter], q: &ListQuery) -> Result<Page<Session>>;
    /// Marks the session terminated (event `session.terminated`, empty payload) and answers the new details;
    /// when it is terminated already, answers its details without writing. Missing ⇒ NotFound
    /// [`SESSION_NOT_FOUND`]. `read`: the session's details as the caller read them, if it did (where the
    /// store may start; a session changed since is terminated all the same).
    async fn terminate(&self, id: &SessionId, read: Option<&Details>, actor: &str) -> Result<Details>;
    /// Terminates every non-terminated session whose checked user is `user` (one `session.terminated`
    /// event on each); answers how many were terminated.
    async fn terminate_all_of_user(&self, user: &UserId, actor: &str) -> Result<u64>;
}

/// Outcome of [`OtpChallengeRepo::consume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtpConsume {
    /// The code matched an unused, unexpired challenge, which is now used.
    Consumed,
    /// An unused, unexpired challenge exists but its hash differs (it stays usable).
    Mismatch,
    /// The unused challenge has expired.
    Expired,
    /// No unused challenge of that kind exists for the session.
    Missing,
}

/// One-time code challenges (created through [`SessionRepo::create`] / [`SessionRepo::apply`]).
#[async_trait]
pub trait OtpChallengeRepo: Send + Sync {
    /// Atomically marks the (session, kind) challenge used when it is unused, `expires_at > now` and its
    /// hash equals `code_hash` (one conditional UPDATE, so a code works exactly once under concurrency);
    /// otherwise classifies why not. No events.
    async fn consume(
        &self,
        session: &SessionId,
        kind: OtpKind,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<OtpConsume>;
}

/// A user's TOTP registration. The secret is stored as-is in its own column (to be encrypted with a
/// configured key later) and never answered to clients after registration.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpRegistration {
    /// Base32 (RFC 4648, no padding) shared secret.
    pub secret: String,
    /// Whether the user proved possession with a code.
    pub verified: bool,
    /// The newest 30-second time step a code was accepted for (replay protection); 0 = none.
    pub last_step: u64,
}

impl std::fmt::Debug for TotpRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRegistration")
            .field("verified", &self.verified)
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

/// TOTP registrations (table `user_totp`).
#[async_trait]
pub trait TotpRepo: Send + Sync {
    /// The registration of `user`, if any.
    async fn get(&self, user: &UserId) -> Result<Option<TotpRegistration>>;
    /// Stores an unverified registration with `secret`, replacing an unverified one (the core refuses when
    /// a verified one exists); event `user.totp.added` (empty payload). Missing user ⇒ NotFound
    /// `USER-not-found`.
    async fn put_unverified(&self, user: &UserId, secret: &str, actor: &str) -> Result<Details>;
    /// Marks the registration verified and sets `last_step` to `step`; event `user.totp.verified`.
    /// Missing ⇒ NotFound [`TOTP_NOT_FOUND`].
    async fn mark_verified(&self, user: &UserId, step: u64, actor: &str) -> Result<Details>;
    /// Atomically sets `last_step = step` only when the stored `last_step < step` (one conditional UPDATE);
    /// answers whether it did (false = the code's step was used already, a replay). No events.
    async fn advance_step(&self, user: &UserId, step: u64) -> Result<bool>;
    /// Removes the registration; event `user.totp.removed`. Missing ⇒ NotFound [`TOTP_NOT_FOUND`].
    async fn remove(&self, user: &UserId, actor: &str) -> Result<Details>;
}

/// Result of [`LockoutRepo::record_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureOutcome {
    /// The counter after the call (never above `max` when `max > 0`).
    pub failed_attempts: u32,
    /// Whether THIS call moved the counter to `max` (exactly one concurrent caller sees `true`).
    pub locked_now: bool,
}

/// Failed-attempt counters of users (columns `failed_password_attempts`, `failed_otp_attempts` on `users`).
#[async_trait]
pub trait LockoutRepo: Send + Sync {
    /// The counter of `user` (0 for unknown users).
    async fn failed_attempts(&self, user: &UserId, kind: LockoutKind) -> Result<u32>;
    /// Atomically increments the counter unless it reached `max` already (`max = 0`: no limit):
    /// `UPDATE users SET c = c + 1 WHERE id = ? AND (? = 0 OR c < ?) RETURNING c`. When nothing was updated
    /// the answer is the current value with `locked_now = false`. Unknown user ⇒ `{0, false}`.
    async fn record_failure(&self, user: &UserId, kind: LockoutKind, max: u32) -> Result<FailureOutcome>;
    /// Sets the counter to 0.
    async fn reset(&self, user: &UserId, kind: LockoutKind) -> Result<()>;
}

/// Delivers one-time codes; configured in the root (SMTP, SMS webhook).
#[async_trait]
pub trait OtpSender: Send + Sync {
    /// Sends `code` by text message to `to` (an E.164-like number).
    async fn send_sms(&self, to: &str, code: &str) -> Result<()>;
    /// Sends `code` by e-mail to `to`, with the link `url` when the request gave a template.
    async fn send_email(&self, to: &str, code: &str, url: Option<&str>) -> Result<()>;
}

/// Error id: FailedPrecondition, no SMS or e-mail delivery is configured.
pub const OTP_SENDER_MISSING: &str = "OTP-sender-missing";

/// An [`OtpSender`] for installations without delivery: every send fails with FailedPrecondition
/// [`OTP_SENDER_MISSING`] naming the missing configuration (codes can still be returned).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnconfiguredOtpSender;

#[async_trait]
impl OtpSender for UnconfiguredOtpSender {
    async fn send_sms(&self, _to: &str, _code: &str) -> Result<()> {
        Err(crate::Error::new(
            crate::ErrorKind::FailedPrecondition,
            OTP_SENDER_MISSING,
            "no SMS delivery is configured (sms webhook)",
        ))
    }

    async fn send_email(&self, _to: &str, _code: &str, _url: Option<&str>) -> Result<()> {
        Err(crate::Error::new(
            crate::ErrorKind::FailedPrecondition,
            OTP_SENDER_MISSING,
            "no e-mail delivery is configured (smtp)",
        ))
    }
}

/// Checks and consumes IdP intents for the `idp_intent` session check; implemented by the IdP use cases.
#[async_trait]
pub trait IntentVerifier: Send + Sync {
    /// Ok when `token` is the token of intent `intent_id`, the intent has succeeded and is unexpired, its
    /// IdP is still active, and it belongs to `user` (its user id, or an existing link of its external
    /// account to `user`). Writes nothing.
    async fn verify_for_session(&self, intent_id: &str, token: &str, user: &UserId) -> Result<()>;
    /// Checks like [`IntentVerifier::verify_for_session`], then consumes the intent atomically: of two
    /// concurrent calls at most one succeeds; a consumed intent fails every later check.
    async fn consume_for_session(&self, intent_id: &str, token: &str, user: &UserId) -> Result<()>;
}

/// The repositories the session use cases need, shared.
#[derive(Clone)]
pub struct SessionRepos {
    /// Sessions.
    pub sessions: Arc<dyn SessionRepo>,
    /// One-time code challenges.
    pub otp_challenges: Arc<dyn OtpChallengeRepo>,
    /// TOTP registrations.
    pub totp: Arc<dyn TotpRepo>,
    /// Failed-attempt counters.
    pub lockout: Arc<dyn LockoutRepo>,
}

impl std::fmt::Debug for SessionRepos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRepos").finish_non_exhaustive()
    }
}
