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
    /// The base points at the candidate now.
    Landed,
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
            scratch
                .run(&["merge", "--squash", "--no-commit", "--quiet", branch])
                .await
        }
        History::Merge => {
            scratch
                .run(&["merge", "--no-ff", "--no-commit", "--quiet", branch])
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

/// Moves `base` to `candidate.commit` if it still points at `candidate.base`. A repository whose
/// checkout is on the base has its files moved along (never over local edits). With `remote`
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
        return Ok(Landing::Landed);
    }
    let facts = read::delivery_facts(&repo.dir, base).await?;
    if facts.base_commit != candidate.base {
        return Ok(Landing::BaseMoved {
            now: facts.base_commit,
        });
    }
    let moved = if facts.repo_on_base && !facts.repo_is_bare {
        repo.run(&["merge", "--ff-only", "--quiet", &candidate.commit])
            .await
    } else {
        repo.run(&["update-ref", &reference, &candidate.commit, &candidate.base])
            .await
    };
    match moved {
        Ok(_) => Ok(Landing::Landed),
        Err(error) => {
            // Lost the race to someone else's move: build again. Anything else is a failure.
            let now = repo.rev_parse(&reference).await?;
            if now == candidate.commit {
                Ok(Landing::Landed)
            } else if now != candidate.base {
                Ok(Landing::BaseMoved { now })
            } else {
                Err(error)
            }
        }
    }
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
    if repo
        .run(&[
            "worktree", "add", "--lock", "--detach", "--quiet", &path, base,
        ])
        .await
        .is_err()
    {
        repo.run(&["worktree", "prune"]).await?;
        repo.remove_half_made_admin_dir(&linked, dir).await;
        repo.run(&[
            "worktree", "add", "--lock", "--detach", "--quiet", &path, base,
        ])
        .await?;
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

/// Reads what conflicts (paths and hunks, bounded), then puts the scratch worktree back at `top`.
async fn conflict(
    scratch: &Git,
    base: &str,
    top: &str,
    error: GitError,
) -> Result<Conflict, GitError> {
    let listing = scratch
        .run(&["diff", "--name-only", "--diff-filter=U"])
        .await
        .unwrap_or_default();
    let files: Vec<String> = listing
        .lines()
        .filter(|line| !line.is_empty())
        .take(CONFLICT_FILES_MAX)
        .map(str::to_owned)
        .collect();
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
