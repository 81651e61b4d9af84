//! Intake's memory of repositories git confirmed a moment ago, shared through [`super::Services`].

use std::time::Duration;

/// How long a repository and base branch found at submit stay trusted without asking git again.
/// A branch deleted within it is caught when the worktree is made, with git's own error.
pub(crate) const REPO_CHECK_TTL: Duration = Duration::from_secs(5);
/// Repository/branch pairs remembered at most; past it the expired ones are dropped (all of them
/// when that is not enough).
pub(crate) const REPO_CHECKS_MAX: usize = 1024;

/// Repository and base-branch pairs confirmed a moment ago: a burst of submissions to one
/// repository opens it once, not once each (issue #9's hot path). Only successes are remembered,
/// never for longer than [`REPO_CHECK_TTL`].
#[derive(Debug, Default)]
pub struct RepoChecks {
    /// (repo, branch) → when git found it; a std mutex, never held across an await.
    found: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
}

impl RepoChecks {
    /// Whether git found `branch` in `repo` less than [`REPO_CHECK_TTL`] ago.
    pub fn recently_found(&self, repo: &str, branch: &str) -> bool {
        let Ok(found) = self.found.lock() else {
            return false;
        };
        let key = (repo.to_owned(), branch.to_owned());
        found
            .get(&key)
            .is_some_and(|at| at.elapsed() < REPO_CHECK_TTL)
    }

    /// Remembers that git found `branch` in `repo` now.
    pub fn found(&self, repo: &str, branch: &str) {
        let Ok(mut found) = self.found.lock() else {
            return;
        };
        if found.len() >= REPO_CHECKS_MAX {
            found.retain(|_, at| at.elapsed() < REPO_CHECK_TTL);
            if found.len() >= REPO_CHECKS_MAX {
                found.clear();
            }
        }
        found.insert(
            (repo.to_owned(), branch.to_owned()),
            std::time::Instant::now(),
        );
    }
}
