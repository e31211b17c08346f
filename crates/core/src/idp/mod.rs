//! Identity providers: IdP configurations, intents (redirect and LDAP logins), user links, and the
//! connector port to external providers.

pub mod model;
pub mod ports;

pub use model::*;
pub use ports::{
    AuthRequest, CodeExchange, ExternalUser, IDP_LINK_EXISTS, IDP_LINK_NOT_FOUND, IDP_NOT_FOUND, INTENT_NOT_FOUND,
    IdpConnector, IdpRepo, IdpRepos, IdpStateChange, IdpUpdate, IntentRepo, IntentSuccess, LdapProvider, LinkRepo,
    NewIdpRecord, NewIntentRecord, RedirectKind, RedirectProvider,
};
