//! Git: repository checks at the ingress, worktrees for Patch, commits, and delivery into the
//! base branch. Changes go through the `git` binary (every call with a timeout and bounded
//! output); read-only questions are answered in-process by [`read`] (gix), a process saved each.

pub(crate) mod candidate;
pub(crate) mod read;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, PoisonError, Weak};
use std::time::Duration;

use crate::platform::process::{self, CommandSpec};

/// Git output is small; this bounds it all the same.
const GIT_OUTPUT_BYTES_MAX: usize = 64 * 1024;
/// Bound on a list of paths git prints (what a change touches): a decision is made on every line
/// of it, so a longer list is refused rather than checked in part.
const GIT_PATH_LIST_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Who glitchlab's commits are by, so commits work on machines with no git identity configured.
const COMMITTER: [&str; 4] = [
    "-c",
    "user.name=glitchlab",
    "-c",
    "user.email=glitchlab@localhost",
];

/// Every commit and merge would otherwise start `git maintenance run --auto` (a process, ≈ 3 ms,
/// on a task's critical path twice); glitchlab runs it itself every
/// [`MAINTENANCE_EVERY_DELIVERIES`] deliveries of a repository instead ([`Git::maintain_now_and_then`]).
const NO_AUTO_MAINTENANCE: [&str; 4] = ["-c", "maintenance.auto=false", "-c", "gc.auto=0"];

/// Deliveries into one repository between two `git maintenance run --auto`.
pub(crate) const MAINTENANCE_EVERY_DELIVERIES: u32 = 16;
/// Repositories whose delivery count is kept; past it the counts start over.
const MAINTENANCE_REPOS_MAX: usize = 1024;

/// A git command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GitError {
    /// `git` could not be started.
    #[error(transparent)]
    Spawn(#[from] process::SpawnError),
    /// `git` ran past its timeout and was killed.
    #[error("`git {args}` timed out")]
    Timeout {
        /// The arguments, for the message.
        args: String,
    },
    /// `git` exited non-zero.
    #[error("`git {args}` failed: {stderr}")]
    Failed {
        /// The arguments, for the message.
        args: String,
        /// What git said.
        stderr: String,
    },
}

/// The lock that serializes worktree administration (`git worktree add|prune|remove`) in one
/// repository. Concurrent ones race on `.git/worktrees/`: an add can read another add's
/// half-written `commondir` ("failed to read ... commondir"), and a prune can delete an add in
/// progress. Entries live while someone holds their lock, so the map is bounded by the
/// repositories being worked on.
fn worktree_lock(repo: &Path) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = std::sync::Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>;
    static LOCKS: LazyLock<Locks> = LazyLock::new(Locks::default);
    let mut locks = LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    locks.retain(|_, lock| lock.strong_count() > 0);
    if let Some(lock) = locks.get(repo).and_then(Weak::upgrade) {
        return lock;
    }
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    locks.insert(repo.to_path_buf(), Arc::downgrade(&lock));
    lock
}

/// Git in one directory, with one timeout.
#[derive(Debug, Clone)]
pub(crate) struct Git {
    dir: PathBuf,
    timeout: Duration,
}

impl Git {
    /// Git commands run with `dir` as their working directory.
    pub(crate) fn new(dir: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            dir: dir.into(),
            timeout,
        }
    }

    /// Runs `git <args>` and returns trimmed stdout.
    pub(crate) async fn run(&self, args: &[&str]) -> Result<String, GitError> {
        self.run_configured(&NO_AUTO_MAINTENANCE, args).await
    }

    /// Runs `git maintenance run --auto` (git decides whether there is work) on every
    /// [`MAINTENANCE_EVERY_DELIVERIES`]th call for this repository: what the commits and merges
    /// glitchlab makes with auto-maintenance off would each have started. Failures are only
    /// logged: maintenance is housekeeping, never a reason to fail a task.
    pub(crate) async fn maintain_now_and_then(&self) {
        if !maintenance_due(&self.dir) {
            return;
        }
        let args = ["maintenance", "run", "--auto", "--quiet"];
        if let Err(error) = self.run_configured(&[], &args).await {
            tracing::warn!(repo = %self.dir.display(), %error, "git maintenance failed");
        }
    }

    /// Runs `git <args>` whose every output line matters (a list of paths): up to
    /// `GIT_PATH_LIST_BYTES_MAX`, and an error rather than a list with its middle cut out.
    pub(crate) async fn run_listing(&self, args: &[&str]) -> Result<String, GitError> {
        let (text, truncated_bytes) = self
            .run_bounded(&NO_AUTO_MAINTENANCE, args, GIT_PATH_LIST_BYTES_MAX)
            .await?;
        if truncated_bytes > 0 {
            return Err(GitError::Failed {
                args: args.join(" "),
                stderr: format!(
                    "printed more than {GIT_PATH_LIST_BYTES_MAX} bytes of paths; refusing to \
                     decide on part of them"
                ),
            });
        }
        Ok(text)
    }

    /// Stages everything that changed in the worktree.
    pub(crate) async fn stage_all(&self) -> Result<(), GitError> {
        self.run(&["add", "-A"]).await.map(|_| ())
    }

    /// Every path the staged tree changes since it left `base` (the merge base of `base` and
    /// `HEAD`): staged edits and whatever was committed on the branch, both sides of a rename.
    /// Read NUL-separated, so no path name can hide from a check.
    pub(crate) async fn changed_since(&self, base: &str) -> Result<Vec<String>, GitError> {
        let args = [
            "diff",
            "--cached",
            "--merge-base",
            base,
            "--name-only",
            "-z",
            "--no-renames",
        ];
        let listing = self.run_listing(&args).await?;
        Ok(listing
            .split('\0')
            .filter(|path| !path.is_empty())
            .map(str::to_owned)
            .collect())
    }

    async fn run_configured(&self, config: &[&str], args: &[&str]) -> Result<String, GitError> {
        Ok(self
            .run_bounded(config, args, GIT_OUTPUT_BYTES_MAX)
            .await?
            .0)
    }

    /// Runs git; answers its trimmed stdout and how many bytes of it the bound cut out.
    async fn run_bounded(
        &self,
        config: &[&str],
        args: &[&str],
        output_bytes_max: usize,
    ) -> Result<(String, u64), GitError> {
        let mut all_args: Vec<String> = COMMITTER.iter().map(|s| (*s).to_owned()).collect();
        all_args.extend(config.iter().map(|s| (*s).to_owned()));
        all_args.extend(args.iter().map(|s| (*s).to_owned()));
        let spec = CommandSpec {
            program: "git".into(),
            args: all_args,
            cwd: self.dir.clone(),
            // The basics only: no secret of the service's environment, and no stray `GIT_DIR`
            // or `GIT_INDEX_FILE`, reaches git.
            env: crate::platform::executor::passed_env()
                .into_iter()
                .chain([
                    ("GIT_TERMINAL_PROMPT".into(), "0".into()),
                    ("GIT_EDITOR".into(), "true".into()),
                ])
                .collect(),
            env_clear: true,
            timeout: self.timeout,
            output_bytes_max,
        };
        let output = process::run(&spec).await?;
        let joined = args.join(" ");
        if output.timed_out {
            return Err(GitError::Timeout { args: joined });
        }
        if !output.success() {
            let mut stderr = output.stderr.text.trim().to_owned();
            if stderr.is_empty() {
                stderr = output.stdout.text.trim().to_owned();
            }
            return Err(GitError::Failed {
                args: joined,
                stderr,
            });
        }
        Ok((
            output.stdout.text.trim().to_owned(),
            output.stdout.truncated_bytes,
        ))
    }

    /// Where the directory sits in a repository, asked of the `git` binary: intake's answer when
    /// gix cannot tell ([`read::locate`]). Any failure of git's counts as no repository.
    pub(crate) async fn location(&self) -> read::Location {
        if !tokio::fs::metadata(&self.dir)
            .await
            .is_ok_and(|m| m.is_dir())
        {
            return read::Location::Outside;
        }
        let Ok(answer) = self
            .run(&["rev-parse", "--is-bare-repository", "--is-inside-git-dir"])
            .await
        else {
            return read::Location::Outside;
        };
        let mut answers = answer.lines().map(|line| line.trim() == "true");
        match (answers.next(), answers.next()) {
            (Some(true), _) => read::Location::Bare,
            (_, Some(true)) => read::Location::GitDir { work_tree: None },
            _ => match self.run(&["rev-parse", "--show-toplevel"]).await {
                Ok(top) => read::Location::WorkTree(PathBuf::from(top)),
                Err(_) => read::Location::Outside,
            },
        }
    }

    /// Whether a local branch exists.
    pub(crate) async fn branch_exists(&self, branch: &str) -> bool {
        let reference = format!("refs/heads/{branch}");
        self.run(&["rev-parse", "--verify", "--quiet", &reference])
            .await
            .is_ok()
    }

    /// The commit a revision names.
    pub(crate) async fn rev_parse(&self, revision: &str) -> Result<String, GitError> {
        let spec = format!("{revision}^{{commit}}");
        self.run(&["rev-parse", "--verify", &spec]).await
    }

    /// Makes (or reuses) the worktree at `path` on `branch`, starting from `base` when new.
    ///
    /// The hot path spawns at most one git process: a worktree already on `branch` is recognised
    /// from its files (`.git` → its git dir → `HEAD`), and a new task's worktree and branch are
    /// made by one `worktree add -b`; only when that fails (the branch exists, a stale entry of a
    /// crashed run) does it prune and try the slower way.
    pub(crate) async fn ensure_worktree(
        &self,
        path: &Path,
        branch: &str,
        base: &str,
    ) -> Result<Worktree, GitError> {
        if worktree_branch(path).await.as_deref() == Some(branch) {
            return Ok(Worktree::Existing);
        }
        let path_text = path.display().to_string();
        let lock = worktree_lock(&self.dir);
        let _serialized = lock.lock().await;
        if tokio::fs::try_exists(path).await.unwrap_or(true) {
            // A half-made worktree from a crash: start it again.
            let _ = self
                .run(&["worktree", "remove", "--force", &path_text])
                .await;
            let _ = tokio::fs::remove_dir_all(path).await;
        }
        self.remove_half_made_admin_dir(path).await;
        let new_branch = ["worktree", "add", "-b", branch, &path_text, base];
        if self.run(&new_branch).await.is_ok() {
            return Ok(Worktree::Created);
        }
        self.run(&["worktree", "prune"]).await?;
        self.remove_half_made_admin_dir(path).await;
        if self.branch_exists(branch).await {
            self.run(&["worktree", "add", &path_text, branch]).await?;
        } else {
            self.run(&new_branch).await?;
        }
        Ok(Worktree::Created)
    }

    /// A `git worktree add` killed half-way (its job aborted by a cancel or a persona crash) can
    /// leave `.git/worktrees/<name>` with an empty or missing `commondir`; every later
    /// `worktree add` in the repository then dies reading it ("failed to read .../commondir"),
    /// and `worktree prune` does not take it. With no worktree at `path`, the registration named
    /// after it is nobody's: remove it.
    async fn remove_half_made_admin_dir(&self, path: &Path) {
        let Some(name) = path.file_name() else {
            return;
        };
        if tokio::fs::try_exists(path).await.unwrap_or(true) {
            return;
        }
        let admin = self.dir.join(".git").join("worktrees").join(name);
        if tokio::fs::try_exists(&admin).await.unwrap_or(false) {
            tracing::warn!(admin = %admin.display(), "removing a half-made worktree registration");
            let _ = tokio::fs::remove_dir_all(&admin).await;
        }
    }

    /// Drops uncommitted changes: a cut-off attempt runs again from its last commit.
    pub(crate) async fn discard_uncommitted(&self) -> Result<(), GitError> {
        self.run(&["reset", "--hard", "--quiet", "HEAD"]).await?;
        self.run(&["clean", "-fdq"]).await?;
        Ok(())
    }

    /// Commits what is staged ([`Git::stage_all`]); `None` when nothing is. The new commit's id
    /// is read in-process.
    pub(crate) async fn commit_staged(&self, message: &str) -> Result<Option<String>, GitError> {
        // Commit first and ask why only when it fails: the common case is one process less.
        let committed = self
            .run(&["commit", "--quiet", "--no-verify", "-m", message])
            .await;
        if let Err(error) = committed {
            // `diff --cached --quiet` succeeds when nothing is staged: nothing changed.
            if self.run(&["diff", "--cached", "--quiet"]).await.is_ok() {
                return Ok(None);
            }
            return Err(error);
        }
        read::head_commit(&self.dir).await.map(Some)
    }

    /// Deletes the local `branch`, first pruning registrations of worktrees whose directory is
    /// gone (git refuses to delete a branch a worktree still has checked out). With `only_if_on`,
    /// it is deleted only when its tip is on that branch (nothing would be lost); answers whether
    /// it was deleted. A branch that does not exist is not an error.
    pub(crate) async fn delete_branch(
        &self,
        branch: &str,
        only_if_on: Option<&str>,
    ) -> Result<bool, GitError> {
        if !self.branch_exists(branch).await {
            return Ok(false);
        }
        if let Some(base) = only_if_on {
            let reference = format!("refs/heads/{branch}");
            let merged = self
                .run(&["merge-base", "--is-ancestor", &reference, base])
                .await
                .is_ok();
            if !merged {
                return Ok(false);
            }
        }
        let lock = worktree_lock(&self.dir);
        let _serialized = lock.lock().await;
        self.run(&["worktree", "prune"]).await?;
        self.run(&["branch", "-D", "--quiet", branch]).await?;
        Ok(true)
    }

    /// Removes a worktree; the branch stays.
    pub(crate) async fn remove_worktree(&self, path: &Path) -> Result<(), GitError> {
        let path_text = path.display().to_string();
        let lock = worktree_lock(&self.dir);
        let _serialized = lock.lock().await;
        self.run(&["worktree", "remove", "--force", &path_text])
            .await?;
        Ok(())
    }
}

/// Counts a delivery into `repo`; true on every [`MAINTENANCE_EVERY_DELIVERIES`]th.
fn maintenance_due(repo: &Path) -> bool {
    type Counts = std::sync::Mutex<HashMap<PathBuf, u32>>;
    static COUNTS: LazyLock<Counts> = LazyLock::new(Counts::default);
    let mut counts = COUNTS.lock().unwrap_or_else(PoisonError::into_inner);
    if counts.len() >= MAINTENANCE_REPOS_MAX && !counts.contains_key(repo) {
        counts.clear();
    }
    let count = counts.entry(repo.to_path_buf()).or_insert(0);
    *count += 1;
    *count % MAINTENANCE_EVERY_DELIVERIES == 0
}

/// How [`Git::ensure_worktree`] found the worktree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Worktree {
    /// Made just now from its branch: clean, nothing to discard.
    Created,
    /// It was there already (a resumed or repeated stage): may hold a cut-off run's edits.
    Existing,
}

/// The branch a linked worktree at `path` has checked out, read from its files (no process):
/// `path/.git` names the worktree's git dir, whose `HEAD` names the branch. `None` when there is
/// no such worktree or its `HEAD` is detached.
async fn worktree_branch(path: &Path) -> Option<String> {
    let dot_git = tokio::fs::read_to_string(path.join(".git")).await.ok()?;
    let git_dir = PathBuf::from(dot_git.trim().strip_prefix("gitdir: ")?);
    let git_dir = if git_dir.is_absolute() {
        git_dir
    } else {
        path.join(git_dir)
    };
    let head = tokio::fs::read_to_string(git_dir.join("HEAD")).await.ok()?;
    head.trim()
        .strip_prefix("ref: refs/heads/")
        .map(str::to_owned)
}

/// Whether a git failure is another git process holding a lock: worth retrying, not a verdict.
pub(crate) fn is_lock_contention(error: &GitError) -> bool {
    match error {
        GitError::Failed { stderr, .. } => {
            stderr.contains(".lock")
                && (stderr.contains("File exists") || stderr.contains("Unable to create"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository with one commit on `main`, under `root`.
    async fn repository(root: &Path) -> (PathBuf, Git) {
        let repo_path = root.join("repo");
        std::fs::create_dir_all(&repo_path).unwrap();
        let repo = Git::new(&repo_path, Duration::from_secs(30));
        repo.run(&["init", "-q", "-b", "main"]).await.unwrap();
        std::fs::write(repo_path.join("README.md"), "x\n").unwrap();
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "initial"]).await.unwrap();
        (repo_path, repo)
    }

    #[test]
    fn maintenance_comes_due_every_so_many_deliveries_per_repository() {
        let (one, two) = (Path::new("/nonexistent/one"), Path::new("/nonexistent/two"));
        let due: Vec<bool> = (0..2 * MAINTENANCE_EVERY_DELIVERIES)
            .map(|_| maintenance_due(one))
            .collect();
        let every = MAINTENANCE_EVERY_DELIVERIES as usize;
        assert_eq!(due.iter().filter(|d| **d).count(), 2);
        assert!(due[every - 1] && due[2 * every - 1]);
        assert!(
            !maintenance_due(two),
            "another repository counts on its own"
        );
    }

    /// Many worktrees of one repository made and removed at once, as concurrent tasks do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_worktrees_of_one_repository_do_not_race() {
        let dir = tempfile::tempdir().unwrap();
        let (_, repo) = repository(dir.path()).await;
        for round in 0..3 {
            let jobs: Vec<_> = (0..12)
                .map(|n| {
                    let repo = repo.clone();
                    let path = dir.path().join(format!("wt-{round}-{n}"));
                    tokio::spawn(async move {
                        let branch = format!("b-{round}-{n}");
                        repo.ensure_worktree(&path, &branch, "main").await?;
                        repo.remove_worktree(&path).await
                    })
                })
                .collect();
            for job in jobs {
                job.await.unwrap().unwrap();
            }
        }
    }

    /// A `worktree add` killed half-way leaves its registration with an empty `commondir` (seen
    /// when a persona crash aborted a task's implement): the next `ensure_worktree` of that task
    /// still makes its worktree, on the branch the first try made.
    #[tokio::test]
    async fn a_half_made_worktree_registration_does_not_block_the_next_try() {
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        let path = dir.path().join("task-wt");
        repo.run(&["branch", "glitchlab/t", "main"]).await.unwrap();
        let admin = repo_path.join(".git").join("worktrees").join("task-wt");
        std::fs::create_dir_all(&admin).unwrap();
        // What git writes first (`locked`, so `worktree prune` leaves the entry alone, then
        // `gitdir`), and an empty `commondir`: where a killed `worktree add` stops.
        std::fs::write(admin.join("locked"), "initializing").unwrap();
        let gitdir = format!("{}\n", path.join(".git").display());
        std::fs::write(admin.join("gitdir"), gitdir).unwrap();
        std::fs::write(admin.join("commondir"), "").unwrap();
        assert_eq!(
            repo.ensure_worktree(&path, "glitchlab/t", "main")
                .await
                .unwrap(),
            Worktree::Created
        );
        assert_eq!(worktree_branch(&path).await.as_deref(), Some("glitchlab/t"));
    }
}
