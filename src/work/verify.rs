//! One run of a task's verify command: Circuit's gate on the task's branch, and the merge
//! queue's gate on a candidate (the base plus the change). Both run the same command the same
//! way (sandboxed, bounded, metered as Circuit's), so "verified" means one thing.

use uuid::Uuid;

use crate::model::persona::Persona;
use crate::model::task::{Stage, Task};
use crate::platform::git::Git;
use crate::runtime::jobs::StageError;
use crate::runtime::Services;
use crate::work::engine::{self, RunIdentity, ShellRun};

/// What one verify run came to.
#[derive(Debug, Clone)]
pub(crate) struct VerifyRun {
    /// The command exited 0 in time.
    pub passed: bool,
    /// Its whole (bounded) output, with a note when it timed out.
    pub output: String,
    /// The engine run that holds the output.
    pub run_id: Uuid,
}

/// Runs `task.verify` in `worktree` as Circuit at `stage` (verify for the branch, deliver for a
/// candidate). A kill by a signal the command did not ask for is trouble to retry, not a verdict.
pub(crate) async fn run_verify(
    services: &Services,
    task: &Task,
    worktree: Git,
    stage: Stage,
) -> Result<VerifyRun, StageError> {
    let config = &services.config.engines;
    let who = RunIdentity {
        task_id: task.id,
        persona: Persona::Circuit,
        stage,
        attempt: task.progress.attempts,
    };
    let run = engine::run_shell(
        services,
        &who,
        ShellRun {
            command: task.spec.verify.clone(),
            worktree,
            sandbox_refs: vec![format!("refs/heads/{}", task.spec.base_branch)],
            env: vec![
                ("GLITCHLAB_TASK_ID".into(), task.id.to_string()),
                (
                    "GLITCHLAB_ATTEMPT".into(),
                    task.progress.attempts.to_string(),
                ),
            ],
            timeout: engine::capped_timeout(
                task,
                services.engine_timeout(Persona::Circuit, config.verify_timeout_secs),
            )?,
            output_bytes_max: config.output_bytes_max,
            instance: services.instance(),
            prompt_digest: None,
            capabilities: task.spec.capabilities.clone(),
        },
    )
    .await?;
    if let (None, Some(signal), false) = (run.exit_code, run.signal, run.timed_out) {
        return Err(StageError::EngineKilled(format!(
            "the verify command was killed by signal {signal}"
        )));
    }
    let mut output = run.combined_output();
    if run.timed_out {
        output.push_str(&format!(
            "\n[glitchlab: verify timed out after {}s and was killed]\n",
            config.verify_timeout_secs
        ));
    }
    Ok(VerifyRun {
        passed: run.succeeded(),
        output,
        run_id: run.id,
    })
}
