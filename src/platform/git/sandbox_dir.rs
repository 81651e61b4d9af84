//! The `.git` a sandboxed command finds in its worktree: a disposable repository of its own,
//! made anew before every run. It borrows the real repository's objects read-only (alternates)
//! and has copies of the refs it needs, so an engine can `git status`, `diff`, even `commit` —
//! and whatever it does there (config, hooks, refs, `commondir`, deleted objects) stays there.
//! The service never runs git in it: it reads the worktree's files through the worktree's
//! admin dir ([`super::Git::worktree_of`]), and takes a change only from those files.

use std::path::Path;

use super::{read, remove_files, Git, GitError};

/// What `.git/config` of the disposable repository says: enough for git to use it.
const CONFIG: &str = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n";

/// Replaces whatever is at `<files>/.git` of `worktree` with a fresh disposable repository on
/// the worktree's `HEAD`, with `refs` (full names, e.g. `refs/heads/main`) copied too and the
/// worktree's index, so the files look clean to git inside.
pub(crate) async fn give_sandbox_git_dir(worktree: &Git, refs: &[String]) -> Result<(), GitError> {
    let Some(linked) = worktree.linked() else {
        return Err(failed("only a linked worktree gets a sandbox git dir"));
    };
    let dot_git = worktree.dir().join(".git");
    remove_files(&dot_git).await;
    for dir in ["objects/info", "refs/heads", "refs/tags"] {
        tokio::fs::create_dir_all(dot_git.join(dir))
            .await
            .map_err(io("make the sandbox's git dir"))?;
    }
    let head = tokio::fs::read_to_string(linked.admin.join("HEAD"))
        .await
        .map_err(io("read the worktree's HEAD"))?;
    write(&dot_git, "HEAD", head.trim()).await?;
    let head_commit = read::worktree_head(&linked.admin, &linked.common).await?;
    if let Some(branch) = head.trim().strip_prefix("ref: ") {
        write(&dot_git, branch, &head_commit).await?;
    }
    for name in refs {
        if let Some(commit) = read::resolve_commit(&linked.common, name).await? {
            write(&dot_git, name, &commit).await?;
        }
    }
    let objects = linked.common.join("objects");
    write(
        &dot_git,
        "objects/info/alternates",
        &objects.display().to_string(),
    )
    .await?;
    write(&dot_git, "config", CONFIG.trim_end()).await?;
    let index = linked.admin.join("index");
    if tokio::fs::try_exists(&index).await.unwrap_or(false) {
        tokio::fs::copy(&index, dot_git.join("index"))
            .await
            .map_err(io("copy the worktree's index"))?;
    }
    Ok(())
}

/// Writes `text` and a newline to `dot_git/relative`, making its parents (a ref's `/`s).
async fn write(dot_git: &Path, relative: &str, text: &str) -> Result<(), GitError> {
    if relative
        .split('/')
        .any(|part| part == ".." || part.is_empty())
    {
        return Err(failed(&format!("`{relative}` is no name for a ref")));
    }
    let path = dot_git.join(relative);
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io("make the sandbox's git dir"))?;
    }
    tokio::fs::write(&path, format!("{text}\n"))
        .await
        .map_err(io("write the sandbox's git dir"))
}

fn failed(message: &str) -> GitError {
    GitError::Failed {
        args: "sandbox git dir".into(),
        stderr: message.to_owned(),
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> GitError {
    move |error| failed(&format!("{what}: {error}"))
}
