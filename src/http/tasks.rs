//! `/v1/tasks`: submit, list, inspect (record, events, engine runs) and cancel tasks.
//!
//! A submission is validated here (fields, the repository, the base branch, the kind), persisted
//! and flushed, and only then handed to Compass: a `201` means the task survives a crash.

use std::path::Path as FsPath;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use ractor::rpc::CallResult;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::actors::compass::{CompassMsg, TaskAction};
use crate::actors::transitions::TaskActionError;
use crate::domain::{
    EngineOverrides, EngineSpec, Priority, ReviewPolicy, Stage, Task, TaskId, TaskStatus,
};
use crate::git::Git;
use crate::store::{NewEvent, Submission};

/// Field length limits: bounds on what a submission may store.
const TITLE_BYTES_MAX: usize = 200;
const DESCRIPTION_BYTES_MAX: usize = 64 * 1024;
const VERIFY_BYTES_MAX: usize = 8 * 1024;
const KEY_BYTES_MAX: usize = 200;
/// How long a cancel may wait for Compass.
const COMPASS_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// What `Retry-After` says when the queue is full.
const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 5;

/// The body of `POST /v1/tasks`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitTaskRequest {
    /// Short name of the work.
    pub title: String,
    /// What to do.
    pub description: String,
    /// Absolute path of a git repository on this host.
    pub repo: String,
    /// Branch to deliver into (default `main`).
    #[serde(default)]
    pub base_branch: Option<String>,
    /// Pipeline template (default `feature`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Scheduling priority (default `medium`).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Command that must pass in the worktree before delivery.
    pub verify: String,
    /// Implement/verify rounds (default from config).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Engine overrides per persona.
    #[serde(default)]
    pub engines: Option<EngineOverrides>,
    /// Makes the submission idempotent.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Tasks that must be `done` first.
    #[serde(default)]
    pub deps: Option<Vec<String>>,
    /// `manual` puts an approval gate before delivery (default `auto`).
    #[serde(default)]
    pub review_policy: Option<ReviewPolicy>,
}

/// `POST /v1/tasks`.
pub async fn submit(
    State(app): State<AppState>,
    JsonBody(request): JsonBody<SubmitTaskRequest>,
) -> Result<Response, ApiError> {
    let digest = digest_of(&request)?;
    // A replay answers with the original task even if the repo, the config or the queue changed.
    if let Some(key) = &request.idempotency_key {
        if let Some(original) = app.services.store.idempotent_submission(key)? {
            return answer_replay(&app, original, &digest);
        }
    }
    let task = validate(&app, request).await?;
    let config = &app.services.config.compass;
    if app.services.directory.queue_depth() >= config.max_queued_tasks {
        return Err(ApiError::too_many(
            "QUEUE_FULL",
            format!(
                "the queue holds its limit of {} tasks",
                config.max_queued_tasks
            ),
            QUEUE_FULL_RETRY_AFTER_SECS,
        ));
    }
    let event = NewEvent::new(
        "ingress",
        "task.submitted",
        json!({"title": task.title, "kind": task.kind, "priority": task.priority}),
    );
    let (task, replayed) = match app.services.store.create_task(task, &digest, event).await? {
        Submission::Created(task) => (task, false),
        Submission::Replayed(task) => (task, true),
        Submission::KeyConflict(original) => {
            return Err(ApiError::conflict(
                "IDEMPOTENCY_CONFLICT",
                format!(
                    "idempotency_key was already used for task {original} with a different body"
                ),
            ))
        }
    };
    if !replayed {
        // Durable already: if Compass is down, the next start picks the task up.
        if let Err(error) = app.compass.cast(CompassMsg::TaskSubmitted(task.id)) {
            tracing::error!(%error, task = %task.id, "could not notify compass of a new task");
        }
    }
    Ok(created(task, replayed))
}

/// `201` with the task; a replay says so in `Idempotent-Replayed: true`.
fn created(task: Task, replayed: bool) -> Response {
    let mut headers = HeaderMap::new();
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    (StatusCode::CREATED, headers, Json(task)).into_response()
}

fn answer_replay(
    app: &AppState,
    original: (TaskId, String),
    digest: &str,
) -> Result<Response, ApiError> {
    let (task_id, original_digest) = original;
    if original_digest != digest {
        return Err(key_conflict(task_id));
    }
    let task = app.services.store.task(task_id)?.ok_or_else(|| {
        ApiError::internal(format!("idempotency key names missing task {task_id}"))
    })?;
    Ok(created(task, true))
}

fn key_conflict(original: TaskId) -> ApiError {
    ApiError::conflict(
        "IDEMPOTENCY_CONFLICT",
        format!("idempotency_key was already used for task {original} with a different body"),
    )
}

async fn validate(app: &AppState, request: SubmitTaskRequest) -> Result<Task, ApiError> {
    let config = &app.services.config;
    check_length("title", &request.title, 1, TITLE_BYTES_MAX)?;
    check_length(
        "description",
        &request.description,
        0,
        DESCRIPTION_BYTES_MAX,
    )?;
    check_length("verify", &request.verify, 1, VERIFY_BYTES_MAX)?;
    if let Some(key) = &request.idempotency_key {
        check_length("idempotency_key", key, 1, KEY_BYTES_MAX)?;
    }
    let max_attempts = request
        .max_attempts
        .unwrap_or(config.tasks.default_max_attempts);
    if max_attempts == 0 || max_attempts > config.tasks.max_attempts_limit {
        return Err(ApiError::invalid_field(format!(
            "max_attempts must be between 1 and {}",
            config.tasks.max_attempts_limit
        )));
    }
    let engines = request.engines.unwrap_or_default();
    for (persona, spec) in [("planner", &engines.planner), ("patch", &engines.patch)] {
        if let Some(EngineSpec::Shell { command }) = spec {
            check_length(
                &format!("engines.{persona}.command"),
                command,
                1,
                VERIFY_BYTES_MAX,
            )?;
        }
    }
    let kind = request.kind.unwrap_or_else(|| "feature".to_owned());
    let Some(stages) = config.compass.templates.get(&kind) else {
        let known: Vec<&str> = config
            .compass
            .templates
            .keys()
            .map(String::as_str)
            .collect();
        return Err(ApiError::unprocessable(
            "UNKNOWN_KIND",
            format!("unknown kind `{kind}`; known kinds: {}", known.join(", ")),
        ));
    };
    let base_branch = request.base_branch.unwrap_or_else(|| "main".to_owned());
    check_length("base_branch", &base_branch, 1, TITLE_BYTES_MAX)?;
    check_repository(config.git.timeout(), &request.repo, &base_branch).await?;
    let deps = check_deps(app, request.deps.unwrap_or_default())?;
    let review_policy = request.review_policy.unwrap_or_default();
    let stages = with_review(stages.clone(), review_policy);
    let now = Utc::now();
    Ok(Task {
        id: TaskId::new(),
        title: request.title,
        description: request.description,
        repo: request.repo,
        base_branch,
        kind,
        priority: request.priority.unwrap_or_default(),
        verify: request.verify,
        max_attempts,
        engines,
        idempotency_key: request.idempotency_key,
        status: if deps.is_empty() {
            TaskStatus::Queued
        } else {
            TaskStatus::Blocked
        },
        blocked_by: deps.clone(),
        deps,
        review_policy,
        stage: None,
        stages,
        attempts: 0,
        stage_retries: 0,
        reverifications: 0,
        failures: Vec::new(),
        branch: None,
        commit: None,
        plan: None,
        feedback: None,
        error: None,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
    })
}

/// Dependencies a task may name at most.
const DEPS_MAX: usize = 64;

/// Every dependency must name an existing task; Compass decides whether it still blocks.
fn check_deps(app: &AppState, deps: Vec<String>) -> Result<Vec<TaskId>, ApiError> {
    if deps.len() > DEPS_MAX {
        return Err(ApiError::invalid_field(format!(
            "deps lists more than {DEPS_MAX} tasks"
        )));
    }
    let mut ids = Vec::with_capacity(deps.len());
    for dep in deps {
        let unknown = || {
            ApiError::unprocessable(
                "UNKNOWN_DEPENDENCY",
                format!("deps names unknown task `{dep}`"),
            )
        };
        let id: TaskId = dep.parse().map_err(|_| unknown())?;
        if app.services.store.task(id)?.is_none() {
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

fn check_length(field: &str, value: &str, min: usize, max: usize) -> Result<(), ApiError> {
    if value.trim().len() < min {
        return Err(ApiError::invalid_field(format!(
            "{field} must not be empty"
        )));
    }
    if value.len() > max {
        return Err(ApiError::invalid_field(format!(
            "{field} is longer than {max} bytes"
        )));
    }
    Ok(())
}

async fn check_repository(
    git_timeout: Duration,
    repo: &str,
    base_branch: &str,
) -> Result<(), ApiError> {
    let path = FsPath::new(repo);
    if !path.is_absolute() {
        return Err(ApiError::invalid_field(format!(
            "repo must be an absolute path, got `{repo}`"
        )));
    }
    let git = Git::new(path, git_timeout);
    if !git.is_repository().await {
        return Err(ApiError::unprocessable(
            "NOT_A_GIT_REPOSITORY",
            format!("{repo} is not a git repository"),
        ));
    }
    if !git.branch_exists(base_branch).await {
        return Err(ApiError::unprocessable(
            "UNKNOWN_BASE_BRANCH",
            format!("{repo} has no branch `{base_branch}`"),
        ));
    }
    Ok(())
}

/// What makes two submissions "the same body": the body as sent (after parsing, so key order and
/// whitespace do not matter), independent of config defaults that may change between the two.
fn digest_of(request: &SubmitTaskRequest) -> Result<String, ApiError> {
    let canonical = serde_json::to_vec(request).map_err(ApiError::internal)?;
    Ok(hex::encode(Sha256::digest(&canonical)))
}

/// `GET /v1/tasks`.
pub async fn list(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let tasks = app
        .services
        .store
        .tasks(app.services.config.tasks.list_limit)?;
    Ok(Json(json!({"tasks": tasks})))
}

fn parse_id(app: &AppState, id: &str) -> Result<Task, ApiError> {
    let not_found = || ApiError::not_found("TASK_NOT_FOUND", format!("no task with id `{id}`"));
    let task_id: TaskId = id.parse().map_err(|_| not_found())?;
    app.services.store.task(task_id)?.ok_or_else(not_found)
}

/// `GET /v1/tasks/{id}`.
pub async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    parse_id(&app, &id).map(Json)
}

/// `GET /v1/tasks/{id}/events`.
pub async fn events(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = parse_id(&app, &id)?;
    let events = app.services.store.events(task.id)?;
    Ok(Json(json!({"events": events})))
}

/// `GET /v1/tasks/{id}/runs`.
pub async fn runs(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = parse_id(&app, &id)?;
    let runs = app.services.store.runs(task.id)?;
    Ok(Json(json!({"runs": runs})))
}

/// The optional body of approve and reject.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// The reviewer's note, kept in the event.
    #[serde(default)]
    pub comment: Option<String>,
}

/// Bytes of a review comment kept at most.
const COMMENT_BYTES_MAX: usize = 4096;

fn review_comment(body: &Bytes) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let review: ReviewRequest = super::json::parse(body)?;
    if let Some(comment) = &review.comment {
        check_length("comment", comment, 0, COMMENT_BYTES_MAX)?;
    }
    Ok(review.comment)
}

/// `POST /v1/tasks/{id}/cancel`.
pub async fn cancel(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    act(&app, &id, TaskAction::Cancel).await
}

/// `POST /v1/tasks/{id}/approve` with an optional `{comment}`.
pub async fn approve(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Task>, ApiError> {
    let comment = review_comment(&body)?;
    act(&app, &id, TaskAction::Approve { comment }).await
}

/// `POST /v1/tasks/{id}/reject` with an optional `{comment}`.
pub async fn reject(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Task>, ApiError> {
    let comment = review_comment(&body)?;
    act(&app, &id, TaskAction::Reject { comment }).await
}

/// `POST /v1/tasks/{id}/retry`: re-queue a failed or dead-lettered task.
pub async fn retry(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    act(&app, &id, TaskAction::Retry).await
}

async fn act(app: &AppState, id: &str, action: TaskAction) -> Result<Json<Task>, ApiError> {
    let task_id = parse_id(app, id)?.id;
    let answer = app
        .compass
        .call(
            |reply| CompassMsg::Act {
                task_id,
                action,
                reply,
            },
            Some(COMPASS_CALL_TIMEOUT),
        )
        .await;
    match answer {
        Ok(CallResult::Success(Ok(task))) => Ok(Json(task)),
        Ok(CallResult::Success(Err(error))) => Err(match error {
            TaskActionError::NotFound(_) => ApiError::not_found(error.code(), error.to_string()),
            TaskActionError::WrongStatus { .. } | TaskActionError::Finished(_) => {
                ApiError::conflict(error.code(), error.to_string())
            }
            TaskActionError::Store(_) => ApiError::internal(error),
        }),
        Ok(CallResult::Timeout | CallResult::SenderError) | Err(_) => Err(ApiError::unavailable(
            "COMPASS_UNAVAILABLE",
            "compass did not answer; try again",
        )),
    }
}
