//! A red base is not the tasks' fault. When a candidate fails verify, the queue verifies the bare
//! base with the failing command once per base commit (cached in
//! [`BaseHealth`](crate::runtime::base_health::BaseHealth)). If the base alone fails, the batch
//! is *held*: no attempt is spent, each task says why (`merge.held`, event `merge.base_red`), the
//! base is listed red (`/v1/report`, `/readyz`), and since turns of one queue never interleave,
//! the repository's whole queue waits. The hold ends when the base branch moves (the batch is
//! tried again on the new base), when every held task is cancelled, or after
//! `merge_queue.wait_secs` (then the batch is treated as red, as before).

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;

use super::{note, queue_key, scratch_path, short, TurnOutcome};
use crate::model::lifecycle::LifecycleEvent;
use crate::model::persona::Persona;
use crate::model::task::{is_remote_repo, Stage, Task, TaskId, TaskStatus};
use crate::platform::git::{candidate, Git};
use crate::runtime::base_health::{BaseVerdict, RedBase, RED_OUTPUT_BYTES_MAX};
use crate::runtime::jobs::StageError;
use crate::runtime::Services;
use crate::storage::store::NewEvent;
use crate::work::verify::run_verify;

/// How often a held queue looks whether its base moved (and whether its tasks were cancelled).
const BASE_RED_POLL: Duration = Duration::from_secs(1);
/// A held queue on a remote repository fetches its base every this many polls (10 s).
const REMOTE_POLLS_PER_FETCH: u32 = 10;
/// Bytes of the red output put in each task's `merge.base_red` event.
const EVENT_OUTPUT_BYTES_MAX: usize = 1024;

/// How a hold ended.
pub(super) struct Held {
    /// The held tasks not cancelled meanwhile.
    pub still: Vec<Task>,
    /// The cancelled ones' outcomes.
    pub cancelled: Vec<TurnOutcome>,
    /// The base moved: try the batch again on it. Otherwise the hold timed out.
    pub moved: bool,
}

/// The red base, if the base commit `base` alone fails the verify command of task `failed`
/// (verified once per commit and command). A failure to find out is logged and counts as green:
/// the tasks are then judged as before.
pub(super) async fn check(
    services: &Services,
    left: &[Task],
    failed: TaskId,
    base: &str,
) -> Option<RedBase> {
    let task = left.iter().find(|t| t.id == failed)?;
    let repo = Git::new(
        services.repo_dir(&task.spec.repo),
        services.config.git.timeout(),
    );
    let dir = repo.dir().display().to_string();
    let verdict = match services.base_health.verdict(&dir, base, &task.spec.verify) {
        Some(verdict) => verdict,
        None => match verify_base(services, &repo, task, base).await {
            Ok(verdict) => {
                services
                    .base_health
                    .remember(&dir, base, &task.spec.verify, verdict.clone());
                verdict
            }
            Err(error) => {
                tracing::warn!(task = %task.id, %error, "could not verify the bare base; judging the candidate as before");
                return None;
            }
        },
    };
    (!verdict.passed).then(|| RedBase {
        repo: task.spec.repo.clone(),
        branch: task.spec.base_branch.clone(),
        commit: base.to_owned(),
        command: task.spec.verify.clone(),
        output: verdict.output,
        since: Utc::now(),
    })
}

/// Runs `task`'s verify on the bare base commit in the queue's scratch worktree.
async fn verify_base(
    services: &Services,
    repo: &Git,
    task: &Task,
    base: &str,
) -> Result<BaseVerdict, StageError> {
    let scratch = scratch_path(services, &queue_key(task));
    let worktree = candidate::check_out(repo, &scratch, base).await?;
    let run = run_verify(services, task, worktree, Stage::Deliver).await?;
    let data = json!({"commit": base, "passed": run.passed, "run_id": run.run_id});
    note(services, task, "merge.base_checked", data).await;
    Ok(BaseVerdict {
        passed: run.passed,
        output: crate::platform::process::keep_tail(&run.output, RED_OUTPUT_BYTES_MAX),
    })
}

/// Holds `tasks` while their base stays at the red commit (see the module).
pub(super) async fn hold(services: &Services, tasks: Vec<Task>, red: RedBase) -> Held {
    services.base_health.mark_red(red.clone());
    let reason = format!(
        "base {} is red at {}: `{}` fails on it alone; waiting for the branch to move",
        red.branch,
        short(&red.commit),
        red.command
    );
    let output = crate::platform::process::keep_tail(&red.output, EVENT_OUTPUT_BYTES_MAX);
    let data = json!({"repo": red.repo, "branch": red.branch, "commit": red.commit, "command": red.command, "output": output});
    let hold = LifecycleEvent::HoldForRedBase(reason);
    mark(services, &tasks, "merge.base_red", data, hold).await;
    let deadline = Instant::now() + Duration::from_secs(services.config.merge_queue.wait_secs);
    let mut held = Held {
        still: tasks,
        cancelled: Vec::new(),
        moved: false,
    };
    let remote = is_remote_repo(&red.repo);
    let mut polls: u32 = 0;
    while !held.still.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(BASE_RED_POLL).await;
        drop_cancelled(services, &mut held).await;
        polls = polls.wrapping_add(1);
        // A remote's base is fetched, so it is looked at less often than a local one.
        if remote && polls % REMOTE_POLLS_PER_FETCH != 0 {
            continue;
        }
        if let Some(first) = held.still.first() {
            if moved(services, first, &red.commit).await {
                held.moved = true;
                break;
            }
        }
    }
    services.base_health.clear(&red.repo, &red.branch);
    let data = json!({"commit": red.commit, "moved": held.moved});
    mark(
        services,
        &held.still,
        "merge.base_unheld",
        data,
        LifecycleEvent::ReleaseHold,
    )
    .await;
    held
}

/// Moves the held tasks that were cancelled meanwhile to `held.cancelled`.
async fn drop_cancelled(services: &Services, held: &mut Held) {
    let mut still = Vec::with_capacity(held.still.len());
    for task in std::mem::take(&mut held.still) {
        let status = services
            .store
            .task(task.id)
            .await
            .ok()
            .flatten()
            .map(|t| t.progress.status);
        if status == Some(TaskStatus::Cancelled) {
            held.cancelled.push((task.id, Err(StageError::Cancelled)));
        } else {
            still.push(task);
        }
    }
    held.still = still;
}

/// Whether `task`'s base branch points elsewhere than `red` now (a remote's as it is there).
async fn moved(services: &Services, task: &Task, red: &str) -> bool {
    if is_remote_repo(&task.spec.repo) {
        if let Err(error) = crate::work::remote::sync(services, task).await {
            tracing::debug!(%error, "could not look at the remote base; still held");
            return false;
        }
    }
    let repo = Git::new(
        services.repo_dir(&task.spec.repo),
        services.config.git.timeout(),
    );
    match repo
        .rev_parse(&format!("refs/heads/{}", task.spec.base_branch))
        .await
    {
        Ok(now) => now != red,
        Err(_) => false,
    }
}

/// Writes `kind` on every task and moves it by `hold` (one durable update each).
async fn mark(
    services: &Services,
    tasks: &[Task],
    kind: &'static str,
    data: serde_json::Value,
    hold: LifecycleEvent,
) {
    for task in tasks {
        let event = NewEvent::new(Persona::Patch, kind, data.clone());
        let hold = hold.clone();
        let written = services
            .store
            .update_task(task.id, &[event], move |t| {
                crate::work::transitions::apply(t, hold);
            })
            .await;
        if let Err(error) = written {
            tracing::warn!(task = %task.id, %error, "could not record the base's hold on the task");
        }
    }
}
