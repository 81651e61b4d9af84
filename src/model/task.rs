//! The task model: what a task is, where it stands, and what it produced.
//!
//! [`Task`] is four parts ([`TaskSpec`], [`TaskProgress`], [`TaskBilling`], [`TaskOutcome`]; the
//! rule for which field goes where is on [`Task`]). Its serde shape, the parts flattened, is the
//! HTTP shape (what clients read, and what OpenAPI documents). sled keeps each part under its own
//! key with its own version (`storage::store::task_record`), so a field added to a part is one
//! edit to that part's struct (with a serde default, for the records already stored) and its
//! test; a change of a part's stored layout is a new version of that part, not an API change.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::persona::Persona;

/// A task's identity: a UUID v7, so ids sort by creation time and double as "age" in the queue.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The 16 raw bytes, used as the sled key prefix for everything that belongs to the task.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from a sled key prefix.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The id of the service itself, for events that belong to no task (restarts of personas).
    pub fn service() -> Self {
        Self(Uuid::nil())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text).map(Self)
    }
}

/// Scheduling priority; the derive order is the scheduling order (critical runs first).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Default,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Drops everything else.
    Critical,
    /// Ahead of routine work.
    High,
    /// Routine work.
    #[default]
    Medium,
    /// When nothing else waits.
    Low,
}

/// Where a task stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Persisted and waiting for a pipeline slot.
    Queued,
    /// Waiting for dependencies.
    Blocked,
    /// A pipeline actor is driving it through its stages.
    Running,
    /// Parked at a human gate.
    AwaitingApproval,
    /// Delivered.
    Done,
    /// Ended with an error (see `error`).
    Failed,
    /// Ended by a client.
    Cancelled,
    /// Every retry was used up; kept for a human.
    DeadLetter,
}

impl TaskStatus {
    /// A terminal task never changes again; Compass does not reload it on start.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Done | Self::Failed | Self::Cancelled | Self::DeadLetter
        )
    }
}

/// One step of a pipeline template.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Planner turns the task's text into a structured plan.
    Plan,
    /// Patch changes the worktree and commits.
    Implement,
    /// Circuit runs the verify command.
    Verify,
    /// A human approves (or rejects) before delivery; the task waits as `awaiting_approval`.
    Approve,
    /// Patch merges the branch into the base branch.
    Deliver,
    /// Uplink-Deploy deploys the delivered commit to the task's `deploy` app; the task is done
    /// when the release is healthy.
    Deploy,
}

impl Stage {
    /// The name used in events and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::Implement => "implement",
            Self::Verify => "verify",
            Self::Approve => "approve",
            Self::Deliver => "deliver",
            Self::Deploy => "deploy",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A machine-readable failure: every failed task carries one, never a bare "failed".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    /// SCREAMING_SNAKE_CASE code clients can branch on (`VERIFY_FAILED`, `PERSONA_UNAVAILABLE`, ...).
    pub code: String,
    /// What happened, for a human.
    pub message: String,
}

impl ErrorInfo {
    /// Builds an error from a code and a message.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Whether a human must approve a task's work before it is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewPolicy {
    /// Delivered as soon as verify passes.
    #[default]
    Auto,
    /// An `approve` gate is inserted before `deliver`.
    Manual,
}

/// What delivering a task's work does with its branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Landed on the base branch through its merge queue: the base plus the change, verified
    /// as one tree, moved onto the base by compare-and-swap.
    #[default]
    Merge,
    /// Left on `glitchlab/<task-id>` for a human to review and merge; the base is not touched.
    Branch,
    /// Pushed to the task's remote and delivered as a GitHub pull request (`pull_request`):
    /// merged by GitHub once its required checks pass on exactly the verified head.
    PullRequest,
}

/// How a landed task is written onto its base branch (`[delivery] history`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum History {
    /// One commit per task on the base: its title, a summary and `Glitchlab-*` trailers. Failed
    /// attempts never reach the base, so every commit glitchlab puts there passed verify.
    #[default]
    Squash,
    /// A merge commit per task (its branch, attempts included, as the second parent); the
    /// first-parent chain stays one verified commit per task.
    Merge,
    /// The branch's commits replayed onto the base; only the last of them (the tree that was
    /// verified) is known to pass.
    Rebase,
}

/// Where `POST /v1/tasks/{id}/retry` starts a task again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RetryFrom {
    /// A fresh round of attempts at implement.
    Implement,
    /// The merge queue, with the branch as it is now (a human's commits included): verified on
    /// the current base before it may land.
    Deliver,
}

/// What the merge queue keeps on a task between stages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MergeState {
    /// The tree Circuit last passed on the task's branch: a candidate with exactly this tree
    /// needs no second verify run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_tree: Option<String>,
    /// When the task joined the merge queue: its place in line (after priority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
    /// The change no longer applied to (or passed on) the base: the next implement attempt
    /// starts from the base as it is then, with the conflict as feedback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart_from_base: bool,
    /// A retried round of attempts: its first implement attempt starts from the base when the
    /// branch lacks commits the base has (Patch looks, off any mailbox); a branch built on a base
    /// since reverted could never pass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rebase_if_behind: bool,
    /// The task came back to the queue through `retry from: deliver`: a branch with no net
    /// change against the base then ends `NO_CHANGES` rather than `done` with nothing landed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retried_delivery: bool,
    /// Why the task's queue holds it now, spending no attempt (its base is red: the base commit
    /// alone fails verify); cleared when the hold ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The candidate commit the merge queue is moving the base to now: claimed (durably) before
    /// the base moves, so a cancel from then on is refused `TASK_LANDING` instead of answered 2xx
    /// for a task that lands anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landing: Option<String>,
    /// The task's place in its merge queue's line (1: served next, or being served), while it
    /// waits there. Never stored: filled in when the task is read (`GET /v1/tasks/{id}`), from
    /// the queue's line in memory, so a shuffle of the line costs no store write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<usize>,
}

/// How deliver ended for a `done` task, so `done` never hides that nothing of it landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivered {
    /// The task's own commit is on the base (or, for `delivery: branch`, its branch's tip).
    Landed,
    /// The base already held the change: `commit` is the base commit that holds it, not a
    /// commit of this task.
    AlreadyOnBase,
    /// `pull_request` in `best_effort` mode: the branch was pushed but the pull request could
    /// not be carried through (`delivery_error` says why); never a plain success.
    BranchOnly,
}

impl MergeState {
    /// Nothing recorded (left out of the JSON).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What made a task necessary: the incident (and the deploy) an ops persona filed it for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CausedBy {
    /// The incident's id.
    pub incident: String,
    /// The deploy that caused it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<String>,
}

/// Where a task's work came from, when glitchlab took it in from another system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskSource {
    /// `github_issue`.
    pub kind: String,
    /// The issue's repository (`owner/name`).
    pub repo: String,
    /// The issue's number.
    pub number: u64,
    /// The issue's page.
    pub url: String,
}

/// `TaskSource::kind` of a task made from a GitHub issue.
pub(crate) const SOURCE_GITHUB_ISSUE: &str = "github_issue";

/// What a task may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskBudget {
    /// Micro-tokens reserved from the paying account when the task is accepted.
    pub max_cost: u64,
    /// Model tokens (input + output) the task may use; crossing it ends it `BUDGET_EXCEEDED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Seconds from start the task may run; crossing it ends it `BUDGET_EXCEEDED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_secs: Option<u64>,
}

/// One failed try of a stage, kept on the task so a dead letter carries every diagnostic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailureRecord {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The stage that failed.
    pub stage: Stage,
    /// The implement/verify attempt it belonged to.
    pub attempt: u32,
    /// Code and message (the message holds the tail of the output).
    pub error: ErrorInfo,
}

/// How a persona thinks or acts for one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EngineSpec {
    /// Deterministic and offline: what lets the service run with no network and no keys.
    Builtin,
    /// `sh -c <command>` in the task's worktree, with the prompt in `GLITCHLAB_PROMPT_FILE`.
    Shell {
        /// The command line handed to `sh -c`.
        command: String,
    },
    /// An OpenAI-compatible chat-completions endpoint (`[providers.<provider>]` in config).
    Openai {
        /// The provider's name in config.
        provider: String,
    },
}

/// Per-task engine overrides; a persona without one uses `builtin`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineOverrides {
    /// Planner's engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<EngineSpec>,
    /// Patch's engine (the implementer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<EngineSpec>,
    /// Circuit's judge of the acceptance criteria (the verify command always runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<EngineSpec>,
}

/// Planner's output: what Patch is asked to do, in steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// One line: what the task delivers.
    pub summary: String,
    /// Ordered steps; never empty.
    pub steps: Vec<PlanStep>,
    /// `low`, `medium` or `high`.
    pub risk: String,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanStep {
    /// What to do.
    pub title: String,
    /// Files the step mentions or is expected to touch.
    pub files: Vec<String>,
    /// Why the step exists.
    pub rationale: String,
}

/// A task: what was asked, where it stands, what it pays and what it produced; served as one
/// flat JSON object (the parts are flattened, so clients see the fields they always saw), stored
/// as one versioned record with a version per part (`storage::store::task_record`).
///
/// Which part a field belongs to is decided by who writes it and when:
/// - [`TaskSpec`]: what the submitter asked for, fixed when the task is accepted (intake writes
///   it, nothing changes it after);
/// - [`TaskProgress`]: where the task stands, written by the lifecycle (`model::lifecycle`), the
///   pipeline and the merge queue while it runs, and reset by a retry;
/// - [`TaskBilling`]: who pays and what is held for it, written by the ledger's callers;
/// - [`TaskOutcome`]: how it ended (or what the last end was), written when it ends and cleared
///   by a retry.
///
/// A field that is both asked for and later changed goes where it changes (`blocked_by` starts
/// as a copy of `deps` but is progress). A new field goes into exactly one part, with a
/// `#[serde(default)]` so the records already stored still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// UUID v7.
    pub id: TaskId,
    /// What was asked.
    #[serde(flatten)]
    pub spec: TaskSpec,
    /// Where it stands.
    #[serde(flatten)]
    pub progress: TaskProgress,
    /// Who pays, and what is held.
    #[serde(flatten)]
    pub billing: TaskBilling,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: TaskOutcome,
}

/// What was asked: fixed at submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskSpec {
    /// Short name of the work.
    pub title: String,
    /// What to do, in prose; the planner's input.
    pub description: String,
    /// Absolute path of the git repository the work happens in.
    pub repo: String,
    /// Branch the work is delivered into.
    pub base_branch: String,
    /// Picks the pipeline template (`stages`).
    pub kind: String,
    /// Scheduling priority.
    pub priority: Priority,
    /// Shell command that must exit 0 in the worktree for the work to be delivered.
    pub verify: String,
    /// What "done" means, in prose: what a model-backed Circuit judges the diff against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance: Option<String>,
    /// Implement/verify rounds allowed before the task fails.
    pub max_attempts: u32,
    /// Engine overrides per persona.
    pub engines: EngineOverrides,
    /// Tasks that must be `done` before this one may start.
    #[serde(default)]
    pub deps: Vec<TaskId>,
    /// Whether delivery waits for a human.
    #[serde(default)]
    pub review_policy: ReviewPolicy,
    /// Merge into the base branch, or leave the branch for review.
    #[serde(default)]
    pub delivery: Delivery,
    /// What `delivery: pull_request` asks of the pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<crate::model::pull_request::PullRequestSpec>,
    /// The incident (and deploy) this task answers, if an ops persona filed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<CausedBy>,
    /// The app to deploy once the task is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<String>,
    /// Where the work came from when glitchlab took it in itself (a GitHub issue): what the
    /// write-back reports to, and what `task list --source` filters on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TaskSource>,
    /// What a fleet factory must offer to run this task's engine and verify commands
    /// (`has:gpu`, `os:linux`); empty: any factory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// The task that filed this one (it pays, unless this one names an account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task: Option<TaskId>,
    /// The token that submitted it (absent for tasks the service filed itself, and for tasks
    /// from before tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// Client-chosen key that makes submission idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The ordered stages of this task, fixed at submission from the kind's template.
    pub stages: Vec<Stage>,
    /// Submission time.
    pub created_at: DateTime<Utc>,
}

/// Where a task stands: what the lifecycle, the pipeline and the merge queue write as it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskProgress {
    /// Where the task stands; changed only through `model::lifecycle`.
    pub status: TaskStatus,
    /// The stage being run (or last run); `None` before the pipeline starts.
    pub stage: Option<Stage>,
    /// Implement attempts started so far (1-based once implement has begun).
    pub attempts: u32,
    /// Retries of the current stage after transient failures (reset when the stage changes).
    #[serde(default)]
    pub stage_retries: u32,
    /// Times the merge queue rebuilt this task's candidate because the base moved outside
    /// glitchlab while it ran (bounded by `merge_queue.base_moved_max`; no attempt is used up).
    #[serde(default)]
    pub reverifications: u32,
    /// The unfinished dependencies while the task is `blocked`.
    #[serde(default)]
    pub blocked_by: Vec<TaskId>,
    /// The merge queue's notes on the task.
    #[serde(default, skip_serializing_if = "MergeState::is_empty")]
    pub merge: MergeState,
    /// `delivery: pull_request`: the pull request as last seen (number, url, state, head,
    /// checks, reviews); progress, since every step is recorded before the next side effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<crate::model::pull_request::PullRequestRecord>,
    /// Every failed try so far, oldest first (bounded by [`FAILURES_KEPT_MAX`]).
    #[serde(default)]
    pub failures: Vec<FailureRecord>,
    /// `glitchlab/<task-id>` once Patch has made the worktree.
    pub branch: Option<String>,
    /// The plan, once Planner has made it.
    pub plan: Option<Plan>,
    /// The last verify failure's output (bounded), handed to Patch on the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    /// Last change to this record.
    pub updated_at: DateTime<Utc>,
    /// When a pipeline first picked it up.
    pub started_at: Option<DateTime<Utc>>,
    /// What a job of the task waits for before it may start (`fleet paused`, `no factory with
    /// has:gpu`); the status stays `running`. Set and cleared through `model::lifecycle`
    /// (`WaitForFleet`/`StopWaiting`), cleared when the task ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Since when it waits for `waiting_for`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<DateTime<Utc>>,
}

impl TaskProgress {
    /// A task just accepted: `status` (queued or blocked, from `model::lifecycle::submitted`),
    /// nothing run yet.
    pub fn submitted(status: TaskStatus, blocked_by: Vec<TaskId>, now: DateTime<Utc>) -> Self {
        Self {
            status,
            stage: None,
            attempts: 0,
            stage_retries: 0,
            reverifications: 0,
            blocked_by,
            merge: MergeState::default(),
            pull_request: None,
            failures: Vec::new(),
            branch: None,
            plan: None,
            feedback: None,
            updated_at: now,
            started_at: None,
            waiting_for: None,
            waiting_since: None,
        }
    }

    /// Shows why the task waits; the clock starts when the reason changes.
    pub(crate) fn wait_for(&mut self, reason: String, now: DateTime<Utc>) {
        if self.waiting_for.as_ref() != Some(&reason) {
            self.waiting_since = Some(now);
        }
        self.waiting_for = Some(reason);
    }
}

/// Who pays for a task and what is held for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskBilling {
    /// The ledger account that pays for the task.
    #[serde(default)]
    pub account: String,
    /// What the task may spend.
    #[serde(default)]
    pub budget: TaskBudget,
    /// The ledger transfer holding the budget while the task runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    /// Reservations made so far (a retry reserves again).
    #[serde(default)]
    pub budget_rounds: u32,
    /// Whether the reservation was settled after the task ended.
    #[serde(default)]
    pub settled: bool,
}

/// How a task ended: empty while it has not, cleared by a retry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskOutcome {
    /// Why the task failed, when it did.
    pub error: Option<ErrorInfo>,
    /// Delivered commit on the base branch.
    pub commit: Option<String>,
    /// How deliver ended (absent before it did, and on records from before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<Delivered>,
    /// `delivered: branch_only`: why the pull request was not carried through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_error: Option<ErrorInfo>,
    /// When it reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The OpenAPI schema of [`Task`]: the parts' properties merged into one flat object, as served
/// (utoipa's own `flatten` would answer an `allOf`, which clients and the schema test read as a
/// different shape).
impl utoipa::PartialSchema for Task {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Schema};
        use utoipa::openapi::RefOr;
        let mut task = ObjectBuilder::new()
            .description(Some(
                "A task: what was asked, where it stands, what it pays and how it ended.",
            ))
            .property("id", utoipa::openapi::Ref::from_schema_name("TaskId"))
            .required("id")
            .build();
        let parts = [
            TaskSpec::schema(),
            TaskProgress::schema(),
            TaskBilling::schema(),
            TaskOutcome::schema(),
        ];
        for part in parts {
            if let RefOr::T(Schema::Object(part)) = part {
                task.properties.extend(part.properties);
                task.required.extend(part.required);
            }
        }
        RefOr::T(Schema::Object(task))
    }
}

impl ToSchema for Task {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            TaskId::name().into_owned(),
            <TaskId as utoipa::PartialSchema>::schema(),
        ));
        TaskSpec::schemas(schemas);
        TaskProgress::schemas(schemas);
        TaskBilling::schemas(schemas);
        TaskOutcome::schemas(schemas);
    }
}

/// URL schemes a task's `repo` may use besides a local path.
pub(crate) const REMOTE_REPO_SCHEMES: [&str; 4] = ["file://", "ssh://", "https://", "http://"];

/// Whether a task's `repo` is a git URL (a remote the service keeps a clone of) rather than a
/// local path.
pub(crate) fn is_remote_repo(repo: &str) -> bool {
    REMOTE_REPO_SCHEMES
        .iter()
        .any(|scheme| repo.starts_with(scheme))
}

/// The branch a task's work lives on.
pub(crate) fn branch_name(task_id: TaskId) -> String {
    format!("glitchlab/{task_id}")
}

/// Failure records kept per task; older ones are dropped first.
pub(crate) const FAILURES_KEPT_MAX: usize = 32;

impl Task {
    /// A queued feature task for unit tests: plan-only, paid by `user:local`.
    #[cfg(test)]
    pub fn for_test(title: &str, description: &str) -> Self {
        let now = Utc::now();
        Self {
            id: TaskId::new(),
            spec: TaskSpec {
                title: title.into(),
                description: description.into(),
                repo: "/tmp/repo".into(),
                base_branch: "main".into(),
                kind: "feature".into(),
                priority: Priority::Medium,
                verify: "true".into(),
                acceptance: None,
                max_attempts: 3,
                engines: EngineOverrides::default(),
                deps: Vec::new(),
                review_policy: ReviewPolicy::Auto,
                delivery: Delivery::Merge,
                pull_request: None,
                caused_by: None,
                deploy: None,
                source: None,
                capabilities: Vec::new(),
                parent_task: None,
                submitted_by: None,
                idempotency_key: None,
                stages: vec![Stage::Plan],
                created_at: now,
            },
            progress: TaskProgress::submitted(TaskStatus::Queued, Vec::new(), now),
            billing: TaskBilling {
                account: "user:local".into(),
                ..TaskBilling::default()
            },
            outcome: TaskOutcome::default(),
        }
    }

    /// Records a failed try, keeping the newest [`FAILURES_KEPT_MAX`].
    pub fn record_failure(&mut self, stage: Stage, error: ErrorInfo) {
        let progress = &mut self.progress;
        if progress.failures.len() >= FAILURES_KEPT_MAX {
            progress.failures.remove(0);
        }
        progress.failures.push(FailureRecord {
            at: Utc::now(),
            stage,
            attempt: progress.attempts,
            error,
        });
    }

    /// The stage after `stage` in this task's template, or `None` when `stage` is the last.
    pub fn stage_after(&self, stage: Stage) -> Option<Stage> {
        let position = self.spec.stages.iter().position(|s| *s == stage)?;
        self.spec.stages.get(position + 1).copied()
    }

    /// The engine `persona` uses for this task: the task's override, else the persona's default
    /// (`persona_default`, from its `actors/` front matter: `builtin` or `openai:<provider>`).
    pub fn engine_for(&self, persona: Persona, persona_default: &str) -> EngineSpec {
        let chosen = match persona {
            Persona::Planner => self.spec.engines.planner.clone(),
            Persona::Patch => self.spec.engines.patch.clone(),
            Persona::Circuit => self.spec.engines.circuit.clone(),
            _ => None,
        };
        chosen.unwrap_or_else(|| match persona_default.strip_prefix("openai:") {
            Some(provider) => EngineSpec::Openai {
                provider: provider.to_owned(),
            },
            None => EngineSpec::Builtin,
        })
    }
}

/// Tokens one model call (or one run's calls) used, as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
}

impl TokenUsage {
    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    /// The sum of two usages.
    pub fn plus(self, other: TokenUsage) -> TokenUsage {
        TokenUsage {
            input: self.input.saturating_add(other.input),
            output: self.output.saturating_add(other.output),
        }
    }
}

/// One entry of the append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Strictly increasing across all events of the service (sled's monotonic id generator).
    pub seq: u64,
    /// When it was recorded.
    pub ts: DateTime<Utc>,
    /// The task it belongs to; the nil id for service-wide events.
    pub task_id: TaskId,
    /// Who recorded it: `compass`, `planner`, `pipeline-<id>`, ...
    pub actor: String,
    /// Dotted event kind: `task.submitted`, `stage.started`, `engine.run`, ...
    pub kind: String,
    /// Kind-specific details.
    pub data: serde_json::Value,
}

/// Output of one process, bounded: a head and a tail are kept, the middle is counted, not kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CapturedOutput {
    /// The kept text (lossy UTF-8), with a marker where bytes were dropped.
    pub text: String,
    /// Bytes dropped from the middle; 0 when the output was kept whole.
    pub truncated_bytes: u64,
}

/// Where an engine run stands. A run is written `running` before its process starts, so one cut
/// off by a cancel, a shutdown or a crash still leaves a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Its process (or model call) is under way.
    Running,
    /// It ended on its own; exit code, outputs and duration are final.
    #[default]
    Finished,
    /// It was cut off (cancel, shutdown, crash); outputs are empty, duration as far as known.
    Interrupted,
}

/// The record of one engine run, persisted before its result is acted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EngineRun {
    /// UUID v7 of the run.
    pub id: Uuid,
    /// The task it ran for.
    pub task_id: TaskId,
    /// Which persona ran it.
    pub persona: String,
    /// `builtin` or `shell`.
    pub engine: String,
    /// The stage it belonged to.
    pub stage: Stage,
    /// Implement/verify attempt (1-based; 0 for plan).
    pub attempt: u32,
    /// The command line for `shell` runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Exit code; `None` when killed by a signal or timed out.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether the run was killed for exceeding its timeout.
    pub timed_out: bool,
    /// Standard output, bounded.
    pub stdout: CapturedOutput,
    /// Standard error, bounded.
    pub stderr: CapturedOutput,
    /// Wall-clock duration.
    pub duration_ms: u64,
    /// Tokens a model-backed engine used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenUsage>,
    /// `sha256:<hex>` of the prompt the engine was given (none for verify and `builtin`): which
    /// runs saw the same input, without keeping the text twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_digest: Option<String>,
    /// What the rate card charged for it, in micro-tokens; none while it runs and for a run cut
    /// off by a crash (never charged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Running, finished or interrupted (records from before this field are finished).
    #[serde(default)]
    pub status: RunStatus,
    /// The sandbox the process ran in (`bwrap+landlock`, `bwrap`, `landlock`, `limits`); none
    /// for an unconfined run, a model call, a builtin engine, and records from before this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

impl EngineRun {
    /// How it went, as a metrics label: `ok` (exit 0 in time), `failed` (exit ≠ 0, killed or no
    /// answer), `timed_out`, `interrupted` (cut off by cancel, shutdown or a crash), or `running`.
    pub(crate) fn outcome(&self) -> &'static str {
        match self.status {
            RunStatus::Interrupted => "interrupted",
            RunStatus::Running => "running",
            RunStatus::Finished if self.timed_out => "timed_out",
            RunStatus::Finished if self.succeeded() => "ok",
            RunStatus::Finished => "failed",
        }
    }

    /// A run counts as a success when it exited 0 in time.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// Stdout and stderr together, for feedback to the next attempt.
    pub fn combined_output(&self) -> String {
        let mut text = String::new();
        if !self.stdout.text.is_empty() {
            text.push_str(&self.stdout.text);
            if !text.ends_with('\n') {
                text.push('\n');
            }
        }
        text.push_str(&self.stderr.text);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_orders_critical_first() {
        let mut priorities = vec![
            Priority::Low,
            Priority::Critical,
            Priority::Medium,
            Priority::High,
        ];
        priorities.sort();
        assert_eq!(
            priorities,
            vec![
                Priority::Critical,
                Priority::High,
                Priority::Medium,
                Priority::Low
            ]
        );
    }

    #[test]
    fn task_ids_sort_by_creation() {
        let first = TaskId::new();
        let second = TaskId::new();
        assert!(first < second);
        assert_eq!(first.to_string().parse::<TaskId>().ok(), Some(first));
    }

    #[test]
    fn engine_spec_rejects_unknown_kind() {
        let parsed: Result<EngineSpec, _> = serde_json::from_str(r#"{"kind":"magic"}"#);
        assert!(parsed.is_err());
        let shell: EngineSpec =
            serde_json::from_str(r#"{"kind":"shell","command":"true"}"#).unwrap();
        assert_eq!(
            shell,
            EngineSpec::Shell {
                command: "true".into()
            }
        );
    }

    /// A run stored before the `sandbox` field reads as unconfined, and an unconfined run is
    /// stored without the field: old and new records stay readable both ways.
    #[test]
    fn engine_runs_stored_before_the_sandbox_field_still_read() {
        let old = r#"{"id":"01a215c3-ac7a-743c-a12c-5fb62e988219",
            "task_id":"01a215c3-ac51-74c8-bae4-5b1fa1f6b0bf","persona":"patch","engine":"shell",
            "stage":"implement","attempt":1,"exit_code":0,"timed_out":false,
            "stdout":{"text":"","truncated_bytes":0},"stderr":{"text":"","truncated_bytes":0},
            "duration_ms":5,"started_at":"2026-11-26T02:51:14.938574892Z"}"#;
        let mut run: EngineRun = serde_json::from_str(old).unwrap();
        assert_eq!(run.sandbox, None);
        assert!(!serde_json::to_string(&run).unwrap().contains("sandbox"));
        run.sandbox = Some("bwrap+landlock".into());
        let again: EngineRun = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        assert_eq!(again.sandbox.as_deref(), Some("bwrap+landlock"));
    }
}
