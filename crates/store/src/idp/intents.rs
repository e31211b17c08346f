//! [`IntentRepo`]: intents, each one row of `idp_intents` and the `idp_intent` aggregate. An intent leaves
//! `started` and `succeeded` only through conditional updates on its state.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::event::{Details, NewEvent, WriteIntent};
use flowgate_core::idp::ports::{IDP_NOT_FOUND, INSTANCE_OWNER, IntentRepo, IntentSuccess, NewIntentRecord};
use flowgate_core::idp::{Intent, IntentFailure, IntentId, IntentState, StoredExternalUser};
use flowgate_core::{Error, ErrorKind, Result};
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QuerySelect, SqlErr,
};
use serde_json::json;

use super::entity::idp_intents;
use super::{IDP_INTENT, IdpRepositories, micros, serialize_error};
use crate::error::{SEQUENCE_MISMATCH, db_error};
use crate::event_log::{Planned, StateError, state};
use crate::identity::{already_exists, corrupt, db_sequence, event, intent, not_found, row_details, taken};
use crate::planned::RowInsert;

/// Error id: AlreadyExists, an intent with the same id exists (only with a broken id generator).
pub const INTENT_ID_TAKEN: &str = "IDP-intent-id-taken";

/// Id of the error that rolls a conditional transition back when the intent was not in the state it
/// requires (so its event is not appended either); never leaves this module.
const NOT_IN_STATE: &str = "STORE-intent-not-in-state";

/// The domain object of an intent row.
fn intent_from_row(row: idp_intents::Model) -> Result<Intent> {
    let state = IntentState::parse(&row.state).ok_or_else(|| corrupt("intent state", &row.state))?;
    let external = row
        .external
        .map(serde_json::from_value::<StoredExternalUser>)
        .transpose()
        .map_err(|e| corrupt("external user of intent", &format!("{}: {e}", row.id)))?;
    let failure = match (row.failure_reason, row.failure_description) {
        (Some(error), description) => Some(IntentFailure { error, description: description.unwrap_or_default() }),
        (None, _) => None,
    };
    let details = row_details(row.created_at, row.changed_at, row.sequence, INSTANCE_OWNER)?;
    Ok(Intent {
        id: row.id.into(),
        idp_id: row.idp_id.into(),
        state,
        success_url: row.success_url,
        failure_url: row.failure_url,
        pkce_verifier: row.pkce_verifier.map(flowgate_core::idp::Sealed::from_stored),
        nonce: row.nonce,
        token_hash: row.token_hash,
        external,
        user_id: row.user_id.map(Into::into),
        created_at: row.created_at,
        succeeded_at: row.succeeded_at,
        expires_at: row.expires_at,
        failure,
        details,
    })
}

/// Moves intent `id` from `from` to the state set in `values` with one conditional `UPDATE` (plus
/// `extra`, further conditions), stamping the write's sequence and time; answers the intent's creation
/// date. When no row was in state `from`, fails with [`NOT_IN_STATE`], which rolls the whole write back.
async fn transition(
    txn: &DatabaseTransaction,
    id: &str,
    from: IntentState,
    extra: Option<SimpleExpr>,
    values: Vec<(idp_intents::Column, SimpleExpr)>,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StateError> {
    let mut update = idp_intents::Entity::update_many()
        .col_expr(idp_intents::Column::ChangedAt, Expr::value(at))
        .col_expr(idp_intents::Column::Sequence, Expr::value(db_sequence(sequence)?))
        .filter(idp_intents::Column::Id.eq(id))
        .filter(idp_intents::Column::State.eq(from.as_str()));
    for (column, value) in values {
        update = update.col_expr(column, value);
    }
    if let Some(extra) = extra {
        update = update.filter(extra);
    }
    // The whole decision is the WHERE clause of this one statement: of concurrent writers, the row lock
    // lets exactly one see the intent still in state `from`.
    if update.exec(txn).await?.rows_affected == 0 {
        return Err(Error::new(ErrorKind::FailedPrecondition, NOT_IN_STATE, "the intent changed meanwhile").into());
    }
    let created_at = idp_intents::Entity::find_by_id(id)
        .select_only()
        .column(idp_intents::Column::CreatedAt)
        .into_tuple::<DateTime<Utc>>()
        .one(txn)
        .await?;
    Ok(created_at)
}

/// What a failed insert of a new intent means: its IdP is gone, or its id is taken.
fn intent_refused(err: DbErr) -> StateError {
    if matches!(err.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_))) {
        return not_found(IDP_NOT_FOUND, "IdP not found").into();
    }
    taken(err, &[], (INTENT_ID_TAKEN, INTENT_ID_TAKEN_MESSAGE))
}

const INTENT_ID_TAKEN_MESSAGE: &str = "an intent with this id exists already";

fn intent_id_taken() -> Error {
    already_exists(INTENT_ID_TAKEN, INTENT_ID_TAKEN_MESSAGE)
}

impl IdpRepositories {
    /// One conditional transition of intent `id` with `events`: `None` when the intent was missing or not
    /// in state `from` (nothing written), else the write's details with the intent's creation date.
    async fn transition_intent(
        &self,
        id: &IntentId,
        actor: &str,
        events: Vec<NewEvent>,
        from: IntentState,
        extra: Option<SimpleExpr>,
        values: Vec<(idp_intents::Column, SimpleExpr)>,
    ) -> Result<Option<Details>> {
        let written = self
            .store
            .write_returning(intent(IDP_INTENT, id.as_str(), INSTANCE_OWNER, actor, events), |txn, ctx| {
                let (id, extra, values) = (id.as_str().to_owned(), extra.clone(), values.clone());
                state(async move { transition(txn, &id, from, extra, values, ctx.sequence, ctx.created_at).await })
            })
            .await;
        match written {
            Ok((created_at, details)) => {
                Ok(Some(Details { creation_date: created_at.unwrap_or(details.creation_date), ..details }))
            }
            Err(err) if err.id() == NOT_IN_STATE => Ok(None),
            Err(err) => Err(err),
        }
    }
}

#[async_trait]
impl IntentRepo for IdpRepositories {
    async fn create(&self, record: &NewIntentRecord, actor: &str) -> Result<Details> {
        let NewIntentRecord { id, idp_id, success_url, failure_url, pkce_verifier, nonce, created_at, expires_at } =
            record;
        let created_at = micros(*created_at);
        let template = idp_intents::Model {
            id: id.as_str().to_owned(),
            idp_id: idp_id.as_str().to_owned(),
            state: IntentState::Started.as_str().to_owned(),
            success_url: success_url.clone(),
            failure_url: failure_url.clone(),
            pkce_verifier: pkce_verifier.as_ref().map(|v| v.as_str().to_owned()),
            nonce: nonce.clone(),
            token_hash: None,
            external: None,
            user_id: None,
            created_at,
            succeeded_at: None,
            expires_at: micros(*expires_at),
            failure_reason: None,
            failure_description: None,
            changed_at: created_at,
            sequence: 0,
        };
        let events = vec![event(
            "idp.intent.started",
            json!({ "idp_id": idp_id.as_str(), "success_url": success_url, "failure_url": failure_url }),
        )];
        // Nothing is read back, so the write can go to a batch as statements. Whether the IdP exists is left
        // to the intent's foreign key (a missing IdP becomes NotFound below): the caller read the IdP just
        // before, so only a removal racing the start meets it.
        let new = WriteIntent {
            expected_sequence: Some(0),
            ..intent(IDP_INTENT, id.as_str(), INSTANCE_OWNER, actor, events)
        };
        let written = self
            .store
            .write_new_planned(new, |ctx, _| {
                let mut row = template.clone();
                row.changed_at = ctx.created_at;
                row.sequence = db_sequence(ctx.sequence)?;
                let insert = RowInsert::from_model(idp_intents::ActiveModel::from(row).reset_all());
                Ok(Planned { value: (), statements: vec![insert.into()], on_error: intent_refused })
            })
            .await;
        match written {
            Ok((_, details)) => Ok(Details { creation_date: created_at, ..details }),
            // A new aggregate whose log exists already: the id is taken.
            Err(err) if err.id() == SEQUENCE_MISMATCH => Err(intent_id_taken().with_source(err)),
            Err(err) => Err(err),
        }
    }

    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64> {
        let deleted = idp_intents::Entity::delete_many()
            .filter(idp_intents::Column::ExpiresAt.lt(micros(before)))
            .exec(self.store.writer())
            .await
            .map_err(db_error)?;
        Ok(deleted.rows_affected)
    }

    async fn get(&self, id: &IntentId) -> Result<Option<Intent>> {
        let row = idp_intents::Entity::find_by_id(id.as_str()).one(self.store.reader()).await.map_err(db_error)?;
        row.map(intent_from_row).transpose()
    }

    async fn succeed(&self, id: &IntentId, success: &IntentSuccess, actor: &str) -> Result<Option<Details>> {
        let IntentSuccess { token_hash, external, user_id, succeeded_at, expires_at } = success;
        let external_json = serde_json::to_value(external).map_err(serialize_error("external user"))?;
        let values = vec![
            (idp_intents::Column::State, Expr::value(IntentState::Succeeded.as_str())),
            (idp_intents::Column::TokenHash, Expr::value(token_hash.as_str())),
            (idp_intents::Column::External, Expr::value(external_json)),
            (idp_intents::Column::UserId, Expr::value(user_id.as_ref().map(|u| u.as_str().to_owned()))),
            (idp_intents::Column::SucceededAt, Expr::value(micros(*succeeded_at))),
            (idp_intents::Column::ExpiresAt, Expr::value(micros(*expires_at))),
        ];
        let events = vec![event(
            "idp.intent.succeeded",
            json!({
                "external_user_id": external.id,
                "external_username": external.username,
                "user_id": user_id.as_ref().map(|u| u.as_str()),
            }),
        )];
        self.transition_intent(id, actor, events, IntentState::Started, None, values).await
    }

    async fn fail(&self, id: &IntentId, failure: &IntentFailure, actor: &str) -> Result<Option<Details>> {
        let IntentFailure { error, description } = failure;
        let values = vec![
            (idp_intents::Column::State, Expr::value(IntentState::Failed.as_str())),
            (idp_intents::Column::FailureReason, Expr::value(error.as_str())),
            (idp_intents::Column::FailureDescription, Expr::value(description.as_str())),
        ];
        let events = vec![event("idp.intent.failed", json!({ "error": error, "description": description }))];
        self.transition_intent(id, actor, events, IntentState::Started, None, values).await
    }

    async fn consume(&self, id: &IntentId, actor: &str) -> Result<bool> {
        // The core checks expiry with its clock before; repeating it in the statement closes the gap
        // between that check and this write, so an intent can never be used after it expired.
        let unexpired = Some(idp_intents::Column::ExpiresAt.gt(micros(Utc::now())));
        let values = vec![(idp_intents::Column::State, Expr::value(IntentState::Consumed.as_str()))];
        let events = vec![event("idp.intent.consumed", json!({}))];
        let consumed = self.transition_intent(id, actor, events, IntentState::Succeeded, unexpired, values).await?;
        Ok(consumed.is_some())
    }
}
