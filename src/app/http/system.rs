//! Liveness, readiness and the live supervision tree.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ractor::rpc::CallResult;
use serde_json::json;

use super::error::describe;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::actors::circuit::CircuitMsg;
use crate::actors::patch::PatchMsg;
use crate::actors::planner::PlannerMsg;
use crate::actors::uplink_watch::UplinkWatchMsg;
use crate::model::codes;
use crate::model::persona::Persona;
use crate::model::task::TaskId;
use crate::runtime::compass::CompassMsg;
use crate::runtime::directory::{ActorDirectory, PersonaMailbox};
use crate::runtime::ledger::LedgerMsg;
use crate::runtime::uplink_deploy::UplinkDeployMsg;
use crate::runtime::uplink_respond::UplinkRespondMsg;
use crate::storage::store::Store;

/// `GET /healthz`: the process is up and answering.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    responses((status = 200, description = "`{\"status\": \"ok\"}` while the process answers.",
        body = Object)),
)]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The content type of the Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// `GET /metrics`: every metric in the Prometheus text format, for a scraper; 503 if this
/// process has no recorder (another one held the global slot).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses(
        (status = 200, description = "Every metric in the Prometheus text exposition format \
            (see docs/operations.md, Metrics).", body = String,
            content_type = "text/plain; version=0.0.4"),
        (status = 503, description = "`METRICS_UNAVAILABLE`: this process has no metrics \
            recorder.", body = ErrorBody),
    )
)]
pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    publish_store_counts(&app.services.store);
    match crate::platform::metrics::render() {
        Some(text) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::METRICS_UNAVAILABLE,
            "no metrics recorder is installed in this process",
        )
        .into_response(),
    }
}

/// Copies what the store counted (it reports to no one) into the metrics about to be rendered.
fn publish_store_counts(store: &Store) {
    let health = store.writer_health();
    crate::platform::metrics::store_writer(
        health.stalled(),
        store.write_queue_depth(),
        health.groups(),
        health.jobs(),
    );
    let fault = health.intake_error();
    crate::platform::metrics::store_fault(
        matches!(fault, Some(crate::storage::store::StoreError::Full(_))),
        matches!(fault, Some(crate::storage::store::StoreError::Failed(_))),
    );
    // A status no task reached yet stays out of the exposition, as an untouched counter does.
    for (status, total) in health.tasks_finished() {
        if total > 0 {
            crate::platform::metrics::tasks_finished(status, total);
        }
    }
}

/// One line per red base: ready, but a repository's merge queue holds.
fn base_red_warnings(app: &AppState) -> Vec<String> {
    app.services
        .base_health
        .red()
        .into_iter()
        .map(|red| {
            format!(
                "base_red: {} {} at {} fails `{}`; its merge queue holds",
                red.repo, red.branch, red.commit, red.command
            )
        })
        .collect()
}

/// `GET /readyz`: the root and every persona are running and the store writer moves; otherwise
/// 503 naming what is not. Reads no storage: the writer's health is lock-free.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "system",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`: Compass and every persona are \
            `running`; `warnings: [\"base_red: …\"]` when a merge queue holds for a red base.", body = Object),
        (status = 503, description = "`{\"status\": \"not_ready\", \"error\": {\"code\": \
            \"NOT_READY\", \"message\"}, \"actors\": [ActorEntry, …]}` naming the actors that are \
            not running, `storage (…)` when the store writer is stalled or the disk is full or \
            failing (with the cause), and `queue (loading)` until Compass has loaded the queue \
            after a start.", body = Object),
    )
)]
pub(crate) async fn readyz(State(app): State<AppState>) -> Response {
    let not_ready = app.services.directory.not_ready();
    let health = app.services.store.writer_health();
    let storage = storage_problem(health);
    let loaded = app
        .services
        .directory
        .wait_queue_loaded(READY_PING_TIMEOUT)
        .await;
    let queue = (!loaded).then(|| "queue (loading)".to_owned());
    let silent = unanswered(&app.services.directory).await;
    if not_ready.is_empty() && storage.is_none() && queue.is_none() && silent.is_empty() {
        let warnings = base_red_warnings(&app);
        if warnings.is_empty() {
            return Json(json!({"status": "ready"})).into_response();
        }
        return Json(json!({"status": "ready", "warnings": warnings})).into_response();
    }
    let silent = silent.into_iter().map(|persona| {
        format!("{persona} (running, but did not answer a ping within {READY_PING_TIMEOUT:?})")
    });
    let names: Vec<String> = not_ready
        .iter()
        .map(|entry| {
            format!(
                "{} ({})",
                entry.name,
                serde_json::to_value(entry.status)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("unknown")
            )
        })
        .chain(storage)
        .chain(queue)
        .chain(silent)
        .collect();
    let body = json!({
        "status": "not_ready",
        "error": {"code": codes::NOT_READY, "message": format!("not ready: {}", names.join(", "))},
        "actors": not_ready,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// What `/readyz` says of the store when it is not fit for work: a stalled writer, a disk fault
/// (with what the disk said), or the reserve in use (intake refused).
fn storage_problem(health: &crate::storage::store::WriterHealth) -> Option<String> {
    if health.stalled() {
        return Some("storage (writer stalled)".to_owned());
    }
    match health.intake_error() {
        Some(crate::storage::store::StoreError::Failed(message)) => {
            Some(format!("storage (failed: {message})"))
        }
        Some(crate::storage::store::StoreError::Full(message)) => {
            Some(format!("storage (full: {message})"))
        }
        Some(error) => Some(format!("storage ({error})")),
        None => None,
    }
}

/// How long a running persona has to answer `/readyz`'s ping through its mailbox.
const READY_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The running personas that did not answer a ping through their mailbox in time: running by
/// their supervisor's account, yet wedged (a handler stuck on something). Asked all at once.
async fn unanswered(directory: &ActorDirectory) -> Vec<Persona> {
    let answers = tokio::join!(
        answers::<CompassMsg>(directory),
        answers::<LedgerMsg>(directory),
        answers::<PlannerMsg>(directory),
        answers::<PatchMsg>(directory),
        answers::<CircuitMsg>(directory),
        answers::<UplinkDeployMsg>(directory),
        answers::<UplinkWatchMsg>(directory),
        answers::<UplinkRespondMsg>(directory),
    );
    [
        answers.0, answers.1, answers.2, answers.3, answers.4, answers.5, answers.6, answers.7,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `Some(persona)` when the persona reading `M` runs but does not answer a ping in time; `None`
/// when it answers, or is not running (its supervisor's status says so already).
async fn answers<M: PersonaMailbox>(directory: &ActorDirectory) -> Option<Persona> {
    let actor = directory.persona::<M>(Duration::ZERO, None).await.ok()?;
    match actor.call(M::ping, Some(READY_PING_TIMEOUT)).await {
        Ok(CallResult::Success(())) => None,
        // Stopped between the lookup and the ping: the directory reports it on the next look.
        Ok(CallResult::SenderError) | Err(_) => None,
        Ok(CallResult::Timeout) => Some(M::PERSONA),
    }
}

/// `GET /v1/actors`: every actor of the tree with its parent, health and restart count.
#[utoipa::path(
    get,
    path = "/v1/actors",
    operation_id = "list_actors",
    tag = "system",
    responses((status = 200, description = "`{\"actors\": [ActorEntry, …]}`: the live tree, \
        sorted by name.", body = Object)),
)]
pub(crate) async fn actors(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"actors": app.services.directory.snapshot()}))
}

/// Service-wide events returned at most (the newest).
const SERVICE_EVENTS_MAX: usize = 1000;

/// `GET /v1/events`: the service-wide log (persona crashes, restarts and give-ups), latest last.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "system",
    responses(
        (status = 200, description = "`{\"events\": [Event, …]}`: the service-wide log (persona \
            crashes, restarts, give-ups), the newest 1000, oldest first.", body = Object),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn service_events(
    State(app): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let events = app
        .services
        .store
        .recent_events(TaskId::service(), SERVICE_EVENTS_MAX)
        .await?;
    Ok(Json(json!({"events": events})))
}

/// `GET /v1/personas`: every persona's definition as loaded (engine, allowlist, env names —
/// names only, never values), so an operator can see what each may do.
#[utoipa::path(
    get,
    path = "/v1/personas",
    operation_id = "list_personas",
    tag = "system",
    responses((status = 200, description = "`{\"personas\": [{name, role, engine, model, \
        timeout_secs, max_attempts, tools, env, budget, source}, …]}`: every persona's definition \
        as loaded (env names only, never values).", body = Object)),
)]
pub(crate) async fn personas(State(app): State<AppState>) -> Json<serde_json::Value> {
    let personas: Vec<serde_json::Value> = app
        .services
        .definitions
        .personas
        .values()
        .map(|persona| {
            let front = &persona.front;
            json!({
                "name": front.name,
                "role": front.role,
                "engine": front.engine,
                "model": front.model,
                "timeout_secs": front.timeout_secs,
                "max_attempts": front.max_attempts,
                "tools": front.tools,
                "env": front.env,
                "budget": front.budget,
                "source": persona.source,
            })
        })
        .collect();
    Json(json!({"personas": personas}))
}
