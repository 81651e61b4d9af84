//! The merge queue: how a verified task's change reaches its base branch.
//!
//! There is one queue per repository and base branch, owned by Patch. Tasks join it when they
//! reach `deliver`; they leave it in order of priority, then of the time they passed verify
//! ([`Place`]). One turn runs at a time per queue ([`run_turn`]); it takes the first
//! `merge_queue.batch_max` tasks in line (a Bors-style roll-up):
//!
//! 1. **Build** the candidate from scratch in the queue's scratch worktree: the base as it is now
//!    plus each task's change stacked in line order, one commit each (squashed by default, see
//!    [`History`]). A change that no longer applies is left out and goes back to work.
//! 2. **Verify** exactly that tree with the tasks' verify commands (each distinct command once)
//!    — unless it is one task's change whose tree Circuit already passed on the branch (the base
//!    had not moved), or no task's template has a verify stage.
//! 3. **Land** it by compare-and-swap: the base moves to the candidate's top commit only if it
//!    still points where the candidate was built from; every task of the batch lands, one commit
//!    each. Turns of one queue never interleave, so only someone outside glitchlab can move the
//!    base in between; then the candidate is built again (bounded by
//!    `merge_queue.base_moved_max`), and no attempt is used up.
//! 4. **Bisect** a red batch: its first half is tried alone, then its second half (on whatever
//!    landed), down to single tasks; a single task whose candidate fails goes back to work.
//!
//! A change that no longer applies, or whose candidate fails verify on its own, goes back to
//! Patch for another attempt on the new base. Every way into the queue — the first delivery, a
//! retry, a human's commits on a kept branch — takes the same path, so nothing lands unverified.
//!
//! Crash safety: a cut-off candidate is rebuilt from scratch on the next run; one cut off after
//! its landing is recognised by its `Glitchlab-Task` trailer on the base's first-parent chain.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::model::lifecycle::LifecycleEvent;
use crate::model::persona::Persona;
use crate::model::task::{branch_name, is_remote_repo, History, Priority, Stage, Task, TaskId};
use crate::platform::git::candidate::{
    self, Applied, BuiltCandidate, CandidateRequest, Checkout, Landing,
};
use crate::platform::git::Git;
use crate::runtime::jobs::StageError;
use crate::runtime::Services;
use crate::storage::store::{NewEvent, StoreError};
use crate::work::verify::run_verify;

mod red_base;

/// Characters of the task's description kept as the landed commit's summary.
const SUMMARY_CHARS_MAX: usize = 600;
/// How far back (before the task was created) the search for its landed commit looks, for
/// clocks that disagree.
const LANDED_SEARCH_SLACK_HOURS: i64 = 24;

/// Which queue a task joins: its repository and base branch.
pub(crate) type QueueKey = (String, String);

/// The queue a task joins.
pub(crate) fn queue_key(task: &Task) -> QueueKey {
    (task.spec.repo.clone(), task.spec.base_branch.clone())
}

/// What a task's turn in the queue came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeliverStep {
    /// The base holds the change: the commit it landed as (or, when the base already had it, the
    /// base's commit). `delivery: branch` tasks report their branch's tip.
    Landed(String),
    /// The base already held the change (nothing of this task was added): the base's commit.
    AlreadyOnBase(String),
    /// The change no longer applies to the base: feedback for another attempt on the new base.
    Conflict(String),
    /// The candidate (the new base plus the change) failed verify: its output as feedback.
    Rejected(String),
    /// `delivery: pull_request`: GitHub's checks were red or a reviewer requested changes on
    /// the pushed head: feedback for another attempt on the same branch (`code`:
    /// `CHECKS_FAILED` or `CHANGES_REQUESTED`).
    Feedback {
        /// The code the attempt's failure is recorded with.
        code: &'static str,
        /// What to fix.
        output: String,
    },
    /// `delivery: pull_request` in `best_effort` mode: the branch is pushed (at `head`), the
    /// pull request could not be carried through.
    BranchOnly {
        /// The pushed head.
        head: String,
        /// Why not.
        error: crate::model::task::ErrorInfo,
    },
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
            priority: task.spec.priority,
            queued_at: task
                .progress
                .merge
                .queued_at
                .unwrap_or(task.progress.updated_at),
            task_id: task.id,
        }
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

    /// The first `max` in line (at least one), when no turn is running; the line is busy until
    /// [`Line::done`]. Empty when busy or nobody waits.
    pub(crate) fn next_batch(&mut self, max: usize) -> Vec<(Place, E)> {
        if self.busy {
            return Vec::new();
        }
        let mut batch = Vec::new();
        while batch.len() < max.max(1) {
            let Some((place, entry)) = self.waiting.pop_first() else {
                break;
            };
            self.places.remove(&place.task_id);
            batch.push((place, entry));
        }
        self.busy = !batch.is_empty();
        batch
    }

    /// Marks the line busy with work of its own (removing the idle scratch worktree).
    pub(crate) fn hold(&mut self) {
        self.busy = true;
    }

    /// The running turn ended.
    pub(crate) fn done(&mut self) {
        self.busy = false;
    }

    /// The tasks waiting, first served first.
    pub(crate) fn waiting_ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.waiting.keys().map(|place| place.task_id)
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
    // `key.0` is the repository as tasks name it: a `file://` or other URL is no directory;
    // the queue's worktrees belong to its local clone.
    let repo = Git::new(services.repo_dir(&key.0), services.config.git.timeout());
    let path = scratch_path(services, key);
    if let Err(error) = candidate::remove_scratch(&repo, &path).await {
        tracing::warn!(repo = %key.0, base = %key.1, %error, "could not remove the merge queue's scratch worktree");
    }
}

/// What a turn came to for one task.
pub(crate) type TurnOutcome = (TaskId, Result<DeliverStep, StageError>);

/// A turn of the queue: the first `merge_queue.batch_max` tasks in line, landed together when
/// their combined candidate passes (one commit each), bisected when it does not (see the module).
pub(crate) async fn run_turn(services: &Services, tasks: Vec<Task>) -> Vec<TurnOutcome> {
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut pending = Vec::with_capacity(tasks.len());
    for task in tasks {
        match landed_already(services, &task).await {
            Ok(Some(commit)) => outcomes.push((task.id, Ok(DeliverStep::Landed(commit)))),
            Ok(None) => {
                // A claim left by a turn cut off before the base moved (a crash) is stale.
                if task.progress.merge.landing.is_some() {
                    release_landing(services, &[(&task, String::new())]).await;
                }
                pending.push(task)
            }
            Err(error) => outcomes.push((task.id, Err(error))),
        }
    }
    // Batches still to try, in line order; a red batch is replaced by its two halves.
    let mut batches = VecDeque::from([pending]);
    while let Some(batch) = batches.pop_front() {
        if batch.is_empty() {
            continue;
        }
        match try_batch(services, &batch).await {
            Ok(BatchResult::Decided(decided)) => outcomes.extend(decided),
            Ok(BatchResult::Red {
                output,
                decided,
                base,
                failed,
            }) => {
                outcomes.extend(decided);
                let left: Vec<Task> = batch
                    .into_iter()
                    .filter(|task| !outcomes.iter().any(|(id, _)| *id == task.id))
                    .collect();
                let mut left = left;
                if let Some(red) = red_base::check(services, &left, failed, &base).await {
                    let held = red_base::hold(services, left, red).await;
                    outcomes.extend(held.cancelled);
                    if held.moved {
                        batches.push_front(held.still);
                        continue;
                    }
                    left = held.still;
                }
                if let [only] = left.as_slice() {
                    outcomes.push((
                        only.id,
                        Ok(DeliverStep::Rejected(rejected(services, only, &output))),
                    ));
                } else {
                    let mut left = left;
                    let half = left.len() / 2;
                    let data = json!({"first_half": half, "second_half": left.len() - half});
                    note_all(services, &left, "merge.bisect", data).await;
                    let second = left.split_off(half);
                    batches.push_front(second);
                    batches.push_front(left);
                }
            }
            Err(error) => outcomes.extend(batch.iter().map(|task| (task.id, Err(error.clone())))),
        }
    }
    outcomes
}

/// How one batch went.
enum BatchResult {
    /// Every task of the batch has its outcome.
    Decided(Vec<TurnOutcome>),
    /// The combined candidate failed verify: the tasks without an outcome yet are to be bisected.
    Red {
        /// The failing verify's output.
        output: String,
        /// Outcomes already known (conflicts, changes the base already held).
        decided: Vec<TurnOutcome>,
        /// The base commit the candidate was built on.
        base: String,
        /// The task whose verify command failed.
        failed: TaskId,
    },
}

/// The task's landing, if a turn cut off by a crash already moved the base. Only a task with a
/// landing claim (`merge.landing`, written durably before the base moves) can have been landed
/// unrecorded: for any other the base's history is not searched (a process saved per delivery).
async fn landed_already(services: &Services, task: &Task) -> Result<Option<String>, StageError> {
    if task.progress.merge.landing.is_none() {
        return Ok(None);
    }
    let repo = Git::new(
        services.repo_dir(&task.spec.repo),
        services.config.git.timeout(),
    );
    let since = task.spec.created_at - TimeDelta::hours(LANDED_SEARCH_SLACK_HOURS);
    let found =
        candidate::find_landed(&repo, &task.spec.base_branch, &trailers(task)[0], since).await?;
    if let Some(commit) = &found {
        note(
            services,
            task,
            "merge.landed",
            json!({"commit": commit, "found": "on the base already"}),
        )
        .await;
    }
    Ok(found)
}

/// Builds the batch's candidate, verifies it, lands it; builds again when the base moved
/// outside glitchlab meanwhile.
async fn try_batch(services: &Services, batch: &[Task]) -> Result<BatchResult, StageError> {
    let Some(first) = batch.first() else {
        return Ok(BatchResult::Decided(Vec::new()));
    };
    let repo = Git::new(
        services.repo_dir(&first.spec.repo),
        services.config.git.timeout(),
    );
    let remote = is_remote_repo(&first.spec.repo).then_some(first.spec.repo.as_str());
    let scratch = scratch_path(services, &queue_key(first));
    let history = services.config.delivery.history;
    let branches: Vec<String> = batch.iter().map(|task| branch_name(task.id)).collect();
    let trailers: Vec<Vec<String>> = batch.iter().map(trailers).collect();
    let messages: Vec<String> = batch
        .iter()
        .zip(&trailers)
        .map(|(task, trailers)| commit_message(task, history, trailers))
        .collect();
    let requests: Vec<CandidateRequest<'_>> = (0..batch.len())
        .map(|n| CandidateRequest {
            branch: &branches[n],
            history,
            message: &messages[n],
            trailers: &trailers[n],
        })
        .collect();
    if let [task] = batch {
        if history == History::Squash && remote.is_none() {
            if let Some(decided) = try_fast(services, &repo, task, &messages[0]).await? {
                return Ok(BatchResult::Decided(decided));
            }
        }
    }
    let moves_max = services.config.merge_queue.base_moved_max;
    for round in 0..=moves_max {
        // A remote's base as it is there now (again after a refused landing): the candidate
        // builds on it, the landing pushes onto it.
        crate::work::remote::sync(services, first).await?;
        let built = candidate::build(&repo, &scratch, &first.spec.base_branch, &requests).await?;
        let mut decided = Vec::new();
        let mut stacked: Vec<(&Task, String)> = Vec::new();
        for (task, applied) in batch.iter().zip(&built.changes) {
            match applied {
                Applied::Commit(commit) => stacked.push((task, commit.clone())),
                Applied::Conflict(conflict) => {
                    let data = json!({"base": conflict.base, "files": conflict.files});
                    note(services, task, "merge.conflict", data).await;
                    let feedback = conflict_feedback(task, conflict);
                    decided.push((task.id, Ok(DeliverStep::Conflict(feedback))));
                }
                Applied::AlreadyOnBase => {
                    let data = json!({"commit": built.base, "found": "the base holds the change"});
                    note(services, task, "merge.landed", data).await;
                    decided.push((task.id, Ok(DeliverStep::AlreadyOnBase(built.base.clone()))));
                }
            }
        }
        if stacked.is_empty() {
            return Ok(BatchResult::Decided(decided));
        }
        let verify_needed = needs_verify(&stacked, &built);
        for (task, commit) in &stacked {
            let data = json!({
                "base": built.base, "commit": commit, "candidate": built.commit,
                "batch": stacked.len(), "round": round, "verify": verify_needed,
            });
            note(services, task, "merge.candidate", data).await;
        }
        if verify_needed {
            let worktree = repo.worktree_of(&scratch).await?;
            if let Some((failed, output)) =
                verify_candidate(services, &stacked, &worktree, &built).await?
            {
                let base = built.base.clone();
                return Ok(BatchResult::Red {
                    output,
                    decided,
                    base,
                    failed,
                });
            }
        }
        // A cancel answered 2xx wins: nothing of a cancelled task moves the base. The landing is
        // claimed on every task first (durably), so a cancel from here on is refused.
        let cancelled = claim_landing(services, &stacked, &built.commit).await?;
        if !cancelled.is_empty() {
            release_landing(services, &stacked).await;
            return rebuild_without(services, batch, &cancelled, decided).await;
        }
        let landing = candidate::land(&repo, &first.spec.base_branch, &built, remote).await;
        if !matches!(landing, Ok(Landing::Landed(_))) {
            release_landing(services, &stacked).await;
        }
        match landing? {
            Landing::Landed(checkout) => {
                note_stale_checkout(services, &stacked, repo.dir(), &built.base, &checkout).await;
                for (task, commit) in stacked {
                    let data =
                        json!({"commit": commit, "base": built.base, "batch": built.changes.len()});
                    note(services, task, "merge.landed", data).await;
                    decided.push((task.id, Ok(DeliverStep::Landed(commit))));
                }
                repo.maintain_now_and_then().await;
                return Ok(BatchResult::Decided(decided));
            }
            Landing::BaseMoved { now } => {
                for (task, _) in &stacked {
                    let event = NewEvent::new(
                        Persona::Patch,
                        "merge.base_moved",
                        json!({"expected": built.base, "now": now, "round": round + 1, "max": moves_max}),
                    );
                    services
                        .store
                        .update_task(task.id, &[event], |t| t.progress.reverifications += 1)
                        .await?;
                }
            }
        }
    }
    Err(StageError::DeliverFailed(format!(
        "the base branch {} moved outside glitchlab {} times while the candidate was verified \
         (merge_queue.base_moved_max); the task's branch is kept",
        first.spec.base_branch,
        moves_max + 1
    )))
}

/// The fast path of a single squashed change whose branch sits on the base's tip and whose tree
/// Circuit passed (or that has no verify): the commit is written in-process, the landing claimed,
/// the base moved by compare-and-swap — no scratch worktree. `None` when it does not apply or the
/// base moved meanwhile: the long way decides.
async fn try_fast(
    services: &Services,
    repo: &Git,
    task: &Task,
    message: &str,
) -> Result<Option<Vec<TurnOutcome>>, StageError> {
    let request = crate::platform::git::write::SquashRequest {
        base: task.spec.base_branch.clone(),
        branch: branch_name(task.id),
        message: message.to_owned(),
        verifying: task.spec.stages.contains(&Stage::Verify),
        verified_tree: task.progress.merge.verified_tree.clone(),
    };
    let Some(built) = candidate::build_fast(repo, request).await? else {
        return Ok(None);
    };
    let data = json!({
        "base": built.base, "commit": built.commit, "candidate": built.commit,
        "batch": 1, "round": 0, "verify": false, "fast": true,
    });
    note(services, task, "merge.candidate", data).await;
    let stacked = [(task, built.commit.clone())];
    if !claim_landing(services, &stacked, &built.commit)
        .await?
        .is_empty()
    {
        release_landing(services, &stacked).await;
        return Ok(Some(vec![(task.id, Err(StageError::Cancelled))]));
    }
    let landing = candidate::land(repo, &task.spec.base_branch, &built, None).await;
    let checkout = match landing {
        Ok(Landing::Landed(checkout)) => checkout,
        other => {
            release_landing(services, &stacked).await;
            other?;
            return Ok(None);
        }
    };
    note_stale_checkout(services, &stacked, repo.dir(), &built.base, &checkout).await;
    let data = json!({"commit": built.commit, "base": built.base, "batch": 1});
    note(services, task, "merge.landed", data).await;
    repo.maintain_now_and_then().await;
    Ok(Some(vec![(task.id, Ok(DeliverStep::Landed(built.commit)))]))
}

/// Records `merge.checkout_stale` on every landed task when the repository's checkout kept its
/// files (local edits in the change's way): the developer's checkout is now behind its branch.
async fn note_stale_checkout(
    services: &Services,
    stacked: &[(&Task, String)],
    checkout: &std::path::Path,
    built_on: &str,
    outcome: &Checkout,
) {
    let Checkout::Stale { files } = outcome else {
        return;
    };
    let data = json!({
        "checkout": checkout.display().to_string(),
        "files": files,
        "built_on": built_on,
        "note": "landed by ref; the checkout's files were left as they are and are behind its branch",
    });
    for (task, _) in stacked {
        note(services, task, "merge.checkout_stale", data.clone()).await;
    }
}

/// Claims the landing of every stacked task (`merge.landing`, durable) just before the base
/// moves: from then on a cancel is refused `TASK_LANDING`. Answers the tasks that ended
/// (cancelled) before their claim: they must not land.
async fn claim_landing(
    services: &Services,
    stacked: &[(&Task, String)],
    candidate: &str,
) -> Result<Vec<TaskId>, StageError> {
    // All at once: the store's writer commits them in one group (one flush, not one per task).
    let claims = stacked.iter().map(|(task, _)| {
        let commit = candidate.to_owned();
        services.store.update_task(task.id, &[], move |t| {
            crate::work::transitions::apply(t, LifecycleEvent::ClaimLanding(commit));
        })
    });
    let mut ended = Vec::new();
    for claimed in futures_util::future::join_all(claims).await {
        match claimed {
            Ok(_) => {}
            Err(StoreError::TaskFinished(id)) => ended.push(id),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(ended)
}

/// Drops the landing claims of `stacked` (the base did not move to them): cancels work again.
async fn release_landing(services: &Services, stacked: &[(&Task, String)]) {
    let releases = stacked.iter().map(|(task, _)| {
        services.store.update_task(task.id, &[], |t| {
            crate::work::transitions::apply(t, LifecycleEvent::ReleaseLanding);
        })
    });
    for (released, (task, _)) in futures_util::future::join_all(releases)
        .await
        .into_iter()
        .zip(stacked)
    {
        match released {
            Ok(_) | Err(StoreError::TaskFinished(_)) => {}
            Err(error) => {
                tracing::warn!(task = %task.id, %error, "could not drop a landing claim; a cancel answers TASK_LANDING until the task's next turn");
            }
        }
    }
}

/// Tries the batch again without its cancelled tasks (answered [`StageError::Cancelled`]) and
/// without those already decided; bounded: each call leaves at least one task out.
async fn rebuild_without(
    services: &Services,
    batch: &[Task],
    cancelled: &[TaskId],
    mut decided: Vec<TurnOutcome>,
) -> Result<BatchResult, StageError> {
    decided.extend(cancelled.iter().map(|id| (*id, Err(StageError::Cancelled))));
    let rest: Vec<Task> = batch
        .iter()
        .filter(|task| !decided.iter().any(|(id, _)| *id == task.id))
        .cloned()
        .collect();
    match Box::pin(try_batch(services, &rest)).await? {
        BatchResult::Decided(more) => {
            decided.extend(more);
            Ok(BatchResult::Decided(decided))
        }
        BatchResult::Red {
            output,
            decided: more,
            base,
            failed,
        } => {
            decided.extend(more);
            Ok(BatchResult::Red {
                output,
                decided,
                base,
                failed,
            })
        }
    }
}

/// Whether the candidate must be verified: not when it is one task's change whose tree Circuit
/// already passed on the branch (the base had not moved), nor when no task's template verifies.
fn needs_verify(stacked: &[(&Task, String)], built: &BuiltCandidate) -> bool {
    let verifying = stacked
        .iter()
        .any(|(task, _)| task.spec.stages.contains(&Stage::Verify));
    let already = match stacked {
        [(task, _)] => task.progress.merge.verified_tree.as_deref() == Some(built.tree.as_str()),
        _ => false,
    };
    verifying && !already
}

/// Runs each distinct verify command of the stacked tasks on the candidate (a run is recorded on
/// the first task that has the command); the first failure (the task whose command it was, and
/// the output), if any.
async fn verify_candidate(
    services: &Services,
    stacked: &[(&Task, String)],
    scratch: &Git,
    built: &BuiltCandidate,
) -> Result<Option<(TaskId, String)>, StageError> {
    let mut commands_run: Vec<&str> = Vec::new();
    for (task, _) in stacked {
        if !task.spec.stages.contains(&Stage::Verify)
            || commands_run.contains(&task.spec.verify.as_str())
        {
            continue;
        }
        commands_run.push(&task.spec.verify);
        let run = run_verify(services, task, scratch.clone(), Stage::Deliver).await?;
        for (each, _) in stacked {
            let data = json!({"candidate": built.commit, "command_of": task.id, "passed": run.passed, "run_id": run.run_id});
            note(services, each, "merge.verified", data).await;
        }
        if !run.passed {
            return Ok(Some((task.id, run.output)));
        }
    }
    Ok(None)
}

/// The feedback of a change whose candidate (alone on the base) failed verify.
fn rejected(services: &Services, task: &Task, output: &str) -> String {
    let tail =
        crate::platform::process::keep_tail(output, services.config.engines.feedback_bytes_max);
    format!(
        "the change passed verify on its branch but fails on the current {base} with the work \
         that landed since; the next attempt starts from that base.\n{tail}",
        base = task.spec.base_branch,
    )
}

async fn note_all(
    services: &Services,
    tasks: &[Task],
    kind: &'static str,
    data: serde_json::Value,
) {
    for task in tasks {
        note(services, task, kind, data.clone()).await;
    }
}

/// The trailers that mark a landed commit as the task's; the first is what a resumed turn looks
/// for.
fn trailers(task: &Task) -> Vec<String> {
    vec![
        format!("Glitchlab-Task: {}", task.id),
        format!("Glitchlab-Attempts: {}", task.progress.attempts.max(1)),
    ]
}

/// The landed commit's message: the title, a short summary, the trailers.
fn commit_message(task: &Task, history: History, trailers: &[String]) -> String {
    let summary = task
        .progress
        .plan
        .as_ref()
        .map(|plan| plan.summary.trim())
        .filter(|summary| !summary.is_empty())
        .unwrap_or_else(|| {
            task.spec
                .description
                .split("\n\n")
                .next()
                .unwrap_or("")
                .trim()
        });
    let summary: String = summary.chars().take(SUMMARY_CHARS_MAX).collect();
    let title = match history {
        History::Merge => format!("Merge {}", task.spec.title),
        History::Squash | History::Rebase => task.spec.title.clone(),
    };
    let mut message = title;
    if !summary.is_empty() && summary != task.spec.title {
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
        base = task.spec.base_branch,
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
        let entries = |batch: Vec<(Place, &'static str)>| -> Vec<&'static str> {
            batch.into_iter().map(|(_, entry)| entry).collect()
        };
        assert_eq!(entries(line.next_batch(1)), ["urgent"]);
        assert!(line.next_batch(1).is_empty(), "one turn at a time");
        line.done();
        assert_eq!(entries(line.next_batch(4)), ["early", "late"]);
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
        assert_eq!(line.next_batch(1)[0].1, "first again");
        line.done();
        assert_eq!(line.leave(second.task_id), Some("second"));
        assert!(line.is_idle());
    }

    #[test]
    fn the_commit_message_is_the_title_a_summary_and_the_trailers() {
        let mut task = Task::for_test("Add a greeting", "Print hello.\n\nMore detail here.");
        task.progress.attempts = 2;
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
