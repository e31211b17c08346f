//! [`MemberRepo`]: the roles of users in the instance or in an organization.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::event::{Details, NewEvent};
use flowgate_core::identity::ports::{MEMBER_NOT_FOUND, MemberRepo, ORG_NOT_FOUND, USER_NOT_FOUND};
use flowgate_core::identity::{ListQuery, Member, MemberScope, OrgId, Page, Role, UserId};
use flowgate_core::{Error, ErrorKind, Result};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, Order, QueryFilter, QueryOrder, Set};
use serde_json::json;

use super::entity::{instance, members, orgs, users};
use super::orgs::touch_org;
use super::{INSTANCE, IdentityRepos, ORG, corrupt, db_sequence, event, intent, not_found, page, row_details};
use crate::error::db_error;
use crate::event_log::{StateError, state};

/// Id of the error that makes [`MemberRepo::set`] start over when the membership appeared or vanished
/// between choosing the event type and writing; never leaves this module.
const MEMBERSHIP_RACED: &str = "STORE-membership-raced";
/// How often [`MemberRepo::set`] starts over before it reports the conflict.
const SET_ATTEMPTS: u32 = 5;

/// The stored form of a scope: `instance` or the org id.
fn scope_key(scope: &MemberScope) -> &str {
    match scope {
        MemberScope::Instance => INSTANCE,
        MemberScope::Org(org) => org.as_str(),
    }
}

/// The aggregate a scope's membership events belong to: (`instance`, `instance`) or (`org`, id).
fn scope_aggregate(scope: &MemberScope) -> (&'static str, &str) {
    match scope {
        MemberScope::Instance => (INSTANCE, INSTANCE),
        MemberScope::Org(org) => (ORG, org.as_str()),
    }
}

fn roles_text(roles: &[Role]) -> String {
    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
}

fn member_from_row(row: members::Model) -> Result<Member> {
    let scope = match row.scope.as_str() {
        INSTANCE => MemberScope::Instance,
        org => MemberScope::Org(OrgId::from(org)),
    };
    let roles = row
        .roles
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| r.parse::<Role>().map_err(|_| corrupt("role", r)))
        .collect::<Result<Vec<_>>>()?;
    let details = row_details(row.created_at, row.changed_at, row.sequence, scope.owner())?;
    Ok(Member { user_id: row.user_id.into(), scope, roles, details })
}

/// Inserts a membership row with the write's sequence and time (bootstrap and [`MemberRepo::set`]).
pub(super) async fn insert_member(
    txn: &DatabaseTransaction,
    user: &str,
    scope: &str,
    roles: &[Role],
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<(), StateError> {
    let row = members::ActiveModel {
        user_id: Set(user.to_owned()),
        scope: Set(scope.to_owned()),
        roles: Set(roles_text(roles)),
        created_at: Set(at),
        changed_at: Set(at),
        sequence: Set(db_sequence(sequence)?),
    };
    members::Entity::insert(row).exec_without_returning(txn).await?;
    Ok(())
}

/// The event recording that `user` got `roles` in a scope (`member.added` or `member.changed`).
pub(super) fn member_event(event_type: &str, user: &str, roles: &[Role]) -> NewEvent {
    let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    event(event_type, json!({ "user_id": user, "roles": roles }))
}

/// Moves the scope's change metadata to this write (its aggregate got a membership event).
async fn touch_scope(
    txn: &DatabaseTransaction,
    scope: &MemberScope,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<(), StateError> {
    match scope {
        MemberScope::Org(org) => {
            if touch_org(txn, org.as_str(), sequence, at).await? == 0 {
                return Err(not_found(ORG_NOT_FOUND, "organization not found").into());
            }
        }
        // Before the bootstrap there is no instance row; memberships may still be written (e.g. in tests).
        MemberScope::Instance => {
            instance::Entity::update_many()
                .col_expr(instance::Column::ChangedAt, Expr::value(at))
                .col_expr(instance::Column::Sequence, Expr::value(db_sequence(sequence)?))
                .filter(instance::Column::Id.eq(INSTANCE))
                .exec(txn)
                .await?;
        }
    }
    Ok(())
}

impl IdentityRepos {
    /// Whether `user` has a membership in `scope` right now.
    async fn is_member(&self, user: &str, scope: &str) -> Result<bool> {
        let row = members::Entity::find_by_id((user.to_owned(), scope.to_owned()))
            .one(self.store.reader())
            .await
            .map_err(db_error)?;
        Ok(row.is_some())
    }

    /// One try of [`MemberRepo::set`], assuming the membership `exists` (or not).
    async fn try_set(
        &self,
        user: &UserId,
        scope: &MemberScope,
        roles: &[Role],
        exists: bool,
        actor: &str,
    ) -> Result<Details> {
        let (kind, id) = scope_aggregate(scope);
        let event_type = if exists { "member.changed" } else { "member.added" };
        let events = vec![member_event(event_type, user.as_str(), roles)];
        self.store
            .write(intent(kind, id, scope.owner(), actor, events), |txn, ctx| {
                let (user, scope, roles) = (user.as_str().to_owned(), scope.clone(), roles.to_vec());
                state(async move {
                    if users::Entity::find_by_id(user.as_str()).one(txn).await?.is_none() {
                        return Err(not_found(USER_NOT_FOUND, "user not found").into());
                    }
                    if let MemberScope::Org(org) = &scope
                        && orgs::Entity::find_by_id(org.as_str()).one(txn).await?.is_none()
                    {
                        return Err(not_found(ORG_NOT_FOUND, "organization not found").into());
                    }
                    let key = (user.clone(), scope_key(&scope).to_owned());
                    let current = members::Entity::find_by_id(key).one(txn).await?;
                    match current {
                        Some(row) if exists => {
                            let mut active = members::ActiveModel::from(row);
                            active.roles = Set(roles_text(&roles));
                            active.changed_at = Set(ctx.created_at);
                            active.sequence = Set(db_sequence(ctx.sequence)?);
                            active.update(txn).await?;
                        }
                        None if !exists => {
                            insert_member(txn, &user, scope_key(&scope), &roles, ctx.sequence, ctx.created_at).await?;
                        }
                        Some(_) | None => {
                            return Err(Error::new(ErrorKind::Aborted, MEMBERSHIP_RACED, "membership changed").into());
                        }
                    }
                    touch_scope(txn, &scope, ctx.sequence, ctx.created_at).await
                })
            })
            .await
    }
}

#[async_trait]
impl MemberRepo for IdentityRepos {
    async fn set(&self, user: &UserId, scope: &MemberScope, roles: &[Role], actor: &str) -> Result<Details> {
        let mut attempt = 1;
        loop {
            // The event type must be known before the write begins; the write checks the guess and the
            // loop starts over when a concurrent writer proved it wrong.
            let exists = self.is_member(user.as_str(), scope_key(scope)).await?;
            match self.try_set(user, scope, roles, exists, actor).await {
                Err(err) if err.id() == MEMBERSHIP_RACED && attempt < SET_ATTEMPTS => attempt += 1,
                Err(err) if err.id() == MEMBERSHIP_RACED => {
                    return Err(Error::new(
                        ErrorKind::Aborted,
                        "STORE-conflict",
                        "the object is being changed concurrently; retry the operation",
                    )
                    .with_source(err));
                }
                result => return result,
            }
        }
    }

    async fn remove(&self, user: &UserId, scope: &MemberScope, actor: &str) -> Result<Details> {
        let (kind, id) = scope_aggregate(scope);
        let events = vec![event("member.removed", json!({ "user_id": user.as_str() }))];
        self.store
            .write(intent(kind, id, scope.owner(), actor, events), |txn, ctx| {
                let (user, scope) = (user.as_str().to_owned(), scope.clone());
                state(async move {
                    let removed = members::Entity::delete_by_id((user, scope_key(&scope).to_owned())).exec(txn).await?;
                    if removed.rows_affected == 0 {
                        return Err(not_found(MEMBER_NOT_FOUND, "membership not found").into());
                    }
                    touch_scope(txn, &scope, ctx.sequence, ctx.created_at).await
                })
            })
            .await
    }

    async fn list(&self, scope: &MemberScope, q: &ListQuery) -> Result<Page<Member>> {
        let order = if q.asc { Order::Asc } else { Order::Desc };
        let select = members::Entity::find()
            .filter(members::Column::Scope.eq(scope_key(scope)))
            .order_by(members::Column::CreatedAt, order.clone())
            .order_by(members::Column::UserId, order);
        let (rows, total) = page(&self.store, select, q).await?;
        Ok(Page { items: rows.into_iter().map(member_from_row).collect::<Result<_>>()?, total })
    }

    async fn of_user(&self, user: &UserId) -> Result<Vec<Member>> {
        let rows = members::Entity::find()
            .filter(members::Column::UserId.eq(user.as_str()))
            .order_by_asc(members::Column::CreatedAt)
            .order_by_asc(members::Column::Scope)
            .all(self.store.reader())
            .await
            .map_err(db_error)?;
        rows.into_iter().map(member_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use flowgate_core::identity::INSTANCE_OWNER;

    use super::*;

    #[test]
    fn scopes_and_roles_round_trip() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let row = members::Model {
            user_id: "u".into(),
            scope: INSTANCE_OWNER.into(),
            roles: roles_text(&[Role::IamOwner, Role::IamLoginClient]),
            created_at: at,
            changed_at: at,
            sequence: 2,
        };
        let member = member_from_row(row).expect("valid row");
        assert_eq!(member.scope, MemberScope::Instance);
        assert_eq!(member.roles, [Role::IamOwner, Role::IamLoginClient]);
        assert_eq!(member.details.resource_owner, INSTANCE_OWNER);
    }
}
