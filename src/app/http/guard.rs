//! Browser protections, one middleware in front of every route: a page a browser shows must not
//! be able to drive the service. Three checks, in this order, before anything else runs:
//!
//! 1. `Host` is the address the connection arrived on (`IP:port`, and `localhost:port` on a
//!    loopback address) or one of `server.hostnames`; else `421 MISDIRECTED_REQUEST`. A
//!    DNS-rebinding page reaches the port under its own name, so this refuses it.
//! 2. `Origin`, when present, is the service's own origin (the scheme it serves plus that
//!    `Host`) or one of `server.allowed_origins`; else `403 FORBIDDEN_ORIGIN`. Clients that are
//!    not browsers (curl, the CLI) send no `Origin` and pass.
//! 3. A request with a body says `Content-Type: application/json`; else
//!    `415 UNSUPPORTED_MEDIA_TYPE`. A cross-site HTML form can only send form or text bodies, and
//!    a page's `fetch` with JSON needs a CORS preflight this service never grants.
//!
//! `GET /healthz` skips the first two: probes and load balancers name the service however they
//! like, and it answers nothing but `ok`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use crate::config::transport::{canonical_origin, default_port, split_host_port};
use crate::config::ServerConfig;
use crate::model::codes;

/// The longest client-sent value (a `Host`, an `Origin`) quoted back in an error message.
const QUOTED_BYTES_MAX: usize = 100;

/// Where a request arrived: put on every request by `app::transport`, so the guard knows the
/// address the client reached (the bind address, or the interface's on a wildcard bind), the
/// authentication throttle the client's address, and a request that authenticates can vouch for
/// its connection.
#[derive(Clone)]
pub(crate) struct Arrival {
    /// The service-wide rules, built once at start.
    pub policy: Arc<Policy>,
    /// The local address of the request's connection.
    pub local: SocketAddr,
    /// The client's address (the peer of the connection).
    pub peer: SocketAddr,
    /// The connection's standing with `app::transport::admission`.
    pub standing: Arc<Standing>,
}

/// One connection's standing, shared by its task (which watches `shed`), its requests (which
/// mark it proven) and the admission table.
#[derive(Debug, Default)]
pub(crate) struct Standing {
    /// Set once a request of the connection authenticated.
    proven: AtomicBool,
    /// Cancelled when the connection is shed to make room.
    shed: CancellationToken,
}

impl Standing {
    /// A request of this connection authenticated: it is not shed from now on.
    pub(crate) fn prove(&self) {
        self.proven.store(true, Ordering::Release);
    }

    /// Whether a request of this connection authenticated.
    pub(crate) fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Acquire)
    }

    /// Cancelled when the connection must close to make room.
    pub(crate) fn shed(&self) -> &CancellationToken {
        &self.shed
    }
}

/// The service-wide rules of the guard, from `[server]` and whether TLS is on.
#[derive(Debug)]
pub(crate) struct Policy {
    /// `https` under TLS, else `http`: the scheme of the service's own origin.
    scheme: &'static str,
    /// `server.allowed_origins`, canonical (`scheme://host[:port]`, default port left out).
    allowed_origins: BTreeSet<String>,
    /// `server.hostnames`, lower case.
    hostnames: BTreeSet<String>,
}

impl Policy {
    /// The rules for a service serving `server` (with TLS when `tls`).
    pub(crate) fn new(server: &ServerConfig, tls: bool) -> Self {
        Self {
            scheme: if tls { "https" } else { "http" },
            allowed_origins: server
                .allowed_origins
                .iter()
                .filter_map(|origin| canonical_origin(origin))
                .collect(),
            hostnames: server
                .hostnames
                .iter()
                .map(|name| name.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether `host` (a `Host` header) names this service as reached on `local`.
    fn host_allowed(&self, host: &str, local: SocketAddr) -> bool {
        let Some((name, port)) = split_host_port(host) else {
            return false;
        };
        if self.hostnames.contains(&name) {
            return true;
        }
        let port = port.or_else(|| default_port(self.scheme));
        let ip = local.ip().to_canonical();
        let address = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let by_address = name == address || (ip.is_loopback() && name == "localhost");
        by_address && port == Some(local.port())
    }

    /// Whether a browser page of `origin` may use this service reached as `host`.
    fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        let Some(origin) = canonical_origin(origin) else {
            return false;
        };
        let own = canonical_origin(&format!("{}://{host}", self.scheme));
        own.as_deref() == Some(origin.as_str()) || self.allowed_origins.contains(&origin)
    }
}

/// The middleware: refuses a request that fails a check, with nothing else run; passes the rest.
pub(crate) async fn check(request: Request, next: Next) -> Response {
    match refusal(&request) {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    }
}

/// Why `request` is refused, if it is.
fn refusal(request: &Request) -> Option<ApiError> {
    let headers = request.headers();
    if !is_probe(request) {
        let Some(arrival) = request.extensions().get::<Arrival>() else {
            // Every connection is served by `app::transport`, which adds it: a wiring bug.
            return Some(ApiError::internal("a request arrived without its Arrival"));
        };
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        if !arrival.policy.host_allowed(host, arrival.local) {
            return Some(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                codes::MISDIRECTED_REQUEST,
                format!(
                    "this service is not served as `{}`; use its address or a name in \
                     server.hostnames",
                    quoted(host)
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !arrival.policy.origin_allowed(origin, host) {
                return Some(ApiError::new(
                    StatusCode::FORBIDDEN,
                    codes::FORBIDDEN_ORIGIN,
                    format!(
                        "pages of origin `{}` may not use this service; list it in \
                         server.allowed_origins",
                        quoted(origin)
                    ),
                ));
            }
        }
    }
    if has_body(headers) && !is_json(headers.get(header::CONTENT_TYPE)) {
        return Some(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::UNSUPPORTED_MEDIA_TYPE,
            "a request body must be sent with `Content-Type: application/json`",
        ));
    }
    None
}

/// `GET /healthz` (or `HEAD`): answered whatever the `Host` and `Origin`.
fn is_probe(request: &Request) -> bool {
    matches!(*request.method(), Method::GET | Method::HEAD) && request.uri().path() == "/healthz"
}

/// Whether the request carries a body: a chunked one, or a `Content-Length` above 0.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|length| length.trim() != "0")
}

/// Whether a `Content-Type` is `application/json`, with any parameters.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A client's value, cut to [`QUOTED_BYTES_MAX`] bytes for an error message.
fn quoted(value: &str) -> &str {
    let mut end = value.len().min(QUOTED_BYTES_MAX);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// The answer to a request whose body did not arrive within `server.body_read_timeout_secs`:
/// `408 BODY_TIMEOUT`, and `Connection: close` (the rest of the body is not worth waiting for).
pub(crate) fn body_timeout() -> Response {
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        codes::BODY_TIMEOUT,
        "the request body did not arrive in time",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(config: &str, tls: bool) -> Policy {
        let config = crate::config::Config::parse(config).unwrap();
        Policy::new(&config.server, tls)
    }

    #[test]
    fn the_host_is_the_arrival_address_localhost_on_loopback_or_a_listed_name() {
        let policy = policy("[server]\nhostnames = [\"Glitch.Example\"]\n", false);
        let loopback: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        assert!(policy.host_allowed("127.0.0.1:7700", loopback));
        assert!(policy.host_allowed("LOCALHOST:7700", loopback));
        assert!(policy.host_allowed("glitch.example", loopback));
        assert!(policy.host_allowed("glitch.example:443", loopback));
        assert!(!policy.host_allowed("127.0.0.1:7701", loopback));
        assert!(!policy.host_allowed("127.0.0.1", loopback));
        assert!(!policy.host_allowed("evil.example:7700", loopback));
        assert!(!policy.host_allowed("", loopback));
        let lan: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert!(policy.host_allowed("10.1.2.3", lan));
        assert!(!policy.host_allowed("localhost:80", lan));
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert!(policy.host_allowed("10.1.2.3:80", mapped));
        let v6: SocketAddr = "[::1]:7700".parse().unwrap();
        assert!(policy.host_allowed("[::1]:7700", v6));
    }

    #[test]
    fn the_own_origin_follows_the_scheme_and_host() {
        let plain = policy(
            "[server]\nallowed_origins = [\"https://ui.example/\"]\n",
            false,
        );
        assert!(plain.origin_allowed("http://127.0.0.1:7700", "127.0.0.1:7700"));
        assert!(plain.origin_allowed("https://ui.example", "127.0.0.1:7700"));
        assert!(!plain.origin_allowed("https://127.0.0.1:7700", "127.0.0.1:7700"));
        assert!(!plain.origin_allowed("http://evil.example", "127.0.0.1:7700"));
        assert!(!plain.origin_allowed("null", "127.0.0.1:7700"));
        let tls = policy("", true);
        assert!(tls.origin_allowed("https://glitch.example", "glitch.example:443"));
        assert!(!tls.origin_allowed("http://glitch.example", "glitch.example"));
    }

    #[test]
    fn json_is_recognised_with_parameters() {
        let value = |text: &'static str| HeaderValue::from_static(text);
        assert!(is_json(Some(&value("application/json"))));
        assert!(is_json(Some(&value("Application/JSON; charset=utf-8"))));
        assert!(!is_json(Some(&value("text/plain"))));
        assert!(!is_json(Some(&value("application/jsonp"))));
        assert!(!is_json(None));
    }

    #[test]
    fn quotes_are_cut_on_a_char_boundary() {
        let long = "é".repeat(80);
        assert!(quoted(&long).len() <= QUOTED_BYTES_MAX);
        assert_eq!(quoted("short"), "short");
    }
}
