//! The merge queue's git side: a *candidate* — the base branch as it is now plus one task's
//! change — built in a scratch worktree that is reset from scratch every time, and *landed* on
//! the base by compare-and-swap: the base moves to exactly the candidate's commit, and only if it
//! still points where the candidate was built from.
//!
//! Nothing here decides whether a candidate may land (that is the queue's verify run); this
//! module only builds trees and moves refs, each step safe to repeat after a crash.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::{read, worktree_lock, Git, GitError};
use crate::model::task::History;

/// Bytes of conflicting hunks kept as the next attempt's feedback.
const CONFLICT_DETAIL_BYTES_MAX: usize = 8 * 1024;
/// Conflicting paths named at most.
const CONFLICT_FILES_MAX: usize = 100;
/// Tries of a merge that fails with nothing unmerged: `git merge` runs `git stash create` before
/// a real merge, and in the scratch worktree that child now and then exits 1 without a word
/// ("fatal: stash failed"; seen about once in eight merge-queue suite runs, the tree clean and a
/// second `stash create` fine right after). Taken for a conflict, it cost the task an attempt.
const MERGE_TRIES: usize = 3;
/// The pause before a merge is tried again.
const MERGE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// One change to apply: a task's branch.
#[derive(Debug, Clone)]
pub(crate) struct CandidateRequest<'a> {
    /// The task's branch (`glitchlab/<id>`).
    pub branch: &'a str,
    /// How the change is written onto the base.
    pub history: History,
    /// The commit message (squash and merge); its trailers mark the commit as the task's.
    pub message: &'a str,
    /// `Key: value` trailers added to the last replayed commit (rebase).
    pub trailers: &'a [String],
}

/// A candidate ready to verify: the base plus one or more changes, stacked one commit (or one
/// merge, or one replay) each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuiltCandidate {
    /// The base commit it was built on: the value the landing compares against.
    pub base: String,
    /// The top commit (the base itself when no change applied).
    pub commit: String,
    /// Its tree: what verify runs on.
    pub tree: String,
    /// Per request, in order: what became of it.
    pub changes: Vec<Applied>,
}

/// What became of one change in a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Stacked as this commit.
    Commit(String),
    /// It no longer applies (left out of the candidate).
    Conflict(Conflict),
    /// The base already holds it (nothing to stack).
    AlreadyOnBase,
}

/// The change no longer applies to the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflict {
    /// The base commit it failed on.
    pub base: String,
    /// Paths with conflicts (bounded).
    pub files: Vec<String>,
    /// The conflicting hunks with their markers (bounded), or what git said.
    pub detail: String,
}

/// How a landing went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Landing {
    /// The base points at the candidate now; what became of the repository's own checkout.
    Landed(Checkout),
    /// Someone outside the queue moved the base after the candidate was built: build again.
    BaseMoved {
        /// Where the base points now.
        now: String,
    },
}

/// Builds the candidate for `requests` on `base` in the scratch worktree at `scratch_dir`, which
/// is reset to the base first (whatever a cut-off run left there: a half-done merge, a
/// cherry-pick, untracked files). Changes are stacked in order; one that conflicts is left out
/// (and said so) and the next is stacked on what came before it.
pub(crate) async fn build(
    repo: &Git,
    scratch_dir: &Path,
    base: &str,
    requests: &[CandidateRequest<'_>],
) -> Result<BuiltCandidate, GitError> {
    // In-process: the base, each branch's tip, and whether the base holds it already.
    let names = requests.iter().map(|r| r.branch.to_owned()).collect();
    let (base, tips) = read::candidate_tips(&repo.dir, base, names).await?;
    // Made (reset) only once a change needs applying: a batch the base already holds (the demo
    // engine's empty branches) costs no worktree.
    let mut scratch = None;
    let mut changes = Vec::with_capacity(requests.len());
    let mut top = base.clone();
    for (request, (branch, on_base)) in requests.iter().zip(tips) {
        if on_base {
            changes.push(Applied::AlreadyOnBase);
            continue;
        }
        let worktree = match &scratch {
            Some(worktree) => worktree,
            None => scratch.insert(reset_scratch(repo, scratch_dir, &base).await?),
        };
        let applied = apply(worktree, &base, &top, &branch, request).await?;
        if let Applied::Commit(commit) = &applied {
            top = commit.clone();
        }
        changes.push(applied);
    }
    let tree = match &scratch {
        Some(worktree) => worktree.head_tree().await?,
        None => read::tree_of(&repo.dir, &base).await?,
    };
    Ok(BuiltCandidate {
        base,
        commit: top,
        tree,
        changes,
    })
}

/// Applies one change (the branch at commit `branch`) on top of `top` (the scratch worktree's
/// `HEAD`).
async fn apply(
    scratch: &Git,
    base: &str,
    top: &str,
    branch: &str,
    request: &CandidateRequest<'_>,
) -> Result<Applied, GitError> {
    let applied = match request.history {
        History::Squash => {
            merge(
                scratch,
                top,
                &["merge", "--squash", "--no-commit", "--quiet", branch],
            )
            .await
        }
        History::Merge => {
            merge(
                scratch,
                top,
                &["merge", "--no-ff", "--no-commit", "--quiet", branch],
            )
            .await
        }
        History::Rebase => {
            // The branch's own commits: those not on the base it is landing on.
            let range = format!("{base}..{branch}");
            scratch
                .run(&[
                    "cherry-pick",
                    "--allow-empty",
                    "--keep-redundant-commits",
                    &range,
                ])
                .await
        }
    };
    if let Err(error) = applied {
        let conflict = conflict(scratch, base, top, error).await?;
        return Ok(Applied::Conflict(conflict));
    }
    // The change may already be on the base in another form (a teammate made the same edit).
    if scratch.run(&["diff", "--quiet", top, "--"]).await.is_ok()
        && scratch.run(&["diff", "--cached", "--quiet"]).await.is_ok()
    {
        let _ = scratch.run(&["merge", "--abort"]).await;
        scratch.run(&["reset", "--hard", "--quiet", top]).await?;
        return Ok(Applied::AlreadyOnBase);
    }
    match request.history {
        History::Squash | History::Merge => {
            scratch
                .run(&["commit", "--quiet", "--no-verify", "-m", request.message])
                .await?;
        }
        History::Rebase => {
            let mut amend = vec!["commit", "--amend", "--no-edit", "--no-verify", "--quiet"];
            for trailer in request.trailers {
                amend.extend(["--trailer", trailer.as_str()]);
            }
            scratch.run(&amend).await?;
        }
    }
    Ok(Applied::Commit(scratch.head().await?))
}

/// What a landing did to the repository's own checkout (the developer's files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Checkout {
    /// Bare, on another branch, or a remote's clone: only the ref moved.
    Untouched,
    /// On the base: its index and files moved along (local edits elsewhere kept).
    Updated,
    /// On the base, but local edits (or untracked files) in the way of the change: its files were
    /// left alone and it is now behind its branch. The paths in the way (bounded).
    Stale {
        /// Locally edited or untracked paths the landed change also touches.
        files: Vec<String>,
    },
}

/// Moves `base` to `candidate.commit` if it still points at `candidate.base`. A repository whose
/// checkout is on the base has its files moved along, never over local edits ([`update_checkout`]). With `remote`
/// (the repository is a clone of that URL), the compare-and-swap is a push to the remote with the
/// expected old value (`--force-with-lease`), then the clone's own ref follows.
pub(crate) async fn land(
    repo: &Git,
    base: &str,
    candidate: &BuiltCandidate,
    remote: Option<&str>,
) -> Result<Landing, GitError> {
    let reference = format!("refs/heads/{base}");
    if remote.is_some() {
        let lease = format!("--force-with-lease={reference}:{}", candidate.base);
        let refspec = format!("{}:{reference}", candidate.commit);
        let pushed = repo
            .run(&["push", "--quiet", "--porcelain", &lease, "origin", &refspec])
            .await;
        if let Err(error) = pushed {
            // Where the remote's base is now: moved by someone else, or the push failed.
            let listed = repo.run(&["ls-remote", "origin", &reference]).await?;
            let now = listed
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            if now == candidate.commit {
                // Landed by an earlier try whose answer was lost.
            } else if !now.is_empty() && now != candidate.base {
                return Ok(Landing::BaseMoved { now });
            } else {
                return Err(error);
            }
        }
        repo.run(&["update-ref", &reference, &candidate.commit])
            .await?;
        return Ok(Landing::Landed(Checkout::Untouched));
    }
    let facts = read::delivery_facts(&repo.dir, base).await?;
    if facts.base_commit != candidate.base {
        return Ok(Landing::BaseMoved {
            now: facts.base_commit,
        });
    }
    // The ref alone, by compare-and-swap (in-process): never a merge in the developer's
    // checkout, which refuses (and fails the batch) over a local edit.
    let moved =
        super::write::move_ref(&repo.dir, &reference, &candidate.commit, &candidate.base).await;
    if let Err(error) = moved {
        // Lost the race to someone else's move: build again. Anything else is a failure.
        let now = read::resolve_commit(&repo.dir, &reference)
            .await?
            .unwrap_or_default();
        if now != candidate.commit {
            return if now != candidate.base {
                Ok(Landing::BaseMoved { now })
            } else {
                Err(error)
            };
        }
    }
    if !facts.repo_on_base || facts.repo_is_bare {
        return Ok(Landing::Landed(Checkout::Untouched));
    }
    Ok(Landing::Landed(
        update_checkout(repo, &candidate.base, &candidate.commit).await,
    ))
}

/// Builds the candidate of one squashed change the quick way when it can: the change's branch
/// sits on the base's tip and its tree needs no verify (see [`super::write::squash_on_base`]).
/// No worktree, no merge: one commit object written in-process. `None`: build it the long way.
pub(crate) async fn build_fast(
    repo: &Git,
    request: super::write::SquashRequest,
) -> Result<Option<BuiltCandidate>, GitError> {
    match super::write::squash_on_base(&repo.dir, request).await? {
        super::write::FastSquash::Written { base, tree, commit } => Ok(Some(BuiltCandidate {
            base,
            changes: vec![Applied::Commit(commit.clone())],
            commit,
            tree,
        })),
        super::write::FastSquash::NotOnBase | super::write::FastSquash::NeedsVerify => Ok(None),
    }
}

/// Paths named at most in a stale checkout's note.
const STALE_FILES_MAX: usize = 50;

/// Moves the checkout's index and files from tree `old` to tree `new` with a two-way
/// `read-tree -m -u`: paths the change does not touch keep whatever the developer did to them,
/// and when a path it touches is edited, staged or untracked in the checkout git refuses the
/// whole update and writes nothing (its stat data refreshed and tried once more, so a file only
/// touched is no edit). Then the files stay as they are (the checkout is behind its
/// branch) and the paths in the way are named.
pub(crate) async fn update_checkout(repo: &Git, old: &str, new: &str) -> Checkout {
    let two_way = ["read-tree", "-m", "-u", old, new];
    if repo.run(&two_way).await.is_ok() {
        return Checkout::Updated;
    }
    // Refused maybe only for stale stat data (a file touched, its content as committed): once
    // git has looked at the contents, it refuses only for a real edit.
    let _ = repo.run(&["update-index", "-q", "--refresh"]).await;
    let Err(error) = repo.run(&two_way).await else {
        return Checkout::Updated;
    };
    tracing::info!(repo = %repo.dir.display(), %error, "the checkout's files are left as they are");
    let files = match in_the_way(repo, old, new).await {
        Ok(files) if !files.is_empty() => files,
        // Something else refused (another git holding the index): say what.
        Ok(_) => vec![error.to_string()],
        Err(error) => vec![error.to_string()],
    };
    Checkout::Stale { files }
}

/// The paths `old`..`new` changes that the checkout has local edits on (index or files differ
/// from `old`) or has untracked where the change adds a file (bounded).
async fn in_the_way(repo: &Git, old: &str, new: &str) -> Result<Vec<String>, GitError> {
    let changed = repo
        .run_listing(&[
            "diff",
            "--name-status",
            "-z",
            "--no-renames",
            old,
            new,
            "--",
        ])
        .await?;
    let mut fields = changed.split('\0');
    let mut touched = Vec::new();
    while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
        touched.push((status == "A", path));
    }
    // Porcelain `diff` compares contents where the stat data differ (plumbing would name a
    // file that was only touched).
    let edited = repo
        .run_listing(&["diff", "--name-only", "-z", "--no-renames", old, "--"])
        .await?;
    let edited: std::collections::HashSet<&str> = edited.split('\0').collect();
    let mut files = Vec::new();
    for (added, path) in touched {
        let untracked = added
            && tokio::fs::symlink_metadata(repo.dir.join(path))
                .await
                .is_ok();
        if edited.contains(path) || untracked {
            files.push(path.to_owned());
        }
        if files.len() >= STALE_FILES_MAX {
            break;
        }
    }
    Ok(files)
}

/// The commit on `base`'s first-parent chain (since `since`) whose message carries the trailer
/// `trailer` (`Glitchlab-Task: <id>`): the task's landing, when a crash cut the queue off between
/// moving the base and recording it.
pub(crate) async fn find_landed(
    repo: &Git,
    base: &str,
    trailer: &str,
    since: DateTime<Utc>,
) -> Result<Option<String>, GitError> {
    let grep = format!("--grep={trailer}");
    let since = format!("--since={}", since.to_rfc3339());
    let reference = format!("refs/heads/{base}");
    let found = repo
        .run(&[
            "log",
            "--first-parent",
            "--fixed-strings",
            &grep,
            &since,
            "-n",
            "1",
            "--format=%H",
            &reference,
            "--",
        ])
        .await?;
    Ok(Some(found).filter(|commit| !commit.is_empty()))
}

/// Removes the queue's scratch worktree (the queue is idle). Missing is fine.
pub(crate) async fn remove_scratch(repo: &Git, scratch_dir: &Path) -> Result<(), GitError> {
    if tokio::fs::try_exists(scratch_dir).await.unwrap_or(true) {
        repo.remove_worktree(scratch_dir).await?;
    }
    Ok(())
}

/// The scratch worktree at `dir`, detached at `base` with nothing else in it: reused when it is
/// sound (registered at `dir`, driven through its admin dir: a verify run wrote its files and
/// their `.git`), made again when anything about it is not.
/// The scratch worktree at `dir` checked out at `commit` alone (detached, clean): where the
/// merge queue verifies a bare base.
pub(crate) async fn check_out(repo: &Git, dir: &Path, commit: &str) -> Result<Git, GitError> {
    reset_scratch(repo, dir, commit).await
}

async fn reset_scratch(repo: &Git, dir: &Path, base: &str) -> Result<Git, GitError> {
    let scratch = repo.worktree_of(dir).await?;
    let linked = scratch.linked.clone().ok_or_else(|| GitError::Failed {
        args: "worktree".into(),
        stderr: "no admin dir".into(),
    })?;
    if super::registered_at(&linked, dir).await {
        // `reset --hard` also drops a half-done merge's state; `cherry-pick --quit` a sequence's.
        let _ = scratch.run(&["cherry-pick", "--quit"]).await;
        let reused = async {
            scratch.run(&["reset", "--hard", "--quiet"]).await?;
            scratch
                .run(&["checkout", "--detach", "--force", "--quiet", base])
                .await?;
            scratch.run(&["clean", "-ffdxq"]).await
        }
        .await;
        match reused {
            Ok(_) => return Ok(scratch),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "rebuilding the merge queue's scratch worktree");
                let _ = repo.remove_worktree(dir).await;
            }
        }
    }
    let lock = worktree_lock(&repo.dir);
    let _serialized = lock.lock().await;
    super::remove_files(dir).await;
    repo.remove_half_made_admin_dir(&linked, dir).await;
    let path = dir.display().to_string();
    let add = [
        "worktree",
        "add",
        "--lock",
        "--reason",
        super::own_worktrees::LOCK_REASON,
        "--detach",
        "--quiet",
        &path,
        base,
    ];
    if repo.run(&add).await.is_err() {
        repo.forget_own_stale_worktrees().await?;
        repo.remove_half_made_admin_dir(&linked, dir).await;
        repo.run(&add).await?;
    }
    if !super::registered_at(&linked, dir).await {
        return Err(GitError::Failed {
            args: format!("worktree add {path}"),
            stderr: format!(
                "the worktree was not registered as `{}`",
                linked.admin.display()
            ),
        });
    }
    Ok(scratch)
}

/// `git <args>` (a merge) in the scratch worktree at `top`, tried again from a clean `top` when
/// it fails with no path unmerged ([`MERGE_TRIES`]). A failure that leaves unmerged paths is a
/// conflict and is answered at once; so is the last try's.
async fn merge(scratch: &Git, top: &str, args: &[&str]) -> Result<String, GitError> {
    let mut tries = 1;
    loop {
        let merged = scratch.run(args).await;
        let Err(error) = &merged else {
            return merged;
        };
        if tries >= MERGE_TRIES || !unmerged_paths(scratch).await.is_empty() {
            return merged;
        }
        tracing::warn!(%error, tries, "a merge failed with nothing unmerged; trying it again");
        let _ = scratch.run(&["merge", "--abort"]).await;
        scratch.run(&["reset", "--hard", "--quiet", top]).await?;
        tokio::time::sleep(MERGE_RETRY_PAUSE).await;
        tries += 1;
    }
}

/// The paths a failed merge or pick left unmerged (at most [`CONFLICT_FILES_MAX`]).
async fn unmerged_paths(scratch: &Git) -> Vec<String> {
    let listing = scratch
        .run(&["diff", "--name-only", "--diff-filter=U"])
        .await
        .unwrap_or_default();
    listing
        .lines()
        .filter(|line| !line.is_empty())
        .take(CONFLICT_FILES_MAX)
        .map(str::to_owned)
        .collect()
}

/// Reads what conflicts (paths and hunks, bounded), then puts the scratch worktree back at `top`.
async fn conflict(
    scratch: &Git,
    base: &str,
    top: &str,
    error: GitError,
) -> Result<Conflict, GitError> {
    let files = unmerged_paths(scratch).await;
    let hunks = if files.is_empty() {
        String::new()
    } else {
        scratch.run(&["diff"]).await.unwrap_or_default()
    };
    let detail = if hunks.is_empty() {
        error.to_string()
    } else {
        keep_head(&hunks, CONFLICT_DETAIL_BYTES_MAX)
    };
    let _ = scratch.run(&["cherry-pick", "--abort"]).await;
    let _ = scratch.run(&["merge", "--abort"]).await;
    scratch.run(&["reset", "--hard", "--quiet", top]).await?;
    scratch.run(&["clean", "-ffdxq"]).await?;
    Ok(Conflict {
        base: base.to_owned(),
        files,
        detail,
    })
}

/// The first `bytes_max` bytes of `text` (at a character boundary), saying how much was cut.
fn keep_head(text: &str, bytes_max: usize) -> String {
    if text.len() <= bytes_max {
        return text.to_owned();
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[... {} more bytes of conflicts ...]\n",
        &text[..end],
        text.len() - end
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    /// A merge that fails with nothing unmerged is tried [`MERGE_TRIES`] times, each after the
    /// pause, and leaves the scratch worktree clean at `top`; one that leaves unmerged paths is
    /// answered at once, its conflict left for [`conflict`] to read.
    #[tokio::test]
    async fn only_a_merge_failing_with_nothing_unmerged_is_tried_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("repo");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = Git::new(&dir, Duration::from_secs(30));
        repo.run(&["init", "-q", "-b", "main"]).await.unwrap();
        std::fs::write(dir.join("a.txt"), "a\n").unwrap();
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "base"]).await.unwrap();
        repo.run(&["checkout", "-q", "-b", "side"]).await.unwrap();
        std::fs::write(dir.join("a.txt"), "side\n").unwrap();
        repo.run(&["commit", "-qam", "side"]).await.unwrap();
        repo.run(&["checkout", "-q", "main"]).await.unwrap();
        std::fs::write(dir.join("a.txt"), "main\n").unwrap();
        repo.run(&["commit", "-qam", "main"]).await.unwrap();
        let top = repo.rev_parse("main").await.unwrap();
        let scratch = check_out(&repo, &root.path().join("scratch"), &top)
            .await
            .unwrap();

        let started = std::time::Instant::now();
        let missing = [
            "merge",
            "--squash",
            "--no-commit",
            "--quiet",
            "no-such-branch",
        ];
        assert!(merge(&scratch, &top, &missing).await.is_err());
        const { assert!(MERGE_TRIES >= 2, "a try again at all") };
        let pauses = u32::try_from(MERGE_TRIES - 1).unwrap();
        assert!(
            started.elapsed() >= MERGE_RETRY_PAUSE * pauses,
            "not tried again"
        );
        assert_eq!(scratch.head().await.unwrap(), top);
        assert_eq!(scratch.run(&["status", "--porcelain"]).await.unwrap(), "");

        let conflicting = ["merge", "--squash", "--no-commit", "--quiet", "side"];
        assert!(merge(&scratch, &top, &conflicting).await.is_err());
        assert_eq!(unmerged_paths(&scratch).await, ["a.txt"]);
    }

    /// A checkout on `main` with `a.txt` and `b.txt`, and `old`..`new` (the base before and
    /// after a landing that rewrites `a.txt` and adds `c.txt`), the ref already moved.
    async fn landed_behind_checkout(root: &Path) -> (PathBuf, Git, String, String) {
        let dir = root.join("repo");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = Git::new(&dir, Duration::from_secs(30));
        repo.run(&["init", "-q", "-b", "main"]).await.unwrap();
        std::fs::write(dir.join("a.txt"), "a\n").unwrap();
        std::fs::write(dir.join("b.txt"), "b\n").unwrap();
        repo.run(&["add", "-A"]).await.unwrap();
        repo.run(&["commit", "-qm", "old"]).await.unwrap();
        let old = repo.rev_parse("main").await.unwrap();
        // The new commit is made off to the side, as the queue does, and the ref moved by CAS.
        let scratch = root.join("scratch");
        repo.run(&[
            "worktree",
            "add",
            "-q",
            "--detach",
            scratch.to_str().unwrap(),
            "main",
        ])
        .await
        .unwrap();
        let side = Git::new(&scratch, Duration::from_secs(30));
        std::fs::write(scratch.join("a.txt"), "a from the task\n").unwrap();
        std::fs::write(scratch.join("c.txt"), "c from the task\n").unwrap();
        side.run(&["add", "-A"]).await.unwrap();
        side.run(&["commit", "-qm", "new"]).await.unwrap();
        let new = side.rev_parse("HEAD").await.unwrap();
        repo.run(&["update-ref", "refs/heads/main", &new, &old])
            .await
            .unwrap();
        (dir, repo, old, new)
    }

    /// The checkout update never writes over the developer's files: a modified file and an
    /// untracked one the change touches make it refuse (both named, both intact); local edits on
    /// paths the change leaves alone are kept while the rest moves along. Repeated, as the
    /// overwrite this guards against was intermittent.
    #[tokio::test]
    async fn the_checkout_update_refuses_rather_than_overwrites() {
        for round in 0..8 {
            let root = tempfile::tempdir().unwrap();
            let (dir, repo, old, new) = landed_behind_checkout(root.path()).await;
            let mine = format!("mine {round}, no newline");
            std::fs::write(dir.join("a.txt"), &mine).unwrap();
            std::fs::write(dir.join("c.txt"), "untracked c").unwrap();
            let outcome = update_checkout(&repo, &old, &new).await;
            let files = vec!["a.txt".to_owned(), "c.txt".to_owned()];
            assert_eq!(outcome, Checkout::Stale { files }, "round {round}");
            assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), mine);
            assert_eq!(
                std::fs::read_to_string(dir.join("c.txt")).unwrap(),
                "untracked c"
            );

            // Only the untracked file in the way: still refused, nothing written.
            std::fs::write(dir.join("a.txt"), "a\n").unwrap();
            let outcome = update_checkout(&repo, &old, &new).await;
            let files = vec!["c.txt".to_owned()];
            assert_eq!(outcome, Checkout::Stale { files }, "round {round}");
            assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "a\n");

            // Nothing in the way: the change arrives, the edit elsewhere and a stray file stay.
            std::fs::remove_file(dir.join("c.txt")).unwrap();
            std::fs::write(dir.join("b.txt"), "b edited").unwrap();
            std::fs::write(dir.join("d.txt"), "untracked d").unwrap();
            assert_eq!(update_checkout(&repo, &old, &new).await, Checkout::Updated);
            let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
            assert_eq!(read("a.txt"), "a from the task\n");
            assert_eq!(read("c.txt"), "c from the task\n");
            assert_eq!(read("b.txt"), "b edited");
            assert_eq!(read("d.txt"), "untracked d");
            let status = repo.run(&["status", "--porcelain"]).await.unwrap();
            assert_eq!(status, "M b.txt\n?? d.txt", "round {round}");
        }
    }
}
