//! What the actors of the tree share at run time: the context handle ([`Services`]), the live
//! tree ([`directory`]), the restart policy ([`supervision`]), how work runs beside a mailbox
//! ([`jobs`]), the background tasks the service owns ([`background`]), and running commands'
//! live output on its way to the event streams ([`live_output`]).

pub(crate) mod background;
pub mod base_health;
pub(crate) mod compass;
pub mod directory;
pub mod fleet;
pub(crate) mod jobs;
pub mod ledger;
pub mod live_output;
pub mod merge_lines;
pub(crate) mod notifier;
pub(crate) mod repo_checks;
pub(crate) mod supervision;
pub(crate) mod uplink_deploy;
pub(crate) mod uplink_respond;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::definitions::Definitions;
use crate::config::Config;
use crate::model::ops::error::OpsError;
use crate::model::persona::Persona;
use crate::model::task::TaskId;
use crate::storage::store::Store;
use directory::ActorDirectory;
pub use jobs::hold::JobHold;

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
    pub redactor: Arc<crate::platform::redact::Redactor>,
    /// The sandbox of engine, verify and confined ops processes (namespaces, Landlock, limits;
    /// see [`crate::platform::sandbox`]); `None` when they run unconfined (`sandbox = "off"`).
    pub sandbox: Option<Arc<crate::platform::sandbox::Sandbox>>,
    /// The fleet of factories that runs engine and verify commands (`[fleet] nats_url`); `None`:
    /// they run in-process.
    pub fleet: Option<Arc<fleet::Fleet>>,
    /// Repositories and base branches git confirmed a moment ago (intake's cache).
    pub repo_checks: Arc<repo_checks::RepoChecks>,
    /// Which base commits pass verify alone, and which bases are red now (the merge queues').
    pub base_health: Arc<base_health::BaseHealth>,
    /// Running commands' output on its way to the task streams (in memory, bounded).
    pub live_output: live_output::LiveOutput,
    /// Fire-and-forget work (settlements, signals, cleanups, event streams), owned and capped so
    /// shutdown can wait for it.
    pub background: background::Background,
    /// The gate every engine and verify job passes before it starts: the pause holds jobs
    /// there, in-process and on the fleet alike ([`jobs::hold`]).
    pub hold: Arc<JobHold>,
    /// The merge queues' lines as Patch last published them (a task's `merge.place`).
    pub merge_lines: Arc<merge_lines::MergeLines>,
}

impl Services {
    /// The local repository a task's `repo` names: the path itself, or — for a git URL — the
    /// service's bare clone of it under `<data_dir>/remotes/` (made and refreshed by
    /// `work::remote::sync`).
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        if !crate::model::task::is_remote_repo(repo) {
            return PathBuf::from(repo);
        }
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(repo.as_bytes());
        self.config
            .storage
            .data_dir
            .join("remotes")
            .join(hex::encode(&digest[..8]))
    }

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
        task: &crate::model::task::Task,
        persona: Persona,
    ) -> crate::model::task::EngineSpec {
        let default = self
            .definitions
            .personas
            .get(&persona)
            .map(|p| p.front.engine.as_str())
            .unwrap_or("builtin");
        task.engine_for(persona, default)
    }

    /// A persona's engine timeout: its `timeout_secs` from `actors/`, else the configured one.
    pub fn engine_timeout(&self, persona: Persona, configured_secs: u64) -> std::time::Duration {
        let secs = self
            .definitions
            .personas
            .get(&persona)
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

    /// Where the builtin demo engine writes a task's note when the repository did not opt in to
    /// notes (it has no `.glitchlab/` directory): outside the worktree, so it is never committed.
    pub fn note_path(&self, task_id: TaskId) -> PathBuf {
        self.config
            .storage
            .data_dir
            .join("notes")
            .join(format!("{task_id}.md"))
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

/// The current incarnation of the Uplink persona reading `M`, waiting (bounded) for one that
/// restarts.
pub async fn current_persona<M: directory::PersonaMailbox>(
    directory: &ActorDirectory,
    wait: std::time::Duration,
) -> Result<ractor::ActorRef<M>, OpsError> {
    directory
        .persona(wait, None)
        .await
        .map_err(|e| OpsError::Unavailable(e.to_string()))
}

/// Flattens a call to the persona reading `M`: its answer, or `Unavailable` saying why there was
/// none.
pub fn flatten_call<T, M: directory::PersonaMailbox>(
    result: Result<ractor::rpc::CallResult<Result<T, OpsError>>, ractor::MessagingErr<M>>,
) -> Result<T, OpsError> {
    use ractor::rpc::CallResult;
    let name = M::PERSONA;
    match result {
        Ok(CallResult::Success(outcome)) => outcome,
        Ok(CallResult::Timeout) => Err(OpsError::Unavailable(format!(
            "{name} did not answer in time"
        ))),
        Ok(CallResult::SenderError) | Err(_) => Err(OpsError::Unavailable(format!(
            "{name} stopped before answering"
        ))),
    }
}
