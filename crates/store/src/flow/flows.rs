//! [`FlowRepo`]: flows, their cascading delete, and imports (in [`super::import`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::Result;
use flowgate_core::event::Details;
use flowgate_core::flow::ports::{
    FLOW_AGGREGATE, FLOW_NOT_FOUND, FlowRepo, ImportWrite, NewFlow, StageRewrite, events, flow_slug_taken, not_found,
};
use flowgate_core::flow::{
    Authentication, DeniedAction, Designation, Flow, FlowFilter, FlowId, FlowOrder, FlowSpec, Layout, Ordering, Page,
    PageRequest, PbmId, PolicyEngineMode, Slug,
};
use flowgate_core::identity::OrgId;
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::entity::{bindings, flows, policy_bindings};
use super::{
    FlowRepositories, cascade_changed, corrupt, db_sequence, details, intent, into_page, order, page, require_org,
    retry_cascade, search, stages, unique_as,
};
use crate::backend::Backend;
use crate::error::db_error;
use crate::event_log::{StateError, state};
use crate::identity::changes_of;

/// The domain object of a flow row.
pub(super) fn flow_from_row(row: flows::Model) -> Result<Flow> {
    let spec = FlowSpec {
        slug: Slug::parse(&row.slug).map_err(|_| corrupt("flow slug", &row.slug))?,
        title: row.title,
        designation: Designation::parse(&row.designation)
            .ok_or_else(|| corrupt("flow designation", &row.designation))?,
        layout: Layout::parse(&row.layout).ok_or_else(|| corrupt("flow layout", &row.layout))?,
        background: row.background,
        compatibility_mode: row.compatibility_mode,
        denied_action: DeniedAction::parse(&row.denied_action)
            .ok_or_else(|| corrupt("flow denied_action", &row.denied_action))?,
        authentication: Authentication::parse(&row.authentication)
            .ok_or_else(|| corrupt("flow authentication", &row.authentication))?,
        policy_engine_mode: PolicyEngineMode::parse(&row.policy_engine_mode)
            .ok_or_else(|| corrupt("flow policy_engine_mode", &row.policy_engine_mode))?,
        name: row.name,
    };
    Ok(Flow {
        details: details(row.created_at, row.changed_at, row.sequence, &row.org_id)?,
        id: row.id.into(),
        pbm_id: row.pbm_id.into(),
        org_id: row.org_id.into(),
        spec,
    })
}

/// Writes every field of `spec` into `row`.
fn set_spec(row: &mut flows::Model, spec: &FlowSpec) {
    let FlowSpec {
        name,
        slug,
        title,
        designation,
        layout,
        background,
        compatibility_mode,
        denied_action,
        authentication,
        policy_engine_mode,
    } = spec;
    row.name.clone_from(name);
    row.name_lower = name.to_lowercase();
    row.slug = slug.as_str().to_owned();
    row.title.clone_from(title);
    row.title_lower = title.to_lowercase();
    row.designation = designation.as_str().to_owned();
    row.layout = layout.as_str().to_owned();
    row.background.clone_from(background);
    row.compatibility_mode = *compatibility_mode;
    row.denied_action = denied_action.as_str().to_owned();
    row.authentication = authentication.as_str().to_owned();
    row.policy_engine_mode = policy_engine_mode.as_str().to_owned();
}

fn of_org(org: &OrgId) -> sea_orm::Select<flows::Entity> {
    flows::Entity::find().filter(flows::Column::OrgId.eq(org.as_str()))
}

/// The flow row `id` of `org` read through `db`.
pub(super) async fn flow_row<C: ConnectionTrait>(
    db: &C,
    org: &OrgId,
    id: &str,
) -> std::result::Result<Option<flows::Model>, sea_orm::DbErr> {
    of_org(org).filter(flows::Column::Id.eq(id)).one(db).await
}

/// Fails with [`flow_slug_taken`] when another flow of the org (than `except`) has the slug. The unique
/// index remains the guarantee under concurrency; asking first keeps the usual answer free of engine text.
async fn check_slug(
    txn: &DatabaseTransaction,
    org: &OrgId,
    slug: &Slug,
    except: Option<&str>,
) -> Result<(), StateError> {
    let mut query = of_org(org).filter(flows::Column::Slug.eq(slug.as_str()));
    if let Some(id) = except {
        query = query.filter(flows::Column::Id.ne(id));
    }
    match query.select_only().column(flows::Column::Id).into_tuple::<String>().one(txn).await? {
        Some(_) => Err(flow_slug_taken().into()),
        None => Ok(()),
    }
}

/// A flow row with its keys, stamped `at`, and every field of its spec empty.
fn blank_row(id: &str, org: &str, pbm: &str, at: DateTime<Utc>) -> flows::Model {
    flows::Model {
        id: id.to_owned(),
        org_id: org.to_owned(),
        pbm_id: pbm.to_owned(),
        name: String::new(),
        name_lower: String::new(),
        slug: String::new(),
        title: String::new(),
        title_lower: String::new(),
        designation: String::new(),
        layout: String::new(),
        background: None,
        compatibility_mode: false,
        denied_action: String::new(),
        authentication: String::new(),
        policy_engine_mode: String::new(),
        created_at: at,
        changed_at: at,
        sequence: 0,
    }
}

/// The columns [`set_spec`] writes: what an update changes.
const SPEC_COLUMNS: [flows::Column; 12] = [
    flows::Column::Name,
    flows::Column::NameLower,
    flows::Column::Slug,
    flows::Column::Title,
    flows::Column::TitleLower,
    flows::Column::Designation,
    flows::Column::Layout,
    flows::Column::Background,
    flows::Column::CompatibilityMode,
    flows::Column::DeniedAction,
    flows::Column::Authentication,
    flows::Column::PolicyEngineMode,
];

/// The changes that write `spec` into a flow row, and nothing else.
fn spec_changes(spec: &FlowSpec) -> flows::ActiveModel {
    let mut row = blank_row("", "", "", DateTime::<Utc>::UNIX_EPOCH);
    set_spec(&mut row, spec);
    changes_of(flows::ActiveModel::from(row), &SPEC_COLUMNS)
}

/// Inserts a new flow carrying the write's sequence and time.
pub(super) async fn insert_flow(
    txn: &DatabaseTransaction,
    flow: &NewFlow,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<flows::Model, StateError> {
    require_org(txn, &flow.org_id).await?;
    check_slug(txn, &flow.org_id, &flow.spec.slug, None).await?;
    let mut row = blank_row(flow.id.as_str(), flow.org_id.as_str(), flow.pbm_id.as_str(), at);
    row.sequence = db_sequence(sequence)?;
    set_spec(&mut row, &flow.spec);
    flows::Entity::insert(flows::ActiveModel::from(row.clone()).reset_all())
        .exec_without_returning(txn)
        .await
        .map_err(|e| unique_as(e, "slug", flow_slug_taken))?;
    Ok(row)
}

/// Replaces every field of the flow `id` of `org`, stamping the write's `context` (sequence, time); with
/// `based_on`, only where the row still records that sequence ([`StateError::Stale`] otherwise, see
/// `Store::write_returning_known`). `ask_slug` asks first whether another flow has the slug (the unique
/// index decides either way); a caller that knows the slug is the flow's own skips it.
pub(super) async fn update_flow(
    txn: &DatabaseTransaction,
    org: &OrgId,
    id: &FlowId,
    spec: &FlowSpec,
    based_on: Option<u64>,
    ask_slug: bool,
    context: (u64, DateTime<Utc>),
) -> Result<flows::Model, StateError> {
    let (sequence, at) = context;
    if ask_slug {
        check_slug(txn, org, &spec.slug, Some(id.as_str())).await?;
    }
    let mut changes = spec_changes(spec);
    changes.changed_at = sea_orm::Set(at);
    changes.sequence = sea_orm::Set(db_sequence(sequence)?);
    let mut update = flows::Entity::update_many()
        .set(changes)
        .filter(flows::Column::OrgId.eq(org.as_str()))
        .filter(flows::Column::Id.eq(id.as_str()));
    if let Some(previous) = based_on {
        update = update.filter(flows::Column::Sequence.eq(db_sequence(previous)?));
    }
    // The row comes back whole, so nothing is read before the write.
    let updated = update.exec_with_returning(txn).await.map_err(|e| unique_as(e, "slug", flow_slug_taken))?;
    match updated.into_iter().next() {
        Some(row) => Ok(row),
        None if based_on.is_some() && flow_row(txn, org, id.as_str()).await?.is_some() => Err(StateError::Stale),
        None => Err(not_found(FLOW_NOT_FOUND).into()),
    }
}

/// Records a write on the flow aggregate that changed no flow column (a binding change), so the row's
/// change metadata keeps matching the aggregate's last event; answers whether the flow exists.
pub(super) async fn touch_flow(
    txn: &DatabaseTransaction,
    id: &str,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<bool, StateError> {
    let result = flows::Entity::update_many()
        .col_expr(flows::Column::ChangedAt, Expr::value(at))
        .col_expr(flows::Column::Sequence, Expr::value(db_sequence(sequence)?))
        .filter(flows::Column::Id.eq(id))
        .exec(txn)
        .await?;
    Ok(result.rows_affected > 0)
}

/// What deleting a flow takes along: its slug, its bindings and the policy bindings on it or on them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FlowCascade {
    slug: String,
    bindings: Vec<String>,
    policy_bindings: Vec<String>,
}

/// Reads the cascade of flow `id` through `db`; `lock` locks the rows (inside the deleting write).
async fn flow_cascade<C: ConnectionTrait>(
    db: &C,
    org: &OrgId,
    id: &str,
    lock: bool,
) -> std::result::Result<Option<FlowCascade>, sea_orm::DbErr> {
    let mut flow = of_org(org).filter(flows::Column::Id.eq(id));
    let mut binding_rows = bindings::Entity::find()
        .filter(bindings::Column::OrgId.eq(org.as_str()))
        .filter(bindings::Column::TargetId.eq(id))
        .order_by_asc(bindings::Column::Id);
    if lock {
        // Locking the flow row blocks new bindings and policy bindings on it (their foreign key checks
        // share-lock it); locking the binding rows blocks policy bindings on them.
        flow = flow.lock_exclusive();
        binding_rows = binding_rows.lock_exclusive();
    }
    let Some(flow) = flow.one(db).await? else { return Ok(None) };
    let bindings: Vec<String> = binding_rows.all(db).await?.into_iter().map(|b| b.id).collect();
    let policy_bindings = policy_bindings::Entity::find()
        .select_only()
        .column(policy_bindings::Column::Id)
        .filter(
            Condition::any()
                .add(policy_bindings::Column::FlowId.eq(id))
                .add(policy_bindings::Column::BindingId.is_in(bindings.iter().map(String::as_str))),
        )
        .order_by_asc(policy_bindings::Column::Id)
        .into_tuple::<String>()
        .all(db)
        .await?;
    Ok(Some(FlowCascade { slug: flow.slug, bindings, policy_bindings }))
}

fn flow_condition(backend: Backend, org: &OrgId, filter: &FlowFilter) -> Condition {
    let FlowFilter { designation, slug, name, denied_action, flow_uuid, search: needle } = filter;
    let mut all = Condition::all().add(flows::Column::OrgId.eq(org.as_str()));
    if let Some(designation) = designation {
        all = all.add(flows::Column::Designation.eq(designation.as_str()));
    }
    if let Some(slug) = slug {
        all = all.add(flows::Column::Slug.eq(slug.as_str()));
    }
    if let Some(name) = name {
        all = all.add(flows::Column::Name.eq(name.as_str()));
    }
    if let Some(denied_action) = denied_action {
        all = all.add(flows::Column::DeniedAction.eq(denied_action.as_str()));
    }
    if let Some(id) = flow_uuid {
        all = all.add(flows::Column::Id.eq(id.as_str()));
    }
    if let Some(needle) = needle {
        // Slugs, designations and denied actions are ASCII, where SQL's LOWER() agrees with Rust's on both
        // engines; names and titles use their lower-cased twins.
        all = all.add(
            Condition::any()
                .add(search(backend, Expr::col(flows::Column::NameLower), needle))
                .add(search(backend, Expr::col(flows::Column::TitleLower), needle))
                .add(search(backend, Func::lower(Expr::col(flows::Column::Slug)).into(), needle))
                .add(search(backend, Expr::col(flows::Column::Designation), needle))
                .add(search(backend, Expr::col(flows::Column::DeniedAction), needle)),
        );
    }
    all
}

impl FlowRepositories {
    async fn try_delete(&self, org: &OrgId, id: &FlowId, rewrites: &[StageRewrite], actor: &str) -> Result<Details> {
        let read = flow_cascade(self.store.reader(), org, id.as_str(), false).await.map_err(db_error)?;
        let read = read.ok_or_else(|| not_found(FLOW_NOT_FOUND))?;
        let event = events::flow_removed(&read.slug, &read.bindings, &read.policy_bindings);
        let backend = self.store.backend();
        self.store
            .write(intent(FLOW_AGGREGATE, id.as_str(), org, actor, vec![event]), |txn, ctx| {
                let (read, org, id, rewrites, actor) =
                    (read.clone(), org.clone(), id.clone(), rewrites.to_vec(), actor.to_owned());
                state(async move {
                    let now = flow_cascade(txn, &org, id.as_str(), true).await?;
                    match now {
                        None => return Err(not_found(FLOW_NOT_FOUND).into()),
                        Some(now) if now != read => return Err(cascade_changed()),
                        Some(_) => {}
                    }
                    stages::apply_rewrites(txn, backend, &org, &actor, &rewrites, None, ctx.created_at).await?;
                    delete_flow_rows(txn, id.as_str(), &read.bindings).await
                })
            })
            .await
    }
}

/// Deletes the policy bindings on the flow and on its `bindings`, the bindings and the flow; explicitly,
/// children first, so both engines do the same (the foreign keys' cascades are the backstop).
async fn delete_flow_rows(txn: &DatabaseTransaction, id: &str, binding_ids: &[String]) -> Result<(), StateError> {
    policy_bindings::Entity::delete_many()
        .filter(
            Condition::any()
                .add(policy_bindings::Column::FlowId.eq(id))
                .add(policy_bindings::Column::BindingId.is_in(binding_ids.iter().map(String::as_str))),
        )
        .exec(txn)
        .await?;
    bindings::Entity::delete_many().filter(bindings::Column::TargetId.eq(id)).exec(txn).await?;
    flows::Entity::delete_by_id(id).exec(txn).await?;
    Ok(())
}

#[async_trait]
impl FlowRepo for FlowRepositories {
    async fn create(&self, flow: &NewFlow, actor: &str) -> Result<Flow> {
        let events = vec![events::flow_added(flow)];
        let (row, _) = self
            .store
            .write_returning(intent(FLOW_AGGREGATE, flow.id.as_str(), &flow.org_id, actor, events), |txn, ctx| {
                let flow = flow.clone();
                state(async move { insert_flow(txn, &flow, ctx.sequence, ctx.created_at).await })
            })
            .await?;
        flow_from_row(row)
    }

    async fn get(&self, org: &OrgId, id: &FlowId) -> Result<Option<Flow>> {
        flow_row(self.store.reader(), org, id.as_str()).await.map_err(db_error)?.map(flow_from_row).transpose()
    }

    async fn get_by_slug(&self, org: &OrgId, slug: &Slug) -> Result<Option<Flow>> {
        let row = of_org(org).filter(flows::Column::Slug.eq(slug.as_str())).one(self.store.reader()).await;
        row.map_err(db_error)?.map(flow_from_row).transpose()
    }

    async fn get_by_pbm(&self, org: &OrgId, pbm: &PbmId) -> Result<Option<Flow>> {
        let row = of_org(org).filter(flows::Column::PbmId.eq(pbm.as_str())).one(self.store.reader()).await;
        row.map_err(db_error)?.map(flow_from_row).transpose()
    }

    async fn get_many(&self, org: &OrgId, ids: &[FlowId]) -> Result<Vec<Flow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = of_org(org)
            .filter(flows::Column::Id.is_in(ids.iter().map(FlowId::as_str)))
            .order_by_asc(flows::Column::Slug)
            .order_by_asc(flows::Column::Id)
            .all(self.store.reader())
            .await
            .map_err(db_error)?;
        rows.into_iter().map(flow_from_row).collect()
    }

    async fn list(
        &self,
        org: &OrgId,
        filter: &FlowFilter,
        ordering: Ordering<FlowOrder>,
        page_request: PageRequest,
    ) -> Result<Page<Flow>> {
        let direction = order(ordering.descending);
        let select = flows::Entity::find().filter(flow_condition(self.store.backend(), org, filter));
        let select = match ordering.field {
            FlowOrder::Slug => select.order_by(flows::Column::Slug, direction).order_by_asc(flows::Column::Name),
            FlowOrder::Name => select.order_by(flows::Column::Name, direction),
            FlowOrder::Title => select.order_by(flows::Column::Title, direction),
            FlowOrder::Designation => select.order_by(flows::Column::Designation, direction),
            FlowOrder::Pk => select.order_by(flows::Column::Id, direction),
        }
        .order_by_asc(flows::Column::Id);
        let (rows, total) = page(&self.store, select, page_request).await?;
        into_page(rows, total, flow_from_row)
    }

    async fn update(&self, org: &OrgId, read: &Flow, spec: &FlowSpec, actor: &str) -> Result<Flow> {
        let events = vec![events::flow_changed(spec)];
        // The row records the details the caller read; the write starts from them (see
        // `write_returning_known`). A slug the flow keeps needs no asking.
        let ask_slug = spec.slug != read.spec.slug;
        let (row, _) = self
            .store
            .write_returning_known(
                intent(FLOW_AGGREGATE, read.id.as_str(), org, actor, events),
                &read.details,
                |txn, ctx| {
                    let (org, id, spec) = (org.clone(), read.id.clone(), spec.clone());
                    state(async move {
                        let context = (ctx.sequence, ctx.created_at);
                        update_flow(txn, &org, &id, &spec, Some(ctx.previous_sequence), ask_slug, context).await
                    })
                },
            )
            .await?;
        flow_from_row(row)
    }

    async fn delete(&self, org: &OrgId, id: &FlowId, rewrites: &[StageRewrite], actor: &str) -> Result<Details> {
        retry_cascade(|| self.try_delete(org, id, rewrites, actor)).await
    }

    async fn import(&self, org: &OrgId, write: &ImportWrite, actor: &str) -> Result<Details> {
        retry_cascade(|| super::import::import(&self.store, org, write, actor)).await
    }
}

/// Id of the flow of `org` with `id`, if any (for the reference checks of bindings).
pub(super) async fn flow_exists(txn: &DatabaseTransaction, org: &OrgId, id: &str) -> Result<bool, StateError> {
    let found =
        of_org(org).filter(flows::Column::Id.eq(id)).select_only().column(flows::Column::Id).into_tuple::<String>();
    Ok(found.one(txn).await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An update writes only [`SPEC_COLUMNS`]: a column `set_spec` fills but the list lacks would be
    /// silently left as it was.
    #[test]
    fn spec_changes_cover_every_column_set_spec_writes() {
        let spec = FlowSpec {
            name: "Name".into(),
            slug: Slug::parse("slug").expect("slug"),
            title: "Title".into(),
            designation: Designation::Enrollment,
            layout: Layout::SidebarRight,
            background: Some("/bg.png".into()),
            compatibility_mode: true,
            denied_action: DeniedAction::Continue,
            authentication: Authentication::RequireSuperuser,
            policy_engine_mode: PolicyEngineMode::All,
        };
        let blank = flows::ActiveModel::from(blank_row("", "", "", DateTime::<Utc>::UNIX_EPOCH));
        crate::identity::assert_changes_cover(&spec_changes(&spec), &blank, &SPEC_COLUMNS);
    }
}
