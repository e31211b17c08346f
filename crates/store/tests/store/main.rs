//! The store against real databases, in one test binary: the event log, the identity repositories, the
//! session repositories and migrations of rows already written. Every scenario runs on SQLite and, with
//! `FLOWGATE_TEST_DATABASE_URL`, on PostgreSQL.

mod common;
mod event_log;
mod flow;
mod identity;
mod idp;
mod migration;
mod session;
