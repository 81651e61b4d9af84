//! Repositories named by URL (`file://`, `ssh://`, `https://`): the service keeps a bare clone of
//! each under `<data_dir>/remotes/` ([`Services::repo_dir`]), brings the base branch up to date
//! from the remote before work starts on it, pushes a task's branch after each attempt, and —
//! in the merge queue — lands by a compare-and-swap push (`--force-with-lease` with the
//! expected old value, see `platform::git::candidate::land`). Local paths need none of this.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use crate::model::task::{branch_name, is_remote_repo, Task};
use crate::platform::git::Git;
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

/// For a task on a remote: makes the local clone if it is missing, and sets its base branch to
/// the remote's. A no-op for a local repository.
pub(crate) async fn sync(services: &Services, task: &Task) -> Result<(), StageError> {
    if !is_remote_repo(&task.spec.repo) {
        return Ok(());
    }
    let dir = services.repo_dir(&task.spec.repo);
    let lock = clone_lock(&dir);
    let _one_at_a_time = lock.lock().await;
    let timeout = services.config.git.timeout();
    if !tokio::fs::try_exists(dir.join("HEAD"))
        .await
        .unwrap_or(false)
    {
        let parent = dir.parent().unwrap_or(&dir).to_path_buf();
        tokio::fs::create_dir_all(&parent).await?;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let target = dir.display().to_string();
        Git::new(&parent, timeout)
            .run(&["clone", "--bare", "--quiet", &task.spec.repo, &target])
            .await?;
    }
    let base = format!("+refs/heads/{0}:refs/heads/{0}", task.spec.base_branch);
    Git::new(&dir, timeout)
        .run(&["fetch", "--quiet", "--no-tags", "origin", &base])
        .await?;
    Ok(())
}

/// Pushes the task's branch to the remote (forced: a new attempt may start from the base again).
pub(crate) async fn push_branch(services: &Services, task: &Task) -> Result<(), StageError> {
    if !is_remote_repo(&task.spec.repo) {
        return Ok(());
    }
    let branch = branch_name(task.id);
    let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
    Git::new(
        services.repo_dir(&task.spec.repo),
        services.config.git.timeout(),
    )
    .run(&["push", "--quiet", "origin", &refspec])
    .await?;
    Ok(())
}

/// Deletes a ref on the task's remote (best effort: logged).
pub(crate) async fn delete_remote_ref(services: &Services, task: &Task, reference: &str) {
    if !is_remote_repo(&task.spec.repo) {
        return;
    }
    let git = Git::new(
        services.repo_dir(&task.spec.repo),
        services.config.git.timeout(),
    );
    if let Err(error) = git
        .run(&["push", "--quiet", "origin", "--delete", reference])
        .await
    {
        tracing::warn!(task = %task.id, %reference, %error, "could not delete a ref on the remote");
    }
}
