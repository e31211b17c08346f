//! The store's own error type and its single translation into [`flowgate_core::Error`].

use std::path::PathBuf;

use flowgate_core::{Error, ErrorKind};
use sea_orm::DbErr;

use crate::backend::{DbErrorClass, classify, is_unstorable_text};

/// Everything that can go wrong inside the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configured `database_url` is not usable (unknown scheme, malformed).
    #[error("invalid database_url: {0}")]
    InvalidUrl(String),
    /// The data directory for the SQLite file could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory that was to be created.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The database could not be reached when opening the pool.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sea_orm::sqlx::Error),
    /// No migration has been applied yet.
    #[error("the database schema is not migrated")]
    NotMigrated,
    /// The aggregate's last sequence differs from the one the caller expected.
    #[error("aggregate is at sequence {actual}, expected {expected}")]
    SequenceMismatch {
        /// The sequence the caller read before deciding on the change.
        expected: u64,
        /// The sequence found in the log.
        actual: u64,
    },
    /// Concurrent writers kept colliding; the write was given up after `attempts` tries.
    #[error("write conflict persisted after {attempts} attempts: {source}")]
    Conflict {
        /// How many times the write was tried.
        attempts: u32,
        /// The last collision.
        source: DbErr,
    },
    /// A database operation failed.
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// Error id of a write whose expected sequence was not the aggregate's.
pub(crate) const SEQUENCE_MISMATCH: &str = "STORE-sequence-mismatch";

impl From<StoreError> for Error {
    /// The one place that decides what a store failure means to callers; causes stay attached for logs.
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::SequenceMismatch { .. } => Error::new(
                ErrorKind::Aborted,
                SEQUENCE_MISMATCH,
                "the object was changed concurrently; read it again and retry",
            )
            .with_source(err),
            StoreError::Conflict { .. } => Error::new(
                ErrorKind::Aborted,
                "STORE-conflict",
                "the object is being changed concurrently; retry the operation",
            )
            .with_source(err),
            StoreError::NotMigrated => Error::new(
                ErrorKind::FailedPrecondition,
                "STORE-not-migrated",
                "the database schema is not migrated; run `flowgate migrate`",
            ),
            StoreError::Connect(_) => unavailable(err),
            StoreError::InvalidUrl(_) | StoreError::DataDir { .. } => Error::internal("STORE-config", err),
            StoreError::Db(ref db) if is_unstorable_text(db) => Error::new(
                ErrorKind::InvalidArgument,
                "STORE-invalid-text",
                "text values must not contain NUL characters",
            )
            .with_source(err),
            StoreError::Db(ref db) => match classify(db) {
                DbErrorClass::UniqueViolation => {
                    Error::new(ErrorKind::AlreadyExists, "STORE-already-exists", "the object already exists")
                        .with_source(err)
                }
                DbErrorClass::Transient => Error::new(
                    ErrorKind::Aborted,
                    "STORE-conflict",
                    "the object is being changed concurrently; retry the operation",
                )
                .with_source(err),
                DbErrorClass::Unavailable => unavailable(err),
                DbErrorClass::Other => Error::internal("STORE-internal", err),
            },
        }
    }
}

fn unavailable(err: StoreError) -> Error {
    Error::new(ErrorKind::Unavailable, "STORE-unavailable", "the database is unavailable; retry later").with_source(err)
}

/// Maps a sea-orm error straight to the core error (shorthand for going through [`StoreError::Db`]).
pub(crate) fn db_error(err: DbErr) -> Error {
    StoreError::Db(err).into()
}
