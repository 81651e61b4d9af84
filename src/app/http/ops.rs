//! `/v1/deploys`, `/v1/checks`, `/v1/alerts`, `/v1/incidents`: the ops org over HTTP. Reads come
//! straight from ops' sled trees; writes are calls (with a timeout) to Uplink-Deploy and
//! Uplink-Respond.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::describe;
use super::error::{ApiError, ErrorBody};
use super::json::{parse, JsonBody, QueryParams, RawBody};
use super::AppState;
use crate::model::auth::Principal;
use crate::model::codes;
use crate::model::ops::error::OpsError;
use crate::model::ops::records::{
    AwaitingStep, DeployRecord, Incident, IncidentStatus, LIST_LIMIT_MAX,
};
use crate::runtime::uplink_deploy::{self, UplinkDeployMsg};
use crate::runtime::uplink_respond;
use crate::storage::ops::OpsStore;
use crate::work::ops::incident;

/// How long a request waits for an Uplink persona.
const PERSONA_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Records a list answers unless `limit` says otherwise.
const LIST_LIMIT_DEFAULT: usize = 50;

/// Maps an ops error to its status: unknown things 404/422, state conflicts 409, busy 429.
pub(super) fn ops_error(error: OpsError) -> ApiError {
    let (code, message) = (error.code(), error.to_string());
    match error {
        OpsError::NotFound(_) => ApiError::not_found(code, message),
        OpsError::InsufficientFunds(_) => {
            ApiError::new(StatusCode::PAYMENT_REQUIRED, code, message)
        }
        OpsError::UnknownApp(_) | OpsError::UnknownCommit(_) | OpsError::UnknownAccount(_) => {
            ApiError::unprocessable(code, message)
        }
        OpsError::InvalidState(_)
        | OpsError::Busy(_)
        | OpsError::StepChanged(_)
        | OpsError::SilencesFull(_) => ApiError::conflict(code, message),
        OpsError::QueueFull(_) => ApiError::too_many(code, message, 5),
        OpsError::Unavailable(_) => ApiError::unavailable(code, message),
        OpsError::StorageFull(_) => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, code, message).retry_after(5)
        }
        OpsError::StorageFailed(_) => ApiError::unavailable(code, message).retry_after(5),
        OpsError::Denied { .. } => ApiError::new(StatusCode::FORBIDDEN, code, message),
        other => ApiError::internal(other),
    }
}

fn ops_store(app: &AppState) -> Result<OpsStore, ApiError> {
    Ok(OpsStore::new(&app.services.store))
}

/// `?limit=&app=&status=` of the lists.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    /// Records at most (1..=200).
    limit: Option<usize>,
    /// Only this app's.
    app: Option<String>,
}

impl ListQuery {
    fn limit(&self) -> usize {
        self.limit
            .unwrap_or(LIST_LIMIT_DEFAULT)
            .clamp(1, LIST_LIMIT_MAX)
    }
}

/// The body of `POST /v1/deploys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployRequest {
    /// The app of `ops.yaml`.
    app: String,
    /// A sha or ref (default: the app's branch head).
    #[serde(default)]
    commit: Option<String>,
    /// Who asks (`api` unless the CLI says `cli`).
    #[serde(default)]
    trigger: Option<String>,
}

/// `POST /v1/deploys`: 201 with the new record (`awaiting_approval` or `queued`).
#[utoipa::path(
    post,
    path = "/v1/deploys",
    tag = "ops",
    request_body = DeployRequest,
    responses(
        (status = 201, description = "The deploy record, `awaiting_approval` (burn-in) or \
            `queued`; its price is reserved from the payer.", body = DeployRecord),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 402, description = "`INSUFFICIENT_FUNDS`: the payer cannot cover the price; no \
            deploy is created.", body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`, `UNKNOWN_APP`, `UNKNOWN_COMMIT`, \
            `ACCOUNT_NOT_FOUND`.", body = ErrorBody),
        (status = 429, description = "`DEPLOY_QUEUE_FULL`: 16 deploys of the app already wait.",
            body = ErrorBody, headers(("retry-after" = u64, description = "Seconds (5)."))),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn create_deploy(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    JsonBody(request): JsonBody<DeployRequest>,
) -> Result<Response, ApiError> {
    let trigger = match request.trigger.as_deref() {
        Some("cli") => "cli",
        _ => "api",
    };
    let actor = uplink_deploy::current(&app.services.directory)
        .await
        .map_err(ops_error)?;
    let call = actor.call(
        |reply| UplinkDeployMsg::Request {
            app: request.app.clone(),
            commit: request.commit.clone(),
            trigger: trigger.to_owned(),
            requested_by: Some(caller.name.clone()),
            reply: Some(reply),
        },
        Some(PERSONA_CALL_TIMEOUT),
    );
    let record = uplink_deploy::unwrap_call(call.await).map_err(ops_error)?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// `GET /v1/deploys`: `{"deploys":[...]}`, newest first.
#[utoipa::path(
    get,
    path = "/v1/deploys",
    tag = "ops",
    params(
        ("limit" = Option<usize>, Query, description = "Records at most, clamped to 1..=200 \
            (default 50)."),
        ("app" = Option<String>, Query, description = "Only this app's."),
    ),
    responses(
        (status = 200, description = "`{\"deploys\": [DeployRecord, …]}`, newest first.",
            body = Object),
        (status = 422, description = describe::BAD_QUERY, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn list_deploys(
    State(app): State<AppState>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let ops = ops_store(&app)?;
    let deploys: Vec<_> = match &query.app {
        Some(name) => ops
            .deploys_of(name)
            .await?
            .into_iter()
            .rev()
            .take(query.limit())
            .collect(),
        None => ops.deploys(query.limit()).await?,
    };
    Ok(Json(json!({ "deploys": deploys })))
}

/// `GET /v1/deploys/{id}`.
#[utoipa::path(
    get,
    path = "/v1/deploys/{id}",
    tag = "ops",
    params(("id" = String, Path, description = "Deploy id.")),
    responses(
        (status = 200, description = "The deploy record.", body = DeployRecord),
        (status = 404, description = describe::DEPLOY_NOT_FOUND, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn get_deploy(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = ops_store(&app)?.deploy(&id).await?.ok_or_else(|| {
        ApiError::not_found(codes::DEPLOY_NOT_FOUND, format!("no deploy with id `{id}`"))
    })?;
    Ok(Json(json!(record)))
}

/// An optional `{comment}` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    /// The reviewer's note.
    #[serde(default)]
    comment: Option<String>,
}

fn decision(body: &Bytes) -> Result<DecisionBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecisionBody::default());
    }
    parse(body)
}

async fn decide_deploy(
    app: &AppState,
    caller: &Principal,
    id: String,
    approve: bool,
    body: &Bytes,
) -> Result<Json<Value>, ApiError> {
    let comment = decision(body)?.comment;
    let actor = uplink_deploy::current(&app.services.directory)
        .await
        .map_err(ops_error)?;
    let call = actor.call(
        |reply| UplinkDeployMsg::Decide {
            id: id.clone(),
            approve,
            comment: comment.clone(),
            by: Some(caller.name.clone()),
            reply,
        },
        Some(PERSONA_CALL_TIMEOUT),
    );
    let record = uplink_deploy::unwrap_call(call.await).map_err(|error| match error {
        OpsError::NotFound(message) => ApiError::not_found(codes::DEPLOY_NOT_FOUND, message),
        other => ops_error(other),
    })?;
    Ok(Json(json!(record)))
}

/// `POST /v1/deploys/{id}/approve`: the deploy is queued (and runs when the app is free).
#[utoipa::path(
    post,
    path = "/v1/deploys/{id}/approve",
    tag = "ops",
    params(("id" = String, Path, description = "Deploy id.")),
    request_body(content = Option<DecisionBody>, description = "Optional; may be empty."),
    responses(
        (status = 200, description = "The deploy record, `queued`.", body = DeployRecord),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 404, description = describe::DEPLOY_NOT_FOUND, body = ErrorBody),
        (status = 409, description = describe::DEPLOY_NOT_AWAITING, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: unknown field or wrong type.",
            body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn approve_deploy(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    decide_deploy(&app, &caller, id, true, &body).await
}

/// `POST /v1/deploys/{id}/reject`: the deploy ends `rejected`.
#[utoipa::path(
    post,
    path = "/v1/deploys/{id}/reject",
    tag = "ops",
    params(("id" = String, Path, description = "Deploy id.")),
    request_body(content = Option<DecisionBody>, description = "Optional; may be empty."),
    responses(
        (status = 200, description = "The deploy record, `rejected`.", body = DeployRecord),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 404, description = describe::DEPLOY_NOT_FOUND, body = ErrorBody),
        (status = 409, description = describe::DEPLOY_NOT_AWAITING, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: unknown field or wrong type.",
            body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn reject_deploy(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    decide_deploy(&app, &caller, id, false, &body).await
}

/// `GET /v1/checks`: every check of `ops.yaml` with its last result and its history.
#[utoipa::path(
    get,
    path = "/v1/checks",
    tag = "ops",
    params(("app" = Option<String>, Query, description = "Only this app's checks.")),
    responses(
        (status = 200, description = "`{\"checks\": [{app, name, kind, schedule, last: \
            CheckResult | null, history: [CheckResult, …]}, …]}`: every check of `ops.yaml`, \
            history newest first (50 kept per check).", body = Object),
        (status = 422, description = describe::BAD_QUERY, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn list_checks(
    State(app): State<AppState>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let ops = ops_store(&app)?;
    let mut checks = Vec::new();
    for (name, spec) in &app.services.definitions.ops.apps {
        if query.app.as_ref().is_some_and(|only| only != name) {
            continue;
        }
        for check in &spec.checks {
            let history = ops.check_history(name, &check.name).await?;
            checks.push(json!({
                "app": name, "name": check.name, "kind": check.kind, "schedule": check.schedule,
                "last": history.first(), "history": history,
            }));
        }
    }
    Ok(Json(json!({ "checks": checks })))
}

/// `POST /v1/alerts`: an Alertmanager webhook or `{app, signal, severity?, summary?, labels?}`;
/// 202 with the incident each alert opened or attached to.
#[utoipa::path(
    post,
    path = "/v1/alerts",
    tag = "ops",
    request_body(content = Object, description = "An Alertmanager webhook (firing alerts: \
        `labels.alertname` is the signal, `labels.app`/`service`/`job` the app) or a plain \
        `{app, signal, severity?, summary?, labels?}`."),
    responses(
        (status = 202, description = "`{\"incidents\": [incident id, …], \"silenced\": \
            [silence id | null, …]}`: the incident each alert an active silence did not quiet \
            opened or attached to, and per alert (in order) the silence that quieted it.",
            body = Object),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: not an alert of either shape.",
            body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn alerts(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let signals = incident::parse_alerts(&body).map_err(ApiError::invalid_field)?;
    let outcomes = uplink_respond::call_signals(&app.services, signals)
        .await
        .map_err(ops_error)?;
    // `incidents` as before (the alerts no silence quieted); `silenced` one entry per alert.
    let ids: Vec<&str> = outcomes.iter().filter_map(|o| o.incident()).collect();
    let silenced: Vec<Option<&str>> = outcomes.iter().map(|o| o.silence()).collect();
    let body = json!({ "incidents": ids, "silenced": silenced });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `?status=` of the incident list, besides `limit` and `app`.
#[derive(Debug, Deserialize)]
pub(crate) struct IncidentQuery {
    /// Records at most.
    limit: Option<usize>,
    /// Only this app's.
    app: Option<String>,
    /// `open`, `resolved` or `needs_human`.
    status: Option<IncidentStatus>,
    /// Only incidents opened by this signal.
    signal: Option<String>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// `GET /v1/incidents`: `{"incidents":[...]}`, newest first.
#[utoipa::path(
    get,
    path = "/v1/incidents",
    tag = "ops",
    params(
        ("limit" = Option<usize>, Query, description = "Records at most, clamped to 1..=200 \
            (default 50)."),
        ("app" = Option<String>, Query, description = "Only this app's."),
        ("status" = Option<IncidentStatus>, Query, description = "Only incidents in this status."),
        ("signal" = Option<String>, Query, description = "Only incidents opened by this signal."),
        ("cursor" = Option<String>, Query, description = "The previous page's `next_cursor`."),
    ),
    responses(
        (status = 200, description = "`{\"incidents\": [Incident, …], \"next_cursor\": id | null}`, \
            newest first; `next_cursor` is `null` on the last page.", body = Object),
        (status = 422, description = describe::BAD_QUERY, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn list_incidents(
    State(app): State<AppState>,
    QueryParams(query): QueryParams<IncidentQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(LIST_LIMIT_DEFAULT)
        .clamp(1, LIST_LIMIT_MAX);
    let (app_filter, status, signal) = (query.app, query.status, query.signal);
    let (incidents, next) = ops_store(&app)?
        .incidents_page(limit, query.cursor, move |i| {
            app_filter.as_ref().is_none_or(|a| *a == i.app)
                && status.is_none_or(|s| s == i.status)
                && signal
                    .as_ref()
                    .is_none_or(|s| i.signals.first().is_some_and(|first| first.signal == *s))
        })
        .await?;
    Ok(Json(json!({ "incidents": incidents, "next_cursor": next })))
}

/// `GET /v1/incidents/{id}`.
#[utoipa::path(
    get,
    path = "/v1/incidents/{id}",
    tag = "ops",
    params(("id" = String, Path, description = "Incident id.")),
    responses(
        (status = 200, description = "The incident.", body = Incident),
        (status = 404, description = describe::INCIDENT_NOT_FOUND, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn get_incident(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let incident = ops_store(&app)?.incident(&id).await?.ok_or_else(|| {
        ApiError::not_found(
            codes::INCIDENT_NOT_FOUND,
            format!("no incident with id `{id}`"),
        )
    })?;
    Ok(Json(json!(incident)))
}

async fn decide_incident(
    app: &AppState,
    caller: &Principal,
    id: &str,
    approve: bool,
    shown: Option<AwaitingStep>,
) -> Result<Json<Value>, ApiError> {
    let by = Some(caller.name.clone());
    let incident = uplink_respond::call_decide(&app.services, id, approve, shown, by)
        .await
        .map_err(|error| match error {
            OpsError::NotFound(message) => ApiError::not_found(codes::INCIDENT_NOT_FOUND, message),
            other => ops_error(other),
        })?;
    Ok(Json(json!(incident)))
}

/// `POST /v1/incidents/{id}/approve` with the step as shown (the incident's `awaiting`): run
/// that gated step, and go on. A step that is not the one the runbook has there now is refused
/// `409 STEP_CHANGED`, and the incident shows the new one.
#[utoipa::path(
    post,
    path = "/v1/incidents/{id}/approve",
    tag = "ops",
    params(("id" = String, Path, description = "Incident id.")),
    request_body(content = AwaitingStep,
        description = "The step as shown: `{\"step\", \"action\", \"digest\"}` (the incident's `awaiting`)."),
    responses(
        (status = 200, description = "The incident; the gated step and the rest of the runbook \
            run.", body = Incident),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 404, description = describe::INCIDENT_NOT_FOUND, body = ErrorBody),
        (status = 409, description = describe::INCIDENT_NOT_AWAITING, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: no step as shown, or a wrong type.",
            body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn approve_incident(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_field(
            "an approval names the step as shown: {\"step\", \"action\", \"digest\"} from the \
             incident's `awaiting`",
        ));
    }
    let shown: AwaitingStep = parse(&body)?;
    decide_incident(&app, &caller, &id, true, Some(shown)).await
}

/// `POST /v1/incidents/{id}/reject`: refuse the gated step; the incident goes to a human.
#[utoipa::path(
    post,
    path = "/v1/incidents/{id}/reject",
    tag = "ops",
    params(("id" = String, Path, description = "Incident id.")),
    responses(
        (status = 200, description = "The incident, handed to a human (`needs_human`).",
            body = Incident),
        (status = 404, description = describe::INCIDENT_NOT_FOUND, body = ErrorBody),
        (status = 409, description = describe::INCIDENT_NOT_AWAITING, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn reject_incident(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    decide_incident(&app, &caller, &id, false, None).await
}

#[cfg(test)]
mod tests {
    use super::ops_error;
    use crate::model::ops::error::OpsError;

    /// Every ops refusal is answered with a status the catalogue gives its code.
    #[test]
    fn every_ops_error_is_answered_as_catalogued() {
        let text = || "x".to_owned();
        let errors = [
            OpsError::UnknownApp(text()),
            OpsError::UnknownCommit(text()),
            OpsError::VerifyFailed(text()),
            OpsError::Denied {
                rule: text(),
                command: text(),
            },
            OpsError::Provider(text()),
            OpsError::NoRelease(text()),
            OpsError::Unsupported(text()),
            OpsError::Busy(text()),
            OpsError::QueueFull(text()),
            OpsError::NotFound(text()),
            OpsError::InvalidState(text()),
            OpsError::StepChanged(text()),
            OpsError::Unavailable(text()),
            OpsError::Store(text()),
            OpsError::StorageFull(text()),
            OpsError::StorageFailed(text()),
            OpsError::Io(text()),
            OpsError::InsufficientFunds(text()),
            OpsError::UnknownAccount(text()),
            OpsError::Ledger {
                code: crate::model::codes::TRANSFER_EXISTS,
                message: text(),
            },
        ];
        for error in errors {
            ops_error(error).assert_catalogued();
        }
    }
}
