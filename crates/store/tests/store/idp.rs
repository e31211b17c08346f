//! The IdP repositories against real databases: every scenario runs on SQLite (a temp dir) and, when
//! `FLOWGATE_TEST_DATABASE_URL` names a PostgreSQL server, on PostgreSQL too (a fresh database per test).

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use flowgate_core::ErrorKind;
use flowgate_core::event::AggregateRef;
use flowgate_core::identity::ports::{NewOrgRecord, NewUserIdpLink, NewUserKind, NewUserRecord, USER_NOT_FOUND};
use flowgate_core::identity::{Email, ListQuery, OrgId, Profile, TextMethod, UserId, org_primary_domain};
use flowgate_core::idp::ports::{
    IDP_LINK_EXISTS, IDP_LINK_NOT_FOUND, IDP_NOT_FOUND, IdpRepos, IdpStateChange, IdpUpdate, IntentSuccess,
    NewIdpRecord, NewIntentRecord,
};
use flowgate_core::idp::{
    ExternalProfile, IdpFilter, IdpId, IdpKind, IdpLink, IdpState, IdpTemplate, IdpType, IntentFailure, IntentId,
    IntentState, LdapAttributes, LdapConfig, OAuthConfig, OidcConfig, ProviderOptions, Sealed, StoredExternalUser,
};
use flowgate_store::{Store, identity, idp};
use serde_json::json;

use crate::common::scenarios;

scenarios!(
    config = crate::common::default_config, migrate = true;
    idps_round_trip_and_change,
    idp_list_filters_and_paging,
    deleting_an_idp_removes_its_links_and_intents,
    intent_transitions_happen_once,
    parallel_consumes_of_one_intent_succeed_once,
    parallel_success_and_failure_of_one_intent_decide_once,
    links_are_added_found_listed_and_removed,
    parallel_links_of_one_account_succeed_once,
    users_are_created_with_their_links_in_one_write,
    removing_a_user_or_its_org_removes_its_links,
    expired_intents_are_purged,
);

const ACTOR: &str = "tester";

fn q(offset: u64, limit: u32, asc: bool) -> ListQuery {
    ListQuery { offset, limit, asc }
}

fn assert_err<T: std::fmt::Debug>(result: flowgate_core::Result<T>, kind: ErrorKind, id: &str) {
    let err = result.expect_err("must fail");
    assert_eq!((err.kind(), err.id()), (kind, id), "{err}");
}

/// Event types of an aggregate, oldest first.
async fn event_types(store: &Store, kind: &str, id: &str) -> Vec<String> {
    let aggregate = AggregateRef { aggregate_type: kind.into(), aggregate_id: id.into() };
    store.events(&aggregate).await.expect("events").into_iter().map(|e| e.event_type).collect()
}

/// All event payloads of an aggregate, as one text.
async fn payload_text(store: &Store, kind: &str, id: &str) -> String {
    let aggregate = AggregateRef { aggregate_type: kind.into(), aggregate_id: id.into() };
    let events = store.events(&aggregate).await.expect("events");
    events.iter().map(|e| e.payload.to_string()).collect::<Vec<_>>().join("\n")
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn oidc(issuer: &str, template: Option<IdpTemplate>) -> IdpKind {
    IdpKind::Oidc(OidcConfig {
        issuer: issuer.to_owned(),
        client_id: "client-oidc".into(),
        client_secret: Sealed::from_stored("v1.SEALED-oidc-secret".into()),
        scopes: vec!["openid".into(), "email".into()],
        is_id_token_mapping: true,
        use_pkce: true,
        template,
    })
}

fn oauth(template: Option<IdpTemplate>) -> IdpKind {
    IdpKind::OAuth(OAuthConfig {
        authorization_endpoint: "https://oauth.example/authorize".into(),
        token_endpoint: "https://oauth.example/token".into(),
        user_endpoint: "https://oauth.example/user".into(),
        client_id: "client-oauth".into(),
        client_secret: Sealed::from_stored("v1.SEALED-oauth-secret".into()),
        scopes: vec!["read:user".into()],
        id_attribute: "id".into(),
        use_pkce: false,
        template,
    })
}

fn ldap() -> IdpKind {
    IdpKind::Ldap(LdapConfig {
        servers: vec!["ldaps://ldap.example:636".into(), "ldap://ldap2.example".into()],
        start_tls: true,
        tls_verify: false,
        root_ca_pem: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()),
        base_dn: "dc=example,dc=test".into(),
        bind_dn: "cn=service,dc=example,dc=test".into(),
        bind_password: Sealed::from_stored("v1.SEALED-bind-password".into()),
        user_base: "ou=people,dc=example,dc=test".into(),
        user_object_classes: vec!["inetOrgPerson".into()],
        user_filters: vec!["uid".into(), "mail".into()],
        timeout: StdDuration::from_millis(7_500),
        attributes: LdapAttributes {
            id_attribute: "uid".into(),
            first_name_attribute: "givenName".into(),
            last_name_attribute: "sn".into(),
            email_attribute: "mail".into(),
            ..LdapAttributes::default()
        },
    })
}

fn linking() -> ProviderOptions {
    ProviderOptions {
        is_linking_allowed: true,
        is_creation_allowed: true,
        is_auto_creation: false,
        is_auto_update: true,
    }
}

async fn add_idp(repos: &IdpRepos, id: &str, name: &str, kind: IdpKind) -> flowgate_core::idp::Idp {
    let record = NewIdpRecord { id: IdpId::from(id), name: name.to_owned(), options: linking(), kind };
    repos.idps.create(&record, ACTOR).await.expect("create IdP")
}

/// An org `org` (created when missing) with one human user `user` in it.
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
    repos.users.create(&human(org, user, Vec::new()), None, ACTOR).await.expect("create user");
}

fn human(org: &str, user: &str, idp_links: Vec<NewUserIdpLink>) -> NewUserRecord {
    NewUserRecord {
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
        idp_links,
    }
}

fn link(idp: &str, user: &str, external: &str) -> IdpLink {
    IdpLink {
        idp_id: IdpId::from(idp),
        user_id: UserId::from(user),
        external_user_id: external.to_owned(),
        external_username: format!("{external}-name"),
    }
}

fn started(id: &str, idp: &str, at: DateTime<Utc>, lifetime: Duration) -> NewIntentRecord {
    NewIntentRecord {
        id: IntentId::from(id),
        idp_id: IdpId::from(idp),
        success_url: Some("https://app.example/ok?x=1".into()),
        failure_url: Some("https://app.example/failed".into()),
        pkce_verifier: Some(Sealed::from_stored("v1.SEALED-verifier".into())),
        nonce: Some("nonce-1".into()),
        created_at: at,
        expires_at: at + lifetime,
    }
}

fn external(id: &str) -> StoredExternalUser {
    StoredExternalUser {
        id: id.to_owned(),
        username: format!("{id}@idp"),
        raw: json!({ "sub": id, "nested": { "list": [1, 2, 3] } }),
        access_token: Some(Sealed::from_stored("v1.SEALED-access-token".into())),
        id_token: None,
        ldap_attributes: Some(BTreeMap::from([("uid".to_owned(), vec![id.to_owned()])])),
        profile: ExternalProfile {
            email: Some(format!("{id}@example.com")),
            email_verified: true,
            given_name: Some("Ext".into()),
            ..ExternalProfile::default()
        },
    }
}

fn success(external_id: &str, user: Option<&str>, at: DateTime<Utc>, lifetime: Duration) -> IntentSuccess {
    IntentSuccess {
        token_hash: format!("hash-of-{external_id}"),
        external: external(external_id),
        user_id: user.map(UserId::from),
        succeeded_at: at,
        expires_at: at + lifetime,
    }
}

async fn idps_round_trip_and_change(store: &Store) {
    let repos = idp::repos(store);
    let mut created = Vec::new();
    for (id, name, kind) in [
        ("i-oidc", "Generic OIDC", oidc("https://issuer.example", None)),
        ("i-github", "GitHub", oauth(Some(IdpTemplate::GitHub))),
        ("i-ldap", "Directory", ldap()),
    ] {
        let idp = add_idp(&repos, id, name, kind.clone()).await;
        assert_eq!((idp.id.as_str(), idp.name.as_str(), idp.state), (id, name, IdpState::Active));
        assert_eq!((&idp.kind, idp.options), (&kind, linking()));
        assert_eq!((idp.details.sequence, idp.details.resource_owner.as_str()), (1, "instance"));
        // What is read back equals what the create answered, sealed secrets included.
        assert_eq!(repos.idps.get(&idp.id).await.expect("get"), Some(idp.clone()));
        created.push(idp);
    }
    assert_eq!(repos.idps.get(&IdpId::from("missing")).await.expect("get"), None);
    let record = NewIdpRecord { id: IdpId::from("i-oidc"), name: "again".into(), options: linking(), kind: ldap() };
    assert_err(repos.idps.create(&record, ACTOR).await, ErrorKind::AlreadyExists, idp::IDP_ID_TAKEN);

    let id = IdpId::from("i-oidc");
    let update = IdpUpdate {
        name: "Renamed".into(),
        options: ProviderOptions::default(),
        kind: oidc("https://other.example", Some(IdpTemplate::Google)),
    };
    assert_err(repos.idps.update(&id, 7, &update, ACTOR).await, ErrorKind::Aborted, "STORE-sequence-mismatch");
    let details = repos.idps.update(&id, 1, &update, ACTOR).await.expect("update");
    assert_eq!(details.sequence, 2);
    assert_eq!(details.creation_date, created[0].details.creation_date);
    let read = repos.idps.get(&id).await.expect("get").expect("exists");
    assert_eq!((read.name.as_str(), read.options, &read.kind), ("Renamed", ProviderOptions::default(), &update.kind));
    assert_eq!(read.details, details);
    assert_err(repos.idps.update(&IdpId::from("missing"), 1, &update, ACTOR).await, ErrorKind::NotFound, IDP_NOT_FOUND);

    let details = repos.idps.set_state(&id, IdpStateChange::Deactivate, ACTOR).await.expect("deactivate");
    assert_eq!(details.sequence, 3);
    assert_eq!(repos.idps.get(&id).await.expect("get").map(|i| i.state), Some(IdpState::Inactive));
    repos.idps.set_state(&id, IdpStateChange::Reactivate, ACTOR).await.expect("reactivate");
    assert_eq!(repos.idps.get(&id).await.expect("get").map(|i| i.state), Some(IdpState::Active));
    assert_err(
        repos.idps.set_state(&IdpId::from("missing"), IdpStateChange::Deactivate, ACTOR).await,
        ErrorKind::NotFound,
        IDP_NOT_FOUND,
    );
    assert_eq!(
        event_types(store, "idp", "i-oidc").await,
        ["idp.added", "idp.changed", "idp.deactivated", "idp.reactivated"]
    );
    for id in ["i-oidc", "i-github", "i-ldap"] {
        let text = payload_text(store, "idp", id).await;
        assert!(!text.contains("SEALED"), "{id}: {text}");
    }
    assert!(payload_text(store, "idp", "i-github").await.contains("\"type\":\"github\""));
}

async fn idp_list_filters_and_paging(store: &Store) {
    let repos = idp::repos(store);
    let kinds = [
        ("a1", "Alpha OIDC", oidc("https://a.example", None)),
        ("a2", "alpha github", oauth(Some(IdpTemplate::GitHub))),
        ("a3", "Beta OAuth", oauth(None)),
        ("a4", "Google", oidc("https://accounts.google.com", Some(IdpTemplate::Google))),
        ("a5", "LDAP 100%_*", ldap()),
    ];
    for (id, name, kind) in kinds {
        add_idp(&repos, id, name, kind).await;
    }
    let ids = |page: flowgate_core::identity::Page<flowgate_core::idp::Idp>| {
        (page.items.into_iter().map(|i| i.id.into_string()).collect::<Vec<_>>(), page.total)
    };
    let all = repos.idps.list(&[], &q(0, 100, true)).await.expect("list");
    assert_eq!(ids(all), (vec!["a1".into(), "a2".into(), "a3".into(), "a4".into(), "a5".into()], 5));
    let desc = repos.idps.list(&[], &q(1, 2, false)).await.expect("list");
    assert_eq!(ids(desc), (vec!["a4".into(), "a3".into()], 5));
    let beyond = repos.idps.list(&[], &q(10, 2, true)).await.expect("list");
    assert_eq!(ids(beyond), (Vec::new(), 5));

    let cases: Vec<(Vec<IdpFilter>, Vec<&str>)> = vec![
        (vec![IdpFilter::Type(IdpType::Oidc)], vec!["a1"]),
        (vec![IdpFilter::Type(IdpType::Google)], vec!["a4"]),
        (vec![IdpFilter::Type(IdpType::OAuth)], vec!["a3"]),
        (vec![IdpFilter::Type(IdpType::GitHub)], vec!["a2"]),
        (vec![IdpFilter::Type(IdpType::Ldap)], vec!["a5"]),
        (vec![IdpFilter::Name("Alpha".into(), TextMethod::StartsWith)], vec!["a1"]),
        (vec![IdpFilter::Name("alpha".into(), TextMethod::StartsWithIgnoreCase)], vec!["a1", "a2"]),
        (vec![IdpFilter::Name("OAUTH".into(), TextMethod::ContainsIgnoreCase)], vec!["a3"]),
        (vec![IdpFilter::Name("google".into(), TextMethod::Equals)], vec![]),
        (vec![IdpFilter::Name("google".into(), TextMethod::EqualsIgnoreCase)], vec!["a4"]),
        (vec![IdpFilter::Name("github".into(), TextMethod::EndsWith)], vec!["a2"]),
        // Wildcards of LIKE and GLOB in the needle match only themselves.
        (vec![IdpFilter::Name("%_*".into(), TextMethod::EndsWith)], vec!["a5"]),
        (vec![IdpFilter::Name("_".into(), TextMethod::Contains)], vec!["a5"]),
        (
            vec![IdpFilter::Name("alpha".into(), TextMethod::ContainsIgnoreCase), IdpFilter::Type(IdpType::GitHub)],
            vec!["a2"],
        ),
    ];
    for (filters, expected) in cases {
        let page = repos.idps.list(&filters, &q(0, 100, true)).await.expect("list");
        let found: Vec<String> = page.items.iter().map(|i| i.id.as_str().to_owned()).collect();
        assert_eq!(found, expected, "{filters:?}");
        assert_eq!(page.total, expected.len() as u64, "{filters:?}");
    }
}

async fn deleting_an_idp_removes_its_links_and_intents(store: &Store) {
    let repos = idp::repos(store);
    add_idp(&repos, "gone", "Gone", oidc("https://gone.example", None)).await;
    add_idp(&repos, "kept", "Kept", ldap()).await;
    seed_user(store, "o1", "alice").await;
    for idp_id in ["gone", "kept"] {
        repos.links.add(&link(idp_id, "alice", "ext-a"), ACTOR).await.expect("link");
        let intent = format!("intent-{idp_id}");
        repos.intents.create(&started(&intent, idp_id, now(), Duration::minutes(10)), ACTOR).await.expect("intent");
    }

    let details = repos.idps.delete(&IdpId::from("gone"), ACTOR).await.expect("delete");
    assert_eq!(details.sequence, 2);
    assert_eq!(repos.idps.get(&IdpId::from("gone")).await.expect("get"), None);
    assert_eq!(repos.links.find(&IdpId::from("gone"), "ext-a").await.expect("find"), None);
    assert_eq!(repos.intents.get(&IntentId::from("intent-gone")).await.expect("get"), None);
    // The other IdP keeps everything.
    assert!(repos.links.find(&IdpId::from("kept"), "ext-a").await.expect("find").is_some());
    assert!(repos.intents.get(&IntentId::from("intent-kept")).await.expect("get").is_some());
    let page = repos.links.list(&UserId::from("alice"), &q(0, 100, true)).await.expect("list");
    assert_eq!(page.items, vec![link("kept", "alice", "ext-a")]);
    assert_eq!(event_types(store, "idp", "gone").await, ["idp.added", "idp.removed"]);

    assert_err(repos.idps.delete(&IdpId::from("gone"), ACTOR).await, ErrorKind::NotFound, IDP_NOT_FOUND);
    // An update with the sequence read before the removal says NotFound, not a sequence mismatch.
    let update = IdpUpdate { name: "x".into(), options: linking(), kind: ldap() };
    assert_err(repos.idps.update(&IdpId::from("gone"), 1, &update, ACTOR).await, ErrorKind::NotFound, IDP_NOT_FOUND);
}

async fn intent_transitions_happen_once(store: &Store) {
    let repos = idp::repos(store);
    add_idp(&repos, "p", "P", oidc("https://p.example", None)).await;
    let at = now();
    assert_err(
        repos.intents.create(&started("orphan", "missing", at, Duration::minutes(10)), ACTOR).await,
        ErrorKind::NotFound,
        IDP_NOT_FOUND,
    );
    assert_eq!(repos.intents.get(&IntentId::from("orphan")).await.expect("get"), None);

    let record = started("i1", "p", at, Duration::minutes(10));
    let details = repos.intents.create(&record, ACTOR).await.expect("create");
    assert_eq!((details.sequence, details.creation_date, details.resource_owner.as_str()), (1, at, "instance"));
    assert_err(repos.intents.create(&record, ACTOR).await, ErrorKind::AlreadyExists, idp::INTENT_ID_TAKEN);
    let intent = repos.intents.get(&record.id).await.expect("get").expect("exists");
    assert_eq!(intent.state, IntentState::Started);
    assert_eq!((intent.idp_id.as_str(), intent.created_at, intent.expires_at), ("p", at, at + Duration::minutes(10)));
    assert_eq!((intent.success_url, intent.failure_url), (record.success_url.clone(), record.failure_url.clone()));
    assert_eq!((intent.pkce_verifier, intent.nonce), (record.pkce_verifier.clone(), record.nonce.clone()));
    assert_eq!((intent.token_hash, intent.external, intent.user_id, intent.failure), (None, None, None, None));
    assert_eq!(intent.details, details);

    // Not succeeded yet: nothing to consume.
    assert!(!repos.intents.consume(&record.id, ACTOR).await.expect("consume"));
    let done = now();
    let win = success("ext-1", Some("someone"), done, Duration::hours(1));
    let details = repos.intents.succeed(&record.id, &win, ACTOR).await.expect("succeed").expect("was started");
    assert_eq!((details.sequence, details.creation_date), (2, at));
    let intent = repos.intents.get(&record.id).await.expect("get").expect("exists");
    assert_eq!(intent.state, IntentState::Succeeded);
    assert_eq!(intent.token_hash.as_deref(), Some("hash-of-ext-1"));
    assert_eq!(intent.external, Some(external("ext-1")));
    assert_eq!(intent.user_id, Some(UserId::from("someone")));
    assert_eq!((intent.succeeded_at, intent.expires_at), (Some(done), done + Duration::hours(1)));
    assert_eq!(intent.details, details);
    // A second callback, or a late failure, changes nothing.
    assert_eq!(
        repos
            .intents
            .succeed(&record.id, &success("ext-2", None, now(), Duration::hours(1)), ACTOR)
            .await
            .expect("succeed"),
        None
    );
    let failure = IntentFailure { error: "access_denied".into(), description: "no".into() };
    assert_eq!(repos.intents.fail(&record.id, &failure, ACTOR).await.expect("fail"), None);
    assert_eq!(repos.intents.get(&record.id).await.expect("get").map(|i| i.external), Some(Some(external("ext-1"))));

    assert!(repos.intents.consume(&record.id, ACTOR).await.expect("consume"));
    assert!(!repos.intents.consume(&record.id, ACTOR).await.expect("consume again"));
    let intent = repos.intents.get(&record.id).await.expect("get").expect("exists");
    assert_eq!((intent.state, intent.details.sequence), (IntentState::Consumed, 3));
    assert_eq!(
        event_types(store, "idp_intent", "i1").await,
        ["idp.intent.started", "idp.intent.succeeded", "idp.intent.consumed"]
    );
    let text = payload_text(store, "idp_intent", "i1").await;
    for secret in ["SEALED", "hash-of", "nonce-1"] {
        assert!(!text.contains(secret), "{secret}: {text}");
    }

    // A failure is stored once, on a started intent only.
    repos.intents.create(&started("i2", "p", now(), Duration::minutes(10)), ACTOR).await.expect("create");
    let details = repos.intents.fail(&IntentId::from("i2"), &failure, ACTOR).await.expect("fail").expect("was started");
    assert_eq!(details.sequence, 2);
    let intent = repos.intents.get(&IntentId::from("i2")).await.expect("get").expect("exists");
    assert_eq!((intent.state, intent.failure), (IntentState::Failed, Some(failure.clone())));
    assert_eq!(repos.intents.succeed(&IntentId::from("i2"), &win, ACTOR).await.expect("succeed"), None);
    assert!(!repos.intents.consume(&IntentId::from("i2"), ACTOR).await.expect("consume"));
    assert_eq!(event_types(store, "idp_intent", "i2").await, ["idp.intent.started", "idp.intent.failed"]);

    // A succeeded intent past its lifetime is never consumed.
    repos.intents.create(&started("i3", "p", now(), Duration::minutes(10)), ACTOR).await.expect("create");
    let expired = success("ext-3", None, now() - Duration::hours(2), Duration::hours(1));
    repos.intents.succeed(&IntentId::from("i3"), &expired, ACTOR).await.expect("succeed").expect("was started");
    assert!(!repos.intents.consume(&IntentId::from("i3"), ACTOR).await.expect("consume"));
    assert_eq!(
        repos.intents.get(&IntentId::from("i3")).await.expect("get").map(|i| i.state),
        Some(IntentState::Succeeded)
    );

    // Missing intents: nothing happens, nothing is recorded.
    let missing = IntentId::from("missing");
    assert_eq!(repos.intents.succeed(&missing, &win, ACTOR).await.expect("succeed"), None);
    assert_eq!(repos.intents.fail(&missing, &failure, ACTOR).await.expect("fail"), None);
    assert!(!repos.intents.consume(&missing, ACTOR).await.expect("consume"));
    assert!(event_types(store, "idp_intent", "missing").await.is_empty());
}

async fn parallel_consumes_of_one_intent_succeed_once(store: &Store) {
    let repos = idp::repos(store);
    add_idp(&repos, "p", "P", oidc("https://p.example", None)).await;
    let id = IntentId::from("contested");
    repos.intents.create(&started(id.as_str(), "p", now(), Duration::minutes(10)), ACTOR).await.expect("create");
    let win = success("ext", None, now(), Duration::hours(1));
    repos.intents.succeed(&id, &win, ACTOR).await.expect("succeed").expect("was started");

    let attempts = (0..50).map(|_| {
        let (intents, id) = (repos.intents.clone(), id.clone());
        tokio::spawn(async move { intents.consume(&id, "checker").await.expect("consume") })
    });
    let results: Vec<bool> = futures::future::join_all(attempts).await.into_iter().map(|r| r.expect("task")).collect();
    assert_eq!(results.iter().filter(|&&consumed| consumed).count(), 1, "{results:?}");
    let log = event_types(store, "idp_intent", id.as_str()).await;
    assert_eq!(log, ["idp.intent.started", "idp.intent.succeeded", "idp.intent.consumed"]);
    assert_eq!(repos.intents.get(&id).await.expect("get").map(|i| i.state), Some(IntentState::Consumed));
}

async fn parallel_success_and_failure_of_one_intent_decide_once(store: &Store) {
    let repos = idp::repos(store);
    add_idp(&repos, "p", "P", oauth(None)).await;
    let id = IntentId::from("raced");
    repos.intents.create(&started(id.as_str(), "p", now(), Duration::minutes(10)), ACTOR).await.expect("create");
    // Replayed callbacks: some report success (each with its own account), some failure.
    let attempts = (0..20).map(|n| {
        let (intents, id) = (repos.intents.clone(), id.clone());
        tokio::spawn(async move {
            let written = if n % 2 == 0 {
                let win = success(&format!("ext-{n}"), None, now(), Duration::hours(1));
                intents.succeed(&id, &win, "callback").await
            } else {
                let failure = IntentFailure { error: format!("e{n}"), description: String::new() };
                intents.fail(&id, &failure, "callback").await
            };
            (n, written.expect("write").is_some())
        })
    });
    let results: Vec<(i32, bool)> =
        futures::future::join_all(attempts).await.into_iter().map(|r| r.expect("task")).collect();
    let winners: Vec<i32> = results.iter().filter(|(_, won)| *won).map(|(n, _)| *n).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let intent = repos.intents.get(&id).await.expect("get").expect("exists");
    let winner = winners[0];
    if winner % 2 == 0 {
        assert_eq!(intent.state, IntentState::Succeeded);
        assert_eq!(intent.external.map(|e| e.id), Some(format!("ext-{winner}")));
    } else {
        assert_eq!(intent.state, IntentState::Failed);
        assert_eq!(intent.failure.map(|f| f.error), Some(format!("e{winner}")));
    }
    assert_eq!(event_types(store, "idp_intent", id.as_str()).await.len(), 2);
}

async fn links_are_added_found_listed_and_removed(store: &Store) {
    let repos = idp::repos(store);
    let users = identity::repos(store).users;
    add_idp(&repos, "p1", "P1", oidc("https://p1.example", None)).await;
    add_idp(&repos, "p2", "P2", ldap()).await;
    seed_user(store, "o1", "alice").await;
    seed_user(store, "o1", "bob").await;
    let alice = UserId::from("alice");
    let before = users.get(&alice).await.expect("get").expect("exists").details;

    let details = repos.links.add(&link("p1", "alice", "a-1"), ACTOR).await.expect("link");
    assert_eq!((details.sequence, details.resource_owner.as_str()), (before.sequence + 1, "o1"));
    assert_eq!(details.creation_date, before.creation_date);
    // The user's own details follow the aggregate.
    assert_eq!(users.get(&alice).await.expect("get").expect("exists").details, details);
    for (idp_id, external) in [("p2", "a-2"), ("p1", "a-3")] {
        repos.links.add(&link(idp_id, "alice", external), ACTOR).await.expect("link");
    }
    repos.links.add(&link("p2", "bob", "b-1"), ACTOR).await.expect("link");

    assert_eq!(repos.links.find(&IdpId::from("p1"), "a-1").await.expect("find"), Some(link("p1", "alice", "a-1")));
    assert_eq!(repos.links.find(&IdpId::from("p2"), "a-1").await.expect("find"), None);

    // Taken by anyone, the same account cannot be linked again.
    assert_err(repos.links.add(&link("p1", "alice", "a-1"), ACTOR).await, ErrorKind::AlreadyExists, IDP_LINK_EXISTS);
    assert_err(repos.links.add(&link("p1", "bob", "a-1"), ACTOR).await, ErrorKind::AlreadyExists, IDP_LINK_EXISTS);
    // The same external id at another IdP is another account.
    repos.links.add(&link("p2", "bob", "a-1"), ACTOR).await.expect("other IdP");
    assert_err(repos.links.add(&link("p1", "nobody", "x"), ACTOR).await, ErrorKind::NotFound, USER_NOT_FOUND);
    assert_err(repos.links.add(&link("missing", "alice", "x"), ACTOR).await, ErrorKind::NotFound, IDP_NOT_FOUND);

    let externals = |page: flowgate_core::identity::Page<IdpLink>| {
        (page.items.into_iter().map(|l| l.external_user_id).collect::<Vec<_>>(), page.total)
    };
    let page = repos.links.list(&alice, &q(0, 100, true)).await.expect("list");
    assert_eq!(externals(page), (vec!["a-1".into(), "a-2".into(), "a-3".into()], 3));
    let page = repos.links.list(&alice, &q(0, 2, false)).await.expect("list");
    assert_eq!(externals(page), (vec!["a-3".into(), "a-2".into()], 3));
    let page = repos.links.list(&alice, &q(2, 2, false)).await.expect("list");
    assert_eq!(externals(page), (vec!["a-1".into()], 3));
    let page = repos.links.list(&UserId::from("nobody"), &q(0, 10, true)).await.expect("list");
    assert_eq!(externals(page), (Vec::new(), 0));

    // Only the owner's link is removed.
    let p1 = IdpId::from("p1");
    assert_err(
        repos.links.remove(&UserId::from("bob"), &p1, "a-1", ACTOR).await,
        ErrorKind::NotFound,
        IDP_LINK_NOT_FOUND,
    );
    assert_err(
        repos.links.remove(&UserId::from("nobody"), &p1, "a-1", ACTOR).await,
        ErrorKind::NotFound,
        IDP_LINK_NOT_FOUND,
    );
    let details = repos.links.remove(&alice, &p1, "a-1", ACTOR).await.expect("remove");
    assert_eq!(users.get(&alice).await.expect("get").expect("exists").details, details);
    assert_eq!(repos.links.find(&p1, "a-1").await.expect("find"), None);
    assert_err(repos.links.remove(&alice, &p1, "a-1", ACTOR).await, ErrorKind::NotFound, IDP_LINK_NOT_FOUND);
    // Freed, the account can be linked to someone else.
    repos.links.add(&link("p1", "bob", "a-1"), ACTOR).await.expect("relink");

    let log = event_types(store, "user", "alice").await;
    assert_eq!(
        log,
        [
            "user.human.added",
            "user.idp.link.added",
            "user.idp.link.added",
            "user.idp.link.added",
            "user.idp.link.removed"
        ]
    );
}

async fn parallel_links_of_one_account_succeed_once(store: &Store) {
    let repos = idp::repos(store);
    add_idp(&repos, "p", "P", oidc("https://p.example", None)).await;
    let names: Vec<String> = (0..12).map(|n| format!("u{n}")).collect();
    for name in &names {
        seed_user(store, "o1", name).await;
    }
    // Each user on its own aggregate, so nothing serializes them but the key of the link table.
    let attempts = names.iter().map(|name| {
        let (links, name) = (repos.links.clone(), name.clone());
        tokio::spawn(async move { (name.clone(), links.add(&link("p", &name, "shared"), "linker").await) })
    });
    let results: Vec<_> = futures::future::join_all(attempts).await.into_iter().map(|r| r.expect("task")).collect();
    let mut winners = Vec::new();
    for (name, result) in results {
        match result {
            Ok(_) => winners.push(name),
            Err(err) => assert_eq!((err.kind(), err.id()), (ErrorKind::AlreadyExists, IDP_LINK_EXISTS), "{err}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let found = repos.links.find(&IdpId::from("p"), "shared").await.expect("find").expect("linked");
    assert_eq!(found.user_id.as_str(), winners[0]);
    for name in &names {
        let added = event_types(store, "user", name).await.iter().filter(|t| *t == "user.idp.link.added").count();
        assert_eq!(added, usize::from(*name == winners[0]), "{name}");
    }
}

async fn users_are_created_with_their_links_in_one_write(store: &Store) {
    let repos = idp::repos(store);
    let users = identity::repos(store).users;
    add_idp(&repos, "p1", "P1", oidc("https://p1.example", None)).await;
    add_idp(&repos, "p2", "P2", oauth(Some(IdpTemplate::GitHub))).await;
    seed_user(store, "o1", "holder").await;
    repos.links.add(&link("p2", "holder", "taken"), ACTOR).await.expect("link");

    let new_link = |idp: &str, external: &str| NewUserIdpLink {
        idp_id: IdpId::from(idp),
        external_user_id: external.to_owned(),
        external_username: format!("{external}-name"),
    };
    let record = human("o1", "carol", vec![new_link("p1", "c-1"), new_link("p2", "c-2")]);
    let user = users.create(&record, Some("$argon2id$fake"), ACTOR).await.expect("create");
    assert_eq!(user.details.sequence, 3);
    let page = repos.links.list(&user.id, &q(0, 10, true)).await.expect("list");
    let mut found: Vec<(String, String, String)> =
        page.items.into_iter().map(|l| (l.idp_id.into_string(), l.external_user_id, l.external_username)).collect();
    found.sort();
    assert_eq!(found, [("p1".into(), "c-1".into(), "c-1-name".into()), ("p2".into(), "c-2".into(), "c-2-name".into())]);
    assert_eq!(
        event_types(store, "user", "carol").await,
        ["user.human.added", "user.idp.link.added", "user.idp.link.added"]
    );
    assert!(payload_text(store, "user", "carol").await.contains("\"external_user_id\":\"c-2\""));

    // A taken account or a missing IdP refuses the whole user.
    let record = human("o1", "dave", vec![new_link("p1", "d-1"), new_link("p2", "taken")]);
    assert_err(users.create(&record, None, ACTOR).await, ErrorKind::AlreadyExists, IDP_LINK_EXISTS);
    let record = human("o1", "erin", vec![new_link("missing", "e-1")]);
    assert_err(users.create(&record, None, ACTOR).await, ErrorKind::NotFound, IDP_NOT_FOUND);
    for name in ["dave", "erin"] {
        assert_eq!(users.get(&UserId::from(name)).await.expect("get"), None, "{name}");
        assert!(event_types(store, "user", name).await.is_empty(), "{name}");
    }
    assert_eq!(repos.links.find(&IdpId::from("p1"), "d-1").await.expect("find"), None);
    // The refused users' usernames stay free.
    users.create(&human("o1", "dave", Vec::new()), None, ACTOR).await.expect("create without links");
}

async fn removing_a_user_or_its_org_removes_its_links(store: &Store) {
    let repos = idp::repos(store);
    let identity = identity::repos(store);
    add_idp(&repos, "p", "P", oidc("https://p.example", None)).await;
    seed_user(store, "o1", "alice").await;
    seed_user(store, "o1", "bob").await;
    seed_user(store, "o2", "carol").await;
    for (user, external) in [("alice", "a"), ("bob", "b"), ("carol", "c")] {
        repos.links.add(&link("p", user, external), ACTOR).await.expect("link");
    }

    identity.users.delete(&UserId::from("alice"), ACTOR).await.expect("delete user");
    assert_eq!(repos.links.find(&IdpId::from("p"), "a").await.expect("find"), None);
    assert!(repos.links.find(&IdpId::from("p"), "b").await.expect("find").is_some());
    // The account is free again: a new user may link it.
    seed_user(store, "o2", "alice2").await;
    repos.links.add(&link("p", "alice2", "a"), ACTOR).await.expect("relink");

    identity.orgs.delete(&OrgId::from("o1"), ACTOR).await.expect("delete org");
    assert_eq!(repos.links.find(&IdpId::from("p"), "b").await.expect("find"), None);
    let page = repos.links.list(&UserId::from("carol"), &q(0, 10, true)).await.expect("list");
    assert_eq!(page.items, vec![link("p", "carol", "c")]);
    assert!(repos.links.find(&IdpId::from("p"), "a").await.expect("find").is_some());
}

async fn expired_intents_are_purged(store: &Store) {
    let repos = idp::repos(store);
    add_idp(&repos, "p", "Purge", oidc("https://purge.example", None)).await;
    let t = now();
    // Started two hours ago with a ten-minute lifetime: long expired. Started now: still running.
    repos
        .intents
        .create(&started("old-1", "p", t - Duration::hours(2), Duration::minutes(10)), ACTOR)
        .await
        .expect("old");
    repos
        .intents
        .create(&started("old-2", "p", t - Duration::hours(3), Duration::minutes(10)), ACTOR)
        .await
        .expect("old");
    repos.intents.create(&started("fresh", "p", t, Duration::minutes(10)), ACTOR).await.expect("fresh");

    assert_eq!(repos.intents.purge_expired(t - Duration::hours(1)).await.expect("purge"), 2);
    assert_eq!(repos.intents.get(&IntentId::from("old-1")).await.expect("get"), None);
    assert_eq!(repos.intents.get(&IntentId::from("old-2")).await.expect("get"), None);
    assert!(repos.intents.get(&IntentId::from("fresh")).await.expect("get").is_some());
    // Nothing left to purge; the purged intents' events stay in the log.
    assert_eq!(repos.intents.purge_expired(t - Duration::hours(1)).await.expect("purge"), 0);
    assert_eq!(event_types(store, "idp_intent", "old-1").await, ["idp.intent.started"]);
}
