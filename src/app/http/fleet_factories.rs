//! `POST /v1/fleet/factories` (admin): issues a factory its key (issue 30). Only a factory whose
//! name was issued here, holding the key answered once here, can register, claim or answer.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{describe, ApiError, ErrorBody};
use super::json::JsonBody;
use super::AppState;
use crate::model::auth::Principal;
use crate::model::codes;
use crate::model::fleet::trust::{
    check_factory_name, new_factory_key, FactoryKey, FACTORY_KEY_ENV,
};
use crate::storage::fleet_keys::{self, FactoryRegistration};

/// The body of `POST /v1/fleet/factories`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewFactoryRequest {
    /// The factory's unique name (its `--name`): 1 to 64 of `A-Z a-z 0-9 - _`.
    pub(crate) name: String,
}

/// `POST /v1/fleet/factories`.
#[utoipa::path(
    post,
    path = "/v1/fleet/factories",
    tag = "fleet",
    request_body = NewFactoryRequest,
    responses(
        (status = 201, description = "`{\"name\", \"key\", \"key_env\"}`: the factory's key, shown \
            only here (the service keeps a derivation of it). Start the factory with the key in \
            the variable `key_env` names (docs/fleet.md).", body = Object),
        (status = 409, description = "`FACTORY_EXISTS`: a factory of that name was issued a key.",
            body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: a bad name.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn create_factory(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    JsonBody(request): JsonBody<NewFactoryRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_factory_name(&request.name).map_err(|e| ApiError::invalid_field(format!("name: {e}")))?;
    let key = new_factory_key().ok_or_else(|| ApiError::internal("no randomness for a key"))?;
    let registration = FactoryRegistration {
        name: request.name.clone(),
        derived_key: FactoryKey::derive(&key).to_hex(),
        created_at: Utc::now(),
        created_by: caller.name.clone(),
    };
    if !fleet_keys::create(&app.services.store, registration).await? {
        return Err(ApiError::conflict(
            codes::FACTORY_EXISTS,
            format!("a factory named `{}` exists", request.name),
        ));
    }
    tracing::info!(factory = %request.name, by = %caller.name, "fleet factory key issued");
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": request.name, "key": key, "key_env": FACTORY_KEY_ENV})),
    ))
}
