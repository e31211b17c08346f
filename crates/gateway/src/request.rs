//! Building the handler's request JSON from body, query string and path captures.
//!
//! The JSON handed to handlers is what the pbjson serde impls read: keys are json names, 64-bit integers are
//! strings, enums are full value names, `null`s are dropped, and FieldMask is `{"paths": [<proto paths>]}`
//! (pbjson-types encodes FieldMask as a plain message, not as the proto3 comma-separated string).

use base64::Engine;
use serde_json::{Map, Number, Value};

use crate::annotations::Dialect;
use crate::plan::{Card, FieldPlan, MessagePlan, Plans, Scalar, Ty, Wkt, camel_to_snake};

/// A client mistake in one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// Dotted proto field path (`flow.designation`); empty for the request as a whole.
    pub field: String,
    pub description: String,
}

impl FieldError {
    fn new(field: &str, description: impl Into<String>) -> FieldError {
        FieldError { field: field.to_string(), description: description.into() }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 64 {
        let cut = (0..=64).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

/// Normalises a client JSON object for message `msg` into handler JSON.
pub(crate) fn normalize_message(
    plans: &Plans,
    msg: usize,
    value: &Value,
    dialect: Dialect,
    prefix: &str,
) -> Result<Map<String, Value>, FieldError> {
    let Some(plan) = plans.messages.get(msg) else {
        return Err(FieldError::new(prefix, "unknown message type"));
    };
    let Value::Object(obj) = value else {
        let description = match dialect {
            Dialect::Authentik => format!("Invalid data. Expected a dictionary, but got {}.", py_type(value)),
            Dialect::Zitadel | Dialect::PingOne => format!("expected a JSON object, got {}", short(value)),
        };
        return Err(FieldError::new(prefix, description));
    };
    let mut out = Map::new();
    let mut seen: Vec<usize> = Vec::new();
    let mut oneof_set: Vec<(usize, usize)> = Vec::new();
    for (key, v) in obj {
        // Unknown keys are ignored, as protojson with DiscardUnknown and DRF both do.
        let Some(&fi) = plan.by_name.get(key.as_str()) else { continue };
        let Some(field) = plan.fields.get(fi) else { continue };
        let path = join(prefix, &field.name);
        if seen.contains(&fi) {
            return Err(FieldError::new(&path, "field given twice (under its proto and its JSON name)"));
        }
        seen.push(fi);
        if v.is_null() && !(field.card == Card::Single && field.ty == Ty::Wkt(Wkt::Value)) {
            continue;
        }
        if let Some(o) = field.oneof {
            if let Some((_, other)) = oneof_set.iter().find(|(oo, _)| *oo == o) {
                let other = plan.fields.get(*other).map(|f| f.name.as_str()).unwrap_or_default();
                return Err(FieldError::new(
                    &path,
                    format!("only one of the oneof `{}` may be set, `{other}` is set too", plan.oneof_names[o]),
                ));
            }
            oneof_set.push((o, fi));
        }
        let converted = normalize_field(plans, field, v, dialect, &path)?;
        out.insert(field.json_name.clone(), converted);
    }
    Ok(out)
}

/// Normalises the JSON value of one field (all its cardinality).
pub(crate) fn normalize_field(
    plans: &Plans,
    field: &FieldPlan,
    v: &Value,
    dialect: Dialect,
    path: &str,
) -> Result<Value, FieldError> {
    let authentik = dialect == Dialect::Authentik;
    match field.card {
        Card::Single => normalize_elem(plans, field.ty, v, dialect, path),
        Card::Repeated => {
            let Value::Array(items) = v else {
                let description = if authentik {
                    format!("Expected a list of items but got type \"{}\".", py_type(v))
                } else {
                    format!("expected a JSON array, got {}", short(v))
                };
                return Err(FieldError::new(path, description));
            };
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if item.is_null() {
                    let description =
                        if authentik { "This field may not be null." } else { "null is not allowed inside a list" };
                    return Err(FieldError::new(path, description));
                }
                out.push(normalize_elem(plans, field.ty, item, dialect, path)?);
            }
            Ok(Value::Array(out))
        }
        Card::Map(key) => {
            let Value::Object(entries) = v else {
                let description = if authentik {
                    format!("Expected a dictionary of items but got type \"{}\".", py_type(v))
                } else {
                    format!("expected a JSON object, got {}", short(v))
                };
                return Err(FieldError::new(path, description));
            };
            let mut out = Map::new();
            for (k, item) in entries {
                if key != Scalar::String {
                    text_scalar(key, k, path)?;
                }
                if item.is_null() {
                    return Err(FieldError::new(path, "null is not allowed as a map value"));
                }
                out.insert(k.clone(), normalize_elem(plans, field.ty, item, dialect, path)?);
            }
            Ok(Value::Object(out))
        }
    }
}

fn normalize_elem(plans: &Plans, ty: Ty, v: &Value, dialect: Dialect, path: &str) -> Result<Value, FieldError> {
    let result = convert_elem(plans, ty, v, dialect, path);
    if dialect == Dialect::Authentik { result.map_err(|err| drf_error(ty, v, err)) } else { result }
}

/// Rewords a conversion error the way DRF words it for the field's type, so that authentik clients see
/// `{"designation": ["\"x\" is not a valid choice."]}`. Errors from inside a nested object keep their
/// own (already reworded) field and text.
fn drf_error(ty: Ty, v: &Value, err: FieldError) -> FieldError {
    let description = match ty {
        Ty::Scalar(Scalar::Bool) | Ty::Wkt(Wkt::Wrapper(Scalar::Bool)) => "Must be a valid boolean.".to_string(),
        Ty::Scalar(Scalar::I32 | Scalar::U32 | Scalar::I64 | Scalar::U64)
        | Ty::Wkt(Wkt::Wrapper(Scalar::I32 | Scalar::U32 | Scalar::I64 | Scalar::U64)) => {
            "A valid integer is required.".to_string()
        }
        Ty::Scalar(Scalar::F32 | Scalar::F64) | Ty::Wkt(Wkt::Wrapper(Scalar::F32 | Scalar::F64)) => {
            "A valid number is required.".to_string()
        }
        Ty::Scalar(Scalar::String) | Ty::Wkt(Wkt::Wrapper(Scalar::String)) => "Not a valid string.".to_string(),
        Ty::Enum(_) => {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            format!("\"{text}\" is not a valid choice.")
        }
        Ty::Wkt(Wkt::Timestamp) => "Datetime has wrong format. Use one of these formats instead: \
             YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
            .to_string(),
        Ty::Message(_) if v.is_object() => return err,
        Ty::Message(_) | Ty::Wkt(Wkt::Struct | Wkt::Empty | Wkt::Any) => {
            format!("Invalid data. Expected a dictionary, but got {}.", py_type(v))
        }
        Ty::Scalar(Scalar::Bytes)
        | Ty::Wkt(Wkt::Wrapper(Scalar::Bytes) | Wkt::Duration | Wkt::FieldMask | Wkt::Value | Wkt::ListValue) => {
            return err;
        }
    };
    FieldError { field: err.field, description }
}

/// The Python type name DRF puts in its messages for a JSON value.
fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn convert_elem(plans: &Plans, ty: Ty, v: &Value, dialect: Dialect, path: &str) -> Result<Value, FieldError> {
    match ty {
        Ty::Scalar(s) => json_scalar(s, v, path),
        Ty::Enum(e) => match v {
            Value::String(s) => enum_from_text(plans, e, s, dialect, path),
            Value::Number(n) => match n.as_i64().and_then(|n| i32::try_from(n).ok()) {
                Some(n) => enum_from_number(plans, e, n, dialect, path),
                None => Err(FieldError::new(path, format!("{n} is not a valid choice"))),
            },
            other @ (Value::Null | Value::Bool(_) | Value::Array(_) | Value::Object(_)) => {
                Err(FieldError::new(path, format!("{} is not a valid choice", short(other))))
            }
        },
        Ty::Message(m) => Ok(Value::Object(normalize_message(plans, m, v, dialect, path)?)),
        Ty::Wkt(w) => normalize_wkt(w, v, path),
    }
}

fn normalize_wkt(w: Wkt, v: &Value, path: &str) -> Result<Value, FieldError> {
    match (w, v) {
        (Wkt::Timestamp, Value::String(s)) => {
            check_timestamp(s).map_err(|e| FieldError::new(path, e))?;
            Ok(v.clone())
        }
        (Wkt::Duration, Value::String(s)) => {
            check_duration(s).map_err(|e| FieldError::new(path, e))?;
            Ok(v.clone())
        }
        (Wkt::FieldMask, Value::String(s)) => Ok(field_mask_from_text(s)),
        (Wkt::FieldMask, Value::Object(o)) => match o.get("paths") {
            Some(Value::Array(paths)) if paths.iter().all(Value::is_string) => {
                Ok(serde_json::json!({ "paths": paths }))
            }
            None => Ok(serde_json::json!({ "paths": [] })),
            Some(_) => Err(FieldError::new(path, "expected a field mask string")),
        },
        (Wkt::Struct | Wkt::Empty, Value::Object(_)) | (Wkt::ListValue, Value::Array(_)) | (Wkt::Value, _) => {
            Ok(v.clone())
        }
        (Wkt::Any, Value::Object(_)) => Ok(v.clone()),
        (Wkt::Wrapper(s), _) => json_scalar(s, v, path),
        (Wkt::Timestamp | Wkt::Duration | Wkt::FieldMask, _) => {
            Err(FieldError::new(path, format!("expected a string, got {}", short(v))))
        }
        (Wkt::Struct | Wkt::Empty | Wkt::Any, _) => {
            Err(FieldError::new(path, format!("expected a JSON object, got {}", short(v))))
        }
        (Wkt::ListValue, _) => Err(FieldError::new(path, format!("expected a JSON array, got {}", short(v)))),
    }
}

/// FieldMask text form (`a,bC.d`) → pbjson form with proto paths.
pub(crate) fn field_mask_from_text(s: &str) -> Value {
    let paths: Vec<Value> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| Value::String(p.split('.').map(camel_to_snake).collect::<Vec<_>>().join(".")))
        .collect();
    serde_json::json!({ "paths": paths })
}

fn json_scalar(s: Scalar, v: &Value, path: &str) -> Result<Value, FieldError> {
    match (s, v) {
        (Scalar::Bool, Value::Bool(_)) => Ok(v.clone()),
        (Scalar::String, Value::String(_)) => Ok(v.clone()),
        (Scalar::Bytes, Value::String(text)) => {
            decode_base64(text).map_err(|e| FieldError::new(path, e))?;
            Ok(v.clone())
        }
        (Scalar::I32 | Scalar::U32 | Scalar::I64 | Scalar::U64, Value::Number(n)) => integer(s, &n.to_string(), path),
        (Scalar::I32 | Scalar::U32 | Scalar::I64 | Scalar::U64 | Scalar::F32 | Scalar::F64, Value::String(text)) => {
            text_scalar(s, text, path)
        }
        (Scalar::F32 | Scalar::F64, Value::Number(n)) => float(s, n.as_f64().unwrap_or(f64::NAN), path),
        _ => Err(FieldError::new(path, format!("expected {}, got {}", scalar_name(s), short(v)))),
    }
}

fn scalar_name(s: Scalar) -> &'static str {
    match s {
        Scalar::Bool => "a boolean",
        Scalar::I32 => "a 32-bit integer",
        Scalar::U32 => "an unsigned 32-bit integer",
        Scalar::I64 => "a 64-bit integer",
        Scalar::U64 => "an unsigned 64-bit integer",
        Scalar::F32 | Scalar::F64 => "a number",
        Scalar::String => "a string",
        Scalar::Bytes => "a base64 string",
    }
}

fn integer(s: Scalar, text: &str, path: &str) -> Result<Value, FieldError> {
    let bad = || FieldError::new(path, format!("expected {}, got {text:?}", scalar_name(s)));
    // JSON numbers like `3.0` and `1e3` are integral values written in float syntax.
    let as_int = |t: &str| -> Option<i128> {
        if let Ok(i) = t.parse::<i128>() {
            return Some(i);
        }
        let f: f64 = t.parse().ok()?;
        (f.is_finite() && f.fract() == 0.0 && f.abs() < 1.9e19).then_some(f as i128)
    };
    let i = as_int(text.trim()).ok_or_else(bad)?;
    match s {
        Scalar::I32 => i32::try_from(i).map(|n| Value::Number(n.into())).map_err(|_| bad()),
        Scalar::U32 => u32::try_from(i).map(|n| Value::Number(n.into())).map_err(|_| bad()),
        Scalar::I64 => i64::try_from(i).map(|n| Value::String(n.to_string())).map_err(|_| bad()),
        Scalar::U64 => u64::try_from(i).map(|n| Value::String(n.to_string())).map_err(|_| bad()),
        Scalar::Bool | Scalar::F32 | Scalar::F64 | Scalar::String | Scalar::Bytes => Err(bad()),
    }
}

fn float(s: Scalar, f: f64, path: &str) -> Result<Value, FieldError> {
    if s == Scalar::F32 && f.is_finite() && f.abs() > f64::from(f32::MAX) {
        return Err(FieldError::new(path, format!("{f} is out of range for a 32-bit float")));
    }
    Ok(match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    })
}

/// Converts a path or query string to handler JSON for a scalar.
pub(crate) fn text_scalar(s: Scalar, text: &str, path: &str) -> Result<Value, FieldError> {
    match s {
        Scalar::Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Value::Bool(true)),
            "false" | "0" => Ok(Value::Bool(false)),
            _ => Err(FieldError::new(path, format!("expected a boolean (true/false), got {text:?}"))),
        },
        Scalar::I32 | Scalar::U32 | Scalar::I64 | Scalar::U64 => integer(s, text, path),
        Scalar::F32 | Scalar::F64 => match text {
            "NaN" => Ok(Value::String("NaN".into())),
            "Infinity" => Ok(Value::String("Infinity".into())),
            "-Infinity" => Ok(Value::String("-Infinity".into())),
            _ => match text.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => float(s, f, path),
                _ => Err(FieldError::new(path, format!("expected a number, got {text:?}"))),
            },
        },
        Scalar::String => Ok(Value::String(text.to_string())),
        Scalar::Bytes => {
            decode_base64(text).map_err(|e| FieldError::new(path, e))?;
            Ok(Value::String(text.to_string()))
        }
    }
}

/// Converts a path or query string to handler JSON for a field element type.
pub(crate) fn text_value(plans: &Plans, ty: Ty, text: &str, dialect: Dialect, path: &str) -> Result<Value, FieldError> {
    match ty {
        Ty::Scalar(s) | Ty::Wkt(Wkt::Wrapper(s)) => text_scalar(s, text, path),
        Ty::Enum(e) => match text.parse::<i32>() {
            Ok(n) => enum_from_number(plans, e, n, dialect, path),
            Err(_) => enum_from_text(plans, e, text, dialect, path),
        },
        Ty::Wkt(Wkt::Timestamp) => {
            check_timestamp(text).map_err(|e| FieldError::new(path, e))?;
            Ok(Value::String(text.to_string()))
        }
        Ty::Wkt(Wkt::Duration) => {
            check_duration(text).map_err(|e| FieldError::new(path, e))?;
            Ok(Value::String(text.to_string()))
        }
        Ty::Wkt(Wkt::FieldMask) => Ok(field_mask_from_text(text)),
        Ty::Wkt(Wkt::Value) => Ok(Value::String(text.to_string())),
        Ty::Message(_) | Ty::Wkt(Wkt::Struct | Wkt::ListValue | Wkt::Any | Wkt::Empty) => {
            Err(FieldError::new(path, "a message cannot be set from a single text value; name one of its fields"))
        }
    }
}

fn enum_from_text(plans: &Plans, e: usize, text: &str, dialect: Dialect, path: &str) -> Result<Value, FieldError> {
    let Some(plan) = plans.enums.get(e) else { return Err(FieldError::new(path, "unknown enum")) };
    let number = match dialect {
        // authentik clients send `authentication` for `FLOW_DESIGNATION_AUTHENTICATION`, and DRF choice
        // fields take exactly the documented spelling: no proto names, no other case.
        Dialect::Authentik => plan.by_short.get(text).copied(),
        Dialect::Zitadel | Dialect::PingOne => plan.by_name.get(text).copied(),
    };
    // authentik has no "unspecified" choice: the zero value is what an absent field means, not a value.
    let number = number.filter(|n| dialect != Dialect::Authentik || plan.short_of.get(n).is_some_and(Option::is_some));
    match number.and_then(|n| plan.name_of.get(&n)) {
        Some(name) => Ok(Value::String(name.clone())),
        None => Err(FieldError::new(path, format!("\"{text}\" is not a valid choice"))),
    }
}

fn enum_from_number(plans: &Plans, e: usize, n: i32, dialect: Dialect, path: &str) -> Result<Value, FieldError> {
    if dialect == Dialect::Authentik {
        // A DRF choice field is a string; `1` is not one of the choices.
        return Err(FieldError::new(path, format!("\"{n}\" is not a valid choice")));
    }
    match plans.enums.get(e).and_then(|p| p.name_of.get(&n)) {
        Some(name) => Ok(Value::String(name.clone())),
        None => Err(FieldError::new(path, format!("{n} is not a valid choice"))),
    }
}

pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::{DecodePaddingMode, general_purpose};
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    let _ = general_purpose::STANDARD;
    standard.decode(text).or_else(|_| url_safe.decode(text)).map_err(|e| format!("invalid base64: {e}"))
}

/// Checks the RFC 3339 shape proto3 JSON requires for Timestamps (`2024-01-02T03:04:05[.n]Z|±hh:mm`).
pub(crate) fn check_timestamp(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    let ok_head = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !ok_head {
        return Err(format!("expected an RFC 3339 timestamp, got {s:?}"));
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start || i - start > 9 {
            return Err(format!("expected an RFC 3339 timestamp, got {s:?}"));
        }
    }
    let zone = &b[i..];
    let zone_ok = zone == b"Z"
        || zone == b"z"
        || (zone.len() == 6
            && (zone[0] == b'+' || zone[0] == b'-')
            && zone[1..3].iter().all(u8::is_ascii_digit)
            && zone[3] == b':'
            && zone[4..6].iter().all(u8::is_ascii_digit));
    let month: u32 = s[5..7].parse().unwrap_or(0);
    let day: u32 = s[8..10].parse().unwrap_or(0);
    let hour: u32 = s[11..13].parse().unwrap_or(99);
    let minute: u32 = s[14..16].parse().unwrap_or(99);
    let second: u32 = s[17..19].parse().unwrap_or(99);
    if !zone_ok || !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(format!("expected an RFC 3339 timestamp, got {s:?}"));
    }
    Ok(())
}

/// Checks the proto3 JSON Duration form (`-1.5s`, `18000s`).
pub(crate) fn check_duration(s: &str) -> Result<(), String> {
    let bad = || format!("expected a duration like \"1.5s\", got {s:?}");
    let body = s.strip_suffix('s').ok_or_else(bad)?;
    let body = body.strip_prefix('-').unwrap_or(body);
    let (secs, frac) = match body.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (body, None),
    };
    if secs.is_empty() || secs.len() > 12 || !secs.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    if let Some(f) = frac
        && (f.is_empty() || f.len() > 9 || !f.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(())
}

/// Resolves a dotted path of proto/json names to field indices (every hop but the last a singular message).
pub(crate) fn resolve_path(plans: &Plans, msg: usize, names: &[&str]) -> Result<Vec<usize>, String> {
    let mut at = msg;
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let plan = plans.messages.get(at).ok_or("unknown message")?;
        let fi = *plan.by_name.get(*name).ok_or_else(|| format!("no field `{name}` in {}", plan.full_name))?;
        out.push(fi);
        if i + 1 < names.len() {
            match plan.fields.get(fi).map(|f| (f.ty, f.card)) {
                Some((Ty::Message(m), Card::Single)) => at = m,
                _ => return Err(format!("`{name}` in {} is not a singular message field", plan.full_name)),
            }
        }
    }
    Ok(out)
}

/// The plans of the fields along `path`, starting at message `msg`.
pub(crate) fn fields_along<'a>(plans: &'a Plans, msg: usize, path: &[usize]) -> Option<Vec<&'a FieldPlan>> {
    let mut at = msg;
    let mut out = Vec::with_capacity(path.len());
    for &fi in path {
        let f = plans.messages.get(at)?.fields.get(fi)?;
        out.push(f);
        if let Ty::Message(m) = f.ty {
            at = m;
        }
    }
    Some(out)
}

/// How a value lands at a path: replace what is there, or append to a list.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    Set,
    Append,
}

/// Places `value` at the json-name path of `fields` inside `root`, creating intermediate objects.
pub(crate) fn put(root: &mut Map<String, Value>, fields: &[&FieldPlan], value: Value, mode: Put) {
    let Some((last, inner)) = fields.split_last() else { return };
    let mut at = root;
    for f in inner {
        let slot = at.entry(f.json_name.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(next) = slot else { return };
        at = next;
    }
    match mode {
        Put::Set => {
            at.insert(last.json_name.clone(), value);
        }
        Put::Append => {
            let slot = at.entry(last.json_name.clone()).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = slot {
                items.push(value);
            } else {
                *slot = Value::Array(vec![value]);
            }
        }
    }
}

/// Proto field paths of the keys a client sent in `body` (a JSON object for message `msg`), for update masks.
pub(crate) fn mask_paths(
    plans: &Plans,
    msg: usize,
    body: &Value,
    prefix: &str,
    skip: Option<usize>,
    out: &mut Vec<String>,
) {
    let (Some(plan), Value::Object(obj)) = (plans.messages.get(msg), body) else { return };
    for (key, v) in obj {
        let Some(&fi) = plan.by_name.get(key.as_str()) else { continue };
        if Some(fi) == skip {
            continue;
        }
        let Some(field) = plan.fields.get(fi) else { continue };
        let path = join(prefix, &field.name);
        match (field.ty, field.card, v) {
            (Ty::Message(m), Card::Single, Value::Object(inner)) if !inner.is_empty() => {
                mask_paths(plans, m, v, &path, None, out);
            }
            _ => {
                if !out.contains(&path) {
                    out.push(path);
                }
            }
        }
    }
}

/// Looks up a query key (dotted json or proto names) on message `msg`.
pub(crate) fn query_fields<'a>(plans: &'a Plans, msg: usize, key: &str) -> Option<(Vec<usize>, Vec<&'a FieldPlan>)> {
    let names: Vec<&str> = key.split('.').collect();
    let path = resolve_path(plans, msg, &names).ok()?;
    let fields = fields_along(plans, msg, &path)?;
    Some((path, fields))
}

/// The message plan at the end of `path` (for a body field of message type).
pub(crate) fn message_at<'a>(plans: &'a Plans, fields: &[&FieldPlan]) -> Option<&'a MessagePlan> {
    match fields.last()?.ty {
        Ty::Message(m) => plans.messages.get(m),
        Ty::Scalar(_) | Ty::Enum(_) | Ty::Wkt(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_durations() {
        for ok in ["2024-01-02T03:04:05Z", "2024-01-02T03:04:05.123456789+01:00", "2024-12-31t23:59:60z"] {
            assert!(check_timestamp(ok).is_ok(), "{ok}");
        }
        for bad in [
            "2024-01-02",
            "2024-13-02T03:04:05Z",
            "2024-01-02T03:04:05",
            "2024-01-02T03:04:05.Z",
            "xxxxxxxxxxxxxxxxxxxxxx",
            "2024-01-02T03:04:05+0100",
        ] {
            assert!(check_timestamp(bad).is_err(), "{bad}");
        }
        for ok in ["18000s", "-1.5s", "0.000000001s"] {
            assert!(check_duration(ok).is_ok(), "{ok}");
        }
        for bad in ["18000", "s", "1.s", "1.0000000001s", "abc", "1h"] {
            assert!(check_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scalars_from_text() {
        assert_eq!(text_scalar(Scalar::I64, "-42", "x").unwrap(), Value::String("-42".into()));
        assert_eq!(text_scalar(Scalar::I32, "7", "x").unwrap(), serde_json::json!(7));
        assert!(text_scalar(Scalar::I32, "3000000000", "x").is_err());
        assert!(text_scalar(Scalar::U64, "-1", "x").is_err());
        assert_eq!(text_scalar(Scalar::Bool, "TRUE", "x").unwrap(), Value::Bool(true));
        assert!(text_scalar(Scalar::Bool, "yes", "x").is_err());
        assert_eq!(text_scalar(Scalar::F64, "NaN", "x").unwrap(), Value::String("NaN".into()));
        assert_eq!(text_scalar(Scalar::F64, "1.5", "x").unwrap(), serde_json::json!(1.5));
        assert!(text_scalar(Scalar::F32, "1e300", "x").is_err());
        assert!(text_scalar(Scalar::Bytes, "!!", "x").is_err());
        assert!(text_scalar(Scalar::Bytes, "aGk", "x").is_ok());
        assert_eq!(json_scalar(Scalar::I64, &serde_json::json!(3.0), "x").unwrap(), Value::String("3".into()));
    }

    #[test]
    fn field_masks() {
        assert_eq!(
            field_mask_from_text("title,compatibilityMode,stage.metaModel"),
            serde_json::json!({"paths": ["title", "compatibility_mode", "stage.meta_model"]})
        );
        assert_eq!(field_mask_from_text(""), serde_json::json!({"paths": []}));
    }
}
