//! Black-box tests: each starts the real server on 127.0.0.1:0 with a fresh database and talks to it
//! over the network, every API scenario over gRPC, gRPC-web and JSON.

mod cli;
mod client;
mod edge;
mod flow;
mod fuzz;
mod harness;
mod identity;
mod idp;
mod jwt;
mod notify;
mod peers;
mod session;
mod system;
