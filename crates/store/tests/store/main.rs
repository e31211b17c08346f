//! The store against real databases, in one test binary: the event log, the identity repositories and
//! the session repositories. Every scenario runs on SQLite and, with `FLOWGATE_TEST_DATABASE_URL`,
//! on PostgreSQL.

mod common;
mod event_log;
mod flow;
mod identity;
mod idp;
mod session;
