//! Identity: organizations, users, personal access tokens, members and their use cases.

pub mod authz;
mod cache;
pub mod model;
pub mod password;
pub mod ports;
mod service;
pub mod token;
pub mod validate;

pub use authz::{CallContext, Permission, Principal, role_permissions};
pub use cache::DEFAULT_PRINCIPAL_TTL;
pub use model::*;
pub use password::{HashPool, HashingConfig, PasswordHasher, PasswordPolicy};
pub use ports::{
    BootstrapRecord, Clock, ExternalTokenVerifier, HumanChange, IdGenerator, IdpLinkCheck, InstanceRepo, MemberRepo,
    NewOrgRecord, NewTokenRecord, NewUserIdpLink, NewUserKind, NewUserRecord, NoopLifecycleHook, OrgRepo,
    OrgStateChange, Repos, SessionTokenResolver, SystemClock, TokenOwner, TokenRepo, UserLifecycleHook, UserRepo,
    UserStateChange, UuidV7Ids,
};
pub use service::{
    ADMIN_USERNAME, AUTH_ORG_DENIED, AUTH_TOKEN_INVALID, DEFAULT_ORG_NAME, HumanUpdate, Identity, IdentityConfig,
    NewHuman, NewMachine, NewPassword, PasswordChange, PasswordVerification,
};
