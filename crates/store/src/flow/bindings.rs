//! [`BindingRepo`]: flow-stage bindings; their events live on the target flow's aggregate, whose row they
//! stamp.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::Result;
use flowgate_core::event::Details;
use flowgate_core::flow::ports::{
    BINDING_NOT_FOUND, BindingRepo, FLOW_AGGREGATE, NewBinding, binding_taken, events, not_found,
};
use flowgate_core::flow::{
    Binding, BindingFilter, BindingId, BindingOrder, BindingSpec, FlowId, InvalidResponseAction, Ordering, Page,
    PageRequest, PbmId, PolicyEngineMode, StageId,
};
use flowgate_core::identity::OrgId;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::entity::{bindings, policy_bindings};
use super::flows::{flow_exists, touch_flow};
use super::stages::{named_like, stage_exists};
use super::{
    FlowRepositories, cascade_changed, corrupt, db_sequence, details, intent, into_page, missing_reference, nothing,
    order, page, require_org, retry_cascade, unique_as,
};
use crate::backend::Backend;
use crate::error::db_error;
use crate::event_log::{StateError, state};

/// The domain object of a binding row.
pub(super) fn binding_from_row(row: bindings::Model) -> Result<Binding> {
    let spec = BindingSpec {
        target: row.target_id.into(),
        stage: row.stage_id.into(),
        order: row.order,
        evaluate_on_plan: row.evaluate_on_plan,
        re_evaluate_policies: row.re_evaluate_policies,
        policy_engine_mode: PolicyEngineMode::parse(&row.policy_engine_mode)
            .ok_or_else(|| corrupt("binding policy_engine_mode", &row.policy_engine_mode))?,
        invalid_response_action: InvalidResponseAction::parse(&row.invalid_response_action)
            .ok_or_else(|| corrupt("binding invalid_response_action", &row.invalid_response_action))?,
    };
    Ok(Binding {
        details: details(row.created_at, row.changed_at, row.sequence, &row.org_id)?,
        id: row.id.into(),
        pbm_id: row.pbm_id.into(),
        org_id: row.org_id.into(),
        spec,
    })
}

fn set_spec(row: &mut bindings::Model, spec: &BindingSpec) {
    let BindingSpec {
        target,
        stage,
        order,
        evaluate_on_plan,
        re_evaluate_policies,
        policy_engine_mode,
        invalid_response_action,
    } = spec;
    row.target_id = target.as_str().to_owned();
    row.stage_id = stage.as_str().to_owned();
    row.order = *order;
    row.evaluate_on_plan = *evaluate_on_plan;
    row.re_evaluate_policies = *re_evaluate_policies;
    row.policy_engine_mode = policy_engine_mode.as_str().to_owned();
    row.invalid_response_action = invalid_response_action.as_str().to_owned();
}

fn of_org(org: &OrgId) -> sea_orm::Select<bindings::Entity> {
    bindings::Entity::find().filter(bindings::Column::OrgId.eq(org.as_str()))
}

/// The binding row `id` of `org` read through `db`.
pub(super) async fn binding_row<C: ConnectionTrait>(
    db: &C,
    org: &OrgId,
    id: &str,
) -> std::result::Result<Option<bindings::Model>, sea_orm::DbErr> {
    of_org(org).filter(bindings::Column::Id.eq(id)).one(db).await
}

/// Checks that target and stage are in the org and (target, stage, order) is free (but for `except`).
async fn check_spec(
    txn: &DatabaseTransaction,
    org: &OrgId,
    spec: &BindingSpec,
    except: Option<&str>,
) -> Result<(), StateError> {
    if !flow_exists(txn, org, spec.target.as_str()).await? {
        return Err(missing_reference("target", spec.target.as_str()).into());
    }
    if !stage_exists(txn, org, spec.stage.as_str()).await? {
        return Err(missing_reference("stage", spec.stage.as_str()).into());
    }
    let mut taken = bindings::Entity::find()
        .filter(bindings::Column::TargetId.eq(spec.target.as_str()))
        .filter(bindings::Column::StageId.eq(spec.stage.as_str()))
        .filter(bindings::Column::Order.eq(spec.order));
    if let Some(id) = except {
        taken = taken.filter(bindings::Column::Id.ne(id));
    }
    match taken.select_only().column(bindings::Column::Id).into_tuple::<String>().one(txn).await? {
        Some(_) => Err(binding_taken().into()),
        None => Ok(()),
    }
}

/// Inserts a new binding carrying the write's sequence and time, and stamps its target flow.
pub(super) async fn insert_binding(
    txn: &DatabaseTransaction,
    binding: &NewBinding,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<bindings::Model, StateError> {
    require_org(txn, &binding.org_id).await?;
    check_spec(txn, &binding.org_id, &binding.spec, None).await?;
    let mut row = bindings::Model {
        id: binding.id.as_str().to_owned(),
        org_id: binding.org_id.as_str().to_owned(),
        pbm_id: binding.pbm_id.as_str().to_owned(),
        target_id: String::new(),
        stage_id: String::new(),
        order: 0,
        evaluate_on_plan: false,
        re_evaluate_policies: false,
        policy_engine_mode: String::new(),
        invalid_response_action: String::new(),
        created_at: at,
        changed_at: at,
        sequence: db_sequence(sequence)?,
    };
    set_spec(&mut row, &binding.spec);
    bindings::Entity::insert(bindings::ActiveModel::from(row.clone()).reset_all())
        .exec_without_returning(txn)
        .await
        .map_err(|e| unique_as(e, "target_id", binding_taken))?;
    touch_flow(txn, &row.target_id, sequence, at).await?;
    Ok(row)
}

/// Replaces every field of binding `id` of `org`, stamping it and its (new) target flow.
pub(super) async fn update_binding(
    txn: &DatabaseTransaction,
    org: &OrgId,
    id: &BindingId,
    spec: &BindingSpec,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<bindings::Model, StateError> {
    let mut row = binding_row(txn, org, id.as_str()).await?.ok_or_else(|| not_found(BINDING_NOT_FOUND))?;
    check_spec(txn, org, spec, Some(id.as_str())).await?;
    set_spec(&mut row, spec);
    row.changed_at = at;
    row.sequence = db_sequence(sequence)?;
    bindings::ActiveModel::from(row.clone())
        .reset_all()
        .update(txn)
        .await
        .map_err(|e| unique_as(e, "target_id", binding_taken))?;
    touch_flow(txn, &row.target_id, sequence, at).await?;
    Ok(row)
}

/// What deleting a binding takes along: the binding as it is and the policy bindings on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BindingCascade {
    pub(super) binding: Binding,
    pub(super) policy_bindings: Vec<String>,
}

/// Reads the cascade of binding `id` through `db`; `lock` locks the binding row (inside the deleting
/// write), which blocks new policy bindings on it (their foreign key checks share-lock it).
pub(super) async fn binding_cascade<C: ConnectionTrait>(
    db: &C,
    org: &OrgId,
    id: &str,
    lock: bool,
) -> Result<Option<BindingCascade>, StateError> {
    let mut binding = of_org(org).filter(bindings::Column::Id.eq(id));
    if lock {
        binding = binding.lock_exclusive();
    }
    let Some(row) = binding.one(db).await? else { return Ok(None) };
    let policy_bindings = policy_bindings::Entity::find()
        .select_only()
        .column(policy_bindings::Column::Id)
        .filter(policy_bindings::Column::BindingId.eq(id))
        .order_by_asc(policy_bindings::Column::Id)
        .into_tuple::<String>()
        .all(db)
        .await?;
    Ok(Some(BindingCascade { binding: binding_from_row(row)?, policy_bindings }))
}

/// Inside a write: deletes the binding and its policy bindings when they are still exactly `read`, and
/// stamps the target flow with the write's sequence and time.
pub(super) async fn delete_binding(
    txn: &DatabaseTransaction,
    org: &OrgId,
    read: &BindingCascade,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<(), StateError> {
    let id = read.binding.id.as_str();
    match binding_cascade(txn, org, id, true).await? {
        None => return Err(not_found(BINDING_NOT_FOUND).into()),
        // The change metadata differs when the binding was changed meanwhile, which moves the event too.
        Some(now) if now != *read => return Err(cascade_changed()),
        Some(_) => {}
    }
    policy_bindings::Entity::delete_many().filter(policy_bindings::Column::BindingId.eq(id)).exec(txn).await?;
    bindings::Entity::delete_by_id(id).exec(txn).await?;
    touch_flow(txn, read.binding.spec.target.as_str(), sequence, at).await?;
    Ok(())
}

fn binding_condition(backend: Backend, org: &OrgId, filter: &BindingFilter) -> Condition {
    let BindingFilter {
        target,
        stage,
        order,
        evaluate_on_plan,
        re_evaluate_policies,
        policy_engine_mode,
        invalid_response_action,
        fsb_uuid,
        pbm_uuid,
        search: needle,
    } = filter;
    let mut all = Condition::all().add(bindings::Column::OrgId.eq(org.as_str()));
    if let Some(target) = target {
        all = all.add(bindings::Column::TargetId.eq(target.as_str()));
    }
    if let Some(stage) = stage {
        all = all.add(bindings::Column::StageId.eq(stage.as_str()));
    }
    if let Some(order) = order {
        all = all.add(bindings::Column::Order.eq(*order));
    }
    if let Some(flag) = evaluate_on_plan {
        all = all.add(bindings::Column::EvaluateOnPlan.eq(*flag));
    }
    if let Some(flag) = re_evaluate_policies {
        all = all.add(bindings::Column::ReEvaluatePolicies.eq(*flag));
    }
    if let Some(mode) = policy_engine_mode {
        all = all.add(bindings::Column::PolicyEngineMode.eq(mode.as_str()));
    }
    if let Some(action) = invalid_response_action {
        all = all.add(bindings::Column::InvalidResponseAction.eq(action.as_str()));
    }
    if let Some(id) = fsb_uuid {
        all = all.add(bindings::Column::Id.eq(id.as_str()));
    }
    if let Some(pbm) = pbm_uuid {
        all = all.add(bindings::Column::PbmId.eq(pbm.as_str()));
    }
    if let Some(needle) = needle {
        all = all.add(Expr::col(bindings::Column::StageId).in_subquery(named_like(backend, org, needle)));
    }
    all
}

impl FlowRepositories {
    async fn try_delete_binding(&self, org: &OrgId, id: &BindingId, actor: &str) -> Result<Details> {
        let read = binding_cascade(self.store.reader(), org, id.as_str(), false).await.map_err(state_error)?;
        let read = read.ok_or_else(|| not_found(BINDING_NOT_FOUND))?;
        let event = events::binding_removed(&read.binding, &read.policy_bindings);
        let target = read.binding.spec.target.as_str().to_owned();
        self.store
            .write(intent(FLOW_AGGREGATE, &target, org, actor, vec![event]), |txn, ctx| {
                let (read, org) = (read.clone(), org.clone());
                state(async move { delete_binding(txn, &org, &read, ctx.sequence, ctx.created_at).await })
            })
            .await
    }

    async fn bindings_where(&self, org: &OrgId, condition: Condition) -> Result<Vec<Binding>> {
        let rows = of_org(org)
            .filter(condition)
            .order_by_asc(bindings::Column::TargetId)
            .order_by_asc(bindings::Column::Order)
            .order_by_asc(bindings::Column::Id)
            .all(self.store.reader())
            .await
            .map_err(db_error)?;
        rows.into_iter().map(binding_from_row).collect()
    }
}

/// A [`StateError`] met outside a write, as the core error it stands for.
pub(super) fn state_error(err: StateError) -> flowgate_core::Error {
    err.into_error()
}

#[async_trait]
impl BindingRepo for FlowRepositories {
    async fn create(&self, binding: &NewBinding, actor: &str) -> Result<Binding> {
        let events = vec![events::binding_added(binding)];
        let target = binding.spec.target.as_str();
        let (row, _) = self
            .store
            .write_returning(intent(FLOW_AGGREGATE, target, &binding.org_id, actor, events), |txn, ctx| {
                let binding = binding.clone();
                state(async move { insert_binding(txn, &binding, ctx.sequence, ctx.created_at).await })
            })
            .await?;
        binding_from_row(row)
    }

    async fn get(&self, org: &OrgId, id: &BindingId) -> Result<Option<Binding>> {
        binding_row(self.store.reader(), org, id.as_str()).await.map_err(db_error)?.map(binding_from_row).transpose()
    }

    async fn get_by_pbm(&self, org: &OrgId, pbm: &PbmId) -> Result<Option<Binding>> {
        let row = of_org(org).filter(bindings::Column::PbmId.eq(pbm.as_str())).one(self.store.reader()).await;
        row.map_err(db_error)?.map(binding_from_row).transpose()
    }

    async fn of_flows(&self, org: &OrgId, flows: &[FlowId]) -> Result<Vec<Binding>> {
        let condition = match flows {
            [] => Condition::all().add(nothing()),
            flows => Condition::all().add(bindings::Column::TargetId.is_in(flows.iter().map(FlowId::as_str))),
        };
        self.bindings_where(org, condition).await
    }

    async fn of_stages(&self, org: &OrgId, stages: &[StageId]) -> Result<Vec<Binding>> {
        let condition = match stages {
            [] => Condition::all().add(nothing()),
            stages => Condition::all().add(bindings::Column::StageId.is_in(stages.iter().map(StageId::as_str))),
        };
        self.bindings_where(org, condition).await
    }

    async fn list(
        &self,
        org: &OrgId,
        filter: &BindingFilter,
        ordering: Ordering<BindingOrder>,
        page_request: PageRequest,
    ) -> Result<Page<Binding>> {
        let direction = order(ordering.descending);
        let select = bindings::Entity::find().filter(binding_condition(self.store.backend(), org, filter));
        let select = match ordering.field {
            BindingOrder::Target => {
                select.order_by(bindings::Column::TargetId, direction).order_by_asc(bindings::Column::Order)
            }
            BindingOrder::Order => select.order_by(bindings::Column::Order, direction),
            BindingOrder::Stage => select.order_by(bindings::Column::StageId, direction),
            BindingOrder::Pk => select.order_by(bindings::Column::Id, direction),
        }
        .order_by_asc(bindings::Column::Id);
        let (rows, total) = page(&self.store, select, page_request).await?;
        into_page(rows, total, binding_from_row)
    }

    async fn update(&self, org: &OrgId, id: &BindingId, spec: &BindingSpec, actor: &str) -> Result<Binding> {
        let events = vec![events::binding_changed(id, spec)];
        let (row, _) = self
            .store
            .write_returning(intent(FLOW_AGGREGATE, spec.target.as_str(), org, actor, events), |txn, ctx| {
                let (org, id, spec) = (org.clone(), id.clone(), spec.clone());
                state(async move { update_binding(txn, &org, &id, &spec, ctx.sequence, ctx.created_at).await })
            })
            .await?;
        binding_from_row(row)
    }

    async fn delete(&self, org: &OrgId, id: &BindingId, actor: &str) -> Result<Details> {
        retry_cascade(|| self.try_delete_binding(org, id, actor)).await
    }
}
