//! Extractors with this service's error shape, where axum's own answer in plain text: a body over
//! the limit is 413 `PAYLOAD_TOO_LARGE`, text that is not JSON is 400 `INVALID_JSON`, JSON of the
//! wrong shape and a query string that does not parse are 422 `INVALID_FIELD` — never a 500, and
//! never a body without the error envelope, for bad input.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::model::codes;

/// A parsed JSON request body.
pub(crate) struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(request, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// The request body as bytes, for handlers whose body is optional (empty or JSON).
pub(crate) struct RawBody(pub Bytes);

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        codes::PAYLOAD_TOO_LARGE,
                        "request body is over the size limit",
                    )
                } else {
                    ApiError::invalid_json(format!("could not read the body: {rejection}"))
                }
            })
    }
}

/// The query string parsed into `T`; one that does not parse is 422 `INVALID_FIELD`.
pub(crate) struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(query)| QueryParams(query))
            .map_err(|rejection| ApiError::invalid_field(rejection.body_text()))
    }
}

/// Parses a JSON body: 400 when it is not JSON, 422 when it is JSON of the wrong shape.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => ApiError::invalid_field(error.to_string()),
        _ => ApiError::invalid_json(format!("body is not valid JSON: {error}")),
    })
}
