//! The shared vocabulary, at the bottom of the layers: plain data and the rules on it, with no
//! tokio, sled or ractor. Everything above may use it; it uses nothing above.
//!
//! - [`codes`]: the one catalogue of error codes, each a constant, documented in `docs/api.md`.
//! - [`errors`]: the store's failures, shared by every layer that reports them.
//! - [`auth`]: roles, permissions, token records, the audit log's entries.
//! - [`task`]: tasks, events and engine runs, as stored and as served.
//! - [`live`]: a running command's output as it reaches event streams (never stored).
//! - [`ledger`]: the token books' accounts, transfers, rate card and their validation.
//! - [`persona`]: the personas of the tree, by name.
//! - [`pull_request`]: `delivery: pull_request`'s spec and record.
//! - [`ops`]: what `ops.yaml` and runbooks say, and what ops records.

pub(crate) mod auth;
pub(crate) mod codes;
pub(crate) mod errors;
pub mod fleet;
pub mod ledger;
pub(crate) mod lifecycle;
pub(crate) mod live;
pub(crate) mod ops;
pub(crate) mod persona;
pub(crate) mod pull_request;
pub(crate) mod task;
