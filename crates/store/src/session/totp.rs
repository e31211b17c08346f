//! [`TotpRepo`]: users' TOTP registrations; their events belong to the user aggregate.

use async_trait::async_trait;
use flowgate_core::event::{Details, NewEvent};
use flowgate_core::identity::UserId;
use flowgate_core::identity::ports::USER_NOT_FOUND;
use flowgate_core::session::ports::{TOTP_NOT_FOUND, TotpRegistration, TotpRepo};
use flowgate_core::{Error, Result};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect};
use serde_json::json;

use super::SessionRepositories;
use super::entity::user_totp;
use crate::error::db_error;
use crate::event_log::{StateError, state};
use crate::identity::entity::users;
use crate::identity::users::touch_user;
use crate::identity::{USER, event, intent, not_found};

fn totp_not_found() -> Error {
    not_found(TOTP_NOT_FOUND, "no TOTP registration")
}

/// A stored step (`BIGINT`).
fn db_step(step: u64) -> Result<i64> {
    i64::try_from(step).map_err(|_| Error::internal("STORE-totp-step-overflow", "TOTP step overflow"))
}

/// What a TOTP write does to the registration row inside the user's write.
#[derive(Debug, Clone)]
enum Change {
    Put(String),
    Verify(i64),
    Remove,
}

/// Applies `change` at time `at`; NotFound when there is nothing to verify or remove.
async fn apply(
    txn: &DatabaseTransaction,
    user: &str,
    change: Change,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), StateError> {
    match change {
        Change::Put(secret) => {
            let row = user_totp::Model {
                user_id: user.to_owned(),
                secret,
                verified: false,
                created_at: at,
                verified_at: None,
                last_step: 0,
            };
            user_totp::Entity::insert(user_totp::ActiveModel::from(row).reset_all())
                .on_conflict(
                    OnConflict::column(user_totp::Column::UserId)
                        .update_columns([
                            user_totp::Column::Secret,
                            user_totp::Column::Verified,
                            user_totp::Column::CreatedAt,
                            user_totp::Column::VerifiedAt,
                            user_totp::Column::LastStep,
                        ])
                        .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
        }
        Change::Verify(step) => {
            let result = user_totp::Entity::update_many()
                .col_expr(user_totp::Column::Verified, Expr::value(true))
                .col_expr(user_totp::Column::VerifiedAt, Expr::value(at))
                .col_expr(user_totp::Column::LastStep, Expr::value(step))
                .filter(user_totp::Column::UserId.eq(user))
                .exec(txn)
                .await?;
            if result.rows_affected == 0 {
                return Err(totp_not_found().into());
            }
        }
        Change::Remove => {
            let result = user_totp::Entity::delete_by_id(user).exec(txn).await?;
            if result.rows_affected == 0 {
                return Err(totp_not_found().into());
            }
        }
    }
    Ok(())
}

impl SessionRepositories {
    /// One write on the user's aggregate changing its registration; `missing` is the error when the user
    /// does not exist.
    async fn write_totp(
        &self,
        user: &UserId,
        actor: &str,
        event: NewEvent,
        change: Change,
        missing: fn() -> Error,
    ) -> Result<Details> {
        let owner = users::Entity::find_by_id(user.as_str())
            .select_only()
            .column(users::Column::OrgId)
            .into_tuple::<String>()
            .one(self.store.reader())
            .await
            .map_err(db_error)?
            .ok_or_else(missing)?;
        let (created_at, details) = self
            .store
            .write_returning(intent(USER, user.as_str(), &owner, actor, vec![event]), |txn, ctx| {
                let (user, change) = (user.as_str().to_owned(), change.clone());
                state(async move {
                    let created_at = users::Entity::find_by_id(user.as_str())
                        .select_only()
                        .column(users::Column::CreatedAt)
                        .into_tuple::<chrono::DateTime<chrono::Utc>>()
                        .one(txn)
                        .await?
                        .ok_or_else(missing)?;
                    apply(txn, &user, change, ctx.created_at).await?;
                    touch_user(txn, &user, ctx.sequence, ctx.created_at).await?;
                    Ok(created_at)
                })
            })
            .await?;
        // Like every user write: the creation date of the current user, not of a reused id's first event.
        Ok(Details { creation_date: created_at, ..details })
    }
}

fn user_not_found() -> Error {
    not_found(USER_NOT_FOUND, "user not found")
}

#[async_trait]
impl TotpRepo for SessionRepositories {
    async fn get(&self, user: &UserId) -> Result<Option<TotpRegistration>> {
        let row = user_totp::Entity::find_by_id(user.as_str()).one(self.store.reader()).await.map_err(db_error)?;
        row.map(|row| {
            let last_step =
                u64::try_from(row.last_step).map_err(|_| Error::internal("STORE-corrupt-row", "negative TOTP step"))?;
            Ok(TotpRegistration { secret: row.secret, verified: row.verified, last_step })
        })
        .transpose()
    }

    async fn put_unverified(&self, user: &UserId, secret: &str, actor: &str) -> Result<Details> {
        let event = event("user.totp.added", json!({}));
        self.write_totp(user, actor, event, Change::Put(secret.to_owned()), user_not_found).await
    }

    async fn mark_verified(&self, user: &UserId, step: u64, actor: &str) -> Result<Details> {
        let event = event("user.totp.verified", json!({}));
        self.write_totp(user, actor, event, Change::Verify(db_step(step)?), totp_not_found).await
    }

    async fn advance_step(&self, user: &UserId, step: u64) -> Result<bool> {
        let step = db_step(step)?;
        // Compare-and-set in one statement: of two requests with codes of the same step, one wins.
        let result = user_totp::Entity::update_many()
            .col_expr(user_totp::Column::LastStep, Expr::value(step))
            .filter(user_totp::Column::UserId.eq(user.as_str()))
            .filter(user_totp::Column::LastStep.lt(step))
            .exec(self.store.writer())
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected > 0)
    }

    async fn remove(&self, user: &UserId, actor: &str) -> Result<Details> {
        let event = event("user.totp.removed", json!({}));
        self.write_totp(user, actor, event, Change::Remove, totp_not_found).await
    }
}
