//! The identity repositories against real databases: every scenario runs on SQLite (a temp dir) and, when
//! `FLOWGATE_TEST_DATABASE_URL` names a PostgreSQL server, on PostgreSQL too (a fresh database per test).

use chrono::Utc;
use flowgate_core::ErrorKind;
use flowgate_core::event::{AggregateRef, Details};
use flowgate_core::identity::ports::{
    BootstrapRecord, HumanChange, NewOrgRecord, NewTokenRecord, NewUserKind, NewUserRecord, OrgStateChange, Repos,
    UserStateChange,
};
use flowgate_core::identity::{
    Email, ListQuery, Machine, MemberScope, OrgFilter, OrgId, OrgState, Phone, Profile, Role, TextMethod, TokenId,
    UserFilter, UserId, UserKind, UserKindFilter, UserSort, UserState, org_primary_domain,
};
use flowgate_store::sea_orm::{ConnectionTrait, DbBackend, Statement};
use flowgate_store::{Backend, Store, identity};

use crate::common::scenarios;

scenarios!(
    config = crate::common::default_config, migrate = true;
    bootstrap_writes_everything_once,
    bootstrap_failure_writes_nothing,
    concurrent_bootstraps_create_one_instance,
    orgs_are_created_listed_and_filtered,
    org_names_and_domains_are_unique_ignoring_case,
    org_state_changes_are_recorded,
    users_are_created_listed_and_filtered,
    usernames_are_unique_ignoring_case,
    concurrent_creations_of_one_username,
    human_updates_and_passwords,
    user_state_and_delete,
    tokens_are_found_by_hash,
    memberships_are_set_listed_and_removed,
    org_delete_cascades,
);

const ACTOR: &str = "tester";

fn q(offset: u64, limit: u32, asc: bool) -> ListQuery {
    ListQuery { offset, limit, asc }
}

fn new_org(id: &str, name: &str) -> NewOrgRecord {
    NewOrgRecord { id: OrgId::from(id), name: name.to_owned(), primary_domain: org_primary_domain(name, "localhost") }
}

fn new_human(id: &str, org: &str, username: &str, email: &str) -> NewUserRecord {
    NewUserRecord {
        id: UserId::from(id),
        org_id: OrgId::from(org),
        username: username.to_owned(),
        kind: NewUserKind::Human {
            profile: Profile {
                given_name: "Given".into(),
                family_name: "Family".into(),
                display_name: format!("{username} display"),
                preferred_language: "en".into(),
            },
            email: Email { address: email.to_owned(), verified: false },
            phone: None,
            password_change_required: false,
        },
        idp_links: Vec::new(),
    }
}

fn new_machine(id: &str, org: &str, username: &str) -> NewUserRecord {
    NewUserRecord {
        id: UserId::from(id),
        org_id: OrgId::from(org),
        username: username.to_owned(),
        kind: NewUserKind::Machine(Machine { name: format!("{username} service"), description: "a robot".into() }),
        idp_links: Vec::new(),
    }
}

fn new_token(id: &str, user: &str, hash: &str) -> NewTokenRecord {
    NewTokenRecord {
        id: TokenId::from(id),
        user_id: UserId::from(user),
        token_hash: hash.to_owned(),
        expiration: Some(Utc::now() + chrono::Duration::days(1)),
    }
}

fn bootstrap_record(suffix: &str) -> BootstrapRecord {
    BootstrapRecord {
        org: new_org(&format!("org-{suffix}"), &format!("flowgate {suffix}")),
        admin: new_machine(&format!("admin-{suffix}"), &format!("org-{suffix}"), &format!("admin-{suffix}")),
        admin_roles: vec![Role::IamOwner],
        token: new_token(&format!("pat-{suffix}"), &format!("admin-{suffix}"), &format!("hash-{suffix}")),
    }
}

fn assert_err<T: std::fmt::Debug>(result: flowgate_core::Result<T>, kind: ErrorKind, id: &str) {
    let err = result.expect_err("must fail");
    assert_eq!((err.kind(), err.id()), (kind, id), "{err}");
}

/// Event types and sequences of an aggregate, oldest first.
async fn events(store: &Store, kind: &str, id: &str) -> Vec<(u64, String)> {
    let aggregate = AggregateRef { aggregate_type: kind.into(), aggregate_id: id.into() };
    store.events(&aggregate).await.expect("events").into_iter().map(|e| (e.sequence, e.event_type)).collect()
}

fn types(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|(s, t)| (*s, (*t).to_owned())).collect()
}

async fn count(store: &Store, table: &str) -> i64 {
    let backend = match store.backend() {
        Backend::Sqlite => DbBackend::Sqlite,
        Backend::Postgres => DbBackend::Postgres,
    };
    let row = store
        .reader()
        .query_one_raw(Statement::from_string(backend, format!("SELECT COUNT(*) AS n FROM {table}")))
        .await
        .expect("count")
        .expect("a row");
    row.try_get::<i64>("", "n").expect("n")
}

/// Every event payload of the whole log, as text, for secret checks.
async fn all_payloads(store: &Store) -> String {
    let backend = match store.backend() {
        Backend::Sqlite => DbBackend::Sqlite,
        Backend::Postgres => DbBackend::Postgres,
    };
    let rows = store
        .reader()
        .query_all_raw(Statement::from_string(backend, "SELECT CAST(payload AS TEXT) AS p FROM events".to_owned()))
        .await
        .expect("payloads");
    rows.iter().map(|r| r.try_get::<String>("", "p").expect("payload")).collect::<Vec<_>>().join("\n")
}

async fn seed_org(repos: &Repos, id: &str, name: &str) {
    repos.orgs.create(&new_org(id, name), ACTOR).await.expect("create org");
}

async fn bootstrap_writes_everything_once(store: &Store) {
    let repos = identity::repos(store);
    assert!(!repos.instance.exists().await.expect("exists"));
    let record = bootstrap_record("a");
    repos.instance.bootstrap(&record).await.expect("bootstrap");
    assert!(repos.instance.exists().await.expect("exists"));

    assert_eq!(events(store, "instance", "instance").await, types(&[(1, "instance.added"), (2, "member.added")]));
    assert_eq!(events(store, "org", "org-a").await, types(&[(1, "org.added")]));
    assert_eq!(events(store, "user", "admin-a").await, types(&[(1, "user.machine.added"), (2, "user.pat.added")]));

    let org = repos.orgs.get(&OrgId::from("org-a")).await.expect("get").expect("the default org");
    assert_eq!((org.name.as_str(), org.state, org.details.sequence), ("flowgate a", OrgState::Active, 1));
    let admin = repos.users.get(&UserId::from("admin-a")).await.expect("get").expect("the admin");
    assert!(admin.is_machine());
    assert_eq!(admin.details.sequence, 2);
    assert_eq!(admin.details.resource_owner, "org-a");
    assert_eq!(admin.preferred_login_name, "admin-a@flowgate-a.localhost");
    let owner = repos.tokens.find_by_hash("hash-a").await.expect("find").expect("the admin token");
    assert_eq!((owner.user.id.as_str(), owner.org_state), ("admin-a", OrgState::Active));
    let memberships = repos.members.of_user(&UserId::from("admin-a")).await.expect("of user");
    assert_eq!(memberships.len(), 1);
    assert_eq!(
        (memberships[0].scope.clone(), memberships[0].roles.clone()),
        (MemberScope::Instance, vec![Role::IamOwner])
    );
    assert_eq!(memberships[0].details.sequence, 2);

    // A second bootstrap, even with other ids, is refused and leaves nothing behind.
    assert_err(repos.instance.bootstrap(&bootstrap_record("b")).await, ErrorKind::AlreadyExists, "INSTANCE-exists");
    assert!(repos.orgs.get(&OrgId::from("org-b")).await.expect("get").is_none());
    assert!(repos.users.get(&UserId::from("admin-b")).await.expect("get").is_none());
    assert!(events(store, "org", "org-b").await.is_empty());
    assert_eq!(events(store, "instance", "instance").await.len(), 2);
    assert_eq!((count(store, "orgs").await, count(store, "users").await), (1, 1));
    assert_eq!((count(store, "personal_access_tokens").await, count(store, "members").await), (1, 1));
    assert!(!all_payloads(store).await.contains("hash-a"), "no token digest in events");
}

async fn bootstrap_failure_writes_nothing(store: &Store) {
    let repos = identity::repos(store);
    // An org with the default org's name makes the bootstrap fail after the instance row was inserted.
    seed_org(&repos, "taken", "FLOWGATE A").await;
    assert_err(repos.instance.bootstrap(&bootstrap_record("a")).await, ErrorKind::AlreadyExists, "ORG-name-taken");
    assert!(!repos.instance.exists().await.expect("exists"));
    assert!(events(store, "instance", "instance").await.is_empty());
    assert!(events(store, "org", "org-a").await.is_empty());
    assert!(events(store, "user", "admin-a").await.is_empty());
    assert_eq!((count(store, "orgs").await, count(store, "users").await), (1, 0));
    // Fixing the cause lets it succeed.
    repos.orgs.delete(&OrgId::from("taken"), ACTOR).await.expect("delete");
    repos.instance.bootstrap(&bootstrap_record("a")).await.expect("bootstrap");
}

async fn concurrent_bootstraps_create_one_instance(store: &Store) {
    let repos = identity::repos(store);
    let tries = (0..6).map(|i| {
        let instance = repos.instance.clone();
        tokio::spawn(async move { instance.bootstrap(&bootstrap_record(&i.to_string())).await })
    });
    let results = futures::future::join_all(tries).await;
    let mut ok = 0;
    for result in results {
        match result.expect("task") {
            Ok(()) => ok += 1,
            Err(err) => assert_eq!((err.kind(), err.id()), (ErrorKind::AlreadyExists, "INSTANCE-exists"), "{err}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!((count(store, "instance").await, count(store, "orgs").await, count(store, "users").await), (1, 1, 1));
    assert_eq!(events(store, "instance", "instance").await.len(), 2);
}

async fn orgs_are_created_listed_and_filtered(store: &Store) {
    let repos = identity::repos(store);
    let names = ["Acme", "acme labs", "Bravo", "50% off", "50x off", "under_score"];
    for (i, name) in names.iter().enumerate() {
        let org = repos.orgs.create(&new_org(&format!("o{i}"), name), ACTOR).await.expect("create");
        assert_eq!((org.name.as_str(), org.state, org.details.sequence), (*name, OrgState::Active, 1));
        assert_eq!(org.details.resource_owner, format!("o{i}"));
    }
    assert_eq!(events(store, "org", "o0").await, types(&[(1, "org.added")]));
    let got = repos.orgs.get(&OrgId::from("o2")).await.expect("get").expect("exists");
    assert_eq!((got.name.as_str(), got.primary_domain.as_str()), ("Bravo", "bravo.localhost"));
    assert!(repos.orgs.get(&OrgId::from("nope")).await.expect("get").is_none());

    let names_of = |page: flowgate_core::identity::Page<flowgate_core::identity::Organization>| {
        (page.items.into_iter().map(|o| o.name).collect::<Vec<_>>(), page.total)
    };
    let all = repos.orgs.list(&[], &q(0, 100, true)).await.expect("list");
    assert_eq!(names_of(all).1, 6);
    let page = repos.orgs.list(&[], &q(1, 2, true)).await.expect("page");
    assert_eq!(names_of(page), (vec!["acme labs".to_owned(), "Bravo".to_owned()], 6));
    let desc = repos.orgs.list(&[], &q(0, 1, false)).await.expect("desc");
    assert_eq!(names_of(desc), (vec!["under_score".to_owned()], 6));

    let filter = |text: &str, method| vec![OrgFilter::Name(text.to_owned(), method)];
    let cases: [(Vec<OrgFilter>, Vec<&str>); 10] = [
        (filter("acme", TextMethod::Equals), vec![]),
        (filter("acme", TextMethod::EqualsIgnoreCase), vec!["Acme"]),
        (filter("acme", TextMethod::StartsWith), vec!["acme labs"]),
        (filter("ACME", TextMethod::StartsWithIgnoreCase), vec!["Acme", "acme labs"]),
        (filter("% off", TextMethod::Contains), vec!["50% off"]),
        (filter("_", TextMethod::ContainsIgnoreCase), vec!["under_score"]),
        (filter("LABS", TextMethod::EndsWith), vec![]),
        (filter("LABS", TextMethod::EndsWithIgnoreCase), vec!["acme labs"]),
        (vec![OrgFilter::Domain("ACME.".into(), TextMethod::StartsWithIgnoreCase)], vec!["Acme"]),
        (
            vec![OrgFilter::Ids(vec!["o0".into(), "o1".into(), "o2".into()]), OrgFilter::Id("o1".into())],
            vec!["acme labs"],
        ),
    ];
    for (filters, expected) in cases {
        let (found, total) = names_of(repos.orgs.list(&filters, &q(0, 100, true)).await.expect("list"));
        assert_eq!(found, expected, "{filters:?}");
        assert_eq!(total, expected.len() as u64);
    }
    let none = repos.orgs.list(&[OrgFilter::Ids(Vec::new())], &q(0, 100, true)).await.expect("list");
    assert_eq!(none.total, 0);
}

async fn org_names_and_domains_are_unique_ignoring_case(store: &Store) {
    let repos = identity::repos(store);
    seed_org(&repos, "o1", "Acme Corp").await;
    assert_err(repos.orgs.create(&new_org("o2", "ACME CORP"), ACTOR).await, ErrorKind::AlreadyExists, "ORG-name-taken");
    assert_err(
        repos.orgs.create(&new_org("o3", "acme-corp"), ACTOR).await,
        ErrorKind::AlreadyExists,
        "ORG-domain-taken",
    );
    assert_err(repos.orgs.create(&new_org("o1", "Other"), ACTOR).await, ErrorKind::AlreadyExists, "ORG-id-taken");
    assert!(events(store, "org", "o2").await.is_empty());
    assert_eq!(count(store, "orgs").await, 1);
}

async fn org_state_changes_are_recorded(store: &Store) {
    let repos = identity::repos(store);
    seed_org(&repos, "o1", "Acme").await;
    seed_org(&repos, "o2", "Bravo").await;
    let id = OrgId::from("o1");
    let details = repos.orgs.set_state(&id, OrgStateChange::Deactivate, ACTOR).await.expect("deactivate");
    assert_eq!((details.sequence, details.resource_owner.as_str()), (2, "o1"));
    let org = repos.orgs.get(&id).await.expect("get").expect("exists");
    assert_eq!(org.state, OrgState::Inactive);
    assert_eq!(org.details, details);
    let inactive = repos.orgs.list(&[OrgFilter::State(OrgState::Inactive)], &q(0, 10, true)).await.expect("list");
    assert_eq!(inactive.items.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["o1"]);
    repos.orgs.set_state(&id, OrgStateChange::Reactivate, ACTOR).await.expect("reactivate");
    assert_eq!(
        events(store, "org", "o1").await,
        types(&[(1, "org.added"), (2, "org.deactivated"), (3, "org.reactivated")])
    );
    assert_err(
        repos.orgs.set_state(&OrgId::from("nope"), OrgStateChange::Deactivate, ACTOR).await,
        ErrorKind::NotFound,
        "ORG-not-found",
    );
    assert!(events(store, "org", "nope").await.is_empty());
}

async fn users_are_created_listed_and_filtered(store: &Store) {
    let repos = identity::repos(store);
    seed_org(&repos, "o1", "Acme").await;
    seed_org(&repos, "o2", "Bravo").await;
    let alice = repos
        .users
        .create(&new_human("u1", "o1", "Alice", "Alice@Example.com"), Some("$argon2id$secret-hash"), ACTOR)
        .await
        .expect("create");
    let UserKind::Human(human) = &alice.kind else { panic!("a human") };
    assert!(human.password_set && human.password_changed.is_some());
    assert_eq!(alice.login_names, ["Alice", "Alice@acme.localhost"]);
    assert_eq!((alice.details.sequence, alice.details.resource_owner.as_str()), (1, "o1"));
    repos.users.create(&new_human("u2", "o1", "alicia", "alicia@example.org"), None, ACTOR).await.expect("create");
    repos.users.create(&new_machine("u3", "o2", "robot_1"), None, ACTOR).await.expect("create");
    repos.users.create(&new_human("u4", "o2", "bob@example.com", "bob@example.com"), None, ACTOR).await.expect("c");
    assert_eq!(repos.users.get(&UserId::from("u1")).await.expect("get"), Some(alice.clone()));
    assert_eq!(events(store, "user", "u1").await, types(&[(1, "user.human.added")]));
    assert_eq!(events(store, "user", "u3").await, types(&[(1, "user.machine.added")]));
    assert!(!all_payloads(store).await.contains("secret-hash"), "no hash in events");
    assert_err(
        repos.users.create(&new_human("u9", "missing", "x", "x@example.com"), None, ACTOR).await,
        ErrorKind::NotFound,
        "ORG-not-found",
    );

    let ids = async |filters: &[UserFilter], sort: UserSort, query: ListQuery| {
        let page = repos.users.list(filters, sort, &query).await.expect("list");
        (page.items.into_iter().map(|u| u.id.into_string()).collect::<Vec<_>>(), page.total)
    };
    let all = q(0, 100, true);
    let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(ids(&[], UserSort::CreationDate, all).await, (s(&["u1", "u2", "u3", "u4"]), 4));
    assert_eq!(ids(&[], UserSort::CreationDate, q(1, 2, false)).await, (s(&["u3", "u2"]), 4));
    assert_eq!(ids(&[], UserSort::Username, all).await, (s(&["u1", "u2", "u4", "u3"]), 4));
    let name = |text: &str, method| UserFilter::Username(text.to_owned(), method);
    let cases: Vec<(Vec<UserFilter>, Vec<&str>)> = vec![
        (vec![name("alice", TextMethod::Equals)], vec![]),
        (vec![name("alice", TextMethod::EqualsIgnoreCase)], vec!["u1"]),
        (vec![name("Ali", TextMethod::StartsWith)], vec!["u1"]),
        (vec![name("ALI", TextMethod::StartsWithIgnoreCase)], vec!["u1", "u2"]),
        (vec![name("_", TextMethod::Contains)], vec!["u3"]),
        (vec![name("T_1", TextMethod::EndsWithIgnoreCase)], vec!["u3"]),
        (vec![UserFilter::Email("EXAMPLE.COM".into(), TextMethod::EndsWithIgnoreCase)], vec!["u1", "u4"]),
        (vec![UserFilter::Email("alice@example.com".into(), TextMethod::Equals)], vec![]),
        (vec![UserFilter::Org("o2".into())], vec!["u3", "u4"]),
        (vec![UserFilter::DisplayName("ALICE DISP".into(), TextMethod::StartsWithIgnoreCase)], vec!["u1"]),
        (vec![UserFilter::DisplayName("display".into(), TextMethod::EndsWith)], vec!["u1", "u2", "u4"]),
        (vec![UserFilter::DisplayName(String::new(), TextMethod::Contains)], vec!["u1", "u2", "u4"]),
        (vec![UserFilter::Kind(UserKindFilter::Machine)], vec!["u3"]),
        (vec![UserFilter::Kind(UserKindFilter::Human), UserFilter::Org("o2".into())], vec!["u4"]),
        (vec![UserFilter::State(UserState::Active), UserFilter::Ids(vec!["u2".into(), "u3".into()])], vec!["u2", "u3"]),
        (vec![UserFilter::Ids(Vec::new())], vec![]),
        (vec![UserFilter::Orgs(vec!["o1".into()])], vec!["u1", "u2"]),
        (vec![UserFilter::Orgs(Vec::new())], vec![]),
        (vec![UserFilter::LoginName("ALICE@acme.LOCALHOST".into())], vec!["u1"]),
        (vec![UserFilter::LoginName("alice@bravo.localhost".into())], vec![]),
        (vec![UserFilter::LoginName("BOB@example.com".into())], vec!["u4"]),
        (vec![UserFilter::LoginName("bob@example.com@bravo.localhost".into())], vec!["u4"]),
    ];
    for (filters, expected) in cases {
        let found = ids(&filters, UserSort::CreationDate, all).await;
        assert_eq!(found, (s(&expected), expected.len() as u64), "{filters:?}");
    }
    let found = repos.users.find_by_login_name("alicia@ACME.localhost").await.expect("find").expect("alicia");
    assert_eq!(found.id.as_str(), "u2");
    assert!(repos.users.find_by_login_name("nobody").await.expect("find").is_none());
}

async fn usernames_are_unique_ignoring_case(store: &Store) {
    let repos = identity::repos(store);
    seed_org(&repos, "o1", "Acme").await;
    seed_org(&repos, "o2", "Bravo").await;
    repos.users.create(&new_human("u1", "o1", "Zoë", "z@example.com"), None, ACTOR).await.expect("create");
    // Per instance, not per org; and beyond ASCII.
    assert_err(
        repos.users.create(&new_machine("u2", "o2", "ZOË"), None, ACTOR).await,
        ErrorKind::AlreadyExists,
        "USER-username-taken",
    );
    assert_err(
        repos.users.create(&new_machine("u1", "o2", "other"), None, ACTOR).await,
        ErrorKind::AlreadyExists,
        "USER-id-taken",
    );
    assert!(events(store, "user", "u2").await.is_empty());
    assert_eq!(events(store, "user", "u1").await.len(), 1);
    assert_eq!(count(store, "users").await, 1);
}

async fn concurrent_creations_of_one_username(store: &Store) {
    let repos = identity::repos(store);
    seed_org(&repos, "o1", "Acme").await;
    let creations = (0..50).map(|i| {
        let users = repos.users.clone();
        // Different ids and spellings: only the lower-cased username collides.
        let username = if i % 2 == 0 { "Racer" } else { "rACER" };
        let user = new_machine(&format!("u{i}"), "o1", username);
        tokio::spawn(async move { users.create(&user, None, ACTOR).await })
    });
    let results = futures::future::join_all(creations).await;
    let (mut created, mut taken) = (0, 0);
    for result in results {
        match result.expect("task") {
            Ok(_) => created += 1,
            Err(err) => {
                assert_eq!((err.kind(), err.id()), (ErrorKind::AlreadyExists, "USER-username-taken"), "{err}");
                taken += 1;
            }
        }
    }
    assert_eq!((created, taken), (1, 49));
    assert_eq!(count(store, "users").await, 1);
    let added = repos.users.list(&[], UserSort::CreationDate, &q(0, 100, true)).await.expect("list");
    assert_eq!(added.total, 1);
    let winner = &added.items[0].id;
    assert_eq!(events(store, "user", winner.as_str()).await.len(), 1);
    // Exactly one user event in the whole log besides the org's.
    assert_eq!(count(store, "events").await, 2);
}

async fn human_updates_and_passwords(store: &Store) {
    let repos = identity::repos(store);
    seed_org(&repos, "o1", "Acme").await;
    repos.users.create(&new_human("u1", "o1", "alice", "alice@example.com"), None, ACTOR).await.expect("create");
    repos.users.create(&new_human("u2", "o1", "bob", "bob@example.com"), None, ACTOR).await.expect("create");
    repos.users.create(&new_machine("m1", "o1", "robot"), None, ACTOR).await.expect("create");
    let id = UserId::from("u1");

    let change = HumanChange {
        username: Some("Alice2".into()),
        profile: Some(Profile {
            given_name: "A".into(),
            family_name: "L".into(),
            display_name: "A L".into(),
            preferred_language: "de-CH".into(),
        }),
        email: Some(Email { address: "New@Example.com".into(), verified: true }),
        phone: Some(Some(Phone { number: "+41790000000".into(), verified: true })),
    };
    let details = repos.users.update_human(&id, &change, ACTOR).await.expect("update");
    assert_eq!(details.sequence, 5);
    assert_eq!(
        events(store, "user", "u1").await,
        types(&[
            (1, "user.human.added"),
            (2, "user.username.changed"),
            (3, "user.profile.changed"),
            (4, "user.email.changed"),
            (5, "user.phone.changed"),
        ])
    );
    let user = repos.users.get(&id).await.expect("get").expect("exists");
    assert_eq!(user.username, "Alice2");
    assert_eq!(user.details, details);
    let UserKind::Human(human) = &user.kind else { panic!("a human") };
    assert_eq!(human.profile.preferred_language, "de-CH");
    assert_eq!(human.email, Email { address: "New@Example.com".into(), verified: true });
    assert_eq!(human.phone.as_ref().map(|p| p.verified), Some(true));
    let by_email = [UserFilter::Email("new@example.com".into(), TextMethod::EqualsIgnoreCase)];
    assert_eq!(repos.users.list(&by_email, UserSort::CreationDate, &q(0, 10, true)).await.expect("list").total, 1);

    let phone_removed = HumanChange { phone: Some(None), ..HumanChange::default() };
    repos.users.update_human(&id, &phone_removed, ACTOR).await.expect("remove phone");
    let user = repos.users.get(&id).await.expect("get").expect("exists");
    let UserKind::Human(human) = &user.kind else { panic!("a human") };
    assert_eq!(human.phone, None);

    let steal = HumanChange { username: Some("BOB".into()), ..HumanChange::default() };
    assert_err(repos.users.update_human(&id, &steal, ACTOR).await, ErrorKind::AlreadyExists, "USER-username-taken");
    assert_err(
        repos.users.update_human(&UserId::from("m1"), &steal, ACTOR).await,
        ErrorKind::FailedPrecondition,
        "USER-not-human",
    );
    assert_err(repos.users.update_human(&"nope".into(), &steal, ACTOR).await, ErrorKind::NotFound, "USER-not-found");
    assert_eq!(events(store, "user", "u1").await.len(), 6);
    // An empty change writes nothing and answers the current details.
    let unchanged = repos.users.update_human(&id, &HumanChange::default(), ACTOR).await.expect("no-op");
    assert_eq!(unchanged.sequence, 6);

    assert_eq!(repos.users.password_hash(&id).await.expect("hash"), None);
    let details = repos.users.set_password(&id, "$argon2id$v1", true, ACTOR).await.expect("set");
    assert_eq!(details.sequence, 7);
    assert_eq!(repos.users.password_hash(&id).await.expect("hash").as_deref(), Some("$argon2id$v1"));
    let user = repos.users.get(&id).await.expect("get").expect("exists");
    let UserKind::Human(human) = &user.kind else { panic!("a human") };
    assert!(human.password_set && human.password_change_required);
    assert_eq!(human.password_changed, Some(details.change_date));

    assert!(repos.users.replace_password_hash(&id, "$argon2id$v1", "$argon2id$v2", ACTOR).await.expect("rehash"));
    assert!(!repos.users.replace_password_hash(&id, "$argon2id$v1", "$argon2id$v3", ACTOR).await.expect("stale"));
    assert!(!repos.users.replace_password_hash(&"nope".into(), "a", "b", ACTOR).await.expect("unknown"));
    assert_eq!(repos.users.password_hash(&id).await.expect("hash").as_deref(), Some("$argon2id$v2"));
    let log = events(store, "user", "u1").await;
    assert_eq!(log[6..], types(&[(7, "user.password.changed"), (8, "user.password.rehashed")]));
    assert_eq!(repos.users.password_hash(&UserId::from("m1")).await.expect("machine"), None);
    assert!(!all_payloads(store).await.contains("$argon2id$"), "no hash in events");
    assert_err(
        repos.users.set_password(&"nope".into(), "h", false, ACTOR).await,
        ErrorKind::NotFound,
        "USER-not-found",
    );
}

async fn user_state_and_delete(store: &Store) {
    let repos = identity::repos(store);
    seed_org(&repos, "o1", "Acme").await;
    repos.users.create(&new_machine("m1", "o1", "robot"), None, ACTOR).await.expect("create");
    let id = UserId::from("m1");
    repos.tokens.create(&new_token("t1", "m1", "h1"), ACTOR).await.expect("token");
    repos.members.set(&id, &MemberScope::Org("o1".into()), &[Role::OrgOwner], ACTOR).await.expect("member");
    for (change, state) in [
        (UserStateChange::Deactivate, UserState::Inactive),
        (UserStateChange::Reactivate, UserState::Active),
        (UserStateChange::Lock, UserState::Locked),
        (UserStateChange::Unlock, UserState::Active),
    ] {
        let details = repos.users.set_state(&id, change, ACTOR).await.expect("state change");
        let user = repos.users.get(&id).await.expect("get").expect("exists");
        assert_eq!((user.state, user.details.sequence), (state, details.sequence));
    }
    let locked = [UserFilter::State(UserState::Locked)];
    assert_eq!(repos.users.list(&locked, UserSort::CreationDate, &q(0, 10, true)).await.expect("list").total, 0);

    let details = repos.users.delete(&id, ACTOR).await.expect("delete");
    assert_eq!(details.sequence, 7);
    assert_eq!(
        events(store, "user", "m1").await,
        types(&[
            (1, "user.machine.added"),
            (2, "user.pat.added"),
            (3, "user.deactivated"),
            (4, "user.reactivated"),
            (5, "user.locked"),
            (6, "user.unlocked"),
            (7, "user.removed"),
        ])
    );
    assert!(repos.users.get(&id).await.expect("get").is_none());
    assert!(repos.tokens.find_by_hash("h1").await.expect("find").is_none());
    assert!(repos.members.of_user(&id).await.expect("of user").is_empty());
    assert_err(repos.users.delete(&id, ACTOR).await, ErrorKind::NotFound, "USER-not-found");
    assert_err(repos.users.set_state(&id, UserStateChange::Lock, ACTOR).await, ErrorKind::NotFound, "USER-not-found");
    assert!(repos.orgs.get(&OrgId::from("o1")).await.expect("get").is_some());
}

async fn tokens_are_found_by_hash(store: &Store) {
    let repos = identity::repos(store);
    seed_org(&repos, "o1", "Acme").await;
    repos.users.create(&new_machine("m1", "o1", "robot"), None, ACTOR).await.expect("create");
    repos.users.create(&new_machine("m2", "o1", "robot2"), None, ACTOR).await.expect("create");
    let user = UserId::from("m1");
    let first = repos.tokens.create(&new_token("t1", "m1", "aa11"), ACTOR).await.expect("token");
    assert_eq!((first.details.sequence, first.details.resource_owner.as_str()), (2, "o1"));
    repos.tokens.create(&new_token("t2", "m1", "bb22"), ACTOR).await.expect("token");
    let user_row = repos.users.get(&user).await.expect("get").expect("exists");
    assert_eq!(user_row.details.sequence, 3, "the user row follows its aggregate");
    assert_err(
        repos.tokens.create(&new_token("t3", "m2", "aa11"), ACTOR).await,
        ErrorKind::AlreadyExists,
        "TOKEN-hash-taken",
    );
    assert_err(
        repos.tokens.create(&new_token("t4", "ghost", "cc33"), ACTOR).await,
        ErrorKind::NotFound,
        "USER-not-found",
    );

    let found = repos.tokens.find_by_hash("aa11").await.expect("find").expect("token");
    assert_eq!((found.token, found.user.id.as_str(), found.org_state), (first.clone(), "m1", OrgState::Active));
    // Exact match only: no prefix, case or wildcard tricks.
    for probe in ["aa1", "AA11", "aa1_", "aa1%", ""] {
        assert!(repos.tokens.find_by_hash(probe).await.expect("find").is_none(), "{probe}");
    }
    repos.orgs.set_state(&OrgId::from("o1"), OrgStateChange::Deactivate, ACTOR).await.expect("deactivate");
    let found = repos.tokens.find_by_hash("aa11").await.expect("find").expect("token");
    assert_eq!(found.org_state, OrgState::Inactive);

    let page = repos.tokens.list(&user, &q(0, 1, false)).await.expect("list");
    assert_eq!((page.items[0].id.as_str(), page.total), ("t2", 2));
    assert!(repos.tokens.list(&"ghost".into(), &q(0, 10, true)).await.expect("list").items.is_empty());

    assert_err(
        repos.tokens.delete(&UserId::from("m2"), &TokenId::from("t1"), ACTOR).await,
        ErrorKind::NotFound,
        "TOKEN-not-found",
    );
    let details = repos.tokens.delete(&user, &TokenId::from("t1"), ACTOR).await.expect("delete");
    assert_eq!(details.sequence, 4);
    assert!(repos.tokens.find_by_hash("aa11").await.expect("find").is_none());
    assert_eq!(
        events(store, "user", "m1").await,
        types(&[(1, "user.machine.added"), (2, "user.pat.added"), (3, "user.pat.added"), (4, "user.pat.removed")])
    );
    assert!(!all_payloads(store).await.contains("bb22"), "no digest in events");
}

async fn memberships_are_set_listed_and_removed(store: &Store) {
    let repos = identity::repos(store);
    seed_org(&repos, "o1", "Acme").await;
    for i in 1..=3 {
        repos.users.create(&new_machine(&format!("m{i}"), "o1", &format!("robot{i}")), None, ACTOR).await.expect("c");
    }
    let org = MemberScope::Org("o1".into());
    let (m1, m2) = (UserId::from("m1"), UserId::from("m2"));
    let details = repos.members.set(&m1, &org, &[Role::OrgOwner], ACTOR).await.expect("add");
    assert_eq!((details.sequence, details.resource_owner.as_str()), (2, "o1"));
    repos.members.set(&m2, &org, &[Role::OrgUserManager], ACTOR).await.expect("add");
    let changed = repos.members.set(&m1, &org, &[Role::OrgOwner, Role::OrgUserManager], ACTOR).await.expect("change");
    repos.members.set(&m1, &MemberScope::Instance, &[Role::IamLoginClient], ACTOR).await.expect("instance");
    assert_eq!(
        events(store, "org", "o1").await,
        types(&[(1, "org.added"), (2, "member.added"), (3, "member.added"), (4, "member.changed")])
    );
    assert_eq!(events(store, "instance", "instance").await, types(&[(1, "member.added")]));
    let org_row = repos.orgs.get(&OrgId::from("o1")).await.expect("get").expect("org");
    assert_eq!(org_row.details.sequence, 4, "the org row follows its aggregate");

    let page = repos.members.list(&org, &q(0, 10, true)).await.expect("list");
    assert_eq!(page.total, 2);
    let first = &page.items[0];
    assert_eq!((first.user_id.as_str(), first.roles.clone()), ("m1", vec![Role::OrgOwner, Role::OrgUserManager]));
    assert_eq!(first.details, Details { creation_date: details.change_date, ..changed });
    let page = repos.members.list(&org, &q(1, 1, true)).await.expect("page");
    assert_eq!((page.items.len(), page.items[0].user_id.as_str(), page.total), (1, "m2", 2));
    let instance = repos.members.list(&MemberScope::Instance, &q(0, 10, true)).await.expect("list");
    assert_eq!(instance.items.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(), ["m1"]);
    assert_eq!(repos.members.of_user(&m1).await.expect("of user").len(), 2);

    assert_err(
        repos.members.set(&"ghost".into(), &org, &[Role::OrgOwner], ACTOR).await,
        ErrorKind::NotFound,
        "USER-not-found",
    );
    assert_err(
        repos.members.set(&m1, &MemberScope::Org("nope".into()), &[Role::OrgOwner], ACTOR).await,
        ErrorKind::NotFound,
        "ORG-not-found",
    );
    repos.members.remove(&m2, &org, ACTOR).await.expect("remove");
    assert_err(repos.members.remove(&m2, &org, ACTOR).await, ErrorKind::NotFound, "MEMBER-not-found");
    assert_eq!(repos.members.list(&org, &q(0, 10, true)).await.expect("list").total, 1);
    assert_eq!(events(store, "org", "o1").await.last().map(|e| e.1.as_str()), Some("member.removed"));

    // Concurrent sets of one membership: all succeed, one added, the rest changed, one row.
    let sets = (0..8).map(|_| {
        let members = repos.members.clone();
        let scope = org.clone();
        tokio::spawn(async move { members.set(&UserId::from("m3"), &scope, &[Role::OrgOwner], ACTOR).await })
    });
    for result in futures::future::join_all(sets).await {
        result.expect("task").expect("set");
    }
    let log = events(store, "org", "o1").await;
    let added = log.iter().filter(|(_, t)| t == "member.added").count();
    assert_eq!((added, log.len()), (3, 13));
    assert_eq!(repos.members.list(&org, &q(0, 10, true)).await.expect("list").total, 2);
}

async fn org_delete_cascades(store: &Store) {
    let repos = identity::repos(store);
    seed_org(&repos, "o1", "Acme").await;
    seed_org(&repos, "o2", "Bravo").await;
    repos.users.create(&new_machine("a1", "o1", "acme-bot"), None, ACTOR).await.expect("create");
    repos
        .users
        .create(&new_human("a2", "o1", "acme-human", "h@acme.test"), Some("$argon2id$x"), ACTOR)
        .await
        .expect("c");
    repos.users.create(&new_machine("b1", "o2", "bravo-bot"), None, ACTOR).await.expect("create");
    repos.tokens.create(&new_token("ta", "a1", "hash-a"), ACTOR).await.expect("token");
    repos.tokens.create(&new_token("tb", "b1", "hash-b"), ACTOR).await.expect("token");
    let o1 = MemberScope::Org("o1".into());
    let o2 = MemberScope::Org("o2".into());
    repos.members.set(&"a1".into(), &o1, &[Role::OrgOwner], ACTOR).await.expect("member");
    repos.members.set(&"a1".into(), &MemberScope::Instance, &[Role::IamOwner], ACTOR).await.expect("member");
    repos.members.set(&"a2".into(), &o2, &[Role::OrgUserManager], ACTOR).await.expect("member");
    repos.members.set(&"b1".into(), &o1, &[Role::OrgUserManager], ACTOR).await.expect("member");
    repos.members.set(&"b1".into(), &o2, &[Role::OrgOwner], ACTOR).await.expect("member");

    let details = repos.orgs.delete(&OrgId::from("o1"), ACTOR).await.expect("delete");
    assert_eq!((details.resource_owner.as_str(), details.sequence), ("o1", 4));
    assert_eq!(events(store, "org", "o1").await.last().map(|e| e.1.clone()), Some("org.removed".to_owned()));
    assert!(repos.orgs.get(&OrgId::from("o1")).await.expect("get").is_none());
    assert!(repos.users.get(&"a1".into()).await.expect("get").is_none());
    assert!(repos.users.get(&"a2".into()).await.expect("get").is_none());
    assert!(repos.tokens.find_by_hash("hash-a").await.expect("find").is_none());
    assert!(repos.members.list(&o1, &q(0, 10, true)).await.expect("list").items.is_empty());
    assert!(repos.members.list(&MemberScope::Instance, &q(0, 10, true)).await.expect("list").items.is_empty());
    // The other org keeps its user, token and own memberships, minus the deleted org's users.
    assert!(repos.users.get(&"b1".into()).await.expect("get").is_some());
    assert!(repos.tokens.find_by_hash("hash-b").await.expect("find").is_some());
    let o2_members = repos.members.list(&o2, &q(0, 10, true)).await.expect("list");
    assert_eq!(o2_members.items.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(), ["b1"]);
    assert_eq!(repos.members.of_user(&"b1".into()).await.expect("of user").len(), 1);
    assert_eq!((count(store, "users").await, count(store, "personal_access_tokens").await), (1, 1));
    assert_eq!(count(store, "members").await, 1);
    assert_err(repos.orgs.delete(&OrgId::from("o1"), ACTOR).await, ErrorKind::NotFound, "ORG-not-found");
    // The name is free again.
    repos.orgs.create(&new_org("o3", "ACME"), ACTOR).await.expect("reuse the name");
}
