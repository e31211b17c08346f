//! Rows of the flow tables (see migration `m20261124_000004_flows`); never leave the store.

pub(crate) mod flows {
    //! One flow.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "flows")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub org_id: String,
        pub pbm_id: String,
        pub name: String,
        pub name_lower: String,
        pub slug: String,
        pub title: String,
        pub title_lower: String,
        pub designation: String,
        pub layout: String,
        pub background: Option<String>,
        pub compatibility_mode: bool,
        pub denied_action: String,
        pub authentication: String,
        pub policy_engine_mode: String,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod stages {
    //! One stage: its type and the type's fields as JSON text.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "stages")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub org_id: String,
        pub name: String,
        pub name_lower: String,
        pub stage_type: String,
        pub config: String,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod bindings {
    //! One flow-stage binding.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "flow_stage_bindings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub org_id: String,
        pub pbm_id: String,
        pub target_id: String,
        pub stage_id: String,
        pub order: i32,
        pub evaluate_on_plan: bool,
        pub re_evaluate_policies: bool,
        pub policy_engine_mode: String,
        pub invalid_response_action: String,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod policies {
    //! One expression policy.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "policies")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub org_id: String,
        pub name: String,
        pub name_lower: String,
        pub expression: String,
        pub execution_logging: bool,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod policy_bindings {
    //! One policy bound to a flow or a stage binding (by its policy binding model id, `target`).
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "policy_bindings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub org_id: String,
        pub policy_id: String,
        pub target: String,
        pub flow_id: Option<String>,
        pub binding_id: Option<String>,
        pub negate: bool,
        pub enabled: bool,
        pub order: i32,
        pub timeout: i32,
        pub failure_result: bool,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
