//! Error bodies per dialect, built from a `tonic::Status` and its `google.rpc.Status` details.

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Map, Value, json};
use tonic::Code;

use crate::annotations::Dialect;

const TYPE_PREFIX: &str = "type.googleapis.com/";
const BAD_REQUEST: &str = "google.rpc.BadRequest";
const ERROR_INFO: &str = "google.rpc.ErrorInfo";
const REQUEST_INFO: &str = "google.rpc.RequestInfo";

/// `google.rpc.Status` as carried in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<RpcAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct RpcAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.BadRequest`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct BadRequest {
    #[prost(message, repeated, tag = "1")]
    pub field_violations: Vec<FieldViolation>,
}

/// `google.rpc.BadRequest.FieldViolation`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct FieldViolation {
    #[prost(string, tag = "1")]
    pub field: String,
    #[prost(string, tag = "2")]
    pub description: String,
}

/// `google.rpc.ErrorInfo`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ErrorInfo {
    #[prost(string, tag = "1")]
    pub reason: String,
    #[prost(string, tag = "2")]
    pub domain: String,
    #[prost(map = "string, string", tag = "3")]
    pub metadata: std::collections::HashMap<String, String>,
}

/// `google.rpc.RequestInfo`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct RequestInfo {
    #[prost(string, tag = "1")]
    pub request_id: String,
    #[prost(string, tag = "2")]
    pub serving_data: String,
}

/// A `Status` for the gateway's own rejections, with field violations packed as `google.rpc.BadRequest`.
pub(crate) fn status_with_violations(code: Code, message: &str, violations: &[(String, String)]) -> tonic::Status {
    if violations.is_empty() {
        return tonic::Status::new(code, message);
    }
    let bad = BadRequest {
        field_violations: violations
            .iter()
            .map(|(field, description)| FieldViolation { field: field.clone(), description: description.clone() })
            .collect(),
    };
    let status = RpcStatus {
        code: code as i32,
        message: message.to_string(),
        details: vec![RpcAny { type_url: format!("{TYPE_PREFIX}{BAD_REQUEST}"), value: bad.encode_to_vec() }],
    };
    tonic::Status::with_details(code, message, Bytes::from(status.encode_to_vec()))
}

/// The standard gRPC → HTTP status table (as grpc-gateway uses it).
pub fn http_status_for(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// What the renderers need from a status.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub violations: Vec<(String, String)>,
    pub reason: Option<String>,
    pub has_request_info: bool,
    /// Each detail as proto3 JSON with `@type` (zitadel's `details`).
    pub details_json: Vec<Value>,
}

/// Decodes the `google.rpc.Status` in `details`; undecodable bytes are treated as no details.
pub(crate) fn decode_details(pool: Option<&DescriptorPool>, details: &[u8]) -> Decoded {
    let mut out = Decoded::default();
    if details.is_empty() {
        return out;
    }
    let Ok(status) = RpcStatus::decode(details) else { return out };
    for any in status.details {
        let type_name = any.type_url.rsplit('/').next().unwrap_or_default().to_string();
        match type_name.as_str() {
            BAD_REQUEST => {
                if let Ok(b) = BadRequest::decode(any.value.as_slice()) {
                    out.violations.extend(b.field_violations.into_iter().map(|v| (v.field, v.description)));
                }
            }
            ERROR_INFO => {
                if let Ok(info) = ErrorInfo::decode(any.value.as_slice())
                    && !info.reason.is_empty()
                {
                    out.reason.get_or_insert(info.reason);
                }
            }
            REQUEST_INFO => out.has_request_info = true,
            _ => {}
        }
        out.details_json.push(any_to_json(pool, &any, &type_name));
    }
    out
}

fn any_to_json(pool: Option<&DescriptorPool>, any: &RpcAny, type_name: &str) -> Value {
    let rendered = pool
        .and_then(|p| p.get_message_by_name(type_name))
        .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok())
        .and_then(|msg| serde_json::to_value(&msg).ok())
        .or_else(|| known_to_json(type_name, &any.value));
    match rendered {
        Some(Value::Object(fields)) => {
            let mut obj = Map::with_capacity(fields.len() + 1);
            obj.insert("@type".into(), Value::String(any.type_url.clone()));
            obj.extend(fields);
            Value::Object(obj)
        }
        // Well-known types with a non-object JSON form nest it under `value`, as proto3 JSON does.
        Some(other) => json!({ "@type": any.type_url, "value": other }),
        None => json!({
            "@type": any.type_url,
            "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
        }),
    }
}

/// proto3 JSON of the google.rpc details this crate knows, for pools that lack their descriptors.
fn known_to_json(type_name: &str, bytes: &[u8]) -> Option<Value> {
    let mut obj = Map::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            obj.insert(k.to_string(), Value::String(v.to_string()));
        }
    };
    match type_name {
        BAD_REQUEST => {
            let b = BadRequest::decode(bytes).ok()?;
            let list: Vec<Value> = b
                .field_violations
                .iter()
                .map(|v| {
                    let mut o = Map::new();
                    if !v.field.is_empty() {
                        o.insert("field".into(), Value::String(v.field.clone()));
                    }
                    if !v.description.is_empty() {
                        o.insert("description".into(), Value::String(v.description.clone()));
                    }
                    Value::Object(o)
                })
                .collect();
            if !list.is_empty() {
                obj.insert("fieldViolations".into(), Value::Array(list));
            }
        }
        ERROR_INFO => {
            let info = ErrorInfo::decode(bytes).ok()?;
            put("reason", &info.reason);
            put("domain", &info.domain);
            if !info.metadata.is_empty() {
                let mut entries: Vec<_> = info.metadata.into_iter().collect();
                entries.sort();
                obj.insert(
                    "metadata".into(),
                    Value::Object(entries.into_iter().map(|(k, v)| (k, Value::String(v))).collect()),
                );
            }
        }
        REQUEST_INFO => {
            let info = RequestInfo::decode(bytes).ok()?;
            put("requestId", &info.request_id);
            put("servingData", &info.serving_data);
        }
        _ => return None,
    }
    Some(Value::Object(obj))
}

/// Everything a dialect needs to render one error.
pub(crate) struct ErrorInput<'a> {
    pub dialect: Dialect,
    pub http: StatusCode,
    pub code: Code,
    pub message: &'a str,
    pub decoded: Decoded,
    pub request_id: Option<&'a str>,
    /// authentik: render `{"detail": ..}` even for InvalidArgument (the gateway's own parse/transport errors).
    pub force_detail: bool,
}

/// The JSON body of an error in its dialect.
pub(crate) fn error_body(input: ErrorInput<'_>) -> Value {
    let ErrorInput { dialect, http, code, message, mut decoded, request_id, force_detail } = input;
    match dialect {
        Dialect::Zitadel => {
            if let Some(id) = request_id
                && !decoded.has_request_info
            {
                decoded.details_json.push(json!({
                    "@type": format!("{TYPE_PREFIX}{REQUEST_INFO}"),
                    "requestId": id,
                }));
            }
            json!({ "code": code as i32, "message": message, "details": decoded.details_json })
        }
        Dialect::Authentik => {
            // The stable error id travels in `code`; DRF's `detail` is the sentence alone.
            let suffix = decoded.reason.as_ref().map(|r| format!(" ({r})"));
            let message = suffix.as_deref().and_then(|sfx| message.strip_suffix(sfx)).unwrap_or(message);
            if code == Code::InvalidArgument && !force_detail {
                let mut obj = Map::new();
                if decoded.violations.is_empty() {
                    obj.insert("non_field_errors".into(), json!([message]));
                }
                for (field, description) in decoded.violations {
                    let key = if field.is_empty() { "non_field_errors".to_string() } else { field };
                    let slot = obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(list) = slot {
                        list.push(Value::String(description));
                    } else {
                        *slot = json!([description]);
                    }
                }
                return Value::Object(obj);
            }
            let mut obj = Map::new();
            obj.insert("detail".into(), Value::String(message.to_string()));
            if let Some(reason) = decoded.reason {
                obj.insert("code".into(), Value::String(reason));
            }
            if let Some(id) = request_id {
                obj.insert("request_id".into(), Value::String(id.to_string()));
            }
            Value::Object(obj)
        }
        Dialect::PingOne => {
            let top = pingone_code(http, code);
            let mut obj = Map::new();
            let id = match request_id {
                Some(id) => id.to_string(),
                None => uuid::Uuid::new_v4().to_string(),
            };
            obj.insert("id".into(), Value::String(id));
            obj.insert("code".into(), Value::String(top.to_string()));
            obj.insert("message".into(), Value::String(message.to_string()));
            let mut details: Vec<Value> = decoded
                .violations
                .into_iter()
                .map(|(field, description)| json!({ "code": "INVALID_VALUE", "target": field, "message": description }))
                .collect();
            if let Some(reason) = decoded.reason {
                details.push(json!({ "code": reason, "message": message }));
            }
            if !details.is_empty() {
                obj.insert("details".into(), Value::Array(details));
            }
            Value::Object(obj)
        }
    }
}

fn pingone_code(http: StatusCode, code: Code) -> &'static str {
    match http.as_u16() {
        405 => return "METHOD_NOT_ALLOWED",
        415 => return "UNSUPPORTED_MEDIA_TYPE",
        413 => return "REQUEST_FAILED",
        _ => {}
    }
    match code {
        Code::InvalidArgument | Code::OutOfRange => "INVALID_DATA",
        Code::NotFound => "NOT_FOUND",
        Code::Unauthenticated | Code::PermissionDenied => "ACCESS_FAILED",
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted | Code::Cancelled => "REQUEST_FAILED",
        Code::ResourceExhausted => "REQUEST_LIMITED",
        Code::Ok
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => "UNEXPECTED_ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        assert_eq!(http_status_for(Code::Cancelled).as_u16(), 499);
        assert_eq!(http_status_for(Code::FailedPrecondition).as_u16(), 400);
        assert_eq!(http_status_for(Code::Unimplemented).as_u16(), 501);
        assert_eq!(http_status_for(Code::Aborted).as_u16(), 409);
        assert_eq!(http_status_for(Code::DataLoss).as_u16(), 500);
    }

    #[test]
    fn known_details_render_without_a_pool() {
        let s = status_with_violations(Code::InvalidArgument, "bad", &[("slug".into(), "too long".into())]);
        let d = decode_details(None, s.details());
        assert_eq!(d.violations, vec![("slug".to_string(), "too long".to_string())]);
        assert_eq!(
            d.details_json,
            vec![
                json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "slug", "description": "too long"}]})
            ]
        );
        assert!(decode_details(None, b"\xff\xff garbage").violations.is_empty());
    }

    #[test]
    fn unknown_detail_is_base64() {
        let status = RpcStatus {
            code: 5,
            message: "m".into(),
            details: vec![RpcAny { type_url: "type.googleapis.com/x.Y".into(), value: vec![1, 2, 3] }],
        };
        let d = decode_details(None, &status.encode_to_vec());
        assert_eq!(d.details_json, vec![json!({"@type": "type.googleapis.com/x.Y", "value": "AQID"})]);
    }
}
