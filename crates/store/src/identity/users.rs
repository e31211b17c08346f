//! [`UserRepo`]: human and machine users, their password hashes and lifecycle.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowgate_core::event::{Details, NewEvent};
use flowgate_core::identity::ports::{
    HumanChange, NewUserKind, NewUserRecord, ORG_NOT_FOUND, USER_ID_TAKEN, USER_NOT_FOUND, USER_USERNAME_TAKEN,
    UserRepo, UserStateChange,
};
use flowgate_core::identity::{
    Email, Human, ListQuery, Machine, OrgId, Page, Phone, Profile, User, UserFilter, UserId, UserKind, UserKindFilter,
    UserSort, UserState, login_names,
};
use flowgate_core::{Error, ErrorKind, Result};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, Order, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::json;

use super::entity::{members, orgs, tokens, users};
use super::{
    IdentityRepos, USER, corrupt, db_sequence, event, intent, not_found, nothing, page, row_details, sql_lower, taken,
    text_filter,
};
use crate::error::db_error;
use crate::event_log::{StateError, state};
use crate::idp::links::{delete_user_links, insert_link, link_added_event};

/// Stored `kind` of human users.
const HUMAN: &str = "human";
/// Stored `kind` of machine users.
const MACHINE: &str = "machine";

/// Error id: FailedPrecondition, a human-only change was asked of a machine user.
pub const USER_NOT_HUMAN: &str = "USER-not-human";

/// Id of the error that makes [`UserRepo::replace_password_hash`] roll back when the hash changed meanwhile;
/// never leaves this module.
const HASH_CHANGED: &str = "STORE-password-hash-changed";

/// The unique indexes of `users` and the errors their violations mean.
fn username_taken(err: sea_orm::DbErr) -> StateError {
    taken(
        err,
        &[("username_lower", USER_USERNAME_TAKEN, "a user with this username exists already")],
        (USER_ID_TAKEN, "a user with this id exists already"),
    )
}

/// Inserts a new, active user of an existing org with the write's sequence and time; answers the row
/// and the org's primary domain (for the login names).
pub(super) async fn insert_user(
    txn: &DatabaseTransaction,
    user: &NewUserRecord,
    password_hash: Option<&str>,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<(users::Model, String), StateError> {
    // Checked here rather than left to the foreign key: its violation would be an internal error.
    let domain = orgs::Entity::find_by_id(user.org_id.as_str())
        .select_only()
        .column(orgs::Column::PrimaryDomain)
        .into_tuple::<String>()
        .one(txn)
        .await?
        .ok_or_else(|| not_found(ORG_NOT_FOUND, "organization not found"))?;
    let mut row = users::Model {
        id: user.id.as_str().to_owned(),
        org_id: user.org_id.as_str().to_owned(),
        username: user.username.clone(),
        username_lower: user.username.to_lowercase(),
        kind: String::new(),
        state: UserState::Active.as_str().to_owned(),
        given_name: String::new(),
        family_name: String::new(),
        display_name: String::new(),
        display_name_lower: String::new(),
        preferred_language: String::new(),
        email: None,
        email_lower: None,
        email_verified: false,
        phone: None,
        phone_verified: false,
        password_hash: None,
        password_change_required: false,
        password_changed_at: None,
        machine_name: None,
        machine_description: None,
        created_at: at,
        changed_at: at,
        sequence: db_sequence(sequence)?,
    };
    match &user.kind {
        NewUserKind::Human { profile, email, phone, password_change_required } => {
            row.kind = HUMAN.to_owned();
            set_profile(&mut row, profile);
            set_email(&mut row, email);
            set_phone(&mut row, phone.as_ref());
            row.password_hash = password_hash.map(str::to_owned);
            row.password_change_required = *password_change_required;
            row.password_changed_at = password_hash.map(|_| at);
        }
        NewUserKind::Machine(machine) => {
            row.kind = MACHINE.to_owned();
            row.machine_name = Some(machine.name.clone());
            row.machine_description = Some(machine.description.clone());
        }
    }
    users::Entity::insert(users::ActiveModel::from(row.clone()).reset_all())
        .exec_without_returning(txn)
        .await
        .map_err(username_taken)?;
    Ok((row, domain))
}

fn set_profile(row: &mut users::Model, profile: &Profile) {
    row.given_name.clone_from(&profile.given_name);
    row.family_name.clone_from(&profile.family_name);
    row.display_name.clone_from(&profile.display_name);
    row.display_name_lower = profile.display_name.to_lowercase();
    row.preferred_language.clone_from(&profile.preferred_language);
}

fn set_email(row: &mut users::Model, email: &Email) {
    row.email = Some(email.address.clone());
    row.email_lower = Some(email.address.to_lowercase());
    row.email_verified = email.verified;
}

fn set_phone(row: &mut users::Model, phone: Option<&Phone>) {
    row.phone = phone.map(|p| p.number.clone());
    row.phone_verified = phone.is_some_and(|p| p.verified);
}

/// The event a new user is recorded with; never the password hash, only whether there is one.
pub(super) fn added_event(user: &NewUserRecord, password_set: bool) -> NewEvent {
    match &user.kind {
        NewUserKind::Human { profile, email, phone, password_change_required } => event(
            "user.human.added",
            json!({
                "org_id": user.org_id.as_str(),
                "username": user.username,
                "profile": profile_json(profile),
                "email": email.address,
                "email_verified": email.verified,
                "phone": phone.as_ref().map(|p| &p.number),
                "phone_verified": phone.as_ref().is_some_and(|p| p.verified),
                "password_set": password_set,
                "password_change_required": password_change_required,
            }),
        ),
        NewUserKind::Machine(machine) => event(
            "user.machine.added",
            json!({
                "org_id": user.org_id.as_str(),
                "username": user.username,
                "name": machine.name,
                "description": machine.description,
            }),
        ),
    }
}

fn profile_json(profile: &Profile) -> serde_json::Value {
    json!({
        "given_name": profile.given_name,
        "family_name": profile.family_name,
        "display_name": profile.display_name,
        "preferred_language": profile.preferred_language,
    })
}

/// The domain object of a user row in an org with `primary_domain`.
pub(super) fn user_from_row(row: users::Model, primary_domain: &str) -> Result<User> {
    let state = UserState::parse(&row.state).ok_or_else(|| corrupt("user state", &row.state))?;
    let details = row_details(row.created_at, row.changed_at, row.sequence, &row.org_id)?;
    let kind = match row.kind.as_str() {
        HUMAN => UserKind::Human(Human {
            profile: Profile {
                given_name: row.given_name,
                family_name: row.family_name,
                display_name: row.display_name,
                preferred_language: row.preferred_language,
            },
            email: Email { address: row.email.unwrap_or_default(), verified: row.email_verified },
            phone: row.phone.map(|number| Phone { number, verified: row.phone_verified }),
            password_set: row.password_hash.is_some(),
            password_change_required: row.password_change_required,
            password_changed: row.password_changed_at,
        }),
        MACHINE => UserKind::Machine(Machine {
            name: row.machine_name.unwrap_or_default(),
            description: row.machine_description.unwrap_or_default(),
        }),
        other => return Err(corrupt("user kind", other)),
    };
    let (login_names, preferred_login_name) = login_names(&row.username, primary_domain);
    Ok(User {
        id: row.id.into(),
        org_id: row.org_id.into(),
        username: row.username,
        state,
        kind,
        details,
        login_names,
        preferred_login_name,
    })
}

/// Users with their orgs' primary domains, in the order of `rows`.
pub(super) async fn users_from_rows<C: ConnectionTrait>(db: &C, rows: Vec<users::Model>) -> Result<Vec<User>> {
    let org_ids: BTreeSet<&str> = rows.iter().map(|row| row.org_id.as_str()).collect();
    let domains: HashMap<String, String> = if org_ids.is_empty() {
        HashMap::new()
    } else {
        orgs::Entity::find()
            .select_only()
            .columns([orgs::Column::Id, orgs::Column::PrimaryDomain])
            .filter(orgs::Column::Id.is_in(org_ids))
            .into_tuple::<(String, String)>()
            .all(db)
            .await
            .map_err(db_error)?
            .into_iter()
            .collect()
    };
    rows.into_iter()
        .map(|row| {
            // The foreign key keeps every user's org; a miss means a torn read of a concurrent org removal.
            let domain = domains.get(&row.org_id).cloned().unwrap_or_default();
            user_from_row(row, &domain)
        })
        .collect()
}

/// The user with `id` read through `db`, with its org's primary domain.
pub(super) async fn find_user<C: ConnectionTrait>(db: &C, id: &str) -> Result<Option<User>> {
    one_user(db, users::Entity::find_by_id(id)).await
}

/// The first user `select` finds, joined with its org in the same statement: a user lookup is on the path
/// of every session check, and each statement costs a round trip to the database thread.
async fn one_user<C: ConnectionTrait>(db: &C, select: sea_orm::Select<users::Entity>) -> Result<Option<User>> {
    let to_org: sea_orm::RelationDef =
        users::Entity::belongs_to(orgs::Entity).from(users::Column::OrgId).to(orgs::Column::Id).into();
    let found =
        select.select_also(orgs::Entity).join(sea_orm::JoinType::LeftJoin, to_org).one(db).await.map_err(db_error)?;
    // The foreign key keeps every user's org; a miss means a torn read of a concurrent org removal.
    found.map(|(row, org)| user_from_row(row, org.as_ref().map_or("", |o| o.primary_domain.as_str()))).transpose()
}

/// Users one of whose login names equals `name` ignoring case: `username`, or `username@domain` for each
/// way of splitting `name` at an `@` (usernames may contain `@` themselves, e.g. e-mail addresses).
fn login_name_condition(name: &str) -> Condition {
    let lower = name.to_lowercase();
    let mut any = Condition::any().add(Expr::col(users::Column::UsernameLower).eq(lower.as_str()));
    for (at, _) in lower.match_indices('@') {
        let (username, domain) = (&lower[..at], &lower[at + 1..]);
        let orgs_with_domain = Query::select()
            .column(orgs::Column::Id)
            .from(orgs::Entity)
            .and_where(sql_lower(Expr::col(orgs::Column::PrimaryDomain)).eq(domain))
            .to_owned();
        any = any.add(
            Condition::all()
                .add(Expr::col(users::Column::UsernameLower).eq(username))
                .add(Expr::col(users::Column::OrgId).in_subquery(orgs_with_domain)),
        );
    }
    any
}

fn user_condition(backend: crate::Backend, filters: &[UserFilter]) -> Condition {
    filters.iter().fold(Condition::all(), |all, filter| match filter {
        UserFilter::Username(name, method) => all.add(text_filter(
            backend,
            Expr::col(users::Column::Username),
            Expr::col(users::Column::UsernameLower),
            name,
            *method,
        )),
        // Machines have no e-mail (NULL), which no comparison matches.
        UserFilter::Email(email, method) => all.add(text_filter(
            backend,
            Expr::col(users::Column::Email),
            Expr::col(users::Column::EmailLower),
            email,
            *method,
        )),
        // Machines have an empty display name, which `Contains("")` would match: humans only, explicitly.
        UserFilter::DisplayName(name, method) => all.add(Expr::col(users::Column::Kind).eq(HUMAN)).add(text_filter(
            backend,
            Expr::col(users::Column::DisplayName),
            Expr::col(users::Column::DisplayNameLower),
            name,
            *method,
        )),
        UserFilter::Org(org) => all.add(Expr::col(users::Column::OrgId).eq(org.as_str())),
        UserFilter::State(state) => all.add(Expr::col(users::Column::State).eq(state.as_str())),
        UserFilter::Kind(UserKindFilter::Human) => all.add(Expr::col(users::Column::Kind).eq(HUMAN)),
        UserFilter::Kind(UserKindFilter::Machine) => all.add(Expr::col(users::Column::Kind).eq(MACHINE)),
        UserFilter::Ids(ids) if ids.is_empty() => all.add(nothing()),
        UserFilter::Ids(ids) => all.add(Expr::col(users::Column::Id).is_in(ids.iter().map(UserId::as_str))),
        UserFilter::LoginName(name) => all.add(login_name_condition(name)),
        UserFilter::Orgs(orgs) if orgs.is_empty() => all.add(nothing()),
        UserFilter::Orgs(orgs) => all.add(Expr::col(users::Column::OrgId).is_in(orgs.iter().map(OrgId::as_str))),
    })
}

/// The user row `id` inside a write, or NotFound.
async fn user_row(txn: &DatabaseTransaction, id: &str) -> Result<users::Model, StateError> {
    Ok(users::Entity::find_by_id(id).one(txn).await?.ok_or_else(|| not_found(USER_NOT_FOUND, "user not found"))?)
}

/// The row with the write's change metadata, ready for further changes.
fn changed(row: &users::Model, sequence: u64, at: DateTime<Utc>) -> Result<users::ActiveModel, Error> {
    let mut active = users::ActiveModel::from(row.clone());
    active.changed_at = Set(at);
    active.sequence = Set(db_sequence(sequence)?);
    Ok(active)
}

/// Records a write on the user aggregate that changed no user column (a token added or removed), so the
/// row's change metadata keeps matching the aggregate's last event.
pub(crate) async fn touch_user(
    txn: &DatabaseTransaction,
    id: &str,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<(), StateError> {
    users::Entity::update_many()
        .col_expr(users::Column::ChangedAt, Expr::value(at))
        .col_expr(users::Column::Sequence, Expr::value(db_sequence(sequence)?))
        .filter(users::Column::Id.eq(id))
        .exec(txn)
        .await?;
    Ok(())
}

/// Deletes the user's tokens, memberships, IdP links and row.
async fn delete_user_rows(txn: &DatabaseTransaction, id: &str) -> Result<(), StateError> {
    delete_user_links(txn, id).await?;
    tokens::Entity::delete_many().filter(tokens::Column::UserId.eq(id)).exec(txn).await?;
    members::Entity::delete_many().filter(members::Column::UserId.eq(id)).exec(txn).await?;
    users::Entity::delete_by_id(id).exec(txn).await?;
    Ok(())
}

/// A change to an existing user, applied inside its write by [`apply`].
#[derive(Debug, Clone)]
enum Change {
    Human(HumanChange),
    Password { hash: String, change_required: bool },
    Rehash { old: String, new: String },
    State(UserStateChange),
    Delete,
}

/// Applies `change` to the user `row` read inside the write with the write's `sequence` and time.
async fn apply(
    txn: &DatabaseTransaction,
    row: users::Model,
    change: Change,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<(), StateError> {
    match change {
        Change::Human(change) => {
            if row.kind != HUMAN {
                return Err(Error::new(ErrorKind::FailedPrecondition, USER_NOT_HUMAN, "the user is no human").into());
            }
            let mut row = row;
            if let Some(username) = &change.username {
                row.username.clone_from(username);
                row.username_lower = username.to_lowercase();
            }
            if let Some(profile) = &change.profile {
                set_profile(&mut row, profile);
            }
            if let Some(email) = &change.email {
                set_email(&mut row, email);
            }
            if let Some(phone) = &change.phone {
                set_phone(&mut row, phone.as_ref());
            }
            let active = changed(&row, sequence, at)?.reset_all();
            active.update(txn).await.map_err(username_taken)?;
        }
        Change::Password { hash, change_required } => {
            let mut active = changed(&row, sequence, at)?;
            active.password_hash = Set(Some(hash));
            active.password_change_required = Set(change_required);
            active.password_changed_at = Set(Some(at));
            active.update(txn).await?;
        }
        Change::Rehash { old, new } => {
            // Compare-and-set in the statement itself: a password set concurrently is never undone.
            let result = users::Entity::update_many()
                .col_expr(users::Column::PasswordHash, Expr::value(new))
                .col_expr(users::Column::ChangedAt, Expr::value(at))
                .col_expr(users::Column::Sequence, Expr::value(db_sequence(sequence)?))
                .filter(users::Column::Id.eq(row.id.as_str()))
                .filter(users::Column::PasswordHash.eq(old))
                .exec(txn)
                .await?;
            if result.rows_affected == 0 {
                // Rolls the event back too: nothing was rehashed.
                return Err(Error::new(ErrorKind::Aborted, HASH_CHANGED, "the password hash changed").into());
            }
        }
        Change::State(change) => {
            let mut active = changed(&row, sequence, at)?;
            active.state = Set(change.target().as_str().to_owned());
            active.update(txn).await?;
            if change == UserStateChange::Unlock {
                // Counters left at their limit would never count again: unlocking starts them afresh.
                crate::session::lockout::reset_all(txn, &row.id).await?;
            }
        }
        Change::Delete => delete_user_rows(txn, &row.id).await?,
    }
    Ok(())
}

impl IdentityRepos {
    /// The org owning user `id` (the resource owner of its events; never changes), if the user exists.
    pub(super) async fn user_org(&self, id: &str) -> Result<Option<String>> {
        users::Entity::find_by_id(id)
            .select_only()
            .column(users::Column::OrgId)
            .into_tuple::<String>()
            .one(self.store.reader())
            .await
            .map_err(db_error)
    }

    /// One write on an existing user's aggregate: reads the row inside the transaction (NotFound when
    /// gone), applies `change` and answers details whose creation date is the row's (a reused
    /// client-chosen id may have older events than the current user).
    async fn write_user(&self, id: &UserId, actor: &str, events: Vec<NewEvent>, change: Change) -> Result<Details> {
        let owner = self.user_org(id.as_str()).await?.ok_or_else(|| not_found(USER_NOT_FOUND, "user not found"))?;
        let (created_at, details) = self
            .store
            .write_returning(intent(USER, id.as_str(), &owner, actor, events), |txn, ctx| {
                let (id, change) = (id.as_str().to_owned(), change.clone());
                state(async move {
                    let row = user_row(txn, &id).await?;
                    let created_at = row.created_at;
                    apply(txn, row, change, ctx.sequence, ctx.created_at).await?;
                    Ok(created_at)
                })
            })
            .await?;
        Ok(Details { creation_date: created_at, ..details })
    }
}

#[async_trait]
impl UserRepo for IdentityRepos {
    async fn create(&self, user: &NewUserRecord, password_hash: Option<&str>, actor: &str) -> Result<User> {
        let password_hash = match user.kind {
            NewUserKind::Human { .. } => password_hash,
            NewUserKind::Machine(_) => None,
        };
        let mut events = vec![added_event(user, password_hash.is_some())];
        events.extend(
            user.idp_links
                .iter()
                .map(|link| link_added_event(link.idp_id.as_str(), &link.external_user_id, &link.external_username)),
        );
        let intent = intent(USER, user.id.as_str(), user.org_id.as_str(), actor, events);
        let ((row, domain), _) = self
            .store
            .write_returning(intent, |txn, ctx| {
                let (user, hash) = (user.clone(), password_hash.map(str::to_owned));
                state(async move {
                    let inserted = insert_user(txn, &user, hash.as_deref(), ctx.sequence, ctx.created_at).await?;
                    // In the same write: a taken account or a missing IdP leaves no user behind.
                    for link in &user.idp_links {
                        let (idp, user_id) = (link.idp_id.as_str(), user.id.as_str());
                        insert_link(txn, idp, user_id, &link.external_user_id, &link.external_username, ctx.created_at)
                            .await?;
                    }
                    Ok(inserted)
                })
            })
            .await?;
        user_from_row(row, &domain)
    }

    async fn get(&self, id: &UserId) -> Result<Option<User>> {
        find_user(self.store.reader(), id.as_str()).await
    }

    async fn find_by_login_name(&self, login_name: &str) -> Result<Option<User>> {
        let select = users::Entity::find()
            .filter(login_name_condition(login_name))
            .order_by_asc(users::Column::CreatedAt)
            .order_by_asc(users::Column::Id);
        one_user(self.store.reader(), select).await
    }

    async fn list(&self, filters: &[UserFilter], sort: UserSort, q: &ListQuery) -> Result<Page<User>> {
        let order = if q.asc { Order::Asc } else { Order::Desc };
        let key = match sort {
            UserSort::CreationDate => users::Column::CreatedAt,
            UserSort::Username => users::Column::UsernameLower,
        };
        let select = users::Entity::find()
            .filter(user_condition(self.store.backend(), filters))
            .order_by(key, order.clone())
            .order_by(users::Column::Id, order);
        let (rows, total) = page(&self.store, select, q).await?;
        Ok(Page { items: users_from_rows(self.store.reader(), rows).await?, total })
    }

    async fn update_human(&self, id: &UserId, change: &HumanChange, actor: &str) -> Result<Details> {
        let mut events = Vec::new();
        if let Some(username) = &change.username {
            events.push(event("user.username.changed", json!({ "username": username })));
        }
        if let Some(profile) = &change.profile {
            events.push(event("user.profile.changed", profile_json(profile)));
        }
        if let Some(email) = &change.email {
            events.push(event("user.email.changed", json!({ "email": email.address, "verified": email.verified })));
        }
        if let Some(phone) = &change.phone {
            let (number, verified) = phone.as_ref().map_or((None, false), |p| (Some(&p.number), p.verified));
            events.push(event("user.phone.changed", json!({ "phone": number, "verified": verified })));
        }
        if events.is_empty() {
            // Nothing to record: answer the current state instead of appending an empty change.
            let user = self.get(id).await?.ok_or_else(|| not_found(USER_NOT_FOUND, "user not found"))?;
            return Ok(user.details);
        }
        self.write_user(id, actor, events, Change::Human(change.clone())).await
    }

    async fn password_hash(&self, id: &UserId) -> Result<Option<String>> {
        let hash = users::Entity::find_by_id(id.as_str())
            .select_only()
            .column(users::Column::PasswordHash)
            .filter(users::Column::Kind.eq(HUMAN))
            .into_tuple::<Option<String>>()
            .one(self.store.reader())
            .await
            .map_err(db_error)?;
        Ok(hash.flatten())
    }

    async fn set_password(&self, id: &UserId, hash: &str, change_required: bool, actor: &str) -> Result<Details> {
        let events = vec![event("user.password.changed", json!({ "change_required": change_required }))];
        let change = Change::Password { hash: hash.to_owned(), change_required };
        self.write_user(id, actor, events, change).await
    }

    async fn replace_password_hash(&self, id: &UserId, old_hash: &str, new_hash: &str, actor: &str) -> Result<bool> {
        let events = vec![event("user.password.rehashed", json!({}))];
        let change = Change::Rehash { old: old_hash.to_owned(), new: new_hash.to_owned() };
        let written = self.write_user(id, actor, events, change).await;
        match written {
            Ok(_) => Ok(true),
            Err(err) if err.id() == HASH_CHANGED || err.id() == USER_NOT_FOUND => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn set_state(&self, id: &UserId, change: UserStateChange, actor: &str) -> Result<Details> {
        let events = vec![event(change.event_type(), json!({}))];
        self.write_user(id, actor, events, Change::State(change)).await
    }

    async fn delete(&self, id: &UserId, actor: &str) -> Result<Details> {
        let events = vec![event("user.removed", json!({}))];
        self.write_user(id, actor, events, Change::Delete).await
    }
}
