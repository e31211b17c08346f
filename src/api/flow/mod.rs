//! `flowgate.flow.v1`: flow definitions as authentik's admin API shows them — flows, stages, flow-stage
//! bindings, expression policies and policy bindings — over the flow use cases ([`Flows`]).
//!
//! One adapter ([`FlowApi`]) implements the four services. Choices travel as protobuf enums on the wire
//! and as authentik's spelling in core (`FLOW_DESIGNATION_STAGE_CONFIGURATION` ⇄ `stage_configuration`),
//! converted here by the same prefix rule the gateway's authentik dialect uses.

mod bindings;
mod flows;
mod policies;
mod stages;

use flowgate_core::Error;
use flowgate_core::flow::validate::DEFAULT_PAGE_SIZE;
use flowgate_core::flow::{Flows, ListParams};
use flowgate_core::identity::{CallContext, Identity};
use tonic::{Request, Status};

use super::convert::invalid;
use super::request_id;
use crate::auth::context;
use crate::error::to_status;
use crate::pb::flowgate::flow::v1 as pb;

/// Adapter of `FlowService`, `StageService`, `BindingService` and `PolicyService` over the flow use
/// cases; the identity use cases resolve the user of a policy test.
pub struct FlowApi {
    flows: Flows,
    identity: Identity,
}

impl FlowApi {
    /// An adapter over `flows`; `identity` looks up users named in policy tests.
    pub fn new(flows: Flows, identity: Identity) -> Self {
        Self { flows, identity }
    }
}

/// The call context and request id of `req`.
fn begin<T>(req: &Request<T>) -> Result<(CallContext, Option<String>), Status> {
    Ok((context(req)?, request_id(req)))
}

/// Maps a core error through the one error mapping.
fn fail(rid: Option<&str>) -> impl Fn(Error) -> Status + '_ {
    move |e| to_status(&e, rid)
}

/// A protobuf enum whose value names are `<ENUM_NAME>_<AUTHENTIK SPELLING>` (plus `_UNSPECIFIED`).
trait Choice: Copy + Into<i32> + TryFrom<i32> {
    /// The zero value: "not sent".
    const UNSPECIFIED: Self;
    /// The full value name.
    fn name(self) -> &'static str;
    /// The value with the full name `name`.
    fn from_name(name: &str) -> Option<Self>;
}

macro_rules! choices {
    ($($t:ident),+ $(,)?) => {
        $(impl Choice for pb::$t {
            const UNSPECIFIED: Self = pb::$t::Unspecified;
            fn name(self) -> &'static str {
                self.as_str_name()
            }
            fn from_name(name: &str) -> Option<Self> {
                pb::$t::from_str_name(name)
            }
        })+
    };
}

choices!(
    FlowDesignation,
    FlowLayout,
    DeniedAction,
    FlowAuthentication,
    PolicyEngineMode,
    UsedByAction,
    InvalidResponseAction,
    UserField,
    DeviceClass,
    NotConfiguredAction,
    UserVerification,
    ConsentMode,
    RedirectMode,
    UserCreationMode,
    UserType,
);

/// `FLOW_DESIGNATION_` for `FlowDesignation`: the name of the zero value without `UNSPECIFIED`.
fn prefix<E: Choice>() -> &'static str {
    let unspecified = E::UNSPECIFIED.name();
    unspecified.strip_suffix("UNSPECIFIED").unwrap_or(unspecified)
}

/// authentik's spelling of the wire value `value` of `E`: `None` for the zero value (not sent); a number
/// that is no value of `E` ⇒ InvalidArgument on `field` in DRF's wording.
fn choice_in<E: Choice>(value: i32, field: &str, rid: Option<&str>) -> Result<Option<String>, Status> {
    if value == 0 {
        return Ok(None);
    }
    let known = E::try_from(value).map_err(|_| invalid(field, &format!("\"{value}\" is not a valid choice."), rid))?;
    let name = known.name();
    Ok(Some(name.strip_prefix(prefix::<E>()).unwrap_or(name).to_ascii_lowercase()))
}

/// [`choice_in`] parsed into core's type by `parse` (core knows the same set of choices).
fn parse_choice<E: Choice, T>(
    value: i32,
    field: &str,
    parse: fn(&str) -> Option<T>,
    rid: Option<&str>,
) -> Result<Option<T>, Status> {
    match choice_in::<E>(value, field, rid)? {
        None => Ok(None),
        Some(text) => {
            parse(&text).map(Some).ok_or_else(|| invalid(field, &format!("\"{text}\" is not a valid choice."), rid))
        }
    }
}

/// The wire value of `E` spelled `text` by authentik (core's `as_str`).
fn choice_out<E: Choice>(text: &str) -> i32 {
    // Core's choice sets are the protos' minus `UNSPECIFIED`; a spelling without a value would be a build
    // defect, answered as the zero value rather than failing a read.
    E::from_name(&format!("{}{}", prefix::<E>(), text.to_ascii_uppercase())).map_or(0, Into::into)
}

/// An id or text filter: empty means "no filter".
fn filter(text: String) -> Option<String> {
    if text.is_empty() { None } else { Some(text) }
}

/// Paging and ordering of a list request; negative numbers name their field.
fn list_params(page: i32, page_size: i32, ordering: String, rid: Option<&str>) -> Result<ListParams, Status> {
    let page = u32::try_from(page).map_err(|_| invalid("page", "Invalid page.", rid))?;
    let page_size = u32::try_from(page_size)
        .map_err(|_| invalid("page_size", "Ensure this value is greater than or equal to 1.", rid))?;
    Ok(ListParams { page, page_size, ordering: filter(ordering) })
}

/// DRF's page envelope for page `params.page` of `total` matches of which `shown` are on this page.
fn pagination(params: &ListParams, total: u64, shown: usize) -> pb::Pagination {
    let size = u64::from(if params.page_size == 0 { DEFAULT_PAGE_SIZE } else { params.page_size });
    let page = u64::from(params.page.max(1));
    let total_pages = total.div_ceil(size).max(1);
    let (start_index, end_index) = if shown == 0 {
        (0, 0)
    } else {
        let start = (page - 1) * size + 1;
        (start, start + shown as u64 - 1)
    };
    let n = |v: u64| i32::try_from(v).unwrap_or(i32::MAX);
    pb::Pagination {
        next: if page < total_pages { n(page + 1) } else { 0 },
        previous: if page > 1 { n(page - 1) } else { 0 },
        count: n(total),
        current: n(page),
        total_pages: n(total_pages),
        start_index: n(start_index),
        end_index: n(end_index),
    }
}

/// The query-language schema of a list: flowgate offers none, and authentik's clients need `{}`.
fn autocomplete() -> Option<pbjson_types::Struct> {
    Some(pbjson_types::Struct::default())
}

/// The field names of a PATCH mask, relative to the request's body field `body` (gRPC clients may name
/// them `flow.title` or `title`; the gateway fills them relative to the body).
fn mask_paths(mask: Option<pbjson_types::FieldMask>, body: &str) -> Vec<String> {
    let nested = format!("{body}.");
    mask.map(|m| m.paths)
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.strip_prefix(&nested).map_or(p.clone(), str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_use_the_dialect_spelling() {
        assert_eq!(
            choice_in::<pb::FlowDesignation>(pb::FlowDesignation::StageConfiguration.into(), "designation", None)
                .unwrap(),
            Some("stage_configuration".to_owned())
        );
        assert_eq!(choice_in::<pb::FlowLayout>(0, "layout", None).unwrap(), None);
        let err = choice_in::<pb::FlowLayout>(99, "layout", None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(choice_out::<pb::UsedByAction>("set_null"), i32::from(pb::UsedByAction::SetNull));
        assert_eq!(
            choice_out::<pb::FlowAuthentication>("require_superuser"),
            i32::from(pb::FlowAuthentication::RequireSuperuser)
        );
    }

    #[test]
    fn pagination_numbers() {
        let params = ListParams { page: 2, page_size: 2, ordering: None };
        let p = pagination(&params, 5, 2);
        assert_eq!(
            (p.next, p.previous, p.count, p.current, p.total_pages, p.start_index, p.end_index),
            (3, 1, 5, 2, 3, 3, 4)
        );
        let p = pagination(&ListParams::default(), 0, 0);
        assert_eq!(
            (p.next, p.previous, p.count, p.current, p.total_pages, p.start_index, p.end_index),
            (0, 0, 0, 1, 1, 0, 0)
        );
    }

    #[test]
    fn masks_are_relative_to_the_body() {
        let mask = pbjson_types::FieldMask { paths: vec!["flow.title".into(), "name".into()] };
        assert_eq!(mask_paths(Some(mask), "flow"), vec!["title".to_owned(), "name".to_owned()]);
    }
}
