//! Ref lock files nobody will ever remove. git and gix take `packed-refs.lock`, `HEAD.lock` and
//! `refs/…/<name>.lock` for the milliseconds of a ref change and remove them when done; a writer
//! killed in between (the service `kill -9`ed during an in-process landing, git OOM-killed, a
//! signal in git's own window between creating a lock and registering it for removal) leaves the
//! file, and from then on every branch deletion and compare-and-swap in the repository fails
//! `GIT_LOCKED` until a human deletes it — git never does. A ref lock untouched for
//! [`STALE_REF_LOCK_AGE`] has no live writer: it is removed, and said so.
//!
//! Index locks are left alone: `git add` of large files holds `index.lock` untouched while it
//! hashes, and a worktree's index is its task's business.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long a ref lock file may sit unchanged before it counts as abandoned. A ref change holds
/// its locks for milliseconds, and a long `pack-refs` keeps writing (and touching) its lock;
/// git's own waits for these locks are 0.1 s and 1 s, glitchlab's 4 s.
pub(crate) const STALE_REF_LOCK_AGE: Duration = Duration::from_secs(10);

/// At most this many directory entries are looked at under `refs/` (a repository with a million
/// refs is mostly packed; its loose refs are few).
const REF_ENTRIES_MAX: usize = 20_000;

/// A lock file that was removed, and how long it had sat unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemovedLock {
    /// Where it was.
    pub path: PathBuf,
    /// Its age when removed.
    pub age: Duration,
}

/// Removes the ref lock files of the repository whose common git dir is `common` that have sat
/// unchanged for longer than `older_than`; answers what it removed. Blocking file-system work:
/// call it from the blocking pool ([`break_stale_ref_locks`]).
pub(crate) fn remove_stale_ref_locks(common: &Path, older_than: Duration) -> Vec<RemovedLock> {
    let mut candidates = vec![common.join("packed-refs.lock"), common.join("HEAD.lock")];
    if let Ok(worktrees) = std::fs::read_dir(common.join("worktrees")) {
        candidates.extend(
            worktrees
                .flatten()
                .take(REF_ENTRIES_MAX)
                .map(|entry| entry.path().join("HEAD.lock")),
        );
    }
    let mut budget = REF_ENTRIES_MAX;
    collect_locks(&common.join("refs"), &mut candidates, &mut budget);
    let now = SystemTime::now();
    candidates
        .into_iter()
        .filter_map(|path| {
            // Never followed: a link named `*.lock` is not a lock git made.
            let metadata = std::fs::symlink_metadata(&path).ok()?;
            if !metadata.is_file() {
                return None;
            }
            let age = now.duration_since(metadata.modified().ok()?).ok()?;
            if age <= older_than {
                return None;
            }
            std::fs::remove_file(&path).ok()?;
            Some(RemovedLock { path, age })
        })
        .collect()
}

/// Every `*.lock` file under `dir`, depth first, looking at no more than `budget` entries.
fn collect_locks(dir: &Path, found: &mut Vec<PathBuf>, budget: &mut usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            collect_locks(&path, found, budget);
        } else if kind.is_file() && path.extension().is_some_and(|ext| ext == "lock") {
            found.push(path);
        }
    }
}

/// [`remove_stale_ref_locks`] for the repository at `repo_dir` (a checkout or a bare
/// repository), off the async runtime, each removal logged. A repository that cannot be read
/// has nothing removed.
pub(crate) async fn break_stale_ref_locks(repo_dir: &Path) -> Vec<RemovedLock> {
    let Ok(common) = super::read::common_dir(repo_dir).await else {
        return Vec::new();
    };
    let removed =
        tokio::task::spawn_blocking(move || remove_stale_ref_locks(&common, STALE_REF_LOCK_AGE))
            .await
            .unwrap_or_default();
    for lock in &removed {
        tracing::warn!(
            lock = %lock.path.display(),
            age_secs = lock.age.as_secs(),
            "removed an abandoned git ref lock"
        );
    }
    removed
}

/// When this process started (as far as these locks go): set at start-up
/// ([`note_process_start`]), else at the first question, which comes before any ref change of a
/// task's branch in this process.
static PROCESS_STARTED: std::sync::LazyLock<SystemTime> = std::sync::LazyLock::new(SystemTime::now);

/// Fixes the time [`break_own_branch_lock`] counts from; called once at start-up.
pub(crate) fn note_process_start() {
    std::sync::LazyLock::force(&PROCESS_STARTED);
}

/// Removes the lock of a task's own branch (`refs/heads/glitchlab/…`) when it is older than this
/// process. Such a branch changes only in the service, one step of its task at a time, so a lock
/// from before this process started is a killed writer's: the service `kill -9`ed during an
/// in-process ref change (a `git` child would have finished its change and removed the lock).
/// Waiting for [`STALE_REF_LOCK_AGE`] instead would spend the task's stage retries on it.
/// Answers the removed lock; any other branch is left to [`break_stale_ref_locks`].
pub(crate) async fn break_own_branch_lock(common: &Path, branch: &str) -> Option<RemovedLock> {
    if !branch.starts_with("glitchlab/") || branch.split('/').any(|part| part == "..") {
        return None;
    }
    let path = common.join("refs/heads").join(format!("{branch}.lock"));
    let started = *PROCESS_STARTED;
    let removed = tokio::task::spawn_blocking(move || remove_if_older(&path, started))
        .await
        .ok()
        .flatten();
    if let Some(lock) = &removed {
        tracing::warn!(
            lock = %lock.path.display(),
            age_secs = lock.age.as_secs(),
            "removed the lock a killed process left on a task's branch"
        );
    }
    removed
}

/// Removes `path` when it is a file (never a link) last changed before `started`.
fn remove_if_older(path: &Path, started: SystemTime) -> Option<RemovedLock> {
    let metadata = std::fs::symlink_metadata(path).ok()?;
    let modified = metadata.modified().ok()?;
    if !metadata.is_file() || modified >= started {
        return None;
    }
    std::fs::remove_file(path).ok()?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    Some(RemovedLock {
        path: path.to_path_buf(),
        age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets `path`'s modification time `age` into the past.
    fn age_file(path: &Path, age: Duration) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    }

    /// Old ref locks go, fresh ones and index locks stay, and a link is never followed.
    #[test]
    fn only_abandoned_ref_locks_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let common = root.path().join(".git");
        std::fs::create_dir_all(common.join("refs/heads/glitchlab")).unwrap();
        std::fs::create_dir_all(common.join("worktrees/t1")).unwrap();
        let old = Duration::from_secs(60);
        let stale = [
            common.join("packed-refs.lock"),
            common.join("HEAD.lock"),
            common.join("refs/heads/main.lock"),
            common.join("refs/heads/glitchlab/t1.lock"),
            common.join("worktrees/t1/HEAD.lock"),
        ];
        for path in &stale {
            std::fs::write(path, "").unwrap();
            age_file(path, old);
        }
        let fresh = common.join("refs/heads/fresh.lock");
        std::fs::write(&fresh, "").unwrap();
        let index = common.join("index.lock");
        std::fs::write(&index, "").unwrap();
        age_file(&index, old);
        let outside = root.path().join("precious");
        std::fs::write(&outside, "keep").unwrap();
        age_file(&outside, old);
        std::os::unix::fs::symlink(&outside, common.join("refs/heads/link.lock")).unwrap();

        let mut removed: Vec<PathBuf> = remove_stale_ref_locks(&common, STALE_REF_LOCK_AGE)
            .into_iter()
            .map(|lock| {
                assert!(lock.age >= Duration::from_secs(59), "{lock:?}");
                lock.path
            })
            .collect();
        removed.sort();
        let mut expected = stale.to_vec();
        expected.sort();
        assert_eq!(removed, expected);
        assert!(stale.iter().all(|path| !path.exists()));
        assert!(fresh.exists() && index.exists() && outside.exists());
        assert!(common
            .join("refs/heads/link.lock")
            .symlink_metadata()
            .is_ok());
    }
}
