//! A route's description: who may call it ([`Access`]) and everything the router, the
//! permission check and the OpenAPI document need of it ([`Route`]). Types only: the list of
//! routes is `routes::table`, and the modules that read it (`auth`, `openapi`) reach it through
//! the `http` root, so no module below the root imports the table and is imported by it.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;

use super::AppState;
use crate::model::auth::Permission;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone: the probes, the web page and its assets, and the session routes (which check
    /// their callers themselves).
    Open,
    /// `/metrics`: open with `server.metrics_public`, else like `Needs(Read)`.
    Metrics,
    /// A token or session whose role grants the permission.
    Needs(Permission),
}

impl Access {
    /// The permission a request needs, given whether metrics are public.
    pub(crate) fn permission(self, metrics_public: bool) -> Option<Permission> {
        match self {
            Access::Open => None,
            Access::Metrics if metrics_public => None,
            Access::Metrics => Some(Permission::Read),
            Access::Needs(permission) => Some(permission),
        }
    }

    /// The name the OpenAPI document gives it (`x-permission`).
    pub(crate) fn name(self) -> String {
        match self {
            Access::Open => "open".to_owned(),
            Access::Metrics => "read (open with server.metrics_public)".to_owned(),
            Access::Needs(permission) => permission.to_string(),
        }
    }
}

/// One route: everything the router, the permission check and the document need.
pub(crate) struct Route {
    /// The one method it answers (`GET` also answers `HEAD`).
    pub method: HttpMethod,
    /// The full path pattern, `{param}` style (as `MatchedPath` reports it).
    pub path: String,
    /// Who may call it.
    pub access: Access,
    /// The handler, routed on `method`.
    pub handler: MethodRouter<AppState>,
    /// Its OpenAPI operation, from the handler's `#[utoipa::path]`.
    pub operation: Operation,
    /// The schemas its operation references.
    pub schemas: Vec<(String, RefOr<Schema>)>,
}

impl Route {
    /// The routes of `handler`, whose `#[utoipa::path]` made `P`: one per method it names.
    pub(crate) fn of<P, H, T>(access: Access, handler: H) -> Vec<Route>
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
        H: Handler<T, AppState>,
        T: 'static,
    {
        let mut schemas = Vec::new();
        P::schemas(&mut schemas);
        P::methods()
            .into_iter()
            .map(|method| Route {
                handler: on(filter(&method), handler.clone()),
                method,
                path: P::path(),
                access,
                operation: P::operation(),
                schemas: schemas.clone(),
            })
            .collect()
    }

    /// Its method as axum's request sees it.
    pub(crate) fn http_method(&self) -> Method {
        match self.method {
            HttpMethod::Get => Method::GET,
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
            HttpMethod::Delete => Method::DELETE,
            HttpMethod::Options => Method::OPTIONS,
            HttpMethod::Head => Method::HEAD,
            HttpMethod::Patch => Method::PATCH,
            HttpMethod::Trace => Method::TRACE,
        }
    }
}

/// The axum method filter of an OpenAPI method.
pub(crate) fn filter(method: &HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}
