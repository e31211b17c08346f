//! Conversions shared by the adapters: details, timestamps, list queries, text methods.

use chrono::{DateTime, TimeZone, Utc};
use flowgate_core::Error;
use flowgate_core::event::Details;
use flowgate_core::identity::model::{ListQuery, Page, TextMethod};
use tonic::Status;

use crate::error::to_status;
use crate::pb::flowgate::object::v2 as object;

/// A protobuf timestamp of a UTC time.
pub fn timestamp(t: DateTime<Utc>) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp { seconds: t.timestamp(), nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// A UTC time from a protobuf timestamp; out-of-range values name `field`.
pub fn from_timestamp(
    t: &pbjson_types::Timestamp,
    field: &str,
    request_id: Option<&str>,
) -> Result<DateTime<Utc>, Status> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| Utc.timestamp_opt(t.seconds, nanos).single())
        .ok_or_else(|| invalid(field, "is not a valid timestamp", request_id))
}

/// The wire form of change metadata.
pub fn details(d: &Details) -> object::Details {
    let Details { sequence, creation_date, change_date, resource_owner } = d;
    object::Details {
        sequence: *sequence,
        change_date: Some(timestamp(*change_date)),
        resource_owner: resource_owner.clone(),
        creation_date: Some(timestamp(*creation_date)),
    }
}

/// List metadata of a page.
pub fn list_details<T>(page: &Page<T>) -> object::ListDetails {
    object::ListDetails { total_result: page.total, processed_sequence: 0, timestamp: Some(timestamp(Utc::now())) }
}

/// Paging from the wire (the core applies the default and maximum limits).
pub fn list_query(q: Option<object::ListQuery>) -> ListQuery {
    let object::ListQuery { offset, limit, asc } = q.unwrap_or_default();
    ListQuery { offset, limit, asc }
}

/// A text query method from its wire number; unknown numbers name `field`.
pub fn text_method(value: i32, field: &str, request_id: Option<&str>) -> Result<TextMethod, Status> {
    let method = object::TextQueryMethod::try_from(value)
        .map_err(|_| invalid(field, "is not a known text query method", request_id))?;
    Ok(match method {
        object::TextQueryMethod::Equals => TextMethod::Equals,
        object::TextQueryMethod::EqualsIgnoreCase => TextMethod::EqualsIgnoreCase,
        object::TextQueryMethod::StartsWith => TextMethod::StartsWith,
        object::TextQueryMethod::StartsWithIgnoreCase => TextMethod::StartsWithIgnoreCase,
        object::TextQueryMethod::Contains => TextMethod::Contains,
        object::TextQueryMethod::ContainsIgnoreCase => TextMethod::ContainsIgnoreCase,
        object::TextQueryMethod::EndsWith => TextMethod::EndsWith,
        object::TextQueryMethod::EndsWithIgnoreCase => TextMethod::EndsWithIgnoreCase,
    })
}

/// InvalidArgument naming one request field, through the one error mapping.
pub fn invalid(field: &str, description: &str, request_id: Option<&str>) -> Status {
    to_status(&Error::invalid_field("REQUEST-invalid", field, description), request_id)
}

/// A required message field that is missing.
pub fn required<T>(value: Option<T>, field: &str, request_id: Option<&str>) -> Result<T, Status> {
    value.ok_or_else(|| invalid(field, "is required", request_id))
}
