//! The session use cases: create/set with checks and challenges, get, list, delete, bearer resolution,
//! lockout and TOTP registration.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use rand::TryRngCore;
use rand::rngs::OsRng;
use serde_json::json;

use super::model::{
    Challenges, Checks, Factors, LockoutKind, LockoutPolicy, OtpDelivery, OtpKind, Session, SessionChange,
    SessionFilter, SessionId, UserAgent, UserCheck, UserFactor,
};
use super::ports::{
    IntentVerifier, NewOtpChallenge, NewSessionRecord, OtpConsume, OtpSender, SESSION_NOT_FOUND, SESSION_TERMINATED,
    SessionRepos, SessionState, SessionUpdate, TOTP_NOT_FOUND,
};
use super::token::{
    SessionTokenShape, digest_matches, generate_session_token, parse_session_token, session_token_hash,
    session_token_opens,
};
use super::totp;
use crate::event::{Details, NewEvent};
use crate::identity::ports::SYSTEM_ACTOR;
use crate::identity::validate::{self, MAX_TEXT, Violations};
use crate::identity::{
    CallContext, Clock, IdGenerator, Identity, ListQuery, Page, Permission, SessionTokenResolver, User, UserId,
    UserKind, UserLifecycleHook,
};
use crate::{Error, ErrorKind, Result};

/// Error id: FailedPrecondition, unknown, inactive or locked user, or wrong password (one answer for all).
pub const SESSION_CREDENTIALS_INVALID: &str = "SESSION-credentials-invalid";
/// Message of [`SESSION_CREDENTIALS_INVALID`].
pub const CREDENTIALS_MESSAGE: &str = "the user could not be authenticated";
/// Error id: PermissionDenied, the session token does not belong to the session.
pub const SESSION_TOKEN_INVALID: &str = "SESSION-token-invalid";
/// Error id: PermissionDenied, no token and no permission for the session.
pub const SESSION_DENIED: &str = "SESSION-denied";
/// Error id: FailedPrecondition, the session has expired.
pub const SESSION_EXPIRED: &str = "SESSION-expired";
/// Error id: FailedPrecondition, a check needs the user checked first.
pub const SESSION_USER_MISSING: &str = "SESSION-user-missing";
/// Error id: FailedPrecondition, the user check names another user than the session's.
pub const SESSION_USER_MISMATCH: &str = "SESSION-user-mismatch";
/// Error id: FailedPrecondition, IdP intents are not available (no [`IntentVerifier`] configured).
pub const SESSION_INTENT_UNAVAILABLE: &str = "SESSION-intent-unavailable";
/// Error id: FailedPrecondition, the user has no verified TOTP registration.
pub const SESSION_TOTP_MISSING: &str = "SESSION-totp-missing";
/// Error id: FailedPrecondition, a wrong TOTP or OTP code (carries `failed_attempts`).
pub const SESSION_CODE_INVALID: &str = "SESSION-code-invalid";
/// Error id: FailedPrecondition, no unused one-time code was requested for the session.
pub const SESSION_OTP_MISSING: &str = "SESSION-otp-missing";
/// Error id: FailedPrecondition, the one-time code has expired.
pub const SESSION_OTP_EXPIRED: &str = "SESSION-otp-expired";
/// Error id: FailedPrecondition, the user cannot receive the requested code (machine, no phone).
pub const SESSION_OTP_UNAVAILABLE: &str = "SESSION-otp-unavailable";
/// Error id: InvalidArgument, a request field is invalid (the violations name it).
pub const SESSION_INVALID: &str = "SESSION-invalid";
/// Error id: AlreadyExists, the user has a verified TOTP registration already.
pub const TOTP_EXISTS: &str = "TOTP-exists";
/// Error id: FailedPrecondition, the TOTP registration is verified already.
pub const TOTP_ALREADY_VERIFIED: &str = "TOTP-already-verified";
/// Error id: InvalidArgument, the TOTP code does not match.
pub const TOTP_CODE_INVALID: &str = "TOTP-code-invalid";
/// Error id: FailedPrecondition, TOTP is for human users only.
pub const TOTP_NOT_HUMAN: &str = "TOTP-not-human";
/// Metadata key of the failed-attempt counter on credential errors.
pub const FAILED_ATTEMPTS: &str = "failed_attempts";

/// Digits of an OTP challenge code.
const OTP_DIGITS: u32 = 8;
/// How long an OTP challenge code works.
const OTP_TTL: TimeDelta = TimeDelta::minutes(5);
/// Largest total size of a session's metadata values.
pub const MAX_METADATA_BYTES: usize = 1024 * 1024;

/// Settings of the session use cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Failed-attempt limits (0 = off).
    pub lockout: LockoutPolicy,
    /// Issuer shown by authenticator apps (`otpauth://totp/<issuer>:<login name>`); default `flowgate`.
    pub totp_issuer: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { lockout: LockoutPolicy::default(), totp_issuer: "flowgate".to_owned() }
    }
}

struct Inner {
    config: SessionConfig,
    repos: SessionRepos,
    identity: Identity,
    otp: Arc<dyn OtpSender>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdGenerator>,
}

/// The session use cases; cheap to clone, built once at start-up next to [`Identity`].
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
    intents: Option<Arc<dyn IntentVerifier>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

fn credentials_invalid() -> Error {
    Error::new(ErrorKind::FailedPrecondition, SESSION_CREDENTIALS_INVALID, CREDENTIALS_MESSAGE)
}

fn precondition(id: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::FailedPrecondition, id, message)
}

fn not_found() -> Error {
    Error::new(ErrorKind::NotFound, SESSION_NOT_FOUND, "session not found")
}

fn event(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent { event_type: event_type.to_owned(), payload }
}

/// The human data of `user`, if it is one.
fn human(user: &User) -> Option<&crate::identity::Human> {
    match &user.kind {
        UserKind::Human(h) => Some(h),
        UserKind::Machine(_) => None,
    }
}

fn display_name(user: &User) -> String {
    match &user.kind {
        UserKind::Human(h) => h.profile.display_name.clone(),
        UserKind::Machine(m) => m.name.clone(),
    }
}

/// A uniformly random code of `OTP_DIGITS` decimal digits from the OS CSPRNG.
fn otp_code() -> Result<String> {
    let modulus = 10u32.pow(OTP_DIGITS);
    // Rejection sampling: values at or above the largest multiple of the modulus would bias low digits.
    let limit = u32::MAX - u32::MAX % modulus;
    loop {
        let value = OsRng.try_next_u32().map_err(|e| Error::internal("SESSION-rng", e))?;
        if value < limit {
            return Ok(format!("{:0width$}", value % modulus, width = OTP_DIGITS as usize));
        }
    }
}

/// The link of an OTP e-mail: `template` with its placeholders replaced by percent-encoded values.
fn render_url(template: &str, code: &str, user: &User, session: &SessionId) -> String {
    let language = human(user).map(|h| h.profile.preferred_language.clone()).unwrap_or_default();
    let values = [
        ("{{.Code}}", code.to_owned()),
        ("{{.UserID}}", user.id.to_string()),
        ("{{.LoginName}}", user.preferred_login_name.clone()),
        ("{{.DisplayName}}", display_name(user)),
        ("{{.PreferredLanguage}}", language),
        ("{{.SessionID}}", session.to_string()),
    ];
    values
        .iter()
        .fold(template.to_owned(), |url, (placeholder, value)| url.replace(placeholder, &totp::percent_encode(value)))
}

/// What the checks of one request produced.
struct CheckOutcome {
    /// The active user the checks loaded (checked now, or earlier when later checks ran); `None` otherwise.
    user: Option<User>,
    /// Events of the successful checks, in order.
    events: Vec<NewEvent>,
    /// The verified IdP intent, consumed just before the session is written.
    intent: Option<PendingIntent>,
}

/// An IdP intent that passed the `idp_intent` check and still has to be consumed.
struct PendingIntent {
    id: String,
    token: String,
    user: UserId,
}

fn intent_unavailable() -> Error {
    Error::new(ErrorKind::FailedPrecondition, SESSION_INTENT_UNAVAILABLE, "IdP intents are not available")
}

/// The validated parts of a [`SessionChange`].
fn validate_change(change: &SessionChange) -> Result<()> {
    let SessionChange { checks, metadata, challenges, lifetime } = change;
    let mut v = Violations::new();
    let Checks { user, password, idp_intent, totp, otp_sms, otp_email } = checks;
    match user {
        Some(UserCheck::Id(id)) => v.check("checks.user.user_id", validate::id(id.as_str())),
        Some(UserCheck::LoginName(name)) => v.check("checks.user.login_name", validate::id(name)),
        None => {}
    }
    if let Some(password) = password
        && password.is_empty()
    {
        v.add("checks.password.password", "must not be empty");
    }
    if let Some((id, token)) = idp_intent {
        v.check("checks.idp_intent.idp_intent_id", validate::id(id));
        v.check("checks.idp_intent.idp_intent_token", validate::id(token));
    }
    if let Some(code) = totp
        && !totp::is_well_formed_code(code)
    {
        v.add("checks.totp.code", "must be exactly 6 digits");
    }
    for (field, code) in [("checks.otp_sms.code", otp_sms), ("checks.otp_email.code", otp_email)] {
        if let Some(code) = code
            && code.is_empty()
        {
            v.add(field, "must not be empty");
        }
    }
    for key in metadata.keys() {
        // Control characters (NUL above all) have no business in a key and cannot be stored as JSON text
        // by every backend.
        if key.is_empty() || key.chars().count() > MAX_TEXT || key.chars().any(char::is_control) {
            v.add("metadata", format!("keys must have 1 to {MAX_TEXT} characters and no control characters"));
            break;
        }
    }
    if let Some(OtpDelivery::Send { url_template: Some(template) }) = &challenges.otp_email {
        v.check("challenges.otp_email.send_code.url_template", validate::id(template));
    }
    if let Some(lifetime) = lifetime
        && *lifetime <= TimeDelta::zero()
    {
        v.add("lifetime", "must be positive");
    }
    v.finish(SESSION_INVALID)
}

/// `current` with `changes` applied (empty value = delete); more than 1 MiB in total ⇒ InvalidArgument.
/// Most header names a user agent may carry, and values per name; a client's real headers fit easily.
const MAX_UA_HEADERS: usize = 50;
const MAX_UA_HEADER_VALUES: usize = 10;

/// The user agent is stored as sent, so it is bounded and free of control characters.
fn validate_user_agent(agent: &UserAgent) -> Result<()> {
    let UserAgent { fingerprint_id, ip, description, headers } = agent;
    let text = |s: &str| -> std::result::Result<(), String> {
        validate::optional_text(s, MAX_TEXT)?;
        if s.chars().any(char::is_control) { Err("must not contain control characters".to_owned()) } else { Ok(()) }
    };
    let mut v = Violations::new();
    for (field, value) in
        [("user_agent.fingerprint_id", fingerprint_id), ("user_agent.ip", ip), ("user_agent.description", description)]
    {
        if let Some(value) = value {
            v.check(field, text(value));
        }
    }
    if headers.len() > MAX_UA_HEADERS {
        v.add("user_agent.header", format!("at most {MAX_UA_HEADERS} header names"));
    }
    for (name, values) in headers {
        if name.is_empty()
            || text(name).is_err()
            || values.len() > MAX_UA_HEADER_VALUES
            || values.iter().any(|value| text(value).is_err())
        {
            v.add(
                "user_agent.header",
                format!("names and values must have at most {MAX_TEXT} characters, no control characters, and at most {MAX_UA_HEADER_VALUES} values"),
            );
            break;
        }
    }
    v.finish(SESSION_INVALID)
}

fn merge_metadata(
    current: &BTreeMap<String, Vec<u8>>,
    changes: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut merged = current.clone();
    for (key, value) in changes {
        if value.is_empty() {
            merged.remove(key);
        } else {
            merged.insert(key.clone(), value.clone());
        }
    }
    let total: usize = merged.values().map(Vec::len).sum();
    if total > MAX_METADATA_BYTES {
        return Err(Error::invalid_field(SESSION_INVALID, "metadata", "values must not exceed 1 MiB in total"));
    }
    Ok(merged)
}

fn time_json(at: DateTime<Utc>) -> serde_json::Value {
    json!(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

impl Sessions {
    /// The use cases over `repos`, checking users and passwords through `identity`.
    pub fn new(
        config: SessionConfig,
        repos: SessionRepos,
        identity: Identity,
        otp: Arc<dyn OtpSender>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
    ) -> Self {
        Self { inner: Arc::new(Inner { config, repos, identity, otp, clock, ids }), intents: None }
    }

    /// The same use cases, checking `idp_intent` through `intents` (without it that check fails with
    /// FailedPrecondition [`SESSION_INTENT_UNAVAILABLE`]).
    #[must_use]
    pub fn with_intents(mut self, intents: Arc<dyn IntentVerifier>) -> Self {
        self.intents = Some(intents);
        self
    }

    /// Consumes the intent the checks verified, right before the session write, so that an intent is only
    /// used up by a request whose every check passed.
    async fn consume_intent(&self, pending: Option<PendingIntent>) -> Result<()> {
        let Some(PendingIntent { id, token, user }) = pending else {
            return Ok(());
        };
        let intents = self.intents.as_ref().ok_or_else(intent_unavailable)?;
        intents.consume_for_session(&id, &token, &user).await
    }

    fn repos(&self) -> &SessionRepos {
        &self.inner.repos
    }

    fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    // ---------------------------------------------------------------- create / set

    /// Creates a session (`session.write` on the instance): runs the checks, sets metadata and lifetime,
    /// creates the challenges; answers the session, its token and the returned codes.
    pub async fn create(
        &self,
        ctx: &CallContext,
        change: SessionChange,
        user_agent: Option<UserAgent>,
    ) -> Result<(Session, String, Challenges)> {
        ctx.require_instance(Permission::SessionWrite)?;
        validate_change(&change)?;
        if let Some(agent) = &user_agent {
            validate_user_agent(agent)?;
        }
        let id = SessionId::from(self.inner.ids.new_id());
        let now = self.now();
        let mut factors = Factors::default();
        let outcome = self.run_checks(&id, &mut factors, change.checks, now).await?;
        let mut events = vec![event(
            "session.added",
            json!({ "user_agent_fingerprint_id": user_agent.as_ref().and_then(|a| a.fingerprint_id.clone()) }),
        )];
        events.extend(outcome.events);
        let metadata = merge_metadata(&BTreeMap::new(), &change.metadata)?;
        if !change.metadata.is_empty() {
            events.push(event("session.metadata.set", json!({ "keys": change.metadata.keys().collect::<Vec<_>>() })));
        }
        let expiration = self.expiration(change.lifetime, now, None, &mut events)?;
        let (challenges, returned) =
            self.create_challenges(&id, outcome.user.as_ref(), None, &change.challenges, now, &mut events).await?;
        self.consume_intent(outcome.intent).await?;
        let token = generate_session_token(&id)?;
        let record = NewSessionRecord {
            id,
            creator: ctx.actor().to_owned(),
            user_agent,
            state: SessionState { factors, metadata, expiration },
            token_hash: token.hash.clone(),
            challenges,
            events,
        };
        let session = self.repos().sessions.create(&record, ctx.actor()).await?;
        Ok((session, token.token, returned))
    }

    /// Changes a session (`session.write` on the instance) like [`Sessions::create`]; every call rotates
    /// the token (the old one stops working at once). Terminated ⇒ FailedPrecondition
    /// [`SESSION_TERMINATED`], expired ⇒ FailedPrecondition [`SESSION_EXPIRED`].
    pub async fn set(
        &self,
        ctx: &CallContext,
        id: &SessionId,
        change: SessionChange,
    ) -> Result<(Session, String, Challenges)> {
        ctx.require_instance(Permission::SessionWrite)?;
        validate_change(&change)?;
        let stored = self.repos().sessions.get(id).await?.ok_or_else(not_found)?;
        let session = stored.session;
        if session.terminated {
            return Err(precondition(SESSION_TERMINATED, "the session was terminated"));
        }
        let now = self.now();
        if session.is_expired(now) {
            return Err(precondition(SESSION_EXPIRED, "the session has expired"));
        }
        let mut factors = session.factors.clone();
        let outcome = self.run_checks(id, &mut factors, change.checks, now).await?;
        let mut events = outcome.events;
        let pending_intent = outcome.intent;
        let metadata = merge_metadata(&session.metadata, &change.metadata)?;
        if !change.metadata.is_empty() {
            events.push(event("session.metadata.set", json!({ "keys": change.metadata.keys().collect::<Vec<_>>() })));
        }
        let expiration = self.expiration(change.lifetime, now, session.expiration, &mut events)?;
        let (challenges, returned) = self
            .create_challenges(
                id,
                outcome.user.as_ref(),
                factors.user.as_ref().map(|u| &u.id),
                &change.challenges,
                now,
                &mut events,
            )
            .await?;
        if events.is_empty() {
            // Nothing else changed, but the caller gets a new token all the same.
            events.push(event("session.token.rotated", json!({})));
        }
        self.consume_intent(pending_intent).await?;
        let token = generate_session_token(id)?;
        let update = SessionUpdate {
            state: SessionState { factors, metadata, expiration },
            token_hash: token.hash.clone(),
            challenges,
            events,
        };
        let session = self.repos().sessions.apply(id, &session.details, &update, ctx.actor()).await?;
        Ok((session, token.token, returned))
    }

    /// The expiration after a change: `now + lifetime` when a lifetime is given, else `current`.
    fn expiration(
        &self,
        lifetime: Option<TimeDelta>,
        now: DateTime<Utc>,
        current: Option<DateTime<Utc>>,
        events: &mut Vec<NewEvent>,
    ) -> Result<Option<DateTime<Utc>>> {
        let Some(lifetime) = lifetime else {
            return Ok(current);
        };
        let at = now
            .checked_add_signed(lifetime)
            .ok_or_else(|| Error::invalid_field(SESSION_INVALID, "lifetime", "is too long"))?;
        events.push(event(
            "session.lifetime.set",
            json!({ "lifetime_seconds": lifetime.num_seconds(), "expiration": time_json(at) }),
        ));
        Ok(Some(at))
    }

    // ---------------------------------------------------------------- checks

    /// Runs the checks in order (user, password, idp_intent, totp, otp_sms, otp_email); the first failure
    /// aborts. Failed attempts are counted before the error is returned.
    async fn run_checks(
        &self,
        session: &SessionId,
        factors: &mut Factors,
        checks: Checks,
        now: DateTime<Utc>,
    ) -> Result<CheckOutcome> {
        let Checks { user: user_check, password, idp_intent, totp, otp_sms, otp_email } = checks;
        let mut events = Vec::new();
        let later_checks =
            password.is_some() || idp_intent.is_some() || totp.is_some() || otp_sms.is_some() || otp_email.is_some();

        let mut user = None;
        if let Some(check) = user_check {
            let found = self.resolve_user(&check).await?;
            let Some(found) = found else {
                return Err(self.uniform_failure(password.as_deref()).await);
            };
            if let Some(existing) = &factors.user
                && existing.id != found.id
            {
                return Err(precondition(SESSION_USER_MISMATCH, "the session belongs to another user"));
            }
            factors.user = Some(UserFactor {
                verified_at: now,
                id: found.id.clone(),
                login_name: found.preferred_login_name.clone(),
                display_name: display_name(&found),
                organization_id: found.org_id.clone(),
            });
            events.push(event("session.user.checked", json!({ "user_id": found.id.as_str(), "at": time_json(now) })));
            user = Some(found);
        } else if let Some(existing) = &factors.user
            && later_checks
        {
            // The user may have been locked or deactivated since it was checked.
            let found = self.identity().find_active_user(&existing.id).await?;
            let Some(found) = found else {
                return Err(self.uniform_failure(password.as_deref()).await);
            };
            user = Some(found);
        }

        if !later_checks {
            return Ok(CheckOutcome { user, events, intent: None });
        }
        let Some(current) = user else {
            return Err(precondition(SESSION_USER_MISSING, "the user must be checked first"));
        };

        if let Some(password) = password {
            self.check_password(&current.id, &password).await?;
            factors.password = Some(now);
            events.push(event("session.password.checked", json!({ "at": time_json(now) })));
        }
        let mut intent = None;
        if let Some((id, token)) = idp_intent {
            let intents = self.intents.as_ref().ok_or_else(intent_unavailable)?;
            intents.verify_for_session(&id, &token, &current.id).await?;
            factors.intent = Some(now);
            events.push(event("session.intent.checked", json!({ "idp_intent_id": id, "at": time_json(now) })));
            intent = Some(PendingIntent { id, token, user: current.id.clone() });
        }
        if let Some(code) = totp {
            self.check_totp(&current.id, &code, now).await?;
            factors.totp = Some(now);
            events.push(event("session.totp.checked", json!({ "at": time_json(now) })));
        }
        if let Some(code) = otp_sms {
            self.check_otp(session, &current.id, OtpKind::Sms, &code, now).await?;
            factors.otp_sms = Some(now);
            events.push(event("session.otp_sms.checked", json!({ "at": time_json(now) })));
        }
        if let Some(code) = otp_email {
            self.check_otp(session, &current.id, OtpKind::Email, &code, now).await?;
            factors.otp_email = Some(now);
            events.push(event("session.otp_email.checked", json!({ "at": time_json(now) })));
        }
        Ok(CheckOutcome { user: Some(current), events, intent })
    }

    /// The active user named by `check`; `None` when unknown, inactive, locked or of an inactive org.
    async fn resolve_user(&self, check: &UserCheck) -> Result<Option<User>> {
        let found = match check {
            UserCheck::Id(id) => self.identity().sign_in_user(id).await?,
            UserCheck::LoginName(name) => self.identity().sign_in_user_by_login_name(name).await?,
        };
        match found {
            Some(user) => self.identity().active(user).await,
            None => Ok(None),
        }
    }

    /// The uniform credentials error; when the request also carried a password, one dummy verify first so
    /// an unknown or locked user costs the same time as a wrong password.
    async fn uniform_failure(&self, password: Option<&str>) -> Error {
        if let Some(password) = password {
            // The result is irrelevant; only the time spent matters.
            let _ = self.identity().hasher().dummy_verify(password).await;
        }
        credentials_invalid()
    }

    /// The limit of `kind`.
    fn max_attempts(&self, kind: LockoutKind) -> u32 {
        let LockoutPolicy { max_password_attempts, max_otp_attempts } = self.inner.config.lockout;
        match kind {
            LockoutKind::Password => max_password_attempts,
            LockoutKind::Otp => max_otp_attempts,
        }
    }

    /// Fails with the uniform error when the counter of `kind` reached its limit already (the user is being
    /// locked right now by a concurrent call); answers the current counter.
    async fn ensure_not_locked_out(&self, user: &UserId, kind: LockoutKind, password: Option<&str>) -> Result<u32> {
        let max = self.max_attempts(kind);
        let failed = self.repos().lockout.failed_attempts(user, kind).await?;
        if max > 0 && failed >= max {
            return Err(self.uniform_failure(password).await);
        }
        Ok(failed)
    }

    /// Counts a failure of `kind` (atomically, before the call fails), locks the user when this failure
    /// reached the limit, and answers `error` carrying the counter.
    async fn count_failure(&self, user: &UserId, kind: LockoutKind, error: Error) -> Error {
        let max = self.max_attempts(kind);
        let outcome = match self.repos().lockout.record_failure(user, kind, max).await {
            Ok(outcome) => outcome,
            Err(e) => return e,
        };
        if outcome.locked_now {
            if let Err(e) = self.identity().lock_after_failed_attempts(user).await {
                return e;
            }
            // The identity's hook may be another instance; end the sessions here too (idempotent).
            if let Err(e) = self.repos().sessions.terminate_all_of_user(user, SYSTEM_ACTOR).await {
                return e;
            }
        }
        error.with_metadata(FAILED_ATTEMPTS, outcome.failed_attempts)
    }

    /// Resets the counter of `kind` after a success (only when it is not 0 already, saving a write).
    async fn reset_failures(&self, user: &UserId, kind: LockoutKind, failed: u32) -> Result<()> {
        if failed > 0 {
            self.repos().lockout.reset(user, kind).await?;
        }
        Ok(())
    }

    async fn check_password(&self, user: &UserId, password: &str) -> Result<()> {
        let failed = self.ensure_not_locked_out(user, LockoutKind::Password, Some(password)).await?;
        if self.identity().verify_password(user, password).await? {
            self.reset_failures(user, LockoutKind::Password, failed).await
        } else {
            Err(self.count_failure(user, LockoutKind::Password, credentials_invalid()).await)
        }
    }

    fn code_invalid() -> Error {
        precondition(SESSION_CODE_INVALID, "the code is invalid")
    }

    async fn check_totp(&self, user: &UserId, code: &str, now: DateTime<Utc>) -> Result<()> {
        let registration = self.repos().totp.get(user).await?.filter(|r| r.verified);
        let Some(registration) = registration else {
            return Err(precondition(SESSION_TOTP_MISSING, "the user has no verified TOTP registration"));
        };
        let failed = self.ensure_not_locked_out(user, LockoutKind::Otp, None).await?;
        let accepted = match totp::verify(&registration.secret, code, now) {
            // A code counts once: a replay within its window is a failure like a wrong code.
            Some(step) => self.repos().totp.advance_step(user, step).await?,
            None => false,
        };
        if accepted {
            self.reset_failures(user, LockoutKind::Otp, failed).await
        } else {
            Err(self.count_failure(user, LockoutKind::Otp, Self::code_invalid()).await)
        }
    }

    async fn check_otp(
        &self,
        session: &SessionId,
        user: &UserId,
        kind: OtpKind,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let failed = self.ensure_not_locked_out(user, LockoutKind::Otp, None).await?;
        let hash = session_token_hash(code);
        match self.repos().otp_challenges.consume(session, kind, &hash, now).await? {
            OtpConsume::Consumed => self.reset_failures(user, LockoutKind::Otp, failed).await,
            OtpConsume::Mismatch => Err(self.count_failure(user, LockoutKind::Otp, Self::code_invalid()).await),
            OtpConsume::Expired => Err(precondition(SESSION_OTP_EXPIRED, "the code has expired")),
            OtpConsume::Missing => Err(precondition(SESSION_OTP_MISSING, "no code was requested for this session")),
        }
    }

    // ---------------------------------------------------------------- challenges

    /// Creates the requested OTP challenges (after the checks) for `user` (loaded by the checks) or the
    /// `checked` user of the session: codes are hashed for the store and either returned or sent now
    /// (before the write, so a failed delivery changes nothing).
    async fn create_challenges(
        &self,
        session: &SessionId,
        user: Option<&User>,
        checked: Option<&UserId>,
        request: &super::model::ChallengeRequest,
        now: DateTime<Utc>,
        events: &mut Vec<NewEvent>,
    ) -> Result<(Vec<NewOtpChallenge>, Challenges)> {
        let mut stored = Vec::new();
        let mut returned = Challenges::default();
        if request.is_empty() {
            return Ok((stored, returned));
        }
        let loaded;
        let user = match (user, checked) {
            (Some(user), _) => user,
            // Checked by an earlier request: its state and addresses may have changed since.
            (None, Some(id)) => {
                loaded = self.identity().find_active_user(id).await?.ok_or_else(credentials_invalid)?;
                &loaded
            }
            (None, None) => return Err(precondition(SESSION_USER_MISSING, "the user must be checked first")),
        };
        let human = human(user)
            .ok_or_else(|| precondition(SESSION_OTP_UNAVAILABLE, "one-time codes are for human users only"))?;
        let expires_at = now + OTP_TTL;
        for (kind, delivery) in [(OtpKind::Sms, &request.otp_sms), (OtpKind::Email, &request.otp_email)] {
            let Some(delivery) = delivery else {
                continue;
            };
            let code = otp_code()?;
            match (kind, delivery) {
                (OtpKind::Sms, OtpDelivery::Return) => returned.otp_sms = Some(code.clone()),
                (OtpKind::Email, OtpDelivery::Return) => returned.otp_email = Some(code.clone()),
                (OtpKind::Sms, OtpDelivery::Send { url_template: _ }) => {
                    let phone = human
                        .phone
                        .as_ref()
                        .ok_or_else(|| precondition(SESSION_OTP_UNAVAILABLE, "the user has no phone number"))?;
                    self.inner.otp.send_sms(&phone.number, &code).await?;
                }
                (OtpKind::Email, OtpDelivery::Send { url_template }) => {
                    let url = url_template.as_deref().map(|t| render_url(t, &code, user, session));
                    self.inner.otp.send_email(&human.email.address, &code, url.as_deref()).await?;
                }
            }
            stored.push(NewOtpChallenge { kind, code_hash: session_token_hash(&code), expires_at });
            events.push(event(
                "session.otp.challenged",
                json!({ "kind": kind.as_str(), "expires_at": time_json(expires_at) }),
            ));
        }
        Ok((stored, returned))
    }

    // ---------------------------------------------------------------- get / list / delete

    /// Whether the caller may see or end `session` with `perm`: its token, or the creator, or its user, or
    /// `perm` in the user's org (instance roles everywhere). A wrong token, or another session's ⇒
    /// PermissionDenied [`SESSION_TOKEN_INVALID`], neither ⇒ PermissionDenied [`SESSION_DENIED`].
    fn authorize(
        &self,
        ctx: &CallContext,
        session: &Session,
        token_hash: &str,
        token: Option<&str>,
        perm: Permission,
    ) -> Result<()> {
        if let Some(token) = token {
            // Strict shape, the session it names, then the digest of the whole string: truncated, extended and
            // other sessions' tokens fail alike.
            if session_token_opens(token, &session.id, token_hash) {
                return Ok(());
            }
            return Err(Error::new(ErrorKind::PermissionDenied, SESSION_TOKEN_INVALID, "the session token is invalid"));
        }
        let caller = &ctx.principal.user_id;
        let allowed = session.creator == caller.as_str()
            || session.factors.user.as_ref().is_some_and(|u| u.id == *caller || ctx.can(perm, &u.organization_id))
            || ctx.principal.has_instance(perm);
        if allowed {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::PermissionDenied,
                SESSION_DENIED,
                format!("a session token or {perm} is required"),
            ))
        }
    }

    /// The session (see [`Sessions::authorize`] with `session.read`); terminated or never existed ⇒
    /// NotFound. Expired sessions are answered.
    pub async fn get(&self, ctx: &CallContext, id: &SessionId, token: Option<&str>) -> Result<Session> {
        let stored = self.repos().sessions.get(id).await?.ok_or_else(not_found)?;
        if stored.session.terminated {
            return Err(not_found());
        }
        self.authorize(ctx, &stored.session, &stored.token_hash, token, Permission::SessionRead)?;
        Ok(stored.session)
    }

    /// Sessions matching `filters` that the caller may see: all with `session.read` on the instance, else
    /// those it created, those of itself, and those of users in orgs where it holds `session.read`.
    pub async fn list(
        &self,
        ctx: &CallContext,
        filters: Vec<SessionFilter>,
        q: ListQuery,
        asc_by_creation: bool,
    ) -> Result<Page<Session>> {
        let q = validate::list_query(ListQuery { asc: asc_by_creation, ..q })?;
        let mut resolved = Vec::with_capacity(filters.len() + 1);
        for filter in filters {
            resolved.push(match filter {
                SessionFilter::Creator(None) => SessionFilter::Creator(Some(ctx.actor().to_owned())),
                SessionFilter::UserAgentFingerprint(None) => {
                    return Err(Error::invalid_field(
                        SESSION_INVALID,
                        "queries.user_agent_query.fingerprint_id",
                        "is required: the caller's token has no user agent",
                    ));
                }
                other @ (SessionFilter::Ids(_)
                | SessionFilter::UserId(_)
                | SessionFilter::CreationDate(..)
                | SessionFilter::Creator(Some(_))
                | SessionFilter::UserAgentFingerprint(Some(_))
                | SessionFilter::ExpirationDate(..)
                | SessionFilter::VisibleTo { .. }) => other,
            });
        }
        if let Some(orgs) = ctx.principal.orgs_with(Permission::SessionRead) {
            resolved.push(SessionFilter::VisibleTo {
                creator: ctx.actor().to_owned(),
                user: ctx.principal.user_id.clone(),
                orgs,
            });
        }
        self.repos().sessions.list(&resolved, &q).await
    }

    /// Terminates the session (see [`Sessions::authorize`] with `session.delete`); a terminated session
    /// answers its details again (idempotent), an id that never existed ⇒ NotFound. Expired sessions can be
    /// deleted.
    pub async fn delete(&self, ctx: &CallContext, id: &SessionId, token: Option<&str>) -> Result<Details> {
        let stored = self.repos().sessions.get(id).await?.ok_or_else(not_found)?;
        self.authorize(ctx, &stored.session, &stored.token_hash, token, Permission::SessionDelete)?;
        if stored.session.terminated {
            return Ok(stored.session.details);
        }
        self.repos().sessions.terminate(id, Some(&stored.session.details), ctx.actor()).await
    }

    /// Bearer path: the checked user of the unexpired, non-terminated session whose token is `token`
    /// (strictly parsed, compared in full); `None` for anything else. The user's state is checked by
    /// [`Identity::authenticate`].
    pub async fn principal_for_token(&self, token: &str) -> Result<Option<UserId>> {
        let session = match parse_session_token(token) {
            // Read by primary key (answered from the session cache when it can), so the session is the one
            // the token names; then the digest compared.
            Some(SessionTokenShape::Split { id }) => match self.repos().sessions.get(&SessionId::from(id)).await? {
                Some(stored) if digest_matches(token, &stored.token_hash) => stored.session,
                Some(_) | None => return Ok(None),
            },
            // Issued before tokens named their session: only its digest can find it.
            Some(SessionTokenShape::Legacy) => {
                match self.repos().sessions.get_by_legacy_token_hash(&session_token_hash(token)).await? {
                    Some(session) => session,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        if session.terminated || session.is_expired(self.now()) {
            return Ok(None);
        }
        Ok(session.factors.user.map(|u| u.id))
    }

    // ---------------------------------------------------------------- TOTP registration

    /// The human user `id` when the caller is that user or holds `user.credential.write` in its org.
    async fn user_for_credentials(&self, ctx: &CallContext, id: &UserId) -> Result<User> {
        let user =
            self.identity().find_user(id).await?.ok_or_else(|| {
                Error::new(ErrorKind::NotFound, crate::identity::ports::USER_NOT_FOUND, "user not found")
            })?;
        if user.id != ctx.principal.user_id {
            ctx.require(Permission::UserCredentialWrite, &user.org_id)?;
        }
        if human(&user).is_none() {
            return Err(precondition(TOTP_NOT_HUMAN, "TOTP is for human users only"));
        }
        Ok(user)
    }

    /// Starts a TOTP registration: answers the `otpauth://` URI and the base32 secret (shown only now).
    /// A verified registration exists ⇒ AlreadyExists [`TOTP_EXISTS`]; an unverified one is replaced.
    pub async fn register_totp(&self, ctx: &CallContext, user: &UserId) -> Result<(String, String, Details)> {
        let found = self.user_for_credentials(ctx, user).await?;
        if self.repos().totp.get(user).await?.is_some_and(|r| r.verified) {
            return Err(Error::new(ErrorKind::AlreadyExists, TOTP_EXISTS, "TOTP is registered already"));
        }
        let secret = totp::generate_secret()?;
        let details = self.repos().totp.put_unverified(user, &secret, ctx.actor()).await?;
        let uri = totp::otpauth_uri(&self.inner.config.totp_issuer, &found.preferred_login_name, &secret);
        Ok((uri, secret, details))
    }

    /// Completes a TOTP registration with a current code. A wrong code ⇒ InvalidArgument `code`.
    pub async fn verify_totp_registration(&self, ctx: &CallContext, user: &UserId, code: &str) -> Result<Details> {
        self.user_for_credentials(ctx, user).await?;
        if !totp::is_well_formed_code(code) {
            return Err(Error::invalid_field(SESSION_INVALID, "code", "must be exactly 6 digits"));
        }
        let registration = self
            .repos()
            .totp
            .get(user)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, TOTP_NOT_FOUND, "no TOTP registration was started"))?;
        if registration.verified {
            return Err(precondition(TOTP_ALREADY_VERIFIED, "TOTP is verified already"));
        }
        let Some(step) = totp::verify(&registration.secret, code, self.now()) else {
            return Err(Error::invalid_field(TOTP_CODE_INVALID, "code", "does not match"));
        };
        self.repos().totp.mark_verified(user, step, ctx.actor()).await
    }

    /// Removes the TOTP registration. None ⇒ NotFound [`TOTP_NOT_FOUND`].
    pub async fn remove_totp(&self, ctx: &CallContext, user: &UserId) -> Result<Details> {
        self.user_for_credentials(ctx, user).await?;
        self.repos().totp.remove(user, ctx.actor()).await
    }
}

#[async_trait]
impl UserLifecycleHook for Sessions {
    async fn on_user_disabled(&self, user: &UserId) -> Result<()> {
        self.repos().sessions.terminate_all_of_user(user, SYSTEM_ACTOR).await.map(|_| ())
    }
}

#[async_trait]
impl SessionTokenResolver for Sessions {
    async fn user_for_session_token(&self, token: &str) -> Result<Option<UserId>> {
        self.principal_for_token(token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otp_codes_have_eight_digits() {
        for _ in 0..100 {
            let code = otp_code().unwrap();
            assert_eq!(code.len(), 8);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn metadata_merge_sets_overwrites_and_deletes() {
        let current = BTreeMap::from([("a".to_owned(), b"1".to_vec()), ("b".to_owned(), b"2".to_vec())]);
        let changes = BTreeMap::from([("a".to_owned(), Vec::new()), ("b".to_owned(), b"3".to_vec())]);
        let merged = merge_metadata(&current, &changes).unwrap();
        assert_eq!(merged, BTreeMap::from([("b".to_owned(), b"3".to_vec())]));
        let big = BTreeMap::from([("x".to_owned(), vec![0u8; MAX_METADATA_BYTES + 1])]);
        let err = merge_metadata(&BTreeMap::new(), &big).unwrap_err();
        assert_eq!(err.violations()[0].field, "metadata");
        let exact = BTreeMap::from([("x".to_owned(), vec![0u8; MAX_METADATA_BYTES])]);
        assert!(merge_metadata(&BTreeMap::new(), &exact).is_ok());
    }

    #[test]
    fn validation_names_fields() {
        let change = SessionChange {
            checks: Checks { totp: Some("12345".to_owned()), ..Checks::default() },
            metadata: BTreeMap::from([(String::new(), b"v".to_vec())]),
            lifetime: Some(TimeDelta::zero()),
            ..SessionChange::default()
        };
        let err = validate_change(&change).unwrap_err();
        let fields: Vec<&str> = err.violations().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["checks.totp.code", "metadata", "lifetime"]);
        let negative = SessionChange { lifetime: Some(TimeDelta::seconds(-1)), ..SessionChange::default() };
        assert_eq!(validate_change(&negative).unwrap_err().violations()[0].field, "lifetime");
    }

    #[test]
    fn url_placeholders_are_replaced_and_encoded() {
        use crate::identity::{Email, Human, OrgId, Profile, UserState};
        let now = Utc::now();
        let user = User {
            id: UserId::from("u1"),
            org_id: OrgId::from("o1"),
            username: "alice".to_owned(),
            state: UserState::Active,
            kind: UserKind::Human(Human {
                profile: Profile {
                    given_name: "A".to_owned(),
                    family_name: "B".to_owned(),
                    display_name: "A B".to_owned(),
                    preferred_language: "en".to_owned(),
                },
                email: Email { address: "a@b.ch".to_owned(), verified: true },
                phone: None,
                password_set: true,
                password_change_required: false,
                password_changed: None,
            }),
            details: Details { sequence: 1, creation_date: now, change_date: now, resource_owner: "o1".to_owned() },
            login_names: vec![],
            preferred_login_name: "alice@acme.localhost".to_owned(),
        };
        let url = render_url(
            "https://login/otp?c={{.Code}}&u={{.UserID}}&l={{.LoginName}}&d={{.DisplayName}}&s={{.SessionID}}",
            "12345678",
            &user,
            &SessionId::from("s1"),
        );
        assert_eq!(url, "https://login/otp?c=12345678&u=u1&l=alice%40acme.localhost&d=A%20B&s=s1");
    }
}
