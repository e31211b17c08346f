//! Input rules of the flow-definition use cases, with authentik's field names and DRF's wording.
//!
//! Inputs arrive as optional raw values (strings for choices) so that a missing field, a blank one and an
//! unknown choice each get DRF's own message; the result is a validated spec from `model`.

use serde_json::Value;

use super::model::{
    BindingSpec, DeniedAction, Designation, FlowSpec, InvalidResponseAction, Layout, MAX_EXPRESSION_BYTES,
    MAX_POLICY_TIMEOUT, PolicyBindingSpec, PolicyEngineMode, PolicySpec, PromptFieldType, RedirectMode, Slug,
    StageConfig, StageType, invalid_choice,
};
use crate::{Error, FieldViolation, Result};

/// Collects violations so one answer names every invalid field.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `field` as invalid.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.to_owned(), description: description.into() });
    }

    /// How many violations were recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none were recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when nothing was recorded, else InvalidArgument `id` with every violation.
    pub fn finish(self, id: &'static str) -> Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(Error::invalid_fields(id, self.0)) }
    }
}

/// Error id: InvalidArgument, a request field is invalid (the violations name it with authentik's names).
pub const FLOW_INVALID: &str = "FLOW-invalid";

/// DRF: a required field is missing.
pub const REQUIRED: &str = "This field is required.";
/// DRF: a string field is empty or only whitespace.
pub const BLANK: &str = "This field may not be blank.";
/// Longest name or title, in characters.
pub const MAX_NAME: usize = 200;
/// Longest background path or URL, in characters.
pub const MAX_BACKGROUND: usize = 500;
/// Default page size.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// DRF: `Ensure this field has no more than {max} characters.`
pub fn too_long(max: usize) -> String {
    format!("Ensure this field has no more than {max} characters.")
}

/// DRF: `Invalid pk "<id>" - object does not exist.`
pub fn invalid_pk(id: &str) -> String {
    format!("Invalid pk \"{id}\" - object does not exist.")
}

/// A required, trimmed, non-blank text of at most `max` characters.
pub fn required_text(v: &mut Violations, field: &str, value: Option<&str>, max: usize) -> String {
    match value.map(str::trim) {
        None => {
            v.add(field, REQUIRED);
            String::new()
        }
        Some("") => {
            v.add(field, BLANK);
            String::new()
        }
        Some(s) if s.chars().count() > max => {
            v.add(field, too_long(max));
            String::new()
        }
        Some(s) => s.to_owned(),
    }
}

/// A choice spelled as authentik does; `None` ⇒ `default`, or "This field is required." without one.
pub fn choice<T: Copy>(
    v: &mut Violations,
    field: &str,
    value: Option<&str>,
    parse: fn(&str) -> Option<T>,
    default: Option<T>,
) -> Option<T> {
    match (value, default) {
        (None, Some(d)) => Some(d),
        (None, None) => {
            v.add(field, REQUIRED);
            None
        }
        (Some(s), _) => {
            let parsed = parse(s);
            if parsed.is_none() {
                v.add(field, invalid_choice(s));
            }
            parsed
        }
    }
}

/// Writable fields of a flow as sent; `None` = not sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowInput {
    /// Required on create/update.
    pub name: Option<String>,
    /// Required on create/update.
    pub slug: Option<String>,
    /// Required on create/update.
    pub title: Option<String>,
    /// Required on create/update.
    pub designation: Option<String>,
    /// Default `stacked`.
    pub layout: Option<String>,
    /// `Some(None)` or `Some("")` clears it.
    pub background: Option<Option<String>>,
    /// Default false.
    pub compatibility_mode: Option<bool>,
    /// Default `message_continue`.
    pub denied_action: Option<String>,
    /// Default `none`.
    pub authentication: Option<String>,
    /// Default `any`.
    pub policy_engine_mode: Option<String>,
}

impl FlowInput {
    /// Every field of `spec`, as sent.
    pub fn from_spec(spec: &FlowSpec) -> Self {
        let FlowSpec {
            name,
            slug,
            title,
            designation,
            layout,
            background,
            compatibility_mode,
            denied_action,
            authentication,
            policy_engine_mode,
        } = spec;
        Self {
            name: Some(name.clone()),
            slug: Some(slug.as_str().to_owned()),
            title: Some(title.clone()),
            designation: Some(designation.as_str().to_owned()),
            layout: Some(layout.as_str().to_owned()),
            background: Some(background.clone()),
            compatibility_mode: Some(*compatibility_mode),
            denied_action: Some(denied_action.as_str().to_owned()),
            authentication: Some(authentication.as_str().to_owned()),
            policy_engine_mode: Some(policy_engine_mode.as_str().to_owned()),
        }
    }

    /// `self` with the fields named in `mask` taken from `patch`; unknown names ⇒ `update_mask` violation,
    /// read-only names are ignored (DRF ignores read-only fields).
    pub fn overlay(mut self, patch: FlowInput, mask: &[String], v: &mut Violations) -> Self {
        for field in mask {
            match field.as_str() {
                "name" => self.name = patch.name.clone(),
                "slug" => self.slug = patch.slug.clone(),
                "title" => self.title = patch.title.clone(),
                "designation" => self.designation = patch.designation.clone(),
                "layout" => self.layout = patch.layout.clone(),
                "background" => self.background = Some(patch.background.clone().flatten()),
                "compatibility_mode" => self.compatibility_mode = patch.compatibility_mode,
                "denied_action" => self.denied_action = patch.denied_action.clone(),
                "authentication" => self.authentication = patch.authentication.clone(),
                "policy_engine_mode" => self.policy_engine_mode = patch.policy_engine_mode.clone(),
                "pk"
                | "policybindingmodel_ptr_id"
                | "stages"
                | "policies"
                | "cache_count"
                | "export_url"
                | "background_url"
                | "background_themed_urls" => {}
                other => v.add("update_mask", format!("unknown field {other}")),
            }
        }
        self
    }

    /// The validated spec, or InvalidArgument [`FLOW_INVALID`] naming every bad field.
    pub fn into_spec(self) -> Result<FlowSpec> {
        let mut v = Violations::new();
        let spec = self.check(&mut v);
        v.finish(FLOW_INVALID)?;
        spec.ok_or_else(|| Error::invalid_field(FLOW_INVALID, "non_field_errors", "invalid flow"))
    }

    /// Records the violations of `self` and answers the spec when it has none.
    pub fn check(self, v: &mut Violations) -> Option<FlowSpec> {
        let FlowInput {
            name,
            slug,
            title,
            designation,
            layout,
            background,
            compatibility_mode,
            denied_action,
            authentication,
            policy_engine_mode,
        } = self;
        let before = v.len();
        let name = required_text(v, "name", name.as_deref(), MAX_NAME);
        let slug = match slug.as_deref() {
            None => {
                v.add("slug", REQUIRED);
                None
            }
            Some(s) => Slug::parse(s).map_err(|e| v.add("slug", e)).ok(),
        };
        let title = required_text(v, "title", title.as_deref(), MAX_NAME);
        let designation = choice(v, "designation", designation.as_deref(), Designation::parse, None);
        let layout = choice(v, "layout", layout.as_deref(), Layout::parse, Some(Layout::Stacked));
        let background = background.flatten().map(|b| b.trim().to_owned()).filter(|b| !b.is_empty());
        if background.as_ref().is_some_and(|b| b.chars().count() > MAX_BACKGROUND) {
            v.add("background", too_long(MAX_BACKGROUND));
        }
        let denied_action = choice(
            v,
            "denied_action",
            denied_action.as_deref(),
            DeniedAction::parse,
            Some(DeniedAction::MessageContinue),
        );
        let authentication = choice(
            v,
            "authentication",
            authentication.as_deref(),
            super::model::Authentication::parse,
            Some(super::model::Authentication::None),
        );
        let policy_engine_mode = choice(
            v,
            "policy_engine_mode",
            policy_engine_mode.as_deref(),
            PolicyEngineMode::parse,
            Some(PolicyEngineMode::Any),
        );
        if v.len() > before {
            return None;
        }
        Some(FlowSpec {
            name,
            slug: slug?,
            title,
            designation: designation?,
            layout: layout?,
            background,
            compatibility_mode: compatibility_mode.unwrap_or(false),
            denied_action: denied_action?,
            authentication: authentication?,
            policy_engine_mode: policy_engine_mode?,
        })
    }
}

/// Writable fields of a stage as sent: the name and the type's fields as a JSON object with authentik's
/// keys (the adapter converts its typed message; unknown keys are ignored as DRF does).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageInput {
    /// Required on create/update.
    pub name: Option<String>,
    /// Type-specific fields that were sent.
    pub config: serde_json::Map<String, Value>,
}

/// The configuration of type `t` with the fields of `fields` laid over `base` (known keys only); every
/// field that does not parse is recorded under its own name.
pub fn stage_config(
    v: &mut Violations,
    t: StageType,
    base: &StageConfig,
    fields: &serde_json::Map<String, Value>,
) -> Option<StageConfig> {
    let mut merged = base.to_json();
    let before = v.len();
    if let Value::Object(map) = &mut merged {
        for (key, value) in fields {
            if !map.contains_key(key) {
                continue;
            }
            let mut trial = map.clone();
            trial.insert(key.clone(), value.clone());
            if let Err(e) = StageConfig::from_json(t, Value::Object(trial)) {
                v.add(key, clean_serde_message(&e));
                continue;
            }
            map.insert(key.clone(), value.clone());
        }
    }
    if v.len() > before {
        return None;
    }
    match StageConfig::from_json(t, merged) {
        Ok(config) => {
            check_config(v, &config);
            (v.len() == before).then_some(config)
        }
        Err(e) => {
            v.add("non_field_errors", clean_serde_message(&e));
            None
        }
    }
}

/// serde's message without its position suffix.
fn clean_serde_message(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn is_field_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Rules of a configuration that do not need the store (references are checked by the use cases).
pub fn check_config(v: &mut Violations, config: &StageConfig) {
    match config {
        StageConfig::Identification(c) => {
            let mut seen = Vec::new();
            for f in &c.user_fields {
                if seen.contains(f) {
                    v.add("user_fields", format!("\"{f}\" is listed twice."));
                }
                seen.push(*f);
            }
        }
        StageConfig::Password(c) => {
            if c.backends.is_empty() {
                v.add("backends", "This list may not be empty.");
            }
            if c.failed_attempts_before_cancel < 1 {
                v.add("failed_attempts_before_cancel", "Ensure this value is greater than or equal to 1.");
            }
        }
        StageConfig::Redirect(c) => match c.mode {
            RedirectMode::Static => {
                let target = c.target_static.trim();
                if target.is_empty() {
                    v.add("target_static", "Target URL should be present when mode is Static.");
                } else if !(target.starts_with("https://") || target.starts_with("http://") || target.starts_with('/'))
                {
                    v.add("target_static", "Enter a valid URL.");
                }
            }
            RedirectMode::Flow => {
                if c.target_flow.is_none() {
                    v.add("target_flow", "Target Flow should be present when mode is Flow.");
                }
            }
        },
        StageConfig::Source(c) => {
            if c.source.trim().is_empty() {
                v.add("source", REQUIRED);
            }
        }
        StageConfig::Prompt(c) => {
            let mut keys = Vec::new();
            for (i, field) in c.fields.iter().enumerate() {
                let name = format!("fields[{i}].field_key");
                if !is_field_key(&field.field_key) {
                    v.add(&name, "Enter a valid field key: lower-case letters, digits and underscores.");
                } else if keys.contains(&field.field_key.as_str()) {
                    v.add(&name, "Field keys must be unique in a stage.");
                }
                keys.push(field.field_key.as_str());
                if field.field_type == PromptFieldType::Static && field.placeholder_expression {
                    v.add(&format!("fields[{i}].placeholder_expression"), "Static fields have no placeholder.");
                }
            }
        }
        StageConfig::Deny(c) => {
            if c.deny_message.as_ref().is_some_and(|m| m.chars().count() > 1000) {
                v.add("deny_message", too_long(1000));
            }
        }
        StageConfig::AuthenticatorValidate(_)
        | StageConfig::UserLogin(_)
        | StageConfig::UserLogout
        | StageConfig::Dummy(_)
        | StageConfig::Consent(_)
        | StageConfig::UserWrite(_) => {}
    }
}

/// Writable fields of a flow-stage binding as sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BindingInput {
    /// Flow id; required.
    pub target: Option<String>,
    /// Stage id; required.
    pub stage: Option<String>,
    /// Required.
    pub order: Option<i32>,
    /// Default false.
    pub evaluate_on_plan: Option<bool>,
    /// Default true.
    pub re_evaluate_policies: Option<bool>,
    /// Default `any`.
    pub policy_engine_mode: Option<String>,
    /// Default `retry`.
    pub invalid_response_action: Option<String>,
}

impl BindingInput {
    /// Every field of `spec`, as sent.
    pub fn from_spec(spec: &BindingSpec) -> Self {
        let BindingSpec {
            target,
            stage,
            order,
            evaluate_on_plan,
            re_evaluate_policies,
            policy_engine_mode,
            invalid_response_action,
        } = spec;
        Self {
            target: Some(target.as_str().to_owned()),
            stage: Some(stage.as_str().to_owned()),
            order: Some(*order),
            evaluate_on_plan: Some(*evaluate_on_plan),
            re_evaluate_policies: Some(*re_evaluate_policies),
            policy_engine_mode: Some(policy_engine_mode.as_str().to_owned()),
            invalid_response_action: Some(invalid_response_action.as_str().to_owned()),
        }
    }

    /// `self` with the fields named in `mask` taken from `patch`.
    pub fn overlay(mut self, patch: BindingInput, mask: &[String], v: &mut Violations) -> Self {
        for field in mask {
            match field.as_str() {
                "target" => self.target = patch.target.clone(),
                "stage" => self.stage = patch.stage.clone(),
                "order" => self.order = patch.order,
                "evaluate_on_plan" => self.evaluate_on_plan = patch.evaluate_on_plan,
                "re_evaluate_policies" => self.re_evaluate_policies = patch.re_evaluate_policies,
                "policy_engine_mode" => self.policy_engine_mode = patch.policy_engine_mode.clone(),
                "invalid_response_action" => self.invalid_response_action = patch.invalid_response_action.clone(),
                "pk" | "policybindingmodel_ptr_id" | "stage_obj" => {}
                other => v.add("update_mask", format!("unknown field {other}")),
            }
        }
        self
    }

    /// The validated spec (references unchecked), recording violations.
    pub fn check(self, v: &mut Violations) -> Option<BindingSpec> {
        let BindingInput {
            target,
            stage,
            order,
            evaluate_on_plan,
            re_evaluate_policies,
            policy_engine_mode,
            invalid_response_action,
        } = self;
        let before = v.len();
        let target = required_id(v, "target", target);
        let stage = required_id(v, "stage", stage);
        if order.is_none() {
            v.add("order", REQUIRED);
        }
        let mode = choice(
            v,
            "policy_engine_mode",
            policy_engine_mode.as_deref(),
            PolicyEngineMode::parse,
            Some(PolicyEngineMode::Any),
        );
        let action = choice(
            v,
            "invalid_response_action",
            invalid_response_action.as_deref(),
            InvalidResponseAction::parse,
            Some(InvalidResponseAction::Retry),
        );
        if v.len() > before {
            return None;
        }
        Some(BindingSpec {
            target: target.into(),
            stage: stage.into(),
            order: order?,
            evaluate_on_plan: evaluate_on_plan.unwrap_or(false),
            re_evaluate_policies: re_evaluate_policies.unwrap_or(true),
            policy_engine_mode: mode?,
            invalid_response_action: action?,
        })
    }
}

fn required_id(v: &mut Violations, field: &str, value: Option<String>) -> String {
    match value.map(|s| s.trim().to_owned()) {
        None => {
            v.add(field, REQUIRED);
            String::new()
        }
        Some(s) if s.is_empty() => {
            v.add(field, "This field may not be null.");
            String::new()
        }
        Some(s) => s,
    }
}

/// Writable fields of an expression policy as sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExpressionPolicyInput {
    /// Required.
    pub name: Option<String>,
    /// Required; must compile.
    pub expression: Option<String>,
    /// Default false.
    pub execution_logging: Option<bool>,
}

impl ExpressionPolicyInput {
    /// Every field of `spec`, as sent.
    pub fn from_spec(spec: &PolicySpec) -> Self {
        let PolicySpec { name, expression, execution_logging } = spec;
        Self {
            name: Some(name.clone()),
            expression: Some(expression.clone()),
            execution_logging: Some(*execution_logging),
        }
    }

    /// `self` with the fields named in `mask` taken from `patch`.
    pub fn overlay(mut self, patch: ExpressionPolicyInput, mask: &[String], v: &mut Violations) -> Self {
        for field in mask {
            match field.as_str() {
                "name" => self.name = patch.name.clone(),
                "expression" => self.expression = patch.expression.clone(),
                "execution_logging" => self.execution_logging = patch.execution_logging,
                "pk" | "component" | "verbose_name" | "verbose_name_plural" | "meta_model_name" | "bound_to" => {}
                other => v.add("update_mask", format!("unknown field {other}")),
            }
        }
        self
    }

    /// The validated spec (the expression compiled), recording violations.
    pub fn check(self, v: &mut Violations) -> Option<PolicySpec> {
        let ExpressionPolicyInput { name, expression, execution_logging } = self;
        let before = v.len();
        let name = required_text(v, "name", name.as_deref(), MAX_NAME);
        let expression = match expression {
            None => {
                v.add("expression", REQUIRED);
                String::new()
            }
            Some(e) if e.len() > MAX_EXPRESSION_BYTES => {
                v.add("expression", format!("Ensure this field has no more than {MAX_EXPRESSION_BYTES} bytes."));
                String::new()
            }
            Some(e) => {
                if let Err(message) = super::policy::check_expression(&e) {
                    v.add("expression", message);
                }
                e
            }
        };
        if v.len() > before {
            return None;
        }
        Some(PolicySpec { name, expression, execution_logging: execution_logging.unwrap_or(false) })
    }
}

/// Writable fields of a policy binding as sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyBindingInput {
    /// Policy id; required.
    pub policy: Option<String>,
    /// Pbm id of a flow or binding; required.
    pub target: Option<String>,
    /// Default false.
    pub negate: Option<bool>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Required.
    pub order: Option<i32>,
    /// Seconds, 1..=300, default 30.
    pub timeout: Option<u32>,
    /// Default false.
    pub failure_result: Option<bool>,
}

impl PolicyBindingInput {
    /// Every field of `spec`, as sent.
    pub fn from_spec(spec: &PolicyBindingSpec) -> Self {
        let PolicyBindingSpec { policy, target, negate, enabled, order, timeout, failure_result } = spec;
        Self {
            policy: Some(policy.as_str().to_owned()),
            target: Some(target.as_str().to_owned()),
            negate: Some(*negate),
            enabled: Some(*enabled),
            order: Some(*order),
            timeout: Some(*timeout),
            failure_result: Some(*failure_result),
        }
    }

    /// `self` with the fields named in `mask` taken from `patch`.
    pub fn overlay(mut self, patch: PolicyBindingInput, mask: &[String], v: &mut Violations) -> Self {
        for field in mask {
            match field.as_str() {
                "policy" => self.policy = patch.policy.clone(),
                "target" => self.target = patch.target.clone(),
                "negate" => self.negate = patch.negate,
                "enabled" => self.enabled = patch.enabled,
                "order" => self.order = patch.order,
                "timeout" => self.timeout = patch.timeout,
                "failure_result" => self.failure_result = patch.failure_result,
                "pk" | "policy_obj" => {}
                other => v.add("update_mask", format!("unknown field {other}")),
            }
        }
        self
    }

    /// The validated spec (references unchecked), recording violations.
    pub fn check(self, v: &mut Violations) -> Option<PolicyBindingSpec> {
        let PolicyBindingInput { policy, target, negate, enabled, order, timeout, failure_result } = self;
        let before = v.len();
        let policy = required_id(v, "policy", policy);
        let target = required_id(v, "target", target);
        if order.is_none() {
            v.add("order", REQUIRED);
        }
        let timeout = timeout.unwrap_or(super::model::DEFAULT_POLICY_TIMEOUT);
        if timeout < 1 {
            v.add("timeout", "Ensure this value is greater than or equal to 1.");
        } else if timeout > MAX_POLICY_TIMEOUT {
            v.add("timeout", format!("Ensure this value is less than or equal to {MAX_POLICY_TIMEOUT}."));
        }
        if v.len() > before {
            return None;
        }
        Some(PolicyBindingSpec {
            policy: policy.into(),
            target: target.into(),
            negate: negate.unwrap_or(false),
            enabled: enabled.unwrap_or(true),
            order: order?,
            timeout,
            failure_result: failure_result.unwrap_or(false),
        })
    }
}

/// Paging and ordering of a list request as sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListParams {
    /// 1-based page; 0 ⇒ 1.
    pub page: u32,
    /// 0 ⇒ 100; otherwise 1..=1000.
    pub page_size: u32,
    /// A field name among the list's keys, optionally `-` prefixed; `None` or "" ⇒ the default.
    pub ordering: Option<String>,
}

/// The page request and ordering of `params`, or InvalidArgument on `page_size` / `ordering`.
pub fn list_params<F: Copy>(
    params: &ListParams,
    names: &[(&str, F)],
    default: F,
) -> Result<(super::model::PageRequest, super::model::Ordering<F>)> {
    let ListParams { page, page_size, ordering } = params;
    let limit = match *page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n > MAX_PAGE_SIZE => {
            return Err(Error::invalid_field(
                FLOW_INVALID,
                "page_size",
                format!("Ensure this value is less than or equal to {MAX_PAGE_SIZE}."),
            ));
        }
        n => n,
    };
    let page = u64::from((*page).max(1));
    let request = super::model::PageRequest { offset: (page - 1) * u64::from(limit), limit };
    let ordering = match ordering.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
        None => super::model::Ordering { field: default, descending: false },
        Some(o) => {
            let (descending, name) = match o.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, o),
            };
            let field = names.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).ok_or_else(|| {
                Error::invalid_field(FLOW_INVALID, "ordering", format!("\"{o}\" is not a valid ordering."))
            })?;
            super::model::Ordering { field, descending }
        }
    };
    Ok((request, ordering))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(input: FlowInput) -> Vec<(String, String)> {
        match input.into_spec() {
            Ok(_) => Vec::new(),
            Err(e) => e.violations().iter().map(|v| (v.field.clone(), v.description.clone())).collect(),
        }
    }

    fn flow() -> FlowInput {
        FlowInput {
            name: Some("Login".into()),
            slug: Some("login".into()),
            title: Some("Welcome".into()),
            designation: Some("authentication".into()),
            ..FlowInput::default()
        }
    }

    #[test]
    fn flow_defaults() {
        let spec = flow().into_spec().unwrap();
        assert_eq!(spec.layout, Layout::Stacked);
        assert_eq!(spec.denied_action, DeniedAction::MessageContinue);
        assert_eq!(spec.policy_engine_mode, PolicyEngineMode::Any);
        assert_eq!(spec.background, None);
    }

    #[test]
    fn flow_messages() {
        assert_eq!(
            violations(FlowInput::default()),
            vec![
                ("name".to_owned(), REQUIRED.to_owned()),
                ("slug".to_owned(), REQUIRED.to_owned()),
                ("title".to_owned(), REQUIRED.to_owned()),
                ("designation".to_owned(), REQUIRED.to_owned()),
            ]
        );
        let bad = FlowInput { name: Some("  ".into()), layout: Some("x".into()), ..flow() };
        assert_eq!(
            violations(bad),
            vec![
                ("name".to_owned(), BLANK.to_owned()),
                ("layout".to_owned(), "\"x\" is not a valid choice.".to_owned())
            ]
        );
    }

    #[test]
    fn list_params_ordering() {
        let names = super::super::model::FlowOrder::NAMES;
        let default = super::super::model::FlowOrder::Slug;
        let (page, order) =
            list_params(&ListParams { page: 3, page_size: 10, ordering: Some("-name".into()) }, names, default)
                .unwrap();
        assert_eq!((page.offset, page.limit), (20, 10));
        assert!(order.descending);
        let err = list_params(&ListParams { ordering: Some("bogus".into()), ..ListParams::default() }, names, default)
            .unwrap_err();
        assert_eq!(err.violations()[0].field, "ordering");
        let err = list_params(&ListParams { page_size: 1001, ..ListParams::default() }, names, default).unwrap_err();
        assert_eq!(err.violations()[0].field, "page_size");
    }
}
