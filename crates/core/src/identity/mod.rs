//! Identity: organizations, users, personal access tokens, members and their use cases.

pub mod model;
pub mod ports;

pub use model::*;
pub use ports::{
    BootstrapRecord, Clock, HumanChange, IdGenerator, InstanceRepo, MemberRepo, NewOrgRecord, NewTokenRecord,
    NewUserKind, NewUserRecord, NoopLifecycleHook, OrgRepo, OrgStateChange, Repos, SystemClock, TokenOwner, TokenRepo,
    UserLifecycleHook, UserRepo, UserStateChange, UuidV7Ids,
};
