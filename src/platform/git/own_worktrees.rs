//! The service's own worktree registrations, told apart from everyone else's. glitchlab makes
//! its worktrees (a task's, the merge queue's scratch) with `git worktree add --lock --reason
//! <`LOCK_REASON`>`, and clears its own stale ones itself instead of running `git worktree
//! prune` in the user's repository. `prune` is repository-wide and racy: it takes the
//! registration of a human's `git worktree add` caught between git's `mkdir` of the admin dir and
//! its first write ("could not open '.git/worktrees/<name>/locked' for writing", "couldn't set
//! 'HEAD'" — both seen in CI while a task's clean-up ran), and forgets a human's worktree on an
//! unmounted disk. What a human registered is theirs: the service never removes it.

use std::path::Path;

/// The `locked` reason of every worktree glitchlab makes: how its clean-up knows its own.
pub(crate) const LOCK_REASON: &str = "glitchlab: a worktree of the service (removed by it)";

/// At most this many registrations are looked at per clean-up (a repository has a few).
const REGISTRATIONS_MAX: usize = 10_000;

/// Removes the registrations under `<common>/worktrees` that glitchlab made
/// ([`LOCK_REASON`]) and whose files are gone (the directory their `gitdir` names does not
/// exist), or that a killed `worktree add` left without a `gitdir`. The files' `.git` alone
/// missing does not count: it is made anew around a sandboxed run. Answers how many went.
/// Blocking file-system work; the caller holds the repository's worktree lock, so no add of
/// the service's own is half-way.
pub(crate) fn forget_stale(common: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(common.join("worktrees")) else {
        return 0;
    };
    let mut forgotten = 0;
    for entry in entries.flatten().take(REGISTRATIONS_MAX) {
        let admin = entry.path();
        if !is_own(&admin) || !files_gone(&admin) {
            continue;
        }
        tracing::debug!(admin = %admin.display(), "forgetting a stale worktree registration of the service");
        if std::fs::remove_dir_all(&admin).is_ok() {
            forgotten += 1;
        }
    }
    forgotten
}

/// Whether the registration at `admin` is one glitchlab made (never followed through a link).
fn is_own(admin: &Path) -> bool {
    let is_dir = std::fs::symlink_metadata(admin).is_ok_and(|meta| meta.is_dir());
    is_dir
        && std::fs::read_to_string(admin.join("locked"))
            .is_ok_and(|reason| reason.trim_end() == LOCK_REASON)
}

/// Whether the worktree registered at `admin` has no files any more (or never got a `gitdir`).
fn files_gone(admin: &Path) -> bool {
    let gitdir = match std::fs::read_to_string(admin.join("gitdir")) {
        Ok(gitdir) => gitdir,
        Err(error) => return error.kind() == std::io::ErrorKind::NotFound,
    };
    match Path::new(gitdir.trim_end()).parent() {
        Some(files) if !files.as_os_str().is_empty() => std::fs::symlink_metadata(files)
            .is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(common: &Path, name: &str, locked: Option<&str>, files: Option<&Path>) {
        let admin = common.join("worktrees").join(name);
        std::fs::create_dir_all(&admin).unwrap();
        if let Some(reason) = locked {
            std::fs::write(admin.join("locked"), format!("{reason}\n")).unwrap();
        }
        if let Some(files) = files {
            let gitdir = format!("{}\n", files.join(".git").display());
            std::fs::write(admin.join("gitdir"), gitdir).unwrap();
        }
    }

    /// Only the service's own registrations whose files are gone go; a human's stay whatever
    /// state they are in, and a live worktree of the service whose `.git` is briefly missing
    /// stays too.
    #[test]
    fn only_the_services_own_stale_registrations_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let common = dir.path().join("repo.git");
        let live = dir.path().join("live");
        std::fs::create_dir_all(&live).unwrap();
        let gone = dir.path().join("gone");
        register(&common, "ours-gone", Some(LOCK_REASON), Some(&gone));
        register(&common, "ours-half-made", Some(LOCK_REASON), None);
        register(&common, "ours-live", Some(LOCK_REASON), Some(&live));
        register(
            &common,
            "human-unmounted",
            Some("on my usb disk"),
            Some(&gone),
        );
        register(&common, "human-unlocked-gone", None, Some(&gone));
        register(&common, "human-being-added", None, None);
        assert_eq!(forget_stale(&common), 2);
        let mut left: Vec<String> = std::fs::read_dir(common.join("worktrees"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "human-being-added",
                "human-unlocked-gone",
                "human-unmounted",
                "ours-live"
            ]
        );
    }

    /// A repository with no linked worktrees has nothing to forget.
    #[test]
    fn a_repository_without_worktrees_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(forget_stale(dir.path()), 0);
    }
}
