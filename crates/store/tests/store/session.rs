//! The session repositories against real databases: every scenario runs on SQLite (a temp dir) and, when
//! `FLOWGATE_TEST_DATABASE_URL` names a PostgreSQL server, on PostgreSQL too (a fresh database per test).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use flowgate_core::ErrorKind;
use flowgate_core::event::{AggregateRef, Details, NewEvent};
use flowgate_core::identity::ports::{
    NewOrgRecord, NewTokenRecord, NewUserKind, NewUserRecord, OrgStateChange, UserStateChange,
};
use flowgate_core::identity::{
    Email, ListQuery, MemberScope, OrgId, Profile, Role, TokenId, UserId, UserState, org_primary_domain,
};
use flowgate_core::session::ports::{
    NewOtpChallenge, NewSessionRecord, OtpConsume, SessionRepos, SessionState, SessionUpdate,
};
use flowgate_core::session::{
    Factors, LockoutKind, OtpKind, Session, SessionFilter, SessionId, TimestampMethod, UserAgent, UserFactor,
};
use flowgate_store::sea_orm::ConnectionTrait;
use flowgate_store::{Backend, Change, Store, identity, session};
use serde_json::json;

use crate::common::scenarios;

/// The details of session `id` as a caller reads them before changing it.
async fn read(repos: &SessionRepos, id: &str) -> Details {
    repos.sessions.get(&SessionId::from(id)).await.expect("get").expect("exists").session.details
}

/// Gives session `id` the legacy digest of its current token, as the migration that put session ids into
/// tokens did for every session it found.
async fn mark_legacy(store: &Store, id: &str) {
    let sql = format!("UPDATE sessions SET legacy_token_hash = token_hash WHERE id = '{id}'");
    store.writer().execute_unprepared(&sql).await.expect("mark legacy");
}

/// `details` with another sequence: what a caller holding an out-of-date copy passes.
fn at_sequence(details: &Details, sequence: u64) -> Details {
    Details { sequence, ..details.clone() }
}

scenarios!(
    config = crate::common::default_config, migrate = true;
    sessions_are_created_read_and_listed,
    list_filters_and_paging,
    token_rotation_and_expected_sequence,
    concurrent_changes_keep_the_sequence,
    terminate_and_terminate_all_of_user,
    otp_codes_are_used_once,
    concurrent_failures_count_to_the_limit_and_lock_once,
    lockout_counters_reset,
    totp_registrations,
    changes_are_announced_to_listeners,
);

const ACTOR: &str = "tester";

fn q(offset: u64, limit: u32, asc: bool) -> ListQuery {
    ListQuery { offset, limit, asc }
}

fn assert_err<T: std::fmt::Debug>(result: flowgate_core::Result<T>, kind: ErrorKind, id: &str) {
    let err = result.expect_err("must fail");
    assert_eq!((err.kind(), err.id()), (kind, id), "{err}");
}

fn event(event_type: &str) -> NewEvent {
    NewEvent { event_type: event_type.to_owned(), payload: json!({}) }
}

/// Event types and sequences of an aggregate, oldest first.
async fn events(store: &Store, kind: &str, id: &str) -> Vec<(u64, String)> {
    let aggregate = AggregateRef { aggregate_type: kind.into(), aggregate_id: id.into() };
    store.events(&aggregate).await.expect("events").into_iter().map(|e| (e.sequence, e.event_type)).collect()
}

/// An org `org` with one human user `user` in it.
async fn seed_user(store: &Store, org: &str, user: &str) {
    let repos = identity::repos(store);
    if repos.orgs.get(&OrgId::from(org)).await.expect("get org").is_none() {
        let record = NewOrgRecord {
            id: OrgId::from(org),
            name: format!("org {org}"),
            primary_domain: org_primary_domain(&format!("org {org}"), "localhost"),
        };
        repos.orgs.create(&record, ACTOR).await.expect("create org");
    }
    let record = NewUserRecord {
        id: UserId::from(user),
        org_id: OrgId::from(org),
        username: user.to_owned(),
        kind: NewUserKind::Human {
            profile: Profile {
                given_name: "Given".into(),
                family_name: "Family".into(),
                display_name: format!("{user} display"),
                preferred_language: "en".into(),
            },
            email: Email { address: format!("{user}@example.com"), verified: true },
            phone: None,
            password_change_required: false,
        },
        idp_links: Vec::new(),
    };
    repos.users.create(&record, Some("$argon2id$fake"), ACTOR).await.expect("create user");
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn user_factor(user: &str, org: &str, at: DateTime<Utc>) -> UserFactor {
    UserFactor {
        verified_at: at,
        id: UserId::from(user),
        login_name: format!("{user}@org-{org}.localhost"),
        display_name: format!("{user} display"),
        organization_id: OrgId::from(org),
    }
}

fn agent(fingerprint: &str) -> UserAgent {
    UserAgent {
        fingerprint_id: Some(fingerprint.to_owned()),
        ip: Some("192.0.2.1".into()),
        description: Some("a browser".into()),
        headers: BTreeMap::from([("accept-language".to_owned(), vec!["de".to_owned(), "en".to_owned()])]),
    }
}

/// A session record without checks.
fn record(id: &str, creator: &str, token_hash: &str) -> NewSessionRecord {
    NewSessionRecord {
        id: SessionId::from(id),
        creator: creator.to_owned(),
        user_agent: None,
        state: SessionState::default(),
        token_hash: token_hash.to_owned(),
        challenges: Vec::new(),
        events: vec![event("session.added")],
    }
}

/// A session record whose user `user` (of `org`) is checked.
fn checked(id: &str, creator: &str, user: &str, org: &str) -> NewSessionRecord {
    let mut record = record(id, creator, &format!("hash-{id}"));
    record.state.factors.user = Some(user_factor(user, org, now()));
    record.events.push(event("session.user.checked"));
    record
}

fn ids(page: &[Session]) -> Vec<String> {
    page.iter().map(|s| s.id.as_str().to_owned()).collect()
}

async fn sessions_are_created_read_and_listed(store: &Store) {
    seed_user(store, "o1", "alice").await;
    let repos = session::repos(store);
    let at = now();
    let metadata = BTreeMap::from([("bin".to_owned(), vec![0, 255, 10, 13, 34]), ("text".to_owned(), b"v".to_vec())]);
    let record = NewSessionRecord {
        id: SessionId::from("s1"),
        creator: "creator-1".into(),
        user_agent: Some(agent("fp-1")),
        state: SessionState {
            factors: Factors {
                user: Some(user_factor("alice", "o1", at)),
                password: Some(at),
                totp: None,
                otp_sms: None,
                otp_email: Some(at),
                intent: None,
            },
            metadata: metadata.clone(),
            expiration: Some(at + Duration::hours(1)),
        },
        token_hash: "hash-s1".into(),
        challenges: vec![NewOtpChallenge {
            kind: OtpKind::Sms,
            code_hash: "code-1".into(),
            expires_at: at + Duration::minutes(5),
        }],
        events: vec![event("session.added"), event("session.user.checked"), event("session.password.checked")],
    };
    let created = repos.sessions.create(&record, ACTOR).await.expect("create");
    assert_eq!(created.details.sequence, 3);
    assert_eq!(created.details.resource_owner, "instance");
    assert_eq!(created.details.creation_date, created.details.change_date);
    assert_eq!(created.factors, record.state.factors);
    assert_eq!((created.metadata.clone(), created.user_agent.clone()), (metadata, Some(agent("fp-1"))));
    assert_eq!((created.expiration, created.terminated), (Some(at + Duration::hours(1)), false));
    assert_eq!(created.user_id(), Some(&UserId::from("alice")));

    let stored = repos.sessions.get(&SessionId::from("s1")).await.expect("get").expect("exists");
    assert_eq!((stored.session.clone(), stored.token_hash.as_str()), (created.clone(), "hash-s1"));
    // A new session's token names it: there is no legacy digest to find it by.
    assert!(repos.sessions.get_by_legacy_token_hash("hash-s1").await.expect("by token").is_none());
    // A session from before is found by its legacy digest, which must match whole: no prefix, no case folding.
    mark_legacy(store, "s1").await;
    let by_token = repos.sessions.get_by_legacy_token_hash("hash-s1").await.expect("by token").expect("found");
    assert_eq!(by_token, created);
    assert!(repos.sessions.get_by_legacy_token_hash("hash-s").await.expect("by token").is_none());
    assert!(repos.sessions.get_by_legacy_token_hash("HASH-S1").await.expect("by token").is_none());
    assert!(repos.sessions.get(&SessionId::from("nope")).await.expect("get").is_none());
    assert_eq!(
        events(store, "session", "s1").await,
        vec![
            (1, "session.added".to_owned()),
            (2, "session.user.checked".to_owned()),
            (3, "session.password.checked".to_owned())
        ]
    );

    // The challenge was stored with the session.
    let consumed = repos.otp_challenges.consume(&SessionId::from("s1"), OtpKind::Sms, "code-1", now()).await;
    assert_eq!(consumed.expect("consume"), OtpConsume::Consumed);

    // Ids are unique. Token digests need not be: a token names its session, whose digest it is compared with.
    let mut twin = record.clone();
    twin.token_hash = "other".into();
    assert_err(repos.sessions.create(&twin, ACTOR).await, ErrorKind::Aborted, "STORE-sequence-mismatch");
    repos.sessions.create(&crate::session::record("s2", "c", "hash-s1"), ACTOR).await.expect("same digest");
    let twin = repos.sessions.get(&SessionId::from("s2")).await.expect("get").expect("exists");
    assert_eq!(twin.token_hash, "hash-s1");

    // A session without user, user agent or metadata.
    let bare = repos.sessions.create(&crate::session::record("s3", "c", "hash-s3"), ACTOR).await.expect("create");
    assert_eq!(
        (bare.factors, bare.user_agent, bare.metadata.len(), bare.expiration),
        (Factors::default(), None, 0, None)
    );
    let listed = repos.sessions.list(&[], &q(0, 100, true)).await.expect("list");
    assert_eq!((ids(&listed.items), listed.total), (vec!["s1".to_owned(), "s2".to_owned(), "s3".to_owned()], 3));
    assert_eq!(listed.items[0], created);
}

async fn list_filters_and_paging(store: &Store) {
    seed_user(store, "o1", "alice").await;
    seed_user(store, "o2", "bob").await;
    let repos = session::repos(store);
    let base = now();
    // s0..s5, created in this order; even ones by alice, odd ones by bob; fingerprints and expirations vary.
    let mut created = Vec::new();
    for i in 0..6 {
        let (user, org) = if i % 2 == 0 { ("alice", "o1") } else { ("bob", "o2") };
        let mut record = checked(&format!("s{i}"), &format!("creator-{}", i % 3), user, org);
        record.user_agent = Some(agent(&format!("fp-{}", i % 2)));
        record.state.expiration = (i < 4).then(|| base + Duration::minutes(i));
        created.push(repos.sessions.create(&record, ACTOR).await.expect("create"));
    }
    let anonymous = repos.sessions.create(&record("s6", "creator-0", "hash-s6"), ACTOR).await.expect("create");
    let all = |v: &[usize]| v.iter().map(|i| format!("s{i}")).collect::<Vec<_>>();
    let list = |filters: Vec<SessionFilter>| {
        let repos = repos.clone();
        async move { repos.sessions.list(&filters, &q(0, 100, true)).await.expect("list") }
    };

    assert_eq!(ids(&list(vec![]).await.items), all(&[0, 1, 2, 3, 4, 5, 6]));
    assert_eq!(
        ids(&list(vec![SessionFilter::Ids(vec!["s1".into(), "s4".into(), "x".into()])]).await.items),
        all(&[1, 4])
    );
    assert_eq!(list(vec![SessionFilter::Ids(vec![])]).await.total, 0);
    assert_eq!(ids(&list(vec![SessionFilter::UserId("bob".into())]).await.items), all(&[1, 3, 5]));
    assert_eq!(ids(&list(vec![SessionFilter::Creator(Some("creator-0".into()))]).await.items), all(&[0, 3, 6]));
    assert_eq!(list(vec![SessionFilter::Creator(None)]).await.total, 0);
    assert_eq!(ids(&list(vec![SessionFilter::UserAgentFingerprint(Some("fp-1".into()))]).await.items), all(&[1, 3, 5]));
    // Filters are ANDed.
    assert_eq!(
        ids(&list(vec![SessionFilter::UserId("alice".into()), SessionFilter::Creator(Some("creator-1".into()))])
            .await
            .items),
        all(&[4])
    );

    let pivot = created[2].details.creation_date;
    let creation = |method| vec![SessionFilter::CreationDate(pivot, method)];
    let before: Vec<usize> = (0..7).filter(|&i| session_created(&created, &anonymous, i) < pivot).collect();
    let same: Vec<usize> = (0..7).filter(|&i| session_created(&created, &anonymous, i) == pivot).collect();
    let after: Vec<usize> = (0..7).filter(|&i| session_created(&created, &anonymous, i) > pivot).collect();
    assert!(same.contains(&2));
    let join = |a: &[usize], b: &[usize]| {
        let mut v = [a, b].concat();
        v.sort_unstable();
        v
    };
    assert_eq!(ids(&list(creation(TimestampMethod::Equals)).await.items), all(&same));
    assert_eq!(ids(&list(creation(TimestampMethod::Less)).await.items), all(&before));
    assert_eq!(ids(&list(creation(TimestampMethod::LessOrEquals)).await.items), all(&join(&before, &same)));
    assert_eq!(ids(&list(creation(TimestampMethod::Greater)).await.items), all(&after));
    assert_eq!(ids(&list(creation(TimestampMethod::GreaterOrEquals)).await.items), all(&join(&same, &after)));

    // Expirations base+0..base+3 minutes on s0..s3; s4, s5 and s6 never expire and never match.
    let expiration = |method| vec![SessionFilter::ExpirationDate(base + Duration::minutes(1), method)];
    assert_eq!(ids(&list(expiration(TimestampMethod::Equals)).await.items), all(&[1]));
    assert_eq!(ids(&list(expiration(TimestampMethod::Greater)).await.items), all(&[2, 3]));
    assert_eq!(ids(&list(expiration(TimestampMethod::GreaterOrEquals)).await.items), all(&[1, 2, 3]));
    assert_eq!(ids(&list(expiration(TimestampMethod::Less)).await.items), all(&[0]));
    assert_eq!(ids(&list(expiration(TimestampMethod::LessOrEquals)).await.items), all(&[0, 1]));

    // What a caller without `session.read` may see: its own, its user's, and its orgs' users' sessions.
    let visible = |creator: &str, user: &str, orgs: &[&str]| {
        vec![SessionFilter::VisibleTo {
            creator: creator.to_owned(),
            user: UserId::from(user),
            orgs: orgs.iter().map(|o| OrgId::from(*o)).collect(),
        }]
    };
    assert_eq!(ids(&list(visible("creator-2", "nobody", &[])).await.items), all(&[2, 5]));
    assert_eq!(ids(&list(visible("creator-2", "bob", &[])).await.items), all(&[1, 2, 3, 5]));
    assert_eq!(ids(&list(visible("none", "nobody", &["o1"])).await.items), all(&[0, 2, 4]));

    // Sort and paging.
    let desc = repos.sessions.list(&[], &q(0, 3, false)).await.expect("list");
    assert_eq!((ids(&desc.items), desc.total), (all(&[6, 5, 4]), 7));
    let page = repos.sessions.list(&[], &q(2, 2, true)).await.expect("list");
    assert_eq!((ids(&page.items), page.total), (all(&[2, 3]), 7));
    let tail = repos.sessions.list(&[SessionFilter::UserId("bob".into())], &q(2, 2, false)).await.expect("list");
    assert_eq!((ids(&tail.items), tail.total), (all(&[1]), 3));

    // Terminated sessions are left out of every list.
    repos.sessions.terminate(&SessionId::from("s3"), None, ACTOR).await.expect("terminate");
    assert_eq!(ids(&list(vec![SessionFilter::UserId("bob".into())]).await.items), all(&[1, 5]));
    assert_eq!(list(vec![]).await.total, 6);
}

/// Creation date of `s{i}` (the anonymous one is number 6).
fn session_created(created: &[Session], anonymous: &Session, i: usize) -> DateTime<Utc> {
    created.get(i).unwrap_or(anonymous).details.creation_date
}

async fn token_rotation_and_expected_sequence(store: &Store) {
    seed_user(store, "o1", "alice").await;
    let repos = session::repos(store);
    let created = repos.sessions.create(&record("s1", "c", "token-1"), ACTOR).await.expect("create");
    repos.sessions.create(&record("s2", "c", "token-other"), ACTOR).await.expect("create");
    assert_eq!(created.details.sequence, 1);
    // Both hold tokens of before session ids were part of them.
    mark_legacy(store, "s1").await;
    mark_legacy(store, "s2").await;

    let at = now();
    let update = SessionUpdate {
        state: SessionState {
            factors: Factors { user: Some(user_factor("alice", "o1", at)), password: Some(at), ..Factors::default() },
            metadata: BTreeMap::from([("k".to_owned(), b"v".to_vec())]),
            expiration: Some(at + Duration::minutes(10)),
        },
        token_hash: "token-2".into(),
        challenges: vec![NewOtpChallenge {
            kind: OtpKind::Email,
            code_hash: "code".into(),
            expires_at: at + Duration::minutes(5),
        }],
        events: vec![event("session.user.checked"), event("session.password.checked")],
    };
    let changed =
        repos.sessions.apply(&SessionId::from("s1"), &read(&repos, "s1").await, &update, ACTOR).await.expect("apply");
    assert_eq!(changed.details.sequence, 3);
    assert_eq!(changed.details.creation_date, created.details.creation_date);
    assert_eq!(
        (changed.factors.clone(), changed.metadata.clone()),
        (update.state.factors.clone(), update.state.metadata.clone())
    );
    // The old token stops working with the change that replaced it, the legacy lookup included; the new
    // digest is never a legacy one. Other sessions keep theirs.
    let stored = repos.sessions.get(&SessionId::from("s1")).await.expect("get").expect("exists");
    assert_eq!((stored.session, stored.token_hash.as_str()), (changed.clone(), "token-2"));
    assert!(repos.sessions.get_by_legacy_token_hash("token-1").await.expect("old").is_none());
    assert!(repos.sessions.get_by_legacy_token_hash("token-2").await.expect("new").is_none());
    assert!(repos.sessions.get_by_legacy_token_hash("token-other").await.expect("other").is_some());

    // A stale sequence writes nothing.
    let mut stale = update.clone();
    stale.token_hash = "token-3".into();
    assert_err(
        repos.sessions.apply(&SessionId::from("s1"), &at_sequence(&changed.details, 1), &stale, ACTOR).await,
        ErrorKind::Aborted,
        "STORE-sequence-mismatch",
    );
    let stored = repos.sessions.get(&SessionId::from("s1")).await.expect("get").expect("exists");
    assert_eq!(stored.token_hash, "token-2");
    assert_eq!(events(store, "session", "s1").await.len(), 3);

    // Clearing factors, metadata and the expiration is stored as given.
    let cleared = SessionUpdate {
        state: SessionState::default(),
        token_hash: "token-4".into(),
        challenges: Vec::new(),
        events: vec![event("session.metadata.set")],
    };
    let after = repos.sessions.apply(&SessionId::from("s1"), &changed.details, &cleared, ACTOR).await.expect("apply");
    assert_eq!(
        (after.factors, after.metadata.len(), after.expiration, after.details.sequence),
        (Factors::default(), 0, None, 4)
    );

    assert_err(
        repos.sessions.apply(&SessionId::from("nope"), &at_sequence(&changed.details, 0), &cleared, ACTOR).await,
        ErrorKind::NotFound,
        "SESSION-not-found",
    );
}

async fn concurrent_changes_keep_the_sequence(store: &Store) {
    let repos = session::repos(store);
    repos.sessions.create(&record("s1", "c", "token-0"), ACTOR).await.expect("create");
    const WRITERS: usize = 20;
    let tasks = (0..WRITERS).map(|i| {
        let repos: SessionRepos = repos.clone();
        tokio::spawn(async move {
            let id = SessionId::from("s1");
            // Read-modify-write with the expected sequence, again after losing a race.
            for _ in 0..500 {
                let current = repos.sessions.get(&id).await.expect("get").expect("exists");
                let mut state = SessionState {
                    factors: current.session.factors.clone(),
                    metadata: current.session.metadata.clone(),
                    expiration: current.session.expiration,
                };
                state.metadata.insert(format!("writer-{i}"), vec![u8::try_from(i).expect("small")]);
                let update = SessionUpdate {
                    state,
                    token_hash: format!("token-{}", i + 1),
                    challenges: Vec::new(),
                    events: vec![event("session.metadata.set")],
                };
                match repos.sessions.apply(&id, &current.session.details, &update, ACTOR).await {
                    Ok(session) => return (session.details.sequence, i),
                    Err(err) if err.kind() == ErrorKind::Aborted => tokio::task::yield_now().await,
                    Err(err) => panic!("apply failed: {err}"),
                }
            }
            panic!("writer {i} never got its turn");
        })
    });
    let mut applied: Vec<(u64, usize)> =
        futures::future::join_all(tasks).await.into_iter().map(|r| r.expect("task")).collect();
    applied.sort_unstable();
    let sequences: Vec<u64> = applied.iter().map(|(sequence, _)| *sequence).collect();
    assert_eq!(sequences, (2..=21).collect::<Vec<u64>>());

    let log = events(store, "session", "s1").await;
    assert_eq!(log.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=21).collect::<Vec<u64>>());
    let last = repos.sessions.get(&SessionId::from("s1")).await.expect("get").expect("exists");
    assert_eq!(last.session.details.sequence, 21);
    // No lost update: every writer's key survived.
    assert_eq!(last.session.metadata.len(), WRITERS);
    // The token that works is the last writer's.
    let (_, last_writer) = applied.last().expect("writers");
    assert_eq!(last.token_hash, format!("token-{}", last_writer + 1));
}

async fn terminate_and_terminate_all_of_user(store: &Store) {
    seed_user(store, "o1", "alice").await;
    seed_user(store, "o1", "bob").await;
    let repos = session::repos(store);
    for (id, user) in [("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob")] {
        repos.sessions.create(&checked(id, "c", user, "o1"), ACTOR).await.expect("create");
    }
    let mut with_code = record("a4", "c", "hash-a4");
    with_code.challenges.push(NewOtpChallenge {
        kind: OtpKind::Sms,
        code_hash: "code".into(),
        expires_at: now() + Duration::minutes(5),
    });
    repos.sessions.create(&with_code, ACTOR).await.expect("create");
    mark_legacy(store, "a1").await;

    let details = repos
        .sessions
        .terminate(&SessionId::from("a1"), Some(&read(&repos, "a1").await), ACTOR)
        .await
        .expect("terminate");
    assert_eq!(details.sequence, 3);
    assert_eq!(details.resource_owner, "instance");
    // Idempotent: the same details, no second event.
    assert_eq!(repos.sessions.terminate(&SessionId::from("a1"), None, ACTOR).await.expect("again"), details);
    assert_eq!(
        events(store, "session", "a1").await,
        vec![
            (1, "session.added".to_owned()),
            (2, "session.user.checked".to_owned()),
            (3, "session.terminated".to_owned())
        ]
    );
    let stored = repos.sessions.get(&SessionId::from("a1")).await.expect("get").expect("kept");
    assert!(stored.session.terminated);
    assert_eq!(stored.session.details, details);
    // Still found by a legacy token, for the core to refuse as terminated.
    assert!(repos.sessions.get_by_legacy_token_hash("hash-a1").await.expect("lookup").expect("kept").terminated);
    assert_err(
        repos.sessions.terminate(&SessionId::from("nope"), None, ACTOR).await,
        ErrorKind::NotFound,
        "SESSION-not-found",
    );
    let update = SessionUpdate {
        state: SessionState::default(),
        token_hash: "x".into(),
        challenges: Vec::new(),
        events: vec![event("session.metadata.set")],
    };
    assert_err(
        repos.sessions.apply(&SessionId::from("a1"), &at_sequence(&read(&repos, "a1").await, 3), &update, ACTOR).await,
        ErrorKind::FailedPrecondition,
        "SESSION-terminated",
    );

    // Codes of a terminated session are gone with it.
    repos.sessions.terminate(&SessionId::from("a4"), Some(&read(&repos, "a4").await), ACTOR).await.expect("terminate");
    let code =
        repos.otp_challenges.consume(&SessionId::from("a4"), OtpKind::Sms, "code", now()).await.expect("consume");
    assert_eq!(code, OtpConsume::Missing);

    // Concurrent terminations of one session append one event.
    // Some start from what they read, some from nothing: either way one of them terminates.
    let seen = read(&repos, "a2").await;
    let racers = (0..6).map(|i| {
        let (repos, seen) = (repos.clone(), seen.clone());
        tokio::spawn(async move {
            let read = (i % 2 == 0).then_some(&seen);
            repos.sessions.terminate(&SessionId::from("a2"), read, ACTOR).await.expect("terminate")
        })
    });
    let answers: Vec<_> = futures::future::join_all(racers).await.into_iter().map(|r| r.expect("task")).collect();
    assert!(answers.iter().all(|d| d.sequence == 3), "{answers:?}");
    assert_eq!(events(store, "session", "a2").await.len(), 3);

    let n = repos.sessions.terminate_all_of_user(&UserId::from("alice"), ACTOR).await.expect("terminate all");
    assert_eq!(n, 1, "a1 and a2 were terminated already, a3 is left");
    assert_eq!(events(store, "session", "a3").await.last().map(|(_, t)| t.as_str()), Some("session.terminated"));
    assert!(!repos.sessions.get(&SessionId::from("b1")).await.expect("get").expect("exists").session.terminated);
    assert_eq!(repos.sessions.terminate_all_of_user(&UserId::from("alice"), ACTOR).await.expect("again"), 0);
    let left = repos.sessions.list(&[], &q(0, 100, true)).await.expect("list");
    assert_eq!(ids(&left.items), vec!["b1".to_owned()]);
}

async fn otp_codes_are_used_once(store: &Store) {
    let repos = session::repos(store);
    let at = now();
    let mut with_codes = record("s1", "c", "hash-s1");
    with_codes.challenges = vec![
        NewOtpChallenge { kind: OtpKind::Sms, code_hash: "sms-1".into(), expires_at: at + Duration::minutes(5) },
        NewOtpChallenge { kind: OtpKind::Email, code_hash: "mail-1".into(), expires_at: at + Duration::minutes(5) },
    ];
    repos.sessions.create(&with_codes, ACTOR).await.expect("create");
    let id = SessionId::from("s1");

    assert_eq!(
        repos.otp_challenges.consume(&id, OtpKind::Sms, "wrong", at).await.expect("consume"),
        OtpConsume::Mismatch
    );
    assert_eq!(
        repos.otp_challenges.consume(&id, OtpKind::Sms, "mail-1", at).await.expect("consume"),
        OtpConsume::Mismatch
    );
    assert_eq!(
        repos.otp_challenges.consume(&SessionId::from("s9"), OtpKind::Sms, "sms-1", at).await.expect("consume"),
        OtpConsume::Missing
    );
    let late = at + Duration::minutes(5);
    assert_eq!(
        repos.otp_challenges.consume(&id, OtpKind::Sms, "sms-1", late).await.expect("consume"),
        OtpConsume::Expired
    );

    // Twenty concurrent consumers of the right code: one wins.
    let consumers = (0..20).map(|_| {
        let repos = repos.clone();
        tokio::spawn(async move {
            repos.otp_challenges.consume(&SessionId::from("s1"), OtpKind::Sms, "sms-1", now()).await.expect("consume")
        })
    });
    let outcomes: Vec<OtpConsume> =
        futures::future::join_all(consumers).await.into_iter().map(|r| r.expect("task")).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == OtpConsume::Consumed).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(o, OtpConsume::Consumed | OtpConsume::Missing)), "{outcomes:?}");
    assert_eq!(
        repos.otp_challenges.consume(&id, OtpKind::Sms, "sms-1", now()).await.expect("consume"),
        OtpConsume::Missing
    );
    // The other channel is independent.
    assert_eq!(
        repos.otp_challenges.consume(&id, OtpKind::Email, "mail-1", now()).await.expect("consume"),
        OtpConsume::Consumed
    );

    // A new challenge replaces the used one, and the old code stays dead.
    let update = SessionUpdate {
        state: SessionState::default(),
        token_hash: "hash-s1b".into(),
        challenges: vec![NewOtpChallenge {
            kind: OtpKind::Sms,
            code_hash: "sms-2".into(),
            expires_at: now() + Duration::minutes(5),
        }],
        events: vec![event("session.otp.challenged")],
    };
    repos.sessions.apply(&id, &read(&repos, id.as_str()).await, &update, ACTOR).await.expect("apply");
    assert_eq!(
        repos.otp_challenges.consume(&id, OtpKind::Sms, "sms-1", now()).await.expect("consume"),
        OtpConsume::Mismatch
    );
    assert_eq!(
        repos.otp_challenges.consume(&id, OtpKind::Sms, "sms-2", now()).await.expect("consume"),
        OtpConsume::Consumed
    );
}

async fn concurrent_failures_count_to_the_limit_and_lock_once(store: &Store) {
    seed_user(store, "o1", "alice").await;
    let repos = session::repos(store);
    let users = identity::repos(store).users;
    const MAX: u32 = 5;
    // What the core does with each wrong password: count, and lock when this failure reached the limit.
    let attempts = (0..50).map(|_| {
        let (lockout, users) = (repos.lockout.clone(), users.clone());
        tokio::spawn(async move {
            let alice = UserId::from("alice");
            let outcome = lockout.record_failure(&alice, LockoutKind::Password, MAX).await.expect("record");
            if outcome.locked_now {
                users.set_state(&alice, UserStateChange::Lock, "lockout").await.expect("lock");
            }
            outcome
        })
    });
    let outcomes: Vec<_> = futures::future::join_all(attempts).await.into_iter().map(|r| r.expect("task")).collect();
    assert_eq!(outcomes.iter().filter(|o| o.locked_now).count(), 1);
    let mut counted: Vec<u32> = outcomes.iter().map(|o| o.failed_attempts).filter(|&n| n < MAX).collect();
    counted.sort_unstable();
    assert_eq!(counted, [1, 2, 3, 4], "each count below the limit is seen once");
    assert!(outcomes.iter().all(|o| o.failed_attempts <= MAX));
    let alice = UserId::from("alice");
    assert_eq!(repos.lockout.failed_attempts(&alice, LockoutKind::Password).await.expect("read"), MAX);
    assert_eq!(repos.lockout.failed_attempts(&alice, LockoutKind::Otp).await.expect("read"), 0);
    let user = identity::repos(store).users.get(&alice).await.expect("get").expect("exists");
    assert_eq!(user.state, UserState::Locked);
    let log = events(store, "user", "alice").await;
    assert_eq!(log.iter().filter(|(_, t)| t == "user.locked").count(), 1, "{log:?}");

    // Over the limit nothing counts any more.
    let over = repos.lockout.record_failure(&alice, LockoutKind::Password, MAX).await.expect("record");
    assert_eq!((over.failed_attempts, over.locked_now), (MAX, false));

    // The OTP counter is separate, and without a limit it keeps counting and never reports a lock.
    for expected in 1..=7 {
        let outcome = repos.lockout.record_failure(&alice, LockoutKind::Otp, 0).await.expect("record");
        assert_eq!((outcome.failed_attempts, outcome.locked_now), (expected, false));
    }
    let unknown = repos.lockout.record_failure(&UserId::from("nobody"), LockoutKind::Otp, 3).await.expect("record");
    assert_eq!((unknown.failed_attempts, unknown.locked_now), (0, false));
    assert_eq!(repos.lockout.failed_attempts(&UserId::from("nobody"), LockoutKind::Password).await.expect("read"), 0);
}

async fn lockout_counters_reset(store: &Store) {
    seed_user(store, "o1", "alice").await;
    let repos = session::repos(store);
    let users = identity::repos(store).users;
    let alice = UserId::from("alice");
    for _ in 0..3 {
        repos.lockout.record_failure(&alice, LockoutKind::Password, 3).await.expect("record");
        repos.lockout.record_failure(&alice, LockoutKind::Otp, 3).await.expect("record");
    }
    repos.lockout.reset(&alice, LockoutKind::Otp).await.expect("reset");
    assert_eq!(repos.lockout.failed_attempts(&alice, LockoutKind::Otp).await.expect("read"), 0);
    assert_eq!(repos.lockout.failed_attempts(&alice, LockoutKind::Password).await.expect("read"), 3);
    repos.lockout.reset(&UserId::from("nobody"), LockoutKind::Otp).await.expect("reset of an unknown user");

    // Unlocking starts both counters afresh, so the limit applies again.
    users.set_state(&alice, UserStateChange::Lock, ACTOR).await.expect("lock");
    repos.lockout.record_failure(&alice, LockoutKind::Otp, 3).await.expect("record");
    users.set_state(&alice, UserStateChange::Unlock, ACTOR).await.expect("unlock");
    assert_eq!(repos.lockout.failed_attempts(&alice, LockoutKind::Password).await.expect("read"), 0);
    assert_eq!(repos.lockout.failed_attempts(&alice, LockoutKind::Otp).await.expect("read"), 0);
    let again = repos.lockout.record_failure(&alice, LockoutKind::Password, 3).await.expect("record");
    assert_eq!((again.failed_attempts, again.locked_now), (1, false));
    // Other user changes leave the counters alone.
    users.set_state(&alice, UserStateChange::Deactivate, ACTOR).await.expect("deactivate");
    assert_eq!(repos.lockout.failed_attempts(&alice, LockoutKind::Password).await.expect("read"), 1);
}

async fn totp_registrations(store: &Store) {
    seed_user(store, "o1", "alice").await;
    let repos = session::repos(store);
    let alice = UserId::from("alice");
    assert!(repos.totp.get(&alice).await.expect("get").is_none());
    assert_err(
        repos.totp.put_unverified(&UserId::from("nobody"), "S", ACTOR).await,
        ErrorKind::NotFound,
        "USER-not-found",
    );
    assert_err(repos.totp.mark_verified(&alice, 1, ACTOR).await, ErrorKind::NotFound, "TOTP-not-found");
    assert_err(repos.totp.remove(&alice, ACTOR).await, ErrorKind::NotFound, "TOTP-not-found");
    assert!(!repos.totp.advance_step(&alice, 1).await.expect("advance without registration"));

    let added = repos.totp.put_unverified(&alice, "SECRET1", ACTOR).await.expect("put");
    assert_eq!((added.sequence, added.resource_owner.as_str()), (2, "o1"));
    // An unverified registration is replaced by the next one.
    repos.totp.put_unverified(&alice, "SECRET2", ACTOR).await.expect("put again");
    let got = repos.totp.get(&alice).await.expect("get").expect("registered");
    assert_eq!((got.secret.as_str(), got.verified, got.last_step), ("SECRET2", false, 0));
    let verified = repos.totp.mark_verified(&alice, 1000, ACTOR).await.expect("verify");
    assert_eq!(verified.sequence, 4);
    let got = repos.totp.get(&alice).await.expect("get").expect("registered");
    assert_eq!((got.verified, got.last_step), (true, 1000));
    // The user row carries the aggregate's latest change.
    let user = identity::repos(store).users.get(&alice).await.expect("get").expect("exists");
    assert_eq!(user.details.sequence, 4);

    // A step is accepted once, even by concurrent callers; older steps never again.
    assert!(!repos.totp.advance_step(&alice, 1000).await.expect("same step"));
    assert!(!repos.totp.advance_step(&alice, 999).await.expect("older step"));
    let racers = (0..10).map(|_| {
        let repos = repos.clone();
        tokio::spawn(async move { repos.totp.advance_step(&UserId::from("alice"), 1001).await.expect("advance") })
    });
    let won = futures::future::join_all(racers).await.into_iter().filter(|r| *r.as_ref().expect("task")).count();
    assert_eq!(won, 1);
    assert_eq!(repos.totp.get(&alice).await.expect("get").expect("registered").last_step, 1001);

    repos.totp.remove(&alice, ACTOR).await.expect("remove");
    assert!(repos.totp.get(&alice).await.expect("get").is_none());
    assert_eq!(
        events(store, "user", "alice").await.into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
        ["user.human.added", "user.totp.added", "user.totp.added", "user.totp.verified", "user.totp.removed"]
    );
    // Deleting the user takes a registration with it.
    repos.totp.put_unverified(&alice, "SECRET3", ACTOR).await.expect("put");
    identity::repos(store).users.delete(&alice, ACTOR).await.expect("delete user");
    assert!(repos.totp.get(&alice).await.expect("get").is_none());
}

/// On PostgreSQL every committed update or deletion of a session, user or org row is announced with its
/// id on the table's channel, and nothing is announced for a write that rolled back; SQLite has no listeners.
async fn changes_are_announced_to_listeners(store: &Store) {
    let Some(mut changes) = store.listen_changes().await.expect("listen") else {
        assert_eq!(store.backend(), Backend::Sqlite);
        return;
    };
    seed_user(store, "o1", "alice").await;
    let repos = session::repos(store);
    for id in ["n1", "n2", "n3"] {
        repos.sessions.create(&checked(id, "c", "alice", "o1"), ACTOR).await.expect("create");
    }
    // Creating announces nothing (a new id is in nobody's memory): the first announcement is the update.
    let mut state = SessionState::default();
    state.factors.user = Some(user_factor("alice", "o1", now()));
    let update = SessionUpdate {
        state,
        token_hash: "hash-n1-2".into(),
        challenges: Vec::new(),
        events: vec![event("session.metadata.set")],
    };
    repos.sessions.apply(&SessionId::from("n1"), &read(&repos, "n1").await, &update, ACTOR).await.expect("apply");
    assert_eq!(next(&mut changes).await, Change::Session("n1".into()));
    // A change that fails its sequence check rolls back: nothing to announce; the termination is next.
    assert!(
        repos
            .sessions
            .apply(&SessionId::from("n2"), &at_sequence(&read(&repos, "n2").await, 9), &update, ACTOR)
            .await
            .is_err()
    );
    repos.sessions.terminate(&SessionId::from("n2"), None, ACTOR).await.expect("terminate");
    assert_eq!(next(&mut changes).await, Change::Session("n2".into()));
    // Ending every session of a user announces each one it ended.
    repos.sessions.terminate_all_of_user(&UserId::from("alice"), ACTOR).await.expect("terminate all");
    let mut ended = vec![next(&mut changes).await, next(&mut changes).await];
    ended.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(ended, vec![Change::Session("n1".into()), Change::Session("n3".into())]);

    // Users and orgs: what replicas remember for sign-in checks. Creating announces nothing.
    seed_user(store, "o2", "bob").await;
    let identity = identity::repos(store);
    identity.users.set_state(&UserId::from("alice"), UserStateChange::Lock, ACTOR).await.expect("lock");
    assert_eq!(next(&mut changes).await, Change::User("alice".into()));
    // A refused change rolls back: nothing to announce; the org's deactivation is next.
    assert!(identity.users.set_state(&UserId::from("nobody"), UserStateChange::Lock, ACTOR).await.is_err());
    identity.orgs.set_state(&OrgId::from("o2"), OrgStateChange::Deactivate, ACTOR).await.expect("deactivate");
    assert_eq!(next(&mut changes).await, Change::Org("o2".into()));
    // Deleting an org takes its users with it, and each of them is announced.
    identity.orgs.delete(&OrgId::from("o2"), ACTOR).await.expect("delete org");
    let mut gone = vec![next(&mut changes).await, next(&mut changes).await];
    gone.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(gone, vec![Change::Org("o2".into()), Change::User("bob".into())]);
    identity.users.delete(&UserId::from("alice"), ACTOR).await.expect("delete user");
    assert_eq!(next(&mut changes).await, Change::User("alice".into()));

    // What a user's bearer tokens grant is announced as a change of the user: its tokens (a token write is
    // also a write on the user's aggregate, which touches the user row) and its memberships, instance-wide
    // ones included.
    seed_user(store, "o3", "carol").await;
    let carol = UserId::from("carol");
    let token = NewTokenRecord {
        id: TokenId::from("t-carol"),
        user_id: carol.clone(),
        token_hash: "hash-t-carol".into(),
        expiration: None,
    };
    identity.tokens.create(&token, ACTOR).await.expect("create token");
    assert_eq!(next(&mut changes).await, Change::User("carol".into()));
    let instance = MemberScope::Instance;
    identity.members.set(&carol, &instance, &[Role::IamOwner], ACTOR).await.expect("grant");
    assert_eq!(next(&mut changes).await, Change::User("carol".into()));
    identity.members.set(&carol, &instance, &[Role::IamLoginClient], ACTOR).await.expect("replace");
    assert_eq!(next(&mut changes).await, Change::User("carol".into()));
    identity.members.remove(&carol, &instance, ACTOR).await.expect("revoke");
    assert_eq!(next(&mut changes).await, Change::User("carol".into()));
    // A membership in an org is also a write on the org's aggregate, which touches (and announces) its row.
    let org = MemberScope::Org(OrgId::from("o3"));
    identity.members.set(&carol, &org, &[Role::OrgOwner], ACTOR).await.expect("grant in org");
    let mut both = vec![next(&mut changes).await, next(&mut changes).await];
    both.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(both, vec![Change::Org("o3".into()), Change::User("carol".into())]);
    identity.tokens.delete(&carol, &TokenId::from("t-carol"), ACTOR).await.expect("remove token");
    assert_eq!(next(&mut changes).await, Change::User("carol".into()));
    // Nothing else was announced on the way (each step above raised exactly one notification).
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), changes.next()).await.is_err(),
        "nothing more is announced"
    );
}

/// The next announced change, failing the test after ten seconds of silence.
async fn next(changes: &mut flowgate_store::Changes) -> Change {
    tokio::time::timeout(std::time::Duration::from_secs(10), changes.next()).await.expect("announced")
}
