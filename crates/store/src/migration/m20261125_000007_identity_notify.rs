//! PostgreSQL tells every listening server when a user or an org row changes, so replicas that remember
//! users (sign-in checks) and org states forget them at once: channel [`crate::USER_CHANGES_CHANNEL`] with
//! the user id, [`crate::ORG_CHANGES_CHANNEL`] with the org id. Deleting an org deletes its users, and each
//! of those deletions is announced too. As for sessions, a trigger rather than a statement in each write.
//! SQLite has no listeners; there the migration does nothing.

use sea_orm_migration::prelude::*;

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000007_identity_notify"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One function for both tables: the channel is the trigger's argument. Notifications are sent when
        // the transaction commits, and never for one that rolls back.
        super::on_postgres(
            manager,
            &[
                "CREATE OR REPLACE FUNCTION flowgate_row_changed() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN \
                   PERFORM pg_notify(TG_ARGV[0], CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END); \
                   RETURN NULL; \
                 END $$",
                "CREATE TRIGGER users_changed AFTER UPDATE OR DELETE ON users \
                 FOR EACH ROW EXECUTE FUNCTION flowgate_row_changed('flowgate_users')",
                "CREATE TRIGGER orgs_changed AFTER UPDATE OR DELETE ON orgs \
                 FOR EACH ROW EXECUTE FUNCTION flowgate_row_changed('flowgate_orgs')",
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(
            manager,
            &[
                "DROP TRIGGER IF EXISTS orgs_changed ON orgs",
                "DROP TRIGGER IF EXISTS users_changed ON users",
                "DROP FUNCTION IF EXISTS flowgate_row_changed()",
            ],
        )
        .await
    }
}
