//! `delivery: pull_request`: Patch's deliver stage for a task whose work goes to GitHub as a pull
//! request. The lifecycle is the pure [`machine`]; this module makes its observations (git,
//! GitHub) and executes its actions, recording each step on the task (`pull_request`) before the
//! next side effect, so a restart anywhere resumes without a second PR, comment or merge:
//!
//! - the branch is pushed (forced: the same branch carries every attempt);
//! - the pull request is the one recorded, else the open one of the head branch whose body holds
//!   the task's hidden marker, else a new one (`422 already exists`: looked up again);
//! - the head's required checks are awaited (polling, woken at once by a webhook, [`wake`]);
//!   red checks and requested changes go back to Patch as feedback for another attempt;
//! - green and reviewed: merged with `sha` = the head, or left open (`merge: none`).

pub(crate) mod machine;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::model::lifecycle::LifecycleEvent;
use crate::model::pull_request::{PrState, PullRequestRecord, PullRequestSpec};
use crate::model::task::{branch_name, ErrorInfo, Task};
use crate::platform::git::Git;
use crate::platform::github::{self, Client, GithubError};
use crate::runtime::jobs::StageError;
use crate::runtime::Services;
use crate::storage::store::NewEvent;
use crate::work::merge_queue::DeliverStep;
use machine::{Action, ChecksVerdict, Observation, Policy};

/// Failing checks whose annotations are read for feedback (each one call).
const ANNOTATED_CHECKS_MAX: usize = 5;
/// Annotations quoted per check.
const ANNOTATIONS_QUOTED_MAX: usize = 20;
/// Steps of one delivery beyond its polls (push, open, merge, moves): a bound on the loop.
const STEPS_SLACK: u64 = 256;
/// What a reply on an addressed review thread says (and how glitchlab recognises its own).
const ADDRESSED: &str = "glitchlab: addressed in";

/// Wakes every delivery waiting on `repo` (`owner/name`): a webhook said something changed.
pub(crate) fn wake(repo: &str) {
    let wakers = WAKERS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(waker) = wakers.get(&repo.to_ascii_lowercase()) {
        waker.notify_waiters();
    }
}

type Wakers = Mutex<HashMap<String, Arc<tokio::sync::Notify>>>;
static WAKERS: LazyLock<Wakers> = LazyLock::new(Wakers::default);

fn waker(repo: &str) -> Arc<tokio::sync::Notify> {
    let mut wakers = WAKERS.lock().unwrap_or_else(PoisonError::into_inner);
    wakers.retain(|_, waker| Arc::strong_count(waker) > 1);
    wakers.entry(repo.to_ascii_lowercase()).or_default().clone()
}

/// One delivery in progress.
struct Driver {
    services: Services,
    task: Task,
    spec: PullRequestSpec,
    client: Arc<Client>,
    policy: Policy,
    /// What is recorded on the task (written only when it changes).
    record: PullRequestRecord,
    /// The head the checks, reviews and merge are about.
    head: String,
    /// When this head's wait began (the checks' deadline counts from it; on the record as
    /// `checks_since`, so it survives a restart).
    waiting_since: tokio::time::Instant,
    /// The base's required checks (read once per delivery).
    required: Option<Vec<String>>,
    waker: Arc<tokio::sync::Notify>,
}

/// Delivers `task` as a pull request (see the module). Safe to repeat.
pub(crate) async fn deliver(services: Services, task: Task) -> Result<DeliverStep, StageError> {
    let Some(spec) = task.spec.pull_request.clone() else {
        return Err(StageError::internal("a pull_request task without its spec"));
    };
    let config = &services.config.github;
    let policy = Policy {
        mode: spec.mode,
        merge: spec.merge,
        head_moves_max: config.head_moves_max,
    };
    let client = match github::shared(config) {
        Ok(client) => client,
        Err(error) => return finish_early(&policy, &task, "configure", &error),
    };
    let repo = Git::new(
        services.repo_dir(&task.spec.repo),
        services.config.git.timeout(),
    );
    let head = repo.rev_parse(&branch_name(task.id)).await?;
    let record = task.progress.pull_request.clone().unwrap_or_default();
    let mut driver = Driver {
        waker: waker(&spec.repo),
        services,
        task,
        spec,
        client,
        policy,
        record,
        head,
        waiting_since: tokio::time::Instant::now(),
        required: None,
    };
    driver.run().await
}

/// A failure before the driver exists, through the machine like any other.
fn finish_early(
    policy: &Policy,
    task: &Task,
    step: &str,
    error: &GithubError,
) -> Result<DeliverStep, StageError> {
    let observation = Observation::StepFailed {
        step: step.into(),
        message: error.to_string(),
    };
    let (_, action) = machine::step(policy, PrState::Start, observation);
    let head = task.progress.branch.clone().unwrap_or_default();
    end(action, head)
}

/// The stage's answer for a final action.
fn end(action: Action, head: String) -> Result<DeliverStep, StageError> {
    match action {
        Action::Done { merged } => Ok(DeliverStep::Landed(merged.unwrap_or(head))),
        Action::FeedBack { code, text } => Ok(DeliverStep::Feedback { code, output: text }),
        Action::Fail { code, message } => Err(StageError::Forge { code, message }),
        Action::BranchOnly { code, message } => Ok(DeliverStep::BranchOnly {
            head,
            error: ErrorInfo::new(code, message),
        }),
        other => Err(StageError::internal(format!(
            "the pull request machine ended on {other:?}"
        ))),
    }
}

impl Driver {
    async fn run(&mut self) -> Result<DeliverStep, StageError> {
        let config = &self.services.config.github;
        let polls = config.checks_deadline_secs.saturating_mul(1000) / config.poll_ms.max(1);
        let steps_max = polls.saturating_mul(2).saturating_add(STEPS_SLACK);
        let mut observation = self.push().await;
        for _ in 0..steps_max {
            let (state, action) = machine::step(&self.policy, self.record.state, observation);
            self.save(state, |_| {}).await?;
            observation = match action {
                Action::FindOrOpen => self.find_or_open().await,
                Action::AwaitChecks => {
                    self.pause().await;
                    self.observe_checks().await
                }
                Action::ReadReviews => self.observe_reviews().await,
                Action::AwaitReviews => {
                    self.pause().await;
                    match self.observe_checks().await {
                        Observation::Checks(ChecksVerdict::Green) => self.observe_reviews().await,
                        other => other,
                    }
                }
                Action::Merge => self.merge().await,
                Action::FeedBack { .. } => {
                    let head = self.head.clone();
                    self.save(state, move |r| r.fed_back = Some(head)).await?;
                    return end(action, self.head.clone());
                }
                final_action => return end(final_action, self.head.clone()),
            };
        }
        Err(StageError::Forge {
            code: crate::model::codes::CHECKS_STALLED,
            message: format!("the pull request did not settle within {steps_max} steps"),
        })
    }

    /// Writes the record when it changed (an event per state change).
    async fn save(
        &mut self,
        state: PrState,
        change: impl FnOnce(&mut PullRequestRecord),
    ) -> Result<(), StageError> {
        let mut next = self.record.clone();
        if next.head_sha.as_deref() != Some(self.head.as_str()) {
            // Another head: its wait has not begun.
            next.checks_since = None;
        }
        next.state = state;
        next.head_sha = Some(self.head.clone());
        change(&mut next);
        if next == self.record {
            return Ok(());
        }
        let events = if next.state != self.record.state {
            let data = json!({"state": next.state, "number": next.number, "head_sha": self.head});
            vec![NewEvent::new("patch", "pull_request.state", data)]
        } else {
            Vec::new()
        };
        let stored = next.clone();
        self.services
            .store
            .update_task(self.task.id, &events, move |t| {
                let track = LifecycleEvent::TrackPullRequest(Box::new(stored.clone()));
                crate::work::transitions::apply(t, track);
            })
            .await
            .map_err(|e| StageError::Store {
                message: e.to_string(),
                source: Some(Arc::new(e)),
            })?;
        self.record = next;
        Ok(())
    }

    /// Pushes the branch to the task's remote.
    async fn push(&mut self) -> Observation {
        if self.record.head_sha.as_deref() != Some(self.head.as_str()) {
            self.record.checks.clear();
        }
        match crate::work::remote::push_head(&self.services, &self.task).await {
            Ok(()) => {
                // Test hook: a crash after the push, before the record says `pushed`.
                crate::work_failpoint!("pull_request.pushed");
                Observation::Pushed
            }
            Err(error) => Observation::StepFailed {
                step: "push".into(),
                message: error.to_string(),
            },
        }
    }

    /// When the wait for the head's checks began: the recorded time for this head (a restart
    /// keeps counting from it), else now. Sets the deadline's clock to it; the caller records it.
    fn wait_began(&mut self) -> DateTime<Utc> {
        let now = Utc::now();
        let since = match self.record.checks_since {
            Some(at) if self.record.head_sha.as_deref() == Some(self.head.as_str()) => at.min(now),
            _ => now,
        };
        let ago = (now - since).to_std().unwrap_or_default();
        let clock = tokio::time::Instant::now();
        self.waiting_since = clock.checked_sub(ago).unwrap_or(clock);
        since
    }

    /// Waits one poll, or less when a webhook wakes it.
    async fn pause(&self) {
        let poll = Duration::from_millis(self.services.config.github.poll_ms);
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = self.waker.notified() => {}
        }
    }

    fn failed(step: &str, error: &GithubError) -> Observation {
        Observation::StepFailed {
            step: step.into(),
            message: error.to_string(),
        }
    }
}

mod find;
mod judge;
