//! Generated protobuf code: prost types, tonic servers and clients, pbjson serde impls, the descriptor
//! set and the REST tables. Nothing in here is written by hand.

#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::wildcard_enum_match_arm)]

include!(concat!(env!("OUT_DIR"), "/pb_modules.rs"));

/// Every compiled proto file, encoded with its options (for reflection and the gateway).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The REST bindings read from the `google.api.http` annotations at build time.
pub fn http_bindings() -> Vec<flowgate_gateway::HttpBinding> {
    include!(concat!(env!("OUT_DIR"), "/rest_bindings.rs"))
}

/// Per-service REST handler tables; each handler calls the service's tonic trait method.
pub mod rest {
    include!(concat!(env!("OUT_DIR"), "/rest_handlers.rs"));
}
