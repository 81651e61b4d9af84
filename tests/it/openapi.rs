//! `GET /v1/openapi.json` against the real service: an OpenAPI 3 document that lists exactly the
//! routes of `src/app/http/mod.rs`, each of which the service answers (never the router's fallback)
//! with a status the document names.

use serde_json::{json, Value};

use crate::helpers::{Options, Service};

/// The route table's source (`src/app/http/routes.rs`): the router, the permission lookup and
/// the document are all built from its `route!(access, module::handler)` entries, one operation
/// each.
const TABLE_SOURCE: &str = include_str!("../../src/app/http/routes.rs");

/// Stands in for every path parameter: a UUID no record has (and a valid ledger id).
const DUMMY_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The methods an operation of the document may have.
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The `module::handler` of every `route!(access, module::handler)` entry of `source`: a line
/// that starts with it (not a comment naming it, nor the macro's own `$`-pattern definition).
fn handlers_in_table(source: &str) -> Vec<String> {
    let mut handlers = Vec::new();
    for line in source.lines().map(str::trim) {
        if !line.starts_with("route!(") || line.contains('$') {
            continue;
        }
        let call = balanced_call(&line["route!".len()..]);
        let handler = call
            .trim_matches(|c| c == '(' || c == ')')
            .rsplit(',')
            .next()
            .unwrap_or_default()
            .trim();
        assert!(
            handler.contains("::"),
            "a table entry without a handler: {call}"
        );
        handlers.push(handler.to_owned());
    }
    handlers
}

/// `text` starts with `(`: the text up to and including the matching `)`.
fn balanced_call(text: &str) -> &str {
    let mut depth = 0usize;
    for (index, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..=index];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in {text}");
}

/// Every `(METHOD, path)` operation of the document.
fn operations(document: &Value) -> Vec<(String, String)> {
    let paths = document["paths"].as_object().expect("paths is an object");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().expect("a path item is an object").keys() {
            assert!(METHODS.contains(&method.as_str()), "{method} {path}");
            operations.push((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

/// `/v1/tasks/{id}/cancel` → `/v1/tasks/<DUMMY_ID>/cancel`.
fn with_dummy_ids(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                DUMMY_ID
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `GET url` of an event stream: its status, and its error body if it is not a stream; the
/// response is dropped without reading a stream's (endless) body.
async fn stream_head(service: &Service, url: &str) -> (u16, Value) {
    let response = crate::helpers::client()
        .get(format!("{}{url}", service.base))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    if content_type.starts_with("text/event-stream") {
        assert_eq!(status, 200, "{url}");
        return (status, Value::Null);
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

#[test]
fn the_table_parser_finds_every_entry() {
    let source = r#"
        /// `route!(access, module::handler)`: one entry.
        macro_rules! route { ($access:expr, $module:ident :: $handler:ident) => {{}} }
        [
            route!(Needs(Submit), tasks::submit),
            route!(Open, system::healthz),
            route!(Needs(Read), tasks::events),
        ]
    "#;
    assert_eq!(
        handlers_in_table(source),
        vec!["tasks::submit", "system::healthz", "tasks::events"]
    );
}

#[tokio::test]
async fn the_document_lists_every_route_and_every_operation_answers() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;

    let (status, document) = service.get("/v1/openapi.json").await;
    assert_eq!(status, 200, "{document}");
    let version = document["openapi"].as_str().expect("an `openapi` version");
    assert!(version.starts_with("3."), "OpenAPI 3.x, got {version}");
    assert_eq!(document["info"]["title"], "glitchlab");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));

    // Exactly the routes of the table: one documented operation per entry (each handler answers
    // one method; `routes::tests` checks the router, the document and the permissions agree).
    let documented = operations(&document);
    let registered = handlers_in_table(TABLE_SOURCE);
    assert!(
        registered.len() > 50,
        "the table parser found {registered:?}"
    );
    let unique: std::collections::BTreeSet<&String> = registered.iter().collect();
    assert_eq!(unique.len(), registered.len(), "a handler is routed twice");
    assert_eq!(
        documented.len(),
        registered.len(),
        "documented {documented:?}\nregistered {registered:?}"
    );

    // Every operation is routed: the answer is never the fallback, and its status is documented.
    for (method, path) in &documented {
        let url = with_dummy_ids(path);
        let operation = &document["paths"][path][method.to_lowercase()];
        let streams = operation["responses"]["200"]["content"]
            .get("text/event-stream")
            .is_some();
        let (status, body) = match method.as_str() {
            // An event stream never ends by itself: its head is the answer.
            "GET" if streams => stream_head(&service, &url).await,
            "GET" => service.get(&url).await,
            // An empty object: every POST refuses it (422) or finds no record (404); nothing is
            // created.
            "POST" => service.post(&url, &json!({})).await,
            // A dummy name: nothing of that name exists to delete.
            "DELETE" => service.delete(&url).await,
            other => panic!("no client call for {other}"),
        };
        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            !(status == 404 && code == "NOT_FOUND") && status != 405,
            "{method} {url} hit the router's fallback: {status} {body}"
        );
        let responses = &operation["responses"];
        assert!(
            responses.get(status.to_string()).is_some(),
            "{method} {url} answered {status} {body}, which the document does not list: {responses}"
        );
    }

    // Nothing was created by the POSTs above.
    let (_, tasks) = service.get("/v1/tasks").await;
    assert_eq!(tasks["tasks"], json!([]), "{tasks}");
    let (_, deploys) = service.get("/v1/deploys").await;
    assert_eq!(deploys["deploys"], json!([]), "{deploys}");
    let (_, incidents) = service.get("/v1/incidents").await;
    assert_eq!(incidents["incidents"], json!([]), "{incidents}");
}

/// Without a token every protected operation answers the `401 UNAUTHENTICATED` (with its
/// `WWW-Authenticate`) the document states, and every open one answers without asking for one
/// (the session routes aside, which check a cookie themselves), with a documented status.
#[tokio::test]
async fn operations_answer_an_anonymous_caller_as_documented() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start(root.path()).await;
    let (status, document) = service.get("/v1/openapi.json").await;
    assert_eq!(status, 200, "{document}");
    let anonymous = reqwest::Client::new();
    let mut protected = 0;
    for (method, path) in operations(&document) {
        let operation = &document["paths"][&path][method.to_lowercase()];
        let permission = operation["x-permission"].as_str().unwrap_or_default();
        assert!(
            !permission.is_empty(),
            "{method} {path} states no x-permission"
        );
        let url = format!("{}{}", service.base, with_dummy_ids(&path));
        let request = match method.as_str() {
            "GET" => anonymous.get(&url),
            "POST" => anonymous
                .post(&url)
                .header("content-type", "application/json")
                .body("{}"),
            "DELETE" => anonymous.delete(&url),
            other => panic!("no client call for {other}"),
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let challenge = response.headers().get("www-authenticate").cloned();
        let streams = response
            .headers()
            .get("content-type")
            .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
        let body: Value = if streams {
            Value::Null
        } else {
            response.json().await.unwrap_or(Value::Null)
        };
        let documented = operation["responses"].get(status.to_string()).is_some();
        assert!(
            documented,
            "{method} {path} answered {status} {body}, not documented"
        );
        if permission == "open" {
            // The GitHub webhook needs no token but checks the body's signature itself: unsigned,
            // it is refused with its own code, never the bearer challenge.
            if path == "/v1/github/webhook" {
                assert_eq!(status, 401, "{method} {path}: {body}");
                assert_eq!(body["error"]["code"], "WEBHOOK_SIGNATURE", "{body}");
                assert!(challenge.is_none(), "{method} {path}: no bearer challenge");
            } else if !path.starts_with("/ui/") {
                assert_ne!(status, 401, "{method} {path} is open: {body}");
            }
            continue;
        }
        protected += 1;
        assert_eq!(
            status, 401,
            "{method} {path} ({permission}) without a token: {body}"
        );
        assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{method} {path}");
        assert_eq!(
            challenge.as_ref().and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{method} {path}"
        );
        let header = &operation["responses"]["401"]["headers"]["WWW-Authenticate"];
        assert!(
            header.is_object(),
            "{method} {path}: 401 without its header"
        );
    }
    assert!(protected > 45, "only {protected} protected operations");
}
