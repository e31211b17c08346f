//! [`LinkRepo`]: links between users and accounts at IdPs (table `user_idp_links`), written as events on
//! the user's aggregate. The primary key (idp id, external user id) is the uniqueness rule, so of two
//! concurrent links of one account exactly one commits, whichever users they are for.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::event::{Details, NewEvent};
use flowgate_core::identity::ports::USER_NOT_FOUND;
use flowgate_core::identity::{ListQuery, Page, UserId};
use flowgate_core::idp::ports::{IDP_LINK_EXISTS, IDP_LINK_NOT_FOUND, IDP_NOT_FOUND, LinkRepo};
use flowgate_core::idp::{IdpId, IdpLink};
use flowgate_core::{Error, Result};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::json;

use super::IdpRepositories;
use super::entity::{idps, user_idp_links};
use crate::error::db_error;
use crate::event_log::{StateError, state};
use crate::identity::entity::users;
use crate::identity::users::touch_user;
use crate::identity::{USER, event, intent, not_found, page, taken};

/// Inserts the link of account (`idp_id`, `external_user_id`) to user `user_id` inside a write on the
/// user's aggregate at time `at`. A missing IdP ⇒ NotFound [`IDP_NOT_FOUND`]; an account linked already
/// (to any user) ⇒ AlreadyExists [`IDP_LINK_EXISTS`].
pub(crate) async fn insert_link(
    txn: &DatabaseTransaction,
    idp_id: &str,
    user_id: &str,
    external_user_id: &str,
    external_username: &str,
    at: DateTime<Utc>,
) -> Result<(), StateError> {
    // Checked here rather than left to the foreign key: its violation would be an internal error.
    let idp = idps::Entity::find_by_id(idp_id).select_only().column(idps::Column::Id).into_tuple::<String>().one(txn);
    if idp.await?.is_none() {
        return Err(not_found(IDP_NOT_FOUND, "IdP not found").into());
    }
    let row = user_idp_links::Model {
        idp_id: idp_id.to_owned(),
        external_user_id: external_user_id.to_owned(),
        external_username: external_username.to_owned(),
        user_id: user_id.to_owned(),
        created_at: at,
    };
    user_idp_links::Entity::insert(user_idp_links::ActiveModel::from(row).reset_all())
        .exec_without_returning(txn)
        .await
        .map_err(|e| taken(e, &[], (IDP_LINK_EXISTS, "the account at the IdP is linked to a user already")))?;
    Ok(())
}

/// The event a new link is recorded with.
pub(crate) fn link_added_event(idp_id: &str, external_user_id: &str, external_username: &str) -> NewEvent {
    event(
        "user.idp.link.added",
        json!({ "idp_id": idp_id, "external_user_id": external_user_id, "external_username": external_username }),
    )
}

/// Deletes every link of user `user_id` (inside the write that removes the user).
pub(crate) async fn delete_user_links(txn: &DatabaseTransaction, user_id: &str) -> Result<(), StateError> {
    user_idp_links::Entity::delete_many().filter(user_idp_links::Column::UserId.eq(user_id)).exec(txn).await?;
    Ok(())
}

fn link_from_row(row: user_idp_links::Model) -> IdpLink {
    IdpLink {
        idp_id: row.idp_id.into(),
        user_id: row.user_id.into(),
        external_user_id: row.external_user_id,
        external_username: row.external_username,
    }
}

fn link_not_found() -> Error {
    not_found(IDP_LINK_NOT_FOUND, "the user has no such link")
}

impl IdpRepositories {
    /// The org owning user `id` (the resource owner of its events), if the user exists.
    async fn user_org(&self, id: &str) -> Result<Option<String>> {
        users::Entity::find_by_id(id)
            .select_only()
            .column(users::Column::OrgId)
            .into_tuple::<String>()
            .one(self.store.reader())
            .await
            .map_err(db_error)
    }

    /// The creation date of user `id` inside a write, or `missing` when the user is gone.
    async fn user_created_at(
        txn: &DatabaseTransaction,
        id: &str,
        missing: fn() -> Error,
    ) -> Result<DateTime<Utc>, StateError> {
        let created_at = users::Entity::find_by_id(id)
            .select_only()
            .column(users::Column::CreatedAt)
            .into_tuple::<DateTime<Utc>>()
            .one(txn)
            .await?;
        Ok(created_at.ok_or_else(missing)?)
    }
}

#[async_trait]
impl LinkRepo for IdpRepositories {
    async fn add(&self, link: &IdpLink, actor: &str) -> Result<Details> {
        let IdpLink { idp_id, user_id, external_user_id, external_username } = link;
        let missing_user = || not_found(USER_NOT_FOUND, "user not found");
        let owner = self.user_org(user_id.as_str()).await?.ok_or_else(missing_user)?;
        let events = vec![link_added_event(idp_id.as_str(), external_user_id, external_username)];
        let (created_at, details) = self
            .store
            .write_returning(intent(USER, user_id.as_str(), &owner, actor, events), |txn, ctx| {
                let link = link.clone();
                state(async move {
                    let user = link.user_id.as_str();
                    let created_at = Self::user_created_at(txn, user, missing_user).await?;
                    insert_link(
                        txn,
                        link.idp_id.as_str(),
                        user,
                        &link.external_user_id,
                        &link.external_username,
                        ctx.created_at,
                    )
                    .await?;
                    // The user's row carries the aggregate's change metadata: keep it at this write.
                    touch_user(txn, user, ctx.sequence, ctx.created_at).await?;
                    Ok(created_at)
                })
            })
            .await?;
        Ok(Details { creation_date: created_at, ..details })
    }

    async fn find(&self, idp: &IdpId, external_user_id: &str) -> Result<Option<IdpLink>> {
        let row = user_idp_links::Entity::find_by_id((idp.as_str().to_owned(), external_user_id.to_owned()))
            .one(self.store.reader())
            .await
            .map_err(db_error)?;
        Ok(row.map(link_from_row))
    }

    async fn list(&self, user: &UserId, q: &ListQuery) -> Result<Page<IdpLink>> {
        let order = if q.asc { Order::Asc } else { Order::Desc };
        let select = user_idp_links::Entity::find()
            .filter(user_idp_links::Column::UserId.eq(user.as_str()))
            .order_by(user_idp_links::Column::CreatedAt, order.clone())
            .order_by(user_idp_links::Column::IdpId, order.clone())
            .order_by(user_idp_links::Column::ExternalUserId, order);
        let (rows, total) = page(&self.store, select, q).await?;
        Ok(Page { items: rows.into_iter().map(link_from_row).collect(), total })
    }

    async fn remove(&self, user: &UserId, idp: &IdpId, external_user_id: &str, actor: &str) -> Result<Details> {
        // A missing user has no links: the same answer as any other link it does not have.
        let owner = self.user_org(user.as_str()).await?.ok_or_else(link_not_found)?;
        let events = vec![event(
            "user.idp.link.removed",
            json!({ "idp_id": idp.as_str(), "external_user_id": external_user_id }),
        )];
        let (created_at, details) = self
            .store
            .write_returning(intent(USER, user.as_str(), &owner, actor, events), |txn, ctx| {
                let (user, idp, external) =
                    (user.as_str().to_owned(), idp.as_str().to_owned(), external_user_id.to_owned());
                state(async move {
                    let created_at = Self::user_created_at(txn, &user, link_not_found).await?;
                    let removed = user_idp_links::Entity::delete_many()
                        .filter(user_idp_links::Column::IdpId.eq(idp.as_str()))
                        .filter(user_idp_links::Column::ExternalUserId.eq(external.as_str()))
                        .filter(user_idp_links::Column::UserId.eq(user.as_str()))
                        .exec(txn)
                        .await?;
                    if removed.rows_affected == 0 {
                        return Err(link_not_found().into());
                    }
                    touch_user(txn, &user, ctx.sequence, ctx.created_at).await?;
                    Ok(created_at)
                })
            })
            .await?;
        Ok(Details { creation_date: created_at, ..details })
    }
}
