//! `POST /v1/github/webhook`: GitHub's webhooks as wake-ups for pull-request deliveries. No bearer
//! token: the body's `X-Hub-Signature-256` (HMAC-SHA256 with `github.webhook_secret_env`'s
//! value) is verified in constant time; each `X-GitHub-Delivery` is acted on once (remembered in
//! the store, bounded); `check_run`, `check_suite`, `status`, `pull_request`,
//! `pull_request_review` and `pull_request_review_comment` wake the deliveries of the repository
//! at once; `issues` and `issue_comment` go to issue intake (`work::issue_intake`) for the
//! repositories of `[[github.intake]]`. Polling stays the truth: a lost webhook costs latency,
//! not correctness.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::error::{describe, ApiError, ErrorBody};
use super::AppState;
use crate::model::codes;
use crate::storage::github_deliveries::{self, DELIVERY_ID_BYTES_MAX};

/// The events that can change a pull request's checks or reviews.
const WAKING_EVENTS: [&str; 6] = [
    "check_run",
    "check_suite",
    "status",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
];

/// `POST /v1/github/webhook`.
#[utoipa::path(
    post,
    path = "/v1/github/webhook",
    tag = "github",
    request_body(content = Object, description = "GitHub's webhook payload (content type \
        `application/json`), signed in `X-Hub-Signature-256`."),
    params(
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=<hex HMAC-SHA256 of the \
            body>` with the secret in `github.webhook_secret_env`."),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's id: a redelivery \
            is answered and not acted on again."),
        ("X-GitHub-Event" = String, Header, description = "The event's name."),
    ),
    responses(
        (status = 202, description = "`{\"delivery\", \"duplicate\", \"woke\"}`: accepted; \
            `duplicate`: seen before, nothing done; `woke`: the repository whose deliveries \
            were woken (null when the event wakes none); `intake`: `issue` or `command` when \
            issue intake took the event (null otherwise).", body = Object),
        (status = 401, description = "`WEBHOOK_SIGNATURE`: the signature is missing or wrong, \
            or no `github.webhook_secret_env` is set.", body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: no `X-GitHub-Delivery`.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn webhook(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    verify_signature(&app, &headers, &body)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let delivery = header("x-github-delivery")
        .filter(|d| !d.is_empty() && d.len() <= DELIVERY_ID_BYTES_MAX)
        .ok_or_else(|| ApiError::invalid_field("X-GitHub-Delivery is missing or too long"))?
        .to_owned();
    let event = header("x-github-event").unwrap_or_default().to_owned();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let first = github_deliveries::first_seen(&app.services.store, &delivery, now_ms).await?;
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let repo = payload["repository"]["full_name"]
        .as_str()
        .map(str::to_owned);
    let woke = repo.filter(|_| first && WAKING_EVENTS.contains(&event.as_str()));
    if let Some(repo) = &woke {
        crate::work::pull_request::wake(repo);
    }
    let intake = first
        .then(|| crate::work::issue_intake::webhook(&app.services, &event, &payload))
        .flatten();
    tracing::info!(%delivery, %event, duplicate = !first, woke = ?woke, ?intake, "github webhook");
    let answer = json!({"delivery": delivery, "duplicate": !first, "woke": woke, "intake": intake});
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `X-Hub-Signature-256` against the body, in constant time.
fn verify_signature(app: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let refused = |why: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::WEBHOOK_SIGNATURE,
            format!("webhook refused: {why}"),
        )
    };
    let secret = app
        .services
        .config
        .github
        .webhook_secret_env
        .as_ref()
        .and_then(|name| std::env::var(name).ok())
        .filter(|secret| !secret.is_empty())
        .ok_or_else(|| refused("no github.webhook_secret_env is set"))?;
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|hex_text| hex::decode(hex_text).ok())
        .ok_or_else(|| refused("no X-Hub-Signature-256"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| refused("the secret cannot key an HMAC"))?;
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| refused("the signature does not match"))
}
