//! The flow-definition use cases: CRUD of flows, stages, bindings, policies and policy bindings, used_by,
//! export/import, diagrams, policy tests, and the planner with its in-memory plan cache.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use super::diagram::{self, DiagramStage};
use super::model::{
    Authentication, Binding, BindingFilter, BindingId, BindingOrder, BindingSpec, Designation, Flow, FlowFilter,
    FlowId, FlowOrder, FlowSpec, Page, PbmId, Policy, PolicyBinding, PolicyBindingFilter, PolicyBindingId,
    PolicyBindingOrder, PolicyBindingSpec, PolicyFilter, PolicyId, PolicyOrder, PolicySpec, Slug, Stage, StageConfig,
    StageFilter, StageId, StageOrder, StageSpec, StageType,
};
use super::policy::{PolicyConfig, PolicyEvaluator, PolicyInput, PolicyRequest, PolicyResult, PolicyUser};
use super::ports::{
    BINDING_NOT_FOUND, FLOW_NOT_FOUND, FlowRepos, ImportChange, ImportWrite, NewBinding, NewFlow, NewPolicy,
    NewPolicyBinding, NewStage, POLICY_BINDING_NOT_FOUND, POLICY_NOT_FOUND, STAGE_NOT_FOUND, StageRewrite, events,
    not_found,
};
use super::validate::{
    BindingInput, ExpressionPolicyInput, FLOW_INVALID, FlowInput, ListParams, PolicyBindingInput, REQUIRED, StageInput,
    Violations, invalid_pk, list_params, required_text, stage_config,
};
use super::yaml::{self, Document, Entry, RefKind};
use crate::identity::{CallContext, Clock, IdGenerator, OrgId, Permission};
use crate::{Error, ErrorKind, Result};

/// Error id: FailedPrecondition, the flow does not apply to the caller (authentication requirement or
/// flow policies); the metadata `messages` holds the policy messages.
pub const FLOW_NOT_APPLICABLE: &str = "FLOW-not-applicable";

/// Settings of the flow-definition use cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowsConfig {
    /// How long a plan stays cached per (flow, user); default 300 s.
    pub plan_cache_ttl: Duration,
    /// Policy evaluation limits.
    pub policy: PolicyConfig,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self { plan_cache_ttl: Duration::from_secs(300), policy: PolicyConfig::default() }
    }
}

/// A flow with its computed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowView {
    /// The flow.
    pub flow: Flow,
    /// Ids of the bound stages, by binding order.
    pub stages: Vec<StageId>,
    /// Ids of the policies bound to the flow (its pbm id), by binding order.
    pub policies: Vec<PolicyId>,
    /// Cached plans of the flow.
    pub cache_count: u32,
}

/// A stage with the flows binding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageView {
    /// The stage.
    pub stage: Stage,
    /// Flows binding the stage, by slug (`flow_set`).
    pub flow_set: Vec<Flow>,
}

/// A flow-stage binding with its stage (`stage_obj`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingView {
    /// The binding.
    pub binding: Binding,
    /// Its stage.
    pub stage: StageView,
}

/// An expression policy with the number of its bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    /// The policy.
    pub policy: Policy,
    /// How many policy bindings use it.
    pub bound_to: u32,
}

/// A policy binding with its policy (`policy_obj`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyBindingView {
    /// The binding.
    pub binding: PolicyBinding,
    /// Its policy.
    pub policy: Policy,
}

/// What deleting a flow does to an object referencing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedByAction {
    /// The object is deleted with the flow.
    Cascade,
    /// The reference is cleared.
    SetNull,
}

impl UsedByAction {
    /// authentik's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UsedByAction::Cascade => "cascade",
            UsedByAction::SetNull => "set_null",
        }
    }
}

/// An object referencing a flow (authentik's `UsedBy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedBy {
    /// App label, e.g. `authentik_flows`.
    pub app: String,
    /// Model name, e.g. `flowstagebinding`.
    pub model_name: String,
    /// Its id.
    pub pk: String,
    /// Its display name.
    pub name: String,
    /// What a delete of the flow does to it.
    pub action: UsedByAction,
}

/// One line of an import's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportLog {
    /// `created`, `updated`, `unchanged` or `deleted`.
    pub event: String,
    /// `model` and the identifiers of the object.
    pub attributes: BTreeMap<String, String>,
}

/// authentik's import answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportResult {
    /// Whether the import was applied (a file that does not validate is an InvalidArgument error instead).
    pub success: bool,
    /// What happened to each object.
    pub logs: Vec<ImportLog>,
}

/// What a plan is computed for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanInput {
    /// The user the flow runs for, if known.
    pub user: Option<PolicyUser>,
    /// The request.
    pub request: PolicyRequest,
    /// The initial plan context (e.g. `is_redirected`).
    pub context: Map<String, Value>,
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBinding {
    /// The binding.
    pub binding_id: BindingId,
    /// Its pbm id (for re-evaluation).
    pub pbm_id: PbmId,
    /// The stage with its configuration.
    pub stage: Stage,
    /// Whether the binding's policies must be evaluated again just before the stage.
    pub re_evaluate: bool,
    /// What an invalid response does.
    pub invalid_response_action: super::model::InvalidResponseAction,
}

/// The stages a flow will run for a user, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowPlan {
    /// The flow.
    pub flow_id: FlowId,
    /// The stages (empty = nothing to do: the flow is done at once).
    pub bindings: Vec<PlannedBinding>,
}

type CacheKey = (OrgId, FlowId, String);

/// Plans per (org, flow, user), with expiry.
#[derive(Default)]
struct PlanCache {
    entries: RwLock<HashMap<CacheKey, (FlowPlan, DateTime<Utc>)>>,
}

impl PlanCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<CacheKey, (FlowPlan, DateTime<Utc>)>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map itself stays consistent.
        self.entries.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<CacheKey, (FlowPlan, DateTime<Utc>)>> {
        self.entries.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &CacheKey, now: DateTime<Utc>) -> Option<FlowPlan> {
        self.read().get(key).filter(|(_, expires)| *expires > now).map(|(plan, _)| plan.clone())
    }

    fn put(&self, key: CacheKey, plan: FlowPlan, expires: DateTime<Utc>, now: DateTime<Utc>) {
        let mut entries = self.write();
        entries.retain(|_, (_, e)| *e > now);
        entries.insert(key, (plan, expires));
    }

    fn count_flow(&self, org: &OrgId, flow: &FlowId, now: DateTime<Utc>) -> u32 {
        let n = self.read().iter().filter(|((o, f, _), (_, e))| o == org && f == flow && *e > now).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn count_org(&self, org: &OrgId, now: DateTime<Utc>) -> u64 {
        self.read().iter().filter(|((o, _, _), (_, e))| o == org && *e > now).count() as u64
    }

    fn invalidate_flow(&self, org: &OrgId, flow: &FlowId) {
        self.write().retain(|(o, f, _), _| !(o == org && f == flow));
    }

    fn invalidate_org(&self, org: &OrgId) {
        self.write().retain(|(o, _, _), _| o != org);
    }
}

struct Inner {
    config: FlowsConfig,
    repos: FlowRepos,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdGenerator>,
    evaluator: PolicyEvaluator,
    cache: PlanCache,
}

/// The flow-definition use cases; cheap to clone, built once at start-up.
#[derive(Clone)]
pub struct Flows {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

fn read(ctx: &CallContext) -> Result<&OrgId> {
    ctx.require(Permission::FlowRead, &ctx.org_id)?;
    Ok(&ctx.org_id)
}

fn write(ctx: &CallContext) -> Result<&OrgId> {
    ctx.require(Permission::FlowWrite, &ctx.org_id)?;
    Ok(&ctx.org_id)
}

fn bad_field(field: &str, message: impl Into<String>) -> Error {
    Error::invalid_field(FLOW_INVALID, field, message)
}

/// A mask from the wire: empty ⇒ InvalidArgument (a PATCH without fields changes nothing and is refused so
/// that a client bug does not pass silently).
fn require_mask(mask: &[String]) -> Result<()> {
    if mask.is_empty() { Err(bad_field("update_mask", "at least one field must be given")) } else { Ok(()) }
}

impl Flows {
    /// The use cases over `repos`, with ids from `ids` (rendered as hyphenated UUIDs when they are UUIDs).
    pub fn new(config: FlowsConfig, repos: FlowRepos, clock: Arc<dyn Clock>, ids: Arc<dyn IdGenerator>) -> Self {
        let evaluator = PolicyEvaluator::new(config.policy.clone());
        Self { inner: Arc::new(Inner { config, repos, clock, ids, evaluator, cache: PlanCache::default() }) }
    }

    /// The policy evaluator (shared with the flow executor).
    pub fn evaluator(&self) -> &PolicyEvaluator {
        &self.inner.evaluator
    }

    fn new_id(&self) -> String {
        let raw = self.inner.ids.new_id();
        uuid::Uuid::try_parse(&raw).map(|u| u.hyphenated().to_string()).unwrap_or(raw)
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    // ------------------------------------------------------------------------------------ flows

    async fn flow_by_slug(&self, org: &OrgId, slug: &str) -> Result<Flow> {
        let slug = Slug::parse(slug).map_err(|_| not_found(FLOW_NOT_FOUND))?;
        self.inner.repos.flows.get_by_slug(org, &slug).await?.ok_or_else(|| not_found(FLOW_NOT_FOUND))
    }

    async fn flow_views(&self, org: &OrgId, flows: Vec<Flow>) -> Result<Vec<FlowView>> {
        let ids: Vec<FlowId> = flows.iter().map(|f| f.id.clone()).collect();
        let pbms: Vec<PbmId> = flows.iter().map(|f| f.pbm_id.clone()).collect();
        let bindings = self.inner.repos.bindings.of_flows(org, &ids).await?;
        let policy_bindings = self.inner.repos.policy_bindings.of_targets(org, &pbms).await?;
        let now = self.now();
        Ok(flows
            .into_iter()
            .map(|flow| {
                let mut flow_bindings: Vec<&Binding> = bindings.iter().filter(|b| b.spec.target == flow.id).collect();
                flow_bindings.sort_by_key(|b| b.spec.order);
                let stages = flow_bindings.iter().map(|b| b.spec.stage.clone()).collect();
                let policies = policy_bindings
                    .iter()
                    .filter(|p| p.spec.target == flow.pbm_id)
                    .map(|p| p.spec.policy.clone())
                    .collect();
                let cache_count = self.inner.cache.count_flow(org, &flow.id, now);
                FlowView { flow, stages, policies, cache_count }
            })
            .collect())
    }

    async fn flow_view(&self, org: &OrgId, flow: Flow) -> Result<FlowView> {
        let mut views = self.flow_views(org, vec![flow]).await?;
        views.pop().ok_or_else(|| Error::internal("FLOW-view", "flow view missing"))
    }

    /// Creates a flow (`flow.write`).
    pub async fn create_flow(&self, ctx: &CallContext, input: FlowInput) -> Result<FlowView> {
        let org = write(ctx)?;
        let spec = input.into_spec()?;
        let record = NewFlow { id: self.new_id().into(), pbm_id: self.new_id().into(), org_id: org.clone(), spec };
        let flow = self.inner.repos.flows.create(&record, ctx.actor()).await?;
        self.flow_view(org, flow).await
    }

    /// The flow with `slug` (`flow.read`); unknown ⇒ NotFound `Not found.`.
    pub async fn get_flow(&self, ctx: &CallContext, slug: &str) -> Result<FlowView> {
        let org = read(ctx)?;
        let flow = self.flow_by_slug(org, slug).await?;
        self.flow_view(org, flow).await
    }

    /// Flows of the org (`flow.read`); ordering among `slug`, `name`, `title`, `designation`, `pk`.
    pub async fn list_flows(
        &self,
        ctx: &CallContext,
        filter: FlowFilter,
        params: ListParams,
    ) -> Result<Page<FlowView>> {
        let org = read(ctx)?;
        let (page, ordering) = list_params(&params, FlowOrder::NAMES, FlowOrder::Slug)?;
        let found = self.inner.repos.flows.list(org, &filter, ordering, page).await?;
        Ok(Page { items: self.flow_views(org, found.items).await?, total: found.total })
    }

    /// Replaces the flow's fields (PUT: name, slug, title, designation required) (`flow.write`).
    pub async fn update_flow(&self, ctx: &CallContext, slug: &str, input: FlowInput) -> Result<FlowView> {
        let org = write(ctx)?;
        let flow = self.flow_by_slug(org, slug).await?;
        let spec = input.into_spec()?;
        self.store_flow(ctx, org, flow, spec).await
    }

    /// Changes the fields named in `mask` (`flow.write`); changing the slug moves the resource.
    pub async fn patch_flow(
        &self,
        ctx: &CallContext,
        slug: &str,
        input: FlowInput,
        mask: &[String],
    ) -> Result<FlowView> {
        let org = write(ctx)?;
        require_mask(mask)?;
        let flow = self.flow_by_slug(org, slug).await?;
        let mut v = Violations::new();
        let merged = FlowInput::from_spec(&flow.spec).overlay(input, mask, &mut v);
        v.finish(FLOW_INVALID)?;
        let spec = merged.into_spec()?;
        self.store_flow(ctx, org, flow, spec).await
    }

    async fn store_flow(&self, ctx: &CallContext, org: &OrgId, flow: Flow, spec: FlowSpec) -> Result<FlowView> {
        if spec == flow.spec {
            return self.flow_view(org, flow).await;
        }
        let flow = self.inner.repos.flows.update(org, &flow, &spec, ctx.actor()).await?;
        self.inner.cache.invalidate_flow(org, &flow.id);
        self.flow_view(org, flow).await
    }

    /// Deletes the flow with its bindings and their policy bindings, clearing stage links to it
    /// (`flow.write`).
    pub async fn delete_flow(&self, ctx: &CallContext, slug: &str) -> Result<()> {
        let org = write(ctx)?;
        let flow = self.flow_by_slug(org, slug).await?;
        let mut rewrites = Vec::new();
        for stage in self.link_stages(org).await? {
            let mut config = stage.spec.config.clone();
            clear_flow_links(&mut config, &flow.id);
            if config != stage.spec.config {
                rewrites.push(StageRewrite { id: stage.id, spec: StageSpec { name: stage.spec.name, config } });
            }
        }
        self.inner.repos.flows.delete(org, &flow.id, &rewrites, ctx.actor()).await?;
        self.inner.cache.invalidate_org(org);
        Ok(())
    }

    async fn link_stages(&self, org: &OrgId) -> Result<Vec<Stage>> {
        self.inner
            .repos
            .stages
            .of_types(
                org,
                &[
                    StageType::Identification,
                    StageType::Password,
                    StageType::Redirect,
                    StageType::AuthenticatorValidate,
                    StageType::Prompt,
                ],
            )
            .await
    }

    /// Objects referencing the flow (`flow.read`).
    pub async fn used_by(&self, ctx: &CallContext, slug: &str) -> Result<Vec<UsedBy>> {
        let org = read(ctx)?;
        let flow = self.flow_by_slug(org, slug).await?;
        let mut used = Vec::new();
        for stage in self.link_stages(org).await? {
            if stage.spec.config.flow_links().iter().any(|(_, f)| **f == flow.id) {
                let t = stage.spec.config.stage_type();
                let meta = t.meta_model_name();
                let (app, model) = meta.split_once('.').unwrap_or((meta.as_str(), ""));
                used.push(UsedBy {
                    app: app.to_owned(),
                    model_name: model.to_owned(),
                    pk: stage.id.to_string(),
                    name: stage.spec.name.clone(),
                    action: UsedByAction::SetNull,
                });
            }
        }
        for binding in self.inner.repos.bindings.of_flows(org, std::slice::from_ref(&flow.id)).await? {
            used.push(UsedBy {
                app: "authentik_flows".to_owned(),
                model_name: "flowstagebinding".to_owned(),
                pk: binding.id.to_string(),
                name: format!("Flow-stage binding #{} to {}", binding.spec.order, flow.spec.slug),
                action: UsedByAction::Cascade,
            });
        }
        Ok(used)
    }

    // ------------------------------------------------------------------------------------ stages

    async fn stage_in(&self, org: &OrgId, t: Option<StageType>, id: &str) -> Result<Stage> {
        let stage =
            self.inner.repos.stages.get(org, &StageId::from(id)).await?.ok_or_else(|| not_found(STAGE_NOT_FOUND))?;
        // A stage addressed under another type's path does not exist there (authentik's querysets are typed).
        match t {
            Some(t) if t != stage.spec.config.stage_type() => Err(not_found(STAGE_NOT_FOUND)),
            Some(_) | None => Ok(stage),
        }
    }

    async fn stage_views(&self, org: &OrgId, stages: Vec<Stage>) -> Result<Vec<StageView>> {
        let ids: Vec<StageId> = stages.iter().map(|s| s.id.clone()).collect();
        let bindings = self.inner.repos.bindings.of_stages(org, &ids).await?;
        let mut flow_ids: Vec<FlowId> = bindings.iter().map(|b| b.spec.target.clone()).collect();
        flow_ids.sort();
        flow_ids.dedup();
        let flows = self.inner.repos.flows.get_many(org, &flow_ids).await?;
        Ok(stages
            .into_iter()
            .map(|stage| {
                let bound: HashSet<&FlowId> =
                    bindings.iter().filter(|b| b.spec.stage == stage.id).map(|b| &b.spec.target).collect();
                let flow_set = flows.iter().filter(|f| bound.contains(&f.id)).cloned().collect();
                StageView { stage, flow_set }
            })
            .collect())
    }

    async fn stage_view(&self, org: &OrgId, stage: Stage) -> Result<StageView> {
        let mut views = self.stage_views(org, vec![stage]).await?;
        views.pop().ok_or_else(|| Error::internal("FLOW-view", "stage view missing"))
    }

    /// Checks that the references of `config` exist in `org` with the right types.
    async fn check_stage_refs(&self, org: &OrgId, v: &mut Violations, config: &StageConfig) -> Result<()> {
        for (field, flow) in config.flow_links() {
            if self.inner.repos.flows.get(org, flow).await?.is_none() {
                v.add(field, invalid_pk(flow.as_str()));
            }
        }
        match config {
            StageConfig::Identification(c) => {
                if let Some(id) = &c.password_stage {
                    let stage = self.inner.repos.stages.get(org, id).await?;
                    if stage.is_none_or(|s| s.spec.config.stage_type() != StageType::Password) {
                        v.add("password_stage", invalid_pk(id.as_str()));
                    }
                }
            }
            StageConfig::AuthenticatorValidate(c) => {
                let found = self.inner.repos.stages.get_many(org, &c.configuration_stages).await?;
                for id in &c.configuration_stages {
                    if !found.iter().any(|s| &s.id == id) {
                        v.add("configuration_stages", invalid_pk(id.as_str()));
                    }
                }
            }
            StageConfig::Prompt(c) => {
                let found = self.inner.repos.policies.get_many(org, &c.validation_policies).await?;
                for id in &c.validation_policies {
                    if !found.iter().any(|p| &p.id == id) {
                        v.add("validation_policies", invalid_pk(id.as_str()));
                    }
                }
            }
            StageConfig::Password(_)
            | StageConfig::UserLogin(_)
            | StageConfig::UserLogout
            | StageConfig::Deny(_)
            | StageConfig::Dummy(_)
            | StageConfig::Consent(_)
            | StageConfig::Redirect(_)
            | StageConfig::Source(_)
            | StageConfig::UserWrite(_) => {}
        }
        Ok(())
    }

    async fn stage_spec(
        &self,
        org: &OrgId,
        t: StageType,
        base: &StageConfig,
        name: Option<&str>,
        fields: &Map<String, Value>,
    ) -> Result<StageSpec> {
        let mut v = Violations::new();
        let name = required_text(&mut v, "name", name, super::validate::MAX_NAME);
        let config = stage_config(&mut v, t, base, fields);
        if let Some(config) = &config {
            self.check_stage_refs(org, &mut v, config).await?;
        }
        v.finish(FLOW_INVALID)?;
        let config = config.ok_or_else(|| bad_field("non_field_errors", "invalid stage"))?;
        Ok(StageSpec { name, config })
    }

    /// Creates a stage of type `t` (`flow.write`); fields not sent take their defaults.
    pub async fn create_stage(&self, ctx: &CallContext, t: StageType, input: StageInput) -> Result<StageView> {
        let org = write(ctx)?;
        let StageInput { name, config } = input;
        let spec = self.stage_spec(org, t, &StageConfig::default_for(t), name.as_deref(), &config).await?;
        let record = NewStage { id: self.new_id().into(), org_id: org.clone(), spec };
        let stage = self.inner.repos.stages.create(&record, ctx.actor()).await?;
        self.stage_view(org, stage).await
    }

    /// The stage `id`, of type `t` when given (`flow.read`).
    pub async fn get_stage(&self, ctx: &CallContext, t: Option<StageType>, id: &str) -> Result<StageView> {
        let org = read(ctx)?;
        let stage = self.stage_in(org, t, id).await?;
        self.stage_view(org, stage).await
    }

    /// Stages of the org (`flow.read`); ordering among `name`, `pk`.
    pub async fn list_stages(
        &self,
        ctx: &CallContext,
        filter: StageFilter,
        params: ListParams,
    ) -> Result<Page<StageView>> {
        let org = read(ctx)?;
        let (page, ordering) = list_params(&params, StageOrder::NAMES, StageOrder::Name)?;
        let found = self.inner.repos.stages.list(org, &filter, ordering, page).await?;
        Ok(Page { items: self.stage_views(org, found.items).await?, total: found.total })
    }

    /// Replaces name and fields of the stage (PUT: unsent fields take their defaults) (`flow.write`).
    pub async fn update_stage(
        &self,
        ctx: &CallContext,
        t: StageType,
        id: &str,
        input: StageInput,
    ) -> Result<StageView> {
        let org = write(ctx)?;
        let stage = self.stage_in(org, Some(t), id).await?;
        let StageInput { name, config } = input;
        let spec = self.stage_spec(org, t, &StageConfig::default_for(t), name.as_deref(), &config).await?;
        self.store_stage(ctx, org, stage, spec).await
    }

    /// Changes the fields named in `mask` (`name` or a field of the type) (`flow.write`).
    pub async fn patch_stage(
        &self,
        ctx: &CallContext,
        t: StageType,
        id: &str,
        input: StageInput,
        mask: &[String],
    ) -> Result<StageView> {
        let org = write(ctx)?;
        require_mask(mask)?;
        let stage = self.stage_in(org, Some(t), id).await?;
        let known = stage.spec.config.to_json();
        let mut name = Some(stage.spec.name.clone());
        let mut fields = Map::new();
        let mut v = Violations::new();
        for field in mask {
            if field == "name" {
                name = input.name.clone();
            } else if known.get(field).is_some() {
                match input.config.get(field) {
                    Some(value) => {
                        fields.insert(field.clone(), value.clone());
                    }
                    None => v.add(field, REQUIRED),
                }
            } else if !matches!(
                field.as_str(),
                "pk" | "component" | "verbose_name" | "verbose_name_plural" | "meta_model_name" | "flow_set"
            ) {
                v.add("update_mask", format!("unknown field {field}"));
            }
        }
        v.finish(FLOW_INVALID)?;
        let spec = self.stage_spec(org, t, &stage.spec.config, name.as_deref(), &fields).await?;
        self.store_stage(ctx, org, stage, spec).await
    }

    async fn store_stage(&self, ctx: &CallContext, org: &OrgId, stage: Stage, spec: StageSpec) -> Result<StageView> {
        if spec == stage.spec {
            return self.stage_view(org, stage).await;
        }
        let stage = self.inner.repos.stages.update(org, &stage.id, &spec, ctx.actor()).await?;
        self.inner.cache.invalidate_org(org);
        self.stage_view(org, stage).await
    }

    /// Deletes the stage with its bindings, clearing links of other stages to it (`flow.write`).
    pub async fn delete_stage(&self, ctx: &CallContext, t: Option<StageType>, id: &str) -> Result<()> {
        let org = write(ctx)?;
        let stage = self.stage_in(org, t, id).await?;
        let mut rewrites = Vec::new();
        for other in self.link_stages(org).await? {
            if other.id == stage.id {
                continue;
            }
            let mut config = other.spec.config.clone();
            match &mut config {
                StageConfig::Identification(c) if c.password_stage.as_ref() == Some(&stage.id) => {
                    c.password_stage = None;
                }
                StageConfig::AuthenticatorValidate(c) => c.configuration_stages.retain(|s| *s != stage.id),
                StageConfig::Identification(_)
                | StageConfig::Password(_)
                | StageConfig::UserLogin(_)
                | StageConfig::UserLogout
                | StageConfig::Deny(_)
                | StageConfig::Dummy(_)
                | StageConfig::Consent(_)
                | StageConfig::Redirect(_)
                | StageConfig::Source(_)
                | StageConfig::Prompt(_)
                | StageConfig::UserWrite(_) => {}
            }
            if config != other.spec.config {
                rewrites.push(StageRewrite { id: other.id, spec: StageSpec { name: other.spec.name, config } });
            }
        }
        self.inner.repos.stages.delete(org, &stage.id, &rewrites, ctx.actor()).await?;
        self.inner.cache.invalidate_org(org);
        Ok(())
    }

    // ------------------------------------------------------------------------------------ bindings

    async fn binding_views(&self, org: &OrgId, bindings: Vec<Binding>) -> Result<Vec<BindingView>> {
        let mut ids: Vec<StageId> = bindings.iter().map(|b| b.spec.stage.clone()).collect();
        ids.sort();
        ids.dedup();
        let stages = self.inner.repos.stages.get_many(org, &ids).await?;
        let views = self.stage_views(org, stages).await?;
        bindings
            .into_iter()
            .map(|binding| {
                let stage =
                    views.iter().find(|v| v.stage.id == binding.spec.stage).cloned().ok_or_else(|| {
                        Error::internal("FLOW-view", format!("stage of binding {} missing", binding.id))
                    })?;
                Ok(BindingView { binding, stage })
            })
            .collect()
    }

    async fn binding_view(&self, org: &OrgId, binding: Binding) -> Result<BindingView> {
        let mut views = self.binding_views(org, vec![binding]).await?;
        views.pop().ok_or_else(|| Error::internal("FLOW-view", "binding view missing"))
    }

    async fn binding_in(&self, org: &OrgId, id: &str) -> Result<Binding> {
        self.inner.repos.bindings.get(org, &BindingId::from(id)).await?.ok_or_else(|| not_found(BINDING_NOT_FOUND))
    }

    async fn check_binding(&self, org: &OrgId, input: BindingInput) -> Result<BindingSpec> {
        let mut v = Violations::new();
        let spec = input.check(&mut v);
        if let Some(spec) = &spec {
            if self.inner.repos.flows.get(org, &spec.target).await?.is_none() {
                v.add("target", invalid_pk(spec.target.as_str()));
            }
            if self.inner.repos.stages.get(org, &spec.stage).await?.is_none() {
                v.add("stage", invalid_pk(spec.stage.as_str()));
            }
        }
        v.finish(FLOW_INVALID)?;
        spec.ok_or_else(|| bad_field("non_field_errors", "invalid binding"))
    }

    /// Binds a stage to a flow (`flow.write`).
    pub async fn create_binding(&self, ctx: &CallContext, input: BindingInput) -> Result<BindingView> {
        let org = write(ctx)?;
        let spec = self.check_binding(org, input).await?;
        let record = NewBinding { id: self.new_id().into(), pbm_id: self.new_id().into(), org_id: org.clone(), spec };
        let binding = self.inner.repos.bindings.create(&record, ctx.actor()).await?;
        self.inner.cache.invalidate_flow(org, &binding.spec.target);
        self.binding_view(org, binding).await
    }

    /// The binding `id` (`flow.read`).
    pub async fn get_binding(&self, ctx: &CallContext, id: &str) -> Result<BindingView> {
        let org = read(ctx)?;
        let binding = self.binding_in(org, id).await?;
        self.binding_view(org, binding).await
    }

    /// Bindings of the org (`flow.read`); ordering among `target`, `order`, `stage`, `pk`.
    pub async fn list_bindings(
        &self,
        ctx: &CallContext,
        filter: BindingFilter,
        params: ListParams,
    ) -> Result<Page<BindingView>> {
        let org = read(ctx)?;
        let (page, ordering) = list_params(&params, BindingOrder::NAMES, BindingOrder::Target)?;
        let found = self.inner.repos.bindings.list(org, &filter, ordering, page).await?;
        Ok(Page { items: self.binding_views(org, found.items).await?, total: found.total })
    }

    /// Replaces every field of the binding (`flow.write`).
    pub async fn update_binding(&self, ctx: &CallContext, id: &str, input: BindingInput) -> Result<BindingView> {
        let org = write(ctx)?;
        let binding = self.binding_in(org, id).await?;
        let spec = self.check_binding(org, input).await?;
        self.store_binding(ctx, org, binding, spec).await
    }

    /// Changes the fields named in `mask` (`flow.write`).
    pub async fn patch_binding(
        &self,
        ctx: &CallContext,
        id: &str,
        input: BindingInput,
        mask: &[String],
    ) -> Result<BindingView> {
        let org = write(ctx)?;
        require_mask(mask)?;
        let binding = self.binding_in(org, id).await?;
        let mut v = Violations::new();
        let merged = BindingInput::from_spec(&binding.spec).overlay(input, mask, &mut v);
        v.finish(FLOW_INVALID)?;
        let spec = self.check_binding(org, merged).await?;
        self.store_binding(ctx, org, binding, spec).await
    }

    async fn store_binding(
        &self,
        ctx: &CallContext,
        org: &OrgId,
        binding: Binding,
        spec: BindingSpec,
    ) -> Result<BindingView> {
        if spec == binding.spec {
            return self.binding_view(org, binding).await;
        }
        let old_target = binding.spec.target.clone();
        let binding = self.inner.repos.bindings.update(org, &binding.id, &spec, ctx.actor()).await?;
        self.inner.cache.invalidate_flow(org, &old_target);
        self.inner.cache.invalidate_flow(org, &binding.spec.target);
        self.binding_view(org, binding).await
    }

    /// Deletes the binding and its policy bindings (`flow.write`).
    pub async fn delete_binding(&self, ctx: &CallContext, id: &str) -> Result<()> {
        let org = write(ctx)?;
        let binding = self.binding_in(org, id).await?;
        self.inner.repos.bindings.delete(org, &binding.id, ctx.actor()).await?;
        self.inner.cache.invalidate_flow(org, &binding.spec.target);
        Ok(())
    }

    // ------------------------------------------------------------------------------------ policies

    async fn policy_in(&self, org: &OrgId, id: &str) -> Result<Policy> {
        self.inner.repos.policies.get(org, &PolicyId::from(id)).await?.ok_or_else(|| not_found(POLICY_NOT_FOUND))
    }

    async fn policy_views(&self, org: &OrgId, policies: Vec<Policy>) -> Result<Vec<PolicyView>> {
        let ids: Vec<PolicyId> = policies.iter().map(|p| p.id.clone()).collect();
        let bindings = self.inner.repos.policy_bindings.of_policies(org, &ids).await?;
        Ok(policies
            .into_iter()
            .map(|policy| {
                let n = bindings.iter().filter(|b| b.spec.policy == policy.id).count();
                PolicyView { policy, bound_to: u32::try_from(n).unwrap_or(u32::MAX) }
            })
            .collect())
    }

    async fn policy_view(&self, org: &OrgId, policy: Policy) -> Result<PolicyView> {
        let mut views = self.policy_views(org, vec![policy]).await?;
        views.pop().ok_or_else(|| Error::internal("FLOW-view", "policy view missing"))
    }

    fn check_policy(input: ExpressionPolicyInput) -> Result<PolicySpec> {
        let mut v = Violations::new();
        let spec = input.check(&mut v);
        v.finish(FLOW_INVALID)?;
        spec.ok_or_else(|| bad_field("non_field_errors", "invalid policy"))
    }

    /// Creates an expression policy; the expression must compile (`flow.write`).
    pub async fn create_policy(&self, ctx: &CallContext, input: ExpressionPolicyInput) -> Result<PolicyView> {
        let org = write(ctx)?;
        let spec = Self::check_policy(input)?;
        let record = NewPolicy { id: self.new_id().into(), org_id: org.clone(), spec };
        let policy = self.inner.repos.policies.create(&record, ctx.actor()).await?;
        self.policy_view(org, policy).await
    }

    /// The policy `id` (`flow.read`).
    pub async fn get_policy(&self, ctx: &CallContext, id: &str) -> Result<PolicyView> {
        let org = read(ctx)?;
        let policy = self.policy_in(org, id).await?;
        self.policy_view(org, policy).await
    }

    /// Policies of the org (`flow.read`); ordering among `name`, `pk`.
    pub async fn list_policies(
        &self,
        ctx: &CallContext,
        filter: PolicyFilter,
        params: ListParams,
    ) -> Result<Page<PolicyView>> {
        let org = read(ctx)?;
        let (page, ordering) = list_params(&params, PolicyOrder::NAMES, PolicyOrder::Name)?;
        let found = self.inner.repos.policies.list(org, &filter, ordering, page).await?;
        Ok(Page { items: self.policy_views(org, found.items).await?, total: found.total })
    }

    /// Replaces every field of the policy (`flow.write`).
    pub async fn update_policy(&self, ctx: &CallContext, id: &str, input: ExpressionPolicyInput) -> Result<PolicyView> {
        let org = write(ctx)?;
        let policy = self.policy_in(org, id).await?;
        let spec = Self::check_policy(input)?;
        self.store_policy(ctx, org, policy, spec).await
    }

    /// Changes the fields named in `mask` (`flow.write`).
    pub async fn patch_policy(
        &self,
        ctx: &CallContext,
        id: &str,
        input: ExpressionPolicyInput,
        mask: &[String],
    ) -> Result<PolicyView> {
        let org = write(ctx)?;
        require_mask(mask)?;
        let policy = self.policy_in(org, id).await?;
        let mut v = Violations::new();
        let merged = ExpressionPolicyInput::from_spec(&policy.spec).overlay(input, mask, &mut v);
        v.finish(FLOW_INVALID)?;
        let spec = Self::check_policy(merged)?;
        self.store_policy(ctx, org, policy, spec).await
    }

    async fn store_policy(
        &self,
        ctx: &CallContext,
        org: &OrgId,
        policy: Policy,
        spec: PolicySpec,
    ) -> Result<PolicyView> {
        if spec == policy.spec {
            return self.policy_view(org, policy).await;
        }
        let policy = self.inner.repos.policies.update(org, &policy.id, &spec, ctx.actor()).await?;
        self.inner.cache.invalidate_org(org);
        self.policy_view(org, policy).await
    }

    /// Deletes the policy and its bindings, removing it from prompt stages (`flow.write`).
    pub async fn delete_policy(&self, ctx: &CallContext, id: &str) -> Result<()> {
        let org = write(ctx)?;
        let policy = self.policy_in(org, id).await?;
        let mut rewrites = Vec::new();
        for stage in self.inner.repos.stages.of_types(org, &[StageType::Prompt]).await? {
            let mut config = stage.spec.config.clone();
            if let StageConfig::Prompt(c) = &mut config {
                c.validation_policies.retain(|p| *p != policy.id);
            }
            if config != stage.spec.config {
                rewrites.push(StageRewrite { id: stage.id, spec: StageSpec { name: stage.spec.name, config } });
            }
        }
        self.inner.repos.policies.delete(org, &policy.id, &rewrites, ctx.actor()).await?;
        self.inner.cache.invalidate_org(org);
        Ok(())
    }

    /// Evaluates the policy for `user` with `context` (`flow.read`), with the service's maximum timeout.
    pub async fn test_policy(
        &self,
        ctx: &CallContext,
        id: &str,
        user: Option<PolicyUser>,
        context: Map<String, Value>,
    ) -> Result<PolicyResult> {
        let org = read(ctx)?;
        let policy = self.policy_in(org, id).await?;
        let input = PolicyInput { user, request: PolicyRequest::default(), context, flow: None };
        let timeout = self.inner.config.policy.max_timeout;
        Ok(match self.inner.evaluator.evaluate(&policy.spec.expression, &input, timeout).await {
            Ok(passing) => PolicyResult { passing, messages: Vec::new() },
            Err(message) => PolicyResult { passing: false, messages: vec![message] },
        })
    }

    // ------------------------------------------------------------------------------------ policy bindings

    async fn policy_binding_in(&self, org: &OrgId, id: &str) -> Result<PolicyBinding> {
        self.inner
            .repos
            .policy_bindings
            .get(org, &PolicyBindingId::from(id))
            .await?
            .ok_or_else(|| not_found(POLICY_BINDING_NOT_FOUND))
    }

    async fn policy_binding_views(&self, org: &OrgId, bindings: Vec<PolicyBinding>) -> Result<Vec<PolicyBindingView>> {
        let ids: Vec<PolicyId> = bindings.iter().map(|b| b.spec.policy.clone()).collect();
        let policies = self.inner.repos.policies.get_many(org, &ids).await?;
        bindings
            .into_iter()
            .map(|binding| {
                let policy = policies.iter().find(|p| p.id == binding.spec.policy).cloned().ok_or_else(|| {
                    Error::internal("FLOW-view", format!("policy of policy binding {} missing", binding.id))
                })?;
                Ok(PolicyBindingView { binding, policy })
            })
            .collect()
    }

    async fn policy_binding_view(&self, org: &OrgId, binding: PolicyBinding) -> Result<PolicyBindingView> {
        let mut views = self.policy_binding_views(org, vec![binding]).await?;
        views.pop().ok_or_else(|| Error::internal("FLOW-view", "policy binding view missing"))
    }

    /// The flow a pbm id belongs to (itself, or the target of the binding owning it).
    async fn flow_of_pbm(&self, org: &OrgId, pbm: &PbmId) -> Result<Option<FlowId>> {
        if let Some(flow) = self.inner.repos.flows.get_by_pbm(org, pbm).await? {
            return Ok(Some(flow.id));
        }
        Ok(self.inner.repos.bindings.get_by_pbm(org, pbm).await?.map(|b| b.spec.target))
    }

    async fn check_policy_binding(&self, org: &OrgId, input: PolicyBindingInput) -> Result<PolicyBindingSpec> {
        let mut v = Violations::new();
        let spec = input.check(&mut v);
        if let Some(spec) = &spec {
            if self.inner.repos.policies.get(org, &spec.policy).await?.is_none() {
                v.add("policy", invalid_pk(spec.policy.as_str()));
            }
            if self.flow_of_pbm(org, &spec.target).await?.is_none() {
                v.add("target", invalid_pk(spec.target.as_str()));
            }
        }
        v.finish(FLOW_INVALID)?;
        spec.ok_or_else(|| bad_field("non_field_errors", "invalid policy binding"))
    }

    /// Binds a policy to a flow or a flow-stage binding (`flow.write`).
    pub async fn create_policy_binding(
        &self,
        ctx: &CallContext,
        input: PolicyBindingInput,
    ) -> Result<PolicyBindingView> {
        let org = write(ctx)?;
        let spec = self.check_policy_binding(org, input).await?;
        let record = NewPolicyBinding { id: self.new_id().into(), org_id: org.clone(), spec };
        let binding = self.inner.repos.policy_bindings.create(&record, ctx.actor()).await?;
        self.inner.cache.invalidate_org(org);
        self.policy_binding_view(org, binding).await
    }

    /// The policy binding `id` (`flow.read`).
    pub async fn get_policy_binding(&self, ctx: &CallContext, id: &str) -> Result<PolicyBindingView> {
        let org = read(ctx)?;
        let binding = self.policy_binding_in(org, id).await?;
        self.policy_binding_view(org, binding).await
    }

    /// Policy bindings of the org (`flow.read`); ordering among `order`, `target`, `pk`.
    pub async fn list_policy_bindings(
        &self,
        ctx: &CallContext,
        filter: PolicyBindingFilter,
        params: ListParams,
    ) -> Result<Page<PolicyBindingView>> {
        let org = read(ctx)?;
        let (page, ordering) = list_params(&params, PolicyBindingOrder::NAMES, PolicyBindingOrder::Order)?;
        let found = self.inner.repos.policy_bindings.list(org, &filter, ordering, page).await?;
        Ok(Page { items: self.policy_binding_views(org, found.items).await?, total: found.total })
    }

    /// Replaces every field of the policy binding (`flow.write`).
    pub async fn update_policy_binding(
        &self,
        ctx: &CallContext,
        id: &str,
        input: PolicyBindingInput,
    ) -> Result<PolicyBindingView> {
        let org = write(ctx)?;
        let binding = self.policy_binding_in(org, id).await?;
        let spec = self.check_policy_binding(org, input).await?;
        self.store_policy_binding(ctx, org, binding, spec).await
    }

    /// Changes the fields named in `mask` (`flow.write`).
    pub async fn patch_policy_binding(
        &self,
        ctx: &CallContext,
        id: &str,
        input: PolicyBindingInput,
        mask: &[String],
    ) -> Result<PolicyBindingView> {
        let org = write(ctx)?;
        require_mask(mask)?;
        let binding = self.policy_binding_in(org, id).await?;
        let mut v = Violations::new();
        let merged = PolicyBindingInput::from_spec(&binding.spec).overlay(input, mask, &mut v);
        v.finish(FLOW_INVALID)?;
        let spec = self.check_policy_binding(org, merged).await?;
        self.store_policy_binding(ctx, org, binding, spec).await
    }

    async fn store_policy_binding(
        &self,
        ctx: &CallContext,
        org: &OrgId,
        binding: PolicyBinding,
        spec: PolicyBindingSpec,
    ) -> Result<PolicyBindingView> {
        if spec == binding.spec {
            return self.policy_binding_view(org, binding).await;
        }
        let binding = self.inner.repos.policy_bindings.update(org, &binding.id, &spec, ctx.actor()).await?;
        self.inner.cache.invalidate_org(org);
        self.policy_binding_view(org, binding).await
    }

    /// Deletes the policy binding (`flow.write`).
    pub async fn delete_policy_binding(&self, ctx: &CallContext, id: &str) -> Result<()> {
        let org = write(ctx)?;
        let binding = self.policy_binding_in(org, id).await?;
        self.inner.repos.policy_bindings.delete(org, &binding.id, ctx.actor()).await?;
        self.inner.cache.invalidate_org(org);
        Ok(())
    }

    // ------------------------------------------------------------------------------------ cache

    /// Cached plans of the call's org (`flow.read`).
    pub async fn cache_info(&self, ctx: &CallContext) -> Result<u64> {
        let org = read(ctx)?;
        Ok(self.inner.cache.count_org(org, self.now()))
    }

    /// Empties the plan cache of the call's org (`flow.write`).
    pub async fn cache_clear(&self, ctx: &CallContext) -> Result<()> {
        let org = write(ctx)?;
        self.inner.cache.invalidate_org(org);
        Ok(())
    }

    // ------------------------------------------------------------------------------------ planner

    /// The enabled policy bindings of `targets` with their expressions, by target then order.
    async fn gates(&self, org: &OrgId, targets: &[PbmId]) -> Result<Vec<(PbmId, PolicyBindingSpec, String)>> {
        let bindings = self.inner.repos.policy_bindings.of_targets(org, targets).await?;
        let ids: Vec<PolicyId> = bindings.iter().map(|b| b.spec.policy.clone()).collect();
        let policies = self.inner.repos.policies.get_many(org, &ids).await?;
        let mut gates: Vec<(PbmId, PolicyBindingSpec, String)> = bindings
            .into_iter()
            .filter_map(|b| {
                let policy = policies.iter().find(|p| p.id == b.spec.policy)?;
                Some((b.spec.target.clone(), b.spec, policy.spec.expression.clone()))
            })
            .collect();
        gates.sort_by_key(|(t, b, _)| (t.clone(), b.order));
        Ok(gates)
    }

    /// Plans the flow `slug` of `org` for `input`: the authentication requirement and the flow's policies
    /// (its engine mode) on every call, then its bindings by order, dropping `evaluate_on_plan` bindings whose
    /// policies fail. Not applicable ⇒ FailedPrecondition [`FLOW_NOT_APPLICABLE`] (metadata `messages`).
    /// The binding walk is cached per (flow, user) for the configured time, except for
    /// `stage_configuration` flows. The caller (the executor) authorizes the request; this needs no
    /// permission.
    pub async fn plan(&self, org: &OrgId, slug: &str, input: PlanInput) -> Result<FlowPlan> {
        let flow = self.flow_by_slug(org, slug).await?;
        let PlanInput { user, request, context } = input;
        let denied = |messages: Vec<String>| {
            let message = if messages.is_empty() {
                "Flow not applicable to current user/request".to_owned()
            } else {
                format!("Flow not applicable to current user/request: {}", messages.join("; "))
            };
            Error::new(ErrorKind::FailedPrecondition, FLOW_NOT_APPLICABLE, message)
                .with_metadata("messages", messages.join("\n"))
        };
        let authenticated = user.is_some();
        let applicable = match flow.spec.authentication {
            Authentication::None => true,
            Authentication::RequireAuthenticated => authenticated,
            Authentication::RequireUnauthenticated => !authenticated,
            Authentication::RequireSuperuser => user.as_ref().is_some_and(|u| u.is_superuser),
            Authentication::RequireRedirect => context.get("is_redirected").and_then(Value::as_bool) == Some(true),
            // flowgate has no outposts, so no request ever comes from one.
            Authentication::RequireOutpost => false,
        };
        if !applicable {
            return Err(denied(vec![format!("flow requires {}", flow.spec.authentication)]));
        }
        let user_key = user.as_ref().map_or_else(|| "anonymous".to_owned(), |u| format!("user:{}", u.id));
        let policy_input = PolicyInput {
            user,
            request,
            context,
            flow: Some((flow.spec.slug.to_string(), flow.spec.designation.to_string())),
        };
        let flow_gates: Vec<(PolicyBindingSpec, String)> =
            self.gates(org, std::slice::from_ref(&flow.pbm_id)).await?.into_iter().map(|(_, b, e)| (b, e)).collect();
        let result = self.inner.evaluator.evaluate_all(flow.spec.policy_engine_mode, &flow_gates, &policy_input).await;
        if !result.passing {
            return Err(denied(result.messages));
        }
        let key = (org.clone(), flow.id.clone(), user_key);
        let cacheable = flow.spec.designation != Designation::StageConfiguration;
        if cacheable && let Some(plan) = self.inner.cache.get(&key, self.now()) {
            return Ok(plan);
        }
        let plan = self.walk_bindings(org, &flow, &policy_input).await?;
        if cacheable {
            let now = self.now();
            let ttl = TimeDelta::from_std(self.inner.config.plan_cache_ttl).unwrap_or(TimeDelta::zero());
            self.inner.cache.put(key, plan.clone(), now + ttl, now);
        }
        Ok(plan)
    }

    async fn walk_bindings(&self, org: &OrgId, flow: &Flow, policy_input: &PolicyInput) -> Result<FlowPlan> {
        let bindings = self.inner.repos.bindings.of_flows(org, std::slice::from_ref(&flow.id)).await?;
        let stage_ids: Vec<StageId> = bindings.iter().map(|b| b.spec.stage.clone()).collect();
        let stages = self.inner.repos.stages.get_many(org, &stage_ids).await?;
        let on_plan: Vec<PbmId> =
            bindings.iter().filter(|b| b.spec.evaluate_on_plan).map(|b| b.pbm_id.clone()).collect();
        let gates = if on_plan.is_empty() { Vec::new() } else { self.gates(org, &on_plan).await? };
        let mut planned = Vec::new();
        let mut ordered = bindings;
        ordered.sort_by_key(|b| b.spec.order);
        for binding in ordered {
            let Some(stage) = stages.iter().find(|s| s.id == binding.spec.stage) else {
                continue;
            };
            if binding.spec.evaluate_on_plan {
                let own: Vec<(PolicyBindingSpec, String)> = gates
                    .iter()
                    .filter(|(t, _, _)| *t == binding.pbm_id)
                    .map(|(_, b, e)| (b.clone(), e.clone()))
                    .collect();
                let result =
                    self.inner.evaluator.evaluate_all(binding.spec.policy_engine_mode, &own, policy_input).await;
                if !result.passing {
                    continue;
                }
            }
            planned.push(PlannedBinding {
                binding_id: binding.id.clone(),
                pbm_id: binding.pbm_id.clone(),
                stage: stage.clone(),
                re_evaluate: binding.spec.re_evaluate_policies,
                invalid_response_action: binding.spec.invalid_response_action,
            });
        }
        Ok(FlowPlan { flow_id: flow.id.clone(), bindings: planned })
    }

    // ------------------------------------------------------------------------------------ diagram

    /// Mermaid text of the flow (`flow.read`).
    pub async fn diagram(&self, ctx: &CallContext, slug: &str) -> Result<String> {
        let org = read(ctx)?;
        let flow = self.flow_by_slug(org, slug).await?;
        let mut bindings = self.inner.repos.bindings.of_flows(org, std::slice::from_ref(&flow.id)).await?;
        bindings.sort_by_key(|b| b.spec.order);
        let stage_ids: Vec<StageId> = bindings.iter().map(|b| b.spec.stage.clone()).collect();
        let stages = self.inner.repos.stages.get_many(org, &stage_ids).await?;
        let mut targets = vec![flow.pbm_id.clone()];
        targets.extend(bindings.iter().map(|b| b.pbm_id.clone()));
        let pbs = self.inner.repos.policy_bindings.of_targets(org, &targets).await?;
        let ids: Vec<PolicyId> = pbs.iter().map(|p| p.spec.policy.clone()).collect();
        let policies = self.inner.repos.policies.get_many(org, &ids).await?;
        let names_for = |target: &PbmId| -> Vec<String> {
            pbs.iter()
                .filter(|p| &p.spec.target == target && p.spec.enabled)
                .filter_map(|p| policies.iter().find(|x| x.id == p.spec.policy))
                .map(|p| p.spec.name.clone())
                .collect()
        };
        let diagram_stages: Vec<DiagramStage> = bindings
            .iter()
            .filter_map(|b| {
                let stage = stages.iter().find(|s| s.id == b.spec.stage)?;
                Some(DiagramStage {
                    name: stage.spec.name.clone(),
                    component: stage.spec.config.stage_type().component(),
                    order: b.spec.order,
                    policies: names_for(&b.pbm_id),
                    evaluate_on_plan: b.spec.evaluate_on_plan,
                })
            })
            .collect();
        Ok(diagram::render(&flow.spec.name, &names_for(&flow.pbm_id), &diagram_stages))
    }

    // ------------------------------------------------------------------------------------ export

    /// The YAML document of the flow, its bindings, their stages (and stages those link to), and the
    /// policies bound to the flow or its bindings or validating its prompts (`flow.read`).
    pub async fn export_flow(&self, ctx: &CallContext, slug: &str) -> Result<String> {
        let org = read(ctx)?;
        let flow = self.flow_by_slug(org, slug).await?;
        let mut bindings = self.inner.repos.bindings.of_flows(org, std::slice::from_ref(&flow.id)).await?;
        bindings.sort_by_key(|b| (b.spec.order, b.id.clone()));
        // Stages: the bound ones plus every stage they link to, transitively.
        let mut stage_ids: Vec<StageId> = bindings.iter().map(|b| b.spec.stage.clone()).collect();
        let mut stages: Vec<Stage> = Vec::new();
        while !stage_ids.is_empty() {
            let found = self.inner.repos.stages.get_many(org, &stage_ids).await?;
            stage_ids.clear();
            for stage in found {
                if stages.iter().any(|s| s.id == stage.id) {
                    continue;
                }
                for linked in stage_links(&stage.spec.config) {
                    if !stages.iter().any(|s| s.id == linked) && !stage_ids.contains(&linked) {
                        stage_ids.push(linked);
                    }
                }
                stages.push(stage);
            }
        }
        // Linked stages first so an import resolves references to stages it has just written.
        let linked: HashSet<StageId> = stages.iter().flat_map(|s| stage_links(&s.spec.config)).collect();
        stages.sort_by_key(|s| (!linked.contains(&s.id), s.spec.name.clone()));
        let mut targets = vec![flow.pbm_id.clone()];
        targets.extend(bindings.iter().map(|b| b.pbm_id.clone()));
        let pbs = self.inner.repos.policy_bindings.of_targets(org, &targets).await?;
        let mut policy_ids: Vec<PolicyId> = pbs.iter().map(|p| p.spec.policy.clone()).collect();
        for stage in &stages {
            if let StageConfig::Prompt(c) = &stage.spec.config {
                policy_ids.extend(c.validation_policies.iter().cloned());
            }
        }
        let mut policies = self.inner.repos.policies.get_many(org, &policy_ids).await?;
        policies.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        // Flows linked from stages are written by slug; they are not part of the document.
        let mut linked_flows: Vec<FlowId> =
            stages.iter().flat_map(|s| s.spec.config.flow_links().into_iter().map(|(_, f)| f.clone())).collect();
        linked_flows.sort();
        linked_flows.dedup();
        let flows = self.inner.repos.flows.get_many(org, &linked_flows).await?;

        let mut entries = Vec::new();
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
        } = &flow.spec;
        entries.push(entry(
            yaml::MODEL_FLOW,
            json!({ "slug": slug.as_str() }),
            json!({
                "name": name, "title": title, "designation": designation.as_str(), "layout": layout.as_str(),
                "background": background, "compatibility_mode": compatibility_mode,
                "denied_action": denied_action.as_str(), "authentication": authentication.as_str(),
                "policy_engine_mode": policy_engine_mode.as_str(),
            }),
        ));
        for policy in &policies {
            let PolicySpec { name, expression, execution_logging } = &policy.spec;
            entries.push(entry(
                yaml::MODEL_POLICY,
                json!({ "name": name }),
                json!({ "expression": expression, "execution_logging": execution_logging }),
            ));
        }
        for stage in &stages {
            let t = stage.spec.config.stage_type();
            let mut attrs = match stage.spec.config.to_json() {
                Value::Object(map) => map,
                Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Array(_) => Map::new(),
            };
            yaml::translate_refs(t, &mut attrs, |kind, id| match kind {
                RefKind::Stage => stages.iter().find(|s| s.id.as_str() == id).map(|s| s.spec.name.clone()),
                RefKind::Flow if id == flow.id.as_str() => Some(flow.spec.slug.to_string()),
                RefKind::Flow => flows.iter().find(|f| f.id.as_str() == id).map(|f| f.spec.slug.to_string()),
                RefKind::Policy => policies.iter().find(|p| p.id.as_str() == id).map(|p| p.spec.name.clone()),
            })
            .map_err(|e| Error::internal("FLOW-export", e))?;
            let mut with_type = Map::new();
            with_type.insert("type".to_owned(), json!(t.as_str()));
            with_type.extend(attrs);
            entries.push(Entry {
                model: yaml::MODEL_STAGE.to_owned(),
                identifiers: object(json!({ "name": stage.spec.name })),
                attrs: with_type,
            });
        }
        for binding in &bindings {
            let Some(stage) = stages.iter().find(|s| s.id == binding.spec.stage) else { continue };
            let BindingSpec {
                target: _,
                stage: _,
                order,
                evaluate_on_plan,
                re_evaluate_policies,
                policy_engine_mode,
                invalid_response_action,
            } = &binding.spec;
            entries.push(entry(
                yaml::MODEL_BINDING,
                json!({ "target": flow.spec.slug.as_str(), "stage": stage.spec.name, "order": order }),
                json!({
                    "evaluate_on_plan": evaluate_on_plan, "re_evaluate_policies": re_evaluate_policies,
                    "policy_engine_mode": policy_engine_mode.as_str(),
                    "invalid_response_action": invalid_response_action.as_str(),
                }),
            ));
        }
        for pb in &pbs {
            let target = if pb.spec.target == flow.pbm_id {
                flow.spec.slug.to_string()
            } else {
                match bindings.iter().find(|b| b.pbm_id == pb.spec.target) {
                    Some(b) => format!("{}/{}", flow.spec.slug, b.spec.order),
                    None => continue,
                }
            };
            let Some(policy) = policies.iter().find(|p| p.id == pb.spec.policy) else { continue };
            let PolicyBindingSpec { policy: _, target: _, negate, enabled, order, timeout, failure_result } = &pb.spec;
            entries.push(entry(
                yaml::MODEL_POLICY_BINDING,
                json!({ "target": target, "order": order }),
                json!({
                    "policy": policy.spec.name, "negate": negate, "enabled": enabled, "timeout": timeout,
                    "failure_result": failure_result,
                }),
            ));
        }
        let doc =
            Document { version: yaml::VERSION, metadata: yaml::Metadata { name: flow.spec.name.clone() }, entries };
        yaml::render(&doc)
    }

    // ------------------------------------------------------------------------------------ import

    /// Creates or updates the objects of the YAML `file` by their identifiers, in ONE write; objects that
    /// already match are left alone, so importing the same file twice writes nothing the second time.
    /// `clear` also deletes the flow's bindings and policy bindings that the file does not list. A file that
    /// does not parse or validate ⇒ InvalidArgument on `file` naming the entry; nothing is written
    /// (`flow.write`).
    pub async fn import_flow(&self, ctx: &CallContext, file: &str, clear: bool) -> Result<ImportResult> {
        let org = write(ctx)?;
        let doc = yaml::parse(file)?;
        let plan = Importer { flows: self, org, doc: &doc, clear }.plan().await?;
        let ImportPlan { flow_id, changes, logs } = plan;
        if !changes.is_empty() {
            let write =
                ImportWrite { flow_id, imported: events::flow_imported(doc.entries.len(), changes.len()), changes };
            self.inner.repos.flows.import(org, &write, ctx.actor()).await?;
            self.inner.cache.invalidate_org(org);
        }
        Ok(ImportResult { success: true, logs })
    }
}

fn entry(model: &str, identifiers: Value, attrs: Value) -> Entry {
    Entry { model: model.to_owned(), identifiers: object(identifiers), attrs: object(attrs) }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Array(_) => Map::new(),
    }
}

/// Stages a configuration links to.
fn stage_links(config: &StageConfig) -> Vec<StageId> {
    match config {
        StageConfig::Identification(c) => c.password_stage.iter().cloned().collect(),
        StageConfig::AuthenticatorValidate(c) => c.configuration_stages.clone(),
        StageConfig::Password(_)
        | StageConfig::UserLogin(_)
        | StageConfig::UserLogout
        | StageConfig::Deny(_)
        | StageConfig::Dummy(_)
        | StageConfig::Consent(_)
        | StageConfig::Redirect(_)
        | StageConfig::Source(_)
        | StageConfig::Prompt(_)
        | StageConfig::UserWrite(_) => Vec::new(),
    }
}

/// Clears every link of `config` to `flow` (authentik's SET_NULL).
fn clear_flow_links(config: &mut StageConfig, flow: &FlowId) {
    let clear = |slot: &mut Option<FlowId>| {
        if slot.as_ref() == Some(flow) {
            *slot = None;
        }
    };
    match config {
        StageConfig::Identification(c) => {
            clear(&mut c.enrollment_flow);
            clear(&mut c.recovery_flow);
            clear(&mut c.passwordless_flow);
        }
        StageConfig::Password(c) => clear(&mut c.configure_flow),
        StageConfig::Redirect(c) => clear(&mut c.target_flow),
        StageConfig::AuthenticatorValidate(_)
        | StageConfig::UserLogin(_)
        | StageConfig::UserLogout
        | StageConfig::Deny(_)
        | StageConfig::Dummy(_)
        | StageConfig::Consent(_)
        | StageConfig::Source(_)
        | StageConfig::Prompt(_)
        | StageConfig::UserWrite(_) => {}
    }
}

struct ImportPlan {
    flow_id: FlowId,
    changes: Vec<ImportChange>,
    logs: Vec<ImportLog>,
}

struct Importer<'a> {
    flows: &'a Flows,
    org: &'a OrgId,
    doc: &'a Document,
    clear: bool,
}

fn log(event: &str, model: &str, identifiers: &Map<String, Value>) -> ImportLog {
    let mut attributes = BTreeMap::new();
    attributes.insert("model".to_owned(), model.to_owned());
    for (k, v) in identifiers {
        let text = match v {
            Value::String(s) => s.clone(),
            other @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_)) => {
                other.to_string()
            }
        };
        attributes.insert(k.clone(), text);
    }
    ImportLog { event: event.to_owned(), attributes }
}

fn ident_str(i: usize, e: &Entry, key: &str) -> Result<String> {
    match e.identifiers.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(_) => Err(yaml::entry_error(i, &e.model, format!("identifier {key} must be a non-empty string"))),
        None => Err(yaml::entry_error(i, &e.model, format!("identifier {key} is missing"))),
    }
}

fn ident_order(i: usize, e: &Entry) -> Result<i32> {
    e.identifiers
        .get("order")
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .ok_or_else(|| yaml::entry_error(i, &e.model, "identifier order must be an integer"))
}

fn attr_str(e: &Entry, key: &str) -> Option<String> {
    e.attrs.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn attr_bool(i: usize, e: &Entry, key: &str) -> Result<Option<bool>> {
    match e.attrs.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(yaml::entry_error(i, &e.model, format!("{key}: must be a boolean"))),
    }
}

/// The first violation of `err` as an entry error (validation errors name one field each).
fn entry_violation(i: usize, model: &str, err: Error) -> Error {
    match err.violations().first() {
        Some(v) => yaml::entry_error(i, model, format!("{}: {}", v.field, v.description)),
        None => yaml::entry_error(i, model, err.message()),
    }
}

impl Importer<'_> {
    async fn plan(&self) -> Result<ImportPlan> {
        let repos = &self.flows.inner.repos;
        let org = self.org;
        let mut changes = Vec::new();
        let mut logs = Vec::new();
        for (i, e) in self.doc.entries.iter().enumerate() {
            if ![
                yaml::MODEL_FLOW,
                yaml::MODEL_POLICY,
                yaml::MODEL_STAGE,
                yaml::MODEL_BINDING,
                yaml::MODEL_POLICY_BINDING,
            ]
            .contains(&e.model.as_str())
            {
                return Err(yaml::entry_error(i, &e.model, "unknown model"));
            }
        }
        let of = |model: &str| -> Vec<(usize, &Entry)> {
            self.doc.entries.iter().enumerate().filter(|(_, e)| e.model == model).collect()
        };

        // The flow.
        let flow_entries = of(yaml::MODEL_FLOW);
        let [(fi, fe)] = flow_entries.as_slice() else {
            return Err(yaml::invalid(format!("the file must hold exactly one {} entry", yaml::MODEL_FLOW)));
        };
        let (fi, fe) = (*fi, *fe);
        let slug = ident_str(fi, fe, "slug")?;
        let input = FlowInput {
            name: attr_str(fe, "name"),
            slug: Some(slug.clone()),
            title: attr_str(fe, "title"),
            designation: attr_str(fe, "designation"),
            layout: attr_str(fe, "layout"),
            background: Some(attr_str(fe, "background")),
            compatibility_mode: attr_bool(fi, fe, "compatibility_mode")?,
            denied_action: attr_str(fe, "denied_action"),
            authentication: attr_str(fe, "authentication"),
            policy_engine_mode: attr_str(fe, "policy_engine_mode"),
        };
        let flow_spec = input.into_spec().map_err(|e| entry_violation(fi, &fe.model, e))?;
        let existing_flow = repos.flows.get_by_slug(org, &flow_spec.slug).await?;
        let (flow_id, flow_pbm) = match &existing_flow {
            Some(flow) => {
                if flow.spec == flow_spec {
                    logs.push(log("unchanged", &fe.model, &fe.identifiers));
                } else {
                    changes.push(ImportChange::UpdateFlow(flow.id.clone(), flow_spec.clone()));
                    logs.push(log("updated", &fe.model, &fe.identifiers));
                }
                (flow.id.clone(), flow.pbm_id.clone())
            }
            None => {
                let record = NewFlow {
                    id: self.flows.new_id().into(),
                    pbm_id: self.flows.new_id().into(),
                    org_id: org.clone(),
                    spec: flow_spec.clone(),
                };
                let ids = (record.id.clone(), record.pbm_id.clone());
                changes.push(ImportChange::CreateFlow(record));
                logs.push(log("created", &fe.model, &fe.identifiers));
                ids
            }
        };

        // Policies, by name.
        let mut policy_ids: HashMap<String, PolicyId> = HashMap::new();
        for (i, e) in of(yaml::MODEL_POLICY) {
            let name = ident_str(i, e, "name")?;
            let input = ExpressionPolicyInput {
                name: Some(name.clone()),
                expression: attr_str(e, "expression"),
                execution_logging: attr_bool(i, e, "execution_logging")?,
            };
            let spec = Flows::check_policy(input).map_err(|err| entry_violation(i, &e.model, err))?;
            if policy_ids.contains_key(&spec.name) {
                return Err(yaml::entry_error(i, &e.model, format!("policy {name:?} is listed twice")));
            }
            match repos.policies.get_by_name(org, &spec.name).await? {
                Some(p) => {
                    if p.spec == spec {
                        logs.push(log("unchanged", &e.model, &e.identifiers));
                    } else {
                        changes.push(ImportChange::UpdatePolicy(p.id.clone(), spec.clone()));
                        logs.push(log("updated", &e.model, &e.identifiers));
                    }
                    policy_ids.insert(spec.name, p.id);
                }
                None => {
                    let record = NewPolicy { id: self.flows.new_id().into(), org_id: org.clone(), spec };
                    policy_ids.insert(record.spec.name.clone(), record.id.clone());
                    changes.push(ImportChange::CreatePolicy(record));
                    logs.push(log("created", &e.model, &e.identifiers));
                }
            }
        }

        // Stages, by name: ids first so stages may reference each other.
        let stage_entries = of(yaml::MODEL_STAGE);
        let mut stage_ids: HashMap<String, (StageId, StageType, Option<Stage>)> = HashMap::new();
        for (i, e) in &stage_entries {
            let name = ident_str(*i, e, "name")?;
            let type_name = attr_str(e, "type").unwrap_or_default();
            let t = StageType::parse(&type_name).ok_or_else(|| {
                yaml::entry_error(*i, &e.model, format!("type: {}", super::model::invalid_choice(&type_name)))
            })?;
            if stage_ids.contains_key(&name) {
                return Err(yaml::entry_error(*i, &e.model, format!("stage {name:?} is listed twice")));
            }
            let existing = repos.stages.get_by_name(org, &name).await?;
            let id = match &existing {
                Some(s) if s.spec.config.stage_type() != t => {
                    return Err(yaml::entry_error(
                        *i,
                        &e.model,
                        format!("stage {name:?} exists with type {}", s.spec.config.stage_type()),
                    ));
                }
                Some(s) => s.id.clone(),
                None => self.flows.new_id().into(),
            };
            stage_ids.insert(name, (id, t, existing));
        }
        for (i, e) in &stage_entries {
            let name = ident_str(*i, e, "name")?;
            let Some((id, t, existing)) = stage_ids.get(&name).cloned() else { continue };
            let mut attrs = e.attrs.clone();
            attrs.remove("type");
            let mut resolved: HashMap<(u8, String), String> = HashMap::new();
            for (field, kind, list) in yaml::reference_fields(t) {
                let names: Vec<String> = match attrs.get(*field) {
                    Some(Value::String(s)) if !*list => vec![s.clone()],
                    Some(Value::Array(items)) if *list => {
                        items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
                    }
                    Some(_) | None => Vec::new(),
                };
                for n in names {
                    let id = match kind {
                        RefKind::Stage => match stage_ids.get(&n) {
                            Some((id, _, _)) => Some(id.to_string()),
                            None => repos.stages.get_by_name(org, &n).await?.map(|s| s.id.to_string()),
                        },
                        RefKind::Flow if n == slug => Some(flow_id.to_string()),
                        RefKind::Flow => match Slug::parse(&n) {
                            Ok(s) => repos.flows.get_by_slug(org, &s).await?.map(|f| f.id.to_string()),
                            Err(_) => None,
                        },
                        RefKind::Policy => match policy_ids.get(&n) {
                            Some(id) => Some(id.to_string()),
                            None => repos.policies.get_by_name(org, &n).await?.map(|p| p.id.to_string()),
                        },
                    };
                    if let Some(id) = id {
                        resolved.insert((*kind as u8, n), id);
                    }
                }
            }
            yaml::translate_refs(t, &mut attrs, |kind, n| resolved.get(&(kind as u8, n.to_owned())).cloned())
                .map_err(|err| yaml::entry_error(*i, &e.model, err))?;
            let mut v = Violations::new();
            let config = stage_config(&mut v, t, &StageConfig::default_for(t), &attrs);
            if let Err(err) = v.finish(FLOW_INVALID) {
                return Err(entry_violation(*i, &e.model, err));
            }
            let config = config.ok_or_else(|| yaml::entry_error(*i, &e.model, "invalid configuration"))?;
            if let StageConfig::Identification(c) = &config
                && let Some(ps) = &c.password_stage
            {
                let is_password = stage_ids.values().any(|(sid, st, _)| sid == ps && *st == StageType::Password)
                    || repos
                        .stages
                        .get(org, ps)
                        .await?
                        .is_some_and(|s| s.spec.config.stage_type() == StageType::Password);
                if !is_password {
                    return Err(yaml::entry_error(*i, &e.model, "password_stage: must be a password stage"));
                }
            }
            let spec = StageSpec { name: name.clone(), config };
            match existing {
                Some(s) if s.spec == spec => logs.push(log("unchanged", &e.model, &e.identifiers)),
                Some(s) => {
                    changes.push(ImportChange::UpdateStage(s.id, spec));
                    logs.push(log("updated", &e.model, &e.identifiers));
                }
                None => {
                    changes.push(ImportChange::CreateStage(NewStage { id, org_id: org.clone(), spec }));
                    logs.push(log("created", &e.model, &e.identifiers));
                }
            }
        }

        // Flow-stage bindings, by (stage, order) in the flow.
        let existing_bindings = match &existing_flow {
            Some(f) => repos.bindings.of_flows(org, std::slice::from_ref(&f.id)).await?,
            None => Vec::new(),
        };
        let mut kept: Vec<BindingId> = Vec::new();
        let mut binding_pbms: Vec<(i32, PbmId)> = Vec::new();
        for (i, e) in of(yaml::MODEL_BINDING) {
            let target = ident_str(i, e, "target")?;
            if target != slug {
                return Err(yaml::entry_error(i, &e.model, format!("target: must be the flow {slug:?}")));
            }
            let stage_name = ident_str(i, e, "stage")?;
            let order = ident_order(i, e)?;
            let stage_id = match stage_ids.get(&stage_name) {
                Some((id, _, _)) => id.clone(),
                None => match repos.stages.get_by_name(org, &stage_name).await? {
                    Some(s) => s.id,
                    None => {
                        return Err(yaml::entry_error(i, &e.model, format!("stage {stage_name:?} does not exist")));
                    }
                },
            };
            let input = BindingInput {
                target: Some(flow_id.to_string()),
                stage: Some(stage_id.to_string()),
                order: Some(order),
                evaluate_on_plan: attr_bool(i, e, "evaluate_on_plan")?,
                re_evaluate_policies: attr_bool(i, e, "re_evaluate_policies")?,
                policy_engine_mode: attr_str(e, "policy_engine_mode"),
                invalid_response_action: attr_str(e, "invalid_response_action"),
            };
            let mut v = Violations::new();
            let spec = input.check(&mut v);
            if let Err(err) = v.finish(FLOW_INVALID) {
                return Err(entry_violation(i, &e.model, err));
            }
            let spec = spec.ok_or_else(|| yaml::entry_error(i, &e.model, "invalid binding"))?;
            match existing_bindings.iter().find(|b| b.spec.stage == stage_id && b.spec.order == order) {
                Some(b) => {
                    if b.spec == spec {
                        logs.push(log("unchanged", &e.model, &e.identifiers));
                    } else {
                        changes.push(ImportChange::UpdateBinding(b.id.clone(), spec));
                        logs.push(log("updated", &e.model, &e.identifiers));
                    }
                    kept.push(b.id.clone());
                    binding_pbms.push((order, b.pbm_id.clone()));
                }
                None => {
                    let record = NewBinding {
                        id: self.flows.new_id().into(),
                        pbm_id: self.flows.new_id().into(),
                        org_id: org.clone(),
                        spec,
                    };
                    binding_pbms.push((order, record.pbm_id.clone()));
                    changes.push(ImportChange::CreateBinding(record));
                    logs.push(log("created", &e.model, &e.identifiers));
                }
            }
        }
        let removed: Vec<&Binding> =
            if self.clear { existing_bindings.iter().filter(|b| !kept.contains(&b.id)).collect() } else { Vec::new() };

        // Policy bindings, by (target, order).
        let mut targets = vec![flow_pbm.clone()];
        targets.extend(existing_bindings.iter().map(|b| b.pbm_id.clone()));
        let existing_pbs = repos.policy_bindings.of_targets(org, &targets).await?;
        let mut kept_pbs: Vec<PolicyBindingId> = Vec::new();
        let mut pb_changes = Vec::new();
        for (i, e) in of(yaml::MODEL_POLICY_BINDING) {
            let target_text = ident_str(i, e, "target")?;
            let order = ident_order(i, e)?;
            let target = if target_text == slug {
                flow_pbm.clone()
            } else {
                let bound = target_text
                    .strip_prefix(&format!("{slug}/"))
                    .and_then(|o| o.parse::<i32>().ok())
                    .ok_or_else(|| {
                        yaml::entry_error(
                            i,
                            &e.model,
                            format!("target: {target_text:?} is not this flow or one of its bindings"),
                        )
                    })?;
                let matching: Vec<&PbmId> = binding_pbms.iter().filter(|(o, _)| *o == bound).map(|(_, p)| p).collect();
                match matching.as_slice() {
                    [one] => (*one).clone(),
                    [] => return Err(yaml::entry_error(i, &e.model, format!("target: no binding at order {bound}"))),
                    _ => {
                        return Err(yaml::entry_error(
                            i,
                            &e.model,
                            format!("target: several bindings at order {bound}"),
                        ));
                    }
                }
            };
            let policy_name = attr_str(e, "policy").unwrap_or_default();
            let policy = match policy_ids.get(&policy_name) {
                Some(id) => id.clone(),
                None => match repos.policies.get_by_name(org, &policy_name).await? {
                    Some(p) => p.id,
                    None => {
                        return Err(yaml::entry_error(i, &e.model, format!("policy {policy_name:?} does not exist")));
                    }
                },
            };
            let timeout = match e.attrs.get("timeout") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| yaml::entry_error(i, &e.model, "timeout: must be a whole number"))?,
                ),
            };
            let input = PolicyBindingInput {
                policy: Some(policy.to_string()),
                target: Some(target.to_string()),
                negate: attr_bool(i, e, "negate")?,
                enabled: attr_bool(i, e, "enabled")?,
                order: Some(order),
                timeout,
                failure_result: attr_bool(i, e, "failure_result")?,
            };
            let mut v = Violations::new();
            let spec = input.check(&mut v);
            if let Err(err) = v.finish(FLOW_INVALID) {
                return Err(entry_violation(i, &e.model, err));
            }
            let spec = spec.ok_or_else(|| yaml::entry_error(i, &e.model, "invalid policy binding"))?;
            match existing_pbs.iter().find(|p| p.spec.target == target && p.spec.order == order) {
                Some(p) => {
                    if p.spec == spec {
                        logs.push(log("unchanged", &e.model, &e.identifiers));
                    } else {
                        pb_changes.push(ImportChange::UpdatePolicyBinding(p.id.clone(), spec));
                        logs.push(log("updated", &e.model, &e.identifiers));
                    }
                    kept_pbs.push(p.id.clone());
                }
                None => {
                    let record = NewPolicyBinding { id: self.flows.new_id().into(), org_id: org.clone(), spec };
                    pb_changes.push(ImportChange::CreatePolicyBinding(record));
                    logs.push(log("created", &e.model, &e.identifiers));
                }
            }
        }
        if self.clear {
            // Policy bindings of removed bindings go with them; the others not listed are deleted one by one.
            let removed_pbms: Vec<&PbmId> = removed.iter().map(|b| &b.pbm_id).collect();
            for p in
                existing_pbs.iter().filter(|p| !kept_pbs.contains(&p.id) && !removed_pbms.contains(&&p.spec.target))
            {
                changes.push(ImportChange::DeletePolicyBinding(p.id.clone()));
                logs.push(ImportLog {
                    event: "deleted".to_owned(),
                    attributes: BTreeMap::from([
                        ("model".to_owned(), yaml::MODEL_POLICY_BINDING.to_owned()),
                        ("order".to_owned(), p.spec.order.to_string()),
                    ]),
                });
            }
            for b in &removed {
                changes.push(ImportChange::DeleteBinding(b.id.clone()));
                logs.push(ImportLog {
                    event: "deleted".to_owned(),
                    attributes: BTreeMap::from([
                        ("model".to_owned(), yaml::MODEL_BINDING.to_owned()),
                        ("order".to_owned(), b.spec.order.to_string()),
                    ]),
                });
            }
        }
        changes.extend(pb_changes);
        Ok(ImportPlan { flow_id, changes, logs })
    }
}
