//! Pipeline: one actor per in-flight task, driving it through its template's stages.
//!
//! The task record in sled is the pipeline's real state: every transition is written (with its
//! events) before the next stage is asked for, so a pipeline restarted after a crash — or after
//! `kill -9` of the whole process — reloads the record and runs the current stage again.
//! Stage work runs in a spawned job that calls the stage's persona; its outcome returns here as
//! [`PipelineMsg::StageDone`], so the mailbox stays free for `Cancel`.
//!
//! # Restarts
//!
//! The policy of [`crate::runtime::supervision`]; past its limit the task fails `PIPELINE_FAILED`.
//! Nothing of its state (the task id, the stage job in flight) outlives it but the task record.
//! Only Compass calls it (`Cancel`, `PersonaRestarted`).

use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use tokio_util::task::AbortOnDropHandle;

use super::circuit::{CircuitMsg, VerifyOutcome};
use super::patch::{ImplementOutcome, PatchMsg};
use super::planner::PlannerMsg;
use crate::model::codes;
use crate::model::lifecycle::{self, Effect, LifecycleEvent};
use crate::model::persona::Persona;
use crate::model::task::branch_name;
use crate::model::task::{Delivered, ErrorInfo, Plan, Stage, Task, TaskId, TaskStatus};
use crate::runtime::jobs::{call_persona, spawn_job, CallLimits, StageError};
use crate::runtime::Services;
use crate::storage::store::{NewEvent, StoreError};
use crate::work::merge_queue::DeliverStep;
use crate::work::transitions::{self, Moved};

/// Added to a stage's own timeouts before its persona call is given up.
const CALL_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);
/// Bytes of a failed attempt's output kept in its failure record and error message.
const FAILURE_TAIL_BYTES: usize = 2048;

/// The Pipeline actor.
pub(crate) struct Pipeline;

/// A pipeline's start-up arguments.
pub(crate) struct PipelineArguments {
    /// The task it drives.
    pub task_id: TaskId,
    /// Shared services.
    pub services: Services,
}

/// What a stage's persona answered.
pub(crate) enum StageOutcome {
    /// Planner's plan.
    Planned(Plan),
    /// Patch's implement attempt.
    Implemented(ImplementOutcome),
    /// Circuit's verdict.
    Verified(VerifyOutcome),
    /// The task's turn in its merge queue.
    Delivered(DeliverStep),
    /// Uplink-Deploy's deploy of the delivered commit went healthy: its id.
    Deployed(String),
}

/// How long a pipeline waits before taking its stage up again after a storage fault (the store
/// probes the disk every 1 to 8 s).
const STORE_FAULT_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A pipeline's messages.
pub(crate) enum PipelineMsg {
    /// Run the task's current stage.
    Advance,
    /// The current stage's persona answered.
    StageDone {
        /// The stage that ran.
        stage: Stage,
        /// The attempt it ran for (stale answers are ignored).
        attempt: u32,
        /// The answer.
        outcome: Result<StageOutcome, StageError>,
    },
    /// The task was cancelled (already recorded by Compass): stop the work and clean up.
    Cancel,
    /// A persona was restarted; if it held this task's request, that is worth an event.
    PersonaRestarted {
        /// The persona.
        persona: Persona,
        /// Its restart count.
        restarts: u32,
    },
}

struct InFlightStage {
    persona: Persona,
    /// Dropping it aborts the stage's persona call.
    _work: AbortOnDropHandle<()>,
}

/// A pipeline's state.
pub(crate) struct PipelineState {
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
        let Some(task) = state.services.store.task(state.task_id).await? else {
            myself.stop(Some("task is gone".into()));
            return Ok(());
        };
        let result = match task.progress.status {
            // Left running by a stop of the service or a crash of its pipeline.
            TaskStatus::Running => resume_task(state, &task).await,
            TaskStatus::Queued => start_task(state, &task).await,
            _ => Err(StoreError::TaskFinished(task.id)),
        };
        match result {
            Ok(moved) if moved.asks(Effect::Advance) => myself.cast(PipelineMsg::Advance)?,
            Ok(_) | Err(StoreError::TaskFinished(_)) => myself.stop(Some("not runnable".into())),
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
                advance(&myself, state).await
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
                if let Ok(Some(task)) = state.services.store.task(state.task_id).await {
                    transitions::remove_worktree_later(&state.services, &task);
                }
                myself.stop(Some("cancelled".into()));
                Ok(())
            }
            PipelineMsg::PersonaRestarted { persona, restarts } => {
                note_restart(state, persona, restarts).await
            }
        };
        match result {
            // Ended or parked under our feet: nothing left to drive.
            Err(StoreError::TaskFinished(_)) => {
                myself.stop(Some("finished".into()));
                Ok(())
            }
            // A full or failing disk is a state the store recovers from: the stage is taken up
            // again from the stored task (as a restart would), without failing this actor.
            Err(error) if error.is_fault() => {
                tracing::warn!(task = %state.task_id, %error, "pipeline: storage fault; taking the stage up again once the store recovers");
                if state.in_flight.is_none() {
                    myself.send_after(STORE_FAULT_RETRY_DELAY, || PipelineMsg::Advance);
                }
                Ok(())
            }
            other => other.map_err(Into::into),
        }
    }
}

/// Takes up a task left `running` at its stage (the lifecycle's `Resume` row, with its
/// `task.resumed` event): the stage runs again from the stored task.
async fn resume_task(state: &PipelineState, task: &Task) -> Result<Moved, StoreError> {
    let data = json!({"stage": task.progress.stage, "attempt": task.progress.attempts});
    let event = NewEvent::new(&state.name, "task.resumed", data);
    let moved = Moved::default();
    let slot = moved.clone();
    state
        .services
        .store
        .update_task(task.id, &[event], move |t| {
            slot.apply(t, LifecycleEvent::Resume)
        })
        .await?;
    Ok(moved)
}

/// Moves a queued task to `running` at its stage: the first of its template, or — after an
/// approval or a retry — the stage it stopped at.
async fn start_task(state: &PipelineState, task: &Task) -> Result<Moved, StoreError> {
    // Its engine and verify runs will launch: the sandbox gets the kernel ready for them now.
    if let Some(sandbox) = &state.services.sandbox {
        sandbox.expect_launches();
    }
    let first = task.spec.stages.first().copied().unwrap_or(Stage::Plan);
    let stage = task.progress.stage.unwrap_or(first);
    let attempts = if stage == Stage::Implement {
        task.progress.attempts.max(1)
    } else {
        task.progress.attempts
    };
    let events = [
        NewEvent::new(
            &state.name,
            "task.started",
            json!({"stages": task.spec.stages, "stage": stage, "continued": task.progress.stage.is_some()}),
        ),
        NewEvent::new(
            &state.name,
            "stage.started",
            json!({"stage": stage, "attempt": attempts}),
        ),
    ];
    let moved = Moved::default();
    let slot = moved.clone();
    state
        .services
        .store
        .update_task(task.id, &events, move |t| {
            let attempt = attempts;
            slot.apply(t, LifecycleEvent::Start { stage, attempt });
            if stage == Stage::Implement {
                t.progress.branch = Some(branch_name(t.id));
            }
        })
        .await?;
    Ok(moved)
}

/// While a delivery waits in its merge queue the task holds no Compass slot (the lifecycle's
/// `JoinQueue` row: effect `FreeSlot`): told on entering, and again (`LeaveQueue`, on drop) when
/// the wait ends however it ends — answered, failed or aborted.
struct ParkedInQueue {
    compass: Option<ActorRef<crate::runtime::compass::CompassMsg>>,
    task_id: TaskId,
}

impl ParkedInQueue {
    async fn enter(services: &Services, task_id: TaskId) -> Self {
        use crate::runtime::compass::CompassMsg;
        let compass = services
            .directory
            .persona::<CompassMsg>(Duration::ZERO, None)
            .await
            .ok();
        let frees = crate::model::lifecycle::step(TaskStatus::Running, &LifecycleEvent::JoinQueue)
            .is_ok_and(|t| {
                t.effects
                    .contains(&crate::model::lifecycle::Effect::FreeSlot)
            });
        let compass = compass.filter(|_| frees);
        if let Some(compass) = &compass {
            let _ = compass.cast(CompassMsg::Parked(task_id, true));
        }
        Self { compass, task_id }
    }
}

impl Drop for ParkedInQueue {
    fn drop(&mut self) {
        if let Some(compass) = &self.compass {
            let message = crate::runtime::compass::CompassMsg::Parked(self.task_id, false);
            let _ = compass.cast(message);
        }
    }
}

async fn load_active(state: &PipelineState) -> Result<Task, StoreError> {
    let task = state
        .services
        .store
        .task(state.task_id)
        .await?
        .ok_or(StoreError::TaskNotFound(state.task_id))?;
    if task.progress.status != TaskStatus::Running {
        return Err(StoreError::TaskFinished(task.id));
    }
    Ok(task)
}

async fn advance(
    myself: &ActorRef<PipelineMsg>,
    state: &mut PipelineState,
) -> Result<(), StoreError> {
    let mut task = load_active(state).await?;
    // Compass gave the slot back (`Advance`): the task works again.
    if task.progress.waiting_for.as_deref() == Some(lifecycle::SLOT_WAIT_REASON) {
        task = state
            .services
            .store
            .update_task(task.id, &[], |t| {
                transitions::apply(t, LifecycleEvent::StopWaiting);
            })
            .await?;
    }
    let stage = task.progress.stage.unwrap_or(Stage::Plan);
    let Some(persona) = persona_of(stage) else {
        return park_for_approval(myself, state, &task).await;
    };
    let limits = call_limits(&state.services, stage);
    let directory = state.services.directory.clone();
    let services = state.services.clone();
    let attempt = task.progress.attempts;
    let task_id = task.id;
    let work = async move {
        let on_retry = |try_number: u32| {
            tracing::warn!(task = %task_id, %stage, try_number, "persona lost the request; asking again");
        };
        let boxed = || Box::new(task.clone());
        match stage {
            Stage::Plan => call_persona(
                &directory,
                limits,
                |reply| PlannerMsg::Plan {
                    task: boxed(),
                    reply,
                },
                on_retry,
            )
            .await
            .map(StageOutcome::Planned),
            Stage::Implement => call_persona(
                &directory,
                limits,
                |reply| PatchMsg::Implement {
                    task: boxed(),
                    reply,
                },
                on_retry,
            )
            .await
            .map(StageOutcome::Implemented),
            Stage::Verify => call_persona(
                &directory,
                limits,
                |reply| CircuitMsg::Verify {
                    task: boxed(),
                    reply,
                },
                on_retry,
            )
            .await
            .map(StageOutcome::Verified),
            Stage::Deliver | Stage::Approve => {
                let _parked = ParkedInQueue::enter(&services, task_id).await;
                call_persona(
                    &directory,
                    limits,
                    |reply| PatchMsg::Deliver {
                        task: boxed(),
                        reply,
                    },
                    on_retry,
                )
                .await
                .map(StageOutcome::Delivered)
            }
            Stage::Deploy => {
                let wait = Duration::from_secs(services.config.compass.deploy_wait_secs);
                crate::work::deploy_stage::deploy_stage(&services, &task, wait)
                    .await
                    .map(StageOutcome::Deployed)
            }
        }
    };
    let pipeline = myself.clone();
    let handle = spawn_job(work, move |outcome| {
        let outcome = outcome.unwrap_or_else(|panic| Err(StageError::internal(panic)));
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

/// The persona that runs a stage; `None` for the human gate.
pub(crate) fn persona_of(stage: Stage) -> Option<Persona> {
    match stage {
        Stage::Plan => Some(Persona::Planner),
        Stage::Implement | Stage::Deliver => Some(Persona::Patch),
        Stage::Verify => Some(Persona::Circuit),
        Stage::Deploy => Some(Persona::UplinkDeploy),
        Stage::Approve => None,
    }
}

fn call_limits(services: &Services, stage: Stage) -> CallLimits {
    let config = &services.config;
    let git = config.git.timeout();
    let own = match stage {
        Stage::Plan => Duration::from_secs(config.engines.timeout_secs) + git * 3,
        Stage::Implement => Duration::from_secs(config.engines.timeout_secs) + git * 6,
        Stage::Verify => Duration::from_secs(config.engines.verify_timeout_secs) + git * 3,
        // The wait in the merge queue and the candidate's verify; past it the task asks again
        // and keeps its place.
        Stage::Deliver | Stage::Approve => Duration::from_secs(config.merge_queue.wait_secs),
        Stage::Deploy => Duration::from_secs(config.compass.deploy_wait_secs),
    };
    let supervision = &config.supervision;
    CallLimits {
        timeout: own + CALL_TIMEOUT_MARGIN,
        restart_wait: Duration::from_millis(supervision.backoff_max_ms) * 2
            + Duration::from_secs(5),
        tries_max: supervision.max_restarts + 2,
    }
}

/// The task waits for a human: its pipeline ends (freeing the slot) and Compass starts a new one
/// when the task is approved.
async fn park_for_approval(
    myself: &ActorRef<PipelineMsg>,
    state: &PipelineState,
    task: &Task,
) -> Result<(), StoreError> {
    let event = NewEvent::new(
        &state.name,
        "approval.requested",
        json!({"branch": task.progress.branch}),
    );
    state
        .services
        .store
        .update_task(task.id, &[event], |t| {
            transitions::apply(t, LifecycleEvent::AwaitApproval);
        })
        .await?;
    // `StopPipeline`; also when the move was refused: the task no longer runs either way.
    myself.stop(Some("awaiting approval".into()));
    Ok(())
}

async fn on_stage_done(
    myself: &ActorRef<PipelineMsg>,
    state: &mut PipelineState,
    stage: Stage,
    attempt: u32,
    outcome: Result<StageOutcome, StageError>,
) -> Result<(), StoreError> {
    let task = load_active(state).await?;
    if task.progress.stage != Some(stage) || task.progress.attempts != attempt {
        return Ok(()); // an answer for a stage this task has moved past
    }
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => return on_stage_error(myself, state, &task, error).await,
    };
    match outcome {
        StageOutcome::Planned(plan) => {
            let summary = json!({"steps": plan.steps.len(), "risk": plan.risk});
            finish_stage(myself, state, &task, summary, move |t| {
                t.progress.plan = Some(plan.clone())
            })
            .await
        }
        StageOutcome::Implemented(done) => match done.engine_failure {
            Some(output) => {
                failed_attempt(myself, state, &task, output, codes::IMPLEMENT_FAILED, false).await
            }
            None if done.no_changes => {
                let output = "no changes: the patch engine left the branch identical to the base";
                failed_attempt(
                    myself,
                    state,
                    &task,
                    output.into(),
                    codes::NO_CHANGES,
                    false,
                )
                .await
            }
            None => {
                finish_stage(myself, state, &task, json!({"commit": done.commit}), |t| {
                    t.progress.merge.restart_from_base = false;
                    t.progress.merge.rebase_if_behind = false;
                })
                .await
            }
        },
        StageOutcome::Verified(verdict) if verdict.passed => {
            let data = json!({"passed": true, "run_id": verdict.run_id});
            finish_stage(myself, state, &task, data, move |t| {
                t.progress.merge.verified_tree = verdict.tree.clone();
                t.progress.merge.queued_at = Some(Utc::now());
            })
            .await
        }
        StageOutcome::Verified(verdict) => {
            failed_attempt(
                myself,
                state,
                &task,
                verdict.output,
                codes::VERIFY_FAILED,
                false,
            )
            .await
        }
        StageOutcome::Delivered(DeliverStep::Landed(commit)) => {
            let data = json!({"commit": commit, "delivery": task.spec.delivery, "branch": branch_name(task.id)});
            finish_stage(myself, state, &task, data, move |t| {
                t.outcome.commit = Some(commit.clone());
                t.outcome.delivered = Some(Delivered::Landed);
                transitions::apply(t, LifecycleEvent::ReleaseLanding);
            })
            .await
        }
        StageOutcome::Delivered(DeliverStep::AlreadyOnBase(base)) => {
            already_on_base(myself, state, &task, base).await
        }
        StageOutcome::Delivered(DeliverStep::Conflict(feedback)) => {
            failed_attempt(myself, state, &task, feedback, codes::MERGE_CONFLICT, true).await
        }
        StageOutcome::Delivered(DeliverStep::Rejected(output)) => {
            failed_attempt(myself, state, &task, output, codes::VERIFY_FAILED, true).await
        }
        // GitHub's checks or a reviewer: the next attempt fixes the same branch.
        StageOutcome::Delivered(DeliverStep::Feedback { code, output }) => {
            failed_attempt(myself, state, &task, output, code, false).await
        }
        StageOutcome::Delivered(DeliverStep::BranchOnly { head, error }) => {
            let data = json!({"commit": head, "delivery": task.spec.delivery, "delivered": Delivered::BranchOnly, "delivery_error": error});
            finish_stage(myself, state, &task, data, move |t| {
                t.outcome.commit = Some(head.clone());
                t.outcome.delivered = Some(Delivered::BranchOnly);
                t.outcome.delivery_error = Some(error.clone());
            })
            .await
        }
        StageOutcome::Deployed(deploy) => {
            finish_stage(myself, state, &task, json!({"deploy": deploy}), |_| {}).await
        }
    }
}

/// The base already held the task's change. A first delivery is `done` with `delivered:
/// already_on_base` and the base's commit; a `retry from: deliver` whose branch adds nothing to
/// the base fails `NO_CHANGES`, since nothing was delivered.
async fn already_on_base(
    myself: &ActorRef<PipelineMsg>,
    state: &PipelineState,
    task: &Task,
    base: String,
) -> Result<(), StoreError> {
    if task.progress.merge.retried_delivery {
        let message = format!("the branch adds nothing to the base (at {base})");
        let error = ErrorInfo::new(codes::NO_CHANGES, message);
        return end_task(myself, state, task, TaskStatus::Failed, error).await;
    }
    let data = json!({"commit": base, "delivery": task.spec.delivery, "delivered": Delivered::AlreadyOnBase});
    finish_stage(myself, state, task, data, move |t| {
        t.outcome.commit = Some(base.clone());
        t.outcome.delivered = Some(Delivered::AlreadyOnBase);
    })
    .await
}

/// Records the stage as done and moves to the next one (or finishes the task).
async fn finish_stage(
    myself: &ActorRef<PipelineMsg>,
    state: &PipelineState,
    task: &Task,
    result: serde_json::Value,
    change: impl FnOnce(&mut Task) + Send + 'static,
) -> Result<(), StoreError> {
    let stage = task.progress.stage.unwrap_or(Stage::Plan);
    let finished = NewEvent::new(
        &state.name,
        "stage.finished",
        json!({"stage": stage, "attempt": task.progress.attempts, "outcome": "ok", "result": result}),
    );
    let Some(next) = task.stage_after(stage) else {
        let done = NewEvent::new(
            &state.name,
            "task.finished",
            json!({"status": TaskStatus::Done}),
        );
        let moved = Moved::default();
        let slot = moved.clone();
        let task = state
            .services
            .store
            .update_task(task.id, &[finished, done], move |t| {
                change(t);
                slot.apply(t, LifecycleEvent::Deliver);
            })
            .await?;
        tracing::info!(task = %task.id, commit = ?task.outcome.commit, "task done");
        transitions::after_end(&state.services, &task, &moved).await;
        // A task that names `deploy: <app>` without a `deploy` stage asks Uplink-Deploy for it
        // now (a cast; never waits).
        if let Some(app) = task
            .spec
            .deploy
            .clone()
            .filter(|_| !task.spec.stages.contains(&Stage::Deploy))
        {
            crate::work::deploy_stage::deploy_after_task(
                &state.services,
                app,
                task.id,
                task.outcome.commit.clone(),
            );
        }
        myself.stop(Some("finished".into()));
        return Ok(());
    };
    let from = stage;
    let attempts = task.progress.attempts + u32::from(next == Stage::Implement);
    let started = NewEvent::new(
        &state.name,
        "stage.started",
        json!({"stage": next, "attempt": attempts}),
    );
    state
        .services
        .store
        .update_task(task.id, &[finished, started], move |t| {
            change(t);
            let (stage, attempt) = (next, attempts);
            transitions::apply(t, LifecycleEvent::EnterStage { stage, attempt });
            if needs_slot_back(from, next) {
                transitions::apply(t, LifecycleEvent::WaitForSlot);
            }
            if next == Stage::Implement {
                t.progress.branch = Some(branch_name(t.id));
            }
        })
        .await?;
    go_on(myself, &state.services, task.id, stage, next).await;
    Ok(())
}

/// An attempt fell short (implement, verify, or its candidate in the merge queue): hand the
/// output to the next attempt, or give up. `from_base`: the change no longer applies to (or
/// passes on) the base, so the next attempt starts from the base as it is then.
async fn failed_attempt(
    myself: &ActorRef<PipelineMsg>,
    state: &PipelineState,
    task: &Task,
    output: String,
    code: &str,
    from_base: bool,
) -> Result<(), StoreError> {
    let stage = task.progress.stage.unwrap_or(Stage::Verify);
    let tail = crate::platform::process::keep_tail(&output, FAILURE_TAIL_BYTES);
    let can_retry = task.progress.attempts < task.spec.max_attempts
        && task.spec.stages.contains(&Stage::Implement);
    if !can_retry {
        let message = format!(
            "attempt {} of {} failed at {stage}; last output:\n{tail}",
            task.progress.attempts, task.spec.max_attempts
        );
        // Nothing to look at in a no-op: it fails; a real attempt that fell short goes to a human.
        let status = if code == codes::NO_CHANGES {
            TaskStatus::Failed
        } else {
            TaskStatus::DeadLetter
        };
        return end_task(myself, state, task, status, ErrorInfo::new(code, message)).await;
    }
    let from = stage;
    let next_attempt = task.progress.attempts + 1;
    let events = [
        NewEvent::new(
            &state.name,
            "stage.finished",
            json!({"stage": stage, "attempt": task.progress.attempts, "outcome": "failed", "code": code}),
        ),
        NewEvent::new(
            &state.name,
            "stage.started",
            json!({"stage": Stage::Implement, "attempt": next_attempt, "feedback_bytes": output.len()}),
        ),
    ];
    let failure = ErrorInfo::new(code, tail);
    state
        .services
        .store
        .update_task(task.id, &events, move |t| {
            t.record_failure(stage, failure.clone());
            t.progress.feedback = Some(output.clone());
            let (stage, attempt) = (Stage::Implement, next_attempt);
            transitions::apply(t, LifecycleEvent::EnterStage { stage, attempt });
            if needs_slot_back(from, Stage::Implement) {
                transitions::apply(t, LifecycleEvent::WaitForSlot);
            }
            t.progress.reverifications = 0;
            t.progress.merge.restart_from_base |= from_base;
            // Only a retried round's first attempt looks whether its branch is behind.
            t.progress.merge.rebase_if_behind = false;
        })
        .await?;
    go_on(myself, &state.services, task.id, stage, Stage::Implement).await;
    Ok(())
}

/// Goes on with the task's next stage. Leaving a merge-queue wait (deliver, approve: the slot was
/// given up) for work that holds one, it asks Compass for the slot back first, and Compass
/// answers with `Advance` once one is free — going on at once would put the service over
/// `compass.max_concurrent_tasks` while every slot is taken.
async fn go_on(
    myself: &ActorRef<PipelineMsg>,
    services: &Services,
    task_id: TaskId,
    from: Stage,
    next: Stage,
) {
    use crate::runtime::compass::CompassMsg;
    if needs_slot_back(from, next) {
        let compass = services
            .directory
            .persona::<CompassMsg>(Duration::ZERO, None)
            .await;
        if compass.is_ok_and(|compass| compass.cast(CompassMsg::SlotWanted(task_id)).is_ok()) {
            return;
        }
    }
    myself.cast(PipelineMsg::Advance).ok();
}

/// Whether going from `from` to `next` leaves a merge-queue wait (deliver, approve: the slot was
/// given up) for work that holds a slot: the task then waits for one (`WaitForSlot`, recorded
/// with the stage change, so it never shows as working before it is).
fn needs_slot_back(from: Stage, next: Stage) -> bool {
    let parks = |stage| matches!(stage, Stage::Deliver | Stage::Approve);
    parks(from) && !parks(next)
}

/// A stage could not produce a result: retry infrastructure trouble with backoff, end the task
/// on a verdict, dead-letter it when the retries are spent.
async fn on_stage_error(
    myself: &ActorRef<PipelineMsg>,
    state: &PipelineState,
    task: &Task,
    error: StageError,
) -> Result<(), StoreError> {
    if matches!(error, StageError::Cancelled) {
        return Err(StoreError::TaskFinished(task.id));
    }
    // The whole chain for the operator; the task records (and clients see) code and message only.
    tracing::warn!(task = %task.id, stage = ?task.progress.stage, code = error.code(), error = %error.chain(), "stage failed");
    let mut events = Vec::new();
    if matches!(error, StageError::GitLocked(_)) {
        // A lock nobody holds any more (its writer was killed) would refuse every retry.
        let repo_dir = state.services.repo_dir(&task.spec.repo);
        for lock in crate::platform::git::stale_locks::break_stale_ref_locks(&repo_dir).await {
            events.push(NewEvent::new(
                &state.name,
                "git.stale_lock_removed",
                json!({"path": lock.path.display().to_string(), "age_secs": lock.age.as_secs()}),
            ));
        }
    }
    let retry = &state.services.config.retry;
    if !error.is_transient() {
        return end_task(myself, state, task, TaskStatus::Failed, error.to_info()).await;
    }
    if task.progress.stage_retries >= retry.max {
        let mut info = error.to_info();
        info.message = format!(
            "{} (after {} retries)",
            info.message, task.progress.stage_retries
        );
        return end_task(myself, state, task, TaskStatus::DeadLetter, info).await;
    }
    let stage = task.progress.stage.unwrap_or(Stage::Plan);
    let retry_number = task.progress.stage_retries + 1;
    let delay = retry.delay(retry_number);
    let info = error.to_info();
    let failure_info = info.clone();
    events.push(NewEvent::new(
        &state.name,
        "stage.retry_scheduled",
        json!({"stage": stage, "attempt": task.progress.attempts, "retry": retry_number, "delay_ms": delay.as_millis(), "error": info}),
    ));
    state
        .services
        .store
        .update_task(task.id, &events, move |t| {
            transitions::apply(t, LifecycleEvent::RetryStage);
            t.record_failure(stage, failure_info);
        })
        .await?;
    tracing::warn!(task = %task.id, %stage, code = %info.code, ?delay, "transient failure; retrying the stage");
    myself.send_after(delay, || PipelineMsg::Advance);
    Ok(())
}

/// Ends the task as `failed` or `dead_letter` (with an escalation event) and stops the pipeline.
async fn end_task(
    myself: &ActorRef<PipelineMsg>,
    state: &PipelineState,
    task: &Task,
    status: TaskStatus,
    error: ErrorInfo,
) -> Result<(), StoreError> {
    let stage = task.progress.stage.unwrap_or(Stage::Plan);
    let mut events = vec![NewEvent::new(
        &state.name,
        "stage.finished",
        json!({"stage": stage, "attempt": task.progress.attempts, "outcome": "failed", "code": error.code}),
    )];
    if status == TaskStatus::DeadLetter {
        events.push(NewEvent::new(
            &state.name,
            "task.escalated",
            json!({"to": "human", "reason": "retries exhausted", "code": error.code, "failures": task.progress.failures.len() + 1}),
        ));
    }
    events.push(NewEvent::new(
        &state.name,
        "task.finished",
        json!({"status": status, "error": error}),
    ));
    tracing::warn!(task = %task.id, code = %error.code, ?status, "task ended without delivery");
    let moved = Moved::default();
    let slot = moved.clone();
    let ended = state
        .services
        .store
        .update_task(task.id, &events, move |t| {
            t.record_failure(stage, error.clone());
            slot.apply(t, transitions::ending(status, error));
        })
        .await?;
    transitions::after_end(&state.services, &ended, &moved).await;
    myself.stop(Some("finished".into()));
    Ok(())
}

async fn note_restart(
    state: &PipelineState,
    persona: Persona,
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
