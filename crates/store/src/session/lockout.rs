//! [`LockoutRepo`]: failed-attempt counters, columns of `users` changed only by single atomic statements.

use async_trait::async_trait;
use flowgate_core::identity::UserId;
use flowgate_core::session::LockoutKind;
use flowgate_core::session::ports::{FailureOutcome, LockoutRepo};
use flowgate_core::{Error, Result};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DbErr};

use super::SessionRepositories;
use crate::error::db_error;
use crate::identity::entity::users;

/// Name of the `users` column counting failures of `kind`.
fn column_name(kind: LockoutKind) -> &'static str {
    match kind {
        LockoutKind::Password => "failed_password_attempts",
        LockoutKind::Otp => "failed_otp_attempts",
    }
}

/// The `users` column counting failures of `kind`.
fn column(kind: LockoutKind) -> Alias {
    Alias::new(column_name(kind))
}

/// A counter as answered; the column is an `INTEGER` that only the statements here change.
fn count(value: i32) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::internal("STORE-corrupt-row", format!("negative counter {value}")))
}

/// Sets both counters of user `id` to 0 through `db` (e.g. inside the write that unlocks the user).
pub(crate) async fn reset_all<C: ConnectionTrait>(db: &C, id: &str) -> Result<(), DbErr> {
    let (password, otp) = (column(LockoutKind::Password), column(LockoutKind::Otp));
    let reset = Query::update()
        .table(users::Entity)
        .value(password, 0)
        .value(otp, 0)
        .and_where(Expr::col(users::Column::Id).eq(id))
        .to_owned();
    db.execute(&reset).await.map(drop)
}

impl SessionRepositories {
    async fn read_counter(&self, user: &UserId, kind: LockoutKind) -> Result<u32> {
        let column = column(kind);
        let select = Query::select()
            .expr_as(Expr::col(column.clone()), Alias::new("n"))
            .from(users::Entity)
            .and_where(Expr::col(users::Column::Id).eq(user.as_str()))
            .to_owned();
        let row = self.store.reader().query_one(&select).await.map_err(db_error)?;
        match row {
            Some(row) => count(row.try_get::<i32>("", "n").map_err(db_error)?),
            None => Ok(0),
        }
    }
}

#[async_trait]
impl LockoutRepo for SessionRepositories {
    async fn failed_attempts(&self, user: &UserId, kind: LockoutKind) -> Result<u32> {
        self.read_counter(user, kind).await
    }

    async fn record_failure(&self, user: &UserId, kind: LockoutKind, max: u32) -> Result<FailureOutcome> {
        let column = column(kind);
        let limit = i64::from(max);
        let mut increment = Query::update();
        increment
            .table(users::Entity)
            .value(column.clone(), Expr::col(column.clone()).add(1))
            .and_where(Expr::col(users::Column::Id).eq(user.as_str()));
        if max > 0 {
            // The limit is part of the statement: under the row lock, each concurrent increment sees the
            // previous one's result, so the counter stops exactly at `max` on both engines.
            increment.and_where(Expr::col(column.clone()).lt(limit));
        }
        increment.returning(Query::returning().column(column));
        // All rows, not just one: the statement must run to completion before the connection is reused.
        let rows = self.store.writer().query_all(&increment).await.map_err(db_error)?;
        match rows.first() {
            Some(row) => {
                let failed_attempts = count(row.try_get::<i32>("", column_name(kind)).map_err(db_error)?)?;
                Ok(FailureOutcome { failed_attempts, locked_now: max > 0 && failed_attempts == max })
            }
            None => Ok(FailureOutcome { failed_attempts: self.read_counter(user, kind).await?, locked_now: false }),
        }
    }

    async fn reset(&self, user: &UserId, kind: LockoutKind) -> Result<()> {
        let column = column(kind);
        // Only rows that need it: a successful check of a user without failures writes nothing.
        let reset = Query::update()
            .table(users::Entity)
            .value(column.clone(), 0)
            .and_where(Expr::col(users::Column::Id).eq(user.as_str()))
            .and_where(Expr::col(column).ne(0))
            .to_owned();
        self.store.writer().execute(&reset).await.map_err(db_error)?;
        Ok(())
    }
}
