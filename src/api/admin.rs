//! `flowgate.admin.v2.AdministratorService`: roles of users at instance and organization level.

use flowgate_core::identity::Identity;
use flowgate_core::identity::authz::CallContext;
use flowgate_core::identity::model::{Member, MemberScope, OrgId, Role, UserId, UserKind};
use tonic::{Request, Response, Status};

use super::convert::{details, invalid, list_query, timestamp};
use super::request_id;
use crate::auth::context;
use crate::error::to_status;
use crate::pb::flowgate::admin::v2 as pb;

/// Adapter of the administrator service over the identity use cases.
pub struct AdminApi {
    identity: Identity,
}

impl AdminApi {
    /// An adapter over `identity`.
    pub fn new(identity: Identity) -> Self {
        Self { identity }
    }
}

fn scope(
    resource: Option<pb::ResourceType>,
    ctx: &CallContext,
    field: &str,
    rid: Option<&str>,
) -> Result<MemberScope, Status> {
    match resource.and_then(|r| r.resource) {
        Some(pb::resource_type::Resource::Instance(true)) => Ok(MemberScope::Instance),
        Some(pb::resource_type::Resource::Instance(false)) => {
            Err(invalid(&format!("{field}.instance"), "must be true when set", rid))
        }
        Some(pb::resource_type::Resource::OrganizationId(id)) if id.is_empty() => {
            Err(invalid(&format!("{field}.organization_id"), "must not be empty", rid))
        }
        Some(pb::resource_type::Resource::OrganizationId(id)) => Ok(MemberScope::Org(OrgId::from(id))),
        // Like every org-level call, no resource means the organization the call acts on.
        None => Ok(MemberScope::Org(ctx.org_id.clone())),
    }
}

fn roles(roles: &[String], rid: Option<&str>) -> Result<Vec<Role>, Status> {
    if roles.is_empty() {
        return Err(invalid("roles", "at least one role is required", rid));
    }
    roles
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.parse::<Role>().map_err(|_| invalid(&format!("roles[{i}]"), &format!("{r:?} is not a role"), rid))
        })
        .collect()
}

#[tonic::async_trait]
impl pb::administrator_service_server::AdministratorService for AdminApi {
    async fn create_administrator(
        &self,
        req: Request<pb::CreateAdministratorRequest>,
    ) -> Result<Response<pb::CreateAdministratorResponse>, Status> {
        let ctx = context(&req)?;
        let rid = request_id(&req);
        let pb::CreateAdministratorRequest { user_id, resource, roles } = req.into_inner();
        let d = self.grant(&ctx, user_id, resource, &roles, rid.as_deref()).await?;
        Ok(Response::new(pb::CreateAdministratorResponse {
            creation_date: Some(timestamp(d.change_date)),
            details: Some(details(&d)),
        }))
    }

    async fn update_administrator(
        &self,
        req: Request<pb::UpdateAdministratorRequest>,
    ) -> Result<Response<pb::UpdateAdministratorResponse>, Status> {
        let ctx = context(&req)?;
        let rid = request_id(&req);
        let pb::UpdateAdministratorRequest { user_id, resource, roles } = req.into_inner();
        let d = self.grant(&ctx, user_id, resource, &roles, rid.as_deref()).await?;
        Ok(Response::new(pb::UpdateAdministratorResponse {
            change_date: Some(timestamp(d.change_date)),
            details: Some(details(&d)),
        }))
    }

    async fn delete_administrator(
        &self,
        req: Request<pb::DeleteAdministratorRequest>,
    ) -> Result<Response<pb::DeleteAdministratorResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::DeleteAdministratorRequest { user_id, resource } = req.into_inner();
        let scope = scope(resource, &ctx, "resource", rid)?;
        let d =
            self.identity.remove_member(&ctx, &UserId::from(user_id), scope).await.map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::DeleteAdministratorResponse {
            deletion_date: Some(timestamp(d.change_date)),
            details: Some(details(&d)),
        }))
    }

    async fn list_administrators(
        &self,
        req: Request<pb::ListAdministratorsRequest>,
    ) -> Result<Response<pb::ListAdministratorsResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::ListAdministratorsRequest { pagination, sorting_column: _, filters } = req.into_inner();
        let mut resource = None;
        let mut user_ids: Option<Vec<String>> = None;
        let mut role: Option<Role> = None;
        for (i, f) in filters.into_iter().enumerate() {
            match f.filter {
                Some(pb::administrator_search_filter::Filter::Resource(pb::ResourceFilter { resource: r })) => {
                    resource = Some(pb::ResourceType {
                        resource: r.map(|r| match r {
                            pb::resource_filter::Resource::Instance(b) => pb::resource_type::Resource::Instance(b),
                            pb::resource_filter::Resource::OrganizationId(id) => {
                                pb::resource_type::Resource::OrganizationId(id)
                            }
                        }),
                    });
                }
                Some(pb::administrator_search_filter::Filter::InUserIdsFilter(pb::InIDsFilter { ids })) => {
                    user_ids = Some(ids)
                }
                Some(pb::administrator_search_filter::Filter::Role(pb::RoleFilter { role_key })) => {
                    role = Some(
                        role_key
                            .parse()
                            .map_err(|_| invalid(&format!("filters[{i}].role.role_key"), "is not a role", rid))?,
                    );
                }
                None => return Err(invalid(&format!("filters[{i}]"), "names no filter", rid)),
            }
        }
        let scope = scope(resource, &ctx, "filters.resource", rid)?;
        let query = list_query(pagination);
        let applied_limit = u64::from(if query.limit == 0 { 100 } else { query.limit });
        let page = self.identity.list_members(&ctx, scope, query).await.map_err(|e| to_status(&e, rid))?;
        let total = page.total;
        let mut administrators = Vec::new();
        for member in page.items {
            if user_ids.as_ref().is_some_and(|ids| !ids.iter().any(|id| id == member.user_id.as_str())) {
                continue;
            }
            if role.is_some_and(|r| !member.roles.contains(&r)) {
                continue;
            }
            administrators.push(self.administrator(&ctx, member).await);
        }
        Ok(Response::new(pb::ListAdministratorsResponse {
            pagination: Some(pb::PaginationResponse { total_result: total, applied_limit }),
            administrators,
        }))
    }
}

impl AdminApi {
    /// Grants (or replaces) `roles` of `user_id` on the resource: create and update mean the same.
    async fn grant(
        &self,
        ctx: &CallContext,
        user_id: String,
        resource: Option<pb::ResourceType>,
        r: &[String],
        rid: Option<&str>,
    ) -> Result<flowgate_core::event::Details, Status> {
        let scope = scope(resource, ctx, "resource", rid)?;
        let roles = roles(r, rid)?;
        self.identity.add_member(ctx, &UserId::from(user_id), scope, roles).await.map_err(|e| to_status(&e, rid))
    }

    /// The wire form of a membership, with the user's and organization's names where the caller may see them.
    async fn administrator(&self, ctx: &CallContext, member: Member) -> pb::Administrator {
        let Member { user_id, scope, roles, details: d } = member;
        let user = self.identity.get_user(ctx, &user_id).await.ok();
        let display_name = match user.as_ref().map(|u| &u.kind) {
            Some(UserKind::Human(h)) => h.profile.display_name.clone(),
            Some(UserKind::Machine(m)) => m.name.clone(),
            None => String::new(),
        };
        let resource = match scope {
            MemberScope::Instance => pb::administrator::Resource::Instance(true),
            MemberScope::Org(org_id) => {
                let name = self.identity.get_org(ctx, &org_id).await.map(|o| o.name).unwrap_or_default();
                pb::administrator::Resource::Organization(pb::Organization { id: org_id.into_string(), name })
            }
        };
        pb::Administrator {
            creation_date: Some(timestamp(d.creation_date)),
            change_date: Some(timestamp(d.change_date)),
            user: Some(pb::User {
                id: user_id.as_str().to_owned(),
                preferred_login_name: user.as_ref().map(|u| u.preferred_login_name.clone()).unwrap_or_default(),
                display_name,
                organization_id: user.map(|u| u.org_id.into_string()).unwrap_or_default(),
            }),
            resource: Some(resource),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
        }
    }
}
