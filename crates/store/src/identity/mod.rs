//! The identity repositories: organizations, users, personal access tokens, memberships and the instance,
//! implementing the ports of [`flowgate_core::identity::ports`] over the [`Store`].
//!
//! Every mutation is one [`Store::write`]: the state rows and the events commit together. Uniqueness that
//! matters under concurrency (usernames, org names, token hashes, the instance row) is left to unique
//! indexes and their violations are translated here into errors that name the field.

pub(crate) mod entity;
mod instance;
mod members;
mod orgs;
mod tokens;
pub(crate) mod users;

pub use orgs::{ORG_DOMAIN_TAKEN, ORG_ID_TAKEN};
pub use tokens::{TOKEN_HASH_TAKEN, TOKEN_ID_TAKEN};
pub use users::USER_NOT_HUMAN;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use flowgate_core::event::{AggregateRef, Details, NewEvent, WriteIntent};
use flowgate_core::identity::ports::Repos;
use flowgate_core::identity::{ListQuery, TextMethod};
use flowgate_core::{Error, ErrorKind};
use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{ActiveModelTrait, DbErr, EntityTrait, PaginatorTrait, QuerySelect, Select};

use crate::backend::{Backend, TextPosition, text_match, unique_violation_target};
use crate::event_log::StateError;
use crate::store::Store;

/// Aggregate type of organizations.
const ORG: &str = "org";
/// Aggregate type of users (their tokens' events belong to them too).
pub(crate) const USER: &str = "user";
/// Aggregate type and id of the instance.
const INSTANCE: &str = "instance";

/// Page size when a query asks for 0 items (the core normalizes; this only guards direct callers).
const DEFAULT_LIMIT: u64 = 100;
/// Largest page a repository answers.
const MAX_LIMIT: u64 = 1000;

/// Every identity repository over one [`Store`]; each port trait is implemented by this one type.
#[derive(Debug, Clone)]
pub struct IdentityRepos {
    store: Store,
}

impl IdentityRepos {
    /// Repositories reading and writing through `store` (which must be migrated).
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// The [`Repos`] bundle the identity use cases are built with, all backed by `store`.
pub fn repos(store: &Store) -> Repos {
    let repos = Arc::new(IdentityRepos::new(store.clone()));
    Repos { orgs: repos.clone(), users: repos.clone(), tokens: repos.clone(), members: repos.clone(), instance: repos }
}

/// A write of `events` on aggregate (`kind`, `id`) owned by `owner`, by `actor`, serialized with any
/// concurrent writer of the same aggregate (no expected sequence: the state closure re-checks what it needs).
pub(crate) fn intent(kind: &str, id: &str, owner: &str, actor: &str, events: Vec<NewEvent>) -> WriteIntent {
    WriteIntent {
        aggregate: aggregate(kind, id),
        resource_owner: owner.to_owned(),
        creator: actor.to_owned(),
        expected_sequence: None,
        events,
    }
}

pub(crate) fn aggregate(kind: &str, id: &str) -> AggregateRef {
    AggregateRef { aggregate_type: kind.to_owned(), aggregate_id: id.to_owned() }
}

pub(crate) fn event(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent { event_type: event_type.to_owned(), payload }
}

/// A sequence as stored (`BIGINT`).
pub(crate) fn db_sequence(sequence: u64) -> Result<i64, Error> {
    i64::try_from(sequence).map_err(|_| Error::internal("STORE-sequence-overflow", "sequence overflow"))
}

/// `row` as an update of `columns` only: those are set, every other column is left out of the statement.
pub(crate) fn changes_of<A: ActiveModelTrait>(mut row: A, columns: &[<A::Entity as EntityTrait>::Column]) -> A {
    for column in columns {
        row.reset(*column);
    }
    row
}

/// Asserts that `changes` (made by [`changes_of`] from a row its writer filled) sets exactly `columns`, and
/// that the writer filled no column beyond them (compared with `blank`, the row before it was filled): a
/// column the writer fills but the list lacks would be silently left as it was by the update.
#[cfg(test)]
pub(crate) fn assert_changes_cover<A: ActiveModelTrait>(
    changes: &A,
    blank: &A,
    columns: &[<A::Entity as EntityTrait>::Column],
) {
    use sea_orm::{ActiveValue, IdenStatic, Iterable};
    for column in <A::Entity as EntityTrait>::Column::iter() {
        let written = matches!(changes.get(column), ActiveValue::Set(_));
        let filled = changes.get(column).into_value() != blank.get(column).into_value();
        let listed = columns.iter().any(|c| c.as_str() == column.as_str());
        assert_eq!(written, listed, "{}", column.as_str());
        assert!(!filled || written, "{} is filled but not written", column.as_str());
    }
}

/// Details of a row that carries its own change metadata.
pub(crate) fn row_details(
    created_at: DateTime<Utc>,
    changed_at: DateTime<Utc>,
    sequence: i64,
    owner: &str,
) -> Result<Details, Error> {
    let sequence = u64::try_from(sequence)
        .map_err(|_| Error::internal("STORE-corrupt-sequence", format!("negative sequence {sequence}")))?;
    Ok(Details { sequence, creation_date: created_at, change_date: changed_at, resource_owner: owner.to_owned() })
}

/// A stored value that no longer parses: the row was written by something else than this code.
pub(crate) fn corrupt(what: &str, value: &str) -> Error {
    Error::internal("STORE-corrupt-row", format!("unexpected {what} {value:?}"))
}

pub(crate) fn not_found(id: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::NotFound, id, message)
}

pub(crate) fn already_exists(id: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::AlreadyExists, id, message)
}

/// Translates a unique violation of an insert or update into the error of the field it hit: the first
/// rule whose column name occurs in the violated constraint wins, `fallback` (the primary key) otherwise.
/// Any other database error is passed on.
pub(crate) fn taken(err: DbErr, rules: &[(&str, &'static str, &str)], fallback: (&'static str, &str)) -> StateError {
    let Some(target) = unique_violation_target(&err) else { return StateError::Db(err) };
    let (id, message) =
        rules.iter().find(|(column, _, _)| target.contains(column)).map_or(fallback, |&(_, id, message)| (id, message));
    StateError::Domain(already_exists(id, message).with_source(err))
}

/// A text filter: `column` compared with `needle` by `method`; the ignore-case methods compare the
/// lower-cased `lower_column` with the lower-cased needle (lower-cased in Rust, exactly like the writers
/// fill the `*_lower` columns, so both sides agree beyond ASCII).
fn text_filter(backend: Backend, column: Expr, lower_column: Expr, needle: &str, method: TextMethod) -> Expr {
    let (column, needle, position) = match method {
        TextMethod::Equals => return column.eq(needle),
        TextMethod::EqualsIgnoreCase => return lower_column.eq(needle.to_lowercase()),
        TextMethod::StartsWith => (column, needle.to_owned(), TextPosition::Start),
        TextMethod::Contains => (column, needle.to_owned(), TextPosition::Anywhere),
        TextMethod::EndsWith => (column, needle.to_owned(), TextPosition::End),
        TextMethod::StartsWithIgnoreCase => (lower_column, needle.to_lowercase(), TextPosition::Start),
        TextMethod::ContainsIgnoreCase => (lower_column, needle.to_lowercase(), TextPosition::Anywhere),
        TextMethod::EndsWithIgnoreCase => (lower_column, needle.to_lowercase(), TextPosition::End),
    };
    text_match(backend, column, &needle, position)
}

/// `LOWER(column)`, for columns without a stored lower-cased twin (ASCII-only on SQLite: used for domains).
fn sql_lower(column: Expr) -> Expr {
    Func::lower(column).into()
}

/// A condition no row satisfies (a filter on an empty id list).
pub(crate) fn nothing() -> Expr {
    Expr::val(1).eq(0)
}

/// Runs `select` for one page and counts all its matches.
pub(crate) async fn page<E>(store: &Store, select: Select<E>, q: &ListQuery) -> Result<(Vec<E::Model>, u64), Error>
where
    E: EntityTrait,
    E::Model: Sync,
{
    let db = store.reader();
    let total = select.clone().count(db).await.map_err(crate::error::db_error)?;
    let limit = match u64::from(q.limit) {
        0 => DEFAULT_LIMIT,
        n => Ord::min(n, MAX_LIMIT),
    };
    let rows = select.offset(q.offset).limit(limit).all(db).await.map_err(crate::error::db_error)?;
    Ok((rows, total))
}
