//! `/v1/tasks`: submit (through [`crate::intake`]), list, inspect (record, events, engine runs),
//! and act on tasks (cancel, approve, reject, retry) through Compass.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ractor::rpc::CallResult;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::actors::compass::{CompassMsg, TaskAction};
use crate::actors::transitions::TaskActionError;
use crate::domain::{Task, TaskId, TaskStatus};
use crate::intake::{self, IntakeError, SubmitTaskRequest};
use crate::ledger::LedgerError;
use crate::metering;

/// How long a cancel may wait for Compass.
const COMPASS_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// What `Retry-After` says when the queue is full.
const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 5;

/// `POST /v1/tasks`: 201 with the task (also for an idempotent replay, marked by the header
/// `Idempotent-Replayed: true`).
pub async fn submit(
    State(app): State<AppState>,
    JsonBody(request): JsonBody<SubmitTaskRequest>,
) -> Result<Response, ApiError> {
    let accepted = intake::submit(&app.services, &app.compass, request)
        .await
        .map_err(intake_error)?;
    let mut headers = HeaderMap::new();
    if accepted.replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok((StatusCode::CREATED, headers, Json(accepted.task)).into_response())
}

fn intake_error(error: IntakeError) -> ApiError {
    let (code, message) = (error.code(), error.to_string());
    match error {
        IntakeError::InvalidField(_) | IntakeError::Unknown { .. } => {
            ApiError::unprocessable(code, message)
        }
        IntakeError::QueueFull(_) => ApiError::too_many(code, message, QUEUE_FULL_RETRY_AFTER_SECS),
        IntakeError::IdempotencyConflict(_) => ApiError::conflict(code, message),
        IntakeError::InsufficientFunds(_) => {
            ApiError::new(StatusCode::PAYMENT_REQUIRED, code, message)
        }
        IntakeError::Ledger(LedgerError::Unavailable(_)) => ApiError::unavailable(code, message),
        IntakeError::Ledger(LedgerError::InvalidField(_)) => ApiError::unprocessable(code, message),
        IntakeError::Ledger(inner) => ApiError::internal(inner),
        IntakeError::Store(inner) => ApiError::internal(inner),
    }
}

/// `GET /v1/tasks?limit=&cursor=`: newest first, a page at a time.
pub async fn list(
    State(app): State<AppState>,
    Query(query): Query<ListQuery>,
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
    let (tasks, next) = app.services.store.tasks_page(limit, before)?;
    Ok(Json(json!({"tasks": tasks, "next_cursor": next})))
}

/// `?limit=&cursor=` of `GET /v1/tasks`, read as text so a bad value gets the JSON error shape.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Tasks per page (default and at most `tasks.list_limit`).
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
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
        if comment.len() > COMMENT_BYTES_MAX {
            return Err(ApiError::invalid_field(format!(
                "comment is longer than {COMMENT_BYTES_MAX} bytes"
            )));
        }
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

/// `POST /v1/tasks/{id}/retry`: re-queue a failed or dead-lettered task. Its budget is reserved
/// again first (402 when the account cannot cover it).
pub async fn retry(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    let task = parse_id(&app, &id)?;
    let retryable = matches!(task.status, TaskStatus::Failed | TaskStatus::DeadLetter);
    let reservation = if retryable {
        Some(reserve_again(&app, &task).await?)
    } else {
        None
    };
    let outcome = act(
        &app,
        &id,
        TaskAction::Retry {
            reservation: reservation.clone(),
        },
    )
    .await;
    if let (Err(_), Some(reservation)) = (&outcome, &reservation) {
        metering::release(&app.services.directory, reservation).await;
    }
    outcome
}

/// Settles the last round (if its settlement has not run yet) and reserves the next one.
async fn reserve_again(app: &AppState, task: &Task) -> Result<String, ApiError> {
    let directory = &app.services.directory;
    if !task.settled {
        match metering::settle(&app.services, task).await {
            // Settled concurrently by Compass: fine.
            Ok(()) | Err(LedgerError::TransferNotPending { .. }) => {}
            Err(error) => return Err(ledger_error(error)),
        }
    }
    metering::reserve(directory, task, task.budget_rounds + 1)
        .await
        .map_err(ledger_error)
}

fn ledger_error(error: LedgerError) -> ApiError {
    intake_error(IntakeError::from(error))
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
