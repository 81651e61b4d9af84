//! glitchlab: a long-running service that runs a software project with AI personas.
//!
//! Work comes in over HTTP, is persisted and driven through a supervision tree of actors: Compass
//! at the root queues tasks and spawns one pipeline per task; Planner plans, Patch implements in a
//! git worktree through an engine, Circuit verifies, Patch delivers; the Uplink personas deploy,
//! watch and respond; the Ledger meters every cost.
//!
//! The modules are layers, each importing only those below it (`tests/it/layers.rs` enforces it):
//!
//! 1. [`model`]: the shared vocabulary — plain types, no tokio, sled or ractor.
//! 2. [`config`]: the service's configuration, persona files, runbooks and `ops.yaml`.
//! 3. [`platform`]: process, sandbox, git, executor rules, model client, prompts, metrics.
//! 4. [`storage`]: the store and its one writer, the token books, ops' records.
//! 5. [`runtime`]: the context handle, the live tree, and the clients of the actors others call.
//! 6. [`work`]: engine runs, metering, intake, task actions, ops orchestration.
//! 7. [`actors`]: the supervision tree's actors.
//! 8. [`app`]: the HTTP ingress, the command line, start-up.

pub mod actors;
pub mod app;
pub mod config;
pub mod model;
pub mod platform;
pub mod runtime;
pub mod storage;
pub(crate) mod work;
