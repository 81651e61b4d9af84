//! The HTTP ingress (axum). Only this module knows HTTP and the JSON error shape.

pub(crate) mod auth;
pub(crate) mod diff;
pub(crate) mod error;
pub(crate) mod fleet;
pub(crate) mod guard;
pub(crate) mod incidents;
pub(crate) mod json;
pub(crate) mod ledger;
pub(crate) mod notifications;
pub(crate) mod openapi;
pub(crate) mod ops;
pub(crate) mod report;
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
use axum::routing::{delete, get, post};
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

/// The whole router.
pub(crate) fn router(app: AppState) -> Router {
    let body_bytes_max = app.services.config.server.body_bytes_max;
    let v1 = Router::new()
        .route("/tasks", post(tasks::submit).get(tasks::list))
        .route("/tasks/{id}", get(tasks::get))
        .route("/tasks/{id}/events", get(tasks::events))
        .route("/tasks/{id}/events/stream", get(stream::task_events))
        .route("/tasks/{id}/runs", get(tasks::runs))
        .route("/tasks/{id}/diff", get(diff::diff))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/approve", post(tasks::approve))
        .route("/tasks/{id}/reject", post(tasks::reject))
        .route("/tasks/{id}/retry", post(tasks::retry))
        .route("/ledger/accounts", post(ledger::open_account))
        .route("/ledger/accounts/{id}", get(ledger::account))
        .route("/ledger/accounts/{id}/transfers", get(ledger::history))
        .route("/ledger/transfers", post(ledger::create_transfer))
        .route("/ledger/transfers/{id}", get(ledger::transfer))
        .route("/ledger/transfers/{id}/post", post(ledger::post))
        .route("/ledger/transfers/{id}/void", post(ledger::void))
        .route("/ledger/mint", post(ledger::mint))
        .route("/ledger/audit", get(ledger::audit))
        .route("/actors", get(system::actors))
        .route("/personas", get(system::personas))
        .route("/events", get(system::service_events))
        .route("/events/stream", get(stream::all_events))
        .route("/report", get(report::report))
        .route("/deploys", post(ops::create_deploy).get(ops::list_deploys))
        .route("/deploys/{id}", get(ops::get_deploy))
        .route("/deploys/{id}/approve", post(ops::approve_deploy))
        .route("/deploys/{id}/reject", post(ops::reject_deploy))
        .route("/checks", get(ops::list_checks))
        .route("/fleet", get(fleet::fleet))
        .route("/fleet/pause", post(fleet::pause))
        .route("/fleet/resume", post(fleet::resume))
        .route("/fleet/factories/{name}/drain", post(fleet::drain_factory))
        .route("/fleet/factories/{name}/pause", post(fleet::pause_factory))
        .route(
            "/fleet/factories/{name}/resume",
            post(fleet::resume_factory),
        )
        .route("/alerts", post(ops::alerts))
        .route("/incidents", get(ops::list_incidents))
        .route("/incidents/{id}", get(ops::get_incident))
        .route("/incidents/{id}/approve", post(ops::approve_incident))
        .route("/incidents/{id}/reject", post(ops::reject_incident))
        .route("/incidents/{id}/ack", post(incidents::ack_incident))
        .route("/incidents/{id}/resolve", post(incidents::resolve_incident))
        .route("/incidents/{id}/snooze", post(incidents::snooze_incident))
        .route(
            "/silences",
            post(silences::create_silence).get(silences::list_silences),
        )
        .route("/silences/{id}", delete(silences::expire_silence))
        .route("/notifications", get(notifications::list_notifications))
        .route("/openapi.json", get(openapi::document))
        .route("/tokens", post(auth::create_token).get(auth::list_tokens))
        .route("/tokens/{name}", delete(auth::revoke_token))
        .route("/audit", get(auth::audit));
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/ui/login", post(ui::login))
        .route("/ui/logout", post(ui::logout))
        .route("/ui/session", get(ui::current))
        .nest("/v1", v1)
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
