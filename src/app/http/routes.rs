//! Every route, declared once: [`table`] names each handler with the access it needs; the
//! handler's `#[utoipa::path]` gives its method, path and OpenAPI operation. The router
//! ([`super::router`]), the permission check ([`access`], read by `auth::authorize`) and the
//! OpenAPI document (`openapi::ApiDoc`) are all built from this one list, so a route cannot exist
//! in one of them and not the others.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::http::Method;
use axum::routing::MethodRouter;
use axum::Router;

pub(crate) use super::route::{Access, Route};
use super::{
    auth, diff, fleet, fleet_factories, github, incidents, ledger, notifications, openapi, ops,
    report, silences, stream, system, tasks, ui,
};
use crate::model::auth::Permission;

/// `route!(access, module::handler)`: the routes of a handler annotated with `#[utoipa::path]`.
macro_rules! route {
    ($access:expr, $module:ident :: $handler:ident) => {
        paste::paste! {
            Route::of::<$module::[<__path_ $handler>], _, _>($access, $module::$handler)
        }
    };
}

/// Every route of the service. Add a route here and only here (plus its handler's
/// `#[utoipa::path]`); `routes::tests` checks the router, the document and the permissions agree.
pub(crate) fn table() -> Vec<Route> {
    use Access::{Metrics, Needs, Open};
    use Permission::{
        ActOnAnyTask, ActOnOwnTasks, Alert, Approve, Deploy, ManageAccounts, ManageTokens, Mint,
        MoveMoney, Read, Submit,
    };
    [
        route!(Needs(Submit), tasks::submit),
        route!(Needs(Read), tasks::list),
        route!(Needs(Read), tasks::get),
        route!(Needs(Read), tasks::events),
        route!(Needs(Read), stream::task_events),
        route!(Needs(Read), tasks::runs),
        route!(Needs(Read), diff::diff),
        route!(Needs(ActOnOwnTasks), tasks::cancel),
        route!(Needs(Approve), tasks::approve),
        route!(Needs(Approve), tasks::reject),
        route!(Needs(ActOnOwnTasks), tasks::retry),
        route!(Needs(ManageAccounts), ledger::open_account),
        route!(Needs(Read), ledger::account),
        route!(Needs(Read), ledger::history),
        route!(Needs(MoveMoney), ledger::create_transfer),
        route!(Needs(Read), ledger::transfer),
        route!(Needs(MoveMoney), ledger::post),
        route!(Needs(MoveMoney), ledger::void),
        route!(Needs(Mint), ledger::mint),
        route!(Needs(Read), ledger::audit),
        route!(Needs(Read), system::actors),
        route!(Needs(Read), system::personas),
        route!(Needs(Read), system::service_events),
        route!(Needs(Read), stream::all_events),
        route!(Needs(Read), report::report),
        route!(Needs(Deploy), ops::create_deploy),
        route!(Needs(Read), ops::list_deploys),
        route!(Needs(Read), ops::get_deploy),
        route!(Needs(Approve), ops::approve_deploy),
        route!(Needs(Approve), ops::reject_deploy),
        route!(Needs(Read), ops::list_checks),
        route!(Needs(Read), fleet::fleet),
        route!(Needs(ActOnAnyTask), fleet::pause),
        route!(Needs(ActOnAnyTask), fleet::resume),
        route!(Needs(ActOnAnyTask), fleet::drain_factory),
        route!(Needs(ActOnAnyTask), fleet::pause_factory),
        route!(Needs(ActOnAnyTask), fleet::resume_factory),
        route!(Needs(ManageTokens), fleet_factories::create_factory),
        route!(Needs(Alert), ops::alerts),
        route!(Needs(Read), ops::list_incidents),
        route!(Needs(Read), ops::get_incident),
        route!(Needs(Approve), ops::approve_incident),
        route!(Needs(Approve), ops::reject_incident),
        route!(Needs(Approve), incidents::ack_incident),
        route!(Needs(Approve), incidents::resolve_incident),
        route!(Needs(Approve), incidents::snooze_incident),
        route!(Needs(Approve), silences::create_silence),
        route!(Needs(Read), silences::list_silences),
        route!(Needs(Approve), silences::expire_silence),
        route!(Needs(Read), notifications::list_notifications),
        route!(Needs(Read), openapi::document),
        route!(Needs(ManageTokens), auth::create_token),
        route!(Needs(ManageTokens), auth::list_tokens),
        route!(Needs(ManageTokens), auth::revoke_token),
        route!(Needs(Read), auth::audit),
        // No bearer token: GitHub signs the body (`X-Hub-Signature-256`), checked by the handler.
        route!(Open, github::webhook),
        route!(Open, system::healthz),
        route!(Open, system::readyz),
        route!(Metrics, system::metrics),
        route!(Open, ui::index),
        route!(Open, ui::script),
        route!(Open, ui::style),
        route!(Open, ui::login),
        route!(Open, ui::logout),
        route!(Open, ui::current),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A router of `routes` (path pattern, handler); the one place routes are mounted, so the real
/// router and the tests' stand-in route alike.
pub(crate) fn mount<S>(routes: impl IntoIterator<Item = (String, MethodRouter<S>)>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    routes
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(&path, handler)
        })
}

/// `(method, path pattern)` → access, built once from [`table`].
static ACCESS: OnceLock<HashMap<(Method, String), Access>> = OnceLock::new();

/// The access of the route `path` (a matched pattern) answers `method` with; `HEAD` is `GET`'s.
/// `None` for a pair the table does not have.
pub(crate) fn access(method: &Method, path: &str) -> Option<Access> {
    let table = ACCESS.get_or_init(|| {
        table()
            .into_iter()
            .map(|route| ((route.http_method(), route.path), route.access))
            .collect()
    });
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    table.get(&(method.clone(), path.to_owned())).copied()
}

#[cfg(test)]
mod tests;
