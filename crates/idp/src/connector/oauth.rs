//! Plain OAuth2 (GitHub and the like): code exchange, then the user endpoint with the access token.

use flowgate_core::Result;
use flowgate_core::idp::ports::{CONNECTOR_USERINFO_FAILED, CodeExchange, ExternalUser, RedirectProvider};
use oauth2::{AuthType, TokenUrl};
use serde_json::Value;

use super::client::HttpClient;
use super::{config_invalid, exchange_code, fetch_user, profile_from_claims, refused, username};
use crate::jwt::check_fetch_url;

/// Exchanges the code at `token_endpoint`, reads `user_endpoint` and takes the id from `id_attribute`.
pub(crate) async fn exchange(
    http: &HttpClient,
    token_endpoint: &str,
    user_endpoint: &str,
    id_attribute: &str,
    provider: &RedirectProvider,
    exchange: &CodeExchange,
) -> Result<ExternalUser> {
    // The code, the client secret and the access token go to these: https only (http on loopback).
    let token_url = check_fetch_url(token_endpoint).map_err(|reason| config_invalid("token_endpoint", reason))?;
    let user_url = check_fetch_url(user_endpoint).map_err(|reason| config_invalid("user_endpoint", reason))?;
    // Credentials in the body: providers without OpenID discovery (GitHub among them) expect them there.
    let tokens = exchange_code(http, TokenUrl::from_url(token_url), AuthType::RequestBody, provider, exchange).await?;
    let user = fetch_user(http, &user_url, &tokens.access_token, CONNECTOR_USERINFO_FAILED).await?;
    let id = match user.get(id_attribute) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        // GitHub's ids are numbers; the account is linked by their decimal form.
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(_) | Value::Null | Value::Bool(_) | Value::Array(_) | Value::Object(_)) | None => {
            return Err(refused(
                CONNECTOR_USERINFO_FAILED,
                format!("the user endpoint's answer has no usable {id_attribute:?}"),
            ));
        }
    };
    let profile = profile_from_claims(&user);
    Ok(ExternalUser {
        username: username(&profile, &id),
        id,
        raw: Value::Object(user),
        access_token: Some(tokens.access_token),
        id_token: None,
        ldap_attributes: None,
        profile,
    })
}
