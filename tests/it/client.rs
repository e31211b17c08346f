//! One client, three protocols: every scenario calls `Client::call` with a gRPC path and a typed
//! request; the client speaks native gRPC, gRPC-web or REST/JSON (finding the REST route in the same
//! binding table the server uses).

use flowgate_gateway::enum_short_name;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;

use crate::harness::{Protocol, Server};

/// A failed call as seen by the client.
#[derive(Debug, Clone)]
pub struct Failure {
    /// gRPC code (for JSON: the `code` of the error body).
    pub code: Code,
    /// HTTP status (JSON and gRPC-web only).
    pub http_status: Option<u16>,
    /// The error message.
    pub message: String,
    /// The JSON error body (JSON only).
    pub body: Option<serde_json::Value>,
}

/// A caller: protocol, bearer token and optional organization header.
#[derive(Clone)]
pub struct Client<'a> {
    server: &'a Server,
    /// Protocol used for every call.
    pub protocol: Protocol,
    token: Option<String>,
    org: Option<String>,
}

fn camel(s: &str) -> String {
    let mut out = String::new();
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

impl<'a> Client<'a> {
    /// An anonymous client.
    pub fn new(server: &'a Server, protocol: Protocol) -> Self {
        Self { server, protocol, token: None, org: None }
    }

    /// The same client with a bearer token.
    pub fn with_token(&self, token: &str) -> Self {
        Self { token: Some(token.to_owned()), ..self.clone() }
    }

    /// The same client acting on another organization (`x-zitadel-orgid`).
    pub fn in_org(&self, org: &str) -> Self {
        Self { org: Some(org.to_owned()), ..self.clone() }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(t) = &self.token {
            h.push(("authorization", format!("Bearer {t}")));
        }
        if let Some(o) = &self.org {
            h.push(("x-zitadel-orgid", o.clone()));
        }
        h
    }

    /// Calls `path` (`/pkg.Service/Method`) with `req`.
    pub async fn call<Req, Resp>(&self, path: &str, req: Req) -> Result<Resp, Failure>
    where
        Req: prost::Message + Serialize + Send + Sync + 'static,
        Resp: prost::Message + DeserializeOwned + Default + Send + Sync + 'static,
    {
        match self.protocol {
            Protocol::Grpc => self.grpc(path, req).await,
            Protocol::GrpcWeb => self.grpc_web(path, req).await,
            Protocol::Json => self.json(path, req).await,
        }
    }

    async fn grpc<Req, Resp>(&self, path: &str, req: Req) -> Result<Resp, Failure>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.server.channel().await);
        grpc.ready().await.expect("channel ready");
        let mut request = tonic::Request::new(req);
        for (k, v) in self.headers() {
            request.metadata_mut().insert(k, v.parse().expect("ascii header"));
        }
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let path = http::uri::PathAndQuery::try_from(path).expect("path");
        grpc.unary(request, path, codec).await.map(tonic::Response::into_inner).map_err(|s| Failure {
            code: s.code(),
            http_status: None,
            message: s.message().to_owned(),
            body: None,
        })
    }

    async fn grpc_web<Req, Resp>(&self, path: &str, req: Req) -> Result<Resp, Failure>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let headers = self.headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = self.server.grpc_web::<Req, Resp>(path, &req, &headers).await;
        if reply.grpc_status == 0 {
            return Ok(reply.message.unwrap_or_default());
        }
        Err(Failure {
            code: Code::from_i32(reply.grpc_status),
            http_status: Some(reply.http_status),
            message: reply.grpc_message,
            body: None,
        })
    }

    async fn json<Req, Resp>(&self, path: &str, req: Req) -> Result<Resp, Failure>
    where
        Req: Serialize,
        Resp: prost::Message + DeserializeOwned + Default,
    {
        let bindings = flowgate::pb::http_bindings();
        let binding =
            bindings.iter().find(|b| b.grpc_path() == path).unwrap_or_else(|| panic!("no REST binding for {path}"));
        let mut json = serde_json::to_value(&req).expect("pbjson serialize");
        if binding.dialect == flowgate_gateway::Dialect::Authentik {
            json = authentik_request(&binding.input, json);
        }
        let object = json.as_object_mut().expect("request is an object");
        // Fill the template's variables from the request and remove them from the body.
        let mut url_path = String::new();
        let mut rest = binding.path.as_str();
        while let Some(start) = rest.find('{') {
            url_path.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("closing brace") + start;
            let var = rest[start + 1..end].split('=').next().expect("name");
            let key = camel(var);
            let value = object.remove(&key).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            url_path.push_str(
                &percent_encoding::utf8_percent_encode(&value, percent_encoding::NON_ALPHANUMERIC).to_string(),
            );
            rest = &rest[end + 1..];
        }
        url_path.push_str(rest);
        let method = reqwest::Method::from_bytes(binding.verb.as_bytes()).expect("verb");
        let mut request = self.server.http().request(method, self.server.url(&url_path));
        if binding.body.is_empty() {
            // No body: the remaining scalar fields go into the query string.
            let mut query = Vec::new();
            for (k, v) in object.iter() {
                match v {
                    serde_json::Value::String(s) => query.push((k.clone(), s.clone())),
                    serde_json::Value::Bool(b) => query.push((k.clone(), b.to_string())),
                    serde_json::Value::Number(n) => query.push((k.clone(), n.to_string())),
                    serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => {}
                }
            }
            request = request.query(&query);
        } else if binding.body == "*" {
            request = request.json(&json);
        } else {
            // A body field: only that field travels in the body; the rest (path variables are gone already)
            // goes into the query string like for body-less bindings.
            let field = object.remove(&camel(&binding.body)).unwrap_or(serde_json::Value::Null);
            request = request.json(&field);
        }
        for (k, v) in self.headers() {
            request = request.header(k, v);
        }
        let res = request.send().await.expect("json send");
        let status = res.status().as_u16();
        let content_type =
            res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let raw = res.bytes().await.expect("body");
        let text = String::from_utf8_lossy(&raw).into_owned();
        if (200..300).contains(&status) {
            let expected = if binding.success_code == 0 { 200 } else { binding.success_code };
            assert_eq!(status, expected, "{path}: success code");
            if status == 204 {
                assert!(text.is_empty(), "{path}: 204 with a body: {text}");
                return Ok(Resp::default());
            }
            if !binding.response_body.is_empty() {
                return Ok(from_response_body::<Resp>(binding, &content_type, &raw, &text));
            }
            if binding.dialect == flowgate_gateway::Dialect::Authentik {
                let value: serde_json::Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
                return Ok(authentik_to_proto::<Resp>(&binding.output, value, &text));
            }
            return Ok(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")));
        }
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} {status}: {e}: {text}"));
        if binding.dialect == flowgate_gateway::Dialect::Authentik {
            // DRF bodies carry no gRPC code: derive it from the HTTP status.
            let code = match status {
                400 => Code::InvalidArgument,
                401 => Code::Unauthenticated,
                403 => Code::PermissionDenied,
                404 => Code::NotFound,
                409 => Code::AlreadyExists,
                412 => Code::FailedPrecondition,
                429 => Code::ResourceExhausted,
                503 => Code::Unavailable,
                _ => Code::Unknown,
            };
            let message = body["detail"].as_str().map_or_else(|| body.to_string(), str::to_owned);
            return Err(Failure { code, http_status: Some(status), message, body: Some(body) });
        }
        let code = body["code"].as_i64().and_then(|c| i32::try_from(c).ok()).unwrap_or(2);
        Err(Failure {
            code: Code::from_i32(code),
            http_status: Some(status),
            message: body["message"].as_str().unwrap_or_default().to_owned(),
            body: Some(body),
        })
    }
}

/// Rebuilds the whole response message when the route answers one field of it (`response_body`): a
/// message, a bare JSON array of a repeated field, or raw bytes of a `google.api.HttpBody`.
#[expect(clippy::wildcard_enum_match_arm, reason = "every kind but HttpBody is read as JSON")]
fn from_response_body<Resp: prost::Message + Default>(
    binding: &flowgate_gateway::HttpBinding,
    content_type: &str,
    raw: &[u8],
    text: &str,
) -> Resp {
    let pool = prost_reflect::DescriptorPool::decode(flowgate::pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let output = pool.get_message_by_name(&binding.output).expect("output message");
    let field = output.get_field_by_name(&binding.response_body).expect("response_body field");
    let mut message = prost_reflect::DynamicMessage::new(output.clone());
    let value = match field.kind() {
        prost_reflect::Kind::Message(m) if m.full_name() == "google.api.HttpBody" => {
            let mut body = prost_reflect::DynamicMessage::new(m);
            body.set_field_by_name("content_type", prost_reflect::Value::String(content_type.to_owned()));
            body.set_field_by_name("data", prost_reflect::Value::Bytes(bytes::Bytes::copy_from_slice(raw)));
            prost_reflect::Value::Message(body)
        }
        _ => {
            let json: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            let wrapped = serde_json::json!({ binding.response_body.clone(): json });
            let wrapped = if binding.dialect == flowgate_gateway::Dialect::Authentik {
                normalise_fields(&output, wrapped, text)
            } else {
                wrapped
            };
            let whole = prost_reflect::DynamicMessage::deserialize(output.clone(), wrapped.clone())
                .unwrap_or_else(|e| panic!("{}: {e}: {wrapped}", binding.output));
            whole.get_field(&field).into_owned()
        }
    };
    message.set_field(&field, value);
    Resp::decode(prost::Message::encode_to_vec(&message).as_slice()).expect("re-decode")
}

/// Writes a pbjson request the way authentik clients do: enum values by their short lower-case name.
fn authentik_request(message: &str, value: serde_json::Value) -> serde_json::Value {
    let pool = prost_reflect::DescriptorPool::decode(flowgate::pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let descriptor = pool.get_message_by_name(message).unwrap_or_else(|| panic!("no message {message}"));
    short_enums(&descriptor, value)
}

#[expect(clippy::wildcard_enum_match_arm, reason = "only enum values change; the rest passes as is")]
fn short_enums(desc: &prost_reflect::MessageDescriptor, value: serde_json::Value) -> serde_json::Value {
    use prost_reflect::Kind;
    use serde_json::Value;
    let Value::Object(obj) = value else { return value };
    let mut out = serde_json::Map::new();
    for (key, v) in obj {
        let Some(field) = desc.get_field_by_json_name(&key).or_else(|| desc.get_field_by_name(&key)) else {
            out.insert(key, v);
            continue;
        };
        let one = |v: Value| -> Value {
            match (field.kind(), v) {
                (Kind::Enum(e), Value::String(name)) => Value::String(enum_short_name(e.name(), &name)),
                (Kind::Enum(e), Value::Number(n)) => {
                    let number = n.as_i64().and_then(|n| i32::try_from(n).ok()).unwrap_or(-1);
                    match e.get_value(number) {
                        Some(v) => Value::String(enum_short_name(e.name(), v.name())),
                        None => Value::Number(n),
                    }
                }
                (Kind::Message(m), v) if !m.full_name().starts_with("google.") => short_enums(&m, v),
                (_, v) => v,
            }
        };
        let v = match v {
            Value::Array(items) if field.is_list() => Value::Array(items.into_iter().map(one).collect()),
            other => one(other),
        };
        out.insert(key, v);
    }
    Value::Object(out)
}

/// Reads an authentik-dialect response (snake_case keys, short lower-case enum names, explicit nulls)
/// into the typed message through the descriptor, checking on the way that every field of the schema is
/// present as the dialect promises.
fn authentik_to_proto<Resp: prost::Message + Default>(message: &str, value: serde_json::Value, text: &str) -> Resp {
    let pool = prost_reflect::DescriptorPool::decode(flowgate::pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let descriptor = pool.get_message_by_name(message).unwrap_or_else(|| panic!("no message {message}"));
    let normalised = normalise(&descriptor, value, text);
    let dynamic = prost_reflect::DynamicMessage::deserialize(descriptor, normalised.clone())
        .unwrap_or_else(|e| panic!("{message}: {e}: {normalised}"));
    Resp::decode(prost::Message::encode_to_vec(&dynamic).as_slice()).expect("re-decode")
}

fn normalise(desc: &prost_reflect::MessageDescriptor, value: serde_json::Value, text: &str) -> serde_json::Value {
    if let serde_json::Value::Object(obj) = &value
        && !desc.full_name().starts_with("google.protobuf.")
    {
        for field in desc.fields() {
            // The dialect writes every key (null where unset); a missing key breaks strict clients.
            assert!(obj.contains_key(field.name()), "{}: key `{}` missing in {text}", desc.full_name(), field.name());
        }
    }
    normalise_fields(desc, value, text)
}

/// [`normalise`] without the every-key check (for the wrapper message of a `response_body`).
#[expect(clippy::wildcard_enum_match_arm, reason = "only enum names and nested messages change; the rest passes as is")]
fn normalise_fields(
    desc: &prost_reflect::MessageDescriptor,
    value: serde_json::Value,
    text: &str,
) -> serde_json::Value {
    use prost_reflect::Kind;
    use serde_json::Value;
    if desc.full_name().starts_with("google.protobuf.") {
        return value;
    }
    let Value::Object(obj) = value else { return value };
    let mut out = serde_json::Map::new();
    for (key, v) in obj {
        let Some(field) = desc.get_field_by_name(&key).or_else(|| desc.get_field_by_json_name(&key)) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        let one = |v: Value| -> Value {
            match field.kind() {
                Kind::Enum(e) => match &v {
                    Value::String(short) => {
                        match e.values().find(|value| enum_short_name(e.name(), value.name()) == *short) {
                            Some(value) => Value::String(value.name().to_owned()),
                            None => v,
                        }
                    }
                    _ => v,
                },
                Kind::Message(m) => normalise(&m, v, text),
                _ => v,
            }
        };
        let v = match v {
            Value::Array(items) if field.is_list() => Value::Array(items.into_iter().map(one).collect()),
            Value::Object(map) if field.is_map() => Value::Object(map),
            other => one(other),
        };
        out.insert(key, v);
    }
    Value::Object(out)
}
