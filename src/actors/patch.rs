//! Patch: the implementer. Works in a git worktree on `glitchlab/<task-id>`, commits what its
//! engine changed, and owns the merge queues that land verified work on the base branches
//! (one per repository and base; the protocol is in [`crate::work::merge_queue`]).
//!
//! # Restarts
//!
//! The policy of [`crate::runtime::supervision`]. Implement is safe to redo: it reuses the task's
//! worktree and discards uncommitted edits first. Deviation: the merge queues are forgotten with
//! the state; a delivery asked again lines up at the place its task's record gives it (priority,
//! then when it passed verify), its candidate is rebuilt from scratch, and a turn cut off after
//! landing is recognised by the commit's `Glitchlab-Task` trailer on the base.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::task::AbortOnDropHandle;

use crate::model::persona::Persona;
use crate::model::task::{branch_name, Delivery, EngineRun, EngineSpec, Stage, Task, TaskId};
use crate::platform::beneath;
use crate::platform::git::{self, Git};
use crate::platform::prompt;
use crate::runtime::directory::PersonaMailbox;
use crate::runtime::jobs::{spawn_job, InFlightJobs, JobKey, JobReply, StageError};
use crate::runtime::Services;
use crate::work::engine::{self, RunIdentity, ShellRun};
use crate::work::merge_queue::{self, queue_key, DeliverStep, Line, Place, QueueKey, TurnOutcome};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The Patch persona.
pub(crate) struct Patch;

/// Patch's start-up arguments.
pub(crate) struct PatchArguments {
    /// Shared services.
    pub services: Services,
}

/// What an implement attempt produced.
#[derive(Debug, Clone)]
pub(crate) struct ImplementOutcome {
    /// The commit made, or `None` when the engine changed nothing.
    pub commit: Option<String>,
    /// The engine's output when it exited non-zero: the attempt failed like a failing verify.
    pub engine_failure: Option<String>,
    /// The engine ran fine but the branch's diff against the base is empty: a failed attempt
    /// (`NO_CHANGES`), unless the builtin demo engine wrote its note outside the repository.
    pub no_changes: bool,
}

/// What the engine run of an attempt came to.
enum EngineResult {
    /// It ran through; its changes are in the worktree.
    Ran,
    /// The builtin demo engine wrote its note outside the worktree: nothing to commit, by design.
    Demo,
    /// A failed attempt, with the feedback.
    Failed(String),
}

/// A delivery waiting in its merge queue: the request and where its answer goes.
struct QueuedDelivery {
    task: Box<Task>,
    reply: JobReply<DeliverStep>,
}

/// A queue's running turn: a batch of deliveries, or the removal of an idle queue's scratch
/// worktree (no tasks).
struct Turn {
    /// The batch, in line order: put back in line when the turn is aborted for a cancel.
    tasks: Vec<Task>,
    /// Where each task's outcome goes (a task that asks again replaces its port).
    replies: HashMap<TaskId, JobReply<DeliverStep>>,
    token: u64,
    /// Dropping it aborts the turn (its verify's process group is killed).
    _work: AbortOnDropHandle<()>,
}

impl Turn {
    fn holds(&self, task_id: TaskId) -> bool {
        self.tasks.iter().any(|task| task.id == task_id)
    }
}

/// Patch's state: rebuilt empty on restart (the pipelines ask again, and line up again in the
/// order they passed verify).
pub(crate) struct PatchState {
    services: Services,
    implementing: InFlightJobs<ImplementOutcome>,
    /// `delivery: branch` and `pull_request` tasks: no queue here (a human, or GitHub, merges).
    leaving: InFlightJobs<DeliverStep>,
    /// One merge queue per repository and base branch.
    queues: HashMap<QueueKey, Line<QueuedDelivery>>,
    /// Each queue's running turn.
    turns: HashMap<QueueKey, Turn>,
    /// Queues whose scratch worktree may exist (removed when the queue goes idle).
    scratch_used: HashSet<QueueKey>,
    next_token: u64,
}

/// Patch's messages.
pub(crate) enum PatchMsg {
    /// Answers at once: proof the mailbox is read (`/readyz`).
    Ping(RpcReplyPort<()>),
    /// Run one implement attempt (the attempt number is `task.attempts`).
    Implement {
        /// The task as persisted.
        task: Box<Task>,
        /// Where the outcome goes.
        reply: JobReply<ImplementOutcome>,
    },
    /// Land the task's change on its base through the merge queue (or, for `delivery: branch`,
    /// leave the branch). The answer comes when the task's turn is over.
    Deliver {
        /// The task as persisted.
        task: Box<Task>,
        /// Where the step taken goes.
        reply: JobReply<DeliverStep>,
    },
    /// An implement job finished.
    ImplementDone {
        /// Which job.
        key: JobKey,
        /// Which run of it.
        token: u64,
        /// Its result.
        result: Result<ImplementOutcome, StageError>,
    },
    /// A `delivery: branch` job finished.
    LeaveDone {
        /// Which job.
        key: JobKey,
        /// Which run of it.
        token: u64,
        /// Its result.
        result: Result<DeliverStep, StageError>,
    },
    /// A merge queue's turn ended (its tasks' outcomes; none for an idle clean-up).
    TurnDone {
        /// Which queue.
        queue: QueueKey,
        /// Which turn.
        token: u64,
        /// Each task's outcome; a task missing from it hears a failure.
        outcomes: Vec<TurnOutcome>,
    },
    /// Abort everything running for a task (its engine's process group is killed).
    CancelTask(TaskId),
}

impl PersonaMailbox for PatchMsg {
    const PERSONA: Persona = Persona::Patch;

    fn ping(reply: RpcReplyPort<()>) -> Self {
        PatchMsg::Ping(reply)
    }
}

impl Actor for Patch {
    type Msg = PatchMsg;
    type State = PatchState;
    type Arguments = PatchArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PatchState {
            services: args.services,
            implementing: InFlightJobs::default(),
            leaving: InFlightJobs::default(),
            queues: HashMap::new(),
            turns: HashMap::new(),
            scratch_used: HashSet::new(),
            next_token: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PatchMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            PatchMsg::Implement { task, reply } => {
                crate::handling!(state.services, Persona::Patch, task, "patch.poison");
                crate::work_failpoint!("patch.handle");
                let key = (task.id, Stage::Implement);
                let work = implement(state.services.clone(), *task);
                state
                    .implementing
                    .start(key, reply, myself, work, |key, token, result| {
                        PatchMsg::ImplementDone { key, token, result }
                    });
                crate::handled!(state.services, Persona::Patch);
            }
            PatchMsg::Deliver { task, reply } => {
                crate::handling!(state.services, Persona::Patch, task, "patch.poison");
                crate::work_failpoint!("patch.handle");
                if task.spec.delivery == Delivery::Branch {
                    let key = (task.id, Stage::Deliver);
                    let work = leave_branch(state.services.clone(), *task);
                    state
                        .leaving
                        .start(key, reply, myself, work, |key, token, result| {
                            PatchMsg::LeaveDone { key, token, result }
                        });
                } else if task.spec.delivery == Delivery::PullRequest {
                    // No queue: GitHub's merge is the compare-and-swap (`sha` = the head).
                    let key = (task.id, Stage::Deliver);
                    let work = crate::work::pull_request::deliver(state.services.clone(), *task);
                    state
                        .leaving
                        .start(key, reply, myself, work, |key, token, result| {
                            PatchMsg::LeaveDone { key, token, result }
                        });
                } else {
                    join_queue(&myself, state, task, reply);
                }
                crate::handled!(state.services, Persona::Patch);
            }
            PatchMsg::ImplementDone { key, token, result } => {
                state.implementing.finish(key, token, result);
            }
            PatchMsg::LeaveDone { key, token, result } => {
                state.leaving.finish(key, token, result);
            }
            PatchMsg::TurnDone {
                queue,
                token,
                outcomes,
            } => turn_done(&myself, state, queue, token, outcomes),
            PatchMsg::CancelTask(task_id) => {
                state.implementing.cancel_task(task_id);
                state.leaving.cancel_task(task_id);
                cancel_delivery(&myself, state, task_id);
            }
        }
        Ok(())
    }
}

/// Puts a delivery in its queue (a task asking again keeps its place, and a turn already running
/// for it answers the new request), then starts the queue's next turn if it is free.
fn join_queue(
    myself: &ActorRef<PatchMsg>,
    state: &mut PatchState,
    task: Box<Task>,
    reply: JobReply<DeliverStep>,
) {
    let key = queue_key(&task);
    if let Some(turn) = state.turns.get_mut(&key) {
        if turn.holds(task.id) {
            turn.replies.insert(task.id, reply);
            return;
        }
    }
    let line = state.queues.entry(key.clone()).or_default();
    line.join(Place::of(&task), QueuedDelivery { task, reply });
    next_turn(myself, state, key);
    publish_lines(state);
}

/// Publishes every line (the tasks a turn serves first, then the ones waiting) for the tasks'
/// `merge.place` ([`crate::runtime::merge_lines`]): after each change, no store write.
fn publish_lines(state: &PatchState) {
    let keys: HashSet<&QueueKey> = state.queues.keys().chain(state.turns.keys()).collect();
    let lines = keys.into_iter().map(|key| {
        let served = state.turns.get(key).into_iter().flat_map(|t| &t.tasks);
        let waiting = state
            .queues
            .get(key)
            .into_iter()
            .flat_map(Line::waiting_ids);
        served.map(|task| task.id).chain(waiting).collect()
    });
    state.services.merge_lines.publish(lines);
}

/// Starts the queue's next turn when none runs: the first tasks in line (up to
/// `merge_queue.batch_max`), or — with nobody left — the removal of the scratch worktree; a queue
/// with nothing to do is forgotten.
fn next_turn(myself: &ActorRef<PatchMsg>, state: &mut PatchState, key: QueueKey) {
    let Some(line) = state.queues.get_mut(&key) else {
        return;
    };
    let services = state.services.clone();
    let batch = line.next_batch(services.config.merge_queue.batch_max);
    let (tasks, replies, work): (_, _, BoxFuture<Vec<TurnOutcome>>) = if !batch.is_empty() {
        state.scratch_used.insert(key.clone());
        let mut tasks = Vec::with_capacity(batch.len());
        let mut replies = HashMap::with_capacity(batch.len());
        for (_, entry) in batch {
            replies.insert(entry.task.id, entry.reply);
            tasks.push(*entry.task);
        }
        let owned = tasks.clone();
        let work = async move { merge_queue::run_turn(&services, owned).await };
        (tasks, replies, Box::pin(work))
    } else if line.is_idle() && state.scratch_used.remove(&key) {
        line.hold();
        let queue = key.clone();
        let work = async move {
            merge_queue::remove_scratch(&services, &queue).await;
            Vec::new()
        };
        (Vec::new(), HashMap::new(), Box::pin(work))
    } else {
        if line.is_idle() {
            state.queues.remove(&key);
        }
        return;
    };
    state.next_token += 1;
    let token = state.next_token;
    let patch = myself.clone();
    let queue = key.clone();
    let handle = spawn_job(work, move |outcome| {
        // A panicked turn answers nobody: its tasks hear a failure in `turn_done`.
        let outcomes = outcome.unwrap_or_else(|panic| {
            tracing::error!(%panic, "a merge queue turn panicked");
            Vec::new()
        });
        // Patch may be gone (crashed): its next incarnation hears the pipelines ask again.
        let _ = patch.cast(PatchMsg::TurnDone {
            queue,
            token,
            outcomes,
        });
    });
    state.turns.insert(
        key,
        Turn {
            tasks,
            replies,
            token,
            _work: handle,
        },
    );
}

fn turn_done(
    myself: &ActorRef<PatchMsg>,
    state: &mut PatchState,
    key: QueueKey,
    token: u64,
    outcomes: Vec<TurnOutcome>,
) {
    if state.turns.get(&key).map(|turn| turn.token) != Some(token) {
        return; // a turn that was cancelled meanwhile
    }
    if let Some(mut turn) = state.turns.remove(&key) {
        for (task_id, outcome) in outcomes {
            if let Some(reply) = turn.replies.remove(&task_id) {
                // The caller may have given up (timeout, cancel); it asks again if it cares.
                let _ = reply.send(outcome);
            }
        }
        for (_, reply) in turn.replies {
            let error = StageError::internal("the merge queue's turn ended without an outcome");
            let _ = reply.send(Err(error));
        }
    }
    if let Some(line) = state.queues.get_mut(&key) {
        line.done();
    }
    next_turn(myself, state, key);
    publish_lines(state);
}

/// A cancelled task leaves its queue. A running turn that holds it is aborted: the task hears
/// `Cancelled` (a dropped reply would read as a crash and be retried), the rest of its batch goes
/// back in line at the places they had.
fn cancel_delivery(myself: &ActorRef<PatchMsg>, state: &mut PatchState, task_id: TaskId) {
    for line in state.queues.values_mut() {
        if let Some(entry) = line.leave(task_id) {
            let _ = entry.reply.send(Err(StageError::Cancelled));
        }
    }
    let running: Vec<QueueKey> = state
        .turns
        .iter()
        .filter(|(_, turn)| turn.holds(task_id))
        .map(|(key, _)| key.clone())
        .collect();
    for key in running {
        let Some(mut turn) = state.turns.remove(&key) else {
            continue;
        };
        let line = state.queues.entry(key.clone()).or_default();
        for task in turn.tasks {
            let Some(reply) = turn.replies.remove(&task.id) else {
                continue;
            };
            if task.id == task_id {
                let _ = reply.send(Err(StageError::Cancelled));
            } else {
                let task = Box::new(task);
                line.join(Place::of(&task), QueuedDelivery { task, reply });
            }
        }
        line.done();
        next_turn(myself, state, key);
    }
    publish_lines(state);
}

async fn implement(services: Services, task: Task) -> Result<ImplementOutcome, StageError> {
    engine::wall_budget_left(&task)?;
    let git_timeout = services.config.git.timeout();
    let worktree_path = services.worktree_path(task.id);
    crate::work::remote::sync(&services, &task).await?;
    let repo = Git::new(services.repo_dir(&task.spec.repo), git_timeout);
    let (made, worktree) = repo
        .ensure_worktree(
            &worktree_path,
            &branch_name(task.id),
            &task.spec.base_branch,
        )
        .await
        // The repository or its base may be gone: intake asks git again at the next submit.
        .inspect_err(|_| services.repo_checks.forget(&task.spec.repo))?;
    if made == git::Worktree::Existing {
        // A cut-off earlier run of this attempt may have left half-made edits.
        worktree.discard_uncommitted().await?;
    }
    let merge = &task.progress.merge;
    let behind = merge.rebase_if_behind
        && repo
            .is_behind(&branch_name(task.id), &task.spec.base_branch)
            .await;
    if merge.restart_from_base || behind {
        // The last attempt no longer applied to (or passed on) the base, or a retried round's
        // branch is behind it: this one starts from the base as it is now, with the conflict or
        // the failure as feedback.
        let base = format!("refs/heads/{}", task.spec.base_branch);
        worktree.run(&["reset", "--hard", "--quiet", &base]).await?;
        worktree.run(&["clean", "-fdq"]).await?;
    }

    let who = RunIdentity {
        task_id: task.id,
        persona: Persona::Patch,
        stage: Stage::Implement,
        attempt: task.progress.attempts,
    };
    let result = match services.engine_for(&task, Persona::Patch) {
        EngineSpec::Openai { provider } => {
            match edit_with_model(&services, &task, &who, &provider, &worktree_path).await? {
                Some(feedback) => EngineResult::Failed(feedback),
                None => EngineResult::Ran,
            }
        }
        EngineSpec::Builtin => builtin_note(&services, &task, &who, &worktree_path).await?,
        spec => {
            let run = run_engine(&services, &task, &who, &worktree, spec).await?;
            match shell_failure(&services, &run)? {
                Some(feedback) => EngineResult::Failed(feedback),
                None => EngineResult::Ran,
            }
        }
    };
    let demo = match result {
        EngineResult::Failed(feedback) => {
            worktree.discard_uncommitted().await?;
            return Ok(ImplementOutcome {
                commit: None,
                engine_failure: Some(feedback),
                no_changes: false,
            });
        }
        EngineResult::Demo => true,
        EngineResult::Ran => false,
    };
    let changed = check_protected_paths(&services, &worktree, &task).await?;
    let refuse_secrets = crate::work::secret_scan::refuse_secrets_in_change;
    refuse_secrets(&services, &worktree, &worktree_path, &changed).await?;
    if changed.is_empty() {
        // Nothing differs from the base: no commit, and (but for the demo) a failed attempt.
        return Ok(ImplementOutcome {
            commit: None,
            engine_failure: None,
            no_changes: !demo,
        });
    }
    let message = format!(
        "glitchlab: {} (attempt {})",
        task.spec.title, task.progress.attempts
    );
    let commit = worktree.commit_staged(&message).await?;
    // A remote's copy of the branch follows each attempt (a human can look at it there).
    crate::work::remote::push_branch(&services, &task).await?;
    Ok(ImplementOutcome {
        commit,
        engine_failure: None,
        no_changes: false,
    })
}

/// The builtin demo engine: writes the plan note. A repository with a `.glitchlab/` directory
/// opted in and gets it committed as `.glitchlab/notes/<id>.md`; any other gets no commit: the
/// note goes to the data dir ([`Services::note_path`]) and the attempt is a demo that changed
/// nothing on purpose (exempt from `NO_CHANGES`).
///
/// The worktree is hostile content: `.glitchlab` is looked at without following a link, and a
/// link there is not opting in (the note goes to the data dir, the run's output says why); the
/// note is written [`beneath`] the worktree, so a link further down (`.glitchlab/notes`) fails
/// the attempt `EDIT_REFUSED` and nothing is written outside.
async fn builtin_note(
    services: &Services,
    task: &Task,
    who: &RunIdentity,
    worktree_path: &Path,
) -> Result<EngineResult, StageError> {
    let started = Instant::now();
    let (relative, text) = engine::builtin_note(task, task.progress.attempts);
    // Like every text the service writes, the note holds no secret.
    let text = services.redactor.redact(&text);
    let dot = beneath::kind(worktree_path, NOTES_DIR)
        .await
        .map_err(|e| worktree_file_error("the builtin note's folder", e))?;
    let (result, output) = if dot == Some(beneath::Kind::Dir) {
        beneath::write(worktree_path, &relative, text.into_bytes())
            .await
            .map_err(|e| worktree_file_error("the builtin note", e))?;
        (EngineResult::Ran, format!("wrote {relative}\n"))
    } else {
        let path = services.note_path(task.id);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::write(&path, text).await?;
        let why = if dot == Some(beneath::Kind::Link) {
            "the repository's .glitchlab is a symbolic link, not a directory (never followed)"
        } else {
            "the repository has no .glitchlab/ directory"
        };
        let output = format!(
            "wrote notes/{}.md in the data dir: {why}, so the demo commits nothing\n",
            task.id
        );
        (EngineResult::Demo, output)
    };
    engine::record_builtin(services, who, output, started).await?;
    Ok(result)
}

/// The folder whose presence opts a repository in to the builtin engine's committed notes.
const NOTES_DIR: &str = ".glitchlab";

/// A file the service could not reach in a worktree: a refused path (through a link, outside)
/// is `EDIT_REFUSED`; anything else is the file system's trouble.
fn worktree_file_error(what: &str, error: beneath::BeneathError) -> StageError {
    if error.is_refusal() {
        StageError::EditRefused {
            message: format!("{what}: {error}"),
            source: Some(std::sync::Arc::new(error)),
        }
    } else {
        StageError::internal_from(format!("{what}: {error}"), error)
    }
}

/// `delivery: branch`: the work stays on its branch for a human to review and merge; the base is
/// not touched and the worktree goes. Safe to repeat (a cut-off run finds the branch as it was).
async fn leave_branch(services: Services, task: Task) -> Result<DeliverStep, StageError> {
    let repo = Git::new(
        services.repo_dir(&task.spec.repo),
        services.config.git.timeout(),
    );
    let head = repo.rev_parse(&branch_name(task.id)).await?;
    let worktree_path = services.worktree_path(task.id);
    if tokio::fs::try_exists(&worktree_path).await.unwrap_or(true) {
        if let Err(error) = repo.remove_worktree(&worktree_path).await {
            tracing::warn!(task = %task.id, %error, "could not remove a delivered worktree");
        }
    }
    Ok(DeliverStep::Landed(head))
}

/// Stages the attempt's changes and refuses them, before anything is committed, when the branch's
/// change since it left the base would touch a protected path: staged edits and what was already
/// committed on the branch (an engine that commits by itself, an earlier attempt), both sides of a
/// rename.
///
/// Answers every path the branch changes against the base (empty: the attempt changed nothing).
async fn check_protected_paths(
    services: &Services,
    worktree: &Git,
    task: &Task,
) -> Result<Vec<String>, StageError> {
    let patterns = services
        .config
        .governance
        .protected_paths_for(&task.spec.repo);
    let protected = protected_globs(&patterns)?;
    worktree.stage_all().await?;
    let changed = worktree.changed_since(&task.spec.base_branch).await?;
    let touched: Vec<&str> = changed
        .iter()
        .map(String::as_str)
        .filter(|path| protected.is_match(path))
        .collect();
    if touched.is_empty() {
        return Ok(changed);
    }
    Err(StageError::ProtectedPath(format!(
        "the change touches protected paths: {}",
        touched.join(", ")
    )))
}

/// Compiles the protected-path globs (checked at start-up, so this does not fail in practice).
pub(crate) fn protected_globs(patterns: &[String]) -> Result<globset::GlobSet, StageError> {
    let mut builder = globset::GlobSetBuilder::new();
    for pattern in patterns {
        let glob = globset::Glob::new(pattern).map_err(|e| {
            StageError::internal_from(format!("protected path `{pattern}`: {e}"), e)
        })?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| StageError::internal_from(format!("protected paths: {e}"), e))
}

/// How a command engine's run ended: `Ok(None)` done, `Ok(Some(feedback))` a failed attempt,
/// `Err` trouble that is not the attempt's fault (a timeout, a kill).
fn shell_failure(services: &Services, run: &EngineRun) -> Result<Option<String>, StageError> {
    if run.timed_out {
        return Err(StageError::EngineTimeout(format!(
            "patch engine timed out after {}s",
            services.config.engines.timeout_secs
        )));
    }
    if let (None, Some(signal)) = (run.exit_code, run.signal) {
        return Err(StageError::EngineKilled(format!(
            "the patch engine was killed by signal {signal}"
        )));
    }
    if run.succeeded() {
        return Ok(None);
    }
    let output = crate::platform::process::keep_tail(
        &run.combined_output(),
        services.config.engines.feedback_bytes_max,
    );
    Ok(Some(format!(
        "the patch engine {}:\n{output}",
        engine::ending(run)
    )))
}

/// What the model is told about the shape of its answer.
const EDITS_FORMAT: &str = "\n# Answer\n\nAnswer with one JSON object and nothing else: \
{\"edits\": [{\"path\": string, \"search\": string, \"replace\": string} | \
{\"path\": string, \"content\": string} | {\"path\": string, \"delete\": true}]}. \
Paths are relative to the repository root. \
`search` must appear in the file exactly as given; `content` replaces (or creates) the whole file; \
`delete` removes the file.\n";

/// One edit a model asked for.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum Edit {
    /// Replace the first occurrence of `search` with `replace`.
    Replace {
        path: String,
        search: String,
        replace: String,
    },
    /// Write the whole file.
    Write { path: String, content: String },
    /// Remove the file (when `delete` is true).
    Delete { path: String, delete: bool },
}

impl Edit {
    fn path(&self) -> &str {
        let (Self::Replace { path, .. } | Self::Write { path, .. } | Self::Delete { path, .. }) =
            self;
        path
    }
}

#[derive(Debug, serde::Deserialize)]
struct Edits {
    edits: Vec<Edit>,
}

/// Asks the model for edits and applies them inside the worktree, [`beneath`] it: a path outside
/// it or through a symbolic link is refused (`EDIT_REFUSED`, nothing written); an answer that
/// cannot be applied is a failed attempt with the reason as feedback.
async fn edit_with_model(
    services: &Services,
    task: &Task,
    who: &RunIdentity,
    provider: &str,
    worktree: &Path,
) -> Result<Option<String>, StageError> {
    let system = services.definitions.system_prompt(Persona::Patch);
    let feedback = task
        .progress
        .feedback
        .as_deref()
        .filter(|_| task.progress.attempts > 1);
    let prompt = prompt::build("", task, feedback) + EDITS_FORMAT;
    let answer = engine::run_model(
        services,
        who,
        provider,
        system,
        &prompt,
        task.billing.budget.max_tokens,
    )
    .await?;
    let edits = match crate::platform::openai::json_in(&answer).map(serde_json::from_str::<Edits>) {
        Some(Ok(edits)) => edits.edits,
        Some(Err(error)) => return Ok(Some(format!("the edits were not valid JSON: {error}"))),
        None => return Ok(Some("the answer held no JSON object with edits".into())),
    };
    for edit in &edits {
        if let Err(reason) = apply_edit(worktree, edit).await? {
            return Ok(Some(reason));
        }
    }
    Ok(None)
}

/// Applies one edit; `Ok(Err(reason))` when it does not apply, `Err` when it is refused.
async fn apply_edit(worktree: &Path, edit: &Edit) -> Result<Result<(), String>, StageError> {
    let path = edit.path();
    check_edit_path(path)?;
    let done = match edit {
        Edit::Write { content, .. } => {
            beneath::write(worktree, path, content.clone().into_bytes()).await
        }
        Edit::Delete { delete: false, .. } => {
            return Ok(Err(format!("{path}: `delete` must be true")));
        }
        Edit::Delete { .. } => beneath::remove_file(worktree, path).await,
        Edit::Replace {
            search, replace, ..
        } => {
            let text = match beneath::read_to_string(worktree, path).await {
                Ok(text) => text,
                Err(beneath::BeneathError::NotFound { .. }) => {
                    return Ok(Err(format!("{path}: no such file to edit")));
                }
                Err(error) => return edit_failed(error),
            };
            if !text.contains(search.as_str()) {
                return Ok(Err(format!("{path}: the search text was not found")));
            }
            let text = text.replacen(search.as_str(), replace, 1);
            beneath::write(worktree, path, text.into_bytes()).await
        }
    };
    match done {
        Ok(()) => Ok(Ok(())),
        Err(error) => edit_failed(error),
    }
}

/// An edit the file system did not take: a refused path fails the attempt `EDIT_REFUSED`; a
/// missing, oversized or odd file is the model's mistake, fed back; other trouble is internal.
fn edit_failed(error: beneath::BeneathError) -> Result<Result<(), String>, StageError> {
    use beneath::BeneathError as E;
    match error {
        E::NotFound { .. } | E::NotAFile { .. } | E::TooLarge { .. } => Ok(Err(error.to_string())),
        error => Err(worktree_file_error("the edit path", error)),
    }
}

/// Refuses, before any file is touched, an edit of the git directory or of nothing; the rest
/// (absolute, `..`, links) is [`beneath`]'s refusal.
fn check_edit_path(relative: &str) -> Result<(), StageError> {
    let git_dir = Path::new(relative)
        .components()
        .find(|c| !matches!(c, std::path::Component::CurDir))
        .is_some_and(|c| c.as_os_str() == ".git");
    if git_dir || relative.is_empty() {
        return Err(StageError::edit_refused(format!(
            "the edit path `{relative}` is outside the worktree"
        )));
    }
    Ok(())
}

async fn run_engine(
    services: &Services,
    task: &Task,
    who: &RunIdentity,
    worktree: &Git,
    spec: EngineSpec,
) -> Result<EngineRun, StageError> {
    match spec {
        EngineSpec::Openai { .. } => {
            Err(StageError::internal("a model engine has no run of its own"))
        }
        EngineSpec::Builtin => Err(StageError::internal(
            "the builtin engine has no command to run",
        )),
        EngineSpec::Shell { command } => {
            let system_prompt = services.definitions.system_prompt(Persona::Patch);
            let feedback = task
                .progress
                .feedback
                .as_deref()
                .filter(|_| task.progress.attempts > 1);
            let files = prompt::write_files(
                &services.prompt_dir(task.id),
                "implement",
                task.progress.attempts,
                &prompt::build(system_prompt, task, feedback),
                feedback,
                &services.redactor,
            )
            .await?;
            let config = &services.config.engines;
            engine::run_shell(
                services,
                who,
                ShellRun {
                    command,
                    worktree: worktree.clone(),
                    sandbox_refs: vec![format!("refs/heads/{}", task.spec.base_branch)],
                    env: prompt::engine_env(task, task.progress.attempts, &files),
                    timeout: engine::capped_timeout(
                        task,
                        services.engine_timeout(Persona::Patch, config.timeout_secs),
                    )?,
                    output_bytes_max: config.output_bytes_max,
                    instance: services.instance(),
                    prompt_digest: Some(files.digest.clone()),
                    capabilities: task.spec.capabilities.clone(),
                },
            )
            .await
        }
    }
}
