//! Connectors for external identity providers: the verifier of JWTs issued by an OpenID provider
//! (the core's [`ExternalTokenVerifier`](flowgate_core::identity::ExternalTokenVerifier) port) and the
//! OIDC / OAuth2 / LDAP login connectors (the core's [`IdpConnector`](flowgate_core::idp::ports::IdpConnector)).

pub mod connector;
mod jwks;
pub mod jwt;

pub use connector::{ConnectorConfig, Connectors};
pub use jwt::{IssuerUrl, JwtSettings, JwtVerifier};
