//! The parts of GitHub's REST answers glitchlab reads (serde ignores the rest). The names follow
//! `@octokit/openapi`'s schemas (`pull-request`, `check-run`, `combined-commit-status`,
//! `pull-request-review`, `pull-request-review-comment`); the vendored subset in
//! `tests/contract/github/` is what the tests hold the fake to.

use serde::Deserialize;

/// A pull request (`pull-request`, `pull-request-simple`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PullRequest {
    /// Its number in the repository.
    pub number: u64,
    /// Its page.
    pub html_url: String,
    /// `open` or `closed`.
    pub state: String,
    /// Its text (holds the task's marker).
    #[serde(default)]
    pub body: Option<String>,
    /// The head branch and commit.
    pub head: GitRef,
    /// Whether it was merged (absent from list answers).
    #[serde(default)]
    pub merged: Option<bool>,
    /// The merge's commit once merged.
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
}

/// A branch and the commit it points at.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GitRef {
    /// The commit.
    pub sha: String,
}

/// `GET …/commits/{ref}/check-runs`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CheckRuns {
    /// The runs (one page, at most 100).
    pub check_runs: Vec<CheckRun>,
}

/// One check run (`check-run`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CheckRun {
    /// Its id (for annotations).
    pub id: u64,
    /// Its name (what branch protection requires).
    pub name: String,
    /// The commit it ran on.
    pub head_sha: String,
    /// `queued`, `in_progress`, `completed`, ...
    pub status: String,
    /// `success`, `failure`, `neutral`, `cancelled`, `skipped`, `timed_out`,
    /// `action_required`, `stale` once completed.
    #[serde(default)]
    pub conclusion: Option<String>,
    /// Its report.
    #[serde(default)]
    pub output: Option<CheckOutput>,
}

/// A check run's report.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct CheckOutput {
    /// One line.
    #[serde(default)]
    pub title: Option<String>,
    /// Markdown.
    #[serde(default)]
    pub summary: Option<String>,
    /// Annotations it carries (read with `…/check-runs/{id}/annotations`).
    #[serde(default)]
    pub annotations_count: u64,
}

/// One annotation of a check run.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Annotation {
    /// The file.
    pub path: String,
    /// The first line.
    pub start_line: u64,
    /// `notice`, `warning`, `failure`.
    #[serde(default)]
    pub annotation_level: Option<String>,
    /// What it says.
    pub message: String,
}

/// `GET …/commits/{ref}/status`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CombinedStatus {
    /// The statuses, the latest per context.
    pub statuses: Vec<CommitStatus>,
}

/// One commit status (the older API CI systems still use).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CommitStatus {
    /// Its context (what branch protection requires).
    pub context: String,
    /// `error`, `failure`, `pending`, `success`.
    pub state: String,
    /// One line.
    #[serde(default)]
    pub description: Option<String>,
}

/// A review (`pull-request-review`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Review {
    /// Who.
    pub user: Option<User>,
    /// `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`, `DISMISSED`, `PENDING`.
    pub state: String,
    /// What they wrote.
    #[serde(default)]
    pub body: Option<String>,
    /// The head it was given on.
    #[serde(default)]
    pub commit_id: Option<String>,
}

/// A user, by login.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct User {
    /// The login.
    pub login: String,
}

/// A review comment (`pull-request-review-comment`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ReviewComment {
    /// Its id (replies name it).
    pub id: u64,
    /// The commit it was made on.
    pub commit_id: String,
    /// The file.
    pub path: String,
    /// The line, when it is on one.
    #[serde(default)]
    pub line: Option<u64>,
    /// What it says.
    pub body: String,
    /// The comment it answers (a thread's first comment has none).
    #[serde(default)]
    pub in_reply_to_id: Option<u64>,
}

/// `PUT …/pulls/{n}/merge` answered 200.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct MergeResult {
    /// The base's new commit.
    pub sha: String,
}

/// `GET …/branches/{b}/protection/required_status_checks`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RequiredStatusChecks {
    /// The required contexts (older form).
    #[serde(default)]
    pub contexts: Vec<String>,
    /// The required checks (newer form).
    #[serde(default)]
    pub checks: Vec<RequiredCheck>,
}

/// One required check.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RequiredCheck {
    /// Its name.
    pub context: String,
}

/// One rule of `GET …/rules/branches/{b}` (rulesets).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BranchRule {
    /// `required_status_checks`, `pull_request`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The rule's parameters.
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
}
