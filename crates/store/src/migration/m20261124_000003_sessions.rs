//! Sessions: the sessions themselves, their one-time-code challenges, users' TOTP registrations and the
//! lockout counters on `users`.

use sea_orm_migration::prelude::*;

pub(super) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000003_sessions"
    }
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    Creator,
    UserId,
    UserLoginName,
    UserDisplayName,
    UserOrgId,
    UserCheckedAt,
    PasswordCheckedAt,
    TotpCheckedAt,
    OtpSmsCheckedAt,
    OtpEmailCheckedAt,
    IntentCheckedAt,
    TokenHash,
    Metadata,
    UserAgent,
    FingerprintId,
    Expiration,
    TerminatedAt,
    CreatedAt,
    ChangedAt,
    Sequence,
}

#[derive(DeriveIden)]
enum OtpChallenges {
    Table,
    SessionId,
    Kind,
    CodeHash,
    ExpiresAt,
    UsedAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum UserTotp {
    Table,
    UserId,
    Secret,
    Verified,
    CreatedAt,
    VerifiedAt,
    LastStep,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    FailedPasswordAttempts,
    FailedOtpAttempts,
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn at(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().not_null().to_owned()
}

fn at_or_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).timestamp_with_time_zone().null().to_owned()
}

fn counter(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).integer().not_null().default(0).to_owned()
}

fn sessions_index(name: &str, col: Sessions) -> IndexCreateStatement {
    Index::create().name(name).table(Sessions::Table).col(col).to_owned()
}

/// The columns of `sessions`, in order, as this migration creates them; also what later migrations that
/// rebuild the table start from.
pub(super) fn session_columns() -> Vec<ColumnDef> {
    vec![
        text(Sessions::Id).primary_key().to_owned(),
        text(Sessions::Creator),
        ColumnDef::new(Sessions::UserId).text().null().to_owned(),
        // The user factor as it was when checked (the contract answers it so, not as it is now).
        ColumnDef::new(Sessions::UserLoginName).text().null().to_owned(),
        ColumnDef::new(Sessions::UserDisplayName).text().null().to_owned(),
        ColumnDef::new(Sessions::UserOrgId).text().null().to_owned(),
        at_or_null(Sessions::UserCheckedAt),
        at_or_null(Sessions::PasswordCheckedAt),
        at_or_null(Sessions::TotpCheckedAt),
        at_or_null(Sessions::OtpSmsCheckedAt),
        at_or_null(Sessions::OtpEmailCheckedAt),
        at_or_null(Sessions::IntentCheckedAt),
        // SHA-256 of the current token; replaced on every change, so the old token stops matching in the
        // same commit.
        text(Sessions::TokenHash),
        ColumnDef::new(Sessions::Metadata).json_binary().not_null().to_owned(),
        ColumnDef::new(Sessions::UserAgent).json_binary().null().to_owned(),
        // Copied out of `user_agent` so that the fingerprint filter can use an index.
        ColumnDef::new(Sessions::FingerprintId).text().null().to_owned(),
        at_or_null(Sessions::Expiration),
        at_or_null(Sessions::TerminatedAt),
        at(Sessions::CreatedAt),
        at(Sessions::ChangedAt),
        ColumnDef::new(Sessions::Sequence).big_integer().not_null().to_owned(),
    ]
}

/// The unique index on the token digest this migration creates with `sessions`: a lookup by digest finds
/// one session or none.
pub(super) fn token_hash_key() -> IndexCreateStatement {
    Index::create().name("sessions_token_hash_key").col(Sessions::TokenHash).unique().to_owned()
}

/// The plain indexes of `sessions`, for the filters of the list call.
pub(super) fn session_indexes() -> [IndexCreateStatement; 4] {
    [
        sessions_index("sessions_user_id_idx", Sessions::UserId),
        sessions_index("sessions_fingerprint_id_idx", Sessions::FingerprintId),
        sessions_index("sessions_expiration_idx", Sessions::Expiration),
        sessions_index("sessions_created_at_idx", Sessions::CreatedAt),
    ]
}

/// `otp_challenges` as this migration creates it. One open challenge per session and kind: a new challenge
/// replaces the old one (and its code).
pub(super) fn otp_challenges_table() -> TableCreateStatement {
    Table::create()
        .table(OtpChallenges::Table)
        .col(text(OtpChallenges::SessionId))
        .col(text(OtpChallenges::Kind).check(Expr::col(OtpChallenges::Kind).is_in(["sms", "email"])))
        .col(text(OtpChallenges::CodeHash))
        .col(at(OtpChallenges::ExpiresAt))
        .col(at_or_null(OtpChallenges::UsedAt))
        .col(at(OtpChallenges::CreatedAt))
        .primary_key(Index::create().name("otp_challenges_pkey").col(OtpChallenges::SessionId).col(OtpChallenges::Kind))
        .foreign_key(
            ForeignKey::create()
                .name("otp_challenges_session_id_fkey")
                .from(OtpChallenges::Table, OtpChallenges::SessionId)
                .to(Sessions::Table, Sessions::Id)
                .on_delete(ForeignKeyAction::Cascade),
        )
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // No foreign key on `user_id`: a session outlives the removal of its user as a terminated record,
        // and the removal terminates it through the lifecycle hook, which needs the row still there.
        let mut sessions = Table::create().table(Sessions::Table).to_owned();
        for column in session_columns() {
            sessions.col(column);
        }
        manager.create_table(sessions.index(&mut token_hash_key()).to_owned()).await?;
        for index in session_indexes() {
            manager.create_index(index).await?;
        }
        manager.create_table(otp_challenges_table()).await?;

        // The secret is stored as registered (see the session contract: encrypted once a key exists) and
        // never returned after the registration call.
        manager
            .create_table(
                Table::create()
                    .table(UserTotp::Table)
                    .col(text(UserTotp::UserId).primary_key())
                    .col(text(UserTotp::Secret))
                    .col(ColumnDef::new(UserTotp::Verified).boolean().not_null().default(false))
                    .col(at(UserTotp::CreatedAt))
                    .col(at_or_null(UserTotp::VerifiedAt))
                    // Newest accepted 30-second step; only ever raised by a conditional update, so a code
                    // cannot be replayed within its window.
                    .col(ColumnDef::new(UserTotp::LastStep).big_integer().not_null().default(0))
                    .foreign_key(
                        ForeignKey::create()
                            .name("user_totp_user_id_fkey")
                            .from(UserTotp::Table, UserTotp::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        // Counters live with the user so that counting and locking touch one row, changed only by
        // conditional increments. SQLite takes one column per ALTER TABLE.
        for column in [Users::FailedPasswordAttempts, Users::FailedOtpAttempts] {
            manager.alter_table(Table::alter().table(Users::Table).add_column(counter(column)).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Users::FailedOtpAttempts, Users::FailedPasswordAttempts] {
            manager.alter_table(Table::alter().table(Users::Table).drop_column(column).to_owned()).await?;
        }
        for table in [UserTotp::Table.into_iden(), OtpChallenges::Table.into_iden(), Sessions::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
