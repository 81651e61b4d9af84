//! glitchlab: a long-running service that runs a software project with AI personas.
//!
//! Work comes in over HTTP ([`http`]), is persisted ([`store`]) and driven through a supervision
//! tree of actors ([`actors`]): Compass at the root queues tasks and spawns one pipeline per task;
//! Planner plans, Patch implements in a git worktree ([`git`]) through an engine ([`engine`]),
//! Circuit verifies, Patch delivers. Every subprocess goes through [`process`] (timeouts, bounded
//! output, process groups).
//!
//! - [`cli`], [`config`], [`telemetry`], [`startup`]: the service around the tree.
//! - [`domain`]: tasks, events and engine runs, as stored and as served.
//! - [`definitions`]: persona files (`actors/`), runbooks (`runbooks/`), ops targets (`ops.yaml`).
//! - [`prompt`]: what a persona hands its engine.
//! - [`sandbox`]: Landlock confinement of engine and verify processes (`sandbox-exec`).
//! - [`executor`]: the governed executor's rules (allowlists, deny list, secrets redaction).
//! - [`openai`]: the `openai` engine's client (any OpenAI-compatible chat-completions endpoint).
//! - [`metering`]: task budgets reserved in the Ledger, engine runs charged, settlement.
//! - [`metrics`]: the Prometheus metrics (names, labels, recording) `GET /metrics` serves.
//! - [`intake`]: how a task gets in (validation, idempotency, the queue bound), for HTTP and ops.
//! - [`ledger`]: the double-entry token books (accounts, transfers, audit) the Ledger actor writes.
//! - [`ops`]: deploys, health checks, maintenance checks and incidents (the Uplink personas' work).

pub mod actors;
pub mod cli;
pub mod config;
pub mod definitions;
pub mod domain;
pub mod engine;
pub mod executor;
pub mod git;
pub mod http;
pub mod intake;
pub mod ledger;
pub mod metering;
pub mod metrics;
pub mod openai;
pub mod ops;
pub mod process;
pub mod prompt;
pub mod sandbox;
pub mod startup;
pub mod store;
pub mod telemetry;
