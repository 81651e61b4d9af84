//! What the merge queues know about their bases: whether a base commit alone passes a verify
//! command (cached, so a red base is verified once per commit, not once per task), and which
//! bases are red now (shown by `/v1/report` and `/readyz`). Shared through [`super::Services`];
//! in memory only — after a restart the first red candidate checks its base again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// Verdicts remembered at most; past it the cache starts afresh (a verdict is cheap to redo).
pub(crate) const VERDICTS_MAX: usize = 256;
/// Bytes of a red base's verify output kept for the report (its tail).
pub(crate) const RED_OUTPUT_BYTES_MAX: usize = 4096;

/// (repository directory, base commit, verify command).
type VerdictKey = (String, String, String);

/// Whether one base commit passed one verify command, and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseVerdict {
    /// Exit 0.
    pub passed: bool,
    /// Its output's tail.
    pub output: String,
}

/// A base branch whose own commit fails a task's verify: its queue holds, spending no attempt,
/// until the branch moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RedBase {
    /// The repository as tasks name it.
    pub repo: String,
    /// The base branch.
    pub branch: String,
    /// The red commit.
    pub commit: String,
    /// The verify command that fails on it.
    pub command: String,
    /// The tail of that command's output.
    pub output: String,
    /// Since when the queue holds.
    pub since: DateTime<Utc>,
}

/// The cache and the red bases; std mutexes, never held across an await.
#[derive(Debug, Default)]
pub struct BaseHealth {
    verdicts: Mutex<HashMap<VerdictKey, BaseVerdict>>,
    red: Mutex<BTreeMap<(String, String), RedBase>>,
}

impl BaseHealth {
    /// The remembered verdict of `command` on `commit` of the repository at `dir`.
    pub(crate) fn verdict(&self, dir: &str, commit: &str, command: &str) -> Option<BaseVerdict> {
        let verdicts = self.verdicts.lock().ok()?;
        verdicts
            .get(&(dir.to_owned(), commit.to_owned(), command.to_owned()))
            .cloned()
    }

    /// Remembers a verdict (bounded by [`VERDICTS_MAX`]).
    pub(crate) fn remember(&self, dir: &str, commit: &str, command: &str, verdict: BaseVerdict) {
        let Ok(mut verdicts) = self.verdicts.lock() else {
            return;
        };
        if verdicts.len() >= VERDICTS_MAX {
            verdicts.clear();
        }
        verdicts.insert(
            (dir.to_owned(), commit.to_owned(), command.to_owned()),
            verdict,
        );
    }

    /// Marks `red.repo`/`red.branch` red (keeping the first `since` while the commit is the same).
    pub(crate) fn mark_red(&self, mut red: RedBase) {
        let Ok(mut map) = self.red.lock() else {
            return;
        };
        let key = (red.repo.clone(), red.branch.clone());
        if let Some(old) = map.get(&key).filter(|old| old.commit == red.commit) {
            red.since = old.since;
        }
        map.insert(key, red);
    }

    /// The branch is no longer known red (it moved, or a candidate on it passed).
    pub(crate) fn clear(&self, repo: &str, branch: &str) {
        if let Ok(mut map) = self.red.lock() {
            map.remove(&(repo.to_owned(), branch.to_owned()));
        }
    }

    /// Every red base now, by repository and branch.
    pub fn red(&self) -> Vec<RedBase> {
        self.red
            .lock()
            .map(|map| map.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_red_base_keeps_its_first_sighting_until_it_moves() {
        let health = BaseHealth::default();
        let red = |commit: &str, since: DateTime<Utc>| RedBase {
            repo: "/r".into(),
            branch: "main".into(),
            commit: commit.into(),
            command: "make test".into(),
            output: "boom".into(),
            since,
        };
        let first = Utc::now() - chrono::TimeDelta::minutes(5);
        health.mark_red(red("a", first));
        health.mark_red(red("a", Utc::now()));
        assert_eq!(health.red()[0].since, first);
        health.mark_red(red("b", Utc::now()));
        assert_ne!(
            health.red()[0].since,
            first,
            "a new red commit is a new sighting"
        );
        health.clear("/r", "main");
        assert!(health.red().is_empty());
        health.remember(
            "/r",
            "a",
            "make test",
            BaseVerdict {
                passed: false,
                output: "x".into(),
            },
        );
        assert!(!health.verdict("/r", "a", "make test").unwrap().passed);
        assert!(health.verdict("/r", "a", "other").is_none());
    }
}
