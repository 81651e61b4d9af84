//! The pull-request lifecycle, pure: `(state, observation) → (state', action)`, keyed by the head
//! SHA (every observation is about exactly the head recorded). The driver in
//! [`super`] makes the observations (git, GitHub) and executes the actions; nothing here does IO.
//!
//! The rules of "green" are here too ([`judge_checks`]): a required check must conclude
//! `success` or `neutral` on the head itself; `cancelled`, `timed_out`, `action_required`,
//! `stale`, `skipped` and `failure` are not passes; a check that never reports by the deadline
//! stalls the wait, and a head with no check at all follows the `no_checks` policy.

use std::time::Duration;

use crate::model::codes;
use crate::model::pull_request::{NoChecksPolicy, PrState, PullRequestMerge, PullRequestMode};

/// What the driver saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observation {
    /// The branch is on the remote at the head.
    Pushed,
    /// The pull request for the head exists (found by head and marker, or opened); `merged`:
    /// it was merged already (a crash during the merge), with the base's commit.
    PrReady {
        /// The merge commit, when GitHub merged it already.
        merged: Option<String>,
    },
    /// The head's checks, judged.
    Checks(ChecksVerdict),
    /// The pull request's reviews on the head, judged.
    Reviews(ReviewsVerdict),
    /// The merge's answer.
    Merge(MergeAnswer),
    /// A step failed after the retry ladder.
    StepFailed {
        /// The step (`push`, `open the pull request`, ...).
        step: String,
        /// Why.
        message: String,
    },
}

/// The head's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChecksVerdict {
    /// Every required check passed (or, with none required, every check, or `no_checks`).
    Green,
    /// Some have not reported yet (their names).
    Pending(Vec<String>),
    /// Some failed: their names, summaries and annotations, as feedback.
    Red(String),
    /// The deadline passed (or `no_checks = fail`): what never reported.
    Stalled(String),
}

/// The reviews on the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReviewsVerdict {
    /// No change requested on the head and the approvals the base requires are given.
    Satisfied,
    /// An approval the base requires is not given yet: awaited, never faked.
    Awaiting,
    /// Changes were requested on the head: the reviews and comments, as feedback.
    ChangesRequested(String),
}

/// What `PUT …/merge` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MergeAnswer {
    /// Merged as this base commit.
    Merged(String),
    /// `409`: the head moved; `moves` counts the moves so far, this one included.
    HeadMoved {
        /// Moves so far.
        moves: u32,
    },
    /// GitHub refused.
    Refused(String),
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Find the open pull request of the head branch (by its marker), or open one.
    FindOrOpen,
    /// Wait (a poll or a webhook), then judge the head's checks.
    AwaitChecks,
    /// Wait, then judge the checks again and the reviews.
    AwaitReviews,
    /// Judge the reviews now (the checks just turned green).
    ReadReviews,
    /// Merge with `sha` = the head.
    Merge,
    /// Hand this feedback to Patch for another attempt (recorded failure `code`).
    FeedBack {
        /// `CHECKS_FAILED` or `CHANGES_REQUESTED`.
        code: &'static str,
        /// What to fix.
        text: String,
    },
    /// Delivered: merged (`merged: Some`) or green and open (`merge: none`).
    Done {
        /// The base's new commit, when merged.
        merged: Option<String>,
    },
    /// Fail the task with `code` (`fail_fast`).
    Fail {
        /// The code.
        code: &'static str,
        /// The message.
        message: String,
    },
    /// End with the branch pushed, `delivered: branch_only` (`best_effort`).
    BranchOnly {
        /// The code the failure would have had.
        code: &'static str,
        /// The message.
        message: String,
    },
}

/// What the task asked, as the machine needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// `fail_fast` or `best_effort`.
    pub mode: PullRequestMode,
    /// `auto` or `none`.
    pub merge: PullRequestMerge,
    /// Head moves allowed under a merge.
    pub head_moves_max: u32,
}

/// One step of the machine.
pub(crate) fn step(policy: &Policy, state: PrState, observation: Observation) -> (PrState, Action) {
    use Observation as O;
    match observation {
        O::Pushed => (PrState::Pushed, Action::FindOrOpen),
        O::PrReady { merged: Some(sha) } => done(PrState::Merged, Some(sha)),
        O::PrReady { merged: None } => (PrState::PrOpen, Action::AwaitChecks),
        O::Checks(ChecksVerdict::Green) => (PrState::WaitingReview, Action::ReadReviews),
        O::Checks(ChecksVerdict::Pending(_)) => (PrState::WaitingChecks, Action::AwaitChecks),
        O::Checks(ChecksVerdict::Red(text)) => feed_back(codes::CHECKS_FAILED, text),
        O::Checks(ChecksVerdict::Stalled(what)) => fail(policy, codes::CHECKS_STALLED, what),
        O::Reviews(ReviewsVerdict::Satisfied) => match policy.merge {
            PullRequestMerge::Auto => (PrState::Merging, Action::Merge),
            PullRequestMerge::None => done(PrState::GreenOpen, None),
        },
        O::Reviews(ReviewsVerdict::Awaiting) => (PrState::WaitingReview, Action::AwaitReviews),
        O::Reviews(ReviewsVerdict::ChangesRequested(text)) => {
            feed_back(codes::CHANGES_REQUESTED, text)
        }
        O::Merge(MergeAnswer::Merged(sha)) => done(PrState::Merged, Some(sha)),
        O::Merge(MergeAnswer::HeadMoved { moves }) if moves > policy.head_moves_max => {
            let message = format!("the head moved under the merge {moves} times");
            fail(policy, codes::DELIVERY_FAILED, message)
        }
        // Re-verify: the checks of the head as it is now decide again.
        O::Merge(MergeAnswer::HeadMoved { .. }) => (PrState::WaitingChecks, Action::AwaitChecks),
        O::Merge(MergeAnswer::Refused(message)) => fail(
            policy,
            codes::DELIVERY_FAILED,
            format!("merge refused: {message}"),
        ),
        O::StepFailed { step, message } if state == PrState::Merging => fail(
            policy,
            codes::DELIVERY_FAILED,
            format!("{step} failed while merging: {message}"),
        ),
        O::StepFailed { step, message } => fail(
            policy,
            codes::DELIVERY_FAILED,
            format!("{step} failed: {message}"),
        ),
    }
}

fn done(state: PrState, merged: Option<String>) -> (PrState, Action) {
    (state, Action::Done { merged })
}

fn feed_back(code: &'static str, text: String) -> (PrState, Action) {
    (PrState::ChangesNeeded, Action::FeedBack { code, text })
}

fn fail(policy: &Policy, code: &'static str, message: String) -> (PrState, Action) {
    let action = match policy.mode {
        PullRequestMode::FailFast => Action::Fail { code, message },
        PullRequestMode::BestEffort => Action::BranchOnly { code, message },
    };
    (PrState::Failed, action)
}

/// One check on the head as GitHub reports it (a check run, or a commit status mapped onto one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckView {
    /// Its name (or status context).
    pub name: String,
    /// The commit it ran on.
    pub head_sha: String,
    /// Whether it finished.
    pub completed: bool,
    /// Its conclusion once completed.
    pub conclusion: Option<String>,
    /// Its title, summary and annotations, for feedback.
    pub detail: String,
}

impl CheckView {
    fn passed(&self) -> bool {
        self.completed && matches!(self.conclusion.as_deref(), Some("success" | "neutral"))
    }

    fn failed(&self) -> bool {
        self.completed && !self.passed()
    }
}

/// How long the head has waited, and the limits that apply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waited {
    /// Since the head's checks were first awaited.
    pub elapsed: Duration,
    /// `[github] checks_deadline_secs`.
    pub deadline: Duration,
    /// The `no_checks` policy.
    pub no_checks: NoChecksPolicy,
    /// `[github] no_checks_wait_secs`.
    pub no_checks_wait: Duration,
}

/// Judges the checks of `head`: the `required` ones (branch protection, rulesets), or — with none
/// required — every check on the head. A check on another commit is stale: not counted.
pub(crate) fn judge_checks(
    head: &str,
    required: &[String],
    checks: &[CheckView],
    waited: &Waited,
) -> ChecksVerdict {
    let on_head: Vec<&CheckView> = checks.iter().filter(|c| c.head_sha == head).collect();
    let considered: Vec<Option<&CheckView>> = if required.is_empty() {
        // Optional skipped jobs are no verdict either way.
        on_head
            .iter()
            .filter(|c| c.conclusion.as_deref() != Some("skipped"))
            .map(|c| Some(*c))
            .collect()
    } else {
        required
            .iter()
            .map(|name| on_head.iter().find(|c| &c.name == name).copied())
            .collect()
    };
    if considered.is_empty() {
        return no_checks(waited);
    }
    let red: Vec<&CheckView> = considered
        .iter()
        .flatten()
        .filter(|c| c.failed())
        .copied()
        .collect();
    if !red.is_empty() {
        return ChecksVerdict::Red(red_feedback(&red));
    }
    let pending: Vec<String> = if required.is_empty() {
        considered
            .iter()
            .flatten()
            .filter(|c| !c.completed)
            .map(|c| c.name.clone())
            .collect()
    } else {
        required
            .iter()
            .zip(&considered)
            .filter(|(_, check)| !check.is_some_and(CheckView::passed))
            .map(|(name, _)| name.clone())
            .collect()
    };
    if pending.is_empty() {
        ChecksVerdict::Green
    } else if waited.elapsed >= waited.deadline {
        ChecksVerdict::Stalled(format!(
            "no result within {}s from: {}",
            waited.deadline.as_secs(),
            pending.join(", ")
        ))
    } else {
        ChecksVerdict::Pending(pending)
    }
}

fn no_checks(waited: &Waited) -> ChecksVerdict {
    match waited.no_checks {
        NoChecksPolicy::Pass => ChecksVerdict::Green,
        NoChecksPolicy::Fail => {
            ChecksVerdict::Stalled("the head has no check at all (no_checks = fail)".into())
        }
        NoChecksPolicy::WaitSecs if waited.elapsed >= waited.no_checks_wait => ChecksVerdict::Green,
        NoChecksPolicy::WaitSecs => ChecksVerdict::Pending(Vec::new()),
    }
}

fn red_feedback(red: &[&CheckView]) -> String {
    let mut text = String::from("The pull request's checks failed on GitHub:\n");
    for check in red {
        let conclusion = check.conclusion.as_deref().unwrap_or("failure");
        text.push_str(&format!("\n## check `{}`: {conclusion}\n", check.name));
        if !check.detail.is_empty() {
            text.push_str(&check.detail);
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests;
