//! The session repositories: sessions, one-time-code challenges, TOTP registrations and failed-attempt
//! counters, implementing the ports of [`flowgate_core::session::ports`] over the [`Store`].
//!
//! Every session change is one [`Store::write`] on the session aggregate (state row, challenges and events
//! together, the token digest replaced in the same commit, a legacy token's lookup digest cleared with it).
//! What must hold under concurrency without an event (a one-time code used once, a TOTP step accepted once,
//! failed-attempt counters that never pass their limit) is a single conditional `UPDATE`, decided by the
//! database row lock on both engines.

mod entity;
pub(crate) mod lockout;
mod otp;
mod repo;
mod totp;

pub use repo::SESSION_ID_TAKEN;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use flowgate_core::Result;
use flowgate_core::identity::{OrgId, UserId};
use flowgate_core::session::ports::{INSTANCE_OWNER, SessionRepos, SessionState};
use flowgate_core::session::{Factors, Session, UserAgent, UserFactor};
use serde_json::{Map, Value, json};

use self::entity::sessions;
use crate::identity::{changes_of, corrupt, row_details};
use crate::store::Store;

/// Aggregate type of sessions.
const SESSION: &str = "session";

/// Every session repository over one [`Store`]; each port trait is implemented by this one type.
#[derive(Debug, Clone)]
pub struct SessionRepositories {
    store: Store,
}

impl SessionRepositories {
    /// Repositories reading and writing through `store` (which must be migrated).
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// The [`SessionRepos`] bundle the session use cases are built with, all backed by `store`.
pub fn repos(store: &Store) -> SessionRepos {
    let repos = Arc::new(SessionRepositories::new(store.clone()));
    SessionRepos { sessions: repos.clone(), otp_challenges: repos.clone(), totp: repos.clone(), lockout: repos }
}

/// A time as stored: microseconds, what PostgreSQL keeps, so answers equal what is read back later.
fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// Writes `state` into `row` (every factor, the metadata and the expiration are replaced).
fn set_state(row: &mut sessions::Model, state: &SessionState) {
    let Factors { user, password, totp, otp_sms, otp_email, intent } = &state.factors;
    row.user_id = user.as_ref().map(|u| u.id.as_str().to_owned());
    row.user_login_name = user.as_ref().map(|u| u.login_name.clone());
    row.user_display_name = user.as_ref().map(|u| u.display_name.clone());
    row.user_org_id = user.as_ref().map(|u| u.organization_id.as_str().to_owned());
    row.user_checked_at = user.as_ref().map(|u| micros(u.verified_at));
    row.password_checked_at = password.map(micros);
    row.totp_checked_at = totp.map(micros);
    row.otp_sms_checked_at = otp_sms.map(micros);
    row.otp_email_checked_at = otp_email.map(micros);
    row.intent_checked_at = intent.map(micros);
    row.metadata = metadata_json(&state.metadata);
    row.expiration = state.expiration.map(micros);
}

/// A row of session `id` with nothing checked, no metadata and no dates yet.
fn blank_row(id: String, creator: String, token_hash: String) -> sessions::Model {
    sessions::Model {
        id,
        creator,
        user_id: None,
        user_login_name: None,
        user_display_name: None,
        user_org_id: None,
        user_checked_at: None,
        password_checked_at: None,
        totp_checked_at: None,
        otp_sms_checked_at: None,
        otp_email_checked_at: None,
        intent_checked_at: None,
        token_hash,
        // New tokens name their session and are found by its id.
        legacy_token_hash: None,
        metadata: empty_object(),
        user_agent: None,
        fingerprint_id: None,
        expiration: None,
        terminated_at: None,
        created_at: DateTime::<Utc>::MIN_UTC,
        changed_at: DateTime::<Utc>::MIN_UTC,
        sequence: 0,
    }
}

/// The columns [`set_state`] writes.
const STATE_COLUMNS: [sessions::Column; 12] = [
    sessions::Column::UserId,
    sessions::Column::UserLoginName,
    sessions::Column::UserDisplayName,
    sessions::Column::UserOrgId,
    sessions::Column::UserCheckedAt,
    sessions::Column::PasswordCheckedAt,
    sessions::Column::TotpCheckedAt,
    sessions::Column::OtpSmsCheckedAt,
    sessions::Column::OtpEmailCheckedAt,
    sessions::Column::IntentCheckedAt,
    sessions::Column::Metadata,
    sessions::Column::Expiration,
];

/// An update of exactly the state columns to `state` (filled by [`set_state`]; nothing else is set).
fn state_changes(state: &SessionState) -> sessions::ActiveModel {
    let mut row = blank_row(String::new(), String::new(), String::new());
    set_state(&mut row, state);
    changes_of(sessions::ActiveModel::from(row), &STATE_COLUMNS)
}

/// The domain object of a session row.
fn session_from_row(row: sessions::Model) -> Result<Session> {
    let details = row_details(row.created_at, row.changed_at, row.sequence, INSTANCE_OWNER)?;
    let user = match (row.user_id, row.user_checked_at) {
        (Some(id), Some(verified_at)) => Some(UserFactor {
            verified_at,
            id: UserId::from(id),
            login_name: row.user_login_name.unwrap_or_default(),
            display_name: row.user_display_name.unwrap_or_default(),
            organization_id: OrgId::from(row.user_org_id.unwrap_or_default()),
        }),
        _ => None,
    };
    let factors = Factors {
        user,
        password: row.password_checked_at,
        totp: row.totp_checked_at,
        otp_sms: row.otp_sms_checked_at,
        otp_email: row.otp_email_checked_at,
        intent: row.intent_checked_at,
    };
    Ok(Session {
        id: row.id.into(),
        creator: row.creator,
        user_agent: row.user_agent.as_ref().map(user_agent_from_json).transpose()?,
        factors,
        metadata: metadata_from_json(&row.metadata)?,
        expiration: row.expiration,
        terminated: row.terminated_at.is_some(),
        details,
    })
}

/// Metadata as stored: an object of base64 (standard, padded) values, a third larger than the bytes
/// instead of the fourfold of a JSON number array.
fn metadata_json(metadata: &BTreeMap<String, Vec<u8>>) -> Value {
    Value::Object(metadata.iter().map(|(k, v)| (k.clone(), Value::String(base64_encode(v)))).collect())
}

fn metadata_from_json(value: &Value) -> Result<BTreeMap<String, Vec<u8>>> {
    let Value::Object(map) = value else { return Err(corrupt("session metadata", &value.to_string())) };
    map.iter()
        .map(|(key, value)| {
            let decoded = value.as_str().and_then(base64_decode);
            decoded.map(|bytes| (key.clone(), bytes)).ok_or_else(|| corrupt("metadata value of", key))
        })
        .collect()
}

fn user_agent_json(agent: &UserAgent) -> Value {
    json!({
        "fingerprint_id": agent.fingerprint_id,
        "ip": agent.ip,
        "description": agent.description,
        "headers": agent.headers,
    })
}

fn user_agent_from_json(value: &Value) -> Result<UserAgent> {
    let bad = || corrupt("session user agent", &value.to_string());
    let text = |field: &str| -> Result<Option<String>> {
        match value.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad()),
        }
    };
    let headers = match value.get("headers") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => {
            map.iter().map(|(name, values)| Ok((name.clone(), strings(values)?))).collect::<Result<_>>()?
        }
        Some(_) => return Err(bad()),
    };
    Ok(UserAgent {
        fingerprint_id: text("fingerprint_id")?,
        ip: text("ip")?,
        description: text("description")?,
        headers,
    })
}

fn strings(value: &Value) -> Result<Vec<String>> {
    let bad = || corrupt("header values", &value.to_string());
    let Value::Array(items) = value else { return Err(bad()) };
    items.iter().map(|item| item.as_str().map(str::to_owned).ok_or_else(bad)).collect()
}

/// An empty JSON object (the metadata of a session without any).
fn empty_object() -> Value {
    Value::Object(Map::new())
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes [`base64_encode`] output; `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        BASE64.iter().position(|&b| b == c).and_then(|p| u32::try_from(p).ok())
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (index, quad) in bytes.chunks(4).enumerate() {
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && index + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - padding] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * padding;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37).wrapping_add(200)).collect();
            let text = base64_encode(&bytes);
            assert_eq!(base64_decode(&text), Some(bytes), "{text}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8"), None);
        assert_eq!(base64_decode("Z=8="), None);
        assert_eq!(base64_decode("Zm8=Zm8="), None);
    }

    /// SetSession writes only [`STATE_COLUMNS`]: a column `set_state` fills but the list lacks would be
    /// silently left as it was.
    #[test]
    fn state_changes_cover_every_column_set_state_writes() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("time");
        let factors = Factors {
            user: Some(UserFactor {
                verified_at: at,
                id: UserId::from("u"),
                login_name: "l".into(),
                display_name: "d".into(),
                organization_id: OrgId::from("o"),
            }),
            password: Some(at),
            totp: Some(at),
            otp_sms: Some(at),
            otp_email: Some(at),
            intent: Some(at),
        };
        let state =
            SessionState { factors, metadata: BTreeMap::from([("k".to_owned(), b"v".to_vec())]), expiration: Some(at) };
        let blank = sessions::ActiveModel::from(blank_row(String::new(), String::new(), String::new()));
        crate::identity::assert_changes_cover(&state_changes(&state), &blank, &STATE_COLUMNS);
    }
}
