//! [`TokenRepo`]: personal access tokens of machine users, stored only as digests.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use flowgate_core::Result;
use flowgate_core::event::Details;
use flowgate_core::identity::ports::{NewTokenRecord, TOKEN_NOT_FOUND, TokenOwner, TokenRepo, USER_NOT_FOUND};
use flowgate_core::identity::{ListQuery, OrgState, Page, PersonalAccessToken, TokenId, UserId};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::json;

use super::entity::{orgs, tokens, users};
use super::users::{find_user, touch_user};
use super::{IdentityRepos, USER, corrupt, db_sequence, event, intent, not_found, page, row_details, taken};
use crate::error::db_error;
use crate::event_log::{StateError, state};

/// Error id: AlreadyExists, a token with the same digest exists (only with a broken random source).
pub const TOKEN_HASH_TAKEN: &str = "TOKEN-hash-taken";
/// Error id: AlreadyExists, a token with the same id exists.
pub const TOKEN_ID_TAKEN: &str = "TOKEN-id-taken";

/// Inserts a token row of an existing user with the write's sequence and time.
pub(super) async fn insert_token(
    txn: &DatabaseTransaction,
    token: &NewTokenRecord,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<tokens::Model, StateError> {
    let row = tokens::Model {
        id: token.id.as_str().to_owned(),
        user_id: token.user_id.as_str().to_owned(),
        token_hash: token.token_hash.clone(),
        // Microseconds: what PostgreSQL keeps, so the answer equals what is read back later.
        expiration: token.expiration.map(|e| e.trunc_subsecs(6)),
        created_at: at,
        changed_at: at,
        sequence: db_sequence(sequence)?,
    };
    tokens::Entity::insert(tokens::ActiveModel::from(row.clone()).reset_all())
        .exec_without_returning(txn)
        .await
        .map_err(|e| {
            taken(
                e,
                &[("token_hash", TOKEN_HASH_TAKEN, "a token with this digest exists already")],
                (TOKEN_ID_TAKEN, "a token with this id exists already"),
            )
        })?;
    Ok(row)
}

/// The event a new token is recorded with: its id and expiration, never the token or its digest.
pub(super) fn added_event(token: &NewTokenRecord) -> flowgate_core::event::NewEvent {
    event("user.pat.added", json!({ "token_id": token.id.as_str(), "expiration": token.expiration }))
}

/// The domain object of a token row of a user in org `owner`.
fn token_from_row(row: tokens::Model, owner: &str) -> Result<PersonalAccessToken> {
    let details = row_details(row.created_at, row.changed_at, row.sequence, owner)?;
    Ok(PersonalAccessToken { id: row.id.into(), user_id: row.user_id.into(), expiration: row.expiration, details })
}

#[async_trait]
impl TokenRepo for IdentityRepos {
    async fn create(&self, token: &NewTokenRecord, actor: &str) -> Result<PersonalAccessToken> {
        let user_id = token.user_id.as_str();
        let owner = self.user_org(user_id).await?.ok_or_else(|| not_found(USER_NOT_FOUND, "user not found"))?;
        let intent = intent(USER, user_id, &owner, actor, vec![added_event(token)]);
        let (row, _) = self
            .store
            .write_returning(intent, |txn, ctx| {
                let token = token.clone();
                state(async move {
                    if users::Entity::find_by_id(token.user_id.as_str()).one(txn).await?.is_none() {
                        return Err(not_found(USER_NOT_FOUND, "user not found").into());
                    }
                    let row = insert_token(txn, &token, ctx.sequence, ctx.created_at).await?;
                    touch_user(txn, token.user_id.as_str(), ctx.sequence, ctx.created_at).await?;
                    Ok(row)
                })
            })
            .await?;
        token_from_row(row, &owner)
    }

    async fn find_by_hash(&self, token_hash: &str) -> Result<Option<TokenOwner>> {
        let db = self.store.reader();
        let Some(row) =
            tokens::Entity::find().filter(tokens::Column::TokenHash.eq(token_hash)).one(db).await.map_err(db_error)?
        else {
            return Ok(None);
        };
        // Gone between the two reads: the token went with its user.
        let Some(user) = find_user(db, &row.user_id).await? else { return Ok(None) };
        let Some(org_state) = orgs::Entity::find_by_id(user.org_id.as_str())
            .select_only()
            .column(orgs::Column::State)
            .into_tuple::<String>()
            .one(db)
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        let org_state = OrgState::parse(&org_state).ok_or_else(|| corrupt("org state", &org_state))?;
        let token = token_from_row(row, user.org_id.as_str())?;
        Ok(Some(TokenOwner { token, user, org_state }))
    }

    async fn list(&self, user: &UserId, q: &ListQuery) -> Result<Page<PersonalAccessToken>> {
        let Some(owner) = self.user_org(user.as_str()).await? else {
            return Ok(Page { items: Vec::new(), total: 0 });
        };
        let order = if q.asc { Order::Asc } else { Order::Desc };
        let select = tokens::Entity::find()
            .filter(tokens::Column::UserId.eq(user.as_str()))
            .order_by(tokens::Column::CreatedAt, order.clone())
            .order_by(tokens::Column::Id, order);
        let (rows, total) = page(&self.store, select, q).await?;
        let items = rows.into_iter().map(|row| token_from_row(row, &owner)).collect::<Result<_>>()?;
        Ok(Page { items, total })
    }

    async fn delete(&self, user: &UserId, token: &TokenId, actor: &str) -> Result<Details> {
        let owner = self.user_org(user.as_str()).await?.ok_or_else(|| not_found(TOKEN_NOT_FOUND, "token not found"))?;
        let events = vec![event("user.pat.removed", json!({ "token_id": token.as_str() }))];
        self.store
            .write(intent(USER, user.as_str(), &owner, actor, events), |txn, ctx| {
                let (user, token) = (user.as_str().to_owned(), token.as_str().to_owned());
                state(async move {
                    let removed = tokens::Entity::delete_many()
                        .filter(tokens::Column::Id.eq(token.as_str()))
                        .filter(tokens::Column::UserId.eq(user.as_str()))
                        .exec(txn)
                        .await?;
                    if removed.rows_affected == 0 {
                        return Err(not_found(TOKEN_NOT_FOUND, "token not found").into());
                    }
                    touch_user(txn, &user, ctx.sequence, ctx.created_at).await
                })
            })
            .await
    }
}
