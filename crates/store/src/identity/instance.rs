//! [`InstanceRepo`]: the bootstrap of an empty instance, all or nothing.

use async_trait::async_trait;
use flowgate_core::Result;
use flowgate_core::identity::INSTANCE_OWNER;
use flowgate_core::identity::ports::{BootstrapRecord, INSTANCE_EXISTS, InstanceRepo, SYSTEM_ACTOR};
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::json;

use super::entity::instance;
use super::members::{insert_member, member_event};
use super::orgs::insert_org;
use super::users::{added_event, insert_user};
use super::{INSTANCE, ORG, USER, aggregate, already_exists, db_sequence, event, intent, taken};
use crate::error::db_error;
use crate::event_log::{StateError, append_in, state};

#[async_trait]
impl InstanceRepo for super::IdentityRepos {
    async fn exists(&self) -> Result<bool> {
        let row = instance::Entity::find_by_id(INSTANCE).one(self.store.reader()).await.map_err(db_error)?;
        Ok(row.is_some())
    }

    async fn bootstrap(&self, record: &BootstrapRecord) -> Result<()> {
        let org_id = record.org.id.as_str();
        let admin_id = record.admin.id.as_str();
        // The instance aggregate carries the instance and the admin's instance membership; the org and the
        // admin (with its token) get their own events, appended inside the same transaction.
        let events = vec![
            event("instance.added", json!({ "default_org_id": org_id })),
            member_event("member.added", admin_id, &record.admin_roles),
        ];
        let intent = intent(INSTANCE, INSTANCE, INSTANCE_OWNER, SYSTEM_ACTOR, events);
        let backend = self.store.backend();
        self.store
            .write(intent, |txn, ctx| {
                let record = record.clone();
                state(async move {
                    // A replica that lost the race waited for the winner's lock on the instance aggregate and
                    // sees its row here; the primary key below is the backstop.
                    if instance::Entity::find_by_id(INSTANCE).one(txn).await?.is_some() {
                        return Err(already_exists(INSTANCE_EXISTS, "the instance exists already").into());
                    }
                    let row = instance::ActiveModel {
                        id: Set(INSTANCE.to_owned()),
                        default_org_id: Set(record.org.id.as_str().to_owned()),
                        created_at: Set(ctx.created_at),
                        changed_at: Set(ctx.created_at),
                        sequence: Set(db_sequence(ctx.sequence)?),
                    };
                    row.insert(txn)
                        .await
                        .map_err(|e| taken(e, &[], (INSTANCE_EXISTS, "the instance exists already")))?;

                    let org = &record.org;
                    let org_events =
                        [event("org.added", json!({ "name": org.name, "primary_domain": org.primary_domain }))];
                    let owner = org.id.as_str();
                    let added = append_in(
                        txn,
                        backend,
                        &aggregate(ORG, owner),
                        owner,
                        SYSTEM_ACTOR,
                        &org_events,
                        ctx.created_at,
                    )
                    .await?;
                    insert_org(txn, org, added.sequence, added.created_at).await?;

                    let admin = &record.admin;
                    let user_events = [added_event(admin, false), super::tokens::added_event(&record.token)];
                    let added = append_in(
                        txn,
                        backend,
                        &aggregate(USER, admin.id.as_str()),
                        owner,
                        SYSTEM_ACTOR,
                        &user_events,
                        ctx.created_at,
                    )
                    .await?;
                    insert_user(txn, admin, None, added.sequence, added.created_at).await?;
                    super::tokens::insert_token(txn, &record.token, added.sequence, added.created_at).await?;

                    insert_member(txn, admin.id.as_str(), INSTANCE, &record.admin_roles, ctx.sequence, ctx.created_at)
                        .await?;
                    Ok::<(), StateError>(())
                })
            })
            .await?;
        Ok(())
    }
}
