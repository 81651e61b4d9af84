//! The pull request itself: found again (recorded number, else head branch and marker) or opened
//! once; merged with `sha` = the head; review threads answered after a fix.

use serde_json::json;

use super::{Driver, ADDRESSED};
use crate::model::pull_request::{marker, PrState};
use crate::model::task::branch_name;
use crate::platform::github::types::PullRequest;
use crate::platform::github::{Created, Merge};
use crate::work::pull_request::machine::{MergeAnswer, Observation};

impl Driver {
    /// The task's pull request, opened only when none exists (see the module).
    pub(super) async fn find_or_open(&mut self) -> Observation {
        let found = match self.find().await {
            Ok(found) => found,
            Err(observation) => return observation,
        };
        let pull = match found {
            Some(pull) => pull,
            None => match self.open().await {
                Ok(pull) => pull,
                Err(observation) => return observation,
            },
        };
        if pull.merged == Some(true) {
            return self.found_merged(pull).await;
        }
        let (number, url) = (pull.number, pull.html_url.clone());
        let since = self.wait_began();
        let recorded = self
            .save(PrState::PrOpen, move |r| {
                r.number = Some(number);
                r.url = Some(url);
                r.checks_since = Some(since);
            })
            .await;
        if let Err(error) = recorded {
            return Observation::StepFailed {
                step: "record the pull request".into(),
                message: error.to_string(),
            };
        }
        self.reply_on_threads(number).await;
        Observation::PrReady { merged: None }
    }

    /// A pull request GitHub merged already (a crash during the merge, before it was recorded):
    /// landed, recorded like a merge glitchlab saw, never merged again.
    async fn found_merged(&mut self, pull: PullRequest) -> Observation {
        let sha = pull.merge_commit_sha.unwrap_or(pull.head.sha);
        let (number, url, merged) = (pull.number, pull.html_url, sha.clone());
        let recorded = self
            .save(PrState::Merged, move |r| {
                r.number = Some(number);
                r.url = Some(url);
                r.merged_sha = Some(merged);
            })
            .await;
        match recorded {
            Ok(()) => Observation::PrReady { merged: Some(sha) },
            Err(error) => Observation::StepFailed {
                step: "record the merge".into(),
                message: error.to_string(),
            },
        }
    }

    /// The recorded pull request (open, or merged by a merge cut off before it was recorded),
    /// else the open one of the head branch that carries the marker.
    async fn find(&self) -> Result<Option<PullRequest>, Observation> {
        let repo = &self.spec.repo;
        if let Some(number) = self.record.number {
            let pull = self
                .client
                .pull(repo, number)
                .await
                .map_err(|e| Self::failed("read the pull request", &e))?;
            if pull.state == "open" || pull.merged == Some(true) {
                return Ok(Some(pull));
            }
        }
        let owner = repo.split('/').next().unwrap_or_default();
        let head = format!("{owner}:{}", branch_name(self.task.id));
        let pulls = self
            .client
            .pulls_for_head(repo, &head)
            .await
            .map_err(|e| Self::failed("find the pull request", &e))?;
        let mark = marker(&self.task.id.to_string());
        let ours = |pull: &PullRequest| pull.body.as_deref().is_some_and(|b| b.contains(&mark));
        Ok(pulls.iter().find(|p| ours(p)).or(pulls.first()).cloned())
    }

    /// Opens the pull request; `422 already exists` (a crash after GitHub opened one, or a race):
    /// looked up again.
    async fn open(&self) -> Result<PullRequest, Observation> {
        let task = &self.task;
        // A task made from an issue of this repository closes it when merged.
        let fixes = task
            .spec
            .source
            .as_ref()
            .filter(|s| s.repo.eq_ignore_ascii_case(&self.spec.repo))
            .map(|s| format!("Fixes #{}\n\n", s.number))
            .unwrap_or_default();
        let body = format!(
            "{fixes}{}\n\nOpened by glitchlab for task `{}`.\n\n{}",
            task.spec.description,
            task.id,
            marker(&task.id.to_string())
        );
        let new = json!({
            "title": task.spec.title,
            "head": branch_name(task.id),
            "base": task.spec.base_branch,
            "body": body,
            "draft": self.spec.draft,
        });
        let created = self
            .client
            .create_pull(&self.spec.repo, &new)
            .await
            .map_err(|e| Self::failed("open the pull request", &e))?;
        match created {
            Created::Opened(pull) => Ok(pull),
            Created::AlreadyExists => self.find().await?.ok_or(Observation::StepFailed {
                step: "open the pull request".into(),
                message: "GitHub says one exists for the head, but none is open".into(),
            }),
        }
    }

    /// Merges with `sha` = the head; `409`: the head moved, so the head is read again and
    /// verified again (its checks decide anew).
    pub(super) async fn merge(&mut self) -> Observation {
        let Some(number) = self.record.number else {
            return Observation::StepFailed {
                step: "merge".into(),
                message: "no pull request recorded".into(),
            };
        };
        let title = format!("{} (#{number})", self.task.spec.title);
        let answer = self
            .client
            .merge(&self.spec.repo, number, &self.head, &title)
            .await;
        match answer {
            Ok(Merge::Merged(sha)) => {
                // Test hook: a crash after GitHub merged, before the record says `merged`.
                crate::work_failpoint!("pull_request.merged");
                let merged = sha.clone();
                match self
                    .save(PrState::Merged, move |r| r.merged_sha = Some(merged))
                    .await
                {
                    Ok(()) => Observation::Merge(MergeAnswer::Merged(sha)),
                    Err(error) => Observation::StepFailed {
                        step: "record the merge".into(),
                        message: error.to_string(),
                    },
                }
            }
            Ok(Merge::HeadMoved) => self.head_moved(number).await,
            Ok(Merge::Refused(message)) => Observation::Merge(MergeAnswer::Refused(message)),
            Err(error) => Self::failed("merge", &error),
        }
    }

    async fn head_moved(&mut self, number: u64) -> Observation {
        let pull = match self.client.pull(&self.spec.repo, number).await {
            Ok(pull) => pull,
            Err(error) => return Self::failed("read the pull request", &error),
        };
        tracing::info!(task = %self.task.id, from = %self.head, to = %pull.head.sha, "github: the head moved under the merge; verifying again");
        self.head = pull.head.sha;
        let since = self.wait_began();
        let moves = self.record.head_moves + 1;
        if let Err(error) = self
            .save(PrState::WaitingChecks, move |r| {
                r.head_moves = moves;
                r.checks.clear();
                r.checks_since = Some(since);
            })
            .await
        {
            return Observation::StepFailed {
                step: "record the moved head".into(),
                message: error.to_string(),
            };
        }
        Observation::Merge(MergeAnswer::HeadMoved { moves })
    }

    /// After a push that answers requested changes: one reply on each thread begun on the head
    /// the feedback was about, unless glitchlab replied there already (a restart never replies
    /// twice). Best effort: a failed reply is logged, the delivery goes on.
    async fn reply_on_threads(&self, number: u64) {
        let Some(old_head) = self.record.fed_back.clone() else {
            return;
        };
        if old_head == self.head {
            return;
        }
        let comments = match self.client.review_comments(&self.spec.repo, number).await {
            Ok(comments) => comments,
            Err(error) => {
                tracing::warn!(task = %self.task.id, %error, "github: could not read review threads");
                return;
            }
        };
        let replied = |id: u64| {
            comments
                .iter()
                .any(|c| c.in_reply_to_id == Some(id) && c.body.contains(ADDRESSED))
        };
        let threads = comments
            .iter()
            .filter(|c| c.in_reply_to_id.is_none() && c.commit_id == old_head && !replied(c.id));
        for thread in threads {
            let body = format!("{ADDRESSED} {}.", self.head);
            let replied = self
                .client
                .reply_to_comment(&self.spec.repo, number, thread.id, &body)
                .await;
            if let Err(error) = replied {
                tracing::warn!(task = %self.task.id, %error, "github: could not reply on a review thread");
            }
        }
    }
}
