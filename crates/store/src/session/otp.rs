//! [`OtpChallengeRepo`]: one-time codes, each usable once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::Result;
use flowgate_core::session::ports::{OtpChallengeRepo, OtpConsume};
use flowgate_core::session::{OtpKind, SessionId};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::SessionRepositories;
use super::entity::otp_challenges;
use crate::error::db_error;

#[async_trait]
impl OtpChallengeRepo for SessionRepositories {
    async fn consume(
        &self,
        session: &SessionId,
        kind: OtpKind,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<OtpConsume> {
        let of_challenge = |select| {
            otp_challenges::Column::SessionId
                .eq(session.as_str())
                .and(otp_challenges::Column::Kind.eq(kind.as_str()))
                .and(select)
        };
        // The whole decision is the WHERE clause of one statement: of concurrent consumers with the right
        // code, the row lock lets exactly one see `used_at IS NULL`.
        let used = otp_challenges::Entity::update_many()
            .col_expr(otp_challenges::Column::UsedAt, Expr::value(now))
            .filter(of_challenge(
                otp_challenges::Column::UsedAt
                    .is_null()
                    .and(otp_challenges::Column::ExpiresAt.gt(now))
                    .and(otp_challenges::Column::CodeHash.eq(code_hash)),
            ))
            .exec(self.store.writer())
            .await
            .map_err(db_error)?;
        if used.rows_affected > 0 {
            return Ok(OtpConsume::Consumed);
        }
        // Only explains the refusal; a challenge used meanwhile by someone else reads as missing.
        let open = otp_challenges::Entity::find()
            .filter(of_challenge(otp_challenges::Column::UsedAt.is_null()))
            .one(self.store.reader())
            .await
            .map_err(db_error)?;
        Ok(match open {
            None => OtpConsume::Missing,
            Some(challenge) if challenge.expires_at <= now => OtpConsume::Expired,
            Some(_) => OtpConsume::Mismatch,
        })
    }
}
