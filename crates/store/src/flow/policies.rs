//! [`PolicyRepo`] and [`PolicyBindingRepo`]: expression policies and their bindings to flows and stage
//! bindings; policy binding events live on the bound policy's aggregate, whose row they stamp.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::event::Details;
use flowgate_core::flow::ports::{
    NewPolicy, NewPolicyBinding, POLICY_AGGREGATE, POLICY_BINDING_NOT_FOUND, POLICY_NOT_FOUND, PolicyBindingRepo,
    PolicyRepo, StageRewrite, events, not_found, policy_binding_taken, policy_name_taken,
};
use flowgate_core::flow::{
    Ordering, Page, PageRequest, PbmId, Policy, PolicyBinding, PolicyBindingFilter, PolicyBindingId,
    PolicyBindingOrder, PolicyBindingSpec, PolicyFilter, PolicyId, PolicyOrder, PolicySpec,
};
use flowgate_core::identity::OrgId;
use flowgate_core::{Error, Result};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::entity::{bindings, flows, policies, policy_bindings};
use super::stages::apply_rewrites;
use super::{
    FlowRepositories, cascade_changed, corrupt, db_sequence, details, intent, into_page, missing_reference, nothing,
    order, page, require_org, retry_cascade, search, unique_as,
};
use crate::backend::Backend;
use crate::error::db_error;
use crate::event_log::{StateError, state};

// ------------------------------------------------------------------------------------------ policies

fn policy_from_row(row: policies::Model) -> Result<Policy> {
    Ok(Policy {
        details: details(row.created_at, row.changed_at, row.sequence, &row.org_id)?,
        id: row.id.into(),
        org_id: row.org_id.into(),
        spec: PolicySpec { name: row.name, expression: row.expression, execution_logging: row.execution_logging },
    })
}

fn set_policy_spec(row: &mut policies::Model, spec: &PolicySpec) {
    let PolicySpec { name, expression, execution_logging } = spec;
    row.name.clone_from(name);
    row.name_lower = name.to_lowercase();
    row.expression.clone_from(expression);
    row.execution_logging = *execution_logging;
}

fn policies_of(org: &OrgId) -> sea_orm::Select<policies::Entity> {
    policies::Entity::find().filter(policies::Column::OrgId.eq(org.as_str()))
}

async fn policy_row<C: ConnectionTrait>(
    db: &C,
    org: &OrgId,
    id: &str,
) -> std::result::Result<Option<policies::Model>, sea_orm::DbErr> {
    policies_of(org).filter(policies::Column::Id.eq(id)).one(db).await
}

/// Fails with [`policy_name_taken`] when another policy of the org (than `except`) has the name; the
/// unique index remains the guarantee under concurrency.
async fn check_name(
    txn: &DatabaseTransaction,
    org: &OrgId,
    name: &str,
    except: Option<&str>,
) -> Result<(), StateError> {
    let mut query = policies_of(org).filter(policies::Column::Name.eq(name));
    if let Some(id) = except {
        query = query.filter(policies::Column::Id.ne(id));
    }
    match query.select_only().column(policies::Column::Id).into_tuple::<String>().one(txn).await? {
        Some(_) => Err(policy_name_taken().into()),
        None => Ok(()),
    }
}

/// Inserts a new policy carrying the write's sequence and time.
pub(super) async fn insert_policy(
    txn: &DatabaseTransaction,
    policy: &NewPolicy,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<policies::Model, StateError> {
    require_org(txn, &policy.org_id).await?;
    check_name(txn, &policy.org_id, &policy.spec.name, None).await?;
    let mut row = policies::Model {
        id: policy.id.as_str().to_owned(),
        org_id: policy.org_id.as_str().to_owned(),
        name: String::new(),
        name_lower: String::new(),
        expression: String::new(),
        execution_logging: false,
        created_at: at,
        changed_at: at,
        sequence: db_sequence(sequence)?,
    };
    set_policy_spec(&mut row, &policy.spec);
    policies::Entity::insert(policies::ActiveModel::from(row.clone()).reset_all())
        .exec_without_returning(txn)
        .await
        .map_err(|e| unique_as(e, "name", policy_name_taken))?;
    Ok(row)
}

/// Replaces every field of policy `id` of `org`, stamping the write's sequence and time.
pub(super) async fn update_policy(
    txn: &DatabaseTransaction,
    org: &OrgId,
    id: &PolicyId,
    spec: &PolicySpec,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<policies::Model, StateError> {
    let mut row = policy_row(txn, org, id.as_str()).await?.ok_or_else(|| not_found(POLICY_NOT_FOUND))?;
    check_name(txn, org, &spec.name, Some(id.as_str())).await?;
    set_policy_spec(&mut row, spec);
    row.changed_at = at;
    row.sequence = db_sequence(sequence)?;
    policies::ActiveModel::from(row.clone())
        .reset_all()
        .update(txn)
        .await
        .map_err(|e| unique_as(e, "name", policy_name_taken))?;
    Ok(row)
}

/// Records a write on the policy aggregate that changed no policy column (a policy binding change).
async fn touch_policy(txn: &DatabaseTransaction, id: &str, sequence: u64, at: DateTime<Utc>) -> Result<(), StateError> {
    policies::Entity::update_many()
        .col_expr(policies::Column::ChangedAt, Expr::value(at))
        .col_expr(policies::Column::Sequence, Expr::value(db_sequence(sequence)?))
        .filter(policies::Column::Id.eq(id))
        .exec(txn)
        .await?;
    Ok(())
}

/// What deleting a policy takes along: its name and its bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PolicyCascade {
    name: String,
    policy_bindings: Vec<String>,
}

/// Reads the cascade of policy `id` through `db`; `lock` locks the policy row (inside the deleting
/// write), which blocks new bindings of it (their foreign key checks share-lock it).
async fn policy_cascade<C: ConnectionTrait>(
    db: &C,
    org: &OrgId,
    id: &str,
    lock: bool,
) -> std::result::Result<Option<PolicyCascade>, sea_orm::DbErr> {
    let mut policy = policies_of(org).filter(policies::Column::Id.eq(id));
    if lock {
        policy = policy.lock_exclusive();
    }
    let Some(policy) = policy.one(db).await? else { return Ok(None) };
    let policy_bindings = policy_bindings::Entity::find()
        .select_only()
        .column(policy_bindings::Column::Id)
        .filter(policy_bindings::Column::PolicyId.eq(id))
        .order_by_asc(policy_bindings::Column::Id)
        .into_tuple::<String>()
        .all(db)
        .await?;
    Ok(Some(PolicyCascade { name: policy.name, policy_bindings }))
}

fn policy_condition(backend: Backend, org: &OrgId, filter: &PolicyFilter) -> Condition {
    let PolicyFilter { name, execution_logging, policy_uuid, search: needle } = filter;
    let mut all = Condition::all().add(policies::Column::OrgId.eq(org.as_str()));
    if let Some(name) = name {
        all = all.add(policies::Column::Name.eq(name.as_str()));
    }
    if let Some(flag) = execution_logging {
        all = all.add(policies::Column::ExecutionLogging.eq(*flag));
    }
    if let Some(id) = policy_uuid {
        all = all.add(policies::Column::Id.eq(id.as_str()));
    }
    if let Some(needle) = needle {
        all = all.add(search(backend, Expr::col(policies::Column::NameLower), needle));
    }
    all
}

impl FlowRepositories {
    async fn try_delete_policy(
        &self,
        org: &OrgId,
        id: &PolicyId,
        rewrites: &[StageRewrite],
        actor: &str,
    ) -> Result<Details> {
        let read = policy_cascade(self.store.reader(), org, id.as_str(), false).await.map_err(db_error)?;
        let read = read.ok_or_else(|| not_found(POLICY_NOT_FOUND))?;
        let event = events::policy_removed(&read.name, &read.policy_bindings);
        let backend = self.store.backend();
        self.store
            .write(intent(POLICY_AGGREGATE, id.as_str(), org, actor, vec![event]), |txn, ctx| {
                let (read, org, id, rewrites, actor) =
                    (read.clone(), org.clone(), id.clone(), rewrites.to_vec(), actor.to_owned());
                state(async move {
                    match policy_cascade(txn, &org, id.as_str(), true).await? {
                        None => return Err(not_found(POLICY_NOT_FOUND).into()),
                        Some(now) if now != read => return Err(cascade_changed()),
                        Some(_) => {}
                    }
                    apply_rewrites(txn, backend, &org, &actor, &rewrites, None, ctx.created_at).await?;
                    policy_bindings::Entity::delete_many()
                        .filter(policy_bindings::Column::PolicyId.eq(id.as_str()))
                        .exec(txn)
                        .await?;
                    policies::Entity::delete_by_id(id.as_str()).exec(txn).await?;
                    Ok(())
                })
            })
            .await
    }
}

#[async_trait]
impl PolicyRepo for FlowRepositories {
    async fn create(&self, policy: &NewPolicy, actor: &str) -> Result<Policy> {
        let events = vec![events::policy_added(policy)];
        let (row, _) = self
            .store
            .write_returning(intent(POLICY_AGGREGATE, policy.id.as_str(), &policy.org_id, actor, events), |txn, ctx| {
                let policy = policy.clone();
                state(async move { insert_policy(txn, &policy, ctx.sequence, ctx.created_at).await })
            })
            .await?;
        policy_from_row(row)
    }

    async fn get(&self, org: &OrgId, id: &PolicyId) -> Result<Option<Policy>> {
        policy_row(self.store.reader(), org, id.as_str()).await.map_err(db_error)?.map(policy_from_row).transpose()
    }

    async fn get_by_name(&self, org: &OrgId, name: &str) -> Result<Option<Policy>> {
        let row = policies_of(org).filter(policies::Column::Name.eq(name)).one(self.store.reader()).await;
        row.map_err(db_error)?.map(policy_from_row).transpose()
    }

    async fn get_many(&self, org: &OrgId, ids: &[PolicyId]) -> Result<Vec<Policy>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = policies_of(org)
            .filter(policies::Column::Id.is_in(ids.iter().map(PolicyId::as_str)))
            .order_by_asc(policies::Column::Name)
            .order_by_asc(policies::Column::Id)
            .all(self.store.reader())
            .await
            .map_err(db_error)?;
        rows.into_iter().map(policy_from_row).collect()
    }

    async fn list(
        &self,
        org: &OrgId,
        filter: &PolicyFilter,
        ordering: Ordering<PolicyOrder>,
        page_request: PageRequest,
    ) -> Result<Page<Policy>> {
        let direction = order(ordering.descending);
        let select = policies::Entity::find().filter(policy_condition(self.store.backend(), org, filter));
        let select = match ordering.field {
            PolicyOrder::Name => select.order_by(policies::Column::Name, direction),
            PolicyOrder::Pk => select.order_by(policies::Column::Id, direction),
        }
        .order_by_asc(policies::Column::Id);
        let (rows, total) = page(&self.store, select, page_request).await?;
        into_page(rows, total, policy_from_row)
    }

    async fn update(&self, org: &OrgId, id: &PolicyId, spec: &PolicySpec, actor: &str) -> Result<Policy> {
        let events = vec![events::policy_changed(spec)];
        let (row, _) = self
            .store
            .write_returning(intent(POLICY_AGGREGATE, id.as_str(), org, actor, events), |txn, ctx| {
                let (org, id, spec) = (org.clone(), id.clone(), spec.clone());
                state(async move { update_policy(txn, &org, &id, &spec, ctx.sequence, ctx.created_at).await })
            })
            .await?;
        policy_from_row(row)
    }

    async fn delete(&self, org: &OrgId, id: &PolicyId, rewrites: &[StageRewrite], actor: &str) -> Result<Details> {
        retry_cascade(|| self.try_delete_policy(org, id, rewrites, actor)).await
    }
}

// ------------------------------------------------------------------------------------------ policy bindings

fn policy_binding_from_row(row: policy_bindings::Model) -> Result<PolicyBinding> {
    let timeout =
        u32::try_from(row.timeout).map_err(|_| corrupt("policy binding timeout", &row.timeout.to_string()))?;
    Ok(PolicyBinding {
        details: details(row.created_at, row.changed_at, row.sequence, &row.org_id)?,
        id: row.id.into(),
        org_id: row.org_id.into(),
        spec: PolicyBindingSpec {
            policy: row.policy_id.into(),
            target: row.target.into(),
            negate: row.negate,
            enabled: row.enabled,
            order: row.order,
            timeout,
            failure_result: row.failure_result,
        },
    })
}

fn policy_bindings_of(org: &OrgId) -> sea_orm::Select<policy_bindings::Entity> {
    policy_bindings::Entity::find().filter(policy_bindings::Column::OrgId.eq(org.as_str()))
}

pub(super) async fn policy_binding_row<C: ConnectionTrait>(
    db: &C,
    org: &OrgId,
    id: &str,
    lock: bool,
) -> Result<Option<PolicyBinding>, StateError> {
    let mut select = policy_bindings_of(org).filter(policy_bindings::Column::Id.eq(id));
    if lock {
        select = select.lock_exclusive();
    }
    Ok(select.one(db).await?.map(policy_binding_from_row).transpose()?)
}

/// The flow or binding of `org` a policy binding `target` names: (`flow_id`, `binding_id`).
async fn resolve_target(
    txn: &DatabaseTransaction,
    org: &OrgId,
    target: &PbmId,
) -> Result<(Option<String>, Option<String>), StateError> {
    let flow = flows::Entity::find()
        .select_only()
        .column(flows::Column::Id)
        .filter(flows::Column::OrgId.eq(org.as_str()))
        .filter(flows::Column::PbmId.eq(target.as_str()))
        .into_tuple::<String>()
        .one(txn)
        .await?;
    if let Some(flow) = flow {
        return Ok((Some(flow), None));
    }
    let binding = bindings::Entity::find()
        .select_only()
        .column(bindings::Column::Id)
        .filter(bindings::Column::OrgId.eq(org.as_str()))
        .filter(bindings::Column::PbmId.eq(target.as_str()))
        .into_tuple::<String>()
        .one(txn)
        .await?;
    match binding {
        Some(binding) => Ok((None, Some(binding))),
        None => Err(missing_reference("target", target.as_str()).into()),
    }
}

/// Checks the policy and target of `spec` in the org and that (target, order) is free (but for `except`);
/// answers the resolved target.
async fn check_policy_binding(
    txn: &DatabaseTransaction,
    org: &OrgId,
    spec: &PolicyBindingSpec,
    except: Option<&str>,
) -> Result<(Option<String>, Option<String>), StateError> {
    if policy_row(txn, org, spec.policy.as_str()).await?.is_none() {
        return Err(missing_reference("policy", spec.policy.as_str()).into());
    }
    let resolved = resolve_target(txn, org, &spec.target).await?;
    let mut taken = policy_bindings::Entity::find()
        .filter(policy_bindings::Column::Target.eq(spec.target.as_str()))
        .filter(policy_bindings::Column::Order.eq(spec.order));
    if let Some(id) = except {
        taken = taken.filter(policy_bindings::Column::Id.ne(id));
    }
    match taken.select_only().column(policy_bindings::Column::Id).into_tuple::<String>().one(txn).await? {
        Some(_) => Err(policy_binding_taken().into()),
        None => Ok(resolved),
    }
}

fn db_timeout(timeout: u32) -> Result<i32, Error> {
    i32::try_from(timeout).map_err(|_| Error::invalid_field("FLOW-invalid-timeout", "timeout", "timeout out of range"))
}

fn set_binding_spec(
    row: &mut policy_bindings::Model,
    spec: &PolicyBindingSpec,
    (flow_id, binding_id): (Option<String>, Option<String>),
) -> Result<(), Error> {
    let PolicyBindingSpec { policy, target, negate, enabled, order, timeout, failure_result } = spec;
    row.policy_id = policy.as_str().to_owned();
    row.target = target.as_str().to_owned();
    row.flow_id = flow_id;
    row.binding_id = binding_id;
    row.negate = *negate;
    row.enabled = *enabled;
    row.order = *order;
    row.timeout = db_timeout(*timeout)?;
    row.failure_result = *failure_result;
    Ok(())
}

/// Inserts a new policy binding carrying the write's sequence and time, and stamps its policy.
pub(super) async fn insert_policy_binding(
    txn: &DatabaseTransaction,
    binding: &NewPolicyBinding,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<PolicyBinding, StateError> {
    require_org(txn, &binding.org_id).await?;
    let resolved = check_policy_binding(txn, &binding.org_id, &binding.spec, None).await?;
    let mut row = policy_bindings::Model {
        id: binding.id.as_str().to_owned(),
        org_id: binding.org_id.as_str().to_owned(),
        policy_id: String::new(),
        target: String::new(),
        flow_id: None,
        binding_id: None,
        negate: false,
        enabled: true,
        order: 0,
        timeout: 0,
        failure_result: false,
        created_at: at,
        changed_at: at,
        sequence: db_sequence(sequence)?,
    };
    set_binding_spec(&mut row, &binding.spec, resolved)?;
    policy_bindings::Entity::insert(policy_bindings::ActiveModel::from(row.clone()).reset_all())
        .exec_without_returning(txn)
        .await
        .map_err(|e| unique_as(e, "target", policy_binding_taken))?;
    touch_policy(txn, &row.policy_id, sequence, at).await?;
    Ok(policy_binding_from_row(row)?)
}

/// Replaces every field of policy binding `id` of `org`, stamping it and its (new) policy.
pub(super) async fn update_policy_binding(
    txn: &DatabaseTransaction,
    org: &OrgId,
    id: &PolicyBindingId,
    spec: &PolicyBindingSpec,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<PolicyBinding, StateError> {
    let mut row = policy_bindings_of(org)
        .filter(policy_bindings::Column::Id.eq(id.as_str()))
        .one(txn)
        .await?
        .ok_or_else(|| not_found(POLICY_BINDING_NOT_FOUND))?;
    let resolved = check_policy_binding(txn, org, spec, Some(id.as_str())).await?;
    set_binding_spec(&mut row, spec, resolved)?;
    row.changed_at = at;
    row.sequence = db_sequence(sequence)?;
    policy_bindings::ActiveModel::from(row.clone())
        .reset_all()
        .update(txn)
        .await
        .map_err(|e| unique_as(e, "target", policy_binding_taken))?;
    touch_policy(txn, &row.policy_id, sequence, at).await?;
    Ok(policy_binding_from_row(row)?)
}

/// Inside a write: deletes the policy binding when it is still exactly `read`, and stamps its policy.
pub(super) async fn delete_policy_binding(
    txn: &DatabaseTransaction,
    org: &OrgId,
    read: &PolicyBinding,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<(), StateError> {
    match policy_binding_row(txn, org, read.id.as_str(), true).await? {
        None => return Err(not_found(POLICY_BINDING_NOT_FOUND).into()),
        // A change meanwhile may have moved it to another policy, whose aggregate the event must go to.
        Some(now) if now != *read => return Err(cascade_changed()),
        Some(_) => {}
    }
    policy_bindings::Entity::delete_by_id(read.id.as_str()).exec(txn).await?;
    touch_policy(txn, read.spec.policy.as_str(), sequence, at).await
}

fn policy_binding_condition(org: &OrgId, filter: &PolicyBindingFilter) -> Condition {
    let PolicyBindingFilter { policy, target, enabled, order, timeout } = filter;
    let mut all = Condition::all().add(policy_bindings::Column::OrgId.eq(org.as_str()));
    if let Some(policy) = policy {
        all = all.add(policy_bindings::Column::PolicyId.eq(policy.as_str()));
    }
    if let Some(target) = target {
        all = all.add(policy_bindings::Column::Target.eq(target.as_str()));
    }
    if let Some(flag) = enabled {
        all = all.add(policy_bindings::Column::Enabled.eq(*flag));
    }
    if let Some(order) = order {
        all = all.add(policy_bindings::Column::Order.eq(*order));
    }
    if let Some(timeout) = timeout {
        // A timeout beyond the column's range matches nothing rather than failing the list.
        all = all.add(match i32::try_from(*timeout) {
            Ok(timeout) => Expr::col(policy_bindings::Column::Timeout).eq(timeout),
            Err(_) => nothing(),
        });
    }
    all
}

impl FlowRepositories {
    async fn try_delete_policy_binding(&self, org: &OrgId, id: &PolicyBindingId, actor: &str) -> Result<Details> {
        let read = policy_binding_row(self.store.reader(), org, id.as_str(), false)
            .await
            .map_err(super::bindings::state_error)?
            .ok_or_else(|| not_found(POLICY_BINDING_NOT_FOUND))?;
        let event = events::policy_binding_removed(&read);
        let policy = read.spec.policy.as_str().to_owned();
        self.store
            .write(intent(POLICY_AGGREGATE, &policy, org, actor, vec![event]), |txn, ctx| {
                let (read, org) = (read.clone(), org.clone());
                state(async move { delete_policy_binding(txn, &org, &read, ctx.sequence, ctx.created_at).await })
            })
            .await
    }

    async fn policy_bindings_where(&self, org: &OrgId, condition: Expr) -> Result<Vec<PolicyBinding>> {
        let rows = policy_bindings_of(org)
            .filter(condition)
            .order_by_asc(policy_bindings::Column::Target)
            .order_by_asc(policy_bindings::Column::Order)
            .order_by_asc(policy_bindings::Column::Id)
            .all(self.store.reader())
            .await
            .map_err(db_error)?;
        rows.into_iter().map(policy_binding_from_row).collect()
    }
}

#[async_trait]
impl PolicyBindingRepo for FlowRepositories {
    async fn create(&self, binding: &NewPolicyBinding, actor: &str) -> Result<PolicyBinding> {
        let events = vec![events::policy_binding_added(binding)];
        let policy = binding.spec.policy.as_str();
        let (created, _) = self
            .store
            .write_returning(intent(POLICY_AGGREGATE, policy, &binding.org_id, actor, events), |txn, ctx| {
                let binding = binding.clone();
                state(async move { insert_policy_binding(txn, &binding, ctx.sequence, ctx.created_at).await })
            })
            .await?;
        Ok(created)
    }

    async fn get(&self, org: &OrgId, id: &PolicyBindingId) -> Result<Option<PolicyBinding>> {
        policy_binding_row(self.store.reader(), org, id.as_str(), false).await.map_err(super::bindings::state_error)
    }

    async fn of_targets(&self, org: &OrgId, targets: &[PbmId]) -> Result<Vec<PolicyBinding>> {
        let condition = match targets {
            [] => nothing(),
            targets => Expr::col(policy_bindings::Column::Target).is_in(targets.iter().map(PbmId::as_str)),
        };
        self.policy_bindings_where(org, condition).await
    }

    async fn of_policies(&self, org: &OrgId, policies: &[PolicyId]) -> Result<Vec<PolicyBinding>> {
        let condition = match policies {
            [] => nothing(),
            policies => Expr::col(policy_bindings::Column::PolicyId).is_in(policies.iter().map(PolicyId::as_str)),
        };
        self.policy_bindings_where(org, condition).await
    }

    async fn list(
        &self,
        org: &OrgId,
        filter: &PolicyBindingFilter,
        ordering: Ordering<PolicyBindingOrder>,
        page_request: PageRequest,
    ) -> Result<Page<PolicyBinding>> {
        let direction = order(ordering.descending);
        let select = policy_bindings::Entity::find().filter(policy_binding_condition(org, filter));
        let select = match ordering.field {
            PolicyBindingOrder::Order => select.order_by(policy_bindings::Column::Order, direction),
            PolicyBindingOrder::Target => {
                select.order_by(policy_bindings::Column::Target, direction).order_by_asc(policy_bindings::Column::Order)
            }
            PolicyBindingOrder::Pk => select.order_by(policy_bindings::Column::Id, direction),
        }
        .order_by_asc(policy_bindings::Column::Id);
        let (rows, total) = page(&self.store, select, page_request).await?;
        into_page(rows, total, policy_binding_from_row)
    }

    async fn update(
        &self,
        org: &OrgId,
        id: &PolicyBindingId,
        spec: &PolicyBindingSpec,
        actor: &str,
    ) -> Result<PolicyBinding> {
        let events = vec![events::policy_binding_changed(id, spec)];
        let (updated, _) = self
            .store
            .write_returning(intent(POLICY_AGGREGATE, spec.policy.as_str(), org, actor, events), |txn, ctx| {
                let (org, id, spec) = (org.clone(), id.clone(), spec.clone());
                state(async move { update_policy_binding(txn, &org, &id, &spec, ctx.sequence, ctx.created_at).await })
            })
            .await?;
        Ok(updated)
    }

    async fn delete(&self, org: &OrgId, id: &PolicyBindingId, actor: &str) -> Result<Details> {
        retry_cascade(|| self.try_delete_policy_binding(org, id, actor)).await
    }
}
