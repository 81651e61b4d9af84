//! `POST /v1/incidents/{id}/ack|resolve|snooze`: what a person on call does to an incident, with
//! their token's name on each act (the approve and reject of a gated step are in [`super::ops`]).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{describe, ApiError, ErrorBody};
use super::json::{parse, RawBody};
use super::AppState;
use crate::model::auth::Principal;
use crate::model::codes;
use crate::model::ops::error::OpsError;
use crate::model::ops::records::Incident;
use crate::runtime::uplink_respond::{self, HumanAct};

/// The longest snooze: past it, an incident is not snoozed but forgotten.
const SNOOZE_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// The body of a snooze: until a time, or for a number of minutes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnoozeBody {
    /// RFC 3339 time it ends.
    #[serde(default)]
    until: Option<DateTime<Utc>>,
    /// Minutes from now it ends (instead of `until`).
    #[serde(default)]
    minutes: Option<u64>,
}

/// Sends `act` to Uplink-Respond for the caller.
async fn act_on(
    app: &AppState,
    caller: &Principal,
    id: &str,
    act: HumanAct,
) -> Result<Json<Value>, ApiError> {
    let incident = uplink_respond::call_human(&app.services, id, act, caller.name.clone())
        .await
        .map_err(|error| match error {
            OpsError::NotFound(message) => ApiError::not_found(codes::INCIDENT_NOT_FOUND, message),
            other => super::ops::ops_error(other),
        })?;
    Ok(Json(json!(incident)))
}

/// `POST /v1/incidents/{id}/ack`: a person has it. `needs_human` becomes `acknowledged`.
#[utoipa::path(
    post,
    path = "/v1/incidents/{id}/ack",
    tag = "ops",
    params(("id" = String, Path, description = "Incident id.")),
    responses(
        (status = 200, description = "The incident, `acknowledged` by the caller.", body = Incident),
        (status = 404, description = describe::INCIDENT_NOT_FOUND, body = ErrorBody),
        (status = 409, description = "`INVALID_STATE`: it is resolved.", body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn ack_incident(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    act_on(&app, &caller, &id, HumanAct::Acknowledge).await
}

/// `POST /v1/incidents/{id}/resolve`: it is over. Its response (if one runs) stops; it takes no
/// more signals, so the next failure opens a new incident with an automatic response again.
#[utoipa::path(
    post,
    path = "/v1/incidents/{id}/resolve",
    tag = "ops",
    params(("id" = String, Path, description = "Incident id.")),
    responses(
        (status = 200, description = "The incident, `resolved` by the caller (as it was when it \
            was resolved already).", body = Incident),
        (status = 404, description = describe::INCIDENT_NOT_FOUND, body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn resolve_incident(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    act_on(&app, &caller, &id, HumanAct::Resolve).await
}

/// `POST /v1/incidents/{id}/snooze` with `{"until": time}` or `{"minutes": n}` (at most 7 days):
/// repeats are counted without a timeline entry each until then.
#[utoipa::path(
    post,
    path = "/v1/incidents/{id}/snooze",
    tag = "ops",
    params(("id" = String, Path, description = "Incident id.")),
    request_body(content = SnoozeBody, description = "`until` or `minutes`."),
    responses(
        (status = 200, description = "The incident with its `snoozed_until`.", body = Incident),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 404, description = describe::INCIDENT_NOT_FOUND, body = ErrorBody),
        (status = 409, description = "`INVALID_STATE`: it is resolved.", body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: neither or both of `until` and \
            `minutes`, or a time not in the next 7 days.", body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn snooze_incident(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let body: SnoozeBody = parse(&body)?;
    let until = snooze_end(&body, Utc::now())?;
    act_on(&app, &caller, &id, HumanAct::Snooze { until }).await
}

/// When a snooze asked for at `now` ends: in the future, at most [`SNOOZE_MAX`] away.
fn snooze_end(body: &SnoozeBody, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let longest = chrono::Duration::from_std(SNOOZE_MAX).unwrap_or(chrono::Duration::MAX);
    let until = match (body.until, body.minutes) {
        (Some(until), None) => until,
        (None, Some(minutes)) => i64::try_from(minutes)
            .ok()
            .and_then(chrono::Duration::try_minutes)
            .and_then(|length| now.checked_add_signed(length))
            .ok_or_else(|| ApiError::invalid_field("minutes: too far"))?,
        _ => return Err(ApiError::invalid_field("give either `until` or `minutes`")),
    };
    if until <= now || until - now > longest {
        return Err(ApiError::invalid_field(
            "a snooze ends in the future, at most 7 days from now",
        ));
    }
    Ok(until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snooze_ends_in_the_next_seven_days() {
        let now = Utc::now();
        let body = |until, minutes| SnoozeBody { until, minutes };
        let in_an_hour = snooze_end(&body(None, Some(60)), now).unwrap();
        assert_eq!(in_an_hour - now, chrono::Duration::minutes(60));
        assert!(snooze_end(&body(Some(now + chrono::Duration::days(1)), None), now).is_ok());
        assert!(snooze_end(&body(Some(now - chrono::Duration::minutes(1)), None), now).is_err());
        assert!(snooze_end(&body(None, Some(8 * 24 * 60)), now).is_err());
        assert!(snooze_end(&body(None, Some(u64::MAX)), now).is_err());
        assert!(snooze_end(&body(None, None), now).is_err());
        assert!(snooze_end(&body(Some(now), Some(5)), now).is_err());
    }
}
