//! Task transitions Compass makes outside a pipeline: dependencies resolving, the approval gate,
//! cancel, retry, and giving up on a pipeline. Each is one flushed store update with its events,
//! and answers the [`MovedTask`]: the record and the lifecycle's effects, which Compass executes
//! (it owns the queue and calls these from its mailbox, so they never race each other). Nothing
//! here decides from a status what happens next: the lifecycle table says it.

use std::sync::{Arc, OnceLock};

use chrono::Utc;
use serde_json::json;

use crate::model::codes;
use crate::model::errors::TaskActionError;
use crate::model::lifecycle::{self, Effect, LifecycleEvent, LifecycleRefusal, Transition};
use crate::model::persona::Persona;
use crate::model::task::branch_name;
use crate::model::task::{ErrorInfo, RetryFrom, Stage, Task, TaskId, TaskStatus};
use crate::platform::git::Git;
use crate::runtime::Services;
use crate::storage::store::{NewEvent, StoreError};

/// A move made on a task: the record as the move left it, and what the lifecycle asked for
/// (executed by the caller once the change is durable: Compass for its actions).
#[derive(Debug, Clone)]
pub(crate) struct MovedTask {
    /// The record after the move.
    pub(crate) task: Task,
    /// The transition's effects (none when the store refused to change the record).
    pub(crate) effects: Vec<Effect>,
}

impl MovedTask {
    fn new(task: Task, moved: &Moved) -> Self {
        Self {
            task,
            effects: moved.effects(),
        }
    }
}

/// The task, if the lifecycle allows `event` in its status now (what the client is answered;
/// the store update applies it again, against the record as it is then).
async fn load(
    services: &Services,
    id: TaskId,
    event: &LifecycleEvent,
) -> Result<Task, TaskActionError> {
    let task = services
        .store
        .task(id)
        .await?
        .ok_or(TaskActionError::NotFound(id))?;
    lifecycle::step(task.progress.status, event).map_err(|refusal| refused(id, refusal))?;
    Ok(task)
}

/// The client's answer for a move the lifecycle refused, by its code.
fn refused(id: TaskId, refusal: LifecycleRefusal) -> TaskActionError {
    if refusal.code == codes::TASK_FINISHED {
        return TaskActionError::Finished(id);
    }
    TaskActionError::WrongStatus {
        id,
        status: refusal.status,
        expected: refusal.expected,
    }
}

/// Applies `event` inside a store update. The caller checked the move against the record it
/// read, and the store refuses to change an ended task, so a refusal here is a status changed
/// underneath by a path the table does not foresee: logged, and the record left as it is.
pub(crate) fn apply(task: &mut Task, event: LifecycleEvent) -> Option<Transition> {
    match task.apply(event, Utc::now()) {
        Ok(transition) => Some(transition),
        Err(refusal) => {
            tracing::error!(task = %task.id, %refusal, "lifecycle refused a move; record unchanged");
            None
        }
    }
}

/// Looks at a blocked task's dependencies and moves it on when they allow: queued when all are
/// done (`Unblock`), failed when one ended otherwise (`DependencyFailed`); `None` while it waits.
pub(crate) async fn evaluate_blocked(
    services: &Services,
    task: &Task,
) -> Result<Option<MovedTask>, StoreError> {
    if task.progress.status != TaskStatus::Blocked {
        return Ok(None);
    }
    let mut unfinished = Vec::new();
    for dep in &task.spec.deps {
        let status = services.store.task(*dep).await?.map(|d| d.progress.status);
        match status {
            Some(TaskStatus::Done) => {}
            Some(ended @ (TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::DeadLetter)) => {
                let reason = format!("dependency {dep} ended {}", status_name(ended));
                return fail_for_dependency(services, task.id, *dep, reason)
                    .await
                    .map(Some);
            }
            None => {
                let reason = format!("dependency {dep} no longer exists");
                return fail_for_dependency(services, task.id, *dep, reason)
                    .await
                    .map(Some);
            }
            Some(_) => unfinished.push(*dep),
        }
    }
    if unfinished.is_empty() {
        let event = NewEvent::new(
            Persona::Compass,
            "task.unblocked",
            json!({"deps": task.spec.deps}),
        );
        let moved = Moved::default();
        let slot = moved.clone();
        let unblocked = services
            .store
            .update_task(task.id, &[event], move |t| {
                slot.apply(t, LifecycleEvent::Unblock);
            })
            .await?;
        return Ok(Some(MovedTask::new(unblocked, &moved)));
    }
    if unfinished != task.progress.blocked_by {
        services
            .store
            .update_task(task.id, &[], move |t| {
                t.progress.blocked_by = unfinished.clone()
            })
            .await?;
    }
    Ok(None)
}

fn status_name(status: TaskStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn fail_for_dependency(
    services: &Services,
    id: TaskId,
    dep: TaskId,
    reason: String,
) -> Result<MovedTask, StoreError> {
    let error = ErrorInfo::new(codes::DEPENDENCY_FAILED, reason);
    let event = NewEvent::new(
        Persona::Compass,
        "task.finished",
        json!({"status": TaskStatus::Failed, "error": error, "dependency": dep}),
    );
    let moved = Moved::default();
    let slot = moved.clone();
    let failed = services
        .store
        .update_task(id, &[event], move |t| {
            slot.apply(t, LifecycleEvent::DependencyFailed(error));
        })
        .await?;
    Ok(MovedTask::new(failed, &moved))
}

/// Passes the approval gate: the task is queued at the stage after `approve` (or done, if the
/// gate was its last stage).
pub(crate) async fn approve(
    services: &Services,
    id: TaskId,
    comment: Option<String>,
    by: Option<&str>,
) -> Result<MovedTask, TaskActionError> {
    let task = load(services, id, &LifecycleEvent::Approve { next: None }).await?;
    let next = task.stage_after(Stage::Approve);
    let mut events = vec![NewEvent::new(
        Persona::Compass,
        "task.approved",
        json!({"comment": comment, "principal": by}),
    )];
    if next.is_none() {
        events.push(NewEvent::new(
            Persona::Compass,
            "task.finished",
            json!({"status": TaskStatus::Done}),
        ));
    }
    let moved = Moved::default();
    let slot = moved.clone();
    let updated = services
        .store
        .update_task(id, &events, move |t| {
            slot.apply(t, LifecycleEvent::Approve { next });
        })
        .await?;
    Ok(MovedTask::new(updated, &moved))
}

/// Refuses the work at the gate: the task ends `cancelled`; its branch stays, its worktree goes.
pub(crate) async fn reject(
    services: &Services,
    id: TaskId,
    comment: Option<String>,
    by: Option<&str>,
) -> Result<MovedTask, TaskActionError> {
    load(services, id, &LifecycleEvent::Reject).await?;
    let events = [
        NewEvent::new(
            Persona::Compass,
            "task.rejected",
            json!({"comment": comment, "principal": by}),
        ),
        NewEvent::new(
            Persona::Compass,
            "task.finished",
            json!({"status": TaskStatus::Cancelled}),
        ),
    ];
    let moved = Moved::default();
    let slot = moved.clone();
    let updated = services
        .store
        .update_task(id, &events, move |t| {
            slot.apply(t, LifecycleEvent::Reject);
        })
        .await?;
    Ok(MovedTask::new(updated, &moved))
}

/// Ends a task that has not finished as `cancelled`.
pub(crate) async fn cancel(
    services: &Services,
    id: TaskId,
    by: Option<&str>,
) -> Result<MovedTask, TaskActionError> {
    let event = NewEvent::new(
        Persona::Compass,
        "task.finished",
        json!({"status": TaskStatus::Cancelled, "principal": by}),
    );
    let moved = Moved::default();
    let slot = moved.clone();
    let cancel = move |t: &mut Task| {
        t.apply(LifecycleEvent::Cancel, Utc::now())
            .map(|transition| slot.keep(transition))
    };
    match services.store.try_update_task(id, &[event], cancel).await {
        Ok(Ok(cancelled)) => Ok(MovedTask::new(cancelled, &moved)),
        // The only refusal of a cancel on an unfinished task: its landing is claimed.
        Ok(Err(_landing)) => Err(TaskActionError::Landing(id)),
        Err(StoreError::TaskFinished(id)) => Err(TaskActionError::Finished(id)),
        Err(other) => Err(other.into()),
    }
}

/// Re-queues a failed or dead-lettered task. Without `from`: attempt-loop failures start a
/// fresh round of attempts at implement (the last failure's output stays as feedback); other
/// failures rerun the stage they happened in; a task failed by its dependencies waits for them
/// again. `from: implement` starts a fresh round of attempts; `from: deliver` puts the branch as
/// it is now (a human's commits included) in the merge queue, where it is verified on the
/// current base before it may land — with the attempts it has left, none added.
pub(crate) async fn retry(
    services: &Services,
    id: TaskId,
    reservation: Option<String>,
    from: Option<RetryFrom>,
    by: Option<&str>,
) -> Result<MovedTask, TaskActionError> {
    let task = load(services, id, &LifecycleEvent::Retry { blocked: false }).await?;
    let restart_attempts = match from {
        Some(RetryFrom::Implement) => true,
        Some(RetryFrom::Deliver) => false,
        None => {
            matches!(task.progress.stage, Some(Stage::Implement | Stage::Verify))
                || needs_a_new_change(&task)
        }
    };
    let to_delivery = from == Some(RetryFrom::Deliver);
    // A change that no longer applied (or failed on the base) is made again on the base as it is
    // now; any other fresh round does so when its branch is behind the base (Patch looks: no git
    // runs in Compass's mailbox).
    let from_base = restart_attempts && needs_a_new_change(&task);
    let blocked = task.progress.stage.is_none() && !task.spec.deps.is_empty() && from.is_none();
    let event = NewEvent::new(
        Persona::Compass,
        "task.retried",
        json!({"previous_error": task.outcome.error, "principal": by, "from": from}),
    );
    let moved = Moved::default();
    let slot = moved.clone();
    let updated = services
        .store
        .reopen_task(id, &[event], move |t| {
            slot.apply(t, LifecycleEvent::Retry { blocked });
            if let Some(reservation) = &reservation {
                t.billing.reservation = Some(reservation.clone());
                t.billing.budget_rounds += 1;
                t.billing.settled = false;
            }
            if restart_attempts {
                t.progress.stage = Some(Stage::Implement);
                t.progress.attempts = 0;
                t.progress.merge.restart_from_base = from_base;
                t.progress.merge.rebase_if_behind = true;
            }
            if to_delivery {
                t.progress.stage = Some(Stage::Deliver);
                t.progress.attempts = t.progress.attempts.max(1);
                t.progress.branch = Some(branch_name(t.id));
                t.progress.merge.queued_at = Some(Utc::now());
                t.progress.merge.retried_delivery = true;
            }
        })
        .await?;
    Ok(MovedTask::new(updated, &moved))
}

/// Whether the task failed at deliver because its change conflicts with, or fails verify on, the
/// current base: retrying delivery would only fail again, so a plain retry re-implements.
fn needs_a_new_change(task: &Task) -> bool {
    task.progress.stage == Some(Stage::Deliver)
        && task.outcome.error.as_ref().is_some_and(|error| {
            error.code == codes::MERGE_CONFLICT || error.code == codes::VERIFY_FAILED
        })
}

/// A pipeline crashed past its restart limit: its task is dead-lettered for a human (`None`:
/// it had ended meanwhile).
pub(crate) async fn give_up_pipeline(
    services: &Services,
    id: TaskId,
    reason: &str,
) -> Result<Option<MovedTask>, StoreError> {
    let error = ErrorInfo::new(
        codes::PIPELINE_FAILED,
        format!("the task's pipeline crashed past its restart limit; last: {reason}"),
    );
    let events = [
        NewEvent::new(
            Persona::Compass,
            "task.escalated",
            json!({"to": "human", "code": error.code}),
        ),
        NewEvent::new(
            Persona::Compass,
            "task.finished",
            json!({"status": TaskStatus::DeadLetter, "error": error}),
        ),
    ];
    let moved = Moved::default();
    let slot = moved.clone();
    let result = services
        .store
        .update_task(id, &events, move |t| {
            let stage = t.progress.stage.unwrap_or(Stage::Plan);
            t.record_failure(stage, error.clone());
            slot.apply(t, LifecycleEvent::DeadLetter(error));
        })
        .await;
    match result {
        Ok(ended) => Ok(Some(MovedTask::new(ended, &moved))),
        Err(StoreError::TaskFinished(_)) => Ok(None),
        Err(other) => Err(other),
    }
}

/// Removes a task's worktree (its branch stays; an ended task's prompt folder goes too, see
/// `cleanup::ended_later`) off the caller's mailbox, in a background task
/// bounded by git's timeout. Without room the worktree stays (logged); only disk is lost.
pub(crate) fn remove_worktree_later(services: &Services, task: &Task) {
    if task.progress.status.is_terminal() {
        // Ended (cancelled, rejected): its prompt folder goes too, as any end's clean-up.
        crate::work::cleanup::ended_later(services, task);
        return;
    }
    let path = services.worktree_path(task.id);
    let repo = Git::new(
        services.repo_dir(&task.spec.repo),
        services.config.git.timeout(),
    );
    let task_id = task.id;
    services.background.spawn("worktree.remove", async move {
        if tokio::fs::try_exists(&path).await.unwrap_or(true) {
            if let Err(error) = repo.remove_worktree(&path).await {
                tracing::warn!(task = %task_id, branch = %branch_name(task_id), %error, "could not remove a worktree");
            }
        }
    });
}

/// Where a store update's closure leaves the move the lifecycle made, so that the caller
/// executes its effects once the change is durable (a closure may not do IO).
#[derive(Debug, Clone, Default)]
pub(crate) struct Moved(Arc<OnceLock<Transition>>);

impl Moved {
    /// Applies `event` to `task` (see [`apply`]) and keeps the transition.
    pub(crate) fn apply(&self, task: &mut Task, event: LifecycleEvent) {
        if let Some(transition) = apply(task, event) {
            // A closure the writer runs again makes the same move: the first is kept.
            let _ = self.0.set(transition);
        }
    }

    /// Keeps a transition made by hand (a refusable move, see [`cancel`]).
    fn keep(&self, transition: Transition) {
        let _ = self.0.set(transition);
    }

    /// The effects the move asked for (none, when nothing moved).
    pub(crate) fn effects(&self) -> Vec<Effect> {
        self.0
            .get()
            .map(|transition| transition.effects.clone())
            .unwrap_or_default()
    }

    /// Whether the move asked for `effect` (never, when nothing moved).
    pub(crate) fn asks(&self, effect: Effect) -> bool {
        self.0
            .get()
            .is_some_and(|transition| transition.effects.contains(&effect))
    }
}

/// Executes the work layer's effects of an end the pipeline made, for `task` as the move left
/// it: its clean-up and the dead-letter notification. Compass executes the same two (with
/// [`clean_up`] and [`escalate`]) for the moves it makes.
pub(crate) async fn after_end(services: &Services, task: &Task, moved: &Moved) {
    if moved.asks(Effect::CleanUpWorktree) {
        clean_up(services, task);
    }
    if moved.asks(Effect::EscalateToHuman) {
        escalate(services, task).await;
    }
}

/// `CleanUpWorktree` for an ended task no pipeline runs for: landed or ended clean-up, off the
/// caller's mailbox.
pub(crate) fn clean_up(services: &Services, task: &Task) {
    if task.progress.status == TaskStatus::Done {
        crate::work::cleanup::landed_later(services, task);
    } else {
        crate::work::cleanup::ended_later(services, task);
    }
}

/// `EscalateToHuman`: the dead-letter notification, with the task's error.
pub(crate) async fn escalate(services: &Services, task: &Task) {
    if let Some(error) = &task.outcome.error {
        crate::runtime::notifier::dead_lettered(&services.store, task.id, error).await;
    }
}

/// The event that ends a task in `status` (failed or dead-lettered) with `error`.
pub(crate) fn ending(status: TaskStatus, error: ErrorInfo) -> LifecycleEvent {
    if status == TaskStatus::DeadLetter {
        LifecycleEvent::DeadLetter(error)
    } else {
        LifecycleEvent::Fail(error)
    }
}

/// Why a task is poisoned: what its work took down, and how often.
#[derive(Debug, Clone)]
pub(crate) enum Poison {
    /// Its own runs were in flight across `stops` consecutive unclean stops of the service.
    UncleanStops {
        /// How many.
        stops: u32,
        /// `compass.poison_after`.
        limit: u32,
        /// The ids of the runs in flight at those stops (the evidence).
        runs: Vec<String>,
    },
    /// Its requests crashed `persona` `crashes` times, past its restart limit.
    PersonaCrashes {
        /// The persona.
        persona: Persona,
        /// How many of its crashes the task's requests caused.
        crashes: u32,
    },
}

/// Ends a task whose work keeps taking the service or a persona down, instead of running it
/// again: `dead_letter` after unclean stops (it was never resumed), `failed` after persona
/// crashes; code `POISONED`, with a `task.poisoned` event saying why. A task that ended
/// meanwhile is left alone (`None`); Compass executes the end's effects.
pub(crate) async fn poison(
    services: &Services,
    id: TaskId,
    why: Poison,
) -> Result<Option<MovedTask>, StoreError> {
    let (status, message, data) = match &why {
        Poison::UncleanStops { stops, limit, runs } => (
            TaskStatus::DeadLetter,
            format!(
                "its runs were in flight across {stops} consecutive unclean stops of the service \
                 (compass.poison_after = {limit}; runs {}); not resumed",
                runs.join(", ")
            ),
            json!({"reason": "unclean_stops", "stops": stops, "poison_after": limit, "runs": runs}),
        ),
        Poison::PersonaCrashes { persona, crashes } => (
            TaskStatus::Failed,
            format!("its requests crashed {persona} {crashes} times, past its restart limit"),
            json!({"reason": "persona_crashes", "actor": persona, "crashes": crashes}),
        ),
    };
    let error = ErrorInfo::new(codes::POISONED, message);
    let mut events = vec![NewEvent::new(Persona::Compass, "task.poisoned", data)];
    if status == TaskStatus::DeadLetter {
        events.push(NewEvent::new(
            Persona::Compass,
            "task.escalated",
            json!({"to": "human", "reason": "poisoned", "code": error.code}),
        ));
    }
    events.push(NewEvent::new(
        Persona::Compass,
        "task.finished",
        json!({"status": status, "error": error}),
    ));
    tracing::error!(task = %id, ?why, "poison task: ended instead of run again");
    let moved = Moved::default();
    let slot = moved.clone();
    let result = services
        .store
        .update_task(id, &events, move |t| {
            let stage = t.progress.stage.unwrap_or(Stage::Plan);
            t.record_failure(stage, error.clone());
            slot.apply(t, ending(status, error));
        })
        .await;
    match result {
        Ok(task) => Ok(Some(MovedTask::new(task, &moved))),
        Err(StoreError::TaskFinished(_)) => Ok(None),
        Err(other) => Err(other),
    }
}
