//! Integration tests: each test starts the real service binary on `127.0.0.1:0` with its own temp
//! data dir and real git repositories, and talks to it over HTTP; suites that never crash, kill
//! or signal it run the same service inside the test process instead (`in_process`).

// A test or a bench states what it expects with unwrap/expect/panic, and is nobody's API; the
// service code may not (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

mod auth;
mod billing;
mod cli;
mod compass;
mod config;
mod containment;
mod delivery;
mod docs;
mod fleet;
mod fleet_control;
mod github;
mod github_contract;
mod github_fake;
mod github_issues;
mod governance;
mod helpers;
mod hostile;
mod in_process;
mod ingress;
mod ledger;
mod load;
mod merge_queue;
mod metrics;
mod models;
mod notifications;
mod oncall;
mod openapi;
mod ops;
mod ops_config;
mod pipeline;
mod poison;
mod recovery;
mod remote;
mod sandbox_launch;
mod storage_full;
mod store;
mod stream;
mod supervision;
mod transport;
mod ui;
