//! PostgreSQL also announces changes to what a bearer token grants, on the users channel
//! ([`crate::USER_CHANGES_CHANNEL`]) with the owning user's id: a membership granted, changed or revoked,
//! and a personal access token written or removed. Replicas remember resolved PATs with their owner's roles
//! for up to 2 s; with these announcements a revoked role stops working on every replica at once, not when
//! the entry ages out.
//!
//! Before this, a membership in an org was heard only because it also touches the org's row (announced by
//! `m20261125_000007_identity_notify`), and an instance-wide one (`IAM_OWNER`, `IAM_LOGIN_CLIENT`) not at
//! all. Token writes touch their user's row, which is announced already; the trigger on the token table
//! keeps that true for any statement that writes a token, and costs nothing extra where both fire:
//! PostgreSQL delivers a notification once per transaction however often it was raised there.
//! SQLite has no listeners; there the migration does nothing.

use sea_orm_migration::prelude::*;

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000008_credential_notify"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Both tables name their user in `user_id`.
        super::on_postgres(
            manager,
            &[
                "CREATE OR REPLACE FUNCTION flowgate_owner_changed() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN \
                   PERFORM pg_notify(TG_ARGV[0], CASE WHEN TG_OP = 'DELETE' THEN OLD.user_id ELSE NEW.user_id END); \
                   RETURN NULL; \
                 END $$",
                "CREATE TRIGGER personal_access_tokens_changed \
                 AFTER INSERT OR UPDATE OR DELETE ON personal_access_tokens \
                 FOR EACH ROW EXECUTE FUNCTION flowgate_owner_changed('flowgate_users')",
                "CREATE TRIGGER members_changed AFTER INSERT OR UPDATE OR DELETE ON members \
                 FOR EACH ROW EXECUTE FUNCTION flowgate_owner_changed('flowgate_users')",
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(
            manager,
            &[
                "DROP TRIGGER IF EXISTS members_changed ON members",
                "DROP TRIGGER IF EXISTS personal_access_tokens_changed ON personal_access_tokens",
                "DROP FUNCTION IF EXISTS flowgate_owner_changed()",
            ],
        )
        .await
    }
}
