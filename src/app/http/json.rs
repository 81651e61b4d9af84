//! Extractors with this service's error shape, where axum's own answer in plain text: a body over
//! the limit is 413 `PAYLOAD_TOO_LARGE`, text that is not JSON is 400 `INVALID_JSON`, JSON of the
//! wrong shape and a query string that does not parse are 422 `INVALID_FIELD` — never a 500, and
//! never a body without the error envelope, for bad input.
//!
//! Every body is a JSON object: serde would read a struct from a JSON array too, field by field
//! in declaration order (`["a","b",10,1]` was a ledger transfer), so anything else that is
//! JSON is refused 422 before it is decoded.

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

/// Parses a JSON body: 400 when it is not JSON, 422 when it is JSON but not an object, or an
/// object of the wrong shape.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let not_json = |error: serde_json::Error| match error.classify() {
        serde_json::error::Category::Data => ApiError::invalid_field(error.to_string()),
        _ => ApiError::invalid_json(format!("body is not valid JSON: {error}")),
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        // JSON, but not an object: say what it is. Not JSON at all: say why.
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(not_json)?;
        return Err(ApiError::invalid_field(format!(
            "the body must be a JSON object, not {}",
            kind_of(&value)
        )));
    }
    serde_json::from_slice(bytes).map_err(not_json)
}

/// What a JSON value is, for a message.
fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use crate::model::codes;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Pair {
        a: String,
        b: u64,
    }

    fn answer(body: &str) -> (u16, &'static str) {
        parse::<Pair>(body.as_bytes())
            .expect_err("refused")
            .status_and_code()
    }

    /// serde reads a struct from an array too (field by field); a body must be an object.
    #[test]
    fn only_an_object_is_a_body() {
        assert!(parse::<Pair>(br#" {"a": "x", "b": 1}"#).is_ok());
        for body in [r#"["x", 1]"#, "null", "1", r#""x""#, "true", " [] "] {
            assert_eq!(answer(body), (422, codes::INVALID_FIELD), "{body}");
        }
        for body in ["", "  ", "[not json", "{not json", "nul"] {
            assert_eq!(answer(body), (400, codes::INVALID_JSON), "{body}");
        }
        assert_eq!(answer(r#"{"a": 1}"#), (422, codes::INVALID_FIELD));
    }
}
