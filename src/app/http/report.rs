//! `GET /v1/report`: where the work stands, for the humans who manage it.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::describe;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::model::task::{Stage, Task, TaskId, TaskStatus};

/// Tasks the report looks at at most (newest first): one store read must end within its 5 s
/// bound. When there are more, the report's `coverage` says so and where it stopped.
const REPORT_TASKS_MAX: usize = 100_000;

/// What the report counted: every task, or — past [`REPORT_TASKS_MAX`] — the newest ones,
/// said explicitly so a client never reads a partial count as the whole.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Coverage {
    /// Tasks counted in `counts`, `running`, `blocked`, `stalled` and `finished_last_hour`.
    pub tasks_counted: usize,
    /// Whether that is every task; `false` when older tasks exist that were not counted.
    pub complete: bool,
    /// When not complete: the creation time of the oldest task counted (older ones are not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_since: Option<DateTime<Utc>>,
}

impl Coverage {
    /// Cuts `tasks` (newest first, at most `max + 1` fetched) to `max` and says what is left;
    /// `created` is a task's creation time.
    fn cut<T>(tasks: &mut Vec<T>, max: usize, created: impl Fn(&T) -> DateTime<Utc>) -> Coverage {
        let complete = tasks.len() <= max;
        tasks.truncate(max);
        Coverage {
            tasks_counted: tasks.len(),
            complete,
            counted_since: if complete {
                None
            } else {
                tasks.last().map(created)
            },
        }
    }
}

/// The report.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Report {
    /// When it was made.
    pub generated_at: DateTime<Utc>,
    /// Tasks per status.
    pub counts: BTreeMap<String, usize>,
    /// Tasks waiting for a pipeline slot.
    pub queue_depth: usize,
    /// Tasks a pipeline is driving now.
    pub running: Vec<RunningTask>,
    /// Tasks waiting for dependencies.
    pub blocked: Vec<BlockedTask>,
    /// Running tasks with no event for `stall_after_secs`.
    pub stalled: Vec<StalledTask>,
    /// Tasks that ended in the last hour.
    pub finished_last_hour: FinishedSummary,
    /// What was counted: every task, or where counting stopped.
    pub coverage: Coverage,
    /// Base branches whose own commit fails a task's verify: their merge queues hold (no
    /// attempt spent) until the branch moves.
    pub base_red: Vec<crate::runtime::base_health::RedBase>,
    /// Each merge queue's line: the tasks at `deliver`, in the order the queue serves them.
    pub merge_queues: Vec<MergeQueueLine>,
    /// Running tasks one of whose jobs waits to start, and why (`fleet paused`, `no factory
    /// with has:gpu`), longest waiting first.
    pub waiting: Vec<WaitingTask>,
}

/// A running task whose job waits to start.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WaitingTask {
    /// The task.
    pub id: TaskId,
    /// What its job waits for (the task's `waiting_for`).
    pub reason: String,
    /// Since when.
    pub since: Option<DateTime<Utc>>,
}

/// The running tasks whose job waits, longest waiting first.
fn waiting_tasks(tasks: &[Task]) -> Vec<WaitingTask> {
    let mut waiting: Vec<WaitingTask> = tasks
        .iter()
        .filter(|t| t.progress.status == TaskStatus::Running)
        .filter_map(|t| {
            Some(WaitingTask {
                id: t.id,
                reason: t.progress.waiting_for.clone()?,
                since: t.progress.waiting_since,
            })
        })
        .collect();
    waiting.sort_by_key(|w| w.since);
    waiting
}

/// One merge queue (a repository and base branch) and who waits in it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MergeQueueLine {
    /// The repository as tasks name it.
    pub repo: String,
    /// The base branch.
    pub branch: String,
    /// The tasks in line, first served first.
    pub line: Vec<PlaceInLine>,
}

/// A task's place in its merge queue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PlaceInLine {
    /// The task.
    pub id: TaskId,
    /// 1 for the next served (or being served).
    pub place: usize,
    /// Why the queue holds it, if it does (a red base).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// The merge queues' lines from the running tasks at `deliver`, ordered as the queue orders
/// them (`merge_queue::Place`: priority, then when verify passed, then id).
fn merge_queue_lines(tasks: &[Task]) -> Vec<MergeQueueLine> {
    use crate::work::merge_queue::Place;
    let mut queues: BTreeMap<(String, String), Vec<(Place, &Task)>> = BTreeMap::new();
    for task in tasks.iter().filter(|t| {
        t.progress.status == TaskStatus::Running && t.progress.stage == Some(Stage::Deliver)
    }) {
        let key = (task.spec.repo.clone(), task.spec.base_branch.clone());
        queues.entry(key).or_default().push((Place::of(task), task));
    }
    queues
        .into_iter()
        .map(|((repo, branch), mut waiting)| {
            waiting.sort_by_key(|(place, _)| *place);
            let line = waiting
                .iter()
                .enumerate()
                .map(|(n, (_, task))| PlaceInLine {
                    id: task.id,
                    place: n + 1,
                    held: task.progress.merge.held.clone(),
                })
                .collect();
            MergeQueueLine { repo, branch, line }
        })
        .collect()
}

/// One running task.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunningTask {
    /// The task.
    pub id: TaskId,
    /// Its title.
    pub title: String,
    /// The stage it is in.
    pub stage: Option<Stage>,
    /// The implement attempt.
    pub attempts: u32,
    /// Seconds since it started.
    pub age_secs: i64,
}

/// One blocked task.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BlockedTask {
    /// The task.
    pub id: TaskId,
    /// Its title.
    pub title: String,
    /// The unfinished dependencies that block it.
    pub blocked_by: Vec<TaskId>,
}

/// One stalled task.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StalledTask {
    /// The task.
    pub id: TaskId,
    /// The stage it sits in.
    pub stage: Option<Stage>,
    /// When its last event was recorded.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Seconds since then.
    pub silent_secs: i64,
}

/// What ended in the last hour.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FinishedSummary {
    /// Tasks per terminal status.
    pub counts: BTreeMap<String, usize>,
    /// Median seconds from submission to `done`, over the done ones.
    pub median_secs_to_done: Option<f64>,
}

fn status_key(status: TaskStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `GET /v1/report`.
#[utoipa::path(
    get,
    path = "/v1/report",
    tag = "tasks",
    responses(
        (status = 200, description = "Where the work stands.", body = Report),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn report(State(app): State<AppState>) -> Result<Json<Report>, ApiError> {
    let now = Utc::now();
    let mut tasks = app.services.store.tasks(REPORT_TASKS_MAX + 1).await?;
    let coverage = Coverage::cut(&mut tasks, REPORT_TASKS_MAX, |task| task.spec.created_at);
    if !coverage.complete {
        tracing::warn!(
            counted = coverage.tasks_counted,
            "GET /v1/report counted only the newest tasks (its coverage says so)"
        );
    }
    let stall_after = Duration::seconds(
        i64::try_from(app.services.config.compass.stall_after_secs).unwrap_or(i64::MAX),
    );
    let mut counts = BTreeMap::new();
    for task in &tasks {
        *counts.entry(status_key(task.progress.status)).or_insert(0) += 1;
    }
    let mut running = Vec::new();
    let mut stalled = Vec::new();
    for task in tasks
        .iter()
        .filter(|t| t.progress.status == TaskStatus::Running)
    {
        running.push(RunningTask {
            id: task.id,
            title: task.spec.title.clone(),
            stage: task.progress.stage,
            attempts: task.progress.attempts,
            age_secs: (now - task.progress.started_at.unwrap_or(task.spec.created_at))
                .num_seconds(),
        });
        let last_event_at = app
            .services
            .store
            .recent_events(task.id, 1)
            .await?
            .pop()
            .map(|e| e.ts);
        let silent = now - last_event_at.unwrap_or(task.progress.updated_at);
        if silent >= stall_after {
            stalled.push(StalledTask {
                id: task.id,
                stage: task.progress.stage,
                last_event_at,
                silent_secs: silent.num_seconds(),
            });
        }
    }
    let blocked = tasks
        .iter()
        .filter(|t| t.progress.status == TaskStatus::Blocked)
        .map(|t| BlockedTask {
            id: t.id,
            title: t.spec.title.clone(),
            blocked_by: t.progress.blocked_by.clone(),
        })
        .collect();
    Ok(Json(Report {
        generated_at: now,
        counts,
        queue_depth: app.services.directory.queue_depth(),
        running,
        blocked,
        stalled,
        finished_last_hour: finished_since(&tasks, now - Duration::hours(1)),
        coverage,
        base_red: app.services.base_health.red(),
        merge_queues: merge_queue_lines(&tasks),
        waiting: waiting_tasks(&tasks),
    }))
}

fn finished_since(tasks: &[Task], since: DateTime<Utc>) -> FinishedSummary {
    let recent: Vec<&Task> = tasks
        .iter()
        .filter(|t| {
            t.progress.status.is_terminal() && t.outcome.finished_at.is_some_and(|at| at >= since)
        })
        .collect();
    let mut counts = BTreeMap::new();
    for task in &recent {
        *counts.entry(status_key(task.progress.status)).or_insert(0) += 1;
    }
    let mut durations: Vec<f64> = recent
        .iter()
        .filter(|t| t.progress.status == TaskStatus::Done)
        .filter_map(|t| {
            t.outcome
                .finished_at
                .map(|at| (at - t.spec.created_at).num_milliseconds() as f64 / 1000.0)
        })
        .collect();
    durations.sort_by(f64::total_cmp);
    FinishedSummary {
        counts,
        median_secs_to_done: median(&durations),
    }
}

fn median(sorted: &[f64]) -> Option<f64> {
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::{median, Coverage};
    use chrono::{Duration, Utc};

    #[test]
    fn past_the_cap_the_coverage_says_where_counting_stopped() {
        let now = Utc::now();
        let mut times: Vec<_> = (0..5).map(|n| now - Duration::seconds(n)).collect();
        let all = Coverage::cut(&mut times.clone(), 5, |t| *t);
        assert!(all.complete && all.tasks_counted == 5 && all.counted_since.is_none());
        let cut = Coverage::cut(&mut times, 3, |t| *t);
        assert!(!cut.complete);
        assert_eq!(cut.tasks_counted, 3);
        assert_eq!(cut.counted_since, Some(now - Duration::seconds(2)));
        assert_eq!(times.len(), 3);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, 2.0, 9.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), Some(3.0));
    }
}
