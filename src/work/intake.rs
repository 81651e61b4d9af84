//! Taking work in: a submission is validated (fields, the repository, the base branch, the kind,
//! the dependencies), checked against its idempotency key and the queue bound, persisted and
//! flushed, and only then handed to Compass — so an accepted task survives a crash. The HTTP
//! ingress and in-process callers (an incident's bugfix task) both come through here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::model::auth::{AuditEntry, Principal};
use crate::model::codes;
use crate::model::ledger::LedgerError;
use crate::model::persona::Persona;
use crate::model::pull_request::{
    owner_name_from_url, parse_owner_name, NoChecksPolicy, PullRequestMerge, PullRequestMode,
    PullRequestSpec,
};
use crate::model::task::{
    CausedBy, Delivery, EngineOverrides, EngineSpec, Priority, ReviewPolicy, Stage, Task,
    TaskBilling, TaskBudget, TaskId, TaskOutcome, TaskProgress, TaskSpec,
};
use crate::platform::git::read::Location;
use crate::platform::git::Git;
use crate::platform::redact::Redactor;
use crate::runtime::compass::CompassMsg;
use crate::runtime::repo_checks::RepoChecks;
use crate::runtime::Services;
use crate::storage::store::{NewEvent, Store, StoreError, Submission};
use crate::work::metering;

mod scope;
pub(crate) use scope::RepoScope;

/// Field length limits: bounds on what a submission may store.
const TITLE_BYTES_MAX: usize = 200;
const DESCRIPTION_BYTES_MAX: usize = 64 * 1024;
const VERIFY_BYTES_MAX: usize = 8 * 1024;
const KEY_BYTES_MAX: usize = 200;
/// Dependencies a task may name at most.
const DEPS_MAX: usize = 64;
/// How long a submission that arrives while Compass is still loading the queue after a start
/// waits for it before answering `503 NOT_READY` (the queue bound cannot be checked before).
const QUEUE_LOAD_WAIT: Duration = Duration::from_secs(5);
/// Account prefixes that are the service's own books: `system:` (mint, revenue), `agent:` (what
/// personas earn) and `task:` (a task's money in flight, allowed below zero). A task paid from
/// one of them would spend money no client holds.
const RESERVED_ACCOUNT_PREFIXES: [&str; 3] = ["system:", "agent:", "task:"];

/// Why a submission was refused. Each variant has a stable code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntakeError {
    /// A field is missing, empty, too long, out of range, holds a control character, or (a
    /// base branch) is not a branch name.
    #[error("{0}")]
    InvalidField(String),
    /// The request names something that does not exist (repo, branch, kind, dependency), or
    /// something that is not what the field needs (a repository without a work tree, one of the
    /// service's own accounts).
    #[error("{message}")]
    Unknown {
        /// A [`codes`] constant: `NOT_A_GIT_REPOSITORY`, `NOT_A_WORK_TREE`,
        /// `UNKNOWN_BASE_BRANCH`, `UNKNOWN_KIND`, `UNKNOWN_PROVIDER`, `UNKNOWN_DEPENDENCY`,
        /// `UNKNOWN_APP`, `ACCOUNT_NOT_FOUND` or `RESERVED_ACCOUNT`.
        code: &'static str,
        /// What was not found.
        message: String,
    },
    /// The queue holds its limit.
    #[error("the queue holds its limit of {0} tasks")]
    QueueFull(usize),
    /// Compass has not loaded its queue since the start: the queue bound cannot be checked yet.
    #[error("the service is starting: the task queue is not loaded yet; retry shortly")]
    NotReady,
    /// The idempotency key was used before with another body.
    #[error("idempotency_key was already used for task {0} with a different body")]
    IdempotencyConflict(TaskId),
    /// The paying account cannot cover the budget; no task was created.
    #[error("{0}")]
    InsufficientFunds(String),
    /// The ledger refused or could not be reached.
    #[error(transparent)]
    Ledger(LedgerError),
    /// Durable state could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller's token may not: a repository outside its globs, an account it may not charge,
    /// engines it may not choose.
    #[error("{message}")]
    Forbidden {
        /// `REPO_NOT_ALLOWED`, `ACCOUNT_NOT_ALLOWED` or `ENGINES_NOT_ALLOWED`.
        code: &'static str,
        /// What was refused, and why.
        message: String,
    },
}

impl From<LedgerError> for IntakeError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::InsufficientFunds { .. } => Self::InsufficientFunds(error.to_string()),
            LedgerError::AccountNotFound(account) => Self::Unknown {
                code: codes::ACCOUNT_NOT_FOUND,
                message: format!("no ledger account `{account}` to pay for the task"),
            },
            other => Self::Ledger(other),
        }
    }
}

impl IntakeError {
    /// The stable code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::InvalidField(_) => codes::INVALID_FIELD,
            Self::Unknown { code, .. } => code,
            Self::QueueFull(_) => codes::QUEUE_FULL,
            Self::NotReady => codes::NOT_READY,
            Self::IdempotencyConflict(_) => codes::IDEMPOTENCY_CONFLICT,
            Self::InsufficientFunds(_) => codes::INSUFFICIENT_FUNDS,
            Self::Ledger(inner) => inner.code(),
            Self::Store(inner) if inner.is_overload() || inner.is_fault() => inner.code(),
            Self::Store(_) => codes::STORE_FAILED,
            Self::Forbidden { code, .. } => code,
        }
    }

    fn unknown(code: &'static str, message: String) -> Self {
        Self::Unknown { code, message }
    }
}

/// A submission: the body of `POST /v1/tasks`. (`Default` is for work glitchlab takes in itself:
/// the fields it sets, the rest as a client leaving them out.)
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitTaskRequest {
    /// Short name of the work: one line, not blank.
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    /// What to do (lines and tabs allowed, no other control characters).
    #[schema(max_length = 65536)]
    pub description: String,
    /// Absolute path of a git work tree on this host (stored as its top level, canonical); must
    /// match `server.repos` and the token's `repos` globs.
    #[schema(min_length = 2, pattern = "^/")]
    pub repo: String,
    /// Branch to deliver into (default `main`): a branch name, never a revision (`main~1`).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^~^:?*\\[\\\\ ]+$",
        nullable
    )]
    pub base_branch: Option<String>,
    /// Pipeline template (default `feature`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Scheduling priority (default `medium`).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Command that must pass in the worktree before delivery: not blank.
    #[schema(min_length = 1, max_length = 8192)]
    pub verify: String,
    /// Implement/verify rounds (default from config), 1 ..= `tasks.max_attempts_limit` (10).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10, nullable)]
    pub max_attempts: Option<u32>,
    /// Engine overrides per persona (a token with `engines: true` only).
    #[serde(default)]
    pub engines: Option<EngineOverrides>,
    /// Makes the submission idempotent: one line, not blank.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, nullable)]
    pub idempotency_key: Option<String>,
    /// Tasks (ids) that must be `done` first.
    #[serde(default)]
    #[schema(max_items = 64, nullable)]
    pub deps: Option<Vec<String>>,
    /// `manual` puts an approval gate before delivery (default `auto`).
    #[serde(default)]
    pub review_policy: Option<ReviewPolicy>,
    /// `merge` into the base branch, or leave the `branch` for review (default
    /// `tasks.delivery`).
    #[serde(default)]
    pub delivery: Option<Delivery>,
    /// `delivery: pull_request`: the GitHub repository (`owner/name`, default from an
    /// `https://…/owner/name(.git)` `repo`), `mode`, `merge`, `draft`, `no_checks`.
    #[serde(default)]
    pub pull_request: Option<PullRequestRequest>,
    /// The incident (and deploy) this work answers, when an ops persona files it.
    #[serde(default)]
    pub caused_by: Option<CausedBy>,
    /// The app (in `ops.yaml`) to deploy once the task is delivered.
    #[serde(default)]
    pub deploy: Option<String>,
    /// What a fleet factory must offer to run the task's commands (`has:gpu`): at most 16, each
    /// 1 ..= 64 characters of `a-z 0-9 : . _ -`.
    #[serde(default)]
    #[schema(max_items = 16, nullable)]
    pub capabilities: Option<Vec<String>>,
    /// The ledger account that pays (default: the parent task's, else the token's own
    /// `user:<name>`, else `ledger.local_account`); never `system:`, `agent:` or `task:`, and one
    /// the token may charge.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128, nullable)]
    pub account: Option<String>,
    /// What the task may spend (default `max_cost`: `ledger.default_task_budget`).
    #[serde(default)]
    pub budget: Option<BudgetRequest>,
    /// The task that files this one.
    #[serde(default)]
    pub parent_task: Option<String>,
    /// What "done" means, for a model-backed Circuit to judge.
    #[serde(default)]
    pub acceptance: Option<String>,
}

/// The `budget` of a submission.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetRequest {
    /// Micro-tokens to reserve.
    #[serde(default)]
    pub max_cost: Option<u64>,
    /// Model tokens the task may use.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Seconds from start the task may run.
    #[serde(default)]
    pub max_wall_secs: Option<u64>,
}

/// An accepted submission.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The task as stored.
    pub task: Task,
    /// Whether this was an idempotent replay of an earlier submission.
    pub replayed: bool,
}

/// Validates, persists (flushed) and queues a task.
pub(crate) async fn submit(
    services: &Services,
    compass: &ActorRef<CompassMsg>,
    request: SubmitTaskRequest,
    caller: Option<&Principal>,
) -> Result<Accepted, IntakeError> {
    submit_audited(services, compass, request, caller, None).await
}

/// [`submit`], writing `audit` (the ingress's entry for this request) with the task in one
/// store job: a created task and its audit line are durable in the same group commit. A replay
/// stores nothing, so `Accepted::replayed` tells the caller the entry is still its to write.
pub(crate) async fn submit_audited(
    services: &Services,
    compass: &ActorRef<CompassMsg>,
    request: SubmitTaskRequest,
    caller: Option<&Principal>,
    audit: Option<AuditEntry>,
) -> Result<Accepted, IntakeError> {
    submit_from(services, compass, request, caller, audit, None).await
}

/// [`submit_audited`] for work glitchlab took in itself (`source`: a GitHub issue): the source
/// is stored on the task's spec with it, in the same write as its idempotency key.
pub(crate) async fn submit_from(
    services: &Services,
    compass: &ActorRef<CompassMsg>,
    request: SubmitTaskRequest,
    caller: Option<&Principal>,
    audit: Option<AuditEntry>,
    source: Option<crate::model::task::TaskSource>,
) -> Result<Accepted, IntakeError> {
    // Secret values out first: what is checked, digested, stored and answered is the redacted text.
    let request = redact_submission(&services.redactor, request);
    let digest = digest_of(&request);
    // A replay answers with the original task even if the repo, the config or the queue changed.
    if let Some(key) = &request.idempotency_key {
        if let Some((task_id, original_digest)) = services.store.idempotent_submission(key).await? {
            if original_digest != digest {
                return Err(IntakeError::IdempotencyConflict(task_id));
            }
            let task = services
                .store
                .task(task_id)
                .await?
                .ok_or(StoreError::TaskNotFound(task_id))?;
            // Not to a token whose scope does not hold the task's repository: the replay would
            // tell it what exists there.
            let scope = RepoScope {
                server: &[],
                caller,
            };
            scope.check(&request.repo, &scope::stored_forms(&task.spec.repo))?;
            return Ok(Accepted {
                task,
                replayed: true,
            });
        }
    }
    let mut task = validate(services, request, caller).await?;
    task.spec.source = source;
    // Before any money moves: a full disk (or the reserve in use) refuses new work outright.
    services.store.check_intake()?;
    let limit = services.config.compass.max_queued_tasks;
    if !services.directory.wait_queue_loaded(QUEUE_LOAD_WAIT).await {
        return Err(IntakeError::NotReady);
    }
    let Some(admission) = services.directory.admit(limit) else {
        return Err(IntakeError::QueueFull(limit));
    };
    // The money with the task, in one store job: a task that cannot be paid for is never
    // created, and a crash leaves both or neither (no reservation without its task).
    let (account, reservation) = metering::budget_reservation(&task, 1);
    task.billing.reservation = Some(reservation.id.clone());
    task.billing.budget_rounds = 1;
    let event = NewEvent::new(
        "ingress",
        "task.submitted",
        json!({"title": task.spec.title, "kind": task.spec.kind, "priority": task.spec.priority, "caused_by": task.spec.caused_by, "principal": task.spec.submitted_by}),
    );
    // Test hook: a crash here, just before the write, must leave nothing behind.
    crate::work_failpoint!("intake.writing");
    let now = chrono::Utc::now();
    let created = services
        .store
        .write(move |batch| -> Result<Submission, SubmitWriteError> {
            let submission =
                crate::storage::store::stage_submission(batch, task, digest, &event, audit)?;
            // A replay or a key conflict stores nothing: no money is held for it either.
            if matches!(submission, Submission::Created(_)) {
                metering::stage_budget_reservation(batch, &account, &reservation, now)
                    .map_err(SubmitWriteError::Reservation)?;
            }
            Ok(submission)
        })
        .await
        .map_err(|error| match error {
            SubmitWriteError::Store(error) => IntakeError::Store(error),
            SubmitWriteError::Reservation(error) => reservation_refused(caller, error),
        });
    let (task, replayed) = match created? {
        Submission::Created(task) => (task, false),
        Submission::Replayed(task) => (task, true),
        Submission::KeyConflict(original) => {
            return Err(IntakeError::IdempotencyConflict(original))
        }
    };
    if !replayed {
        crate::platform::metrics::task_submitted(&task.spec.kind);
        crate::platform::metrics::ledger_transfer(metering::CODE_TASK_BUDGET);
        // Durable already: if Compass is down, the next start picks the task up.
        match compass.cast(CompassMsg::TaskSubmitted(task.id)) {
            Ok(()) => admission.hand_over(),
            Err(error) => {
                tracing::error!(%error, task = %task.id, "could not notify compass of a new task")
            }
        }
    }
    Ok(Accepted { task, replayed })
}

/// Why intake's one write (the task and its budget reservation) stored nothing.
#[derive(Debug)]
enum SubmitWriteError {
    /// The store refused or failed the write.
    Store(StoreError),
    /// The Ledger's rules refused the reservation (unknown payer, insufficient funds).
    Reservation(LedgerError),
}

impl From<StoreError> for SubmitWriteError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// Checks a submission field by field and builds the queued (or blocked) task.
///
/// One parser per field, called in the documented order (docs/api.md: the text fields' lengths
/// and characters, `max_attempts`, engine commands, `kind`, `base_branch`, `repo`, then the
/// rest), so the first problem found is the one a client is told about.
async fn validate(
    services: &Services,
    request: SubmitTaskRequest,
    caller: Option<&Principal>,
) -> Result<Task, IntakeError> {
    let config = &services.config;
    let SubmitTaskRequest {
        title,
        description,
        repo,
        base_branch,
        kind,
        priority,
        verify,
        max_attempts,
        engines,
        idempotency_key,
        deps,
        review_policy,
        delivery,
        pull_request,
        caused_by,
        deploy,
        capabilities,
        account,
        budget,
        parent_task,
        acceptance,
    } = request;
    let capabilities = parse_capabilities(capabilities)?;
    let title = parse_title(title)?;
    let description = parse_description(description)?;
    let verify = parse_verify(verify)?;
    let acceptance = parse_acceptance(acceptance)?;
    let idempotency_key = parse_idempotency_key(idempotency_key)?;
    let caused_by = parse_caused_by(caused_by)?;
    let max_attempts = parse_max_attempts(
        max_attempts,
        default_max_attempts(services),
        config.tasks.max_attempts_limit,
    )?;
    let engines = parse_engines(engines, &config.providers)?;
    let (kind, template) = parse_kind(kind, &config.compass.templates)?;
    let base_branch = parse_base_branch(base_branch)?;
    let scope = RepoScope {
        server: &config.server.repos,
        caller,
    };
    // A pull-request task's remote on the GitHub host is asked with the token (a private repo).
    let delivers_pr = delivery.unwrap_or(config.tasks.delivery) == Delivery::PullRequest;
    let remote_env = crate::work::remote::auth_env(&config.github, delivers_pr, &repo)
        .await
        .unwrap_or_default();
    let repo = parse_repo_in(
        repo,
        &base_branch,
        &services.repo_checks,
        (config.git.timeout(), &remote_env),
        scope,
    )
    .await?;
    let deps = parse_deps(&services.store, deps).await?;
    let delivery = delivery.unwrap_or(config.tasks.delivery);
    let pull_request = parse_pull_request(pull_request, delivery, &repo, &config.github)?;
    let deploy = parse_deploy(
        deploy,
        &kind,
        &template,
        delivery,
        &services.definitions.ops.apps,
    )?;
    let review_policy = review_policy.unwrap_or_default();
    let parent_task = parse_parent_task(&services.store, parent_task).await?;
    let default_account = caller
        .and_then(Principal::default_account)
        .unwrap_or(&config.ledger.local_account);
    let account = parse_account(&services.store, account, parent_task, default_account).await?;
    let budget = parse_budget(budget, config.ledger.default_task_budget)?;
    check_scope(caller, &account, &engines)?;
    let now = Utc::now();
    let status = crate::model::lifecycle::submitted(!deps.is_empty());
    Ok(Task {
        id: TaskId::new(),
        spec: TaskSpec {
            title,
            description,
            repo,
            base_branch,
            kind,
            priority: priority.unwrap_or_default(),
            verify,
            acceptance,
            max_attempts,
            engines,
            deps: deps.clone(),
            review_policy,
            delivery,
            pull_request,
            caused_by,
            deploy,
            source: None,
            capabilities,
            parent_task,
            submitted_by: caller.map(|c| c.name.clone()),
            idempotency_key,
            stages: with_review(template, review_policy),
            created_at: now,
        },
        progress: TaskProgress::submitted(status, deps, now),
        billing: TaskBilling {
            account,
            budget,
            ..TaskBilling::default()
        },
        outcome: TaskOutcome::default(),
    })
}

/// The submission with every secret value (`[governance] secrets`, plain or encoded) in its free
/// text replaced by its marker: title, description, verify, acceptance, shell engine commands,
/// the idempotency key and `caused_by`. Nothing of a secret is then stored, digested or
/// answered; a command that needs one reads it from its environment (a persona's `env`). The
/// names (repo, branch, kind, app, account, ids) are checked against what exists instead.
fn redact_submission(redactor: &Redactor, request: SubmitTaskRequest) -> SubmitTaskRequest {
    if redactor.is_empty() {
        return request;
    }
    let text = |value: String| redactor.redact(&value);
    let engine = |spec: Option<EngineSpec>| match spec {
        Some(EngineSpec::Shell { command }) => Some(EngineSpec::Shell {
            command: text(command),
        }),
        other => other,
    };
    // Every field named, so a new one is a compile error here until someone decides.
    let SubmitTaskRequest {
        title,
        description,
        repo,
        base_branch,
        kind,
        priority,
        verify,
        max_attempts,
        engines,
        idempotency_key,
        deps,
        review_policy,
        delivery,
        pull_request,
        caused_by,
        deploy,
        capabilities,
        account,
        budget,
        parent_task,
        acceptance,
    } = request;
    SubmitTaskRequest {
        title: text(title),
        description: text(description),
        repo,
        base_branch,
        kind,
        priority,
        verify: text(verify),
        max_attempts,
        engines: engines.map(|e| EngineOverrides {
            planner: engine(e.planner),
            patch: engine(e.patch),
            circuit: engine(e.circuit),
        }),
        idempotency_key: idempotency_key.map(text),
        deps,
        review_policy,
        delivery,
        pull_request,
        caused_by: caused_by.map(|c| CausedBy {
            incident: text(c.incident),
            deploy: c.deploy.map(text),
        }),
        deploy,
        capabilities,
        account,
        budget,
        parent_task,
        acceptance: acceptance.map(text),
    }
}

/// Which control characters a text field may hold. `char::is_control` (C0, DEL, C1) is refused
/// everywhere else: a NUL cuts the C strings of git, the shell and file names short, escape
/// sequences rewrite the terminal of whoever reads the task, and `\r` hides text on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Text {
    /// A name, key, path or title: one line, no control character at all.
    Line,
    /// Prose or a shell script (description, acceptance, verify, engine commands): `\n` and
    /// `\t` may break lines and indent; nothing else.
    Lines,
}

/// `value` with each control character a field of `text` would refuse replaced by U+FFFD: for
/// the service's own submissions (an incident's bugfix task quotes alerts and log lines), which
/// should file the task rather than be refused over a stray escape sequence.
pub(crate) fn printable(value: &str, text: Text) -> String {
    value
        .chars()
        .map(|c| {
            let allowed = text == Text::Lines && matches!(c, '\n' | '\t');
            if c.is_control() && !allowed {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// `value` holds no control character that `text` does not allow; the refusal names `field`
/// and the character.
fn check_text(field: &str, value: &str, text: Text) -> Result<(), IntakeError> {
    let allowed = |c: char| text == Text::Lines && matches!(c, '\n' | '\t');
    let Some(found) = value.chars().find(|c| c.is_control() && !allowed(*c)) else {
        return Ok(());
    };
    let rule = match text {
        Text::Line => "must not hold control characters",
        Text::Lines => "must not hold control characters other than newline and tab",
    };
    Err(IntakeError::InvalidField(format!(
        "{field} {rule} (found U+{:04X})",
        u32::from(found)
    )))
}

/// `title`: 1 to [`TITLE_BYTES_MAX`] bytes, not blank, one line: it names the work in every
/// listing.
fn parse_title(title: String) -> Result<String, IntakeError> {
    check_length("title", &title, 1, TITLE_BYTES_MAX)?;
    check_text("title", &title, Text::Line)?;
    Ok(title)
}

/// `description`: may be empty, at most [`DESCRIPTION_BYTES_MAX`] bytes of lines (it goes into
/// prompts).
fn parse_description(description: String) -> Result<String, IntakeError> {
    check_length("description", &description, 0, DESCRIPTION_BYTES_MAX)?;
    check_text("description", &description, Text::Lines)?;
    Ok(description)
}

/// `verify`: 1 to [`VERIFY_BYTES_MAX`] bytes, not blank: a command must decide "done". A script
/// may span lines.
fn parse_verify(verify: String) -> Result<String, IntakeError> {
    check_length("verify", &verify, 1, VERIFY_BYTES_MAX)?;
    check_text("verify", &verify, Text::Lines)?;
    Ok(verify)
}

/// `acceptance`, when given: lines of prose, like the description (a model-backed Circuit reads
/// them).
fn parse_acceptance(acceptance: Option<String>) -> Result<Option<String>, IntakeError> {
    if let Some(acceptance) = &acceptance {
        check_text("acceptance", acceptance, Text::Lines)?;
    }
    Ok(acceptance)
}

/// `idempotency_key`, when given: 1 to [`KEY_BYTES_MAX`] bytes, not blank, one line (it is a
/// sled key).
fn parse_idempotency_key(key: Option<String>) -> Result<Option<String>, IntakeError> {
    if let Some(key) = &key {
        check_length("idempotency_key", key, 1, KEY_BYTES_MAX)?;
        check_text("idempotency_key", key, Text::Line)?;
    }
    Ok(key)
}

/// `caused_by`, when given: ids, one line each (an ops persona files it; the HTTP edge passes it
/// as sent).
fn parse_caused_by(caused_by: Option<CausedBy>) -> Result<Option<CausedBy>, IntakeError> {
    if let Some(caused_by) = &caused_by {
        check_text("caused_by.incident", &caused_by.incident, Text::Line)?;
        if let Some(deploy) = &caused_by.deploy {
            check_text("caused_by.deploy", deploy, Text::Line)?;
        }
    }
    Ok(caused_by)
}

/// The attempts a task gets when it names none: Patch's `max_attempts` (its `actors/` front
/// matter), else `tasks.default_max_attempts`.
fn default_max_attempts(services: &Services) -> u32 {
    services
        .definitions
        .personas
        .get(&Persona::Patch)
        .and_then(|p| p.front.max_attempts)
        .unwrap_or(services.config.tasks.default_max_attempts)
}

/// `max_attempts` (else `default`): 1 ..= `limit` (`tasks.max_attempts_limit`), so a task
/// cannot loop without end.
fn parse_max_attempts(
    requested: Option<u32>,
    default: u32,
    limit: u32,
) -> Result<u32, IntakeError> {
    let max_attempts = requested.unwrap_or(default);
    if max_attempts == 0 || max_attempts > limit {
        return Err(IntakeError::InvalidField(format!(
            "max_attempts must be between 1 and {limit}"
        )));
    }
    Ok(max_attempts)
}

/// `engines` (default: none overridden): shell commands are bounded, providers must be among
/// `providers` (config's, by name), and Circuit's engine is a judge (builtin or a model), never a
/// second command: its command is the task's `verify`.
fn parse_engines<P>(
    engines: Option<EngineOverrides>,
    providers: &BTreeMap<String, P>,
) -> Result<EngineOverrides, IntakeError> {
    let engines = engines.unwrap_or_default();
    let all = [
        (Persona::Planner, &engines.planner),
        (Persona::Patch, &engines.patch),
        (Persona::Circuit, &engines.circuit),
    ];
    for (persona, spec) in all {
        match spec {
            Some(EngineSpec::Shell { .. }) if persona == Persona::Circuit => {
                return Err(IntakeError::InvalidField(
                    "engines.circuit must be builtin or openai: its command is `verify`".into(),
                ));
            }
            Some(EngineSpec::Shell { command }) => {
                let field = format!("engines.{persona}.command");
                check_length(&field, command, 1, VERIFY_BYTES_MAX)?;
                check_text(&field, command, Text::Lines)?;
            }
            Some(EngineSpec::Openai { provider }) => {
                check_text(&format!("engines.{persona}.provider"), provider, Text::Line)?;
                check_provider(persona, provider, providers)?;
            }
            Some(EngineSpec::Builtin) | None => {}
        }
    }
    Ok(engines)
}

/// An `openai` engine's provider must be configured (`[providers]`).
fn check_provider<P>(
    persona: Persona,
    provider: &str,
    providers: &BTreeMap<String, P>,
) -> Result<(), IntakeError> {
    if providers.contains_key(provider) {
        return Ok(());
    }
    let known: Vec<&str> = providers.keys().map(String::as_str).collect();
    Err(IntakeError::unknown(
        codes::UNKNOWN_PROVIDER,
        format!(
            "engines.{persona}: no provider `{provider}`; known: [{}]",
            known.join(", ")
        ),
    ))
}

/// `kind` (default `feature`): must have a template in `templates` (`compass.templates`); answers
/// the kind and its stages.
fn parse_kind(
    kind: Option<String>,
    templates: &BTreeMap<String, Vec<Stage>>,
) -> Result<(String, Vec<Stage>), IntakeError> {
    let kind = kind.unwrap_or_else(|| "feature".to_owned());
    check_text("kind", &kind, Text::Line)?;
    let Some(stages) = templates.get(&kind) else {
        let known: Vec<&str> = templates.keys().map(String::as_str).collect();
        return Err(IntakeError::unknown(
            codes::UNKNOWN_KIND,
            format!("unknown kind `{kind}`; known kinds: {}", known.join(", ")),
        ));
    };
    Ok((kind, stages.clone()))
}

/// `base_branch` (default `main`): 1 to [`TITLE_BYTES_MAX`] bytes, and a branch name (see
/// [`check_branch_name`]). Whether it exists is [`parse_repo_in`]'s question.
fn parse_base_branch(base_branch: Option<String>) -> Result<String, IntakeError> {
    let base_branch = base_branch.unwrap_or_else(|| "main".to_owned());
    check_length("base_branch", &base_branch, 1, TITLE_BYTES_MAX)?;
    check_text("base_branch", &base_branch, Text::Line)?;
    check_branch_name(&base_branch)?;
    Ok(base_branch)
}

/// A base branch names a branch and nothing else: what `git check-ref-format --branch` accepts,
/// so no revision syntax (`main~1`, `main^`, `@{-1}`, `a..b`, `main:path`) that would make git
/// (or gix) resolve something other than the branch the task is delivered into, and no leading
/// `-` that a git command line would read as an option.
fn check_branch_name(name: &str) -> Result<(), IntakeError> {
    let refuse = |why: String| {
        Err(IntakeError::InvalidField(format!(
            "base_branch `{name}` is not a branch name: {why}"
        )))
    };
    if name.starts_with('-') {
        return refuse("it must not start with `-`".into());
    }
    if name == "@" || name == "HEAD" {
        return refuse("`@` and `HEAD` name no branch".into());
    }
    for sequence in ["..", "@{", "//"] {
        if name.contains(sequence) {
            return refuse(format!("it must not contain `{sequence}`"));
        }
    }
    let forbidden = |c: char| {
        matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\') || c.is_ascii_control()
    };
    if let Some(c) = name.chars().find(|c| forbidden(*c)) {
        return refuse(format!("it must not contain `{c}`"));
    }
    if name.starts_with('/') || name.ends_with('/') || name.ends_with('.') {
        return refuse("it must not start with `/` or end with `/` or `.`".into());
    }
    for part in name.split('/') {
        if part.starts_with('.') || part.ends_with(".lock") {
            return refuse(format!(
                "no part of it may start with `.` or end with `.lock` (`{part}`)"
            ));
        }
    }
    Ok(())
}

/// [`parse_repo_in`] for any repository (the repository checks' unit tests).
#[cfg(test)]
async fn parse_repo(
    repo: String,
    base_branch: &str,
    checks: &RepoChecks,
    git_timeout: Duration,
) -> Result<String, IntakeError> {
    parse_repo_in(
        repo,
        base_branch,
        checks,
        (git_timeout, &[]),
        RepoScope::ANY,
    )
    .await
}

/// `repo`: an absolute path in the work tree of a git repository that has `base_branch`,
/// answered as the work tree's top level with symlinks and `..` resolved: however a client
/// names a repository, it is stored (and its deliveries locked, its governance looked up, its
/// failures remembered) under one name. A bare repository, or a path inside a git directory
/// (`repo/.git`), has no work tree to merge into: `NOT_A_WORK_TREE`. A pair found a moment ago
/// (`checks`, keyed by the canonical path) is trusted without asking again; a pair found now is
/// remembered.
///
/// `scope` is checked on the real path before anything looks for a repository there, and on the
/// work tree's top level before its branch is looked for: a refusal is the same whether or not
/// something exists outside the scope ([`scope`]).
async fn parse_repo_in(
    repo: String,
    base_branch: &str,
    checks: &RepoChecks,
    (git_timeout, remote_env): (Duration, &[(String, String)]),
    scope: RepoScope<'_>,
) -> Result<String, IntakeError> {
    check_text("repo", &repo, Text::Line)?;
    if crate::model::task::is_remote_repo(&repo) {
        let git = Git::new("/", git_timeout).with_env(remote_env.to_vec());
        return parse_remote_repo(repo, base_branch, checks, git, scope).await;
    }
    let given = Path::new(&repo);
    if !given.is_absolute() {
        return Err(IntakeError::InvalidField(format!(
            "repo must be an absolute path or a git URL (file://, ssh://, https://), got `{repo}`"
        )));
    }
    // The real path: symlinks, `..`, `//` and a trailing `/` resolved, as far as it exists.
    let resolved = scope::resolve_local(&repo, given).await?;
    scope.check(&repo, &scope::path_forms(&resolved.path))?;
    if !resolved.exists {
        return Err(not_a_repository(&repo));
    }
    let real = utf8(resolved.real, &repo)?;
    if let Some(top) = checks.recently_found(&real, base_branch) {
        scope.check(&repo, &scope::path_forms(&top))?;
        return Ok(top);
    }
    let top = work_tree_top(git_timeout, &real, &repo).await?;
    scope.check(&repo, &scope::path_forms(&top))?;
    check_branch(git_timeout, Path::new(&top), &repo, base_branch).await?;
    checks.found(&real, base_branch, &top);
    Ok(top)
}

/// `NOT_A_GIT_REPOSITORY` for `repo` as the client named it.
fn not_a_repository(repo: &str) -> IntakeError {
    IntakeError::unknown(
        codes::NOT_A_GIT_REPOSITORY,
        format!("{repo} is not a git repository"),
    )
}

/// The top level of the work tree the real path `real` is in; a bare repository or a git
/// directory is `NOT_A_WORK_TREE`, anything else `NOT_A_GIT_REPOSITORY`.
async fn work_tree_top(
    git_timeout: Duration,
    real: &str,
    repo: &str,
) -> Result<String, IntakeError> {
    match locate(git_timeout, Path::new(real)).await {
        Location::WorkTree(top) => utf8(top, repo),
        Location::Outside => Err(not_a_repository(repo)),
        Location::Bare => Err(IntakeError::unknown(
            codes::NOT_A_WORK_TREE,
            format!(
                "{repo} is a bare repository: a task needs a work tree to deliver into; \
                 name a clone with a checkout"
            ),
        )),
        Location::GitDir { work_tree } => {
            let hint = match work_tree {
                Some(top) => format!("name its work tree, {}", top.display()),
                None => "name the repository's work tree".to_owned(),
            };
            Err(IntakeError::unknown(
                codes::NOT_A_WORK_TREE,
                format!("{repo} is inside a git directory, not a work tree: {hint}"),
            ))
        }
    }
}

/// A `repo` given as a git URL: the remote must answer (`git ls-remote` through `git`, bounded by
/// git's timeout, with a pull-request task's token for the GitHub host) and have the base branch. The service clones it when work starts (`work::remote`).
/// A `file://` URL is kept as the URL of its real path (what its scope was judged on, so what
/// git reads is what was allowed); any other is kept as given, and refused with a `.` or `..`
/// segment. The scope is checked before the remote is asked anything.
async fn parse_remote_repo(
    repo: String,
    base_branch: &str,
    checks: &RepoChecks,
    git: Git,
    scope: RepoScope<'_>,
) -> Result<String, IntakeError> {
    if repo.chars().any(char::is_whitespace) {
        return Err(IntakeError::InvalidField(format!(
            "repo `{repo}` is not a URL: it holds whitespace"
        )));
    }
    let url = match scope::file_url_path(&repo) {
        Some(path) => {
            let resolved = scope::resolve_local(&repo, Path::new(&path)).await?;
            scope.check(&repo, &scope::path_forms(&resolved.path))?;
            scope::file_url_of(&resolved.path)
        }
        None => {
            scope::check_url_segments(&repo)?;
            scope.check(&repo, std::slice::from_ref(&repo))?;
            repo.clone()
        }
    };
    if checks.recently_found(&url, base_branch).is_some() {
        return Ok(url);
    }
    let reference = format!("refs/heads/{base_branch}");
    let listed = git
        .run(&["ls-remote", "--heads", &url, &reference])
        .await
        .map_err(|error| {
            IntakeError::unknown(
                codes::NOT_A_GIT_REPOSITORY,
                format!("{repo} did not answer as a git repository: {error}"),
            )
        })?;
    if listed.trim().is_empty() {
        return Err(IntakeError::unknown(
            codes::UNKNOWN_BASE_BRANCH,
            format!("{repo} has no branch `{base_branch}`"),
        ));
    }
    checks.found(&url, base_branch, &url);
    Ok(url)
}

/// Where the canonical `dir` sits in a repository: gix in-process (no git process per
/// submission), the `git` binary when gix cannot tell.
async fn locate(git_timeout: Duration, dir: &Path) -> Location {
    match crate::platform::git::read::locate(dir).await {
        Ok(location) => location,
        Err(_) => Git::new(dir, git_timeout).location().await,
    }
}

/// A resolved path as the text a task stores; one that is not UTF-8 cannot be stored faithfully.
fn utf8(path: PathBuf, repo: &str) -> Result<String, IntakeError> {
    path.into_os_string().into_string().map_err(|_| {
        IntakeError::InvalidField(format!(
            "repo `{repo}` resolves to a path that is not UTF-8"
        ))
    })
}

/// What the caller's token allows besides its repositories (checked by [`parse_repo_in`]): a
/// token's task charges only an account it may charge; engines other than the persona files'
/// need a token with `engines`.
fn check_scope(
    caller: Option<&Principal>,
    account: &str,
    engines: &EngineOverrides,
) -> Result<(), IntakeError> {
    let forbidden = |code, message: String| Err(IntakeError::Forbidden { code, message });
    let Some(caller) = caller else {
        return Ok(());
    };
    if !caller.may_charge(account) {
        return forbidden(
            codes::ACCOUNT_NOT_ALLOWED,
            format!(
                "token `{}` may charge {}, not `{account}`",
                caller.name,
                caller.accounts.join(", ")
            ),
        );
    }
    let overrides =
        engines.planner.is_some() || engines.patch.is_some() || engines.circuit.is_some();
    if overrides && !caller.may_choose_engines() {
        return forbidden(
            codes::ENGINES_NOT_ALLOWED,
            format!(
                "token `{}` may not choose engines (`engines: false`); leave `engines` out",
                caller.name
            ),
        );
    }
    Ok(())
}

/// Why a reservation was refused, for the client. A token's own `user:<name>` account is not
/// opened by a submission: it would be empty, so the reservation would be refused anyway, and a
/// refused submission must leave nothing behind. Until an admin opens and funds it, its tasks
/// are refused `402 INSUFFICIENT_FUNDS`, as an empty account's are.
fn reservation_refused(caller: Option<&Principal>, error: LedgerError) -> IntakeError {
    match &error {
        LedgerError::AccountNotFound(account)
            if caller.is_some_and(|c| *account == format!("user:{}", c.name)) =>
        {
            IntakeError::InsufficientFunds(format!(
                "account `{account}` has not been opened and funded yet: an admin opens it \
                 (POST /v1/ledger/accounts) and mints into it"
            ))
        }
        _ => error.into(),
    }
}

/// `deps` (default none): at most [`DEPS_MAX`], each the id of a task in `store`; duplicates
/// count once. Compass decides whether they still block.
async fn parse_deps(store: &Store, deps: Option<Vec<String>>) -> Result<Vec<TaskId>, IntakeError> {
    let deps = deps.unwrap_or_default();
    for dep in &deps {
        check_text("deps", dep, Text::Line)?;
    }
    check_deps(store, deps).await
}

/// The `pull_request` of a submission (its `repo` may be left out for an `https://` task repo).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PullRequestRequest {
    /// `owner/name` on GitHub.
    #[serde(default)]
    #[schema(max_length = 201, nullable)]
    pub repo: Option<String>,
    /// `fail_fast` (default) or `best_effort`.
    #[serde(default)]
    pub mode: Option<PullRequestMode>,
    /// `auto` (default) or `none`.
    #[serde(default)]
    pub merge: Option<PullRequestMerge>,
    /// Open it as a draft.
    #[serde(default)]
    pub draft: Option<bool>,
    /// `wait_secs`, `pass` or `fail` (default `[github] no_checks`).
    #[serde(default)]
    pub no_checks: Option<NoChecksPolicy>,
}

/// `pull_request`: only with `delivery: pull_request`, which needs a repository by URL (the git
/// remote the branch is pushed to), `[github]` credentials, and an `owner/name`.
fn parse_pull_request(
    request: Option<PullRequestRequest>,
    delivery: Delivery,
    repo: &str,
    github: &crate::config::github::GithubConfig,
) -> Result<Option<PullRequestSpec>, IntakeError> {
    let invalid = |message: &str| Err(IntakeError::InvalidField(message.to_owned()));
    if delivery != Delivery::PullRequest {
        return match request {
            Some(_) => invalid("`pull_request` needs `delivery: pull_request`"),
            None => Ok(None),
        };
    }
    if !crate::model::task::is_remote_repo(repo) {
        return invalid("`delivery: pull_request` needs `repo` to be the git URL it pushes to");
    }
    if !github.has_auth() {
        return invalid(
            "`delivery: pull_request` needs [github] token_env or an App in the config",
        );
    }
    let request = request.unwrap_or_default();
    let Some(gh_repo) = request.repo.or_else(|| owner_name_from_url(repo)) else {
        return invalid(
            "`pull_request.repo` (owner/name) is needed: `repo` is no https GitHub URL",
        );
    };
    if parse_owner_name(&gh_repo).is_none() {
        return invalid("`pull_request.repo` must be `owner/name`");
    }
    Ok(Some(PullRequestSpec {
        repo: gh_repo,
        mode: request.mode.unwrap_or_default(),
        merge: request.merge.unwrap_or_default(),
        draft: request.draft.unwrap_or(false),
        no_checks: request.no_checks,
    }))
}

/// `deploy`, when given or needed: a kind whose template ends in `deploy` must name the app, a
/// deploy ships what was merged (so not with `delivery: branch`), and the app must be one of
/// `apps` (`ops.yaml`).
fn parse_deploy<A>(
    deploy: Option<String>,
    kind: &str,
    stages: &[Stage],
    delivery: Delivery,
    apps: &BTreeMap<String, A>,
) -> Result<Option<String>, IntakeError> {
    if let Some(app) = &deploy {
        check_text("deploy", app, Text::Line)?;
    }
    if stages.contains(&Stage::Deploy) && deploy.is_none() {
        return Err(IntakeError::InvalidField(format!(
            "kind `{kind}` ends with a deploy stage: name the app (of ops.yaml) in `deploy`"
        )));
    }
    if delivery == Delivery::Branch && deploy.is_some() {
        return Err(IntakeError::InvalidField(
            "`deploy` needs `delivery: merge`: a deploy ships what landed on the base branch"
                .into(),
        ));
    }
    if let Some(app) = &deploy {
        if !apps.contains_key(app) {
            return Err(IntakeError::unknown(
                codes::UNKNOWN_APP,
                format!("`deploy`: no app `{app}` in ops.yaml"),
            ));
        }
    }
    Ok(deploy)
}

/// `capabilities` (default none): the names a fleet factory must offer, checked as persona
/// defaults are ([`crate::model::fleet::check_capabilities`]); duplicates count once, order
/// does not matter.
fn parse_capabilities(capabilities: Option<Vec<String>>) -> Result<Vec<String>, IntakeError> {
    let mut capabilities = capabilities.unwrap_or_default();
    crate::model::fleet::check_capabilities(&capabilities)
        .map_err(|reason| IntakeError::InvalidField(format!("`capabilities`: {reason}")))?;
    capabilities.sort_unstable();
    capabilities.dedup();
    Ok(capabilities)
}

/// `parent_task`, when given: the id of a task in `store` (checked as a dependency is).
async fn parse_parent_task(
    store: &Store,
    parent_task: Option<String>,
) -> Result<Option<TaskId>, IntakeError> {
    match parent_task {
        Some(text) => {
            check_text("parent_task", &text, Text::Line)?;
            Ok(check_deps(store, vec![text]).await?.into_iter().next())
        }
        None => Ok(None),
    }
}

/// `account` (default: the parent task's, else `local_account`): a valid ledger account id, and
/// not one of the service's own books ([`RESERVED_ACCOUNT_PREFIXES`]: `system:`, `agent:`,
/// `task:`, in any case), whoever named it. The ledger says whether it exists when the budget
/// is reserved.
async fn parse_account(
    store: &Store,
    account: Option<String>,
    parent_task: Option<TaskId>,
    local_account: &str,
) -> Result<String, IntakeError> {
    let account = match (account, parent_task) {
        (Some(account), _) => account,
        (None, Some(parent)) => store
            .task(parent)
            .await?
            .map(|p| p.billing.account)
            .unwrap_or_default(),
        (None, None) => local_account.to_owned(),
    };
    crate::model::ledger::validate_id("account", &account)
        .map_err(|e| IntakeError::InvalidField(e.to_string()))?;
    let lower = account.to_ascii_lowercase();
    if let Some(prefix) = RESERVED_ACCOUNT_PREFIXES
        .iter()
        .find(|prefix| lower.starts_with(**prefix))
    {
        return Err(IntakeError::unknown(
            codes::RESERVED_ACCOUNT,
            format!(
                "account `{account}` is one of the service's own (`{prefix}...`); a task is paid \
                 from a user or project account"
            ),
        ));
    }
    Ok(account)
}

/// `budget` (default `max_cost`: `default_max_cost`, `ledger.default_task_budget`): `max_cost`
/// at least 1, since a task reserves it before it may run; the limits pass as given.
fn parse_budget(
    budget: Option<BudgetRequest>,
    default_max_cost: u64,
) -> Result<TaskBudget, IntakeError> {
    let budget = budget.unwrap_or_default();
    let max_cost = budget.max_cost.unwrap_or(default_max_cost);
    if max_cost == 0 {
        return Err(IntakeError::InvalidField(
            "budget.max_cost must be at least 1".into(),
        ));
    }
    Ok(TaskBudget {
        max_cost,
        max_tokens: budget.max_tokens,
        max_wall_secs: budget.max_wall_secs,
    })
}

/// Every dependency must name an existing task; Compass decides whether it still blocks.
async fn check_deps(store: &Store, deps: Vec<String>) -> Result<Vec<TaskId>, IntakeError> {
    if deps.len() > DEPS_MAX {
        return Err(IntakeError::InvalidField(format!(
            "deps lists more than {DEPS_MAX} tasks"
        )));
    }
    let mut ids = Vec::with_capacity(deps.len());
    for dep in deps {
        let unknown = || {
            IntakeError::unknown(
                codes::UNKNOWN_DEPENDENCY,
                format!("deps names unknown task `{dep}`"),
            )
        };
        let id: TaskId = dep.parse().map_err(|_| unknown())?;
        if store.task(id).await?.is_none() {
            return Err(unknown());
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// A manual review puts the approval gate right before delivery (or last, if nothing delivers).
fn with_review(mut stages: Vec<Stage>, policy: ReviewPolicy) -> Vec<Stage> {
    if policy == ReviewPolicy::Manual && !stages.contains(&Stage::Approve) {
        let at = stages
            .iter()
            .position(|s| *s == Stage::Deliver)
            .unwrap_or(stages.len());
        stages.insert(at, Stage::Approve);
    }
    stages
}

fn check_length(field: &str, value: &str, min: usize, max: usize) -> Result<(), IntakeError> {
    if value.trim().len() < min {
        return Err(IntakeError::InvalidField(format!(
            "{field} must not be empty"
        )));
    }
    if value.len() > max {
        return Err(IntakeError::InvalidField(format!(
            "{field} is longer than {max} bytes"
        )));
    }
    Ok(())
}

/// Whether the work tree at `top` has the local branch `base_branch` (`repo` as the client named
/// it, for the message).
async fn check_branch(
    git_timeout: Duration,
    top: &Path,
    repo: &str,
    base_branch: &str,
) -> Result<(), IntakeError> {
    // In-process (gix): no git process per submission; git decides what gix cannot read.
    let found = match crate::platform::git::read::has_branch(top, base_branch).await {
        Ok(Some(found)) => found,
        Ok(None) | Err(_) => Git::new(top, git_timeout).branch_exists(base_branch).await,
    };
    if found {
        return Ok(());
    }
    Err(IntakeError::unknown(
        codes::UNKNOWN_BASE_BRANCH,
        format!("{repo} has no branch `{base_branch}`"),
    ))
}

/// What makes two submissions "the same body": the body as sent (after parsing, so key order and
/// whitespace do not matter), independent of config defaults that may change between the two.
fn digest_of(request: &SubmitTaskRequest) -> String {
    // Serializing plain data to a Vec cannot fail; an empty digest would only weaken a replay check.
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

#[cfg(test)]
mod tests;
