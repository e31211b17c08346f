//! Rows of the session tables (see migrations `m20261124_000003_sessions` and
//! `m20261125_000009_session_token_selector`); never leave the store.

pub(crate) mod sessions {
    //! One session: its factors, current token digest, client data and lifetime.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "sessions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub creator: String,
        pub user_id: Option<String>,
        pub user_login_name: Option<String>,
        pub user_display_name: Option<String>,
        pub user_org_id: Option<String>,
        pub user_checked_at: Option<DateTimeUtc>,
        pub password_checked_at: Option<DateTimeUtc>,
        pub totp_checked_at: Option<DateTimeUtc>,
        pub otp_sms_checked_at: Option<DateTimeUtc>,
        pub otp_email_checked_at: Option<DateTimeUtc>,
        pub intent_checked_at: Option<DateTimeUtc>,
        pub token_hash: String,
        /// `token_hash` again while the current token is of the legacy shape (no session id in it): the
        /// only way to find its session. Written by the migration that put the id into tokens, cleared by
        /// the session's next rotation, never set again.
        pub legacy_token_hash: Option<String>,
        #[sea_orm(column_type = "JsonBinary")]
        pub metadata: Json,
        #[sea_orm(column_type = "JsonBinary", nullable)]
        pub user_agent: Option<Json>,
        pub fingerprint_id: Option<String>,
        pub expiration: Option<DateTimeUtc>,
        pub terminated_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub changed_at: DateTimeUtc,
        pub sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod otp_challenges {
    //! The open one-time-code challenge of one session and channel.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "otp_challenges")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub session_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub kind: String,
        pub code_hash: String,
        pub expires_at: DateTimeUtc,
        pub used_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod user_totp {
    //! The TOTP registration of one user.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "user_totp")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        pub secret: String,
        pub verified: bool,
        pub created_at: DateTimeUtc,
        pub verified_at: Option<DateTimeUtc>,
        pub last_step: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
