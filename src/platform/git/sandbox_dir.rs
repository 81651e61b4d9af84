//! The `.git` a sandboxed command finds in its worktree: a disposable repository of its own,
//! made anew before every run. It borrows the real repository's objects read-only (alternates)
//! and has copies of the refs it needs, so an engine can `git status`, `diff`, even `commit` —
//! and whatever it does there (config, hooks, refs, `commondir`, deleted objects) stays there.
//! The service never runs git in it: it reads the worktree's files through the worktree's
//! admin dir ([`super::Git::worktree_of`]), and takes a change only from those files.

use std::path::{Path, PathBuf};

use super::{read, remove_files_now, Git, GitError};

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
    let (admin, common, refs) = (linked.admin.clone(), linked.common.clone(), refs.to_vec());
    // One trip to the blocking pool for all of it: a dozen small file operations and two ref
    // lookups, each a trip of its own, were 1.8 ms of a verify.
    read::blocking_private("sandbox git dir", move || {
        make(&dot_git, &admin, &common, &refs)
    })
    .await
}

/// [`give_sandbox_git_dir`]'s work, on the blocking pool.
fn make(dot_git: &Path, admin: &Path, common: &PathBuf, refs: &[String]) -> Result<(), GitError> {
    remove_files_now(dot_git);
    for dir in ["objects/info", "refs/heads", "refs/tags"] {
        std::fs::create_dir_all(dot_git.join(dir)).map_err(io("make the sandbox's git dir"))?;
    }
    let head =
        std::fs::read_to_string(admin.join("HEAD")).map_err(io("read the worktree's HEAD"))?;
    let head = head.trim();
    write(dot_git, "HEAD", head)?;
    let repo = read::open(common)?;
    match head.strip_prefix("ref: ") {
        Some(branch) => {
            let commit = repo
                .find_reference(branch)
                .map_err(read::failed("find the worktree's branch"))?
                .peel_to_id()
                .map_err(read::failed("peel the worktree's branch"))?;
            write(dot_git, branch, &commit.to_string())?;
        }
        None => {
            gix::ObjectId::from_hex(head.as_bytes())
                .map_err(read::failed("read the worktree's detached HEAD"))?;
        }
    }
    for name in refs {
        let spec = format!("{name}^{{commit}}");
        if let Ok(commit) = repo.rev_parse_single(spec.as_str()) {
            write(dot_git, name, &commit.to_string())?;
        }
    }
    let objects = common.join("objects");
    write(
        dot_git,
        "objects/info/alternates",
        &objects.display().to_string(),
    )?;
    write(dot_git, "config", CONFIG.trim_end())?;
    let index = admin.join("index");
    if index.try_exists().unwrap_or(false) {
        std::fs::copy(&index, dot_git.join("index")).map_err(io("copy the worktree's index"))?;
    }
    Ok(())
}

/// Writes `text` and a newline to `dot_git/relative`, making its parents (a ref's `/`s).
fn write(dot_git: &Path, relative: &str, text: &str) -> Result<(), GitError> {
    if relative
        .split('/')
        .any(|part| part == ".." || part.is_empty())
    {
        return Err(failed(&format!("`{relative}` is no name for a ref")));
    }
    let path = dot_git.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("make the sandbox's git dir"))?;
    }
    std::fs::write(&path, format!("{text}\n")).map_err(io("write the sandbox's git dir"))
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
