//! Background work the service owns: the fire-and-forget tasks actors and handlers start so that
//! a mailbox (or a request) never waits on a ledger call, a signal, a settlement or a cleanup.
//!
//! Each runs on one [`TaskTracker`] held by [`Background`] (in [`super::Services`]), so shutdown can
//! close it and wait for what is still running (bounded; see `app::startup`), and at most
//! [`BACKGROUND_TASKS_MAX`] run at once: a stalled Ledger or Uplink-Respond cannot pile up
//! tasks without end.
//!
//! Beyond the cap a spawn is **refused**, never queued: [`Background::spawn`] logs an error and
//! drops the work. That is only used for work that is safe to lose (done again at the next
//! start, or a charge Watch may skip). Work that must not be lost takes a [`Slot`] first
//! ([`Background::slot`]) and, when there is none, either refuses its request with an error the
//! caller sees or runs the work inline ([`Background::spawn_or_run`]), which slows that caller but
//! loses nothing.
//!
//! Tasks that already have an owner do not come here: jobs held in an `AbortOnDropHandle` in an
//! actor's state (`runtime::jobs::spawn_job`, Watch's ticker, local releases), a process's pipe
//! readers (dropped with the run), the store's answer timers (aborted with their answer), the
//! HTTP server task and the store watchdog (both awaited by `app::startup`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

/// Most background tasks running at once. Well above what a healthy service runs (a few
/// settlements and signals, at most `server.streams_max` ≤ 512 event streams), so reaching it means
/// something downstream is stuck: refusing more keeps memory bounded instead.
pub(crate) const BACKGROUND_TASKS_MAX: usize = 1024;

/// The service's owned background tasks (see the module docs). Cheap to clone: clones share the
/// tracker and the cap.
#[derive(Clone)]
pub struct Background {
    tracker: TaskTracker,
    /// One permit per task allowed to run; a task holds its permit until it ends.
    room: Arc<Semaphore>,
    /// How many tasks of each kind run now, so a shutdown that times out can say which.
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

impl Default for Background {
    /// A tracker capped at [`BACKGROUND_TASKS_MAX`].
    fn default() -> Self {
        Self::new(BACKGROUND_TASKS_MAX)
    }
}

/// Room for one background task, taken before the work is built so a caller can answer a
/// refusal itself. Dropping it unused gives the room back.
pub struct Slot {
    background: Background,
    permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Spawns `work` (named `what` in logs) on the service's tracker. Needs a tokio runtime, like
    /// `tokio::spawn`.
    pub fn spawn<F>(self, what: &'static str, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Slot { background, permit } = self;
        let running = Running::start(background.running.clone(), what, permit);
        background.tracker.spawn(async move {
            let _running = running;
            work.await;
        });
    }
}

impl Background {
    /// A tracker allowing `max` tasks at once (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            tracker: TaskTracker::new(),
            room: Arc::new(Semaphore::new(max.max(1))),
            running: Arc::default(),
        }
    }

    /// Room for one task, or `None` when [`BACKGROUND_TASKS_MAX`] run already.
    pub fn slot(&self) -> Option<Slot> {
        let permit = self.room.clone().try_acquire_owned().ok()?;
        Some(Slot {
            background: self.clone(),
            permit,
        })
    }

    /// Spawns `work` (named `what` in logs) when there is room; otherwise logs an error and drops
    /// it. Only for work whose loss is recovered (done again at the next start) or acceptable;
    /// answers whether it was spawned.
    pub fn spawn<F>(&self, what: &'static str, work: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.slot() {
            Some(slot) => {
                slot.spawn(what, work);
                true
            }
            None => {
                tracing::error!(
                    task = what,
                    max = BACKGROUND_TASKS_MAX,
                    "too much background work running; this task was dropped"
                );
                false
            }
        }
    }

    /// Spawns `work` when there is room; otherwise runs it here, to its end (logged as a
    /// warning). For work that must not be lost, from a caller that may wait for it.
    pub async fn spawn_or_run<F>(&self, what: &'static str, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.slot() {
            Some(slot) => slot.spawn(what, work),
            None => {
                tracing::warn!(
                    task = what,
                    max = BACKGROUND_TASKS_MAX,
                    "too much background work running; running this task inline"
                );
                work.await;
            }
        }
    }

    /// How many background tasks run now.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no background task runs.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// At shutdown: closes the tracker and waits at most `limit` for its tasks to end. Answers
    /// whether they all did; those still running are logged by kind (the runtime's end drops
    /// them). Tasks spawned after this are still tracked and counted.
    pub async fn close_and_wait(&self, limit: Duration) -> bool {
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        let running = self.running();
        tracing::warn!(
            still_running = self.tracker.len(),
            ?running,
            "background tasks did not finish in time; leaving them"
        );
        false
    }

    /// Running tasks by kind (only kinds with at least one).
    pub fn running(&self) -> BTreeMap<&'static str, usize> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Counts one running task of kind `what` from its spawn to its end (however it ends), holding
/// its place under the cap. A task that panics is logged here: nothing else would see it.
struct Running {
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
    what: &'static str,
    _permit: OwnedSemaphorePermit,
}

impl Running {
    fn start(
        running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
        what: &'static str,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        *running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(what)
            .or_default() += 1;
        Self {
            running,
            what,
            _permit: permit,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(task = self.what, "a background task panicked");
        }
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = running.get_mut(self.what) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(self.what);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_refuses_and_the_room_comes_back() {
        let background = Background::new(2);
        let (release, released) = tokio::sync::watch::channel(false);
        for _ in 0..2 {
            let mut released = released.clone();
            assert!(background.spawn("hold", async move {
                let _ = released.wait_for(|done| *done).await;
            }));
        }
        assert!(!background.spawn("refused", async {}));
        assert!(background.slot().is_none());
        assert_eq!(background.running().get("hold"), Some(&2));
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inline = ran.clone();
        background
            .spawn_or_run("inline", async move {
                inline.store(true, std::sync::atomic::Ordering::SeqCst);
            })
            .await;
        assert!(
            ran.load(std::sync::atomic::Ordering::SeqCst),
            "a full tracker runs the work inline"
        );
        release.send(true).unwrap();
        assert!(background.close_and_wait(Duration::from_secs(5)).await);
        assert!(background.is_empty());
        assert!(background.running().is_empty());
        assert!(background.spawn("again", async {}), "the room came back");
    }

    #[tokio::test]
    async fn a_shutdown_wait_is_bounded() {
        let background = Background::new(4);
        assert!(background.spawn("forever", std::future::pending()));
        let finished = background.close_and_wait(Duration::from_millis(50)).await;
        assert!(!finished);
        assert_eq!(background.running().get("forever"), Some(&1));
    }

    #[tokio::test]
    async fn a_panicking_task_gives_its_room_back() {
        let background = Background::new(1);
        assert!(background.spawn("panics", async { panic!("on purpose") }));
        assert!(background.close_and_wait(Duration::from_secs(5)).await);
        assert!(background.slot().is_some());
        assert!(background.running().is_empty());
    }
}
