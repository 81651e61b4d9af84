//! The job gate: every engine and verify job passes [`JobHold::join`] before it starts — on a
//! factory or in-process, a task's verify, a merge-queue candidate's or a red-base check. While
//! the pause (`POST /v1/fleet/pause`) is on, jobs wait here in line; resume lets them go one at
//! a time, first come first served. A job already running when the pause comes keeps running.
//!
//! With a fleet the pause is the fleet's signed switch (kept by its controller) and this gate
//! mirrors it; without one the gate's own switch is the pause, kept in the data dir so a
//! restart keeps it. What a waiting job's task shows (`waiting_for`) and its events are the
//! work layer's (`work::fleet_run::hold`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::model::task::TaskId;

/// Jobs waiting at the gate at most; past it a job is refused (the stage retries later).
pub(crate) const HOLD_WAITING_MAX: usize = 10_000;
/// The file that says the pause is on, for a service without a fleet.
const PAUSED_FILE: &str = "jobs-paused";

/// Why a job did not pass the gate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HoldError {
    /// The pause lasted longer than the job may wait (its own timeout).
    #[error("the fleet stayed paused for {0}s: the job did not start")]
    TimedOut(u64),
    /// Too many jobs wait already.
    #[error("{0} jobs wait for the pause to end already")]
    Full(usize),
}

/// One job in line.
#[derive(Debug, Clone)]
struct Ticket {
    number: u64,
    id: Uuid,
    task_id: TaskId,
    capabilities: Vec<String>,
    since: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct State {
    paused: bool,
    line: VecDeque<Ticket>,
    next: u64,
}

/// A job waiting at the gate, for `GET /v1/fleet` and `/v1/report`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeldJob {
    /// The place's own id (the job gets its id when it is published, after the gate).
    pub(crate) id: Uuid,
    /// Its task.
    pub(crate) task_id: TaskId,
    /// What it needs (a factory's capabilities).
    pub(crate) capabilities: Vec<String>,
    /// Since when it waits.
    pub(crate) since: DateTime<Utc>,
}

/// The gate every job start passes (see the module).
#[derive(Debug, Default)]
pub struct JobHold {
    state: Mutex<State>,
    changed: Notify,
    /// Where the gate's own pause is kept (no fleet); `None`: the fleet keeps it.
    file: Option<PathBuf>,
}

impl JobHold {
    /// The gate of a service with a fleet: its pause mirrors the fleet's switch, `paused` now.
    pub(crate) fn mirroring(paused: bool) -> Self {
        let hold = Self::default();
        hold.lock().paused = paused;
        hold
    }

    /// The gate of a service without a fleet: its pause is kept in `data_dir` (read now).
    pub(crate) async fn kept_in(data_dir: &Path) -> Self {
        let file = data_dir.join(PAUSED_FILE);
        let paused = tokio::fs::try_exists(&file).await.unwrap_or(false);
        let hold = Self {
            file: Some(file),
            ..Self::default()
        };
        hold.lock().paused = paused;
        hold
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether jobs are held now.
    pub(crate) fn paused(&self) -> bool {
        self.lock().paused
    }

    /// Holds (`true`) or releases the jobs; kept in the data dir when the gate keeps its own
    /// pause. On release, the jobs in line go in the order they came.
    pub(crate) async fn set_paused(&self, paused: bool) -> std::io::Result<()> {
        if let Some(file) = &self.file {
            if paused {
                tokio::fs::write(file, b"paused\n").await?;
            } else if let Err(error) = tokio::fs::remove_file(file).await {
                if error.kind() != std::io::ErrorKind::NotFound {
                    return Err(error);
                }
            }
        }
        self.lock().paused = paused;
        self.changed.notify_waiters();
        Ok(())
    }

    /// The jobs waiting now, first in line first.
    pub(crate) fn held(&self) -> Vec<HeldJob> {
        self.lock()
            .line
            .iter()
            .map(|t| HeldJob {
                id: t.id,
                task_id: t.task_id,
                capabilities: t.capabilities.clone(),
                since: t.since,
            })
            .collect()
    }

    /// A job of `task_id` needing `capabilities` asks to start: `None` when it may start at
    /// once (no pause, nobody in line), else its place in line, to wait on with [`InLine::wait`].
    pub(crate) fn join(
        self: &Arc<Self>,
        task_id: TaskId,
        capabilities: &[String],
    ) -> Result<Option<InLine>, HoldError> {
        let mut state = self.lock();
        if !state.paused && state.line.is_empty() {
            return Ok(None);
        }
        if state.line.len() >= HOLD_WAITING_MAX {
            return Err(HoldError::Full(state.line.len()));
        }
        state.next += 1;
        let number = state.next;
        state.line.push_back(Ticket {
            number,
            id: Uuid::now_v7(),
            task_id,
            capabilities: capabilities.to_vec(),
            since: Utc::now(),
        });
        Ok(Some(InLine {
            hold: Arc::clone(self),
            number,
        }))
    }

    /// Whether ticket `number` may go: no pause, and first in line.
    fn may_go(&self, number: u64) -> bool {
        let state = self.lock();
        !state.paused && state.line.front().map(|t| t.number) == Some(number)
    }

    fn leave(&self, number: u64) {
        self.lock().line.retain(|t| t.number != number);
        self.changed.notify_waiters();
    }
}

/// A job's place in line. Dropping it (the job started, or was cancelled) leaves the line and
/// lets the next one go.
#[derive(Debug)]
pub(crate) struct InLine {
    hold: Arc<JobHold>,
    number: u64,
}

impl InLine {
    /// Waits until the pause is off and every job that came earlier has gone, at most
    /// `timeout`. The place is kept until this is dropped: the caller records that the job
    /// starts, then drops it, so the next job's start comes after.
    pub(crate) async fn wait(&self, timeout: Duration) -> Result<(), HoldError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.hold.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.hold.may_go(self.number) {
                return Ok(());
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(HoldError::TimedOut(timeout.as_secs()));
                }
            }
        }
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.hold.leave(self.number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_pause_a_job_starts_at_once() {
        let hold = Arc::new(JobHold::mirroring(false));
        assert!(hold.join(TaskId::new(), &[]).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_pause_holds_jobs_and_resume_lets_them_go_in_the_order_they_came() {
        let hold = Arc::new(JobHold::mirroring(true));
        let (sender, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        let tasks: Vec<TaskId> = (0..5).map(|_| TaskId::new()).collect();
        for (n, task) in tasks.iter().enumerate() {
            let place = hold.join(*task, &[]).unwrap().expect("held");
            let sender = sender.clone();
            waiting.push(tokio::spawn(async move {
                place.wait(Duration::from_secs(30)).await.unwrap();
                // The next one goes only once this one has left the line.
                tokio::task::yield_now().await;
                sender.send(n).unwrap();
                drop(place);
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(order.try_recv().is_err(), "a job went while paused");
        assert_eq!(
            hold.held().iter().map(|h| h.task_id).collect::<Vec<_>>(),
            tasks
        );
        // A job asking while others still wait lines up behind them.
        hold.set_paused(false).await.unwrap();
        for job in waiting {
            job.await.unwrap();
        }
        let got: Vec<usize> = std::iter::from_fn(|| order.try_recv().ok()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(hold.held().is_empty());
    }

    #[tokio::test]
    async fn a_wait_ends_at_its_timeout_and_a_dropped_place_frees_the_line() {
        let hold = Arc::new(JobHold::mirroring(true));
        let first = hold.join(TaskId::new(), &[]).unwrap().unwrap();
        let second = hold.join(TaskId::new(), &[]).unwrap().unwrap();
        assert_eq!(
            first.wait(Duration::from_millis(50)).await,
            Err(HoldError::TimedOut(0))
        );
        hold.set_paused(false).await.unwrap();
        // The first in line (cancelled: dropped) no longer blocks the second.
        drop(first);
        second.wait(Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn the_gates_own_pause_is_kept_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let hold = JobHold::kept_in(dir.path()).await;
        assert!(!hold.paused());
        hold.set_paused(true).await.unwrap();
        assert!(JobHold::kept_in(dir.path()).await.paused());
        hold.set_paused(false).await.unwrap();
        assert!(!JobHold::kept_in(dir.path()).await.paused());
    }
}
