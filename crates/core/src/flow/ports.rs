//! Ports of the flow-definition use cases: the repositories `flowgate-store` implements.
//!
//! Rules for every repository here:
//! - Everything is scoped to an organization: every method takes `org`, reads only that org's rows, and a
//!   row of another org behaves exactly like a missing one (`None`, or NotFound with the listed id).
//! - Every mutating method is ONE event-log write (`Store::write`): the new state rows and the events
//!   listed on the method, in one transaction, resource owner = `org`, creator = `actor`, no expected
//!   sequence (concurrent writers are serialized by the store's retry). The event of each change is built
//!   by the helper in [`events`], so payloads are the core's business; events on other aggregates than the
//!   write's main one are appended inside the same transaction.
//! - Records carry the ids the core generated and values the core validated (including that referenced
//!   objects exist in the same org); repositories never invent ids and apply no business rules beyond
//!   uniqueness (only a database constraint can enforce it race-free) and the documented cascades. Unique
//!   violations are answered with the errors built by the functions below (InvalidArgument naming the
//!   field, as authentik answers 400), never AlreadyExists.
//! - Lists: the repository filters, searches, orders and pages in SQL and answers the total number of
//!   matches ignoring paging. `search` is a case-insensitive literal substring (see
//!   [`super::model::contains_ignore_case`]). Ties of every ordering are broken as the key's doc says, then
//!   by id ascending, so paging is stable.
//! - Nothing here knows SQL or wire types; stage configurations are persisted as the JSON object of
//!   [`StageConfig::to_json`] next to the type's [`StageType::as_str`] and read back with
//!   [`StageConfig::from_json`] (a row that fails to parse is an Internal error).

use std::sync::Arc;

use async_trait::async_trait;

use super::model::{
    Binding, BindingFilter, BindingId, BindingOrder, BindingSpec, Flow, FlowFilter, FlowId, FlowOrder, FlowSpec,
    Ordering, Page, PageRequest, PbmId, Policy, PolicyBinding, PolicyBindingFilter, PolicyBindingId,
    PolicyBindingOrder, PolicyBindingSpec, PolicyFilter, PolicyId, PolicyOrder, PolicySpec, Slug, Stage, StageFilter,
    StageId, StageOrder, StageSpec, StageType,
};
use crate::event::Details;
use crate::identity::OrgId;
use crate::{Error, ErrorKind, Result};

/// Aggregate type of flows; also carries `flow.binding.*` and `flow.imported` events.
pub const FLOW_AGGREGATE: &str = "flow";
/// Aggregate type of stages.
pub const STAGE_AGGREGATE: &str = "stage";
/// Aggregate type of policies; also carries `policy.binding.*` events.
pub const POLICY_AGGREGATE: &str = "policy";

/// Error id: NotFound, no such flow in the org.
pub const FLOW_NOT_FOUND: &str = "FLOW-not-found";
/// Error id: NotFound, no such stage in the org.
pub const STAGE_NOT_FOUND: &str = "STAGE-not-found";
/// Error id: NotFound, no such flow-stage binding in the org.
pub const BINDING_NOT_FOUND: &str = "FLOW-binding-not-found";
/// Error id: NotFound, no such policy in the org.
pub const POLICY_NOT_FOUND: &str = "POLICY-not-found";
/// Error id: NotFound, no such policy binding in the org.
pub const POLICY_BINDING_NOT_FOUND: &str = "POLICY-binding-not-found";
/// Error id: InvalidArgument on `slug`, another flow of the org has the slug.
pub const FLOW_SLUG_TAKEN: &str = "FLOW-slug-taken";
/// Error id: InvalidArgument on `name`, another stage of the org has the name.
pub const STAGE_NAME_TAKEN: &str = "STAGE-name-taken";
/// Error id: InvalidArgument on `name`, another policy of the org has the name.
pub const POLICY_NAME_TAKEN: &str = "POLICY-name-taken";
/// Error id: InvalidArgument on `non_field_errors`, (target, stage, order) is taken.
pub const BINDING_TAKEN: &str = "FLOW-binding-taken";
/// Error id: InvalidArgument on `non_field_errors`, (target, order) is taken by another policy binding.
pub const POLICY_BINDING_TAKEN: &str = "POLICY-binding-taken";

/// DRF's answer for an unknown object.
pub const NOT_FOUND_MESSAGE: &str = "Not found.";

/// NotFound `id` with DRF's message `Not found.`.
pub fn not_found(id: &'static str) -> Error {
    Error::new(ErrorKind::NotFound, id, NOT_FOUND_MESSAGE)
}

/// InvalidArgument [`FLOW_SLUG_TAKEN`] on `slug`: `Flow with this slug already exists.`
pub fn flow_slug_taken() -> Error {
    Error::invalid_field(FLOW_SLUG_TAKEN, "slug", "Flow with this slug already exists.")
}

/// InvalidArgument [`STAGE_NAME_TAKEN`] on `name`: `Stage with this name already exists.`
pub fn stage_name_taken() -> Error {
    Error::invalid_field(STAGE_NAME_TAKEN, "name", "Stage with this name already exists.")
}

/// InvalidArgument [`POLICY_NAME_TAKEN`] on `name`: `Policy with this name already exists.`
pub fn policy_name_taken() -> Error {
    Error::invalid_field(POLICY_NAME_TAKEN, "name", "Policy with this name already exists.")
}

/// InvalidArgument [`BINDING_TAKEN`] on `non_field_errors`.
pub fn binding_taken() -> Error {
    Error::invalid_field(BINDING_TAKEN, "non_field_errors", "The fields target, stage, order must make a unique set.")
}

/// InvalidArgument [`POLICY_BINDING_TAKEN`] on `non_field_errors`.
pub fn policy_binding_taken() -> Error {
    Error::invalid_field(POLICY_BINDING_TAKEN, "non_field_errors", "The fields target, order must make a unique set.")
}

/// A new flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFlow {
    /// Generated `pk`.
    pub id: FlowId,
    /// Generated `policybindingmodel_ptr_id`, distinct from `id`.
    pub pbm_id: PbmId,
    /// Owning org.
    pub org_id: OrgId,
    /// Fields; the slug is unique per org ⇒ [`flow_slug_taken`].
    pub spec: FlowSpec,
}

/// A new stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStage {
    /// Generated id.
    pub id: StageId,
    /// Owning org.
    pub org_id: OrgId,
    /// Fields; the name is unique per org ⇒ [`stage_name_taken`].
    pub spec: StageSpec,
}

/// A new flow-stage binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBinding {
    /// Generated `pk`.
    pub id: BindingId,
    /// Generated pbm id, distinct from every other id.
    pub pbm_id: PbmId,
    /// Owning org.
    pub org_id: OrgId,
    /// Fields; (target, stage, order) is unique ⇒ [`binding_taken`].
    pub spec: BindingSpec,
}

/// A new expression policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPolicy {
    /// Generated id.
    pub id: PolicyId,
    /// Owning org.
    pub org_id: OrgId,
    /// Fields; the name is unique per org ⇒ [`policy_name_taken`].
    pub spec: PolicySpec,
}

/// A new policy binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPolicyBinding {
    /// Generated id.
    pub id: PolicyBindingId,
    /// Owning org.
    pub org_id: OrgId,
    /// Fields; (target, order) is unique ⇒ [`policy_binding_taken`].
    pub spec: PolicyBindingSpec,
}

/// A stage whose configuration the core rewrote because an object it links to is being deleted (authentik's
/// SET_NULL links): written inside the deleting write, with a `stage.changed` event ([`events::stage_changed`])
/// on that stage. A stage that no longer exists at write time is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRewrite {
    /// The stage.
    pub id: StageId,
    /// Its whole new spec (name unchanged).
    pub spec: StageSpec,
}

/// One change of an import, applied in order inside the import's single transaction with exactly the rows
/// and events of the corresponding single-object method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportChange {
    /// As [`FlowRepo::create`].
    CreateFlow(NewFlow),
    /// As [`FlowRepo::update`].
    UpdateFlow(FlowId, FlowSpec),
    /// As [`PolicyRepo::create`].
    CreatePolicy(NewPolicy),
    /// As [`PolicyRepo::update`].
    UpdatePolicy(PolicyId, PolicySpec),
    /// As [`StageRepo::create`].
    CreateStage(NewStage),
    /// As [`StageRepo::update`].
    UpdateStage(StageId, StageSpec),
    /// As [`BindingRepo::create`].
    CreateBinding(NewBinding),
    /// As [`BindingRepo::update`].
    UpdateBinding(BindingId, BindingSpec),
    /// As [`BindingRepo::delete`] (its policy bindings go with it).
    DeleteBinding(BindingId),
    /// As [`PolicyBindingRepo::create`].
    CreatePolicyBinding(NewPolicyBinding),
    /// As [`PolicyBindingRepo::update`].
    UpdatePolicyBinding(PolicyBindingId, PolicyBindingSpec),
    /// As [`PolicyBindingRepo::delete`].
    DeletePolicyBinding(PolicyBindingId),
}

/// Everything one import writes. The core compared the file with the stored objects, so `changes` holds
/// only real differences, ordered so that referenced rows come first (flows, policies, stages, bindings,
/// policy bindings); an import that changes nothing never reaches the repository.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportWrite {
    /// The imported flow (created by a change in `changes` or existing): the write's main aggregate.
    pub flow_id: FlowId,
    /// The changes, in order.
    pub changes: Vec<ImportChange>,
    /// Appended last on (`flow`, `flow_id`): [`events::flow_imported`].
    pub imported: crate::event::NewEvent,
}

/// Flows.
#[async_trait]
pub trait FlowRepo: Send + Sync {
    /// Inserts the flow; event [`events::flow_added`] on (`flow`, id). Duplicate (org, slug) ⇒
    /// [`flow_slug_taken`].
    async fn create(&self, flow: &NewFlow, actor: &str) -> Result<Flow>;
    /// The flow with `id` in `org`.
    async fn get(&self, org: &OrgId, id: &FlowId) -> Result<Option<Flow>>;
    /// The flow of `org` whose slug equals `slug` exactly.
    async fn get_by_slug(&self, org: &OrgId, slug: &Slug) -> Result<Option<Flow>>;
    /// The flow of `org` whose `pbm_id` is `pbm`.
    async fn get_by_pbm(&self, org: &OrgId, pbm: &PbmId) -> Result<Option<Flow>>;
    /// The flows of `org` among `ids` (unknown ids are skipped), ordered by slug.
    async fn get_many(&self, org: &OrgId, ids: &[FlowId]) -> Result<Vec<Flow>>;
    /// Flows of `org` matching `filter`, ordered by `ordering` (`Slug` ties by name), paged.
    async fn list(
        &self,
        org: &OrgId,
        filter: &FlowFilter,
        ordering: Ordering<FlowOrder>,
        page: PageRequest,
    ) -> Result<Page<Flow>>;
    /// Replaces every field of the flow `read` (as the caller read it) with `spec`; event
    /// [`events::flow_changed`]. The write may start from `read.details` instead of reading the flow again;
    /// a flow changed since is still overwritten (last writer wins). Missing ⇒ NotFound [`FLOW_NOT_FOUND`];
    /// slug of another flow ⇒ [`flow_slug_taken`].
    async fn update(&self, org: &OrgId, read: &Flow, spec: &FlowSpec, actor: &str) -> Result<Flow>;
    /// In one write on (`flow`, id): deletes the policy bindings targeting the flow's pbm id or the pbm id
    /// of one of its bindings, the bindings whose target is the flow, the flow itself, and applies
    /// `rewrites` (stages that linked to the flow); event [`events::flow_removed`] (listing the cascaded
    /// ids) plus one `stage.changed` per rewrite. Missing ⇒ NotFound [`FLOW_NOT_FOUND`].
    async fn delete(&self, org: &OrgId, id: &FlowId, rewrites: &[StageRewrite], actor: &str) -> Result<Details>;
    /// Applies `write.changes` in order and appends `write.imported`, all in ONE transaction; any failure
    /// (unique violation, missing row) rolls everything back and is answered as the single-object method
    /// would answer it. Answers the flow aggregate's details after the write.
    async fn import(&self, org: &OrgId, write: &ImportWrite, actor: &str) -> Result<Details>;
}

/// Stages.
#[async_trait]
pub trait StageRepo: Send + Sync {
    /// Inserts the stage; event [`events::stage_added`] on (`stage`, id). Duplicate (org, name) ⇒
    /// [`stage_name_taken`].
    async fn create(&self, stage: &NewStage, actor: &str) -> Result<Stage>;
    /// The stage with `id` in `org`.
    async fn get(&self, org: &OrgId, id: &StageId) -> Result<Option<Stage>>;
    /// The stage of `org` whose name equals `name` exactly.
    async fn get_by_name(&self, org: &OrgId, name: &str) -> Result<Option<Stage>>;
    /// The stages of `org` among `ids` (unknown ids are skipped), ordered by name.
    async fn get_many(&self, org: &OrgId, ids: &[StageId]) -> Result<Vec<Stage>>;
    /// Every stage of `org` whose type is one of `types`, ordered by name (used to find links).
    async fn of_types(&self, org: &OrgId, types: &[StageType]) -> Result<Vec<Stage>>;
    /// Stages of `org` matching `filter`, ordered by `ordering`, paged.
    async fn list(
        &self,
        org: &OrgId,
        filter: &StageFilter,
        ordering: Ordering<StageOrder>,
        page: PageRequest,
    ) -> Result<Page<Stage>>;
    /// Replaces name and configuration (the type never changes: the core refuses that); event
    /// [`events::stage_changed`]. Missing ⇒ NotFound [`STAGE_NOT_FOUND`]; name of another stage ⇒
    /// [`stage_name_taken`].
    async fn update(&self, org: &OrgId, id: &StageId, spec: &StageSpec, actor: &str) -> Result<Stage>;
    /// In one write on (`stage`, id): deletes the policy bindings of the bindings of the stage, those
    /// bindings, the stage, and applies `rewrites` (other stages that linked to it); event
    /// [`events::stage_removed`] (listing the cascaded ids) plus one `stage.changed` per rewrite. Missing ⇒
    /// NotFound [`STAGE_NOT_FOUND`].
    async fn delete(&self, org: &OrgId, id: &StageId, rewrites: &[StageRewrite], actor: &str) -> Result<Details>;
}

/// Flow-stage bindings. Their events live on the target flow's aggregate.
#[async_trait]
pub trait BindingRepo: Send + Sync {
    /// Inserts the binding; event [`events::binding_added`] on (`flow`, target). Duplicate (target, stage,
    /// order) ⇒ [`binding_taken`].
    async fn create(&self, binding: &NewBinding, actor: &str) -> Result<Binding>;
    /// The binding with `id` in `org`.
    async fn get(&self, org: &OrgId, id: &BindingId) -> Result<Option<Binding>>;
    /// The binding of `org` whose `pbm_id` is `pbm`.
    async fn get_by_pbm(&self, org: &OrgId, pbm: &PbmId) -> Result<Option<Binding>>;
    /// Every binding of `org` whose target is one of `flows`, ordered by target, order, id.
    async fn of_flows(&self, org: &OrgId, flows: &[FlowId]) -> Result<Vec<Binding>>;
    /// Every binding of `org` whose stage is one of `stages`, ordered by target, order, id.
    async fn of_stages(&self, org: &OrgId, stages: &[StageId]) -> Result<Vec<Binding>>;
    /// Bindings of `org` matching `filter`, ordered by `ordering` (`Target` ties by order), paged.
    async fn list(
        &self,
        org: &OrgId,
        filter: &BindingFilter,
        ordering: Ordering<BindingOrder>,
        page: PageRequest,
    ) -> Result<Page<Binding>>;
    /// Replaces every field; event [`events::binding_changed`] on (`flow`, new target). Missing ⇒ NotFound
    /// [`BINDING_NOT_FOUND`]; duplicate ⇒ [`binding_taken`].
    async fn update(&self, org: &OrgId, id: &BindingId, spec: &BindingSpec, actor: &str) -> Result<Binding>;
    /// Deletes the binding and the policy bindings targeting its pbm id; event [`events::binding_removed`]
    /// on (`flow`, target). Missing ⇒ NotFound [`BINDING_NOT_FOUND`].
    async fn delete(&self, org: &OrgId, id: &BindingId, actor: &str) -> Result<Details>;
}

/// Expression policies.
#[async_trait]
pub trait PolicyRepo: Send + Sync {
    /// Inserts the policy; event [`events::policy_added`] on (`policy`, id). Duplicate (org, name) ⇒
    /// [`policy_name_taken`].
    async fn create(&self, policy: &NewPolicy, actor: &str) -> Result<Policy>;
    /// The policy with `id` in `org`.
    async fn get(&self, org: &OrgId, id: &PolicyId) -> Result<Option<Policy>>;
    /// The policy of `org` whose name equals `name` exactly.
    async fn get_by_name(&self, org: &OrgId, name: &str) -> Result<Option<Policy>>;
    /// The policies of `org` among `ids` (unknown ids are skipped), ordered by name.
    async fn get_many(&self, org: &OrgId, ids: &[PolicyId]) -> Result<Vec<Policy>>;
    /// Policies of `org` matching `filter`, ordered by `ordering`, paged.
    async fn list(
        &self,
        org: &OrgId,
        filter: &PolicyFilter,
        ordering: Ordering<PolicyOrder>,
        page: PageRequest,
    ) -> Result<Page<Policy>>;
    /// Replaces every field; event [`events::policy_changed`]. Missing ⇒ NotFound [`POLICY_NOT_FOUND`];
    /// name of another policy ⇒ [`policy_name_taken`].
    async fn update(&self, org: &OrgId, id: &PolicyId, spec: &PolicySpec, actor: &str) -> Result<Policy>;
    /// In one write on (`policy`, id): deletes the policy bindings of the policy, the policy, and applies
    /// `rewrites` (prompt stages validating with it); event [`events::policy_removed`] (listing the cascaded
    /// ids) plus one `stage.changed` per rewrite. Missing ⇒ NotFound [`POLICY_NOT_FOUND`].
    async fn delete(&self, org: &OrgId, id: &PolicyId, rewrites: &[StageRewrite], actor: &str) -> Result<Details>;
}

/// Policy bindings. Their events live on the bound policy's aggregate.
#[async_trait]
pub trait PolicyBindingRepo: Send + Sync {
    /// Inserts the binding; event [`events::policy_binding_added`] on (`policy`, policy). Duplicate
    /// (target, order) ⇒ [`policy_binding_taken`].
    async fn create(&self, binding: &NewPolicyBinding, actor: &str) -> Result<PolicyBinding>;
    /// The policy binding with `id` in `org`.
    async fn get(&self, org: &OrgId, id: &PolicyBindingId) -> Result<Option<PolicyBinding>>;
    /// Every policy binding of `org` whose target is one of `targets`, ordered by target, order, id.
    async fn of_targets(&self, org: &OrgId, targets: &[PbmId]) -> Result<Vec<PolicyBinding>>;
    /// Every policy binding of `org` whose policy is one of `policies`, ordered by target, order, id.
    async fn of_policies(&self, org: &OrgId, policies: &[PolicyId]) -> Result<Vec<PolicyBinding>>;
    /// Policy bindings of `org` matching `filter`, ordered by `ordering` (`Target` ties by order), paged.
    async fn list(
        &self,
        org: &OrgId,
        filter: &PolicyBindingFilter,
        ordering: Ordering<PolicyBindingOrder>,
        page: PageRequest,
    ) -> Result<Page<PolicyBinding>>;
    /// Replaces every field; event [`events::policy_binding_changed`] on (`policy`, new policy). Missing ⇒
    /// NotFound [`POLICY_BINDING_NOT_FOUND`]; duplicate ⇒ [`policy_binding_taken`].
    async fn update(
        &self,
        org: &OrgId,
        id: &PolicyBindingId,
        spec: &PolicyBindingSpec,
        actor: &str,
    ) -> Result<PolicyBinding>;
    /// Deletes the binding; event [`events::policy_binding_removed`] on (`policy`, policy). Missing ⇒
    /// NotFound [`POLICY_BINDING_NOT_FOUND`].
    async fn delete(&self, org: &OrgId, id: &PolicyBindingId, actor: &str) -> Result<Details>;
}

/// The repositories the flow-definition use cases need, shared.
#[derive(Clone)]
pub struct FlowRepos {
    /// Flows (and imports).
    pub flows: Arc<dyn FlowRepo>,
    /// Stages.
    pub stages: Arc<dyn StageRepo>,
    /// Flow-stage bindings.
    pub bindings: Arc<dyn BindingRepo>,
    /// Expression policies.
    pub policies: Arc<dyn PolicyRepo>,
    /// Policy bindings.
    pub policy_bindings: Arc<dyn PolicyBindingRepo>,
}

impl std::fmt::Debug for FlowRepos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowRepos").finish_non_exhaustive()
    }
}

/// The events of flow-definition writes; repositories append exactly these.
pub mod events {
    use serde_json::{Value, json};

    use super::{NewBinding, NewFlow, NewPolicy, NewPolicyBinding, NewStage};
    use crate::event::NewEvent;
    use crate::flow::model::{
        Binding, BindingId, BindingSpec, FlowSpec, PolicyBinding, PolicyBindingId, PolicyBindingSpec, PolicySpec,
        StageSpec,
    };

    fn event(event_type: &str, payload: Value) -> NewEvent {
        NewEvent { event_type: event_type.to_owned(), payload }
    }

    fn flow_payload(spec: &FlowSpec) -> Value {
        let FlowSpec {
            name,
            slug,
            title,
            designation,
            layout,
            background,
            compatibility_mode,
            denied_action,
            authentication,
            policy_engine_mode,
        } = spec;
        json!({
            "name": name, "slug": slug.as_str(), "title": title, "designation": designation.as_str(),
            "layout": layout.as_str(), "background": background, "compatibility_mode": compatibility_mode,
            "denied_action": denied_action.as_str(), "authentication": authentication.as_str(),
            "policy_engine_mode": policy_engine_mode.as_str(),
        })
    }

    fn stage_payload(spec: &StageSpec) -> Value {
        let StageSpec { name, config } = spec;
        json!({ "name": name, "type": config.stage_type().as_str(), "config": config.to_json() })
    }

    fn binding_payload(id: &BindingId, spec: &BindingSpec) -> Value {
        let BindingSpec {
            target,
            stage,
            order,
            evaluate_on_plan,
            re_evaluate_policies,
            policy_engine_mode,
            invalid_response_action,
        } = spec;
        json!({
            "binding_id": id.as_str(), "target": target.as_str(), "stage": stage.as_str(), "order": order,
            "evaluate_on_plan": evaluate_on_plan, "re_evaluate_policies": re_evaluate_policies,
            "policy_engine_mode": policy_engine_mode.as_str(),
            "invalid_response_action": invalid_response_action.as_str(),
        })
    }

    fn policy_payload(spec: &PolicySpec) -> Value {
        let PolicySpec { name, expression, execution_logging } = spec;
        json!({ "name": name, "expression": expression, "execution_logging": execution_logging })
    }

    fn policy_binding_payload(id: &PolicyBindingId, spec: &PolicyBindingSpec) -> Value {
        let PolicyBindingSpec { policy, target, negate, enabled, order, timeout, failure_result } = spec;
        json!({
            "policy_binding_id": id.as_str(), "policy": policy.as_str(), "target": target.as_str(),
            "negate": negate, "enabled": enabled, "order": order, "timeout": timeout,
            "failure_result": failure_result,
        })
    }

    /// `flow.added` (payload: every field, plus `pbm_id`).
    pub fn flow_added(flow: &NewFlow) -> NewEvent {
        let mut payload = flow_payload(&flow.spec);
        payload["pbm_id"] = json!(flow.pbm_id.as_str());
        event("flow.added", payload)
    }

    /// `flow.changed` (payload: every field after the change).
    pub fn flow_changed(spec: &FlowSpec) -> NewEvent {
        event("flow.changed", flow_payload(spec))
    }

    /// `flow.removed` (payload: slug, the ids of the cascaded bindings and policy bindings).
    pub fn flow_removed(slug: &str, bindings: &[String], policy_bindings: &[String]) -> NewEvent {
        event("flow.removed", json!({ "slug": slug, "bindings": bindings, "policy_bindings": policy_bindings }))
    }

    /// `flow.imported` (payload: the number of entries in the file and of changes written).
    pub fn flow_imported(entries: usize, changes: usize) -> NewEvent {
        event("flow.imported", json!({ "entries": entries, "changes": changes }))
    }

    /// `stage.added` (payload: name, type, config).
    pub fn stage_added(stage: &NewStage) -> NewEvent {
        event("stage.added", stage_payload(&stage.spec))
    }

    /// `stage.changed` (payload: name, type, config after the change).
    pub fn stage_changed(spec: &StageSpec) -> NewEvent {
        event("stage.changed", stage_payload(spec))
    }

    /// `stage.removed` (payload: name, the ids of the cascaded bindings and policy bindings).
    pub fn stage_removed(name: &str, bindings: &[String], policy_bindings: &[String]) -> NewEvent {
        event("stage.removed", json!({ "name": name, "bindings": bindings, "policy_bindings": policy_bindings }))
    }

    /// `flow.binding.added` (payload: binding id, every field, pbm id).
    pub fn binding_added(binding: &NewBinding) -> NewEvent {
        let mut payload = binding_payload(&binding.id, &binding.spec);
        payload["pbm_id"] = json!(binding.pbm_id.as_str());
        event("flow.binding.added", payload)
    }

    /// `flow.binding.changed` (payload: binding id and every field after the change).
    pub fn binding_changed(id: &BindingId, spec: &BindingSpec) -> NewEvent {
        event("flow.binding.changed", binding_payload(id, spec))
    }

    /// `flow.binding.removed` (payload: binding id, stage, order, the ids of the cascaded policy bindings).
    pub fn binding_removed(binding: &Binding, policy_bindings: &[String]) -> NewEvent {
        event(
            "flow.binding.removed",
            json!({
                "binding_id": binding.id.as_str(), "stage": binding.spec.stage.as_str(),
                "order": binding.spec.order, "policy_bindings": policy_bindings,
            }),
        )
    }

    /// `policy.added` (payload: every field).
    pub fn policy_added(policy: &NewPolicy) -> NewEvent {
        event("policy.added", policy_payload(&policy.spec))
    }

    /// `policy.changed` (payload: every field after the change).
    pub fn policy_changed(spec: &PolicySpec) -> NewEvent {
        event("policy.changed", policy_payload(spec))
    }

    /// `policy.removed` (payload: name, the ids of the cascaded policy bindings).
    pub fn policy_removed(name: &str, policy_bindings: &[String]) -> NewEvent {
        event("policy.removed", json!({ "name": name, "policy_bindings": policy_bindings }))
    }

    /// `policy.binding.added` (payload: binding id and every field).
    pub fn policy_binding_added(binding: &NewPolicyBinding) -> NewEvent {
        event("policy.binding.added", policy_binding_payload(&binding.id, &binding.spec))
    }

    /// `policy.binding.changed` (payload: binding id and every field after the change).
    pub fn policy_binding_changed(id: &PolicyBindingId, spec: &PolicyBindingSpec) -> NewEvent {
        event("policy.binding.changed", policy_binding_payload(id, spec))
    }

    /// `policy.binding.removed` (payload: binding id, target, order).
    pub fn policy_binding_removed(binding: &PolicyBinding) -> NewEvent {
        event(
            "policy.binding.removed",
            json!({
                "policy_binding_id": binding.id.as_str(), "target": binding.spec.target.as_str(),
                "order": binding.spec.order,
            }),
        )
    }
}
