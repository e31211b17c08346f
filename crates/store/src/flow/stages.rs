//! [`StageRepo`]: stages with their typed configuration, and the rewrites of linking stages that deletes
//! apply.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::Result;
use flowgate_core::event::Details;
use flowgate_core::flow::ports::{
    NewStage, STAGE_AGGREGATE, STAGE_NOT_FOUND, StageRepo, StageRewrite, events, not_found, stage_name_taken,
};
use flowgate_core::flow::{
    Ordering, Page, PageRequest, Stage, StageConfig, StageFilter, StageId, StageOrder, StageSpec, StageType,
};
use flowgate_core::identity::OrgId;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::entity::{bindings, policy_bindings, stages};
use super::{
    FlowRepositories, aggregate, append_other, cascade_changed, corrupt, db_sequence, details, intent, into_page,
    nothing, order, page, require_org, retry_cascade, search, unique_as,
};
use crate::backend::Backend;
use crate::error::db_error;
use crate::event_log::{StateError, state};

/// The domain object of a stage row.
pub(super) fn stage_from_row(row: stages::Model) -> Result<Stage> {
    let stage_type = StageType::parse(&row.stage_type).ok_or_else(|| corrupt("stage type", &row.stage_type))?;
    let json: serde_json::Value = serde_json::from_str(&row.config).map_err(|_| corrupt("stage config", &row.id))?;
    let config = StageConfig::from_json(stage_type, json).map_err(|e| corrupt("stage config", &e))?;
    Ok(Stage {
        details: details(row.created_at, row.changed_at, row.sequence, &row.org_id)?,
        id: row.id.into(),
        org_id: row.org_id.into(),
        spec: StageSpec { name: row.name, config },
    })
}

/// Writes `spec` into `row`.
fn set_spec(row: &mut stages::Model, spec: &StageSpec) {
    let StageSpec { name, config } = spec;
    row.name.clone_from(name);
    row.name_lower = name.to_lowercase();
    row.stage_type = config.stage_type().as_str().to_owned();
    row.config = config.to_json().to_string();
}

fn of_org(org: &OrgId) -> sea_orm::Select<stages::Entity> {
    stages::Entity::find().filter(stages::Column::OrgId.eq(org.as_str()))
}

/// The stage row `id` of `org` read through `db`.
async fn stage_row<C: ConnectionTrait>(
    db: &C,
    org: &OrgId,
    id: &str,
) -> std::result::Result<Option<stages::Model>, sea_orm::DbErr> {
    of_org(org).filter(stages::Column::Id.eq(id)).one(db).await
}

/// Whether the org has a stage `id` (for the reference checks of bindings).
pub(super) async fn stage_exists(txn: &DatabaseTransaction, org: &OrgId, id: &str) -> Result<bool, StateError> {
    let found =
        of_org(org).filter(stages::Column::Id.eq(id)).select_only().column(stages::Column::Id).into_tuple::<String>();
    Ok(found.one(txn).await?.is_some())
}

/// Fails with [`stage_name_taken`] when another stage of the org (than `except`) has the name; the
/// unique index remains the guarantee under concurrency.
async fn check_name(
    txn: &DatabaseTransaction,
    org: &OrgId,
    name: &str,
    except: Option<&str>,
) -> Result<(), StateError> {
    let mut query = of_org(org).filter(stages::Column::Name.eq(name));
    if let Some(id) = except {
        query = query.filter(stages::Column::Id.ne(id));
    }
    match query.select_only().column(stages::Column::Id).into_tuple::<String>().one(txn).await? {
        Some(_) => Err(stage_name_taken().into()),
        None => Ok(()),
    }
}

/// Inserts a new stage carrying the write's sequence and time.
pub(super) async fn insert_stage(
    txn: &DatabaseTransaction,
    stage: &NewStage,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<stages::Model, StateError> {
    require_org(txn, &stage.org_id).await?;
    check_name(txn, &stage.org_id, &stage.spec.name, None).await?;
    let mut row = stages::Model {
        id: stage.id.as_str().to_owned(),
        org_id: stage.org_id.as_str().to_owned(),
        name: String::new(),
        name_lower: String::new(),
        stage_type: String::new(),
        config: String::new(),
        created_at: at,
        changed_at: at,
        sequence: db_sequence(sequence)?,
    };
    set_spec(&mut row, &stage.spec);
    stages::Entity::insert(stages::ActiveModel::from(row.clone()).reset_all())
        .exec_without_returning(txn)
        .await
        .map_err(|e| unique_as(e, "name", stage_name_taken))?;
    Ok(row)
}

/// Replaces name and configuration of stage `id` of `org`, stamping the write's sequence and time;
/// `None` when there is no such stage.
async fn replace_stage(
    txn: &DatabaseTransaction,
    org: &OrgId,
    id: &str,
    spec: &StageSpec,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<Option<stages::Model>, StateError> {
    let Some(mut row) = stage_row(txn, org, id).await? else { return Ok(None) };
    check_name(txn, org, &spec.name, Some(id)).await?;
    set_spec(&mut row, spec);
    row.changed_at = at;
    row.sequence = db_sequence(sequence)?;
    stages::ActiveModel::from(row.clone())
        .reset_all()
        .update(txn)
        .await
        .map_err(|e| unique_as(e, "name", stage_name_taken))?;
    Ok(Some(row))
}

/// Replaces name and configuration of stage `id` of `org`; NotFound [`STAGE_NOT_FOUND`] when missing.
pub(super) async fn update_stage(
    txn: &DatabaseTransaction,
    org: &OrgId,
    id: &StageId,
    spec: &StageSpec,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<stages::Model, StateError> {
    replace_stage(txn, org, id.as_str(), spec, sequence, at).await?.ok_or_else(|| not_found(STAGE_NOT_FOUND).into())
}

/// Applies `rewrites` inside a deleting write: each existing stage of the org (other than `skip`) gets its
/// new spec and a `stage.changed` event on its own aggregate; stages gone meanwhile are skipped.
pub(super) async fn apply_rewrites(
    txn: &DatabaseTransaction,
    backend: Backend,
    org: &OrgId,
    actor: &str,
    rewrites: &[StageRewrite],
    skip: Option<&StageId>,
    at: DateTime<Utc>,
) -> Result<(), StateError> {
    for StageRewrite { id, spec } in rewrites {
        if skip == Some(id) || !stage_exists(txn, org, id.as_str()).await? {
            continue;
        }
        let stage = aggregate(STAGE_AGGREGATE, id.as_str());
        let (sequence, at) = append_other(txn, backend, &stage, org, actor, events::stage_changed(spec), at).await?;
        replace_stage(txn, org, id.as_str(), spec, sequence, at).await?;
    }
    Ok(())
}

/// What deleting a stage takes along: its name, its bindings and the policy bindings on them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StageCascade {
    name: String,
    bindings: Vec<String>,
    policy_bindings: Vec<String>,
}

/// Reads the cascade of stage `id` through `db`; `lock` locks the rows (inside the deleting write).
async fn stage_cascade<C: ConnectionTrait>(
    db: &C,
    org: &OrgId,
    id: &str,
    lock: bool,
) -> std::result::Result<Option<StageCascade>, sea_orm::DbErr> {
    let mut stage = of_org(org).filter(stages::Column::Id.eq(id));
    let mut binding_rows = bindings::Entity::find()
        .filter(bindings::Column::OrgId.eq(org.as_str()))
        .filter(bindings::Column::StageId.eq(id))
        .order_by_asc(bindings::Column::Id);
    if lock {
        // The stage row lock blocks new bindings of it (foreign key checks share-lock it), the binding
        // row locks block policy bindings on them.
        stage = stage.lock_exclusive();
        binding_rows = binding_rows.lock_exclusive();
    }
    let Some(stage) = stage.one(db).await? else { return Ok(None) };
    let bindings: Vec<String> = binding_rows.all(db).await?.into_iter().map(|b| b.id).collect();
    let policy_bindings = if bindings.is_empty() {
        Vec::new()
    } else {
        policy_bindings::Entity::find()
            .select_only()
            .column(policy_bindings::Column::Id)
            .filter(policy_bindings::Column::BindingId.is_in(bindings.iter().map(String::as_str)))
            .order_by_asc(policy_bindings::Column::Id)
            .into_tuple::<String>()
            .all(db)
            .await?
    };
    Ok(Some(StageCascade { name: stage.name, bindings, policy_bindings }))
}

fn stage_condition(backend: Backend, org: &OrgId, filter: &StageFilter) -> Condition {
    let StageFilter { name, stage_type, stage_uuid, search: needle } = filter;
    let mut all = Condition::all().add(stages::Column::OrgId.eq(org.as_str()));
    if let Some(name) = name {
        all = all.add(stages::Column::Name.eq(name.as_str()));
    }
    if let Some(stage_type) = stage_type {
        all = all.add(stages::Column::StageType.eq(stage_type.as_str()));
    }
    if let Some(id) = stage_uuid {
        all = all.add(stages::Column::Id.eq(id.as_str()));
    }
    if let Some(needle) = needle {
        all = all.add(search(backend, Expr::col(stages::Column::NameLower), needle));
    }
    all
}

/// Ids of the stages of `org` whose name contains `needle` ignoring case (the binding list's search).
pub(super) fn named_like(backend: Backend, org: &OrgId, needle: &str) -> sea_orm::sea_query::SelectStatement {
    sea_orm::sea_query::Query::select()
        .column(stages::Column::Id)
        .from(stages::Entity)
        .and_where(Expr::col(stages::Column::OrgId).eq(org.as_str()))
        .and_where(search(backend, Expr::col(stages::Column::NameLower), needle))
        .to_owned()
}

impl FlowRepositories {
    async fn try_delete_stage(
        &self,
        org: &OrgId,
        id: &StageId,
        rewrites: &[StageRewrite],
        actor: &str,
    ) -> Result<Details> {
        let read = stage_cascade(self.store.reader(), org, id.as_str(), false).await.map_err(db_error)?;
        let read = read.ok_or_else(|| not_found(STAGE_NOT_FOUND))?;
        let event = events::stage_removed(&read.name, &read.bindings, &read.policy_bindings);
        let backend = self.store.backend();
        self.store
            .write(intent(STAGE_AGGREGATE, id.as_str(), org, actor, vec![event]), |txn, ctx| {
                let (read, org, id, rewrites, actor) =
                    (read.clone(), org.clone(), id.clone(), rewrites.to_vec(), actor.to_owned());
                state(async move {
                    match stage_cascade(txn, &org, id.as_str(), true).await? {
                        None => return Err(not_found(STAGE_NOT_FOUND).into()),
                        Some(now) if now != read => return Err(cascade_changed()),
                        Some(_) => {}
                    }
                    apply_rewrites(txn, backend, &org, &actor, &rewrites, Some(&id), ctx.created_at).await?;
                    if !read.bindings.is_empty() {
                        policy_bindings::Entity::delete_many()
                            .filter(policy_bindings::Column::BindingId.is_in(read.bindings.iter().map(String::as_str)))
                            .exec(txn)
                            .await?;
                    }
                    bindings::Entity::delete_many().filter(bindings::Column::StageId.eq(id.as_str())).exec(txn).await?;
                    stages::Entity::delete_by_id(id.as_str()).exec(txn).await?;
                    Ok(())
                })
            })
            .await
    }
}

#[async_trait]
impl StageRepo for FlowRepositories {
    async fn create(&self, stage: &NewStage, actor: &str) -> Result<Stage> {
        let events = vec![events::stage_added(stage)];
        let (row, _) = self
            .store
            .write_returning(intent(STAGE_AGGREGATE, stage.id.as_str(), &stage.org_id, actor, events), |txn, ctx| {
                let stage = stage.clone();
                state(async move { insert_stage(txn, &stage, ctx.sequence, ctx.created_at).await })
            })
            .await?;
        stage_from_row(row)
    }

    async fn get(&self, org: &OrgId, id: &StageId) -> Result<Option<Stage>> {
        stage_row(self.store.reader(), org, id.as_str()).await.map_err(db_error)?.map(stage_from_row).transpose()
    }

    async fn get_by_name(&self, org: &OrgId, name: &str) -> Result<Option<Stage>> {
        let row = of_org(org).filter(stages::Column::Name.eq(name)).one(self.store.reader()).await;
        row.map_err(db_error)?.map(stage_from_row).transpose()
    }

    async fn get_many(&self, org: &OrgId, ids: &[StageId]) -> Result<Vec<Stage>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = of_org(org)
            .filter(stages::Column::Id.is_in(ids.iter().map(StageId::as_str)))
            .order_by_asc(stages::Column::Name)
            .order_by_asc(stages::Column::Id)
            .all(self.store.reader())
            .await
            .map_err(db_error)?;
        rows.into_iter().map(stage_from_row).collect()
    }

    async fn of_types(&self, org: &OrgId, types: &[StageType]) -> Result<Vec<Stage>> {
        let condition = match types {
            [] => nothing(),
            types => Expr::col(stages::Column::StageType).is_in(types.iter().map(|t| t.as_str())),
        };
        let rows = of_org(org)
            .filter(condition)
            .order_by_asc(stages::Column::Name)
            .order_by_asc(stages::Column::Id)
            .all(self.store.reader())
            .await
            .map_err(db_error)?;
        rows.into_iter().map(stage_from_row).collect()
    }

    async fn list(
        &self,
        org: &OrgId,
        filter: &StageFilter,
        ordering: Ordering<StageOrder>,
        page_request: PageRequest,
    ) -> Result<Page<Stage>> {
        let direction = order(ordering.descending);
        let select = stages::Entity::find().filter(stage_condition(self.store.backend(), org, filter));
        let select = match ordering.field {
            StageOrder::Name => select.order_by(stages::Column::Name, direction),
            StageOrder::Pk => select.order_by(stages::Column::Id, direction),
        }
        .order_by_asc(stages::Column::Id);
        let (rows, total) = page(&self.store, select, page_request).await?;
        into_page(rows, total, stage_from_row)
    }

    async fn update(&self, org: &OrgId, id: &StageId, spec: &StageSpec, actor: &str) -> Result<Stage> {
        let events = vec![events::stage_changed(spec)];
        let (row, _) = self
            .store
            .write_returning(intent(STAGE_AGGREGATE, id.as_str(), org, actor, events), |txn, ctx| {
                let (org, id, spec) = (org.clone(), id.clone(), spec.clone());
                state(async move { update_stage(txn, &org, &id, &spec, ctx.sequence, ctx.created_at).await })
            })
            .await?;
        stage_from_row(row)
    }

    async fn delete(&self, org: &OrgId, id: &StageId, rewrites: &[StageRewrite], actor: &str) -> Result<Details> {
        retry_cascade(|| self.try_delete_stage(org, id, rewrites, actor)).await
    }
}
