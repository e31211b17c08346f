//! Identity providers: their configurations, the intents of logins at them and users' links to them.

use sea_orm_migration::prelude::*;

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000005_idps"
    }
}

#[derive(DeriveIden)]
enum Idps {
    Table,
    Id,
    Name,
    NameLower,
    State,
    Kind,
    Template,
    Config,
    Options,
    CreatedAt,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum IdpIntents {
    Table,
    Id,
    IdpId,
    State,
    SuccessUrl,
    FailureUrl,
    PkceVerifier,
    Nonce,
    TokenHash,
    External,
    UserId,
    CreatedAt,
    SucceededAt,
    ExpiresAt,
    FailureReason,
    FailureDescription,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum UserIdpLinks {
    Table,
    IdpId,
    ExternalUserId,
    ExternalUsername,
    UserId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn text_or_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().null().to_owned()
}

fn at(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().not_null().to_owned()
}

fn at_or_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().null().to_owned()
}

fn sequence(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The kind-specific configuration is one JSON document (secrets inside it sealed by the core):
        // it is always read and replaced whole, and only `kind`, `name` and `state` are ever filtered on.
        manager
            .create_table(
                Table::create()
                    .table(Idps::Table)
                    .col(text(Idps::Id).primary_key())
                    .col(text(Idps::Name))
                    // Lower-cased by the writer, like the identity tables, for case-insensitive name queries.
                    .col(text(Idps::NameLower))
                    .col(text(Idps::State).check(Expr::col(Idps::State).is_in(["active", "inactive"])))
                    .col(text(Idps::Kind).check(Expr::col(Idps::Kind).is_in(["oidc", "oauth", "ldap"])))
                    .col(text_or_null(Idps::Template))
                    .col(ColumnDef::new(Idps::Config).json_binary().not_null())
                    .col(ColumnDef::new(Idps::Options).json_binary().not_null())
                    .col(at(Idps::CreatedAt))
                    .col(at(Idps::ChangedAt))
                    .col(sequence(Idps::Sequence))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("idps_created_at_idx").table(Idps::Table).col(Idps::CreatedAt).to_owned(),
            )
            .await?;

        // An intent only ever moves out of `succeeded` through a conditional update on `state`, so the
        // database row lock decides which of several concurrent consumers wins.
        manager
            .create_table(
                Table::create()
                    .table(IdpIntents::Table)
                    .col(text(IdpIntents::Id).primary_key())
                    .col(text(IdpIntents::IdpId))
                    .col(text(IdpIntents::State).check(Expr::col(IdpIntents::State).is_in([
                        "started",
                        "succeeded",
                        "failed",
                        "consumed",
                    ])))
                    .col(text_or_null(IdpIntents::SuccessUrl))
                    .col(text_or_null(IdpIntents::FailureUrl))
                    .col(text_or_null(IdpIntents::PkceVerifier))
                    .col(text_or_null(IdpIntents::Nonce))
                    // SHA-256 of the intent token; looked up with the intent id, so no index of its own.
                    .col(text_or_null(IdpIntents::TokenHash))
                    .col(ColumnDef::new(IdpIntents::External).json_binary().null())
                    // No foreign key: the intent records who logged in even when that user is removed later.
                    .col(text_or_null(IdpIntents::UserId))
                    .col(at(IdpIntents::CreatedAt))
                    .col(at_or_null(IdpIntents::SucceededAt))
                    .col(at(IdpIntents::ExpiresAt))
                    .col(text_or_null(IdpIntents::FailureReason))
                    .col(text_or_null(IdpIntents::FailureDescription))
                    .col(at(IdpIntents::ChangedAt))
                    .col(sequence(IdpIntents::Sequence))
                    // The repositories delete an IdP's intents explicitly; the cascade is the backstop.
                    .foreign_key(
                        ForeignKey::create()
                            .name("idp_intents_idp_id_fkey")
                            .from(IdpIntents::Table, IdpIntents::IdpId)
                            .to(Idps::Table, Idps::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idp_intents_idp_id_idx")
                    .table(IdpIntents::Table)
                    .col(IdpIntents::IdpId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idp_intents_expires_at_idx")
                    .table(IdpIntents::Table)
                    .col(IdpIntents::ExpiresAt)
                    .to_owned(),
            )
            .await?;

        // The key is the uniqueness rule itself: one external account is linked to at most one user. Both
        // foreign keys cascade so that no path that removes a user or an IdP (including an organization's
        // removal, which deletes its users) can leave a link behind.
        manager
            .create_table(
                Table::create()
                    .table(UserIdpLinks::Table)
                    .col(text(UserIdpLinks::IdpId))
                    .col(text(UserIdpLinks::ExternalUserId))
                    .col(text(UserIdpLinks::ExternalUsername))
                    .col(text(UserIdpLinks::UserId))
                    .col(at(UserIdpLinks::CreatedAt))
                    .primary_key(
                        Index::create()
                            .name("user_idp_links_pkey")
                            .col(UserIdpLinks::IdpId)
                            .col(UserIdpLinks::ExternalUserId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("user_idp_links_idp_id_fkey")
                            .from(UserIdpLinks::Table, UserIdpLinks::IdpId)
                            .to(Idps::Table, Idps::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("user_idp_links_user_id_fkey")
                            .from(UserIdpLinks::Table, UserIdpLinks::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("user_idp_links_user_id_idx")
                    .table(UserIdpLinks::Table)
                    .col(UserIdpLinks::UserId)
                    .col(UserIdpLinks::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [UserIdpLinks::Table.into_iden(), IdpIntents::Table.into_iden(), Idps::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
