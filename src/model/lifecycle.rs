//! A task's lifecycle: every status a task can be in, every event that moves it, and what each
//! move asks the caller to do — in one pure table.
//!
//! [`step`] answers `(status, event) → Transition { to, stage, attempt, effects }` or a
//! [`LifecycleRefusal`] carrying the code the HTTP edge answers. It does no IO, reads no clock
//! (callers pass `now` to [`Task::apply`]) and touches no store: Compass's actions
//! (`work::transitions`), the pipeline and the merge queue call [`Task::apply`] inside their store
//! update instead of writing `status` themselves, and execute the [`Effect`]s it returns.
//!
//! Each event has its own small function with an exhaustive `match` over [`TaskStatus`], with no
//! wildcard arm: a new status does not compile until every event says what it does there. New
//! states other issues bring (waiting in line for the merge queue, a red base holding a task,
//! pull-request states) are added here first, as rows of the table and of its test, before any
//! code elsewhere uses them.
//!
//! The merge queue's sub-states of a running task are rows too: in line without a slot
//! (`JoinQueue`/`LeaveQueue`: effects `FreeSlot`/`TakeSlot`), held for a red base
//! (`HoldForRedBase`/`ReleaseHold`: `merge.held`), landing (`ClaimLanding`/`ReleaseLanding`:
//! `merge.landing`, during which a cancel is refused `TASK_LANDING`). A job waiting at the job
//! gate (`WaitForFleet`/`StopWaiting`: `waiting_for`, the fleet paused or no factory for its
//! capabilities) is one too: the task stays running. So is a pull request's progress
//! (`TrackPullRequest`: `pull_request`); the PR's own states (pushed, open, checks, review,
//! merging) are the pure machine in `work::pull_request::machine`, recorded through this row.
//!
//! Refusal codes: the client's gate actions (approve, reject, retry) answer
//! `INVALID_TASK_STATUS` in any status they do not apply to, as they always have; any other event
//! on an ended task answers `TASK_FINISHED` (terminal records never change), and on an unfinished
//! task in the wrong status `INVALID_TASK_STATUS`.

use chrono::{DateTime, Utc};

use crate::model::codes;
use crate::model::pull_request::PullRequestRecord;
use crate::model::task::{ErrorInfo, Stage, Task, TaskStatus};

/// Something that happens to a task and may change its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// Every dependency of a blocked task is done.
    Unblock,
    /// A dependency of a blocked task ended without being done (`DEPENDENCY_FAILED`).
    DependencyFailed(ErrorInfo),
    /// A pipeline picks up a queued task at `stage` (its first, or where it stopped).
    Start {
        /// The stage it runs first.
        stage: Stage,
        /// The implement attempt that stage belongs to.
        attempt: u32,
    },
    /// The service restarted while the task ran: its pipeline continues at its stage.
    Resume,
    /// A running task moves to `stage` (the next one, or back to implement after a failed verify).
    EnterStage {
        /// The stage it enters.
        stage: Stage,
        /// The implement attempt that stage belongs to.
        attempt: u32,
    },
    /// A transient failure: the same stage runs again later (`stage_retries` counts it).
    RetryStage,
    /// The task reached its `approve` stage: it parks for a human.
    AwaitApproval,
    /// A human passed the gate: queued at `next`, or done when the gate was the last stage.
    Approve {
        /// The stage after `approve`, if any.
        next: Option<Stage>,
    },
    /// A human refused the work at the gate: the task ends `cancelled`.
    Reject,
    /// A client retries an ended task: it waits for its dependencies again when `blocked`.
    Retry {
        /// Whether it goes back to `blocked` (failed by its dependencies, retried as a whole).
        blocked: bool,
    },
    /// A client cancels an unfinished task.
    Cancel,
    /// The task's last stage is done (delivered, deployed, or its plan made).
    Deliver,
    /// The service ends the task with an error (attempts used up, a permanent failure, poison).
    Fail(ErrorInfo),
    /// The service gives up on the task and keeps it for a human.
    DeadLetter(ErrorInfo),
    /// The task enters its merge queue's line: it waits there without a pipeline slot.
    JoinQueue,
    /// The task's wait in its merge queue ended (landed, sent back, or asked again).
    LeaveQueue,
    /// Its base is red (the base alone fails verify): the queue holds it, no attempt spent;
    /// the reason is shown on the task (`merge.held`).
    HoldForRedBase(String),
    /// The hold ended (the base moved, or the wait ran out).
    ReleaseHold,
    /// The merge queue is about to move the base to this candidate commit: from now on a cancel
    /// is refused `TASK_LANDING` (a cancel answered 2xx must never see its task land).
    ClaimLanding(String),
    /// The base did not move to the candidate: cancels work again.
    ReleaseLanding,
    /// A job of the task waits before it starts (the fleet is paused, or no live factory offers
    /// what it needs): the reason is shown on the task (`waiting_for`); it stays running.
    WaitForFleet(String),
    /// The task left its merge queue (deliver, approve) with work to do and waits for a free
    /// slot (`compass.max_concurrent_tasks`): [`SLOT_WAIT_REASON`] is shown in `waiting_for`, so
    /// a task at `implement` that is not working yet says so; it stays running.
    WaitForSlot,
    /// The job stopped waiting (it started, or its wait ended).
    StopWaiting,
    /// The task's pull request moved on (pushed, opened, checks, review, merging, merged): the
    /// record on the task (`pull_request`) is replaced; it stays running (`delivery:
    /// pull_request`, see `work::pull_request::machine` for the PR's own states).
    TrackPullRequest(Box<PullRequestRecord>),
}

impl LifecycleEvent {
    /// The event's name, for refusals and the table test.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Unblock => "unblock",
            Self::DependencyFailed(_) => "dependency_failed",
            Self::Start { .. } => "start",
            Self::Resume => "resume",
            Self::EnterStage { .. } => "enter_stage",
            Self::RetryStage => "retry_stage",
            Self::AwaitApproval => "await_approval",
            Self::Approve { .. } => "approve",
            Self::Reject => "reject",
            Self::Retry { .. } => "retry",
            Self::Cancel => "cancel",
            Self::Deliver => "deliver",
            Self::Fail(_) => "fail",
            Self::DeadLetter(_) => "dead_letter",
            Self::JoinQueue => "join_queue",
            Self::LeaveQueue => "leave_queue",
            Self::HoldForRedBase(_) => "hold_for_red_base",
            Self::ReleaseHold => "release_hold",
            Self::ClaimLanding(_) => "claim_landing",
            Self::ReleaseLanding => "release_landing",
            Self::WaitForFleet(_) => "wait_for_fleet",
            Self::WaitForSlot => "wait_for_slot",
            Self::StopWaiting => "stop_waiting",
            Self::TrackPullRequest(_) => "track_pull_request",
        }
    }

    /// The statuses the event applies to, in words (what a refusal says was needed).
    fn expects(&self) -> &'static str {
        match self {
            Self::Unblock | Self::DependencyFailed(_) => "blocked",
            Self::Start { .. } => "queued",
            Self::Resume | Self::EnterStage { .. } | Self::RetryStage => "running",
            Self::JoinQueue | Self::LeaveQueue | Self::HoldForRedBase(_) | Self::ReleaseHold => {
                "running"
            }
            Self::ClaimLanding(_) | Self::ReleaseLanding => "running",
            Self::WaitForFleet(_) | Self::WaitForSlot | Self::StopWaiting => "running",
            Self::TrackPullRequest(_) => "running",
            Self::AwaitApproval | Self::Deliver => "running",
            Self::Approve { .. } | Self::Reject => "awaiting_approval",
            Self::Retry { .. } => "failed or dead_letter",
            Self::Cancel | Self::Fail(_) | Self::DeadLetter(_) => "unfinished",
        }
    }

    /// The client's actions at the gate and after an end, which have always answered
    /// `INVALID_TASK_STATUS` when the task is in any other status (ended or not).
    fn is_gate_action(&self) -> bool {
        matches!(
            self,
            Self::Approve { .. } | Self::Reject | Self::Retry { .. }
        )
    }
}

/// What a transition asks its caller to do once the change is durable: data, executed by the
/// caller (Compass, the pipeline), never here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Compass puts the task in its queue for a pipeline slot.
    Enqueue,
    /// Compass keeps the task among the blocked ones and looks at its dependencies.
    WatchDependencies,
    /// The pipeline casts itself `Advance`: the stage runs.
    Advance,
    /// The pipeline actor stops: the task no longer needs it (parked or ended).
    StopPipeline,
    /// The running stage's process is killed (Compass tells the personas to drop the task's jobs).
    KillRunningStage,
    /// The task's worktree (and, once ended, its prompt folder) is removed off the mailbox.
    CleanUpWorktree,
    /// The task's budget reservation is settled in the ledger.
    SettleBudget,
    /// Compass looks at the blocked tasks that wait on this one.
    NotifyDependents,
    /// A human is told (the dead-letter notification).
    EscalateToHuman,
    /// Compass stops counting the task's pipeline against `compass.max_concurrent_tasks`.
    FreeSlot,
    /// Compass counts it again once a slot is free: a task leaving the line with work to do asks
    /// for it (`SlotWanted`) and goes on only when Compass answers, so the limit holds.
    TakeSlot,
    /// Compass takes the task out of the line it waited in (its queue, its list of tasks
    /// resuming after a restart, or its blocked set) and forgets the crashes it was blamed for.
    Dequeue,
    /// Compass gives the task a pipeline slot before any queued task: it held one when the
    /// service stopped (see [`on_load`]).
    ResumeFirst,
}

/// `waiting_for` of a task back from its merge queue until Compass gives it a slot
/// ([`LifecycleEvent::WaitForSlot`]).
pub(crate) const SLOT_WAIT_REASON: &str = "a free slot (compass.max_concurrent_tasks)";

/// Effects of every end: it leaves Compass's lines, its resources go, its budget settles, its
/// dependents move. (Compass executes them when a pipeline's exit shows it ended a task.)
pub(crate) const ENDED: [Effect; 4] = [
    Effect::Dequeue,
    Effect::CleanUpWorktree,
    Effect::SettleBudget,
    Effect::NotifyDependents,
];

/// An allowed move: the status after it, the stage and attempt it sets, what the caller does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The status before.
    pub from: TaskStatus,
    /// The status after.
    pub to: TaskStatus,
    /// The stage the task is at after it (`None`: unchanged).
    pub stage: Option<Stage>,
    /// The implement attempt after it (`None`: unchanged).
    pub attempt: Option<u32>,
    /// What the caller executes once the change is durable.
    pub effects: Vec<Effect>,
}

/// A refused move, with the stable code the HTTP edge answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {status:?} task cannot take `{event}`; it needs a task that is {expected}")]
pub struct LifecycleRefusal {
    /// The task's status.
    pub status: TaskStatus,
    /// The refused event's name.
    pub event: &'static str,
    /// What the event needs, in words.
    pub expected: &'static str,
    /// `TASK_FINISHED` or `INVALID_TASK_STATUS` (see the module doc).
    pub code: &'static str,
}

/// The status a task is accepted in: `blocked` while it has unfinished dependencies, else
/// `queued` (the table's first row: there is no status before it).
pub(crate) fn submitted(blocked: bool) -> TaskStatus {
    if blocked {
        TaskStatus::Blocked
    } else {
        TaskStatus::Queued
    }
}

/// What Compass does with an unfinished task it takes up without moving it: each one it reloads
/// at start-up, and a task just submitted (in the status [`submitted`] gave it). A task that was
/// running when the service stopped gets a slot first and its pipeline applies `Resume`; a
/// queued one waits in the queue, a blocked one for its dependencies; one awaiting approval
/// waits for a human, and an ended one is not taken up.
pub(crate) fn on_load(status: TaskStatus) -> &'static [Effect] {
    use TaskStatus as S;
    match status {
        S::Running => &[Effect::ResumeFirst],
        S::Queued => &[Effect::Enqueue],
        S::Blocked => &[Effect::WatchDependencies],
        S::AwaitingApproval => &[],
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => &[],
    }
}

/// The one place a task's status moves: what `event` does to a task in `status`.
pub(crate) fn step(
    status: TaskStatus,
    event: &LifecycleEvent,
) -> Result<Transition, LifecycleRefusal> {
    use LifecycleEvent as E;
    match event {
        E::Unblock => unblock(status, event),
        E::DependencyFailed(_) => dependency_failed(status, event),
        E::Start { stage, attempt } => start(status, event, *stage, *attempt),
        E::Resume => resume(status, event),
        E::EnterStage { stage, attempt } => enter_stage(status, event, *stage, *attempt),
        E::RetryStage => resume(status, event),
        E::AwaitApproval => await_approval(status, event),
        E::Approve { next } => approve(status, event, *next),
        E::Reject => reject(status, event),
        E::Retry { blocked } => retry(status, event, *blocked),
        E::Cancel => cancel(status, event),
        E::Deliver => deliver(status, event),
        E::Fail(_) => end_with_error(status, event, TaskStatus::Failed, &[]),
        E::DeadLetter(_) => end_with_error(
            status,
            event,
            TaskStatus::DeadLetter,
            &[Effect::EscalateToHuman],
        ),
        E::JoinQueue => while_running(status, event, &[Effect::FreeSlot]),
        E::LeaveQueue => while_running(status, event, &[Effect::TakeSlot]),
        E::HoldForRedBase(_) | E::ReleaseHold => while_running(status, event, &[]),
        E::ClaimLanding(_) | E::ReleaseLanding => while_running(status, event, &[]),
        E::WaitForFleet(_) | E::WaitForSlot | E::StopWaiting => while_running(status, event, &[]),
        E::TrackPullRequest(_) => while_running(status, event, &[]),
    }
}

/// The merge queue's sub-states of a running task (in line, held, landing): running stays
/// running, with `effects`; nothing else takes them.
fn while_running(
    status: TaskStatus,
    event: &LifecycleEvent,
    effects: &[Effect],
) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::Running => to(status, S::Running, effects),
        S::Queued | S::Blocked | S::AwaitingApproval => refuse(status, event),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

/// An allowed move to `to` with `effects`, the stage and attempt unchanged.
fn to(
    from: TaskStatus,
    to: TaskStatus,
    effects: &[Effect],
) -> Result<Transition, LifecycleRefusal> {
    Ok(Transition {
        from,
        to,
        stage: None,
        attempt: None,
        effects: effects.to_vec(),
    })
}

/// An end: `to` with the effects of every end, after `first`.
fn end(from: TaskStatus, to: TaskStatus, first: &[Effect]) -> Result<Transition, LifecycleRefusal> {
    let effects: Vec<Effect> = first.iter().chain(&ENDED).copied().collect();
    self::to(from, to, &effects)
}

/// `event` does not apply to a task in `status`.
fn refuse(status: TaskStatus, event: &LifecycleEvent) -> Result<Transition, LifecycleRefusal> {
    let code = if status.is_terminal() && !event.is_gate_action() {
        codes::TASK_FINISHED
    } else {
        codes::INVALID_TASK_STATUS
    };
    Err(LifecycleRefusal {
        status,
        event: event.name(),
        expected: event.expects(),
        code,
    })
}

fn unblock(status: TaskStatus, event: &LifecycleEvent) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::Blocked => to(status, S::Queued, &[Effect::Dequeue, Effect::Enqueue]),
        S::Queued | S::Running | S::AwaitingApproval => refuse(status, event),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

fn dependency_failed(
    status: TaskStatus,
    event: &LifecycleEvent,
) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::Blocked => end(status, S::Failed, &[]),
        S::Queued | S::Running | S::AwaitingApproval => refuse(status, event),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

fn start(
    status: TaskStatus,
    event: &LifecycleEvent,
    stage: Stage,
    attempt: u32,
) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::Queued => at_stage(to(status, S::Running, &[Effect::Advance]), stage, attempt),
        S::Blocked | S::Running | S::AwaitingApproval => refuse(status, event),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

/// Resume and a stage's retry: a running task runs on where it is.
fn resume(status: TaskStatus, event: &LifecycleEvent) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::Running => to(status, S::Running, &[Effect::Advance]),
        S::Queued | S::Blocked | S::AwaitingApproval => refuse(status, event),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

fn enter_stage(
    status: TaskStatus,
    event: &LifecycleEvent,
    stage: Stage,
    attempt: u32,
) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::Running => at_stage(to(status, S::Running, &[Effect::Advance]), stage, attempt),
        S::Queued | S::Blocked | S::AwaitingApproval => refuse(status, event),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

fn await_approval(
    status: TaskStatus,
    event: &LifecycleEvent,
) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::Running => to(status, S::AwaitingApproval, &[Effect::StopPipeline]),
        S::Queued | S::Blocked | S::AwaitingApproval => refuse(status, event),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

fn approve(
    status: TaskStatus,
    event: &LifecycleEvent,
    next: Option<Stage>,
) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match (status, next) {
        (S::AwaitingApproval, Some(stage)) => {
            let mut queued = to(status, S::Queued, &[Effect::Enqueue])?;
            queued.stage = Some(stage);
            Ok(queued)
        }
        (S::AwaitingApproval, None) => end(status, S::Done, &[]),
        (S::Queued | S::Blocked | S::Running, _) => refuse(status, event),
        (S::Done | S::Failed | S::Cancelled | S::DeadLetter, _) => refuse(status, event),
    }
}

fn reject(status: TaskStatus, event: &LifecycleEvent) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::AwaitingApproval => end(status, S::Cancelled, &[]),
        S::Queued | S::Blocked | S::Running => refuse(status, event),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

fn retry(
    status: TaskStatus,
    event: &LifecycleEvent,
    blocked: bool,
) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match (status, blocked) {
        (S::Failed | S::DeadLetter, true) => to(status, S::Blocked, &[Effect::WatchDependencies]),
        (S::Failed | S::DeadLetter, false) => to(status, S::Queued, &[Effect::Enqueue]),
        (S::Queued | S::Blocked | S::Running | S::AwaitingApproval, _) => refuse(status, event),
        (S::Done | S::Cancelled, _) => refuse(status, event),
    }
}

fn cancel(status: TaskStatus, event: &LifecycleEvent) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::Running => end(status, S::Cancelled, &[Effect::KillRunningStage]),
        S::Queued | S::Blocked | S::AwaitingApproval => end(status, S::Cancelled, &[]),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

fn deliver(status: TaskStatus, event: &LifecycleEvent) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::Running => end(status, S::Done, &[Effect::StopPipeline]),
        S::Queued | S::Blocked | S::AwaitingApproval => refuse(status, event),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

/// The service may end any unfinished task with an error (a pipeline crashing before it
/// started the task, poison found at start); a running one's pipeline stops too.
fn end_with_error(
    status: TaskStatus,
    event: &LifecycleEvent,
    ended: TaskStatus,
    extra: &[Effect],
) -> Result<Transition, LifecycleRefusal> {
    use TaskStatus as S;
    match status {
        S::Running => {
            let first: Vec<Effect> = [Effect::StopPipeline]
                .iter()
                .chain(extra)
                .copied()
                .collect();
            end(status, ended, &first)
        }
        S::Queued | S::Blocked | S::AwaitingApproval => end(status, ended, extra),
        S::Done | S::Failed | S::Cancelled | S::DeadLetter => refuse(status, event),
    }
}

/// Sets the stage and attempt a transition moves the task to.
fn at_stage(
    transition: Result<Transition, LifecycleRefusal>,
    stage: Stage,
    attempt: u32,
) -> Result<Transition, LifecycleRefusal> {
    transition.map(|mut transition| {
        transition.stage = Some(stage);
        transition.attempt = Some(attempt);
        transition
    })
}

impl Task {
    /// Moves the task by `event` at `now` (the one writer of `status`): the status, stage and
    /// attempt [`step`] answers, and the fields the move itself implies (when it ended, why,
    /// the counters a stage change resets). Fields a caller owns (commit, branch, feedback, the
    /// merge queue's notes, billing) stay the caller's. A refused event changes nothing.
    pub fn apply(
        &mut self,
        event: LifecycleEvent,
        now: DateTime<Utc>,
    ) -> Result<Transition, LifecycleRefusal> {
        if event == LifecycleEvent::Cancel && self.progress.merge.landing.is_some() {
            // The one guard beyond the status: a claimed landing (see `ClaimLanding`).
            return Err(LifecycleRefusal {
                status: self.progress.status,
                event: event.name(),
                expected: "not landing",
                code: codes::TASK_LANDING,
            });
        }
        let transition = step(self.progress.status, &event)?;
        let progress = &mut self.progress;
        progress.status = transition.to;
        if let Some(stage) = transition.stage {
            progress.stage = Some(stage);
        }
        if let Some(attempt) = transition.attempt {
            progress.attempts = attempt;
        }
        match event {
            LifecycleEvent::Unblock => progress.blocked_by.clear(),
            LifecycleEvent::Start { .. } => {
                progress.started_at.get_or_insert(now);
            }
            LifecycleEvent::EnterStage { .. } => progress.stage_retries = 0,
            LifecycleEvent::RetryStage => {
                progress.stage_retries = progress.stage_retries.saturating_add(1);
            }
            LifecycleEvent::Retry { blocked } => self.reopen(blocked),
            LifecycleEvent::DependencyFailed(error)
            | LifecycleEvent::Fail(error)
            | LifecycleEvent::DeadLetter(error) => self.outcome.error = Some(error),
            LifecycleEvent::HoldForRedBase(reason) => progress.merge.held = Some(reason),
            LifecycleEvent::ReleaseHold => progress.merge.held = None,
            LifecycleEvent::ClaimLanding(commit) => progress.merge.landing = Some(commit),
            LifecycleEvent::ReleaseLanding => progress.merge.landing = None,
            LifecycleEvent::WaitForFleet(reason) => progress.wait_for(reason, now),
            LifecycleEvent::WaitForSlot => progress.wait_for(SLOT_WAIT_REASON.to_owned(), now),
            LifecycleEvent::StopWaiting => {
                progress.waiting_for = None;
                progress.waiting_since = None;
            }
            LifecycleEvent::TrackPullRequest(record) => progress.pull_request = Some(*record),
            // The restart lost the task's jobs, and with them their waits.
            LifecycleEvent::Resume => {
                progress.waiting_for = None;
                progress.waiting_since = None;
            }
            LifecycleEvent::JoinQueue
            | LifecycleEvent::LeaveQueue
            | LifecycleEvent::AwaitApproval
            | LifecycleEvent::Approve { .. }
            | LifecycleEvent::Reject
            | LifecycleEvent::Cancel
            | LifecycleEvent::Deliver => {}
        }
        if transition.to.is_terminal() {
            self.outcome.finished_at = Some(now);
            // An ended task waits for nothing (its waiting job was dropped with it).
            self.progress.waiting_for = None;
            self.progress.waiting_since = None;
        }
        Ok(transition)
    }

    /// A retried task leaves its end behind: no error, not finished, counters of the last round
    /// reset, waiting on its dependencies again when `blocked`.
    fn reopen(&mut self, blocked: bool) {
        let progress = &mut self.progress;
        progress.blocked_by = if blocked {
            self.spec.deps.clone()
        } else {
            Vec::new()
        };
        progress.stage_retries = 0;
        progress.reverifications = 0;
        self.outcome.error = None;
        self.outcome.finished_at = None;
    }
}

#[cfg(test)]
mod tests;
