//! [`OrgRepo`]: organizations, and removing everything that belongs to one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::Result;
use flowgate_core::event::Details;
use flowgate_core::identity::ports::{NewOrgRecord, ORG_NAME_TAKEN, ORG_NOT_FOUND, OrgRepo, OrgStateChange};
use flowgate_core::identity::{ListQuery, OrgFilter, OrgId, OrgState, Organization, Page};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseTransaction, EntityTrait, Order, QueryFilter, QueryOrder,
};
use serde_json::json;

use super::entity::{members, orgs, tokens, users};
use super::{IdentityRepos, ORG, event, intent, not_found, nothing, page, row_details, sql_lower, taken, text_filter};
use crate::error::db_error;
use crate::event_log::{StateError, state};

/// Error id: AlreadyExists, another org's name has the same primary domain (e.g. "A B" and "a-b").
pub const ORG_DOMAIN_TAKEN: &str = "ORG-domain-taken";
/// Error id: AlreadyExists, an org with the same id exists.
pub const ORG_ID_TAKEN: &str = "ORG-id-taken";

const NAME_TAKEN_MESSAGE: &str = "an organization with this name exists already";

/// Inserts a new, active org row carrying the write's sequence and time; unique violations name the field.
pub(super) async fn insert_org(
    txn: &DatabaseTransaction,
    org: &NewOrgRecord,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<orgs::Model, StateError> {
    // Both unique indexes may reject one row, and which one an engine reports is unspecified; asking
    // first makes the usual case (same name) answer the same error everywhere. The index stays the guarantee.
    let name_lower = org.name.to_lowercase();
    if orgs::Entity::find().filter(orgs::Column::NameLower.eq(name_lower.as_str())).one(txn).await?.is_some() {
        return Err(super::already_exists(ORG_NAME_TAKEN, NAME_TAKEN_MESSAGE).into());
    }
    let row = orgs::Model {
        id: org.id.as_str().to_owned(),
        name: org.name.clone(),
        name_lower,
        primary_domain: org.primary_domain.clone(),
        state: OrgState::Active.as_str().to_owned(),
        created_at: at,
        changed_at: at,
        sequence: super::db_sequence(sequence)?,
    };
    orgs::Entity::insert(orgs::ActiveModel::from(row.clone()).reset_all()).exec_without_returning(txn).await.map_err(
        |e| {
            taken(
                e,
                &[
                    ("name_lower", ORG_NAME_TAKEN, NAME_TAKEN_MESSAGE),
                    ("primary_domain", ORG_DOMAIN_TAKEN, "an organization with this primary domain exists already"),
                ],
                (ORG_ID_TAKEN, "an organization with this id exists already"),
            )
        },
    )?;
    Ok(row)
}

/// The domain object of an org row.
fn org_from_row(row: orgs::Model) -> Result<Organization> {
    let state = OrgState::parse(&row.state).ok_or_else(|| super::corrupt("org state", &row.state))?;
    let details = row_details(row.created_at, row.changed_at, row.sequence, &row.id)?;
    Ok(Organization { id: row.id.into(), name: row.name, primary_domain: row.primary_domain, state, details })
}

/// Records a write on the org aggregate that changed no org column (a membership in its scope), so the
/// row's change metadata keeps matching the aggregate's last event.
pub(super) async fn touch_org(
    txn: &DatabaseTransaction,
    id: &str,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<u64, StateError> {
    let result = orgs::Entity::update_many()
        .col_expr(orgs::Column::ChangedAt, Expr::value(at))
        .col_expr(orgs::Column::Sequence, Expr::value(super::db_sequence(sequence)?))
        .filter(orgs::Column::Id.eq(id))
        .exec(txn)
        .await?;
    Ok(result.rows_affected)
}

fn org_condition(backend: crate::Backend, filters: &[OrgFilter]) -> Condition {
    filters.iter().fold(Condition::all(), |all, filter| {
        let expr = match filter {
            OrgFilter::Name(name, method) => {
                text_filter(backend, Expr::col(orgs::Column::Name), Expr::col(orgs::Column::NameLower), name, *method)
            }
            OrgFilter::Domain(domain, method) => text_filter(
                backend,
                Expr::col(orgs::Column::PrimaryDomain),
                sql_lower(Expr::col(orgs::Column::PrimaryDomain)),
                domain,
                *method,
            ),
            OrgFilter::State(state) => Expr::col(orgs::Column::State).eq(state.as_str()),
            OrgFilter::Id(id) => Expr::col(orgs::Column::Id).eq(id.as_str()),
            OrgFilter::Ids(ids) if ids.is_empty() => nothing(),
            OrgFilter::Ids(ids) => Expr::col(orgs::Column::Id).is_in(ids.iter().map(OrgId::as_str)),
        };
        all.add(expr)
    })
}

#[async_trait]
impl OrgRepo for IdentityRepos {
    async fn create(&self, org: &NewOrgRecord, actor: &str) -> Result<Organization> {
        let id = org.id.as_str();
        let events = vec![event("org.added", json!({ "name": org.name, "primary_domain": org.primary_domain }))];
        let (row, _) = self
            .store
            .write_returning(intent(ORG, id, id, actor, events), |txn, ctx| {
                let org = org.clone();
                state(async move { insert_org(txn, &org, ctx.sequence, ctx.created_at).await })
            })
            .await?;
        org_from_row(row)
    }

    async fn get(&self, id: &OrgId) -> Result<Option<Organization>> {
        let row = orgs::Entity::find_by_id(id.as_str()).one(self.store.reader()).await.map_err(db_error)?;
        row.map(org_from_row).transpose()
    }

    async fn list(&self, filters: &[OrgFilter], q: &ListQuery) -> Result<Page<Organization>> {
        let order = if q.asc { Order::Asc } else { Order::Desc };
        let select = orgs::Entity::find()
            .filter(org_condition(self.store.backend(), filters))
            .order_by(orgs::Column::CreatedAt, order.clone())
            .order_by(orgs::Column::Id, order);
        let (rows, total) = page(&self.store, select, q).await?;
        Ok(Page { items: rows.into_iter().map(org_from_row).collect::<Result<_>>()?, total })
    }

    async fn set_state(&self, id: &OrgId, change: OrgStateChange, actor: &str) -> Result<Details> {
        let org_id = id.as_str();
        let events = vec![event(change.event_type(), json!({}))];
        let (created_at, details) = self
            .store
            .write_returning(intent(ORG, org_id, org_id, actor, events), |txn, ctx| {
                let id = org_id.to_owned();
                state(async move {
                    let row = orgs::Entity::find_by_id(id.as_str())
                        .one(txn)
                        .await?
                        .ok_or_else(|| not_found(ORG_NOT_FOUND, "organization not found"))?;
                    let mut active = orgs::ActiveModel::from(row.clone());
                    active.state = sea_orm::Set(change.target().as_str().to_owned());
                    active.changed_at = sea_orm::Set(ctx.created_at);
                    active.sequence = sea_orm::Set(super::db_sequence(ctx.sequence)?);
                    active.update(txn).await?;
                    Ok(row.created_at)
                })
            })
            .await?;
        Ok(Details { creation_date: created_at, ..details })
    }

    async fn delete(&self, id: &OrgId, actor: &str) -> Result<Details> {
        let org_id = id.as_str();
        let events = vec![event("org.removed", json!({}))];
        let (created_at, details) = self
            .store
            .write_returning(intent(ORG, org_id, org_id, actor, events), |txn, _| {
                let id = org_id.to_owned();
                state(async move {
                    let row = orgs::Entity::find_by_id(id.as_str())
                        .one(txn)
                        .await?
                        .ok_or_else(|| not_found(ORG_NOT_FOUND, "organization not found"))?;
                    delete_org_rows(txn, &id).await?;
                    Ok(row.created_at)
                })
            })
            .await?;
        Ok(Details { creation_date: created_at, ..details })
    }
}

/// Deletes the org's users with their tokens and memberships (in any scope), every membership in the
/// org's scope, and the org row. Explicit, child tables first, rather than relying on the foreign keys'
/// cascades, so the order is the same on both engines and memberships (which have no foreign key to the
/// org) are included.
async fn delete_org_rows(txn: &DatabaseTransaction, id: &str) -> Result<(), StateError> {
    let users_of_org = Query::select()
        .column(users::Column::Id)
        .from(users::Entity)
        .and_where(Expr::col(users::Column::OrgId).eq(id))
        .to_owned();
    tokens::Entity::delete_many()
        .filter(Expr::col(tokens::Column::UserId).in_subquery(users_of_org.clone()))
        .exec(txn)
        .await?;
    members::Entity::delete_many()
        .filter(
            Condition::any()
                .add(Expr::col(members::Column::Scope).eq(id))
                .add(Expr::col(members::Column::UserId).in_subquery(users_of_org)),
        )
        .exec(txn)
        .await?;
    users::Entity::delete_many().filter(users::Column::OrgId.eq(id)).exec(txn).await?;
    orgs::Entity::delete_by_id(id).exec(txn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let row = orgs::Model {
            id: "o1".into(),
            name: "Acme".into(),
            name_lower: "acme".into(),
            primary_domain: "acme.localhost".into(),
            state: "inactive".into(),
            created_at: at,
            changed_at: at,
            sequence: 3,
        };
        let org = org_from_row(row).expect("valid row");
        assert_eq!(
            (org.state, org.details.sequence, org.details.resource_owner.as_str()),
            (OrgState::Inactive, 3, "o1")
        );
    }
}
