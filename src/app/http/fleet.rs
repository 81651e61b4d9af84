//! The fleet at the ingress: `GET /v1/fleet` (factories, their health, what waits and why, the
//! kill switch), `POST /v1/fleet/pause` / `resume` (hold and release every job start, fleet-wide
//! and in-process: the job gate, `runtime::jobs::hold`)
//! and `POST /v1/fleet/factories/{name}/drain|pause|resume` (one factory). Every change is
//! audited with its principal (the ingress's audit layer) and is the control plane's state.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::{describe, ApiError, ErrorBody};
use super::AppState;
use crate::model::codes;
use crate::runtime::fleet::control::FactoryMode;
use crate::runtime::fleet::{Fleet, SwitchError, WaitingJob};
use crate::work::fleet_run::waiting::PAUSED;

/// Characters of a factory's name at most (its key in the registry bucket).
const FACTORY_NAME_MAX: usize = 64;

/// `GET /v1/fleet`.
#[utoipa::path(
    get,
    path = "/v1/fleet",
    tag = "fleet",
    responses(
        (status = 200, description = "`{\"configured\": bool, \"paused\": bool, \"factories\": \
            [FactoryRecord, …], \"waiting\": [{job_id, task_id, capabilities, since, reason}, …]}`: \
            the registered factories (name, capabilities, slots, running jobs, last heartbeat, \
            last pull, `told`: active|paused|draining, `healthy` and why not in `unhealthy`: a \
            free slot and no pull for 10 s) and the jobs no factory has claimed, with why (`no \
            factory with has:gpu`; `fleet paused` for a job the pause holds before it starts). \
            Without `[fleet]`: `configured: false`, `paused` (the job gate's own pause) and the \
            jobs it holds.",
            body = Object),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = "`FLEET_UNAVAILABLE`: NATS did not answer.", body = ErrorBody),
    )
)]
pub(crate) async fn fleet(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let held = held_at_the_gate(&app);
    let Some(fleet) = app.services.fleet.as_ref() else {
        let paused = app.services.hold.paused();
        return Ok(Json(
            json!({"configured": false, "paused": paused, "factories": [], "waiting": held}),
        ));
    };
    let factories = fleet.factories().await.map_err(unavailable)?;
    let paused = fleet.paused();
    let mut waiting = fleet.unclaimed(&factories);
    waiting.extend(held);
    let factories = fleet.views(factories);
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
        (status = 200, description = "`{\"paused\": true}`: no engine or verify job of any \
            task starts until resumed, on a factory or in-process (without `[fleet]` too); they \
            wait in line (`waiting_for: \"fleet paused\"` on the task) and go first come first \
            served on resume. Jobs already running finish.", body = Object),
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
        (status = 200, description = "`{\"paused\": false}`: jobs start again, the held \
            ones in the order they asked; factories claim again.", body = Object),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = "`FLEET_UNAVAILABLE`: NATS did not answer.", body = ErrorBody),
    )
)]
pub(crate) async fn resume(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    switch(&app, false).await
}

/// The pause: the fleet's signed switch (factories stop claiming), mirrored by the job gate,
/// which holds every engine and verify job before it starts, in-process ones too. Without a
/// fleet the gate's own switch is the pause.
async fn switch(app: &AppState, paused: bool) -> Result<Json<Value>, ApiError> {
    if let Some(fleet) = app.services.fleet.as_deref() {
        fleet.set_paused(paused).await.map_err(not_switched)?;
    }
    app.services
        .hold
        .set_paused(paused)
        .await
        .map_err(ApiError::internal)?;
    tracing::warn!(paused, "job starts and fleet claiming switched");
    Ok(Json(json!({"paused": paused})))
}

/// The jobs the pause holds at the job gate, as `waiting` lists them (their place's id: a job
/// gets its own once it is published).
fn held_at_the_gate(app: &AppState) -> Vec<WaitingJob> {
    app.services
        .hold
        .held()
        .into_iter()
        .map(|held| WaitingJob {
            job_id: held.id,
            task_id: held.task_id,
            capabilities: held.capabilities,
            since: held.since,
            reason: Some(PAUSED.to_owned()),
        })
        .collect()
}

fn configured(app: &AppState) -> Result<&Fleet, ApiError> {
    app.services.fleet.as_deref().ok_or_else(|| {
        ApiError::conflict(
            codes::FLEET_NOT_CONFIGURED,
            "this service has no [fleet]: everything runs in-process",
        )
    })
}

/// `POST /v1/fleet/factories/{name}/drain`.
#[utoipa::path(
    post,
    path = "/v1/fleet/factories/{name}/drain",
    tag = "fleet",
    params(("name" = String, Path, description = "The factory's name.")),
    responses(
        (status = 200, description = "`{\"factory\": name, \"told\": \"draining\"}`: the \
            factory finishes what it runs and takes no new job until resumed.", body = Object),
        (status = 422, description = "`INVALID_FIELD`: not a factory name.", body = ErrorBody),
        (status = 409, description = "`FLEET_NOT_CONFIGURED`: no `[fleet]`.", body = ErrorBody),
        (status = 503, description = "`FLEET_UNAVAILABLE`: NATS did not answer.", body = ErrorBody),
    )
)]
pub(crate) async fn drain_factory(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tell(&app, &name, FactoryMode::Draining).await
}

/// `POST /v1/fleet/factories/{name}/pause`.
#[utoipa::path(
    post,
    path = "/v1/fleet/factories/{name}/pause",
    tag = "fleet",
    params(("name" = String, Path, description = "The factory's name.")),
    responses(
        (status = 200, description = "`{\"factory\": name, \"told\": \"paused\"}`: the factory \
            holds its claims (no delivery spent) until resumed; what it runs goes on.",
            body = Object),
        (status = 422, description = "`INVALID_FIELD`: not a factory name.", body = ErrorBody),
        (status = 409, description = "`FLEET_NOT_CONFIGURED`: no `[fleet]`.", body = ErrorBody),
        (status = 503, description = "`FLEET_UNAVAILABLE`: NATS did not answer.", body = ErrorBody),
    )
)]
pub(crate) async fn pause_factory(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tell(&app, &name, FactoryMode::Paused).await
}

/// `POST /v1/fleet/factories/{name}/resume`.
#[utoipa::path(
    post,
    path = "/v1/fleet/factories/{name}/resume",
    tag = "fleet",
    params(("name" = String, Path, description = "The factory's name.")),
    responses(
        (status = 200, description = "`{\"factory\": name, \"told\": \"active\"}`: the factory \
            takes jobs again (ends a pause or a drain).", body = Object),
        (status = 422, description = "`INVALID_FIELD`: not a factory name.", body = ErrorBody),
        (status = 409, description = "`FLEET_NOT_CONFIGURED`: no `[fleet]`.", body = ErrorBody),
        (status = 503, description = "`FLEET_UNAVAILABLE`: NATS did not answer.", body = ErrorBody),
    )
)]
pub(crate) async fn resume_factory(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tell(&app, &name, FactoryMode::Active).await
}

async fn tell(app: &AppState, name: &str, mode: FactoryMode) -> Result<Json<Value>, ApiError> {
    let fleet = configured(app)?;
    let valid = (1..=FACTORY_NAME_MAX).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !valid {
        return Err(ApiError::invalid_field(format!(
            "factory name `{}` is not 1 to {FACTORY_NAME_MAX} characters of A-Z, a-z, 0-9, `-`, `_`",
            name.escape_debug()
        )));
    }
    fleet
        .set_factory_mode(name, mode)
        .await
        .map_err(not_switched)?;
    tracing::warn!(factory = name, ?mode, "fleet: factory told");
    Ok(Json(json!({"factory": name, "told": mode})))
}

fn not_switched(error: SwitchError) -> ApiError {
    match error {
        SwitchError::TooMany => ApiError::invalid_field(error.to_string()),
        SwitchError::Nats(_) | SwitchError::Save(_) => {
            ApiError::unavailable(codes::FLEET_UNAVAILABLE, error.to_string())
        }
    }
}

fn unavailable(error: crate::platform::nats::NatsError) -> ApiError {
    ApiError::unavailable(codes::FLEET_UNAVAILABLE, error.to_string())
}
