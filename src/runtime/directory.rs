//! The live view of the supervision tree, shared between Compass (its only writer), the pipelines
//! (which look up the *current* ref of a persona, never a cached one) and the HTTP ingress.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ractor::{ActorCell, ActorId, ActorRef, ActorStatus, Message};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::persona::Persona;
use crate::model::task::TaskId;

/// How often a caller waiting for a restarting persona looks again.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The health of one actor as its supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorHealth {
    /// Up and taking messages.
    Running,
    /// Crashed; its supervisor restarts it after a backoff.
    Restarting,
    /// Crashed more often than the restart policy allows; not restarted again.
    Failed,
    /// Stopped on shutdown.
    Stopped,
}

/// One row of `GET /v1/actors`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActorEntry {
    /// `compass`, `patch`, `pipeline-<task-id>`, ...
    pub name: String,
    /// Its supervisor's name; `None` for the root.
    pub parent: Option<String>,
    /// Health.
    pub status: ActorHealth,
    /// Restarts since the service started.
    pub restarts: u32,
}

struct Slot {
    entry: ActorEntry,
    /// The current incarnation; replaced on every restart.
    cell: Option<ActorCell>,
}

/// A persona's mailbox: ties the message type to the persona that reads it, so a lookup by type
/// cannot hand a caller the wrong actor (a mismatch does not compile).
pub trait PersonaMailbox: Message {
    /// The persona whose mailbox this is.
    const PERSONA: Persona;

    /// The message that only asks for an answer: `/readyz` sends it through the mailbox, so a
    /// wedged actor (running, but not reading its mailbox) shows.
    fn ping(reply: ractor::RpcReplyPort<()>) -> Self;
}

/// A persona could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// It failed past its restart limit.
    #[error("{0} failed past its restart limit")]
    Failed(String),
    /// It did not come back within the wait.
    #[error("{0} did not come back within {1:?}")]
    NotBack(String, Duration),
}

/// Shared directory of actors; a std `RwLock` because no lock is ever held across an `.await`.
#[derive(Default)]
pub struct ActorDirectory {
    slots: RwLock<BTreeMap<String, Slot>>,
    /// Compass's queue and the submissions admitted into it, under one lock: the ingress's bound
    /// check and Compass's hand-over never see half of a change.
    queue: Mutex<QueueCount>,
    /// Set once Compass has loaded the queue of a start (`queued` is then true): until then the
    /// ingress refuses submissions, since a bound checked against an empty count is no bound.
    queue_loaded: std::sync::atomic::AtomicBool,
    /// Wakes those waiting for `queue_loaded` ([`ActorDirectory::wait_queue_loaded`]).
    queue_loaded_now: tokio::sync::Notify,
    /// The task whose request each persona is taking in right now: left in place when the
    /// persona panics there, so Compass can tell which task crashed it. The one entry written by
    /// the personas themselves, not by Compass.
    handling: Mutex<BTreeMap<Persona, TaskId>>,
}

/// What counts against `compass.max_queued_tasks`.
#[derive(Debug, Default)]
struct QueueCount {
    /// Tasks waiting in Compass's queue.
    queued: usize,
    /// Submissions admitted by the ingress that Compass has not counted in `queued` yet: counted
    /// too, so concurrent submits cannot overshoot the bound between admission and queueing.
    admitted: usize,
}

/// A queue place reserved for a submission until Compass has queued it ([`Admission::hand_over`]);
/// dropped without that (refused, failed, replayed), it frees the place.
pub struct Admission {
    directory: Arc<ActorDirectory>,
    handed_over: bool,
}

impl Admission {
    /// Compass was told about the task: it frees the place once the task is in its queue
    /// ([`ActorDirectory::admission_queued`]).
    pub fn hand_over(mut self) {
        self.handed_over = true;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.handed_over {
            self.directory.admission_queued();
        }
    }
}

impl ActorDirectory {
    /// Records (or replaces) an actor's entry and current cell.
    pub fn set(&self, entry: ActorEntry, cell: Option<ActorCell>) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        slots.insert(entry.name.clone(), Slot { entry, cell });
    }

    /// Forgets an actor (a pipeline whose task ended).
    pub fn remove(&self, name: &str) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        slots.remove(name);
    }

    /// Marks every actor stopped (on shutdown).
    pub fn mark_all_stopped(&self) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        for slot in slots.values_mut() {
            slot.entry.status = ActorHealth::Stopped;
            slot.cell = None;
        }
    }

    /// Every actor, by name.
    pub fn snapshot(&self) -> Vec<ActorEntry> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots.values().map(|slot| slot.entry.clone()).collect()
    }

    /// The root and the personas that are not running: what `/readyz` names.
    pub fn not_ready(&self) -> Vec<ActorEntry> {
        self.snapshot()
            .into_iter()
            .filter(|entry| !entry.name.starts_with("pipeline-"))
            .filter(|entry| entry.status != ActorHealth::Running)
            .collect()
    }

    /// Tasks waiting in Compass's queue (kept here so the ingress can refuse work cheaply).
    pub fn queue_depth(&self) -> usize {
        self.queue_count().queued
    }

    /// Reserves a queue place for a submission, unless the queue and the places already reserved
    /// hold `limit`.
    pub fn admit(self: &Arc<Self>, limit: usize) -> Option<Admission> {
        let mut count = self.queue_count();
        if count.queued + count.admitted >= limit {
            return None;
        }
        count.admitted += 1;
        Some(Admission {
            directory: self.clone(),
            handed_over: false,
        })
    }

    /// Frees a place [`ActorDirectory::admit`] reserved without counting it in the queue (the
    /// submission never got that far, or Compass did not queue it).
    pub fn admission_queued(&self) {
        let mut count = self.queue_count();
        count.admitted = count.admitted.saturating_sub(1);
    }

    /// Whether Compass has loaded this start's queue, so [`ActorDirectory::admit`]'s count is
    /// true (the ingress answers `503 NOT_READY` and `/readyz` 503 until then).
    pub fn queue_loaded(&self) -> bool {
        self.queue_loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Compass loaded its queue of `depth` tasks: the count is true from now on.
    pub fn set_queue_loaded(&self, depth: usize) {
        self.set_queue_depth(depth);
        self.queue_loaded
            .store(true, std::sync::atomic::Ordering::Release);
        self.queue_loaded_now.notify_waiters();
    }

    /// Waits at most `wait` for Compass to load its queue; answers whether it has. A request
    /// that arrives in the first moments after a start waits this long instead of being refused.
    pub async fn wait_queue_loaded(&self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Made before the check: a `notify_waiters` in between still wakes it.
            let loaded = self.queue_loaded_now.notified();
            if self.queue_loaded() {
                return true;
            }
            if tokio::time::timeout_at(deadline, loaded).await.is_err() {
                return self.queue_loaded();
            }
        }
    }

    /// Updated by Compass whenever its queue changes.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_count().queued = depth;
    }

    /// Compass's first queue update after taking a submission in: the new depth counts it now,
    /// so its reserved place is freed in the same step (never counted twice, never not at all).
    pub fn set_queue_depth_admitted(&self, depth: usize) {
        let mut count = self.queue_count();
        count.queued = depth;
        count.admitted = count.admitted.saturating_sub(1);
    }

    /// A persona starts (`Some`) or has finished (`None`) taking in `task`'s request. A panic in
    /// between leaves the mark, which blames the task for the crash.
    pub fn handling(&self, persona: Persona, task: Option<TaskId>) {
        let mut handling = self.handling.lock().unwrap_or_else(PoisonError::into_inner);
        match task {
            Some(task) => handling.insert(persona, task),
            None => handling.remove(&persona),
        };
    }

    /// The task whose request `persona` was taking in when it crashed, if any; clears the mark.
    pub fn take_handling(&self, persona: Persona) -> Option<TaskId> {
        let mut handling = self.handling.lock().unwrap_or_else(PoisonError::into_inner);
        handling.remove(&persona)
    }

    fn queue_count(&self) -> std::sync::MutexGuard<'_, QueueCount> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current incarnation of the persona reading `M`, if it is running; waits (bounded)
    /// while it restarts.
    ///
    /// `replacing` is an incarnation known to be dead (it dropped a request): the wait goes on
    /// until the supervisor has put a new one in its place.
    pub async fn persona<M: PersonaMailbox>(
        &self,
        wait_max: Duration,
        replacing: Option<ActorId>,
    ) -> Result<ActorRef<M>, LookupError> {
        let name = M::PERSONA.name();
        let deadline = Instant::now() + wait_max;
        loop {
            if let Some(cell) = self.running_cell(name)? {
                if Some(cell.get_id()) != replacing {
                    return Ok(cell.into());
                }
            }
            if Instant::now() >= deadline {
                return Err(LookupError::NotBack(name.to_owned(), wait_max));
            }
            tokio::time::sleep(WAIT_POLL_INTERVAL).await;
        }
    }

    fn running_cell(&self, name: &str) -> Result<Option<ActorCell>, LookupError> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = slots.get(name) else {
            return Ok(None);
        };
        match (slot.entry.status, &slot.cell) {
            (ActorHealth::Failed, _) => Err(LookupError::Failed(name.to_owned())),
            (ActorHealth::Running, Some(cell)) if cell.get_status() == ActorStatus::Running => {
                Ok(Some(cell.clone()))
            }
            _ => Ok(None),
        }
    }
}
