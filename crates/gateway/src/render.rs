//! Rendering handler JSON (pbjson output) in a dialect, driven by the precomputed message plans.

use serde_json::{Map, Number, Value};

use crate::annotations::Dialect;
use crate::plan::{Card, FieldPlan, Plans, Scalar, Ty, Wkt, lower_camel};

/// Renders a response message in `dialect`; skips the walk when the plan says nothing changes.
pub(crate) fn render_message(plans: &Plans, msg: usize, value: Value, dialect: Dialect) -> Value {
    let Some(plan) = plans.messages.get(msg) else { return value };
    match dialect {
        Dialect::Zitadel if !plan.zitadel_walk => value,
        Dialect::PingOne if !plan.pingone_walk => value,
        Dialect::Zitadel | Dialect::PingOne => {
            let Value::Object(obj) = value else { return value };
            let mut out = Map::with_capacity(obj.len());
            for (key, v) in obj {
                match plan.by_name.get(key.as_str()).and_then(|i| plan.fields.get(*i)) {
                    Some(field) => {
                        let key = if dialect == Dialect::PingOne { field.json_name.clone() } else { key };
                        out.insert(key, render_field(plans, field, v, dialect));
                    }
                    // Keys outside the schema are the handler's business; pass them on unchanged.
                    None => {
                        out.insert(key, v);
                    }
                }
            }
            Value::Object(out)
        }
        Dialect::Authentik => {
            let mut obj = if let Value::Object(o) = value { o } else { Map::new() };
            let mut out = Map::with_capacity(plan.fields.len());
            for field in &plan.fields {
                let v = obj.remove(&field.json_name).or_else(|| obj.remove(&field.name)).unwrap_or(Value::Null);
                out.insert(field.name.clone(), render_field(plans, field, v, dialect));
            }
            Value::Object(out)
        }
    }
}

/// Renders one field value (any cardinality); `Null` means unset.
pub(crate) fn render_field(plans: &Plans, field: &FieldPlan, v: Value, dialect: Dialect) -> Value {
    match (field.card, v) {
        (Card::Repeated, Value::Array(items)) => {
            Value::Array(items.into_iter().map(|i| render_elem(plans, field.ty, i, dialect)).collect())
        }
        (Card::Map(_), Value::Object(entries)) => {
            Value::Object(entries.into_iter().map(|(k, i)| (k, render_elem(plans, field.ty, i, dialect))).collect())
        }
        (Card::Repeated, Value::Null) if dialect == Dialect::Authentik => Value::Array(Vec::new()),
        (Card::Map(_), Value::Null) if dialect == Dialect::Authentik => Value::Object(Map::new()),
        (Card::Single, Value::Null) if dialect == Dialect::Authentik => default_single(plans, field),
        (_, v) => render_elem(plans, field.ty, v, dialect),
    }
}

fn default_single(plans: &Plans, field: &FieldPlan) -> Value {
    if field.presence {
        return Value::Null;
    }
    match field.ty {
        Ty::Scalar(Scalar::Bool) => Value::Bool(false),
        Ty::Scalar(Scalar::String | Scalar::Bytes) => Value::String(String::new()),
        Ty::Scalar(Scalar::F32 | Scalar::F64) => Number::from_f64(0.0).map_or(Value::Null, Value::Number),
        Ty::Scalar(Scalar::I32 | Scalar::U32 | Scalar::I64 | Scalar::U64) => Value::Number(0.into()),
        Ty::Enum(e) => enum_short(plans, e, &Value::Number(0.into())),
        Ty::Message(_) | Ty::Wkt(_) => Value::Null,
    }
}

fn render_elem(plans: &Plans, ty: Ty, v: Value, dialect: Dialect) -> Value {
    match ty {
        Ty::Message(m) => {
            if v.is_null() && dialect != Dialect::Authentik {
                return v;
            }
            render_message(plans, m, v, dialect)
        }
        Ty::Wkt(Wkt::Timestamp) => {
            if let Value::String(s) = v {
                Value::String(utc_z(s))
            } else {
                v
            }
        }
        Ty::Wkt(Wkt::FieldMask) => field_mask_text(v),
        Ty::Scalar(Scalar::I64 | Scalar::U64) | Ty::Wkt(Wkt::Wrapper(Scalar::I64 | Scalar::U64))
            if dialect != Dialect::Zitadel =>
        {
            int_number(v)
        }
        Ty::Enum(e) if dialect == Dialect::Authentik => enum_short(plans, e, &v),
        Ty::Scalar(_) | Ty::Enum(_) | Ty::Wkt(_) => v,
    }
}

/// pbjson writes UTC as `+00:00`; proto3 JSON (and every other runtime) writes `Z`.
pub(crate) fn utc_z(s: String) -> String {
    match s.strip_suffix("+00:00") {
        Some(head) => format!("{head}Z"),
        None => s,
    }
}

fn int_number(v: Value) -> Value {
    if let Value::String(s) = &v {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Number(i.into());
        }
        if let Ok(u) = s.parse::<u64>() {
            return Value::Number(u.into());
        }
    }
    v
}

/// pbjson's `{"paths": [..]}` → the proto3 JSON string `a,bC.d`.
fn field_mask_text(v: Value) -> Value {
    let Value::Object(o) = &v else { return v };
    let paths: Vec<String> = match o.get("paths") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|p| p.split('.').map(lower_camel).collect::<Vec<_>>().join("."))
            .collect(),
        _ => Vec::new(),
    };
    Value::String(paths.join(","))
}

fn enum_short(plans: &Plans, e: usize, v: &Value) -> Value {
    let Some(plan) = plans.enums.get(e) else { return v.clone() };
    let number = match v {
        Value::String(s) => plan.by_name.get(s).copied(),
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        Value::Null | Value::Bool(_) | Value::Array(_) | Value::Object(_) => None,
    };
    match number.and_then(|n| plan.short_of.get(&n)) {
        Some(Some(short)) => Value::String(short.clone()),
        Some(None) => Value::Null,
        None if v.is_null() => Value::Null,
        None => v.clone(),
    }
}

/// Extracts `response_body` (a field path of json-name hops) from a rendered-later message value.
pub(crate) fn take_path(mut value: Value, fields: &[&FieldPlan]) -> Value {
    for f in fields {
        value = if let Value::Object(mut o) = value {
            o.remove(&f.json_name).or_else(|| o.remove(&f.name)).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
    }
    value
}

/// Renders the `response_body` field; an unset field renders as its type's empty value.
pub(crate) fn render_response_field(plans: &Plans, field: &FieldPlan, v: Value, dialect: Dialect) -> Value {
    if !v.is_null() {
        return render_field(plans, field, v, dialect);
    }
    match (field.card, field.ty) {
        (Card::Repeated, _) => Value::Array(Vec::new()),
        (Card::Map(_), _) => Value::Object(Map::new()),
        (Card::Single, Ty::Message(m)) => render_message(plans, m, Value::Object(Map::new()), dialect),
        (Card::Single, _) => default_single(plans, field),
    }
}
