//! The export/import document: a YAML blueprint-like file that names objects by slug and name, never by
//! id, so that it imports into any organization.
//!
//! ```yaml
//! version: 1
//! metadata: {name: <flow name>}
//! entries:
//!   - model: flowgate.flow              # identifiers: {slug}
//!   - model: flowgate.policy            # identifiers: {name}
//!   - model: flowgate.stage             # identifiers: {name}; attrs: type + the type's fields
//!   - model: flowgate.flowstagebinding  # identifiers: {target: <flow slug>, stage: <stage name>, order}
//!   - model: flowgate.policybinding     # identifiers: {target: <flow slug> | "<flow slug>/<order>", order}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::StageType;
use crate::{Error, Result};

/// Error id: InvalidArgument on `file`, the import file is malformed or does not validate.
pub const FLOW_IMPORT_INVALID: &str = "FLOW-import-invalid";
/// Largest import file, in bytes.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// The only document version.
pub const VERSION: u32 = 1;

/// Model name of flow entries.
pub const MODEL_FLOW: &str = "flowgate.flow";
/// Model name of policy entries.
pub const MODEL_POLICY: &str = "flowgate.policy";
/// Model name of stage entries.
pub const MODEL_STAGE: &str = "flowgate.stage";
/// Model name of flow-stage binding entries.
pub const MODEL_BINDING: &str = "flowgate.flowstagebinding";
/// Model name of policy binding entries.
pub const MODEL_POLICY_BINDING: &str = "flowgate.policybinding";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Always [`VERSION`].
    pub version: u32,
    /// Descriptive data.
    #[serde(default)]
    pub metadata: Metadata,
    /// The objects, referenced ones first.
    #[serde(default)]
    pub entries: Vec<Entry>,
}

/// Descriptive data of a document.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// The flow's name.
    #[serde(default)]
    pub name: String,
}

/// One object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// One of the `MODEL_*` names.
    pub model: String,
    /// What identifies the object in an org.
    #[serde(default)]
    pub identifiers: Map<String, Value>,
    /// The other fields.
    #[serde(default)]
    pub attrs: Map<String, Value>,
}

/// The YAML text of `doc`.
pub fn render(doc: &Document) -> Result<String> {
    serde_norway::to_string(doc).map_err(|e| Error::internal("FLOW-export", e))
}

/// The document in `file`, or InvalidArgument [`FLOW_IMPORT_INVALID`] on `file`.
pub fn parse(file: &str) -> Result<Document> {
    if file.len() > MAX_FILE_BYTES {
        return Err(invalid(format!("the file is larger than {MAX_FILE_BYTES} bytes")));
    }
    let doc: Document = serde_norway::from_str(file).map_err(|e| invalid(format!("not a flow document: {e}")))?;
    if doc.version != VERSION {
        return Err(invalid(format!("unsupported version {}, expected {VERSION}", doc.version)));
    }
    Ok(doc)
}

/// InvalidArgument [`FLOW_IMPORT_INVALID`] on `file` with `message`.
pub fn invalid(message: impl Into<String>) -> Error {
    Error::invalid_field(FLOW_IMPORT_INVALID, "file", message)
}

/// InvalidArgument on `file` naming entry `index` (0-based) and its model.
pub fn entry_error(index: usize, model: &str, message: impl std::fmt::Display) -> Error {
    invalid(format!("entry {index} ({model}): {message}"))
}

/// What a reference field of a stage configuration points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    /// A stage, written by name.
    Stage,
    /// A flow, written by slug.
    Flow,
    /// A policy, written by name.
    Policy,
}

/// The reference fields of a stage type: (field, kind, is a list).
pub fn reference_fields(t: StageType) -> &'static [(&'static str, RefKind, bool)] {
    match t {
        StageType::Identification => &[
            ("password_stage", RefKind::Stage, false),
            ("enrollment_flow", RefKind::Flow, false),
            ("recovery_flow", RefKind::Flow, false),
            ("passwordless_flow", RefKind::Flow, false),
        ],
        StageType::Password => &[("configure_flow", RefKind::Flow, false)],
        StageType::AuthenticatorValidate => &[("configuration_stages", RefKind::Stage, true)],
        StageType::Redirect => &[("target_flow", RefKind::Flow, false)],
        StageType::Prompt => &[("validation_policies", RefKind::Policy, true)],
        StageType::UserLogin
        | StageType::UserLogout
        | StageType::Deny
        | StageType::Dummy
        | StageType::Consent
        | StageType::Source
        | StageType::UserWrite => &[],
    }
}

/// Rewrites the reference fields of a stage's JSON configuration with `map` (id → name when exporting,
/// name → id when importing); a reference `map` cannot translate is answered as the error.
pub fn translate_refs(
    t: StageType,
    config: &mut Map<String, Value>,
    mut map: impl FnMut(RefKind, &str) -> Option<String>,
) -> std::result::Result<(), String> {
    for (field, kind, list) in reference_fields(t) {
        let Some(value) = config.get_mut(*field) else { continue };
        let mut one = |v: &Value| -> std::result::Result<Value, String> {
            match v {
                Value::Null => Ok(Value::Null),
                Value::String(s) => map(*kind, s)
                    .map(Value::String)
                    .ok_or_else(|| format!("{field}: {} {s:?} does not exist", kind_name(*kind))),
                other @ (Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_)) => {
                    Err(format!("{field}: expected a name, got {other}"))
                }
            }
        };
        if *list {
            match value {
                Value::Array(items) => {
                    let translated = items.iter().map(&mut one).collect::<std::result::Result<Vec<_>, _>>()?;
                    *items = translated;
                }
                Value::Null => *value = Value::Array(Vec::new()),
                other @ (Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Object(_)) => {
                    return Err(format!("{field}: expected a list, got {other}"));
                }
            }
        } else {
            *value = one(value)?;
        }
    }
    Ok(())
}

fn kind_name(kind: RefKind) -> &'static str {
    match kind {
        RefKind::Stage => "stage",
        RefKind::Flow => "flow",
        RefKind::Policy => "policy",
    }
}
