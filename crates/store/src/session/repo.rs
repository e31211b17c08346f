//! [`SessionRepo`]: sessions, written one event-log write per change.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::event::{Details, NewEvent, WriteIntent};
use flowgate_core::identity::{ListQuery, OrgId, Page, UserId};
use flowgate_core::session::ports::{
    INSTANCE_OWNER, NewOtpChallenge, NewSessionRecord, SESSION_NOT_FOUND, SESSION_TERMINATED, SessionRepo,
    SessionUpdate, StoredSession,
};
use flowgate_core::session::{Session, SessionFilter, SessionId, TimestampMethod};
use flowgate_core::{Error, ErrorKind, Result};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseTransaction, EntityTrait, Insert, Order, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait,
};
use serde_json::json;

use super::entity::{otp_challenges, sessions};
use super::{
    SESSION, SessionRepositories, blank_row, micros, session_from_row, set_state, state_changes, user_agent_json,
};
use crate::error::db_error;
use crate::event_log::{Planned, StateError, StateFuture, WriteContext, state};
use crate::identity::{aggregate, db_sequence, event, not_found, nothing, page, row_details, taken};
use crate::planned::{PlannedStatement, RowInsert};

/// Error id: AlreadyExists, a session with the same id exists.
pub const SESSION_ID_TAKEN: &str = "SESSION-id-taken";

/// Id of the error that rolls a termination back when another one won the race; never leaves this module.
const ALREADY_TERMINATED: &str = "STORE-session-already-terminated";

/// What a unique violation of a new session means: its id is taken. (The other unique index, on
/// `legacy_token_hash`, only holds digests of tokens issued before, and new rows leave it NULL.)
fn session_taken(err: sea_orm::DbErr) -> StateError {
    taken(err, &[], (SESSION_ID_TAKEN, "a session with this id exists already"))
}

/// Rolls a termination back when another one got there first (its event too).
fn already_terminated() -> StateError {
    Error::new(ErrorKind::Aborted, ALREADY_TERMINATED, "terminated already").into()
}

fn session_not_found() -> Error {
    not_found(SESSION_NOT_FOUND, "session not found")
}

fn session_terminated() -> Error {
    Error::new(ErrorKind::FailedPrecondition, SESSION_TERMINATED, "the session is terminated")
}

/// A write of `events` on the session `id`.
fn session_intent(id: &str, actor: &str, expected_sequence: Option<u64>, events: Vec<NewEvent>) -> WriteIntent {
    WriteIntent {
        aggregate: aggregate(SESSION, id),
        resource_owner: INSTANCE_OWNER.to_owned(),
        creator: actor.to_owned(),
        expected_sequence,
        events,
    }
}

/// Stores `challenges` of session `id`, each replacing an earlier one of the same kind (used or not).
async fn put_challenges(
    txn: &DatabaseTransaction,
    id: &str,
    challenges: &[NewOtpChallenge],
    at: DateTime<Utc>,
) -> Result<(), StateError> {
    for challenge in challenges {
        challenge_upsert(id, challenge, at).exec_without_returning(txn).await?;
    }
    Ok(())
}

/// The statement storing `challenge` of session `id`, replacing an earlier one of the same kind.
fn challenge_upsert(id: &str, challenge: &NewOtpChallenge, at: DateTime<Utc>) -> Insert<otp_challenges::ActiveModel> {
    let row = otp_challenges::Model {
        session_id: id.to_owned(),
        kind: challenge.kind.as_str().to_owned(),
        code_hash: challenge.code_hash.clone(),
        expires_at: micros(challenge.expires_at),
        used_at: None,
        created_at: at,
    };
    otp_challenges::Entity::insert(otp_challenges::ActiveModel::from(row).reset_all()).on_conflict(
        OnConflict::columns([otp_challenges::Column::SessionId, otp_challenges::Column::Kind])
            .update_columns([
                otp_challenges::Column::CodeHash,
                otp_challenges::Column::ExpiresAt,
                otp_challenges::Column::UsedAt,
                otp_challenges::Column::CreatedAt,
            ])
            .to_owned(),
    )
}

/// The session row `id` inside a write, or NotFound.
async fn session_row(txn: &DatabaseTransaction, id: &str) -> Result<sessions::Model, StateError> {
    Ok(sessions::Entity::find_by_id(id).one(txn).await?.ok_or_else(session_not_found)?)
}

/// The state of a termination: session `id` terminated where it still has the sequence the write is based
/// on; answers its creation time.
fn terminate_row(txn: &DatabaseTransaction, ctx: WriteContext, id: String) -> StateFuture<'_, DateTime<Utc>> {
    state(async move {
        let previous = db_sequence(ctx.previous_sequence)?;
        let updated = sessions::Entity::update_many()
            .col_expr(sessions::Column::TerminatedAt, Expr::value(ctx.created_at))
            .col_expr(sessions::Column::ChangedAt, Expr::value(ctx.created_at))
            .col_expr(sessions::Column::Sequence, Expr::value(db_sequence(ctx.sequence)?))
            .filter(sessions::Column::Id.eq(id.as_str()))
            .filter(sessions::Column::Sequence.eq(previous))
            .filter(sessions::Column::TerminatedAt.is_null())
            .exec_with_returning(txn)
            .await?;
        let Some(row) = updated.into_iter().next() else {
            // Gone (NotFound), terminated by someone else first, or changed since it was read: say which.
            if session_row(txn, &id).await?.terminated_at.is_some() {
                return Err(already_terminated());
            }
            return Err(StateError::Stale);
        };
        // Codes of a terminated session can never be used: no reason to keep their digests.
        otp_challenges::Entity::delete_many()
            .filter(otp_challenges::Column::SessionId.eq(id.as_str()))
            .exec(txn)
            .await?;
        Ok(row.created_at)
    })
}

/// `column <method> at`.
fn compare(column: sessions::Column, at: DateTime<Utc>, method: TimestampMethod) -> Expr {
    let column = Expr::col(column);
    match method {
        TimestampMethod::Equals => column.eq(at),
        TimestampMethod::Greater => column.gt(at),
        TimestampMethod::GreaterOrEquals => column.gte(at),
        TimestampMethod::Less => column.lt(at),
        TimestampMethod::LessOrEquals => column.lte(at),
    }
}

fn session_condition(filters: &[SessionFilter]) -> Condition {
    filters.iter().fold(Condition::all(), |all, filter| match filter {
        SessionFilter::Ids(ids) if ids.is_empty() => all.add(nothing()),
        SessionFilter::Ids(ids) => all.add(sessions::Column::Id.is_in(ids.iter().map(SessionId::as_str))),
        SessionFilter::UserId(user) => all.add(sessions::Column::UserId.eq(user.as_str())),
        SessionFilter::CreationDate(at, method) => all.add(compare(sessions::Column::CreatedAt, *at, *method)),
        // The core resolves `None` to the caller; should one slip through, it matches nothing rather than all.
        SessionFilter::Creator(Some(creator)) => all.add(sessions::Column::Creator.eq(creator.as_str())),
        SessionFilter::UserAgentFingerprint(Some(id)) => all.add(sessions::Column::FingerprintId.eq(id.as_str())),
        SessionFilter::Creator(None) | SessionFilter::UserAgentFingerprint(None) => all.add(nothing()),
        // NULL expirations compare as unknown: sessions without expiration never match.
        SessionFilter::ExpirationDate(at, method) => all.add(compare(sessions::Column::Expiration, *at, *method)),
        SessionFilter::VisibleTo { creator, user, orgs } => {
            let mut any = Condition::any()
                .add(sessions::Column::Creator.eq(creator.as_str()))
                .add(sessions::Column::UserId.eq(user.as_str()));
            if !orgs.is_empty() {
                any = any.add(sessions::Column::UserOrgId.is_in(orgs.iter().map(OrgId::as_str)));
            }
            all.add(any)
        }
    })
}

impl SessionRepositories {
    /// Terminates session `id` in one write, starting from the ends the caller `read` when given; `None`
    /// when it is terminated already (nothing written).
    async fn terminate_one(&self, id: &str, actor: &str, read: Option<&Details>) -> Result<Option<Details>> {
        let events = vec![event("session.terminated", json!({}))];
        let intent = session_intent(id, actor, None, events);
        let written = match read {
            Some(read) => {
                self.store.write_returning_known(intent, read, |txn, ctx| terminate_row(txn, ctx, id.to_owned())).await
            }
            None => self.store.write_returning(intent, |txn, ctx| terminate_row(txn, ctx, id.to_owned())).await,
        };
        match written {
            Ok((created_at, details)) => Ok(Some(Details { creation_date: created_at, ..details })),
            Err(err) if err.id() == ALREADY_TERMINATED => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn find(&self, id: &str) -> Result<Option<sessions::Model>> {
        sessions::Entity::find_by_id(id).one(self.store.reader()).await.map_err(db_error)
    }
}

#[async_trait]
impl SessionRepo for SessionRepositories {
    async fn create(&self, record: &NewSessionRecord, actor: &str) -> Result<Session> {
        let mut template = blank_row(record.id.as_str().to_owned(), record.creator.clone(), record.token_hash.clone());
        template.user_agent = record.user_agent.as_ref().map(user_agent_json);
        template.fingerprint_id = record.user_agent.as_ref().and_then(|a| a.fingerprint_id.clone());
        set_state(&mut template, &record.state);
        let intent = session_intent(record.id.as_str(), actor, Some(0), record.events.clone());
        // Nothing of a new session's rows is read back, so the whole write can go to a batch as statements.
        let (row, _) = self
            .store
            .write_new_planned(intent, |ctx, backend| {
                let mut row = template.clone();
                row.created_at = ctx.created_at;
                row.changed_at = ctx.created_at;
                row.sequence = db_sequence(ctx.sequence)?;
                let session = RowInsert::from_model(sessions::ActiveModel::from(row.clone()).reset_all());
                let mut statements = vec![PlannedStatement::from(session)];
                for challenge in &record.challenges {
                    statements.push(challenge_upsert(&row.id, challenge, ctx.created_at).build(backend).into());
                }
                Ok(Planned { value: row, statements, on_error: session_taken })
            })
            .await?;
        session_from_row(row)
    }

    async fn get(&self, id: &SessionId) -> Result<Option<StoredSession>> {
        let Some(row) = self.find(id.as_str()).await? else { return Ok(None) };
        let token_hash = row.token_hash.clone();
        Ok(Some(StoredSession { session: session_from_row(row)?, token_hash }))
    }

    async fn get_by_legacy_token_hash(&self, token_hash: &str) -> Result<Option<Session>> {
        // Equality on the whole digest: a non-NULL value, so the partial unique index serves it on both engines.
        let row = sessions::Entity::find()
            .filter(sessions::Column::LegacyTokenHash.eq(token_hash))
            .one(self.store.reader())
            .await
            .map_err(db_error)?;
        row.map(session_from_row).transpose()
    }

    async fn apply(&self, id: &SessionId, read: &Details, update: &SessionUpdate, actor: &str) -> Result<Session> {
        // The row records the details the caller read; the write starts from them (see `write_returning_known`).
        let intent = session_intent(id.as_str(), actor, Some(read.sequence), update.events.clone());
        let (row, _) = self
            .store
            .write_returning_known(intent, read, |txn, ctx| {
                let (id, update) = (id.as_str().to_owned(), update.clone());
                state(async move {
                    let previous = db_sequence(ctx.previous_sequence)?;
                    // Only what changes is written; the row comes back whole.
                    let mut changes = state_changes(&update.state);
                    changes.token_hash = sea_orm::Set(update.token_hash);
                    // A legacy token stops working with its rotation, as every replaced token does.
                    changes.legacy_token_hash = sea_orm::Set(None);
                    changes.changed_at = sea_orm::Set(ctx.created_at);
                    changes.sequence = sea_orm::Set(db_sequence(ctx.sequence)?);
                    let updated = sessions::Entity::update_many()
                        .set(changes)
                        .filter(sessions::Column::Id.eq(id.as_str()))
                        .filter(sessions::Column::Sequence.eq(previous))
                        .filter(sessions::Column::TerminatedAt.is_null())
                        .exec_with_returning(txn)
                        .await?;
                    let Some(row) = updated.into_iter().next() else {
                        // Gone (NotFound), terminated, or changed since it was read: say which.
                        if session_row(txn, &id).await?.terminated_at.is_some() {
                            return Err(session_terminated().into());
                        }
                        return Err(StateError::Stale);
                    };
                    put_challenges(txn, &id, &update.challenges, ctx.created_at).await?;
                    Ok(row)
                })
            })
            .await?;
        session_from_row(row)
    }

    async fn list(&self, filters: &[SessionFilter], q: &ListQuery) -> Result<Page<Session>> {
        let order = if q.asc { Order::Asc } else { Order::Desc };
        let select = sessions::Entity::find()
            .filter(sessions::Column::TerminatedAt.is_null())
            .filter(session_condition(filters))
            .order_by(sessions::Column::CreatedAt, order.clone())
            .order_by(sessions::Column::Id, order);
        let (rows, total) = page(&self.store, select, q).await?;
        Ok(Page { items: rows.into_iter().map(session_from_row).collect::<Result<_>>()?, total })
    }

    async fn terminate(&self, id: &SessionId, read: Option<&Details>, actor: &str) -> Result<Details> {
        if let Some(details) = self.terminate_one(id.as_str(), actor, read).await? {
            return Ok(details);
        }
        // Terminated already (perhaps just now, by a concurrent call): its details as they are.
        let row = self.find(id.as_str()).await?.ok_or_else(session_not_found)?;
        row_details(row.created_at, row.changed_at, row.sequence, INSTANCE_OWNER)
    }

    async fn terminate_all_of_user(&self, user: &UserId, actor: &str) -> Result<u64> {
        let ids = sessions::Entity::find()
            .select_only()
            .column(sessions::Column::Id)
            .filter(sessions::Column::UserId.eq(user.as_str()))
            .filter(sessions::Column::TerminatedAt.is_null())
            .order_by_asc(sessions::Column::CreatedAt)
            .into_tuple::<String>()
            .all(self.store.reader())
            .await
            .map_err(db_error)?;
        let mut terminated = 0;
        for id in ids {
            if self.terminate_one(&id, actor, None).await?.is_some() {
                terminated += 1;
            }
        }
        Ok(terminated)
    }
}
