//! [`IdpRepo`]: IdP configurations, each one row of `idps` and the `idp` aggregate.

use async_trait::async_trait;
use flowgate_core::event::{Details, NewEvent, WriteIntent};
use flowgate_core::identity::{ListQuery, Page, TextMethod};
use flowgate_core::idp::ports::{IDP_NOT_FOUND, INSTANCE_OWNER, IdpRepo, IdpStateChange, IdpUpdate, NewIdpRecord};
use flowgate_core::idp::{
    Idp, IdpFilter, IdpId, IdpKind, IdpState, IdpTemplate, IdpType, LdapConfig, OAuthConfig, OidcConfig,
    ProviderOptions,
};
use flowgate_core::{Error, Result};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseTransaction, EntityTrait, Order, QueryFilter, QueryOrder, Set,
};
use serde_json::{Value, json};

use super::entity::{idp_intents, idps, user_idp_links};
use super::{IDP, IdpRepositories, serialize_error};
use crate::backend::{Backend, TextPosition, text_match};
use crate::error::db_error;
use crate::event_log::{StateError, state};
use crate::identity::{aggregate, corrupt, db_sequence, event, intent, not_found, page, row_details, taken};

/// Error id: AlreadyExists, an IdP with the same id exists (only with a broken id generator).
pub const IDP_ID_TAKEN: &str = "IDP-id-taken";

fn idp_not_found() -> Error {
    not_found(IDP_NOT_FOUND, "IdP not found")
}

/// The name clients see for `idp_type`, in event payloads.
fn type_name(idp_type: IdpType) -> &'static str {
    match idp_type {
        IdpType::Oidc => "oidc",
        IdpType::OAuth => "oauth",
        IdpType::Ldap => "ldap",
        IdpType::GitHub => "github",
        IdpType::Google => "google",
    }
}

/// The configuration as recorded in events: every setting except the sealed secret. Destructured field by
/// field so that a new field must be decided on here (secret or not) before this compiles.
fn config_payload(kind: &IdpKind) -> Value {
    match kind {
        IdpKind::Oidc(OidcConfig {
            issuer,
            client_id,
            client_secret: _,
            scopes,
            is_id_token_mapping,
            use_pkce,
            template,
        }) => json!({
            "issuer": issuer,
            "client_id": client_id,
            "scopes": scopes,
            "is_id_token_mapping": is_id_token_mapping,
            "use_pkce": use_pkce,
            "template": template.map(IdpTemplate::as_str),
        }),
        IdpKind::OAuth(OAuthConfig {
            authorization_endpoint,
            token_endpoint,
            user_endpoint,
            client_id,
            client_secret: _,
            scopes,
            id_attribute,
            use_pkce,
            template,
        }) => json!({
            "authorization_endpoint": authorization_endpoint,
            "token_endpoint": token_endpoint,
            "user_endpoint": user_endpoint,
            "client_id": client_id,
            "scopes": scopes,
            "id_attribute": id_attribute,
            "use_pkce": use_pkce,
            "template": template.map(IdpTemplate::as_str),
        }),
        IdpKind::Ldap(LdapConfig {
            servers,
            start_tls,
            tls_verify,
            root_ca_pem,
            base_dn,
            bind_dn,
            bind_password: _,
            user_base,
            user_object_classes,
            user_filters,
            timeout,
            attributes,
        }) => json!({
            "servers": servers,
            "start_tls": start_tls,
            "tls_verify": tls_verify,
            // A certificate is public, but it is long: the payload records only whether one is set.
            "root_ca_set": root_ca_pem.is_some(),
            "base_dn": base_dn,
            "bind_dn": bind_dn,
            "user_base": user_base,
            "user_object_classes": user_object_classes,
            "user_filters": user_filters,
            "timeout_ms": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            "attributes": serde_json::to_value(attributes).unwrap_or(Value::Null),
        }),
    }
}

fn options_payload(options: &ProviderOptions) -> Value {
    let ProviderOptions { is_linking_allowed, is_creation_allowed, is_auto_creation, is_auto_update } = options;
    json!({
        "is_linking_allowed": is_linking_allowed,
        "is_creation_allowed": is_creation_allowed,
        "is_auto_creation": is_auto_creation,
        "is_auto_update": is_auto_update,
    })
}

/// The event `event_type` recording a whole configuration (`idp.added`, `idp.changed`).
fn config_event(event_type: &str, name: &str, options: &ProviderOptions, kind: &IdpKind) -> NewEvent {
    event(
        event_type,
        json!({
            "name": name,
            "type": type_name(kind.idp_type()),
            "options": options_payload(options),
            "config": config_payload(kind),
        }),
    )
}

/// Writes name, options and configuration into `row`.
fn set_config(row: &mut idps::Model, name: &str, options: &ProviderOptions, kind: &IdpKind) -> Result<(), Error> {
    row.name = name.to_owned();
    row.name_lower = name.to_lowercase();
    row.kind = kind.as_str().to_owned();
    row.template = kind.template().map(|t| t.as_str().to_owned());
    // The configuration keeps its `kind` tag inside, so the JSON alone says how to read it back.
    row.config = serde_json::to_value(kind).map_err(serialize_error("IdP configuration"))?;
    row.options = serde_json::to_value(options).map_err(serialize_error("IdP options"))?;
    Ok(())
}

/// The domain object of an IdP row.
fn idp_from_row(row: idps::Model) -> Result<Idp> {
    let state = IdpState::parse(&row.state).ok_or_else(|| corrupt("IdP state", &row.state))?;
    let kind: IdpKind =
        serde_json::from_value(row.config).map_err(|e| corrupt("configuration of IdP", &format!("{}: {e}", row.id)))?;
    if kind.as_str() != row.kind || kind.template().map(IdpTemplate::as_str) != row.template.as_deref() {
        return Err(corrupt("kind of IdP", &row.id));
    }
    let options: ProviderOptions =
        serde_json::from_value(row.options).map_err(|e| corrupt("options of IdP", &format!("{}: {e}", row.id)))?;
    let details = row_details(row.created_at, row.changed_at, row.sequence, INSTANCE_OWNER)?;
    Ok(Idp { id: row.id.into(), name: row.name, state, options, kind, details })
}

/// `name` compared with `needle` by `method`; the ignore-case methods compare the lower-cased column with
/// the needle lower-cased in Rust, exactly as the writer fills `name_lower`.
fn name_filter(backend: Backend, needle: &str, method: TextMethod) -> Expr {
    let (column, needle, position) = match method {
        TextMethod::Equals => return Expr::col(idps::Column::Name).eq(needle),
        TextMethod::EqualsIgnoreCase => return Expr::col(idps::Column::NameLower).eq(needle.to_lowercase()),
        TextMethod::StartsWith => (idps::Column::Name, needle.to_owned(), TextPosition::Start),
        TextMethod::Contains => (idps::Column::Name, needle.to_owned(), TextPosition::Anywhere),
        TextMethod::EndsWith => (idps::Column::Name, needle.to_owned(), TextPosition::End),
        TextMethod::StartsWithIgnoreCase => (idps::Column::NameLower, needle.to_lowercase(), TextPosition::Start),
        TextMethod::ContainsIgnoreCase => (idps::Column::NameLower, needle.to_lowercase(), TextPosition::Anywhere),
        TextMethod::EndsWithIgnoreCase => (idps::Column::NameLower, needle.to_lowercase(), TextPosition::End),
    };
    text_match(backend, Expr::col(column), &needle, position)
}

fn idp_condition(backend: Backend, filters: &[IdpFilter]) -> Condition {
    filters.iter().fold(Condition::all(), |all, filter| match filter {
        IdpFilter::Name(name, method) => all.add(name_filter(backend, name, *method)),
        IdpFilter::Type(idp_type) => {
            let (kind, template) = idp_type.kind_and_template();
            let template = match template {
                Some(template) => idps::Column::Template.eq(template.as_str()),
                None => idps::Column::Template.is_null(),
            };
            all.add(idps::Column::Kind.eq(kind)).add(template)
        }
    })
}

/// The IdP row `id` inside a write, or NotFound.
async fn idp_row(txn: &DatabaseTransaction, id: &str) -> Result<idps::Model, StateError> {
    Ok(idps::Entity::find_by_id(id).one(txn).await?.ok_or_else(idp_not_found)?)
}

/// A write of `events` on the IdP `id`.
fn idp_intent(id: &str, actor: &str, expected_sequence: Option<u64>, events: Vec<NewEvent>) -> WriteIntent {
    WriteIntent {
        aggregate: aggregate(IDP, id),
        resource_owner: INSTANCE_OWNER.to_owned(),
        creator: actor.to_owned(),
        expected_sequence,
        events,
    }
}

/// A change to an existing IdP, applied inside its write.
#[derive(Debug, Clone)]
enum Change {
    Config(Box<IdpUpdate>),
    State(IdpState),
    Delete,
}

impl IdpRepositories {
    async fn find_idp(&self, id: &str) -> Result<Option<idps::Model>> {
        idps::Entity::find_by_id(id).one(self.store.reader()).await.map_err(db_error)
    }

    /// One write on an existing IdP: reads the row inside the transaction (NotFound when gone), applies
    /// `change` and answers details whose creation date is the row's.
    async fn write_idp(
        &self,
        id: &IdpId,
        expected_sequence: Option<u64>,
        actor: &str,
        events: Vec<NewEvent>,
        change: Change,
    ) -> Result<Details> {
        // Answered before the write: with an expected sequence, a removed IdP would otherwise surface as a
        // sequence mismatch (its `idp.removed` event raised the sequence).
        if self.find_idp(id.as_str()).await?.is_none() {
            return Err(idp_not_found());
        }
        let (created_at, details) = self
            .store
            .write_returning(idp_intent(id.as_str(), actor, expected_sequence, events), |txn, ctx| {
                let (id, change) = (id.as_str().to_owned(), change.clone());
                state(async move {
                    let mut row = idp_row(txn, &id).await?;
                    let created_at = row.created_at;
                    match change {
                        Change::Config(update) => {
                            set_config(&mut row, &update.name, &update.options, &update.kind)?;
                            row.changed_at = ctx.created_at;
                            row.sequence = db_sequence(ctx.sequence)?;
                            idps::ActiveModel::from(row).reset_all().update(txn).await?;
                        }
                        Change::State(target) => {
                            let mut active = idps::ActiveModel::from(row);
                            active.state = Set(target.as_str().to_owned());
                            active.changed_at = Set(ctx.created_at);
                            active.sequence = Set(db_sequence(ctx.sequence)?);
                            active.update(txn).await?;
                        }
                        Change::Delete => {
                            // Children first and explicitly, so both engines behave alike; the foreign keys'
                            // cascades are only the backstop.
                            user_idp_links::Entity::delete_many()
                                .filter(user_idp_links::Column::IdpId.eq(id.as_str()))
                                .exec(txn)
                                .await?;
                            idp_intents::Entity::delete_many()
                                .filter(idp_intents::Column::IdpId.eq(id.as_str()))
                                .exec(txn)
                                .await?;
                            idps::Entity::delete_by_id(id.as_str()).exec(txn).await?;
                        }
                    }
                    Ok(created_at)
                })
            })
            .await?;
        Ok(Details { creation_date: created_at, ..details })
    }
}

#[async_trait]
impl IdpRepo for IdpRepositories {
    async fn create(&self, idp: &NewIdpRecord, actor: &str) -> Result<Idp> {
        let NewIdpRecord { id, name, options, kind } = idp;
        let mut template = idps::Model {
            id: id.as_str().to_owned(),
            name: String::new(),
            name_lower: String::new(),
            state: IdpState::Active.as_str().to_owned(),
            kind: String::new(),
            template: None,
            config: Value::Null,
            options: Value::Null,
            created_at: chrono::DateTime::<chrono::Utc>::MIN_UTC,
            changed_at: chrono::DateTime::<chrono::Utc>::MIN_UTC,
            sequence: 0,
        };
        set_config(&mut template, name, options, kind)?;
        let events = vec![config_event("idp.added", name, options, kind)];
        let (row, _) = self
            .store
            .write_returning(intent(IDP, id.as_str(), INSTANCE_OWNER, actor, events), |txn, ctx| {
                let mut row = template.clone();
                state(async move {
                    row.created_at = ctx.created_at;
                    row.changed_at = ctx.created_at;
                    row.sequence = db_sequence(ctx.sequence)?;
                    idps::Entity::insert(idps::ActiveModel::from(row.clone()).reset_all())
                        .exec_without_returning(txn)
                        .await
                        .map_err(|e| taken(e, &[], (IDP_ID_TAKEN, "an IdP with this id exists already")))?;
                    Ok(row)
                })
            })
            .await?;
        idp_from_row(row)
    }

    async fn get(&self, id: &IdpId) -> Result<Option<Idp>> {
        self.find_idp(id.as_str()).await?.map(idp_from_row).transpose()
    }

    async fn list(&self, filters: &[IdpFilter], q: &ListQuery) -> Result<Page<Idp>> {
        let order = if q.asc { Order::Asc } else { Order::Desc };
        let select = idps::Entity::find()
            .filter(idp_condition(self.store.backend(), filters))
            .order_by(idps::Column::CreatedAt, order.clone())
            .order_by(idps::Column::Id, order);
        let (rows, total) = page(&self.store, select, q).await?;
        Ok(Page { items: rows.into_iter().map(idp_from_row).collect::<Result<_>>()?, total })
    }

    async fn update(&self, id: &IdpId, expected_sequence: u64, update: &IdpUpdate, actor: &str) -> Result<Details> {
        let events = vec![config_event("idp.changed", &update.name, &update.options, &update.kind)];
        self.write_idp(id, Some(expected_sequence), actor, events, Change::Config(Box::new(update.clone()))).await
    }

    async fn set_state(&self, id: &IdpId, change: IdpStateChange, actor: &str) -> Result<Details> {
        let target = match change {
            IdpStateChange::Deactivate => IdpState::Inactive,
            IdpStateChange::Reactivate => IdpState::Active,
        };
        let events = vec![event(change.event_type(), json!({}))];
        self.write_idp(id, None, actor, events, Change::State(target)).await
    }

    async fn delete(&self, id: &IdpId, actor: &str) -> Result<Details> {
        let events = vec![event("idp.removed", json!({}))];
        self.write_idp(id, None, actor, events, Change::Delete).await
    }
}

#[cfg(test)]
mod tests {
    use flowgate_core::idp::{LdapAttributes, Sealed};

    use super::*;

    #[test]
    fn payloads_never_carry_secrets() {
        let oidc = IdpKind::Oidc(OidcConfig {
            issuer: "https://issuer.example".into(),
            client_id: "client".into(),
            client_secret: Sealed::from_stored("v1.sealed-client-secret".into()),
            scopes: vec!["openid".into()],
            is_id_token_mapping: false,
            use_pkce: true,
            template: Some(IdpTemplate::Google),
        });
        let ldap = IdpKind::Ldap(LdapConfig {
            servers: vec!["ldaps://ldap.example".into()],
            start_tls: false,
            tls_verify: true,
            root_ca_pem: None,
            base_dn: "dc=example".into(),
            bind_dn: "cn=admin".into(),
            bind_password: Sealed::from_stored("v1.sealed-bind-password".into()),
            user_base: "ou=people".into(),
            user_object_classes: vec!["person".into()],
            user_filters: vec!["uid".into()],
            timeout: std::time::Duration::from_secs(10),
            attributes: LdapAttributes { id_attribute: "uid".into(), ..LdapAttributes::default() },
        });
        for kind in [oidc, ldap] {
            let text = config_event("idp.added", "n", &ProviderOptions::default(), &kind).payload.to_string();
            assert!(!text.contains("v1.sealed"), "{text}");
        }
    }
}
