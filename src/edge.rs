//! The per-request edge, written as two plain tower services so that every request pays for one pass
//! over its headers and no boxing of its own:
//!
//! - [`Edge`] in front of the whole application: forwarding headers, request id, protocol, request
//!   span, CORS and the metrics of REST/JSON and operational requests;
//! - [`GrpcEdge`] in front of the gRPC services (inside gRPC-web, so that it sees trailers before they
//!   are encoded into the body): authorization and the metrics of native gRPC and gRPC-web calls.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use flowgate_gateway::IpNet;
use http::{HeaderName, HeaderValue};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::cors::{self, CorsLayer};
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

use crate::auth::{Authorizer, Requirement};
use crate::http_metrics::{HttpMetrics, ObservedBody, Protocol, Recorder};
use crate::request_id::{self, RequestId};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const ORG_HEADER: HeaderName = HeaderName::from_static("x-zitadel-orgid");

/// What the CORS layer answers in `Vary` on a cross-origin request that is not a preflight; also sent when
/// the layer is skipped.
const CORS_VARY: HeaderValue = HeaderValue::from_static("origin");

/// Builds [`Edge`]s; its configuration is shared by every clone (the server clones per request).
#[derive(Clone)]
pub struct EdgeLayer {
    shared: Arc<Shared>,
}

struct Shared {
    trusted_proxies: Vec<IpNet>,
    cors: CorsLayer,
    metrics: Arc<HttpMetrics>,
}

impl EdgeLayer {
    /// An edge believing forwarding headers from `trusted_proxies` only, answering CORS with `cors`.
    pub(crate) fn new(trusted_proxies: Vec<IpNet>, cors: CorsLayer, metrics: Arc<HttpMetrics>) -> Self {
        Self { shared: Arc::new(Shared { trusted_proxies, cors, metrics }) }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge { inner, shared: self.shared.clone() }
    }
}

/// The edge every request passes first; see the module documentation.
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    /// `x-forwarded-for` is believed only from configured proxies; from anyone else it is dropped here,
    /// so no protocol (native gRPC included) hands a forged client address to a service.
    fn drop_untrusted_forwarding(&self, req: &mut Request) {
        let trusted = !self.trusted_proxies.is_empty()
            && req.extensions().get::<ConnectInfo<SocketAddr>>().is_some_and(|ConnectInfo(peer)| {
                let ip = peer.ip();
                self.trusted_proxies.iter().any(|net| net.contains(&ip))
            });
        if !trusted {
            req.headers_mut().remove(X_FORWARDED_FOR);
            req.headers_mut().remove(http::header::FORWARDED);
        }
    }
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response> + Clone,
{
    type Response = Response;
    type Error = S::Error;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        self.shared.drop_untrusted_forwarding(&mut req);
        let id = request_id::assign(req.headers().get(request_id::HEADER));
        req.headers_mut().insert(request_id::HEADER, id.clone());
        let protocol = Protocol::of(req.headers());
        req.extensions_mut().insert(protocol);
        req.extensions_mut().insert(RequestId(id.clone()));
        // Field values are only evaluated when the span is enabled; &str fields are recorded as they are.
        let span = tracing::info_span!(
            "request",
            request_id = id.to_str().unwrap_or_default(),
            protocol = protocol.label(),
            method = req.method().as_str(),
            path = req.uri().path(),
        );
        let call = {
            let _entered = span.enter();
            if req.headers().contains_key(http::header::ORIGIN) {
                // CORS for the requests that carry an `Origin` (browsers send it on every cross-origin
                // request, preflights included). The layer copies its configuration and builds a header
                // map on every call, so the rest — native gRPC, servers, CLIs — skip it.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                Call::Cors { fut: self.shared.cors.layer(ready).call(req) }
            } else {
                Call::Plain { fut: self.inner.call(req) }
            }
        };
        EdgeFuture {
            call: call.instrument(span),
            request_id: Some(id),
            // gRPC and gRPC-web are recorded by [`GrpcEdge`], which sees their status.
            http_metrics: (protocol == Protocol::Http).then(|| self.shared.metrics.clone()),
            started,
        }
    }
}

pin_project! {
    /// The answer of an [`Edge`]: the inner service's, with the request id and CORS headers added.
    pub struct EdgeFuture<F> {
        #[pin]
        call: Instrumented<Call<F>>,
        request_id: Option<HeaderValue>,
        http_metrics: Option<Arc<HttpMetrics>>,
        started: Instant,
    }
}

pin_project! {
    #[project = CallProj]
    enum Call<F> {
        Cors { #[pin] fut: cors::ResponseFuture<F> },
        Plain { #[pin] fut: F },
    }
}

impl<F, E> Future for Call<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CallProj::Cors { fut } => fut.poll(cx),
            CallProj::Plain { fut } => {
                let mut res = ready!(fut.poll(cx))?;
                // Same `Vary` as a cross-origin answer, so a cache never hands an answer made for one kind
                // of request to the other.
                res.headers_mut().append(http::header::VARY, CORS_VARY);
                Poll::Ready(Ok(res))
            }
        }
    }
}

impl<F, E> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut res = ready!(this.call.as_mut().poll(cx))?;
        if let Some(metrics) = this.http_metrics.take() {
            metrics.record_http(&res, *this.started);
            this.call.span().in_scope(|| {
                tracing::debug!(
                    status = res.status().as_u16(),
                    elapsed_ms = this.started.elapsed().as_secs_f64() * 1000.0,
                    "request done"
                )
            });
        }
        if let Some(id) = this.request_id.take() {
            res.headers_mut().insert(request_id::HEADER, id);
        }
        Poll::Ready(Ok(res))
    }
}

/// Builds [`GrpcEdge`]s; its state is shared by every clone.
#[derive(Clone)]
pub struct GrpcEdgeLayer {
    shared: Arc<GrpcShared>,
}

struct GrpcShared {
    authorizer: Authorizer,
    metrics: Arc<HttpMetrics>,
}

impl GrpcEdgeLayer {
    /// A gRPC edge deciding with `authorizer` and recording into `metrics`.
    pub(crate) fn new(authorizer: Authorizer, metrics: Arc<HttpMetrics>) -> Self {
        Self { shared: Arc::new(GrpcShared { authorizer, metrics }) }
    }
}

impl<S> Layer<S> for GrpcEdgeLayer {
    type Service = GrpcEdge<S>;

    fn layer(&self, inner: S) -> GrpcEdge<S> {
        GrpcEdge { inner, shared: self.shared.clone() }
    }
}

/// The edge of the gRPC services (native and gRPC-web): authorizes by path before the service runs and
/// records the `grpc-status` of every call.
#[derive(Clone)]
pub struct GrpcEdge<S> {
    inner: S,
    shared: Arc<GrpcShared>,
}

impl<S, B> Service<http::Request<B>> for GrpcEdge<S>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<ObservedBody>;
    type Error = S::Error;
    type Future = GrpcEdgeFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        // gRPC-web requests reach here as gRPC; the outer edge noted what they were.
        let protocol = req.extensions().get::<Protocol>().copied().unwrap_or(Protocol::Grpc);
        let path = req.uri().path();
        let recorder = Recorder::new(&self.shared.metrics, path, protocol, started);
        let requirement = self.shared.authorizer.requirement(path);
        if requirement == Requirement::None {
            return GrpcEdgeFuture { call: GrpcCall::Direct { fut: self.inner.call(req) }, recorder: Some(recorder) };
        }
        // The request body is not `Sync`, so no borrow of the request may live across the await: the few
        // values the decision needs are taken now (header values share their bytes, copying no text).
        let authorization = req.headers().get(http::header::AUTHORIZATION).cloned();
        let org = req.headers().get(ORG_HEADER).cloned();
        let request_id = req.extensions().get::<RequestId>().map(|id| id.0.clone());
        let shared = self.shared.clone();
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let fut = Box::pin(async move {
            fn text(value: &Option<HeaderValue>) -> Option<&str> {
                value.as_ref().and_then(|v| v.to_str().ok())
            }
            match shared.authorizer.authorize(requirement, text(&authorization), text(&org), text(&request_id)).await {
                Ok(ctx) => {
                    if let Some(ctx) = ctx {
                        req.extensions_mut().insert(ctx);
                    }
                    ready.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        });
        GrpcEdgeFuture { call: GrpcCall::Authorizing { fut }, recorder: Some(recorder) }
    }
}

type BoxedCall<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

pin_project! {
    /// The answer of a [`GrpcEdge`], recorded once its status is known.
    pub struct GrpcEdgeFuture<F, E> {
        #[pin]
        call: GrpcCall<F, E>,
        recorder: Option<Recorder>,
    }
}

pin_project! {
    #[project = GrpcCallProj]
    enum GrpcCall<F, E> {
        // Public RPCs (and unknown paths, which the router answers) go straight through.
        Direct { #[pin] fut: F },
        Authorizing { fut: BoxedCall<E> },
    }
}

impl<F, E> Future for GrpcEdgeFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<http::Response<ObservedBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.call.project() {
            GrpcCallProj::Direct { fut } => ready!(fut.poll(cx))?,
            GrpcCallProj::Authorizing { fut } => ready!(fut.as_mut().poll(cx))?,
        };
        Poll::Ready(Ok(match this.recorder.take() {
            Some(recorder) => recorder.observe(res),
            None => res.map(ObservedBody::unobserved),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body;
    use flowgate_gateway::MatchedRpc;
    use tower::ServiceExt as _;
    use tower_http::cors::AllowOrigin;

    use super::*;
    use crate::http_metrics::tests::{GET_INFO, lines, metrics};

    const ALLOWED: &str = "https://login.example.com";

    /// Answers with what it was handed, under `seen-` headers; a REST call of GetInfo is matched like the
    /// gateway does.
    async fn mirror(req: Request) -> Result<Response, Infallible> {
        let mut res = Response::new(Body::empty());
        let seen = res.headers_mut();
        for name in [request_id::HEADER, X_FORWARDED_FOR, http::header::FORWARDED] {
            if let Some(value) = req.headers().get(&name) {
                seen.insert(HeaderName::try_from(format!("seen-{name}")).expect("name"), value.clone());
            }
        }
        if let Some(RequestId(id)) = req.extensions().get::<RequestId>() {
            seen.insert("seen-request-id-extension", id.clone());
        }
        if let Some(protocol) = req.extensions().get::<Protocol>() {
            seen.insert("seen-protocol", HeaderValue::from_static(protocol.label()));
        }
        if req.uri().path() == "/v1/system/info" {
            res.extensions_mut().insert(MatchedRpc(GET_INFO.to_owned()));
        }
        Ok(res)
    }

    fn layer(trusted_proxies: &[&str]) -> (EdgeLayer, Arc<HttpMetrics>) {
        let metrics = metrics();
        let cors = CorsLayer::new().allow_origin(AllowOrigin::list([HeaderValue::from_static(ALLOWED)]));
        let trusted = trusted_proxies.iter().map(|net| net.parse().expect("network")).collect();
        (EdgeLayer::new(trusted, cors, metrics.clone()), metrics)
    }

    fn get(headers: &[(&str, &[u8])]) -> Request {
        let mut req = Request::new(Body::empty());
        *req.uri_mut() = http::Uri::from_static("/v1/system/info");
        for (name, value) in headers {
            req.headers_mut()
                .append(HeaderName::try_from(*name).expect("name"), HeaderValue::from_bytes(value).expect("value"));
        }
        req
    }

    async fn send(layer: &EdgeLayer, req: Request) -> Response {
        match layer.layer(tower::service_fn(mirror)).oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        }
    }

    fn header<'r>(res: &'r Response, name: &str) -> Option<&'r str> {
        res.headers().get(name).map(|v| v.to_str().expect("ascii"))
    }

    #[tokio::test]
    async fn sane_client_request_ids_are_kept_and_others_replaced() {
        let (layer, _) = layer(&[]);
        let longest = "a".repeat(128);
        for id in ["abc-123", "A.b_c:9", &longest] {
            let res = send(&layer, get(&[("x-request-id", id.as_bytes())])).await;
            assert_eq!(header(&res, "x-request-id"), Some(id));
            assert_eq!(header(&res, "seen-x-request-id"), Some(id));
            assert_eq!(header(&res, "seen-request-id-extension"), Some(id));
        }
        let too_long = "a".repeat(129);
        let refused: [&[u8]; 5] = [b"a b\"c", b"", too_long.as_bytes(), "\u{e9}".as_bytes(), b"a/b"];
        for id in refused.into_iter().map(Some).chain([None]) {
            let headers: Vec<(&str, &[u8])> = id.map(|id| ("x-request-id", id)).into_iter().collect();
            let res = send(&layer, get(&headers)).await;
            let assigned = header(&res, "x-request-id").expect("assigned id");
            assert!(
                assigned.len() == 32 && assigned.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{assigned}"
            );
            assert_eq!(header(&res, "seen-x-request-id"), Some(assigned));
            assert_eq!(header(&res, "seen-request-id-extension"), Some(assigned));
        }
    }

    #[tokio::test]
    async fn forwarding_headers_are_dropped_unless_the_peer_is_a_trusted_proxy() {
        let forwarded: [(&str, &[u8]); 2] = [("x-forwarded-for", b"198.51.100.7"), ("forwarded", b"for=198.51.100.7")];
        let cases = [
            (&["10.0.0.0/8"][..], Some("10.1.2.3:5000"), true),
            (&["10.0.0.0/8"][..], Some("192.0.2.1:5000"), false),
            (&["10.0.0.0/8"][..], None, false),
            (&[][..], Some("10.1.2.3:5000"), false),
        ];
        for (trusted, peer, kept) in cases {
            let (layer, _) = layer(trusted);
            let mut req = get(&forwarded);
            if let Some(peer) = peer {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer.parse().expect("address")));
            }
            let res = send(&layer, req).await;
            let seen = (header(&res, "seen-x-forwarded-for"), header(&res, "seen-forwarded"));
            let expected = if kept { (Some("198.51.100.7"), Some("for=198.51.100.7")) } else { (None, None) };
            assert_eq!(seen, expected, "{trusted:?} {peer:?}");
        }
    }

    #[tokio::test]
    async fn answers_without_origin_vary_like_cross_origin_ones() {
        let (layer, _) = layer(&[]);
        let varies = |res: &Response| res.headers().get_all(http::header::VARY).iter().cloned().collect::<Vec<_>>();
        let plain = send(&layer, get(&[])).await;
        assert_eq!(varies(&plain), [CORS_VARY]);
        assert!(plain.headers().keys().all(|name| !name.as_str().starts_with("access-control-")), "{plain:?}");

        let cross_origin = send(&layer, get(&[("origin", ALLOWED.as_bytes())])).await;
        assert_eq!(header(&cross_origin, "access-control-allow-origin"), Some(ALLOWED));
        assert_eq!(varies(&cross_origin), varies(&plain));
        assert!(header(&cross_origin, "seen-x-request-id").is_some(), "the request reached the service");

        // A preflight is answered by CORS alone, with the request id all the same.
        let mut preflight = get(&[("origin", ALLOWED.as_bytes()), ("access-control-request-method", b"POST")]);
        *preflight.method_mut() = http::Method::OPTIONS;
        let res = send(&layer, preflight).await;
        assert_eq!(header(&res, "access-control-allow-origin"), Some(ALLOWED));
        assert!(header(&res, "seen-protocol").is_none(), "the preflight reached the service");
        assert!(header(&res, "x-request-id").is_some());
    }

    #[tokio::test]
    async fn only_json_requests_are_counted_here_and_every_protocol_is_noted() {
        let (layer, metrics) = layer(&[]);
        for (content_type, protocol) in
            [("application/json", "json"), ("application/grpc", "grpc"), ("application/grpc-web+proto", "grpc-web")]
        {
            let res = send(&layer, get(&[("content-type", content_type.as_bytes())])).await;
            assert_eq!(header(&res, "seen-protocol"), Some(protocol));
        }
        assert_eq!(
            lines(&metrics, "flowgate_requests_total"),
            [
                r#"flowgate_requests_total{service="flowgate.system.v1.SystemService",method="GetInfo",protocol="json",status="200"} 1"#
            ]
        );
    }
}
