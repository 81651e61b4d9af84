//! `GET /v1/openapi.json`: the OpenAPI document of every route, generated from the handlers'
//! `#[utoipa::path]` annotations and the `ToSchema` derives of the types they read and answer.
//! `docs/api.md` stays the prose reference; this is its machine-readable twin, and
//! `tests/it/openapi.rs` checks that it lists exactly the routes of [`super::router`].

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::error::{describe, ApiError, ErrorBody};
use crate::model::live::RunOutput;
use crate::model::ops::records::{CheckResult, DeployRecord, Incident};
use crate::model::ops::silence::Silence;
use crate::model::task::{EngineRun, Event, Task};
use crate::runtime::directory::ActorEntry;

mod common;

/// The document: every routed handler, the schemas of their bodies, one tag per area.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "glitchlab",
        version = env!("CARGO_PKG_VERSION"),
        description = "Submit tasks that AI personas plan, implement, verify and deliver into a \
            git repository; pay for them from a double-entry token ledger; deploy apps and handle \
            their incidents. Every error answers `ErrorBody`: \
            `{\"error\":{\"code\":\"...\",\"message\":\"...\"}}`. Any route answers \
            `404 NOT_FOUND` for an unknown path and `405 METHOD_NOT_ALLOWED` for a wrong method.",
    ),
    modifiers(&BearerAuth, &Routes),
    security(("bearer" = [])),
    // Schemas that untyped (`Object`) answers name in their descriptions; the rest are collected
    // from the paths.
    components(schemas(
        ErrorBody,
        Task,
        Event,
        EngineRun,
        RunOutput,
        ActorEntry,
        CheckResult,
        DeployRecord,
        Incident,
        Silence
    )),
    tags(
        (name = "tasks", description = "Submit, list, inspect and act on tasks; the report."),
        (name = "ledger", description = "The double-entry token ledger: accounts, transfers \
            (plain and two-phase), history, mint, audit. Amounts are micro-tokens."),
        (name = "ops", description = "Deploys, health checks, alerts and incidents."),
        (name = "fleet", description = "Factories on other machines that run engine and verify \
            jobs from NATS JetStream (docs/fleet.md), and the fleet-wide kill switch."),
        (name = "github", description = "GitHub's webhooks: wake-ups for pull-request \
            deliveries (docs/github.md)."),
        (name = "system", description = "Probes, the supervision tree, personas, service events \
            and this document."),
        (name = "tokens", description = "Bearer tokens and roles (admin), and the audit log of \
            every change made through the ingress. Every route but `/healthz` and `/readyz` needs \
            `Authorization: Bearer <secret>`: `401 UNAUTHENTICATED` without a valid one, \
            `403 FORBIDDEN` when the token's role lacks the route's permission."),
        (name = "ui", description = "The web control plane: its page and assets (public, no \
            data), and its session routes. A session cookie authenticates the API like a bearer \
            token; a change made with it needs the session's CSRF token in `x-csrf-token` \
            (`403 CSRF_REJECTED` without it)."),
    )
)]
pub(crate) struct ApiDoc;

/// Declares the bearer scheme every operation names (the probes are open anyway).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A token's secret (`POST /v1/tokens`; a fresh data dir writes the first admin \
                 secret to `<data_dir>/admin.token`).",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Adds every operation of [`routes::table`] (the paths are not listed here: the table is the
/// one list), with the answers common to all and the schemas they reference.
struct Routes;

impl utoipa::Modify for Routes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for route in super::route_table() {
            let components = openapi.components.get_or_insert_with(Default::default);
            for (name, schema) in &route.schemas {
                components
                    .schemas
                    .entry(name.clone())
                    .or_insert_with(|| schema.clone());
            }
            let (path, method) = (route.path.clone(), route.method.clone());
            openapi
                .paths
                .add_path_operation(path, vec![method], common::operation(route));
        }
    }
}

/// The serialized document, made on first request: it is fixed at compile time, so every request
/// answers the same bytes (a cheap clone of [`Bytes`]).
static DOCUMENT: OnceLock<Result<Bytes, String>> = OnceLock::new();

/// `GET /v1/openapi.json`: this service's OpenAPI document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi_document",
    tag = "system",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1).", body = Object),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn document() -> Result<Response, ApiError> {
    let document = DOCUMENT.get_or_init(|| {
        serde_json::to_vec(&ApiDoc::openapi())
            .map(Bytes::from)
            .map_err(|error| error.to_string())
    });
    match document {
        Ok(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], bytes.clone()).into_response())
        }
        Err(error) => Err(ApiError::internal(format!("openapi document: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use utoipa::OpenApi;

    use super::ApiDoc;
    use crate::model::task::Task;

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).expect("the document serializes")
    }

    /// Every error answer with a body references the one envelope (`/readyz`'s 503 has its own).
    #[test]
    fn error_responses_reference_error_body() {
        let document = document();
        let paths = document["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("path item") {
                let responses = operation["responses"].as_object().expect("responses");
                for (status, response) in responses {
                    let Some(content) = response.get("content") else {
                        continue;
                    };
                    if !status.starts_with(['4', '5']) || path == "/readyz" {
                        continue;
                    }
                    assert_eq!(
                        content["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    /// Every code an error answer's description names is catalogued with that answer's status:
    /// the OpenAPI document and `model::codes` (hence `docs/api.md`) tell the same story.
    #[test]
    fn error_descriptions_name_catalogued_codes_with_their_status() {
        let document = document();
        let paths = document["paths"].as_object().expect("paths");
        let mut checked = 0;
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("path item") {
                let responses = operation["responses"].as_object().expect("responses");
                for (status, response) in responses {
                    let Ok(status) = status.parse::<u16>() else {
                        continue;
                    };
                    let description = response["description"].as_str().unwrap_or_default();
                    let named = description.split('`').skip(1).step_by(2).filter(|word| {
                        word.len() > 2
                            && word.contains('_')
                            && word.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    });
                    for name in named {
                        let code = crate::model::codes::lookup(name).unwrap_or_else(|| {
                            panic!("{method} {path} {status}: {name} is not catalogued")
                        });
                        assert!(
                            status < 400 || code.answers_with(status),
                            "{method} {path} {status}: {name} is catalogued with {:?}",
                            code.statuses
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 50, "only {checked} codes named in the document");
    }

    /// The `Task` schema names exactly the keys a served task has, and requires the ones it
    /// always has.
    #[test]
    fn task_schema_matches_a_serialized_task() {
        let document = document();
        let schema = &document["components"]["schemas"]["Task"];
        let properties = schema["properties"].as_object().expect("properties");
        let task = serde_json::to_value(Task::for_test("t", "d")).expect("task");
        let task = task.as_object().expect("object");
        for key in task.keys() {
            assert!(properties.contains_key(key), "{key} is not in the schema");
        }
        for required in schema["required"].as_array().expect("required") {
            let key = required.as_str().expect("name");
            assert!(task.contains_key(key), "{key} is required but not served");
        }
    }

    /// The limits the document states are the constants the code checks (a schema attribute
    /// takes only a literal).
    #[test]
    fn the_ledger_limits_are_the_codes() {
        use crate::model::ledger::ID_BYTES_MAX;
        use crate::storage::ledger::HISTORY_LIMIT_MAX;
        let document = document();
        let schemas = &document["components"]["schemas"];
        for (schema, field) in [
            ("NewAccount", "id"),
            ("NewTransfer", "id"),
            ("NewTransfer", "debit_account"),
            ("NewTransfer", "credit_account"),
            ("MintRequest", "account"),
        ] {
            let property = &schemas[schema]["properties"][field];
            assert_eq!(property["maxLength"], ID_BYTES_MAX, "{schema}.{field}");
            assert_eq!(property["minLength"], 1, "{schema}.{field}");
        }
        let parameters =
            &document["paths"]["/v1/ledger/accounts/{id}/transfers"]["get"]["parameters"];
        let limit = parameters
            .as_array()
            .expect("parameters")
            .iter()
            .find(|parameter| parameter["name"] == "limit")
            .expect("a limit parameter");
        assert_eq!(limit["in"], "query");
        assert_eq!(limit["schema"]["maximum"], HISTORY_LIMIT_MAX);
    }
}
