//! `/v1/ledger/...`: accounts, transfers (plain and two-phase), history, mint and audit.
//!
//! Writes go to the Ledger actor, the only writer of balances, and are answered only once they
//! are durable: `201` for something new, `200` (header `idempotent-replayed: true`) for an
//! identical replay. Reads go straight to the books; the audit runs inside the Ledger so that it
//! sees one consistent state.

use std::collections::HashMap;

use axum::extract::{MatchedPath, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{audit_of_created, AuditWritten};
use super::error::describe;
use super::error::{ApiError, ErrorBody};
use super::json::{JsonBody, QueryParams};
use super::AppState;
use crate::model::auth::Principal;
use crate::model::ledger::{
    Account, AccountView, Applied, Audit, HistoryPage, LedgerError, NewAccount, NewTransfer,
    Transfer, CODE_MINT, MINT_ACCOUNT,
};
use crate::runtime::ledger;
use crate::storage::ledger::{Book, HISTORY_LIMIT_MAX};

/// History page size when `?limit=` is absent.
const HISTORY_LIMIT_DEFAULT: usize = 50;
/// Header marking an answer as the replay of an earlier identical request.
const REPLAYED_HEADER: &str = "idempotent-replayed";

impl From<LedgerError> for ApiError {
    fn from(error: LedgerError) -> Self {
        let status = match &error {
            LedgerError::InvalidField(_)
            | LedgerError::InsufficientFunds { .. }
            | LedgerError::ExceedsPending { .. }
            | LedgerError::Overflow(_) => StatusCode::UNPROCESSABLE_ENTITY,
            LedgerError::AccountNotFound(_) | LedgerError::TransferNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            LedgerError::AccountExists(_)
            | LedgerError::TransferExists(_)
            | LedgerError::TransferNotPending { .. }
            | LedgerError::TransferExpired(_) => StatusCode::CONFLICT,
            LedgerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            LedgerError::Store(_) => {
                let LedgerError::Store(error) = error else {
                    unreachable!("matched above")
                };
                return error.into();
            }
            LedgerError::Codec(_) => return ApiError::internal(error),
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

/// The body of `POST /v1/ledger/mint`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MintRequest {
    /// The account receiving the new tokens (1..=128 bytes: `ID_BYTES_MAX`).
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9:_.@-]+$")]
    pub account: String,
    /// Micro-tokens, at least 1.
    #[schema(minimum = 1)]
    pub amount: u64,
    /// Why.
    #[serde(default)]
    pub memo: Option<String>,
    /// Transfer id, to make a retry safe (default: a fresh `mint:<uuid>`); 1..=128 bytes.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9:_.@-]+$")]
    pub id: Option<String>,
}

/// The body of `POST /v1/ledger/transfers/{id}/post`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostRequest {
    /// How much of the reservation to move, at least 1 (default: all of it).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub amount: Option<u64>,
}

/// `201` for a new record, `200` with the replay header for a replay.
fn created_or_replayed<T: Serialize>(applied: Applied<T>, created: StatusCode) -> Response {
    match applied {
        Applied::Created(value) => (created, Json(value)).into_response(),
        Applied::Replayed(value) => {
            (StatusCode::OK, [(REPLAYED_HEADER, "true")], Json(value)).into_response()
        }
    }
}

fn book(app: &AppState) -> Result<Book, ApiError> {
    Ok(Book::new(&app.services.store))
}

/// `POST /v1/ledger/accounts`.
#[utoipa::path(
    post,
    path = "/v1/ledger/accounts",
    tag = "ledger",
    request_body = NewAccount,
    responses(
        (status = 201, description = "The new account.", body = AccountView),
        (status = 200, description = "An identical replay: the stored account, with \
            `idempotent-replayed: true`.", body = AccountView,
            headers(("idempotent-replayed" = String, description = "`true`"))),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 409, description = "`ACCOUNT_EXISTS`: the id exists with another `kind` or \
            `allow_negative`.", body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: bad id, unknown field, wrong type.",
            body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::LEDGER_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn open_account(
    State(app): State<AppState>,
    JsonBody(request): JsonBody<NewAccount>,
) -> Result<Response, ApiError> {
    request.validate()?;
    let applied = ledger::open_account(&app.services.directory, request).await?;
    let applied = match applied {
        Applied::Created(account) => Applied::Created(account.view()),
        Applied::Replayed(account) => Applied::Replayed(account.view()),
    };
    Ok(created_or_replayed(applied, StatusCode::CREATED))
}

/// `GET /v1/ledger/accounts/{id}`.
#[utoipa::path(
    get,
    path = "/v1/ledger/accounts/{id}",
    operation_id = "get_account",
    tag = "ledger",
    params(("id" = String, Path, description = "Account id, e.g. `user:local`.")),
    responses(
        (status = 200, description = "The account with its derived `balance` and `available`.",
            body = AccountView),
        (status = 404, description = describe::ACCOUNT_NOT_FOUND, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn account(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let account: Account = book(&app)?
        .account(&id)
        .await?
        .ok_or(LedgerError::AccountNotFound(id))?;
    Ok(Json(account.view()).into_response())
}

/// `GET /v1/ledger/accounts/{id}/transfers?limit=&cursor=`: newest first.
#[utoipa::path(
    get,
    path = "/v1/ledger/accounts/{id}/transfers",
    operation_id = "account_history",
    tag = "ledger",
    params(
        ("id" = String, Path, description = "Account id."),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 500,
            description = "1..=500 (default 50)."),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "The account's transfers, newest first, in their current \
            state.", body = HistoryPage),
        (status = 404, description = describe::ACCOUNT_NOT_FOUND, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: bad `limit` or `cursor`.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn history(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<HashMap<String, String>>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = match query.get("limit") {
        None => HISTORY_LIMIT_DEFAULT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=HISTORY_LIMIT_MAX).contains(limit))
            .ok_or_else(|| {
                ApiError::invalid_field(format!(
                    "limit must be an integer from 1 to {HISTORY_LIMIT_MAX}"
                ))
            })?,
    };
    let cursor = query.get("cursor").map(String::as_str);
    Ok(Json(book(&app)?.history(&id, limit, cursor).await?))
}

/// `POST /v1/ledger/transfers`.
#[utoipa::path(
    post,
    path = "/v1/ledger/transfers",
    tag = "ledger",
    request_body = NewTransfer,
    responses(
        (status = 201, description = "The new transfer, durable.", body = Transfer),
        (status = 200, description = "An identical replay: the stored transfer, with \
            `idempotent-replayed: true`.", body = Transfer,
            headers(("idempotent-replayed" = String, description = "`true`"))),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 404, description = "`ACCOUNT_NOT_FOUND`: the debit or credit account is \
            unknown.", body = ErrorBody),
        (status = 409, description = "`TRANSFER_EXISTS`: the id exists with another body.",
            body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD` (bad id, amount 0, code 0, debit = credit, \
            memo > 512 bytes, bad `timeout_secs`), `INSUFFICIENT_FUNDS`, `AMOUNT_OVERFLOW`. \
            Nothing changed.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::LEDGER_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn create_transfer(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    route: MatchedPath,
    uri: Uri,
    JsonBody(request): JsonBody<NewTransfer>,
) -> Result<Response, ApiError> {
    request.validate()?;
    // The audit line rides in the transfer's own write; the ingress writes it only for a replay.
    let audit = audit_of_created(&caller, &route, &uri);
    let applied = ledger::transfer_audited(&app.services.directory, request, Some(audit)).await?;
    let created = matches!(applied, Applied::Created(_));
    let mut response = created_or_replayed(applied, StatusCode::CREATED);
    if created {
        response.extensions_mut().insert(AuditWritten);
    }
    Ok(response)
}

/// `GET /v1/ledger/transfers/{id}`.
#[utoipa::path(
    get,
    path = "/v1/ledger/transfers/{id}",
    operation_id = "get_transfer",
    tag = "ledger",
    params(("id" = String, Path, description = "Transfer id.")),
    responses(
        (status = 200, description = "The transfer.", body = Transfer),
        (status = 404, description = describe::TRANSFER_NOT_FOUND, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn transfer(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Transfer>, ApiError> {
    let transfer = book(&app)?
        .transfer(&id)
        .await?
        .ok_or(LedgerError::TransferNotFound(id))?;
    Ok(Json(transfer))
}

/// `POST /v1/ledger/transfers/{id}/post` with `{}` or `{"amount": n}`.
#[utoipa::path(
    post,
    path = "/v1/ledger/transfers/{id}/post",
    operation_id = "post_transfer",
    tag = "ledger",
    params(("id" = String, Path, description = "Id of a pending transfer.")),
    request_body = PostRequest,
    responses(
        (status = 200, description = "The transfer, posted (a replay carries \
            `idempotent-replayed: true`).", body = Transfer,
            headers(("idempotent-replayed" = String, description = "`true` on a replay"))),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 404, description = describe::TRANSFER_NOT_FOUND, body = ErrorBody),
        (status = 409, description = describe::NOT_PENDING, body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD` (bad id, `amount` 0), \
            `EXCEEDS_PENDING_AMOUNT`, `AMOUNT_OVERFLOW`.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::LEDGER_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn post(
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<PostRequest>,
) -> Result<Response, ApiError> {
    let applied = ledger::post(&app.services.directory, &id, request.amount).await?;
    Ok(created_or_replayed(applied, StatusCode::OK))
}

/// `POST /v1/ledger/transfers/{id}/void` (any body is ignored).
#[utoipa::path(
    post,
    path = "/v1/ledger/transfers/{id}/void",
    operation_id = "void_transfer",
    tag = "ledger",
    params(("id" = String, Path, description = "Id of a pending transfer.")),
    responses(
        (status = 200, description = "The transfer, voided (a replay carries \
            `idempotent-replayed: true`). Any body is ignored.", body = Transfer,
            headers(("idempotent-replayed" = String, description = "`true` on a replay"))),
        (status = 404, description = describe::TRANSFER_NOT_FOUND, body = ErrorBody),
        (status = 409, description = describe::NOT_PENDING, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: bad id.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::LEDGER_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn void(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let applied = ledger::void(&app.services.directory, &id).await?;
    Ok(created_or_replayed(applied, StatusCode::OK))
}

/// `POST /v1/ledger/mint`: a transfer from `system:mint`.
#[utoipa::path(
    post,
    path = "/v1/ledger/mint",
    tag = "ledger",
    request_body = MintRequest,
    responses(
        (status = 201, description = "The transfer from `system:mint` (code 1).", body = Transfer),
        (status = 200, description = "An identical replay (same `id`): the stored transfer, with \
            `idempotent-replayed: true`.", body = Transfer,
            headers(("idempotent-replayed" = String, description = "`true`"))),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 404, description = describe::ACCOUNT_NOT_FOUND, body = ErrorBody),
        (status = 409, description = "`TRANSFER_EXISTS`: the `id` exists with another body.",
            body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD` (bad id or account, amount 0, memo > 512 \
            bytes), `AMOUNT_OVERFLOW`.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::LEDGER_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn mint(
    State(app): State<AppState>,
    JsonBody(request): JsonBody<MintRequest>,
) -> Result<Response, ApiError> {
    let id = request
        .id
        .unwrap_or_else(|| format!("mint:{}", uuid::Uuid::now_v7()));
    let transfer = NewTransfer {
        memo: request.memo,
        ..NewTransfer::posted(
            &id,
            MINT_ACCOUNT,
            &request.account,
            request.amount,
            CODE_MINT,
        )
    };
    transfer.validate()?;
    let applied = ledger::transfer(&app.services.directory, transfer).await?;
    Ok(created_or_replayed(applied, StatusCode::CREATED))
}

/// `GET /v1/ledger/audit`.
#[utoipa::path(
    get,
    path = "/v1/ledger/audit",
    operation_id = "audit_ledger",
    tag = "ledger",
    responses(
        (status = 200, description = "Every account's totals recomputed from the transfers and \
            compared with the stored ones.", body = Audit),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = describe::LEDGER_UNAVAILABLE, body = ErrorBody),
    )
)]
pub(crate) async fn audit(State(app): State<AppState>) -> Result<Json<Audit>, ApiError> {
    Ok(Json(ledger::audit(&app.services.directory).await?))
}

#[cfg(test)]
mod tests {
    use super::ApiError;
    use crate::model::errors::StoreError;
    use crate::model::ledger::{LedgerError, TransferStatus};

    /// Every ledger refusal is answered with a status the catalogue gives its code.
    #[test]
    fn every_ledger_error_is_answered_as_catalogued() {
        let id = || "t".to_owned();
        let codec = serde_json::from_str::<u8>("x").unwrap_err();
        let errors = [
            LedgerError::InvalidField(id()),
            LedgerError::AccountNotFound(id()),
            LedgerError::AccountExists(id()),
            LedgerError::TransferNotFound(id()),
            LedgerError::TransferExists(id()),
            LedgerError::InsufficientFunds {
                account: id(),
                available: 0,
                amount: 1,
            },
            LedgerError::TransferNotPending {
                id: id(),
                status: TransferStatus::Posted,
            },
            LedgerError::TransferExpired(id()),
            LedgerError::ExceedsPending {
                id: id(),
                reserved: 1,
                amount: 2,
            },
            LedgerError::Overflow(id()),
            LedgerError::Unavailable(id()),
            LedgerError::Codec(codec),
            LedgerError::Store(StoreError::Busy),
            LedgerError::Store(StoreError::Closed),
        ];
        for error in errors {
            ApiError::from(error).assert_catalogued();
        }
    }
}
