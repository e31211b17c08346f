//! Per-message plans precomputed from descriptors, so requests never look types up by name.

use std::collections::HashMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};

/// Protobuf scalar kinds as far as JSON cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar {
    Bool,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
    String,
    Bytes,
}

/// Well-known types with a special JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wkt {
    Timestamp,
    Duration,
    FieldMask,
    Struct,
    Value,
    ListValue,
    Any,
    Empty,
    Wrapper(Scalar),
}

/// The element type of a field (for maps: of the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Scalar(Scalar),
    Enum(usize),
    Message(usize),
    Wkt(Wkt),
}

/// How many values a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Card {
    Single,
    Repeated,
    Map(Scalar),
}

#[derive(Debug, Clone)]
pub(crate) struct FieldPlan {
    pub name: String,
    pub json_name: String,
    /// lowerCamelCase of the proto name: the spelling of FieldMask paths in JSON.
    pub camel: String,
    pub ty: Ty,
    pub card: Card,
    /// Index of the real (non-synthetic) oneof this field belongs to.
    pub oneof: Option<usize>,
    /// The field tracks presence (message, proto3 `optional`, oneof member).
    pub presence: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct MessagePlan {
    pub full_name: String,
    pub fields: Vec<FieldPlan>,
    pub oneof_names: Vec<String>,
    /// Proto name and json name → field index.
    pub by_name: HashMap<String, usize>,
    /// Index of a singular `update_mask` field of type FieldMask.
    pub update_mask: Option<usize>,
    /// Rendering in the zitadel dialect changes something (Timestamps, FieldMasks).
    pub zitadel_walk: bool,
    /// Rendering in the pingone dialect changes something (also 64-bit integers and renamed keys).
    pub pingone_walk: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct EnumPlan {
    pub by_name: HashMap<String, i32>,
    pub by_short: HashMap<String, i32>,
    pub name_of: HashMap<i32, String>,
    /// authentik's spelling per number; `None` for the `*_UNSPECIFIED` zero value.
    pub short_of: HashMap<i32, Option<String>>,
}

/// All plans reachable from the bound messages.
#[derive(Debug, Default)]
pub(crate) struct Plans {
    pub messages: Vec<MessagePlan>,
    pub enums: Vec<EnumPlan>,
    msg_index: HashMap<String, usize>,
    enum_index: HashMap<String, usize>,
}

impl Plans {
    /// Plans `desc` and everything it references; returns its index.
    pub(crate) fn add(&mut self, desc: &MessageDescriptor) -> usize {
        let idx = self.add_inner(desc);
        self.compute_flags();
        idx
    }

    fn add_inner(&mut self, desc: &MessageDescriptor) -> usize {
        if let Some(i) = self.msg_index.get(desc.full_name()) {
            return *i;
        }
        let idx = self.messages.len();
        self.msg_index.insert(desc.full_name().to_string(), idx);
        self.messages.push(MessagePlan {
            full_name: desc.full_name().to_string(),
            fields: Vec::new(),
            oneof_names: Vec::new(),
            by_name: HashMap::new(),
            update_mask: None,
            zitadel_walk: false,
            pingone_walk: false,
        });
        let mut oneof_names: Vec<String> = Vec::new();
        let mut fields = Vec::new();
        for f in desc.fields() {
            let (ty, card) = if f.is_map() {
                let Kind::Message(entry) = f.kind() else { continue };
                let key = entry.map_entry_key_field();
                let value = entry.map_entry_value_field();
                let key_scalar = match self.ty_of(&key) {
                    Ty::Scalar(s) => s,
                    Ty::Enum(_) | Ty::Message(_) | Ty::Wkt(_) => Scalar::String,
                };
                (self.ty_of(&value), Card::Map(key_scalar))
            } else if f.is_list() {
                (self.ty_of(&f), Card::Repeated)
            } else {
                (self.ty_of(&f), Card::Single)
            };
            let oneof = f.containing_oneof().filter(|o| !o.is_synthetic()).map(|o| {
                match oneof_names.iter().position(|n| n == o.name()) {
                    Some(p) => p,
                    None => {
                        oneof_names.push(o.name().to_string());
                        oneof_names.len() - 1
                    }
                }
            });
            let presence = card == Card::Single && f.supports_presence();
            fields.push(FieldPlan {
                name: f.name().to_string(),
                json_name: f.json_name().to_string(),
                camel: lower_camel(f.name()),
                ty,
                card,
                oneof,
                presence,
            });
        }
        let mut by_name = HashMap::new();
        for (i, f) in fields.iter().enumerate() {
            by_name.insert(f.name.clone(), i);
            by_name.insert(f.json_name.clone(), i);
        }
        let update_mask = fields
            .iter()
            .position(|f| f.name == "update_mask" && f.card == Card::Single && f.ty == Ty::Wkt(Wkt::FieldMask));
        if let Some(plan) = self.messages.get_mut(idx) {
            plan.fields = fields;
            plan.oneof_names = oneof_names;
            plan.by_name = by_name;
            plan.update_mask = update_mask;
        }
        idx
    }

    fn ty_of(&mut self, f: &FieldDescriptor) -> Ty {
        match f.kind() {
            Kind::Double => Ty::Scalar(Scalar::F64),
            Kind::Float => Ty::Scalar(Scalar::F32),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Ty::Scalar(Scalar::I32),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Ty::Scalar(Scalar::I64),
            Kind::Uint32 | Kind::Fixed32 => Ty::Scalar(Scalar::U32),
            Kind::Uint64 | Kind::Fixed64 => Ty::Scalar(Scalar::U64),
            Kind::Bool => Ty::Scalar(Scalar::Bool),
            Kind::String => Ty::Scalar(Scalar::String),
            Kind::Bytes => Ty::Scalar(Scalar::Bytes),
            Kind::Enum(e) => {
                if let Some(i) = self.enum_index.get(e.full_name()) {
                    return Ty::Enum(*i);
                }
                let mut plan = EnumPlan {
                    by_name: HashMap::new(),
                    by_short: HashMap::new(),
                    name_of: HashMap::new(),
                    short_of: HashMap::new(),
                };
                for v in e.values() {
                    let short = enum_short_name(e.name(), v.name());
                    plan.by_name.insert(v.name().to_string(), v.number());
                    plan.name_of.entry(v.number()).or_insert_with(|| v.name().to_string());
                    let unspecified = v.number() == 0 && (short == "unspecified" || v.name().ends_with("_UNSPECIFIED"));
                    plan.short_of.entry(v.number()).or_insert_with(|| (!unspecified).then(|| short.clone()));
                    plan.by_short.entry(short).or_insert(v.number());
                }
                self.enums.push(plan);
                let i = self.enums.len() - 1;
                self.enum_index.insert(e.full_name().to_string(), i);
                Ty::Enum(i)
            }
            Kind::Message(m) => match wkt_of(m.full_name()) {
                Some(w) => Ty::Wkt(w),
                None => Ty::Message(self.add_inner(&m)),
            },
        }
    }

    fn compute_flags(&mut self) {
        // Recursive messages need a fixpoint rather than a single pass.
        loop {
            let mut changed = false;
            for i in 0..self.messages.len() {
                let (mut zw, mut pw) = (false, false);
                if let Some(m) = self.messages.get(i) {
                    for f in &m.fields {
                        zw |= self.ty_needs(f.ty, false);
                        pw |= self.ty_needs(f.ty, true) || f.json_name != f.camel;
                    }
                }
                if let Some(m) = self.messages.get_mut(i)
                    && (m.zitadel_walk != zw || m.pingone_walk != pw)
                {
                    m.zitadel_walk |= zw;
                    m.pingone_walk |= pw;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn ty_needs(&self, ty: Ty, pingone: bool) -> bool {
        match ty {
            Ty::Wkt(Wkt::Timestamp | Wkt::FieldMask) => true,
            Ty::Scalar(Scalar::I64 | Scalar::U64) | Ty::Wkt(Wkt::Wrapper(Scalar::I64 | Scalar::U64)) => pingone,
            Ty::Message(m) => {
                self.messages.get(m).is_some_and(|p| if pingone { p.pingone_walk } else { p.zitadel_walk })
            }
            Ty::Scalar(_) | Ty::Enum(_) | Ty::Wkt(_) => false,
        }
    }
}

fn wkt_of(full_name: &str) -> Option<Wkt> {
    Some(match full_name {
        "google.protobuf.Timestamp" => Wkt::Timestamp,
        "google.protobuf.Duration" => Wkt::Duration,
        "google.protobuf.FieldMask" => Wkt::FieldMask,
        "google.protobuf.Struct" => Wkt::Struct,
        "google.protobuf.Value" => Wkt::Value,
        "google.protobuf.ListValue" => Wkt::ListValue,
        "google.protobuf.Any" => Wkt::Any,
        "google.protobuf.Empty" => Wkt::Empty,
        "google.protobuf.DoubleValue" => Wkt::Wrapper(Scalar::F64),
        "google.protobuf.FloatValue" => Wkt::Wrapper(Scalar::F32),
        "google.protobuf.Int64Value" => Wkt::Wrapper(Scalar::I64),
        "google.protobuf.UInt64Value" => Wkt::Wrapper(Scalar::U64),
        "google.protobuf.Int32Value" => Wkt::Wrapper(Scalar::I32),
        "google.protobuf.UInt32Value" => Wkt::Wrapper(Scalar::U32),
        "google.protobuf.BoolValue" => Wkt::Wrapper(Scalar::Bool),
        "google.protobuf.StringValue" => Wkt::Wrapper(Scalar::String),
        "google.protobuf.BytesValue" => Wkt::Wrapper(Scalar::Bytes),
        _ => return None,
    })
}

/// protoc's default JSON name: drop `_` and upper-case the following letter.
pub(crate) fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The inverse of [`lower_camel`] for FieldMask paths (`compatibilityMode` → `compatibility_mode`).
pub(crate) fn camel_to_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `FlowDesignation` → `FLOW_DESIGNATION`, `HTTPMethod` → `HTTP_METHOD`.
/// The authentik spelling of an enum value: its name without the enum's `SCREAMING_SNAKE_` prefix, lower
/// case (`FlowDesignation`, `FLOW_DESIGNATION_STAGE_CONFIGURATION` → `stage_configuration`).
pub fn enum_short_name(enum_name: &str, value_name: &str) -> String {
    let prefix = format!("{}_", screaming_snake(enum_name));
    value_name.strip_prefix(&prefix).unwrap_or(value_name).to_ascii_lowercase()
}

pub(crate) fn screaming_snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in chars.iter().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev.is_ascii_lowercase() || prev.is_ascii_digit() || (prev.is_ascii_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_conversions() {
        assert_eq!(lower_camel("compatibility_mode"), "compatibilityMode");
        assert_eq!(lower_camel("web_auth_n"), "webAuthN");
        assert_eq!(camel_to_snake("compatibilityMode"), "compatibility_mode");
        assert_eq!(screaming_snake("FlowDesignation"), "FLOW_DESIGNATION");
        assert_eq!(screaming_snake("HTTPMethod"), "HTTP_METHOD");
        assert_eq!(screaming_snake("Layout2Mode"), "LAYOUT2_MODE");
    }
}
