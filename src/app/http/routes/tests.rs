use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::routing::on;
use serde_json::Value;
use tower::ServiceExt;
use utoipa::OpenApi;

use super::{access, filter, mount, table, Access};
use crate::app::http::openapi::ApiDoc;

/// A value for every `{param}` of a pattern.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "00000000-0000-0000-0000-000000000000"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `(METHOD, path)` of every operation of the served document.
fn documented() -> BTreeSet<(String, String)> {
    let document = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

/// The router, the document and the permission lookup hold exactly the routes of the table.
#[tokio::test]
async fn router_document_and_permissions_hold_the_same_routes() {
    let routes = table();
    let declared: BTreeSet<(String, String)> = routes
        .iter()
        .map(|route| (route.http_method().to_string(), route.path.clone()))
        .collect();
    assert_eq!(declared.len(), routes.len(), "a route is declared twice");
    assert!(declared.len() > 50, "only {} routes", declared.len());
    assert_eq!(declared, documented());

    // The router built (by the real `mount`) from the table answers each declared route with
    // that route's handler, and nothing else: no pattern shadows another.
    let stand_in = mount(routes.iter().map(|route| {
        let label = format!("{} {}", route.http_method(), route.path);
        let handler = on(filter(&route.method), move || async move { label });
        (route.path.clone(), handler)
    }));
    for route in &routes {
        let method = route.http_method();
        let request = Request::builder()
            .method(method.clone())
            .uri(concrete(&route.path))
            .body(Body::empty())
            .expect("a request");
        let response = stand_in.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "{method} {}", route.path);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("a body");
        assert_eq!(body, format!("{method} {}", route.path).as_bytes());
        // The permission lookup the authorization middleware reads agrees with the table.
        assert_eq!(access(&method, &route.path), Some(route.access));
    }
    assert_eq!(access(&Method::POST, "/v1/not/routed"), None);
    assert_eq!(
        access(&Method::HEAD, "/v1/tasks"),
        access(&Method::GET, "/v1/tasks")
    );
}

/// Every protected operation states its permission and the answers of the auth layer; every
/// open one states it needs no token.
#[test]
fn every_operation_states_its_access_and_auth_answers() {
    let document = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    for route in table() {
        let method = route.http_method().as_str().to_lowercase();
        let operation = &document["paths"][&route.path][&method];
        let name = format!("{method} {}", route.path);
        assert_eq!(operation["x-permission"], route.access.name(), "{name}");
        let responses = &operation["responses"];
        if route.access == Access::Open {
            // (The session routes answer 401 and 429 of their own; the others never do.)
            assert_eq!(operation["security"], serde_json::json!([{}]), "{name}");
        } else {
            for status in ["401", "403", "429"] {
                assert!(responses.get(status).is_some(), "{name} {status}");
            }
            let forbidden = responses["403"]["description"].as_str().unwrap_or_default();
            assert!(forbidden.contains("`FORBIDDEN`"), "{name}: {forbidden}");
            assert!(
                responses["429"]["headers"].get("Retry-After").is_some(),
                "{name}"
            );
            assert_eq!(operation.get("security"), None::<&Value>, "{name}");
        }
    }
}

/// The permissions the table declares are the ones the service has always asked for.
#[test]
fn the_table_keeps_the_permissions_of_the_writes() {
    use crate::model::auth::Permission::*;
    let needs = |method: Method, path: &str| access(&method, path);
    assert_eq!(
        needs(Method::POST, "/v1/tasks"),
        Some(Access::Needs(Submit))
    );
    assert_eq!(
        needs(Method::POST, "/v1/tasks/{id}/cancel"),
        Some(Access::Needs(ActOnOwnTasks))
    );
    assert_eq!(
        needs(Method::POST, "/v1/fleet/pause"),
        Some(Access::Needs(ActOnAnyTask))
    );
    assert_eq!(
        needs(Method::POST, "/v1/ledger/transfers/{id}/void"),
        Some(Access::Needs(MoveMoney))
    );
    assert_eq!(
        needs(Method::DELETE, "/v1/tokens/{name}"),
        Some(Access::Needs(ManageTokens))
    );
    assert_eq!(needs(Method::GET, "/metrics"), Some(Access::Metrics));
    assert_eq!(needs(Method::GET, "/ui/session"), Some(Access::Open));
}
