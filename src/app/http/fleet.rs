//! The fleet at the ingress: `GET /v1/fleet` (factories, what waits and why, the kill switch)
//! and `POST /v1/fleet/pause` / `resume` (stop and restart all claiming, fleet-wide).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::error::{describe, ApiError, ErrorBody};
use super::AppState;
use crate::model::codes;
use crate::runtime::fleet::Fleet;

/// `GET /v1/fleet`.
#[utoipa::path(
    get,
    path = "/v1/fleet",
    tag = "fleet",
    responses(
        (status = 200, description = "`{\"configured\": bool, \"paused\": bool, \"factories\": \
            [FactoryRecord, …], \"waiting\": [{job_id, task_id, capabilities, since, reason}, …]}`: \
            the registered factories (name, capabilities, slots, running jobs, last heartbeat) and \
            the jobs no factory has claimed, with why (`no factory with has:gpu`). Without \
            `[fleet]`: `configured: false` and nothing else.", body = Object),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = "`FLEET_UNAVAILABLE`: NATS did not answer.", body = ErrorBody),
    )
)]
pub(crate) async fn fleet(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let Some(fleet) = app.services.fleet.as_ref() else {
        return Ok(Json(
            json!({"configured": false, "paused": false, "factories": [], "waiting": []}),
        ));
    };
    let factories = fleet.factories().await.map_err(unavailable)?;
    let paused = fleet.paused().await.map_err(unavailable)?;
    let waiting = fleet.unclaimed(&factories);
    Ok(Json(json!({
        "configured": true,
        "paused": paused,
        "factories": factories,
        "waiting": waiting,
    })))
}

/// `POST /v1/fleet/pause`: the kill switch.
#[utoipa::path(
    post,
    path = "/v1/fleet/pause",
    tag = "fleet",
    responses(
        (status = 200, description = "`{\"paused\": true}`: no factory claims a job until \
            resumed; running jobs finish.", body = Object),
        (status = 409, description = "`FLEET_NOT_CONFIGURED`: no `[fleet]`.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = "`FLEET_UNAVAILABLE`: NATS did not answer.", body = ErrorBody),
    )
)]
pub(crate) async fn pause(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    switch(&app, true).await
}

/// `POST /v1/fleet/resume`.
#[utoipa::path(
    post,
    path = "/v1/fleet/resume",
    tag = "fleet",
    responses(
        (status = 200, description = "`{\"paused\": false}`: factories claim jobs again.",
            body = Object),
        (status = 409, description = "`FLEET_NOT_CONFIGURED`: no `[fleet]`.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = "`FLEET_UNAVAILABLE`: NATS did not answer.", body = ErrorBody),
    )
)]
pub(crate) async fn resume(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    switch(&app, false).await
}

async fn switch(app: &AppState, paused: bool) -> Result<Json<Value>, ApiError> {
    let fleet: &Fleet = app.services.fleet.as_deref().ok_or_else(|| {
        ApiError::conflict(
            codes::FLEET_NOT_CONFIGURED,
            "this service has no [fleet]: everything runs in-process",
        )
    })?;
    fleet.set_paused(paused).await.map_err(unavailable)?;
    tracing::warn!(paused, "fleet claiming switched");
    Ok(Json(json!({"paused": paused})))
}

fn unavailable(error: crate::platform::nats::NatsError) -> ApiError {
    ApiError::unavailable(codes::FLEET_UNAVAILABLE, error.to_string())
}
