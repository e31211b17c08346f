//! Reading `google.api.http` rules and flowgate's own method/service options out of a descriptor pool.
//!
//! This file depends only on `std` and `prost_reflect`: the root build script includes it verbatim to
//! generate the route table at build time, so it must compile outside this crate.

use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, Kind, MethodDescriptor, Value};

/// Full names of the option extensions that carry dialect, success code and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionNames {
    /// Service option (an enum whose value names end in `_ZITADEL`, `_AUTHENTIK` or `_PINGONE`).
    pub dialect: String,
    /// Method option (uint32): the HTTP success status; 0 or missing means 200.
    pub success_code: String,
    /// Method option (string): the request media type that selects this RPC among RPCs sharing verb and path.
    pub media_type: String,
}

/// How JSON and errors look on the wire for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// grpc-gateway/protojson style: lowerCamelCase, 64-bit integers as strings, `{code,message,details}` errors.
    Zitadel,
    /// Django REST framework style: snake_case, every key present, `{"field": [..]}` / `{"detail": ..}` errors.
    Authentik,
    /// PingOne platform style: lowerCamelCase, numbers as numbers, `{id,code,message,details}` errors.
    PingOne,
}

/// One HTTP binding of one RPC (a primary rule or one of its `additional_bindings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBinding {
    /// Full service name, e.g. `flowgate.system.v1.SystemService`.
    pub service: String,
    /// Method name, e.g. `GetInfo`.
    pub method: String,
    /// Full name of the request message.
    pub input: String,
    /// Full name of the response message.
    pub output: String,
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE` or the kind of a custom pattern.
    pub verb: String,
    /// The path template exactly as written in the rule.
    pub path: String,
    /// `""` (no body), `"*"` (whole request) or a field path.
    pub body: String,
    /// `""` (whole response) or the field path of the response part to render.
    pub response_body: String,
    /// Wire dialect of the service.
    pub dialect: Dialect,
    /// HTTP status on success.
    pub success_code: u16,
    /// Request media type that selects this binding, or `""`.
    pub media_type: String,
}

impl HttpBinding {
    /// The gRPC path `/<service>/<method>` this binding forwards to.
    pub fn grpc_path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// Collects every `google.api.http` binding in `pool` (primary rule, then additional bindings, in declaration order).
pub fn http_bindings(pool: &DescriptorPool, names: &OptionNames) -> Result<Vec<HttpBinding>, String> {
    let Some(http_ext) = pool.get_extension_by_name("google.api.http") else {
        // A pool without the annotation cannot carry any rule.
        return Ok(Vec::new());
    };
    let dialect_ext = optional_extension(pool, &names.dialect)?;
    let code_ext = optional_extension(pool, &names.success_code)?;
    let media_ext = optional_extension(pool, &names.media_type)?;

    let mut out = Vec::new();
    for service in pool.services() {
        let dialect = match &dialect_ext {
            Some(ext) => service_dialect(&service.options(), ext)?,
            None => Dialect::Zitadel,
        };
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http_ext) {
                continue;
            }
            let success_code = match &code_ext {
                Some(ext) if options.has_extension(ext) => {
                    let value = options.get_extension(ext);
                    let Value::U32(n) = value.as_ref() else {
                        return Err(format!("{}: success code option is not a uint32", method.full_name()));
                    };
                    match *n {
                        0 => 200,
                        n => u16::try_from(n)
                            .ok()
                            .filter(|c| (100..600).contains(c))
                            .ok_or_else(|| format!("{}: success code {n} is not an HTTP status", method.full_name()))?,
                    }
                }
                _ => 200,
            };
            let media_type = match &media_ext {
                Some(ext) if options.has_extension(ext) => {
                    let value = options.get_extension(ext);
                    let Value::String(s) = value.as_ref() else {
                        return Err(format!("{}: media type option is not a string", method.full_name()));
                    };
                    s.clone()
                }
                _ => String::new(),
            };
            let Value::Message(rule) = options.get_extension(&http_ext).into_owned() else {
                return Err(format!("{}: google.api.http is not a message", method.full_name()));
            };
            let base = BindingBase { method: &method, dialect, success_code, media_type: &media_type };
            out.push(binding_from_rule(&base, &rule)?);
            if let Some(Value::List(extra)) = rule.get_field_by_name("additional_bindings").map(|v| v.into_owned()) {
                for item in extra {
                    let Value::Message(rule) = item else {
                        return Err(format!("{}: additional binding is not a message", method.full_name()));
                    };
                    out.push(binding_from_rule(&base, &rule)?);
                }
            }
        }
    }
    Ok(out)
}

/// Renders `bindings` as a Rust expression of type `Vec<::flowgate_gateway::HttpBinding>`.
pub fn to_rust_code(bindings: &[HttpBinding]) -> String {
    let mut code = String::from("vec![\n");
    for b in bindings {
        let dialect = match b.dialect {
            Dialect::Zitadel => "Zitadel",
            Dialect::Authentik => "Authentik",
            Dialect::PingOne => "PingOne",
        };
        // `{:?}` of a str is a valid Rust string literal (escapes included).
        code.push_str(&format!(
            "    ::flowgate_gateway::HttpBinding {{ service: {:?}.to_string(), method: {:?}.to_string(), \
             input: {:?}.to_string(), output: {:?}.to_string(), verb: {:?}.to_string(), path: {:?}.to_string(), \
             body: {:?}.to_string(), response_body: {:?}.to_string(), dialect: ::flowgate_gateway::Dialect::{dialect}, \
             success_code: {}u16, media_type: {:?}.to_string() }},\n",
            b.service,
            b.method,
            b.input,
            b.output,
            b.verb,
            b.path,
            b.body,
            b.response_body,
            b.success_code,
            b.media_type,
        ));
    }
    code.push(']');
    code
}

struct BindingBase<'a> {
    method: &'a MethodDescriptor,
    dialect: Dialect,
    success_code: u16,
    media_type: &'a str,
}

fn optional_extension(pool: &DescriptorPool, name: &str) -> Result<Option<ExtensionDescriptor>, String> {
    if name.is_empty() {
        return Ok(None);
    }
    // A named option that the pool does not define is simply never set.
    Ok(pool.get_extension_by_name(name))
}

fn service_dialect(options: &DynamicMessage, ext: &ExtensionDescriptor) -> Result<Dialect, String> {
    if !options.has_extension(ext) {
        return Ok(Dialect::Zitadel);
    }
    let Value::EnumNumber(number) = options.get_extension(ext).into_owned() else {
        return Err(format!("dialect option {} is not an enum", ext.full_name()));
    };
    let Kind::Enum(enum_desc) = ext.kind() else {
        return Err(format!("dialect option {} is not an enum", ext.full_name()));
    };
    let name = enum_desc.get_value(number).map(|v| v.name().to_string()).unwrap_or_default();
    if name.ends_with("_AUTHENTIK") || name == "AUTHENTIK" {
        Ok(Dialect::Authentik)
    } else if name.ends_with("_PINGONE") || name == "PINGONE" {
        Ok(Dialect::PingOne)
    } else {
        // `*_ZITADEL`, the unspecified zero value and unknown numbers all fall back to the default dialect.
        Ok(Dialect::Zitadel)
    }
}

fn string_field(rule: &DynamicMessage, name: &str) -> String {
    match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn binding_from_rule(base: &BindingBase<'_>, rule: &DynamicMessage) -> Result<HttpBinding, String> {
    let method = base.method;
    let mut pattern = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(verb) {
            pattern = Some((verb.to_ascii_uppercase(), string_field(rule, verb)));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
    {
        pattern = Some((string_field(custom, "kind"), string_field(custom, "path")));
    }
    let Some((verb, path)) = pattern else {
        return Err(format!("{}: google.api.http rule has no pattern", method.full_name()));
    };
    if verb.is_empty() || path.is_empty() {
        return Err(format!("{}: google.api.http rule has an empty verb or path", method.full_name()));
    }
    Ok(HttpBinding {
        service: method.parent_service().full_name().to_string(),
        method: method.name().to_string(),
        input: method.input().full_name().to_string(),
        output: method.output().full_name().to_string(),
        verb,
        path,
        body: string_field(rule, "body"),
        response_body: string_field(rule, "response_body"),
        dialect: base.dialect,
        success_code: base.success_code,
        media_type: base.media_type.to_string(),
    })
}
