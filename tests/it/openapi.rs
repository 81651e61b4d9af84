//! `GET /v1/openapi.json` against the real service: an OpenAPI 3 document that lists exactly the
//! routes of `src/app/http/mod.rs`, each of which the service answers (never the router's fallback)
//! with a status the document names.

use serde_json::{json, Value};

use crate::helpers::{Options, Service};

/// The router's source: every route registered there must be in the document, and nothing else.
const ROUTER_SOURCE: &str = include_str!("../../src/app/http/mod.rs");

/// Stands in for every path parameter: a UUID no record has (and a valid ledger id).
const DUMMY_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The method routers axum offers; any of them inside a `.route(...)` is one operation.
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The `(METHOD, path)` of every `.route("path", method(handler).method(handler))` in `source`,
/// paths as written there (relative to where the router is nested).
fn routes_in_source(source: &str) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for (start, _) in source.match_indices(".route(") {
        let call = balanced_call(&source[start + ".route".len()..]);
        let path = call
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("a route without a path literal: {call}"));
        for method in METHODS {
            for (at, _) in call.match_indices(&format!("{method}(")) {
                let before = call[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue; // part of a longer name (`tasks::get(` is not a method router).
                }
                routes.push((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    routes
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
fn the_source_parser_finds_every_method_of_a_route() {
    let source = r#"
        Router::new()
            .route("/a", post(x::submit).get(x::list))
            .route("/a/{id}", get(x::get))
            .nest("/v1", v1)
    "#;
    assert_eq!(
        routes_in_source(source),
        vec![
            ("GET".to_owned(), "/a".to_owned()),
            ("POST".to_owned(), "/a".to_owned()),
            ("GET".to_owned(), "/a/{id}".to_owned()),
        ]
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

    // Exactly the routes of the router: one documented operation per registered route + method.
    let documented = operations(&document);
    let registered = routes_in_source(ROUTER_SOURCE);
    assert!(
        registered.len() > 30,
        "the router parser found {registered:?}"
    );
    assert_eq!(
        documented.len(),
        registered.len(),
        "documented {documented:?}\nregistered {registered:?}"
    );
    for (method, path) in &registered {
        let nested = format!("/v1{path}");
        let found = documented
            .iter()
            .filter(|(m, p)| m == method && (p == path || *p == nested))
            .count();
        assert_eq!(found, 1, "{method} {path} is not documented exactly once");
    }

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
