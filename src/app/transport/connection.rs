//! One connection: HTTP/1.1 through hyper, watched by the service's own clock for its timeouts.
//!
//! hyper's `header_read_timeout` restarts whenever a keep-alive connection waits for its next
//! request, so it cannot tell a slow head from an idle connection. The connection's [`Clock`]
//! can: the socket reports bytes read ([`Watched`]), each request holds an [`InFlight`] until its
//! response body is done or dropped, and the connection's task closes the connection when
//!
//! - a request head has been arriving for `header_read_timeout` (slowloris),
//! - nothing is in flight and nothing arrived for `idle_timeout` (a request in flight, an event
//!   stream included, is never cut by either) — before the first request, for `first_request`
//!   (the head timeout when the connection arrived with slots short),
//! - the connection is shed to make room (`super::admission`; one with a request in flight
//!   finishes it first), or
//! - a write has been blocked for `idle_timeout`: the client stopped reading its answer (a slow
//!   read would otherwise hold its slot forever, in flight);
//!
//! while each request's body must arrive within `body_read_timeout` of its head
//! ([`DeadlineBody`]; the answer is then `408 BODY_TIMEOUT` with `Connection: close`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::app::http::guard::{self, Arrival};

/// The connection timeouts, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From a head's first byte to its end (and for a TLS handshake).
    pub header_read: Duration,
    /// From a head's end to its body's end.
    pub body_read: Duration,
    /// With nothing in flight and nothing arriving, or with a write blocked.
    pub idle: Duration,
    /// Like `idle`, before the connection's first request.
    pub first_request: Duration,
}

/// Why the service closed a connection itself (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A request head took longer than `header_read_timeout`.
    Header,
    /// Nothing happened for `idle_timeout`.
    Idle,
    /// The client read nothing of its answer for `idle_timeout`.
    Write,
}

impl Expiry {
    /// The label of `glitchlab_http_connections_closed_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Header => "header_timeout",
            Self::Idle => "idle_timeout",
            Self::Write => "write_timeout",
        }
    }
}

/// What a connection is doing, as its timeouts see it.
#[derive(Debug)]
struct ClockState {
    /// Requests whose response body is not done yet.
    in_flight: usize,
    /// When the first byte of a request head not yet complete arrived.
    head_since: Option<Instant>,
    /// When the connection last became free of requests (or was accepted).
    idle_since: Instant,
    /// Since when a write has found the socket full, if the last one did.
    write_blocked_since: Option<Instant>,
    /// Whether a request has started on the connection.
    served: bool,
}

/// A connection's clock, shared by its socket, its requests and its task. A std mutex: it is
/// never held across an await, and each hold is a few assignments.
#[derive(Debug)]
struct Clock {
    /// The state.
    state: Mutex<ClockState>,
    /// Wakes the connection's task when a deadline may have moved (one waiter, so a wake-up
    /// sent while it is not waiting is kept for its next wait).
    changed: Notify,
}

impl Clock {
    fn new() -> Self {
        Self {
            state: Mutex::new(ClockState {
                in_flight: 0,
                head_since: None,
                idle_since: Instant::now(),
                write_blocked_since: None,
                served: false,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, ClockState> {
        // The state stays consistent whatever panicked while it was held: plain assignments.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next deadline and what it means: while a write is blocked, only its own; else, with
    /// nothing in flight, the head's or the idle one; none while a request is in flight.
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, Expiry)> {
        let state = self.state();
        if let Some(since) = state.write_blocked_since {
            return Some((since + timeouts.idle, Expiry::Write));
        }
        if state.in_flight > 0 {
            return None;
        }
        let idle = if state.served {
            timeouts.idle
        } else {
            timeouts.first_request
        };
        Some(match state.head_since {
            Some(since) => (since + timeouts.header_read, Expiry::Header),
            None => (state.idle_since + idle, Expiry::Idle),
        })
    }

    /// A write found the socket full (`blocked`) or got through; getting through again counts
    /// as activity (the end of an answer may still be going out after its request ended).
    fn on_write(&self, blocked: bool) {
        let mut state = self.state();
        match (blocked, state.write_blocked_since) {
            (true, None) => state.write_blocked_since = Some(Instant::now()),
            (false, Some(_)) => {
                state.write_blocked_since = None;
                state.idle_since = Instant::now();
            }
            _ => return,
        }
        drop(state);
        self.changed.notify_one();
    }

    /// Bytes arrived: with nothing in flight they begin a request head.
    fn on_read(&self) {
        let mut state = self.state();
        if state.in_flight == 0 && state.head_since.is_none() {
            state.head_since = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A head is complete: a request is in flight until the returned guard drops.
    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.head_since = None;
        state.served = true;
        drop(state);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }
}

/// A request in flight on its connection: held by the request's future, then by its response
/// body, and dropped when the body is done (or the connection goes).
#[derive(Debug)]
struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
        drop(state);
        self.0.changed.notify_one();
    }
}

/// A socket (TCP or TLS) that tells its connection's clock when bytes arrive.
struct Watched<I> {
    /// The socket.
    io: I,
    /// Its connection's clock.
    clock: Arc<Clock>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.on_read();
        }
        polled
    }
}

impl<I> Watched<I> {
    /// Tells the clock whether a write was blocked, and passes its result on.
    fn noting<T>(&self, polled: Poll<T>) -> Poll<T> {
        self.clock.on_write(polled.is_pending());
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.noting(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.noting(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Under TLS the records wait in rustls until a flush gets them onto the socket.
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.noting(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body that must end by a deadline set when its head arrived.
struct DeadlineBody {
    /// What hyper reads from the socket.
    inner: Incoming,
    /// The head's arrival plus `body_read_timeout`.
    deadline: Pin<Box<Sleep>>,
    /// Set when the deadline passed before the body ended: the request is answered 408.
    timed_out: Arc<AtomicBool>,
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within server.body_read_timeout_secs")]
struct BodyTimedOut;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(axum::BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request in flight until it is done or dropped.
struct CountedBody {
    /// The router's body.
    inner: Body,
    /// Dropped with the body.
    _in_flight: InFlight,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The requests of one connection: each is marked in flight, given its body deadline and its
/// [`Arrival`], and handed to the router.
#[derive(Clone)]
struct Requests {
    router: Router,
    clock: Arc<Clock>,
    arrival: Arrival,
    body_read: Duration,
}

impl hyper::service::Service<Request<Incoming>> for Requests {
    type Response = Response<CountedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.clock.request_started();
        let timed_out = Arc::new(AtomicBool::new(false));
        let (mut parts, inner) = request.into_parts();
        parts.extensions.insert(self.arrival.clone());
        let body = DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(self.body_read)),
            timed_out: Arc::clone(&timed_out),
        };
        let request = Request::from_parts(parts, Body::new(body));
        let router = self.router.clone();
        Box::pin(async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // The handler saw a body error and answered for it; the client is told the cause.
            let response = if timed_out.load(Ordering::Acquire) {
                guard::body_timeout()
            } else {
                response
            };
            Ok(response.map(|inner| CountedBody {
                inner,
                _in_flight: in_flight,
            }))
        })
    }
}

/// Serves one accepted connection (already through TLS when on) until it ends, a timeout closes
/// it, or — after `stop` — its open requests are answered.
pub(crate) async fn serve<I>(
    io: I,
    router: Router,
    arrival: Arrival,
    timeouts: Timeouts,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(Clock::new());
    let standing = Arc::clone(&arrival.standing);
    let requests = Requests {
        router,
        clock: Arc::clone(&clock),
        arrival,
        body_read: timeouts.body_read,
    };
    let io = TokioIo::new(Watched {
        io,
        clock: Arc::clone(&clock),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's own head timer is off: the clock keeps it (hyper's would also cut idle ones).
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let connection = builder.serve_connection(io, requests);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        let changed = clock.changed.notified();
        let deadline = clock.deadline(timeouts);
        let expired = async {
            match deadline {
                Some((at, expiry)) => {
                    tokio::time::sleep_until(at).await;
                    expiry
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = changed => {}
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            () = standing.shed().cancelled(), if !stopping => {
                crate::platform::metrics::http_connection_closed("shed");
                if clock.state().in_flight == 0 {
                    return;
                }
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            expiry = expired => {
                // Re-read: a request may have started at the same instant.
                if clock.deadline(timeouts).is_some_and(|(at, _)| at <= Instant::now()) {
                    tracing::debug!(reason = expiry.label(), "closing a connection");
                    crate::platform::metrics::http_connection_closed(expiry.label());
                    return;
                }
            }
        }
    }
}
