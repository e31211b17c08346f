//! Flow definitions: flows, stages and their typed configuration, stage bindings, expression policies and
//! policy bindings, plus the list vocabulary (filters, ordering, paging) the repositories implement.
//!
//! Enumerations spell their values exactly as authentik does (`as_str`/`parse`); that spelling is also what
//! the store persists and what export files contain.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::Details;
use crate::identity::OrgId;

pub use crate::identity::Page;

string_id!(
    /// Identifier of a flow (`pk`, hyphenated UUID when generated).
    FlowId
);
string_id!(
    /// Identifier of a policy binding model (`policybindingmodel_ptr_id` of a flow, `pbm_id` of a binding):
    /// what policy bindings target.
    PbmId
);
string_id!(
    /// Identifier of a stage (`stage_uuid`).
    StageId
);
string_id!(
    /// Identifier of a flow-stage binding (`fsb_uuid`).
    BindingId
);
string_id!(
    /// Identifier of an expression policy (`policy_uuid`).
    PolicyId
);
string_id!(
    /// Identifier of a policy binding.
    PolicyBindingId
);

/// Defines a closed set of values spelled as authentik spells them, with `ALL`, `as_str`, `parse`,
/// `Display` and serde as that string.
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The authentik spelling, as stored and sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value spelled `s` exactly, if any.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                $name::parse(&text).ok_or_else(|| serde::de::Error::custom(invalid_choice(&text)))
            }
        }
    };
}

/// DRF's message for a value outside a choice set: `"x" is not a valid choice.`
pub fn invalid_choice(value: &str) -> String {
    format!("\"{value}\" is not a valid choice.")
}

choice!(
    /// What a flow is for.
    Designation {
        /// Logs a user in.
        Authentication => "authentication",
        /// Authorizes an application.
        Authorization => "authorization",
        /// Logs a user out.
        Invalidation => "invalidation",
        /// Registers a user.
        Enrollment => "enrollment",
        /// Deletes a user.
        Unenrollment => "unenrollment",
        /// Recovers an account.
        Recovery => "recovery",
        /// Configures an authenticator.
        StageConfiguration => "stage_configuration",
    }
);

choice!(
    /// Page layout of a flow's UI.
    Layout {
        /// The default.
        Stacked => "stacked",
        /// Content on the left.
        ContentLeft => "content_left",
        /// Content on the right.
        ContentRight => "content_right",
        /// Sidebar on the left.
        SidebarLeft => "sidebar_left",
        /// Sidebar on the right.
        SidebarRight => "sidebar_right",
        /// Sidebar on the left over a framed background.
        SidebarLeftFrameBackground => "sidebar_left_frame_background",
        /// Sidebar on the right over a framed background.
        SidebarRightFrameBackground => "sidebar_right_frame_background",
    }
);

choice!(
    /// What happens when a flow is not applicable to the caller.
    DeniedAction {
        /// Show the message, continue to a relative `next` if given (the default).
        MessageContinue => "message_continue",
        /// Show the message.
        Message => "message",
        /// Continue silently.
        Continue => "continue",
    }
);

choice!(
    /// Who may start a flow.
    Authentication {
        /// Anyone (the default).
        None => "none",
        /// Only authenticated callers.
        RequireAuthenticated => "require_authenticated",
        /// Only anonymous callers.
        RequireUnauthenticated => "require_unauthenticated",
        /// Only superusers (users with an instance role).
        RequireSuperuser => "require_superuser",
        /// Only when entered through a redirect stage (`context.is_redirected`).
        RequireRedirect => "require_redirect",
        /// Only outposts (never true in flowgate: there are no outposts).
        RequireOutpost => "require_outpost",
    }
);

choice!(
    /// How the results of several policy bindings combine.
    PolicyEngineMode {
        /// At least one must pass (the default).
        Any => "any",
        /// Every one must pass.
        All => "all",
    }
);

choice!(
    /// What the executor does with an invalid response to a stage.
    InvalidResponseAction {
        /// Show the stage again with errors (the default).
        Retry => "retry",
        /// Restart the flow.
        Restart => "restart",
        /// Restart the flow, keeping its context.
        RestartWithContext => "restart_with_context",
    }
);

choice!(
    /// The type of a stage; selects its configuration and its behaviour.
    StageType {
        /// Asks who the user is.
        Identification => "identification",
        /// Checks a password.
        Password => "password",
        /// Validates an existing authenticator device.
        AuthenticatorValidate => "authenticator_validate",
        /// Creates the session.
        UserLogin => "user_login",
        /// Ends the session.
        UserLogout => "user_logout",
        /// Always refuses.
        Deny => "deny",
        /// Does nothing (tests).
        Dummy => "dummy",
        /// Asks for consent.
        Consent => "consent",
        /// Redirects to a URL or another flow.
        Redirect => "redirect",
        /// Hands off to an external identity provider.
        Source => "source",
        /// Shows a form.
        Prompt => "prompt",
        /// Creates or updates the user.
        UserWrite => "user_write",
    }
);

impl StageType {
    /// The UI component, `ak-stage-<type with - for _>` (e.g. `ak-stage-authenticator-validate`).
    pub fn component(self) -> String {
        format!("ak-stage-{}", self.as_str().replace('_', "-"))
    }

    /// Human name, e.g. `Identification Stage`.
    pub fn verbose_name(self) -> &'static str {
        match self {
            StageType::Identification => "Identification Stage",
            StageType::Password => "Password Stage",
            StageType::AuthenticatorValidate => "Authenticator Validation Stage",
            StageType::UserLogin => "User Login Stage",
            StageType::UserLogout => "User Logout Stage",
            StageType::Deny => "Deny Stage",
            StageType::Dummy => "Dummy Stage",
            StageType::Consent => "Consent Stage",
            StageType::Redirect => "Redirect Stage",
            StageType::Source => "Source Stage",
            StageType::Prompt => "Prompt Stage",
            StageType::UserWrite => "User Write Stage",
        }
    }

    /// Plural human name, e.g. `Identification Stages`.
    pub fn verbose_name_plural(self) -> String {
        format!("{}s", self.verbose_name())
    }

    /// authentik's model name, `authentik_stages_<type>.<type without _>stage`.
    pub fn meta_model_name(self) -> String {
        format!("authentik_stages_{}.{}stage", self.as_str(), self.as_str().replace('_', ""))
    }
}

choice!(
    /// A user attribute the identification stage matches the input against.
    UserField {
        /// The e-mail address.
        Email => "email",
        /// The username.
        Username => "username",
        /// The user principal name.
        Upn => "upn",
    }
);

choice!(
    /// A class of authenticator device.
    DeviceClass {
        /// Recovery codes.
        Static => "static",
        /// Time-based one-time passwords.
        Totp => "totp",
        /// WebAuthn / passkeys.
        Webauthn => "webauthn",
        /// Duo push.
        Duo => "duo",
        /// SMS codes.
        Sms => "sms",
        /// E-mail codes.
        Email => "email",
    }
);

choice!(
    /// What authenticator validation does for a user without a device.
    NotConfiguredAction {
        /// Skip the stage (the default).
        Skip => "skip",
        /// Deny the flow.
        Deny => "deny",
        /// Let the user configure a device.
        Configure => "configure",
    }
);

choice!(
    /// WebAuthn user verification requirement.
    UserVerification {
        /// Required.
        Required => "required",
        /// Preferred (the default).
        Preferred => "preferred",
        /// Discouraged.
        Discouraged => "discouraged",
    }
);

choice!(
    /// How long consent is remembered.
    ConsentMode {
        /// Ask every time (the default).
        AlwaysRequire => "always_require",
        /// Remember forever.
        Permanent => "permanent",
        /// Remember for `consent_expire_in`.
        Expiring => "expiring",
    }
);

choice!(
    /// Where a redirect stage sends the user.
    RedirectMode {
        /// To `target_static` (the default).
        Static => "static",
        /// Into `target_flow`.
        Flow => "flow",
    }
);

choice!(
    /// The type of a prompt field.
    PromptFieldType {
        /// Text.
        Text => "text",
        /// Text shown read-only.
        TextReadOnly => "text_read_only",
        /// Multi-line text.
        TextArea => "text_area",
        /// A username (checked for uniqueness).
        Username => "username",
        /// An e-mail address.
        Email => "email",
        /// A password.
        Password => "password",
        /// A number.
        Number => "number",
        /// A checkbox.
        Checkbox => "checkbox",
        /// Radio buttons.
        RadioButtonGroup => "radio-button-group",
        /// A drop-down.
        Dropdown => "dropdown",
        /// A date.
        Date => "date",
        /// A date and time.
        DateTime => "date-time",
        /// A file upload.
        File => "file",
        /// A separator line.
        Separator => "separator",
        /// A hidden value.
        Hidden => "hidden",
        /// Static text.
        Static => "static",
        /// A locale chooser.
        AkLocale => "ak-locale",
    }
);

choice!(
    /// When the user write stage creates users.
    UserCreationMode {
        /// Never; only updates.
        NeverCreate => "never_create",
        /// When no user is pending (the default).
        CreateWhenRequired => "create_when_required",
        /// Always.
        AlwaysCreate => "always_create",
    }
);

choice!(
    /// The kind of user the user write stage creates.
    UserType {
        /// An internal user.
        Internal => "internal",
        /// An external user (the default).
        External => "external",
        /// A service account.
        ServiceAccount => "service_account",
        /// An internal service account.
        InternalServiceAccount => "internal_service_account",
    }
);

/// A slug: `^[-a-zA-Z0-9_]+$`, 1..=50 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Slug(String);

/// Longest slug, in characters (authentik ≤ 2025.10 and its clients).
pub const MAX_SLUG: usize = 50;

/// DRF's message for a slug with other characters.
pub const SLUG_MESSAGE: &str = "Enter a valid “slug” consisting of letters, numbers, underscores or hyphens.";

impl Slug {
    /// The slug `s` (not trimmed); the error is DRF's message.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err(crate::flow::validate::BLANK.to_owned());
        }
        if s.chars().count() > MAX_SLUG {
            return Err(crate::flow::validate::too_long(MAX_SLUG));
        }
        if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(SLUG_MESSAGE.to_owned());
        }
        Ok(Self(s.to_owned()))
    }

    /// The slug as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Slug {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Slug::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An authentik timedelta string (`weeks=…;days=…;hours=…;minutes=…;seconds=…`) and its duration.
///
/// The text is kept as given (trimmed) so clients read back what they wrote.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct Timedelta {
    text: String,
    duration: Duration,
}

impl Timedelta {
    /// Parses `s`: `;`-separated `unit=number` pairs with unit in weeks, days, hours, minutes, seconds,
    /// milliseconds, microseconds and a non-negative (possibly fractional) number; the error is the message.
    pub fn parse(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let bad = || format!("{text} is not in the correct format of 'hours=3;minutes=1'.");
        if text.is_empty() {
            return Err(bad());
        }
        let mut seconds = 0f64;
        for part in text.split(';') {
            let Some((unit, value)) = part.split_once('=') else {
                return Err(bad());
            };
            let factor = match unit.trim() {
                "weeks" => 604_800.0,
                "days" => 86_400.0,
                "hours" => 3_600.0,
                "minutes" => 60.0,
                "seconds" => 1.0,
                "milliseconds" => 0.001,
                "microseconds" => 0.000_001,
                _ => return Err(bad()),
            };
            let value: f64 = value.trim().parse().map_err(|_| bad())?;
            if !value.is_finite() || value < 0.0 {
                return Err(bad());
            }
            seconds += value * factor;
        }
        // About 3000 years; larger values would overflow Duration and mean nothing for a login.
        if seconds > 1e11 {
            return Err(bad());
        }
        Ok(Self { text: text.to_owned(), duration: Duration::from_secs_f64(seconds) })
    }

    /// The text as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The duration it means.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn literal(text: &str) -> Self {
        // Only called with the constant defaults below, which parse.
        Self::parse(text).unwrap_or(Self { text: text.to_owned(), duration: Duration::ZERO })
    }
}

impl From<Timedelta> for String {
    fn from(value: Timedelta) -> Self {
        value.text
    }
}

impl<'de> Deserialize<'de> for Timedelta {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timedelta::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Timedelta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// ------------------------------------------------------------------------------------------ flows

/// The writable fields of a flow, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSpec {
    /// Trimmed, non-blank, ≤ 200 characters.
    pub name: String,
    /// Unique in the org.
    pub slug: Slug,
    /// Non-blank title shown on flow pages.
    pub title: String,
    /// What the flow is for.
    pub designation: Designation,
    /// Page layout.
    pub layout: Layout,
    /// Background image path or URL, ≤ 500 characters.
    pub background: Option<String>,
    /// Compatibility mode for old browsers' autofill.
    pub compatibility_mode: bool,
    /// What happens when the flow does not apply.
    pub denied_action: DeniedAction,
    /// Who may start the flow.
    pub authentication: Authentication,
    /// How flow-level policy bindings combine.
    pub policy_engine_mode: PolicyEngineMode,
}

/// Default background when a flow has none.
pub const DEFAULT_BACKGROUND: &str = "/static/dist/assets/images/flow_background.jpg";

/// A flow definition as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// `pk`.
    pub id: FlowId,
    /// `policybindingmodel_ptr_id`: what flow-level policy bindings target.
    pub pbm_id: PbmId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Its fields.
    pub spec: FlowSpec,
    /// Change metadata of the flow aggregate.
    pub details: Details,
}

impl Flow {
    /// `background` if set, else [`DEFAULT_BACKGROUND`].
    pub fn background_url(&self) -> String {
        self.spec.background.clone().unwrap_or_else(|| DEFAULT_BACKGROUND.to_owned())
    }

    /// `/api/v3/flows/instances/<slug>/export/`.
    pub fn export_url(&self) -> String {
        format!("/api/v3/flows/instances/{}/export/", self.spec.slug)
    }
}

// ------------------------------------------------------------------------------------------ stages

fn yes() -> bool {
    true
}

/// Configuration of an identification stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentificationConfig {
    /// Attributes matched against the input (subset of email, username, upn).
    pub user_fields: Vec<UserField>,
    /// A password stage of the org asked on the same screen.
    pub password_stage: Option<StageId>,
    /// Match ignoring case.
    pub case_insensitive_matching: bool,
    /// Show the matched user on the next stage.
    pub show_matched_user: bool,
    /// Flow linked for sign-up.
    pub enrollment_flow: Option<FlowId>,
    /// Flow linked for recovery.
    pub recovery_flow: Option<FlowId>,
    /// Flow linked for passwordless login.
    pub passwordless_flow: Option<FlowId>,
    /// External IdP ids offered.
    pub sources: Vec<String>,
    /// Show the labels of sources.
    pub show_source_labels: bool,
    /// Continue as if the user existed when it does not (prevents enumeration).
    pub pretend_user_exists: bool,
}

impl Default for IdentificationConfig {
    fn default() -> Self {
        Self {
            user_fields: vec![UserField::Username, UserField::Email],
            password_stage: None,
            case_insensitive_matching: true,
            show_matched_user: true,
            enrollment_flow: None,
            recovery_flow: None,
            passwordless_flow: None,
            sources: Vec::new(),
            show_source_labels: false,
            pretend_user_exists: true,
        }
    }
}

/// The built-in password backend.
pub const CORE_PASSWORD_BACKEND: &str = "flowgate.core.password";

/// Configuration of a password stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordConfig {
    /// Backends tried in order (non-empty).
    pub backends: Vec<String>,
    /// Flow to set a password.
    pub configure_flow: Option<FlowId>,
    /// Failed attempts before the flow is cancelled (≥ 1).
    pub failed_attempts_before_cancel: u32,
    /// Allow revealing the typed password.
    pub allow_show_password: bool,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        Self {
            backends: vec![CORE_PASSWORD_BACKEND.to_owned()],
            configure_flow: None,
            failed_attempts_before_cancel: 5,
            allow_show_password: false,
        }
    }
}

/// Configuration of an authenticator validation stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthenticatorValidateConfig {
    /// Device classes accepted.
    pub device_classes: Vec<DeviceClass>,
    /// What to do for a user without a device.
    pub not_configured_action: NotConfiguredAction,
    /// Stages offered to configure a device (stage ids of the org).
    pub configuration_stages: Vec<StageId>,
    /// Skip when the last validation is younger than this.
    pub last_auth_threshold: Timedelta,
    /// WebAuthn user verification.
    pub webauthn_user_verification: UserVerification,
}

impl Default for AuthenticatorValidateConfig {
    fn default() -> Self {
        Self {
            device_classes: vec![DeviceClass::Static, DeviceClass::Totp, DeviceClass::Sms, DeviceClass::Email],
            not_configured_action: NotConfiguredAction::Skip,
            configuration_stages: Vec::new(),
            last_auth_threshold: Timedelta::literal("seconds=0"),
            webauthn_user_verification: UserVerification::Preferred,
        }
    }
}

/// Configuration of a user login stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserLoginConfig {
    /// Session lifetime; 0 = until the browser closes.
    pub session_duration: Timedelta,
    /// Added to the lifetime when "remember me" is ticked.
    pub remember_me_offset: Timedelta,
    /// End the user's other sessions.
    pub terminate_other_sessions: bool,
}

impl Default for UserLoginConfig {
    fn default() -> Self {
        Self {
            session_duration: Timedelta::literal("seconds=0"),
            remember_me_offset: Timedelta::literal("seconds=0"),
            terminate_other_sessions: false,
        }
    }
}

/// Configuration of a dummy stage.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DummyConfig {
    /// Fail instead of passing (tests).
    pub throw_error: bool,
}

/// Configuration of a deny stage.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenyConfig {
    /// Message shown; `None` = the default message.
    pub deny_message: Option<String>,
}

/// Configuration of a consent stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsentConfig {
    /// How long consent is remembered.
    pub mode: ConsentMode,
    /// Lifetime of consent in `expiring` mode.
    pub consent_expire_in: Timedelta,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        Self { mode: ConsentMode::AlwaysRequire, consent_expire_in: Timedelta::literal("weeks=4") }
    }
}

/// Configuration of a redirect stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedirectConfig {
    /// Static URL or another flow.
    pub mode: RedirectMode,
    /// Target URL (required in `static` mode).
    pub target_static: String,
    /// Target flow of the org (required in `flow` mode).
    pub target_flow: Option<FlowId>,
    /// Carry the flow context into the target flow.
    pub keep_context: bool,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self { mode: RedirectMode::Static, target_static: String::new(), target_flow: None, keep_context: yes() }
    }
}

/// Configuration of a source stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// The external IdP id (required).
    pub source: String,
    /// How long the flow waits for the IdP to come back.
    pub resume_timeout: Timedelta,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self { source: String::new(), resume_timeout: Timedelta::literal("minutes=10") }
    }
}

/// One field of a prompt stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptField {
    /// Id of the field (generated when empty on input).
    pub pk: String,
    /// Key in `prompt_data`: `^[a-z_][a-z0-9_]*$`, unique in the stage.
    pub field_key: String,
    /// Label shown.
    pub label: String,
    /// Input type.
    #[serde(rename = "type")]
    pub field_type: PromptFieldType,
    /// Whether a value is required.
    pub required: bool,
    /// Placeholder text (or expression).
    pub placeholder: String,
    /// Initial value.
    pub initial_value: String,
    /// Position among the fields.
    pub order: i32,
    /// Help text below the field.
    pub sub_text: String,
    /// Whether `placeholder` is an expression.
    pub placeholder_expression: bool,
}

impl Default for PromptField {
    fn default() -> Self {
        Self {
            pk: String::new(),
            field_key: String::new(),
            label: String::new(),
            field_type: PromptFieldType::Text,
            required: true,
            placeholder: String::new(),
            initial_value: String::new(),
            order: 0,
            sub_text: String::new(),
            placeholder_expression: false,
        }
    }
}

/// Configuration of a prompt stage.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// Form fields.
    pub fields: Vec<PromptField>,
    /// Expression policies of the org that validate the input.
    pub validation_policies: Vec<PolicyId>,
}

/// Configuration of a user write stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserWriteConfig {
    /// When users are created.
    pub user_creation_mode: UserCreationMode,
    /// Create users inactive.
    pub create_users_as_inactive: bool,
    /// Kind of created users.
    pub user_type: UserType,
    /// Path template of created users.
    pub user_path_template: String,
}

impl Default for UserWriteConfig {
    fn default() -> Self {
        Self {
            user_creation_mode: UserCreationMode::CreateWhenRequired,
            create_users_as_inactive: false,
            user_type: UserType::External,
            user_path_template: String::new(),
        }
    }
}

/// A stage's type and its typed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageConfig {
    /// See [`IdentificationConfig`].
    Identification(IdentificationConfig),
    /// See [`PasswordConfig`].
    Password(PasswordConfig),
    /// See [`AuthenticatorValidateConfig`].
    AuthenticatorValidate(AuthenticatorValidateConfig),
    /// See [`UserLoginConfig`].
    UserLogin(UserLoginConfig),
    /// Ends the session; no fields.
    UserLogout,
    /// See [`DenyConfig`].
    Deny(DenyConfig),
    /// See [`DummyConfig`].
    Dummy(DummyConfig),
    /// See [`ConsentConfig`].
    Consent(ConsentConfig),
    /// See [`RedirectConfig`].
    Redirect(RedirectConfig),
    /// See [`SourceConfig`].
    Source(SourceConfig),
    /// See [`PromptConfig`].
    Prompt(PromptConfig),
    /// See [`UserWriteConfig`].
    UserWrite(UserWriteConfig),
}

impl StageConfig {
    /// The stage type.
    pub fn stage_type(&self) -> StageType {
        match self {
            StageConfig::Identification(_) => StageType::Identification,
            StageConfig::Password(_) => StageType::Password,
            StageConfig::AuthenticatorValidate(_) => StageType::AuthenticatorValidate,
            StageConfig::UserLogin(_) => StageType::UserLogin,
            StageConfig::UserLogout => StageType::UserLogout,
            StageConfig::Deny(_) => StageType::Deny,
            StageConfig::Dummy(_) => StageType::Dummy,
            StageConfig::Consent(_) => StageType::Consent,
            StageConfig::Redirect(_) => StageType::Redirect,
            StageConfig::Source(_) => StageType::Source,
            StageConfig::Prompt(_) => StageType::Prompt,
            StageConfig::UserWrite(_) => StageType::UserWrite,
        }
    }

    /// The default configuration of `t`.
    pub fn default_for(t: StageType) -> Self {
        match t {
            StageType::Identification => StageConfig::Identification(IdentificationConfig::default()),
            StageType::Password => StageConfig::Password(PasswordConfig::default()),
            StageType::AuthenticatorValidate => {
                StageConfig::AuthenticatorValidate(AuthenticatorValidateConfig::default())
            }
            StageType::UserLogin => StageConfig::UserLogin(UserLoginConfig::default()),
            StageType::UserLogout => StageConfig::UserLogout,
            StageType::Deny => StageConfig::Deny(DenyConfig::default()),
            StageType::Dummy => StageConfig::Dummy(DummyConfig::default()),
            StageType::Consent => StageConfig::Consent(ConsentConfig::default()),
            StageType::Redirect => StageConfig::Redirect(RedirectConfig::default()),
            StageType::Source => StageConfig::Source(SourceConfig::default()),
            StageType::Prompt => StageConfig::Prompt(PromptConfig::default()),
            StageType::UserWrite => StageConfig::UserWrite(UserWriteConfig::default()),
        }
    }

    /// The configuration as a JSON object with authentik's field names (what the store persists next to
    /// the type, and what export files contain); `{}` for types without fields.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            StageConfig::Identification(c) => serde_json::to_value(c),
            StageConfig::Password(c) => serde_json::to_value(c),
            StageConfig::AuthenticatorValidate(c) => serde_json::to_value(c),
            StageConfig::UserLogin(c) => serde_json::to_value(c),
            StageConfig::UserLogout => Ok(serde_json::Value::Object(serde_json::Map::new())),
            StageConfig::Deny(c) => serde_json::to_value(c),
            StageConfig::Dummy(c) => serde_json::to_value(c),
            StageConfig::Consent(c) => serde_json::to_value(c),
            StageConfig::Redirect(c) => serde_json::to_value(c),
            StageConfig::Source(c) => serde_json::to_value(c),
            StageConfig::Prompt(c) => serde_json::to_value(c),
            StageConfig::UserWrite(c) => serde_json::to_value(c),
        };
        // These types serialize only strings, numbers, booleans and lists of them: they cannot fail.
        value.unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()))
    }

    /// The configuration of type `t` from a JSON object as written by [`StageConfig::to_json`]; missing
    /// fields take their defaults, unknown fields and wrong types are errors (the message names the field).
    pub fn from_json(t: StageType, value: serde_json::Value) -> Result<Self, String> {
        fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(value).map_err(|e| e.to_string())
        }
        Ok(match t {
            StageType::Identification => StageConfig::Identification(typed(value)?),
            StageType::Password => StageConfig::Password(typed(value)?),
            StageType::AuthenticatorValidate => StageConfig::AuthenticatorValidate(typed(value)?),
            StageType::UserLogin => StageConfig::UserLogin(typed(value)?),
            StageType::UserLogout => {
                let empty = value.as_object().is_some_and(serde_json::Map::is_empty) || value.is_null();
                if !empty {
                    return Err("user_logout stages have no fields".to_owned());
                }
                StageConfig::UserLogout
            }
            StageType::Deny => StageConfig::Deny(typed(value)?),
            StageType::Dummy => StageConfig::Dummy(typed(value)?),
            StageType::Consent => StageConfig::Consent(typed(value)?),
            StageType::Redirect => StageConfig::Redirect(typed(value)?),
            StageType::Source => StageConfig::Source(typed(value)?),
            StageType::Prompt => StageConfig::Prompt(typed(value)?),
            StageType::UserWrite => StageConfig::UserWrite(typed(value)?),
        })
    }

    /// Flows this configuration links to (identification enrollment/recovery/passwordless, password
    /// configure_flow, redirect target_flow), with the field name.
    pub fn flow_links(&self) -> Vec<(&'static str, &FlowId)> {
        let mut links = Vec::new();
        match self {
            StageConfig::Identification(c) => {
                for (field, flow) in [
                    ("enrollment_flow", &c.enrollment_flow),
                    ("recovery_flow", &c.recovery_flow),
                    ("passwordless_flow", &c.passwordless_flow),
                ] {
                    if let Some(flow) = flow {
                        links.push((field, flow));
                    }
                }
            }
            StageConfig::Password(c) => {
                if let Some(flow) = &c.configure_flow {
                    links.push(("configure_flow", flow));
                }
            }
            StageConfig::Redirect(c) => {
                if let Some(flow) = &c.target_flow {
                    links.push(("target_flow", flow));
                }
            }
            StageConfig::AuthenticatorValidate(_)
            | StageConfig::UserLogin(_)
            | StageConfig::UserLogout
            | StageConfig::Deny(_)
            | StageConfig::Dummy(_)
            | StageConfig::Consent(_)
            | StageConfig::Source(_)
            | StageConfig::Prompt(_)
            | StageConfig::UserWrite(_) => {}
        }
        links
    }
}

/// The writable fields of a stage, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    /// Trimmed, non-blank, ≤ 200 characters, unique in the org.
    pub name: String,
    /// Type and configuration.
    pub config: StageConfig,
}

/// A stage as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `pk` (`stage_uuid`).
    pub id: StageId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Its fields.
    pub spec: StageSpec,
    /// Change metadata of the stage aggregate.
    pub details: Details,
}

// ------------------------------------------------------------------------------------------ bindings

/// The writable fields of a flow-stage binding, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingSpec {
    /// The flow (same org).
    pub target: FlowId,
    /// The stage (same org).
    pub stage: StageId,
    /// Position in the flow; (target, stage, order) is unique.
    pub order: i32,
    /// Evaluate the binding's policies when the flow is planned.
    pub evaluate_on_plan: bool,
    /// Evaluate the binding's policies again just before the stage runs.
    pub re_evaluate_policies: bool,
    /// How the binding's policies combine.
    pub policy_engine_mode: PolicyEngineMode,
    /// What an invalid response does.
    pub invalid_response_action: InvalidResponseAction,
}

/// A flow-stage binding as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// `pk` (`fsb_uuid`).
    pub id: BindingId,
    /// `policybindingmodel_ptr_id`: what the binding's policy bindings target.
    pub pbm_id: PbmId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Its fields.
    pub spec: BindingSpec,
    /// Change metadata of the write that last changed this binding (sequence of the target flow aggregate).
    pub details: Details,
}

// ------------------------------------------------------------------------------------------ policies

/// Largest expression, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 16 * 1024;

/// The writable fields of an expression policy, validated (the expression compiles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// Trimmed, non-blank, ≤ 200 characters, unique in the org.
    pub name: String,
    /// CEL expression, ≤ [`MAX_EXPRESSION_BYTES`].
    pub expression: String,
    /// Log every evaluation.
    pub execution_logging: bool,
}

/// An expression policy as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `pk` (`policy_uuid`).
    pub id: PolicyId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Its fields.
    pub spec: PolicySpec,
    /// Change metadata of the policy aggregate.
    pub details: Details,
}

/// Default evaluation timeout of a policy binding, in seconds.
pub const DEFAULT_POLICY_TIMEOUT: u32 = 30;
/// Largest evaluation timeout of a policy binding, in seconds.
pub const MAX_POLICY_TIMEOUT: u32 = 300;

/// The writable fields of a policy binding, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyBindingSpec {
    /// The policy (same org).
    pub policy: PolicyId,
    /// A flow's or a binding's pbm id (same org); (target, order) is unique.
    pub target: PbmId,
    /// Flip the result.
    pub negate: bool,
    /// Disabled bindings are skipped.
    pub enabled: bool,
    /// Position among the target's bindings.
    pub order: i32,
    /// Evaluation timeout in seconds, 1..=300.
    pub timeout: u32,
    /// Result when the evaluation fails or times out.
    pub failure_result: bool,
}

/// A policy binding as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyBinding {
    /// `pk`.
    pub id: PolicyBindingId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Its fields.
    pub spec: PolicyBindingSpec,
    /// Change metadata of the write that last changed this binding (sequence of the policy aggregate).
    pub details: Details,
}

// ------------------------------------------------------------------------------------------ lists

/// Offset paging, normalized by the core: `limit` is 1..=1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Items to skip.
    pub offset: u64,
    /// Items to answer at most.
    pub limit: u32,
}

/// A sort key and direction; ties are always broken as the key's doc says, then by id ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ordering<F> {
    /// The key.
    pub field: F,
    /// Descending instead of ascending (a `-` prefix in `ordering`).
    pub descending: bool,
}

/// Whether `value` contains `needle` ignoring case: the reference semantics of every `search` filter
/// (a literal substring; `%`, `_` and `\` match themselves, so SQL `LIKE` patterns must escape them).
pub fn contains_ignore_case(value: &str, needle: &str) -> bool {
    value.to_lowercase().contains(&needle.to_lowercase())
}

/// Flow list filters; all given ones are ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowFilter {
    /// Exact designation.
    pub designation: Option<Designation>,
    /// Exact slug.
    pub slug: Option<String>,
    /// Exact name.
    pub name: Option<String>,
    /// Exact denied action.
    pub denied_action: Option<DeniedAction>,
    /// Exact id.
    pub flow_uuid: Option<FlowId>,
    /// Case-insensitive substring of name, slug, title, designation or denied_action.
    pub search: Option<String>,
}

/// Sort keys of flow lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowOrder {
    /// `slug` (the default; ties by name).
    Slug,
    /// `name`.
    Name,
    /// `title`.
    Title,
    /// `designation` (its stored spelling).
    Designation,
    /// `pk`.
    Pk,
}

impl FlowOrder {
    /// Every key with its `ordering` name.
    pub const NAMES: &'static [(&'static str, FlowOrder)] = &[
        ("slug", FlowOrder::Slug),
        ("name", FlowOrder::Name),
        ("title", FlowOrder::Title),
        ("designation", FlowOrder::Designation),
        ("pk", FlowOrder::Pk),
        ("flow_uuid", FlowOrder::Pk),
    ];
}

/// Stage list filters; all given ones are ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageFilter {
    /// Exact name.
    pub name: Option<String>,
    /// Only stages of this type.
    pub stage_type: Option<StageType>,
    /// Exact id.
    pub stage_uuid: Option<StageId>,
    /// Case-insensitive substring of the name.
    pub search: Option<String>,
}

/// Sort keys of stage lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOrder {
    /// `name` (the default).
    Name,
    /// `pk`.
    Pk,
}

impl StageOrder {
    /// Every key with its `ordering` name.
    pub const NAMES: &'static [(&'static str, StageOrder)] =
        &[("name", StageOrder::Name), ("pk", StageOrder::Pk), ("stage_uuid", StageOrder::Pk)];
}

/// Binding list filters; all given ones are ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BindingFilter {
    /// Exact target flow.
    pub target: Option<FlowId>,
    /// Exact stage.
    pub stage: Option<StageId>,
    /// Exact order.
    pub order: Option<i32>,
    /// Exact flag.
    pub evaluate_on_plan: Option<bool>,
    /// Exact flag.
    pub re_evaluate_policies: Option<bool>,
    /// Exact mode.
    pub policy_engine_mode: Option<PolicyEngineMode>,
    /// Exact action.
    pub invalid_response_action: Option<InvalidResponseAction>,
    /// Exact id.
    pub fsb_uuid: Option<BindingId>,
    /// Exact pbm id.
    pub pbm_uuid: Option<PbmId>,
    /// Case-insensitive substring of the bound stage's name.
    pub search: Option<String>,
}

/// Sort keys of binding lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingOrder {
    /// `target` (the default; ties by order).
    Target,
    /// `order`.
    Order,
    /// `stage` (the stage id).
    Stage,
    /// `pk`.
    Pk,
}

impl BindingOrder {
    /// Every key with its `ordering` name.
    pub const NAMES: &'static [(&'static str, BindingOrder)] = &[
        ("target", BindingOrder::Target),
        ("order", BindingOrder::Order),
        ("stage", BindingOrder::Stage),
        ("pk", BindingOrder::Pk),
        ("fsb_uuid", BindingOrder::Pk),
    ];
}

/// Policy list filters; all given ones are ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyFilter {
    /// Exact name.
    pub name: Option<String>,
    /// Exact flag.
    pub execution_logging: Option<bool>,
    /// Exact id.
    pub policy_uuid: Option<PolicyId>,
    /// Case-insensitive substring of the name.
    pub search: Option<String>,
}

/// Sort keys of policy lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOrder {
    /// `name` (the default).
    Name,
    /// `pk`.
    Pk,
}

impl PolicyOrder {
    /// Every key with its `ordering` name.
    pub const NAMES: &'static [(&'static str, PolicyOrder)] =
        &[("name", PolicyOrder::Name), ("pk", PolicyOrder::Pk), ("policy_uuid", PolicyOrder::Pk)];
}

/// Policy binding list filters; all given ones are ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyBindingFilter {
    /// Exact policy.
    pub policy: Option<PolicyId>,
    /// Exact target.
    pub target: Option<PbmId>,
    /// Exact flag.
    pub enabled: Option<bool>,
    /// Exact order.
    pub order: Option<i32>,
    /// Exact timeout.
    pub timeout: Option<u32>,
}

/// Sort keys of policy binding lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyBindingOrder {
    /// `order` (the default).
    Order,
    /// `target` (ties by order).
    Target,
    /// `pk`.
    Pk,
}

impl PolicyBindingOrder {
    /// Every key with its `ordering` name.
    pub const NAMES: &'static [(&'static str, PolicyBindingOrder)] = &[
        ("order", PolicyBindingOrder::Order),
        ("target", PolicyBindingOrder::Target),
        ("pk", PolicyBindingOrder::Pk),
        ("policy_binding_uuid", PolicyBindingOrder::Pk),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_round_trip() {
        for d in Designation::ALL {
            assert_eq!(Designation::parse(d.as_str()), Some(*d));
        }
        assert_eq!(PromptFieldType::parse("radio-button-group"), Some(PromptFieldType::RadioButtonGroup));
        assert_eq!(Designation::parse("Authentication"), None);
        assert_eq!(invalid_choice("x"), "\"x\" is not a valid choice.");
    }

    #[test]
    fn stage_type_names() {
        assert_eq!(StageType::AuthenticatorValidate.component(), "ak-stage-authenticator-validate");
        assert_eq!(StageType::UserLogin.component(), "ak-stage-user-login");
        assert_eq!(StageType::Password.meta_model_name(), "authentik_stages_password.passwordstage");
        assert_eq!(StageType::UserLogin.meta_model_name(), "authentik_stages_user_login.userloginstage");
        assert_eq!(StageType::Identification.verbose_name_plural(), "Identification Stages");
    }

    #[test]
    fn slugs() {
        assert!(Slug::parse("default-authentication_flow1").is_ok());
        assert_eq!(Slug::parse("a/b").unwrap_err(), SLUG_MESSAGE);
        assert_eq!(Slug::parse("a b").unwrap_err(), SLUG_MESSAGE);
        assert!(Slug::parse(&"x".repeat(50)).is_ok());
        assert_eq!(Slug::parse(&"x".repeat(51)).unwrap_err(), "Ensure this field has no more than 50 characters.");
    }

    #[test]
    fn timedeltas() {
        let t = Timedelta::parse("hours=1;minutes=30").unwrap();
        assert_eq!(t.duration(), Duration::from_secs(5400));
        assert_eq!(t.as_str(), "hours=1;minutes=30");
        assert_eq!(Timedelta::parse("weeks=4").unwrap().duration(), Duration::from_secs(4 * 604_800));
        assert_eq!(Timedelta::parse("seconds=0.5").unwrap().duration(), Duration::from_millis(500));
        for bad in ["", "hours", "hours=x", "years=1", "seconds=-1", "hours=1;", "seconds=inf"] {
            assert!(Timedelta::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stage_config_json_round_trips_with_defaults() {
        for t in StageType::ALL {
            let config = StageConfig::default_for(*t);
            let json = config.to_json();
            assert_eq!(StageConfig::from_json(*t, json).unwrap(), config);
            assert_eq!(StageConfig::from_json(*t, serde_json::json!({})).unwrap(), config);
        }
        let json = serde_json::json!({"user_fields": ["email"], "bogus": 1});
        assert!(StageConfig::from_json(StageType::Identification, json).unwrap_err().contains("bogus"));
        let json = serde_json::json!({"mode": "sometimes"});
        let err = StageConfig::from_json(StageType::Consent, json).unwrap_err();
        assert!(err.contains("\"sometimes\" is not a valid choice."), "{err}");
    }
}
