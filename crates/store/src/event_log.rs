//! The event log and the write helper: new state and new events, in one transaction, in sequence.

use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use flowgate_core::Error;
use flowgate_core::event::{AggregateRef, Details, NewEvent, StoredEvent, WriteIntent};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, TransactionTrait,
};

use crate::backend::{self, Backend, DbErrorClass, classify};
use crate::error::{StoreError, db_error};
use crate::group_commit::{GroupCommit, Member};
use crate::planned::{self, PlannedStatement, RowInsert};
use crate::store::Store;

mod entity {
    //! One row of the `events` table.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub position: i64,
        pub aggregate_type: String,
        pub aggregate_id: String,
        pub sequence: i64,
        pub event_type: String,
        #[sea_orm(column_type = "JsonBinary")]
        pub payload: Json,
        pub resource_owner: String,
        pub creator: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Why the state closure of [`Store::write`] failed; `?` converts both core and database errors into it.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A rule of the use case refused the change; returned to the caller unchanged.
    #[error(transparent)]
    Domain(#[from] Error),
    /// A statement failed; mapped like every other database error (and retried when it was a collision).
    #[error(transparent)]
    Db(#[from] DbErr),
    /// The state row no longer records the sequence the write was based on (see
    /// [`Store::write_returning_known`]): the write is tried again the ordinary way.
    #[error("the state row changed since it was read")]
    Stale,
}

impl StateError {
    /// The core error this stands for, where no write can try again (outside [`Store::write`]).
    pub fn into_error(self) -> Error {
        match self {
            StateError::Domain(err) => err,
            StateError::Db(err) => db_error(err),
            StateError::Stale => out_of_step(),
        }
    }
}

/// A state row whose sequence disagrees with its aggregate's events: a bug, never a bad request.
fn out_of_step() -> Error {
    Error::internal("STORE-state-out-of-step", "a state row does not match its aggregate's events")
}

/// What the state closure of [`Store::write`] returns: a boxed future borrowing the transaction.
pub type StateFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 't>>;

/// Facts about the write in progress, handed to the state closure so new rows can carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteContext {
    /// Sequence of the aggregate's last event before this write (0 for a new aggregate).
    pub previous_sequence: u64,
    /// Sequence of the last event this write appends (what `details.sequence` will say).
    pub sequence: u64,
    /// Time stamped on this write's events (UTC, microsecond precision; `details.change_date`).
    pub created_at: DateTime<Utc>,
    /// Time of the aggregate's first event (`created_at` itself for a new aggregate).
    pub creation_date: DateTime<Utc>,
    /// Which try this is, starting at 1; the closure runs again after a collision.
    pub attempt: u32,
}

/// Boxes an async block as a [`StateFuture`], fixing its error type so `?` works without annotations.
pub fn state<'t, T, F>(future: F) -> StateFuture<'t, T>
where
    F: Future<Output = Result<T, StateError>> + Send + 't,
{
    Box::pin(future)
}

/// The state rows of a new aggregate as statements built in full before anything runs, for
/// [`Store::write_new_planned`].
pub struct Planned<T> {
    /// What the write answers once committed.
    pub value: T,
    /// Statements writing the aggregate's state, after its events go in; nothing of what they do may be
    /// needed by `value`. Alone they run in order; in a batch its rows go in before its other statements
    /// (see [`crate::planned`]), so those may rely on the rows but not the other way round.
    pub statements: Vec<PlannedStatement>,
    /// What a failure of one of `statements` means (typically a unique violation becomes a domain error).
    pub on_error: fn(DbErr) -> StateError,
}

/// The outcome of one try of a write.
enum Attempt<T> {
    Done(T, Details),
    /// Another writer got in the way; the whole write may be tried again.
    Retry(DbErr),
    /// The first try's shortcut (a new aggregate, or ends known from the state row) met a log that says
    /// otherwise: try again, at once, the ordinary way, which reads the last sequence and reports the
    /// mismatch. Not counted as a try.
    Reread,
    Fail(Error),
}

/// How a try of a write learns the aggregate's last sequence.
#[derive(Debug, Clone)]
enum Ends {
    /// Expects a new aggregate: none (see [`write_new`]).
    New,
    /// From the caller: the details it read from the aggregate's state row (see [`write_known`]).
    Known(Details),
    /// Reads them from the log (see [`write_in`]).
    Read,
}

/// Where in a try a database error happened; the same error means different things at each step.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Begin,
    Read,
    State,
    Append,
    Commit,
}

impl Store {
    /// Appends `intent.events` and writes the new state with `state`, atomically; see [`Store::write_returning`].
    pub async fn write<F>(&self, intent: WriteIntent, state: F) -> Result<Details, Error>
    where
        F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, ()> + Send,
    {
        self.write_returning(intent, state).await.map(|((), details)| details)
    }

    /// Appends `intent.events` without touching any state table.
    pub async fn append(&self, intent: WriteIntent) -> Result<Details, Error> {
        self.write(intent, |_, _| Box::pin(async { Ok(()) })).await
    }

    /// In one transaction: reads the aggregate's last sequence, checks `intent.expected_sequence`, runs
    /// `state`, appends the events with the next sequences and commits; answers what `state` returned and
    /// the aggregate's new [`Details`].
    ///
    /// A sequence other than the expected one fails with `Aborted`/`STORE-sequence-mismatch` and writes
    /// nothing, without retrying. Without an expected sequence, a collision with a concurrent writer rolls
    /// back and runs everything again (a few times, with jittered backoff) before failing with
    /// `Aborted`/`STORE-conflict`; a lock timeout or serialization failure is retried the same way in both
    /// modes, the next try's sequence check deciding whether the write may still go ahead;
    /// `state` must therefore only touch the database, never the outside world, and only through the
    /// transaction it is given: on SQLite that transaction holds the one writer connection, so calling back
    /// into [`Store::write`] or [`Store::writer`] from inside would wait for itself until the acquire timeout.
    /// An error from `state` rolls back and is returned as is (database errors mapped).
    pub async fn write_returning<T, F>(&self, intent: WriteIntent, state: F) -> Result<(T, Details), Error>
    where
        T: Send,
        F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, T> + Send,
    {
        // A write that expects a new aggregate first tries without reading its last sequence (see `write_new`).
        let ends = if intent.expected_sequence == Some(0) { Ends::New } else { Ends::Read };
        self.write_from(intent, ends, true, state).await
    }

    /// [`Store::write_returning`] for a write based on what the caller read from the aggregate's state row,
    /// which records the aggregate's details (last sequence, first and last change) with every write: the
    /// first try takes them from `read` instead of reading the log (one statement fewer on the single
    /// writer), when `intent.expected_sequence` is `read.sequence` or none (then `read` is only where the
    /// first try starts).
    ///
    /// `state` must change the state row only where it still records the sequence the write is based on
    /// ([`WriteContext::previous_sequence`]) and return [`StateError::Stale`] when it does not; the events
    /// then go in after that sequence, the unique (aggregate, sequence) key catching a log that moved on
    /// anyway. Either way nothing is kept and the write is tried again at once the ordinary way, which reads
    /// the log and reports the sequence mismatch (or writes, if the row had only been read early or no
    /// sequence was expected). Under the
    /// ordinary way `Stale` means the row disagrees with the log, and fails as an internal error.
    pub async fn write_returning_known<T, F>(
        &self,
        intent: WriteIntent,
        read: &Details,
        state: F,
    ) -> Result<(T, Details), Error>
    where
        T: Send,
        F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, T> + Send,
    {
        let ends = match intent.expected_sequence {
            Some(expected) if expected != read.sequence => Ends::Read,
            Some(_) | None => Ends::Known(read.clone()),
        };
        self.write_from(intent, ends, true, state).await
    }

    /// [`Store::write_returning`] for a new aggregate (`intent.expected_sequence` 0) whose state `plan` builds
    /// as statements from the [`WriteContext`] alone, for the connection's backend. Where the store batches
    /// writes (SQLite), the events and those statements are handed to the batch whole and run together with
    /// other such writes in one round trip (see [`crate::group_commit`]). On PostgreSQL a plan of rows only
    /// goes in with its events as one statement ([`crate::planned`]). Otherwise, and when that does not
    /// commit, they run as the state of an ordinary write, for which `plan` is called again; that write
    /// reports what went wrong. An intent that does not expect a new aggregate is simply written the
    /// ordinary way.
    pub async fn write_new_planned<T, P>(&self, intent: WriteIntent, plan: P) -> Result<(T, Details), Error>
    where
        T: Send + 'static,
        P: Fn(&WriteContext, DbBackend) -> Result<Planned<T>, Error> + Send + Sync,
    {
        validate(&intent)?;
        let backend = self.writer().get_database_backend();
        if intent.expected_sequence == Some(0)
            && let Some(group) = self.group_commit()
        {
            let context = new_context(&intent, 1);
            let Planned { value, statements, on_error: _ } = plan(&context, backend)?;
            let events = event_rows(&intent, 0, context.created_at)?.into_iter().map(RowInsert::from_model);
            if group.join().submit(events.map(PlannedStatement::from).chain(statements).collect()).await {
                return Ok((value, new_details(&intent, context)));
            }
        } else if intent.expected_sequence == Some(0) && self.backend() == Backend::Postgres {
            let context = new_context(&intent, 1);
            let Planned { value, statements, on_error: _ } = plan(&context, backend)?;
            let rows = statements.into_iter().map(|s| match s {
                PlannedStatement::Insert(row) => Some(row),
                PlannedStatement::Other(_) => None,
            });
            if let Some(rows) = rows.collect::<Option<Vec<_>>>() {
                let events = event_rows(&intent, 0, context.created_at)?.into_iter().map(RowInsert::from_model);
                if let Some(statement) = planned::insert_all_for_postgres(events.chain(rows).collect()) {
                    match self.writer().execute_raw(statement).await {
                        Ok(_) => return Ok((value, new_details(&intent, context))),
                        // Trying again would only wait for the pool a second time; answered as the ordinary
                        // write answers it.
                        Err(err) if classify(&err) == DbErrorClass::Unavailable => return Err(db_error(err)),
                        // Nothing of it was written; the ordinary write tells a taken id from a collision.
                        Err(err) => tracing::debug!(error = %err, "a new aggregate's single statement failed"),
                    }
                }
            }
        }
        let ends = if intent.expected_sequence == Some(0) { Ends::New } else { Ends::Read };
        self.write_from(intent, ends, false, |txn, context| {
            let planned = plan(&context, backend);
            state(async move {
                let Planned { value, statements, on_error } = planned?;
                for statement in statements {
                    txn.execute_raw(statement.into_statement(backend)?).await.map_err(on_error)?;
                }
                Ok(value)
            })
        })
        .await
    }

    /// Writes `intent` starting from `ends`; the first try shares a batch's transaction when `batch` is set
    /// and the store batches writes.
    async fn write_from<T, F>(
        &self,
        intent: WriteIntent,
        mut ends: Ends,
        batch: bool,
        mut state: F,
    ) -> Result<(T, Details), Error>
    where
        T: Send,
        F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, T> + Send,
    {
        validate(&intent)?;
        // The first try shares a transaction with concurrent writes where the store batches them.
        let mut member = if batch { self.group_commit().map(GroupCommit::join) } else { None };
        let attempts = self.write_attempts();
        let mut attempt = 1;
        loop {
            let outcome = match member.take() {
                Some(member) => match try_in_batch(member, self.backend(), &intent, &mut state, ends.clone()).await {
                    Some(outcome) => outcome,
                    None => continue,
                },
                None => self.try_write(&intent, &mut state, attempt, ends.clone()).await,
            };
            match outcome {
                Attempt::Done(value, details) => return Ok((value, details)),
                Attempt::Fail(err) => return Err(err),
                Attempt::Reread => ends = Ends::Read,
                Attempt::Retry(cause) if attempt >= attempts => {
                    tracing::warn!(
                        aggregate_type = intent.aggregate.aggregate_type,
                        aggregate_id = intent.aggregate.aggregate_id,
                        attempts,
                        error = %cause,
                        "write gave up after repeated conflicts"
                    );
                    return Err(StoreError::Conflict { attempts, source: cause }.into());
                }
                Attempt::Retry(cause) => {
                    tracing::debug!(
                        aggregate_type = intent.aggregate.aggregate_type,
                        aggregate_id = intent.aggregate.aggregate_id,
                        attempt,
                        error = %cause,
                        "write collided with a concurrent writer; retrying"
                    );
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn try_write<T, F>(&self, intent: &WriteIntent, state: &mut F, attempt: u32, ends: Ends) -> Attempt<T>
    where
        T: Send,
        F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, T> + Send,
    {
        let options = backend::write_transaction_options(self.backend());
        let txn = match self.writer().begin_with_options(options).await {
            Ok(txn) => txn,
            Err(err) => return on_db_error(err, Step::Begin),
        };
        let written = write_try(&txn, self.backend(), intent, state, attempt, ends).await;
        match written {
            Ok((value, details)) => match txn.commit().await {
                Ok(()) => Attempt::Done(value, details),
                Err(err) => on_db_error(err, Step::Commit),
            },
            Err(outcome) => {
                if let Err(err) = txn.rollback().await {
                    // The connection is probably gone; the server rolls back on its own then.
                    tracing::debug!(error = %err, "rollback of a failed write failed");
                }
                outcome
            }
        }
    }

    /// Every event of `aggregate`, oldest first.
    pub async fn events(&self, aggregate: &AggregateRef) -> Result<Vec<StoredEvent>, Error> {
        let rows = of_aggregate(aggregate)
            .order_by_asc(entity::Column::Sequence)
            .all(self.reader())
            .await
            .map_err(db_error)?;
        rows.into_iter().map(stored_event).collect()
    }

    /// Change metadata of `aggregate` from its first and last events; `None` when it has no events.
    pub async fn details(&self, aggregate: &AggregateRef) -> Result<Option<Details>, Error> {
        let Some((sequence, change_date, creation_date, resource_owner)) = ends_of(aggregate)
            .column(entity::Column::ResourceOwner)
            .into_tuple::<(i64, DateTime<Utc>, DateTime<Utc>, String)>()
            .one(self.reader())
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        Ok(Some(Details { sequence: to_sequence(sequence)?, creation_date, change_date, resource_owner }))
    }
}

/// The first try of a write inside a shared transaction (see [`crate::group_commit`]). Answers the outcome
/// when it is the write's own: committed, or failed while nothing of other writes was in the transaction
/// (exactly what a lone try would have met). `None` when the write must be tried again alone: the batch
/// could not take it, did not commit, or it failed after other writes, which may have caused the failure
/// and are rolled back with it.
async fn try_in_batch<T, F>(
    mut member: Member,
    backend: Backend,
    intent: &WriteIntent,
    state: &mut F,
    ends: Ends,
) -> Option<Attempt<T>>
where
    F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, T>,
{
    let Some(turn) = member.turn().await else {
        member.leave();
        return None;
    };
    let first = turn.first();
    let written = write_try(turn.txn(), backend, intent, state, 1, ends).await;
    member.finish(turn, written.is_ok());
    match written {
        Ok((value, details)) => member.committed().await.then_some(Attempt::Done(value, details)),
        Err(outcome) => first.then_some(outcome),
    }
}

/// One try inside an open transaction, finding the aggregate's ends as `ends` says; any `Err` means the
/// transaction must be rolled back.
async fn write_try<T, F>(
    txn: &DatabaseTransaction,
    backend: Backend,
    intent: &WriteIntent,
    state: &mut F,
    attempt: u32,
    ends: Ends,
) -> Result<(T, Details), Attempt<T>>
where
    F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, T>,
{
    match ends {
        Ends::New => write_new(txn, intent, state, attempt).await,
        Ends::Known(read) => write_known(txn, intent, &read, state, attempt).await,
        Ends::Read => write_in(txn, backend, intent, state, attempt).await,
    }
}

/// Runs `state`, mapping its failure to what the try does next (`Stale` only where the ends were known).
async fn run_state<T, F>(
    txn: &DatabaseTransaction,
    state: &mut F,
    context: WriteContext,
    known: bool,
) -> Result<T, Attempt<T>>
where
    F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, T>,
{
    match state(txn, context).await {
        Ok(value) => Ok(value),
        Err(StateError::Domain(err)) => Err(Attempt::Fail(err)),
        Err(StateError::Db(err)) => Err(on_db_error(err, Step::State)),
        Err(StateError::Stale) if known => Err(Attempt::Reread),
        Err(StateError::Stale) => Err(Attempt::Fail(out_of_step())),
    }
}

/// One try that reads the aggregate's ends from the log.
async fn write_in<T, F>(
    txn: &DatabaseTransaction,
    backend: Backend,
    intent: &WriteIntent,
    state: &mut F,
    attempt: u32,
) -> Result<(T, Details), Attempt<T>>
where
    F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, T>,
{
    let aggregate = &intent.aggregate;
    backend::lock_aggregate(txn, backend, aggregate).await.map_err(|e| on_db_error(e, Step::Read))?;
    let ends = ends_of(aggregate)
        .into_tuple::<(i64, DateTime<Utc>, DateTime<Utc>)>()
        .one(txn)
        .await
        .map_err(|e| on_db_error(e, Step::Read))?;
    let last = ends.map(|(sequence, at, _)| (sequence, at));
    let previous_sequence = match last {
        Some((sequence, _)) => to_sequence(sequence).map_err(Attempt::Fail)?,
        None => 0,
    };
    if let Some(expected) = intent.expected_sequence
        && expected != previous_sequence
    {
        return Err(Attempt::Fail(StoreError::SequenceMismatch { expected, actual: previous_sequence }.into()));
    }

    // Microseconds: what PostgreSQL keeps, so the answer equals what is read back later. Never before the
    // aggregate's last event, so change dates never go backwards when the clock does.
    let now = Utc::now().trunc_subsecs(6);
    let created_at = last.map_or(now, |(_, at)| now.max(at));
    let creation_date = ends.map_or(created_at, |(_, _, first)| first);
    let count = u64::try_from(intent.events.len()).unwrap_or(u64::MAX);
    let sequence = previous_sequence.saturating_add(count);
    let context = WriteContext { previous_sequence, sequence, created_at, creation_date, attempt };

    let value = run_state(txn, state, context, false).await?;

    // A clash here means a concurrent writer took the sequence: the whole write is tried again.
    append_after(txn, intent, previous_sequence, created_at, Attempt::Retry).await?;

    let details =
        Details { sequence, creation_date, change_date: created_at, resource_owner: intent.resource_owner.clone() };
    Ok((value, details))
}

/// One try of a write that expects a new aggregate (expected sequence 0), in two statements fewer than
/// [`write_in`]: the events go in first, as sequences 1…n, without reading the last sequence or taking the
/// aggregate lock. The unique key on (aggregate, sequence) is what decides: if the aggregate has events
/// (or a concurrent writer just created it) the insert fails before `state` ran, and the write is tried
/// again the ordinary way, which reports the sequence mismatch (or, when the other writer rolled back,
/// succeeds). Nothing outside the transaction can tell in which order its rows were written.
async fn write_new<T, F>(
    txn: &DatabaseTransaction,
    intent: &WriteIntent,
    state: &mut F,
    attempt: u32,
) -> Result<(T, Details), Attempt<T>>
where
    F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, T>,
{
    let context = new_context(intent, attempt);
    append_after(txn, intent, 0, context.created_at, |_| Attempt::Reread).await?;
    let value = run_state(txn, state, context, false).await?;
    Ok((value, new_details(intent, context)))
}

/// The context of a write that creates its aggregate: its events are the first, stamped now (in
/// microseconds, what PostgreSQL keeps).
fn new_context(intent: &WriteIntent, attempt: u32) -> WriteContext {
    let created_at = Utc::now().trunc_subsecs(6);
    let sequence = u64::try_from(intent.events.len()).unwrap_or(u64::MAX);
    WriteContext { previous_sequence: 0, sequence, created_at, creation_date: created_at, attempt }
}

/// The details of a new aggregate after the write of `context`.
fn new_details(intent: &WriteIntent, context: WriteContext) -> Details {
    Details {
        sequence: context.sequence,
        creation_date: context.created_at,
        change_date: context.created_at,
        resource_owner: intent.resource_owner.clone(),
    }
}

/// One try of a write whose caller `read` the aggregate's details from its state row, in one statement
/// fewer than [`write_in`] (no read of the ends; on PostgreSQL no aggregate lock either). `state` runs
/// first and changes the row only where it still records `read.sequence`, which orders concurrent writers
/// of the aggregate (PostgreSQL's row lock makes the later one see the earlier one's sequence); then the
/// events go in after `read.sequence`, the unique (aggregate, sequence) key catching a log that moved on
/// without the row. Either miss tries again the ordinary way.
async fn write_known<T, F>(
    txn: &DatabaseTransaction,
    intent: &WriteIntent,
    read: &Details,
    state: &mut F,
    attempt: u32,
) -> Result<(T, Details), Attempt<T>>
where
    F: for<'t> FnMut(&'t DatabaseTransaction, WriteContext) -> StateFuture<'t, T>,
{
    // As in `write_in`: microseconds, and never before the last event.
    let created_at = Utc::now().trunc_subsecs(6).max(read.change_date);
    let count = u64::try_from(intent.events.len()).unwrap_or(u64::MAX);
    let sequence = read.sequence.saturating_add(count);
    let context = WriteContext {
        previous_sequence: read.sequence,
        sequence,
        created_at,
        creation_date: read.creation_date,
        attempt,
    };
    let value = run_state(txn, state, context, true).await?;
    append_after(txn, intent, read.sequence, created_at, |_| Attempt::Reread).await?;
    let details = Details {
        sequence,
        creation_date: read.creation_date,
        change_date: created_at,
        resource_owner: intent.resource_owner.clone(),
    };
    Ok((value, details))
}

/// Inserts `intent.events` as the sequences after `previous`, all stamped `created_at`; a unique violation
/// (the sequence is taken) becomes `on_clash(err)`, any other failure what [`on_db_error`] makes of it.
async fn append_after<T>(
    txn: &DatabaseTransaction,
    intent: &WriteIntent,
    previous: u64,
    created_at: DateTime<Utc>,
    on_clash: fn(DbErr) -> Attempt<T>,
) -> Result<(), Attempt<T>> {
    let rows = event_rows(intent, previous, created_at).map_err(Attempt::Fail)?;
    match entity::Entity::insert_many(rows).exec_without_returning(txn).await {
        Ok(_) => Ok(()),
        Err(err) if classify(&err) == DbErrorClass::UniqueViolation => Err(on_clash(err)),
        Err(err) => Err(on_db_error(err, Step::Append)),
    }
}

/// Sequence and time of events appended by [`append_in`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Appended {
    /// Sequence of the last appended event.
    pub(crate) sequence: u64,
    /// Time stamped on the appended events.
    pub(crate) created_at: DateTime<Utc>,
}

/// Appends `events` to a second aggregate from inside the state closure of a [`Store::write`], for the
/// rare change that spans aggregates (bootstrap, cascading deletes), so everything commits or nothing.
///
/// The aggregate is locked like the primary one (a lock-order deadlock between two such writes is a
/// transient error and retried with the whole write); events get `created_at`, or the aggregate's last
/// time when that is later, so its change dates never go backwards.
pub(crate) async fn append_in(
    txn: &DatabaseTransaction,
    backend: Backend,
    aggregate: &AggregateRef,
    resource_owner: &str,
    creator: &str,
    events: &[NewEvent],
    created_at: DateTime<Utc>,
) -> Result<Appended, StateError> {
    backend::lock_aggregate(txn, backend, aggregate).await?;
    let last = of_aggregate(aggregate)
        .select_only()
        .columns([entity::Column::Sequence, entity::Column::CreatedAt])
        .order_by_desc(entity::Column::Sequence)
        .into_tuple::<(i64, DateTime<Utc>)>()
        .one(txn)
        .await?;
    let previous = match last {
        Some((sequence, _)) => to_sequence(sequence)?,
        None => 0,
    };
    let created_at = last.map_or(created_at, |(_, at)| created_at.max(at));
    let intent = WriteIntent {
        aggregate: aggregate.clone(),
        resource_owner: resource_owner.to_owned(),
        creator: creator.to_owned(),
        expected_sequence: None,
        events: Vec::new(),
    };
    let rows = events
        .iter()
        .zip(previous + 1..)
        .map(|(event, sequence)| event_row(&intent, event, sequence, created_at))
        .collect::<Result<Vec<_>, Error>>()?;
    let count = u64::try_from(rows.len()).unwrap_or(u64::MAX);
    if !rows.is_empty() {
        entity::Entity::insert_many(rows).exec_without_returning(txn).await?;
    }
    Ok(Appended { sequence: previous.saturating_add(count), created_at })
}

/// Decides whether a failed step is worth another try.
fn on_db_error<T>(err: DbErr, step: Step) -> Attempt<T> {
    match (classify(&err), step) {
        // Busy, deadlock, serialization failure: nothing was written, the next try sees the winner's result.
        (DbErrorClass::Transient, _) => Attempt::Retry(err),
        // Another writer took the sequence first. The next try reads it and either appends after it or,
        // when a sequence was expected, reports the mismatch.
        (DbErrorClass::UniqueViolation, Step::Append) => Attempt::Retry(err),
        (DbErrorClass::UniqueViolation | DbErrorClass::Unavailable | DbErrorClass::Other, _) => {
            Attempt::Fail(db_error(err))
        }
    }
}

fn validate(intent: &WriteIntent) -> Result<(), Error> {
    // These are bugs in the calling use case, not bad requests: answered as internal errors.
    let problem = if intent.events.is_empty() {
        "a write must append at least one event"
    } else if intent.aggregate.aggregate_type.is_empty() || intent.aggregate.aggregate_id.is_empty() {
        "a write needs an aggregate type and id"
    } else {
        return Ok(());
    };
    Err(Error::internal("STORE-invalid-write", problem))
}

fn of_aggregate(aggregate: &AggregateRef) -> sea_orm::Select<entity::Entity> {
    entity::Entity::find()
        .filter(entity::Column::AggregateType.eq(aggregate.aggregate_type.as_str()))
        .filter(entity::Column::AggregateId.eq(aggregate.aggregate_id.as_str()))
}

/// The aggregate's last event's sequence and time, then its first event's time, as one statement (on SQLite
/// every statement is a round trip to the driver's thread, which costs more than either index lookup);
/// callers may select more columns of the last event after these three.
fn ends_of(aggregate: &AggregateRef) -> sea_orm::Select<entity::Entity> {
    let first_created_at = of_aggregate(aggregate)
        .select_only()
        .column(entity::Column::CreatedAt)
        .order_by_asc(entity::Column::Sequence)
        .limit(1)
        .into_query();
    of_aggregate(aggregate)
        .select_only()
        .columns([entity::Column::Sequence, entity::Column::CreatedAt])
        .expr(Expr::SubQuery(None, Box::new(first_created_at.into())))
        .order_by_desc(entity::Column::Sequence)
}

/// The rows of `intent.events` as the sequences after `previous`, all stamped `created_at`.
fn event_rows(
    intent: &WriteIntent,
    previous: u64,
    created_at: DateTime<Utc>,
) -> Result<Vec<entity::ActiveModel>, Error> {
    intent
        .events
        .iter()
        .zip(previous + 1..)
        .map(|(event, sequence)| event_row(intent, event, sequence, created_at))
        .collect()
}

fn event_row(
    intent: &WriteIntent,
    event: &NewEvent,
    sequence: u64,
    created_at: DateTime<Utc>,
) -> Result<entity::ActiveModel, Error> {
    let sequence =
        i64::try_from(sequence).map_err(|_| Error::internal("STORE-sequence-overflow", "sequence overflow"))?;
    Ok(entity::ActiveModel {
        position: ActiveValue::NotSet,
        aggregate_type: ActiveValue::Set(intent.aggregate.aggregate_type.clone()),
        aggregate_id: ActiveValue::Set(intent.aggregate.aggregate_id.clone()),
        sequence: ActiveValue::Set(sequence),
        event_type: ActiveValue::Set(event.event_type.clone()),
        payload: ActiveValue::Set(event.payload.clone()),
        resource_owner: ActiveValue::Set(intent.resource_owner.clone()),
        creator: ActiveValue::Set(intent.creator.clone()),
        created_at: ActiveValue::Set(created_at),
    })
}

fn stored_event(row: entity::Model) -> Result<StoredEvent, Error> {
    Ok(StoredEvent {
        aggregate: AggregateRef { aggregate_type: row.aggregate_type, aggregate_id: row.aggregate_id },
        sequence: to_sequence(row.sequence)?,
        event_type: row.event_type,
        payload: row.payload,
        resource_owner: row.resource_owner,
        creator: row.creator,
        created_at: row.created_at,
    })
}

fn to_sequence(stored: i64) -> Result<u64, Error> {
    // The table's CHECK keeps sequences positive; anything else is a corrupted row.
    u64::try_from(stored).map_err(|_| Error::internal("STORE-corrupt-sequence", format!("negative sequence {stored}")))
}

/// Jittered exponential backoff before try `attempt + 1`: 2–4 ms, 4–8 ms, … capped at 64–128 ms.
fn backoff(attempt: u32) -> Duration {
    let ceiling_us = 4_000u64 << attempt.saturating_sub(1).min(5);
    // A fresh RandomState is randomly keyed: enough entropy to keep colliding writers apart, no RNG needed.
    let jitter = std::collections::hash_map::RandomState::new().hash_one(attempt) % (ceiling_us / 2);
    Duration::from_micros(ceiling_us / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use flowgate_core::ErrorKind;

    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        for attempt in 1..10 {
            let delay = backoff(attempt);
            let ceiling = Duration::from_micros(4_000u64 << (attempt - 1).min(5));
            assert!(delay >= ceiling / 2 && delay < ceiling, "{attempt}: {delay:?}");
        }
    }

    #[test]
    fn empty_write_is_refused() {
        let intent = WriteIntent {
            aggregate: AggregateRef { aggregate_type: "user".into(), aggregate_id: "1".into() },
            resource_owner: "org".into(),
            creator: "me".into(),
            expected_sequence: None,
            events: Vec::new(),
        };
        let err = validate(&intent).err().map(|e| (e.kind(), e.id().to_owned()));
        assert_eq!(err, Some((ErrorKind::Internal, "STORE-invalid-write".to_owned())));
    }
}
