//! `flowgate.org.v2.OrganizationService`.

use flowgate_core::identity::Identity;
use flowgate_core::identity::model::{MemberScope, OrgFilter, OrgId, OrgState, Organization, Role};
use tonic::{Request, Response, Status};

use super::convert::{details, invalid, list_details, list_query, text_method, timestamp};
use super::request_id;
use crate::auth::context;
use crate::error::to_status;
use crate::pb::flowgate::org::v2 as pb;
use crate::pb::flowgate::user::v2 as user_pb;

/// Adapter of the organization service over the identity use cases.
pub struct OrgApi {
    identity: Identity,
    users: super::user::UserApi,
}

impl OrgApi {
    /// An adapter over `identity`; `users` creates the human admins of new organizations.
    pub fn new(identity: Identity, users: super::user::UserApi) -> Self {
        Self { users, identity }
    }
}

fn org_to_pb(org: Organization) -> pb::Organization {
    let Organization { id, name, primary_domain, state, details: d } = org;
    pb::Organization {
        id: id.into_string(),
        details: Some(details(&d)),
        state: match state {
            OrgState::Active => pb::OrganizationState::Active,
            OrgState::Inactive => pb::OrganizationState::Inactive,
        }
        .into(),
        name,
        primary_domain,
    }
}

fn org_filter(q: pb::SearchQuery, i: usize, rid: Option<&str>) -> Result<OrgFilter, Status> {
    use pb::search_query::Query;
    let field = |name: &str| format!("queries[{i}].{name}");
    Ok(match q.query.ok_or_else(|| invalid(&format!("queries[{i}]"), "names no query", rid))? {
        Query::NameQuery(pb::OrganizationNameQuery { name, method }) => {
            OrgFilter::Name(name, text_method(method, &field("name_query.method"), rid)?)
        }
        Query::DomainQuery(pb::OrganizationDomainQuery { domain, method }) => {
            OrgFilter::Domain(domain, text_method(method, &field("domain_query.method"), rid)?)
        }
        Query::StateQuery(pb::OrganizationStateQuery { state }) => match pb::OrganizationState::try_from(state) {
            Ok(pb::OrganizationState::Active) => OrgFilter::State(OrgState::Active),
            Ok(pb::OrganizationState::Inactive) => OrgFilter::State(OrgState::Inactive),
            Ok(pb::OrganizationState::Unspecified | pb::OrganizationState::Removed) | Err(_) => {
                return Err(invalid(&field("state_query.state"), "must be ACTIVE or INACTIVE", rid));
            }
        },
        Query::IdQuery(pb::OrganizationIdQuery { id }) => OrgFilter::Id(OrgId::from(id)),
    })
}

impl OrgApi {
    /// Creates (or takes) one admin of a new organization and grants its roles there.
    async fn add_admin(
        &self,
        ctx: &flowgate_core::identity::authz::CallContext,
        org_id: &OrgId,
        user_type: pb::add_organization_request::admin::UserType,
        roles: Vec<Role>,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &http::Extensions,
    ) -> Result<Option<pb::add_organization_response::CreatedAdmin>, Status> {
        let rid = metadata.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (user_id, created) = match user_type {
            pb::add_organization_request::admin::UserType::UserId(id) => (id, None),
            pb::add_organization_request::admin::UserType::Human(mut human) => {
                human.organization = Some(crate::pb::flowgate::object::v2::Organization {
                    org: Some(crate::pb::flowgate::object::v2::organization::Org::OrgId(org_id.as_str().to_owned())),
                });
                let mut request = Request::from_parts(metadata.clone(), extensions.clone(), human);
                request.extensions_mut().insert(ctx.clone());
                let created = <super::user::UserApi as user_pb::user_service_server::UserService>::add_human_user(
                    &self.users,
                    request,
                )
                .await?
                .into_inner();
                let admin = pb::add_organization_response::CreatedAdmin {
                    user_id: created.user_id.clone(),
                    email_code: None,
                    phone_code: None,
                };
                (created.user_id, Some(admin))
            }
        };
        self.identity
            .add_member(ctx, &user_id.into(), MemberScope::Org(org_id.clone()), roles)
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(created)
    }
}

#[tonic::async_trait]
impl pb::organization_service_server::OrganizationService for OrgApi {
    async fn add_organization(
        &self,
        req: Request<pb::AddOrganizationRequest>,
    ) -> Result<Response<pb::AddOrganizationResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let (metadata, extensions, inner) = req.into_parts();
        // `org_id` is the deprecated name of `organization_id`; both are read so old clients get the same answer.
        #[allow(deprecated)]
        let pb::AddOrganizationRequest { name, admins, org_id, organization_id } = inner;
        let rid = rid.as_deref();
        if org_id.is_some() || organization_id.is_some() {
            return Err(invalid("organization_id", "organization ids are assigned by the server", rid));
        }
        // Everything that can be checked without writing is checked first.
        let mut planned = Vec::with_capacity(admins.len());
        for (i, admin) in admins.into_iter().enumerate() {
            let pb::add_organization_request::Admin { user_type, roles } = admin;
            let roles = if roles.is_empty() {
                vec![Role::OrgOwner]
            } else {
                roles
                    .iter()
                    .map(|r| {
                        r.parse::<Role>()
                            .map_err(|_| invalid(&format!("admins[{i}].roles"), &format!("{r:?} is not a role"), rid))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
            let user_type =
                user_type.ok_or_else(|| invalid(&format!("admins[{i}]"), "needs a user_id or a human", rid))?;
            planned.push((user_type, roles));
        }
        let org = self.identity.add_org(&ctx, &name).await.map_err(|e| to_status(&e, rid))?;
        let mut created_admins = Vec::new();
        for (user_type, roles) in planned {
            let result = self.add_admin(&ctx, &org.id, user_type, roles, &metadata, &extensions).await;
            match result {
                Ok(Some(created)) => created_admins.push(created),
                Ok(None) => {}
                Err(status) => {
                    // The organization and its admins are one request: undo the organization so a
                    // failed admin does not leave a half-made one behind.
                    if let Err(err) = self.identity.delete_org(&ctx, &org.id).await {
                        tracing::error!(error = %err, org = %org.id, "could not undo a partly created organization");
                    }
                    return Err(status);
                }
            }
        }
        Ok(Response::new(pb::AddOrganizationResponse {
            details: Some(details(&org.details)),
            organization_id: org.id.into_string(),
            created_admins,
        }))
    }

    async fn get_organization(
        &self,
        req: Request<pb::GetOrganizationRequest>,
    ) -> Result<Response<pb::GetOrganizationResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::GetOrganizationRequest { organization_id } = req.into_inner();
        let org = self
            .identity
            .get_org(&ctx, &OrgId::from(organization_id))
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::GetOrganizationResponse { organization: Some(org_to_pb(org)) }))
    }

    async fn list_organizations(
        &self,
        req: Request<pb::ListOrganizationsRequest>,
    ) -> Result<Response<pb::ListOrganizationsResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::ListOrganizationsRequest { query, sorting_column, queries } = req.into_inner();
        if pb::OrganizationFieldName::try_from(sorting_column).is_err() {
            return Err(invalid("sorting_column", "is not a known field", rid));
        }
        let filters =
            queries.into_iter().enumerate().map(|(i, q)| org_filter(q, i, rid)).collect::<Result<Vec<_>, _>>()?;
        let page = self.identity.list_orgs(&ctx, filters, list_query(query)).await.map_err(|e| to_status(&e, rid))?;
        let details = list_details(&page);
        Ok(Response::new(pb::ListOrganizationsResponse {
            details: Some(details),
            sorting_column,
            result: page.items.into_iter().map(org_to_pb).collect(),
        }))
    }

    async fn deactivate_organization(
        &self,
        req: Request<pb::DeactivateOrganizationRequest>,
    ) -> Result<Response<pb::DeactivateOrganizationResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::DeactivateOrganizationRequest { organization_id } = req.into_inner();
        let d = self
            .identity
            .deactivate_org(&ctx, &OrgId::from(organization_id))
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::DeactivateOrganizationResponse {
            change_date: Some(timestamp(d.change_date)),
            details: Some(details(&d)),
        }))
    }

    async fn reactivate_organization(
        &self,
        req: Request<pb::ReactivateOrganizationRequest>,
    ) -> Result<Response<pb::ReactivateOrganizationResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::ReactivateOrganizationRequest { organization_id } = req.into_inner();
        let d = self
            .identity
            .reactivate_org(&ctx, &OrgId::from(organization_id))
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::ReactivateOrganizationResponse {
            change_date: Some(timestamp(d.change_date)),
            details: Some(details(&d)),
        }))
    }

    async fn delete_organization(
        &self,
        req: Request<pb::DeleteOrganizationRequest>,
    ) -> Result<Response<pb::DeleteOrganizationResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::DeleteOrganizationRequest { organization_id } = req.into_inner();
        let d = self
            .identity
            .delete_org(&ctx, &OrgId::from(organization_id))
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::DeleteOrganizationResponse {
            deletion_date: Some(timestamp(d.change_date)),
            details: Some(details(&d)),
        }))
    }
}
