//! The one error type every use case returns.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// Transport-neutral classification of a failure; the edge maps each kind to exactly one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The addressed object does not exist (or the caller may not know that it does).
    NotFound,
    /// The request is malformed; `Error::violations` names the fields.
    InvalidArgument,
    /// The request is well-formed but the object is not in a state that allows it.
    FailedPrecondition,
    /// The caller is known but lacks the permission.
    PermissionDenied,
    /// The caller could not be identified (missing, malformed or expired credentials).
    Unauthenticated,
    /// The object to create exists already.
    AlreadyExists,
    /// A limit was hit (rate, quota, overload); retrying later may succeed.
    ResourceExhausted,
    /// A concurrent writer changed the same object first; retrying the whole operation may succeed.
    Aborted,
    /// A dependency (database, upstream IdP) is unreachable right now.
    Unavailable,
    /// A bug or an unexpected failure; details are logged, never shown to the caller.
    Internal,
}

/// One invalid request field and why it is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request, in proto field names (`profile.given_name`).
    pub field: String,
    /// Human-readable reason.
    pub description: String,
}

/// A failed use case: a kind, a stable id (e.g. `SESSION-token-invalid`) and a message for humans.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    id: Cow<'static, str>,
    message: String,
    violations: Vec<FieldViolation>,
    metadata: BTreeMap<String, String>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Result alias for use cases.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a stable `id` and a human-readable `message`.
    pub fn new(kind: ErrorKind, id: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
            message: message.into(),
            violations: Vec::new(),
            metadata: BTreeMap::new(),
            source: None,
        }
    }

    /// An InvalidArgument error naming one field.
    pub fn invalid_field(
        id: impl Into<Cow<'static, str>>,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        let field = field.into();
        let description = description.into();
        let message = format!("invalid {field}: {description}");
        Self::new(ErrorKind::InvalidArgument, id, message).with_violation(field, description)
    }

    /// An InvalidArgument error for several fields at once (empty `violations` is a caller bug but stays valid).
    pub fn invalid_fields(id: impl Into<Cow<'static, str>>, violations: Vec<FieldViolation>) -> Self {
        let message =
            violations.iter().map(|v| format!("invalid {}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
        let mut err = Self::new(ErrorKind::InvalidArgument, id, message);
        err.violations = violations;
        err
    }

    /// An Internal error wrapping its cause; the cause is logged at the edge and never sent to clients.
    pub fn internal(
        id: impl Into<Cow<'static, str>>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let mut err = Self::new(ErrorKind::Internal, id, "internal error");
        err.source = Some(source.into());
        err
    }

    /// Adds a field violation (used with InvalidArgument).
    #[must_use]
    pub fn with_violation(mut self, field: impl Into<String>, description: impl Into<String>) -> Self {
        self.violations.push(FieldViolation { field: field.into(), description: description.into() });
        self
    }

    /// Adds a machine-readable detail for clients (e.g. `failed_attempts`); the edge puts these into
    /// `google.rpc.ErrorInfo.metadata`.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.metadata.insert(key.into(), value.to_string());
        self
    }

    /// Attaches the underlying cause (kept for logs only).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The stable identifier clients may match on.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The human-readable message (safe to show to callers).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The invalid fields, if any.
    pub fn violations(&self) -> &[FieldViolation] {
        &self.violations
    }

    /// Machine-readable details for clients (key → value), if any.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.id)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}
