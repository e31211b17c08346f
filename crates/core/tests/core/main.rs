//! The identity and session use cases against in-memory fakes of their ports, in one test binary.

mod flow;
mod identity;
mod idp;
mod session;
