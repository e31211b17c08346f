//! Connectors for external identity providers: today the verifier of JWTs issued by an OpenID provider,
//! implementing the core's [`ExternalTokenVerifier`](flowgate_core::identity::ExternalTokenVerifier) port.

mod jwks;
pub mod jwt;

pub use jwt::{IssuerUrl, JwtSettings, JwtVerifier};
