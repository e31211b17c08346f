//! Request ids: taken from `x-request-id` when it is sane, generated otherwise; visible to every
//! protocol as metadata, in logs and error bodies, and echoed in the response header.

use http::{HeaderName, HeaderValue};

/// Header carrying the request id in both directions.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request, stored in request extensions by the edge ([`crate::edge`]).
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// The id of a request whose `x-request-id` is `client`: the client's own when [`acceptable`], else a
/// fresh UUID v4 in simple form. A header value, so accepting a client's id copies no text.
pub fn assign(client: Option<&HeaderValue>) -> HeaderValue {
    match client {
        Some(value) if acceptable(value) => value.clone(),
        _ => {
            let mut buf = [0; uuid::fmt::Simple::LENGTH];
            let id = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
            HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
        }
    }
}

/// Accepts a client id only if it is short and made of log-safe characters, so it cannot forge log
/// lines or bloat headers.
fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}
