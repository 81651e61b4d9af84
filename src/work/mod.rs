//! The work the actors do, written as plain async functions they run in jobs: engine runs
//! ([`engine`]), budgets and charges ([`metering`]), how a task gets in ([`intake`]), what a client
//! may do to a task ([`transitions`]), GitHub pull-request delivery ([`pull_request`]), and the ops org's machinery ([`ops`]). It reaches actors only
//! through the clients in [`crate::runtime`].

pub(crate) mod cleanup;
pub(crate) mod deploy_stage;
pub(crate) mod engine;
pub(crate) mod fleet_refs;
pub(crate) mod fleet_run;
pub(crate) mod intake;
pub(crate) mod issue_intake;
pub(crate) mod merge_queue;
pub(crate) mod metering;
pub(crate) mod ops;
pub(crate) mod pull_request;
pub(crate) mod remote;
pub(crate) mod secret_scan;
pub(crate) mod transitions;
pub(crate) mod verify;
