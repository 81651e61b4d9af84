//! Implement's commit in-process: the linked worktree's index (read through its admin dir, never
//! through the files' `.git`, which a task wrote) becomes a tree, the tree is compared with the
//! base to name every changed path (the protected-path check and the secret scan decide on that
//! list), and the same index becomes the branch's next commit, its ref moved by compare-and-swap.
//! `git add -A` (which knows ignore rules, filters and attributes) still stages; nothing else here
//! is a process.

use std::path::PathBuf;

use gix::bstr::ByteSlice;

use super::read::{blocking, failed, open};
use super::write::{move_ref_in, signature, tidy};
use super::{GitError, Linked};

/// The index of a linked worktree and the repository it belongs to.
struct Staged {
    repo: gix::Repository,
    index: gix::index::File,
    /// `refs/heads/<branch>` the worktree has checked out.
    branch: String,
    /// The commit it points at.
    head: gix::ObjectId,
}

/// Every path the staged tree changes since it left `base` (the merge base of `base` and the
/// worktree's `HEAD`): both sides of a rename, by path, sorted.
pub(crate) async fn changed_since(linked: &Linked, base: &str) -> Result<Vec<String>, GitError> {
    let (admin, common) = (linked.admin.clone(), linked.common.clone());
    let base = format!("refs/heads/{base}");
    blocking("diff --cached --merge-base", move || {
        let staged = load(admin, common)?;
        let base = staged
            .repo
            .find_reference(base.as_str())
            .map_err(failed("find the base branch"))?
            .peel_to_id()
            .map_err(failed("peel the base branch"))?
            .detach();
        let since = staged
            .repo
            .merge_base(base, staged.head)
            .map_err(failed("merge-base"))?
            .ok_or_else(|| failed("merge-base")("the branch shares no history with the base"))?
            .detach();
        let tree = tree_of(&staged.repo, since)?;
        let before = staged
            .repo
            .index_from_tree(&tree)
            .map_err(failed("read the base's tree"))?;
        Ok(differing(&before, &staged.index))
    })
    .await
}

/// Commits what the index stages onto the worktree's branch; `None` when it stages nothing new
/// (its tree is `HEAD`'s).
pub(crate) async fn commit(linked: &Linked, message: &str) -> Result<Option<String>, GitError> {
    let (admin, common) = (linked.admin.clone(), linked.common.clone());
    let message = tidy(message);
    blocking("commit", move || {
        let staged = load(admin, common.clone())?;
        let tree = write_tree(&staged)?;
        if tree == tree_of(&staged.repo, staged.head)? {
            return Ok(None);
        }
        let mut time = gix::date::parse::TimeBuf::default();
        let signature = signature();
        let signature = signature.to_ref(&mut time);
        let commit = staged
            .repo
            .new_commit_as(signature, signature, &message, tree, [staged.head])
            .map_err(failed("write the commit"))?
            .id;
        let summary = message.lines().next().unwrap_or_default();
        let log = format!("commit: {summary}");
        move_ref_in(&staged.repo, &staged.branch, commit, staged.head, &log)?;
        Ok(Some(commit.to_string()))
    })
    .await
}

fn load(admin: PathBuf, common: PathBuf) -> Result<Staged, GitError> {
    let head = std::fs::read_to_string(admin.join("HEAD")).map_err(failed("read HEAD"))?;
    let Some(branch) = head.trim().strip_prefix("ref: ").map(str::to_owned) else {
        return Err(failed("commit")("the worktree's HEAD is detached"));
    };
    let repo = open(&common)?;
    let head = repo
        .find_reference(branch.as_str())
        .map_err(failed("find the worktree's branch"))?
        .peel_to_id()
        .map_err(failed("peel the worktree's branch"))?
        .detach();
    let index = gix::index::File::at(
        admin.join("index"),
        repo.object_hash(),
        false,
        gix::index::decode::Options::default(),
    )
    .map_err(failed("read the worktree's index"))?;
    Ok(Staged {
        repo,
        index,
        branch,
        head,
    })
}

/// The tree the index describes, written (its objects are in the repository already: `add`
/// wrote the blobs). An index with conflicts or paths to be added later is refused.
fn write_tree(staged: &Staged) -> Result<gix::ObjectId, GitError> {
    let mut editor = staged
        .repo
        .edit_tree(gix::ObjectId::empty_tree(staged.repo.object_hash()))
        .map_err(failed("edit a tree"))?;
    for entry in staged.index.entries() {
        let path = entry.path(&staged.index);
        let intent = entry
            .flags
            .contains(gix::index::entry::Flags::INTENT_TO_ADD);
        if entry.stage_raw() != 0 || intent {
            return Err(failed("write-tree")(format!(
                "`{}` is not staged as one version",
                path
            )));
        }
        let Some(mode) = entry.mode.to_tree_entry_mode() else {
            return Err(failed("write-tree")(format!("`{path}` has no tree mode")));
        };
        editor
            .upsert(path, mode.kind(), entry.id)
            .map_err(failed("write-tree"))?;
    }
    Ok(editor.write().map_err(failed("write-tree"))?.detach())
}

/// The paths whose entry (mode or object) differs between two indexes (both sorted by path).
fn differing(before: &gix::index::File, after: &gix::index::File) -> Vec<String> {
    let key = |index: &gix::index::File, entry: &gix::index::Entry| {
        (entry.path(index).to_owned(), entry.mode, entry.id)
    };
    let old: std::collections::BTreeMap<_, _> = before
        .entries()
        .iter()
        .map(|e| {
            let (path, mode, id) = key(before, e);
            (path, (mode, id))
        })
        .collect();
    let new: std::collections::BTreeMap<_, _> = after
        .entries()
        .iter()
        .map(|e| {
            let (path, mode, id) = key(after, e);
            (path, (mode, id))
        })
        .collect();
    let mut changed: Vec<String> = old
        .iter()
        .filter(|(path, entry)| new.get(*path) != Some(entry))
        .chain(new.iter().filter(|(path, _)| !old.contains_key(*path)))
        .map(|(path, _)| path.to_str_lossy().into_owned())
        .collect();
    changed.sort();
    changed
}

fn tree_of(repo: &gix::Repository, commit: gix::ObjectId) -> Result<gix::ObjectId, GitError> {
    repo.find_commit(commit)
        .map_err(failed("find a commit"))?
        .tree_id()
        .map(|id| id.detach())
        .map_err(failed("read a commit's tree"))
}
