//! Live events as Server-Sent Events: progress is visible while work runs, without polling.
//!
//! - `GET /v1/tasks/{id}/events/stream` sends the task's stored events (those after
//!   `Last-Event-ID`, or `?after=SEQ`), then its new ones as they become durable, and ends with an
//!   `end` event once the task is terminal and its budget settled. It loses nothing: a stream that
//!   falls behind the live buffer catches up from sled. Between them go `run.output` messages:
//!   the live output of the task's running engine and verify commands (never stored, no `id:`;
//!   a stream that falls behind on them gets `run.output.lagged` and misses those chunks).
//! - `GET /v1/events/stream` sends every new event of the service (all tasks and service-wide);
//!   one that falls behind gets a `lagged` event saying how many it missed (the REST lists have
//!   them).
//!
//! Each SSE message has `id:` the event's `seq`, `event:` its kind and `data:` its JSON. At most
//! `server.streams_max` streams are open at once, `streams_per_token_max` per token and
//! `streams_per_role_max` per role, and the last `streams_reserved` are for operator and admin
//! tokens only ([`StreamSlots`]); each is a task feeding a bounded channel (a
//! background task of the service, so shutdown waits for it), and it stops when the client goes
//! away or the service stops ([`StreamSlots::close`]).

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::stream::{self, Stream};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::describe;
use super::error::{ApiError, ErrorBody};
use super::json::QueryParams;
use super::AppState;
use crate::config::ServerConfig;
use crate::model::auth::{Principal, Role};
use crate::model::codes;
use crate::model::live::RunOutput;
use crate::model::task::{Event, Task, TaskId};
use crate::runtime::background::Slot;
use crate::runtime::live_output::LiveWatch;
use crate::storage::store::Store;

/// Messages buffered between a stream's feeder and its client.
const STREAM_BUFFER: usize = 64;
/// How often an idle stream sends a comment, so proxies and clients know it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a terminal task's stream waits for the settlement of its budget before it ends.
const SETTLE_LINGER: Duration = Duration::from_secs(5);
/// How often a task's stream looks at the task while nothing arrives (a settlement that failed
/// writes no task change, and a stream must still end).
const TASK_POLL: Duration = Duration::from_secs(1);

/// The stream limits of `[server]`.
#[derive(Debug, Clone, Copy)]
struct StreamLimits {
    /// `streams_max`: streams open at once.
    all: usize,
    /// `streams_per_token_max`.
    per_token: usize,
    /// `streams_per_role_max`.
    per_role: usize,
    /// `streams_reserved`: the last slots, for operators and admins only.
    reserved: usize,
}

/// The streams open now, in all, per token and per role.
#[derive(Debug, Default)]
struct Budget {
    /// Set at shutdown: no new stream.
    closed: bool,
    /// Open streams.
    open: usize,
    /// Open streams per token name (names with none are removed).
    per_token: HashMap<String, usize>,
    /// Open streams per role (roles with none are removed).
    per_role: HashMap<Role, usize>,
}

/// The open-stream budget, shared by the router's handlers, and the signal that ends every
/// stream at shutdown (a stream never ends by itself, and a graceful shutdown waits for open
/// responses). No caller can starve the others: a token and a role each hold a share, and the
/// last slots are kept for operators and admins.
#[derive(Clone)]
pub(crate) struct StreamSlots {
    budget: Arc<Mutex<Budget>>,
    limits: StreamLimits,
    closing: CancellationToken,
}

impl Default for StreamSlots {
    fn default() -> Self {
        Self::new(&ServerConfig::default())
    }
}

/// One open stream's place in the budget; dropping it frees the place.
pub(crate) struct StreamPermit {
    budget: Arc<Mutex<Budget>>,
    token: String,
    role: Role,
}

/// Takes one from `key`'s count, removing the key at zero.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(key);
        }
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut budget = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
        budget.open = budget.open.saturating_sub(1);
        release(&mut budget.per_token, &self.token);
        release(&mut budget.per_role, &self.role);
    }
}

impl StreamSlots {
    /// The budget of `server.streams_*`.
    pub(crate) fn new(server: &ServerConfig) -> Self {
        Self {
            budget: Arc::default(),
            limits: StreamLimits {
                all: server.streams_max,
                per_token: server.streams_per_token_max,
                per_role: server.streams_per_role_max,
                reserved: server.streams_reserved.min(server.streams_max),
            },
            closing: CancellationToken::new(),
        }
    }

    /// Ends every open stream and refuses new ones: the service is stopping.
    pub(crate) fn close(&self) {
        self.closing.cancel();
        self.budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
    }

    /// A place for one more stream of `caller`, or why not (503 `TOO_MANY_STREAMS`).
    fn take(&self, caller: &Principal) -> Result<StreamPermit, ApiError> {
        let mut budget = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(message) = self.refusal(&budget, caller) {
            return Err(ApiError::unavailable(codes::TOO_MANY_STREAMS, message));
        }
        budget.open += 1;
        *budget.per_token.entry(caller.name.clone()).or_insert(0) += 1;
        *budget.per_role.entry(caller.role).or_insert(0) += 1;
        Ok(StreamPermit {
            budget: Arc::clone(&self.budget),
            token: caller.name.clone(),
            role: caller.role,
        })
    }

    /// Why `caller` may not open one more stream now, if it may not.
    fn refusal(&self, budget: &Budget, caller: &Principal) -> Option<String> {
        let StreamLimits {
            all,
            per_token,
            per_role,
            reserved,
        } = self.limits;
        let role = caller.role.name();
        let operator = caller.role >= Role::Operator;
        Some(if budget.closed {
            "the service is stopping".to_owned()
        } else if budget.open >= all {
            format!("{all} event streams are open; try again later")
        } else if !operator && budget.open >= all - reserved {
            format!(
                "the last {reserved} of {all} event-stream slots are kept for operators and \
                 admins; try again later"
            )
        } else if budget.per_token.get(&caller.name).copied().unwrap_or(0) >= per_token {
            format!(
                "token `{}` holds {per_token} event streams open; close one",
                caller.name
            )
        } else if budget.per_role.get(&caller.role).copied().unwrap_or(0) >= per_role {
            format!("the {role} tokens hold {per_role} event streams open; try again later")
        } else {
            return None;
        })
    }
}

/// Room for a stream's feeder among the service's background tasks; none left is answered like a
/// full stream budget (503 `TOO_MANY_STREAMS`), before anything is streamed.
fn feeder_slot(app: &AppState) -> Result<Slot, ApiError> {
    app.services.background.slot().ok_or_else(|| {
        ApiError::unavailable(
            codes::TOO_MANY_STREAMS,
            "too much background work is running to open a stream; try again later",
        )
    })
}

type Message = Result<SseEvent, Infallible>;

/// One Server-Sent Event of the event streams, as the OpenAPI document describes it: the wire
/// is `text/event-stream` text, one `field: value` line per field and a blank line after each
/// event; `data` is one line of JSON. Never built: axum's `Sse` writes the frames.
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "the document's description of a frame axum writes"
)]
pub(crate) struct StreamFrame {
    /// `id:` the event's `seq`; absent on `run.output`, `run.output.lagged`, `lagged` and `end`.
    id: Option<u64>,
    /// `event:` the event's `kind`, or `run.output`, `run.output.lagged`, `lagged`, `end`.
    event: String,
    /// `data:` an `Event` as JSON; a `RunOutput` for `run.output`; `{task_id, skipped}` for
    /// `run.output.lagged`; `{skipped}` for `lagged`; `{task_id, status}` for `end`.
    data: String,
}

/// `GET /v1/tasks/{id}/events/stream`.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/events/stream",
    operation_id = "stream_task_events",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "Task id (a UUID)."),
        ("after" = Option<u64>, Query, description = "Send only events with a greater `seq`."),
        ("Last-Event-ID" = Option<u64>, Header,
            description = "A reconnecting client's last `seq` (wins over `after`)."),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `id:` seq, `event:` kind, `data:` the \
            Event JSON; the stored events, then live ones; between them `event: run.output` \
            (no `id:`) with a RunOutput: the live output of a running engine or verify command, \
            redacted, at most 4 KiB and 10 chunks a second per run, never stored; \
            `event: run.output.lagged` with `{task_id, skipped}` when the stream fell behind on \
            those; `event: end` with `{task_id, status}` once the task is terminal and settled, \
            then the stream closes.",
            body = StreamFrame, content_type = "text/event-stream"),
        (status = 404, description = describe::TASK_NOT_FOUND, body = ErrorBody),
        (status = 422, description = "`INVALID_FIELD`: `after` or `Last-Event-ID` is not an \
            integer.", body = ErrorBody),
        (status = 503, description = describe::TOO_MANY_STREAMS, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn task_events(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found =
        || ApiError::not_found(codes::TASK_NOT_FOUND, format!("no task with id `{id}`"));
    let task_id: TaskId = id.parse().map_err(|_| not_found())?;
    app.services
        .store
        .task(task_id)
        .await?
        .ok_or_else(not_found)?;
    let after = resume_point(&query, &headers)?;
    let permit = app.streams.take(&caller)?;
    let slot = feeder_slot(&app)?;
    let store = app.services.store.clone();
    // Subscribed before the stored events are read: nothing written in between is missed.
    let live = store.subscribe();
    let output = app.services.live_output.watch(task_id);
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    let closing = app.streams.closing.clone();
    slot.spawn("stream.task", async move {
        let _permit = permit;
        let fed = tokio::select! {
            () = closing.cancelled() => Ok(()),
            fed = feed_task(&store, task_id, after, (live, output), &sender) => fed,
        };
        if let Err(error) = fed {
            tracing::warn!(task = %task_id, %error, "a task's event stream stopped");
            let _ = sender.send(Ok(error_message(&error))).await;
        }
    });
    Ok(sse(receiver))
}

/// `GET /v1/events/stream`.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    operation_id = "stream_all_events",
    tag = "system",
    responses(
        (status = 200, description = "Server-Sent Events: every new event of the service (`id:` \
            seq, `event:` kind, `data:` the Event JSON); `event: lagged` with `{skipped}` for a \
            client that fell 1024 events behind. Never ends by itself.",
            body = StreamFrame, content_type = "text/event-stream"),
        (status = 503, description = describe::TOO_MANY_STREAMS, body = ErrorBody),
    )
)]
pub(crate) async fn all_events(
    State(app): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Response, ApiError> {
    let permit = app.streams.take(&caller)?;
    let slot = feeder_slot(&app)?;
    let mut live = app.services.store.subscribe();
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    let closing = app.streams.closing.clone();
    slot.spawn("stream.all", async move {
        let _permit = permit;
        loop {
            let message = tokio::select! {
                () = closing.cancelled() => return,
                () = sender.closed() => return,
                received = live.recv() => match received {
                    Ok(event) => event_message(&event),
                    Err(RecvError::Lagged(skipped)) => SseEvent::default()
                        .event("lagged")
                        .data(json!({"skipped": skipped}).to_string()),
                    Err(RecvError::Closed) => return,
                },
            };
            if sender.send(Ok(message)).await.is_err() {
                return;
            }
        }
    });
    Ok(sse(receiver))
}

/// Where a task's stream starts: after `Last-Event-ID` (a reconnecting client) or `?after=`.
fn resume_point(query: &HashMap<String, String>, headers: &HeaderMap) -> Result<u64, ApiError> {
    let text = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .or(query.get("after").map(String::as_str));
    match text {
        None => Ok(0),
        Some(text) => text.trim().parse().map_err(|_| {
            ApiError::invalid_field("after (or Last-Event-ID) must be an event seq (an integer)")
        }),
    }
}

/// Sends the task's events after `after`, then its live ones, until the task has ended and its
/// books are closed (or the client has gone).
async fn feed_task(
    store: &Store,
    task_id: TaskId,
    after: u64,
    (mut live, output): (tokio::sync::broadcast::Receiver<Arc<Event>>, LiveWatch),
    sender: &mpsc::Sender<Message>,
) -> Result<(), crate::storage::store::StoreError> {
    let mut output = Some(output);
    // Seqs already sent. Concurrent writers may commit a task's events slightly out of seq order,
    // so a set (not a high-water mark) decides what is new.
    let mut sent = BTreeSet::new();
    let mut terminal_since: Option<tokio::time::Instant> = None;
    if !send_stored(store, task_id, after, &mut sent, sender).await {
        return Ok(());
    }
    // Whether to look at the task record: at the start, after one of its events, on a poll tick.
    let mut look = true;
    // One interval for the whole stream: other tasks' events must not keep postponing the tick.
    let mut poll = tokio::time::interval(TASK_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let task = if std::mem::take(&mut look) {
            store.task(task_id).await?
        } else {
            None
        };
        match task {
            Some(task) if task.progress.status.is_terminal() => {
                let since = *terminal_since.get_or_insert_with(tokio::time::Instant::now);
                if books_closed(&task) || since.elapsed() >= SETTLE_LINGER {
                    // Whatever was written up to the end goes out before `end`.
                    send_stored(store, task_id, after, &mut sent, sender).await;
                    let end = json!({"task_id": task_id, "status": task.progress.status});
                    let _ = sender
                        .send(Ok(SseEvent::default().event("end").data(end.to_string())))
                        .await;
                    return Ok(());
                }
            }
            // Retried after it failed: it is running again.
            Some(_) => terminal_since = None,
            None => {}
        }
        tokio::select! {
            () = sender.closed() => return Ok(()),
            _ = poll.tick() => look = true,
            received = live.recv() => match received {
                Ok(event) if event.task_id == task_id => {
                    look = true;
                    if sent.insert(event.seq)
                        && sender.send(Ok(event_message(&event))).await.is_err()
                    {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                // Fell behind the live buffer: sled has everything.
                Err(RecvError::Lagged(_)) => {
                    look = true;
                    if !send_stored(store, task_id, after, &mut sent, sender).await {
                        return Ok(());
                    }
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            received = next_output(&mut output) => {
                let message = match received {
                    Ok(chunk) if chunk.task_id == task_id => Some(output_message(&chunk)),
                    Ok(_) => None,
                    // Live output is not stored: what the stream fell behind on is gone.
                    Err(RecvError::Lagged(skipped)) => Some(SseEvent::default()
                        .event(OUTPUT_LAGGED)
                        .data(json!({"task_id": task_id, "skipped": skipped}).to_string())),
                    Err(RecvError::Closed) => {
                        output = None;
                        None
                    }
                };
                if let Some(message) = message {
                    if sender.send(Ok(message)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The SSE event of a chunk of live output.
const OUTPUT_EVENT: &str = "run.output";
/// The SSE event telling a task's stream it missed chunks of live output (of any task).
const OUTPUT_LAGGED: &str = "run.output.lagged";

/// The next chunk of live output; never, once there is none to come.
async fn next_output(watch: &mut Option<LiveWatch>) -> Result<Arc<RunOutput>, RecvError> {
    match watch {
        Some(watch) => watch.receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// A chunk of live output as an SSE message: no `id:` (it is not a stored event, and a
/// reconnecting client resumes from the last stored one).
fn output_message(chunk: &RunOutput) -> SseEvent {
    let data = serde_json::to_string(chunk).unwrap_or_else(|error| {
        json!({"run_id": chunk.run_id, "error": format!("output does not encode: {error}")})
            .to_string()
    });
    SseEvent::default().event(OUTPUT_EVENT).data(data)
}

/// Sends the stored events after `after` not sent yet; false once the client has gone.
async fn send_stored(
    store: &Store,
    task_id: TaskId,
    after: u64,
    sent: &mut BTreeSet<u64>,
    sender: &mpsc::Sender<Message>,
) -> bool {
    let events = match store.events_after(task_id, after).await {
        Ok(events) => events,
        Err(error) => {
            let _ = sender.send(Ok(error_message(&error))).await;
            return false;
        }
    };
    for event in events {
        if sent.insert(event.seq) && sender.send(Ok(event_message(&event))).await.is_err() {
            return false;
        }
    }
    true
}

/// A task has nothing more to say once it is terminal and its reservation is settled.
fn books_closed(task: &Task) -> bool {
    task.billing.settled || task.billing.reservation.is_none()
}

fn event_message(event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_else(|error| {
        json!({"seq": event.seq, "error": format!("event does not encode: {error}")}).to_string()
    });
    SseEvent::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(data)
}

fn error_message(error: &impl std::fmt::Display) -> SseEvent {
    let body = json!({"error": {"code": codes::STREAM_FAILED, "message": error.to_string()}});
    SseEvent::default().event("error").data(body.to_string())
}

fn sse(receiver: mpsc::Receiver<Message>) -> Response {
    let messages = receiver_stream(receiver);
    Sse::new(messages)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn receiver_stream(receiver: mpsc::Receiver<Message>) -> impl Stream<Item = Message> {
    stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|message| (message, receiver))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::transport::{
        STREAMS_MAX, STREAMS_PER_ROLE_MAX, STREAMS_PER_TOKEN_MAX, STREAMS_RESERVED,
    };

    fn caller(name: &str, role: Role) -> Principal {
        Principal {
            name: name.to_owned(),
            role,
            accounts: Vec::new(),
            repos: Vec::new(),
            engines: false,
        }
    }

    #[test]
    fn one_token_holds_at_most_its_share_of_the_streams() {
        let slots = StreamSlots::default();
        let (a, b) = (caller("a", Role::Viewer), caller("b", Role::Viewer));
        let mut held: Vec<StreamPermit> = (0..STREAMS_PER_TOKEN_MAX)
            .map(|_| slots.take(&a).unwrap())
            .collect();
        assert!(slots.take(&a).is_err());
        let other = slots.take(&b).unwrap();
        held.pop();
        let again = slots.take(&a).unwrap();
        drop((held, other, again));
        let budget = slots.budget.lock().unwrap();
        assert!(budget.per_token.is_empty() && budget.per_role.is_empty());
        assert_eq!(budget.open, 0);
    }

    #[test]
    fn viewers_hold_their_role_share_and_the_reserve_is_for_operators_and_admins() {
        let slots = StreamSlots::default();
        let viewers: Vec<Principal> = (0..10)
            .map(|n| caller(&format!("v{n}"), Role::Viewer))
            .collect();
        let mut held = Vec::new();
        for viewer in viewers.iter().cycle().take(STREAMS_MAX) {
            match slots.take(viewer) {
                Ok(permit) => held.push(permit),
                Err(error) => assert_eq!(error.status_and_code(), (503, codes::TOO_MANY_STREAMS)),
            }
        }
        assert_eq!(held.len(), STREAMS_PER_ROLE_MAX);
        // Submitters fill the rest up to the reserve, never into it.
        let submitters: Vec<Principal> = (0..10)
            .map(|n| caller(&format!("s{n}"), Role::Submitter))
            .collect();
        for submitter in submitters.iter().cycle().take(STREAMS_MAX) {
            if let Ok(permit) = slots.take(submitter) {
                held.push(permit);
            }
        }
        assert_eq!(held.len(), STREAMS_MAX - STREAMS_RESERVED);
        let admin = slots.take(&caller("root", Role::Admin)).unwrap();
        let operator = slots.take(&caller("ops", Role::Operator)).unwrap();
        drop((held, admin, operator));
        assert_eq!(slots.budget.lock().unwrap().open, 0);
    }
}
