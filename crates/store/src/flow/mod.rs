//! The flow-definition repositories: flows (and imports), stages, flow-stage bindings, expression policies
//! and policy bindings, implementing the ports of [`flowgate_core::flow::ports`] over the [`Store`].
//!
//! Every mutation is one [`Store::write`] on the aggregate the port names; events of other aggregates
//! (`stage.changed` of rewritten stages, an import's stage and policy events) are appended inside the same
//! transaction. Rows carry the change metadata of their aggregate's last event: a binding change also
//! stamps its target flow's row, a policy binding change its policy's row.
//!
//! Deletes list the ids they cascade to in their event, and the event is fixed before the write starts.
//! So a delete reads its cascade first, then, inside the write and with the rows locked (PostgreSQL; the
//! SQLite writer holds the whole file), reads it again: when a concurrent write changed it meanwhile, the
//! write rolls back and starts over, so the event always lists exactly what was deleted.

mod bindings;
pub(crate) mod entity;
mod flows;
mod import;
mod policies;
mod stages;

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use flowgate_core::event::{AggregateRef, Details, NewEvent, WriteIntent};
use flowgate_core::flow::ports::FlowRepos;
use flowgate_core::flow::{Page, PageRequest};
use flowgate_core::identity::OrgId;
use flowgate_core::identity::ports::ORG_NOT_FOUND;
use flowgate_core::{Error, ErrorKind, Result};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{DatabaseTransaction, DbErr, EntityTrait, Order, PaginatorTrait, QuerySelect, Select};

use crate::backend::{Backend, TextPosition, text_match, unique_violation_target};
use crate::error::db_error;
use crate::event_log::{StateError, append_in};
use crate::identity::entity::orgs;
use crate::store::Store;

/// Error id: InvalidArgument, a record names a flow, stage, policy or policy binding target that is not
/// (or no longer) in the org; answered with DRF's `Invalid pk "<id>" - object does not exist.` on the field.
pub const FLOW_REFERENCE_MISSING: &str = "FLOW-reference-missing";

/// Error id of a delete whose cascade changed between the first read and the write; the delete starts
/// over, so it never leaves this module (unless it keeps happening, see [`CASCADE_ATTEMPTS`]).
const CASCADE_CHANGED: &str = "STORE-cascade-changed";
/// How many times a delete reads its cascade again before giving up with `STORE-conflict`.
const CASCADE_ATTEMPTS: u32 = 5;
/// Largest page a repository answers (the core normalizes; this guards direct callers).
const MAX_LIMIT: u64 = 1000;

/// Every flow-definition repository over one [`Store`]; each port trait is implemented by this one type.
#[derive(Debug, Clone)]
pub struct FlowRepositories {
    store: Store,
}

impl FlowRepositories {
    /// Repositories reading and writing through `store` (which must be migrated).
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// The [`FlowRepos`] bundle the flow-definition use cases are built with, all backed by `store`.
pub fn repos(store: &Store) -> FlowRepos {
    let repos = Arc::new(FlowRepositories::new(store.clone()));
    FlowRepos {
        flows: repos.clone(),
        stages: repos.clone(),
        bindings: repos.clone(),
        policies: repos.clone(),
        policy_bindings: repos,
    }
}

/// A write of `events` on (`kind`, `id`) owned by `org`, by `actor`, serialized with concurrent writers of
/// that aggregate (no expected sequence).
fn intent(kind: &str, id: &str, org: &OrgId, actor: &str, events: Vec<NewEvent>) -> WriteIntent {
    crate::identity::intent(kind, id, org.as_str(), actor, events)
}

fn aggregate(kind: &str, id: &str) -> AggregateRef {
    crate::identity::aggregate(kind, id)
}

/// Details of a row that carries its aggregate's change metadata, owned by `org`.
fn details(created_at: DateTime<Utc>, changed_at: DateTime<Utc>, sequence: i64, org: &str) -> Result<Details> {
    crate::identity::row_details(created_at, changed_at, sequence, org)
}

/// A sequence as stored.
fn db_sequence(sequence: u64) -> Result<i64> {
    crate::identity::db_sequence(sequence)
}

/// A stored value that does not parse any more.
fn corrupt(what: &str, value: &str) -> Error {
    crate::identity::corrupt(what, value)
}

/// InvalidArgument [`FLOW_REFERENCE_MISSING`] on `field`, in DRF's words.
fn missing_reference(field: &str, id: &str) -> Error {
    Error::invalid_field(FLOW_REFERENCE_MISSING, field, format!("Invalid pk \"{id}\" - object does not exist."))
}

fn cascade_changed() -> StateError {
    Error::new(ErrorKind::Aborted, CASCADE_CHANGED, "the objects to delete changed during the delete").into()
}

/// Runs a delete until its cascade read before the write still holds inside it (see the module docs).
async fn retry_cascade<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    for _ in 1..CASCADE_ATTEMPTS {
        match attempt().await {
            Err(err) if err.id() == CASCADE_CHANGED => {}
            other => return other,
        }
    }
    attempt().await.map_err(|err| match err.id() {
        CASCADE_CHANGED => Error::new(
            ErrorKind::Aborted,
            "STORE-conflict",
            "the object is being changed concurrently; retry the operation",
        )
        .with_source(err),
        _ => err,
    })
}

/// Translates a unique violation of the constraint covering `column` into `error`; any other database
/// error (an id collision included) is passed on.
fn unique_as(err: DbErr, column: &str, error: fn() -> Error) -> StateError {
    match unique_violation_target(&err) {
        Some(target) if target.contains(column) => StateError::Domain(error().with_source(err)),
        Some(_) | None => StateError::Db(err),
    }
}

/// Fails with NotFound [`ORG_NOT_FOUND`] unless the org exists (checked inside the write, so the foreign
/// key never answers an internal error instead).
async fn require_org(txn: &DatabaseTransaction, org: &OrgId) -> Result<(), StateError> {
    let found = orgs::Entity::find_by_id(org.as_str()).select_only().column(orgs::Column::Id).into_tuple::<String>();
    match found.one(txn).await? {
        Some(_) => Ok(()),
        None => Err(Error::new(ErrorKind::NotFound, ORG_NOT_FOUND, "organization not found").into()),
    }
}

/// `lower_column` (lower-cased like Rust lower-cases) contains `needle` ignoring case, literally.
fn search(backend: Backend, lower_column: Expr, needle: &str) -> Expr {
    text_match(backend, lower_column, &needle.to_lowercase(), TextPosition::Anywhere)
}

/// A condition no row satisfies.
fn nothing() -> Expr {
    Expr::val(1).eq(0)
}

fn order(descending: bool) -> Order {
    if descending { Order::Desc } else { Order::Asc }
}

/// Runs `select` for one page and counts all its matches.
async fn page<E>(store: &Store, select: Select<E>, page: PageRequest) -> Result<(Vec<E::Model>, u64)>
where
    E: EntityTrait,
    E::Model: Sync,
{
    let db = store.reader();
    let total = select.clone().count(db).await.map_err(db_error)?;
    let limit = u64::from(page.limit).clamp(1, MAX_LIMIT);
    let rows = select.offset(page.offset).limit(limit).all(db).await.map_err(db_error)?;
    Ok((rows, total))
}

/// Converts rows into a [`Page`].
fn into_page<R, T>(rows: Vec<R>, total: u64, convert: fn(R) -> Result<T>) -> Result<Page<T>> {
    Ok(Page { items: rows.into_iter().map(convert).collect::<Result<_>>()?, total })
}

/// Appends `event` to a second aggregate from inside a write; answers the sequence and time it got.
async fn append_other(
    txn: &DatabaseTransaction,
    backend: Backend,
    aggregate: &AggregateRef,
    org: &OrgId,
    actor: &str,
    event: NewEvent,
    at: DateTime<Utc>,
) -> Result<(u64, DateTime<Utc>), StateError> {
    let appended = append_in(txn, backend, aggregate, org.as_str(), actor, &[event], at).await?;
    Ok((appended.sequence, appended.created_at))
}
