//! Prometheus metrics: requests by service, method, protocol and status, latency histograms, and
//! database pool use. The registry is a value owned by the server, not a process global.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use flowgate_gateway::MatchedRpc;
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::Instrument;

use crate::request_id::RequestId;

/// How a request reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Native gRPC (`application/grpc`, `+proto`).
    Grpc,
    /// gRPC-web (`application/grpc-web`, `+proto`, `-text`).
    GrpcWeb,
    /// Anything else: REST/JSON and the operational endpoints.
    Http,
}

impl Protocol {
    /// Classifies a request by its Content-Type.
    pub fn of(req: &Request) -> Self {
        let ct = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if ct.starts_with("application/grpc-web") {
            Protocol::GrpcWeb
        } else if ct.starts_with("application/grpc") {
            Protocol::Grpc
        } else {
            Protocol::Http
        }
    }

    fn label(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Http => "json",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    method: String,
    protocol: &'static str,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    service: String,
    method: String,
    protocol: &'static str,
}

/// Live pool figures reported at scrape time.
pub trait PoolGauge: Send + Sync {
    /// (open connections, idle connections, maximum connections).
    fn pool_figures(&self) -> (u32, u32, u32);
}

/// The server's metrics registry and instruments.
pub struct HttpMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    pool_open: Gauge,
    pool_idle: Gauge,
    pool_max: Gauge,
    pool: Arc<dyn PoolGauge>,
}

impl HttpMetrics {
    /// A registry with flowgate's instruments; `pool` is read at every scrape.
    pub fn new(pool: Arc<dyn PoolGauge>) -> Self {
        let mut registry = Registry::with_prefix("flowgate");
        let requests = Family::<RequestLabels, Counter>::default();
        // 0.25 ms … ~8 s: covers a cached GetSession as well as a queued password hash.
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        let (pool_open, pool_idle, pool_max) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("requests", "Requests by service, method, protocol and status", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Request latency until the last byte of the answer",
            latency.clone(),
        );
        registry.register("db_pool_connections", "Open database connections", pool_open.clone());
        registry.register("db_pool_idle_connections", "Idle database connections", pool_idle.clone());
        registry.register("db_pool_max_connections", "Configured maximum of database connections", pool_max.clone());
        Self { registry, requests, latency, pool_open, pool_idle, pool_max, pool }
    }

    fn record(&self, service: &str, method: &str, protocol: Protocol, status: &str, started: Instant) {
        let protocol = protocol.label();
        self.requests
            .get_or_create(&RequestLabels {
                service: service.to_owned(),
                method: method.to_owned(),
                protocol,
                status: status.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels { service: service.to_owned(), method: method.to_owned(), protocol })
            .observe(started.elapsed().as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let (open, idle, max) = self.pool.pool_figures();
        self.pool_open.set(i64::from(open));
        self.pool_idle.set(i64::from(idle));
        self.pool_max.set(i64::from(max));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// Splits `/pkg.Service/Method` into its parts; anything else is "unknown" so that random paths
/// cannot blow up label cardinality.
fn grpc_parts(path: &str) -> (&str, &str) {
    let mut it = path.trim_start_matches('/').splitn(2, '/');
    match (it.next(), it.next()) {
        (Some(s), Some(m)) if !s.is_empty() && !m.is_empty() && !m.contains('/') => (s, m),
        _ => ("unknown", "unknown"),
    }
}

/// Outer middleware: classifies the protocol, opens the request span, and records REST/JSON and
/// operational requests. gRPC and gRPC-web are recorded by [`grpc_middleware`], which sees the
/// trailers before gRPC-web encodes them into the body.
pub async fn middleware(State(metrics): State<Arc<HttpMetrics>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let protocol = Protocol::of(&req);
    req.extensions_mut().insert(protocol);
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let span = tracing::info_span!("request", request_id = %request_id, protocol = protocol.label(), method = %req.method(), path = %req.uri().path());
    let res = next.run(req).instrument(span.clone()).await;
    if protocol == Protocol::Http {
        let (service, method) = match res.extensions().get::<MatchedRpc>() {
            Some(MatchedRpc(path)) => grpc_parts(path),
            None => ("none", "none"),
        };
        metrics.record(service, method, protocol, res.status().as_str(), started);
        span.in_scope(|| {
            tracing::debug!(
                status = res.status().as_u16(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request done"
            )
        });
    }
    res
}

/// Inner middleware on the gRPC router: records the `grpc-status` of native gRPC and gRPC-web calls.
pub async fn grpc_middleware(State(metrics): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let protocol = req.extensions().get::<Protocol>().copied().unwrap_or(Protocol::Grpc);
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
    let recorder = Recorder { metrics, path, protocol, started };
    // Trailers-only answers (errors, unknown methods) carry the status in the headers.
    if let Some(status) = res.headers().get("grpc-status").and_then(|v| v.to_str().ok()) {
        recorder.finish(status);
        return res;
    }
    let (parts, body) = res.into_parts();
    Response::from_parts(parts, Body::new(ObservedBody { inner: body, recorder: Some(recorder) }))
}

struct Recorder {
    metrics: Arc<HttpMetrics>,
    path: String,
    protocol: Protocol,
    started: Instant,
}

impl Recorder {
    fn finish(self, status: &str) {
        let code = status.parse::<i32>().unwrap_or(2);
        // Unimplemented means the path names no method we serve: do not keep it as a label.
        let (service, method) = if code == 12 { ("unknown", "unknown") } else { grpc_parts(&self.path) };
        self.metrics.record(service, method, self.protocol, code_name(code), self.started);
    }
}

/// The name of gRPC status `code` as tonic spells it (`Ok`, `NotFound`, …), without formatting per call.
fn code_name(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "Ok",
        tonic::Code::Cancelled => "Cancelled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

/// A response body that records the call once its trailers pass (or it ends or is dropped early).
struct ObservedBody {
    inner: Body,
    recorder: Option<Recorder>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(recorder) = self.recorder.take()
                {
                    let status = trailers.get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("2");
                    recorder.finish(status);
                }
            }
            Poll::Ready(None) => {
                if let Some(recorder) = self.recorder.take() {
                    recorder.finish("2");
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // The client went away before the trailers: count it as cancelled.
        if let Some(recorder) = self.recorder.take() {
            recorder.finish("1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_labels_tonic_debug_printed() {
        for code in -1..=17 {
            assert_eq!(code_name(code), format!("{:?}", tonic::Code::from_i32(code)), "code {code}");
        }
    }
}
