//! Read-only questions answered in-process by `gix` instead of a `git` process each: what a ref
//! or `HEAD` points at, whether a repository is bare and which branch its checkout is on, and
//! whether one commit descends from another. A process costs ~2 ms; these cost microseconds, and
//! a trivial task asks about ten of them. Writes (worktrees, commits, merges) stay with the `git`
//! binary.
//!
//! gix reads files, so every call runs on the blocking pool, never on an async worker. Repositories
//! are opened isolated (no system or user configuration), like the `git` calls, which clear the
//! environment.

use std::path::{Path, PathBuf};

use super::GitError;

/// What a landing needs to know before it moves the base, read in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryFacts {
    /// The commit the base branch points at.
    pub base_commit: String,
    /// Whether the repository is bare (no checkout to move along).
    pub repo_is_bare: bool,
    /// Whether the repository's own checkout is on the base branch.
    pub repo_on_base: bool,
}

/// The commit `HEAD` of the repository or worktree at `dir` points at.
pub(crate) async fn head_commit(dir: &Path) -> Result<String, GitError> {
    let dir = dir.to_path_buf();
    blocking("rev-parse HEAD", move || {
        let repo = open(&dir)?;
        let id = repo.head_id().map_err(failed("rev-parse HEAD"))?;
        Ok(id.detach().to_string())
    })
    .await
}

/// The common git dir of the repository at `dir`: where its refs, objects and linked worktrees'
/// admin dirs live (`<repo>/.git` for a checkout, the repository itself when bare). Canonical.
pub(crate) async fn common_dir(dir: &Path) -> Result<PathBuf, GitError> {
    let dir = dir.to_path_buf();
    blocking("rev-parse --git-common-dir", move || {
        let repo = open(&dir)?;
        std::fs::canonicalize(repo.common_dir()).map_err(failed("canonicalize the git dir"))
    })
    .await
}

/// The commit a linked worktree's `HEAD` names, read from its admin dir — never from the `.git`
/// in its files, which the sandbox writes — and resolved among the common dir's refs.
pub(crate) async fn worktree_head(admin: &Path, common: &Path) -> Result<String, GitError> {
    let head = tokio::fs::read_to_string(admin.join("HEAD"))
        .await
        .map_err(failed("read the worktree's HEAD"))?;
    let head = head.trim().to_owned();
    let Some(reference) = head.strip_prefix("ref: ").map(str::to_owned) else {
        return gix::ObjectId::from_hex(head.as_bytes())
            .map(|id| id.to_string())
            .map_err(failed("read the worktree's detached HEAD"));
    };
    let common = common.to_path_buf();
    blocking("rev-parse HEAD", move || {
        let repo = open(&common)?;
        let id = repo
            .find_reference(reference.as_str())
            .map_err(failed("find the worktree's branch"))?
            .peel_to_id()
            .map_err(failed("peel the worktree's branch"))?;
        Ok(id.detach().to_string())
    })
    .await
}

/// The facts a landing ([`super::candidate::land`]) decides on: where the base points and the
/// repository's checkout, both read from the repository itself (never through a worktree, whose
/// files a task wrote).
pub(crate) async fn delivery_facts(repo: &Path, base: &str) -> Result<DeliveryFacts, GitError> {
    let repo = repo.to_path_buf();
    let base_ref = format!("refs/heads/{base}");
    blocking("delivery facts", move || {
        let checkout = open(&repo)?;
        let base_commit = checkout
            .find_reference(base_ref.as_str())
            .map_err(failed("find the base branch"))?
            .peel_to_id()
            .map_err(failed("peel the base branch"))?
            .detach();
        let repo_is_bare = checkout.is_bare();
        let repo_on_base = checkout
            .head_name()
            .map_err(failed("symbolic-ref HEAD"))?
            .is_some_and(|name| name.as_bstr() == base_ref.as_bytes());
        Ok(DeliveryFacts {
            base_commit: base_commit.to_string(),
            repo_is_bare,
            repo_on_base,
        })
    })
    .await
}

/// The commit `reference` (a sha, a branch, a tag, `main~1`) names in the repository at `dir`;
/// `Ok(None)` when it names none there.
pub(crate) async fn resolve_commit(
    dir: &Path,
    reference: &str,
) -> Result<Option<String>, GitError> {
    let dir = dir.to_path_buf();
    let spec = format!("{reference}^{{commit}}");
    blocking("rev-parse --verify", move || {
        let repo = open(&dir)?;
        Ok(repo
            .rev_parse_single(spec.as_str())
            .ok()
            .map(|id| id.detach().to_string()))
    })
    .await
}

/// Whether `dir` is in a repository that has the local branch `branch`: `Ok(None)` when `dir` is
/// not a repository at all.
pub(crate) async fn has_branch(dir: &Path, branch: &str) -> Result<Option<bool>, GitError> {
    let dir = dir.to_path_buf();
    let name = format!("refs/heads/{branch}");
    blocking("rev-parse --verify", move || {
        let Ok(repo) = open(&dir) else {
            return Ok(None);
        };
        let found = repo
            .try_find_reference(name.as_str())
            .map_err(failed("find the branch"))?;
        Ok(Some(found.is_some()))
    })
    .await
}

/// The tree `revision` (a commit, `HEAD`) has, in the repository or worktree at `dir`.
pub(crate) async fn tree_of(dir: &Path, revision: &str) -> Result<String, GitError> {
    let dir = dir.to_path_buf();
    let spec = format!("{revision}^{{tree}}");
    blocking("rev-parse ^{tree}", move || {
        let repo = open(&dir)?;
        let id = repo
            .rev_parse_single(spec.as_str())
            .map_err(failed("rev-parse ^{tree}"))?;
        Ok(id.detach().to_string())
    })
    .await
}

/// What a merge-queue candidate starts from, read in one go: the commit `base` (a branch name)
/// points at, and for each of `branches` (names) its commit and whether that commit is the base
/// or one of its ancestors (the base holds the change already).
pub(crate) async fn candidate_tips(
    dir: &Path,
    base: &str,
    branches: Vec<String>,
) -> Result<(String, Vec<(String, bool)>), GitError> {
    let dir = dir.to_path_buf();
    let base_ref = format!("refs/heads/{base}");
    blocking("candidate tips", move || {
        let repo = open(&dir)?;
        let peel = |name: &str| {
            repo.find_reference(name)
                .map_err(failed("find a branch"))?
                .peel_to_id()
                .map_err(failed("peel a branch"))
                .map(|id| id.detach())
        };
        let base_id = peel(&base_ref)?;
        let mut tips = Vec::with_capacity(branches.len());
        for branch in branches {
            let tip = peel(&format!("refs/heads/{branch}"))?;
            let on_base = tip == base_id
                || repo
                    .merge_base(tip, base_id)
                    .map_err(failed("merge-base"))?
                    .is_some_and(|common| common.detach() == tip);
            tips.push((tip.to_string(), on_base));
        }
        Ok((base_id.to_string(), tips))
    })
    .await
}

/// Whether commit `ancestor` is `reference`'s commit or one of its ancestors (a landed task's
/// commit is on its base, so its branch may go).
pub(crate) async fn is_ancestor(
    dir: &Path,
    ancestor: &str,
    reference: &str,
) -> Result<bool, GitError> {
    let dir = dir.to_path_buf();
    let ancestor = ancestor.to_owned();
    let spec = format!("{reference}^{{commit}}");
    blocking("merge-base --is-ancestor", move || {
        let repo = open(&dir)?;
        let ancestor =
            gix::ObjectId::from_hex(ancestor.as_bytes()).map_err(failed("read a commit id"))?;
        let tip = repo
            .rev_parse_single(spec.as_str())
            .map_err(failed("rev-parse"))?
            .detach();
        Ok(tip == ancestor
            || repo
                .merge_base(ancestor, tip)
                .map_err(failed("merge-base"))?
                .is_some_and(|common| common.detach() == ancestor))
    })
    .await
}

/// Where a directory sits in a repository: what intake needs to name the repository one way,
/// whatever path a client used for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// In the work tree whose top level is this path (canonical).
    WorkTree(PathBuf),
    /// In a bare repository: there is no work tree.
    Bare,
    /// In the git directory (`.git`, or a linked worktree's admin dir) of a repository whose work
    /// tree is `work_tree` (when known).
    GitDir {
        /// The work tree's top level, canonical.
        work_tree: Option<PathBuf>,
    },
    /// In no repository.
    Outside,
}

/// Where the canonical directory `dir` sits: found from `dir` upwards, like git does. An error
/// means gix could not tell (no repository, or one it cannot read): ask [`super::Git::location`].
pub(crate) async fn locate(dir: &Path) -> Result<Location, GitError> {
    let dir = dir.to_path_buf();
    blocking("rev-parse --show-toplevel", move || {
        let repo = gix::discover_opts(
            &dir,
            gix::discover::upwards::Options::default(),
            gix::open::Options::isolated(),
        )
        .map_err(failed("discover the repository"))?;
        let real = |path: &Path| std::fs::canonicalize(path).map_err(failed("canonicalize"));
        let Some(work_tree) = repo.workdir() else {
            return Ok(Location::Bare);
        };
        let work_tree = real(work_tree)?;
        for git_dir in [repo.git_dir(), repo.common_dir()] {
            if dir.starts_with(real(git_dir)?) {
                return Ok(Location::GitDir {
                    work_tree: Some(work_tree),
                });
            }
        }
        Ok(Location::WorkTree(work_tree))
    })
    .await
}

/// Opens the repository at `dir` isolated (no system or user configuration).
///
/// Opening costs far more than the question (configuration parsed, the object store set up and
/// torn down: about a third of the service's CPU under a burst of submissions), so a
/// repository's own directory — a checkout whose `.git` is a directory, or a git dir itself — is
/// opened once per [`OPENED_TTL`] on each blocking-pool thread and kept ([`OPENED`]). Refs,
/// `HEAD`, the index and new objects are read from disk on every question, so keeping it changes
/// no answer; only the configuration is the one read at open. A linked worktree (its `.git` a
/// file its task could rewrite, its path reused when it is made again) is opened afresh.
pub(super) fn open(dir: &PathBuf) -> Result<gix::Repository, GitError> {
    let kept = is_repository_dir(dir);
    if kept {
        if let Some(repo) = OPENED.with(|opened| opened.get(dir)) {
            return Ok(repo);
        }
    }
    let options = gix::open::Options::isolated().config_overrides(REF_LOCK_TIMEOUTS);
    let repo = gix::open_opts(dir, options).map_err(failed("open the repository"))?;
    if kept {
        OPENED.with(|opened| opened.keep(dir, &repo));
    }
    Ok(repo)
}

/// [`open`], not kept, with glitchlab as the committer in its configuration: for gix work that
/// opens repositories of its own from it and writes reflogs there (adding a worktree), where
/// no signature can be handed in. The repository's own configuration is read as by `open`.
pub(super) fn open_as_committer(dir: &PathBuf) -> Result<gix::Repository, GitError> {
    // `user.name=…`, `user.email=…`: who the `git` the service runs commits as.
    let committer = [super::COMMITTER[1], super::COMMITTER[3]];
    let overrides = REF_LOCK_TIMEOUTS.iter().chain(&committer).copied();
    let options = gix::open::Options::isolated().config_overrides(overrides);
    gix::open_opts(dir, options).map_err(failed("open the repository"))
}

/// Whether `dir` is a repository's own directory: a checkout with a `.git` directory, or a git
/// dir (bare, or a checkout's common dir) with its `objects` — not a linked worktree.
fn is_repository_dir(dir: &Path) -> bool {
    dir.join(".git").is_dir() || (dir.join("objects").is_dir() && dir.join("HEAD").is_file())
}

/// How long a kept repository is used before it is opened again (its configuration re-read).
const OPENED_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Repositories one thread keeps open at most; past it the expired ones go (all of them if that
/// is not enough).
const OPENED_MAX: usize = 32;

thread_local! {
    /// The repositories [`open`] keeps on this thread (gix's handles are not `Send`), by the
    /// directory asked for. A blocking-pool thread that idles out drops them.
    static OPENED: OpenedRepositories = OpenedRepositories::default();
}

/// Open repositories and when each was opened.
#[derive(Default)]
struct OpenedRepositories(
    std::cell::RefCell<std::collections::HashMap<PathBuf, (gix::Repository, std::time::Instant)>>,
);

impl OpenedRepositories {
    /// The repository at `dir` if it was opened less than [`OPENED_TTL`] ago.
    fn get(&self, dir: &Path) -> Option<gix::Repository> {
        let opened = self.0.try_borrow().ok()?;
        let (repo, at) = opened.get(dir)?;
        (at.elapsed() < OPENED_TTL).then(|| repo.clone())
    }

    /// Keeps `repo`, just opened at `dir`.
    fn keep(&self, dir: &Path, repo: &gix::Repository) {
        let Ok(mut opened) = self.0.try_borrow_mut() else {
            return;
        };
        if opened.len() >= OPENED_MAX {
            opened.retain(|_, (_, at)| at.elapsed() < OPENED_TTL);
            if opened.len() >= OPENED_MAX {
                opened.clear();
            }
        }
        let now = std::time::Instant::now();
        opened.insert(dir.to_path_buf(), (repo.clone(), now));
    }
}

/// How long a ref transaction waits (with back-off) for a ref's lock and for `packed-refs.lock`.
/// git's defaults (100 ms, 1 s) are for one person at a terminal; here many tasks' branches move
/// and are deleted at once in one repository (every deletion takes `packed-refs.lock`), and on a
/// loaded machine a 1 s wait ran out and failed a task's implement. Both stay well under
/// [`QUESTION_TIMEOUT`].
const REF_LOCK_TIMEOUTS: [&str; 2] = [
    "core.filesRefLockTimeout=4000",
    "core.packedRefsTimeout=4000",
];

/// Maps a gix error to [`GitError::Failed`], naming what was asked.
pub(super) fn failed<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> GitError {
    move |error| GitError::Failed {
        args: what.to_owned(),
        stderr: error.to_string(),
    }
}

/// How long a caller waits for a gix answer. These are file reads that take microseconds; the
/// bound is for a pathological repository (or a revision such as `:/text` that searches history):
/// the caller moves on — the intake and deploy checks to the `git` binary, a commit or delivery
/// with a `GitError::Timeout` like a git call that ran out of time.
const QUESTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a gix question (or write) on the blocking pool, bounded by [`QUESTION_TIMEOUT`]. What it
/// writes is in the user's repository, so it is written with the user's umask, as the `git`
/// the service runs writes ([`crate::platform::private::hold_inherited_umask`]).
pub(super) async fn blocking<T: Send + 'static>(
    what: &'static str,
    question: impl FnOnce() -> Result<T, GitError> + Send + 'static,
) -> Result<T, GitError> {
    blocking_private(what, move || {
        let _user = crate::platform::private::hold_inherited_umask();
        question()
    })
    .await
}

/// [`blocking`] for work in the service's own data dir (a worktree's disposable `.git`): what it
/// writes gets the service's private umask.
pub(super) async fn blocking_private<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, GitError> + Send + 'static,
) -> Result<T, GitError> {
    match tokio::time::timeout(QUESTION_TIMEOUT, tokio::task::spawn_blocking(work)).await {
        Ok(answer) => answer.map_err(failed(what))?,
        Err(_) => Err(GitError::Timeout { args: what.into() }),
    }
}
