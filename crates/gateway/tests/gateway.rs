//! End-to-end tests of the gateway: requests go through `Gateway::handle` against test protos compiled at run time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use base64::Engine;
use flowgate_gateway::{
    Dialect, Gateway, GatewayConfig, GatewayError, Handler, HttpBinding, IpNet, MatchedRpc, OptionNames, Reply,
    http_bindings, to_rust_code, unary,
};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tonic::Code;

/// Include paths: the test protos, and the repository's `proto/` for the published google/api and
/// google/rpc schemas (the gateway reads those generically; nothing flowgate-specific is imported).
const PROTO_DIRS: [&str; 2] =
    [concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proto"), concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto")];

fn pool() -> DescriptorPool {
    let mut compiler = protox::Compiler::new(PROTO_DIRS).unwrap();
    compiler.include_imports(true);
    compiler.open_files(["gwtest/v1/test.proto", "google/rpc/status.proto", "google/rpc/error_details.proto"]).unwrap();
    DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).unwrap()
}

fn names() -> OptionNames {
    OptionNames {
        dialect: "gwtest.v1.dialect".into(),
        success_code: "gwtest.v1.success_code".into(),
        media_type: "gwtest.v1.media_type".into(),
    }
}

/// What a recording handler saw.
#[derive(Debug, Clone)]
struct Seen {
    rpc: String,
    json: Value,
    metadata: HashMap<String, String>,
    marker: Option<u32>,
}

/// A request extension used to prove extensions reach handlers.
#[derive(Debug, Clone)]
struct Marker(u32);

struct Harness {
    gw: Gateway,
    pool: DescriptorPool,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Harness {
    async fn last(&self) -> Seen {
        self.seen.lock().await.last().cloned().expect("a handler was called")
    }

    async fn calls(&self) -> usize {
        self.seen.lock().await.len()
    }
}

fn metadata_map(md: &tonic::metadata::MetadataMap) -> HashMap<String, String> {
    md.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect()
}

/// Packs google.rpc details (type name, proto3 JSON) into status detail bytes using the pool.
fn rpc_status(pool: &DescriptorPool, code: Code, message: &str, details: &[(&str, Value)]) -> bytes::Bytes {
    let status_desc = pool.get_message_by_name("google.rpc.Status").unwrap();
    let mut status = DynamicMessage::new(status_desc);
    status.set_field_by_name("code", prost_reflect::Value::I32(code as i32));
    status.set_field_by_name("message", prost_reflect::Value::String(message.to_string()));
    let any_desc = pool.get_message_by_name("google.protobuf.Any").unwrap();
    let mut list = Vec::new();
    for (type_name, value) in details {
        let desc = pool.get_message_by_name(type_name).unwrap();
        let msg = DynamicMessage::deserialize(desc, value.clone()).unwrap();
        let mut any = DynamicMessage::new(any_desc.clone());
        any.set_field_by_name("type_url", prost_reflect::Value::String(format!("type.googleapis.com/{type_name}")));
        any.set_field_by_name("value", prost_reflect::Value::Bytes(msg.encode_to_vec().into()));
        list.push(prost_reflect::Value::Message(any));
    }
    status.set_field_by_name("details", prost_reflect::Value::List(list));
    status.encode_to_vec().into()
}

fn fail_handler(pool: DescriptorPool, seen: Arc<Mutex<Vec<Seen>>>, rpc: String) -> Handler {
    Handler::from_fn(move |json: Value, md, _ext| {
        let pool = pool.clone();
        let seen = Arc::clone(&seen);
        let rpc = rpc.clone();
        async move {
            seen.lock().await.push(Seen { rpc, json: json.clone(), metadata: metadata_map(&md), marker: None });
            let code = Code::from_i32(json["code"].as_i64().unwrap_or(0) as i32);
            if code == Code::Ok {
                return Ok(json);
            }
            let message = json["message"].as_str().unwrap_or_default().to_string();
            let mut details = Vec::new();
            if let Some(problems) = json["problems"].as_array() {
                details.push(("google.rpc.BadRequest", json!({ "fieldViolations": problems })));
            }
            if let Some(reason) = json["reason"].as_str() {
                details.push(("google.rpc.ErrorInfo", json!({ "reason": reason, "domain": "flowgate.test" })));
            }
            if json["withRequestInfo"] == json!(true) {
                details.push(("google.rpc.RequestInfo", json!({ "requestId": "from-handler" })));
            }
            if details.is_empty() {
                return Err(tonic::Status::new(code, message));
            }
            let bytes = rpc_status(&pool, code, &message, &details);
            Err(tonic::Status::with_details(code, message, bytes))
        }
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypedReq {
    id: String,
    name: String,
    #[serde(default)]
    color: Option<String>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TypedResp {
    greeting: String,
    id: String,
    at: String,
}

#[derive(serde::Deserialize)]
struct SlugReq {
    slug: String,
}

/// pbjson's JSON form of `google.api.HttpBody`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpBodyJson {
    content_type: String,
    data: String,
}

#[derive(serde::Serialize)]
struct ExportResp {
    file: HttpBodyJson,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The export handler: a typed tonic method answering YAML in an HttpBody and setting response metadata.
fn export_handler() -> Handler {
    unary(|req: tonic::Request<SlugReq>| async move {
        let slug = req.into_inner().slug;
        if slug == "missing" {
            return Err(tonic::Status::not_found("Not found."));
        }
        let yaml = format!("version: 1\nmetadata:\n  name: {slug}\n");
        let mut resp = tonic::Response::new(ExportResp {
            file: HttpBodyJson { content_type: "application/yaml".into(), data: b64(yaml.as_bytes()) },
        });
        let disposition = format!("attachment; filename=\"{slug}.yaml\"");
        resp.metadata_mut().insert("content-disposition", disposition.parse().expect("ASCII header value"));
        // Not on the allowlist: must stay out of the REST response.
        resp.metadata_mut().insert("x-internal-note", "secret".parse().expect("ASCII header value"));
        Ok(resp)
    })
}

/// A raw handler answering `google.api.HttpBody` itself, with a content disposition for some slugs.
fn download_handler() -> Handler {
    Handler::from_fn(|json: Value, _md, _ext| async move {
        let slug = json["slug"].as_str().unwrap_or_default().to_string();
        let mut metadata = tonic::metadata::MetadataMap::new();
        let body = match slug.as_str() {
            "untyped" => json!({ "data": b64(&[0, 159, 146, 150]) }),
            "empty" => json!({ "contentType": "text/plain" }),
            "broken" => json!({ "contentType": "text/plain", "data": "%%% not base64" }),
            _ => {
                metadata.append("content-disposition", "inline".parse().expect("ASCII header value"));
                metadata.append("content-disposition", "attachment".parse().expect("ASCII header value"));
                json!({ "contentType": "text/plain; charset=utf-8", "data": b64(format!("hello {slug}").as_bytes()) })
            }
        };
        Ok(Reply { body, metadata })
    })
}

fn handlers(pool: &DescriptorPool, bindings: &[HttpBinding], seen: &Arc<Mutex<Vec<Seen>>>) -> HashMap<String, Handler> {
    let mut map = HashMap::new();
    for b in bindings {
        let rpc = b.grpc_path();
        let seen = Arc::clone(seen);
        let handler = match b.method.as_str() {
            "Fail" | "FailA" | "FailP" => fail_handler(pool.clone(), seen, rpc.clone()),
            "Meta" => Handler::from_fn(move |json, md, ext: http::Extensions| {
                let seen = Arc::clone(&seen);
                let rpc = rpc.clone();
                async move {
                    let metadata = metadata_map(&md);
                    let marker = ext.get::<Marker>().map(|m| m.0);
                    seen.lock().await.push(Seen { rpc, json, metadata: metadata.clone(), marker });
                    Ok(json!({ "metadata": metadata }))
                }
            }),
            "Typed" => unary(|req: tonic::Request<TypedReq>| async move {
                let rid = req.metadata().get("x-request-id").map(|v| v.to_str().unwrap_or("").to_string());
                let has_marker = req.extensions().get::<Marker>().is_some();
                let req = req.into_inner();
                Ok(tonic::Response::new(TypedResp {
                    greeting: format!(
                        "hello {} ({}) rid={} marker={has_marker}",
                        req.name,
                        req.color.unwrap_or_default(),
                        rid.unwrap_or_default()
                    ),
                    id: req.id,
                    at: "2024-01-02T03:04:05.250+00:00".into(),
                }))
            }),
            "GetFlow" => fixed(seen, rpc, |json| {
                json!({
                    "pk": "p1",
                    "slug": json["slug"],
                    "designation": "FLOW_DESIGNATION_AUTHENTICATION",
                    "cacheCount": "5",
                    "created": "2024-01-02T03:04:05.500+00:00",
                    "designations": ["FLOW_DESIGNATION_STAGE_CONFIGURATION", "FLOW_DESIGNATION_UNSPECIFIED"],
                    "stage": { "pk": "st1" },
                    "attrs": { "k": [1, "two"] },
                    "notInSchema": 1,
                })
            }),
            "ListFlowObjects" => fixed(seen, rpc, |_| {
                json!({
                    "pagination": { "next": "2", "count": "41" },
                    "results": [{ "slug": "a", "cacheCount": "9000000000" }, { "slug": "b", "background": "" }],
                    "autocomplete": {},
                })
            }),
            "FlowUsedBy" => fixed(seen, rpc, |json| {
                if json["slug"] == json!("unused") {
                    return json!({});
                }
                json!({ "results": [
                    { "pk": "b1", "modelName": "flowstagebinding", "action": "USED_BY_ACTION_CASCADE" },
                    { "pk": "s1", "action": "USED_BY_ACTION_SET_NULL" },
                ] })
            }),
            "ExportFlow" => export_handler(),
            "Download" => download_handler(),
            "ClearFlows" => fixed(seen, rpc, |_| json!({ "type": "ignored on 204" })),
            "GetPart" => fixed(seen, rpc, |json| {
                if json["name"] == json!("empty") {
                    return json!({});
                }
                json!({ "inner": { "a": "x", "b": "12", "at": "2024-01-02T03:04:05+00:00" }, "names": ["n1", "n2"] })
            }),
            "Reset" | "Check" | "GetPFlow" => fixed(seen, rpc, |json| {
                json!({
                    "id": json["flowId"],
                    "envId": json["envId"],
                    "username": json["username"],
                    "status": "USERNAME_PASSWORD_REQUIRED",
                    "createdMs": "1700000000000",
                    "expiresAt": "2024-01-02T03:04:05+00:00",
                    "links": { "self": "https://example.test/flows/1" },
                })
            }),
            _ => fixed(seen, rpc, |json| json.clone()),
        };
        map.insert(b.grpc_path(), handler);
    }
    map
}

/// A recording handler answering `respond(request)`.
fn fixed(seen: Arc<Mutex<Vec<Seen>>>, rpc: String, respond: fn(&Value) -> Value) -> Handler {
    Handler::from_fn(move |json: Value, md, ext: http::Extensions| {
        let seen = Arc::clone(&seen);
        let rpc = rpc.clone();
        async move {
            let answer = respond(&json);
            let marker = ext.get::<Marker>().map(|m| m.0);
            seen.lock().await.push(Seen { rpc, json, metadata: metadata_map(&md), marker });
            Ok(answer)
        }
    })
}

fn harness_with(config: GatewayConfig) -> Harness {
    let pool = pool();
    let bindings = http_bindings(&pool, &names()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handlers = handlers(&pool, &bindings, &seen);
    let gw = Gateway::new(pool.clone(), bindings, handlers, config).unwrap();
    Harness { gw, pool, seen }
}

fn harness() -> Harness {
    harness_with(GatewayConfig::default())
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    raw: Vec<u8>,
    rpc: Option<String>,
}

async fn send(h: &Harness, req: Request<Body>) -> Answer {
    let resp = h.gw.handle(req).await;
    let status = resp.status();
    let rpc = resp.extensions().get::<MatchedRpc>().map(|m| m.0.clone());
    let headers = resp.headers().clone();
    let raw = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    // Raw (HttpBody) answers are not JSON; every JSON answer must parse.
    let is_json = headers.get("content-type").is_some_and(|v| v == "application/json");
    let json = if raw.is_empty() || !is_json { Value::Null } else { serde_json::from_slice(&raw).unwrap() };
    Answer { status, headers, json, raw, rpc }
}

async fn call(h: &Harness, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(h, b.body(Body::from(body.to_string())).unwrap()).await
}

async fn json_call(h: &Harness, method: &str, uri: &str, body: Value) -> Answer {
    call(h, method, uri, &[("content-type", "application/json")], &body.to_string()).await
}

// ---------------------------------------------------------------------------------------------------------------
// Annotations

#[test]
fn bindings_come_from_annotations_in_declaration_order() {
    let bindings = http_bindings(&pool(), &names()).unwrap();
    let echo: Vec<_> = bindings.iter().filter(|b| b.method == "Echo").collect();
    assert_eq!(echo.len(), 3);
    assert_eq!((echo[0].verb.as_str(), echo[0].path.as_str(), echo[0].body.as_str()), ("POST", "/v1/echo", "*"));
    assert_eq!((echo[1].verb.as_str(), echo[1].path.as_str(), echo[1].body.as_str()), ("GET", "/v1/echo/{name}", ""));
    assert_eq!((echo[2].verb.as_str(), echo[2].body.as_str()), ("PUT", "tags"));
    assert_eq!(echo[0].grpc_path(), "/gwtest.v1.ZService/Echo");
    assert_eq!(echo[0].input, "gwtest.v1.Everything");

    let by = |m: &str| bindings.iter().find(|b| b.method == m).unwrap();
    assert_eq!(by("Create").success_code, 201);
    assert_eq!(by("Echo").success_code, 200);
    assert_eq!(by("DeleteFlow").success_code, 204);
    assert_eq!(by("CreateFlow").dialect, Dialect::Authentik);
    assert_eq!(by("Echo").dialect, Dialect::Zitadel);
    assert_eq!(by("Reset").dialect, Dialect::PingOne);
    assert_eq!(by("Reset").media_type, "application/vnd.pingidentity.session.reset+json");
    assert_eq!(by("Search").verb, "SEARCH");
    assert_eq!(by("GetPart").response_body, "inner");

    let code = to_rust_code(&bindings);
    assert!(code.starts_with("vec!["));
    assert!(code.contains("::flowgate_gateway::Dialect::Authentik"));
    assert!(code.contains("success_code: 201u16"));
    assert!(code.contains("path: \"/api/v3/flows/instances/{slug}/\".to_string()"));
    assert_eq!(to_rust_code(&[]), "vec![\n]");

    // Without option names every service is zitadel with 200s.
    let plain = http_bindings(
        &pool(),
        &OptionNames { dialect: String::new(), success_code: "no.such".into(), media_type: String::new() },
    )
    .unwrap();
    assert!(plain.iter().all(|b| b.dialect == Dialect::Zitadel && b.success_code == 200 && b.media_type.is_empty()));
}

#[test]
fn new_rejects_inconsistent_bindings() {
    let pool = pool();
    let good = http_bindings(&pool, &names()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let all = handlers(&pool, &good, &seen);
    let echo = good.iter().find(|b| b.method == "Echo").unwrap().clone();

    let try_with = |b: HttpBinding| {
        Gateway::new(pool.clone(), vec![b], all.clone(), GatewayConfig::default()).map(|_| ()).unwrap_err()
    };
    let err = try_with(HttpBinding { path: "/v1/{name".into(), ..echo.clone() });
    assert!(matches!(err, GatewayError::Binding { .. }));
    assert!(err.to_string().contains("/gwtest.v1.ZService/Echo POST /v1/{name"), "{err}");
    let err = try_with(HttpBinding { path: "/v1/{nope}".into(), ..echo.clone() });
    assert!(err.to_string().contains("nope"), "{err}");
    let err = try_with(HttpBinding { path: "/v1/{inner}".into(), ..echo.clone() });
    assert!(err.to_string().contains("inner"), "{err}");
    let err = try_with(HttpBinding { body: "missing".into(), ..echo.clone() });
    assert!(err.to_string().contains("missing"), "{err}");
    let err = try_with(HttpBinding { response_body: "nothing".into(), ..echo.clone() });
    assert!(err.to_string().contains("nothing"), "{err}");
    let err = try_with(HttpBinding { input: "no.Such".into(), ..echo.clone() });
    assert!(err.to_string().contains("no.Such"), "{err}");
    let err = try_with(HttpBinding { verb: "BAD VERB".into(), ..echo.clone() });
    assert!(err.to_string().contains("verb"), "{err}");
    let err = Gateway::new(pool.clone(), vec![echo], HashMap::new(), GatewayConfig::default()).map(|_| ()).unwrap_err();
    assert!(matches!(err, GatewayError::MissingHandler { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------------------------
// Request building

#[tokio::test]
async fn body_star_is_normalised_for_pbjson() {
    let h = harness();
    let body = json!({
        "name": "n",
        "count": "3",
        "big": 9007199254740993u64,
        "ubig": "18446744073709551615",
        "flag": true,
        "ratio": "NaN",
        "small": 1.5,
        "data": "aGVsbG8",
        "color": "COLOR_DARK_BLUE",
        "tags": ["a", "b"],
        "nums": [1, "2"],
        "inner": { "a": "x", "b": 4, "at": "2024-01-02T03:04:05+00:00", "zzz": 1 },
        "labels": { "k": "v" },
        "inners": { "one": { "b": "1" } },
        "at": "2024-01-02T03:04:05.123+00:00",
        "ttl": "18000s",
        "mask": "title,compatibilityMode",
        "nick": "nn",
        "wbig": 12,
        "extra": { "any": [1, null, { "x": true }] },
        "opt": "",
        "by_id": 7,
        "times": ["2024-01-02T03:04:05+00:00"],
        "stamps": { "s": "2024-01-02T03:04:05+00:00" },
        "colors": [1, "COLOR_RED"],
        "flags": [false],
        "unknownField": { "ignored": true },
    });
    let a = json_call(&h, "POST", "/v1/echo", body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.ZService/Echo"));
    let seen = h.last().await;
    assert_eq!(seen.rpc, "/gwtest.v1.ZService/Echo");
    let expected_request = json!({
        "name": "n",
        "count": 3,
        "big": "9007199254740993",
        "ubig": "18446744073709551615",
        "flag": true,
        "ratio": "NaN",
        "small": 1.5,
        "data": "aGVsbG8",
        "color": "COLOR_DARK_BLUE",
        "tags": ["a", "b"],
        "nums": ["1", "2"],
        "inner": { "a": "x", "b": "4", "at": "2024-01-02T03:04:05+00:00" },
        "labels": { "k": "v" },
        "inners": { "one": { "b": "1" } },
        "at": "2024-01-02T03:04:05.123+00:00",
        "ttl": "18000s",
        "mask": { "paths": ["title", "compatibility_mode"] },
        "nick": "nn",
        "wbig": "12",
        "extra": { "any": [1, null, { "x": true }] },
        "opt": "",
        "byId": 7,
        "times": ["2024-01-02T03:04:05+00:00"],
        "stamps": { "s": "2024-01-02T03:04:05+00:00" },
        "colors": ["COLOR_RED", "COLOR_RED"],
        "flags": [false],
    });
    assert_eq!(seen.json, expected_request);

    // zitadel output: pbjson's shape, but every Timestamp ends in Z and FieldMask is the proto3 string.
    let mut expected_response = expected_request.clone();
    expected_response["inner"]["at"] = json!("2024-01-02T03:04:05Z");
    expected_response["at"] = json!("2024-01-02T03:04:05.123Z");
    expected_response["times"] = json!(["2024-01-02T03:04:05Z"]);
    expected_response["stamps"] = json!({ "s": "2024-01-02T03:04:05Z" });
    expected_response["mask"] = json!("title,compatibilityMode");
    assert_eq!(a.json, expected_response);
    assert_eq!(a.headers["content-type"], "application/json");
}

#[tokio::test]
async fn null_means_unset_and_empty_body_is_an_empty_object() {
    let h = harness();
    let a = json_call(
        &h,
        "POST",
        "/v1/echo",
        json!({"name": null, "inner": null, "tags": null, "by_name": null, "extra": null}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.last().await.json, json!({}));
    assert_eq!(a.json, json!({}));

    let a = call(&h, "POST", "/v1/echo", &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(h.last().await.json, json!({}));
    let a = call(&h, "POST", "/v1/echo", &[("content-type", "application/json")], "  \n").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
}

#[tokio::test]
async fn query_values_are_converted_by_field_type() {
    let h = harness();
    let uri = "/v1/echo/bob?count=3&big=-9000000000&ubig=18446744073709551615&flag=true&ratio=1.5&small=-2\
               &color=COLOR_RED&tags=a&tags=b%20c&nums=1&nums=2&inner.a=x&inner.b=7&at=2024-01-02T03:04:05Z\
               &ttl=1.5s&mask=title,compatibilityMode&nick=nn&wbig=5&colors=2&colors=COLOR_RED&flags=false&flags=1\
               &data=aGk&opt=o+k&inner.at=2024-01-02T03:04:05.5%2B01:00&byName=q";
    let a = call(&h, "GET", uri, &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(
        h.last().await.json,
        json!({
            "name": "bob",
            "count": 3,
            "big": "-9000000000",
            "ubig": "18446744073709551615",
            "flag": true,
            "ratio": 1.5,
            "small": -2.0,
            "color": "COLOR_RED",
            "tags": ["a", "b c"],
            "nums": ["1", "2"],
            "inner": { "a": "x", "b": "7", "at": "2024-01-02T03:04:05.5+01:00" },
            "at": "2024-01-02T03:04:05Z",
            "ttl": "1.5s",
            "mask": { "paths": ["title", "compatibility_mode"] },
            "nick": "nn",
            "wbig": "5",
            "colors": ["COLOR_DARK_BLUE", "COLOR_RED"],
            "flags": [false, true],
            "data": "aGk",
            "opt": "o k",
            "byName": "q",
        })
    );
    // Enum by number in a singular field too.
    let a = call(&h, "GET", "/v1/echo/x?color=2", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.last().await.json["color"], "COLOR_DARK_BLUE");
}

#[tokio::test]
async fn query_mistakes_are_400_naming_the_parameter() {
    let h = harness();
    for (uri, needle) in [
        ("/v1/echo/x?bogus=1", "bogus"),
        ("/v1/echo/x?count=abc", "count"),
        ("/v1/echo/x?count=1&count=2", "count"),
        ("/v1/echo/x?big=1.5", "big"),
        ("/v1/echo/x?flag=maybe", "flag"),
        ("/v1/echo/x?color=PURPLE", "color"),
        ("/v1/echo/x?color=99", "color"),
        ("/v1/echo/x?at=yesterday", "at"),
        ("/v1/echo/x?ttl=5m", "ttl"),
        ("/v1/echo/x?inner=1", "inner"),
        ("/v1/echo/x?inner.nope=1", "inner.nope"),
        ("/v1/echo/x?labels=1", "labels"),
        ("/v1/echo/x?name=other", "name"),
        ("/v1/echo/x?tags=%ff", "UTF-8"),
        ("/v1/echo/x?data=***", "data"),
    ] {
        let a = call(&h, "GET", uri, &[], "").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}: {}", a.json);
        assert_eq!(a.json["code"], 3, "{uri}");
        assert!(a.json["message"].as_str().unwrap().contains(needle), "{uri}: {}", a.json);
    }
    assert_eq!(h.calls().await, 0);
}

#[tokio::test]
async fn body_value_type_errors_name_the_field() {
    let h = harness();
    for (body, field) in [
        (json!({"count": "x"}), "count"),
        (json!({"count": 3000000000u64}), "count"),
        (json!({"flag": "yes"}), "flag"),
        (json!({"name": 5}), "name"),
        (json!({"tags": "a"}), "tags"),
        (json!({"tags": [1]}), "tags"),
        (json!({"inner": {"b": "z"}}), "inner.b"),
        (json!({"inner": []}), "inner"),
        (json!({"color": "PURPLE"}), "color"),
        (json!({"at": "2024-01-02"}), "at"),
        (json!({"ttl": 5}), "ttl"),
        (json!({"labels": {"k": 1}}), "labels"),
        (json!({"inners": {"k": {"b": true}}}), "inners.b"),
        (json!({"by_name": "a", "byId": 1}), "by"),
        (json!({"name": "a", "name_": 1, "nick": [1]}), "nick"),
        (json!({"data": "%%%"}), "data"),
    ] {
        let a = json_call(&h, "POST", "/v1/echo", body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.json);
        assert!(a.json["message"].as_str().unwrap().contains(field), "{body}: {}", a.json);
        assert_eq!(a.json["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest", "{body}");
    }
    // The same field under its proto and its JSON name is ambiguous.
    let a = call(&h, "POST", "/v1/echo", &[], r#"{"by_name": "a", "byName": "b"}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // A non-object body for body "*".
    let a = call(&h, "POST", "/v1/echo", &[], "[1,2]").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.calls().await, 0);
}

#[tokio::test]
async fn body_field_places_the_value_at_that_field() {
    let h = harness();
    let a = json_call(&h, "PUT", "/v1/echo/xyz/tags", json!(["a", "b"])).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(h.last().await.json, json!({"inner": {"a": "xyz"}, "tags": ["a", "b"]}));
    // Query may set fields outside the body field, not inside it.
    let a = json_call(&h, "PUT", "/v1/echo/xyz/tags?count=2", json!(["a"])).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.last().await.json["count"], 2);
    let a = json_call(&h, "PUT", "/v1/echo/xyz/tags?tags=z", json!(["a"])).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = json_call(&h, "PUT", "/v1/echo/xyz/tags", json!({"a": 1})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.json["message"].as_str().unwrap().contains("tags"));
    // Body "*" takes no query parameters at all.
    let a = json_call(&h, "POST", "/v1/echo?name=x", json!({})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn path_values_win_over_the_body() {
    let h = harness();
    let a = json_call(&h, "PATCH", "/v1/things2/7", json!({"id": "99", "title": "t"})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(h.last().await.json["id"], "7");
}

// ---------------------------------------------------------------------------------------------------------------
// Path templates

#[tokio::test]
async fn path_templates_capture_and_decode() {
    let h = harness();
    let a = call(&h, "GET", "/v1/shelves/s1/books/a/b%2Fc/d%20e", &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(h.last().await.json, json!({"name": "shelves/s1/books/a/b%2Fc/d e"}));
    // `**` matches zero segments as well.
    let a = call(&h, "GET", "/v1/shelves/s1/books?page=2", &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(h.last().await.json, json!({"name": "shelves/s1/books", "page": 2}));
    // A single-segment capture decodes everything, `%2F` included.
    let a = call(&h, "GET", "/v1/echo/a%2Fb%20c", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.last().await.json, json!({"name": "a/b c"}));
    // Nested field path in a template.
    let a = json_call(&h, "PUT", "/v1/echo/in%3Aner/tags", json!([])).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.last().await.json, json!({"inner": {"a": "in:ner"}, "tags": []}));
    // Invalid UTF-8 after decoding is a client error.
    let a = call(&h, "GET", "/v1/echo/%ff", &[], "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn verbs_are_split_from_the_last_segment() {
    let h = harness();
    let a = call(&h, "POST", "/v1/shelves/s%201:cancel", &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.ZService/CancelBook"));
    assert_eq!(h.last().await.json, json!({"name": "shelves/s 1"}));
    let a = call(&h, "POST", "/v1/shelves/a%2Fb:cancel", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.last().await.json, json!({"name": "shelves/a%2Fb"}));
    let a = call(&h, "POST", "/v1/shelves/x:stop", &[], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = call(&h, "POST", "/v1/shelves/x", &[], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = call(&h, "GET", "/v1/shelves/x:cancel", &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["allow"], "POST");
    // A colon inside a plain capture is just data.
    let a = call(&h, "GET", "/v1/echo/a:b", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.last().await.json, json!({"name": "a:b"}));
}

#[tokio::test]
async fn trailing_slash_and_underscore_literals_are_exact() {
    let h = harness();
    let a = call(&h, "GET", "/api/v3/flows/instances/s1/", &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(h.last().await.json, json!({"slug": "s1"}));
    let a = call(&h, "GET", "/api/v3/flows/instances/s1", &[], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json, json!({"detail": "Not found."}));
    let a = call(&h, "GET", "/api/v3/flows/instances//", &[], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    let a = call(&h, "POST", "/flows/password/_clear", &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(h.last().await.json, json!({"type": "password"}));
    assert_eq!(a.json, json!({"type": "password"}));
    let a = call(&h, "POST", "/flows/password/clear", &[], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = call(&h, "POST", "/flows/password/%5Fclear", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn custom_verbs_route() {
    let h = harness();
    let a = call(&h, "SEARCH", "/v1/search", &[], r#"{"name":"q"}"#).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.ZService/Search"));
    let a = call(&h, "GET", "/v1/search", &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["allow"], "SEARCH");
}

// ---------------------------------------------------------------------------------------------------------------
// PATCH update masks

#[tokio::test]
async fn patch_fills_update_mask_from_body_keys() {
    let h = harness();
    let body = json!({"title": "New", "compatibilityMode": true, "inner": {"a": "x", "at": null}, "labels": {"k": "v"}, "bogus": 1});
    let a = json_call(&h, "PATCH", "/v1/things/42", body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(
        h.last().await.json,
        json!({
            "thing": {"id": "42", "title": "New", "compatibilityMode": true, "inner": {"a": "x"}, "labels": {"k": "v"}},
            "updateMask": {"paths": ["compatibility_mode", "inner.a", "inner.at", "labels", "title"]},
        })
    );
    assert_eq!(a.json["updateMask"], "compatibilityMode,inner.a,inner.at,labels,title");

    // A mask the client set itself is kept.
    let a = json_call(&h, "PATCH", "/v1/things/42?updateMask=title", json!({"title": "x", "tags": []})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(h.last().await.json["updateMask"], json!({"paths": ["title"]}));

    // Body "*": relative to the request message, the mask field itself excluded.
    let a = json_call(&h, "PATCH", "/v1/things2/7", json!({"title": "t", "inner": {"b": "3"}})).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        h.last().await.json,
        json!({"id": "7", "title": "t", "inner": {"b": "3"}, "updateMask": {"paths": ["inner.b", "title"]}})
    );
    let a = json_call(&h, "PATCH", "/v1/things2/7", json!({"title": "t", "update_mask": "inner"})).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.last().await.json["updateMask"], json!({"paths": ["inner"]}));

    // An empty PATCH body is `{}`: the body field is set and the mask is empty.
    let a = call(&h, "PATCH", "/api/v3/flows/instances/s1/", &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(h.last().await.json, json!({"slug": "s1", "flow": {}, "updateMask": {"paths": []}}));
}

// ---------------------------------------------------------------------------------------------------------------
// Media types and content types

#[tokio::test]
async fn media_type_selects_among_rpcs_sharing_a_path() {
    let h = harness();
    let reset = [("content-type", "application/vnd.pingidentity.session.reset+json")];
    let a = call(&h, "POST", "/env1/flows/f1", &reset, "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.PService/Reset"));
    assert_eq!(h.last().await.json, json!({"envId": "env1", "flowId": "f1"}));

    let check = [("content-type", "application/vnd.pingidentity.usernamepassword.check+json; charset=UTF-8")];
    let a = call(&h, "POST", "/env1/flows/f1", &check, r#"{"username":"u","password":"p"}"#).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.PService/Check"));
    assert_eq!(h.last().await.json, json!({"envId": "env1", "flowId": "f1", "username": "u", "password": "p"}));

    for ct in [Some("application/json"), None, Some("text/plain")] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let a = call(&h, "POST", "/env1/flows/f1", &headers, "{}").await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_eq!(a.json["code"], "UNSUPPORTED_MEDIA_TYPE");
        let msg = a.json["message"].as_str().unwrap();
        assert!(msg.contains("session.reset+json") && msg.contains("usernamepassword.check+json"), "{msg}");
        assert!(a.rpc.is_none());
    }

    let a = call(&h, "GET", "/env1/flows/f1", &[], "").await;
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.PService/GetPFlow"));
}

#[tokio::test]
async fn content_types_outside_json_are_415() {
    let h = harness();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "text/json",
    ] {
        let a = call(&h, "POST", "/v1/echo", &[("content-type", ct)], "{}").await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        assert_eq!(a.json["code"], 3);
        assert!(a.json["message"].as_str().unwrap().contains("application/json"));
        let a = call(&h, "POST", "/api/v3/flows/instances/", &[("content-type", ct)], "{}").await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        assert!(a.json["detail"].as_str().unwrap().starts_with("Unsupported media type"), "{}", a.json);
        // Also a POST route that takes no body: a cross-site form post must not reach it.
        let a = call(&h, "POST", "/flows/x/_clear", &[("content-type", ct)], "").await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
    }
    for ct in
        ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/merge-patch+json"]
    {
        let a = call(&h, "POST", "/v1/echo", &[("content-type", ct)], "{}").await;
        assert_eq!(a.status, StatusCode::OK, "{ct}");
    }
    // GET ignores content types.
    let a = call(&h, "GET", "/v1/echo/x", &[("content-type", "text/plain")], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.calls().await, 5);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let h = harness_with(GatewayConfig { body_limit: 64, trusted_proxies: Vec::new() });
    let big = json!({"name": "x".repeat(100)}).to_string();
    // Without Content-Length the cap applies while reading.
    let a = call(&h, "POST", "/v1/echo", &[], &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json["code"], 8);
    // Declared length is checked before reading.
    let a = call(&h, "POST", "/v1/echo", &[("content-length", "100000")], "{}").await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let a = call(&h, "POST", "/api/v3/flows/instances/", &[], &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.json["detail"].as_str().unwrap().contains("too large"));
    let a =
        call(&h, "POST", "/env/flows/f", &[("content-type", "application/vnd.pingidentity.session.reset+json")], &big)
            .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json["code"], "REQUEST_FAILED");
    // A streamed body in chunks.
    let chunks =
        futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"          "))));
    let req = Request::builder().method("POST").uri("/v1/echo").body(Body::from_stream(chunks)).unwrap();
    assert_eq!(send(&h, req).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(h.calls().await, 0);
    let a = call(&h, "POST", "/v1/echo", &[], r#"{"name":"short"}"#).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_json_is_400_in_every_dialect() {
    let h = harness();
    let a = call(&h, "POST", "/v1/echo", &[], "{\"name\": }").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["code"], 3);
    assert!(a.json["message"].as_str().unwrap().contains("line 1 column"), "{}", a.json);

    let a = call(&h, "POST", "/api/v3/flows/instances/", &[], "{\"slug\": ").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.json["detail"].as_str().unwrap().starts_with("JSON parse error"), "{}", a.json);

    let a = call(&h, "POST", "/pingfail/now", &[("x-request-id", "r-1")], "nope").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["code"], "INVALID_DATA");
    assert_eq!(a.json["id"], "r-1");

    // Field type errors per dialect.
    let a =
        json_call(&h, "POST", "/api/v3/flows/instances/", json!({"cache_count": "many", "designation": "bogus"})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let obj = a.json.as_object().unwrap();
    assert_eq!(obj.len(), 1, "{}", a.json);
    assert!(obj.contains_key("cache_count") || obj.contains_key("designation"), "{}", a.json);
    let a = json_call(&h, "POST", "/api/v3/flows/instances/", json!({"designation": "bogus"})).await;
    assert_eq!(a.json, json!({"designation": ["\"bogus\" is not a valid choice."]}));
    let a = call(
        &h,
        "POST",
        "/env/flows/f",
        &[("content-type", "application/vnd.pingidentity.usernamePassword.check+json")],
        r#"{"username": 1}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["code"], "INVALID_DATA");
    assert_eq!(a.json["details"][0]["code"], "INVALID_VALUE");
    assert_eq!(a.json["details"][0]["target"], "username");
    // Deeply nested garbage is refused, not a crash.
    let deep = "[".repeat(5000);
    let a = call(&h, "POST", "/v1/echo", &[], &deep).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------------------------------
// 404 / 405

#[tokio::test]
async fn not_found_in_each_dialect() {
    let h = harness();
    let a = call(&h, "GET", "/v1/nope", &[("x-request-id", "rq-9")], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.json,
        json!({"code": 5, "message": "Not Found", "details": [{"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "rq-9"}]})
    );
    assert!(a.rpc.is_none());
    let a = call(&h, "GET", "/v1/nope", &[], "").await;
    assert_eq!(a.json, json!({"code": 5, "message": "Not Found", "details": []}));

    let a = call(&h, "GET", "/api/v3/nope/", &[("x-request-id", "rq-9")], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json, json!({"detail": "Not found.", "request_id": "rq-9"}));

    let a = call(&h, "GET", "/pingfail/later", &[("x-request-id", "rq-9")], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json["code"], "NOT_FOUND");
    assert_eq!(a.json["id"], "rq-9");
    let a = call(&h, "GET", "/pingfail/later", &[], "").await;
    assert_eq!(a.json["id"].as_str().unwrap().len(), 36);

    assert_eq!(h.gw.dialect_for_path("/api/v3/whatever/x"), Dialect::Authentik);
    assert_eq!(h.gw.dialect_for_path("/flows/x"), Dialect::Authentik);
    assert_eq!(h.gw.dialect_for_path("/pingfail"), Dialect::PingOne);
    assert_eq!(h.gw.dialect_for_path("/v1/x"), Dialect::Zitadel);
    assert_eq!(h.gw.dialect_for_path("/unknown"), Dialect::Zitadel);
    assert_eq!(h.gw.dialect_for_path("no-slash"), Dialect::Zitadel);
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let h = harness();
    let a = call(&h, "GET", "/v1/fail", &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["allow"], "POST");
    assert_eq!(a.json["code"], 12);

    let a = call(&h, "PUT", "/api/v3/flows/instances/s/", &[], "{}").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["allow"], "GET, PATCH, DELETE");
    assert_eq!(a.json, json!({"detail": "Method \"PUT\" not allowed."}));

    let a = call(&h, "DELETE", "/env/flows/f", &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["allow"], "POST, GET");
    assert_eq!(a.json["code"], "METHOD_NOT_ALLOWED");
}

// ---------------------------------------------------------------------------------------------------------------
// Success rendering

#[tokio::test]
async fn zitadel_success_codes_and_response_body() {
    let h = harness();
    let a = json_call(&h, "POST", "/v1/things", json!({"title": "t", "id": 5})).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.json, json!({"title": "t", "id": "5"}));

    let a = call(&h, "GET", "/v1/parts/p1", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json, json!({"a": "x", "b": "12", "at": "2024-01-02T03:04:05Z"}));
    let a = call(&h, "GET", "/v1/parts/p1/names", &[], "").await;
    assert_eq!(a.json, json!(["n1", "n2"]));
    let a = call(&h, "GET", "/v1/parts/empty", &[], "").await;
    assert_eq!(a.json, json!({}));
    let a = call(&h, "GET", "/v1/parts/empty/names", &[], "").await;
    assert_eq!(a.json, json!([]));
}

#[tokio::test]
async fn authentik_renders_every_key_in_snake_case() {
    let h = harness();
    let a = call(&h, "GET", "/api/v3/flows/instances/s1/", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json,
        json!({
            "pk": "p1",
            "slug": "s1",
            "title": "",
            "designation": "authentication",
            "cache_count": 5,
            "compatibility_mode": false,
            "background": null,
            "stages": [],
            "meta": {},
            "created": "2024-01-02T03:04:05.500Z",
            "stage": {"pk": "st1", "name": ""},
            "weight": 0.0,
            "designations": ["stage_configuration", null],
            "attrs": {"k": [1, "two"]},
        })
    );

    // Create: exactly the documented short names (DRF choices); proto names, other case and numbers are
    // not choices.
    for designation in [json!("FLOW_DESIGNATION_STAGE_CONFIGURATION"), json!("Stage_Configuration"), json!(2)] {
        let body = json!({"slug": "s", "designation": designation});
        let a = json_call(&h, "POST", "/api/v3/flows/instances/", body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{designation}: {}", a.json);
        assert!(a.json["designation"][0].as_str().is_some_and(|m| m.ends_with("is not a valid choice.")), "{}", a.json);
    }
    // 201; snake_case keys accepted.
    for designation in [json!("stage_configuration")] {
        let body = json!({"slug": "s", "designation": designation, "cache_count": 3, "background": "bg", "designations": ["authentication"]});
        let a = json_call(&h, "POST", "/api/v3/flows/instances/", body).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.json);
        let seen = h.last().await.json;
        assert_eq!(seen["designation"], "FLOW_DESIGNATION_STAGE_CONFIGURATION");
        assert_eq!(seen["cacheCount"], "3");
        assert_eq!(seen["designations"], json!(["FLOW_DESIGNATION_AUTHENTICATION"]));
        assert_eq!(a.json["designation"], "stage_configuration");
        assert_eq!(a.json["cache_count"], 3);
        assert_eq!(a.json["background"], "bg");
        assert_eq!(a.json["pk"], "");
        assert_eq!(a.json["stage"], Value::Null);
    }

    // Delete answers 204 with an empty body.
    let a = call(&h, "DELETE", "/api/v3/flows/instances/s1/", &[], "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.raw.is_empty());
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.AService/DeleteFlow"));

    // List query: DRF names, unknown parameters ignored.
    let a = call(&h, "GET", "/api/v3/flows/instances/?designation=authentication&ordering=slug&page=1&page_size=20&search=x&format=json&page_size=30", &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(
        h.last().await.json,
        json!({"designation": "FLOW_DESIGNATION_AUTHENTICATION", "ordering": "slug", "page": 1, "pageSize": 30, "search": "x"})
    );
    assert_eq!(
        a.json,
        json!({"designation": "authentication", "ordering": "slug", "page": 1, "page_size": 30, "search": "x"})
    );

    // Nested lists and int64 numbers.
    let a = call(&h, "GET", "/api/v3/flows/objects/", &[], "").await;
    assert_eq!(a.json["pagination"], json!({"next": 2, "count": 41}));
    assert_eq!(a.json["results"][0]["cache_count"], 9000000000u64);
    assert_eq!(a.json["results"][0]["designation"], Value::Null);
    assert_eq!(a.json["results"][1]["background"], "");
    assert_eq!(a.json["results"][1]["stages"], json!([]));
    assert_eq!(a.json["autocomplete"], json!({}));

    // PATCH on the body field renders the whole request in snake_case, the mask as a string.
    let a = json_call(&h, "PATCH", "/api/v3/flows/instances/s1/", json!({"title": "New"})).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        h.last().await.json,
        json!({"slug": "s1", "flow": {"title": "New"}, "updateMask": {"paths": ["title"]}})
    );
    assert_eq!(a.json["update_mask"], "title");
    assert_eq!(a.json["flow"]["title"], "New");
    assert_eq!(a.json["flow"]["cache_count"], 0);
}

#[tokio::test]
async fn authentik_response_body_list_is_a_bare_array() {
    let h = harness();
    let a = call(&h, "GET", "/api/v3/flows/instances/f1/used_by/", &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(
        a.json,
        json!([
            {"pk": "b1", "model_name": "flowstagebinding", "action": "cascade"},
            {"pk": "s1", "model_name": "", "action": "set_null"},
        ])
    );
    // An unset list is an empty array, not null or an object.
    let a = call(&h, "GET", "/api/v3/flows/instances/unused/used_by/", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.raw, b"[]");
}

#[tokio::test]
async fn http_body_answers_are_written_raw_with_allowed_headers() {
    let h = harness();
    // An HttpBody named by response_body, from a typed handler that sets response metadata.
    let a = call(&h, "GET", "/api/v3/flows/instances/my-flow/export/", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.raw, b"version: 1\nmetadata:\n  name: my-flow\n");
    assert_eq!(a.headers["content-type"], "application/yaml");
    assert_eq!(a.headers["content-disposition"], "attachment; filename=\"my-flow.yaml\"");
    assert!(a.headers.get("x-internal-note").is_none(), "metadata off the allowlist leaked: {:?}", a.headers);
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.AService/ExportFlow"));

    // Errors of such a method are still rendered in the dialect.
    let a = call(&h, "GET", "/api/v3/flows/instances/missing/export/", &[], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json, json!({"detail": "Not found."}));
    assert!(a.headers.get("content-disposition").is_none());

    // HttpBody as the whole response, every value of an allowed header kept in order.
    let a = call(&h, "GET", "/api/v3/flows/instances/x/download/", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.raw, b"hello x");
    assert_eq!(a.headers["content-type"], "text/plain; charset=utf-8");
    let dispositions: Vec<_> = a.headers.get_all("content-disposition").iter().collect();
    assert_eq!(dispositions, ["inline", "attachment"]);

    // No content type: the bytes are served untyped; no data: an empty body.
    let a = call(&h, "GET", "/api/v3/flows/instances/untyped/download/", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.raw, [0, 159, 146, 150]);
    assert_eq!(a.headers["content-type"], "application/octet-stream");
    let a = call(&h, "GET", "/api/v3/flows/instances/empty/download/", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.raw.is_empty());
    assert_eq!(a.headers["content-type"], "text/plain");

    // A handler answering bytes that are not base64 is a server bug, reported as such.
    let a = call(&h, "GET", "/api/v3/flows/instances/broken/download/", &[], "").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(a.json["detail"].as_str().unwrap().contains("HttpBody"), "{}", a.json);
}

#[tokio::test]
async fn no_content_routes_answer_an_empty_body() {
    let h = harness();
    // A POST without body or content type (authentik's cache_clear) reaches the handler; its answer is dropped.
    let a = call(&h, "POST", "/api/v3/flows/instances/cache_clear/", &[], "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.raw.is_empty());
    assert!(a.headers.get("content-type").is_none(), "{:?}", a.headers);
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.AService/ClearFlows"));
    assert_eq!(h.calls().await, 1);
    // Another verb on that literal path falls through to the `{slug}` routes beside it.
    let a = call(&h, "DELETE", "/api/v3/flows/instances/cache_clear/", &[], "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.AService/DeleteFlow"));
    assert!(a.raw.is_empty());
}

#[tokio::test]
async fn authentik_body_mistakes_are_drf_field_errors() {
    let h = harness();
    // A body field (`flow`) is the serializer: its fields are named without the `flow.` prefix.
    for (body, expected) in [
        (json!({"designation": "bogus"}), json!({"designation": ["\"bogus\" is not a valid choice."]})),
        (json!({"designation": "unspecified"}), json!({"designation": ["\"unspecified\" is not a valid choice."]})),
        (json!({"designation": 0}), json!({"designation": ["\"0\" is not a valid choice."]})),
        (json!({"designation": 7}), json!({"designation": ["\"7\" is not a valid choice."]})),
        (json!({"designation": true}), json!({"designation": ["\"true\" is not a valid choice."]})),
        (json!({"designations": ["recovery"]}), json!({"designations": ["\"recovery\" is not a valid choice."]})),
        (json!({"compatibility_mode": "yes"}), json!({"compatibility_mode": ["Must be a valid boolean."]})),
        (json!({"cache_count": "many"}), json!({"cache_count": ["A valid integer is required."]})),
        (json!({"cache_count": 1.5}), json!({"cache_count": ["A valid integer is required."]})),
        (json!({"weight": "heavy"}), json!({"weight": ["A valid number is required."]})),
        (json!({"title": 5}), json!({"title": ["Not a valid string."]})),
        (json!({"title": {"a": 1}}), json!({"title": ["Not a valid string."]})),
        (json!({"stages": "s1"}), json!({"stages": ["Expected a list of items but got type \"str\"."]})),
        (json!({"stages": [null]}), json!({"stages": ["This field may not be null."]})),
        (json!({"meta": []}), json!({"meta": ["Expected a dictionary of items but got type \"list\"."]})),
        (json!({"stage": "st1"}), json!({"stage": ["Invalid data. Expected a dictionary, but got str."]})),
        (json!({"stage": {"name": false}}), json!({"stage.name": ["Not a valid string."]})),
        (json!({"attrs": 3}), json!({"attrs": ["Invalid data. Expected a dictionary, but got int."]})),
        (
            json!({"created": "yesterday"}),
            json!({"created": [
                "Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
            ]}),
        ),
        (json!(["title"]), json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]})),
    ] {
        let a = json_call(&h, "PATCH", "/api/v3/flows/instances/s1/", body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.json);
        assert_eq!(a.json, expected, "{body}");
    }
    // The same wording with body `*`.
    let a = json_call(&h, "POST", "/api/v3/flows/instances/", json!({"slug": "s", "designation": "bogus"})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json, json!({"designation": ["\"bogus\" is not a valid choice."]}));
    let a = call(&h, "POST", "/api/v3/flows/instances/", &[], "[]").await;
    assert_eq!(a.json, json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}));
    assert_eq!(h.calls().await, 0);

    // Other dialects keep their own wording and full field paths.
    let a = json_call(&h, "POST", "/v1/echo", json!({"color": "COLOR_UNSPECIFIED"})).await;
    assert_eq!(a.status, StatusCode::OK, "the zero value is a value outside authentik: {}", a.json);
    let a = json_call(&h, "POST", "/v1/echo", json!({"inner": {"b": "z"}})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["details"][0]["fieldViolations"][0]["field"], "inner.b");
}

#[tokio::test]
async fn pingone_renders_numbers_z_and_json_names() {
    let h = harness();
    let a = call(&h, "GET", "/env1/flows/f1", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json,
        json!({
            "id": "f1",
            "envId": "env1",
            "username": null,
            "status": "USERNAME_PASSWORD_REQUIRED",
            "createdMs": 1700000000000u64,
            "expiresAt": "2024-01-02T03:04:05Z",
            "_links": {"self": "https://example.test/flows/1"},
        })
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Error rendering

#[tokio::test]
async fn zitadel_errors_carry_code_message_and_details() {
    let h = harness();
    let body = json!({
        "code": 9,
        "message": "Intent has not succeeded (IDP-nme4gszsvx)",
        "problems": [{"field": "idp_intent_id", "description": "unknown"}],
        "reason": "IDP-nme4gszsvx",
    });
    let a = call(&h, "POST", "/v1/fail", &[("x-request-id", "abc")], &body.to_string()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.json,
        json!({
            "code": 9,
            "message": "Intent has not succeeded (IDP-nme4gszsvx)",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "idp_intent_id", "description": "unknown"}]},
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IDP-nme4gszsvx", "domain": "flowgate.test"},
                {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "abc"},
            ],
        })
    );
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.ZService/Fail"));

    // A RequestInfo from the handler is not duplicated.
    let body = json!({"code": 5, "message": "gone", "withRequestInfo": true});
    let a = call(&h, "POST", "/v1/fail", &[("x-request-id", "abc")], &body.to_string()).await;
    assert_eq!(
        a.json["details"],
        json!([{"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "from-handler"}])
    );

    // The status table, and Internal keeps its (already sanitised) message.
    for (code, http) in [
        (1, 499),
        (2, 500),
        (3, 400),
        (4, 504),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (12, 501),
        (13, 500),
        (14, 503),
        (15, 500),
        (16, 401),
    ] {
        let a =
            json_call(&h, "POST", "/v1/fail", json!({"code": code, "message": "internal error, request id r1"})).await;
        assert_eq!(a.status.as_u16(), http, "code {code}");
        assert_eq!(a.json, json!({"code": code, "message": "internal error, request id r1", "details": []}));
    }
}

#[tokio::test]
async fn authentik_errors_follow_drf() {
    let h = harness();
    let a = json_call(
        &h,
        "POST",
        "/api/v3/fail/",
        json!({"code": 3, "message": "invalid", "problems": [
            {"field": "slug", "description": "Flow with this slug already exists."},
            {"field": "slug", "description": "Enter a valid slug."},
            {"field": "name", "description": "This field may not be blank."},
            {"field": "", "description": "Something about the whole."},
        ]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.json,
        json!({
            "slug": ["Flow with this slug already exists.", "Enter a valid slug."],
            "name": ["This field may not be blank."],
            "non_field_errors": ["Something about the whole."],
        })
    );
    let a = json_call(&h, "POST", "/api/v3/fail/", json!({"code": 3, "message": "bad input"})).await;
    assert_eq!(a.json, json!({"non_field_errors": ["bad input"]}));
    let a = call(
        &h,
        "POST",
        "/api/v3/fail/",
        &[("x-request-id", "q1")],
        &json!({"code": 7, "message": "You do not have permission to perform this action.", "reason": "AUTHZ-denied"})
            .to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(
        a.json,
        json!({"detail": "You do not have permission to perform this action.", "code": "AUTHZ-denied", "request_id": "q1"})
    );
    let a = json_call(&h, "POST", "/api/v3/fail/", json!({"code": 5, "message": "Not found."})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json, json!({"detail": "Not found."}));
    // No challenge scheme: DRF answers authentication failures 403, never 401.
    let a = json_call(
        &h,
        "POST",
        "/api/v3/fail/",
        json!({"code": 16, "message": "Authentication credentials were not provided."}),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json, json!({"detail": "Authentication credentials were not provided."}));
}

#[tokio::test]
async fn pingone_errors_use_platform_codes() {
    let h = harness();
    let a = call(
        &h,
        "POST",
        "/pingfail/now",
        &[("x-request-id", "p-1")],
        &json!({"code": 3, "message": "One or more validation errors were in the request.", "problems": [{"field": "username", "description": "must not be empty"}]}).to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.json,
        json!({
            "id": "p-1",
            "code": "INVALID_DATA",
            "message": "One or more validation errors were in the request.",
            "details": [{"code": "INVALID_VALUE", "target": "username", "message": "must not be empty"}],
        })
    );
    for (code, http, top) in [
        (16, 401, "ACCESS_FAILED"),
        (7, 403, "ACCESS_FAILED"),
        (5, 404, "NOT_FOUND"),
        (6, 409, "REQUEST_FAILED"),
        (9, 400, "REQUEST_FAILED"),
        (8, 429, "REQUEST_LIMITED"),
        (13, 500, "UNEXPECTED_ERROR"),
        (14, 503, "UNEXPECTED_ERROR"),
    ] {
        let a = json_call(&h, "POST", "/pingfail/now", json!({"code": code, "message": "m"})).await;
        assert_eq!(a.status.as_u16(), http, "{code}");
        assert_eq!(a.json["code"], top, "{code}");
        assert_eq!(a.json["message"], "m");
        assert!(a.json.get("details").is_none());
        assert_eq!(uuid::Uuid::parse_str(a.json["id"].as_str().unwrap()).map(|_| ()), Ok(()));
    }
    let a =
        json_call(&h, "POST", "/pingfail/now", json!({"code": 16, "message": "m", "reason": "INVALID_TOKEN"})).await;
    assert_eq!(a.json["details"], json!([{"code": "INVALID_TOKEN", "message": "m"}]));
}

#[tokio::test]
async fn render_error_is_usable_directly() {
    let h = harness();
    let resp = h.gw.render_error(
        Dialect::Zitadel,
        Some(StatusCode::METHOD_NOT_ALLOWED),
        &tonic::Status::unimplemented("x"),
        None,
    );
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), json!({"code": 12, "message": "x", "details": []}));

    // A detail type the pool does not know keeps its bytes.
    let status_desc = h.pool.get_message_by_name("google.rpc.Status").unwrap();
    let any_desc = h.pool.get_message_by_name("google.protobuf.Any").unwrap();
    let mut any = DynamicMessage::new(any_desc);
    any.set_field_by_name("type_url", prost_reflect::Value::String("type.googleapis.com/x.Unknown".into()));
    any.set_field_by_name("value", prost_reflect::Value::Bytes(vec![1u8, 2, 3].into()));
    let mut status = DynamicMessage::new(status_desc);
    status.set_field_by_name("details", prost_reflect::Value::List(vec![prost_reflect::Value::Message(any)]));
    let st = tonic::Status::with_details(Code::Aborted, "a", status.encode_to_vec().into());
    let resp = h.gw.render_error(Dialect::Zitadel, None, &st, Some("r"));
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap()["details"],
        json!([
            {"@type": "type.googleapis.com/x.Unknown", "value": "AQID"},
            {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "r"},
        ])
    );
}

#[tokio::test]
async fn pools_without_google_rpc_still_render_errors() {
    let mut compiler = protox::Compiler::new(PROTO_DIRS).unwrap();
    compiler.include_imports(true);
    compiler.open_files(["gwtest/v1/test.proto"]).unwrap();
    let pool = DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).unwrap();
    assert!(pool.get_message_by_name("google.rpc.Status").is_none());
    let bindings = http_bindings(&pool, &names()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handlers: HashMap<String, Handler> =
        bindings.iter().map(|b| (b.grpc_path(), fixed(Arc::clone(&seen), b.grpc_path(), |j| j.clone()))).collect();
    let gw = Gateway::new(pool, bindings, handlers, GatewayConfig::default()).unwrap();
    let h = Harness { gw, pool: DescriptorPool::new(), seen };
    let a = json_call(&h, "POST", "/v1/echo", json!({"count": "x"})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["details"][0]["fieldViolations"][0]["field"], "count");
}

// ---------------------------------------------------------------------------------------------------------------
// Metadata, extensions, typed handlers

fn meta_request(peer: Option<&str>) -> Request<Body> {
    let mut req = Request::builder()
        .method("GET")
        .uri("/v1/meta/1")
        .header("authorization", "Bearer t0k")
        .header("x-zitadel-orgid", "org-1")
        .header("user-agent", "curl/8")
        .header("x-request-id", "rid-1")
        .header("x-forwarded-for", "203.0.113.9")
        .header("cookie", "session=secret")
        .header("x-other", "no")
        .header("content-type", "application/json")
        .body(Body::empty())
        .unwrap();
    if let Some(peer) = peer {
        let addr: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
    }
    req.extensions_mut().insert(Marker(7));
    req
}

#[tokio::test]
async fn only_allowed_headers_become_metadata() {
    let h = harness_with(GatewayConfig {
        body_limit: 1024,
        trusted_proxies: vec!["10.0.0.0/8".parse::<IpNet>().unwrap(), "::1/128".parse().unwrap()],
    });
    let base = json!({
        "authorization": "Bearer t0k",
        "x-zitadel-orgid": "org-1",
        "user-agent": "curl/8",
        "x-request-id": "rid-1",
    });
    let a = send(&h, meta_request(None)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["metadata"], base);
    let seen = h.last().await;
    assert_eq!(seen.marker, Some(7));
    assert_eq!(serde_json::to_value(&seen.metadata).unwrap(), base);
    assert_eq!(a.rpc.as_deref(), Some("/gwtest.v1.ZService/Meta"));

    let a = send(&h, meta_request(Some("192.168.1.1:5000"))).await;
    assert_eq!(a.json["metadata"], base);

    let mut trusted = base.clone();
    trusted["x-forwarded-for"] = json!("203.0.113.9");
    let a = send(&h, meta_request(Some("10.1.2.3:5000"))).await;
    assert_eq!(a.json["metadata"], trusted);
    let a = send(&h, meta_request(Some("[::ffff:10.9.9.9]:5000"))).await;
    assert_eq!(a.json["metadata"], trusted);
    let a = send(&h, meta_request(Some("[::1]:5000"))).await;
    assert_eq!(a.json["metadata"], trusted);
}

#[tokio::test]
async fn typed_unary_handlers_decode_with_serde() {
    let h = harness();
    let mut req = Request::builder()
        .method("POST")
        .uri("/v1/typed/42")
        .header("x-request-id", "t-1")
        .body(Body::from(r#"{"name":"bob","color":2}"#))
        .unwrap();
    req.extensions_mut().insert(Marker(1));
    let a = send(&h, req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(
        a.json,
        json!({"greeting": "hello bob (COLOR_DARK_BLUE) rid=t-1 marker=true", "id": "42", "at": "2024-01-02T03:04:05.250Z"})
    );
    // The typed decoder's own complaint names the field.
    let a = json_call(&h, "POST", "/v1/typed/42", json!({})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["code"], 3);
    assert!(a.json["message"].as_str().unwrap().contains("name"), "{}", a.json);
}

#[tokio::test]
async fn handler_panics_become_internal_errors() {
    let pool = pool();
    let bindings: Vec<HttpBinding> =
        http_bindings(&pool, &names()).unwrap().into_iter().filter(|b| b.method == "Create").collect();
    let mut handlers = HashMap::new();
    handlers.insert(
        "/gwtest.v1.ZService/Create".to_string(),
        Handler::from_fn(|v: Value, _md, _ext| async move {
            if v["title"] == json!("boom") {
                panic!("handler bug");
            }
            Ok(v)
        }),
    );
    let gw = Gateway::new(pool.clone(), bindings, handlers, GatewayConfig::default()).unwrap();
    let h = Harness { gw, pool, seen: Arc::new(Mutex::new(Vec::new())) };
    let a = json_call(&h, "POST", "/v1/things", json!({"title": "boom"})).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.json["code"], 13);
}

// ---------------------------------------------------------------------------------------------------------------
// Robustness

/// A small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

#[tokio::test]
async fn garbage_never_yields_a_server_error() {
    let h = harness();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let paths = [
        "/v1/echo",
        "/v1/echo/x",
        "/v1/shelves/a/books/b/c",
        "/v1/shelves/a:cancel",
        "/v1/things/1",
        "/v1/things2/1",
        "/v1/typed/5",
        "/v1/parts/p",
        "/v1/meta/1",
        "/api/v3/flows/instances/",
        "/api/v3/flows/instances/s/",
        "/flows/t/_clear",
        "/e/flows/f",
        "/v1/search",
        "/",
        "",
    ];
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "SEARCH", "OPTIONS", "HEAD"];
    let content_types = [
        "application/json",
        "text/plain",
        "application/vnd.pingidentity.session.reset+json",
        "application/vnd.pingidentity.usernamePassword.check+json",
        "multipart/form-data",
        ";;;",
        "application/+json",
    ];
    let bodies = [
        r#"{"name":"x","count":1,"inner":{"a":"b","b":"2"},"tags":["a"],"thing":{"id":"1"}}"#,
        r#"{"title":"t","designation":"authentication","cache_count":"9"}"#,
        r#"{"by_name":"a","byId":1}"#,
        "[]",
        "null",
        "1e999",
        r#"{"count": 1e400}"#,
        r#"{"big": -1.5e19, "ubig": -1, "small": 1e39}"#,
        "",
        "\u{0}\u{1}",
        r#"{"a":"\ud800"}"#,
    ];
    let inserts =
        ["%", "%2", "%2F", "%ff", ":", "::", "/", "//", "{", "}", "*", "..", "%00", "?", "&", "=", "+", "é", "_"];
    for i in 0..600 {
        let mut path = rng.pick(&paths).to_string();
        for _ in 0..rng.below(3) {
            let at = rng.below(path.len() + 1);
            if path.is_char_boundary(at) {
                path.insert_str(at, rng.pick(&inserts));
            }
        }
        if rng.below(3) == 0 {
            path.push_str(rng.pick(&[
                "?count=1",
                "?tags=a&tags=b",
                "?x=%ff",
                "?inner.b=q",
                "?&&=&",
                "?color=7",
                "?page_size=-1",
            ]));
        }
        let mut body = rng.pick(&bodies).as_bytes().to_vec();
        for _ in 0..rng.below(4) {
            if !body.is_empty() {
                let at = rng.below(body.len());
                body[at] = (rng.next() & 0xff) as u8;
            }
        }
        let mut b = Request::builder().method(rng.pick(&methods)).uri(path.as_str());
        if rng.below(4) != 0 {
            b = b.header("content-type", rng.pick(&content_types));
        }
        if rng.below(5) == 0 {
            b = b.header("content-length", rng.pick(&["0", "5", "99999999999", "x"]));
        }
        if rng.below(3) == 0 {
            b = b.header("x-request-id", rng.pick(&["r", "", "a b"]));
        }
        if rng.below(3) == 0 {
            b = b.header("authorization", http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap());
        }
        let Ok(req) = b.body(Body::from(body)) else { continue };
        let a = send(&h, req).await;
        let handler_failure = a.rpc.as_deref().is_some_and(|r| r.ends_with("/Fail"));
        assert!(a.status.as_u16() < 500 || handler_failure, "iteration {i}: {path} → {} {}", a.status, a.json);
    }
}
