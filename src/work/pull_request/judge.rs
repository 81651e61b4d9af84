//! Observing the head: its checks (check runs and commit statuses, judged by
//! [`machine::judge_checks`]) and the pull request's reviews.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Driver, ADDRESSED, ANNOTATED_CHECKS_MAX, ANNOTATIONS_QUOTED_MAX};
use crate::model::pull_request::{CheckRecord, ReviewRecord, PR_ITEMS_KEPT_MAX};
use crate::platform::github::types::{CheckRun, CommitStatus, Review};
use crate::work::pull_request::machine::{
    self, CheckView, ChecksVerdict, Observation, ReviewsVerdict, Waited,
};

impl Driver {
    /// The head's checks, judged, and recorded on the task.
    pub(super) async fn observe_checks(&mut self) -> Observation {
        let repo = self.spec.repo.clone();
        if self.required.is_none() {
            match self
                .client
                .required_checks(&repo, &self.task.spec.base_branch)
                .await
            {
                Ok(required) => self.required = Some(required),
                Err(error) => return Self::failed("read the required checks", &error),
            }
        }
        let runs = match self.client.check_runs(&repo, &self.head).await {
            Ok(runs) => runs,
            Err(error) => return Self::failed("read the check runs", &error),
        };
        let statuses = match self.client.statuses(&repo, &self.head).await {
            Ok(statuses) => statuses,
            Err(error) => return Self::failed("read the commit status", &error),
        };
        let mut views: Vec<CheckView> = runs.iter().map(view_of_run).collect();
        views.extend(statuses.iter().map(|s| view_of_status(s, &self.head)));
        self.annotate(&runs, &mut views).await;
        let records: Vec<CheckRecord> = views
            .iter()
            .take(PR_ITEMS_KEPT_MAX)
            .map(|v| CheckRecord {
                name: v.name.clone(),
                status: if v.completed { "completed" } else { "pending" }.into(),
                conclusion: v.conclusion.clone(),
            })
            .collect();
        let state = self.record.state;
        if let Err(error) = self.save(state, move |r| r.checks = records).await {
            return Observation::StepFailed {
                step: "record the checks".into(),
                message: error.to_string(),
            };
        }
        let required = self.required.clone().unwrap_or_default();
        Observation::Checks(machine::judge_checks(
            &self.head,
            &required,
            &views,
            &self.waited(),
        ))
    }

    fn waited(&self) -> Waited {
        let config = &self.services.config.github;
        Waited {
            elapsed: self.waiting_since.elapsed(),
            deadline: Duration::from_secs(config.checks_deadline_secs),
            no_checks: self.spec.no_checks.unwrap_or(config.no_checks),
            no_checks_wait: Duration::from_secs(config.no_checks_wait_secs),
        }
    }

    /// Adds the annotations of the first failing check runs to their feedback.
    async fn annotate(&self, runs: &[CheckRun], views: &mut [CheckView]) {
        let failing = runs.iter().filter(|run| {
            run.head_sha == self.head
                && run.status == "completed"
                && run.output.as_ref().is_some_and(|o| o.annotations_count > 0)
        });
        for run in failing.take(ANNOTATED_CHECKS_MAX) {
            let Ok(annotations) = self.client.annotations(&self.spec.repo, run.id).await else {
                continue;
            };
            let Some(view) = views.iter_mut().find(|v| v.name == run.name) else {
                continue;
            };
            for note in annotations.iter().take(ANNOTATIONS_QUOTED_MAX) {
                let level = note.annotation_level.as_deref().unwrap_or("failure");
                view.detail.push_str(&format!(
                    "{}:{}: {level}: {}\n",
                    note.path, note.start_line, note.message
                ));
            }
        }
    }

    /// The reviews on the head: requested changes (with their comments) are feedback; a required
    /// approval is awaited (until the checks' deadline, then the wait stalls).
    pub(super) async fn observe_reviews(&mut self) -> Observation {
        let repo = self.spec.repo.clone();
        let Some(number) = self.record.number else {
            return Observation::Reviews(ReviewsVerdict::Satisfied);
        };
        let reviews = match self.client.reviews(&repo, number).await {
            Ok(reviews) => reviews,
            Err(error) => return Self::failed("read the reviews", &error),
        };
        let latest = latest_per_user(&reviews);
        let records: Vec<ReviewRecord> = latest
            .values()
            .take(PR_ITEMS_KEPT_MAX)
            .map(|r| ReviewRecord {
                user: r.user.as_ref().map(|u| u.login.clone()).unwrap_or_default(),
                state: r.state.clone(),
                commit_id: r.commit_id.clone(),
            })
            .collect();
        let state = self.record.state;
        if let Err(error) = self.save(state, move |r| r.reviews = records).await {
            return Observation::StepFailed {
                step: "record the reviews".into(),
                message: error.to_string(),
            };
        }
        let requested: Vec<&Review> = latest
            .values()
            .filter(|r| {
                is_state(r, "changes_requested") && r.commit_id.as_deref() == Some(&self.head)
            })
            .copied()
            .collect();
        if !requested.is_empty() {
            return self.changes_requested(number, &requested).await;
        }
        let approvals = latest.values().filter(|r| is_state(r, "approved")).count() as u64;
        let needed = match self
            .client
            .required_approvals(&repo, &self.task.spec.base_branch)
            .await
        {
            Ok(needed) => needed,
            Err(error) => return Self::failed("read the required reviews", &error),
        };
        if approvals >= needed {
            Observation::Reviews(ReviewsVerdict::Satisfied)
        } else if self.waited().elapsed >= self.waited().deadline {
            Observation::Checks(ChecksVerdict::Stalled(format!(
                "{approvals} of {needed} required approvals within the deadline"
            )))
        } else {
            Observation::Reviews(ReviewsVerdict::Awaiting)
        }
    }

    /// The feedback of requested changes: each review's text and every open thread on the head.
    async fn changes_requested(&self, number: u64, requested: &[&Review]) -> Observation {
        let comments = match self.client.review_comments(&self.spec.repo, number).await {
            Ok(comments) => comments,
            Err(error) => return Self::failed("read the review comments", &error),
        };
        let mut text = String::from("A reviewer requested changes on the pull request:\n");
        for review in requested {
            let who = review.user.as_ref().map_or("someone", |u| u.login.as_str());
            text.push_str(&format!(
                "\n## review by {who}\n{}\n",
                review.body.as_deref().unwrap_or("")
            ));
        }
        let threads = comments.iter().filter(|c| {
            c.in_reply_to_id.is_none() && c.commit_id == self.head && !c.body.contains(ADDRESSED)
        });
        for comment in threads {
            let line = comment.line.map(|l| format!(":{l}")).unwrap_or_default();
            text.push_str(&format!("\n{}{line}: {}\n", comment.path, comment.body));
        }
        Observation::Reviews(ReviewsVerdict::ChangesRequested(text))
    }
}

/// Whether a review is in `state` (GitHub spells states upper-case; compared without case).
fn is_state(review: &Review, state: &str) -> bool {
    review.state.eq_ignore_ascii_case(state)
}

/// Each reviewer's latest review that carries a verdict (comments alone change none).
fn latest_per_user(reviews: &[Review]) -> BTreeMap<String, &Review> {
    let mut latest = BTreeMap::new();
    for review in reviews {
        let verdicts = ["approved", "changes_requested", "dismissed"];
        if !verdicts.iter().any(|state| is_state(review, state)) {
            continue;
        }
        let user = review
            .user
            .as_ref()
            .map(|u| u.login.clone())
            .unwrap_or_default();
        latest.insert(user, review);
    }
    latest
}

fn view_of_run(run: &CheckRun) -> CheckView {
    let mut detail = String::new();
    if let Some(output) = &run.output {
        for part in [&output.title, &output.summary].into_iter().flatten() {
            detail.push_str(part);
            detail.push('\n');
        }
    }
    CheckView {
        name: run.name.clone(),
        head_sha: run.head_sha.clone(),
        completed: run.status == "completed",
        conclusion: run.conclusion.clone(),
        detail,
    }
}

/// A commit status as a check: `pending` runs, `success` passes, `failure`/`error` fail.
fn view_of_status(status: &CommitStatus, head: &str) -> CheckView {
    let conclusion = match status.state.as_str() {
        "pending" => None,
        "success" => Some("success".to_owned()),
        _ => Some("failure".to_owned()),
    };
    CheckView {
        name: status.context.clone(),
        head_sha: head.to_owned(),
        completed: conclusion.is_some(),
        conclusion,
        detail: status.description.clone().unwrap_or_default(),
    }
}
