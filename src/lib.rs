//! flowgate: a headless login-flow, session and identity-federation service.
//!
//! This crate is the edge: generated protobuf code, one adapter per service (protobuf ⇄ core), the
//! single error mapping, configuration, and the server that answers native gRPC, gRPC-web and JSON on
//! one port.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod edge;
pub mod error;
pub mod pb;
pub mod server;

mod http_metrics;
mod notify;
mod request_id;
mod telemetry;
