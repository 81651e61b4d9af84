//! `/v1/ledger/...`: accounts, transfers (plain and two-phase), history, mint and audit.
//!
//! Writes go to the Ledger actor, the only writer of balances, and are answered only once they
//! are durable: `201` for something new, `200` (header `idempotent-replayed: true`) for an
//! identical replay. Reads go straight to the books; the audit runs inside the Ledger so that it
//! sees one consistent state.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;
use crate::actors::ledger;
use crate::ledger::book::{Book, HISTORY_LIMIT_MAX};
use crate::ledger::{
    Account, Applied, Audit, HistoryPage, LedgerError, NewAccount, NewTransfer, Transfer,
    CODE_MINT, MINT_ACCOUNT,
};

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
            LedgerError::NotDurable(_)
            | LedgerError::Storage(_)
            | LedgerError::Codec(_)
            | LedgerError::Store(_) => return ApiError::internal(error),
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

/// The body of `POST /v1/ledger/mint`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    /// The account receiving the new tokens.
    pub account: String,
    /// Micro-tokens.
    pub amount: u64,
    /// Why.
    #[serde(default)]
    pub memo: Option<String>,
    /// Transfer id, to make a retry safe (default: a fresh `mint:<uuid>`).
    #[serde(default)]
    pub id: Option<String>,
}

/// The body of `POST /v1/ledger/transfers/{id}/post`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostRequest {
    /// How much of the reservation to move (default: all of it).
    #[serde(default)]
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
    Ok(Book::open(&app.services.store)?)
}

/// `POST /v1/ledger/accounts`.
pub async fn open_account(
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
pub async fn account(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let account: Account = book(&app)?
        .account(&id)?
        .ok_or(LedgerError::AccountNotFound(id))?;
    Ok(Json(account.view()).into_response())
}

/// `GET /v1/ledger/accounts/{id}/transfers?limit=&cursor=`: newest first.
pub async fn history(
    State(app): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid_field(rejection.body_text()))?;
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
    Ok(Json(book(&app)?.history(&id, limit, cursor)?))
}

/// `POST /v1/ledger/transfers`.
pub async fn create_transfer(
    State(app): State<AppState>,
    JsonBody(request): JsonBody<NewTransfer>,
) -> Result<Response, ApiError> {
    request.validate()?;
    let applied = ledger::transfer(&app.services.directory, request).await?;
    Ok(created_or_replayed(applied, StatusCode::CREATED))
}

/// `GET /v1/ledger/transfers/{id}`.
pub async fn transfer(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Transfer>, ApiError> {
    let transfer = book(&app)?
        .transfer(&id)?
        .ok_or(LedgerError::TransferNotFound(id))?;
    Ok(Json(transfer))
}

/// `POST /v1/ledger/transfers/{id}/post` with `{}` or `{"amount": n}`.
pub async fn post(
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<PostRequest>,
) -> Result<Response, ApiError> {
    let applied = ledger::post(&app.services.directory, &id, request.amount).await?;
    Ok(created_or_replayed(applied, StatusCode::OK))
}

/// `POST /v1/ledger/transfers/{id}/void` (any body is ignored).
pub async fn void(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let applied = ledger::void(&app.services.directory, &id).await?;
    Ok(created_or_replayed(applied, StatusCode::OK))
}

/// `POST /v1/ledger/mint`: a transfer from `system:mint`.
pub async fn mint(
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
pub async fn audit(State(app): State<AppState>) -> Result<Json<Audit>, ApiError> {
    Ok(Json(ledger::audit(&app.services.directory).await?))
}
