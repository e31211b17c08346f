//! Generic HTTP/JSON ⇄ gRPC transcoding driven by `google.api.http` annotations.
//!
//! The gateway knows no concrete protos: it reads request/response shapes from a `DescriptorPool`, matches
//! requests against the bindings' path templates, builds the request JSON (body, query string, path captures),
//! calls a [`Handler`] and renders the answer (or the error) in the binding's [`Dialect`].

mod annotations;
mod error;
mod handler;
mod plan;
mod render;
mod request;
mod template;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use futures::FutureExt;
use http::header::{ALLOW, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost_reflect::DescriptorPool;
use serde_json::{Map, Value};
use tonic::Code;
use tonic::metadata::{MetadataMap, MetadataValue};

pub use annotations::{Dialect, HttpBinding, OptionNames, http_bindings, to_rust_code};
pub use error::http_status_for;
pub use handler::{BoxFuture, Handler, Reply, unary};
pub use ipnet::IpNet;
pub use plan::enum_short_name;

use error::{ErrorInput, decode_details, error_body, status_with_violations};
use plan::{Card, Plans, Ty, Wkt};
use request::{FieldError, Put};
use template::{Router, Template, split_path};

/// Runtime settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest accepted request body in bytes (larger ones get 413).
    pub body_limit: usize,
    /// Peers whose `x-forwarded-for` header is believed and forwarded.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig { body_limit: 1024 * 1024, trusted_proxies: Vec::new() }
    }
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A binding is inconsistent with the descriptors (bad template, unknown field, unknown message, bad verb).
    #[error("binding {binding}: {reason}")]
    Binding {
        /// `<grpc path> <verb> <template>`.
        binding: String,
        /// What is wrong.
        reason: String,
    },
    /// No handler was registered for a bound RPC.
    #[error("binding {binding}: no handler registered for {grpc_path}")]
    MissingHandler {
        /// `<grpc path> <verb> <template>`.
        binding: String,
        /// The gRPC path that lacks a handler.
        grpc_path: String,
    },
}

/// Response extension naming the RPC a request was routed to (`/<service>/<method>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRpc(pub String);

/// Request headers forwarded as gRPC metadata under the same (lower-case) names.
const FORWARDED_HEADERS: [&str; 4] = ["authorization", "x-zitadel-orgid", "user-agent", "x-request-id"];

/// Response metadata a handler may turn into REST response headers. An allowlist, so that gRPC-only metadata
/// (and anything a handler did not mean for browsers) never reaches an HTTP response.
const RESPONSE_HEADERS: [HeaderName; 1] = [CONTENT_DISPOSITION];

/// The message whose REST rendering is its `data`, written raw with its `content_type`.
const HTTP_BODY: &str = "google.api.HttpBody";

#[derive(Debug)]
enum BodySpec {
    None,
    Whole,
    Field(Vec<usize>),
}

#[derive(Debug)]
struct Route {
    binding: HttpBinding,
    grpc_path: String,
    method: Method,
    template: Template,
    shape: String,
    input: usize,
    output: usize,
    vars: Vec<Vec<usize>>,
    body: BodySpec,
    response_body: Option<Vec<usize>>,
    /// The rendered response (the output or its `response_body` field) is a `google.api.HttpBody`.
    raw_body: bool,
    /// Field paths a query parameter may not set (path variables and the body field).
    bound: Vec<Vec<usize>>,
    media_type: String,
    handler: Handler,
}

#[derive(Debug)]
struct Inner {
    pool: DescriptorPool,
    plans: Plans,
    routes: Vec<Route>,
    router: Router,
    config: GatewayConfig,
}

/// The transcoder; cheap to clone.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// A rejection produced by the gateway itself, before or instead of a handler.
struct Reject {
    http: StatusCode,
    status: tonic::Status,
    force_detail: bool,
    allow: Option<String>,
}

impl Reject {
    fn new(http: StatusCode, code: Code, message: String) -> Reject {
        Reject { http, status: tonic::Status::new(code, message), force_detail: true, allow: None }
    }

    fn field(err: FieldError) -> Reject {
        let message = if err.field.is_empty() {
            format!("invalid request: {}", err.description)
        } else {
            format!("invalid value for field `{}`: {}", err.field, err.description)
        };
        let status = status_with_violations(Code::InvalidArgument, &message, &[(err.field, err.description)]);
        Reject { http: StatusCode::BAD_REQUEST, status, force_detail: false, allow: None }
    }
}

impl Gateway {
    /// Builds the route table; fails naming the binding on a bad template, unknown field or missing handler.
    pub fn new(
        pool: DescriptorPool,
        bindings: Vec<HttpBinding>,
        handlers: HashMap<String, Handler>,
        config: GatewayConfig,
    ) -> Result<Gateway, GatewayError> {
        let mut plans = Plans::default();
        let mut routes = Vec::with_capacity(bindings.len());
        for binding in bindings {
            let grpc_path = binding.grpc_path();
            let name = format!("{grpc_path} {} {}", binding.verb, binding.path);
            let fail = |reason: String| GatewayError::Binding { binding: name.clone(), reason };
            let input_desc = pool
                .get_message_by_name(&binding.input)
                .ok_or_else(|| fail(format!("request message {} is not in the pool", binding.input)))?;
            let output_desc = pool
                .get_message_by_name(&binding.output)
                .ok_or_else(|| fail(format!("response message {} is not in the pool", binding.output)))?;
            let input = plans.add(&input_desc);
            let output = plans.add(&output_desc);
            let method = Method::from_bytes(binding.verb.as_bytes()).map_err(|e| fail(format!("bad verb: {e}")))?;
            let template = Template::parse(&binding.path).map_err(|e| fail(format!("bad path template: {e}")))?;
            let mut vars = Vec::with_capacity(template.vars.len());
            for var in &template.vars {
                let names: Vec<&str> = var.field_path.iter().map(String::as_str).collect();
                let path =
                    request::resolve_path(&plans, input, &names).map_err(|e| fail(format!("path variable: {e}")))?;
                let fields = request::fields_along(&plans, input, &path)
                    .ok_or_else(|| fail("path variable does not resolve".into()))?;
                let settable = fields.last().is_some_and(|f| {
                    f.card == Card::Single
                        && matches!(
                            f.ty,
                            Ty::Scalar(_)
                                | Ty::Enum(_)
                                | Ty::Wkt(Wkt::Timestamp | Wkt::Duration | Wkt::FieldMask | Wkt::Wrapper(_))
                        )
                });
                if !settable {
                    return Err(fail(format!("path variable `{}` is not a singular scalar field", names.join("."))));
                }
                vars.push(path);
            }
            let body = match binding.body.as_str() {
                "" => BodySpec::None,
                "*" => BodySpec::Whole,
                field => {
                    let names: Vec<&str> = field.split('.').collect();
                    BodySpec::Field(
                        request::resolve_path(&plans, input, &names).map_err(|e| fail(format!("body: {e}")))?,
                    )
                }
            };
            let response_body = match binding.response_body.as_str() {
                "" => None,
                field => {
                    let names: Vec<&str> = field.split('.').collect();
                    Some(
                        request::resolve_path(&plans, output, &names)
                            .map_err(|e| fail(format!("response_body: {e}")))?,
                    )
                }
            };
            let rendered = match &response_body {
                None => Some(output),
                Some(path) => request::fields_along(&plans, output, path).and_then(|fields| match fields.last() {
                    Some(f) if f.card == Card::Single => match f.ty {
                        Ty::Message(m) => Some(m),
                        Ty::Scalar(_) | Ty::Enum(_) | Ty::Wkt(_) => None,
                    },
                    Some(_) | None => None,
                }),
            };
            let raw_body = rendered.and_then(|m| plans.messages.get(m)).is_some_and(|p| p.full_name == HTTP_BODY);
            let handler = handlers
                .get(&grpc_path)
                .cloned()
                .ok_or_else(|| GatewayError::MissingHandler { binding: name.clone(), grpc_path: grpc_path.clone() })?;
            let mut bound = vars.clone();
            if let BodySpec::Field(p) = &body {
                bound.push(p.clone());
            }
            routes.push(Route {
                shape: template.shape(),
                media_type: binding.media_type.to_ascii_lowercase(),
                binding,
                grpc_path,
                method,
                template,
                input,
                output,
                vars,
                body,
                response_body,
                raw_body,
                bound,
                handler,
            });
        }
        let router = Router::new(routes.iter().map(|r| (r.template.clone(), r.binding.dialect)).collect());
        Ok(Gateway { inner: Arc::new(Inner { pool, plans, routes, router, config }) })
    }

    /// The dialect for errors on `path`: that of the bindings sharing its longest literal prefix, else zitadel.
    pub fn dialect_for_path(&self, path: &str) -> Dialect {
        split_path(path).and_then(|segs| self.inner.router.dialect_for(&segs)).unwrap_or(Dialect::Zitadel)
    }

    /// Renders `status` as an error response in `dialect` (status from the gRPC table unless `http_status` is given).
    pub fn render_error(
        &self,
        dialect: Dialect,
        http_status: Option<StatusCode>,
        status: &tonic::Status,
        request_id: Option<&str>,
    ) -> Response<Body> {
        self.error_response(dialect, http_status, status, request_id, false)
    }

    fn error_response(
        &self,
        dialect: Dialect,
        http_status: Option<StatusCode>,
        status: &tonic::Status,
        request_id: Option<&str>,
        force_detail: bool,
    ) -> Response<Body> {
        let http = http_status.unwrap_or_else(|| {
            // authentik's token authentication sends no `WWW-Authenticate` challenge, so DRF answers a
            // missing or invalid token 403, and authentik's clients expect exactly that.
            if dialect == Dialect::Authentik && status.code() == Code::Unauthenticated {
                StatusCode::FORBIDDEN
            } else {
                http_status_for(status.code())
            }
        });
        let body = error_body(ErrorInput {
            dialect,
            http,
            code: status.code(),
            message: status.message(),
            decoded: decode_details(Some(&self.inner.pool), status.details()),
            request_id,
            force_detail,
        });
        json_response(http, &body)
    }

    fn reject(&self, dialect: Dialect, r: Reject, request_id: Option<&str>) -> Response<Body> {
        let mut resp = self.error_response(dialect, Some(r.http), &r.status, request_id, r.force_detail);
        if let Some(allow) = r.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            resp.headers_mut().insert(ALLOW, allow);
        }
        resp
    }

    /// Transcodes one HTTP request; never panics and answers client mistakes with 4xx.
    pub async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let request_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let rid = request_id.as_deref();
        let path = parts.uri.path().to_owned();
        let Some(segments) = split_path(&path) else {
            return self.reject(Dialect::Zitadel, not_found(Dialect::Zitadel), rid);
        };

        // Routes with a verb see the last segment without its `:verb` suffix.
        let verb_split = segments.last().and_then(|last| last.rfind(':').map(|i| (i, *last))).map(|(i, last)| {
            let mut segs = segments.clone();
            if let Some(l) = segs.last_mut() {
                *l = &last[..i];
            }
            (segs, &last[i + 1..])
        });
        let matches =
            self.inner.router.find(&segments, verb_split.as_ref().map(|(segs, verb)| (segs.as_slice(), *verb)));
        let routes = &self.inner.routes;
        let Some(first_match) = matches.first().and_then(|i| routes.get(*i)) else {
            let dialect = self.inner.router.dialect_for(&segments).unwrap_or(Dialect::Zitadel);
            return self.reject(dialect, not_found(dialect), rid);
        };
        let Some(first) = matches.iter().filter_map(|i| routes.get(*i)).find(|r| r.method == parts.method) else {
            let mut allow: Vec<&str> = Vec::new();
            for r in matches.iter().filter_map(|i| routes.get(*i)) {
                if !allow.contains(&r.method.as_str()) {
                    allow.push(r.method.as_str());
                }
            }
            let dialect = first_match.binding.dialect;
            let message = match dialect {
                Dialect::Authentik => format!("Method \"{}\" not allowed.", parts.method),
                Dialect::Zitadel | Dialect::PingOne => "Method Not Allowed".to_string(),
            };
            let mut r = Reject::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented, message);
            r.allow = Some(allow.join(", "));
            return self.reject(dialect, r, rid);
        };
        let group: Vec<&Route> = matches
            .iter()
            .filter_map(|i| routes.get(*i))
            .filter(|r| r.method == first.method && r.shape == first.shape)
            .collect();

        let content_type = parts.headers.get(CONTENT_TYPE).map(|v| match v.to_str() {
            Ok(s) => s.split(';').next().unwrap_or_default().trim().to_ascii_lowercase(),
            Err(_) => "(invalid)".to_string(),
        });
        let route = if group.len() > 1 && group.iter().any(|r| !r.media_type.is_empty()) {
            let exact = content_type.as_deref().and_then(|ct| group.iter().find(|r| r.media_type == ct));
            let plain =
                || group.iter().find(|r| r.media_type.is_empty() && content_type.as_deref().is_none_or(is_json));
            match exact.or_else(plain) {
                Some(r) => *r,
                None => {
                    let accepted: Vec<&str> = group
                        .iter()
                        .map(|r| if r.media_type.is_empty() { "application/json" } else { r.media_type.as_str() })
                        .collect();
                    let dialect = first.binding.dialect;
                    return self.reject(dialect, unsupported(dialect, content_type.as_deref(), &accepted), rid);
                }
            }
        } else {
            first
        };
        let dialect = route.binding.dialect;
        let mut resp = match self.dispatch(route, parts, body, content_type.as_deref(), verb_split.is_some()).await {
            Ok(resp) => resp,
            Err(r) => self.reject(dialect, r, rid),
        };
        resp.extensions_mut().insert(MatchedRpc(route.grpc_path.clone()));
        resp
    }

    async fn dispatch(
        &self,
        route: &Route,
        parts: http::request::Parts,
        body: Body,
        content_type: Option<&str>,
        has_verb_split: bool,
    ) -> Result<Response<Body>, Reject> {
        let dialect = route.binding.dialect;
        let plans = &self.inner.plans;
        let changes_state = !matches!(route.method, Method::GET | Method::HEAD);
        if let Some(ct) = content_type
            && changes_state
            && !is_json(ct)
            && ct != route.media_type
        {
            let accepted: Vec<&str> = if route.media_type.is_empty() {
                vec!["application/json"]
            } else {
                vec!["application/json", route.media_type.as_str()]
            };
            return Err(unsupported(dialect, Some(ct), &accepted));
        }

        let mut request = Map::new();
        let mut body_value = None;
        if !matches!(route.body, BodySpec::None) {
            let bytes = self.read_body(&parts, body, dialect).await?;
            let empty = bytes.iter().all(u8::is_ascii_whitespace);
            let value: Value = if empty {
                Value::Object(Map::new())
            } else {
                serde_json::from_slice(&bytes).map_err(|e| {
                    let message = match dialect {
                        Dialect::Authentik => format!("JSON parse error - {e}"),
                        Dialect::Zitadel | Dialect::PingOne => format!("malformed JSON: {e}"),
                    };
                    Reject::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
                })?
            };
            match &route.body {
                BodySpec::Whole => {
                    request =
                        request::normalize_message(plans, route.input, &value, dialect, "").map_err(Reject::field)?;
                }
                BodySpec::Field(path) => {
                    let fields = request::fields_along(plans, route.input, path).unwrap_or_default();
                    if let Some(last) = fields.last() {
                        let is_message = last.card == Card::Single && matches!(last.ty, Ty::Message(_));
                        // DRF names a serializer's fields without a prefix: the body *is* the serializer.
                        let dotted = if is_message && dialect == Dialect::Authentik {
                            String::new()
                        } else {
                            fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(".")
                        };
                        if !value.is_null() && (!empty || is_message) {
                            let v = request::normalize_field(plans, last, &value, dialect, &dotted)
                                .map_err(Reject::field)?;
                            request::put(&mut request, &fields, v, Put::Set);
                        }
                    }
                }
                BodySpec::None => {}
            }
            body_value = Some(value);
        }

        if let Some(query) = parts.uri.query() {
            self.apply_query(route, query, &mut request)?;
        }

        let segments = split_path(parts.uri.path()).unwrap_or_default();
        let mut segments: Vec<&str> = segments;
        if route.template.verb.is_some()
            && has_verb_split
            && let Some(last) = segments.last_mut()
            && let Some(i) = last.rfind(':')
        {
            *last = &last[..i];
        }
        let captures = route
            .template
            .captures(&segments)
            .map_err(|e| Reject::field(FieldError { field: String::new(), description: e }))?;
        for (path, text) in route.vars.iter().zip(captures) {
            let fields = request::fields_along(plans, route.input, path).unwrap_or_default();
            let Some(last) = fields.last() else { continue };
            let dotted = fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(".");
            let v = request::text_value(plans, last.ty, &text, dialect, &dotted).map_err(Reject::field)?;
            request::put(&mut request, &fields, v, Put::Set);
        }

        self.fill_update_mask(route, body_value.as_ref(), &mut request);

        let metadata = self.metadata(&parts);
        let extensions = parts.extensions;
        let call = route.handler.call(Value::Object(request), metadata, extensions);
        let result = match std::panic::AssertUnwindSafe(call).catch_unwind().await {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::internal("internal error")),
        };
        let request_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok());
        Ok(match result {
            Ok(reply) => self.render_success(route, reply),
            Err(status) => self.error_response(dialect, None, &status, request_id, false),
        })
    }

    async fn read_body(
        &self,
        parts: &http::request::Parts,
        body: Body,
        dialect: Dialect,
    ) -> Result<bytes::Bytes, Reject> {
        let limit = self.inner.config.body_limit;
        let too_large = || {
            let message = match dialect {
                Dialect::Authentik => format!("Request body too large (limit {limit} bytes)."),
                Dialect::Zitadel | Dialect::PingOne => format!("request body exceeds {limit} bytes"),
            };
            Reject::new(StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted, message)
        };
        let declared =
            parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Err(e) => Err(Reject::new(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                format!("could not read the request body: {e}"),
            )),
        }
    }

    fn apply_query(&self, route: &Route, query: &str, request: &mut Map<String, Value>) -> Result<(), Reject> {
        let plans = &self.inner.plans;
        let dialect = route.binding.dialect;
        // DRF ignores query parameters a view does not know; the other dialects name them.
        let lenient = dialect == Dialect::Authentik;
        let mut seen: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(key), Some(value)) = (form_decode(k), form_decode(v)) else {
                if lenient {
                    continue;
                }
                return Err(Reject::field(FieldError {
                    field: String::new(),
                    description: "query string is not valid UTF-8 after percent-decoding".into(),
                }));
            };
            let found = if matches!(route.body, BodySpec::Whole) {
                None
            } else {
                request::query_fields(plans, route.input, &key)
            };
            let Some((path, fields)) = found else {
                if lenient {
                    continue;
                }
                return Err(Reject::field(FieldError {
                    field: key.clone(),
                    description: format!("unknown query parameter `{key}`"),
                }));
            };
            if route.bound.iter().any(|b| path.starts_with(b)) {
                if lenient {
                    continue;
                }
                return Err(Reject::field(FieldError {
                    field: key.clone(),
                    description: format!("query parameter `{key}` names a field bound by the path or body"),
                }));
            }
            let Some(last) = fields.last() else { continue };
            let dotted = fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(".");
            match last.card {
                Card::Repeated => {
                    let v = request::text_value(plans, last.ty, &value, dialect, &dotted).map_err(Reject::field)?;
                    request::put(request, &fields, v, Put::Append);
                }
                Card::Map(_) => {
                    if lenient {
                        continue;
                    }
                    return Err(Reject::field(FieldError {
                        field: dotted,
                        description: "map fields cannot be set from the query string".into(),
                    }));
                }
                Card::Single => {
                    if seen.contains(&dotted) && !lenient {
                        return Err(Reject::field(FieldError {
                            field: dotted,
                            description: format!("query parameter `{key}` given more than once for a single value"),
                        }));
                    }
                    let v = request::text_value(plans, last.ty, &value, dialect, &dotted).map_err(Reject::field)?;
                    request::put(request, &fields, v, Put::Set);
                    seen.push(dotted);
                }
            }
        }
        Ok(())
    }

    fn fill_update_mask(&self, route: &Route, body: Option<&Value>, request: &mut Map<String, Value>) {
        let plans = &self.inner.plans;
        let Some(body) = body else { return };
        if route.method != Method::PATCH {
            return;
        }
        let Some(plan) = plans.messages.get(route.input) else { return };
        let Some(mask_field) = plan.update_mask.and_then(|i| plan.fields.get(i).map(|f| (i, f))) else { return };
        let (mask_index, mask_field) = mask_field;
        if request.contains_key(&mask_field.json_name) {
            return;
        }
        let mut paths = Vec::new();
        match &route.body {
            BodySpec::Whole => request::mask_paths(plans, route.input, body, "", Some(mask_index), &mut paths),
            BodySpec::Field(path) => {
                let fields = request::fields_along(plans, route.input, path).unwrap_or_default();
                if let (Some(last), Some(_)) = (fields.last(), request::message_at(plans, &fields)) {
                    if let Ty::Message(m) = last.ty {
                        request::mask_paths(plans, m, body, "", None, &mut paths);
                    }
                } else if fields.last().is_some() && !body.is_null() {
                    // A non-message body field is replaced as a whole.
                    paths.extend(fields.last().map(|f| f.name.clone()));
                }
            }
            BodySpec::None => return,
        }
        // JSON object key order is not guaranteed to survive parsing; a sorted mask is deterministic.
        paths.sort();
        request.insert(mask_field.json_name.clone(), serde_json::json!({ "paths": paths }));
    }

    fn metadata(&self, parts: &http::request::Parts) -> MetadataMap {
        let mut md = MetadataMap::new();
        for name in FORWARDED_HEADERS {
            for v in parts.headers.get_all(name) {
                // Values that are not visible ASCII cannot travel as ASCII metadata; drop them rather than fail.
                if let Ok(v) = MetadataValue::try_from(v.as_bytes()) {
                    md.append(name, v);
                }
            }
        }
        let peer = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        // An IPv4 peer on a dual-stack socket shows up as `::ffff:a.b.c.d`; compare it as IPv4.
        let peer = peer.map(|ip| ip.to_canonical());
        if peer.is_some_and(|ip| self.inner.config.trusted_proxies.iter().any(|net| net.contains(&ip))) {
            for v in parts.headers.get_all("x-forwarded-for") {
                if let Ok(v) = MetadataValue::try_from(v.as_bytes()) {
                    md.append("x-forwarded-for", v);
                }
            }
        }
        md
    }

    fn render_success(&self, route: &Route, reply: Reply) -> Response<Body> {
        let Reply { body: value, metadata } = reply;
        let status = StatusCode::from_u16(route.binding.success_code).unwrap_or(StatusCode::OK);
        let mut resp = self.success_body(route, status, value);
        let headers = metadata.into_headers();
        for name in &RESPONSE_HEADERS {
            for v in headers.get_all(name) {
                resp.headers_mut().append(name.clone(), v.clone());
            }
        }
        resp
    }

    fn success_body(&self, route: &Route, status: StatusCode, value: Value) -> Response<Body> {
        if status == StatusCode::NO_CONTENT {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = status;
            return resp;
        }
        let plans = &self.inner.plans;
        let dialect = route.binding.dialect;
        let fields = route.response_body.as_ref().map(|path| request::fields_along(plans, route.output, path));
        let value = match &fields {
            Some(Some(fields)) => render::take_path(value, fields),
            Some(None) | None => value,
        };
        if route.raw_body {
            return match raw_response(status, &value) {
                Some(resp) => resp,
                None => self.error_response(
                    dialect,
                    None,
                    &tonic::Status::internal("the handler answered an HttpBody that cannot be written"),
                    None,
                    false,
                ),
            };
        }
        let rendered = match fields {
            None => render::render_message(plans, route.output, value, dialect),
            Some(fields) => match fields.as_ref().and_then(|f| f.last()) {
                Some(last) => render::render_response_field(plans, last, value, dialect),
                None => value,
            },
        };
        json_response(status, &rendered)
    }
}

/// Writes a pbjson `google.api.HttpBody` (`{"contentType": .., "data": <base64>}`) as a raw response; `None`
/// when the handler's value is not one (bad base64 or content type).
fn raw_response(status: StatusCode, value: &Value) -> Option<Response<Body>> {
    let field = |json: &str, proto: &str| value.get(json).or_else(|| value.get(proto)).and_then(Value::as_str);
    let data = match field("data", "data") {
        Some(text) => request::decode_base64(text).ok()?,
        None => Vec::new(),
    };
    // An unset content type is not an error: the bytes are still the answer, just untyped.
    let content_type = match field("contentType", "content_type") {
        Some(ct) if !ct.is_empty() => HeaderValue::from_str(ct).ok()?,
        Some(_) | None => HeaderValue::from_static("application/octet-stream"),
    };
    let mut resp = Response::new(Body::from(data));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, content_type);
    Some(resp)
}

fn not_found(dialect: Dialect) -> Reject {
    let message = match dialect {
        Dialect::Authentik => "Not found.",
        Dialect::Zitadel => "Not Found",
        Dialect::PingOne => "The requested resource was not found.",
    };
    Reject::new(StatusCode::NOT_FOUND, Code::NotFound, message.to_string())
}

fn unsupported(dialect: Dialect, content_type: Option<&str>, accepted: &[&str]) -> Reject {
    let ct = content_type.unwrap_or("");
    let message = match dialect {
        Dialect::Authentik => format!("Unsupported media type \"{ct}\" in request."),
        Dialect::Zitadel | Dialect::PingOne => {
            format!("unsupported media type \"{ct}\"; accepted: {}", accepted.join(", "))
        }
    };
    Reject::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::InvalidArgument, message)
}

/// `application/json` and any `application/*+json`.
fn is_json(ct: &str) -> bool {
    ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json"))
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn form_decode(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|c| c.into_owned())
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
