//! flowgate's domain: types, rules, use cases and the ports they need.
//!
//! Nothing here knows about protobuf, HTTP or SQL; adapters in the root crate and in `flowgate-store`
//! translate to and from these types.

/// Defines an opaque string identifier newtype: `as_str`, `into_string`, `From<String>`/`From<&str>`,
/// `Display`, `AsRef<str>`, and serde as the bare string. One definition for every id of the domain.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Consumes the id and answers its string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

pub mod error;
pub mod event;
pub mod flow;
pub mod identity;
pub mod idp;
pub mod session;
pub mod system;

pub use error::{Error, ErrorKind, FieldViolation, Result};
