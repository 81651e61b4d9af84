//! The one error shape of the HTTP edge: `{"error":{"code":"SNAKE_CASE","message":"..."}}`.
//! Internal failures are logged in full and answered with a stable code and a generic message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::codes;

/// An error answered to a client.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

/// The body of every error answer: `{"error":{"code","message"}}`. `ApiError` serializes this
/// very type, so the OpenAPI document (which references it) and the wire agree.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// The one error.
    pub error: ErrorDetail,
}

/// The `error` of an [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable SCREAMING_SNAKE_CASE code clients branch on (`TASK_NOT_FOUND`, `INVALID_FIELD`, ...).
    pub code: String,
    /// What happened, for a human; never an internal cause (those are only logged).
    pub message: String,
}

impl ApiError {
    /// Any status and code. Debug builds check the pair against the catalogue
    /// ([`codes::CATALOGUE`], hence `docs/api.md`): an answer nobody documented is a bug.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            codes::lookup(code).is_some_and(|c| c.answers_with(status.as_u16())),
            "{code} ({status}) is not in the catalogue with that status"
        );
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// 400: the body is not JSON.
    pub(crate) fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::INVALID_JSON, message)
    }

    /// 422: the JSON is well-formed but a field is wrong.
    pub(crate) fn invalid_field(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::INVALID_FIELD,
            message,
        )
    }

    /// 422 with a specific code.
    pub(crate) fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 404 with a specific code.
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409 with a specific code.
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 429 with a `Retry-After` header.
    pub(crate) fn too_many(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u64,
    ) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// 500: logs the cause, tells the client only that it happened.
    pub(crate) fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error answering a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            "internal error; see the service log",
        )
    }

    /// The same answer with a `Retry-After` header of `seconds`.
    pub(crate) fn retry_after(self, seconds: u64) -> Self {
        Self {
            retry_after_secs: Some(seconds),
            ..self
        }
    }

    /// 503: a part of the service is down.
    pub(crate) fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

/// Seconds a client is told to wait after the store pushed back.
const STORE_RETRY_AFTER_SECS: u64 = 1;

/// Seconds a client is told to wait after a disk fault: the writer probes at least this often.
const STORAGE_FAULT_RETRY_AFTER_SECS: u64 = 5;

impl From<crate::storage::store::StoreError> for ApiError {
    fn from(error: crate::storage::store::StoreError) -> Self {
        if error.is_fault() {
            tracing::warn!(%error, "storage fault answered to a client");
            let status = match error {
                crate::storage::store::StoreError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return Self {
                retry_after_secs: Some(STORAGE_FAULT_RETRY_AFTER_SECS),
                ..Self::new(status, error.code(), error.to_string())
            };
        }
        if error.is_overload() {
            tracing::warn!(%error, "storage pushed back");
            return Self {
                retry_after_secs: Some(STORE_RETRY_AFTER_SECS),
                ..Self::unavailable(error.code(), error.to_string())
            };
        }
        Self::internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Response descriptions shared by many operations, so one error reads the same everywhere.
/// Codes and wording follow `docs/api.md`.
pub(crate) mod describe {
    /// 400 of a handler that parses a JSON body.
    pub(crate) const INVALID_JSON: &str =
        "`INVALID_JSON`: the body is not JSON, empty, or unreadable.";
    /// 413 of a handler that reads its body through `JsonBody`.
    pub(crate) const PAYLOAD_TOO_LARGE: &str =
        "`PAYLOAD_TOO_LARGE`: the body is over `server.body_bytes_max` (1 MiB).";
    /// 500 of any handler that reads or writes storage.
    pub(crate) const INTERNAL: &str =
        "`INTERNAL`: storage failure or bug; the cause is only in the service log.";
    /// 404 of `/v1/tasks/{id}...`.
    pub(crate) const TASK_NOT_FOUND: &str = "`TASK_NOT_FOUND`: unknown id, or not a UUID.";
    /// 503 of the task actions, which are calls to Compass.
    pub(crate) const COMPASS_UNAVAILABLE: &str =
        "`COMPASS_UNAVAILABLE`: Compass did not answer within 10 s.";
    /// 409 of task approve and reject.
    pub(crate) const INVALID_TASK_STATUS_GATE: &str =
        "`INVALID_TASK_STATUS`: the task is not `awaiting_approval`.";
    /// 422 of the optional `{comment}` bodies.
    pub(crate) const INVALID_COMMENT: &str =
        "`INVALID_FIELD`: unknown field, wrong type, or a comment over 4096 bytes.";
    /// 503 of the ledger writes, which are calls to the Ledger actor.
    pub(crate) const LEDGER_UNAVAILABLE: &str =
        "`PERSONA_UNAVAILABLE`: the Ledger is down or did not \
        answer within 10 s; retry with the same id.";
    /// 404 of an unknown account.
    pub(crate) const ACCOUNT_NOT_FOUND: &str = "`ACCOUNT_NOT_FOUND`: unknown account.";
    /// 404 of an unknown transfer.
    pub(crate) const TRANSFER_NOT_FOUND: &str = "`TRANSFER_NOT_FOUND`: unknown transfer.";
    /// 409 of post and void.
    pub(crate) const NOT_PENDING: &str = "`TRANSFER_NOT_PENDING` (already posted or voided), \
        `TRANSFER_EXPIRED` (past its timeout; it has been released).";
    /// 503 of the ops writes, which are calls to the Uplink personas.
    pub(crate) const UPLINK_UNAVAILABLE: &str =
        "`PERSONA_UNAVAILABLE`: the Uplink persona is down or did not answer within 10 s.";
    /// 422 of the ops lists, whose query string is typed.
    pub(crate) const BAD_QUERY: &str =
        "`INVALID_FIELD`: a `limit` that is not a non-negative integer (or \
        an unknown `status`).";
    /// 503 of the event streams.
    pub(crate) const TOO_MANY_STREAMS: &str =
        "`TOO_MANY_STREAMS`: the stream budget is spent (`server.streams_max` in all, \
        `streams_per_token_max` per token, `streams_per_role_max` per role, the last \
        `streams_reserved` for operators and admins), or the service is stopping.";
    /// 404 of an unknown deploy.
    pub(crate) const DEPLOY_NOT_FOUND: &str = "`DEPLOY_NOT_FOUND`: unknown deploy.";
    /// 409 of deploy approve and reject.
    pub(crate) const DEPLOY_NOT_AWAITING: &str =
        "`INVALID_STATE`: the deploy is not `awaiting_approval`.";
    /// 404 of an unknown incident.
    pub(crate) const INCIDENT_NOT_FOUND: &str = "`INCIDENT_NOT_FOUND`: unknown incident.";
    /// 409 of incident approve and reject.
    pub(crate) const INCIDENT_NOT_AWAITING: &str =
        "`INVALID_STATE`: the incident does not wait at a gated step.";
}

#[cfg(test)]
impl ApiError {
    /// The status and code a client would read.
    pub(crate) fn status_and_code(&self) -> (u16, &'static str) {
        (self.status.as_u16(), self.code)
    }

    /// Panics unless `model::codes` catalogues this answer's code with its status: what ties each
    /// error mapping of the edge to the catalogue (and so to `docs/api.md`).
    pub(crate) fn assert_catalogued(&self) {
        let status = self.status.as_u16();
        let code = codes::lookup(self.code)
            .unwrap_or_else(|| panic!("{} ({status}) is not catalogued", self.code));
        assert!(
            code.answers_with(status),
            "{} is answered {status}, but the catalogue says {:?}",
            self.code,
            code.statuses
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ApiError;
    use crate::storage::store::StoreError;

    #[test]
    fn the_edges_own_answers_are_catalogued() {
        ApiError::invalid_json("x").assert_catalogued();
        ApiError::invalid_field("x").assert_catalogued();
        ApiError::internal("x").assert_catalogued();
        for error in [
            StoreError::Busy,
            StoreError::AnswerTimeout(Duration::from_secs(5)),
            StoreError::Closed,
            StoreError::Full("no space left on device".into()),
            StoreError::Failed("input/output error".into()),
        ] {
            ApiError::from(error).assert_catalogued();
        }
    }
}
