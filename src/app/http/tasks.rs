//! `/v1/tasks`: submit (through [`crate::work::intake`]), list, inspect (record, events, engine runs),
//! and act on tasks (cancel, approve, reject, retry) through Compass.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ractor::rpc::CallResult;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::auth::{audit_of_created, AuditWritten};
use super::error::describe;
use super::error::{ApiError, ErrorBody};
use super::json::{JsonBody, QueryParams, RawBody};
use super::AppState;
use crate::model::auth::{Permission, Principal};
use crate::model::codes;
use crate::model::errors::TaskActionError;
use crate::model::ledger::LedgerError;
use crate::model::task::{branch_name, Delivery, RetryFrom, Stage, Task, TaskId, TaskStatus};
use crate::platform::git::Git;
use crate::runtime::compass::{CompassMsg, TaskAction};
use crate::work::intake::{self, IntakeError, SubmitTaskRequest};
use crate::work::metering;

/// How long a cancel may wait for Compass.
const COMPASS_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// What `Retry-After` says when the queue is full.
const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 5;
/// Seconds a submission refused while the queue loads after a start is told to wait.
const NOT_READY_RETRY_AFTER_SECS: u64 = 1;

/// `POST /v1/tasks`: 201 with the task (also for an idempotent replay, marked by the header
/// `Idempotent-Replayed: true`).
#[utoipa::path(
    post,
    path = "/v1/tasks",
    operation_id = "submit_task",
    tag = "tasks",
    request_body = SubmitTaskRequest,
    responses(
        (status = 201, description = "The task, durable. An idempotent replay answers the original \
            task's current state with `idempotent-replayed: true`.", body = Task,
            headers(("idempotent-replayed" = String, description = "`true` on a replay"))),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 402, description = "`INSUFFICIENT_FUNDS`: the paying account cannot cover the \
            budget; no task is created.", body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_CONFLICT`: the key was used with a different \
            body.", body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD` (a body that is not an object, \
            missing/unknown field, wrong type, bad length, a control character, relative `repo`, \
            a `base_branch` that is not a branch name, `max_attempts` out of range), \
            `NOT_A_GIT_REPOSITORY`, `NOT_A_WORK_TREE` (bare, or inside `.git`), \
            `UNKNOWN_BASE_BRANCH`, `UNKNOWN_KIND`, `UNKNOWN_DEPENDENCY`, `UNKNOWN_APP`, \
            `UNKNOWN_PROVIDER`, `ACCOUNT_NOT_FOUND`, `RESERVED_ACCOUNT` (`system:`, `agent:`, \
            `task:`).", body = ErrorBody),
        (status = 429, description = "`QUEUE_FULL`: `compass.max_queued_tasks` tasks wait.",
            body = ErrorBody, headers(("retry-after" = u64, description = "Seconds (5)."))),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = "`PERSONA_UNAVAILABLE`: the Ledger did not answer the \
            budget reservation. `NOT_READY`: the queue is not loaded yet after a start. \
            `STORAGE_FAILED`: the disk refused the write.", body = ErrorBody),
        (status = 507, description = "`STORAGE_FULL`: the disk is full, or the storage reserve \
            is in use; nothing was written.", body = ErrorBody),
    )
)]
pub(crate) async fn submit(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    route: MatchedPath,
    uri: Uri,
    JsonBody(request): JsonBody<SubmitTaskRequest>,
) -> Result<Response, ApiError> {
    // The audit line rides in the task's own write (one group commit); the ingress writes it
    // only for a replay, which stores nothing.
    let audit = audit_of_created(&caller, &route, &uri);
    let accepted = intake::submit_audited(
        &app.services,
        &app.compass,
        request,
        Some(&caller),
        Some(audit),
    )
    .await
    .map_err(intake_error)?;
    let mut headers = HeaderMap::new();
    if accepted.replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    let mut response = (StatusCode::CREATED, headers, Json(accepted.task)).into_response();
    if !accepted.replayed {
        response.extensions_mut().insert(AuditWritten);
    }
    Ok(response)
}

fn intake_error(error: IntakeError) -> ApiError {
    let (code, message) = (error.code(), error.to_string());
    match error {
        IntakeError::InvalidField(_) | IntakeError::Unknown { .. } => {
            ApiError::unprocessable(code, message)
        }
        IntakeError::QueueFull(_) => ApiError::too_many(code, message, QUEUE_FULL_RETRY_AFTER_SECS),
        IntakeError::NotReady => {
            ApiError::unavailable(code, message).retry_after(NOT_READY_RETRY_AFTER_SECS)
        }
        IntakeError::IdempotencyConflict(_) => ApiError::conflict(code, message),
        IntakeError::InsufficientFunds(_) => {
            ApiError::new(StatusCode::PAYMENT_REQUIRED, code, message)
        }
        IntakeError::Ledger(LedgerError::Unavailable(_)) => ApiError::unavailable(code, message),
        IntakeError::Ledger(LedgerError::InvalidField(_)) => ApiError::unprocessable(code, message),
        // A busy or slow store is 503 with `Retry-After`; anything else is internal.
        IntakeError::Ledger(inner) => inner.into(),
        IntakeError::Store(inner) => inner.into(),
        IntakeError::Forbidden { code, .. } => ApiError::new(StatusCode::FORBIDDEN, code, message),
    }
}

/// `GET /v1/tasks?limit=&cursor=&status=&repo=&kind=&source=`: newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    operation_id = "list_tasks",
    tag = "tasks",
    params(
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000,
            description = "Tasks per page, 1..=`tasks.list_limit` (default and at most 1000)."),
        ("cursor" = Option<String>, Query,
            description = "The `next_cursor` of the previous page."),
        ("status" = Option<TaskStatus>, Query, description = "Only tasks in this status."),
        ("repo" = Option<String>, Query, description = "Only tasks on this repository (its \
            canonical path, as stored)."),
        ("kind" = Option<String>, Query, description = "Only tasks of this kind."),
        ("source" = Option<String>, Query, description = "Only tasks glitchlab took in from \
            elsewhere: `github` (any GitHub source) or a `source.kind` (`github_issue`)."),
    ),
    responses(
        (status = 200, description = "`{\"tasks\": [Task, …], \"next_cursor\": task id | null}`, \
            newest first; `next_cursor` is `null` on the last page.", body = Object),
        (status = 422, description = "`INVALID_FIELD`: bad `limit`, `cursor` or `status`, or an \
            unknown query parameter.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(app): State<AppState>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let max = app.services.config.tasks.list_limit;
    let limit = match query.limit.as_deref() {
        None => max,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::invalid_field(format!("limit must be within 1..={max}")))?,
    };
    let before = match query.cursor.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<TaskId>().map_err(|_| {
            ApiError::invalid_field("cursor must be a `next_cursor` of an earlier page")
        })?),
    };
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(
            serde_json::from_value::<TaskStatus>(json!(text))
                .map_err(|_| ApiError::invalid_field(format!("status: unknown status `{text}`")))?,
        ),
    };
    let (repo, kind, source) = (query.repo, query.kind, query.source);
    let keep = move |task: &Task| {
        status.is_none_or(|s| s == task.progress.status)
            && repo.as_ref().is_none_or(|r| *r == task.spec.repo)
            && kind.as_ref().is_none_or(|k| *k == task.spec.kind)
            && source.as_ref().is_none_or(|wanted| {
                task.spec
                    .source
                    .as_ref()
                    .is_some_and(|s| s.kind == *wanted || s.kind.starts_with(&format!("{wanted}_")))
            })
    };
    let (tasks, next) = app.services.store.tasks_page(limit, before, keep).await?;
    Ok(Json(json!({"tasks": tasks, "next_cursor": next})))
}

/// The query of `GET /v1/tasks`, read as text so a bad value gets the JSON error shape; an
/// unknown parameter is refused, not ignored (a typo would otherwise list everything).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Tasks per page (default and at most `tasks.list_limit`).
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only tasks in this status.
    status: Option<String>,
    /// Only tasks on this repository.
    repo: Option<String>,
    /// Only tasks of this kind.
    kind: Option<String>,
    /// Only tasks from this source (`github`, or a `source.kind`).
    source: Option<String>,
}

async fn parse_id(app: &AppState, id: &str) -> Result<Task, ApiError> {
    let not_found =
        || ApiError::not_found(codes::TASK_NOT_FOUND, format!("no task with id `{id}`"));
    let task_id: TaskId = id.parse().map_err(|_| not_found())?;
    app.services
        .store
        .task(task_id)
        .await?
        .ok_or_else(not_found)
}

/// `GET /v1/tasks/{id}`.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    operation_id = "get_task",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (a UUID).")),
    responses(
        (status = 200, description = "The task.", body = Task),
        (status = 404, description = describe::TASK_NOT_FOUND, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    let mut task = parse_id(&app, &id).await?;
    app.services.merge_lines.fill(&mut task);
    Ok(Json(task))
}

/// `GET /v1/tasks/{id}/events`.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/events",
    operation_id = "task_events",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (a UUID).")),
    responses(
        (status = 200, description = "`{\"events\": [Event, …]}`: the task's log in `seq` order.",
            body = Object),
        (status = 404, description = describe::TASK_NOT_FOUND, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn events(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = parse_id(&app, &id).await?;
    let events = app.services.store.events(task.id).await?;
    Ok(Json(json!({"events": events})))
}

/// `GET /v1/tasks/{id}/runs`.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/runs",
    operation_id = "task_runs",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (a UUID).")),
    responses(
        (status = 200, description = "`{\"runs\": [EngineRun, …]}`, oldest first.", body = Object),
        (status = 404, description = describe::TASK_NOT_FOUND, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn runs(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = parse_id(&app, &id).await?;
    let runs = app.services.store.runs(task.id).await?;
    Ok(Json(json!({"runs": runs})))
}

/// The optional body of approve and reject.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewRequest {
    /// The reviewer's note, kept in the event; at most 4096 bytes (`COMMENT_BYTES_MAX`).
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub comment: Option<String>,
}

/// The optional body of retry.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryRequest {
    /// `implement`: a fresh round of attempts; `deliver`: the branch as it is now goes to the
    /// merge queue (verified on the current base before it may land). Absent: where the failure
    /// says.
    #[serde(default)]
    pub from: Option<RetryFrom>,
}

/// Bytes of a review comment kept at most.
const COMMENT_BYTES_MAX: usize = 4096;

fn review_comment(body: &Bytes) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let review: ReviewRequest = super::json::parse(body)?;
    if let Some(comment) = &review.comment {
        if comment.len() > COMMENT_BYTES_MAX {
            return Err(ApiError::invalid_field(format!(
                "comment is longer than {COMMENT_BYTES_MAX} bytes"
            )));
        }
    }
    Ok(review.comment)
}

/// `POST /v1/tasks/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/cancel",
    operation_id = "cancel_task",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (a UUID).")),
    responses(
        (status = 200, description = "The task, `cancelled`.", body = Task),
        (status = 404, description = describe::TASK_NOT_FOUND, body = ErrorBody),
        (status = 409, description = "`TASK_FINISHED`: the task already ended; `TASK_LANDING`: \
            the merge queue is putting its change on the base now (too late to cancel).", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::COMPASS_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn cancel(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    act(&app, &caller, &id, TaskAction::Cancel).await
}

/// `POST /v1/tasks/{id}/approve` with an optional `{comment}`.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/approve",
    operation_id = "approve_task",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (a UUID).")),
    request_body(content = Option<ReviewRequest>, description = "Optional; may be empty."),
    responses(
        (status = 200, description = "The task, queued again at the stage after the gate.",
            body = Task),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 404, description = describe::TASK_NOT_FOUND, body = ErrorBody),
        (status = 409, description = describe::INVALID_TASK_STATUS_GATE, body = ErrorBody),
        (status = 422, description = describe::INVALID_COMMENT, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::COMPASS_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn approve(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Task>, ApiError> {
    let comment = review_comment(&body)?;
    act(&app, &caller, &id, TaskAction::Approve { comment }).await
}

/// `POST /v1/tasks/{id}/reject` with an optional `{comment}`.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/reject",
    operation_id = "reject_task",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (a UUID).")),
    request_body(content = Option<ReviewRequest>, description = "Optional; may be empty."),
    responses(
        (status = 200, description = "The task, `cancelled`.", body = Task),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 404, description = describe::TASK_NOT_FOUND, body = ErrorBody),
        (status = 409, description = describe::INVALID_TASK_STATUS_GATE, body = ErrorBody),
        (status = 422, description = describe::INVALID_COMMENT, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::COMPASS_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn reject(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Task>, ApiError> {
    let comment = review_comment(&body)?;
    act(&app, &caller, &id, TaskAction::Reject { comment }).await
}

/// `POST /v1/tasks/{id}/retry`: re-queue a failed or dead-lettered task. Its budget is reserved
/// again first (402 when the account cannot cover it).
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/retry",
    operation_id = "retry_task",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (a UUID).")),
    request_body(content = Option<RetryRequest>, description = "Optional: where to start again."),
    responses(
        (status = 200, description = "The task, queued again.", body = Task),
        (status = 402, description = "`INSUFFICIENT_FUNDS`: the account cannot cover another \
            budget round.", body = ErrorBody),
        (status = 404, description = describe::TASK_NOT_FOUND, body = ErrorBody),
        (status = 409, description = "`INVALID_TASK_STATUS`: the task is not `failed` or \
            `dead_letter`.", body = ErrorBody),
        (status = 400, description = "`INVALID_JSON`: the body is not JSON.", body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: `from` is not `implement` or `deliver`, \
            or `deliver` for a task with no branch or no deliver stage.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = "`COMPASS_UNAVAILABLE`, or `PERSONA_UNAVAILABLE` (the Ledger \
            did not answer the reservation).", body = ErrorBody),
    )
)]
pub(crate) async fn retry(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Task>, ApiError> {
    let from = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        super::json::parse::<RetryRequest>(&body)?.from
    };
    let task = parse_id(&app, &id).await?;
    check_own(&caller, &task)?;
    if from == Some(RetryFrom::Deliver) {
        check_deliverable(&app, &task).await?;
    }
    let retryable = matches!(
        task.progress.status,
        TaskStatus::Failed | TaskStatus::DeadLetter
    );
    let reservation = if retryable {
        Some(reserve_again(&app, &task).await?)
    } else {
        None
    };
    let outcome = act(
        &app,
        &caller,
        &id,
        TaskAction::Retry {
            reservation: reservation.clone(),
            from,
        },
    )
    .await;
    if let (Err(_), Some(reservation)) = (&outcome, &reservation) {
        metering::release(&app.services.directory, reservation).await;
    }
    outcome
}

/// A retry `from: deliver` needs a deliver stage and a branch to deliver.
async fn check_deliverable(app: &AppState, task: &Task) -> Result<(), ApiError> {
    if !task.spec.stages.contains(&Stage::Deliver) || task.spec.delivery != Delivery::Merge {
        return Err(ApiError::invalid_field(
            "from: deliver needs a task whose template has a deliver stage and whose delivery is \
             merge",
        ));
    }
    let repo = Git::new(
        app.services.repo_dir(&task.spec.repo),
        app.services.config.git.timeout(),
    );
    if !repo.branch_exists(&branch_name(task.id)).await {
        return Err(ApiError::invalid_field(format!(
            "from: deliver needs the task's branch {}, which does not exist",
            branch_name(task.id)
        )));
    }
    Ok(())
}

/// Settles the last round (if its settlement has not run yet) and reserves the next one.
async fn reserve_again(app: &AppState, task: &Task) -> Result<String, ApiError> {
    let directory = &app.services.directory;
    if !task.billing.settled {
        match metering::settle(&app.services, task).await {
            // Settled concurrently by Compass: fine.
            Ok(()) | Err(LedgerError::TransferNotPending { .. }) => {}
            Err(error) => return Err(ledger_error(error)),
        }
    }
    metering::reserve(directory, task, task.billing.budget_rounds + 1)
        .await
        .map_err(ledger_error)
}

fn ledger_error(error: LedgerError) -> ApiError {
    intake_error(IntakeError::from(error))
}

/// Maps Compass's refusal of a task action to its answer: unknown 404, wrong status 409.
fn action_error(error: TaskActionError) -> ApiError {
    match error {
        TaskActionError::NotFound(_) => ApiError::not_found(error.code(), error.to_string()),
        TaskActionError::WrongStatus { .. }
        | TaskActionError::Finished(_)
        | TaskActionError::Landing(_) => ApiError::conflict(error.code(), error.to_string()),
        TaskActionError::Store(inner) => inner.into(),
    }
}

/// Cancel and retry: a submitter acts on its own tasks only; an operator (or above) on any.
fn check_own(caller: &Principal, task: &Task) -> Result<(), ApiError> {
    if caller.may(Permission::ActOnAnyTask)
        || task.spec.submitted_by.as_deref() == Some(&caller.name)
    {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        codes::NOT_OWN_TASK,
        format!(
            "token `{}` may cancel and retry only the tasks it submitted",
            caller.name
        ),
    ))
}

async fn act(
    app: &AppState,
    caller: &Principal,
    id: &str,
    action: TaskAction,
) -> Result<Json<Task>, ApiError> {
    let task = parse_id(app, id).await?;
    if matches!(action, TaskAction::Cancel | TaskAction::Retry { .. }) {
        check_own(caller, &task)?;
    }
    let task_id = task.id;
    let by = Some(caller.name.clone());
    let answer = app
        .compass
        .call(
            |reply| CompassMsg::Act {
                task_id,
                action,
                by,
                reply,
            },
            Some(COMPASS_CALL_TIMEOUT),
        )
        .await;
    match answer {
        Ok(CallResult::Success(Ok(task))) => Ok(Json(task)),
        Ok(CallResult::Success(Err(error))) => Err(action_error(error)),
        Ok(CallResult::Timeout | CallResult::SenderError) | Err(_) => Err(ApiError::unavailable(
            codes::COMPASS_UNAVAILABLE,
            "compass did not answer; try again",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{action_error, intake_error};
    use crate::model::codes;
    use crate::model::errors::{StoreError, TaskActionError};
    use crate::model::ledger::LedgerError;
    use crate::model::task::{TaskId, TaskStatus};
    use crate::work::intake::IntakeError;

    /// Every refusal of a submission is answered with a status the catalogue gives its code.
    #[test]
    fn every_intake_error_is_answered_as_catalogued() {
        let text = || "x".to_owned();
        let unknown = |code| IntakeError::Unknown {
            code,
            message: text(),
        };
        let errors = [
            IntakeError::InvalidField(text()),
            unknown(codes::NOT_A_GIT_REPOSITORY),
            unknown(codes::NOT_A_WORK_TREE),
            unknown(codes::RESERVED_ACCOUNT),
            unknown(codes::UNKNOWN_BASE_BRANCH),
            unknown(codes::UNKNOWN_KIND),
            unknown(codes::UNKNOWN_PROVIDER),
            unknown(codes::UNKNOWN_DEPENDENCY),
            unknown(codes::UNKNOWN_APP),
            IntakeError::from(LedgerError::AccountNotFound(text())),
            IntakeError::QueueFull(1),
            IntakeError::IdempotencyConflict(TaskId::new()),
            IntakeError::from(LedgerError::InsufficientFunds {
                account: text(),
                available: 0,
                amount: 1,
            }),
            IntakeError::from(LedgerError::Unavailable(text())),
            IntakeError::from(LedgerError::InvalidField(text())),
            IntakeError::from(LedgerError::TransferExists(text())),
            IntakeError::Store(StoreError::Busy),
            IntakeError::Store(StoreError::AnswerTimeout(std::time::Duration::from_secs(5))),
            IntakeError::Store(StoreError::Closed),
            IntakeError::Store(StoreError::Full(text())),
            IntakeError::Store(StoreError::Failed(text())),
            IntakeError::NotReady,
        ];
        for error in errors {
            intake_error(error).assert_catalogued();
        }
    }

    /// Every refusal of a task action is answered with a status the catalogue gives its code.
    #[test]
    fn every_task_action_error_is_answered_as_catalogued() {
        let errors = [
            TaskActionError::NotFound(TaskId::new()),
            TaskActionError::WrongStatus {
                id: TaskId::new(),
                status: TaskStatus::Done,
                expected: "failed",
            },
            TaskActionError::Finished(TaskId::new()),
            TaskActionError::Store(StoreError::Busy),
            TaskActionError::Store(StoreError::Closed),
            TaskActionError::Store(StoreError::Full("no space left on device".into())),
        ];
        for error in errors {
            action_error(error).assert_catalogued();
        }
    }

    /// The document states the comment limit the code checks.
    #[test]
    fn the_document_states_the_comment_limit() {
        use utoipa::OpenApi;
        let document = serde_json::to_value(crate::app::http::openapi::ApiDoc::openapi())
            .expect("the document serializes");
        let comment = &document["components"]["schemas"]["ReviewRequest"]["properties"]["comment"];
        assert_eq!(comment["maxLength"], super::COMMENT_BYTES_MAX);
    }
}
