//! The flow-definition repositories against real databases: every scenario runs on SQLite and, when
//! `FLOWGATE_TEST_DATABASE_URL` names a PostgreSQL server, on PostgreSQL too (a fresh database per test).

use flowgate_core::ErrorKind;
use flowgate_core::event::AggregateRef;
use flowgate_core::flow::ports::{
    BINDING_NOT_FOUND, BINDING_TAKEN, FLOW_NOT_FOUND, FLOW_SLUG_TAKEN, FlowRepos, ImportChange, ImportWrite,
    NewBinding, NewFlow, NewPolicy, NewPolicyBinding, NewStage, POLICY_BINDING_NOT_FOUND, POLICY_BINDING_TAKEN,
    POLICY_NAME_TAKEN, POLICY_NOT_FOUND, STAGE_NAME_TAKEN, STAGE_NOT_FOUND, StageRewrite, events,
};
use flowgate_core::flow::{
    Authentication, BindingFilter, BindingOrder, BindingSpec, DeniedAction, Designation, Flow, FlowFilter, FlowOrder,
    FlowSpec, IdentificationConfig, InvalidResponseAction, Layout, Ordering, PageRequest, PasswordConfig, PbmId,
    PolicyBindingFilter, PolicyBindingOrder, PolicyBindingSpec, PolicyEngineMode, PolicyFilter, PolicyOrder,
    PolicySpec, PromptConfig, Slug, StageConfig, StageFilter, StageOrder, StageSpec, StageType,
};
use flowgate_core::identity::OrgId;
use flowgate_core::identity::ports::NewOrgRecord;
use flowgate_store::flow::FLOW_REFERENCE_MISSING;
use flowgate_store::sea_orm::{ConnectionTrait, DbBackend, Statement};
use flowgate_store::{Backend, Store, flow, identity};

use crate::common::scenarios;

scenarios!(
    config = crate::common::default_config, migrate = true;
    flows_are_created_read_and_updated,
    flow_slugs_are_unique_per_org,
    concurrent_creations_of_one_slug,
    flows_are_filtered_searched_ordered_and_paged,
    stages_keep_their_typed_configuration,
    stage_and_policy_names_are_unique_per_org,
    bindings_are_unique_and_checked,
    bindings_are_filtered_searched_and_ordered,
    policy_bindings_target_flows_and_bindings,
    flow_delete_cascades_and_rewrites_links,
    stage_policy_and_binding_deletes_cascade,
    import_writes_every_change_in_one_transaction,
    failing_import_writes_nothing,
    org_delete_removes_flow_definitions,
);

const ACTOR: &str = "tester";
const ORG: &str = "org-a";
const OTHER_ORG: &str = "org-b";

fn org() -> OrgId {
    OrgId::from(ORG)
}

fn other() -> OrgId {
    OrgId::from(OTHER_ORG)
}

fn all(limit: u32) -> PageRequest {
    PageRequest { offset: 0, limit }
}

fn asc<F>(field: F) -> Ordering<F> {
    Ordering { field, descending: false }
}

fn desc<F>(field: F) -> Ordering<F> {
    Ordering { field, descending: true }
}

async fn setup(store: &Store) -> FlowRepos {
    let identity = identity::repos(store);
    for (id, name) in [(ORG, "Acme"), (OTHER_ORG, "Bravo")] {
        let org = NewOrgRecord { id: id.into(), name: name.into(), primary_domain: format!("{id}.localhost") };
        identity.orgs.create(&org, ACTOR).await.expect("create org");
    }
    flow::repos(store)
}

fn flow_spec(slug: &str, name: &str, designation: Designation) -> FlowSpec {
    FlowSpec {
        name: name.to_owned(),
        slug: Slug::parse(slug).expect("slug"),
        title: format!("{name} title"),
        designation,
        layout: Layout::Stacked,
        background: None,
        compatibility_mode: false,
        denied_action: DeniedAction::MessageContinue,
        authentication: Authentication::None,
        policy_engine_mode: PolicyEngineMode::Any,
    }
}

fn new_flow(org: &OrgId, id: &str, slug: &str, name: &str) -> NewFlow {
    NewFlow {
        id: id.into(),
        pbm_id: format!("pbm-{id}").into(),
        org_id: org.clone(),
        spec: flow_spec(slug, name, Designation::Authentication),
    }
}

fn new_stage(org: &OrgId, id: &str, name: &str, config: StageConfig) -> NewStage {
    NewStage { id: id.into(), org_id: org.clone(), spec: StageSpec { name: name.to_owned(), config } }
}

fn binding_spec(target: &str, stage: &str, order: i32) -> BindingSpec {
    BindingSpec {
        target: target.into(),
        stage: stage.into(),
        order,
        evaluate_on_plan: false,
        re_evaluate_policies: true,
        policy_engine_mode: PolicyEngineMode::Any,
        invalid_response_action: InvalidResponseAction::Retry,
    }
}

fn new_binding(org: &OrgId, id: &str, target: &str, stage: &str, order: i32) -> NewBinding {
    NewBinding {
        id: id.into(),
        pbm_id: format!("pbm-{id}").into(),
        org_id: org.clone(),
        spec: binding_spec(target, stage, order),
    }
}

fn new_policy(org: &OrgId, id: &str, name: &str) -> NewPolicy {
    NewPolicy {
        id: id.into(),
        org_id: org.clone(),
        spec: PolicySpec { name: name.to_owned(), expression: "true".into(), execution_logging: false },
    }
}

fn policy_binding_spec(policy: &str, target: &str, order: i32) -> PolicyBindingSpec {
    PolicyBindingSpec {
        policy: policy.into(),
        target: target.into(),
        negate: false,
        enabled: true,
        order,
        timeout: 30,
        failure_result: false,
    }
}

fn new_policy_binding(org: &OrgId, id: &str, policy: &str, target: &str, order: i32) -> NewPolicyBinding {
    NewPolicyBinding { id: id.into(), org_id: org.clone(), spec: policy_binding_spec(policy, target, order) }
}

fn assert_err<T: std::fmt::Debug>(result: flowgate_core::Result<T>, kind: ErrorKind, id: &str) {
    let err = result.expect_err("must fail");
    assert_eq!((err.kind(), err.id()), (kind, id), "{err}");
}

fn assert_field<T: std::fmt::Debug>(result: flowgate_core::Result<T>, id: &str, field: &str, message: &str) {
    let err = result.expect_err("must fail");
    assert_eq!((err.kind(), err.id()), (ErrorKind::InvalidArgument, id), "{err}");
    let violations: Vec<(&str, &str)> =
        err.violations().iter().map(|v| (v.field.as_str(), v.description.as_str())).collect();
    assert_eq!(violations, vec![(field, message)]);
}

/// Event types and sequences of an aggregate, oldest first.
async fn events_of(store: &Store, kind: &str, id: &str) -> Vec<(u64, String)> {
    let aggregate = AggregateRef { aggregate_type: kind.into(), aggregate_id: id.into() };
    store.events(&aggregate).await.expect("events").into_iter().map(|e| (e.sequence, e.event_type)).collect()
}

fn types(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|(s, t)| (*s, (*t).to_owned())).collect()
}

async fn last_payload(store: &Store, kind: &str, id: &str) -> serde_json::Value {
    let aggregate = AggregateRef { aggregate_type: kind.into(), aggregate_id: id.into() };
    store.events(&aggregate).await.expect("events").pop().expect("an event").payload
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

/// Row counts of every flow table: flows, stages, bindings, policies, policy bindings, events.
async fn counts(store: &Store) -> [i64; 6] {
    [
        count(store, "flows").await,
        count(store, "stages").await,
        count(store, "flow_stage_bindings").await,
        count(store, "policies").await,
        count(store, "policy_bindings").await,
        count(store, "events").await,
    ]
}

async fn flows_are_created_read_and_updated(store: &Store) {
    let repos = setup(store).await;
    let created = repos.flows.create(&new_flow(&org(), "f1", "login", "Login"), ACTOR).await.expect("create");
    assert_eq!((created.id.as_str(), created.pbm_id.as_str(), created.org_id.as_str()), ("f1", "pbm-f1", ORG));
    assert_eq!((created.details.sequence, created.details.resource_owner.as_str()), (1, ORG));
    assert_eq!(created.spec, flow_spec("login", "Login", Designation::Authentication));
    assert_eq!(events_of(store, "flow", "f1").await, types(&[(1, "flow.added")]));
    assert_eq!(last_payload(store, "flow", "f1").await["pbm_id"], "pbm-f1");

    let got = repos.flows.get(&org(), &"f1".into()).await.expect("get").expect("exists");
    assert_eq!(got, created);
    let slug = Slug::parse("login").expect("slug");
    assert_eq!(repos.flows.get_by_slug(&org(), &slug).await.expect("by slug"), Some(created.clone()));
    assert_eq!(repos.flows.get_by_pbm(&org(), &"pbm-f1".into()).await.expect("by pbm"), Some(created.clone()));
    // Another org's flow behaves like a missing one.
    assert_eq!(repos.flows.get(&other(), &"f1".into()).await.expect("get"), None);
    assert_eq!(repos.flows.get_by_slug(&other(), &slug).await.expect("by slug"), None);
    assert_eq!(repos.flows.get_by_pbm(&other(), &"pbm-f1".into()).await.expect("by pbm"), None);

    let mut spec = flow_spec("sign-in", "Sign in", Designation::Enrollment);
    spec.background = Some("/media/bg.png".into());
    spec.layout = Layout::SidebarRightFrameBackground;
    spec.compatibility_mode = true;
    spec.denied_action = DeniedAction::Continue;
    spec.authentication = Authentication::RequireUnauthenticated;
    spec.policy_engine_mode = PolicyEngineMode::All;
    let updated = repos.flows.update(&org(), &created, &spec, ACTOR).await.expect("update");
    assert_eq!((updated.spec.clone(), updated.details.sequence), (spec.clone(), 2));
    assert_eq!(updated.details.creation_date, created.details.creation_date);
    assert_eq!(repos.flows.get(&org(), &"f1".into()).await.expect("get"), Some(updated.clone()));
    assert_eq!(events_of(store, "flow", "f1").await, types(&[(1, "flow.added"), (2, "flow.changed")]));
    assert_eq!(last_payload(store, "flow", "f1").await["slug"], "sign-in");

    // Based on a read the flow has moved on from, the write still goes in (last writer wins), after the
    // change it did not see.
    let mut later = spec.clone();
    later.title = "Later".into();
    let overwritten = repos.flows.update(&org(), &created, &later, ACTOR).await.expect("update from a stale read");
    assert_eq!((overwritten.spec.title.as_str(), overwritten.details.sequence), ("Later", 3));
    assert!(overwritten.details.change_date >= updated.details.change_date);
    assert_eq!(repos.flows.get(&org(), &"f1".into()).await.expect("get"), Some(overwritten.clone()));
    assert_eq!(events_of(store, "flow", "f1").await.len(), 3);

    assert_err(repos.flows.update(&other(), &overwritten, &spec, ACTOR).await, ErrorKind::NotFound, FLOW_NOT_FOUND);
    let missing = Flow { id: "nope".into(), ..overwritten.clone() };
    assert_err(repos.flows.update(&org(), &missing, &spec, ACTOR).await, ErrorKind::NotFound, FLOW_NOT_FOUND);
    assert!(events_of(store, "flow", "nope").await.is_empty());
    assert_err(
        repos.flows.create(&new_flow(&"no-org".into(), "f2", "x", "X"), ACTOR).await,
        ErrorKind::NotFound,
        "ORG-not-found",
    );
    let many = repos.flows.get_many(&org(), &["nope".into(), "f1".into()]).await.expect("many");
    assert_eq!(many.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["f1"]);
    assert!(repos.flows.get_many(&org(), &[]).await.expect("none").is_empty());
}

async fn flow_slugs_are_unique_per_org(store: &Store) {
    let repos = setup(store).await;
    repos.flows.create(&new_flow(&org(), "f1", "login", "Login"), ACTOR).await.expect("create");
    repos.flows.create(&new_flow(&org(), "f2", "other", "Other"), ACTOR).await.expect("create");
    let taken = "Flow with this slug already exists.";
    assert_field(
        repos.flows.create(&new_flow(&org(), "f3", "login", "Again"), ACTOR).await,
        FLOW_SLUG_TAKEN,
        "slug",
        taken,
    );
    // Slugs compare exactly: another case is another slug, as in authentik.
    repos.flows.create(&new_flow(&org(), "f4", "LOGIN", "Upper"), ACTOR).await.expect("other case");
    // Another org may use the slug.
    repos.flows.create(&new_flow(&other(), "g1", "login", "Login"), ACTOR).await.expect("other org");
    let f2 = repos.flows.get(&org(), &"f2".into()).await.expect("get").expect("f2");
    let spec = flow_spec("login", "Other", Designation::Authentication);
    assert_field(repos.flows.update(&org(), &f2, &spec, ACTOR).await, FLOW_SLUG_TAKEN, "slug", taken);
    // Keeping its own slug is no conflict.
    let spec = flow_spec("other", "Renamed", Designation::Recovery);
    let f2 = repos.flows.update(&org(), &f2, &spec, ACTOR).await.expect("same slug");
    // A read that missed a change of slug does not keep the index from refusing a taken one.
    let stale = Flow { spec: flow_spec("login", "Old", Designation::Recovery), ..f2.clone() };
    assert_field(repos.flows.update(&org(), &stale, &stale.spec, ACTOR).await, FLOW_SLUG_TAKEN, "slug", taken);
    assert!(events_of(store, "flow", "f3").await.is_empty());
    assert_eq!(events_of(store, "flow", "f2").await.len(), 2);
}

async fn concurrent_creations_of_one_slug(store: &Store) {
    let repos = setup(store).await;
    let tries = (0..8).map(|i| {
        let flows = repos.flows.clone();
        tokio::spawn(async move { flows.create(&new_flow(&org(), &format!("f{i}"), "race", "Race"), ACTOR).await })
    });
    let mut ok = 0;
    for result in futures::future::join_all(tries).await {
        match result.expect("task") {
            Ok(_) => ok += 1,
            Err(err) => assert_eq!((err.kind(), err.id()), (ErrorKind::InvalidArgument, FLOW_SLUG_TAKEN), "{err}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(count(store, "flows").await, 1);
    assert_eq!(count(store, "events").await, 2 + 1, "two org.added and one flow.added");

    let tries = (0..8).map(|i| {
        let stages = repos.stages.clone();
        let stage = new_stage(&org(), &format!("s{i}"), "racer", StageConfig::UserLogout);
        tokio::spawn(async move { stages.create(&stage, ACTOR).await })
    });
    let mut ok = 0;
    for result in futures::future::join_all(tries).await {
        match result.expect("task") {
            Ok(_) => ok += 1,
            Err(err) => assert_eq!((err.kind(), err.id()), (ErrorKind::InvalidArgument, STAGE_NAME_TAKEN), "{err}"),
        }
    }
    assert_eq!((ok, count(store, "stages").await), (1, 1));
}

async fn flows_are_filtered_searched_ordered_and_paged(store: &Store) {
    let repos = setup(store).await;
    let rows = [
        ("f1", "default-login", "Default Login", Designation::Authentication, DeniedAction::MessageContinue),
        ("f2", "enroll", "Äpfel Enrollment", Designation::Enrollment, DeniedAction::Message),
        ("f3", "recover", "Recovery 50% off", Designation::Recovery, DeniedAction::Continue),
        ("f4", "logout", "Zeta logout", Designation::Invalidation, DeniedAction::MessageContinue),
        ("f5", "admin-login", "Admin login", Designation::Authentication, DeniedAction::Message),
    ];
    for (id, slug, name, designation, denied) in rows {
        let mut flow = new_flow(&org(), id, slug, name);
        flow.spec.designation = designation;
        flow.spec.denied_action = denied;
        repos.flows.create(&flow, ACTOR).await.expect("create");
    }
    repos.flows.create(&new_flow(&other(), "g1", "default-login", "Other org"), ACTOR).await.expect("other");

    let list = |filter: FlowFilter, ordering: Ordering<FlowOrder>, page: PageRequest| {
        let repos = repos.clone();
        async move {
            let page = repos.flows.list(&org(), &filter, ordering, page).await.expect("list");
            (page.items.into_iter().map(|f| f.id.into_string()).collect::<Vec<_>>(), page.total)
        }
    };
    let ids = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    // Default order: slug; the other org never shows.
    assert_eq!(
        list(FlowFilter::default(), asc(FlowOrder::Slug), all(100)).await,
        (ids(&["f5", "f1", "f2", "f4", "f3"]), 5)
    );
    assert_eq!(
        list(FlowFilter::default(), desc(FlowOrder::Name), all(100)).await,
        (ids(&["f2", "f4", "f3", "f1", "f5"]), 5),
        "byte order: Ä sorts after ASCII letters"
    );
    assert_eq!(list(FlowFilter::default(), asc(FlowOrder::Pk), all(2)).await, (ids(&["f1", "f2"]), 5));
    let second = PageRequest { offset: 2, limit: 2 };
    assert_eq!(list(FlowFilter::default(), asc(FlowOrder::Pk), second).await, (ids(&["f3", "f4"]), 5));
    let beyond = PageRequest { offset: 10, limit: 2 };
    assert_eq!(list(FlowFilter::default(), asc(FlowOrder::Pk), beyond).await, (ids(&[]), 5));
    // Ties of designation are broken by id.
    assert_eq!(
        list(FlowFilter::default(), asc(FlowOrder::Designation), all(100)).await,
        (ids(&["f1", "f5", "f2", "f4", "f3"]), 5)
    );
    assert_eq!(
        list(FlowFilter::default(), desc(FlowOrder::Designation), all(100)).await,
        (ids(&["f3", "f4", "f2", "f1", "f5"]), 5)
    );

    let by = |filter: FlowFilter| list(filter, asc(FlowOrder::Pk), all(100));
    let designation = FlowFilter { designation: Some(Designation::Authentication), ..FlowFilter::default() };
    assert_eq!(by(designation).await, (ids(&["f1", "f5"]), 2));
    assert_eq!(by(FlowFilter { slug: Some("enroll".into()), ..FlowFilter::default() }).await, (ids(&["f2"]), 1));
    assert_eq!(by(FlowFilter { slug: Some("ENROLL".into()), ..FlowFilter::default() }).await, (ids(&[]), 0));
    assert_eq!(by(FlowFilter { name: Some("Zeta logout".into()), ..FlowFilter::default() }).await, (ids(&["f4"]), 1));
    let denied = FlowFilter { denied_action: Some(DeniedAction::Message), ..FlowFilter::default() };
    assert_eq!(by(denied).await, (ids(&["f2", "f5"]), 2));
    assert_eq!(by(FlowFilter { flow_uuid: Some("f3".into()), ..FlowFilter::default() }).await, (ids(&["f3"]), 1));
    assert_eq!(by(FlowFilter { flow_uuid: Some("g1".into()), ..FlowFilter::default() }).await, (ids(&[]), 0));

    let search = |needle: &str| by(FlowFilter { search: Some(needle.to_owned()), ..FlowFilter::default() });
    assert_eq!(search("LOGIN").await, (ids(&["f1", "f5"]), 2), "name, slug, ignoring case");
    assert_eq!(search("zeta LOG").await, (ids(&["f4"]), 1));
    assert_eq!(search("äPFEL").await, (ids(&["f2"]), 1), "beyond ASCII");
    assert_eq!(search("TITLE").await.1, 5, "titles are searched");
    assert_eq!(search("invalidation").await, (ids(&["f4"]), 1), "designation");
    assert_eq!(search("message_cont").await, (ids(&["f1", "f4"]), 2), "denied action");
    assert_eq!(search("50%").await, (ids(&["f3"]), 1));
    assert_eq!(search("%").await, (ids(&["f3"]), 1), "wildcards match only themselves");
    assert_eq!(search("_").await, (ids(&["f1", "f4"]), 2), "`_` matches itself only (message_continue)");
    assert_eq!(search("l_gin").await, (ids(&[]), 0));
    assert_eq!(search("").await.1, 5);
    let both = FlowFilter {
        search: Some("login".into()),
        designation: Some(Designation::Authentication),
        ..FlowFilter::default()
    };
    assert_eq!(by(both).await, (ids(&["f1", "f5"]), 2));
}

async fn stages_keep_their_typed_configuration(store: &Store) {
    let repos = setup(store).await;
    repos.flows.create(&new_flow(&org(), "f1", "enroll", "Enroll"), ACTOR).await.expect("flow");
    let password = PasswordConfig { failed_attempts_before_cancel: 3, ..PasswordConfig::default() };
    repos
        .stages
        .create(&new_stage(&org(), "s-pw", "password", StageConfig::Password(password)), ACTOR)
        .await
        .expect("pw");
    let identification = IdentificationConfig {
        password_stage: Some("s-pw".into()),
        enrollment_flow: Some("f1".into()),
        sources: vec!["idp-1".into()],
        ..IdentificationConfig::default()
    };
    let config = StageConfig::Identification(identification.clone());
    let created = repos.stages.create(&new_stage(&org(), "s-id", "Identify", config.clone()), ACTOR).await.expect("id");
    assert_eq!((created.spec.config.clone(), created.details.sequence), (config.clone(), 1));
    assert_eq!(events_of(store, "stage", "s-id").await, types(&[(1, "stage.added")]));
    assert_eq!(last_payload(store, "stage", "s-id").await["type"], "identification");
    repos.stages.create(&new_stage(&org(), "s-out", "logout", StageConfig::UserLogout), ACTOR).await.expect("logout");
    repos
        .stages
        .create(&new_stage(&org(), "s-prompt", "Prompt for 50%", StageConfig::Prompt(PromptConfig::default())), ACTOR)
        .await
        .expect("prompt");
    repos.stages.create(&new_stage(&other(), "t-out", "logout", StageConfig::UserLogout), ACTOR).await.expect("other");

    let got = repos.stages.get(&org(), &"s-id".into()).await.expect("get").expect("exists");
    assert_eq!(got, created);
    assert_eq!(repos.stages.get(&other(), &"s-id".into()).await.expect("get"), None);
    assert_eq!(repos.stages.get_by_name(&org(), "Identify").await.expect("by name"), Some(created.clone()));
    assert_eq!(repos.stages.get_by_name(&org(), "identify").await.expect("by name"), None, "exact name");
    let many = repos.stages.get_many(&org(), &["s-out".into(), "s-pw".into(), "t-out".into()]).await.expect("many");
    assert_eq!(many.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s-out", "s-pw"], "by name");
    let of_types = repos.stages.of_types(&org(), &[StageType::Password, StageType::Identification]).await.expect("t");
    assert_eq!(of_types.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s-id", "s-pw"]);
    assert!(repos.stages.of_types(&org(), &[]).await.expect("none").is_empty());

    let list = |filter: StageFilter, ordering: Ordering<StageOrder>| {
        let repos = repos.clone();
        async move {
            let page = repos.stages.list(&org(), &filter, ordering, all(100)).await.expect("list");
            (page.items.into_iter().map(|s| s.id.into_string()).collect::<Vec<_>>(), page.total)
        }
    };
    let ids = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        list(StageFilter::default(), asc(StageOrder::Name)).await,
        (ids(&["s-id", "s-prompt", "s-out", "s-pw"]), 4)
    );
    assert_eq!(
        list(StageFilter::default(), desc(StageOrder::Pk)).await,
        (ids(&["s-pw", "s-prompt", "s-out", "s-id"]), 4)
    );
    let by_type = StageFilter { stage_type: Some(StageType::UserLogout), ..StageFilter::default() };
    assert_eq!(list(by_type, asc(StageOrder::Name)).await, (ids(&["s-out"]), 1));
    let by_name = StageFilter { name: Some("password".into()), ..StageFilter::default() };
    assert_eq!(list(by_name, asc(StageOrder::Name)).await, (ids(&["s-pw"]), 1));
    let by_id = StageFilter { stage_uuid: Some("t-out".into()), ..StageFilter::default() };
    assert_eq!(list(by_id, asc(StageOrder::Name)).await, (ids(&[]), 0));
    let search = StageFilter { search: Some("IDENT".into()), ..StageFilter::default() };
    assert_eq!(list(search, asc(StageOrder::Name)).await, (ids(&["s-id"]), 1));
    let search = StageFilter { search: Some("50%".into()), ..StageFilter::default() };
    assert_eq!(list(search, asc(StageOrder::Name)).await, (ids(&["s-prompt"]), 1));

    let spec = StageSpec {
        name: "Identify v2".into(),
        config: StageConfig::Identification(IdentificationConfig { enrollment_flow: None, ..identification }),
    };
    let updated = repos.stages.update(&org(), &"s-id".into(), &spec, ACTOR).await.expect("update");
    assert_eq!((updated.spec.clone(), updated.details.sequence), (spec.clone(), 2));
    assert_eq!(repos.stages.get(&org(), &"s-id".into()).await.expect("get").map(|s| s.spec), Some(spec.clone()));
    assert_err(repos.stages.update(&other(), &"s-id".into(), &spec, ACTOR).await, ErrorKind::NotFound, STAGE_NOT_FOUND);
}

async fn stage_and_policy_names_are_unique_per_org(store: &Store) {
    let repos = setup(store).await;
    repos.stages.create(&new_stage(&org(), "s1", "login", StageConfig::UserLogout), ACTOR).await.expect("create");
    repos.stages.create(&new_stage(&org(), "s2", "other", StageConfig::UserLogout), ACTOR).await.expect("create");
    let taken = "Stage with this name already exists.";
    assert_field(
        repos.stages.create(&new_stage(&org(), "s3", "login", StageConfig::UserLogout), ACTOR).await,
        STAGE_NAME_TAKEN,
        "name",
        taken,
    );
    repos.stages.create(&new_stage(&other(), "t1", "login", StageConfig::UserLogout), ACTOR).await.expect("other");
    let spec = StageSpec { name: "login".into(), config: StageConfig::UserLogout };
    assert_field(repos.stages.update(&org(), &"s2".into(), &spec, ACTOR).await, STAGE_NAME_TAKEN, "name", taken);

    let policy = repos.policies.create(&new_policy(&org(), "p1", "is-admin"), ACTOR).await.expect("create");
    assert_eq!((policy.spec.name.as_str(), policy.details.sequence), ("is-admin", 1));
    repos.policies.create(&new_policy(&org(), "p2", "other"), ACTOR).await.expect("create");
    let taken = "Policy with this name already exists.";
    assert_field(
        repos.policies.create(&new_policy(&org(), "p3", "is-admin"), ACTOR).await,
        POLICY_NAME_TAKEN,
        "name",
        taken,
    );
    repos.policies.create(&new_policy(&other(), "q1", "is-admin"), ACTOR).await.expect("other org");
    let spec = PolicySpec { name: "is-admin".into(), expression: "false".into(), execution_logging: true };
    assert_field(repos.policies.update(&org(), &"p2".into(), &spec, ACTOR).await, POLICY_NAME_TAKEN, "name", taken);
    let spec = PolicySpec { name: "renamed".into(), ..spec };
    let updated = repos.policies.update(&org(), &"p2".into(), &spec, ACTOR).await.expect("update");
    assert_eq!((updated.spec, updated.details.sequence), (spec.clone(), 2));
    assert_err(
        repos.policies.update(&other(), &"p2".into(), &spec, ACTOR).await,
        ErrorKind::NotFound,
        POLICY_NOT_FOUND,
    );
    assert_eq!(
        repos.policies.get_by_name(&org(), "renamed").await.expect("by name").map(|p| p.id.into_string()),
        Some("p2".into())
    );
    assert_eq!(repos.policies.get(&other(), &"p2".into()).await.expect("get"), None);
    let many = repos.policies.get_many(&org(), &["p2".into(), "p1".into(), "q1".into()]).await.expect("many");
    assert_eq!(many.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p1", "p2"]);

    let list = |filter: PolicyFilter, ordering: Ordering<PolicyOrder>| {
        let repos = repos.clone();
        async move {
            let page = repos.policies.list(&org(), &filter, ordering, all(100)).await.expect("list");
            (page.items.into_iter().map(|p| p.id.into_string()).collect::<Vec<_>>(), page.total)
        }
    };
    assert_eq!(list(PolicyFilter::default(), desc(PolicyOrder::Name)).await, (vec!["p2".into(), "p1".into()], 2));
    let logging = PolicyFilter { execution_logging: Some(true), ..PolicyFilter::default() };
    assert_eq!(list(logging, asc(PolicyOrder::Pk)).await, (vec!["p2".into()], 1));
    let search = PolicyFilter { search: Some("ADMIN".into()), ..PolicyFilter::default() };
    assert_eq!(list(search, asc(PolicyOrder::Pk)).await, (vec!["p1".into()], 1));
    let by_id =
        PolicyFilter { policy_uuid: Some("p1".into()), name: Some("is-admin".into()), ..PolicyFilter::default() };
    assert_eq!(list(by_id, asc(PolicyOrder::Pk)).await, (vec!["p1".into()], 1));
}

async fn bindings_are_unique_and_checked(store: &Store) {
    let repos = setup(store).await;
    repos.flows.create(&new_flow(&org(), "f1", "login", "Login"), ACTOR).await.expect("flow");
    repos.stages.create(&new_stage(&org(), "s1", "id", StageConfig::UserLogout), ACTOR).await.expect("stage");
    repos.stages.create(&new_stage(&other(), "t1", "id", StageConfig::UserLogout), ACTOR).await.expect("stage");
    let created = repos.bindings.create(&new_binding(&org(), "b1", "f1", "s1", 10), ACTOR).await.expect("bind");
    assert_eq!((created.pbm_id.as_str(), created.details.sequence), ("pbm-b1", 2), "on the flow's aggregate");
    assert_eq!(events_of(store, "flow", "f1").await, types(&[(1, "flow.added"), (2, "flow.binding.added")]));
    let flow = repos.flows.get(&org(), &"f1".into()).await.expect("get").expect("flow");
    assert_eq!(flow.details.sequence, 2, "the flow row follows its aggregate");
    assert_eq!(repos.bindings.get(&org(), &"b1".into()).await.expect("get"), Some(created.clone()));
    assert_eq!(repos.bindings.get_by_pbm(&org(), &"pbm-b1".into()).await.expect("pbm"), Some(created.clone()));
    assert_eq!(repos.bindings.get(&other(), &"b1".into()).await.expect("get"), None);

    let unique = "The fields target, stage, order must make a unique set.";
    assert_field(
        repos.bindings.create(&new_binding(&org(), "b2", "f1", "s1", 10), ACTOR).await,
        BINDING_TAKEN,
        "non_field_errors",
        unique,
    );
    repos.bindings.create(&new_binding(&org(), "b3", "f1", "s1", 20), ACTOR).await.expect("other order");
    assert_field(
        repos.bindings.update(&org(), &"b3".into(), &binding_spec("f1", "s1", 10), ACTOR).await,
        BINDING_TAKEN,
        "non_field_errors",
        unique,
    );
    // A stage of another org is refused on `stage`, in DRF's words.
    assert_field(
        repos.bindings.create(&new_binding(&org(), "b4", "f1", "t1", 30), ACTOR).await,
        FLOW_REFERENCE_MISSING,
        "stage",
        "Invalid pk \"t1\" - object does not exist.",
    );
    assert_field(
        repos.bindings.create(&new_binding(&org(), "b4", "nope", "s1", 30), ACTOR).await,
        FLOW_REFERENCE_MISSING,
        "target",
        "Invalid pk \"nope\" - object does not exist.",
    );
    let mut spec = binding_spec("f1", "s1", 15);
    spec.evaluate_on_plan = true;
    spec.invalid_response_action = InvalidResponseAction::RestartWithContext;
    let updated = repos.bindings.update(&org(), &"b3".into(), &spec, ACTOR).await.expect("update");
    assert_eq!((updated.spec.clone(), updated.details.sequence), (spec.clone(), 4));
    assert_eq!(
        updated.details.creation_date,
        repos.bindings.get(&org(), &"b3".into()).await.expect("g").expect("b").details.creation_date
    );
    assert_err(
        repos.bindings.update(&other(), &"b3".into(), &spec, ACTOR).await,
        ErrorKind::NotFound,
        BINDING_NOT_FOUND,
    );
    assert_eq!(count(store, "flow_stage_bindings").await, 2);
    assert_eq!(last_payload(store, "flow", "f1").await["binding_id"], "b3");

    // Concurrent bindings of one (target, stage, order): one wins.
    let tries = (0..6).map(|i| {
        let bindings = repos.bindings.clone();
        tokio::spawn(
            async move { bindings.create(&new_binding(&org(), &format!("r{i}"), "f1", "s1", 99), ACTOR).await },
        )
    });
    let mut ok = 0;
    for result in futures::future::join_all(tries).await {
        match result.expect("task") {
            Ok(_) => ok += 1,
            Err(err) => assert_eq!((err.kind(), err.id()), (ErrorKind::InvalidArgument, BINDING_TAKEN), "{err}"),
        }
    }
    assert_eq!((ok, count(store, "flow_stage_bindings").await), (1, 3));
}

async fn bindings_are_filtered_searched_and_ordered(store: &Store) {
    let repos = setup(store).await;
    for (id, slug) in [("f1", "one"), ("f2", "two")] {
        repos.flows.create(&new_flow(&org(), id, slug, slug), ACTOR).await.expect("flow");
    }
    for (id, name) in [("s1", "Identification"), ("s2", "Password 100%"), ("s3", "Login")] {
        repos.stages.create(&new_stage(&org(), id, name, StageConfig::UserLogout), ACTOR).await.expect("stage");
    }
    let mut b = Vec::new();
    for (id, target, stage, order) in [
        ("b1", "f1", "s1", 10),
        ("b2", "f1", "s2", 20),
        ("b3", "f1", "s3", 30),
        ("b4", "f2", "s1", 5),
        ("b5", "f2", "s3", 20),
    ] {
        let mut binding = new_binding(&org(), id, target, stage, order);
        binding.spec.evaluate_on_plan = id == "b2";
        binding.spec.re_evaluate_policies = id != "b3";
        if id == "b5" {
            binding.spec.policy_engine_mode = PolicyEngineMode::All;
            binding.spec.invalid_response_action = InvalidResponseAction::Restart;
        }
        b.push(repos.bindings.create(&binding, ACTOR).await.expect("bind"));
    }
    repos.flows.create(&new_flow(&other(), "g1", "one", "one"), ACTOR).await.expect("flow");
    repos.stages.create(&new_stage(&other(), "t1", "Identification", StageConfig::UserLogout), ACTOR).await.expect("s");
    repos.bindings.create(&new_binding(&other(), "c1", "g1", "t1", 10), ACTOR).await.expect("bind");

    let list = |filter: BindingFilter, ordering: Ordering<BindingOrder>| {
        let repos = repos.clone();
        async move {
            let page = repos.bindings.list(&org(), &filter, ordering, all(100)).await.expect("list");
            (page.items.into_iter().map(|b| b.id.into_string()).collect::<Vec<_>>(), page.total)
        }
    };
    let ids = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let none = BindingFilter::default;
    assert_eq!(list(none(), asc(BindingOrder::Target)).await, (ids(&["b1", "b2", "b3", "b4", "b5"]), 5));
    assert_eq!(
        list(none(), desc(BindingOrder::Target)).await,
        (ids(&["b4", "b5", "b1", "b2", "b3"]), 5),
        "ties by order"
    );
    assert_eq!(list(none(), asc(BindingOrder::Order)).await, (ids(&["b4", "b1", "b2", "b5", "b3"]), 5), "ties by id");
    assert_eq!(list(none(), desc(BindingOrder::Stage)).await, (ids(&["b3", "b5", "b2", "b1", "b4"]), 5));
    assert_eq!(list(none(), desc(BindingOrder::Pk)).await, (ids(&["b5", "b4", "b3", "b2", "b1"]), 5));

    let by = |filter: BindingFilter| list(filter, asc(BindingOrder::Pk));
    assert_eq!(by(BindingFilter { target: Some("f2".into()), ..none() }).await, (ids(&["b4", "b5"]), 2));
    assert_eq!(by(BindingFilter { stage: Some("s3".into()), ..none() }).await, (ids(&["b3", "b5"]), 2));
    assert_eq!(by(BindingFilter { order: Some(20), ..none() }).await, (ids(&["b2", "b5"]), 2));
    assert_eq!(by(BindingFilter { evaluate_on_plan: Some(true), ..none() }).await, (ids(&["b2"]), 1));
    assert_eq!(by(BindingFilter { re_evaluate_policies: Some(false), ..none() }).await, (ids(&["b3"]), 1));
    let all_mode = BindingFilter { policy_engine_mode: Some(PolicyEngineMode::All), ..none() };
    assert_eq!(by(all_mode).await, (ids(&["b5"]), 1));
    let restart = BindingFilter { invalid_response_action: Some(InvalidResponseAction::Restart), ..none() };
    assert_eq!(by(restart).await, (ids(&["b5"]), 1));
    assert_eq!(by(BindingFilter { fsb_uuid: Some("b4".into()), ..none() }).await, (ids(&["b4"]), 1));
    assert_eq!(by(BindingFilter { fsb_uuid: Some("c1".into()), ..none() }).await, (ids(&[]), 0));
    assert_eq!(by(BindingFilter { pbm_uuid: Some("pbm-b3".into()), ..none() }).await, (ids(&["b3"]), 1));
    // Search on the stage's name, ignoring case, literally; never another org's stage.
    assert_eq!(by(BindingFilter { search: Some("IDENTIF".into()), ..none() }).await, (ids(&["b1", "b4"]), 2));
    assert_eq!(by(BindingFilter { search: Some("100%".into()), ..none() }).await, (ids(&["b2"]), 1));
    assert_eq!(by(BindingFilter { search: Some("%".into()), ..none() }).await, (ids(&["b2"]), 1));
    let combined = BindingFilter { search: Some("login".into()), target: Some("f2".into()), ..none() };
    assert_eq!(by(combined).await, (ids(&["b5"]), 1));
    let paged = repos.bindings.list(&org(), &none(), asc(BindingOrder::Pk), PageRequest { offset: 3, limit: 1 }).await;
    let paged = paged.expect("page");
    assert_eq!((paged.items.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), paged.total), (vec!["b4"], 5));

    let of_flows = repos.bindings.of_flows(&org(), &["f2".into(), "g1".into()]).await.expect("of flows");
    assert_eq!(of_flows, vec![b[3].clone(), b[4].clone()]);
    let of_stages = repos.bindings.of_stages(&org(), &["s1".into()]).await.expect("of stages");
    assert_eq!(of_stages.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["b1", "b4"]);
    assert!(repos.bindings.of_flows(&org(), &[]).await.expect("none").is_empty());
    assert!(repos.bindings.of_stages(&org(), &[]).await.expect("none").is_empty());
}

async fn policy_bindings_target_flows_and_bindings(store: &Store) {
    let repos = setup(store).await;
    repos.flows.create(&new_flow(&org(), "f1", "login", "Login"), ACTOR).await.expect("flow");
    repos.stages.create(&new_stage(&org(), "s1", "id", StageConfig::UserLogout), ACTOR).await.expect("stage");
    repos.bindings.create(&new_binding(&org(), "b1", "f1", "s1", 10), ACTOR).await.expect("bind");
    repos.policies.create(&new_policy(&org(), "p1", "one"), ACTOR).await.expect("policy");
    repos.policies.create(&new_policy(&org(), "p2", "two"), ACTOR).await.expect("policy");
    repos.policies.create(&new_policy(&other(), "q1", "one"), ACTOR).await.expect("policy");
    repos.flows.create(&new_flow(&other(), "g1", "login", "Login"), ACTOR).await.expect("flow");

    let on_flow = repos.policy_bindings.create(&new_policy_binding(&org(), "pb1", "p1", "pbm-f1", 0), ACTOR).await;
    let on_flow = on_flow.expect("bind to the flow");
    assert_eq!((on_flow.spec.clone(), on_flow.details.sequence), (policy_binding_spec("p1", "pbm-f1", 0), 2));
    assert_eq!(events_of(store, "policy", "p1").await, types(&[(1, "policy.added"), (2, "policy.binding.added")]));
    assert_eq!(repos.policies.get(&org(), &"p1".into()).await.expect("g").expect("p").details.sequence, 2);
    let mut spec = policy_binding_spec("p2", "pbm-b1", 5);
    spec.negate = true;
    spec.timeout = 300;
    spec.failure_result = true;
    spec.enabled = false;
    let on_binding = repos
        .policy_bindings
        .create(&NewPolicyBinding { id: "pb2".into(), org_id: org(), spec: spec.clone() }, ACTOR)
        .await
        .expect("bind to the binding");
    assert_eq!(on_binding.spec, spec);
    repos.policy_bindings.create(&new_policy_binding(&org(), "pb3", "p2", "pbm-f1", 10), ACTOR).await.expect("b");

    let unique = "The fields target, order must make a unique set.";
    assert_field(
        repos.policy_bindings.create(&new_policy_binding(&org(), "pb4", "p2", "pbm-f1", 0), ACTOR).await,
        POLICY_BINDING_TAKEN,
        "non_field_errors",
        unique,
    );
    assert_field(
        repos.policy_bindings.update(&org(), &"pb3".into(), &policy_binding_spec("p2", "pbm-f1", 0), ACTOR).await,
        POLICY_BINDING_TAKEN,
        "non_field_errors",
        unique,
    );
    assert_field(
        repos.policy_bindings.create(&new_policy_binding(&org(), "pb4", "q1", "pbm-f1", 1), ACTOR).await,
        FLOW_REFERENCE_MISSING,
        "policy",
        "Invalid pk \"q1\" - object does not exist.",
    );
    assert_field(
        repos.policy_bindings.create(&new_policy_binding(&org(), "pb4", "p1", "pbm-g1", 1), ACTOR).await,
        FLOW_REFERENCE_MISSING,
        "target",
        "Invalid pk \"pbm-g1\" - object does not exist.",
    );
    // Moving a binding to another policy writes on the new policy's aggregate.
    let moved = repos
        .policy_bindings
        .update(&org(), &"pb1".into(), &policy_binding_spec("p2", "pbm-f1", 1), ACTOR)
        .await
        .expect("update");
    assert_eq!((moved.spec.policy.as_str(), moved.details.sequence), ("p2", 4));
    assert_eq!(
        events_of(store, "policy", "p2").await.last().map(|e| e.1.clone()),
        Some("policy.binding.changed".into())
    );
    assert_err(
        repos.policy_bindings.update(&other(), &"pb1".into(), &policy_binding_spec("p2", "pbm-f1", 1), ACTOR).await,
        ErrorKind::NotFound,
        POLICY_BINDING_NOT_FOUND,
    );
    assert_eq!(repos.policy_bindings.get(&org(), &"pb1".into()).await.expect("get"), Some(moved.clone()));
    assert_eq!(repos.policy_bindings.get(&other(), &"pb1".into()).await.expect("get"), None);

    let ids = |list: Vec<flowgate_core::flow::PolicyBinding>| {
        list.into_iter().map(|b| b.id.into_string()).collect::<Vec<_>>()
    };
    let targets: [PbmId; 2] = ["pbm-f1".into(), "pbm-b1".into()];
    assert_eq!(ids(repos.policy_bindings.of_targets(&org(), &targets).await.expect("t")), ["pb2", "pb1", "pb3"]);
    assert_eq!(ids(repos.policy_bindings.of_policies(&org(), &["p2".into()]).await.expect("p")), ["pb2", "pb1", "pb3"]);
    assert!(repos.policy_bindings.of_policies(&org(), &["p1".into()]).await.expect("p").is_empty());
    assert!(repos.policy_bindings.of_targets(&org(), &[]).await.expect("none").is_empty());

    let list = |filter: PolicyBindingFilter, ordering: Ordering<PolicyBindingOrder>| {
        let repos = repos.clone();
        async move {
            let page = repos.policy_bindings.list(&org(), &filter, ordering, all(100)).await.expect("list");
            (ids(page.items), page.total)
        }
    };
    let none = PolicyBindingFilter::default;
    let s = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(list(none(), asc(PolicyBindingOrder::Order)).await, (s(&["pb1", "pb2", "pb3"]), 3));
    assert_eq!(list(none(), desc(PolicyBindingOrder::Order)).await, (s(&["pb3", "pb2", "pb1"]), 3));
    assert_eq!(list(none(), desc(PolicyBindingOrder::Target)).await, (s(&["pb1", "pb3", "pb2"]), 3), "ties by order");
    assert_eq!(list(none(), asc(PolicyBindingOrder::Pk)).await, (s(&["pb1", "pb2", "pb3"]), 3));
    let by = |filter: PolicyBindingFilter| list(filter, asc(PolicyBindingOrder::Pk));
    assert_eq!(by(PolicyBindingFilter { target: Some("pbm-b1".into()), ..none() }).await, (s(&["pb2"]), 1));
    assert_eq!(by(PolicyBindingFilter { policy: Some("p2".into()), ..none() }).await, (s(&["pb1", "pb2", "pb3"]), 3));
    assert_eq!(by(PolicyBindingFilter { enabled: Some(false), ..none() }).await, (s(&["pb2"]), 1));
    assert_eq!(by(PolicyBindingFilter { order: Some(10), ..none() }).await, (s(&["pb3"]), 1));
    assert_eq!(by(PolicyBindingFilter { timeout: Some(300), ..none() }).await, (s(&["pb2"]), 1));
    assert_eq!(by(PolicyBindingFilter { timeout: Some(u32::MAX), ..none() }).await, (s(&[]), 0));
}

async fn flow_delete_cascades_and_rewrites_links(store: &Store) {
    let repos = setup(store).await;
    repos.flows.create(&new_flow(&org(), "f1", "login", "Login"), ACTOR).await.expect("flow");
    repos.flows.create(&new_flow(&org(), "f2", "enroll", "Enroll"), ACTOR).await.expect("flow");
    let linking = IdentificationConfig { enrollment_flow: Some("f2".into()), ..IdentificationConfig::default() };
    let config = StageConfig::Identification(linking);
    repos.stages.create(&new_stage(&org(), "s1", "id", config), ACTOR).await.expect("stage");
    repos
        .stages
        .create(&new_stage(&org(), "s2", "pw", StageConfig::Password(PasswordConfig::default())), ACTOR)
        .await
        .expect("stage");
    repos.bindings.create(&new_binding(&org(), "b1", "f2", "s1", 10), ACTOR).await.expect("bind");
    repos.bindings.create(&new_binding(&org(), "b2", "f2", "s2", 20), ACTOR).await.expect("bind");
    repos.bindings.create(&new_binding(&org(), "b3", "f1", "s1", 10), ACTOR).await.expect("bind");
    repos.policies.create(&new_policy(&org(), "p1", "one"), ACTOR).await.expect("policy");
    for (id, target, order) in [("pb1", "pbm-f2", 0), ("pb2", "pbm-b2", 0), ("pb3", "pbm-f1", 0), ("pb4", "pbm-b3", 0)]
    {
        repos.policy_bindings.create(&new_policy_binding(&org(), id, "p1", target, order), ACTOR).await.expect("pb");
    }

    let rewrite = StageRewrite {
        id: "s1".into(),
        spec: StageSpec { name: "id".into(), config: StageConfig::Identification(IdentificationConfig::default()) },
    };
    let gone = StageRewrite { id: "vanished".into(), spec: rewrite.spec.clone() };
    assert_err(repos.flows.delete(&other(), &"f2".into(), &[], ACTOR).await, ErrorKind::NotFound, FLOW_NOT_FOUND);
    let details = repos.flows.delete(&org(), &"f2".into(), &[rewrite.clone(), gone], ACTOR).await.expect("delete");
    assert_eq!((details.resource_owner.as_str(), details.sequence), (ORG, 4), "added, two bindings, removed");
    assert_eq!(events_of(store, "flow", "f2").await.last().map(|e| e.1.clone()), Some("flow.removed".into()));
    let payload = last_payload(store, "flow", "f2").await;
    assert_eq!(payload["slug"], "enroll");
    assert_eq!(payload["bindings"], serde_json::json!(["b1", "b2"]));
    assert_eq!(payload["policy_bindings"], serde_json::json!(["pb1", "pb2"]));
    assert_eq!(repos.flows.get(&org(), &"f2".into()).await.expect("get"), None);
    assert_eq!(repos.bindings.get(&org(), &"b1".into()).await.expect("get"), None);
    assert_eq!(repos.policy_bindings.get(&org(), &"pb2".into()).await.expect("get"), None);
    // The rest stays: the other flow, its binding and policy bindings, both stages.
    assert!(repos.bindings.get(&org(), &"b3".into()).await.expect("get").is_some());
    assert!(repos.policy_bindings.get(&org(), &"pb4".into()).await.expect("get").is_some());
    assert_eq!((count(store, "stages").await, count(store, "policy_bindings").await), (2, 2));
    // The linking stage was rewritten in the same write, with its own event; the missing one skipped.
    let stage = repos.stages.get(&org(), &"s1".into()).await.expect("get").expect("stage");
    assert_eq!((stage.spec.clone(), stage.details.sequence), (rewrite.spec.clone(), 2));
    assert_eq!(events_of(store, "stage", "s1").await, types(&[(1, "stage.added"), (2, "stage.changed")]));
    assert!(events_of(store, "stage", "vanished").await.is_empty());
    assert_err(repos.flows.delete(&org(), &"f2".into(), &[], ACTOR).await, ErrorKind::NotFound, FLOW_NOT_FOUND);
}

async fn stage_policy_and_binding_deletes_cascade(store: &Store) {
    let repos = setup(store).await;
    repos.flows.create(&new_flow(&org(), "f1", "login", "Login"), ACTOR).await.expect("flow");
    let password = StageConfig::Password(PasswordConfig::default());
    repos.stages.create(&new_stage(&org(), "s-pw", "pw", password), ACTOR).await.expect("stage");
    let id = IdentificationConfig { password_stage: Some("s-pw".into()), ..IdentificationConfig::default() };
    repos.stages.create(&new_stage(&org(), "s-id", "id", StageConfig::Identification(id)), ACTOR).await.expect("s");
    repos.bindings.create(&new_binding(&org(), "b1", "f1", "s-id", 10), ACTOR).await.expect("bind");
    repos.bindings.create(&new_binding(&org(), "b2", "f1", "s-pw", 20), ACTOR).await.expect("bind");
    repos.bindings.create(&new_binding(&org(), "b3", "f1", "s-pw", 30), ACTOR).await.expect("bind");
    repos.policies.create(&new_policy(&org(), "p1", "one"), ACTOR).await.expect("policy");
    repos.policies.create(&new_policy(&org(), "p2", "two"), ACTOR).await.expect("policy");
    for (id, policy, target) in
        [("pb1", "p1", "pbm-b1"), ("pb2", "p1", "pbm-b2"), ("pb3", "p2", "pbm-f1"), ("pb4", "p2", "pbm-b3")]
    {
        repos.policy_bindings.create(&new_policy_binding(&org(), id, policy, target, 0), ACTOR).await.expect("pb");
    }

    // A stage delete takes its bindings and their policy bindings, and rewrites the stages linking to it.
    let rewrite = StageRewrite {
        id: "s-id".into(),
        spec: StageSpec { name: "id".into(), config: StageConfig::Identification(IdentificationConfig::default()) },
    };
    assert_err(repos.stages.delete(&other(), &"s-pw".into(), &[], ACTOR).await, ErrorKind::NotFound, STAGE_NOT_FOUND);
    let details =
        repos.stages.delete(&org(), &"s-pw".into(), std::slice::from_ref(&rewrite), ACTOR).await.expect("delete");
    assert_eq!(details.sequence, 2);
    let payload = last_payload(store, "stage", "s-pw").await;
    assert_eq!(
        (payload["name"].clone(), payload["bindings"].clone(), payload["policy_bindings"].clone()),
        (serde_json::json!("pw"), serde_json::json!(["b2", "b3"]), serde_json::json!(["pb2", "pb4"]))
    );
    assert_eq!(repos.stages.get(&org(), &"s-pw".into()).await.expect("get"), None);
    let left = repos.bindings.of_flows(&org(), &["f1".into()]).await.expect("bindings");
    assert_eq!(left.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["b1"]);
    assert_eq!(count(store, "policy_bindings").await, 2);
    assert_eq!(repos.stages.get(&org(), &"s-id".into()).await.expect("get").map(|s| s.spec), Some(rewrite.spec));

    // A binding delete takes its policy bindings; the event goes to the flow.
    assert_err(repos.bindings.delete(&other(), &"b1".into(), ACTOR).await, ErrorKind::NotFound, BINDING_NOT_FOUND);
    let flow_before = repos.flows.get(&org(), &"f1".into()).await.expect("get").expect("flow").details.sequence;
    let details = repos.bindings.delete(&org(), &"b1".into(), ACTOR).await.expect("delete");
    assert_eq!(details.sequence, flow_before + 1);
    assert_eq!(
        repos.flows.get(&org(), &"f1".into()).await.expect("get").expect("flow").details.sequence,
        details.sequence
    );
    let payload = last_payload(store, "flow", "f1").await;
    assert_eq!(
        (payload["binding_id"].clone(), payload["policy_bindings"].clone()),
        ("b1".into(), serde_json::json!(["pb1"]))
    );
    assert_eq!(count(store, "flow_stage_bindings").await, 0);
    assert_eq!(count(store, "policy_bindings").await, 1);
    assert_err(repos.bindings.delete(&org(), &"b1".into(), ACTOR).await, ErrorKind::NotFound, BINDING_NOT_FOUND);

    // A policy binding delete writes on its policy; a policy delete takes its bindings.
    repos.policy_bindings.create(&new_policy_binding(&org(), "pb5", "p1", "pbm-f1", 1), ACTOR).await.expect("pb");
    assert_err(
        repos.policy_bindings.delete(&other(), &"pb5".into(), ACTOR).await,
        ErrorKind::NotFound,
        POLICY_BINDING_NOT_FOUND,
    );
    let details = repos.policy_bindings.delete(&org(), &"pb5".into(), ACTOR).await.expect("delete");
    assert_eq!(
        events_of(store, "policy", "p1").await.last().map(|e| (e.0, e.1.clone())),
        Some((details.sequence, "policy.binding.removed".into()))
    );
    let details = repos.policies.delete(&org(), &"p2".into(), &[], ACTOR).await.expect("delete");
    assert_eq!(events_of(store, "policy", "p2").await.last().map(|e| e.0), Some(details.sequence));
    assert_eq!(last_payload(store, "policy", "p2").await["policy_bindings"], serde_json::json!(["pb3"]));
    assert_eq!((count(store, "policies").await, count(store, "policy_bindings").await), (1, 0));
    assert_err(repos.policies.delete(&org(), &"p2".into(), &[], ACTOR).await, ErrorKind::NotFound, POLICY_NOT_FOUND);
}

/// An import creating a flow with a policy, two stages, two bindings and two policy bindings.
fn import_of(slug: &str, stage_name: &str) -> ImportWrite {
    let flow = new_flow(&org(), "f-imp", slug, "Imported");
    let changes = vec![
        ImportChange::CreateFlow(flow),
        ImportChange::CreatePolicy(new_policy(&org(), "p-imp", "imported-policy")),
        ImportChange::CreateStage(new_stage(&org(), "s-imp1", "imported-id", StageConfig::UserLogout)),
        ImportChange::CreateStage(new_stage(&org(), "s-imp2", stage_name, StageConfig::UserLogout)),
        ImportChange::CreateBinding(new_binding(&org(), "b-imp1", "f-imp", "s-imp1", 10)),
        ImportChange::CreateBinding(new_binding(&org(), "b-imp2", "f-imp", "s-imp2", 20)),
        ImportChange::CreatePolicyBinding(new_policy_binding(&org(), "pb-imp1", "p-imp", "pbm-f-imp", 0)),
        ImportChange::CreatePolicyBinding(new_policy_binding(&org(), "pb-imp2", "p-imp", "pbm-b-imp2", 0)),
    ];
    let imported = events::flow_imported(8, changes.len());
    ImportWrite { flow_id: "f-imp".into(), changes, imported }
}

async fn import_writes_every_change_in_one_transaction(store: &Store) {
    let repos = setup(store).await;
    let details = repos.flows.import(&org(), &import_of("imported", "imported-pw"), ACTOR).await.expect("import");
    assert_eq!((details.sequence, details.resource_owner.as_str()), (4, ORG));
    assert_eq!(
        events_of(store, "flow", "f-imp").await,
        types(&[(1, "flow.added"), (2, "flow.binding.added"), (3, "flow.binding.added"), (4, "flow.imported")])
    );
    assert_eq!(
        events_of(store, "policy", "p-imp").await,
        types(&[(1, "policy.added"), (2, "policy.binding.added"), (3, "policy.binding.added")])
    );
    assert_eq!(events_of(store, "stage", "s-imp2").await, types(&[(1, "stage.added")]));
    let flow = repos.flows.get(&org(), &"f-imp".into()).await.expect("get").expect("flow");
    assert_eq!((flow.details.sequence, flow.details.change_date), (4, details.change_date));
    let bindings = repos.bindings.of_flows(&org(), &["f-imp".into()]).await.expect("bindings");
    assert_eq!(
        bindings.iter().map(|b| (b.id.as_str(), b.details.sequence)).collect::<Vec<_>>(),
        [("b-imp1", 2), ("b-imp2", 3)]
    );
    let policy = repos.policies.get(&org(), &"p-imp".into()).await.expect("get").expect("policy");
    assert_eq!(policy.details.sequence, 3);
    let pb = repos.policy_bindings.get(&org(), &"pb-imp2".into()).await.expect("get").expect("pb");
    assert_eq!(pb.details.sequence, 3);
    assert_eq!(counts(store).await[..5], [1, 2, 2, 1, 2]);

    // A second import updating, moving and deleting: one write, the deletions' events list their cascade.
    let mut spec = flow_spec("imported", "Imported again", Designation::Authentication);
    spec.title = "New title".into();
    let mut moved = binding_spec("f-imp", "s-imp1", 15);
    moved.evaluate_on_plan = true;
    let changes = vec![
        ImportChange::UpdateFlow("f-imp".into(), spec.clone()),
        ImportChange::UpdatePolicy(
            "p-imp".into(),
            PolicySpec { name: "imported-policy".into(), expression: "false".into(), execution_logging: true },
        ),
        ImportChange::UpdateStage(
            "s-imp1".into(),
            StageSpec { name: "renamed".into(), config: StageConfig::UserLogout },
        ),
        ImportChange::UpdateBinding("b-imp1".into(), moved.clone()),
        ImportChange::DeleteBinding("b-imp2".into()),
        ImportChange::UpdatePolicyBinding("pb-imp1".into(), policy_binding_spec("p-imp", "pbm-f-imp", 7)),
    ];
    let write = ImportWrite { flow_id: "f-imp".into(), imported: events::flow_imported(6, changes.len()), changes };
    let details = repos.flows.import(&org(), &write, ACTOR).await.expect("second import");
    assert_eq!(details.sequence, 8);
    assert_eq!(
        events_of(store, "flow", "f-imp").await[4..],
        types(&[(5, "flow.changed"), (6, "flow.binding.changed"), (7, "flow.binding.removed"), (8, "flow.imported")])
    );
    let payload = store.events(&AggregateRef { aggregate_type: "flow".into(), aggregate_id: "f-imp".into() }).await;
    let removed = payload.expect("events").into_iter().nth(6).expect("removed").payload;
    assert_eq!(removed["policy_bindings"], serde_json::json!(["pb-imp2"]));
    assert_eq!(
        repos.flows.get(&org(), &"f-imp".into()).await.expect("get").map(|f| (f.spec, f.details.sequence)),
        Some((spec, 8))
    );
    assert_eq!(repos.bindings.get(&org(), &"b-imp1".into()).await.expect("get").map(|b| b.spec), Some(moved));
    assert_eq!(
        repos.stages.get(&org(), &"s-imp1".into()).await.expect("get").map(|s| s.spec.name),
        Some("renamed".into())
    );
    assert_eq!(repos.policy_bindings.get(&org(), &"pb-imp1".into()).await.expect("get").map(|p| p.spec.order), Some(7));
    assert_eq!(counts(store).await[..5], [1, 2, 1, 1, 1]);
    assert_eq!(events_of(store, "policy", "p-imp").await.len(), 5, "changed and binding changed");

    // A delete of a binding that is gone answers like the single-object method.
    let write = ImportWrite {
        flow_id: "f-imp".into(),
        changes: vec![ImportChange::DeleteBinding("b-imp2".into())],
        imported: events::flow_imported(1, 1),
    };
    assert_err(repos.flows.import(&org(), &write, ACTOR).await, ErrorKind::NotFound, BINDING_NOT_FOUND);
    assert_eq!(events_of(store, "flow", "f-imp").await.len(), 8);
}

async fn failing_import_writes_nothing(store: &Store) {
    let repos = setup(store).await;
    // The last stage's name is taken: everything before it must roll back.
    repos.stages.create(&new_stage(&org(), "s-taken", "taken", StageConfig::UserLogout), ACTOR).await.expect("stage");
    let before = counts(store).await;
    assert_field(
        repos.flows.import(&org(), &import_of("imported", "taken"), ACTOR).await,
        STAGE_NAME_TAKEN,
        "name",
        "Stage with this name already exists.",
    );
    assert_eq!(counts(store).await, before);
    assert!(events_of(store, "flow", "f-imp").await.is_empty());
    assert!(events_of(store, "policy", "p-imp").await.is_empty());
    assert!(events_of(store, "stage", "s-imp1").await.is_empty());

    // A slug taken by another flow fails the first change; a policy binding on a missing target the last.
    repos.flows.create(&new_flow(&org(), "f-other", "imported", "Other"), ACTOR).await.expect("flow");
    let before = counts(store).await;
    assert_field(
        repos.flows.import(&org(), &import_of("imported", "fresh"), ACTOR).await,
        FLOW_SLUG_TAKEN,
        "slug",
        "Flow with this slug already exists.",
    );
    let mut write = import_of("imported-2", "fresh");
    write.changes.push(ImportChange::CreatePolicyBinding(new_policy_binding(&org(), "pb-x", "p-imp", "pbm-nope", 0)));
    assert_err(repos.flows.import(&org(), &write, ACTOR).await, ErrorKind::InvalidArgument, FLOW_REFERENCE_MISSING);
    assert_eq!(counts(store).await, before);
    // Without the bad entry the same import goes through.
    write.changes.pop();
    repos.flows.import(&org(), &write, ACTOR).await.expect("import");
    assert_eq!(counts(store).await[..5], [before[0] + 1, before[1] + 2, 2, 1, 2]);
}

async fn org_delete_removes_flow_definitions(store: &Store) {
    let repos = setup(store).await;
    repos.flows.import(&org(), &import_of("imported", "pw"), ACTOR).await.expect("import");
    repos.flows.create(&new_flow(&other(), "g1", "login", "Login"), ACTOR).await.expect("flow");
    identity::repos(store).orgs.delete(&org(), ACTOR).await.expect("delete org");
    assert_eq!(counts(store).await[..5], [1, 0, 0, 0, 0]);
    assert!(repos.flows.get(&other(), &"g1".into()).await.expect("get").is_some());
}
