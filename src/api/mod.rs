//! Service adapters: protobuf request → core use case → protobuf response. No business rules here.

pub mod admin;
pub mod convert;
pub mod flow;
pub mod idp;
pub mod org;
pub mod session;
pub mod system;
pub mod user;

/// The request id the edge attached to this call (always present behind the server's [`crate::edge::Edge`]).
pub(crate) fn request_id<T>(req: &tonic::Request<T>) -> Option<String> {
    req.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
}
