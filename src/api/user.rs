//! `flowgate.user.v2.UserService`: humans, machines, passwords, states and personal access tokens.

use flowgate_core::identity::authz::CallContext;
use flowgate_core::identity::model::{
    Email, Human, Machine, OrgFilter, OrgId, PersonalAccessToken, Phone, Profile, TextMethod, User, UserFilter, UserId,
    UserKind, UserKindFilter, UserSort, UserState,
};
use flowgate_core::identity::{
    HumanUpdate, Identity, NewHuman, NewMachine, NewPassword, NewUserIdpLink, PasswordChange, PasswordVerification,
};
use flowgate_core::idp::{IdpId, Idps};
use flowgate_core::session::Sessions;
use tonic::{Request, Response, Status};

use super::convert::{self, details, invalid, list_details, list_query, text_method, timestamp};
use super::request_id;
use crate::auth::context;
use crate::error::to_status;
use crate::pb::flowgate::object::v2 as object;
use crate::pb::flowgate::user::v2 as pb;

/// Adapter of the user service over the identity use cases (and the session core for TOTP).
pub struct UserApi {
    identity: Identity,
    sessions: Sessions,
    idps: Idps,
}

impl UserApi {
    /// An adapter over `identity`, `sessions` (TOTP) and `idps` (links).
    pub fn new(identity: Identity, sessions: Sessions, idps: Idps) -> Self {
        Self { identity, sessions, idps }
    }
}

/// The organization a request names (by id or primary domain), resolved among those the caller sees.
pub(crate) async fn resolve_org(
    identity: &Identity,
    ctx: &CallContext,
    org: Option<object::Organization>,
    field: &str,
    rid: Option<&str>,
) -> Result<Option<OrgId>, Status> {
    match org.and_then(|o| o.org) {
        None => Ok(None),
        Some(object::organization::Org::OrgId(id)) => Ok(Some(OrgId::from(id))),
        Some(object::organization::Org::OrgDomain(domain)) => {
            let filters = vec![OrgFilter::Domain(domain, TextMethod::EqualsIgnoreCase)];
            let page = identity
                .list_orgs(ctx, filters, flowgate_core::identity::model::ListQuery { offset: 0, limit: 1, asc: true })
                .await
                .map_err(|e| to_status(&e, rid))?;
            match page.items.into_iter().next() {
                Some(org) => Ok(Some(org.id)),
                None => Err(invalid(&format!("{field}.org_domain"), "names no organization you can see", rid)),
            }
        }
    }
}

fn profile(p: Option<pb::SetHumanProfile>, field: &str, rid: Option<&str>) -> Result<Profile, Status> {
    let pb::SetHumanProfile { given_name, family_name, nick_name: _, display_name, preferred_language, gender: _ } =
        convert::required(p, field, rid)?;
    Ok(Profile {
        given_name,
        family_name,
        display_name: display_name.unwrap_or_default(),
        preferred_language: preferred_language.unwrap_or_default(),
    })
}

fn email(e: Option<pb::SetHumanEmail>, field: &str, rid: Option<&str>) -> Result<Email, Status> {
    let pb::SetHumanEmail { email, verification } = convert::required(e, field, rid)?;
    let verified = matches!(verification, Some(pb::set_human_email::Verification::IsVerified(true)));
    Ok(Email { address: email, verified })
}

fn phone(p: Option<pb::SetHumanPhone>) -> Option<Phone> {
    let pb::SetHumanPhone { phone, verification } = p?;
    let verified = matches!(verification, Some(pb::set_human_phone::Verification::IsVerified(true)));
    Some(Phone { number: phone, verified })
}

fn user_state(state: UserState) -> pb::UserState {
    match state {
        UserState::Active => pb::UserState::Active,
        UserState::Inactive => pb::UserState::Inactive,
        UserState::Locked => pb::UserState::Locked,
    }
}

/// The wire form of a user (human or machine).
pub(crate) fn user_to_pb(user: User) -> pb::User {
    let User { id, org_id: _, username, state, kind, details: d, login_names, preferred_login_name } = user;
    let state = user_state(state);
    let r#type = match kind {
        UserKind::Human(Human {
            profile,
            email,
            phone,
            password_set: _,
            password_change_required,
            password_changed,
        }) => {
            let Profile { given_name, family_name, display_name, preferred_language } = profile;
            pb::user::Type::Human(pb::HumanUser {
                user_id: id.as_str().to_owned(),
                state: state.into(),
                username: username.clone(),
                login_names: login_names.clone(),
                preferred_login_name: preferred_login_name.clone(),
                profile: Some(pb::HumanProfile {
                    given_name,
                    family_name,
                    nick_name: None,
                    display_name: Some(display_name),
                    preferred_language: Some(preferred_language),
                    gender: None,
                }),
                email: Some(pb::HumanEmail { email: email.address, is_verified: email.verified }),
                phone: phone.map(|p| pb::HumanPhone { phone: p.number, is_verified: p.verified }),
                password_change_required,
                password_changed: password_changed.map(timestamp),
            })
        }
        UserKind::Machine(Machine { name, description }) => {
            pb::user::Type::Machine(pb::MachineUser { name, description })
        }
    };
    pb::User {
        user_id: id.into_string(),
        state: state.into(),
        username,
        login_names,
        preferred_login_name,
        r#type: Some(r#type),
        details: Some(details(&d)),
    }
}

fn pat_to_pb(pat: PersonalAccessToken, organization_id: &str) -> pb::PersonalAccessToken {
    let PersonalAccessToken { id, user_id, expiration, details: d } = pat;
    pb::PersonalAccessToken {
        creation_date: Some(timestamp(d.creation_date)),
        change_date: Some(timestamp(d.change_date)),
        id: id.into_string(),
        user_id: user_id.into_string(),
        organization_id: organization_id.to_owned(),
        expiration_date: expiration.map(timestamp),
    }
}

fn user_filter(q: pb::SearchQuery, i: usize, rid: Option<&str>) -> Result<UserFilter, Status> {
    use pb::search_query::Query;
    let field = |name: &str| format!("queries[{i}].{name}");
    let query = q.query.ok_or_else(|| invalid(&format!("queries[{i}]"), "names no query", rid))?;
    Ok(match query {
        Query::UserNameQuery(pb::UserNameQuery { user_name, method }) => {
            UserFilter::Username(user_name, text_method(method, &field("user_name_query.method"), rid)?)
        }
        Query::DisplayNameQuery(pb::DisplayNameQuery { display_name, method }) => {
            UserFilter::DisplayName(display_name, text_method(method, &field("display_name_query.method"), rid)?)
        }
        Query::EmailQuery(pb::EmailQuery { email_address, method }) => {
            UserFilter::Email(email_address, text_method(method, &field("email_query.method"), rid)?)
        }
        Query::StateQuery(pb::StateQuery { state }) => {
            let state = match pb::UserState::try_from(state) {
                Ok(pb::UserState::Active) => UserState::Active,
                Ok(pb::UserState::Inactive) => UserState::Inactive,
                Ok(pb::UserState::Locked) => UserState::Locked,
                Ok(pb::UserState::Unspecified | pb::UserState::Deleted | pb::UserState::Initial) | Err(_) => {
                    return Err(invalid(&field("state_query.state"), "must be ACTIVE, INACTIVE or LOCKED", rid));
                }
            };
            UserFilter::State(state)
        }
        Query::TypeQuery(pb::TypeQuery { r#type }) => match pb::Type::try_from(r#type) {
            Ok(pb::Type::Human) => UserFilter::Kind(UserKindFilter::Human),
            Ok(pb::Type::Machine) => UserFilter::Kind(UserKindFilter::Machine),
            Ok(pb::Type::Unspecified) | Err(_) => {
                return Err(invalid(&field("type_query.type"), "must be TYPE_HUMAN or TYPE_MACHINE", rid));
            }
        },
        Query::LoginNameQuery(pb::LoginNameQuery { login_name, method }) => {
            match text_method(method, &field("login_name_query.method"), rid)? {
                TextMethod::Equals | TextMethod::EqualsIgnoreCase => UserFilter::LoginName(login_name),
                TextMethod::StartsWith
                | TextMethod::StartsWithIgnoreCase
                | TextMethod::Contains
                | TextMethod::ContainsIgnoreCase
                | TextMethod::EndsWith
                | TextMethod::EndsWithIgnoreCase => {
                    return Err(invalid(
                        &field("login_name_query.method"),
                        "only EQUALS and EQUALS_IGNORE_CASE apply",
                        rid,
                    ));
                }
            }
        }
        Query::InUserIdsQuery(pb::InUserIdQuery { user_ids }) => {
            UserFilter::Ids(user_ids.into_iter().map(UserId::from).collect())
        }
        Query::OrganizationIdQuery(pb::OrganizationIdQuery { organization_id }) => {
            UserFilter::Org(OrgId::from(organization_id))
        }
    })
}

#[tonic::async_trait]
impl pb::user_service_server::UserService for UserApi {
    async fn add_human_user(
        &self,
        req: Request<pb::AddHumanUserRequest>,
    ) -> Result<Response<pb::AddHumanUserResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::AddHumanUserRequest {
            user_id,
            username,
            profile: p,
            email: e,
            password_type,
            phone: ph,
            organization,
            idp_links,
        } = req.into_inner();
        let org_id = resolve_org(&self.identity, &ctx, organization, "organization", rid).await?;
        let password = match password_type {
            None => None,
            Some(pb::add_human_user_request::PasswordType::Password(pb::Password { password, change_required })) => {
                Some(NewPassword::Plain { password, change_required })
            }
            Some(pb::add_human_user_request::PasswordType::HashedPassword(pb::HashedPassword {
                hash,
                change_required,
            })) => Some(NewPassword::Hashed { hash, change_required }),
        };
        let new = NewHuman {
            org_id,
            user_id,
            username,
            profile: profile(p, "profile", rid)?,
            email: email(e, "email", rid)?,
            phone: phone(ph),
            password,
            idp_links: idp_links.into_iter().map(new_idp_link).collect(),
        };
        let user = self.identity.add_human(&ctx, new).await.map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::AddHumanUserResponse {
            user_id: user.id.as_str().to_owned(),
            details: Some(details(&user.details)),
            email_code: None,
            phone_code: None,
        }))
    }

    async fn add_machine_user(
        &self,
        req: Request<pb::AddMachineUserRequest>,
    ) -> Result<Response<pb::AddMachineUserResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::AddMachineUserRequest { user_id, username, organization, name, description } = req.into_inner();
        let org_id = resolve_org(&self.identity, &ctx, organization, "organization", rid).await?;
        let new = NewMachine { org_id, user_id, username, name, description };
        let user = self.identity.add_machine(&ctx, new).await.map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::AddMachineUserResponse {
            user_id: user.id.as_str().to_owned(),
            details: Some(details(&user.details)),
        }))
    }

    async fn get_user_by_id(
        &self,
        req: Request<pb::GetUserByIdRequest>,
    ) -> Result<Response<pb::GetUserByIdResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::GetUserByIdRequest { user_id } = req.into_inner();
        let user = self.identity.get_user(&ctx, &UserId::from(user_id)).await.map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::GetUserByIdResponse {
            details: Some(details(&user.details)),
            user: Some(user_to_pb(user)),
        }))
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::ListUsersRequest { query, sorting_column, queries } = req.into_inner();
        let sort = match pb::UserFieldName::try_from(sorting_column) {
            Ok(pb::UserFieldName::Unspecified | pb::UserFieldName::CreationDate) => UserSort::CreationDate,
            Ok(pb::UserFieldName::UserName) => UserSort::Username,
            Ok(_) | Err(_) => return Err(invalid("sorting_column", "users sort by USER_NAME or CREATION_DATE", rid)),
        };
        let filters =
            queries.into_iter().enumerate().map(|(i, q)| user_filter(q, i, rid)).collect::<Result<Vec<_>, _>>()?;
        let page =
            self.identity.list_users(&ctx, filters, sort, list_query(query)).await.map_err(|e| to_status(&e, rid))?;
        let details = list_details(&page);
        Ok(Response::new(pb::ListUsersResponse {
            details: Some(details),
            sorting_column,
            result: page.items.into_iter().map(user_to_pb).collect(),
        }))
    }

    async fn update_human_user(
        &self,
        req: Request<pb::UpdateHumanUserRequest>,
    ) -> Result<Response<pb::UpdateHumanUserResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::UpdateHumanUserRequest { user_id, username, profile: p, email: e, phone: ph, password } =
            req.into_inner();
        let user_id = UserId::from(user_id);
        let profile = match p {
            Some(p) => Some(profile(Some(p), "profile", rid)?),
            None => None,
        };
        let email = match e {
            Some(e) => Some(email(Some(e), "email", rid)?),
            None => None,
        };
        // An empty phone number removes the phone.
        let phone = ph.map(|p| if p.phone.is_empty() { None } else { phone(Some(p)) });
        let password = match password {
            None => None,
            Some(pb::SetPassword { password_type, verification }) => {
                let (password, change_required) = match password_type {
                    Some(pb::set_password::PasswordType::Password(pb::Password { password, change_required })) => {
                        (password, change_required)
                    }
                    Some(pb::set_password::PasswordType::HashedPassword(_)) => {
                        return Err(invalid(
                            "password.hashed_password",
                            "is only accepted when a user is created",
                            rid,
                        ));
                    }
                    None => return Err(invalid("password.password", "is required", rid)),
                };
                let verification = password_verification(
                    verification.map(|v| match v {
                        pb::set_password::Verification::CurrentPassword(p) => {
                            pb::set_password_request::Verification::CurrentPassword(p)
                        }
                        pb::set_password::Verification::VerificationCode(c) => {
                            pb::set_password_request::Verification::VerificationCode(c)
                        }
                    }),
                    "password",
                    rid,
                )?;
                Some(PasswordChange { password, verification, change_required })
            }
        };
        // One use case: a refused password leaves the rest of the update unwritten.
        let update = HumanUpdate { username, profile, email, phone, password };
        let last = self.identity.update_human(&ctx, &user_id, update).await.map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::UpdateHumanUserResponse {
            details: Some(details(&last)),
            email_code: None,
            phone_code: None,
        }))
    }

    async fn set_password(
        &self,
        req: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::SetPasswordRequest { user_id, new_password, verification } = req.into_inner();
        let pb::Password { password, change_required } = convert::required(new_password, "new_password", rid)?;
        let verification = password_verification(verification, "", rid)?;
        let d = self
            .identity
            .set_password(&ctx, &UserId::from(user_id), &password, verification, change_required)
            .await
            .map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::SetPasswordResponse { details: Some(details(&d)) }))
    }

    async fn deactivate_user(
        &self,
        req: Request<pb::DeactivateUserRequest>,
    ) -> Result<Response<pb::DeactivateUserResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::DeactivateUserRequest { user_id } = req.into_inner();
        let d = self
            .identity
            .deactivate_user(&ctx, &UserId::from(user_id))
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::DeactivateUserResponse { details: Some(details(&d)) }))
    }

    async fn reactivate_user(
        &self,
        req: Request<pb::ReactivateUserRequest>,
    ) -> Result<Response<pb::ReactivateUserResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::ReactivateUserRequest { user_id } = req.into_inner();
        let d = self
            .identity
            .reactivate_user(&ctx, &UserId::from(user_id))
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::ReactivateUserResponse { details: Some(details(&d)) }))
    }

    async fn lock_user(&self, req: Request<pb::LockUserRequest>) -> Result<Response<pb::LockUserResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::LockUserRequest { user_id } = req.into_inner();
        let d =
            self.identity.lock_user(&ctx, &UserId::from(user_id)).await.map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::LockUserResponse { details: Some(details(&d)) }))
    }

    async fn unlock_user(
        &self,
        req: Request<pb::UnlockUserRequest>,
    ) -> Result<Response<pb::UnlockUserResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::UnlockUserRequest { user_id } = req.into_inner();
        let d =
            self.identity.unlock_user(&ctx, &UserId::from(user_id)).await.map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::UnlockUserResponse { details: Some(details(&d)) }))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::DeleteUserRequest { user_id } = req.into_inner();
        let d =
            self.identity.delete_user(&ctx, &UserId::from(user_id)).await.map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::DeleteUserResponse { details: Some(details(&d)) }))
    }

    async fn add_personal_access_token(
        &self,
        req: Request<pb::AddPersonalAccessTokenRequest>,
    ) -> Result<Response<pb::AddPersonalAccessTokenResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::AddPersonalAccessTokenRequest { user_id, expiration_date } = req.into_inner();
        let expiration =
            expiration_date.as_ref().map(|t| convert::from_timestamp(t, "expiration_date", rid)).transpose()?;
        let (pat, token) =
            self.identity.add_pat(&ctx, &UserId::from(user_id), expiration).await.map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::AddPersonalAccessTokenResponse {
            creation_date: Some(timestamp(pat.details.creation_date)),
            token_id: pat.id.into_string(),
            token,
            details: Some(details(&pat.details)),
        }))
    }

    async fn list_personal_access_tokens(
        &self,
        req: Request<pb::ListPersonalAccessTokensRequest>,
    ) -> Result<Response<pb::ListPersonalAccessTokensResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::ListPersonalAccessTokensRequest { user_id, query } = req.into_inner();
        let page = self
            .identity
            .list_pats(&ctx, &UserId::from(user_id), list_query(query))
            .await
            .map_err(|e| to_status(&e, rid))?;
        let details = list_details(&page);
        Ok(Response::new(pb::ListPersonalAccessTokensResponse {
            details: Some(details),
            result: page
                .items
                .into_iter()
                .map(|p| {
                    let owner = p.details.resource_owner.clone();
                    pat_to_pb(p, &owner)
                })
                .collect(),
        }))
    }

    async fn register_totp(
        &self,
        req: Request<pb::RegisterTotpRequest>,
    ) -> Result<Response<pb::RegisterTotpResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::RegisterTotpRequest { user_id } = req.into_inner();
        let (uri, secret, d) = self
            .sessions
            .register_totp(&ctx, &UserId::from(user_id))
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::RegisterTotpResponse { details: Some(details(&d)), uri, secret }))
    }

    async fn verify_totp_registration(
        &self,
        req: Request<pb::VerifyTotpRegistrationRequest>,
    ) -> Result<Response<pb::VerifyTotpRegistrationResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::VerifyTotpRegistrationRequest { user_id, code } = req.into_inner();
        let d = self
            .sessions
            .verify_totp_registration(&ctx, &UserId::from(user_id), &code)
            .await
            .map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::VerifyTotpRegistrationResponse { details: Some(details(&d)) }))
    }

    async fn remove_totp(
        &self,
        req: Request<pb::RemoveTotpRequest>,
    ) -> Result<Response<pb::RemoveTotpResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::RemoveTotpRequest { user_id } = req.into_inner();
        let d =
            self.sessions.remove_totp(&ctx, &UserId::from(user_id)).await.map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::RemoveTotpResponse { details: Some(details(&d)) }))
    }

    async fn remove_personal_access_token(
        &self,
        req: Request<pb::RemovePersonalAccessTokenRequest>,
    ) -> Result<Response<pb::RemovePersonalAccessTokenResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::RemovePersonalAccessTokenRequest { user_id, token_id } = req.into_inner();
        let d = self
            .identity
            .remove_pat(&ctx, &UserId::from(user_id), &flowgate_core::identity::model::TokenId::from(token_id))
            .await
            .map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::RemovePersonalAccessTokenResponse {
            deletion_date: Some(timestamp(d.change_date)),
            details: Some(details(&d)),
        }))
    }

    async fn add_idp_link(
        &self,
        req: Request<pb::AddIdpLinkRequest>,
    ) -> Result<Response<pb::AddIdpLinkResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::AddIdpLinkRequest { user_id, idp_link } = req.into_inner();
        let pb::IdpLink { idp_id, user_id: external_id, user_name } = convert::required(idp_link, "idp_link", rid)?;
        let d = self
            .idps
            .add_link(&ctx, &UserId::from(user_id), &idp_id, &external_id, &user_name)
            .await
            .map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::AddIdpLinkResponse { details: Some(details(&d)) }))
    }

    async fn list_idp_links(
        &self,
        req: Request<pb::ListIdpLinksRequest>,
    ) -> Result<Response<pb::ListIdpLinksResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::ListIdpLinksRequest { user_id, query } = req.into_inner();
        let page = self
            .idps
            .list_links(&ctx, &UserId::from(user_id), list_query(query))
            .await
            .map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::ListIdpLinksResponse {
            details: Some(list_details(&page)),
            result: page
                .items
                .into_iter()
                .map(|l| pb::IdpLink {
                    idp_id: l.idp_id.as_str().to_owned(),
                    user_id: l.external_user_id,
                    user_name: l.external_username,
                })
                .collect(),
        }))
    }

    async fn remove_idp_link(
        &self,
        req: Request<pb::RemoveIdpLinkRequest>,
    ) -> Result<Response<pb::RemoveIdpLinkResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::RemoveIdpLinkRequest { user_id, idp_id, linked_user_id } = req.into_inner();
        let d = self
            .idps
            .remove_link(&ctx, &UserId::from(user_id), &idp_id, &linked_user_id)
            .await
            .map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::RemoveIdpLinkResponse { details: Some(details(&d)) }))
    }
}

/// An account at an IdP to link to a new user; the core checks the IdP and validates the ids.
fn new_idp_link(link: pb::IdpLink) -> NewUserIdpLink {
    let pb::IdpLink { idp_id, user_id, user_name } = link;
    NewUserIdpLink { idp_id: IdpId::from(idp_id), external_user_id: user_id, external_username: user_name }
}

/// How a password change is authorized: the current password, or administrator rights when none is sent.
fn password_verification(
    verification: Option<pb::set_password_request::Verification>,
    prefix: &str,
    rid: Option<&str>,
) -> Result<PasswordVerification, Status> {
    let field = |name: &str| if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") };
    match verification {
        None => Ok(PasswordVerification::Administrator),
        Some(pb::set_password_request::Verification::CurrentPassword(p)) => {
            Ok(PasswordVerification::CurrentPassword(p))
        }
        Some(pb::set_password_request::Verification::VerificationCode(_)) => {
            Err(invalid(&field("verification_code"), "password reset codes are not issued by this server yet", rid))
        }
    }
}
