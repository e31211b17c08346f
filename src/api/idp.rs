//! `flowgate.idp.v2`: identity-provider configuration (`IdentityProviderService`) and intents
//! (`IntentService`), plus the `/idps/callback` route the providers redirect browsers to.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response as HttpResponse};
use flowgate_core::idp::{
    CallbackOutcome, CallbackParams, Idp, IdpFilter, IdpId, IdpInput, IdpKind, IdpState, IdpTemplate, IdpType, Idps,
    LdapAttributes, LdapInput, OAuthInput, OidcInput, ProviderInput, ProviderOptions, TemplateInput,
};
use tonic::{Request, Response, Status};

use super::convert::{details, invalid, list_details, list_query, text_method};
use super::request_id;
use crate::auth::context;
use crate::error::to_status;
use crate::pb::flowgate::idp::v2 as pb;

/// Adapter of both IdP services over the IdP use cases.
pub struct IdpApi {
    idps: Idps,
}

impl IdpApi {
    /// An adapter over `idps`.
    pub fn new(idps: Idps) -> Self {
        Self { idps }
    }
}

fn options(o: Option<pb::Options>) -> ProviderOptions {
    let pb::Options { is_linking_allowed, is_creation_allowed, is_auto_creation, is_auto_update } =
        o.unwrap_or_default();
    ProviderOptions { is_linking_allowed, is_creation_allowed, is_auto_creation, is_auto_update }
}

fn options_to_pb(o: ProviderOptions) -> pb::Options {
    let ProviderOptions { is_linking_allowed, is_creation_allowed, is_auto_creation, is_auto_update } = o;
    pb::Options { is_linking_allowed, is_creation_allowed, is_auto_creation, is_auto_update }
}

fn attributes(a: Option<pb::LdapAttributes>) -> LdapAttributes {
    let pb::LdapAttributes {
        id_attribute,
        first_name_attribute,
        last_name_attribute,
        display_name_attribute,
        nick_name_attribute,
        preferred_username_attribute,
        email_attribute,
        email_verified_attribute,
        phone_attribute,
        phone_verified_attribute,
        preferred_language_attribute,
        avatar_url_attribute,
        profile_attribute,
    } = a.unwrap_or_default();
    LdapAttributes {
        id_attribute,
        first_name_attribute,
        last_name_attribute,
        display_name_attribute,
        nick_name_attribute,
        preferred_username_attribute,
        email_attribute,
        email_verified_attribute,
        phone_attribute,
        phone_verified_attribute,
        preferred_language_attribute,
        avatar_url_attribute,
        profile_attribute,
    }
}

fn attributes_to_pb(a: LdapAttributes) -> pb::LdapAttributes {
    let LdapAttributes {
        id_attribute,
        first_name_attribute,
        last_name_attribute,
        display_name_attribute,
        nick_name_attribute,
        preferred_username_attribute,
        email_attribute,
        email_verified_attribute,
        phone_attribute,
        phone_verified_attribute,
        preferred_language_attribute,
        avatar_url_attribute,
        profile_attribute,
    } = a;
    pb::LdapAttributes {
        id_attribute,
        first_name_attribute,
        last_name_attribute,
        display_name_attribute,
        nick_name_attribute,
        preferred_username_attribute,
        email_attribute,
        email_verified_attribute,
        phone_attribute,
        phone_verified_attribute,
        preferred_language_attribute,
        avatar_url_attribute,
        profile_attribute,
    }
}

/// A protobuf Duration as a std Duration; negative or out-of-range values name `field`.
fn timeout(d: Option<pbjson_types::Duration>, field: &str, rid: Option<&str>) -> Result<Option<Duration>, Status> {
    let Some(d) = d else { return Ok(None) };
    let secs = u64::try_from(d.seconds).map_err(|_| invalid(field, "must not be negative", rid))?;
    let nanos = u32::try_from(d.nanos).map_err(|_| invalid(field, "must not be negative", rid))?;
    if nanos >= 1_000_000_000 {
        return Err(invalid(field, "nanos must be below one second", rid));
    }
    Ok(Some(Duration::new(secs, nanos)))
}

fn to_pb_duration(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn state_to_pb(s: IdpState) -> pb::IdpState {
    match s {
        IdpState::Active => pb::IdpState::Active,
        IdpState::Inactive => pb::IdpState::Inactive,
    }
}

fn type_to_pb(t: IdpType) -> pb::IdpType {
    match t {
        IdpType::Oidc => pb::IdpType::Oidc,
        IdpType::OAuth => pb::IdpType::Oauth,
        IdpType::Ldap => pb::IdpType::Ldap,
        IdpType::GitHub => pb::IdpType::Github,
        IdpType::Google => pb::IdpType::Google,
    }
}

/// The read shape of an IdP: everything but its secrets.
fn idp_to_pb(idp: Idp) -> pb::Idp {
    let idp_type = idp.kind.idp_type();
    let config = match idp.kind {
        IdpKind::Oidc(c) => match c.template {
            Some(IdpTemplate::Google) => {
                pb::idp_config::Config::Google(pb::GoogleConfig { client_id: c.client_id, scopes: c.scopes })
            }
            Some(IdpTemplate::GitHub) | None => pb::idp_config::Config::Oidc(pb::GenericOidcConfig {
                issuer: c.issuer,
                client_id: c.client_id,
                scopes: c.scopes,
                is_id_token_mapping: c.is_id_token_mapping,
                use_pkce: c.use_pkce,
            }),
        },
        IdpKind::OAuth(c) => match c.template {
            Some(IdpTemplate::GitHub) => {
                pb::idp_config::Config::Github(pb::GitHubConfig { client_id: c.client_id, scopes: c.scopes })
            }
            Some(IdpTemplate::Google) | None => pb::idp_config::Config::Oauth(pb::OAuthConfig {
                client_id: c.client_id,
                authorization_endpoint: c.authorization_endpoint,
                token_endpoint: c.token_endpoint,
                user_endpoint: c.user_endpoint,
                scopes: c.scopes,
                id_attribute: c.id_attribute,
                use_pkce: c.use_pkce,
            }),
        },
        IdpKind::Ldap(c) => pb::idp_config::Config::Ldap(pb::LdapConfig {
            servers: c.servers,
            start_tls: c.start_tls,
            base_dn: c.base_dn,
            bind_dn: c.bind_dn,
            user_base: c.user_base,
            user_object_classes: c.user_object_classes,
            user_filters: c.user_filters,
            timeout: Some(to_pb_duration(c.timeout)),
            attributes: Some(attributes_to_pb(c.attributes)),
            tls_verify: c.tls_verify,
            root_ca: c.root_ca_pem.unwrap_or_default(),
        }),
    };
    pb::Idp {
        id: idp.id.as_str().to_owned(),
        details: Some(details(&idp.details)),
        state: state_to_pb(idp.state).into(),
        name: idp.name,
        r#type: type_to_pb(idp_type).into(),
        config: Some(pb::IdpConfig { options: Some(options_to_pb(idp.options)), config: Some(config) }),
    }
}

/// LDAP settings of an add or update request (the same fields in both).
#[expect(clippy::too_many_arguments, reason = "mirrors the request's fields one to one")]
fn ldap_input(
    servers: Vec<String>,
    start_tls: bool,
    base_dn: String,
    bind_dn: String,
    bind_password: String,
    user_base: String,
    user_object_classes: Vec<String>,
    user_filters: Vec<String>,
    timeout_value: Option<pbjson_types::Duration>,
    attrs: Option<pb::LdapAttributes>,
    tls_verify: Option<bool>,
    root_ca: Option<String>,
    rid: Option<&str>,
) -> Result<ProviderInput, Status> {
    Ok(ProviderInput::Ldap(LdapInput {
        servers,
        start_tls,
        tls_verify,
        root_ca_pem: root_ca.filter(|pem| !pem.trim().is_empty()),
        base_dn,
        bind_dn,
        bind_password,
        user_base,
        user_object_classes,
        user_filters,
        timeout: timeout(timeout_value, "timeout", rid)?,
        attributes: attributes(attrs),
    }))
}

impl IdpApi {
    async fn add(
        &self,
        ctx_req: &Request<impl Send>,
        name: String,
        opts: Option<pb::Options>,
        provider: ProviderInput,
    ) -> Result<(String, flowgate_core::event::Details), Status> {
        let rid = request_id(ctx_req);
        let ctx = context(ctx_req)?;
        let input = IdpInput { name, options: options(opts), provider };
        let idp = self.idps.add_idp(&ctx, input).await.map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok((idp.id.as_str().to_owned(), idp.details))
    }

    async fn update(
        &self,
        ctx_req: &Request<impl Send>,
        id: &str,
        name: String,
        opts: Option<pb::Options>,
        provider: ProviderInput,
    ) -> Result<flowgate_core::event::Details, Status> {
        let rid = request_id(ctx_req);
        let ctx = context(ctx_req)?;
        let input = IdpInput { name, options: options(opts), provider };
        self.idps.update_idp(&ctx, &IdpId::from(id), input).await.map_err(|e| to_status(&e, rid.as_deref()))
    }
}

#[tonic::async_trait]
impl pb::identity_provider_service_server::IdentityProviderService for IdpApi {
    async fn add_generic_oidc_provider(
        &self,
        req: Request<pb::AddGenericOidcProviderRequest>,
    ) -> Result<Response<pb::AddGenericOidcProviderResponse>, Status> {
        let pb::AddGenericOidcProviderRequest {
            name,
            issuer,
            client_id,
            client_secret,
            scopes,
            provider_options,
            is_id_token_mapping,
            use_pkce,
        } = req.get_ref().clone();
        let provider =
            ProviderInput::Oidc(OidcInput { issuer, client_id, client_secret, scopes, is_id_token_mapping, use_pkce });
        let (id, d) = self.add(&req, name, provider_options, provider).await?;
        Ok(Response::new(pb::AddGenericOidcProviderResponse { details: Some(details(&d)), id }))
    }

    async fn update_generic_oidc_provider(
        &self,
        req: Request<pb::UpdateGenericOidcProviderRequest>,
    ) -> Result<Response<pb::UpdateGenericOidcProviderResponse>, Status> {
        let pb::UpdateGenericOidcProviderRequest {
            id,
            name,
            issuer,
            client_id,
            client_secret,
            scopes,
            provider_options,
            is_id_token_mapping,
            use_pkce,
        } = req.get_ref().clone();
        let provider =
            ProviderInput::Oidc(OidcInput { issuer, client_id, client_secret, scopes, is_id_token_mapping, use_pkce });
        let d = self.update(&req, &id, name, provider_options, provider).await?;
        Ok(Response::new(pb::UpdateGenericOidcProviderResponse { details: Some(details(&d)) }))
    }

    async fn add_generic_o_auth_provider(
        &self,
        req: Request<pb::AddGenericOAuthProviderRequest>,
    ) -> Result<Response<pb::AddGenericOAuthProviderResponse>, Status> {
        let pb::AddGenericOAuthProviderRequest {
            name,
            client_id,
            client_secret,
            authorization_endpoint,
            token_endpoint,
            user_endpoint,
            scopes,
            id_attribute,
            provider_options,
            use_pkce,
        } = req.get_ref().clone();
        let provider = ProviderInput::OAuth(OAuthInput {
            authorization_endpoint,
            token_endpoint,
            user_endpoint,
            client_id,
            client_secret,
            scopes,
            id_attribute,
            use_pkce,
        });
        let (id, d) = self.add(&req, name, provider_options, provider).await?;
        Ok(Response::new(pb::AddGenericOAuthProviderResponse { details: Some(details(&d)), id }))
    }

    async fn update_generic_o_auth_provider(
        &self,
        req: Request<pb::UpdateGenericOAuthProviderRequest>,
    ) -> Result<Response<pb::UpdateGenericOAuthProviderResponse>, Status> {
        let pb::UpdateGenericOAuthProviderRequest {
            id,
            name,
            client_id,
            client_secret,
            authorization_endpoint,
            token_endpoint,
            user_endpoint,
            scopes,
            id_attribute,
            provider_options,
            use_pkce,
        } = req.get_ref().clone();
        let provider = ProviderInput::OAuth(OAuthInput {
            authorization_endpoint,
            token_endpoint,
            user_endpoint,
            client_id,
            client_secret,
            scopes,
            id_attribute,
            use_pkce,
        });
        let d = self.update(&req, &id, name, provider_options, provider).await?;
        Ok(Response::new(pb::UpdateGenericOAuthProviderResponse { details: Some(details(&d)) }))
    }

    async fn add_git_hub_provider(
        &self,
        req: Request<pb::AddGitHubProviderRequest>,
    ) -> Result<Response<pb::AddGitHubProviderResponse>, Status> {
        let pb::AddGitHubProviderRequest { name, client_id, client_secret, scopes, provider_options } =
            req.get_ref().clone();
        let provider = ProviderInput::GitHub(TemplateInput { client_id, client_secret, scopes });
        let (id, d) = self.add(&req, name, provider_options, provider).await?;
        Ok(Response::new(pb::AddGitHubProviderResponse { details: Some(details(&d)), id }))
    }

    async fn update_git_hub_provider(
        &self,
        req: Request<pb::UpdateGitHubProviderRequest>,
    ) -> Result<Response<pb::UpdateGitHubProviderResponse>, Status> {
        let pb::UpdateGitHubProviderRequest { id, name, client_id, client_secret, scopes, provider_options } =
            req.get_ref().clone();
        let provider = ProviderInput::GitHub(TemplateInput { client_id, client_secret, scopes });
        let d = self.update(&req, &id, name, provider_options, provider).await?;
        Ok(Response::new(pb::UpdateGitHubProviderResponse { details: Some(details(&d)) }))
    }

    async fn add_google_provider(
        &self,
        req: Request<pb::AddGoogleProviderRequest>,
    ) -> Result<Response<pb::AddGoogleProviderResponse>, Status> {
        let pb::AddGoogleProviderRequest { name, client_id, client_secret, scopes, provider_options } =
            req.get_ref().clone();
        let provider = ProviderInput::Google(TemplateInput { client_id, client_secret, scopes });
        let (id, d) = self.add(&req, name, provider_options, provider).await?;
        Ok(Response::new(pb::AddGoogleProviderResponse { details: Some(details(&d)), id }))
    }

    async fn update_google_provider(
        &self,
        req: Request<pb::UpdateGoogleProviderRequest>,
    ) -> Result<Response<pb::UpdateGoogleProviderResponse>, Status> {
        let pb::UpdateGoogleProviderRequest { id, name, client_id, client_secret, scopes, provider_options } =
            req.get_ref().clone();
        let provider = ProviderInput::Google(TemplateInput { client_id, client_secret, scopes });
        let d = self.update(&req, &id, name, provider_options, provider).await?;
        Ok(Response::new(pb::UpdateGoogleProviderResponse { details: Some(details(&d)) }))
    }

    async fn add_ldap_provider(
        &self,
        req: Request<pb::AddLdapProviderRequest>,
    ) -> Result<Response<pb::AddLdapProviderResponse>, Status> {
        let rid = request_id(&req);
        let pb::AddLdapProviderRequest {
            name,
            servers,
            start_tls,
            base_dn,
            bind_dn,
            bind_password,
            user_base,
            user_object_classes,
            user_filters,
            timeout,
            attributes,
            provider_options,
            tls_verify,
            root_ca,
        } = req.get_ref().clone();
        let provider = ldap_input(
            servers,
            start_tls,
            base_dn,
            bind_dn,
            bind_password,
            user_base,
            user_object_classes,
            user_filters,
            timeout,
            attributes,
            tls_verify,
            root_ca,
            rid.as_deref(),
        )?;
        let (id, d) = self.add(&req, name, provider_options, provider).await?;
        Ok(Response::new(pb::AddLdapProviderResponse { details: Some(details(&d)), id }))
    }

    async fn update_ldap_provider(
        &self,
        req: Request<pb::UpdateLdapProviderRequest>,
    ) -> Result<Response<pb::UpdateLdapProviderResponse>, Status> {
        let rid = request_id(&req);
        let pb::UpdateLdapProviderRequest {
            id,
            name,
            servers,
            start_tls,
            base_dn,
            bind_dn,
            bind_password,
            user_base,
            user_object_classes,
            user_filters,
            timeout,
            attributes,
            provider_options,
            tls_verify,
            root_ca,
        } = req.get_ref().clone();
        let provider = ldap_input(
            servers,
            start_tls,
            base_dn,
            bind_dn,
            bind_password,
            user_base,
            user_object_classes,
            user_filters,
            timeout,
            attributes,
            tls_verify,
            root_ca,
            rid.as_deref(),
        )?;
        let d = self.update(&req, &id, name, provider_options, provider).await?;
        Ok(Response::new(pb::UpdateLdapProviderResponse { details: Some(details(&d)) }))
    }

    async fn get_idp_by_id(
        &self,
        req: Request<pb::GetIdpByIdRequest>,
    ) -> Result<Response<pb::GetIdpByIdResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::GetIdpByIdRequest { id } = req.into_inner();
        let idp = self.idps.get_idp(&ctx, &IdpId::from(id)).await.map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::GetIdpByIdResponse { idp: Some(idp_to_pb(idp)) }))
    }

    async fn list_id_ps(&self, req: Request<pb::ListIdPsRequest>) -> Result<Response<pb::ListIdPsResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::ListIdPsRequest { query, queries } = req.into_inner();
        let mut filters = Vec::new();
        for (i, q) in queries.into_iter().enumerate() {
            let field = format!("queries[{i}]");
            match q.query {
                Some(pb::idp_query::Query::IdpNameQuery(pb::IdpNameQuery { name, method })) => {
                    let method = text_method(method, &format!("{field}.idp_name_query.method"), rid)?;
                    filters.push(IdpFilter::Name(name, method));
                }
                Some(pb::idp_query::Query::IdpTypeQuery(pb::IdpTypeQuery { r#type })) => {
                    let t = match pb::IdpType::try_from(r#type) {
                        Ok(pb::IdpType::Oidc) => IdpType::Oidc,
                        Ok(pb::IdpType::Oauth) => IdpType::OAuth,
                        Ok(pb::IdpType::Ldap) => IdpType::Ldap,
                        Ok(pb::IdpType::Github) => IdpType::GitHub,
                        Ok(pb::IdpType::Google) => IdpType::Google,
                        Ok(pb::IdpType::Unspecified) | Err(_) => {
                            return Err(invalid(&format!("{field}.idp_type_query.type"), "names no IdP type", rid));
                        }
                    };
                    filters.push(IdpFilter::Type(t));
                }
                None => return Err(invalid(&field, "must set one query", rid)),
            }
        }
        let page = self.idps.list_idps(&ctx, filters, list_query(query)).await.map_err(|e| to_status(&e, rid))?;
        Ok(Response::new(pb::ListIdPsResponse {
            details: Some(list_details(&page)),
            result: page.items.into_iter().map(idp_to_pb).collect(),
        }))
    }

    async fn delete_idp(&self, req: Request<pb::DeleteIdpRequest>) -> Result<Response<pb::DeleteIdpResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::DeleteIdpRequest { id } = req.into_inner();
        let d = self.idps.delete_idp(&ctx, &IdpId::from(id)).await.map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::DeleteIdpResponse { details: Some(details(&d)) }))
    }

    async fn deactivate_idp(
        &self,
        req: Request<pb::DeactivateIdpRequest>,
    ) -> Result<Response<pb::DeactivateIdpResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::DeactivateIdpRequest { id } = req.into_inner();
        let d = self.idps.deactivate_idp(&ctx, &IdpId::from(id)).await.map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::DeactivateIdpResponse { details: Some(details(&d)) }))
    }

    async fn reactivate_idp(
        &self,
        req: Request<pb::ReactivateIdpRequest>,
    ) -> Result<Response<pb::ReactivateIdpResponse>, Status> {
        let rid = request_id(&req);
        let ctx = context(&req)?;
        let pb::ReactivateIdpRequest { id } = req.into_inner();
        let d = self.idps.reactivate_idp(&ctx, &IdpId::from(id)).await.map_err(|e| to_status(&e, rid.as_deref()))?;
        Ok(Response::new(pb::ReactivateIdpResponse { details: Some(details(&d)) }))
    }
}

/// A JSON value as a protobuf Struct value.
fn struct_value(v: serde_json::Value) -> pbjson_types::Value {
    use pbjson_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => {
            Kind::ListValue(pbjson_types::ListValue { values: items.into_iter().map(struct_value).collect() })
        }
        serde_json::Value::Object(map) => Kind::StructValue(json_struct(map)),
    };
    pbjson_types::Value { kind: Some(kind) }
}

fn json_struct(map: serde_json::Map<String, serde_json::Value>) -> pbjson_types::Struct {
    pbjson_types::Struct { fields: map.into_iter().map(|(k, v)| (k, struct_value(v))).collect() }
}

#[tonic::async_trait]
impl pb::intent_service_server::IntentService for IdpApi {
    async fn start_identity_provider_intent(
        &self,
        req: Request<pb::StartIdentityProviderIntentRequest>,
    ) -> Result<Response<pb::StartIdentityProviderIntentResponse>, Status> {
        use pb::start_identity_provider_intent_request::Content;
        use pb::start_identity_provider_intent_response::NextStep;
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::StartIdentityProviderIntentRequest { idp_id, content } = req.into_inner();
        let (d, next) = match content {
            Some(Content::Urls(pb::RedirectUrLs { success_url, failure_url })) => {
                let (url, d) = self
                    .idps
                    .start_redirect(&ctx, &idp_id, &success_url, &failure_url)
                    .await
                    .map_err(|e| to_status(&e, rid))?;
                (d, NextStep::AuthUrl(url))
            }
            Some(Content::Ldap(pb::LdapCredentials { username, password })) => {
                let intent =
                    self.idps.start_ldap(&ctx, &idp_id, &username, &password).await.map_err(|e| to_status(&e, rid))?;
                let d = intent.details.clone();
                (
                    d,
                    NextStep::IdpIntent(pb::IdpIntent {
                        idp_intent_id: intent.id.as_str().to_owned(),
                        idp_intent_token: intent.token.clone(),
                        user_id: intent.user_id.as_ref().map(|u| u.as_str().to_owned()).unwrap_or_default(),
                    }),
                )
            }
            None => return Err(invalid("content", "set either urls or ldap", rid)),
        };
        Ok(Response::new(pb::StartIdentityProviderIntentResponse { details: Some(details(&d)), next_step: Some(next) }))
    }

    async fn retrieve_identity_provider_intent(
        &self,
        req: Request<pb::RetrieveIdentityProviderIntentRequest>,
    ) -> Result<Response<pb::RetrieveIdentityProviderIntentResponse>, Status> {
        let rid = request_id(&req);
        let rid = rid.as_deref();
        let ctx = context(&req)?;
        let pb::RetrieveIdentityProviderIntentRequest { idp_intent_id, idp_intent_token } = req.into_inner();
        let info = self.idps.retrieve(&ctx, &idp_intent_id, &idp_intent_token).await.map_err(|e| to_status(&e, rid))?;
        let access = match (info.ldap_attributes, info.access_token) {
            (Some(attrs), _) => {
                let map = attrs
                    .into_iter()
                    .map(|(k, values)| {
                        (k, serde_json::Value::Array(values.into_iter().map(serde_json::Value::String).collect()))
                    })
                    .collect();
                Some(pb::idp_information::Access::Ldap(pb::IdpldapAccessInformation {
                    attributes: Some(json_struct(map)),
                }))
            }
            (None, Some(access_token)) => Some(pb::idp_information::Access::Oauth(pb::IdpoAuthAccessInformation {
                access_token,
                id_token: info.id_token,
            })),
            (None, None) => None,
        };
        let raw = match info.raw {
            serde_json::Value::Object(map) => Some(json_struct(map)),
            serde_json::Value::Null => None,
            other @ (serde_json::Value::Bool(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::String(_)
            | serde_json::Value::Array(_)) => {
                Some(json_struct(serde_json::Map::from_iter([("value".to_owned(), other)])))
            }
        };
        let user_id = info.user_id.map(|u| u.as_str().to_owned()).unwrap_or_default();
        Ok(Response::new(pb::RetrieveIdentityProviderIntentResponse {
            details: Some(details(&info.details)),
            idp_information: Some(pb::IdpInformation {
                idp_id: info.idp_id.as_str().to_owned(),
                user_id: info.external_user_id,
                user_name: info.external_username,
                raw_information: raw,
                access,
            }),
            user_id,
        }))
    }
}

/// Query of the providers' redirect back to `/idps/callback`.
#[derive(Debug, serde::Deserialize)]
pub struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /idps/callback`: finishes a redirect intent. Answers 302 to the intent's own success or failure
/// URL, or 400 when the state names no intent — never a redirect to a URL taken from this request.
pub async fn callback(
    State(idps): State<Idps>,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> HttpResponse {
    let params = match query {
        Ok(Query(CallbackQuery { state, code, error, error_description })) => {
            CallbackParams { state, code, error, error_description }
        }
        // A query that does not even parse carries no usable state.
        Err(_) => CallbackParams::default(),
    };
    match idps.callback(params).await {
        Ok(CallbackOutcome::Redirect(url)) => {
            let mut resp = http::StatusCode::FOUND.into_response();
            match http::HeaderValue::from_str(&url) {
                Ok(location) => {
                    resp.headers_mut().insert(http::header::LOCATION, location);
                    resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
                    resp
                }
                Err(_) => {
                    (http::StatusCode::INTERNAL_SERVER_ERROR, "redirect URL is not a valid header").into_response()
                }
            }
        }
        Ok(CallbackOutcome::BadRequest(message)) => (http::StatusCode::BAD_REQUEST, message).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "IdP callback failed");
            (http::StatusCode::INTERNAL_SERVER_ERROR, "the login could not be finished; try again").into_response()
        }
    }
}
