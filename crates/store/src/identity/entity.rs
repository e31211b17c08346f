//! Rows of the identity tables (see migration `m20261124_000002_identity`); never leave the store.

pub(crate) mod instance {
    //! The single row marking a bootstrapped instance.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "instance")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub default_org_id: String,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod orgs {
    //! One organization.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "orgs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub name: String,
        pub name_lower: String,
        pub primary_domain: String,
        pub state: String,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod users {
    //! One user, human or machine; the columns of the other kind stay empty.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub org_id: String,
        pub username: String,
        pub username_lower: String,
        pub kind: String,
        pub state: String,
        pub given_name: String,
        pub family_name: String,
        pub display_name: String,
        pub display_name_lower: String,
        pub preferred_language: String,
        pub email: Option<String>,
        pub email_lower: Option<String>,
        pub email_verified: bool,
        pub phone: Option<String>,
        pub phone_verified: bool,
        pub password_hash: Option<String>,
        pub password_change_required: bool,
        pub password_changed_at: Option<DateTimeUtc>,
        pub machine_name: Option<String>,
        pub machine_description: Option<String>,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod tokens {
    //! One personal access token, by the SHA-256 of its secret.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "personal_access_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub user_id: String,
        pub token_hash: String,
        pub expiration: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod members {
    //! The roles of one user in one scope (`instance` or an organization id).
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "members")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub scope: String,
        pub roles: String,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
