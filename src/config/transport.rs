//! The transport part of `[server]`: TLS files, the bind guard, the timeouts and connection cap,
//! and the origins and host names browsers may use. Plain rules on plain values; the HTTP layer
//! (`app::transport`, `app::http::guard`) enforces them.

use std::net::SocketAddr;

use super::{AuthMode, ServerConfig};

/// Connections served at once by default (`server.max_connections`).
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// Connections one client address may hold by default (`server.max_connections_per_ip`).
pub(crate) const MAX_CONNECTIONS_PER_IP: usize = 256;
/// Connection slots kept for authenticated connections by default (`server.reserved_connections`).
pub(crate) const RESERVED_CONNECTIONS: usize = 64;
/// Wrong secrets one address may send per window by default (`server.auth_failures_max`).
pub(crate) const AUTH_FAILURES_MAX: u32 = 20;
/// The window of `auth_failures_max` by default, in seconds.
pub(crate) const AUTH_FAILURE_WINDOW_SECS: u64 = 60;
/// Event streams open at once by default (`server.streams_max`).
pub(crate) const STREAMS_MAX: usize = 256;
/// Event streams per token by default: one client cannot take the whole budget.
pub(crate) const STREAMS_PER_TOKEN_MAX: usize = 32;
/// Event streams per role by default: the viewers together cannot take the whole budget.
pub(crate) const STREAMS_PER_ROLE_MAX: usize = 128;
/// Event-stream slots only operators and admins may use, by default.
pub(crate) const STREAMS_RESERVED: usize = 32;
/// The most `server.streams_max` may be: each stream's feeder is one of the service's 1024
/// background tasks, which settlements and signals need too.
const STREAMS_MAX_LIMIT: usize = 512;
/// The most `server.max_connections` may be: each connection is a file descriptor and a task.
const MAX_CONNECTIONS_LIMIT: usize = 65_536;
/// The longest any `server.*_timeout_secs` may be (a day): a timeout is there to end things.
const TIMEOUT_SECS_LIMIT: u64 = 86_400;

/// Checks the transport keys of `[server]` on their own (the bind guard, which depends on the
/// final `bind` after `--bind`, is [`check_exposure`]).
pub(crate) fn validate(server: &ServerConfig) -> Result<(), String> {
    if server.tls_cert.is_some() != server.tls_key.is_some() {
        return Err("server.tls_cert and server.tls_key go together: set both or neither".into());
    }
    let timeouts = [
        ("header_read_timeout_secs", server.header_read_timeout_secs),
        ("body_read_timeout_secs", server.body_read_timeout_secs),
        ("idle_timeout_secs", server.idle_timeout_secs),
    ];
    for (key, secs) in timeouts {
        if !(1..=TIMEOUT_SECS_LIMIT).contains(&secs) {
            return Err(format!("server.{key} must be 1 ..= {TIMEOUT_SECS_LIMIT}"));
        }
    }
    if !(1..=MAX_CONNECTIONS_LIMIT).contains(&server.max_connections) {
        return Err(format!(
            "server.max_connections must be 1 ..= {MAX_CONNECTIONS_LIMIT}"
        ));
    }
    validate_fairness(server)?;
    for origin in &server.allowed_origins {
        if canonical_origin(origin).is_none() {
            return Err(format!(
                "server.allowed_origins: `{origin}` is not an origin like `https://app.example.com` \
                 or `http://localhost:3000` (scheme http or https, a host, an optional port, no path)"
            ));
        }
    }
    for name in &server.hostnames {
        match split_host_port(name) {
            Some((_, None)) => {}
            _ => {
                return Err(format!(
                    "server.hostnames: `{name}` is not a host name (no scheme, no port)"
                ))
            }
        }
    }
    Ok(())
}

/// The per-address, reserve, throttle and event-stream keys of `[server]`.
fn validate_fairness(server: &ServerConfig) -> Result<(), String> {
    if server.max_connections_per_ip == 0 {
        return Err("server.max_connections_per_ip must be at least 1".into());
    }
    if !(1..=TIMEOUT_SECS_LIMIT).contains(&server.auth_failure_window_secs) {
        return Err(format!(
            "server.auth_failure_window_secs must be 1 ..= {TIMEOUT_SECS_LIMIT}"
        ));
    }
    if !(1..=STREAMS_MAX_LIMIT).contains(&server.streams_max) {
        return Err(format!(
            "server.streams_max must be 1 ..= {STREAMS_MAX_LIMIT}"
        ));
    }
    if server.streams_per_token_max == 0 || server.streams_per_role_max == 0 {
        return Err(
            "server.streams_per_token_max and server.streams_per_role_max must be at least 1"
                .into(),
        );
    }
    if server.streams_reserved >= server.streams_max {
        return Err("server.streams_reserved must be less than server.streams_max".into());
    }
    Ok(())
}

/// The connection slots kept for authenticated connections: `server.reserved_connections`, at
/// most an eighth of `max_connections` (a small cap keeps its plain first-come order).
pub(crate) fn reserved_connections(server: &ServerConfig) -> usize {
    server.reserved_connections.min(server.max_connections / 8)
}

/// The bind guard, on the final configuration (`--bind` applied): a non-loopback `bind` needs
/// TLS or `allow_plain_http = true`, and never runs with `auth = "off"`. The error names the
/// option that would change the answer.
pub(crate) fn check_exposure(server: &ServerConfig) -> Result<(), String> {
    let bind = server.bind;
    if is_loopback(bind) {
        return Ok(());
    }
    if server.auth == AuthMode::Off {
        return Err(format!(
            "server.bind {bind} is not a loopback address and server.auth = \"off\": anyone who \
             can reach it could run commands; use auth = \"on\" or bind 127.0.0.1"
        ));
    }
    if server.tls_cert.is_none() && !server.allow_plain_http {
        return Err(format!(
            "server.bind {bind} is not a loopback address and TLS is off: set server.tls_cert \
             and server.tls_key, or server.allow_plain_http = true behind a TLS-terminating proxy"
        ));
    }
    Ok(())
}

/// Whether only this host can reach `bind`.
pub(crate) fn is_loopback(bind: SocketAddr) -> bool {
    bind.ip().to_canonical().is_loopback()
}

/// `scheme://host[:port]` in the form browsers send in `Origin`: lower case, no trailing `/`, and
/// no port when it is the scheme's default; `None` for anything else (a path, another scheme,
/// `null`).
pub(crate) fn canonical_origin(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = default_port(&scheme)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = split_host_port(authority)?;
    Some(match port.unwrap_or(default_port) {
        port if port == default_port => format!("{scheme}://{host}"),
        port => format!("{scheme}://{host}:{port}"),
    })
}

/// The port a URL of `scheme` means when it names none.
pub(crate) fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `host[:port]` (a `Host` header, an origin's authority) → the host in lower case (an IPv6
/// address keeps its brackets) and the port if given; `None` when it is not that shape.
pub(crate) fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let address = !inside.is_empty()
                && inside
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
            if !address {
                return None;
            }
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':')?),
            };
            (format!("[{inside}]"), port)
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            let name = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !name {
                return None;
            }
            (host.to_owned(), port)
        }
    };
    let port = match port {
        None => None,
        Some(port) => Some(port.parse::<u16>().ok()?),
    };
    Some((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn origins_are_canonical() {
        assert_eq!(
            canonical_origin("HTTPS://App.Example.com:443/").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            canonical_origin("http://localhost:3000").as_deref(),
            Some("http://localhost:3000")
        );
        assert_eq!(
            canonical_origin("http://[::1]:80").as_deref(),
            Some("http://[::1]")
        );
        for bad in [
            "null",
            "ftp://x",
            "http://",
            "http://a/b",
            "http://a:b",
            "http://u@a",
            "http://a:1:2",
            "http://[zz]",
        ] {
            assert_eq!(canonical_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn host_headers_split() {
        assert_eq!(
            split_host_port("127.0.0.1:7700"),
            Some(("127.0.0.1".into(), Some(7700)))
        );
        assert_eq!(
            split_host_port("LocalHost"),
            Some(("localhost".into(), None))
        );
        assert_eq!(split_host_port("[::1]:8"), Some(("[::1]".into(), Some(8))));
        assert_eq!(split_host_port("a:99999"), None);
        assert_eq!(split_host_port("a b"), None);
        assert_eq!(split_host_port(""), None);
    }

    #[test]
    fn tls_files_go_together_and_values_are_bounded() {
        let error = Config::parse("[server]\ntls_cert = \"c.pem\"\n").unwrap_err();
        assert!(error.contains("tls_key"), "{error}");
        let error = Config::parse("[server]\nidle_timeout_secs = 0\n").unwrap_err();
        assert!(error.contains("idle_timeout_secs"), "{error}");
        let error = Config::parse("[server]\nmax_connections = 0\n").unwrap_err();
        assert!(error.contains("max_connections"), "{error}");
        let error = Config::parse("[server]\nallowed_origins = [\"*\"]\n").unwrap_err();
        assert!(error.contains("allowed_origins"), "{error}");
        let error = Config::parse("[server]\nhostnames = [\"a.example:80\"]\n").unwrap_err();
        assert!(error.contains("hostnames"), "{error}");
        let config = Config::parse("").unwrap();
        assert_eq!(config.server.max_connections, MAX_CONNECTIONS);
        assert_eq!(config.server.header_read_timeout_secs, 10);
    }

    #[test]
    fn the_fairness_keys_are_bounded_and_the_reserve_is_at_most_an_eighth() {
        for (text, key) in [
            ("max_connections_per_ip = 0", "max_connections_per_ip"),
            ("auth_failure_window_secs = 0", "auth_failure_window_secs"),
            ("streams_max = 0", "streams_max"),
            ("streams_max = 513", "streams_max"),
            ("streams_per_role_max = 0", "streams_per_role_max"),
            ("streams_reserved = 256", "streams_reserved"),
        ] {
            let error = Config::parse(&format!("[server]\n{text}\n")).unwrap_err();
            assert!(error.contains(key), "{text}: {error}");
        }
        let config = Config::parse("").unwrap();
        assert_eq!(reserved_connections(&config.server), RESERVED_CONNECTIONS);
        let small = Config::parse("[server]\nmax_connections = 4\n").unwrap();
        assert_eq!(reserved_connections(&small.server), 0);
        assert!(Config::parse("[server]\nauth_failures_max = 0\n").is_ok());
    }

    #[test]
    fn the_bind_guard_names_the_option() {
        let mut server = Config::default().server;
        assert_eq!(check_exposure(&server), Ok(()));
        server.bind = "0.0.0.0:7700".parse().unwrap();
        let error = check_exposure(&server).unwrap_err();
        assert!(error.contains("allow_plain_http"), "{error}");
        server.allow_plain_http = true;
        assert_eq!(check_exposure(&server), Ok(()));
        server.auth = AuthMode::Off;
        let error = check_exposure(&server).unwrap_err();
        assert!(error.contains("server.auth"), "{error}");
        server.bind = "[::1]:7700".parse().unwrap();
        assert_eq!(check_exposure(&server), Ok(()));
    }
}
