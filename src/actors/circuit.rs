//! Circuit: the verify gate. Runs the task's verify command in its worktree and reports the
//! outcome; a failure's output goes back (through the pipeline) to Patch's next attempt.
//!
//! # Restarts
//!
//! The policy of [`crate::runtime::supervision`], with no deviation: a verify run is read-only on
//! the worktree, so running it again is safe.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use uuid::Uuid;

use crate::model::persona::Persona;
use crate::model::task::branch_name;
use crate::model::task::{EngineSpec, Stage, Task, TaskId};
use crate::platform::git::Git;
use crate::runtime::directory::PersonaMailbox;
use crate::runtime::jobs::{InFlightJobs, JobKey, JobReply, StageError};
use crate::runtime::Services;
use crate::work::engine::{self, RunIdentity};
use crate::work::verify::run_verify;

/// The Circuit persona.
pub(crate) struct Circuit;

/// Circuit's start-up arguments.
pub(crate) struct CircuitArguments {
    /// Shared services.
    pub services: Services,
}

/// The verdict of one verify run.
#[derive(Debug, Clone)]
pub(crate) struct VerifyOutcome {
    /// The verify command exited 0 in time.
    pub passed: bool,
    /// The tail of its output (bounded): Patch's feedback when it failed.
    pub output: String,
    /// The engine run that holds the whole (bounded) output.
    pub run_id: Uuid,
    /// The tree that passed (the branch's `HEAD` tree): a merge-queue candidate with exactly
    /// this tree needs no second run.
    pub tree: Option<String>,
}

/// Circuit's state: rebuilt empty on restart.
pub(crate) struct CircuitState {
    services: Services,
    jobs: InFlightJobs<VerifyOutcome>,
}

/// Circuit's messages.
pub(crate) enum CircuitMsg {
    /// Answers at once: proof the mailbox is read (`/readyz`).
    Ping(RpcReplyPort<()>),
    /// Verify attempt `task.attempts` of a task.
    Verify {
        /// The task as persisted.
        task: Box<Task>,
        /// Where the verdict goes.
        reply: JobReply<VerifyOutcome>,
    },
    /// A verify job finished.
    JobDone {
        /// Which job.
        key: JobKey,
        /// Which run of it.
        token: u64,
        /// Its result.
        result: Result<VerifyOutcome, StageError>,
    },
    /// Abort everything running for a task (the verify command's process group is killed).
    CancelTask(TaskId),
}

impl PersonaMailbox for CircuitMsg {
    const PERSONA: Persona = Persona::Circuit;

    fn ping(reply: RpcReplyPort<()>) -> Self {
        CircuitMsg::Ping(reply)
    }
}

impl Actor for Circuit {
    type Msg = CircuitMsg;
    type State = CircuitState;
    type Arguments = CircuitArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Test hook: a persona that cannot start is broken whatever the task (`failed`).
        crate::work_failpoint!("circuit.start");
        Ok(CircuitState {
            services: args.services,
            jobs: InFlightJobs::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CircuitMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            CircuitMsg::Verify { task, reply } => {
                crate::handling!(state.services, Persona::Circuit, task, "circuit.poison");
                crate::work_failpoint!("circuit.handle");
                let key = (task.id, Stage::Verify);
                let work = verify(state.services.clone(), *task);
                state
                    .jobs
                    .start(key, reply, myself, work, |key, token, result| {
                        CircuitMsg::JobDone { key, token, result }
                    });
                crate::handled!(state.services, Persona::Circuit);
            }
            CircuitMsg::JobDone { key, token, result } => state.jobs.finish(key, token, result),
            CircuitMsg::CancelTask(task_id) => state.jobs.cancel_task(task_id),
        }
        Ok(())
    }
}

async fn verify(services: Services, task: Task) -> Result<VerifyOutcome, StageError> {
    engine::wall_budget_left(&task)?;
    let worktree_path = services.worktree_path(task.id);
    // Normally Patch's worktree is there; if it was removed, the branch holds the work.
    let (_, worktree) = Git::new(
        services.repo_dir(&task.spec.repo),
        services.config.git.timeout(),
    )
    .ensure_worktree(
        &worktree_path,
        &branch_name(task.id),
        &task.spec.base_branch,
    )
    .await?;
    let tree = worktree.head_tree().await?;
    let run = run_verify(&services, &task, worktree, Stage::Verify).await?;
    let output = run.output;
    let feedback_max = services.config.engines.feedback_bytes_max;
    if let (true, EngineSpec::Openai { provider }) =
        (run.passed, services.engine_for(&task, Persona::Circuit))
    {
        if let Some(reasons) = judge(&services, &task, &provider, &output).await? {
            return Ok(VerifyOutcome {
                passed: false,
                output: crate::platform::process::keep_tail(&reasons, feedback_max),
                run_id: run.run_id,
                tree: None,
            });
        }
    }
    Ok(VerifyOutcome {
        passed: run.passed,
        output: crate::platform::process::keep_tail(&output, feedback_max),
        run_id: run.run_id,
        tree: run.passed.then_some(tree),
    })
}

/// Bytes of the diff a judge sees at most.
const JUDGE_DIFF_BYTES_MAX: usize = 32 * 1024;

/// Asks the model whether the change meets the task's acceptance criteria, given the diff and
/// the test output. `Some(reasons)` when it says it does not (fed back to Patch like a failing
/// test); an answer without a verdict counts as a failure too, with that said.
async fn judge(
    services: &Services,
    task: &Task,
    provider: &str,
    test_output: &str,
) -> Result<Option<String>, StageError> {
    let worktree = Git::new(
        services.repo_dir(&task.spec.repo),
        services.config.git.timeout(),
    )
    .worktree_of(&services.worktree_path(task.id))
    .await?;
    let range = format!("{}...HEAD", task.spec.base_branch);
    let diff = worktree.run(&["diff", &range]).await?;
    let criteria = task
        .spec
        .acceptance
        .as_deref()
        .unwrap_or(&task.spec.description);
    let prompt = format!(
        "# Task\n\n{}\n\n# Acceptance criteria\n\n{criteria}\n\n# Diff\n\n```diff\n{}\n```\n\n# Test output\n\n```\n{}\n```\n\n\
         # Answer\n\nAnswer with one JSON object and nothing else: \
         {{\"verdict\": \"pass\" | \"fail\", \"reasons\": [string]}}.\n",
        task.spec.title,
        crate::platform::process::keep_tail(&diff, JUDGE_DIFF_BYTES_MAX),
        crate::platform::process::keep_tail(test_output, JUDGE_DIFF_BYTES_MAX),
    );
    let who = RunIdentity {
        task_id: task.id,
        persona: Persona::Circuit,
        stage: Stage::Verify,
        attempt: task.progress.attempts,
    };
    let system = services.definitions.system_prompt(Persona::Circuit);
    let answer = engine::run_model(
        services,
        &who,
        provider,
        system,
        &prompt,
        task.billing.budget.max_tokens,
    )
    .await?;
    let verdict = crate::platform::openai::json_in(&answer)
        .and_then(|json| serde_json::from_str::<Verdict>(json).ok());
    Ok(match verdict {
        Some(Verdict { verdict, .. }) if verdict == "pass" => None,
        Some(Verdict { reasons, .. }) => Some(format!(
            "the acceptance judge failed the change:\n- {}",
            reasons.join("\n- ")
        )),
        None => Some("the acceptance judge gave no verdict; the change is not accepted".into()),
    })
}

/// A judge's answer.
#[derive(Debug, serde::Deserialize)]
struct Verdict {
    verdict: String,
    #[serde(default)]
    reasons: Vec<String>,
}
