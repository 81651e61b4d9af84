//! The lifecycle table: every (status, event) pair, allowed or refused, with its code.

use chrono::Utc;

use super::*;
use crate::model::task::TaskId;

use TaskStatus::{
    AwaitingApproval as Awa, Blocked as Blk, Cancelled as Can, DeadLetter as Dlq, Done as Don,
    Failed as Fai, Queued as Que, Running as Run,
};

/// Every status, in the table's column order.
const STATUSES: [TaskStatus; 8] = [Que, Blk, Run, Awa, Don, Fai, Can, Dlq];

/// The column of `status`: exhaustive, so a new status fails to compile here until it has a
/// column (and then the table rows below are one cell short).
fn column(status: TaskStatus) -> usize {
    match status {
        Que => 0,
        Blk => 1,
        Run => 2,
        Awa => 3,
        Don => 4,
        Fai => 5,
        Can => 6,
        Dlq => 7,
    }
}

/// One cell: the status after the event, or the refusal's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    To(TaskStatus),
    No(&'static str),
}

/// Refused with `INVALID_TASK_STATUS`.
const BAD: Cell = Cell::No(codes::INVALID_TASK_STATUS);
/// Refused with `TASK_FINISHED`.
const FIN: Cell = Cell::No(codes::TASK_FINISHED);

fn error() -> ErrorInfo {
    ErrorInfo::new(codes::VERIFY_FAILED, "no")
}

/// Every event (each variant with representative data), and its row: one cell per status in
/// [`STATUSES`] order — queued, blocked, running, awaiting_approval, done, failed, cancelled,
/// dead_letter.
fn table() -> Vec<(LifecycleEvent, [Cell; 8])> {
    use Cell::To;
    use LifecycleEvent as E;
    let implement = E::EnterStage {
        stage: Stage::Implement,
        attempt: 2,
    };
    let start = E::Start {
        stage: Stage::Plan,
        attempt: 0,
    };
    #[rustfmt::skip]
    let rows = vec![
        (E::Unblock,                      [BAD,      To(Que),  BAD,      BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::DependencyFailed(error()),    [BAD,      To(Fai),  BAD,      BAD,      FIN,     FIN,     FIN,     FIN]),
        (start,                           [To(Run),  BAD,      BAD,      BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::Resume,                       [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (implement,                       [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::RetryStage,                   [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::AwaitApproval,                [BAD,      BAD,      To(Awa),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::Approve { next: Some(Stage::Deliver) },
                                          [BAD,      BAD,      BAD,      To(Que),  BAD,     BAD,     BAD,     BAD]),
        (E::Approve { next: None },       [BAD,      BAD,      BAD,      To(Don),  BAD,     BAD,     BAD,     BAD]),
        (E::Reject,                       [BAD,      BAD,      BAD,      To(Can),  BAD,     BAD,     BAD,     BAD]),
        (E::Retry { blocked: false },     [BAD,      BAD,      BAD,      BAD,      BAD,     To(Que), BAD,     To(Que)]),
        (E::Retry { blocked: true },      [BAD,      BAD,      BAD,      BAD,      BAD,     To(Blk), BAD,     To(Blk)]),
        (E::Cancel,                       [To(Can),  To(Can),  To(Can),  To(Can),  FIN,     FIN,     FIN,     FIN]),
        (E::Deliver,                      [BAD,      BAD,      To(Don),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::Fail(error()),                [To(Fai),  To(Fai),  To(Fai),  To(Fai),  FIN,     FIN,     FIN,     FIN]),
        (E::DeadLetter(error()),          [To(Dlq),  To(Dlq),  To(Dlq),  To(Dlq),  FIN,     FIN,     FIN,     FIN]),
        (E::JoinQueue,                    [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::LeaveQueue,                   [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::HoldForRedBase("red".into()), [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::ReleaseHold,                  [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::ClaimLanding("c0ffee".into()),[BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::ReleaseLanding,               [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::WaitForFleet("fleet paused".into()),
                                          [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::WaitForSlot,                  [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::StopWaiting,                  [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
        (E::TrackPullRequest(Box::default()),
                                          [BAD,      BAD,      To(Run),  BAD,      FIN,     FIN,     FIN,     FIN]),
    ];
    rows
}

/// The event's name for every variant: exhaustive, so a new event fails to compile here until
/// it has a row in [`table`] (the test checks every name has one).
fn every_event_name() -> Vec<&'static str> {
    let all = [
        "unblock",
        "dependency_failed",
        "start",
        "resume",
        "enter_stage",
        "retry_stage",
        "await_approval",
        "approve",
        "reject",
        "retry",
        "cancel",
        "deliver",
        "fail",
        "dead_letter",
        "join_queue",
        "leave_queue",
        "hold_for_red_base",
        "release_hold",
        "claim_landing",
        "release_landing",
        "wait_for_fleet",
        "wait_for_slot",
        "stop_waiting",
        "track_pull_request",
    ];
    // Ties the list to the enum: every variant's name is in it.
    let named = |event: &LifecycleEvent| match event {
        LifecycleEvent::Unblock
        | LifecycleEvent::DependencyFailed(_)
        | LifecycleEvent::Start { .. }
        | LifecycleEvent::Resume
        | LifecycleEvent::EnterStage { .. }
        | LifecycleEvent::RetryStage
        | LifecycleEvent::AwaitApproval
        | LifecycleEvent::Approve { .. }
        | LifecycleEvent::Reject
        | LifecycleEvent::Retry { .. }
        | LifecycleEvent::Cancel
        | LifecycleEvent::Deliver
        | LifecycleEvent::Fail(_)
        | LifecycleEvent::DeadLetter(_)
        | LifecycleEvent::JoinQueue
        | LifecycleEvent::LeaveQueue
        | LifecycleEvent::HoldForRedBase(_)
        | LifecycleEvent::ReleaseHold
        | LifecycleEvent::ClaimLanding(_)
        | LifecycleEvent::ReleaseLanding
        | LifecycleEvent::WaitForFleet(_)
        | LifecycleEvent::WaitForSlot
        | LifecycleEvent::StopWaiting
        | LifecycleEvent::TrackPullRequest(_) => event.name(),
    };
    for (event, _) in table() {
        assert!(all.contains(&named(&event)), "{} has no name", event.name());
    }
    all.to_vec()
}

#[test]
fn every_status_has_one_column() {
    for (index, status) in STATUSES.iter().enumerate() {
        assert_eq!(column(*status), index, "{status:?}");
    }
}

#[test]
fn every_pair_is_allowed_or_refused_as_the_table_says() {
    let mut checked = 0;
    for (event, row) in table() {
        for status in STATUSES {
            let cell = row[column(status)];
            let got = match step(status, &event) {
                Ok(transition) => {
                    assert_eq!(transition.from, status);
                    Cell::To(transition.to)
                }
                Err(refusal) => {
                    assert_eq!(refusal.status, status);
                    assert_eq!(refusal.event, event.name());
                    Cell::No(refusal.code)
                }
            };
            assert_eq!(got, cell, "{status:?} × {}", event.name());
            checked += 1;
        }
    }
    assert_eq!(checked, table().len() * STATUSES.len());
}

#[test]
fn every_event_has_a_row() {
    let rows: Vec<&str> = table().iter().map(|(event, _)| event.name()).collect();
    for name in every_event_name() {
        assert!(rows.contains(&name), "{name} has no row in the table");
    }
}

#[test]
fn a_submitted_task_is_blocked_only_by_unfinished_dependencies() {
    assert_eq!(submitted(true), Blk);
    assert_eq!(submitted(false), Que);
}

#[test]
fn ends_carry_the_effects_of_an_end() {
    use Effect::*;
    let cancel_running = step(Run, &LifecycleEvent::Cancel).unwrap();
    assert_eq!(
        cancel_running.effects,
        vec![
            KillRunningStage,
            Dequeue,
            CleanUpWorktree,
            SettleBudget,
            NotifyDependents
        ]
    );
    let cancel_queued = step(Que, &LifecycleEvent::Cancel).unwrap();
    assert_eq!(
        cancel_queued.effects,
        vec![Dequeue, CleanUpWorktree, SettleBudget, NotifyDependents]
    );
    let dead = step(Run, &LifecycleEvent::DeadLetter(error())).unwrap();
    assert_eq!(
        dead.effects,
        vec![
            StopPipeline,
            EscalateToHuman,
            Dequeue,
            CleanUpWorktree,
            SettleBudget,
            NotifyDependents
        ]
    );
    let done = step(Run, &LifecycleEvent::Deliver).unwrap();
    assert_eq!(
        done.effects,
        vec![
            StopPipeline,
            Dequeue,
            CleanUpWorktree,
            SettleBudget,
            NotifyDependents
        ]
    );
    for (event, _) in table() {
        for status in STATUSES {
            if let Ok(transition) = step(status, &event) {
                let ended = transition.to.is_terminal();
                assert_eq!(
                    transition.effects.contains(&SettleBudget),
                    ended,
                    "{status:?} × {}",
                    event.name()
                );
                // Every end takes the task out of Compass's lines; a move that does not end
                // leaves them only for the queue (unblocked).
                assert_eq!(
                    transition.effects.contains(&Dequeue),
                    ended || transition.effects.contains(&Enqueue) && status == Blk,
                    "{status:?} × {}",
                    event.name()
                );
            }
        }
    }
}

#[test]
fn moves_that_do_not_end_ask_for_their_next_step() {
    use Effect::*;
    let unblock = step(Blk, &LifecycleEvent::Unblock).unwrap();
    assert_eq!(unblock.effects, vec![Dequeue, Enqueue]);
    let retried = step(Fai, &LifecycleEvent::Retry { blocked: true }).unwrap();
    assert_eq!(retried.effects, vec![WatchDependencies]);
    let parked = step(Run, &LifecycleEvent::AwaitApproval).unwrap();
    assert_eq!(parked.effects, vec![StopPipeline]);
    let approved = step(
        Awa,
        &LifecycleEvent::Approve {
            next: Some(Stage::Deliver),
        },
    )
    .unwrap();
    assert_eq!(
        (approved.stage, approved.effects),
        (Some(Stage::Deliver), vec![Enqueue])
    );
}

#[test]
fn a_refusal_says_what_was_needed() {
    let refusal = step(Que, &LifecycleEvent::Approve { next: None }).unwrap_err();
    assert_eq!(refusal.expected, "awaiting_approval");
    assert!(
        refusal.to_string().contains("awaiting_approval"),
        "{refusal}"
    );
    let refusal = step(Don, &LifecycleEvent::Retry { blocked: false }).unwrap_err();
    assert_eq!(
        (refusal.code, refusal.expected),
        (codes::INVALID_TASK_STATUS, "failed or dead_letter")
    );
}

#[test]
fn apply_writes_the_move_and_what_it_implies() {
    let now = Utc::now();
    let mut task = Task::for_test("t", "d");
    task.spec.deps = vec![TaskId::new()];
    let started = LifecycleEvent::Start {
        stage: Stage::Implement,
        attempt: 1,
    };
    task.apply(started, now).unwrap();
    assert_eq!(task.progress.status, Run);
    assert_eq!(task.progress.stage, Some(Stage::Implement));
    assert_eq!(task.progress.attempts, 1);
    assert_eq!(task.progress.started_at, Some(now));
    task.apply(LifecycleEvent::RetryStage, now).unwrap();
    assert_eq!(task.progress.stage_retries, 1);
    let verify = LifecycleEvent::EnterStage {
        stage: Stage::Verify,
        attempt: 1,
    };
    task.apply(verify, now).unwrap();
    assert_eq!(task.progress.stage_retries, 0);
    task.apply(LifecycleEvent::Fail(error()), now).unwrap();
    assert_eq!(task.outcome.error, Some(error()));
    assert_eq!(task.outcome.finished_at, Some(now));
    // A refused event changes nothing.
    let before = task.clone();
    let refusal = task.apply(LifecycleEvent::Cancel, now).unwrap_err();
    assert_eq!(refusal.code, codes::TASK_FINISHED);
    assert_eq!(task, before);
    task.progress.reverifications = 2;
    task.apply(LifecycleEvent::Retry { blocked: true }, now)
        .unwrap();
    assert_eq!(task.progress.status, Blk);
    assert_eq!(task.progress.blocked_by, task.spec.deps);
    assert_eq!(task.progress.reverifications, 0);
    assert_eq!(
        (task.outcome.error.clone(), task.outcome.finished_at),
        (None, None)
    );
    task.apply(LifecycleEvent::Unblock, now).unwrap();
    assert!(task.progress.blocked_by.is_empty());
}

#[test]
fn a_claimed_landing_refuses_a_cancel_with_task_landing_until_released() {
    let mut task = Task::for_test("t", "d");
    task.apply(
        LifecycleEvent::Start {
            stage: Stage::Deliver,
            attempt: 1,
        },
        Utc::now(),
    )
    .unwrap();
    task.apply(LifecycleEvent::ClaimLanding("c0ffee".into()), Utc::now())
        .unwrap();
    let refused = task.apply(LifecycleEvent::Cancel, Utc::now()).unwrap_err();
    assert_eq!(refused.code, codes::TASK_LANDING);
    assert_eq!(task.progress.status, Run);
    task.apply(LifecycleEvent::ReleaseLanding, Utc::now())
        .unwrap();
    assert_eq!(
        task.apply(LifecycleEvent::Cancel, Utc::now()).unwrap().to,
        Can
    );
}

#[test]
fn waiting_for_the_fleet_is_shown_while_running_and_cleared_by_the_end() {
    let (t0, t1) = (Utc::now(), Utc::now() + chrono::Duration::seconds(5));
    let mut task = Task::for_test("t", "d");
    let start = LifecycleEvent::Start {
        stage: Stage::Verify,
        attempt: 1,
    };
    task.apply(start, t0).unwrap();
    let paused = LifecycleEvent::WaitForFleet("fleet paused".into());
    assert_eq!(task.apply(paused.clone(), t0).unwrap().effects, vec![]);
    assert_eq!(task.progress.waiting_for.as_deref(), Some("fleet paused"));
    // The same reason again keeps when it began; a new reason starts a new wait.
    task.apply(paused, t1).unwrap();
    assert_eq!(task.progress.waiting_since, Some(t0));
    let gpu = LifecycleEvent::WaitForFleet("no factory with has:gpu".into());
    task.apply(gpu, t1).unwrap();
    assert_eq!(task.progress.waiting_since, Some(t1));
    task.apply(LifecycleEvent::StopWaiting, t1).unwrap();
    assert_eq!(
        (
            task.progress.waiting_for.clone(),
            task.progress.waiting_since
        ),
        (None, None)
    );
    // A restart lost the job that waited: the resumed task waits for nothing until a job asks.
    task.apply(LifecycleEvent::WaitForFleet("fleet paused".into()), t1)
        .unwrap();
    task.apply(LifecycleEvent::Resume, t1).unwrap();
    assert_eq!(task.progress.waiting_for, None);
    task.apply(LifecycleEvent::WaitForFleet("fleet paused".into()), t1)
        .unwrap();
    task.apply(LifecycleEvent::Cancel, t1).unwrap();
    assert_eq!(
        task.progress.waiting_for, None,
        "an ended task waits for nothing"
    );
    let refused = task.apply(LifecycleEvent::StopWaiting, t1).unwrap_err();
    assert_eq!(refused.code, codes::TASK_FINISHED);
}

#[test]
fn a_task_taken_up_without_a_move_waits_where_its_status_says() {
    use Effect::*;
    let expected: [(TaskStatus, &[Effect]); 8] = [
        (Que, &[Enqueue]),
        (Blk, &[WatchDependencies]),
        (Run, &[ResumeFirst]),
        (Awa, &[]),
        (Don, &[]),
        (Fai, &[]),
        (Can, &[]),
        (Dlq, &[]),
    ];
    for (status, effects) in expected {
        assert_eq!(on_load(status), effects, "{status:?}");
    }
    // A running task taken up again is resumed by the `Resume` row: its stage runs on.
    assert_eq!(
        step(Run, &LifecycleEvent::Resume).unwrap().effects,
        vec![Advance]
    );
    // What a submit gives a task is taken up by the same answer.
    assert_eq!(on_load(submitted(false)), &[Enqueue]);
    assert_eq!(on_load(submitted(true)), &[WatchDependencies]);
}
