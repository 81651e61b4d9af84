//! Repositories named by URL (`file://`, `ssh://`, `https://`): the service keeps a bare clone of
//! each under `<data_dir>/remotes/` ([`Services::repo_dir`]), brings the base branch up to date
//! from the remote before work starts on it, pushes a task's branch after each attempt, and —
//! in the merge queue — lands by a compare-and-swap push (`--force-with-lease` with the
//! expected old value, see `platform::git::candidate::land`). Local paths need none of this.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use crate::config::github::GithubConfig;
use crate::model::task::{branch_name, is_remote_repo, Task};
use crate::platform::git::Git;
use crate::platform::github::{self, git_auth};
use crate::runtime::jobs::StageError;
use crate::runtime::Services;

/// One lock per local clone: a clone and the fetches into it never race each other.
fn clone_lock(dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>;
    static LOCKS: LazyLock<Locks> = LazyLock::new(Locks::default);
    let mut locks = LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    locks.retain(|_, lock| lock.strong_count() > 0);
    if let Some(lock) = locks.get(dir).and_then(Weak::upgrade) {
        return lock;
    }
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    locks.insert(dir.to_path_buf(), Arc::downgrade(&lock));
    lock
}

/// A git runner in `dir` for the task's remote: for a pull-request task whose remote is on the
/// configured GitHub host, with the GitHub token (an App's renewed first) as an HTTP header in the
/// call's environment ([`auth_env`]), never in argv, a URL or a log.
async fn remote_git(services: &Services, task: &Task, dir: PathBuf) -> Result<Git, StageError> {
    let git = Git::new(dir, services.config.git.timeout());
    let pull_request = task.spec.pull_request.is_some();
    let env = auth_env(&services.config.github, pull_request, &task.spec.repo)
        .await
        .map_err(token_failed)?;
    Ok(git.with_env(env))
}

/// The environment that hands the GitHub token to one git call on `url`
/// (`platform::github::git_auth`): only for a pull-request task and a remote on the GitHub host
/// `[github] api_url` names; empty otherwise.
pub(crate) async fn auth_env(
    config: &GithubConfig,
    pull_request: bool,
    url: &str,
) -> Result<Vec<(String, String)>, github::GithubError> {
    if !pull_request || !git_auth::is_github_remote(&config.api_url, url) {
        return Ok(Vec::new());
    }
    let token = github::shared(config)?.token().await?;
    Ok(git_auth::git_env(url, &token))
}

fn token_failed(error: github::GithubError) -> StageError {
    StageError::Forge {
        code: crate::model::codes::DELIVERY_FAILED,
        message: format!("the GitHub token for git: {error}"),
    }
}

/// For a task on a remote: makes the local clone if it is missing, and sets its base branch to
/// the remote's. A no-op for a local repository.
pub(crate) async fn sync(services: &Services, task: &Task) -> Result<(), StageError> {
    if !is_remote_repo(&task.spec.repo) {
        return Ok(());
    }
    let dir = services.repo_dir(&task.spec.repo);
    let lock = clone_lock(&dir);
    let _one_at_a_time = lock.lock().await;
    if !tokio::fs::try_exists(dir.join("HEAD"))
        .await
        .unwrap_or(false)
    {
        let parent = dir.parent().unwrap_or(&dir).to_path_buf();
        tokio::fs::create_dir_all(&parent).await?;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let target = dir.display().to_string();
        remote_git(services, task, parent)
            .await?
            .run(&["clone", "--bare", "--quiet", &task.spec.repo, &target])
            .await?;
    }
    let base = format!("+refs/heads/{0}:refs/heads/{0}", task.spec.base_branch);
    remote_git(services, task, dir)
        .await?
        .run(&["fetch", "--quiet", "--no-tags", "origin", &base])
        .await?;
    Ok(())
}

/// Pushes the task's branch to the remote (forced: a new attempt may start from the base again).
/// For a pull-request task a failure is `DELIVERY_FAILED` naming the push (a remote that refuses
/// the token fails the task as its delivery would, not as a git error of the attempt).
pub(crate) async fn push_branch(services: &Services, task: &Task) -> Result<(), StageError> {
    let pushed = push_head(services, task).await;
    match pushed {
        Err(error) if task.spec.pull_request.is_some() => Err(StageError::Forge {
            code: crate::model::codes::DELIVERY_FAILED,
            message: format!("push failed: {error}"),
        }),
        other => other,
    }
}

/// Pushes the task's branch to the remote, as [`push_branch`] without its mapping of failures:
/// the pull-request delivery names its own steps.
pub(crate) async fn push_head(services: &Services, task: &Task) -> Result<(), StageError> {
    if !is_remote_repo(&task.spec.repo) {
        return Ok(());
    }
    let branch = branch_name(task.id);
    let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
    remote_git(services, task, services.repo_dir(&task.spec.repo))
        .await?
        .run(&["push", "--quiet", "origin", &refspec])
        .await?;
    Ok(())
}

/// Deletes a ref on the task's remote (best effort: logged).
pub(crate) async fn delete_remote_ref(services: &Services, task: &Task, reference: &str) {
    if !is_remote_repo(&task.spec.repo) {
        return;
    }
    let git = match remote_git(services, task, services.repo_dir(&task.spec.repo)).await {
        Ok(git) => git,
        Err(error) => {
            tracing::warn!(task = %task.id, %reference, %error, "could not delete a ref on the remote");
            return;
        }
    };
    if let Err(error) = git
        .run(&["push", "--quiet", "origin", "--delete", reference])
        .await
    {
        tracing::warn!(task = %task.id, %reference, %error, "could not delete a ref on the remote");
    }
}
