//! The one mapping from core errors to gRPC statuses (and so, through the gateway, to HTTP).

use flowgate_core::{Error, ErrorKind};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// Domain of every `google.rpc.ErrorInfo` flowgate attaches.
const ERROR_DOMAIN: &str = "flowgate";

/// gRPC code for an error kind. Exhaustive on purpose: a new kind must be mapped here to compile.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

/// Converts a core error into a status carrying `ErrorInfo` (stable reason), `BadRequest` (field
/// violations) and `RequestInfo` (request id). Internal errors are logged here, once, with their
/// cause; callers only ever see "internal error" and the request id.
pub fn to_status(err: &Error, request_id: Option<&str>) -> tonic::Status {
    let kind = err.kind();
    match kind {
        ErrorKind::Internal => tracing::error!(request_id, error = %err, "internal error"),
        ErrorKind::Unavailable => tracing::warn!(request_id, error = %err, "dependency unavailable"),
        ErrorKind::NotFound
        | ErrorKind::InvalidArgument
        | ErrorKind::FailedPrecondition
        | ErrorKind::PermissionDenied
        | ErrorKind::Unauthenticated
        | ErrorKind::AlreadyExists
        | ErrorKind::ResourceExhausted
        | ErrorKind::Aborted => tracing::debug!(request_id, error = %err, "request refused"),
    }
    let mut details = ErrorDetails::new();
    // Client-visible facts (e.g. `failed_attempts` after a wrong password) travel as ErrorInfo metadata.
    let metadata: std::collections::HashMap<String, String> =
        err.metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    details.set_error_info(err.id(), ERROR_DOMAIN, metadata);
    if !err.violations().is_empty() {
        let violations = err
            .violations()
            .iter()
            .map(|v| tonic_types::FieldViolation::new(v.field.clone(), v.description.clone()))
            .collect::<Vec<_>>();
        details.set_bad_request(violations);
    }
    if let Some(id) = request_id {
        details.set_request_info(id, "");
    }
    let message = format!("{} ({})", err.message(), err.id());
    tonic::Status::with_error_details(code_of(kind), message, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let err = Error::internal("STORE-query", std::io::Error::other("SELECT secret FROM t failed"));
        let status = to_status(&err, Some("rid-1"));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"), "{}", status.message());
        let details = status.get_error_details();
        assert_eq!(details.request_info().map(|r| r.request_id.as_str()), Some("rid-1"));
        assert_eq!(details.error_info().map(|e| e.reason.as_str()), Some("STORE-query"));
    }

    #[test]
    fn metadata_becomes_error_info_metadata() {
        let err = Error::new(flowgate_core::ErrorKind::FailedPrecondition, "SESSION-credentials-invalid", "no")
            .with_metadata("failed_attempts", 3);
        let status = to_status(&err, None);
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.metadata.get("failed_attempts").map(String::as_str), Some("3"));
    }

    #[test]
    fn field_violations_become_bad_request() {
        let err = Error::invalid_field("USER-name", "username", "must not be empty");
        let status = to_status(&err, None);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().map(|b| b.field_violations.clone()).unwrap_or_default();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].field, "username");
    }
}
