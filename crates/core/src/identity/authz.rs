//! Authorization: permissions, the one role → permission table, the caller and its checks.

use super::model::{OrgId, Role, UserId};
use crate::{Error, ErrorKind, Result};

/// Error id: PermissionDenied, the caller lacks the permission.
pub const AUTHZ_DENIED: &str = "AUTHZ-denied";

/// What an operation needs; the proto option `(flowgate.api.permission)` names one of these
/// (or `authenticated` / `none`, which are not permissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read organizations.
    OrgRead,
    /// Change organizations (deactivate, reactivate).
    OrgWrite,
    /// Create organizations (instance-level).
    OrgCreate,
    /// Delete organizations.
    OrgDelete,
    /// Read users.
    UserRead,
    /// Create and change users.
    UserWrite,
    /// Delete users.
    UserDelete,
    /// Manage credentials of other users (PATs, passwords).
    UserCredentialWrite,
    /// Read memberships.
    MemberRead,
    /// Grant and revoke roles.
    MemberWrite,
    /// Read sessions.
    SessionRead,
    /// Create and change sessions.
    SessionWrite,
    /// Terminate sessions.
    SessionDelete,
    /// Read identity providers.
    IdpRead,
    /// Configure identity providers.
    IdpWrite,
    /// Read login flows.
    FlowRead,
    /// Configure login flows.
    FlowWrite,
}

impl Permission {
    /// Every permission, in a fixed order.
    pub const ALL: [Permission; 17] = [
        Permission::OrgRead,
        Permission::OrgWrite,
        Permission::OrgCreate,
        Permission::OrgDelete,
        Permission::UserRead,
        Permission::UserWrite,
        Permission::UserDelete,
        Permission::UserCredentialWrite,
        Permission::MemberRead,
        Permission::MemberWrite,
        Permission::SessionRead,
        Permission::SessionWrite,
        Permission::SessionDelete,
        Permission::IdpRead,
        Permission::IdpWrite,
        Permission::FlowRead,
        Permission::FlowWrite,
    ];

    /// The dotted name used in protos and logs (`org.read`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            Permission::OrgRead => "org.read",
            Permission::OrgWrite => "org.write",
            Permission::OrgCreate => "org.create",
            Permission::OrgDelete => "org.delete",
            Permission::UserRead => "user.read",
            Permission::UserWrite => "user.write",
            Permission::UserDelete => "user.delete",
            Permission::UserCredentialWrite => "user.credential.write",
            Permission::MemberRead => "member.read",
            Permission::MemberWrite => "member.write",
            Permission::SessionRead => "session.read",
            Permission::SessionWrite => "session.write",
            Permission::SessionDelete => "session.delete",
            Permission::IdpRead => "idp.read",
            Permission::IdpWrite => "idp.write",
            Permission::FlowRead => "flow.read",
            Permission::FlowWrite => "flow.write",
        }
    }

    /// The permission named `s` exactly, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const IAM_OWNER: &[Permission] = &Permission::ALL;

const IAM_LOGIN_CLIENT: &[Permission] = &[
    Permission::SessionRead,
    Permission::SessionWrite,
    Permission::SessionDelete,
    Permission::UserRead,
    Permission::OrgRead,
    Permission::IdpRead,
    Permission::FlowRead,
];

const ORG_OWNER: &[Permission] = &[
    Permission::OrgRead,
    Permission::OrgWrite,
    Permission::OrgDelete,
    Permission::UserRead,
    Permission::UserWrite,
    Permission::UserDelete,
    Permission::UserCredentialWrite,
    Permission::MemberRead,
    Permission::MemberWrite,
    Permission::IdpRead,
    Permission::FlowRead,
    Permission::FlowWrite,
    Permission::SessionRead,
    Permission::SessionWrite,
    Permission::SessionDelete,
];

const ORG_USER_MANAGER: &[Permission] = &[
    Permission::UserRead,
    Permission::UserWrite,
    Permission::UserDelete,
    Permission::UserCredentialWrite,
    Permission::OrgRead,
];

/// The one permission table: what each role grants (in its scope).
pub fn role_permissions(role: Role) -> &'static [Permission] {
    match role {
        Role::IamOwner => IAM_OWNER,
        Role::IamLoginClient => IAM_LOGIN_CLIENT,
        Role::OrgOwner => ORG_OWNER,
        Role::OrgUserManager => ORG_USER_MANAGER,
    }
}

/// Whether any of `roles` grants `perm`.
pub fn roles_grant(roles: &[Role], perm: Permission) -> bool {
    roles.iter().any(|r| role_permissions(*r).contains(&perm))
}

/// Who is calling, resolved from a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The calling user.
    pub user_id: UserId,
    /// The caller's own organization.
    pub org_id: OrgId,
    /// Roles on the whole instance.
    pub instance_roles: Vec<Role>,
    /// Roles per organization.
    pub org_roles: Vec<(OrgId, Vec<Role>)>,
}

impl Principal {
    /// Whether an instance role grants `perm`.
    pub fn has_instance(&self, perm: Permission) -> bool {
        roles_grant(&self.instance_roles, perm)
    }

    /// Whether an instance role or a role in `org` grants `perm`.
    pub fn has(&self, perm: Permission, org: &OrgId) -> bool {
        self.has_instance(perm) || self.org_roles.iter().any(|(o, roles)| o == org && roles_grant(roles, perm))
    }

    /// Whether the caller holds any role (instance or org) at all in `org`.
    pub fn has_any_role_in(&self, org: &OrgId) -> bool {
        !self.instance_roles.is_empty() || self.org_roles.iter().any(|(o, roles)| o == org && !roles.is_empty())
    }

    /// Orgs in which org roles grant `perm`; `None` when an instance role grants it everywhere.
    pub fn orgs_with(&self, perm: Permission) -> Option<Vec<OrgId>> {
        if self.has_instance(perm) {
            return None;
        }
        Some(self.org_roles.iter().filter(|(_, roles)| roles_grant(roles, perm)).map(|(o, _)| o.clone()).collect())
    }
}

/// The caller plus the organization the call acts on (`x-zitadel-orgid`, default: the caller's own org).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    /// The caller.
    pub principal: Principal,
    /// The organization the call acts on.
    pub org_id: OrgId,
}

impl CallContext {
    /// Ok when an instance role or a role in `org` grants `perm`; else PermissionDenied [`AUTHZ_DENIED`].
    pub fn require(&self, perm: Permission, org: &OrgId) -> Result<()> {
        if self.principal.has(perm, org) { Ok(()) } else { Err(denied(perm)) }
    }

    /// Ok when an instance role grants `perm`; else PermissionDenied [`AUTHZ_DENIED`].
    pub fn require_instance(&self, perm: Permission) -> Result<()> {
        if self.principal.has_instance(perm) { Ok(()) } else { Err(denied(perm)) }
    }

    /// Whether [`CallContext::require`] would succeed.
    pub fn can(&self, perm: Permission, org: &OrgId) -> bool {
        self.principal.has(perm, org)
    }

    /// The caller's user id: the creator of the events the call writes.
    pub fn actor(&self) -> &str {
        self.principal.user_id.as_str()
    }
}

fn denied(perm: Permission) -> Error {
    Error::new(ErrorKind::PermissionDenied, AUTHZ_DENIED, format!("missing permission {perm}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        assert_eq!(Permission::parse("Org.Read"), None);
        assert_eq!(Permission::parse("authenticated"), None);
    }

    #[test]
    fn login_client_administers_nothing() {
        let perms = role_permissions(Role::IamLoginClient);
        for p in [
            Permission::OrgWrite,
            Permission::OrgCreate,
            Permission::OrgDelete,
            Permission::UserWrite,
            Permission::UserDelete,
            Permission::UserCredentialWrite,
            Permission::MemberWrite,
            Permission::IdpWrite,
            Permission::FlowWrite,
        ] {
            assert!(!perms.contains(&p), "{p}");
        }
    }

    #[test]
    fn org_roles_cannot_create_orgs_or_write_idps() {
        for role in [Role::OrgOwner, Role::OrgUserManager] {
            assert!(!role_permissions(role).contains(&Permission::OrgCreate));
            assert!(!role_permissions(role).contains(&Permission::IdpWrite));
        }
        assert!(!role_permissions(Role::OrgUserManager).contains(&Permission::MemberWrite));
    }

    #[test]
    fn org_role_is_confined_to_its_org() {
        let a = OrgId::from("a");
        let b = OrgId::from("b");
        let ctx = CallContext {
            principal: Principal {
                user_id: UserId::from("u"),
                org_id: a.clone(),
                instance_roles: vec![],
                org_roles: vec![(a.clone(), vec![Role::OrgOwner])],
            },
            org_id: a.clone(),
        };
        assert!(ctx.require(Permission::UserWrite, &a).is_ok());
        let err = ctx.require(Permission::UserWrite, &b).err().map(|e| (e.kind(), e.id().to_owned()));
        assert_eq!(err, Some((ErrorKind::PermissionDenied, AUTHZ_DENIED.to_owned())));
        assert!(ctx.require_instance(Permission::OrgRead).is_err());
        assert_eq!(ctx.principal.orgs_with(Permission::UserRead), Some(vec![a]));
    }
}
