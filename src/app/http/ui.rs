//! The web control plane: one page at `/` (plain HTML, CSS and JavaScript under
//! `src/app/http/ui/`, embedded in the binary at compile time, so there is no Node toolchain in
//! the build and nothing to deploy beside the binary) that shows the supervision tree, the task
//! board, a task's timeline, runs, live output and diff, the ledger and ops, live over the SSE
//! streams, and acts through the same JSON API as every other client.
//!
//! The page and its assets hold no data and need no token. When the ingress has tokens
//! (`server.auth = "on"`), the page logs in with a token secret (`POST /ui/login`), which opens a
//! session (`app::http::session`): an HttpOnly, `SameSite=Strict` cookie the API accepts in place
//! of the bearer header, plus a CSRF token the page sends with every change.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::describe;
use super::error::{ApiError, ErrorBody};
use super::guard::Arrival;
use super::json::JsonBody;
use super::session;
use super::AppState;
use crate::model::auth::{Principal, Role};
use crate::model::codes;

/// The page.
const INDEX_HTML: &str = include_str!("ui/index.html");
/// Its script.
const APP_JS: &str = include_str!("ui/app.js");
/// Its style sheet.
const APP_CSS: &str = include_str!("ui/app.css");

/// What the page may load and talk to: only this origin, no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "deny"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the web control plane.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "ui_page",
    tag = "ui",
    security(()),
    responses((status = 200, description = "The web control plane's page (HTML; no data in it).",
        content_type = "text/html"))
)]
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`: the page's script.
#[utoipa::path(
    get,
    path = "/ui/app.js",
    operation_id = "ui_script",
    tag = "ui",
    security(()),
    responses((status = 200, description = "The page's script.",
        content_type = "text/javascript"))
)]
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/app.css`: the page's style sheet.
#[utoipa::path(
    get,
    path = "/ui/app.css",
    operation_id = "ui_style",
    tag = "ui",
    security(()),
    responses((status = 200, description = "The page's style sheet.", content_type = "text/css"))
)]
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The body of `POST /ui/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    /// A token's secret (`glt_…`).
    pub token: String,
}

/// Who the page is logged in as, and what it must send with every change.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionView {
    /// Whether the ingress has tokens; when not, every caller is the admin `anonymous` and there
    /// is no session.
    pub auth_required: bool,
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Accounts its tasks may charge.
    pub accounts: Vec<String>,
    /// Send as the header `x-csrf-token` with every request that changes something; absent
    /// without a session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
}

impl SessionView {
    fn new(auth_required: bool, principal: Principal, csrf: Option<String>) -> Self {
        Self {
            auth_required,
            name: principal.name,
            role: principal.role,
            accounts: principal.accounts,
            csrf,
        }
    }
}

/// Whether cookies must be `Secure`: the service serves TLS.
fn secure(app: &AppState) -> bool {
    app.services.config.server.tls_cert.is_some()
}

/// `POST /ui/login`: exchanges a token secret for a session cookie.
#[utoipa::path(
    post,
    path = "/ui/login",
    operation_id = "ui_login",
    tag = "ui",
    security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in: `Set-Cookie: glitchlab_session=…; HttpOnly; \
            SameSite=Strict` (and `Secure` under TLS), valid for 12 hours or until logout or the \
            token's revocation; the body has the CSRF token.", body = SessionView),
        (status = 400, description = describe::INVALID_JSON, body = ErrorBody),
        (status = 401, description = "`UNAUTHENTICATED`: an unknown, revoked or expired token.",
            body = ErrorBody),
        (status = 413, description = describe::PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: no `token`, or another field.",
            body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`: too many wrong secrets from this address \
            (`server.auth_failures_max`); header `Retry-After`.", body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
        (status = 503, description = "`TOO_MANY_SESSIONS`: 1024 web sessions of other \
            principals are open.", body = ErrorBody),
    )
)]
pub(crate) async fn login(
    State(app): State<AppState>,
    Extension(arrival): Extension<Arrival>,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    if !app.auth.required() {
        return Ok(Json(SessionView::new(false, Principal::anonymous(), None)).into_response());
    }
    let peer = arrival.peer.ip().to_canonical();
    let (principal, opened) = app.auth.log_in(request.token.trim(), peer)?;
    tracing::info!(token = %principal.name, "web login");
    let cookie = HeaderValue::from_str(&session::set_cookie(&opened.id, secure(&app)))
        .map_err(|error| ApiError::internal(format!("session cookie: {error}")))?;
    let view = SessionView::new(true, principal, Some(opened.csrf));
    Ok(([(header::SET_COOKIE, cookie)], Json(view)).into_response())
}

/// `GET /ui/session`: who the page's session is (and its CSRF token), so a reloaded page need not
/// log in again. Another origin cannot read the answer (no CORS), so the token stays the page's.
#[utoipa::path(
    get,
    path = "/ui/session",
    operation_id = "ui_session",
    tag = "ui",
    security(()),
    responses(
        (status = 200, description = "The session (or, without `server.auth`, the anonymous \
            admin).", body = SessionView),
        (status = 401, description = "`UNAUTHENTICATED`: no session cookie, or its session is \
            over.", body = ErrorBody),
    )
)]
pub(crate) async fn current(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if !app.auth.required() {
        return Json(SessionView::new(false, Principal::anonymous(), None)).into_response();
    }
    match session::cookie(&headers).and_then(|id| app.auth.session(id)) {
        Some((principal, csrf)) => {
            Json(SessionView::new(true, principal, Some(csrf))).into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHENTICATED,
            "not logged in (or the session is over)",
        )
        .into_response(),
    }
}

/// `POST /ui/logout`: ends the session and clears its cookie.
#[utoipa::path(
    post,
    path = "/ui/logout",
    operation_id = "ui_logout",
    tag = "ui",
    security(()),
    responses(
        (status = 204, description = "Logged out (also when there was no session): the cookie \
            no longer authenticates anything and is cleared."),
        (status = 403, description = "`CSRF_REJECTED`: a live session's cookie without its \
            `x-csrf-token`.", body = ErrorBody),
    )
)]
pub(crate) async fn logout(
    State(app): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    if let Some(id) = session::cookie(request.headers()) {
        if let Some((principal, csrf)) = app.auth.session(id) {
            if !session::csrf_matches(&request, &csrf) {
                return session::csrf_refused();
            }
            tracing::info!(token = %principal.name, "web logout");
        }
        app.auth.log_out(id);
    }
    let clear = session::clear_cookie(secure(&app));
    match HeaderValue::from_str(&clear) {
        Ok(value) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, value)]).into_response(),
        Err(_) => StatusCode::NO_CONTENT.into_response(),
    }
}
