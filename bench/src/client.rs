//! One client, three protocols: native gRPC (tonic over HTTP/2), gRPC-web frames and REST/JSON (both
//! hyper over HTTP/1.1 keep-alive). Every scenario calls [`Client::call`] with a gRPC path and a typed
//! request, so the three protocols carry exactly the same messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// The wire protocols a scenario runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Protocol {
    /// tonic client, HTTP/2 streams.
    Grpc,
    /// `application/grpc-web+proto` over HTTP/1.1.
    GrpcWeb,
    /// REST/JSON over HTTP/1.1 at the `google.api.http` paths.
    Json,
}

impl Protocol {
    /// Every protocol, in report order.
    pub const ALL: [Protocol; 3] = [Protocol::Grpc, Protocol::GrpcWeb, Protocol::Json];

    /// Name used in the table and the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Json => "json",
        }
    }
}

/// A failed call as the client saw it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// gRPC code (for JSON: the `code` of the error body; for transport failures: Unavailable).
    pub code: Code,
    /// True when no answer arrived at all (connect or I/O error).
    pub transport: bool,
    /// The error message, for diagnostics.
    pub message: String,
}

impl Failure {
    fn transport(message: impl ToString) -> Self {
        Self { code: Code::Unavailable, transport: true, message: message.to_string() }
    }

    fn status(code: Code, message: String) -> Self {
        Self { code, transport: false, message }
    }

    /// The bucket this failure is counted in: the gRPC code name, or `TRANSPORT`.
    pub fn kind(&self) -> String {
        if self.transport { "TRANSPORT".to_owned() } else { code_name(self.code).to_owned() }
    }
}

/// The canonical upper-case name of a gRPC code, as in the gRPC specification.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A REST binding prepared once, so a call only fills in the template.
#[derive(Debug, Clone)]
struct Route {
    method: http::Method,
    /// Literal pieces and variable names, alternating: `[lit, var, lit, …]`.
    template: Vec<Piece>,
    body: Body,
    /// The answer is the message itself (zitadel dialect); other dialects (authentik's enum names,
    /// explicit nulls, a `response_body` field) are only checked to be JSON, the scenarios never read them.
    typed_answer: bool,
}

/// What goes into the HTTP body of a REST call.
#[derive(Debug, Clone)]
enum Body {
    /// Nothing: every field is a path variable (the scenarios put nothing in a query).
    None,
    /// The request without its path variables (`body: "*"`).
    Whole,
    /// One field of the request, by its JSON name (`body: "flow"`).
    Field(String),
}

#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    Variable(String),
}

/// A protocol-specific client with its own connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    protocol: Protocol,
    base: String,
    authorization: Option<String>,
    channels: Vec<Channel>,
    next: AtomicUsize,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    /// HTTP/1.1 carries one request per connection at a time: this bounds requests to the connection count.
    http_slots: Semaphore,
    routes: HashMap<String, Route>,
}

impl Client {
    /// A client of `protocol` to `addr` with `connections` TCP connections and an optional bearer token.
    pub async fn connect(
        protocol: Protocol,
        addr: SocketAddr,
        connections: usize,
        token: Option<&str>,
    ) -> Result<Self, String> {
        let connections = connections.max(1);
        let base = format!("http://{addr}");
        let mut channels = Vec::new();
        if protocol == Protocol::Grpc {
            for _ in 0..connections {
                // One endpoint per connection: a tonic Channel multiplexes all its calls over one HTTP/2 connection.
                let channel = Endpoint::from_shared(base.clone())
                    .map_err(|e| format!("endpoint {base}: {e}"))?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(10))
                    .connect()
                    .await
                    .map_err(|e| format!("connect {base}: {e}"))?;
                channels.push(channel);
            }
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let routes = routes();
        Ok(Self {
            inner: Arc::new(Inner {
                protocol,
                base,
                authorization: token.map(|t| format!("Bearer {t}")),
                channels,
                next: AtomicUsize::new(0),
                http,
                http_slots: Semaphore::new(connections),
                routes,
            }),
        })
    }

    /// Calls `path` (`/pkg.Service/Method`) with `req`.
    pub async fn call<Req, Resp>(&self, path: &'static str, req: Req) -> Result<Resp, Failure>
    where
        Req: prost::Message + Serialize + Send + Sync + 'static,
        Resp: prost::Message + DeserializeOwned + Default + Send + Sync + 'static,
    {
        match self.inner.protocol {
            Protocol::Grpc => self.grpc(path, req).await,
            Protocol::GrpcWeb => self.grpc_web(path, req).await,
            Protocol::Json => self.json(path, req).await,
        }
    }

    async fn grpc<Req, Resp>(&self, path: &'static str, req: Req) -> Result<Resp, Failure>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let Some(channel) = self.inner.channels.get(n % self.inner.channels.len().max(1)) else {
            return Err(Failure::transport("no gRPC channel"));
        };
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.map_err(Failure::transport)?;
        let mut request = tonic::Request::new(req);
        if let Some(auth) = &self.inner.authorization {
            let value = auth.parse().map_err(|_| Failure::transport("token is not ASCII"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        grpc.unary(request, PathAndQuery::from_static(path), codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Failure::status(s.code(), s.message().to_owned()))
    }

    /// Sends one HTTP/1.1 request on a pooled keep-alive connection; answers status, headers and body.
    async fn send(&self, request: http::Request<Full<Bytes>>) -> Result<(u16, http::HeaderMap, Bytes), Failure> {
        let _slot = self.inner.http_slots.acquire().await.map_err(Failure::transport)?;
        let response = self.inner.http.request(request).await.map_err(Failure::transport)?;
        let (parts, body) = response.into_parts();
        // The whole body is read before the slot is released, so the connection is back in the pool for the next caller.
        let bytes = body.collect().await.map_err(Failure::transport)?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, bytes))
    }

    async fn grpc_web<Req, Resp>(&self, path: &'static str, req: Req) -> Result<Resp, Failure>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let msg = req.encode_to_vec();
        let len = u32::try_from(msg.len()).map_err(|_| Failure::transport("request too large"))?;
        let mut body = BytesMut::with_capacity(msg.len() + 5);
        body.put_u8(0);
        body.put_u32(len);
        body.put_slice(&msg);
        let mut builder = http::Request::post(format!("{}{path}", self.inner.base))
            .header(http::header::CONTENT_TYPE, "application/grpc-web+proto")
            .header("x-grpc-web", "1");
        if let Some(auth) = &self.inner.authorization {
            builder = builder.header(http::header::AUTHORIZATION, auth);
        }
        let request = builder.body(Full::new(body.freeze())).map_err(Failure::transport)?;
        let (status, headers, bytes) = self.send(request).await?;
        decode_grpc_web(status, &headers, bytes)
    }

    async fn json<Req, Resp>(&self, path: &'static str, req: Req) -> Result<Resp, Failure>
    where
        Req: Serialize,
        Resp: DeserializeOwned + Default,
    {
        let Some(route) = self.inner.routes.get(path) else {
            return Err(Failure::transport(format!("no REST binding for {path}")));
        };
        let mut json = serde_json::to_value(&req).map_err(Failure::transport)?;
        let mut url = self.inner.base.clone();
        if let Some(object) = json.as_object_mut() {
            for piece in &route.template {
                match piece {
                    Piece::Literal(text) => url.push_str(text),
                    Piece::Variable(name) => {
                        let value = object.remove(name);
                        let value = value.as_ref().and_then(serde_json::Value::as_str).unwrap_or_default();
                        url.extend(percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC));
                    }
                }
            }
        }
        let body = match &route.body {
            Body::None => None,
            Body::Whole => Some(json),
            Body::Field(name) => Some(json.get_mut(name).map(serde_json::Value::take).unwrap_or_default()),
        };
        let mut builder = http::Request::builder().method(route.method.clone()).uri(url);
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(auth) = &self.inner.authorization {
            builder = builder.header(http::header::AUTHORIZATION, auth);
        }
        let body = match body {
            Some(value) => Bytes::from(serde_json::to_vec(&value).map_err(Failure::transport)?),
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(body)).map_err(Failure::transport)?;
        let (status, _, bytes) = self.send(request).await?;
        if (200..300).contains(&status) {
            if !route.typed_answer {
                // 204 answers carry no body at all.
                if !bytes.is_empty() {
                    serde_json::from_slice::<serde_json::Value>(&bytes)
                        .map_err(|e| Failure::status(Code::Internal, e.to_string()))?;
                }
                return Ok(Resp::default());
            }
            return serde_json::from_slice(&bytes).map_err(|e| Failure::status(Code::Internal, e.to_string()));
        }
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let code = body.get("code").and_then(serde_json::Value::as_i64).and_then(|c| i32::try_from(c).ok());
        let message = ["message", "detail"]
            .iter()
            .find_map(|key| body.get(*key).and_then(serde_json::Value::as_str))
            .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_owned);
        // Dialects without a gRPC code in the error body (authentik) are classified by the HTTP status.
        let code = code.map_or_else(|| code_of_http_status(status), Code::from_i32);
        Err(Failure::status(code, format!("HTTP {status}: {message}")))
    }
}

/// The gRPC code an HTTP error status stands for (the inverse of the gRPC→HTTP table, for the usual codes).
fn code_of_http_status(status: u16) -> Code {
    match status {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        500 => Code::Internal,
        _ => Code::Unknown,
    }
}

/// Decodes a gRPC-web answer: data frames, then a trailer frame (or trailers in the headers).
fn decode_grpc_web<Resp: prost::Message + Default>(
    http_status: u16,
    headers: &http::HeaderMap,
    mut bytes: Bytes,
) -> Result<Resp, Failure> {
    let mut message = None;
    let mut status = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<i32>().ok());
    let mut text = headers.get("grpc-message").and_then(|v| v.to_str().ok()).map(str::to_owned);
    while bytes.remaining() >= 5 {
        let flag = bytes.get_u8();
        let len = usize::try_from(bytes.get_u32()).unwrap_or(usize::MAX);
        let frame = bytes.split_to(len.min(bytes.remaining()));
        if flag & 0x80 == 0 {
            message = Some(frame);
            continue;
        }
        for line in String::from_utf8_lossy(&frame).split("\r\n") {
            let Some((key, value)) = line.split_once(':') else { continue };
            match key.trim().to_ascii_lowercase().as_str() {
                "grpc-status" => status = value.trim().parse().ok(),
                "grpc-message" => text = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    match status {
        Some(0) => match message {
            Some(frame) => Resp::decode(frame).map_err(|e| Failure::status(Code::Internal, e.to_string())),
            None => Ok(Resp::default()),
        },
        Some(code) => Err(Failure::status(Code::from_i32(code), text.unwrap_or_default())),
        None => Err(Failure::status(Code::Unknown, format!("HTTP {http_status} without grpc-status"))),
    }
}

/// The primary REST binding of every RPC, keyed by gRPC path.
fn routes() -> HashMap<String, Route> {
    let mut routes = HashMap::new();
    for binding in flowgate::pb::http_bindings() {
        let path = binding.grpc_path();
        // The first binding is the rule itself; additional bindings (v2beta paths) are aliases.
        if routes.contains_key(&path) || !binding.media_type.is_empty() {
            continue;
        }
        let Ok(method) = http::Method::from_bytes(binding.verb.as_bytes()) else { continue };
        let body = match binding.body.as_str() {
            "" => Body::None,
            "*" => Body::Whole,
            field => Body::Field(camel(field)),
        };
        let typed_answer = binding.dialect == flowgate_gateway::Dialect::Zitadel && binding.response_body.is_empty();
        routes.insert(path, Route { method, template: parse_template(&binding.path), body, typed_answer });
    }
    routes
}

/// Splits `/v2/sessions/{session_id}` into literals and variables (JSON names, camelCase).
fn parse_template(template: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        pieces.push(Piece::Literal(rest[..start].to_owned()));
        let Some(len) = rest[start..].find('}') else { break };
        let inner = &rest[start + 1..start + len];
        let name = inner.split('=').next().unwrap_or(inner);
        pieces.push(Piece::Variable(camel(name)));
        rest = &rest[start + len + 1..];
    }
    pieces.push(Piece::Literal(rest.to_owned()));
    pieces
}

/// `session_id` → `sessionId`, the pbjson field name.
fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}
