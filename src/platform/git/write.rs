//! In-process writes with gix where a `git` process would cost more than the work: the merge
//! queue's squash commit of a branch that sits on its base, moving a base by compare-and-swap,
//! creating a new task's branch and its worktree, and deleting a finished task's branch. Like
//! [`super::read`], they run on the blocking pool, bounded, with the user's umask, on the
//! repository opened isolated (never through a worktree's files, which a task wrote).

use std::path::Path;

use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::Target;

use super::read::{blocking, failed, open, open_as_committer};
use super::GitError;

/// Who glitchlab's commits and ref moves are by (as [`super::COMMITTER`] for the `git` binary).
const NAME: &str = "glitchlab";
/// The e-mail of [`NAME`].
const EMAIL: &str = "glitchlab@localhost";

/// A single change whose branch sits on the base, squashed: one commit on the base with the
/// branch tip's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FastSquash {
    /// The branch does not descend from the base's tip (or adds nothing): build it the long way.
    NotOnBase,
    /// The tip's tree was never verified as it is: it needs a checkout to verify in.
    NeedsVerify,
    /// Written (no ref moved yet).
    Written {
        /// The base commit it is built on (its parent).
        base: String,
        /// The branch tip's tree, and the commit's.
        tree: String,
        /// The squash commit.
        commit: String,
    },
}

/// What [`squash_on_base`] is asked.
#[derive(Debug, Clone)]
pub(crate) struct SquashRequest {
    /// The base branch (a name).
    pub base: String,
    /// The task's branch (a name).
    pub branch: String,
    /// The commit message.
    pub message: String,
    /// Whether the change must be verified on the base unless its tree is `verified_tree`.
    pub verifying: bool,
    /// The tree verify passed on the branch, if any.
    pub verified_tree: Option<String>,
}

/// Writes the squash commit of `request.branch` onto `request.base` when the branch's tip
/// descends from the base's tip and its tree needs no verify: parent the base, tree the tip's.
pub(crate) async fn squash_on_base(
    dir: &Path,
    request: SquashRequest,
) -> Result<FastSquash, GitError> {
    let dir = dir.to_path_buf();
    blocking("squash commit", move || {
        let repo = open(&dir)?;
        let peel = |name: &str| {
            repo.find_reference(name)
                .map_err(failed("find a branch"))?
                .peel_to_id()
                .map_err(failed("peel a branch"))
                .map(|id| id.detach())
        };
        let base = peel(&format!("refs/heads/{}", request.base))?;
        let tip = peel(&format!("refs/heads/{}", request.branch))?;
        let on_base = tip != base
            && repo
                .merge_base(tip, base)
                .map_err(failed("merge-base"))?
                .is_some_and(|common| common.detach() == base);
        if !on_base {
            return Ok(FastSquash::NotOnBase);
        }
        let tree = tree_of(&repo, tip)?;
        if tree == tree_of(&repo, base)? {
            return Ok(FastSquash::NotOnBase);
        }
        let verified = request.verified_tree.as_deref() == Some(tree.to_string().as_str());
        if request.verifying && !verified {
            return Ok(FastSquash::NeedsVerify);
        }
        let signature = signature();
        let mut time = gix::date::parse::TimeBuf::default();
        let signature = signature.to_ref(&mut time);
        let commit = repo
            .new_commit_as(signature, signature, tidy(&request.message), tree, [base])
            .map_err(failed("write the squash commit"))?;
        Ok(FastSquash::Written {
            base: base.to_string(),
            tree: tree.to_string(),
            commit: commit.id.to_string(),
        })
    })
    .await
}

/// Moves `reference` (a full name) from `old` to `new` by compare-and-swap, with a reflog entry:
/// an error when it does not point at `old` (the caller reads where it points).
pub(crate) async fn move_ref(
    dir: &Path,
    reference: &str,
    new: &str,
    old: &str,
) -> Result<(), GitError> {
    let (dir, reference) = (dir.to_path_buf(), reference.to_owned());
    let new = object_id(new)?;
    let old = object_id(old)?;
    blocking("update-ref", move || {
        let repo = open(&dir)?;
        move_ref_in(
            &repo,
            &reference,
            new,
            old,
            "glitchlab: merge queue landing",
        )
    })
    .await
}

/// [`move_ref`] on an open repository (on the blocking pool already), with reflog message `log`.
pub(super) fn move_ref_in(
    repo: &gix::Repository,
    reference: &str,
    new: gix::ObjectId,
    old: gix::ObjectId,
    log: &str,
) -> Result<(), GitError> {
    let edit = RefEdit {
        change: Change::Update {
            log: LogChange {
                mode: RefLog::AndReference,
                force_create_reflog: false,
                message: log.into(),
            },
            expected: PreviousValue::MustExistAndMatch(Target::Object(old)),
            new: Target::Object(new),
        },
        name: full_name(reference)?,
        deref: false,
    };
    let signature = signature();
    let mut time = gix::date::parse::TimeBuf::default();
    repo.edit_references_as([edit], Some(signature.to_ref(&mut time)))
        .map_err(failed("update-ref"))?;
    Ok(())
}

/// Creates the branch `refs/heads/{branch}` at the commit `base` names, unless it exists
/// (`Ok(false)`), with the reflog line `git branch` writes: a new task's branch without the
/// `git branch` process `git worktree add -b` starts (about 3 ms of a task's 13 ms
/// `worktree add`).
pub(crate) async fn create_branch(dir: &Path, branch: &str, base: &str) -> Result<bool, GitError> {
    let (dir, name, base) = (
        dir.to_path_buf(),
        format!("refs/heads/{branch}"),
        base.to_owned(),
    );
    blocking("branch", move || {
        let repo = open(&dir)?;
        let spec = format!("{base}^{{commit}}");
        let commit = repo
            .rev_parse_single(spec.as_str())
            .map_err(failed("branch: the base"))?
            .detach();
        let exists = |repo: &gix::Repository| {
            repo.try_find_reference(name.as_str())
                .map(|found| found.is_some())
                .map_err(failed("branch"))
        };
        if exists(&repo)? {
            return Ok(false);
        }
        let edit = RefEdit {
            change: Change::Update {
                log: LogChange {
                    mode: RefLog::AndReference,
                    force_create_reflog: false,
                    message: format!("branch: Created from {base}").into(),
                },
                expected: PreviousValue::MustNotExist,
                new: Target::Object(commit),
            },
            name: full_name(&name)?,
            deref: false,
        };
        let signature = signature();
        let mut time = gix::date::parse::TimeBuf::default();
        match repo.edit_references_as([edit], Some(signature.to_ref(&mut time))) {
            Ok(_) => Ok(true),
            // Made meanwhile by someone else: it exists, as when it did before.
            Err(_) if exists(&repo)? => Ok(false),
            Err(error) => Err(failed("branch")(error)),
        }
    })
    .await
}

/// Adds the linked worktree at `path` on the existing local `branch` in-process (gix: the admin
/// dir `<common>/worktrees/<name>`, the `.git` file, `HEAD` and its reflog, the checkout and its
/// index), then locks it with `reason` as `git worktree add --lock --reason` does. It is what
/// `git worktree add PATH BRANCH` does without that process and the `git reset --hard` it starts
/// (about 10 ms of a task's start). Answers the admin dir.
///
/// Bounded by `timeout` (git's, as the `git worktree add` it replaces): past it the checkout is
/// interrupted and this returns only once gix has undone what it made, so a caller that falls
/// back to `git worktree add` never races a checkout still writing the same path.
pub(crate) async fn add_worktree(
    dir: &Path,
    path: &Path,
    branch: &str,
    reason: &str,
    timeout: std::time::Duration,
) -> Result<std::path::PathBuf, GitError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (dir, path, name, reason) = (
        dir.to_path_buf(),
        path.to_path_buf(),
        format!("refs/heads/{branch}"),
        reason.to_owned(),
    );
    let interrupt = std::sync::Arc::new(AtomicBool::new(false));
    let stop = std::sync::Arc::clone(&interrupt);
    let mut work = tokio::task::spawn_blocking(move || {
        // In the user's repository: the user's umask, as `git worktree add` would have.
        let _user = crate::platform::private::hold_inherited_umask();
        let repo = open_as_committer(&dir)?;
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        if let Some(why) = left_to_git(&repo, &name, home.as_deref())? {
            return Err(GitError::Failed {
                args: "worktree add (in-process)".into(),
                stderr: why.into(),
            });
        }
        let head = gix::worktree::add::Head::Attached(full_name(&name)?);
        let prepared = repo
            .prepare_add_worktree(&path, head, &stop)
            .map_err(failed("worktree add"))?;
        let admin = prepared.repo().git_dir().to_path_buf();
        prepared
            .checkout(gix::progress::Discard, &stop)
            .map_err(failed("worktree add: checkout"))?;
        // gix removed its own `locked` ("initializing") when the checkout was complete.
        std::fs::write(admin.join("locked"), format!("{reason}\n"))
            .map_err(failed("worktree add: lock"))?;
        Ok(admin)
    });
    let joined = match tokio::time::timeout(timeout, &mut work).await {
        Ok(joined) => joined,
        Err(_) => {
            interrupt.store(true, Ordering::Relaxed);
            // gix checks the flag between files and rolls back: wait for that.
            let _ = work.await;
            return Err(GitError::Timeout {
                args: "worktree add (in-process)".into(),
            });
        }
    };
    joined.map_err(failed("worktree add"))?
}

/// The most of one attributes file [`left_to_git`] reads; a larger one (a `core.attributesFile`
/// naming a device, a task's huge `.gitattributes`) leaves the checkout to git unread.
const ATTRIBUTES_BYTES_MAX: u64 = 1 << 20;

/// Why the checkout of `reference` is left to `git worktree add`, if it is. The service's git
/// reads the tree's `.gitattributes`, the repository's `info/attributes` and
/// `core.attributesFile`, and (no such setting) the user's `~/.config/git/attributes`; gix,
/// opened isolated, reads all but the last. So: a user's attributes file that is not empty, or
/// any of them naming `ident`, which gix expands without git's space before the closing `$`
/// (`$Id: <hash>$`, not `$Id: <hash> $`). Also a repository that configures a smudge or
/// process filter driver: gix would start it outside `process::run`. A false alarm (a file or
/// pattern called `ident`, a driver no path uses) only
/// costs the git process. Checked every time: the branch's tree is the task's. `home` is the
/// service's `HOME`, which its git gets.
pub(super) fn left_to_git(
    repo: &gix::Repository,
    reference: &str,
    home: Option<&Path>,
) -> Result<Option<&'static str>, GitError> {
    const IDENT: &str = "the attributes ask for `ident`, which gix expands otherwise than git";
    const TOO_LARGE: &str = "an attributes file is over 1 MiB: not read here";
    let names_ident = |text: &[u8]| {
        text.split(|byte| byte.is_ascii_whitespace()).any(|token| {
            let token = token
                .strip_prefix(b"-")
                .or_else(|| token.strip_prefix(b"!"))
                .unwrap_or(token);
            token == b"ident" || token.starts_with(b"ident=")
        })
    };
    // A checkout runs a configured smudge or process filter driver (git-lfs, say): through git
    // it runs governed (git's timeout, its process group), from gix it would not.
    let drives_a_filter = repo
        .config_snapshot()
        .plumbing()
        .sections_by_name("filter")
        .is_some_and(|mut sections| {
            sections.any(|section| {
                section.value("smudge").is_some() || section.value("process").is_some()
            })
        });
    if drives_a_filter {
        return Ok(Some(
            "a filter driver is configured: git runs it under the service's bounds",
        ));
    }
    let mut files = vec![repo.common_dir().join("info/attributes")];
    match repo.config_snapshot().trusted_path("core.attributesFile") {
        Ok(Some(path)) => files.push(path),
        _ => {
            let users = home.map(|home| home.join(".config/git/attributes"));
            if users.is_some_and(|file| std::fs::metadata(file).is_ok_and(|meta| meta.len() > 0)) {
                return Ok(Some(
                    "the user's ~/.config/git/attributes is read by git, not by gix opened isolated",
                ));
            }
        }
    }
    for file in &files {
        let mut text = Vec::new();
        let read = std::fs::File::open(file).and_then(|opened| {
            std::io::Read::read_to_end(
                &mut std::io::Read::take(opened, ATTRIBUTES_BYTES_MAX + 1),
                &mut text,
            )
        });
        match read {
            Ok(bytes) if bytes as u64 > ATTRIBUTES_BYTES_MAX => return Ok(Some(TOO_LARGE)),
            Ok(_) if names_ident(&text) => return Ok(Some(IDENT)),
            _ => {}
        }
    }
    let tree = repo
        .find_reference(reference)
        .map_err(failed("find the branch"))?
        .peel_to_commit()
        .map_err(failed("read the branch's commit"))?
        .tree()
        .map_err(failed("read the branch's tree"))?;
    let mut entries = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut entries)
        .map_err(failed("walk the branch's tree"))?;
    for entry in entries.records {
        let is_attributes = entry.mode.is_blob()
            && entry.filepath.rsplit(|byte| *byte == b'/').next() == Some(&b".gitattributes"[..]);
        if is_attributes {
            let size = repo
                .find_header(entry.oid)
                .map_err(failed("read a .gitattributes"))?
                .size();
            if size > ATTRIBUTES_BYTES_MAX {
                return Ok(Some(TOO_LARGE));
            }
            let blob = repo
                .find_object(entry.oid)
                .map_err(failed("read a .gitattributes"))?;
            if names_ident(&blob.data) {
                return Ok(Some(IDENT));
            }
        }
    }
    Ok(None)
}

/// Deletes `reference` (a full name) if it still points at `expected`; answers whether it did
/// (a missing one is not an error).
pub(crate) async fn delete_ref(
    dir: &Path,
    reference: &str,
    expected: &str,
) -> Result<bool, GitError> {
    let (dir, reference) = (dir.to_path_buf(), reference.to_owned());
    let expected = object_id(expected)?;
    blocking("update-ref -d", move || {
        let repo = open(&dir)?;
        if repo
            .try_find_reference(reference.as_str())
            .map_err(failed("find the branch"))?
            .is_none()
        {
            return Ok(false);
        }
        let edit = RefEdit {
            change: Change::Delete {
                expected: PreviousValue::MustExistAndMatch(Target::Object(expected)),
                log: RefLog::AndReference,
            },
            name: full_name(&reference)?,
            deref: false,
        };
        repo.edit_references_as([edit], None)
            .map_err(failed("update-ref -d"))?;
        Ok(true)
    })
    .await
}

/// The message as `git commit -m` would record it (its `whitespace` clean-up): trailing
/// whitespace off every line, runs of blank lines made one, none at either end, one final newline.
pub(super) fn tidy(message: &str) -> String {
    let mut tidied = String::with_capacity(message.len() + 1);
    let mut blank_run = false;
    for line in message.lines().map(str::trim_end) {
        if line.is_empty() {
            blank_run = !tidied.is_empty();
            continue;
        }
        if blank_run {
            tidied.push('\n');
            blank_run = false;
        }
        tidied.push_str(line);
        tidied.push('\n');
    }
    tidied
}

/// The tree of commit `id`.
fn tree_of(repo: &gix::Repository, id: gix::ObjectId) -> Result<gix::ObjectId, GitError> {
    let commit = repo.find_commit(id).map_err(failed("find a commit"))?;
    commit
        .tree_id()
        .map(|id| id.detach())
        .map_err(failed("read a commit's tree"))
}

/// glitchlab's identity, now.
pub(super) fn signature() -> gix::actor::Signature {
    gix::actor::Signature {
        name: NAME.into(),
        email: EMAIL.into(),
        time: gix::date::Time::now_local_or_utc(),
    }
}

fn object_id(hex: &str) -> Result<gix::ObjectId, GitError> {
    gix::ObjectId::from_hex(hex.as_bytes()).map_err(failed("read a commit id"))
}

fn full_name(reference: &str) -> Result<gix::refs::FullName, GitError> {
    gix::refs::FullName::try_from(reference).map_err(failed("name a ref"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_tidied_as_git_commit_m_does() {
        assert_eq!(
            tidy("\n\nTitle  \n\n\n\nBody\t\n\nA: b\n\n"),
            "Title\n\nBody\n\nA: b\n"
        );
        assert_eq!(tidy("One"), "One\n");
    }
}
