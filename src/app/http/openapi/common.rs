//! What the document adds to every operation of [`crate::app::http::routes::table`]: the
//! answers that the layers in front of every handler give (authentication, permission, rate
//! limit, the browser guard, the body checks), so no handler's annotation has to repeat them and
//! none can forget them.

use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{Content, ObjectBuilder, Ref, RefOr, Response, ResponseBuilder, Type};

use crate::app::http::error::describe;
use crate::app::http::routes::{Access, Route};

/// 401 of every protected route.
const UNAUTHENTICATED: &str = "`UNAUTHENTICATED`: no bearer secret or session cookie, or one \
    that is unknown, revoked or expired.";
/// 403 of every protected route.
const FORBIDDEN: &str = "`FORBIDDEN`: the token's role lacks the route's permission \
    (`x-permission`); `CSRF_REJECTED`: a change made with the session cookie without its CSRF \
    token.";
/// 403 of every route but `/healthz` (the browser guard).
const FORBIDDEN_ORIGIN: &str = "`FORBIDDEN_ORIGIN`: a browser's `Origin` that is not this \
    service's own nor in `server.allowed_origins`.";
/// 421 of every route but `/healthz` (the browser guard).
const MISDIRECTED: &str = "`MISDIRECTED_REQUEST`: a `Host` that is not the address the service \
    is served on nor in `server.hostnames`.";
/// 429 of every protected route.
const RATE_LIMITED: &str = "`RATE_LIMITED`: the token is over `server.requests_per_sec` and \
    `burst`, or the client's address sent too many wrong secrets; retry after `Retry-After`.";
/// 413 of every route with a body.
const PAYLOAD_TOO_LARGE: &str = "`PAYLOAD_TOO_LARGE`: the body is over `server.body_bytes_max`.";
/// 415 of every route with a body.
const UNSUPPORTED_MEDIA_TYPE: &str =
    "`UNSUPPORTED_MEDIA_TYPE`: a body whose `Content-Type` is not `application/json`.";

/// `route`'s operation as the document serves it: its own answers plus the common ones, its
/// permission as `x-permission`, and no security requirement when it is open.
pub(super) fn operation(route: Route) -> Operation {
    let mut operation = route.operation;
    let protected = route.access != Access::Open;
    if protected {
        add(
            &mut operation,
            "401",
            UNAUTHENTICATED,
            Some("WWW-Authenticate"),
        );
        add(&mut operation, "403", FORBIDDEN, None);
        add(&mut operation, "429", RATE_LIMITED, Some("Retry-After"));
    } else {
        operation.security = Some(vec![SecurityRequirement::default()]);
    }
    if route.path != "/healthz" {
        add(&mut operation, "403", FORBIDDEN_ORIGIN, None);
        add(&mut operation, "421", MISDIRECTED, None);
    }
    if operation.request_body.is_some() {
        add(&mut operation, "400", describe::INVALID_JSON, None);
    }
    if operation.request_body.is_some() || route.method == HttpMethod::Post {
        add(&mut operation, "413", PAYLOAD_TOO_LARGE, None);
        add(&mut operation, "415", UNSUPPORTED_MEDIA_TYPE, None);
    }
    refuse_null_bodies(&mut operation);
    let extensions = ExtensionsBuilder::new()
        .add("x-permission", route.access.name())
        .build();
    match &mut operation.extensions {
        Some(existing) => existing.merge(extensions),
        None => operation.extensions = Some(extensions),
    }
    operation
}

/// Adds the answer `status` with the error envelope, or appends `description` to the one the
/// handler declared (unless that already names the code `description` starts with).
fn add(operation: &mut Operation, status: &str, description: &str, header: Option<&str>) {
    let responses = &mut operation.responses.responses;
    if let Some(RefOr::T(existing)) = responses.get_mut(status) {
        let code = description.split('`').nth(1).unwrap_or(description);
        if !existing.description.contains(&format!("`{code}`")) {
            existing.description = format!("{} {description}", existing.description);
        }
        ensure_error_body(existing);
        if let Some(name) = header {
            existing
                .headers
                .entry(name.to_owned())
                .or_insert_with(string_header);
        }
        return;
    }
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", error_body())
        .build();
    if let Some(name) = header {
        response.headers.insert(name.to_owned(), string_header());
    }
    responses.insert(status.to_owned(), RefOr::T(response));
}

/// A response that had no body yet gets the error envelope.
fn ensure_error_body(response: &mut Response) {
    if response.content.is_empty() {
        response
            .content
            .insert("application/json".to_owned(), error_body());
    }
}

/// The `ErrorBody` envelope as a JSON content.
fn error_body() -> Content {
    Content::new(Some(Ref::from_schema_name("ErrorBody")))
}

/// A header whose value is a string.
fn string_header() -> Header {
    Header::new(ObjectBuilder::new().schema_type(Type::String))
}

/// An optional body (`Option<T>` in a handler's annotation) is documented as `T` or `null`, but
/// `json::parse` takes only a JSON object (or, where optional, no body at all): drop the `null`.
fn refuse_null_bodies(operation: &mut Operation) {
    let Some(body) = &mut operation.request_body else {
        return;
    };
    for content in body.content.values_mut() {
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
            continue;
        };
        let mut not_null = one_of.items.iter().filter(|item| !is_null(item));
        if let (Some(only), None) = (not_null.next(), not_null.next()) {
            content.schema = Some(only.clone());
        }
    }
}

/// Whether `schema` is the `{"type": "null"}` that utoipa writes for an `Option`.
fn is_null(schema: &RefOr<Schema>) -> bool {
    serde_json::to_value(schema).ok() == Some(serde_json::json!({"type": "null"}))
}
