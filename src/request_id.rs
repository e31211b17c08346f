//! Request ids: taken from `x-request-id` when it is sane, generated otherwise; visible to every
//! protocol as metadata, in logs and error bodies, and echoed in the response header.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;

/// Header carrying the request id in both directions.
pub const HEADER: &str = "x-request-id";

/// The id of the current request, stored in request extensions by [`middleware`].
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Accepts a client id only if it is short and made of log-safe characters, so it cannot forge log
/// lines or bloat headers.
fn acceptable(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = (1..=128).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_owned())
}

/// Axum middleware: attach, propagate and echo the request id.
pub async fn middleware(mut req: Request, next: Next) -> Response {
    let id =
        req.headers().get(HEADER).and_then(acceptable).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut().insert(HEADER, value.clone());
    req.extensions_mut().insert(RequestId(id));
    let mut res = next.run(req).await;
    res.headers_mut().insert(HEADER, value);
    res
}
