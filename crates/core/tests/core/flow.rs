//! Flow-definition use cases against in-memory fakes of the flow repository ports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::event::Details;
use flowgate_core::flow::ports::*;
use flowgate_core::flow::validate::{BLANK, REQUIRED};
use flowgate_core::flow::*;
use flowgate_core::identity::{CallContext, Clock, IdGenerator, OrgId, Principal, Role, UserId};
use flowgate_core::{Error, ErrorKind, Result};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

// ------------------------------------------------------------------------------------------ fakes

#[derive(Default, Clone)]
struct Db {
    flows: Vec<Flow>,
    stages: Vec<Stage>,
    bindings: Vec<Binding>,
    policies: Vec<Policy>,
    pbs: Vec<PolicyBinding>,
    events: Vec<String>,
    sequence: u64,
}

fn page<T: Clone>(items: Vec<T>, p: PageRequest) -> Page<T> {
    let total = items.len() as u64;
    let items = items.into_iter().skip(p.offset as usize).take(p.limit as usize).collect();
    Page { items, total }
}

impl Db {
    fn details(&mut self, org: &OrgId, events: &[&str]) -> Details {
        self.sequence += 1;
        self.events.extend(events.iter().map(|e| (*e).to_owned()));
        let now = Utc::now();
        Details { sequence: self.sequence, creation_date: now, change_date: now, resource_owner: org.to_string() }
    }

    fn create_flow(&mut self, r: &NewFlow) -> Result<Flow> {
        if self.flows.iter().any(|f| f.org_id == r.org_id && f.spec.slug == r.spec.slug) {
            return Err(flow_slug_taken());
        }
        let details = self.details(&r.org_id, &[&events::flow_added(r).event_type]);
        let flow = Flow {
            id: r.id.clone(),
            pbm_id: r.pbm_id.clone(),
            org_id: r.org_id.clone(),
            spec: r.spec.clone(),
            details,
        };
        self.flows.push(flow.clone());
        Ok(flow)
    }

    fn update_flow(&mut self, org: &OrgId, id: &FlowId, spec: &FlowSpec) -> Result<Flow> {
        if self.flows.iter().any(|f| f.org_id == *org && f.spec.slug == spec.slug && f.id != *id) {
            return Err(flow_slug_taken());
        }
        let details = self.details(org, &["flow.changed"]);
        let flow =
            self.flows.iter_mut().find(|f| f.org_id == *org && f.id == *id).ok_or_else(|| not_found(FLOW_NOT_FOUND))?;
        flow.spec = spec.clone();
        flow.details = details;
        Ok(flow.clone())
    }

    fn create_stage(&mut self, r: &NewStage) -> Result<Stage> {
        if self.stages.iter().any(|s| s.org_id == r.org_id && s.spec.name == r.spec.name) {
            return Err(stage_name_taken());
        }
        let details = self.details(&r.org_id, &["stage.added"]);
        let stage = Stage { id: r.id.clone(), org_id: r.org_id.clone(), spec: r.spec.clone(), details };
        self.stages.push(stage.clone());
        Ok(stage)
    }

    fn update_stage(&mut self, org: &OrgId, id: &StageId, spec: &StageSpec) -> Result<Stage> {
        if self.stages.iter().any(|s| s.org_id == *org && s.spec.name == spec.name && s.id != *id) {
            return Err(stage_name_taken());
        }
        let details = self.details(org, &["stage.changed"]);
        let stage = self
            .stages
            .iter_mut()
            .find(|s| s.org_id == *org && s.id == *id)
            .ok_or_else(|| not_found(STAGE_NOT_FOUND))?;
        stage.spec = spec.clone();
        stage.details = details;
        Ok(stage.clone())
    }

    fn create_binding(&mut self, r: &NewBinding) -> Result<Binding> {
        let s = &r.spec;
        if self.bindings.iter().any(|b| b.spec.target == s.target && b.spec.stage == s.stage && b.spec.order == s.order)
        {
            return Err(binding_taken());
        }
        let details = self.details(&r.org_id, &["flow.binding.added"]);
        let binding = Binding {
            id: r.id.clone(),
            pbm_id: r.pbm_id.clone(),
            org_id: r.org_id.clone(),
            spec: r.spec.clone(),
            details,
        };
        self.bindings.push(binding.clone());
        Ok(binding)
    }

    fn update_binding(&mut self, org: &OrgId, id: &BindingId, spec: &BindingSpec) -> Result<Binding> {
        if self.bindings.iter().any(|b| {
            b.id != *id && b.spec.target == spec.target && b.spec.stage == spec.stage && b.spec.order == spec.order
        }) {
            return Err(binding_taken());
        }
        let details = self.details(org, &["flow.binding.changed"]);
        let b = self
            .bindings
            .iter_mut()
            .find(|b| b.org_id == *org && b.id == *id)
            .ok_or_else(|| not_found(BINDING_NOT_FOUND))?;
        b.spec = spec.clone();
        b.details = details;
        Ok(b.clone())
    }

    fn delete_binding(&mut self, org: &OrgId, id: &BindingId) -> Result<Details> {
        let b = self
            .bindings
            .iter()
            .find(|b| b.org_id == *org && b.id == *id)
            .cloned()
            .ok_or_else(|| not_found(BINDING_NOT_FOUND))?;
        self.pbs.retain(|p| p.spec.target != b.pbm_id);
        self.bindings.retain(|x| x.id != b.id);
        Ok(self.details(org, &["flow.binding.removed"]))
    }

    fn create_policy(&mut self, r: &NewPolicy) -> Result<Policy> {
        if self.policies.iter().any(|p| p.org_id == r.org_id && p.spec.name == r.spec.name) {
            return Err(policy_name_taken());
        }
        let details = self.details(&r.org_id, &["policy.added"]);
        let policy = Policy { id: r.id.clone(), org_id: r.org_id.clone(), spec: r.spec.clone(), details };
        self.policies.push(policy.clone());
        Ok(policy)
    }

    fn update_policy(&mut self, org: &OrgId, id: &PolicyId, spec: &PolicySpec) -> Result<Policy> {
        let details = self.details(org, &["policy.changed"]);
        let p = self
            .policies
            .iter_mut()
            .find(|p| p.org_id == *org && p.id == *id)
            .ok_or_else(|| not_found(POLICY_NOT_FOUND))?;
        p.spec = spec.clone();
        p.details = details;
        Ok(p.clone())
    }

    fn create_pb(&mut self, r: &NewPolicyBinding) -> Result<PolicyBinding> {
        if self.pbs.iter().any(|p| p.spec.target == r.spec.target && p.spec.order == r.spec.order) {
            return Err(policy_binding_taken());
        }
        let details = self.details(&r.org_id, &["policy.binding.added"]);
        let pb = PolicyBinding { id: r.id.clone(), org_id: r.org_id.clone(), spec: r.spec.clone(), details };
        self.pbs.push(pb.clone());
        Ok(pb)
    }

    fn update_pb(&mut self, org: &OrgId, id: &PolicyBindingId, spec: &PolicyBindingSpec) -> Result<PolicyBinding> {
        let details = self.details(org, &["policy.binding.changed"]);
        let p = self
            .pbs
            .iter_mut()
            .find(|p| p.org_id == *org && p.id == *id)
            .ok_or_else(|| not_found(POLICY_BINDING_NOT_FOUND))?;
        p.spec = spec.clone();
        p.details = details;
        Ok(p.clone())
    }

    fn delete_pb(&mut self, org: &OrgId, id: &PolicyBindingId) -> Result<Details> {
        if !self.pbs.iter().any(|p| p.org_id == *org && p.id == *id) {
            return Err(not_found(POLICY_BINDING_NOT_FOUND));
        }
        self.pbs.retain(|p| p.id != *id);
        Ok(self.details(org, &["policy.binding.removed"]))
    }

    fn rewrite(&mut self, org: &OrgId, rewrites: &[StageRewrite]) {
        for r in rewrites {
            if let Some(s) = self.stages.iter_mut().find(|s| s.org_id == *org && s.id == r.id) {
                s.spec = r.spec.clone();
                self.events.push("stage.changed".to_owned());
            }
        }
    }
}

#[derive(Default)]
struct Fake {
    db: Mutex<Db>,
}

impl Fake {
    async fn events(&self) -> Vec<String> {
        self.db.lock().await.events.clone()
    }
}

#[async_trait]
impl FlowRepo for Fake {
    async fn create(&self, flow: &NewFlow, _actor: &str) -> Result<Flow> {
        self.db.lock().await.create_flow(flow)
    }
    async fn get(&self, org: &OrgId, id: &FlowId) -> Result<Option<Flow>> {
        Ok(self.db.lock().await.flows.iter().find(|f| f.org_id == *org && f.id == *id).cloned())
    }
    async fn get_by_slug(&self, org: &OrgId, slug: &Slug) -> Result<Option<Flow>> {
        Ok(self.db.lock().await.flows.iter().find(|f| f.org_id == *org && f.spec.slug == *slug).cloned())
    }
    async fn get_by_pbm(&self, org: &OrgId, pbm: &PbmId) -> Result<Option<Flow>> {
        Ok(self.db.lock().await.flows.iter().find(|f| f.org_id == *org && f.pbm_id == *pbm).cloned())
    }
    async fn get_many(&self, org: &OrgId, ids: &[FlowId]) -> Result<Vec<Flow>> {
        let mut found: Vec<Flow> =
            self.db.lock().await.flows.iter().filter(|f| f.org_id == *org && ids.contains(&f.id)).cloned().collect();
        found.sort_by(|a, b| a.spec.slug.cmp(&b.spec.slug));
        Ok(found)
    }
    async fn list(
        &self,
        org: &OrgId,
        filter: &FlowFilter,
        ordering: Ordering<FlowOrder>,
        p: PageRequest,
    ) -> Result<Page<Flow>> {
        let db = self.db.lock().await;
        let mut found: Vec<Flow> = db
            .flows
            .iter()
            .filter(|f| f.org_id == *org)
            .filter(|f| filter.designation.is_none_or(|d| f.spec.designation == d))
            .filter(|f| filter.slug.as_ref().is_none_or(|s| f.spec.slug.as_str() == s))
            .filter(|f| {
                filter.search.as_ref().is_none_or(|q| {
                    [f.spec.name.as_str(), f.spec.slug.as_str(), f.spec.title.as_str(), f.spec.designation.as_str()]
                        .iter()
                        .any(|v| contains_ignore_case(v, q))
                })
            })
            .cloned()
            .collect();
        found.sort_by(|a, b| match ordering.field {
            FlowOrder::Name => a.spec.name.cmp(&b.spec.name),
            FlowOrder::Slug | FlowOrder::Title | FlowOrder::Designation | FlowOrder::Pk => {
                a.spec.slug.cmp(&b.spec.slug)
            }
        });
        if ordering.descending {
            found.reverse();
        }
        Ok(page(found, p))
    }
    async fn update(&self, org: &OrgId, read: &Flow, spec: &FlowSpec, _actor: &str) -> Result<Flow> {
        self.db.lock().await.update_flow(org, &read.id, spec)
    }
    async fn delete(&self, org: &OrgId, id: &FlowId, rewrites: &[StageRewrite], _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        let flow = db
            .flows
            .iter()
            .find(|f| f.org_id == *org && f.id == *id)
            .cloned()
            .ok_or_else(|| not_found(FLOW_NOT_FOUND))?;
        let pbms: Vec<PbmId> = db
            .bindings
            .iter()
            .filter(|b| b.spec.target == flow.id)
            .map(|b| b.pbm_id.clone())
            .chain([flow.pbm_id.clone()])
            .collect();
        db.pbs.retain(|p| !pbms.contains(&p.spec.target));
        db.bindings.retain(|b| b.spec.target != flow.id);
        db.flows.retain(|f| f.id != flow.id);
        db.rewrite(org, rewrites);
        Ok(db.details(org, &["flow.removed"]))
    }
    async fn import(&self, org: &OrgId, write: &ImportWrite, _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        // All or nothing: apply to a copy and keep it only when every change succeeded.
        let mut copy = db.clone();
        for change in &write.changes {
            match change {
                ImportChange::CreateFlow(r) => copy.create_flow(r).map(|_| ())?,
                ImportChange::UpdateFlow(id, spec) => copy.update_flow(org, id, spec).map(|_| ())?,
                ImportChange::CreatePolicy(r) => copy.create_policy(r).map(|_| ())?,
                ImportChange::UpdatePolicy(id, spec) => copy.update_policy(org, id, spec).map(|_| ())?,
                ImportChange::CreateStage(r) => copy.create_stage(r).map(|_| ())?,
                ImportChange::UpdateStage(id, spec) => copy.update_stage(org, id, spec).map(|_| ())?,
                ImportChange::CreateBinding(r) => copy.create_binding(r).map(|_| ())?,
                ImportChange::UpdateBinding(id, spec) => copy.update_binding(org, id, spec).map(|_| ())?,
                ImportChange::DeleteBinding(id) => copy.delete_binding(org, id).map(|_| ())?,
                ImportChange::CreatePolicyBinding(r) => copy.create_pb(r).map(|_| ())?,
                ImportChange::UpdatePolicyBinding(id, spec) => copy.update_pb(org, id, spec).map(|_| ())?,
                ImportChange::DeletePolicyBinding(id) => copy.delete_pb(org, id).map(|_| ())?,
            }
        }
        let details = copy.details(org, &[&write.imported.event_type]);
        *db = copy;
        Ok(details)
    }
}

#[async_trait]
impl StageRepo for Fake {
    async fn create(&self, stage: &NewStage, _actor: &str) -> Result<Stage> {
        self.db.lock().await.create_stage(stage)
    }
    async fn get(&self, org: &OrgId, id: &StageId) -> Result<Option<Stage>> {
        Ok(self.db.lock().await.stages.iter().find(|s| s.org_id == *org && s.id == *id).cloned())
    }
    async fn get_by_name(&self, org: &OrgId, name: &str) -> Result<Option<Stage>> {
        Ok(self.db.lock().await.stages.iter().find(|s| s.org_id == *org && s.spec.name == name).cloned())
    }
    async fn get_many(&self, org: &OrgId, ids: &[StageId]) -> Result<Vec<Stage>> {
        let mut found: Vec<Stage> =
            self.db.lock().await.stages.iter().filter(|s| s.org_id == *org && ids.contains(&s.id)).cloned().collect();
        found.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(found)
    }
    async fn of_types(&self, org: &OrgId, types: &[StageType]) -> Result<Vec<Stage>> {
        Ok(self
            .db
            .lock()
            .await
            .stages
            .iter()
            .filter(|s| s.org_id == *org && types.contains(&s.spec.config.stage_type()))
            .cloned()
            .collect())
    }
    async fn list(
        &self,
        org: &OrgId,
        filter: &StageFilter,
        _o: Ordering<StageOrder>,
        p: PageRequest,
    ) -> Result<Page<Stage>> {
        let db = self.db.lock().await;
        let mut found: Vec<Stage> = db
            .stages
            .iter()
            .filter(|s| s.org_id == *org && filter.stage_type.is_none_or(|t| s.spec.config.stage_type() == t))
            .cloned()
            .collect();
        found.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(page(found, p))
    }
    async fn update(&self, org: &OrgId, id: &StageId, spec: &StageSpec, _actor: &str) -> Result<Stage> {
        self.db.lock().await.update_stage(org, id, spec)
    }
    async fn delete(&self, org: &OrgId, id: &StageId, rewrites: &[StageRewrite], _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        if !db.stages.iter().any(|s| s.org_id == *org && s.id == *id) {
            return Err(not_found(STAGE_NOT_FOUND));
        }
        let pbms: Vec<PbmId> = db.bindings.iter().filter(|b| b.spec.stage == *id).map(|b| b.pbm_id.clone()).collect();
        db.pbs.retain(|p| !pbms.contains(&p.spec.target));
        db.bindings.retain(|b| b.spec.stage != *id);
        db.stages.retain(|s| s.id != *id);
        db.rewrite(org, rewrites);
        Ok(db.details(org, &["stage.removed"]))
    }
}

#[async_trait]
impl BindingRepo for Fake {
    async fn create(&self, binding: &NewBinding, _actor: &str) -> Result<Binding> {
        self.db.lock().await.create_binding(binding)
    }
    async fn get(&self, org: &OrgId, id: &BindingId) -> Result<Option<Binding>> {
        Ok(self.db.lock().await.bindings.iter().find(|b| b.org_id == *org && b.id == *id).cloned())
    }
    async fn get_by_pbm(&self, org: &OrgId, pbm: &PbmId) -> Result<Option<Binding>> {
        Ok(self.db.lock().await.bindings.iter().find(|b| b.org_id == *org && b.pbm_id == *pbm).cloned())
    }
    async fn of_flows(&self, org: &OrgId, flows: &[FlowId]) -> Result<Vec<Binding>> {
        let mut found: Vec<Binding> = self
            .db
            .lock()
            .await
            .bindings
            .iter()
            .filter(|b| b.org_id == *org && flows.contains(&b.spec.target))
            .cloned()
            .collect();
        found.sort_by(|a, b| (&a.spec.target, a.spec.order, &a.id).cmp(&(&b.spec.target, b.spec.order, &b.id)));
        Ok(found)
    }
    async fn of_stages(&self, org: &OrgId, stages: &[StageId]) -> Result<Vec<Binding>> {
        Ok(self
            .db
            .lock()
            .await
            .bindings
            .iter()
            .filter(|b| b.org_id == *org && stages.contains(&b.spec.stage))
            .cloned()
            .collect())
    }
    async fn list(
        &self,
        org: &OrgId,
        filter: &BindingFilter,
        _o: Ordering<BindingOrder>,
        p: PageRequest,
    ) -> Result<Page<Binding>> {
        let db = self.db.lock().await;
        let found: Vec<Binding> = db
            .bindings
            .iter()
            .filter(|b| b.org_id == *org && filter.target.as_ref().is_none_or(|t| b.spec.target == *t))
            .cloned()
            .collect();
        Ok(page(found, p))
    }
    async fn update(&self, org: &OrgId, id: &BindingId, spec: &BindingSpec, _actor: &str) -> Result<Binding> {
        self.db.lock().await.update_binding(org, id, spec)
    }
    async fn delete(&self, org: &OrgId, id: &BindingId, _actor: &str) -> Result<Details> {
        self.db.lock().await.delete_binding(org, id)
    }
}

#[async_trait]
impl PolicyRepo for Fake {
    async fn create(&self, policy: &NewPolicy, _actor: &str) -> Result<Policy> {
        self.db.lock().await.create_policy(policy)
    }
    async fn get(&self, org: &OrgId, id: &PolicyId) -> Result<Option<Policy>> {
        Ok(self.db.lock().await.policies.iter().find(|p| p.org_id == *org && p.id == *id).cloned())
    }
    async fn get_by_name(&self, org: &OrgId, name: &str) -> Result<Option<Policy>> {
        Ok(self.db.lock().await.policies.iter().find(|p| p.org_id == *org && p.spec.name == name).cloned())
    }
    async fn get_many(&self, org: &OrgId, ids: &[PolicyId]) -> Result<Vec<Policy>> {
        Ok(self.db.lock().await.policies.iter().filter(|p| p.org_id == *org && ids.contains(&p.id)).cloned().collect())
    }
    async fn list(
        &self,
        org: &OrgId,
        _f: &PolicyFilter,
        _o: Ordering<PolicyOrder>,
        p: PageRequest,
    ) -> Result<Page<Policy>> {
        let found = self.db.lock().await.policies.iter().filter(|x| x.org_id == *org).cloned().collect();
        Ok(page(found, p))
    }
    async fn update(&self, org: &OrgId, id: &PolicyId, spec: &PolicySpec, _actor: &str) -> Result<Policy> {
        self.db.lock().await.update_policy(org, id, spec)
    }
    async fn delete(&self, org: &OrgId, id: &PolicyId, rewrites: &[StageRewrite], _actor: &str) -> Result<Details> {
        let mut db = self.db.lock().await;
        if !db.policies.iter().any(|p| p.org_id == *org && p.id == *id) {
            return Err(not_found(POLICY_NOT_FOUND));
        }
        db.pbs.retain(|p| p.spec.policy != *id);
        db.policies.retain(|p| p.id != *id);
        db.rewrite(org, rewrites);
        Ok(db.details(org, &["policy.removed"]))
    }
}

#[async_trait]
impl PolicyBindingRepo for Fake {
    async fn create(&self, binding: &NewPolicyBinding, _actor: &str) -> Result<PolicyBinding> {
        self.db.lock().await.create_pb(binding)
    }
    async fn get(&self, org: &OrgId, id: &PolicyBindingId) -> Result<Option<PolicyBinding>> {
        Ok(self.db.lock().await.pbs.iter().find(|p| p.org_id == *org && p.id == *id).cloned())
    }
    async fn of_targets(&self, org: &OrgId, targets: &[PbmId]) -> Result<Vec<PolicyBinding>> {
        let mut found: Vec<PolicyBinding> = self
            .db
            .lock()
            .await
            .pbs
            .iter()
            .filter(|p| p.org_id == *org && targets.contains(&p.spec.target))
            .cloned()
            .collect();
        found.sort_by(|a, b| (&a.spec.target, a.spec.order).cmp(&(&b.spec.target, b.spec.order)));
        Ok(found)
    }
    async fn of_policies(&self, org: &OrgId, policies: &[PolicyId]) -> Result<Vec<PolicyBinding>> {
        Ok(self
            .db
            .lock()
            .await
            .pbs
            .iter()
            .filter(|p| p.org_id == *org && policies.contains(&p.spec.policy))
            .cloned()
            .collect())
    }
    async fn list(
        &self,
        org: &OrgId,
        _f: &PolicyBindingFilter,
        _o: Ordering<PolicyBindingOrder>,
        p: PageRequest,
    ) -> Result<Page<PolicyBinding>> {
        let found = self.db.lock().await.pbs.iter().filter(|x| x.org_id == *org).cloned().collect();
        Ok(page(found, p))
    }
    async fn update(
        &self,
        org: &OrgId,
        id: &PolicyBindingId,
        spec: &PolicyBindingSpec,
        _actor: &str,
    ) -> Result<PolicyBinding> {
        self.db.lock().await.update_pb(org, id, spec)
    }
    async fn delete(&self, org: &OrgId, id: &PolicyBindingId, _actor: &str) -> Result<Details> {
        self.db.lock().await.delete_pb(org, id)
    }
}

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }
}

#[derive(Default)]
struct CountingIds(AtomicU64);

impl IdGenerator for CountingIds {
    fn new_id(&self) -> String {
        let n = self.0.fetch_add(1, AtomicOrdering::Relaxed) + 1;
        format!("00000000-0000-4000-8000-{n:012}")
    }
}

struct World {
    flows: Flows,
    fake: Arc<Fake>,
}

fn world() -> World {
    let fake = Arc::new(Fake::default());
    let repos = FlowRepos {
        flows: fake.clone(),
        stages: fake.clone(),
        bindings: fake.clone(),
        policies: fake.clone(),
        policy_bindings: fake.clone(),
    };
    let config = FlowsConfig {
        plan_cache_ttl: Duration::from_secs(300),
        policy: PolicyConfig { max_timeout: Duration::from_millis(500), max_concurrent: 2 },
    };
    World { flows: Flows::new(config, repos, Arc::new(FixedClock), Arc::new(CountingIds::default())), fake }
}

fn owner(org: &str) -> CallContext {
    let org = OrgId::from(org);
    CallContext {
        principal: Principal {
            user_id: UserId::from("admin"),
            org_id: org.clone(),
            instance_roles: vec![],
            org_roles: vec![(org.clone(), vec![Role::OrgOwner])],
        },
        org_id: org,
    }
}

fn flow_input(slug: &str) -> FlowInput {
    FlowInput {
        name: Some(format!("Flow {slug}")),
        slug: Some(slug.to_owned()),
        title: Some("Welcome".to_owned()),
        designation: Some("authentication".to_owned()),
        ..FlowInput::default()
    }
}

fn violation(err: &Error) -> (ErrorKind, String, String) {
    let v = err.violations().first().map(|v| (v.field.clone(), v.description.clone())).unwrap_or_default();
    (err.kind(), v.0, v.1)
}

fn stage_input(name: &str, config: Value) -> StageInput {
    let Value::Object(config) = config else { panic!("stage fields must be a JSON object") };
    StageInput { name: Some(name.to_owned()), config }
}

fn binding_input(target: &FlowId, stage: &StageId, order: i32) -> BindingInput {
    BindingInput {
        target: Some(target.to_string()),
        stage: Some(stage.to_string()),
        order: Some(order),
        ..BindingInput::default()
    }
}

async fn policy(w: &World, ctx: &CallContext, name: &str, expression: &str) -> PolicyId {
    let input = ExpressionPolicyInput {
        name: Some(name.to_owned()),
        expression: Some(expression.to_owned()),
        execution_logging: None,
    };
    w.flows.create_policy(ctx, input).await.unwrap().policy.id
}

async fn bind_policy(w: &World, ctx: &CallContext, policy: &PolicyId, target: &PbmId, order: i32, negate: bool) {
    let input = PolicyBindingInput {
        policy: Some(policy.to_string()),
        target: Some(target.to_string()),
        order: Some(order),
        negate: Some(negate),
        ..PolicyBindingInput::default()
    };
    w.flows.create_policy_binding(ctx, input).await.unwrap();
}

// ------------------------------------------------------------------------------------------ validation

#[tokio::test]
async fn flow_validation_speaks_drf() {
    let w = world();
    let ctx = owner("org1");
    let err = w.flows.create_flow(&ctx, flow_input(&"x".repeat(51))).await.unwrap_err();
    assert_eq!(
        violation(&err),
        (ErrorKind::InvalidArgument, "slug".into(), "Ensure this field has no more than 50 characters.".into())
    );
    for bad in ["a/b", "a b"] {
        let err = w.flows.create_flow(&ctx, flow_input(bad)).await.unwrap_err();
        assert_eq!(violation(&err), (ErrorKind::InvalidArgument, "slug".into(), SLUG_MESSAGE.into()), "{bad}");
    }
    let err = w.flows.create_flow(&ctx, FlowInput { name: Some("   ".into()), ..flow_input("ok") }).await.unwrap_err();
    assert_eq!(violation(&err), (ErrorKind::InvalidArgument, "name".into(), BLANK.into()));
    let err = w.flows.create_flow(&ctx, FlowInput { title: None, ..flow_input("ok") }).await.unwrap_err();
    assert_eq!(violation(&err), (ErrorKind::InvalidArgument, "title".into(), REQUIRED.into()));
    let err = w
        .flows
        .create_flow(&ctx, FlowInput { designation: Some("login".into()), ..flow_input("ok") })
        .await
        .unwrap_err();
    assert_eq!(
        violation(&err),
        (ErrorKind::InvalidArgument, "designation".into(), "\"login\" is not a valid choice.".into())
    );
    let err = w
        .flows
        .create_flow(&ctx, FlowInput { policy_engine_mode: Some("most".into()), ..flow_input("ok") })
        .await
        .unwrap_err();
    assert_eq!(violation(&err).1, "policy_engine_mode");

    let created = w.flows.create_flow(&ctx, flow_input("login")).await.unwrap();
    assert_ne!(created.flow.id.as_str(), created.flow.pbm_id.as_str());
    assert_eq!(created.flow.export_url(), "/api/v3/flows/instances/login/export/");
    assert_eq!(created.flow.background_url(), DEFAULT_BACKGROUND);
    let err = w.flows.create_flow(&ctx, flow_input("login")).await.unwrap_err();
    assert_eq!(
        violation(&err),
        (ErrorKind::InvalidArgument, "slug".into(), "Flow with this slug already exists.".into())
    );
    // The same slug in another org is another flow.
    w.flows.create_flow(&owner("org2"), flow_input("login")).await.unwrap();
}

#[tokio::test]
async fn permissions_and_org_isolation() {
    let w = world();
    let ctx = owner("org1");
    w.flows.create_flow(&ctx, flow_input("login")).await.unwrap();
    let other = owner("org2");
    assert_eq!(w.flows.get_flow(&other, "login").await.unwrap_err().kind(), ErrorKind::NotFound);
    let mut nobody = owner("org1");
    nobody.principal.org_roles.clear();
    assert_eq!(w.flows.get_flow(&nobody, "login").await.unwrap_err().kind(), ErrorKind::PermissionDenied);
    let mut reader = owner("org1");
    reader.principal.org_roles.clear();
    reader.principal.instance_roles = vec![Role::IamLoginClient];
    assert!(w.flows.get_flow(&reader, "login").await.is_ok());
    let err = w.flows.delete_flow(&reader, "login").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert_eq!(w.flows.get_flow(&ctx, "missing").await.unwrap_err().message(), "Not found.");
}

#[tokio::test]
async fn bindings_check_references_and_uniqueness() {
    let w = world();
    let ctx = owner("org1");
    let flow = w.flows.create_flow(&ctx, flow_input("login")).await.unwrap().flow;
    let stage = w.flows.create_stage(&ctx, StageType::Dummy, stage_input("dummy", json!({}))).await.unwrap().stage;
    let foreign =
        w.flows.create_stage(&owner("org2"), StageType::Dummy, stage_input("dummy", json!({}))).await.unwrap().stage;

    let err = w.flows.create_binding(&ctx, binding_input(&flow.id, &foreign.id, 10)).await.unwrap_err();
    assert_eq!(
        violation(&err),
        (ErrorKind::InvalidArgument, "stage".into(), format!("Invalid pk \"{}\" - object does not exist.", foreign.id))
    );
    let view = w.flows.create_binding(&ctx, binding_input(&flow.id, &stage.id, 10)).await.unwrap();
    assert!(view.binding.spec.re_evaluate_policies);
    assert!(!view.binding.spec.evaluate_on_plan);
    assert_eq!(view.stage.flow_set.len(), 1);
    let err = w.flows.create_binding(&ctx, binding_input(&flow.id, &stage.id, 10)).await.unwrap_err();
    assert_eq!(
        violation(&err),
        (
            ErrorKind::InvalidArgument,
            "non_field_errors".into(),
            "The fields target, stage, order must make a unique set.".into()
        )
    );
    let got = w.flows.get_flow(&ctx, "login").await.unwrap();
    assert_eq!(got.stages, vec![stage.id.clone()]);

    let err = w
        .flows
        .create_stage(&ctx, StageType::Identification, stage_input("id", json!({"password_stage": stage.id.as_str()})))
        .await
        .unwrap_err();
    assert_eq!(violation(&err).1, "password_stage");
    let err = w
        .flows
        .create_stage(&ctx, StageType::Consent, stage_input("consent", json!({"mode": "sometimes"})))
        .await
        .unwrap_err();
    assert_eq!(
        violation(&err),
        (ErrorKind::InvalidArgument, "mode".into(), "\"sometimes\" is not a valid choice.".into())
    );
    let err = w
        .flows
        .create_stage(&ctx, StageType::UserLogin, stage_input("login", json!({"session_duration": "fortnights=2"})))
        .await
        .unwrap_err();
    assert_eq!(violation(&err).1, "session_duration");
    // A stage is not found under another type's path.
    let err = w.flows.get_stage(&ctx, Some(StageType::Password), stage.id.as_str()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

// ------------------------------------------------------------------------------------------ patch

#[tokio::test]
async fn patch_changes_only_masked_fields_and_moves_on_slug_change() {
    let w = world();
    let ctx = owner("org1");
    let created = w
        .flows
        .create_flow(&ctx, FlowInput { layout: Some("sidebar_left".into()), ..flow_input("login") })
        .await
        .unwrap();
    let patch = FlowInput { title: Some("Hello".into()), name: Some("ignored".into()), ..FlowInput::default() };
    let patched = w.flows.patch_flow(&ctx, "login", patch, &["title".to_owned()]).await.unwrap();
    assert_eq!(patched.flow.spec.title, "Hello");
    assert_eq!(patched.flow.spec.name, created.flow.spec.name);
    assert_eq!(patched.flow.spec.layout, Layout::SidebarLeft);

    let err = w.flows.patch_flow(&ctx, "login", FlowInput::default(), &["bogus".to_owned()]).await.unwrap_err();
    assert_eq!(violation(&err).1, "update_mask");
    let err = w.flows.patch_flow(&ctx, "login", FlowInput::default(), &["name".to_owned()]).await.unwrap_err();
    assert_eq!(violation(&err), (ErrorKind::InvalidArgument, "name".into(), REQUIRED.into()));

    let moved = FlowInput { slug: Some("sign-in".into()), ..FlowInput::default() };
    w.flows.patch_flow(&ctx, "login", moved, &["slug".to_owned()]).await.unwrap();
    assert_eq!(w.flows.get_flow(&ctx, "login").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(w.flows.get_flow(&ctx, "sign-in").await.unwrap().flow.id, created.flow.id);

    // Update (PUT) needs every required field and resets the others to their defaults.
    let err =
        w.flows.update_flow(&ctx, "sign-in", FlowInput { title: None, ..flow_input("sign-in") }).await.unwrap_err();
    assert_eq!(violation(&err).1, "title");
    let put = w.flows.update_flow(&ctx, "sign-in", flow_input("sign-in")).await.unwrap();
    assert_eq!(put.flow.spec.layout, Layout::Stacked);

    // A patch that changes nothing writes nothing.
    let before = w.fake.events().await.len();
    let same = FlowInput { title: Some("Welcome".into()), ..FlowInput::default() };
    w.flows.patch_flow(&ctx, "sign-in", same, &["title".to_owned()]).await.unwrap();
    assert_eq!(w.fake.events().await.len(), before);

    let stage = w.flows.create_stage(&ctx, StageType::Password, stage_input("pw", json!({}))).await.unwrap().stage;
    let patch = stage_input("", json!({"failed_attempts_before_cancel": 3}));
    let view = w
        .flows
        .patch_stage(&ctx, StageType::Password, stage.id.as_str(), patch, &["failed_attempts_before_cancel".to_owned()])
        .await
        .unwrap();
    let StageConfig::Password(c) = &view.stage.spec.config else { panic!("not a password stage") };
    assert_eq!(c.failed_attempts_before_cancel, 3);
    assert_eq!(c.backends, vec![CORE_PASSWORD_BACKEND.to_owned()]);
    assert_eq!(view.stage.spec.name, "pw");
}

// ------------------------------------------------------------------------------------------ export / import

/// A flow with two stages (identification linking a password stage), two bindings, and policies on the
/// flow and on a binding.
async fn sample(w: &World, ctx: &CallContext) -> FlowView {
    let flow = w.flows.create_flow(ctx, flow_input("login")).await.unwrap().flow;
    let password =
        w.flows.create_stage(ctx, StageType::Password, stage_input("login-password", json!({}))).await.unwrap().stage;
    let ident = w
        .flows
        .create_stage(
            ctx,
            StageType::Identification,
            stage_input(
                "login-identification",
                json!({"user_fields": ["email"], "password_stage": password.id.as_str(), "recovery_flow": flow.id.as_str()}),
            ),
        )
        .await
        .unwrap()
        .stage;
    w.flows.create_binding(ctx, binding_input(&flow.id, &ident.id, 10)).await.unwrap();
    let second = w.flows.create_binding(ctx, binding_input(&flow.id, &password.id, 20)).await.unwrap().binding;
    let anyone = policy(w, ctx, "anyone", "true").await;
    let has_user = policy(w, ctx, "has-user", "user != null").await;
    bind_policy(w, ctx, &anyone, &flow.pbm_id, 0, false).await;
    bind_policy(w, ctx, &has_user, &second.pbm_id, 0, true).await;
    w.flows.get_flow(ctx, "login").await.unwrap()
}

#[tokio::test]
async fn export_delete_import_round_trip_and_idempotent_reimport() {
    let w = world();
    let ctx = owner("org1");
    let original = sample(&w, &ctx).await;
    assert_eq!(original.stages.len(), 2);
    assert_eq!(original.policies.len(), 1);
    let exported = w.flows.export_flow(&ctx, "login").await.unwrap();
    assert!(exported.contains("model: flowgate.flowstagebinding"), "{exported}");
    assert!(exported.contains("target: login/20"), "{exported}");
    assert!(!exported.contains(original.flow.id.as_str()), "ids must not leak into exports");

    // The used_by answer names the stage link and the bindings.
    let used = w.flows.used_by(&ctx, "login").await.unwrap();
    assert_eq!(used.iter().filter(|u| u.action == UsedByAction::Cascade).count(), 2);
    let link = used.iter().find(|u| u.action == UsedByAction::SetNull).unwrap();
    assert_eq!(
        (link.app.as_str(), link.model_name.as_str()),
        ("authentik_stages_identification", "identificationstage")
    );

    w.flows.delete_flow(&ctx, "login").await.unwrap();
    for stage in w.flows.list_stages(&ctx, StageFilter::default(), ListParams::default()).await.unwrap().items {
        w.flows.delete_stage(&ctx, None, stage.stage.id.as_str()).await.unwrap();
    }
    for p in w.flows.list_policies(&ctx, PolicyFilter::default(), ListParams::default()).await.unwrap().items {
        w.flows.delete_policy(&ctx, p.policy.id.as_str()).await.unwrap();
    }
    assert_eq!(w.flows.get_flow(&ctx, "login").await.unwrap_err().kind(), ErrorKind::NotFound);

    let result = w.flows.import_flow(&ctx, &exported, false).await.unwrap();
    assert!(result.success);
    assert!(result.logs.iter().all(|l| l.event == "created"), "{:?}", result.logs);
    let imported = w.flows.get_flow(&ctx, "login").await.unwrap();
    assert_ne!(imported.flow.id, original.flow.id);
    assert_eq!(imported.flow.spec, original.flow.spec);
    assert_eq!(imported.stages.len(), 2);
    assert_eq!(w.flows.export_flow(&ctx, "login").await.unwrap(), exported);
    assert_eq!(w.fake.events().await.last().map(String::as_str), Some("flow.imported"));

    let events = w.fake.events().await.len();
    let again = w.flows.import_flow(&ctx, &exported, false).await.unwrap();
    assert!(again.logs.iter().all(|l| l.event == "unchanged"), "{:?}", again.logs);
    assert_eq!(w.fake.events().await.len(), events, "a second import must write nothing");

    // The same file imports into another org.
    let other = owner("org2");
    w.flows.import_flow(&other, &exported, false).await.unwrap();
    assert_eq!(w.flows.export_flow(&other, "login").await.unwrap(), exported);
}

#[tokio::test]
async fn malformed_imports_name_the_entry_and_write_nothing() {
    let w = world();
    let ctx = owner("org1");
    let err = w.flows.import_flow(&ctx, "version: [", false).await.unwrap_err();
    assert_eq!(violation(&err).1, "file");
    let file = "version: 1\nentries:\n  - model: flowgate.flow\n    identifiers: {slug: a}\n    attrs: {name: A, title: A, designation: authentication}\n  - model: flowgate.stage\n    identifiers: {name: s}\n    attrs: {type: consent, mode: sometimes}\n";
    let err = w.flows.import_flow(&ctx, file, false).await.unwrap_err();
    let (kind, field, message) = violation(&err);
    assert_eq!((kind, field.as_str()), (ErrorKind::InvalidArgument, "file"));
    assert!(
        message.contains("entry 1 (flowgate.stage)") && message.contains("\"sometimes\" is not a valid choice."),
        "{message}"
    );
    assert!(w.fake.events().await.is_empty());
    assert_eq!(w.flows.get_flow(&ctx, "a").await.unwrap_err().kind(), ErrorKind::NotFound);
}

// ------------------------------------------------------------------------------------------ diagram

#[tokio::test]
async fn diagram_lists_bindings_in_order_with_policies() {
    let w = world();
    let ctx = owner("org1");
    sample(&w, &ctx).await;
    w.flows
        .patch_flow(
            &ctx,
            "login",
            FlowInput { name: Some("Log \"in\" [now]".into()), ..FlowInput::default() },
            &["name".to_owned()],
        )
        .await
        .unwrap();
    let text = w.flows.diagram(&ctx, "login").await.unwrap();
    let expected = "graph TD
    flow_start[[\"Flow: Log #quot;in#quot; #91;now#93;\"]]
    stage_0[\"login-identification (ak-stage-identification), order 10\"]
    flow_start -->|\"policies: anyone\"| stage_0
    stage_1[\"login-password (ak-stage-password), order 20\"]
    stage_0 --> stage_1
    stage_1_policy{{\"policies (before the stage): has-user\"}}
    stage_1_policy -.->|\"gates\"| stage_1
    done((\"End\"))
    stage_1 --> done
";
    assert_eq!(text, expected);
}

// ------------------------------------------------------------------------------------------ planner

fn alice(superuser: bool) -> PolicyUser {
    PolicyUser {
        id: "u1".into(),
        username: "alice".into(),
        email: "alice@example.com".into(),
        org_id: "org1".into(),
        state: "active".into(),
        is_superuser: superuser,
    }
}

#[tokio::test]
async fn planner_applies_policies_engine_modes_and_cache() {
    let w = world();
    let ctx = owner("org1");
    let org = ctx.org_id.clone();
    let flow = w.flows.create_flow(&ctx, flow_input("login")).await.unwrap().flow;
    let mut stage_ids = Vec::new();
    for name in ["a", "b", "c"] {
        stage_ids
            .push(w.flows.create_stage(&ctx, StageType::Dummy, stage_input(name, json!({}))).await.unwrap().stage.id);
    }
    let plain = w.flows.create_binding(&ctx, binding_input(&flow.id, &stage_ids[0], 10)).await.unwrap().binding;
    let dropped = BindingInput {
        evaluate_on_plan: Some(true),
        re_evaluate_policies: Some(false),
        ..binding_input(&flow.id, &stage_ids[1], 20)
    };
    let dropped = w.flows.create_binding(&ctx, dropped).await.unwrap().binding;
    let negated = BindingInput { evaluate_on_plan: Some(true), ..binding_input(&flow.id, &stage_ids[2], 30) };
    let negated = w.flows.create_binding(&ctx, negated).await.unwrap().binding;
    let is_bob = policy(&w, &ctx, "is-bob", "user != null && user.username == 'bob'").await;
    bind_policy(&w, &ctx, &is_bob, &dropped.pbm_id, 0, false).await;
    bind_policy(&w, &ctx, &is_bob, &negated.pbm_id, 0, true).await;

    let input = PlanInput { user: Some(alice(false)), ..PlanInput::default() };
    let plan = w.flows.plan(&org, "login", input.clone()).await.unwrap();
    let planned: Vec<(&BindingId, bool)> = plan.bindings.iter().map(|b| (&b.binding_id, b.re_evaluate)).collect();
    assert_eq!(planned, vec![(&plain.id, true), (&negated.id, true)]);
    assert_eq!(w.flows.get_flow(&ctx, "login").await.unwrap().cache_count, 1);
    assert_eq!(w.flows.cache_info(&ctx).await.unwrap(), 1);

    // Flow policies: one passing and one failing binding; `any` applies, `all` does not.
    let yes = policy(&w, &ctx, "yes", "flow.slug == 'login' && request.ip == '10.0.0.1'").await;
    let no = policy(&w, &ctx, "no", "context.size > 100").await;
    bind_policy(&w, &ctx, &yes, &flow.pbm_id, 0, false).await;
    bind_policy(&w, &ctx, &no, &flow.pbm_id, 1, false).await;
    assert_eq!(w.flows.cache_info(&ctx).await.unwrap(), 0, "policy binding changes empty the cache");
    let mut request_input = input.clone();
    request_input.request.ip = "10.0.0.1".into();
    request_input.context.insert("size".into(), json!(5));
    assert_eq!(w.flows.plan(&org, "login", request_input.clone()).await.unwrap().bindings.len(), 2);
    w.flows.cache_clear(&ctx).await.unwrap();
    assert_eq!(w.flows.cache_info(&ctx).await.unwrap(), 0);
    let all = FlowInput { policy_engine_mode: Some("all".into()), ..FlowInput::default() };
    w.flows.patch_flow(&ctx, "login", all, &["policy_engine_mode".to_owned()]).await.unwrap();
    let err = w.flows.plan(&org, "login", request_input).await.unwrap_err();
    assert_eq!((err.kind(), err.id()), (ErrorKind::FailedPrecondition, FLOW_NOT_APPLICABLE));

    // Authentication requirements.
    let auth = FlowInput {
        authentication: Some("require_superuser".into()),
        policy_engine_mode: Some("any".into()),
        ..FlowInput::default()
    };
    w.flows
        .patch_flow(&ctx, "login", auth, &["authentication".to_owned(), "policy_engine_mode".to_owned()])
        .await
        .unwrap();
    let mut superuser = input.clone();
    superuser.user = Some(alice(true));
    superuser.request.ip = "10.0.0.1".into();
    assert!(w.flows.plan(&org, "login", superuser).await.is_ok());
    let err = w.flows.plan(&org, "login", input).await.unwrap_err();
    assert_eq!(err.id(), FLOW_NOT_APPLICABLE);
    let anon = FlowInput { authentication: Some("require_authenticated".into()), ..FlowInput::default() };
    w.flows.patch_flow(&ctx, "login", anon, &["authentication".to_owned()]).await.unwrap();
    let err = w.flows.plan(&org, "login", PlanInput::default()).await.unwrap_err();
    assert_eq!(err.id(), FLOW_NOT_APPLICABLE);
}

// ------------------------------------------------------------------------------------------ CEL

#[tokio::test]
async fn cel_compile_errors_name_expression() {
    let w = world();
    let ctx = owner("org1");
    let input = ExpressionPolicyInput {
        name: Some("broken".into()),
        expression: Some("user.name ==".into()),
        execution_logging: None,
    };
    let err = w.flows.create_policy(&ctx, input).await.unwrap_err();
    let (kind, field, message) = violation(&err);
    assert_eq!((kind, field.as_str()), (ErrorKind::InvalidArgument, "expression"));
    assert!(!message.is_empty());

    let id = policy(&w, &ctx, "strings", "'x' + 1 == 'x1'").await;
    let result = w.flows.test_policy(&ctx, id.as_str(), None, Map::new()).await.unwrap();
    assert!(!result.passing);
    assert_eq!(result.messages.len(), 1);
    let id = policy(&w, &ctx, "ctx", "context.n > 2 && user.username == 'alice'").await;
    let mut context = Map::new();
    context.insert("n".into(), json!(3));
    let result = w.flows.test_policy(&ctx, id.as_str(), Some(alice(false)), context).await.unwrap();
    assert!(result.passing, "{:?}", result.messages);
}

#[test]
fn runaway_expressions_time_out_and_fail_closed() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async {
        let evaluator =
            PolicyEvaluator::new(PolicyConfig { max_timeout: Duration::from_millis(200), max_concurrent: 1 });
        let mut input = PolicyInput::default();
        input.context.insert("xs".into(), Value::Array((0..3000).map(|i| json!(i)).collect()));
        // 27 billion steps: far longer than any timeout.
        let runaway = "context.xs.all(a, context.xs.all(b, context.xs.all(c, a + b + c >= 0)))";
        let started = Instant::now();
        let err = evaluator.evaluate(runaway, &input, Duration::from_secs(30)).await.unwrap_err();
        assert!(err.contains("timed out after 200 ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "the caller must not wait for the expression");

        // The only permit is still held by the runaway thread: the next evaluation fails closed too, promptly,
        // and a negated binding does not turn that failure into a pass.
        let binding = PolicyBindingSpec {
            policy: "p".into(),
            target: "t".into(),
            negate: true,
            enabled: true,
            order: 0,
            timeout: 30,
            failure_result: false,
        };
        let result = evaluator.evaluate_binding(&binding, "true", &input).await;
        assert!(!result.passing);
        assert!(result.messages[0].contains("timed out"), "{:?}", result.messages);
    });
    // Do not wait for the runaway evaluation thread.
    runtime.shutdown_background();
}

#[tokio::test]
async fn engine_modes_and_failure_results() {
    let evaluator = PolicyEvaluator::new(PolicyConfig::default());
    let input = PolicyInput::default();
    let spec = |negate: bool, failure_result: bool, enabled: bool| PolicyBindingSpec {
        policy: "p".into(),
        target: "t".into(),
        negate,
        enabled,
        order: 0,
        timeout: 30,
        failure_result,
    };
    let pass = (spec(false, false, true), "true".to_owned());
    let fail = (spec(false, false, true), "false".to_owned());
    let negated_fail = (spec(true, false, true), "false".to_owned());
    let broken_lenient = (spec(false, true, true), "1 / 0 == 1".to_owned());
    let disabled_fail = (spec(false, false, false), "false".to_owned());
    assert!(evaluator.evaluate_all(PolicyEngineMode::All, &[], &input).await.passing);
    assert!(evaluator.evaluate_all(PolicyEngineMode::Any, &[fail.clone(), pass.clone()], &input).await.passing);
    assert!(!evaluator.evaluate_all(PolicyEngineMode::All, &[pass.clone(), fail.clone()], &input).await.passing);
    assert!(evaluator.evaluate_all(PolicyEngineMode::All, &[pass.clone(), negated_fail], &input).await.passing);
    assert!(evaluator.evaluate_all(PolicyEngineMode::All, &[pass.clone(), disabled_fail], &input).await.passing);
    let lenient = evaluator.evaluate_all(PolicyEngineMode::All, &[broken_lenient], &input).await;
    assert!(lenient.passing);
    assert_eq!(lenient.messages.len(), 1);
    let non_bool = (spec(false, false, true), "1 + 1".to_owned());
    let result = evaluator.evaluate_all(PolicyEngineMode::Any, &[non_bool], &input).await;
    assert!(!result.passing);
    assert!(result.messages[0].contains("instead of a boolean"), "{:?}", result.messages);
}
