//! How long work flows through the tree without blocking a mailbox.
//!
//! - A pipeline asks a persona for a job with [`call_persona`]: it looks up the persona's current
//!   incarnation, calls it with a timeout, and when the persona dies mid-request (its reply port is
//!   dropped) waits for the restart and asks again, a bounded number of times.
//! - A persona runs each job with [`InFlightJobs::start`] in a spawned task whose result comes back
//!   to the persona as a message; a panic in the job becomes an error, not a lost reply.
//! - Dropping a job's handle aborts it, and with it the process group of any engine it runs.
//! - Every engine and verify job passes the job gate ([`hold`]) before it starts: the pause
//!   holds them there, in-process and on the fleet alike.

pub(crate) mod hold;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};
use tokio_util::task::AbortOnDropHandle;

use super::directory::{ActorDirectory, LookupError, PersonaMailbox};
use super::fleet::FleetError;
use crate::model::codes;
use crate::model::ops::error::OpsError;
use crate::model::task::{ErrorInfo, Stage, TaskId};
use crate::platform::beneath::BeneathError;
use crate::platform::git::GitError;
use crate::platform::process::SpawnError;
use crate::storage::store::StoreError;

/// A job is identified by its task and stage: a newer request for the same pair replaces the old.
pub(crate) type JobKey = (TaskId, Stage);

/// Where a persona sends a job's result.
pub(crate) type JobReply<T> = RpcReplyPort<Result<T, StageError>>;

/// A cause of any type, for failures whose typed error differs from site to site (`Internal`).
pub(crate) type AnyCause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Most levels [`error_chain`] walks: a chain is a handful of levels; a cycle would be a bug.
const CHAIN_DEPTH_MAX: usize = 16;

/// Why a stage could not produce its result. Each variant has a stable code.
///
/// The `Display` text is the human message recorded on the task and sent to clients; the typed
/// `source` (shared with `Arc`: one merge-queue failure answers every task of its batch) is for
/// the logs, which print the whole chain ([`error_chain`]). Variants without a source are
/// verdicts or timeouts with no error beneath them; `ProviderUnavailable` keeps only the
/// redacted text, as the provider's error may quote a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum StageError {
    /// The persona crashed past its restart limit.
    #[error("{message}")]
    PersonaUnavailable {
        /// The human message.
        message: String,
        /// The directory's answer, when the persona was looked up and not found.
        #[source]
        source: Option<LookupError>,
    },
    /// The persona did not answer in time.
    #[error("{persona} did not answer within {seconds}s")]
    PersonaTimeout {
        /// Who.
        persona: String,
        /// How long we waited.
        seconds: u64,
    },
    /// An engine ran past its timeout and was killed.
    #[error("{0}")]
    EngineTimeout(String),
    /// An engine could not be started.
    #[error("{message}")]
    EngineFailed {
        /// The human message.
        message: String,
        /// Why the process could not start, when that is what failed.
        #[source]
        source: Option<Arc<SpawnError>>,
    },
    /// An engine's process was killed by a signal it did not ask for (OOM killer, an operator).
    #[error("{0}")]
    EngineKilled(String),
    /// A sandboxed process tree hit one of `engines.limits` (named in the message).
    #[error("{0}")]
    ResourceLimit(String),
    /// Another git process held a lock.
    #[error("{0}")]
    GitLocked(#[source] Arc<GitError>),
    /// The model provider stayed busy or unreachable through every retry.
    #[error("{0}")]
    ProviderUnavailable(String),
    /// A task crossed one of its budget caps.
    #[error("{0}")]
    BudgetExceeded(String),
    /// A model asked to edit a path outside the worktree.
    #[error("{message}")]
    EditRefused {
        /// The human message.
        message: String,
        /// The refusal of the file-system guard, when it was the one to refuse.
        #[source]
        source: Option<Arc<BeneathError>>,
    },
    /// A command was refused by the governed executor.
    #[error("{0}")]
    ToolDenied(String),
    /// The task's changes touch protected paths.
    #[error("{0}")]
    ProtectedPath(String),
    /// The task's change holds a configured secret value (the message names the files, never
    /// the value): nothing was committed.
    #[error("{0}")]
    SecretInChange(String),
    /// The planner's engine did not produce a valid plan.
    #[error("{0}")]
    PlanInvalid(String),
    /// A git operation failed.
    #[error("{0}")]
    Git(#[source] Arc<GitError>),
    /// Delivery failed for another reason; the branch stays for a human.
    #[error("{0}")]
    DeliverFailed(String),
    /// A forge (GitHub) delivery failed: `DELIVERY_FAILED` or `CHECKS_STALLED`.
    #[error("{message}")]
    Forge {
        /// A [`codes`] constant.
        code: &'static str,
        /// What failed, naming the step.
        message: String,
    },
    /// The task's deploy did not end healthy (rolled back, failed, rejected, or still waiting
    /// past `compass.deploy_wait_secs`).
    #[error("{message}")]
    DeployFailed {
        /// The human message.
        message: String,
        /// Uplink-Deploy's refusal, when it refused the request.
        #[source]
        source: Option<OpsError>,
    },
    /// The fleet did not run a job (no factory answered in time, or one could not run it).
    #[error("{message}")]
    FleetUnavailable {
        /// The human message.
        message: String,
        /// The fleet's error, when the fleet answered one.
        #[source]
        source: Option<Arc<FleetError>>,
    },
    /// Durable state could not be written.
    #[error("{message}")]
    Store {
        /// The human message.
        message: String,
        /// The store's error, when the store answered directly (not through another persona).
        #[source]
        source: Option<Arc<StoreError>>,
    },
    /// The task was cancelled while the job ran.
    #[error("the task was cancelled")]
    Cancelled,
    /// A bug (a job panicked), or the file system failed.
    #[error("{message}")]
    Internal {
        /// The human message.
        message: String,
        /// The error beneath (I/O, a join, a codec), when there was one; a panic has none.
        #[source]
        source: Option<AnyCause>,
    },
}

impl StageError {
    /// The machine-readable code recorded on the task.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::PersonaUnavailable { .. } => codes::PERSONA_UNAVAILABLE,
            Self::PersonaTimeout { .. } => codes::PERSONA_TIMEOUT,
            Self::EngineTimeout(_) => codes::ENGINE_TIMEOUT,
            Self::EngineFailed { .. } => codes::ENGINE_FAILED,
            Self::EngineKilled(_) => codes::ENGINE_KILLED,
            Self::ResourceLimit(_) => codes::RESOURCE_LIMIT,
            Self::GitLocked(_) => codes::GIT_LOCKED,
            Self::PlanInvalid(_) => codes::PLAN_INVALID,
            Self::ToolDenied(_) => codes::TOOL_DENIED,
            Self::ProviderUnavailable(_) => codes::PROVIDER_UNAVAILABLE,
            Self::BudgetExceeded(_) => codes::BUDGET_EXCEEDED,
            Self::EditRefused { .. } => codes::EDIT_REFUSED,
            Self::ProtectedPath(_) => codes::PROTECTED_PATH,
            Self::SecretInChange(_) => codes::SECRET_IN_CHANGE,
            Self::Git(_) => codes::GIT_FAILED,
            Self::DeliverFailed(_) => codes::DELIVER_FAILED,
            Self::Forge { code, .. } => code,
            Self::DeployFailed { .. } => codes::DEPLOY_FAILED,
            Self::Store { .. } => codes::STORE_FAILED,
            Self::FleetUnavailable { .. } => codes::FLEET_UNAVAILABLE,
            Self::Cancelled => codes::CANCELLED,
            Self::Internal { .. } => codes::INTERNAL,
        }
    }

    /// Infrastructure trouble worth retrying with backoff; everything else is a verdict.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::EngineTimeout(_)
                | Self::EngineKilled(_)
                | Self::ProviderUnavailable(_)
                | Self::GitLocked(_)
                | Self::PersonaTimeout { .. }
                | Self::Store { .. }
                | Self::FleetUnavailable { .. }
        )
    }

    /// The error as recorded on a failed task (and sent to clients): code and message, never
    /// the chain beneath.
    pub(crate) fn to_info(&self) -> ErrorInfo {
        ErrorInfo::new(self.code(), self.to_string())
    }

    /// The message and every cause beneath it, for the logs ([`error_chain`]).
    pub(crate) fn chain(&self) -> String {
        error_chain(self)
    }

    /// A bug or a failure with no typed error beneath (a panic, a broken invariant).
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// A failure caused by `source`; `message` is what the task records (it may quote it).
    pub(crate) fn internal_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Internal {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A persona that could not be reached, with no typed error beneath (lost to crashes).
    pub(crate) fn persona_unavailable(message: impl Into<String>) -> Self {
        Self::PersonaUnavailable {
            message: message.into(),
            source: None,
        }
    }

    /// A deploy that ended unhealthy, or could not be asked for, with no typed error beneath.
    pub(crate) fn deploy_failed(message: impl Into<String>) -> Self {
        Self::DeployFailed {
            message: message.into(),
            source: None,
        }
    }

    /// A fleet failure with no typed error beneath (a job the fleet cannot take).
    pub(crate) fn fleet_unavailable(message: impl Into<String>) -> Self {
        Self::FleetUnavailable {
            message: message.into(),
            source: None,
        }
    }

    /// A storage failure another persona reported as text.
    pub(crate) fn store(message: impl Into<String>) -> Self {
        Self::Store {
            message: message.into(),
            source: None,
        }
    }

    /// An edit refused before the file-system guard was asked.
    pub(crate) fn edit_refused(message: impl Into<String>) -> Self {
        Self::EditRefused {
            message: message.into(),
            source: None,
        }
    }
}

/// `error` and its causes joined with ": ", for a log line. A level whose text its parent
/// already quotes (many errors here print their source, e.g. `SpawnError`) is left out, so the
/// line says each thing once.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    for _ in 0..CHAIN_DEPTH_MAX {
        let Some(cause) = next else {
            break;
        };
        let level = cause.to_string();
        if !text.contains(&level) {
            text.push_str(": ");
            text.push_str(&level);
        }
        next = cause.source();
    }
    text
}

impl From<GitError> for StageError {
    fn from(error: GitError) -> Self {
        if crate::platform::git::is_lock_contention(&error) {
            Self::GitLocked(Arc::new(error))
        } else {
            Self::Git(Arc::new(error))
        }
    }
}

impl From<StoreError> for StageError {
    fn from(error: StoreError) -> Self {
        Self::Store {
            message: error.to_string(),
            source: Some(Arc::new(error)),
        }
    }
}

impl From<std::io::Error> for StageError {
    fn from(error: std::io::Error) -> Self {
        Self::internal_from(format!("file system: {error}"), error)
    }
}

impl From<SpawnError> for StageError {
    fn from(error: SpawnError) -> Self {
        Self::EngineFailed {
            message: error.to_string(),
            source: Some(Arc::new(error)),
        }
    }
}

impl From<FleetError> for StageError {
    fn from(error: FleetError) -> Self {
        Self::FleetUnavailable {
            message: error.to_string(),
            source: Some(Arc::new(error)),
        }
    }
}

/// Spawns `work`; `on_done` gets its output, or the panic message if it panicked.
///
/// Dropping the returned handle aborts the work (and, through [`crate::platform::process`], any process it
/// started). The inner task is what may panic; the outer one always reports.
pub(crate) fn spawn_job<T, F, C>(work: F, on_done: C) -> AbortOnDropHandle<()>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
    C: FnOnce(Result<T, String>) + Send + 'static,
{
    // Owned already (not a `Background` task): the caller holds the handle in its state, and
    // dropping it aborts both tasks.
    AbortOnDropHandle::new(tokio::spawn(async move {
        let inner = AbortOnDropHandle::new(tokio::spawn(work));
        let outcome = inner.await.map_err(|error| {
            if error.is_panic() {
                panic_text(error.into_panic())
            } else {
                "job was cancelled".to_owned()
            }
        });
        on_done(outcome);
    }))
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        format!("job panicked: {text}")
    } else if let Some(text) = payload.downcast_ref::<String>() {
        format!("job panicked: {text}")
    } else {
        "job panicked".to_owned()
    }
}

struct RunningJob<T> {
    token: u64,
    reply: JobReply<T>,
    /// Dropping it aborts the job.
    work: AbortOnDropHandle<()>,
}

/// A persona's jobs in flight. Dropping it (the persona stopped or crashed) aborts them all.
pub(crate) struct InFlightJobs<T> {
    jobs: HashMap<JobKey, RunningJob<T>>,
    next_token: u64,
}

impl<T> Default for InFlightJobs<T> {
    fn default() -> Self {
        Self {
            jobs: HashMap::new(),
            next_token: 0,
        }
    }
}

impl<T: Send + 'static> InFlightJobs<T> {
    /// Runs `work` for `key`; its result comes back to `persona` as the message `done` builds.
    ///
    /// A job already running for `key` is aborted: the request it served is gone (its pipeline
    /// crashed and asked again), and two runs in one worktree would trample each other.
    pub(crate) fn start<M, F>(
        &mut self,
        key: JobKey,
        reply: JobReply<T>,
        persona: ActorRef<M>,
        work: F,
        done: fn(JobKey, u64, Result<T, StageError>) -> M,
    ) where
        M: Message,
        F: Future<Output = Result<T, StageError>> + Send + 'static,
    {
        self.next_token += 1;
        let token = self.next_token;
        let handle = spawn_job(work, move |outcome| {
            let result = outcome.unwrap_or_else(|panic| Err(StageError::internal(panic)));
            // The persona may be gone (crashed); then the caller retries and nothing is lost.
            let _ = persona.cast(done(key, token, result));
        });
        self.jobs.insert(
            key,
            RunningJob {
                token,
                reply,
                work: handle,
            },
        );
    }

    /// Delivers a finished job's result to its caller (unless a newer job replaced it).
    pub(crate) fn finish(&mut self, key: JobKey, token: u64, result: Result<T, StageError>) {
        if self.jobs.get(&key).map(|job| job.token) == Some(token) {
            if let Some(job) = self.jobs.remove(&key) {
                // The caller may have given up (timeout, cancel); nothing to do then.
                let _ = job.reply.send(result);
            }
        }
    }

    /// Aborts every job of a task; their callers hear `Cancelled` rather than a dropped reply
    /// (which would read as a crash and be retried).
    pub(crate) fn cancel_task(&mut self, task_id: TaskId) {
        let keys: Vec<JobKey> = self
            .jobs
            .keys()
            .filter(|(task, _)| *task == task_id)
            .copied()
            .collect();
        for key in keys {
            if let Some(job) = self.jobs.remove(&key) {
                drop(job.work);
                let _ = job.reply.send(Err(StageError::Cancelled));
            }
        }
    }
}

/// Limits of one persona call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    /// How long one request may take before it is given up.
    pub timeout: Duration,
    /// How long to wait for a restarting persona to come back.
    pub restart_wait: Duration,
    /// Requests sent at most (the first plus retries after persona crashes).
    pub tries_max: u32,
}

/// Asks the persona reading `M` for a job, retrying when the persona dies mid-request.
///
/// `on_retry` is told each time a request was lost to a crash, before it is sent again.
pub(crate) async fn call_persona<M, T>(
    directory: &ActorDirectory,
    limits: CallLimits,
    request: impl Fn(JobReply<T>) -> M,
    mut on_retry: impl FnMut(u32),
) -> Result<T, StageError>
where
    M: PersonaMailbox,
    T: Send + 'static,
{
    let persona = M::PERSONA;
    let mut lost_to = None;
    for try_number in 1..=limits.tries_max {
        let actor: ActorRef<M> = directory
            .persona(limits.restart_wait, lost_to)
            .await
            .map_err(|error| match error {
                LookupError::Failed(_) | LookupError::NotBack(..) => {
                    StageError::PersonaUnavailable {
                        message: format!("persona {error}"),
                        source: Some(error),
                    }
                }
            })?;
        lost_to = Some(actor.get_id());
        match actor.call(&request, Some(limits.timeout)).await {
            Ok(CallResult::Success(result)) => return result,
            Ok(CallResult::Timeout) => {
                return Err(StageError::PersonaTimeout {
                    persona: persona.name().to_owned(),
                    seconds: limits.timeout.as_secs(),
                })
            }
            // The persona died with our request (or just before it): ask its next incarnation.
            Ok(CallResult::SenderError) | Err(_) => on_retry(try_number),
        }
    }
    Err(StageError::persona_unavailable(format!(
        "persona {persona} crashed on every one of {} tries",
        limits.tries_max
    )))
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// A stage that runs git in a directory that does not exist: the error comes up through `?`
    /// as a pipeline would see it.
    async fn stage_running_git_in(dir: &std::path::Path) -> Result<String, StageError> {
        let git = crate::platform::git::Git::new(dir, Duration::from_secs(10));
        Ok(git.run(&["status", "--porcelain"]).await?)
    }

    /// The typed errors beneath `error`, outermost first.
    fn causes(error: &StageError) -> Vec<&(dyn std::error::Error + 'static)> {
        let mut found = Vec::new();
        let mut next = error.source();
        while let Some(cause) = next {
            found.push(cause);
            next = cause.source();
        }
        found
    }

    #[tokio::test]
    async fn a_git_failure_keeps_its_cause_in_the_chain_and_its_code_at_the_top() {
        let gone = tempfile::tempdir().unwrap().path().join("gone");
        let error = stage_running_git_in(&gone).await.unwrap_err();

        assert_eq!(error.code(), codes::GIT_FAILED);
        assert_eq!(error.to_info().code, codes::GIT_FAILED);
        let causes = causes(&error);
        assert!(
            causes.first().is_some_and(|c| c.is::<Arc<GitError>>()),
            "the git error is the first cause: {error:?}"
        );
        let io = causes
            .iter()
            .find_map(|cause| cause.downcast_ref::<std::io::Error>())
            .unwrap_or_else(|| panic!("the OS error is kept beneath the git error: {error:?}"));
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(error.chain().contains(&io.to_string()), "{}", error.chain());
        // The task (and the HTTP envelope) records code and message, the message unchanged.
        assert_eq!(error.to_info().message, causes[0].to_string());
    }

    #[test]
    fn the_chain_adds_a_cause_the_message_does_not_quote_and_skips_one_it_does() {
        let io = || std::io::Error::other("disk on fire");
        let quiet = StageError::internal_from("could not write the plan", io());
        assert_eq!(quiet.chain(), "could not write the plan: disk on fire");
        assert_eq!(quiet.to_info().message, "could not write the plan");
        assert_eq!(quiet.code(), codes::INTERNAL);

        let quoting = StageError::from(io());
        assert_eq!(quoting.to_string(), "file system: disk on fire");
        assert_eq!(quoting.chain(), "file system: disk on fire");
    }

    #[test]
    fn a_store_failure_keeps_its_typed_cause_and_stays_transient() {
        let error = StageError::from(StoreError::Busy);
        assert_eq!(error.code(), codes::STORE_FAILED);
        assert!(error.is_transient());
        let cause = error
            .source()
            .and_then(|c| c.downcast_ref::<Arc<StoreError>>());
        assert!(matches!(cause.map(|c| &**c), Some(StoreError::Busy)));
        // One failure answers every task of a merge batch: the clone keeps the cause.
        assert!(error.clone().source().is_some());
    }
}
