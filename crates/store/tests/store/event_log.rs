//! The store against real databases: every scenario runs on SQLite (a temp dir) and, when
//! `FLOWGATE_TEST_DATABASE_URL` names a PostgreSQL server, on PostgreSQL too (a fresh database per test).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flowgate_core::event::{AggregateRef, Details, NewEvent, WriteIntent};
use flowgate_core::system::StoreStatus;
use flowgate_core::{Error, ErrorKind};
use flowgate_store::sea_orm::sea_query::{Alias, ColumnDef, Expr, ExprTrait, Query, Table};
use flowgate_store::sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, SqlErr, Statement};
use flowgate_store::{
    Backend, Planned, PlannedStatement, RowInsert, StateError, Store, StoreConfig, StoreError, WriteContext, state,
    testing,
};
use serde_json::json;

const LATEST_MIGRATION: &str = "m20261125_000010_session_sparse_indexes";

fn config(url: Option<String>, data_dir: std::path::PathBuf) -> StoreConfig {
    StoreConfig {
        url,
        data_dir,
        max_connections: 4,
        // Short, so that the scenarios which provoke lock waits on SQLite stay quick.
        busy_timeout: Duration::from_millis(100),
        write_attempts: 5,
        ..StoreConfig::default()
    }
}

use crate::common::scenarios;

scenarios!(
    config = super::config, migrate = false;
    migrate_is_idempotent,
    append_numbers_events_and_answers_details,
    expected_sequence_mismatch_writes_nothing,
    state_error_rolls_everything_back,
    concurrent_writers_with_same_expected_sequence,
    concurrent_writers_without_expected_sequence,
    concurrent_read_modify_write_loses_nothing,
    collision_is_retried_without_gaps,
    persistent_collision_gives_up,
    concurrent_writes_keep_their_own_outcomes,
    known_ends_skip_the_read_and_fall_back_when_stale,
    planned_writes_share_a_batch_and_keep_their_own_outcomes,
    planned_rows_commit_whole_or_not_at_all,
    combined_inserts_write_exactly_their_rows,
    the_wal_is_copied_back_in_the_background,
);

fn aggregate(id: &str) -> AggregateRef {
    AggregateRef { aggregate_type: "counter".into(), aggregate_id: id.into() }
}

fn intent(id: &str, expected_sequence: Option<u64>, event_types: &[&str]) -> WriteIntent {
    WriteIntent {
        aggregate: aggregate(id),
        resource_owner: "org-1".into(),
        creator: "user-1".into(),
        expected_sequence,
        events: event_types
            .iter()
            .map(|t| NewEvent { event_type: (*t).to_owned(), payload: json!({ "type": t, "n": [1, 2] }) })
            .collect(),
    }
}

async fn migrated(store: &Store) {
    store.migrate().await.expect("migrate");
}

fn assert_kind(result: Result<impl std::fmt::Debug, Error>, kind: ErrorKind, id: &str) -> Error {
    let err = result.expect_err("the write must fail");
    assert_eq!((err.kind(), err.id()), (kind, id), "{err}");
    err
}

async fn sequences(store: &Store, id: &str) -> Vec<u64> {
    store.events(&aggregate(id)).await.expect("events").iter().map(|e| e.sequence).collect()
}

/// `CREATE TABLE counters (id PK, value, sequence)`, a stand-in for a state table.
async fn create_counters(store: &Store) {
    let table = Table::create()
        .table(Alias::new("counters"))
        .col(ColumnDef::new(Alias::new("id")).text().not_null().primary_key())
        .col(ColumnDef::new(Alias::new("value")).big_integer().not_null())
        .col(ColumnDef::new(Alias::new("sequence")).big_integer().not_null())
        .to_owned();
    store.writer().execute(&table).await.expect("create the counters table");
}

async fn read_counter<C: ConnectionTrait>(db: &C, id: &str) -> Result<Option<(i64, i64)>, DbErr> {
    let select = Query::select()
        .columns([Alias::new("value"), Alias::new("sequence")])
        .from(Alias::new("counters"))
        .and_where(Expr::col(Alias::new("id")).eq(id))
        .to_owned();
    match db.query_one(&select).await? {
        Some(row) => Ok(Some((row.try_get("", "value")?, row.try_get("", "sequence")?))),
        None => Ok(None),
    }
}

async fn insert_counter(txn: &DatabaseTransaction, id: &str, value: i64, sequence: u64) -> Result<(), DbErr> {
    let insert = Query::insert()
        .into_table(Alias::new("counters"))
        .columns([Alias::new("id"), Alias::new("value"), Alias::new("sequence")])
        .values([id.into(), value.into(), i64::try_from(sequence).expect("small").into()])
        .map_err(|e| DbErr::Custom(e.to_string()))?
        .to_owned();
    txn.execute(&insert).await.map(drop)
}

/// The read-modify-write every writer of the counter scenario does.
async fn increment(txn: &DatabaseTransaction, id: &str, ctx: WriteContext) -> Result<(), StateError> {
    let sequence = i64::try_from(ctx.sequence).expect("small");
    match read_counter(txn, id).await? {
        None => insert_counter(txn, id, 1, ctx.sequence).await?,
        Some((value, _)) => {
            let update = Query::update()
                .table(Alias::new("counters"))
                .values([(Alias::new("value"), (value + 1).into()), (Alias::new("sequence"), sequence.into())])
                .and_where(Expr::col(Alias::new("id")).eq(id))
                .to_owned();
            txn.execute(&update).await?;
        }
    }
    Ok(())
}

/// A counter update based on the row as read: only where the row still has the sequence the write is based on.
async fn increment_known(txn: &DatabaseTransaction, id: &str, ctx: WriteContext) -> Result<(), StateError> {
    let small = |n: u64| i64::try_from(n).expect("small");
    let update = Query::update()
        .table(Alias::new("counters"))
        .values([
            (Alias::new("value"), Expr::col(Alias::new("value")).add(1)),
            (Alias::new("sequence"), small(ctx.sequence).into()),
        ])
        .and_where(Expr::col(Alias::new("id")).eq(id))
        .and_where(Expr::col(Alias::new("sequence")).eq(small(ctx.previous_sequence)))
        .to_owned();
    match txn.execute(&update).await?.rows_affected() {
        0 => Err(StateError::Stale),
        _ => Ok(()),
    }
}

/// Writes "k" based on `known`, expecting `expected`.
async fn write_known(store: &Store, expected: u64, read: &Details) -> Result<Details, Error> {
    let intent = intent("k", Some(expected), &["counter.incremented"]);
    let written = store.write_returning_known(intent, read, |txn, ctx| state(increment_known(txn, "k", ctx)));
    written.await.map(|((), details)| details)
}

async fn known_ends_skip_the_read_and_fall_back_when_stale(store: &Store) {
    migrated(store).await;
    create_counters(store).await;
    let first = store
        .write(intent("k", Some(0), &["counter.added"]), |txn, ctx| {
            state(async move { Ok(insert_counter(txn, "k", 1, ctx.sequence).await?) })
        })
        .await
        .expect("create");
    let known = first.clone();

    // Ends as the row recorded them: written after them, dated from the first event.
    let second = write_known(store, 1, &known).await.expect("known ends");
    assert_eq!((second.sequence, second.creation_date), (2, first.creation_date));
    assert!(second.change_date >= first.change_date);
    assert_eq!(read_counter(store.reader(), "k").await.expect("read"), Some((2, 2)));

    // The row moved on since it was read: the ordinary way reports the mismatch.
    assert_kind(write_known(store, 1, &known).await, ErrorKind::Aborted, "STORE-sequence-mismatch");
    assert_eq!(read_counter(store.reader(), "k").await.expect("read"), Some((2, 2)));

    // The log moved on without the row: the events' key catches it, and the row's update is rolled back.
    store.append(intent("k", None, &["counter.noted"])).await.expect("event without state");
    let lagging = Details { creation_date: first.creation_date, ..second.clone() };
    assert_kind(write_known(store, 2, &lagging).await, ErrorKind::Aborted, "STORE-sequence-mismatch");
    assert_eq!(read_counter(store.reader(), "k").await.expect("read"), Some((2, 2)));

    // Read the ordinary way (known ends other than the expected sequence), a row out of step with the log is
    // a bug, not a conflict to retry.
    assert_kind(write_known(store, 3, &lagging).await, ErrorKind::Internal, "STORE-state-out-of-step");
    assert_eq!(sequences(store, "k").await, [1, 2, 3]);
    assert_eq!(read_counter(store.reader(), "k").await.expect("read"), Some((2, 2)));
}

async fn migrate_is_idempotent(store: &Store) {
    assert!(matches!(store.schema_version().await, Err(StoreError::NotMigrated)));
    let status: &dyn StoreStatus = store;
    let err = status.schema_version().await.expect_err("nothing applied yet");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        store.pending_migrations().await.expect("pending"),
        [
            "m20261124_000001_event_log",
            "m20261124_000002_identity",
            "m20261124_000003_sessions",
            "m20261124_000004_flows",
            "m20261124_000005_idps",
            "m20261124_000006_session_notify",
            "m20261125_000007_identity_notify",
            "m20261125_000008_credential_notify",
            "m20261125_000009_session_token_selector",
            LATEST_MIGRATION
        ]
    );

    migrated(store).await;
    assert_eq!(store.schema_version().await.expect("version"), LATEST_MIGRATION);
    migrated(store).await;
    assert_eq!(store.schema_version().await.expect("version"), LATEST_MIGRATION);
    assert!(store.pending_migrations().await.expect("pending").is_empty());

    assert_eq!(status.schema_version().await.expect("version"), LATEST_MIGRATION);
    status.ping().await.expect("ping");
    assert_eq!(status.backend(), store.backend());
    let stats = store.pool_stats();
    assert!(stats.connections >= 1 && stats.idle <= stats.connections && stats.connections <= stats.max, "{stats:?}");
    // Clones share the pools.
    let clone = store.clone();
    clone.ping().await.expect("ping through a clone");
}

/// On an SQLite file the writer leaves checkpoints to a background task and only steps in far behind it;
/// PostgreSQL has no WAL of ours to copy.
async fn the_wal_is_copied_back_in_the_background(store: &Store) {
    migrated(store).await;
    if store.backend() == Backend::Postgres {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.checkpointed_frames(), 0);
        return;
    }
    let statement = Statement::from_string(DbBackend::Sqlite, "PRAGMA wal_autocheckpoint");
    let row = store.writer().query_one_raw(statement).await.expect("pragma").expect("a row");
    assert_eq!(row.try_get_by_index::<i64>(0).expect("pages"), 10_000, "the writer's safety net");
    // The migrations wrote the WAL; the copy follows within a pause (100 ms while writes come in).
    let copied = eventually_more_than(store, 0).await;
    // Later writes are copied too, while the store lives.
    for name in ["w1", "w2", "w3"] {
        store.append(intent(name, Some(0), &["counter.added"])).await.expect("append");
    }
    eventually_more_than(store, copied).await;
}

/// Waits (at most ten seconds) until the background checkpoints copied more than `frames`; answers the count.
async fn eventually_more_than(store: &Store, frames: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let copied = store.checkpointed_frames();
        if copied > frames {
            return copied;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint beyond {frames} frames");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn append_numbers_events_and_answers_details(store: &Store) {
    migrated(store).await;
    assert_eq!(store.details(&aggregate("a")).await.expect("details"), None);
    assert!(store.events(&aggregate("a")).await.expect("events").is_empty());

    let first = store.append(intent("a", Some(0), &["counter.added", "counter.renamed"])).await.expect("first");
    assert_eq!(first.sequence, 2);
    assert_eq!(first.creation_date, first.change_date);
    assert_eq!(first.resource_owner, "org-1");

    let second = store.append(intent("a", None, &["counter.incremented"])).await.expect("second");
    assert_eq!(second.sequence, 3);
    let third =
        store.append(intent("a", Some(3), &["counter.incremented", "counter.incremented"])).await.expect("third");
    assert_eq!(third.sequence, 5);
    assert_eq!(third.creation_date, first.creation_date);
    assert!(third.change_date >= second.change_date && second.change_date >= first.change_date);

    let events = store.events(&aggregate("a")).await.expect("events");
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(events[1].event_type, "counter.renamed");
    assert_eq!(events[1].payload, json!({ "type": "counter.renamed", "n": [1, 2] }));
    assert_eq!((events[0].resource_owner.as_str(), events[0].creator.as_str()), ("org-1", "user-1"));
    assert_eq!(events[0].aggregate, aggregate("a"));
    assert_eq!(events[0].created_at, first.creation_date);
    assert_eq!(events[4].created_at, third.change_date);

    // What the write answered is exactly what is read back (microseconds survive both engines).
    assert_eq!(store.details(&aggregate("a")).await.expect("details"), Some(third));

    // Another aggregate has its own numbering.
    let other = store.append(intent("b", None, &["counter.added"])).await.expect("other");
    assert_eq!(other.sequence, 1);
    assert_eq!(sequences(store, "a").await, [1, 2, 3, 4, 5]);
}

async fn expected_sequence_mismatch_writes_nothing(store: &Store) {
    migrated(store).await;
    create_counters(store).await;
    store.append(intent("a", Some(0), &["counter.added"])).await.expect("create");

    for expected in [0, 2, 7] {
        let ran = Arc::new(AtomicU32::new(0));
        let seen = ran.clone();
        let result = store
            .write(intent("a", Some(expected), &["counter.incremented"]), move |txn, ctx| {
                let seen = seen.clone();
                state(async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    increment(txn, "a", ctx).await
                })
            })
            .await;
        let err = assert_kind(result, ErrorKind::Aborted, "STORE-sequence-mismatch");
        assert!(err.message().contains("concurrently") && err.message().contains("retry"), "{}", err.message());
        assert_eq!(ran.load(Ordering::SeqCst), 0, "no retry and no state change on a mismatch");
    }
    assert_eq!(sequences(store, "a").await, [1]);
    assert_eq!(read_counter(store.reader(), "a").await.expect("read"), None);
}

async fn state_error_rolls_everything_back(store: &Store) {
    migrated(store).await;
    create_counters(store).await;

    // A domain error after a state row was written: the row and the events disappear, the error comes back as is.
    let result = store
        .write(intent("a", None, &["counter.added"]), |txn, ctx| {
            state(async move {
                increment(txn, "a", ctx).await?;
                Err(Error::new(ErrorKind::FailedPrecondition, "COUNTER-frozen", "the counter is frozen").into())
            })
        })
        .await;
    let err = assert_kind(result, ErrorKind::FailedPrecondition, "COUNTER-frozen");
    assert_eq!(err.message(), "the counter is frozen");
    assert!(sequences(store, "a").await.is_empty());
    assert_eq!(read_counter(store.reader(), "a").await.expect("read"), None);

    // A database error from the closure: a duplicate key becomes AlreadyExists, not a retry.
    let attempts = Arc::new(AtomicU32::new(0));
    let counted = attempts.clone();
    let result = store
        .write(intent("a", None, &["counter.added"]), move |txn, ctx| {
            let counted = counted.clone();
            state(async move {
                counted.fetch_add(1, Ordering::SeqCst);
                insert_counter(txn, "a", 1, ctx.sequence).await?;
                insert_counter(txn, "a", 1, ctx.sequence).await?;
                Ok(())
            })
        })
        .await;
    let err = assert_kind(result, ErrorKind::AlreadyExists, "STORE-already-exists");
    assert!(!err.message().to_lowercase().contains("insert"), "no SQL in messages: {}", err.message());
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert!(sequences(store, "a").await.is_empty());
    assert_eq!(read_counter(store.reader(), "a").await.expect("read"), None);
    assert_eq!(store.details(&aggregate("a")).await.expect("details"), None);

    // A failing statement that is no constraint: internal, with a generic message and the cause kept.
    let result = store
        .write(intent("a", None, &["counter.added"]), |txn, _| {
            state(async move {
                txn.execute_unprepared("UPDATE no_such_table SET x = 1").await?;
                Ok(())
            })
        })
        .await;
    let err = assert_kind(result, ErrorKind::Internal, "STORE-internal");
    assert_eq!(err.message(), "internal error");
    assert!(err.to_string().contains("no_such_table"), "cause kept for logs: {err}");
    assert!(sequences(store, "a").await.is_empty());

    // The same write without the failure goes through afterwards.
    let details = store.write(intent("a", None, &["counter.added"]), |txn, ctx| state(increment(txn, "a", ctx))).await;
    assert_eq!(details.expect("write").sequence, 1);
    assert_eq!(read_counter(store.reader(), "a").await.expect("read"), Some((1, 1)));
}

async fn concurrent_writers_with_same_expected_sequence(store: &Store) {
    migrated(store).await;
    for round in 0..5 {
        let id = format!("race-{round}");
        store.append(intent(&id, Some(0), &["counter.added"])).await.expect("create");
        let writers = (0..2).map(|_| {
            let store = store.clone();
            let intent = intent(&id, Some(1), &["counter.incremented"]);
            tokio::spawn(async move { store.append(intent).await })
        });
        let results: Vec<_> = futures::future::join_all(writers).await.into_iter().map(|r| r.expect("task")).collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "exactly one writer wins: {results:?}");
        for result in results {
            if let Err(err) = result {
                assert_eq!((err.kind(), err.id()), (ErrorKind::Aborted, "STORE-sequence-mismatch"), "{err}");
            }
        }
        assert_eq!(sequences(store, &id).await, [1, 2]);
    }
}

async fn concurrent_writers_without_expected_sequence(store: &Store) {
    migrated(store).await;
    let writers = (0..20).map(|i| {
        let store = store.clone();
        let intent = WriteIntent {
            events: vec![NewEvent { event_type: "counter.incremented".into(), payload: json!({ "writer": i }) }],
            ..intent("hot", None, &[])
        };
        tokio::spawn(async move { store.append(intent).await })
    });
    let mut answered = BTreeSet::new();
    for result in futures::future::join_all(writers).await {
        let details = result.expect("task").expect("every writer succeeds");
        assert!(answered.insert(details.sequence), "sequence {} answered twice", details.sequence);
    }
    assert_eq!(answered, (1..=20).collect());
    let events = store.events(&aggregate("hot")).await.expect("events");
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    let writers: BTreeSet<_> = events.iter().map(|e| e.payload["writer"].as_u64().expect("writer")).collect();
    assert_eq!(writers, (0..20).collect(), "no event lost");
}

async fn concurrent_read_modify_write_loses_nothing(store: &Store) {
    migrated(store).await;
    create_counters(store).await;
    let writers = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(intent("c", None, &["counter.incremented"]), |txn, ctx| {
                    state(async move {
                        // Give a concurrent writer every chance to interleave between the read and the write.
                        let before = read_counter(txn, "c").await?;
                        tokio::task::yield_now().await;
                        increment(txn, "c", ctx).await?;
                        let after = read_counter(txn, "c").await?;
                        assert_eq!(after.map(|(v, _)| v), Some(before.map_or(1, |(v, _)| v + 1)));
                        Ok(())
                    })
                })
                .await
        })
    });
    let mut succeeded = 0;
    for result in futures::future::join_all(writers).await {
        result.expect("task").expect("every writer succeeds");
        succeeded += 1;
    }
    assert_eq!(read_counter(store.reader(), "c").await.expect("read"), Some((succeeded, succeeded)));
    assert_eq!(sequences(store, "c").await, (1..=20).collect::<Vec<_>>());
}

/// An event row written behind the helper's back, on another connection, as a competing writer would.
async fn intrude(store: &Store, id: &str, sequence: i64) -> Result<(), DbErr> {
    let insert = Query::insert()
        .into_table(Alias::new("events"))
        .columns(
            [
                "aggregate_type",
                "aggregate_id",
                "sequence",
                "event_type",
                "payload",
                "resource_owner",
                "creator",
                "created_at",
            ]
            .map(Alias::new),
        )
        .values([
            "counter".into(),
            id.into(),
            sequence.into(),
            "counter.intruded".into(),
            json!({}).into(),
            "org-1".into(),
            "intruder".into(),
            chrono::Utc::now().into(),
        ])
        .map_err(|e| DbErr::Custom(e.to_string()))?
        .to_owned();
    store.reader().execute(&insert).await.map(drop)
}

async fn collision_is_retried_without_gaps(store: &Store) {
    migrated(store).await;
    create_counters(store).await;
    let intruder = store.clone();
    let details = store
        .write(intent("r", None, &["counter.incremented"]), move |txn, ctx| {
            let intruder = intruder.clone();
            state(async move {
                increment(txn, "r", ctx).await?;
                if ctx.attempt == 1 {
                    // PostgreSQL: the competing event commits and our append then collides on its sequence.
                    // SQLite: the competitor waits for the write lock we hold and gives up busy; its error
                    // stands for "another writer is in the way" and is retried the same way.
                    if let Err(err) = intrude(&intruder, "r", i64::try_from(ctx.sequence).expect("small")).await {
                        return Err(err.into());
                    }
                }
                Ok(())
            })
        })
        .await
        .expect("the retry succeeds");

    let events = store.events(&aggregate("r")).await.expect("events");
    let seqs: Vec<_> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=details.sequence).collect::<Vec<_>>(), "no gaps");
    assert_eq!(events.last().map(|e| e.creator.as_str()), Some("user-1"));
    // The first try's state change was rolled back: the counter counts one successful write.
    assert_eq!(
        read_counter(store.reader(), "r").await.expect("read"),
        Some((1, i64::try_from(details.sequence).expect("small")))
    );
}

async fn persistent_collision_gives_up(store: &Store) {
    migrated(store).await;
    let intruder = store.clone();
    let tries = Arc::new(AtomicU32::new(0));
    let counted = tries.clone();
    let result = store
        .write(intent("p", None, &["counter.incremented"]), move |_, ctx| {
            let intruder = intruder.clone();
            let counted = counted.clone();
            state(async move {
                counted.fetch_add(1, Ordering::SeqCst);
                match intrude(&intruder, "p", i64::try_from(ctx.sequence).expect("small")).await {
                    Err(err) => Err(err.into()),
                    Ok(()) => Ok(()),
                }
            })
        })
        .await;
    let err = assert_kind(result, ErrorKind::Aborted, "STORE-conflict");
    assert!(err.message().contains("retry"), "{}", err.message());
    assert_eq!(tries.load(Ordering::SeqCst), 5);
    // Whatever the competitor managed to write is numbered without gaps; nothing of ours is there.
    let events = store.events(&aggregate("p")).await.expect("events");
    assert!(events.iter().all(|e| e.creator == "intruder"));
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), (1..=events.len() as u64).collect::<Vec<_>>());
}

/// Starts writing counter `gate` and holds the writer (on SQLite: the transaction of its batch) in the middle
/// of that write until `release` is notified; answers once the write is that far.
async fn hold_writer(store: &Store) -> (tokio::task::JoinHandle<Result<Details, Error>>, Arc<tokio::sync::Notify>) {
    let (inside_tx, inside_rx) = tokio::sync::oneshot::channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = {
        let (store, release) = (store.clone(), release.clone());
        let mut inside = Some(inside_tx);
        tokio::spawn(async move {
            store
                .write(intent("gate", Some(0), &["counter.added"]), move |txn, ctx| {
                    let (release, inside) = (release.clone(), inside.take());
                    state(async move {
                        insert_counter(txn, "gate", 1, ctx.sequence).await?;
                        if let Some(inside) = inside {
                            let _ = inside.send(());
                            release.notified().await;
                        }
                        Ok(())
                    })
                })
                .await
        })
    };
    inside_rx.await.expect("the first write started");
    (gate, release)
}

/// Writes that arrive while another one is under way (on SQLite: they share its transaction) each get their
/// own outcome: the good ones commit, a failing one fails alone and leaves nothing, and one whose caller goes
/// away halfway leaves nothing either.
async fn concurrent_writes_keep_their_own_outcomes(store: &Store) {
    migrated(store).await;
    create_counters(store).await;
    let (gate, release) = hold_writer(store).await;

    // Sees the first write's row before it is committed only if it runs in the same transaction (on a later try, once the
    // abandoned write below has sent everyone back to try alone, it may or may not).
    let saw_gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peek = {
        let (store, saw_gate) = (store.clone(), saw_gate.clone());
        let reader = store.clone();
        let mut peek = Box::pin(async move {
            store
                .write(intent("peek", Some(0), &["counter.added"]), move |txn, ctx| {
                    let (saw_gate, reader) = (saw_gate.clone(), reader.clone());
                    state(async move {
                        insert_counter(txn, "peek", 1, ctx.sequence).await?;
                        let uncommitted = read_counter(reader.reader(), "gate").await?.is_none();
                        if uncommitted && read_counter(txn, "gate").await?.is_some() {
                            saw_gate.store(true, Ordering::SeqCst);
                        }
                        Ok(())
                    })
                })
                .await
        });
        // Its first step joins the transaction the first write holds (SQLite), before that write may end.
        match futures::poll!(peek.as_mut()) {
            std::task::Poll::Ready(done) => tokio::spawn(async move { done }),
            std::task::Poll::Pending => tokio::spawn(peek),
        }
    };
    let good: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = format!("ok-{i}");
                store
                    .write(intent(&id, Some(0), &["counter.added"]), |txn, ctx| {
                        let id = id.clone();
                        state(async move { Ok(insert_counter(txn, &id, 1, ctx.sequence).await?) })
                    })
                    .await
            })
        })
        .collect();
    let bad = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(intent("bad", Some(0), &["counter.added"]), |txn, ctx| {
                    state(async move {
                        insert_counter(txn, "bad", 1, ctx.sequence).await?;
                        Err(Error::new(ErrorKind::FailedPrecondition, "COUNTER-frozen", "the counter is frozen").into())
                    })
                })
                .await
        })
    };
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let abandoned = {
        let store = store.clone();
        let mut started = Some(started_tx);
        tokio::spawn(async move {
            store
                .write(intent("gone", Some(0), &["counter.added"]), move |txn, ctx| {
                    let started = started.take();
                    state(async move {
                        insert_counter(txn, "gone", 1, ctx.sequence).await?;
                        if let Some(started) = started {
                            let _ = started.send(());
                            // Its caller goes away here, halfway through the write.
                            std::future::pending::<()>().await;
                        }
                        Ok(())
                    })
                })
                .await
        })
    };
    release.notify_one();
    started_rx.await.expect("the abandoned write started");
    abandoned.abort();
    assert!(abandoned.await.expect_err("aborted").is_cancelled());

    gate.await.expect("task").expect("the first write commits");
    peek.await.expect("task").expect("the peeking write commits");
    if store.backend() == Backend::Sqlite {
        // (On PostgreSQL it depends on timing: the peek may run before or after the first write commits.)
        assert!(saw_gate.load(Ordering::SeqCst), "concurrent writes share the SQLite writer's transaction");
    }
    for write in good {
        write.await.expect("task").expect("every good write commits");
    }
    let err = bad.await.expect("task");
    assert_kind(err, ErrorKind::FailedPrecondition, "COUNTER-frozen");
    for i in 0..10 {
        let id = format!("ok-{i}");
        assert_eq!(read_counter(store.reader(), &id).await.expect("read"), Some((1, 1)), "{id}");
        assert_eq!(sequences(store, &id).await, [1], "{id}");
    }
    for id in ["gate", "peek"] {
        assert_eq!(read_counter(store.reader(), id).await.expect("read"), Some((1, 1)), "{id}");
    }
    for id in ["bad", "gone"] {
        assert_eq!(read_counter(store.reader(), id).await.expect("read"), None, "{id}");
        assert!(sequences(store, id).await.is_empty(), "{id}");
    }
}

#[tokio::test]
async fn unknown_scheme_is_refused_naming_database_url() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = Store::connect(&config(Some("mysql://root:hunter2@localhost/db".into()), dir.path().into()))
        .await
        .expect_err("mysql is not supported");
    let text = err.to_string();
    assert!(text.contains("database_url") && !text.contains("hunter2"), "{text}");
    assert_eq!(Error::from(err).kind(), ErrorKind::Internal);
}

#[tokio::test]
async fn sqlite_url_and_isolated_file() {
    let url = testing::isolated_database_url("").await.expect("isolated SQLite URL");
    assert!(url.starts_with("sqlite://"), "{url}");
    let store = Store::connect(&config(Some(url.clone()), std::env::temp_dir())).await.expect("connect");
    store.migrate().await.expect("migrate");
    store.append(intent("a", None, &["counter.added"])).await.expect("append");
    // A second store on the same file sees the data (it is a file, not memory).
    let again = Store::connect(&config(Some(url.clone()), std::env::temp_dir())).await.expect("reconnect");
    assert_eq!(sequences(&again, "a").await, [1]);
    assert_eq!(again.pool_stats().max, 4 + 1, "readers plus the one writer");
    again.close().await;
    store.close().await;
    testing::drop_isolated_database(&url).await.expect("remove the file");
}

#[tokio::test]
async fn sqlite_in_memory() {
    let store =
        Store::connect(&config(Some("sqlite::memory:".into()), std::env::temp_dir())).await.expect("connect to memory");
    store.migrate().await.expect("migrate");
    let details = store.append(intent("m", None, &["counter.added"])).await.expect("append");
    assert_eq!(store.details(&aggregate("m")).await.expect("details"), Some(details));
}

#[tokio::test]
async fn stale_database_cleanup_spares_young_ones() {
    let Ok(base) = std::env::var("FLOWGATE_TEST_DATABASE_URL") else { return };
    if base.is_empty() {
        return;
    }
    let url = testing::isolated_database_url(&base).await.expect("create");
    testing::drop_stale_databases(&base).await.expect("cleanup");
    // Just created and not connected yet: a cleanup running beside a suite must not take it away.
    let store = Store::connect(&config(Some(url.clone()), std::env::temp_dir())).await.expect("still there");
    store.close().await;
    testing::drop_isolated_database(&url).await.expect("drop");
    assert_eq!(testing::drop_stale_databases("sqlite://x.db").await.expect("no-op"), 0);
}

#[tokio::test]
async fn sqlite_connections_use_wal_normal_and_foreign_keys() {
    let db = crate::common::TestDb::sqlite(config).await;
    for (role, conn) in [("writer", db.store.writer()), ("reader", db.store.reader())] {
        let pragma = async |name: &str| -> String {
            let row = conn.query_one_raw(Statement::from_string(DbBackend::Sqlite, format!("PRAGMA {name}")));
            let row = row.await.expect("pragma").expect("a row");
            row.try_get_by_index::<String>(0)
                .or_else(|_| row.try_get_by_index::<i64>(0).map(|v| v.to_string()))
                .expect("pragma value")
        };
        assert_eq!(pragma("journal_mode").await, "wal", "{role}");
        assert_eq!(pragma("synchronous").await, "1", "{role}: NORMAL");
        assert_eq!(pragma("foreign_keys").await, "1", "{role}");
        assert_eq!(pragma("busy_timeout").await, "100", "{role}");
    }
    db.finish().await;
}

/// `.cargo/config.toml` builds the bundled SQLite with `SQLITE_ENABLE_QPSG`; without it every statement
/// with a bound `LIMIT` (each `.one()`) is prepared again on every execution. A build that lost the flag
/// still works, only slower, so nothing else would notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_is_built_with_stable_query_plans() {
    let db = crate::common::TestDb::sqlite(config).await;
    let options = db
        .store
        .reader()
        .query_all_raw(Statement::from_string(DbBackend::Sqlite, "PRAGMA compile_options"))
        .await
        .expect("compile options");
    let options: Vec<String> = options.iter().map(|row| row.try_get_by_index::<String>(0).expect("text")).collect();
    assert!(options.iter().any(|o| o == "ENABLE_QPSG"), "SQLite compile options: {options:?}");
    db.finish().await;
}

/// A new counter written as planned statements: two events, its row, and an update of that row.
async fn write_planned(store: &Store, id: &str) -> Result<Details, Error> {
    write_planned_counter(store, id, id, true).await
}

/// Two events of aggregate `aggregate`, then counter row `counter` (value 1) and, with `touch`, a statement
/// that relies on the row (value 2): in a batch it runs after every row is in. Without it the plan is rows
/// only, which PostgreSQL writes as one statement.
async fn write_planned_counter(store: &Store, aggregate: &str, counter: &str, touch: bool) -> Result<Details, Error> {
    let (value, details) = store
        .write_new_planned(intent(aggregate, Some(0), &["counter.added", "counter.named"]), |ctx, backend| {
            let sequence = i64::try_from(ctx.sequence).expect("small");
            let row = RowInsert::new(
                "counters",
                vec!["id", "value", "sequence"],
                vec![counter.into(), 1_i64.into(), sequence.into()],
            )?;
            let mut statements = vec![PlannedStatement::from(row)];
            if touch {
                let update = Query::update()
                    .table(Alias::new("counters"))
                    .value(Alias::new("value"), Expr::col(Alias::new("value")).add(1))
                    .and_where(Expr::col(Alias::new("id")).eq(counter))
                    .to_owned();
                statements.push(PlannedStatement::Other(backend.build(&update)));
            }
            Ok(Planned {
                value: counter.to_owned(),
                statements,
                on_error: |err| match err.sql_err() {
                    Some(SqlErr::UniqueConstraintViolation(_)) => {
                        Error::new(ErrorKind::AlreadyExists, "COUNTER-taken", "the counter exists").into()
                    }
                    // Anything else (a lock wait, a serialization failure) is the store's to retry.
                    _ => StateError::Db(err),
                },
            })
        })
        .await?;
    assert_eq!(value, counter);
    Ok(details)
}

/// A planned write of rows only (on PostgreSQL one statement with its events) commits whole; one whose row
/// is taken, or whose aggregate exists, leaves nothing and reports what it met.
async fn planned_rows_commit_whole_or_not_at_all(store: &Store) {
    migrated(store).await;
    create_counters(store).await;
    let details = write_planned_counter(store, "r-1", "r-1", false).await.expect("a new counter");
    assert_eq!((details.sequence, details.creation_date), (2, details.change_date));
    assert_eq!(sequences(store, "r-1").await, [1, 2]);
    assert_eq!(read_counter(store.reader(), "r-1").await.expect("read"), Some((1, 2)));

    // A new aggregate, but its row is taken.
    assert_kind(write_planned_counter(store, "r-2", "r-1", false).await, ErrorKind::AlreadyExists, "COUNTER-taken");
    assert!(sequences(store, "r-2").await.is_empty(), "nothing of the failed write stays");
    assert_eq!(read_counter(store.reader(), "r-1").await.expect("read"), Some((1, 2)));

    // A free row, but the aggregate has events already.
    let err = write_planned_counter(store, "r-1", "r-3", false).await;
    assert_kind(err, ErrorKind::Aborted, "STORE-sequence-mismatch");
    assert_eq!(read_counter(store.reader(), "r-3").await.expect("read"), None);
    assert_eq!(sequences(store, "r-1").await, [1, 2]);
}

/// Planned writes that arrive while another write holds the writer are handed to its batch and run there
/// together (their rows merged into multi-row inserts); one that fails (its aggregate exists, or its row does) sends the batch back, and every write
/// then gets its own outcome alone: the good ones commit whole, the failing ones leave nothing.
async fn planned_writes_share_a_batch_and_keep_their_own_outcomes(store: &Store) {
    migrated(store).await;
    create_counters(store).await;
    // An aggregate with events already, and a counter row without any.
    store.append(intent("old", Some(0), &["counter.added"])).await.expect("append");
    store
        .write(intent("other", Some(0), &["counter.added"]), |txn, ctx| {
            state(async move { Ok(insert_counter(txn, "row-only", 7, ctx.sequence).await?) })
        })
        .await
        .expect("write");

    let (gate, release) = hold_writer(store).await;

    // Each is polled once, which hands its statements to the batch the first write holds (SQLite), where
    // their rows go in as merged inserts and the failures send everyone back to write alone.
    let mut writes = Vec::new();
    let ids = ["p-0", "p-1", "p-2", "p-3", "p-4", "p-5", "p-6", "p-7", "p-8", "old", "row-only", "p-9"];
    for id in ids {
        let store = store.clone();
        let mut write = Box::pin(async move { write_planned(&store, id).await });
        let first = futures::poll!(write.as_mut());
        writes.push((
            id,
            tokio::spawn(async move { if let std::task::Poll::Ready(done) = first { done } else { write.await } }),
        ));
    }
    release.notify_one();
    gate.await.expect("task").expect("the first write commits");

    for (id, write) in writes {
        let outcome = write.await.expect("task");
        match id {
            "old" => {
                assert_kind(outcome, ErrorKind::Aborted, "STORE-sequence-mismatch");
            }
            "row-only" => {
                assert_kind(outcome, ErrorKind::AlreadyExists, "COUNTER-taken");
                assert!(sequences(store, id).await.is_empty(), "nothing of the failed write stays");
                assert_eq!(read_counter(store.reader(), id).await.expect("read"), Some((7, 1)));
            }
            _ => {
                let details = outcome.expect("a good planned write commits");
                assert_eq!((details.sequence, details.creation_date), (2, details.change_date), "{id}");
                assert_eq!(sequences(store, id).await, [1, 2], "{id}");
                // Its update ran after its row went in: value 2.
                assert_eq!(read_counter(store.reader(), id).await.expect("read"), Some((2, 2)), "{id}");
            }
        }
    }
    assert_eq!(sequences(store, "old").await, [1]);
    assert_eq!(read_counter(store.reader(), "gate").await.expect("read"), Some((1, 1)));

    // Alone (nothing else under way), a planned write commits the same way.
    assert_eq!(write_planned(store, "alone").await.expect("write").sequence, 2);
    assert_eq!(read_counter(store.reader(), "alone").await.expect("read"), Some((2, 2)));
}

/// The statement planned rows go in as (merged inserts in chunks on SQLite, one statement of `WITH` parts
/// on PostgreSQL) runs on the engine and writes exactly those rows, with their values in place.
async fn combined_inserts_write_exactly_their_rows(store: &Store) {
    migrated(store).await;
    create_counters(store).await;
    // 19 rows: chunks of 16, 2 and 1 on SQLite; nineteen parts on PostgreSQL.
    let rows = (0_i64..19)
        .map(|i| {
            let values = vec![format!("c-{i}").into(), (10 * i).into(), (i + 1).into()];
            RowInsert::new("counters", vec!["id", "value", "sequence"], values).expect("row")
        })
        .collect();
    let statement = testing::combined_inserts(store.backend(), rows).expect("a statement");
    store.writer().execute_raw(statement).await.expect("the combined inserts run");
    for i in 0_i64..19 {
        assert_eq!(read_counter(store.reader(), &format!("c-{i}")).await.expect("read"), Some((10 * i, i + 1)));
    }
    assert_eq!(read_counter(store.reader(), "c-19").await.expect("read"), None);
    assert!(testing::combined_inserts(store.backend(), Vec::new()).is_none());
}
