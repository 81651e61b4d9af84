//! `GET /v1/notifications`: the notifications outbox as deliveries — what reached which receiver,
//! what failed and why — so an operator can see that pages go out (see `runtime::notifier`).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{describe, ApiError, ErrorBody};
use super::json::QueryParams;
use super::AppState;
use crate::model::ops::notification::NOTIFICATIONS_KEPT;
use crate::storage::ops::OpsStore;

/// Deliveries a list answers when `limit` is not given.
const LIST_DEFAULT: usize = 200;

/// The query of `GET /v1/notifications`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NotificationQuery {
    /// Deliveries at most.
    limit: Option<usize>,
}

/// `GET /v1/notifications`: recent deliveries and failures, newest notification first.
#[utoipa::path(
    get,
    path = "/v1/notifications",
    tag = "ops",
    params(
        ("limit" = Option<usize>, Query, description = "Deliveries at most, clamped to \
            1..=1000 (default 200)."),
    ),
    responses(
        (status = 200, description = "`{\"deliveries\": [{notification_id, kind, app, subject, \
            summary, created_at, receiver, receiver_kind, attempts, last_error, delivered_at, \
            next_attempt_at, gave_up, repeat, next_repeat_at}, …]}`, newest first.", body = Object),
        (status = 422, description = describe::BAD_QUERY, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn list_notifications(
    State(app): State<AppState>,
    QueryParams(query): QueryParams<NotificationQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(LIST_DEFAULT)
        .clamp(1, NOTIFICATIONS_KEPT);
    let notes = OpsStore::new(&app.services.store)
        .notifications(limit, false)
        .await?;
    let deliveries: Vec<Value> = notes
        .iter()
        .flat_map(|n| {
            n.deliveries.iter().map(move |d| {
                json!({
                    "notification_id": n.id, "kind": n.kind, "app": n.app,
                    "subject": n.subject, "summary": n.summary, "created_at": n.created_at,
                    "receiver": d.receiver, "receiver_kind": d.receiver_kind,
                    "attempts": d.attempts, "last_error": d.last_error,
                    "delivered_at": d.delivered_at, "next_attempt_at": d.next_attempt_at,
                    "gave_up": d.gave_up, "repeat": n.repeat,
                    "next_repeat_at": d.next_repeat_at,
                })
            })
        })
        .take(limit)
        .collect();
    Ok(Json(json!({ "deliveries": deliveries })))
}
