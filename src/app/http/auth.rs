//! Who is asking, and may they: bearer tokens, the permission each route needs, per-token rate
//! limits and the audit log of every change made through the ingress.
//!
//! A token's secret is 256 random bits, shown once when the token is made and stored only as its
//! SHA-256; a presented secret is hashed and the token looked up by that hash in a keyed index
//! (one lookup, however many tokens there are), then the hash compared in constant time. The
//! tokens live in the store (by name, as ever: the index is built from the stored hashes, so
//! tokens made before it need no migration) and, for the hot path, in memory ([`Tokens`]);
//! creating or revoking one changes both before it answers, so a revoked token is refused at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{MatchedPath, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::guard::Arrival;
use super::json::JsonBody;
use super::session::{self, Sessions};
use super::throttle::{retry_after_secs, FailureThrottle};
use super::AppState;
use crate::config::{AuthMode, Config};
use crate::model::auth::{
    validate_token_name, AuditEntry, Permission, Principal, Role, TokenRecord,
};
use crate::model::codes;
use crate::storage::auth::{self as store_auth, AuditQuery, AUDIT_PAGE_MAX};
use crate::storage::store::{Store, StoreError};

/// Prefix of every secret, so a leaked one is recognizable (and greppable) as ours.
const SECRET_PREFIX: &str = "glt_";
/// Random bytes in a secret.
const SECRET_BYTES: usize = 32;
/// The file a fresh data dir's first admin secret is written to.
pub(crate) const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The variable whose value, when set at start, is an admin token named `bootstrap`.
pub(crate) const ADMIN_TOKEN_VAR: &str = "GLITCHLAB_ADMIN_TOKEN";
/// The token [`ADMIN_TOKEN_VAR`] makes: it exists only while the variable is set at start, so
/// the name is reserved (`POST /v1/tokens` refuses it).
pub(crate) const BOOTSTRAP_TOKEN: &str = "bootstrap";
/// Shortest [`ADMIN_TOKEN_VAR`] value accepted: an admin secret must not be guessable (the
/// service's own secrets are 68 characters).
pub(crate) const ADMIN_TOKEN_CHARS_MIN: usize = 32;
/// Longest a token may live, when it is given a lifetime.
const EXPIRES_IN_SECS_MAX: u64 = 10 * 365 * 24 * 60 * 60;
/// Accounts or repository globs one token may list.
const SCOPE_ITEMS_MAX: usize = 64;

/// A secret's SHA-256: the key of the token index.
type Digest32 = [u8; 32];

/// The known tokens, in memory for the hot path; the store is the truth.
#[derive(Default)]
pub(crate) struct Tokens {
    /// The index; a std lock, never held across an await.
    index: RwLock<TokenIndex>,
}

/// The tokens keyed by their secret's hash (what a request presents), and by name (what a
/// revoke or a replacement names).
#[derive(Default)]
struct TokenIndex {
    /// Each token by its secret's SHA-256, decoded once (a stored hash that does not decode to
    /// 32 bytes matches nothing and is left out).
    by_digest: HashMap<Digest32, TokenRecord>,
    /// Each token's name → its key in `by_digest`.
    by_name: HashMap<String, Digest32>,
}

impl TokenIndex {
    fn insert(&mut self, record: TokenRecord) {
        self.remove(&record.name);
        let Some(digest) = decode_digest(&record.secret_sha256) else {
            tracing::warn!(token = %record.name, "a stored token's hash does not decode; it opens nothing");
            return;
        };
        self.by_name.insert(record.name.clone(), digest);
        // Two names with one secret: the later one answers (as the scan it replaces did).
        self.by_digest.insert(digest, record);
    }

    fn remove(&mut self, name: &str) {
        if let Some(digest) = self.by_name.remove(name) {
            if self
                .by_digest
                .get(&digest)
                .is_some_and(|record| record.name == name)
            {
                self.by_digest.remove(&digest);
            }
        }
    }
}

/// A hex SHA-256 as its 32 bytes.
fn decode_digest(hex_sha256: &str) -> Option<Digest32> {
    hex::decode(hex_sha256).ok()?.try_into().ok()
}

impl Tokens {
    /// The token whose secret is `secret`, if it is known and not expired: the secret's hash is
    /// looked up in the index, and the hash found compared with it in constant time.
    fn authenticate(&self, secret: &str) -> Option<TokenRecord> {
        let presented: Digest32 = Sha256::digest(secret.as_bytes()).into();
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let (stored, record) = index.by_digest.get_key_value(&presented)?;
        if !bool::from(stored.as_slice().ct_eq(presented.as_slice())) {
            return None;
        }
        Some(record.clone()).filter(|record| !record.expired(Utc::now()))
    }

    /// The token whose secret hashes to `sha256` (hex), if it is known and not expired: what a
    /// web session stands for, so a revoked or expired token ends its sessions too.
    fn by_hash(&self, sha256: &str) -> Option<TokenRecord> {
        let digest = decode_digest(sha256)?;
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index
            .by_digest
            .get(&digest)
            .filter(|record| record.secret_sha256 == sha256 && !record.expired(Utc::now()))
            .cloned()
    }

    fn replace_all(&self, records: Vec<TokenRecord>) {
        let mut index = TokenIndex::default();
        for record in records {
            index.insert(record);
        }
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = index;
    }

    fn upsert(&self, record: TokenRecord) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        index.insert(record);
    }

    fn remove(&self, name: &str) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        index.remove(name);
    }
}

/// What the ingress needs to authenticate, authorize and limit.
#[derive(Clone)]
pub(crate) struct Auth {
    mode: AuthMode,
    metrics_public: bool,
    tokens: Arc<Tokens>,
    /// One bucket per token name.
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    /// The web control plane's sessions (cookies standing for a token).
    sessions: Arc<Sessions>,
    /// Wrong secrets per client address (`None` with `server.auth_failures_max = 0`).
    throttle: Option<Arc<FailureThrottle>>,
}

/// Why a request's session cookie does not authenticate it.
pub(crate) enum SessionRefusal {
    /// No such session (never opened, logged out, expired, or its token is gone).
    Unknown,
    /// A change without the session's CSRF token.
    Csrf,
}

impl Auth {
    /// Whether requests must authenticate (`server.auth`): the web page asks for a login only
    /// then.
    pub(crate) fn required(&self) -> bool {
        self.mode == AuthMode::On
    }

    /// Exchanges a token secret sent from `peer` for a new web session: the token's principal
    /// and the session's id and CSRF token. Refused `401` for an unknown, revoked or expired
    /// secret (counted by the throttle; `429` past it), `503 TOO_MANY_SESSIONS` when the table
    /// is full of other principals' sessions.
    pub(crate) fn log_in(
        &self,
        secret: &str,
        peer: IpAddr,
    ) -> Result<(Principal, session::Opened), ApiError> {
        self.refuse_if_throttled(peer)?;
        let Some(record) = self.tokens.authenticate(secret) else {
            tracing::info!("a web login with an unknown, revoked or expired token was refused");
            self.refuse_if_throttled_now(peer)?;
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                codes::UNAUTHENTICATED,
                "unknown, revoked or expired token",
            ));
        };
        let opened = match self.sessions.open(&record.secret_sha256) {
            Ok(opened) => opened,
            Err(session::OpenRefusal::Full) => {
                return Err(ApiError::unavailable(
                    codes::TOO_MANY_SESSIONS,
                    format!(
                        "{} web sessions are open; try again when one ends",
                        session::SESSIONS_MAX
                    ),
                ))
            }
            Err(session::OpenRefusal::NoRandomness) => {
                return Err(ApiError::internal("no randomness for a session id"))
            }
        };
        Ok((record.principal(), opened))
    }

    /// `429 RATE_LIMITED` when `peer` is blocked for its wrong secrets (nothing is checked).
    fn refuse_if_throttled(&self, peer: IpAddr) -> Result<(), ApiError> {
        match self.throttle.as_ref().and_then(|t| t.blocked_for(peer)) {
            Some(wait) => Err(throttled(wait)),
            None => Ok(()),
        }
    }

    /// Counts a wrong secret from `peer`: `429 RATE_LIMITED` when it went past the limit.
    fn refuse_if_throttled_now(&self, peer: IpAddr) -> Result<(), ApiError> {
        match self.throttle.as_ref().and_then(|t| t.failed(peer)) {
            Some(wait) => Err(throttled(wait)),
            None => Ok(()),
        }
    }

    /// The principal and CSRF token of the open session `id`, while its token is valid.
    pub(crate) fn session(&self, id: &str) -> Option<(Principal, String)> {
        let facts = self.sessions.find(id)?;
        match self.tokens.by_hash(&facts.token_sha256) {
            Some(record) => Some((record.principal(), facts.csrf)),
            None => {
                self.sessions.close(id);
                None
            }
        }
    }

    /// Ends the session `id` (logout).
    pub(crate) fn log_out(&self, id: &str) {
        self.sessions.close(id);
    }

    /// The principal of a request authenticated by its session cookie `id`: a request that
    /// changes something must also carry the session's CSRF token.
    fn by_session(&self, request: &Request, id: &str) -> Result<Principal, SessionRefusal> {
        let (principal, csrf) = self.session(id).ok_or(SessionRefusal::Unknown)?;
        let safe = matches!(*request.method(), Method::GET | Method::HEAD);
        if !safe && !session::csrf_matches(request, &csrf) {
            return Err(SessionRefusal::Csrf);
        }
        Ok(principal)
    }
}

/// The answer to a client address blocked for its wrong secrets.
fn throttled(wait: std::time::Duration) -> ApiError {
    ApiError::too_many(
        codes::RATE_LIMITED,
        "too many wrong secrets from this address; wait before trying again",
        retry_after_secs(wait),
    )
}

/// The value of [`ADMIN_TOKEN_VAR`] when it is set (an empty value counts as unset), or the
/// secret an embedding process passed instead (`config.embedding`); an error naming the variable
/// when it is shorter than [`ADMIN_TOKEN_CHARS_MIN`]. Checked before the service opens anything,
/// so a refused start touches no data.
pub(crate) fn admin_token_var(config: &Config) -> Result<Option<String>, String> {
    let embedded = config.embedding.admin_secret.clone().map(Into::into);
    let Some(value) = embedded.or_else(|| std::env::var_os(ADMIN_TOKEN_VAR)) else {
        return Ok(None);
    };
    let Some(secret) = value.to_str() else {
        return Err(format!("{ADMIN_TOKEN_VAR} is not valid UTF-8"));
    };
    let chars = secret.chars().count();
    match chars {
        0 => Ok(None),
        chars if chars < ADMIN_TOKEN_CHARS_MIN => Err(format!(
            "{ADMIN_TOKEN_VAR} is {chars} characters long; an admin secret needs at least \
             {ADMIN_TOKEN_CHARS_MIN} (e.g. `openssl rand -hex 32`), or unset it and use the \
             token in <data_dir>/{ADMIN_TOKEN_FILE}"
        )),
        _ => Ok(Some(secret.to_owned())),
    }
}

/// The `bootstrap` token follows [`ADMIN_TOKEN_VAR`]: made or replaced from its value when set,
/// removed when not (a secret taken out of the environment stops working).
async fn follow_admin_token_var(config: &Config, store: &Store) -> Result<(), StoreError> {
    match admin_token_var(config) {
        Ok(Some(secret)) => {
            let record = new_record(BOOTSTRAP_TOKEN, Role::Admin, &secret);
            store_auth::put_token(store, record).await?;
            tracing::info!(
                "the admin token `{BOOTSTRAP_TOKEN}` follows {ADMIN_TOKEN_VAR} (its value is not \
                 logged)"
            );
        }
        // Refused before start-up reaches here (`app::startup`); nothing to follow.
        Err(_) => {}
        Ok(None) => {
            if store_auth::revoke_token(store, BOOTSTRAP_TOKEN).await? {
                tracing::warn!(
                    "{ADMIN_TOKEN_VAR} is not set: removed the admin token `{BOOTSTRAP_TOKEN}` \
                     it made"
                );
            }
        }
    }
    Ok(())
}

impl Auth {
    /// Loads the tokens from the store and makes sure someone can get in: the bootstrap token from
    /// [`ADMIN_TOKEN_VAR`] (removed when the variable is not set), else — in a data dir with no
    /// tokens — a new admin token whose secret is written to `<data_dir>/admin.token` (mode
    /// 0600). The log names the file, never a secret.
    pub(crate) async fn start(config: &Config, store: &Store) -> Result<Auth, StoreError> {
        let tokens = Arc::new(Tokens::default());
        follow_admin_token_var(config, store).await?;
        let mut records = store_auth::tokens(store).await?;
        if records.is_empty() && config.server.auth == AuthMode::On {
            let secret = new_secret();
            let record = new_record("admin", Role::Admin, &secret);
            let file = config.storage.data_dir.join(ADMIN_TOKEN_FILE);
            write_secret_file(&file, &secret).map_err(|error| {
                StoreError::Commit(format!("could not write {}: {error}", file.display()))
            })?;
            store_auth::put_token(store, record.clone()).await?;
            tracing::warn!(
                file = %file.display(),
                "no tokens yet: made the admin token `admin`; its secret is in the file (mode \
                 0600), shown nowhere else"
            );
            records.push(record);
        }
        tokens.replace_all(records);
        let limiter = NonZeroU32::new(config.server.requests_per_sec).map(|rate| {
            let burst = NonZeroU32::new(config.server.burst).unwrap_or(rate);
            Arc::new(governor::RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        let throttle = FailureThrottle::new(
            config.server.auth_failures_max,
            config.server.auth_failure_window_secs,
        );
        Ok(Auth {
            mode: config.server.auth,
            metrics_public: config.server.metrics_public,
            tokens,
            limiter,
            sessions: Arc::new(Sessions::default()),
            throttle: throttle.map(Arc::new),
        })
    }
}

/// A new secret: [`SECRET_PREFIX`] and 256 random bits in hex.
fn new_secret() -> String {
    let mut bytes = [0_u8; SECRET_BYTES];
    // The OS's generator; should it ever fail, a secret must not be weak: no token is made.
    if let Err(error) = getrandom::fill(&mut bytes) {
        tracing::error!(%error, "the OS random generator failed");
        return String::new();
    }
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

fn new_record(name: &str, role: Role, secret: &str) -> TokenRecord {
    TokenRecord {
        name: name.to_owned(),
        role,
        secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        accounts: Vec::new(),
        repos: Vec::new(),
        engines: role == Role::Admin,
        created_at: Utc::now(),
        expires_at: None,
    }
}

/// Writes `secret` to `file`, readable by the service's user only.
fn write_secret_file(file: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)?;
    out.write_all(secret.as_bytes())?;
    out.write_all(b"\n")?;
    out.sync_all()
}

/// The permission a route needs, as `routes::table` declares it; `None` for the open ones
/// (`/healthz`, `/readyz`, the page's own routes, and `/metrics` with `server.metrics_public`).
/// A pair the table lacks (none is routed) needs the strictest: `Read` to read, `MoveMoney` to
/// change.
fn permission_for(method: &Method, route: &str, metrics_public: bool) -> Option<Permission> {
    match super::route_access(method, route) {
        Some(access) => access.permission(metrics_public),
        None if method == Method::GET || method == Method::HEAD => Some(Permission::Read),
        None => Some(Permission::MoveMoney),
    }
}

/// The bearer secret of a request, if it carries one.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim())
        .filter(|secret| !secret.is_empty())
}

/// The address a request came from (unspecified if it came some way without one).
fn peer_of(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<Arrival>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |arrival| {
            arrival.peer.ip().to_canonical()
        })
}

/// Who sends `request` (`server.auth = "on"`): its bearer token's or its session's principal;
/// else the answer — `401`, `403 CSRF_REJECTED`, or `429` for a bearer secret from an address
/// past its wrong secrets (a wrong bearer secret is counted; a stale session cookie is not: a
/// session id is not guessable, and a browser left open across a restart sends one).
fn authenticate(auth: &Auth, request: &Request) -> Result<Principal, Box<Response>> {
    let (bearer, cookie) = (bearer(request), session::cookie(request.headers()));
    if bearer.is_none() && cookie.is_none() {
        return Err(Box::new(unauthenticated(
            "send `Authorization: Bearer <token secret>`",
        )));
    }
    if let Some(secret) = bearer {
        let peer = peer_of(request);
        auth.refuse_if_throttled(peer)
            .map_err(|error| Box::new(error.into_response()))?;
        if let Some(record) = auth.tokens.authenticate(secret) {
            return Ok(record.principal());
        }
        auth.refuse_if_throttled_now(peer)
            .map_err(|error| Box::new(error.into_response()))?;
        return Err(Box::new(unauthenticated(
            "unknown, revoked or expired token",
        )));
    }
    match cookie.map(|id| auth.by_session(request, id)) {
        Some(Ok(principal)) => Ok(principal),
        Some(Err(SessionRefusal::Csrf)) => Err(Box::new(session::csrf_refused())),
        Some(Err(SessionRefusal::Unknown)) | None => Err(Box::new(unauthenticated(
            "the session is over (logged out or expired)",
        ))),
    }
}

fn unauthenticated(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, codes::UNAUTHENTICATED, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Marks an answer whose handler wrote its audit entry itself, in the same store job as the
/// change (a submit, a transfer): [`authorize`] then queues none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuditWritten;

/// The audit line of a `POST` by `caller` that will answer `201 Created`, for a handler that
/// writes it with its change (and marks the answer [`AuditWritten`]).
pub(crate) fn audit_of_created(caller: &Principal, route: &MatchedPath, uri: &Uri) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: Utc::now(),
        principal: caller.name.clone(),
        method: Method::POST.to_string(),
        route: route.as_str().to_owned(),
        path: uri.path().to_owned(),
        status: StatusCode::CREATED.as_u16(),
    }
}

/// Every matched route passes here (a route layer): authenticate, authorize, limit, then — for a
/// change that succeeded — queue who did it for the audit log before the answer leaves (unless
/// the handler wrote it with its change: [`AuditWritten`]).
pub(crate) async fn authorize(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = &app.auth;
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_default();
    let method = request.method().clone();
    let Some(permission) = permission_for(&method, &route, auth.metrics_public) else {
        return next.run(request).await;
    };
    let principal = match auth.mode {
        AuthMode::Off => Principal::anonymous(),
        AuthMode::On => match authenticate(auth, &request) {
            Ok(principal) => principal,
            Err(answer) => return *answer,
        },
    };
    // The connection authenticated: it keeps its slot when slots run short.
    if let Some(arrival) = request.extensions().get::<Arrival>() {
        arrival.standing.prove();
    }
    if !principal.may(permission) {
        let message = format!(
            "token `{}` (role {}) lacks the permission `{permission}` (granted from role {})",
            principal.name,
            principal.role.name(),
            permission.least_role().name()
        );
        return ApiError::new(StatusCode::FORBIDDEN, codes::FORBIDDEN, message).into_response();
    }
    if let Some(limiter) = &auth.limiter {
        if let Err(not_until) = limiter.check_key(&principal.name) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs().max(1);
            let message = format!("token `{}` is over its rate limit", principal.name);
            return ApiError::too_many(codes::RATE_LIMITED, message, seconds).into_response();
        }
    }
    let path = request.uri().path().to_owned();
    let name = principal.name.clone();
    request.extensions_mut().insert(principal);
    let response = next.run(request).await;
    let changed = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let written = response.extensions().get::<AuditWritten>().is_some();
    if changed && response.status().is_success() && !written {
        let entry = AuditEntry {
            seq: 0,
            at: Utc::now(),
            principal: name,
            method: method.to_string(),
            route,
            path,
            status: response.status().as_u16(),
        };
        store_auth::queue_audit(&app.services.store, entry).await;
    }
    response
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTokenRequest {
    /// Unique; 1..=64 bytes of `a-z`, `0-9`, `.`, `_`, `-`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9._-]*$")]
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Accounts its tasks may charge (default: `user:<name>`); ignored for admins. At most 64
    /// (`SCOPE_ITEMS_MAX`), each 1..=512 bytes without control characters.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub accounts: Option<Vec<String>>,
    /// Globs a task's repository must match (default: any), within `server.repos`. At most 64,
    /// each 1..=512 bytes without control characters.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub repos: Option<Vec<String>>,
    /// Whether its tasks may override persona engines (default: false; admins always may).
    #[serde(default)]
    pub engines: Option<bool>,
    /// Lifetime in seconds (default: no expiry).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub expires_in_secs: Option<u64>,
}

/// A token as listed: everything but its secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenView {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Accounts its tasks may charge.
    pub accounts: Vec<String>,
    /// Repository globs (empty: any).
    pub repos: Vec<String>,
    /// Whether its tasks may override persona engines.
    pub engines: bool,
    /// When it was made.
    pub created_at: chrono::DateTime<Utc>,
    /// When it stops working.
    pub expires_at: Option<chrono::DateTime<Utc>>,
}

impl From<&TokenRecord> for TokenView {
    fn from(record: &TokenRecord) -> Self {
        let principal = record.principal();
        TokenView {
            name: record.name.clone(),
            role: record.role,
            accounts: principal.accounts,
            repos: record.repos.clone(),
            engines: principal.engines || record.role == Role::Admin,
            created_at: record.created_at,
            expires_at: record.expires_at,
        }
    }
}

/// The answer of `POST /v1/tokens`: the token and its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NewToken {
    /// The token.
    #[serde(flatten)]
    pub token: TokenView,
    /// Send it as `Authorization: Bearer <secret>`. Not stored; not shown again.
    pub secret: String,
}

fn check_scope(field: &str, items: &[String]) -> Result<(), ApiError> {
    if items.len() > SCOPE_ITEMS_MAX {
        return Err(ApiError::invalid_field(format!(
            "{field} lists at most {SCOPE_ITEMS_MAX} items"
        )));
    }
    for item in items {
        if item.is_empty() || item.len() > 512 || item.chars().any(char::is_control) {
            return Err(ApiError::invalid_field(format!(
                "{field}: `{item}` is empty, over 512 bytes or has control characters"
            )));
        }
    }
    Ok(())
}

/// `POST /v1/tokens` (admin): makes a token and answers its secret, once.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    request_body = NewTokenRequest,
    responses(
        (status = 201, description = "Made; the `secret` is shown only here.", body = NewToken),
        (status = 409, description = "`TOKEN_EXISTS`: a token of that name exists.", body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: a bad name, accounts, repos or lifetime.", body = ErrorBody),
    )
)]
pub(crate) async fn create_token(
    State(app): State<AppState>,
    JsonBody(request): JsonBody<NewTokenRequest>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    validate_token_name(&request.name).map_err(ApiError::invalid_field)?;
    if request.name == BOOTSTRAP_TOKEN {
        return Err(ApiError::invalid_field(format!(
            "`{BOOTSTRAP_TOKEN}` is reserved for the token {ADMIN_TOKEN_VAR} makes"
        )));
    }
    let accounts = request.accounts.unwrap_or_default();
    let repos = request.repos.unwrap_or_default();
    check_scope("accounts", &accounts)?;
    check_scope("repos", &repos)?;
    for account in &accounts {
        crate::model::ledger::validate_id("accounts", account)
            .map_err(|e| ApiError::invalid_field(e.to_string()))?;
        if account.starts_with("system:") || account.starts_with("agent:") {
            return Err(ApiError::invalid_field(format!(
                "accounts: `{account}` is the service's own; a token may charge user and team \
                 accounts only"
            )));
        }
    }
    for glob in &repos {
        globset::Glob::new(glob)
            .map_err(|e| ApiError::invalid_field(format!("repos: `{glob}`: {e}")))?;
    }
    let expires_at = match request.expires_in_secs {
        None => None,
        Some(secs) if (1..=EXPIRES_IN_SECS_MAX).contains(&secs) => {
            let secs = i64::try_from(secs).unwrap_or(i64::MAX);
            Some(Utc::now() + chrono::Duration::seconds(secs))
        }
        Some(_) => {
            return Err(ApiError::invalid_field(format!(
                "expires_in_secs must be within 1..={EXPIRES_IN_SECS_MAX}"
            )))
        }
    };
    let secret = new_secret();
    if secret.is_empty() {
        return Err(ApiError::internal("no randomness for a token secret"));
    }
    let mut record = new_record(&request.name, request.role, &secret);
    record.accounts = accounts;
    record.repos = repos;
    record.engines = request.engines.unwrap_or(false) || request.role == Role::Admin;
    record.expires_at = expires_at;
    if !store_auth::create_token(&app.services.store, record.clone()).await? {
        return Err(ApiError::conflict(
            codes::TOKEN_EXISTS,
            format!("a token named `{}` exists", record.name),
        ));
    }
    app.auth.tokens.upsert(record.clone());
    tracing::info!(token = %record.name, role = record.role.name(), "token made");
    let token = TokenView::from(&record);
    Ok((StatusCode::CREATED, Json(NewToken { token, secret })))
}

/// `GET /v1/tokens` (admin): every token, without secrets.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "tokens",
    responses((status = 200, description = "Every token, in name order; never a secret.", body = [TokenView]))
)]
pub(crate) async fn list_tokens(
    State(app): State<AppState>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let records = store_auth::tokens(&app.services.store).await?;
    Ok(Json(records.iter().map(TokenView::from).collect()))
}

/// `DELETE /v1/tokens/{name}` (admin): revokes at once.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{name}",
    tag = "tokens",
    params(("name" = String, Path, description = "The token's name.")),
    responses(
        (status = 204, description = "Revoked: the next request with it is 401."),
        (status = 404, description = "`TOKEN_NOT_FOUND`: no token of that name.", body = ErrorBody),
    )
)]
pub(crate) async fn revoke_token(
    State(app): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    // Out of memory first: from here on the token opens nothing, even before the write lands.
    app.auth.tokens.remove(&name);
    if !store_auth::revoke_token(&app.services.store, &name).await? {
        return Err(ApiError::not_found(
            codes::TOKEN_NOT_FOUND,
            format!("no token named `{name}`"),
        ));
    }
    if let Some(limiter) = &app.auth.limiter {
        limiter.retain_recent();
    }
    tracing::info!(token = %name, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    /// Only this token's changes.
    pub principal: Option<String>,
    /// Only changes at or after this time (RFC 3339).
    pub since: Option<chrono::DateTime<Utc>>,
    /// The previous page's `next`.
    pub after: Option<u64>,
    /// At most this many: clamped to 1..=1000 (`AUDIT_PAGE_MAX`, also the default).
    pub limit: Option<usize>,
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    /// Oldest first.
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// `GET /v1/audit`: every change made through the ingress — who, which route, when, the answer.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "tokens",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of the audit log, oldest first.", body = AuditPage),
        (status = 422, description = "`INVALID_FIELD`: a bad query parameter.", body = ErrorBody),
    )
)]
pub(crate) async fn audit(
    State(app): State<AppState>,
    query: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let query = AuditQuery {
        principal: params.principal,
        since: params.since,
        after: params.after,
        limit: params.limit.unwrap_or(AUDIT_PAGE_MAX),
    };
    // Entries are queued, not awaited, by the requests they record: let those land first.
    store_auth::settled(&app.services.store).await?;
    let (entries, next) = store_auth::audit(&app.services.store, query).await?;
    Ok(Json(AuditPage { entries, next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_authenticates_only_its_own_token_and_not_once_expired() {
        let tokens = Tokens::default();
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        assert_ne!(a, b);
        tokens.upsert(new_record("a", Role::Viewer, &a));
        let mut expired = new_record("b", Role::Admin, &b);
        expired.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        tokens.upsert(expired);
        assert_eq!(tokens.authenticate(&a).map(|r| r.name), Some("a".into()));
        assert_eq!(tokens.authenticate(&b), None);
        assert_eq!(tokens.authenticate("glt_nope"), None);
        tokens.remove("a");
        assert_eq!(tokens.authenticate(&a), None);
    }

    #[test]
    fn the_keyed_index_finds_each_of_many_tokens_and_forgets_replaced_and_revoked_ones() {
        let tokens = Tokens::default();
        let secrets: Vec<String> = (0..500).map(|_| new_secret()).collect();
        let records: Vec<TokenRecord> = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| new_record(&format!("t{i}"), Role::Viewer, secret))
            .collect();
        tokens.replace_all(records.clone());
        for (i, secret) in secrets.iter().enumerate() {
            assert_eq!(
                tokens.authenticate(secret).map(|r| r.name),
                Some(format!("t{i}"))
            );
            let hash = &records[i].secret_sha256;
            assert_eq!(tokens.by_hash(hash).map(|r| r.name), Some(format!("t{i}")));
        }
        // A token given a new secret (the bootstrap token follows its variable): the old one
        // opens nothing.
        let fresh = new_secret();
        tokens.upsert(new_record("t7", Role::Admin, &fresh));
        assert_eq!(tokens.authenticate(&secrets[7]), None);
        assert_eq!(tokens.by_hash(&records[7].secret_sha256), None);
        assert_eq!(
            tokens.authenticate(&fresh).map(|r| (r.name, r.role)),
            Some(("t7".into(), Role::Admin))
        );
        tokens.remove("t3");
        assert_eq!(tokens.authenticate(&secrets[3]), None);
        assert!(tokens.authenticate(&secrets[4]).is_some());
        // A stored hash that does not decode opens nothing, and hides no other token.
        let mut broken = new_record("broken", Role::Admin, &new_secret());
        broken.secret_sha256 = "zz".into();
        tokens.upsert(broken);
        assert_eq!(tokens.by_hash("zz"), None);
        assert!(tokens.authenticate(&secrets[5]).is_some());
    }

    #[test]
    fn notifications_are_read_by_viewers() {
        assert_eq!(
            permission_for(&Method::GET, "/v1/notifications", false),
            Some(Permission::Read)
        );
    }

    #[test]
    fn silences_are_made_and_expired_by_approvers_and_read_by_viewers() {
        let silences = "/v1/silences";
        let one = "/v1/silences/{id}";
        assert_eq!(
            permission_for(&Method::POST, silences, false),
            Some(Permission::Approve)
        );
        assert_eq!(
            permission_for(&Method::DELETE, one, false),
            Some(Permission::Approve)
        );
        assert_eq!(
            permission_for(&Method::GET, silences, false),
            Some(Permission::Read)
        );
    }

    #[test]
    fn every_write_route_needs_more_than_read_and_probes_need_nothing() {
        assert_eq!(permission_for(&Method::GET, "/healthz", false), None);
        assert_eq!(permission_for(&Method::GET, "/metrics", true), None);
        assert_eq!(
            permission_for(&Method::GET, "/metrics", false),
            Some(Permission::Read)
        );
        assert_eq!(
            permission_for(&Method::POST, "/v1/tasks", false),
            Some(Permission::Submit)
        );
        assert_eq!(
            permission_for(&Method::POST, "/v1/ledger/transfers", false),
            Some(Permission::MoveMoney)
        );
        assert_eq!(
            permission_for(&Method::GET, "/v1/tokens", false),
            Some(Permission::ManageTokens)
        );
        assert_eq!(
            permission_for(&Method::POST, "/v1/some/new/route", false),
            Some(Permission::MoveMoney)
        );
        // The web page and its assets are public; its session routes check the caller themselves.
        assert_eq!(permission_for(&Method::GET, "/", false), None);
        assert_eq!(permission_for(&Method::POST, "/ui/login", false), None);
        assert_eq!(
            permission_for(&Method::GET, "/ui/other", false),
            Some(Permission::Read)
        );
    }

    /// The document states the scope limit the code checks.
    #[test]
    fn the_document_states_the_scope_limit() {
        use utoipa::OpenApi;
        let document = serde_json::to_value(super::super::openapi::ApiDoc::openapi())
            .expect("the document serializes");
        let properties = &document["components"]["schemas"]["NewTokenRequest"]["properties"];
        for field in ["accounts", "repos"] {
            assert_eq!(properties[field]["maxItems"], SCOPE_ITEMS_MAX, "{field}");
        }
    }
}
