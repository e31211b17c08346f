//! Flow definitions: flows, stages, stage bindings, expression policies (CEL) and policy bindings, with
//! their use cases, export/import, diagrams and the planner.

pub mod diagram;
pub mod model;
pub mod policy;
pub mod ports;
mod service;
pub mod validate;
pub mod yaml;

pub use model::*;
pub use policy::{PolicyConfig, PolicyEvaluator, PolicyInput, PolicyRequest, PolicyResult, PolicyUser};
pub use ports::FlowRepos;
pub use service::{
    BindingView, FLOW_NOT_APPLICABLE, FlowPlan, FlowView, Flows, FlowsConfig, ImportLog, ImportResult, PlanInput,
    PlannedBinding, PolicyBindingView, PolicyView, StageView, UsedBy, UsedByAction,
};
pub use validate::{BindingInput, ExpressionPolicyInput, FlowInput, ListParams, PolicyBindingInput, StageInput};
