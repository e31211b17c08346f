//! Migrations that reshape tables holding rows: each scenario migrates to the schema before, writes rows the
//! way a server of that time did, migrates on and checks that nothing was lost. On SQLite and, with
//! `FLOWGATE_TEST_DATABASE_URL`, on PostgreSQL.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use flowgate_core::event::NewEvent;
use flowgate_core::identity::ListQuery;
use flowgate_core::session::ports::{NewSessionRecord, OtpConsume, SessionState, SessionUpdate};
use flowgate_core::session::{OtpKind, SessionFilter, SessionId, TimestampMethod, UserAgent};
use flowgate_store::sea_orm::sea_query::{Alias, Query, SimpleExpr};
use flowgate_store::sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use flowgate_store::{Backend, Store, session, testing};
use serde_json::json;

use crate::common::scenarios;

scenarios!(
    config = crate::common::default_config, migrate = false;
    session_tokens_name_their_session_and_old_ones_still_work,
    sparse_session_indexes_skip_unset_rows_and_still_serve_their_filters,
);

/// The migration before the one under test.
const BEFORE_SELECTOR: &str = "m20261125_000008_credential_notify";

/// Inserts `values` into `table` with the engine's own encoding of each value (as the server writes them).
async fn insert(store: &Store, table: &str, values: Vec<(&str, SimpleExpr)>) {
    let (columns, values): (Vec<_>, Vec<_>) = values.into_iter().unzip();
    let statement = Query::insert()
        .into_table(Alias::new(table))
        .columns(columns.into_iter().map(Alias::new))
        .values(values)
        .expect("as many values as columns")
        .to_owned();
    store.writer().execute(&statement).await.unwrap_or_else(|e| panic!("insert into {table}: {e}"));
}

/// Session `id` with its `session.added` event, as written before tokens named their session: one user
/// factor when `user` is given, terminated when `terminated`.
async fn old_session(store: &Store, id: &str, user: Option<&str>, terminated: bool, at: DateTime<Utc>) {
    insert(
        store,
        "sessions",
        vec![
            ("id", id.into()),
            ("creator", "creator".into()),
            ("user_id", user.into()),
            ("user_login_name", user.map(|u| format!("{u}@example.com")).into()),
            ("user_display_name", user.map(|u| format!("{u} display")).into()),
            ("user_org_id", user.map(|_| "o1").into()),
            ("user_checked_at", user.map(|_| at).into()),
            ("password_checked_at", user.map(|_| at).into()),
            ("token_hash", format!("hash-{id}").into()),
            ("metadata", json!({ "k": "dg==" }).into()),
            ("user_agent", Some(json!({ "fingerprint_id": format!("fp-{id}"), "headers": {} })).into()),
            ("fingerprint_id", Some(format!("fp-{id}")).into()),
            ("expiration", Some(at + Duration::hours(1)).into()),
            ("terminated_at", terminated.then_some(at).into()),
            ("created_at", at.into()),
            ("changed_at", at.into()),
            ("sequence", 1i64.into()),
        ],
    )
    .await;
    insert(
        store,
        "events",
        vec![
            ("aggregate_type", "session".into()),
            ("aggregate_id", id.into()),
            ("sequence", 1i64.into()),
            ("event_type", "session.added".into()),
            ("payload", json!({}).into()),
            ("resource_owner", "instance".into()),
            ("creator", "creator".into()),
            ("created_at", at.into()),
        ],
    )
    .await;
}

async fn old_challenge(store: &Store, session: &str, kind: &str, code_hash: &str, at: DateTime<Utc>) {
    insert(
        store,
        "otp_challenges",
        vec![
            ("session_id", session.into()),
            ("kind", kind.into()),
            ("code_hash", code_hash.into()),
            ("expires_at", (at + Duration::minutes(5)).into()),
            ("used_at", Option::<DateTime<Utc>>::None.into()),
            ("created_at", at.into()),
        ],
    )
    .await;
}

/// The names of `sessions`' indexes other than its primary key, sorted.
async fn session_indexes(store: &Store) -> Vec<String> {
    let (backend, sql) = match store.backend() {
        // Indexes SQLite makes itself (primary key, inline constraints) have no SQL.
        Backend::Sqlite => (
            DbBackend::Sqlite,
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sessions' AND sql IS NOT NULL \
             ORDER BY name",
        ),
        Backend::Postgres => (
            DbBackend::Postgres,
            "SELECT indexname FROM pg_indexes WHERE tablename = 'sessions' AND indexname <> 'sessions_pkey' \
             ORDER BY indexname",
        ),
    };
    let rows = store.writer().query_all_raw(Statement::from_string(backend, sql)).await.expect("indexes");
    rows.iter().map(|row| row.try_get_by_index::<String>(0).expect("name")).collect()
}

async fn session_tokens_name_their_session_and_old_ones_still_work(store: &Store) {
    testing::migrate_until(store, BEFORE_SELECTOR).await.expect("migrate to the schema before");
    let at = Utc::now().trunc_subsecs(6);
    old_session(store, "s1", Some("alice"), false, at).await;
    old_session(store, "s2", None, false, at).await;
    old_session(store, "s3", Some("bob"), true, at).await;
    old_challenge(store, "s1", "sms", "code-1", at).await;
    old_challenge(store, "s1", "email", "code-2", at).await;
    old_challenge(store, "s2", "email", "code-3", at).await;

    store.migrate().await.expect("migrate");
    assert!(store.pending_migrations().await.expect("pending").is_empty());
    let repos = session::repos(store);

    // Every row is there as written, and found by its old token's digest too.
    for (id, user, terminated) in [("s1", Some("alice"), false), ("s2", None, false), ("s3", Some("bob"), true)] {
        let stored = repos.sessions.get(&SessionId::from(id)).await.expect("get").expect("kept");
        let session = &stored.session;
        assert_eq!(stored.token_hash, format!("hash-{id}"));
        assert_eq!(session.user_id().map(|u| u.as_str()), user, "{id}");
        assert_eq!(session.factors.password, user.map(|_| at), "{id}");
        assert_eq!(session.metadata.get("k").map(Vec::as_slice), Some(&b"v"[..]), "{id}");
        assert_eq!(session.user_agent.as_ref().and_then(|a| a.fingerprint_id.clone()), Some(format!("fp-{id}")));
        assert_eq!((session.expiration, session.terminated), (Some(at + Duration::hours(1)), terminated), "{id}");
        assert_eq!((session.details.sequence, session.details.creation_date), (1, at), "{id}");
        let by_legacy = repos.sessions.get_by_legacy_token_hash(&format!("hash-{id}")).await.expect("legacy");
        assert_eq!(by_legacy.as_ref(), Some(session), "{id}");
    }

    // Every challenge is there, still tied to its session.
    let consume = |id: &str, kind, code: &str| {
        let repos = repos.clone();
        let (id, code) = (SessionId::from(id), code.to_owned());
        async move { repos.otp_challenges.consume(&id, kind, &code, Utc::now()).await.expect("consume") }
    };
    assert_eq!(consume("s1", OtpKind::Sms, "code-1").await, OtpConsume::Consumed);
    assert_eq!(consume("s1", OtpKind::Email, "wrong").await, OtpConsume::Mismatch);
    assert_eq!(consume("s2", OtpKind::Email, "wrong").await, OtpConsume::Mismatch);
    store.writer().execute_unprepared("DELETE FROM sessions WHERE id = 's2'").await.expect("delete");
    assert_eq!(consume("s2", OtpKind::Email, "code-3").await, OtpConsume::Missing, "deleted with its session");
    assert_eq!(consume("s1", OtpKind::Email, "code-2").await, OtpConsume::Consumed);

    // The digest of the current token is indexed no more; the legacy digests are, uniquely.
    assert_eq!(
        session_indexes(store).await,
        [
            "sessions_created_at_idx",
            "sessions_expiration_idx",
            "sessions_fingerprint_id_idx",
            "sessions_legacy_token_hash_key",
            "sessions_user_id_idx",
        ]
    );
    let mut twin = NewSessionRecord {
        id: SessionId::from("s4"),
        creator: "creator".into(),
        user_agent: None,
        state: SessionState::default(),
        token_hash: "hash-s1".into(),
        challenges: Vec::new(),
        events: vec![NewEvent { event_type: "session.added".into(), payload: json!({}) }],
    };
    repos.sessions.create(&twin, "tester").await.expect("a digest is no key");
    assert!(
        repos.sessions.get_by_legacy_token_hash("hash-s1").await.expect("legacy").is_some_and(|s| s.id == "s1".into())
    );
    let taken =
        store.writer().execute_unprepared("UPDATE sessions SET legacy_token_hash = 'hash-s1' WHERE id = 's4'").await;
    assert!(taken.is_err(), "legacy digests are unique");
    twin.id = SessionId::from("s5");
    repos.sessions.create(&twin, "tester").await.expect("any number of sessions without a legacy digest");

    // A rotation ends the old token, the legacy lookup with it.
    let read = repos.sessions.get(&SessionId::from("s1")).await.expect("get").expect("kept").session.details;
    let update = SessionUpdate {
        state: SessionState::default(),
        token_hash: "hash-new".into(),
        challenges: Vec::new(),
        events: vec![NewEvent { event_type: "session.token.rotated".into(), payload: json!({}) }],
    };
    repos.sessions.apply(&SessionId::from("s1"), &read, &update, "tester").await.expect("rotate");
    assert!(repos.sessions.get_by_legacy_token_hash("hash-s1").await.expect("legacy").is_none());
    assert!(repos.sessions.get_by_legacy_token_hash("hash-s3").await.expect("legacy").is_some(), "others keep theirs");
}

/// The migration before the sparse session indexes.
const BEFORE_SPARSE: &str = "m20261125_000009_session_token_selector";

/// The SQL that defines index `name`, as the engine keeps it.
async fn index_definition(store: &Store, name: &str) -> String {
    let (backend, sql) = match store.backend() {
        Backend::Sqlite => (DbBackend::Sqlite, format!("SELECT sql FROM sqlite_master WHERE name = '{name}'")),
        Backend::Postgres => {
            (DbBackend::Postgres, format!("SELECT indexdef FROM pg_indexes WHERE indexname = '{name}'"))
        }
    };
    let row = store.writer().query_one_raw(Statement::from_string(backend, sql)).await.expect("index").expect("exists");
    row.try_get_by_index::<String>(0).expect("definition")
}

/// The plan of `query` with sequential scans made unattractive (an almost empty table would not use an
/// index otherwise on PostgreSQL), as one text.
async fn plan(store: &Store, query: &str) -> String {
    let txn = store.writer().begin().await.expect("begin");
    let (backend, explain) = match store.backend() {
        Backend::Sqlite => (DbBackend::Sqlite, format!("EXPLAIN QUERY PLAN {query}")),
        Backend::Postgres => {
            txn.execute_unprepared("SET LOCAL enable_seqscan = off").await.expect("set");
            (DbBackend::Postgres, format!("EXPLAIN {query}"))
        }
    };
    let rows = txn.query_all_raw(Statement::from_string(backend, explain)).await.expect("explain");
    let column = if backend == DbBackend::Sqlite { 3 } else { 0 };
    let lines = rows.iter().map(|row| row.try_get_by_index::<String>(column).expect("plan line")).collect::<Vec<_>>();
    txn.rollback().await.expect("rollback");
    lines.join("\n")
}

async fn sparse_session_indexes_skip_unset_rows_and_still_serve_their_filters(store: &Store) {
    testing::migrate_until(store, BEFORE_SPARSE).await.expect("migrate to the schema before");
    let at = Utc::now().trunc_subsecs(6);
    // Written before: fingerprint `fp-s1` and an expiration an hour after `at`.
    old_session(store, "s1", Some("alice"), false, at).await;
    store.migrate().await.expect("migrate");
    assert!(store.pending_migrations().await.expect("pending").is_empty());

    for name in ["sessions_fingerprint_id_idx", "sessions_expiration_idx"] {
        let definition = index_definition(store, name).await;
        assert!(definition.contains("IS NOT NULL"), "{name}: {definition}");
    }
    for (column, query) in [
        ("fingerprint_id", "SELECT id FROM sessions WHERE fingerprint_id = 'fp-s1'"),
        ("expiration", "SELECT id FROM sessions WHERE expiration < '2100-01-01T00:00:00+00:00'"),
    ] {
        let plan = plan(store, query).await;
        assert!(plan.contains(&format!("sessions_{column}_idx")), "{column}: {plan}");
    }

    // New sessions with and without the columns set; the filters find exactly the ones that match.
    let repos = session::repos(store);
    let new = |id: &str, fingerprint: Option<&str>, expiration: Option<DateTime<Utc>>| NewSessionRecord {
        id: SessionId::from(id),
        creator: "creator".into(),
        user_agent: fingerprint.map(|f| UserAgent { fingerprint_id: Some(f.to_owned()), ..UserAgent::default() }),
        state: SessionState { expiration, ..SessionState::default() },
        token_hash: format!("hash-{id}"),
        challenges: Vec::new(),
        events: vec![NewEvent { event_type: "session.added".into(), payload: json!({}) }],
    };
    repos.sessions.create(&new("s2", Some("fp-s2"), Some(at + Duration::hours(2))), "tester").await.expect("s2");
    repos.sessions.create(&new("s3", None, None), "tester").await.expect("s3");
    repos.sessions.create(&new("s4", Some("fp-s1"), None), "tester").await.expect("s4");
    let q = ListQuery { offset: 0, limit: 10, asc: true };
    let ids = |page: flowgate_core::identity::Page<flowgate_core::session::Session>| {
        let mut ids = page.items.into_iter().map(|s| s.id.as_str().to_owned()).collect::<Vec<_>>();
        ids.sort();
        ids
    };
    let by_fingerprint = repos.sessions.list(&[SessionFilter::UserAgentFingerprint(Some("fp-s1".into()))], &q).await;
    assert_eq!(ids(by_fingerprint.expect("list")), ["s1", "s4"]);
    let expiring = SessionFilter::ExpirationDate(at + Duration::hours(3), TimestampMethod::Less);
    assert_eq!(ids(repos.sessions.list(&[expiring], &q).await.expect("list")), ["s1", "s2"]);
    let later = SessionFilter::ExpirationDate(at + Duration::minutes(90), TimestampMethod::GreaterOrEquals);
    assert_eq!(ids(repos.sessions.list(&[later], &q).await.expect("list")), ["s2"]);
}
