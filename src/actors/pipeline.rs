//! Pipeline: one actor per in-flight task, driving it through its template's stages.
//!
//! The task record in sled is the pipeline's real state: every transition is written (with its
//! events) before the next stage is asked for, so a pipeline restarted after a crash — or after
//! `kill -9` of the whole process — reloads the record and runs the current stage again.
//! Stage work runs in a spawned job that calls the stage's persona; its outcome returns here as
//! [`PipelineMsg::StageDone`], so the mailbox stays free for `Cancel`.

use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use tokio_util::task::AbortOnDropHandle;

use super::circuit::{CircuitMsg, VerifyOutcome};
use super::jobs::{call_persona, spawn_job, CallLimits, StageError};
use super::patch::{branch_name, ImplementOutcome, PatchMsg};
use super::planner::PlannerMsg;
use super::Services;
use crate::domain::{ErrorInfo, Plan, Stage, Task, TaskId, TaskStatus};
use crate::git::Git;
use crate::store::{NewEvent, StoreError};

/// Added to a stage's own timeouts before its persona call is given up.
const CALL_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

/// The Pipeline actor.
pub struct Pipeline;

/// A pipeline's start-up arguments.
pub struct PipelineArguments {
    /// The task it drives.
    pub task_id: TaskId,
    /// Shared services.
    pub services: Services,
}

/// What a stage's persona answered.
pub enum StageOutcome {
    /// Planner's answer.
    Planned(Result<Plan, StageError>),
    /// Patch's implement answer.
    Implemented(Result<ImplementOutcome, StageError>),
    /// Circuit's answer.
    Verified(Result<VerifyOutcome, StageError>),
    /// Patch's deliver answer: the delivered commit.
    Delivered(Result<String, StageError>),
}

impl StageOutcome {
    fn failed(stage: Stage, error: StageError) -> Self {
        match stage {
            Stage::Plan => Self::Planned(Err(error)),
            Stage::Implement => Self::Implemented(Err(error)),
            Stage::Verify => Self::Verified(Err(error)),
            Stage::Deliver => Self::Delivered(Err(error)),
        }
    }
}

/// A pipeline's messages.
pub enum PipelineMsg {
    /// Run the task's current stage.
    Advance,
    /// The current stage's persona answered.
    StageDone {
        /// The stage that ran.
        stage: Stage,
        /// The attempt it ran for (stale answers are ignored).
        attempt: u32,
        /// The answer.
        outcome: StageOutcome,
    },
    /// The task was cancelled (already recorded by Compass): stop the work and clean up.
    Cancel,
    /// A persona was restarted; if it held this task's request, that is worth an event.
    PersonaRestarted {
        /// The persona.
        persona: String,
        /// Its restart count.
        restarts: u32,
    },
}

struct InFlightStage {
    persona: &'static str,
    /// Dropping it aborts the stage's persona call.
    _work: AbortOnDropHandle<()>,
}

/// A pipeline's state.
pub struct PipelineState {
    task_id: TaskId,
    services: Services,
    /// `pipeline-<task-id>`: the actor name in events and in `/v1/actors`.
    name: String,
    in_flight: Option<InFlightStage>,
}

impl Actor for Pipeline {
    type Msg = PipelineMsg;
    type State = PipelineState;
    type Arguments = PipelineArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PipelineState {
            name: format!("pipeline-{}", args.task_id),
            task_id: args.task_id,
            services: args.services,
            in_flight: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(task) = state.services.store.task(state.task_id)? else {
            myself.stop(Some("task is gone".into()));
            return Ok(());
        };
        let result = if task.status == TaskStatus::Running {
            let event = NewEvent::new(
                &state.name,
                "task.resumed",
                json!({"stage": task.stage, "attempt": task.attempts}),
            );
            state.services.store.append_event(task.id, event).await
        } else {
            start_task(state, &task).await.map(drop)
        };
        match result {
            Ok(()) => myself.cast(PipelineMsg::Advance)?,
            Err(StoreError::TaskFinished(_)) => myself.stop(Some("finished".into())),
            Err(error) => return Err(error.into()),
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let result = match message {
            PipelineMsg::Advance => {
                crate::work_failpoint!("pipeline.handle");
                advance(&myself, state)
            }
            PipelineMsg::StageDone {
                stage,
                attempt,
                outcome,
            } => {
                state.in_flight = None;
                on_stage_done(&myself, state, stage, attempt, outcome).await
            }
            PipelineMsg::Cancel => {
                state.in_flight = None;
                remove_worktree_later(state);
                myself.stop(Some("cancelled".into()));
                Ok(())
            }
            PipelineMsg::PersonaRestarted { persona, restarts } => {
                note_restart(state, persona, restarts).await
            }
        };
        match result {
            // Cancelled (or otherwise ended) under our feet: nothing left to drive.
            Err(StoreError::TaskFinished(_)) => {
                myself.stop(Some("finished".into()));
                Ok(())
            }
            other => other.map_err(Into::into),
        }
    }
}

async fn start_task(state: &PipelineState, task: &Task) -> Result<Task, StoreError> {
    let first = task.stages.first().copied().unwrap_or(Stage::Plan);
    let attempts = u32::from(first == Stage::Implement);
    let events = [
        NewEvent::new(&state.name, "task.started", json!({"stages": task.stages})),
        NewEvent::new(
            &state.name,
            "stage.started",
            json!({"stage": first, "attempt": attempts}),
        ),
    ];
    state
        .services
        .store
        .update_task(task.id, &events, |t| {
            t.status = TaskStatus::Running;
            t.stage = Some(first);
            t.attempts = attempts;
            t.started_at = Some(Utc::now());
            if first == Stage::Implement {
                t.branch = Some(branch_name(t.id));
            }
        })
        .await
}

fn advance(myself: &ActorRef<PipelineMsg>, state: &mut PipelineState) -> Result<(), StoreError> {
    let task = state
        .services
        .store
        .task(state.task_id)?
        .ok_or(StoreError::TaskNotFound(state.task_id))?;
    if task.status.is_terminal() {
        return Err(StoreError::TaskFinished(task.id));
    }
    let stage = task.stage.unwrap_or(Stage::Plan);
    let persona = persona_of(stage);
    let limits = call_limits(&state.services, stage);
    let directory = state.services.directory.clone();
    let attempt = task.attempts;
    let task_id = task.id;
    let work = async move {
        let on_retry = |try_number: u32| {
            tracing::warn!(task = %task_id, %stage, try_number, "persona lost the request; asking again");
        };
        let boxed = || Box::new(task.clone());
        match stage {
            Stage::Plan => StageOutcome::Planned(
                call_persona(
                    &directory,
                    persona,
                    limits,
                    |reply| PlannerMsg::Plan {
                        task: boxed(),
                        reply,
                    },
                    on_retry,
                )
                .await,
            ),
            Stage::Implement => StageOutcome::Implemented(
                call_persona(
                    &directory,
                    persona,
                    limits,
                    |reply| PatchMsg::Implement {
                        task: boxed(),
                        reply,
                    },
                    on_retry,
                )
                .await,
            ),
            Stage::Verify => StageOutcome::Verified(
                call_persona(
                    &directory,
                    persona,
                    limits,
                    |reply| CircuitMsg::Verify {
                        task: boxed(),
                        reply,
                    },
                    on_retry,
                )
                .await,
            ),
            Stage::Deliver => StageOutcome::Delivered(
                call_persona(
                    &directory,
                    persona,
                    limits,
                    |reply| PatchMsg::Deliver {
                        task: boxed(),
                        reply,
                    },
                    on_retry,
                )
                .await,
            ),
        }
    };
    let pipeline = myself.clone();
    let handle = spawn_job(work, move |outcome| {
        let outcome = outcome
            .unwrap_or_else(|panic| StageOutcome::failed(stage, StageError::Internal(panic)));
        // The pipeline may be gone (cancelled or crashed); its successor asks again.
        let _ = pipeline.cast(PipelineMsg::StageDone {
            stage,
            attempt,
            outcome,
        });
    });
    state.in_flight = Some(InFlightStage {
        persona,
        _work: handle,
    });
    Ok(())
}

/// The persona that runs a stage.
pub fn persona_of(stage: Stage) -> &'static str {
    match stage {
        Stage::Plan => "planner",
        Stage::Implement | Stage::Deliver => "patch",
        Stage::Verify => "circuit",
    }
}

fn call_limits(services: &Services, stage: Stage) -> CallLimits {
    let config = &services.config;
    let git = config.git.timeout();
    let own = match stage {
        Stage::Plan => Duration::from_secs(config.engines.timeout_secs),
        Stage::Implement => Duration::from_secs(config.engines.timeout_secs) + git * 6,
        Stage::Verify => Duration::from_secs(config.engines.verify_timeout_secs),
        Stage::Deliver => git * 8,
    };
    let supervision = &config.supervision;
    CallLimits {
        timeout: own + CALL_TIMEOUT_MARGIN,
        restart_wait: Duration::from_millis(supervision.backoff_max_ms) * 2
            + Duration::from_secs(5),
        tries_max: supervision.max_restarts + 2,
    }
}

async fn on_stage_done(
    myself: &ActorRef<PipelineMsg>,
    state: &mut PipelineState,
    stage: Stage,
    attempt: u32,
    outcome: StageOutcome,
) -> Result<(), StoreError> {
    let task = state
        .services
        .store
        .task(state.task_id)?
        .ok_or(StoreError::TaskNotFound(state.task_id))?;
    if task.status.is_terminal() {
        return Err(StoreError::TaskFinished(task.id));
    }
    if task.stage != Some(stage) || task.attempts != attempt {
        return Ok(()); // an answer for a stage this task has moved past
    }
    match outcome {
        StageOutcome::Planned(Ok(plan)) => {
            let summary = json!({"steps": plan.steps.len(), "risk": plan.risk});
            finish_stage(myself, state, &task, summary, move |t| {
                t.plan = Some(plan.clone())
            })
            .await
        }
        StageOutcome::Implemented(Ok(done)) => match done.engine_failure {
            Some(output) => failed_attempt(myself, state, &task, output, "IMPLEMENT_FAILED").await,
            None => {
                finish_stage(myself, state, &task, json!({"commit": done.commit}), |_| {}).await
            }
        },
        StageOutcome::Verified(Ok(verdict)) if verdict.passed => {
            finish_stage(
                myself,
                state,
                &task,
                json!({"passed": true, "run_id": verdict.run_id}),
                |_| {},
            )
            .await
        }
        StageOutcome::Verified(Ok(verdict)) => {
            failed_attempt(myself, state, &task, verdict.output, "VERIFY_FAILED").await
        }
        StageOutcome::Delivered(Ok(commit)) => {
            let data = json!({"commit": commit});
            finish_stage(myself, state, &task, data, move |t| {
                t.commit = Some(commit.clone())
            })
            .await
        }
        StageOutcome::Planned(Err(error))
        | StageOutcome::Implemented(Err(error))
        | StageOutcome::Verified(Err(error))
        | StageOutcome::Delivered(Err(error)) => {
            fail_task(myself, state, &task, error.to_info()).await
        }
    }
}

/// Records the stage as done and moves to the next one (or finishes the task).
async fn finish_stage(
    myself: &ActorRef<PipelineMsg>,
    state: &PipelineState,
    task: &Task,
    result: serde_json::Value,
    change: impl Fn(&mut Task),
) -> Result<(), StoreError> {
    let stage = task.stage.unwrap_or(Stage::Plan);
    let finished = NewEvent::new(
        &state.name,
        "stage.finished",
        json!({"stage": stage, "attempt": task.attempts, "outcome": "ok", "result": result}),
    );
    let Some(next) = task.stage_after(stage) else {
        let done = NewEvent::new(
            &state.name,
            "task.finished",
            json!({"status": TaskStatus::Done}),
        );
        let task = state
            .services
            .store
            .update_task(task.id, &[finished, done], |t| {
                change(t);
                t.status = TaskStatus::Done;
                t.finished_at = Some(Utc::now());
            })
            .await?;
        tracing::info!(task = %task.id, commit = ?task.commit, "task done");
        myself.stop(Some("finished".into()));
        return Ok(());
    };
    let attempts = task.attempts + u32::from(next == Stage::Implement);
    let started = NewEvent::new(
        &state.name,
        "stage.started",
        json!({"stage": next, "attempt": attempts}),
    );
    state
        .services
        .store
        .update_task(task.id, &[finished, started], |t| {
            change(t);
            t.stage = Some(next);
            t.attempts = attempts;
            if next == Stage::Implement {
                t.branch = Some(branch_name(t.id));
            }
        })
        .await?;
    myself.cast(PipelineMsg::Advance).ok();
    Ok(())
}

/// An implement or verify attempt failed: hand the output to the next attempt, or give up.
async fn failed_attempt(
    myself: &ActorRef<PipelineMsg>,
    state: &PipelineState,
    task: &Task,
    output: String,
    code: &str,
) -> Result<(), StoreError> {
    let stage = task.stage.unwrap_or(Stage::Verify);
    let can_retry = task.attempts < task.max_attempts && task.stages.contains(&Stage::Implement);
    if !can_retry {
        let tail = crate::process::keep_tail(&output, 2048);
        let message = format!(
            "attempt {} of {} failed at {stage}; last output:\n{tail}",
            task.attempts, task.max_attempts
        );
        return fail_task(myself, state, task, ErrorInfo::new(code, message)).await;
    }
    let next_attempt = task.attempts + 1;
    let events = [
        NewEvent::new(
            &state.name,
            "stage.finished",
            json!({"stage": stage, "attempt": task.attempts, "outcome": "failed", "code": code}),
        ),
        NewEvent::new(
            &state.name,
            "stage.started",
            json!({"stage": Stage::Implement, "attempt": next_attempt, "feedback_bytes": output.len()}),
        ),
    ];
    state
        .services
        .store
        .update_task(task.id, &events, |t| {
            t.feedback = Some(output.clone());
            t.attempts = next_attempt;
            t.stage = Some(Stage::Implement);
        })
        .await?;
    myself.cast(PipelineMsg::Advance).ok();
    Ok(())
}

async fn fail_task(
    myself: &ActorRef<PipelineMsg>,
    state: &PipelineState,
    task: &Task,
    error: ErrorInfo,
) -> Result<(), StoreError> {
    let stage = task.stage.unwrap_or(Stage::Plan);
    let events = [
        NewEvent::new(
            &state.name,
            "stage.finished",
            json!({"stage": stage, "attempt": task.attempts, "outcome": "failed", "code": error.code}),
        ),
        NewEvent::new(
            &state.name,
            "task.finished",
            json!({"status": TaskStatus::Failed, "error": error}),
        ),
    ];
    tracing::warn!(task = %task.id, code = %error.code, "task failed");
    state
        .services
        .store
        .update_task(task.id, &events, |t| {
            t.status = TaskStatus::Failed;
            t.error = Some(error.clone());
            t.finished_at = Some(Utc::now());
        })
        .await?;
    myself.stop(Some("finished".into()));
    Ok(())
}

async fn note_restart(
    state: &PipelineState,
    persona: String,
    restarts: u32,
) -> Result<(), StoreError> {
    let holds_request = state
        .in_flight
        .as_ref()
        .is_some_and(|stage| stage.persona == persona);
    if !holds_request {
        return Ok(());
    }
    let event = NewEvent::new(
        &state.name,
        "actor.restarted",
        json!({"actor": persona, "restarts": restarts, "retrying": true}),
    );
    state
        .services
        .store
        .append_event(state.task_id, event)
        .await
}

/// A cancelled task's worktree goes (its branch stays); done off the mailbox, bounded by git's timeout.
fn remove_worktree_later(state: &PipelineState) {
    let services = state.services.clone();
    let task_id = state.task_id;
    tokio::spawn(async move {
        let Ok(Some(task)) = services.store.task(task_id) else {
            return;
        };
        let path = services.worktree_path(task_id);
        if path.exists() {
            let repo = Git::new(&task.repo, services.config.git.timeout());
            if let Err(error) = repo.remove_worktree(&path).await {
                tracing::warn!(task = %task_id, %error, "could not remove a cancelled task's worktree");
            }
        }
    });
}
