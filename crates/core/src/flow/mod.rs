//! Flow definitions: flows, stages, stage bindings, expression policies (CEL) and policy bindings, with
//! their use cases, export/import, diagrams and the planner.

pub mod model;
pub mod policy;
pub mod ports;
pub mod validate;

pub use model::*;
pub use ports::FlowRepos;
