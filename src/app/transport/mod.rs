//! The server under the router: the listener, TLS, the connection cap and the accept loop
//! (`axum::serve` has no timeouts and no cap, so the service runs its own, as mini-redis does).
//!
//! - At most `server.max_connections` connections are served at once: the loop takes a slot
//!   before it accepts, so past the cap new connections **wait** in the kernel's listen backlog
//!   (they are not refused) until a connection closes; the timeouts bound how long an idle or
//!   slow one can hold its slot.
//! - Each connection is a task of one `JoinSet` owned by [`Transport::serve`]: when shutdown
//!   aborts the serving task after `server.shutdown_timeout_secs`, every connection goes with it.
//! - Fairness (`admission`): one client address holds at most `server.max_connections_per_ip`
//!   connections, and once the free slots are down to `server.reserved_connections`, each new
//!   connection sheds the oldest one no request of which authenticated, so idle or
//!   unauthenticated sockets cannot keep the clients that authenticate (or `/healthz`) out.
//! - Under TLS the handshake must end within `header_read_timeout_secs`.
//! - `stop` ends accepting (the listener is closed at once) and asks every connection to finish
//!   its open requests and close; [`Transport::serve`] returns when the last one has.

pub(crate) mod admission;
pub(crate) mod connection;
pub(crate) mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::app::http::guard::{Arrival, Policy};
use crate::config::ServerConfig;
use crate::platform::metrics;
use admission::{Admission, Admitted};
use connection::Timeouts;

/// How long the accept loop pauses after an error that is not one connection's (e.g. out of
/// file descriptors), so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The bound listener and what every connection is served with.
pub(crate) struct Transport {
    /// Bound in `Application::build`, so the address is known before serving.
    listener: TcpListener,
    /// HTTPS when `server.tls_cert` is set.
    tls: Option<TlsAcceptor>,
    /// The browser protections' rules.
    policy: Arc<Policy>,
    /// The connection timeouts.
    timeouts: Timeouts,
    /// `server.max_connections`.
    max_connections: usize,
    /// Who keeps a slot when they run short.
    admission: Arc<Admission>,
}

/// What each connection task gets (cheap clones of shared handles).
#[derive(Clone)]
struct Shared {
    router: Router,
    tls: Option<TlsAcceptor>,
    policy: Arc<Policy>,
    timeouts: Timeouts,
    stop: CancellationToken,
    admission: Arc<Admission>,
}

impl Transport {
    /// Binds `server.bind` with the TLS acceptor (if any) already loaded.
    pub(crate) async fn bind(server: &ServerConfig, tls: Option<TlsAcceptor>) -> io::Result<Self> {
        let listener = TcpListener::bind(server.bind).await?;
        let policy = Arc::new(Policy::new(server, tls.is_some()));
        Ok(Self {
            listener,
            tls,
            policy,
            timeouts: Timeouts {
                header_read: Duration::from_secs(server.header_read_timeout_secs),
                body_read: Duration::from_secs(server.body_read_timeout_secs),
                idle: Duration::from_secs(server.idle_timeout_secs),
                first_request: Duration::from_secs(server.idle_timeout_secs),
            },
            max_connections: server.max_connections,
            admission: Admission::new(
                server.max_connections,
                crate::config::transport::reserved_connections(server),
                server.max_connections_per_ip,
            ),
        })
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// `https` under TLS, else `http`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Accepts and serves connections until `stop`, then waits for the open ones to finish.
    pub(crate) async fn serve(self, router: Router, stop: CancellationToken) {
        let Self {
            listener,
            tls,
            policy,
            timeouts,
            max_connections,
            admission,
        } = self;
        let shared = Shared {
            router,
            tls,
            policy,
            timeouts,
            stop: stop.clone(),
            admission,
        };
        let slots = Arc::new(Semaphore::new(max_connections));
        let mut connections = JoinSet::new();
        loop {
            let slot = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_closed) => break,
                },
            };
            let accepted = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            // Reap the connections that ended, so the set holds at most the open ones.
            while connections.try_join_next().is_some() {}
            match accepted {
                Ok((stream, peer)) => match shared.admission.admit(peer.ip().to_canonical()) {
                    Some(admitted) => {
                        let shared = shared.clone();
                        connections.spawn(serve_connection(stream, shared, slot, admitted, peer));
                    }
                    // Dropped unserved: the address holds its share already.
                    None => metrics::http_connection_closed("per_ip_limit"),
                },
                Err(error) => accept_failed(&error, &stop).await,
            }
        }
        // No new connection from here: the port refuses them.
        drop(listener);
        while connections.join_next().await.is_some() {}
    }
}

/// One connection's task: TLS (bounded by the head timeout), then HTTP; holds its slot and its
/// place in the admission table.
async fn serve_connection(
    stream: TcpStream,
    shared: Shared,
    _slot: OwnedSemaphorePermit,
    admitted: Admitted,
    peer: SocketAddr,
) {
    let _open = metrics::HttpConnection::opened();
    let Ok(local) = stream.local_addr() else {
        return;
    };
    // Small writes (event streams) go out at once.
    let _ = stream.set_nodelay(true);
    let mut timeouts = shared.timeouts;
    if admitted.under_pressure {
        // Slots are short: a socket that sends nothing goes at the head timeout, not the idle one.
        timeouts.first_request = timeouts.header_read.min(timeouts.idle);
    }
    let arrival = Arrival {
        policy: shared.policy,
        local,
        peer,
        standing: Arc::clone(&admitted.standing),
    };
    let Some(acceptor) = shared.tls else {
        connection::serve(stream, shared.router, arrival, timeouts, shared.stop).await;
        return;
    };
    let handshake = tokio::time::timeout(shared.timeouts.header_read, acceptor.accept(stream));
    let stream = tokio::select! {
        () = shared.stop.cancelled() => return,
        () = admitted.standing.shed().cancelled() => {
            metrics::http_connection_closed("shed");
            return;
        }
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                return;
            }
            Err(_elapsed) => {
                metrics::http_connection_closed("tls_handshake_timeout");
                return;
            }
        },
    };
    connection::serve(stream, shared.router, arrival, timeouts, shared.stop).await;
}

/// Raises this process's soft open-file limit to its hard limit, once at start: each connection
/// is a descriptor, and a soft limit of 1024 (a common default) would run out before
/// `server.max_connections` does. Logs what it did; a failure is logged and the service goes on.
pub(crate) fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = io::Error::last_os_error();
        tracing::warn!(%error, "could not read the open-files limit");
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        tracing::info!(open_files = limit.rlim_cur, "open-files limit");
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let error = io::Error::last_os_error();
        tracing::warn!(%error, soft = limit.rlim_cur, "could not raise the open-files limit");
        return;
    }
    tracing::info!(
        from = limit.rlim_cur,
        to = limit.rlim_max,
        "raised the open-files limit to its hard limit"
    );
}

/// An accept error: one connection's (it is gone; go on) or the listener's (e.g. no file
/// descriptors left: say so and pause, or the loop would spin).
async fn accept_failed(error: &io::Error, stop: &CancellationToken) {
    let one_connection = matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    );
    if one_connection {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; pausing");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
    }
}
