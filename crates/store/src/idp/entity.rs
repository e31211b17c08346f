//! Rows of the IdP tables (see migration `m20261124_000005_idps`); never leave the store.

pub(crate) mod idps {
    //! One identity provider configuration; the kind-specific part (with sealed secrets) is `config`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "idps")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub name: String,
        pub name_lower: String,
        pub state: String,
        pub kind: String,
        pub template: Option<String>,
        #[sea_orm(column_type = "JsonBinary")]
        pub config: Json,
        #[sea_orm(column_type = "JsonBinary")]
        pub options: Json,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod idp_intents {
    //! One login at an IdP, from its start to its use by a session.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "idp_intents")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub idp_id: String,
        pub state: String,
        pub success_url: Option<String>,
        pub failure_url: Option<String>,
        pub pkce_verifier: Option<String>,
        pub nonce: Option<String>,
        pub token_hash: Option<String>,
        #[sea_orm(column_type = "JsonBinary", nullable)]
        pub external: Option<Json>,
        pub user_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub succeeded_at: Option<DateTimeUtc>,
        pub expires_at: DateTimeUtc,
        pub failure_reason: Option<String>,
        pub failure_description: Option<String>,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod user_idp_links {
    //! One external account linked to one user.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "user_idp_links")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub idp_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub external_user_id: String,
        pub external_username: String,
        pub user_id: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
