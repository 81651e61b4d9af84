//! The HTTP ingress (axum). Only this module knows HTTP and the JSON error shape.

pub(crate) mod auth;
pub(crate) mod diff;
pub(crate) mod error;
pub(crate) mod fleet;
pub(crate) mod fleet_factories;
pub(crate) mod github;
pub(crate) mod guard;
pub(crate) mod incidents;
pub(crate) mod json;
pub(crate) mod ledger;
pub(crate) mod notifications;
pub(crate) mod openapi;
pub(crate) mod ops;
pub(crate) mod report;
pub(crate) mod route;
pub(crate) mod routes;
pub(crate) mod session;
pub(crate) mod silences;
pub(crate) mod stream;
pub(crate) mod system;
pub(crate) mod tasks;
pub(crate) mod throttle;
pub(crate) mod ui;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use ractor::ActorRef;
use tower_http::trace::TraceLayer;

use crate::model::codes;
use crate::runtime::compass::CompassMsg;
use crate::runtime::Services;
use error::ApiError;

/// What every handler can reach. One `Arc`: axum clones the state for every middleware and
/// handler of every request, and a clone of the parts themselves is some twenty reference
/// counts, each an atomic the cores then contend on.
#[derive(Clone)]
pub(crate) struct AppState(std::sync::Arc<AppParts>);

/// The parts of [`AppState`].
pub(crate) struct AppParts {
    /// Store, directory, config.
    pub services: Services,
    /// The root of the tree: where new tasks and cancels go.
    pub compass: ActorRef<CompassMsg>,
    /// The budget of open event streams.
    pub streams: stream::StreamSlots,
    /// Tokens, permissions, rate limits.
    pub auth: auth::Auth,
}

impl AppState {
    /// The state of one service's ingress.
    pub(crate) fn new(parts: AppParts) -> Self {
        Self(std::sync::Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The whole router: every route of [`routes::table`], then the layers every request passes.
pub(crate) fn router(app: AppState) -> Router {
    let body_bytes_max = app.services.config.server.body_bytes_max;
    let routes = routes::table()
        .into_iter()
        .map(|route| (route.path, route.handler));
    routes::mount(routes)
        .route_layer(middleware::from_fn_with_state(app.clone(), auth::authorize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .layer(middleware::from_fn(guard::check))
        .layer(middleware::from_fn(record_request))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

/// Counts and times every request by its matched route pattern (bounded), never its raw path.
async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    crate::platform::metrics::http_request(
        method.as_str(),
        route.as_deref(),
        status,
        started.elapsed(),
    );
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found(codes::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// The permission check's view of [`routes::table`] (the root composes the table; `auth` below
/// it must not import the list that imports its handlers).
pub(crate) fn route_access(method: &axum::http::Method, path: &str) -> Option<route::Access> {
    routes::access(method, path)
}

/// The OpenAPI document's view of [`routes::table`] (see [`route_access`]).
pub(crate) fn route_table() -> Vec<route::Route> {
    routes::table()
}
