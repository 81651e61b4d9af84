//! The merge queue: how a verified task's change reaches its base branch.
//!
//! There is one queue per repository and base branch, owned by Patch. Tasks join it when they
//! reach `deliver`; they leave it in order of priority, then of the time they passed verify
//! ([`Place`]). One candidate runs at a time per queue ([`run_candidate`]):
//!
//! 1. **Build** the candidate from scratch in the queue's scratch worktree: the base as it is now
//!    plus the task's change (one squashed commit by default, see [`History`]).
//! 2. **Verify** exactly that tree with the task's verify command — unless Circuit already passed
//!    that very tree on the task's branch (the base had not moved), or the task's template has
//!    no verify stage.
//! 3. **Land** it by compare-and-swap: the base moves to the candidate's commit only if it still
//!    points where the candidate was built from. Landings of one queue never interleave, so only
//!    someone outside glitchlab can move the base in between; then the candidate is built again
//!    (bounded by `merge_queue.base_moved_max`), and no attempt of the task is used up.
//!
//! A change that no longer applies, or whose candidate fails verify, goes back to Patch for
//! another attempt on the new base. Every way into the queue — the first delivery, a retry, a
//! human's commits on a kept branch — takes the same path, so nothing lands unverified.
//!
//! Crash safety: a cut-off candidate is rebuilt from scratch on the next run; one cut off after
//! its landing is recognised by its `Glitchlab-Task` trailer on the base's first-parent chain.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::model::persona::Persona;
use crate::model::task::{branch_name, History, Priority, Stage, Task, TaskId};
use crate::platform::git::candidate::{self, BuiltCandidate, Candidate, CandidateRequest, Landing};
use crate::platform::git::Git;
use crate::runtime::jobs::StageError;
use crate::runtime::Services;
use crate::storage::store::NewEvent;
use crate::work::verify::run_verify;

/// Characters of the task's description kept as the landed commit's summary.
const SUMMARY_CHARS_MAX: usize = 600;
/// How far back (before the task was created) the search for its landed commit looks, for
/// clocks that disagree.
const LANDED_SEARCH_SLACK_HOURS: i64 = 24;

/// Which queue a task joins: its repository and base branch.
pub(crate) type QueueKey = (String, String);

/// The queue a task joins.
pub(crate) fn queue_key(task: &Task) -> QueueKey {
    (task.repo.clone(), task.base_branch.clone())
}

/// What a task's turn in the queue came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeliverStep {
    /// The base holds the change: the commit it landed as (or, when the base already had it, the
    /// base's commit). `delivery: branch` tasks report their branch's tip.
    Landed(String),
    /// The change no longer applies to the base: feedback for another attempt on the new base.
    Conflict(String),
    /// The candidate (the new base plus the change) failed verify: its output as feedback.
    Rejected(String),
}

/// A task's place in its queue: priority first, then when it passed verify, then its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Place {
    priority: Priority,
    queued_at: DateTime<Utc>,
    task_id: TaskId,
}

impl Place {
    /// The task's place: `merge.queued_at` is set when it passed verify; a task without one (it
    /// reached delivery some other way) lines up as of its last update.
    pub(crate) fn of(task: &Task) -> Self {
        Self {
            priority: task.priority,
            queued_at: task.merge.queued_at.unwrap_or(task.updated_at),
            task_id: task.id,
        }
    }

    /// The task it belongs to.
    pub(crate) fn task_id(&self) -> TaskId {
        self.task_id
    }
}

/// One queue's line: who waits, in order, and whether a turn is running. Generic over what an
/// entry carries (the request and its reply port, in Patch), so the order can be tested alone.
#[derive(Debug)]
pub(crate) struct Line<E> {
    waiting: BTreeMap<Place, E>,
    places: HashMap<TaskId, Place>,
    busy: bool,
}

impl<E> Default for Line<E> {
    fn default() -> Self {
        Self {
            waiting: BTreeMap::new(),
            places: HashMap::new(),
            busy: false,
        }
    }
}

impl<E> Line<E> {
    /// Adds (or replaces) the task's entry at `place`; answers the entry it replaced.
    pub(crate) fn join(&mut self, place: Place, entry: E) -> Option<E> {
        let replaced = self
            .places
            .insert(place.task_id, place)
            .and_then(|old| self.waiting.remove(&old));
        self.waiting.insert(place, entry);
        replaced
    }

    /// Takes the task's waiting entry out of line (a cancel).
    pub(crate) fn leave(&mut self, task_id: TaskId) -> Option<E> {
        let place = self.places.remove(&task_id)?;
        self.waiting.remove(&place)
    }

    /// The first in line, when no turn is running; the line is busy until [`Line::done`].
    pub(crate) fn next(&mut self) -> Option<(Place, E)> {
        if self.busy {
            return None;
        }
        let (place, entry) = self.waiting.pop_first()?;
        self.places.remove(&place.task_id);
        self.busy = true;
        Some((place, entry))
    }

    /// Marks the line busy with work of its own (removing the idle scratch worktree).
    pub(crate) fn hold(&mut self) {
        self.busy = true;
    }

    /// The running turn ended.
    pub(crate) fn done(&mut self) {
        self.busy = false;
    }

    /// Nobody waits and nothing runs.
    pub(crate) fn is_idle(&self) -> bool {
        !self.busy && self.waiting.is_empty()
    }
}

/// Where a queue's scratch worktree lives: one per repository and base, under the data dir.
pub(crate) fn scratch_path(services: &Services, key: &QueueKey) -> PathBuf {
    let mut digest = Sha256::new();
    digest.update(key.0.as_bytes());
    digest.update([0]);
    digest.update(key.1.as_bytes());
    let name = hex::encode(&digest.finalize()[..8]);
    services
        .config
        .storage
        .data_dir
        .join("merge-queue")
        .join(name)
}

/// Removes an idle queue's scratch worktree.
pub(crate) async fn remove_scratch(services: &Services, key: &QueueKey) {
    let repo = Git::new(&key.0, services.config.git.timeout());
    let path = scratch_path(services, key);
    if let Err(error) = candidate::remove_scratch(&repo, &path).await {
        tracing::warn!(repo = %key.0, base = %key.1, %error, "could not remove the merge queue's scratch worktree");
    }
}

/// The task's turn: build its candidate, verify it, land it (see the module).
pub(crate) async fn run_candidate(
    services: &Services,
    task: &Task,
) -> Result<DeliverStep, StageError> {
    let git_timeout = services.config.git.timeout();
    let repo = Git::new(&task.repo, git_timeout);
    let trailers = trailers(task);
    let since = task.created_at - TimeDelta::hours(LANDED_SEARCH_SLACK_HOURS);
    if let Some(commit) =
        candidate::find_landed(&repo, &task.base_branch, &trailers[0], since).await?
    {
        note(
            services,
            task,
            "merge.landed",
            json!({"commit": commit, "found": "on the base already"}),
        )
        .await;
        return Ok(DeliverStep::Landed(commit));
    }
    let key = queue_key(task);
    let scratch = scratch_path(services, &key);
    let branch = branch_name(task.id);
    let history = services.config.delivery.history;
    let message = commit_message(task, history, &trailers);
    let request = CandidateRequest {
        base: &task.base_branch,
        branch: &branch,
        history,
        message: &message,
        trailers: &trailers,
    };
    let moves_max = services.config.merge_queue.base_moved_max;
    for round in 0..=moves_max {
        let built = match candidate::build(&repo, &scratch, &request).await? {
            Candidate::Built(built) => built,
            Candidate::Conflict(conflict) => {
                let data = json!({"base": conflict.base, "files": conflict.files});
                note(services, task, "merge.conflict", data).await;
                return Ok(DeliverStep::Conflict(conflict_feedback(task, &conflict)));
            }
            Candidate::AlreadyOnBase(base) => {
                let data = json!({"commit": base, "found": "the base holds the change"});
                note(services, task, "merge.landed", data).await;
                return Ok(DeliverStep::Landed(base));
            }
        };
        let needs_verify = task.stages.contains(&Stage::Verify)
            && task.merge.verified_tree.as_deref() != Some(built.tree.as_str());
        let data = json!({"base": built.base, "commit": built.commit, "round": round, "verify": needs_verify});
        note(services, task, "merge.candidate", data).await;
        if needs_verify {
            if let Some(step) = verify_candidate(services, task, &scratch, &built).await? {
                return Ok(step);
            }
        }
        match candidate::land(&repo, &scratch, &task.base_branch, &built).await? {
            Landing::Landed => {
                note(
                    services,
                    task,
                    "merge.landed",
                    json!({"commit": built.commit, "base": built.base}),
                )
                .await;
                repo.maintain_now_and_then().await;
                return Ok(DeliverStep::Landed(built.commit));
            }
            Landing::BaseMoved { now } => {
                let event = NewEvent::new(
                    Persona::Patch,
                    "merge.base_moved",
                    json!({"expected": built.base, "now": now, "round": round + 1, "max": moves_max}),
                );
                services
                    .store
                    .update_task(task.id, &[event], |t| t.reverifications += 1)
                    .await?;
            }
        }
    }
    Err(StageError::DeliverFailed(format!(
        "the base branch {} moved outside glitchlab {} times while this task's candidate was \
         verified (merge_queue.base_moved_max); branch {branch} is kept",
        task.base_branch,
        moves_max + 1
    )))
}

/// Runs the task's verify on the candidate; `Some(Rejected)` when it fails.
async fn verify_candidate(
    services: &Services,
    task: &Task,
    scratch: &std::path::Path,
    built: &BuiltCandidate,
) -> Result<Option<DeliverStep>, StageError> {
    let run = run_verify(services, task, scratch.to_path_buf(), Stage::Deliver).await?;
    let data = json!({"commit": built.commit, "passed": run.passed, "run_id": run.run_id});
    note(services, task, "merge.verified", data).await;
    if run.passed {
        return Ok(None);
    }
    let tail = crate::platform::process::keep_tail(
        &run.output,
        services.config.engines.feedback_bytes_max,
    );
    Ok(Some(DeliverStep::Rejected(format!(
        "the change passed verify on its branch but fails on the current {base} ({short}) with \
         the work that landed since; the next attempt starts from that base.\n{tail}",
        base = task.base_branch,
        short = short(&built.base),
    ))))
}

/// The trailers that mark a landed commit as the task's; the first is what a resumed turn looks
/// for.
fn trailers(task: &Task) -> Vec<String> {
    vec![
        format!("Glitchlab-Task: {}", task.id),
        format!("Glitchlab-Attempts: {}", task.attempts.max(1)),
    ]
}

/// The landed commit's message: the title, a short summary, the trailers.
fn commit_message(task: &Task, history: History, trailers: &[String]) -> String {
    let summary = task
        .plan
        .as_ref()
        .map(|plan| plan.summary.trim())
        .filter(|summary| !summary.is_empty())
        .unwrap_or_else(|| task.description.split("\n\n").next().unwrap_or("").trim());
    let summary: String = summary.chars().take(SUMMARY_CHARS_MAX).collect();
    let title = match history {
        History::Merge => format!("Merge {}", task.title),
        History::Squash | History::Rebase => task.title.clone(),
    };
    let mut message = title;
    if !summary.is_empty() && summary != task.title {
        message.push_str("\n\n");
        message.push_str(&summary);
    }
    message.push_str("\n\n");
    message.push_str(&trailers.join("\n"));
    message.push('\n');
    message
}

fn conflict_feedback(task: &Task, conflict: &candidate::Conflict) -> String {
    let files = if conflict.files.is_empty() {
        String::new()
    } else {
        format!(" in {}", conflict.files.join(", "))
    };
    format!(
        "the change no longer applies to the current {base} ({short}): it conflicts with work \
         that landed since{files}. The next attempt starts from that base; make the change \
         again there.\n{detail}",
        base = task.base_branch,
        short = short(&conflict.base),
        detail = conflict.detail,
    )
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Records a queue event on the task; a failure to write it is logged, not fatal (the turn's
/// outcome is what counts and is recorded by the pipeline).
async fn note(services: &Services, task: &Task, kind: &'static str, data: serde_json::Value) {
    let event = NewEvent::new(Persona::Patch, kind, data);
    if let Err(error) = services.store.append_event(task.id, event).await {
        tracing::warn!(task = %task.id, kind, %error, "could not record a merge queue event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(priority: Priority, seconds: i64) -> Place {
        Place {
            priority,
            queued_at: DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(seconds),
            task_id: TaskId::new(),
        }
    }

    #[test]
    fn the_line_serves_by_priority_then_by_when_verify_passed() {
        let mut line = Line::default();
        let late = place(Priority::Medium, 20);
        let early = place(Priority::Medium, 10);
        let urgent = place(Priority::Critical, 30);
        line.join(late, "late");
        line.join(early, "early");
        line.join(urgent, "urgent");
        let (_, first) = line.next().unwrap();
        assert_eq!(first, "urgent");
        assert!(line.next().is_none(), "one turn at a time");
        line.done();
        assert_eq!(line.next().unwrap().1, "early");
        line.done();
        assert_eq!(line.next().unwrap().1, "late");
        line.done();
        assert!(line.is_idle());
    }

    #[test]
    fn asking_again_keeps_the_place_and_replaces_the_entry() {
        let mut line = Line::default();
        let first = place(Priority::Medium, 10);
        let second = place(Priority::Medium, 20);
        line.join(second, "second");
        line.join(first, "first");
        assert_eq!(line.join(first, "first again"), Some("first"));
        assert_eq!(line.waiting.len(), 2);
        assert_eq!(line.next().unwrap().1, "first again");
        line.done();
        assert_eq!(line.leave(second.task_id), Some("second"));
        assert!(line.is_idle());
    }

    #[test]
    fn the_commit_message_is_the_title_a_summary_and_the_trailers() {
        let mut task = Task::for_test("Add a greeting", "Print hello.\n\nMore detail here.");
        task.attempts = 2;
        let message = commit_message(&task, History::Squash, &trailers(&task));
        assert_eq!(
            message,
            format!(
                "Add a greeting\n\nPrint hello.\n\nGlitchlab-Task: {}\nGlitchlab-Attempts: 2\n",
                task.id
            )
        );
    }
}
