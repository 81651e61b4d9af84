//! Cleaning up after finished tasks, never destructively, in-process (no `git` process on the
//! way: the worktree's files and registration are removed as directories, a branch by one ref
//! deletion that happens only if it still points where it was read).
//!
//! - A task that **landed** (`done`, delivered by merge) loses its branch `glitchlab/<id>` (its
//!   commit is on the task record and on the base), its worktree and its prompt folder, as soon
//!   as it is recorded `done` ([`landed_later`]). The branch is deleted only when the task's
//!   landed commit is on the base.
//! - A task that ended otherwise keeps a branch with work on it: a `failed` or `dead_letter` one
//!   can be retried. A branch whose tree is the base's (`NO_CHANGES`, or cancelled before any
//!   change) has nothing a human could want and goes when the task ends. The branch of a
//!   `failed`, `cancelled` or `dead_letter` task that finished more than
//!   `git.keep_failed_branches_days` ago is deleted by the sweep (at start and every
//!   `git.sweep_interval_secs`, [`sweep_later`]).
//! - Worktrees and prompt folders of a `failed`, `dead_letter` or `cancelled` task are removed
//!   when it ends ([`ended_later`]); the sweep removes whatever that missed (a retry makes them
//!   again from the branch).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::model::task::{branch_name, Delivery, Task, TaskId, TaskStatus};
use crate::platform::git::{read, write, Git, GitError};
use crate::runtime::Services;

/// After a task is recorded `done`: off the caller's mailbox, removes its worktree and prompt
/// folder and, when it was merged into its base, its branch. Failures are logged (the sweep at
/// the next start tries again).
pub(crate) fn landed_later(services: &Services, task: &Task) {
    let services_now = services.clone();
    let task = task.clone();
    services.background.spawn("task.cleanup", async move {
        clean(&services_now, &task).await;
    });
}

/// When a task ends without landing (`failed`, `dead_letter`, `cancelled`): the same clean-up
/// at once rather than at the next sweep (worktree, prompt folder, and a branch identical to the
/// base); a branch with work on it stays for a human.
pub(crate) fn ended_later(services: &Services, task: &Task) {
    landed_later(services, task);
}

/// At start and every `git.sweep_interval_secs`, off the caller's mailbox: cleans up after every
/// finished task (see the module). Skipped while the previous sweep still runs (`sweeping`).
pub(crate) fn sweep_later(services: &Services, sweeping: &Arc<AtomicBool>) {
    if sweeping.swap(true, Ordering::AcqRel) {
        tracing::info!("clean-up sweep: the previous one still runs; skipped");
        return;
    }
    let services_now = services.clone();
    let sweeping = Arc::clone(sweeping);
    services.background.spawn("task.sweep", async move {
        let _done = SweepDone(sweeping);
        match services_now.store.finished_tasks().await {
            Ok(tasks) => {
                for task in tasks {
                    // A retry may have reopened it since the scan.
                    match services_now.store.task(task.id).await {
                        Ok(Some(now)) if now.progress.status.is_terminal() => clean(&services_now, &now).await,
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(task = %task.id, %error, "clean-up sweep: could not reload a task");
                        }
                    }
                }
            }
            Err(error) => tracing::error!(%error, "clean-up sweep: could not list finished tasks"),
        }
    });
}

/// Clears the "sweep running" flag when the sweep ends, however it ends.
struct SweepDone(Arc<AtomicBool>);

impl Drop for SweepDone {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Whether the branch of a task that ended without landing has outlived its retention.
fn retention_over(services: &Services, task: &Task) -> bool {
    past_retention(
        task.outcome.finished_at,
        services.config.git.keep_failed_branches_days,
        Utc::now(),
    )
}

/// Whether `days` have passed between `finished` and `now` (never for a task with no end, nor
/// for a retention longer than time can say).
fn past_retention(finished: Option<DateTime<Utc>>, days: u64, now: DateTime<Utc>) -> bool {
    let Some(keep) = i64::try_from(days)
        .ok()
        .and_then(chrono::TimeDelta::try_days)
    else {
        return false;
    };
    finished.is_some_and(|finished| now.signed_duration_since(finished) > keep)
}

async fn clean(services: &Services, task: &Task) {
    if !task.progress.status.is_terminal() {
        return;
    }
    let repo_dir = services.repo_dir(&task.spec.repo);
    let repo = Git::new(&repo_dir, services.config.git.timeout());
    remove_worktree(services, &repo, task).await;
    remove_dir(&services.prompt_dir(task.id), task.id).await;
    let branch = branch_name(task.id);
    // Asked in-process: most finished tasks have no branch left, and a sweep asks for all.
    if let Ok(Some(false)) = read::has_branch(&repo_dir, &branch).await {
        return;
    }
    let base = &task.spec.base_branch;
    let deleted = match task.progress.status {
        // Squashed, the branch's own commits are not on the base: its landed commit is.
        TaskStatus::Done if task.spec.delivery == Delivery::Merge => match &task.outcome.commit {
            Some(commit) if landed(&repo_dir, commit, base).await => {
                delete_now(&repo_dir, &branch).await
            }
            _ => Ok(false),
        },
        // Nothing on it a human could want: the branch says what the base says.
        TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::DeadLetter
            if identical_to_base(&repo_dir, &branch, base).await =>
        {
            delete_now(&repo_dir, &branch).await
        }
        TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::DeadLetter
            if retention_over(services, task) =>
        {
            repo.delete_branch(&branch, None).await
        }
        _ => Ok(false),
    };
    match deleted {
        Ok(true) => {
            crate::work::remote::delete_remote_ref(services, task, &format!("refs/heads/{branch}"))
                .await;
            tracing::info!(task = %task.id, %branch, status = ?task.progress.status, "deleted a finished task's branch")
        }
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(task = %task.id, %branch, %error, "could not delete a finished task's branch")
        }
    }
}

/// Deletes the task's branch in-process (one ref transaction): its worktree is gone, so nothing
/// has it checked out. It goes only if it still points where it pointed when read.
async fn delete_now(repo_dir: &std::path::Path, branch: &str) -> Result<bool, GitError> {
    let reference = format!("refs/heads/{branch}");
    match read::resolve_commit(repo_dir, &reference).await? {
        Some(tip) => write::delete_ref(repo_dir, &reference, &tip).await,
        None => Ok(false),
    }
}

/// Whether `branch`'s tree is the same as `base`'s (its deletion loses nothing), read in-process.
async fn identical_to_base(repo_dir: &std::path::Path, branch: &str, base: &str) -> bool {
    let tree = |name: String| async move { read::tree_of(repo_dir, &name).await.ok() };
    let branch = tree(format!("refs/heads/{branch}")).await;
    branch.is_some() && branch == tree(format!("refs/heads/{base}")).await
}

/// Whether `commit` is on `base` (the task's landing is there: its branch may go).
async fn landed(repo_dir: &std::path::Path, commit: &str, base: &str) -> bool {
    let base = format!("refs/heads/{base}");
    read::is_ancestor(repo_dir, commit, &base)
        .await
        .unwrap_or(false)
}

async fn remove_worktree(services: &Services, repo: &Git, task: &Task) {
    let task_id = task.id;
    let path = services.worktree_path(task_id);
    if !tokio::fs::try_exists(&path).await.unwrap_or(true) {
        return;
    }
    if let Err(error) = repo.remove_worktree_now(&path).await {
        tracing::warn!(task = %task_id, %error, "could not remove a finished task's worktree");
        // A worktree of a repository that is gone (or broken) is only files: remove them.
        if !tokio::fs::try_exists(services.repo_dir(&task.spec.repo))
            .await
            .unwrap_or(true)
        {
            remove_dir(&path, task_id).await;
        }
    }
}

async fn remove_dir(path: &std::path::Path, task_id: TaskId) {
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(task = %task_id, path = %path.display(), %error, "could not remove a finished task's folder");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_is_kept_for_its_retention_and_forever_without_an_end() {
        let now = Utc::now();
        let days = |n: i64| now - chrono::TimeDelta::days(n);
        assert!(!past_retention(Some(days(13)), 14, now));
        assert!(past_retention(Some(days(15)), 14, now));
        assert!(past_retention(
            Some(days(0) - chrono::TimeDelta::seconds(1)),
            0,
            now
        ));
        assert!(!past_retention(None, 0, now));
        assert!(!past_retention(Some(days(100_000)), u64::MAX, now));
    }
}
