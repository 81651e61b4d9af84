//! A JSON body extractor with this service's error shape: a body over the limit is 413, text that
//! is not JSON is 400, JSON of the wrong shape is 422 — never a 500 for bad input.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A parsed JSON request body.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "PAYLOAD_TOO_LARGE",
                        "request body is over the size limit",
                    )
                } else {
                    ApiError::invalid_json(format!("could not read the body: {rejection}"))
                }
            })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body: 400 when it is not JSON, 422 when it is JSON of the wrong shape.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => ApiError::invalid_field(error.to_string()),
        _ => ApiError::invalid_json(format!("body is not valid JSON: {error}")),
    })
}
