//! Intake's memory of repositories git confirmed a moment ago, shared through [`super::Services`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a repository and base branch found at submit stay trusted without asking git again.
/// A branch deleted within it is caught when the worktree is made, with git's own error, and
/// that failure forgets the repository ([`RepoChecks::forget`]): the next submit asks git again.
pub(crate) const REPO_CHECK_TTL: Duration = Duration::from_secs(30);
/// Repository/branch pairs remembered at most; past it the expired ones are dropped (all of them
/// when that is not enough).
pub(crate) const REPO_CHECKS_MAX: usize = 1024;

/// Repository and base-branch pairs confirmed a moment ago: a burst of submissions to one
/// repository opens it once, not once each (issue #9's hot path). Keyed by the canonical path a
/// submission named (symlinks and `..` resolved), so every spelling of one directory shares an
/// entry; the answer is the work tree's top level, the name the task is stored under. Only
/// successes are remembered, never for longer than [`REPO_CHECK_TTL`].
#[derive(Debug, Default)]
pub struct RepoChecks {
    /// (canonical path, branch) → (top level, when git found it); a std mutex, never held across
    /// an await.
    found: std::sync::Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl RepoChecks {
    /// The top level of the work tree at the canonical `path`, if git found `branch` there less
    /// than [`REPO_CHECK_TTL`] ago.
    pub(crate) fn recently_found(&self, path: &str, branch: &str) -> Option<String> {
        let found = self.found.lock().ok()?;
        let key = (path.to_owned(), branch.to_owned());
        found
            .get(&key)
            .filter(|(_, at)| at.elapsed() < REPO_CHECK_TTL)
            .map(|(top, _)| top.clone())
    }

    /// Remembers that git found `branch` now in the work tree at the canonical `path`, whose top
    /// level is `top`.
    pub(crate) fn found(&self, path: &str, branch: &str, top: &str) {
        let Ok(mut found) = self.found.lock() else {
            return;
        };
        if found.len() >= REPO_CHECKS_MAX {
            found.retain(|_, (_, at)| at.elapsed() < REPO_CHECK_TTL);
            if found.len() >= REPO_CHECKS_MAX {
                found.clear();
            }
        }
        found.insert(
            (path.to_owned(), branch.to_owned()),
            (top.to_owned(), Instant::now()),
        );
    }

    /// Forgets every pair whose work tree is `top` (as a task stores its repository): a stage
    /// could not make a worktree from it, so what git said at submit may no longer hold.
    pub(crate) fn forget(&self, top: &str) {
        if let Ok(mut found) = self.found.lock() {
            found.retain(|(path, _), (found_top, _)| path != top && found_top != top);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_worktree_forgets_every_spelling_of_its_repository() {
        let checks = RepoChecks::default();
        checks.found("/r/link", "main", "/r/top");
        checks.found("/r/top", "dev", "/r/top");
        checks.found("/other", "main", "/other");
        assert_eq!(
            checks.recently_found("/r/link", "main"),
            Some("/r/top".into())
        );
        checks.forget("/r/top");
        assert_eq!(checks.recently_found("/r/link", "main"), None);
        assert_eq!(checks.recently_found("/r/top", "dev"), None);
        assert_eq!(
            checks.recently_found("/other", "main"),
            Some("/other".into())
        );
    }
}
