//! The identity core: the instance marker, organizations, users, personal access tokens and memberships.

use sea_orm_migration::prelude::*;

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000002_identity"
    }
}

#[derive(DeriveIden)]
enum Instance {
    Table,
    Id,
    DefaultOrgId,
    CreatedAt,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum Orgs {
    Table,
    Id,
    Name,
    NameLower,
    PrimaryDomain,
    State,
    CreatedAt,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    OrgId,
    Username,
    UsernameLower,
    Kind,
    State,
    GivenName,
    FamilyName,
    DisplayName,
    DisplayNameLower,
    PreferredLanguage,
    Email,
    EmailLower,
    EmailVerified,
    Phone,
    PhoneVerified,
    PasswordHash,
    PasswordChangeRequired,
    PasswordChangedAt,
    MachineName,
    MachineDescription,
    CreatedAt,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum PersonalAccessTokens {
    Table,
    Id,
    UserId,
    TokenHash,
    Expiration,
    CreatedAt,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum Members {
    Table,
    UserId,
    Scope,
    Roles,
    CreatedAt,
    ChangedAt,
    Sequence,
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

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn flag(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).boolean().not_null().default(false).to_owned()
}

fn users_index(name: &str, col: Users) -> IndexCreateStatement {
    Index::create().name(name).table(Users::Table).col(col).to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One row at most (the key is always 'instance'): its existence is what marks a bootstrapped
        // instance, and the primary key is what stops two replicas from bootstrapping twice.
        let mut instance = Table::create();
        instance
            .table(Instance::Table)
            .col(text(Instance::Id).primary_key().check(Expr::col(Instance::Id).eq("instance")))
            .col(text(Instance::DefaultOrgId));
        details_columns(&mut instance, Instance::CreatedAt, Instance::ChangedAt, Instance::Sequence);
        manager.create_table(instance).await?;

        // Uniqueness ignoring case lives in the `*_lower` columns (lower-cased by the writer), so the
        // database itself decides races between concurrent creations, identically on both engines.
        let mut orgs = Table::create();
        orgs.table(Orgs::Table)
            .col(text(Orgs::Id).primary_key())
            .col(text(Orgs::Name))
            .col(text(Orgs::NameLower))
            .col(text(Orgs::PrimaryDomain))
            .col(text(Orgs::State))
            .index(Index::create().name("orgs_name_lower_key").col(Orgs::NameLower).unique())
            .index(Index::create().name("orgs_primary_domain_key").col(Orgs::PrimaryDomain).unique());
        details_columns(&mut orgs, Orgs::CreatedAt, Orgs::ChangedAt, Orgs::Sequence);
        manager.create_table(orgs).await?;
        manager
            .create_index(
                Index::create().name("orgs_created_at_idx").table(Orgs::Table).col(Orgs::CreatedAt).to_owned(),
            )
            .await?;

        let mut users = Table::create();
        users
            .table(Users::Table)
            .col(text(Users::Id).primary_key())
            .col(text(Users::OrgId))
            .col(text(Users::Username))
            .col(text(Users::UsernameLower))
            .col(text(Users::Kind).check(Expr::col(Users::Kind).is_in(["human", "machine"])))
            .col(text(Users::State))
            .col(text(Users::GivenName).default(""))
            .col(text(Users::FamilyName).default(""))
            .col(text(Users::DisplayName).default(""))
            .col(text(Users::DisplayNameLower).default(""))
            .col(text(Users::PreferredLanguage).default(""))
            .col(ColumnDef::new(Users::Email).text().null())
            .col(ColumnDef::new(Users::EmailLower).text().null())
            .col(flag(Users::EmailVerified))
            .col(ColumnDef::new(Users::Phone).text().null())
            .col(flag(Users::PhoneVerified))
            .col(ColumnDef::new(Users::PasswordHash).text().null())
            .col(flag(Users::PasswordChangeRequired))
            .col(ColumnDef::new(Users::PasswordChangedAt).timestamp_with_time_zone().null())
            .col(ColumnDef::new(Users::MachineName).text().null())
            .col(ColumnDef::new(Users::MachineDescription).text().null())
            .index(Index::create().name("users_username_lower_key").col(Users::UsernameLower).unique())
            // The repositories delete dependants explicitly (and record why); the cascade is the backstop
            // that keeps a row from ever outliving its organization.
            .foreign_key(
                ForeignKey::create()
                    .name("users_org_id_fkey")
                    .from(Users::Table, Users::OrgId)
                    .to(Orgs::Table, Orgs::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            );
        details_columns(&mut users, Users::CreatedAt, Users::ChangedAt, Users::Sequence);
        manager.create_table(users).await?;
        manager.create_index(users_index("users_org_id_idx", Users::OrgId)).await?;
        manager.create_index(users_index("users_email_lower_idx", Users::EmailLower)).await?;
        manager.create_index(users_index("users_created_at_idx", Users::CreatedAt)).await?;

        let mut tokens = Table::create();
        tokens
            .table(PersonalAccessTokens::Table)
            .col(text(PersonalAccessTokens::Id).primary_key())
            .col(text(PersonalAccessTokens::UserId))
            .col(text(PersonalAccessTokens::TokenHash))
            .col(ColumnDef::new(PersonalAccessTokens::Expiration).timestamp_with_time_zone().null())
            .index(
                Index::create()
                    .name("personal_access_tokens_token_hash_key")
                    .col(PersonalAccessTokens::TokenHash)
                    .unique(),
            )
            .foreign_key(
                ForeignKey::create()
                    .name("personal_access_tokens_user_id_fkey")
                    .from(PersonalAccessTokens::Table, PersonalAccessTokens::UserId)
                    .to(Users::Table, Users::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            );
        details_columns(
            &mut tokens,
            PersonalAccessTokens::CreatedAt,
            PersonalAccessTokens::ChangedAt,
            PersonalAccessTokens::Sequence,
        );
        manager.create_table(tokens).await?;
        manager
            .create_index(
                Index::create()
                    .name("personal_access_tokens_user_id_idx")
                    .table(PersonalAccessTokens::Table)
                    .col(PersonalAccessTokens::UserId)
                    .col(PersonalAccessTokens::CreatedAt)
                    .to_owned(),
            )
            .await?;

        // `scope` is 'instance' or an organization id, hence no foreign key on it; deleting an
        // organization deletes its memberships explicitly.
        let mut members = Table::create();
        members
            .table(Members::Table)
            .col(text(Members::UserId))
            .col(text(Members::Scope))
            // Role names (`IAM_OWNER`, …) separated by commas: read whole, never queried by role.
            .col(text(Members::Roles))
            .primary_key(Index::create().name("members_pkey").col(Members::UserId).col(Members::Scope))
            .foreign_key(
                ForeignKey::create()
                    .name("members_user_id_fkey")
                    .from(Members::Table, Members::UserId)
                    .to(Users::Table, Users::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            );
        details_columns(&mut members, Members::CreatedAt, Members::ChangedAt, Members::Sequence);
        manager.create_table(members).await?;
        manager
            .create_index(
                Index::create()
                    .name("members_scope_idx")
                    .table(Members::Table)
                    .col(Members::Scope)
                    .col(Members::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Members::Table.into_iden(),
            PersonalAccessTokens::Table.into_iden(),
            Users::Table.into_iden(),
            Orgs::Table.into_iden(),
            Instance::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
