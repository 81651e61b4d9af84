//! The server under the router: the listener, TLS, the connection cap and the accept loop
//! (`axum::serve` has no timeouts and no cap, so the service runs its own, as mini-redis does).
//!
//! - At most `server.max_connections` connections are served at once: the loop takes a slot
//!   before it accepts, so past the cap new connections **wait** in the kernel's listen backlog
//!   (they are not refused) until a connection closes; the timeouts bound how long an idle or
//!   slow one can hold its slot.
//! - Each connection is a task of one `JoinSet` owned by [`Transport::serve`]: when shutdown
//!   aborts the serving task after `server.shutdown_timeout_secs`, every connection goes with it.
//! - Under TLS the handshake must end within `header_read_timeout_secs`.
//! - `stop` ends accepting (the listener is closed at once) and asks every connection to finish
//!   its open requests and close; [`Transport::serve`] returns when the last one has.

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
}

/// What each connection task gets (cheap clones of shared handles).
#[derive(Clone)]
struct Shared {
    router: Router,
    tls: Option<TlsAcceptor>,
    policy: Arc<Policy>,
    timeouts: Timeouts,
    stop: CancellationToken,
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
            },
            max_connections: server.max_connections,
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
        } = self;
        let shared = Shared {
            router,
            tls,
            policy,
            timeouts,
            stop: stop.clone(),
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
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, shared.clone(), slot));
                }
                Err(error) => accept_failed(&error, &stop).await,
            }
        }
        // No new connection from here: the port refuses them.
        drop(listener);
        while connections.join_next().await.is_some() {}
    }
}

/// One connection's task: TLS (bounded by the head timeout), then HTTP; holds its slot.
async fn serve_connection(stream: TcpStream, shared: Shared, _slot: OwnedSemaphorePermit) {
    let _open = metrics::HttpConnection::opened();
    let Ok(local) = stream.local_addr() else {
        return;
    };
    // Small writes (event streams) go out at once.
    let _ = stream.set_nodelay(true);
    let arrival = Arrival {
        policy: shared.policy,
        local,
    };
    let Some(acceptor) = shared.tls else {
        connection::serve(stream, shared.router, arrival, shared.timeouts, shared.stop).await;
        return;
    };
    let handshake = tokio::time::timeout(shared.timeouts.header_read, acceptor.accept(stream));
    let stream = tokio::select! {
        () = shared.stop.cancelled() => return,
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
    connection::serve(stream, shared.router, arrival, shared.timeouts, shared.stop).await;
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
