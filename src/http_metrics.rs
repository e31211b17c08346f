//! Prometheus metrics: requests by service, method, protocol and status, latency histograms, and
//! database pool use. The registry is a value owned by the server, not a process global.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use flowgate_gateway::MatchedRpc;
use http::{HeaderMap, StatusCode};
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    pub fn of(headers: &HeaderMap) -> Self {
        let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if ct.starts_with("application/grpc-web") {
            Protocol::GrpcWeb
        } else if ct.starts_with("application/grpc") {
            Protocol::Grpc
        } else {
            Protocol::Http
        }
    }

    /// The `protocol` label and log field.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Http => "json",
        }
    }
}

/// The `service` and `method` labels of one RPC. Shared text, so that counting a call copies none.
#[derive(Debug, Clone)]
pub struct RpcName {
    service: Arc<str>,
    method: Arc<str>,
}

impl RpcName {
    fn new(service: &str, method: &str) -> Self {
        Self { service: service.into(), method: method.into() }
    }
}

/// The `status` label: a gRPC code name (`Ok`, `NotFound`, …) or an HTTP status number.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
enum Status {
    Grpc(&'static str),
    Http(StatusCode),
}

impl EncodeLabelValue for Status {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Status::Grpc(name) => EncodeLabelValue::encode(name, encoder),
            Status::Http(code) => EncodeLabelValue::encode(&code.as_str(), encoder),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: Arc<str>,
    method: Arc<str>,
    protocol: &'static str,
    status: Status,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    service: Arc<str>,
    method: Arc<str>,
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
    /// The labels of every RPC known at start-up, by gRPC path.
    rpcs: HashMap<Box<str>, RpcName>,
    /// Requests that matched no RPC (operational endpoints, unmatched REST paths).
    none: RpcName,
    /// Paths that name no RPC we serve.
    unknown: RpcName,
}

impl HttpMetrics {
    /// A registry with flowgate's instruments; `pool` is read at every scrape, `rpc_paths`
    /// (`/pkg.Service/Method`) are the RPCs whose labels are built once here rather than per call.
    pub fn new(pool: Arc<dyn PoolGauge>, rpc_paths: impl IntoIterator<Item = String>) -> Self {
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
        let rpcs = rpc_paths
            .into_iter()
            .filter_map(|path| {
                let (service, method) = grpc_parts(&path)?;
                let name = RpcName::new(service, method);
                Some((path.into_boxed_str(), name))
            })
            .collect();
        Self {
            registry,
            requests,
            latency,
            pool_open,
            pool_idle,
            pool_max,
            pool,
            rpcs,
            none: RpcName::new("none", "none"),
            unknown: RpcName::new("unknown", "unknown"),
        }
    }

    /// The labels of the RPC at gRPC `path`; a path outside the start-up set costs two copies.
    fn rpc(&self, path: &str) -> RpcName {
        if let Some(name) = self.rpcs.get(path) {
            return name.clone();
        }
        match grpc_parts(path) {
            Some((service, method)) => RpcName::new(service, method),
            None => self.unknown.clone(),
        }
    }

    fn record(&self, rpc: RpcName, protocol: Protocol, status: Status, started: Instant) {
        let RpcName { service, method } = rpc;
        let protocol = protocol.label();
        let labels = RequestLabels { service, method, protocol, status };
        self.requests.get_or_create(&labels).inc();
        let RequestLabels { service, method, .. } = labels;
        self.latency
            .get_or_create(&LatencyLabels { service, method, protocol })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records a REST/JSON or operational request from its answer: the RPC the gateway matched (or
    /// "none") and the HTTP status.
    pub fn record_http(&self, res: &Response, started: Instant) {
        let rpc = match res.extensions().get::<MatchedRpc>() {
            Some(MatchedRpc(path)) => self.rpc(path),
            None => self.none.clone(),
        };
        self.record(rpc, Protocol::Http, Status::Http(res.status()), started);
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

/// Splits `/pkg.Service/Method` into its parts; anything else is no RPC (labelled "unknown"), so that
/// random paths cannot blow up label cardinality.
fn grpc_parts(path: &str) -> Option<(&str, &str)> {
    let mut it = path.trim_start_matches('/').splitn(2, '/');
    match (it.next(), it.next()) {
        (Some(s), Some(m)) if !s.is_empty() && !m.is_empty() && !m.contains('/') => Some((s, m)),
        _ => None,
    }
}

/// Records one native gRPC or gRPC-web call once its `grpc-status` is known; made before the call
/// runs, so nothing of the request has to outlive it.
pub struct Recorder {
    metrics: Arc<HttpMetrics>,
    rpc: RpcName,
    protocol: Protocol,
    started: Instant,
}

impl Recorder {
    /// A recorder for a call to gRPC `path` that started at `started`.
    pub fn new(metrics: &Arc<HttpMetrics>, path: &str, protocol: Protocol, started: Instant) -> Self {
        Self { metrics: metrics.clone(), rpc: metrics.rpc(path), protocol, started }
    }

    /// Records the answer now if it is trailers-only (errors, unknown methods carry the status in the
    /// headers), else when its body yields the trailers.
    pub fn observe(self, res: Response) -> http::Response<ObservedBody> {
        if let Some(status) = res.headers().get("grpc-status").and_then(|v| v.to_str().ok()) {
            self.finish(status);
            return res.map(ObservedBody::unobserved);
        }
        res.map(|inner| ObservedBody { inner, recorder: Some(self) })
    }

    fn finish(self, status: &str) {
        let code = status.parse::<i32>().unwrap_or(2);
        // Unimplemented means the path names no method we serve: do not keep it as a label.
        let rpc = if code == 12 { self.metrics.unknown.clone() } else { self.rpc };
        self.metrics.record(rpc, self.protocol, Status::Grpc(code_name(code)), self.started);
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
pub struct ObservedBody {
    inner: Body,
    recorder: Option<Recorder>,
}

impl ObservedBody {
    /// A body whose call is recorded already (or never is).
    pub fn unobserved(inner: Body) -> Self {
        Self { inner, recorder: None }
    }
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
pub(crate) mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt as _;

    use super::*;

    pub(crate) const GET_INFO: &str = "/flowgate.system.v1.SystemService/GetInfo";

    struct NoPool;

    impl PoolGauge for NoPool {
        fn pool_figures(&self) -> (u32, u32, u32) {
            (0, 0, 0)
        }
    }

    /// Metrics that know GetInfo only.
    pub(crate) fn metrics() -> Arc<HttpMetrics> {
        Arc::new(HttpMetrics::new(Arc::new(NoPool), [GET_INFO.to_owned(), "not a path".to_owned()]))
    }

    /// The exposition lines of `family` (e.g. `flowgate_requests_total`), sorted.
    pub(crate) fn lines(metrics: &HttpMetrics, family: &str) -> Vec<String> {
        let mut lines: Vec<String> =
            metrics.render().lines().filter(|l| l.starts_with(&format!("{family}{{"))).map(str::to_owned).collect();
        lines.sort();
        lines
    }

    fn grpc_answer(status: Option<&'static str>, body: Body) -> Response {
        let mut res = Response::new(body);
        if let Some(status) = status {
            res.headers_mut().insert("grpc-status", http::HeaderValue::from_static(status));
        }
        res
    }

    #[test]
    fn code_names_are_the_labels_tonic_debug_printed() {
        for code in -1..=17 {
            assert_eq!(code_name(code), format!("{:?}", tonic::Code::from_i32(code)), "code {code}");
        }
    }

    #[tokio::test]
    async fn grpc_calls_are_labelled_by_path_parts_and_code_name() {
        let metrics = metrics();
        let started = Instant::now();
        // Trailers-only: recorded at once.
        drop(Recorder::new(&metrics, GET_INFO, Protocol::Grpc, started).observe(grpc_answer(Some("0"), Body::empty())));
        // A path outside the start-up set, status in the trailers.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("5"));
        let frames = futures::stream::iter([Ok::<_, Infallible>(Frame::<Bytes>::trailers(trailers))]);
        let body = Body::new(http_body_util::StreamBody::new(frames));
        let res = Recorder::new(&metrics, "/grpc.health.v1.Health/Check", Protocol::GrpcWeb, started)
            .observe(grpc_answer(None, body));
        res.into_body().collect().await.expect("body");
        // Unimplemented: the path is not kept.
        drop(
            Recorder::new(&metrics, "/x.Y/Z", Protocol::Grpc, started).observe(grpc_answer(Some("12"), Body::empty())),
        );
        // The client left before the trailers.
        drop(Recorder::new(&metrics, GET_INFO, Protocol::Grpc, started).observe(grpc_answer(None, Body::empty())));
        assert_eq!(
            lines(&metrics, "flowgate_requests_total"),
            [
                r#"flowgate_requests_total{service="flowgate.system.v1.SystemService",method="GetInfo",protocol="grpc",status="Cancelled"} 1"#,
                r#"flowgate_requests_total{service="flowgate.system.v1.SystemService",method="GetInfo",protocol="grpc",status="Ok"} 1"#,
                r#"flowgate_requests_total{service="grpc.health.v1.Health",method="Check",protocol="grpc-web",status="NotFound"} 1"#,
                r#"flowgate_requests_total{service="unknown",method="unknown",protocol="grpc",status="Unimplemented"} 1"#,
            ]
        );
        assert_eq!(
            lines(&metrics, "flowgate_request_duration_seconds_count"),
            [
                r#"flowgate_request_duration_seconds_count{service="flowgate.system.v1.SystemService",method="GetInfo",protocol="grpc"} 2"#,
                r#"flowgate_request_duration_seconds_count{service="grpc.health.v1.Health",method="Check",protocol="grpc-web"} 1"#,
                r#"flowgate_request_duration_seconds_count{service="unknown",method="unknown",protocol="grpc"} 1"#,
            ]
        );
    }

    #[test]
    fn json_requests_are_labelled_by_the_matched_rpc_and_http_status() {
        let metrics = metrics();
        let mut res = Response::new(Body::empty());
        res.extensions_mut().insert(MatchedRpc(GET_INFO.to_owned()));
        metrics.record_http(&res, Instant::now());
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NOT_FOUND;
        metrics.record_http(&res, Instant::now());
        assert_eq!(
            lines(&metrics, "flowgate_requests_total"),
            [
                r#"flowgate_requests_total{service="flowgate.system.v1.SystemService",method="GetInfo",protocol="json",status="200"} 1"#,
                r#"flowgate_requests_total{service="none",method="none",protocol="json",status="404"} 1"#,
            ]
        );
    }
}
