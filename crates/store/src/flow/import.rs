//! [`FlowRepo::import`](flowgate_core::flow::ports::FlowRepo::import): every change of an import file in
//! one transaction, each with exactly the rows and events of its single-object method.
//!
//! The write's own aggregate is the imported flow; the events of the changes that belong to it are known
//! before the write (the removed bindings' payloads are read first and checked again inside, like a
//! delete's cascade), so they go into the write's intent in order. Events of other aggregates (policies,
//! stages, other flows) are appended inside the transaction as each change is applied.

use chrono::{DateTime, Utc};
use flowgate_core::Result;
use flowgate_core::event::{AggregateRef, Details, NewEvent};
use flowgate_core::flow::PolicyBinding;
use flowgate_core::flow::ports::{
    BINDING_NOT_FOUND, FLOW_AGGREGATE, FLOW_NOT_FOUND, ImportChange, ImportWrite, POLICY_AGGREGATE,
    POLICY_BINDING_NOT_FOUND, STAGE_AGGREGATE, events, not_found,
};
use flowgate_core::identity::OrgId;
use sea_orm::DatabaseTransaction;

use super::bindings::{BindingCascade, binding_cascade, delete_binding, insert_binding, state_error, update_binding};
use super::flows::{insert_flow, touch_flow, update_flow};
use super::policies::{
    delete_policy_binding, insert_policy, insert_policy_binding, policy_binding_row, update_policy,
    update_policy_binding,
};
use super::stages::{insert_stage, update_stage};
use super::{aggregate, append_other, intent};
use crate::event_log::{StateError, state};
use crate::store::Store;

/// One change with what was read for it before the write.
#[derive(Debug, Clone)]
struct Planned {
    change: ImportChange,
    /// The aggregate its event goes to.
    aggregate: AggregateRef,
    event: NewEvent,
    /// The binding (and its policy bindings) a `DeleteBinding` removes.
    removed_binding: Option<BindingCascade>,
    /// The policy binding a `DeletePolicyBinding` removes.
    removed_policy_binding: Option<PolicyBinding>,
}

/// Reads what the deletes of `change` remove and builds its event.
async fn plan(store: &Store, org: &OrgId, change: &ImportChange) -> Result<Planned> {
    let mut removed_binding = None;
    let mut removed_policy_binding = None;
    let (aggregate, event) = match change {
        ImportChange::CreateFlow(flow) => (aggregate(FLOW_AGGREGATE, flow.id.as_str()), events::flow_added(flow)),
        ImportChange::UpdateFlow(id, spec) => (aggregate(FLOW_AGGREGATE, id.as_str()), events::flow_changed(spec)),
        ImportChange::CreatePolicy(policy) => {
            (aggregate(POLICY_AGGREGATE, policy.id.as_str()), events::policy_added(policy))
        }
        ImportChange::UpdatePolicy(id, spec) => {
            (aggregate(POLICY_AGGREGATE, id.as_str()), events::policy_changed(spec))
        }
        ImportChange::CreateStage(stage) => (aggregate(STAGE_AGGREGATE, stage.id.as_str()), events::stage_added(stage)),
        ImportChange::UpdateStage(id, spec) => (aggregate(STAGE_AGGREGATE, id.as_str()), events::stage_changed(spec)),
        ImportChange::CreateBinding(binding) => {
            (aggregate(FLOW_AGGREGATE, binding.spec.target.as_str()), events::binding_added(binding))
        }
        ImportChange::UpdateBinding(id, spec) => {
            (aggregate(FLOW_AGGREGATE, spec.target.as_str()), events::binding_changed(id, spec))
        }
        ImportChange::DeleteBinding(id) => {
            let read = binding_cascade(store.reader(), org, id.as_str(), false).await.map_err(state_error)?;
            let read = read.ok_or_else(|| not_found(BINDING_NOT_FOUND))?;
            let planned = (
                aggregate(FLOW_AGGREGATE, read.binding.spec.target.as_str()),
                events::binding_removed(&read.binding, &read.policy_bindings),
            );
            removed_binding = Some(read);
            planned
        }
        ImportChange::CreatePolicyBinding(binding) => {
            (aggregate(POLICY_AGGREGATE, binding.spec.policy.as_str()), events::policy_binding_added(binding))
        }
        ImportChange::UpdatePolicyBinding(id, spec) => {
            (aggregate(POLICY_AGGREGATE, spec.policy.as_str()), events::policy_binding_changed(id, spec))
        }
        ImportChange::DeletePolicyBinding(id) => {
            let read = policy_binding_row(store.reader(), org, id.as_str(), false).await.map_err(state_error)?;
            let read = read.ok_or_else(|| not_found(POLICY_BINDING_NOT_FOUND))?;
            let planned =
                (aggregate(POLICY_AGGREGATE, read.spec.policy.as_str()), events::policy_binding_removed(&read));
            removed_policy_binding = Some(read);
            planned
        }
    };
    Ok(Planned { change: change.clone(), aggregate, event, removed_binding, removed_policy_binding })
}

/// One try of an import (see the module docs); a cascade that changed meanwhile makes the caller retry.
pub(super) async fn import(store: &Store, org: &OrgId, write: &ImportWrite, actor: &str) -> Result<Details> {
    let main = aggregate(FLOW_AGGREGATE, write.flow_id.as_str());
    let mut planned = Vec::with_capacity(write.changes.len());
    for change in &write.changes {
        planned.push(plan(store, org, change).await?);
    }
    let mut own_events: Vec<NewEvent> =
        planned.iter().filter(|p| p.aggregate == main).map(|p| p.event.clone()).collect();
    own_events.push(write.imported.clone());
    let backend = store.backend();
    store
        .write(intent(FLOW_AGGREGATE, write.flow_id.as_str(), org, actor, own_events), |txn, ctx| {
            let (planned, org, actor, main) = (planned.clone(), org.clone(), actor.to_owned(), main.clone());
            state(async move {
                let mut own_sequence = ctx.previous_sequence;
                for step in &planned {
                    let (sequence, at) = if step.aggregate == main {
                        own_sequence += 1;
                        (own_sequence, ctx.created_at)
                    } else {
                        let event = step.event.clone();
                        append_other(txn, backend, &step.aggregate, &org, &actor, event, ctx.created_at).await?
                    };
                    apply(txn, &org, step, sequence, at).await?;
                }
                // The imported event is the flow aggregate's last: the row says so.
                if !touch_flow(txn, main.aggregate_id.as_str(), ctx.sequence, ctx.created_at).await? {
                    return Err(not_found(FLOW_NOT_FOUND).into());
                }
                Ok(())
            })
        })
        .await
}

/// Applies one change with its event's sequence and time, as its single-object method does.
async fn apply(
    txn: &DatabaseTransaction,
    org: &OrgId,
    step: &Planned,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<(), StateError> {
    match &step.change {
        ImportChange::CreateFlow(flow) => insert_flow(txn, flow, sequence, at).await.map(drop),
        ImportChange::UpdateFlow(id, spec) => {
            update_flow(txn, org, id, spec, None, true, (sequence, at)).await.map(drop)
        }
        ImportChange::CreatePolicy(policy) => insert_policy(txn, policy, sequence, at).await.map(drop),
        ImportChange::UpdatePolicy(id, spec) => update_policy(txn, org, id, spec, sequence, at).await.map(drop),
        ImportChange::CreateStage(stage) => insert_stage(txn, stage, sequence, at).await.map(drop),
        ImportChange::UpdateStage(id, spec) => update_stage(txn, org, id, spec, sequence, at).await.map(drop),
        ImportChange::CreateBinding(binding) => insert_binding(txn, binding, sequence, at).await.map(drop),
        ImportChange::UpdateBinding(id, spec) => update_binding(txn, org, id, spec, sequence, at).await.map(drop),
        ImportChange::DeleteBinding(_) => match &step.removed_binding {
            Some(read) => delete_binding(txn, org, read, sequence, at).await,
            None => Err(not_found(BINDING_NOT_FOUND).into()),
        },
        ImportChange::CreatePolicyBinding(binding) => insert_policy_binding(txn, binding, sequence, at).await.map(drop),
        ImportChange::UpdatePolicyBinding(id, spec) => {
            update_policy_binding(txn, org, id, spec, sequence, at).await.map(drop)
        }
        ImportChange::DeletePolicyBinding(_) => match &step.removed_policy_binding {
            Some(read) => delete_policy_binding(txn, org, read, sequence, at).await,
            None => Err(not_found(POLICY_BINDING_NOT_FOUND).into()),
        },
    }
}
