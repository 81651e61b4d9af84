//! `delivery: pull_request`: what the submitter asks of the pull request ([`PullRequestSpec`],
//! part of the task's spec) and what glitchlab knows of it while it runs ([`PullRequestRecord`],
//! part of its progress: the step the delivery reached is recorded before the next side effect,
//! so a restart resumes without a second PR, comment or merge). The lifecycle itself is the pure
//! machine in `work::pull_request::machine`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Checks and reviews kept on the record (the newest first); more are counted, not kept.
pub(crate) const PR_ITEMS_KEPT_MAX: usize = 50;

/// What a push or an API failure after the retry ladder does to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestMode {
    /// The task fails `DELIVERY_FAILED`, naming the step.
    #[default]
    FailFast,
    /// The task ends with its branch pushed, `delivered: branch_only` and `delivery_error`.
    BestEffort,
}

/// Whether glitchlab merges a green pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestMerge {
    /// Merged (squash, with `sha` = the verified head) once checks and reviews are satisfied.
    #[default]
    Auto,
    /// The task ends when the pull request is green and open; a human merges.
    None,
}

/// What a head with no required checks and no check at all waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoChecksPolicy {
    /// Wait `[github] no_checks_wait_secs` for a check to appear, then count the head green.
    #[default]
    WaitSecs,
    /// Green at once.
    Pass,
    /// The task fails `CHECKS_STALLED` at once: CI never runs on this repository.
    Fail,
}

/// What the submitter asked of the pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequestSpec {
    /// `owner/name` on GitHub (default: from an `https://…/owner/name(.git)` task `repo`).
    pub repo: String,
    /// What a failure after the retry ladder does.
    #[serde(default)]
    pub mode: PullRequestMode,
    /// Whether glitchlab merges.
    #[serde(default)]
    pub merge: PullRequestMerge,
    /// Open the pull request as a draft.
    #[serde(default)]
    pub draft: bool,
    /// What a head with no checks at all waits for (default: `[github] no_checks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_checks: Option<NoChecksPolicy>,
}

impl PullRequestSpec {
    /// The owner and the name, when `repo` is `owner/name`.
    pub fn owner_name(&self) -> Option<(&str, &str)> {
        parse_owner_name(&self.repo)
    }
}

/// `owner/name` split, when both are non-empty and made of GitHub's name characters.
pub(crate) fn parse_owner_name(repo: &str) -> Option<(&str, &str)> {
    let (owner, name) = repo.split_once('/')?;
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 100
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (valid(owner) && valid(name) && name != "." && name != "..").then_some((owner, name))
}

/// `owner/name` from an `https://host/owner/name(.git)` URL.
pub(crate) fn owner_name_from_url(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let (_host, path) = rest.split_once('/')?;
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    parse_owner_name(path).map(|(owner, name)| format!("{owner}/{name}"))
}

/// Where the pull-request delivery stands (the machine's state, as recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrState {
    /// Nothing done yet.
    #[default]
    Start,
    /// The branch is on the remote at `head_sha`.
    Pushed,
    /// The pull request exists (`number`) for `head_sha`.
    PrOpen,
    /// Waiting for the checks of `head_sha`.
    WaitingChecks,
    /// Checks are green; waiting for a review the base requires.
    WaitingReview,
    /// `PUT …/merge` was sent with `sha = head_sha`.
    Merging,
    /// Merged; `merged_sha` is the base's new commit.
    Merged,
    /// Green and open, left for a human (`merge: none`).
    GreenOpen,
    /// Red checks or requested changes went back to Patch as feedback.
    ChangesNeeded,
    /// Ended without a merge (see the task's error or `delivery_error`).
    Failed,
}

/// One check on the head, as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckRecord {
    /// The check run's (or commit status's) name.
    pub name: String,
    /// `queued`, `in_progress`, `completed` (statuses: `pending` or `completed`).
    pub status: String,
    /// `success`, `failure`, `cancelled`, ... once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<String>,
}

/// One review on the pull request, as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReviewRecord {
    /// Who reviewed.
    pub user: String,
    /// `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`, ...
    pub state: String,
    /// The head it was given on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_id: Option<String>,
}

/// What glitchlab knows of the task's pull request; in `progress` (written while it runs, each
/// step before the next side effect).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullRequestRecord {
    /// The pull request's number, once found or opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    /// Its page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where the delivery stands.
    #[serde(default)]
    pub state: PrState,
    /// The head commit the checks, reviews and merge are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha: Option<String>,
    /// The checks of `head_sha`, as last seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckRecord>,
    /// The reviews, as last seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<ReviewRecord>,
    /// The head whose failure (red checks or requested changes) already went to Patch: the same
    /// verdict is never fed back twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fed_back: Option<String>,
    /// The base's commit the merge made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_sha: Option<String>,
    /// Times the head moved under a merge (`409`) and was verified again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub head_moves: u32,
    /// When the wait for `head_sha`'s checks began: set once per head and kept across restarts,
    /// so `checks_deadline_secs` counts from it, not from the process's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_since: Option<DateTime<Utc>>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// The hidden marker in a pull request's body that names its task: how a pull request opened
/// before a crash is found again.
pub(crate) fn marker(task_id: &str) -> String {
    format!("<!-- glitchlab:task={task_id} -->")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_name_come_from_https_urls_only() {
        let cases = [
            ("https://github.com/acme/widgets.git", Some("acme/widgets")),
            ("https://github.com/acme/widgets", Some("acme/widgets")),
            ("https://ghe.example/acme/w-1/", Some("acme/w-1")),
            ("ssh://git@github.com/acme/widgets.git", None),
            ("https://github.com/acme", None),
            ("https://github.com/acme/a/b", None),
        ];
        for (url, expected) in cases {
            assert_eq!(owner_name_from_url(url).as_deref(), expected, "{url}");
        }
        assert_eq!(parse_owner_name("a/.."), None);
        assert_eq!(parse_owner_name("a b/c"), None);
    }

    #[test]
    fn spec_defaults_and_refuses_unknown_keys() {
        let spec: PullRequestSpec = serde_json::from_str(r#"{"repo":"o/r"}"#).unwrap();
        assert_eq!(spec.mode, PullRequestMode::FailFast);
        assert_eq!(spec.merge, PullRequestMerge::Auto);
        assert!(!spec.draft);
        assert!(serde_json::from_str::<PullRequestSpec>(r#"{"repo":"o/r","x":1}"#).is_err());
    }
}
