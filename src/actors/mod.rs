//! The supervision tree. One actor per file; each file holds the actor's messages, arguments and
//! state beside it.
//!
//! ```text
//! Compass (root)
//! ├── Ledger, Planner, Patch, Circuit, Uplink-Deploy, Uplink-Watch, Uplink-Respond
//! └── Pipeline(task) × N
//! ```
//!
//! Shared pieces: [`directory`] (the live tree, read by pipelines and the ingress),
//! [`supervision`] (the restart policy), [`jobs`] (how long work runs without blocking a mailbox).

pub mod circuit;
pub mod compass;
pub mod directory;
pub mod jobs;
pub mod ledger;
pub mod patch;
pub mod pipeline;
pub mod planner;
pub mod supervision;
pub mod transitions;
pub mod uplink_deploy;
pub mod uplink_respond;
pub mod uplink_watch;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::definitions::Definitions;
use crate::domain::TaskId;
use crate::store::Store;
use directory::ActorDirectory;

/// What every actor of the tree shares. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    /// Durable state.
    pub store: Store,
    /// The live tree.
    pub directory: Arc<ActorDirectory>,
    /// Configuration (with `storage.data_dir` made absolute).
    pub config: Arc<Config>,
    /// Personas, runbooks and ops targets.
    pub definitions: Arc<Definitions>,
    /// Secret values to scrub from everything persisted.
    pub redactor: Arc<crate::executor::Redactor>,
    /// This binary, when engine and verify processes are confined with Landlock through it
    /// (`sandbox-exec`); `None` when they run unconfined.
    pub sandbox_exe: Option<PathBuf>,
    /// Repositories and base branches git confirmed a moment ago (intake's cache).
    pub repo_checks: Arc<crate::intake::RepoChecks>,
}

impl Services {
    /// Where a task's git worktree lives.
    pub fn worktree_path(&self, task_id: TaskId) -> PathBuf {
        self.config
            .storage
            .data_dir
            .join("worktrees")
            .join(task_id.to_string())
    }

    /// The engine `persona` uses for `task` (the task's override, else the persona's default).
    pub fn engine_for(
        &self,
        task: &crate::domain::Task,
        persona: &str,
    ) -> crate::domain::EngineSpec {
        let default = self
            .definitions
            .personas
            .get(persona)
            .map(|p| p.front.engine.as_str())
            .unwrap_or("builtin");
        task.engine_for(persona, default)
    }

    /// A persona's engine timeout: its `timeout_secs` from `actors/`, else the configured one.
    pub fn engine_timeout(&self, persona: &str, configured_secs: u64) -> std::time::Duration {
        let secs = self
            .definitions
            .personas
            .get(persona)
            .and_then(|p| p.front.timeout_secs)
            .unwrap_or(configured_secs);
        std::time::Duration::from_secs(secs)
    }

    /// This service instance's identity for its child processes: the (absolute) data dir.
    pub fn instance(&self) -> String {
        self.config.storage.data_dir.display().to_string()
    }

    /// A task's private temp dir: the one place besides its worktree a confined process may write.
    pub fn temp_dir(&self, task_id: TaskId) -> PathBuf {
        self.config
            .storage
            .data_dir
            .join("tmp")
            .join(task_id.to_string())
    }

    /// Where the prompt and feedback files of a task are written (outside the worktree, so they
    /// are never committed).
    pub fn prompt_dir(&self, task_id: TaskId) -> PathBuf {
        self.config
            .storage
            .data_dir
            .join("prompts")
            .join(task_id.to_string())
    }
}

/// Evaluates the `fail` crate's failpoint `name` where an actor starts handling a work message.
/// Compiles to nothing without the `failpoints` feature.
#[macro_export]
macro_rules! work_failpoint {
    ($name:literal) => {
        fail::fail_point!($name);
    };
}
