//! Identity providers: IdP configurations, intents (redirect and LDAP logins), user links, and the
//! connector port to external providers.

pub mod crypto;
pub mod model;
pub mod ports;
pub mod redirect;
mod service;
pub mod validate;

pub use crypto::SecretBox;
pub use model::*;
pub use ports::{
    AuthRequest, CodeExchange, ExternalUser, IDP_LINK_EXISTS, IDP_LINK_NOT_FOUND, IDP_NOT_FOUND, INTENT_NOT_FOUND,
    IdpConnector, IdpRepo, IdpRepos, IdpStateChange, IdpUpdate, IntentRepo, IntentSuccess, LdapProvider, LinkRepo,
    NewIdpRecord, NewIntentRecord, RedirectKind, RedirectProvider,
};
pub use redirect::RedirectAllowlist;
pub use service::{
    CALLBACK_PATH, DEFAULT_INTENT_LIFETIME, IDP_INACTIVE, IDP_INTENT_EXPIRED, IDP_INTENT_NOT_SUCCEEDED,
    IDP_INTENT_OTHER_USER, IDP_INTENT_TOKEN_INVALID, IDP_LDAP_LOGIN_FAILED, IDP_LINKING_NOT_ALLOWED, IDP_STATE,
    IDP_TYPE_MISMATCH, IDP_TYPE_NOT_IMPLEMENTED, IdpConfig, IdpInput, IdpLinkChecker, Idps, LDAP_LOGIN_FAILED_MESSAGE,
    LdapInput, LdapIntent, OAuthInput, OidcInput, ProviderInput, STARTED_INTENT_LIFETIME, TYPE_NOT_IMPLEMENTED_MESSAGE,
    TemplateInput,
};
