//! Git: repository checks at the ingress, worktrees for Patch, commits, and delivery into the
//! base branch. Changes go through the `git` binary (every call with a timeout and bounded
//! output); read-only questions are answered in-process by [`read`] (gix), a process saved each.

pub(crate) mod candidate;
pub(crate) mod own_worktrees;
pub(crate) mod read;
pub(crate) mod sandbox_dir;
pub(crate) mod staged;
pub(crate) mod stale_locks;
pub(crate) mod write;

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

/// How long git has, once a timeout or a cancel asked it to stop, to remove its lock files.
const GIT_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Every commit and merge would otherwise start `git maintenance run --auto` (a process, ≈ 3 ms,
/// on a task's critical path twice); glitchlab runs it itself every
/// [`MAINTENANCE_EVERY_DELIVERIES`] deliveries of a repository instead ([`Git::maintain_now_and_then`]).
const NO_AUTO_MAINTENANCE: [&str; 4] = ["-c", "maintenance.auto=false", "-c", "gc.auto=0"];

/// Configuration every git the service runs is pinned to, over anything a repository's config
/// says: no filesystem monitor, no hooks, no pager, and only the transports remotes use. With no
/// system or global config ([`pinned_env`]) and the linked worktrees' admin dirs passed
/// explicitly ([`Git::worktree_of`]), no configuration a task could have written is ever read.
const PINNED_CONFIG: [&str; 14] = [
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.pager=cat",
    "-c",
    "protocol.allow=never",
    "-c",
    "protocol.file.allow=always",
    "-c",
    "protocol.ssh.allow=always",
    "-c",
    "protocol.https.allow=always",
];

/// The environment that keeps git off every config file but the repository's own: no
/// `/etc/gitconfig`, no `~/.gitconfig`, no system attributes, no prompts or editors.
fn pinned_env() -> [(String, String); 5] {
    [
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_ATTR_NOSYSTEM", "1"),
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GIT_EDITOR", "true"),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
}

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

/// In-process locks keyed by a path; an entry lives while someone holds its lock, so a map is
/// bounded by the paths being worked on.
type PathLocks = std::sync::Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>;

/// The lock of `key` in `locks`.
fn path_lock(locks: &PathLocks, key: &Path) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = locks.lock().unwrap_or_else(PoisonError::into_inner);
    locks.retain(|_, lock| lock.strong_count() > 0);
    if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
        return lock;
    }
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    locks.insert(key.to_path_buf(), Arc::downgrade(&lock));
    lock
}

/// The lock that serializes worktree administration (`git worktree add|prune|remove`) in one
/// repository. Concurrent ones race on `.git/worktrees/`: an add can read another add's
/// half-written `commondir` ("failed to read ... commondir"), and a prune can delete an add in
/// progress.
fn worktree_lock(repo: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<PathLocks> = LazyLock::new(PathLocks::default);
    path_lock(&LOCKS, repo)
}

/// The lock of one worktree's making, held by `make_worktree` from its first look to its end. An
/// add is registered before its files are checked out, and one cut off by a persona crash runs
/// to its end (`to_the_end`): a retried attempt waits here instead of taking it as made, while
/// other tasks' worktrees never wait for it.
fn making_lock(worktree: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<PathLocks> = LazyLock::new(PathLocks::default);
    path_lock(&LOCKS, worktree)
}

/// Runs `work` to its end even when its caller stops waiting (a cancelled task's future is
/// dropped): git interrupted in the middle of a ref change leaves a lock file behind — a
/// `SIGTERM` that lands between git creating `packed-refs.lock` and registering it for removal
/// does too — and every later change of a branch in that repository is refused until a human
/// deletes it. Each piece of work is bounded by the git timeouts inside it.
async fn to_the_end<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, GitError>> + Send + 'static,
) -> Result<T, GitError> {
    tokio::spawn(work).await.map_err(|error| GitError::Failed {
        args: "(run to its end)".into(),
        stderr: error.to_string(),
    })?
}

/// Git in one directory, with one timeout.
#[derive(Debug, Clone)]
pub(crate) struct Git {
    dir: PathBuf,
    timeout: Duration,
    /// Set for a linked worktree: git is told where its git dir is instead of finding it from
    /// `dir/.git`, which is the sandbox's to write.
    linked: Option<Linked>,
    /// Environment for this runner's calls only (a credential header as `GIT_CONFIG_*`): never
    /// in argv, and left out of `Debug`.
    call_env: CallEnv,
}

/// Extra environment of one runner; its values may be secrets, so `Debug` shows names only.
#[derive(Clone, Default)]
struct CallEnv(Vec<(String, String)>);

impl std::fmt::Debug for CallEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// The service-owned half of a linked worktree: what git reads instead of the files' `.git`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Linked {
    /// `<common>/worktrees/<name>`: the worktree's `HEAD`, index and `commondir`, passed as
    /// `GIT_DIR`. The sandbox never sees it.
    pub admin: PathBuf,
    /// The repository's common git dir (refs, objects, config). The sandbox may read only its
    /// `objects`.
    pub common: PathBuf,
}

impl Git {
    /// Git commands run with `dir` as their working directory, finding the repository from it:
    /// only for a repository's own directory, never a worktree's files ([`Self::worktree_of`]).
    pub(crate) fn new(dir: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            dir: dir.into(),
            timeout,
            linked: None,
            call_env: CallEnv::default(),
        }
    }

    /// This runner with `env` added to every call it makes (e.g. a remote's credential header
    /// as `GIT_CONFIG_*` config, which stays out of argv and logs).
    pub(crate) fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.call_env.0.extend(env);
        self
    }

    /// The directory git runs in (a worktree's files, or the repository).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The worktree's admin and common dirs; `None` for a repository.
    pub(crate) fn linked(&self) -> Option<&Linked> {
        self.linked.as_ref()
    }

    /// The linked worktree of this repository whose files are at `files`: git runs with its admin
    /// dir (`<common>/worktrees/<name of files>`) as `GIT_DIR` and `files` as `GIT_WORK_TREE`, so
    /// nothing a task wrote under `files` (a `.git` file or dir, its config, hooks or
    /// `commondir`) is read. It need not exist yet.
    pub(crate) async fn worktree_of(&self, files: &Path) -> Result<Git, GitError> {
        let common = read::common_dir(&self.dir).await?;
        let name = files.file_name().ok_or_else(|| GitError::Failed {
            args: "worktree".into(),
            stderr: format!("`{}` names no directory", files.display()),
        })?;
        Ok(Git {
            dir: files.to_path_buf(),
            timeout: self.timeout,
            linked: Some(Linked {
                admin: common.join("worktrees").join(name),
                common,
            }),
            call_env: self.call_env.clone(),
        })
    }

    /// The commit `HEAD` names: the worktree's (from its admin dir) or the repository's.
    pub(crate) async fn head(&self) -> Result<String, GitError> {
        match &self.linked {
            Some(linked) => read::worktree_head(&linked.admin, &linked.common).await,
            None => read::head_commit(&self.dir).await,
        }
    }

    /// The tree `HEAD`'s commit has.
    pub(crate) async fn head_tree(&self) -> Result<String, GitError> {
        let head = self.head().await?;
        let repository = self.linked.as_ref().map_or(&self.dir, |l| &l.common);
        read::tree_of(repository, &head).await
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
        if let Some(linked) = &self.linked {
            // In-process, from the index the admin dir holds (no process).
            return staged::changed_since(linked, base).await;
        }
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
        let all_args: Vec<String> = COMMITTER
            .iter()
            .chain(&PINNED_CONFIG)
            .chain(config)
            .chain(args)
            .map(|s| (*s).to_owned())
            .collect();
        // The basics only: no secret of the service's environment, and no stray `GIT_DIR` or
        // `GIT_INDEX_FILE`, reaches git; a linked worktree's own dirs are named explicitly.
        let mut env: Vec<(String, String)> = crate::platform::executor::passed_env()
            .into_iter()
            .chain(pinned_env())
            .collect();
        if let Some(linked) = &self.linked {
            env.push(("GIT_DIR".into(), linked.admin.display().to_string()));
            env.push(("GIT_WORK_TREE".into(), self.dir.display().to_string()));
        }
        env.extend(self.call_env.0.iter().cloned());
        let spec = CommandSpec {
            program: "git".into(),
            args: all_args,
            cwd: self.dir.clone(),
            env,
            env_clear: true,
            timeout: self.timeout,
            output_bytes_max,
            stop_grace: Some(GIT_STOP_GRACE),
        };
        let output =
            to_the_end(async move { process::run(&spec).await.map_err(GitError::from) }).await?;
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

    /// Makes (or reuses) the worktree at `path` on `branch`, starting from `base` when new, and
    /// answers it as a [`Self::worktree_of`] git.
    ///
    /// The hot path spawns no git process: a worktree already on `branch` is recognised from its
    /// service-owned admin dir (`gitdir` names `path`, `HEAD` the branch); a new task's branch
    /// and its worktree are made in-process ([`write::create_branch`], [`write::add_worktree`]);
    /// only when that fails (a stale entry of a crashed run) does it forget the service's stale
    /// registrations and make them with `git worktree add`.
    pub(crate) async fn ensure_worktree(
        &self,
        path: &Path,
        branch: &str,
        base: &str,
    ) -> Result<(Worktree, Git), GitError> {
        let (repo, path, branch, base) = (
            self.clone(),
            path.to_owned(),
            branch.to_owned(),
            base.to_owned(),
        );
        to_the_end(async move { repo.make_worktree(&path, &branch, &base).await }).await
    }

    /// [`Self::ensure_worktree`], run to its end whoever waits for it.
    async fn make_worktree(
        &self,
        path: &Path,
        branch: &str,
        base: &str,
    ) -> Result<(Worktree, Git), GitError> {
        let worktree = self.worktree_of(path).await?;
        let linked = worktree.linked.clone().ok_or_else(|| GitError::Failed {
            args: "worktree".into(),
            stderr: "no admin dir".into(),
        })?;
        // Before the worktree is looked at: one still being made is waited for.
        let making = making_lock(path);
        let _making = making.lock().await;
        // A lock a killed service left on the task's branch (an in-process ref change cut off)
        // would refuse this attempt's every change of it: gone before anything else.
        stale_locks::break_own_branch_lock(&linked.common, branch).await;
        if registered_branch(&linked, path).await.as_deref() == Some(branch) {
            return Ok((Worktree::Existing, worktree));
        }
        let path_text = path.display().to_string();
        let lock = worktree_lock(&self.dir);
        let _serialized = lock.lock().await;
        // A half-made worktree from a crash, or one whose registration is not what it should
        // be: start it again. Its files go first, so its registration counts as stale.
        remove_files(path).await;
        self.remove_half_made_admin_dir(&linked, path).await;
        // Locked with the service's reason: a human's `git worktree prune` must never take this
        // one's registration while its files' `.git` is briefly gone or replaced, and the
        // service's own clean-up knows it for its own.
        let lock_reason = ["--lock", "--reason", own_worktrees::LOCK_REASON];
        let on_branch = [
            &["worktree", "add"][..],
            &lock_reason,
            &[&path_text, branch],
        ]
        .concat();
        // In-process: the branch (a crashed run's is taken as it is, as the slow way below
        // does), then the worktree on it. No git process.
        let added = match write::create_branch(&self.dir, branch, base).await {
            Ok(_) => match write::add_worktree(
                &self.dir,
                path,
                branch,
                own_worktrees::LOCK_REASON,
                self.timeout,
            )
            .await
            {
                Ok(_) => true,
                Err(error) => {
                    tracing::info!(%error, path = %path_text, "in-process worktree add failed: trying git");
                    false
                }
            },
            // No such base, say: git's own words below.
            Err(_) => false,
        };
        if !added {
            self.forget_own_stale_worktrees().await?;
            self.remove_half_made_admin_dir(&linked, path).await;
            if self.branch_exists(branch).await {
                self.run(&on_branch).await?;
            } else {
                // git's own words, when the base is not there.
                let new_branch = [
                    &["worktree", "add"][..],
                    &lock_reason,
                    &["-b", branch, &path_text, base],
                ]
                .concat();
                self.run(&new_branch).await?;
            }
        }
        if registered_branch(&linked, path).await.as_deref() != Some(branch) {
            return Err(GitError::Failed {
                args: format!("worktree add {path_text}"),
                stderr: format!(
                    "the worktree was not registered as `{}`",
                    linked.admin.display()
                ),
            });
        }
        Ok((Worktree::Created, worktree))
    }

    /// A `git worktree add` killed half-way (its job aborted by a cancel or a persona crash) can
    /// leave `<common>/worktrees/<name>` with an empty or missing `commondir`; every later
    /// `worktree add` in the repository then dies reading it ("failed to read .../commondir"),
    /// and `worktree prune` does not take it. With no worktree at `path`, the registration named
    /// after it is nobody's: remove it.
    async fn remove_half_made_admin_dir(&self, linked: &Linked, path: &Path) {
        if tokio::fs::try_exists(path).await.unwrap_or(true) {
            return;
        }
        let admin = &linked.admin;
        if tokio::fs::try_exists(admin).await.unwrap_or(false) {
            tracing::warn!(admin = %admin.display(), "removing a half-made worktree registration");
            let _ = tokio::fs::remove_dir_all(admin).await;
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
        if let Some(linked) = &self.linked {
            // In-process: the index becomes a tree and a commit, the branch moves by CAS.
            return staged::commit(linked, message).await;
        }
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
        self.head().await.map(Some)
    }

    /// Deletes the local `branch`, first forgetting the service's own worktree registrations
    /// whose directory is gone (git refuses to delete a branch a worktree still has checked
    /// out; a human's registration is theirs to prune). With `only_if_on`,
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
        let (repo, branch) = (self.clone(), branch.to_owned());
        to_the_end(async move {
            let lock = worktree_lock(&repo.dir);
            let _serialized = lock.lock().await;
            repo.forget_own_stale_worktrees().await?;
            repo.run(&["branch", "-D", "--quiet", &branch]).await?;
            Ok(true)
        })
        .await
    }

    /// Whether `branch` lacks commits `base` has (the base moved on since the branch was made, or
    /// since it was last rebuilt on it). A missing branch is not behind anything.
    pub(crate) async fn is_behind(&self, branch: &str, base: &str) -> bool {
        if !self.branch_exists(branch).await {
            return false;
        }
        let base = format!("refs/heads/{base}");
        let branch = format!("refs/heads/{branch}");
        self.run(&["merge-base", "--is-ancestor", &base, &branch])
            .await
            .is_err()
    }

    /// Removes a worktree; the branch stays. Its files go first (never followed through a link:
    /// whatever a task left there) — even when the repository can no longer be read — then its
    /// registration, then whatever other registrations of the service's own are stale
    /// ([`own_worktrees`]; never `git worktree prune`, which races a human's `worktree add`).
    pub(crate) async fn remove_worktree(&self, path: &Path) -> Result<(), GitError> {
        let (repo, path) = (self.clone(), path.to_owned());
        to_the_end(async move {
            let lock = worktree_lock(&repo.dir);
            let _serialized = lock.lock().await;
            repo.forget_worktree(&path).await?;
            repo.forget_own_stale_worktrees().await
        })
        .await
    }

    /// Removes a worktree in-process: its files, then its registration (the admin dir with its
    /// `locked` file, only when its `gitdir` names these files). What other worktrees left stale
    /// is the sweep's ([`Self::remove_worktree`]). Serialized with
    /// the other worktree administration of the repository.
    pub(crate) async fn remove_worktree_now(&self, path: &Path) -> Result<(), GitError> {
        let (repo, path) = (self.clone(), path.to_owned());
        to_the_end(async move {
            let lock = worktree_lock(&repo.dir);
            let _serialized = lock.lock().await;
            repo.forget_worktree(&path).await
        })
        .await
    }

    /// Removes the service's own worktree registrations whose files are gone, in-process
    /// ([`own_worktrees::forget_stale`]; the caller holds the repository's worktree lock).
    async fn forget_own_stale_worktrees(&self) -> Result<(), GitError> {
        let common = read::common_dir(&self.dir).await?;
        tokio::task::spawn_blocking(move || own_worktrees::forget_stale(&common))
            .await
            .map_err(|error| GitError::Failed {
                args: "(forget stale worktrees)".into(),
                stderr: error.to_string(),
            })?;
        Ok(())
    }

    /// The files and the registration of the worktree at `path` (the caller holds the lock).
    async fn forget_worktree(&self, path: &Path) -> Result<(), GitError> {
        // Where the files are, before they go (their parent's links resolved).
        let files_at = real_location(path).await;
        remove_files(path).await;
        if tokio::fs::try_exists(path).await.unwrap_or(true) {
            return Err(GitError::Failed {
                args: "worktree remove".into(),
                stderr: format!("could not remove `{}`", path.display()),
            });
        }
        let worktree = self.worktree_of(path).await?;
        if let Some(linked) = worktree.linked() {
            let gitdir = tokio::fs::read_to_string(linked.admin.join("gitdir"))
                .await
                .unwrap_or_default();
            let registered = match Path::new(gitdir.trim()).parent() {
                Some(parent) => real_location(parent).await,
                None => None,
            };
            if registered.is_some() && registered == files_at {
                let _ = tokio::fs::remove_dir_all(&linked.admin).await;
            }
        }
        Ok(())
    }
}

/// Where `path` is with its parent's links resolved (the path itself need not exist).
async fn real_location(path: &Path) -> Option<PathBuf> {
    let parent = tokio::fs::canonicalize(path.parent()?).await.ok()?;
    Some(parent.join(path.file_name()?))
}

/// [`remove_files`], on a thread that may block.
pub(crate) fn remove_files_now(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Removes what is at `path` (a directory tree, a file or a link, not what a link points to).
pub(crate) async fn remove_files(path: &Path) {
    let path = path.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || remove_files_now(&path)).await;
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

/// The branch the linked worktree at `path` has checked out, read from its admin dir (no
/// process, and nothing under `path`, which the sandbox writes): its `gitdir` must name
/// `path/.git` and `path` must exist. `None` when there is no such worktree or its `HEAD` is
/// detached.
async fn registered_branch(linked: &Linked, path: &Path) -> Option<String> {
    if !registered_at(linked, path).await {
        return None;
    }
    let head = tokio::fs::read_to_string(linked.admin.join("HEAD"))
        .await
        .ok()?;
    head.trim()
        .strip_prefix("ref: refs/heads/")
        .map(str::to_owned)
}

/// Whether the admin dir of `linked` is the registration of a worktree at `path` (its `gitdir`
/// names `path/.git`, and `path` exists), read from the admin dir alone.
async fn registered_at(linked: &Linked, path: &Path) -> bool {
    let Ok(gitdir) = tokio::fs::read_to_string(linked.admin.join("gitdir")).await else {
        return false;
    };
    let Some(registered) = Path::new(gitdir.trim()).parent() else {
        return false;
    };
    match (
        tokio::fs::canonicalize(registered).await,
        tokio::fs::canonicalize(path).await,
    ) {
        (Ok(registered), Ok(files)) => registered == files,
        _ => false,
    }
}

/// Whether a git failure is another git process holding a lock: worth retrying, not a verdict.
pub(crate) fn is_lock_contention(error: &GitError) -> bool {
    match error {
        GitError::Failed { stderr, .. } => {
            let git_cli = stderr.contains(".lock")
                && (stderr.contains("File exists") || stderr.contains("Unable to create"));
            // gix's ref transactions say so once their lock wait ran out.
            let gix = stderr.contains("Could not lock");
            // A `git worktree add` of another task half-way through registering its worktree
            // (seen by a concurrent `git fetch` of the same clone): gone a moment later.
            let worktree_registering =
                stderr.contains("failed to read worktrees/") && stderr.contains("commondir");
            git_cli || gix || worktree_registering
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worktree_half_registered_is_contention_not_a_verdict() {
        let failed = |stderr: &str| GitError::Failed {
            args: "fetch".into(),
            stderr: stderr.into(),
        };
        assert!(is_lock_contention(&failed(
            "fatal: failed to read worktrees/01a2/commondir: Success"
        )));
        assert!(!is_lock_contention(&failed(
            "fatal: couldn't find remote ref main"
        )));
    }

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

    /// A worktree still being made (its first `ensure_worktree` cut off by a persona crash runs to
    /// its end meanwhile) is waited for, not taken as made: the retried attempt's
    /// `ensure_worktree` answers once every file is there. (Taken as made, the retry's
    /// `git reset --hard` ran into the checkout: "unable to create file README.md".)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worktree_being_made_is_waited_for_not_taken_as_made() {
        const FILES: usize = 3000;
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        for n in 0..FILES {
            std::fs::write(repo_path.join(format!("f{n}.txt")), format!("{n}\n")).unwrap();
        }
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "many files"]).await.unwrap();
        let path = dir.path().join("worktrees").join("t7");
        let first = {
            let (repo, path) = (repo.clone(), path.clone());
            tokio::spawn(async move { repo.ensure_worktree(&path, "glitchlab/t7", "main").await })
        };
        // The retry comes as soon as the first has registered the worktree.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !path.join(".git").exists() && !first.is_finished() {
            assert!(std::time::Instant::now() < deadline, "never registered");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        repo.ensure_worktree(&path, "glitchlab/t7", "main")
            .await
            .unwrap();
        let missing = (0..FILES)
            .filter(|n| !path.join(format!("f{n}.txt")).exists())
            .count();
        assert_eq!(
            missing, 0,
            "the retry answered before the checkout was done"
        );
        first.await.unwrap().unwrap();
        // Only that worktree's making is waited for: with the repository's worktree
        // administration busy (another task's add or removal), a made one answers at once.
        let busy = worktree_lock(&repo_path);
        let _busy = busy.lock().await;
        let existing = tokio::time::timeout(
            Duration::from_secs(10),
            repo.ensure_worktree(&path, "glitchlab/t7", "main"),
        )
        .await
        .expect("a made worktree waited for the repository's administration")
        .unwrap();
        assert!(matches!(existing.0, Worktree::Existing));
    }

    /// `write::add_worktree` of `branch` at `path`, as `ensure_worktree` asks it (the service's
    /// lock reason, a 30 s bound).
    async fn add_in_process(
        repo_path: &Path,
        path: &Path,
        branch: &str,
    ) -> Result<PathBuf, GitError> {
        write::add_worktree(
            repo_path,
            path,
            branch,
            own_worktrees::LOCK_REASON,
            Duration::from_secs(30),
        )
        .await
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

    /// The in-process worktree is one git takes for its own: registered under the path's name and
    /// locked with the service's reason, checked out with modes and links, its index's stat
    /// data matching the files (no refresh needed), `HEAD` on the branch with a reflog.
    #[tokio::test]
    async fn a_worktree_added_in_process_is_one_git_takes_for_its_own() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        std::fs::create_dir_all(repo_path.join("bin")).unwrap();
        std::fs::write(repo_path.join("bin/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            repo_path.join("bin/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("README.md", repo_path.join("link")).unwrap();
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "more"]).await.unwrap();

        let path = dir.path().join("worktrees").join("t1");
        assert!(write::create_branch(&repo_path, "glitchlab/t1", "main")
            .await
            .unwrap());
        let admin = add_in_process(&repo_path, &path, "glitchlab/t1")
            .await
            .unwrap();
        assert_eq!(admin, repo_path.join(".git/worktrees/t1"));
        let worktree = repo.worktree_of(&path).await.unwrap();
        assert_eq!(worktree.linked().unwrap().admin, admin);
        assert_eq!(
            std::fs::read_to_string(admin.join("locked")).unwrap(),
            format!("{}\n", own_worktrees::LOCK_REASON)
        );
        assert_eq!(
            worktree.head().await.unwrap(),
            repo.rev_parse("main").await.unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(path.join("README.md")).unwrap(),
            "x\n"
        );
        let mode = std::fs::metadata(path.join("bin/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o100, 0o100, "executable");
        assert_eq!(
            std::fs::read_link(path.join("link")).unwrap(),
            Path::new("README.md")
        );
        // Stat data as git would have written it: nothing to refresh, nothing changed.
        worktree.run(&["diff-files", "--quiet"]).await.unwrap();
        assert_eq!(worktree.run(&["status", "--porcelain"]).await.unwrap(), "");
        let listed = repo
            .run(&["worktree", "list", "--porcelain"])
            .await
            .unwrap();
        assert!(
            listed.contains(&format!("worktree {}", path.display()))
                && listed.contains("branch refs/heads/glitchlab/t1")
                && listed.contains(&format!("locked {}", own_worktrees::LOCK_REASON)),
            "{listed}"
        );
        let reflog = worktree
            .run(&["reflog", "show", "--format=%H", "HEAD"])
            .await
            .unwrap();
        let main = repo.rev_parse("main").await.unwrap();
        assert!(
            !reflog.is_empty() && reflog.lines().all(|line| line == main),
            "{reflog}"
        );
        // Asked again, it is the same worktree; git can remove it as its own.
        let (made, _) = repo
            .ensure_worktree(&path, "glitchlab/t1", "main")
            .await
            .unwrap();
        assert_eq!(made, Worktree::Existing);
        repo.run(&["worktree", "remove", "-f", "-f", path.to_str().unwrap()])
            .await
            .unwrap();
        assert!(!admin.exists());
    }

    /// Every file of a worktree, keyed by its path under `root` (`.git` left out): a link's
    /// target, or a file's bytes and executable bit.
    fn checkout_of(root: &Path) -> std::collections::BTreeMap<PathBuf, (String, Vec<u8>, bool)> {
        use std::os::unix::fs::PermissionsExt;
        let mut files = std::collections::BTreeMap::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let relative = path.strip_prefix(root).unwrap().to_path_buf();
                if relative == Path::new(".git") {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path).unwrap();
                    files.insert(
                        relative,
                        (
                            "link".into(),
                            target.into_os_string().into_encoded_bytes(),
                            false,
                        ),
                    );
                } else if meta.is_dir() {
                    pending.push(path);
                } else {
                    let executable = meta.permissions().mode() & 0o100 != 0;
                    files.insert(
                        relative,
                        ("file".into(), std::fs::read(&path).unwrap(), executable),
                    );
                }
            }
        }
        files
    }

    /// The in-process checkout writes what git's own would, byte for byte: `.gitattributes`
    /// line endings (`eol=crlf`, `eol=lf`, `binary`), names with spaces and non-ASCII letters,
    /// empty files, executable bits, links to files and to directories. A file written otherwise
    /// than git writes it would be a change the task never made. `ident`, which gix expands
    /// otherwise (`$Id: <hash>$`), is left to git: a branch whose attributes ask for it is
    /// refused in-process, and the worktree `ensure_worktree` makes from it is git's.
    #[tokio::test]
    async fn an_in_process_checkout_matches_gits_own_byte_for_byte() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        let write = |name: &str, bytes: &[u8]| {
            let path = repo_path.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        write(
            ".gitattributes",
            b"*.txt text eol=crlf\n*.lf text eol=lf\n*.bin binary\n",
        );
        write("notes.txt", b"one\ntwo\n");
        write("unix.lf", b"x\r\ny\n");
        write("blob.bin", b"a\r\nb\n\0c\r\n");
        write("dir with space/\u{fc}n\u{ef}c\u{f6}de.md", b"u\n");
        write("deep/a/b/c/d/leaf.txt", b"leaf\n");
        write("empty", b"");
        write("tool", b"#!/bin/sh\necho hi\n");
        std::fs::set_permissions(
            repo_path.join("tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("dir with space", repo_path.join("to-dir")).unwrap();
        std::os::unix::fs::symlink("notes.txt", repo_path.join("to-file")).unwrap();
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "variety"]).await.unwrap();

        let ours = dir.path().join("worktrees").join("t4");
        assert!(write::create_branch(&repo_path, "glitchlab/t4", "main")
            .await
            .unwrap());
        add_in_process(&repo_path, &ours, "glitchlab/t4")
            .await
            .unwrap();
        let gits = dir.path().join("by-git");
        let git_add = |at: &Path| {
            let at = at.to_str().unwrap().to_owned();
            let repo = repo.clone();
            async move {
                repo.run(&["worktree", "add", "-q", "--detach", &at, "main"])
                    .await
                    .unwrap();
            }
        };
        git_add(&gits).await;
        let (ours_files, gits_files) = (checkout_of(&ours), checkout_of(&gits));
        assert_eq!(ours_files.len(), 11, "{:?}", ours_files.keys());
        assert_eq!(ours_files, gits_files);
        // The conversions did happen (the comparison is not of two unconverted copies).
        assert_eq!(
            std::fs::read(ours.join("notes.txt")).unwrap(),
            b"one\r\ntwo\r\n"
        );
        assert_eq!(std::fs::read(ours.join("unix.lf")).unwrap(), b"x\ny\n");
        let worktree = repo.worktree_of(&ours).await.unwrap();
        worktree.run(&["diff-files", "--quiet"]).await.unwrap();
        assert_eq!(worktree.run(&["status", "--porcelain"]).await.unwrap(), "");

        // `ident` in a nested `.gitattributes`: git's checkout, not gix's.
        write("sub/.gitattributes", b"*.id ident\n");
        write("sub/stamp.id", b"version $Id$ here\n");
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "ident"]).await.unwrap();
        assert!(write::create_branch(&repo_path, "glitchlab/t5", "main")
            .await
            .unwrap());
        let refused = dir.path().join("worktrees").join("t5-in-process");
        let answer = add_in_process(&repo_path, &refused, "glitchlab/t5").await;
        assert!(
            matches!(&answer, Err(GitError::Failed { stderr, .. }) if stderr.contains("ident")),
            "{answer:?}"
        );
        assert!(!refused.exists(), "nothing was made for it");
        let path = dir.path().join("worktrees").join("t5");
        let (made, _) = repo
            .ensure_worktree(&path, "glitchlab/t5", "main")
            .await
            .unwrap();
        assert_eq!(made, Worktree::Created);
        let gits_now = dir.path().join("by-git-2");
        git_add(&gits_now).await;
        assert_eq!(checkout_of(&path), checkout_of(&gits_now));
        let stamp = String::from_utf8(std::fs::read(path.join("sub/stamp.id")).unwrap()).unwrap();
        assert!(
            stamp.starts_with("version $Id: ") && stamp.ends_with(" $ here\n"),
            "{stamp}"
        );
    }

    /// Each attributes source the service's git reads and gix does not, or that names `ident`,
    /// leaves the checkout to git: a user's `~/.config/git/attributes` that is not empty (unless
    /// `core.attributesFile` points elsewhere), `ident` in `info/attributes`, in the file
    /// `core.attributesFile` names, or in a nested `.gitattributes`, and any of them over 1 MiB
    /// (never read to its end: `/dev/zero` answers), and a configured filter driver. Anything
    /// else is in-process.
    #[tokio::test]
    async fn what_leaves_a_checkout_to_git() {
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".config/git")).unwrap();
        let ask = |home: Option<PathBuf>| {
            let repo_path = repo_path.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let repo = read::open_as_committer(&repo_path).unwrap();
                    write::left_to_git(&repo, "refs/heads/main", home.as_deref()).unwrap()
                })
                .await
                .unwrap()
            }
        };
        let users = home.join(".config/git/attributes");
        std::fs::write(&users, "").unwrap();
        assert_eq!(
            ask(Some(home.clone())).await,
            None,
            "an empty one is nothing"
        );
        std::fs::write(&users, "*.txt eol=crlf\n").unwrap();
        assert!(ask(Some(home.clone()))
            .await
            .unwrap()
            .contains("~/.config/git/attributes"));
        assert_eq!(ask(None).await, None, "no HOME, no user's file");
        let named = dir.path().join("named-attributes");
        std::fs::write(&named, "*.c text\n").unwrap();
        repo.run(&["config", "core.attributesFile", named.to_str().unwrap()])
            .await
            .unwrap();
        assert_eq!(
            ask(Some(home.clone())).await,
            None,
            "core.attributesFile replaces the user's file, and names no ident"
        );
        std::fs::write(&named, "*.c -ident\n").unwrap();
        assert!(ask(Some(home.clone())).await.unwrap().contains("ident"));
        std::fs::write(&named, "*.c text\n").unwrap();
        std::fs::create_dir_all(repo_path.join(".git/info")).unwrap();
        std::fs::write(
            repo_path.join(".git/info/attributes"),
            "[attr]stamp ident\n",
        )
        .unwrap();
        assert!(ask(Some(home.clone())).await.unwrap().contains("ident"));
        std::fs::remove_file(repo_path.join(".git/info/attributes")).unwrap();
        assert_eq!(ask(Some(home.clone())).await, None);
        std::fs::create_dir_all(repo_path.join("a/b")).unwrap();
        std::fs::write(repo_path.join("a/b/.gitattributes"), "*.h\tident\n").unwrap();
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "nested"]).await.unwrap();
        assert!(ask(Some(home.clone())).await.unwrap().contains("ident"));
        // Reads are bounded: a device named as the attributes file, a task's huge one.
        repo.run(&["config", "core.attributesFile", "/dev/zero"])
            .await
            .unwrap();
        assert!(ask(Some(home.clone()))
            .await
            .unwrap()
            .contains("over 1 MiB"));
        repo.run(&["config", "core.attributesFile", named.to_str().unwrap()])
            .await
            .unwrap();
        std::fs::remove_file(repo_path.join("a/b/.gitattributes")).unwrap();
        let huge = "*.x text\n".repeat(200_000);
        std::fs::write(repo_path.join(".gitattributes"), huge).unwrap();
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "huge"]).await.unwrap();
        assert!(ask(Some(home.clone()))
            .await
            .unwrap()
            .contains("over 1 MiB"));
        std::fs::remove_file(repo_path.join(".gitattributes")).unwrap();
        repo.run(&["commit", "-qam", "no attributes"])
            .await
            .unwrap();
        assert_eq!(ask(Some(home.clone())).await, None);
        // A configured filter driver (git-lfs's, say) would be started by gix outside the
        // service's process bounds: git runs the checkout.
        repo.run(&["config", "filter.lfs.process", "git-lfs filter-process"])
            .await
            .unwrap();
        assert!(ask(Some(home)).await.unwrap().contains("filter driver"));
    }

    /// A crashed run's branch is checked out again as the task left it, and the task wrote it:
    /// links out of the worktree (absolute, relative with `..`, and through another link) and an
    /// embedded repository. The in-process checkout makes the links links, writes nothing through
    /// them, leaves the embedded repository an empty directory (git's gitlink), and nothing
    /// outside the worktree changes.
    #[tokio::test]
    async fn a_hostile_branch_is_checked_out_again_without_writing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "keep\n").unwrap();
        // The branch as a crashed run left it, made here in a scratch worktree.
        repo.run(&["branch", "glitchlab/t6", "main"]).await.unwrap();
        let scratch = dir.path().join("scratch");
        let scratch_text = scratch.to_str().unwrap();
        repo.run(&["worktree", "add", "-q", scratch_text, "glitchlab/t6"])
            .await
            .unwrap();
        std::os::unix::fs::symlink(&outside, scratch.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../outside/secret", scratch.join("rel-link")).unwrap();
        std::os::unix::fs::symlink("abs-link/secret", scratch.join("through")).unwrap();
        let embedded = Git::new(scratch.join("embedded"), Duration::from_secs(30));
        std::fs::create_dir_all(scratch.join("embedded")).unwrap();
        embedded.run(&["init", "-q", "-b", "main"]).await.unwrap();
        embedded
            .run(&["commit", "-q", "--allow-empty", "-m", "inner"])
            .await
            .unwrap();
        let task = Git::new(&scratch, Duration::from_secs(30));
        task.run(&["add", "-A"]).await.unwrap();
        task.run(&["commit", "-qm", "hostile"]).await.unwrap();
        repo.run(&["worktree", "remove", "-f", "-f", scratch_text])
            .await
            .unwrap();

        assert!(
            !write::create_branch(&repo_path, "glitchlab/t6", "main")
                .await
                .unwrap(),
            "the crashed run's branch is taken as it is"
        );
        let path = dir.path().join("worktrees").join("t6");
        add_in_process(&repo_path, &path, "glitchlab/t6")
            .await
            .unwrap();
        for (link, target) in [
            ("abs-link", outside.clone()),
            ("rel-link", PathBuf::from("../outside/secret")),
            ("through", PathBuf::from("abs-link/secret")),
        ] {
            let meta = std::fs::symlink_metadata(path.join(link)).unwrap();
            assert!(meta.file_type().is_symlink(), "{link}");
            assert_eq!(std::fs::read_link(path.join(link)).unwrap(), target);
        }
        let inner = std::fs::read_dir(path.join("embedded")).unwrap().count();
        assert_eq!(inner, 0, "a gitlink is an empty directory");
        let left: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["secret"]);
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "keep\n"
        );
        let worktree = repo.worktree_of(&path).await.unwrap();
        assert_eq!(worktree.run(&["status", "--porcelain"]).await.unwrap(), "");
    }

    /// An in-process add past its bound is interrupted and undone before it answers: no admin dir,
    /// no files, nothing for the `git worktree add` fallback to race; the next try makes it whole.
    #[tokio::test]
    async fn an_in_process_add_past_its_bound_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        for n in 0..2000 {
            std::fs::write(repo_path.join(format!("f{n}.txt")), format!("{n}\n")).unwrap();
        }
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "many"]).await.unwrap();
        assert!(write::create_branch(&repo_path, "glitchlab/t3", "main")
            .await
            .unwrap());
        let path = dir.path().join("worktrees").join("t3");
        for bound in [Duration::ZERO, Duration::from_millis(3)] {
            let answer = write::add_worktree(
                &repo_path,
                &path,
                "glitchlab/t3",
                own_worktrees::LOCK_REASON,
                bound,
            )
            .await;
            if answer.is_ok() {
                // Done within the bound on a fast machine: take it apart for the next round.
                repo.run(&["worktree", "remove", "-f", "-f", path.to_str().unwrap()])
                    .await
                    .unwrap();
                continue;
            }
            assert!(
                matches!(answer, Err(GitError::Timeout { .. })),
                "{answer:?}"
            );
            let admins = std::fs::read_dir(repo_path.join(".git/worktrees"))
                .map(|entries| entries.count())
                .unwrap_or(0);
            assert_eq!(admins, 0, "an admin dir was left");
            let files = std::fs::read_dir(&path).map(|e| e.count()).unwrap_or(0);
            assert_eq!(files, 0, "files were left in {}", path.display());
        }
        let (made, worktree) = repo
            .ensure_worktree(&path, "glitchlab/t3", "main")
            .await
            .unwrap();
        assert_eq!(made, Worktree::Created);
        assert_eq!(worktree.run(&["status", "--porcelain"]).await.unwrap(), "");
        assert!(path.join("f1999.txt").exists());
    }

    /// A lock a killed service left on a task's branch (older than this process) goes at the next
    /// `ensure_worktree`; a fresh one (this process's own writer) and another branch's stay.
    #[tokio::test]
    async fn a_task_branch_lock_older_than_the_process_goes_and_a_fresh_one_stays() {
        stale_locks::note_process_start();
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        let heads = repo_path.join(".git/refs/heads");
        std::fs::create_dir_all(heads.join("glitchlab")).unwrap();
        let old = heads.join("glitchlab/t2.lock");
        let other = heads.join("feature.lock");
        for lock in [&old, &other] {
            std::fs::write(lock, "").unwrap();
            let file = std::fs::File::options().write(true).open(lock).unwrap();
            file.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
                .unwrap();
        }
        let path = dir.path().join("worktrees").join("t2");
        let (made, worktree) = repo
            .ensure_worktree(&path, "glitchlab/t2", "main")
            .await
            .unwrap();
        assert_eq!(made, Worktree::Created);
        assert!(!old.exists(), "the killed writer's lock is gone");
        assert!(
            other.exists(),
            "another branch's lock is not the service's to take"
        );
        // A lock made after this process started is a live writer's: left alone, and the
        // branch cannot change meanwhile.
        let fresh = heads.join("glitchlab/t2.lock");
        std::fs::write(&fresh, "").unwrap();
        let linked = worktree.linked().unwrap();
        assert!(
            stale_locks::break_own_branch_lock(&linked.common, "glitchlab/t2")
                .await
                .is_none()
        );
        assert!(fresh.exists());
        assert!(worktree.discard_uncommitted().await.is_err());
    }

    /// A new task's branch is made in-process at the base's commit, with git's reflog line; an
    /// existing one is left where it is (a crashed run's, taken as it is); a base that names
    /// nothing is an error, and `ensure_worktree` then answers with git's own words.
    #[tokio::test]
    async fn a_new_branch_is_made_in_process_and_an_existing_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        let main = repo.rev_parse("main").await.unwrap();
        assert!(write::create_branch(&repo_path, "glitchlab/a", "main")
            .await
            .unwrap());
        assert_eq!(repo.rev_parse("glitchlab/a").await.unwrap(), main);
        let reflog = repo
            .run(&["reflog", "show", "--format=%gs", "glitchlab/a"])
            .await
            .unwrap();
        assert_eq!(reflog, "branch: Created from main");

        std::fs::write(repo_path.join("more.txt"), "more\n").unwrap();
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "more"]).await.unwrap();
        assert!(!write::create_branch(&repo_path, "glitchlab/a", "main")
            .await
            .unwrap());
        assert_eq!(repo.rev_parse("glitchlab/a").await.unwrap(), main, "moved");
        assert!(write::create_branch(&repo_path, "glitchlab/b", "nope")
            .await
            .is_err());

        let path = dir.path().join("worktrees").join("b");
        let error = repo
            .ensure_worktree(&path, "glitchlab/b", "nope")
            .await
            .unwrap_err();
        assert!(error.to_string().contains("nope"), "{error}");
        assert!(!repo.branch_exists("glitchlab/b").await);
        let (made, worktree) = repo
            .ensure_worktree(&path, "glitchlab/b", "main")
            .await
            .unwrap();
        assert_eq!(made, Worktree::Created);
        assert_eq!(
            worktree.head().await.unwrap(),
            repo.rev_parse("main").await.unwrap()
        );
        let path = dir.path().join("worktrees").join("a");
        let (_, kept) = repo
            .ensure_worktree(&path, "glitchlab/a", "main")
            .await
            .unwrap();
        assert_eq!(
            kept.head().await.unwrap(),
            main,
            "the existing branch as it is"
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
        let left = std::fs::read_dir(dir.path().join("repo/.git/worktrees"))
            .map(|entries| entries.count())
            .unwrap_or(0);
        assert_eq!(
            left, 0,
            "every (locked) registration went with its worktree"
        );
    }

    /// The service's worktree removals leave a human's registrations alone: one caught half-way
    /// through the human's own `git worktree add` (its admin dir made, nothing written yet:
    /// `git worktree prune` took it, and the human's add died "couldn't set 'HEAD'") and one
    /// whose files are on a disk not mounted now. The service's own stale one goes.
    #[tokio::test]
    async fn removing_a_worktree_leaves_a_humans_registrations_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        let registrations = repo_path.join(".git").join("worktrees");
        let stale = dir.path().join("stale");
        repo.ensure_worktree(&stale, "glitchlab/stale", "main")
            .await
            .unwrap();
        std::fs::remove_dir_all(&stale).unwrap();
        let human = dir.path().join("usb").join("human");
        repo.run(&["worktree", "add", "-q", human.to_str().unwrap(), "-b", "h"])
            .await
            .unwrap();
        std::fs::remove_dir_all(dir.path().join("usb")).unwrap();
        std::fs::create_dir_all(registrations.join("being-added")).unwrap();

        let path = dir.path().join("task-wt");
        repo.ensure_worktree(&path, "glitchlab/t", "main")
            .await
            .unwrap();
        repo.remove_worktree(&path).await.unwrap();
        assert!(repo.delete_branch("glitchlab/stale", None).await.unwrap());

        let mut left: Vec<String> = std::fs::read_dir(&registrations)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["being-added", "human"]);
    }

    /// A worktree whose repository was deleted meanwhile still has its files removed (the
    /// error then is about the repository, not left-over files).
    #[tokio::test]
    async fn a_worktree_outliving_its_repository_is_still_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        let path = dir.path().join("task-wt");
        repo.ensure_worktree(&path, "glitchlab/t", "main")
            .await
            .unwrap();
        std::fs::remove_dir_all(&repo_path).unwrap();
        assert!(repo.remove_worktree(&path).await.is_err());
        assert!(!path.exists(), "the task's files stay behind");
    }

    /// A worktree whose files' `.git` is gone for a moment (made anew for a sandboxed run) keeps
    /// its registration through another worktree's `prune`.
    #[tokio::test]
    async fn a_prune_never_takes_a_live_worktree_whose_dot_git_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (_, repo) = repository(dir.path()).await;
        let path = dir.path().join("task-wt");
        let (_, worktree) = repo
            .ensure_worktree(&path, "glitchlab/t", "main")
            .await
            .unwrap();
        std::fs::remove_file(path.join(".git")).unwrap();
        repo.run(&["worktree", "prune"]).await.unwrap();
        assert_eq!(
            worktree.head().await.unwrap(),
            repo.rev_parse("main").await.unwrap()
        );
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
        let (made, worktree) = repo
            .ensure_worktree(&path, "glitchlab/t", "main")
            .await
            .unwrap();
        assert_eq!(made, Worktree::Created);
        let linked = worktree.linked().unwrap();
        assert_eq!(
            registered_branch(linked, &path).await.as_deref(),
            Some("glitchlab/t")
        );
    }

    /// The in-process commit writes exactly the tree `git write-tree` would of the same index —
    /// nested new files, an edit, a deletion, a symlink, an executable — names every changed
    /// path against the base, and moves only the worktree's branch; an index that stages
    /// nothing new commits nothing.
    #[tokio::test]
    async fn the_in_process_commit_is_the_tree_git_would_write() {
        let dir = tempfile::tempdir().unwrap();
        let (repo_path, repo) = repository(dir.path()).await;
        std::fs::write(repo_path.join("gone.txt"), "bye\n").unwrap();
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "more"]).await.unwrap();
        let base = repo.rev_parse("main").await.unwrap();
        let path = dir.path().join("task-wt");
        let (_, worktree) = repo
            .ensure_worktree(&path, "glitchlab/t", "main")
            .await
            .unwrap();
        std::fs::create_dir_all(path.join("a/b")).unwrap();
        std::fs::write(path.join("a/b/deep.txt"), "deep\n").unwrap();
        std::fs::write(path.join("README.md"), "edited\n").unwrap();
        std::fs::remove_file(path.join("gone.txt")).unwrap();
        std::os::unix::fs::symlink("README.md", path.join("link")).unwrap();
        std::fs::write(path.join("run.sh"), "#!/bin/sh\n").unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(path.join("run.sh"), mode).unwrap();
        worktree.stage_all().await.unwrap();
        let changed = worktree.changed_since("main").await.unwrap();
        assert_eq!(
            changed,
            ["README.md", "a/b/deep.txt", "gone.txt", "link", "run.sh"]
        );
        let expected = worktree.run(&["write-tree"]).await.unwrap();
        let commit = worktree.commit_staged("work  \n\n").await.unwrap().unwrap();
        assert_eq!(repo.rev_parse("glitchlab/t").await.unwrap(), commit);
        assert_eq!(read::tree_of(&repo_path, &commit).await.unwrap(), expected);
        let parent = repo.rev_parse(&format!("{commit}~1")).await.unwrap();
        assert_eq!(parent, base);
        assert_eq!(
            repo.rev_parse("main").await.unwrap(),
            base,
            "the base moved"
        );
        let message = repo
            .run(&["log", "-1", "--format=%B%an", &commit])
            .await
            .unwrap();
        assert_eq!(message, "work\nglitchlab");
        assert_eq!(worktree.commit_staged("again").await.unwrap(), None);
        assert_eq!(worktree.run(&["status", "--porcelain"]).await.unwrap(), "");
    }

    /// What a task may write in its worktree's files — a `.git` of its own with an fsmonitor,
    /// hooks and a `commondir` pointing at planted config — is never read by the service's git:
    /// staging and committing go through the admin dir, and the branch moves only by that commit.
    #[tokio::test]
    async fn a_planted_dot_git_in_the_files_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let (_, repo) = repository(dir.path()).await;
        let path = dir.path().join("task-wt");
        let (_, worktree) = repo
            .ensure_worktree(&path, "glitchlab/t", "main")
            .await
            .unwrap();
        sandbox_dir::give_sandbox_git_dir(&worktree, &["refs/heads/main".to_owned()])
            .await
            .unwrap();
        let marker = dir.path().join("pwned");
        let evil = format!(
            "[core]\n\tfsmonitor = touch {m}\n\thooksPath = hooks\n\tpager = touch {m}\n",
            m = marker.display()
        );
        let dot_git = path.join(".git");
        std::fs::write(dot_git.join("config"), &evil).unwrap();
        std::fs::write(dot_git.join("commondir"), dir.path().display().to_string()).unwrap();
        std::fs::write(dir.path().join("config"), &evil).unwrap();
        std::fs::create_dir_all(dot_git.join("hooks")).unwrap();
        std::fs::write(path.join("new.txt"), "work\n").unwrap();
        worktree.stage_all().await.unwrap();
        assert_eq!(
            worktree.changed_since("main").await.unwrap(),
            vec!["new.txt".to_owned()]
        );
        let commit = worktree.commit_staged("work").await.unwrap().unwrap();
        assert_eq!(repo.rev_parse("glitchlab/t").await.unwrap(), commit);
        worktree.discard_uncommitted().await.unwrap();
        assert!(!marker.exists(), "a planted command ran");
        // The sandbox's `.git` is no part of the tree.
        let files = repo
            .run(&["ls-tree", "-r", "--name-only", "glitchlab/t"])
            .await
            .unwrap();
        assert_eq!(files, "README.md\nnew.txt");
    }
}
