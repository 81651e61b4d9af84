//! `POST /v1/silences`, `GET /v1/silences`, `DELETE /v1/silences/{id}`: Alertmanager's silences
//! for incidents. A silence quiets the signals its matchers match until it ends: they open no
//! incident, join none and run no runbook. Made and ended through Uplink-Respond (which keeps the
//! active ones), read from the store.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{describe, ApiError, ErrorBody};
use super::json::{parse, QueryParams, RawBody};
use super::AppState;
use crate::model::auth::Principal;
use crate::model::codes;
use crate::model::ops::error::OpsError;
use crate::model::ops::silence::{
    Silence, SilenceMatchers, ACTIVE_SILENCES_MAX, SILENCE_LABELS_MAX, SILENCE_LENGTH_MAX,
    SILENCE_TEXT_MAX,
};
use crate::runtime::uplink_respond::{self, SilenceAct};
use crate::storage::ops::OpsStore;

/// Silences a list answers when `limit` is not given.
const SILENCE_LIST_DEFAULT: usize = 200;

/// The body of `POST /v1/silences`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSilence {
    /// What it quiets: `app`, `signal`, `labels` (at least one).
    matchers: SilenceMatchers,
    /// RFC 3339 time it ends (at most 30 days away).
    #[serde(default)]
    ends_at: Option<DateTime<Utc>>,
    /// Minutes from now it ends (instead of `ends_at`).
    #[serde(default)]
    minutes: Option<u64>,
    /// Why, for the next person on call.
    #[serde(default)]
    comment: String,
}

/// The query of `GET /v1/silences`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SilenceQuery {
    /// Expired ones too.
    #[serde(default)]
    all: bool,
    /// Silences at most.
    limit: Option<usize>,
}

/// Refuses a value that is empty, too long or has a control character.
fn check_text(field: &str, value: &str, empty_ok: bool) -> Result<(), ApiError> {
    if (value.is_empty() && !empty_ok)
        || value.chars().count() > SILENCE_TEXT_MAX
        || value.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field(format!(
            "{field}: empty, over {SILENCE_TEXT_MAX} characters or holds a control character"
        )));
    }
    Ok(())
}

/// Refuses matchers that match everything or hold unusable text.
fn check_matchers(matchers: &SilenceMatchers) -> Result<(), ApiError> {
    if matchers.is_empty() {
        return Err(ApiError::invalid_field(
            "matchers: give at least one of `app`, `signal`, `labels`",
        ));
    }
    if matchers.labels.len() > SILENCE_LABELS_MAX {
        return Err(ApiError::invalid_field(format!(
            "matchers.labels: at most {SILENCE_LABELS_MAX}"
        )));
    }
    let named = [
        ("matchers.app", &matchers.app),
        ("matchers.signal", &matchers.signal),
    ];
    for (field, value) in named {
        if let Some(value) = value {
            check_text(field, value, false)?;
        }
    }
    for (name, value) in &matchers.labels {
        check_text("matchers.labels", name, false)?;
        check_text("matchers.labels", value, false)?;
    }
    Ok(())
}

/// When a silence asked for at `now` ends: in the future, at most [`SILENCE_LENGTH_MAX`] away.
fn silence_end(body: &NewSilence, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let ends_at = match (body.ends_at, body.minutes) {
        (Some(ends_at), None) => ends_at,
        (None, Some(minutes)) => i64::try_from(minutes)
            .ok()
            .and_then(chrono::Duration::try_minutes)
            .and_then(|length| now.checked_add_signed(length))
            .ok_or_else(|| ApiError::invalid_field("minutes: too far"))?,
        _ => {
            return Err(ApiError::invalid_field(
                "give either `ends_at` or `minutes`",
            ))
        }
    };
    if ends_at <= now || ends_at - now > SILENCE_LENGTH_MAX {
        return Err(ApiError::invalid_field(
            "a silence ends in the future, at most 30 days from now",
        ));
    }
    Ok(ends_at)
}

/// The silence `body` asks for, made by `by` at `now`, or why it is refused.
fn new_silence(body: NewSilence, by: &str, now: DateTime<Utc>) -> Result<Silence, ApiError> {
    check_matchers(&body.matchers)?;
    check_text("comment", &body.comment, true)?;
    let ends_at = silence_end(&body, now)?;
    Ok(Silence {
        id: uuid::Uuid::now_v7().to_string(),
        matchers: body.matchers,
        starts_at: now,
        ends_at,
        comment: body.comment,
        created_by: by.to_owned(),
        expired_by: None,
    })
}

/// Maps Uplink-Respond's refusal to the answer (an unknown silence is `SILENCE_NOT_FOUND`).
fn silence_error(error: OpsError) -> ApiError {
    match error {
        OpsError::NotFound(message) => ApiError::not_found(codes::SILENCE_NOT_FOUND, message),
        other => super::ops::ops_error(other),
    }
}

/// `POST /v1/silences`: quiet the signals the matchers match until `ends_at`.
#[utoipa::path(
    post,
    path = "/v1/silences",
    tag = "ops",
    request_body(content = NewSilence, description = "`matchers` and `ends_at` or `minutes`."),
    responses(
        (status = 201, description = "The silence, in force for the next signal.", body = Silence),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 409, description = "`TOO_MANY_SILENCES`: 1,000 are active already.",
            body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: no matcher, an empty or overlong value, \
            neither or both of `ends_at` and `minutes`, or an end not in the next 30 days.",
            body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn create_silence(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let body: NewSilence = parse(&body)?;
    let silence = new_silence(body, &caller.name, Utc::now())?;
    let silence = uplink_respond::call_silence(&app.services, SilenceAct::Add(silence))
        .await
        .map_err(silence_error)?;
    Ok((StatusCode::CREATED, Json(json!(silence))).into_response())
}

/// `GET /v1/silences`: `{"silences": [...]}`, the active ones (every kept one with `all=true`),
/// newest first.
#[utoipa::path(
    get,
    path = "/v1/silences",
    tag = "ops",
    params(
        ("all" = Option<bool>, Query, description = "Expired ones too (the newest 1,000 kept)."),
        ("limit" = Option<usize>, Query, description = "Silences at most, clamped to 1..=1000 \
            (default 200)."),
    ),
    responses(
        (status = 200, description = "`{\"silences\": [Silence, …]}`, newest first.",
            body = Object),
        (status = 422, description = describe::BAD_QUERY, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn list_silences(
    State(app): State<AppState>,
    QueryParams(query): QueryParams<SilenceQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(SILENCE_LIST_DEFAULT)
        .clamp(1, ACTIVE_SILENCES_MAX);
    let silences = OpsStore::new(&app.services.store)
        .silences(limit, query.all, Utc::now())
        .await?;
    Ok(Json(json!({ "silences": silences })))
}

/// `DELETE /v1/silences/{id}`: it ends now (kept, with the caller's name, for `?all=true`).
#[utoipa::path(
    delete,
    path = "/v1/silences/{id}",
    tag = "ops",
    params(("id" = String, Path, description = "Silence id.")),
    responses(
        (status = 200, description = "The silence, ended (as it was when it had ended already).",
            body = Silence),
        (status = 404, description = "`SILENCE_NOT_FOUND`: unknown silence.", body = ErrorBody),
        (status = 503, description = describe::UPLINK_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn expire_silence(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let act = SilenceAct::Expire {
        id,
        by: caller.name.clone(),
    };
    let silence = uplink_respond::call_silence(&app.services, act)
        .await
        .map_err(silence_error)?;
    Ok(Json(json!(silence)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(
        matchers: SilenceMatchers,
        ends_at: Option<DateTime<Utc>>,
        minutes: Option<u64>,
    ) -> NewSilence {
        NewSilence {
            matchers,
            ends_at,
            minutes,
            comment: String::new(),
        }
    }

    fn web() -> SilenceMatchers {
        SilenceMatchers {
            app: Some("web".into()),
            ..SilenceMatchers::default()
        }
    }

    #[test]
    fn a_silence_needs_a_matcher_and_ends_in_the_next_thirty_days() {
        let now = Utc::now();
        let made = new_silence(body(web(), None, Some(60)), "me", now).unwrap();
        assert_eq!(made.ends_at - now, chrono::Duration::minutes(60));
        assert_eq!(made.created_by, "me");
        let day = chrono::Duration::days(1);
        assert!(new_silence(body(web(), Some(now + day * 29), None), "me", now).is_ok());
        assert!(new_silence(body(web(), Some(now + day * 31), None), "me", now).is_err());
        assert!(new_silence(body(web(), Some(now - day), None), "me", now).is_err());
        assert!(new_silence(body(web(), None, Some(u64::MAX)), "me", now).is_err());
        assert!(new_silence(body(web(), None, None), "me", now).is_err());
        assert!(new_silence(body(web(), Some(now + day), Some(5)), "me", now).is_err());
        let none = SilenceMatchers::default();
        assert!(new_silence(body(none, None, Some(5)), "me", now).is_err());
        let blank = SilenceMatchers {
            app: Some(String::new()),
            ..SilenceMatchers::default()
        };
        assert!(new_silence(body(blank, None, Some(5)), "me", now).is_err());
    }
}
