//! The event log: one row per event, numbered per aggregate.

use sea_orm_migration::prelude::*;

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000001_event_log"
    }
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Position,
    AggregateType,
    AggregateId,
    Sequence,
    EventType,
    Payload,
    ResourceOwner,
    Creator,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    // Global order of all events, for projections that follow the log.
                    .col(ColumnDef::new(Events::Position).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Events::AggregateType).text().not_null())
                    .col(ColumnDef::new(Events::AggregateId).text().not_null())
                    .col(
                        ColumnDef::new(Events::Sequence)
                            .big_integer()
                            .not_null()
                            .check(Expr::col(Events::Sequence).gte(1)),
                    )
                    .col(ColumnDef::new(Events::EventType).text().not_null())
                    .col(ColumnDef::new(Events::Payload).json_binary().not_null())
                    .col(ColumnDef::new(Events::ResourceOwner).text().not_null())
                    .col(ColumnDef::new(Events::Creator).text().not_null())
                    .col(ColumnDef::new(Events::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        // The unique key is what makes concurrent appends safe (two writers cannot both take sequence n),
        // and being ordered by sequence it is also the index for reading one aggregate in order and for
        // finding its last event; a second index on the same columns would only slow writes down.
        manager
            .create_index(
                Index::create()
                    .name("events_aggregate_sequence_key")
                    .table(Events::Table)
                    .col(Events::AggregateType)
                    .col(Events::AggregateId)
                    .col(Events::Sequence)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Events::Table).to_owned()).await
    }

    fn use_transaction(&self) -> Option<bool> {
        // SQLite DDL is transactional too: a failed migration must leave nothing behind on either engine.
        Some(true)
    }
}
