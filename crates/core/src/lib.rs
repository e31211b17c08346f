//! flowgate's domain: types, rules, use cases and the ports they need.
//!
//! Nothing here knows about protobuf, HTTP or SQL; adapters in the root crate and in `flowgate-store`
//! translate to and from these types.

pub mod error;
pub mod event;
pub mod flow;
pub mod identity;
pub mod idp;
pub mod session;
pub mod system;

pub use error::{Error, ErrorKind, FieldViolation, Result};
