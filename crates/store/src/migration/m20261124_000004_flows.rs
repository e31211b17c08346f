//! Flow definitions: flows, stages (typed configuration as JSON text), stage bindings, expression policies
//! and policy bindings, all owned by an organization.
//!
//! Links inside a stage's configuration (enrollment_flow, password_stage, …) live in the JSON and have no
//! foreign key: the core rewrites the configurations of linking stages in the deleting write.

use sea_orm_migration::prelude::*;

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000004_flows"
    }
}

#[derive(DeriveIden)]
enum Orgs {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Flows {
    Table,
    Id,
    OrgId,
    PbmId,
    Name,
    NameLower,
    Slug,
    Title,
    TitleLower,
    Designation,
    Layout,
    Background,
    CompatibilityMode,
    DeniedAction,
    Authentication,
    PolicyEngineMode,
    CreatedAt,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum Stages {
    Table,
    Id,
    OrgId,
    Name,
    NameLower,
    StageType,
    Config,
    CreatedAt,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum FlowStageBindings {
    Table,
    Id,
    OrgId,
    PbmId,
    TargetId,
    StageId,
    Order,
    EvaluateOnPlan,
    ReEvaluatePolicies,
    PolicyEngineMode,
    InvalidResponseAction,
    CreatedAt,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum Policies {
    Table,
    Id,
    OrgId,
    Name,
    NameLower,
    Expression,
    ExecutionLogging,
    CreatedAt,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum PolicyBindings {
    Table,
    Id,
    OrgId,
    PolicyId,
    Target,
    FlowId,
    BindingId,
    Negate,
    Enabled,
    Order,
    Timeout,
    FailureResult,
    CreatedAt,
    ChangedAt,
    Sequence,
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn flag(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).boolean().not_null().to_owned()
}

fn integer(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).integer().not_null().to_owned()
}

/// The columns every state table carries so that `details` can be answered from the row alone.
fn details_columns(
    table: &mut TableCreateStatement,
    created: impl IntoIden,
    changed: impl IntoIden,
    seq: impl IntoIden,
) {
    table
        .col(ColumnDef::new(created).timestamp_with_time_zone().not_null())
        .col(ColumnDef::new(changed).timestamp_with_time_zone().not_null())
        .col(ColumnDef::new(seq).big_integer().not_null());
}

/// A row never outlives its organization: the repositories never delete orgs' flow objects one by one,
/// the cascade does it in the same statement as the org row.
fn owned_by_org(name: &str, table: impl IntoIden, col: impl IntoIden) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(table, col)
        .to(Orgs::Table, Orgs::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

fn index(
    name: &str,
    table: impl IntoIden,
    cols: impl IntoIterator<Item = impl IntoIndexColumn>,
) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(table);
    for col in cols {
        index.col(col);
    }
    index.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Constraint names contain the column names they cover: the repositories tell which field a unique
        // violation hit by looking for the column name (see `backend::unique_violation_target`).
        // Text search ignoring case compares the `*_lower` twins, lower-cased by the writer in Rust, so it
        // agrees beyond ASCII on both engines (SQLite's LOWER() only folds ASCII).
        let mut flows = Table::create();
        flows
            .table(Flows::Table)
            .col(text(Flows::Id).primary_key())
            .col(text(Flows::OrgId))
            .col(text(Flows::PbmId))
            .col(text(Flows::Name))
            .col(text(Flows::NameLower))
            .col(text(Flows::Slug))
            .col(text(Flows::Title))
            .col(text(Flows::TitleLower))
            .col(text(Flows::Designation))
            .col(text(Flows::Layout))
            .col(ColumnDef::new(Flows::Background).text().null())
            .col(flag(Flows::CompatibilityMode))
            .col(text(Flows::DeniedAction))
            .col(text(Flows::Authentication))
            .col(text(Flows::PolicyEngineMode))
            .index(Index::create().name("flows_org_id_slug_key").col(Flows::OrgId).col(Flows::Slug).unique())
            .index(Index::create().name("flows_pbm_id_key").col(Flows::PbmId).unique())
            .foreign_key(&mut owned_by_org("flows_org_id_fkey", Flows::Table, Flows::OrgId));
        details_columns(&mut flows, Flows::CreatedAt, Flows::ChangedAt, Flows::Sequence);
        manager.create_table(flows).await?;
        manager
            .create_index(index("flows_org_id_designation_idx", Flows::Table, [Flows::OrgId, Flows::Designation]))
            .await?;
        manager
            .create_index(index("flows_org_id_name_lower_idx", Flows::Table, [Flows::OrgId, Flows::NameLower]))
            .await?;

        let mut stages = Table::create();
        stages
            .table(Stages::Table)
            .col(text(Stages::Id).primary_key())
            .col(text(Stages::OrgId))
            .col(text(Stages::Name))
            .col(text(Stages::NameLower))
            .col(text(Stages::StageType))
            // The type's fields as a JSON object in text: read and written whole, never queried inside.
            .col(text(Stages::Config))
            .index(Index::create().name("stages_org_id_name_key").col(Stages::OrgId).col(Stages::Name).unique())
            .foreign_key(&mut owned_by_org("stages_org_id_fkey", Stages::Table, Stages::OrgId));
        details_columns(&mut stages, Stages::CreatedAt, Stages::ChangedAt, Stages::Sequence);
        manager.create_table(stages).await?;
        manager
            .create_index(index("stages_org_id_stage_type_idx", Stages::Table, [Stages::OrgId, Stages::StageType]))
            .await?;

        let mut bindings = Table::create();
        bindings
            .table(FlowStageBindings::Table)
            .col(text(FlowStageBindings::Id).primary_key())
            .col(text(FlowStageBindings::OrgId))
            .col(text(FlowStageBindings::PbmId))
            .col(text(FlowStageBindings::TargetId))
            .col(text(FlowStageBindings::StageId))
            .col(integer(FlowStageBindings::Order))
            .col(flag(FlowStageBindings::EvaluateOnPlan))
            .col(flag(FlowStageBindings::ReEvaluatePolicies))
            .col(text(FlowStageBindings::PolicyEngineMode))
            .col(text(FlowStageBindings::InvalidResponseAction))
            .index(
                Index::create()
                    .name("flow_stage_bindings_target_id_stage_id_order_key")
                    .col(FlowStageBindings::TargetId)
                    .col(FlowStageBindings::StageId)
                    .col(FlowStageBindings::Order)
                    .unique(),
            )
            .index(Index::create().name("flow_stage_bindings_pbm_id_key").col(FlowStageBindings::PbmId).unique())
            .foreign_key(&mut owned_by_org(
                "flow_stage_bindings_org_id_fkey",
                FlowStageBindings::Table,
                FlowStageBindings::OrgId,
            ))
            // A flow or stage delete takes its bindings along (authentik's CASCADE); the repositories also
            // delete them explicitly to record why.
            .foreign_key(
                ForeignKey::create()
                    .name("flow_stage_bindings_target_id_fkey")
                    .from(FlowStageBindings::Table, FlowStageBindings::TargetId)
                    .to(Flows::Table, Flows::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            )
            .foreign_key(
                ForeignKey::create()
                    .name("flow_stage_bindings_stage_id_fkey")
                    .from(FlowStageBindings::Table, FlowStageBindings::StageId)
                    .to(Stages::Table, Stages::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            );
        details_columns(
            &mut bindings,
            FlowStageBindings::CreatedAt,
            FlowStageBindings::ChangedAt,
            FlowStageBindings::Sequence,
        );
        manager.create_table(bindings).await?;
        manager
            .create_index(index(
                "flow_stage_bindings_stage_id_idx",
                FlowStageBindings::Table,
                [FlowStageBindings::StageId],
            ))
            .await?;
        manager
            .create_index(index(
                "flow_stage_bindings_org_id_target_id_order_idx",
                FlowStageBindings::Table,
                [FlowStageBindings::OrgId, FlowStageBindings::TargetId, FlowStageBindings::Order],
            ))
            .await?;

        let mut policies = Table::create();
        policies
            .table(Policies::Table)
            .col(text(Policies::Id).primary_key())
            .col(text(Policies::OrgId))
            .col(text(Policies::Name))
            .col(text(Policies::NameLower))
            .col(text(Policies::Expression))
            .col(flag(Policies::ExecutionLogging))
            .index(Index::create().name("policies_org_id_name_key").col(Policies::OrgId).col(Policies::Name).unique())
            .foreign_key(&mut owned_by_org("policies_org_id_fkey", Policies::Table, Policies::OrgId));
        details_columns(&mut policies, Policies::CreatedAt, Policies::ChangedAt, Policies::Sequence);
        manager.create_table(policies).await?;

        // `target` is the policy binding model id of a flow or of a stage binding (the API's `target`);
        // exactly one of `flow_id`/`binding_id` names the row behind it, so that the foreign keys can
        // cascade a flow's or a binding's delete to the policy bindings on it.
        let mut policy_bindings = Table::create();
        policy_bindings
            .table(PolicyBindings::Table)
            .col(text(PolicyBindings::Id).primary_key())
            .col(text(PolicyBindings::OrgId))
            .col(text(PolicyBindings::PolicyId))
            .col(text(PolicyBindings::Target))
            .col(ColumnDef::new(PolicyBindings::FlowId).text().null())
            .col(ColumnDef::new(PolicyBindings::BindingId).text().null())
            .col(flag(PolicyBindings::Negate))
            .col(flag(PolicyBindings::Enabled))
            .col(integer(PolicyBindings::Order))
            .col(integer(PolicyBindings::Timeout))
            .col(flag(PolicyBindings::FailureResult))
            .check(Expr::cust("(flow_id IS NULL) <> (binding_id IS NULL)"))
            .index(
                Index::create()
                    .name("policy_bindings_target_order_key")
                    .col(PolicyBindings::Target)
                    .col(PolicyBindings::Order)
                    .unique(),
            )
            .foreign_key(&mut owned_by_org("policy_bindings_org_id_fkey", PolicyBindings::Table, PolicyBindings::OrgId))
            .foreign_key(
                ForeignKey::create()
                    .name("policy_bindings_policy_id_fkey")
                    .from(PolicyBindings::Table, PolicyBindings::PolicyId)
                    .to(Policies::Table, Policies::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            )
            .foreign_key(
                ForeignKey::create()
                    .name("policy_bindings_flow_id_fkey")
                    .from(PolicyBindings::Table, PolicyBindings::FlowId)
                    .to(Flows::Table, Flows::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            )
            .foreign_key(
                ForeignKey::create()
                    .name("policy_bindings_binding_id_fkey")
                    .from(PolicyBindings::Table, PolicyBindings::BindingId)
                    .to(FlowStageBindings::Table, FlowStageBindings::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            );
        details_columns(
            &mut policy_bindings,
            PolicyBindings::CreatedAt,
            PolicyBindings::ChangedAt,
            PolicyBindings::Sequence,
        );
        manager.create_table(policy_bindings).await?;
        for (name, col) in [
            ("policy_bindings_policy_id_idx", PolicyBindings::PolicyId),
            ("policy_bindings_flow_id_idx", PolicyBindings::FlowId),
            ("policy_bindings_binding_id_idx", PolicyBindings::BindingId),
            ("policy_bindings_org_id_idx", PolicyBindings::OrgId),
        ] {
            manager.create_index(index(name, PolicyBindings::Table, [col])).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            PolicyBindings::Table.into_iden(),
            Policies::Table.into_iden(),
            FlowStageBindings::Table.into_iden(),
            Stages::Table.into_iden(),
            Flows::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
